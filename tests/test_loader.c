/*
 * test_loader.c - the plugin loader against deliberately broken plugins (tests/plugins/):
 * each defect gets a one-line error naming the file and the reason, and never keeps the
 * good plugins from loading or takes the process down.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "sensorium/sensorium.h"

static sn_plugins *ps;

static void load_test_plugins(void)
{
    cr_assert_eq(sn_plugins_open(SN_TEST_PLUGIN_DIR, SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT, &ps),
                 SN_OK, "%s", sn_errmsg());
}

static void close_plugins(void) { sn_plugins_close(ps); }

TestSuite(loader, .init = load_test_plugins, .fini = close_plugins);

/* The error line about file NAME.so, or NULL. */
static const char *error_for(const char *file)
{
    char needle[256];
    snprintf(needle, sizeof needle, "/%s.so: ", file);
    const char *found = NULL;
    for (size_t i = 0; i < sn_plugins_error_count(ps); i++) {
        const char *e = sn_plugins_error(ps, i);
        if (strstr(e, needle)) {
            cr_assert_null(found, "two errors for %s.so: '%s' and '%s'", file, found, e);
            found = e;
        }
    }
    return found;
}

static void expect_error(const char *file, const char *reason)
{
    const char *e = error_for(file);
    cr_assert_not_null(e, "no error recorded for %s.so", file);
    cr_expect_not_null(strstr(e, reason), "error for %s.so does not say '%s': %s", file, reason, e);
    cr_expect_null(strchr(e, '\n'), "error is not one line: %s", e);
    cr_expect_eq(strncmp(e, SN_TEST_PLUGIN_DIR, strlen(SN_TEST_PLUGIN_DIR)), 0,
                 "error does not start with the file's path: %s", e);
}

Test(loader, good_plugins_load_despite_broken_neighbours)
{
    cr_assert_geq(sn_plugins_find(ps, "test.good"), 0);
    cr_assert_geq(sn_plugins_find(ps, "test.create_fail"), 0, "create is only called later");
    cr_assert_geq(sn_plugins_find(ps, "test.multi_a"), 0);
    cr_assert_geq(sn_plugins_find(ps, "test.multi_b"), 0);
    cr_assert_geq(sn_plugins_find(ps, "test.newer_minor"), 0);
    cr_assert_geq(sn_plugins_find(ps, "test.bad_ids"), 0);
    cr_assert_geq(sn_plugins_find(ps, "test.v1_0"), 0);
    /* good, create_fail, multi_a, multi_b, newer_minor, bad_ids, v1_0 */
    cr_assert_eq(sn_plugins_count(ps), 7, "loaded %zu plugins", sn_plugins_count(ps));
    /* not_elf, no_entry, abi_major, small_desc, null_fn, zz_duplicate, multi (one bad desc) */
    cr_assert_eq(sn_plugins_error_count(ps), 7, "recorded %zu errors", sn_plugins_error_count(ps));

    sn_plugin_info info;
    cr_assert_eq(sn_plugins_get(ps, (size_t)sn_plugins_find(ps, "test.good"), &info), SN_OK);
    cr_expect_str_eq(info.version, "0.0.1");
    cr_expect_eq(info.kind, SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER);
    cr_expect_not_null(strstr(info.file, "/good.so"));
    cr_expect_eq(sn_plugins_get(ps, 99, &info), SN_ERR_INVALID_ARG);
}

Test(loader, not_a_shared_object) { expect_error("not_elf", "not a shared object"); }
Test(loader, missing_entry_symbol) { expect_error("no_entry", "no entry symbol 'sn_plugin_entry'"); }
Test(loader, abi_major_mismatch) { expect_error("abi_major", "built for plugin ABI 2.0 but this engine speaks 1.x"); }
Test(loader, descriptor_smaller_than_v1) { expect_error("small_desc", "smaller than ABI v1"); }
Test(loader, required_function_null) { expect_error("null_fn", "required function encode (required for a tokenizer) is NULL"); }

Test(loader, duplicate_name_keeps_the_first)
{
    expect_error("zz_duplicate", "duplicate plugin name 'test.good': already provided by");
    sn_plugin_info info;
    sn_plugins_get(ps, (size_t)sn_plugins_find(ps, "test.good"), &info);
    cr_expect_not_null(strstr(info.file, "/good.so"), "the first file found must win: %s", info.file);
}

Test(loader, every_plugin_of_a_file_is_enumerated)
{
    /* descriptor #1 of multi.so is broken; #0 and #2 still load */
    expect_error("multi", "descriptor #1: plugin 'test.multi_bad': required function destroy is NULL");
}

Test(loader, newer_minor_version_is_accepted)
{
    sn_plugin_info info;
    sn_plugins_get(ps, (size_t)sn_plugins_find(ps, "test.newer_minor"), &info);
    cr_expect_eq(info.abi_minor, 99);
    sn_codec *c;
    cr_assert_eq(sn_codec_open(ps, "test.newer_minor", NULL, NULL, &c), SN_OK, "%s", sn_errmsg());
    sn_codec_close(c);
}

Test(loader, older_minor_version_is_accepted_and_new_fields_read_as_null)
{
    sn_plugin_info info;
    sn_plugins_get(ps, (size_t)sn_plugins_find(ps, "test.v1_0"), &info);
    cr_expect_eq(info.abi_minor, 0);
    sn_codec *c;
    cr_assert_eq(sn_codec_open(ps, "test.v1_0", NULL, NULL, &c), SN_OK, "%s", sn_errmsg());
    sn_codec_close(c);
    /* fit arrived in 1.1: the host must not read it past a 1.0 descriptor's end, where this
     * test plugin keeps a fit function that would succeed */
    sn_media m = {.kind = SN_MEDIA_TEXT, .text = {"a", 1}};
    cr_expect_eq(sn_fit(ps, "test.v1_0", NULL, &m, 1, "/tmp/sn_never_written.npy"), SN_ERR_UNSUPPORTED);
    cr_expect_not_null(strstr(sn_errmsg(), "learns nothing from data"), "%s", sn_errmsg());
}

