/* attn_decode_ref.c - decode attention (one query per sequence, GQA) from the formula. */
#include "attn_ref.h"

void sn_ref_attn_decode(double *out, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                        const int32_t *block_tables, int32_t table_stride, const int32_t *seq_rows,
                        const int32_t *ctx_lens, int32_t n_seqs, int32_t n_heads, int32_t n_kv_heads,
                        int32_t head_dim, float scale)
{
    const int32_t group = n_heads / n_kv_heads;
    for (int32_t s = 0; s < n_seqs; s++)
        for (int32_t h = 0; h < n_heads; h++) {
            const size_t row = ((size_t)s * n_heads + h) * head_dim;
            sn_ref_attend_row(out + row, q + row, k_cache, v_cache,
                              block_tables + (size_t)seq_rows[s] * table_stride, ctx_lens[s], h / group,
                              n_kv_heads, head_dim, scale);
        }
}
