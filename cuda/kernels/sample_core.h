/*
 * sample_core.h - the arithmetic of the fused sampling kernel (sample.cu), shared with the CPU
 * test that replays the kernel's algorithm sequentially against core/src/sampler.c.
 *
 * The kernel must return the token sn_sample() returns for the same logits, parameters, seed
 * and step. Three things make that hold:
 *   - the softmax numerators are glibc's expf, bit for bit (sn_expf_glibc below, the FMA
 *     variant glibc selects on every x86-64 CPU with FMA and AVX2), and the probabilities are
 *     (float)((double)e / sum) as on the CPU;
 *   - the ranking is the CPU's strict total order (probability descending, lower id first),
 *     expressed as one 64-bit key per id, so that top-k and top-p are thresholds on that key
 *     found by radix select (no sort): keep an id iff its key >= the threshold;
 *   - sums of probabilities (top-p mass, the draw) are exact fixed-point integers (2^-62
 *     units), so the parallel reduction order cannot change a decision. They differ from the
 *     CPU's double sums by about 1e-16, far below the gaps the decisions depend on.
 * Probabilities are <= 1, so their float bit patterns fit 30 bits and order like the values,
 * and they sum to 1 (give or take rounding), so sums of masses stay far below 2^64.
 */
#ifndef SN_SAMPLE_CORE_H
#define SN_SAMPLE_CORE_H

#include "sn_hd.h"

/* A masked (disallowed) id in the kernel's work row: a NaN pattern no probability has. */
#define SN_SAMP_MASKED 0xffffffffu
/* Fixed-point scale of probabilities: mass = floor(p * 2^62). */
#define SN_SAMP_FX_SHIFT 62
/* Radix digits of the select: 8 bits, 256 buckets. */
#define SN_SAMP_RADIX_BITS 8
#define SN_SAMP_RADIX_BINS 256

/* ---------------------------------------------------------------------------------------- */
/* glibc's expf (sysdeps/ieee754/flt-32/e_expf.c, glibc >= 2.28)                             */
/* ---------------------------------------------------------------------------------------- */

/* __exp2f_data.tab: tab[i] = uint(2^(i/32)) - (i << 47) */
#define SN_EXP2F_TAB_INIT                                                                   \
    {                                                                                       \
        0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full,                \
        0x3fef9301d0125b51ull, 0x3fef72b83c7d517bull, 0x3fef54873168b9aaull,                \
        0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull, 0x3fef06fe0a31b715ull,                \
        0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,                \
        0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull,                \
        0x3feea47eb03a5585ull, 0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull,                \
        0x3feea11473eb0187ull, 0x3feea589994cce13ull, 0x3feeace5422aa0dbull,                \
        0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,                \
        0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull,                \
        0x3fef3720dcef9069ull, 0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full,                \
        0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull                                        \
    }

#if defined(__CUDACC__)
static __device__ __constant__ const uint64_t sn_exp2f_tab_dev[32] = SN_EXP2F_TAB_INIT;
#endif
static const uint64_t sn_exp2f_tab_host[32] SN_MAYBE_UNUSED = SN_EXP2F_TAB_INIT;

static inline SN_HD uint64_t sn_exp2f_tab(uint32_t i)
{
#if defined(__CUDA_ARCH__)
    return sn_exp2f_tab_dev[i];
#else
    return sn_exp2f_tab_host[i];
#endif
}

/* expf as glibc computes it. fma_variant selects __expf_fma (x86-64 with FMA and AVX2: the
 * multiply-adds are fused, as the disassembly of libm.so.6 shows) or the generic build
 * (separate multiply and add). The kernel uses the FMA variant; the CPU test checks both
 * against the libm of the machine it runs on and says which one that libm is. */
