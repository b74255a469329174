/*
 * audio_melvq.c - the "audio.melvq" plugin: sound as one token per 20 ms, the nearest entry of
 * a k-means codebook of 80-band log-mel frames, and such tokens back into 16 kHz audio by
 * Griffin-Lim phase reconstruction. Sound units without a neural codec.
 *
 * Encoder: audio at any rate -> 16 kHz (libsamplerate, fed fixed blocks so that the ids never
 * depend on how a live feed is chunked) -> frames of 400 samples every 320 (25 ms periodic
 * Hann window, 20 ms hop) -> 512-point FFT (FFTW) -> power -> 80 mel bands on the Slaney
 * scale, 0..8000 Hz, Slaney area-normalised (librosa's default filterbank) -> ln(mel + 1e-6)
 * -> nearest of K centroids. `sensorium fit` learns the centroids with k-means on the same
 * frames (plugins/common/kmeans.h).
 *
 * Decoder: ids -> their centroids' log-mel frames -> power per FFT bin by the transposed,
 * normalised filterbank (each bin takes the triangle-weighted mean of the band averages that
 * cover it) -> magnitudes -> Griffin-Lim phase reconstruction -> 16 kHz PCM by weighted
 * overlap-add divided by the window-square sum. Griffin-Lim needs the whole segment, so
 * decode only collects ids and decode_flush synthesises the segment as one audio event.
 */
#include <sensorium/plugin.h>

#include <fftw3.h>
#include <math.h>
#include <pthread.h>
#include <samplerate.h>
#include <stdlib.h>
#include <string.h>

#include "kmeans.h"
#include "npy_f32.h"
#include "plugin_util.h"

#define NAME "audio.melvq"
#define RATE 16000               /* the analysis rate (Hz) */
#define WIN 400                  /* 25 ms */
#define HOP 320                  /* 20 ms: one token */
#define NFFT 512
#define NBIN (NFFT / 2 + 1)      /* 257 */
#define NMEL 80
#define FMAX 8000.0
#define LOG_FLOOR 1e-6f          /* ln(mel + LOG_FLOOR): silence is ln(1e-6) = -13.8 */
#define BLOCK 4096               /* input samples per resampler call */
#define FRAMEBUF 4096            /* 16 kHz samples the framer holds (>= WIN) */
#define BATCH 64                 /* ids per sink call at most */
#define SYN_HOP 80               /* Griffin-Lim frame hop: 5 ms, 80% overlap */
#define SYN_PER_TOKEN (HOP / SYN_HOP)
#define DEFAULT_K 1024
#define K_MAX 65536
#define DEFAULT_MAX_FRAMES 100000
#define MAX_FRAMES_MAX 100000000
#define DEFAULT_GL 32
#define GL_MAX 1000
#define ITERATIONS 25            /* k-means Lloyd iterations at most */

static const char *const KEYS[] = {"codebook_size", "codebook", "fit_max_frames", "seed",
                                   "griffin_lim_iterations"};

/* The configuration, read the same way by create and fit. */
typedef struct config {
    uint32_t k;           /* codebook entries = vocabulary size */
    const char *codebook; /* the file name as configured (host memory) */
    size_t max_frames;    /* fit: frames k-means sees at most */
    uint64_t seed;        /* fit: subsampling and k-means++ */
    int gl_iterations;    /* decode: Griffin-Lim iterations */
} config;

/* ---------------------------------------------------------------------------------------- */
/* Front end: window, mel filterbank and its inverse, FFT plans                             */
/* ---------------------------------------------------------------------------------------- */

typedef struct frontend {
    float window[WIN];        /* periodic Hann */
    uint16_t first[NMEL];     /* band m weighs bins first[m] .. first[m] + count[m] - 1 */
    uint16_t count[NMEL];
    float weight[NMEL][NBIN]; /* weight[m][j]: Slaney weight of bin first[m] + j */
    /* Inverse: power at bin k = c0[k] * mel[b0[k]] + c1[k] * mel[b0[k] + 1]. */
    uint8_t b0[NBIN];
    float c0[NBIN], c1[NBIN];
    /* Planned once; executed with fftwf_execute_dft_* on each stream's own (fftwf_malloc'ed,
     * so equally aligned) arrays, which is thread-safe. */
    fftwf_plan r2c, c2r;
} frontend;

static double hz_to_mel(double f) /* Slaney: linear below 1 kHz, logarithmic above */
{
    const double f_sp = 200.0 / 3, logstep = log(6.4) / 27.0;
    return f < 1000.0 ? f / f_sp : 15.0 + log(f / 1000.0) / logstep;
}

static double mel_to_hz(double m)
{
    const double f_sp = 200.0 / 3, logstep = log(6.4) / 27.0;
    return m < 15.0 ? m * f_sp : 1000.0 * exp(logstep * (m - 15.0));
}

/* FFTW's planner keeps process-wide state: make it lock itself, once, before any plan. */
static pthread_once_t fftw_once = PTHREAD_ONCE_INIT;
static void fftw_thread_safe(void) { fftwf_make_planner_thread_safe(); }

static void frontend_free(frontend *fe)
{
    if (fe->r2c)
        fftwf_destroy_plan(fe->r2c);
    if (fe->c2r)
        fftwf_destroy_plan(fe->c2r);
    fe->r2c = fe->c2r = NULL;
}

/* The unnormalised triangle of band m at FFT bin k: 0 at the band's edges, 1 at its peak. */
static double triangle(const double *edge, int m, int k)
{
    double f = (double)k * RATE / NFFT;
    double rise = (f - edge[m]) / (edge[m + 1] - edge[m]);
    double fall = (edge[m + 2] - f) / (edge[m + 2] - edge[m + 1]);
    return fmax(0.0, fmin(rise, fall));
}

/* Builds the tables (librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=0, fmax=8000),
 * computed in double) and the plans. */
