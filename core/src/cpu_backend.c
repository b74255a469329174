/*
 * cpu_backend.c - the CPU backend: a Llama forward pass over a ragged batch against the paged
 * KV cache, in fp32 over F32/F16/BF16 weights, on all cores.
 *
 * The reference every other backend is tested against, and fast in its own right:
 * projections of prefill-sized batches are OpenBLAS sgemm calls (one GEMM per weight per step,
 * so prefill chunks run at GEMM speed); decode-sized batches (up to 8 tokens) and quantised
 * weights go through our own row kernels, which read each weight row once for every token of
 * the batch (AVX2+FMA where the CPU has it); attention is a vectorised loop over the paged
 * cache parallelised across (token, head) pairs.
 *
 * Tensor parallelism runs here as shards in one process, laid out as NCCL ranks would be:
 * shard s owns a contiguous slice of query heads (and their KV heads) and of FFN columns,
 * computes its partial attention-output and down projections, and the partials are summed
 * (sum_partials, where NCCL would all-reduce). With tp = 1 the same code runs one shard.
 * F32 weights are used in place from the memory map: a shard's slice of a row-split matrix
 * (q, k, v, gate, up) is a pointer offset, and of a column-split one (o, down) a pointer
 * offset with the full row as leading dimension. F16/BF16 weights are converted once at open.
 * Block-quantised weights (Q8_0, Q4_0, Q4_1 from GGUF files) stay quantised in the mapping:
 * the row kernels decode each 32-weight block to floats in registers and multiply it with
 * every token's activations, so the weights never exist as a float copy.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend.h"
#include "kv_cache.h"
#include "rope.h"

/* A weight matrix: rows ld elements apart, of dtype F32 (then sgemm reads it) or a block
 * type (then p is the first block of the first row, and ld a multiple of the block). */
typedef struct wview {
    const void *p;
    int32_t ld;
    sn_dtype dtype;
} wview;

typedef struct shard_layer {
    wview wq, wk, wv; /* row slices */
    wview wo;         /* column slice */
    wview w_gate, w_up; /* row slices */
    wview w_down;     /* column slice */
} shard_layer;

typedef struct shard {
    int32_t h0, nh;   /* query heads [h0, h0+nh) */
    int32_t kv0, nkv; /* KV heads [kv0, kv0+nkv) */
    int32_t f0, nf;   /* FFN columns [f0, f0+nf) */
    shard_layer *layers; /* (n_layers) */
    float *k_cache;   /* (layer, slot, nkv, head_dim) */
    float *v_cache;   /* (layer, slot, nkv, head_dim) */
    float *q, *k, *v; /* (T, nh*hd), (T, nkv*hd), (T, nkv*hd) */
    float *att;       /* (T, nh*hd) */
    float *gate, *up; /* (T, nf) */
    float *partial;   /* (T, hidden): this shard's contribution before the sum */
} shard;

typedef struct qrow qrow;
typedef void (*qrow_kernel)(const qrow *r, float *out);
static qrow_kernel pick_qrow_kernel(void);

typedef struct cpu_backend {
    sn_backend base;
    const sn_model *model;
    sn_model_config cfg;
    int32_t tp, threads, max_tokens;
    int32_t n_slots;      /* pool blocks * SN_KV_BLOCK */
    sn_kv_alloc kv;
    shard *shards;        /* (tp) */
    float **owned;        /* converted F16/BF16 weights, freed at close */
    size_t n_owned, cap_owned;
    float *norms;         /* (2 * layers + 1, hidden): attention and FFN norms, then the final one */
    const float *final_norm;
    wview lm_head;
    float *inv_freq;      /* (head_dim / 2) RoPE frequencies, scaled when configured */
    float *x, *xn;        /* (T, hidden) residual stream and its norm */
    int32_t *pos, *slot, *run_of; /* (T) position, KV slot and run of each token */
    float *scores;        /* (threads, max_positions) attention scratch */
    float *xsum;          /* (T, longest weight row / 32) per-block sums of activations */
    qrow_kernel qrow_dot; /* this CPU's quantised row kernel */
    float *last;          /* (T, hidden) rows that need logits */
    sn_sampler sampler;   /* forward_sample: sampler.c's scratch */
    float *sample_logits; /* (max_seqs, vocab) forward_sample's logits when the caller wants none */
    int32_t max_seqs;
} cpu_backend;

/* ---------------------------------------------------------------------------------------- */
/* Weights                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* A slice of a weight matrix of `ld` elements per row: rows from row0, columns from col0. */
static wview slice(wview w, int64_t row0, int64_t col0)
{
    const int32_t be = sn_dtype_block_elems(w.dtype);
    const size_t row_bytes = (size_t)w.ld / (size_t)be * sn_dtype_size(w.dtype);
    w.p = (const char *)w.p + (size_t)row0 * row_bytes + (size_t)(col0 / be) * sn_dtype_size(w.dtype);
    return w;
}

