/*
 * test_dataset.c - `sensorium dataset`: the sequences it writes are exactly the tokens a
 * session holds after being fed the same stimuli and answers (the same tokenization at
 * training and at inference), the loss mask covers the answers and nothing else, the JSON
 * baseline writes the targets as one function call in text, and bad episodes are errors
 * naming the manifest line.
 *
 * The model: make_model.py's Sensorium layout (text.bytes at 8..263) with an action.discrete
 * segment added at 264..266 (markers 5 and 6).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "sensorium/sensorium.h"
#include "test_util.h"

static sn_plugins *ps;
static char model[128], manifest[128], out[128];

static void setup(void)
{
    sn_test_mkdir("sn_dataset");
    cr_assert_eq(sn_plugins_open(SN_BUILD_PLUGIN_DIR, 0, &ps), SN_OK, "%s", sn_errmsg());
    snprintf(model, sizeof model, "%s/model", sn_test_dir);
    snprintf(manifest, sizeof manifest, "%s/episodes.jsonl", sn_test_dir);
    snprintf(out, sizeof out, "%s/data", sn_test_dir);
    sn_test_sh("python3 %s/tests/reference/make_model.py %s --layout sensorium --vocab 300 --seed 3", SN_SOURCE_DIR,
               model);
    sn_test_sh("python3 -c \"import json; p='%s/sensorium.json'; m=json.load(open(p)); "
               "m['vocab']['segments'].append({'modality': 'action', 'plugin': 'action.discrete', 'start': 264, "
               "'size': 3, 'begin': 5, 'end': 6, 'config': {'actions': ['left', 'right', 'stop']}}); "
               "json.dump(m, open(p, 'w'))\"",
               model);
}

static void teardown(void)
{
    sn_plugins_close(ps);
    sn_test_rmdir();
}

TestSuite(dataset, .init = setup, .fini = teardown, .timeout = 120);

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

static int32_t *load(const char *suffix, size_t *n)
{
    char path[160];
    snprintf(path, sizeof path, "%s.%s.npy", out, suffix);
    int32_t *ids;
    cr_assert_eq(sn_tokens_read_npy(path, &ids, n), SN_OK, "%s", sn_errmsg());
    return ids;
}

static sn_status build(const char *split, const char *json_modality, sn_dataset_stats *stats)
{
    sn_dataset_opts o = {.model_dir = model, .plugins = ps, .manifest = manifest, .split = split, .out = out,
                         .json_modality = json_modality};
    return sn_dataset_build(&o, stats);
}

Test(dataset, sequences_equal_what_a_session_is_fed)
{
    char text_file[160];
    snprintf(text_file, sizeof text_file, "%s/prompt.txt", sn_test_dir);
    write_file(text_file, "turn l\xc3\xa9" "ft");
    write_file(manifest, "{\"id\": \"a\", \"split\": \"train\", \"feeds\": [{\"modality\": \"text\", \"file\": \"prompt.txt\"}], "
                         "\"targets\": [{\"modality\": \"action\", \"text\": \"left\"}]}\n"
                         "\n"
                         "{\"id\": \"b\", \"split\": \"test\", \"feeds\": [{\"modality\": \"text\", \"text\": \"halt\"}], "
                         "\"targets\": [{\"modality\": \"action\", \"text\": \"stop right\"}]}\n");
    sn_dataset_stats stats;
    cr_assert_eq(build(NULL, NULL, &stats), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(stats.episodes, 2);
    size_t n, nm, no;
    int32_t *tok = load("tokens", &n), *mask = load("mask", &nm), *off = load("offsets", &no);
    cr_assert_eq(nm, n);
    cr_assert_eq(no, 3);
    cr_expect_eq(off[0], 0);
    cr_expect_eq((size_t)off[2], n);

    /* The same stimuli and answers through a session of the engine. */
    sn_engine_opts eo = sn_engine_opts_default();
    eo.model_dir = model;
    eo.plugin_path = SN_BUILD_PLUGIN_DIR;
    eo.max_sessions = 1;
    sn_engine *e;
    cr_assert_eq(sn_engine_open(&eo, &e), SN_OK, "%s", sn_errmsg());
    const char *feeds[2] = {"turn l\xc3\xa9" "ft", "halt"}, *answers[2] = {"left", "stop right"};
    for (int k = 0; k < 2; k++) {
        sn_session_opts so = sn_session_opts_default();
        sn_session *s;
        cr_assert_eq(sn_session_open(e, &so, &s), SN_OK, "%s", sn_errmsg());
        sn_media m = {.kind = SN_MEDIA_TEXT, .text = {feeds[k], strlen(feeds[k])}};
        cr_assert_eq(sn_session_feed(s, "text", &m), SN_OK, "%s", sn_errmsg());
        size_t n_feed;
        sn_session_tokens(s, &n_feed);
        sn_media a = {.kind = SN_MEDIA_TEXT, .text = {answers[k], strlen(answers[k])}};
        cr_assert_eq(sn_session_feed(s, "action", &a), SN_OK, "%s", sn_errmsg());
        size_t ns;
        const int32_t *st = sn_session_tokens(s, &ns);
        const int32_t *seq = tok + off[k];
        const size_t len = (size_t)(off[k + 1] - off[k]);
        cr_assert_eq(len, ns + 1, "episode %d: %zu tokens, the session holds %zu (+ eos)", k, len, ns);
        cr_expect_arr_eq(seq, st, ns * sizeof *st, "episode %d: tokens differ from the session's", k);
        cr_expect_eq(seq[len - 1], 1, "episode %d ends with eos", k);
        for (size_t i = 0; i < len; i++)
            cr_expect_eq(mask[off[k] + (int32_t)i], i >= n_feed, "episode %d: mask[%zu]", k, i);
        sn_session_close(s);
    }
    sn_engine_close(e);
    free(tok);
    free(mask);
    free(off);

    /* one split only */
    cr_assert_eq(build("test", NULL, &stats), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(stats.episodes, 1);
}

