/*
 * test_vocab.c - the vocabulary layout read from sensorium.json: a good layout maps ids both
 * ways, and each kind of broken manifest is an error naming the offending entry.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sensorium/sensorium.h"

static sn_plugins *ps;
static char dir[64];

static void setup(void)
{
    cr_assert_eq(sn_plugins_open(SN_BUILD_PLUGIN_DIR, SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT, &ps), SN_OK);
    cr_assert_geq(sn_plugins_find(ps, "text.bytes"), 0, "text.bytes not built");
    cr_assert_geq(sn_plugins_find(ps, "action.discrete"), 0, "action.discrete not built");
    strcpy(dir, "/tmp/sn_vocab_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/sensorium.json", dir);
    unlink(path);
    rmdir(dir);
    sn_plugins_close(ps);
}

TestSuite(vocab, .init = setup, .fini = teardown);

static void write_manifest(const char *json)
{
    char path[128];
    snprintf(path, sizeof path, "%s/sensorium.json", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(json, f);
    fclose(f);
}

/* A manifest with the given vocab.size, text segment start/size and action segment parts. */
static const char *good =
    "{\n"
    "  \"sensorium\": 1,\n"
    "  \"name\": \"test\",\n"
    "  \"vocab\": {\n"
    "    \"size\": 270, \"bos\": 0, \"eos\": 1, \"pad\": 2,\n"
    "    \"segments\": [\n"
    "      {\"modality\": \"text\", \"plugin\": \"text.bytes\", \"start\": 8, \"size\": 256,\n"
    "       \"begin\": 3, \"end\": 4},\n"
    "      {\"modality\": \"act\", \"plugin\": \"action.discrete\", \"start\": 264, \"size\": 3,\n"
    "       \"begin\": 5, \"end\": 6, \"config\": {\"actions\": [\"left\", \"right\", \"stop\"]}}\n"
    "    ]\n"
    "  }\n"
    "}\n";

/* Opens the manifest expecting failure with status st and a message containing each of the
 * NULL-terminated needles. */
static void expect_fail(const char *json, sn_status st, ...)
{
    write_manifest(json);
    sn_vocab *v = (sn_vocab *)1;
    sn_status got = sn_vocab_open(dir, ps, &v);
    const char *m = sn_errmsg();
    cr_assert_eq(got, st, "status %s (%s), message: %s", sn_status_str(got), sn_status_str(st), m);
    cr_expect_null(v);
    cr_expect_not_null(strstr(m, "sensorium.json"), "message does not name the file: %s", m);
    va_list ap;
    va_start(ap, st);
    for (const char *needle; (needle = va_arg(ap, const char *));)
        cr_expect_not_null(strstr(m, needle), "message lacks '%s': %s", needle, m);
    va_end(ap);
}

/* good with one substring replaced. */
static char *edit(const char *from, const char *to)
{
    static char buf[4096];
    const char *at = strstr(good, from);
    cr_assert_not_null(at, "'%s' not in the manifest", from);
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - good), good, to, at + strlen(from));
    return buf;
}

