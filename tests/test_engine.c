/*
 * test_engine.c - the engine on the CPU backend against an independent numpy forward pass
 * (tests/reference/llama_ref.py) on small seeded random models (tests/reference/make_model.py):
 * logits within 1e-4 relative for several shapes, GQA ratios, tied and untied heads, odd
 * sizes and dtypes; chunked prefill equal to whole; batch invariance; KV-pool exhaustion with
 * many sessions; tensor-parallel shards equal to one; data-parallel replicas equal to one,
 * and the replica wrapper's placement, batch split and errors around fake backends; the
 * segment automaton.
 *
 * The relative error of a logit row is max|got - ref| / max|ref|.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "sensorium/sensorium.h"
#include "test_util.h"

#define TOL 1e-4

static void setup(void) { sn_test_mkdir("sn_engine"); }

TestSuite(engine, .init = setup, .fini = sn_test_rmdir, .timeout = 240);

/* Writes a model with tests/reference/SCRIPT ARGS as sn_test_dir/NAME (+ ext); returns its path
 * (a static buffer: one model at a time). */
static const char *write_model(const char *script, const char *name, const char *ext, const char *args)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s%s", sn_test_dir, name, ext);
    sn_test_sh("python3 %s/tests/reference/%s %s %s", SN_SOURCE_DIR, script, path, args);
    return path;
}

/* A Hugging Face folder or Sensorium package from make_model.py. */
static const char *make_model(const char *name, const char *args)
{
    return write_model("make_model.py", name, "", args);
}

/* The reference logits of every position (T, vocab), malloc'ed. */
static float *reference(const char *model, const int32_t *tokens, size_t n, int32_t vocab)
{
    char cmd[4096], out[128];
    snprintf(out, sizeof out, "%s/ref.npy", sn_test_dir);
    int len = snprintf(cmd, sizeof cmd, "python3 %s/tests/reference/llama_ref.py %s %s", SN_SOURCE_DIR, model, out);
    for (size_t i = 0; i < n; i++)
        len += snprintf(cmd + len, sizeof cmd - (size_t)len, " %d", tokens[i]);
    cr_assert_eq(system(cmd), 0, "llama_ref.py failed");
    sn_media m;
    cr_assert_eq(sn_media_read(out, &m), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(m.series.n_ticks, n);
    cr_assert_eq(m.series.dims, (uint32_t)vocab);
    float *r = malloc(n * (size_t)vocab * sizeof *r);
    memcpy(r, m.series.values, n * (size_t)vocab * sizeof *r);
    sn_media_release(&m);
    return r;
}

static double rel_err(const float *got, const float *ref, int32_t n)
{
    double worst = 0, scale = 0;
    for (int32_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs((double)got[i] - ref[i]));
        scale = fmax(scale, fabs((double)ref[i]));
    }
    return worst / scale;
}

static sn_engine *open_engine_dp(const char *model, int tp, int dp, int32_t batch_tokens, int32_t sessions,
                                 size_t kv_bytes)
{
    sn_engine_opts o = sn_engine_opts_default();
    o.model_dir = model;
    o.tp = tp;
    o.dp = dp;
    o.max_batch_tokens = batch_tokens;
    o.max_sessions = sessions;
    o.kv_bytes = kv_bytes;
    o.keep_logits = 1;
    o.threads = 2;
    o.backend = "cpu"; /* the reference backend, whatever hardware runs the tests */
    sn_engine *e;
    cr_assert_eq(sn_engine_open(&o, &e), SN_OK, "%s", sn_errmsg());
    return e;
}

static sn_engine *open_engine(const char *model, int tp, int32_t batch_tokens, int32_t sessions, size_t kv_bytes)
{
    return open_engine_dp(model, tp, 1, batch_tokens, sessions, kv_bytes);
}

static void prompt(int32_t *t, size_t n, int32_t vocab, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = (int32_t)(seed >> 8) % vocab;
    }
}

/* Feeds tokens one step at a time and checks the logits of every position. */
static void check_logits(const char *model, const char *name, const char *args, int32_t vocab, int tp)
{
    int32_t t[12];
    prompt(t, 12, vocab, 7);
    float *ref = reference(model, t, 12, vocab);
    sn_engine *e = open_engine(model, tp, 64, 2, 0);
    sn_session_opts so = sn_session_opts_default();
    so.no_bos = 1;
    sn_session *s;
    cr_assert_eq(sn_session_open(e, &so, &s), SN_OK, "%s", sn_errmsg());
    double worst = 0;
    /* the first 8 as one prefill, then one token per step (the decode path) */
    cr_assert_eq(sn_session_feed_tokens(s, t, 8), SN_OK);
    cr_assert_eq(sn_engine_run(e), SN_OK, "%s", sn_errmsg());
    int32_t v;
    const float *lg = sn_session_logits(s, &v);
    cr_assert_eq(v, vocab);
    worst = fmax(worst, rel_err(lg, ref + 7 * (size_t)vocab, vocab));
    for (int i = 8; i < 12; i++) {
        cr_assert_eq(sn_session_feed_tokens(s, &t[i], 1), SN_OK);
        cr_assert_eq(sn_engine_run(e), SN_OK, "%s", sn_errmsg());
        double err = rel_err(sn_session_logits(s, NULL), ref + (size_t)i * vocab, vocab);
        worst = fmax(worst, err);
    }
    cr_log_info("%s (%s, tp %d): worst relative logit error %.3g", name, args, tp, worst);
    fprintf(stderr, "engine vs numpy: %-10s tp %d  %-60s rel err %.3g\n", name, tp, args, worst);
    cr_expect_leq(worst, TOL, "%s: relative error %.3g > %.0e", name, worst, TOL);
    sn_session_close(s);
    sn_engine_close(e);
    free(ref);
}

