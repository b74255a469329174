/*
 * test_media.c - the media files stage: sn_media_read / sn_media_write and the token NPY
 * helpers, through the public API only. Round trips for every format the engine writes, files
 * made by other tools (libsndfile, low-level libpng, hand-built PPM and NPY), and the damaged
 * files users actually hand us: empty, truncated, corrupted, lying headers. Each bad file must
 * give the right status, a message that starts with the file's path, and no crash or leak.
 *
 * Every test writes its fixtures into its own fresh mkdtemp folder, removed afterwards.
 */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <png.h>
#include <sndfile.h>

#include "sensorium/sensorium.h"

/* ---------------------------------------------------------------------------------------- */
/* Fixture and helpers                                                                      */
/* ---------------------------------------------------------------------------------------- */

static char tmpdir[64];

static void setup(void)
{
    strcpy(tmpdir, "/tmp/sn_test_media_XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp failed");
}

static void teardown(void)
{
    DIR *d = opendir(tmpdir);
    if (!d)
        return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

TestSuite(media, .init = setup, .fini = teardown);

/* A path in the test's folder; a few rotate so that two can be held at once. */
static const char *fx(const char *name)
{
    static char bufs[4][512];
    static int next;
    char *b = bufs[next++ % 4];
    snprintf(b, 512, "%s/%s", tmpdir, name);
    return b;
}

static void put_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot create %s", path);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

static uint8_t *get_bytes(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)len + 1);
    cr_assert_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void chop(const char *path, size_t keep) { cr_assert_eq(truncate(path, (off_t)keep), 0); }

/* Seeded xorshift: fresh data each test, reproducible each run. */
static uint32_t rng_state = 0x9e3779b9u;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}
static float rnd_unit(void) { return (float)((double)rnd() / 4294967295.0 * 2.0 - 1.0); }

/* The message names the file, starting with its path, and says what is wrong. */
static void expect_msg(const char *path, const char *needle)
{
    const char *msg = sn_errmsg();
    cr_assert(strncmp(msg, path, strlen(path)) == 0, "message '%s' does not start with %s",
              msg, path);
    if (needle)
        cr_assert_not_null(strstr(msg, needle), "message '%s' lacks '%s'", msg, needle);
}

static void expect_read_fails(const char *path, sn_status want, const char *needle)
{
    sn_media m;
    memset(&m, 0xab, sizeof m);
    sn_status st = sn_media_read(path, &m);
    cr_assert_eq(st, want, "%s: got '%s' (%s), want '%s'", path, sn_status_str(st),
                 sn_errmsg(), sn_status_str(want));
    expect_msg(path, needle);
    sn_media zero;
    memset(&zero, 0, sizeof zero);
    cr_assert(memcmp(&m, &zero, sizeof m) == 0, "media not zeroed after a failed read");
}

static sn_media read_ok(const char *path, sn_media_kind kind)
{
    sn_media m;
    sn_status st = sn_media_read(path, &m);
    cr_assert_eq(st, SN_OK, "%s: %s", path, sn_errmsg());
    cr_assert_eq(m.kind, kind, "%s read as %s, want %s", path, sn_media_kind_name(m.kind),
                 sn_media_kind_name(kind));
    cr_assert_eq(m.t, 0.0);
    return m;
}

/* An NPY file with the given version and header dict (padded like numpy does). */
static void put_npy(const char *path, int major, const char *dict, const void *data,
                    size_t n)
{
    size_t pre = major == 1 ? 10 : 12, dlen = strlen(dict);
    size_t total = (pre + dlen + 1 + 63) / 64 * 64, hlen = total - pre;
    uint8_t *b = malloc(total + n + 1);
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (uint8_t)major;
    b[7] = 0;
    for (size_t k = 0; k < pre - 8; k++)
        b[8 + k] = (uint8_t)(hlen >> (8 * k));
    memcpy(b + pre, dict, dlen);
    memset(b + pre + dlen, ' ', total - pre - dlen - 1);
    b[total - 1] = '\n';
    if (n)
        memcpy(b + total, data, n);
    put_bytes(path, b, total + n);
    free(b);
}

static sn_media audio_media(const float *s, size_t n, uint32_t rate)
{
    sn_media m = {.kind = SN_MEDIA_AUDIO};
    m.audio.samples = s;
    m.audio.n_samples = n;
    m.audio.sample_rate = rate;
    return m;
}

static sn_media image_media(const uint8_t *px, uint32_t w, uint32_t h, uint32_t ch,
                            size_t stride)
{
    sn_media m = {.kind = SN_MEDIA_IMAGE};
    m.image.pixels = px;
    m.image.width = w;
    m.image.height = h;
    m.image.channels = ch;
    m.image.stride = stride;
    return m;
}

/* Writes a good 1000-sample mono WAV (16 kHz) and returns its name. */
static const char *good_wav(const char *name, size_t n)
{
    float *s = malloc(n * sizeof *s);
    for (size_t i = 0; i < n; i++)
        s[i] = 0.5f * rnd_unit();
    sn_media m = audio_media(s, n, 16000);
    const char *p = fx(name);
    cr_assert_eq(sn_media_write(p, &m), SN_OK, "%s", sn_errmsg());
    free(s);
    return p;
}