/* The tensor as sgemm or the quantised kernels read it: in place when it is F32 or a block
 * type, else (F16, BF16) a float32 copy the backend owns. NULL when out of memory. */
static const void *weights_of(cpu_backend *b, const sn_tensor *t, sn_dtype *dtype)
{
    *dtype = t->dtype == SN_DTYPE_F16 || t->dtype == SN_DTYPE_BF16 ? SN_DTYPE_F32 : t->dtype;
    if (t->dtype != SN_DTYPE_F16 && t->dtype != SN_DTYPE_BF16)
        return t->data;
    size_t n = t->nbytes / sn_dtype_size(t->dtype);
    float *f = malloc(n * sizeof *f);
    if (!f)
        return NULL;
    if (b->n_owned == b->cap_owned) {
        size_t cap = b->cap_owned ? 2 * b->cap_owned : 64;
        float **o = realloc(b->owned, cap * sizeof *o);
        if (!o) {
            free(f);
            return NULL;
        }
        b->owned = o;
        b->cap_owned = cap;
    }
    b->owned[b->n_owned++] = f;
    sn_convert_to_f32(t->dtype, t->data, f, n);
    return f;
}

static sn_status bind_weights(cpu_backend *b)
{
    const sn_model_config *c = &b->cfg;
    const int32_t hd = c->head_dim, H = c->hidden;
    b->norms = malloc(((size_t)2 * c->n_layers + 1) * (size_t)H * sizeof *b->norms);
    if (!b->norms)
        return sn_fail(SN_ERR_NOMEM, "out of memory for the model's norms");
    for (int32_t s = 0; s < b->tp; s++) {
        b->shards[s].layers = calloc((size_t)c->n_layers, sizeof *b->shards[s].layers);
        if (!b->shards[s].layers)
            return sn_fail(SN_ERR_NOMEM, "out of memory");
    }
    for (int32_t l = 0; l < c->n_layers; l++) {
        const sn_layer_weights *w = sn_model_layer(b->model, l);
        sn_convert_to_f32(w->attn_norm->dtype, w->attn_norm->data, b->norms + (size_t)(2 * l) * H, (size_t)H);
        sn_convert_to_f32(w->ffn_norm->dtype, w->ffn_norm->data, b->norms + (size_t)(2 * l + 1) * H, (size_t)H);
        wview wq = {.ld = H}, wk = {.ld = H}, wv = {.ld = H}, wo = {.ld = c->n_heads * hd},
              wg = {.ld = H}, wu = {.ld = H}, wd = {.ld = c->intermediate};
        wq.p = weights_of(b, w->wq, &wq.dtype);
        wk.p = weights_of(b, w->wk, &wk.dtype);
        wv.p = weights_of(b, w->wv, &wv.dtype);
        wo.p = weights_of(b, w->wo, &wo.dtype);
        wg.p = weights_of(b, w->w_gate, &wg.dtype);
        wu.p = weights_of(b, w->w_up, &wu.dtype);
        wd.p = weights_of(b, w->w_down, &wd.dtype);
        if (!wq.p || !wk.p || !wv.p || !wo.p || !wg.p || !wu.p || !wd.p)
            return sn_fail(SN_ERR_NOMEM, "out of memory converting layer %d's weights to f32", l);
        /* A shard's column slice of a quantised matrix must start on a block. */
        if (b->tp > 1 && ((sn_dtype_block_elems(wo.dtype) > 1 && (c->n_heads / b->tp * hd) % sn_dtype_block_elems(wo.dtype)) ||
                          (sn_dtype_block_elems(wd.dtype) > 1 && (c->intermediate / b->tp) % sn_dtype_block_elems(wd.dtype))))
            return sn_fail(SN_ERR_CONFIG, "--tp %d splits layer %d's %s output and down projections inside their %d-element blocks",
                           b->tp, l, sn_dtype_name(wo.dtype), sn_dtype_block_elems(wo.dtype));
        for (int32_t s = 0; s < b->tp; s++) {
            shard *sh = &b->shards[s];
            shard_layer *sl = &sh->layers[l];
            sl->wq = slice(wq, (int64_t)sh->h0 * hd, 0);
            sl->wk = slice(wk, (int64_t)sh->kv0 * hd, 0);
            sl->wv = slice(wv, (int64_t)sh->kv0 * hd, 0);
            sl->wo = slice(wo, 0, (int64_t)sh->h0 * hd);
            sl->w_gate = slice(wg, sh->f0, 0);
            sl->w_up = slice(wu, sh->f0, 0);
            sl->w_down = slice(wd, 0, sh->f0);
        }
    }
    float *fn = b->norms + (size_t)(2 * c->n_layers) * H;
    const sn_tensor *norm = sn_model_norm(b->model);
    sn_convert_to_f32(norm->dtype, norm->data, fn, (size_t)H);
    b->final_norm = fn;
    b->lm_head.ld = H;
    if (!(b->lm_head.p = weights_of(b, sn_model_lm_head(b->model), &b->lm_head.dtype)))
        return sn_fail(SN_ERR_NOMEM, "out of memory converting the output embedding to f32");
    return SN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Open and close                                                                           */
/* ---------------------------------------------------------------------------------------- */

static void cpu_close(sn_backend *base)
{
    cpu_backend *b = (cpu_backend *)base;
    if (!b)
        return;
    for (int32_t s = 0; b->shards && s < b->tp; s++) {
        shard *sh = &b->shards[s];
        free(sh->layers);
        free(sh->k_cache);
        free(sh->v_cache);
        free(sh->q);
        free(sh->k);
        free(sh->v);
        free(sh->att);
        free(sh->gate);
        free(sh->up);
        free(sh->partial);
    }
    free(b->shards);
    for (size_t i = 0; i < b->n_owned; i++)
        free(b->owned[i]);
    free(b->owned);
    free(b->norms);
    free(b->inv_freq);
    free(b->x);
    free(b->xn);
    free(b->pos);
    free(b->slot);
    free(b->run_of);
    free(b->scores);
    free(b->xsum);
    free(b->last);
    free(b->sample_logits);
    sn_sampler_free(&b->sampler);
    sn_kv_alloc_free(&b->kv);
    free(b);
}

static sn_status cpu_open(const sn_model *model, const sn_backend_opts *opts, sn_backend **out)
{
    *out = NULL;
    const sn_model_config *c = sn_model_config_of(model);
    int32_t tp = opts->tp > 0 ? opts->tp : 1;
    if (c->n_heads % tp || c->n_kv_heads % tp || c->intermediate % tp)
        return sn_fail(SN_ERR_CONFIG, "--tp %d does not divide the model: %d query heads, %d KV heads, %d FFN columns must all split evenly",
                       tp, c->n_heads, c->n_kv_heads, c->intermediate);
    if (opts->max_batch_tokens <= 0 || opts->max_seqs <= 0)
        return sn_fail(SN_ERR_INVALID_ARG, "CPU backend: max_batch_tokens and max_seqs must be positive");
    cpu_backend *b = calloc(1, sizeof *b);
    if (!b)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    b->base.ops = &sn_cpu_backend;
    b->model = model;
    b->cfg = *c;
    b->tp = tp;
    b->max_tokens = opts->max_batch_tokens;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    b->threads = opts->threads > 0 ? opts->threads : (int32_t)(cores > 0 ? cores : 1);
    openblas_set_num_threads(b->threads);
#ifdef _OPENMP
    omp_set_num_threads(b->threads);
#endif

    const int32_t hd = c->head_dim, H = c->hidden, T = b->max_tokens;
    /* The KV pool: the budget in blocks; by default room for every sequence's full context. */
    size_t block_bytes = (size_t)2 * c->n_layers * SN_KV_BLOCK * c->n_kv_heads * hd * sizeof(float);
    size_t n_blocks = opts->kv_bytes ? opts->kv_bytes / block_bytes
                                     : (size_t)opts->max_seqs * ((size_t)c->max_positions + SN_KV_BLOCK - 1) / SN_KV_BLOCK;
    sn_status st;
    if (n_blocks == 0) {
        st = sn_fail(SN_ERR_CONFIG, "KV-cache budget of %zu bytes holds no block (one block is %zu bytes)",
                     opts->kv_bytes, block_bytes);
        goto fail;
    }
    if (n_blocks > INT32_MAX / SN_KV_BLOCK)
        n_blocks = INT32_MAX / SN_KV_BLOCK;
    if ((st = sn_kv_alloc_init(&b->kv, SN_KV_BLOCK, (int32_t)n_blocks, opts->max_seqs, c->max_positions)) != SN_OK)
        goto fail;
    b->n_slots = (int32_t)n_blocks * SN_KV_BLOCK;

    b->shards = calloc((size_t)tp, sizeof *b->shards);
    if (!b->shards)
        goto nomem;
    for (int32_t s = 0; s < tp; s++) {
        shard *sh = &b->shards[s];
        sh->nh = c->n_heads / tp;
        sh->h0 = s * sh->nh;
        sh->nkv = c->n_kv_heads / tp;
        sh->kv0 = s * sh->nkv;
        sh->nf = c->intermediate / tp;
        sh->f0 = s * sh->nf;
        size_t kv_elems = (size_t)c->n_layers * b->n_slots * sh->nkv * hd;
        sh->k_cache = malloc(kv_elems * sizeof(float));
        sh->v_cache = malloc(kv_elems * sizeof(float));
        sh->q = malloc((size_t)T * sh->nh * hd * sizeof(float));
        sh->k = malloc((size_t)T * sh->nkv * hd * sizeof(float));
        sh->v = malloc((size_t)T * sh->nkv * hd * sizeof(float));
        sh->att = malloc((size_t)T * sh->nh * hd * sizeof(float));
        sh->gate = malloc((size_t)T * sh->nf * sizeof(float));
        sh->up = malloc((size_t)T * sh->nf * sizeof(float));
        sh->partial = malloc((size_t)T * H * sizeof(float));
        if (!sh->k_cache || !sh->v_cache || !sh->q || !sh->k || !sh->v || !sh->att || !sh->gate ||
            !sh->up || !sh->partial) {
            st = sn_fail(SN_ERR_NOMEM, "out of memory for the CPU backend's buffers (KV pool %zu bytes)",
                         n_blocks * block_bytes);
            goto fail;
        }
    }
    b->inv_freq = malloc((size_t)(hd / 2) * sizeof *b->inv_freq);
    b->x = malloc((size_t)T * H * sizeof *b->x);
    b->xn = malloc((size_t)T * H * sizeof *b->xn);
    b->last = malloc((size_t)T * H * sizeof *b->last);
    b->pos = malloc((size_t)T * sizeof *b->pos);
    b->slot = malloc((size_t)T * sizeof *b->slot);
    b->run_of = malloc((size_t)T * sizeof *b->run_of);
    b->scores = malloc((size_t)b->threads * (size_t)c->max_positions * sizeof *b->scores);
    int32_t longest = H > c->intermediate ? H : c->intermediate;
    if (c->n_heads * hd > longest)
        longest = c->n_heads * hd;
    b->xsum = malloc((size_t)T * (size_t)(longest / 32 + 1) * sizeof *b->xsum);
    b->max_seqs = opts->max_seqs;
    b->sample_logits = malloc((size_t)opts->max_seqs * (size_t)c->vocab_size * sizeof *b->sample_logits);
    if (!b->inv_freq || !b->x || !b->xn || !b->last || !b->pos || !b->slot || !b->run_of || !b->scores || !b->xsum ||
        !b->sample_logits || sn_sampler_init(&b->sampler, c->vocab_size) != SN_OK)
        goto nomem;
    sn_rope_inv_freq(c, sn_model_rope_factors(model), b->inv_freq);
    b->qrow_dot = pick_qrow_kernel();
    if ((st = bind_weights(b)) != SN_OK)
        goto fail;
    *out = &b->base;
    return SN_OK;
nomem:
    st = sn_fail(SN_ERR_NOMEM, "out of memory for the CPU backend's buffers");
fail:
    cpu_close(&b->base);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* The forward pass                                                                         */
/* ---------------------------------------------------------------------------------------- */

/* ---- Quantised rows times activations, straight from the blocks ------------------------ */
/* One weight row (nb blocks of 32) times up to QTILE tokens' activations: each block is
 * decoded to floats once and multiplied with every token's x, so the integers are unpacked
 * once per tile and the row read from memory once per step. Per block and token: the
 * integers times x in 8 lanes, then the block's scale d, plus (Q4 types) the block's minimum
 * m times the block's sum of x (xs). Q4_0's weight d*(q-8) is d*q + m with m = -8d. In Q4
 * blocks byte j holds element j (low nibble) and j + 16 (high). Each kernel exists in plain
 * C and, on x86-64, in AVX2+FMA+F16C, chosen once at open by what the CPU has. */
#define QTILE 8

typedef struct qrow {
    const uint8_t *w;   /* the row's first block */
    int32_t nb;         /* blocks in the row */
    sn_dtype dtype;     /* Q8_0, Q4_0 or Q4_1 */
    const float *x;     /* token t's activations at x + t * ldx */
    size_t ldx;
    const float *xs;    /* token t's per-block sums at xs + t * nb (Q4 types) */
    int n;              /* tokens, 1..QTILE */
} qrow;

/* A block scale: IEEE half to float by re-biasing (exact for every finite half, subnormals
 * included: the multiply by 2^112 is by a power of two). Scales are never inf or nan. */
static inline float scale_of(const uint8_t *p)
{
    const uint32_t h = (uint32_t)p[0] | (uint32_t)p[1] << 8;
    const uint32_t bits = (h & 0x8000u) << 16 | (h & 0x7FFFu) << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f * 0x1p112f;
}

static void qrow_dot_c(const qrow *r, float *out)
{
    const int f32 = r->dtype == SN_DTYPE_F32, q8 = r->dtype == SN_DTYPE_Q8_0 || f32,
              has_min = r->dtype == SN_DTYPE_Q4_1;
    const size_t bytes = f32 ? 128 : q8 ? 34 : has_min ? 20 : 18;
    float acc[QTILE][8] = {{0}}, mins[QTILE] = {0};
    const uint8_t *w = r->w;
    for (int32_t b = 0; b < r->nb; b++, w += bytes) {
        float v[32];
        if (f32) {
            memcpy(v, w, sizeof v);
        } else if (q8) {
            for (int j = 0; j < 32; j++)
                v[j] = (float)(int8_t)w[2 + j];
        } else {
            const uint8_t *q = w + (has_min ? 4 : 2);
            for (int j = 0; j < 16; j++) {
                v[j] = (float)(q[j] & 0x0F);
                v[j + 16] = (float)(q[j] >> 4);
            }
        }
        const float d = f32 ? 1.0f : scale_of(w), m = q8 ? 0.0f : has_min ? scale_of(w + 2) : -8.0f * d;
        for (int t = 0; t < r->n; t++) {
            const float *x = r->x + t * r->ldx + (size_t)b * 32;
            float lane[8] = {0};
            for (int j = 0; j < 32; j += 8)
                for (int k = 0; k < 8; k++)
                    lane[k] += v[j + k] * x[j + k];
            for (int k = 0; k < 8; k++)
                acc[t][k] += d * lane[k];
            if (!q8)
                mins[t] += m * r->xs[(size_t)t * r->nb + b];
        }
    }
    for (int t = 0; t < r->n; t++) {
        float s = mins[t];
        for (int k = 0; k < 8; k++)
            s += acc[t][k];
        out[t] = s;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SN_AVX2 __attribute__((target("avx2,fma,f16c")))

SN_AVX2 static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

SN_AVX2 static inline float half_avx(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* Inlined twice below: with n = 1 as a constant (the accumulator stays in a register) and
 * with the tile's n. */
SN_AVX2 static inline __attribute__((always_inline)) void qrow_avx2_n(const qrow *r, float *out, const int n)
{
    const int f32 = r->dtype == SN_DTYPE_F32, q8 = r->dtype == SN_DTYPE_Q8_0 || f32,
              has_min = r->dtype == SN_DTYPE_Q4_1;
    const size_t bytes = f32 ? 128 : q8 ? 34 : has_min ? 20 : 18;
    const __m128i low4 = _mm_set1_epi8(0x0F);
    __m256 acc[QTILE];
    float mins[QTILE] = {0};
    for (int t = 0; t < QTILE; t++)
        acc[t] = _mm256_setzero_ps();
    const uint8_t *w = r->w;
    for (int32_t b = 0; b < r->nb; b++, w += bytes) {
        __m256 v0, v1, v2, v3; /* the block's 32 integers as floats */
        if (f32) {
            v0 = _mm256_loadu_ps((const float *)w);
            v1 = _mm256_loadu_ps((const float *)w + 8);
            v2 = _mm256_loadu_ps((const float *)w + 16);
            v3 = _mm256_loadu_ps((const float *)w + 24);
        } else if (q8) {
            const __m128i a = _mm_loadu_si128((const __m128i *)(w + 2));
            const __m128i c = _mm_loadu_si128((const __m128i *)(w + 18));
            v0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a));
            v1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8)));
            v2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c));
            v3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c, 8)));
        } else {
            const __m128i raw = _mm_loadu_si128((const __m128i *)(w + (has_min ? 4 : 2)));
            const __m128i lo = _mm_and_si128(raw, low4), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low4);
            v0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            v1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            v2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            v3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
        }
        const float df = f32 ? 1.0f : half_avx(w), m = q8 ? 0.0f : has_min ? half_avx(w + 2) : -8.0f * df;
        const __m256 d = _mm256_set1_ps(df);
        for (int t = 0; t < n; t++) {
            const float *x = r->x + t * r->ldx + (size_t)b * 32;
            __m256 l = _mm256_mul_ps(v0, _mm256_loadu_ps(x));
            l = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x + 8), l);
            l = _mm256_fmadd_ps(v2, _mm256_loadu_ps(x + 16), l);
            l = _mm256_fmadd_ps(v3, _mm256_loadu_ps(x + 24), l);
            acc[t] = _mm256_fmadd_ps(d, l, acc[t]);
            if (!q8)
                mins[t] += m * r->xs[(size_t)t * r->nb + b];
        }
    }
    for (int t = 0; t < n; t++)
        out[t] = hsum8(acc[t]) + mins[t];
}

