/*
 * model_loader.c - a Llama-family model from disk: the configuration (config.json, or the
 * "architecture" of sensorium.json) and the weights, memory-mapped through safetensors.c and
 * bound tensor by tensor with their shapes checked (see model.h for the layouts).
 *
 * Data flow: find the layout -> parse the configuration -> map the weights file or every
 * shard an index names -> bind each tensor the configuration implies, checking its shape ->
 * hand the model to a backend. Every way a download can be broken is an error naming the
 * file and the tensor; nothing is printed (an unused extra tensor is one log line).
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf.h"
#include "model.h"
#include "plugin_impl.h"
#include "safetensors.h"

/* ---------------------------------------------------------------------------------------- */
/* dtypes                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* The ggml type of each dtype, whose block facts and dequantisation gguf.c has. */
static uint32_t ggml_type_of(sn_dtype dtype)
{
    switch (dtype) {
    case SN_DTYPE_F32: return SN_GGML_F32;
    case SN_DTYPE_F16: return SN_GGML_F16;
    case SN_DTYPE_BF16: return SN_GGML_BF16;
    case SN_DTYPE_Q8_0: return SN_GGML_Q8_0;
    case SN_DTYPE_Q4_0: return SN_GGML_Q4_0;
    case SN_DTYPE_Q4_1: return SN_GGML_Q4_1;
    }
    return SN_GGML_F32;
}

size_t sn_dtype_size(sn_dtype dtype) { return sn_ggml_block_bytes(ggml_type_of(dtype)); }
int32_t sn_dtype_block_elems(sn_dtype dtype) { return (int32_t)sn_ggml_block_elems(ggml_type_of(dtype)); }

const char *sn_dtype_name(sn_dtype dtype)
{
    switch (dtype) {
    case SN_DTYPE_F32: return "F32";
    case SN_DTYPE_F16: return "F16";
    case SN_DTYPE_BF16: return "BF16";
    case SN_DTYPE_Q8_0: return "Q8_0";
    case SN_DTYPE_Q4_0: return "Q4_0";
    case SN_DTYPE_Q4_1: return "Q4_1";
    }
    return "?";
}

void sn_convert_to_f32(sn_dtype dtype, const void *src, float *dst, size_t n)
{
    sn_ggml_dequantize(ggml_type_of(dtype), src, dst, n);
}

sn_status sn_json_load(const char *path, json_t **out)
{
    json_error_t jerr;
    if ((*out = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr)))
        return SN_OK;
    if (json_error_code(&jerr) == json_error_cannot_open_file) {
        int err = errno;
        return sn_fail(err == ENOENT ? SN_ERR_NOT_FOUND : SN_ERR_IO, "%s: cannot open: %s", path, strerror(err));
    }
    return sn_fail(SN_ERR_FORMAT, "%s:%d:%d: malformed JSON: %s", path, jerr.line, jerr.column, jerr.text);
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* A JSON value as it appears in the file, for "found ..." in messages. */
static const char *shown(json_t *v, char *buf, size_t cap)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(9));
    snprintf(buf, cap, "%s", s ? s : "?");
    free(s);
    return buf;
}

/* o[key] as a positive int32: absent or null gives dflt, or an error when required. what
 * names the key in messages ("rope_scaling.factor"). */
static sn_status cfg_int(json_t *o, const char *src, const char *key, const char *what, int required,
                         int32_t dflt, int32_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required)
            return sn_fail(SN_ERR_CONFIG, "%s: missing '%s'", src, what);
        *out = dflt;
        return SN_OK;
    }
    char buf[64];
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > INT32_MAX)
        return sn_fail(SN_ERR_CONFIG, "%s: '%s' must be a positive integer, found %s", src, what,
                       shown(v, buf, sizeof buf));
    *out = (int32_t)json_integer_value(v);
    return SN_OK;
}

/* o[key] as a positive number (integer or real). */
static sn_status cfg_num(json_t *o, const char *src, const char *key, const char *what, int required,
                         double dflt, float *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required)
            return sn_fail(SN_ERR_CONFIG, "%s: missing '%s'", src, what);
        *out = (float)dflt;
        return SN_OK;
    }
    char buf[64];
    /* positive as a float too: neither underflowing to 0 nor overflowing to inf */
    if (!json_is_number(v) || !(json_number_value(v) > 0) || !((float)json_number_value(v) > 0) ||
        !isfinite((float)json_number_value(v)))
        return sn_fail(SN_ERR_CONFIG, "%s: '%s' must be a positive number, found %s", src, what,
                       shown(v, buf, sizeof buf));
    *out = (float)json_number_value(v);
    return SN_OK;
}

