/*
 * test_text_bpe.c - the text.bpe plugin end to end, through the engine's public codec API,
 * against the Hugging Face tokenizers library.
 *
 * What a user relies on: the ids are exactly the library's, for every pre-tokenizer the
 * plugin knows, from a tokenizer.json in either merge format and from a GGUF file; any
 * chunking of the text gives the same ids, even cuts inside a character; decoding gives the
 * text back and never splits a character; special tokens are never produced from text; and a
 * broken tokenizer file is refused with one line naming the file and the fault.
 *
 * The golden ids come from tests/reference/bpe_golden.py, which runs the library on a corpus
 * (licence texts, many scripts and emoji, whitespace, digits, special-token spellings, random
 * strings) with SmolLM2's vocabulary; ctest runs it first (fixture bpe_golden) into
 * SN_BPE_GOLDEN_DIR.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sensorium/sensorium.h"

#define GOLDEN SN_BPE_GOLDEN_DIR "/golden.txt"
#define SMOLLM2_GGUF SN_SOURCE_DIR "/.testdata/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

static sn_plugins *plugins;

static void setup(void)
{
    cr_assert_eq(sn_plugins_open(SN_BUILD_PLUGIN_DIR, SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT,
                                 &plugins),
                 SN_OK, "%s", sn_errmsg());
}

static void teardown(void)
{
    sn_plugins_close(plugins);
    plugins = NULL;
}

TestSuite(text_bpe, .init = setup, .fini = teardown, .timeout = 280);

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

/* Whether s[0..n) is well-formed UTF-8, from the definition (shortest form, no surrogates,
 * at most U+10FFFF), written apart from the plugin's own tables. */
