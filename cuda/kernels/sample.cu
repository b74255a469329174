/*
 * sample.cu - fused sampling: one block of 1024 threads per row of logits turns the row into
 * one token with core/src/sampler.c's rules and result, without sorting the vocabulary and
 * without the host (capturable in a CUDA graph).
 *
 * Passes over the row (the work row, rows x round_up(vocab, 4) floats, stays in L2):
 *   1. mask (allowed bitset), repetition penalty (seen bitset), argmax and count;
 *      greedy rows stop here;
 *   2. e = glibc expf((l - max) / T), double sum;            3. p = (float)((double)e / sum);
 *   4. top-k: radix select, 8-bit digits, on the 64-bit ranking key (sample_core.h), counts;
 *   5. top-p: radix select on the same key, by fixed-point mass;
 *   6. min-p threshold (no pass); the draw: a block-wide scan of fixed-point masses in id
 *      order finds the first kept id whose running sum passes u * total.
 * Each select stops as soon as its threshold is exact, usually after 2-4 digit passes.
 */
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>

#include "common.cuh"
#include "sample_core.h"

namespace {

constexpr int NT = 1024; /* threads per row */
constexpr int UNROLL = 2; /* 16-byte loads in flight per thread per pass iteration */
constexpr uint32_t NONE = 0xffffffffu;
/* pick_bin: each of warp 0's 32 lanes sums 8 bins; block_sum and block_excl_scan: NT / 32 warp
 * totals in one warp (Shared's 32-entry arrays). */
static_assert(SN_SAMP_RADIX_BINS == 32 * 8, "pick_bin gives each lane of warp 0 eight bins");
static_assert(NT % 32 == 0 && NT / 32 <= 32, "block reductions hold one total per warp in one warp");

struct Shared {
    uint32_t hist_c[SN_SAMP_RADIX_BINS];
    uint64_t hist_m[SN_SAMP_RADIX_BINS];
    unsigned long long scan[33];
    double red_d[32];
    int red_i[32];
    float best_v[32];
    int best_i[32];
    int pick_bin;
    unsigned long long pick_above;
    unsigned long long want;
    uint32_t pmax_bits;
    int last_kept;
    int token;
};

/* Calls f(bits, id) for every element of the work row, four per 16-byte load, with all 32
 * lanes of a warp in step (f may use warp collectives). ids past the row (padding) come too:
 * f checks id < vocab. */
template <typename F> __device__ __forceinline__ void for_each_in_row(const uint4 *row4, int nvec, F f)
{
    const int lane = threadIdx.x & 31;
    for (int vb = threadIdx.x & ~31; vb < nvec; vb += NT * UNROLL) {
        uint4 x[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int v = vb + u * NT + lane;
            x[u] = v < nvec ? row4[v] : make_uint4(SN_SAMP_MASKED, SN_SAMP_MASKED, SN_SAMP_MASKED, SN_SAMP_MASKED);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int v = vb + u * NT + lane;
            f(x[u].x, 4 * v);
            f(x[u].y, 4 * v + 1);
            f(x[u].z, 4 * v + 2);
            f(x[u].w, 4 * v + 3);
        }
    }
}

__device__ __forceinline__ int pick_range(const uint32_t *bins, int b_hi, int b_lo, uint64_t want,
                                          uint64_t above, uint64_t *above_out)
{
    return sn_radix_pick_u32(bins, b_hi, b_lo, want, above, above_out);
}

__device__ __forceinline__ int pick_range(const uint64_t *bins, int b_hi, int b_lo, uint64_t want,
                                          uint64_t above, uint64_t *above_out)
{
    return sn_radix_pick_u64(bins, b_hi, b_lo, want, above, above_out);
}

/* Warp 0 finds the bin holding the want-th largest (by count or by mass, bins scanned from
 * the top): lane L sums bins 255-8L .. 248-8L, a warp scan gives each lane what ranks above
 * it, and the lane where `want` is crossed scans its own 8 bins with the CPU test's
 * function. topp_of_total > 0: first pass of top-p, want = ceil(top_p * total mass). */
template <typename BinT>
__device__ void pick_bin(Shared &sh, const BinT *bins, unsigned long long want, float topp_of_total)
{
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        const int b_hi = SN_SAMP_RADIX_BINS - 1 - 8 * lane, b_lo = b_hi - 7;
        unsigned long long s = 0;
#pragma unroll
        for (int b = 0; b < 8; b++)
            s += bins[b_lo + b];
        const unsigned long long incl = sn::warp_incl_scan(s);
        const unsigned long long above = incl - s;
        if (topp_of_total > 0.0f) {
            const unsigned long long total = __shfl_sync(SN_FULL_MASK, incl, 31);
            want = sn_samp_ceil_scale(topp_of_total, total);
        }
        if (lane == 0) {
            sh.pick_bin = -1;
            sh.want = want;
        }
        __syncwarp();
        if (above < want && want <= incl) {
            uint64_t ab = 0;
            sh.pick_bin = pick_range(bins, b_hi, b_lo, want, above, &ab);
            sh.pick_above = ab;
        }
    }
    __syncthreads();
}

