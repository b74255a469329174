/*
 * test_gguf.c - GGUF files: dequantisation bit-identical to the gguf Python package
 * (llama.cpp's reader) for every type the engine computes on; every way a file can be broken
 * is a one-line error naming the file and what is wrong; and a real model, SmolLM2-135M-
 * Instruct (Q4_1 + Q8_0, fetched by scripts/test.sh), decodes greedily to the same ids as
 * the independent numpy forward pass of tests/reference/llama_ref.py.
 *
 * Synthetic files come from tests/reference/make_gguf.py; broken ones are that file with
 * bytes patched at places found by looking for the names they belong to.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf.h"
#include "model.h"
#include "sensorium/sensorium.h"
#include "test_util.h"

#define SMOLLM2 SN_SOURCE_DIR "/.testdata/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

static void setup(void) { sn_test_mkdir("sn_gguf"); }

TestSuite(gguf, .init = setup, .fini = sn_test_rmdir, .timeout = 300);

/* make_gguf.py ARGS into dir/NAME.gguf; the path (static buffer). */
static const char *make_gguf(const char *name, const char *args)
{
    static char path[160];
    snprintf(path, sizeof path, "%s/%s.gguf", sn_test_dir, name);
    sn_test_sh("python3 %s/tests/reference/make_gguf.py %s %s", SN_SOURCE_DIR, path, args);
    return path;
}

/* ---------------------------------------------------------------------------------------- */
/* Dequantisation                                                                           */
/* ---------------------------------------------------------------------------------------- */

/* Dequantises the tensors gguf_dequant.py wrote (NAMES: a space-separated list, or "" for
 * every tensor) and compares each bit for bit; returns how many ggml types were covered. */
static int expect_identical_dequant(const char *path, const char *names, uint32_t *types_seen)
{
    sn_test_sh("python3 %s/tests/reference/gguf_dequant.py %s %s %s", SN_SOURCE_DIR, path, sn_test_dir, names);
    char err[512];
    sn_gguf *g;
    cr_assert_eq(sn_gguf_open(path, &g, err, sizeof err), 0, "%s", err);
    char list[256];
    snprintf(list, sizeof list, "%s/list.txt", sn_test_dir);
    FILE *f = fopen(list, "r");
    cr_assert_not_null(f);
    char name[128], type[16];
    int checked = 0;
    while (fscanf(f, "%127s %15s", name, type) == 2) {
        const sn_gguf_tensor *t = sn_gguf_tensor_find(g, name);
        cr_assert_not_null(t, "%s: no tensor %s", path, name);
        char npy[320];
        snprintf(npy, sizeof npy, "%s/%s.npy", sn_test_dir, name);
        size_t n;
        float *want = sn_test_read_npy(npy, &n);
        size_t elems = (size_t)(t->nbytes / sn_ggml_block_bytes(t->type) * sn_ggml_block_elems(t->type));
        cr_assert_eq(n, elems, "%s: %zu reference values for %zu elements", name, n, elems);
        float *got = malloc(n * sizeof *got);
        cr_assert_eq(sn_ggml_dequantize(t->type, t->data, got, n), 0, "%s (%s) not dequantised", name, type);
        size_t differ = 0, first = 0;
        for (size_t i = 0; i < n; i++)
            if (memcmp(&got[i], &want[i], sizeof *got) != 0 && !differ++)
                first = i;
        cr_expect_eq(differ, 0, "%s (%s): %zu of %zu values differ from the gguf package's, first [%zu] %.9g vs %.9g",
                     name, type, differ, n, first, got[first], want[first]);
        types_seen[t->type < 64 ? t->type : 63] = 1;
        checked++;
        free(got);
        free(want);
    }
    fclose(f);
    sn_gguf_close(g);
    return checked;
}

