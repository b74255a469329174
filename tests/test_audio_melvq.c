/*
 * test_audio_melvq.c - the audio.melvq plugin end to end, through the engine's public API
 * (plugins/audio_melvq.so from the build's plugin folder): `fit` learning a codebook of
 * log-mel frames from real read speech, encode, decode, and the errors a user meets.
 *
 * What a user relies on: each token is the codebook entry nearest to the 80-band log-mel
 * frame of 20 ms of the sound, checked against a reference front end written here from the
 * definitions (plain DFT in double, Slaney mel filterbank); any chunking of a live feed, at
 * 16 kHz or resampled from 48 kHz, gives exactly the ids of one call; a codebook fitted on a
 * few recordings quantises a recording it has never seen well; the decoder turns the ids back
 * into audio whose spectrum follows the original's; fitting is deterministic and says how
 * much audio it needs; bad configurations, codebooks and audio fail with a message naming the
 * problem.
 *
 * Data: pocketsphinx's read speech at 16 kHz (librivox: a reader of Sense and Sensibility;
 * cards: a speaker naming playing cards) and alsa's Front_Center.wav at 48 kHz, unpacked by
 * scripts/test.sh. The codebook is fitted on every pocketsphinx recording except librivox 0870,
 * which is held out for the quality measurements.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sensorium/sensorium.h"

#define PS SN_TESTDATA_DIR "/usr/share/pocketsphinx/test/data/"
#define HELD_OUT PS "librivox/sense_and_sensibility_01_austen_64kb-0870.wav"
#define SPEECH_48K SN_TESTDATA_DIR "/usr/share/sounds/alsa/Front_Center.wav"

#define NMEL 80
#define WIN 400
#define HOP 320
#define NFFT 512
#define NBIN 257
#define K 64
#define CONFIG "{\"codebook_size\": 64}"

static const char *const TRAIN[] = {
    PS "librivox/sense_and_sensibility_01_austen_64kb-0880.wav",
    PS "librivox/sense_and_sensibility_01_austen_64kb-0890.wav",
    PS "librivox/sense_and_sensibility_01_austen_64kb-0920.wav",
    PS "librivox/sense_and_sensibility_01_austen_64kb-0930.wav",
    PS "cards/001.wav", PS "cards/002.wav", PS "cards/003.wav", PS "cards/004.wav",
    PS "cards/005.wav"};
#define N_TRAIN (sizeof TRAIN / sizeof *TRAIN)

static sn_plugins *plugins;
static char dir[64]; /* a fresh temporary data directory per test */

static void setup(void)
{
    cr_assert_eq(sn_plugins_open(SN_BUILD_PLUGIN_DIR, SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT,
                                 &plugins),
                 SN_OK, "%s", sn_errmsg());
    snprintf(dir, sizeof dir, "/tmp/sn_melvq_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static const char *const FILES[] = {"audio.melvq.npy", "again.npy", "small.npy", "narrow.npy",
                                    "nan.npy", "never.npy"};

static void teardown(void)
{
    char path[128];
    for (size_t i = 0; i < sizeof FILES / sizeof *FILES; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, FILES[i]);
        unlink(path);
    }
    rmdir(dir);
    sn_set_log_handler(NULL, NULL);
    sn_plugins_close(plugins);
    plugins = NULL;
}

TestSuite(audio_melvq, .init = setup, .fini = teardown, .timeout = 120);

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

static size_t rng_range(uint64_t *s, size_t lo, size_t hi) /* [lo, hi] */
{
    return lo + (size_t)(rng_next(s) % (hi - lo + 1));
}

static sn_media read_audio(const char *path)
{
    sn_media m;
    cr_assert_eq(sn_media_read(path, &m), SN_OK, "%s (run scripts/test.sh to unpack the test data)",
                 sn_errmsg());
    cr_assert_eq(m.kind, SN_MEDIA_AUDIO, "%s is not audio", path);
    return m;
}

static void path_in_dir(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

/* Fits a K-entry codebook on the training recordings (not the held-out one) into dir/name. */
static void fit_codebook(const char *name, const char *config)
{
    sn_media data[N_TRAIN];
    for (size_t i = 0; i < N_TRAIN; i++)
        data[i] = read_audio(TRAIN[i]);
    char out[128];
    path_in_dir(out, sizeof out, name);
    cr_assert_eq(sn_fit(plugins, "audio.melvq", config, data, N_TRAIN, out), SN_OK, "%s", sn_errmsg());
    for (size_t i = 0; i < N_TRAIN; i++)
        sn_media_release(&data[i]);
}

static sn_codec *open_with(const char *config)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "audio.melvq", config, dir, &c), SN_OK, "config %s: %s",
                 config, sn_errmsg());
    return c;
}

