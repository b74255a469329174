/*
 * plugin_host.c - the host side of the plugin ABI: the services table a plugin receives
 * (log, typed configuration look-ups, data directory), creating instances, and codecs (an
 * instance with one stream) for tokenizing and detokenizing directly.
 *
 * Everything a plugin hands back is checked here before the rest of the engine sees it: ids
 * past the plugin's vocabulary, unknown action kinds and failed calls without a message all
 * become errors naming the plugin and its file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_impl.h"

/* ---------------------------------------------------------------------------------------- */
/* Logging                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Set once by the application before use, read by plugin threads: kept simple on purpose. */
static sn_log_fn log_fn;
static void *log_ctx;

void sn_set_log_handler(sn_log_fn fn, void *ctx)
{
    log_fn = fn;
    log_ctx = ctx;
}

void sn_log_emit(sn_log_level level, const char *source, const char *msg)
{
    if (log_fn)
        log_fn(log_ctx, level, source, msg);
}

static void host_log(const sn_host *host, sn_log_level level, const char *fmt, ...)
{
    const sn_plugin_instance *inst = host->ctx;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sn_log_emit(level, inst->rec->desc.name, msg);
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration look-ups                                                                   */
/* ---------------------------------------------------------------------------------------- */

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

static json_t *config_get(const sn_host *host, const char *key)
{
    const sn_plugin_instance *inst = host->ctx;
    return key ? json_object_get(inst->config, key) : NULL;
}

static sn_plugin_status wrong_type(sn_plugin_error *err, const char *key, const char *want,
                                   const json_t *v)
{
    sn_plugin_error_set(err, "config key '%s' must be %s, not %s", key, want, json_type_name(v));
    return SN_PLUGIN_ERR_CONFIG;
}

static sn_plugin_status host_config_int(const sn_host *host, const char *key, int64_t *out,
                                        sn_plugin_error *err)
{
    json_t *v = config_get(host, key);
    if (!v)
        return SN_PLUGIN_ERR_NOT_FOUND;
    if (!json_is_integer(v))
        return wrong_type(err, key, "an integer", v);
    *out = (int64_t)json_integer_value(v);
    return SN_PLUGIN_OK;
}

static sn_plugin_status host_config_float(const sn_host *host, const char *key, double *out,
                                          sn_plugin_error *err)
{
    json_t *v = config_get(host, key);
    if (!v)
        return SN_PLUGIN_ERR_NOT_FOUND;
    if (!json_is_number(v))
        return wrong_type(err, key, "a number", v);
    *out = json_number_value(v);
    return SN_PLUGIN_OK;
}

static sn_plugin_status host_config_bool(const sn_host *host, const char *key, int *out,
                                         sn_plugin_error *err)
{
    json_t *v = config_get(host, key);
    if (!v)
        return SN_PLUGIN_ERR_NOT_FOUND;
    if (!json_is_boolean(v))
        return wrong_type(err, key, "true or false", v);
    *out = json_is_true(v);
    return SN_PLUGIN_OK;
}

static sn_plugin_status host_config_string(const sn_host *host, const char *key,
                                           const char **out, sn_plugin_error *err)
{
    json_t *v = config_get(host, key);
    if (!v)
        return SN_PLUGIN_ERR_NOT_FOUND;
    if (!json_is_string(v))
        return wrong_type(err, key, "a string", v);
    *out = json_string_value(v);
    return SN_PLUGIN_OK;
}

/* The array under key, checked element by element with is_ok; NULL with a status set when
 * absent or mistyped. */
static json_t *config_array(const sn_host *host, const char *key, int (*is_ok)(const json_t *),
                            const char *elem_name, sn_plugin_status *st, sn_plugin_error *err)
{
    json_t *v = config_get(host, key);
    if (!v) {
        *st = SN_PLUGIN_ERR_NOT_FOUND;
        return NULL;
    }
    if (!json_is_array(v)) {
        char want[64];
        snprintf(want, sizeof want, "an array of %ss", elem_name);
        *st = wrong_type(err, key, want, v);
        return NULL;
    }
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *e = json_array_get(v, i);
        if (!is_ok(e)) {
            sn_plugin_error_set(err, "config key '%s'[%zu] must be %s %s, not %s", key, i,
                                elem_name[0] == 'i' ? "an" : "a", elem_name, json_type_name(e));
            *st = SN_PLUGIN_ERR_CONFIG;
            return NULL;
        }
    }
    *st = SN_PLUGIN_OK;
    return v;
}