static size_t find4(const uint8_t *b, size_t n, const char *tag)
{
    for (size_t i = 0; i + 4 <= n; i++)
        if (memcmp(b + i, tag, 4) == 0)
            return i;
    cr_assert_fail("no '%s' in the file", tag);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Audio                                                                                    */
/* ---------------------------------------------------------------------------------------- */

Test(media, wav_round_trip_within_16_bit_quantisation)
{
    const size_t n = 1001;
    float s[1001];
    for (size_t i = 0; i < n; i++)
        s[i] = 0.999f * rnd_unit();
    sn_media m = audio_media(s, n, 22050);
    const char *p = fx("tone.WAV"); /* the extension is case-insensitive */
    cr_assert_eq(sn_media_write(p, &m), SN_OK, "%s", sn_errmsg());
    sn_media r = read_ok(p, SN_MEDIA_AUDIO);
    cr_assert_eq(r.audio.n_samples, n);
    cr_assert_eq(r.audio.sample_rate, 22050);
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)r.audio.samples[i] - s[i]));
    cr_assert(worst <= 1.0 / 32768 + 1e-6, "worst error %g", worst);
    sn_media_release(&r);
    cr_assert_null(r.audio.samples);
    cr_assert_eq(r.kind, 0);
}

Test(media, wav_write_clips_to_full_scale)
{
    float s[4] = {1.5f, -2.0f, 1.0f, -1.0f};
    sn_media m = audio_media(s, 4, 8000);
    const char *p = fx("loud.wav");
    cr_assert_eq(sn_media_write(p, &m), SN_OK, "%s", sn_errmsg());
    sn_media r = read_ok(p, SN_MEDIA_AUDIO);
    cr_assert(r.audio.samples[0] > 0.999f && r.audio.samples[0] <= 1.0f);
    cr_assert(r.audio.samples[1] == -1.0f);
    sn_media_release(&r);
}

Test(media, wav_write_refuses_nan)
{
    float s[3] = {0.1f, NAN, 0.2f};
    sn_media m = audio_media(s, 3, 8000);
    const char *p = fx("nan.wav");
    cr_assert_eq(sn_media_write(p, &m), SN_ERR_INVALID_ARG);
    expect_msg(p, "sample 1");
}

static void write_sndfile(const char *path, int format, int channels, const float *frames,
                          sf_count_t n)
{
    SF_INFO info = {.samplerate = 44100, .channels = channels, .format = format};
    SNDFILE *sf = sf_open(path, SFM_WRITE, &info);
    cr_assert_not_null(sf, "%s", sf_strerror(NULL));
    /* Clipping mode also scales by 32768, the factor reading uses, as sn_media_write does. */
    sf_command(sf, SFC_SET_CLIPPING, NULL, SF_TRUE);
    cr_assert_eq(sf_writef_float(sf, frames, n), n);
    cr_assert_eq(sf_close(sf), 0);
}

Test(media, stereo_wav_mixes_down_to_the_mean)
{
    enum { N = 777 };
    float lr[2 * N];
    for (int i = 0; i < 2 * N; i++)
        lr[i] = 0.9f * rnd_unit();
    const char *p = fx("stereo.wav");
    write_sndfile(p, SF_FORMAT_WAV | SF_FORMAT_FLOAT, 2, lr, N);
    sn_media r = read_ok(p, SN_MEDIA_AUDIO);
    cr_assert_eq(r.audio.n_samples, N);
    cr_assert_eq(r.audio.sample_rate, 44100);
    for (int i = 0; i < N; i++) {
        double want = ((double)lr[2 * i] + lr[2 * i + 1]) / 2;
        cr_assert(fabs(r.audio.samples[i] - want) <= 1e-6, "frame %d: %g vs %g", i,
                  r.audio.samples[i], want);
    }
    sn_media_release(&r);
}

Test(media, audio_is_detected_by_content_not_name)
{
    SF_INFO probe = {.samplerate = 44100, .channels = 1,
                     .format = SF_FORMAT_FLAC | SF_FORMAT_PCM_16};
    if (!sf_format_check(&probe))
        cr_skip_test("this libsndfile has no FLAC support");
    enum { N = 500 };
    float s[N];
    for (int i = 0; i < N; i++)
        s[i] = 0.8f * rnd_unit();
    const char *p = fx("recording.bin");
    write_sndfile(p, SF_FORMAT_FLAC | SF_FORMAT_PCM_16, 1, s, N);
    sn_media r = read_ok(p, SN_MEDIA_AUDIO);
    cr_assert_eq(r.audio.n_samples, N);
    for (int i = 0; i < N; i++)
        cr_assert(fabs(r.audio.samples[i] - s[i]) <= 1.0 / 32768 + 1e-6);
    sn_media_release(&r);

    /* A WAV named .txt is still audio. */
    const char *w = good_wav("clip.wav", 100);
    const char *t = fx("clip.txt");
    cr_assert_eq(rename(w, t), 0);
    r = read_ok(t, SN_MEDIA_AUDIO);
    cr_assert_eq(r.audio.n_samples, 100);
    sn_media_release(&r);
}

Test(media, zero_frame_wav_is_a_format_error)
{
    sn_media m = audio_media(NULL, 0, 16000);
    const char *p = fx("silence.wav");
    cr_assert_eq(sn_media_write(p, &m), SN_OK, "%s", sn_errmsg());
    expect_read_fails(p, SN_ERR_FORMAT, "no audio frames");
}

Test(media, truncated_wav_is_a_format_error)
{
    const char *p = good_wav("cut.wav", 1000); /* 44-byte header + 2000 bytes */
    chop(p, 1200);
    expect_read_fails(p, SN_ERR_FORMAT, "truncated WAV");
    expect_read_fails(p, SN_ERR_FORMAT, "declares 2000 bytes but only");
    /* Cut inside the header too. */
    chop(p, 30);
    expect_read_fails(p, SN_ERR_FORMAT, NULL);
    chop(p, 10);
    expect_read_fails(p, SN_ERR_FORMAT, "truncated");
}

