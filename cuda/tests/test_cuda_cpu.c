/*
 * test_cuda_cpu.c - everything about the CUDA kernels that a machine without a GPU can
 * check, run on every build: the host/device helpers the kernels call (glibc's expf bit for
 * bit, Philox, fixed-point masses, 128-bit compares, radix select against a sort, KV
 * addresses, split-KV partitions, prefill tiles), and the kernels' algorithms replayed
 * sequentially with those helpers (emul_*.c) against core/src/sampler.c and the plain
 * references: the sampling kernel's algorithm must give sn_sample()'s token, the split-KV
 * decode and the FlashAttention-2 tiling the reference attention.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/attn_core.h"
#include "../kernels/sample_core.h"
#include "cuda_test.h"
#include "emul.h"
#include "sampler.h"

/* ---------------------------------------------------------------------------------------- */
/* expf, Philox, fixed point                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Compares the port with this machine's libm over [lo_bits, hi_bits] (float bit patterns,
 * stepping by step); counts mismatches of each variant. */
static void expf_sweep(uint32_t lo_bits, uint32_t hi_bits, uint32_t step, uint64_t *tested, uint64_t bad[2],
                       uint32_t first_bad[2])
{
    for (uint64_t u = lo_bits; u <= hi_bits; u += step) {
        const float x = sn_bits_f32((uint32_t)u);
        const uint32_t want = sn_f32_bits(expf(x));
        for (int v = 0; v < 2; v++)
            if (sn_f32_bits(sn_expf_glibc(x, v)) != want) {
                if (!bad[v])
                    first_bad[v] = (uint32_t)u;
                bad[v]++;
            }
        (*tested)++;
    }
}

Test(cuda_cpu, expf_port_matches_libm_bit_for_bit)
{
    uint64_t tested = 0, bad[2] = {0, 0};
    uint32_t first_bad[2] = {0, 0};
    /* softmax numerators: x in [-104, 0]; every pattern with |x| >= 2^-12, a sample below */
    expf_sweep(0xb9800000u, 0xc2d00000u, 1, &tested, bad, first_bad);
    expf_sweep(0x80000000u, 0xb9800000u, 97, &tested, bad, first_bad);
    /* the rest of the line, sampled: positives, overflow, underflow, infinities, NaN */
    expf_sweep(0x00000000u, 0x7fffffffu, 1009, &tested, bad, first_bad);
    expf_sweep(0xc2d00000u, 0xffffffffu, 1009, &tested, bad, first_bad);
    const uint32_t special[] = {0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u, 0x42b17217u, 0x42b17218u,
                                0xc2cff1b4u, 0xc2cff1b5u, 0xc2ce8ecfu, 0xc2ce8ed0u, 0x00000001u, 0x80000001u};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        expf_sweep(special[i], special[i], 1, &tested, bad, first_bad);
    const int has_fma = __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2");
    fprintf(stderr,
            "expf: %llu inputs; FMA variant (the kernel's) differs from this libm on %llu (first 0x%08x), "
            "generic variant on %llu (first 0x%08x); this CPU %s FMA+AVX2, so libm runs its %s variant\n",
            (unsigned long long)tested, (unsigned long long)bad[1], first_bad[1], (unsigned long long)bad[0],
            first_bad[0], has_fma ? "has" : "lacks", has_fma ? "FMA" : "generic");
    cr_expect(bad[has_fma] == 0, "the port of the variant this CPU's libm uses differs on %llu inputs",
              (unsigned long long)bad[has_fma]);
    if (!has_fma)
        fprintf(stderr, "WARNING: this CPU's libm is the generic expf; the GPU kernel computes the FMA variant, "
                        "so a token may differ from the CPU sampler's in rare ties\n");
}

