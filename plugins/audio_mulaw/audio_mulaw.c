/*
 * audio_mulaw.c - the "audio.mulaw" plugin: audio as one token per sample by WaveNet's
 * mu-law companding (mu = 255, 256 levels) at a configured sample rate, and tokens back into
 * PCM.
 *
 * Input at another rate is resampled with libsamplerate's band-limited sinc converters. To
 * make the ids independent of how a live feed is chunked, the converter is always fed fixed
 * blocks of BLOCK input samples; what is left over waits in the stream for the next chunk
 * or for encode_flush, which feeds it with end_of_input. The converter therefore sees the
 * same block boundaries however the caller splits the stimulus.
 */
#include <sensorium/plugin.h>

#include "plugin_util.h"

#include <math.h>
#include <samplerate.h>
#include <stdlib.h>
#include <string.h>

#define VOCAB 256
#define MU 255.0
#define BLOCK 4096          /* input samples per converter call */
#define RATE_MIN 1000
#define RATE_MAX 192000

struct sn_instance {
    uint32_t rate;      /* the token rate (Hz) */
    int converter;      /* SRC_SINC_* */
};

struct sn_stream {
    const sn_instance *inst;
    /* encoder */
    SRC_STATE *src;     /* NULL until a stimulus at another rate arrives */
    uint32_t in_rate;   /* the rate of the current stimulus; 0 before its first chunk */
    float in[BLOCK];    /* input waiting for a whole block */
    size_t n_in;
    float *out;         /* (out_cap) converter output */
    size_t out_cap;
    double t0;          /* stream time of the stimulus's first sample */
    uint64_t emitted;   /* tokens emitted for the stimulus */
    /* decoder */
    float *pcm;         /* (pcm_cap) one decode call's samples */
    size_t pcm_cap;
};

static int32_t mulaw_id(float x)
{
    if (x > 1.0f)
        x = 1.0f;
    else if (x < -1.0f)
        x = -1.0f;
    double f = copysign(log1p(MU * fabs(x)) / log1p(MU), x);
    return (int32_t)lround((f + 1.0) * 0.5 * (VOCAB - 1));
}

static float mulaw_value(int32_t id)
{
    double f = (double)id / (VOCAB - 1) * 2.0 - 1.0;
    return (float)copysign((pow(1.0 + MU, fabs(f)) - 1.0) / MU, f);
}

/* ---------------------------------------------------------------------------------------- */

static sn_plugin_status am_create(const sn_host *host, sn_instance **out, sn_plugin_error *err)
{
    static const char *const keys[] = {"sample_rate", "resampler"};
    sn_plugin_status s = sn_pu_reject_unknown_keys(host, "audio.mulaw", keys, 2, err);
    if (s != SN_PLUGIN_OK)
        return s;
    int64_t rate = 16000;
    s = host->config_int(host, "sample_rate", &rate, err);
    if (s != SN_PLUGIN_OK && s != SN_PLUGIN_ERR_NOT_FOUND)
        return s;
    if (rate < RATE_MIN || rate > RATE_MAX) {
        sn_plugin_error_set(err, "config key 'sample_rate' is %lld; it must be %d..%d Hz", (long long)rate,
                            RATE_MIN, RATE_MAX);
        return SN_PLUGIN_ERR_CONFIG;
    }
    const char *q = "medium";
    s = host->config_string(host, "resampler", &q, err);
    if (s != SN_PLUGIN_OK && s != SN_PLUGIN_ERR_NOT_FOUND)
        return s;
    int conv;
    if (strcmp(q, "best") == 0) conv = SRC_SINC_BEST_QUALITY;
    else if (strcmp(q, "medium") == 0) conv = SRC_SINC_MEDIUM_QUALITY;
    else if (strcmp(q, "fast") == 0) conv = SRC_SINC_FASTEST;
    else {
        char quoted[64];
        sn_pu_quote(quoted, sizeof quoted, q, strlen(q));
        sn_plugin_error_set(err, "config key 'resampler' is '%s'; it must be \"best\", \"medium\" or \"fast\"", quoted);
        return SN_PLUGIN_ERR_CONFIG;
    }
    sn_instance *inst = malloc(sizeof *inst);
    if (!inst) {
        sn_plugin_error_set(err, "out of memory creating an audio.mulaw instance");
        return SN_PLUGIN_ERR_NOMEM;
    }
    inst->rate = (uint32_t)rate;
    inst->converter = conv;
    *out = inst;
    return SN_PLUGIN_OK;
}

