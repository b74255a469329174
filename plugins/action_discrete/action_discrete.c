/*
 * action_discrete.c - the "action.discrete" plugin: a fixed list of named actions
 * ("stop", "grip.close"), one token each.
 *
 * The reference decoder for discrete actions: the model emits one token per action segment
 * and decode turns it into an SN_ACTION_NAMED event, with no detour through text. The same
 * plugin tokenizes a text listing action names, so that recorded action logs can be fed back
 * as input. constrain() makes every generated segment exactly one action.
 */
#include <sensorium/plugin.h>

#include "plugin_util.h"

#include <stdlib.h>
#include <string.h>

/* Longer names are certainly a mistake, and the bound keeps what encode holds between chunks
 * (and every error message) small. */
#define MAX_NAME_LEN 128
/* Ids handed to the sink per call: stack space, so that encode does not allocate. */
#define ENCODE_BATCH 256
/* How many valid names an "unknown action" message lists. */
#define NAMES_SHOWN 5

typedef struct name_entry {
    const char *name;
    uint32_t index;
} name_entry;

struct sn_instance {
    uint32_t n;          /* actions = vocabulary size */
    const char **names;  /* (n) action i's name; the strings are the host's, valid until
                          * destroy (plugin.h), so they are not copied */
    name_entry *sorted;  /* (n) by name: encode's look-up */
    size_t max_len;      /* the longest name: bounds the name held between encode chunks */
};

struct sn_stream {
    const sn_instance *inst;
    char *word;      /* (inst->max_len + 1) the name being read, held across encode chunks */
    size_t word_len;
    int in_word;
    int word_held;   /* the name began in an earlier chunk than the current one */
    double word_t;   /* t of the chunk the name began in: the time its id carries */
};

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static int name_char_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
}

/* The separators of encode's input: C's isspace in the "C" locale, so that files with CRLF
 * line ends read the same. */
static int is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Ties broken by index so that duplicates sort in the order the configuration lists them. */
static int entry_cmp(const void *a, const void *b)
{
    const name_entry *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return x->index < y->index ? -1 : x->index > y->index;
}

static int key_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const name_entry *)elem)->name);
}

/* ---------------------------------------------------------------------------------------- */
/* Lifecycle                                                                                */
/* ---------------------------------------------------------------------------------------- */

static void ad_destroy(sn_instance *inst)
{
    if (!inst)
        return;
    free(inst->names);
    free(inst->sorted);
    free(inst);
}

/* The host's message for a mistyped 'actions' names the key already; make sure of it. */
static sn_plugin_status actions_lookup_failed(sn_plugin_status s, sn_plugin_error *err)
{
    if (!strstr(err->message, "actions")) {
        char why[SN_PLUGIN_ERROR_MAX];
        snprintf(why, sizeof why, "%s", err->message[0] ? err->message : "cannot be read");
        sn_plugin_error_set(err, "config key 'actions': %.400s", why);
    }
    return s == SN_PLUGIN_ERR_NOMEM ? s : SN_PLUGIN_ERR_CONFIG;
}

/* Every name non-empty, short, of [A-Za-z0-9_.-]; writes why not to err. */
static int name_ok(const char *name, size_t i, sn_plugin_error *err)
{
    if (!name) {
        sn_plugin_error_set(err, "config key 'actions'[%zu] is not a string; list the action names as strings", i);
        return 0;
    }
    size_t len = strlen(name);
    if (len == 0) {
        sn_plugin_error_set(err, "config key 'actions'[%zu] is an empty string; every action needs a name", i);
        return 0;
    }
    char q[MAX_NAME_LEN + 8];
    sn_pu_quote(q, sizeof q, name, len);
    if (len > MAX_NAME_LEN) {
        sn_plugin_error_set(err, "config key 'actions'[%zu] \"%.60s\" is %zu bytes long; names may be at most %d",
                            i, q, len, MAX_NAME_LEN);
        return 0;
    }
    for (size_t k = 0; k < len; k++) {
        const unsigned char c = (unsigned char)name[k];
        if (!name_char_ok(c)) {
            size_t clen = sn_pu_utf8_char_len((const unsigned char *)name + k, len - k);
            char qc[24];
            sn_pu_quote(qc, sizeof qc, name + k, clen ? clen : 1);
            sn_plugin_error_set(err, "config key 'actions'[%zu] \"%s\" contains '%s'; names may use only letters A-Z a-z, digits, '_', '.' and '-'",
                                i, q, qc);
            return 0;
        }
    }
    return 1;
}

