/*
 * attn_decode.cu - paged attention for decode steps: one query token per sequence against
 * its whole cached context, the memory-bound half of a decode step.
 *
 * One block (128 threads) per (split of the context, KV head, sequence): the query heads of
 * the KV group (GQA) share each K/V tile, so the cache is read once per group. Tiles of 64
 * positions (4 KV blocks, found through the block table) stream into shared memory with
 * cp.async, two stages deep; scores and the online softmax are fp32 in the log2 domain, the
 * output accumulates in registers. A context longer than one split is cut into splits
 * (attn_core.h: sn_decode_make_plan) whose partial (max, sum, output) a second kernel merges
 * with the log-sum-exp combine. The CPU test replays this exact partition and merge.
 * Reference: ref/attn_decode_ref.c.
 */
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include "attn_core.h"
#include "common.cuh"

namespace {

constexpr int NT = 128;
constexpr int TILE = SN_DECODE_TILE;
static_assert(NT == 2 * TILE, "the scores give each thread one position and half of the group's heads");
static_assert(TILE == 64, "the softmax gives each lane two positions");

template <int HD> __host__ __device__ constexpr int row_elems() { return HD + 8; } /* padded smem row: no bank conflicts */

template <int HD, int GMAX> struct DecodeSmem {
    static constexpr int KV_STAGE = TILE * row_elems<HD>(); /* bf16 elements per stage */
    static constexpr size_t Q_OFF = 0;                                       /* float[GMAX][HD] */
    static constexpr size_t K_OFF = Q_OFF + sizeof(float) * GMAX * HD;       /* bf16[2][TILE][HD+8] */
    static constexpr size_t V_OFF = K_OFF + sizeof(__nv_bfloat16) * 2 * KV_STAGE;
    static constexpr size_t S_OFF = V_OFF + sizeof(__nv_bfloat16) * 2 * KV_STAGE; /* float[GMAX][TILE] */
    static constexpr size_t STAT_OFF = S_OFF + sizeof(float) * GMAX * TILE;        /* float[3][GMAX] */
    static constexpr size_t BYTES = STAT_OFF + sizeof(float) * 3 * GMAX;
    /* cp.async and the uint4/float4 reads need 16-byte aligned rows */
    static_assert(K_OFF % 16 == 0 && V_OFF % 16 == 0 && (row_elems<HD>() * 2) % 16 == 0 && (HD * 4) % 16 == 0,
                  "shared memory rows aligned");
};

/* Starts the copies of positions [t0, t0 + n) into stage `stage`. */
template <int HD>
__device__ __forceinline__ void issue_tile(__nv_bfloat16 *ks, __nv_bfloat16 *vs, const __nv_bfloat16 *k_cache,
                                           const __nv_bfloat16 *v_cache, const int32_t *table_row, int t0, int n,
                                           int kvh, int n_kv_heads)
{
    constexpr int CH = HD / 8; /* 16-byte chunks per row */
    for (int c = threadIdx.x; c < TILE * CH; c += NT) {
        const int t = c / CH, ch = c % CH;
        if (t < n) {
            const int64_t src = sn_kv_pos_offset(table_row, t0 + t, kvh, n_kv_heads, HD) + ch * 8;
            __pipeline_memcpy_async(ks + t * row_elems<HD>() + ch * 8, k_cache + src, 16);
            __pipeline_memcpy_async(vs + t * row_elems<HD>() + ch * 8, v_cache + src, 16);
        }
    }
}

template <int HD, int GMAX>
__global__ void __launch_bounds__(NT) attn_decode_kernel(__nv_bfloat16 *out, int64_t out_stride, float *part_o,
                                                         float *part_ml, const __nv_bfloat16 *q, int64_t q_stride,
                                                         const __nv_bfloat16 *k_cache, const __nv_bfloat16 *v_cache,
                                                         const int32_t *block_tables, int32_t table_stride,
                                                         const int32_t *seq_rows, const int32_t *ctx_lens,
                                                         int n_heads, int n_kv_heads, int group, float scale_log2,
                                                         int split_len, int n_splits)
{
    using L = DecodeSmem<HD, GMAX>;
    constexpr int DP = HD / 2;                      /* column pairs of the output */
    constexpr int GSETS = NT / DP > 0 ? NT / DP : 1; /* query heads handled side by side */
    constexpr int NJ = (GMAX + GSETS - 1) / GSETS;  /* query heads per thread */
    extern __shared__ __align__(16) unsigned char smem[];
    float *qs = reinterpret_cast<float *>(smem + L::Q_OFF);
    __nv_bfloat16 *ks = reinterpret_cast<__nv_bfloat16 *>(smem + L::K_OFF);
    __nv_bfloat16 *vs = reinterpret_cast<__nv_bfloat16 *>(smem + L::V_OFF);
    float *ss = reinterpret_cast<float *>(smem + L::S_OFF);
    float *m_run = reinterpret_cast<float *>(smem + L::STAT_OFF), *l_run = m_run + GMAX, *alpha_s = l_run + GMAX;

    const int split = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int ctx = ctx_lens[s];
    const int begin = sn_split_begin(split, split_len), end = sn_split_end(split, split_len, ctx);
    if (begin >= end) {
        /* no keys: an empty context writes zeros (with splits the merge does) */
        if (split == 0 && n_splits == 1)
            for (int i = tid; i < group * HD; i += NT)
                out[s * out_stride + (int64_t)(kvh * group + i / HD) * HD + i % HD] = __float2bfloat16_rn(0.0f);
        return;
    }
    const int32_t *table_row = block_tables + (int64_t)seq_rows[s] * table_stride;

    for (int i = tid; i < GMAX * HD; i += NT) {
        const int g = i / HD, d = i % HD;
        qs[i] = g < group ? __bfloat162float(q[s * q_stride + (int64_t)(kvh * group + g) * HD + d]) * scale_log2 : 0.0f;
    }
    if (tid < GMAX) {
        m_run[tid] = -INFINITY;
        l_run[tid] = 0.0f;
    }
    const int dp = tid % DP, gs = tid / DP;
    float acc[NJ][2];
#pragma unroll
    for (int j = 0; j < NJ; j++)
        acc[j][0] = acc[j][1] = 0.0f;

    const int n_tiles = (end - begin + TILE - 1) / TILE;
    issue_tile<HD>(ks, vs, k_cache, v_cache, table_row, begin, min(TILE, end - begin), kvh, n_kv_heads);
    __pipeline_commit();
    for (int it = 0; it < n_tiles; it++) {
        const int stage = it & 1;
        const int t0 = begin + it * TILE, nvalid = min(TILE, end - t0);
        if (it + 1 < n_tiles)
            issue_tile<HD>(ks + (stage ^ 1) * L::KV_STAGE, vs + (stage ^ 1) * L::KV_STAGE, k_cache, v_cache, table_row,
                           t0 + TILE, min(TILE, end - t0 - TILE), kvh, n_kv_heads);
        __pipeline_commit(); /* possibly empty: keeps "all but the newest group" = this tile */
        __pipeline_wait_prior(1);
        __syncthreads();

        /* scores: thread (t, half) reads K row t once for half of the group's heads; a
         * warp's lanes share the heads, so the q reads broadcast */
        {
            constexpr int GH = (GMAX + 1) / 2;
            const int t = tid % TILE, gh = tid / TILE;
            const __nv_bfloat16 *kr = ks + stage * L::KV_STAGE + t * row_elems<HD>();
            float sc[GH];
#pragma unroll
            for (int j = 0; j < GH; j++)
                sc[j] = 0.0f;
            if (t < nvalid) {
#pragma unroll 4
                for (int d = 0; d < HD; d += 8) {
                    float kf[8];
                    sn::bf16x8_to_f32(*reinterpret_cast<const uint4 *>(kr + d), kf);
#pragma unroll
                    for (int j = 0; j < GH; j++) {
                        if (gh * GH + j < GMAX) {
                            const float *qg = qs + (gh * GH + j) * HD + d;
                            const float4 qa = *reinterpret_cast<const float4 *>(qg);
                            const float4 qb = *reinterpret_cast<const float4 *>(qg + 4);
                            sc[j] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] +
                                     qb.y * kf[5] + qb.z * kf[6] + qb.w * kf[7];
                        }
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < GH; j++) {
                const int g = gh * GH + j;
                if (g < GMAX)
                    ss[g * TILE + t] = g < group && t < nvalid ? sc[j] : -INFINITY;
            }
        }
        __syncthreads();

        /* online softmax, one warp per query head */
        for (int g = warp; g < group; g += NT / 32) {
            const float v0 = ss[g * TILE + lane], v1 = ss[g * TILE + lane + 32];
            const float tmax = sn::warp_max(fmaxf(v0, v1));
            float m_new;
            const float alpha = sn_online_rescale(m_run[g], tmax, &m_new);
            const float p0 = sn_online_p(v0, m_new), p1 = sn_online_p(v1, m_new);
            const float psum = sn::warp_sum(p0 + p1);
            ss[g * TILE + lane] = p0;
            ss[g * TILE + lane + 32] = p1;
            __syncwarp();
            if (lane == 0) {
                m_run[g] = m_new;
                l_run[g] = l_run[g] * alpha + psum;
                alpha_s[g] = alpha;
            }
        }
        __syncthreads();

        /* output += p v */
        if (gs < GSETS) {
            const __nv_bfloat16 *vst = vs + stage * L::KV_STAGE + 2 * dp;
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const int g = gs + j * GSETS;
                if (g < group) {
                    const float al = alpha_s[g];
                    float a0 = acc[j][0] * al, a1 = acc[j][1] * al;
                    const float *pg = ss + g * TILE;
                    for (int t = 0; t < nvalid; t++) {
                        const float2 vv =
                            __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(vst + t * row_elems<HD>()));
                        const float p = pg[t];
                        a0 += p * vv.x;
                        a1 += p * vv.y;
                    }
                    acc[j][0] = a0;
                    acc[j][1] = a1;
                }
            }
        }
        __syncthreads(); /* the next iteration refills the other stage and ss */
    }