Test(media, streamed_wav_with_unknown_length_is_accepted)
{
    const char *p = good_wav("stream.wav", 1000);
    size_t n;
    uint8_t *b = get_bytes(p, &n);
    size_t d = find4(b, n, "data");
    memset(b + d + 4, 0xff, 4); /* data size 0xFFFFFFFF: "still recording" */
    memset(b + 4, 0xff, 4);
    put_bytes(p, b, n);
    free(b);
    sn_media r = read_ok(p, SN_MEDIA_AUDIO);
    cr_assert_eq(r.audio.n_samples, 1000);
    sn_media_release(&r);
}

Test(media, non_finite_audio_names_the_frame)
{
    float s[10] = {0};
    s[7] = INFINITY;
    const char *p = fx("inf.wav");
    write_sndfile(p, SF_FORMAT_WAV | SF_FORMAT_FLOAT, 1, s, 10);
    expect_read_fails(p, SN_ERR_FORMAT, "frame 7");
}

/* ---------------------------------------------------------------------------------------- */
/* Images                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Writes with a padded stride (garbage in the padding) and checks the exact pixels back. */
static void png_round_trip(uint32_t ch)
{
    const uint32_t w = 7, h = 5;
    const size_t stride = w * ch + 3;
    uint8_t px[5 * (7 * 4 + 3)];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)rnd();
    if (ch == 2 || ch == 4) /* fully transparent pixels keep their colour too */
        px[ch - 1] = 0;
    sn_media m = image_media(px, w, h, ch, stride);
    char name[32];
    snprintf(name, sizeof name, "img%u.png", ch);
    const char *p = fx(name);
    cr_assert_eq(sn_media_write(p, &m), SN_OK, "%s", sn_errmsg());
    sn_media r = read_ok(p, SN_MEDIA_IMAGE);
    cr_assert_eq(r.image.width, w);
    cr_assert_eq(r.image.height, h);
    cr_assert_eq(r.image.channels, ch);
    cr_assert_eq(r.image.stride, w * ch);
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < w * ch; x++)
            cr_assert_eq(r.image.pixels[y * r.image.stride + x], px[y * stride + x],
                         "channels %u: row %u byte %u", ch, y, x);
    sn_media_release(&r);
}

Test(media, png_gray_round_trip) { png_round_trip(1); }
Test(media, png_gray_alpha_round_trip) { png_round_trip(2); }
Test(media, png_rgb_round_trip) { png_round_trip(3); }
Test(media, png_rgba_round_trip) { png_round_trip(4); }

/* A PNG made with libpng's low-level API: 16-bit and palette files, which the simplified
 * writer does not produce as-is. rows holds (h, rowbytes) in PNG byte order. */
static int lowlevel_png(const char *path, uint32_t w, uint32_t h, int depth, int color,
                        const uint8_t *rows, size_t rowbytes, const png_color *pal, int npal,
                        const uint8_t *trans, int ntrans)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        return 0;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, w, h, depth, color, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (pal)
        png_set_PLTE(png, info, pal, npal);
    if (trans)
        png_set_tRNS(png, info, trans, ntrans, NULL);
    png_write_info(png, info);
    for (uint32_t y = 0; y < h; y++)
        png_write_row(png, rows + y * rowbytes);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return fclose(f) == 0;
}

Test(media, png_16_bit_is_reduced_to_8_bit_values)
{
    enum { W = 6, H = 3 };
    uint8_t rows[H * W * 2], want[H * W];
    for (int i = 0; i < W * H; i++) {
        want[i] = (uint8_t)rnd();
        uint16_t v = (uint16_t)(want[i] * 257); /* exactly representable both ways */
        rows[2 * i] = (uint8_t)(v >> 8);
        rows[2 * i + 1] = (uint8_t)v;
    }
    const char *p = fx("deep.png");
    cr_assert(lowlevel_png(p, W, H, 16, PNG_COLOR_TYPE_GRAY, rows, W * 2, NULL, 0, NULL, 0));
    sn_media r = read_ok(p, SN_MEDIA_IMAGE);
    cr_assert_eq(r.image.channels, 1);
    for (int i = 0; i < W * H; i++)
        cr_assert_eq(r.image.pixels[i], want[i], "pixel %d", i);
    sn_media_release(&r);
}

Test(media, palette_png_becomes_rgb_or_rgba)
{
    const png_color pal[3] = {{255, 0, 0}, {0, 128, 0}, {10, 20, 30}};
    const uint8_t idx[2 * 3] = {0, 1, 2, 2, 1, 0};
    const char *p = fx("pal.png");
    cr_assert(lowlevel_png(p, 3, 2, 8, PNG_COLOR_TYPE_PALETTE, idx, 3, pal, 3, NULL, 0));
    sn_media r = read_ok(p, SN_MEDIA_IMAGE);
    cr_assert_eq(r.image.channels, 3);
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(r.image.pixels[3 * i], pal[idx[i]].red);
        cr_assert_eq(r.image.pixels[3 * i + 1], pal[idx[i]].green);
        cr_assert_eq(r.image.pixels[3 * i + 2], pal[idx[i]].blue);
    }
    sn_media_release(&r);

    const uint8_t trans[3] = {255, 0, 255}; /* entry 1 transparent */
    p = fx("pal_alpha.png");
    cr_assert(lowlevel_png(p, 3, 2, 8, PNG_COLOR_TYPE_PALETTE, idx, 3, pal, 3, trans, 3));
    r = read_ok(p, SN_MEDIA_IMAGE);
    cr_assert_eq(r.image.channels, 4);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(r.image.pixels[4 * i + 3], trans[idx[i]], "alpha of pixel %d", i);
    cr_assert_eq(r.image.pixels[4 * 0], 255);
    sn_media_release(&r);
}

