/*
 * text_bpe.c - the "text.bpe" plugin: UTF-8 text as the token ids of a Hugging Face byte-level
 * BPE tokenizer (GPT-2, Llama 3, SmolLM2 and their kin), and ids back into text; the same ids
 * as the `tokenizers` library gives.
 *
 * The tokenizer comes from a tokenizer.json or a GGUF file (bpe_model.c). Encoding is a chain
 * of stages run over the text held in the stream: the added-token passes, the pre-tokenizer's
 * splits (bpe_pretok.c), and the merge loop on each word. Every stage hands the next only text
 * whose cutting is final, and says how far it got; what no stage could finish waits for the
 * next chunk, so any chunking gives the ids of the whole text. Special tokens are never
 * produced from text: a stimulus that spells "<|im_start|>" is ordinary text.
 *
 * Decoding maps each id back to its bytes (nothing for special tokens) and emits whole UTF-8
 * characters only, holding an incomplete one until it completes; ill-formed bytes become
 * U+FFFD per maximal subpart, as the library's lossy decode does.
 */
#include <sensorium/plugin.h>

#include "bpe.h"
#include "plugin_util.h"

#include <stdlib.h>
#include <string.h>

#define OUT_BATCH 256   /* ids handed to the sink per call */
#define DECODE_OUT 1024 /* bytes per text event */
#define STEP_MAX 8      /* the most one decoded byte can make final: two U+FFFD, or a character */
/* A held tail this long is rescanned only after it has grown by a quarter, so that a long
 * unbroken run fed in small chunks costs linear time, not quadratic. */
#define RESCAN_MIN 1024

static const uint8_t REPLACEMENT[3] = {0xEF, 0xBF, 0xBD}; /* U+FFFD */

struct sn_instance {
    bpe_model m; /* read-only after create: streams share it */
};

typedef struct mark {
    size_t off; /* where a chunk's text begins in the held buffer */
    double t;   /* that chunk's stream time */
} mark;

struct sn_stream {
    const bpe_model *m;

    /* Encoder: the stimulus's text not yet turned into ids. */
    uint8_t *buf;           /* (cap) owned */
    size_t len, cap;
    size_t valid;           /* buf[0..valid) is checked UTF-8 of whole characters */
    size_t consumed;        /* bytes of the stimulus before buf[0], for messages */
    size_t retry_at;        /* run the stages once len reaches this */
    size_t dropped_end[2];  /* per added-token pass: where the last special-token match that
                               was passed over as text ends; that pass's matching resumes
                               there, as the library's scan would */
    mark *marks;            /* (marks_cap) owned; chunk starts in buf, ascending */
    size_t n_marks, marks_cap, mark_i;
    int32_t out[OUT_BATCH]; /* ids waiting for the sink */
    size_t n_out;
    double out_t;
    const sn_token_sink *sink;
    bpe_work work;

    /* Decoder: an incomplete character, kept between decode calls. */
    uint8_t held[4];
    size_t held_len;
    double last_t;
};

/* ---------------------------------------------------------------------------------------- */
/* UTF-8                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* Whether the n bytes at p (1 <= n <= 3) begin some well-formed character and are fewer than
 * it: completed with continuation bytes that suit any lead byte (0x80 or 0xA0 second, 0x80
 * after), sn_pu_utf8_char_len then accepts a character longer than n. */
static int utf8_prefix(const uint8_t *p, size_t n)
{
    static const uint8_t second[2] = {0x80, 0xA0};
    for (int k = 0; k < 2; k++) {
        uint8_t c[4];
        for (size_t i = 0; i < 4; i++)
            c[i] = i < n ? p[i] : i == 1 ? second[k] : 0x80;
        if (sn_pu_utf8_char_len(c, 4) > n)
            return 1;
    }
    return 0;
}

/* Feeds one decoded byte: writes to out (STEP_MAX bytes free) what became final. A byte that
 * cannot continue the held character ends it as one U+FFFD and is then read afresh, so the
 * text does not depend on where decode calls split the ids. */
