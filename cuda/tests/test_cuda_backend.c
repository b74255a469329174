/*
 * test_cuda_backend.c - the CUDA backend (libsensorium_cuda.so's sn_cuda_backend_ops) end to
 * end on small random models: a ragged prefill batch (runs of 7, 13 and 1 tokens), decode
 * steps fed with the backend's own greedy tokens (the CUDA-graph path), a chunked prefill
 * next to a decode with a run that wants no logits (the row gather), and a released sequence
 * whose blocks are reused. Each logits row is compared with a plain fp32 Llama forward over
 * the whole history (the arithmetic of core/src/cpu_backend.c, recomputed without a cache).
 *
 * Tolerance (bf16 weights and activations between ops, fp32 accumulation):
 * |got - ref| <= 3e-2 * max|ref row| + 2e-2 |ref|; greedy tokens must agree wherever the
 * reference's top two logits are further apart than that. Graph replay must match eager
 * execution (SN_CUDA_GRAPHS=0) within 1e-3 * max|logit| (it is expected to be bit-identical;
 * the line printed says), and the one-rank NCCL path (SN_CUDA_NCCL=1) must match the
 * reference within the tolerance above. forward_sample's tokens must be sampler.c's
 * (sn_sample_seen) on the logits it returns, under masks, top-k/top-p/min-p and a repetition
 * penalty, and the same without the logits copy.
 *
 * Models: (A) BF16 weights, rotate_half RoPE, untied, GQA 4:2, head_dim 64; (B) F32 weights
 * (rounded to bf16 at upload), interleaved RoPE with Llama-3 scaling, tied embeddings, head_dim
 * 128, 2 query heads per KV head.
 *
 * Data-parallel replicas call forward() of different backends from different threads at once
 * (core/src/backend_dp.c): two backends on the same GPU, each driven by a thread that did not
 * open it, through graph capture and replay at the same time, must give what one backend
 * driven alone gives (1e-3 * max|logit|; expected bit-identical).
 */
#include <cuda_runtime.h>
#include <pthread.h>

#include "cuda_test.h"
#include "host_model.h"
#include "rope.h"

/* ---- The reference: fp32, whole history, no cache ----------------------------------------- */

static void ref_matmul(float *out, const float *x, int n, int in, const float *w, int out_f)
{
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out_f; o++) {
            double s = 0.0;
            for (int k = 0; k < in; k++)
                s += (double)x[(size_t)i * in + k] * w[(size_t)o * in + k];
            out[(size_t)i * out_f + o] = (float)s;
        }
}

static float *ref_weights(const sn_tensor *t)
{
    size_t n = t->nbytes / hm_dtype_size(t->dtype);
    float *f = malloc(n * sizeof *f);
    hm_convert(t->dtype, t->data, f, n);
    return f;
}

static void ref_rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps)
{
    for (int i = 0; i < n; i++) {
        double ss = 0.0;
        for (int j = 0; j < dim; j++)
            ss += (double)x[(size_t)i * dim + j] * x[(size_t)i * dim + j];
        float sc = (float)(1.0 / sqrt(ss / dim + eps));
        for (int j = 0; j < dim; j++)
            out[(size_t)i * dim + j] = x[(size_t)i * dim + j] * sc * w[j];
    }
}

static void ref_rope(float *x, int n, int heads, int hd, const float *inv_freq, int interleaved)
{
    const int half = hd / 2, stride = interleaved ? 2 : 1, partner = interleaved ? 1 : half;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < half; j++) {
            float a = (float)i * inv_freq[j], c = cosf(a), s = sinf(a);
            for (int h = 0; h < heads; h++) {
                float *v = x + ((size_t)i * heads + h) * hd + (size_t)j * stride;
                float p = v[0], q = v[partner];
                v[0] = p * c - q * s;
                v[partner] = q * c + p * s;
            }
        }
}