static void am_destroy(sn_instance *inst) { free(inst); }

static uint32_t am_vocab_size(const sn_instance *inst)
{
    (void)inst;
    return VOCAB;
}

static sn_plugin_status am_open_stream(sn_instance *inst, sn_stream **out, sn_plugin_error *err)
{
    sn_stream *st = calloc(1, sizeof *st);
    if (!st) {
        sn_plugin_error_set(err, "out of memory opening an audio.mulaw stream");
        return SN_PLUGIN_ERR_NOMEM;
    }
    st->inst = inst;
    *out = st;
    return SN_PLUGIN_OK;
}

static void encoder_reset(sn_stream *st)
{
    if (st->src)
        src_delete(st->src);
    st->src = NULL;
    st->in_rate = 0;
    st->n_in = 0;
    st->emitted = 0;
}

static void am_close_stream(sn_stream *st)
{
    encoder_reset(st);
    free(st->out);
    free(st->pcm);
    free(st);
}

/* ---------------------------------------------------------------------------------------- */
/* Encoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Emits the ids of n samples at the token rate. */
static sn_plugin_status emit_samples(sn_stream *st, const float *x, size_t n, const sn_token_sink *sink)
{
    int32_t ids[512];
    for (size_t i = 0; i < n;) {
        size_t k = n - i < 512 ? n - i : 512;
        for (size_t j = 0; j < k; j++)
            ids[j] = mulaw_id(x[i + j]);
        double t = st->t0 + (double)st->emitted / st->inst->rate;
        sn_plugin_status s = sink->emit(sink->ctx, ids, k, t);
        if (s != SN_PLUGIN_OK)
            return s;
        st->emitted += k;
        i += k;
    }
    return SN_PLUGIN_OK;
}

/* Runs the converter over n input samples (a whole block, or the rest at the end). */
static sn_plugin_status convert(sn_stream *st, const float *in, size_t n, int last,
                                const sn_token_sink *sink, sn_plugin_error *err)
{
    double ratio = (double)st->inst->rate / st->in_rate;
    size_t need = (size_t)ceil((double)n * ratio) + 1024;
    if (need > st->out_cap) {
        float *o = realloc(st->out, need * sizeof *o);
        if (!o) {
            sn_plugin_error_set(err, "out of memory resampling");
            return SN_PLUGIN_ERR_NOMEM;
        }
        st->out = o;
        st->out_cap = need;
    }
    SRC_DATA d = {.data_in = in, .input_frames = (long)n, .data_out = st->out,
                  .output_frames = (long)st->out_cap, .end_of_input = last, .src_ratio = ratio};
    do {
        int e = src_process(st->src, &d);
        if (e) {
            sn_plugin_error_set(err, "resampling %u Hz to %u Hz failed: %s", st->in_rate, st->inst->rate,
                                src_strerror(e));
            return SN_PLUGIN_ERR_INTERNAL;
        }
        sn_plugin_status s = emit_samples(st, st->out, (size_t)d.output_frames_gen, sink);
        if (s != SN_PLUGIN_OK)
            return s;
        d.data_in += d.input_frames_used;
        d.input_frames -= d.input_frames_used;
        /* at the end, drain until the converter has nothing more to give */
    } while (d.input_frames > 0 || (last && d.output_frames_gen > 0));
    return SN_PLUGIN_OK;
}