/* The codebook file as (K, NMEL) floats, read through the engine's NPY reader. */
static float *read_codebook(const char *name, size_t *rows)
{
    char path[128];
    path_in_dir(path, sizeof path, name);
    sn_media m;
    cr_assert_eq(sn_media_read(path, &m), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(m.kind, SN_MEDIA_SERIES);
    cr_assert_eq(m.series.dims, NMEL, "codebook rows hold %u values, expected %d", m.series.dims, NMEL);
    float *cb = malloc(m.series.n_ticks * NMEL * sizeof *cb);
    cr_assert_not_null(cb);
    memcpy(cb, m.series.values, m.series.n_ticks * NMEL * sizeof *cb);
    *rows = m.series.n_ticks;
    sn_media_release(&m);
    return cb;
}

/* Writes a (rows, cols) float32 NPY file in the data directory, through the engine's writer. */
static void write_npy(const char *name, const float *v, size_t rows, size_t cols)
{
    char path[128];
    path_in_dir(path, sizeof path, name);
    sn_media m = {.kind = SN_MEDIA_SERIES};
    m.series.values = v;
    m.series.n_ticks = rows;
    m.series.dims = (uint32_t)cols;
    cr_assert_eq(sn_media_write(path, &m), SN_OK, "%s", sn_errmsg());
}

/* Tokenizes audio whole, or in chunks whose sizes chunk(i) gives, then flushes. */
typedef size_t (*chunker)(uint64_t *rng, void *ctx);

static void tokenize(sn_codec *c, const sn_media *m, chunker next, void *ctx, uint64_t seed,
                     sn_tokens *ids)
{
    if (!next) {
        cr_assert_eq(sn_codec_encode(c, m, ids), SN_OK, "%s", sn_errmsg());
    } else {
        uint64_t rng = seed;
        for (size_t at = 0; at < m->audio.n_samples;) {
            size_t n = next(&rng, ctx);
            if (n > m->audio.n_samples - at)
                n = m->audio.n_samples - at;
            sn_media part = *m;
            part.audio.samples += at;
            part.audio.n_samples = n;
            cr_assert_eq(sn_codec_encode(c, &part, ids), SN_OK, "%s", sn_errmsg());
            at += n;
        }
    }
    cr_assert_eq(sn_codec_encode_flush(c, ids), SN_OK, "%s", sn_errmsg());
}

/* ---------------------------------------------------------------------------------------- */
/* Reference front end, from the definitions, in double                                     */
/* ---------------------------------------------------------------------------------------- */

/* Slaney's mel scale (Auditory Toolbox; librosa's default): 3 mel per 200 Hz up to 1 kHz,
 * then logarithmic with 27 mel per factor 6.4. */
static double ref_hz_to_mel(double f)
{
    return f < 1000 ? f * 3 / 200 : 15 + 27 * log(f / 1000) / log(6.4);
}

static double ref_mel_to_hz(double m)
{
    return m < 15 ? m * 200 / 3 : 1000 * pow(6.4, (m - 15) / 27);
}

typedef struct ref_frontend {
    double window[WIN];
    double fb[NMEL][NBIN]; /* Slaney-normalised triangles: each band's area is the same */
    double cos_t[NBIN][WIN], sin_t[NBIN][WIN];
} ref_frontend;

static ref_frontend *ref_new(void)
{
    ref_frontend *r = malloc(sizeof *r);
    cr_assert_not_null(r);
    for (int i = 0; i < WIN; i++)
        r->window[i] = 0.5 - 0.5 * cos(2 * M_PI * i / WIN); /* periodic Hann */
    double f[NMEL + 2];
    for (int i = 0; i < NMEL + 2; i++)
        f[i] = ref_mel_to_hz(ref_hz_to_mel(8000) * i / (NMEL + 1));
    for (int m = 0; m < NMEL; m++)
        for (int k = 0; k < NBIN; k++) {
            double hz = k * 16000.0 / NFFT;
            double up = (hz - f[m]) / (f[m + 1] - f[m]), down = (f[m + 2] - hz) / (f[m + 2] - f[m + 1]);
            double t = up < down ? up : down;
            r->fb[m][k] = t > 0 ? t * 2 / (f[m + 2] - f[m]) : 0;
        }
    for (int k = 0; k < NBIN; k++)
        for (int i = 0; i < WIN; i++) {
            r->cos_t[k][i] = cos(2 * M_PI * k * i / NFFT);
            r->sin_t[k][i] = sin(2 * M_PI * k * i / NFFT);
        }
    return r;
}

/* The log-mel frames of n samples at 16 kHz: frame i covers samples [320 i, 320 i + 400),
 * zero past the end, for i < ceil(n / 320). Returns the frame count; *out is malloc'ed. */
static size_t ref_logmel(const ref_frontend *r, const float *x, size_t n, double **out)
{
    size_t frames = (n + HOP - 1) / HOP;
    double *lm = malloc((frames ? frames : 1) * NMEL * sizeof *lm);
    cr_assert_not_null(lm);
    for (size_t i = 0; i < frames; i++) {
        double v[WIN], power[NBIN];
        for (size_t j = 0; j < WIN; j++)
            v[j] = i * HOP + j < n ? x[i * HOP + j] * r->window[j] : 0;
        for (int k = 0; k < NBIN; k++) {
            double re = 0, im = 0;
            for (int j = 0; j < WIN; j++) {
                re += v[j] * r->cos_t[k][j];
                im -= v[j] * r->sin_t[k][j];
            }
            power[k] = re * re + im * im;
        }
        for (int m = 0; m < NMEL; m++) {
            double acc = 0;
            for (int k = 0; k < NBIN; k++)
                acc += r->fb[m][k] * power[k];
            lm[i * NMEL + m] = log(acc + 1e-6);
        }
    }
    *out = lm;
    return frames;
}

static double sq_dist(const double *a, const float *c)
{
    double d = 0;
    for (int m = 0; m < NMEL; m++)
        d += (a[m] - c[m]) * (a[m] - c[m]);
    return d;
}

/* Pearson correlation of n values. */
static double correlation(const double *a, const double *b, size_t n)
{
    double ma = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        ma += a[i];
        mb += b[i];
    }
    ma /= (double)n;
    mb /= (double)n;
    double sab = 0, saa = 0, sbb = 0;
    for (size_t i = 0; i < n; i++) {
        sab += (a[i] - ma) * (b[i] - mb);
        saa += (a[i] - ma) * (a[i] - ma);
        sbb += (b[i] - mb) * (b[i] - mb);
    }
    return sab / sqrt(saa * sbb);
}

