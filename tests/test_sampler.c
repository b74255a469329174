/*
 * test_sampler.c - the sampler against plain references: Philox known answers, the exact
 * support of top-k/top-p/min-p against a full sort, masks, repetition penalty, and the
 * empirical frequencies of many seeded draws against the distribution (chi-square); the
 * penalised ids given as bits (what a backend is handed) against the history.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"

static uint64_t rng_state;

static double unit(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

static sn_sampling params(float t, int k, float p, float minp, float rep)
{
    return (sn_sampling){.temperature = t, .top_k = k, .top_p = p, .min_p = minp, .repetition_penalty = rep};
}

Test(sampler, philox_known_answers)
{
    /* Random123's kat_vectors for philox4x32_10 */
    struct { uint32_t ctr[4], key[2], out[4]; } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        sn_philox4x32(out, kat[i].ctr, kat[i].key);
        cr_expect_arr_eq(out, kat[i].out, sizeof out, "KAT %d", i);
    }
}

Test(sampler, philox_uniform_is_uniform_and_repeatable)
{
    enum { N = 1000000, BINS = 16 };
    long bins[BINS] = {0};
    double sum = 0;
    for (uint64_t s = 0; s < N; s++) {
        float u = sn_philox_uniform(42, s);
        cr_assert(u >= 0.0f && u < 1.0f);
        sum += u;
        bins[(int)(u * BINS)]++;
    }
    cr_expect_eq(sn_philox_uniform(42, 7), sn_philox_uniform(42, 7));
    cr_expect_neq(sn_philox_uniform(42, 7), sn_philox_uniform(43, 7));
    double chi = 0, expect = (double)N / BINS;
    for (int b = 0; b < BINS; b++)
        chi += (bins[b] - expect) * (bins[b] - expect) / expect;
    /* df = 15: the 0.001 critical value is 37.70 */
    fprintf(stderr, "philox uniform: mean %.5f, chi-square %.2f (df 15, critical 37.70)\n", sum / N, chi);
    cr_expect_lt(fabs(sum / N - 0.5), 0.002);
    cr_expect_lt(chi, 37.70);
}

static const double *ref_p;

/* Probability descending, then id ascending: a full sort of the vocabulary. */
static int ref_cmp(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    if (ref_p[x] != ref_p[y])
        return ref_p[x] > ref_p[y] ? -1 : 1;
    return (x > y) - (x < y);
}

/* The reference support: rank all allowed ids by (p desc, id asc) and apply the filters in
 * the documented order, with a full sort. */
static int ref_support(const float *logits, int V, const sn_sampling *s, uint8_t *keep)
{
    cr_assert_gt(V, 0);
    double *p = malloc((size_t)V * sizeof *p);
    int *order = malloc((size_t)V * sizeof *order);
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < V; i++)
        mx = fmax(mx, (double)logits[i]);
    for (int i = 0; i < V; i++) {
        p[i] = exp(((double)logits[i] - mx) / s->temperature);
        sum += p[i];
        order[i] = i;
    }
    for (int i = 0; i < V; i++)
        p[i] /= sum;
    ref_p = p;
    qsort(order, (size_t)V, sizeof *order, ref_cmp);
    int n = V;
    if (s->top_k > 0 && s->top_k < n)
        n = s->top_k;
    if (s->top_p < 1.0f) {
        double mass = 0, acc = 0;
        for (int j = 0; j < n; j++)
            mass += p[order[j]];
        for (int j = 0; j < n; j++) {
            acc += p[order[j]];
            if (acc >= s->top_p * mass) {
                n = j + 1;
                break;
            }
        }
    }
    for (int i = 0; i < V; i++)
        keep[i] = 0;
    double pmax = p[order[0]];
    int m = 0;
    for (int j = 0; j < n; j++)
        if (s->min_p == 0 || p[order[j]] >= s->min_p * pmax) {
            keep[order[j]] = 1;
            m++;
        }
    free(p);
    free(order);
    return m;
}

Test(sampler, filters_keep_exactly_the_right_support)
{
    const int sizes[] = {1, 2, 7, 1000, 128256};
    sn_sampling cases[] = {
        params(1.0f, 5, 1.0f, 0.0f, 1.0f), params(0.7f, 0, 0.9f, 0.0f, 1.0f),
        params(1.0f, 0, 1.0f, 0.05f, 1.0f), params(1.3f, 40, 0.8f, 0.02f, 1.0f),
        params(1.0f, 1, 1.0f, 0.0f, 1.0f), params(0.5f, 0, 0.5f, 0.0f, 1.0f),
    };
    rng_state = 7;
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        int V = sizes[si];
        sn_sampler smp;
        cr_assert_eq(sn_sampler_init(&smp, V), SN_OK);
        float *logits = malloc((size_t)V * sizeof *logits), *probs = malloc((size_t)V * sizeof *probs);
        uint8_t *keep = malloc((size_t)V);
        int rounds = V > 10000 ? 2 : 40;
        for (int r = 0; r < rounds; r++) {
            for (int i = 0; i < V; i++) /* coarse values make ties common */
                logits[i] = r % 2 ? (float)floor(unit() * 8) : (float)(unit() * 10 - 5);
            for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
                int want = ref_support(logits, V, &cases[c], keep);
                int got = sn_sample_distribution(&smp, logits, NULL, &cases[c], NULL, 0, probs);
                cr_assert_eq(got, want, "V %d case %zu round %d: kept %d, reference %d", V, c, r, got, want);
                double total = 0;
                for (int i = 0; i < V; i++) {
                    cr_assert_eq(probs[i] > 0, keep[i] != 0, "V %d case %zu: id %d kept %d vs %d", V, c, i,
                                 probs[i] > 0, keep[i]);
                    total += probs[i];
                }
                cr_assert_float_eq(total, 1.0, 1e-5);
                int32_t tok = sn_sample(&smp, logits, NULL, &cases[c], NULL, 0, 99, (uint64_t)r);
                cr_assert(tok >= 0 && tok < V && keep[tok], "sampled %d outside the support", tok);
            }
        }
        free(logits);
        free(probs);
        free(keep);
        sn_sampler_free(&smp);
    }
}