static sn_plugin_status frontend_init(frontend *fe, sn_plugin_error *err)
{
    memset(fe, 0, sizeof *fe);
    for (int i = 0; i < WIN; i++)
        fe->window[i] = (float)(0.5 - 0.5 * cos(2.0 * M_PI * i / WIN));

    double edge[NMEL + 2]; /* band m rises from edge[m], peaks at edge[m+1], ends at edge[m+2] */
    double top = hz_to_mel(FMAX);
    for (int i = 0; i < NMEL + 2; i++)
        edge[i] = mel_to_hz(top * i / (NMEL + 1));
    double rowsum[NMEL];
    for (int m = 0; m < NMEL; m++) {
        double enorm = 2.0 / (edge[m + 2] - edge[m]); /* Slaney: equal area per band */
        int first = -1;
        rowsum[m] = 0;
        for (int k = 0; k < NBIN; k++) {
            double t = triangle(edge, m, k);
            if (t <= 0)
                continue;
            if (first < 0)
                first = k;
            fe->weight[m][k - first] = (float)(t * enorm);
            fe->count[m] = (uint16_t)(k - first + 1);
            rowsum[m] += t * enorm;
        }
        if (first < 0) {
            sn_plugin_error_set(err, "mel band %d covers no FFT bin (a bug: the filterbank constants are inconsistent)", m);
            return SN_PLUGIN_ERR_INTERNAL;
        }
        fe->first[m] = (uint16_t)first;
    }
    /* Inverse. A bin between the peaks of bands m and m+1 lies on the falling edge of m and
     * the rising edge of m+1, whose triangle weights sum to 1: its power is the
     * triangle-weighted mean of the two bands' average power (mel / row sum). Below the first
     * peak and above the last only one band covers a bin; at 0 Hz and 8000 Hz none does, and
     * the nearest band's average is taken. Stored as a pair (b0, b0 + 1), b0 <= NMEL - 2. */
    for (int k = 0; k < NBIN; k++) {
        double t[NMEL], s = 0;
        int lo = NMEL, hi = -1;
        for (int m = 0; m < NMEL; m++) {
            t[m] = triangle(edge, m, k);
            if (t[m] > 0) {
                lo = m < lo ? m : lo;
                hi = m;
                s += t[m];
            }
        }
        if (hi < 0) { /* 0 Hz or 8000 Hz */
            lo = hi = (double)k * RATE / NFFT < edge[1] ? 0 : NMEL - 1;
            t[lo] = s = 1;
        }
        if (hi - lo > 1) {
            sn_plugin_error_set(err, "FFT bin %d lies in mel bands %d..%d, more than two (a bug: the filterbank constants are inconsistent)", k, lo, hi);
            return SN_PLUGIN_ERR_INTERNAL;
        }
        int b0 = lo < NMEL - 1 ? lo : NMEL - 2;
        fe->b0[k] = (uint8_t)b0;
        fe->c0[k] = b0 >= lo && b0 <= hi ? (float)(t[b0] / s / rowsum[b0]) : 0.0f;
        fe->c1[k] = b0 + 1 >= lo && b0 + 1 <= hi ? (float)(t[b0 + 1] / s / rowsum[b0 + 1]) : 0.0f;
    }

    pthread_once(&fftw_once, fftw_thread_safe);
    float *in = fftwf_malloc(NFFT * sizeof *in);
    fftwf_complex *out = fftwf_malloc(NBIN * sizeof *out);
    if (in && out) {
        fe->r2c = fftwf_plan_dft_r2c_1d(NFFT, in, out, FFTW_ESTIMATE);
        fe->c2r = fftwf_plan_dft_c2r_1d(NFFT, out, in, FFTW_ESTIMATE);
    }
    fftwf_free(in);
    fftwf_free(out);
    if (!fe->r2c || !fe->c2r) {
        frontend_free(fe);
        sn_plugin_error_set(err, "cannot plan a %d-point FFT (out of memory?)", NFFT);
        return SN_PLUGIN_ERR_NOMEM;
    }
    return SN_PLUGIN_OK;
}

/* The log-mel vector (NMEL) of one frame: the n <= WIN samples at x, zero-padded to WIN
 * (the end of a stimulus) and to NFFT. fin and fout are the caller's FFT arrays. */
static void frame_logmel(const frontend *fe, const float *x, size_t n, float *fin,
                         fftwf_complex *fout, float *out)
{
    size_t i = 0;
    for (; i < n; i++)
        fin[i] = x[i] * fe->window[i];
    for (; i < NFFT; i++)
        fin[i] = 0.0f;
    fftwf_execute_dft_r2c(fe->r2c, fin, fout);
    float power[NBIN];
    for (int k = 0; k < NBIN; k++)
        power[k] = fout[k][0] * fout[k][0] + fout[k][1] * fout[k][1];
    for (int m = 0; m < NMEL; m++) {
        const float *w = fe->weight[m], *p = power + fe->first[m];
        float acc = 0.0f;
        for (int j = 0; j < fe->count[m]; j++)
            acc += w[j] * p[j];
        out[m] = logf(acc + LOG_FLOOR);
    }
}

/* Magnitudes per FFT bin (NBIN) of a log-mel vector: the decoder's way back. */
static void logmel_to_magnitude(const frontend *fe, const float *logmel, float *mag)
{
    float mel[NMEL];
    for (int m = 0; m < NMEL; m++) {
        float v = expf(logmel[m]) - LOG_FLOOR;
        mel[m] = v > 0.0f ? v : 0.0f;
    }
    for (int k = 0; k < NBIN; k++)
        mag[k] = sqrtf(fe->c0[k] * mel[fe->b0[k]] + fe->c1[k] * mel[fe->b0[k] + 1]);
}

/* ---------------------------------------------------------------------------------------- */
/* Analyzer: audio at any rate -> 16 kHz -> frames -> log-mel, shared by encode and fit      */
/* ---------------------------------------------------------------------------------------- */

