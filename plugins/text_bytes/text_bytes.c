/*
 * text_bytes.c - the "text.bytes" plugin: UTF-8 text as one token per byte, and tokens back
 * into text.
 *
 * The reference text tokenizer: local id = byte value (vocabulary 256), so any text survives
 * the round trip exactly and no codebook is needed. Encoding is trivial; decoding is the half
 * that needs care, because a model may emit any byte sequence and decode calls may split a
 * character anywhere. The decoder therefore holds an incomplete character in the stream until
 * it is completed and turns every ill-formed byte into U+FFFD (Unicode's "maximal subpart"
 * practice, as in the WHATWG decoder), so that every text event is whole, valid UTF-8.
 * constrain() lets the sampler avoid ill-formed bytes in the first place.
 */
#include <sensorium/plugin.h>

#include "plugin_util.h"

#include <stdlib.h>
#include <string.h>

#define VOCAB 256

/* Ids handed to the sink per call, and the decoder's output buffer. Both live on the stack
 * so that neither direction allocates per call. */
#define ENCODE_BATCH 1024
#define DECODE_OUT 1024
/* The most one input byte can make final: U+FFFD for the character it cuts short, then
 * another U+FFFD for itself (a held 4-byte character completes with 4). */
#define STEP_MAX 6

static const unsigned char REPLACEMENT[3] = {0xEF, 0xBF, 0xBD}; /* U+FFFD */

/* The plugin has no per-instance state; create still returns its own allocation so that
 * destroy has something to pair with and instances stay distinct. */
struct sn_instance {
    int unused;
};

/* Where a UTF-8 decoder stands between bytes. The same automaton drives decode (kept in the
 * stream) and constrain (rebuilt from the segment, so that constrain changes nothing). */
typedef struct utf8_state {
    unsigned char held[4]; /* the incomplete character so far */
    unsigned held_len;
    unsigned need;         /* continuation bytes still to come; 0 between characters */
    unsigned char lo, hi;  /* the range the next continuation byte must fall in */
} utf8_state;

struct sn_stream {
    utf8_state dec;
    double last_t; /* t of the latest decode call: the time decode_flush's U+FFFD carries */
};

static void utf8_reset(utf8_state *s)
{
    s->held_len = 0;
    s->need = 0;
    s->lo = 0x80;
    s->hi = 0xBF;
}

/* Starts a multi-byte character at lead byte b; 0 when b cannot begin one. The narrowed
 * ranges of the first continuation byte rule out overlong forms (E0, F0), surrogates (ED)
 * and code points past U+10FFFF (F4), as in Unicode's table 3-7. */
static int utf8_lead(utf8_state *s, unsigned char b)
{
    s->lo = 0x80;
    s->hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        s->need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
        s->need = 2;
        if (b == 0xE0)
            s->lo = 0xA0;
        else if (b == 0xED)
            s->hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        s->need = 3;
        if (b == 0xF0)
            s->lo = 0x90;
        else if (b == 0xF4)
            s->hi = 0x8F;
    } else {
        return 0;
    }
    s->held[0] = b;
    s->held_len = 1;
    return 1;
}

/* Feeds byte b; writes to out (STEP_MAX bytes free) whatever became final and returns how
 * many bytes that is. A byte that cuts a character short ends one maximal subpart (one
 * U+FFFD) and is then read afresh, which is what makes the output independent of where
 * decode calls split the input. */
