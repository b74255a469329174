/*
 * test_readme_example.c - the plugin example in README.md, extracted and built by
 * tests/CMakeLists.txt, loads, tokenizes and decodes as the README says it does.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "sensorium/sensorium.h"

static sn_plugins *ps;

static void setup(void)
{
    cr_assert_eq(sn_plugins_open(SN_README_PLUGIN_DIR, SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT, &ps), SN_OK);
    cr_assert_eq(sn_plugins_error_count(ps), 0, "%s", sn_plugins_error(ps, 0));
}

static void teardown(void) { sn_plugins_close(ps); }

TestSuite(readme, .init = setup, .fini = teardown);

typedef struct names {
    char buf[256];
} names;

static int collect(void *ctx, const sn_action *a)
{
    names *n = ctx;
    cr_assert_eq(a->kind, SN_ACTION_NAMED);
    strcat(n->buf, a->named.name);
    strcat(n->buf, " ");
    return 0;
}

Test(readme, example_plugin_tokenizes_and_decodes)
{
    sn_codec *c;
    cr_assert_eq(sn_codec_open(ps, "example.threshold", "{\"threshold\": 0.5}", NULL, &c), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(sn_codec_vocab_size(c), 2);
    const float x[] = {0.1f, 0.7f, 0.4f, 0.9f, 0.5f};
    sn_media m = {.kind = SN_MEDIA_SERIES, .series = {x, 5, 1, 100.0}};
    sn_tokens t = {0};
    cr_assert_eq(sn_codec_encode(c, &m, &t), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_codec_encode_flush(c, &t), SN_OK);
    const int32_t want[] = {0, 1, 0, 1, 1};
    cr_assert_eq(t.n, 5);
    cr_assert_arr_eq(t.ids, want, sizeof want);
    names n = {{0}};
    cr_assert_eq(sn_codec_decode(c, t.ids, t.n, 0.0, collect, &n), SN_OK, "%s", sn_errmsg());
    cr_expect_str_eq(n.buf, "low high low high high ");
    sn_tokens_clear(&t);
    sn_codec_close(c);
}

Test(readme, example_plugin_default_and_bad_config)
{
    sn_codec *c;
    cr_assert_eq(sn_codec_open(ps, "example.threshold", NULL, NULL, &c), SN_OK, "%s", sn_errmsg());
    sn_codec_close(c);
    cr_assert_eq(sn_codec_open(ps, "example.threshold", "{\"threshold\": \"high\"}", NULL, &c), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "config key 'threshold' must be a number, not a string"), "%s", sn_errmsg());
    /* a 2-D series is refused with the plugin's message */
    cr_assert_eq(sn_codec_open(ps, "example.threshold", NULL, NULL, &c), SN_OK);
    const float x[4] = {0};
    sn_media m = {.kind = SN_MEDIA_SERIES, .series = {x, 2, 2, 0}};
    sn_tokens t = {0};
    cr_expect_eq(sn_codec_encode(c, &m, &t), SN_ERR_PLUGIN);
    cr_expect_not_null(strstr(sn_errmsg(), "expected a 1-D sensor series"), "%s", sn_errmsg());
    sn_tokens_clear(&t);
    sn_codec_close(c);
}
