/*
 * backend_dp.c - data-parallel replicas: M copies of one backend behind the one backend
 * interface, for throughput on a server with several GPUs (`--dp M`).
 *
 * Stage of the pipeline: between the scheduler and the backends. Replica r is the backend
 * opened with device_first = r * tp, so with --tp T it owns GPUs r*T .. r*T+T-1, its own copy
 * of the weights and its own KV pool of opts->kv_bytes. The scheduler still sees one backend:
 *
 *   kv_reserve   a sequence without blocks is placed on the replica holding the fewest
 *                sequences (ties: the most free blocks), or failing that the one with the
 *                most free blocks; it stays there until kv_release, and may move after that
 *                (a preempted session is recomputed wherever there is room);
 *   kv_domain    tells the scheduler which replica a sequence lives on, so that it preempts
 *                only sessions whose blocks can make room for it;
 *   forward      splits the ragged batch by replica (runs keep their order within each),
 *                runs every replica that has work and scatters each one's logit rows back to
 *                the run order the scheduler expects; forward_sample splits the rows'
 *                sampling requests the same way and scatters the tokens.
 *
 * GPU replicas run on threads of their own (one per replica beyond the first, which runs on
 * the caller's), so that M GPUs work at once; a replica's failure comes back as the step's
 * error, prefixed with the replica. CPU replicas share the same cores, so they run one after
 * another on the caller's thread (useful to test this code, not for speed).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

typedef struct dp_backend dp_backend;

typedef struct replica {
    dp_backend *owner;
    sn_backend *b;
    /* this step's share of the batch */
    int32_t n_tokens, n_seqs, n_rows;
    int32_t *tokens;      /* (max_tokens) */
    int32_t *seq, *pos;   /* (max_seqs) */
    int32_t *start;       /* (max_seqs + 1) */
    uint8_t *logits_for;  /* (max_seqs) */
    int32_t *rows;        /* (max_seqs) the caller's logit row of each of this replica's rows */
    float *logits;        /* (max_seqs, vocab) */
    sn_sample_row *req_rows;  /* (max_seqs) forward_sample: this replica's rows' requests */
    uint64_t *allowed, *seen; /* (max_seqs, words) */
    int32_t *sampled;         /* (max_seqs) */
    sn_status st;
    char err[1024];
} replica;

struct dp_backend {
    sn_backend base;
    sn_backend_ops ops;           /* the inner backend's name, this file's functions */
    const sn_backend_ops *inner;
    int32_t dp, max_seqs, max_tokens, vocab;
    size_t words;                 /* 64-bit words of a vocabulary bitset */
    replica *reps;                /* (dp) */
    int32_t *home;                /* (max_seqs) replica of each sequence, -1: none */
    int32_t *homed;               /* (dp) sequences living on each replica */
    /* the worker threads (parallel only): worker r - 1 runs replica r */
    int parallel, n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    uint64_t generation;          /* bumped for every step the workers take part in */
    int32_t pending;              /* workers still running the current step */
    int quit;
    /* the current step */
    float *out;                   /* logits (NULL: forward_sample without them) */
    const sn_sample_req *req;     /* forward_sample's requests; NULL: forward */
    int32_t *tokens;              /* forward_sample's tokens */
};

/* Runs replica p's share of the step (forward, or forward_sample when d->req) and copies its
 * logit rows and tokens to the caller's. */
static void run_replica(const dp_backend *d, replica *p)
{
    p->st = SN_OK;
    if (p->n_seqs == 0)
        return;
    p->start[p->n_seqs] = p->n_tokens;
    sn_batch sub = {
        .n_tokens = p->n_tokens,
        .tokens = p->tokens,
        .n_seqs = p->n_seqs,
        .seq_ids = p->seq,
        .seq_start = p->start,
        .seq_pos = p->pos,
        .logits_for = p->logits_for,
    };
    if (d->req) {
        const sn_sample_req req = {.rows = p->req_rows, .allowed = p->allowed, .seen = d->req->seen ? p->seen : NULL};
        p->st = d->inner->forward_sample(p->b, &sub, &req, p->sampled, d->out ? p->logits : NULL);
    } else {
        p->st = d->inner->forward(p->b, &sub, p->logits);
    }
    if (p->st != SN_OK) {
        snprintf(p->err, sizeof p->err, "%s", sn_errmsg());
        return;
    }
    const size_t row_bytes = (size_t)d->vocab * sizeof(float);
    for (int32_t i = 0; i < p->n_rows; i++) {
        if (d->out)
            memcpy(d->out + (size_t)p->rows[i] * (size_t)d->vocab, p->logits + (size_t)i * (size_t)d->vocab, row_bytes);
        if (d->req)
            d->tokens[p->rows[i]] = p->sampled[i];
    }
}