    if (gs < GSETS) {
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            const int g = gs + j * GSETS;
            if (g < group) {
                const int h = kvh * group + g;
                const float l = l_run[g], inv = l > 0.0f ? 1.0f / l : 0.0f;
                if (n_splits == 1) {
                    *reinterpret_cast<__nv_bfloat162 *>(out + s * out_stride + (int64_t)h * HD + 2 * dp) =
                        __floats2bfloat162_rn(acc[j][0] * inv, acc[j][1] * inv);
                } else {
                    const int64_t pi = ((int64_t)s * n_heads + h) * n_splits + split;
                    *reinterpret_cast<float2 *>(part_o + pi * HD + 2 * dp) = make_float2(acc[j][0] * inv, acc[j][1] * inv);
                }
            }
        }
    }
    if (n_splits > 1 && tid < group) {
        const int64_t pi = ((int64_t)s * n_heads + kvh * group + tid) * n_splits + split;
        part_ml[2 * pi] = m_run[tid];
        part_ml[2 * pi + 1] = l_run[tid];
    }
}

/* One block per (sequence, query head): the log-sum-exp merge of its splits. */
template <int HD>
__global__ void __launch_bounds__(NT) attn_decode_merge_kernel(__nv_bfloat16 *out, int64_t out_stride,
                                                               const float *part_o, const float *part_ml,
                                                               const int32_t *ctx_lens, int n_heads, int split_len,
                                                               int n_splits)
{
    __shared__ float sm[SN_DECODE_MAX_SPLITS], sl[SN_DECODE_MAX_SPLITS], sw[SN_DECODE_MAX_SPLITS];
    const int s = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
    const int nv = min(sn_split_count(ctx_lens[s], split_len), n_splits);
    const int64_t base = ((int64_t)s * n_heads + h) * n_splits;
    __nv_bfloat16 *o = out + s * out_stride + (int64_t)h * HD;
    for (int i = threadIdx.x; i < nv; i += NT) {
        sm[i] = part_ml[2 * (base + i)];
        sl[i] = part_ml[2 * (base + i) + 1];
    }
    __syncthreads();
    const float M = sn_lse_max(sm, sl, nv);
    for (int i = threadIdx.x; i < nv; i += NT)
        sw[i] = sn_lse_weight(sm[i], sl[i], M);
    __syncthreads();
    float L = 0.0f;
    for (int i = 0; i < nv; i++)
        L += sw[i];
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (int d = threadIdx.x; d < HD; d += NT) {
        float a = 0.0f;
        for (int i = 0; i < nv; i++)
            if (sw[i] > 0.0f)
                a += sw[i] * part_o[(base + i) * HD + d];
        o[d] = __float2bfloat16_rn(a * inv);
    }
}