Test(cuda_cpu, philox_matches_core)
{
    sn_rng r = {11};
    for (int i = 0; i < 100000; i++) {
        const uint32_t ctr[4] = {(uint32_t)sn_rng_next(&r), (uint32_t)sn_rng_next(&r), (uint32_t)sn_rng_next(&r),
                                 (uint32_t)sn_rng_next(&r)};
        const uint32_t key[2] = {(uint32_t)sn_rng_next(&r), (uint32_t)sn_rng_next(&r)};
        uint32_t a[4], b[4];
        sn_philox4x32(a, ctr, key);
        sn_philox4x32_hd(b, ctr, key);
        cr_assert(memcmp(a, b, sizeof a) == 0, "philox differs at case %d", i);
        const uint64_t seed = sn_rng_next(&r), step = sn_rng_next(&r) >> (i % 64);
        cr_assert(sn_philox_uniform(seed, step) == (float)sn_philox_u24(seed, step) * 0x1.0p-24f);
    }
}

Test(cuda_cpu, fixed_point_mass_and_compares_are_exact)
{
    sn_rng r = {12};
    for (int i = 0; i < 2000000; i++) {
        /* probabilities of every magnitude, down to denormals */
        uint32_t bits = (uint32_t)(sn_rng_next(&r) % 0x3f800001u);
        if (i % 7 == 0)
            bits = (uint32_t)(sn_rng_next(&r) % 0x00800000u);
        const double p = sn_bits_f32(bits);
        const uint64_t want = (uint64_t)floor(ldexp(p, 62));
        cr_assert_eq(sn_samp_mass(bits), want, "mass of 0x%08x", bits);

        const uint64_t mass = sn_rng_next(&r) >> (1 + sn_rng_next(&r) % 40);
        const float x = i % 5 == 0 ? sn_bits_f32((uint32_t)(sn_rng_next(&r) % 0x3f800001u))
                                   : sn_rng_uniform(&r, 0.0f, 1.0f);
        if (x > 0.0f) {
            const unsigned __int128 prod = (unsigned __int128)((sn_f32_bits(x) & 0x7fffff) | (sn_f32_bits(x) >= 0x00800000 ? 0x800000u : 0)) * mass;
            const int e = (int)((sn_f32_bits(x) >> 23) & 0xff), s = 150 - (e ? e : 1);
            unsigned __int128 q = s >= 128 ? 0 : prod >> s;
            if (s >= 128 ? prod != 0 : (prod & (((unsigned __int128)1 << s) - 1)) != 0)
                q++;
            cr_assert_eq(sn_samp_ceil_scale(x, mass), (uint64_t)q, "ceil(%a * %llu)", (double)x, (unsigned long long)mass);
        }

        const uint64_t acc = sn_rng_next(&r) >> 1, total = sn_rng_next(&r) >> 1;
        const uint32_t u24 = (uint32_t)(sn_rng_next(&r) >> 40);
        const int want_past = ((unsigned __int128)acc << 24) > (unsigned __int128)u24 * total;
        cr_assert_eq(sn_samp_past_target(acc, u24, total), want_past);
        const uint64_t a = sn_rng_next(&r), b = sn_rng_next(&r);
        const sn_u128 m = sn_u128_mul(a, b);
        const unsigned __int128 mm = (unsigned __int128)a * b;
        cr_assert(m.hi == (uint64_t)(mm >> 64) && m.lo == (uint64_t)mm);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Radix select against a sort                                                               */
/* ---------------------------------------------------------------------------------------- */

static const uint32_t *g_pbits;

/* ranks_before of sampler.c: higher probability first, the lower id on ties */
static int cmp_rank(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (g_pbits[x] != g_pbits[y])
        return g_pbits[x] > g_pbits[y] ? -1 : 1;
    return (x > y) - (x < y);
}

/* Probability bits with heavy ties (quantised values), zeros, tiny values, some masked;
 * normalised to sum to at most 1 as a softmax's are (the fixed-point masses rely on it). */
static void random_pbits(uint32_t *pb, int32_t n, sn_rng *r, int levels, int mask_pct)
{
    float *p = malloc((size_t)n * sizeof *p);
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        p[i] = levels ? (float)(1 + sn_rng_int(r, levels)) : sn_rng_uniform(r, 0.0f, 1.0f);
        if (sn_rng_int(r, 50) == 0)
            p[i] = 0.0f;
        if (sn_rng_int(r, 20) == 0)
            p[i] *= 1e-30f;
        sum += p[i];
    }
    for (int32_t i = 0; i < n; i++)
        pb[i] = sn_rng_int(r, 100) < mask_pct ? SN_SAMP_MASKED : sn_f32_bits((float)(p[i] / (sum > 0.0 ? sum : 1.0)));
    free(p);
}

Test(cuda_cpu, radix_select_top_k_and_top_p_match_a_sort)
{
    sn_rng r = {13};
    const int32_t sizes[] = {1, 2, 3, 5, 63, 64, 65, 257, 1000, 4099, 128256};
    int max_k_passes = 0, max_p_passes = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const int32_t n = sizes[si];
        uint32_t *pb = malloc((size_t)n * sizeof *pb);
        int32_t *order = malloc((size_t)n * sizeof *order);
        const int idbits = sn_samp_idbits(n);
        for (int trial = 0; trial < (n > 10000 ? 6 : 40); trial++) {
            random_pbits(pb, n, &r, trial % 3 == 0 ? 0 : (trial % 3 == 1 ? 3 : 50), trial % 4 == 0 ? 0 : 30);
            int32_t m = 0;
            for (int32_t i = 0; i < n; i++)
                if (pb[i] != SN_SAMP_MASKED)
                    order[m++] = i;
            if (m == 0)
                continue;
            g_pbits = pb;
            qsort(order, (size_t)m, sizeof *order, cmp_rank);
            /* top-k: the k best by rank are exactly the keys >= the threshold */
            const uint32_t k = 1 + (uint32_t)sn_rng_int(&r, m);
            int passes;
            const uint64_t thr = emul_select_top_k(pb, n, k, &passes);
            max_k_passes = passes > max_k_passes ? passes : max_k_passes;
            for (int32_t j = 0; j < m; j++) {
                const int kept = sn_samp_key(pb[order[j]], order[j], n, idbits) >= thr;
                cr_assert_eq(kept, j < (int32_t)k, "vocab %d, k %u: rank %d (id %d) kept=%d", n, k, j, order[j], kept);
            }
            /* top-p over the top-k set: the shortest rank prefix with mass >= ceil(top_p * mass) */
            const float top_p = trial % 5 == 0 ? 1e-6f : sn_rng_uniform(&r, 0.01f, 0.999f);
            uint64_t mass = 0;
            for (uint32_t j = 0; j < k; j++)
                mass += sn_samp_mass(pb[order[j]]);
            if (mass == 0)
                continue; /* the kernel never runs top-p on a massless set: p_max >= 1/vocab */
            const uint64_t target = sn_samp_ceil_scale(top_p, mass);
            uint64_t acc = 0;
            uint32_t keep = k;
            for (uint32_t j = 0; j < k; j++) {
                acc += sn_samp_mass(pb[order[j]]);
                if (acc >= target) {
                    keep = j + 1;
                    break;
                }
            }
            const uint64_t thr_p = emul_select_top_p(pb, n, thr, top_p, &passes);
            max_p_passes = passes > max_p_passes ? passes : max_p_passes;
            for (int32_t j = 0; j < m; j++) {
                const int kept = sn_samp_key(pb[order[j]], order[j], n, idbits) >= thr_p;
                cr_assert_eq(kept, j < (int32_t)keep, "vocab %d, k %u, top_p %g: rank %d kept=%d, want %u kept", n,
                             k, (double)top_p, j, kept, keep);
            }
        }
        free(pb);
        free(order);
    }
    fprintf(stderr, "radix select: at most %d digit passes for top-k, %d for top-p\n", max_k_passes, max_p_passes);
}

