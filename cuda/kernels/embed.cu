/*
 * embed.cu - the first step of a forward pass: each token's row of the embedding table
 * (f32 or bf16) into the residual stream (f32 or bf16). One block per token. An id outside
 * the vocabulary gives a zero row rather than a read out of bounds (the host validates ids
 * and reports them). Reference: ref/embed_ref.c.
 */
#include <cuda_runtime.h>

#include "common.cuh"

namespace {

constexpr int NT = 256;

template <typename TI, typename TO>
__global__ void __launch_bounds__(NT) embed_kernel(TO *out, const TI *table, const int32_t *tokens, int hidden,
                                                   int vocab)
{
    const int64_t t = blockIdx.x;
    const int32_t id = tokens[t];
    TO *o = out + t * hidden;
    if (id < 0 || id >= vocab) {
        for (int i = threadIdx.x; i < hidden; i += NT)
            o[i] = sn::from_f32<TO>(0.0f);
        return;
    }
    const TI *row = table + (int64_t)id * hidden;
    for (int i = threadIdx.x; i < hidden; i += NT)
        o[i] = sn::from_f32<TO>(sn::to_f32(row[i]));
}

template <typename TO>
void launch(TO *out, const void *table, sn_cuda_dtype table_type, const int32_t *tokens, int32_t n_tokens,
            int32_t hidden, int32_t vocab, cudaStream_t stream)
{
    if (table_type == SN_CUDA_F32)
        embed_kernel<float, TO><<<n_tokens, NT, 0, stream>>>(out, static_cast<const float *>(table), tokens, hidden,
                                                             vocab);
    else
        embed_kernel<__nv_bfloat16, TO><<<n_tokens, NT, 0, stream>>>(
            out, static_cast<const __nv_bfloat16 *>(table), tokens, hidden, vocab);
}

} // namespace

extern "C" cudaError_t sn_cuda_embed(void *out, sn_cuda_dtype out_type, const void *table, sn_cuda_dtype table_type,
                                     const int32_t *tokens, int32_t n_tokens, int32_t hidden, int32_t vocab,
                                     cudaStream_t stream)
{
    if (n_tokens < 0 || hidden <= 0 || vocab <= 0 || !out || !table || !tokens ||
        (out_type != SN_CUDA_F32 && out_type != SN_CUDA_BF16) ||
        (table_type != SN_CUDA_F32 && table_type != SN_CUDA_BF16))
        return cudaErrorInvalidValue;
    if (n_tokens == 0)
        return cudaSuccess;
    if (out_type == SN_CUDA_F32)
        launch(static_cast<float *>(out), table, table_type, tokens, n_tokens, hidden, vocab, stream);
    else
        launch(static_cast<__nv_bfloat16 *>(out), table, table_type, tokens, n_tokens, hidden, vocab, stream);
    return cudaGetLastError();
}
