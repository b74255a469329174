/*
 * npy_f32.c - the 2-D float NPY reader and writer of npy_f32.h.
 *
 * Only what a codebook needs: little-endian f4/f8, C order, one or two dimensions. The
 * header dict is parsed by looking up its three keys; anything else is refused with a reason.
 */
#include "npy_f32.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failf(char *why, size_t len, const char *msg, const char *detail)
{
    snprintf(why, len, "%s%s", msg, detail ? detail : "");
    return -1;
}

/* Finds 'key': in the header dict and returns the text after the colon, or NULL. */
static const char *dict_value(const char *hdr, const char *key)
{
    char quoted[32];
    snprintf(quoted, sizeof quoted, "'%s'", key);
    const char *p = strstr(hdr, quoted);
    if (!p)
        return NULL;
    p = strchr(p + strlen(quoted), ':');
    if (!p)
        return NULL;
    p++;
    while (*p == ' ')
        p++;
    return p;
}

int sn_pu_npy_read_f32(const char *path, float **data, size_t *rows, size_t *cols, char *why,
                       size_t why_len)
{
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return failf(why, why_len, "cannot open: ", strerror(errno));
    unsigned char pre[12];
    char *hdr = NULL;
    void *raw = NULL;
    int rc = -1;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        failf(why, why_len, "not an NPY file (no \\x93NUMPY magic)", NULL);
        goto out;
    }
    size_t hlen;
    if (pre[6] == 1) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    } else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            failf(why, why_len, "truncated NPY header", NULL);
            goto out;
        }
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    } else {
        failf(why, why_len, "unknown NPY format version", NULL);
        goto out;
    }
    if (hlen > (1u << 20) || !(hdr = malloc(hlen + 1)) || fread(hdr, 1, hlen, f) != hlen) {
        failf(why, why_len, "truncated or oversized NPY header", NULL);
        goto out;
    }
    hdr[hlen] = '\0';
    const char *descr = dict_value(hdr, "descr");
    const char *order = dict_value(hdr, "fortran_order");
    const char *shape = dict_value(hdr, "shape");
    if (!descr || !order || !shape) {
        failf(why, why_len, "NPY header lacks descr, fortran_order or shape", NULL);
        goto out;
    }
    size_t elem;
    if (strncmp(descr, "'<f4'", 5) == 0)
        elem = 4;
    else if (strncmp(descr, "'<f8'", 5) == 0)
        elem = 8;
    else {
        failf(why, why_len, "expected a float32 or float64 array, not dtype ", descr);
        goto out;
    }
    if (strncmp(order, "False", 5) != 0) {
        failf(why, why_len, "Fortran-order arrays are not supported; save with np.ascontiguousarray", NULL);
        goto out;
    }
    unsigned long long dims[2] = {0, 1};
    int nd = 0;
    const char *p = shape;
    if (*p++ != '(') {
        failf(why, why_len, "malformed shape in the NPY header", NULL);
        goto out;
    }
    while (*p && *p != ')') {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == ')')
            break;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p || errno || nd == 2) {
            failf(why, why_len, "expected a 1-D or 2-D shape in the NPY header", NULL);
            goto out;
        }
        dims[nd++] = v;
        p = end;
    }
    if (nd == 0 || dims[0] == 0 || dims[1] == 0 || dims[0] > SIZE_MAX / dims[1] / elem) {
        failf(why, why_len, "empty, scalar or absurdly large array", NULL);
        goto out;
    }
    size_t count = (size_t)(dims[0] * dims[1]);
    raw = malloc(count * elem);
    *data = malloc(count * sizeof **data);
    if (!raw || !*data) {
        failf(why, why_len, "out of memory", NULL);
        goto out;
    }
    if (fread(raw, elem, count, f) != count) {
        failf(why, why_len, "the file holds less data than its header's shape says (truncated?)", NULL);
        goto out;
    }
    if (fgetc(f) != EOF) {
        failf(why, why_len, "the file holds more data than its header's shape says", NULL);
        goto out;
    }
    for (size_t i = 0; i < count; i++) {
        double v;
        if (elem == 4) {
            float x;
            memcpy(&x, (unsigned char *)raw + i * 4, 4);
            v = x;
        } else
            memcpy(&v, (unsigned char *)raw + i * 8, 8);
        if (!(v == v) || v > 3.4e38 || v < -3.4e38) {
            snprintf(why, why_len, "element %zu is not a finite float32", i);
            goto out;
        }
        (*data)[i] = (float)v;
    }
    *rows = (size_t)dims[0];
    *cols = (size_t)dims[1];
    rc = 0;
out:
    if (rc != 0) {
        free(*data);
        *data = NULL;
    }
    free(raw);
    free(hdr);
    fclose(f);
    return rc;
}

int sn_pu_npy_write_f32(const char *path, const float *data, size_t rows, size_t cols,
                        char *why, size_t why_len)
{
    char dict[128];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }",
                     rows, cols);
    /* magic(6) + version(2) + length(2) + dict + padding + '\n' is a multiple of 64 */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)n + pad + 1;
    FILE *f = fopen(path, "wb");
    if (!f)
        return failf(why, why_len, "cannot write: ", strerror(errno));
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xFF),
                             (unsigned char)(hlen >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)n, f) == (size_t)n;
    for (size_t i = 0; ok && i < pad; i++)
        ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF && fwrite(data, sizeof *data, rows * cols, f) == rows * cols;
    if (fclose(f) != 0)
        ok = 0;
    if (!ok) {
        remove(path);
        return failf(why, why_len, "write failed: ", strerror(errno));
    }
    return 0;
}
