/*
 * scalar_mulaw.c - the "scalar.mulaw" plugin: Gato's tokens for unbounded continuous values
 * (proprioception, torques, rewards), one token per value.
 *
 * Each value x is mu-law companded, F(x) = sign(x) log(|x| mu + 1) / log(M mu + 1), clipped to
 * [-1, 1], and F cut into uniform bins (Reed et al., "A Generalist Agent", 2022: mu = 100,
 * M = 256, 1024 bins). Small values get fine bins and large ones coarse bins, with no range to
 * configure. The decoder inverts the bin centre and groups `dims` consecutive values into one
 * SN_ACTION_VECTOR. The bin math, the vector assembly and constrain's grouping are shared with
 * sensor.bins and action.continuous through plugins/common/bins.h.
 */
#include <sensorium/plugin.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bins.h"
#include "plugin_util.h"

#define NAME "scalar.mulaw"
/* Gato's values. */
#define BINS_DEFAULT 1024
#define MU_DEFAULT 100.0
#define M_DEFAULT 256.0
/* Far past any use, and small enough that log(M mu + 1) and its inverse stay exact in
 * doubles. */
#define MU_MAX 1e6
#define M_MAX 1e9

static const char *const KEYS[] = {"bins", "mu", "M", "dims"};

struct sn_instance {
    uint32_t bins;    /* = vocabulary size */
    double mu, M;
    double log_norm;  /* log(M mu + 1): F's denominator */
    uint32_t dims;    /* values per decoded vector */
    float *value;     /* (bins) the decoded value of each bin: F^-1 of its centre */
};

struct sn_stream {
    const sn_instance *inst;
    sn_pu_vec vec; /* the vector being decoded, held across decode calls */
};

/* ---------------------------------------------------------------------------------------- */
/* Companding                                                                               */
/* ---------------------------------------------------------------------------------------- */

/* F(x) clipped to [-1, 1]; +-Inf give +-1. x must not be NaN. */
static inline double compand(const sn_instance *inst, double x)
{
    double f = copysign(log1p(fabs(x) * inst->mu) / inst->log_norm, x);
    return f > 1.0 ? 1.0 : f < -1.0 ? -1.0 : f;
}

/* F^-1(f) = sign(f) ((M mu + 1)^|f| - 1) / mu. */
static inline double expand(const sn_instance *inst, double f)
{
    return copysign(expm1(fabs(f) * inst->log_norm) / inst->mu, f);
}

/* ---------------------------------------------------------------------------------------- */
/* Lifecycle                                                                                */
/* ---------------------------------------------------------------------------------------- */

static void sm_destroy(sn_instance *inst)
{
    if (!inst)
        return;
    free(inst->value);
    free(inst);
}

static sn_plugin_status sm_create(const sn_host *host, sn_instance **out, sn_plugin_error *err)
{
    sn_plugin_status s = sn_pu_reject_unknown_keys(host, NAME, KEYS, sizeof KEYS / sizeof *KEYS, err);
    if (s != SN_PLUGIN_OK)
        return s;
    int64_t bins = BINS_DEFAULT, dims = 1;
    double mu = MU_DEFAULT, M = M_DEFAULT;
    if ((s = sn_pu_config_int_in(host, "bins", SN_PU_BINS_MIN, SN_PU_BINS_MAX,
                                 "(bins over the companded range [-1, 1] = vocabulary size)",
                                 &bins, err)) != SN_PLUGIN_OK ||
        (s = sn_pu_config_float_in(host, "mu", 0.0, MU_MAX, &mu, err)) != SN_PLUGIN_OK ||
        (s = sn_pu_config_float_in(host, "M", 0.0, M_MAX, &M, err)) != SN_PLUGIN_OK ||
        (s = sn_pu_config_int_in(host, "dims", 1, SN_PU_DIMS_MAX,
                                 "(values per decoded vector)", &dims, err)) != SN_PLUGIN_OK)
        return s;
    sn_instance *inst = calloc(1, sizeof *inst);
    if (inst)
        inst->value = malloc((size_t)bins * sizeof *inst->value);
    if (!inst || !inst->value) {
        sm_destroy(inst);
        sn_plugin_error_set(err, "out of memory for %lld bins", (long long)bins);
        return SN_PLUGIN_ERR_NOMEM;
    }
    inst->bins = (uint32_t)bins;
    inst->mu = mu;
    inst->M = M;
    inst->log_norm = log1p(M * mu);
    inst->dims = (uint32_t)dims;
    /* Decoding is a table look-up; the table is the bin centres expanded once. */
    for (uint32_t b = 0; b < inst->bins; b++)
        inst->value[b] = (float)expand(inst, sn_pu_bin_centre((int32_t)b, -1.0, 1.0, inst->bins));
    *out = inst;
    return SN_PLUGIN_OK;
}