SN_AVX2 static void qrow_dot_avx2(const qrow *r, float *out)
{
    if (r->n == 1)
        qrow_avx2_n(r, out, 1);
    else
        qrow_avx2_n(r, out, r->n);
}
#endif

/* The kernel for this CPU. SN_CPU_PORTABLE=1 in the environment keeps the plain C one (the
 * tests run both). */
static qrow_kernel pick_qrow_kernel(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    const char *portable = getenv("SN_CPU_PORTABLE");
    if (portable && *portable && strcmp(portable, "0") != 0)
        return qrow_dot_c;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return qrow_dot_avx2;
#endif
    return qrow_dot_c;
}

/* out (n, out_f) = x (n, in) . W^T for a block-quantised W: rows split across threads, each
 * row taken with QTILE tokens at a time. */
static void matmul_quant(cpu_backend *b, float *out, const float *x, int32_t n, int32_t in, wview w,
                         int32_t out_f, float beta)
{
    const size_t row_bytes = (size_t)w.ld / (size_t)sn_dtype_block_elems(w.dtype) * sn_dtype_size(w.dtype);
    const int32_t nb = in / 32;
    if (w.dtype == SN_DTYPE_Q4_0 || w.dtype == SN_DTYPE_Q4_1)
        for (int32_t i = 0; i < n; i++)
            for (int32_t k = 0; k < nb; k++) {
                const float *xb = x + (size_t)i * in + (size_t)k * 32;
                float s = 0.0f;
                for (int j = 0; j < 32; j++)
                    s += xb[j];
                b->xsum[(size_t)i * nb + k] = s;
            }
#pragma omp parallel for schedule(static)
    for (int32_t r = 0; r < out_f; r++) {
        float d[QTILE];
        for (int32_t i0 = 0; i0 < n; i0 += QTILE) {
            qrow q = {.w = (const uint8_t *)w.p + (size_t)r * row_bytes, .nb = nb, .dtype = w.dtype,
                      .x = x + (size_t)i0 * in, .ldx = (size_t)in, .xs = b->xsum + (size_t)i0 * nb,
                      .n = n - i0 < QTILE ? n - i0 : QTILE};
            b->qrow_dot(&q, d);
            for (int t = 0; t < q.n; t++) {
                float *o = &out[(size_t)(i0 + t) * out_f + r];
                *o = beta != 0.0f ? beta * *o + d[t] : d[t];
            }
        }
    }
}

