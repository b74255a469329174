/*
 * attn_prefill.cu - causal paged attention for prefill chunks of a ragged batch: the
 * compute-bound half of attention (FlashAttention-2: tiles in shared memory, online softmax,
 * the score matrix never reaches device memory).
 *
 * One block (4 warps) per (query tile, KV head). A query tile is 64 rows, each a (token, query
 * head of the KV group) pair (GQA packing: row = token * group + head), so one K/V tile load
 * serves the whole group. Tiles of 64 keys come from the paged cache through the block table
 * with cp.async (K of the next tile loads during the softmax, V during the next scores).
 * S = Q K^T and O += P V run on the tensor cores through WMMA (bf16 in, fp32 accumulate, the
 * m16n16k16 shape); each warp owns 16 rows, so the softmax needs no block barrier. The per-row
 * rescale of the WMMA accumulators uses a "row map" fragment: a 16x16 matrix of row indices
 * loaded into an accumulator fragment tells which row each fragment element belongs to (the
 * element-to-row mapping is unspecified but fixed per fragment type). Warps whose rows all
 * precede a key tile skip it (causal). Tile math: attn_core.h, replayed on the CPU by the
 * tests. Reference: ref/attn_prefill_ref.c.
 */
#include <cuda_pipeline.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "attn_core.h"
#include "common.cuh"

