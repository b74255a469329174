/*
 * model_loader.c - a Llama-family model from disk: the configuration (config.json, or the
 * "architecture" of sensorium.json) and the weights, memory-mapped from safetensors files and
 * bound tensor by tensor with their shapes checked (see model.h for the layouts).
 *
 * Every way a download can be broken is an error naming the file and the tensor: a header
 * length past the end, malformed header JSON (with line and column), an unsupported dtype, a
 * tensor whose bytes lie outside the file, a shape that does not match the configuration, a
 * missing tensor.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"

/* ---------------------------------------------------------------------------------------- */
/* dtypes                                                                                   */
/* ---------------------------------------------------------------------------------------- */

size_t sn_dtype_size(sn_dtype d) { return d == SN_DTYPE_F32 ? 4 : 2; }

const char *sn_dtype_name(sn_dtype d)
{
    switch (d) {
    case SN_DTYPE_F32: return "F32";
    case SN_DTYPE_F16: return "F16";
    case SN_DTYPE_BF16: return "BF16";
    }
    return "?";
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0)
            bits = sign;
        else { /* subnormal: renormalise */
            int e = -1;
            do {
                man <<= 1;
                e++;
            } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3FF) << 13;
        }
    } else if (exp == 31)
        bits = sign | 0x7F800000u | man << 13;
    else
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void sn_convert_to_f32(sn_dtype dtype, const void *src, float *dst, size_t n)
{
    const unsigned char *s = src;
    switch (dtype) {
    case SN_DTYPE_F32:
        memcpy(dst, src, n * 4);
        return;
    case SN_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = half_to_float(h);
        }
        return;
    case SN_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&dst[i], &bits, 4);
        }
        return;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* safetensors files                                                                        */
/* ---------------------------------------------------------------------------------------- */

typedef struct st_file {
    char *path;
    void *map;
    size_t size;
    sn_tensor *tensors; /* (n) */
    size_t n;
} st_file;

struct sn_model {
    sn_model_config cfg;
    st_file *files; /* (n_files) */
    size_t n_files;
    const sn_tensor *embed, *norm, *lm_head;
    sn_layer_weights *layers; /* (n_layers) */
};

static void st_close(st_file *f)
{
    if (f->map && f->map != MAP_FAILED)
        munmap(f->map, f->size);
    for (size_t i = 0; i < f->n; i++)
        free((char *)f->tensors[i].name);
    free(f->tensors);
    free(f->path);
    memset(f, 0, sizeof *f);
}