/* out (n, out_f) = x (n, in) . W^T, W a view of (out_f, in). Quantised weights, and F32
 * ones at up to QTILE tokens (decode), go through the row kernels above, which stream each
 * weight row once for all the tokens; larger F32 batches (prefill, big decode batches) are
 * sgemm's, whose packing pays off there. Odd widths (not whole 32-element blocks) fall back
 * to sgemv/sgemm. */
static void matmul(cpu_backend *b, float *out, const float *x, int32_t n, int32_t in, wview w,
                   int32_t out_f, float beta)
{
    if (w.dtype != SN_DTYPE_F32 || (n <= QTILE && in % 32 == 0))
        matmul_quant(b, out, x, n, in, w, out_f, beta);
    else if (n == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out_f, in, 1.0f, w.p, w.ld, x, 1, beta, out, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out_f, in, 1.0f, x, in, w.p,
                    w.ld, beta, out, out_f);
}

static void rmsnorm(float *out, const float *x, const float *weight, int32_t n, int32_t dim, float eps)
{
    for (int32_t i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *oi = out + (size_t)i * dim;
        double ss = 0.0;
        for (int32_t j = 0; j < dim; j++)
            ss += (double)xi[j] * xi[j];
        float scale = (float)(1.0 / sqrt(ss / dim + eps));
        for (int32_t j = 0; j < dim; j++)
            oi[j] = xi[j] * scale * weight[j];
    }
}

