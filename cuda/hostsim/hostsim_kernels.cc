/*
 * hostsim_kernels.cc - the launchers of sn_cuda_kernels.h, run on the CPU by the plain-C
 * references (cuda/ref/) through the simulated streams (hostsim.h): the same contracts, the
 * same argument checks at launch, and the inputs read when the operation runs (so a captured
 * graph replayed later sees the metadata of its own step). bf16 values are converted to
 * float for the references and rounded back, as the kernels store them.
 *
 * The attention launchers also check what the kernels assume but cannot check cheaply:
 * every context within max_ctx (decode), seq_start ending at n_tokens (prefill).
 */
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "hostsim.h"
#include "ref.h"
#include "sn_cuda_kernels.h"

namespace {

float load(const void *p, sn_cuda_dtype t, size_t i)
{
    return t == SN_CUDA_F32 ? ((const float *)p)[i] : sn_ref_bf16_to_f32(((const uint16_t *)p)[i]);
}

void store(void *p, sn_cuda_dtype t, size_t i, float v)
{
    if (t == SN_CUDA_F32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = sn_ref_f32_to_bf16(v);
}

bool dtype_ok(sn_cuda_dtype t) { return t == SN_CUDA_F32 || t == SN_CUDA_BF16; }

bool head_dim_ok(int32_t hd) { return hd == 64 || hd == 96 || hd == 128 || hd == 256; }

} // namespace

extern "C" {

cudaError_t sn_cuda_rmsnorm(void *out, sn_cuda_dtype out_type, float *residual, const void *delta,
                            sn_cuda_dtype delta_type, const float *weight, int32_t n_rows, int32_t dim, float eps,
                            cudaStream_t stream)
{
    if (n_rows < 0 || dim <= 0 || !out || !residual || !weight || out == (void *)residual || !dtype_ok(out_type) ||
        (delta && !dtype_ok(delta_type)))
        return cudaErrorInvalidValue;
    return sn_sim_enqueue(stream, [=]() {
        const size_t n = (size_t)n_rows * dim;
        std::vector<float> d(delta ? n : 0), o(n);
        for (size_t i = 0; delta && i < n; i++)
            d[i] = load(delta, delta_type, i);
        sn_ref_rmsnorm(o.data(), residual, delta ? d.data() : nullptr, weight, n_rows, dim, eps);
        for (size_t i = 0; i < n; i++)
            store(out, out_type, i, o[i]);
        return cudaSuccess;
    });
}

cudaError_t sn_cuda_rope(void *x, sn_cuda_dtype type, int32_t n_tokens, int32_t n_heads, int32_t head_dim,
                         int64_t row_stride, const int32_t *pos, const float *inv_freq, int interleaved,
                         cudaStream_t stream)
{
    if (n_tokens < 0 || n_heads <= 0 || head_dim <= 0 || head_dim % 2 || row_stride < (int64_t)n_heads * head_dim ||
        !x || !pos || !inv_freq || !dtype_ok(type))
        return cudaErrorInvalidValue;
    return sn_sim_enqueue(stream, [=]() {
        const size_t w = (size_t)n_heads * head_dim;
        std::vector<float> f((size_t)n_tokens * w);
        for (int32_t t = 0; t < n_tokens; t++)
            for (size_t j = 0; j < w; j++)
                f[(size_t)t * w + j] = load(x, type, (size_t)t * row_stride + j);
        sn_ref_rope(f.data(), n_tokens, n_heads, head_dim, (int64_t)w, pos, inv_freq, interleaved);
        for (int32_t t = 0; t < n_tokens; t++)
            for (size_t j = 0; j < w; j++)
                store(x, type, (size_t)t * row_stride + j, f[(size_t)t * w + j]);
        return cudaSuccess;
    });
}

cudaError_t sn_cuda_swiglu(void *out, const void *gate, const void *up, sn_cuda_dtype type, int32_t n_rows,
                           int32_t n_cols, int64_t out_stride, int64_t gate_stride, int64_t up_stride,
                           cudaStream_t stream)
{
    if (n_rows < 0 || n_cols <= 0 || !out || !gate || !up || out_stride < n_cols || gate_stride < n_cols ||
        up_stride < n_cols || !dtype_ok(type))
        return cudaErrorInvalidValue;
    return sn_sim_enqueue(stream, [=]() {
        const size_t n = (size_t)n_rows * n_cols;
        std::vector<float> g(n), u(n), o(n);
        for (int32_t r = 0; r < n_rows; r++)
            for (int32_t c = 0; c < n_cols; c++) {
                g[(size_t)r * n_cols + c] = load(gate, type, (size_t)r * gate_stride + c);
                u[(size_t)r * n_cols + c] = load(up, type, (size_t)r * up_stride + c);
            }
        sn_ref_swiglu(o.data(), g.data(), u.data(), n_rows, n_cols, n_cols, n_cols, n_cols);
        for (int32_t r = 0; r < n_rows; r++)
            for (int32_t c = 0; c < n_cols; c++)
                store(out, type, (size_t)r * out_stride + c, o[(size_t)r * n_cols + c]);
        return cudaSuccess;
    });
}

cudaError_t sn_cuda_embed(void *out, sn_cuda_dtype out_type, const void *table, sn_cuda_dtype table_type,
                          const int32_t *tokens, int32_t n_tokens, int32_t hidden, int32_t vocab, cudaStream_t stream)
{
    if (n_tokens < 0 || hidden <= 0 || vocab <= 0 || !out || !table || !tokens || !dtype_ok(out_type) ||
        !dtype_ok(table_type))
        return cudaErrorInvalidValue;
    /* what ref/embed_ref.c computes (ids outside the vocabulary give zeros), row by row rather
     * than through a float copy of the whole table */
    return sn_sim_enqueue(stream, [=]() {
        for (int32_t i = 0; i < n_tokens; i++) {
            const int32_t id = tokens[i];
            for (int32_t j = 0; j < hidden; j++)
                store(out, out_type, (size_t)i * hidden + j,
                      id >= 0 && id < vocab ? load(table, table_type, (size_t)id * hidden + j) : 0.0f);
        }
        return cudaSuccess;
    });
}

cudaError_t sn_cuda_kv_store(sn_bf16 *k_cache, sn_bf16 *v_cache, const sn_bf16 *k, const sn_bf16 *v,
                             int64_t src_stride, const int32_t *slots, int32_t n_tokens, int32_t n_kv_heads,
                             int32_t head_dim, cudaStream_t stream)
{
    if (n_tokens < 0 || n_kv_heads <= 0 || head_dim <= 0 || src_stride < (int64_t)n_kv_heads * head_dim || !k_cache ||
        !v_cache || !k || !v || !slots)
        return cudaErrorInvalidValue;
    return sn_sim_enqueue(stream, [=]() {
        sn_ref_kv_store(k_cache, v_cache, k, v, src_stride, slots, n_tokens, n_kv_heads, head_dim);
        return cudaSuccess;
    });
}

cudaError_t sn_cuda_gather_rows(sn_bf16 *dst, const sn_bf16 *src, const int32_t *idx, int32_t n_rows, int32_t cols,
                                cudaStream_t stream)
{
    if (n_rows < 0 || cols <= 0 || !dst || !src || !idx)
        return cudaErrorInvalidValue;
    return sn_sim_enqueue(stream, [=]() {
        sn_ref_gather_rows(dst, src, idx, n_rows, cols);
        return cudaSuccess;
    });
}

size_t sn_cuda_attn_decode_workspace(int32_t n_seqs, int32_t n_heads, int32_t head_dim, int32_t n_kv_heads,
                                     int32_t max_ctx)
{
    (void)n_seqs, (void)n_heads, (void)head_dim, (void)n_kv_heads, (void)max_ctx;
    return 0; /* the reference needs none */
}

static bool kv_ok(const sn_cuda_paged_kv *kv, int32_t max_group)
{
    return kv && kv->k_cache && kv->v_cache && kv->block_tables && kv->n_kv_heads > 0 && kv->n_heads > 0 &&
           kv->n_heads % kv->n_kv_heads == 0 && kv->n_heads / kv->n_kv_heads <= max_group && head_dim_ok(kv->head_dim);
}

cudaError_t sn_cuda_attn_decode(sn_bf16 *out, int64_t out_stride, const sn_bf16 *q, int64_t q_stride,
                                const sn_cuda_paged_kv *kv, const int32_t *seq_rows, const int32_t *ctx_lens,
                                int32_t n_seqs, int32_t max_ctx, void *workspace, size_t workspace_bytes,
                                cudaStream_t stream)
{
    (void)workspace, (void)workspace_bytes;
    if (n_seqs < 0 || max_ctx < 0 || !out || !q || !seq_rows || !ctx_lens || !kv_ok(kv, 16) ||
        out_stride < (int64_t)kv->n_heads * kv->head_dim || q_stride < (int64_t)kv->n_heads * kv->head_dim)
        return cudaErrorInvalidValue;
    const sn_cuda_paged_kv p = *kv; /* the launch's arguments, as a kernel's */
    return sn_sim_enqueue(stream, [=]() {
        const size_t w = (size_t)p.n_heads * p.head_dim;
        for (int32_t s = 0; s < n_seqs; s++)
            if (ctx_lens[s] < 0 || ctx_lens[s] > max_ctx) {
                sn_sim_note("attn_decode: sequence %d has a context of %d, past the launch's max_ctx %d", s, ctx_lens[s],
                            max_ctx);
                return cudaErrorIllegalAddress;
            }
        std::vector<float> qf((size_t)n_seqs * w);
        std::vector<double> o((size_t)n_seqs * w);
        for (int32_t s = 0; s < n_seqs; s++)
            for (size_t j = 0; j < w; j++)
                qf[(size_t)s * w + j] = sn_ref_bf16_to_f32(q[(size_t)s * q_stride + j]);
        sn_ref_attn_decode(o.data(), qf.data(), p.k_cache, p.v_cache, p.block_tables, p.table_stride, seq_rows, ctx_lens,
                           n_seqs, p.n_heads, p.n_kv_heads, p.head_dim, p.scale);
        for (int32_t s = 0; s < n_seqs; s++)
            for (size_t j = 0; j < w; j++)
                out[(size_t)s * out_stride + j] = sn_ref_f32_to_bf16((float)o[(size_t)s * w + j]);
        return cudaSuccess;
    });
}

cudaError_t sn_cuda_attn_prefill(sn_bf16 *out, int64_t out_stride, const sn_bf16 *q, int64_t q_stride,
                                 const sn_cuda_paged_kv *kv, const int32_t *seq_rows, const int32_t *seq_start,
                                 const int32_t *seq_pos, int32_t n_seqs, int32_t n_tokens, cudaStream_t stream)
{
    if (n_seqs < 0 || n_tokens < 0 || !out || !q || !seq_rows || !seq_start || !seq_pos || !kv_ok(kv, 64) ||
        out_stride < (int64_t)kv->n_heads * kv->head_dim || q_stride < (int64_t)kv->n_heads * kv->head_dim)
        return cudaErrorInvalidValue;
    const sn_cuda_paged_kv p = *kv;
    return sn_sim_enqueue(stream, [=]() {
        if (seq_start[0] != 0 || seq_start[n_seqs] != n_tokens) {
            sn_sim_note("attn_prefill: runs cover tokens %d..%d, the launch says %d", seq_start[0], seq_start[n_seqs],
                        n_tokens);
            return cudaErrorIllegalAddress;
        }
        const size_t w = (size_t)p.n_heads * p.head_dim;
        std::vector<float> qf((size_t)n_tokens * w);
        std::vector<double> o((size_t)n_tokens * w);
        for (int32_t t = 0; t < n_tokens; t++)
            for (size_t j = 0; j < w; j++)
                qf[(size_t)t * w + j] = sn_ref_bf16_to_f32(q[(size_t)t * q_stride + j]);
        sn_ref_attn_prefill(o.data(), qf.data(), p.k_cache, p.v_cache, p.block_tables, p.table_stride, seq_rows,
                            seq_start, seq_pos, n_seqs, p.n_heads, p.n_kv_heads, p.head_dim, p.scale);
        for (int32_t t = 0; t < n_tokens; t++)
            for (size_t j = 0; j < w; j++)
                out[(size_t)t * out_stride + j] = sn_ref_f32_to_bf16((float)o[(size_t)t * w + j]);
        return cudaSuccess;
    });
}

size_t sn_cuda_sample_workspace(int32_t rows, int32_t vocab)
{
    (void)rows, (void)vocab;
    return 0;
}

cudaError_t sn_cuda_sample(int32_t *tokens, float *probs, const float *logits, int64_t logits_stride,
                           const uint64_t *allowed, const uint64_t *seen, const sn_cuda_sample_params *params,
                           int32_t rows, int32_t vocab, void *workspace, size_t workspace_bytes, cudaStream_t stream)
{
    (void)workspace, (void)workspace_bytes;
    if (rows < 0 || vocab <= 0 || logits_stride < vocab || (rows && (!tokens || !logits || !params)))
        return cudaErrorInvalidValue;
    return sn_sim_enqueue(stream, [=]() {
        const size_t words = ((size_t)vocab + 63) / 64;
        for (int32_t r = 0; r < rows; r++) {
            const float *lg = logits + (size_t)r * logits_stride;
            float *pr = probs ? probs + (size_t)r * vocab : nullptr;
            bool finite = true;
            for (int32_t i = 0; i < vocab; i++)
                finite &= lg[i] < INFINITY;
            if (!finite) {
                tokens[r] = SN_CUDA_TOKEN_NONFINITE;
                if (pr)
                    memset(pr, 0, (size_t)vocab * sizeof *pr);
                continue;
            }
            const sn_cuda_sample_params &p = params[r];
            tokens[r] = sn_ref_sample(pr, lg, allowed ? allowed + (size_t)r * words : nullptr,
                                      seen && p.repetition_penalty != 1.0f ? seen + (size_t)r * words : nullptr,
                                      p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.seed, p.step,
                                      vocab);
        }
        return cudaSuccess;
    });
}

/* The probe libsensorium_cuda.so exports (cuda/device.cu): the simulated devices. */
__attribute__((visibility("default"))) int sn_cuda_probe(char *msg, size_t msg_len)
{
    int n = 0;
    cudaGetDeviceCount(&n);
    snprintf(msg, msg_len, "%d simulated GPU%s (cuda/hostsim: the CPU references, not a GPU)", n, n == 1 ? "" : "s");
    return n;
}

} /* extern "C" */
