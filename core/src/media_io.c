/*
 * media_io.c - the first and last stage of the pipeline: files on disk become the typed
 * sn_media views a tokenizer reads, and media (or token ids) a run produces become files.
 *
 * The reader is chosen by the file's content, never its name: audio goes through libsndfile,
 * PNG through libpng's simplified API, and PPM/PGM, NPY and UTF-8 text are parsed here. Each
 * reader fills one malloc'ed buffer that the sn_media owns until sn_media_release. Anything a
 * file can get wrong is a status whose message starts with the path and says what is wrong.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <png.h>
#include <sndfile.h>

#include "internal.h"

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* *r = a * b; 0 when the product does not fit (sizes come from untrusted headers). */
static int mul_size(size_t a, size_t b, size_t *r)
{
    if (a && b > SIZE_MAX / a)
        return 0;
    *r = a * b;
    return 1;
}

static int is_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

/* Describes the byte at b[i] (or the end of the data) for "found ..." in messages. */
static const char *describe_byte(const uint8_t *b, size_t n, size_t i, char buf[32])
{
    if (i >= n)
        snprintf(buf, 32, "the end of the data");
    else if (b[i] >= 0x21 && b[i] < 0x7f)
        snprintf(buf, 32, "'%c'", b[i]);
    else
        snprintf(buf, 32, "byte 0x%02x", b[i]);
    return buf;
}

/* Reads the rest of an open file into a malloc'ed buffer the caller frees. Grows as it goes
 * rather than trusting the size fstat reports, so pipes and growing files work too. */
static sn_status read_all(const char *path, FILE *f, uint8_t **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    size_t cap = 1 << 16, n = 0;
    struct stat st;
    /* +1 so a regular file's end is seen without a second allocation. */
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
        (uintmax_t)st.st_size < SIZE_MAX / 2)
        cap = (size_t)st.st_size + 1;
    uint8_t *b = malloc(cap);
    if (!b)
        return sn_fail(SN_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, cap);
    for (;;) {
        if (n == cap) {
            if (cap > SIZE_MAX / 2) {
                free(b);
                return sn_fail(SN_ERR_NOMEM, "%s: file too large to read into memory", path);
            }
            uint8_t *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                return sn_fail(SN_ERR_NOMEM, "%s: out of memory reading %zu bytes", path,
                               cap * 2);
            }
            b = nb;
            cap *= 2;
        }
        errno = 0;
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (got == 0 || n < cap) {
            if (ferror(f)) {
                int e = errno ? errno : EIO;
                free(b);
                return sn_fail(SN_ERR_IO, "%s: cannot read: %s", path, strerror(e));
            }
            if (feof(f))
                break;
        }
    }
    *buf = b;
    *len = n;
    return SN_OK;
}

/* Opens and reads a whole file; an empty one is a format error (no reader accepts it). */
static sn_status read_file(const char *path, uint8_t **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return sn_fail(SN_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    sn_status st = read_all(path, f, buf, len);
    fclose(f);
    if (st == SN_OK && *len == 0) {
        free(*buf);
        *buf = NULL;
        return sn_fail(SN_ERR_FORMAT, "%s: empty file", path);
    }
    return st;
}

/* Writing: a FILE with a sticky error, so a sequence of writes is checked once at the end. */
typedef struct file_out {
    FILE *f;
    const char *path;
    int err; /* errno of the first failure; 0 while all is well */
} file_out;

static sn_status out_open(file_out *o, const char *path)
{
    o->path = path;
    o->err = 0;
    o->f = fopen(path, "wb");
    if (!o->f)
        return sn_fail(SN_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    return SN_OK;
}

static void out_write(file_out *o, const void *p, size_t n)
{
    if (o->err || n == 0)
        return;
    errno = 0;
    if (fwrite(p, 1, n, o->f) != n)
        o->err = errno ? errno : EIO;
}

/* Closes, and on any failure removes the partial file: half a file must not pass for one. */
static sn_status out_close(file_out *o)
{
    errno = 0;
    if (fclose(o->f) != 0 && !o->err)
        o->err = errno ? errno : EIO;
    o->f = NULL;
    if (!o->err)
        return SN_OK;
    remove(o->path);
    return sn_fail(SN_ERR_IO, "%s: write failed: %s", o->path, strerror(o->err));
}

/* ---------------------------------------------------------------------------------------- */
/* UTF-8                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* The offset of the first byte that does not start a well-formed UTF-8 character (with
 * *why saying what is wrong there), or n when all is valid. Overlong forms, surrogates and
 * code points past U+10FFFF are refused: other tools would reject or misread them. */
static size_t utf8_check(const uint8_t *s, size_t n, const char **why)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c < 0xc0) {
            *why = "a continuation byte with no lead byte before it";
            return i;
        } else if (c < 0xc2) {
            *why = "an overlong encoding";
            return i;
        } else if (c < 0xe0) {
            need = 1;
        } else if (c < 0xf0) {
            need = 2;
            if (c == 0xe0)
                lo = 0xa0;
            else if (c == 0xed)
                hi = 0x9f;
        } else if (c < 0xf5) {
            need = 3;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;
        } else {
            *why = c < 0xf8 ? "a code point above U+10FFFF" : "a byte that never occurs in UTF-8";
            return i;
        }
        if (n - i - 1 < need) {
            /* A character cut off by the end of the file, unless what is there is wrong. */
            for (size_t k = 1; i + k < n; k++)
                if ((s[i + k] & 0xc0) != 0x80) {
                    *why = "a lead byte not followed by its continuation bytes";
                    return i;
                }
            *why = "a character cut off by the end of the file";
            return i;
        }
        uint8_t b = s[i + 1];
        if (b < lo || b > hi) {
            if ((b & 0xc0) != 0x80)
                *why = "a lead byte not followed by its continuation bytes";
            else if (c == 0xed)
                *why = "a UTF-16 surrogate (U+D800..U+DFFF)";
            else if (c == 0xf4)
                *why = "a code point above U+10FFFF";
            else
                *why = "an overlong encoding";
            return i;
        }
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80) {
                *why = "a lead byte not followed by its continuation bytes";
                return i;
            }
        i += need + 1;
    }
    return n;
}

/* ---------------------------------------------------------------------------------------- */
/* Audio (libsndfile)                                                                       */
/* ---------------------------------------------------------------------------------------- */

static void fourcc_name(const uint8_t *id, char buf[24])
{
    int printable = 1;
    for (int k = 0; k < 4; k++)
        if (id[k] < 0x20 || id[k] >= 0x7f || id[k] == '\'')
            printable = 0;
    if (printable)
        snprintf(buf, 24, "'%c%c%c%c'", id[0], id[1], id[2], id[3]);
    else
        snprintf(buf, 24, "0x%02x%02x%02x%02x", id[0], id[1], id[2], id[3]);
}

/*
 * libsndfile accepts a data chunk that claims more bytes than the file holds and quietly
 * reads what is there, so a half-copied recording would pass for a shorter one. Walk the
 * RIFF chunks up to `data` and refuse a chunk that runs past the end of the file. A data size
 * of 0 or 0xFFFFFFFF is how streaming writers say "unknown length": accepted.
 */
