/*
 * rope.cu - rotary position embedding, in place on the queries and keys a QKV projection
 * wrote, before the keys go to the KV cache. One thread per (token, head, pair); the angle is
 * (float)pos * inv_freq[j] as on the CPU, its sine and cosine the accurate sincosf. Both pair
 * layouts: rotate_half (j, j + d/2) and interleaved (2j, 2j + 1). Reference: ref/rope_ref.c.
 */
#include <cuda_runtime.h>

#include "common.cuh"

namespace {

constexpr int NT = 256;

template <typename T>
__global__ void __launch_bounds__(NT) rope_kernel(T *x, int64_t total, int n_heads, int half, int64_t row_stride,
                                                  int head_dim, const int32_t *pos, const float *inv_freq,
                                                  int interleaved)
{
    const int64_t idx = (int64_t)blockIdx.x * NT + threadIdx.x;
    if (idx >= total)
        return;
    const int j = (int)(idx % half);
    const int64_t rest = idx / half;
    const int h = (int)(rest % n_heads);
    const int64_t t = rest / n_heads;
    const float angle = __fmul_rn((float)pos[t], inv_freq[j]);
    float s, c;
    sincosf(angle, &s, &c);
    T *v = x + t * row_stride + (int64_t)h * head_dim + (interleaved ? 2 * j : j);
    const int partner = interleaved ? 1 : half;
    const float a = sn::to_f32(v[0]), b = sn::to_f32(v[partner]);
    v[0] = sn::from_f32<T>(a * c - b * s);
    v[partner] = sn::from_f32<T>(b * c + a * s);
}

} // namespace

extern "C" cudaError_t sn_cuda_rope(void *x, sn_cuda_dtype type, int32_t n_tokens, int32_t n_heads, int32_t head_dim,
                                    int64_t row_stride, const int32_t *pos, const float *inv_freq, int interleaved,
                                    cudaStream_t stream)
{
    if (n_tokens < 0 || n_heads <= 0 || head_dim <= 0 || head_dim % 2 || row_stride < (int64_t)n_heads * head_dim ||
        !x || !pos || !inv_freq || (type != SN_CUDA_F32 && type != SN_CUDA_BF16))
        return cudaErrorInvalidValue;
    const int half = head_dim / 2;
    const int64_t total = (int64_t)n_tokens * n_heads * half;
    if (total == 0)
        return cudaSuccess;
    const unsigned blocks = (unsigned)((total + NT - 1) / NT);
    if (type == SN_CUDA_F32)
        rope_kernel<float><<<blocks, NT, 0, stream>>>(static_cast<float *>(x), total, n_heads, half, row_stride,
                                                      head_dim, pos, inv_freq, interleaved);
    else
        rope_kernel<__nv_bfloat16><<<blocks, NT, 0, stream>>>(static_cast<__nv_bfloat16 *>(x), total, n_heads, half,
                                                              row_stride, head_dim, pos, inv_freq, interleaved);
    return cudaGetLastError();
}
