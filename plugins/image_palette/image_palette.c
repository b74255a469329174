/*
 * image_palette.c - the "image.palette" plugin: a picture as a W x H grid of colour tokens
 * from a fixed 512-colour palette, and such a grid back into a picture.
 *
 * The simplest image tokenizer that needs no fitting: the image is resized to the grid
 * (area averaging down, bilinear up; plugins/common/image_resize.h), and each cell's mean
 * colour is quantised to 3 bits per channel, id = r<<6 | g<<3 | b. Quantiser bins are 32
 * values wide ([32q, 32q+32)), and a level decodes to its bin's centre rounded up to an
 * integer, 32q + 16, so no value is more than 16 off. Tokens run row-major from the top
 * left. The decoder collects W*H ids into a grid and emits one RGB image per whole grid;
 * constrain() makes every generated segment exactly one image.
 */
#include <sensorium/plugin.h>

#include <stdlib.h>
#include <string.h>

#include "image_resize.h"
#include "plugin_util.h"

#define NAME "image.palette"
#define VOCAB 512
#define GRID_MAX 1024 /* the largest width or height of the grid */
#define DEFAULT_SIDE 32

static const char *const KEYS[] = {"width", "height", "background"};

struct sn_instance {
    uint32_t w, h; /* the grid */
    uint8_t bg[3]; /* the colour alpha is composited over */
};

struct sn_stream {
    const sn_instance *inst;
    /* encoder */
    sn_pu_resizer rs;
    float *grid;     /* (h, w, 3) the resized image, [0, 255] */
    int32_t *ids;    /* (h * w) the ids of one image */
    /* decoder */
    int32_t *held;   /* (h * w) ids of the image being collected */
    size_t n_held;
    uint8_t *pixels; /* (h, w, 3) the decoded image */
};

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

/* ---------------------------------------------------------------------------------------- */
/* Lifecycle                                                                                */
/* ---------------------------------------------------------------------------------------- */

static sn_plugin_status ip_create(const sn_host *host, sn_instance **out, sn_plugin_error *err)
{
    if (host->abi_major != SN_PLUGIN_ABI_MAJOR) {
        sn_plugin_error_set(err, "host speaks plugin ABI %u, this plugin ABI %d; rebuild the plugin against the engine's plugin.h",
                            (unsigned)host->abi_major, SN_PLUGIN_ABI_MAJOR);
        return SN_PLUGIN_ERR_UNSUPPORTED;
    }
    sn_plugin_status s = sn_pu_reject_unknown_keys(host, NAME, KEYS, sizeof KEYS / sizeof *KEYS, err);
    if (s != SN_PLUGIN_OK)
        return s;
    int64_t w, h;
    uint8_t bg[3];
    if ((s = config_range(host, "width", DEFAULT_SIDE, 1, GRID_MAX, &w, err)) != SN_PLUGIN_OK ||
        (s = config_range(host, "height", DEFAULT_SIDE, 1, GRID_MAX, &h, err)) != SN_PLUGIN_OK ||
        (s = config_background(host, bg, err)) != SN_PLUGIN_OK)
        return s;
    sn_instance *inst = malloc(sizeof *inst);
    if (!inst) {
        sn_plugin_error_set(err, "out of memory creating an image.palette instance");
        return SN_PLUGIN_ERR_NOMEM;
    }
    inst->w = (uint32_t)w;
    inst->h = (uint32_t)h;
    memcpy(inst->bg, bg, 3);
    *out = inst;
    return SN_PLUGIN_OK;
}

static void ip_destroy(sn_instance *inst)
{
    free(inst);
}

static uint32_t ip_vocab_size(const sn_instance *inst)
{
    (void)inst;
    return VOCAB;
}

static void ip_close_stream(sn_stream *st)
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