static sn_status check_wav_chunks(const char *path, FILE *f, int big_endian)
{
    struct stat st;
    if (fstat(fileno(f), &st) != 0)
        return sn_fail(SN_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return SN_OK; /* a pipe cannot be walked; libsndfile reads what arrives */
    uint64_t size = (uint64_t)st.st_size, pos = 12;
    for (;;) {
        if (size - pos < 8) {
            if (size == pos)
                return sn_fail(SN_ERR_FORMAT,
                               "%s: WAV file has no data chunk (truncated, or a header only?)",
                               path);
            return sn_fail(SN_ERR_FORMAT,
                           "%s: truncated WAV: the file ends inside a chunk header at byte "
                           "%llu (incomplete download or copy?)",
                           path, (unsigned long long)pos);
        }
        uint8_t h[8];
        errno = 0;
        if (fseeko(f, (off_t)pos, SEEK_SET) != 0 || fread(h, 1, 8, f) != 8)
            return sn_fail(SN_ERR_IO, "%s: cannot read the WAV chunk at byte %llu: %s", path,
                           (unsigned long long)pos, strerror(errno ? errno : EIO));
        uint32_t csize = big_endian ? (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 |
                                          (uint32_t)h[6] << 8 | h[7]
                                    : (uint32_t)h[7] << 24 | (uint32_t)h[6] << 16 |
                                          (uint32_t)h[5] << 8 | h[4];
        int is_data = memcmp(h, "data", 4) == 0;
        uint64_t remain = size - pos - 8;
        if (is_data && (csize == 0 || csize == 0xffffffffu))
            return SN_OK;
        if (csize > remain) {
            char name[24];
            if (is_data)
                snprintf(name, sizeof name, "data");
            else
                fourcc_name(h, name);
            return sn_fail(SN_ERR_FORMAT,
                           "%s: truncated WAV: the %s chunk declares %lu bytes but only %llu "
                           "follow (incomplete download or copy?)",
                           path, name, (unsigned long)csize, (unsigned long long)remain);
        }
        if (is_data)
            return SN_OK;
        /* Chunks are padded to an even size; a missing final pad byte is harmless. */
        pos += 8 + (uint64_t)csize + (csize & 1);
        if (pos > size)
            pos = size;
    }
}

/* Mixes an open file down to mono and closes it. Samples are clamped to [-1, 1]: the media
 * contract promises plugins that range, and only float files can exceed it. */
static sn_status audio_from_sndfile(const char *path, SNDFILE *sf, const SF_INFO *info,
                                    sn_media *out)
{
    sn_status st = SN_OK;
    float *mono = NULL, *block = NULL; /* mono: (frames); block: (block_frames, channels) */
    const sf_count_t block_frames = 4096;
    sf_count_t frames = info->frames;
    if (frames <= 0) {
        st = sn_fail(SN_ERR_FORMAT, "%s: no audio frames (the file holds a header only)", path);
        goto done;
    }
    if (info->channels <= 0 || info->samplerate <= 0) {
        st = sn_fail(SN_ERR_FORMAT, "%s: bad audio header: %d channels at %d Hz", path,
                     info->channels, info->samplerate);
        goto done;
    }
    if ((uint64_t)frames > SIZE_MAX / sizeof(float)) {
        st = sn_fail(SN_ERR_NOMEM, "%s: %lld audio frames do not fit in memory", path,
                     (long long)frames);
        goto done;
    }
    size_t ch = (size_t)info->channels;
    mono = malloc((size_t)frames * sizeof *mono);
    block = malloc((size_t)block_frames * ch * sizeof *block);
    if (!mono || !block) {
        st = sn_fail(SN_ERR_NOMEM, "%s: out of memory for %lld audio frames", path,
                     (long long)frames);
        goto done;
    }
    sf_count_t done_frames = 0;
    while (done_frames < frames) {
        sf_count_t want = frames - done_frames < block_frames ? frames - done_frames
                                                              : block_frames;
        sf_count_t got = sf_readf_float(sf, block, want);
        if (got != want) {
            const char *why = sf_error(sf) != SF_ERR_NO_ERROR ? sf_strerror(sf)
                                                              : "truncated file?";
            st = sn_fail(SN_ERR_FORMAT,
                         "%s: audio ends after %lld of the %lld frames its header announces "
                         "(%s)",
                         path, (long long)(done_frames + (got > 0 ? got : 0)),
                         (long long)frames, why);
            goto done;
        }
        for (sf_count_t i = 0; i < got; i++) {
            double sum = 0;
            for (size_t c = 0; c < ch; c++)
                sum += block[(size_t)i * ch + c];
            double m = sum / (double)ch;
            if (!isfinite(m)) {
                st = sn_fail(SN_ERR_FORMAT,
                             "%s: the sample at frame %lld is not a finite number (NaN or "
                             "infinity); the recording is corrupted",
                             path, (long long)(done_frames + i));
                goto done;
            }
            mono[done_frames + i] = (float)(m > 1.0 ? 1.0 : m < -1.0 ? -1.0 : m);
        }
        done_frames += got;
    }
    out->kind = SN_MEDIA_AUDIO;
    out->t = 0;
    out->audio.samples = mono;
    out->audio.n_samples = (size_t)frames;
    out->audio.sample_rate = (uint32_t)info->samplerate;
    mono = NULL;
done:
    sf_close(sf);
    free(block);
    free(mono);
    return st;
}

static sn_status read_audio(const char *path, sn_media *out)
{
    SF_INFO info;
    memset(&info, 0, sizeof info);
    SNDFILE *sf = sf_open(path, SFM_READ, &info);
    if (!sf)
        return sn_fail(SN_ERR_FORMAT, "%s: cannot decode audio: libsndfile says: %s", path,
                       sf_strerror(NULL));
    return audio_from_sndfile(path, sf, &info, out);
}

static sn_status write_wav(const char *path, const sn_media_audio *a)
{
    if (a->n_samples && !a->samples)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: audio media has %zu samples but no buffer",
                       path, a->n_samples);
    if (a->sample_rate == 0 || a->sample_rate > INT_MAX)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: sample rate %lu Hz is out of range", path,
                       (unsigned long)a->sample_rate);
    if (a->n_samples > (uint64_t)INT64_MAX)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: too many samples", path);
    /* Clipping handles loud samples; NaN has no PCM value at all. */
    for (size_t i = 0; i < a->n_samples; i++)
        if (!isfinite(a->samples[i]))
            return sn_fail(SN_ERR_INVALID_ARG,
                           "%s: sample %zu is not a finite number; cannot write it as PCM",
                           path, i);
    /* Opening the file ourselves gives a plain strerror for the common failures. */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0)
        return sn_fail(SN_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    SF_INFO info;
    memset(&info, 0, sizeof info);
    info.samplerate = (int)a->sample_rate;
    info.channels = 1;
    info.format = SF_FORMAT_WAV | SF_FORMAT_PCM_16;
    sn_status st = SN_OK;
    SNDFILE *sf = sf_open_fd(fd, SFM_WRITE, &info, SF_FALSE);
    if (!sf) {
        st = sn_fail(SN_ERR_IO, "%s: cannot write WAV: libsndfile says: %s", path,
                     sf_strerror(NULL));
    } else {
        sf_command(sf, SFC_SET_CLIPPING, NULL, SF_TRUE);
        sf_count_t n = (sf_count_t)a->n_samples;
        sf_count_t put = n ? sf_writef_float(sf, a->samples, n) : 0;
        if (put != n)
            st = sn_fail(SN_ERR_IO, "%s: writing WAV failed after %lld of %lld samples: %s",
                         path, (long long)put, (long long)n, sf_strerror(sf));
        if (sf_close(sf) != 0 && st == SN_OK)
            st = sn_fail(SN_ERR_IO, "%s: finishing the WAV header failed", path);
    }
    if (close(fd) != 0 && st == SN_OK)
        st = sn_fail(SN_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    if (st != SN_OK)
        unlink(path);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* PNG (libpng simplified API)                                                              */
/* ---------------------------------------------------------------------------------------- */

static sn_status read_png(const char *path, sn_media *out)
{
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&image, path)) {
        sn_status st = sn_fail(SN_ERR_FORMAT, "%s: not a readable PNG: %s", path,
                               image.message);
        png_image_free(&image);
        return st;
    }
    /* Keep the file's channel layout; a palette expands to RGB(A). The non-linear formats
     * leave 8-bit values as stored, and 16BIT_sRGB makes 16-bit files without gamma
     * information scale down rather than be treated as linear light and gamma-encoded. */
    png_uint_32 format = image.format & (PNG_FORMAT_FLAG_COLOR | PNG_FORMAT_FLAG_ALPHA);
    image.format = format;
    image.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
    uint32_t channels = PNG_IMAGE_SAMPLE_CHANNELS(format);
    size_t row = (size_t)image.width * channels, total;
    if (row > INT32_MAX || !mul_size(row, image.height, &total)) {
        png_image_free(&image);
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: a %lux%lu PNG is too large", path,
                       (unsigned long)image.width, (unsigned long)image.height);
    }
    uint8_t *pixels = malloc(total ? total : 1); /* (height, width*channels) */
    if (!pixels) {
        png_image_free(&image);
        return sn_fail(SN_ERR_NOMEM, "%s: out of memory for a %lux%lu image", path,
                       (unsigned long)image.width, (unsigned long)image.height);
    }
    if (!png_image_finish_read(&image, NULL, pixels, (png_int_32)row, NULL)) {
        sn_status st = sn_fail(SN_ERR_FORMAT, "%s: corrupted PNG: %s", path, image.message);
        png_image_free(&image);
        free(pixels);
        return st;
    }
    png_image_free(&image);
    out->kind = SN_MEDIA_IMAGE;
    out->t = 0;
    out->image.pixels = pixels;
    out->image.width = image.width;
    out->image.height = image.height;
    out->image.channels = channels;
    out->image.stride = row;
    return SN_OK;
}

