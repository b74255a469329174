/*
 * emul.h - the CUDA kernels' algorithms replayed sequentially on the CPU with the very
 * functions the kernels call (sample_core.h, attn_core.h): the sampler's passes, radix
 * selects and draw, the split-KV decode with its log-sum-exp merge, and the FlashAttention-2
 * prefill tiling. test_cuda_cpu.c checks them against the CPU sampler and the references on
 * a machine without a GPU; only the CUDA-specific parts (warp collectives, shared memory,
 * tensor cores) stay unchecked there.
 */
#ifndef SN_CUDA_EMUL_H
#define SN_CUDA_EMUL_H

#include <stdint.h>

/* As sn_cuda_sample_params (sn_cuda_kernels.h), without the CUDA headers. */
typedef struct emul_sample_params {
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p;
    float repetition_penalty;
    uint64_t seed, step;
} emul_sample_params;

typedef struct emul_sample_stats {
    int topk_passes, topp_passes; /* digit passes the selects took */
} emul_sample_stats;

/* The sampling kernel on one row, with its thread layout (1024 threads: the order of the
 * double sum, the blocked segments of the draw) replayed. work: vocab words of scratch.
 * probs (vocab; NULL: not written) as the kernel's probs output. */
int32_t emul_sample(float *probs, const float *logits, const uint64_t *allowed, const uint64_t *seen,
                    const emul_sample_params *prm, int32_t vocab, uint32_t *work, emul_sample_stats *stats);

/* The top-k select alone over keys of the given probability bits (SN_SAMP_MASKED: not a
 * candidate): the threshold key. */
uint64_t emul_select_top_k(const uint32_t *pbits, int32_t vocab, uint32_t k, int *passes);

/* The top-p select over the candidates with key >= thr_k. */
uint64_t emul_select_top_p(const uint32_t *pbits, int32_t vocab, uint64_t thr_k, float top_p, int *passes);

/* Split-KV decode on the CPU: out (n_seqs, n_heads, head_dim) floats, the partition of
 * sn_decode_make_plan(n_seqs, n_kv_heads, max_ctx, n_sm), the online softmax per 64-position
 * tile and the merge. *n_splits_out: the plan's splits. Returns 0, or -1 if some position
 * was read by no split or by two. */
int emul_attn_decode(float *out, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                     const int32_t *block_tables, int32_t table_stride, const int32_t *seq_rows,
                     const int32_t *ctx_lens, int32_t n_seqs, int32_t n_heads, int32_t n_kv_heads,
                     int32_t head_dim, float scale, int32_t max_ctx, int32_t n_sm, int32_t *n_splits_out);

/* FlashAttention-2 prefill on the CPU with the kernel's tiles (64 rows of (token, group
 * head), 64 keys), masks, warp skipping and, if bf16_p, P rounded to bf16 for P V as the
 * tensor cores see it. out (n_tokens, n_heads, head_dim). Returns 0, or -1 if some output
 * row was written by no tile or by two, or a tile broke the tile math's invariants. */
int emul_attn_prefill(float *out, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                      const int32_t *block_tables, int32_t table_stride, const int32_t *seq_rows,
                      const int32_t *seq_start, const int32_t *seq_pos, int32_t n_seqs, int32_t n_tokens,
                      int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, float scale, int bf16_p);

#endif /* SN_CUDA_EMUL_H */