static int is_int(const json_t *v) { return json_is_integer(v); }
static int is_num(const json_t *v) { return json_is_number(v); }
static int is_str(const json_t *v) { return json_is_string(v); }

static sn_plugin_status host_config_int_array(const sn_host *host, const char *key,
                                              int64_t *out, size_t cap, size_t *n,
                                              sn_plugin_error *err)
{
    sn_plugin_status st;
    json_t *a = config_array(host, key, is_int, "integer", &st, err);
    if (!a)
        return st;
    *n = json_array_size(a);
    for (size_t i = 0; i < *n && i < cap; i++)
        out[i] = (int64_t)json_integer_value(json_array_get(a, i));
    return SN_PLUGIN_OK;
}

static sn_plugin_status host_config_float_array(const sn_host *host, const char *key,
                                                double *out, size_t cap, size_t *n,
                                                sn_plugin_error *err)
{
    sn_plugin_status st;
    json_t *a = config_array(host, key, is_num, "number", &st, err);
    if (!a)
        return st;
    *n = json_array_size(a);
    for (size_t i = 0; i < *n && i < cap; i++)
        out[i] = json_number_value(json_array_get(a, i));
    return SN_PLUGIN_OK;
}

static sn_plugin_status host_config_string_array(const sn_host *host, const char *key,
                                                 const char **out, size_t cap, size_t *n,
                                                 sn_plugin_error *err)
{
    sn_plugin_status st;
    json_t *a = config_array(host, key, is_str, "string", &st, err);
    if (!a)
        return st;
    *n = json_array_size(a);
    for (size_t i = 0; i < *n && i < cap; i++)
        out[i] = json_string_value(json_array_get(a, i));
    return SN_PLUGIN_OK;
}

static const char *host_config_key(const sn_host *host, size_t i)
{
    const sn_plugin_instance *inst = host->ctx;
    /* jansson keeps insertion order (2.8+) and its iterators are stable while unmodified;
     * the configuration is never modified after create. */
    void *it = json_object_iter(inst->config);
    for (size_t k = 0; it && k < i; k++)
        it = json_object_iter_next(inst->config, it);
    return it ? json_object_iter_key(it) : NULL;
}

static const char *host_data_dir(const sn_host *host)
{
    const sn_plugin_instance *inst = host->ctx;
    return inst->data_dir;
}

/* ---------------------------------------------------------------------------------------- */
/* Instances                                                                                */
/* ---------------------------------------------------------------------------------------- */

const char *sn_plugin_status_str(sn_plugin_status st)
{
    switch (st) {
    case SN_PLUGIN_OK: return "ok";
    case SN_PLUGIN_ERR_INVALID: return "invalid input";
    case SN_PLUGIN_ERR_CONFIG: return "configuration error";
    case SN_PLUGIN_ERR_NOMEM: return "out of memory";
    case SN_PLUGIN_ERR_IO: return "I/O error";
    case SN_PLUGIN_ERR_UNSUPPORTED: return "unsupported";
    case SN_PLUGIN_ERR_NOT_FOUND: return "not found";
    case SN_PLUGIN_ERR_INTERNAL: return "internal error";
    case SN_PLUGIN_ERR_ABORTED: return "aborted";
    }
    return "unknown status";
}

