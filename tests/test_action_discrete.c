/*
 * test_action_discrete.c - the action.discrete plugin end to end, through the engine's public
 * codec API (plugins/action_discrete.so loaded from the build's plugin folder).
 *
 * What a user relies on: a wrong "actions" configuration is refused with a message that
 * names the key and the offending entry; each token decodes to its named action; a text of
 * action names encodes the same however it is chunked, and an unknown name is an error that
 * shows the valid ones; constrain makes a generated segment exactly one action.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sensorium/sensorium.h"

static const char *const NAMES[] = {"stop", "go", "turn.left", "turn-right", "grip_close",
                                    "Grip2", "g", "go.fast"};
#define N_NAMES (sizeof NAMES / sizeof *NAMES)
static const char CONFIG[] = "{\"actions\": [\"stop\", \"go\", \"turn.left\", \"turn-right\", "
                             "\"grip_close\", \"Grip2\", \"g\", \"go.fast\"]}";

static sn_plugins *plugins;
static sn_codec *codec;

static void setup(void)
{
    cr_assert_eq(sn_plugins_open(SN_BUILD_PLUGIN_DIR, SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT,
                                 &plugins),
                 SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_open(plugins, "action.discrete", CONFIG, NULL, &codec), SN_OK, "%s",
                 sn_errmsg());
}

static void teardown(void)
{
    sn_codec_close(codec);
    sn_plugins_close(plugins);
    codec = NULL;
    plugins = NULL;
}

TestSuite(action_discrete, .init = setup, .fini = teardown);

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

static sn_media text_media(const char *s, size_t n, double t)
{
    sn_media m = {.kind = SN_MEDIA_TEXT, .t = t};
    m.text.utf8 = s;
    m.text.len = n;
    return m;
}

static sn_status encode_str(const char *s, sn_tokens *out)
{
    sn_media m = text_media(s, strlen(s), 0.0);
    return sn_codec_encode(codec, &m, out);
}

/* Decoded events, recorded for checking after the call. */
typedef struct events {
    char names[64][64];
    uint32_t index[64];
    double t[64];
    size_t n;
    size_t bad; /* not a named action, or more than fit */
} events;

static int collect(void *ctx, const sn_action *a)
{
    events *e = ctx;
    if (a->kind != SN_ACTION_NAMED || !a->named.name || e->n == 64) {
        e->bad++;
        return 0;
    }
    snprintf(e->names[e->n], sizeof e->names[e->n], "%s", a->named.name);
    e->index[e->n] = a->named.index;
    e->t[e->n] = a->t;
    e->n++;
    return 0;
}

