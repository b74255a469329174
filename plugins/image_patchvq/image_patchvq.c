/*
 * image_patchvq.c - the "image.patchvq" plugin: a picture as a grid of 8x8-pixel patches,
 * each token the nearest entry of a learned codebook of patches, and such tokens back into a
 * picture made of the codebook's patches.
 *
 * Encoding: resize to W x H (area averaging down, bilinear up; plugins/common/image_resize.h),
 * cut into (W/8) x (H/8) patches in row-major order, and map each patch - a 192-vector of
 * its pixels' R, G, B in [0, 1], (dy, dx, channel) order - to the nearest of K centroids
 * (squared Euclidean distance). `sensorium fit` learns the centroids with k-means on patches
 * of training images (plugins/common/kmeans.h). The decoder emits one RGB image per (W/8)(H/8)
 * ids; constrain() makes every generated segment exactly one image.
 */
#include <sensorium/plugin.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image_resize.h"
#include "kmeans.h"
#include "npy_f32.h"
#include "plugin_util.h"

#define NAME "image.patchvq"
#define PATCH 8
#define DIM (PATCH * PATCH * 3) /* 192 */
#define GRID_MAX 1024           /* the largest width or height */
#define DEFAULT_SIDE 64
#define DEFAULT_K 1024
#define K_MAX 65536
#define DEFAULT_MAX_PATCHES 200000
#define MAX_PATCHES_MAX 10000000
#define DEFAULT_STRIDE 4
#define ITERATIONS 25

static const char *const KEYS[] = {"width",           "height", "background", "codebook_size",
                                   "codebook",        "fit_max_patches", "seed", "fit_stride"};

/* The configuration, read the same way by create and fit. */
typedef struct config {
    uint32_t w, h;        /* the resized image; multiples of 8 */
    uint8_t bg[3];        /* the colour alpha is composited over */
    uint32_t k;           /* codebook entries = vocabulary size */
    const char *codebook; /* the file name as configured (host memory) */
    size_t max_patches;   /* fit: patches k-means sees at most */
    uint64_t seed;        /* fit: subsampling and k-means++ */
    uint32_t stride;      /* fit: pixels between the patches taken from a training image */
} config;

struct sn_instance {
    config cfg;
    float *codebook;   /* (k, DIM) centroids, values in [0, 1] */
    float *norms;      /* (k) their squared norms, for sn_pu_nearest */
    uint8_t *patches;  /* (k, DIM) the centroids as 8-bit pixels: what decode pastes */
};

struct sn_stream {
    const sn_instance *inst;
    /* encoder */
    sn_pu_resizer rs;
    float *grid;     /* (h, w, 3) the resized image, [0, 255] */
    int32_t *ids;    /* (h/8 * w/8) the ids of one image */
    /* decoder */
    int32_t *held;   /* (h/8 * w/8) ids of the image being collected */
    size_t n_held;
    uint8_t *pixels; /* (h, w, 3) the decoded image */
};