static void *worker(void *arg)
{
    replica *p = arg;
    dp_backend *d = p->owner;
    uint64_t seen = 0;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->quit && d->generation == seen)
            pthread_cond_wait(&d->go, &d->mu);
        if (d->quit)
            break;
        seen = d->generation;
        pthread_mutex_unlock(&d->mu);
        run_replica(d, p);
        pthread_mutex_lock(&d->mu);
        if (--d->pending == 0)
            pthread_cond_signal(&d->done);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static void dp_close(sn_backend *base)
{
    dp_backend *d = (dp_backend *)base;
    if (!d)
        return;
    if (d->n_threads) {
        pthread_mutex_lock(&d->mu);
        d->quit = 1;
        pthread_cond_broadcast(&d->go);
        pthread_mutex_unlock(&d->mu);
        for (int i = 0; i < d->n_threads; i++)
            pthread_join(d->threads[i], NULL);
    }
    if (d->parallel) {
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->go);
        pthread_cond_destroy(&d->done);
    }
    for (int32_t r = 0; d->reps && r < d->dp; r++) {
        replica *p = &d->reps[r];
        if (p->b)
            d->inner->close(p->b);
        free(p->tokens);
        free(p->seq);
        free(p->pos);
        free(p->start);
        free(p->logits_for);
        free(p->rows);
        free(p->logits);
        free(p->req_rows);
        free(p->allowed);
        free(p->seen);
        free(p->sampled);
    }
    free(d->reps);
    free(d->home);
    free(d->homed);
    free(d->threads);
    free(d);
}

/* One step: the batch (and the requests of its logits rows) split by replica, every replica
 * run, logits and tokens gathered in the caller's row order. */
static sn_status dp_step(dp_backend *d, const sn_batch *batch, const sn_sample_req *req, int32_t *tokens, float *logits)
{
    for (int32_t r = 0; r < d->dp; r++)
        d->reps[r].n_tokens = d->reps[r].n_seqs = d->reps[r].n_rows = 0;
    int32_t row = 0;
    for (int32_t i = 0; i < batch->n_seqs; i++) {
        const int32_t seq = batch->seq_ids[i];
        const int32_t r = seq >= 0 && seq < d->max_seqs ? d->home[seq] : -1;
        if (r < 0)
            return sn_fail(SN_ERR_INTERNAL, "data-parallel backend: sequence %d of the batch holds no KV blocks", seq);
        replica *p = &d->reps[r];
        const int32_t n = batch->seq_start[i + 1] - batch->seq_start[i];
        p->seq[p->n_seqs] = seq;
        p->pos[p->n_seqs] = batch->seq_pos[i];
        p->start[p->n_seqs] = p->n_tokens;
        p->logits_for[p->n_seqs] = batch->logits_for[i] != 0;
        memcpy(p->tokens + p->n_tokens, batch->tokens + batch->seq_start[i], (size_t)n * sizeof(int32_t));
        p->n_tokens += n;
        p->n_seqs++;
        if (!batch->logits_for[i])
            continue;
        if (req) {
            const size_t k = (size_t)p->n_rows, bytes = d->words * sizeof(uint64_t);
            p->req_rows[k] = req->rows[row];
            memcpy(p->allowed + k * d->words, req->allowed + (size_t)row * d->words, bytes);
            if (req->seen)
                memcpy(p->seen + k * d->words, req->seen + (size_t)row * d->words, bytes);
        }
        p->rows[p->n_rows++] = row++;
    }
    d->out = logits;
    d->req = req;
    d->tokens = tokens;
    if (d->parallel) {
        pthread_mutex_lock(&d->mu);
        d->pending = d->n_threads;
        d->generation++;
        pthread_cond_broadcast(&d->go);
        pthread_mutex_unlock(&d->mu);
        run_replica(d, &d->reps[0]);
        pthread_mutex_lock(&d->mu);
        while (d->pending > 0)
            pthread_cond_wait(&d->done, &d->mu);
        pthread_mutex_unlock(&d->mu);
    } else {
        for (int32_t r = 0; r < d->dp; r++)
            run_replica(d, &d->reps[r]);
    }
    for (int32_t r = 0; r < d->dp; r++)
        if (d->reps[r].st != SN_OK)
            return sn_fail(d->reps[r].st, "replica %d of %d: %s", r, d->dp, d->reps[r].err);
    return SN_OK;
}