static void expect_open_fails(const char *config, const char *needle, const char *needle2)
{
    sn_codec *c = NULL;
    sn_status st = sn_codec_open(plugins, "action.discrete", config, NULL, &c);
    cr_assert_eq(st, SN_ERR_PLUGIN, "config %s: got %s (%s), want a plugin error",
                 config ? config : "NULL", sn_status_str(st), sn_errmsg());
    cr_assert_null(c);
    const char *msg = sn_errmsg();
    cr_assert(strstr(msg, needle), "config %s: message does not mention \"%s\": %s",
              config ? config : "NULL", needle, msg);
    if (needle2)
        cr_assert(strstr(msg, needle2), "config %s: message does not mention \"%s\": %s",
                  config ? config : "NULL", needle2, msg);
    cr_assert_null(strchr(msg, '\n'), "message is more than one line: %s", msg);
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration                                                                            */
/* ---------------------------------------------------------------------------------------- */

Test(action_discrete, describes_itself)
{
    const sn_plugin_info *info = sn_codec_info(codec);
    cr_assert_str_eq(info->name, "action.discrete");
    cr_assert_str_eq(info->version, "1.0.0");
    cr_assert_neq(info->description[0], '\0');
    cr_assert_eq(info->kind, SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER);
    cr_assert_eq(info->media_kinds, SN_MEDIA_BIT(SN_MEDIA_TEXT));
    cr_assert_eq(sn_codec_vocab_size(codec), N_NAMES);
}

Test(action_discrete, missing_actions_is_refused)
{
    expect_open_fails(NULL, "actions", NULL);
    expect_open_fails("{}", "actions", NULL);
}

Test(action_discrete, empty_actions_is_refused)
{
    expect_open_fails("{\"actions\": []}", "actions", "empty");
}

Test(action_discrete, actions_of_the_wrong_type_are_refused)
{
    expect_open_fails("{\"actions\": \"stop go\"}", "actions", NULL);
    expect_open_fails("{\"actions\": {\"stop\": 0}}", "actions", NULL);
    expect_open_fails("{\"actions\": [\"stop\", 7]}", "actions", "[1]");
    expect_open_fails("{\"actions\": [\"stop\", null]}", "actions", "[1]");
    expect_open_fails("{\"actions\": [[\"stop\"]]}", "actions", "[0]");
}

Test(action_discrete, duplicate_names_are_refused_naming_both_places)
{
    expect_open_fails("{\"actions\": [\"a\", \"b\", \"c\", \"b\", \"a\"]}", "'actions'[3]", "[1]");
    expect_open_fails("{\"actions\": [\"x\", \"x\"]}", "actions", "\"x\"");
}

Test(action_discrete, bad_names_are_refused)
{
    expect_open_fails("{\"actions\": [\"stop\", \"\"]}", "'actions'[1]", "empty");
    expect_open_fails("{\"actions\": [\"go left\"]}", "'actions'[0]", "go left");
    expect_open_fails("{\"actions\": [\"ok\", \"a/b\"]}", "'actions'[1]", "a/b");
    expect_open_fails("{\"actions\": [\"caf\\u00e9\"]}", "'actions'[0]", "\xC3\xA9");
    expect_open_fails("{\"actions\": [\"tab\\there\"]}", "'actions'[0]", "\\x09");
    char config[400];
    snprintf(config, sizeof config, "{\"actions\": [\"%0200d\"]}", 7);
    expect_open_fails(config, "'actions'[0]", "at most");
}

Test(action_discrete, unknown_keys_are_refused_naming_them)
{
    expect_open_fails("{\"actions\": [\"go\"], \"speed\": 2}", "speed", NULL);
    expect_open_fails("{\"actoins\": [\"go\"]}", "actoins", NULL);
}

Test(action_discrete, every_allowed_character_is_accepted)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "action.discrete",
                               "{\"actions\": [\"ABCDEFGHIJKLMNOPQRSTUVWXYZ\", "
                               "\"abcdefghijklmnopqrstuvwxyz\", \"0123456789\", \"_.-\", \"-\"]}",
                               NULL, &c),
                 SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_vocab_size(c), 5);
    sn_codec_close(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Decoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

Test(action_discrete, each_id_decodes_to_its_named_action)
{
    int32_t ids[] = {2, 0, 7, 1, 1, 6};
    events e = {0};
    cr_assert_eq(sn_codec_decode(codec, ids, 6, 1.25, collect, &e), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(e.bad, 0);
    cr_assert_eq(e.n, 6);
    for (size_t i = 0; i < 6; i++) {
        cr_assert_str_eq(e.names[i], NAMES[ids[i]]);
        cr_assert_eq(e.index[i], (uint32_t)ids[i]);
        cr_assert_float_eq(e.t[i], 1.25, 1e-12);
    }
    size_t before = e.n;
    cr_assert_eq(sn_codec_decode_flush(codec, collect, &e), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(e.n, before, "flush emitted an action");
}

static int stop_at_once(void *ctx, const sn_action *a)
{
    (void)a;
    (*(int *)ctx)++;
    return 1;
}

Test(action_discrete, a_stopped_decode_fails_after_the_first_event)
{
    int32_t ids[] = {0, 1, 2};
    int calls = 0;
    cr_assert_eq(sn_codec_decode(codec, ids, 3, 0.0, stop_at_once, &calls), SN_ERR_PLUGIN);
    cr_assert_eq(calls, 1, "the plugin went on after the sink said stop");
}

/* ---------------------------------------------------------------------------------------- */
/* Encoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

Test(action_discrete, names_separated_by_any_whitespace_encode_to_their_ids)
{
    sn_tokens t = {0};
    cr_assert_eq(encode_str("  go\tstop\n\nturn.left turn-right\r\ngrip_close\vGrip2\fg go.fast\n",
                            &t),
                 SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(codec, &t), SN_OK, "%s", sn_errmsg());
    int32_t want[] = {1, 0, 2, 3, 4, 5, 6, 7};
    cr_assert_eq(t.n, 8);
    for (size_t i = 0; i < 8; i++)
        cr_assert_eq(t.ids[i], want[i], "id %zu", i);
    sn_tokens_clear(&t);
}

Test(action_discrete, a_name_at_the_very_end_waits_for_the_flush)
{
    sn_tokens t = {0};
    cr_assert_eq(encode_str("go stop", &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(t.n, 1, "only 'go' is final before the flush");
    cr_assert_eq(t.ids[0], 1);
    cr_assert_eq(sn_codec_encode_flush(codec, &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(t.n, 2);
    cr_assert_eq(t.ids[1], 0);
    /* The flush reset the encoder: a second flush adds nothing. */
    cr_assert_eq(sn_codec_encode_flush(codec, &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(t.n, 2);
    sn_tokens_clear(&t);
}

Test(action_discrete, empty_and_blank_text_encode_to_nothing)
{
    sn_tokens t = {0};
    cr_assert_eq(encode_str("", &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(encode_str(" \n\t ", &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(codec, &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(t.n, 0);
    sn_tokens_clear(&t);
}

Test(action_discrete, chunked_encode_equals_whole_encode)
{
    static const char *const spaces[] = {" ", "\t", "\n", "  ", "\r\n", " \t\n "};
    uint64_t seed = 0xAC7105;
    char text[4096];
    for (int trial = 0; trial < 300; trial++) {
        /* A random list of names with random separators, sometimes ending mid-name. */
        size_t len = 0, count = 1 + rng_below(&seed, 60);
        int32_t want[64];
        for (size_t i = 0; i < count; i++) {
            if (i || rng_below(&seed, 2)) {
                const char *sp = spaces[rng_below(&seed, sizeof spaces / sizeof *spaces)];
                memcpy(text + len, sp, strlen(sp));
                len += strlen(sp);
            }
            size_t k = rng_below(&seed, N_NAMES);
            memcpy(text + len, NAMES[k], strlen(NAMES[k]));
            len += strlen(NAMES[k]);
            want[i] = (int32_t)k;
        }
        if (rng_below(&seed, 2))
            text[len++] = '\n';

        sn_tokens whole = {0}, part = {0};
        sn_media m = text_media(text, len, 0.0);
        cr_assert_eq(sn_codec_encode(codec, &m, &whole), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(sn_codec_encode_flush(codec, &whole), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(whole.n, count, "trial %d", trial);
        cr_assert_eq(memcmp(whole.ids, want, count * sizeof *want), 0, "trial %d", trial);

        size_t max_chunk = 1 + rng_below(&seed, trial % 3 == 0 ? 3 : 20);
        for (size_t at = 0; at < len;) {
            size_t k = rng_below(&seed, max_chunk + 1); /* empty chunks too */
            if (k > len - at)
                k = len - at;
            sn_media c = text_media(text + at, k, (double)at);
            cr_assert_eq(sn_codec_encode(codec, &c, &part), SN_OK, "trial %d: %s", trial,
                         sn_errmsg());
            at += k;
        }
        cr_assert_eq(sn_codec_encode_flush(codec, &part), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(part.n, whole.n, "trial %d: %zu ids chunked, %zu whole", trial, part.n,
                     whole.n);
        cr_assert_eq(memcmp(part.ids, whole.ids, whole.n * sizeof *whole.ids), 0,
                     "trial %d: chunked ids differ", trial);
        sn_tokens_clear(&whole);
        sn_tokens_clear(&part);
    }
}

Test(action_discrete, encode_then_decode_gives_the_names_back)
{
    sn_tokens t = {0};
    cr_assert_eq(encode_str("turn.left go.fast stop g", &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(codec, &t), SN_OK, "%s", sn_errmsg());
    events e = {0};
    cr_assert_eq(sn_codec_decode(codec, t.ids, t.n, 0.0, collect, &e), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(e.n, 4);
    cr_assert_str_eq(e.names[0], "turn.left");
    cr_assert_str_eq(e.names[1], "go.fast");
    cr_assert_str_eq(e.names[2], "stop");
    cr_assert_str_eq(e.names[3], "g");
    sn_tokens_clear(&t);
}

Test(action_discrete, an_unknown_name_is_an_error_listing_valid_names)
{
    sn_tokens t = {0};
    cr_assert_eq(encode_str("go jump stop ", &t), SN_ERR_PLUGIN);
    const char *msg = sn_errmsg();
    cr_assert(strstr(msg, "jump"), "message does not name the word: %s", msg);
    cr_assert(strstr(msg, "stop") && strstr(msg, "turn.left"),
              "message does not list valid names: %s", msg);
    cr_assert(strstr(msg, "more"), "message does not say more names exist: %s", msg);
    sn_tokens_clear(&t);

    /* The failed call dropped its half-read state: the stream works again. */
    cr_assert_eq(encode_str("grip_close", &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(codec, &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(t.n, 1);
    cr_assert_eq(t.ids[0], 4);
    sn_tokens_clear(&t);
}

Test(action_discrete, names_are_matched_whole_and_case_sensitive)
{
    static const char *const wrong[] = {"go.", "gr", "STOP", "grip2", "turn", "go.fastest",
                                        "stop,"};
    for (size_t i = 0; i < sizeof wrong / sizeof *wrong; i++) {
        sn_tokens t = {0};
        sn_status st = encode_str(wrong[i], &t);
        if (st == SN_OK)
            st = sn_codec_encode_flush(codec, &t);
        cr_assert_eq(st, SN_ERR_PLUGIN, "'%s' was accepted", wrong[i]);
        cr_assert(strstr(sn_errmsg(), wrong[i]), "message does not name '%s': %s", wrong[i],
                  sn_errmsg());
        sn_tokens_clear(&t);
    }
}

Test(action_discrete, an_unknown_name_split_across_chunks_is_named_whole)
{
    sn_tokens t = {0};
    cr_assert_eq(encode_str("stop ju", &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(t.n, 1);
    cr_assert_eq(encode_str("mp", &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(encode_str("ing go", &t), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "'jumping'"), "message does not name the whole word: %s",
              sn_errmsg());
    cr_assert_eq(t.n, 1);
    sn_tokens_clear(&t);
}

Test(action_discrete, a_word_longer_than_every_name_is_refused_early)
{
    char longword[300];
    memset(longword, 'x', sizeof longword - 1);
    longword[sizeof longword - 1] = '\0';
    sn_tokens t = {0};
    cr_assert_eq(encode_str(longword, &t), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "xxxxxxxx"), "message does not show the word: %s", sn_errmsg());
    cr_assert_null(strchr(sn_errmsg(), '\n'));
    sn_tokens_clear(&t);
}

Test(action_discrete, non_text_media_is_refused_naming_the_kind)
{
    float values[6] = {0, 1, 2, 3, 4, 5};
    sn_media m = {.kind = SN_MEDIA_SERIES, .t = 0.0};
    m.series.values = values;
    m.series.n_ticks = 3;
    m.series.dims = 2;
    sn_tokens t = {0};
    cr_assert_neq(sn_codec_encode(codec, &m, &t), SN_OK);
    cr_assert(strstr(sn_errmsg(), "series"), "message does not name the kind: %s", sn_errmsg());
    sn_tokens_clear(&t);
}

/* ---------------------------------------------------------------------------------------- */
/* Constrained generation                                                                   */
/* ---------------------------------------------------------------------------------------- */

static int bit(const uint64_t *allowed, size_t i)
{
    return (int)(allowed[i / 64] >> (i % 64) & 1);
}

/* Many actions, so that the allowed set spans several 64-bit words and ends mid-word. */
Test(action_discrete, constrain_allows_exactly_one_action_per_segment)
{
    enum { N = 150 };
    char config[N * 12 + 32];
    size_t o = (size_t)snprintf(config, sizeof config, "{\"actions\": [");
    for (int i = 0; i < N; i++)
        o += (size_t)snprintf(config + o, sizeof config - o, "%s\"a%d\"", i ? ", " : "", i);
    snprintf(config + o, sizeof config - o, "]}");
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "action.discrete", config, NULL, &c), SN_OK, "%s",
                 sn_errmsg());
    cr_assert_eq(sn_codec_vocab_size(c), N);

    uint64_t allowed[(N + 63) / 64];
    int may_end = -1;
    cr_assert_eq(sn_codec_constrain(c, NULL, 0, allowed, &may_end), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(may_end, 0, "an empty segment may not end");
    for (size_t i = 0; i < N; i++)
        cr_assert(bit(allowed, i), "action %zu refused at the start of a segment", i);

    uint64_t seed = 7;
    for (size_t len = 1; len <= 3; len++) {
        int32_t seg[3];
        for (size_t i = 0; i < len; i++)
            seg[i] = (int32_t)rng_below(&seed, N);
        may_end = -1;
        cr_assert_eq(sn_codec_constrain(c, seg, len, allowed, &may_end), SN_OK, "%s",
                     sn_errmsg());
        cr_assert_eq(may_end, 1, "after %zu actions the segment must be able to end", len);
        for (size_t i = 0; i < N; i++)
            cr_assert(!bit(allowed, i), "action %zu allowed after %zu actions", i, len);
    }

    /* A sampler following constrain makes segments of exactly one action, each decodable. */
    int32_t seg[4];
    for (int s = 0; s < 200; s++) {
        size_t n = 0;
        for (;;) {
            cr_assert_eq(sn_codec_constrain(c, seg, n, allowed, &may_end), SN_OK, "%s",
                         sn_errmsg());
            size_t choices[N], k = 0;
            for (size_t i = 0; i < N; i++)
                if (bit(allowed, i))
                    choices[k++] = i;
            if (k == 0 || (may_end && rng_below(&seed, 2))) {
                cr_assert(may_end, "a dead end after %zu ids", n);
                break;
            }
            seg[n++] = (int32_t)choices[rng_below(&seed, k)];
            cr_assert_leq(n, 1, "constrain let a second action into a segment");
        }
        cr_assert_eq(n, 1);
        events e = {0};
        cr_assert_eq(sn_codec_decode(c, seg, n, 0.0, collect, &e), SN_OK, "%s", sn_errmsg());
        cr_assert_eq(e.n, 1);
        char want[16];
        snprintf(want, sizeof want, "a%d", (int)seg[0]);
        cr_assert_str_eq(e.names[0], want);
    }
    sn_codec_close(c);
}

Test(action_discrete, constrain_leaves_the_encoder_alone)
{
    sn_tokens t = {0};
    cr_assert_eq(encode_str("turn.", &t), SN_OK, "%s", sn_errmsg());
    uint64_t allowed[1];
    int may_end;
    int32_t seg[1] = {3};
    cr_assert_eq(sn_codec_constrain(codec, seg, 1, allowed, &may_end), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_constrain(codec, seg, 0, allowed, &may_end), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(encode_str("left", &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(codec, &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(t.n, 1);
    cr_assert_eq(t.ids[0], 2);
    sn_tokens_clear(&t);
}