/* logits (vocab) of the last of n tokens. */
static void ref_forward(const sn_model *m, const int32_t *tok, int n, float *logits)
{
    const sn_model_config *c = &m->cfg;
    const int H = c->hidden, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, I = c->intermediate;
    float *x = calloc((size_t)n * H, 4), *xn = calloc((size_t)n * H, 4), *q = calloc((size_t)n * nh * hd, 4),
          *k = calloc((size_t)n * nkv * hd, 4), *v = calloc((size_t)n * nkv * hd, 4), *att = calloc((size_t)n * nh * hd, 4),
          *tmp = calloc((size_t)n * H, 4), *g = calloc((size_t)n * I, 4), *u = calloc((size_t)n * I, 4),
          *sc = calloc((size_t)n, 4), inv_freq[256];
    sn_rope_inv_freq(c, NULL, inv_freq);
    float *emb = ref_weights(&m->embed);
    for (int i = 0; i < n; i++)
        memcpy(x + (size_t)i * H, emb + (size_t)tok[i] * H, (size_t)H * 4);
    for (int l = 0; l < c->n_layers; l++) {
        const sn_layer_weights *w = &m->layers[l];
        float *an = ref_weights(w->attn_norm), *wq = ref_weights(w->wq), *wk = ref_weights(w->wk), *wv = ref_weights(w->wv),
              *wo = ref_weights(w->wo), *fn = ref_weights(w->ffn_norm), *wg = ref_weights(w->w_gate),
              *wu = ref_weights(w->w_up), *wd = ref_weights(w->w_down);
        ref_rmsnorm(xn, x, an, n, H, c->rms_eps);
        ref_matmul(q, xn, n, H, wq, nh * hd);
        ref_matmul(k, xn, n, H, wk, nkv * hd);
        ref_matmul(v, xn, n, H, wv, nkv * hd);
        ref_rope(q, n, nh, hd, inv_freq, c->rope_interleaved);
        ref_rope(k, n, nkv, hd, inv_freq, c->rope_interleaved);
        for (int i = 0; i < n; i++)
            for (int h = 0; h < nh; h++) {
                const int kvh = h / (nh / nkv);
                float mx = -INFINITY, sum = 0.0f;
                for (int p = 0; p <= i; p++) {
                    double d = 0.0;
                    for (int j = 0; j < hd; j++)
                        d += (double)q[((size_t)i * nh + h) * hd + j] * k[((size_t)p * nkv + kvh) * hd + j];
                    sc[p] = (float)d / sqrtf((float)hd);
                    mx = sc[p] > mx ? sc[p] : mx;
                }
                for (int p = 0; p <= i; p++)
                    sum += sc[p] = expf(sc[p] - mx);
                for (int j = 0; j < hd; j++) {
                    double o = 0.0;
                    for (int p = 0; p <= i; p++)
                        o += (double)sc[p] / sum * v[((size_t)p * nkv + kvh) * hd + j];
                    att[((size_t)i * nh + h) * hd + j] = (float)o;
                }
            }
        ref_matmul(tmp, att, n, nh * hd, wo, H);
        for (size_t j = 0; j < (size_t)n * H; j++)
            x[j] += tmp[j];
        ref_rmsnorm(xn, x, fn, n, H, c->rms_eps);
        ref_matmul(g, xn, n, H, wg, I);
        ref_matmul(u, xn, n, H, wu, I);
        for (size_t j = 0; j < (size_t)n * I; j++)
            g[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
        ref_matmul(tmp, g, n, I, wd, H);
        for (size_t j = 0; j < (size_t)n * H; j++)
            x[j] += tmp[j];
        free(an), free(wq), free(wk), free(wv), free(wo), free(fn), free(wg), free(wu), free(wd);
    }
    float *nw = ref_weights(&m->norm), *lm = ref_weights(hm_lm_head(m));
    ref_rmsnorm(xn, x + (size_t)(n - 1) * H, nw, 1, H, c->rms_eps);
    ref_matmul(logits, xn, 1, H, lm, c->vocab_size);
    free(nw), free(lm), free(emb);
    free(x), free(xn), free(q), free(k), free(v), free(att), free(tmp), free(g), free(u), free(sc);
}

/* ---- The scenario ---------------------------------------------------------------------------- */

#define MAX_SEQS 4
#define MAX_HIST 96

typedef struct scenario {
    const sn_model *m;
    const sn_backend_ops *ops;
    sn_backend *b;
    int32_t hist[MAX_SEQS][MAX_HIST];
    int32_t len[MAX_SEQS];   /* tokens in each sequence's history */
    int32_t cached[MAX_SEQS];/* tokens already run through the backend */
    float *logits;           /* (MAX_SEQS, vocab) */
    float *all;              /* every logits row of the scenario, in order (for graph on/off equality) */
    size_t n_all, cap_all;
    int compare;             /* compare with the reference */
    size_t mismatches, token_disagreements, rows_checked;
} scenario;

static void check_row(scenario *s, int seq, const float *got)
{
    const int V = s->m->cfg.vocab_size;
    if (s->n_all + (size_t)V <= s->cap_all) {
        memcpy(s->all + s->n_all, got, (size_t)V * sizeof *got);
        s->n_all += (size_t)V;
    }
    if (!s->compare)
        return;
    float *ref = malloc((size_t)V * sizeof *ref);
    double *refd = malloc((size_t)V * sizeof *refd);
    ref_forward(s->m, s->hist[seq], s->len[seq], ref);
    double mx = 0.0;
    for (int i = 0; i < V; i++) {
        refd[i] = ref[i];
        mx = fabs(ref[i]) > mx ? fabs(ref[i]) : mx;
    }
    const double atol = 3e-2 * mx, rtol = 2e-2;
    char what[64];
    snprintf(what, sizeof what, "seq %d len %d logits", seq, s->len[seq]);
    s->mismatches += sn_test_compare(what, got, refd, (size_t)V, atol, rtol);
    const int gr = sn_test_argmax(ref, V), gg = sn_test_argmax(got, V);
    float second = -INFINITY;
    for (int i = 0; i < V; i++)
        if (i != gr && ref[i] > second)
            second = ref[i];
    if (gr != gg && ref[gr] - second > 2 * (atol + rtol * fabs(ref[gr]))) {
        fprintf(stderr, "  seq %d len %d: greedy token %d, reference %d (gap %.4g)\n", seq, s->len[seq], gg, gr,
                ref[gr] - second);
        s->token_disagreements++;
    }
    s->rows_checked++;
    free(ref);
    free(refd);
}

/* One step: for each listed run, its next `n` uncached tokens (n 0: skip); logits when want. */
static void step(scenario *s, int n_runs, const int *seqs, const int *counts, const int *want)
{
    int32_t tokens[256], seq_ids[MAX_SEQS], start[MAX_SEQS + 1], pos[MAX_SEQS];
    uint8_t lf[MAX_SEQS];
    int t = 0;
    for (int r = 0; r < n_runs; r++) {
        const int q = seqs[r];
        cr_assert(s->ops->kv_reserve(s->b, q, s->cached[q] + counts[r]) == SN_OK, "kv_reserve: %s", hm_errbuf);
        seq_ids[r] = q;
        start[r] = t;
        pos[r] = s->cached[q];
        lf[r] = (uint8_t)want[r];
        for (int i = 0; i < counts[r]; i++)
            tokens[t++] = s->hist[q][s->cached[q] + i];
    }
    start[n_runs] = t;
    sn_batch batch = {t, tokens, n_runs, seq_ids, start, pos, lf};
    cr_assert(s->ops->forward(s->b, &batch, s->logits) == SN_OK, "forward: %s", hm_errbuf);
    int row = 0;
    for (int r = 0; r < n_runs; r++) {
        const int q = seqs[r];
        s->cached[q] += counts[r];
        if (!want[r])
            continue;
        const float *got = s->logits + (size_t)row++ * s->m->cfg.vocab_size;
        for (int i = 0; i < s->m->cfg.vocab_size; i++)
            cr_assert(isfinite(got[i]), "seq %d: logit %d is %g", q, i, got[i]);
        /* The reference sees exactly the history the backend has cached. */
        const int saved = s->len[q];
        s->len[q] = s->cached[q];
        check_row(s, q, got);
        s->len[q] = saved;
        if (s->cached[q] == s->len[q] && s->len[q] < MAX_HIST) /* greedy continuation */
            s->hist[q][s->len[q]++] = sn_test_argmax(got, s->m->cfg.vocab_size);
    }
}

static int32_t scenario_tp = 1; /* tensor-parallel GPUs of the scenarios */

static void run_scenario(scenario *s, const sn_model *m, int compare, float *all, size_t cap_all)
{
    memset(s, 0, sizeof *s);
    s->m = m;
    s->compare = compare;
    s->all = all;
    s->cap_all = cap_all;
    s->ops = sn_cuda_backend_ops(SN_CUDA_BACKEND_ABI, &hm_host);
    cr_assert(s->ops && strcmp(s->ops->name, "cuda") == 0);
    sn_backend_opts o = {.threads = 0, .tp = scenario_tp, .kv_bytes = 0, .max_seqs = MAX_SEQS, .max_batch_tokens = 64};
    cr_assert(s->ops->open(m, &o, &s->b) == SN_OK, "open: %s", hm_errbuf);
    cr_assert(s->ops->kv_total_blocks(s->b) > 0);
    s->logits = malloc((size_t)MAX_SEQS * m->cfg.vocab_size * sizeof(float));
    uint64_t seed = 42;
    const int prompt[MAX_SEQS] = {7, 13, 1, 20};
    for (int q = 0; q < MAX_SEQS; q++) {
        s->len[q] = prompt[q];
        for (int i = 0; i < prompt[q]; i++)
            s->hist[q][i] = (int32_t)(hm_next(&seed) % (uint64_t)m->cfg.vocab_size);
    }
    /* Mixed prefill: runs of 7, 13 and 1 tokens. */
    step(s, 3, (const int[]){0, 1, 2}, (const int[]){7, 13, 1}, (const int[]){1, 1, 1});
    /* Decode-only steps: the graph path (captured once, then replayed; the context crosses
     * block boundaries at 16). */
    for (int k = 0; k < 5; k++)
        step(s, 3, (const int[]){0, 1, 2}, (const int[]){1, 1, 1}, (const int[]){1, 1, 1});
    /* Chunked prefill of seq 3 next to a decode of seq 0; the first chunk wants no logits. */
    step(s, 2, (const int[]){3, 0}, (const int[]){10, 1}, (const int[]){0, 1});
    step(s, 2, (const int[]){0, 3}, (const int[]){1, 10}, (const int[]){1, 1});
    /* Release seq 1; a fresh sequence in its slot reuses its blocks. */
    s->ops->kv_release(s->b, 1);
    s->cached[1] = 0;
    s->len[1] = 5;
    for (int i = 0; i < 5; i++)
        s->hist[1][i] = (int32_t)(hm_next(&seed) % (uint64_t)m->cfg.vocab_size);
    step(s, 2, (const int[]){1, 2}, (const int[]){5, 1}, (const int[]){1, 1});
    for (int k = 0; k < 3; k++)
        step(s, 4, (const int[]){0, 1, 2, 3}, (const int[]){1, 1, 1, 1}, (const int[]){1, 1, 1, 1});
    s->ops->close(s->b);
    free(s->logits);
}

static sn_model_config config_a(void)
{
    sn_model_config c = {0};
    c.vocab_size = 211, c.hidden = 256, c.intermediate = 344, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2;
    c.head_dim = 64, c.max_positions = 128, c.rms_eps = 1e-5f, c.rope_theta = 10000.0f;
    return c;
}

static sn_model_config config_b(void)
{
    sn_model_config c = {0};
    c.vocab_size = 300, c.hidden = 256, c.intermediate = 512, c.n_layers = 3, c.n_heads = 4, c.n_kv_heads = 2;
    c.head_dim = 128, c.max_positions = 256, c.rms_eps = 1e-6f, c.rope_theta = 500000.0f, c.tie_embeddings = 1;
    c.rope_llama3 = 1, c.rope_factor = 8.0f, c.rope_low_freq_factor = 1.0f, c.rope_high_freq_factor = 4.0f;
    c.rope_original_max_positions = 64, c.rope_interleaved = 1;
    return c;
}

static void compare_case(sn_model_config c, sn_dtype dtype)
{
    sn_model *m = hm_model_make(&c, dtype, 7, 0);
    scenario s;
    const size_t cap = (size_t)64 * MAX_SEQS * c.vocab_size;
    float *eager = malloc(cap * sizeof *eager), *graph = malloc(cap * sizeof *graph);
    setenv("SN_CUDA_GRAPHS", "1", 1);
    run_scenario(&s, m, 1, graph, cap);
    fprintf(stderr, "graphs on: %zu rows checked, %zu mismatching elements, %zu greedy disagreements\n", s.rows_checked,
            s.mismatches, s.token_disagreements);
    cr_expect(s.mismatches == 0, "%zu logits outside the tolerance", s.mismatches);
    cr_expect(s.token_disagreements == 0, "%zu greedy tokens differ from the reference", s.token_disagreements);
    const size_t n_graph = s.n_all;
    setenv("SN_CUDA_GRAPHS", "0", 1);
    run_scenario(&s, m, 0, eager, cap);
    cr_expect(s.n_all == n_graph, "graphs on: %zu logits, off: %zu", n_graph, s.n_all);
    /* The same kernels on the same data: equal, unless cuBLAS picks another algorithm
     * inside a capture (then within fp32 accumulation-order noise). */
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n_graph && i < s.n_all; i++) {
        worst = fmax(worst, fabs((double)eager[i] - graph[i]));
        scale = fmax(scale, fabs((double)eager[i]));
    }
    fprintf(stderr, "graphs on vs off: max |diff| %.3g (max |logit| %.3g)%s\n", worst, scale,
            worst == 0 ? ", bit-identical" : "");
    cr_expect(worst <= 1e-3 * scale, "graph replay differs from eager execution by %.3g", worst);
    hm_model_free(m);
    free(eager);
    free(graph);
    unsetenv("SN_CUDA_GRAPHS");
}

