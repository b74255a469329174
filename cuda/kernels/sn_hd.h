/*
 * sn_hd.h - what lets one function body run both in a CUDA kernel and in a plain C/C++ test
 * on a machine without a GPU: the SN_HD qualifier, exact bit casts, and double-precision
 * arithmetic that the compiler may not contract into fused multiply-adds.
 *
 * The index math and the reduction logic of the kernels (KV addresses, split-KV partitions,
 * prefill tiles, the sampler's radix select) live in headers built on this one, so the CPU
 * tests check the very code the kernels run.
 */
#ifndef SN_HD_H
#define SN_HD_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define SN_HD __host__ __device__
#else
#define SN_HD
#endif

#if defined(__GNUC__)
#define SN_MAYBE_UNUSED __attribute__((unused))
#else
#define SN_MAYBE_UNUSED
#endif

static inline SN_HD uint32_t sn_f32_bits(float f)
{
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

static inline SN_HD float sn_bits_f32(uint32_t u)
{
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

static inline SN_HD uint64_t sn_f64_bits(double d)
{
#if defined(__CUDA_ARCH__)
    return (uint64_t)__double_as_longlong(d);
#else
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
#endif
}

static inline SN_HD double sn_bits_f64(uint64_t u)
{
#if defined(__CUDA_ARCH__)
    return __longlong_as_double((long long)u);
#else
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
#endif
}

/* Rounded-to-nearest operations that nvcc may not fuse (it contracts a*b+c by default). On
 * the host the tests are compiled with -ffp-contract=off, so plain operators are exact. */
#if defined(__CUDA_ARCH__)
#define SN_DFMA(a, b, c) __fma_rn((a), (b), (c))
#define SN_DMUL(a, b) __dmul_rn((a), (b))
#define SN_DADD(a, b) __dadd_rn((a), (b))
#define SN_DSUB(a, b) __dsub_rn((a), (b))
#define SN_DDIV(a, b) __ddiv_rn((a), (b))
#define SN_FSUB(a, b) __fsub_rn((a), (b))
#define SN_FMUL(a, b) __fmul_rn((a), (b))
#define SN_FDIV(a, b) __fdiv_rn((a), (b))
#define SN_D2F(a) __double2float_rn(a)
#else
#include <math.h>
#define SN_DFMA(a, b, c) fma((a), (b), (c))
#define SN_DMUL(a, b) ((a) * (b))
#define SN_DADD(a, b) ((a) + (b))
#define SN_DSUB(a, b) ((a) - (b))
#define SN_DDIV(a, b) ((a) / (b))
#define SN_FSUB(a, b) ((a) - (b))
#define SN_FMUL(a, b) ((a) * (b))
#define SN_FDIV(a, b) ((a) / (b))
#define SN_D2F(a) ((float)(a))
#endif

/* An unsigned 128-bit value as two halves: the sampler compares fixed-point sums scaled by
 * 2^24 exactly. */
typedef struct sn_u128 {
    uint64_t hi, lo;
} sn_u128;

static inline SN_HD sn_u128 sn_u128_mul(uint64_t a, uint64_t b)
{
    sn_u128 r;
    r.lo = a * b;
#if defined(__CUDA_ARCH__)
    r.hi = __umul64hi(a, b);
#else
    const uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = b & 0xffffffffu, b1 = b >> 32;
    const uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    const uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    r.hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
#endif
    return r;
}

/* a << s for 0 <= s < 128 */
static inline SN_HD sn_u128 sn_u128_shl(uint64_t a, int s)
{
    sn_u128 r;
    if (s == 0) {
        r.hi = 0;
        r.lo = a;
    } else if (s < 64) {
        r.hi = a >> (64 - s);
        r.lo = a << s;
    } else {
        r.hi = s < 128 ? a << (s - 64) : 0;
        r.lo = 0;
    }
    return r;
}

/* a > b */
static inline SN_HD int sn_u128_gt(sn_u128 a, sn_u128 b)
{
    return a.hi > b.hi || (a.hi == b.hi && a.lo > b.lo);
}

/* ceil(a / 2^s) for 0 <= s; the result must fit 64 bits */
static inline SN_HD uint64_t sn_u128_shr_ceil(sn_u128 a, int s)
{
    if (s == 0)
        return a.lo;
    if (s >= 128)
        return (a.hi | a.lo) ? 1 : 0;
    uint64_t q, rem;
    if (s < 64) {
        q = (a.lo >> s) | (a.hi << (64 - s));
        rem = a.lo & ((UINT64_C(1) << s) - 1);
    } else {
        q = s == 64 ? a.hi : a.hi >> (s - 64);
        rem = a.lo | (s == 64 ? 0 : a.hi & ((UINT64_C(1) << (s - 64)) - 1));
    }
    return q + (rem ? 1 : 0);
}

#endif /* SN_HD_H */
