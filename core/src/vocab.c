/*
 * vocab.c - the vocabulary layout of a model: which global ids belong to which plugin, the
 * special tokens and the segment markers, read from the model manifest sensorium.json.
 *
 * Sits between the plugins (local ids 0..n-1) and the model (global ids): tokenizer output is
 * shifted into its range here, sampled ids are routed back to their decoder here. Mapping
 * both ways is O(1): local -> global is start + local, global -> (role, segment, local) is
 * one look-up in a table with an entry per id.
 *
 * Manifest, the part read here:
 *   {
 *     "sensorium": 1,
 *     "name": "demo",                       (optional)
 *     "vocab": {
 *       "size": 268, "bos": 0, "eos": 1, "pad": 2,          (bos, pad optional)
 *       "stop": [7],                                        (optional: more ids that end
 *                                                            generation, like eos)
 *       "segments": [
 *         {"modality": "text", "plugin": "text.bytes", "start": 8, "size": 256,
 *          "begin": 3, "end": 4, "config": {}},              (config optional)
 *         ...
 *       ]
 *     }
 *   }
 *
 * A segment without begin and end markers is open: at most one per layout, generated
 * without markers (the whole stream is in it), and the special ids (bos, eos, pad, stop)
 * may lie inside its range. That is how a language model's own vocabulary is described:
 * its tokenizer owns every id, and its control tokens are specials the tokenizer never
 * produces from text. A GGUF file's layout is made this way from its tokenizer metadata
 * (sn_vocab_open on the file).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>

#include "gguf.h"
#include "vocab_impl.h"

#define MANIFEST "sensorium.json"
/* The id table packs the role in the top 8 bits and the segment in the low 24. */
#define MAX_VOCAB (1u << 24)
#define ROLE_SHIFT 24
#define SEG_MASK 0xFFFFFFu

typedef struct vocab_seg {
    char *modality, *plugin, *config_json; /* owned */
    uint32_t start, size;
    int32_t begin, end;
    sn_plugin_instance *inst; /* owned: created from the segment's config */
} vocab_seg;

struct sn_vocab {
    uint32_t size;
    int32_t bos, eos, pad; /* -1: none */
    int32_t *stops;        /* (n_stops) eos, then every "stop" id: all end generation */
    size_t n_stops;
    long open_seg;         /* the segment without markers, or -1 */
    vocab_seg *segs;       /* (n_segs) */
    size_t n_segs;
    uint32_t *owner; /* (size) role << 24 | segment */
};

/* Reading context: the manifest's path for messages. */
typedef struct reader {
    const char *path;
} reader;

static sn_status bad(const reader *r, const char *fmt, ...) SN_PRINTF(2, 3);
static sn_status bad(const reader *r, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sn_fail(SN_ERR_VOCAB, "%s: %s", r->path, msg);
}

/* Rejects keys outside known (a NULL-terminated list): a misspelt key must not be ignored. */
static sn_status check_keys(const reader *r, json_t *obj, const char *where, const char *const *known)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        int ok = 0;
        for (const char *const *k = known; *k && !ok; k++)
            ok = strcmp(*k, key) == 0;
        if (!ok) {
            char list[256] = "";
            for (const char *const *k = known; *k; k++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k == known ? "" : ", ", *k);
            return bad(r, "%s: unknown key '%s' (known: %s)", where, key, list);
        }
    }
    return SN_OK;
}

/* An integer field in [lo, hi]; required unless *out is preset and absent_ok. */
static sn_status get_int(const reader *r, json_t *obj, const char *where, const char *key,
                         int absent_ok, long long lo, long long hi, long long *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (absent_ok)
            return SN_OK;
        return bad(r, "%s: missing required key '%s'", where, key);
    }
    if (!json_is_integer(v))
        return bad(r, "%s.%s must be an integer", where, key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return bad(r, "%s.%s = %lld is outside %lld..%lld", where, key, x, lo, hi);
    *out = x;
    return SN_OK;
}

static sn_status get_str(const reader *r, json_t *obj, const char *where, const char *key,
                         char **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return bad(r, "%s: missing required key '%s'", where, key);
    if (!json_is_string(v) || json_string_length(v) == 0)
        return bad(r, "%s.%s must be a non-empty string", where, key);
    *out = sn_strdup(json_string_value(v));
    return *out ? SN_OK : sn_fail(SN_ERR_NOMEM, "out of memory");
}

