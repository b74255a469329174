/*
 * common.cuh - device helpers the kernels share: bf16 loads and stores, warp and block
 * reductions and scans. Included only by the .cu files of cuda/kernels/.
 */
#ifndef SN_CUDA_COMMON_CUH
#define SN_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <atomic>

#include "../sn_cuda_kernels.h"

#define SN_FULL_MASK 0xffffffffu

namespace sn {

/* ---------------------------------------------------------------------------------------- */
/* Element types                                                                             */
/* ---------------------------------------------------------------------------------------- */

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

/* 8 bf16 (16 bytes) to 8 floats. */
__device__ __forceinline__ void bf16x8_to_f32(const uint4 &v, float *f)
{
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&v);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Warp and block reductions                                                                 */
/* ---------------------------------------------------------------------------------------- */

template <typename T> __device__ __forceinline__ T warp_sum(T v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(SN_FULL_MASK, v, o);
    return v;
}

template <typename T> __device__ __forceinline__ T warp_max(T v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = max(v, __shfl_xor_sync(SN_FULL_MASK, v, o));
    return v;
}

/* Inclusive prefix sum over the lanes of a full warp. */
template <typename T> __device__ __forceinline__ T warp_incl_scan(T v)
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const T n = __shfl_up_sync(SN_FULL_MASK, v, o);
        if (lane >= o)
            v += n;
    }
    return v;
}

/* Sum over a block of NT threads (NT a multiple of 32, <= 1024); every thread gets the
 * result. scratch: NT/32 elements of shared memory, free on entry; the function ends with a
 * barrier, so scratch may be reused right after. */
template <int NT, typename T> __device__ __forceinline__ T block_sum(T v, T *scratch)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0)
        scratch[warp] = v;
    __syncthreads();
    T r = scratch[0];
#pragma unroll
    for (int w = 1; w < NT / 32; w++)
        r += scratch[w];
    __syncthreads();
    return r;
}

/* Exclusive prefix sum over the threads of a block of NT (multiple of 32, <= 1024) in
 * threadIdx order; *total gets the sum. scratch: 33 elements of shared memory. Ends with a
 * barrier. */
template <int NT, typename T> __device__ __forceinline__ T block_excl_scan(T v, T *scratch, T *total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const T inc = warp_incl_scan(v);
    if (lane == 31)
        scratch[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        const T w = lane < NT / 32 ? scratch[lane] : T(0);
        const T wi = warp_incl_scan(w);
        scratch[lane] = wi - w; /* exclusive prefix of the warp totals */
        if (lane == 31)
            scratch[32] = wi;
    }
    __syncthreads();
    const T r = scratch[warp] + inc - v;
    *total = scratch[32];
    __syncthreads();
    return r;
}

/* Raises kernel K's dynamic shared-memory limit once per device (the first launch on it, which
 * a backend makes before capturing graphs), not on every launch. K is a template argument so
 * that each kernel gets its own flags: the instantiations of a kernel template share one
 * pointer type, so flags kept per pointer type would let the first one set stand for all.
 * Atomic: data-parallel replicas launch from threads of their own. */
template <auto K> cudaError_t set_smem_once(size_t bytes)
{
    static std::atomic<bool> done[64];
    int dev = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess)
        return err;
    if (dev >= 0 && dev < 64 && done[dev].load(std::memory_order_relaxed))
        return cudaSuccess;
    err = cudaFuncSetAttribute(K, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (err == cudaSuccess && dev >= 0 && dev < 64)
        done[dev].store(true, std::memory_order_relaxed);
    return err;
}

} // namespace sn

#endif /* SN_CUDA_COMMON_CUH */
