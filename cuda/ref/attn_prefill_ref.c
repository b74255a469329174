/* attn_prefill_ref.c - causal attention of a ragged batch from the formula: token i of run r
 * sits at position seq_pos[r] + (i - seq_start[r]) and attends positions 0..that. */
#include "attn_ref.h"

void sn_ref_attn_prefill(double *out, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                         const int32_t *block_tables, int32_t table_stride, const int32_t *seq_rows,
                         const int32_t *seq_start, const int32_t *seq_pos, int32_t n_seqs,
                         int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, float scale)
{
    const int32_t group = n_heads / n_kv_heads;
    for (int32_t r = 0; r < n_seqs; r++)
        for (int32_t i = seq_start[r]; i < seq_start[r + 1]; i++) {
            const int32_t pos = seq_pos[r] + (i - seq_start[r]);
            for (int32_t h = 0; h < n_heads; h++) {
                const size_t row = ((size_t)i * n_heads + h) * head_dim;
                sn_ref_attend_row(out + row, q + row, k_cache, v_cache,
                                  block_tables + (size_t)seq_rows[r] * table_stride, pos + 1, h / group,
                                  n_kv_heads, head_dim, scale);
            }
        }
}