/* "vocab.segments[1] (action)" or "vocab.bos": who holds an id, for conflict messages. */
static void describe_owner(const sn_vocab *v, uint32_t code, char *buf, size_t len)
{
    sn_token_role role = (sn_token_role)(code >> ROLE_SHIFT);
    uint32_t s = code & SEG_MASK;
    switch (role) {
    case SN_TOKEN_BOS: snprintf(buf, len, "vocab.bos"); break;
    case SN_TOKEN_EOS: snprintf(buf, len, "vocab.eos"); break;
    case SN_TOKEN_PAD: snprintf(buf, len, "vocab.pad"); break;
    case SN_TOKEN_BEGIN:
        snprintf(buf, len, "the begin marker of vocab.segments[%u] (%s)", s, v->segs[s].modality);
        break;
    case SN_TOKEN_END:
        snprintf(buf, len, "the end marker of vocab.segments[%u] (%s)", s, v->segs[s].modality);
        break;
    case SN_TOKEN_PLUGIN:
        snprintf(buf, len, "the range of vocab.segments[%u] (%s), ids %u..%u", s,
                 v->segs[s].modality, v->segs[s].start, v->segs[s].start + v->segs[s].size - 1);
        break;
    case SN_TOKEN_UNUSED: snprintf(buf, len, "nothing"); break;
    }
}

/* Claims one id for a special token or marker. */
static sn_status claim(const reader *r, sn_vocab *v, int32_t id, sn_token_role role, uint32_t seg)
{
    uint32_t code = (uint32_t)role << ROLE_SHIFT | seg;
    const int special = role == SN_TOKEN_BOS || role == SN_TOKEN_EOS || role == SN_TOKEN_PAD;
    if (special && v->open_seg >= 0 && v->owner[id] == ((uint32_t)SN_TOKEN_PLUGIN << ROLE_SHIFT | (uint32_t)v->open_seg)) {
        v->owner[id] = code; /* a control token of the open segment's tokenizer */
        return SN_OK;
    }
    if (v->owner[id] != 0) {
        char mine[160], theirs[160];
        describe_owner(v, code, mine, sizeof mine);
        describe_owner(v, v->owner[id], theirs, sizeof theirs);
        return bad(r, "id %d is claimed twice: by %s and by %s", id, theirs, mine);
    }
    v->owner[id] = code;
    return SN_OK;
}

static sn_status parse_segment(const reader *r, sn_vocab *v, size_t i, json_t *e)
{
    static const char *const keys[] = {"modality", "plugin", "start", "size", "begin", "end", "config", NULL};
    char where[64];
    snprintf(where, sizeof where, "vocab.segments[%zu]", i);
    if (!json_is_object(e))
        return bad(r, "%s must be an object", where);
    sn_status st = check_keys(r, e, where, keys);
    vocab_seg *s = &v->segs[i];
    long long start = 0, size = 0, begin = -1, end = -1;
    if (st == SN_OK) st = get_str(r, e, where, "modality", &s->modality);
    if (st == SN_OK) st = get_str(r, e, where, "plugin", &s->plugin);
    if (st == SN_OK) st = get_int(r, e, where, "start", 0, 0, INT32_MAX, &start);
    if (st == SN_OK) st = get_int(r, e, where, "size", 0, 1, INT32_MAX, &size);
    if (st == SN_OK) st = get_int(r, e, where, "begin", 1, 0, INT32_MAX, &begin);
    if (st == SN_OK) st = get_int(r, e, where, "end", 1, 0, INT32_MAX, &end);
    if (st != SN_OK)
        return st;
    if ((begin < 0) != (end < 0))
        return bad(r, "%s (%s): give both markers 'begin' and 'end', or neither (an open segment)", where,
                   s->modality);
    if (begin < 0) {
        if (v->open_seg >= 0)
            return bad(r, "%s (%s): a second segment without markers (vocab.segments[%ld] is open already)",
                       where, s->modality, v->open_seg);
        v->open_seg = (long)i;
    }
    s->start = (uint32_t)start;
    s->size = (uint32_t)size;
    s->begin = (int32_t)begin;
    s->end = (int32_t)end;
    if (start + size > (long long)v->size)
        return bad(r, "%s (%s): ids %lld..%lld run past vocab.size %u", where, s->modality, start,
                   start + size - 1, v->size);
    if (begin >= (long long)v->size)
        return bad(r, "%s (%s): begin marker %lld is past vocab.size %u", where, s->modality, begin, v->size);
    if (end >= (long long)v->size)
        return bad(r, "%s (%s): end marker %lld is past vocab.size %u", where, s->modality, end, v->size);
    json_t *config = json_object_get(e, "config");
    if (config && !json_is_object(config))
        return bad(r, "%s.config must be an object", where);
    s->config_json = config ? json_dumps(config, JSON_COMPACT | JSON_PRESERVE_ORDER) : sn_strdup("{}");
    if (!s->config_json)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    return SN_OK;
}