static sn_status write_png(const char *path, const sn_media_image *im)
{
    static const png_uint_32 formats[4] = {PNG_FORMAT_GRAY, PNG_FORMAT_GA, PNG_FORMAT_RGB,
                                           PNG_FORMAT_RGBA};
    if (im->channels < 1 || im->channels > 4)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: image has %lu channels; PNG holds 1 to 4",
                       path, (unsigned long)im->channels);
    if (im->width == 0 || im->height == 0 || !im->pixels)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: image is empty (%lux%lu) or has no pixels",
                       path, (unsigned long)im->width, (unsigned long)im->height);
    size_t row = (size_t)im->width * im->channels;
    if (im->stride < row)
        return sn_fail(SN_ERR_INVALID_ARG,
                       "%s: image stride %zu is less than width*channels = %zu", path,
                       im->stride, row);
    if (im->stride > INT32_MAX)
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: image stride %zu is too large for libpng",
                       path, im->stride);
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = im->width;
    image.height = im->height;
    image.format = formats[im->channels - 1];
    sn_status st = SN_OK;
    /* libpng reports fopen/fclose failures with strerror and removes a partial file. */
    if (!png_image_write_to_file(&image, path, 0, im->pixels, (png_int_32)im->stride, NULL))
        st = sn_fail(SN_ERR_IO, "%s: cannot write PNG: %s", path, image.message);
    png_image_free(&image);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* PPM / PGM (netpbm P2, P3, P5, P6)                                                        */
/* ---------------------------------------------------------------------------------------- */

/* Skips whitespace and '#' comments (to the end of the line). */
static void pnm_skip(const uint8_t *b, size_t n, size_t *i)
{
    while (*i < n) {
        if (is_space(b[*i])) {
            (*i)++;
        } else if (b[*i] == '#') {
            while (*i < n && b[*i] != '\n' && b[*i] != '\r')
                (*i)++;
        } else {
            break;
        }
    }
}

static sn_status pnm_header_number(const char *path, const char *fmt, const uint8_t *b,
                                   size_t n, size_t *i, const char *what, uint64_t max,
                                   uint64_t *out)
{
    pnm_skip(b, n, i);
    if (*i >= n)
        return sn_fail(SN_ERR_FORMAT, "%s: truncated %s header: the file ends before the %s",
                       path, fmt, what);
    if (!is_digit(b[*i])) {
        char found[32];
        return sn_fail(SN_ERR_FORMAT,
                       "%s: bad %s header: expected the %s (a decimal number) at byte %zu, "
                       "found %s",
                       path, fmt, what, *i, describe_byte(b, n, *i, found));
    }
    uint64_t v = 0;
    for (; *i < n && is_digit(b[*i]); (*i)++)
        if (v <= max) /* stop growing once too big: no overflow on long digit runs */
            v = v * 10 + (uint64_t)(b[*i] - '0');
    if (v > max)
        return sn_fail(SN_ERR_FORMAT, "%s: bad %s header: the %s is larger than %llu", path,
                       fmt, what, (unsigned long long)max);
    *out = v;
    return SN_OK;
}