sn_status sn_plugin_fail(const sn_plugin_rec *rec, const char *what, sn_plugin_status st,
                         const sn_plugin_error *err)
{
    /* A plugin may write an unterminated message; never read past the buffer. */
    char msg[SN_PLUGIN_ERROR_MAX];
    msg[0] = '\0';
    if (err)
        snprintf(msg, sizeof msg, "%.*s", (int)sizeof err->message - 1, err->message);
    return sn_fail(st == SN_PLUGIN_ERR_NOMEM ? SN_ERR_NOMEM : SN_ERR_PLUGIN, "%s (%s): %s: %s",
                   rec->desc.name, rec->file, what,
                   msg[0] ? msg : sn_plugin_status_str(st));
}

/* Allocates an instance record with its host table, before the plugin's create(): fit()
 * runs with the same host services but no instance. */
static sn_status instance_alloc(const sn_plugin_rec *rec, json_t *config, const char *data_dir,
                                sn_plugin_instance **out)
{
    *out = NULL;
    if (config && !json_is_object(config))
        return sn_fail(SN_ERR_CONFIG, "%s: the configuration must be a JSON object, not %s",
                       rec->desc.name, json_type_name(config));
    sn_plugin_instance *inst = calloc(1, sizeof *inst);
    if (!inst)
        return sn_fail(SN_ERR_NOMEM, "out of memory creating plugin %s", rec->desc.name);
    inst->rec = rec;
    inst->config = config ? json_incref(config) : json_object();
    inst->data_dir = data_dir ? sn_strdup(data_dir) : NULL;
    if (!inst->config || (data_dir && !inst->data_dir)) {
        sn_plugin_instance_destroy(inst);
        return sn_fail(SN_ERR_NOMEM, "out of memory creating plugin %s", rec->desc.name);
    }
    /* A data_dir with a trailing slash would make plugin paths "dir//file": harmless but
     * ugly in messages. */
    if (inst->data_dir) {
        size_t n = strlen(inst->data_dir);
        while (n > 1 && inst->data_dir[n - 1] == '/')
            inst->data_dir[--n] = '\0';
    }
    inst->host = (sn_host){
        .struct_size = sizeof(sn_host),
        .abi_major = SN_PLUGIN_ABI_MAJOR,
        .abi_minor = SN_PLUGIN_ABI_MINOR,
        .ctx = inst,
        .log = host_log,
        .config_int = host_config_int,
        .config_float = host_config_float,
        .config_bool = host_config_bool,
        .config_string = host_config_string,
        .config_int_array = host_config_int_array,
        .config_float_array = host_config_float_array,
        .config_string_array = host_config_string_array,
        .config_key = host_config_key,
        .data_dir = host_data_dir,
    };
    *out = inst;
    return SN_OK;
}

sn_status sn_plugin_instance_create(const sn_plugin_rec *rec, json_t *config,
                                    const char *data_dir, sn_plugin_instance **out)
{
    sn_plugin_instance *inst;
    sn_status alloc_st = instance_alloc(rec, config, data_dir, &inst);
    if (alloc_st != SN_OK)
        return alloc_st;
    sn_plugin_error err = {{0}};
    sn_plugin_status pst = rec->desc.create(&inst->host, &inst->instance, &err);
    if (pst != SN_PLUGIN_OK) {
        sn_status st = sn_plugin_fail(rec, "create failed", pst, &err);
        inst->instance = NULL; /* the plugin left nothing allocated (plugin.h) */
        sn_plugin_instance_destroy(inst);
        return st;
    }
    inst->vocab_size = rec->desc.vocab_size(inst->instance);
    if (inst->vocab_size == 0) {
        sn_status st = sn_fail(SN_ERR_PLUGIN, "%s (%s): vocab_size is 0; a plugin must use at least one id",
                               rec->desc.name, rec->file);
        sn_plugin_instance_destroy(inst);
        return st;
    }
    *out = inst;
    return SN_OK;
}

void sn_plugin_instance_destroy(sn_plugin_instance *inst)
{
    if (!inst)
        return;
    if (inst->instance)
        inst->rec->desc.destroy(inst->instance);
    json_decref(inst->config);
    free(inst->data_dir);
    free(inst);
}

