/*
 * rope.h - the rotary-embedding frequencies of a model configuration, computed one way for
 * every backend (the CPU backend, the CUDA backend and its tests) so that all rotate by the
 * same angles. Header-only: the CUDA library, which links nothing of the core, includes it.
 */
#ifndef SN_ROPE_H
#define SN_ROPE_H

#include <math.h>

#include "model.h"

/* inv_freq[i] = theta^(-2i/head_dim), i < head_dim/2, in double, rounded to float at the end;
 * with Llama 3's long-context scaling when configured (wavelengths longer than
 * original_max/low_freq_factor divided by factor, shorter than original_max/high_freq_factor
 * kept, those between interpolated), then divided by a GGUF's rope_freqs factors if given. */
static inline void sn_rope_inv_freq(const sn_model_config *c, const float *factors, float *inv_freq)
{
    const int32_t half = c->head_dim / 2;
    for (int32_t i = 0; i < half; i++) {
        double f = pow((double)c->rope_theta, -2.0 * i / c->head_dim);
        if (c->rope_llama3) {
            double low_wavelen = c->rope_original_max_positions / c->rope_low_freq_factor;
            double high_wavelen = c->rope_original_max_positions / c->rope_high_freq_factor;
            double wavelen = 2.0 * 3.14159265358979323846 / f;
            if (wavelen > low_wavelen)
                f /= c->rope_factor;
            else if (wavelen >= high_wavelen) {
                double smooth = (c->rope_original_max_positions / wavelen - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0 - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        if (factors)
            f /= factors[i];
        inv_freq[i] = (float)f;
    }
}

#endif /* SN_ROPE_H */