/* ---------------------------------------------------------------------------------------- */
/* The sampling kernel's algorithm against core/src/sampler.c                                */
/* ---------------------------------------------------------------------------------------- */

typedef struct sample_case {
    emul_sample_params prm;
    int logit_kind;  /* 0 gaussian-ish floats, 1 bf16-quantised (ties), 2 one peak, 3 ties at 2 levels */
    int mask_kind;   /* 0 none, 1 half, 2 three ids, 3 one id, 4 none allowed */
    int seen_pct;
} sample_case;

static void run_sample_cases(int32_t vocab, int n_cases, uint64_t seed, int *mismatches, int *cases_run)
{
    sn_rng r = {seed};
    float *logits = malloc((size_t)vocab * sizeof *logits);
    float *p_cpu = malloc((size_t)vocab * sizeof *p_cpu), *p_emu = malloc((size_t)vocab * sizeof *p_emu);
    uint32_t *work = malloc((size_t)vocab * sizeof *work);
    const int32_t words = (vocab + 63) / 64;
    uint64_t *allowed = malloc((size_t)words * sizeof *allowed), *seen = malloc((size_t)words * sizeof *seen);
    const float temps[] = {0.0f, 0.7f, 1.0f, 1.3f, 0.05f};
    const int32_t ks[] = {0, 1, 2, 40, 1000, vocab - 1, vocab + 5};
    const float tps[] = {1.0f, 0.9f, 0.5f, 0.01f, 0.999f};
    const float mps[] = {0.0f, 0.0f, 0.05f, 0.5f};
    const float reps[] = {1.0f, 1.3f, 0.8f};
    for (int c = 0; c < n_cases; c++) {
        sample_case sc;
        sc.prm.temperature = temps[sn_rng_int(&r, 5)];
        sc.prm.top_k = ks[sn_rng_int(&r, 7)];
        sc.prm.top_p = tps[sn_rng_int(&r, 5)];
        sc.prm.min_p = mps[sn_rng_int(&r, 4)];
        sc.prm.repetition_penalty = reps[sn_rng_int(&r, 3)];
        sc.prm.seed = sn_rng_next(&r);
        sc.logit_kind = sn_rng_int(&r, 4);
        sc.mask_kind = sn_rng_int(&r, 8);
        if (sc.mask_kind > 4)
            sc.mask_kind = sc.mask_kind == 5 ? 1 : 0;
        sc.seen_pct = sn_rng_int(&r, 3) * 10;
        sn_fill_logits(logits, vocab, sc.logit_kind, &r);
        sn_fill_bits(allowed, vocab, sc.mask_kind, 50, &r);
        sn_fill_bits(seen, vocab, 1, sc.seen_pct, &r);
        const uint64_t *al = sc.mask_kind ? allowed : NULL;
        for (int step = 0; step < 4; step++) {
            sc.prm.step = (uint64_t)step * 7919 + (uint64_t)c;
            emul_sample_stats st;
            const int32_t want = sn_ref_sample(p_cpu, logits, al, seen, sc.prm.temperature, sc.prm.top_k, sc.prm.top_p,
                                               sc.prm.min_p, sc.prm.repetition_penalty, sc.prm.seed, sc.prm.step, vocab);
            const int32_t got = emul_sample(p_emu, logits, al, seen, &sc.prm, vocab, work, &st);
            (*cases_run)++;
            if (got != want) {
                (*mismatches)++;
                fprintf(stderr,
                        "  vocab %d case %d step %d: got %d, want %d (T %g k %d p %g min_p %g rep %g logits %d mask %d)\n",
                        vocab, c, step, got, want, (double)sc.prm.temperature, sc.prm.top_k, (double)sc.prm.top_p,
                        (double)sc.prm.min_p, (double)sc.prm.repetition_penalty, sc.logit_kind, sc.mask_kind);
                continue;
            }
            /* the distribution: the same support, each probability within 2 float ulps */
            for (int32_t i = 0; i < vocab; i++) {
                const double d = fabs((double)p_emu[i] - p_cpu[i]);
                if ((p_emu[i] == 0.0f) != (p_cpu[i] == 0.0f) || d > 2.4e-7 * p_cpu[i]) {
                    (*mismatches)++;
                    fprintf(stderr, "  vocab %d case %d step %d: p[%d] = %.9g, want %.9g\n", vocab, c, step, i,
                            (double)p_emu[i], (double)p_cpu[i]);
                    break;
                }
            }
        }
    }
    free(logits);
    free(p_cpu);
    free(p_emu);
    free(work);
    free(allowed);
    free(seen);
}