static inline SN_HD float sn_expf_glibc(float x, int fma_variant)
{
    const double inv_ln2_n = 0x1.71547652b82fep+5, shift = 0x1.8p+52;
    const double c0 = 0x1.c6af84b912394p-20, c1 = 0x1.ebfce50fac4f3p-13, c2 = 0x1.62e42ff0c52d6p-6;
    const uint32_t ix = sn_f32_bits(x);
    const uint32_t abstop = (ix >> 20) & 0x7ff;
    if (abstop >= 0x42b) { /* |x| >= 88 or NaN */
        if (ix == 0xff800000u)
            return 0.0f;
        if (abstop >= 0x7f8)
            return x + x;
        if (x > 0x1.62e42ep6f)
            return sn_bits_f32(0x7f800000u); /* overflow: +inf */
        if (x < -0x1.9fe368p6f)
            return 0.0f; /* underflow */
        if (x < -0x1.9d1d9ep6f)
            return sn_bits_f32(1); /* __math_may_uflowf: 0x1.4p-75f squared, 2^-149 */
    }
    const double xd = (double)x;
    double kd, r;
    uint64_t ki;
    if (fma_variant) {
        kd = SN_DFMA(inv_ln2_n, xd, shift);
        ki = sn_f64_bits(kd);
        kd = SN_DSUB(kd, shift);
        r = SN_DFMA(inv_ln2_n, xd, -kd);
    } else {
        const double z = SN_DMUL(inv_ln2_n, xd);
        kd = SN_DADD(z, shift);
        ki = sn_f64_bits(kd);
        kd = SN_DSUB(kd, shift);
        r = SN_DSUB(z, kd);
    }
    const uint64_t t = sn_exp2f_tab((uint32_t)(ki % 32)) + (ki << 47);
    const double s = sn_bits_f64(t);
    double z, y;
    const double r2 = SN_DMUL(r, r);
    if (fma_variant) {
        z = SN_DFMA(r, c0, c1);
        y = SN_DFMA(r, c2, 1.0);
        y = SN_DFMA(z, r2, y);
    } else {
        z = SN_DADD(SN_DMUL(c0, r), c1);
        y = SN_DADD(SN_DMUL(c2, r), 1.0);
        y = SN_DADD(SN_DMUL(z, r2), y);
    }
    y = SN_DMUL(y, s);
    return SN_D2F(y);
}

/* ---------------------------------------------------------------------------------------- */
/* Philox4x32-10, as core/src/sampler.c                                                      */
/* ---------------------------------------------------------------------------------------- */

static inline SN_HD void sn_philox4x32_hd(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        const uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* The 24-bit integer u24 with sn_philox_uniform(seed, step) == u24 * 2^-24. */
static inline SN_HD uint32_t sn_philox_u24(uint64_t seed, uint64_t step)
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const uint32_t ctr[4] = {(uint32_t)step, (uint32_t)(step >> 32), 0, 0};
    uint32_t out[4];
    sn_philox4x32_hd(out, ctr, key);
    return out[0] >> 8;
}

/* ---------------------------------------------------------------------------------------- */
/* Ranking keys, fixed-point masses                                                          */
/* ---------------------------------------------------------------------------------------- */

/* Bits that hold an id: ceil(log2(vocab)). */
static inline SN_HD int sn_samp_idbits(int32_t vocab)
{
    int b = 0;
    while (b < 31 && ((uint32_t)1 << b) < (uint32_t)vocab)
        b++;
    return b;
}

/* Bits of a ranking key: 30 of probability, then the id's. */
static inline SN_HD int sn_samp_keybits(int idbits) { return 30 + idbits; }

/* The key of id with probability bits pbits: a larger key ranks first (higher probability,
 * then the lower id), and no two ids share a key. */
static inline SN_HD uint64_t sn_samp_key(uint32_t pbits, int32_t id, int32_t vocab, int idbits)
{
    return ((uint64_t)pbits << idbits) | (uint64_t)(uint32_t)(vocab - 1 - id);
}

/* floor(p * 2^62) for a probability 0 <= p <= 1 given by its bits, exactly. */
static inline SN_HD uint64_t sn_samp_mass(uint32_t pbits)
{
    uint32_t e = (pbits >> 23) & 0xff;
    uint64_t m = pbits & 0x7fffff;
    if (e)
        m |= 0x800000;
    else
        e = 1;
    /* p = m * 2^(e - 150), so p * 2^62 = m * 2^(e - 88) */
    const int sh = (int)e - 88;
    if (sh >= 0)
        return m << sh;
    if (sh <= -24)
        return 0;
    return m >> (-sh);
}

/* ceil(x * mass) for a float 0 < x <= 1, exactly: the top-p target in mass units. */
static inline SN_HD uint64_t sn_samp_ceil_scale(float x, uint64_t mass)
{
    const uint32_t xb = sn_f32_bits(x);
    uint32_t e = (xb >> 23) & 0xff;
    uint64_t m = xb & 0x7fffff;
    if (e)
        m |= 0x800000;
    else
        e = 1;
    /* x = m * 2^(e - 150) */
    const int s = 150 - (int)e;
    const sn_u128 prod = sn_u128_mul(m, mass);
    if (s <= 0) /* x >= 2^23: not a probability; saturate */
        return mass;
    return sn_u128_shr_ceil(prod, s);
}