static int utf8_ok(const unsigned char *s, size_t n)
{
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    for (size_t i = 0; i < n;) {
        size_t len;
        uint32_t c;
        if (s[i] < 0x80) {
            i++;
            continue;
        } else if ((s[i] & 0xE0) == 0xC0) {
            len = 2;
            c = s[i] & 0x1F;
        } else if ((s[i] & 0xF0) == 0xE0) {
            len = 3;
            c = s[i] & 0x0F;
        } else if ((s[i] & 0xF8) == 0xF0) {
            len = 4;
            c = s[i] & 0x07;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            c = c << 6 | (s[i + k] & 0x3F);
        }
        if (c < min_cp[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

static int hexval(int c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

static uint8_t *unhex(const char *h, size_t *len)
{
    size_t n = strlen(h) / 2;
    uint8_t *b = malloc(n + 1);
    cr_assert(b);
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(hexval(h[2 * i]) << 4 | hexval(h[2 * i + 1]));
    *len = n;
    return b;
}

/* ---------------------------------------------------------------------------------------- */
/* The golden file                                                                          */
/* ---------------------------------------------------------------------------------------- */

typedef struct ids {
    int32_t *v;
    size_t n;
} ids;

typedef struct golden_text {
    char name[64];
    uint8_t *s;
    size_t len;
} golden_text;

typedef struct golden_decode {
    ids in;
    uint8_t *text;
    size_t len;
} golden_decode;

/* Up to this many corpus texts (bpe_golden.py can make more random ones on request). */
#define MAX_TEXTS 20000

typedef struct golden {
    golden_text texts[MAX_TEXTS];
    size_t n_texts;
    char file[4096]; /* the tokenizer file of the config asked for */
    ids expect[MAX_TEXTS];
    uint8_t *back[MAX_TEXTS]; /* what the library decodes expect[i] to, where not the text */
    size_t back_len[MAX_TEXTS];
    golden_decode dec[256];
    size_t n_dec;
} golden;

/* Reads "N ID ID ..." at p into out; returns the rest. */
static char *read_ids(char *p, ids *out)
{
    out->n = strtoul(p, &p, 10);
    out->v = malloc((out->n + 1) * sizeof *out->v);
    cr_assert(out->v);
    for (size_t i = 0; i < out->n; i++)
        out->v[i] = (int32_t)strtol(p, &p, 10);
    return p;
}

/* The corpus and what the library said for one config. */
static golden *golden_load(const char *config)
{
    FILE *f = fopen(GOLDEN, "r");
    cr_assert(f, "%s is missing: the fixture test_text_bpe_golden (tests/reference/bpe_golden.py) makes it", GOLDEN);
    golden *g = calloc(1, sizeof *g);
    cr_assert(g);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int mine = 0, found = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n')
            line[n - 1] = '\0';
        if (line[0] == 'T') {
            golden_text *t = &g->texts[g->n_texts++];
            char *sp = strchr(line + 2, ' ');
            cr_assert(sp && g->n_texts <= MAX_TEXTS);
            snprintf(t->name, sizeof t->name, "%.*s", (int)(sp - line - 2), line + 2);
            t->s = unhex(sp + 1, &t->len);
        } else if (line[0] == 'C') {
            char *sp = strchr(line + 2, ' ');
            cr_assert(sp);
            *sp = '\0';
            mine = strcmp(line + 2, config) == 0;
            if (mine) {
                found = 1;
                if (sp[1] == '/')
                    snprintf(g->file, sizeof g->file, "%s", sp + 1);
                else
                    snprintf(g->file, sizeof g->file, "%s/%s", SN_BPE_GOLDEN_DIR, sp + 1);
            }
        } else if (mine && line[0] == 'I') {
            char *p = line + 2;
            size_t t = strtoul(p, &p, 10);
            cr_assert(t < g->n_texts);
            read_ids(p, &g->expect[t]);
        } else if (mine && line[0] == 'R') {
            char *p = line + 2;
            size_t t = strtoul(p, &p, 10);
            cr_assert(t < g->n_texts);
            g->back[t] = unhex(p + 1, &g->back_len[t]);
        } else if (mine && line[0] == 'D') {
            cr_assert(g->n_dec < 256);
            golden_decode *d = &g->dec[g->n_dec++];
            char *p = read_ids(line + 2, &d->in);
            while (*p == ' ')
                p++;
            d->text = unhex(p, &d->len);
        }
    }
    free(line);
    fclose(f);
    cr_assert(found, "golden.txt has no config %s", config);
    return g;
}

static void golden_free(golden *g)
{
    for (size_t i = 0; i < g->n_texts; i++) {
        free(g->texts[i].s);
        free(g->expect[i].v);
        free(g->back[i]);
    }
    for (size_t i = 0; i < g->n_dec; i++) {
        free(g->dec[i].in.v);
        free(g->dec[i].text);
    }
    free(g);
}

/* ---------------------------------------------------------------------------------------- */
/* Codec calls                                                                              */
/* ---------------------------------------------------------------------------------------- */

static sn_codec *open_codec(const char *key, const char *file)
{
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "{\"%s\": \"%s\"}", key, file);
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "text.bpe", cfg, NULL, &c), SN_OK, "%s", sn_errmsg());
    return c;
}

static sn_codec *open_config(const golden *g)
{
    size_t n = strlen(g->file);
    int is_gguf = n > 5 && strcmp(g->file + n - 5, ".gguf") == 0;
    return open_codec(is_gguf ? "gguf" : "tokenizer", g->file);
}

/* Encodes s[0..n) cut at cuts[0..ncuts) (ascending), then flushes. */
static void encode_cut(sn_codec *c, const uint8_t *s, size_t n, const size_t *cuts, size_t ncuts,
                       sn_tokens *out)
{
    size_t at = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : n;
        sn_media m = {.kind = SN_MEDIA_TEXT, .t = (double)k};
        m.text.utf8 = (const char *)s + at;
        m.text.len = end - at;
        cr_assert_eq(sn_codec_encode(c, &m, out), SN_OK, "%s", sn_errmsg());
        at = end;
    }
    cr_assert_eq(sn_codec_encode_flush(c, out), SN_OK, "%s", sn_errmsg());
}

typedef struct text_out {
    uint8_t *s;
    size_t len, cap;
    int events_ok; /* every event was whole, valid UTF-8 */
} text_out;

static int collect_text(void *ctx, const sn_action *a)
{
    text_out *o = ctx;
    if (a->kind != SN_ACTION_TEXT)
        return 1;
    if (!utf8_ok((const unsigned char *)a->text.utf8, a->text.len))
        o->events_ok = 0;
    if (o->len + a->text.len + 1 > o->cap) {
        o->cap = 2 * (o->len + a->text.len + 1);
        o->s = realloc(o->s, o->cap);
        if (!o->s)
            return 1;
    }
    memcpy(o->s + o->len, a->text.utf8, a->text.len);
    o->len += a->text.len;
    return 0;
}

