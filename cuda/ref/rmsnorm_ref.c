/* rmsnorm_ref.c - RMSNorm (+ residual add) from the formula, fp64 sum of squares. */
#include <math.h>

#include "ref.h"

void sn_ref_rmsnorm(float *out, float *residual, const float *delta, const float *weight, int32_t n,
                    int32_t dim, float eps)
{
    for (int32_t i = 0; i < n; i++) {
        float *x = residual + (size_t)i * dim;
        double ss = 0.0;
        for (int32_t j = 0; j < dim; j++) {
            if (delta)
                x[j] += delta[(size_t)i * dim + j];
            ss += (double)x[j] * x[j];
        }
        const double scale = 1.0 / sqrt(ss / dim + eps);
        for (int32_t j = 0; j < dim; j++)
            out[(size_t)i * dim + j] = (float)(x[j] * scale * weight[j]);
    }
}
