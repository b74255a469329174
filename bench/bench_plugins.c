/*
 * bench_plugins.c - tokenization and detokenization speed of every reference plugin, on one
 * core, as a multiple of real time (audio; sensors at 100 Hz) or images per second.
 *
 * Each case reads a real stimulus (the recordings and photos scripts/test.sh unpacks into
 * .testdata/), fits a codebook first when the plugin needs one (not timed), then times
 * encode+flush of the whole stimulus and decode+flush of its tokens, repeating until at least
 * --min-seconds have passed and keeping the best of --rounds rounds. Prints one JSON object
 * per case and then a table; exits 1 when a goal (tokenizers of audio and sensors >= 100x
 * real time) is missed, so a regression is visible in the exit status.
 *
 * usage: bench_plugins [--data DIR] [--min-seconds S] [--rounds N] [--only NAME]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sensorium/sensorium.h"

#ifndef SN_TESTDATA_DIR
#define SN_TESTDATA_DIR ".testdata"
#endif

#define SPEECH_16K "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"
#define SPEECH_48K "/usr/share/sounds/alsa/Front_Center.wav"
#define PHOTO "/usr/lib/python3/dist-packages/skimage/data/astronaut.png"
#define PHOTOS_DIR "/usr/lib/python3/dist-packages/skimage/data/"

/* K = 1024 needs at least 1024 frames (20.5 s): every pocketsphinx recording but the one the
 * benchmark tokenizes. */
#define PS_DATA "/usr/share/pocketsphinx/test/data/"
#define MELVQ_FIT_DATA                                                                      \
    {PS_DATA "librivox/sense_and_sensibility_01_austen_64kb-0880.wav",                      \
     PS_DATA "librivox/sense_and_sensibility_01_austen_64kb-0890.wav",                      \
     PS_DATA "librivox/sense_and_sensibility_01_austen_64kb-0920.wav",                      \
     PS_DATA "librivox/sense_and_sensibility_01_austen_64kb-0930.wav", PS_DATA "cards/001.wav", \
     PS_DATA "cards/002.wav", PS_DATA "cards/003.wav", PS_DATA "cards/004.wav",             \
     PS_DATA "cards/005.wav", NULL}

typedef struct bench_case {
    const char *plugin;
    const char *label;
    const char *config;
    const char *input;    /* under the data dir; NULL: a synthetic sensor series */
    const char *fit_data[10]; /* stimuli to fit a codebook on, under the data dir; NULL-ended */
    double goal;          /* minimum x real time for the tokenizer; 0: none */
} bench_case;

/* Synthetic IMU-like series for the sensor plugins: 60 s at 100 Hz, 6 dims. */
#define SERIES_TICKS 6000
#define SERIES_DIMS 6
#define SERIES_RATE 100.0