/* Top-k: the threshold key of the k best candidates (all unmasked ids). */
__device__ uint64_t select_top_k(Shared &sh, const uint4 *row4, int nvec, int vocab, int idbits,
                                 uint32_t k)
{
    sn_radix_state st = sn_radix_begin(sn_samp_keybits(idbits), k);
    while (!st.done) {
        const sn_radix_pass p = sn_radix_next(st.hi);
        for (int b = threadIdx.x; b < SN_SAMP_RADIX_BINS; b += NT)
            sh.hist_c[b] = 0;
        __syncthreads();
        const uint64_t prefix = st.prefix;
        for_each_in_row(row4, nvec, [&](uint32_t bits, int id) {
            uint32_t d = NONE, dd;
            if (id < vocab && bits != SN_SAMP_MASKED &&
                sn_radix_digit(sn_samp_key(bits, id, vocab, idbits), p, prefix, &dd))
                d = dd;
            const unsigned grp = __match_any_sync(SN_FULL_MASK, d);
            if (d != NONE && (int)(threadIdx.x & 31) == __ffs(grp) - 1)
                atomicAdd(&sh.hist_c[d], (uint32_t)__popc(grp));
        });
        __syncthreads();
        pick_bin(sh, sh.hist_c, st.want, 0.0f);
        const int b = sh.pick_bin;
        if (b < 0) /* cannot happen: the counts always reach k */
            break;
        sn_radix_advance(&st, p, b, sh.pick_above, sh.hist_c[b], sh.hist_c[b], 0);
        __syncthreads();
    }
    return sn_radix_threshold(&st);
}

/* Top-p over the candidates with key >= thr_k: the threshold key of the shortest ranking
 * prefix whose mass reaches ceil(top_p * mass of the candidates). */
