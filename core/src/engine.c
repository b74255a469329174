/*
 * engine.c - the engine: sessions, the continuous-batching scheduler, the segment automaton
 * and the routing of sampled tokens to decoder plugins.
 *
 * Stage of the pipeline: everything between "a session was fed a stimulus" and "a decoder
 * emitted an action". Each step packs work from every session into one ragged batch under a
 * token budget (decode tokens of generating sessions first, for latency, then chunks of
 * pending prompts in arrival order), reserves KV blocks for it, decides each generating
 * session's mask and sampling parameters, and runs the backend once (forward_sample): the
 * backend samples every row with sampler.c's rules (a GPU on the device, so that tokens come
 * back instead of rows of logits). The masks follow each session's automaton:
 *
 *   outside a segment  only <begin:M> of the allowed output modalities, and the stop ids
 *                      (EOS and the layout's "stop" list);
 *   inside segment M   only the ids of M the plugin's constrain allows, and <end:M> when the
 *                      plugin lets the segment end;
 *   an open segment    (no markers: a language model's own vocabulary) is entered when its
 *                      generation starts; its plugin's ids minus the specials in its range,
 *                      and the stop ids, which end it.
 *
 * When the KV pool runs dry, a prompt chunk waits; when nothing at all can run, the session
 * admitted last is preempted (its blocks released, its context recomputed later). A session
 * only ever touches its own blocks. Sampling uses the session's own seed and step counter, so
 * its tokens do not depend on what it was batched with.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "model.h"
#include "sampler.h"
#include "vocab_impl.h"

#define DEFAULT_MAX_SESSIONS 16
#define DEFAULT_BATCH_TOKENS 256

struct sn_session {
    sn_engine *engine;
    int32_t slot;             /* KV sequence and index in engine->sessions */
    int64_t admitted;         /* arrival order: preemption takes the newest */
    uint64_t seed;
    sn_session_callbacks cb;
    sn_sampling sampling;     /* default for every modality */
    sn_sampling *seg_sampling; /* (n_segs) per output modality */
    uint8_t *seg_sampling_set; /* (n_segs) */
    sn_stream **streams;      /* (n_segs) plugin streams, opened on first use */
    int32_t *tokens;          /* (n_tokens) the context */
    size_t n_tokens, cap_tokens;
    int32_t n_cached;         /* tokens whose keys and values are in the cache */
    int32_t n_wanted;         /* tokens that must be cached before the session is idle: set by
                                 feeding, generating and sampling; 0 for an idle session whose
                                 blocks were taken (recomputed when it gets work again) */
    uint8_t in_batch;         /* part of the step being packed: never preempted by it */
    /* generation */
    int generating;
    int raw;                  /* no automaton: any id */
    uint8_t *out_allowed;     /* (n_segs) output modalities of this generation */
    int32_t gen_left, max_segments, segments_done;
    int32_t inside;           /* the segment being generated, or -1 */
    size_t seg_content;       /* index in tokens of the current segment's first content id */
    uint64_t step;            /* tokens sampled so far: the Philox counter */
    sn_stop_reason stop;
    char error[512];
    float *logits;            /* (vocab) when the engine keeps logits */
    struct timespec opened;
};

struct sn_engine {
    sn_plugins *plugins;
    sn_vocab *vocab;          /* NULL for a model without a layout (raw tokens only) */
    sn_model *model;
    const sn_model_config *cfg;
    sn_backend *backend;
    int32_t max_sessions, max_batch_tokens, vocab_size;
    int32_t dp;               /* data-parallel replicas: KV pools */
    int keep_logits;
    sn_session **sessions;    /* (max_sessions) by slot; NULL when free */
    int64_t admitted;
    size_t words;             /* 64-bit words of a vocabulary bitset */
    uint64_t *plugin_ids;     /* (words) the ids a plugin owns (not specials, not markers) */
    uint64_t *local_allowed;  /* (largest plugin vocab words) a plugin's constraint */
    int32_t *local_ids;       /* (max_positions) a segment's local ids for constrain */
    /* the batch of one step */
    int32_t *b_tokens;        /* (max_batch_tokens) */
    int32_t *b_seq, *b_start, *b_pos; /* (max_sessions [+1]) */
    uint8_t *b_logits_for;    /* (max_sessions) */
    sn_session **b_sess;      /* (max_sessions) */
    sn_session **b_row_sess;  /* (max_sessions) the session of each logits row */
    int32_t *order;           /* (max_sessions) slots by arrival */
    float *logits;            /* (max_sessions, vocab) */
    /* the sampling of one step's logits rows, decided before it runs */
    uint64_t *row_allowed;    /* (max_sessions, words) each row's automaton mask */
    uint64_t *row_seen;       /* (max_sessions, words) ids under the repetition penalty */
    sn_sample_row *row_req;   /* (max_sessions) */
    uint8_t *row_ok;          /* (max_sessions) the row's session takes its token */
    int32_t *row_tokens;      /* (max_sessions) */
    char describe[512];
    char model_dir[512];      /* for messages */
};

/* ---------------------------------------------------------------------------------------- */
/* Defaults                                                                                 */
/* ---------------------------------------------------------------------------------------- */

sn_engine_opts sn_engine_opts_default(void)
{
    return (sn_engine_opts){.backend = "auto"};
}

sn_sampling_params sn_sampling_params_default(void)
{
    return (sn_sampling_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
                                .repetition_penalty = 1.0f};
}

