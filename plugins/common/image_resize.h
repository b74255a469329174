/*
 * image_resize.h - resampling an 8-bit image (gray, gray+alpha, RGB or RGBA) to a fixed RGB
 * grid, the first stage of the image tokenizers (image.palette, image.patchvq) and of their
 * fit. Header-only (static inline) so that each plugin and the tests that measure a plugin
 * against "the photo resized by the same resize" compile the very same code.
 *
 * Channels: gray is replicated to R, G and B; alpha is composited over a background colour
 * (out = c*a + bg*(1-a), per pixel, before any filtering, so that transparent pixels cannot
 * bleed their hidden colour into their neighbours).
 *
 * Filter, chosen per axis: when the axis shrinks or keeps its size, area averaging (a box
 * filter: each output pixel is the mean of the source area it covers, partial source pixels
 * at its edges weighted by the fraction covered), which is proper anti-aliased downsampling;
 * when the axis grows, bilinear interpolation with pixel centres aligned ((i + 0.5) * src /
 * dst - 0.5, clamped at the edges). The two axes are separable.
 *
 * Arithmetic is fixed point: per axis the weights of an output pixel are integers summing
 * to exactly 2^SN_PU_RESIZE_BITS, computed from exact rational coverage, and the sums are
 * int64. So a constant image resizes to exactly its colour at any size, and averaging a
 * 2x2 checkerboard gives exactly the mean, with no float rounding at level boundaries.
 * Cost: O(source pixels + output pixels), each source row filtered horizontally at most
 * twice (rows shared by two output rows are cached).
 */
#ifndef SN_PU_IMAGE_RESIZE_H
#define SN_PU_IMAGE_RESIZE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SN_PU_RESIZE_BITS 20
#define SN_PU_RESIZE_ONE ((int64_t)1 << SN_PU_RESIZE_BITS)

/* The source taps of each output pixel along one axis. */
typedef struct sn_pu_resize_taps {
    uint32_t *first;   /* (n) first source index of output i */
    uint32_t *count;   /* (n) taps of output i, >= 1 */
    int32_t *weight;   /* (n, max_taps) integer weights of output i, summing to 2^BITS */
    uint32_t max_taps;
    uint32_t n;
} sn_pu_resize_taps;

/* A resizer to one output size. Owns its buffers; they grow when a larger source arrives,
 * so resizing images of one size allocates only the first time. Not thread-safe: one per
 * stream. */
typedef struct sn_pu_resizer {
    uint32_t dst_w, dst_h;
    uint32_t src_w, src_h;  /* the source size the taps are for; 0: none yet */
    sn_pu_resize_taps tx, ty;
    uint16_t *row;          /* (src_w, 3) one source row as RGB * 255, alpha composited */
    size_t row_cap;         /* elements */
    int64_t *hrow[2];       /* (dst_w, 3) horizontally filtered rows, cached by row parity */
    int64_t hrow_y[2];      /* the source row each hrow holds; -1: none */
    int64_t *acc;           /* (dst_w, 3) an output row being accumulated */
} sn_pu_resizer;

static inline void sn_pu_resize_taps_free(sn_pu_resize_taps *t)
{
    free(t->first);
    free(t->count);
    free(t->weight);
    memset(t, 0, sizeof *t);
}