static sn_plugin_status am_encode(sn_stream *st, const sn_media *m, const sn_token_sink *sink,
                                  sn_plugin_error *err)
{
    if (m->kind != SN_MEDIA_AUDIO) {
        sn_plugin_error_set(err, "audio.mulaw reads audio, not %s media", sn_pu_media_kind_name(m->kind));
        return SN_PLUGIN_ERR_INVALID;
    }
    const sn_media_audio *a = &m->audio;
    if (a->n_samples == 0)
        return SN_PLUGIN_OK;
    for (size_t i = 0; i < a->n_samples; i++)
        if (!isfinite(a->samples[i])) {
            sn_plugin_error_set(err, "sample %zu of the chunk is %s; audio must be finite", i,
                                isnan(a->samples[i]) ? "NaN" : "infinite");
            encoder_reset(st);
            return SN_PLUGIN_ERR_INVALID;
        }
    if (st->in_rate == 0) {
        st->in_rate = a->sample_rate;
        st->t0 = m->t;
        st->emitted = 0;
        if (st->in_rate != st->inst->rate) {
            int e;
            st->src = src_new(st->inst->converter, 1, &e);
            if (!st->src) {
                sn_plugin_error_set(err, "cannot start the resampler: %s", src_strerror(e));
                st->in_rate = 0;
                return SN_PLUGIN_ERR_INTERNAL;
            }
        }
    } else if (a->sample_rate != st->in_rate) {
        sn_plugin_error_set(err, "the stimulus changed sample rate from %u Hz to %u Hz mid-stream; end it (flush) first",
                            st->in_rate, a->sample_rate);
        encoder_reset(st);
        return SN_PLUGIN_ERR_INVALID;
    }
    if (!st->src) /* already at the token rate */
        return emit_samples(st, a->samples, a->n_samples, sink);
    sn_plugin_status s = SN_PLUGIN_OK;
    for (size_t i = 0; i < a->n_samples && s == SN_PLUGIN_OK;) {
        size_t k = BLOCK - st->n_in < a->n_samples - i ? BLOCK - st->n_in : a->n_samples - i;
        memcpy(st->in + st->n_in, a->samples + i, k * sizeof *st->in);
        st->n_in += k;
        i += k;
        if (st->n_in == BLOCK) {
            s = convert(st, st->in, BLOCK, 0, sink, err);
            st->n_in = 0;
        }
    }
    if (s != SN_PLUGIN_OK)
        encoder_reset(st);
    return s;
}

static sn_plugin_status am_encode_flush(sn_stream *st, const sn_token_sink *sink, sn_plugin_error *err)
{
    sn_plugin_status s = SN_PLUGIN_OK;
    if (st->src)
        s = convert(st, st->in, st->n_in, 1, sink, err);
    encoder_reset(st);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static sn_plugin_status am_decode(sn_stream *st, const int32_t *ids, size_t n, double t,
                                  const sn_action_sink *sink, sn_plugin_error *err)
{
    if (n == 0)
        return SN_PLUGIN_OK;
    if (n > st->pcm_cap) {
        float *p = realloc(st->pcm, n * sizeof *p);
        if (!p) {
            sn_plugin_error_set(err, "out of memory decoding %zu samples", n);
            return SN_PLUGIN_ERR_NOMEM;
        }
        st->pcm = p;
        st->pcm_cap = n;
    }
    for (size_t i = 0; i < n; i++)
        st->pcm[i] = mulaw_value(ids[i]);
    sn_action a = {.kind = SN_ACTION_AUDIO, .t = t};
    a.audio = (sn_media_audio){st->pcm, n, st->inst->rate};
    return sink->emit(sink->ctx, &a);
}

static const sn_plugin_desc desc = {
    .struct_size = sizeof(sn_plugin_desc),
    .abi_major = SN_PLUGIN_ABI_MAJOR,
    .abi_minor = SN_PLUGIN_ABI_MINOR,
    .name = "audio.mulaw",
    .version = "1.0.0",
    .description = "audio as one mu-law token per sample (mu = 255) at a configured rate; tokens back to PCM",
    .kind = SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER,
    .media_kinds = SN_MEDIA_BIT(SN_MEDIA_AUDIO),
    .create = am_create,
    .destroy = am_destroy,
    .vocab_size = am_vocab_size,
    .open_stream = am_open_stream,
    .close_stream = am_close_stream,
    .encode = am_encode,
    .encode_flush = am_encode_flush,
    .decode = am_decode,
};

SN_PLUGIN_ENTRY(index) { return index == 0 ? &desc : NULL; }