Test(cuda_backend, bf16_gqa_rotate_half) { compare_case(config_a(), SN_DTYPE_BF16); }

Test(cuda_backend, f32_tied_interleaved_llama3_rope) { compare_case(config_b(), SN_DTYPE_F32); }

Test(cuda_backend, nccl_one_rank)
{
    sn_model_config c = config_a();
    sn_model *m = hm_model_make(&c, SN_DTYPE_BF16, 11, 0);
    scenario s;
    setenv("SN_CUDA_NCCL", "1", 1);
    const sn_backend_ops *ops = sn_cuda_backend_ops(SN_CUDA_BACKEND_ABI, &hm_host);
    sn_backend *probe = NULL;
    sn_backend_opts o = {.tp = 1, .max_seqs = 1, .max_batch_tokens = 4};
    if (ops->open(m, &o, &probe) == SN_ERR_UNSUPPORTED) {
        fprintf(stderr, "NCCL one rank: not run: %s\n", hm_errbuf); /* a build without NCCL */
        hm_model_free(m);
        return;
    }
    cr_assert(probe, "open: %s", hm_errbuf);
    ops->close(probe);
    run_scenario(&s, m, 1, NULL, 0);
    unsetenv("SN_CUDA_NCCL");
    fprintf(stderr, "NCCL one rank: %zu rows checked, %zu mismatching elements\n", s.rows_checked, s.mismatches);
    cr_expect(s.mismatches == 0 && s.token_disagreements == 0);
    hm_model_free(m);
}