static sn_plugin_status ad_create(const sn_host *host, sn_instance **out, sn_plugin_error *err)
{
    if (host->abi_major != SN_PLUGIN_ABI_MAJOR) {
        sn_plugin_error_set(err, "host speaks plugin ABI %u, this plugin ABI %d; rebuild the plugin against the engine's plugin.h",
                            (unsigned)host->abi_major, SN_PLUGIN_ABI_MAJOR);
        return SN_PLUGIN_ERR_UNSUPPORTED;
    }
    /* A misspelt key must be an error, not a silently missing setting. */
    if (SN_PU_HOST_HAS(host, config_key)) {
        const char *key;
        for (size_t i = 0; (key = host->config_key(host, i)) != NULL; i++) {
            if (strcmp(key, "actions") != 0) {
                char q[96];
                sn_pu_quote(q, sizeof q, key, strlen(key));
                sn_plugin_error_set(err, "unknown config key '%s': action.discrete takes only 'actions' (an array of names); remove or correct it",
                                    q);
                return SN_PLUGIN_ERR_CONFIG;
            }
        }
    }

    size_t n = 0;
    sn_plugin_status s = host->config_string_array(host, "actions", NULL, 0, &n, err);
    if (s == SN_PLUGIN_ERR_NOT_FOUND) {
        sn_plugin_error_set(err, "missing config key 'actions': list the action names, e.g. {\"actions\": [\"stop\", \"go\"]}");
        return SN_PLUGIN_ERR_CONFIG;
    }
    if (s != SN_PLUGIN_OK)
        return actions_lookup_failed(s, err);
    if (n == 0) {
        sn_plugin_error_set(err, "config key 'actions' is an empty array; list at least one action name, e.g. [\"stop\", \"go\"]");
        return SN_PLUGIN_ERR_CONFIG;
    }
    if (n > INT32_MAX) {
        sn_plugin_error_set(err, "config key 'actions' lists %zu names; token ids are int32, so at most %d fit",
                            n, INT32_MAX);
        return SN_PLUGIN_ERR_CONFIG;
    }

    sn_instance *inst = calloc(1, sizeof *inst);
    if (inst) {
        inst->names = calloc(n, sizeof *inst->names);
        inst->sorted = calloc(n, sizeof *inst->sorted);
    }
    if (!inst || !inst->names || !inst->sorted) {
        ad_destroy(inst);
        sn_plugin_error_set(err, "out of memory for %zu action names", n);
        return SN_PLUGIN_ERR_NOMEM;
    }
    inst->n = (uint32_t)n;
    size_t got = 0;
    s = host->config_string_array(host, "actions", inst->names, n, &got, err);
    if (s != SN_PLUGIN_OK) {
        ad_destroy(inst);
        return actions_lookup_failed(s, err);
    }
    if (got != n) {
        ad_destroy(inst);
        sn_plugin_error_set(err, "the host reported %zu and then %zu elements for config key 'actions'; this is a host bug",
                            n, got);
        return SN_PLUGIN_ERR_INTERNAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!name_ok(inst->names[i], i, err)) {
            ad_destroy(inst);
            return SN_PLUGIN_ERR_CONFIG;
        }
        size_t len = strlen(inst->names[i]);
        if (len > inst->max_len)
            inst->max_len = len;
        inst->sorted[i] = (name_entry){inst->names[i], (uint32_t)i};
    }
    qsort(inst->sorted, n, sizeof *inst->sorted, entry_cmp);

    /* Of all repeated names, report the repeat that comes first in the list. */
    size_t dup = n, first = 0, group = 0;
    for (size_t k = 1; k < n; k++) {
        if (strcmp(inst->sorted[k].name, inst->sorted[k - 1].name) != 0) {
            group = k;
        } else if (inst->sorted[k].index < dup) {
            dup = inst->sorted[k].index;
            first = inst->sorted[group].index;
        }
    }
    if (dup < n) {
        sn_plugin_error_set(err, "config key 'actions'[%zu] \"%s\" repeats 'actions'[%zu]; each action name must be unique",
                            dup, inst->names[dup], first);
        ad_destroy(inst);
        return SN_PLUGIN_ERR_CONFIG;
    }
    *out = inst;
    return SN_PLUGIN_OK;
}