static sn_status parse(const reader *r, sn_vocab *v, json_t *root)
{
    static const char *const top_keys[] = {"sensorium", "name", "description", "vocab",
                                           "architecture", "weights", NULL};
    static const char *const vocab_keys[] = {"size", "bos", "eos", "pad", "stop", "segments", NULL};
    v->open_seg = -1;
    if (!json_is_object(root))
        return bad(r, "the manifest must be a JSON object");
    sn_status st = check_keys(r, root, "the manifest", top_keys);
    long long version = 0;
    if (st == SN_OK) st = get_int(r, root, "the manifest", "sensorium", 0, 1, 1000, &version);
    if (st != SN_OK)
        return st;
    if (version != 1)
        return bad(r, "manifest format %lld is newer than this engine reads (1); upgrade Sensorium", version);
    json_t *jv = json_object_get(root, "vocab");
    if (!jv)
        return bad(r, "missing required key 'vocab'");
    if (!json_is_object(jv))
        return bad(r, "'vocab' must be an object");
    st = check_keys(r, jv, "vocab", vocab_keys);
    long long size = 0, bos = -1, eos = -1, pad = -1;
    if (st == SN_OK) st = get_int(r, jv, "vocab", "size", 0, 1, MAX_VOCAB, &size);
    if (st == SN_OK) st = get_int(r, jv, "vocab", "bos", 1, 0, INT32_MAX, &bos);
    if (st == SN_OK) st = get_int(r, jv, "vocab", "eos", 0, 0, INT32_MAX, &eos);
    if (st == SN_OK) st = get_int(r, jv, "vocab", "pad", 1, 0, INT32_MAX, &pad);
    if (st != SN_OK)
        return st;
    v->size = (uint32_t)size;
    const char *names[] = {"bos", "eos", "pad"};
    long long ids[] = {bos, eos, pad};
    for (int k = 0; k < 3; k++)
        if (ids[k] >= size)
            return bad(r, "vocab.%s = %lld is past vocab.size %lld", names[k], ids[k], size);
    v->bos = (int32_t)bos;
    v->eos = (int32_t)eos;
    v->pad = (int32_t)pad;
    json_t *stop = json_object_get(jv, "stop");
    if (stop && !json_is_array(stop))
        return bad(r, "vocab.stop must be an array of ids");
    v->stops = malloc((1 + json_array_size(stop)) * sizeof *v->stops);
    if (!v->stops)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    v->stops[v->n_stops++] = v->eos;
    for (size_t k = 0; k < json_array_size(stop); k++) {
        json_t *id = json_array_get(stop, k);
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= size)
            return bad(r, "vocab.stop[%zu] must be an id in 0..%lld", k, size - 1);
        v->stops[v->n_stops++] = (int32_t)json_integer_value(id);
    }

    json_t *segs = json_object_get(jv, "segments");
    if (!segs)
        return bad(r, "vocab: missing required key 'segments'");
    if (!json_is_array(segs) || json_array_size(segs) == 0)
        return bad(r, "vocab.segments must be a non-empty array");
    if (json_array_size(segs) > SEG_MASK)
        return bad(r, "vocab.segments has too many entries");
    v->n_segs = json_array_size(segs);
    v->segs = calloc(v->n_segs, sizeof *v->segs);
    v->owner = calloc(v->size, sizeof *v->owner);
    if (!v->segs || !v->owner)
        return sn_fail(SN_ERR_NOMEM, "out of memory for a vocabulary of %u ids", v->size);
    for (size_t i = 0; i < v->n_segs; i++)
        if ((st = parse_segment(r, v, i, json_array_get(segs, i))) != SN_OK)
            return st;

    /* Unique modalities; disjoint ranges (pairwise, for a message naming both entries). */
    for (size_t i = 0; i < v->n_segs; i++) {
        for (size_t j = 0; j < i; j++) {
            const vocab_seg *a = &v->segs[j], *b = &v->segs[i];
            if (strcmp(a->modality, b->modality) == 0)
                return bad(r, "vocab.segments[%zu] and vocab.segments[%zu] both name modality '%s'",
                           j, i, a->modality);
            if (b->start < a->start + a->size && a->start < b->start + b->size)
                return bad(r, "vocab.segments[%zu] (%s) ids %u..%u overlap vocab.segments[%zu] (%s) ids %u..%u",
                           i, b->modality, b->start, b->start + b->size - 1, j, a->modality,
                           a->start, a->start + a->size - 1);
        }
    }
    for (size_t i = 0; i < v->n_segs; i++)
        for (uint32_t g = v->segs[i].start; g < v->segs[i].start + v->segs[i].size; g++)
            v->owner[g] = (uint32_t)SN_TOKEN_PLUGIN << ROLE_SHIFT | (uint32_t)i;
    if (v->bos >= 0 && (st = claim(r, v, v->bos, SN_TOKEN_BOS, 0)) != SN_OK) return st;
    if (v->eos >= 0 && (st = claim(r, v, v->eos, SN_TOKEN_EOS, 0)) != SN_OK) return st;
    if (v->pad >= 0 && (st = claim(r, v, v->pad, SN_TOKEN_PAD, 0)) != SN_OK) return st;
    for (size_t k = 1; k < v->n_stops; k++)
        if ((st = claim(r, v, v->stops[k], SN_TOKEN_EOS, 0)) != SN_OK) return st;
    for (size_t i = 0; i < v->n_segs; i++) {
        if ((long)i == v->open_seg)
            continue;
        if ((st = claim(r, v, v->segs[i].begin, SN_TOKEN_BEGIN, (uint32_t)i)) != SN_OK) return st;
        if ((st = claim(r, v, v->segs[i].end, SN_TOKEN_END, (uint32_t)i)) != SN_OK) return st;
    }
    return SN_OK;
}