/* ---- Replicas on threads of their own ---------------------------------------------------- */

#define REP_SEQS 3
#define REP_STEPS 7 /* one prefill, then decode steps: eager, capture, replays */

typedef struct replica_run {
    const sn_backend_ops *ops;
    sn_backend *b;
    int32_t vocab;
    float *logits; /* (REP_STEPS, REP_SEQS, vocab) */
    sn_status st;  /* the first failure, SN_OK if none */
} replica_run;

/* A fixed token stream (not the backend's own argmax, so that every run sees the same
 * batches): a ragged prefill, then one token per sequence per step. No assertions here: this
 * runs on worker threads, and the caller checks st. */
static void *drive_replica(void *arg)
{
    replica_run *r = arg;
    const int32_t V = r->vocab;
    int32_t tokens[32], seq_ids[REP_SEQS] = {0, 1, 2}, start[REP_SEQS + 1], pos[REP_SEQS] = {0, 0, 0};
    const int32_t prompt[REP_SEQS] = {5, 9, 1};
    uint8_t lf[REP_SEQS] = {1, 1, 1};
    r->st = SN_OK;
    for (int step = 0; step < REP_STEPS && r->st == SN_OK; step++) {
        int32_t n = 0;
        for (int s = 0; s < REP_SEQS; s++) {
            const int32_t count = step == 0 ? prompt[s] : 1;
            start[s] = n;
            for (int i = 0; i < count; i++)
                tokens[n++] = (int32_t)((step * 131 + s * 37 + i * 11) % V);
            if ((r->st = r->ops->kv_reserve(r->b, s, pos[s] + count)) != SN_OK)
                return NULL;
        }
        start[REP_SEQS] = n;
        sn_batch batch = {n, tokens, REP_SEQS, seq_ids, start, pos, lf};
        if ((r->st = r->ops->forward(r->b, &batch, r->logits + (size_t)step * REP_SEQS * V)) != SN_OK)
            return NULL;
        for (int s = 0; s < REP_SEQS; s++)
            pos[s] += start[s + 1] - start[s];
    }
    return NULL;
}