static size_t utf8_feed(sn_stream *st, uint8_t b, uint8_t *out)
{
    size_t o = 0;
    if (st->held_len == 0 && b < 0x80) {
        out[0] = b;
        return 1;
    }
    st->held[st->held_len++] = b;
    if (sn_pu_utf8_char_len(st->held, st->held_len) == st->held_len) {
        memcpy(out, st->held, st->held_len);
        o = st->held_len;
        st->held_len = 0;
        return o;
    }
    if (st->held_len < 4 && utf8_prefix(st->held, st->held_len))
        return 0;
    /* Ill-formed: everything before b was a maximal subpart (or b alone is). */
    memcpy(out, REPLACEMENT, sizeof REPLACEMENT);
    o = sizeof REPLACEMENT;
    if (st->held_len == 1) {
        st->held_len = 0;
        return o;
    }
    st->held_len = 0;
    return o + utf8_feed(st, b, out + o);
}

/* ---------------------------------------------------------------------------------------- */
/* Emitting ids                                                                             */
/* ---------------------------------------------------------------------------------------- */

static sn_plugin_status flush_out(sn_stream *st)
{
    if (!st->n_out)
        return SN_PLUGIN_OK;
    size_t n = st->n_out;
    st->n_out = 0;
    return st->sink->emit(st->sink->ctx, st->out, n, st->out_t);
}

/* Queues id, whose text starts at buf[pos]: it carries the time of the chunk that text came
 * in (positions only grow within one run, so the mark cursor only moves forward). */
