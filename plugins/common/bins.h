/*
 * bins.h - uniform bins over value ranges: what sensor.bins, action.continuous and
 * scalar.mulaw share (plugins/common, header-only).
 *
 * The three plugins turn continuous values into bin ids and back: a value x in [low, high]
 * becomes bin floor((x - low) / (high - low) * B) and a bin b comes back as its centre
 * low + (b + 0.5) * (high - low) / B, so that any value in range returns within half a bin.
 * Around that math they share the same plumbing, kept here once: reading per-dimension ranges
 * from the configuration or a fitted (2, D) ranges file, checking a series chunk, batching
 * ids with their tick times for the token sink, assembling vectors of D values across decode
 * calls, and the "whole groups of D ids per segment" rule of constrain().
 *
 * Everything is static inline so that each plugin keeps its own copy and the hot loops
 * inline; nothing here allocates except the range and vector set-up, which plugins call from
 * create() and open_stream().
 */
#ifndef SN_PU_BINS_H
#define SN_PU_BINS_H

#include <sensorium/plugin.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "npy_f32.h"

/* Bins per dimension: 2 is the least that carries anything, 65536 the most that token ids of
 * a modest vocabulary slice should hold. */
#define SN_PU_BINS_MIN 2
#define SN_PU_BINS_MAX 65536
/* Values per tick or vector: far more than any sensor or robot arm has, small enough that
 * (dims * groups) products stay far from overflow. */
#define SN_PU_DIMS_MAX 65536
/* Ids per segment that constrain() can count (ticks_per_segment * dims and the like). */
#define SN_PU_SEGMENT_IDS_MAX ((uint64_t)INT32_MAX)

/* ---------------------------------------------------------------------------------------- */
/* Bin math                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/*
 * The bin of x among `bins` uniform bins over [low, high] (low < high, both finite):
 * floor((x - low) / (high - low) * bins), clamped to [0, bins - 1]. Values below low (and
 * -Inf) fall in bin 0, values at or above high (and +Inf) in the last bin. x must not be NaN.
 */
static inline int32_t sn_pu_bin_index(double x, double low, double high, uint32_t bins)
{
    double u = (x - low) / (high - low) * (double)bins;
    if (!(u >= 0.0))
        return 0;
    if (u >= (double)bins)
        return (int32_t)(bins - 1);
    return (int32_t)u; /* u >= 0: truncation is floor */
}