static uint32_t ad_vocab_size(const sn_instance *inst)
{
    return inst->n;
}

static sn_plugin_status ad_open_stream(sn_instance *inst, sn_stream **out, sn_plugin_error *err)
{
    sn_stream *st = calloc(1, sizeof *st);
    char *word = malloc(inst->max_len + 1);
    if (!st || !word) {
        free(st);
        free(word);
        sn_plugin_error_set(err, "out of memory opening an action.discrete stream");
        return SN_PLUGIN_ERR_NOMEM;
    }
    st->inst = inst;
    st->word = word;
    *out = st;
    return SN_PLUGIN_OK;
}

static void ad_close_stream(sn_stream *st)
{
    if (!st)
        return;
    free(st->word);
    free(st);
}

/* ---------------------------------------------------------------------------------------- */
/* Tokenizer                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Ids waiting for the sink, all with the same t. */
typedef struct batch {
    const sn_token_sink *sink;
    int32_t ids[ENCODE_BATCH];
    size_t n;
    double t;
} batch;

static sn_plugin_status batch_flush(batch *b)
{
    if (!b->n)
        return SN_PLUGIN_OK;
    sn_plugin_status s = b->sink->emit(b->sink->ctx, b->ids, b->n, b->t);
    b->n = 0;
    return s;
}

static sn_plugin_status batch_push(batch *b, int32_t id, double t)
{
    if (b->n == ENCODE_BATCH) {
        sn_plugin_status s = batch_flush(b);
        if (s != SN_PLUGIN_OK)
            return s;
    }
    if (!b->n)
        b->t = t;
    b->ids[b->n++] = id;
    return SN_PLUGIN_OK;
}

static void encoder_reset(sn_stream *st)
{
    st->in_word = 0;
    st->word_held = 0;
    st->word_len = 0;
}

static sn_plugin_status unknown_name(const sn_instance *inst, const char *word, size_t len,
                                     int cut, sn_plugin_error *err)
{
    char q[100];
    sn_pu_quote(q, sizeof q, word, len);
    char list[200];
    size_t o = 0, shown = 0;
    list[0] = '\0';
    for (; shown < inst->n && shown < NAMES_SHOWN; shown++) {
        const char *name = inst->names[shown];
        size_t nl = strlen(name);
        if (o + nl + 3 > sizeof list)
            break;
        o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", shown ? ", " : "", name);
    }
    char more[48] = "";
    if (shown < inst->n)
        snprintf(more, sizeof more, " and %zu more", (size_t)(inst->n - shown));
    sn_plugin_error_set(err, "unknown action '%s%s'; valid names: %s%s (check the spelling, or add it to config key 'actions')",
                        q, cut ? "..." : "", list, more);
    return SN_PLUGIN_ERR_INVALID;
}

/* The held name is complete: its id, or an error naming it. */
static sn_plugin_status finish_word(sn_stream *st, batch *b, sn_plugin_error *err)
{
    st->word[st->word_len] = '\0';
    const name_entry *e = bsearch(st->word, st->inst->sorted, st->inst->n,
                                  sizeof *st->inst->sorted, key_cmp);
    if (!e)
        return unknown_name(st->inst, st->word, st->word_len, 0, err);
    st->in_word = 0;
    st->word_len = 0;
    sn_plugin_status s = batch_push(b, (int32_t)e->index, st->word_t);
    /* A name held from an earlier chunk carries that chunk's t; one sink call carries one t,
     * so it goes alone (it is the first id of the call, the batch held nothing else). */
    if (s == SN_PLUGIN_OK && st->word_held) {
        st->word_held = 0;
        s = batch_flush(b);
    }
    return s;
}

/* After a failed call (an unknown name, a sink that stops) the encoder starts afresh with the
 * next chunk, dropping any half-read name. */