Test(gguf, dequantisation_is_bit_identical_to_the_gguf_package)
{
    uint32_t seen[64] = {0};
    int n = expect_identical_dequant(make_gguf("mixed", "--seed 1"), "", seen);
    cr_expect_gt(n, 20);
    const uint32_t want[] = {SN_GGML_F32, SN_GGML_F16, SN_GGML_BF16, SN_GGML_Q8_0, SN_GGML_Q4_0, SN_GGML_Q4_1};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        char b[16];
        cr_expect(seen[want[i]], "no %s tensor was compared", sn_ggml_type_name(want[i], b, sizeof b));
    }
    /* The real model's: a Q8_0 embedding, Q4_1 projections, F32 norms. */
    n = expect_identical_dequant(SMOLLM2, "token_embd.weight blk.0.attn_q.weight blk.29.ffn_down.weight output_norm.weight", seen);
    cr_expect_eq(n, 4);
}

/* ---------------------------------------------------------------------------------------- */
/* Broken files                                                                             */
/* ---------------------------------------------------------------------------------------- */

typedef struct blob {
    unsigned char *b;
    size_t n;
} blob;

static blob slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    blob b = {.n = (size_t)ftell(f)};
    rewind(f);
    b.b = malloc(b.n);
    cr_assert_eq(fread(b.b, 1, b.n, f), b.n);
    fclose(f);
    return b;
}

/* Where the string s (with its u64 length before it) is in the file: the offset just past
 * it. */
static size_t after_string(const blob *b, const char *s)
{
    size_t len = strlen(s);
    for (size_t i = 8; i + len <= b->n; i++)
        if (memcmp(b->b + i, s, len) == 0) {
            uint64_t l;
            memcpy(&l, b->b + i - 8, 8);
            if (l == len)
                return i + len;
        }
    cr_assert_fail("'%s' is not in the file", s);
    return 0;
}

static void put32(blob *b, size_t at, uint32_t v) { memcpy(b->b + at, &v, 4); }
static void put64(blob *b, size_t at, uint64_t v) { memcpy(b->b + at, &v, 8); }

/* Writes the first n bytes of b as a new file and expects sn_model_open to fail with
 * want, with a message that names the file and contains each of the fragments. */
static void expect_broken(const char *label, const blob *b, size_t n, sn_status want, const char *frag1,
                          const char *frag2)
{
    char path[160];
    snprintf(path, sizeof path, "%s/%s.gguf", sn_test_dir, label);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(b->b, 1, n, f), n);
    fclose(f);
    sn_model *m = NULL;
    sn_status st = sn_model_open(path, &m);
    const char *msg = sn_errmsg();
    fprintf(stderr, "%-18s -> %s\n", label, msg);
    cr_expect_eq(st, want, "%s: status %d, want %d (%s)", label, st, want, msg);
    cr_expect_null(m);
    cr_expect(strstr(msg, path) != NULL, "%s: the message does not name the file: %s", label, msg);
    cr_expect(strstr(msg, frag1) != NULL, "%s: '%s' not in: %s", label, frag1, msg);
    cr_expect(!frag2 || strstr(msg, frag2) != NULL, "%s: '%s' not in: %s", label, frag2, msg);
    cr_expect_null(strchr(msg, '\n'), "%s: the message is more than one line", label);
}