static const bench_case cases[] = {
    {"audio.mulaw", "16 kHz speech", "{\"sample_rate\": 16000}", SPEECH_16K, {NULL}, 100},
    {"audio.mulaw", "48 kHz speech -> 16 kHz", "{\"sample_rate\": 16000}", SPEECH_48K, {NULL}, 100},
    {"audio.melvq", "16 kHz speech, K=1024", "{\"codebook_size\": 1024}", SPEECH_16K,
     MELVQ_FIT_DATA, 100},
    {"audio.melvq", "48 kHz speech, K=1024", "{\"codebook_size\": 1024}", SPEECH_48K,
     MELVQ_FIT_DATA, 100},
    {"sensor.bins", "6-D IMU at 100 Hz", "{\"low\": [-2,-2,-2,-8,-8,-8], \"high\": [2,2,2,8,8,8]}",
     NULL, {NULL}, 100},
    {"scalar.mulaw", "6-D IMU at 100 Hz", "{}", NULL, {NULL}, 100},
    {"action.continuous", "6-D targets at 100 Hz",
     "{\"low\": [-2,-2,-2,-8,-8,-8], \"high\": [2,2,2,8,8,8], \"actions_per_segment\": 6000}",
     NULL, {NULL}, 0},
    {"image.palette", "512x512 photo -> 32x32", "{}", PHOTO, {NULL}, 0},
    {"image.patchvq", "512x512 photo -> 64x64, K=256", "{\"codebook_size\": 256}", PHOTO,
     {PHOTOS_DIR "coffee.png", PHOTOS_DIR "chelsea.png", PHOTOS_DIR "motorcycle_left.png", NULL}, 0},
    {"text.bytes", "README.md", "{}", "README", {NULL}, 0},
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int discard_action(void *ctx, const sn_action *a)
{
    (void)a;
    (*(size_t *)ctx)++;
    return 0;
}

/* Seconds of real time a stimulus covers (0 for images and text). */
static double stimulus_seconds(const sn_media *m)
{
    if (m->kind == SN_MEDIA_AUDIO)
        return (double)m->audio.n_samples / m->audio.sample_rate;
    if (m->kind == SN_MEDIA_SERIES && m->series.rate_hz > 0)
        return (double)m->series.n_ticks / m->series.rate_hz;
    return 0;
}

typedef struct result {
    double enc_s, dec_s; /* best seconds per stimulus */
    size_t tokens;
} result;

static int run_case(const sn_plugins *ps, const bench_case *bc, const sn_media *m,
                    const char *data_dir, double min_s, int rounds, result *r)
{
    sn_codec *c;
    if (sn_codec_open(ps, bc->plugin, bc->config, data_dir, &c) != SN_OK) {
        fprintf(stderr, "bench: %s\n", sn_errmsg());
        return -1;
    }
    sn_tokens toks = {0};
    r->enc_s = r->dec_s = INFINITY;
    int ok = 0;
    for (int round = 0; round < rounds; round++) {
        size_t reps = 0;
        double t0 = now(), t;
        do {
            toks.n = 0;
            if (sn_codec_encode(c, m, &toks) != SN_OK || sn_codec_encode_flush(c, &toks) != SN_OK)
                goto fail;
            reps++;
        } while ((t = now() - t0) < min_s);
        if (t / reps < r->enc_s)
            r->enc_s = t / reps;
        r->tokens = toks.n;

        size_t events = 0;
        reps = 0;
        t0 = now();
        do {
            if (sn_codec_decode(c, toks.ids, toks.n, 0.0, discard_action, &events) != SN_OK ||
                sn_codec_decode_flush(c, discard_action, &events) != SN_OK)
                goto fail;
            reps++;
        } while ((t = now() - t0) < min_s);
        if (t / reps < r->dec_s)
            r->dec_s = t / reps;
    }
    ok = 1;
fail:
    if (!ok)
        fprintf(stderr, "bench: %s: %s\n", bc->plugin, sn_errmsg());
    sn_tokens_clear(&toks);
    sn_codec_close(c);
    return ok ? 0 : -1;
}

/* A deterministic IMU-like series: slow tilts plus vibration. */
static float *make_series(void)
{
    float *v = malloc(sizeof(float) * SERIES_TICKS * SERIES_DIMS);
    if (!v)
        return NULL;
    uint64_t s = 42;
    for (size_t i = 0; i < SERIES_TICKS; i++)
        for (size_t d = 0; d < SERIES_DIMS; d++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            double noise = ((double)(s >> 11) * 0x1.0p-53 - 0.5) * 0.1;
            double scale = d < 3 ? 1.5 : 6.0;
            v[i * SERIES_DIMS + d] = (float)(scale * sin(0.01 * (double)i * (double)(d + 1)) + noise);
        }
    return v;
}

int main(int argc, char **argv)
{
    const char *data = SN_TESTDATA_DIR, *only = NULL;
    double min_s = 0.3;
    int rounds = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--data") == 0 && i + 1 < argc) data = argv[++i];
        else if (strcmp(argv[i], "--min-seconds") == 0 && i + 1 < argc) min_s = atof(argv[++i]);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) only = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--data DIR] [--min-seconds S] [--rounds N] [--only PLUGIN]\n", argv[0]);
            return 2;
        }
    }
    sn_plugins *ps;
    if (sn_plugins_open(NULL, 0, &ps) != SN_OK) {
        fprintf(stderr, "bench: %s\n", sn_errmsg());
        return 1;
    }
    char tmp[] = "/tmp/sn_bench_XXXXXX";
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    float *series = make_series();
    int missed = 0, ran = 0;
    char table[8192] = "";
    size_t tl = 0;
    tl += (size_t)snprintf(table + tl, sizeof table - tl, "\n%-18s %-32s %14s %14s %10s %s\n", "PLUGIN",
                           "CASE", "TOKENIZE", "DETOKENIZE", "TOKENS", "GOAL");
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const bench_case *bc = &cases[ci];
        if (only && strcmp(only, bc->plugin) != 0)
            continue;
        if (sn_plugins_find(ps, bc->plugin) < 0) {
            fprintf(stderr, "bench: skipping %s: plugin not built\n", bc->plugin);
            continue;
        }
        sn_media m = {0};
        int owned = 0;
        char path[1024];
        if (!bc->input) {
            m.kind = SN_MEDIA_SERIES;
            m.series = (sn_media_series){series, SERIES_TICKS, SERIES_DIMS, SERIES_RATE};
        } else {
            if (strcmp(bc->input, "README") == 0)
                snprintf(path, sizeof path, "%s/README.md", SN_SOURCE_DIR);
            else
                snprintf(path, sizeof path, "%s%s", data, bc->input);
            if (sn_media_read(path, &m) != SN_OK) {
                fprintf(stderr, "bench: %s (run scripts/test.sh once to unpack the test data)\n", sn_errmsg());
                missed = 1;
                continue;
            }
            owned = 1;
        }
        const char *data_dir = NULL;
        if (bc->fit_data[0]) {
            sn_media fm[10] = {{0}};
            size_t nf = 0;
            for (; nf < 10 && bc->fit_data[nf]; nf++) {
                snprintf(path, sizeof path, "%s%s", data, bc->fit_data[nf]);
                if (sn_media_read(path, &fm[nf]) != SN_OK)
                    break;
            }
            char out[256];
            snprintf(out, sizeof out, "%s/%s.npy", tmp, bc->plugin);
            double t0 = now();
            sn_status st = nf && bc->fit_data[nf] == NULL ? sn_fit(ps, bc->plugin, bc->config, fm, nf, out)
                                                          : SN_ERR_IO;
            for (size_t k = 0; k < nf; k++)
                sn_media_release(&fm[k]);
            if (st != SN_OK) {
                fprintf(stderr, "bench: fitting %s: %s\n", bc->plugin, sn_errmsg());
                if (owned)
                    sn_media_release(&m);
                missed = 1;
                continue;
            }
            fprintf(stderr, "bench: fitted %s in %.1f s\n", bc->plugin, now() - t0);
            data_dir = tmp;
        }
        result r = {0};
        if (run_case(ps, bc, &m, data_dir, min_s, rounds, &r) != 0) {
            missed = 1;
        } else {
            ran++;
            double secs = stimulus_seconds(&m);
            char enc[32], dec[32], goal[48] = "";
            if (secs > 0) {
                snprintf(enc, sizeof enc, "%.0fx real time", secs / r.enc_s);
                snprintf(dec, sizeof dec, "%.0fx real time", secs / r.dec_s);
            } else if (m.kind == SN_MEDIA_IMAGE) {
                snprintf(enc, sizeof enc, "%.0f img/s", 1.0 / r.enc_s);
                snprintf(dec, sizeof dec, "%.0f img/s", 1.0 / r.dec_s);
            } else {
                snprintf(enc, sizeof enc, "%.0f MB/s", (double)m.text.len / r.enc_s / 1e6);
                snprintf(dec, sizeof dec, "%.0f MB/s", (double)m.text.len / r.dec_s / 1e6);
            }
            if (bc->goal > 0) {
                int met = secs / r.enc_s >= bc->goal;
                snprintf(goal, sizeof goal, "tokenize >= %.0fx: %s", bc->goal, met ? "met" : "MISSED");
                if (!met)
                    missed = 1;
            }
            printf("{\"bench\": \"plugins\", \"plugin\": \"%s\", \"case\": \"%s\", \"stimulus_seconds\": %.3f, "
                   "\"tokens\": %zu, \"encode_seconds\": %.6g, \"decode_seconds\": %.6g, "
                   "\"encode_x_realtime\": %.4g, \"decode_x_realtime\": %.4g, \"goal_x_realtime\": %.0f}\n",
                   bc->plugin, bc->label, secs, r.tokens, r.enc_s, r.dec_s,
                   secs > 0 ? secs / r.enc_s : 0, secs > 0 ? secs / r.dec_s : 0, bc->goal);
            tl += (size_t)snprintf(table + tl, sizeof table - tl, "%-18s %-32s %14s %14s %10zu %s\n",
                                   bc->plugin, bc->label, enc, dec, r.tokens, goal);
        }
        if (owned)
            sn_media_release(&m);
        char out[256];
        snprintf(out, sizeof out, "%s/%s.npy", tmp, bc->plugin);
        unlink(out);
    }
    rmdir(tmp);
    free(series);
    sn_plugins_close(ps);
    fputs(table, stdout);
    printf("\none core, best of %d rounds of >= %.2f s each\n", rounds, min_s);
    if (!ran)
        return 1;
    return missed ? 1 : 0;
}