static sn_plugin_status ad_encode(sn_stream *st, const sn_media *media, const sn_token_sink *sink,
                                  sn_plugin_error *err)
{
    if (media->kind != SN_MEDIA_TEXT) {
        sn_plugin_error_set(err, "got %s media (kind %d), but action.discrete encodes text listing action names only",
                            sn_pu_media_kind_name(media->kind), (int)media->kind);
        return SN_PLUGIN_ERR_INVALID;
    }
    const char *p = media->text.utf8;
    size_t len = media->text.len;
    if (len && !p) {
        sn_plugin_error_set(err, "text media claims %zu bytes but its pointer is NULL", len);
        return SN_PLUGIN_ERR_INVALID;
    }
    batch b = {.sink = sink};
    sn_plugin_status s = SN_PLUGIN_OK;
    for (size_t i = 0; i < len && s == SN_PLUGIN_OK; i++) {
        unsigned char c = (unsigned char)p[i];
        if (is_space(c)) {
            if (st->in_word)
                s = finish_word(st, &b, err);
            continue;
        }
        if (!st->in_word) {
            st->in_word = 1;
            st->word_held = 0;
            st->word_len = 0;
            st->word_t = media->t;
        }
        if (st->word_len == st->inst->max_len) /* longer than every name: cannot match */
            s = unknown_name(st->inst, st->word, st->word_len, 1, err);
        else
            st->word[st->word_len++] = (char)c;
    }
    if (s == SN_PLUGIN_OK)
        s = batch_flush(&b);
    if (s != SN_PLUGIN_OK)
        encoder_reset(st);
    else if (st->in_word)
        st->word_held = 1;
    return s;
}

/* The end of the stimulus ends the name being read, as whitespace would. */
static sn_plugin_status ad_encode_flush(sn_stream *st, const sn_token_sink *sink,
                                        sn_plugin_error *err)
{
    batch b = {.sink = sink};
    sn_plugin_status s = st->in_word ? finish_word(st, &b, err) : SN_PLUGIN_OK;
    if (s == SN_PLUGIN_OK)
        s = batch_flush(&b);
    encoder_reset(st);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Each id is a whole action, so nothing is held and decode_flush is NULL. Every event carries
 * the call's t. */
static sn_plugin_status ad_decode(sn_stream *st, const int32_t *ids, size_t n, double t,
                                  const sn_action_sink *sink, sn_plugin_error *err)
{
    const sn_instance *inst = st->inst;
    /* The host checks the range; checking first anyway keeps a bad call from half-happening. */
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= inst->n) {
            sn_plugin_error_set(err, "token %zu is %d, outside action.discrete's ids 0..%u; pass only this plugin's local ids",
                                i, (int)ids[i], inst->n - 1);
            return SN_PLUGIN_ERR_INVALID;
        }
    }
    for (size_t i = 0; i < n; i++) {
        sn_action a = {.kind = SN_ACTION_NAMED, .t = t};
        a.named.name = inst->names[ids[i]];
        a.named.index = (uint32_t)ids[i];
        sn_plugin_status s = sink->emit(sink->ctx, &a);
        if (s != SN_PLUGIN_OK)
            return s;
    }
    return SN_PLUGIN_OK;
}

/* A segment is exactly one action: it may not end empty, and nothing follows its action. */
static sn_plugin_status ad_constrain(sn_stream *st, const int32_t *segment, size_t n,
                                     uint64_t *allowed, int *may_end, sn_plugin_error *err)
{
    (void)segment;
    (void)err;
    if (n == 0) {
        *may_end = 0;
        return SN_PLUGIN_OK;
    }
    for (size_t w = 0; w < ((size_t)st->inst->n + 63) / 64; w++)
        allowed[w] = 0;
    return SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Descriptor                                                                               */
/* ---------------------------------------------------------------------------------------- */

static const sn_plugin_desc desc = {
    .struct_size = sizeof(sn_plugin_desc),
    .abi_major = SN_PLUGIN_ABI_MAJOR,
    .abi_minor = SN_PLUGIN_ABI_MINOR,
    .name = "action.discrete",
    .version = "1.0.0",
    .description = "a configured list of named actions, one token each; one action per segment",
    .kind = SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER,
    .media_kinds = SN_MEDIA_BIT(SN_MEDIA_TEXT),
    .create = ad_create,
    .destroy = ad_destroy,
    .vocab_size = ad_vocab_size,
    .open_stream = ad_open_stream,
    .close_stream = ad_close_stream,
    .encode = ad_encode,
    .encode_flush = ad_encode_flush,
    .decode = ad_decode,
    .decode_flush = NULL,
    .constrain = ad_constrain,
};

SN_PLUGIN_ENTRY(index) { return index == 0 ? &desc : NULL; }
