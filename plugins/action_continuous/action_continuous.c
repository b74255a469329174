/*
 * action_continuous.c - the "action.continuous" plugin: a continuous action (7 joint
 * targets, a gripper opening) as D bin tokens, decoded back into one SN_ACTION_VECTOR.
 *
 * The decoder is the point: a model emits D tokens per action, each the bin of one
 * dimension's configured range [low_d, high_d], and decode() hands the robot the bin centres
 * as one vector once all D have arrived. constrain() makes a generated segment exactly
 * `actions_per_segment` whole actions. The tokenizer does the reverse on a recorded series
 * (ticks x D), so that demonstrations can be tokenized for training with the same bins. The
 * math is sensor.bins', shared through plugins/common/bins.h.
 */
#include <sensorium/plugin.h>

#include <stdlib.h>
#include <string.h>

#include "bins.h"
#include "plugin_util.h"

#define NAME "action.continuous"
#define BINS_DEFAULT 256
#define MAX_NAME_LEN 64

static const char *const KEYS[] = {"bins", "low", "high", "names", "actions_per_segment"};

struct sn_instance {
    sn_pu_ranges r;               /* (dims) per-dimension [low, high] */
    uint32_t bins;                /* = vocabulary size */
    uint64_t actions_per_segment; /* constrain: 0 any number of whole actions */
    const char **names;           /* (dims) or NULL; the strings are the host's, valid until
                                   * destroy (plugin.h) */
};

struct sn_stream {
    const sn_instance *inst;
    sn_pu_vec action; /* the action being decoded, held across decode calls */
};

/* ---------------------------------------------------------------------------------------- */
/* Lifecycle                                                                                */
/* ---------------------------------------------------------------------------------------- */

static void ac_destroy(sn_instance *inst)
{
    if (!inst)
        return;
    sn_pu_ranges_free(&inst->r);
    free(inst->names);
    free(inst);
}

/* Optional "names": D distinct non-empty strings, one per dimension. */
static sn_plugin_status read_names(const sn_host *host, sn_instance *inst, sn_plugin_error *err)
{
    size_t n = 0;
    sn_plugin_status s = host->config_string_array(host, "names", NULL, 0, &n, err);
    if (s == SN_PLUGIN_ERR_NOT_FOUND) {
        err->message[0] = '\0';
        return SN_PLUGIN_OK;
    }
    if (s != SN_PLUGIN_OK)
        return sn_pu_bins_lookup_failed("names", s, err);
    if (n != inst->r.dims) {
        sn_plugin_error_set(err, "config key 'names' has %zu name%s but 'low' and 'high' give %u dimension%s; name each dimension once",
                            n, n == 1 ? "" : "s", inst->r.dims, inst->r.dims == 1 ? "" : "s");
        return SN_PLUGIN_ERR_CONFIG;
    }
    if (!(inst->names = calloc(n, sizeof *inst->names))) {
        sn_plugin_error_set(err, "out of memory");
        return SN_PLUGIN_ERR_NOMEM;
    }
    size_t got = 0;
    s = host->config_string_array(host, "names", inst->names, n, &got, err);
    if (s != SN_PLUGIN_OK)
        return sn_pu_bins_lookup_failed("names", s, err);
    for (size_t i = 0; i < n; i++) {
        size_t len = inst->names[i] ? strlen(inst->names[i]) : 0;
        if (len == 0 || len > MAX_NAME_LEN) {
            sn_plugin_error_set(err, "config key 'names'[%zu] is %zu bytes long; each name must be 1 to %d bytes",
                                i, len, MAX_NAME_LEN);
            return SN_PLUGIN_ERR_CONFIG;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(inst->names[i], inst->names[j]) == 0) {
                char q[MAX_NAME_LEN * 4 + 8];
                sn_pu_quote(q, sizeof q, inst->names[i], len);
                sn_plugin_error_set(err, "config key 'names'[%zu] \"%s\" repeats 'names'[%zu]; each dimension needs its own name",
                                    i, q, j);
                return SN_PLUGIN_ERR_CONFIG;
            }
        }
    }
    return SN_PLUGIN_OK;
}