/* The centre of bin b: low + (b + 0.5) * (high - low) / bins. */
static inline double sn_pu_bin_centre(int32_t b, double low, double high, uint32_t bins)
{
    return low + ((double)b + 0.5) * (high - low) / (double)bins;
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* The host names the key in its own messages for a mistyped value; make sure of it, so that
 * every configuration error says which key is wrong. */
static inline sn_plugin_status sn_pu_bins_lookup_failed(const char *key, sn_plugin_status s,
                                                        sn_plugin_error *err)
{
    char quoted[80];
    snprintf(quoted, sizeof quoted, "'%s'", key);
    if (!strstr(err->message, quoted)) {
        char why[SN_PLUGIN_ERROR_MAX];
        snprintf(why, sizeof why, "%s", err->message[0] ? err->message : "cannot be read");
        sn_plugin_error_set(err, "config key '%s': %.400s", key, why);
    }
    return s == SN_PLUGIN_ERR_NOMEM ? s : SN_PLUGIN_ERR_CONFIG;
}

/*
 * An optional integer key in [lo, hi]: *out keeps its default when the key is absent. A
 * value of the wrong type or out of range is SN_PLUGIN_ERR_CONFIG naming the key, the value
 * and the range; what (may be NULL) says what the key means, for the message.
 */
static inline sn_plugin_status sn_pu_config_int_in(const sn_host *host, const char *key,
                                                   int64_t lo, int64_t hi, const char *what,
                                                   int64_t *out, sn_plugin_error *err)
{
    int64_t v = *out;
    sn_plugin_status s = host->config_int(host, key, &v, err);
    if (s == SN_PLUGIN_ERR_NOT_FOUND) {
        err->message[0] = '\0';
        return SN_PLUGIN_OK;
    }
    if (s != SN_PLUGIN_OK)
        return sn_pu_bins_lookup_failed(key, s, err);
    if (v < lo || v > hi) {
        sn_plugin_error_set(err, "config key '%s' is %lld; it must be an integer from %lld to %lld%s%s",
                            key, (long long)v, (long long)lo, (long long)hi, what ? " " : "",
                            what ? what : "");
        return SN_PLUGIN_ERR_CONFIG;
    }
    *out = v;
    return SN_PLUGIN_OK;
}

/* An optional number key, finite and in (lo, hi] (lo exclusive: the keys this serves must be
 * positive); *out keeps its default when the key is absent. */
static inline sn_plugin_status sn_pu_config_float_in(const sn_host *host, const char *key,
                                                     double lo, double hi, double *out,
                                                     sn_plugin_error *err)
{
    double v = *out;
    sn_plugin_status s = host->config_float(host, key, &v, err);
    if (s == SN_PLUGIN_ERR_NOT_FOUND) {
        err->message[0] = '\0';
        return SN_PLUGIN_OK;
    }
    if (s != SN_PLUGIN_OK)
        return sn_pu_bins_lookup_failed(key, s, err);
    if (!isfinite(v) || !(v > lo) || !(v <= hi)) {
        sn_plugin_error_set(err, "config key '%s' is %g; it must be a number greater than %g and at most %g",
                            key, v, lo, hi);
        return SN_PLUGIN_ERR_CONFIG;
    }
    *out = v;
    return SN_PLUGIN_OK;
}

/* Per-dimension value ranges. Owned by the instance; freed with sn_pu_ranges_free. */
typedef struct sn_pu_ranges {
    uint32_t dims;
    double *low;  /* (dims) */
    double *high; /* (dims) */
} sn_pu_ranges;

static inline void sn_pu_ranges_free(sn_pu_ranges *r)
{
    if (!r)
        return;
    free(r->low);
    free(r->high);
    r->low = r->high = NULL;
    r->dims = 0;
}

static inline sn_plugin_status sn_pu_ranges_alloc(sn_pu_ranges *r, size_t dims,
                                                  sn_plugin_error *err)
{
    r->dims = (uint32_t)dims;
    r->low = calloc(dims, sizeof *r->low);
    r->high = calloc(dims, sizeof *r->high);
    if (!r->low || !r->high) {
        sn_pu_ranges_free(r);
        sn_plugin_error_set(err, "out of memory for the ranges of %zu dimensions", dims);
        return SN_PLUGIN_ERR_NOMEM;
    }
    return SN_PLUGIN_OK;
}

/*
 * Every dimension finite with low < high and a finite width (so that bin math cannot
 * overflow). source says where the ranges came from, for the message ("config keys 'low' and
 * 'high'", "ranges file '/m/sensor.bins.npy'"); names (may be NULL) labels dimensions.
 */
static inline sn_plugin_status sn_pu_ranges_check(const sn_pu_ranges *r, const char *source,
                                                  const char *const *names, sn_plugin_error *err)
{
    for (uint32_t d = 0; d < r->dims; d++) {
        char label[96] = "";
        if (names && names[d])
            snprintf(label, sizeof label, " ('%.80s')", names[d]);
        if (!isfinite(r->low[d]) || !isfinite(r->high[d])) {
            sn_plugin_error_set(err, "%s: dimension %u%s has low %g and high %g; both must be finite numbers",
                                source, d, label, r->low[d], r->high[d]);
            return SN_PLUGIN_ERR_CONFIG;
        }
        if (!(r->low[d] < r->high[d])) {
            sn_plugin_error_set(err, "%s: dimension %u%s has low %g >= high %g; each dimension needs low < high",
                                source, d, label, r->low[d], r->high[d]);
            return SN_PLUGIN_ERR_CONFIG;
        }
        if (!isfinite(r->high[d] - r->low[d])) {
            sn_plugin_error_set(err, "%s: dimension %u%s spans %g to %g, wider than a double holds; narrow the range",
                                source, d, label, r->low[d], r->high[d]);
            return SN_PLUGIN_ERR_CONFIG;
        }
    }
    return SN_PLUGIN_OK;
}

/* The length of a number-array key, or NOT_FOUND. */
static inline sn_plugin_status sn_pu_array_len(const sn_host *host, const char *key, size_t *n,
                                               sn_plugin_error *err)
{
    sn_plugin_status s = host->config_float_array(host, key, NULL, 0, n, err);
    if (s == SN_PLUGIN_ERR_NOT_FOUND) {
        err->message[0] = '\0';
        return s;
    }
    if (s != SN_PLUGIN_OK)
        return sn_pu_bins_lookup_failed(key, s, err);
    return SN_PLUGIN_OK;
}

/* Loads a (2, D) ranges file: row 0 the lows, row 1 the highs. want_dims 0: any D. */
static inline sn_plugin_status sn_pu_ranges_load(const char *path, uint32_t want_dims,
                                                 const char *plugin, sn_pu_ranges *out,
                                                 sn_plugin_error *err)
{
    float *v = NULL;
    size_t rows = 0, cols = 0;
    char why[256];
    if (sn_pu_npy_read_f32(path, &v, &rows, &cols, why, sizeof why) != 0) {
        sn_plugin_error_set(err, "cannot read the ranges file '%.200s': %.150s; give config keys 'low' and 'high', or make it with `sensorium fit --plugin %s DATA.npy -o %.100s`",
                            path, why, plugin, path);
        return SN_PLUGIN_ERR_IO;
    }
    sn_plugin_status s = SN_PLUGIN_OK;
    if (rows != 2 || cols < 1 || cols > SN_PU_DIMS_MAX) {
        sn_plugin_error_set(err, "ranges file '%.200s' has shape (%zu, %zu); expected (2, D) with D from 1 to %d: row 0 the lows, row 1 the highs",
                            path, rows, cols, SN_PU_DIMS_MAX);
        s = SN_PLUGIN_ERR_CONFIG;
    } else if (want_dims && cols != want_dims) {
        sn_plugin_error_set(err, "ranges file '%.200s' has shape (2, %zu), for %zu dimensions, but config key 'dims' says %u; refit it or correct 'dims'",
                            path, cols, cols, want_dims);
        s = SN_PLUGIN_ERR_CONFIG;
    } else if ((s = sn_pu_ranges_alloc(out, cols, err)) == SN_PLUGIN_OK) {
        for (size_t d = 0; d < cols; d++) {
            out->low[d] = v[d];
            out->high[d] = v[cols + d];
        }
        char source[256];
        snprintf(source, sizeof source, "ranges file '%.200s'", path);
        s = sn_pu_ranges_check(out, source, NULL, err);
        if (s != SN_PLUGIN_OK)
            sn_pu_ranges_free(out);
    }
    free(v);
    return s;
}

/*
 * Reads the per-dimension ranges of a plugin's configuration:
 *   "dims"   optional integer D, checked against what follows;
 *   "low", "high"  arrays of D numbers; they win when present;
 *   otherwise, when ranges_default is not NULL, the (2, D) file named by "ranges" (default
 *   ranges_default), resolved against the data directory unless absolute.
 * ranges_default NULL makes "low" and "high" required (and "ranges" is not read). On
 * success out holds D >= 1 checked ranges.
 */
static inline sn_plugin_status sn_pu_ranges_from_config(const sn_host *host, const char *plugin,
                                                        const char *ranges_default,
                                                        sn_pu_ranges *out, sn_plugin_error *err)
{
    memset(out, 0, sizeof *out);
    int64_t dims = 0;
    sn_plugin_status s = sn_pu_config_int_in(host, "dims", 1, SN_PU_DIMS_MAX,
                                             "(values per tick)", &dims, err);
    if (s != SN_PLUGIN_OK)
        return s;

    size_t n_low = 0, n_high = 0;
    sn_plugin_status s_low = sn_pu_array_len(host, "low", &n_low, err);
    if (s_low != SN_PLUGIN_OK && s_low != SN_PLUGIN_ERR_NOT_FOUND)
        return s_low;
    sn_plugin_status s_high = sn_pu_array_len(host, "high", &n_high, err);
    if (s_high != SN_PLUGIN_OK && s_high != SN_PLUGIN_ERR_NOT_FOUND)
        return s_high;

    if (s_low == SN_PLUGIN_ERR_NOT_FOUND && s_high == SN_PLUGIN_ERR_NOT_FOUND) {
        if (!ranges_default) {
            sn_plugin_error_set(err, "missing config keys 'low' and 'high': give the range of each dimension, e.g. {\"low\": [-1, -1], \"high\": [1, 1]}");
            return SN_PLUGIN_ERR_CONFIG;
        }
        const char *name = ranges_default;
        s = host->config_string(host, "ranges", &name, err);
        if (s == SN_PLUGIN_ERR_NOT_FOUND)
            err->message[0] = '\0';
        else if (s != SN_PLUGIN_OK)
            return sn_pu_bins_lookup_failed("ranges", s, err);
        if (!name[0]) {
            sn_plugin_error_set(err, "config key 'ranges' is an empty string; name the ranges file (default '%s')",
                                ranges_default);
            return SN_PLUGIN_ERR_CONFIG;
        }
        const char *dir = host->data_dir(host);
        if (name[0] != '/' && !dir) {
            sn_plugin_error_set(err, "no 'low'/'high' in the config and no data directory to find the ranges file '%.200s' in; give config keys 'low' and 'high', or run `sensorium fit --plugin %s DATA.npy -o DIR/%.100s` and pass --data-dir DIR",
                                name, plugin, name);
            return SN_PLUGIN_ERR_CONFIG;
        }
        size_t len = (name[0] == '/' ? 0 : strlen(dir) + 1) + strlen(name) + 1;
        char *path = malloc(len);
        if (!path) {
            sn_plugin_error_set(err, "out of memory");
            return SN_PLUGIN_ERR_NOMEM;
        }
        if (name[0] == '/')
            snprintf(path, len, "%s", name);
        else
            snprintf(path, len, "%s/%s", dir, name);
        s = sn_pu_ranges_load(path, (uint32_t)dims, plugin, out, err);
        free(path);
        return s;
    }

    if (s_low == SN_PLUGIN_ERR_NOT_FOUND || s_high == SN_PLUGIN_ERR_NOT_FOUND) {
        const char *has = s_low == SN_PLUGIN_OK ? "low" : "high";
        const char *lacks = s_low == SN_PLUGIN_OK ? "high" : "low";
        sn_plugin_error_set(err, "config key '%s' is given without '%s'; give both, one number per dimension each",
                            has, lacks);
        return SN_PLUGIN_ERR_CONFIG;
    }
    if (n_low != n_high) {
        sn_plugin_error_set(err, "config key 'low' has %zu numbers but 'high' has %zu; give one low and one high per dimension",
                            n_low, n_high);
        return SN_PLUGIN_ERR_CONFIG;
    }
    if (n_low == 0 || n_low > SN_PU_DIMS_MAX) {
        sn_plugin_error_set(err, "config keys 'low' and 'high' hold %zu numbers each; give one per dimension, from 1 to %d",
                            n_low, SN_PU_DIMS_MAX);
        return SN_PLUGIN_ERR_CONFIG;
    }
    if (dims && (uint64_t)dims != n_low) {
        sn_plugin_error_set(err, "config key 'dims' is %lld but 'low' and 'high' hold %zu numbers each; they must agree (or drop 'dims')",
                            (long long)dims, n_low);
        return SN_PLUGIN_ERR_CONFIG;
    }
    if ((s = sn_pu_ranges_alloc(out, n_low, err)) != SN_PLUGIN_OK)
        return s;
    size_t got_low = 0, got_high = 0;
    s = host->config_float_array(host, "low", out->low, n_low, &got_low, err);
    if (s != SN_PLUGIN_OK) {
        sn_pu_ranges_free(out);
        return sn_pu_bins_lookup_failed("low", s, err);
    }
    s = host->config_float_array(host, "high", out->high, n_high, &got_high, err);
    if (s != SN_PLUGIN_OK) {
        sn_pu_ranges_free(out);
        return sn_pu_bins_lookup_failed("high", s, err);
    }
    if (got_low != n_low || got_high != n_high) {
        sn_pu_ranges_free(out);
        sn_plugin_error_set(err, "the host reported different lengths for config keys 'low'/'high' on two look-ups; this is a host bug");
        return SN_PLUGIN_ERR_INTERNAL;
    }
    s = sn_pu_ranges_check(out, "config keys 'low' and 'high'", NULL, err);
    if (s != SN_PLUGIN_OK)
        sn_pu_ranges_free(out);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Encoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/*
 * Checks a series chunk before anything is emitted: want_dims values per tick (0: any number
 * but at least one) and a values pointer when there are ticks. An empty chunk (0 ticks) is
 * valid: a live feed may deliver one. The kind is the caller's to check (its message names
 * the plugin's media).
 */
static inline sn_plugin_status sn_pu_series_check(const sn_media_series *s, uint32_t want_dims,
                                                  sn_plugin_error *err)
{
    if (want_dims && s->dims != want_dims) {
        sn_plugin_error_set(err, "series has %u dims per tick, config says %u; give a series of %u values per tick, or configure the plugin for %u",
                            s->dims, want_dims, want_dims, s->dims);
        return SN_PLUGIN_ERR_INVALID;
    }
    if (s->dims == 0) {
        sn_plugin_error_set(err, "series has 0 dims per tick; each tick needs at least one value");
        return SN_PLUGIN_ERR_INVALID;
    }
    if (s->n_ticks && !s->values) {
        sn_plugin_error_set(err, "series claims %zu ticks but its values pointer is NULL", s->n_ticks);
        return SN_PLUGIN_ERR_INVALID;
    }
    if (!(s->rate_hz >= 0.0) || !isfinite(s->rate_hz)) {
        sn_plugin_error_set(err, "series rate is %g Hz; it must be a finite rate >= 0 (0: unknown)",
                            s->rate_hz);
        return SN_PLUGIN_ERR_INVALID;
    }
    return SN_PLUGIN_OK;
}

/* The stream time of tick i of a chunk starting at t: t + i / rate, or t when the rate is
 * unknown. */
static inline double sn_pu_tick_time(double t, size_t i, double rate_hz)
{
    return rate_hz > 0.0 ? t + (double)i / rate_hz : t;
}

/*
 * NaN has no bin: the first NaN of a chunk is SN_PLUGIN_ERR_INVALID naming its tick (index in
 * the chunk and stream time) and dimension (with its name when names is not NULL). Checked
 * before encoding, so that a failed call emits nothing. Infinities pass: they clamp to the
 * end bins like any out-of-range value.
 */
static inline sn_plugin_status sn_pu_series_find_nan(const sn_media *m, const char *const *names,
                                                     sn_plugin_error *err)
{
    const sn_media_series *s = &m->series;
    size_t total = s->n_ticks * s->dims;
    for (size_t k = 0; k < total; k++) {
        if (isnan(s->values[k])) {
            size_t tick = k / s->dims;
            uint32_t d = (uint32_t)(k % s->dims);
            char label[96] = "";
            if (names && names[d])
                snprintf(label, sizeof label, " ('%.80s')", names[d]);
            sn_plugin_error_set(err, "series value at tick %zu of the chunk (t = %.6g s), dimension %u%s, is NaN; NaN has no bin: fill or drop missing readings before tokenizing",
                                tick, sn_pu_tick_time(m->t, tick, s->rate_hz), d, label);
            return SN_PLUGIN_ERR_INVALID;
        }
    }
    return SN_PLUGIN_OK;
}

/* Ids on their way to the token sink: consecutive ids with the same t go in one sink call,
 * up to the size of a stack buffer, so that encoding never allocates. */
#define SN_PU_ID_BATCH 256
typedef struct sn_pu_id_batch {
    const sn_token_sink *sink;
    int32_t ids[SN_PU_ID_BATCH];
    size_t n;
    double t; /* of every id held */
} sn_pu_id_batch;

static inline sn_plugin_status sn_pu_id_batch_flush(sn_pu_id_batch *b)
{
    if (!b->n)
        return SN_PLUGIN_OK;
    sn_plugin_status s = b->sink->emit(b->sink->ctx, b->ids, b->n, b->t);
    b->n = 0;
    return s;
}

static inline sn_plugin_status sn_pu_id_batch_push(sn_pu_id_batch *b, int32_t id, double t)
{
    if (b->n == SN_PU_ID_BATCH || (b->n && t != b->t)) {
        sn_plugin_status s = sn_pu_id_batch_flush(b);
        if (s != SN_PLUGIN_OK)
            return s;
    }
    if (!b->n)
        b->t = t;
    b->ids[b->n++] = id;
    return SN_PLUGIN_OK;
}

/*
 * Encodes a checked, NaN-free series chunk with per-dimension ranges: the ids of tick i, in
 * dimension order, carry t + i / rate. Each tick is whole in its chunk, so nothing is held
 * between calls and any chunking gives the same ids.
 */
static inline sn_plugin_status sn_pu_bins_encode(const sn_pu_ranges *r, uint32_t bins,
                                                 const sn_media *m, const sn_token_sink *sink)
{
    const sn_media_series *s = &m->series;
    sn_pu_id_batch b = {.sink = sink};
    const float *x = s->values;
    for (size_t i = 0; i < s->n_ticks; i++) {
        double t = sn_pu_tick_time(m->t, i, s->rate_hz);
        for (uint32_t d = 0; d < r->dims; d++) {
            sn_plugin_status st =
                sn_pu_id_batch_push(&b, sn_pu_bin_index(*x++, r->low[d], r->high[d], bins), t);
            if (st != SN_PLUGIN_OK)
                return st;
        }
    }
    return sn_pu_id_batch_flush(&b);
}

/* ---------------------------------------------------------------------------------------- */
/* Decoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* A vector of dims values being assembled from ids across decode calls. Owned by the stream:
 * values is allocated by sn_pu_vec_init (open_stream) and freed by sn_pu_vec_free. */
typedef struct sn_pu_vec {
    float *values; /* (dims) */
    uint32_t dims;
    uint32_t have; /* values of the current vector decoded so far */
} sn_pu_vec;

static inline sn_plugin_status sn_pu_vec_init(sn_pu_vec *v, uint32_t dims, sn_plugin_error *err)
{
    v->dims = dims;
    v->have = 0;
    if (!(v->values = malloc((size_t)dims * sizeof *v->values))) {
        sn_plugin_error_set(err, "out of memory for a vector of %u values", dims);
        return SN_PLUGIN_ERR_NOMEM;
    }
    return SN_PLUGIN_OK;
}

static inline void sn_pu_vec_free(sn_pu_vec *v)
{
    free(v->values);
    v->values = NULL;
}

/* The value of id in dimension dim of the vector (the plugin's inverse of its encoding). */
typedef float (*sn_pu_value_fn)(const void *ctx, uint32_t dim, int32_t id);

/*
 * Decodes ids into SN_ACTION_VECTOR events of v->dims values, each with the call's t; a
 * vector cut by the end of the call is held until the next. Ids must be below vocab (the host
 * guarantees it; it is checked first anyway, so that a bad call does nothing). On any failure
 * the held vector is dropped, as plugin.h asks.
 */
static inline sn_plugin_status sn_pu_vec_decode(sn_pu_vec *v, const int32_t *ids, size_t n,
                                                double t, uint32_t vocab, sn_pu_value_fn value,
                                                const void *ctx, const sn_action_sink *sink,
                                                sn_plugin_error *err)
{
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= vocab) {
            v->have = 0;
            sn_plugin_error_set(err, "token %zu is %d, outside this plugin's ids 0..%u; pass only its local ids",
                                i, (int)ids[i], vocab - 1);
            return SN_PLUGIN_ERR_INVALID;
        }
    }
    for (size_t i = 0; i < n; i++) {
        v->values[v->have] = value(ctx, v->have, ids[i]);
        if (++v->have < v->dims)
            continue;
        v->have = 0;
        sn_action a = {.kind = SN_ACTION_VECTOR, .t = t};
        a.vector.values = v->values;
        a.vector.n = v->dims;
        sn_plugin_status s = sink->emit(sink->ctx, &a);
        if (s != SN_PLUGIN_OK)
            return s;
    }
    return SN_PLUGIN_OK;
}