/* o[key] as a boolean; absent or null is false. */
static sn_status cfg_bool(json_t *o, const char *src, const char *key, int *out)
{
    json_t *v = json_object_get(o, key);
    char buf[64];
    if (v && !json_is_null(v) && !json_is_boolean(v))
        return sn_fail(SN_ERR_CONFIG, "%s: '%s' must be true or false, found %s", src, key, shown(v, buf, sizeof buf));
    *out = v && json_is_true(v);
    return SN_OK;
}

/* Keys of other architectures that change the computation: refused rather than ignored, so
 * that a model this engine would run wrongly never loads. */
static sn_status cfg_refuse_variants(json_t *o, const char *src)
{
    json_t *mt = json_object_get(o, "model_type");
    if (mt && !json_is_null(mt)) {
        const char *t = json_is_string(mt) ? json_string_value(mt) : "";
        json_t *sw = json_object_get(o, "sliding_window");
        if (strcmp(t, "mistral") == 0 && sw && !json_is_null(sw))
            return sn_fail(SN_ERR_UNSUPPORTED, "%s: a Mistral model with a sliding window; Sensorium attends over "
                                               "the whole context (set \"sliding_window\": null if it was trained so)",
                           src);
        if (strcmp(t, "llama") != 0 && strcmp(t, "mistral") != 0)
            return sn_fail(SN_ERR_UNSUPPORTED, "%s: model_type '%s' is not one Sensorium runs (llama, mistral)", src,
                           json_is_string(mt) ? t : "(not a string)");
    }
    json_t *act = json_object_get(o, "hidden_act");
    if (act && !json_is_null(act) && !(json_is_string(act) && strcmp(json_string_value(act), "silu") == 0))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: hidden_act must be \"silu\" (SwiGLU)", src);
    int bias;
    sn_status st;
    if ((st = cfg_bool(o, src, "attention_bias", &bias)) != SN_OK)
        return st;
    if (bias)
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: attention_bias is true; Sensorium's Llama has no biases", src);
    if ((st = cfg_bool(o, src, "mlp_bias", &bias)) != SN_OK)
        return st;
    if (bias)
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: mlp_bias is true; Sensorium's Llama has no biases", src);
    return SN_OK;
}

/* rope_theta and the frequency scaling: "rope_scaling" (config.json of transformers 4) or
 * "rope_parameters" (transformers 5, which moves rope_theta inside it). */
static sn_status cfg_rope(json_t *o, const char *src, sn_model_config *c)
{
    const char *block_name = "rope_parameters";
    json_t *rs = json_object_get(o, block_name);
    if (!rs || json_is_null(rs)) {
        block_name = "rope_scaling";
        rs = json_object_get(o, block_name);
    }
    if (rs && json_is_null(rs))
        rs = NULL;
    if (rs && !json_is_object(rs))
        return sn_fail(SN_ERR_CONFIG, "%s: '%s' must be an object or null", src, block_name);
    sn_status st;
    json_t *theta_home = rs && json_object_get(rs, "rope_theta") ? rs : o;
    if ((st = cfg_num(theta_home, src, "rope_theta", "rope_theta", 0, 10000.0, &c->rope_theta)) != SN_OK)
        return st;
    json_t *prf = rs ? json_object_get(rs, "partial_rotary_factor") : NULL;
    if (!prf)
        prf = json_object_get(o, "partial_rotary_factor");
    if (prf && !json_is_null(prf) && !(json_is_number(prf) && json_number_value(prf) == 1.0))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: partial_rotary_factor other than 1 is not supported", src);
    if (!rs)
        return SN_OK;
    json_t *type = json_object_get(rs, "rope_type");
    if (!type)
        type = json_object_get(rs, "type");
    const char *t = json_is_string(type) ? json_string_value(type) : type ? "(not a string)" : "default";
    if (strcmp(t, "default") == 0)
        return SN_OK;
    if (strcmp(t, "llama3") != 0)
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: %s type '%s' is not supported (only llama3 or none)", src, block_name,
                       t);
    char what[4][64];
    snprintf(what[0], sizeof what[0], "%s.factor", block_name);
    snprintf(what[1], sizeof what[1], "%s.low_freq_factor", block_name);
    snprintf(what[2], sizeof what[2], "%s.high_freq_factor", block_name);
    snprintf(what[3], sizeof what[3], "%s.original_max_position_embeddings", block_name);
    c->rope_llama3 = 1;
    /* the original context defaults to max_position_embeddings, as in transformers */
    if ((st = cfg_num(rs, src, "factor", what[0], 1, 0, &c->rope_factor)) ||
        (st = cfg_num(rs, src, "low_freq_factor", what[1], 1, 0, &c->rope_low_freq_factor)) ||
        (st = cfg_num(rs, src, "high_freq_factor", what[2], 1, 0, &c->rope_high_freq_factor)) ||
        (st = cfg_int(rs, src, "original_max_position_embeddings", what[3], 0, c->max_positions,
                      &c->rope_original_max_positions)))
        return st;
    if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
        return sn_fail(SN_ERR_CONFIG, "%s: %s.high_freq_factor (%g) must exceed low_freq_factor (%g)", src, block_name,
                       (double)c->rope_high_freq_factor, (double)c->rope_low_freq_factor);
    return SN_OK;
}