static sn_plugin_status ac_create(const sn_host *host, sn_instance **out, sn_plugin_error *err)
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
    /* No ranges file: an action's range is a property of the robot, written down, not fitted. */
    s = sn_pu_ranges_from_config(host, NAME, NULL, &inst->r, err);
    int64_t aps = 1;
    if (s == SN_PLUGIN_OK)
        s = sn_pu_config_int_in(host, "actions_per_segment", 0,
                                (int64_t)(SN_PU_SEGMENT_IDS_MAX / inst->r.dims),
                                "(0: any number of whole actions)", &aps, err);
    if (s == SN_PLUGIN_OK)
        s = read_names(host, inst, err);
    if (s != SN_PLUGIN_OK) {
        ac_destroy(inst);
        return s;
    }
    inst->actions_per_segment = (uint64_t)aps;
    *out = inst;
    return SN_PLUGIN_OK;
}

static uint32_t ac_vocab_size(const sn_instance *inst)
{
    return inst->bins;
}

static sn_plugin_status ac_open_stream(sn_instance *inst, sn_stream **out, sn_plugin_error *err)
{
    sn_stream *st = calloc(1, sizeof *st);
    if (!st) {
        sn_plugin_error_set(err, "out of memory opening an " NAME " stream");
        return SN_PLUGIN_ERR_NOMEM;
    }
    sn_plugin_status s = sn_pu_vec_init(&st->action, inst->r.dims, err);
    if (s != SN_PLUGIN_OK) {
        free(st);
        return s;
    }
    st->inst = inst;
    *out = st;
    return SN_PLUGIN_OK;
}

static void ac_close_stream(sn_stream *st)
{
    if (!st)
        return;
    sn_pu_vec_free(&st->action);
    free(st);
}

/* ---------------------------------------------------------------------------------------- */
/* Tokenizer: recorded actions, one tick per action                                         */
/* ---------------------------------------------------------------------------------------- */

static sn_plugin_status ac_encode(sn_stream *st, const sn_media *m, const sn_token_sink *sink,
                                  sn_plugin_error *err)
{
    const sn_instance *inst = st->inst;
    if (m->kind != SN_MEDIA_SERIES) {
        sn_plugin_error_set(err, "got %s media (kind %d), but " NAME " encodes recorded actions as a series (ticks x %u values) only",
                            sn_pu_media_kind_name(m->kind), (int)m->kind, inst->r.dims);
        return SN_PLUGIN_ERR_INVALID;
    }
    sn_plugin_status s = sn_pu_series_check(&m->series, inst->r.dims, err);
    if (s == SN_PLUGIN_OK)
        s = sn_pu_series_find_nan(m, inst->names, err);
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

static sn_plugin_status ac_decode(sn_stream *st, const int32_t *ids, size_t n, double t,
                                  const sn_action_sink *sink, sn_plugin_error *err)
{
    return sn_pu_vec_decode(&st->action, ids, n, t, st->inst->bins, centre_of, st->inst, sink,
                            err);
}

static sn_plugin_status ac_decode_flush(sn_stream *st, const sn_action_sink *sink,
                                        sn_plugin_error *err)
{
    (void)sink;
    return sn_pu_vec_flush(&st->action, "action", err);
}

static sn_plugin_status ac_constrain(sn_stream *st, const int32_t *segment, size_t n,
                                     uint64_t *allowed, int *may_end, sn_plugin_error *err)
{
    (void)segment;
    const sn_instance *inst = st->inst;
    return sn_pu_groups_constrain(n, inst->r.dims, inst->actions_per_segment, inst->bins,
                                  allowed, may_end, err);
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
    .description = "continuous action vectors (joint targets) as D uniform-bin tokens; one action per segment",
    .kind = SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER,
    .media_kinds = SN_MEDIA_BIT(SN_MEDIA_SERIES),
    .create = ac_create,
    .destroy = ac_destroy,
    .vocab_size = ac_vocab_size,
    .open_stream = ac_open_stream,
    .close_stream = ac_close_stream,
    .encode = ac_encode,
    .encode_flush = NULL,
    .decode = ac_decode,
    .decode_flush = ac_decode_flush,
    .constrain = ac_constrain,
};

SN_PLUGIN_ENTRY(index) { return index == 0 ? &desc : NULL; }