static sn_plugin_status ip_open_stream(sn_instance *inst, sn_stream **out, sn_plugin_error *err)
{
    size_t cells = (size_t)inst->w * inst->h;
    sn_stream *st = calloc(1, sizeof *st);
    if (st) {
        sn_pu_resizer_init(&st->rs, inst->w, inst->h);
        st->inst = inst;
        st->grid = malloc(cells * 3 * sizeof *st->grid);
        st->ids = malloc(cells * sizeof *st->ids);
        st->held = malloc(cells * sizeof *st->held);
        st->pixels = malloc(cells * 3);
    }
    if (!st || !st->grid || !st->ids || !st->held || !st->pixels) {
        ip_close_stream(st);
        sn_plugin_error_set(err, "out of memory opening an image.palette stream (%ux%u grid)",
                            inst->w, inst->h);
        return SN_PLUGIN_ERR_NOMEM;
    }
    *out = st;
    return SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Tokenizer                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Whether an image chunk can be read; writes why not to err. */
static int image_ok(const sn_media *m, sn_plugin_error *err)
{
    if (m->kind != SN_MEDIA_IMAGE) {
        sn_plugin_error_set(err, "got %s media (kind %d), but image.palette encodes images only",
                            sn_pu_media_kind_name(m->kind), (int)m->kind);
        return 0;
    }
    const sn_media_image *im = &m->image;
    if (im->channels < 1 || im->channels > 4) {
        sn_plugin_error_set(err, "image has %u channels; expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)",
                            im->channels);
        return 0;
    }
    if (im->width == 0 || im->height == 0) {
        sn_plugin_error_set(err, "image is %ux%u pixels; an image needs at least one pixel",
                            im->width, im->height);
        return 0;
    }
    if (!im->pixels || im->stride < (size_t)im->width * im->channels) {
        sn_plugin_error_set(err, "image rows are %zu bytes apart but hold %zu bytes each (%u pixels x %u channels)%s",
                            im->stride, (size_t)im->width * im->channels, im->width,
                            im->channels, im->pixels ? "" : ", and its pixel pointer is NULL");
        return 0;
    }
    return 1;
}

/* The palette level of a value in [0, 255]: its bin of 32. */
static inline int32_t level(float v)
{
    int32_t q = (int32_t)(v * (1.0f / 32.0f));
    return q > 7 ? 7 : q;
}

/* Each call is one whole image (the host never splits an image), so nothing is held and
 * encode_flush is NULL. All W*H ids carry the image's t. */
static sn_plugin_status ip_encode(sn_stream *st, const sn_media *media, const sn_token_sink *sink,
                                  sn_plugin_error *err)
{
    if (!image_ok(media, err))
        return SN_PLUGIN_ERR_INVALID;
    const sn_instance *inst = st->inst;
    const sn_media_image *im = &media->image;
    if (sn_pu_resize_rgb(&st->rs, im->pixels, im->width, im->height, im->channels, im->stride,
                         inst->bg, st->grid)) {
        sn_plugin_error_set(err, "out of memory resizing a %ux%u image to %ux%u", im->width,
                            im->height, inst->w, inst->h);
        return SN_PLUGIN_ERR_NOMEM;
    }
    size_t cells = (size_t)inst->w * inst->h;
    const float *g = st->grid;
    for (size_t i = 0; i < cells; i++, g += 3)
        st->ids[i] = level(g[0]) << 6 | level(g[1]) << 3 | level(g[2]);
    return sink->emit(sink->ctx, st->ids, cells, media->t);
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static sn_plugin_status emit_image(sn_stream *st, double t, const sn_action_sink *sink)
{
    const sn_instance *inst = st->inst;
    size_t cells = (size_t)inst->w * inst->h;
    uint8_t *p = st->pixels;
    for (size_t i = 0; i < cells; i++, p += 3) {
        int32_t id = st->held[i];
        p[0] = (uint8_t)(((id >> 6) & 7) * 32 + 16);
        p[1] = (uint8_t)(((id >> 3) & 7) * 32 + 16);
        p[2] = (uint8_t)((id & 7) * 32 + 16);
    }
    sn_action a = {.kind = SN_ACTION_IMAGE, .t = t};
    a.image.pixels = st->pixels;
    a.image.width = inst->w;
    a.image.height = inst->h;
    a.image.channels = 3;
    a.image.stride = (size_t)inst->w * 3;
    return sink->emit(sink->ctx, &a);
}

/* Every W*H ids make one image, emitted with the t of the call its last id came in. */
static sn_plugin_status ip_decode(sn_stream *st, const int32_t *ids, size_t n, double t,
                                  const sn_action_sink *sink, sn_plugin_error *err)
{
    size_t cells = (size_t)st->inst->w * st->inst->h;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= VOCAB) {
            st->n_held = 0;
            sn_plugin_error_set(err, "token %zu is %d, outside image.palette's ids 0..%d; pass only this plugin's local ids",
                                i, (int)ids[i], VOCAB - 1);
            return SN_PLUGIN_ERR_INVALID;
        }
        st->held[st->n_held++] = ids[i];
        if (st->n_held == cells) {
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
static sn_plugin_status ip_decode_flush(sn_stream *st, const sn_action_sink *sink,
                                        sn_plugin_error *err)
{
    (void)sink;
    size_t held = st->n_held, cells = (size_t)st->inst->w * st->inst->h;
    st->n_held = 0;
    if (!held)
        return SN_PLUGIN_OK;
    sn_plugin_error_set(err, "segment ended after %zu of %zu tokens; a %ux%u image needs exactly %zu, so the partial image was dropped",
                        held, cells, st->inst->w, st->inst->h, cells);
    return SN_PLUGIN_ERR_INVALID;
}

/* Exactly one image per segment: any id until the grid is full, then only the end. (A
 * segment already past one image, which a sampler following this never makes, is driven to
 * the next whole image.) */
static sn_plugin_status ip_constrain(sn_stream *st, const int32_t *segment, size_t n,
                                     uint64_t *allowed, int *may_end, sn_plugin_error *err)
{
    (void)segment;
    (void)err;
    size_t cells = (size_t)st->inst->w * st->inst->h;
    if (n == 0 || n % cells != 0) {
        *may_end = 0;
        return SN_PLUGIN_OK;
    }
    memset(allowed, 0, VOCAB / 64 * sizeof *allowed);
    *may_end = 1;
    return SN_PLUGIN_OK;
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
    .description = "images as a grid (default 32x32) of 512 fixed colours (3 bits per channel); one image per segment",
    .kind = SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER,
    .media_kinds = SN_MEDIA_BIT(SN_MEDIA_IMAGE),
    .create = ip_create,
    .destroy = ip_destroy,
    .vocab_size = ip_vocab_size,
    .open_stream = ip_open_stream,
    .close_stream = ip_close_stream,
    .encode = ip_encode,
    .encode_flush = NULL,
    .decode = ip_decode,
    .decode_flush = ip_decode_flush,
    .constrain = ip_constrain,
    .fit = NULL,
};

SN_PLUGIN_ENTRY(index) { return index == 0 ? &desc : NULL; }