static void check_model(const char *name, const char *args, int32_t vocab, int tp)
{
    check_logits(make_model(name, args), name, args, vocab, tp);
}

/* GGUF files: every ggml type the engine computes on (make_gguf.py cycles the projections
 * through Q4_0, Q4_1, Q8_0, F16, BF16, F32), and the interleaved RoPE of llama.cpp's
 * permuted Q/K rows; the reference dequantises with the gguf package and un-permutes. */
static void check_gguf(const char *name, const char *args, int32_t vocab, int tp)
{
    check_logits(write_model("make_gguf.py", name, ".gguf", args), name, args, vocab, tp);
}

Test(engine, gguf_models_match_the_numpy_reference)
{
    check_gguf("gguf", "--seed 21", 96, 1);
    check_gguf("gguf_tied", "--tie --seed 22 --layers 6", 96, 1);
    check_gguf("gguf_gqa4", "--heads 8 --kv-heads 2 --seed 23", 96, 1);
    check_gguf("gguf_tp2", "--ffn 256 --seed 24", 96, 2);
    /* the portable C kernels too, where the CPU would pick AVX2 ones */
    setenv("SN_CPU_PORTABLE", "1", 1);
    check_gguf("gguf_c", "--seed 25", 96, 1);
    check_gguf("gguf_c_tied", "--tie --seed 26", 96, 1);
    unsetenv("SN_CPU_PORTABLE");
}

Test(engine, logits_match_the_numpy_reference)
{
    check_model("mha", "--heads 4 --kv-heads 4 --seed 1", 300, 1);           /* GQA ratio 1 */
    check_model("gqa2", "--heads 4 --kv-heads 2 --seed 2", 300, 1);          /* ratio 2 */
    check_model("gqa4", "--heads 8 --kv-heads 2 --head-dim 8 --seed 3", 300, 1); /* ratio 4 */
    check_model("tied", "--tie --seed 4", 300, 1);
    check_model("odd", "--vocab 277 --hidden 36 --intermediate 53 --heads 3 --kv-heads 1 --head-dim 10 --layers 3 --seed 5", 277, 1);
    check_model("llama3", "--llama3-rope --rope-theta 500000 --seed 6", 300, 1);
    check_model("bf16", "--dtype bf16 --seed 7", 300, 1);
    check_model("f16", "--dtype f16 --seed 8 --shards 3", 300, 1);
    check_model("sens", "--layout sensorium --seed 9", 300, 1);
}

Test(engine, tensor_parallel_shards_match_one)
{
    check_model("tp2", "--heads 4 --kv-heads 2 --intermediate 96 --seed 11", 300, 2);
    check_model("tp4", "--heads 8 --kv-heads 4 --head-dim 8 --intermediate 96 --seed 12", 300, 4);
}

/* Greedy tokens of one session alone, for comparisons. */
static void generate_alone(const char *model, const int32_t *p, size_t n, int32_t steps, int tp,
                           int32_t *out, float *last_logits, int32_t vocab)
{
    sn_engine *e = open_engine(model, tp, 256, 1, 0);
    sn_session_opts so = sn_session_opts_default();
    so.no_bos = 1;
    sn_session *s;
    cr_assert_eq(sn_session_open(e, &so, &s), SN_OK);
    cr_assert_eq(sn_session_feed_tokens(s, p, n), SN_OK);
    cr_assert_eq(sn_session_generate(s, NULL, 0, steps, 0), SN_OK);
    cr_assert_eq(sn_engine_run(e), SN_OK, "%s", sn_errmsg());
    size_t nt;
    const int32_t *toks = sn_session_tokens(s, &nt);
    cr_assert_eq(nt, n + (size_t)steps);
    memcpy(out, toks + n, (size_t)steps * sizeof *out);
    if (last_logits)
        memcpy(last_logits, sn_session_logits(s, NULL), (size_t)vocab * sizeof *last_logits);
    sn_session_close(s);
    sn_engine_close(e);
}

Test(engine, tensor_parallel_gives_the_same_greedy_tokens)
{
    const char *model = make_model("tpg", "--heads 8 --kv-heads 4 --head-dim 8 --intermediate 96 --seed 13");
    int32_t p[10], base[16], other[16];
    float lb[300], lo[300];
    prompt(p, 10, 300, 3);
    generate_alone(model, p, 10, 16, 1, base, lb, 300);
    for (int tp = 2; tp <= 4; tp *= 2) {
        generate_alone(model, p, 10, 16, tp, other, lo, 300);
        cr_expect_arr_eq(base, other, sizeof base, "tp %d greedy tokens differ from tp 1", tp);
        cr_expect_leq(rel_err(lo, lb, 300), TOL, "tp %d logits differ", tp);
    }
}

