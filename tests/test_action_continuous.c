/*
 * test_action_continuous.c - the action.continuous plugin end to end, through the engine's
 * public codec API (plugins/action_continuous.so loaded from the build's plugin folder).
 *
 * What a user relies on, for a 7-joint arm (the Franka Panda's joint limits): D tokens decode
 * to one vector of D joint targets, each within half a bin of what was tokenized, however
 * decode calls split the tokens; a segment that follows constrain() is exactly
 * `actions_per_segment` whole actions, so the robot never receives half an action; recorded
 * actions tokenize the same however they are chunked, with the same bins as sensor.bins; and
 * every wrong configuration or series is a one-line error naming the key or the joint.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

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

TestSuite(action_continuous, .init = setup, .fini = teardown);

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

/* The Franka Panda's joint limits (rad). */
#define D 7
static const double LOW[D] = {-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973};
static const double HIGH[D] = {2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973};
#define RANGES                                                                                 \
    "\"low\": [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973], "             \
    "\"high\": [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]"
#define NAMES                                                                                  \
    "\"names\": [\"panda_joint1\", \"panda_joint2\", \"panda_joint3\", \"panda_joint4\", "    \
    "\"panda_joint5\", \"panda_joint6\", \"panda_joint7\"]"
static const char CONFIG[] = "{" RANGES ", " NAMES "}";

static sn_codec *open_codec(const char *config)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "action.continuous", config, NULL, &c), SN_OK,
                 "config %s: %s", config, sn_errmsg());
    return c;
}

static void expect_config_error(const char *config, const char *needle1, const char *needle2)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "action.continuous", config, NULL, &c), SN_ERR_PLUGIN,
                 "config %s was accepted", config);
    cr_assert_null(c);
    const char *msg = sn_errmsg();
    cr_log_info("config %s -> %s", config, msg);
    cr_assert(strstr(msg, "action.continuous"), "message does not name the plugin: %s", msg);
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
    sn_media m = series(v, ticks, dims, 10.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(c, &toks), SN_OK, "%s", sn_errmsg());
    return toks;
}

typedef struct vecs {
    float *v;  /* (n, dim) */
    double *t; /* (n) */
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
        o->t = realloc(o->t, o->cap * sizeof *o->t);
        if (!o->v || !o->t)
            return 1;
    }
    memcpy(o->v + o->n * o->dim, a->vector.values, o->dim * sizeof *o->v);
    o->t[o->n++] = a->t;
    return 0;
}

static void vecs_free(vecs *o)
{
    free(o->v);
    free(o->t);
    memset(o, 0, sizeof *o);
}

/* A seeded trajectory of joint targets inside the limits: smooth sinusoids per joint. */
static float *trajectory(size_t ticks, uint64_t seed)
{
    float *x = malloc(ticks * D * sizeof *x);
    cr_assert_not_null(x);
    for (int d = 0; d < D; d++) {
        double mid = 0.5 * (LOW[d] + HIGH[d]), amp = 0.45 * (HIGH[d] - LOW[d]);
        double f = 0.05 + 0.3 * rng_unit(&seed), ph = 6.28 * rng_unit(&seed);
        for (size_t i = 0; i < ticks; i++)
            x[i * D + d] = (float)(mid + amp * sin(f * (double)i + ph));
    }
    return x;
}

static size_t count_allowed(const uint64_t *allowed, uint32_t vocab)
{
    size_t k = 0;
    for (uint32_t i = 0; i < vocab; i++)
        k += allowed[i / 64] >> (i % 64) & 1;
    return k;
}

/* ---------------------------------------------------------------------------------------- */
/* Identity and configuration                                                               */
/* ---------------------------------------------------------------------------------------- */

Test(action_continuous, describes_itself)
{
    sn_codec *c = open_codec(CONFIG);
    const sn_plugin_info *info = sn_codec_info(c);
    cr_assert_str_eq(info->name, "action.continuous");
    cr_assert_str_eq(info->version, "1.0.0");
    cr_assert_neq(info->description[0], '\0');
    cr_assert_eq(info->kind, SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER);
    cr_assert_eq(info->media_kinds, SN_MEDIA_BIT(SN_MEDIA_SERIES));
    cr_assert_eq(sn_codec_vocab_size(c), 256);
    sn_codec_close(c);
    c = open_codec("{\"bins\": 512, \"actions_per_segment\": 4, " RANGES "}");
    cr_assert_eq(sn_codec_vocab_size(c), 512);
    sn_codec_close(c);
}

