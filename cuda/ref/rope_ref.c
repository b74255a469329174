/* rope_ref.c - rotary embedding from the formula: the angle as the CPU backend rounds it
 * ((float)pos * inv_freq in float), its sine, cosine and the rotation in fp64. */
#include <math.h>

#include "ref.h"

void sn_ref_rope(float *x, int32_t n_tokens, int32_t n_heads, int32_t head_dim, int64_t row_stride,
                 const int32_t *pos, const float *inv_freq, int interleaved)
{
    const int32_t half = head_dim / 2;
    for (int32_t t = 0; t < n_tokens; t++)
        for (int32_t h = 0; h < n_heads; h++)
            for (int32_t j = 0; j < half; j++) {
                const float angle = (float)pos[t] * inv_freq[j];
                const double c = cos((double)angle), s = sin((double)angle);
                float *v = x + t * row_stride + (int64_t)h * head_dim;
                const int32_t i0 = interleaved ? 2 * j : j, i1 = interleaved ? 2 * j + 1 : j + half;
                const double a = v[i0], b = v[i1];
                v[i0] = (float)(a * c - b * s);
                v[i1] = (float)(b * c + a * s);
            }
}