static sn_status read_pnm(const char *path, const uint8_t *b, size_t n, sn_media *out)
{
    char type = (char)b[1];
    if (type == '1' || type == '4')
        return sn_fail(SN_ERR_UNSUPPORTED,
                       "%s: PBM bitmaps (P%c) are not supported; convert to PGM (P5) or PNG",
                       path, type);
    if (type == '7')
        return sn_fail(SN_ERR_UNSUPPORTED,
                       "%s: PAM images (P7) are not supported; convert to PPM (P6) or PNG",
                       path);
    const char *fmt = type == '2' || type == '5' ? "PGM" : "PPM";
    int binary = type == '5' || type == '6';
    uint32_t ch = type == '3' || type == '6' ? 3 : 1;
    size_t i = 2;
    uint64_t w, h, maxval;
    sn_status st = pnm_header_number(path, fmt, b, n, &i, "width", INT32_MAX, &w);
    if (st == SN_OK)
        st = pnm_header_number(path, fmt, b, n, &i, "height", INT32_MAX, &h);
    if (st == SN_OK)
        st = pnm_header_number(path, fmt, b, n, &i, "maxval", 65535, &maxval);
    if (st != SN_OK)
        return st;
    if (w == 0 || h == 0)
        return sn_fail(SN_ERR_FORMAT, "%s: bad %s header: the image is %llux%llu; width and "
                       "height must be at least 1", path, fmt, (unsigned long long)w,
                       (unsigned long long)h);
    if (maxval == 0)
        return sn_fail(SN_ERR_FORMAT, "%s: bad %s header: maxval is 0; it must be 1..65535",
                       path, fmt);
    size_t row = (size_t)w * ch, samples;
    if (!mul_size(row, (size_t)h, &samples))
        return sn_fail(SN_ERR_FORMAT, "%s: %s header gives an impossible size %llux%llu",
                       path, fmt, (unsigned long long)w, (unsigned long long)h);
    const char *layout = ch == 3 ? "RGB" : "gray";
    size_t bps = maxval < 256 ? 1 : 2, need;
    /* Check that the data can be there before allocating what the header asks for. */
    if (binary) {
        if (i >= n || !is_space(b[i])) {
            char found[32];
            return sn_fail(SN_ERR_FORMAT,
                           "%s: bad %s header: expected one whitespace byte after the maxval "
                           "at byte %zu, found %s",
                           path, fmt, i, describe_byte(b, n, i, found));
        }
        i++;
        if (!mul_size(samples, bps, &need) || n - i < need)
            return sn_fail(SN_ERR_FORMAT,
                           "%s: truncated %s: the header says %llux%llu %s at %zu byte(s) per "
                           "sample = %zu bytes of pixels, but only %zu follow (incomplete "
                           "download or copy?)",
                           path, fmt, (unsigned long long)w, (unsigned long long)h, layout,
                           bps, samples * bps, n - i);
    } else if ((n - i) / 2 < samples) { /* each sample takes a digit and a separator */
        return sn_fail(SN_ERR_FORMAT,
                       "%s: truncated %s: the header says %llux%llu %s = %zu samples, but "
                       "only %zu bytes follow (incomplete download or copy?)",
                       path, fmt, (unsigned long long)w, (unsigned long long)h, layout,
                       samples, n - i);
    }
    uint8_t *pixels = malloc(samples); /* (h, w*ch) */
    if (!pixels)
        return sn_fail(SN_ERR_NOMEM, "%s: out of memory for a %llux%llu image", path,
                       (unsigned long long)w, (unsigned long long)h);
    for (size_t k = 0; k < samples; k++) {
        uint64_t v;
        if (binary) {
            v = bps == 1 ? b[i + k] : (uint64_t)b[i + 2 * k] << 8 | b[i + 2 * k + 1];
        } else {
            pnm_skip(b, n, &i);
            if (i >= n) {
                free(pixels);
                return sn_fail(SN_ERR_FORMAT,
                               "%s: truncated %s: only %zu of the %zu samples the header "
                               "announces are present (incomplete download or copy?)",
                               path, fmt, k, samples);
            }
            if (!is_digit(b[i])) {
                char found[32];
                free(pixels);
                return sn_fail(SN_ERR_FORMAT,
                               "%s: bad %s data: expected sample %zu (a decimal number) at "
                               "byte %zu, found %s",
                               path, fmt, k, i, describe_byte(b, n, i, found));
            }
            v = 0;
            for (; i < n && is_digit(b[i]); i++)
                if (v <= maxval)
                    v = v * 10 + (uint64_t)(b[i] - '0');
        }
        if (v > maxval) {
            free(pixels);
            return sn_fail(SN_ERR_FORMAT,
                           "%s: bad %s data: sample %zu (row %zu, column %zu) is above the "
                           "maxval %llu",
                           path, fmt, k, k / row, k % row / ch, (unsigned long long)maxval);
        }
        pixels[k] = (uint8_t)((v * 255 + maxval / 2) / maxval);
    }
    out->kind = SN_MEDIA_IMAGE;
    out->t = 0;
    out->image.pixels = pixels;
    out->image.width = (uint32_t)w;
    out->image.height = (uint32_t)h;
    out->image.channels = ch;
    out->image.stride = row;
    return SN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* NPY                                                                                      */
/* ---------------------------------------------------------------------------------------- */

#define NPY_MAX_DIMS 64 /* numpy's own limit */

typedef struct npy_array {
    char descr[24];       /* the dtype as the header writes it, e.g. "<f4" */
    char kind;            /* 'f' float, 'i' signed, 'u' unsigned, 'b' bool */
    unsigned itemsize;    /* 1, 2, 4 or 8 bytes */
    int big_endian;
    int fortran;          /* stored first index fastest */
    size_t ndim;
    uint64_t shape[NPY_MAX_DIMS];
    size_t count;         /* the product of shape */
    const uint8_t *data;  /* (count * itemsize) bytes inside the file's buffer */
} npy_array;

typedef struct npy_hdr {
    const char *path;
    const uint8_t *s; /* the header dict text, n bytes */
    size_t n, i;
} npy_hdr;

static void hdr_ws(npy_hdr *h)
{
    while (h->i < h->n && is_space(h->s[h->i]))
        h->i++;
}

static sn_status hdr_bad(npy_hdr *h, const char *expected)
{
    char found[32];
    return sn_fail(SN_ERR_FORMAT,
                   "%s: malformed NPY header: expected %s at character %zu of the header "
                   "dict, found %s",
                   h->path, expected, h->i, describe_byte(h->s, h->n, h->i, found));
}

static sn_status hdr_expect(npy_hdr *h, char c, const char *what)
{
    hdr_ws(h);
    if (h->i >= h->n || h->s[h->i] != (uint8_t)c)
        return hdr_bad(h, what);
    h->i++;
    return SN_OK;
}

/* A Python string literal without escapes (all the header ever holds). */
static sn_status hdr_string(npy_hdr *h, char *out, size_t cap, const char *what)
{
    hdr_ws(h);
    if (h->i >= h->n || (h->s[h->i] != '\'' && h->s[h->i] != '"'))
        return hdr_bad(h, what);
    uint8_t q = h->s[h->i++];
    size_t len = 0;
    while (h->i < h->n && h->s[h->i] != q) {
        if (h->s[h->i] == '\\' || len + 1 >= cap)
            return sn_fail(SN_ERR_FORMAT,
                           "%s: malformed NPY header: unexpected string at character %zu of "
                           "the header dict (too long or escaped)",
                           h->path, h->i);
        out[len++] = (char)h->s[h->i++];
    }
    if (h->i >= h->n)
        return hdr_bad(h, "a closing quote");
    h->i++;
    out[len] = '\0';
    return SN_OK;
}

static sn_status hdr_shape(npy_hdr *h, npy_array *a)
{
    sn_status st = hdr_expect(h, '(', "'(' starting the shape tuple");
    if (st != SN_OK)
        return st;
    a->ndim = 0;
    hdr_ws(h);
    if (h->i < h->n && h->s[h->i] == ')') {
        h->i++;
        return SN_OK;
    }
    for (;;) {
        hdr_ws(h);
        if (h->i >= h->n || !is_digit(h->s[h->i]))
            return hdr_bad(h, "a non-negative integer in the shape");
        if (a->ndim == NPY_MAX_DIMS)
            return sn_fail(SN_ERR_FORMAT, "%s: NPY shape has more than %d dimensions", h->path,
                           NPY_MAX_DIMS);
        uint64_t v = 0;
        for (; h->i < h->n && is_digit(h->s[h->i]); h->i++) {
            unsigned d = (unsigned)(h->s[h->i] - '0');
            if (v > (UINT64_MAX - d) / 10)
                return sn_fail(SN_ERR_FORMAT,
                               "%s: NPY shape dimension %zu does not fit in 64 bits", h->path,
                               a->ndim);
            v = v * 10 + d;
        }
        if (h->i < h->n && h->s[h->i] == 'L') /* Python 2 long literal */
            h->i++;
        a->shape[a->ndim++] = v;
        hdr_ws(h);
        if (h->i < h->n && h->s[h->i] == ')') {
            h->i++;
            return SN_OK;
        }
        if (h->i >= h->n || h->s[h->i] != ',')
            return hdr_bad(h, "',' or ')' in the shape");
        h->i++;
        hdr_ws(h);
        if (h->i < h->n && h->s[h->i] == ')') {
            h->i++;
            return SN_OK;
        }
    }
}

static const char *npy_type_name(const npy_array *a)
{
    switch (a->kind) {
    case 'f': return a->itemsize == 2 ? "float16" : a->itemsize == 4 ? "float32" : "float64";
    case 'b': return "bool";
    case 'i':
        return a->itemsize == 1 ? "int8" : a->itemsize == 2 ? "int16"
             : a->itemsize == 4 ? "int32" : "int64";
    default:
        return a->itemsize == 1 ? "uint8" : a->itemsize == 2 ? "uint16"
             : a->itemsize == 4 ? "uint32" : "uint64";
    }
}

static sn_status npy_dtype(const char *path, npy_array *a)
{
    const char *d = a->descr;
    static const uint16_t probe = 1;
    int host_big = *(const uint8_t *)&probe == 0;
    char order = d[0];
    char kind = order ? d[1] : '\0';
    unsigned size = 0;
    int ok = (order == '<' || order == '>' || order == '|' || order == '=') && kind &&
             is_digit((uint8_t)d[2]) && d[3] == '\0';
    if (ok) {
        size = (unsigned)(d[2] - '0');
        if (kind == 'f')
            ok = size == 2 || size == 4 || size == 8;
        else if (kind == 'i' || kind == 'u')
            ok = size == 1 || size == 2 || size == 4 || size == 8;
        else if (kind == 'b')
            ok = size == 1;
        else
            ok = 0;
        /* '|' means "byte order does not apply": only right for one-byte types. */
        if (ok && order == '|' && size > 1)
            ok = 0;
    }
    if (!ok)
        return sn_fail(SN_ERR_UNSUPPORTED,
                       "%s: NPY dtype '%s' is not supported (use float16/32/64, int8..int64, "
                       "uint8..uint64 or bool)",
                       path, d);
    a->kind = kind;
    a->itemsize = size;
    a->big_endian = order == '>' || (order == '=' && host_big);
    return SN_OK;
}

static void npy_shape_str(const npy_array *a, char *buf, size_t cap)
{
    size_t len = 0;
    len += (size_t)snprintf(buf, cap, "(");
    for (size_t k = 0; k < a->ndim && len < cap; k++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%llu", k ? ", " : "",
                                (unsigned long long)a->shape[k]);
    if (len < cap)
        snprintf(buf + len, cap - len, a->ndim == 1 ? ",)" : ")");
}

/* Parses the preamble and header dict and checks that the data the header describes is
 * exactly what the file holds. Shape rules are the callers'. */
static sn_status npy_parse(const char *path, const uint8_t *buf, size_t len, npy_array *a)
{
    memset(a, 0, sizeof *a);
    if (len < 10)
        return sn_fail(SN_ERR_FORMAT, "%s: truncated NPY: only %zu bytes, less than the "
                       "preamble", path, len);
    unsigned major = buf[6], minor = buf[7];
    if (!(major >= 1 && major <= 3 && minor == 0))
        return sn_fail(SN_ERR_UNSUPPORTED,
                       "%s: NPY format version %u.%u is not supported (1.0, 2.0 and 3.0 are)",
                       path, major, minor);
    size_t hlen, hstart;
    if (major == 1) {
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
        hstart = 10;
    } else {
        if (len < 12)
            return sn_fail(SN_ERR_FORMAT, "%s: truncated NPY: only %zu bytes, less than the "
                           "preamble", path, len);
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 |
               (size_t)buf[11] << 24;
        hstart = 12;
    }
    if (hlen > len - hstart)
        return sn_fail(SN_ERR_FORMAT,
                       "%s: truncated NPY: the header declares %zu bytes but only %zu follow",
                       path, hlen, len - hstart);

    npy_hdr h = {path, buf + hstart, hlen, 0};
    int seen_descr = 0, seen_fortran = 0, seen_shape = 0;
    sn_status st = hdr_expect(&h, '{', "'{' opening the header dict");
    while (st == SN_OK) {
        hdr_ws(&h);
        if (h.i < h.n && h.s[h.i] == '}') {
            h.i++;
            break;
        }
        char key[32];
        size_t key_at = h.i;
        st = hdr_string(&h, key, sizeof key, "a quoted key or '}'");
        if (st == SN_OK)
            st = hdr_expect(&h, ':', "':' after the key");
        if (st != SN_OK)
            break;
        int *seen;
        hdr_ws(&h);
        if (strcmp(key, "descr") == 0) {
            seen = &seen_descr;
            if (h.i < h.n && h.s[h.i] == '[')
                return sn_fail(SN_ERR_UNSUPPORTED,
                               "%s: NPY holds a structured (record) dtype; only plain numeric "
                               "arrays are supported",
                               path);
            st = hdr_string(&h, a->descr, sizeof a->descr, "the dtype string of 'descr'");
        } else if (strcmp(key, "fortran_order") == 0) {
            seen = &seen_fortran;
            if (h.n - h.i >= 4 && memcmp(h.s + h.i, "True", 4) == 0) {
                a->fortran = 1;
                h.i += 4;
            } else if (h.n - h.i >= 5 && memcmp(h.s + h.i, "False", 5) == 0) {
                a->fortran = 0;
                h.i += 5;
            } else {
                st = hdr_bad(&h, "True or False for 'fortran_order'");
            }
        } else if (strcmp(key, "shape") == 0) {
            seen = &seen_shape;
            st = hdr_shape(&h, a);
        } else {
            return sn_fail(SN_ERR_FORMAT,
                           "%s: malformed NPY header: unexpected key '%s' at character %zu "
                           "(the keys are 'descr', 'fortran_order' and 'shape')",
                           path, key, key_at);
        }
        if (st != SN_OK)
            break;
        if (*seen)
            return sn_fail(SN_ERR_FORMAT, "%s: malformed NPY header: key '%s' appears twice",
                           path, key);
        *seen = 1;
        hdr_ws(&h);
        if (h.i < h.n && h.s[h.i] == ',') {
            h.i++;
        } else if (!(h.i < h.n && h.s[h.i] == '}')) {
            st = hdr_bad(&h, "',' or '}' after a value");
        }
    }
    if (st != SN_OK)
        return st;
    hdr_ws(&h);
    if (h.i < h.n && h.s[h.i] != '\0') /* some writers pad with NULs */
        return hdr_bad(&h, "only padding after the closing '}'");
    if (!seen_descr || !seen_fortran || !seen_shape)
        return sn_fail(SN_ERR_FORMAT, "%s: malformed NPY header: the '%s' key is missing",
                       path, !seen_descr ? "descr" : !seen_fortran ? "fortran_order" : "shape");
    st = npy_dtype(path, a);
    if (st != SN_OK)
        return st;

    /* The header is untrusted: a shape like (2**62, 8) must not wrap into a small size. */
    uint64_t count = 1;
    int overflow = 0, has_zero = 0;
    for (size_t k = 0; k < a->ndim; k++) {
        if (a->shape[k] == 0)
            has_zero = 1;
        else if (count > UINT64_MAX / a->shape[k])
            overflow = 1;
        else
            count *= a->shape[k];
    }
    if (has_zero) {
        count = 0;
        overflow = 0;
    }
    if (!overflow && count > UINT64_MAX / a->itemsize)
        overflow = 1;
    size_t data_off = hstart + hlen, avail = len - data_off;
    char shape[160];
    npy_shape_str(a, shape, sizeof shape);
    if (overflow)
        return sn_fail(SN_ERR_FORMAT,
                       "%s: header says shape %s of %s, more than 2^64 bytes of data, but the "
                       "file holds %zu after the header",
                       path, shape, npy_type_name(a), avail);
    uint64_t bytes = count * a->itemsize;
    if (bytes != avail)
        return sn_fail(SN_ERR_FORMAT,
                       "%s: header says shape %s of %s = %llu bytes of data, but the file "
                       "holds %zu after the header (%s)",
                       path, shape, npy_type_name(a), (unsigned long long)bytes, avail,
                       bytes > avail ? "truncated download or copy?" : "extra bytes at the end");
    a->count = (size_t)count;
    a->data = buf + data_off;
    return SN_OK;
}

static uint64_t npy_bits(const npy_array *a, size_t i)
{
    const uint8_t *p = a->data + i * a->itemsize;
    uint64_t v = 0;
    for (unsigned k = 0; k < a->itemsize; k++)
        v |= (uint64_t)p[a->big_endian ? a->itemsize - 1 - k : k] << (8 * k);
    return v;
}

/* IEEE half -> float, exact for every half value (float has more of everything). */
static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        float f = (float)mant * 0x1p-24f; /* zero or subnormal */
        return sign ? -f : f;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | mant << 13; /* inf or NaN, payload kept */
    else
        bits = sign | (exp - 15 + 127) << 23 | mant << 13;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* An integer element as int64; 0 when it does not fit (only uint64 values can fail). */
static int npy_int(const npy_array *a, size_t i, int64_t *out, uint64_t *raw)
{
    uint64_t v = npy_bits(a, i);
    *raw = v;
    if (a->kind == 'b') {
        *out = v != 0;
        return 1;
    }
    if (a->kind == 'u') {
        if (v > INT64_MAX)
            return 0;
        *out = (int64_t)v;
        return 1;
    }
    unsigned bits = 8 * a->itemsize;
    uint64_t mask = bits == 64 ? UINT64_MAX : (UINT64_C(1) << bits) - 1;
    if (v >> (bits - 1) & 1)
        *out = -(int64_t)(~v & mask) - 1; /* two's complement, without implementation-defined casts */
    else
        *out = (int64_t)v;
    return 1;
}

static double npy_double(const npy_array *a, size_t i)
{
    if (a->kind == 'f') {
        uint64_t v = npy_bits(a, i);
        if (a->itemsize == 2)
            return half_to_float((uint16_t)v);
        if (a->itemsize == 4) {
            uint32_t b32 = (uint32_t)v;
            float f;
            memcpy(&f, &b32, sizeof f);
            return f;
        }
        double d;
        memcpy(&d, &v, sizeof d);
        return d;
    }
    int64_t s;
    uint64_t raw;
    if (!npy_int(a, i, &s, &raw))
        return (double)raw;
    return (double)s;
}

/* Visits elements in C order and gives where each is stored: the same index unless the file
 * is Fortran-ordered (first index fastest), for which a running multi-index is kept. */
typedef struct npy_cursor {
    const npy_array *a;
    uint64_t idx[NPY_MAX_DIMS];
    size_t k; /* C-order position */
} npy_cursor;

static size_t cursor_src(const npy_cursor *c)
{
    const npy_array *a = c->a;
    if (!a->fortran || a->ndim < 2)
        return c->k;
    size_t off = 0, stride = 1; /* fits: count * itemsize is the file's data size */
    for (size_t j = 0; j < a->ndim; j++) {
        off += (size_t)c->idx[j] * stride;
        stride *= (size_t)a->shape[j];
    }
    return off;
}

static void cursor_next(npy_cursor *c)
{
    const npy_array *a = c->a;
    c->k++;
    for (size_t j = a->ndim; j-- > 0;) {
        if (++c->idx[j] < a->shape[j])
            break;
        c->idx[j] = 0;
    }
}

static sn_status read_npy_series(const char *path, const uint8_t *buf, size_t len,
                                 sn_media *out)
{
    npy_array a;
    sn_status st = npy_parse(path, buf, len, &a);
    if (st != SN_OK)
        return st;
    char shape[160];
    npy_shape_str(&a, shape, sizeof shape);
    if (a.ndim == 0)
        return sn_fail(SN_ERR_FORMAT,
                       "%s: the NPY array is a scalar (shape ()); a series needs shape "
                       "(ticks,) or (ticks, dims)",
                       path);
    if (a.ndim > 2)
        return sn_fail(SN_ERR_UNSUPPORTED,
                       "%s: NPY shape %s has %zu dimensions; a series is (ticks,) or (ticks, "
                       "dims): reshape it",
                       path, shape, a.ndim);
    uint64_t ticks = a.shape[0], dims = a.ndim == 2 ? a.shape[1] : 1;
    if (ticks == 0 || dims == 0)
        return sn_fail(SN_ERR_FORMAT, "%s: the NPY array is empty (shape %s)", path, shape);
    if (dims > UINT32_MAX)
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: NPY shape %s has too many dims per tick",
                       path, shape);
    float *values = malloc(a.count * sizeof *values); /* (ticks, dims) */
    if (!values)
        return sn_fail(SN_ERR_NOMEM, "%s: out of memory for %zu values", path, a.count);
    /* Non-finite values pass through: in a sensor series they are data (a dropout, a
     * saturated reading), and the plugin reading the series decides what they mean. */
    npy_cursor c = {&a, {0}, 0};
    for (size_t k = 0; k < a.count; k++, cursor_next(&c))
        values[k] = (float)npy_double(&a, cursor_src(&c));
    out->kind = SN_MEDIA_SERIES;
    out->t = 0;
    out->series.values = values;
    out->series.n_ticks = (size_t)ticks;
    out->series.dims = (uint32_t)dims;
    out->series.rate_hz = 0; /* NPY carries no rate */
    return SN_OK;
}