/* ---------------------------------------------------------------------------------------- */
/* Fitting                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Parses config_json (NULL or "" for {}) into *out; the message names whose config it is. */
static sn_status parse_config(const char *name, const char *config_json, json_t **out)
{
    *out = NULL;
    if (!config_json || !*config_json)
        return SN_OK;
    json_error_t jerr;
    *out = json_loads(config_json, JSON_REJECT_DUPLICATES, &jerr);
    if (!*out)
        return sn_fail(SN_ERR_CONFIG, "configuration for %s, line %d column %d: %s", name,
                       jerr.line, jerr.column, jerr.text);
    return SN_OK;
}

sn_status sn_fit(const sn_plugins *plugins, const char *name, const char *config_json,
                 const sn_media *data, size_t n, const char *out_path)
{
    sn_clear_error();
    if (!plugins || !name || !out_path || (n && !data))
        return sn_fail(SN_ERR_INVALID_ARG, "sn_fit: plugins, name, data and out_path must not be NULL");
    const sn_plugin_rec *rec = sn_plugins_lookup(plugins, name);
    if (!rec)
        return sn_fail(SN_ERR_NOT_FOUND, "unknown plugin '%s' (`sensorium plugins` lists them)", name);
    if (!rec->desc.fit)
        return sn_fail(SN_ERR_UNSUPPORTED, "%s (%s) learns nothing from data: it needs no fitting",
                       name, rec->file);
    if (n == 0)
        return sn_fail(SN_ERR_INVALID_ARG, "%s: fitting needs at least one data file", name);
    for (size_t i = 0; i < n; i++)
        if (!(rec->desc.media_kinds & SN_MEDIA_BIT(data[i].kind)))
            return sn_fail(SN_ERR_UNSUPPORTED, "%s (%s) does not read %s media (data item %zu)",
                           name, rec->file, sn_media_kind_name(data[i].kind), i);
    json_t *config;
    sn_status st = parse_config(name, config_json, &config);
    if (st != SN_OK)
        return st;
    sn_plugin_instance *inst;
    st = instance_alloc(rec, config, NULL, &inst);
    json_decref(config);
    if (st != SN_OK)
        return st;
    sn_plugin_error err = {{0}};
    sn_plugin_status pst = rec->desc.fit(&inst->host, data, n, out_path, &err);
    if (pst != SN_PLUGIN_OK)
        st = sn_plugin_fail(rec, "fit failed", pst, &err);
    sn_plugin_instance_destroy(inst);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Codecs                                                                                   */
/* ---------------------------------------------------------------------------------------- */

struct sn_codec {
    sn_plugin_instance *inst;
    sn_stream *stream;
};

sn_status sn_codec_open(const sn_plugins *plugins, const char *name, const char *config_json,
                        const char *data_dir, sn_codec **out)
{
    sn_clear_error();
    if (!plugins || !name || !out)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_codec_open: plugins, name and out must not be NULL");
    *out = NULL;
    const sn_plugin_rec *rec = sn_plugins_lookup(plugins, name);
    if (!rec) {
        sn_str known = {0};
        for (size_t i = 0; i < sn_plugins_count(plugins); i++)
            sn_str_printf(&known, "%s%s", i ? ", " : "", sn_plugins_rec(plugins, i)->desc.name);
        sn_status st = sn_fail(SN_ERR_NOT_FOUND, "unknown plugin '%s' (loaded: %s; `sensorium plugins` lists them and why others failed)",
                               name, known.s ? known.s : "none");
        sn_str_free(&known);
        return st;
    }
    json_t *config;
    sn_status cst = parse_config(name, config_json, &config);
    if (cst != SN_OK)
        return cst;
    sn_codec *c = calloc(1, sizeof *c);
    if (!c) {
        json_decref(config);
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    }
    sn_status st = sn_plugin_instance_create(rec, config, data_dir, &c->inst);
    json_decref(config);
    if (st != SN_OK) {
        free(c);
        return st;
    }
    if ((st = sn_instance_open_stream(c->inst, &c->stream)) != SN_OK) {
        sn_plugin_instance_destroy(c->inst);
        free(c);
        return st;
    }
    *out = c;
    return SN_OK;
}

void sn_codec_close(sn_codec *c)
{
    if (!c)
        return;
    sn_instance_close_stream(c->inst, c->stream);
    sn_plugin_instance_destroy(c->inst);
    free(c);
}

uint32_t sn_codec_vocab_size(const sn_codec *c) { return c ? c->inst->vocab_size : 0; }

const sn_plugin_info *sn_codec_info(const sn_codec *c) { return c ? &c->inst->rec->info : NULL; }

/* The token sink: checks every id against the plugin's vocabulary before keeping it. */
typedef struct token_ctx {
    const sn_plugin_instance *inst;
    sn_tokens *out;
    char why[256]; /* set when the host refused the ids */
    sn_status st;
} token_ctx;

static sn_plugin_status token_emit(void *ctx, const int32_t *ids, size_t n, double t)
{
    (void)t;
    token_ctx *tc = ctx;
    if (n && !ids) {
        snprintf(tc->why, sizeof tc->why, "emitted %zu ids from a NULL pointer", n);
        tc->st = SN_ERR_PLUGIN;
        return SN_PLUGIN_ERR_ABORTED;
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= tc->inst->vocab_size) {
            snprintf(tc->why, sizeof tc->why, "emitted id %d, outside its vocabulary 0..%u",
                     ids[i], tc->inst->vocab_size - 1);
            tc->st = SN_ERR_PLUGIN;
            return SN_PLUGIN_ERR_ABORTED;
        }
    }
    if (sn_tokens_append(tc->out, ids, n) != SN_OK) {
        snprintf(tc->why, sizeof tc->why, "out of memory storing tokens");
        tc->st = SN_ERR_NOMEM;
        return SN_PLUGIN_ERR_ABORTED;
    }
    return SN_PLUGIN_OK;
}

