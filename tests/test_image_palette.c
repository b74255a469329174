/*
 * test_image_palette.c - the image.palette plugin end to end, through the engine's public
 * codec API (plugins/image_palette.so from the build's plugin folder), and the resize it
 * shares with image.patchvq (plugins/common/image_resize.h, compiled here as well, so that
 * a photo's tokens can be compared with the photo resized by the very same code).
 *
 * What a user relies on: a photo comes back as a coarse but faithful picture (PSNR of the
 * round trip against the resized photo, bounded from the quantiser's step); resizing keeps
 * constant colours exact and averages areas (not nearest-neighbour); tokens run row-major
 * from the top left; alpha is composited over the configured background; the decoder makes
 * one image per W*H ids and refuses a partial one; constrain() allows exactly one image per
 * segment; bad configurations and non-images fail with a message naming the problem.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../plugins/common/image_resize.h"
#include "sensorium/sensorium.h"

#define PHOTOS SN_TESTDATA_DIR "/usr/lib/python3/dist-packages/skimage/data/"

static sn_plugins *plugins;
static sn_codec *codec; /* default configuration: 32x32 */

static void setup(void)
{
    cr_assert_eq(sn_plugins_open(SN_BUILD_PLUGIN_DIR, SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT,
                                 &plugins),
                 SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_open(plugins, "image.palette", NULL, NULL, &codec), SN_OK, "%s",
                 sn_errmsg());
}

static void teardown(void)
{
    sn_codec_close(codec);
    sn_plugins_close(plugins);
    codec = NULL;
    plugins = NULL;
}

TestSuite(image_palette, .init = setup, .fini = teardown);

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

static uint32_t rng_below(uint64_t *s, uint32_t n)
{
    return (uint32_t)(rng_next(s) % n);
}

static sn_codec *open_with(const char *config)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "image.palette", config, NULL, &c), SN_OK,
                 "config %s: %s", config, sn_errmsg());
    return c;
}

static sn_media image_media(const uint8_t *pixels, uint32_t w, uint32_t h, uint32_t channels)
{
    sn_media m = {.kind = SN_MEDIA_IMAGE, .t = 0.0};
    m.image.pixels = pixels;
    m.image.width = w;
    m.image.height = h;
    m.image.channels = channels;
    m.image.stride = (size_t)w * channels;
    return m;
}

/* What decode emitted: the images, kept packed, one after another. */
typedef struct images_out {
    uint8_t *pixels;
    size_t len;
    size_t n;
    uint32_t w, h;
    int bad; /* an event that was not a packed-or-strided RGB image */
    double last_t;
} images_out;

static int collect(void *ctx, const sn_action *a)
{
    images_out *o = ctx;
    if (a->kind != SN_ACTION_IMAGE || a->image.channels != 3 ||
        a->image.stride < (size_t)a->image.width * 3) {
        o->bad++;
        return 0;
    }
    size_t row = (size_t)a->image.width * 3, size = row * a->image.height;
    uint8_t *p = realloc(o->pixels, o->len + size);
    if (!p)
        return 1;
    o->pixels = p;
    for (uint32_t y = 0; y < a->image.height; y++)
        memcpy(o->pixels + o->len + y * row, a->image.pixels + y * a->image.stride, row);
    o->len += size;
    o->n++;
    o->w = a->image.width;
    o->h = a->image.height;
    o->last_t = a->t;
    return 0;
}

static void out_reset(images_out *o)
{
    free(o->pixels);
    memset(o, 0, sizeof *o);
}