Test(gguf, broken_files_are_clear_errors)
{
    blob good = slurp(make_gguf("good", "--seed 2"));
    blob b = {malloc(good.n), good.n};
#define RESET() memcpy(b.b, good.b, good.n)

    RESET();
    memcpy(b.b, "GGML", 4);
    expect_broken("magic", &b, b.n, SN_ERR_FORMAT, "not a GGUF file", NULL);
    RESET();
    put32(&b, 4, 7);
    expect_broken("version", &b, b.n, SN_ERR_FORMAT, "version 7", NULL);
    RESET();
    expect_broken("tiny", &b, 20, SN_ERR_FORMAT, "truncated", NULL);
    RESET();
    put64(&b, 8, (uint64_t)1 << 40);
    expect_broken("tensor_count", &b, b.n, SN_ERR_FORMAT, "claims", "tensors");
    RESET();
    put64(&b, 16, (uint64_t)1 << 50);
    expect_broken("kv_count", &b, b.n, SN_ERR_FORMAT, "claims", "metadata");
    RESET();
    put64(&b, 24, (uint64_t)1 << 40); /* the first key's length */
    expect_broken("string_length", &b, b.n, SN_ERR_FORMAT, "metadata entry 0", "claims");
    RESET();
    put32(&b, after_string(&b, "general.architecture"), 77);
    expect_broken("value_type", &b, b.n, SN_ERR_FORMAT, "general.architecture", "unknown value type 77");
    RESET();
    /* A tensor entry: name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset. */
    size_t t = after_string(&b, "blk.1.ffn_up.weight");
    put32(&b, t + 4 + 16, 99);
    expect_broken("tensor_type", &b, b.n, SN_ERR_FORMAT, "blk.1.ffn_up.weight", "unknown ggml type 99");
    RESET();
    put64(&b, t + 4 + 16 + 4, (uint64_t)1 << 44);
    expect_broken("tensor_offset", &b, b.n, SN_ERR_FORMAT, "blk.1.ffn_up.weight", "outside the file");
    RESET();
    expect_broken("truncated_data", &b, b.n - 100, SN_ERR_FORMAT, "outside the file", NULL);
    size_t q = after_string(&b, "blk.0.attn_q.weight"); /* Q4_0: make_gguf.py's cycle starts there */
    RESET();
    put64(&b, q + 4, 100); /* rows of 100: not whole blocks of 32 */
    expect_broken("partial_block", &b, b.n, SN_ERR_FORMAT, "blk.0.attn_q.weight", "not whole");
    RESET();
    put64(&b, t + 4 + 8, 192); /* ffn_up (out 224, in 128) now (192, 128) */
    expect_broken("shape", &b, b.n, SN_ERR_FORMAT, "blk.1.ffn_up.weight", "(192, 128)");
    RESET();
    b.b[t - 8] = 'q'; /* blk.1.ffn_up.weight -> blk.1.ffn_uq.weight */
    expect_broken("missing_tensor", &b, b.n, SN_ERR_FORMAT, "missing tensor 'blk.1.ffn_up.weight'", NULL);
    RESET();
    put32(&b, q + 4 + 16, SN_GGML_Q5_0); /* same block size, fewer bytes: parses, not computable */
    expect_broken("unsupported_type", &b, b.n, SN_ERR_UNSUPPORTED, "blk.0.attn_q.weight", "Q5_0");
    RESET();
    size_t arch = after_string(&b, "general.architecture") + 4 + 8;
    memcpy(b.b + arch, "gpt_2", 5);
    expect_broken("architecture", &b, b.n, SN_ERR_UNSUPPORTED, "architecture 'gpt_2'", NULL);
    RESET();
    size_t heads = after_string(&b, "llama.attention.head_count_kv");
    put32(&b, heads + 4, 3); /* 4 heads over 3 KV heads */
    expect_broken("kv_heads", &b, b.n, SN_ERR_FORMAT, "head_count_kv 3", NULL);
    RESET();
    size_t eps = after_string(&b, "llama.attention.layer_norm_rms_epsilon");
    put32(&b, eps, SN_GGUF_STRING); /* a float read as a string of absurd length */
    expect_broken("eps_type", &b, b.n, SN_ERR_FORMAT, "layer_norm_rms_epsilon", NULL);
#undef RESET
    free(b.b);
    free(good.b);

    char missing[160];
    snprintf(missing, sizeof missing, "%s/none.gguf", sn_test_dir);
    sn_model *m;
    cr_expect_eq(sn_model_open(missing, &m), SN_ERR_NOT_FOUND, "%s", sn_errmsg());
    cr_expect(strstr(sn_errmsg(), "none.gguf") != NULL, "%s", sn_errmsg());
}