sn_session_opts sn_session_opts_default(void)
{
    return (sn_session_opts){.seed = 0, .sampling = sn_sampling_params_default()};
}

static sn_sampling to_sampling(const sn_sampling_params *p)
{
    return (sn_sampling){.temperature = p->temperature, .top_k = p->top_k, .top_p = p->top_p,
                         .min_p = p->min_p, .repetition_penalty = p->repetition_penalty};
}

/* ---------------------------------------------------------------------------------------- */
/* Engine                                                                                   */
/* ---------------------------------------------------------------------------------------- */

void sn_engine_close(sn_engine *e)
{
    if (!e)
        return;
    for (int32_t i = 0; e->sessions && i < e->max_sessions; i++)
        sn_session_close(e->sessions[i]);
    if (e->backend)
        e->backend->ops->close(e->backend);
    sn_vocab_close(e->vocab);
    sn_model_close(e->model);
    sn_plugins_close(e->plugins);
    free(e->sessions);
    free(e->row_allowed);
    free(e->plugin_ids);
    free(e->row_seen);
    free(e->row_req);
    free(e->row_ok);
    free(e->row_tokens);
    free(e->local_allowed);
    free(e->local_ids);
    free(e->b_tokens);
    free(e->b_seq);
    free(e->b_start);
    free(e->b_pos);
    free(e->b_logits_for);
    free(e->b_sess);
    free(e->b_row_sess);
    free(e->order);
    free(e->logits);
    free(e);
}

/* Does dir hold a manifest with a vocabulary layout? A Hugging Face folder does not. */
static int has_layout(const char *dir)
{
    sn_str path = {0};
    if (sn_str_printf(&path, "%s/sensorium.json", dir) != SN_OK)
        return 0;
    json_t *root = json_load_file(path.s, 0, NULL);
    sn_str_free(&path);
    int yes = root && json_object_get(root, "vocab") != NULL;
    json_decref(root);
    return yes;
}