static sn_status dp_forward(sn_backend *base, const sn_batch *batch, float *logits)
{
    return dp_step((dp_backend *)base, batch, NULL, NULL, logits);
}

static sn_status dp_forward_sample(sn_backend *base, const sn_batch *batch, const sn_sample_req *req, int32_t *tokens,
                                   float *logits)
{
    return dp_step((dp_backend *)base, batch, req, tokens, logits);
}

static sn_status dp_kv_reserve(sn_backend *base, int32_t seq, int32_t n_positions)
{
    dp_backend *d = (dp_backend *)base;
    if (seq < 0 || seq >= d->max_seqs)
        return sn_fail(SN_ERR_INVALID_ARG, "data-parallel backend: sequence %d out of range (max %d)", seq, d->max_seqs);
    if (d->home[seq] >= 0)
        return d->inner->kv_reserve(d->reps[d->home[seq]].b, seq, n_positions);
    /* A new home: the least loaded replica first, then the one with the most room. Every
     * pool has the same block size, so when the roomiest one cannot take it, none can. */
    int32_t least = 0, roomiest = 0;
    int32_t free_least = d->inner->kv_free_blocks(d->reps[0].b), free_most = free_least;
    for (int32_t r = 1; r < d->dp; r++) {
        const int32_t f = d->inner->kv_free_blocks(d->reps[r].b);
        if (d->homed[r] < d->homed[least] || (d->homed[r] == d->homed[least] && f > free_least)) {
            least = r;
            free_least = f;
        }
        if (f > free_most) {
            roomiest = r;
            free_most = f;
        }
    }
    int32_t r = least;
    sn_status st = d->inner->kv_reserve(d->reps[r].b, seq, n_positions);
    if (st == SN_ERR_NOMEM && roomiest != least) {
        sn_clear_error();
        r = roomiest;
        st = d->inner->kv_reserve(d->reps[r].b, seq, n_positions);
    }
    if (st == SN_OK) {
        d->home[seq] = r;
        d->homed[r]++;
    }
    return st;
}

static void dp_kv_release(sn_backend *base, int32_t seq)
{
    dp_backend *d = (dp_backend *)base;
    if (seq < 0 || seq >= d->max_seqs || d->home[seq] < 0)
        return;
    const int32_t r = d->home[seq];
    d->inner->kv_release(d->reps[r].b, seq);
    d->home[seq] = -1;
    d->homed[r]--;
}

static int32_t dp_kv_free_blocks(const sn_backend *base)
{
    const dp_backend *d = (const dp_backend *)base;
    int32_t n = 0;
    for (int32_t r = 0; r < d->dp; r++)
        n += d->inner->kv_free_blocks(d->reps[r].b);
    return n;
}

static int32_t dp_kv_total_blocks(const sn_backend *base)
{
    const dp_backend *d = (const dp_backend *)base;
    int32_t n = 0;
    for (int32_t r = 0; r < d->dp; r++)
        n += d->inner->kv_total_blocks(d->reps[r].b);
    return n;
}

static int32_t dp_kv_domain(const sn_backend *base, int32_t seq)
{
    const dp_backend *d = (const dp_backend *)base;
    return seq >= 0 && seq < d->max_seqs ? d->home[seq] : -1;
}

