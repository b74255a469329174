/*
 * gguf.c - the GGUF reader of gguf.h: map, parse with every read bounds-checked, look up.
 *
 * The parser walks a cursor over the mapping; every read first checks the bytes are there,
 * and every count is checked against the bytes left before anything is allocated for it (an
 * array of n elements needs at least n * (smallest element size) bytes), so a file that lies
 * about its counts fails with a message instead of reading past the end or allocating
 * terabytes.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

/* ---------------------------------------------------------------------------------------- */
/* Types                                                                                    */
/* ---------------------------------------------------------------------------------------- */

typedef struct type_info {
    const char *name;
    uint32_t block_elems, block_bytes;
} type_info;

static const type_info *ggml_info(uint32_t type)
{
    static const type_info table[] = {
        [SN_GGML_F32] = {"F32", 1, 4},        [SN_GGML_F16] = {"F16", 1, 2},
        [SN_GGML_Q4_0] = {"Q4_0", 32, 18},    [SN_GGML_Q4_1] = {"Q4_1", 32, 20},
        [SN_GGML_Q5_0] = {"Q5_0", 32, 22},    [SN_GGML_Q5_1] = {"Q5_1", 32, 24},
        [SN_GGML_Q8_0] = {"Q8_0", 32, 34},    [SN_GGML_Q8_1] = {"Q8_1", 32, 36},
        [SN_GGML_Q2_K] = {"Q2_K", 256, 84},   [SN_GGML_Q3_K] = {"Q3_K", 256, 110},
        [SN_GGML_Q4_K] = {"Q4_K", 256, 144},  [SN_GGML_Q5_K] = {"Q5_K", 256, 176},
        [SN_GGML_Q6_K] = {"Q6_K", 256, 210},  [SN_GGML_Q8_K] = {"Q8_K", 256, 292},
        [SN_GGML_BF16] = {"BF16", 1, 2},
    };
    if (type >= sizeof table / sizeof table[0] || !table[type].name)
        return NULL;
    return &table[type];
}

uint32_t sn_ggml_block_elems(uint32_t type)
{
    const type_info *t = ggml_info(type);
    return t ? t->block_elems : 0;
}

uint32_t sn_ggml_block_bytes(uint32_t type)
{
    const type_info *t = ggml_info(type);
    return t ? t->block_bytes : 0;
}

const char *sn_ggml_type_name(uint32_t type, char *buf, size_t len)
{
    const type_info *t = ggml_info(type);
    if (t)
        return t->name;
    snprintf(buf, len, "type %u", type);
    return buf;
}