namespace {

using namespace nvcuda;

constexpr int NT = 128; /* 4 warps x 16 rows */
constexpr int BM = SN_PREFILL_BM, BN = SN_PREFILL_BN;
static_assert(BM == 16 * (NT / 32), "a warp owns 16 rows");
static_assert(BN == 64, "the softmax gives each lane two columns");

template <int HD> struct PrefillSmem {
    static constexpr int LDQ = HD + 8; /* bf16, padded against bank conflicts; 16-byte rows */
    static constexpr int LDK = HD + 8;
    static constexpr int LDS = BN + 4; /* float */
    static constexpr int LDP = BN + 8; /* bf16 */
    static constexpr size_t Q_OFF = 0;
    static constexpr size_t K_OFF = Q_OFF + sizeof(__nv_bfloat16) * BM * LDQ;
    static constexpr size_t V_OFF = K_OFF + sizeof(__nv_bfloat16) * BN * LDK;
    static constexpr size_t S_OFF = V_OFF + sizeof(__nv_bfloat16) * BN * LDK;
    static constexpr size_t P_OFF = S_OFF + sizeof(float) * BM * LDS;
    static constexpr size_t ROW_OFF = P_OFF + sizeof(__nv_bfloat16) * BM * LDP; /* m, l, alpha (float), pos (int) */
    static constexpr size_t RMAP_OFF = ROW_OFF + 4 * sizeof(float) * BM;        /* float[16][16] */
    static constexpr size_t BYTES = RMAP_OFF + sizeof(float) * 256;
    /* WMMA pointers must be 32-byte aligned: every region and every 16-row step is */
    static_assert(K_OFF % 128 == 0 && V_OFF % 128 == 0 && S_OFF % 128 == 0 && P_OFF % 128 == 0 &&
                      ROW_OFF % 128 == 0 && RMAP_OFF % 128 == 0,
                  "shared memory regions aligned");
    static_assert((16 * LDQ * 2) % 32 == 0 && (16 * LDS * 4) % 32 == 0 && (16 * LDP * 2) % 32 == 0,
                  "16-row steps aligned");
};

/* Starts the copies of keys [kt0, kt0 + BN) of one KV head into dst (BN x LDK); rows at or
 * past kv_end are zeroed (0 * garbage could be NaN in the products). */
template <int HD>
__device__ __forceinline__ void issue_kv(__nv_bfloat16 *dst, const __nv_bfloat16 *cache, const int32_t *table_row,
                                         int kt0, int kv_end, int kvh, int n_kv_heads)
{
    constexpr int CH = HD / 8, LDK = PrefillSmem<HD>::LDK;
    for (int c = threadIdx.x; c < BN * CH; c += NT) {
        const int t = c / CH, ch = c % CH, p = kt0 + t;
        __nv_bfloat16 *d = dst + t * LDK + ch * 8;
        if (p < kv_end)
            __pipeline_memcpy_async(d, cache + sn_kv_pos_offset(table_row, p, kvh, n_kv_heads, HD) + ch * 8, 16);
        else
            *reinterpret_cast<uint4 *>(d) = make_uint4(0, 0, 0, 0);
    }
}

template <int HD>
__global__ void __launch_bounds__(NT) attn_prefill_kernel(__nv_bfloat16 *out, int64_t out_stride,
                                                          const __nv_bfloat16 *q, int64_t q_stride,
                                                          const __nv_bfloat16 *k_cache, const __nv_bfloat16 *v_cache,
                                                          const int32_t *block_tables, int32_t table_stride,
                                                          const int32_t *seq_rows, const int32_t *seq_start,
                                                          const int32_t *seq_pos, int n_seqs, int n_kv_heads,
                                                          int group, int tm, float scale_log2)
{
    using L = PrefillSmem<HD>;
    constexpr int NF = HD / 16; /* output fragments per warp */
    extern __shared__ __align__(128) unsigned char smem[];
    __nv_bfloat16 *Qs = reinterpret_cast<__nv_bfloat16 *>(smem + L::Q_OFF);
    __nv_bfloat16 *Ks = reinterpret_cast<__nv_bfloat16 *>(smem + L::K_OFF);
    __nv_bfloat16 *Vs = reinterpret_cast<__nv_bfloat16 *>(smem + L::V_OFF);
    float *Ss = reinterpret_cast<float *>(smem + L::S_OFF);
    __nv_bfloat16 *Ps = reinterpret_cast<__nv_bfloat16 *>(smem + L::P_OFF);
    float *m_s = reinterpret_cast<float *>(smem + L::ROW_OFF), *l_s = m_s + BM, *alpha_s = l_s + BM;
    int *pos_s = reinterpret_cast<int *>(alpha_s + BM);
    float *rmap = reinterpret_cast<float *>(smem + L::RMAP_OFF);

    sn_prefill_tile tile;
    if (!sn_prefill_find_tile(seq_start, n_seqs, tm, blockIdx.x, &tile))
        return; /* past the batch's last tile: the grid is an upper bound */
    const int kvh = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kv_end = sn_prefill_kv_end(&tile, seq_start, seq_pos);
    const int32_t *table_row = block_tables + (int64_t)seq_rows[tile.run] * table_stride;
    const int rows = tile.ntok * group;

    for (int r = tid; r < BM; r += NT) {
        pos_s[r] = sn_prefill_row_pos(&tile, seq_start, seq_pos, group, r);
        m_s[r] = -INFINITY;
        l_s[r] = 0.0f;
        alpha_s[r] = 1.0f;
    }
    for (int i = tid; i < 256; i += NT)
        rmap[i] = (float)(i / 16);
    constexpr int CH = HD / 8;
    for (int c = tid; c < BM * CH; c += NT) {
        const int r = c / CH, ch = c % CH;
        __nv_bfloat16 *d = Qs + r * L::LDQ + ch * 8;
        if (r < rows)
            __pipeline_memcpy_async(d, q + (int64_t)(tile.tok0 + r / group) * q_stride +
                                           (int64_t)(kvh * group + r % group) * HD + ch * 8, 16);
        else
            *reinterpret_cast<uint4 *>(d) = make_uint4(0, 0, 0, 0);
    }
    __pipeline_commit();
    issue_kv<HD>(Ks, k_cache, table_row, 0, kv_end, kvh, n_kv_heads);
    __pipeline_commit();
    issue_kv<HD>(Vs, v_cache, table_row, 0, kv_end, kvh, n_kv_heads);
    __pipeline_commit();

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> o_acc[NF];
#pragma unroll
    for (int n = 0; n < NF; n++)
        wmma::fill_fragment(o_acc[n], 0.0f);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> rowmap;

    const int r0 = warp * 16;
    const int n_kv_tiles = (kv_end + BN - 1) / BN;
    int warp_max_pos = -1;
    for (int j = 0; j < n_kv_tiles; j++) {
        const int kt0 = j * BN;
        __pipeline_wait_prior(1); /* K_j (and at j = 0 Q) landed; V_j may still fly */
        __syncthreads();
        if (j == 0) {
            wmma::load_matrix_sync(rowmap, rmap, 16, wmma::mem_row_major);
            for (int r = 0; r < 16; r++)
                warp_max_pos = max(warp_max_pos, pos_s[r0 + r]);
        }
        const bool active = kt0 <= warp_max_pos; /* warp-uniform */

        /* S = Q K^T for the warp's 16 rows x 64 keys */
        if (active) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> s_acc[BN / 16];
#pragma unroll
            for (int n = 0; n < BN / 16; n++)
                wmma::fill_fragment(s_acc[n], 0.0f);
#pragma unroll
            for (int k = 0; k < HD / 16; k++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::load_matrix_sync(a, Qs + r0 * L::LDQ + k * 16, L::LDQ);
#pragma unroll
                for (int n = 0; n < BN / 16; n++) {
                    /* K^T as a column-major 16x16 block: element (kk, nn) is K[n*16+nn][k*16+kk] */
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
                    wmma::load_matrix_sync(b, Ks + n * 16 * L::LDK + k * 16, L::LDK);
                    wmma::mma_sync(s_acc[n], a, b, s_acc[n]);
                }
            }
#pragma unroll
            for (int n = 0; n < BN / 16; n++)
                wmma::store_matrix_sync(Ss + r0 * L::LDS + n * 16, s_acc[n], L::LDS, wmma::mem_row_major);
        }
        __syncthreads(); /* every warp is done with K_j */
        if (j + 1 < n_kv_tiles)
            issue_kv<HD>(Ks, k_cache, table_row, kt0 + BN, kv_end, kvh, n_kv_heads);
        __pipeline_commit();

        /* online softmax of the warp's rows: lane holds columns lane and lane + 32 */
        if (active) {
            __syncwarp();
            for (int rr = 0; rr < 16; rr++) {
                const int r = r0 + rr, pos = pos_s[r];
                const int c0 = lane, c1 = lane + 32;
                const float s0 = kt0 + c0 <= pos ? Ss[r * L::LDS + c0] * scale_log2 : -INFINITY;
                const float s1 = kt0 + c1 <= pos ? Ss[r * L::LDS + c1] * scale_log2 : -INFINITY;
                const float tmax = sn::warp_max(fmaxf(s0, s1));
                float m_new;
                const float alpha = sn_online_rescale(m_s[r], tmax, &m_new);
                const float p0 = sn_online_p(s0, m_new), p1 = sn_online_p(s1, m_new);
                Ps[r * L::LDP + c0] = __float2bfloat16_rn(p0);
                Ps[r * L::LDP + c1] = __float2bfloat16_rn(p1);
                const float psum = sn::warp_sum(p0 + p1);
                if (lane == 0) {
                    m_s[r] = m_new;
                    l_s[r] = l_s[r] * alpha + psum;
                    alpha_s[r] = alpha;
                }
            }
            __syncwarp();
#pragma unroll
            for (int n = 0; n < NF; n++)
#pragma unroll
                for (int i = 0; i < o_acc[n].num_elements; i++)
                    o_acc[n].x[i] *= alpha_s[r0 + (int)rowmap.x[i]];
        }
        __pipeline_wait_prior(1); /* V_j landed; K_{j+1} may still fly */
        __syncthreads();

        /* O += P V */
        if (active) {
#pragma unroll
            for (int k = 0; k < BN / 16; k++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::load_matrix_sync(a, Ps + r0 * L::LDP + k * 16, L::LDP);
#pragma unroll
                for (int n = 0; n < NF; n++) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
                    wmma::load_matrix_sync(b, Vs + k * 16 * L::LDK + n * 16, L::LDK);
                    wmma::mma_sync(o_acc[n], a, b, o_acc[n]);
                }
            }
        }
        __syncthreads(); /* every warp is done with V_j */
        if (j + 1 < n_kv_tiles)
            issue_kv<HD>(Vs, v_cache, table_row, kt0 + BN, kv_end, kvh, n_kv_heads);
        __pipeline_commit();
    }
    __pipeline_wait_prior(0);

    /* O / l, through the warp's rows of Ss, to bf16 rows of out */
    if (lane < 16) {
        const float l = l_s[r0 + lane];
        alpha_s[r0 + lane] = l > 0.0f ? 1.0f / l : 0.0f;
    }
    __syncwarp();
    const int rr = lane >> 1, half = lane & 1, r = r0 + rr;
    for (int n = 0; n < NF; n++) {
#pragma unroll
        for (int i = 0; i < o_acc[n].num_elements; i++)
            o_acc[n].x[i] *= alpha_s[r0 + (int)rowmap.x[i]];
        wmma::store_matrix_sync(Ss + r0 * L::LDS, o_acc[n], L::LDS, wmma::mem_row_major);
        __syncwarp();
        if (pos_s[r] >= 0) {
            const float *src = Ss + r * L::LDS + half * 8;
            __nv_bfloat162 v[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                v[i] = __floats2bfloat162_rn(src[2 * i], src[2 * i + 1]);
            __nv_bfloat16 *dst = out + (int64_t)(tile.tok0 + r / group) * out_stride +
                                 (int64_t)(kvh * group + r % group) * HD + n * 16 + half * 8;
            *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(v);
        }
        __syncwarp();
    }
}