__device__ uint64_t select_top_p(Shared &sh, const uint4 *row4, int nvec, int vocab, int idbits,
                                 uint64_t thr_k, float top_p)
{
    sn_radix_state st = sn_radix_begin(sn_samp_keybits(idbits), 0);
    bool first = true;
    while (!st.done) {
        const sn_radix_pass p = sn_radix_next(st.hi);
        for (int b = threadIdx.x; b < SN_SAMP_RADIX_BINS; b += NT) {
            sh.hist_c[b] = 0;
            sh.hist_m[b] = 0;
        }
        __syncthreads();
        const uint64_t prefix = st.prefix;
        for_each_in_row(row4, nvec, [&](uint32_t bits, int id) {
            uint32_t d = NONE, dd;
            uint64_t m = 0;
            if (id < vocab && bits != SN_SAMP_MASKED) {
                const uint64_t key = sn_samp_key(bits, id, vocab, idbits);
                if (key >= thr_k && sn_radix_digit(key, p, prefix, &dd)) {
                    d = dd;
                    m = sn_samp_mass(bits);
                }
            }
            /* lanes with one digit add their masses in three 21-bit parts (a mass is below
             * 2^63, so each part's sum over 32 lanes fits 32 bits) */
            const unsigned grp = __match_any_sync(SN_FULL_MASK, d);
            const uint32_t mask21 = (1u << 21) - 1;
            const uint64_t s0 = __reduce_add_sync(grp, (uint32_t)(m & mask21));
            const uint64_t s1 = __reduce_add_sync(grp, (uint32_t)((m >> 21) & mask21));
            const uint64_t s2 = __reduce_add_sync(grp, (uint32_t)(m >> 42));
            if (d != NONE && (int)(threadIdx.x & 31) == __ffs(grp) - 1) {
                atomicAdd(reinterpret_cast<unsigned long long *>(&sh.hist_m[d]),
                          (unsigned long long)(s0 + (s1 << 21) + (s2 << 42)));
                atomicAdd(&sh.hist_c[d], (uint32_t)__popc(grp));
            }
        });
        __syncthreads();
        pick_bin(sh, sh.hist_m, st.want, first ? top_p : 0.0f);
        if (first) {
            st.want = sh.want;
            first = false;
        }
        const int b = sh.pick_bin;
        if (b < 0) /* cannot happen: 0 < want <= total mass */
            break;
        sn_radix_advance(&st, p, b, sh.pick_above, sh.hist_m[b], sh.hist_c[b], 1);
        __syncthreads();
    }
    const uint64_t thr = sn_radix_threshold(&st);
    return thr > thr_k ? thr : thr_k;
}