sn_status sn_model_config_parse(json_t *obj, const char *source, sn_model_config *out)
{
    sn_model_config c;
    memset(&c, 0, sizeof c);
    memset(out, 0, sizeof *out);
    if (!json_is_object(obj))
        return sn_fail(SN_ERR_CONFIG, "%s: the architecture must be a JSON object", source);
    sn_status st;
    if ((st = cfg_refuse_variants(obj, source)) ||
        (st = cfg_int(obj, source, "vocab_size", "vocab_size", 1, 0, &c.vocab_size)) ||
        (st = cfg_int(obj, source, "hidden_size", "hidden_size", 1, 0, &c.hidden)) ||
        (st = cfg_int(obj, source, "intermediate_size", "intermediate_size", 1, 0, &c.intermediate)) ||
        (st = cfg_int(obj, source, "num_hidden_layers", "num_hidden_layers", 1, 0, &c.n_layers)) ||
        (st = cfg_int(obj, source, "num_attention_heads", "num_attention_heads", 1, 0, &c.n_heads)) ||
        (st = cfg_int(obj, source, "num_key_value_heads", "num_key_value_heads", 0, c.n_heads, &c.n_kv_heads)) ||
        (st = cfg_int(obj, source, "max_position_embeddings", "max_position_embeddings", 0, 2048,
                      &c.max_positions)))
        return st;
    json_t *hd = json_object_get(obj, "head_dim");
    if ((!hd || json_is_null(hd)) && c.hidden % c.n_heads)
        return sn_fail(SN_ERR_CONFIG, "%s: hidden_size %d is not a multiple of num_attention_heads %d (give head_dim)",
                       source, c.hidden, c.n_heads);
    if ((st = cfg_int(obj, source, "head_dim", "head_dim", 0, c.hidden / c.n_heads, &c.head_dim)) ||
        (st = cfg_num(obj, source, "rms_norm_eps", "rms_norm_eps", 0, 1e-6, &c.rms_eps)) ||
        (st = cfg_bool(obj, source, "tie_word_embeddings", &c.tie_embeddings)) ||
        (st = cfg_rope(obj, source, &c)))
        return st;
    if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads)
        return sn_fail(SN_ERR_CONFIG, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", source,
                       c.n_heads, c.n_kv_heads);
    if (c.head_dim % 2)
        return sn_fail(SN_ERR_CONFIG, "%s: head_dim %d is odd; rotary embeddings rotate pairs", source, c.head_dim);
    *out = c;
    return SN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* The model                                                                                */
/* ---------------------------------------------------------------------------------------- */

struct sn_model {
    sn_model_config cfg;
    sn_st_file *files; /* (n_files) the mapped weights, kept until sn_model_close */
    size_t n_files;
    sn_gguf *gguf;     /* or the mapped GGUF file */
    sn_tensor *gguf_tensors; /* (gguf->n_tensors) views of its tensors, names owned */
    float *rope_factors;     /* (head_dim / 2) a GGUF's rope_freqs, or NULL */
    const sn_tensor *embed, *norm, *lm_head; /* point into files */
    sn_layer_weights *layers;                /* (cfg.n_layers) owned */
};

/* What binding needs to know while the model opens. */
typedef struct loader {
    sn_model *m;
    const char *config_path;  /* config.json or sensorium.json, for shape messages */
    const char *weights_path; /* the .safetensors file or the index */
    json_t *weight_map;       /* the index's tensor -> shard, or NULL for one file (borrowed) */
    const char **shards;      /* (m->n_files) the index's name of each file (borrowed) */
} loader;