/* Decodes ids in random pieces, then flushes; the text in *out. */
static void decode_random(sn_codec *c, const int32_t *v, size_t n, uint64_t *rng, text_out *out)
{
    out->len = 0;
    out->events_ok = 1;
    for (size_t at = 0; at < n;) {
        size_t k = 1 + rng_below(rng, 7);
        if (k > n - at)
            k = n - at;
        cr_assert_eq(sn_codec_decode(c, v + at, k, 0.0, collect_text, out), SN_OK, "%s",
                     sn_errmsg());
        at += k;
    }
    cr_assert_eq(sn_codec_decode_flush(c, collect_text, out), SN_OK, "%s", sn_errmsg());
}

/* Fails with the first difference: the ids around it and the text there. */
static void expect_ids(sn_codec *c, const golden_text *t, const ids *want, const sn_tokens *got,
                       const char *how)
{
    size_t n = want->n < got->n ? want->n : got->n, k = 0;
    while (k < n && want->v[k] == got->ids[k])
        k++;
    if (k == n && want->n == got->n)
        return;
    /* Where in the text: the length of what the agreeing ids decode to. */
    text_out o = {0};
    uint64_t rng = 1;
    decode_random(c, want->v, k, &rng, &o);
    size_t at = o.len < t->len ? o.len : t->len, lo = at > 40 ? at - 40 : 0;
    size_t hi = at + 40 < t->len ? at + 40 : t->len;
    char ctx[400] = "", w[200] = "", g[200] = "";
    for (size_t i = lo; i < hi && strlen(ctx) < sizeof ctx - 8; i++) {
        uint8_t b = t->s[i];
        if (b < 0x20 || b == '\\')
            snprintf(ctx + strlen(ctx), sizeof ctx - strlen(ctx), "\\x%02X", b);
        else
            snprintf(ctx + strlen(ctx), sizeof ctx - strlen(ctx), "%s%c", i == at ? "|" : "", b);
    }
    for (size_t i = k > 3 ? k - 3 : 0; i < k + 6 && i < want->n; i++)
        snprintf(w + strlen(w), sizeof w - strlen(w), " %d", (int)want->v[i]);
    for (size_t i = k > 3 ? k - 3 : 0; i < k + 6 && i < got->n; i++)
        snprintf(g + strlen(g), sizeof g - strlen(g), " %d", (int)got->ids[i]);
    free(o.s);
    cr_assert_fail("text '%s' (%s): id %zu differs (library %zu ids, text.bpe %zu)\n"
                   "  library :%s\n  text.bpe:%s\n  text at byte %zu: \"%s\"",
                   t->name, how, k, want->n, got->n, w, g, at, ctx);
}

/* Every corpus text of one config: whole, in random chunks (cut anywhere, even inside a
 * character), and decoded back; then the library's decodes of arbitrary id sequences. */
