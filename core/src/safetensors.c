/*
 * safetensors.c - one .safetensors file, memory-mapped: the header parsed with jansson and
 * every tensor checked (dtype, shape, byte range) before model_loader.c binds it.
 *
 * Everything here comes from outside (a download, perhaps cut short), so every field is
 * checked and every failure is a message naming the file and the tensor. Offsets and sizes
 * are 64-bit and every product is checked for overflow before it is compared with the file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"

#define MAX_DIMS 4

void sn_st_close(sn_st_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->size);
    for (size_t i = 0; i < f->n; i++)
        free((char *)f->tensors[i].name);
    free(f->tensors);
    for (size_t i = 0; i < f->n_copies; i++)
        free(f->copies[i]);
    free(f->copies);
    free(f->path);
    memset(f, 0, sizeof *f);
}

static int parse_dtype(const char *s, sn_dtype *out)
{
    if (strcmp(s, "F32") == 0)
        *out = SN_DTYPE_F32;
    else if (strcmp(s, "F16") == 0)
        *out = SN_DTYPE_F16;
    else if (strcmp(s, "BF16") == 0)
        *out = SN_DTYPE_BF16;
    else
        return 0;
    return 1;
}

/* "(a, b, c)" for messages. */
static void shape_str(const int64_t *shape, int ndim, char *buf, size_t cap)
{
    size_t len = (size_t)snprintf(buf, cap, "(");
    for (int k = 0; k < ndim && len < cap; k++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", k ? ", " : "", (long long)shape[k]);
    if (len < cap)
        snprintf(buf + len, cap - len, ")");
}

/* Checks one header entry against the data section (data_size bytes at data) and fills t,
 * except its name. */
static sn_status read_entry(const sn_st_file *f, const char *name, json_t *e, const unsigned char *data,
                            uint64_t data_size, uint64_t data_start, sn_tensor *t)
{
    const char *path = f->path;
    if (!json_is_object(e))
        return sn_fail(SN_ERR_FORMAT, "%s: tensor '%s': its header entry is not a JSON object", path, name);
    json_t *dt = json_object_get(e, "dtype"), *shape = json_object_get(e, "shape"),
           *offs = json_object_get(e, "data_offsets");

    if (!json_is_string(dt))
        return sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' has no \"dtype\" string", path, name);
    if (!parse_dtype(json_string_value(dt), &t->dtype))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s; Sensorium reads F32, F16 and BF16", path,
                       name, json_string_value(dt));

    if (!json_is_array(shape))
        return sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' has no \"shape\" list", path, name);
    if (json_array_size(shape) > MAX_DIMS)
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: tensor '%s' has %zu dimensions; Sensorium reads at most %d", path,
                       name, json_array_size(shape), MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    uint64_t numel = 1;
    int overflow = 0;
    for (int k = 0; k < t->ndim; k++) {
        json_t *v = json_array_get(shape, (size_t)k);
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return sn_fail(SN_ERR_FORMAT, "%s: tensor '%s': shape entry %d is not a non-negative integer", path,
                           name, k);
        t->shape[k] = json_integer_value(v);
        uint64_t d = (uint64_t)t->shape[k];
        if (d && numel > UINT64_MAX / d)
            overflow = 1;
        else
            numel *= d;
    }
    char shp[128];
    shape_str(t->shape, t->ndim, shp, sizeof shp);
    const uint64_t esize = sn_dtype_size(t->dtype);
    if (overflow || numel > UINT64_MAX / esize)
        return sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' has shape %s, too large for any file", path, name, shp);
    const uint64_t need = numel * esize;

    json_t *o0 = json_array_get(offs, 0), *o1 = json_array_get(offs, 1);
    if (!json_is_array(offs) || json_array_size(offs) != 2 || !json_is_integer(o0) || !json_is_integer(o1) ||
        json_integer_value(o0) < 0 || json_integer_value(o1) < json_integer_value(o0))
        return sn_fail(SN_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" must be [begin, end] with 0 <= begin <= end",
                       path, name);
    const uint64_t begin = (uint64_t)json_integer_value(o0), end = (uint64_t)json_integer_value(o1);
    if (end - begin != need)
        return sn_fail(SN_ERR_FORMAT,
                       "%s: tensor '%s' has data_offsets [%llu, %llu] (%llu bytes) but shape %s in %s needs %llu "
                       "bytes",
                       path, name, (unsigned long long)begin, (unsigned long long)end,
                       (unsigned long long)(end - begin), shp, sn_dtype_name(t->dtype), (unsigned long long)need);
    /* end <= 2^63 and data_start <= the file size, so the sum cannot wrap */
    if (end > data_size)
        return sn_fail(SN_ERR_FORMAT,
                       "%s: tensor '%s' ends at byte %llu, past the file's %zu bytes (truncated download?)", path,
                       name, (unsigned long long)(data_start + end), f->size);
    t->data = data + begin;
    t->nbytes = (size_t)need;
    t->file = f->path;
    return SN_OK;
}

