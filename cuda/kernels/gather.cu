/*
 * gather.cu - the rows that want logits, gathered before the LM head: row i of dst is row
 * idx[i] of src (bf16, one block per row). Reference: ref/gather_ref.c.
 */
#include <cuda_runtime.h>

#include "common.cuh"

namespace {

constexpr int NT = 256;

__global__ void __launch_bounds__(NT) gather_rows_kernel(sn_bf16 *dst, const sn_bf16 *src, const int32_t *idx,
                                                         int32_t cols)
{
    const sn_bf16 *s = src + (int64_t)idx[blockIdx.x] * cols;
    sn_bf16 *d = dst + (int64_t)blockIdx.x * cols;
    for (int32_t j = threadIdx.x; j < cols; j += NT)
        d[j] = s[j];
}

} // namespace

extern "C" cudaError_t sn_cuda_gather_rows(sn_bf16 *dst, const sn_bf16 *src, const int32_t *idx, int32_t n_rows,
                                           int32_t cols, cudaStream_t stream)
{
    if (n_rows < 0 || cols <= 0 || !dst || !src || !idx)
        return cudaErrorInvalidValue;
    if (n_rows == 0)
        return cudaSuccess;
    gather_rows_kernel<<<(unsigned)n_rows, NT, 0, stream>>>(dst, src, idx, cols);
    return cudaGetLastError();
}
