/*
 * ref.h - plain-C references of the CUDA kernels, written from the math (fp64 accumulation,
 * output first, shape comments), and bf16 conversions. The kernel tests compare each kernel
 * with its reference here; none of this code shares the kernels' index helpers, so an
 * addressing mistake in one does not hide in both.
 */
#ifndef SN_CUDA_REF_H
#define SN_CUDA_REF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* bf16 bits <-> float; float -> bf16 rounds to nearest even (as __float2bfloat16_rn). */
static inline float sn_ref_bf16_to_f32(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t sn_ref_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* The value a float takes once stored as bf16. */
static inline float sn_ref_round_bf16(float f) { return sn_ref_bf16_to_f32(sn_ref_f32_to_bf16(f)); }

/* residual (n, dim) += delta (n, dim; NULL: none); out (n, dim) = residual * scale * weight,
 * scale = 1 / sqrt(mean(residual^2) + eps). */
void sn_ref_rmsnorm(float *out, float *residual, const float *delta, const float *weight, int32_t n,
                    int32_t dim, float eps);

/* x: token t, head h at x + t * row_stride + h * head_dim, rotated in place (double math). */
void sn_ref_rope(float *x, int32_t n_tokens, int32_t n_heads, int32_t head_dim, int64_t row_stride,
                 const int32_t *pos, const float *inv_freq, int interleaved);

/* out (n, cols) = gate / (1 + exp(-gate)) * up, rows strided. */
void sn_ref_swiglu(float *out, const float *gate, const float *up, int32_t n, int32_t cols,
                   int64_t out_stride, int64_t gate_stride, int64_t up_stride);

/* out (n, hidden) = table (vocab, hidden) rows; ids outside [0, vocab) give zeros. */
void sn_ref_embed(float *out, const float *table, const int32_t *tokens, int32_t n, int32_t hidden,
                  int32_t vocab);

/* Pool (n_blocks, n_kv_heads, 16, head_dim) bf16 bits; token i's rows (n_kv_heads, head_dim)
 * at k + i * src_stride go to slot slots[i] (< 0: skipped). */
void sn_ref_kv_store(uint16_t *k_cache, uint16_t *v_cache, const uint16_t *k, const uint16_t *v,
                     int64_t src_stride, const int32_t *slots, int32_t n_tokens, int32_t n_kv_heads,
                     int32_t head_dim);

/* Decode attention (fp64): out (n_seqs, n_heads, head_dim) over positions 0..ctx_lens[s]-1,
 * K/V from the pool through block_tables[seq_rows[s] * table_stride + p / 16]. q, out as
 * floats (the bf16 values the kernel reads). ctx 0 gives zeros. */
void sn_ref_attn_decode(double *out, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                        const int32_t *block_tables, int32_t table_stride, const int32_t *seq_rows,
                        const int32_t *ctx_lens, int32_t n_seqs, int32_t n_heads, int32_t n_kv_heads,
                        int32_t head_dim, float scale);

/* Causal prefill attention (fp64): run r's tokens seq_start[r].. at positions seq_pos[r]..,
 * each attending positions 0..its own. q, out (n_tokens, n_heads, head_dim). */
void sn_ref_attn_prefill(double *out, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                         const int32_t *block_tables, int32_t table_stride, const int32_t *seq_rows,
                         const int32_t *seq_start, const int32_t *seq_pos, int32_t n_seqs,
                         int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, float scale);

/* dst (n_rows, cols) = rows idx[i] of src (bf16 bits). */
void sn_ref_gather_rows(uint16_t *dst, const uint16_t *src, const int32_t *idx, int32_t n_rows, int32_t cols);

/* The CPU sampler (core/src/sampler.c) on one row with the kernel's inputs: the seen bitset
 * becomes the history. probs (vocab; NULL: not written) gets sn_sample_distribution. The
 * sampler struct is created per call. Returns the token (-1: nothing allowed). */
int32_t sn_ref_sample(float *probs, const float *logits, const uint64_t *allowed, const uint64_t *seen,
                      float temperature, int32_t top_k, float top_p, float min_p,
                      float repetition_penalty, uint64_t seed, uint64_t step, int32_t vocab);

#ifdef __cplusplus
}
#endif

#endif /* SN_CUDA_REF_H */