int sm_count()
{
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
        return 1;
    return n;
}

template <int HD, int GMAX>
cudaError_t launch(__nv_bfloat16 *out, int64_t out_stride, const __nv_bfloat16 *q, int64_t q_stride,
                   const sn_cuda_paged_kv *kv, const int32_t *seq_rows, const int32_t *ctx_lens, int32_t n_seqs,
                   sn_decode_plan plan, float *part_o, float *part_ml, cudaStream_t stream)
{
    using L = DecodeSmem<HD, GMAX>;
    auto kern = attn_decode_kernel<HD, GMAX>;
    cudaError_t err = sn::set_smem_once<attn_decode_kernel<HD, GMAX>>(L::BYTES);
    if (err != cudaSuccess)
        return err;
    const dim3 grid(plan.n_splits, kv->n_kv_heads, n_seqs);
    const int group = kv->n_heads / kv->n_kv_heads;
    kern<<<grid, NT, L::BYTES, stream>>>(out, out_stride, part_o, part_ml, q, q_stride,
                                         reinterpret_cast<const __nv_bfloat16 *>(kv->k_cache),
                                         reinterpret_cast<const __nv_bfloat16 *>(kv->v_cache), kv->block_tables,
                                         kv->table_stride, seq_rows, ctx_lens, kv->n_heads, kv->n_kv_heads, group,
                                         kv->scale * SN_LOG2E, plan.split_len, plan.n_splits);
    if ((err = cudaGetLastError()) != cudaSuccess || plan.n_splits == 1)
        return err;
    attn_decode_merge_kernel<HD><<<n_seqs * kv->n_heads, NT, 0, stream>>>(out, out_stride, part_o, part_ml, ctx_lens,
                                                                         kv->n_heads, plan.split_len, plan.n_splits);
    return cudaGetLastError();
}