void sn_model_close(sn_model *m)
{
    if (!m)
        return;
    for (size_t f = 0; f < m->n_files; f++)
        sn_st_close(&m->files[f]);
    free(m->files);
    for (uint64_t i = 0; m->gguf_tensors && i < m->gguf->n_tensors; i++)
        free((char *)m->gguf_tensors[i].name);
    free(m->gguf_tensors);
    sn_gguf_close(m->gguf);
    free(m->rope_factors);
    free(m->layers);
    free(m);
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* The tensor where the weights place it: the one file, or the shard the index names. */
static sn_status find(const loader *ld, const char *name, const char *hint, const sn_tensor **out)
{
    const sn_model *m = ld->m;
    if (!ld->weight_map) {
        if ((*out = sn_st_find(&m->files[0], name)))
            return SN_OK;
        return sn_fail(SN_ERR_FORMAT, "%s: missing tensor '%s'%s", m->files[0].path, name, hint);
    }
    json_t *shard = json_object_get(ld->weight_map, name);
    if (!shard)
        return sn_fail(SN_ERR_FORMAT, "%s: missing tensor '%s' (not in its weight_map)%s", ld->weights_path, name,
                       hint);
    for (size_t f = 0; f < m->n_files; f++)
        if (strcmp(ld->shards[f], json_string_value(shard)) == 0) {
            if ((*out = sn_st_find(&m->files[f], name)))
                return SN_OK;
            return sn_fail(SN_ERR_FORMAT, "%s: missing tensor '%s' (%s places it in this shard)", m->files[f].path,
                           name, ld->weights_path);
        }
    return sn_fail(SN_ERR_INTERNAL, "%s: shard '%s' was not opened", ld->weights_path, json_string_value(shard));
}

/* t must have the shape (d0[, d1]) (d1 0: a vector) that implied_by (a file, "the
 * metadata") implies; else an error naming t's file and name. */
static sn_status check_shape(const sn_tensor *t, int64_t d0, int64_t d1, const char *implied_by)
{
    int ndim = d1 ? 2 : 1;
    if (t->ndim == ndim && t->shape[0] == d0 && (!d1 || t->shape[1] == d1))
        return SN_OK;
    char found[128] = "(", want[64];
    for (int k = 0; k < t->ndim; k++)
        snprintf(found + strlen(found), sizeof found - strlen(found), "%s%lld", k ? ", " : "", (long long)t->shape[k]);
    strcat(found, ")");
    if (d1)
        snprintf(want, sizeof want, "(%lld, %lld)", (long long)d0, (long long)d1);
    else
        snprintf(want, sizeof want, "(%lld)", (long long)d0);
    return sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' has shape %s but %s implies %s", t->file, t->name, found,
                   implied_by, want);
}

/* Binds name, which must have the shape (d0[, d1]) (d1 0: a vector). */
static sn_status bind(const loader *ld, const char *name, int64_t d0, int64_t d1, const char *hint,
                      const sn_tensor **out)
{
    const sn_tensor *t;
    sn_status st = find(ld, name, hint, &t);
    if (st != SN_OK)
        return st;
    if ((st = check_shape(t, d0, d1, ld->config_path)) != SN_OK)
        return st;
    *out = t;
    return SN_OK;
}

/* A layer's tensors: Hugging Face and llama.cpp (GGUF) names, their slot, and their shape as
 * (rows, columns) in units of the configuration: H hidden, Q query heads x head_dim, K KV
 * heads x head_dim, I intermediate, 0 none (a vector). */
static const struct {
    const char *hf, *gguf;
    size_t offset;
    char rows, cols;
} layer_slots[] = {
    {"input_layernorm", "attn_norm", offsetof(sn_layer_weights, attn_norm), 'H', 0},
    {"self_attn.q_proj", "attn_q", offsetof(sn_layer_weights, wq), 'Q', 'H'},
    {"self_attn.k_proj", "attn_k", offsetof(sn_layer_weights, wk), 'K', 'H'},
    {"self_attn.v_proj", "attn_v", offsetof(sn_layer_weights, wv), 'K', 'H'},
    {"self_attn.o_proj", "attn_output", offsetof(sn_layer_weights, wo), 'H', 'Q'},
    {"post_attention_layernorm", "ffn_norm", offsetof(sn_layer_weights, ffn_norm), 'H', 0},
    {"mlp.gate_proj", "ffn_gate", offsetof(sn_layer_weights, w_gate), 'I', 'H'},
    {"mlp.up_proj", "ffn_up", offsetof(sn_layer_weights, w_up), 'I', 'H'},
    {"mlp.down_proj", "ffn_down", offsetof(sn_layer_weights, w_down), 'H', 'I'},
};
#define N_LAYER_SLOTS (sizeof layer_slots / sizeof *layer_slots)

static int64_t dim_of(const sn_model_config *c, char unit)
{
    switch (unit) {
    case 'H': return c->hidden;
    case 'Q': return (int64_t)c->n_heads * c->head_dim;
    case 'K': return (int64_t)c->n_kv_heads * c->head_dim;
    case 'I': return c->intermediate;
    }
    return 0;
}

static void slot_shape(const sn_model_config *c, size_t k, int64_t *d0, int64_t *d1)
{
    *d0 = dim_of(c, layer_slots[k].rows);
    *d1 = dim_of(c, layer_slots[k].cols);
}

static const sn_tensor **layer_slot(sn_layer_weights *w, size_t k)
{
    return (const sn_tensor **)((char *)w + layer_slots[k].offset);
}