Test(sampler, greedy_takes_the_lowest_id_on_ties)
{
    sn_sampler smp;
    cr_assert_eq(sn_sampler_init(&smp, 6), SN_OK);
    const float l[] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f, 2.0f};
    sn_sampling g = sn_sampling_default();
    cr_expect_eq(sn_sample(&smp, l, NULL, &g, NULL, 0, 1, 0), 1);
    uint64_t mask = (1u << 3) | (1u << 4) | (1u << 5);
    cr_expect_eq(sn_sample(&smp, l, &mask, &g, NULL, 0, 1, 0), 3);
    mask = 0;
    cr_expect_eq(sn_sample(&smp, l, &mask, &g, NULL, 0, 1, 0), -1, "nothing allowed");
    sn_sampler_free(&smp);
}

/* Every allowed logit -inf (the model rules them all out): the lowest allowed id, under every
 * filter, as the CUDA sampler does; never a read outside the candidates. */
Test(sampler, all_allowed_logits_minus_infinity)
{
    sn_sampler smp;
    cr_assert_eq(sn_sampler_init(&smp, 6), SN_OK);
    const float l[] = {2.0f, -INFINITY, 1.0f, -INFINITY, -INFINITY, 3.0f};
    uint64_t mask = (1u << 1) | (1u << 3) | (1u << 4);
    const sn_sampling ps[] = {params(1.0f, 0, 1.0f, 0.1f, 1.0f), params(0.7f, 2, 0.9f, 0.0f, 1.3f),
                              params(0.0f, 0, 1.0f, 0.0f, 1.0f)};
    float probs[6];
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) {
        cr_expect_eq(sn_sample(&smp, l, &mask, &ps[i], NULL, 0, 1, 0), 1, "params %zu", i);
        cr_expect_eq(sn_sample_distribution(&smp, l, &mask, &ps[i], NULL, 0, probs), 1);
        cr_expect_eq(probs[1], 1.0f);
    }
    sn_sampler_free(&smp);
}

Test(sampler, masks_are_never_crossed)
{
    enum { V = 300 };
    sn_sampler smp;
    cr_assert_eq(sn_sampler_init(&smp, V), SN_OK);
    float logits[V];
    uint64_t mask[(V + 63) / 64];
    rng_state = 11;
    sn_sampling hot = params(2.0f, 0, 1.0f, 0.0f, 1.0f);
    for (int r = 0; r < 3000; r++) {
        for (int i = 0; i < V; i++)
            logits[i] = (float)(unit() * 20 - 10);
        memset(mask, 0, sizeof mask);
        int mode = r % 3;
        for (int i = 0; i < V; i++) {
            int on = mode == 0 ? i == (r * 7) % V : mode == 1 ? i != (r * 7) % V : unit() < 0.1;
            if (on)
                mask[i / 64] |= (uint64_t)1 << (i % 64);
        }
        int any = 0;
        for (int w = 0; w < (V + 63) / 64; w++)
            any |= mask[w] != 0;
        int32_t t = sn_sample(&smp, logits, mask, &hot, NULL, 0, 5, (uint64_t)r);
        if (!any)
            cr_assert_eq(t, -1);
        else
            cr_assert(t >= 0 && (mask[t / 64] >> (t % 64) & 1), "round %d sampled masked id %d", r, t);
    }
    sn_sampler_free(&smp);
}

Test(sampler, repetition_penalty_once_per_distinct_id)
{
    sn_sampler smp;
    cr_assert_eq(sn_sampler_init(&smp, 4), SN_OK);
    const float l[] = {2.0f, -2.0f, 1.0f, 1.9f};
    float probs[4];
    const int32_t hist[] = {0, 0, 0, 1};
    sn_sampling s = params(1.0f, 0, 1.0f, 0.0f, 2.0f);
    sn_sample_distribution(&smp, l, NULL, &s, hist, 4, probs);
    /* penalised logits: 1.0 (2/2, once), -4.0 (-2*2), 1.0, 1.9 */
    double e[] = {exp(1.0), exp(-4.0), exp(1.0), exp(1.9)}, z = e[0] + e[1] + e[2] + e[3];
    for (int i = 0; i < 4; i++)
        cr_expect_float_eq(probs[i], e[i] / z, 1e-6, "id %d: %g vs %g", i, probs[i], e[i] / z);
    sn_sampling g = params(0.0f, 0, 1.0f, 0.0f, 2.0f);
    cr_expect_eq(sn_sample(&smp, l, NULL, &g, hist, 4, 0, 0), 3, "greedy after the penalty");
    sn_sampler_free(&smp);
}