Test(loader, create_failure_carries_the_plugins_message)
{
    sn_codec *c = (sn_codec *)1;
    cr_assert_eq(sn_codec_open(ps, "test.create_fail", NULL, NULL, &c), SN_ERR_PLUGIN);
    cr_expect_null(c);
    const char *m = sn_errmsg();
    cr_expect_not_null(strstr(m, "test.create_fail"), "%s", m);
    cr_expect_not_null(strstr(m, "create_fail.so"), "%s", m);
    cr_expect_not_null(strstr(m, "create failed: the test plugin always fails create"), "%s", m);
    /* and the engine goes on: a good plugin still works afterwards */
    cr_assert_eq(sn_codec_open(ps, "test.good", NULL, NULL, &c), SN_OK, "%s", sn_errmsg());
    sn_codec_close(c);
}

Test(loader, good_plugin_round_trip)
{
    sn_codec *c;
    cr_assert_eq(sn_codec_open(ps, "test.good", "{}", NULL, &c), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(sn_codec_vocab_size(c), 4);
    sn_media m = {.kind = SN_MEDIA_TEXT, .text = {"abcd", 4}};
    sn_tokens t = {0};
    cr_assert_eq(sn_codec_encode(c, &m, &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(t.n, 4);
    for (size_t i = 0; i < 4; i++)
        cr_expect_eq(t.ids[i], ("abcd"[i]) % 4);
    sn_tokens_clear(&t);
    sn_codec_close(c);
}

Test(loader, ids_past_the_vocabulary_are_refused)
{
    sn_codec *c;
    cr_assert_eq(sn_codec_open(ps, "test.bad_ids", NULL, NULL, &c), SN_OK, "%s", sn_errmsg());
    sn_media m = {.kind = SN_MEDIA_TEXT, .text = {"x", 1}};
    sn_tokens t = {0};
    cr_expect_eq(sn_codec_encode(c, &m, &t), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "outside its vocabulary 0..3"), "%s", sn_errmsg());
    cr_expect_eq(t.n, 0);
    sn_tokens_clear(&t);
    sn_codec_close(c);
}

Test(loader, wrong_media_kind_and_bad_config_are_errors)
{
    sn_codec *c;
    cr_assert_eq(sn_codec_open(ps, "test.good", NULL, NULL, &c), SN_OK);
    float pcm[4] = {0};
    sn_media m = {.kind = SN_MEDIA_AUDIO, .audio = {pcm, 4, 16000}};
    sn_tokens t = {0};
    cr_expect_eq(sn_codec_encode(c, &m, &t), SN_ERR_UNSUPPORTED);
    cr_expect_not_null(strstr(sn_errmsg(), "does not tokenize audio"), "%s", sn_errmsg());
    int32_t bad = 7;
    cr_expect_eq(sn_codec_decode(c, &bad, 1, 0, NULL, NULL), SN_ERR_INVALID_ARG);
    sn_codec_close(c);
    cr_expect_eq(sn_codec_open(ps, "test.good", "{not json", NULL, &c), SN_ERR_CONFIG);
    cr_expect_not_null(strstr(sn_errmsg(), "line 1 column"), "%s", sn_errmsg());
    cr_expect_eq(sn_codec_open(ps, "test.good", "[1, 2]", NULL, &c), SN_ERR_CONFIG);
    cr_expect_eq(sn_codec_open(ps, "no.such.plugin", NULL, NULL, &c), SN_ERR_NOT_FOUND);
    cr_expect_not_null(strstr(sn_errmsg(), "unknown plugin 'no.such.plugin'"), "%s", sn_errmsg());
}

Test(loader, search_path_sources)
{
    /* A missing folder named by the user is reported, not ignored. */
    sn_plugins *p2;
    cr_assert_eq(sn_plugins_open("/nonexistent/plugins:" SN_TEST_PLUGIN_DIR "/good.so",
                                 SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT, &p2), SN_OK);
    cr_expect_eq(sn_plugins_count(p2), 1);
    cr_expect_eq(sn_plugins_error_count(p2), 1);
    cr_expect_not_null(strstr(sn_plugins_error(p2, 0), "/nonexistent/plugins: No such file or directory (from --plugin-path)"),
                       "%s", sn_plugins_error(p2, 0));
    sn_plugins_close(p2);

    /* SENSORIUM_PLUGIN_PATH, colon-separated; the same file twice loads once. */
    setenv("SENSORIUM_PLUGIN_PATH", SN_TEST_PLUGIN_DIR "/good.so::" SN_TEST_PLUGIN_DIR "/good.so", 1);
    cr_assert_eq(sn_plugins_open(NULL, SN_PLUGINS_NO_DEFAULT, &p2), SN_OK);
    cr_expect_eq(sn_plugins_count(p2), 1);
    cr_expect_eq(sn_plugins_error_count(p2), 0, "%s", sn_plugins_error(p2, 0));
    sn_plugins_close(p2);
    unsetenv("SENSORIUM_PLUGIN_PATH");

    /* The build's plugin folder is the default. */
    cr_assert_eq(sn_plugins_open(NULL, SN_PLUGINS_NO_ENV, &p2), SN_OK);
    cr_expect_geq(sn_plugins_find(p2, "text.bytes"), 0);
    cr_expect_geq(sn_plugins_find(p2, "action.discrete"), 0);
    sn_plugins_close(p2);
}