Test(vocab, good_layout_maps_both_ways)
{
    write_manifest(good);
    sn_vocab *v;
    cr_assert_eq(sn_vocab_open(dir, ps, &v), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(sn_vocab_size(v), 270);
    cr_expect_eq(sn_vocab_segment_count(v), 2);
    cr_expect_eq(sn_vocab_special(v, SN_TOKEN_BOS), 0);
    cr_expect_eq(sn_vocab_special(v, SN_TOKEN_EOS), 1);
    cr_expect_eq(sn_vocab_special(v, SN_TOKEN_PAD), 2);
    cr_expect_eq(sn_vocab_find(v, "act"), 1);
    cr_expect_eq(sn_vocab_find(v, "nope"), -1);

    sn_vocab_segment s;
    cr_assert_eq(sn_vocab_segment_get(v, 1, &s), SN_OK);
    cr_expect_str_eq(s.plugin, "action.discrete");
    cr_expect_str_eq(s.config_json, "{\"actions\":[\"left\",\"right\",\"stop\"]}");
    cr_expect_eq(s.begin, 5);
    cr_expect_eq(s.end, 6);

    cr_expect_eq(sn_vocab_lookup(v, 0).role, SN_TOKEN_BOS);
    cr_expect_eq(sn_vocab_lookup(v, 2).role, SN_TOKEN_PAD);
    sn_token_info b = sn_vocab_lookup(v, 5);
    cr_expect(b.role == SN_TOKEN_BEGIN && b.segment == 1 && b.local == -1);
    cr_expect_eq(sn_vocab_lookup(v, 4).role, SN_TOKEN_END);
    cr_expect_eq(sn_vocab_lookup(v, 7).role, SN_TOKEN_UNUSED);
    cr_expect_eq(sn_vocab_lookup(v, 270).role, SN_TOKEN_UNUSED);
    cr_expect_eq(sn_vocab_lookup(v, -1).role, SN_TOKEN_UNUSED);
    /* every plugin id, both directions */
    for (int32_t g = 0; g < 270; g++) {
        sn_token_info t = sn_vocab_lookup(v, g);
        if (t.role != SN_TOKEN_PLUGIN)
            continue;
        cr_assert_eq(sn_vocab_global(v, (size_t)t.segment, t.local), g);
    }
    cr_expect_eq(sn_vocab_lookup(v, 8).local, 0);
    cr_expect_eq(sn_vocab_lookup(v, 263).local, 255);
    cr_expect_eq(sn_vocab_lookup(v, 266).segment, 1);
    cr_expect_eq(sn_vocab_lookup(v, 266).local, 2);
    cr_expect_eq(sn_vocab_global(v, 1, 3), -1);
    cr_expect_eq(sn_vocab_global(v, 2, 0), -1);
    sn_vocab_close(v);
}

Test(vocab, malformed_json_gives_line_and_column)
{
    expect_fail("{\n  \"sensorium\": 1,\n  \"vocab\": {\n    \"size\": 10,,\n  }\n}\n", SN_ERR_FORMAT,
                "sensorium.json:4:", "malformed JSON", NULL);
}

Test(vocab, overlapping_ranges)
{
    expect_fail(edit("\"start\": 264", "\"start\": 262"), SN_ERR_VOCAB,
                "vocab.segments[1] (act) ids 262..264 overlap vocab.segments[0] (text) ids 8..263", NULL);
}

Test(vocab, range_past_vocab_size)
{
    expect_fail(edit("\"size\": 270", "\"size\": 266"), SN_ERR_VOCAB,
                "vocab.segments[1] (act): ids 264..266 run past vocab.size 266", NULL);
}

Test(vocab, marker_past_vocab_size)
{
    expect_fail(edit("\"end\": 6", "\"end\": 600"), SN_ERR_VOCAB,
                "vocab.segments[1] (act): end marker 600 is past vocab.size 270", NULL);
}

Test(vocab, special_past_vocab_size)
{
    expect_fail(edit("\"pad\": 2", "\"pad\": 270"), SN_ERR_VOCAB, "vocab.pad = 270 is past vocab.size 270", NULL);
}

Test(vocab, marker_inside_a_range)
{
    expect_fail(edit("\"begin\": 5", "\"begin\": 100"), SN_ERR_VOCAB, "id 100 is claimed twice",
                "vocab.segments[0] (text), ids 8..263", "begin marker of vocab.segments[1] (act)", NULL);
}

Test(vocab, marker_equal_to_a_special)
{
    expect_fail(edit("\"begin\": 3", "\"begin\": 1"), SN_ERR_VOCAB, "id 1 is claimed twice", "vocab.eos", NULL);
}

Test(vocab, plugin_vocab_size_differs_from_range)
{
    expect_fail(edit("\"size\": 3", "\"size\": 4"), SN_ERR_VOCAB,
                "vocab.segments[1] (act): plugin 'action.discrete' has vocab_size 3", "range holds 4 ids", NULL);
}

Test(vocab, unknown_plugin)
{
    expect_fail(edit("\"plugin\": \"text.bytes\"", "\"plugin\": \"text.nope\""), SN_ERR_VOCAB,
                "vocab.segments[0] (text): unknown plugin 'text.nope'", NULL);
}

Test(vocab, plugin_create_fails_with_its_message)
{
    expect_fail(edit("\"config\": {\"actions\": [\"left\", \"right\", \"stop\"]}", "\"config\": {}"),
                SN_ERR_PLUGIN, "vocab.segments[1] (act)", "action.discrete", "actions", NULL);
}

Test(vocab, duplicate_modality)
{
    expect_fail(edit("\"modality\": \"act\"", "\"modality\": \"text\""), SN_ERR_VOCAB,
                "vocab.segments[0] and vocab.segments[1] both name modality 'text'", NULL);
}

Test(vocab, misspelt_and_missing_keys)
{
    expect_fail(edit("\"segments\"", "\"segmets\""), SN_ERR_VOCAB, "vocab: unknown key 'segmets'", NULL);
    expect_fail(edit("\"begin\": 3, ", ""), SN_ERR_VOCAB, "vocab.segments[0] (text): give both markers 'begin' and 'end', or neither", NULL);
    expect_fail(edit("\"start\": 8", "\"start\": \"8\""), SN_ERR_VOCAB, "vocab.segments[0].start must be an integer", NULL);
    expect_fail(edit("\"sensorium\": 1", "\"sensorium\": 2"), SN_ERR_VOCAB, "manifest format 2", NULL);
}

/* A language model's layout: one open segment (no markers) over its vocabulary, with its
 * control tokens as specials inside the range. */
Test(vocab, an_open_segment_holds_specials_inside_its_range)
{
    /* The open segment 3..258 holds stop id 258; eos 1 and stop 2 are outside any range. */
    char json[1024];
    snprintf(json, sizeof json, "%s",
             "{\"sensorium\": 1, \"vocab\": {\"size\": 259, \"eos\": 1, \"stop\": [2, 258],\n"
             " \"segments\": [{\"modality\": \"text\", \"plugin\": \"text.bytes\", \"start\": 3, \"size\": 256}]}}\n");
    write_manifest(json);
    sn_vocab *v;
    cr_assert_eq(sn_vocab_open(dir, ps, &v), SN_OK, "%s", sn_errmsg());
    sn_vocab_segment seg;
    cr_assert_eq(sn_vocab_segment_get(v, 0, &seg), SN_OK);
    cr_expect_eq(seg.begin, -1);
    cr_expect_eq(seg.end, -1);
    cr_expect_eq(sn_vocab_lookup(v, 258).role, SN_TOKEN_EOS, "a stop id inside the open range is a stop");
    cr_expect_eq(sn_vocab_lookup(v, 2).role, SN_TOKEN_EOS);
    cr_expect_eq(sn_vocab_lookup(v, 257).role, SN_TOKEN_PLUGIN);
    cr_expect_eq(sn_vocab_lookup(v, 257).local, 254);
    cr_expect_eq(sn_vocab_special(v, SN_TOKEN_BOS), -1, "bos is optional");
    sn_vocab_close(v);
    /* Specials inside a closed segment's range are still a conflict, and one open segment
     * is the most a layout has. */
    expect_fail(edit("\"bos\": 0", "\"bos\": 100"), SN_ERR_VOCAB, "id 100 is claimed twice", NULL);
    expect_fail("{\"sensorium\": 1, \"vocab\": {\"size\": 300, \"eos\": 1,\n"
                " \"segments\": [{\"modality\": \"text\", \"plugin\": \"text.bytes\", \"start\": 3, \"size\": 256},\n"
                "  {\"modality\": \"act\", \"plugin\": \"action.discrete\", \"start\": 260, \"size\": 1,\n"
                "   \"config\": {\"actions\": [\"go\"]}}]}}\n",
                SN_ERR_VOCAB, "vocab.segments[1] (act): a second segment without markers", NULL);
    expect_fail("{\"sensorium\": 1, \"vocab\": {\"size\": 259, \"eos\": 1, \"stop\": [259],\n"
                " \"segments\": [{\"modality\": \"text\", \"plugin\": \"text.bytes\", \"start\": 3, \"size\": 256}]}}\n",
                SN_ERR_VOCAB, "vocab.stop[0] must be an id in 0..258", NULL);
}

Test(vocab, missing_manifest)
{
    sn_vocab *v;
    cr_expect_eq(sn_vocab_open(dir, ps, &v), SN_ERR_NOT_FOUND);
    cr_expect_not_null(strstr(sn_errmsg(), "no manifest here"), "%s", sn_errmsg());
}
