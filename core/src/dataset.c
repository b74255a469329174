/*
 * dataset.c - training sequences from episodes (dataset.h): read the manifest line by line,
 * turn each feed and target into media, encode it with the model's own plugins, and write
 * the tokens, the loss mask and the sequence offsets as NPY files.
 */
#include "dataset.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_impl.h"
#include "vocab_impl.h"

/* Where a manifest entry is, for messages: "episodes.jsonl:12: targets[1] (joints)". */
typedef struct where {
    const char *manifest;
    size_t line;
    const char *list; /* "feeds" or "targets" */
    size_t index;
    const char *modality;
} where;

static sn_status bad(const where *w, sn_status st, const char *what)
{
    if (w->list)
        return sn_fail(st, "%s:%zu: %s[%zu]%s%s%s: %s", w->manifest, w->line, w->list, w->index,
                       w->modality ? " (" : "", w->modality ? w->modality : "", w->modality ? ")" : "", what);
    return sn_fail(st, "%s:%zu: %s", w->manifest, w->line, what);
}

/* The media an entry describes: a file (relative to dir), a text, or a series of values.
 * *owned is what to free after use (values), or NULL; file media are released by the caller
 * through sn_media_release when *from_file. */
static sn_status entry_media(const where *w, json_t *e, const char *dir, sn_media *m, float **owned, int *from_file)
{
    *owned = NULL;
    *from_file = 0;
    json_t *file = json_object_get(e, "file"), *text = json_object_get(e, "text"), *vals = json_object_get(e, "values");
    if (!!file + !!text + !!vals != 1)
        return bad(w, SN_ERR_FORMAT, "give exactly one of \"file\", \"text\" or \"values\"");
    if (file) {
        if (!json_is_string(file))
            return bad(w, SN_ERR_FORMAT, "\"file\" must be a path");
        const char *f = json_string_value(file);
        sn_str path = {0};
        sn_status st = f[0] == '/' ? sn_str_printf(&path, "%s", f) : sn_str_printf(&path, "%s/%s", dir, f);
        if (st == SN_OK)
            st = sn_media_read(path.s, m);
        sn_str_free(&path);
        if (st != SN_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", sn_errmsg());
            return bad(w, st, msg);
        }
        *from_file = 1;
        return SN_OK;
    }
    if (text) {
        if (!json_is_string(text))
            return bad(w, SN_ERR_FORMAT, "\"text\" must be a string");
        *m = (sn_media){.kind = SN_MEDIA_TEXT, .text = {json_string_value(text), json_string_length(text)}};
        return SN_OK;
    }
    /* values: [[...], ...] ticks x dims, or [...] one tick */
    if (!json_is_array(vals) || json_array_size(vals) == 0)
        return bad(w, SN_ERR_FORMAT, "\"values\" must be a non-empty array of rows");
    int nested = json_is_array(json_array_get(vals, 0));
    size_t ticks = nested ? json_array_size(vals) : 1;
    size_t dims = nested ? json_array_size(json_array_get(vals, 0)) : json_array_size(vals);
    if (dims == 0 || dims > UINT32_MAX)
        return bad(w, SN_ERR_FORMAT, "\"values\" rows must be non-empty");
    float *v = malloc(ticks * dims * sizeof *v);
    if (!v)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    for (size_t t = 0; t < ticks; t++) {
        json_t *row = nested ? json_array_get(vals, t) : vals;
        if (!json_is_array(row) || json_array_size(row) != dims) {
            free(v);
            return bad(w, SN_ERR_FORMAT, "\"values\" rows must all have the same length");
        }
        for (size_t d = 0; d < dims; d++) {
            json_t *x = json_array_get(row, d);
            if (!json_is_number(x)) {
                free(v);
                return bad(w, SN_ERR_FORMAT, "\"values\" must hold numbers");
            }
            v[t * dims + d] = (float)json_number_value(x);
        }
    }
    *owned = v;
    *m = (sn_media){.kind = SN_MEDIA_SERIES, .series = {v, ticks, (uint32_t)dims, 0.0}};
    return SN_OK;
}