/* Writes a version 1.0 NPY file of 4-byte elements: the header dict padded with spaces so
 * the data starts at a multiple of 64 bytes (numpy's alignment, which lets readers map the
 * data in place), then the values little-endian. */
static sn_status write_npy4(const char *path, const char *descr, const char *shape,
                            const void *values, size_t count)
{
    char dict[192];
    int dlen = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, "
                        "'shape': %s, }", descr, shape);
    if (dlen < 0 || (size_t)dlen >= sizeof dict)
        return sn_fail(SN_ERR_INTERNAL, "%s: NPY header too long", path);
    size_t total = (10 + (size_t)dlen + 1 + 63) / 64 * 64, hlen = total - 10;
    uint8_t head[256];
    memcpy(head, "\x93NUMPY\x01\x00", 8);
    head[8] = (uint8_t)(hlen & 0xff);
    head[9] = (uint8_t)(hlen >> 8);
    memcpy(head + 10, dict, (size_t)dlen);
    memset(head + 10 + dlen, ' ', total - 10 - (size_t)dlen - 1);
    head[total - 1] = '\n';

    file_out o;
    sn_status st = out_open(&o, path);
    if (st != SN_OK)
        return st;
    out_write(&o, head, total);
    uint8_t block[4096 * 4];
    const uint8_t *src = values;
    for (size_t done = 0; done < count;) {
        size_t m = count - done < 4096 ? count - done : 4096;
        for (size_t k = 0; k < m; k++) {
            uint32_t v;
            memcpy(&v, src + (done + k) * 4, 4);
            for (int b = 0; b < 4; b++)
                block[4 * k + (size_t)b] = (uint8_t)(v >> (8 * b));
        }
        out_write(&o, block, 4 * m);
        done += m;
    }
    return out_close(&o);
}

