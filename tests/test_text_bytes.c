/*
 * test_text_bytes.c - the text.bytes plugin end to end, through the engine's public codec API
 * (plugins/text_bytes.so loaded from the build's plugin folder).
 *
 * What a user relies on: any text survives encode/decode exactly however it is chunked;
 * decoded text events are always whole, valid UTF-8, whatever bytes a model emits and
 * wherever decode calls split them; ill-formed bytes become U+FFFD by the "maximal subpart"
 * rule; and a sampler that follows constrain() can only ever produce valid UTF-8. The checks
 * use a reference UTF-8 reader written here from the definition (shortest form, no
 * surrogates, at most U+10FFFF), not from the plugin's range table, so the two check each
 * other.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sensorium/sensorium.h"

#define FFFD "\xEF\xBF\xBD"

static sn_plugins *plugins;
static sn_codec *codec;

static void setup(void)
{
    cr_assert_eq(sn_plugins_open(SN_BUILD_PLUGIN_DIR, SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT,
                                 &plugins),
                 SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_open(plugins, "text.bytes", NULL, NULL, &codec), SN_OK, "%s",
                 sn_errmsg());
}

static void teardown(void)
{
    sn_codec_close(codec);
    sn_plugins_close(plugins);
    codec = NULL;
    plugins = NULL;
}

TestSuite(text_bytes, .init = setup, .fini = teardown);

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* splitmix64: a seeded generator, so that every failure reproduces. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t rng_below(uint64_t *s, size_t n)
{
    return (size_t)(rng_next(s) % n);
}

/* The character at s: its length, or 0 when s does not start a well-formed character. */
static size_t ref_char(const unsigned char *s, size_t n)
{
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    size_t len;
    uint32_t c;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xE0) == 0xC0) {
        len = 2;
        c = s[0] & 0x1F;
    } else if ((s[0] & 0xF0) == 0xE0) {
        len = 3;
        c = s[0] & 0x0F;
    } else if ((s[0] & 0xF8) == 0xF0) {
        len = 4;
        c = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = c << 6 | (s[i] & 0x3F);
    }
    if (c < min_cp[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    return len;
}

/* Whether the n bytes at s (n >= 1, shorter than their character) can still be completed
 * into a well-formed character: the code points they allow form an interval, which must meet
 * the valid ones. */
static int ref_extendable(const unsigned char *s, size_t n)
{
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    size_t len;
    uint32_t c;
    if ((s[0] & 0xE0) == 0xC0) {
        len = 2;
        c = s[0] & 0x1F;
    } else if ((s[0] & 0xF0) == 0xE0) {
        len = 3;
        c = s[0] & 0x0F;
    } else if ((s[0] & 0xF8) == 0xF0) {
        len = 4;
        c = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n >= len)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = c << 6 | (s[i] & 0x3F);
    }
    unsigned missing = (unsigned)(6 * (len - n));
    uint32_t lo = c << missing, hi = (c << missing) | ((1u << missing) - 1);
    uint32_t min = min_cp[len];
    /* the valid code points of this length: [min, D7FF] and [E000, 10FFFF] */
    int below = lo <= 0xD7FF && hi >= min;
    int above = hi >= 0xE000 && lo <= 0x10FFFF && hi >= min;
    return below || above;
}

/* Whether s is valid UTF-8 (complete == 1) or valid UTF-8 followed by the start of a
 * character that can still be completed (complete == 0). */
static int ref_prefix_ok(const unsigned char *s, size_t n, int *complete)
{
    size_t i = 0;
    while (i < n) {
        size_t k = ref_char(s + i, n - i);
        if (k) {
            i += k;
            continue;
        }
        if (n - i < 4 && ref_extendable(s + i, n - i)) {
            *complete = 0;
            return 1;
        }
        return 0;
    }
    *complete = 1;
    return 1;
}

static int ref_valid(const unsigned char *s, size_t n)
{
    int complete;
    return ref_prefix_ok(s, n, &complete) && complete;
}

/* The U+FFFD substitution of Unicode's "maximal subpart" practice, from its definition: at a
 * position that does not start a well-formed character, replace the longest prefix of one
 * that starts there (at least one byte) by one U+FFFD. */