static void check_config(const char *config)
{
    golden *g = golden_load(config);
    sn_codec *c = open_config(g);
    uint64_t rng = 0x5EED0000u + strlen(config);
    size_t n_ids = 0, n_back = 0, *cuts = NULL;
    text_out o = {0};
    for (size_t i = 0; i < g->n_texts; i++) {
        const golden_text *t = &g->texts[i];
        sn_tokens got = {0};
        encode_cut(c, t->s, t->len, NULL, 0, &got);
        expect_ids(c, t, &g->expect[i], &got, "whole");
        n_ids += got.n;

        /* Chunks of 1..64 bytes; short texts also in chunks of 1..3. */
        for (int pass = 0; pass < (t->len < 4096 ? 2 : 1); pass++) {
            size_t most = pass ? 3 : 64, nc = 0;
            cuts = realloc(cuts, (t->len + 1) * sizeof *cuts);
            cr_assert(cuts);
            for (size_t at = 1 + rng_below(&rng, most); at < t->len; at += 1 + rng_below(&rng, most))
                cuts[nc++] = at;
            got.n = 0;
            encode_cut(c, t->s, t->len, cuts, nc, &got);
            expect_ids(c, t, &g->expect[i], &got, pass ? "chunks of 1-3 bytes" : "chunks of 1-64 bytes");
        }
        sn_tokens_clear(&got);

        /* Back to the text, decoded in random pieces, each event whole characters (an added
         * token that strips spaces gives back only itself, in the library too). */
        const uint8_t *want = g->back[i] ? g->back[i] : t->s;
        size_t want_len = g->back[i] ? g->back_len[i] : t->len;
        decode_random(c, g->expect[i].v, g->expect[i].n, &rng, &o);
        cr_assert(o.events_ok, "text '%s': a decoded text event was not whole UTF-8", t->name);
        cr_assert(o.len == want_len && memcmp(o.s, want, want_len) == 0,
                  "text '%s': decoding its ids gives %zu bytes, not the %zu of the %s", t->name,
                  o.len, want_len, g->back[i] ? "library's decode" : "text");
        n_back += g->back[i] != NULL;
    }
    for (size_t i = 0; i < g->n_dec; i++) {
        const golden_decode *d = &g->dec[i];
        decode_random(c, d->in.v, d->in.n, &rng, &o);
        cr_assert(o.events_ok);
        cr_assert(o.len == d->len && memcmp(o.s, d->text, d->len) == 0,
                  "decode case %zu (%zu ids, first %d): %zu bytes, the library's %zu", i, d->in.n,
                  (int)d->in.v[0], o.len, d->len);
    }
    fprintf(stderr, "text.bpe %s: %zu texts, %zu ids identical to tokenizers (whole and chunked); "
                    "decoding gives back %zu texts (%zu as the library's decode, not the text) "
                    "and %zu random id sequences as the library does\n",
            config, g->n_texts, n_ids, g->n_texts, n_back, g->n_dec);
    free(o.s);
    free(cuts);
    sn_codec_close(c);
    golden_free(g);
}

/* ---------------------------------------------------------------------------------------- */
/* The library's ids                                                                        */
/* ---------------------------------------------------------------------------------------- */

Test(text_bpe, gpt2_regex_merge_pairs) { check_config("gpt2_pairs"); }
Test(text_bpe, gpt2_regex_merge_strings) { check_config("gpt2_strings"); }
Test(text_bpe, llama3_regex_merge_pairs) { check_config("llama3_pairs"); }
Test(text_bpe, llama3_regex_merge_strings) { check_config("llama3_strings"); }
Test(text_bpe, smollm2_merge_pairs) { check_config("smollm_pairs"); }
Test(text_bpe, smollm2_merge_strings) { check_config("smollm_strings"); }
Test(text_bpe, smollm2_gguf) { check_config("gguf"); }
Test(text_bpe, added_tokens_merge_pairs) { check_config("added_pairs"); }
Test(text_bpe, added_tokens_merge_strings) { check_config("added_strings"); }
Test(text_bpe, gpt2_regex_as_split_step) { check_config("gpt2_split_pairs"); }
Test(text_bpe, digit_runs) { check_config("digit_runs_pairs"); }
Test(text_bpe, unknown_token) { check_config("unk_pairs"); }
Test(text_bpe, unknown_token_fused) { check_config("unk_fused_pairs"); }

/* A relative tokenizer path is in the model's data directory. */
Test(text_bpe, relative_path_is_in_the_data_dir)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "text.bpe", "{\"tokenizer\": \"smollm_pairs.json\"}",
                               SN_BPE_GOLDEN_DIR, &c),
                 SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_vocab_size(c), 49152);
    sn_codec_close(c);
}