/* Maps path and reads its header into f; every tensor checked against the file's size. */
static sn_status st_open(const char *path, st_file *f)
{
    memset(f, 0, sizeof *f);
    f->path = sn_strdup(path);
    if (!f->path)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return sn_fail(SN_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        close(fd);
        return sn_fail(SN_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    f->size = (size_t)sb.st_size;
    if (f->size < 8) {
        close(fd);
        return sn_fail(SN_ERR_FORMAT, "%s: truncated file: %zu bytes, too short for a safetensors header", path, f->size);
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        return sn_fail(SN_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
    }
    const unsigned char *b = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | b[i];
    if (hlen > f->size - 8)
        return sn_fail(SN_ERR_FORMAT, "%s: truncated file: the header says %llu bytes but only %zu follow",
                       path, (unsigned long long)hlen, f->size - 8);
    json_error_t jerr;
    json_t *hdr = json_loadb((const char *)b + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!hdr)
        return sn_fail(SN_ERR_FORMAT, "%s: malformed header JSON at line %d column %d: %s", path,
                       jerr.line, jerr.column, jerr.text);
    sn_status st = SN_OK;
    if (!json_is_object(hdr)) {
        st = sn_fail(SN_ERR_FORMAT, "%s: the header is not a JSON object", path);
        goto out;
    }
    size_t data_size = f->size - 8 - (size_t)hlen;
    f->tensors = calloc(json_object_size(hdr) + 1, sizeof *f->tensors);
    if (!f->tensors) {
        st = sn_fail(SN_ERR_NOMEM, "out of memory");
        goto out;
    }
    const char *name;
    json_t *e;
    json_object_foreach(hdr, name, e) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        json_t *dt = json_object_get(e, "dtype"), *shape = json_object_get(e, "shape"),
               *offs = json_object_get(e, "data_offsets");
        if (!json_is_object(e) || !json_is_string(dt) || !json_is_array(shape) || !json_is_array(offs) ||
            json_array_size(offs) != 2) {
            st = sn_fail(SN_ERR_FORMAT, "%s: tensor '%s': header entry lacks dtype, shape or data_offsets", path, name);
            goto out;
        }
        sn_tensor *t = &f->tensors[f->n];
        const char *d = json_string_value(dt);
        if (strcmp(d, "F32") == 0) t->dtype = SN_DTYPE_F32;
        else if (strcmp(d, "F16") == 0) t->dtype = SN_DTYPE_F16;
        else if (strcmp(d, "BF16") == 0) t->dtype = SN_DTYPE_BF16;
        else {
            st = sn_fail(SN_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s; Sensorium reads F32, F16 and BF16",
                         path, name, d);
            goto out;
        }
        if (json_array_size(shape) > 4) {
            st = sn_fail(SN_ERR_UNSUPPORTED, "%s: tensor '%s' has %zu dimensions; at most 4 are supported",
                         path, name, json_array_size(shape));
            goto out;
        }
        uint64_t numel = 1;
        t->ndim = (int)json_array_size(shape);
        for (int k = 0; k < t->ndim; k++) {
            json_t *v = json_array_get(shape, (size_t)k);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                (json_integer_value(v) > 0 && numel > UINT64_MAX / 8 / (uint64_t)json_integer_value(v))) {
                st = sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' has a bad shape", path, name);
                goto out;
            }
            t->shape[k] = json_integer_value(v);
            numel *= (uint64_t)t->shape[k];
        }
        json_t *o0 = json_array_get(offs, 0), *o1 = json_array_get(offs, 1);
        if (!json_is_integer(o0) || !json_is_integer(o1) || json_integer_value(o0) < 0 ||
            json_integer_value(o1) < json_integer_value(o0)) {
            st = sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' has bad data_offsets", path, name);
            goto out;
        }
        uint64_t begin = (uint64_t)json_integer_value(o0), end = (uint64_t)json_integer_value(o1);
        if (end - begin != numel * sn_dtype_size(t->dtype)) {
            st = sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' spans %llu bytes but its shape and dtype need %llu",
                         path, name, (unsigned long long)(end - begin),
                         (unsigned long long)(numel * sn_dtype_size(t->dtype)));
            goto out;
        }
        if (end > data_size) {
            st = sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' ends at byte %llu, past the file's %zu bytes (truncated download?)",
                         path, name, (unsigned long long)(8 + hlen + end), f->size);
            goto out;
        }
        t->name = sn_strdup(name);
        if (!t->name) {
            st = sn_fail(SN_ERR_NOMEM, "out of memory");
            goto out;
        }
        t->data = b + 8 + hlen + begin;
        t->nbytes = (size_t)(end - begin);
        t->file = f->path;
        f->n++;
    }
out:
    json_decref(hdr);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration                                                                            */
/* ---------------------------------------------------------------------------------------- */

static sn_status cfg_int(json_t *o, const char *src, const char *key, int required, int32_t dflt,
                         int32_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required)
            return sn_fail(SN_ERR_CONFIG, "%s: missing '%s'", src, key);
        *out = dflt;
        return SN_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > INT32_MAX)
        return sn_fail(SN_ERR_CONFIG, "%s: '%s' must be a positive integer", src, key);
    *out = (int32_t)json_integer_value(v);
    return SN_OK;
}

static sn_status cfg_num(json_t *o, const char *src, const char *key, double dflt, float *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = (float)dflt;
        return SN_OK;
    }
    if (!json_is_number(v) || !(json_number_value(v) > 0))
        return sn_fail(SN_ERR_CONFIG, "%s: '%s' must be a positive number", src, key);
    *out = (float)json_number_value(v);
    return SN_OK;
}