/* Weights of an axis of src pixels resampled to dst. Returns 0, or -1 when out of memory. */
static inline int sn_pu_resize_taps_make(sn_pu_resize_taps *t, uint32_t src, uint32_t dst)
{
    sn_pu_resize_taps_free(t);
    /* Area: output i covers [i*src, (i+1)*src) in units of 1/dst source pixels, which may
     * touch ceil(src/dst) + 1 source pixels. Bilinear: 2. */
    uint32_t max_taps = dst <= src ? (uint32_t)((src + dst - 1) / dst + 1) : 2;
    t->first = malloc((size_t)dst * sizeof *t->first);
    t->count = malloc((size_t)dst * sizeof *t->count);
    t->weight = malloc((size_t)dst * max_taps * sizeof *t->weight);
    if (!t->first || !t->count || !t->weight) {
        sn_pu_resize_taps_free(t);
        return -1;
    }
    t->max_taps = max_taps;
    t->n = dst;
    for (uint32_t i = 0; i < dst; i++) {
        int32_t *w = t->weight + (size_t)i * max_taps;
        if (dst <= src) {
            uint64_t lo = (uint64_t)i * src, hi = lo + src; /* in 1/dst source pixels */
            uint32_t j0 = (uint32_t)(lo / dst), j1 = (uint32_t)((hi + dst - 1) / dst); /* [j0, j1) */
            uint32_t n = j1 - j0;
            /* Weight k is cover_k / src of the output rounded to 2^-BITS through the running
             * total, so the weights sum to exactly 2^BITS (constants stay exact) and none is
             * off by more than one unit, however many taps there are. */
            uint64_t covered = 0, given = 0;
            for (uint32_t k = 0; k < n; k++) {
                uint64_t a = (uint64_t)(j0 + k) * dst, b = a + dst;
                covered += (b < hi ? b : hi) - (a > lo ? a : lo);
                uint64_t upto = (covered * (uint64_t)SN_PU_RESIZE_ONE + src / 2) / src;
                w[k] = (int32_t)(upto - given);
                given = upto;
            }
            t->first[i] = j0;
            t->count[i] = n;
        } else {
            /* Source coordinate of output i's centre: ((2i+1)*src - dst) / (2*dst). */
            int64_t num = (int64_t)(2 * (uint64_t)i + 1) * src - dst, den = 2 * (int64_t)dst;
            uint32_t j0 = 0;
            int64_t frac = 0; /* in 1/den */
            if (num > 0) {
                j0 = (uint32_t)(num / den);
                frac = num % den;
            }
            if (j0 >= src - 1) {
                j0 = src - 1;
                frac = 0;
            }
            int32_t w1 = (int32_t)((frac * SN_PU_RESIZE_ONE + den / 2) / den);
            t->first[i] = j0;
            t->count[i] = w1 ? 2 : 1;
            w[0] = (int32_t)(SN_PU_RESIZE_ONE - w1);
            w[1] = w1;
        }
    }
    return 0;
}

static inline void sn_pu_resizer_init(sn_pu_resizer *r, uint32_t dst_w, uint32_t dst_h)
{
    memset(r, 0, sizeof *r);
    r->dst_w = dst_w;
    r->dst_h = dst_h;
    r->hrow_y[0] = r->hrow_y[1] = -1;
}

static inline void sn_pu_resizer_free(sn_pu_resizer *r)
{
    sn_pu_resize_taps_free(&r->tx);
    sn_pu_resize_taps_free(&r->ty);
    free(r->row);
    free(r->hrow[0]);
    free(r->hrow[1]);
    free(r->acc);
    sn_pu_resizer_init(r, r->dst_w, r->dst_h);
}

/* Source row y as RGB * 255 with alpha composited, into r->row. */
static inline void sn_pu_resize_convert_row(sn_pu_resizer *r, const uint8_t *p, uint32_t w,
                                            uint32_t channels, const uint8_t bg[3])
{
    uint16_t *o = r->row;
    switch (channels) {
    case 1:
        for (uint32_t x = 0; x < w; x++) {
            uint16_t v = (uint16_t)(p[x] * 255u);
            o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = v;
        }
        break;
    case 2:
        for (uint32_t x = 0; x < w; x++) {
            unsigned a = p[2 * x + 1], na = 255u - a;
            o[3 * x] = (uint16_t)(p[2 * x] * a + bg[0] * na);
            o[3 * x + 1] = (uint16_t)(p[2 * x] * a + bg[1] * na);
            o[3 * x + 2] = (uint16_t)(p[2 * x] * a + bg[2] * na);
        }
        break;
    case 3:
        for (uint32_t x = 0; x < 3 * w; x++)
            o[x] = (uint16_t)(p[x] * 255u);
        break;
    default:
        for (uint32_t x = 0; x < w; x++) {
            unsigned a = p[4 * x + 3], na = 255u - a;
            o[3 * x] = (uint16_t)(p[4 * x] * a + bg[0] * na);
            o[3 * x + 1] = (uint16_t)(p[4 * x + 1] * a + bg[1] * na);
            o[3 * x + 2] = (uint16_t)(p[4 * x + 2] * a + bg[2] * na);
        }
        break;
    }
}