sn_status sn_engine_open(const sn_engine_opts *opts, sn_engine **out)
{
    sn_clear_error();
    if (!opts || !opts->model_dir || !out)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_engine_open: opts, opts->model_dir and out must not be NULL");
    *out = NULL;
    const char *backend = opts->backend ? opts->backend : "auto";
    if (strcmp(backend, "cuda") != 0 && strcmp(backend, "auto") != 0 && strcmp(backend, "cpu") != 0)
        return sn_fail(SN_ERR_INVALID_ARG, "unknown backend '%s' (auto, cpu or cuda)", backend);

    sn_engine *e = calloc(1, sizeof *e);
    if (!e)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    e->max_sessions = opts->max_sessions > 0 ? opts->max_sessions : DEFAULT_MAX_SESSIONS;
    e->max_batch_tokens = opts->max_batch_tokens > 0 ? opts->max_batch_tokens : DEFAULT_BATCH_TOKENS;
    e->keep_logits = opts->keep_logits;
    snprintf(e->model_dir, sizeof e->model_dir, "%s", opts->model_dir);
    sn_status st = sn_plugins_open(opts->plugin_path, 0, &e->plugins);
    if (st == SN_OK)
        st = sn_model_open(opts->model_dir, &e->model);
    if (st != SN_OK)
        goto fail;
    e->cfg = sn_model_config_of(e->model);
    e->vocab_size = e->cfg->vocab_size;
    if (sn_model_gguf_path(e->model)) {
        /* A GGUF language model reads and writes text through its own tokenizer when the
         * text.bpe plugin is there; without it (or without a tokenizer in the file) the
         * engine still runs on raw ids, and says why once. */
        if (sn_vocab_open(opts->model_dir, e->plugins, &e->vocab) != SN_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s; raw token ids only", sn_errmsg());
            sn_log_emit(SN_LOG_WARN, "engine", msg);
            sn_clear_error();
        } else if ((int32_t)sn_vocab_size(e->vocab) != e->vocab_size) {
            st = sn_fail(SN_ERR_VOCAB, "%s: its tokenizer has %u tokens but token_embd.weight has %d rows",
                         opts->model_dir, sn_vocab_size(e->vocab), e->vocab_size);
            goto fail;
        }
    } else if (has_layout(opts->model_dir)) {
        if ((st = sn_vocab_open(opts->model_dir, e->plugins, &e->vocab)) != SN_OK)
            goto fail;
        if ((int32_t)sn_vocab_size(e->vocab) != e->vocab_size) {
            st = sn_fail(SN_ERR_VOCAB, "%s/sensorium.json: vocab.size is %u but the model's embedding has %d rows",
                         opts->model_dir, sn_vocab_size(e->vocab), e->vocab_size);
            goto fail;
        }
    }
    if (opts->dp < 0 || opts->dp > 64 || opts->tp < 0 || opts->tp > 64) {
        st = sn_fail(SN_ERR_INVALID_ARG, "%s %d: must be between 1 and 64", opts->tp < 0 || opts->tp > 64 ? "--tp" : "--dp",
                     opts->tp < 0 || opts->tp > 64 ? opts->tp : opts->dp);
        goto fail;
    }
    sn_backend_opts bo = {
        .threads = opts->threads,
        .tp = opts->tp > 0 ? opts->tp : 1,
        .dp = opts->dp > 0 ? opts->dp : 1,
        .kv_bytes = opts->kv_bytes,
        .max_seqs = e->max_sessions,
        .max_batch_tokens = e->max_batch_tokens,
    };
    if ((st = sn_backend_open_named(backend, e->model, &bo, &e->backend)) != SN_OK)
        goto fail;
    e->dp = bo.dp;
    const size_t words = ((size_t)e->vocab_size + 63) / 64, rows = (size_t)e->max_sessions;
    e->words = words;
    uint32_t max_local = 1;
    for (size_t i = 0; e->vocab && i < sn_vocab_segment_count(e->vocab); i++) {
        sn_vocab_segment seg;
        sn_vocab_segment_get(e->vocab, i, &seg);
        if (seg.size > max_local)
            max_local = seg.size;
    }
    e->row_allowed = malloc(rows * words * sizeof *e->row_allowed);
    e->plugin_ids = calloc(words, sizeof *e->plugin_ids);
    for (int32_t id = 0; e->plugin_ids && e->vocab && id < e->vocab_size; id++)
        if (sn_vocab_lookup(e->vocab, id).role == SN_TOKEN_PLUGIN)
            e->plugin_ids[id / 64] |= (uint64_t)1 << (id % 64);
    e->row_seen = malloc(rows * words * sizeof *e->row_seen);
    e->row_req = malloc(rows * sizeof *e->row_req);
    e->row_ok = malloc(rows);
    e->row_tokens = malloc(rows * sizeof *e->row_tokens);
    e->local_allowed = calloc(((size_t)max_local + 63) / 64, sizeof *e->local_allowed);
    e->local_ids = malloc((size_t)e->cfg->max_positions * sizeof *e->local_ids);
    e->sessions = calloc((size_t)e->max_sessions, sizeof *e->sessions);
    e->b_tokens = malloc((size_t)e->max_batch_tokens * sizeof *e->b_tokens);
    e->b_seq = malloc((size_t)e->max_sessions * sizeof *e->b_seq);
    e->b_start = malloc(((size_t)e->max_sessions + 1) * sizeof *e->b_start);
    e->b_pos = malloc((size_t)e->max_sessions * sizeof *e->b_pos);
    e->b_logits_for = malloc((size_t)e->max_sessions);
    e->b_sess = malloc((size_t)e->max_sessions * sizeof *e->b_sess);
    e->b_row_sess = malloc((size_t)e->max_sessions * sizeof *e->b_row_sess);
    e->order = malloc((size_t)e->max_sessions * sizeof *e->order);
    e->logits = malloc((size_t)e->max_sessions * (size_t)e->vocab_size * sizeof *e->logits);
    if (!e->row_allowed || !e->plugin_ids || !e->row_seen || !e->row_req || !e->row_ok || !e->row_tokens || !e->local_allowed ||
        !e->local_ids || !e->sessions || !e->b_tokens ||
        !e->b_seq || !e->b_start || !e->b_pos || !e->b_logits_for || !e->b_sess || !e->b_row_sess || !e->order ||
        !e->logits) {
        st = sn_fail(SN_ERR_NOMEM, "out of memory for the engine's step buffers");
        goto fail;
    }
    const sn_model_config *c = e->cfg;
    snprintf(e->describe, sizeof e->describe,
             "%s: Llama, %d layers, hidden %d, %d heads (%d KV), head_dim %d, FFN %d, vocab %d, context %d; "
             "backend %s, dp %d x tp %d, %d KV blocks of %d positions%s",
             opts->model_dir, c->n_layers, c->hidden, c->n_heads, c->n_kv_heads, c->head_dim,
             c->intermediate, c->vocab_size, c->max_positions, e->backend->ops->name, bo.dp, bo.tp,
             e->backend->ops->kv_total_blocks(e->backend) / bo.dp, SN_KV_BLOCK, bo.dp > 1 ? " per replica" : "");
    *out = e;
    return SN_OK;
fail:
    sn_engine_close(e);
    return st;
}

const sn_vocab *sn_engine_vocab(const sn_engine *e) { return e ? e->vocab : NULL; }
const sn_plugins *sn_engine_plugins(const sn_engine *e) { return e ? e->plugins : NULL; }
const char *sn_engine_describe(const sn_engine *e) { return e ? e->describe : ""; }

/* ---------------------------------------------------------------------------------------- */
/* Sessions                                                                                 */
/* ---------------------------------------------------------------------------------------- */

static size_t n_segments(const sn_engine *e) { return e->vocab ? sn_vocab_segment_count(e->vocab) : 0; }

static void session_stop(sn_session *s, sn_stop_reason why)
{
    if (!s->generating)
        return;
    s->generating = 0;
    s->stop = why;
    if (s->cb.on_stop)
        s->cb.on_stop(s->cb.ctx, s, why);
}

/* Records a session's failure: the message of the failed call, and the stop. */
static void session_fail(sn_session *s)
{
    snprintf(s->error, sizeof s->error, "%s", sn_errmsg());
    session_stop(s, SN_STOP_ERROR);
}