static sn_status write_npy_series(const char *path, const sn_media_series *s)
{
    size_t count;
    if (s->dims == 0)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: series has 0 dims per tick", path);
    if (!mul_size(s->n_ticks, s->dims, &count) || count > SIZE_MAX / 4)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: series size %zu x %lu overflows", path,
                       s->n_ticks, (unsigned long)s->dims);
    if (count && !s->values)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: series has %zu values but no buffer", path,
                       count);
    char shape[64];
    snprintf(shape, sizeof shape, "(%zu, %lu)", s->n_ticks, (unsigned long)s->dims);
    return write_npy4(path, "<f4", shape, s->values, count);
}

/* ---------------------------------------------------------------------------------------- */
/* Public API                                                                               */
/* ---------------------------------------------------------------------------------------- */

typedef enum sniffed {
    SNIFF_WAV_LE,  /* RIFF....WAVE */
    SNIFF_WAV_BE,  /* RIFX....WAVE */
    SNIFF_SHORT_RIFF,
    SNIFF_AUDIO,   /* FLAC, Ogg, AIFF: straight to libsndfile */
    SNIFF_PNG,
    SNIFF_PNM,
    SNIFF_NPY,
    SNIFF_OTHER    /* whatever libsndfile opens, else UTF-8 text */
} sniffed;