/* Rotates each head of each row by its token's position. Pair j is (j, j + head_dim/2) in
 * Hugging Face's rotate_half layout, (2j, 2j+1) in the interleaved one. */
static void rope(float *x, int32_t n, int32_t heads, int32_t hd, const int32_t *pos,
                 const float *inv_freq, int interleaved)
{
    const int32_t half = hd / 2;
    const int32_t stride = interleaved ? 2 : 1, partner = interleaved ? 1 : half;
    for (int32_t i = 0; i < n; i++) {
        for (int32_t j = 0; j < half; j++) {
            float angle = (float)pos[i] * inv_freq[j];
            float c = cosf(angle), s = sinf(angle);
            for (int32_t h = 0; h < heads; h++) {
                float *v = x + ((size_t)i * heads + h) * hd + (size_t)j * stride;
                float a = v[0], bb = v[partner];
                v[0] = a * c - bb * s;
                v[partner] = bb * c + a * s;
            }
        }
    }
}

/* Causal attention of every token of the batch against its sequence's cached keys and values
 * (which already include this batch's tokens): for query head h of token i, the softmax over
 * positions 0..pos[i] of q.k / sqrt(hd), times v. KV head h / (nh / nkv) serves head h. */
static void attention(cpu_backend *b, shard *sh, int32_t layer, int32_t n, const sn_batch *batch)
{
    const int32_t hd = b->cfg.head_dim, nh = sh->nh, nkv = sh->nkv, group = nh / nkv;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t layer_off = (size_t)layer * b->n_slots * nkv * hd;
    const float *kc = sh->k_cache + layer_off, *vc = sh->v_cache + layer_off;
#pragma omp parallel for collapse(2) schedule(dynamic, 4)
    for (int32_t i = 0; i < n; i++) {
        for (int32_t h = 0; h < nh; h++) {
#ifdef _OPENMP
            float *sc = b->scores + (size_t)omp_get_thread_num() * b->cfg.max_positions;
#else
            float *sc = b->scores;
#endif
            const int32_t seq = batch->seq_ids[b->run_of[i]], kvh = h / group;
            const float *q = sh->q + ((size_t)i * nh + h) * hd;
            float *o = sh->att + ((size_t)i * nh + h) * hd;
            const int32_t len = b->pos[i] + 1;
            float mx = -INFINITY;
            for (int32_t p = 0; p < len; p++) {
                const float *k = kc + ((size_t)sn_kv_slot(&b->kv, seq, p) * nkv + kvh) * hd;
                float d = 0.0f;
                for (int32_t j = 0; j < hd; j++)
                    d += q[j] * k[j];
                sc[p] = d * scale;
                if (sc[p] > mx)
                    mx = sc[p];
            }
            float sum = 0.0f;
            for (int32_t p = 0; p < len; p++) {
                sc[p] = expf(sc[p] - mx);
                sum += sc[p];
            }
            memset(o, 0, (size_t)hd * sizeof *o);
            for (int32_t p = 0; p < len; p++) {
                const float *v = vc + ((size_t)sn_kv_slot(&b->kv, seq, p) * nkv + kvh) * hd;
                const float w = sc[p] / sum;
                for (int32_t j = 0; j < hd; j++)
                    o[j] += w * v[j];
            }
        }
    }
}