/* Backends read F32 weights in place as float *, so a tensor the file leaves misaligned for
 * its element size (a header not padded to 8 bytes, say) is copied once to aligned memory. */
static sn_status align_tensor(sn_st_file *f, sn_tensor *t)
{
    if (t->nbytes == 0 || (uintptr_t)t->data % sn_dtype_size(t->dtype) == 0)
        return SN_OK;
    void **copies = realloc(f->copies, (f->n_copies + 1) * sizeof *copies);
    if (!copies)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    f->copies = copies;
    void *p = malloc(t->nbytes); /* malloc's alignment suits every dtype */
    if (!p)
        return sn_fail(SN_ERR_NOMEM, "%s: out of memory copying tensor '%s' (%zu bytes) to aligned memory", f->path,
                       t->name, t->nbytes);
    memcpy(p, t->data, t->nbytes);
    f->copies[f->n_copies++] = p;
    t->data = p;
    return SN_OK;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const sn_tensor *)a)->name, ((const sn_tensor *)b)->name);
}

/* Maps the file; on success f->map and f->size describe it. */
static sn_status map_file(sn_st_file *f)
{
    int fd = open(f->path, O_RDONLY);
    if (fd < 0)
        return sn_fail(errno == ENOENT ? SN_ERR_NOT_FOUND : SN_ERR_IO, "%s: cannot open: %s", f->path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return sn_fail(SN_ERR_IO, "%s: cannot stat: %s", f->path, strerror(err));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return sn_fail(SN_ERR_IO, "%s: not a regular file", f->path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return sn_fail(SN_ERR_FORMAT,
                       "%s: truncated file: %lld bytes, too short for the 8-byte header length (truncated download?)",
                       f->path, (long long)sb.st_size);
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd); /* the mapping keeps the file */
    if (map == MAP_FAILED)
        return sn_fail(SN_ERR_IO, "%s: cannot map %lld bytes: %s", f->path, (long long)sb.st_size, strerror(err));
    f->map = map;
    f->size = (size_t)sb.st_size;
    return SN_OK;
}

sn_status sn_st_open(const char *path, sn_st_file *f)
{
    memset(f, 0, sizeof *f);
    if (!(f->path = sn_strdup(path)))
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    sn_status st = map_file(f);
    if (st != SN_OK) {
        sn_st_close(f);
        return st;
    }
    const unsigned char *b = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | b[i];
    if (hlen > f->size - 8) {
        st = sn_fail(SN_ERR_FORMAT,
                     "%s: truncated file: the header length says %llu bytes but only %zu follow it "
                     "(truncated download?)",
                     path, (unsigned long long)hlen, f->size - 8);
        sn_st_close(f);
        return st;
    }
    json_error_t jerr;
    json_t *hdr = json_loadb((const char *)b + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!hdr) {
        st = sn_fail(SN_ERR_FORMAT, "%s: malformed header JSON at line %d column %d: %s", path, jerr.line,
                     jerr.column, jerr.text);
        sn_st_close(f);
        return st;
    }
    if (!json_is_object(hdr)) {
        st = sn_fail(SN_ERR_FORMAT, "%s: the header is not a JSON object", path);
        goto out;
    }
    const uint64_t data_start = 8 + hlen, data_size = f->size - data_start;
    if (!(f->tensors = calloc(json_object_size(hdr) + 1, sizeof *f->tensors))) {
        st = sn_fail(SN_ERR_NOMEM, "out of memory");
        goto out;
    }
    const char *name;
    json_t *e;
    json_object_foreach(hdr, name, e) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        sn_tensor *t = &f->tensors[f->n];
        if ((st = read_entry(f, name, e, b + data_start, data_size, data_start, t)) != SN_OK)
            goto out;
        if (!(t->name = sn_strdup(name))) {
            st = sn_fail(SN_ERR_NOMEM, "out of memory");
            goto out;
        }
        f->n++;
        if ((st = align_tensor(f, t)) != SN_OK)
            goto out;
    }
    qsort(f->tensors, f->n, sizeof *f->tensors, by_name);
out:
    json_decref(hdr);
    if (st != SN_OK)
        sn_st_close(f);
    return st;
}

const sn_tensor *sn_st_find(const sn_st_file *f, const char *name)
{
    if (!f->n)
        return NULL;
    sn_tensor key = {.name = name};
    return bsearch(&key, f->tensors, f->n, sizeof *f->tensors, by_name);
}