/* Receives each frame's log-mel vector, in order. */
typedef sn_plugin_status (*frame_fn)(void *ctx, const float *logmel, sn_plugin_error *err);

typedef struct analyzer {
    const frontend *fe;
    frame_fn fn;
    void *ctx;
    SRC_STATE *src;       /* the resampler, made when first needed, reset between stimuli */
    int resampling;       /* whether the current stimulus goes through src */
    uint32_t in_rate;     /* the stimulus's rate; 0 before its first chunk */
    float in[BLOCK];      /* input waiting for a whole resampler block */
    size_t n_in;
    float *out;           /* (out_cap) resampler output */
    size_t out_cap;
    float buf[FRAMEBUF];  /* 16 kHz samples from the start of the next frame on */
    size_t n_buf;
    uint64_t n_samples;   /* input samples of the stimulus so far (for messages) */
    float *fin;           /* (NFFT) FFT input; fftwf_malloc'ed like the plans' arrays */
    fftwf_complex *fout;  /* (NBIN) */
    float logmel[NMEL];
} analyzer;

static void analyzer_reset(analyzer *a)
{
    if (a->resampling)
        src_reset(a->src);
    a->resampling = 0;
    a->in_rate = 0;
    a->n_in = 0;
    a->n_buf = 0;
    a->n_samples = 0;
}

static void analyzer_free(analyzer *a)
{
    if (!a)
        return;
    if (a->src)
        src_delete(a->src);
    free(a->out);
    fftwf_free(a->fin);
    fftwf_free(a->fout);
    free(a);
}

static analyzer *analyzer_new(const frontend *fe, frame_fn fn, void *ctx)
{
    analyzer *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->fe = fe;
    a->fn = fn;
    a->ctx = ctx;
    a->fin = fftwf_malloc(NFFT * sizeof *a->fin);
    a->fout = fftwf_malloc(NBIN * sizeof *a->fout);
    if (!a->fin || !a->fout) {
        analyzer_free(a);
        return NULL;
    }
    return a;
}

/* Appends n samples at 16 kHz and analyses every whole frame they complete. */
static sn_plugin_status framer_push(analyzer *a, const float *x, size_t n, sn_plugin_error *err)
{
    while (n > 0) {
        size_t k = FRAMEBUF - a->n_buf < n ? FRAMEBUF - a->n_buf : n;
        memcpy(a->buf + a->n_buf, x, k * sizeof *x);
        a->n_buf += k;
        x += k;
        n -= k;
        size_t pos = 0;
        for (; pos + WIN <= a->n_buf; pos += HOP) {
            frame_logmel(a->fe, a->buf + pos, WIN, a->fin, a->fout, a->logmel);
            sn_plugin_status s = a->fn(a->ctx, a->logmel, err);
            if (s != SN_PLUGIN_OK)
                return s;
        }
        /* What is left (< WIN samples) starts the next frame. */
        memmove(a->buf, a->buf + pos, (a->n_buf - pos) * sizeof *a->buf);
        a->n_buf -= pos;
    }
    return SN_PLUGIN_OK;
}

/* Runs the resampler over n input samples: a whole block, or the rest at the end (last). */
static sn_plugin_status resample(analyzer *a, const float *in, size_t n, int last,
                                 sn_plugin_error *err)
{
    double ratio = (double)RATE / a->in_rate;
    size_t need = (size_t)ceil((double)n * ratio) + 1024;
    if (need > a->out_cap) {
        float *o = realloc(a->out, need * sizeof *o);
        if (!o) {
            sn_plugin_error_set(err, "out of memory resampling %u Hz to %d Hz", a->in_rate, RATE);
            return SN_PLUGIN_ERR_NOMEM;
        }
        a->out = o;
        a->out_cap = need;
    }
    SRC_DATA d = {.data_in = in, .input_frames = (long)n, .data_out = a->out,
                  .output_frames = (long)a->out_cap, .end_of_input = last, .src_ratio = ratio};
    do {
        int e = src_process(a->src, &d);
        if (e) {
            sn_plugin_error_set(err, "resampling %u Hz to %d Hz failed: %s", a->in_rate, RATE,
                                src_strerror(e));
            return SN_PLUGIN_ERR_INTERNAL;
        }
        sn_plugin_status s = framer_push(a, a->out, (size_t)d.output_frames_gen, err);
        if (s != SN_PLUGIN_OK)
            return s;
        d.data_in += d.input_frames_used;
        d.input_frames -= d.input_frames_used;
        /* at the end, drain until the converter has nothing more to give */
    } while (d.input_frames > 0 || (last && d.output_frames_gen > 0));
    return SN_PLUGIN_OK;
}

/*
 * One chunk of a stimulus. what prefixes messages ("" or "data[3]: "). The whole chunk is
 * checked before any of it is used. Fixed resampler blocks: the converter sees the same block
 * boundaries however the stimulus is split, so its output, and every frame, is the same.
 */