static sn_status finish_call(const sn_plugin_rec *rec, const char *what, sn_plugin_status pst,
                             const sn_plugin_error *err, sn_status host_st, const char *host_why)
{
    if (host_st != SN_OK) /* the host stopped the plugin: its reason comes first */
        return sn_fail(host_st, "%s (%s): %s: %s", rec->desc.name, rec->file, what, host_why);
    if (pst != SN_PLUGIN_OK)
        return sn_plugin_fail(rec, what, pst, err);
    return SN_OK;
}

sn_status sn_instance_open_stream(sn_plugin_instance *inst, sn_stream **out)
{
    sn_plugin_error err = {{0}};
    *out = NULL;
    sn_plugin_status pst = inst->rec->desc.open_stream(inst->instance, out, &err);
    if (pst != SN_PLUGIN_OK) {
        *out = NULL;
        return sn_plugin_fail(inst->rec, "open_stream failed", pst, &err);
    }
    return SN_OK;
}

void sn_instance_close_stream(sn_plugin_instance *inst, sn_stream *stream)
{
    if (stream)
        inst->rec->desc.close_stream(stream);
}

sn_status sn_instance_encode(sn_plugin_instance *inst, sn_stream *stream, const sn_media *media,
                             sn_tokens *out)
{
    const sn_plugin_rec *rec = inst->rec;
    if (!(rec->desc.kind & SN_PLUGIN_TOKENIZER))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s (%s) is not a tokenizer", rec->desc.name, rec->file);
    if (!(rec->desc.media_kinds & SN_MEDIA_BIT(media->kind)))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s (%s) does not tokenize %s media", rec->desc.name,
                       rec->file, sn_media_kind_name(media->kind));
    token_ctx tc = {.inst = inst, .out = out, .st = SN_OK};
    sn_token_sink sink = {.ctx = &tc, .emit = token_emit};
    sn_plugin_error err = {{0}};
    sn_plugin_status pst = rec->desc.encode(stream, media, &sink, &err);
    return finish_call(rec, "encode", pst, &err, tc.st, tc.why);
}