Test(engine, chunked_prefill_equals_whole)
{
    const char *model = make_model("chunk", "--seed 21");
    int32_t p[40];
    prompt(p, 40, 300, 5);
    float whole[300];
    for (int k = 0; k < 2; k++) {
        /* k = 0: the prompt in one step; k = 1: chunks of 7 tokens */
        sn_engine *e = open_engine(model, 1, k == 0 ? 64 : 7, 1, 0);
        sn_session_opts so = sn_session_opts_default();
        so.no_bos = 1;
        sn_session *s;
        cr_assert_eq(sn_session_open(e, &so, &s), SN_OK);
        cr_assert_eq(sn_session_feed_tokens(s, p, 40), SN_OK);
        int steps = 0;
        int32_t n;
        do {
            cr_assert_eq(sn_engine_step(e, &n), SN_OK);
            steps += n > 0;
        } while (n);
        cr_expect_eq(steps, k == 0 ? 1 : 6, "steps %d", steps);
        if (k == 0)
            memcpy(whole, sn_session_logits(s, NULL), sizeof whole);
        else {
            double err = rel_err(sn_session_logits(s, NULL), whole, 300);
            fprintf(stderr, "chunked vs whole prefill: rel err %.3g\n", err);
            cr_expect_leq(err, 1e-5, "chunked prefill differs from whole: %.3g", err);
        }
        sn_session_close(s);
        sn_engine_close(e);
    }
}

/* Five sessions batched (on dp replicas) give each one's tokens alone, greedy and sampled. */
static void check_batched(const char *model, int dp)
{
    enum { N = 5, STEPS = 12 };
    int32_t p[N][9], alone[N][STEPS];
    for (int i = 0; i < N; i++) {
        prompt(p[i], (size_t)(3 + i), 300, 100u + (uint32_t)i);
        generate_alone(model, p[i], (size_t)(3 + i), STEPS, 1, alone[i], NULL, 300);
    }
    /* all together, with sampling at temperature 1 too: same seeds, same tokens */
    for (int temp = 0; temp < 2; temp++) {
        sn_engine *e = open_engine_dp(model, 1, dp, 16, N, 0);
        sn_session *s[N];
        for (int i = 0; i < N; i++) {
            sn_session_opts so = sn_session_opts_default();
            so.no_bos = 1;
            so.seed = 1000 + (uint64_t)i;
            so.sampling.temperature = temp ? 1.0f : 0.0f;
            cr_assert_eq(sn_session_open(e, &so, &s[i]), SN_OK);
            cr_assert_eq(sn_session_feed_tokens(s[i], p[i], (size_t)(3 + i)), SN_OK);
            cr_assert_eq(sn_session_generate(s[i], NULL, 0, STEPS, 0), SN_OK);
            if (i == 2) /* a session that joins a step later */
                cr_assert_eq(sn_engine_step(e, NULL), SN_OK);
        }
        cr_assert_eq(sn_engine_run(e), SN_OK, "%s", sn_errmsg());
        for (int i = 0; i < N; i++) {
            size_t nt;
            const int32_t *t = sn_session_tokens(s[i], &nt);
            cr_assert_eq(nt, (size_t)(3 + i + STEPS));
            if (!temp)
                cr_expect_arr_eq(t + 3 + i, alone[i], sizeof alone[i], "session %d differs when batched (dp %d)", i, dp);
        }
        if (temp) {
            /* sampled: compare with each session alone at the same seed */
            for (int i = 0; i < N; i++) {
                sn_engine *e1 = open_engine(model, 1, 256, 1, 0);
                sn_session_opts so = sn_session_opts_default();
                so.no_bos = 1;
                so.seed = 1000 + (uint64_t)i;
                so.sampling.temperature = 1.0f;
                sn_session *s1;
                cr_assert_eq(sn_session_open(e1, &so, &s1), SN_OK);
                cr_assert_eq(sn_session_feed_tokens(s1, p[i], (size_t)(3 + i)), SN_OK);
                cr_assert_eq(sn_session_generate(s1, NULL, 0, STEPS, 0), SN_OK);
                cr_assert_eq(sn_engine_run(e1), SN_OK);
                size_t n1, n2;
                const int32_t *a = sn_session_tokens(s1, &n1), *b = sn_session_tokens(s[i], &n2);
                cr_expect_arr_eq(a, b, n1 * sizeof *a, "sampled session %d depends on its batch (dp %d)", i, dp);
                sn_session_close(s1);
                sn_engine_close(e1);
            }
        }
        for (int i = 0; i < N; i++)
            sn_session_close(s[i]);
        sn_engine_close(e);
    }
}

Test(engine, batched_sessions_match_sessions_alone)
{
    check_batched(make_model("batch", "--seed 31"), 1);
}

Test(engine, data_parallel_replicas_match_sessions_alone)
{
    const char *model = make_model("dp", "--seed 32");
    check_batched(model, 2);
    check_batched(model, 3);
}