static sn_plugin_status analyzer_feed(analyzer *a, const sn_media_audio *au, const char *what,
                                      sn_plugin_error *err)
{
    if (au->n_samples == 0)
        return SN_PLUGIN_OK;
    if (!au->samples) {
        sn_plugin_error_set(err, "%saudio of %zu samples has a NULL sample pointer", what, au->n_samples);
        return SN_PLUGIN_ERR_INVALID;
    }
    for (size_t i = 0; i < au->n_samples; i++)
        if (!isfinite(au->samples[i])) {
            sn_plugin_error_set(err, "%ssample %zu of the chunk (%llu of the stimulus) is %s; audio must be finite",
                                what, i, (unsigned long long)(a->n_samples + i),
                                isnan(au->samples[i]) ? "NaN" : "infinite");
            return SN_PLUGIN_ERR_INVALID;
        }
    if (a->in_rate == 0) {
        if (au->sample_rate != RATE) {
            if (!src_is_valid_ratio((double)RATE / au->sample_rate)) {
                sn_plugin_error_set(err, "%ssample rate %u Hz is outside what the resampler can take to %d Hz (63..4096000 Hz)",
                                    what, au->sample_rate, RATE);
                return SN_PLUGIN_ERR_UNSUPPORTED;
            }
            int e;
            if (!a->src && !(a->src = src_new(SRC_SINC_MEDIUM_QUALITY, 1, &e))) {
                sn_plugin_error_set(err, "cannot start the resampler: %s", src_strerror(e));
                return SN_PLUGIN_ERR_NOMEM;
            }
            a->resampling = 1;
        }
        a->in_rate = au->sample_rate;
    } else if (au->sample_rate != a->in_rate) {
        sn_plugin_error_set(err, "%sthe stimulus changed sample rate from %u Hz to %u Hz mid-stream; end it (flush) first",
                            what, a->in_rate, au->sample_rate);
        return SN_PLUGIN_ERR_INVALID;
    }
    a->n_samples += au->n_samples;
    if (!a->resampling) /* already at 16 kHz */
        return framer_push(a, au->samples, au->n_samples, err);
    const float *x = au->samples;
    size_t n = au->n_samples;
    while (n > 0) {
        size_t k = BLOCK - a->n_in < n ? BLOCK - a->n_in : n;
        memcpy(a->in + a->n_in, x, k * sizeof *x);
        a->n_in += k;
        x += k;
        n -= k;
        if (a->n_in == BLOCK) {
            a->n_in = 0;
            sn_plugin_status s = resample(a, a->in, BLOCK, 0, err);
            if (s != SN_PLUGIN_OK)
                return s;
        }
    }
    return SN_PLUGIN_OK;
}

/* The stimulus has ended: drains the resampler, then analyses the frames that start before
 * the end of the audio and were not yet analysed (at most two), zero-padded to WIN. So a
 * stimulus of N samples at 16 kHz makes ceil(N / 320) frames. Resets for the next one. */
static sn_plugin_status analyzer_finish(analyzer *a, sn_plugin_error *err)
{
    sn_plugin_status s = SN_PLUGIN_OK;
    if (a->resampling)
        s = resample(a, a->in, a->n_in, 1, err);
    for (size_t pos = 0; s == SN_PLUGIN_OK && pos < a->n_buf; pos += HOP) {
        frame_logmel(a->fe, a->buf + pos, a->n_buf - pos, a->fin, a->fout, a->logmel);
        s = a->fn(a->ctx, a->logmel, err);
    }
    analyzer_reset(a);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* An integer key in [lo, hi], or def when absent. */
static sn_plugin_status config_range(const sn_host *host, const char *key, int64_t def,
                                     int64_t lo, int64_t hi, int64_t *out, sn_plugin_error *err)
{
    int64_t v = def;
    sn_plugin_status s = host->config_int(host, key, &v, err);
    if (s == SN_PLUGIN_ERR_NOT_FOUND)
        v = def;
    else if (s != SN_PLUGIN_OK)
        return s == SN_PLUGIN_ERR_NOMEM ? s : SN_PLUGIN_ERR_CONFIG;
    if (v < lo || v > hi) {
        sn_plugin_error_set(err, "config key '%s' is %lld; it must be an integer from %lld to %lld",
                            key, (long long)v, (long long)lo, (long long)hi);
        return SN_PLUGIN_ERR_CONFIG;
    }
    *out = v;
    return SN_PLUGIN_OK;
}

static sn_plugin_status read_config(const sn_host *host, config *c, sn_plugin_error *err)
{
    if (host->abi_major != SN_PLUGIN_ABI_MAJOR) {
        sn_plugin_error_set(err, "host speaks plugin ABI %u, this plugin ABI %d; rebuild the plugin against the engine's plugin.h",
                            (unsigned)host->abi_major, SN_PLUGIN_ABI_MAJOR);
        return SN_PLUGIN_ERR_UNSUPPORTED;
    }
    sn_plugin_status s = sn_pu_reject_unknown_keys(host, NAME, KEYS, sizeof KEYS / sizeof *KEYS, err);
    if (s != SN_PLUGIN_OK)
        return s;
    int64_t k, maxf, seed, gl;
    if ((s = config_range(host, "codebook_size", DEFAULT_K, 1, K_MAX, &k, err)) ||
        (s = config_range(host, "fit_max_frames", DEFAULT_MAX_FRAMES, 1, MAX_FRAMES_MAX, &maxf, err)) ||
        (s = config_range(host, "seed", 0, 0, INT64_MAX, &seed, err)) ||
        (s = config_range(host, "griffin_lim_iterations", DEFAULT_GL, 0, GL_MAX, &gl, err)))
        return s;
    c->k = (uint32_t)k;
    c->max_frames = (size_t)maxf;
    c->seed = (uint64_t)seed;
    c->gl_iterations = (int)gl;
    c->codebook = NAME ".npy";
    s = host->config_string(host, "codebook", &c->codebook, err);
    if (s == SN_PLUGIN_ERR_NOT_FOUND)
        c->codebook = NAME ".npy";
    else if (s != SN_PLUGIN_OK)
        return s == SN_PLUGIN_ERR_NOMEM ? s : SN_PLUGIN_ERR_CONFIG;
    if (!c->codebook[0]) {
        sn_plugin_error_set(err, "config key 'codebook' is empty; name the codebook file (default \"%s.npy\")", NAME);
        return SN_PLUGIN_ERR_CONFIG;
    }
    if (c->max_frames < c->k) {
        sn_plugin_error_set(err, "config key 'fit_max_frames' is %zu, fewer than the %u codebook entries (codebook_size); k-means needs at least one frame per entry",
                            c->max_frames, c->k);
        return SN_PLUGIN_ERR_CONFIG;
    }
    return SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Instance and stream                                                                      */
/* ---------------------------------------------------------------------------------------- */

struct sn_instance {
    config cfg;
    frontend fe;
    float *codebook; /* (k, NMEL) centroids: log-mel frames */
    float *norms;    /* (k) their squared norms, for sn_pu_nearest */
};

struct sn_stream {
    const sn_instance *inst;
    /* encoder */
    analyzer *an;
    const sn_token_sink *sink; /* during an encode or encode_flush call only */
    int32_t ids[BATCH];        /* ids not yet handed to the sink */
    size_t n_ids;
    double t0;                 /* stream time of the stimulus's first sample */
    uint64_t emitted;          /* ids handed to the sink for this stimulus */
    /* decoder: each buffer grows as segments need and is freed with the stream */
    int32_t *held;             /* (held_cap) the segment's ids */
    size_t n_held, held_cap;
    double dec_t;              /* t of the latest decode call */
    float *mag;                /* (syn_frames, NBIN) target magnitudes */
    float *sig, *acc, *wsum;   /* (syn_len) signal, overlap-add sums, window-square sums */
    size_t syn_frames_cap, syn_len_cap;
    float *dfin;               /* (NFFT) */
    fftwf_complex *dfout;      /* (NBIN) */
};

static void mv_destroy(sn_instance *inst)
{
    if (!inst)
        return;
    frontend_free(&inst->fe);
    free(inst->codebook);
    free(inst->norms);
    free(inst);
}

/* Loads and checks the codebook: resolved against the data directory unless absolute. */
static sn_plugin_status load_codebook(const sn_host *host, sn_instance *inst,
                                      sn_plugin_error *err)
{
    const config *c = &inst->cfg;
    char path[4096];
    if (c->codebook[0] == '/') {
        snprintf(path, sizeof path, "%s", c->codebook);
    } else {
        const char *dir = SN_PU_HOST_HAS(host, data_dir) ? host->data_dir(host) : NULL;
        if (!dir) {
            sn_plugin_error_set(err, "codebook \"%.200s\" is a relative name but there is no model data directory; pass --data-dir, or give config key 'codebook' an absolute path (make one with `sensorium fit --plugin audio.melvq`)",
                                c->codebook);
            return SN_PLUGIN_ERR_CONFIG;
        }
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, c->codebook) >= sizeof path) {
            sn_plugin_error_set(err, "codebook path \"%.100s/%.100s...\" is too long", dir, c->codebook);
            return SN_PLUGIN_ERR_CONFIG;
        }
    }
    char why[256];
    size_t rows = 0, cols = 0;
    if (sn_pu_npy_read_f32(path, &inst->codebook, &rows, &cols, why, sizeof why)) {
        sn_plugin_error_set(err, "codebook %.300s: %s (make it with `sensorium fit --plugin audio.melvq`)", path, why);
        return SN_PLUGIN_ERR_IO;
    }
    if (rows != c->k || cols != NMEL) {
        sn_plugin_error_set(err, "codebook %.300s has shape (%zu, %zu), expected (%u, %d): codebook_size %u entries of %d log-mel bands; refit it or set codebook_size to match",
                            path, rows, cols, c->k, NMEL, c->k, NMEL);
        return SN_PLUGIN_ERR_CONFIG;
    }
    /* sn_pu_npy_read_f32 has refused non-finite values already. */
    return SN_PLUGIN_OK;
}

