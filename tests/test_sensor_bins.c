/*
 * test_sensor_bins.c - the sensor.bins plugin end to end, through the engine's public codec
 * and fit API (plugins/sensor_bins.so loaded from the build's plugin folder).
 *
 * What a user relies on: every value in a dimension's range comes back within half a bin;
 * values outside clamp to the end bins; any chunking of a series gives the same ids and any
 * split of the ids the same vectors; a generated segment that follows constrain() is whole
 * ticks; `fit` writes the 1st and 99th percentiles exactly as numpy computes them, the same
 * every time; and every wrong configuration or series is a one-line error naming what is
 * wrong. Data: a synthetic IMU (accelerometer + gyroscope of a tilting device, seeded) and
 * frame features of a real recording (Front_Center.wav).
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
    sn_set_log_handler(NULL, NULL);
    sn_plugins_close(plugins);
    plugins = NULL;
}

TestSuite(sensor_bins, .init = setup, .fini = teardown);

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

static double rng_gauss(uint64_t *s)
{
    double u = rng_unit(s), v = rng_unit(s);
    return sqrt(-2.0 * log(u + 1e-300)) * cos(2.0 * M_PI * v);
}

static sn_codec *open_codec(const char *config, const char *data_dir)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "sensor.bins", config, data_dir, &c), SN_OK,
                 "config %s: %s", config, sn_errmsg());
    return c;
}

/* Asserts that the config fails create with a message holding each of the needles. */
static void expect_config_error(const char *config, const char *data_dir, const char *needle1,
                                const char *needle2)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "sensor.bins", config, data_dir, &c), SN_ERR_PLUGIN,
                 "config %s was accepted", config);
    cr_assert_null(c);
    const char *msg = sn_errmsg();
    cr_log_info("config %s -> %s", config, msg);
    cr_assert(strstr(msg, "sensor.bins"), "message does not name the plugin: %s", msg);
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
    sn_media m = series(v, ticks, dims, 100.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(c, &toks), SN_OK, "%s", sn_errmsg());
    return toks;
}