static sn_status bind_all(const loader *ld)
{
    sn_model *m = ld->m;
    const sn_model_config *c = &m->cfg;
    const int64_t H = c->hidden;
    sn_status st;
    if ((st = bind(ld, "model.embed_tokens.weight", c->vocab_size, H, "", &m->embed)) ||
        (st = bind(ld, "model.norm.weight", H, 0, "", &m->norm)))
        return st;
    /* Tied: the embedding is the head, even where a checkpoint also stores a copy of it. */
    if (c->tie_embeddings)
        m->lm_head = m->embed;
    else if ((st = bind(ld, "lm_head.weight", c->vocab_size, H, " (tie_word_embeddings is false)", &m->lm_head)))
        return st;
    if (!(m->layers = calloc((size_t)c->n_layers, sizeof *m->layers)))
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    for (int32_t l = 0; l < c->n_layers; l++)
        for (size_t k = 0; k < N_LAYER_SLOTS; k++) {
            char name[160];
            int64_t d0, d1;
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, layer_slots[k].hf);
            slot_shape(c, k, &d0, &d1);
            if ((st = bind(ld, name, d0, d1, "", layer_slot(m->layers + l, k))) != SN_OK)
                return st;
        }
    return SN_OK;
}

static int is_bound(const sn_model *m, const sn_tensor *t)
{
    if (t == m->embed || t == m->norm || t == m->lm_head)
        return 1;
    for (int32_t l = 0; l < m->cfg.n_layers; l++) {
        const sn_layer_weights *w = &m->layers[l];
        if (t == w->attn_norm || t == w->wq || t == w->wk || t == w->wv || t == w->wo || t == w->ffn_norm ||
            t == w->w_gate || t == w->w_up || t == w->w_down)
            return 1;
    }
    return 0;
}

/* Extra tensors (rotary caches, a tied model's stored head) are harmless: one log line. */
static void log_unused(const sn_model *m, const char *dir)
{
    size_t unused = 0;
    const char *first = NULL;
    for (size_t f = 0; f < m->n_files; f++)
        for (size_t i = 0; i < m->files[f].n; i++) {
            const sn_tensor *t = &m->files[f].tensors[i];
            if (is_bound(m, t) || (m->cfg.tie_embeddings && strcmp(t->name, "lm_head.weight") == 0))
                continue;
            if (!unused++)
                first = t->name;
        }
    if (!unused)
        return;
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %zu tensor%s the model does not use, ignored (first: '%s')", dir, unused,
             unused == 1 ? "" : "s", first);
    sn_log_emit(SN_LOG_INFO, "model", msg);
}

/* Maps the distinct shards an index names, in order of first mention. */
static sn_status open_shards(loader *ld, const char *dir, json_t *index)
{
    sn_model *m = ld->m;
    json_t *map = json_is_object(index) ? json_object_get(index, "weight_map") : NULL;
    if (!json_is_object(map))
        return sn_fail(SN_ERR_FORMAT, "%s: no \"weight_map\" object (tensor name -> shard file)", ld->weights_path);
    ld->weight_map = map;
    size_t cap = json_object_size(map) + 1;
    m->files = calloc(cap, sizeof *m->files);
    ld->shards = calloc(cap, sizeof *ld->shards);
    if (!m->files || !ld->shards)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    const char *tname;
    json_t *shard;
    json_object_foreach(map, tname, shard) {
        if (!json_is_string(shard) || !*json_string_value(shard))
            return sn_fail(SN_ERR_FORMAT, "%s: weight_map['%s'] is not a file name", ld->weights_path, tname);
        const char *s = json_string_value(shard);
        int seen = 0;
        for (size_t f = 0; f < m->n_files && !seen; f++)
            seen = strcmp(ld->shards[f], s) == 0;
        if (seen)
            continue;
        sn_str path = {0};
        sn_status st = sn_str_printf(&path, "%s/%s", dir, s);
        if (st == SN_OK)
            st = sn_st_open(path.s, &m->files[m->n_files]);
        sn_str_free(&path);
        if (st == SN_ERR_NOT_FOUND) {
            char msg[768];
            snprintf(msg, sizeof msg, "%s", sn_errmsg());
            return sn_fail(st, "%s (a shard named in %s)", msg, ld->weights_path);
        }
        if (st != SN_OK)
            return st;
        ld->shards[m->n_files++] = s;
    }
    return SN_OK;
}


/* Maps what weights (relative to dir) names: one .safetensors file, or an index .json of
 * shards. */