static uint32_t sm_vocab_size(const sn_instance *inst)
{
    return inst->bins;
}

static sn_plugin_status sm_open_stream(sn_instance *inst, sn_stream **out, sn_plugin_error *err)
{
    sn_stream *st = calloc(1, sizeof *st);
    if (!st) {
        sn_plugin_error_set(err, "out of memory opening a " NAME " stream");
        return SN_PLUGIN_ERR_NOMEM;
    }
    sn_plugin_status s = sn_pu_vec_init(&st->vec, inst->dims, err);
    if (s != SN_PLUGIN_OK) {
        free(st);
        return s;
    }
    st->inst = inst;
    *out = st;
    return SN_PLUGIN_OK;
}

static void sm_close_stream(sn_stream *st)
{
    if (!st)
        return;
    sn_pu_vec_free(&st->vec);
    free(st);
}

/* ---------------------------------------------------------------------------------------- */
/* Tokenizer                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Every value of the chunk in row-major order, those of tick i with t + i / rate. Any number
 * of values per tick; whole ticks in every chunk, so nothing is held (no encode_flush). */
static sn_plugin_status sm_encode(sn_stream *st, const sn_media *m, const sn_token_sink *sink,
                                  sn_plugin_error *err)
{
    const sn_instance *inst = st->inst;
    if (m->kind != SN_MEDIA_SERIES) {
        sn_plugin_error_set(err, "got %s media (kind %d), but " NAME " encodes series of values (ticks x dims) only",
                            sn_pu_media_kind_name(m->kind), (int)m->kind);
        return SN_PLUGIN_ERR_INVALID;
    }
    sn_plugin_status s = sn_pu_series_check(&m->series, 0, err);
    if (s == SN_PLUGIN_OK)
        s = sn_pu_series_find_nan(m, NULL, err);
    if (s != SN_PLUGIN_OK)
        return s;
    const sn_media_series *ser = &m->series;
    sn_pu_id_batch b = {.sink = sink};
    const float *x = ser->values;
    for (size_t i = 0; i < ser->n_ticks; i++) {
        double t = sn_pu_tick_time(m->t, i, ser->rate_hz);
        for (uint32_t d = 0; d < ser->dims; d++) {
            int32_t id = sn_pu_bin_index(compand(inst, *x++), -1.0, 1.0, inst->bins);
            if ((s = sn_pu_id_batch_push(&b, id, t)) != SN_PLUGIN_OK)
                return s;
        }
    }
    return sn_pu_id_batch_flush(&b);
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static float value_of(const void *ctx, uint32_t dim, int32_t id)
{
    (void)dim;
    return ((const sn_instance *)ctx)->value[id];
}

static sn_plugin_status sm_decode(sn_stream *st, const int32_t *ids, size_t n, double t,
                                  const sn_action_sink *sink, sn_plugin_error *err)
{
    return sn_pu_vec_decode(&st->vec, ids, n, t, st->inst->bins, value_of, st->inst, sink, err);
}

static sn_plugin_status sm_decode_flush(sn_stream *st, const sn_action_sink *sink,
                                        sn_plugin_error *err)
{
    (void)sink;
    return sn_pu_vec_flush(&st->vec, "vector", err);
}

/* Segments of whole vectors of `dims` values. */
static sn_plugin_status sm_constrain(sn_stream *st, const int32_t *segment, size_t n,
                                     uint64_t *allowed, int *may_end, sn_plugin_error *err)
{
    (void)segment;
    return sn_pu_groups_constrain(n, st->inst->dims, 0, st->inst->bins, allowed, may_end, err);
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
    .description = "unbounded values, one token each: mu-law companding (Gato: mu 100, M 256) into 1024 bins",
    .kind = SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER,
    .media_kinds = SN_MEDIA_BIT(SN_MEDIA_SERIES),
    .create = sm_create,
    .destroy = sm_destroy,
    .vocab_size = sm_vocab_size,
    .open_stream = sm_open_stream,
    .close_stream = sm_close_stream,
    .encode = sm_encode,
    .encode_flush = NULL,
    .decode = sm_decode,
    .decode_flush = sm_decode_flush,
    .constrain = sm_constrain,
};

SN_PLUGIN_ENTRY(index) { return index == 0 ? &desc : NULL; }