static double max_abs_diff(const float *a, const float *b, size_t n, double *scale)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, isnan(a[i]) || isnan(b[i]) ? INFINITY : fabs((double)a[i] - b[i]));
        *scale = fmax(*scale, fabs((double)b[i]));
    }
    return worst;
}

Test(cuda_backend, replicas_forward_from_two_threads_at_once)
{
    sn_model_config c = config_a();
    sn_model *m = hm_model_make(&c, SN_DTYPE_BF16, 13, 0);
    const sn_backend_ops *ops = sn_cuda_backend_ops(SN_CUDA_BACKEND_ABI, &hm_host);
    cr_assert(ops);
    setenv("SN_CUDA_GRAPHS", "1", 1);
    const size_t n = (size_t)REP_STEPS * REP_SEQS * c.vocab_size;
    /* dp 2 as backend_dp.c opens replicas on one GPU: both from device 0 */
    sn_backend_opts o = {.tp = 1, .max_seqs = REP_SEQS, .max_batch_tokens = 32, .device_first = 0, .dp = 2};
    replica_run ref = {ops, NULL, c.vocab_size, malloc(n * sizeof(float)), SN_OK};
    cr_assert(ops->open(m, &o, &ref.b) == SN_OK, "open: %s", hm_errbuf);
    drive_replica(&ref);
    cr_assert(ref.st == SN_OK, "the replica alone: %s", hm_errbuf);
    ops->close(ref.b);
    replica_run rep[2];
    for (int i = 0; i < 2; i++) {
        rep[i] = (replica_run){ops, NULL, c.vocab_size, malloc(n * sizeof(float)), SN_OK};
        cr_assert(ops->open(m, &o, &rep[i].b) == SN_OK, "open replica %d: %s", i, hm_errbuf);
    }
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        cr_assert(pthread_create(&th[i], NULL, drive_replica, &rep[i]) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        cr_expect(rep[i].st == SN_OK, "replica %d on its thread failed: %s", i, hm_errbuf);
        double scale = 0;
        const double worst = rep[i].st == SN_OK ? max_abs_diff(rep[i].logits, ref.logits, n, &scale) : INFINITY;
        fprintf(stderr, "replica %d on its own thread vs alone: max |diff| %.3g (max |logit| %.3g)%s\n", i, worst, scale,
                worst == 0 ? ", bit-identical" : "");
        cr_expect(worst <= 1e-3 * scale, "replica %d differs from the backend driven alone by %.3g", i, worst);
        ops->close(rep[i].b);
        free(rep[i].logits);
    }
    free(ref.logits);
    unsetenv("SN_CUDA_GRAPHS");
    hm_model_free(m);
}