static sn_status open_weights(loader *ld, const char *dir, const char *weights, json_t **index)
{
    sn_model *m = ld->m;
    size_t len = strlen(weights);
    if (len > 5 && strcmp(weights + len - 5, ".json") == 0) {
        sn_status st = sn_json_load(ld->weights_path, index);
        return st != SN_OK ? st : open_shards(ld, dir, *index);
    }
    if (!(m->files = calloc(1, sizeof *m->files)))
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    sn_status st = sn_st_open(ld->weights_path, &m->files[0]);
    if (st != SN_OK)
        return st;
    m->n_files = 1;
    return SN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* GGUF                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* A metadata integer "<arch>.<key>" as a positive int32; absent gives dflt (0: required). */
static sn_status gguf_int(const sn_gguf *g, const char *arch, const char *key, int32_t dflt, int32_t *out)
{
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    int64_t v;
    if (sn_gguf_get_int(g, full, &v) != 0) {
        if (sn_gguf_find(g, full))
            return sn_fail(SN_ERR_FORMAT, "%s: metadata '%s' is not an integer", g->path, full);
        if (!dflt)
            return sn_fail(SN_ERR_FORMAT, "%s: missing metadata '%s'", g->path, full);
        *out = dflt;
        return SN_OK;
    }
    if (v <= 0 || v > INT32_MAX)
        return sn_fail(SN_ERR_FORMAT, "%s: metadata '%s' = %lld must be a positive 32-bit integer", g->path, full,
                       (long long)v);
    *out = (int32_t)v;
    return SN_OK;
}

/* The configuration from a GGUF's metadata (llama.cpp's keys for general.architecture). */
static sn_status gguf_config(const sn_gguf *g, sn_model_config *c)
{
    sn_gguf_str arch_s;
    if (sn_gguf_get_str(g, "general.architecture", &arch_s) != 0)
        return sn_fail(SN_ERR_FORMAT, "%s: no general.architecture in its metadata", g->path);
    char arch[64];
    snprintf(arch, sizeof arch, "%.*s", (int)(arch_s.len < 63 ? arch_s.len : 63), arch_s.s);
    if (strcmp(arch, "llama") != 0)
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: architecture '%s'; this engine runs 'llama' GGUF models", g->path,
                       arch);
    memset(c, 0, sizeof *c);
    sn_status st;
    if ((st = gguf_int(g, arch, "embedding_length", 0, &c->hidden)) ||
        (st = gguf_int(g, arch, "feed_forward_length", 0, &c->intermediate)) ||
        (st = gguf_int(g, arch, "block_count", 0, &c->n_layers)) ||
        (st = gguf_int(g, arch, "attention.head_count", 0, &c->n_heads)) ||
        (st = gguf_int(g, arch, "attention.head_count_kv", c->n_heads, &c->n_kv_heads)) ||
        (st = gguf_int(g, arch, "context_length", 0, &c->max_positions)))
        return st;
    if (c->hidden % c->n_heads)
        return sn_fail(SN_ERR_FORMAT, "%s: embedding_length %d is not a multiple of head_count %d", g->path,
                       c->hidden, c->n_heads);
    if ((st = gguf_int(g, arch, "attention.key_length", c->hidden / c->n_heads, &c->head_dim)))
        return st;
    int32_t value_length, rope_dims;
    if ((st = gguf_int(g, arch, "attention.value_length", c->head_dim, &value_length)) ||
        (st = gguf_int(g, arch, "rope.dimension_count", c->head_dim, &rope_dims)))
        return st;
    if (value_length != c->head_dim || rope_dims != c->head_dim || c->head_dim % 2)
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: key length %d, value length %d and RoPE dimensions %d must be one even size",
                       g->path, c->head_dim, value_length, rope_dims);
    if (c->n_heads % c->n_kv_heads)
        return sn_fail(SN_ERR_FORMAT, "%s: head_count %d is not a multiple of head_count_kv %d", g->path,
                       c->n_heads, c->n_kv_heads);
    char key[128];
    double f;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    if (sn_gguf_get_float(g, key, &f) != 0 || !(f > 0))
        return sn_fail(SN_ERR_FORMAT, "%s: missing or non-positive '%s'", g->path, key);
    c->rms_eps = (float)f;
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    c->rope_theta = sn_gguf_get_float(g, key, &f) == 0 ? (float)f : 10000.0f;
    if (!(c->rope_theta > 0))
        return sn_fail(SN_ERR_FORMAT, "%s: '%s' must be positive", g->path, key);
    sn_gguf_str scaling;
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    if (sn_gguf_get_str(g, key, &scaling) == 0 && !(scaling.len == 4 && memcmp(scaling.s, "none", 4) == 0))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: RoPE scaling '%.*s' is not supported", g->path, (int)scaling.len,
                       scaling.s);
    c->rope_interleaved = 1;
    const sn_gguf_tensor *embd = sn_gguf_tensor_find(g, "token_embd.weight");
    if (!embd)
        return sn_fail(SN_ERR_FORMAT, "%s: missing tensor 'token_embd.weight'", g->path);
    if (embd->ne[1] > INT32_MAX)
        return sn_fail(SN_ERR_FORMAT, "%s: token_embd.weight has %llu rows", g->path, (unsigned long long)embd->ne[1]);
    c->vocab_size = (int32_t)embd->ne[1];
    int32_t declared;
    if ((st = gguf_int(g, arch, "vocab_size", c->vocab_size, &declared)))
        return st;
    if (declared != c->vocab_size)
        return sn_fail(SN_ERR_FORMAT, "%s: %s.vocab_size is %d but token_embd.weight has %d rows", g->path, arch,
                       declared, c->vocab_size);
    c->tie_embeddings = sn_gguf_tensor_find(g, "output.weight") == NULL;
    return SN_OK;
}