__global__ void __launch_bounds__(NT) sample_kernel(int32_t *tokens, float *probs, const float *logits,
                                                    int64_t ld_logits, const uint64_t *allowed,
                                                    const uint64_t *seen,
                                                    const sn_cuda_sample_params *params,
                                                    int32_t vocab, int32_t words, float *work,
                                                    int64_t ld_work)
{
    __shared__ Shared sh;
    const int row = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const sn_cuda_sample_params prm = params[row];
    const float *lg = logits + (int64_t)row * ld_logits;
    float *w = work + (int64_t)row * ld_work;
    uint32_t *wb = reinterpret_cast<uint32_t *>(w);
    uint4 *row4 = reinterpret_cast<uint4 *>(w);
    const int nvec = (vocab + 3) / 4;
    float *pr = probs ? probs + (int64_t)row * vocab : nullptr;
    const uint64_t *al = allowed ? allowed + (int64_t)row * words : nullptr;
    const uint64_t *seen_row = seen && prm.repetition_penalty != 1.0f ? seen + (int64_t)row * words : nullptr;

    /* 1: mask, penalty, argmax (lowest id on ties), count; NaN or +inf anywhere in the row */
    float best_v = -INFINITY;
    int best_i = INT_MAX, count = 0, bad = 0;
    for (int i = tid; i < vocab; i += NT) {
        float l = lg[i];
        bad |= !(l < INFINITY);
        if (al && !((al[i >> 6] >> (i & 63)) & 1)) {
            wb[i] = SN_SAMP_MASKED;
            continue;
        }
        if (seen_row && ((seen_row[i >> 6] >> (i & 63)) & 1))
            l = l > 0.0f ? SN_FDIV(l, prm.repetition_penalty) : SN_FMUL(l, prm.repetition_penalty);
        w[i] = l;
        count++;
        if (l > best_v || (l == best_v && i < best_i)) {
            best_v = l;
            best_i = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(SN_FULL_MASK, best_v, o);
        const int oi = __shfl_xor_sync(SN_FULL_MASK, best_i, o);
        if (ov > best_v || (ov == best_v && oi < best_i)) {
            best_v = ov;
            best_i = oi;
        }
    }
    if (lane == 0) {
        sh.best_v[warp] = best_v;
        sh.best_i[warp] = best_i;
    }
    count = sn::block_sum<NT>(count, sh.red_i); /* its barriers publish best_v/best_i too */
    bad = sn::block_sum<NT>(bad, sh.red_i);
    if (bad) { /* the same for every thread: the early return is uniform */
        if (tid == 0)
            tokens[row] = SN_CUDA_TOKEN_NONFINITE;
        if (pr)
            for (int i = tid; i < vocab; i += NT)
                pr[i] = 0.0f;
        return;
    }
    if (warp == 0) {
        best_v = sh.best_v[lane];
        best_i = sh.best_i[lane];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(SN_FULL_MASK, best_v, o);
            const int oi = __shfl_xor_sync(SN_FULL_MASK, best_i, o);
            if (ov > best_v || (ov == best_v && oi < best_i)) {
                best_v = ov;
                best_i = oi;
            }
        }
        if (lane == 0) {
            sh.best_v[0] = best_v;
            sh.best_i[0] = best_i;
        }
    }
    __syncthreads();
    best_v = sh.best_v[0];
    best_i = sh.best_i[0];

    /* greedy; or nothing allowed; or every allowed logit -inf (no distribution: the lowest
     * allowed id, where the CPU sampler's arithmetic turns to NaN) */
    if (count == 0 || prm.temperature == 0.0f || best_v == -INFINITY) {
        const int token = count == 0 ? -1 : best_i;
        if (tid == 0)
            tokens[row] = token;
        if (pr)
            for (int i = tid; i < vocab; i += NT)
                pr[i] = i == token ? 1.0f : 0.0f;
        return;
    }

    /* 2: softmax numerators, exactly as the CPU computes them */
    const float mx = best_v, temp = prm.temperature;
    double sum = 0.0;
    auto numerator = [&](uint32_t &c, int id) {
        if (id < vocab && c != SN_SAMP_MASKED) {
            const float e = sn_expf_glibc(SN_FDIV(SN_FSUB(sn_bits_f32(c), mx), temp), 1);
            c = sn_f32_bits(e);
            sum += (double)e;
        }
    };
    for (int v = tid; v < nvec; v += NT) {
        uint4 x = row4[v];
        numerator(x.x, 4 * v);
        numerator(x.y, 4 * v + 1);
        numerator(x.z, 4 * v + 2);
        numerator(x.w, 4 * v + 3);
        row4[v] = x;
    }
    sum = sn::block_sum<NT>(sum, sh.red_d);

    /* 3: probabilities; their maximum for min-p */
    if (tid == 0)
        sh.pmax_bits = 0;
    uint32_t pmax = 0;
    auto probability = [&](uint32_t &c, int id) {
        if (id < vocab && c != SN_SAMP_MASKED) {
            c = sn_f32_bits(SN_D2F(SN_DDIV((double)sn_bits_f32(c), sum)));
            pmax = max(pmax, c);
        }
    };
    for (int v = tid; v < nvec; v += NT) {
        uint4 x = row4[v];
        probability(x.x, 4 * v);
        probability(x.y, 4 * v + 1);
        probability(x.z, 4 * v + 2);
        probability(x.w, 4 * v + 3);
        row4[v] = x;
    }
    pmax = sn::warp_max(pmax);
    __syncthreads(); /* pmax_bits = 0 is visible, and every thread's writes of step 3 */
    if (lane == 0)
        atomicMax(&sh.pmax_bits, pmax);
    __syncthreads();
    pmax = sh.pmax_bits;

    /* 4-5: top-k, top-p thresholds on the ranking key */
    const int idbits = sn_samp_idbits(vocab);
    uint64_t thr = 0;
    int n = count;
    if (prm.top_k > 0 && prm.top_k < n) {
        thr = select_top_k(sh, row4, nvec, vocab, idbits, (uint32_t)prm.top_k);
        n = prm.top_k;
    }
    if (prm.top_p < 1.0f && n > 1)
        thr = select_top_p(sh, row4, nvec, vocab, idbits, thr, prm.top_p);

    /* 6: min-p relative to the most likely id (always kept), then the draw */
    const uint32_t minp_bits = prm.min_p > 0.0f ? sn_f32_bits(SN_FMUL(prm.min_p, sn_bits_f32(pmax))) : 0u;
    auto kept = [&](uint32_t bits, int id) {
        return bits != SN_SAMP_MASKED && bits >= minp_bits && sn_samp_key(bits, id, vocab, idbits) >= thr;
    };
    const int seg = (vocab + NT - 1) / NT, i0 = min(vocab, tid * seg), i1 = min(vocab, i0 + seg);
    unsigned long long local = 0;
    int last = -1;
    for (int i = i0; i < i1; i++) {
        const uint32_t bits = wb[i];
        if (kept(bits, i)) {
            local += sn_samp_mass(bits);
            last = i;
        }
    }
    if (tid == 0) {
        sh.last_kept = -1;
        sh.token = -1;
    }
    unsigned long long total;
    const unsigned long long excl = sn::block_excl_scan<NT>(local, sh.scan, &total); /* ends with a barrier */
    if (last >= 0)
        atomicMax(&sh.last_kept, last);
    const uint32_t u24 = sn_philox_u24(prm.seed, prm.step);
    if (local > 0 && !sn_samp_past_target(excl, u24, total) && sn_samp_past_target(excl + local, u24, total)) {
        unsigned long long acc = excl;
        for (int i = i0; i < i1; i++) {
            const uint32_t bits = wb[i];
            if (kept(bits, i)) {
                acc += sn_samp_mass(bits);
                if (sn_samp_past_target(acc, u24, total)) {
                    sh.token = i;
                    break;
                }
            }
        }
    }
    __syncthreads();
    const int token = sh.token >= 0 ? sh.token : sh.last_kept;
    if (tid == 0)
        tokens[row] = token;
    if (pr) {
        const double tot = (double)total * 0x1.0p-62;
        for (int i = tid; i < vocab; i += NT) {
            const uint32_t bits = wb[i];
            pr[i] = kept(bits, i) ? SN_D2F(SN_DDIV((double)sn_bits_f32(bits), tot)) : 0.0f;
        }
    }
}