/* A noisy RGB PNG (noise does not compress, so IDAT is big) and its bytes. */
static uint8_t *noisy_png(const char *p, size_t *n)
{
    static uint8_t px[32 * 32 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)rnd();
    sn_media m = image_media(px, 32, 32, 3, 32 * 3);
    cr_assert_eq(sn_media_write(p, &m), SN_OK, "%s", sn_errmsg());
    return get_bytes(p, n);
}

Test(media, png_with_bad_crc_is_a_format_error)
{
    size_t n;
    const char *p = fx("crc_ihdr.png");
    uint8_t *b = noisy_png(p, &n);
    b[8 + 8 + 3] ^= 0x01; /* signature, IHDR length+type, then the width's low byte */
    put_bytes(p, b, n);
    expect_read_fails(p, SN_ERR_FORMAT, "CRC");
    free(b);

    p = fx("crc_idat.png");
    b = noisy_png(p, &n);
    size_t d = find4(b, n, "IDAT");
    size_t len = (size_t)b[d - 4] << 24 | (size_t)b[d - 3] << 16 | (size_t)b[d - 2] << 8 |
                 b[d - 1];
    b[d + 4 + len] ^= 0x01; /* the chunk's stored CRC */
    put_bytes(p, b, n);
    expect_read_fails(p, SN_ERR_FORMAT, "CRC");
    free(b);

    /* Damage inside the compressed pixels: zlib's own check may notice before the chunk
     * CRC does, so only the status and the file name are certain. */
    p = fx("damaged_idat.png");
    b = noisy_png(p, &n);
    d = find4(b, n, "IDAT");
    b[d + 4 + 100] ^= 0x40;
    put_bytes(p, b, n);
    expect_read_fails(p, SN_ERR_FORMAT, "PNG");
    free(b);
}

Test(media, truncated_png_is_a_format_error)
{
    size_t n;
    const char *p = fx("half.png");
    uint8_t *b = noisy_png(p, &n);
    free(b);
    chop(p, n / 2);
    expect_read_fails(p, SN_ERR_FORMAT, NULL);
    chop(p, 20); /* inside IHDR */
    expect_read_fails(p, SN_ERR_FORMAT, NULL);
}

Test(media, ppm_p6_binary)
{
    enum { W = 5, H = 3 };
    uint8_t px[W * H * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)rnd();
    const char *hdr = "P6\n# written by test_media\n5 3\n# maxval next\n255\n";
    uint8_t file[256];
    size_t hl = strlen(hdr);
    memcpy(file, hdr, hl);
    memcpy(file + hl, px, sizeof px);
    const char *p = fx("pic.ppm");
    put_bytes(p, file, hl + sizeof px);
    sn_media r = read_ok(p, SN_MEDIA_IMAGE);
    cr_assert_eq(r.image.width, W);
    cr_assert_eq(r.image.height, H);
    cr_assert_eq(r.image.channels, 3);
    cr_assert_eq(r.image.stride, W * 3);
    cr_assert_arr_eq(r.image.pixels, px, sizeof px);
    sn_media_release(&r);
}

Test(media, ppm_p3_ascii_with_comments)
{
    const char *txt = "P3 # a 2x2 ascii pixmap\n2 2\n255\n"
                      "255 0 0   0 255 0\n# second row\n0 0 255  17 34 51\n";
    const uint8_t want[12] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 17, 34, 51};
    const char *p = fx("ascii.txt"); /* the name says text; the content says PPM */
    put_bytes(p, txt, strlen(txt));
    sn_media r = read_ok(p, SN_MEDIA_IMAGE);
    cr_assert_eq(r.image.channels, 3);
    cr_assert_arr_eq(r.image.pixels, want, 12);
    sn_media_release(&r);

    /* P2 with maxval 15 scales by 17 exactly. */
    const char *pgm = "P2\n3 1\n15\n0 7 15\n";
    p = fx("small.pgm");
    put_bytes(p, pgm, strlen(pgm));
    r = read_ok(p, SN_MEDIA_IMAGE);
    cr_assert_eq(r.image.channels, 1);
    cr_assert_eq(r.image.pixels[0], 0);
    cr_assert_eq(r.image.pixels[1], 119);
    cr_assert_eq(r.image.pixels[2], 255);
    sn_media_release(&r);
}

Test(media, pgm_p5_16_bit_big_endian_scaled_with_rounding)
{
    enum { W = 4, H = 3 };
    const char *hdr = "P5 4 3 65535\n";
    uint8_t file[64];
    size_t hl = strlen(hdr);
    memcpy(file, hdr, hl);
    uint16_t v[W * H];
    for (int i = 0; i < W * H; i++) {
        v[i] = (uint16_t)rnd();
        file[hl + 2 * i] = (uint8_t)(v[i] >> 8);
        file[hl + 2 * i + 1] = (uint8_t)v[i];
    }
    v[0] = 65535;
    file[hl] = file[hl + 1] = 0xff;
    v[1] = 128; /* 128 * 255 / 65535 = 0.498: rounds to 0 */
    file[hl + 2] = 0;
    file[hl + 3] = 128;
    const char *p = fx("deep.pgm");
    put_bytes(p, file, hl + 2 * W * H);
    sn_media r = read_ok(p, SN_MEDIA_IMAGE);
    cr_assert_eq(r.image.channels, 1);
    for (int i = 0; i < W * H; i++) {
        long want = lround(v[i] * 255.0 / 65535.0);
        cr_assert_eq(r.image.pixels[i], want, "pixel %d: %u -> %u, want %ld", i, v[i],
                     r.image.pixels[i], want);
    }
    sn_media_release(&r);
}