/* Creates each segment's plugin and checks it fills its range exactly. */
static sn_status create_plugins(const reader *r, sn_vocab *v, const sn_plugins *plugins,
                                json_t *root, const char *model_dir)
{
    json_t *segs = json_object_get(json_object_get(root, "vocab"), "segments");
    for (size_t i = 0; i < v->n_segs; i++) {
        vocab_seg *s = &v->segs[i];
        const sn_plugin_rec *rec = sn_plugins_lookup(plugins, s->plugin);
        if (!rec) {
            sn_str known = {0};
            for (size_t k = 0; k < sn_plugins_count(plugins); k++)
                sn_str_printf(&known, "%s%s", k ? ", " : "", sn_plugins_rec(plugins, k)->desc.name);
            sn_status st = bad(r, "vocab.segments[%zu] (%s): unknown plugin '%s' (loaded: %s; see `sensorium plugins`)",
                               i, s->modality, s->plugin, known.s ? known.s : "none");
            sn_str_free(&known);
            return st;
        }
        sn_status st = sn_plugin_instance_create(rec, json_object_get(json_array_get(segs, i), "config"),
                                                 model_dir, &s->inst);
        if (st != SN_OK) {
            char why[1024];
            snprintf(why, sizeof why, "%s", sn_errmsg());
            return sn_fail(st, "%s: vocab.segments[%zu] (%s): %s", r->path, i, s->modality, why);
        }
        if (s->inst->vocab_size != s->size)
            return bad(r, "vocab.segments[%zu] (%s): plugin '%s' has vocab_size %u with this config, but the range holds %u ids (%u..%u)",
                       i, s->modality, s->plugin, s->inst->vocab_size, s->size, s->start,
                       s->start + s->size - 1);
    }
    return SN_OK;
}

/* The layout of a GGUF language model, as a manifest: one open text segment over the whole
 * vocabulary for text.bpe reading the file's own tokenizer; its eos, and every other control
 * token (tokenizer.ggml.token_type 3: <|im_end|>, <|eot_id|>, ...) as ids that end
 * generation. No bos: the chat template, or the caller feeding raw ids, places it. */