/* x += the sum of the shards' partial outputs: the all-reduce of a multi-GPU run. Summed in
 * shard order, so results do not depend on thread timing. */
static void sum_partials(cpu_backend *b, int32_t n)
{
    const size_t len = (size_t)n * b->cfg.hidden;
    for (int32_t s = 0; s < b->tp; s++) {
        const float *p = b->shards[s].partial;
        for (size_t j = 0; j < len; j++)
            b->x[j] += p[j];
    }
}

static sn_status cpu_forward(sn_backend *base, const sn_batch *batch, float *logits)
{
    cpu_backend *b = (cpu_backend *)base;
    const sn_model_config *c = &b->cfg;
    const int32_t n = batch->n_tokens, H = c->hidden, hd = c->head_dim;
    if (n <= 0 || n > b->max_tokens)
        return sn_fail(SN_ERR_INVALID_ARG, "CPU backend: batch of %d tokens, the limit is %d", n, b->max_tokens);

    /* Positions, KV slots and the embedding of every token. */
    const sn_tensor *embed = sn_model_embed(b->model);
    const size_t row_bytes = (size_t)(H / sn_dtype_block_elems(embed->dtype)) * sn_dtype_size(embed->dtype);
    for (int32_t r = 0; r < batch->n_seqs; r++) {
        const int32_t seq = batch->seq_ids[r];
        if (seq < 0 || seq >= b->kv.max_seqs)
            return sn_fail(SN_ERR_INVALID_ARG, "CPU backend: sequence %d out of range", seq);
        for (int32_t i = batch->seq_start[r]; i < batch->seq_start[r + 1]; i++) {
            const int32_t p = batch->seq_pos[r] + (i - batch->seq_start[r]);
            if ((p / SN_KV_BLOCK) >= b->kv.n_seq_blocks[seq])
                return sn_fail(SN_ERR_INTERNAL, "CPU backend: position %d of sequence %d has no KV slot (kv_reserve first)",
                               p, seq);
            const int32_t tok = batch->tokens[i];
            if (tok < 0 || tok >= c->vocab_size)
                return sn_fail(SN_ERR_INVALID_ARG, "token %d outside the model's vocabulary 0..%d", tok, c->vocab_size - 1);
            b->pos[i] = p;
            b->slot[i] = sn_kv_slot(&b->kv, seq, p);
            b->run_of[i] = r;
            sn_convert_to_f32(embed->dtype, (const char *)embed->data + (size_t)tok * row_bytes,
                              b->x + (size_t)i * H, (size_t)H);
        }
    }

    for (int32_t l = 0; l < c->n_layers; l++) {
        rmsnorm(b->xn, b->x, b->norms + (size_t)(2 * l) * H, n, H, c->rms_eps);
        for (int32_t s = 0; s < b->tp; s++) {
            shard *sh = &b->shards[s];
            const shard_layer *w = &sh->layers[l];
            matmul(b, sh->q, b->xn, n, H, w->wq, sh->nh * hd, 0.0f);
            matmul(b, sh->k, b->xn, n, H, w->wk, sh->nkv * hd, 0.0f);
            matmul(b, sh->v, b->xn, n, H, w->wv, sh->nkv * hd, 0.0f);
            rope(sh->q, n, sh->nh, hd, b->pos, b->inv_freq, c->rope_interleaved);
            rope(sh->k, n, sh->nkv, hd, b->pos, b->inv_freq, c->rope_interleaved);
            /* Store this batch's keys and values before attending: a prefill chunk attends to
             * its own earlier tokens through the cache, like every later step. */
            const size_t layer_off = (size_t)l * b->n_slots * sh->nkv * hd, kv_row = (size_t)sh->nkv * hd;
            for (int32_t i = 0; i < n; i++) {
                memcpy(sh->k_cache + layer_off + (size_t)b->slot[i] * kv_row, sh->k + (size_t)i * kv_row, kv_row * sizeof(float));
                memcpy(sh->v_cache + layer_off + (size_t)b->slot[i] * kv_row, sh->v + (size_t)i * kv_row, kv_row * sizeof(float));
            }
            attention(b, sh, l, n, batch);
            matmul(b, sh->partial, sh->att, n, sh->nh * hd, w->wo, H, 0.0f);
        }
        sum_partials(b, n);

        rmsnorm(b->xn, b->x, b->norms + (size_t)(2 * l + 1) * H, n, H, c->rms_eps);
        for (int32_t s = 0; s < b->tp; s++) {
            shard *sh = &b->shards[s];
            const shard_layer *w = &sh->layers[l];
            matmul(b, sh->gate, b->xn, n, H, w->w_gate, sh->nf, 0.0f);
            matmul(b, sh->up, b->xn, n, H, w->w_up, sh->nf, 0.0f);
            const size_t len = (size_t)n * sh->nf;
            for (size_t j = 0; j < len; j++) {
                const float g = sh->gate[j];
                sh->gate[j] = g / (1.0f + expf(-g)) * sh->up[j]; /* SwiGLU: silu(gate) * up */
            }
            matmul(b, sh->partial, sh->gate, n, sh->nf, w->w_down, H, 0.0f);
        }
        sum_partials(b, n);
    }

    /* Logits of the last token of each run that asks for them. */
    int32_t rows = 0;
    for (int32_t r = 0; r < batch->n_seqs; r++) {
        if (!batch->logits_for[r])
            continue;
        const int32_t i = batch->seq_start[r + 1] - 1;
        memcpy(b->last + (size_t)rows * H, b->x + (size_t)i * H, (size_t)H * sizeof(float));
        rows++;
    }
    if (rows) {
        rmsnorm(b->xn, b->last, b->final_norm, rows, H, c->rms_eps);
        matmul(b, logits, b->xn, rows, H, b->lm_head, c->vocab_size, 0.0f);
    }
    return SN_OK;
}