static size_t patches_per_image(const config *c)
{
    return (size_t)(c->w / PATCH) * (c->h / PATCH);
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* An integer key in [lo, hi] (and a multiple of mult), or def when absent. */
static sn_plugin_status config_range(const sn_host *host, const char *key, int64_t def,
                                     int64_t lo, int64_t hi, int64_t mult, int64_t *out,
                                     sn_plugin_error *err)
{
    int64_t v = def;
    sn_plugin_status s = host->config_int(host, key, &v, err);
    if (s == SN_PLUGIN_ERR_NOT_FOUND)
        v = def;
    else if (s != SN_PLUGIN_OK)
        return s == SN_PLUGIN_ERR_NOMEM ? s : SN_PLUGIN_ERR_CONFIG;
    if (v < lo || v > hi || v % mult != 0) {
        if (mult > 1)
            sn_plugin_error_set(err, "config key '%s' is %lld; it must be a multiple of %lld from %lld to %lld (whole %lldx%lld patches)",
                                key, (long long)v, (long long)mult, (long long)lo,
                                (long long)hi, (long long)mult, (long long)mult);
        else
            sn_plugin_error_set(err, "config key '%s' is %lld; it must be an integer from %lld to %lld",
                                key, (long long)v, (long long)lo, (long long)hi);
        return SN_PLUGIN_ERR_CONFIG;
    }
    *out = v;
    return SN_PLUGIN_OK;
}

/* 'background': [r, g, b], each 0..255; black when absent. */
static sn_plugin_status config_background(const sn_host *host, uint8_t bg[3],
                                          sn_plugin_error *err)
{
    int64_t v[3] = {0, 0, 0};
    size_t n = 0;
    sn_plugin_status s = host->config_int_array(host, "background", v, 3, &n, err);
    if (s == SN_PLUGIN_ERR_NOT_FOUND) {
        bg[0] = bg[1] = bg[2] = 0;
        return SN_PLUGIN_OK;
    }
    if (s != SN_PLUGIN_OK)
        return s == SN_PLUGIN_ERR_NOMEM ? s : SN_PLUGIN_ERR_CONFIG;
    if (n != 3) {
        sn_plugin_error_set(err, "config key 'background' has %zu elements; give an [r, g, b] colour, each 0..255, e.g. [0, 0, 0]",
                            n);
        return SN_PLUGIN_ERR_CONFIG;
    }
    for (int c = 0; c < 3; c++) {
        if (v[c] < 0 || v[c] > 255) {
            sn_plugin_error_set(err, "config key 'background'[%d] is %lld; colour components must be integers from 0 to 255",
                                c, (long long)v[c]);
            return SN_PLUGIN_ERR_CONFIG;
        }
        bg[c] = (uint8_t)v[c];
    }
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
    int64_t w, h, k, maxp, seed, stride;
    if ((s = config_range(host, "width", DEFAULT_SIDE, PATCH, GRID_MAX, PATCH, &w, err)) ||
        (s = config_range(host, "height", DEFAULT_SIDE, PATCH, GRID_MAX, PATCH, &h, err)) ||
        (s = config_range(host, "codebook_size", DEFAULT_K, 1, K_MAX, 1, &k, err)) ||
        (s = config_range(host, "fit_max_patches", DEFAULT_MAX_PATCHES, 1, MAX_PATCHES_MAX, 1,
                          &maxp, err)) ||
        (s = config_range(host, "seed", 0, 0, INT64_MAX, 1, &seed, err)) ||
        (s = config_range(host, "fit_stride", DEFAULT_STRIDE, 1, PATCH, 1, &stride, err)) ||
        (s = config_background(host, c->bg, err)))
        return s;
    c->w = (uint32_t)w;
    c->h = (uint32_t)h;
    c->k = (uint32_t)k;
    c->max_patches = (size_t)maxp;
    c->seed = (uint64_t)seed;
    c->stride = (uint32_t)stride;
    c->codebook = NAME ".npy";
    s = host->config_string(host, "codebook", &c->codebook, err);
    if (s == SN_PLUGIN_ERR_NOT_FOUND)
        c->codebook = NAME ".npy";
    else if (s != SN_PLUGIN_OK)
        return s == SN_PLUGIN_ERR_NOMEM ? s : SN_PLUGIN_ERR_CONFIG;
    if (!c->codebook[0]) {
        sn_plugin_error_set(err, "config key 'codebook' is empty; name the codebook file (default \"%s.npy\")",
                            NAME);
        return SN_PLUGIN_ERR_CONFIG;
    }
    if (c->max_patches < c->k) {
        sn_plugin_error_set(err, "config key 'fit_max_patches' is %zu, fewer than the %u codebook entries (codebook_size); k-means needs at least one patch per entry",
                            c->max_patches, c->k);
        return SN_PLUGIN_ERR_CONFIG;
    }
    return SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Lifecycle                                                                                */
/* ---------------------------------------------------------------------------------------- */

static void pv_destroy(sn_instance *inst)
{
    if (!inst)
        return;
    free(inst->codebook);
    free(inst->norms);
    free(inst->patches);
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
            sn_plugin_error_set(err, "codebook \"%.200s\" is a relative name but there is no model data directory; pass --data-dir, or give config key 'codebook' an absolute path (make one with `sensorium fit --plugin image.patchvq`)",
                                c->codebook);
            return SN_PLUGIN_ERR_CONFIG;
        }
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, c->codebook) >= sizeof path) {
            sn_plugin_error_set(err, "codebook path \"%.100s/%.100s...\" is too long", dir,
                                c->codebook);
            return SN_PLUGIN_ERR_CONFIG;
        }
    }
    char why[256];
    size_t rows = 0, cols = 0;
    if (sn_pu_npy_read_f32(path, &inst->codebook, &rows, &cols, why, sizeof why)) {
        sn_plugin_error_set(err, "codebook %.300s: %s (make it with `sensorium fit --plugin image.patchvq`)",
                            path, why);
        return SN_PLUGIN_ERR_IO;
    }
    if (rows != c->k || cols != DIM) {
        sn_plugin_error_set(err, "codebook %.300s has shape (%zu, %zu), expected (%u, %d): codebook_size %u entries of 8x8x3 patches; refit it or set codebook_size to match",
                            path, rows, cols, c->k, DIM, c->k);
        return SN_PLUGIN_ERR_CONFIG;
    }
    for (size_t i = 0; i < rows * cols; i++) {
        if (!isfinite(inst->codebook[i])) {
            sn_plugin_error_set(err, "codebook %.300s: entry %zu, element %zu is not a finite number; refit it",
                                path, i / DIM, i % DIM);
            return SN_PLUGIN_ERR_CONFIG;
        }
    }
    return SN_PLUGIN_OK;
}

