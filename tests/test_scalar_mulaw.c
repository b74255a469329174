/*
 * test_scalar_mulaw.c - the scalar.mulaw plugin end to end, through the engine's public codec
 * API (plugins/scalar_mulaw.so loaded from the build's plugin folder).
 *
 * What a user relies on: Gato's tokens exactly (mu 100, M 256, 1024 bins: 0 is id 512, 1 is
 * id 744, everything past +-256 an end bin); every value comes back within half a bin in the
 * companded domain, which in the value domain is the half bin mapped through the inverse
 * companding at that point; a real recording survives with the SNR that bound implies; any
 * chunking gives the same ids and any split of the ids the same vectors of `dims` values; and
 * bad configurations and NaN are one-line errors. The reference companding here is written
 * from the paper's formula with log and pow, not the plugin's log1p and expm1.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sensorium/sensorium.h"

static sn_plugins *plugins;

static void setup(void)
{
    cr_assert_eq(sn_plugins_open(SN_BUILD_PLUGIN_DIR, SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT,
                                 &plugins),
                 SN_OK, "%s", sn_errmsg());
}

static void teardown(void)
{
    sn_plugins_close(plugins);
    plugins = NULL;
}

TestSuite(scalar_mulaw, .init = setup, .fini = teardown);

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* splitmix64: a seeded generator, so that every failure reproduces. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t rng_below(uint64_t *s, size_t n)
{
    return (size_t)(rng_next(s) % n);
}

static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) / 9007199254740992.0;
}

static sn_codec *open_codec(const char *config)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "scalar.mulaw", config, NULL, &c), SN_OK, "config %s: %s",
                 config, sn_errmsg());
    return c;
}

static void expect_config_error(const char *config, const char *needle1, const char *needle2)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "scalar.mulaw", config, NULL, &c), SN_ERR_PLUGIN,
                 "config %s was accepted", config);
    cr_assert_null(c);
    const char *msg = sn_errmsg();
    cr_log_info("config %s -> %s", config, msg);
    cr_assert(strstr(msg, "scalar.mulaw"), "message does not name the plugin: %s", msg);
    cr_assert(strstr(msg, needle1), "message lacks '%s': %s", needle1, msg);
    if (needle2)
        cr_assert(strstr(msg, needle2), "message lacks '%s': %s", needle2, msg);
    cr_assert_null(strchr(msg, '\n'), "message is not one line: %s", msg);
}

static sn_media series(const float *v, size_t ticks, uint32_t dims, double rate, double t)
{
    sn_media m = {.kind = SN_MEDIA_SERIES, .t = t};
    m.series.values = v;
    m.series.n_ticks = ticks;
    m.series.dims = dims;
    m.series.rate_hz = rate;
    return m;
}

static sn_tokens encode_all(sn_codec *c, const float *v, size_t ticks, uint32_t dims)
{
    sn_tokens toks = {0};
    sn_media m = series(v, ticks, dims, 0.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(c, &toks), SN_OK, "%s", sn_errmsg());
    return toks;
}

typedef struct vecs {
    float *v; /* (n, dim) */
    size_t n, dim, cap;
    size_t bad;
} vecs;

static int collect(void *ctx, const sn_action *a)
{
    vecs *o = ctx;
    if (a->kind != SN_ACTION_VECTOR || (o->dim && a->vector.n != o->dim)) {
        o->bad++;
        return 0;
    }
    o->dim = a->vector.n;
    if (o->n == o->cap) {
        o->cap = o->cap ? 2 * o->cap : 64;
        o->v = realloc(o->v, o->cap * o->dim * sizeof *o->v);
        if (!o->v)
            return 1;
    }
    memcpy(o->v + o->n * o->dim, a->vector.values, o->dim * sizeof *o->v);
    o->n++;
    return 0;
}

static void vecs_free(vecs *o)
{
    free(o->v);
    memset(o, 0, sizeof *o);
}