sn_status sn_backend_dp_open(const sn_backend_ops *inner, const sn_model *model, const sn_backend_opts *opts,
                             int parallel, sn_backend **out)
{
    *out = NULL;
    const int32_t dp = opts->dp > 0 ? opts->dp : 1;
    const int32_t tp = opts->tp > 0 ? opts->tp : 1;
    if (opts->max_seqs <= 0 || opts->max_batch_tokens <= 0)
        return sn_fail(SN_ERR_INVALID_ARG, "data-parallel backend: max_seqs and max_batch_tokens must be positive");
    dp_backend *d = calloc(1, sizeof *d);
    if (!d)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    d->ops = (sn_backend_ops){
        .name = inner->name,
        .open = NULL, /* opened through sn_backend_dp_open only */
        .close = dp_close,
        .forward = dp_forward,
        .forward_sample = dp_forward_sample,
        .kv_reserve = dp_kv_reserve,
        .kv_release = dp_kv_release,
        .kv_free_blocks = dp_kv_free_blocks,
        .kv_total_blocks = dp_kv_total_blocks,
        .kv_domain = dp_kv_domain,
    };
    d->base.ops = &d->ops;
    d->inner = inner;
    d->dp = dp;
    d->max_seqs = opts->max_seqs;
    d->max_tokens = opts->max_batch_tokens;
    d->vocab = sn_model_config_of(model)->vocab_size;
    d->words = ((size_t)d->vocab + 63) / 64;
    d->reps = calloc((size_t)dp, sizeof *d->reps);
    d->home = malloc((size_t)d->max_seqs * sizeof *d->home);
    d->homed = calloc((size_t)dp, sizeof *d->homed);
    if (!d->reps || !d->home || !d->homed) {
        dp_close(&d->base);
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    }
    for (int32_t s = 0; s < d->max_seqs; s++)
        d->home[s] = -1;
    const size_t seqs = (size_t)d->max_seqs;
    for (int32_t r = 0; r < dp; r++) {
        replica *p = &d->reps[r];
        p->owner = d;
        p->tokens = malloc((size_t)d->max_tokens * sizeof *p->tokens);
        p->seq = malloc(seqs * sizeof *p->seq);
        p->pos = malloc(seqs * sizeof *p->pos);
        p->start = malloc((seqs + 1) * sizeof *p->start);
        p->logits_for = malloc(seqs);
        p->rows = malloc(seqs * sizeof *p->rows);
        p->logits = malloc(seqs * (size_t)d->vocab * sizeof *p->logits);
        p->req_rows = malloc(seqs * sizeof *p->req_rows);
        p->allowed = malloc(seqs * d->words * sizeof *p->allowed);
        p->seen = malloc(seqs * d->words * sizeof *p->seen);
        p->sampled = malloc(seqs * sizeof *p->sampled);
        if (!p->tokens || !p->seq || !p->pos || !p->start || !p->logits_for || !p->rows || !p->logits || !p->req_rows ||
            !p->allowed || !p->seen || !p->sampled) {
            dp_close(&d->base);
            return sn_fail(SN_ERR_NOMEM, "out of memory for replica %d's step buffers", r);
        }
        sn_backend_opts ro = *opts;
        ro.device_first = opts->device_first + r * tp;
        sn_status st = inner->open(model, &ro, &p->b);
        if (st != SN_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", sn_errmsg());
            dp_close(&d->base);
            return sn_fail(st, "replica %d of %d: %s", r, dp, msg);
        }
    }
    if (parallel && dp > 1) {
        d->parallel = 1;
        pthread_mutex_init(&d->mu, NULL);
        pthread_cond_init(&d->go, NULL);
        pthread_cond_init(&d->done, NULL);
        d->threads = calloc((size_t)dp - 1, sizeof *d->threads);
        if (!d->threads) {
            dp_close(&d->base);
            return sn_fail(SN_ERR_NOMEM, "out of memory");
        }
        for (int32_t r = 1; r < dp; r++) {
            if (pthread_create(&d->threads[r - 1], NULL, worker, &d->reps[r]) != 0) {
                dp_close(&d->base);
                return sn_fail(SN_ERR_NOMEM, "data-parallel backend: could not start the thread of replica %d", r);
            }
            d->n_threads++;
        }
    }
    *out = &d->base;
    return SN_OK;
}