/* What a backend is handed (the penalised ids as bits) gives the history's token. */
Test(sampler, seen_bits_give_the_history_token)
{
    enum { V = 1000, W = (V + 63) / 64 };
    sn_sampler smp;
    cr_assert_eq(sn_sampler_init(&smp, V), SN_OK);
    float l[V];
    int32_t hist[300];
    uint64_t allowed[W], seen[W];
    rng_state = 77;
    int differ = 0, penalised = 0;
    for (int c = 0; c < 400; c++) {
        for (int i = 0; i < V; i++)
            l[i] = (float)(unit() * 8.0 - 4.0);
        const size_t n = 1 + (size_t)(unit() * 299);
        for (size_t h = 0; h < n; h++)
            hist[h] = (int32_t)(unit() * (c % 2 ? 40 : V)); /* few ids, or spread */
        for (int w = 0; w < W; w++)
            allowed[w] = c % 3 ? ~(uint64_t)0 : (uint64_t)(unit() * 0x1p53) * 2654435761u;
        allowed[W - 1] &= ((uint64_t)1 << (V % 64)) - 1;
        const float temps[] = {0.0f, 0.7f, 1.5f};
        sn_sampling s = params(temps[c % 3], c % 4 ? 0 : 50, c % 5 ? 1.0f : 0.9f, c % 7 ? 0.0f : 0.05f,
                               c % 2 ? 1.3f : 0.8f);
        sn_seen_bits(seen, V, hist, n);
        const int32_t a = sn_sample(&smp, l, allowed, &s, hist, n, 5, (uint64_t)c);
        const int32_t b = sn_sample_seen(&smp, l, allowed, &s, seen, 5, (uint64_t)c);
        differ += a != b;
        sn_sampling plain = s;
        plain.repetition_penalty = 1.0f;
        penalised += sn_sample(&smp, l, allowed, &plain, hist, n, 5, (uint64_t)c) != a;
        cr_expect_eq(sn_sample_seen(&smp, l, allowed, &plain, NULL, 5, (uint64_t)c),
                     sn_sample(&smp, l, allowed, &plain, NULL, 0, 5, (uint64_t)c));
    }
    cr_expect_eq(differ, 0, "%d of 400 draws differ between history and seen bits", differ);
    cr_expect_gt(penalised, 40, "the penalty changed only %d of 400 draws: the cases test little", penalised);
    sn_sampler_free(&smp);
}

Test(sampler, frequencies_match_the_distribution)
{
    enum { V = 20, N = 200000 };
    sn_sampler smp;
    cr_assert_eq(sn_sampler_init(&smp, V), SN_OK);
    float logits[V], probs[V];
    for (int i = 0; i < V; i++)
        logits[i] = (float)(0.15 * i - 0.01 * i * i);
    sn_sampling s = params(0.8f, 0, 1.0f, 0.0f, 1.0f);
    sn_sample_distribution(&smp, logits, NULL, &s, NULL, 0, probs);
    long count[V] = {0};
    for (uint64_t step = 0; step < N; step++)
        count[sn_sample(&smp, logits, NULL, &s, NULL, 0, 2024, step)]++;
    double chi = 0;
    for (int i = 0; i < V; i++) {
        double e = probs[i] * N;
        chi += (count[i] - e) * (count[i] - e) / e;
    }
    /* df = 19: the 0.001 critical value is 43.82 */
    fprintf(stderr, "sampler frequencies: chi-square %.2f (df 19, critical 43.82 at p = 0.001)\n", chi);
    cr_expect_lt(chi, 43.82);
    sn_sampler_free(&smp);
}

Test(sampler, parameters_are_checked)
{
    sn_sampling s = sn_sampling_default();
    cr_expect_eq(sn_sampling_check(&s), SN_OK);
    s.temperature = -1;
    cr_expect_eq(sn_sampling_check(&s), SN_ERR_CONFIG);
    cr_expect_not_null(strstr(sn_errmsg(), "temperature"));
    s = sn_sampling_default();
    s.top_p = 1.5f;
    cr_expect_eq(sn_sampling_check(&s), SN_ERR_CONFIG);
    s = sn_sampling_default();
    s.min_p = -0.1f;
    cr_expect_eq(sn_sampling_check(&s), SN_ERR_CONFIG);
    s = sn_sampling_default();
    s.repetition_penalty = 0;
    cr_expect_eq(sn_sampling_check(&s), SN_ERR_CONFIG);
    s = sn_sampling_default();
    s.top_k = -3;
    cr_expect_eq(sn_sampling_check(&s), SN_ERR_CONFIG);
}