/* 8 sessions of 40 tokens (3 blocks each) on pools that cannot hold them at once. */
static void check_kv_pressure(const char *model, int dp, size_t kv_bytes)
{
    enum { N = 8, STEPS = 24 };
    int32_t p[N][16], alone[N][STEPS];
    for (int i = 0; i < N; i++) {
        prompt(p[i], 16, 300, 500u + (uint32_t)i);
        generate_alone(model, p[i], 16, STEPS, 1, alone[i], NULL, 300);
    }
    sn_engine *e = open_engine_dp(model, 1, dp, 32, N, kv_bytes);
    sn_session *s[N];
    for (int i = 0; i < N; i++) {
        sn_session_opts so = sn_session_opts_default();
        so.no_bos = 1;
        cr_assert_eq(sn_session_open(e, &so, &s[i]), SN_OK);
        cr_assert_eq(sn_session_feed_tokens(s[i], p[i], 16), SN_OK);
        cr_assert_eq(sn_session_generate(s[i], NULL, 0, STEPS, 0), SN_OK);
    }
    int steps = 0;
    int32_t n;
    do {
        cr_assert_eq(sn_engine_step(e, &n), SN_OK, "%s", sn_errmsg());
        steps++;
        int busy = 0;
        for (int i = 0; i < N; i++)
            busy |= sn_session_busy(s[i]);
        if (!busy)
            break;
        cr_assert_lt(steps, 2000, "the engine stopped making progress");
    } while (1);
    for (int i = 0; i < N; i++) {
        cr_expect_eq(sn_session_stop_reason(s[i]), SN_STOP_MAX_TOKENS, "session %d: %s", i, sn_session_error(s[i]));
        size_t nt;
        const int32_t *t = sn_session_tokens(s[i], &nt);
        cr_assert_eq(nt, 16u + STEPS);
        cr_expect_arr_eq(t + 16, alone[i], sizeof alone[i], "session %d changed under KV pressure (dp %d)", i, dp);
    }
    for (int i = 0; i < N; i++)
        sn_session_close(s[i]);
    sn_engine_close(e);
}

/* 2 layers, 2 KV heads of 16: a block is 2*2*16*2*16*4 = 8 KiB. */
Test(engine, kv_pool_exhaustion_preempts_and_recomputes)
{
    check_kv_pressure(make_model("kv", "--seed 41"), 1, 12 * 8192); /* 12 blocks: 192 positions */
}

Test(engine, kv_pool_exhaustion_on_data_parallel_replicas)
{
    check_kv_pressure(make_model("kvdp", "--seed 42"), 2, 6 * 8192); /* 6 blocks per replica */
}

/* ---------------------------------------------------------------------------------------- */
/* The automaton                                                                            */
/* ---------------------------------------------------------------------------------------- */

typedef struct seen {
    char text[4096];
    size_t len;
    int actions;
    char last_action[64];
} seen;

static int on_action(void *ctx, sn_session *s, const char *modality, const sn_action *a)
{
    (void)s;
    seen *w = ctx;
    if (a->kind == SN_ACTION_TEXT) {
        cr_assert_str_eq(modality, "text");
        cr_assert_lt(w->len + a->text.len, sizeof w->text);
        memcpy(w->text + w->len, a->text.utf8, a->text.len);
        w->len += a->text.len;
    } else if (a->kind == SN_ACTION_NAMED) {
        cr_assert_str_eq(modality, "action");
        w->actions++;
        snprintf(w->last_action, sizeof w->last_action, "%s", a->named.name);
    }
    return 0;
}

/* Appends to the layout of make_model.py's sensorium package an 'action' segment of three
 * action.discrete ids at start (markers 5 and 6), named by the Python list `names`. */
static void add_actions(const char *model, int32_t start, const char *names)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "python3 -c \"import json; p='%s/sensorium.json'; m=json.load(open(p)); m['vocab']['segments'].append("
             "{'modality': 'action', 'plugin': 'action.discrete', 'start': %d, 'size': 3, 'begin': 5, 'end': 6, "
             "'config': {'actions': %s}}); json.dump(m, open(p, 'w'))\"",
             model, start, names);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
}