Test(gguf, the_model_reads_its_metadata)
{
    sn_model *m;
    cr_assert_eq(sn_model_open(SMOLLM2, &m), SN_OK, "%s (run scripts/test.sh to fetch it)", sn_errmsg());
    const sn_model_config *c = sn_model_config_of(m);
    cr_expect_eq(c->vocab_size, 49152);
    cr_expect_eq(c->hidden, 576);
    cr_expect_eq(c->intermediate, 1536);
    cr_expect_eq(c->n_layers, 30);
    cr_expect_eq(c->n_heads, 9);
    cr_expect_eq(c->n_kv_heads, 3);
    cr_expect_eq(c->head_dim, 64);
    cr_expect_eq(c->max_positions, 8192);
    cr_expect_float_eq(c->rope_theta, 100000.0f, 1e-3);
    cr_expect_float_eq(c->rms_eps, 1e-5f, 1e-9);
    cr_expect(c->tie_embeddings);
    cr_expect(c->rope_interleaved);
    cr_expect_eq(sn_model_embed(m)->dtype, SN_DTYPE_Q8_0);
    cr_expect_eq(sn_model_layer(m, 0)->wq->dtype, SN_DTYPE_Q4_1);
    cr_expect_eq(sn_model_layer(m, 29)->w_down->shape[0], 576);
    cr_expect_eq(sn_model_layer(m, 29)->w_down->shape[1], 1536);
    sn_model_close(m);
}

/* ---------------------------------------------------------------------------------------- */
/* A real model                                                                             */
/* ---------------------------------------------------------------------------------------- */

/* The first 16 greedy ids of the engine and of llama_ref.py for one prompt. */
static void expect_same_greedy(sn_engine *e, const int32_t *prompt, size_t n)
{
    char cmd[4096], out[160];
    snprintf(out, sizeof out, "%s/greedy.json", sn_test_dir);
    int len = snprintf(cmd, sizeof cmd, "python3 %s/tests/reference/llama_ref.py --greedy 16 %s %s", SN_SOURCE_DIR,
                       SMOLLM2, out);
    for (size_t i = 0; i < n; i++)
        len += snprintf(cmd + len, sizeof cmd - (size_t)len, " %d", prompt[i]);
    sn_test_sh("%s", cmd);
    FILE *f = fopen(out, "r");
    cr_assert_not_null(f);
    char text[4096] = "";
    size_t got_bytes = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[got_bytes] = '\0';
    int32_t want[16];
    const char *p = strchr(text, '[');
    cr_assert_not_null(p, "%s: no list", out);
    for (int i = 0; i < 16; i++) {
        char *end;
        want[i] = (int32_t)strtol(p + 1, &end, 10);
        p = end;
    }

    sn_session_opts so = sn_session_opts_default();
    so.no_bos = 1;
    sn_session *s;
    cr_assert_eq(sn_session_open(e, &so, &s), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_session_feed_tokens(s, prompt, n), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_session_generate(s, NULL, 0, 16, 0), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_engine_run(e), SN_OK, "%s", sn_errmsg());
    size_t nt;
    const int32_t *toks = sn_session_tokens(s, &nt);
    cr_assert_eq(nt, n + 16);
    char line[512] = "";
    for (int i = 0; i < 16; i++)
        snprintf(line + strlen(line), sizeof line - strlen(line), " %d", toks[n + (size_t)i]);
    fprintf(stderr, "SmolLM2 greedy:%s\n", line);
    cr_expect_arr_eq(toks + n, want, sizeof want, "greedy ids differ from llama_ref.py's (engine:%s; reference: %s)",
                     line, text);
    sn_session_close(s);
}

Test(gguf, a_real_model_decodes_like_the_numpy_reference)
{
    struct stat sb;
    cr_assert_eq(stat(SMOLLM2, &sb), 0, "%s is missing: scripts/test.sh fetches it", SMOLLM2);
    sn_engine_opts o = sn_engine_opts_default();
    o.model_dir = SMOLLM2;
    o.max_sessions = 1;
    o.threads = 2;
    o.kv_bytes = 16u << 20;
    o.backend = "cpu";
    sn_engine *e;
    cr_assert_eq(sn_engine_open(&o, &e), SN_OK, "%s", sn_errmsg());
    /* "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
     * in SmolLM2's ids, and a plain story opening ("Once upon a time, there was a little") */
    static const int32_t chat[] = {1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198};
    static const int32_t story[] = {6403, 1980, 253, 655, 28, 665, 436, 253, 1838};
    expect_same_greedy(e, chat, sizeof chat / sizeof *chat);
    expect_same_greedy(e, story, sizeof story / sizeof *story);
    sn_engine_close(e);
}