Test(dataset, the_json_baseline_writes_one_function_call_in_text)
{
    write_file(manifest, "{\"feeds\": [{\"modality\": \"text\", \"text\": \"hi\"}], "
                         "\"targets\": [{\"modality\": \"action\", \"text\": \"stop\"}, "
                         "{\"modality\": \"joints\", \"values\": [[0.5, -1.25]]}]}\n");
    sn_dataset_stats stats;
    cr_assert_eq(build(NULL, "text", &stats), SN_OK, "%s", sn_errmsg());
    size_t n, nm;
    int32_t *tok = load("tokens", &n), *mask = load("mask", &nm);
    /* bos <text> "hi" </text> <text> CALL </text> eos, text.bytes ids are byte + 8 */
    const char *call = "{\"name\":\"stop\",\"arguments\":{\"joints\":[0.5,-1.25]}}";
    const size_t lc = strlen(call);
    cr_assert_eq(n, 1 + 4 + 2 + lc + 1, "%zu tokens", n);
    for (size_t i = 0; i < lc; i++)
        cr_expect_eq(tok[6 + i], (int32_t)(unsigned char)call[i] + 8, "byte %zu of the call", i);
    for (size_t i = 0; i < n; i++)
        cr_expect_eq(mask[i], i >= 5, "mask[%zu]", i);
    free(tok);
    free(mask);
}

static void expect_fail(const char *jsonl, const char *frag1, const char *frag2)
{
    write_file(manifest, jsonl);
    sn_dataset_stats stats;
    cr_expect_neq(build(NULL, NULL, &stats), SN_OK);
    const char *m = sn_errmsg();
    cr_expect(strstr(m, "episodes.jsonl") != NULL, "no file in: %s", m);
    cr_expect(strstr(m, frag1) != NULL, "'%s' not in: %s", frag1, m);
    cr_expect(!frag2 || strstr(m, frag2) != NULL, "'%s' not in: %s", frag2, m);
}

Test(dataset, bad_episodes_name_their_line)
{
    const char *ok = "{\"feeds\": [], \"targets\": [{\"modality\": \"action\", \"text\": \"stop\"}]}\n";
    char two[512];
    snprintf(two, sizeof two, "%s{\"feeds\": [{\"modality\": \"smell\", \"text\": \"x\"}], \"targets\": [{\"modality\": \"action\", \"text\": \"stop\"}]}\n", ok);
    expect_fail(two, "episodes.jsonl:2: feeds[0] (smell)", "no such modality");
    expect_fail("{\"feeds\": [], \"targets\": [{\"modality\": \"action\", \"text\": \"jump\"}]}\n",
                "episodes.jsonl:1: targets[0] (action)", "unknown action 'jump'");
    expect_fail("{\"feeds\": [], \"targets\": []}\n", "episodes.jsonl:1", "non-empty \"targets\"");
    expect_fail("{\"feeds\": [{\"modality\": \"text\", \"file\": \"missing.txt\"}], \"targets\": []}\n",
                "episodes.jsonl:1", "targets");
    expect_fail("{\"feeds\": [{\"modality\": \"text\", \"file\": \"missing.txt\"}], \"targets\": [{\"modality\": \"action\", \"text\": \"stop\"}]}\n",
                "episodes.jsonl:1: feeds[0] (text)", "missing.txt");
    expect_fail("{\"feeds\": [{\"modality\": \"text\", \"text\": \"a\", \"values\": [1]}], \"targets\": [{\"modality\": \"action\", \"text\": \"stop\"}]}\n",
                "feeds[0] (text)", "exactly one of");
    expect_fail("{\"feeds\": [], \"targets\": [{\"modality\": \"action\", \"values\": [[1, 2], [3]]}]}\n",
                "targets[0] (action)", "same length");
    expect_fail("not json\n", "episodes.jsonl:1:", NULL);
    expect_fail("", "episodes.jsonl", "no episodes");
}