/* ---- Sampling on the device ---------------------------------------------------------------- */

#define FS_SEQS 4
#define FS_STEPS 10

/* Runs FS_STEPS steps of forward_sample (a ragged prefill, then decode steps fed with the
 * sampled tokens, or with `feed` when given), each row with its own parameters and mask;
 * tokens[step][seq] gets the device's token. With `check`, the logits come back too and every
 * token must be sampler.c's (sn_sample_seen) for that row. Returns the mismatches. */
static int fs_run(const sn_model *m, int check, const int32_t (*feed)[FS_SEQS], int32_t tokens[FS_STEPS][FS_SEQS])
{
    const sn_backend_ops *ops = sn_cuda_backend_ops(SN_CUDA_BACKEND_ABI, &hm_host);
    cr_assert(ops);
    const int32_t V = m->cfg.vocab_size;
    const size_t W = ((size_t)V + 63) / 64;
    sn_backend_opts o = {.tp = 1, .max_seqs = FS_SEQS, .max_batch_tokens = 64};
    sn_backend *b;
    cr_assert(ops->open(m, &o, &b) == SN_OK, "open: %s", hm_errbuf);
    sn_sampler smp;
    cr_assert(sn_sampler_init(&smp, V) == SN_OK);
    int32_t hist[FS_SEQS][64], len[FS_SEQS], pos[FS_SEQS] = {0}, seq_ids[FS_SEQS] = {0, 1, 2, 3};
    const int32_t prompt[FS_SEQS] = {6, 3, 9, 1};
    uint64_t seed = 99;
    for (int q = 0; q < FS_SEQS; q++) {
        len[q] = prompt[q];
        for (int i = 0; i < prompt[q]; i++)
            hist[q][i] = (int32_t)(hm_next(&seed) % (uint64_t)V);
    }
    float *logits = malloc((size_t)FS_SEQS * V * sizeof *logits);
    uint64_t *allowed = calloc((size_t)FS_SEQS * W, sizeof *allowed), *seen = calloc((size_t)FS_SEQS * W, sizeof *seen);
    int mismatches = 0, penalised = 0, penalty_decided = 0;
    for (int step = 0; step < FS_STEPS; step++) {
        int32_t toks[64], start[FS_SEQS + 1];
        uint8_t lf[FS_SEQS] = {1, 1, 1, 1};
        sn_sample_row rows[FS_SEQS];
        int n = 0;
        for (int q = 0; q < FS_SEQS; q++) {
            start[q] = n;
            for (int i = pos[q]; i < len[q]; i++)
                toks[n++] = hist[q][i];
            cr_assert(ops->kv_reserve(b, q, len[q]) == SN_OK, "kv_reserve: %s", hm_errbuf);
            /* greedy; temperature with top-k; top-p with min-p; a repetition penalty */
            const int kind = (q + step) % 4;
            sn_sampling p = {.temperature = kind == 0 ? 0.0f : 0.6f + 0.3f * (float)kind, .top_k = kind == 1 ? 20 : 0,
                             .top_p = kind == 2 ? 0.9f : 1.0f, .min_p = kind == 2 ? 0.02f : 0.0f,
                             .repetition_penalty = kind == 3 ? 2.5f : 1.0f};
            rows[q] = (sn_sample_row){.params = p, .seed = 1000u + (uint64_t)q, .step = (uint64_t)step};
            uint64_t *a = allowed + (size_t)q * W;
            memset(a, 0, W * sizeof *a);
            for (int32_t id = 0; id < V; id++) /* seq 1: a window; seq 2: odd ids; else all */
                if (q == 1 ? (id >= 50 && id < 120) : q == 2 ? (id % 2 == 1) : 1)
                    a[id / 64] |= (uint64_t)1 << (id % 64);
            sn_seen_bits(seen + (size_t)q * W, V, hist[q], (size_t)len[q]);
        }
        start[FS_SEQS] = n;
        sn_batch batch = {n, toks, FS_SEQS, seq_ids, start, pos, lf};
        sn_sample_req req = {rows, allowed, seen};
        for (int q = 0; q < FS_SEQS; q++) /* poisoned: a token never written cannot pass */
            tokens[step][q] = -7;
        cr_assert(ops->forward_sample(b, &batch, &req, tokens[step], check ? logits : NULL) == SN_OK, "forward_sample: %s",
                  hm_errbuf);
        for (int q = 0; q < FS_SEQS; q++) {
            if (check) {
                const int32_t want = sn_sample_seen(&smp, logits + (size_t)q * V, allowed + (size_t)q * W, &rows[q].params,
                                                    seen + (size_t)q * W, rows[q].seed, rows[q].step);
                if (want != tokens[step][q]) {
                    fprintf(stderr, "  step %d seq %d: device token %d, sampler.c %d\n", step, q, tokens[step][q], want);
                    mismatches++;
                }
                /* how much this run can see of the penalty bits: rows whose token they change */
                if (rows[q].params.repetition_penalty != 1.0f) {
                    penalised++;
                    penalty_decided += want != sn_sample_seen(&smp, logits + (size_t)q * V, allowed + (size_t)q * W,
                                                              &rows[q].params, NULL, rows[q].seed, rows[q].step);
                }
            }
            pos[q] = len[q];
            hist[q][len[q]++] = feed ? feed[step][q] : tokens[step][q];
        }
    }
    if (check)
        fprintf(stderr, "forward_sample: the penalty bits decide %d of %d penalised rows' tokens\n", penalty_decided,
                penalised);
    ops->close(b);
    sn_sampler_free(&smp);
    free(logits);
    free(allowed);
    free(seen);
    return mismatches;
}