Test(cuda_cpu, sampling_algorithm_gives_the_cpu_samplers_tokens, .timeout = 600)
{
    int mismatches = 0, cases = 0;
    const int32_t vocabs[] = {1, 2, 3, 63, 64, 65, 1000, 4099};
    for (size_t i = 0; i < sizeof vocabs / sizeof vocabs[0]; i++)
        run_sample_cases(vocabs[i], 60, 100 + i, &mismatches, &cases);
    run_sample_cases(128256, 48, 7, &mismatches, &cases);
    fprintf(stderr, "sampling: %d draws (token and distribution) compared with sn_sample, %d mismatches\n", cases,
            mismatches);
    cr_expect(mismatches == 0);
}

/* ---------------------------------------------------------------------------------------- */
/* Paged KV addresses, split-KV plans, prefill tiles                                         */
/* ---------------------------------------------------------------------------------------- */

Test(cuda_cpu, kv_addresses_follow_the_block_table)
{
    sn_rng r = {14};
    const int32_t n_blocks = 37, nkv = 3, hd = 40;
    int32_t table[37];
    for (int32_t i = 0; i < n_blocks; i++)
        table[i] = i;
    for (int32_t i = n_blocks - 1; i > 0; i--) {
        const int32_t j = sn_rng_int(&r, i + 1), t = table[i];
        table[i] = table[j];
        table[j] = t;
    }
    char *seen = calloc((size_t)n_blocks * 16 * nkv, 1);
    for (int32_t p = 0; p < n_blocks * 16; p++)
        for (int32_t h = 0; h < nkv; h++) {
            const int64_t off = sn_kv_pos_offset(table, p, h, nkv, hd);
            const int64_t want = (((int64_t)table[p / 16] * nkv + h) * 16 + p % 16) * hd;
            cr_assert_eq(off, want);
            cr_assert_eq(sn_kv_slot_offset(table[p / 16] * 16 + p % 16, h, nkv, hd), off);
            cr_assert(off % hd == 0 && off >= 0 && off < (int64_t)n_blocks * 16 * nkv * hd);
            cr_assert(!seen[off / hd], "two positions share an address");
            seen[off / hd] = 1;
        }
    free(seen);
    cr_assert_eq(SN_CUDA_KV_BLOCK, 16);
}