static void encode(sn_codec *c, const sn_media *m, sn_tokens *t)
{
    cr_assert_eq(sn_codec_encode(c, m, t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(c, t), SN_OK, "%s", sn_errmsg());
}

static int32_t pal_id(int r, int g, int b)
{
    return (int32_t)((r / 32) << 6 | (g / 32) << 3 | (b / 32));
}

/* Resizes with the shared header; returns (h, w, 3) floats to free. */
static float *ref_resize(const sn_media_image *im, uint32_t w, uint32_t h, const uint8_t bg[3])
{
    sn_pu_resizer rs;
    sn_pu_resizer_init(&rs, w, h);
    float *out = malloc((size_t)w * h * 3 * sizeof *out);
    cr_assert_not_null(out);
    cr_assert_eq(sn_pu_resize_rgb(&rs, im->pixels, im->width, im->height, im->channels,
                                  im->stride, bg, out), 0);
    sn_pu_resizer_free(&rs);
    return out;
}

/* ---------------------------------------------------------------------------------------- */
/* Identity and configuration                                                               */
/* ---------------------------------------------------------------------------------------- */

Test(image_palette, describes_itself)
{
    const sn_plugin_info *info = sn_codec_info(codec);
    cr_assert_str_eq(info->name, "image.palette");
    cr_assert_neq(info->description[0], '\0');
    cr_assert_eq(info->kind, SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER);
    cr_assert_eq(info->media_kinds, SN_MEDIA_BIT(SN_MEDIA_IMAGE));
    cr_assert_eq(sn_codec_vocab_size(codec), 512);
}

Test(image_palette, bad_configs_fail_naming_the_key)
{
    static const struct {
        const char *config, *expect;
    } cases[] = {
        {"{\"width\": 0}", "width"},
        {"{\"height\": 0}", "height"},
        {"{\"width\": 1025}", "1024"},
        {"{\"height\": -3}", "height"},
        {"{\"width\": \"32\"}", "width"},
        {"{\"width\": 32.5}", "width"},
        {"{\"widht\": 32}", "widht"},
        {"{\"scale\": 2}", "scale"},
        {"{\"background\": [0, 0]}", "background"},
        {"{\"background\": [0, 256, 0]}", "background"},
        {"{\"background\": [0, 0, -1]}", "background"},
        {"{\"background\": \"white\"}", "background"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        sn_codec *c = NULL;
        cr_assert_neq(sn_codec_open(plugins, "image.palette", cases[i].config, NULL, &c), SN_OK,
                      "%s was accepted", cases[i].config);
        cr_assert_null(c);
        cr_assert(strstr(sn_errmsg(), cases[i].expect), "%s: message does not say '%s': %s",
                  cases[i].config, cases[i].expect, sn_errmsg());
        cr_log_info("%s -> %s", cases[i].config, sn_errmsg());
    }
    sn_codec *c = open_with("{\"width\": 1, \"height\": 1024, \"background\": [255, 255, 255]}");
    cr_assert_eq(sn_codec_vocab_size(c), 512);
    sn_codec_close(c);
}

Test(image_palette, non_images_and_malformed_images_are_refused)
{
    float samples[4] = {0.1f, -0.2f, 0.3f, -0.4f};
    sn_media m = {.kind = SN_MEDIA_AUDIO};
    m.audio.samples = samples;
    m.audio.n_samples = 4;
    m.audio.sample_rate = 16000;
    sn_tokens t = {0};
    cr_assert_neq(sn_codec_encode(codec, &m, &t), SN_OK);
    cr_assert(strstr(sn_errmsg(), "audio"), "message does not name the kind: %s", sn_errmsg());

    uint8_t px[6 * 4 * 5] = {0};
    sn_media bad = image_media(px, 6, 4, 5);
    cr_assert_neq(sn_codec_encode(codec, &bad, &t), SN_OK);
    cr_assert(strstr(sn_errmsg(), "channels"), "%s", sn_errmsg());
    bad = image_media(px, 0, 4, 3);
    cr_assert_neq(sn_codec_encode(codec, &bad, &t), SN_OK);
    cr_assert(strstr(sn_errmsg(), "0x4"), "%s", sn_errmsg());
    bad = image_media(px, 6, 4, 3);
    bad.image.stride = 10;
    cr_assert_neq(sn_codec_encode(codec, &bad, &t), SN_OK);
    cr_assert(strstr(sn_errmsg(), "bytes"), "%s", sn_errmsg());
    cr_assert_eq(t.n, 0);

    /* After the failures the stream works. */
    sn_media good = image_media(px, 6, 4, 3);
    encode(codec, &good, &t);
    cr_assert_eq(t.n, 32 * 32);
    sn_tokens_clear(&t);
}

/* ---------------------------------------------------------------------------------------- */
/* Resize                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Fixed-point weights that sum to exactly one keep a constant exactly, at any size, up or
 * down, in any channel layout. */
Test(image_palette, resize_keeps_a_constant_colour_exactly)
{
    uint64_t seed = 11;
    for (int trial = 0; trial < 300; trial++) {
        uint32_t sw = 1 + rng_below(&seed, 70), sh = 1 + rng_below(&seed, 70);
        uint32_t dw = 1 + rng_below(&seed, 90), dh = 1 + rng_below(&seed, 90);
        uint32_t ch = 1 + rng_below(&seed, 4);
        uint8_t col[4] = {(uint8_t)rng_below(&seed, 256), (uint8_t)rng_below(&seed, 256),
                          (uint8_t)rng_below(&seed, 256), 255};
        if (ch <= 2)
            col[1] = 255; /* gray+alpha: the alpha sits in the second byte */
        uint8_t *px = malloc((size_t)sw * sh * ch);
        cr_assert_not_null(px);
        for (size_t i = 0; i < (size_t)sw * sh; i++)
            memcpy(px + i * ch, col, ch);
        sn_media m = image_media(px, sw, sh, ch);
        static const uint8_t bg[3] = {1, 2, 3};
        float *out = ref_resize(&m.image, dw, dh, bg);
        for (size_t i = 0; i < (size_t)dw * dh; i++)
            for (int c = 0; c < 3; c++) {
                float want = ch <= 2 ? col[0] : col[c];
                cr_assert_eq(out[3 * i + c], want,
                             "trial %d: %ux%u (%u ch) -> %ux%u: pixel %zu channel %d is %.6f, not %.0f",
                             trial, sw, sh, ch, dw, dh, i, c, (double)out[3 * i + c], (double)want);
            }
        free(out);

        /* And through the plugin: every cell gets the colour's id. */
        char config[64];
        snprintf(config, sizeof config, "{\"width\": %u, \"height\": %u}", dw, dh);
        sn_codec *c = open_with(config);
        sn_tokens t = {0};
        encode(c, &m, &t);
        cr_assert_eq(t.n, (size_t)dw * dh);
        int32_t want = ch <= 2 ? pal_id(col[0], col[0], col[0]) : pal_id(col[0], col[1], col[2]);
        for (size_t i = 0; i < t.n; i++)
            cr_assert_eq(t.ids[i], want, "trial %d: id %zu is %d, not %d", trial, i, t.ids[i], want);
        sn_tokens_clear(&t);
        sn_codec_close(c);
        free(px);
    }
}

/* A one-pixel checkerboard halved: each output pixel covers two black and two white pixels,
 * so area averaging gives exactly the mean 127.5 everywhere (nearest-neighbour would give 0
 * or 255). Odd factors are checked with fractional coverage below. */
Test(image_palette, resize_averages_areas)
{
    enum { N = 64 };
    uint8_t px[N * N];
    for (int y = 0; y < N; y++)
        for (int x = 0; x < N; x++)
            px[y * N + x] = (uint8_t)((x + y) % 2 ? 255 : 0);
    sn_media m = image_media(px, N, N, 1);
    static const uint8_t bg[3] = {0, 0, 0};
    float *out = ref_resize(&m.image, N / 2, N / 2, bg);
    for (size_t i = 0; i < (size_t)N / 2 * N / 2 * 3; i++)
        cr_assert_eq(out[i], 127.5f, "value %zu is %.6f, not the mean grey 127.5", i, (double)out[i]);
    free(out);

    sn_codec *c = open_with("{\"width\": 32, \"height\": 32}");
    sn_tokens t = {0};
    encode(c, &m, &t);
    cr_assert_eq(t.n, 32 * 32);
    for (size_t i = 0; i < t.n; i++)
        cr_assert_eq(t.ids[i], pal_id(127, 127, 127), "id %zu is %d", i, t.ids[i]);
    sn_tokens_clear(&t);
    sn_codec_close(c);

    /* 3 -> 2 pixels: output 0 covers pixel 0 and half of pixel 1, output 1 the other half
     * and pixel 2: (0 + 90/2) / 1.5 = 30 and (90/2 + 180) / 1.5 = 150. The weights are
     * rounded to 2^-20, so allow 1e-3. */
    uint8_t row[3] = {0, 90, 180};
    m = image_media(row, 3, 1, 1);
    out = ref_resize(&m.image, 2, 1, bg);
    cr_assert_float_eq(out[0], 30.0f, 1e-3, "%.6f", (double)out[0]);
    cr_assert_float_eq(out[3], 150.0f, 1e-3, "%.6f", (double)out[3]);
    free(out);

    /* Upsampling is bilinear with centres aligned: 2 -> 4 samples the source at -0.25
     * (clamped to 0), 0.25, 0.75 and 1.25 (clamped to 1). */
    uint8_t two[2] = {0, 100};
    m = image_media(two, 2, 1, 1);
    out = ref_resize(&m.image, 4, 1, bg);
    static const float want[4] = {0.0f, 25.0f, 75.0f, 100.0f};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(out[3 * i], want[i], "upsampled %d is %.6f, not %.1f", i,
                     (double)out[3 * i], (double)want[i]);
    free(out);
}

/* ---------------------------------------------------------------------------------------- */
/* Encoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Left half red, right half blue, on a 4x2 grid: red red blue blue, twice. Then top green,
 * bottom red on a 2x4 grid: rows come first. */
Test(image_palette, tokens_are_row_major_from_the_top_left)
{
    enum { W = 64, H = 32 };
    uint8_t px[W * H * 3];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = px + (y * W + x) * 3;
            p[0] = x < W / 2 ? 255 : 0;
            p[1] = 0;
            p[2] = x < W / 2 ? 0 : 255;
        }
    sn_codec *c = open_with("{\"width\": 4, \"height\": 2}");
    sn_media m = image_media(px, W, H, 3);
    m.t = 2.5;
    sn_tokens t = {0};
    encode(c, &m, &t);
    const int32_t R = pal_id(255, 0, 0), B = pal_id(0, 0, 255), G = pal_id(0, 255, 0);
    const int32_t want[8] = {R, R, B, B, R, R, B, B};
    cr_assert_eq(t.n, 8);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(t.ids[i], want[i], "id %d is %d, not %d", i, t.ids[i], want[i]);
    sn_tokens_clear(&t);
    sn_codec_close(c);

    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = px + (y * W + x) * 3;
            p[0] = y < H / 2 ? 0 : 255;
            p[1] = y < H / 2 ? 255 : 0;
            p[2] = 0;
        }
    c = open_with("{\"width\": 2, \"height\": 4}");
    encode(c, &m, &t);
    const int32_t want2[8] = {G, G, G, G, R, R, R, R};
    cr_assert_eq(t.n, 8);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(t.ids[i], want2[i], "id %d is %d, not %d", i, t.ids[i], want2[i]);
    sn_tokens_clear(&t);
    sn_codec_close(c);
}

