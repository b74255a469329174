/*
 * sensor_bins.c - the "sensor.bins" plugin: a sensor series (ticks x D values) as D bin
 * tokens per tick, and such tokens back as vectors.
 *
 * The OpenVLA scheme: each dimension's range [low_d, high_d] is cut into B uniform bins and
 * every value becomes its bin; the B ids are shared by all dimensions, a token's position in
 * its tick says which dimension it is. Ranges come from the configuration or from a (2, D)
 * file that `sensorium fit` writes from recordings (the 1st and 99th percentiles of each
 * dimension). The decoder returns bin centres, one SN_ACTION_VECTOR per tick, and
 * constrain() keeps generated segments to whole ticks. The bin math and the plumbing are
 * shared with action.continuous and scalar.mulaw in plugins/common/bins.h.
 */
#include <sensorium/plugin.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bins.h"
#include "npy_f32.h"
#include "plugin_util.h"

#define NAME "sensor.bins"
#define RANGES_DEFAULT "sensor.bins.npy"
#define BINS_DEFAULT 256
/* The percentiles fit takes as each dimension's range: robust to the odd spike, which the
 * end bins then absorb by clamping. */
#define FIT_P_LOW 1.0
#define FIT_P_HIGH 99.0
/* Per-dimension INFO lines in fit's log only up to this many dimensions, to keep it short;
 * past that, a progress line every this many. */
#define FIT_LOG_DIMS 32

static const char *const KEYS[] = {"bins", "dims", "low", "high", "ranges", "ticks_per_segment"};

struct sn_instance {
    sn_pu_ranges r;             /* (dims) per-dimension [low, high] */
    uint32_t bins;              /* = vocabulary size */
    uint64_t ticks_per_segment; /* constrain: 0 any number of whole ticks */
};

struct sn_stream {
    const sn_instance *inst;
    sn_pu_vec tick; /* the tick being decoded, held across decode calls */
};

/* ---------------------------------------------------------------------------------------- */
/* Lifecycle                                                                                */
/* ---------------------------------------------------------------------------------------- */

static void sb_destroy(sn_instance *inst)
{
    if (!inst)
        return;
    sn_pu_ranges_free(&inst->r);
    free(inst);
}

static sn_plugin_status sb_create(const sn_host *host, sn_instance **out, sn_plugin_error *err)
{
    sn_plugin_status s = sn_pu_reject_unknown_keys(host, NAME, KEYS, sizeof KEYS / sizeof *KEYS, err);
    if (s != SN_PLUGIN_OK)
        return s;
    int64_t bins = BINS_DEFAULT;
    if ((s = sn_pu_config_int_in(host, "bins", SN_PU_BINS_MIN, SN_PU_BINS_MAX,
                                 "(bins per dimension = vocabulary size)", &bins, err)) !=
        SN_PLUGIN_OK)
        return s;
    sn_instance *inst = calloc(1, sizeof *inst);
    if (!inst) {
        sn_plugin_error_set(err, "out of memory");
        return SN_PLUGIN_ERR_NOMEM;
    }
    inst->bins = (uint32_t)bins;
    if ((s = sn_pu_ranges_from_config(host, NAME, RANGES_DEFAULT, &inst->r, err)) != SN_PLUGIN_OK) {
        sb_destroy(inst);
        return s;
    }
    int64_t tps = 0;
    if ((s = sn_pu_config_int_in(host, "ticks_per_segment", 0,
                                 (int64_t)(SN_PU_SEGMENT_IDS_MAX / inst->r.dims),
                                 "(0: any number of whole ticks)", &tps, err)) != SN_PLUGIN_OK) {
        sb_destroy(inst);
        return s;
    }
    inst->ticks_per_segment = (uint64_t)tps;
    *out = inst;
    return SN_PLUGIN_OK;
}

static uint32_t sb_vocab_size(const sn_instance *inst)
{
    return inst->bins;
}

static sn_plugin_status sb_open_stream(sn_instance *inst, sn_stream **out, sn_plugin_error *err)
{
    sn_stream *st = calloc(1, sizeof *st);
    if (!st) {
        sn_plugin_error_set(err, "out of memory opening a " NAME " stream");
        return SN_PLUGIN_ERR_NOMEM;
    }
    sn_plugin_status s = sn_pu_vec_init(&st->tick, inst->r.dims, err);
    if (s != SN_PLUGIN_OK) {
        free(st);
        return s;
    }
    st->inst = inst;
    *out = st;
    return SN_PLUGIN_OK;
}

static void sb_close_stream(sn_stream *st)
{
    if (!st)
        return;
    sn_pu_vec_free(&st->tick);
    free(st);
}