Test(media, bad_ppm_files)
{
    const char *p = fx("cut.ppm");
    uint8_t file[64] = "P6\n10 10\n255\n";
    put_bytes(p, file, 13 + 50); /* 300 bytes of pixels announced */
    expect_read_fails(p, SN_ERR_FORMAT, "truncated PPM");

    const char *ascii = "P2\n3 2\n255\n1 2 3\n4 5\n";
    p = fx("cut.pgm");
    put_bytes(p, ascii, strlen(ascii));
    expect_read_fails(p, SN_ERR_FORMAT, "truncated PGM");

    const char *over = "P2\n2 1\n100\n50 150\n";
    p = fx("over.pgm");
    put_bytes(p, over, strlen(over));
    expect_read_fails(p, SN_ERR_FORMAT, "above the maxval");

    const char *bad = "P6\n4 x 255\n";
    p = fx("bad.ppm");
    put_bytes(p, bad, strlen(bad));
    expect_read_fails(p, SN_ERR_FORMAT, "height");

    const char *maxval0 = "P5 1 1 0\n\x00";
    p = fx("zero.pgm");
    put_bytes(p, maxval0, 10);
    expect_read_fails(p, SN_ERR_FORMAT, "maxval");

    const char *pbm = "P4\n8 1\n\xff";
    p = fx("bits.pbm");
    put_bytes(p, pbm, strlen(pbm));
    expect_read_fails(p, SN_ERR_UNSUPPORTED, "P4");
}

/* ---------------------------------------------------------------------------------------- */
/* Series (NPY)                                                                             */
/* ---------------------------------------------------------------------------------------- */

Test(media, npy_f4_2d)
{
    enum { T = 7, D = 3 };
    float v[T * D];
    for (int i = 0; i < T * D; i++)
        v[i] = 100.0f * rnd_unit();
    const char *p = fx("s.npy");
    put_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (7, 3), }", v, sizeof v);
    sn_media r = read_ok(p, SN_MEDIA_SERIES);
    cr_assert_eq(r.series.n_ticks, T);
    cr_assert_eq(r.series.dims, D);
    cr_assert_eq(r.series.rate_hz, 0.0);
    cr_assert_arr_eq(r.series.values, v, sizeof v);
    sn_media_release(&r);
}

Test(media, npy_f8_1d_and_version_2_header)
{
    double v[11];
    for (int i = 0; i < 11; i++)
        v[i] = 1e3 * rnd_unit();
    v[3] = NAN; /* non-finite values are data in a series */
    const char *p = fx("d.npy");
    put_npy(p, 2, "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (11,)}", v,
            sizeof v);
    sn_media r = read_ok(p, SN_MEDIA_SERIES);
    cr_assert_eq(r.series.n_ticks, 11);
    cr_assert_eq(r.series.dims, 1);
    for (int i = 0; i < 11; i++)
        if (i == 3)
            cr_assert(isnan(r.series.values[i]));
        else
            cr_assert_eq(r.series.values[i], (float)v[i]);
    sn_media_release(&r);
}

Test(media, npy_f2_half_floats)
{
    const uint16_t h[8] = {0x3c00, 0xc000, 0x0001, 0x0400, 0x7bff, 0x7c00, 0x8000, 0x3555};
    const float want[8] = {1.0f, -2.0f, 0x1p-24f, 0x1p-14f, 65504.0f, INFINITY, -0.0f,
                           0.333251953125f};
    const char *p = fx("h.npy");
    put_npy(p, 3, "{'descr': '<f2', 'fortran_order': False, 'shape': (8,), }", h, sizeof h);
    sn_media r = read_ok(p, SN_MEDIA_SERIES);
    cr_assert_eq(r.series.n_ticks, 8);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(r.series.values[i], want[i], "half %04x: %a", h[i], r.series.values[i]);
    cr_assert(signbit(r.series.values[6]));
    sn_media_release(&r);

    const uint16_t nan = 0x7e00;
    p = fx("hnan.npy");
    put_npy(p, 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (1,), }", &nan, 2);
    r = read_ok(p, SN_MEDIA_SERIES);
    cr_assert(isnan(r.series.values[0]));
    sn_media_release(&r);
}