/* The dtype of a ggml type the backends compute on. */
static int gguf_dtype(uint32_t type, sn_dtype *out)
{
    switch (type) {
    case SN_GGML_F32: *out = SN_DTYPE_F32; return 1;
    case SN_GGML_F16: *out = SN_DTYPE_F16; return 1;
    case SN_GGML_BF16: *out = SN_DTYPE_BF16; return 1;
    case SN_GGML_Q8_0: *out = SN_DTYPE_Q8_0; return 1;
    case SN_GGML_Q4_0: *out = SN_DTYPE_Q4_0; return 1;
    case SN_GGML_Q4_1: *out = SN_DTYPE_Q4_1; return 1;
    }
    return 0;
}

/* Binds GGUF tensor name with shape (d0[, d1]) (slowest first, as in the model's slots). */
static sn_status gguf_bind(sn_model *m, const char *name, int64_t d0, int64_t d1, const sn_tensor **out)
{
    const sn_gguf *g = m->gguf;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        sn_tensor *t = &m->gguf_tensors[i];
        if (strcmp(t->name, name) != 0)
            continue;
        char tb[32];
        if (!gguf_dtype(g->tensors[i].type, &t->dtype))
            return sn_fail(SN_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; this engine computes on F32, F16, BF16, Q8_0, Q4_0 and Q4_1",
                           g->path, name, sn_ggml_type_name(g->tensors[i].type, tb, sizeof tb));
        sn_status st = check_shape(t, d0, d1, "the metadata");
        if (st != SN_OK)
            return st;
        if (!d1 && t->dtype != SN_DTYPE_F32 && t->dtype != SN_DTYPE_F16 && t->dtype != SN_DTYPE_BF16)
            return sn_fail(SN_ERR_UNSUPPORTED, "%s: norm tensor '%s' is %s; norms must be F32, F16 or BF16", g->path,
                           name, sn_dtype_name(t->dtype));
        *out = t;
        return SN_OK;
    }
    return sn_fail(SN_ERR_FORMAT, "%s: missing tensor '%s'", g->path, name);
}

static sn_status open_gguf(sn_model *m, const char *path)
{
    char err[768];
    if (sn_gguf_open(path, &m->gguf, err, sizeof err) != 0)
        return sn_fail(errno == ENOENT ? SN_ERR_NOT_FOUND : SN_ERR_FORMAT, "%s", err);
    sn_gguf *g = m->gguf;
    sn_status st = gguf_config(g, &m->cfg);
    if (st != SN_OK)
        return st;
    /* Views of every tensor, shapes slowest-first like safetensors'. */
    m->gguf_tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *m->gguf_tensors);
    if (!m->gguf_tensors)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const sn_gguf_tensor *gt = &g->tensors[i];
        sn_tensor *t = &m->gguf_tensors[i];
        char *name = malloc(gt->name.len + 1);
        if (!name)
            return sn_fail(SN_ERR_NOMEM, "out of memory");
        memcpy(name, gt->name.s, gt->name.len);
        name[gt->name.len] = '\0';
        t->name = name;
        t->ndim = (int)gt->n_dims;
        for (uint32_t d = 0; d < gt->n_dims; d++)
            t->shape[d] = (int64_t)gt->ne[gt->n_dims - 1 - d];
        t->data = gt->data;
        t->nbytes = (size_t)gt->nbytes;
        t->file = g->path;
        t->dtype = SN_DTYPE_F32; /* checked when bound */
    }
    const sn_model_config *c = &m->cfg;
    const int64_t H = c->hidden;
    if ((st = gguf_bind(m, "token_embd.weight", c->vocab_size, H, &m->embed)) ||
        (st = gguf_bind(m, "output_norm.weight", H, 0, &m->norm)))
        return st;
    if (c->tie_embeddings)
        m->lm_head = m->embed;
    else if ((st = gguf_bind(m, "output.weight", c->vocab_size, H, &m->lm_head)))
        return st;
    if (!(m->layers = calloc((size_t)c->n_layers, sizeof *m->layers)))
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    for (int32_t l = 0; l < c->n_layers; l++)
        for (size_t k = 0; k < N_LAYER_SLOTS; k++) {
            char name[96];
            int64_t d0, d1;
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, layer_slots[k].gguf);
            slot_shape(c, k, &d0, &d1);
            if ((st = gguf_bind(m, name, d0, d1, layer_slot(m->layers + l, k))) != SN_OK)
                return st;
        }
    const sn_tensor *freqs;
    if (sn_gguf_tensor_find(g, "rope_freqs.weight")) {
        if ((st = gguf_bind(m, "rope_freqs.weight", c->head_dim / 2, 0, &freqs)) != SN_OK)
            return st;
        if (!(m->rope_factors = malloc((size_t)(c->head_dim / 2) * sizeof *m->rope_factors)))
            return sn_fail(SN_ERR_NOMEM, "out of memory");
        sn_convert_to_f32(freqs->dtype, freqs->data, m->rope_factors, (size_t)(c->head_dim / 2));
    }
    return SN_OK;
}