/* Every cut point of a text that has a bit of everything: two chunks give the ids of one. */
Test(text_bpe, every_two_chunk_cut)
{
    static const char text[] =
        "<|im_start|>user\r\nI'M here:  naïve 中文 😀👨‍👩‍👧 x\u00a0y ١٢3456 [LS]  [BOTH] "
        "hello world _st<user_tag> 'll  \t\n\n end  ";
    size_t n = sizeof text - 1;
    static const char *const configs[] = {"gpt2_pairs", "llama3_pairs", "smollm_pairs", "added_pairs"};
    for (size_t k = 0; k < 4; k++) {
        golden *g = golden_load(configs[k]);
        sn_codec *c = open_config(g);
        sn_tokens whole = {0}, got = {0};
        encode_cut(c, (const uint8_t *)text, n, NULL, 0, &whole);
        for (size_t p = 1; p < n; p++) {
            got.n = 0;
            encode_cut(c, (const uint8_t *)text, n, &p, 1, &got);
            cr_assert(got.n == whole.n && memcmp(got.ids, whole.ids, got.n * sizeof *got.ids) == 0,
                      "%s: cut at byte %zu gives %zu ids, whole text %zu (or different ids)",
                      configs[k], p, got.n, whole.n);
        }
        sn_tokens_clear(&whole);
        sn_tokens_clear(&got);
        sn_codec_close(c);
        golden_free(g);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Special tokens                                                                           */
/* ---------------------------------------------------------------------------------------- */

Test(text_bpe, special_tokens_never_come_from_text)
{
    sn_codec *c = open_codec("gguf", SMOLLM2_GGUF);
    cr_assert_eq(sn_codec_vocab_size(c), 49152);
    static const char *const spellings[] = {
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<empty_output>",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n", "<<|im_end|>>", "<|im_start|><|im_start|>"};
    for (size_t i = 0; i < sizeof spellings / sizeof *spellings; i++) {
        sn_tokens got = {0};
        encode_cut(c, (const uint8_t *)spellings[i], strlen(spellings[i]), NULL, 0, &got);
        cr_assert_gt(got.n, 1, "'%s' became %zu id(s)", spellings[i], got.n);
        for (size_t k = 0; k < got.n; k++)
            cr_assert_geq(got.ids[k], 17, "'%s' produced the control token %d", spellings[i],
                          (int)got.ids[k]);
        /* ...and is ordinary text: it decodes back as spelt. */
        text_out o = {0};
        uint64_t rng = i;
        decode_random(c, got.ids, got.n, &rng, &o);
        cr_assert(o.len == strlen(spellings[i]) && memcmp(o.s, spellings[i], o.len) == 0);
        free(o.s);
        sn_tokens_clear(&got);
    }
    /* Control ids decode to no text at all, between ordinary ones. */
    int32_t ids[20];
    for (int i = 0; i < 17; i++)
        ids[i] = i;
    text_out o = {0};
    uint64_t rng = 3;
    decode_random(c, ids, 17, &rng, &o);
    cr_assert_eq(o.len, 0, "control tokens decoded to %zu bytes", o.len);
    sn_tokens hi = {0};
    encode_cut(c, (const uint8_t *)"Hi", 2, NULL, 0, &hi);
    int32_t mixed[3] = {1, hi.ids[0], 2};
    decode_random(c, mixed, hi.n == 1 ? 3 : 0, &rng, &o);
    cr_assert(hi.n != 1 || (o.len == 2 && memcmp(o.s, "Hi", 2) == 0));
    sn_tokens_clear(&hi);
    free(o.s);
    sn_codec_close(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Input the plugin refuses                                                                 */
/* ---------------------------------------------------------------------------------------- */

Test(text_bpe, invalid_utf8_is_refused_and_the_stream_recovers)
{
    sn_codec *c = open_codec("gguf", SMOLLM2_GGUF);
    sn_tokens got = {0};
    sn_media m = {.kind = SN_MEDIA_TEXT};
    m.text.utf8 = "ok \xC3\x28 bad";
    m.text.len = strlen(m.text.utf8);
    cr_assert_eq(sn_codec_encode(c, &m, &got), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "not valid UTF-8: byte 0xC3 at offset 3"), "%s", sn_errmsg());
    /* A character cut off at the end of the stimulus. */
    m.text.utf8 = "end \xE4\xB8";
    m.text.len = 6;
    cr_assert_eq(sn_codec_encode(c, &m, &got), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(c, &got), SN_ERR_PLUGIN);
    cr_assert(strstr(sn_errmsg(), "ends inside a UTF-8 character"), "%s", sn_errmsg());
    /* Afresh after each failure. */
    got.n = 0;
    encode_cut(c, (const uint8_t *)"fine", 4, NULL, 0, &got);
    text_out o = {0};
    uint64_t rng = 9;
    decode_random(c, got.ids, got.n, &rng, &o);
    cr_assert(o.len == 4 && memcmp(o.s, "fine", 4) == 0);
    free(o.s);
    sn_tokens_clear(&got);
    sn_codec_close(c);
}

static char tmpdir[64];

/* Test-level init and fini run besides the suite's. */
static void tmp_setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sn_bpe_XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void tmp_teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    cr_expect_eq(system(cmd), 0);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
}

/* Opening text.bpe with config fails, and the message has each fragment. */
static void expect_refused(const char *config, const char *frag1, const char *frag2)
{
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "text.bpe", config, NULL, &c), SN_ERR_PLUGIN,
                 "config %s was accepted", config);
    const char *msg = sn_errmsg();
    cr_assert(strstr(msg, frag1) && (!frag2 || strstr(msg, frag2)),
              "config %s: message lacks '%s'%s%s: %s", config, frag1, frag2 ? " or " : "",
              frag2 ? frag2 : "", msg);
    cr_assert(!strchr(msg, '\n'), "the message is not one line: %s", msg);
}