sn_status sn_session_open(sn_engine *e, const sn_session_opts *opts, sn_session **out)
{
    sn_clear_error();
    if (!e || !out)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_session_open: engine and out must not be NULL");
    *out = NULL;
    sn_session_opts o = opts ? *opts : sn_session_opts_default();
    sn_sampling sampling = to_sampling(&o.sampling);
    sn_status st = sn_sampling_check(&sampling);
    if (st != SN_OK)
        return st;
    int32_t slot = -1;
    for (int32_t i = 0; i < e->max_sessions && slot < 0; i++)
        if (!e->sessions[i])
            slot = i;
    if (slot < 0)
        return sn_fail(SN_ERR_INVALID_ARG, "all %d session slots are in use (raise max_sessions)", e->max_sessions);
    sn_session *s = calloc(1, sizeof *s);
    if (!s)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    size_t ns = n_segments(e);
    s->engine = e;
    s->slot = slot;
    s->admitted = e->admitted++;
    s->seed = o.seed;
    s->cb = o.callbacks;
    s->sampling = sampling;
    s->inside = -1;
    s->seg_sampling = calloc(ns ? ns : 1, sizeof *s->seg_sampling);
    s->seg_sampling_set = calloc(ns ? ns : 1, 1);
    s->out_allowed = calloc(ns ? ns : 1, 1);
    s->streams = calloc(ns ? ns : 1, sizeof *s->streams);
    s->logits = e->keep_logits ? calloc((size_t)e->vocab_size, sizeof *s->logits) : NULL;
    if (!s->seg_sampling || !s->seg_sampling_set || !s->out_allowed || !s->streams ||
        (e->keep_logits && !s->logits)) {
        e->sessions[slot] = s;
        sn_session_close(s);
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    }
    clock_gettime(CLOCK_MONOTONIC, &s->opened);
    e->sessions[slot] = s;
    int32_t bos = e->vocab ? sn_vocab_special(e->vocab, SN_TOKEN_BOS) : -1;
    if (bos >= 0 && !o.no_bos && (st = sn_session_feed_tokens(s, &bos, 1)) != SN_OK) {
        sn_session_close(s);
        return st;
    }
    *out = s;
    return SN_OK;
}

void sn_session_close(sn_session *s)
{
    if (!s)
        return;
    sn_engine *e = s->engine;
    e->backend->ops->kv_release(e->backend, s->slot);
    for (size_t i = 0; i < n_segments(e); i++)
        if (s->streams[i])
            sn_instance_close_stream(sn_vocab_instance(e->vocab, i), s->streams[i]);
    e->sessions[s->slot] = NULL;
    free(s->seg_sampling);
    free(s->seg_sampling_set);
    free(s->out_allowed);
    free(s->streams);
    free(s->tokens);
    free(s->logits);
    free(s);
}

static long find_modality(const sn_session *s, const char *modality)
{
    long i = sn_vocab_find(s->engine->vocab, modality);
    if (i < 0) {
        sn_str known = {0};
        for (size_t k = 0; k < n_segments(s->engine); k++) {
            sn_vocab_segment seg;
            sn_vocab_segment_get(s->engine->vocab, k, &seg);
            sn_str_printf(&known, "%s%s", k ? ", " : "", seg.modality);
        }
        sn_fail(SN_ERR_NOT_FOUND, "the model has no modality '%s' (it has: %s)", modality,
                known.s ? known.s : "none: it reads raw tokens only");
        sn_str_free(&known);
    }
    return i;
}

sn_status sn_session_set_sampling(sn_session *s, const char *modality, const sn_sampling_params *p)
{
    sn_clear_error();
    if (!s || !p)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_session_set_sampling: NULL argument");
    sn_sampling sp = to_sampling(p);
    sn_status st = sn_sampling_check(&sp);
    if (st != SN_OK)
        return st;
    if (!modality) {
        s->sampling = sp;
        return SN_OK;
    }
    long i = find_modality(s, modality);
    if (i < 0)
        return SN_ERR_NOT_FOUND;
    s->seg_sampling[i] = sp;
    s->seg_sampling_set[i] = 1;
    return SN_OK;
}

static sn_status append_tokens(sn_session *s, const int32_t *ids, size_t n)
{
    const sn_engine *e = s->engine;
    if (s->n_tokens + n > (size_t)e->cfg->max_positions)
        return sn_fail(SN_ERR_INVALID_ARG, "the session's context would hold %zu tokens, past the model's %d",
                       s->n_tokens + n, e->cfg->max_positions);
    if (s->n_tokens + n > s->cap_tokens) {
        size_t cap = s->cap_tokens ? s->cap_tokens : 256;
        while (cap < s->n_tokens + n)
            cap *= 2;
        int32_t *t = realloc(s->tokens, cap * sizeof *t);
        if (!t)
            return sn_fail(SN_ERR_NOMEM, "out of memory growing a session's context");
        s->tokens = t;
        s->cap_tokens = cap;
    }
    memcpy(s->tokens + s->n_tokens, ids, n * sizeof *ids);
    s->n_tokens += n;
    s->n_wanted = (int32_t)s->n_tokens;
    return SN_OK;
}

sn_status sn_session_feed_tokens(sn_session *s, const int32_t *ids, size_t n)
{
    sn_clear_error();
    if (!s || (n && !ids))
        return sn_fail(SN_ERR_INVALID_ARG, "sn_session_feed_tokens: NULL argument");
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->engine->vocab_size)
            return sn_fail(SN_ERR_INVALID_ARG, "token %zu is %d, outside the model's vocabulary 0..%d",
                           i, ids[i], s->engine->vocab_size - 1);
    return append_tokens(s, ids, n);
}

static sn_status session_stream(sn_session *s, size_t seg, sn_stream **out)
{
    if (!s->streams[seg]) {
        sn_status st = sn_instance_open_stream(sn_vocab_instance(s->engine->vocab, seg), &s->streams[seg]);
        if (st != SN_OK)
            return st;
    }
    *out = s->streams[seg];
    return SN_OK;
}

