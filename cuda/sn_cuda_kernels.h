/*
 * sn_cuda_kernels.h - the launchers of the CUDA backend's kernels, one per op, as the backend
 * (cuBLAS GEMMs, graphs, NCCL; not in this file) calls them in the order data moves through a
 * layer: embedding -> RMSNorm (+ residual) -> RoPE -> KV store -> paged attention (prefill or
 * decode) -> SwiGLU -> ... -> sampling.
 *
 * Every launcher takes device pointers and a stream, checks its shapes, enqueues its kernels
 * and returns cudaGetLastError() (cudaErrorInvalidValue for bad shapes, before launching
 * anything). None synchronises with the host or allocates, so all can be captured in a CUDA
 * graph; scratch memory comes from the caller (the *_workspace functions size it).
 *
 * Layouts (row-major, last index fastest):
 *   bf16 tensors are uint16_t bit patterns (sn_bf16) so that C callers need no CUDA headers.
 *   KV pool of one layer: k_cache and v_cache are (n_blocks, n_kv_heads, 16, head_dim) bf16,
 *     so the 16 positions of one block and one KV head are 16 * head_dim contiguous values.
 *   Position p of a sequence whose block-table row is `row` lives in block
 *     block_tables[row * table_stride + p / 16], slot p % 16 (backend.h's SN_KV_BLOCK = 16).
 */
#ifndef SN_CUDA_KERNELS_H
#define SN_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef uint16_t sn_bf16; /* bfloat16 bits */

typedef enum sn_cuda_dtype {
    SN_CUDA_F32 = 0,
    SN_CUDA_BF16 = 1,
} sn_cuda_dtype;

/* Positions per KV block; must equal backend.h's SN_KV_BLOCK. */
#define SN_CUDA_KV_BLOCK 16

/* residual (n_rows, dim) f32 += delta (n_rows, dim; f32 or bf16; NULL: no add), then
 * out (n_rows, dim; f32 or bf16) = residual * rsqrt(mean(residual^2) + eps) * weight (dim, f32).
 * out may not alias residual. */
cudaError_t sn_cuda_rmsnorm(void *out, sn_cuda_dtype out_type, float *residual, const void *delta,
                            sn_cuda_dtype delta_type, const float *weight, int32_t n_rows,
                            int32_t dim, float eps, cudaStream_t stream);

/* Rotates x in place: token t, head h starts at x + t * row_stride + h * head_dim (elements).
 * Pair j (0 <= j < head_dim/2) is (j, j + head_dim/2) in the rotate_half layout (Hugging
 * Face Llama), (2j, 2j+1) when interleaved; its angle is (float)pos[t] * inv_freq[j] (f32,
 * head_dim/2 values, Llama 3 scaling already applied by the caller). */
cudaError_t sn_cuda_rope(void *x, sn_cuda_dtype type, int32_t n_tokens, int32_t n_heads,
                         int32_t head_dim, int64_t row_stride, const int32_t *pos,
                         const float *inv_freq, int interleaved, cudaStream_t stream);

/* out[r, c] = silu(gate[r, c]) * up[r, c] = gate / (1 + exp(-gate)) * up, fp32 math; all
 * three of one type, rows strided (elements), so gate and up may be halves of one buffer. */
cudaError_t sn_cuda_swiglu(void *out, const void *gate, const void *up, sn_cuda_dtype type,
                           int32_t n_rows, int32_t n_cols, int64_t out_stride, int64_t gate_stride,
                           int64_t up_stride, cudaStream_t stream);

/* out (n_tokens, hidden) = table[tokens[i]] (table (vocab, hidden), f32 or bf16). An id
 * outside [0, vocab) gives a zero row (the caller validates ids; no out-of-bounds read). */
cudaError_t sn_cuda_embed(void *out, sn_cuda_dtype out_type, const void *table,
                          sn_cuda_dtype table_type, const int32_t *tokens, int32_t n_tokens,
                          int32_t hidden, int32_t vocab, cudaStream_t stream);

/* Writes the keys and values of n_tokens tokens into the paged pool: token i's rows
 * k + i * src_stride and v + i * src_stride ((n_kv_heads, head_dim) each) go to pool slot
 * slots[i] = block * 16 + position % 16. slots[i] < 0: skipped (padding). */
cudaError_t sn_cuda_kv_store(sn_bf16 *k_cache, sn_bf16 *v_cache, const sn_bf16 *k,
                             const sn_bf16 *v, int64_t src_stride, const int32_t *slots,
                             int32_t n_tokens, int32_t n_kv_heads, int32_t head_dim,
                             cudaStream_t stream);

/* dst (n_rows, cols) = rows idx[i] of src (cols wide, bf16): the rows that want logits. */
cudaError_t sn_cuda_gather_rows(sn_bf16 *dst, const sn_bf16 *src, const int32_t *idx, int32_t n_rows,
                                int32_t cols, cudaStream_t stream);