Test(media, npy_integer_and_bool_dtypes)
{
    const int64_t v[6] = {-5, 0, 7, INT64_C(1) << 40, -1, 123456789};
    const char *p = fx("i8.npy");
    put_npy(p, 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (3, 2), }", v, sizeof v);
    sn_media r = read_ok(p, SN_MEDIA_SERIES);
    cr_assert_eq(r.series.n_ticks, 3);
    cr_assert_eq(r.series.dims, 2);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(r.series.values[i], (float)v[i]);
    sn_media_release(&r);

    const uint8_t b[4] = {1, 0, 0, 1};
    p = fx("b.npy");
    put_npy(p, 1, "{'descr': '|b1', 'fortran_order': False, 'shape': (4,), }", b, 4);
    r = read_ok(p, SN_MEDIA_SERIES);
    cr_assert_eq(r.series.values[0], 1.0f);
    cr_assert_eq(r.series.values[1], 0.0f);
    sn_media_release(&r);

    const uint8_t be[4] = {0xff, 0xfe, 0x01, 0x00}; /* big-endian int16: -2, 256 */
    p = fx("be.npy");
    put_npy(p, 1, "{'descr': '>i2', 'fortran_order': False, 'shape': (2,), }", be, 4);
    r = read_ok(p, SN_MEDIA_SERIES);
    cr_assert_eq(r.series.values[0], -2.0f);
    cr_assert_eq(r.series.values[1], 256.0f);
    sn_media_release(&r);
}

Test(media, npy_fortran_order_is_transposed)
{
    enum { T = 3, D = 4 };
    float col[T * D]; /* column-major: (t, d) at d*T + t */
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++)
            col[d * T + t] = (float)(10 * t + d);
    const char *p = fx("f.npy");
    put_npy(p, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4), }", col,
            sizeof col);
    sn_media r = read_ok(p, SN_MEDIA_SERIES);
    cr_assert_eq(r.series.n_ticks, T);
    cr_assert_eq(r.series.dims, D);
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++)
            cr_assert_eq(r.series.values[t * D + d], (float)(10 * t + d));
    sn_media_release(&r);
}

Test(media, npy_write_round_trip_and_layout)
{
    enum { T = 5, D = 3 };
    float v[T * D];
    for (int i = 0; i < T * D; i++)
        v[i] = rnd_unit();
    v[4] = INFINITY;
    sn_media m = {.kind = SN_MEDIA_SERIES};
    m.series.values = v;
    m.series.n_ticks = T;
    m.series.dims = D;
    const char *p = fx("out.NPY");
    cr_assert_eq(sn_media_write(p, &m), SN_OK, "%s", sn_errmsg());
    size_t n;
    uint8_t *b = get_bytes(p, &n);
    cr_assert(memcmp(b, "\x93NUMPY\x01\x00", 8) == 0);
    size_t hlen = (size_t)b[8] | (size_t)b[9] << 8;
    cr_assert_eq((10 + hlen) % 64, 0, "data starts at %zu", 10 + hlen);
    cr_assert_eq(b[10 + hlen - 1], '\n');
    cr_assert_eq(n - 10 - hlen, sizeof v);
    cr_assert_not_null(strstr((const char *)b + 10, "'shape': (5, 3)"));
    free(b);
    sn_media r = read_ok(p, SN_MEDIA_SERIES);
    cr_assert_eq(r.series.n_ticks, T);
    cr_assert_eq(r.series.dims, D);
    cr_assert_arr_eq(r.series.values, v, sizeof v);
    sn_media_release(&r);
}

Test(media, npy_header_that_lies_about_its_size)
{
    float v[100];
    for (int i = 0; i < 100; i++)
        v[i] = (float)i;
    const char *p = fx("liar.npy");
    put_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (100, 3), }", v, 400);
    expect_read_fails(p, SN_ERR_FORMAT, "shape (100, 3) of float32 = 1200 bytes of data, but "
                                        "the file holds 400 after the header");
    /* Too much data is as wrong as too little. */
    put_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (10,), }", v, 400);
    expect_read_fails(p, SN_ERR_FORMAT, "40 bytes");
}

Test(media, npy_absurd_shape_does_not_overflow)
{
    const float v[16] = {0};
    const char *p = fx("huge.npy");
    put_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }",
            v, sizeof v);
    expect_read_fails(p, SN_ERR_FORMAT, "2^64");
    /* 2^62 elements fit in 64 bits; times 4 bytes they do not. */
    put_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2305843009213693952, 2), }",
            v, sizeof v);
    expect_read_fails(p, SN_ERR_FORMAT, "2^64");
    /* Products that wrap to exactly the data size must not pass. */
    put_npy(p, 1, "{'descr': '|u1', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
            v, 0);
    expect_read_fails(p, SN_ERR_FORMAT, "2^64");
    put_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999, 1), }",
            v, sizeof v);
    expect_read_fails(p, SN_ERR_FORMAT, "64 bits");
}

Test(media, npy_bad_header_dicts)
{
    static const char *dicts[] = {
        "{'descr': '<f4', 'fortran_order': False, }",                    /* no shape */
        "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (4,), }",     /* bad bool */
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': 1}",
        "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (4,)}",
        "{'descr': '<f4, 'fortran_order': False, 'shape': (4,), }",      /* broken quotes */
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4, -1), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,) }junk",
        "['descr', '<f4']",
        "{'descr': '<f4' 'fortran_order': False, 'shape': (4,)}",        /* no comma */
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,",
        "",
    };
    const float v[4] = {1, 2, 3, 4};
    for (size_t i = 0; i < sizeof dicts / sizeof *dicts; i++) {
        char name[32];
        snprintf(name, sizeof name, "bad%zu.npy", i);
        const char *p = fx(name);
        put_npy(p, 1, dicts[i], v, sizeof v);
        expect_read_fails(p, SN_ERR_FORMAT, NULL);
    }
    /* A header length past the end of the file. */
    const uint8_t cut[] = "\x93NUMPY\x01\x00\xff\x00{'descr'";
    const char *p = fx("cut.npy");
    put_bytes(p, cut, sizeof cut - 1);
    expect_read_fails(p, SN_ERR_FORMAT, "truncated NPY");
}