static sn_plugin_status emit(sn_stream *st, int32_t id, size_t pos)
{
    while (st->mark_i + 1 < st->n_marks && st->marks[st->mark_i + 1].off <= pos)
        st->mark_i++;
    double t = st->n_marks ? st->marks[st->mark_i].t : 0.0;
    if (st->n_out && (st->n_out == OUT_BATCH || t != st->out_t)) {
        sn_plugin_status s = flush_out(st);
        if (s != SN_PLUGIN_OK)
            return s;
    }
    st->out_t = t;
    st->out[st->n_out++] = id;
    return SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* The stages                                                                               */
/* ---------------------------------------------------------------------------------------- */

/*
 * Runs stage k and those after it over buf[a..b). final says that the text ends at b; without
 * it, text may follow, and a stage hands on only what that text cannot change. *done is how
 * far everything was turned into ids (b when final). Stages 0..n_tries-1 split out added
 * tokens, then come the pre-tokenizer's splits, then the merge loop.
 */
static sn_plugin_status run(sn_stream *st, int k, size_t a, size_t b, int final, size_t *done);

static sn_plugin_status run_words(sn_stream *st, size_t a, size_t b, int final, size_t *done)
{
    *done = a;
    if (!final)
        return SN_PLUGIN_OK; /* a word is cut only once the text after it is known */
    long n = bpe_encode_word(st->m, &st->work, st->buf + a, b - a);
    if (n < 0)
        return SN_PLUGIN_ERR_NOMEM;
    for (long i = 0; i < n; i++) {
        sn_plugin_status s = emit(st, st->work.out[i], a);
        if (s != SN_PLUGIN_OK)
            return s;
    }
    *done = b;
    return SN_PLUGIN_OK;
}

static sn_plugin_status run_split(sn_stream *st, int k, bpe_split split, size_t a, size_t b,
                                  int final, size_t *done)
{
    size_t i = a;
    while (i < b) {
        size_t e;
        bpe_scan_result r = bpe_scan(split, st->buf, i, b, final, &e);
        if (r == BPE_SCAN_MORE)
            break;
        size_t got;
        sn_plugin_status s = run(st, k + 1, i, e, r == BPE_SCAN_PIECE, &got);
        if (s != SN_PLUGIN_OK)
            return s;
        i = got;
        if (r == BPE_SCAN_OPEN)
            break;
    }
    *done = i;
    return SN_PLUGIN_OK;
}

static size_t space_before(const uint8_t *s, size_t lo, size_t p)
{
    while (p > lo) {
        size_t q = p - 1, len;
        while (q > lo && (s[q] & 0xC0) == 0x80)
            q--;
        if (!bpe_is_space(bpe_utf8_decode(s + q, &len)))
            break;
        p = q;
    }
    return p;
}

/* One added-token pass: leftmost-longest matches of the trie; a special token's match is
 * passed over as text (and, as in the library, hides any match that overlaps it). */
static sn_plugin_status run_added(sn_stream *st, int k, size_t a, size_t b, int final,
                                  size_t *done)
{
    const bpe_model *m = st->m;
    const bpe_trie *t = &m->tries[k];
    size_t cur = a, p = a > st->dropped_end[k] ? a : st->dropped_end[k];
    int pending = 0;
    while (p < b) {
        if (!(t->first[st->buf[p] / 8] >> (st->buf[p] % 8) & 1)) {
            p++;
            continue;
        }
        uint32_t node = 0;
        size_t q = p, best_end = 0;
        int32_t best = -1;
        while (q < b) {
            int32_t child = bpe_trie_child(t, node, st->buf[q]);
            if (child < 0)
                break;
            node = (uint32_t)child;
            q++;
            if (t->token[node] >= 0) {
                best = t->token[node];
                best_end = q;
            }
        }
        if (q == b && t->kids[node] && !final) {
            pending = 1; /* a longer token may still match here */
            break;
        }
        if (best < 0) {
            p++;
            continue;
        }
        const bpe_added *tok = &m->added[best];
        if (tok->special) {
            st->dropped_end[k] = p = best_end;
            continue;
        }
        size_t ms = p, me = best_end;
        if (tok->rstrip) {
            size_t len;
            while (me < b && bpe_is_space(bpe_utf8_decode(st->buf + me, &len)))
                me += len;
            if (me == b && !final) {
                pending = 1;
                break;
            }
        }
        if (tok->lstrip)
            ms = space_before(st->buf, cur, ms);
        size_t got;
        sn_plugin_status s = run(st, k + 1, cur, ms, 1, &got);
        if (s == SN_PLUGIN_OK)
            s = emit(st, tok->id, ms);
        if (s != SN_PLUGIN_OK)
            return s;
        cur = p = me;
    }
    size_t limit = pending ? p : b;
    int fin = final && !pending;
    /* Spaces just before where a token may yet match belong to it if it strips them. */
    if (!fin && m->any_lstrip)
        limit = space_before(st->buf, cur, limit);
    return run(st, k + 1, cur, limit, fin, done);
}

static sn_plugin_status run(sn_stream *st, int k, size_t a, size_t b, int final, size_t *done)
{
    const bpe_model *m = st->m;
    if (a == b) {
        *done = b;
        return SN_PLUGIN_OK;
    }
    if (k < m->n_tries)
        return run_added(st, k, a, b, final, done);
    if (k < m->n_tries + m->n_splits)
        return run_split(st, k, m->splits[k - m->n_tries], a, b, final, done);
    return run_words(st, a, b, final, done);
}

/* ---------------------------------------------------------------------------------------- */
/* Lifecycle                                                                                */
/* ---------------------------------------------------------------------------------------- */

static sn_plugin_status tb_create(const sn_host *host, sn_instance **out, sn_plugin_error *err)
{
    if (host->abi_major != SN_PLUGIN_ABI_MAJOR) {
        sn_plugin_error_set(err, "host speaks plugin ABI %u, this plugin ABI %d; rebuild the plugin against the engine's plugin.h",
                            (unsigned)host->abi_major, SN_PLUGIN_ABI_MAJOR);
        return SN_PLUGIN_ERR_UNSUPPORTED;
    }
    static const char *const keys[] = {"tokenizer", "gguf"};
    sn_plugin_status s = sn_pu_reject_unknown_keys(host, "text.bpe", keys, 2, err);
    if (s != SN_PLUGIN_OK)
        return s;
    const char *file[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        s = host->config_string(host, keys[i], &file[i], err);
        if (s != SN_PLUGIN_OK && s != SN_PLUGIN_ERR_NOT_FOUND)
            return s;
    }
    if (!file[0] == !file[1]) {
        sn_plugin_error_set(err, "%s", file[0] ? "config has both 'tokenizer' and 'gguf'; give one tokenizer file"
                                               : "config needs 'tokenizer' (a Hugging Face tokenizer.json) or 'gguf' (a GGUF file with a gpt2 tokenizer)");
        return SN_PLUGIN_ERR_CONFIG;
    }
    const char *name = file[0] ? file[0] : file[1];
    if (!*name) {
        sn_plugin_error_set(err, "config '%s' is empty; name the tokenizer file", file[0] ? "tokenizer" : "gguf");
        return SN_PLUGIN_ERR_CONFIG;
    }
    /* A relative path is in the model's data directory (or the working directory without
     * a model). */
    const char *dir = name[0] != '/' && SN_PU_HOST_HAS(host, data_dir) ? host->data_dir(host) : NULL;
    size_t plen = (dir ? strlen(dir) + 1 : 0) + strlen(name) + 1;
    char *path = malloc(plen);
    sn_instance *inst = calloc(1, sizeof *inst);
    if (!path || !inst) {
        free(path);
        free(inst);
        sn_plugin_error_set(err, "out of memory creating a text.bpe instance");
        return SN_PLUGIN_ERR_NOMEM;
    }
    snprintf(path, plen, "%s%s%s", dir ? dir : "", dir ? "/" : "", name);
    s = file[0] ? bpe_model_load_json(&inst->m, path, err) : bpe_model_load_gguf(&inst->m, path, err);
    free(path);
    if (s != SN_PLUGIN_OK) {
        free(inst);
        return s;
    }
    *out = inst;
    return SN_PLUGIN_OK;
}

static void tb_destroy(sn_instance *inst)
{
    if (!inst)
        return;
    bpe_model_free(&inst->m);
    free(inst);
}

static uint32_t tb_vocab_size(const sn_instance *inst)
{
    return inst->m.vocab_size;
}

static sn_plugin_status tb_open_stream(sn_instance *inst, sn_stream **out, sn_plugin_error *err)
{
    sn_stream *st = calloc(1, sizeof *st);
    if (!st) {
        sn_plugin_error_set(err, "out of memory opening a text.bpe stream");
        return SN_PLUGIN_ERR_NOMEM;
    }
    st->m = &inst->m;
    *out = st;
    return SN_PLUGIN_OK;
}

static void tb_close_stream(sn_stream *st)
{
    if (!st)
        return;
    free(st->buf);
    free(st->marks);
    bpe_work_free(&st->work);
    free(st);
}

/* ---------------------------------------------------------------------------------------- */
/* Tokenizer                                                                                */
/* ---------------------------------------------------------------------------------------- */

static void encoder_reset(sn_stream *st)
{
    st->len = st->valid = st->consumed = st->retry_at = 0;
    st->dropped_end[0] = st->dropped_end[1] = 0;
    st->n_marks = st->mark_i = st->n_out = 0;
}

static sn_plugin_status fail_encode(sn_stream *st, sn_plugin_status s, sn_plugin_error *err)
{
    if (s == SN_PLUGIN_ERR_NOMEM)
        sn_plugin_error_set(err, "out of memory encoding text (%zu bytes held)", st->len);
    encoder_reset(st);
    return s;
}

/* Checks the new bytes; a character cut off at the end stays unchecked until it completes. */
static sn_plugin_status validate(sn_stream *st, sn_plugin_error *err)
{
    size_t i = st->valid;
    while (i < st->len) {
        size_t k = sn_pu_utf8_char_len(st->buf + i, st->len - i);
        if (k) {
            i += k;
            continue;
        }
        if (st->len - i < 4 && utf8_prefix(st->buf + i, st->len - i))
            break;
        sn_plugin_error_set(err, "text is not valid UTF-8: byte 0x%02X at offset %zu of the stimulus",
                            st->buf[i], st->consumed + i);
        return SN_PLUGIN_ERR_INVALID;
    }
    st->valid = i;
    return SN_PLUGIN_OK;
}

/* Runs the stages over the held text, emits what is final, and drops it from the buffer. */
static sn_plugin_status advance(sn_stream *st, int final)
{
    size_t done;
    st->mark_i = 0;
    sn_plugin_status s = run(st, 0, 0, st->valid, final, &done);
    if (s == SN_PLUGIN_OK)
        s = flush_out(st);
    if (s != SN_PLUGIN_OK)
        return s;
    memmove(st->buf, st->buf + done, st->len - done);
    st->len -= done;
    st->valid -= done;
    st->consumed += done;
    for (int k = 0; k < 2; k++)
        st->dropped_end[k] = st->dropped_end[k] > done ? st->dropped_end[k] - done : 0;
    /* Keep the mark that covers the new buf[0] and those after it. */
    size_t first = 0;
    while (first + 1 < st->n_marks && st->marks[first + 1].off <= done)
        first++;
    size_t n = 0;
    for (size_t i = first; i < st->n_marks; i++, n++) {
        st->marks[n] = st->marks[i];
        st->marks[n].off = st->marks[i].off > done ? st->marks[i].off - done : 0;
    }
    st->n_marks = n;
    st->retry_at = st->len >= RESCAN_MIN ? st->len + st->len / 4 : 0;
    return SN_PLUGIN_OK;
}

static sn_plugin_status tb_encode(sn_stream *st, const sn_media *media, const sn_token_sink *sink,
                                  sn_plugin_error *err)
{
    if (media->kind != SN_MEDIA_TEXT) {
        sn_plugin_error_set(err, "got %s media (kind %d), but text.bpe encodes text only; send it to a plugin for %s",
                            sn_pu_media_kind_name(media->kind), (int)media->kind,
                            sn_pu_media_kind_name(media->kind));
        encoder_reset(st);
        return SN_PLUGIN_ERR_INVALID;
    }
    size_t n = media->text.len;
    if (n && !media->text.utf8) {
        sn_plugin_error_set(err, "text media claims %zu bytes but its pointer is NULL", n);
        encoder_reset(st);
        return SN_PLUGIN_ERR_INVALID;
    }
    if (n == 0)
        return SN_PLUGIN_OK;
    if (st->len + n > st->cap) {
        size_t cap = st->cap ? st->cap : 4096;
        while (cap < st->len + n)
            cap *= 2;
        uint8_t *b = realloc(st->buf, cap);
        if (!b)
            return fail_encode(st, SN_PLUGIN_ERR_NOMEM, err);
        st->buf = b;
        st->cap = cap;
    }
    if (st->n_marks == st->marks_cap) {
        size_t cap = st->marks_cap ? 2 * st->marks_cap : 16;
        mark *mk = realloc(st->marks, cap * sizeof *mk);
        if (!mk)
            return fail_encode(st, SN_PLUGIN_ERR_NOMEM, err);
        st->marks = mk;
        st->marks_cap = cap;
    }
    st->marks[st->n_marks++] = (mark){st->len, media->t};
    memcpy(st->buf + st->len, media->text.utf8, n);
    st->len += n;
    st->sink = sink;
    sn_plugin_status s = validate(st, err);
    if (s == SN_PLUGIN_OK && st->len >= st->retry_at)
        s = advance(st, 0);
    return s == SN_PLUGIN_OK ? s : fail_encode(st, s, err);
}

static sn_plugin_status tb_encode_flush(sn_stream *st, const sn_token_sink *sink,
                                        sn_plugin_error *err)
{
    st->sink = sink;
    sn_plugin_status s = SN_PLUGIN_OK;
    if (st->valid < st->len) {
        sn_plugin_error_set(err, "text ends inside a UTF-8 character (%zu of its bytes at offset %zu of the stimulus)",
                            st->len - st->valid, st->consumed + st->valid);
        s = SN_PLUGIN_ERR_INVALID;
    } else if (st->len) {
        s = advance(st, 1);
    }
    if (s != SN_PLUGIN_OK)
        return fail_encode(st, s, err);
    encoder_reset(st);
    return SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static sn_plugin_status emit_text(const sn_action_sink *sink, const uint8_t *s, size_t n, double t)
{
    sn_action a = {.kind = SN_ACTION_TEXT, .t = t};
    a.text.utf8 = (const char *)s;
    a.text.len = n;
    return sink->emit(sink->ctx, &a);
}

/* Each id's bytes in order (special tokens and unused ids have none), cut into events of
 * whole characters; events carry the t of the call that completed them. */
static sn_plugin_status tb_decode(sn_stream *st, const int32_t *ids, size_t n, double t,
                                  const sn_action_sink *sink, sn_plugin_error *err)
{
    const bpe_model *m = st->m;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= m->vocab_size) {
            sn_plugin_error_set(err, "token %zu is %d, outside text.bpe's ids 0..%u; pass only this plugin's local ids",
                                i, (int)ids[i], m->vocab_size - 1);
            st->held_len = 0;
            return SN_PLUGIN_ERR_INVALID;
        }
    }
    st->last_t = t;
    uint8_t out[DECODE_OUT];
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = m->text + m->text_off[ids[i]];
        size_t len = m->text_off[ids[i] + 1] - m->text_off[ids[i]];
        for (size_t j = 0; j < len; j++) {
            o += utf8_feed(st, s[j], out + o);
            if (o > sizeof out - STEP_MAX) {
                sn_plugin_status r = emit_text(sink, out, o, t);
                if (r != SN_PLUGIN_OK) {
                    st->held_len = 0;
                    return r;
                }
                o = 0;
            }
        }
    }
    if (o) {
        sn_plugin_status r = emit_text(sink, out, o, t);
        if (r != SN_PLUGIN_OK) {
            st->held_len = 0;
            return r;
        }
    }
    return SN_PLUGIN_OK;
}