static size_t ref_decode(const unsigned char *s, size_t n, unsigned char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = ref_char(s + i, n - i);
        if (k) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
            continue;
        }
        size_t sub = 1;
        for (size_t m = 3; m >= 2; m--)
            if (i + m <= n && ref_extendable(s + i, m)) {
                sub = m;
                break;
            }
        memcpy(out + o, FFFD, 3);
        o += 3;
        i += sub;
    }
    return o;
}

/* What decode callbacks saw. Failures are recorded and asserted after the call returns. */
typedef struct text_out {
    unsigned char *s;
    size_t len, cap;
    size_t events;
    size_t bad_events; /* not text, empty, or not whole valid UTF-8 */
    double last_t;
    int stop_after; /* > 0: return nonzero from the callback after this many events */
} text_out;

static int collect(void *ctx, const sn_action *a)
{
    text_out *o = ctx;
    o->events++;
    o->last_t = a->t;
    if (a->kind != SN_ACTION_TEXT || a->text.len == 0 ||
        !ref_valid((const unsigned char *)a->text.utf8, a->text.len)) {
        o->bad_events++;
        return 0;
    }
    if (o->len + a->text.len > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->len + a->text.len)
            cap *= 2;
        unsigned char *p = realloc(o->s, cap);
        if (!p)
            return 1;
        o->s = p;
        o->cap = cap;
    }
    memcpy(o->s + o->len, a->text.utf8, a->text.len);
    o->len += a->text.len;
    return o->stop_after > 0 && o->events >= (size_t)o->stop_after;
}

static void out_reset(text_out *o)
{
    free(o->s);
    memset(o, 0, sizeof *o);
}

static int32_t *bytes_to_ids(const void *bytes, size_t n)
{
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    cr_assert_not_null(ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = ((const unsigned char *)bytes)[i];
    return ids;
}

static sn_media text_media(const void *s, size_t n, double t)
{
    sn_media m = {.kind = SN_MEDIA_TEXT, .t = t};
    m.text.utf8 = s;
    m.text.len = n;
    return m;
}

/* Multilingual text, emoji (with joiners, modifiers and flags), and control characters
 * including NUL: every length of UTF-8 character and the bytes most likely to be mishandled. */
static const char SAMPLE[] =
    "Hello, w\xC3\xB6rld! \xCE\x93\xCE\xB5\xCE\xB9\xCE\xAC \xCF\x83\xCE\xBF\xCF\x85. "
    "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82. "
    "\xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF\xE4\xB8\x96\xE7\x95\x8C "
    "\xEC\x95\x88\xEB\x85\x95 \xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7 \xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D "
    "\xE0\xA4\xB9\xE0\xA4\xBF\xE0\xA4\xA8\xE0\xA5\x8D\xE0\xA4\xA6\xE0\xA5\x80 "
    "\xF0\x9F\x8E\x89\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7 "
    "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xF0\x9F\x87\xAF\xF0\x9F\x87\xB5 \xEF\xBF\xBD \xF4\x8F\xBF\xBF "
    "\xE2\x82\xAC\xC2\xA0\xEF\xBB\xBF"
    "\x00\x01\t\n\r\x1B[0m\x7F end";
#define SAMPLE_LEN (sizeof SAMPLE - 1)

/* ---------------------------------------------------------------------------------------- */
/* Identity and configuration                                                               */
/* ---------------------------------------------------------------------------------------- */

Test(text_bytes, describes_itself)
{
    const sn_plugin_info *info = sn_codec_info(codec);
    cr_assert_str_eq(info->name, "text.bytes");
    cr_assert_str_eq(info->version, "1.0.0");
    cr_assert_neq(info->description[0], '\0');
    cr_assert_eq(info->kind, SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER);
    cr_assert_eq(info->media_kinds, SN_MEDIA_BIT(SN_MEDIA_TEXT));
    cr_assert_eq(sn_codec_vocab_size(codec), 256);
}

Test(text_bytes, empty_config_is_accepted)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "text.bytes", "{}", NULL, &c), SN_OK, "%s", sn_errmsg());
    sn_codec_close(c);
    cr_assert_eq(sn_codec_open(plugins, "text.bytes", "", NULL, &c), SN_OK, "%s", sn_errmsg());
    sn_codec_close(c);
}