/* The paged KV cache of one layer, as the attention kernels read it. */
typedef struct sn_cuda_paged_kv {
    const sn_bf16 *k_cache;      /* (n_blocks, n_kv_heads, 16, head_dim) */
    const sn_bf16 *v_cache;      /* (n_blocks, n_kv_heads, 16, head_dim) */
    const int32_t *block_tables; /* (rows, table_stride) physical block of each logical one */
    int32_t table_stride;
    int32_t n_heads, n_kv_heads; /* query heads, KV heads; n_heads % n_kv_heads == 0, the group
                                  * n_heads / n_kv_heads at most 16 (decode) or 64 (prefill) */
    int32_t head_dim;            /* decode: 64, 96, 128 or 256; prefill: 64, 96, 128 or 256 */
    float scale;                 /* score scale, usually 1/sqrt(head_dim) */
} sn_cuda_paged_kv;

/* Bytes of scratch sn_cuda_attn_decode needs for this shape (0 when one pass suffices). The
 * split of the context depends on the device's multiprocessor count, read from the current
 * device: size the workspace on the device that will run it. */
size_t sn_cuda_attn_decode_workspace(int32_t n_seqs, int32_t n_heads, int32_t head_dim,
                                     int32_t n_kv_heads, int32_t max_ctx);

/* One query per sequence (decode): out (n_seqs, n_heads, head_dim; row stride out_stride) =
 * softmax(q k^T * scale) v over positions 0 .. ctx_lens[s]-1 of sequence s, whose block
 * table row is seq_rows[s]; q (n_seqs, n_heads, head_dim; row stride q_stride). Query heads
 * h of KV group h / (n_heads / n_kv_heads) share one K/V load. Contexts longer than a split
 * are cut into splits reduced by a second kernel (log-sum-exp merge). max_ctx bounds every
 * ctx_lens[s] (it fixes the grid; a graph captured for max_ctx serves any shorter context).
 * ctx_lens[s] == 0 gives a zero row. */
cudaError_t sn_cuda_attn_decode(sn_bf16 *out, int64_t out_stride, const sn_bf16 *q,
                                int64_t q_stride, const sn_cuda_paged_kv *kv,
                                const int32_t *seq_rows, const int32_t *ctx_lens, int32_t n_seqs,
                                int32_t max_ctx, void *workspace, size_t workspace_bytes,
                                cudaStream_t stream);

/* Causal attention of a ragged batch (prefill chunks; FlashAttention-2 tiles, bf16 tensor
 * cores, fp32 accumulation): run r covers tokens seq_start[r] .. seq_start[r+1]-1 at
 * positions seq_pos[r], seq_pos[r]+1, ...; its keys and values (this chunk's included, stored
 * first with sn_cuda_kv_store) are read through block-table row seq_rows[r]. Token i of
 * position p attends positions 0..p. q and out: (n_tokens, n_heads, head_dim), row strides
 * q_stride and out_stride. n_tokens == seq_start[n_seqs]. */
cudaError_t sn_cuda_attn_prefill(sn_bf16 *out, int64_t out_stride, const sn_bf16 *q,
                                 int64_t q_stride, const sn_cuda_paged_kv *kv,
                                 const int32_t *seq_rows, const int32_t *seq_start,
                                 const int32_t *seq_pos, int32_t n_seqs, int32_t n_tokens,
                                 cudaStream_t stream);

/* Sampling parameters of one row, in device memory (so a captured graph reads the current
 * values). Fields as core/src/sampler.h's sn_sampling, plus the session's seed and step. */
typedef struct sn_cuda_sample_params {
    float temperature;        /* 0: greedy */
    int32_t top_k;            /* 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off */
    uint32_t reserved;        /* 0 */
    uint64_t seed;
    uint64_t step;
} sn_cuda_sample_params;

size_t sn_cuda_sample_workspace(int32_t rows, int32_t vocab);

/* One token per row of logits (rows, vocab; row stride logits_stride), with
 * core/src/sampler.c's rules and result: allowed (rows, (vocab+63)/64 words; NULL: all)
 * masks ids, seen (same shape; NULL: none) marks the ids the repetition penalty applies to,
 * then greedy or softmax/top-k/top-p/min-p and the Philox draw for (seed, step). tokens[r] =
 * the id, or -1 when no id is allowed, or SN_CUDA_TOKEN_NONFINITE when any logit of the row
 * (allowed or not) is NaN or +inf: corrupted weights or an overflow, nothing to sample from
 * (probs then all 0). probs (rows, vocab; NULL: not written) gets the normalised distribution
 * the draw used (sn_sample_distribution). A logit may be -inf; a row whose allowed logits are
 * all -inf gives its lowest allowed id. */
#define SN_CUDA_TOKEN_NONFINITE (-2)
cudaError_t sn_cuda_sample(int32_t *tokens, float *probs, const float *logits,
                           int64_t logits_stride, const uint64_t *allowed, const uint64_t *seen,
                           const sn_cuda_sample_params *params, int32_t rows, int32_t vocab,
                           void *workspace, size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* SN_CUDA_KERNELS_H */