static sniffed sniff(const uint8_t *b, size_t n)
{
    if (n >= 4 && (memcmp(b, "RIFF", 4) == 0 || memcmp(b, "RIFX", 4) == 0)) {
        if (n < 12)
            return SNIFF_SHORT_RIFF;
        if (memcmp(b + 8, "WAVE", 4) == 0)
            return b[3] == 'F' ? SNIFF_WAV_LE : SNIFF_WAV_BE;
        return SNIFF_OTHER;
    }
    if (n >= 4 && (memcmp(b, "fLaC", 4) == 0 || memcmp(b, "OggS", 4) == 0 ||
                   memcmp(b, "FORM", 4) == 0))
        return SNIFF_AUDIO;
    if (n >= 4 && memcmp(b, "\x89PNG", 4) == 0)
        return SNIFF_PNG;
    if (n >= 3 && b[0] == 'P' && b[1] >= '1' && b[1] <= '7' && is_space(b[2]))
        return SNIFF_PNM;
    if (n >= 6 && memcmp(b, "\x93NUMPY", 6) == 0)
        return SNIFF_NPY;
    return SNIFF_OTHER;
}

sn_status sn_media_read(const char *path, sn_media *out)
{
    sn_clear_error();
    if (!out)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_media_read: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_media_read: path is NULL");

    FILE *f = fopen(path, "rb");
    if (!f)
        return sn_fail(SN_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    uint8_t head[16];
    errno = 0;
    size_t nh = fread(head, 1, sizeof head, f);
    if (ferror(f)) {
        int e = errno ? errno : EIO;
        fclose(f);
        return sn_fail(SN_ERR_IO, "%s: cannot read: %s", path, strerror(e));
    }
    if (nh == 0) {
        fclose(f);
        return sn_fail(SN_ERR_FORMAT, "%s: empty file", path);
    }

    sn_status st = SN_OK;
    sniffed kind = sniff(head, nh);
    if (kind == SNIFF_SHORT_RIFF) {
        fclose(f);
        return sn_fail(SN_ERR_FORMAT, "%s: truncated RIFF file: only %zu bytes", path, nh);
    }
    if (kind == SNIFF_WAV_LE || kind == SNIFF_WAV_BE) {
        st = check_wav_chunks(path, f, kind == SNIFF_WAV_BE);
        fclose(f);
        return st == SN_OK ? read_audio(path, out) : st;
    }
    if (kind == SNIFF_AUDIO) {
        fclose(f);
        return read_audio(path, out);
    }
    if (kind == SNIFF_PNG) {
        fclose(f);
        return read_png(path, out);
    }

    /* The rest is parsed from memory; anything unrecognised goes to libsndfile first
     * (AU, CAF, W64, MP3, ... have magic numbers we need not list), then is text. */
    char sf_why[256] = "";
    if (kind == SNIFF_OTHER) {
        SF_INFO info;
        memset(&info, 0, sizeof info);
        SNDFILE *sf = sf_open(path, SFM_READ, &info);
        if (sf) {
            fclose(f);
            return audio_from_sndfile(path, sf, &info, out);
        }
        snprintf(sf_why, sizeof sf_why, "%s", sf_strerror(NULL));
    }
    rewind(f);
    uint8_t *buf = NULL;
    size_t len = 0;
    st = read_all(path, f, &buf, &len);
    fclose(f);
    if (st != SN_OK)
        return st;
    if (len == 0) { /* it shrank since we sniffed it */
        free(buf);
        return sn_fail(SN_ERR_FORMAT, "%s: empty file", path);
    }
    if (kind == SNIFF_PNM) {
        st = read_pnm(path, buf, len, out);
        free(buf);
    } else if (kind == SNIFF_NPY) {
        st = read_npy_series(path, buf, len, out);
        free(buf);
    } else {
        const char *why = NULL;
        size_t bad = utf8_check(buf, len, &why);
        if (bad < len) {
            st = sn_fail(SN_ERR_FORMAT,
                         "%s: invalid UTF-8 at byte offset %zu (0x%02x starts %s), and not a "
                         "recognised audio, image or NPY file either (libsndfile: %s)",
                         path, bad, buf[bad], why, sf_why);
            free(buf);
            return st;
        }
        out->kind = SN_MEDIA_TEXT;
        out->t = 0;
        out->text.utf8 = (const char *)buf; /* owned by *out now */
        out->text.len = len;
    }
    if (st != SN_OK)
        memset(out, 0, sizeof *out);
    return st;
}

void sn_media_release(sn_media *media)
{
    if (!media)
        return;
    /* The readers allocate the buffer; the public struct is const for plugins' sake. */
    switch (media->kind) {
    case SN_MEDIA_TEXT: free((void *)media->text.utf8); break;
    case SN_MEDIA_AUDIO: free((void *)media->audio.samples); break;
    case SN_MEDIA_IMAGE: free((void *)media->image.pixels); break;
    case SN_MEDIA_SERIES: free((void *)media->series.values); break;
    }
    memset(media, 0, sizeof *media);
}

const char *sn_media_kind_name(sn_media_kind kind)
{
    switch (kind) {
    case SN_MEDIA_TEXT: return "text";
    case SN_MEDIA_AUDIO: return "audio";
    case SN_MEDIA_IMAGE: return "image";
    case SN_MEDIA_SERIES: return "series";
    }
    return "unknown";
}

static const char *kind_ext(sn_media_kind kind)
{
    switch (kind) {
    case SN_MEDIA_AUDIO: return ".wav";
    case SN_MEDIA_IMAGE: return ".png";
    case SN_MEDIA_SERIES: return ".npy";
    default: return ".txt";
    }
}

sn_status sn_media_write(const char *path, const sn_media *media)
{
    sn_clear_error();
    if (!path || !media)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_media_write: path and media must not be NULL");
    if (media->kind < SN_MEDIA_TEXT || media->kind > SN_MEDIA_SERIES)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: media kind %d is not a valid sn_media_kind",
                       path, (int)media->kind);
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(slash ? slash + 1 : path, '.');
    const char *ext = dot ? dot : "";
    sn_media_kind holds = strcasecmp(ext, ".wav") == 0   ? SN_MEDIA_AUDIO
                          : strcasecmp(ext, ".png") == 0 ? SN_MEDIA_IMAGE
                          : strcasecmp(ext, ".npy") == 0 ? SN_MEDIA_SERIES
                                                         : SN_MEDIA_TEXT;
    if (media->kind != holds) {
        if (holds == SN_MEDIA_TEXT)
            return sn_fail(SN_ERR_UNSUPPORTED,
                           "%s: names other than .wav, .png and .npy are written as text, "
                           "which cannot hold %s media; use a %s name",
                           path, sn_media_kind_name(media->kind), kind_ext(media->kind));
        return sn_fail(SN_ERR_UNSUPPORTED,
                       "%s: a %s file holds %s, not %s media; use a %s name", path, ext,
                       sn_media_kind_name(holds), sn_media_kind_name(media->kind),
                       kind_ext(media->kind));
    }
    switch (media->kind) {
    case SN_MEDIA_AUDIO: return write_wav(path, &media->audio);
    case SN_MEDIA_IMAGE: return write_png(path, &media->image);
    case SN_MEDIA_SERIES: return write_npy_series(path, &media->series);
    case SN_MEDIA_TEXT: break;
    }
    const sn_media_text *t = &media->text;
    if (t->len && !t->utf8)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: text media has %zu bytes but no buffer", path,
                       t->len);
    /* The contract says text is UTF-8; a file that would not read back must not be made. */
    const char *why = NULL;
    size_t bad = t->len ? utf8_check((const uint8_t *)t->utf8, t->len, &why) : 0;
    if (bad < t->len)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: text to write is not valid UTF-8 at byte "
                       "offset %zu (%s)", path, bad, why);
    file_out o;
    sn_status st = out_open(&o, path);
    if (st != SN_OK)
        return st;
    out_write(&o, t->utf8, t->len);
    return out_close(&o);
}