sn_status sn_model_config_parse(json_t *o, const char *src, sn_model_config *c)
{
    memset(c, 0, sizeof *c);
    if (!json_is_object(o))
        return sn_fail(SN_ERR_CONFIG, "%s: the architecture must be a JSON object", src);
    json_t *mt = json_object_get(o, "model_type");
    if (mt && json_is_string(mt) && strcmp(json_string_value(mt), "llama") != 0 &&
        strcmp(json_string_value(mt), "mistral") != 0 && strcmp(json_string_value(mt), "qwen2") != 0)
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: model_type '%s' is not a Llama-family model", src,
                       json_string_value(mt));
    sn_status st;
    if ((st = cfg_int(o, src, "vocab_size", 1, 0, &c->vocab_size)) ||
        (st = cfg_int(o, src, "hidden_size", 1, 0, &c->hidden)) ||
        (st = cfg_int(o, src, "intermediate_size", 1, 0, &c->intermediate)) ||
        (st = cfg_int(o, src, "num_hidden_layers", 1, 0, &c->n_layers)) ||
        (st = cfg_int(o, src, "num_attention_heads", 1, 0, &c->n_heads)) ||
        (st = cfg_int(o, src, "num_key_value_heads", 0, c->n_heads, &c->n_kv_heads)) ||
        (st = cfg_int(o, src, "max_position_embeddings", 0, 2048, &c->max_positions)))
        return st;
    if (c->hidden % c->n_heads && !json_object_get(o, "head_dim"))
        return sn_fail(SN_ERR_CONFIG, "%s: hidden_size %d is not a multiple of num_attention_heads %d (give head_dim)",
                       src, c->hidden, c->n_heads);
    if ((st = cfg_int(o, src, "head_dim", 0, c->hidden / c->n_heads, &c->head_dim)) ||
        (st = cfg_num(o, src, "rms_norm_eps", 1e-6, &c->rms_eps)) ||
        (st = cfg_num(o, src, "rope_theta", 10000.0, &c->rope_theta)))
        return st;
    if (c->n_heads % c->n_kv_heads)
        return sn_fail(SN_ERR_CONFIG, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       src, c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2)
        return sn_fail(SN_ERR_CONFIG, "%s: head_dim %d is odd; rotary embeddings need pairs", src, c->head_dim);
    json_t *tie = json_object_get(o, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie))
        return sn_fail(SN_ERR_CONFIG, "%s: 'tie_word_embeddings' must be true or false", src);
    c->tie_embeddings = tie && json_is_true(tie);
    json_t *rs = json_object_get(o, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        json_t *type = json_object_get(rs, "rope_type");
        if (!type)
            type = json_object_get(rs, "type");
        if (!json_is_string(type) || strcmp(json_string_value(type), "llama3") != 0)
            return sn_fail(SN_ERR_UNSUPPORTED, "%s: rope_scaling type %s is not supported (only llama3)", src,
                           json_is_string(type) ? json_string_value(type) : "(missing)");
        c->rope_llama3 = 1;
        if ((st = cfg_num(rs, src, "factor", 8.0, &c->rope_factor)) ||
            (st = cfg_num(rs, src, "low_freq_factor", 1.0, &c->rope_low_freq_factor)) ||
            (st = cfg_num(rs, src, "high_freq_factor", 4.0, &c->rope_high_freq_factor)) ||
            (st = cfg_int(rs, src, "original_max_position_embeddings", 0, 8192, &c->rope_original_max_positions)))
            return st;
        if (c->rope_high_freq_factor <= c->rope_low_freq_factor)
            return sn_fail(SN_ERR_CONFIG, "%s: rope_scaling high_freq_factor must exceed low_freq_factor", src);
    }
    return SN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Binding                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static const sn_tensor *find_tensor(const sn_model *m, const char *name)
{
    for (size_t f = 0; f < m->n_files; f++)
        for (size_t i = 0; i < m->files[f].n; i++)
            if (strcmp(m->files[f].tensors[i].name, name) == 0)
                return &m->files[f].tensors[i];
    return NULL;
}

