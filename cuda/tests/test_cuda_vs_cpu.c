/*
 * test_cuda_vs_cpu.c - the CUDA backend, loaded as the engine loads it (core/src/
 * backend_loader.c: dlopen of libsensorium_cuda.so), against the CPU backend on the same
 * small random models from tests/reference/make_model.py: a ragged prefill batch, then
 * decode steps fed with the CPU's greedy tokens, the same batches on both backends.
 * Built only in the full tree (it needs the engine core); skips without a GPU.
 *
 * Then the engine itself (public API) on "cuda" against "cpu": sessions batched, sampling on
 * the device (forward_sample), and with two GPUs --dp 2 and --tp 2 too.
 *
 * Tolerance (bf16 weights and activations on the GPU, fp32 everywhere on the CPU): per
 * logits row max|cuda - cpu| <= 3e-2 * max|cpu|, and the greedy tokens agree wherever the
 * CPU's two best logits are more than twice that apart.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda_test.h"
#include "model.h"
#include "sensorium/sensorium.h"

sn_status sn_backend_open_named(const char *name, const sn_model *model, const sn_backend_opts *opts,
                                sn_backend **out);

#define N_SEQS 3

/* A model from tests/reference/SCRIPT (make_model.py: a Hugging Face folder; make_gguf.py:
 * a GGUF file, ext ".gguf") on both backends. */
static void compare_with(const char *script, const char *ext, const char *args)
{
    char dir[64] = "/tmp/sn_cuda_vs_cpu_XXXXXX", cmd[1024];
    cr_assert(mkdtemp(dir));
    snprintf(cmd, sizeof cmd, "python3 %s/tests/reference/%s %s/m%s %s >/dev/null", SN_SOURCE_DIR, script, dir, ext, args);
    cr_assert(system(cmd) == 0, "%s failed", cmd);
    snprintf(cmd, sizeof cmd, "%s/m%s", dir, ext);
    sn_model *m = NULL;
    cr_assert(sn_model_open(cmd, &m) == SN_OK, "%s", sn_errmsg());
    const sn_model_config *c = sn_model_config_of(m);
    sn_backend_opts o = {.threads = 2, .tp = 1, .max_seqs = N_SEQS, .max_batch_tokens = 64};
    sn_backend *cpu = NULL, *gpu = NULL;
    cr_assert(sn_cpu_backend.open(m, &o, &cpu) == SN_OK, "%s", sn_errmsg());
    cr_assert(sn_backend_open_named("cuda", m, &o, &gpu) == SN_OK, "%s", sn_errmsg());
    cr_assert(strcmp(gpu->ops->name, "cuda") == 0);
    const int V = c->vocab_size;
    float *lc = malloc((size_t)N_SEQS * V * sizeof *lc), *lg = malloc((size_t)N_SEQS * V * sizeof *lg);
    int32_t tokens[64], seq_ids[N_SEQS] = {0, 1, 2}, start[N_SEQS + 1], pos[N_SEQS] = {0, 0, 0};
    uint8_t lf[N_SEQS] = {1, 1, 1};
    const int prompt[N_SEQS] = {9, 17, 1};
    int n = 0;
    for (int s = 0; s < N_SEQS; s++) {
        start[s] = n;
        for (int i = 0; i < prompt[s]; i++)
            tokens[n++] = (s * 37 + i * 11) % V;
    }
    start[N_SEQS] = n;
    double worst = 0;
    int disagree = 0;
    for (int stepi = 0; stepi < 8; stepi++) {
        for (int s = 0; s < N_SEQS; s++) {
            const int32_t need = pos[s] + (start[s + 1] - start[s]);
            cr_assert(cpu->ops->kv_reserve(cpu, s, need) == SN_OK);
            cr_assert(gpu->ops->kv_reserve(gpu, s, need) == SN_OK, "%s", sn_errmsg());
        }
        sn_batch b = {n, tokens, N_SEQS, seq_ids, start, pos, lf};
        cr_assert(cpu->ops->forward(cpu, &b, lc) == SN_OK, "%s", sn_errmsg());
        cr_assert(gpu->ops->forward(gpu, &b, lg) == SN_OK, "%s", sn_errmsg());
        for (int s = 0; s < N_SEQS; s++) {
            const float *rc = lc + (size_t)s * V, *rg = lg + (size_t)s * V;
            double mx = 0, err = 0;
            for (int i = 0; i < V; i++) {
                mx = fmax(mx, fabs(rc[i]));
                err = fmax(err, fabs((double)rg[i] - rc[i]));
            }
            worst = fmax(worst, err / mx);
            cr_expect(err <= 3e-2 * mx, "step %d seq %d: max|cuda - cpu| %.4g > 3e-2 * %.4g", stepi, s, err, mx);
            const int tc = sn_test_argmax(rc, V), tg = sn_test_argmax(rg, V);
            float second = -INFINITY;
            for (int i = 0; i < V; i++)
                if (i != tc && rc[i] > second)
                    second = rc[i];
            if (tc != tg && rc[tc] - second > 6e-2 * mx)
                disagree++;
            pos[s] += start[s + 1] - start[s];
            tokens[s] = tc; /* the next step decodes the CPU's greedy token */
        }
        n = N_SEQS;
        for (int s = 0; s <= N_SEQS; s++)
            start[s] = s;
    }
    fprintf(stderr, "%s: worst relative logits error %.4g, %d greedy disagreements\n", args, worst, disagree);
    cr_expect(disagree == 0);
    cpu->ops->close(cpu);
    gpu->ops->close(gpu);
    sn_model_close(m);
    free(lc);
    free(lg);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect(system(cmd) == 0);
}