sn_status sn_tokens_read_npy(const char *path, int32_t **ids, size_t *n)
{
    sn_clear_error();
    if (!path || !ids || !n)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_tokens_read_npy: NULL argument");
    *ids = NULL;
    *n = 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    sn_status st = read_file(path, &buf, &len);
    if (st != SN_OK)
        return st;
    npy_array a;
    if (len < 6 || memcmp(buf, "\x93NUMPY", 6) != 0) {
        free(buf);
        return sn_fail(SN_ERR_FORMAT, "%s: not an NPY file (no \\x93NUMPY magic); token ids "
                       "must be an integer NPY array", path);
    }
    st = npy_parse(path, buf, len, &a);
    if (st == SN_OK && a.kind == 'f')
        st = sn_fail(SN_ERR_FORMAT, "%s: expected an integer array of token ids, but the NPY "
                     "dtype is %s", path, npy_type_name(&a));
    int32_t *out = NULL;
    if (st == SN_OK) {
        out = malloc((a.count ? a.count : 1) * sizeof *out); /* never NULL on success */
        if (!out)
            st = sn_fail(SN_ERR_NOMEM, "%s: out of memory for %zu token ids", path, a.count);
    }
    npy_cursor c = {&a, {0}, 0};
    for (size_t k = 0; st == SN_OK && k < a.count; k++, cursor_next(&c)) {
        int64_t v;
        uint64_t raw;
        int fits = npy_int(&a, cursor_src(&c), &v, &raw);
        if (!fits || v < INT32_MIN || v > INT32_MAX) {
            char num[32];
            if (fits)
                snprintf(num, sizeof num, "%lld", (long long)v);
            else
                snprintf(num, sizeof num, "%llu", (unsigned long long)raw);
            st = sn_fail(SN_ERR_FORMAT, "%s: token id at index %zu is %s, outside int32", path,
                         k, num);
            break;
        }
        out[k] = (int32_t)v;
    }
    free(buf);
    if (st != SN_OK) {
        free(out);
        return st;
    }
    *ids = out;
    *n = a.count;
    return SN_OK;
}

sn_status sn_tokens_write_npy(const char *path, const int32_t *ids, size_t n)
{
    sn_clear_error();
    if (!path || (n && !ids))
        return sn_fail(SN_ERR_INVALID_ARG, "sn_tokens_write_npy: NULL path or ids");
    if (n > SIZE_MAX / 4)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: %zu token ids is too many", path, n);
    char shape[40];
    snprintf(shape, sizeof shape, "(%zu,)", n);
    return write_npy4(path, "<i4", shape, ids, n);
}