/* The tensor name with shape (rows[, cols]) (cols 0: a vector). */
static sn_status bind(const sn_model *m, const char *where, const char *name, int64_t rows,
                      int64_t cols, const sn_tensor **out)
{
    const sn_tensor *t = find_tensor(m, name);
    if (!t)
        return sn_fail(SN_ERR_FORMAT, "%s: missing tensor '%s'", where, name);
    int ok = cols ? (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols)
                  : (t->ndim == 1 && t->shape[0] == rows);
    if (!ok) {
        char got[96] = "";
        for (int k = 0; k < t->ndim; k++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", k ? ", " : "", (long long)t->shape[k]);
        if (cols)
            return sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' has shape (%s), the configuration implies (%lld, %lld)",
                           t->file, name, got, (long long)rows, (long long)cols);
        return sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' has shape (%s), the configuration implies (%lld)",
                       t->file, name, got, (long long)rows);
    }
    *out = t;
    return SN_OK;
}

static sn_status bind_all(sn_model *m, const char *where)
{
    const sn_model_config *c = &m->cfg;
    const int64_t H = c->hidden, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    sn_status st;
    if ((st = bind(m, where, "model.embed_tokens.weight", c->vocab_size, H, &m->embed)) ||
        (st = bind(m, where, "model.norm.weight", H, 0, &m->norm)))
        return st;
    if (c->tie_embeddings)
        m->lm_head = m->embed;
    else if ((st = bind(m, where, "lm_head.weight", c->vocab_size, H, &m->lm_head)))
        return st;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    for (int32_t l = 0; l < c->n_layers; l++) {
        sn_layer_weights *w = &m->layers[l];
        char n[128];
#define BIND(field, suffix, rows, cols)                                          \
    snprintf(n, sizeof n, "model.layers.%d.%s.weight", l, suffix);               \
    if ((st = bind(m, where, n, rows, cols, &w->field)) != SN_OK)                \
        return st;
        BIND(attn_norm, "input_layernorm", H, 0)
        BIND(wq, "self_attn.q_proj", q, H)
        BIND(wk, "self_attn.k_proj", kv, H)
        BIND(wv, "self_attn.v_proj", kv, H)
        BIND(wo, "self_attn.o_proj", H, q)
        BIND(ffn_norm, "post_attention_layernorm", H, 0)
        BIND(w_gate, "mlp.gate_proj", c->intermediate, H)
        BIND(w_up, "mlp.up_proj", c->intermediate, H)
        BIND(w_down, "mlp.down_proj", H, c->intermediate)
#undef BIND
    }
    return SN_OK;
}

/* Maps the files of the weights entry: one .safetensors, or an index naming the shards. */
static sn_status open_weights(sn_model *m, const char *dir, const char *weights)
{
    sn_str path = {0};
    sn_status st = sn_str_printf(&path, "%s/%s", dir, weights);
    if (st != SN_OK)
        return st;
    size_t len = strlen(weights);
    if (len > 5 && strcmp(weights + len - 5, ".json") == 0) {
        json_error_t jerr;
        json_t *idx = json_load_file(path.s, JSON_REJECT_DUPLICATES, &jerr);
        if (!idx) {
            st = sn_fail(SN_ERR_FORMAT, "%s:%d:%d: %s", path.s, jerr.line, jerr.column, jerr.text);
            goto out;
        }
        json_t *map = json_object_get(idx, "weight_map");
        if (!json_is_object(map)) {
            st = sn_fail(SN_ERR_FORMAT, "%s: no 'weight_map' object", path.s);
            json_decref(idx);
            goto out;
        }
        /* distinct shard names, in first-seen order */
        const char *tname;
        json_t *shard;
        m->files = calloc(json_object_size(map) + 1, sizeof *m->files);
        if (!m->files) {
            json_decref(idx);
            st = sn_fail(SN_ERR_NOMEM, "out of memory");
            goto out;
        }
        json_object_foreach(map, tname, shard) {
            if (!json_is_string(shard)) {
                st = sn_fail(SN_ERR_FORMAT, "%s: weight_map['%s'] is not a file name", path.s, tname);
                break;
            }
            sn_str sp = {0};
            if ((st = sn_str_printf(&sp, "%s/%s", dir, json_string_value(shard))) != SN_OK)
                break;
            int seen = 0;
            for (size_t f = 0; f < m->n_files && !seen; f++)
                seen = strcmp(m->files[f].path, sp.s) == 0;
            if (!seen) {
                st = st_open(sp.s, &m->files[m->n_files]);
                m->n_files++;
            }
            sn_str_free(&sp);
            if (st != SN_OK)
                break;
        }
        json_decref(idx);
    } else {
        m->files = calloc(1, sizeof *m->files);
        if (!m->files) {
            st = sn_fail(SN_ERR_NOMEM, "out of memory");
            goto out;
        }
        m->n_files = 1;
        st = st_open(path.s, &m->files[0]);
    }
out:
    sn_str_free(&path);
    return st;
}