/* Decoded vectors, recorded for checking after the call. */
typedef struct vecs {
    float *v;     /* (n, dim) */
    double *t;    /* (n) */
    size_t n, dim, cap;
    size_t bad;   /* events that are not vectors, or of another length */
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

static vecs decode_all(sn_codec *c, const int32_t *ids, size_t n)
{
    vecs o = {0};
    cr_assert_eq(sn_codec_decode(c, ids, n, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.bad, 0);
    return o;
}

/* The documented bin of x: floor((x - low) / (high - low) * B), clamped to [0, B-1]. */
static int32_t ref_bin(double x, double low, double high, uint32_t B)
{
    double u = (x - low) / (high - low) * B;
    if (!(u >= 0))
        return 0;
    if (u >= B)
        return (int32_t)B - 1;
    return (int32_t)floor(u);
}

/* A temporary folder for ranges files; removed with its files by tmp_done. */
static char tmp_dir[64];

static const char *tmp_path(const char *name)
{
    static char path[2][256];
    static int which;
    which ^= 1;
    if (!tmp_dir[0]) {
        snprintf(tmp_dir, sizeof tmp_dir, "/tmp/sn_sensor_bins_XXXXXX");
        cr_assert_not_null(mkdtemp(tmp_dir));
    }
    snprintf(path[which], sizeof path[which], "%s/%s", tmp_dir, name);
    return path[which];
}

static void tmp_done(const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        unlink(tmp_path(names[i]));
    rmdir(tmp_dir);
    tmp_dir[0] = '\0';
}

/* Writes a (rows, cols) float32 NPY through the engine's media writer. */
static void write_npy(const char *path, const float *v, size_t rows, uint32_t cols)
{
    sn_media m = series(v, rows, cols, 0.0, 0.0);
    cr_assert_eq(sn_media_write(path, &m), SN_OK, "%s", sn_errmsg());
}

/* Log lines from fit, for checking what it reports. */
static char log_buf[8192];
static size_t log_len;

static void log_handler(void *ctx, sn_log_level level, const char *source, const char *message)
{
    (void)ctx;
    (void)level;
    int k = snprintf(log_buf + log_len, sizeof log_buf - log_len, "%s: %s\n", source, message);
    if (k > 0 && (size_t)k < sizeof log_buf - log_len)
        log_len += (size_t)k;
}

/*
 * A synthetic IMU at 100 Hz: a device that tilts slowly and wobbles, its accelerometer
 * (m/s^2) reading gravity through the tilt plus vibration, its gyroscope (rad/s) the tilt
 * rates plus noise. (ticks, 6): ax ay az gx gy gz. Seeded.
 */
static float *imu_series(size_t ticks, uint64_t seed)
{
    float *v = malloc(ticks * 6 * sizeof *v);
    cr_assert_not_null(v);
    const double g = 9.80665, dt = 0.01;
    double roll = 0, pitch = 0, yaw_rate = 0;
    double f1 = 0.05 + 0.1 * rng_unit(&seed), f2 = 0.3 + 0.4 * rng_unit(&seed);
    for (size_t i = 0; i < ticks; i++) {
        double tt = (double)i * dt;
        double r = 0.6 * sin(2 * M_PI * f1 * tt) + 0.1 * sin(2 * M_PI * f2 * tt + 1.0);
        double p = 0.4 * cos(2 * M_PI * f1 * 0.7 * tt) + 0.05 * rng_gauss(&seed) * 0.1;
        double dr = (r - roll) / dt, dp = (p - pitch) / dt;
        roll = r;
        pitch = p;
        yaw_rate = 0.98 * yaw_rate + 0.02 * rng_gauss(&seed);
        float *row = v + i * 6;
        row[0] = (float)(-g * sin(pitch) + 0.3 * rng_gauss(&seed));
        row[1] = (float)(g * sin(roll) * cos(pitch) + 0.3 * rng_gauss(&seed));
        row[2] = (float)(g * cos(roll) * cos(pitch) + 0.3 * rng_gauss(&seed));
        row[3] = (float)(dr + 0.02 * rng_gauss(&seed));
        row[4] = (float)(dp + 0.02 * rng_gauss(&seed));
        row[5] = (float)(yaw_rate + 0.02 * rng_gauss(&seed));
    }
    return v;
}

/* An IMU configuration: +-2 g accelerometer, +-250 deg/s gyroscope (a common MEMS setting). */
static const double IMU_LOW[6] = {-19.6133, -19.6133, -19.6133, -4.36332, -4.36332, -4.36332};
static const double IMU_HIGH[6] = {19.6133, 19.6133, 19.6133, 4.36332, 4.36332, 4.36332};
#define IMU_CONFIG(bins)                                                                       \
    "{\"bins\": " #bins ", \"low\": [-19.6133, -19.6133, -19.6133, -4.36332, -4.36332, "       \
    "-4.36332], \"high\": [19.6133, 19.6133, 19.6133, 4.36332, 4.36332, 4.36332]}"

/*
 * The reconstruction bound: a value in [low, high] returns as the centre of its bin, at most
 * half a bin width w/2 away. On top of that, two float32 roundings (the value as stored in the
 * series and the decoded centre), each at most 2^-24 of the larger end of the range, and the
 * double rounding of the bin index near a bin edge (relative 1e-12).
 */
static double half_bin_bound(double low, double high, uint32_t B)
{
    double w = (high - low) / B;
    double big = fmax(fabs(low), fabs(high));
    return 0.5 * w * (1 + 1e-12) + 2.0 * ldexp(big, -24);
}

/* ---------------------------------------------------------------------------------------- */
/* Identity and configuration                                                               */
/* ---------------------------------------------------------------------------------------- */

Test(sensor_bins, describes_itself)
{
    sn_codec *c = open_codec("{\"low\": [0], \"high\": [1]}", NULL);
    const sn_plugin_info *info = sn_codec_info(c);
    cr_assert_str_eq(info->name, "sensor.bins");
    cr_assert_str_eq(info->version, "1.0.0");
    cr_assert_neq(info->description[0], '\0');
    cr_assert_eq(info->kind, SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER);
    cr_assert_eq(info->media_kinds, SN_MEDIA_BIT(SN_MEDIA_SERIES));
    cr_assert_eq(sn_codec_vocab_size(c), 256, "default bins");
    sn_codec_close(c);
    c = open_codec("{\"bins\": 1000, \"low\": [0, 1], \"high\": [1, 2]}", NULL);
    cr_assert_eq(sn_codec_vocab_size(c), 1000, "vocab = bins, shared by every dimension");
    sn_codec_close(c);
    c = open_codec("{\"bins\": 2, \"dims\": 1, \"low\": [0], \"high\": [1]}", NULL);
    cr_assert_eq(sn_codec_vocab_size(c), 2);
    sn_codec_close(c);
    c = open_codec("{\"bins\": 65536, \"low\": [0], \"high\": [1]}", NULL);
    cr_assert_eq(sn_codec_vocab_size(c), 65536);
    sn_codec_close(c);
}

Test(sensor_bins, bad_configuration_is_a_one_line_error_naming_the_key)
{
    /* Neither low/high nor a ranges file: say both ways out. */
    expect_config_error(NULL, NULL, "'low'", "sensorium fit");
    expect_config_error("{}", NULL, "'high'", "sensorium fit");
    /* bins */
    expect_config_error("{\"bins\": 0, \"low\": [0], \"high\": [1]}", NULL, "'bins'", "2 to 65536");
    expect_config_error("{\"bins\": 1, \"low\": [0], \"high\": [1]}", NULL, "'bins'", "2 to 65536");
    expect_config_error("{\"bins\": 65537, \"low\": [0], \"high\": [1]}", NULL, "'bins'", "65536");
    expect_config_error("{\"bins\": -3, \"low\": [0], \"high\": [1]}", NULL, "'bins'", NULL);
    expect_config_error("{\"bins\": \"many\", \"low\": [0], \"high\": [1]}", NULL, "bins", NULL);
    expect_config_error("{\"bins\": 2.5, \"low\": [0], \"high\": [1]}", NULL, "bins", NULL);
    /* low / high */
    expect_config_error("{\"low\": [0, 0]}", NULL, "'low'", "without 'high'");
    expect_config_error("{\"high\": [1]}", NULL, "'high'", "without 'low'");
    expect_config_error("{\"low\": [0, 0], \"high\": [1]}", NULL, "'low' has 2", "'high' has 1");
    expect_config_error("{\"low\": [], \"high\": []}", NULL, "'low'", "0 numbers");
    expect_config_error("{\"low\": [0, 5, 0], \"high\": [1, 5, 1]}", NULL, "dimension 1", "low 5 >= high 5");
    expect_config_error("{\"low\": [0, 0], \"high\": [1, -1]}", NULL, "dimension 1", "low < high");
    expect_config_error("{\"low\": [0, \"a\"], \"high\": [1, 1]}", NULL, "low", NULL);
    expect_config_error("{\"low\": 0, \"high\": 1}", NULL, "low", NULL);
    expect_config_error("{\"low\": [-1e308], \"high\": [1e308]}", NULL, "dimension 0", "narrow");
    /* dims */
    expect_config_error("{\"dims\": 3, \"low\": [0, 0], \"high\": [1, 1]}", NULL, "'dims' is 3", "2 numbers");
    expect_config_error("{\"dims\": 0, \"low\": [0], \"high\": [1]}", NULL, "'dims'", NULL);
    /* ticks_per_segment */
    expect_config_error("{\"ticks_per_segment\": -1, \"low\": [0], \"high\": [1]}", NULL, "'ticks_per_segment'", NULL);
    /* a misspelt key */
    expect_config_error("{\"bin\": 8, \"low\": [0], \"high\": [1]}", NULL, "bin", NULL);
    expect_config_error("{\"range\": \"x.npy\"}", NULL, "range", NULL);
}

Test(sensor_bins, ranges_file_missing_or_malformed_is_an_error_with_the_path)
{
    static const char *const files[] = {"sensor.bins.npy", "wrong_rows.npy", "wrong_dims.npy",
                                        "inverted.npy", "other.npy", "text.npy"};
    tmp_path("x"); /* makes the folder */
    const char *dir = tmp_dir;
    /* No file: the path, and the fit command that makes it. */
    expect_config_error("{}", dir, tmp_path("sensor.bins.npy"), "sensorium fit --plugin sensor.bins");
    expect_config_error("{\"ranges\": \"other.npy\"}", dir, tmp_path("other.npy"), "sensorium fit");
    expect_config_error("{\"ranges\": \"\"}", dir, "'ranges'", "empty");
    expect_config_error("{\"ranges\": 3}", dir, "ranges", NULL);

    float three[6] = {0, 0, 1, 1, 2, 2};
    write_npy(tmp_path("wrong_rows.npy"), three, 3, 2);
    expect_config_error("{\"ranges\": \"wrong_rows.npy\"}", dir, "(3, 2)", "expected (2, D)");

    float two[4] = {0, 0, 1, 1}; /* (2, 2): lows 0 0, highs 1 1 */
    write_npy(tmp_path("wrong_dims.npy"), two, 2, 2);
    expect_config_error("{\"dims\": 3, \"ranges\": \"wrong_dims.npy\"}", dir, "(2, 2)", "'dims' says 3");

    float inv[4] = {0, 3, 1, 2}; /* dimension 1: low 3, high 2 */
    write_npy(tmp_path("inverted.npy"), inv, 2, 2);
    expect_config_error("{\"ranges\": \"inverted.npy\"}", dir, "dimension 1", "low 3 >= high 2");

    FILE *f = fopen(tmp_path("text.npy"), "w");
    cr_assert_not_null(f);
    fputs("not an npy file\n", f);
    fclose(f);
    expect_config_error("{\"ranges\": \"text.npy\"}", dir, tmp_path("text.npy"), NULL);

    /* The good file loads, from the data dir by its default name or by absolute path, and
     * config arrays win over it. */
    write_npy(tmp_path("sensor.bins.npy"), two, 2, 2);
    sn_codec *c = open_codec("{}", dir);
    float x[2] = {0.25f, 0.75f};
    sn_tokens toks = encode_all(c, x, 1, 2);
    cr_assert_eq(toks.n, 2);
    cr_assert_eq(toks.ids[0], 64);
    cr_assert_eq(toks.ids[1], 192);
    sn_tokens_clear(&toks);
    sn_codec_close(c);

    char cfg[512];
    snprintf(cfg, sizeof cfg, "{\"dims\": 2, \"ranges\": \"%s\"}", tmp_path("sensor.bins.npy"));
    c = open_codec(cfg, NULL);
    toks = encode_all(c, x, 1, 2);
    cr_assert_eq(toks.ids[1], 192);
    sn_tokens_clear(&toks);
    sn_codec_close(c);

    c = open_codec("{\"low\": [0, 0], \"high\": [2, 2], \"ranges\": \"missing.npy\"}", dir);
    toks = encode_all(c, x, 1, 2);
    cr_assert_eq(toks.ids[0], 32, "config low/high win over the ranges file");
    cr_assert_eq(toks.ids[1], 96);
    sn_tokens_clear(&toks);
    sn_codec_close(c);
    tmp_done(files, sizeof files / sizeof *files);
}

/* ---------------------------------------------------------------------------------------- */
/* Bins                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/*
 * Every dimension swept densely over [low, high] (all at once, one tick per step), plus every
 * bin edge and its float neighbours: the ids are the documented formula's and every decoded
 * value is within half a bin.
 */
static void sweep(const char *config, const double *low, const double *high, uint32_t D,
                  uint32_t B)
{
    sn_codec *c = open_codec(config, NULL);
    size_t n_sweep = 100001, n_edges = 3 * (size_t)B, ticks = n_sweep + n_edges;
    float *x = malloc(ticks * D * sizeof *x);
    cr_assert_not_null(x);
    for (uint32_t d = 0; d < D; d++) {
        for (size_t k = 0; k < n_sweep; k++)
            x[k * D + d] = (float)(low[d] + (high[d] - low[d]) * (double)k / (double)(n_sweep - 1));
        for (uint32_t b = 0; b < B; b++) {
            float e = (float)(low[d] + (high[d] - low[d]) * b / B);
            size_t k = n_sweep + 3 * (size_t)b;
            x[k * D + d] = fmaxf(e, (float)low[d]);
            x[(k + 1) * D + d] = fmaxf(nextafterf(e, -INFINITY), (float)low[d]);
            x[(k + 2) * D + d] = nextafterf(e, INFINITY);
        }
    }
    sn_tokens toks = encode_all(c, x, ticks, D);
    cr_assert_eq(toks.n, ticks * D);
    vecs o = decode_all(c, toks.ids, toks.n);
    cr_assert_eq(o.n, ticks);
    cr_assert_eq(o.dim, D);
    double worst_ratio = 0;
    for (uint32_t d = 0; d < D; d++) {
        double bound = half_bin_bound(low[d], high[d], B), worst = 0;
        size_t worst_k = 0;
        for (size_t k = 0; k < ticks; k++) {
            double v = x[k * D + d];
            int32_t want = ref_bin(v, low[d], high[d], B);
            cr_assert_eq(toks.ids[k * D + d], want, "dim %u value %.9g: bin %d, formula %d", d,
                         v, toks.ids[k * D + d], want);
            if (v < low[d] || v > high[d])
                continue; /* float rounding put it just outside: clamped, checked elsewhere */
            double e = fabs((double)o.v[k * D + d] - v);
            if (e > worst) {
                worst = e;
                worst_k = k;
            }
        }
        double w = (high[d] - low[d]) / B;
        cr_log_info("bins %u dim %u: max |decoded - x| = %.6g = %.6f bins (bound %.6g)", B, d,
                    worst, worst / w, bound);
        cr_assert_leq(worst, bound, "dim %u: value %.9g decoded %.9g, error %.6g past %.6g", d,
                      (double)x[worst_k * D + d], (double)o.v[worst_k * D + d], worst, bound);
        if (worst / w > worst_ratio)
            worst_ratio = worst / w;
    }
    fprintf(stderr, "sensor.bins sweep, B=%u, D=%u: max error %.6f of a bin (bound 0.5 plus float32 rounding)\n", B, D,
            worst_ratio);
    vecs_free(&o);
    sn_tokens_clear(&toks);
    free(x);
    sn_codec_close(c);
}

Test(sensor_bins, every_value_in_range_returns_within_half_a_bin)
{
    sweep(IMU_CONFIG(256), IMU_LOW, IMU_HIGH, 6, 256);
    static const double lo1[3] = {-1, 0.001, -1e4}, hi1[3] = {1, 0.002, 3e4};
    sweep("{\"bins\": 7, \"low\": [-1, 0.001, -1e4], \"high\": [1, 0.002, 3e4]}", lo1, hi1, 3, 7);
    sweep("{\"bins\": 2, \"low\": [-1, 0.001, -1e4], \"high\": [1, 0.002, 3e4]}", lo1, hi1, 3, 2);
    static const double lo2[1] = {-3.5}, hi2[1] = {1000.25};
    sweep("{\"bins\": 65536, \"low\": [-3.5], \"high\": [1000.25]}", lo2, hi2, 1, 65536);
}

Test(sensor_bins, out_of_range_values_and_infinities_clamp_to_the_end_bins)
{
    sn_codec *c = open_codec("{\"bins\": 10, \"low\": [-1, 0], \"high\": [1, 100]}", NULL);
    float x[] = {-1.0f, 0.0f,       1.0f,      100.0f,    -1.5f, -1e30f, 7.0f,
                 1e30f, -INFINITY,  -INFINITY, INFINITY,  INFINITY, 0.999f, 99.99f,
                 -0.3f, 50.0f};
    int32_t want[] = {0, 0, 9, 9, 0, 0, 9, 9, 0, 0, 9, 9, 9, 9, 3, 5};
    size_t ticks = sizeof x / sizeof *x / 2;
    sn_tokens toks = encode_all(c, x, ticks, 2);
    cr_assert_eq(toks.n, 2 * ticks);
    for (size_t i = 0; i < toks.n; i++)
        cr_assert_eq(toks.ids[i], want[i], "value %g: id %d, want %d", (double)x[i], toks.ids[i],
                     want[i]);
    /* The end bins decode to their centres. */
    vecs o = decode_all(c, toks.ids, 4);
    cr_assert_float_eq(o.v[0], -0.9f, 1e-6);
    cr_assert_float_eq(o.v[1], 5.0f, 1e-5);
    cr_assert_float_eq(o.v[2], 0.9f, 1e-6);
    cr_assert_float_eq(o.v[3], 95.0f, 1e-5);
    vecs_free(&o);
    sn_tokens_clear(&toks);
    sn_codec_close(c);
}

Test(sensor_bins, same_ids_for_every_dimension_and_tick_layout)
{
    /* Token k of a tick is dimension k: the same value in two dimensions with the same range
     * gives the same id, and ids interleave tick by tick. */
    sn_codec *c = open_codec("{\"bins\": 4, \"low\": [0, 0, 0], \"high\": [4, 4, 4]}", NULL);
    float x[6] = {0.5f, 1.5f, 2.5f, 3.5f, 0.5f, 1.5f};
    sn_tokens toks = encode_all(c, x, 2, 3);
    int32_t want[6] = {0, 1, 2, 3, 0, 1};
    cr_assert_eq(toks.n, 6);
    cr_assert_eq(memcmp(toks.ids, want, sizeof want), 0);
    sn_tokens_clear(&toks);
    sn_codec_close(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Bad series                                                                               */
/* ---------------------------------------------------------------------------------------- */

Test(sensor_bins, bad_series_are_errors_and_nothing_is_emitted)
{
    sn_codec *c = open_codec(IMU_CONFIG(256), NULL);
    float *x = imu_series(40, 7);
    sn_tokens toks = {0};

    /* wrong dims */
    sn_media m = series(x, 8, 5, 100.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "series has 5 dims per tick, config says 6"), "%s", sn_errmsg());
    cr_assert_eq(toks.n, 0);

    /* zero dims */
    m = series(x, 0, 0, 100.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "0 dims"), "%s", sn_errmsg());

    /* empty chunk: valid, nothing */
    m = series(x, 0, 6, 100.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(toks.n, 0);

    /* NULL values */
    m = series(NULL, 3, 6, 100.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "NULL"), "%s", sn_errmsg());

    /* a bad rate */
    m = series(x, 3, 6, -5.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "rate"), "%s", sn_errmsg());

    /* NaN: named by tick, time and dimension; nothing of the chunk is emitted */
    x[17 * 6 + 4] = NAN;
    m = series(x, 40, 6, 100.0, 2.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_ERR_PLUGIN);
    cr_log_info("%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "tick 17"), "%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "t = 2.17 s"), "%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "dimension 4"), "%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "NaN"), "%s", sn_errmsg());
    cr_assert_eq(toks.n, 0, "a failed chunk emits nothing");

    /* the next chunk works */
    m = series(x, 17, 6, 100.0, 0.0);
    cr_assert_eq(sn_codec_encode(c, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(toks.n, 17 * 6);

    /* other media: the engine refuses it by the plugin's media kinds */
    float pcm[4] = {0};
    sn_media a = {.kind = SN_MEDIA_AUDIO};
    a.audio.samples = pcm;
    a.audio.n_samples = 4;
    a.audio.sample_rate = 16000;
    cr_assert_neq(sn_codec_encode(c, &a, &toks), SN_OK);
    cr_assert(strstr(sn_errmsg(), "audio"), "%s", sn_errmsg());

    sn_tokens_clear(&toks);
    free(x);
    sn_codec_close(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Streaming                                                                                */
/* ---------------------------------------------------------------------------------------- */

Test(sensor_bins, any_chunking_gives_the_ids_of_the_whole)
{
    sn_codec *c = open_codec(IMU_CONFIG(256), NULL);
    size_t ticks = 3000;
    float *x = imu_series(ticks, 42);
    sn_tokens whole = encode_all(c, x, ticks, 6);
    cr_assert_eq(whole.n, ticks * 6);
    uint64_t seed = 99;
    for (int trial = 0; trial < 100; trial++) {
        sn_tokens part = {0};
        size_t max_chunk = 1 + rng_below(&seed, trial % 2 ? 5 : 400);
        for (size_t at = 0; at < ticks;) {
            size_t k = rng_below(&seed, max_chunk + 1); /* empty chunks too */
            if (k > ticks - at)
                k = ticks - at;
            sn_media m = series(x + at * 6, k, 6, 100.0, (double)at / 100.0);
            cr_assert_eq(sn_codec_encode(c, &m, &part), SN_OK, "%s", sn_errmsg());
            at += k;
        }
        cr_assert_eq(sn_codec_encode_flush(c, &part), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(part.n, whole.n, "trial %d", trial);
        cr_assert_eq(memcmp(part.ids, whole.ids, whole.n * sizeof *whole.ids), 0,
                     "trial %d: chunked ids differ", trial);
        sn_tokens_clear(&part);
    }
    sn_tokens_clear(&whole);
    free(x);
    sn_codec_close(c);
}

Test(sensor_bins, decode_split_anywhere_gives_the_same_vectors)
{
    sn_codec *c = open_codec(IMU_CONFIG(256), NULL);
    size_t ticks = 50;
    float *x = imu_series(ticks, 3);
    sn_tokens toks = encode_all(c, x, ticks, 6);
    vecs whole = decode_all(c, toks.ids, toks.n);
    cr_assert_eq(whole.n, ticks);
    for (size_t k = 0; k <= toks.n; k++) {
        vecs o = {0};
        cr_assert_eq(sn_codec_decode(c, toks.ids, k, 1.0, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.n, k / 6, "split at %zu: whole ticks only", k);
        cr_assert_eq(sn_codec_decode(c, toks.ids + k, toks.n - k, 2.0, collect, &o), SN_OK, "%s",
                     sn_errmsg());
        cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.n, whole.n, "split at %zu", k);
        cr_assert_eq(memcmp(o.v, whole.v, whole.n * 6 * sizeof *o.v), 0, "split at %zu", k);
        /* A vector carries the t of the decode call that completed it. */
        for (size_t i = 0; i < o.n; i++)
            cr_assert_float_eq(o.t[i], (i + 1) * 6 <= k ? 1.0 : 2.0, 0, "split at %zu vector %zu", k, i);
        vecs_free(&o);
    }
    /* One id per call. */
    vecs o = {0};
    for (size_t i = 0; i < toks.n; i++)
        cr_assert_eq(sn_codec_decode(c, toks.ids + i, 1, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, whole.n);
    cr_assert_eq(memcmp(o.v, whole.v, whole.n * 6 * sizeof *o.v), 0);
    vecs_free(&o);
    vecs_free(&whole);
    sn_tokens_clear(&toks);
    free(x);
    sn_codec_close(c);
}

Test(sensor_bins, flush_mid_tick_is_an_error_and_resets)
{
    sn_codec *c = open_codec("{\"low\": [0, 0, 0, 0, 0, 0, 0], \"high\": [1, 1, 1, 1, 1, 1, 1]}", NULL);
    int32_t ids[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    vecs o = {0};
    cr_assert_eq(sn_codec_decode(c, ids, 10, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 1);
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_ERR_PLUGIN);
    cr_log_info("%s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "segment ended mid-tick: 3 of 7 values"), "%s", sn_errmsg());
    cr_assert_eq(o.n, 1, "nothing emitted for the partial tick");
    /* Reset: the next 7 ids are one whole tick. */
    cr_assert_eq(sn_codec_decode(c, ids, 7, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 2);
    cr_assert_float_eq(o.v[7], (1 + 0.5) / 256, 1e-7);
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
    /* Empty decode and flush: nothing. */
    cr_assert_eq(sn_codec_decode(c, NULL, 0, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 2);
    vecs_free(&o);
    sn_codec_close(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Constrained generation                                                                   */
/* ---------------------------------------------------------------------------------------- */

static size_t count_allowed(const uint64_t *allowed, uint32_t vocab)
{
    size_t k = 0;
    for (uint32_t i = 0; i < vocab; i++)
        k += allowed[i / 64] >> (i % 64) & 1;
    return k;
}

Test(sensor_bins, constrain_keeps_segments_to_whole_ticks)
{
    sn_codec *c = open_codec("{\"bins\": 100, \"low\": [0, 0, 0], \"high\": [1, 1, 1]}", NULL);
    int32_t seg[64] = {0};
    uint64_t allowed[2];
    int may_end;
    for (size_t n = 0; n < 40; n++) {
        cr_assert_eq(sn_codec_constrain(c, seg, n, allowed, &may_end), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(count_allowed(allowed, 100), 100, "n %zu: every id may follow", n);
        cr_assert_eq(may_end, n > 0 && n % 3 == 0, "n %zu: may_end %d", n, may_end);
    }
    sn_codec_close(c);

    c = open_codec("{\"bins\": 100, \"ticks_per_segment\": 2, \"low\": [0, 0, 0], \"high\": [1, 1, 1]}", NULL);
    for (size_t n = 0; n <= 6; n++) {
        cr_assert_eq(sn_codec_constrain(c, seg, n, allowed, &may_end), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(count_allowed(allowed, 100), n < 6 ? 100 : 0, "n %zu", n);
        cr_assert_eq(may_end, n == 6, "n %zu: exactly 2 ticks of 3", n);
    }
    cr_assert_eq(sn_codec_constrain(c, seg, 7, allowed, &may_end), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "7 ids"), "%s", sn_errmsg());

    /* constrain does not touch the decoder: a held partial tick survives it. */
    vecs o = {0};
    cr_assert_eq(sn_codec_decode(c, seg, 2, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_constrain(c, seg, 5, allowed, &may_end), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode(c, seg, 1, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 1);
    vecs_free(&o);
    sn_codec_close(c);
}

Test(sensor_bins, generation_that_follows_constrain_decodes_to_whole_ticks)
{
    sn_codec *c = open_codec("{\"bins\": 16, \"low\": [0, 0, 0, 0, 0], \"high\": [1, 1, 1, 1, 1]}", NULL);
    uint64_t seed = 5;
    int32_t seg[512];
    size_t n = 0, segments = 0, ticks = 0;
    vecs o = {0};
    for (int step = 0; step < 3000; step++) {
        uint64_t allowed[1];
        int may_end;
        cr_assert_eq(sn_codec_constrain(c, seg, n, allowed, &may_end), SN_OK, "%s", sn_errmsg());
        if (may_end && (n + 5 >= 512 || rng_below(&seed, 4) == 0)) {
            cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "step %d: %s", step, sn_errmsg());
            ticks += n / 5;
            n = 0;
            segments++;
            continue;
        }
        int32_t id;
        do
            id = (int32_t)rng_below(&seed, 16);
        while (!(allowed[0] >> id & 1));
        seg[n++] = id;
        cr_assert_eq(sn_codec_decode(c, &id, 1, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    }
    cr_assert_gt(segments, 10);
    /* Every id was decoded as drawn: the ended segments gave whole ticks, the open one its
     * whole ticks so far. */
    cr_assert_eq(o.n, ticks + n / 5);
    vecs_free(&o);
    sn_codec_close(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Fit                                                                                      */
/* ---------------------------------------------------------------------------------------- */

static sn_media *fit_data_0_999(float **buf)
{
    /* Two files: ticks 0..499 and 500..999 (dimension 0: x, dimension 1: 2x - 500), plus a
     * third holding 3 non-finite values (NaN, +Inf, -Inf) among its 6, which fit skips. */
    float *v = malloc((1000 + 3) * 2 * sizeof *v);
    cr_assert_not_null(v);
    for (int i = 0; i < 1000; i++) {
        v[2 * i] = (float)i;
        v[2 * i + 1] = (float)(2 * i - 500);
    }
    float *bad = v + 2000;
    bad[0] = NAN, bad[1] = INFINITY, bad[2] = -INFINITY, bad[3] = 3.0f, bad[4] = 500.0f, bad[5] = 7.0f;
    static sn_media m[3];
    m[0] = series(v + 1000, 500, 2, 100.0, 0.0); /* the second half first: order is irrelevant */
    m[1] = series(v, 500, 2, 100.0, 0.0);
    m[2] = series(bad, 3, 2, 100.0, 0.0);
    *buf = v;
    return m;
}

Test(sensor_bins, fit_writes_linear_percentiles_deterministically)
{
    static const char *const files[] = {"a.npy", "b.npy"};
    float *buf;
    sn_media *m = fit_data_0_999(&buf);
    /* The third file also holds finite values (500 in dimension 0, 3 and 7 in dimension 1),
     * which would move the known answer: fit the first two, then count the skipped values
     * with all three. */
    log_len = 0;
    sn_set_log_handler(log_handler, NULL);
    cr_assert_eq(sn_fit(plugins, "sensor.bins", NULL, m, 2, tmp_path("a.npy")), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_fit(plugins, "sensor.bins", "{\"dims\": 2, \"bins\": 64}", m, 2, tmp_path("b.npy")),
                 SN_OK, "%s", sn_errmsg());
    cr_log_info("fit log:\n%s", log_buf);
    cr_assert(strstr(log_buf, "0 non-finite values"), "%s", log_buf);

    sn_media r = {0};
    cr_assert_eq(sn_media_read(tmp_path("a.npy"), &r), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(r.series.n_ticks, 2, "(2, D)");
    cr_assert_eq(r.series.dims, 2);
    /* numpy.percentile(np.arange(1000), [1, 99]) = [9.99, 989.01]: rank 0.01 * 999 = 9.99
     * interpolates between 9 and 10. Dimension 1 is 2x - 500: [-480.02, 1478.02]. float32. */
    const float want[4] = {9.99f, -480.02f, 989.01f, 1478.02f};
    for (int i = 0; i < 4; i++) {
        cr_log_info("ranges[%d] = %.9g, want %.9g", i, (double)r.series.values[i], (double)want[i]);
        cr_assert_eq(r.series.values[i], want[i], "ranges[%d] = %.9g, want %.9g", i,
                     (double)r.series.values[i], (double)want[i]);
    }
    fprintf(stderr, "sensor.bins fit on 0..999: low %.6g, high %.6g (numpy: 9.99, 989.01)\n",
            (double)r.series.values[0], (double)r.series.values[2]);
    sn_media_release(&r);

    /* Deterministic: the same bytes both times. */
    FILE *fa = fopen(tmp_path("a.npy"), "rb"), *fb = fopen(tmp_path("b.npy"), "rb");
    cr_assert(fa && fb);
    char ba[4096], bb[4096];
    size_t na = fread(ba, 1, sizeof ba, fa), nb = fread(bb, 1, sizeof bb, fb);
    fclose(fa);
    fclose(fb);
    cr_assert_eq(na, nb);
    cr_assert_eq(memcmp(ba, bb, na), 0, "two fits wrote different files");

    /* With the third file: its 3 non-finite values skipped, counted in the log. */
    log_len = 0;
    cr_assert_eq(sn_fit(plugins, "sensor.bins", NULL, m, 3, tmp_path("b.npy")), SN_OK, "%s", sn_errmsg());
    cr_assert(strstr(log_buf, "3 non-finite values (NaN, Inf) skipped"), "%s", log_buf);

    /* The fitted file is what create loads from the data directory by default. */
    cr_assert_eq(rename(tmp_path("a.npy"), tmp_path("b.npy")), 0);
    char cfg[300];
    snprintf(cfg, sizeof cfg, "{\"ranges\": \"b.npy\"}");
    sn_codec *c = open_codec(cfg, tmp_dir);
    float x[4] = {9.99f, -480.02f, 989.0f, 2000.0f};
    sn_tokens toks = encode_all(c, x, 2, 2);
    cr_assert_eq(toks.ids[0], 0);
    cr_assert_eq(toks.ids[1], 0);
    cr_assert_eq(toks.ids[2], 255);
    cr_assert_eq(toks.ids[3], 255);
    sn_tokens_clear(&toks);
    sn_codec_close(c);
    free(buf);
    tmp_done(files, 2);
}

Test(sensor_bins, fit_refuses_bad_data)
{
    static const char *const files[] = {"f.npy"};
    float v[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    sn_media m[2] = {series(v, 6, 2, 0, 0), series(v, 4, 3, 0, 0)};
    cr_assert_eq(sn_fit(plugins, "sensor.bins", NULL, m, 2, tmp_path("f.npy")), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "data item 1 has 3 dims per tick, but data item 0 has 2"), "%s", sn_errmsg());

    cr_assert_eq(sn_fit(plugins, "sensor.bins", "{\"dims\": 3}", m, 1, tmp_path("f.npy")), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "'dims' says 3"), "%s", sn_errmsg());

    sn_media empty = series(v, 0, 2, 0, 0);
    cr_assert_eq(sn_fit(plugins, "sensor.bins", NULL, &empty, 1, tmp_path("f.npy")), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "no ticks"), "%s", sn_errmsg());

    float nan2[4] = {NAN, 1, NAN, 2};
    sn_media allnan = series(nan2, 2, 2, 0, 0);
    cr_assert_eq(sn_fit(plugins, "sensor.bins", NULL, &allnan, 1, tmp_path("f.npy")), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "dimension 0 has no finite value"), "%s", sn_errmsg());

    cr_assert_eq(sn_fit(plugins, "sensor.bins", "{\"bogus\": 1}", m, 1, tmp_path("f.npy")), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "bogus"), "%s", sn_errmsg());

    cr_assert_eq(sn_fit(plugins, "sensor.bins", NULL, m, 1, "/nonexistent/dir/f.npy"), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "/nonexistent/dir/f.npy"), "%s", sn_errmsg());

    sn_media text = {.kind = SN_MEDIA_TEXT};
    text.text.utf8 = "x";
    text.text.len = 1;
    cr_assert_neq(sn_fit(plugins, "sensor.bins", NULL, &text, 1, tmp_path("f.npy")), SN_OK);
    cr_assert(strstr(sn_errmsg(), "text"), "%s", sn_errmsg());

    /* A constant dimension gets a small range around its value, with a warning, so that the
     * file still loads. */
    float cst[6] = {5, 1, 5, 2, 5, 3};
    sn_media cm = series(cst, 3, 2, 0, 0);
    log_len = 0;
    sn_set_log_handler(log_handler, NULL);
    cr_assert_eq(sn_fit(plugins, "sensor.bins", NULL, &cm, 1, tmp_path("f.npy")), SN_OK, "%s", sn_errmsg());
    cr_assert(strstr(log_buf, "dimension 0 is constant"), "%s", log_buf);
    sn_media r = {0};
    cr_assert_eq(sn_media_read(tmp_path("f.npy"), &r), SN_OK, "%s", sn_errmsg());
    cr_assert_lt(r.series.values[0], 5.0f);
    cr_assert_gt(r.series.values[2], 5.0f);
    sn_media_release(&r);
    tmp_done(files, 1);
}

/* ---------------------------------------------------------------------------------------- */
/* Data: a synthetic IMU and a real recording                                               */
/* ---------------------------------------------------------------------------------------- */

/* Fits on one series, then encodes and decodes another; values within the fitted ranges come
 * back within half a bin, the rest clamp to the end bins. Returns the worst in-range error in
 * bins. */
static double fit_and_round_trip(const float *fit_x, size_t fit_ticks, const float *x,
                                 size_t ticks, uint32_t D, const char *label)
{
    static const char *const files[] = {"sensor.bins.npy"};
    sn_media m = series(fit_x, fit_ticks, D, 100.0, 0.0);
    cr_assert_eq(sn_fit(plugins, "sensor.bins", NULL, &m, 1, tmp_path("sensor.bins.npy")), SN_OK,
                 "%s", sn_errmsg());
    sn_media r = {0};
    cr_assert_eq(sn_media_read(tmp_path("sensor.bins.npy"), &r), SN_OK, "%s", sn_errmsg());
    sn_codec *c = open_codec(NULL, tmp_dir);
    sn_tokens toks = encode_all(c, x, ticks, D);
    vecs o = decode_all(c, toks.ids, toks.n);
    cr_assert_eq(o.n, ticks);
    double worst = 0;
    size_t outside = 0;
    for (uint32_t d = 0; d < D; d++) {
        double lo = r.series.values[d], hi = r.series.values[D + d], w = (hi - lo) / 256;
        for (size_t i = 0; i < ticks; i++) {
            double v = x[i * D + d];
            int32_t id = toks.ids[i * D + d];
            if (v < lo || v > hi) {
                outside++;
                cr_assert_eq(id, v < lo ? 0 : 255, "%s: clamped", label);
                continue;
            }
            double e = fabs((double)o.v[i * D + d] - v);
            cr_assert_leq(e, half_bin_bound(lo, hi, 256), "%s dim %u tick %zu: error %g", label,
                          d, i, e);
            if (e / w > worst)
                worst = e / w;
        }
    }
    /* The 1st and 99th percentiles leave about 2 % of the fitting data outside. */
    fprintf(stderr, "sensor.bins %s: %zu ticks x %u dims, max in-range error %.4f of a bin (bound 0.5 plus float32 rounding), %.2f %% of values clamped\n",
            label, ticks, D, worst, 100.0 * outside / (ticks * D));
    vecs_free(&o);
    sn_tokens_clear(&toks);
    sn_codec_close(c);
    sn_media_release(&r);
    tmp_done(files, 1);
    return worst;
}

Test(sensor_bins, synthetic_imu_fit_and_round_trip)
{
    size_t ticks = 6000; /* one minute at 100 Hz */
    float *train = imu_series(ticks, 1), *test = imu_series(ticks, 2);
    double worst = fit_and_round_trip(train, ticks, test, ticks, 6, "synthetic IMU");
    cr_assert_leq(worst, 0.5 + 1e-4);
    /* Fitting on the same series it encodes: exactly ~2 % clamped per dimension. */
    fit_and_round_trip(train, ticks, train, ticks, 6, "synthetic IMU (fit = test)");
    free(train);
    free(test);
}

Test(sensor_bins, real_recording_frame_features_fit_and_round_trip)
{
    /* Speech at 48 kHz as a 100 Hz series of two frame features: log energy (dB) and
     * zero-crossing rate, the kind of slow sensor channel sensor.bins is for. */
    sn_media wav = {0};
    cr_assert_eq(sn_media_read(SN_TESTDATA_DIR "/usr/share/sounds/alsa/Front_Center.wav", &wav),
                 SN_OK, "%s", sn_errmsg());
    cr_assert_eq(wav.kind, SN_MEDIA_AUDIO);
    size_t hop = wav.audio.sample_rate / 100, ticks = wav.audio.n_samples / hop;
    cr_assert_gt(ticks, 50);
    float *x = malloc(ticks * 2 * sizeof *x);
    cr_assert_not_null(x);
    for (size_t i = 0; i < ticks; i++) {
        const float *s = wav.audio.samples + i * hop;
        double e = 0;
        size_t zc = 0;
        for (size_t k = 0; k < hop; k++) {
            e += (double)s[k] * s[k];
            if (k && (s[k] >= 0) != (s[k - 1] >= 0))
                zc++;
        }
        x[2 * i] = (float)(10 * log10(e / hop + 1e-10));
        x[2 * i + 1] = (float)zc / (float)hop;
    }
    double worst = fit_and_round_trip(x, ticks, x, ticks, 2, "Front_Center.wav frame features");
    cr_assert_leq(worst, 0.5 + 1e-4);
    free(x);
    sn_media_release(&wav);
}

Test(sensor_bins, encodes_far_faster_than_real_time)
{
    /* The goal is >= 100x real time for a 100 Hz sensor; one core does far more. Loose bound
     * (a sanitizer build is slow): 100x real time for 6 dims at 100 Hz = 10^4 ticks/s. */
    sn_codec *c = open_codec(IMU_CONFIG(256), NULL);
    size_t ticks = 200000;
    float *x = imu_series(ticks, 11);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sn_tokens toks = encode_all(c, x, ticks, 6);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    double rt = (double)ticks / 100.0 / s;
    fprintf(stderr, "sensor.bins encode: %zu ticks x 6 dims in %.4f s = %.0fx real time at 100 Hz\n",
            ticks, s, rt);
    cr_assert_geq(rt, 100.0);
    sn_tokens_clear(&toks);
    free(x);
    sn_codec_close(c);
}

/* ---------------------------------------------------------------------------------------- */
/* The plugin called directly: what the codec API does not show                            */
/* ---------------------------------------------------------------------------------------- */

/* A minimal host with the configuration {"low": [0, 0], "high": [1, 1]}. */
static const char *fake_key(const sn_host *h, size_t i)
{
    (void)h;
    static const char *const keys[] = {"low", "high"};
    return i < 2 ? keys[i] : NULL;
}
static void fake_log(const sn_host *h, sn_log_level l, const char *fmt, ...)
{
    (void)h, (void)l, (void)fmt;
}
static sn_plugin_status fake_nf_int(const sn_host *h, const char *k, int64_t *o, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static sn_plugin_status fake_nf_float(const sn_host *h, const char *k, double *o, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static sn_plugin_status fake_nf_bool(const sn_host *h, const char *k, int *o, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static sn_plugin_status fake_nf_string(const sn_host *h, const char *k, const char **o, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static sn_plugin_status fake_nf_ints(const sn_host *h, const char *k, int64_t *o, size_t cap,
                                     size_t *n, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)cap, (void)n, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static sn_plugin_status fake_floats(const sn_host *h, const char *k, double *o, size_t cap,
                                    size_t *n, sn_plugin_error *e)
{
    (void)h, (void)e;
    double v = strcmp(k, "low") == 0 ? 0.0 : strcmp(k, "high") == 0 ? 1.0 : -1.0;
    if (v < 0)
        return SN_PLUGIN_ERR_NOT_FOUND;
    *n = 2;
    for (size_t i = 0; i < cap && i < 2; i++)
        o[i] = v;
    return SN_PLUGIN_OK;
}
static sn_plugin_status fake_nf_strings(const sn_host *h, const char *k, const char **o,
                                        size_t cap, size_t *n, sn_plugin_error *e)
{
    (void)h, (void)k, (void)o, (void)cap, (void)n, (void)e;
    return SN_PLUGIN_ERR_NOT_FOUND;
}
static const char *fake_dir(const sn_host *h)
{
    (void)h;
    return NULL;
}

/* Every sink call: its ids and t. */
typedef struct calls {
    size_t n_calls, n_ids;
    int32_t ids[4096];
    double t_of_id[4096];
} calls;

static sn_plugin_status record(void *ctx, const int32_t *ids, size_t n, double t)
{
    calls *c = ctx;
    c->n_calls++;
    for (size_t i = 0; i < n && c->n_ids < 4096; i++) {
        c->ids[c->n_ids] = ids[i];
        c->t_of_id[c->n_ids++] = t;
    }
    return SN_PLUGIN_OK;
}

Test(sensor_bins, ids_of_tick_i_carry_t_plus_i_over_rate)
{
    void *so = dlopen(SN_BUILD_PLUGIN_DIR "/sensor_bins.so", RTLD_NOW | RTLD_LOCAL);
    cr_assert_not_null(so, "%s", dlerror());
    sn_plugin_entry_fn entry = (sn_plugin_entry_fn)dlsym(so, SN_PLUGIN_ENTRY_SYMBOL);
    cr_assert_not_null(entry);
    const sn_plugin_desc *d = entry(0);
    sn_host host = {
        .struct_size = sizeof host, .abi_major = SN_PLUGIN_ABI_MAJOR,
        .abi_minor = SN_PLUGIN_ABI_MINOR, .log = fake_log, .config_int = fake_nf_int,
        .config_float = fake_nf_float, .config_bool = fake_nf_bool,
        .config_string = fake_nf_string, .config_int_array = fake_nf_ints,
        .config_float_array = fake_floats, .config_string_array = fake_nf_strings,
        .config_key = fake_key, .data_dir = fake_dir,
    };
    sn_plugin_error err = {{0}};
    sn_instance *inst = NULL;
    sn_stream *st = NULL;
    cr_assert_eq(d->create(&host, &inst, &err), SN_PLUGIN_OK, "%s", err.message);
    cr_assert_eq(d->open_stream(inst, &st, &err), SN_PLUGIN_OK, "%s", err.message);

    float x[2000];
    for (int i = 0; i < 2000; i++)
        x[i] = (float)(i % 97) / 97.0f;
    calls *c = calloc(1, sizeof *c);
    cr_assert_not_null(c);
    sn_token_sink sink = {c, record};
    sn_media m = series(x, 1000, 2, 50.0, 3.0);
    cr_assert_eq(d->encode(st, &m, &sink, &err), SN_PLUGIN_OK, "%s", err.message);
    cr_assert_eq(c->n_ids, 2000);
    for (size_t k = 0; k < 2000; k++)
        cr_assert_float_eq(c->t_of_id[k], 3.0 + (double)(k / 2) / 50.0, 1e-9, "id %zu", k);

    /* Unknown rate: every id carries the chunk's t, and ids are batched. */
    memset(c, 0, sizeof *c);
    m = series(x, 1000, 2, 0.0, 7.5);
    cr_assert_eq(d->encode(st, &m, &sink, &err), SN_PLUGIN_OK, "%s", err.message);
    cr_assert_eq(c->n_ids, 2000);
    cr_assert_lt(c->n_calls, 20, "ids of one time go in batches");
    for (size_t k = 0; k < 2000; k++)
        cr_assert_float_eq(c->t_of_id[k], 7.5, 0, "id %zu", k);

    /* The plugin's own check of the media kind (the engine filters first). */
    sn_media a = {.kind = SN_MEDIA_AUDIO};
    a.audio.samples = x;
    a.audio.n_samples = 2;
    a.audio.sample_rate = 8000;
    cr_assert_eq(d->encode(st, &a, &sink, &err), SN_PLUGIN_ERR_INVALID);
    cr_assert(strstr(err.message, "audio"), "%s", err.message);

    free(c);
    d->close_stream(st);
    d->destroy(inst);
    dlclose(so);
}