Test(cuda_cpu, decode_plans_cover_every_context)
{
    const int32_t seqs[] = {1, 2, 3, 16, 64, 256, 1000};
    const int32_t kvs[] = {1, 2, 8};
    const int32_t ctxs[] = {0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1000, 4099, 32768, 131072, 1 << 20};
    const int32_t sms[] = {1, 7, 108, 132};
    for (size_t a = 0; a < sizeof seqs / sizeof seqs[0]; a++)
        for (size_t b = 0; b < sizeof kvs / sizeof kvs[0]; b++)
            for (size_t c = 0; c < sizeof ctxs / sizeof ctxs[0]; c++)
                for (size_t d = 0; d < sizeof sms / sizeof sms[0]; d++) {
                    const int32_t max_ctx = ctxs[c];
                    const sn_decode_plan p = sn_decode_make_plan(seqs[a], kvs[b], max_ctx, sms[d]);
                    cr_assert(p.split_len > 0 && p.split_len % SN_DECODE_TILE == 0);
                    cr_assert(p.n_splits >= 1 && p.n_splits <= SN_DECODE_MAX_SPLITS);
                    cr_assert((int64_t)p.n_splits * p.split_len >= max_ctx, "plan leaves positions out");
                    cr_assert(max_ctx == 0 || (int64_t)(p.n_splits - 1) * p.split_len < max_ctx, "empty split");
                    if (p.n_splits > 1)
                        cr_assert(p.split_len >= SN_DECODE_MIN_SPLIT_TILES * SN_DECODE_TILE);
                    /* every shorter context: its splits tile [0, ctx) exactly, within the grid */
                    for (int32_t ctx = 0; ctx <= max_ctx; ctx += ctx < 300 ? 1 : 997) {
                        const int32_t nv = sn_split_count(ctx, p.split_len);
                        cr_assert(nv <= p.n_splits);
                        int32_t next = 0;
                        for (int32_t s = 0; s < p.n_splits; s++) {
                            const int32_t b0 = sn_split_begin(s, p.split_len), e0 = sn_split_end(s, p.split_len, ctx);
                            if (s < nv) {
                                cr_assert(b0 == next && e0 > b0);
                                next = e0;
                            } else {
                                cr_assert(b0 >= e0);
                            }
                        }
                        cr_assert_eq(next, ctx);
                    }
                }
}