template <int HD>
cudaError_t dispatch_group(__nv_bfloat16 *out, int64_t out_stride, const __nv_bfloat16 *q, int64_t q_stride,
                           const sn_cuda_paged_kv *kv, const int32_t *seq_rows, const int32_t *ctx_lens,
                           int32_t n_seqs, sn_decode_plan plan, float *part_o, float *part_ml, cudaStream_t stream)
{
    const int group = kv->n_heads / kv->n_kv_heads;
#define SN_DECODE_CASE(G)                                                                                          \
    if (group <= G)                                                                                                \
        return launch<HD, G>(out, out_stride, q, q_stride, kv, seq_rows, ctx_lens, n_seqs, plan, part_o, part_ml, \
                             stream);
    SN_DECODE_CASE(1)
    SN_DECODE_CASE(2)
    SN_DECODE_CASE(4)
    SN_DECODE_CASE(8)
    SN_DECODE_CASE(16)
#undef SN_DECODE_CASE
    return cudaErrorInvalidValue;
}

size_t part_o_bytes(int32_t n_seqs, int32_t n_heads, int32_t head_dim, sn_decode_plan plan)
{
    return ((size_t)n_seqs * n_heads * plan.n_splits * head_dim * sizeof(float) + 255) / 256 * 256;
}

} // namespace