sn_status sn_session_feed(sn_session *s, const char *modality, const sn_media *media)
{
    sn_clear_error();
    if (!s || !modality || !media)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_session_feed: NULL argument");
    if (!s->engine->vocab)
        return sn_fail(SN_ERR_UNSUPPORTED, "this model has no vocabulary layout: feed raw tokens");
    if (s->inside >= 0)
        return sn_fail(SN_ERR_INVALID_ARG, "the session is generating a segment; feed it after the segment ends");
    long seg = find_modality(s, modality);
    if (seg < 0)
        return SN_ERR_NOT_FOUND;
    sn_stream *stream;
    sn_status st = session_stream(s, (size_t)seg, &stream);
    if (st != SN_OK)
        return st;
    sn_tokens ids = {0};
    st = sn_vocab_encode_segment(s->engine->vocab, (size_t)seg, stream, media, &ids);
    if (st == SN_OK)
        st = append_tokens(s, ids.ids, ids.n);
    sn_tokens_clear(&ids);
    return st;
}

sn_status sn_session_generate(sn_session *s, const char *const *modalities, size_t n,
                              int32_t max_tokens, int32_t max_segments)
{
    sn_clear_error();
    if (!s || (n && !modalities))
        return sn_fail(SN_ERR_INVALID_ARG, "sn_session_generate: NULL argument");
    if (max_tokens <= 0)
        return sn_fail(SN_ERR_INVALID_ARG, "max_tokens must be positive, not %d", max_tokens);
    if (s->n_tokens == 0)
        return sn_fail(SN_ERR_INVALID_ARG, "nothing to continue: feed the session first");
    size_t ns = n_segments(s->engine);
    memset(s->out_allowed, 0, ns ? ns : 1);
    const long open_seg = sn_vocab_open_segment(s->engine->vocab);
    int open_wanted = 0;
    for (size_t i = 0; i < n; i++) {
        long seg = find_modality(s, modalities[i]);
        if (seg < 0)
            return SN_ERR_NOT_FOUND;
        if (seg == open_seg && n > 1)
            return sn_fail(SN_ERR_UNSUPPORTED, "modality '%s' has no segment markers, so it is generated alone, not with others",
                           modalities[i]);
        open_wanted |= seg == open_seg;
        sn_plugin_instance *inst = sn_vocab_instance(s->engine->vocab, (size_t)seg);
        if (!(inst->rec->desc.kind & SN_PLUGIN_DECODER))
            return sn_fail(SN_ERR_UNSUPPORTED, "modality '%s' cannot be generated: its plugin %s has no decoder",
                           modalities[i], inst->rec->desc.name);
        s->out_allowed[seg] = 1;
    }
    s->raw = n == 0;
    s->generating = 1;
    s->stop = SN_STOP_NONE;
    s->error[0] = '\0';
    s->gen_left = max_tokens;
    s->max_segments = max_segments;
    s->segments_done = 0;
    s->inside = -1;
    if (open_wanted) { /* no begin marker to sample: the stream is in the segment already */
        s->inside = open_seg;
        s->seg_content = s->n_tokens;
    }
    /* Sampling needs the logits of the last position: if it is cached already, run it
     * again (its keys and values are rewritten with the same values). */
    s->n_wanted = (int32_t)s->n_tokens;
    if (s->n_cached == s->n_wanted)
        s->n_cached--;
    return SN_OK;
}

int sn_session_busy(const sn_session *s)
{
    return s && (s->generating || s->n_cached < s->n_wanted);
}

sn_stop_reason sn_session_stop_reason(const sn_session *s) { return s ? s->stop : SN_STOP_NONE; }
const char *sn_session_error(const sn_session *s) { return s ? s->error : ""; }

const int32_t *sn_session_tokens(const sn_session *s, size_t *n)
{
    if (n)
        *n = s ? s->n_tokens : 0;
    return s ? s->tokens : NULL;
}