int64_t work_stride(int32_t vocab) { return ((int64_t)vocab + 3) / 4 * 4; }

} // namespace

extern "C" size_t sn_cuda_sample_workspace(int32_t rows, int32_t vocab)
{
    if (rows <= 0 || vocab <= 0)
        return 0;
    return (size_t)rows * (size_t)work_stride(vocab) * sizeof(float);
}

extern "C" cudaError_t sn_cuda_sample(int32_t *tokens, float *probs, const float *logits,
                                      int64_t logits_stride, const uint64_t *allowed,
                                      const uint64_t *seen, const sn_cuda_sample_params *params,
                                      int32_t rows, int32_t vocab, void *workspace,
                                      size_t workspace_bytes, cudaStream_t stream)
{
    if (rows < 0 || vocab <= 0 || logits_stride < vocab || !tokens || !logits || !params)
        return cudaErrorInvalidValue;
    if (rows == 0)
        return cudaSuccess;
    if (!workspace || workspace_bytes < sn_cuda_sample_workspace(rows, vocab) ||
        ((uintptr_t)workspace & 15) != 0)
        return cudaErrorInvalidValue;
    const int32_t words = (vocab + 63) / 64;
    sample_kernel<<<rows, NT, 0, stream>>>(tokens, probs, logits, logits_stride, allowed, seen, params,
                                           vocab, words, static_cast<float *>(workspace),
                                           work_stride(vocab));
    return cudaGetLastError();
}