static sn_plugin_status pv_create(const sn_host *host, sn_instance **out, sn_plugin_error *err)
{
    config cfg;
    sn_plugin_status s = read_config(host, &cfg, err);
    if (s != SN_PLUGIN_OK)
        return s;
    sn_instance *inst = calloc(1, sizeof *inst);
    if (!inst) {
        sn_plugin_error_set(err, "out of memory creating an image.patchvq instance");
        return SN_PLUGIN_ERR_NOMEM;
    }
    inst->cfg = cfg;
    if ((s = load_codebook(host, inst, err)) != SN_PLUGIN_OK) {
        pv_destroy(inst);
        return s;
    }
    inst->norms = malloc((size_t)cfg.k * sizeof *inst->norms);
    inst->patches = malloc((size_t)cfg.k * DIM);
    if (!inst->norms || !inst->patches) {
        pv_destroy(inst);
        sn_plugin_error_set(err, "out of memory for a codebook of %u patches", cfg.k);
        return SN_PLUGIN_ERR_NOMEM;
    }
    sn_pu_sq_norms(inst->codebook, cfg.k, DIM, inst->norms);
    for (size_t i = 0; i < (size_t)cfg.k * DIM; i++) {
        float v = inst->codebook[i] * 255.0f;
        inst->patches[i] = (uint8_t)(v <= 0.0f ? 0 : v >= 255.0f ? 255 : (int)(v + 0.5f));
    }
    *out = inst;
    return SN_PLUGIN_OK;
}

static uint32_t pv_vocab_size(const sn_instance *inst)
{
    return inst->cfg.k;
}

static void pv_close_stream(sn_stream *st)
{
    if (!st)
        return;
    sn_pu_resizer_free(&st->rs);
    free(st->grid);
    free(st->ids);
    free(st->held);
    free(st->pixels);
    free(st);
}