/* A tokenizer.json with three bytes' tokens "a" "b" "ab" and one merge, the given
 * pre_tokenizer, and extra top-level and model members. */
static void expect_json_refused(const char *name, const char *vocab, const char *merges,
                                const char *pre, const char *extra, const char *frag)
{
    char path[128], text[2048], cfg[256];
    snprintf(path, sizeof path, "%s/%s.json", tmpdir, name);
    snprintf(text, sizeof text,
             "{\"version\": \"1.0\", %s \"pre_tokenizer\": %s, \"decoder\": {\"type\": \"ByteLevel\"},"
             " \"model\": {\"type\": \"BPE\", \"vocab\": %s%s%s}}",
             extra, pre, vocab, merges ? ", \"merges\": " : "", merges ? merges : "");
    write_file(path, text);
    snprintf(cfg, sizeof cfg, "{\"tokenizer\": \"%s\"}", path);
    expect_refused(cfg, path, frag);
}

#define BYTELEVEL "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}"
#define VOCAB "{\"a\": 0, \"b\": 1, \"ab\": 2}"

Test(text_bpe, bad_configs_are_one_line_errors_naming_the_file, .init = tmp_setup,
     .fini = tmp_teardown)
{
    expect_refused(NULL, "config needs 'tokenizer'", NULL);
    expect_refused("{\"tokenizer\": \"a.json\", \"gguf\": \"b.gguf\"}", "both 'tokenizer' and 'gguf'", NULL);
    expect_refused("{\"tokeniser\": \"a.json\"}", "unknown config key 'tokeniser'", NULL);
    expect_refused("{\"tokenizer\": 3}", "tokenizer", NULL);
    expect_refused("{\"tokenizer\": \"/nonexistent/tokenizer.json\"}", "/nonexistent/tokenizer.json",
                   "cannot read");

    char path[128], cfg[256];
    snprintf(path, sizeof path, "%s/broken.json", tmpdir);
    write_file(path, "{\"model\": {\"type\": \"BPE\", ");
    snprintf(cfg, sizeof cfg, "{\"tokenizer\": \"%s\"}", path);
    expect_refused(cfg, path, "not valid JSON");

    snprintf(path, sizeof path, "%s/wp.json", tmpdir);
    write_file(path, "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}");
    snprintf(cfg, sizeof cfg, "{\"tokenizer\": \"%s\"}", path);
    expect_refused(cfg, path, "model type is WordPiece, not BPE");

    expect_json_refused("nomerges", VOCAB, NULL, BYTELEVEL, "", "merges is missing");
    expect_json_refused("unknownleft", VOCAB, "[\"a c\"]", BYTELEVEL, "", "names the unknown token 'c'");
    expect_json_refused("unknownpair", VOCAB, "[[\"a\", \"zz\"]]", BYTELEVEL, "",
                        "names the unknown token 'zz'");
    expect_json_refused("badresult", "{\"a\": 0, \"b\": 1}", "[\"a b\"]", BYTELEVEL, "",
                        "makes 'ab', which is not in the vocabulary");
    expect_json_refused("badmerge", VOCAB, "[\"a b c\"]", BYTELEVEL, "", "not two tokens");
    expect_json_refused("dupids", "{\"a\": 0, \"b\": 0, \"ab\": 2}", "[]", BYTELEVEL, "",
                        "duplicate id 0");
    expect_json_refused("dupadded", VOCAB, "[]", BYTELEVEL,
                        "\"added_tokens\": [{\"id\": 1, \"content\": \"<x>\", \"special\": true}],",
                        "duplicate id 1");
    expect_json_refused("whitespace", VOCAB, "[]", "{\"type\": \"Whitespace\"}", "",
                        "unknown pre-tokenizer Whitespace");
    expect_json_refused("regex", VOCAB, "[]",
                        "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
                        "{\"Regex\": \"\\\\w+\"}, \"behavior\": \"Isolated\", \"invert\": false}, " BYTELEVEL "]}",
                        "", "unknown pre-tokenizer regex '\\w+'");
    expect_json_refused("nobytelevel", VOCAB, "[]",
                        "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\"}]}", "",
                        "no ByteLevel step");
    expect_json_refused("nopre", VOCAB, "[]", "null", "", "no pre_tokenizer");
    expect_json_refused("prefix", VOCAB, "[]",
                        "{\"type\": \"ByteLevel\", \"add_prefix_space\": true}", "", "add_prefix_space");
    expect_json_refused("normalizer", VOCAB, "[]", BYTELEVEL, "\"normalizer\": {\"type\": \"NFC\"},",
                        "normalizer NFC");
    expect_json_refused("singleword", VOCAB, "[]", BYTELEVEL,
                        "\"added_tokens\": [{\"id\": 5, \"content\": \"<w>\", \"single_word\": true}],",
                        "single_word");
}