/* Every palette colour, one per pixel of a 32x16 image encoded at its own size (no
 * resampling): id i comes out for colour i, bins are [32q, 32q+32), and decoding gives the
 * bin centres 32q+16. */
Test(image_palette, every_colour_maps_to_its_id_and_back)
{
    enum { W = 32, H = 16 };
    uint8_t px[W * H * 3];
    uint64_t seed = 5;
    for (int i = 0; i < W * H; i++) {
        int q[3] = {i >> 6 & 7, i >> 3 & 7, i & 7};
        for (int c = 0; c < 3; c++) /* anywhere in the bin, the edges included */
            px[i * 3 + c] = (uint8_t)(32 * q[c] + (i % 3 == 0 ? 0 : i % 3 == 1 ? 31 : (int)rng_below(&seed, 32)));
    }
    sn_codec *c = open_with("{\"width\": 32, \"height\": 16}");
    sn_media m = image_media(px, W, H, 3);
    sn_tokens t = {0};
    encode(c, &m, &t);
    cr_assert_eq(t.n, 512);
    for (int i = 0; i < 512; i++)
        cr_assert_eq(t.ids[i], i, "pixel %d (%u, %u, %u) got id %d", i, px[3 * i], px[3 * i + 1],
                     px[3 * i + 2], t.ids[i]);
    images_out o = {0};
    cr_assert_eq(sn_codec_decode(c, t.ids, t.n, 4.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 1);
    cr_assert_eq(o.bad, 0);
    cr_assert_eq(o.w, W);
    cr_assert_eq(o.h, H);
    cr_assert_eq(o.last_t, 4.0);
    for (int i = 0; i < 512; i++) {
        const uint8_t want[3] = {(uint8_t)((i >> 6 & 7) * 32 + 16), (uint8_t)((i >> 3 & 7) * 32 + 16),
                                 (uint8_t)((i & 7) * 32 + 16)};
        cr_assert_eq(memcmp(o.pixels + 3 * i, want, 3), 0, "id %d decoded to (%u, %u, %u)", i,
                     o.pixels[3 * i], o.pixels[3 * i + 1], o.pixels[3 * i + 2]);
    }
    out_reset(&o);
    sn_tokens_clear(&t);
    sn_codec_close(c);
}

/* Gray is replicated; alpha is composited over 'background' (default black). */
Test(image_palette, gray_and_alpha)
{
    uint8_t ga[4 * 2] = {200, 255, 200, 0, 200, 128, 100, 255}; /* gray+alpha, 4x1 */
    uint8_t rgba[2 * 4] = {250, 10, 100, 0, 250, 10, 100, 255};  /* RGBA, 2x1 */
    uint8_t gray[3] = {0, 130, 255};
    sn_tokens t = {0};

    sn_codec *c = open_with("{\"width\": 4, \"height\": 1}");
    sn_media m = image_media(ga, 4, 1, 2);
    encode(c, &m, &t);
    /* 200*128/255 = 100.4 over black */
    int32_t want_black[4] = {pal_id(200, 200, 200), 0, pal_id(100, 100, 100), pal_id(100, 100, 100)};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(t.ids[i], want_black[i], "gray+alpha %d: id %d, not %d", i, t.ids[i], want_black[i]);
    sn_tokens_clear(&t);
    sn_codec_close(c);

    c = open_with("{\"width\": 4, \"height\": 1, \"background\": [255, 0, 64]}");
    encode(c, &m, &t);
    /* half of 200 plus half of the background: (227.5, 100.4, 132) */
    int32_t want_bg[4] = {pal_id(200, 200, 200), pal_id(255, 0, 64), pal_id(227, 100, 132),
                          pal_id(100, 100, 100)};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(t.ids[i], want_bg[i], "gray+alpha over a background %d: id %d, not %d", i,
                     t.ids[i], want_bg[i]);
    sn_tokens_clear(&t);
    sn_codec_close(c);

    c = open_with("{\"width\": 2, \"height\": 1, \"background\": [0, 255, 0]}");
    m = image_media(rgba, 2, 1, 4);
    encode(c, &m, &t);
    cr_assert_eq(t.ids[0], pal_id(0, 255, 0));
    cr_assert_eq(t.ids[1], pal_id(250, 10, 100));
    sn_tokens_clear(&t);
    sn_codec_close(c);

    c = open_with("{\"width\": 3, \"height\": 1}");
    m = image_media(gray, 3, 1, 1);
    encode(c, &m, &t);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(t.ids[i], pal_id(gray[i], gray[i], gray[i]));
    sn_tokens_clear(&t);
    sn_codec_close(c);
}

/* Rows with padding between them, and images of changing sizes on one stream, give the ids
 * a fresh stream gives a packed copy. */
Test(image_palette, strides_and_changing_sizes)
{
    uint64_t seed = 99;
    sn_codec *shared = open_with("{\"width\": 13, \"height\": 7}");
    for (int trial = 0; trial < 40; trial++) {
        uint32_t w = 1 + rng_below(&seed, 60), h = 1 + rng_below(&seed, 60);
        uint32_t ch = 1 + rng_below(&seed, 4), pad = rng_below(&seed, 5);
        size_t stride = (size_t)w * ch + pad;
        uint8_t *padded = malloc(stride * h), *packed = malloc((size_t)w * ch * h);
        cr_assert(padded && packed);
        for (size_t i = 0; i < stride * h; i++)
            padded[i] = (uint8_t)rng_next(&seed);
        for (uint32_t y = 0; y < h; y++)
            memcpy(packed + (size_t)y * w * ch, padded + y * stride, (size_t)w * ch);
        sn_media a = image_media(padded, w, h, ch);
        a.image.stride = stride;
        sn_media b = image_media(packed, w, h, ch);
        sn_tokens ta = {0}, tb = {0};
        encode(shared, &a, &ta);
        sn_codec *fresh = open_with("{\"width\": 13, \"height\": 7}");
        encode(fresh, &b, &tb);
        sn_codec_close(fresh);
        cr_assert_eq(ta.n, 13 * 7);
        cr_assert_eq(tb.n, ta.n);
        cr_assert_eq(memcmp(ta.ids, tb.ids, ta.n * sizeof *ta.ids), 0, "trial %d (%ux%u, %u ch, pad %u)",
                     trial, w, h, ch, pad);
        sn_tokens_clear(&ta);
        sn_tokens_clear(&tb);
        free(padded);
        free(packed);
    }
    sn_codec_close(shared);
}

/* ---------------------------------------------------------------------------------------- */
/* Real photos                                                                              */
/* ---------------------------------------------------------------------------------------- */

/*
 * The round trip against the photo resized by the same resize, so that the number measures
 * the quantiser alone. Each channel is cut into bins of 32 and decoded to the bin's centre
 * 32q+16, so the error is at most 16 (asserted exactly) and, for values spread evenly over
 * a bin, uniform over [-16, 16): MSE = 32^2/12 = 85.3, PSNR = 10 log10(255^2 / 85.3) = 28.8
 * dB. Photos are not exactly uniform within bins (smooth regions sit anywhere in theirs), so
 * the assertion leaves 1.8 dB: >= 27 dB. The hard floor (every error 16) would be 24.1 dB.
 */
static void photo_psnr(const char *file, uint32_t w, uint32_t h)
{
    sn_media m;
    cr_assert_eq(sn_media_read(file, &m), SN_OK, "%s", sn_errmsg());
    char config[64];
    snprintf(config, sizeof config, "{\"width\": %u, \"height\": %u}", w, h);
    sn_codec *c = open_with(config);
    sn_tokens t = {0};
    encode(c, &m, &t);
    cr_assert_eq(t.n, (size_t)w * h);
    images_out o = {0};
    cr_assert_eq(sn_codec_decode(c, t.ids, t.n, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 1);
    cr_assert_eq(o.w, w);
    cr_assert_eq(o.h, h);
    static const uint8_t black[3] = {0, 0, 0};
    float *ref = ref_resize(&m.image, w, h, black);
    double se = 0.0, worst = 0.0;
    for (size_t i = 0; i < (size_t)w * h * 3; i++) {
        double d = (double)o.pixels[i] - ref[i];
        se += d * d;
        if (fabs(d) > worst)
            worst = fabs(d);
    }
    double mse = se / ((double)w * h * 3), psnr = 10.0 * log10(255.0 * 255.0 / mse);
    fprintf(stderr, "image.palette %s (%ux%u, %u ch) at %ux%u: PSNR %.2f dB (bound >= 27.0, uniform-error estimate 28.8), max error %.2f (bound 16)\n",
            strrchr(file, '/') + 1, m.image.width, m.image.height, m.image.channels, w, h, psnr,
            worst);
    cr_assert_leq(worst, 16.0, "%s: an error of %.3f exceeds half a bin", file, worst);
    cr_assert_geq(psnr, 27.0, "%s at %ux%u: PSNR %.2f dB", file, w, h, psnr);
    free(ref);
    out_reset(&o);
    sn_tokens_clear(&t);
    sn_codec_close(c);
    sn_media_release(&m);
}

Test(image_palette, photos_round_trip_within_the_quantiser_bound)
{
    photo_psnr(PHOTOS "astronaut.png", 32, 32);
    photo_psnr(PHOTOS "astronaut.png", 128, 96);
    photo_psnr(PHOTOS "coffee.png", 32, 32);
    photo_psnr(PHOTOS "coffee.png", 64, 48);
    photo_psnr(PHOTOS "camera.png", 32, 32);
    photo_psnr(PHOTOS "camera.png", 512, 512);
}

/* The astronaut with an alpha ramp from transparent (left) to opaque (right): its ids are
 * those of the photo composited over the background and then resized, and the more
 * transparent cells change with the background. */
Test(image_palette, rgba_photo_takes_the_background)
{
    sn_media photo;
    cr_assert_eq(sn_media_read(PHOTOS "astronaut.png", &photo), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(photo.image.channels, 3);
    uint32_t w = photo.image.width, h = photo.image.height;
    uint8_t *rgba = malloc((size_t)w * h * 4);
    cr_assert_not_null(rgba);
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < w; x++) {
            memcpy(rgba + ((size_t)y * w + x) * 4, photo.image.pixels + y * photo.image.stride + 3 * x, 3);
            rgba[((size_t)y * w + x) * 4 + 3] = (uint8_t)(x * 255 / (w - 1));
        }
    sn_media m = image_media(rgba, w, h, 4);
    static const uint8_t bgs[2][3] = {{0, 0, 0}, {255, 255, 255}};
    sn_tokens t[2] = {{0}, {0}};
    for (int k = 0; k < 2; k++) {
        sn_codec *c = open_with(k ? "{\"background\": [255, 255, 255]}" : "{}");
        encode(c, &m, &t[k]);
        sn_codec_close(c);
        cr_assert_eq(t[k].n, 32 * 32);
        float *ref = ref_resize(&m.image, 32, 32, bgs[k]);
        for (size_t i = 0; i < t[k].n; i++) {
            const float *p = ref + 3 * i;
            cr_assert_eq(t[k].ids[i], pal_id((int)p[0], (int)p[1], (int)p[2]),
                         "background %d: cell %zu", k, i);
        }
        free(ref);
    }
    /* The leftmost column is nearly transparent: black over black, white over white. */
    cr_assert_eq(t[0].ids[0], pal_id(0, 0, 0));
    cr_assert_eq(t[1].ids[0], pal_id(255, 255, 255));
    size_t differ = 0;
    for (size_t i = 0; i < t[0].n; i++)
        differ += t[0].ids[i] != t[1].ids[i];
    cr_log_info("astronaut with an alpha ramp: %zu of %zu cells depend on the background",
                differ, t[0].n);
    cr_assert_gt(differ, t[0].n / 2);
    cr_assert_lt(differ, t[0].n);
    sn_tokens_clear(&t[0]);
    sn_tokens_clear(&t[1]);
    free(rgba);
    sn_media_release(&photo);
}

/* ---------------------------------------------------------------------------------------- */
/* Decoding and constrain                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Ids in any split: every W*H make one image at the t of the call that completed it. */
Test(image_palette, decode_makes_one_image_per_grid_in_any_split)
{
    sn_codec *c = open_with("{\"width\": 5, \"height\": 3}");
    int32_t ids[40];
    uint64_t seed = 3;
    for (int i = 0; i < 40; i++)
        ids[i] = (int32_t)rng_below(&seed, 512);
    for (size_t split = 0; split <= 30; split++) {
        images_out o = {0};
        cr_assert_eq(sn_codec_decode(c, ids, split, 1.0, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(sn_codec_decode(c, ids + split, 30 - split, 2.0, collect, &o), SN_OK, "%s",
                     sn_errmsg());
        cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.n, 2);
        cr_assert_eq(o.w, 5);
        cr_assert_eq(o.h, 3);
        cr_assert_eq(o.last_t, split == 30 ? 1.0 : 2.0);
        for (int i = 0; i < 30; i++) {
            const uint8_t *p = o.pixels + 3 * i;
            cr_assert_eq(pal_id(p[0], p[1], p[2]), ids[i], "split %zu: pixel %d", split, i);
        }
        out_reset(&o);
    }
    sn_codec_close(c);
}

Test(image_palette, a_partial_image_at_the_end_of_a_segment_is_an_error)
{
    int32_t ids[1024 + 700];
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++)
        ids[i] = (int32_t)(i % 512);
    images_out o = {0};
    cr_assert_eq(sn_codec_decode(codec, ids, 1024 + 700, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 1);
    cr_assert_neq(sn_codec_decode_flush(codec, collect, &o), SN_OK);
    cr_assert(strstr(sn_errmsg(), "700 of 1024"), "%s", sn_errmsg());
    cr_log_info("%s", sn_errmsg());
    cr_assert_eq(o.n, 1, "the partial image was emitted");
    /* The decoder starts afresh: a whole image follows. */
    cr_assert_eq(sn_codec_decode(codec, ids, 1024, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode_flush(codec, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 2);
    out_reset(&o);
}

static int bit(const uint64_t *allowed, unsigned i)
{
    return (int)(allowed[i / 64] >> (i % 64) & 1);
}

Test(image_palette, constrain_allows_exactly_one_image_per_segment)
{
    sn_codec *c = open_with("{\"width\": 4, \"height\": 3}");
    int32_t seg[30] = {0};
    for (size_t n = 0; n <= 30; n++) {
        uint64_t allowed[8];
        int may_end = -1;
        cr_assert_eq(sn_codec_constrain(c, seg, n, allowed, &may_end), SN_OK, "%s", sn_errmsg());
        int full = n > 0 && n % 12 == 0;
        cr_assert_eq(may_end, full, "n %zu: may_end %d", n, may_end);
        for (unsigned i = 0; i < 512; i++)
            cr_assert_eq(bit(allowed, i), !full, "n %zu: id %u", n, i);
    }
    /* constrain leaves the decoder alone */
    images_out o = {0};
    cr_assert_eq(sn_codec_decode(c, seg, 5, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    uint64_t allowed[8];
    int may_end;
    cr_assert_eq(sn_codec_constrain(c, seg, 12, allowed, &may_end), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode(c, seg, 7, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.n, 1);
    cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
    out_reset(&o);
    sn_codec_close(c);
}

/* A sampler following constrain, drawing random ids, produces whole images only. */
Test(image_palette, generation_that_follows_constrain_gives_whole_images)
{
    sn_codec *c = open_with("{\"width\": 6, \"height\": 5}");
    uint64_t seed = 42;
    images_out o = {0};
    int32_t seg[64];
    for (int s = 0; s < 5; s++) {
        size_t n = 0;
        for (;;) {
            uint64_t allowed[8];
            int may_end;
            cr_assert_eq(sn_codec_constrain(c, seg, n, allowed, &may_end), SN_OK, "%s", sn_errmsg());
            if (may_end)
                break;
            int32_t id;
            do
                id = (int32_t)rng_below(&seed, 512);
            while (!bit(allowed, (unsigned)id));
            seg[n++] = id;
            cr_assert_eq(sn_codec_decode(c, &seg[n - 1], 1, (double)s, collect, &o), SN_OK, "%s",
                         sn_errmsg());
        }
        cr_assert_eq(n, 30);
        cr_assert_eq(sn_codec_decode_flush(c, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.n, (size_t)s + 1);
    }
    out_reset(&o);
    sn_codec_close(c);
}