static sn_plugin_status pv_open_stream(sn_instance *inst, sn_stream **out, sn_plugin_error *err)
{
    const config *c = &inst->cfg;
    size_t pixels = (size_t)c->w * c->h, n = patches_per_image(c);
    sn_stream *st = calloc(1, sizeof *st);
    if (st) {
        sn_pu_resizer_init(&st->rs, c->w, c->h);
        st->inst = inst;
        st->grid = malloc(pixels * 3 * sizeof *st->grid);
        st->ids = malloc(n * sizeof *st->ids);
        st->held = malloc(n * sizeof *st->held);
        st->pixels = malloc(pixels * 3);
    }
    if (!st || !st->grid || !st->ids || !st->held || !st->pixels) {
        pv_close_stream(st);
        sn_plugin_error_set(err, "out of memory opening an image.patchvq stream (%ux%u image)",
                            c->w, c->h);
        return SN_PLUGIN_ERR_NOMEM;
    }
    *out = st;
    return SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Patches                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Whether an image can be read; writes why not to err. what names it ("image", "data[3]"). */
static int image_ok(const sn_media *m, const char *what, sn_plugin_error *err)
{
    if (m->kind != SN_MEDIA_IMAGE) {
        sn_plugin_error_set(err, "%s is %s media (kind %d), but image.patchvq takes images only",
                            what, sn_pu_media_kind_name(m->kind), (int)m->kind);
        return 0;
    }
    const sn_media_image *im = &m->image;
    if (im->channels < 1 || im->channels > 4) {
        sn_plugin_error_set(err, "%s has %u channels; expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)",
                            what, im->channels);
        return 0;
    }
    if (im->width == 0 || im->height == 0) {
        sn_plugin_error_set(err, "%s is %ux%u pixels; an image needs at least one pixel", what,
                            im->width, im->height);
        return 0;
    }
    if (!im->pixels || im->stride < (size_t)im->width * im->channels) {
        sn_plugin_error_set(err, "%s rows are %zu bytes apart but hold %zu bytes each (%u pixels x %u channels)%s",
                            what, im->stride, (size_t)im->width * im->channels, im->width,
                            im->channels, im->pixels ? "" : ", and its pixel pointer is NULL");
        return 0;
    }
    return 1;
}

/* The patch whose top-left pixel is (x, y) of grid (h, w, 3) as a vector in [0, 1]. */
static void patch_vector(const float *grid, uint32_t w, uint32_t x, uint32_t y, float *v)
{
    for (uint32_t dy = 0; dy < PATCH; dy++) {
        const float *row = grid + ((size_t)(y + dy) * w + x) * 3;
        for (uint32_t j = 0; j < PATCH * 3; j++)
            v[dy * PATCH * 3 + j] = row[j] * (1.0f / 255.0f);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Tokenizer                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Each call is one whole image (the host never splits an image), so nothing is held and
 * encode_flush is NULL. All ids of an image carry its t. */
static sn_plugin_status pv_encode(sn_stream *st, const sn_media *media, const sn_token_sink *sink,
                                  sn_plugin_error *err)
{
    if (!image_ok(media, "image", err))
        return SN_PLUGIN_ERR_INVALID;
    const sn_instance *inst = st->inst;
    const config *c = &inst->cfg;
    const sn_media_image *im = &media->image;
    if (sn_pu_resize_rgb(&st->rs, im->pixels, im->width, im->height, im->channels, im->stride,
                         c->bg, st->grid)) {
        sn_plugin_error_set(err, "out of memory resizing a %ux%u image to %ux%u", im->width,
                            im->height, c->w, c->h);
        return SN_PLUGIN_ERR_NOMEM;
    }
    float v[DIM];
    size_t i = 0;
    for (uint32_t y = 0; y < c->h; y += PATCH)
        for (uint32_t x = 0; x < c->w; x += PATCH) {
            patch_vector(st->grid, c->w, x, y, v);
            st->ids[i++] = (int32_t)sn_pu_nearest(v, inst->codebook, inst->norms, c->k, DIM);
        }
    return sink->emit(sink->ctx, st->ids, i, media->t);
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static sn_plugin_status emit_image(sn_stream *st, double t, const sn_action_sink *sink)
{
    const config *c = &st->inst->cfg;
    size_t i = 0, row = (size_t)c->w * 3;
    for (uint32_t y = 0; y < c->h; y += PATCH)
        for (uint32_t x = 0; x < c->w; x += PATCH) {
            const uint8_t *p = st->inst->patches + (size_t)st->held[i++] * DIM;
            for (uint32_t dy = 0; dy < PATCH; dy++)
                memcpy(st->pixels + (y + dy) * row + (size_t)x * 3, p + dy * PATCH * 3,
                       PATCH * 3);
        }
    sn_action a = {.kind = SN_ACTION_IMAGE, .t = t};
    a.image.pixels = st->pixels;
    a.image.width = c->w;
    a.image.height = c->h;
    a.image.channels = 3;
    a.image.stride = row;
    return sink->emit(sink->ctx, &a);
}

/* Every (W/8)(H/8) ids make one image, emitted with the t of the call its last id came in. */
static sn_plugin_status pv_decode(sn_stream *st, const int32_t *ids, size_t n, double t,
                                  const sn_action_sink *sink, sn_plugin_error *err)
{
    size_t per = patches_per_image(&st->inst->cfg);
    uint32_t k = st->inst->cfg.k;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= k) {
            st->n_held = 0;
            sn_plugin_error_set(err, "token %zu is %d, outside image.patchvq's ids 0..%u; pass only this plugin's local ids",
                                i, (int)ids[i], k - 1);
            return SN_PLUGIN_ERR_INVALID;
        }
        st->held[st->n_held++] = ids[i];
        if (st->n_held == per) {
            st->n_held = 0;
            sn_plugin_status s = emit_image(st, t, sink);
            if (s != SN_PLUGIN_OK)
                return s;
        }
    }
    return SN_PLUGIN_OK;
}

/* A segment that ends inside an image is an error: half a picture is not padded into a
 * whole one. The partial grid is dropped and the decoder is ready for the next segment. */
static sn_plugin_status pv_decode_flush(sn_stream *st, const sn_action_sink *sink,
                                        sn_plugin_error *err)
{
    (void)sink;
    const config *c = &st->inst->cfg;
    size_t held = st->n_held, per = patches_per_image(c);
    st->n_held = 0;
    if (!held)
        return SN_PLUGIN_OK;
    sn_plugin_error_set(err, "segment ended after %zu of %zu tokens; a %ux%u image needs exactly %zu (one per 8x8 patch), so the partial image was dropped",
                        held, per, c->w, c->h, per);
    return SN_PLUGIN_ERR_INVALID;
}

/* Exactly one image per segment: any id until the grid is full, then only the end. (A
 * segment already past one image, which a sampler following this never makes, is driven to
 * the next whole image.) */
static sn_plugin_status pv_constrain(sn_stream *st, const int32_t *segment, size_t n,
                                     uint64_t *allowed, int *may_end, sn_plugin_error *err)
{
    (void)segment;
    (void)err;
    size_t per = patches_per_image(&st->inst->cfg);
    if (n == 0 || n % per != 0) {
        *may_end = 0;
        return SN_PLUGIN_OK;
    }
    memset(allowed, 0, ((size_t)st->inst->cfg.k + 63) / 64 * sizeof *allowed);
    *may_end = 1;
    return SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Fit                                                                                      */
/* ---------------------------------------------------------------------------------------- */

/* splitmix64: seeded, the same on every platform. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct fit_log {
    const sn_host *host;
    size_t n;
} fit_log;

static void fit_progress(void *ctx, int it, int max_it, double inertia, size_t changed)
{
    const fit_log *l = ctx;
    l->host->log(l->host, SN_LOG_INFO,
                 "k-means iteration %d/%d: mean squared distance %.6f per patch, %zu of %zu patches changed centroid",
                 it, max_it, inertia, changed, l->n);
}

/*
 * Patches for k-means: every patch at a multiple of fit_stride pixels (8: the encoder's
 * aligned patches only; the default 4 adds the half-shifted ones, four times the data from
 * the same images, which the encoder's grid meets at any image content shift). When there
 * are more than fit_max_patches, a seeded uniform sample of that many (selection sampling,
 * so the order stays that of the images and memory is only what is kept).
 */
static sn_plugin_status pv_fit(const sn_host *host, const sn_media *data, size_t n,
                               const char *out_path, sn_plugin_error *err)
{
    config c;
    sn_plugin_status s = read_config(host, &c, err);
    if (s != SN_PLUGIN_OK)
        return s;
    char what[48];
    for (size_t i = 0; i < n; i++) {
        snprintf(what, sizeof what, "data[%zu]", i);
        if (!image_ok(&data[i], what, err))
            return SN_PLUGIN_ERR_INVALID;
    }
    size_t across = (c.w - PATCH) / c.stride + 1, down = (c.h - PATCH) / c.stride + 1;
    size_t per = across * down, total = per * n;
    if (total < c.k) {
        size_t need = (c.k + per - 1) / per;
        sn_plugin_error_set(err, "%zu image%s give%s %zu patches (%zu each at %ux%u, fit_stride %u), fewer than the %u codebook entries; fit on at least %zu images, or lower codebook_size",
                            n, n == 1 ? "" : "s", n == 1 ? "s" : "", total, per, c.w, c.h, c.stride, c.k, need);
        return SN_PLUGIN_ERR_INVALID;
    }
    size_t keep = total < c.max_patches ? total : c.max_patches;
    float *x = malloc(keep * DIM * sizeof *x);
    float *grid = malloc((size_t)c.w * c.h * 3 * sizeof *grid);
    float *cent = malloc((size_t)c.k * DIM * sizeof *cent);
    sn_pu_resizer rs;
    sn_pu_resizer_init(&rs, c.w, c.h);
    if (!x || !grid || !cent) {
        sn_plugin_error_set(err, "out of memory for %zu training patches (%zu MB); lower fit_max_patches",
                            keep, keep * DIM * sizeof *x >> 20);
        s = SN_PLUGIN_ERR_NOMEM;
        goto out;
    }
    host->log(host, SN_LOG_INFO, "collecting %zu of %zu patches from %zu images resized to %ux%u (fit_stride %u)",
              keep, total, n, c.w, c.h, c.stride);
    uint64_t rng = c.seed;
    size_t seen = 0, got = 0;
    for (size_t i = 0; i < n && got < keep; i++) {
        const sn_media_image *im = &data[i].image;
        if (sn_pu_resize_rgb(&rs, im->pixels, im->width, im->height, im->channels, im->stride,
                             c.bg, grid)) {
            sn_plugin_error_set(err, "out of memory resizing data[%zu] (%ux%u)", i, im->width,
                                im->height);
            s = SN_PLUGIN_ERR_NOMEM;
            goto out;
        }
        for (size_t p = 0; p < per; p++, seen++) {
            /* Knuth's algorithm S: take this patch with probability (still needed) / (left). */
            size_t left = total - seen;
            if ((rng_next(&rng) >> 11) % left >= keep - got)
                continue;
            uint32_t px = (uint32_t)(p % across) * c.stride, py = (uint32_t)(p / across) * c.stride;
            patch_vector(grid, c.w, px, py, x + got * DIM);
            got++;
        }
    }
    host->log(host, SN_LOG_INFO, "k-means: %u centroids, %zu patches of %d values, at most %d iterations (seed %llu)",
              c.k, got, DIM, ITERATIONS, (unsigned long long)c.seed);
    fit_log l = {host, got};
    sn_pu_kmeans_opts o = {.k = c.k, .max_iterations = ITERATIONS, .seed = c.seed,
                           .progress = fit_progress, .progress_ctx = &l};
    if (sn_pu_kmeans(x, got, DIM, &o, cent)) {
        sn_plugin_error_set(err, "out of memory running k-means on %zu patches; lower fit_max_patches",
                            got);
        s = SN_PLUGIN_ERR_NOMEM;
        goto out;
    }
    char why[256];
    if (sn_pu_npy_write_f32(out_path, cent, c.k, DIM, why, sizeof why)) {
        sn_plugin_error_set(err, "cannot write codebook %.300s: %s", out_path, why);
        s = SN_PLUGIN_ERR_IO;
        goto out;
    }
    host->log(host, SN_LOG_INFO, "wrote codebook %s: (%u, %d) float32", out_path, c.k, DIM);
out:
    sn_pu_resizer_free(&rs);
    free(x);
    free(grid);
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
    .description = "images as 8x8 patches (default 64x64 -> 64 tokens), each the nearest of a k-means codebook; one image per segment",
    .kind = SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER,
    .media_kinds = SN_MEDIA_BIT(SN_MEDIA_IMAGE),
    .create = pv_create,
    .destroy = pv_destroy,
    .vocab_size = pv_vocab_size,
    .open_stream = pv_open_stream,
    .close_stream = pv_close_stream,
    .encode = pv_encode,
    .encode_flush = NULL,
    .decode = pv_decode,
    .decode_flush = pv_decode_flush,
    .constrain = pv_constrain,
    .fit = pv_fit,
};

SN_PLUGIN_ENTRY(index) { return index == 0 ? &desc : NULL; }