Test(media, npy_unsupported_arrays)
{
    const float v[8] = {0};
    const char *p = fx("cube.npy");
    put_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }", v, 32);
    expect_read_fails(p, SN_ERR_UNSUPPORTED, "dimensions");
    p = fx("complex.npy");
    put_npy(p, 1, "{'descr': '<c8', 'fortran_order': False, 'shape': (4,), }", v, 32);
    expect_read_fails(p, SN_ERR_UNSUPPORTED, "'<c8'");
    p = fx("scalar.npy");
    put_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", v, 4);
    expect_read_fails(p, SN_ERR_FORMAT, "scalar");
    p = fx("empty.npy");
    put_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }", v, 0);
    expect_read_fails(p, SN_ERR_FORMAT, "empty");
}

/* ---------------------------------------------------------------------------------------- */
/* Token ids                                                                                */
/* ---------------------------------------------------------------------------------------- */

Test(media, tokens_round_trip)
{
    enum { N = 1000 };
    int32_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = (int32_t)rnd();
    ids[0] = INT32_MIN;
    ids[1] = INT32_MAX;
    const char *p = fx("ids.npy");
    cr_assert_eq(sn_tokens_write_npy(p, ids, N), SN_OK, "%s", sn_errmsg());
    int32_t *got = NULL;
    size_t n = 0;
    cr_assert_eq(sn_tokens_read_npy(p, &got, &n), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(n, N);
    cr_assert_arr_eq(got, ids, sizeof ids);
    sn_free(got);

    /* No tokens at all is a valid (empty) result. */
    cr_assert_eq(sn_tokens_write_npy(p, NULL, 0), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_tokens_read_npy(p, &got, &n), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(n, 0);
    sn_free(got);
}

Test(media, tokens_from_other_integer_dtypes)
{
    /* (2, 3) int64 in Fortran order: C order is 0 1 2 / 10 11 12. */
    const int64_t f[6] = {0, 10, 1, 11, 2, 12};
    const int32_t want[6] = {0, 1, 2, 10, 11, 12};
    const char *p = fx("f.npy");
    put_npy(p, 1, "{'descr': '<i8', 'fortran_order': True, 'shape': (2, 3), }", f, sizeof f);
    int32_t *got;
    size_t n;
    cr_assert_eq(sn_tokens_read_npy(p, &got, &n), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(n, 6);
    cr_assert_arr_eq(got, want, sizeof want);
    sn_free(got);

    const uint16_t u[3] = {65535, 0, 7};
    p = fx("u2.npy");
    put_npy(p, 1, "{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }", u, sizeof u);
    cr_assert_eq(sn_tokens_read_npy(p, &got, &n), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(n, 3);
    cr_assert_eq(got[0], 65535);
    sn_free(got);
}

Test(media, tokens_outside_int32_name_the_index)
{
    const int64_t v[4] = {1, 2, INT64_C(2147483648), 3};
    const char *p = fx("big.npy");
    put_npy(p, 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }", v, sizeof v);
    int32_t *got = (int32_t *)&got;
    size_t n = 99;
    cr_assert_eq(sn_tokens_read_npy(p, &got, &n), SN_ERR_FORMAT);
    expect_msg(p, "index 2");
    cr_assert_null(got);
    cr_assert_eq(n, 0);

    const uint64_t u[2] = {0, UINT64_MAX};
    put_npy(p, 1, "{'descr': '<u8', 'fortran_order': False, 'shape': (2,), }", u, sizeof u);
    cr_assert_eq(sn_tokens_read_npy(p, &got, &n), SN_ERR_FORMAT);
    expect_msg(p, "18446744073709551615");
}

Test(media, tokens_refuse_float_arrays_and_other_files)
{
    const float v[3] = {1, 2, 3};
    const char *p = fx("floats.npy");
    put_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", v, sizeof v);
    int32_t *got;
    size_t n;
    cr_assert_eq(sn_tokens_read_npy(p, &got, &n), SN_ERR_FORMAT);
    expect_msg(p, "expected an integer array");

    p = fx("ids.txt");
    put_bytes(p, "1 2 3", 5);
    cr_assert_eq(sn_tokens_read_npy(p, &got, &n), SN_ERR_FORMAT);
    expect_msg(p, "not an NPY file");

    p = fx("missing.npy");
    cr_assert_eq(sn_tokens_read_npy(p, &got, &n), SN_ERR_IO);
    expect_msg(p, "No such file");
}

/* ---------------------------------------------------------------------------------------- */
/* Text                                                                                     */
/* ---------------------------------------------------------------------------------------- */

Test(media, multilingual_text_round_trip)
{
    const char *s = "Hello, 世界! Привет, мир. مرحبا بالعالم. नमस्ते. Ελληνικά. "
                    "emoji: 🌍🚀 👩‍💻 🏳️‍🌈, combining: e\xcc\x81, max: \xf4\x8f\xbf\xbf\n";
    sn_media m = {.kind = SN_MEDIA_TEXT};
    m.text.utf8 = s;
    m.text.len = strlen(s);
    const char *p = fx("hello.md");
    cr_assert_eq(sn_media_write(p, &m), SN_OK, "%s", sn_errmsg());
    sn_media r = read_ok(p, SN_MEDIA_TEXT);
    cr_assert_eq(r.text.len, strlen(s));
    cr_assert(memcmp(r.text.utf8, s, r.text.len) == 0);
    sn_media_release(&r);
}

Test(media, invalid_utf8_names_the_byte_offset)
{
    static const struct {
        const char *bytes;
        size_t len;
        const char *where;
    } cases[] = {
        {"abc\xc0\xaf" "def", 8, "byte offset 3"},     /* overlong '/' */
        {"ok\xe0\x80\xaf", 5, "byte offset 2"},        /* overlong, 3 bytes */
        {"ab\xed\xa0\x80", 5, "byte offset 2"},        /* surrogate U+D800 */
        {"\xf4\x90\x80\x80 x", 6, "byte offset 0"},    /* U+110000 */
        {"hello\xe2\x82", 7, "byte offset 5"},         /* cut off at the end */
        {"x\x80yz", 4, "byte offset 1"},               /* stray continuation */
        {"12345\xff", 6, "byte offset 5"},
        {"caf\xc3(", 5, "byte offset 3"},              /* lead without continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char name[32];
        snprintf(name, sizeof name, "bad%zu.txt", i);
        const char *p = fx(name);
        put_bytes(p, cases[i].bytes, cases[i].len);
        expect_read_fails(p, SN_ERR_FORMAT, cases[i].where);
    }
    sn_media m = {.kind = SN_MEDIA_TEXT};
    m.text.utf8 = "a\xed\xbf\xbf";
    m.text.len = 4;
    const char *p = fx("bad_write.txt");
    cr_assert_eq(sn_media_write(p, &m), SN_ERR_INVALID_ARG);
    expect_msg(p, "byte offset 1");
}

/* ---------------------------------------------------------------------------------------- */
/* Files that are not there, empty, or the wrong kind                                       */
/* ---------------------------------------------------------------------------------------- */

Test(media, empty_file_is_a_format_error)
{
    const char *p = fx("nothing.wav");
    put_bytes(p, "", 0);
    expect_read_fails(p, SN_ERR_FORMAT, "empty file");
}

Test(media, missing_or_unreadable_paths_are_io_errors)
{
    expect_read_fails(fx("no_such_file.png"), SN_ERR_IO, "No such file or directory");
    expect_read_fails(tmpdir, SN_ERR_IO, "Is a directory");
}

Test(media, writing_a_kind_the_extension_cannot_hold)
{
    uint8_t px[4] = {1, 2, 3, 4};
    float s[2] = {0, 0};
    sn_media img = image_media(px, 2, 2, 1, 2);
    sn_media aud = audio_media(s, 2, 8000);
    sn_media txt = {.kind = SN_MEDIA_TEXT};
    txt.text.utf8 = "hi";
    txt.text.len = 2;
    const char *p = fx("x.wav");
    cr_assert_eq(sn_media_write(p, &img), SN_ERR_UNSUPPORTED);
    expect_msg(p, ".png");
    p = fx("x.npy");
    cr_assert_eq(sn_media_write(p, &aud), SN_ERR_UNSUPPORTED);
    expect_msg(p, ".wav");
    p = fx("x.png");
    cr_assert_eq(sn_media_write(p, &txt), SN_ERR_UNSUPPORTED);
    p = fx("x.txt");
    cr_assert_eq(sn_media_write(p, &aud), SN_ERR_UNSUPPORTED);
    cr_assert_eq(access(fx("x.wav"), F_OK), -1, "nothing is written on refusal");
}

Test(media, write_failures_are_io_errors)
{
    uint8_t px[4] = {1, 2, 3, 4};
    float s[2] = {0, 0};
    int32_t ids[2] = {1, 2};
    sn_media img = image_media(px, 2, 2, 1, 2);
    sn_media aud = audio_media(s, 2, 8000);
    sn_media txt = {.kind = SN_MEDIA_TEXT};
    txt.text.utf8 = "hi";
    txt.text.len = 2;
    sn_media ser = {.kind = SN_MEDIA_SERIES};
    ser.series.values = s;
    ser.series.n_ticks = 2;
    ser.series.dims = 1;
    const char *p = fx("no_dir/a.wav");
    cr_assert_eq(sn_media_write(p, &aud), SN_ERR_IO);
    expect_msg(p, "No such file or directory");
    p = fx("no_dir/a.png");
    cr_assert_eq(sn_media_write(p, &img), SN_ERR_IO);
    expect_msg(p, "No such file or directory");
    p = fx("no_dir/a.npy");
    cr_assert_eq(sn_media_write(p, &ser), SN_ERR_IO);
    expect_msg(p, "No such file or directory");
    p = fx("no_dir/a.txt");
    cr_assert_eq(sn_media_write(p, &txt), SN_ERR_IO);
    expect_msg(p, "No such file or directory");
    p = fx("no_dir/ids.npy");
    cr_assert_eq(sn_tokens_write_npy(p, ids, 2), SN_ERR_IO);
    expect_msg(p, "No such file or directory");
}

Test(media, release_and_kind_names)
{
    sn_media_release(NULL);
    sn_media z;
    memset(&z, 0, sizeof z);
    sn_media_release(&z);
    cr_assert_str_eq(sn_media_kind_name(SN_MEDIA_TEXT), "text");
    cr_assert_str_eq(sn_media_kind_name(SN_MEDIA_AUDIO), "audio");
    cr_assert_str_eq(sn_media_kind_name(SN_MEDIA_IMAGE), "image");
    cr_assert_str_eq(sn_media_kind_name(SN_MEDIA_SERIES), "series");
    cr_assert_str_eq(sn_media_kind_name((sn_media_kind)0), "unknown");
    cr_assert_str_eq(sn_media_kind_name((sn_media_kind)99), "unknown");
}