static sn_plugin_status mv_create(const sn_host *host, sn_instance **out, sn_plugin_error *err)
{
    config cfg;
    sn_plugin_status s = read_config(host, &cfg, err);
    if (s != SN_PLUGIN_OK)
        return s;
    sn_instance *inst = calloc(1, sizeof *inst);
    if (!inst) {
        sn_plugin_error_set(err, "out of memory creating an audio.melvq instance");
        return SN_PLUGIN_ERR_NOMEM;
    }
    inst->cfg = cfg;
    if ((s = load_codebook(host, inst, err)) != SN_PLUGIN_OK ||
        (s = frontend_init(&inst->fe, err)) != SN_PLUGIN_OK) {
        mv_destroy(inst);
        return s;
    }
    inst->norms = malloc((size_t)cfg.k * sizeof *inst->norms);
    if (!inst->norms) {
        mv_destroy(inst);
        sn_plugin_error_set(err, "out of memory for a codebook of %u entries", cfg.k);
        return SN_PLUGIN_ERR_NOMEM;
    }
    sn_pu_sq_norms(inst->codebook, cfg.k, NMEL, inst->norms);
    *out = inst;
    return SN_PLUGIN_OK;
}

static uint32_t mv_vocab_size(const sn_instance *inst)
{
    return inst->cfg.k;
}

static void mv_close_stream(sn_stream *st)
{
    if (!st)
        return;
    analyzer_free(st->an);
    free(st->held);
    free(st->mag);
    free(st->sig);
    free(st->acc);
    free(st->wsum);
    fftwf_free(st->dfin);
    fftwf_free(st->dfout);
    free(st);
}

static sn_plugin_status encode_frame(void *ctx, const float *logmel, sn_plugin_error *err);