static size_t utf8_step(utf8_state *s, unsigned char b, unsigned char *out)
{
    size_t n = 0;
    if (s->need) {
        if (b >= s->lo && b <= s->hi) {
            s->held[s->held_len++] = b;
            s->need--;
            s->lo = 0x80;
            s->hi = 0xBF;
            if (s->need == 0) {
                memcpy(out, s->held, s->held_len);
                n = s->held_len;
                s->held_len = 0;
            }
            return n;
        }
        memcpy(out, REPLACEMENT, sizeof REPLACEMENT);
        n = sizeof REPLACEMENT;
        utf8_reset(s);
    }
    if (b < 0x80) {
        out[n++] = b;
    } else if (!utf8_lead(s, b)) {
        memcpy(out + n, REPLACEMENT, sizeof REPLACEMENT);
        n += sizeof REPLACEMENT;
    }
    return n;
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
    /* A misspelt key must not pass silently, and this plugin takes none at all. */
    if (SN_PU_HOST_HAS(host, config_key)) {
        const char *key = host->config_key(host, 0);
        if (key) {
            char q[96];
            sn_pu_quote(q, sizeof q, key, strlen(key));
            sn_plugin_error_set(err, "unknown config key '%s': text.bytes takes no configuration; remove the key",
                                q);
            return SN_PLUGIN_ERR_CONFIG;
        }
    }
    sn_instance *inst = calloc(1, sizeof *inst);
    if (!inst) {
        sn_plugin_error_set(err, "out of memory creating a text.bytes instance");
        return SN_PLUGIN_ERR_NOMEM;
    }
    *out = inst;
    return SN_PLUGIN_OK;
}

static void tb_destroy(sn_instance *inst)
{
    free(inst);
}

static uint32_t tb_vocab_size(const sn_instance *inst)
{
    (void)inst;
    return VOCAB;
}

static sn_plugin_status tb_open_stream(sn_instance *inst, sn_stream **out, sn_plugin_error *err)
{
    (void)inst;
    sn_stream *st = calloc(1, sizeof *st);
    if (!st) {
        sn_plugin_error_set(err, "out of memory opening a text.bytes stream");
        return SN_PLUGIN_ERR_NOMEM;
    }
    utf8_reset(&st->dec);
    *out = st;
    return SN_PLUGIN_OK;
}

static void tb_close_stream(sn_stream *st)
{
    free(st);
}

/* ---------------------------------------------------------------------------------------- */
/* Tokenizer                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Every byte is final the moment it arrives, so nothing is held and encode_flush is NULL.
 * Bytes are passed through as they are: a byte vocabulary can represent any input, and the
 * decoder repairs what is not UTF-8. Text has no clock per byte, so every id of a chunk
 * carries the chunk's t. */
static sn_plugin_status tb_encode(sn_stream *st, const sn_media *media, const sn_token_sink *sink,
                                  sn_plugin_error *err)
{
    (void)st;
    if (media->kind != SN_MEDIA_TEXT) {
        sn_plugin_error_set(err, "got %s media (kind %d), but text.bytes encodes text only; send it to a plugin for %s",
                            sn_pu_media_kind_name(media->kind), (int)media->kind,
                            sn_pu_media_kind_name(media->kind));
        return SN_PLUGIN_ERR_INVALID;
    }
    const unsigned char *p = (const unsigned char *)media->text.utf8;
    size_t len = media->text.len;
    if (len && !p) {
        sn_plugin_error_set(err, "text media claims %zu bytes but its pointer is NULL", len);
        return SN_PLUGIN_ERR_INVALID;
    }
    int32_t ids[ENCODE_BATCH];
    for (size_t i = 0; i < len;) {
        size_t k = 0;
        while (k < ENCODE_BATCH && i < len)
            ids[k++] = p[i++];
        sn_plugin_status s = sink->emit(sink->ctx, ids, k, media->t);
        if (s != SN_PLUGIN_OK)
            return s;
    }
    return SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static sn_plugin_status emit_text(const sn_action_sink *sink, const unsigned char *s, size_t n,
                                  double t)
{
    sn_action a = {.kind = SN_ACTION_TEXT, .t = t};
    a.text.utf8 = (const char *)s;
    a.text.len = n;
    return sink->emit(sink->ctx, &a);
}

/* Events carry the t of the decode call that completed their characters. After a failed
 * call (a sink that stops) the decoder starts afresh, as after a flush. */
static sn_plugin_status tb_decode(sn_stream *st, const int32_t *ids, size_t n, double t,
                                  const sn_action_sink *sink, sn_plugin_error *err)
{
    /* The host checks the range; checking first anyway keeps a bad call from half-happening. */
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= VOCAB) {
            sn_plugin_error_set(err, "token %zu is %d, outside text.bytes' ids 0..255; pass only this plugin's local ids",
                                i, (int)ids[i]);
            return SN_PLUGIN_ERR_INVALID;
        }
    }
    st->last_t = t;
    unsigned char out[DECODE_OUT];
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        len += utf8_step(&st->dec, (unsigned char)ids[i], out + len);
        if (len > sizeof out - STEP_MAX) {
            sn_plugin_status s = emit_text(sink, out, len, t);
            if (s != SN_PLUGIN_OK) {
                utf8_reset(&st->dec);
                return s;
            }
            len = 0;
        }
    }
    if (len) {
        sn_plugin_status s = emit_text(sink, out, len, t);
        if (s != SN_PLUGIN_OK) {
            utf8_reset(&st->dec);
            return s;
        }
    }
    return SN_PLUGIN_OK;
}

