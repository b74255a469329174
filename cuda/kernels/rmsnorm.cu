/*
 * rmsnorm.cu - RMSNorm with the residual add fused in front: the step between a sublayer's
 * output projection and the next sublayer's input. residual += delta (f32 stream), then
 * out = residual * rsqrt(mean(residual^2) + eps) * weight, one block per row, fp32 math.
 * Reference: ref/rmsnorm_ref.c (the CPU backend's formula).
 */
#include <cuda_runtime.h>

#include "common.cuh"

namespace {

constexpr int NT = 256;

template <typename TD, typename TO, bool HAS_DELTA>
__global__ void __launch_bounds__(NT) rmsnorm_kernel(TO *out, float *residual, const TD *delta,
                                                     const float *weight, int dim, float eps)
{
    __shared__ float scratch[NT / 32];
    const int64_t row = blockIdx.x;
    float *x = residual + row * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += NT) {
        float v = x[i];
        if (HAS_DELTA) {
            v += sn::to_f32(delta[row * dim + i]);
            x[i] = v;
        }
        ss = fmaf(v, v, ss);
    }
    ss = sn::block_sum<NT>(ss, scratch);
    const float scale = 1.0f / sqrtf(ss / (float)dim + eps);
    TO *o = out + row * dim;
    for (int i = threadIdx.x; i < dim; i += NT)
        o[i] = sn::from_f32<TO>(x[i] * scale * weight[i]);
}

template <typename TO>
cudaError_t launch(TO *out, float *residual, const void *delta, sn_cuda_dtype delta_type, const float *weight,
                   int32_t n_rows, int32_t dim, float eps, cudaStream_t stream)
{
    if (!delta)
        rmsnorm_kernel<float, TO, false><<<n_rows, NT, 0, stream>>>(out, residual, nullptr, weight, dim, eps);
    else if (delta_type == SN_CUDA_F32)
        rmsnorm_kernel<float, TO, true><<<n_rows, NT, 0, stream>>>(out, residual, static_cast<const float *>(delta),
                                                                   weight, dim, eps);
    else
        rmsnorm_kernel<__nv_bfloat16, TO, true><<<n_rows, NT, 0, stream>>>(
            out, residual, static_cast<const __nv_bfloat16 *>(delta), weight, dim, eps);
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t sn_cuda_rmsnorm(void *out, sn_cuda_dtype out_type, float *residual, const void *delta,
                                       sn_cuda_dtype delta_type, const float *weight, int32_t n_rows,
                                       int32_t dim, float eps, cudaStream_t stream)
{
    if (n_rows < 0 || dim <= 0 || !out || !residual || !weight || (out_type != SN_CUDA_F32 && out_type != SN_CUDA_BF16) ||
        (delta && delta_type != SN_CUDA_F32 && delta_type != SN_CUDA_BF16) || (void *)residual == out)
        return cudaErrorInvalidValue;
    if (n_rows == 0)
        return cudaSuccess;
    if (out_type == SN_CUDA_F32)
        return launch(static_cast<float *>(out), residual, delta, delta_type, weight, n_rows, dim, eps, stream);
    return launch(static_cast<__nv_bfloat16 *>(out), residual, delta, delta_type, weight, n_rows, dim, eps, stream);
}