sn_status sn_instance_encode_flush(sn_plugin_instance *inst, sn_stream *stream, sn_tokens *out)
{
    const sn_plugin_rec *rec = inst->rec;
    if (!(rec->desc.kind & SN_PLUGIN_TOKENIZER))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s (%s) is not a tokenizer", rec->desc.name, rec->file);
    if (!rec->desc.encode_flush)
        return SN_OK;
    token_ctx tc = {.inst = inst, .out = out, .st = SN_OK};
    sn_token_sink sink = {.ctx = &tc, .emit = token_emit};
    sn_plugin_error err = {{0}};
    sn_plugin_status pst = rec->desc.encode_flush(stream, &sink, &err);
    return finish_call(rec, "encode_flush", pst, &err, tc.st, tc.why);
}

/* The action sink: checks the event is well-formed, then hands it to the caller. */
typedef struct action_ctx {
    sn_action_fn fn;
    void *ctx;
    char why[256];
    sn_status st;
} action_ctx;

static const char *action_problem(const sn_action *a)
{
    if (!a)
        return "emitted a NULL action";
    switch (a->kind) {
    case SN_ACTION_NAMED:
        return a->named.name ? NULL : "emitted a named action without a name";
    case SN_ACTION_VECTOR:
        return a->vector.n && !a->vector.values ? "emitted a vector action with NULL values" : NULL;
    case SN_ACTION_AUDIO:
        if (a->audio.n_samples && !a->audio.samples)
            return "emitted an audio action with NULL samples";
        return a->audio.sample_rate ? NULL : "emitted an audio action with sample_rate 0";
    case SN_ACTION_TEXT:
        return a->text.len && !a->text.utf8 ? "emitted a text action with NULL text" : NULL;
    case SN_ACTION_IMAGE:
        if (!a->image.pixels || a->image.channels < 1 || a->image.channels > 4 ||
            a->image.stride < (size_t)a->image.width * a->image.channels)
            return "emitted an image action with bad pixels, channels or stride";
        return NULL;
    }
    return "emitted an action of unknown kind";
}

static sn_plugin_status action_emit(void *ctx, const sn_action *a)
{
    action_ctx *ac = ctx;
    const char *problem = action_problem(a);
    if (problem) {
        snprintf(ac->why, sizeof ac->why, "%s", problem);
        ac->st = SN_ERR_PLUGIN;
        return SN_PLUGIN_ERR_ABORTED;
    }
    if (ac->fn && ac->fn(ac->ctx, a) != 0) {
        snprintf(ac->why, sizeof ac->why, "stopped by the caller's action callback");
        ac->st = SN_ERR_PLUGIN;
        return SN_PLUGIN_ERR_ABORTED;
    }
    return SN_PLUGIN_OK;
}

sn_status sn_instance_decode(sn_plugin_instance *inst, sn_stream *stream, const int32_t *ids,
                             size_t n, double t, sn_action_fn fn, void *ctx)
{
    const sn_plugin_rec *rec = inst->rec;
    if (!(rec->desc.kind & SN_PLUGIN_DECODER))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s (%s) is not a decoder", rec->desc.name, rec->file);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= inst->vocab_size)
            return sn_fail(SN_ERR_INVALID_ARG, "token %zu is %d, outside %s's vocabulary 0..%u",
                           i, ids[i], rec->desc.name, inst->vocab_size - 1);
    action_ctx ac = {.fn = fn, .ctx = ctx, .st = SN_OK};
    sn_action_sink sink = {.ctx = &ac, .emit = action_emit};
    sn_plugin_error err = {{0}};
    sn_plugin_status pst = rec->desc.decode(stream, ids, n, t, &sink, &err);
    return finish_call(rec, "decode", pst, &err, ac.st, ac.why);
}