template <int HD>
cudaError_t launch(__nv_bfloat16 *out, int64_t out_stride, const __nv_bfloat16 *q, int64_t q_stride,
                   const sn_cuda_paged_kv *kv, const int32_t *seq_rows, const int32_t *seq_start,
                   const int32_t *seq_pos, int32_t n_seqs, int32_t n_tokens, cudaStream_t stream)
{
    using L = PrefillSmem<HD>;
    auto kern = attn_prefill_kernel<HD>;
    cudaError_t err = sn::set_smem_once<attn_prefill_kernel<HD>>(L::BYTES);
    if (err != cudaSuccess)
        return err;
    const int group = kv->n_heads / kv->n_kv_heads;
    const int tm = sn_prefill_tokens_per_tile(group);
    const dim3 grid(sn_prefill_max_tiles(n_tokens, n_seqs, tm), kv->n_kv_heads);
    kern<<<grid, NT, L::BYTES, stream>>>(out, out_stride, q, q_stride,
                                         reinterpret_cast<const __nv_bfloat16 *>(kv->k_cache),
                                         reinterpret_cast<const __nv_bfloat16 *>(kv->v_cache), kv->block_tables,
                                         kv->table_stride, seq_rows, seq_start, seq_pos, n_seqs, kv->n_kv_heads, group,
                                         tm, kv->scale * SN_LOG2E);
    return cudaGetLastError();
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

} // namespace

