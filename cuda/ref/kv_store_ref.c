/* kv_store_ref.c - scatter of key and value rows into the paged pool, from the layout:
 * pool[block][kv_head][slot in block][d]. */
#include "ref.h"

void sn_ref_kv_store(uint16_t *k_cache, uint16_t *v_cache, const uint16_t *k, const uint16_t *v,
                     int64_t src_stride, const int32_t *slots, int32_t n_tokens, int32_t n_kv_heads,
                     int32_t head_dim)
{
    for (int32_t i = 0; i < n_tokens; i++) {
        if (slots[i] < 0)
            continue;
        const int64_t block = slots[i] / 16, in_block = slots[i] % 16;
        for (int32_t h = 0; h < n_kv_heads; h++)
            for (int32_t d = 0; d < head_dim; d++) {
                const int64_t dst = ((block * n_kv_heads + h) * 16 + in_block) * head_dim + d;
                const int64_t src = i * src_stride + (int64_t)h * head_dim + d;
                k_cache[dst] = k[src];
                v_cache[dst] = v[src];
            }
    }
}