/* The horizontally filtered source row y (converted first), cached by parity: consecutive
 * output rows share at most their boundary rows, and bilinear's two rows differ in parity. */
static inline const int64_t *sn_pu_resize_hrow(sn_pu_resizer *r, const uint8_t *pixels,
                                               size_t stride, uint32_t channels, uint32_t y,
                                               const uint8_t bg[3])
{
    int slot = (int)(y & 1u);
    int64_t *h = r->hrow[slot];
    if (r->hrow_y[slot] == (int64_t)y)
        return h;
    sn_pu_resize_convert_row(r, pixels + (size_t)y * stride, r->src_w, channels, bg);
    const sn_pu_resize_taps *t = &r->tx;
    for (uint32_t i = 0; i < r->dst_w; i++) {
        const uint16_t *s = r->row + 3 * (size_t)t->first[i];
        const int32_t *w = t->weight + (size_t)i * t->max_taps;
        int64_t s0 = 0, s1 = 0, s2 = 0;
        for (uint32_t k = 0; k < t->count[i]; k++) {
            s0 += (int64_t)w[k] * s[3 * k];
            s1 += (int64_t)w[k] * s[3 * k + 1];
            s2 += (int64_t)w[k] * s[3 * k + 2];
        }
        h[3 * i] = s0;
        h[3 * i + 1] = s1;
        h[3 * i + 2] = s2;
    }
    r->hrow_y[slot] = y;
    return h;
}

/*
 * Resizes an image (height rows of stride bytes, width*channels bytes each; channels 1 gray,
 * 2 gray+alpha, 3 RGB, 4 RGBA; width, height >= 1) to dst (dst_h, dst_w, 3): RGB in [0, 255]
 * as floats, unrounded. bg is the colour alpha is composited over. Returns 0, or -1 when out
 * of memory (the resizer stays usable).
 */
static inline int sn_pu_resize_rgb(sn_pu_resizer *r, const uint8_t *pixels, uint32_t width,
                                   uint32_t height, uint32_t channels, size_t stride,
                                   const uint8_t bg[3], float *dst)
{
    if (r->src_w != width || r->src_h != height || !r->acc) {
        r->src_w = r->src_h = 0;
        if (sn_pu_resize_taps_make(&r->tx, width, r->dst_w) ||
            sn_pu_resize_taps_make(&r->ty, height, r->dst_h))
            return -1;
        if ((size_t)width * 3 > r->row_cap) {
            uint16_t *row = realloc(r->row, (size_t)width * 3 * sizeof *row);
            if (!row)
                return -1;
            r->row = row;
            r->row_cap = (size_t)width * 3;
        }
        size_t n = (size_t)r->dst_w * 3;
        for (int k = 0; k < 2; k++)
            if (!r->hrow[k] && !(r->hrow[k] = malloc(n * sizeof *r->hrow[k])))
                return -1;
        if (!r->acc && !(r->acc = malloc(n * sizeof *r->acc)))
            return -1;
        r->src_w = width;
        r->src_h = height;
    }
    /* The cache holds rows of the previous image. */
    r->hrow_y[0] = r->hrow_y[1] = -1;

    /* Weights total 2^BITS per axis on values scaled by 255 */
    const double scale = 1.0 / (255.0 * (double)SN_PU_RESIZE_ONE * (double)SN_PU_RESIZE_ONE);
    const size_t n = (size_t)r->dst_w * 3;
    const sn_pu_resize_taps *t = &r->ty;
    for (uint32_t i = 0; i < r->dst_h; i++) {
        const int32_t *w = t->weight + (size_t)i * t->max_taps;
        int64_t *acc = r->acc;
        memset(acc, 0, n * sizeof *acc);
        for (uint32_t k = 0; k < t->count[i]; k++) {
            const int64_t *h = sn_pu_resize_hrow(r, pixels, stride, channels, t->first[i] + k, bg);
            for (size_t j = 0; j < n; j++)
                acc[j] += (int64_t)w[k] * h[j];
        }
        float *o = dst + (size_t)i * n;
        for (size_t j = 0; j < n; j++)
            o[j] = (float)((double)acc[j] * scale);
    }
    return 0;
}

#endif /* SN_PU_IMAGE_RESIZE_H */
