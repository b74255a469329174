/*
 * emul_sample.c - sample.cu's algorithm on the CPU (see emul.h): the same passes, the same
 * sample_core.h functions, and the kernel's thread layout where it decides an order (the
 * double sum of the softmax, warp 0's bin pick, the segments of the draw).
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/sample_core.h"
#include "emul.h"

enum { NT = 1024 };

/* block_sum<1024, double>: per-thread partials, xor butterflies in each warp, then the 32 warp
 * totals in warp order. */
static double block_sum_double(const double *partial)
{
    double warp_total[NT / 32];
    for (int w = 0; w < NT / 32; w++) {
        double v[32];
        for (int l = 0; l < 32; l++)
            v[l] = partial[w * 32 + l];
        for (int o = 16; o > 0; o >>= 1) {
            double n[32];
            for (int l = 0; l < 32; l++)
                n[l] = v[l] + v[l ^ o];
            memcpy(v, n, sizeof v);
        }
        warp_total[w] = v[0];
    }
    double r = warp_total[0];
    for (int w = 1; w < NT / 32; w++)
        r += warp_total[w];
    return r;
}

/* pick_bin of sample.cu: lane L sums bins 255-8L .. 248-8L, the lane where `want` is crossed
 * scans its 8 bins. Returns the bin, -1 if none. */
static int pick_u64(const uint64_t *bins, uint64_t want, uint64_t *above_out)
{
    uint64_t incl = 0;
    for (int lane = 0; lane < 32; lane++) {
        const int b_hi = SN_SAMP_RADIX_BINS - 1 - 8 * lane, b_lo = b_hi - 7;
        uint64_t s = 0;
        for (int b = 0; b < 8; b++)
            s += bins[b_lo + b];
        const uint64_t above = incl;
        incl += s;
        if (above < want && want <= incl)
            return sn_radix_pick_u64(bins, b_hi, b_lo, want, above, above_out);
    }
    return -1;
}

static int pick_u32(const uint32_t *bins, uint64_t want, uint64_t *above_out)
{
    uint64_t wide[SN_SAMP_RADIX_BINS];
    for (int b = 0; b < SN_SAMP_RADIX_BINS; b++)
        wide[b] = bins[b];
    return pick_u64(wide, want, above_out);
}

uint64_t emul_select_top_k(const uint32_t *pbits, int32_t vocab, uint32_t k, int *passes)
{
    const int idbits = sn_samp_idbits(vocab);
    sn_radix_state st = sn_radix_begin(sn_samp_keybits(idbits), k);
    *passes = 0;
    while (!st.done) {
        const sn_radix_pass p = sn_radix_next(st.hi);
        uint32_t hist[SN_SAMP_RADIX_BINS] = {0};
        for (int32_t i = 0; i < vocab; i++) {
            uint32_t d;
            if (pbits[i] != SN_SAMP_MASKED && sn_radix_digit(sn_samp_key(pbits[i], i, vocab, idbits), p, st.prefix, &d))
                hist[d]++;
        }
        (*passes)++;
        uint64_t above;
        const int b = pick_u32(hist, st.want, &above);
        if (b < 0)
            break;
        sn_radix_advance(&st, p, b, above, hist[b], hist[b], 0);
    }
    return sn_radix_threshold(&st);
}

uint64_t emul_select_top_p(const uint32_t *pbits, int32_t vocab, uint64_t thr_k, float top_p, int *passes)
{
    const int idbits = sn_samp_idbits(vocab);
    sn_radix_state st = sn_radix_begin(sn_samp_keybits(idbits), 0);
    int first = 1;
    *passes = 0;
    while (!st.done) {
        const sn_radix_pass p = sn_radix_next(st.hi);
        uint64_t hm[SN_SAMP_RADIX_BINS] = {0};
        uint32_t hc[SN_SAMP_RADIX_BINS] = {0};
        for (int32_t i = 0; i < vocab; i++) {
            if (pbits[i] == SN_SAMP_MASKED)
                continue;
            const uint64_t key = sn_samp_key(pbits[i], i, vocab, idbits);
            uint32_t d;
            if (key >= thr_k && sn_radix_digit(key, p, st.prefix, &d)) {
                hm[d] += sn_samp_mass(pbits[i]);
                hc[d]++;
            }
        }
        (*passes)++;
        if (first) {
            uint64_t total = 0;
            for (int b = 0; b < SN_SAMP_RADIX_BINS; b++)
                total += hm[b];
            st.want = sn_samp_ceil_scale(top_p, total);
            first = 0;
        }
        uint64_t above;
        const int b = pick_u64(hm, st.want, &above);
        if (b < 0)
            break;
        sn_radix_advance(&st, p, b, above, hm[b], hc[b], 1);
    }
    const uint64_t thr = sn_radix_threshold(&st);
    return thr > thr_k ? thr : thr_k;
}

