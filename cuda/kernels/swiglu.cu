/*
 * swiglu.cu - the gated activation between the FFN's gate/up projections and its down
 * projection: out = silu(gate) * up = gate / (1 + exp(-gate)) * up, fp32 math, one thread per
 * element; strided rows so gate and up may be the two halves of one fused GEMM output.
 * Reference: ref/swiglu_ref.c.
 */
#include <cuda_runtime.h>

#include "common.cuh"

namespace {

constexpr int NT = 256;

template <typename T>
__global__ void __launch_bounds__(NT) swiglu_kernel(T *out, const T *gate, const T *up, int64_t total, int n_cols,
                                                    int64_t out_stride, int64_t gate_stride, int64_t up_stride)
{
    const int64_t idx = (int64_t)blockIdx.x * NT + threadIdx.x;
    if (idx >= total)
        return;
    const int64_t r = idx / n_cols;
    const int c = (int)(idx % n_cols);
    const float g = sn::to_f32(gate[r * gate_stride + c]), u = sn::to_f32(up[r * up_stride + c]);
    out[r * out_stride + c] = sn::from_f32<T>(g / (1.0f + expf(-g)) * u);
}

} // namespace

extern "C" cudaError_t sn_cuda_swiglu(void *out, const void *gate, const void *up, sn_cuda_dtype type, int32_t n_rows,
                                      int32_t n_cols, int64_t out_stride, int64_t gate_stride, int64_t up_stride,
                                      cudaStream_t stream)
{
    if (n_rows < 0 || n_cols <= 0 || !out || !gate || !up || out_stride < n_cols || gate_stride < n_cols ||
        up_stride < n_cols || (type != SN_CUDA_F32 && type != SN_CUDA_BF16))
        return cudaErrorInvalidValue;
    const int64_t total = (int64_t)n_rows * n_cols;
    if (total == 0)
        return cudaSuccess;
    const unsigned blocks = (unsigned)((total + NT - 1) / NT);
    if (type == SN_CUDA_F32)
        swiglu_kernel<float><<<blocks, NT, 0, stream>>>(static_cast<float *>(out), static_cast<const float *>(gate),
                                                        static_cast<const float *>(up), total, n_cols, out_stride,
                                                        gate_stride, up_stride);
    else
        swiglu_kernel<__nv_bfloat16><<<blocks, NT, 0, stream>>>(
            static_cast<__nv_bfloat16 *>(out), static_cast<const __nv_bfloat16 *>(gate),
            static_cast<const __nv_bfloat16 *>(up), total, n_cols, out_stride, gate_stride, up_stride);
    return cudaGetLastError();
}