static vecs decode_all(sn_codec *c, const int32_t *ids, size_t n)
{
    vecs o = {0};
    cr_assert_eq(sn_codec_decode(c, ids, n, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.bad, 0);
    return o;
}

/* Gato's companding, from the paper: F(x) = sign(x) log(|x| mu + 1) / log(M mu + 1), clipped. */
static const double MU = 100.0, M = 256.0;
#define B 1024

static double ref_F(double x)
{
    double f = (x < 0 ? -1 : 1) * log(fabs(x) * MU + 1) / log(M * MU + 1);
    return f > 1 ? 1 : f < -1 ? -1 : f;
}

static double ref_Finv(double f)
{
    return (f < 0 ? -1 : 1) * (pow(M * MU + 1, fabs(f)) - 1) / MU;
}

/* Centre of bin b over [-1, 1] in the companded domain. */
static double ref_centre(int32_t b)
{
    return -1.0 + (b + 0.5) * 2.0 / B;
}

/* ---------------------------------------------------------------------------------------- */
/* Identity and configuration                                                               */
/* ---------------------------------------------------------------------------------------- */

Test(scalar_mulaw, describes_itself_with_gatos_defaults)
{
    sn_codec *c = open_codec(NULL);
    const sn_plugin_info *info = sn_codec_info(c);
    cr_assert_str_eq(info->name, "scalar.mulaw");
    cr_assert_str_eq(info->version, "1.0.0");
    cr_assert_neq(info->description[0], '\0');
    cr_assert_eq(info->kind, SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER);
    cr_assert_eq(info->media_kinds, SN_MEDIA_BIT(SN_MEDIA_SERIES));
    cr_assert_eq(sn_codec_vocab_size(c), 1024);
    sn_codec_close(c);
    c = open_codec("{\"bins\": 256, \"mu\": 255, \"M\": 1, \"dims\": 4}");
    cr_assert_eq(sn_codec_vocab_size(c), 256);
    sn_codec_close(c);
    c = open_codec("{\"mu\": 100, \"M\": 256.0}"); /* integers where numbers are asked */
    sn_codec_close(c);
}

Test(scalar_mulaw, bad_configuration_is_a_one_line_error_naming_the_key)
{
    expect_config_error("{\"bins\": 0}", "'bins'", "2 to 65536");
    expect_config_error("{\"bins\": 1}", "'bins'", "2 to 65536");
    expect_config_error("{\"bins\": 100000}", "'bins'", NULL);
    expect_config_error("{\"bins\": \"x\"}", "bins", NULL);
    expect_config_error("{\"mu\": 0}", "'mu'", "greater than 0");
    expect_config_error("{\"mu\": -5}", "'mu'", NULL);
    expect_config_error("{\"mu\": 1e7}", "'mu'", "at most");
    expect_config_error("{\"mu\": \"big\"}", "mu", NULL);
    expect_config_error("{\"M\": 0}", "'M'", NULL);
    expect_config_error("{\"M\": -1}", "'M'", NULL);
    expect_config_error("{\"dims\": 0}", "'dims'", NULL);
    expect_config_error("{\"dims\": 70000}", "'dims'", NULL);
    expect_config_error("{\"m\": 256}", "m", NULL); /* keys are case-sensitive: a typo */
    expect_config_error("{\"low\": [0]}", "low", NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* Tokens                                                                                   */
/* ---------------------------------------------------------------------------------------- */

Test(scalar_mulaw, gatos_tokens)
{
    sn_codec *c = open_codec(NULL);
    /* Worked by hand: log(25601) = 10.1506; F(1) = log(101)/10.1506 = 0.45466, bin
     * floor(1.45466 / 2 * 1024) = 744; F(0.01) = log 2 / 10.1506 = 0.06829 -> 546; F(0) = 0 ->
     * the bin [0, 1/512), 512; |x| >= 256 -> F clipped to +-1 -> the end bins. */
    float x[] = {0.0f, 1.0f, -1.0f, 0.01f, 256.0f, -256.0f, 1e6f, -1e30f, INFINITY, -INFINITY,
                 -0.0f};
    int32_t want[] = {512, 744, 279, 546, 1023, 0, 1023, 0, 1023, 0, 512};
    size_t n = sizeof x / sizeof *x;
    sn_tokens toks = encode_all(c, x, n, 1);
    cr_assert_eq(toks.n, n);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(toks.ids[i], want[i], "x = %g: id %d, want %d", (double)x[i], toks.ids[i],
                     want[i]);
    sn_tokens_clear(&toks);
    sn_codec_close(c);
}

Test(scalar_mulaw, any_dims_one_token_per_value_row_major)
{
    sn_codec *c = open_codec(NULL);
    float x[6] = {0.0f, 1.0f, -1.0f, 256.0f, 0.01f, -256.0f}; /* 2 ticks x 3 */
    sn_tokens toks = encode_all(c, x, 2, 3);
    int32_t want[6] = {512, 744, 279, 1023, 546, 0};
    cr_assert_eq(toks.n, 6);
    cr_assert_eq(memcmp(toks.ids, want, sizeof want), 0);
    sn_tokens_clear(&toks);
    /* And a different width in the next chunk: every value is a token on its own. */
    sn_media m = series(x, 1, 6, 0.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(memcmp(toks.ids, want, sizeof want), 0);
    sn_tokens_clear(&toks);
    sn_codec_close(c);
}

/*
 * The sweep: x over [-1000, 1000] densely, magnitudes from 1e-8 to 1e3 on a log scale, and the
 * preimage of every companded bin edge with its float neighbours. For each x:
 *   companded: |centre(id) - F(x)| <= h, half a bin (h = 1/1024 of the width 2 of [-1, 1]),
 *     with F(x) clipped to [-1, 1] (so values past +-M sit in the end bins);
 *   value, for |x| <= M: the decoded value lies between F^-1(F(x) - h) and F^-1(F(x) + h), the
 *     half bin mapped through the inverse at that point; slack: a float32 rounding (2^-24
 *     relative) of the decoded value and 1e-9 of h for the bin index near an edge;
 *   value, for |x| > M: exactly the end bin's value.
 */
Test(scalar_mulaw, every_value_within_half_a_bin_companded_and_its_image_in_values)
{
    sn_codec *c = open_codec(NULL);
    size_t n_lin = 2000001, n_log = 2 * 200001, n_edge = 3 * B;
    size_t n = n_lin + n_log + n_edge;
    float *x = malloc(n * sizeof *x);
    cr_assert_not_null(x);
    size_t k = 0;
    for (size_t i = 0; i < n_lin; i++)
        x[k++] = (float)(-1000.0 + 2000.0 * (double)i / (double)(n_lin - 1));
    for (size_t i = 0; i < n_log / 2; i++) {
        double mag = pow(10.0, -8.0 + 11.0 * (double)i / (double)(n_log / 2 - 1));
        x[k++] = (float)mag;
        x[k++] = (float)-mag;
    }
    for (int b = 0; b < B; b++) {
        float e = (float)ref_Finv(-1.0 + 2.0 * b / B);
        x[k++] = e;
        x[k++] = nextafterf(e, -INFINITY);
        x[k++] = nextafterf(e, INFINITY);
    }
    cr_assert_eq(k, n);
    sn_tokens toks = encode_all(c, x, n, 1);
    cr_assert_eq(toks.n, n);
    vecs o = decode_all(c, toks.ids, toks.n);
    cr_assert_eq(o.n, n);

    const double h = 1.0 / B;
    double worst_c = 0, worst_ratio = 0, worst_abs = 0;
    size_t worst_c_at = 0, worst_v_at = 0;
    for (size_t i = 0; i < n; i++) {
        double v = x[i], f = ref_F(v), got = o.v[i];
        double ec = fabs(ref_centre(toks.ids[i]) - f);
        if (ec > worst_c) {
            worst_c = ec;
            worst_c_at = i;
        }
        if (fabs(v) > M) {
            double end = ref_Finv(ref_centre(v > 0 ? B - 1 : 0));
            cr_assert_float_eq(got, end, 1e-4 * fabs(end), "x %g: %g, end bin %g", v, got, end);
            continue;
        }
        double lo = ref_Finv(f - h * (1 + 1e-9)), hi = ref_Finv(f + h * (1 + 1e-9));
        double slack = ldexp(fabs(got), -24);
        double bound = fmax(fabs(hi - v), fabs(v - lo)) + slack;
        double e = fabs(got - v);
        cr_assert(got >= lo - slack && got <= hi + slack,
                  "x %.9g: decoded %.9g outside [%.9g, %.9g]", v, got, lo, hi);
        if (e / bound > worst_ratio) {
            worst_ratio = e / bound;
            worst_v_at = i;
        }
        if (e > worst_abs)
            worst_abs = e;
    }
    cr_log_info("companded: max |centre - F(x)| = %.6g (x = %g), half a bin = %.6g", worst_c,
                (double)x[worst_c_at], h);
    fprintf(stderr, "scalar.mulaw sweep over [-1e3, 1e3]: max companded error %.6f of a bin (bound 0.5); "
                    "max value error %.4f of its mapped half-bin bound (at x = %g); max absolute value error %.4g (|x| <= 256)\n",
            worst_c / (2 * h), worst_ratio, (double)x[worst_v_at], worst_abs);
    cr_assert_leq(worst_c, h * (1 + 1e-9), "x %.9g: companded error %.9g", (double)x[worst_c_at],
                  worst_c);
    cr_assert_leq(worst_ratio, 1.0);
    vecs_free(&o);
    sn_tokens_clear(&toks);
    free(x);
    sn_codec_close(c);
}

Test(scalar_mulaw, real_recording_snr_meets_the_bound_of_the_bins)
{
    /*
     * Speech samples scaled to +-256 (Gato's M) as a 1-D series. The per-value bound above,
     * written out: with L = log(M mu + 1), |decoded - x| <= (|x| + 1/mu) (e^{L h} - 1) for
     * |x| <= M (the half bin h multiplies 1 + mu |x| = e^{L F(x)} by at most e^{L h}). So
     * noise power <= (e^{L h} - 1)^2 mean((|x| + 1/mu)^2), and the SNR is at least
     * 10 log10(mean(x^2) / that): about 40 dB for 1024 bins.
     */
    sn_media wav = {0};
    cr_assert_eq(sn_media_read(SN_TESTDATA_DIR "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav", &wav),
                 SN_OK, "%s", sn_errmsg());
    size_t n = wav.audio.n_samples;
    float *x = malloc(n * sizeof *x);
    cr_assert_not_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = 256.0f * wav.audio.samples[i];
    sn_codec *c = open_codec(NULL);
    sn_tokens toks = encode_all(c, x, n, 1);
    vecs o = decode_all(c, toks.ids, toks.n);
    cr_assert_eq(o.n, n);
    double sig = 0, noise = 0, env = 0, L = log(M * MU + 1), h = 1.0 / B;
    double per = expm1(L * h);
    for (size_t i = 0; i < n; i++) {
        double e = (double)o.v[i] - x[i];
        cr_assert_leq(fabs(e), (fabs(x[i]) + 1 / MU) * per * (1 + 1e-6) + ldexp(fabs(o.v[i]), -24),
                      "sample %zu: %g -> %g", i, (double)x[i], (double)o.v[i]);
        sig += (double)x[i] * x[i];
        noise += e * e;
        env += (fabs(x[i]) + 1 / MU) * (fabs(x[i]) + 1 / MU);
    }
    double snr = 10 * log10(sig / noise), bound = 10 * log10(sig / (per * per * env));
    fprintf(stderr, "scalar.mulaw on %zu samples of read speech (x256): SNR %.2f dB (bound %.2f dB)\n",
            n, snr, bound);
    cr_assert_geq(snr, bound);
    cr_assert_geq(bound, 35.0, "the bound itself: 1024 bins give about 40 dB on speech");
    vecs_free(&o);
    sn_tokens_clear(&toks);
    free(x);
    sn_media_release(&wav);
    sn_codec_close(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Bad series                                                                               */
/* ---------------------------------------------------------------------------------------- */

Test(scalar_mulaw, nan_is_an_error_naming_tick_and_dimension)
{
    sn_codec *c = open_codec(NULL);
    float x[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    x[10] = NAN; /* tick 3, dimension 1 of 4 ticks x 3 */
    sn_tokens toks = {0};
    sn_media m = series(x, 4, 3, 10.0, 1.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_ERR_PLUGIN);
    cr_log_info("%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "tick 3"), "%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "t = 1.3 s"), "%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "dimension 1"), "%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "NaN"), "%s", sn_errmsg());
    cr_assert_eq(toks.n, 0, "a failed chunk emits nothing");
    /* Empty chunks are fine; zero dims and NULL values are not. */
    m = series(x, 0, 3, 10.0, 1.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(toks.n, 0);
    m = series(x, 2, 0, 10.0, 1.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "0 dims"), "%s", sn_errmsg());
    m = series(NULL, 2, 3, 10.0, 1.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_ERR_PLUGIN);
    /* The stream carries on. */
    m = series(x, 3, 3, 10.0, 1.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(toks.n, 9);
    /* Other media is refused by kind. */
    sn_media t = {.kind = SN_MEDIA_TEXT};
    t.text.utf8 = "1 2 3";
    t.text.len = 5;
    cr_assert_neq(sn_codec_encode(c, &t, &toks), SN_OK);
    cr_assert(strstr(sn_errmsg(), "text"), "%s", sn_errmsg());
    sn_tokens_clear(&toks);
    sn_codec_close(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Streaming                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Proprioception-like: 4 joints wandering over +-300 (some past M), seeded. */
static float *wander(size_t ticks, uint32_t D, uint64_t seed)
{
    float *x = malloc(ticks * D * sizeof *x);
    cr_assert_not_null(x);
    for (uint32_t d = 0; d < D; d++) {
        double v = 0;
        for (size_t i = 0; i < ticks; i++) {
            v += (rng_unit(&seed) - 0.5) * (1 + d * 5);
            x[i * D + d] = (float)v;
        }
    }
    return x;
}

Test(scalar_mulaw, any_chunking_gives_the_ids_of_the_whole)
{
    sn_codec *c = open_codec(NULL);
    size_t ticks = 2000;
    float *x = wander(ticks, 4, 8);
    sn_tokens whole = encode_all(c, x, ticks, 4);
    cr_assert_eq(whole.n, ticks * 4);
    uint64_t seed = 17;
    for (int trial = 0; trial < 100; trial++) {
        sn_tokens part = {0};
        size_t max_chunk = 1 + rng_below(&seed, trial % 2 ? 4 : 300);
        for (size_t at = 0; at < ticks;) {
            size_t k = rng_below(&seed, max_chunk + 1);
            if (k > ticks - at)
                k = ticks - at;
            sn_media m = series(x + at * 4, k, 4, 50.0, (double)at / 50.0);
            cr_assert_eq(sn_codec_encode(c, &m, &part), SN_OK, "%s", sn_errmsg());
            at += k;
        }
        cr_assert_eq(sn_codec_encode_flush(c, &part), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(part.n, whole.n);
        cr_assert_eq(memcmp(part.ids, whole.ids, whole.n * sizeof *whole.ids), 0, "trial %d", trial);
        sn_tokens_clear(&part);
    }
    sn_tokens_clear(&whole);
    free(x);
    sn_codec_close(c);
}

Test(scalar_mulaw, decoder_groups_dims_values_and_any_split_gives_the_same_vectors)
{
    sn_codec *c = open_codec("{\"dims\": 4}");
    size_t ticks = 40;
    float *x = wander(ticks, 4, 9);
    sn_tokens toks = encode_all(c, x, ticks, 4);
    vecs whole = decode_all(c, toks.ids, toks.n);
    cr_assert_eq(whole.n, ticks);
    cr_assert_eq(whole.dim, 4);
    for (size_t k = 0; k <= toks.n; k++) {
        vecs o = {0};
        cr_assert_eq(sn_codec_decode(c, toks.ids, k, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.n, k / 4);
        cr_assert_eq(sn_codec_decode(c, toks.ids + k, toks.n - k, 0.0, collect, &o), SN_OK, "%s",
                     sn_errmsg());
        cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.n, whole.n);
        cr_assert_eq(memcmp(o.v, whole.v, whole.n * 4 * sizeof *o.v), 0, "split at %zu", k);
        vecs_free(&o);
    }
    /* The default dims 1: one event per value. */
    sn_codec *c1 = open_codec(NULL);
    vecs o = decode_all(c1, toks.ids, toks.n);
    cr_assert_eq(o.n, toks.n);
    cr_assert_eq(o.dim, 1);
    cr_assert_eq(memcmp(o.v, whole.v, toks.n * sizeof *o.v), 0);
    vecs_free(&o);
    sn_codec_close(c1);
    vecs_free(&whole);
    sn_tokens_clear(&toks);
    free(x);
    sn_codec_close(c);
}

Test(scalar_mulaw, flush_mid_vector_is_an_error_and_resets)
{
    sn_codec *c = open_codec("{\"dims\": 3}");
    int32_t ids[5] = {512, 744, 279, 1023, 0};
    vecs o = {0};
    cr_assert_eq(sn_codec_decode(c, ids, 5, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 1);
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_ERR_PLUGIN);
    cr_log_info("%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "segment ended mid-vector: 2 of 3 values"), "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode(c, ids, 3, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 2, "reset: three ids make one vector again");
    cr_assert_float_eq(o.v[3], ref_Finv(ref_centre(512)), 1e-9);
    cr_assert_float_eq(o.v[4], ref_Finv(ref_centre(744)), 1e-6);
    vecs_free(&o);
    sn_codec_close(c);
}

Test(scalar_mulaw, constrain_keeps_segments_to_whole_vectors)
{
    uint64_t allowed[16];
    int32_t seg[32] = {0};
    int may_end;
    for (uint32_t dims = 1; dims <= 3; dims++) {
        char cfg[32];
        snprintf(cfg, sizeof cfg, "{\"dims\": %u}", dims);
        sn_codec *c = open_codec(cfg);
        for (size_t n = 0; n < 20; n++) {
            cr_assert_eq(sn_codec_constrain(c, seg, n, allowed, &may_end), SN_OK, "%s", sn_errmsg());
            for (int w = 0; w < 16; w++)
                cr_assert_eq(allowed[w], ~0ull, "dims %u n %zu: every id allowed", dims, n);
            cr_assert_eq(may_end, n > 0 && n % dims == 0, "dims %u n %zu", dims, n);
        }
        sn_codec_close(c);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* The plugin called directly: the time of each id                                         */
/* ---------------------------------------------------------------------------------------- */

static const char *fake_key(const sn_host *h, size_t i)
{
    (void)h, (void)i;
    return NULL;
}
static void fake_log(const sn_host *h, sn_log_level l, const char *fmt, ...)
{
    (void)h, (void)l, (void)fmt;
}
static sn_plugin_status nf_int(const sn_host *h, const char *k, int64_t *o, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static sn_plugin_status nf_float(const sn_host *h, const char *k, double *o, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static sn_plugin_status nf_bool(const sn_host *h, const char *k, int *o, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static sn_plugin_status nf_string(const sn_host *h, const char *k, const char **o, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static sn_plugin_status nf_ints(const sn_host *h, const char *k, int64_t *o, size_t cap,
                                size_t *n, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)cap, (void)n, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static sn_plugin_status nf_floats(const sn_host *h, const char *k, double *o, size_t cap,
                                  size_t *n, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)cap, (void)n, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static sn_plugin_status nf_strings(const sn_host *h, const char *k, const char **o, size_t cap,
                                   size_t *n, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)cap, (void)n, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static const char *no_dir(const sn_host *h)
{
    (void)h;
    return NULL;
}

typedef struct calls {
    size_t n_ids;
    double t_of_id[512];
} calls;

static sn_plugin_status record(void *ctx, const int32_t *ids, size_t n, double t)
{
    (void)ids;
    calls *c = ctx;
    for (size_t i = 0; i < n && c->n_ids < 512; i++)
        c->t_of_id[c->n_ids++] = t;
    return SN_PLUGIN_OK;
}

Test(scalar_mulaw, values_of_tick_i_carry_t_plus_i_over_rate)
{
    void *so = dlopen(SN_BUILD_PLUGIN_DIR "/scalar_mulaw.so", RTLD_NOW | RTLD_LOCAL);
    cr_assert_not_null(so, "%s", dlerror());
    sn_plugin_entry_fn entry = (sn_plugin_entry_fn)dlsym(so, SN_PLUGIN_ENTRY_SYMBOL);
    cr_assert_not_null(entry);
    const sn_plugin_desc *d = entry(0);
    sn_host host = {
        .struct_size = sizeof host, .abi_major = SN_PLUGIN_ABI_MAJOR,
        .abi_minor = SN_PLUGIN_ABI_MINOR, .log = fake_log, .config_int = nf_int,
        .config_float = nf_float, .config_bool = nf_bool, .config_string = nf_string,
        .config_int_array = nf_ints, .config_float_array = nf_floats,
        .config_string_array = nf_strings, .config_key = fake_key, .data_dir = no_dir,
    };
    sn_plugin_error err = {{0}};
    sn_instance *inst = NULL;
    sn_stream *st = NULL;
    cr_assert_eq(d->create(&host, &inst, &err), SN_PLUGIN_OK, "%s", err.message);
    cr_assert_eq(d->open_stream(inst, &st, &err), SN_PLUGIN_OK, "%s", err.message);
    float x[300];
    for (int i = 0; i < 300; i++)
        x[i] = (float)(i - 150);
    calls c = {0};
    sn_token_sink sink = {&c, record};
    sn_media m = series(x, 100, 3, 10.0, 4.0);
    cr_assert_eq(d->encode(st, &m, &sink, &err), SN_PLUGIN_OK, "%s", err.message);
    cr_assert_eq(c.n_ids, 300);
    for (size_t k = 0; k < 300; k++)
        cr_assert_float_eq(c.t_of_id[k], 4.0 + (double)(k / 3) / 10.0, 1e-9, "id %zu", k);
    sn_media a = {.kind = SN_MEDIA_IMAGE};
    cr_assert_eq(d->encode(st, &a, &sink, &err), SN_PLUGIN_ERR_INVALID);
    cr_assert(strstr(err.message, "image"), "%s", err.message);
    d->close_stream(st);
    d->destroy(inst);
    dlclose(so);
}