/* Encodes media as modality's segment onto seq, on a fresh stream as a new session has. */
static sn_status encode(const where *w, const sn_vocab *v, const char *modality, const sn_media *m, sn_tokens *seq)
{
    long seg = sn_vocab_find(v, modality);
    if (seg < 0)
        return bad(w, SN_ERR_NOT_FOUND, "the model has no such modality");
    sn_plugin_instance *inst = sn_vocab_instance(v, (size_t)seg);
    sn_stream *stream;
    sn_status st = sn_instance_open_stream(inst, &stream);
    sn_tokens ids = {0};
    if (st == SN_OK) {
        st = sn_vocab_encode_segment(v, (size_t)seg, stream, m, &ids);
        sn_instance_close_stream(inst, stream);
    }
    if (st == SN_OK)
        st = sn_tokens_append(seq, ids.ids, ids.n);
    sn_tokens_clear(&ids);
    if (st != SN_OK && st != SN_ERR_NOMEM) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", sn_errmsg());
        return bad(w, st, msg);
    }
    return st;
}

/* One feed or target entry onto seq. */
static sn_status encode_entry(where *w, const sn_vocab *v, json_t *e, const char *dir, sn_tokens *seq)
{
    json_t *mod = json_object_get(e, "modality");
    w->modality = NULL;
    if (!json_is_object(e) || !json_is_string(mod))
        return bad(w, SN_ERR_FORMAT, "must be an object with a \"modality\"");
    w->modality = json_string_value(mod);
    sn_media m;
    float *owned;
    int from_file;
    sn_status st = entry_media(w, e, dir, &m, &owned, &from_file);
    if (st == SN_OK)
        st = encode(w, v, w->modality, &m, seq);
    if (from_file)
        sn_media_release(&m);
    free(owned);
    return st;
}

/* The targets as one JSON function call: {"name": the text target, "arguments": {modality:
 * values of each values target}}, compact, numbers with 4 significant digits. */
static char *json_call(json_t *targets)
{
    json_t *call = json_object(), *args = json_object();
    size_t i;
    json_t *t;
    json_array_foreach(targets, i, t) {
        json_t *mod = json_object_get(t, "modality"), *text = json_object_get(t, "text"),
               *vals = json_object_get(t, "values");
        if (json_is_string(text))
            json_object_set(call, "name", text);
        else if (json_is_array(vals) && json_is_string(mod)) {
            json_t *flat = json_array();
            size_t r, c;
            json_t *row, *x;
            json_array_foreach(vals, r, row) {
                if (json_is_array(row))
                    json_array_foreach(row, c, x) json_array_append_new(flat, json_real(json_number_value(x)));
                else
                    json_array_append_new(flat, json_real(json_number_value(row)));
            }
            json_object_set_new(args, json_string_value(mod), flat);
        }
    }
    json_object_set_new(call, "arguments", args);
    char *s = json_dumps(call, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(4));
    json_decref(call);
    return s;
}

/* The folder of a path ("." when none), malloc'ed. */
static char *folder_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    sn_str s = {0};
    if (slash)
        sn_str_printf(&s, "%.*s", (int)(slash == path ? 1 : slash - path), path);
    else
        sn_str_printf(&s, ".");
    return s.s;
}

static sn_status write_npy(const char *out, const char *suffix, const sn_tokens *a)
{
    sn_str path = {0};
    sn_status st = sn_str_printf(&path, "%s.%s.npy", out, suffix);
    if (st == SN_OK)
        st = sn_tokens_write_npy(path.s, a->ids ? a->ids : (const int32_t[]){0}, a->n);
    sn_str_free(&path);
    return st;
}