/* ---------------------------------------------------------------------------------------- */
/* Tokenizer                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Whole ticks arrive in every chunk, so nothing is held between calls (no encode_flush). */
static sn_plugin_status sb_encode(sn_stream *st, const sn_media *m, const sn_token_sink *sink,
                                  sn_plugin_error *err)
{
    const sn_instance *inst = st->inst;
    if (m->kind != SN_MEDIA_SERIES) {
        sn_plugin_error_set(err, "got %s media (kind %d), but " NAME " encodes sensor series (ticks x %u values) only",
                            sn_pu_media_kind_name(m->kind), (int)m->kind, inst->r.dims);
        return SN_PLUGIN_ERR_INVALID;
    }
    sn_plugin_status s = sn_pu_series_check(&m->series, inst->r.dims, err);
    if (s == SN_PLUGIN_OK)
        s = sn_pu_series_find_nan(m, NULL, err);
    if (s == SN_PLUGIN_OK)
        s = sn_pu_bins_encode(&inst->r, inst->bins, m, sink);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static float centre_of(const void *ctx, uint32_t dim, int32_t id)
{
    const sn_instance *inst = ctx;
    return (float)sn_pu_bin_centre(id, inst->r.low[dim], inst->r.high[dim], inst->bins);
}

static sn_plugin_status sb_decode(sn_stream *st, const int32_t *ids, size_t n, double t,
                                  const sn_action_sink *sink, sn_plugin_error *err)
{
    return sn_pu_vec_decode(&st->tick, ids, n, t, st->inst->bins, centre_of, st->inst, sink, err);
}

static sn_plugin_status sb_decode_flush(sn_stream *st, const sn_action_sink *sink,
                                        sn_plugin_error *err)
{
    (void)sink;
    return sn_pu_vec_flush(&st->tick, "tick", err);
}

static sn_plugin_status sb_constrain(sn_stream *st, const int32_t *segment, size_t n,
                                     uint64_t *allowed, int *may_end, sn_plugin_error *err)
{
    (void)segment;
    const sn_instance *inst = st->inst;
    return sn_pu_groups_constrain(n, inst->r.dims, inst->ticks_per_segment, inst->bins, allowed,
                                  may_end, err);
}

/* ---------------------------------------------------------------------------------------- */
/* Fit: the ranges file                                                                     */
/* ---------------------------------------------------------------------------------------- */

static int float_cmp(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The p-th percentile of n sorted values by linear interpolation between the order statistics
 * around rank p/100 * (n - 1): numpy.percentile's default ("linear") method. */
static double percentile_sorted(const float *v, size_t n, double p)
{
    double pos = p / 100.0 * (double)(n - 1);
    size_t lo = (size_t)pos;
    if (lo >= n - 1)
        return v[n - 1];
    double frac = pos - (double)lo;
    return (double)v[lo] + frac * ((double)v[lo + 1] - (double)v[lo]);
}

static sn_plugin_status sb_fit(const sn_host *host, const sn_media *data, size_t n,
                               const char *out_path, sn_plugin_error *err)
{
    sn_plugin_status s = sn_pu_reject_unknown_keys(host, NAME, KEYS, sizeof KEYS / sizeof *KEYS, err);
    if (s != SN_PLUGIN_OK)
        return s;
    int64_t dims = 0;
    if ((s = sn_pu_config_int_in(host, "dims", 1, SN_PU_DIMS_MAX, "(values per tick)", &dims,
                                 err)) != SN_PLUGIN_OK)
        return s;
    if (n == 0) {
        sn_plugin_error_set(err, "no data to fit on; give at least one series file");
        return SN_PLUGIN_ERR_INVALID;
    }
    size_t ticks = 0;
    for (size_t i = 0; i < n; i++) {
        const sn_media *m = &data[i];
        if (m->kind != SN_MEDIA_SERIES) {
            sn_plugin_error_set(err, "data item %zu is %s media; " NAME " fits on sensor series (ticks x dims) only",
                                i, sn_pu_media_kind_name(m->kind));
            return SN_PLUGIN_ERR_INVALID;
        }
        if ((s = sn_pu_series_check(&m->series, 0, err)) != SN_PLUGIN_OK)
            return s;
        if (!dims)
            dims = m->series.dims;
        if (m->series.dims != (uint64_t)dims) {
            if (i == 0)
                sn_plugin_error_set(err, "data item 0 has %u dims per tick, but config key 'dims' says %lld",
                                    m->series.dims, (long long)dims);
            else
                sn_plugin_error_set(err, "data item %zu has %u dims per tick, but data item 0 has %u; every file must have the same dims",
                                    i, m->series.dims, data[0].series.dims);
            return SN_PLUGIN_ERR_INVALID;
        }
        ticks += m->series.n_ticks;
    }
    if (ticks == 0) {
        sn_plugin_error_set(err, "the data holds no ticks; fit needs recordings with values in them");
        return SN_PLUGIN_ERR_INVALID;
    }
    const size_t D = (size_t)dims;
    host->log(host, SN_LOG_INFO, "fitting the ranges of %zu dimension%s on %zu ticks from %zu file%s: percentiles %g and %g",
              D, D == 1 ? "" : "s", ticks, n, n == 1 ? "" : "s", FIT_P_LOW, FIT_P_HIGH);

    float *col = malloc(ticks * sizeof *col);      /* one dimension's finite values */
    float *ranges = malloc(2 * D * sizeof *ranges); /* (2, D) the file */
    if (!col || !ranges) {
        free(col);
        free(ranges);
        sn_plugin_error_set(err, "out of memory for %zu ticks", ticks);
        return SN_PLUGIN_ERR_NOMEM;
    }
    size_t skipped = 0;
    for (size_t d = 0; d < D && s == SN_PLUGIN_OK; d++) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            const sn_media_series *ser = &data[i].series;
            for (size_t j = 0; j < ser->n_ticks; j++) {
                float x = ser->values[j * D + d];
                if (isfinite(x))
                    col[k++] = x;
            }
        }
        skipped += ticks - k;
        if (k == 0) {
            sn_plugin_error_set(err, "dimension %zu has no finite value in %zu ticks; it carries nothing to bin: drop it from the data",
                                d, ticks);
            s = SN_PLUGIN_ERR_INVALID;
            break;
        }
        qsort(col, k, sizeof *col, float_cmp);
        double lo = percentile_sorted(col, k, FIT_P_LOW);
        double hi = percentile_sorted(col, k, FIT_P_HIGH);
        float flo = (float)lo, fhi = (float)hi;
        if (!(flo < fhi)) {
            /* A (nearly) constant dimension: give it a small range around its value so that
             * the file still loads; every reading of it lands in the middle bins. */
            double c = 0.5 * (lo + hi), half = fmax(1e-3 * fabs(c), 1e-3);
            flo = (float)(c - half);
            fhi = (float)(c + half);
            host->log(host, SN_LOG_WARN, "dimension %zu is constant at its percentiles (%g); giving it the range [%g, %g]",
                      d, c, (double)flo, (double)fhi);
        }
        if (!isfinite(flo) || !isfinite(fhi)) {
            sn_plugin_error_set(err, "dimension %zu: percentiles %g and %g do not fit in float32; scale the data",
                                d, lo, hi);
            s = SN_PLUGIN_ERR_INVALID;
            break;
        }
        ranges[d] = flo;
        ranges[D + d] = fhi;
        /* Every dimension at INFO when there are few; otherwise a progress line now and
         * then, and each dimension at DEBUG. */
        host->log(host, D <= FIT_LOG_DIMS ? SN_LOG_INFO : SN_LOG_DEBUG,
                  "dimension %zu: %zu values, low %.9g, high %.9g", d, k, (double)flo, (double)fhi);
        if (D > FIT_LOG_DIMS && (d + 1) % FIT_LOG_DIMS == 0)
            host->log(host, SN_LOG_INFO, "%zu of %zu dimensions fitted", d + 1, D);
    }
    free(col);
    if (s == SN_PLUGIN_OK) {
        host->log(host, SN_LOG_INFO, "%zu non-finite value%s (NaN, Inf) skipped", skipped,
                  skipped == 1 ? "" : "s");
        char why[256];
        if (sn_pu_npy_write_f32(out_path, ranges, 2, D, why, sizeof why) != 0) {
            sn_plugin_error_set(err, "cannot write the ranges file '%.200s': %.200s", out_path, why);
            s = SN_PLUGIN_ERR_IO;
        }
    }
    free(ranges);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Descriptor                                                                               */
/* ---------------------------------------------------------------------------------------- */

static const sn_plugin_desc desc = {
    .struct_size = sizeof(sn_plugin_desc),
    .abi_major = SN_PLUGIN_ABI_MAJOR,
    .abi_minor = SN_PLUGIN_ABI_MINOR,
    .name = NAME,
    .version = "1.0.0",
    .description = "sensor series -> D uniform-bin tokens per tick over fitted or configured ranges -> vectors",
    .kind = SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER,
    .media_kinds = SN_MEDIA_BIT(SN_MEDIA_SERIES),
    .create = sb_create,
    .destroy = sb_destroy,
    .vocab_size = sb_vocab_size,
    .open_stream = sb_open_stream,
    .close_stream = sb_close_stream,
    .encode = sb_encode,
    .encode_flush = NULL,
    .decode = sb_decode,
    .decode_flush = sb_decode_flush,
    .constrain = sb_constrain,
    .fit = sb_fit,
};

SN_PLUGIN_ENTRY(index) { return index == 0 ? &desc : NULL; }