Test(engine, the_automaton_only_lets_allowed_tokens_through)
{
    /* a 272-id model with text (8..263) and actions (264..266) */
    const char *model = make_model("auto", "--vocab 272 --layout sensorium --seed 51");
    add_actions(model, 264, "['left', 'right', 'stop']");
    sn_engine *e = open_engine(model, 1, 64, 4, 0);
    for (uint64_t seed = 0; seed < 6; seed++) {
        seen w = {0};
        sn_session_opts so = sn_session_opts_default();
        so.seed = seed;
        so.sampling.temperature = 1.5f; /* random weights, hot sampling: only the mask keeps order */
        so.callbacks = (sn_session_callbacks){.ctx = &w, .on_action = on_action};
        sn_session *s;
        cr_assert_eq(sn_session_open(e, &so, &s), SN_OK);
        sn_media m = {.kind = SN_MEDIA_TEXT, .text = {"tilt left!", 10}};
        cr_assert_eq(sn_session_feed(s, "text", &m), SN_OK, "%s", sn_errmsg());
        const char *out[] = {seed % 2 ? "action" : "text", "action"};
        size_t n_out = seed % 3 == 0 ? 2 : 1;
        cr_assert_eq(sn_session_generate(s, out, n_out, 60, 0), SN_OK);
        cr_assert_eq(sn_engine_run(e), SN_OK, "%s", sn_errmsg());
        cr_expect_neq(sn_session_stop_reason(s), SN_STOP_ERROR, "%s", sn_session_error(s));
        size_t nt;
        const int32_t *t = sn_session_tokens(s, &nt);
        /* replay the generated part against the automaton */
        int inside = -1, in_action = 0;
        size_t gen_start = 1 + 12; /* BOS, <begin:text>, 10 bytes, <end:text> */
        for (size_t i = gen_start; i < nt; i++) {
            int32_t id = t[i];
            if (inside < 0) {
                int text_ok = !(seed % 2), action_ok = seed % 2 || n_out == 2;
                int ok = id == 1 || (id == 5 && action_ok) || (id == 3 && text_ok);
                cr_assert(ok, "seed %llu: token %d at %zu outside a segment", (unsigned long long)seed, id, i);
                if (id == 3 || id == 5) {
                    inside = id == 3 ? 0 : 1;
                    in_action = 0;
                }
            } else if (inside == 0) {
                cr_assert((id >= 8 && id <= 263) || id == 4, "seed %llu: %d inside text", (unsigned long long)seed, id);
                if (id == 4)
                    inside = -1;
            } else {
                if (in_action == 0)
                    cr_assert(id >= 264 && id <= 266, "seed %llu: %d where an action must come", (unsigned long long)seed, id);
                else
                    cr_assert_eq(id, 6, "seed %llu: a second action in one segment", (unsigned long long)seed);
                if (++in_action == 2)
                    inside = -1;
            }
        }
        /* decoded text is whole UTF-8 (text.bytes constrains to valid sequences) */
        for (size_t i = 0; i < w.len;) {
            unsigned char c = (unsigned char)w.text[i];
            size_t k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
            cr_assert(c < 0x80 || (c >= 0xC2 && c <= 0xF4), "invalid lead byte 0x%02x", c);
            for (size_t j = 1; j < k; j++)
                cr_assert(i + j < w.len && ((unsigned char)w.text[i + j] & 0xC0) == 0x80);
            i += k;
        }
        sn_session_close(s);
    }
    sn_engine_close(e);
}

/* A segment whose range straddles a 64-id word of the mask (319..321), sampled hot: every one
 * of its ids comes out, and nothing else, so the plugin's bits land exactly on its range. */
Test(engine, masks_cover_a_range_across_mask_words_exactly)
{
    const char *model = make_model("words", "--vocab 330 --layout sensorium --seed 52");
    add_actions(model, 319, "['a', 'b', 'c']");
    sn_engine *e = open_engine(model, 1, 64, 8, 0);
    int seen_id[3] = {0};
    for (uint64_t seed = 0; seed < 96; seed++) {
        sn_session_opts so = sn_session_opts_default();
        so.seed = seed;
        so.sampling.temperature = 8.0f; /* close to uniform over the allowed ids */
        sn_session *s;
        cr_assert_eq(sn_session_open(e, &so, &s), SN_OK);
        const char *out[] = {"action"};
        cr_assert_eq(sn_session_generate(s, out, 1, 8, 1), SN_OK);
        cr_assert_eq(sn_engine_run(e), SN_OK, "%s", sn_errmsg());
        size_t nt;
        const int32_t *t = sn_session_tokens(s, &nt);
        if (nt == 2 && t[1] == 1) { /* EOS before any segment: allowed there too */
            sn_session_close(s);
            continue;
        }
        cr_assert_eq(nt, 4u, "seed %llu: %zu tokens (%s)", (unsigned long long)seed, nt, sn_session_error(s));
        cr_assert(t[1] == 5 && t[3] == 6, "seed %llu: %d .. %d around the action", (unsigned long long)seed, t[1], t[3]);
        cr_assert(t[2] >= 319 && t[2] <= 321, "seed %llu: action id %d outside 319..321", (unsigned long long)seed, t[2]);
        seen_id[t[2] - 319]++;
        sn_session_close(s);
    }
    const int actions = seen_id[0] + seen_id[1] + seen_id[2];
    cr_assert_geq(actions, 24, "only %d of 96 sessions chose an action", actions);
    for (int k = 0; k < 3; k++)
        cr_expect_gt(seen_id[k], 0, "id %d never sampled in %d hot draws", 319 + k, actions);
    sn_engine_close(e);
}