static sn_plugin_status mv_open_stream(sn_instance *inst, sn_stream **out, sn_plugin_error *err)
{
    sn_stream *st = calloc(1, sizeof *st);
    if (st) {
        st->inst = inst;
        st->an = analyzer_new(&inst->fe, encode_frame, st);
        st->dfin = fftwf_malloc(NFFT * sizeof *st->dfin);
        st->dfout = fftwf_malloc(NBIN * sizeof *st->dfout);
    }
    if (!st || !st->an || !st->dfin || !st->dfout) {
        mv_close_stream(st);
        sn_plugin_error_set(err, "out of memory opening an audio.melvq stream");
        return SN_PLUGIN_ERR_NOMEM;
    }
    *out = st;
    return SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Encoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void encoder_reset(sn_stream *st)
{
    analyzer_reset(st->an);
    st->n_ids = 0;
    st->emitted = 0;
}

/* Hands the held ids to the sink; the first is frame `emitted`, at t0 + emitted * 20 ms. */
static sn_plugin_status emit_ids(sn_stream *st)
{
    if (st->n_ids == 0)
        return SN_PLUGIN_OK;
    double t = st->t0 + (double)st->emitted * HOP / RATE;
    sn_plugin_status s = st->sink->emit(st->sink->ctx, st->ids, st->n_ids, t);
    st->emitted += st->n_ids;
    st->n_ids = 0;
    return s;
}

static sn_plugin_status encode_frame(void *ctx, const float *logmel, sn_plugin_error *err)
{
    (void)err;
    sn_stream *st = ctx;
    const sn_instance *inst = st->inst;
    st->ids[st->n_ids++] = (int32_t)sn_pu_nearest(logmel, inst->codebook, inst->norms,
                                                  inst->cfg.k, NMEL);
    return st->n_ids == BATCH ? emit_ids(st) : SN_PLUGIN_OK;
}

static sn_plugin_status mv_encode(sn_stream *st, const sn_media *m, const sn_token_sink *sink,
                                  sn_plugin_error *err)
{
    if (m->kind != SN_MEDIA_AUDIO) {
        sn_plugin_error_set(err, "audio.melvq reads audio, not %s media", sn_pu_media_kind_name(m->kind));
        encoder_reset(st);
        return SN_PLUGIN_ERR_INVALID;
    }
    if (m->audio.n_samples == 0) /* nothing to do; does not start a stimulus */
        return SN_PLUGIN_OK;
    if (st->an->in_rate == 0) {
        st->t0 = m->t;
        st->emitted = 0;
    }
    st->sink = sink;
    sn_plugin_status s = analyzer_feed(st->an, &m->audio, "", err);
    if (s == SN_PLUGIN_OK)
        s = emit_ids(st);
    if (s != SN_PLUGIN_OK)
        encoder_reset(st);
    st->sink = NULL;
    return s;
}

static sn_plugin_status mv_encode_flush(sn_stream *st, const sn_token_sink *sink,
                                        sn_plugin_error *err)
{
    st->sink = sink;
    sn_plugin_status s = analyzer_finish(st->an, err);
    if (s == SN_PLUGIN_OK)
        s = emit_ids(st);
    encoder_reset(st);
    st->sink = NULL;
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Collects the segment's ids: Griffin-Lim needs them all (see decode_flush). */
static sn_plugin_status mv_decode(sn_stream *st, const int32_t *ids, size_t n, double t,
                                  const sn_action_sink *sink, sn_plugin_error *err)
{
    (void)sink;
    uint32_t k = st->inst->cfg.k;
    st->dec_t = t;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= k) {
            st->n_held = 0;
            sn_plugin_error_set(err, "token %zu is %d, outside audio.melvq's ids 0..%u; pass only this plugin's local ids",
                                i, (int)ids[i], k - 1);
            return SN_PLUGIN_ERR_INVALID;
        }
    if (st->n_held + n > st->held_cap) {
        size_t cap = 2 * (st->n_held + n);
        int32_t *h = realloc(st->held, cap * sizeof *h);
        if (!h) {
            st->n_held = 0;
            sn_plugin_error_set(err, "out of memory holding a segment of %zu tokens", st->n_held + n);
            return SN_PLUGIN_ERR_NOMEM;
        }
        st->held = h;
        st->held_cap = cap;
    }
    memcpy(st->held + st->n_held, ids, n * sizeof *ids);
    st->n_held += n;
    return SN_PLUGIN_OK;
}

static int grow_floats(float **p, size_t n)
{
    float *q = realloc(*p, n * sizeof *q);
    if (!q)
        return -1;
    *p = q;
    return 0;
}

/* splitmix64: the decoder's initial phases, the same on every platform and every run. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Overlap-adds the synthesis frame in dfin (NFFT samples, scaled by NFFT by FFTW's inverse)
 * at acc + start, weighted by the window: the least-squares signal of a set of frames is
 * sum(window * frame) / sum(window^2). */
static void overlap_add(const frontend *fe, const float *frame, float *acc)
{
    for (int i = 0; i < WIN; i++)
        acc[i] += fe->window[i] * frame[i] * (1.0f / NFFT);
}

static void normalise(const float *acc, const float *wsum, float *sig, size_t len)
{
    for (size_t i = 0; i < len; i++)
        sig[i] = wsum[i] > 1e-6f ? acc[i] / wsum[i] : 0.0f;
}

/*
 * Griffin-Lim on the held segment of n tokens. Token i's frame covers output samples
 * [320 i, 320 i + 400), as in the analysis. Synthesis runs on a denser grid, frames every 80
 * samples (80% overlap, where the Hann window's squares sum to a constant), because the
 * analysis grid's 20% overlap leaves the phase almost unconstrained; each synthesis frame
 * takes the log-mel interpolated linearly between the two nearest tokens. The grid starts
 * 320 samples before the output and ends 320 after it, so that every output sample is covered
 * by five frames; the edges take the first and last token's spectrum. Output: 320 n samples.
 */
static sn_plugin_status synthesize(sn_stream *st, const sn_action_sink *sink, sn_plugin_error *err)
{
    const sn_instance *inst = st->inst;
    const frontend *fe = &inst->fe;
    size_t n = st->n_held;
    size_t frames = SYN_PER_TOKEN * n + SYN_PER_TOKEN;
    size_t len = SYN_HOP * (frames - 1) + WIN; /* = 320 n + 640 */
    if (frames > st->syn_frames_cap) {
        if (grow_floats(&st->mag, frames * NBIN))
            goto nomem;
        st->syn_frames_cap = frames;
    }
    if (len > st->syn_len_cap) {
        if (grow_floats(&st->sig, len) || grow_floats(&st->acc, len) || grow_floats(&st->wsum, len))
            goto nomem;
        st->syn_len_cap = len;
    }
    float lm[NMEL];
    for (size_t j = 0; j < frames; j++) {
        /* synthesis frame j starts at output sample 80 j - 320: token position j / 4 - 1 */
        double p = (double)j / SYN_PER_TOKEN - 1.0;
        p = p < 0 ? 0 : p > (double)(n - 1) ? (double)(n - 1) : p;
        size_t i0 = (size_t)p, i1 = i0 + 1 < n ? i0 + 1 : i0;
        float f = (float)(p - (double)i0);
        const float *c0 = inst->codebook + (size_t)st->held[i0] * NMEL;
        const float *c1 = inst->codebook + (size_t)st->held[i1] * NMEL;
        for (int m = 0; m < NMEL; m++)
            lm[m] = (1.0f - f) * c0[m] + f * c1[m];
        logmel_to_magnitude(fe, lm, st->mag + j * NBIN);
    }
    memset(st->wsum, 0, len * sizeof *st->wsum);
    for (size_t j = 0; j < frames; j++)
        for (int i = 0; i < WIN; i++)
            st->wsum[j * SYN_HOP + i] += fe->window[i] * fe->window[i];

    /* Start from the target magnitudes with seeded random phases. */
    uint64_t rng = 0x6D656C7671ull; /* "melvq" */
    memset(st->acc, 0, len * sizeof *st->acc);
    for (size_t j = 0; j < frames; j++) {
        const float *mag = st->mag + j * NBIN;
        for (int k = 0; k < NBIN; k++) {
            double ph = (k == 0 || k == NBIN - 1) ? 0.0
                                                  : 2.0 * M_PI * (double)(rng_next(&rng) >> 11) * 0x1.0p-53;
            st->dfout[k][0] = mag[k] * (float)cos(ph);
            st->dfout[k][1] = mag[k] * (float)sin(ph);
        }
        fftwf_execute_dft_c2r(fe->c2r, st->dfout, st->dfin);
        overlap_add(fe, st->dfin, st->acc + j * SYN_HOP);
    }
    normalise(st->acc, st->wsum, st->sig, len);

    /* Each iteration: keep each frame's phase, impose the target magnitude, and take the
     * signal whose frames are nearest (least squares) to those. */
    for (int it = 0; it < inst->cfg.gl_iterations; it++) {
        memset(st->acc, 0, len * sizeof *st->acc);
        for (size_t j = 0; j < frames; j++) {
            const float *x = st->sig + j * SYN_HOP, *mag = st->mag + j * NBIN;
            for (int i = 0; i < WIN; i++)
                st->dfin[i] = x[i] * fe->window[i];
            for (int i = WIN; i < NFFT; i++)
                st->dfin[i] = 0.0f;
            fftwf_execute_dft_r2c(fe->r2c, st->dfin, st->dfout);
            for (int k = 0; k < NBIN; k++) {
                float re = st->dfout[k][0], im = st->dfout[k][1];
                float a = sqrtf(re * re + im * im);
                if (a > 1e-20f) {
                    float g = mag[k] / a;
                    st->dfout[k][0] = re * g;
                    st->dfout[k][1] = im * g;
                } else {
                    st->dfout[k][0] = mag[k];
                    st->dfout[k][1] = 0.0f;
                }
            }
            fftwf_execute_dft_c2r(fe->c2r, st->dfout, st->dfin);
            overlap_add(fe, st->dfin, st->acc + j * SYN_HOP);
        }
        normalise(st->acc, st->wsum, st->sig, len);
    }

    float *out = st->sig + SYN_PER_TOKEN * SYN_HOP;
    size_t n_out = n * HOP;
    for (size_t i = 0; i < n_out; i++)
        out[i] = out[i] > 1.0f ? 1.0f : out[i] < -1.0f ? -1.0f : out[i];
    sn_action a = {.kind = SN_ACTION_AUDIO, .t = st->dec_t};
    a.audio = (sn_media_audio){out, n_out, RATE};
    return sink->emit(sink->ctx, &a);
nomem:
    sn_plugin_error_set(err, "out of memory synthesising a segment of %zu tokens (%.1f s)", n,
                        (double)n * HOP / RATE);
    return SN_PLUGIN_ERR_NOMEM;
}

/* The segment has ended: synthesise it as one audio event (nothing for an empty segment),
 * stamped with the t of the latest decode call as plugin.h asks of flushed events. */
static sn_plugin_status mv_decode_flush(sn_stream *st, const sn_action_sink *sink,
                                        sn_plugin_error *err)
{
    sn_plugin_status s = st->n_held ? synthesize(st, sink, err) : SN_PLUGIN_OK;
    st->n_held = 0;
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Fit                                                                                      */
/* ---------------------------------------------------------------------------------------- */

/* A seeded uniform sample of at most `keep` frames (reservoir sampling: memory is only what
 * is kept, and the result depends only on the frames' order and the seed). */
typedef struct reservoir {
    float *x;       /* (cap, NMEL) */
    size_t cap, keep, got;
    uint64_t seen;
    uint64_t rng;
} reservoir;

static sn_plugin_status fit_frame(void *ctx, const float *logmel, sn_plugin_error *err)
{
    reservoir *r = ctx;
    r->seen++;
    size_t slot;
    if (r->got < r->keep) {
        if (r->got == r->cap) {
            size_t cap = r->cap ? 2 * r->cap : 4096;
            cap = cap < r->keep ? cap : r->keep;
            float *x = realloc(r->x, cap * NMEL * sizeof *x);
            if (!x) {
                sn_plugin_error_set(err, "out of memory keeping %zu log-mel frames; lower fit_max_frames", cap);
                return SN_PLUGIN_ERR_NOMEM;
            }
            r->x = x;
            r->cap = cap;
        }
        slot = r->got++;
    } else {
        uint64_t j = rng_next(&r->rng) % r->seen;
        if (j >= r->keep)
            return SN_PLUGIN_OK;
        slot = (size_t)j;
    }
    memcpy(r->x + slot * NMEL, logmel, NMEL * sizeof *logmel);
    return SN_PLUGIN_OK;
}

typedef struct fit_log {
    const sn_host *host;
    size_t n;
} fit_log;

static void fit_progress(void *ctx, int it, int max_it, double inertia, size_t changed)
{
    const fit_log *l = ctx;
    l->host->log(l->host, SN_LOG_INFO,
                 "k-means iteration %d/%d: mean squared distance %.4f per frame, %zu of %zu frames changed centroid",
                 it, max_it, inertia, changed, l->n);
}

/*
 * The log-mel frames of every stimulus, made exactly as the encoder makes them (resampled to
 * 16 kHz, the last partial frames zero-padded); a seeded sample of at most fit_max_frames of
 * them; k-means with K = codebook_size; the (K, 80) codebook written to out_path.
 */
static sn_plugin_status mv_fit(const sn_host *host, const sn_media *data, size_t n,
                               const char *out_path, sn_plugin_error *err)
{
    config c;
    sn_plugin_status s = read_config(host, &c, err);
    if (s != SN_PLUGIN_OK)
        return s;
    double seconds = 0;
    for (size_t i = 0; i < n; i++) {
        if (data[i].kind != SN_MEDIA_AUDIO) {
            sn_plugin_error_set(err, "data[%zu] is %s media, but audio.melvq fits on audio only",
                                i, sn_pu_media_kind_name(data[i].kind));
            return SN_PLUGIN_ERR_INVALID;
        }
        if (data[i].audio.sample_rate == 0) {
            sn_plugin_error_set(err, "data[%zu] has sample rate 0 Hz", i);
            return SN_PLUGIN_ERR_INVALID;
        }
        seconds += (double)data[i].audio.n_samples / data[i].audio.sample_rate;
    }
    frontend *fe = malloc(sizeof *fe);
    if (!fe) {
        sn_plugin_error_set(err, "out of memory for the log-mel front end");
        return SN_PLUGIN_ERR_NOMEM;
    }
    if ((s = frontend_init(fe, err)) != SN_PLUGIN_OK) {
        free(fe);
        return s;
    }
    reservoir r = {.keep = c.max_frames, .rng = c.seed};
    float *cent = NULL;
    analyzer *a = analyzer_new(fe, fit_frame, &r);
    if (!a) {
        sn_plugin_error_set(err, "out of memory for the log-mel front end");
        s = SN_PLUGIN_ERR_NOMEM;
        goto out;
    }
    host->log(host, SN_LOG_INFO, "computing log-mel frames of %zu recording%s (%.1f s of audio)",
              n, n == 1 ? "" : "s", seconds);
    char what[48];
    for (size_t i = 0; i < n; i++) {
        snprintf(what, sizeof what, "data[%zu]: ", i);
        if ((s = analyzer_feed(a, &data[i].audio, what, err)) != SN_PLUGIN_OK ||
            (s = analyzer_finish(a, err)) != SN_PLUGIN_OK)
            goto out;
    }
    if (r.seen < c.k) {
        sn_plugin_error_set(err, "%zu recording%s give%s %llu log-mel frames (%.2f s of audio at one frame per 20 ms), fewer than the %u codebook entries; fit on at least %.2f s of audio, or lower codebook_size",
                            n, n == 1 ? "" : "s", n == 1 ? "s" : "", (unsigned long long)r.seen,
                            (double)r.seen * HOP / RATE, c.k, (double)c.k * HOP / RATE);
        s = SN_PLUGIN_ERR_INVALID;
        goto out;
    }
    host->log(host, SN_LOG_INFO, "k-means: %u centroids, %zu of %llu frames of %d log-mel bands, at most %d iterations (seed %llu)",
              c.k, r.got, (unsigned long long)r.seen, NMEL, ITERATIONS, (unsigned long long)c.seed);
    cent = malloc((size_t)c.k * NMEL * sizeof *cent);
    fit_log l = {host, r.got};
    sn_pu_kmeans_opts o = {.k = c.k, .max_iterations = ITERATIONS, .seed = c.seed,
                           .progress = fit_progress, .progress_ctx = &l};
    if (!cent || sn_pu_kmeans(r.x, r.got, NMEL, &o, cent)) {
        sn_plugin_error_set(err, "out of memory running k-means on %zu frames; lower fit_max_frames", r.got);
        s = SN_PLUGIN_ERR_NOMEM;
        goto out;
    }
    char why[256];
    if (sn_pu_npy_write_f32(out_path, cent, c.k, NMEL, why, sizeof why)) {
        sn_plugin_error_set(err, "cannot write codebook %.300s: %s", out_path, why);
        s = SN_PLUGIN_ERR_IO;
        goto out;
    }
    host->log(host, SN_LOG_INFO, "wrote codebook %s: (%u, %d) float32", out_path, c.k, NMEL);
out:
    analyzer_free(a);
    frontend_free(fe);
    free(fe);
    free(r.x);
    free(cent);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Descriptor                                                                               */
/* ---------------------------------------------------------------------------------------- */

static const sn_plugin_desc desc = {
    .struct_size = sizeof(sn_plugin_desc),
    .abi_major = SN_PLUGIN_ABI_MAJOR,
    .abi_minor = SN_PLUGIN_ABI_MINOR,
    .name = NAME,
    .version = "1.0.0",
    .description = "audio as one token per 20 ms: nearest of a k-means codebook of 80-band log-mel frames; Griffin-Lim back to 16 kHz audio",
    .kind = SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER,
    .media_kinds = SN_MEDIA_BIT(SN_MEDIA_AUDIO),
    .create = mv_create,
    .destroy = mv_destroy,
    .vocab_size = mv_vocab_size,
    .open_stream = mv_open_stream,
    .close_stream = mv_close_stream,
    .encode = mv_encode,
    .encode_flush = mv_encode_flush,
    .decode = mv_decode,
    .decode_flush = mv_decode_flush,
    .constrain = NULL,
    .fit = mv_fit,
};

SN_PLUGIN_ENTRY(index) { return index == 0 ? &desc : NULL; }