Test(action_continuous, bad_configuration_is_a_one_line_error_naming_the_key)
{
    expect_config_error(NULL, "missing config keys 'low' and 'high'", NULL);
    expect_config_error("{\"low\": [0, 0]}", "'low'", "without 'high'");
    expect_config_error("{\"low\": [0, 0], \"high\": [1, 1, 1]}", "'low' has 2", "'high' has 3");
    expect_config_error("{\"low\": [0, 2], \"high\": [1, 1]}", "dimension 1", "low < high");
    expect_config_error("{\"low\": [0], \"high\": [0]}", "dimension 0", "low 0 >= high 0");
    expect_config_error("{\"bins\": 1, " RANGES "}", "'bins'", "2 to 65536");
    expect_config_error("{\"bins\": 0, " RANGES "}", "'bins'", NULL);
    expect_config_error("{\"actions_per_segment\": -1, " RANGES "}", "'actions_per_segment'", NULL);
    expect_config_error("{\"actions_per_segment\": \"one\", " RANGES "}", "actions_per_segment", NULL);
    expect_config_error("{\"names\": [\"a\", \"b\"], " RANGES "}", "'names' has 2 names", "7 dimensions");
    expect_config_error("{\"names\": [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"a\"], " RANGES "}",
                        "'names'[6] \"a\" repeats 'names'[0]", NULL);
    expect_config_error("{\"names\": [\"a\", \"b\", \"c\", \"\", \"e\", \"f\", \"g\"], " RANGES "}",
                        "'names'[3]", NULL);
    expect_config_error("{\"names\": [\"a\", \"b\", \"c\", 4, \"e\", \"f\", \"g\"], " RANGES "}",
                        "names", NULL);
    expect_config_error("{\"names\": \"joints\", " RANGES "}", "names", NULL);
    /* Ranges of an action are written down, not fitted: no ranges file, no fit. */
    expect_config_error("{\"ranges\": \"action.continuous.npy\"}", "ranges", NULL);
    expect_config_error("{\"action_per_segment\": 1, " RANGES "}", "action_per_segment", NULL);
}

Test(action_continuous, needs_no_fitting)
{
    float v[7] = {0};
    sn_media m = series(v, 1, 7, 0, 0);
    cr_assert_eq(sn_fit(plugins, "action.continuous", CONFIG, &m, 1, "/tmp/never.npy"),
                 SN_ERR_UNSUPPORTED);
}

/* ---------------------------------------------------------------------------------------- */
/* Round trip                                                                               */
/* ---------------------------------------------------------------------------------------- */

/*
 * Every joint swept densely over its limits: each decoded target is within half a bin, w/2
 * with w = (high - low) / 256, plus two float32 roundings (the value and the decoded centre,
 * 2^-24 of the larger limit each) and 1e-12 of w/2 for the bin index at an edge.
 */