static sn_status gguf_manifest(const char *path, json_t **out)
{
    char err[768];
    sn_gguf *g;
    if (sn_gguf_open(path, &g, err, sizeof err) != 0)
        return sn_fail(SN_ERR_FORMAT, "%s", err);
    sn_status st = SN_OK;
    const sn_gguf_kv *tokens = sn_gguf_find(g, "tokenizer.ggml.tokens");
    const sn_gguf_kv *types = sn_gguf_find(g, "tokenizer.ggml.token_type");
    int64_t eos = -1;
    if (!tokens || tokens->type != SN_GGUF_ARRAY || tokens->arr_n == 0 || tokens->arr_n > MAX_VOCAB) {
        st = sn_fail(SN_ERR_NOT_FOUND, "%s: no tokenizer in this GGUF (tokenizer.ggml.tokens): feed and generate raw token ids", path);
        goto done;
    }
    if (sn_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &eos) != 0 || eos < 0 || (uint64_t)eos >= tokens->arr_n) {
        st = sn_fail(SN_ERR_FORMAT, "%s: tokenizer.ggml.eos_token_id is missing or past the %llu tokens", path,
                     (unsigned long long)tokens->arr_n);
        goto done;
    }
    json_t *stop = json_array();
    if (types && types->type == SN_GGUF_ARRAY && types->arr_n == tokens->arr_n &&
        (types->arr_type == SN_GGUF_INT32 || types->arr_type == SN_GGUF_UINT32))
        for (uint64_t i = 0; i < types->arr_n; i++)
            if (sn_gguf_array_int(types, i) == 3 && (int64_t)i != eos)
                json_array_append_new(stop, json_integer((json_int_t)i));
    const char *slash = strrchr(path, '/');
    json_t *seg = json_pack("{s:s, s:s, s:i, s:I, s:{s:s}}", "modality", "text", "plugin", "text.bpe", "start", 0,
                            "size", (json_int_t)tokens->arr_n, "config", "gguf", slash ? slash + 1 : path);
    *out = json_pack("{s:i, s:s, s:{s:I, s:I, s:o, s:[o]}}", "sensorium", 1, "name", path, "vocab", "size",
                     (json_int_t)tokens->arr_n, "eos", (json_int_t)eos, "stop", stop, "segments", seg);
    if (!*out)
        st = sn_fail(SN_ERR_NOMEM, "out of memory");
done:
    sn_gguf_close(g);
    return st;
}

sn_status sn_vocab_open(const char *model_dir, const sn_plugins *plugins, sn_vocab **out)
{
    sn_clear_error();
    if (!model_dir || !plugins || !out)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_vocab_open: model_dir, plugins and out must not be NULL");
    *out = NULL;
    sn_str path = {0}, data_dir = {0};
    json_t *root = NULL;
    sn_status st;
    struct stat sb;
    if (stat(model_dir, &sb) == 0 && S_ISREG(sb.st_mode)) {
        /* A GGUF file: its layout comes from its tokenizer, its data dir is its folder. */
        const char *slash = strrchr(model_dir, '/');
        if ((st = sn_str_printf(&path, "%s", model_dir)) != SN_OK ||
            (st = sn_str_printf(&data_dir, "%.*s", slash ? (int)(slash - model_dir) : 1, slash ? model_dir : ".")) != SN_OK ||
            (st = gguf_manifest(model_dir, &root)) != SN_OK)
            goto done;
    } else {
        if ((st = sn_str_printf(&path, "%s/%s", model_dir, MANIFEST)) != SN_OK ||
            (st = sn_str_printf(&data_dir, "%s", model_dir)) != SN_OK)
            goto done;
        json_error_t jerr;
        root = json_load_file(path.s, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
            FILE *f = fopen(path.s, "rb");
            if (!f)
                st = sn_fail(SN_ERR_NOT_FOUND, "%s: no manifest here (is %s a model folder?)", path.s, model_dir);
            else {
                fclose(f);
                st = sn_fail(SN_ERR_FORMAT, "%s:%d:%d: malformed JSON: %s", path.s, jerr.line, jerr.column, jerr.text);
            }
            goto done;
        }
    }
    reader r = {.path = path.s};
    sn_vocab *v = calloc(1, sizeof *v);
    st = v ? parse(&r, v, root) : sn_fail(SN_ERR_NOMEM, "out of memory");
    if (st == SN_OK)
        st = create_plugins(&r, v, plugins, root, data_dir.s);
    if (st != SN_OK)
        sn_vocab_close(v);
    else
        *out = v;
done:
    json_decref(root);
    sn_str_free(&path);
    sn_str_free(&data_dir);
    return st;
}