Test(cuda_backend, forward_sample_gives_the_cpu_samplers_tokens)
{
    sn_model_config c = config_a();
    sn_model *m = hm_model_make(&c, SN_DTYPE_BF16, 17, 0);
    int32_t first[FS_STEPS][FS_SEQS], again[FS_STEPS][FS_SEQS];
    const int bad = fs_run(m, 1, NULL, first);
    fprintf(stderr, "forward_sample: %d of %d tokens differ from sampler.c on the same logits\n", bad, FS_STEPS * FS_SEQS);
    cr_expect(bad == 0, "%d device tokens differ from sampler.c's", bad);
    for (int t = 0; t < FS_STEPS; t++)
        for (int q = 0; q < FS_SEQS; q++) {
            cr_expect(first[t][q] >= 0 && first[t][q] < c.vocab_size, "step %d seq %d: token %d", t, q, first[t][q]);
            if (q == 1)
                cr_expect(first[t][q] >= 50 && first[t][q] < 120, "step %d: token %d outside the mask", t, first[t][q]);
            if (q == 2)
                cr_expect(first[t][q] % 2 == 1, "step %d: token %d outside the mask", t, first[t][q]);
        }
    /* without the logits copy: the same tokens */
    fs_run(m, 0, (const int32_t(*)[FS_SEQS])first, again);
    cr_expect(memcmp(first, again, sizeof first) == 0, "tokens without the logits differ from those with them");
    hm_model_free(m);
}

