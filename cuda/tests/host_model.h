/*
 * host_model.h - an in-memory random Llama model and the core function table
 * (sn_cuda_host) over it, so that the CUDA backend runs without the engine core: the GPU
 * test (test_cuda_backend.c) and the end-to-end benchmark (bench/bench_cuda_e2e.c) build on
 * a GPU machine that has no Jansson, OpenBLAS or safetensors files. The backend reads a
 * model only through sn_cuda_host, so this is the same path the engine's loader takes.
 *
 * Weights are uniform in +-sqrt(3 / in_features) (unit-variance outputs), norms in
 * [0.8, 1.2). With `shared`, every matrix points at one random buffer as large as the
 * largest (the benchmark: a 1B-shaped model made in a second; values do not matter there).
 */
#ifndef SN_HOST_MODEL_H
#define SN_HOST_MODEL_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sn_cuda_backend.h"

struct sn_model {
    sn_model_config cfg;
    sn_tensor embed, norm, lm;
    sn_tensor *lt;             /* (n_layers * 9) layer tensors */
    sn_layer_weights *layers;  /* (n_layers) */
    const float *rope_factors; /* NULL */
    void **owned;              /* buffers to free */
    size_t n_owned;
};

static inline uint64_t hm_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline float hm_uniform(uint64_t *s, float lo, float hi)
{
    return lo + (hi - lo) * (float)((double)(hm_next(s) >> 11) * 0x1.0p-53);
}

static inline uint16_t hm_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float hm_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float hm_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float f;
    if (e == 0)
        f = ldexpf((float)m, -24);
    else if (e == 31)
        f = m ? NAN : INFINITY;
    else
        f = ldexpf((float)(m | 0x400), (int)e - 25);
    return sign ? -f : f;
}

/* ---- The function table ------------------------------------------------------------------ */

static char hm_errbuf[1024];

static const sn_model_config *hm_config(const sn_model *m) { return &m->cfg; }
static const sn_tensor *hm_embed(const sn_model *m) { return &m->embed; }
static const sn_tensor *hm_norm(const sn_model *m) { return &m->norm; }
static const sn_tensor *hm_lm_head(const sn_model *m) { return m->cfg.tie_embeddings ? &m->embed : &m->lm; }
static const sn_layer_weights *hm_layer(const sn_model *m, int32_t l) { return &m->layers[l]; }
static const float *hm_rope_factors(const sn_model *m) { return m->rope_factors; }

static void hm_convert(sn_dtype dtype, const void *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (dtype) {
        case SN_DTYPE_F32: dst[i] = ((const float *)src)[i]; break;
        case SN_DTYPE_F16: dst[i] = hm_f16_to_f32(((const uint16_t *)src)[i]); break;
        case SN_DTYPE_BF16: dst[i] = hm_bf16_to_f32(((const uint16_t *)src)[i]); break;
        default: dst[i] = NAN; break; /* block types: not made here */
        }
    }
}

static size_t hm_dtype_size(sn_dtype d) { return d == SN_DTYPE_F32 ? 4 : 2; }
static int32_t hm_block_elems(sn_dtype d)
{
    (void)d;
    return 1;
}

static sn_status hm_failv(sn_status st, const char *fmt, va_list ap)
{
    vsnprintf(hm_errbuf, sizeof hm_errbuf, fmt, ap);
    return st;
}

static void hm_log(int level, const char *msg) { fprintf(stderr, "[cuda] %d: %s\n", level, msg); }

static const sn_cuda_host hm_host = {
    SN_CUDA_BACKEND_ABI, sizeof(sn_cuda_host), hm_config, hm_embed, hm_norm, hm_lm_head, hm_layer,
    hm_rope_factors, hm_convert, hm_dtype_size, hm_block_elems, hm_failv, hm_log,
};

/* ---- The model ------------------------------------------------------------------------- */