/* ---- A minimal GGUF writer for the broken-GGUF cases ------------------------------------ */

static void gw_u32(FILE *f, uint32_t v) { fwrite(&v, 4, 1, f); }
static void gw_u64(FILE *f, uint64_t v) { fwrite(&v, 8, 1, f); }
static void gw_str(FILE *f, const char *s)
{
    gw_u64(f, strlen(s));
    fwrite(s, 1, strlen(s), f);
}
static void gw_kv_str(FILE *f, const char *key, const char *v)
{
    gw_str(f, key);
    gw_u32(f, 8);
    gw_str(f, v);
}
static void gw_kv_strs(FILE *f, const char *key, const char *const *v, size_t n)
{
    gw_str(f, key);
    gw_u32(f, 9);
    gw_u32(f, 8);
    gw_u64(f, n);
    for (size_t i = 0; i < n; i++)
        gw_str(f, v[i]);
}

/* A GGUF tokenizer: its tokens (with types when given) and merges (none when NULL). */
static void write_gguf_tokens(const char *path, const char *model, const char *pre,
                              const char *const *tokens, const int32_t *types, size_t n,
                              const char *const *merges, size_t n_merges)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    fwrite("GGUF", 1, 4, f);
    gw_u32(f, 3);
    gw_u64(f, 0);
    gw_u64(f, 3 + (merges != NULL) + (types != NULL));
    gw_kv_str(f, "tokenizer.ggml.model", model);
    gw_kv_str(f, "tokenizer.ggml.pre", pre);
    gw_kv_strs(f, "tokenizer.ggml.tokens", tokens, n);
    if (merges)
        gw_kv_strs(f, "tokenizer.ggml.merges", merges, n_merges);
    if (types) {
        gw_str(f, "tokenizer.ggml.token_type");
        gw_u32(f, 9);
        gw_u32(f, 5);
        gw_u64(f, n);
        fwrite(types, 4, n, f);
    }
    fclose(f);
}

/* Tokens "a" "b" "ab", merges unless without them. */
static void write_gguf(const char *path, const char *model, const char *pre, int with_merges)
{
    static const char *const tokens[] = {"a", "b", "ab"};
    static const char *const merges[] = {"a b"};
    write_gguf_tokens(path, model, pre, tokens, NULL, 3, with_merges ? merges : NULL, 1);
}