Test(action_continuous, every_target_in_range_returns_within_half_a_bin)
{
    sn_codec *c = open_codec(CONFIG);
    size_t ticks = 200001;
    float *x = malloc(ticks * D * sizeof *x);
    cr_assert_not_null(x);
    for (int d = 0; d < D; d++)
        for (size_t i = 0; i < ticks; i++)
            x[i * D + d] = (float)(LOW[d] + (HIGH[d] - LOW[d]) * (double)i / (double)(ticks - 1));
    sn_tokens toks = encode_all(c, x, ticks, D);
    cr_assert_eq(toks.n, ticks * D);
    vecs o = {0};
    cr_assert_eq(sn_codec_decode(c, toks.ids, toks.n, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, ticks, "one vector per action");
    cr_assert_eq(o.dim, D);
    double worst_bins = 0;
    for (int d = 0; d < D; d++) {
        double w = (HIGH[d] - LOW[d]) / 256;
        double bound = 0.5 * w * (1 + 1e-12) + 2 * ldexp(fmax(fabs(LOW[d]), fabs(HIGH[d])), -24);
        double worst = 0;
        for (size_t i = 0; i < ticks; i++) {
            double v = x[i * D + d];
            if (v < LOW[d] || v > HIGH[d])
                continue; /* float rounding of an end: clamped */
            double e = fabs((double)o.v[i * D + d] - v);
            if (e > worst)
                worst = e;
        }
        cr_log_info("joint %d: max error %.6g rad = %.5f bins (bound %.6g)", d + 1, worst, worst / w, bound);
        cr_assert_leq(worst, bound, "joint %d", d + 1);
        if (worst / w > worst_bins)
            worst_bins = worst / w;
    }
    fprintf(stderr, "action.continuous sweep, 7 Panda joints, 256 bins: max error %.6f of a bin (bound 0.5 plus float32 rounding)\n",
            worst_bins);
    vecs_free(&o);
    sn_tokens_clear(&toks);
    free(x);
    sn_codec_close(c);
}

Test(action_continuous, same_bins_as_sensor_bins)
{
    sn_codec *a = open_codec(CONFIG), *s = NULL;
    cr_assert_eq(sn_codec_open(plugins, "sensor.bins", "{" RANGES "}", NULL, &s), SN_OK, "%s",
                 sn_errmsg());
    size_t ticks = 500;
    float *x = trajectory(ticks, 4);
    x[3] = -10.0f; /* clamped alike */
    x[12] = INFINITY;
    sn_tokens ta = encode_all(a, x, ticks, D), ts = encode_all(s, x, ticks, D);
    cr_assert_eq(ta.n, ts.n);
    cr_assert_eq(memcmp(ta.ids, ts.ids, ta.n * sizeof *ta.ids), 0);
    cr_assert_eq(ta.ids[3], 0);
    cr_assert_eq(ta.ids[12], 255);
    vecs va = {0}, vs = {0};
    cr_assert_eq(sn_codec_decode(a, ta.ids, ta.n, 0.0, collect, &va), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode(s, ts.ids, ts.n, 0.0, collect, &vs), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(va.n, vs.n);
    cr_assert_eq(memcmp(va.v, vs.v, va.n * D * sizeof *va.v), 0);
    vecs_free(&va);
    vecs_free(&vs);
    sn_tokens_clear(&ta);
    sn_tokens_clear(&ts);
    free(x);
    sn_codec_close(a);
    sn_codec_close(s);
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

Test(action_continuous, seven_ids_make_one_vector_of_bin_centres)
{
    sn_codec *c = open_codec(CONFIG);
    int32_t ids[D] = {0, 255, 128, 1, 254, 127, 64};
    vecs o = {0};
    cr_assert_eq(sn_codec_decode(c, ids, D, 2.5, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 1);
    cr_assert_eq(o.dim, D);
    cr_assert_float_eq(o.t[0], 2.5, 0);
    for (int d = 0; d < D; d++) {
        double want = LOW[d] + (ids[d] + 0.5) * (HIGH[d] - LOW[d]) / 256;
        cr_assert_float_eq(o.v[d], want, 1e-6, "joint %d: %g, want %g", d + 1, (double)o.v[d], want);
    }
    vecs_free(&o);
    sn_codec_close(c);
}

Test(action_continuous, decode_split_anywhere_gives_the_same_vectors)
{
    sn_codec *c = open_codec("{\"actions_per_segment\": 0, " RANGES "}");
    size_t ticks = 30;
    float *x = trajectory(ticks, 1);
    sn_tokens toks = encode_all(c, x, ticks, D);
    vecs whole = {0};
    cr_assert_eq(sn_codec_decode(c, toks.ids, toks.n, 0.0, collect, &whole), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(whole.n, ticks);
    uint64_t seed = 3;
    for (size_t k = 0; k <= toks.n; k++) {
        /* Two cuts: at k and at a random later point. */
        size_t k2 = k + rng_below(&seed, toks.n - k + 1);
        vecs o = {0};
        cr_assert_eq(sn_codec_decode(c, toks.ids, k, 1.0, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.n, k / D);
        cr_assert_eq(sn_codec_decode(c, toks.ids + k, k2 - k, 2.0, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(sn_codec_decode(c, toks.ids + k2, toks.n - k2, 3.0, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.n, whole.n, "cuts %zu %zu", k, k2);
        cr_assert_eq(memcmp(o.v, whole.v, whole.n * D * sizeof *o.v), 0, "cuts %zu %zu", k, k2);
        for (size_t i = 0; i < o.n; i++) {
            size_t last = (i + 1) * D; /* ids up to here complete vector i */
            double want = last <= k ? 1.0 : last <= k2 ? 2.0 : 3.0;
            cr_assert_float_eq(o.t[i], want, 0, "cuts %zu %zu: vector %zu carries the t of the call that completed it", k, k2, i);
        }
        vecs_free(&o);
    }
    vecs_free(&whole);
    sn_tokens_clear(&toks);
    free(x);
    sn_codec_close(c);
}

Test(action_continuous, flush_mid_action_is_an_error_and_resets)
{
    sn_codec *c = open_codec(CONFIG);
    int32_t ids[3] = {10, 20, 30};
    vecs o = {0};
    cr_assert_eq(sn_codec_decode(c, ids, 3, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 0, "3 of 7 joints: nothing for the robot yet");
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_ERR_PLUGIN);
    cr_log_info("%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "segment ended mid-action: 3 of 7 values"), "%s", sn_errmsg());
    cr_assert_eq(o.n, 0, "a partial action is never emitted");
    int32_t seven[D] = {1, 2, 3, 4, 5, 6, 7};
    cr_assert_eq(sn_codec_decode(c, seven, D, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 1, "the flush reset the decoder");
    cr_assert_float_eq(o.v[0], LOW[0] + 1.5 * (HIGH[0] - LOW[0]) / 256, 1e-6);
    vecs_free(&o);
    sn_codec_close(c);
}

static int stop_at_first(void *ctx, const sn_action *a)
{
    (void)ctx, (void)a;
    return 1;
}

Test(action_continuous, a_stopped_decode_drops_the_held_action)
{
    sn_codec *c = open_codec("{\"actions_per_segment\": 0, " RANGES "}");
    int32_t ids[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    /* The callback stops at the first vector: the decode fails, and the ids after it are
     * dropped with it (plugin.h: a failed decode ends the segment). */
    cr_assert_eq(sn_codec_decode(c, ids, 10, 0.0, stop_at_first, NULL), SN_ERR_PLUGIN);
    /* Nothing held: 7 ids are one whole action and the flush finds nothing left. */
    vecs o = {0};
    cr_assert_eq(sn_codec_decode(c, ids, 7, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 1);
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
    vecs_free(&o);
    sn_codec_close(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Constrained generation                                                                   */
/* ---------------------------------------------------------------------------------------- */

Test(action_continuous, constrain_makes_exactly_one_action_by_default)
{
    sn_codec *c = open_codec(CONFIG);
    int32_t seg[16] = {0};
    uint64_t allowed[4];
    int may_end;
    for (size_t n = 0; n < D; n++) {
        cr_assert_eq(sn_codec_constrain(c, seg, n, allowed, &may_end), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(count_allowed(allowed, 256), 256, "n %zu: every bin of the next joint", n);
        cr_assert_eq(may_end, 0, "n %zu: mid-action, the segment may not end", n);
    }
    cr_assert_eq(sn_codec_constrain(c, seg, D, allowed, &may_end), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(count_allowed(allowed, 256), 0, "one whole action: nothing more");
    cr_assert_eq(may_end, 1);
    cr_assert_eq(sn_codec_constrain(c, seg, D + 1, allowed, &may_end), SN_ERR_PLUGIN);
    sn_codec_close(c);
}

Test(action_continuous, constrain_with_several_or_any_number_of_actions)
{
    sn_codec *c = open_codec("{\"actions_per_segment\": 3, " RANGES "}");
    int32_t seg[32] = {0};
    uint64_t allowed[4];
    int may_end;
    for (size_t n = 0; n <= 3 * D; n++) {
        cr_assert_eq(sn_codec_constrain(c, seg, n, allowed, &may_end), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(count_allowed(allowed, 256), n < 3 * D ? 256 : 0, "n %zu", n);
        cr_assert_eq(may_end, n == 3 * D, "n %zu", n);
    }
    sn_codec_close(c);
    c = open_codec("{\"actions_per_segment\": 0, " RANGES "}");
    for (size_t n = 0; n <= 4 * D; n++) {
        cr_assert_eq(sn_codec_constrain(c, seg, n, allowed, &may_end), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(count_allowed(allowed, 256), 256, "n %zu", n);
        cr_assert_eq(may_end, n > 0 && n % D == 0, "n %zu", n);
    }
    sn_codec_close(c);
}

/* A sampler drawing random allowed ids and ending whenever it may: every segment decodes to
 * exactly A actions and its flush succeeds. */
static void generate(const char *config, size_t A, uint64_t seed)
{
    sn_codec *c = open_codec(config);
    int32_t seg[64];
    size_t n = 0, segments = 0;
    vecs o = {0};
    for (int step = 0; step < 2000; step++) {
        uint64_t allowed[4];
        int may_end;
        cr_assert_eq(sn_codec_constrain(c, seg, n, allowed, &may_end), SN_OK, "%s", sn_errmsg());
        size_t k = count_allowed(allowed, 256);
        cr_assert(k > 0 || may_end, "dead end at n %zu", n);
        if (may_end && (k == 0 || rng_below(&seed, 3) == 0)) {
            size_t before = o.n;
            cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
            cr_assert_eq(o.n, before);
            cr_assert_eq(n, A * D);
            n = 0;
            segments++;
            continue;
        }
        int32_t id;
        do
            id = (int32_t)rng_below(&seed, 256);
        while (!(allowed[id / 64] >> (id % 64) & 1));
        seg[n++] = id;
        cr_assert_eq(sn_codec_decode(c, &id, 1, (double)step, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.bad, 0);
    }
    cr_assert_gt(segments, 5);
    cr_assert_eq(o.n, segments * A + n / D);
    vecs_free(&o);
    sn_codec_close(c);
}

Test(action_continuous, generation_that_follows_constrain_gives_whole_actions)
{
    generate(CONFIG, 1, 1);
    generate("{\"actions_per_segment\": 2, " RANGES "}", 2, 2);
}

/* ---------------------------------------------------------------------------------------- */
/* Tokenizer                                                                                */
/* ---------------------------------------------------------------------------------------- */

Test(action_continuous, any_chunking_gives_the_ids_of_the_whole)
{
    sn_codec *c = open_codec(CONFIG);
    size_t ticks = 1000;
    float *x = trajectory(ticks, 7);
    sn_tokens whole = encode_all(c, x, ticks, D);
    cr_assert_eq(whole.n, ticks * D);
    uint64_t seed = 11;
    for (int trial = 0; trial < 100; trial++) {
        sn_tokens part = {0};
        size_t max_chunk = 1 + rng_below(&seed, trial % 2 ? 3 : 200);
        for (size_t at = 0; at < ticks;) {
            size_t k = rng_below(&seed, max_chunk + 1);
            if (k > ticks - at)
                k = ticks - at;
            sn_media m = series(x + at * D, k, D, 10.0, (double)at / 10.0);
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

Test(action_continuous, bad_series_name_the_joint)
{
    sn_codec *c = open_codec(CONFIG);
    float *x = trajectory(5, 2);
    sn_tokens toks = {0};
    sn_media m = series(x, 5, 6, 10.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "series has 6 dims per tick, config says 7"), "%s", sn_errmsg());
    x[2 * D + 3] = NAN;
    m = series(x, 5, D, 10.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_ERR_PLUGIN);
    cr_log_info("%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "tick 2"), "%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "dimension 3 ('panda_joint4')"), "%s", sn_errmsg());
    cr_assert_eq(toks.n, 0);
    x[2 * D + 3] = -INFINITY; /* clamps like any value below the limit */
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(toks.n, 5 * D);
    cr_assert_eq(toks.ids[2 * D + 3], 0);
    m = series(x, 0, D, 10.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(toks.n, 5 * D, "an empty chunk adds nothing");
    sn_tokens_clear(&toks);
    free(x);
    sn_codec_close(c);
}