sn_status sn_dataset_build(const sn_dataset_opts *o, sn_dataset_stats *stats)
{
    sn_clear_error();
    memset(stats, 0, sizeof *stats);
    sn_vocab *v = NULL;
    FILE *f = NULL;
    char *line = NULL, *dir = folder_of(o->manifest);
    size_t cap = 0, total = 0;
    sn_tokens tokens = {0}, mask = {0}, offsets = {0}, seq = {0};
    sn_status st = dir ? sn_vocab_open(o->model_dir, o->plugins, &v) : sn_fail(SN_ERR_NOMEM, "out of memory");
    if (st != SN_OK)
        goto done;
    if (o->json_modality && sn_vocab_find(v, o->json_modality) < 0) {
        st = sn_fail(SN_ERR_NOT_FOUND, "%s: no modality '%s' to write the JSON calls in", o->model_dir,
                     o->json_modality);
        goto done;
    }
    if (!(f = fopen(o->manifest, "r"))) {
        st = sn_fail(SN_ERR_NOT_FOUND, "%s: cannot open the episode manifest", o->manifest);
        goto done;
    }
    for (int c; (c = fgetc(f)) != EOF;) /* lines, for progress */
        total += c == '\n';
    rewind(f);
    const int32_t bos = sn_vocab_special(v, SN_TOKEN_BOS), eos = sn_vocab_special(v, SN_TOKEN_EOS), zero = 0;
    if ((st = sn_tokens_append(&offsets, &zero, 1)) != SN_OK)
        goto done;
    where w = {.manifest = o->manifest};
    for (ssize_t len; (len = getline(&line, &cap, f)) >= 0;) {
        w.line++;
        w.list = NULL;
        if (strspn(line, " \t\r\n") == (size_t)len)
            continue;
        json_error_t jerr;
        json_t *ep = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
        if (!ep || !json_is_object(ep)) {
            st = sn_fail(SN_ERR_FORMAT, "%s:%zu:%d: %s", o->manifest, w.line, jerr.column,
                         ep ? "an episode must be a JSON object" : jerr.text);
            json_decref(ep);
            goto done;
        }
        json_t *split = json_object_get(ep, "split"), *feeds = json_object_get(ep, "feeds"),
               *targets = json_object_get(ep, "targets");
        if (o->split && !(json_is_string(split) && strcmp(json_string_value(split), o->split) == 0)) {
            json_decref(ep);
            continue;
        }
        if (!json_is_array(feeds) || !json_is_array(targets) || !json_array_size(targets)) {
            json_decref(ep);
            st = bad(&w, SN_ERR_FORMAT, "an episode needs \"feeds\" and a non-empty \"targets\" array");
            goto done;
        }
        seq.n = 0;
        if (bos >= 0)
            st = sn_tokens_append(&seq, &bos, 1);
        size_t i;
        json_t *e;
        w.list = "feeds";
        json_array_foreach(feeds, i, e) {
            w.index = i;
            if (st == SN_OK)
                st = encode_entry(&w, v, e, dir, &seq);
        }
        const size_t answer = seq.n;
        w.list = "targets";
        if (st == SN_OK && o->json_modality) {
            char *call = json_call(targets);
            sn_media m = {.kind = SN_MEDIA_TEXT, .text = {call ? call : "", call ? strlen(call) : 0}};
            w.index = 0;
            st = call ? encode(&w, v, o->json_modality, &m, &seq) : sn_fail(SN_ERR_NOMEM, "out of memory");
            free(call);
        } else {
            json_array_foreach(targets, i, e) {
                w.index = i;
                if (st == SN_OK)
                    st = encode_entry(&w, v, e, dir, &seq);
            }
        }
        json_decref(ep);
        if (st == SN_OK)
            st = sn_tokens_append(&seq, &eos, 1);
        if (st != SN_OK)
            goto done;
        /* the mask: the stimuli are context, the answer (markers and eos included) is learnt */
        for (size_t k = 0; k < seq.n && st == SN_OK; k++) {
            const int32_t one = k >= answer;
            st = sn_tokens_append(&mask, &one, 1);
        }
        if (st == SN_OK)
            st = sn_tokens_append(&tokens, seq.ids, seq.n);
        const int32_t end = (int32_t)tokens.n;
        if (st == SN_OK)
            st = sn_tokens_append(&offsets, &end, 1);
        if (st != SN_OK)
            goto done;
        if (tokens.n > INT32_MAX / 2) {
            st = sn_fail(SN_ERR_UNSUPPORTED, "%s: more than %d tokens; split the manifest", o->manifest, INT32_MAX / 2);
            goto done;
        }
        stats->episodes++;
        stats->target_tokens += seq.n - answer;
        if (seq.n > stats->longest)
            stats->longest = seq.n;
        if (o->progress && stats->episodes % 100 == 0)
            o->progress(o->progress_ctx, w.line, total);
    }
    stats->tokens = tokens.n;
    if (!stats->episodes) {
        st = sn_fail(SN_ERR_NOT_FOUND, "%s: no episodes%s%s%s", o->manifest, o->split ? " of split '" : "",
                     o->split ? o->split : "", o->split ? "'" : "");
        goto done;
    }
    if (o->progress)
        o->progress(o->progress_ctx, total, total);
    if ((st = write_npy(o->out, "tokens", &tokens)) != SN_OK || (st = write_npy(o->out, "mask", &mask)) != SN_OK ||
        (st = write_npy(o->out, "offsets", &offsets)) != SN_OK)
        goto done;
done:
    if (f)
        fclose(f);
    free(line);
    free(dir);
    sn_tokens_clear(&tokens);
    sn_tokens_clear(&mask);
    sn_tokens_clear(&offsets);
    free(seq.ids);
    sn_vocab_close(v);
    return st;
}