static inline void *hm_own(sn_model *m, size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    void **o = (void **)realloc(m->owned, (m->n_owned + 1) * sizeof *o);
    if (!p || !o) {
        fprintf(stderr, "host_model: out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    m->owned = o;
    m->owned[m->n_owned++] = p;
    return p;
}

/* Random values of dtype (F32, F16 not made: F32 or BF16), uniform in [lo, hi). */
static inline void *hm_random(sn_model *m, sn_dtype dtype, size_t n, float lo, float hi, uint64_t *seed)
{
    if (dtype == SN_DTYPE_F32) {
        float *f = (float *)hm_own(m, n * 4);
        for (size_t i = 0; i < n; i++)
            f[i] = hm_uniform(seed, lo, hi);
        return f;
    }
    uint16_t *h = (uint16_t *)hm_own(m, n * 2);
    for (size_t i = 0; i < n; i++)
        h[i] = hm_f32_to_bf16(hm_uniform(seed, lo, hi));
    return h;
}

static inline void hm_tensor(sn_tensor *t, const char *name, sn_dtype dtype, int64_t rows, int64_t cols, const void *data)
{
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dtype = dtype;
    t->ndim = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->data = data;
    t->nbytes = (size_t)rows * (size_t)(cols ? cols : 1) * hm_dtype_size(dtype);
    t->file = "memory";
}

static inline sn_model *hm_model_make(const sn_model_config *cfg, sn_dtype dtype, uint64_t seed, int shared)
{
    sn_model *m = (sn_model *)calloc(1, sizeof *m);
    if (!m)
        exit(2);
    m->cfg = *cfg;
    const int64_t H = cfg->hidden, I = cfg->intermediate, V = cfg->vocab_size, hd = cfg->head_dim;
    const int64_t q = (int64_t)cfg->n_heads * hd, kv = (int64_t)cfg->n_kv_heads * hd;
    const float aH = sqrtf(3.0f / (float)H), aq = sqrtf(3.0f / (float)q), aI = sqrtf(3.0f / (float)I);
    void *big = NULL;
    if (shared) {
        size_t most = (size_t)(V * H);
        if ((size_t)(I * H) > most)
            most = (size_t)(I * H);
        if ((size_t)(q * H) > most)
            most = (size_t)(q * H);
        big = hm_random(m, dtype, most, -aI, aI, &seed);
    }
#define HM_W(n, lo) (shared ? big : hm_random(m, dtype, (size_t)(n), -(lo), (lo), &seed))
    m->lt = (sn_tensor *)calloc((size_t)cfg->n_layers * 9, sizeof *m->lt);
    m->layers = (sn_layer_weights *)calloc((size_t)cfg->n_layers, sizeof *m->layers);
    if (!m->lt || !m->layers)
        exit(2);
    for (int32_t l = 0; l < cfg->n_layers; l++) {
        sn_tensor *t = m->lt + (size_t)l * 9;
        hm_tensor(&t[0], "attn_norm", SN_DTYPE_F32, H, 0, hm_random(m, SN_DTYPE_F32, (size_t)H, 0.8f, 1.2f, &seed));
        hm_tensor(&t[1], "wq", dtype, q, H, HM_W(q * H, aH));
        hm_tensor(&t[2], "wk", dtype, kv, H, HM_W(kv * H, aH));
        hm_tensor(&t[3], "wv", dtype, kv, H, HM_W(kv * H, aH));
        hm_tensor(&t[4], "wo", dtype, H, q, HM_W(H * q, aq));
        hm_tensor(&t[5], "ffn_norm", SN_DTYPE_F32, H, 0, hm_random(m, SN_DTYPE_F32, (size_t)H, 0.8f, 1.2f, &seed));
        hm_tensor(&t[6], "w_gate", dtype, I, H, HM_W(I * H, aH));
        hm_tensor(&t[7], "w_up", dtype, I, H, HM_W(I * H, aH));
        hm_tensor(&t[8], "w_down", dtype, H, I, HM_W(H * I, aI));
        sn_layer_weights *w = &m->layers[l];
        w->attn_norm = &t[0], w->wq = &t[1], w->wk = &t[2], w->wv = &t[3], w->wo = &t[4];
        w->ffn_norm = &t[5], w->w_gate = &t[6], w->w_up = &t[7], w->w_down = &t[8];
    }
    hm_tensor(&m->embed, "embed", dtype, V, H, HM_W(V * H, 1.0f));
    hm_tensor(&m->norm, "norm", SN_DTYPE_F32, H, 0, hm_random(m, SN_DTYPE_F32, (size_t)H, 0.8f, 1.2f, &seed));
    if (!cfg->tie_embeddings)
        hm_tensor(&m->lm, "lm_head", dtype, V, H, HM_W(V * H, aH));
#undef HM_W
    return m;
}

static inline void hm_model_free(sn_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->lt);
    free(m->layers);
    free(m);
}

#endif /* SN_HOST_MODEL_H */