/* The forward pass, then sampler.c on each logits row: the reference of what a GPU backend
 * does on its device. */
static sn_status cpu_forward_sample(sn_backend *base, const sn_batch *batch, const sn_sample_req *req, int32_t *tokens,
                                   float *logits)
{
    cpu_backend *b = (cpu_backend *)base;
    float *lg = logits ? logits : b->sample_logits;
    sn_status st = cpu_forward(base, batch, lg);
    if (st != SN_OK)
        return st;
    const size_t V = (size_t)b->cfg.vocab_size, words = (V + 63) / 64;
    int32_t row = 0;
    for (int32_t r = 0; r < batch->n_seqs; r++) {
        if (!batch->logits_for[r])
            continue;
        const sn_sample_row *sr = &req->rows[row];
        const float *x = lg + (size_t)row * V;
        int finite = 1; /* no NaN, no +inf (as the CUDA kernel: -inf is a logit like a mask) */
        for (size_t i = 0; i < V; i++)
            finite &= x[i] < INFINITY;
        tokens[row] = finite ? sn_sample_seen(&b->sampler, x, req->allowed + (size_t)row * words, &sr->params,
                                              req->seen ? req->seen + (size_t)row * words : NULL, sr->seed, sr->step)
                             : SN_TOKEN_NONFINITE;
        row++;
    }
    return SN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* KV blocks                                                                                */
/* ---------------------------------------------------------------------------------------- */

static sn_status cpu_kv_reserve(sn_backend *base, int32_t seq, int32_t n_positions)
{
    return sn_kv_alloc_reserve(&((cpu_backend *)base)->kv, seq, n_positions);
}

static void cpu_kv_release(sn_backend *base, int32_t seq)
{
    sn_kv_alloc_release(&((cpu_backend *)base)->kv, seq);
}

static int32_t cpu_kv_free_blocks(const sn_backend *base) { return ((const cpu_backend *)base)->kv.n_free; }

static int32_t cpu_kv_total_blocks(const sn_backend *base)
{
    return ((const cpu_backend *)base)->kv.n_blocks;
}

const sn_backend_ops sn_cpu_backend = {
    .name = "cpu",
    .open = cpu_open,
    .close = cpu_close,
    .forward = cpu_forward,
    .forward_sample = cpu_forward_sample,
    .kv_reserve = cpu_kv_reserve,
    .kv_release = cpu_kv_release,
    .kv_free_blocks = cpu_kv_free_blocks,
    .kv_total_blocks = cpu_kv_total_blocks,
};