/* ---------------------------------------------------------------------------------------- */
/* Writing                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Writes len bytes, naming the file and tensor on failure (a full disk, mostly). */
static sn_status write_all(FILE *fp, const char *path, const char *what, const void *p, size_t len)
{
    if (len && fwrite(p, 1, len, fp) != len)
        return sn_fail(SN_ERR_IO, "%s: cannot write %s: %s", path, what, strerror(errno));
    return SN_OK;
}

/* The header: every tensor's dtype, shape and data_offsets, in the given order, padded with
 * spaces to a multiple of 8. */
static sn_status build_header(const char *path, const sn_st_out *ts, size_t n, char **text, size_t *len)
{
    json_t *hdr = json_object(), *meta = json_object();
    if (!hdr || !meta || json_object_set_new(meta, "format", json_string("pt")) ||
        json_object_set_new(hdr, "__metadata__", meta)) {
        json_decref(hdr);
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    }
    uint64_t off = 0;
    sn_status st = SN_OK;
    for (size_t i = 0; i < n && st == SN_OK; i++) {
        const sn_st_out *t = &ts[i];
        uint64_t numel = 1;
        json_t *shape = json_array(), *e = json_object();
        const int ndim = t->ndim < 0 ? 0 : t->ndim > MAX_DIMS ? MAX_DIMS : t->ndim;
        for (int k = 0; k < ndim; k++) {
            numel *= (uint64_t)t->shape[k];
            json_array_append_new(shape, json_integer(t->shape[k]));
        }
        const uint64_t bytes = (uint64_t)t->nbytes + t->tail_bytes;
        const int plain = t->dtype == SN_DTYPE_F32 || t->dtype == SN_DTYPE_F16 || t->dtype == SN_DTYPE_BF16;
        if (ndim != t->ndim || !plain || numel * sn_dtype_size(t->dtype) != bytes || (t->tail_bytes && !t->tail))
            st = sn_fail(SN_ERR_INVALID_ARG, "%s: tensor '%s': %llu bytes given for its %s shape", path, t->name,
                         (unsigned long long)bytes, sn_dtype_name(t->dtype));
        else if (json_object_get(hdr, t->name))
            st = sn_fail(SN_ERR_INVALID_ARG, "%s: tensor '%s' given twice", path, t->name);
        json_t *offs = json_pack("[I, I]", (json_int_t)off, (json_int_t)(off + bytes));
        if (st == SN_OK && (!shape || !e || !offs || json_object_set_new(e, "dtype", json_string(sn_dtype_name(t->dtype))) ||
                            json_object_set(e, "shape", shape) || json_object_set(e, "data_offsets", offs) ||
                            json_object_set(hdr, t->name, e)))
            st = sn_fail(SN_ERR_NOMEM, "out of memory");
        json_decref(shape);
        json_decref(offs);
        json_decref(e);
        off += bytes;
    }
    char *s = st == SN_OK ? json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(hdr);
    if (st != SN_OK)
        return st;
    size_t slen = s ? strlen(s) : 0, padded = (slen + 7) / 8 * 8;
    char *p = s ? realloc(s, padded + 1) : NULL;
    if (!p) {
        free(s);
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    }
    memset(p + slen, ' ', padded - slen);
    p[padded] = '\0';
    *text = p;
    *len = padded;
    return SN_OK;
}

sn_status sn_st_write(const char *path, const sn_st_out *tensors, size_t n, sn_st_progress_fn progress, void *ctx)
{
    char *hdr = NULL;
    size_t hlen = 0;
    sn_status st = build_header(path, tensors, n, &hdr, &hlen);
    if (st != SN_OK)
        return st;
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        st = sn_fail(SN_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        free(hdr);
        return st;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    if ((st = write_all(fp, path, "the header", len8, 8)) == SN_OK)
        st = write_all(fp, path, "the header", hdr, hlen);
    free(hdr);
    for (size_t i = 0; i < n && st == SN_OK; i++) {
        char what[300];
        snprintf(what, sizeof what, "tensor '%s'", tensors[i].name);
        if ((st = write_all(fp, path, what, tensors[i].data, tensors[i].nbytes)) == SN_OK)
            st = write_all(fp, path, what, tensors[i].tail, tensors[i].tail_bytes);
        if (st == SN_OK && progress)
            progress(ctx, i + 1, n);
    }
    /* the data must be on disk before a caller renames the file into place */
    if (st == SN_OK && (fflush(fp) != 0 || fsync(fileno(fp)) != 0))
        st = sn_fail(SN_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    if (fclose(fp) != 0 && st == SN_OK)
        st = sn_fail(SN_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    if (st != SN_OK)
        remove(path);
    return st;
}