static void compare_model(const char *args) { compare_with("make_model.py", "", args); }

Test(cuda_vs_cpu, bf16_gqa)
{
    compare_model("--vocab 300 --hidden 256 --intermediate 344 --layers 2 --heads 4 --kv-heads 2 --head-dim 64 "
                  "--dtype bf16 --seed 1");
}

Test(cuda_vs_cpu, f32_tied_llama3_rope)
{
    compare_model("--vocab 257 --hidden 512 --intermediate 640 --layers 3 --heads 8 --kv-heads 2 --head-dim 64 "
                  "--dtype f32 --tie --llama3-rope --seed 2");
}

Test(cuda_vs_cpu, f16_mha_head_dim_128)
{
    compare_model("--vocab 300 --hidden 256 --intermediate 512 --layers 2 --heads 2 --kv-heads 2 --head-dim 128 "
                  "--dtype f16 --seed 3");
}

/* Quantised GGUF weights (Q4_0, Q4_1, Q8_0, F16, BF16, F32 in turn), dequantised at upload,
 * and llama.cpp's permuted Q/K rows (interleaved RoPE). */
Test(cuda_vs_cpu, gguf_quantised_interleaved_rope)
{
    compare_with("make_gguf.py", ".gguf", "--hidden 256 --heads 4 --kv-heads 2 --ffn 320 --vocab 96 --seed 7");
    compare_with("make_gguf.py", ".gguf", "--hidden 256 --heads 4 --kv-heads 2 --ffn 320 --vocab 96 --seed 8 --tie");
}

/* ---- The engine on the CUDA backend ------------------------------------------------------- */

#define E_SESS 3
#define E_GEN 6

typedef struct engine_run {
    int32_t tokens[E_SESS][E_GEN];
    float *logits; /* (E_SESS, vocab): each session's last row */
    char describe[512];
} engine_run;

static void run_engine(const char *model, const char *backend, int dp, int tp, int32_t vocab, engine_run *r)
{
    sn_engine_opts o = sn_engine_opts_default();
    o.model_dir = model;
    o.backend = backend;
    o.dp = dp;
    o.tp = tp;
    o.threads = 2;
    o.max_sessions = E_SESS;
    o.keep_logits = 1;
    sn_engine *e;
    cr_assert(sn_engine_open(&o, &e) == SN_OK, "%s dp %d tp %d: %s", backend, dp, tp, sn_errmsg());
    snprintf(r->describe, sizeof r->describe, "%s", sn_engine_describe(e));
    sn_session *s[E_SESS];
    for (int i = 0; i < E_SESS; i++) {
        sn_session_opts so = sn_session_opts_default();
        so.no_bos = 1;
        int32_t p[12];
        for (int j = 0; j < 5 + 3 * i; j++)
            p[j] = (i * 53 + j * 17) % vocab;
        cr_assert(sn_session_open(e, &so, &s[i]) == SN_OK, "%s", sn_errmsg());
        cr_assert(sn_session_feed_tokens(s[i], p, (size_t)(5 + 3 * i)) == SN_OK);
        cr_assert(sn_session_generate(s[i], NULL, 0, E_GEN, 0) == SN_OK);
    }
    cr_assert(sn_engine_run(e) == SN_OK, "%s", sn_errmsg());
    r->logits = malloc((size_t)E_SESS * vocab * sizeof *r->logits);
    for (int i = 0; i < E_SESS; i++) {
        size_t n;
        const int32_t *t = sn_session_tokens(s[i], &n);
        cr_assert(n == (size_t)(5 + 3 * i + E_GEN), "session %d: %s", i, sn_session_error(s[i]));
        memcpy(r->tokens[i], t + n - E_GEN, sizeof r->tokens[i]);
        memcpy(r->logits + (size_t)i * vocab, sn_session_logits(s[i], NULL), (size_t)vocab * sizeof(float));
        sn_session_close(s[i]);
    }
    sn_engine_close(e);
}

