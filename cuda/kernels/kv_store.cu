/*
 * kv_store.cu - writes a batch's keys and values (after RoPE) into the paged KV pool, at the
 * slots the scheduler reserved, before attention reads them. 16-byte copies when the rows
 * allow it, element copies otherwise. Addresses: attn_core.h (sn_kv_slot_offset), checked on
 * the CPU. Reference: ref/kv_store_ref.c.
 */
#include <cuda_runtime.h>

#include "attn_core.h"
#include "common.cuh"

namespace {

constexpr int NT = 256;

/* VEC: elements per copy, 8 (one uint4) or 1. */
template <int VEC>
__global__ void __launch_bounds__(NT) kv_store_kernel(uint16_t *k_cache, uint16_t *v_cache, const uint16_t *k,
                                                      const uint16_t *v, int64_t src_stride, const int32_t *slots,
                                                      int64_t total, int n_kv_heads, int head_dim)
{
    const int64_t idx = (int64_t)blockIdx.x * NT + threadIdx.x;
    if (idx >= total)
        return;
    const int chunks = head_dim / VEC;
    const int c = (int)(idx % chunks);
    const int64_t rest = idx / chunks;
    const int h = (int)(rest % n_kv_heads);
    const int64_t t = rest / n_kv_heads;
    const int32_t slot = slots[t];
    if (slot < 0)
        return;
    const int64_t dst = sn_kv_slot_offset(slot, h, n_kv_heads, head_dim) + (int64_t)c * VEC;
    const int64_t src = t * src_stride + (int64_t)h * head_dim + (int64_t)c * VEC;
    if (VEC == 8) {
        *reinterpret_cast<uint4 *>(k_cache + dst) = *reinterpret_cast<const uint4 *>(k + src);
        *reinterpret_cast<uint4 *>(v_cache + dst) = *reinterpret_cast<const uint4 *>(v + src);
    } else {
        k_cache[dst] = k[src];
        v_cache[dst] = v[src];
    }
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

} // namespace

extern "C" cudaError_t sn_cuda_kv_store(sn_bf16 *k_cache, sn_bf16 *v_cache, const sn_bf16 *k, const sn_bf16 *v,
                                        int64_t src_stride, const int32_t *slots, int32_t n_tokens,
                                        int32_t n_kv_heads, int32_t head_dim, cudaStream_t stream)
{
    if (n_tokens < 0 || n_kv_heads <= 0 || head_dim <= 0 || src_stride < (int64_t)n_kv_heads * head_dim ||
        !k_cache || !v_cache || !k || !v || !slots)
        return cudaErrorInvalidValue;
    if (n_tokens == 0)
        return cudaSuccess;
    const bool vec = head_dim % 8 == 0 && src_stride % 8 == 0 && aligned16(k) && aligned16(v) &&
                     aligned16(k_cache) && aligned16(v_cache);
    const int per = vec ? 8 : 1;
    const int64_t total = (int64_t)n_tokens * n_kv_heads * (head_dim / per);
    const unsigned blocks = (unsigned)((total + NT - 1) / NT);
    if (vec)
        kv_store_kernel<8><<<blocks, NT, 0, stream>>>(k_cache, v_cache, k, v, src_stride, slots, total, n_kv_heads,
                                                      head_dim);
    else
        kv_store_kernel<1><<<blocks, NT, 0, stream>>>(k_cache, v_cache, k, v, src_stride, slots, total, n_kv_heads,
                                                      head_dim);
    return cudaGetLastError();
}
