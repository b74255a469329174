/* attn_ref.h - what the two attention references share: one query row against positions
 * 0..n-1 of a paged sequence, in fp64. Internal to cuda/ref. */
#ifndef SN_CUDA_ATTN_REF_H
#define SN_CUDA_ATTN_REF_H

#include <math.h>
#include <stdlib.h>

#include "ref.h"

/* out[head_dim] = softmax_p(q . k_p * scale) v_p over p < n, for KV head kvh. */
static inline void sn_ref_attend_row(double *out, const float *q, const uint16_t *k_cache,
                                     const uint16_t *v_cache, const int32_t *table_row, int32_t n,
                                     int32_t kvh, int32_t n_kv_heads, int32_t head_dim, float scale)
{
    for (int32_t d = 0; d < head_dim; d++)
        out[d] = 0.0;
    if (n <= 0)
        return;
    double *sc = malloc((size_t)n * sizeof *sc);
    double mx = -INFINITY;
    for (int32_t p = 0; p < n; p++) {
        const int64_t base = (((int64_t)table_row[p / 16] * n_kv_heads + kvh) * 16 + p % 16) * head_dim;
        double dot = 0.0;
        for (int32_t d = 0; d < head_dim; d++)
            dot += (double)q[d] * sn_ref_bf16_to_f32(k_cache[base + d]);
        sc[p] = dot * scale;
        if (sc[p] > mx)
            mx = sc[p];
    }
    double sum = 0.0;
    for (int32_t p = 0; p < n; p++) {
        sc[p] = exp(sc[p] - mx);
        sum += sc[p];
    }
    for (int32_t p = 0; p < n; p++) {
        const int64_t base = (((int64_t)table_row[p / 16] * n_kv_heads + kvh) * 16 + p % 16) * head_dim;
        for (int32_t d = 0; d < head_dim; d++)
            out[d] += sc[p] / sum * sn_ref_bf16_to_f32(v_cache[base + d]);
    }
    free(sc);
}

#endif /* SN_CUDA_ATTN_REF_H */
