/* swiglu_ref.c - silu(gate) * up from the formula, fp64. */
#include <math.h>

#include "ref.h"

void sn_ref_swiglu(float *out, const float *gate, const float *up, int32_t n, int32_t cols,
                   int64_t out_stride, int64_t gate_stride, int64_t up_stride)
{
    for (int32_t r = 0; r < n; r++)
        for (int32_t c = 0; c < cols; c++) {
            const double g = gate[r * gate_stride + c], u = up[r * up_stride + c];
            out[r * out_stride + c] = (float)(g / (1.0 + exp(-g)) * u);
        }
}