/* The greedy tokens of a and b agree until the first step where a's two best logits are
 * within margin (a near-tie the backends may break differently); logits within 3e-2. */
static void expect_same(const engine_run *a, const engine_run *b, int32_t vocab, const char *what)
{
    for (int i = 0; i < E_SESS; i++) {
        const float *la = a->logits + (size_t)i * vocab, *lb = b->logits + (size_t)i * vocab;
        double mx = 0, err = 0;
        for (int j = 0; j < vocab; j++) {
            mx = fmax(mx, fabs(la[j]));
            err = fmax(err, fabs((double)la[j] - lb[j]));
        }
        const int same = memcmp(a->tokens[i], b->tokens[i], sizeof a->tokens[i]) == 0;
        fprintf(stderr, "engine %s: session %d tokens %s, last logits max|diff| %.3g of %.3g\n", what, i,
                same ? "equal" : "differ", err, mx);
        if (same)
            cr_expect(err <= 3e-2 * mx, "%s: session %d logits differ by %.4g (max %.4g)", what, i, err, mx);
        else
            cr_expect(same, "%s: session %d generated other tokens", what, i);
    }
}

Test(cuda_vs_cpu, engine_on_cuda_with_replicas_and_shards)
{
    char dir[64] = "/tmp/sn_cuda_engine_XXXXXX", cmd[1024], model[128];
    cr_assert(mkdtemp(dir));
    snprintf(model, sizeof model, "%s/m", dir);
    /* a confident model (large logits): greedy decisions far from ties */
    snprintf(cmd, sizeof cmd,
             "python3 %s/tests/reference/make_model.py %s --vocab 300 --hidden 256 --intermediate 344 --layers 2 "
             "--heads 4 --kv-heads 2 --head-dim 64 --dtype bf16 --seed 4 --tie >/dev/null",
             SN_SOURCE_DIR, model);
    cr_assert(system(cmd) == 0, "%s failed", cmd);
    const int32_t V = 300;
    engine_run cpu, gpu;
    run_engine(model, "cpu", 1, 1, V, &cpu);
    run_engine(model, "cuda", 1, 1, V, &gpu);
    cr_expect(strstr(gpu.describe, "backend cuda") != NULL, "%s", gpu.describe);
    expect_same(&cpu, &gpu, V, "cuda vs cpu");
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) == cudaSuccess && n_dev >= 2) {
        engine_run dp2, tp2;
        run_engine(model, "cuda", 2, 1, V, &dp2);
        cr_expect(strstr(dp2.describe, "dp 2 x tp 1") != NULL, "%s", dp2.describe);
        expect_same(&gpu, &dp2, V, "cuda dp 2 vs dp 1");
        run_engine(model, "cuda", 1, 2, V, &tp2);
        cr_expect(strstr(tp2.describe, "dp 1 x tp 2") != NULL, "%s", tp2.describe);
        expect_same(&gpu, &tp2, V, "cuda tp 2 vs tp 1");
        free(dp2.logits);
        free(tp2.logits);
    } else {
        fprintf(stderr, "engine on cuda: --dp 2 and --tp 2 not run: %d GPU(s)\n", n_dev);
    }
    free(cpu.logits);
    free(gpu.logits);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect(system(cmd) == 0);
}

SN_CUDA_TEST_MAIN()