/* ---------------------------------------------------------------------------------------- */
/* Numbers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

float sn_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
    if (exp == 0x1F) { /* inf, nan (payload kept, so a quiet nan stays quiet) */
        bits = sign | 0x7F800000u | man << 13;
    } else if (exp != 0) {
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal man * 2^-24: shift the leading one up to the implicit bit */
        uint32_t e = 127 - 14;
        while (!(man & 0x400u)) {
            man <<= 1;
            e--;
        }
        bits = sign | e << 23 | (man & 0x3FFu) << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float sn_bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16; /* the top half of a float32 */
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

int sn_ggml_dequantize(uint32_t type, const void *src, float *dst, size_t n)
{
    const uint8_t *s = src;
    switch (type) {
    case SN_GGML_F32:
        memcpy(dst, src, n * sizeof *dst);
        return 0;
    case SN_GGML_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = sn_half_to_float(rd16(s + 2 * i));
        return 0;
    case SN_GGML_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = sn_bf16_to_float(rd16(s + 2 * i));
        return 0;
    case SN_GGML_Q4_0: /* f16 d, 16 bytes: low nibbles are elements 0..15, high 16..31 */
        for (size_t b = 0; b < n / 32; b++, s += 18, dst += 32) {
            const float d = sn_half_to_float(rd16(s));
            for (int j = 0; j < 16; j++) {
                dst[j] = d * (float)((s[2 + j] & 0x0F) - 8);
                dst[j + 16] = d * (float)((s[2 + j] >> 4) - 8);
            }
        }
        return 0;
    case SN_GGML_Q4_1: /* f16 d, f16 m, 16 bytes; x = d * q + m */
        for (size_t b = 0; b < n / 32; b++, s += 20, dst += 32) {
            const float d = sn_half_to_float(rd16(s)), m = sn_half_to_float(rd16(s + 2));
            for (int j = 0; j < 16; j++) {
                dst[j] = d * (float)(s[4 + j] & 0x0F) + m;
                dst[j + 16] = d * (float)(s[4 + j] >> 4) + m;
            }
        }
        return 0;
    case SN_GGML_Q8_0: /* f16 d, 32 int8 */
        for (size_t b = 0; b < n / 32; b++, s += 34, dst += 32) {
            const float d = sn_half_to_float(rd16(s));
            for (int j = 0; j < 32; j++)
                dst[j] = (float)(int8_t)s[2 + j] * d;
        }
        return 0;
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------- */
/* Parsing                                                                                  */
/* ---------------------------------------------------------------------------------------- */

typedef struct cursor {
    const uint8_t *base, *p, *end;
    const char *path;
    char *err;
    size_t errlen;
} cursor;

static int fail(cursor *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(cursor *c, const char *fmt, ...)
{
    int n = snprintf(c->err, c->errlen, "%s: ", c->path);
    if (n < 0 || (size_t)n >= c->errlen)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static size_t left(const cursor *c) { return (size_t)(c->end - c->p); }

static int take(cursor *c, size_t n, const uint8_t **out, const char *what)
{
    if (left(c) < n)
        return fail(c, "truncated: %s needs %zu bytes at offset %zu, the file has %zu left", what, n,
                    (size_t)(c->p - c->base), left(c));
    *out = c->p;
    c->p += n;
    return 0;
}

static int get_u32(cursor *c, uint32_t *v, const char *what)
{
    const uint8_t *p = NULL;
    if (take(c, 4, &p, what))
        return -1;
    *v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return 0;
}

static int get_u64(cursor *c, uint64_t *v, const char *what)
{
    const uint8_t *p = NULL;
    if (take(c, 8, &p, what))
        return -1;
    *v = 0;
    for (int i = 7; i >= 0; i--)
        *v = *v << 8 | p[i];
    return 0;
}

static int get_str(cursor *c, sn_gguf_str *s, const char *what)
{
    uint64_t len;
    if (get_u64(c, &len, what))
        return -1;
    if (len > left(c))
        return fail(c, "%s claims %llu bytes, only %zu are left in the file", what,
                    (unsigned long long)len, left(c));
    const uint8_t *p;
    take(c, (size_t)len, &p, what);
    s->s = (const char *)p;
    s->len = len;
    return 0;
}

static size_t scalar_size(uint32_t type)
{
    switch (type) {
    case SN_GGUF_UINT8: case SN_GGUF_INT8: case SN_GGUF_BOOL: return 1;
    case SN_GGUF_UINT16: case SN_GGUF_INT16: return 2;
    case SN_GGUF_UINT32: case SN_GGUF_INT32: case SN_GGUF_FLOAT32: return 4;
    case SN_GGUF_UINT64: case SN_GGUF_INT64: case SN_GGUF_FLOAT64: return 8;
    }
    return 0;
}

/* Skips over one value of type (not an array), checking it is there. */
static int skip_value(cursor *c, uint32_t type, const char *what)
{
    if (type == SN_GGUF_STRING) {
        sn_gguf_str s;
        return get_str(c, &s, what);
    }
    size_t n = scalar_size(type);
    if (!n)
        return fail(c, "%s has unknown value type %u", what, type);
    const uint8_t *p;
    return take(c, n, &p, what);
}

static int parse_kv(cursor *c, sn_gguf_kv *kv, uint64_t i)
{
    char what[320];
    snprintf(what, sizeof what, "metadata entry %llu", (unsigned long long)i);
    if (get_str(c, &kv->key, what))
        return -1;
    snprintf(what, sizeof what, "metadata '%.*s'", (int)(kv->key.len > 200 ? 200 : kv->key.len), kv->key.s);
    if (get_u32(c, &kv->type, what))
        return -1;
    kv->value = c->p;
    if (kv->type != SN_GGUF_ARRAY)
        return skip_value(c, kv->type, what);
    if (get_u32(c, &kv->arr_type, what) || get_u64(c, &kv->arr_n, what))
        return -1;
    kv->value = c->p;
    if (kv->arr_type == SN_GGUF_ARRAY)
        return fail(c, "%s is an array of arrays, which this reader does not take", what);
    /* The smallest an element can be: a string is at least its 8-byte length. */
    size_t min = kv->arr_type == SN_GGUF_STRING ? 8 : scalar_size(kv->arr_type);
    if (!min)
        return fail(c, "%s is an array of unknown type %u", what, kv->arr_type);
    if (kv->arr_n > left(c) / min)
        return fail(c, "%s claims %llu elements, more than the %zu bytes left in the file can hold",
                    what, (unsigned long long)kv->arr_n, left(c));
    if (kv->arr_type != SN_GGUF_STRING) {
        const uint8_t *p;
        return take(c, (size_t)kv->arr_n * min, &p, what);
    }
    for (uint64_t k = 0; k < kv->arr_n; k++)
        if (skip_value(c, SN_GGUF_STRING, what))
            return -1;
    return 0;
}

static int parse_tensor(cursor *c, sn_gguf_tensor *t, uint64_t i, uint64_t *offset)
{
    char what[320];
    snprintf(what, sizeof what, "tensor entry %llu", (unsigned long long)i);
    if (get_str(c, &t->name, what))
        return -1;
    snprintf(what, sizeof what, "tensor '%.*s'", (int)(t->name.len > 200 ? 200 : t->name.len), t->name.s);
    if (get_u32(c, &t->n_dims, what))
        return -1;
    if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
        return fail(c, "%s has %u dimensions (1..%d allowed)", what, t->n_dims, GGUF_MAX_DIMS);
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++)
        if (get_u64(c, &t->ne[d], what))
            return -1;
    if (get_u32(c, &t->type, what) || get_u64(c, offset, what))
        return -1;
    char tb[32];
    const type_info *ti = ggml_info(t->type);
    if (!ti)
        return fail(c, "%s has unknown ggml type %u", what, t->type);
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (t->ne[d] == 0 || n > UINT64_MAX / 2 / t->ne[d])
            return fail(c, "%s has an impossible dimension %llu", what, (unsigned long long)t->ne[d]);
        n *= t->ne[d];
    }
    if (t->ne[0] % ti->block_elems)
        return fail(c, "%s: its rows of %llu elements are not whole %s blocks of %u", what,
                    (unsigned long long)t->ne[0], sn_ggml_type_name(t->type, tb, sizeof tb), ti->block_elems);
    t->nbytes = n / ti->block_elems * ti->block_bytes;
    return 0;
}

int sn_gguf_open(const char *path, sn_gguf **out, char *err, size_t errlen)
{
    *out = NULL;
    cursor c = {.path = path, .err = err, .errlen = errlen};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(&c, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(&c, "not a regular file");
    }
    size_t size = (size_t)st.st_size;
    if (size < 24) {
        close(fd);
        return fail(&c, "truncated: %zu bytes, a GGUF header alone is 24", size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return fail(&c, "cannot map: %s", strerror(errno));
    sn_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        munmap(map, size);
        return fail(&c, "out of memory");
    }
    g->map = map;
    g->size = size;
    c.base = c.p = g->map;
    c.end = g->map + size;

    if (memcmp(g->map, "GGUF", 4) != 0) {
        fail(&c, "not a GGUF file (magic %02x %02x %02x %02x, expected \"GGUF\")", g->map[0],
             g->map[1], g->map[2], g->map[3]);
        goto bad;
    }
    c.p += 4;
    if (get_u32(&c, &g->version, "the version"))
        goto bad;
    if (g->version != 2 && g->version != 3) {
        fail(&c, "GGUF version %u; this reader takes versions 2 and 3", g->version);
        goto bad;
    }
    if (get_u64(&c, &g->n_tensors, "the tensor count") || get_u64(&c, &g->n_kv, "the metadata count"))
        goto bad;
    /* Each entry takes at least 8 (name length) + 4 (type) bytes; a tensor at least 8+4+8+4+8. */
    if (g->n_kv > left(&c) / 12 || g->n_tensors > left(&c) / 32) {
        fail(&c, "header claims %llu metadata entries and %llu tensors, more than the file's %zu bytes can hold",
             (unsigned long long)g->n_kv, (unsigned long long)g->n_tensors, size);
        goto bad;
    }
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    uint64_t *offsets = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *offsets);
    if (!g->kv || !g->tensors || !offsets) {
        free(offsets);
        fail(&c, "out of memory");
        goto bad;
    }
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (parse_kv(&c, &g->kv[i], i)) {
            free(offsets);
            goto bad;
        }
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t align;
    if (sn_gguf_get_int(g, "general.alignment", &align) == 0) {
        if (align <= 0 || align > (1 << 20) || (align & (align - 1))) {
            free(offsets);
            fail(&c, "general.alignment = %lld is not a power of two", (long long)align);
            goto bad;
        }
        g->alignment = (uint32_t)align;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (parse_tensor(&c, &g->tensors[i], i, &offsets[i])) {
            free(offsets);
            goto bad;
        }
    size_t data_start = (size_t)(c.p - g->map);
    data_start = (data_start + g->alignment - 1) / g->alignment * g->alignment;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        sn_gguf_tensor *t = &g->tensors[i];
        if (offsets[i] % g->alignment || offsets[i] > size || data_start > size - offsets[i] ||
            t->nbytes > size - data_start - offsets[i]) {
            fail(&c, "tensor '%.*s': its %llu bytes at data offset %llu lie outside the file (%zu bytes, data from %zu)%s",
                 (int)(t->name.len > 200 ? 200 : t->name.len), t->name.s, (unsigned long long)t->nbytes,
                 (unsigned long long)offsets[i], size, data_start,
                 offsets[i] % g->alignment ? ", and the offset is misaligned" : "");
            free(offsets);
            goto bad;
        }
        t->data = g->map + data_start + offsets[i];
    }
    free(offsets);
    *out = g;
    return 0;
bad:
    sn_gguf_close(g);
    return -1;
}

void sn_gguf_close(sn_gguf *g)
{
    if (!g)
        return;
    if (g->map)
        munmap((void *)g->map, g->size);
    free(g->kv);
    free(g->tensors);
    free(g->path);
    free(g);
}

/* ---------------------------------------------------------------------------------------- */
/* Look-ups                                                                                 */
/* ---------------------------------------------------------------------------------------- */

static int str_is(sn_gguf_str s, const char *z)
{
    size_t n = strlen(z);
    return s.len == n && memcmp(s.s, z, n) == 0;
}

const sn_gguf_kv *sn_gguf_find(const sn_gguf *g, const char *key)
{
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (str_is(g->kv[i].key, key))
            return &g->kv[i];
    return NULL;
}

const sn_gguf_tensor *sn_gguf_tensor_find(const sn_gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (str_is(g->tensors[i].name, name))
            return &g->tensors[i];
    return NULL;
}

/* A scalar of an integer type at p as int64; -1 when the type is not an integer or the value
 * does not fit. */
static int read_int(uint32_t type, const uint8_t *p, int64_t *out)
{
    uint64_t u = 0;
    size_t n = scalar_size(type);
    for (size_t i = n; i-- > 0;)
        u = u << 8 | p[i];
    switch (type) {
    case SN_GGUF_UINT8: case SN_GGUF_UINT16: case SN_GGUF_UINT32: *out = (int64_t)u; return 0;
    case SN_GGUF_UINT64: if (u > INT64_MAX) return -1; *out = (int64_t)u; return 0;
    case SN_GGUF_INT8: *out = (int8_t)u; return 0;
    case SN_GGUF_INT16: *out = (int16_t)u; return 0;
    case SN_GGUF_INT32: *out = (int32_t)u; return 0;
    case SN_GGUF_INT64: memcpy(out, &u, 8); return 0;
    }
    return -1;
}

static double read_float(uint32_t type, const uint8_t *p)
{
    if (type == SN_GGUF_FLOAT32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    double d;
    memcpy(&d, p, 8);
    return d;
}

int sn_gguf_get_int(const sn_gguf *g, const char *key, int64_t *out)
{
    const sn_gguf_kv *kv = sn_gguf_find(g, key);
    return kv ? read_int(kv->type, kv->value, out) : -1;
}

int sn_gguf_get_float(const sn_gguf *g, const char *key, double *out)
{
    const sn_gguf_kv *kv = sn_gguf_find(g, key);
    if (!kv || (kv->type != SN_GGUF_FLOAT32 && kv->type != SN_GGUF_FLOAT64))
        return -1;
    *out = read_float(kv->type, kv->value);
    return 0;
}

int sn_gguf_get_bool(const sn_gguf *g, const char *key, int *out)
{
    const sn_gguf_kv *kv = sn_gguf_find(g, key);
    if (!kv || kv->type != SN_GGUF_BOOL)
        return -1;
    *out = kv->value[0] != 0;
    return 0;
}

int sn_gguf_get_str(const sn_gguf *g, const char *key, sn_gguf_str *out)
{
    const sn_gguf_kv *kv = sn_gguf_find(g, key);
    if (!kv || kv->type != SN_GGUF_STRING)
        return -1;
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--)
        len = len << 8 | kv->value[i];
    out->s = (const char *)kv->value + 8;
    out->len = len;
    return 0;
}

int sn_gguf_array_strings(const sn_gguf_kv *kv, sn_gguf_str *out)
{
    if (kv->type != SN_GGUF_ARRAY || kv->arr_type != SN_GGUF_STRING)
        return -1;
    const uint8_t *p = kv->value;
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        uint64_t len = 0;
        for (int b = 7; b >= 0; b--)
            len = len << 8 | p[b];
        out[i].s = (const char *)p + 8;
        out[i].len = len;
        p += 8 + len;
    }
    return 0;
}

int64_t sn_gguf_array_int(const sn_gguf_kv *kv, uint64_t i)
{
    int64_t v = 0;
    read_int(kv->arr_type, kv->value + i * scalar_size(kv->arr_type), &v);
    return v;
}

double sn_gguf_array_float(const sn_gguf_kv *kv, uint64_t i)
{
    if (kv->arr_type == SN_GGUF_FLOAT32 || kv->arr_type == SN_GGUF_FLOAT64)
        return read_float(kv->arr_type, kv->value + i * scalar_size(kv->arr_type));
    return (double)sn_gguf_array_int(kv, i);
}