sn_status sn_model_open(const char *dir, sn_model **out)
{
    sn_clear_error();
    if (!dir || !out)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_model_open: dir and out must not be NULL");
    *out = NULL;
    sn_model *m = calloc(1, sizeof *m);
    if (!m)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    loader ld = {.m = m};
    sn_str config_path = {0}, weights_path = {0};
    json_t *root = NULL, *index = NULL;
    const char *weights;
    sn_status st;

    struct stat sb;
    if (stat(dir, &sb) == 0 && S_ISREG(sb.st_mode)) {
        /* A file: a GGUF (the only single-file layout). */
        st = open_gguf(m, dir);
        goto done;
    }

    /* The layout: a manifest with an architecture, else a Hugging Face config.json. */
    if ((st = sn_str_printf(&config_path, "%s/sensorium.json", dir)) != SN_OK)
        goto done;
    if (file_exists(config_path.s)) {
        if ((st = sn_json_load(config_path.s, &root)) != SN_OK)
            goto done;
        json_t *arch = json_is_object(root) ? json_object_get(root, "architecture") : NULL;
        json_t *w = json_is_object(root) ? json_object_get(root, "weights") : NULL;
        if (!arch) {
            st = sn_fail(SN_ERR_CONFIG, "%s: no architecture: this manifest describes only a vocabulary layout",
                         config_path.s);
            goto done;
        }
        if ((st = sn_model_config_parse(arch, config_path.s, &m->cfg)) != SN_OK)
            goto done;
        if (!json_is_string(w) || !*json_string_value(w)) {
            st = sn_fail(SN_ERR_CONFIG,
                         "%s: \"weights\" must name the .safetensors file or its index .json, relative to the folder",
                         config_path.s);
            goto done;
        }
        weights = json_string_value(w);
    } else {
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            st = sn_fail(SN_ERR_NOT_FOUND, "%s: no such model folder or GGUF file", dir);
            goto done;
        }
        sn_str_free(&config_path);
        if ((st = sn_str_printf(&config_path, "%s/config.json", dir)) != SN_OK)
            goto done;
        if (!file_exists(config_path.s)) {
            st = sn_fail(SN_ERR_NOT_FOUND, "%s: neither sensorium.json nor config.json: not a model folder", dir);
            goto done;
        }
        if ((st = sn_json_load(config_path.s, &root)) != SN_OK ||
            (st = sn_model_config_parse(root, config_path.s, &m->cfg)) != SN_OK)
            goto done;
        /* the single file first, as transformers looks */
        if ((st = sn_str_printf(&weights_path, "%s/model.safetensors", dir)) != SN_OK)
            goto done;
        weights = file_exists(weights_path.s) ? "model.safetensors" : "model.safetensors.index.json";
        sn_str_free(&weights_path);
        if ((st = sn_str_printf(&weights_path, "%s/%s", dir, weights)) != SN_OK)
            goto done;
        if (!file_exists(weights_path.s)) {
            st = sn_fail(SN_ERR_NOT_FOUND, "%s: config.json but no model.safetensors or model.safetensors.index.json",
                         dir);
            goto done;
        }
        sn_str_free(&weights_path);
    }

    if ((st = sn_str_printf(&weights_path, "%s/%s", dir, weights)) != SN_OK)
        goto done;
    ld.config_path = config_path.s;
    ld.weights_path = weights_path.s;
    if ((st = open_weights(&ld, dir, weights, &index)) != SN_OK || (st = bind_all(&ld)) != SN_OK)
        goto done;
    log_unused(m, dir);
done:
    free(ld.shards);
    json_decref(index);
    json_decref(root);
    sn_str_free(&weights_path);
    sn_str_free(&config_path);
    if (st != SN_OK) {
        sn_model_close(m);
        return st;
    }
    *out = m;
    return SN_OK;
}

const sn_model_config *sn_model_config_of(const sn_model *m) { return &m->cfg; }
const sn_tensor *sn_model_embed(const sn_model *m) { return m->embed; }
const sn_tensor *sn_model_norm(const sn_model *m) { return m->norm; }
const sn_tensor *sn_model_lm_head(const sn_model *m) { return m->lm_head; }

const float *sn_model_rope_factors(const sn_model *m) { return m->rope_factors; }
const char *sn_model_gguf_path(const sn_model *m) { return m->gguf ? m->gguf->path : NULL; }

const sn_layer_weights *sn_model_layer(const sn_model *m, int32_t layer)
{
    return layer >= 0 && layer < m->cfg.n_layers ? &m->layers[layer] : NULL;
}