Test(cuda_cpu, prefill_tiles_cover_every_row_once)
{
    sn_rng r = {15};
    for (int trial = 0; trial < 300; trial++) {
        const int32_t n_seqs = 1 + sn_rng_int(&r, 9), group = 1 + sn_rng_int(&r, 16);
        int32_t seq_start[10], seq_pos[9];
        seq_start[0] = 0;
        for (int32_t s = 0; s < n_seqs; s++) {
            seq_start[s + 1] = seq_start[s] + (sn_rng_int(&r, 4) == 0 ? 1 : sn_rng_int(&r, 150));
            seq_pos[s] = sn_rng_int(&r, 3) == 0 ? 0 : sn_rng_int(&r, 5000);
        }
        const int32_t n_tokens = seq_start[n_seqs], tm = sn_prefill_tokens_per_tile(group);
        cr_assert(tm >= 1 && tm * group <= SN_PREFILL_BM);
        int32_t *hits = calloc((size_t)(n_tokens + 1) * group, sizeof *hits);
        const int32_t max_tiles = sn_prefill_max_tiles(n_tokens, n_seqs, tm);
        int32_t found = 0;
        for (int32_t j = 0; j < max_tiles + 3; j++) {
            sn_prefill_tile t;
            if (!sn_prefill_find_tile(seq_start, n_seqs, tm, j, &t))
                continue;
            cr_assert(j == found, "tiles are not numbered 0..n-1");
            found++;
            cr_assert(j < max_tiles);
            const int32_t kv_end = sn_prefill_kv_end(&t, seq_start, seq_pos);
            for (int32_t row = 0; row < SN_PREFILL_BM; row++) {
                const int32_t pos = sn_prefill_row_pos(&t, seq_start, seq_pos, group, row);
                if (row < t.ntok * group) {
                    const int32_t tok = t.tok0 + row / group;
                    cr_assert(tok >= seq_start[t.run] && tok < seq_start[t.run + 1]);
                    cr_assert_eq(pos, seq_pos[t.run] + tok - seq_start[t.run]);
                    cr_assert(pos < kv_end);
                    hits[(size_t)tok * group + row % group]++;
                } else {
                    cr_assert_eq(pos, -1);
                }
            }
        }
        for (int32_t i = 0; i < n_tokens * group; i++)
            cr_assert_eq(hits[i], 1, "row %d covered %d times", i, hits[i]);
        free(hits);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Attention algorithms against the references                                               */
/* ---------------------------------------------------------------------------------------- */

typedef struct paged {
    int32_t n_blocks, table_stride;
    uint16_t *k, *v;
    int32_t *tables;
} paged;

/* A pool with n_seqs sequences of up to max_len positions, blocks scattered at random;
 * values are bf16 in [-1, 1) (keys times key_gain). */
static paged make_paged(int32_t n_seqs, int32_t max_len, int32_t nkv, int32_t hd, float key_gain, sn_rng *r)
{
    paged p;
    p.table_stride = (max_len + 15) / 16 + 1;
    p.n_blocks = n_seqs * p.table_stride + 3;
    const size_t elems = (size_t)p.n_blocks * nkv * 16 * hd;
    p.k = malloc(elems * sizeof *p.k);
    p.v = malloc(elems * sizeof *p.v);
    for (size_t i = 0; i < elems; i++) {
        p.k[i] = sn_ref_f32_to_bf16(sn_rng_uniform(r, -1.0f, 1.0f) * key_gain);
        p.v[i] = sn_ref_f32_to_bf16(sn_rng_uniform(r, -1.0f, 1.0f));
    }
    int32_t *perm = malloc((size_t)p.n_blocks * sizeof *perm);
    for (int32_t i = 0; i < p.n_blocks; i++)
        perm[i] = i;
    for (int32_t i = p.n_blocks - 1; i > 0; i--) {
        const int32_t j = sn_rng_int(r, i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    p.tables = malloc((size_t)n_seqs * p.table_stride * sizeof *p.tables);
    for (int32_t i = 0; i < n_seqs * p.table_stride; i++)
        p.tables[i] = perm[i];
    free(perm);
    return p;
}

static void free_paged(paged *p)
{
    free(p->k);
    free(p->v);
    free(p->tables);
}

Test(cuda_cpu, split_kv_decode_matches_the_reference, .timeout = 300)
{
    sn_rng r = {16};
    const struct { int32_t nh, nkv, hd; } shapes[] = {{8, 8, 64}, {14, 7, 128}, {12, 3, 96}, {32, 4, 128}, {16, 1, 64}, {8, 2, 256}, {15, 5, 128}};
    const int32_t ctx_sets[][5] = {{1, 15, 16, 17, 100}, {4099, 1, 0, 64, 65}, {2000, 3333, 129, 128, 127}};
    const int32_t sms[] = {1, 7, 132};
    int max_splits = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t ci = 0; ci < 3; ci++) {
            const int32_t n_seqs = 5, nh = shapes[si].nh, nkv = shapes[si].nkv, hd = shapes[si].hd;
            int32_t max_ctx = 0, rows[5];
            for (int s = 0; s < n_seqs; s++) {
                max_ctx = ctx_sets[ci][s] > max_ctx ? ctx_sets[ci][s] : max_ctx;
                rows[s] = n_seqs - 1 - s;
            }
            paged p = make_paged(n_seqs, max_ctx, nkv, hd, ci == 2 ? 4.0f : 1.0f, &r);
            const size_t qn = (size_t)n_seqs * nh * hd;
            float *q = malloc(qn * sizeof *q), *got = malloc(qn * sizeof *got);
            double *want = malloc(qn * sizeof *want);
            for (size_t i = 0; i < qn; i++)
                q[i] = sn_ref_round_bf16(sn_rng_uniform(&r, -1.0f, 1.0f));
            const float scale = 1.0f / sqrtf((float)hd);
            sn_ref_attn_decode(want, q, p.k, p.v, p.tables, p.table_stride, rows, ctx_sets[ci], n_seqs, nh, nkv, hd, scale);
            for (size_t mi = 0; mi < sizeof sms / sizeof sms[0]; mi++) {
                int32_t n_splits = 0;
                cr_assert_eq(emul_attn_decode(got, q, p.k, p.v, p.tables, p.table_stride, rows, ctx_sets[ci], n_seqs, nh,
                                              nkv, hd, scale, max_ctx, sms[mi], &n_splits),
                             0, "a position was read by no split or by two");
                max_splits = n_splits > max_splits ? n_splits : max_splits;
                char what[96];
                snprintf(what, sizeof what, "decode %dx%d/%d hd %d, %d splits", n_seqs, nh, nkv, hd, n_splits);
                cr_assert_eq(sn_test_compare(what, got, want, qn, 2e-6, 1e-4), 0);
            }
            free(q);
            free(got);
            free(want);
            free_paged(&p);
        }
    cr_expect(max_splits > 8, "the cases never split a context much (%d)", max_splits);
}

Test(cuda_cpu, flash_prefill_tiling_matches_the_reference, .timeout = 300)
{
    sn_rng r = {17};
    const struct { int32_t nh, nkv, hd; } shapes[] = {{8, 8, 64}, {6, 3, 64}, {12, 3, 96}, {32, 4, 128}, {14, 2, 128}, {4, 2, 256}, {9, 3, 128}, {21, 3, 64}};
    /* (tokens, start position) of each run: single tokens, block edges, long prefixes */
    const int32_t lens[] = {1, 17, 64, 100, 5, 130, 16};
    const int32_t starts[] = {0, 0, 0, 37, 1000, 3, 15};
    const int32_t n_seqs = 7;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int32_t nh = shapes[si].nh, nkv = shapes[si].nkv, hd = shapes[si].hd;
        int32_t seq_start[8], rows[7], max_len = 0;
        seq_start[0] = 0;
        for (int32_t s = 0; s < n_seqs; s++) {
            seq_start[s + 1] = seq_start[s] + lens[s];
            rows[s] = (s * 3) % n_seqs;
            max_len = starts[s] + lens[s] > max_len ? starts[s] + lens[s] : max_len;
        }
        const int32_t n_tokens = seq_start[n_seqs];
        paged p = make_paged(n_seqs, max_len, nkv, hd, si % 2 ? 3.0f : 1.0f, &r);
        const size_t qn = (size_t)n_tokens * nh * hd;
        float *q = malloc(qn * sizeof *q), *got = malloc(qn * sizeof *got);
        double *want = malloc(qn * sizeof *want);
        for (size_t i = 0; i < qn; i++)
            q[i] = sn_ref_round_bf16(sn_rng_uniform(&r, -1.0f, 1.0f));
        const float scale = 1.0f / sqrtf((float)hd);
        sn_ref_attn_prefill(want, q, p.k, p.v, p.tables, p.table_stride, rows, seq_start, starts, n_seqs, nh, nkv, hd,
                            scale);
        char what[96];
        /* exact P: the tiling, masks and online softmax alone */
        cr_assert_eq(emul_attn_prefill(got, q, p.k, p.v, p.tables, p.table_stride, rows, seq_start, starts, n_seqs,
                                       n_tokens, nh, nkv, hd, scale, 0),
                     0, "tile invariants broken or rows written other than once");
        snprintf(what, sizeof what, "prefill %dx%d/%d hd %d, fp32 P", n_tokens, nh, nkv, hd);
        cr_assert_eq(sn_test_compare(what, got, want, qn, 2e-6, 1e-4), 0);
        /* P rounded to bf16 as the tensor cores take it: the kernel test's tolerance holds */
        cr_assert_eq(emul_attn_prefill(got, q, p.k, p.v, p.tables, p.table_stride, rows, seq_start, starts, n_seqs,
                                       n_tokens, nh, nkv, hd, scale, 1),
                     0);
        snprintf(what, sizeof what, "prefill %dx%d/%d hd %d, bf16 P", n_tokens, nh, nkv, hd);
        cr_assert_eq(sn_test_compare(what, got, want, qn, 2e-3, 1e-2), 0);
        free(q);
        free(got);
        free(want);
        free_paged(&p);
    }
}

SN_CUDA_TEST_MAIN()