Test(text_bytes, unknown_config_key_fails_naming_it)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "text.bytes", "{\"normalise\": true}", NULL, &c),
                 SN_ERR_PLUGIN);
    cr_assert_null(c);
    cr_assert(strstr(sn_errmsg(), "normalise"), "message does not name the key: %s", sn_errmsg());
    cr_assert(strstr(sn_errmsg(), "text.bytes"), "message does not name the plugin: %s",
              sn_errmsg());
}

Test(text_bytes, non_text_media_is_refused_naming_the_kind)
{
    float samples[4] = {0.1f, -0.2f, 0.3f, -0.4f};
    sn_media m = {.kind = SN_MEDIA_AUDIO, .t = 0.0};
    m.audio.samples = samples;
    m.audio.n_samples = 4;
    m.audio.sample_rate = 16000;
    sn_tokens toks = {0};
    cr_assert_neq(sn_codec_encode(codec, &m, &toks), SN_OK);
    cr_assert(strstr(sn_errmsg(), "audio"), "message does not name the kind: %s", sn_errmsg());
    cr_assert_eq(toks.n, 0);
    sn_tokens_clear(&toks);
}

/* ---------------------------------------------------------------------------------------- */
/* Encoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

Test(text_bytes, encode_gives_one_id_per_byte_and_round_trips)
{
    sn_tokens toks = {0};
    sn_media m = text_media(SAMPLE, SAMPLE_LEN, 0.0);
    cr_assert_eq(sn_codec_encode(codec, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(codec, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(toks.n, SAMPLE_LEN);
    for (size_t i = 0; i < SAMPLE_LEN; i++)
        cr_assert_eq(toks.ids[i], (unsigned char)SAMPLE[i], "id %zu is %d, byte is 0x%02X", i,
                     toks.ids[i], (unsigned char)SAMPLE[i]);

    text_out o = {0};
    cr_assert_eq(sn_codec_decode(codec, toks.ids, toks.n, 0.0, collect, &o), SN_OK, "%s",
                 sn_errmsg());
    cr_assert_eq(sn_codec_decode_flush(codec, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.bad_events, 0);
    cr_assert_eq(o.len, SAMPLE_LEN);
    cr_assert_eq(memcmp(o.s, SAMPLE, SAMPLE_LEN), 0, "round trip changed the text");
    out_reset(&o);
    sn_tokens_clear(&toks);
}

Test(text_bytes, long_text_round_trips_in_whole_events)
{
    /* Longer than any internal batch, so events are cut: each cut must fall between
     * characters. */
    size_t reps = 97, n = reps * SAMPLE_LEN;
    char *text = malloc(n);
    cr_assert_not_null(text);
    for (size_t r = 0; r < reps; r++)
        memcpy(text + r * SAMPLE_LEN, SAMPLE, SAMPLE_LEN);
    sn_tokens toks = {0};
    sn_media m = text_media(text, n, 3.0);
    cr_assert_eq(sn_codec_encode(codec, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(toks.n, n);
    text_out o = {0};
    cr_assert_eq(sn_codec_decode(codec, toks.ids, toks.n, 3.0, collect, &o), SN_OK, "%s",
                 sn_errmsg());
    cr_assert_eq(o.bad_events, 0, "%zu of %zu events were not whole valid UTF-8", o.bad_events,
                 o.events);
    cr_assert_eq(o.len, n);
    cr_assert_eq(memcmp(o.s, text, n), 0);
    out_reset(&o);
    sn_tokens_clear(&toks);
    free(text);
}

Test(text_bytes, empty_text_encodes_to_nothing)
{
    sn_tokens toks = {0};
    sn_media m = text_media("", 0, 0.0);
    cr_assert_eq(sn_codec_encode(codec, &m, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(codec, &toks), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(toks.n, 0);
    sn_tokens_clear(&toks);
}

Test(text_bytes, chunked_encode_equals_whole_encode)
{
    sn_tokens whole = {0};
    sn_media m = text_media(SAMPLE, SAMPLE_LEN, 0.0);
    cr_assert_eq(sn_codec_encode(codec, &m, &whole), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(codec, &whole), SN_OK, "%s", sn_errmsg());

    uint64_t seed = 0x7E57B17E5ull;
    for (int trial = 0; trial < 300; trial++) {
        sn_tokens part = {0};
        size_t max_chunk = 1 + rng_below(&seed, trial % 3 == 0 ? 4 : 40);
        for (size_t at = 0; at < SAMPLE_LEN;) {
            size_t k = rng_below(&seed, max_chunk + 1); /* empty chunks too */
            if (k > SAMPLE_LEN - at)
                k = SAMPLE_LEN - at;
            sn_media c = text_media(SAMPLE + at, k, (double)at);
            cr_assert_eq(sn_codec_encode(codec, &c, &part), SN_OK, "%s", sn_errmsg());
            at += k;
        }
        cr_assert_eq(sn_codec_encode_flush(codec, &part), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(part.n, whole.n, "trial %d: %zu ids chunked, %zu whole", trial, part.n,
                     whole.n);
        cr_assert_eq(memcmp(part.ids, whole.ids, whole.n * sizeof *whole.ids), 0,
                     "trial %d: chunked ids differ from whole ids", trial);
        sn_tokens_clear(&part);
    }
    sn_tokens_clear(&whole);
}

/* ---------------------------------------------------------------------------------------- */
/* Decoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

Test(text_bytes, decode_split_at_every_byte_gives_whole_characters)
{
    int32_t *ids = bytes_to_ids(SAMPLE, SAMPLE_LEN);
    for (size_t k = 0; k <= SAMPLE_LEN; k++) {
        text_out o = {0};
        cr_assert_eq(sn_codec_decode(codec, ids, k, 1.0, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(sn_codec_decode(codec, ids + k, SAMPLE_LEN - k, 2.0, collect, &o), SN_OK,
                     "%s", sn_errmsg());
        size_t before_flush = o.events;
        cr_assert_eq(sn_codec_decode_flush(codec, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.events, before_flush, "split at %zu: flush emitted something", k);
        cr_assert_eq(o.bad_events, 0, "split at %zu: an event was not whole valid UTF-8", k);
        cr_assert_eq(o.len, SAMPLE_LEN, "split at %zu", k);
        cr_assert_eq(memcmp(o.s, SAMPLE, SAMPLE_LEN), 0, "split at %zu: text differs", k);
        out_reset(&o);
    }
    free(ids);
}

Test(text_bytes, decode_in_random_small_pieces_gives_whole_characters)
{
    int32_t *ids = bytes_to_ids(SAMPLE, SAMPLE_LEN);
    uint64_t seed = 42;
    for (int trial = 0; trial < 200; trial++) {
        text_out o = {0};
        for (size_t at = 0; at < SAMPLE_LEN;) {
            size_t k = rng_below(&seed, 5);
            if (k > SAMPLE_LEN - at)
                k = SAMPLE_LEN - at;
            cr_assert_eq(sn_codec_decode(codec, ids + at, k, (double)at, collect, &o), SN_OK,
                         "%s", sn_errmsg());
            at += k;
        }
        cr_assert_eq(sn_codec_decode_flush(codec, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.bad_events, 0, "trial %d", trial);
        cr_assert_eq(o.len, SAMPLE_LEN, "trial %d", trial);
        cr_assert_eq(memcmp(o.s, SAMPLE, SAMPLE_LEN), 0, "trial %d", trial);
        out_reset(&o);
    }
    free(ids);
}

Test(text_bytes, event_carries_the_t_of_the_call_that_completes_it)
{
    int32_t euro[3] = {0xE2, 0x82, 0xAC};
    text_out o = {0};
    cr_assert_eq(sn_codec_decode(codec, euro, 1, 1.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.events, 0, "half a character was emitted");
    cr_assert_eq(sn_codec_decode(codec, euro + 1, 2, 2.5, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.events, 1);
    cr_assert_float_eq(o.last_t, 2.5, 1e-12);
    cr_assert_eq(o.len, 3);
    cr_assert_eq(memcmp(o.s, "\xE2\x82\xAC", 3), 0);
    out_reset(&o);
}

typedef struct bad_case {
    const char *in;
    size_t in_len;
    const char *want;
    size_t want_len;
} bad_case;

#define CASE(in, want) {in, sizeof in - 1, want, sizeof want - 1}

/* Each ill-formed input and its exact output (Unicode 15, section 3.9, tables 3-8 to 3-11;
 * the WHATWG decoder gives the same). */
static const bad_case BAD_CASES[] = {
    CASE("\x80", FFFD),                                      /* stray continuation */
    CASE("a\xBF" "b", "a" FFFD "b"),
    CASE("\xC0\xAF", FFFD FFFD),                             /* C0 never starts a character */
    CASE("\xC1\xBF", FFFD FFFD),
    CASE("\xE0\x80\xAF", FFFD FFFD FFFD),                    /* overlong 3-byte */
    CASE("\xE0\x9F\xBF", FFFD FFFD FFFD),
    CASE("\xF0\x80\x80\xAF", FFFD FFFD FFFD FFFD),           /* overlong 4-byte */
    CASE("\xF0\x8F\xBF\xBF", FFFD FFFD FFFD FFFD),
    CASE("\xED\xA0\x80", FFFD FFFD FFFD),                    /* surrogate D800 */
    CASE("\xED\xBF\xBF", FFFD FFFD FFFD),                    /* surrogate DFFF */
    CASE("\xF4\x90\x80\x80", FFFD FFFD FFFD FFFD),           /* U+110000 */
    CASE("\xF5\x80\x80\x80", FFFD FFFD FFFD FFFD),
    CASE("\xF8\x88\x80\x80\x80", FFFD FFFD FFFD FFFD FFFD),  /* old 5-byte form */
    CASE("\xFE\xFF", FFFD FFFD),
    CASE("\xC2" "A", FFFD "A"),                              /* lead cut short */
    CASE("\xE2\x82" "A", FFFD "A"),                          /* one maximal subpart */
    CASE("\xF0\x9F\x98" " ", FFFD " "),
    CASE("\xF0\x9F\xE2\x82\xAC", FFFD "\xE2\x82\xAC"),       /* cut short by a new lead */
    CASE("\xE2\x82\xE2\x82\xAC\xC2", FFFD "\xE2\x82\xAC" FFFD), /* last: flushed */
    CASE("\xED\x9F\xBF\xEE\x80\x80", "\xED\x9F\xBF\xEE\x80\x80"), /* around the surrogates */
    CASE("\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF"),            /* U+10FFFF itself is fine */
    /* Unicode's table 3-8 example */
    CASE("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64",
         "a" FFFD FFFD FFFD "b" FFFD "c" FFFD FFFD "d"),
};

static void check_bad_case(const bad_case *bc, size_t split)
{
    int32_t *ids = bytes_to_ids(bc->in, bc->in_len);
    text_out o = {0};
    cr_assert_eq(sn_codec_decode(codec, ids, split, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode(codec, ids + split, bc->in_len - split, 0.0, collect, &o),
                 SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode_flush(codec, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.bad_events, 0);
    int same = o.len == bc->want_len && memcmp(o.s, bc->want, o.len) == 0;
    if (!same) {
        char got[256] = "", want[256] = "";
        for (size_t i = 0; i < o.len && i < 60; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%02X ", o.s[i]);
        for (size_t i = 0; i < bc->want_len && i < 60; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%02X ",
                     (unsigned char)bc->want[i]);
        cr_assert(same, "case %zu split at %zu: got %s, want %s", (size_t)(bc - BAD_CASES),
                  split, got, want);
    }
    out_reset(&o);
    free(ids);
}

Test(text_bytes, ill_formed_bytes_become_replacement_characters)
{
    for (size_t c = 0; c < sizeof BAD_CASES / sizeof *BAD_CASES; c++)
        for (size_t split = 0; split <= BAD_CASES[c].in_len; split++)
            check_bad_case(&BAD_CASES[c], split);
}

Test(text_bytes, random_bytes_decode_like_the_reference_however_split)
{
    /* Bytes drawn mostly from the interesting places: leads, continuation edges, ASCII. */
    static const unsigned char pool[] = {
        0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF,
        0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF8, 0xFF};
    uint64_t seed = 0xC0FFEE;
    unsigned char in[200], want[200 * 3];
    for (int trial = 0; trial < 2000; trial++) {
        size_t n = 1 + rng_below(&seed, sizeof in);
        for (size_t i = 0; i < n; i++)
            in[i] = rng_below(&seed, 4) == 0 ? (unsigned char)rng_next(&seed)
                                             : pool[rng_below(&seed, sizeof pool)];
        size_t want_len = ref_decode(in, n, want);
        int32_t *ids = bytes_to_ids(in, n);
        text_out o = {0};
        for (size_t at = 0; at < n;) {
            size_t k = rng_below(&seed, trial % 2 ? 3 : 17);
            if (k > n - at)
                k = n - at;
            cr_assert_eq(sn_codec_decode(codec, ids + at, k, 0.0, collect, &o), SN_OK, "%s",
                         sn_errmsg());
            at += k;
        }
        cr_assert_eq(sn_codec_decode_flush(codec, collect, &o), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(o.bad_events, 0, "trial %d: an event was not whole valid UTF-8", trial);
        cr_assert(o.len == want_len && memcmp(o.s, want, want_len) == 0,
                  "trial %d: output differs from the maximal-subpart reference", trial);
        out_reset(&o);
        free(ids);
    }
}

Test(text_bytes, flush_turns_a_held_partial_character_into_one_replacement)
{
    int32_t part[3] = {0xF0, 0x9F, 0x98};
    text_out o = {0};
    cr_assert_eq(sn_codec_decode(codec, part, 3, 4.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.events, 0, "a partial character was emitted before the flush");
    cr_assert_eq(sn_codec_decode_flush(codec, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.events, 1);
    cr_assert_eq(o.len, 3);
    cr_assert_eq(memcmp(o.s, FFFD, 3), 0);
    cr_assert_float_eq(o.last_t, 4.0, 1e-12, "the flushed U+FFFD carries the last decode's t");
    out_reset(&o);

    /* The flush reset the decoder: the rest of the old character is now stray bytes, and a
     * new character decodes normally. */
    int32_t rest[4] = {0x80, 'o', 'k', 0x21};
    cr_assert_eq(sn_codec_decode(codec, rest, 4, 5.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.len, 6);
    cr_assert_eq(memcmp(o.s, FFFD "ok!", 6), 0);
    out_reset(&o);

    /* Nothing held: nothing to flush. */
    cr_assert_eq(sn_codec_decode_flush(codec, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.events, 0);
    out_reset(&o);
}

Test(text_bytes, decoding_empty_input_emits_nothing)
{
    text_out o = {0};
    cr_assert_eq(sn_codec_decode(codec, NULL, 0, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode_flush(codec, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.events, 0);
    out_reset(&o);
}

Test(text_bytes, a_stopped_decode_fails_and_the_next_starts_afresh)
{
    int32_t *ids = bytes_to_ids("ab\xE2\x82", 4);
    text_out o = {.stop_after = 1};
    cr_assert_eq(sn_codec_decode(codec, ids, 4, 0.0, collect, &o), SN_ERR_PLUGIN);
    cr_assert_neq(sn_errmsg()[0], '\0');
    out_reset(&o);
    /* The held E2 82 was dropped with the failed call, so AC is a stray byte. */
    int32_t tail[2] = {0xAC, 'z'};
    cr_assert_eq(sn_codec_decode(codec, tail, 2, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.len, 4);
    cr_assert_eq(memcmp(o.s, FFFD "z", 4), 0);
    out_reset(&o);
    free(ids);
}

/* ---------------------------------------------------------------------------------------- */
/* Constrained generation                                                                   */
/* ---------------------------------------------------------------------------------------- */

static int bit(const uint64_t *allowed, unsigned b)
{
    return (int)(allowed[b / 64] >> (b % 64) & 1);
}

/* Asserts that after the bytes seg the plugin allows exactly [lo, hi] and may not end. */
static void check_inside(const char *seg, size_t n, unsigned lo, unsigned hi)
{
    int32_t *ids = bytes_to_ids(seg, n);
    uint64_t allowed[4];
    int may_end = -1;
    cr_assert_eq(sn_codec_constrain(codec, ids, n, allowed, &may_end), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(may_end, 0, "after %02X (%zu bytes) the segment may not end",
                 (unsigned char)seg[n - 1], n);
    for (unsigned b = 0; b < 256; b++)
        cr_assert_eq(bit(allowed, b), b >= lo && b <= hi, "after %02X: byte %02X %s",
                     (unsigned char)seg[n - 1], b, bit(allowed, b) ? "allowed" : "refused");
    free(ids);
}

Test(text_bytes, constrain_narrows_the_first_continuation_byte)
{
    check_inside("\xC2", 1, 0x80, 0xBF);
    check_inside("\xDF", 1, 0x80, 0xBF);
    check_inside("\xE0", 1, 0xA0, 0xBF); /* no overlong forms */
    check_inside("\xE1", 1, 0x80, 0xBF);
    check_inside("\xED", 1, 0x80, 0x9F); /* no surrogates */
    check_inside("\xEF", 1, 0x80, 0xBF);
    check_inside("\xF0", 1, 0x90, 0xBF); /* no overlong forms */
    check_inside("\xF3", 1, 0x80, 0xBF);
    check_inside("\xF4", 1, 0x80, 0x8F); /* nothing past U+10FFFF */
    check_inside("\xE0\xA0", 2, 0x80, 0xBF);
    check_inside("\xED\x9F", 2, 0x80, 0xBF);
    check_inside("\xF0\x90", 2, 0x80, 0xBF);
    check_inside("\xF4\x8F\xBF", 3, 0x80, 0xBF);
    check_inside("abc\xF0\x9F\x98", 6, 0x80, 0xBF);
}

Test(text_bytes, constrain_between_characters_allows_ascii_and_leads_and_ending)
{
    static const char *const segs[] = {"", "a", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x8E\x89",
                                       "xyz\xF4\x8F\xBF\xBF"};
    for (size_t s = 0; s < sizeof segs / sizeof *segs; s++) {
        size_t n = strlen(segs[s]);
        int32_t *ids = bytes_to_ids(segs[s], n);
        uint64_t allowed[4];
        int may_end = -1;
        cr_assert_eq(sn_codec_constrain(codec, ids, n, allowed, &may_end), SN_OK, "%s",
                     sn_errmsg());
        cr_assert_eq(may_end, 1, "segment %zu: a whole character may end the segment", s);
        for (unsigned b = 0; b < 256; b++) {
            int want = b <= 0x7F || (b >= 0xC2 && b <= 0xF4);
            cr_assert_eq(bit(allowed, b), want, "segment %zu: byte %02X %s", s, b,
                         want ? "refused" : "allowed");
        }
        free(ids);
    }
}

Test(text_bytes, constrain_leaves_the_decoder_alone)
{
    int32_t e2 = 0xE2, tail[2] = {0x82, 0xAC};
    text_out o = {0};
    cr_assert_eq(sn_codec_decode(codec, &e2, 1, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    int32_t other[2] = {'q', 0xF0};
    uint64_t allowed[4];
    int may_end;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(sn_codec_constrain(codec, other, (size_t)i % 3, allowed, &may_end), SN_OK,
                     "%s", sn_errmsg());
    cr_assert_eq(sn_codec_decode(codec, tail, 2, 0.0, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(o.len, 3);
    cr_assert_eq(memcmp(o.s, "\xE2\x82\xAC", 3), 0);
    out_reset(&o);
}

/* A sampler that draws uniformly among the allowed bytes, checking at every step that the
 * allowed set is exactly the bytes that keep the segment a valid UTF-8 prefix and that
 * may_end says whether the segment is complete; the bytes go through decode as they are
 * drawn, as in generation. */
static void generate(uint64_t seed, int steps)
{
    enum { MAX_SEG = 512 };
    int32_t seg[MAX_SEG];
    unsigned char bytes[MAX_SEG + 1];
    size_t n = 0, segments = 0;
    text_out o = {0};
    unsigned char *all = malloc((size_t)steps);
    size_t all_len = 0;
    cr_assert_not_null(all);
    for (int step = 0; step < steps; step++) {
        uint64_t allowed[4];
        int may_end = -1;
        cr_assert_eq(sn_codec_constrain(codec, seg, n, allowed, &may_end), SN_OK, "%s",
                     sn_errmsg());
        int complete = -1;
        cr_assert(ref_prefix_ok(bytes, n, &complete), "seed %llu step %d: the segment so far is not valid",
                  (unsigned long long)seed, step);
        cr_assert_eq(may_end, complete, "seed %llu step %d: may_end %d after %zu bytes",
                     (unsigned long long)seed, step, may_end, n);
        unsigned choices[256];
        size_t n_choices = 0;
        for (unsigned b = 0; b < 256; b++) {
            bytes[n] = (unsigned char)b;
            int c2;
            int want = ref_prefix_ok(bytes, n + 1, &c2);
            cr_assert_eq(bit(allowed, b), want, "seed %llu step %d: byte %02X %s after %zu bytes",
                         (unsigned long long)seed, step, b, want ? "refused" : "allowed", n);
            if (bit(allowed, b))
                choices[n_choices++] = b;
        }
        cr_assert_gt(n_choices, 0);
        /* End the segment now and then where that is allowed, and always before it is full. */
        if (may_end && (n + 4 >= MAX_SEG || rng_below(&seed, 40) == 0)) {
            cr_assert_eq(sn_codec_decode_flush(codec, collect, &o), SN_OK, "%s", sn_errmsg());
            n = 0;
            segments++;
            continue;
        }
        /* Favour multi-byte leads so that long characters come up often. */
        unsigned b = choices[rng_below(&seed, n_choices)];
        if (rng_below(&seed, 2) && n_choices > 128)
            b = 0xC2 + (unsigned)rng_below(&seed, 0xF4 - 0xC2 + 1);
        seg[n] = (int32_t)b;
        bytes[n] = (unsigned char)b;
        n++;
        all[all_len++] = (unsigned char)b;
        cr_assert_eq(sn_codec_decode(codec, &seg[n - 1], 1, (double)step, collect, &o), SN_OK,
                     "%s", sn_errmsg());
    }
    /* Close the last segment the way a sampler must: keep following constrain until it may
     * end. */
    for (;;) {
        uint64_t allowed[4];
        int may_end;
        cr_assert_eq(sn_codec_constrain(codec, seg, n, allowed, &may_end), SN_OK, "%s",
                     sn_errmsg());
        if (may_end)
            break;
        unsigned b = 0x80;
        while (!bit(allowed, b))
            b++;
        seg[n++] = (int32_t)b;
        all = realloc(all, all_len + 1);
        cr_assert_not_null(all);
        all[all_len++] = (unsigned char)b;
        cr_assert_eq(sn_codec_decode(codec, &seg[n - 1], 1, 0.0, collect, &o), SN_OK, "%s",
                     sn_errmsg());
    }
    cr_assert_eq(sn_codec_decode_flush(codec, collect, &o), SN_OK, "%s", sn_errmsg());
    cr_assert_gt(segments, 3, "the run should end several segments");
    cr_assert(ref_valid(all, all_len), "seed %llu: generated bytes are not valid UTF-8",
              (unsigned long long)seed);
    cr_assert_eq(o.bad_events, 0);
    /* Nothing was replaced: decode gives back exactly what was generated. */
    cr_assert_eq(o.len, all_len);
    cr_assert_eq(memcmp(o.s, all, all_len), 0, "seed %llu: decode changed generated text",
                 (unsigned long long)seed);
    out_reset(&o);
    free(all);
}

Test(text_bytes, generation_that_follows_constrain_is_always_valid_utf8)
{
    generate(1, 4000);
    generate(0xDEADBEEF, 4000);
    generate(20240601, 4000);
}