/* --tp 2 over NCCL: each GPU holds half the heads and FFN columns and the partials are summed;
 * the same rows as the fp32 reference. Needs two GPUs (the host simulator has them). */
Test(cuda_backend, tensor_parallel_over_two_gpus)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev < 2) {
        fprintf(stderr, "tensor parallel: not run: %d GPU(s)\n", n_dev);
        return;
    }
    sn_model_config c = config_b();
    sn_model *m = hm_model_make(&c, SN_DTYPE_BF16, 19, 0);
    const sn_backend_ops *ops = sn_cuda_backend_ops(SN_CUDA_BACKEND_ABI, &hm_host);
    sn_backend *probe = NULL;
    sn_backend_opts o = {.tp = 2, .max_seqs = 1, .max_batch_tokens = 4};
    if (ops->open(m, &o, &probe) == SN_ERR_UNSUPPORTED) {
        fprintf(stderr, "tensor parallel: not run: %s\n", hm_errbuf); /* a build without NCCL */
        hm_model_free(m);
        return;
    }
    cr_assert(probe, "open: %s", hm_errbuf);
    ops->close(probe);
    scenario s;
    scenario_tp = 2;
    run_scenario(&s, m, 1, NULL, 0);
    scenario_tp = 1;
    fprintf(stderr, "tensor parallel (2 GPUs): %zu rows checked, %zu mismatching elements, %zu greedy disagreements\n",
            s.rows_checked, s.mismatches, s.token_disagreements);
    cr_expect(s.mismatches == 0 && s.token_disagreements == 0);
    hm_model_free(m);
}

Test(cuda_backend, bad_batches_are_errors)
{
    sn_model_config c = config_a();
    sn_model *m = hm_model_make(&c, SN_DTYPE_BF16, 3, 0);
    const sn_backend_ops *ops = sn_cuda_backend_ops(SN_CUDA_BACKEND_ABI, &hm_host);
    cr_assert(ops);
    cr_expect(sn_cuda_backend_ops(SN_CUDA_BACKEND_ABI + 1, &hm_host) == NULL, "a wrong ABI must be refused");
    sn_backend *b = NULL;
    sn_backend_opts o = {.tp = 1, .max_seqs = 2, .max_batch_tokens = 8};
    cr_assert(ops->open(m, &o, &b) == SN_OK, "open: %s", hm_errbuf);
    float *logits = malloc((size_t)2 * c.vocab_size * sizeof *logits);
    int32_t tok[2] = {1, 2}, seq = 0, start[2] = {0, 2}, pos = 0;
    uint8_t lf = 1;
    sn_batch batch = {2, tok, 1, &seq, start, &pos, &lf};
    cr_expect(ops->forward(b, &batch, logits) == SN_ERR_INTERNAL, "no KV slot reserved must fail");
    cr_assert(ops->kv_reserve(b, 0, 2) == SN_OK);
    tok[1] = c.vocab_size;
    cr_expect(ops->forward(b, &batch, logits) == SN_ERR_INVALID_ARG, "a token outside the vocabulary must fail");
    tok[1] = 2;
    cr_expect(ops->forward(b, &batch, logits) == SN_OK, "forward: %s", hm_errbuf);
    cr_expect(ops->kv_reserve(b, 0, 100000) != SN_OK, "past the context must fail");
    ops->close(b);
    hm_model_free(m);
    free(logits);
}

SN_CUDA_TEST_MAIN()