int32_t emul_sample(float *probs, const float *logits, const uint64_t *allowed, const uint64_t *seen,
                    const emul_sample_params *prm, int32_t vocab, uint32_t *wb, emul_sample_stats *stats)
{
    stats->topk_passes = stats->topp_passes = 0;
    const uint64_t *seen_row = seen && prm->repetition_penalty != 1.0f ? seen : NULL;
    /* 1 */
    float best_v = -INFINITY;
    int32_t best_i = INT_MAX, count = 0;
    for (int32_t i = 0; i < vocab; i++) {
        if (allowed && !((allowed[i >> 6] >> (i & 63)) & 1)) {
            wb[i] = SN_SAMP_MASKED;
            continue;
        }
        float l = logits[i];
        if (seen_row && ((seen_row[i >> 6] >> (i & 63)) & 1))
            l = l > 0.0f ? l / prm->repetition_penalty : l * prm->repetition_penalty;
        wb[i] = sn_f32_bits(l);
        count++;
        if (l > best_v || (l == best_v && i < best_i)) {
            best_v = l;
            best_i = i;
        }
    }
    if (count == 0 || prm->temperature == 0.0f || best_v == -INFINITY) {
        const int32_t token = count == 0 ? -1 : best_i;
        if (probs)
            for (int32_t i = 0; i < vocab; i++)
                probs[i] = i == token ? 1.0f : 0.0f;
        return token;
    }
    /* 2: thread t takes 16-byte vectors t, t + 1024, ... */
    const float mx = best_v;
    static double partial[NT];
    memset(partial, 0, sizeof partial);
    const int32_t nvec = (vocab + 3) / 4;
    for (int32_t v = 0; v < nvec; v++)
        for (int j = 0; j < 4; j++) {
            const int32_t i = 4 * v + j;
            if (i < vocab && wb[i] != SN_SAMP_MASKED) {
                const float e = sn_expf_glibc((sn_bits_f32(wb[i]) - mx) / prm->temperature, 1);
                wb[i] = sn_f32_bits(e);
                partial[v % NT] += (double)e;
            }
        }
    const double sum = block_sum_double(partial);
    /* 3 */
    uint32_t pmax = 0;
    for (int32_t i = 0; i < vocab; i++)
        if (wb[i] != SN_SAMP_MASKED) {
            wb[i] = sn_f32_bits((float)((double)sn_bits_f32(wb[i]) / sum));
            if (wb[i] > pmax)
                pmax = wb[i];
        }
    /* 4-5 */
    const int idbits = sn_samp_idbits(vocab);
    uint64_t thr = 0;
    int32_t n = count;
    if (prm->top_k > 0 && prm->top_k < n) {
        thr = emul_select_top_k(wb, vocab, (uint32_t)prm->top_k, &stats->topk_passes);
        n = prm->top_k;
    }
    if (prm->top_p < 1.0f && n > 1)
        thr = emul_select_top_p(wb, vocab, thr, prm->top_p, &stats->topp_passes);
    /* 6 */
    const uint32_t minp_bits = prm->min_p > 0.0f ? sn_f32_bits(prm->min_p * sn_bits_f32(pmax)) : 0u;
#define KEPT(i) (wb[i] != SN_SAMP_MASKED && wb[i] >= minp_bits && sn_samp_key(wb[i], (i), vocab, idbits) >= thr)
    const int32_t seg = (vocab + NT - 1) / NT;
    static uint64_t local[NT];
    int32_t last_kept = -1;
    uint64_t total = 0;
    for (int t = 0; t < NT; t++) {
        const int32_t i0 = t * seg < vocab ? t * seg : vocab, i1 = i0 + seg < vocab ? i0 + seg : vocab;
        local[t] = 0;
        for (int32_t i = i0; i < i1; i++)
            if (KEPT(i)) {
                local[t] += sn_samp_mass(wb[i]);
                last_kept = i;
            }
        total += local[t];
    }
    const uint32_t u24 = sn_philox_u24(prm->seed, prm->step);
    int32_t token = -1;
    uint64_t excl = 0;
    for (int t = 0; t < NT && token < 0; t++) {
        if (local[t] > 0 && !sn_samp_past_target(excl, u24, total) && sn_samp_past_target(excl + local[t], u24, total)) {
            const int32_t i0 = t * seg < vocab ? t * seg : vocab, i1 = i0 + seg < vocab ? i0 + seg : vocab;
            uint64_t acc = excl;
            for (int32_t i = i0; i < i1; i++)
                if (KEPT(i)) {
                    acc += sn_samp_mass(wb[i]);
                    if (sn_samp_past_target(acc, u24, total)) {
                        token = i;
                        break;
                    }
                }
        }
        excl += local[t];
    }
    if (token < 0)
        token = last_kept;
    if (probs) {
        const double tot = (double)total * 0x1.0p-62;
        for (int32_t i = 0; i < vocab; i++)
            probs[i] = KEPT(i) ? (float)((double)sn_bits_f32(wb[i]) / tot) : 0.0f;
    }
#undef KEPT
    return token;
}