extern "C" size_t sn_cuda_attn_decode_workspace(int32_t n_seqs, int32_t n_heads, int32_t head_dim, int32_t n_kv_heads,
                                                int32_t max_ctx)
{
    if (n_seqs <= 0 || n_heads <= 0 || head_dim <= 0 || n_kv_heads <= 0)
        return 0;
    const sn_decode_plan plan = sn_decode_make_plan(n_seqs, n_kv_heads, max_ctx, sm_count());
    if (plan.n_splits == 1)
        return 0;
    return part_o_bytes(n_seqs, n_heads, head_dim, plan) + (size_t)n_seqs * n_heads * plan.n_splits * 2 * sizeof(float);
}

extern "C" cudaError_t sn_cuda_attn_decode(sn_bf16 *out, int64_t out_stride, const sn_bf16 *q, int64_t q_stride,
                                           const sn_cuda_paged_kv *kv, const int32_t *seq_rows,
                                           const int32_t *ctx_lens, int32_t n_seqs, int32_t max_ctx, void *workspace,
                                           size_t workspace_bytes, cudaStream_t stream)
{
    if (!kv || !out || !q || !seq_rows || !ctx_lens || !kv->k_cache || !kv->v_cache || !kv->block_tables ||
        n_seqs < 0 || max_ctx < 0 || kv->n_heads <= 0 || kv->n_kv_heads <= 0 || kv->n_heads % kv->n_kv_heads ||
        kv->n_heads / kv->n_kv_heads > 16 || n_seqs > 65535 || out_stride < (int64_t)kv->n_heads * kv->head_dim ||
        q_stride < (int64_t)kv->n_heads * kv->head_dim || out_stride % 2 || ((uintptr_t)out & 3) ||
        ((uintptr_t)kv->k_cache & 15) || ((uintptr_t)kv->v_cache & 15))
        return cudaErrorInvalidValue;
    if (n_seqs == 0)
        return cudaSuccess;
    const sn_decode_plan plan = sn_decode_make_plan(n_seqs, kv->n_kv_heads, max_ctx, sm_count());
    float *part_o = nullptr, *part_ml = nullptr;
    if (plan.n_splits > 1) {
        const size_t need = sn_cuda_attn_decode_workspace(n_seqs, kv->n_heads, kv->head_dim, kv->n_kv_heads, max_ctx);
        if (!workspace || workspace_bytes < need || ((uintptr_t)workspace & 15))
            return cudaErrorInvalidValue;
        part_o = static_cast<float *>(workspace);
        part_ml = reinterpret_cast<float *>(static_cast<char *>(workspace) +
                                            part_o_bytes(n_seqs, kv->n_heads, kv->head_dim, plan));
    }
    __nv_bfloat16 *o = reinterpret_cast<__nv_bfloat16 *>(out);
    const __nv_bfloat16 *qq = reinterpret_cast<const __nv_bfloat16 *>(q);
    switch (kv->head_dim) {
    case 64: return dispatch_group<64>(o, out_stride, qq, q_stride, kv, seq_rows, ctx_lens, n_seqs, plan, part_o, part_ml, stream);
    case 96: return dispatch_group<96>(o, out_stride, qq, q_stride, kv, seq_rows, ctx_lens, n_seqs, plan, part_o, part_ml, stream);
    case 128: return dispatch_group<128>(o, out_stride, qq, q_stride, kv, seq_rows, ctx_lens, n_seqs, plan, part_o, part_ml, stream);
    case 256: return dispatch_group<256>(o, out_stride, qq, q_stride, kv, seq_rows, ctx_lens, n_seqs, plan, part_o, part_ml, stream);
    default: return cudaErrorInvalidValue;
    }
}