extern "C" cudaError_t sn_cuda_attn_prefill(sn_bf16 *out, int64_t out_stride, const sn_bf16 *q, int64_t q_stride,
                                            const sn_cuda_paged_kv *kv, const int32_t *seq_rows,
                                            const int32_t *seq_start, const int32_t *seq_pos, int32_t n_seqs,
                                            int32_t n_tokens, cudaStream_t stream)
{
    if (!kv || !out || !q || !seq_rows || !seq_start || !seq_pos || !kv->k_cache || !kv->v_cache ||
        !kv->block_tables || n_seqs < 0 || n_tokens < 0 || kv->n_heads <= 0 || kv->n_kv_heads <= 0 ||
        kv->n_heads % kv->n_kv_heads || kv->n_heads / kv->n_kv_heads > BM ||
        out_stride < (int64_t)kv->n_heads * kv->head_dim || q_stride < (int64_t)kv->n_heads * kv->head_dim ||
        out_stride % 8 || q_stride % 8 || !aligned16(out) || !aligned16(q) || !aligned16(kv->k_cache) ||
        !aligned16(kv->v_cache) || kv->n_kv_heads > 65535)
        return cudaErrorInvalidValue;
    if (n_seqs == 0 || n_tokens == 0)
        return cudaSuccess;
    __nv_bfloat16 *o = reinterpret_cast<__nv_bfloat16 *>(out);
    const __nv_bfloat16 *qq = reinterpret_cast<const __nv_bfloat16 *>(q);
    switch (kv->head_dim) {
    case 64: return launch<64>(o, out_stride, qq, q_stride, kv, seq_rows, seq_start, seq_pos, n_seqs, n_tokens, stream);
    case 96: return launch<96>(o, out_stride, qq, q_stride, kv, seq_rows, seq_start, seq_pos, n_seqs, n_tokens, stream);
    case 128: return launch<128>(o, out_stride, qq, q_stride, kv, seq_rows, seq_start, seq_pos, n_seqs, n_tokens, stream);
    case 256: return launch<256>(o, out_stride, qq, q_stride, kv, seq_rows, seq_start, seq_pos, n_seqs, n_tokens, stream);
    default: return cudaErrorInvalidValue;
    }
}