sn_status sn_model_open(const char *dir, sn_model **out)
{
    sn_clear_error();
    *out = NULL;
    sn_model *m = calloc(1, sizeof *m);
    if (!m)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    sn_str path = {0};
    sn_status st = sn_str_printf(&path, "%s/sensorium.json", dir);
    json_t *root = NULL;
    const char *weights = NULL;
    char where[1024];
    if (st != SN_OK)
        goto fail;
    FILE *probe = fopen(path.s, "rb");
    json_error_t jerr;
    if (probe) {
        fclose(probe);
        if (!(root = json_load_file(path.s, JSON_REJECT_DUPLICATES, &jerr))) {
            st = sn_fail(SN_ERR_FORMAT, "%s:%d:%d: malformed JSON: %s", path.s, jerr.line, jerr.column, jerr.text);
            goto fail;
        }
        json_t *arch = json_object_get(root, "architecture");
        json_t *w = json_object_get(root, "weights");
        if (!arch) {
            st = sn_fail(SN_ERR_CONFIG, "%s: no architecture: this manifest describes only a vocabulary layout", path.s);
            goto fail;
        }
        if (!json_is_string(w)) {
            st = sn_fail(SN_ERR_CONFIG, "%s: 'weights' must name a .safetensors file or an index .json", path.s);
            goto fail;
        }
        if ((st = sn_model_config_parse(arch, path.s, &m->cfg)) != SN_OK)
            goto fail;
        weights = json_string_value(w);
    } else {
        sn_str_free(&path);
        if ((st = sn_str_printf(&path, "%s/config.json", dir)) != SN_OK)
            goto fail;
        if (!(root = json_load_file(path.s, JSON_REJECT_DUPLICATES, &jerr))) {
            probe = fopen(path.s, "rb");
            if (!probe)
                st = sn_fail(SN_ERR_NOT_FOUND, "%s: no sensorium.json or config.json: not a model folder", dir);
            else {
                fclose(probe);
                st = sn_fail(SN_ERR_FORMAT, "%s:%d:%d: malformed JSON: %s", path.s, jerr.line, jerr.column, jerr.text);
            }
            goto fail;
        }
        if ((st = sn_model_config_parse(root, path.s, &m->cfg)) != SN_OK)
            goto fail;
        sn_str idx = {0};
        if ((st = sn_str_printf(&idx, "%s/model.safetensors.index.json", dir)) != SN_OK)
            goto fail;
        probe = fopen(idx.s, "rb");
        sn_str_free(&idx);
        if (probe)
            fclose(probe);
        weights = probe ? "model.safetensors.index.json" : "model.safetensors";
    }
    snprintf(where, sizeof where, "%s/%s", dir, weights);
    if ((st = open_weights(m, dir, weights)) != SN_OK || (st = bind_all(m, where)) != SN_OK)
        goto fail;
    json_decref(root);
    sn_str_free(&path);
    *out = m;
    return SN_OK;
fail:
    json_decref(root);
    sn_str_free(&path);
    sn_model_close(m);
    return st;
}

void sn_model_close(sn_model *m)
{
    if (!m)
        return;
    for (size_t f = 0; f < m->n_files; f++)
        st_close(&m->files[f]);
    free(m->files);
    free(m->layers);
    free(m);
}

const sn_model_config *sn_model_config_of(const sn_model *m) { return &m->cfg; }
const sn_tensor *sn_model_embed(const sn_model *m) { return m->embed; }
const sn_tensor *sn_model_norm(const sn_model *m) { return m->norm; }
const sn_tensor *sn_model_lm_head(const sn_model *m) { return m->lm_head; }
const sn_layer_weights *sn_model_layer(const sn_model *m, int32_t layer) { return &m->layers[layer]; }