/* The end of a segment: a partial vector is SN_PLUGIN_ERR_INVALID ("segment ended mid-tick:
 * 3 of 7 values", unit naming the vector) and is dropped; either way the decoder is reset. */
static inline sn_plugin_status sn_pu_vec_flush(sn_pu_vec *v, const char *unit,
                                               sn_plugin_error *err)
{
    if (!v->have)
        return SN_PLUGIN_OK;
    sn_plugin_error_set(err, "segment ended mid-%s: %u of %u values; a segment holds whole %ss of %u values (a sampler following constrain() ends only there)",
                        unit, v->have, v->dims, unit, v->dims);
    v->have = 0;
    return SN_PLUGIN_ERR_INVALID;
}

/* ---------------------------------------------------------------------------------------- */
/* Constrained generation                                                                   */
/* ---------------------------------------------------------------------------------------- */

/*
 * A segment of whole groups of `group` ids (a tick, an action vector), every id allowed at
 * every position:
 *   max_groups 0: any number of groups; the segment may end after each whole group (not
 *                 while empty);
 *   max_groups G: exactly G groups; before G * group ids the segment may not end, after them
 *                 no id is allowed and it may end.
 * A segment already past G * group ids cannot have come from this rule: SN_PLUGIN_ERR_INVALID.
 */
static inline sn_plugin_status sn_pu_groups_constrain(size_t n, uint32_t group,
                                                      uint64_t max_groups, uint32_t vocab,
                                                      uint64_t *allowed, int *may_end,
                                                      sn_plugin_error *err)
{
    if (max_groups) {
        uint64_t total = max_groups * group;
        if ((uint64_t)n > total) {
            sn_plugin_error_set(err, "the segment already holds %zu ids, past the %llu (%llu x %u) a segment may hold",
                                n, (unsigned long long)total, (unsigned long long)max_groups,
                                group);
            return SN_PLUGIN_ERR_INVALID;
        }
        if ((uint64_t)n == total) {
            memset(allowed, 0, ((size_t)vocab + 63) / 64 * sizeof *allowed);
            *may_end = 1;
        } else {
            *may_end = 0;
        }
        return SN_PLUGIN_OK;
    }
    *may_end = n > 0 && n % group == 0;
    return SN_PLUGIN_OK;
}

#endif /* SN_PU_BINS_H */