const float *sn_session_logits(const sn_session *s, int32_t *vocab)
{
    if (vocab)
        *vocab = s ? s->engine->vocab_size : 0;
    return s ? s->logits : NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Sampling under the automaton                                                             */
/* ---------------------------------------------------------------------------------------- */

static void set_bit(uint64_t *bits, int32_t i) { bits[i / 64] |= (uint64_t)1 << (i % 64); }

/* The automaton's mask for the session's next token into allowed (vocab bits), and the
 * sampling parameters that apply. */
static sn_status build_mask(sn_session *s, const sn_sampling **params, uint64_t *allowed)
{
    sn_engine *e = s->engine;
    memset(allowed, 0, e->words * sizeof *allowed);
    *params = &s->sampling;
    if (s->inside < 0) {
        for (size_t i = 0; i < n_segments(e); i++) {
            if (!s->out_allowed[i])
                continue;
            sn_vocab_segment vs;
            sn_vocab_segment_get(e->vocab, i, &vs);
            set_bit(allowed, vs.begin);
        }
        size_t n_stops;
        const int32_t *stops = sn_vocab_stops(e->vocab, &n_stops);
        for (size_t k = 0; k < n_stops; k++)
            set_bit(allowed, stops[k]);
        return SN_OK;
    }
    size_t seg = (size_t)s->inside;
    sn_vocab_segment vs;
    sn_vocab_segment_get(e->vocab, seg, &vs);
    if (s->seg_sampling_set[seg])
        *params = &s->seg_sampling[seg];
    size_t n = s->n_tokens - s->seg_content;
    for (size_t i = 0; i < n; i++)
        e->local_ids[i] = s->tokens[s->seg_content + i] - (int32_t)vs.start;
    sn_stream *stream;
    sn_status st = session_stream(s, seg, &stream);
    int may_end = 1;
    if (st == SN_OK)
        st = sn_instance_constrain(sn_vocab_instance(e->vocab, seg), stream, e->local_ids, n,
                                   e->local_allowed, &may_end);
    if (st != SN_OK)
        return st;
    /* Shift the plugin's bits into its global range, a word at a time. An open segment's range
     * holds special ids too: those are never the plugin's to allow (e->plugin_ids clears
     * them; allowed holds nothing else yet); its stop ids end it instead. */
    const int open = vs.begin < 0;
    const uint32_t words = (vs.size + 63) / 64, shift = vs.start % 64;
    uint64_t *dst = allowed + vs.start / 64;
    for (uint32_t w = 0; w < words; w++) {
        uint64_t v = e->local_allowed[w];
        if (w == words - 1 && vs.size % 64)
            v &= ((uint64_t)1 << (vs.size % 64)) - 1;
        dst[w] |= v << shift;
        if (shift && v >> (64 - shift)) /* bits of ids inside the range: the word exists */
            dst[w + 1] |= v >> (64 - shift);
    }
    if (open)
        for (size_t w = vs.start / 64; w <= (vs.start + vs.size - 1) / 64; w++)
            allowed[w] &= e->plugin_ids[w];
    if (may_end && !open)
        set_bit(allowed, vs.end);
    if (may_end && open) {
        size_t n_stops;
        const int32_t *stops = sn_vocab_stops(e->vocab, &n_stops);
        for (size_t k = 0; k < n_stops; k++)
            set_bit(allowed, stops[k]);
    }
    return SN_OK;
}

typedef struct action_route {
    sn_session *s;
    const char *modality;
    int stop;
} action_route;

static int route_action(void *ctx, const sn_action *a)
{
    action_route *r = ctx;
    if (r->s->cb.on_action && r->s->cb.on_action(r->s->cb.ctx, r->s, r->modality, a) != 0)
        r->stop = 1;
    return 0;
}

static double session_clock(const sn_session *s)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - s->opened.tv_sec) + 1e-9 * (double)(now.tv_nsec - s->opened.tv_nsec);
}

/* Ends the segment being generated: the decoder flushes what it holds. */
static sn_status end_segment(sn_session *s, action_route *route)
{
    size_t seg = (size_t)s->inside;
    s->inside = -1;
    sn_vocab_segment vs;
    sn_vocab_segment_get(s->engine->vocab, seg, &vs);
    route->modality = vs.modality;
    sn_stream *stream;
    sn_status st = session_stream(s, seg, &stream);
    if (st == SN_OK)
        st = sn_instance_decode_flush(sn_vocab_instance(s->engine->vocab, seg), stream, route_action, route);
    return st;
}

/* Samples, appends and routes the session's next token from its logits row. */
/* How logits row `row` of this step is sampled, decided before the step runs (a GPU backend
 * samples on the device): the session's mask and parameters, and its Philox seed and step.
 * A plugin that fails here fails the session once the step has run (ROW_FAILED), so that no
 * callback runs while the batch is being built. Rows of sessions that are not generating
 * (kept for their logits) allow every id, and their token is dropped. */
enum { ROW_SKIP = 0, ROW_SAMPLE = 1, ROW_FAILED = 2 };

static void all_ids(const sn_engine *e, uint64_t *allowed)
{
    memset(allowed, 0xff, e->words * sizeof *allowed);
    if (e->vocab_size % 64)
        allowed[e->words - 1] = ((uint64_t)1 << (e->vocab_size % 64)) - 1;
}

static void prepare_row(sn_session *s, int32_t row)
{
    sn_engine *e = s->engine;
    uint64_t *allowed = e->row_allowed + (size_t)row * e->words;
    const sn_sampling *params = &s->sampling;
    e->row_ok[row] = s->generating ? ROW_SAMPLE : ROW_SKIP;
    if (!s->generating || s->raw) {
        all_ids(e, allowed);
    } else if (build_mask(s, &params, allowed) != SN_OK) {
        snprintf(s->error, sizeof s->error, "%s", sn_errmsg());
        e->row_ok[row] = ROW_FAILED;
        all_ids(e, allowed);
        params = &s->sampling;
    }
    e->row_req[row] = (sn_sample_row){.params = *params, .seed = s->seed, .step = s->step};
}

/* The repetition penalty's ids of every row that has one (zeros elsewhere); 0 when no row
 * has one, and the backend is handed none. */
static int prepare_seen(sn_engine *e, int32_t n_rows, sn_session *const *row_sess)
{
    int any = 0;
    for (int32_t row = 0; row < n_rows && !any; row++)
        any = e->row_ok[row] == ROW_SAMPLE && e->row_req[row].params.repetition_penalty != 1.0f;
    if (!any)
        return 0;
    for (int32_t row = 0; row < n_rows; row++) {
        uint64_t *seen = e->row_seen + (size_t)row * e->words;
        if (e->row_ok[row] == ROW_SAMPLE && e->row_req[row].params.repetition_penalty != 1.0f)
            sn_seen_bits(seen, e->vocab_size, row_sess[row]->tokens, row_sess[row]->n_tokens);
        else
            memset(seen, 0, e->words * sizeof *seen);
    }
    return 1;
}

/* The session takes its sampled token: appends it, and routes it through the automaton to
 * its decoder. */