sn_status sn_vocab_encode_segment(const sn_vocab *v, size_t seg, sn_stream *stream, const sn_media *media,
                                  sn_tokens *out)
{
    const vocab_seg *s = &v->segs[seg];
    sn_tokens local = {0};
    sn_status st = sn_instance_encode(s->inst, stream, media, &local);
    if (st == SN_OK)
        st = sn_instance_encode_flush(s->inst, stream, &local);
    for (size_t i = 0; st == SN_OK && i < local.n; i++)
        local.ids[i] += (int32_t)s->start; /* local -> global */
    if (st == SN_OK && s->begin >= 0)
        st = sn_tokens_append(out, &s->begin, 1);
    if (st == SN_OK)
        st = sn_tokens_append(out, local.ids, local.n);
    if (st == SN_OK && s->end >= 0)
        st = sn_tokens_append(out, &s->end, 1);
    sn_tokens_clear(&local);
    return st;
}

const int32_t *sn_vocab_stops(const sn_vocab *v, size_t *n)
{
    *n = v ? v->n_stops : 0;
    return v ? v->stops : NULL;
}

long sn_vocab_open_segment(const sn_vocab *v) { return v ? v->open_seg : -1; }

void sn_vocab_close(sn_vocab *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n_segs; i++) {
        sn_plugin_instance_destroy(v->segs[i].inst);
        free(v->segs[i].modality);
        free(v->segs[i].plugin);
        free(v->segs[i].config_json);
    }
    free(v->segs);
    free(v->owner);
    free(v->stops);
    free(v);
}

uint32_t sn_vocab_size(const sn_vocab *v) { return v ? v->size : 0; }

size_t sn_vocab_segment_count(const sn_vocab *v) { return v ? v->n_segs : 0; }

sn_status sn_vocab_segment_get(const sn_vocab *v, size_t i, sn_vocab_segment *out)
{
    if (!v || !out || i >= v->n_segs)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_vocab_segment_get: index %zu out of range", i);
    const vocab_seg *s = &v->segs[i];
    *out = (sn_vocab_segment){
        .modality = s->modality,
        .plugin = s->plugin,
        .config_json = s->config_json,
        .start = s->start,
        .size = s->size,
        .begin = s->begin,
        .end = s->end,
    };
    return SN_OK;
}

long sn_vocab_find(const sn_vocab *v, const char *modality)
{
    if (!v || !modality)
        return -1;
    for (size_t i = 0; i < v->n_segs; i++)
        if (strcmp(v->segs[i].modality, modality) == 0)
            return (long)i;
    return -1;
}

int32_t sn_vocab_special(const sn_vocab *v, sn_token_role role)
{
    if (!v)
        return -1;
    switch (role) {
    case SN_TOKEN_BOS: return v->bos;
    case SN_TOKEN_EOS: return v->eos;
    case SN_TOKEN_PAD: return v->pad;
    default: return -1;
    }
}

sn_token_info sn_vocab_lookup(const sn_vocab *v, int32_t g)
{
    sn_token_info info = {.role = SN_TOKEN_UNUSED, .segment = -1, .local = -1};
    if (!v || g < 0 || (uint32_t)g >= v->size)
        return info;
    uint32_t code = v->owner[g];
    info.role = (sn_token_role)(code >> ROLE_SHIFT);
    if (info.role == SN_TOKEN_PLUGIN || info.role == SN_TOKEN_BEGIN || info.role == SN_TOKEN_END)
        info.segment = (int32_t)(code & SEG_MASK);
    if (info.role == SN_TOKEN_PLUGIN)
        info.local = g - (int32_t)v->segs[info.segment].start;
    return info;
}

int32_t sn_vocab_global(const sn_vocab *v, size_t segment, int32_t local)
{
    if (!v || segment >= v->n_segs || local < 0 || (uint32_t)local >= v->segs[segment].size)
        return -1;
    return (int32_t)(v->segs[segment].start + (uint32_t)local);
}

sn_plugin_instance *sn_vocab_instance(const sn_vocab *v, size_t i)
{
    return v && i < v->n_segs ? v->segs[i].inst : NULL;
}