/* Mean over frames of the RMS difference of two log-mel frames, in dB. */
static double log_spectral_distance(const double *a, const double *b, size_t frames)
{
    double sum = 0;
    for (size_t i = 0; i < frames; i++) {
        double d2 = 0;
        for (int m = 0; m < NMEL; m++) {
            double db = (a[i * NMEL + m] - b[i * NMEL + m]) * 10 / log(10);
            d2 += db * db;
        }
        sum += sqrt(d2 / NMEL);
    }
    return sum / (double)frames;
}

/* ---------------------------------------------------------------------------------------- */
/* Tokens                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Each id is the codebook entry nearest to the reference log-mel frame: the plugin's single
 * precision FFT and float search may break a near-tie the other way, so the chosen entry must
 * be within 1e-4 (relative) of the nearest distance, and that should be rare. Two stimuli:
 * the held-out recording (113600 samples: its last frame holds 320 samples and 80 zeros) and
 * its first 113300 samples (two partial frames at the end: 340 and 20 samples). That also
 * pins the documented choice: every frame that starts before the end is emitted, zero-padded,
 * so N samples give ceil(N / 320) tokens. */
Test(audio_melvq, ids_are_the_nearest_entries_to_a_reference_log_mel)
{
    fit_codebook("audio.melvq.npy", CONFIG);
    size_t rows;
    float *cb = read_codebook("audio.melvq.npy", &rows);
    cr_assert_eq(rows, K);
    sn_media m = read_audio(HELD_OUT);
    cr_assert_eq(m.audio.sample_rate, 16000);
    ref_frontend *ref = ref_new();
    sn_codec *c = open_with(CONFIG);
    const size_t lengths[2] = {m.audio.n_samples, 113300};
    for (int l = 0; l < 2; l++) {
        sn_media part = m;
        part.audio.n_samples = lengths[l];
        sn_tokens ids = {0};
        tokenize(c, &part, NULL, NULL, 0, &ids);
        double *lm;
        size_t frames = ref_logmel(ref, part.audio.samples, lengths[l], &lm);
        cr_assert_eq(ids.n, frames, "%zu samples gave %zu ids, expected ceil(n / 320) = %zu",
                     lengths[l], ids.n, frames);
        size_t exact = 0;
        for (size_t i = 0; i < frames; i++) {
            const double *v = lm + i * NMEL;
            cr_assert(ids.ids[i] >= 0 && ids.ids[i] < K);
            double best = INFINITY;
            for (size_t k = 0; k < K; k++) {
                double d = sq_dist(v, cb + k * NMEL);
                best = d < best ? d : best;
            }
            double got = sq_dist(v, cb + (size_t)ids.ids[i] * NMEL);
            cr_assert_leq(got, best * (1 + 1e-4) + 1e-9,
                          "frame %zu of %zu: id %d is at squared distance %.6f, the nearest entry at %.6f",
                          i, frames, ids.ids[i], got, best);
            exact += got == best;
        }
        fprintf(stderr, "audio.melvq: %zu samples -> %zu ids, %zu the exact nearest of the reference log-mel\n",
                lengths[l], frames, exact);
        cr_expect_geq(exact, frames - 2, "near-ties should be rare: %zu of %zu differ", frames - exact, frames);
        free(lm);
        sn_tokens_clear(&ids);
    }
    /* Very short stimuli: every started 20 ms is a token. */
    float x[800];
    uint64_t rng = 7;
    for (int i = 0; i < 800; i++)
        x[i] = (float)((double)(rng_next(&rng) >> 11) * 0x1.0p-53 - 0.5);
    const size_t n[] = {1, 79, 319, 320, 321, 399, 400, 401, 639, 640, 641, 719, 720, 721, 800};
    for (size_t i = 0; i < sizeof n / sizeof *n; i++) {
        sn_media s = {.kind = SN_MEDIA_AUDIO, .audio = {x, n[i], 16000}};
        sn_tokens ids = {0};
        tokenize(c, &s, NULL, NULL, 0, &ids);
        cr_expect_eq(ids.n, (n[i] + HOP - 1) / HOP, "%zu samples gave %zu ids", n[i], ids.n);
        sn_tokens_clear(&ids);
    }
    sn_tokens ids = {0};
    cr_assert_eq(sn_codec_encode_flush(c, &ids), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(ids.n, 0, "a flush with nothing held emits nothing");
    sn_codec_close(c);
    free(ref);
    free(cb);
    sn_media_release(&m);
}

/* Chunkers: all one size, or seeded random sizes in a range. */
typedef struct range {
    size_t lo, hi;
} range;

static size_t chunk_in_range(uint64_t *rng, void *ctx)
{
    const range *r = ctx;
    return rng_range(rng, r->lo, r->hi);
}

/* Any chunking gives the ids of one call: chunks of 1 sample, a few samples, sizes around a
 * frame (300..700, so that chunk ends fall everywhere relative to the 320-sample hop and the
 * 400-sample window), around the resampler's 4096-sample block, and large ones. */
static void check_chunkings(const char *path, size_t expect_ids)
{
    fit_codebook("audio.melvq.npy", CONFIG);
    sn_media m = read_audio(path);
    sn_codec *c = open_with(CONFIG);
    sn_tokens whole = {0};
    tokenize(c, &m, NULL, NULL, 0, &whole);
    cr_assert_eq(whole.n, expect_ids, "%s: %zu ids, expected %zu", path, whole.n, expect_ids);
    size_t distinct = 0;
    int seen[K] = {0};
    for (size_t i = 0; i < whole.n; i++)
        distinct += !seen[whole.ids[i]]++;
    cr_assert_geq(distinct, 10, "only %zu distinct ids: the comparison would prove little", distinct);
    const range ranges[] = {{1, 1}, {1, 7}, {300, 700}, {320, 320}, {400, 400}, {3000, 5000},
                            {1, 20000}, {10000, 60000}};
    int runs = 0;
    for (size_t r = 0; r < sizeof ranges / sizeof *ranges; r++)
        for (uint64_t seed = 1; seed <= (ranges[r].lo == ranges[r].hi ? 1u : 3u); seed++) {
            sn_tokens part = {0};
            tokenize(c, &m, chunk_in_range, (void *)&ranges[r], seed, &part);
            cr_assert_eq(part.n, whole.n, "chunks of %zu..%zu samples (seed %llu): %zu ids vs %zu",
                         ranges[r].lo, ranges[r].hi, (unsigned long long)seed, part.n, whole.n);
            for (size_t i = 0; i < whole.n; i++)
                cr_assert_eq(part.ids[i], whole.ids[i],
                             "chunks of %zu..%zu samples (seed %llu): id %zu is %d, one call gives %d",
                             ranges[r].lo, ranges[r].hi, (unsigned long long)seed, i, part.ids[i],
                             whole.ids[i]);
            sn_tokens_clear(&part);
            runs++;
        }
    fprintf(stderr, "audio.melvq: %s at %u Hz: %d chunkings give the %zu ids (%zu distinct) of one call\n",
            path, m.audio.sample_rate, runs, whole.n, distinct);
    sn_tokens_clear(&whole);
    sn_codec_close(c);
    sn_media_release(&m);
}

Test(audio_melvq, any_chunking_gives_the_same_ids_at_16khz)
{
    check_chunkings(HELD_OUT, 113600 / HOP);
}

Test(audio_melvq, any_chunking_gives_the_same_ids_at_48khz)
{
    /* 68545 samples at 48 kHz are 22848.3 at 16 kHz: ceil(22848.3 / 320) = 72 frames. */
    check_chunkings(SPEECH_48K, 72);
}

/* ---------------------------------------------------------------------------------------- */
/* Fit                                                                                      */
/* ---------------------------------------------------------------------------------------- */

typedef struct log_count {
    int iterations, lines;
} log_count;

static void count_log(void *ctx, sn_log_level level, const char *source, const char *message)
{
    log_count *l = ctx;
    if (level == SN_LOG_INFO && strcmp(source, "audio.melvq") == 0) {
        l->lines++;
        l->iterations += strstr(message, "k-means iteration") != NULL;
    }
}

static unsigned char *read_file(const char *name, size_t *n)
{
    char path[128];
    path_in_dir(path, sizeof path, name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len);
    cr_assert_not_null(b);
    cr_assert_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

Test(audio_melvq, fit_is_deterministic_and_its_codebook_tokenizes)
{
    log_count lc = {0};
    sn_set_log_handler(count_log, &lc);
    fit_codebook("audio.melvq.npy", CONFIG);
    cr_expect_geq(lc.iterations, 1, "fit logs each k-means iteration");
    cr_expect_leq(lc.iterations, 25, "at most 25 iterations");
    fprintf(stderr, "audio.melvq: fit logged %d lines, %d k-means iterations\n", lc.lines, lc.iterations);
    fit_codebook("again.npy", CONFIG);
    size_t na, nb;
    unsigned char *a = read_file("audio.melvq.npy", &na), *b = read_file("again.npy", &nb);
    cr_assert_eq(na, nb);
    cr_assert_arr_eq(a, b, na, "two fits of the same data and configuration differ");
    free(a);
    free(b);
    /* Another seed gives another codebook. */
    fit_codebook("small.npy", "{\"codebook_size\": 64, \"seed\": 5}");
    a = read_file("audio.melvq.npy", &na);
    b = read_file("small.npy", &nb);
    cr_expect(na != nb || memcmp(a, b, na) != 0, "seed 5 gave the same codebook as seed 0");
    free(a);
    free(b);

    size_t rows;
    float *cb = read_codebook("audio.melvq.npy", &rows);
    cr_assert_eq(rows, K, "a (64, 80) codebook, got %zu rows", rows);
    for (size_t i = 0; i < rows * NMEL; i++) {
        cr_assert(isfinite(cb[i]));
        /* ln(mel + 1e-6) >= ln(1e-6): a centroid is a mean of such values */
        cr_assert_geq(cb[i], logf(1e-6f) - 1e-3f, "entry %zu band %zu: %f", i / NMEL, i % NMEL, cb[i]);
    }
    free(cb);
    sn_codec *c = open_with(CONFIG);
    cr_assert_eq(sn_codec_vocab_size(c), K);
    sn_media m = read_audio(SPEECH_48K);
    sn_tokens ids = {0};
    tokenize(c, &m, NULL, NULL, 0, &ids);
    cr_expect_eq(ids.n, 72);
    sn_tokens_clear(&ids);
    sn_media_release(&m);
    sn_codec_close(c);

    /* fit_max_frames subsamples (seeded): 300 of the ~1360 frames still make a codebook. */
    fit_codebook("small.npy", "{\"codebook_size\": 64, \"fit_max_frames\": 300}");
    cb = read_codebook("small.npy", &rows);
    cr_expect_eq(rows, K);
    free(cb);
}

/* Quantisation error of the fitted codebook on the held-out recording and on the training
 * data, as a fraction of the data's variance (mean squared distance to the mean frame,
 * which is the error of a one-entry codebook). The bound, 0.3: a codebook that knew nothing
 * (an entry picked at random, independent of the frame) would score about 2, a one-entry
 * codebook 1; speech log-mel frames vary mostly in loudness and broad spectral shape
 * (silence, voiced, fricative), which 64 entries capture, and k-means on these recordings
 * measures about 0.15 (training) and 0.2 (held out). 0.3 leaves room for platform
 * differences while failing a broken front end or search. */
Test(audio_melvq, quantisation_error_is_well_below_the_variance)
{
    fit_codebook("audio.melvq.npy", CONFIG);
    size_t rows;
    float *cb = read_codebook("audio.melvq.npy", &rows);
    sn_codec *c = open_with(CONFIG);
    ref_frontend *ref = ref_new();
    const char *sets[2][N_TRAIN + 1] = {{HELD_OUT, NULL}, {NULL}};
    for (size_t i = 0; i < N_TRAIN; i++)
        sets[1][i] = TRAIN[i];
    const char *names[2] = {"held-out librivox 0870", "the training recordings"};
    for (int s = 0; s < 2; s++) {
        double err = 0, sum[NMEL] = {0}, sum2[NMEL] = {0};
        size_t frames = 0;
        for (size_t f = 0; sets[s][f]; f++) {
            sn_media m = read_audio(sets[s][f]);
            sn_tokens ids = {0};
            tokenize(c, &m, NULL, NULL, 0, &ids);
            double *lm;
            size_t nf = ref_logmel(ref, m.audio.samples, m.audio.n_samples, &lm);
            cr_assert_eq(nf, ids.n);
            for (size_t i = 0; i < nf; i++) {
                err += sq_dist(lm + i * NMEL, cb + (size_t)ids.ids[i] * NMEL);
                for (int b = 0; b < NMEL; b++) {
                    sum[b] += lm[i * NMEL + b];
                    sum2[b] += lm[i * NMEL + b] * lm[i * NMEL + b];
                }
            }
            frames += nf;
            free(lm);
            sn_tokens_clear(&ids);
            sn_media_release(&m);
        }
        double var = 0;
        for (int b = 0; b < NMEL; b++)
            var += sum2[b] / (double)frames - (sum[b] / (double)frames) * (sum[b] / (double)frames);
        double mse = err / (double)frames, ratio = mse / var;
        fprintf(stderr, "audio.melvq K=64, %s (%zu frames): squared log-mel error %.2f per frame, variance %.2f, ratio %.3f (bound 0.3)\n",
                names[s], frames, mse, var, ratio);
        cr_expect_lt(ratio, 0.3, "%s: quantisation error is %.3f of the variance", names[s], ratio);
    }
    free(ref);
    free(cb);
    sn_codec_close(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

typedef struct pcm {
    float *x;
    size_t n, cap;
    uint32_t rate;
    int events;
    double t;
} pcm;

static int collect(void *ctx, const sn_action *a)
{
    pcm *p = ctx;
    cr_assert_eq(a->kind, SN_ACTION_AUDIO);
    if (p->n + a->audio.n_samples > p->cap) {
        p->cap = 2 * (p->n + a->audio.n_samples);
        p->x = realloc(p->x, p->cap * sizeof *p->x);
        cr_assert_not_null(p->x);
    }
    memcpy(p->x + p->n, a->audio.samples, a->audio.n_samples * sizeof *p->x);
    p->n += a->audio.n_samples;
    p->rate = a->audio.sample_rate;
    p->events++;
    p->t = a->t;
    return 0;
}

/*
 * The decoder speaks: the tokens of the held-out recording, decoded, have a spectrum that
 * follows the original's. Measured on the reference log-mel of both signals, frame by frame:
 *   - correlation of all (frame, band) values, resynthesis vs original: the spec asks > 0.8;
 *   - mean over frames of the correlation across the 80 bands (spectral envelope): > 0.8;
 *   - resynthesis vs the codebook entries the ids name: > 0.95. This isolates Griffin-Lim
 *     from the quantiser: a decoder that made noise of the right loudness would keep the
 *     first number near 0.8 but lose the envelope;
 *   - the same with zero Griffin-Lim iterations (random phases) must be worse: the
 *     iterations are what makes the frames consistent.
 * The log-spectral distance is printed too.
 */
Test(audio_melvq, decoded_speech_follows_the_original_spectrum)
{
    fit_codebook("audio.melvq.npy", CONFIG);
    size_t rows;
    float *cb = read_codebook("audio.melvq.npy", &rows);
    sn_media m = read_audio(HELD_OUT);
    sn_codec *c = open_with(CONFIG);
    sn_tokens ids = {0};
    tokenize(c, &m, NULL, NULL, 0, &ids);
    ref_frontend *ref = ref_new();
    double *orig;
    size_t frames = ref_logmel(ref, m.audio.samples, m.audio.n_samples, &orig);
    cr_assert_eq(frames, ids.n);
    double *quant = malloc(frames * NMEL * sizeof *quant);
    for (size_t i = 0; i < frames * NMEL; i++)
        quant[i] = cb[(size_t)ids.ids[i / NMEL] * NMEL + i % NMEL];

    double consistency[2], lsd[2], lsd_quant = log_spectral_distance(quant, orig, frames);
    const char *configs[2] = {CONFIG, "{\"codebook_size\": 64, \"griffin_lim_iterations\": 0}"};
    for (int v = 0; v < 2; v++) {
        sn_codec *d = v ? open_with(configs[1]) : c;
        pcm out = {0};
        /* in uneven calls; the segment is synthesised at flush, stamped with the last call's t */
        double last_t = 0;
        for (size_t at = 0, k = 0; at < ids.n; k++) {
            size_t n = 1 + (k * 37) % 50;
            n = n < ids.n - at ? n : ids.n - at;
            last_t = 2.0 + 0.02 * (double)at;
            cr_assert_eq(sn_codec_decode(d, ids.ids + at, n, last_t, collect, &out), SN_OK, "%s",
                         sn_errmsg());
            at += n;
        }
        cr_assert_eq(out.events, 0, "decode only collects: Griffin-Lim needs the whole segment");
        cr_assert_eq(sn_codec_decode_flush(d, collect, &out), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(out.events, 1, "one audio event per segment");
        cr_expect_eq(out.t, last_t, "the flushed event carries the latest decode call's t");
        cr_assert_eq(out.rate, 16000);
        cr_assert_eq(out.n, ids.n * HOP, "%zu tokens -> %zu samples, expected 320 per token", ids.n, out.n);
        double energy = 0;
        for (size_t i = 0; i < out.n; i++) {
            cr_assert(isfinite(out.x[i]) && fabsf(out.x[i]) <= 1.0f, "sample %zu is %f", i, out.x[i]);
            energy += (double)out.x[i] * out.x[i];
        }
        cr_assert_gt(energy, 0);
        double *back;
        cr_assert_eq(ref_logmel(ref, out.x, out.n, &back), frames);
        double all = correlation(back, orig, frames * NMEL);
        double env = 0;
        for (size_t i = 0; i < frames; i++)
            env += correlation(back + i * NMEL, orig + i * NMEL, NMEL);
        env /= (double)frames;
        lsd[v] = log_spectral_distance(back, orig, frames);
        consistency[v] = correlation(back, quant, frames * NMEL);
        fprintf(stderr, "audio.melvq decode (%d Griffin-Lim iterations), held-out speech: log-mel correlation with the original %.3f, mean per-frame envelope correlation %.3f, log-spectral distance %.2f dB (the codebook entries themselves: %.2f dB); correlation with the codebook entries %.3f\n",
                v ? 0 : 32, all, env, lsd[v], lsd_quant, consistency[v]);
        if (v == 0) {
            cr_expect_gt(all, 0.8, "log-mel correlation with the original %.3f", all);
            cr_expect_gt(env, 0.8, "mean envelope correlation with the original %.3f", env);
            cr_expect_gt(consistency[0], 0.95, "correlation with the codebook entries %.3f", consistency[0]);
            cr_expect_lt(lsd[0], lsd_quant + 1.0, "log-spectral distance %.2f dB: the decoder adds more than 1 dB to the codebook's %.2f dB",
                         lsd[0], lsd_quant);
            /* Deterministic: the same ids decode to the same samples. */
            pcm again = {0};
            cr_assert_eq(sn_codec_decode(d, ids.ids, ids.n, 0, collect, &again), SN_OK);
            cr_assert_eq(sn_codec_decode_flush(d, collect, &again), SN_OK);
            cr_assert_eq(again.n, out.n);
            cr_expect_arr_eq(again.x, out.x, out.n * sizeof *out.x, "decoding is not deterministic");
            free(again.x);
        }
        free(back);
        free(out.x);
        if (v)
            sn_codec_close(d);
    }
    cr_expect_gt(consistency[0], consistency[1] + 0.01,
                 "32 Griffin-Lim iterations (%.3f) must beat none (%.3f)", consistency[0], consistency[1]);
    cr_expect_lt(lsd[0], lsd[1] - 2.0, "32 Griffin-Lim iterations (%.2f dB) must beat none (%.2f dB) by 2 dB",
                 lsd[0], lsd[1]);

    /* A flush with nothing held emits nothing. */
    pcm none = {0};
    cr_assert_eq(sn_codec_decode_flush(c, collect, &none), SN_OK);
    cr_expect_eq(none.events, 0);
    free(orig);
    free(quant);
    free(ref);
    free(cb);
    sn_tokens_clear(&ids);
    sn_codec_close(c);
    sn_media_release(&m);
}

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static void expect_open_fails(const char *config, const char *data_dir, const char *needle)
{
    sn_codec *c = NULL;
    cr_expect_eq(sn_codec_open(plugins, "audio.melvq", config, data_dir, &c), SN_ERR_PLUGIN,
                 "config %s opened", config);
    cr_expect_null(c);
    cr_expect_not_null(strstr(sn_errmsg(), needle), "config %s: message \"%s\" lacks \"%s\"", config,
                       sn_errmsg(), needle);
    sn_codec_close(c);
}

Test(audio_melvq, bad_configurations_and_codebooks)
{
    char path[160], msg[256];
    /* no codebook yet */
    path_in_dir(path, sizeof path, "audio.melvq.npy");
    expect_open_fails(CONFIG, dir, path);
    expect_open_fails(CONFIG, dir, "sensorium fit --plugin audio.melvq");
    expect_open_fails(CONFIG, NULL, "no model data directory");
    /* wrong shapes */
    float *v = calloc(64 * 81, sizeof *v);
    cr_assert_not_null(v);
    write_npy("small.npy", v, 32, 80);
    expect_open_fails("{\"codebook_size\": 64, \"codebook\": \"small.npy\"}", dir,
                      "has shape (32, 80), expected (64, 80)");
    write_npy("narrow.npy", v, 64, 79);
    expect_open_fails("{\"codebook_size\": 64, \"codebook\": \"narrow.npy\"}", dir,
                      "has shape (64, 79), expected (64, 80)");
    v[5 * 80 + 3] = NAN;
    write_npy("nan.npy", v, 64, 80);
    /* element 5 * 80 + 3 */
    expect_open_fails("{\"codebook_size\": 64, \"codebook\": \"nan.npy\"}", dir, "element 403 is not a finite");
    free(v);
    /* the default K is 1024: a (64, 80) file does not fit it */
    fit_codebook("audio.melvq.npy", CONFIG);
    expect_open_fails("{}", dir, "expected (1024, 80)");
    /* an absolute path needs no data directory */
    snprintf(msg, sizeof msg, "{\"codebook_size\": 64, \"codebook\": \"%s\"}", path);
    sn_codec *c = NULL;
    cr_expect_eq(sn_codec_open(plugins, "audio.melvq", msg, NULL, &c), SN_OK, "%s", sn_errmsg());
    sn_codec_close(c);
    /* values and keys */
    expect_open_fails("{\"codebook_size\": 0}", dir, "'codebook_size' is 0; it must be an integer from 1 to 65536");
    expect_open_fails("{\"codebook_size\": 70000}", dir, "'codebook_size'");
    expect_open_fails("{\"codebook_size\": \"64\"}", dir, "codebook_size");
    expect_open_fails("{\"codebook_size\": 64, \"griffin_lim_iterations\": -1}", dir,
                      "'griffin_lim_iterations' is -1; it must be an integer from 0 to 1000");
    expect_open_fails("{\"codebook_size\": 64, \"codebok\": \"x.npy\"}", dir, "unknown config key 'codebok'");
    expect_open_fails("{\"codebook_size\": 64, \"codebook\": \"\"}", dir, "'codebook' is empty");
    expect_open_fails("{\"codebook_size\": 64, \"fit_max_frames\": 10}", dir,
                      "'fit_max_frames' is 10, fewer than the 64 codebook entries");
}

Test(audio_melvq, fit_refuses_too_little_or_bad_audio)
{
    char out[128];
    path_in_dir(out, sizeof out, "never.npy");
    /* cards/001 is 1.1 s: 55 frames, fewer than 64 entries, which need 1.28 s */
    sn_media m = read_audio(PS "cards/001.wav");
    cr_expect_eq(sn_fit(plugins, "audio.melvq", CONFIG, &m, 1, out), SN_ERR_PLUGIN);
    fprintf(stderr, "audio.melvq fit on 1.1 s: %s\n", sn_errmsg());
    cr_expect_not_null(strstr(sn_errmsg(), "55 log-mel frames (1.10 s of audio"), "%s", sn_errmsg());
    cr_expect_not_null(strstr(sn_errmsg(), "fewer than the 64 codebook entries; fit on at least 1.28 s"),
                       "%s", sn_errmsg());
    cr_expect_eq(access(out, F_OK), -1, "a failed fit writes nothing");
    /* a NaN sample in the second recording */
    sn_media two[2] = {m, m};
    float *x = malloc(m.audio.n_samples * sizeof *x);
    memcpy(x, m.audio.samples, m.audio.n_samples * sizeof *x);
    x[1234] = NAN;
    two[1].audio.samples = x;
    cr_expect_eq(sn_fit(plugins, "audio.melvq", CONFIG, two, 2, out), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "data[1]: sample 1234"), "%s", sn_errmsg());
    cr_expect_not_null(strstr(sn_errmsg(), "NaN"), "%s", sn_errmsg());
    free(x);
    /* not audio: the host refuses it before the plugin sees it */
    sn_media text = {.kind = SN_MEDIA_TEXT, .text = {"hello", 5}};
    cr_expect_eq(sn_fit(plugins, "audio.melvq", CONFIG, &text, 1, out), SN_ERR_UNSUPPORTED);
    /* bad configuration is caught by fit too */
    cr_expect_eq(sn_fit(plugins, "audio.melvq", "{\"codebook_size\": 0}", &m, 1, out), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "'codebook_size' is 0"), "%s", sn_errmsg());
    sn_media_release(&m);
}

Test(audio_melvq, bad_audio)
{
    fit_codebook("audio.melvq.npy", CONFIG);
    sn_media m = read_audio(HELD_OUT);
    sn_codec *c = open_with(CONFIG);
    sn_tokens want = {0};
    tokenize(c, &m, NULL, NULL, 0, &want);

    /* NaN: the chunk is refused whole, naming the sample; the stimulus ends there, and the
     * next chunk starts a new one */
    sn_tokens ids = {0};
    sn_media first = m;
    first.audio.n_samples = 5000;
    cr_assert_eq(sn_codec_encode(c, &first, &ids), SN_OK, "%s", sn_errmsg());
    float bad[3] = {0.1f, NAN, 0.2f};
    sn_media b = {.kind = SN_MEDIA_AUDIO, .audio = {bad, 3, 16000}};
    cr_expect_eq(sn_codec_encode(c, &b, &ids), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "sample 1 of the chunk (5001 of the stimulus) is NaN"), "%s",
                       sn_errmsg());
    bad[1] = INFINITY;
    cr_expect_eq(sn_codec_encode(c, &b, &ids), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "sample 1 of the chunk (1 of the stimulus) is infinite"), "%s",
                       sn_errmsg());
    ids.n = 0;
    tokenize(c, &m, NULL, NULL, 0, &ids);
    cr_assert_eq(ids.n, want.n, "after an error the encoder starts afresh");
    cr_expect_arr_eq(ids.ids, want.ids, want.n * sizeof *want.ids);

    /* empty chunks change nothing, wherever they come */
    ids.n = 0;
    sn_media empty = {.kind = SN_MEDIA_AUDIO, .audio = {bad, 0, 16000}};
    cr_assert_eq(sn_codec_encode(c, &empty, &ids), SN_OK, "an empty chunk is not an error");
    cr_assert_eq(sn_codec_encode(c, &first, &ids), SN_OK);
    cr_assert_eq(sn_codec_encode(c, &empty, &ids), SN_OK);
    sn_media rest = m;
    rest.audio.samples += 5000;
    rest.audio.n_samples -= 5000;
    cr_assert_eq(sn_codec_encode(c, &rest, &ids), SN_OK);
    cr_assert_eq(sn_codec_encode(c, &empty, &ids), SN_OK);
    cr_assert_eq(sn_codec_encode_flush(c, &ids), SN_OK);
    cr_assert_eq(ids.n, want.n);
    cr_expect_arr_eq(ids.ids, want.ids, want.n * sizeof *want.ids);

    /* a change of rate mid-stimulus, and a rate the resampler cannot take */
    ids.n = 0;
    cr_assert_eq(sn_codec_encode(c, &first, &ids), SN_OK);
    sn_media other = first;
    other.audio.sample_rate = 22050;
    cr_expect_eq(sn_codec_encode(c, &other, &ids), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "changed sample rate from 16000 Hz to 22050 Hz"), "%s", sn_errmsg());
    other.audio.sample_rate = 10;
    cr_expect_eq(sn_codec_encode(c, &other, &ids), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "sample rate 10 Hz"), "%s", sn_errmsg());

    /* loud and clipped audio is taken as it is */
    float loud[1000];
    for (int i = 0; i < 1000; i++)
        loud[i] = (i & 1) ? 50.0f : -50.0f;
    sn_media l = {.kind = SN_MEDIA_AUDIO, .audio = {loud, 1000, 16000}};
    ids.n = 0;
    tokenize(c, &l, NULL, NULL, 0, &ids);
    cr_expect_eq(ids.n, 4);

    /* not audio: the host refuses it before the plugin sees it */
    sn_media text = {.kind = SN_MEDIA_TEXT, .text = {"x", 1}};
    cr_expect_eq(sn_codec_encode(c, &text, &ids), SN_ERR_UNSUPPORTED);

    sn_tokens_clear(&ids);
    sn_tokens_clear(&want);
    sn_codec_close(c);
    sn_media_release(&m);
}