static void take_token(sn_session *s, int32_t tok)
{
    sn_engine *e = s->engine;
    if (tok == SN_TOKEN_NONFINITE || tok >= e->vocab_size || tok < -1) {
        if (tok == SN_TOKEN_NONFINITE)
            sn_fail(SN_ERR_FORMAT, "%s: the logits at position %zu are NaN or infinite: the weights are corrupted, "
                    "or the activations overflow", e->model_dir, s->n_tokens);
        else
            sn_fail(SN_ERR_INTERNAL, "the %s backend sampled id %d, outside the vocabulary of %d (NaN logits?)",
                    e->backend->ops->name, tok, e->vocab_size);
        session_fail(s);
        return;
    }
    if (tok < 0) {
        sn_fail(SN_ERR_INTERNAL, "no token is allowed at step %llu (a dead end of the automaton)",
                (unsigned long long)s->step);
        session_fail(s);
        return;
    }
    s->step++;
    s->gen_left--;
    if (append_tokens(s, &tok, 1) != SN_OK) {
        session_fail(s);
        return;
    }
    if (s->cb.on_token)
        s->cb.on_token(s->cb.ctx, s, tok);
    if (s->raw) {
        if (s->gen_left == 0)
            session_stop(s, SN_STOP_MAX_TOKENS);
        return;
    }
    sn_token_info info = sn_vocab_lookup(e->vocab, tok);
    sn_vocab_segment vs = {0};
    if (info.segment >= 0)
        sn_vocab_segment_get(e->vocab, (size_t)info.segment, &vs);
    action_route route = {.s = s, .modality = vs.modality, .stop = 0};
    sn_status st = SN_OK;
    if (info.role == SN_TOKEN_EOS) {
        /* A stop inside the open segment: its decoder flushes what it holds first. */
        if (s->inside >= 0 && (st = end_segment(s, &route)) != SN_OK) {
            session_fail(s);
            return;
        }
        session_stop(s, SN_STOP_EOS);
        return;
    } else if (info.role == SN_TOKEN_BEGIN) {
        s->inside = info.segment;
        s->seg_content = s->n_tokens;
    } else if (info.role == SN_TOKEN_END) {
        st = end_segment(s, &route);
        s->segments_done++;
        if (st == SN_OK && s->max_segments > 0 && s->segments_done >= s->max_segments) {
            session_stop(s, SN_STOP_SEGMENTS);
            return;
        }
    } else if (info.role == SN_TOKEN_PLUGIN) {
        sn_stream *stream;
        st = session_stream(s, (size_t)info.segment, &stream);
        if (st == SN_OK)
            st = sn_instance_decode(sn_vocab_instance(e->vocab, (size_t)info.segment), stream,
                                    &info.local, 1, session_clock(s), route_action, &route);
    }
    if (st != SN_OK) {
        session_fail(s);
        return;
    }
    if (route.stop) {
        if (s->inside >= 0 && end_segment(s, &route) != SN_OK)
            snprintf(s->error, sizeof s->error, "%s", sn_errmsg());
        session_stop(s, SN_STOP_CALLER);
        return;
    }
    if (s->gen_left == 0) {
        /* Out of tokens mid-segment: the decoder still gets to flush what it holds, and
         * what it says about the cut is kept as the session's error. */
        if (s->inside >= 0 && end_segment(s, &route) != SN_OK)
            snprintf(s->error, sizeof s->error, "%s", sn_errmsg());
        session_stop(s, SN_STOP_MAX_TOKENS);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* The step                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Sessions in arrival order, into e->order; returns how many. */
static int32_t arrival_order(sn_engine *e)
{
    int32_t n = 0;
    for (int32_t i = 0; i < e->max_sessions; i++)
        if (e->sessions[i])
            e->order[n++] = i;
    for (int32_t i = 1; i < n; i++) /* insertion sort: a handful of sessions */
        for (int32_t j = i; j > 0 && e->sessions[e->order[j]]->admitted < e->sessions[e->order[j - 1]]->admitted; j--) {
            int32_t t = e->order[j];
            e->order[j] = e->order[j - 1];
            e->order[j - 1] = t;
        }
    return n;
}

static int is_idle(const sn_session *s) { return !s->generating && s->n_cached >= s->n_wanted; }

/* The KV pool a session's blocks come from (its data-parallel replica), -1 when it has none. */
static int32_t kv_domain(const sn_engine *e, const sn_session *s)
{
    return e->backend->ops->kv_domain ? e->backend->ops->kv_domain(e->backend, s->slot) : 0;
}

/* Frees blocks for `keep`: first from idle sessions (newest first; they are recomputed only
 * when they get work again), then from the newest active session admitted after `keep`
 * (recomputed as soon as blocks are free). Never from a session in the batch being packed,
 * nor from another pool than keep's (another replica's blocks cannot make room for it).
 * Returns whether blocks were freed. */
static int preempt_for(sn_engine *e, int32_t n_order, const sn_session *keep)
{
    const int32_t pool = kv_domain(e, keep);
    for (int pass = 0; pass < 2; pass++) {
        for (int32_t k = n_order - 1; k >= 0; k--) {
            sn_session *v = e->sessions[e->order[k]];
            if (v == keep || v->in_batch || v->n_cached == 0)
                continue;
            if (pool >= 0 && kv_domain(e, v) != pool)
                continue;
            if (pass == 0 && !is_idle(v))
                continue;
            if (pass == 1 && v->admitted <= keep->admitted)
                break;
            e->backend->ops->kv_release(e->backend, v->slot);
            if (is_idle(v))
                v->n_wanted = 0;
            v->n_cached = 0;
            return 1;
        }
    }
    return 0;
}

sn_status sn_engine_step(sn_engine *e, int32_t *n_tokens)
{
    sn_clear_error();
    if (n_tokens)
        *n_tokens = 0;
    if (!e)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_engine_step: engine is NULL");
    int32_t n_order = arrival_order(e);
    int32_t runs = 0, used = 0, waiting = 0;
    for (int32_t k = 0; k < n_order; k++)
        e->sessions[e->order[k]]->in_batch = 0;
    /* Pass 0: decode tokens of sessions whose context is cached; pass 1: prompt chunks. */
    for (int pass = 0; pass < 2; pass++) {
        for (int32_t k = 0; k < n_order && used < e->max_batch_tokens; k++) {
            sn_session *s = e->sessions[e->order[k]];
            int32_t pending = s->n_wanted - s->n_cached;
            int is_decode = pending == 1 && s->n_cached > 0;
            if (pending <= 0 || (pass == 0) != is_decode)
                continue;
            int32_t chunk = pending < e->max_batch_tokens - used ? pending : e->max_batch_tokens - used;
            sn_status st = e->backend->ops->kv_reserve(e->backend, s->slot, s->n_cached + chunk);
            /* A decode token may take blocks from the newest session; a prompt chunk waits. */
            while (st == SN_ERR_NOMEM && pass == 0 && preempt_for(e, n_order, s))
                st = e->backend->ops->kv_reserve(e->backend, s->slot, s->n_cached + chunk);
            if (st == SN_ERR_NOMEM) {
                waiting++;
                continue;
            }
            if (st != SN_OK) {
                session_fail(s);
                s->n_wanted = s->n_cached; /* nothing more to run for it */
                continue;
            }
            e->b_seq[runs] = s->slot;
            e->b_start[runs] = used;
            e->b_pos[runs] = s->n_cached;
            memcpy(e->b_tokens + used, s->tokens + s->n_cached, (size_t)chunk * sizeof(int32_t));
            e->b_logits_for[runs] = s->n_cached + chunk == (int32_t)s->n_tokens &&
                                    (s->generating || e->keep_logits);
            e->b_sess[runs] = s;
            s->in_batch = 1;
            used += chunk;
            runs++;
        }
    }
    if (runs == 0) {
        if (waiting == 0)
            return SN_OK; /* idle */
        /* Nothing fits: free the newest session's blocks so the older ones can go on. */
        sn_session *oldest = NULL;
        for (int32_t k = 0; k < n_order && !oldest; k++)
            if (!is_idle(e->sessions[e->order[k]]))
                oldest = e->sessions[e->order[k]];
        if (oldest && preempt_for(e, n_order, oldest))
            return SN_OK;
        /* A single session whose context exceeds the whole pool. */
        sn_session *s = oldest ? oldest : e->sessions[e->order[0]];
        sn_fail(SN_ERR_NOMEM, "the session's context of %zu tokens needs more KV blocks than %s holds (%d blocks of %d positions); raise the KV-cache budget",
                s->n_tokens, e->dp > 1 ? "a replica's pool" : "the pool", e->backend->ops->kv_total_blocks(e->backend) / e->dp, SN_KV_BLOCK);
        session_fail(s);
        s->n_wanted = s->n_cached;
        return SN_OK;
    }
    e->b_start[runs] = used;
    int32_t n_rows = 0;
    for (int32_t r = 0; r < runs; r++)
        if (e->b_logits_for[r]) {
            e->b_row_sess[n_rows] = e->b_sess[r];
            prepare_row(e->b_sess[r], n_rows++);
        }
    const sn_sample_req req = {
        .rows = e->row_req,
        .allowed = e->row_allowed,
        .seen = prepare_seen(e, n_rows, e->b_row_sess) ? e->row_seen : NULL,
    };
    sn_batch batch = {
        .n_tokens = used,
        .tokens = e->b_tokens,
        .n_seqs = runs,
        .seq_ids = e->b_seq,
        .seq_start = e->b_start,
        .seq_pos = e->b_pos,
        .logits_for = e->b_logits_for,
    };
    sn_status st = e->backend->ops->forward_sample(e->backend, &batch, &req, e->row_tokens,
                                                   e->keep_logits ? e->logits : NULL);
    if (st != SN_OK)
        return st;
    int32_t row = 0;
    for (int32_t r = 0; r < runs; r++) {
        sn_session *s = e->b_sess[r];
        s->n_cached += e->b_start[r + 1] - e->b_start[r];
        if (!e->b_logits_for[r])
            continue;
        if (s->logits)
            memcpy(s->logits, e->logits + (size_t)row * e->vocab_size, (size_t)e->vocab_size * sizeof *s->logits);
        if (e->row_ok[row] == ROW_FAILED)
            session_stop(s, SN_STOP_ERROR);
        else if (e->row_ok[row] == ROW_SAMPLE && s->generating)
            take_token(s, e->row_tokens[row]);
        row++;
    }
    if (n_tokens)
        *n_tokens = used;
    return SN_OK;
}

sn_status sn_engine_run(sn_engine *e)
{
    for (;;) {
        int32_t n;
        sn_status st = sn_engine_step(e, &n);
        if (st != SN_OK)
            return st;
        int busy = 0;
        for (int32_t i = 0; i < e->max_sessions && !busy; i++)
            busy = sn_session_busy(e->sessions[i]);
        if (!busy)
            return SN_OK;
    }
}