/* The draw: does the running sum acc (inclusive, mass units) exceed u24 * 2^-24 * total?
 * The CPU's "acc > u * total", in exact integers. */
static inline SN_HD int sn_samp_past_target(uint64_t acc, uint32_t u24, uint64_t total)
{
    return sn_u128_gt(sn_u128_shl(acc, 24), sn_u128_mul(u24, total));
}

/* ---------------------------------------------------------------------------------------- */
/* Radix select                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* One digit pass: the candidates are the keys whose bits above `hi` equal `prefix`, the pass
 * histograms bits [lo, hi) of them. */
typedef struct sn_radix_pass {
    int hi, lo;
} sn_radix_pass;

static inline SN_HD sn_radix_pass sn_radix_next(int hi)
{
    sn_radix_pass p;
    p.hi = hi;
    p.lo = hi > SN_SAMP_RADIX_BITS ? hi - SN_SAMP_RADIX_BITS : 0;
    return p;
}

/* Is key a candidate of the pass, and if so its digit. */
static inline SN_HD int sn_radix_digit(uint64_t key, sn_radix_pass p, uint64_t prefix, uint32_t *digit)
{
    if ((key >> p.hi) != prefix) /* hi <= 61: never a shift by 64 */
        return 0;
    *digit = (uint32_t)((key >> p.lo) & ((UINT64_C(1) << (p.hi - p.lo)) - 1));
    return 1;
}

/* Scans bins b_hi, b_hi-1, ..., b_lo (from the top) for the bucket that holds the want-th
 * largest candidate (want >= 1, counted from the top, `above` of them ranking before bin
 * b_hi): returns the bin and sets *above_out to the candidates ranking before it. -1 if the
 * range ends first. Counts and masses both use it (T = uint32 count or uint64 mass). */
static inline SN_HD int sn_radix_pick_u64(const uint64_t *bins, int b_hi, int b_lo, uint64_t want,
                                          uint64_t above, uint64_t *above_out)
{
    for (int b = b_hi; b >= b_lo; b--) {
        if (above + bins[b] >= want) {
            *above_out = above;
            return b;
        }
        above += bins[b];
    }
    *above_out = above;
    return -1;
}

static inline SN_HD int sn_radix_pick_u32(const uint32_t *bins, int b_hi, int b_lo, uint64_t want,
                                          uint64_t above, uint64_t *above_out)
{
    for (int b = b_hi; b >= b_lo; b--) {
        if (above + bins[b] >= want) {
            *above_out = above;
            return b;
        }
        above += bins[b];
    }
    *above_out = above;
    return -1;
}

/* State of a select: the prefix found so far, the bit below it, and how much is still
 * wanted inside the prefix (a count for top-k, a mass for top-p). */
typedef struct sn_radix_state {
    uint64_t prefix;
    int hi;
    uint64_t want;
    int done;
} sn_radix_state;

static inline SN_HD sn_radix_state sn_radix_begin(int keybits, uint64_t want)
{
    sn_radix_state s;
    s.prefix = 0;
    s.hi = keybits;
    s.want = want;
    s.done = keybits == 0;
    return s;
}

/* After a pass chose bin b with `above` before it (count of the bin: cnt, mass: binval):
 * top-k (by count) stops when the whole bin is wanted; top-p (by mass) when the bin holds
 * one candidate. Either way it stops when no bits are left. */
static inline SN_HD void sn_radix_advance(sn_radix_state *s, sn_radix_pass p, int b, uint64_t above,
                                          uint64_t binval, uint32_t cnt, int by_mass)
{
    s->prefix = (s->prefix << (p.hi - p.lo)) | (uint64_t)(uint32_t)b;
    s->hi = p.lo;
    s->want -= above;
    if (s->hi == 0 || (by_mass ? cnt == 1 : s->want == binval))
        s->done = 1;
}

/* The threshold the select found: keep a key iff key >= it. */
static inline SN_HD uint64_t sn_radix_threshold(const sn_radix_state *s)
{
    return s->prefix << s->hi;
}

#endif /* SN_SAMPLE_CORE_H */
