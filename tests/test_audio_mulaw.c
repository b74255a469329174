/*
 * test_audio_mulaw.c - audio.mulaw: the round-trip SNR of real speech against the bound the
 * quantiser implies for that very signal, anti-aliased resampling, chunk-invariant ids, and
 * clear errors for bad configuration and bad audio.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sensorium/sensorium.h"

#define SPEECH_16K SN_TESTDATA_DIR "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"
#define SPEECH_48K SN_TESTDATA_DIR "/usr/share/sounds/alsa/Front_Center.wav"

static sn_plugins *ps;

static void setup(void)
{
    cr_assert_eq(sn_plugins_open(SN_BUILD_PLUGIN_DIR, SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT, &ps), SN_OK);
}

static void teardown(void) { sn_plugins_close(ps); }

TestSuite(audio_mulaw, .init = setup, .fini = teardown);

static sn_codec *open_codec(const char *config)
{
    sn_codec *c;
    cr_assert_eq(sn_codec_open(ps, "audio.mulaw", config, NULL, &c), SN_OK, "%s", sn_errmsg());
    return c;
}

typedef struct pcm {
    float *x;
    size_t n, cap;
    uint32_t rate;
} pcm;

static int collect(void *ctx, const sn_action *a)
{
    pcm *p = ctx;
    cr_assert_eq(a->kind, SN_ACTION_AUDIO);
    if (p->n + a->audio.n_samples > p->cap) {
        p->cap = 2 * (p->n + a->audio.n_samples);
        p->x = realloc(p->x, p->cap * sizeof *p->x);
    }
    memcpy(p->x + p->n, a->audio.samples, a->audio.n_samples * sizeof *p->x);
    p->n += a->audio.n_samples;
    p->rate = a->audio.sample_rate;
    return 0;
}

/* Tokenizes audio (whole, or in the given chunk sizes cycling) and decodes it back. */
static void round_trip(sn_codec *c, const sn_media *m, const size_t *chunks, size_t n_chunks,
                       sn_tokens *ids, pcm *out)
{
    if (!chunks) {
        cr_assert_eq(sn_codec_encode(c, m, ids), SN_OK, "%s", sn_errmsg());
    } else {
        for (size_t at = 0, k = 0; at < m->audio.n_samples; k++) {
            size_t n = chunks[k % n_chunks];
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
    if (out)
        cr_assert_eq(sn_codec_decode(c, ids->ids, ids->n, 0, collect, out), SN_OK, "%s", sn_errmsg());
}

Test(audio_mulaw, speech_snr_meets_the_quantiser_bound)
{
    sn_media m;
    cr_assert_eq(sn_media_read(SPEECH_16K, &m), SN_OK, "%s (run scripts/test.sh to unpack the test data)", sn_errmsg());
    cr_assert_eq(m.audio.sample_rate, 16000);
    sn_codec *c = open_codec("{\"sample_rate\": 16000}");
    sn_tokens ids = {0};
    pcm out = {0};
    round_trip(c, &m, NULL, 0, &ids, &out);
    cr_assert_eq(out.n, m.audio.n_samples, "16 kHz in, 16 kHz tokens: one per sample");
    cr_assert_eq(out.rate, 16000);
    /* The bound, derived for this signal: the quantiser's error is uniform over one step
     * D = 2/255 of the companded value F(x) = sgn(x) ln(1+mu|x|)/ln(1+mu); mapped back through
     * dx/dF = ln(1+mu)/mu * (1+mu|x|), the error power at x is D^2/12 * (ln(1+mu)/mu)^2 *
     * (1+mu|x|)^2. So SNR = E[x^2] / (D^2/12 (ln(1+mu)/mu)^2 E[(1+mu|x|)^2]). */
    const double mu = 255, D = 2.0 / 255, g = log1p(mu) / mu;
    double sig = 0, noise = 0, pred = 0;
    for (size_t i = 0; i < m.audio.n_samples; i++) {
        double x = m.audio.samples[i], e = out.x[i] - x;
        sig += x * x;
        noise += e * e;
        pred += D * D / 12 * g * g * (1 + mu * fabs(x)) * (1 + mu * fabs(x));
    }
    double snr = 10 * log10(sig / noise), bound = 10 * log10(sig / pred);
    fprintf(stderr, "audio.mulaw speech SNR %.2f dB; the quantiser predicts %.2f dB for this signal\n", snr, bound);
    cr_expect_geq(snr, bound - 1.0, "SNR %.2f dB below the derived %.2f dB", snr, bound);
    cr_expect_geq(snr, 30.0, "SNR %.2f dB: speech at a normal level must exceed 30 dB", snr);
    sn_tokens_clear(&ids);
    free(out.x);
    sn_media_release(&m);
    sn_codec_close(c);
}

static double rms(const float *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return sqrt(s / (double)n);
}

Test(audio_mulaw, resampling_is_anti_aliased)
{
    enum { N = 48000 };
    float *x = malloc(N * sizeof *x);
    sn_codec *c = open_codec("{\"sample_rate\": 16000}");
    double gain[2];
    const double freq[2] = {1000, 12000};
    for (int f = 0; f < 2; f++) {
        for (int i = 0; i < N; i++)
            x[i] = (float)(0.5 * sin(2 * M_PI * freq[f] * i / 48000.0));
        sn_media m = {.kind = SN_MEDIA_AUDIO, .audio = {x, N, 48000}};
        sn_tokens ids = {0};
        pcm out = {0};
        round_trip(c, &m, NULL, 0, &ids, &out);
        cr_assert(labs((long)out.n - 16000) <= 1, "1 s at 48 kHz gave %zu samples at 16 kHz", out.n);
        /* the middle, away from the filter's start and end */
        gain[f] = 20 * log10(rms(out.x + 2000, 12000) / rms(x + 6000, 36000));
        sn_tokens_clear(&ids);
        free(out.x);
    }
    fprintf(stderr, "audio.mulaw 48->16 kHz: 1 kHz %.2f dB, 12 kHz %.2f dB\n", gain[0], gain[1]);
    cr_expect_lt(fabs(gain[0]), 1.0, "1 kHz passes within 1 dB, got %.2f dB", gain[0]);
    cr_expect_lt(gain[1], -40.0, "12 kHz (above the 8 kHz Nyquist) must be cut by > 40 dB, got %.2f dB", gain[1]);
    free(x);
    sn_codec_close(c);
}

Test(audio_mulaw, any_chunking_gives_the_same_ids)
{
    sn_media m;
    cr_assert_eq(sn_media_read(SPEECH_48K, &m), SN_OK, "%s", sn_errmsg());
    sn_codec *c = open_codec(NULL);
    sn_tokens whole = {0};
    round_trip(c, &m, NULL, 0, &whole, NULL);
    double secs = (double)m.audio.n_samples / m.audio.sample_rate;
    cr_assert(fabs((double)whole.n - secs * 16000) <= 2, "%zu ids for %.3f s", whole.n, secs);
    uint64_t seed = 1;
    for (int r = 0; r < 6; r++) {
        size_t chunks[7];
        for (int k = 0; k < 7; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            chunks[k] = 1 + (size_t)(seed >> 33) % (r < 2 ? 7 : 9000);
        }
        sn_tokens part = {0};
        round_trip(c, &m, chunks, 7, &part, NULL);
        cr_assert_eq(part.n, whole.n, "chunking %d: %zu ids vs %zu", r, part.n, whole.n);
        cr_assert_arr_eq(part.ids, whole.ids, whole.n * sizeof *whole.ids, "chunking %d changed the ids", r);
        sn_tokens_clear(&part);
    }
    sn_tokens_clear(&whole);
    sn_media_release(&m);
    sn_codec_close(c);
}

Test(audio_mulaw, levels_and_silence)
{
    sn_codec *c = open_codec(NULL);
    const float x[] = {0.0f, 1.0f, -1.0f, 2.0f, -3.0f, 0.001f};
    sn_media m = {.kind = SN_MEDIA_AUDIO, .audio = {x, 6, 16000}};
    sn_tokens ids = {0};
    cr_assert_eq(sn_codec_encode(c, &m, &ids), SN_OK);
    cr_assert_eq(ids.n, 6);
    cr_expect_eq(ids.ids[0], 128, "silence is the middle level");
    cr_expect_eq(ids.ids[1], 255);
    cr_expect_eq(ids.ids[2], 0);
    cr_expect_eq(ids.ids[3], 255, "values past full scale clamp");
    cr_expect_eq(ids.ids[4], 0);
    sn_media empty = {.kind = SN_MEDIA_AUDIO, .audio = {x, 0, 16000}};
    size_t before = ids.n;
    cr_expect_eq(sn_codec_encode(c, &empty, &ids), SN_OK, "an empty chunk is not an error");
    cr_expect_eq(ids.n, before);
    sn_tokens_clear(&ids);
    sn_codec_close(c);
}

Test(audio_mulaw, bad_configuration_and_audio)
{
    sn_codec *c;
    cr_expect_eq(sn_codec_open(ps, "audio.mulaw", "{\"sample_rate\": 0}", NULL, &c), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "'sample_rate' is 0"), "%s", sn_errmsg());
    cr_expect_eq(sn_codec_open(ps, "audio.mulaw", "{\"resampler\": \"turbo\"}", NULL, &c), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "'resampler'"), "%s", sn_errmsg());
    cr_expect_eq(sn_codec_open(ps, "audio.mulaw", "{\"rate\": 16000}", NULL, &c), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "unknown config key 'rate'"), "%s", sn_errmsg());
    cr_expect_eq(sn_codec_open(ps, "audio.mulaw", "{\"sample_rate\": \"16k\"}", NULL, &c), SN_ERR_PLUGIN);

    c = open_codec(NULL);
    float x[4] = {0.1f, NAN, 0.2f, 0.3f};
    sn_media m = {.kind = SN_MEDIA_AUDIO, .audio = {x, 4, 16000}};
    sn_tokens ids = {0};
    cr_expect_eq(sn_codec_encode(c, &m, &ids), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "sample 1 of the chunk is NaN"), "%s", sn_errmsg());
    x[1] = 0;
    cr_assert_eq(sn_codec_encode(c, &m, &ids), SN_OK, "the stream starts afresh after an error");
    sn_media other = {.kind = SN_MEDIA_AUDIO, .audio = {x, 4, 22050}};
    cr_expect_eq(sn_codec_encode(c, &other, &ids), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "changed sample rate from 16000 Hz to 22050 Hz"), "%s", sn_errmsg());
    sn_media text = {.kind = SN_MEDIA_TEXT, .text = {"x", 1}};
    cr_expect_eq(sn_codec_encode(c, &text, &ids), SN_ERR_UNSUPPORTED);
    sn_tokens_clear(&ids);
    sn_codec_close(c);
}