Test(text_bpe, bad_gguf_files_are_one_line_errors_naming_the_file, .init = tmp_setup,
     .fini = tmp_teardown)
{
    char path[128], cfg[256];
    snprintf(path, sizeof path, "%s/t.gguf", tmpdir);
    snprintf(cfg, sizeof cfg, "{\"gguf\": \"%s\"}", path);

    write_gguf(path, "gpt2", "gpt2", 1); /* the good one first */
    sn_codec *c = NULL;
    cr_assert_eq(sn_codec_open(plugins, "text.bpe", cfg, NULL, &c), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_vocab_size(c), 3);
    sn_tokens got = {0};
    encode_cut(c, (const uint8_t *)"abab", 4, NULL, 0, &got);
    cr_assert(got.n == 2 && got.ids[0] == 2 && got.ids[1] == 2);
    sn_tokens_clear(&got);
    sn_codec_close(c);

    /* A user-defined token (type 4) is split out of the text; a control one (3) never is,
     * and decodes to nothing. Bytes without a token are dropped, as in the library. */
    static const char *const tokens[] = {"a", "b", "ab", "<u>", "<c>", "c"};
    static const int32_t types[] = {1, 1, 1, 4, 3, 1};
    static const char *const merges[] = {"a b"};
    write_gguf_tokens(path, "gpt2", "gpt2", tokens, types, 6, merges, 1);
    cr_assert_eq(sn_codec_open(plugins, "text.bpe", cfg, NULL, &c), SN_OK, "%s", sn_errmsg());
    encode_cut(c, (const uint8_t *)"ab<u>c<c>", 9, NULL, 0, &got);
    /* ab | <u> | c | "<c>" as text: its "c" only, < and > have no token */
    cr_assert(got.n == 4 && got.ids[0] == 2 && got.ids[1] == 3 && got.ids[2] == 5 && got.ids[3] == 5,
              "%zu ids, first %d", got.n, got.n ? (int)got.ids[0] : -1);
    int32_t dec[3] = {3, 4, 5};
    text_out o = {0};
    uint64_t rng = 5;
    decode_random(c, dec, 3, &rng, &o);
    cr_assert(o.len == 4 && memcmp(o.s, "<u>c", 4) == 0);
    free(o.s);
    sn_tokens_clear(&got);
    sn_codec_close(c);

    static const char *const dups[] = {"a", "b", "a"};
    write_gguf_tokens(path, "gpt2", "gpt2", dups, NULL, 3, merges, 1);
    expect_refused(cfg, path, "duplicate token 'a'");
    static const int32_t bad_types[] = {1, 9, 1};
    write_gguf_tokens(path, "gpt2", "gpt2", tokens, bad_types, 3, merges, 1);
    expect_refused(cfg, path, "has type 9");
    write_gguf(path, "llama", "default", 1);
    expect_refused(cfg, path, "tokenizer.ggml.model is 'llama', not 'gpt2'");
    write_gguf(path, "gpt2", "qwen2", 1);
    expect_refused(cfg, path, "unknown pre-tokenizer tokenizer.ggml.pre = 'qwen2'");
    write_gguf(path, "gpt2", "gpt2", 0);
    expect_refused(cfg, path, "tokenizer.ggml.merges is missing");
    write_file(path, "GGUF but not really a GGUF file");
    expect_refused(cfg, path, NULL);
    expect_refused("{\"gguf\": \"/nonexistent/model.gguf\"}", "/nonexistent/model.gguf", NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* Speed                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Encoding the GPL-3 text on one core, printed in MB/s (the aim is > 5 MB/s). */
Test(text_bpe, encode_speed_gpl3)
{
    golden *g = golden_load("smollm_pairs");
    size_t k = 0;
    while (k < g->n_texts && strcmp(g->texts[k].name, "GPL-3") != 0)
        k++;
    cr_assert(k < g->n_texts, "the corpus has no GPL-3 text");
    static const char *const configs[] = {"smollm_pairs", "gpt2_pairs", "llama3_pairs"};
    for (size_t i = 0; i < 3; i++) {
        golden *gc = golden_load(configs[i]);
        sn_codec *c = open_config(gc);
        sn_tokens got = {0};
        size_t bytes = 0;
        double t0 = now(), t;
        do {
            got.n = 0;
            encode_cut(c, g->texts[k].s, g->texts[k].len, NULL, 0, &got);
            bytes += g->texts[k].len;
        } while ((t = now() - t0) < 0.5);
        fprintf(stderr, "text.bpe %s: encodes GPL-3 (%zu bytes, %zu ids) at %.1f MB/s\n", configs[i],
                g->texts[k].len, got.n, bytes / t / 1e6);
        sn_tokens_clear(&got);
        sn_codec_close(c);
        golden_free(gc);
    }
    golden_free(g);
}