/* An incomplete character at the end of a segment is one maximal subpart: one U+FFFD. */
static sn_plugin_status tb_decode_flush(sn_stream *st, const sn_action_sink *sink,
                                        sn_plugin_error *err)
{
    (void)err;
    int held = st->dec.need != 0;
    utf8_reset(&st->dec);
    return held ? emit_text(sink, REPLACEMENT, sizeof REPLACEMENT, st->last_t) : SN_PLUGIN_OK;
}

static void allow_range(uint64_t *mask, unsigned lo, unsigned hi)
{
    for (unsigned b = lo; b <= hi; b++)
        mask[b / 64] |= (uint64_t)1 << (b % 64);
}

/*
 * Only the automaton's state after the segment matters, and the last three bytes determine
 * it: a character still open at the end began at most three bytes back, and scanning from
 * any later point than its true start only misreads continuation bytes of an already closed
 * character as stray bytes, which leaves the automaton between characters exactly where the
 * full scan is too. So constrain costs O(1) however long the segment grows. A segment that
 * already holds ill-formed bytes is judged as decode would read it (each becomes U+FFFD).
 */
static sn_plugin_status tb_constrain(sn_stream *st, const int32_t *segment, size_t n,
                                     uint64_t *allowed, int *may_end, sn_plugin_error *err)
{
    (void)st;
    utf8_state s;
    utf8_reset(&s);
    unsigned char scratch[STEP_MAX];
    for (size_t i = n > 3 ? n - 3 : 0; i < n; i++) {
        if (segment[i] < 0 || segment[i] >= VOCAB) {
            sn_plugin_error_set(err, "segment token %zu is %d, outside text.bytes' ids 0..255; pass only this plugin's local ids",
                                i, (int)segment[i]);
            return SN_PLUGIN_ERR_INVALID;
        }
        utf8_step(&s, (unsigned char)segment[i], scratch);
    }
    uint64_t keep[VOCAB / 64] = {0};
    if (s.need) {
        allow_range(keep, s.lo, s.hi);
        *may_end = 0;
    } else {
        allow_range(keep, 0x00, 0x7F);
        allow_range(keep, 0xC2, 0xF4);
    }
    for (size_t w = 0; w < VOCAB / 64; w++)
        allowed[w] &= keep[w];
    return SN_PLUGIN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Descriptor                                                                               */
/* ---------------------------------------------------------------------------------------- */

static const sn_plugin_desc desc = {
    .struct_size = sizeof(sn_plugin_desc),
    .abi_major = SN_PLUGIN_ABI_MAJOR,
    .abi_minor = SN_PLUGIN_ABI_MINOR,
    .name = "text.bytes",
    .version = "1.0.0",
    .description = "UTF-8 text as one token per byte; decodes to whole, valid UTF-8 characters",
    .kind = SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER,
    .media_kinds = SN_MEDIA_BIT(SN_MEDIA_TEXT),
    .create = tb_create,
    .destroy = tb_destroy,
    .vocab_size = tb_vocab_size,
    .open_stream = tb_open_stream,
    .close_stream = tb_close_stream,
    .encode = tb_encode,
    .encode_flush = NULL,
    .decode = tb_decode,
    .decode_flush = tb_decode_flush,
    .constrain = tb_constrain,
};

SN_PLUGIN_ENTRY(index) { return index == 0 ? &desc : NULL; }