Test(engine, non_finite_logits_fail_the_session_not_the_engine)
{
    const char *model = make_model("nan", "--seed 62 --corrupt model.layers.1.mlp.down_proj.weight");
    sn_engine *e = open_engine(model, 1, 64, 2, 0);
    sn_session_opts so = sn_session_opts_default();
    so.no_bos = 1;
    sn_session *s;
    cr_assert_eq(sn_session_open(e, &so, &s), SN_OK);
    const int32_t p[4] = {5, 6, 7, 8};
    cr_assert_eq(sn_session_feed_tokens(s, p, 4), SN_OK);
    cr_assert_eq(sn_session_generate(s, NULL, 0, 5, 0), SN_OK);
    cr_expect_eq(sn_engine_run(e), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(sn_session_stop_reason(s), SN_STOP_ERROR);
    cr_expect_not_null(strstr(sn_session_error(s), "nan: the logits at position 4 are NaN or infinite"), "%s",
                       sn_session_error(s));
    size_t n;
    sn_session_tokens(s, &n);
    cr_expect_eq(n, 4u, "no token sampled from NaN logits");
    sn_session_close(s);
    sn_engine_close(e);
}

Test(engine, bad_requests_are_clear_errors)
{
    const char *model = make_model("bad", "--layout sensorium --seed 61");
    sn_engine *e = open_engine(model, 1, 64, 1, 0);
    sn_session *s;
    cr_assert_eq(sn_session_open(e, NULL, &s), SN_OK);
    sn_media m = {.kind = SN_MEDIA_TEXT, .text = {"x", 1}};
    cr_expect_eq(sn_session_feed(s, "audio", &m), SN_ERR_NOT_FOUND);
    cr_expect_not_null(strstr(sn_errmsg(), "no modality 'audio' (it has: text)"), "%s", sn_errmsg());
    int32_t bad = 300;
    cr_expect_eq(sn_session_feed_tokens(s, &bad, 1), SN_ERR_INVALID_ARG);
    sn_sampling_params sp = sn_sampling_params_default();
    sp.top_p = 0.0f;
    cr_expect_eq(sn_session_set_sampling(s, "text", &sp), SN_ERR_CONFIG);
    cr_expect_not_null(strstr(sn_errmsg(), "top_p"), "%s", sn_errmsg());
    sn_session *s2;
    cr_expect_eq(sn_session_open(e, NULL, &s2), SN_ERR_INVALID_ARG, "one session slot only");
    sn_session_close(s);
    sn_engine_close(e);

    sn_engine_opts o = sn_engine_opts_default();
    o.model_dir = model;
    o.tp = 3;
    cr_expect_neq(sn_engine_open(&o, &e), SN_OK);
    cr_expect_not_null(strstr(sn_errmsg(), "--tp 3 does not divide"), "%s", sn_errmsg());
    o.tp = 1;
    o.backend = "cuda";
    cr_expect_eq(sn_engine_open(&o, &e), SN_ERR_UNSUPPORTED);
    o.backend = "cpu";
    o.model_dir = sn_test_dir;
    cr_expect_eq(sn_engine_open(&o, &e), SN_ERR_NOT_FOUND);
    cr_expect_not_null(strstr(sn_errmsg(), "not a model folder"), "%s", sn_errmsg());
}

/* ---------------------------------------------------------------------------------------- */
/* The data-parallel wrapper (backend_dp.c) around fake replicas                            */
/* ---------------------------------------------------------------------------------------- */

/* A fake backend: a pool of kv_bytes blocks (the budget read as a count), and a forward that
 * checks every token is seq * 1000 + its position (so the split kept runs and positions
 * together) and writes [seq, device_first, run length] as a run's logits. Token 999999
 * fails the step; device_first == fake_broken_device fails the open. Its forward_sample
 * "samples" seed * 1000 + the row's lowest allowed id, + 500 when the row's seen bit 0 is set. */
typedef struct fake {
    sn_backend base;
    int32_t device, free_blocks, total_blocks;
    int32_t held[16];
} fake;

static int32_t fake_broken_device = -1;
static const sn_backend_ops fake_ops;

static sn_status fake_open(const sn_model *m, const sn_backend_opts *o, sn_backend **out)
{
    (void)m;
    if (o->device_first == fake_broken_device)
        return sn_fail(SN_ERR_CONFIG, "fake: device %d is broken", o->device_first);
    fake *f = calloc(1, sizeof *f);
    f->base.ops = &fake_ops;
    f->device = o->device_first;
    f->free_blocks = f->total_blocks = (int32_t)o->kv_bytes;
    *out = &f->base;
    return SN_OK;
}

static void fake_close(sn_backend *b) { free(b); }

static sn_status fake_forward(sn_backend *b, const sn_batch *batch, float *logits)
{
    const fake *f = (const fake *)b;
    int32_t row = 0;
    for (int32_t i = 0; i < batch->n_seqs; i++) {
        const int32_t seq = batch->seq_ids[i], n = batch->seq_start[i + 1] - batch->seq_start[i];
        if (f->held[seq] * SN_KV_BLOCK < batch->seq_pos[i] + n)
            return sn_fail(SN_ERR_INTERNAL, "fake: sequence %d has no blocks here", seq);
        for (int32_t j = 0; j < n; j++) {
            const int32_t t = batch->tokens[batch->seq_start[i] + j];
            if (t == 999999)
                return sn_fail(SN_ERR_INTERNAL, "fake: poisoned token");
            if (t != seq * 1000 + batch->seq_pos[i] + j)
                return sn_fail(SN_ERR_INTERNAL, "fake: run %d token %d is %d", i, j, t);
        }
        if (batch->logits_for[i]) {
            float *lg = logits + (size_t)row++ * 300;
            lg[0] = (float)seq;
            lg[1] = (float)f->device;
            lg[2] = (float)n;
        }
    }
    return SN_OK;
}

static sn_status fake_forward_sample(sn_backend *b, const sn_batch *batch, const sn_sample_req *req, int32_t *tokens,
                                    float *logits)
{
    float scratch[16 * 300];
    sn_status st = fake_forward(b, batch, logits ? logits : scratch);
    if (st != SN_OK)
        return st;
    const size_t words = (300 + 63) / 64;
    int32_t rows = 0;
    for (int32_t i = 0; i < batch->n_seqs; i++)
        rows += batch->logits_for[i] != 0;
    for (int32_t r = 0; r < rows; r++) {
        const uint64_t *allowed = req->allowed + (size_t)r * words;
        int32_t low = -1;
        for (int32_t id = 0; id < 300 && low < 0; id++)
            if (allowed[id / 64] >> (id % 64) & 1)
                low = id;
        const int seen0 = req->seen && (req->seen[(size_t)r * words] & 1);
        tokens[r] = (int32_t)req->rows[r].seed * 1000 + low + (seen0 ? 500 : 0);
    }
    return SN_OK;
}

static sn_status fake_reserve(sn_backend *b, int32_t seq, int32_t n_positions)
{
    fake *f = (fake *)b;
    const int32_t need = (n_positions + SN_KV_BLOCK - 1) / SN_KV_BLOCK - f->held[seq];
    if (need > f->free_blocks)
        return sn_fail(SN_ERR_NOMEM, "fake: pool full");
    if (need > 0) {
        f->free_blocks -= need;
        f->held[seq] += need;
    }
    return SN_OK;
}

static void fake_release(sn_backend *b, int32_t seq)
{
    fake *f = (fake *)b;
    f->free_blocks += f->held[seq];
    f->held[seq] = 0;
}

static int32_t fake_free(const sn_backend *b) { return ((const fake *)b)->free_blocks; }
static int32_t fake_total(const sn_backend *b) { return ((const fake *)b)->total_blocks; }

static const sn_backend_ops fake_ops = {
    .name = "fake",
    .open = fake_open,
    .close = fake_close,
    .forward = fake_forward,
    .forward_sample = fake_forward_sample,
    .kv_reserve = fake_reserve,
    .kv_release = fake_release,
    .kv_free_blocks = fake_free,
    .kv_total_blocks = fake_total,
};

static sn_model *fake_model(void)
{
    sn_model *m;
    cr_assert_eq(sn_model_open(make_model("fake", "--seed 71"), &m), SN_OK, "%s", sn_errmsg()); /* vocab 300 */
    return m;
}

static sn_backend *open_fake_dp(const sn_model *m, int dp, int tp, int32_t blocks, int parallel)
{
    sn_backend_opts o = {.tp = tp, .dp = dp, .kv_bytes = (size_t)blocks, .max_seqs = 16, .max_batch_tokens = 64};
    sn_backend *b;
    cr_assert_eq(sn_backend_dp_open(&fake_ops, m, &o, parallel, &b), SN_OK, "%s", sn_errmsg());
    return b;
}

Test(engine, data_parallel_spreads_sequences_and_splits_the_batch)
{
    sn_model *m = fake_model();
    for (int parallel = 0; parallel < 2; parallel++) {
        sn_backend *b = open_fake_dp(m, 3, 2, 100, parallel);
        const sn_backend_ops *ops = b->ops;
        cr_expect_str_eq(ops->name, "fake");
        cr_expect_eq(ops->kv_total_blocks(b), 300);
        /* sequences land round-robin on empty replicas */
        for (int32_t s = 0; s < 6; s++) {
            cr_expect_eq(ops->kv_domain(b, s), -1);
            cr_assert_eq(ops->kv_reserve(b, s, 20 + s), SN_OK, "%s", sn_errmsg());
            cr_expect_eq(ops->kv_domain(b, s), s % 3, "sequence %d on replica %d", s, ops->kv_domain(b, s));
        }
        cr_expect_eq(ops->kv_free_blocks(b), 300 - 12);
        /* a ragged batch over every replica, in an order that interleaves them */
        const int32_t seqs[5] = {5, 0, 3, 1, 4}, lens[5] = {3, 1, 4, 2, 1}, pos[5] = {10, 20, 0, 5, 19};
        const uint8_t want[5] = {1, 1, 0, 1, 1};
        int32_t tokens[16], start[6], n = 0;
        for (int i = 0; i < 5; i++) {
            start[i] = n;
            for (int32_t j = 0; j < lens[i]; j++)
                tokens[n++] = seqs[i] * 1000 + pos[i] + j;
        }
        start[5] = n;
        sn_batch batch = {.n_tokens = n, .tokens = tokens, .n_seqs = 5, .seq_ids = seqs, .seq_start = start,
                          .seq_pos = pos, .logits_for = want};
        float logits[4 * 300];
        for (int rep = 0; rep < 3; rep++) { /* the worker threads take several steps */
            memset(logits, 0xff, sizeof logits);
            cr_assert_eq(ops->forward(b, &batch, logits), SN_OK, "%s", sn_errmsg());
            for (int i = 0, row = 0; i < 5; i++) {
                if (!want[i])
                    continue;
                const float *lg = logits + (size_t)row++ * 300;
                cr_expect_eq(lg[0], (float)seqs[i], "row %d holds sequence %g", row - 1, lg[0]);
                cr_expect_eq(lg[1], (float)(2 * (seqs[i] % 3)), "replica %d sits on GPUs %g..", seqs[i] % 3, lg[1]);
                cr_expect_eq(lg[2], (float)lens[i]);
            }
        }
        /* forward_sample: each row's request reaches its replica, its token comes back in place */
        enum { W = (300 + 63) / 64 };
        sn_sample_row rq[4];
        uint64_t allowed[4 * W] = {0}, seen[4 * W] = {0};
        int32_t got[4];
        for (int i = 0, row = 0; i < 5; i++) {
            if (!want[i])
                continue;
            rq[row] = (sn_sample_row){.params = sn_sampling_default(), .seed = (uint64_t)seqs[i] + 1, .step = 0};
            const int32_t id = 10 + seqs[i];
            allowed[row * W + id / 64] |= (uint64_t)1 << (id % 64);
            seen[row * W] = seqs[i] == 0;
            row++;
        }
        for (int with_logits = 0; with_logits < 2; with_logits++) {
            const sn_sample_req req = {.rows = rq, .allowed = allowed, .seen = seen};
            memset(got, 0xff, sizeof got);
            cr_assert_eq(ops->forward_sample(b, &batch, &req, got, with_logits ? logits : NULL), SN_OK, "%s", sn_errmsg());
            for (int i = 0, row = 0; i < 5; i++) {
                if (!want[i])
                    continue;
                const int32_t expect = (seqs[i] + 1) * 1000 + 10 + seqs[i] + (seqs[i] == 0 ? 500 : 0);
                cr_expect_eq(got[row], expect, "row %d: token %d, expected %d", row, got[row], expect);
                if (with_logits)
                    cr_expect_eq(logits[(size_t)row * 300], (float)seqs[i]);
                row++;
            }
        }
        /* released sequences leave; a new one goes to the replica with the fewest */
        ops->kv_release(b, 1);
        cr_expect_eq(ops->kv_domain(b, 1), -1);
        cr_assert_eq(ops->kv_reserve(b, 7, 16), SN_OK);
        cr_expect_eq(ops->kv_domain(b, 7), 1);
        /* a sequence that never ran fails the step, naming it */
        int32_t one = 9 * 1000, s0 = 0, s1 = 1;
        uint8_t yes = 1;
        sn_batch bad = {.n_tokens = 1, .tokens = &one, .n_seqs = 1, .seq_ids = &(int32_t){9}, .seq_start = (int32_t[]){s0, s1},
                        .seq_pos = &s0, .logits_for = &yes};
        cr_expect_eq(ops->forward(b, &bad, logits), SN_ERR_INTERNAL);
        cr_expect_not_null(strstr(sn_errmsg(), "sequence 9 of the batch holds no KV blocks"), "%s", sn_errmsg());
        ops->close(b);
    }
    sn_model_close(m);
}

Test(engine, data_parallel_places_by_room_and_reports_failures)
{
    sn_model *m = fake_model();
    for (int parallel = 0; parallel < 2; parallel++) {
        sn_backend *b = open_fake_dp(m, 2, 1, 4, parallel);
        const sn_backend_ops *ops = b->ops;
        cr_assert_eq(ops->kv_reserve(b, 0, 64), SN_OK); /* replica 0 full */
        cr_assert_eq(ops->kv_reserve(b, 1, 16), SN_OK);
        cr_assert_eq(ops->kv_reserve(b, 2, 16), SN_OK);
        cr_expect_eq(ops->kv_domain(b, 1), 1);
        cr_expect_eq(ops->kv_domain(b, 2), 1, "equal counts: the roomier replica");
        /* the replica with fewer sequences has no room: the roomier one takes it */
        cr_assert_eq(ops->kv_reserve(b, 3, 16), SN_OK, "%s", sn_errmsg());
        cr_expect_eq(ops->kv_domain(b, 3), 1);
        /* nowhere has room for 2 blocks: no home, nothing held */
        cr_expect_eq(ops->kv_reserve(b, 4, 32), SN_ERR_NOMEM);
        cr_expect_eq(ops->kv_domain(b, 4), -1);
        cr_expect_eq(ops->kv_free_blocks(b), 1);
        /* a homed sequence grows only on its own replica */
        cr_assert_eq(ops->kv_reserve(b, 3, 32), SN_OK, "%s", sn_errmsg()); /* replica 1 full */
        cr_expect_eq(ops->kv_reserve(b, 1, 17), SN_ERR_NOMEM);
        ops->kv_release(b, 0);
        cr_expect_eq(ops->kv_reserve(b, 1, 17), SN_ERR_NOMEM, "replica 0's room cannot serve sequence 1");
        /* a replica's failure is the step's, naming the replica */
        int32_t toks[2] = {999999, 3 * 1000}, seqs[2] = {1, 3}, start[3] = {0, 1, 2}, pos[2] = {0, 0};
        uint8_t want[2] = {1, 1};
        sn_batch batch = {.n_tokens = 2, .tokens = toks, .n_seqs = 2, .seq_ids = seqs, .seq_start = start,
                          .seq_pos = pos, .logits_for = want};
        float logits[2 * 300];
        cr_expect_eq(ops->forward(b, &batch, logits), SN_ERR_INTERNAL);
        cr_expect_not_null(strstr(sn_errmsg(), "replica 1 of 2: fake: poisoned token"), "%s", sn_errmsg());
        ops->close(b);
    }
    /* a replica that cannot open fails the whole open, naming it (and leaks nothing) */
    fake_broken_device = 2;
    sn_backend_opts o = {.tp = 1, .dp = 3, .kv_bytes = 4, .max_seqs = 16, .max_batch_tokens = 64};
    sn_backend *b = NULL;
    cr_expect_eq(sn_backend_dp_open(&fake_ops, m, &o, 1, &b), SN_ERR_CONFIG);
    cr_expect_null(b);
    cr_expect_not_null(strstr(sn_errmsg(), "replica 2 of 3: fake: device 2 is broken"), "%s", sn_errmsg());
    fake_broken_device = -1;
    sn_model_close(m);
}