/* An incomplete character at the end of a segment is one maximal subpart: one U+FFFD. */
static sn_plugin_status tb_decode_flush(sn_stream *st, const sn_action_sink *sink,
                                        sn_plugin_error *err)
{
    (void)err;
    int held = st->held_len != 0;
    st->held_len = 0;
    return held ? emit_text(sink, REPLACEMENT, sizeof REPLACEMENT, st->last_t) : SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Descriptor                                                                               */
/* ---------------------------------------------------------------------------------------- */

static const sn_plugin_desc desc = {
    .struct_size = sizeof(sn_plugin_desc),
    .abi_major = SN_PLUGIN_ABI_MAJOR,
    .abi_minor = SN_PLUGIN_ABI_MINOR,
    .name = "text.bpe",
    .version = "1.0.0",
    .description = "UTF-8 text as Hugging Face byte-level BPE ids (tokenizer.json or GGUF), and back",
    .kind = SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER,
    .media_kinds = SN_MEDIA_BIT(SN_MEDIA_TEXT),
    .create = tb_create,
    .destroy = tb_destroy,
    .vocab_size = tb_vocab_size,
    .open_stream = tb_open_stream,
    .close_stream = tb_close_stream,
    .encode = tb_encode,
    .encode_flush = tb_encode_flush,
    .decode = tb_decode,
    .decode_flush = tb_decode_flush,
    .constrain = NULL,
};

SN_PLUGIN_ENTRY(index) { return index == 0 ? &desc : NULL; }