sn_status sn_instance_decode_flush(sn_plugin_instance *inst, sn_stream *stream, sn_action_fn fn,
                                   void *ctx)
{
    const sn_plugin_rec *rec = inst->rec;
    if (!(rec->desc.kind & SN_PLUGIN_DECODER))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s (%s) is not a decoder", rec->desc.name, rec->file);
    if (!rec->desc.decode_flush)
        return SN_OK;
    action_ctx ac = {.fn = fn, .ctx = ctx, .st = SN_OK};
    sn_action_sink sink = {.ctx = &ac, .emit = action_emit};
    sn_plugin_error err = {{0}};
    sn_plugin_status pst = rec->desc.decode_flush(stream, &sink, &err);
    return finish_call(rec, "decode_flush", pst, &err, ac.st, ac.why);
}

sn_status sn_instance_constrain(sn_plugin_instance *inst, sn_stream *stream,
                                const int32_t *segment, size_t n, uint64_t *allowed, int *may_end)
{
    const sn_plugin_rec *rec = inst->rec;
    uint32_t v = inst->vocab_size;
    size_t words = (v + 63) / 64;
    for (size_t w = 0; w < words; w++)
        allowed[w] = ~(uint64_t)0;
    if (v % 64)
        allowed[words - 1] = ((uint64_t)1 << (v % 64)) - 1;
    *may_end = 1;
    if (!(rec->desc.kind & SN_PLUGIN_DECODER))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s (%s) is not a decoder", rec->desc.name, rec->file);
    if (!rec->desc.constrain)
        return SN_OK;
    sn_plugin_error err = {{0}};
    sn_plugin_status pst = rec->desc.constrain(stream, segment, n, allowed, may_end, &err);
    if (pst != SN_PLUGIN_OK)
        return sn_plugin_fail(rec, "constrain", pst, &err);
    /* Bits past the vocabulary are not the plugin's to set. */
    if (v % 64)
        allowed[words - 1] &= ((uint64_t)1 << (v % 64)) - 1;
    int any = *may_end != 0;
    for (size_t w = 0; w < words && !any; w++)
        any = allowed[w] != 0;
    if (!any)
        return sn_fail(SN_ERR_PLUGIN, "%s (%s): constrain left no id allowed and the segment may not end (a dead end after %zu ids)",
                       rec->desc.name, rec->file, n);
    return SN_OK;
}

/* The codec calls: argument checks, then the instance calls above on the codec's stream. */

sn_status sn_codec_encode(sn_codec *c, const sn_media *media, sn_tokens *out)
{
    sn_clear_error();
    if (!c || !media || !out)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_codec_encode: codec, media and out must not be NULL");
    return sn_instance_encode(c->inst, c->stream, media, out);
}

sn_status sn_codec_encode_flush(sn_codec *c, sn_tokens *out)
{
    sn_clear_error();
    if (!c || !out)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_codec_encode_flush: codec and out must not be NULL");
    return sn_instance_encode_flush(c->inst, c->stream, out);
}

sn_status sn_codec_decode(sn_codec *c, const int32_t *ids, size_t n, double t, sn_action_fn fn,
                          void *ctx)
{
    sn_clear_error();
    if (!c || (n && !ids))
        return sn_fail(SN_ERR_INVALID_ARG, "sn_codec_decode: codec and ids must not be NULL");
    return sn_instance_decode(c->inst, c->stream, ids, n, t, fn, ctx);
}

sn_status sn_codec_decode_flush(sn_codec *c, sn_action_fn fn, void *ctx)
{
    sn_clear_error();
    if (!c)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_codec_decode_flush: codec is NULL");
    return sn_instance_decode_flush(c->inst, c->stream, fn, ctx);
}

sn_status sn_codec_constrain(sn_codec *c, const int32_t *segment, size_t n, uint64_t *allowed,
                             int *may_end)
{
    sn_clear_error();
    if (!c || !allowed || !may_end || (n && !segment))
        return sn_fail(SN_ERR_INVALID_ARG, "sn_codec_constrain: NULL argument");
    return sn_instance_constrain(c->inst, c->stream, segment, n, allowed, may_end);
}
