/*
 * test_cuda_sample.c - sn_cuda_sample against the CPU sampler (core/src/sampler.c, through
 * ref/sample_ref.c): rows of vocabulary 128256 (and small odd vocabularies) with gaussian,
 * bf16-quantised (ties) and peaked logits, allowed-token masks from none to a single id,
 * repetition penalties from seen bitsets, greedy and every filter, several seeds and steps.
 * Tolerance: none for the token (the kernel must return sn_sample()'s); the distribution must
 * have the same support and each probability within 3.6e-7|ref|, three float ulps: the
 * softmax denominator is a double sum in another order than the CPU's (about 1e-14 apart,
 * which moves about one probability in 2e7 by an ulp), the final normalising sum is exact
 * fixed point on the GPU and a double sum on the CPU, and each side rounds its quotient.
 */
#include "cuda_test.h"

typedef struct row_case {
    sn_cuda_sample_params prm;
    int logit_kind, mask_kind, seen_pct;
} row_case;

static void run_batch(int32_t vocab, int32_t rows, int use_masks, uint64_t seed)
{
    sn_rng r = {seed};
    const int32_t words = (vocab + 63) / 64;
    const int64_t ld = vocab + 5;
    float *logits = malloc((size_t)rows * ld * sizeof *logits);
    uint64_t *allowed = malloc((size_t)rows * words * 8), *seen = malloc((size_t)rows * words * 8);
    row_case *cases = malloc((size_t)rows * sizeof *cases);
    const float temps[] = {0.0f, 0.7f, 1.0f, 1.3f, 0.05f};
    const int32_t ks[] = {0, 1, 2, 40, 1000, vocab - 1, vocab + 5};
    const float tps[] = {1.0f, 0.9f, 0.5f, 0.01f, 0.999f};
    const float mps[] = {0.0f, 0.0f, 0.05f, 0.5f};
    const float reps[] = {1.0f, 1.3f, 0.8f};
    for (int32_t i = 0; i < rows; i++) {
        row_case *c = &cases[i];
        c->prm = (sn_cuda_sample_params){.temperature = temps[sn_rng_int(&r, 5)], .top_k = ks[sn_rng_int(&r, 7)],
                                         .top_p = tps[sn_rng_int(&r, 5)], .min_p = mps[sn_rng_int(&r, 4)],
                                         .repetition_penalty = reps[sn_rng_int(&r, 3)], .seed = sn_rng_next(&r)};
        c->logit_kind = sn_rng_int(&r, 4);
        c->mask_kind = use_masks ? sn_rng_int(&r, 5) : 0;
        c->seen_pct = sn_rng_int(&r, 3) * 10;
        sn_fill_logits(logits + i * ld, vocab, c->logit_kind, &r);
        sn_fill_bits(allowed + (size_t)i * words, vocab, c->mask_kind, 50, &r);
        sn_fill_bits(seen + (size_t)i * words, vocab, 1, c->seen_pct, &r);
    }
    float *d_logits = sn_dev_upload(logits, (size_t)rows * ld * 4);
    uint64_t *d_allowed = use_masks ? sn_dev_upload(allowed, (size_t)rows * words * 8) : NULL;
    uint64_t *d_seen = sn_dev_upload(seen, (size_t)rows * words * 8);
    sn_cuda_sample_params *prm = malloc((size_t)rows * sizeof *prm);
    sn_cuda_sample_params *d_prm = sn_dev_alloc((size_t)rows * sizeof *prm);
    int32_t *d_tok = sn_dev_alloc((size_t)rows * 4), *tok = malloc((size_t)rows * 4);
    float *d_probs = sn_dev_alloc((size_t)rows * vocab * 4), *probs = malloc((size_t)rows * vocab * 4);
    float *ref_p = malloc((size_t)vocab * 4);
    const size_t ws_bytes = sn_cuda_sample_workspace(rows, vocab);
    void *d_ws = sn_dev_alloc(ws_bytes);
    int bad_tokens = 0, bad_dists = 0, draws = 0;
    for (int step = 0; step < 3; step++) {
        for (int32_t i = 0; i < rows; i++) {
            prm[i] = cases[i].prm;
            prm[i].step = (uint64_t)step * 7919 + (uint64_t)i;
        }
        CU(cudaMemcpy(d_prm, prm, (size_t)rows * sizeof *prm, cudaMemcpyHostToDevice));
        LAUNCH(sn_cuda_sample(d_tok, d_probs, d_logits, ld, d_allowed, d_seen, d_prm, rows, vocab, d_ws, ws_bytes, 0));
        sn_dev_download(tok, d_tok, (size_t)rows * 4);
        sn_dev_download(probs, d_probs, (size_t)rows * vocab * 4);
        for (int32_t i = 0; i < rows; i++) {
            const row_case *c = &cases[i];
            const int32_t want = sn_ref_sample(ref_p, logits + i * ld, use_masks ? allowed + (size_t)i * words : NULL,
                                               seen + (size_t)i * words, prm[i].temperature, prm[i].top_k, prm[i].top_p,
                                               prm[i].min_p, prm[i].repetition_penalty, prm[i].seed, prm[i].step, vocab);
            draws++;
            if (tok[i] != want) {
                bad_tokens++;
                fprintf(stderr, "  vocab %d row %d step %d: got %d, want %d (T %g k %d p %g min_p %g rep %g logits %d mask %d)\n",
                        vocab, i, step, tok[i], want, (double)prm[i].temperature, prm[i].top_k, (double)prm[i].top_p,
                        (double)prm[i].min_p, (double)prm[i].repetition_penalty, c->logit_kind, c->mask_kind);
            }
            const float *got_p = probs + (size_t)i * vocab;
            for (int32_t j = 0; j < vocab; j++)
                if ((got_p[j] == 0.0f) != (ref_p[j] == 0.0f) || fabs((double)got_p[j] - ref_p[j]) > 3.6e-7 * ref_p[j]) {
                    bad_dists++;
                    fprintf(stderr, "  vocab %d row %d step %d: p[%d] = %.9g, want %.9g\n", vocab, i, step, j,
                            (double)got_p[j], (double)ref_p[j]);
                    break;
                }
        }
    }
    fprintf(stderr, "sample vocab %d, %d rows, masks %s: %d draws, %d tokens and %d distributions differ from sn_sample\n",
            vocab, rows, use_masks ? "on" : "off", draws, bad_tokens, bad_dists);
    cr_expect_eq(bad_tokens, 0);
    cr_expect_eq(bad_dists, 0);
    CU(cudaFree(d_logits));
    if (d_allowed)
        CU(cudaFree(d_allowed));
    CU(cudaFree(d_seen));
    CU(cudaFree(d_prm));
    CU(cudaFree(d_tok));
    CU(cudaFree(d_probs));
    CU(cudaFree(d_ws));
    free(logits), free(allowed), free(seen), free(cases), free(prm), free(tok), free(probs), free(ref_p);
}

Test(cuda_sample, llama3_vocabulary, .timeout = 600)
{
    run_batch(128256, sn_test_quick() ? 4 : 48, 1, 8000);
    run_batch(128256, sn_test_quick() ? 2 : 8, 0, 8001);
}

Test(cuda_sample, small_odd_vocabularies)
{
    const int32_t vocabs[] = {1, 2, 3, 63, 64, 65, 1000, 4099};
    for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++)
        run_batch(vocabs[v], 24, 1, 8100 + v);
}

/* Captured once in a CUDA graph and replayed with new parameters (the step, written to device
 * memory between replays), the kernel gives what direct launches give: no host sync inside. */
Test(cuda_sample, replays_from_a_cuda_graph)
{
    enum { ROWS = 8, VOCAB = 128256 };
    sn_rng r = {8200};
    float *logits = malloc((size_t)ROWS * VOCAB * 4);
    for (size_t i = 0; i < (size_t)ROWS * VOCAB; i++)
        logits[i] = sn_rng_uniform(&r, -8.0f, 8.0f);
    float *d_logits = sn_dev_upload(logits, (size_t)ROWS * VOCAB * 4);
    sn_cuda_sample_params prm[ROWS];
    for (int i = 0; i < ROWS; i++)
        prm[i] = (sn_cuda_sample_params){.temperature = 0.9f, .top_k = i * 20, .top_p = 0.95f, .min_p = 0.01f * i,
                                         .repetition_penalty = 1.0f, .seed = 77 + (uint64_t)i};
    sn_cuda_sample_params *d_prm = sn_dev_upload(prm, sizeof prm);
    int32_t *d_tok = sn_dev_alloc(ROWS * 4);
    const size_t ws_bytes = sn_cuda_sample_workspace(ROWS, VOCAB);
    void *d_ws = sn_dev_alloc(ws_bytes);
    cudaStream_t st;
    CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    const cudaError_t launched = sn_cuda_sample(d_tok, NULL, d_logits, VOCAB, NULL, NULL, d_prm, ROWS, VOCAB, d_ws, ws_bytes, st);
    CU(cudaStreamEndCapture(st, &graph));
    CU(launched);
    CU(cudaGraphInstantiate(&exec, graph, 0));
    for (int step = 0; step < 5; step++) {
        for (int i = 0; i < ROWS; i++)
            prm[i].step = (uint64_t)step;
        CU(cudaMemcpyAsync(d_prm, prm, sizeof prm, cudaMemcpyHostToDevice, st));
        CU(cudaGraphLaunch(exec, st));
        int32_t tok[ROWS];
        CU(cudaMemcpyAsync(tok, d_tok, sizeof tok, cudaMemcpyDeviceToHost, st));
        CU(cudaStreamSynchronize(st));
        for (int i = 0; i < ROWS; i++) {
            const int32_t want = sn_ref_sample(NULL, logits + (size_t)i * VOCAB, NULL, NULL, prm[i].temperature, prm[i].top_k,
                                               prm[i].top_p, prm[i].min_p, 1.0f, prm[i].seed, prm[i].step, VOCAB);
            cr_expect_eq(tok[i], want, "graph replay %d row %d: got %d, want %d", step, i, tok[i], want);
        }
    }
    CU(cudaGraphExecDestroy(exec));
    CU(cudaGraphDestroy(graph));
    CU(cudaStreamDestroy(st));
    CU(cudaFree(d_logits));
    CU(cudaFree(d_prm));
    CU(cudaFree(d_tok));
    CU(cudaFree(d_ws));
    free(logits);
}

/* Rows with no finite allowed logit, and rows with one or no allowed id: the lowest allowed
 * id (where the CPU sampler's softmax would divide 0 by 0), -1 when nothing is allowed, for
 * greedy and sampling parameters alike. */
Test(cuda_sample, rows_without_a_finite_allowed_logit)
{
    enum { ROWS = 6, VOCAB = 1000, WORDS = (VOCAB + 63) / 64 };
    static float logits[ROWS * VOCAB];
    static uint64_t allowed[ROWS * WORDS], seen[ROWS * WORDS];
    sn_rng r = {8300};
    for (int i = 0; i < ROWS; i++) {
        float *lg = logits + (size_t)i * VOCAB;
        uint64_t *al = allowed + (size_t)i * WORDS;
        for (int j = 0; j < VOCAB; j++)
            lg[j] = i < 2 ? -INFINITY : sn_rng_uniform(&r, -4.0f, 4.0f);
        memset(al, i == 4 ? 0 : (i < 2 ? 0xff : 0), WORDS * sizeof *al);
        if (i == 2 || i == 3) { /* only ids 10 and 500 allowed, both -inf */
            lg[10] = lg[500] = -INFINITY;
            al[10 / 64] |= 1ull << (10 % 64);
            al[500 / 64] |= 1ull << (500 % 64);
        }
        if (i == 5)
            al[999 / 64] |= 1ull << (999 % 64);
    }
    memset(seen, 0, sizeof seen);
    seen[3 * WORDS + 10 / 64] |= 1ull << (10 % 64);
    const sn_cuda_sample_params prm[ROWS] = {
        {.temperature = 0.8f, .top_k = 5, .top_p = 0.5f, .min_p = 0.1f, .repetition_penalty = 1.0f, .seed = 1},
        {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f, .repetition_penalty = 1.0f, .seed = 2},
        {.temperature = 1.0f, .top_k = 0, .top_p = 0.9f, .min_p = 0.0f, .repetition_penalty = 1.0f, .seed = 3},
        {.temperature = 0.7f, .top_k = 1, .top_p = 1.0f, .min_p = 0.0f, .repetition_penalty = 1.3f, .seed = 4},
        {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f, .repetition_penalty = 1.0f, .seed = 5},
        {.temperature = 1.0f, .top_k = 3, .top_p = 0.5f, .min_p = 0.5f, .repetition_penalty = 1.0f, .seed = 6},
    };
    const int32_t expect[ROWS] = {0, 0, 10, 10, -1, 999};
    float *d_logits = sn_dev_upload(logits, sizeof logits);
    uint64_t *d_allowed = sn_dev_upload(allowed, sizeof allowed), *d_seen = sn_dev_upload(seen, sizeof seen);
    sn_cuda_sample_params *d_prm = sn_dev_upload(prm, sizeof prm);
    int32_t *d_tok = sn_dev_alloc(ROWS * 4), tok[ROWS];
    const size_t ws_bytes = sn_cuda_sample_workspace(ROWS, VOCAB);
    void *d_ws = sn_dev_alloc(ws_bytes);
    LAUNCH(sn_cuda_sample(d_tok, NULL, d_logits, VOCAB, d_allowed, d_seen, d_prm, ROWS, VOCAB, d_ws, ws_bytes, 0));
    sn_dev_download(tok, d_tok, sizeof tok);
    for (int i = 0; i < ROWS; i++) {
        const int32_t want = sn_ref_sample(NULL, logits + (size_t)i * VOCAB, allowed + (size_t)i * WORDS,
                                           seen + (size_t)i * WORDS, prm[i].temperature, prm[i].top_k, prm[i].top_p,
                                           prm[i].min_p, prm[i].repetition_penalty, prm[i].seed, 0, VOCAB);
        cr_expect_eq(want, expect[i], "row %d: the CPU sampler gives %d, expected %d", i, want, expect[i]);
        cr_expect_eq(tok[i], want, "row %d: got %d, want %d", i, tok[i], want);
    }
    CU(cudaFree(d_logits));
    CU(cudaFree(d_allowed));
    CU(cudaFree(d_seen));
    CU(cudaFree(d_prm));
    CU(cudaFree(d_tok));
    CU(cudaFree(d_ws));
}

/* A NaN or +inf anywhere in a row, allowed or masked, is SN_CUDA_TOKEN_NONFINITE; -inf is not. */
Test(cuda_sample, nan_or_infinite_rows_are_flagged)
{
    enum { ROWS = 5, VOCAB = 5000, WORDS = (VOCAB + 63) / 64 };
    static float logits[ROWS * VOCAB], probs[ROWS * VOCAB];
    static uint64_t allowed[ROWS * WORDS];
    sn_rng r = {8400};
    for (int i = 0; i < ROWS * VOCAB; i++)
        logits[i] = sn_rng_uniform(&r, -4.0f, 4.0f);
    memset(allowed, 0xff, sizeof allowed);
    logits[0 * VOCAB + 4321] = NAN;              /* allowed */
    logits[1 * VOCAB + 17] = NAN;                /* masked out */
    allowed[1 * WORDS + 17 / 64] &= ~(1ull << (17 % 64));
    logits[2 * VOCAB + 4999] = INFINITY;
    logits[3 * VOCAB + 5] = -INFINITY;           /* a plain -inf: sampled as usual */
    const sn_cuda_sample_params p = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
                                     .repetition_penalty = 1.0f, .seed = 7};
    sn_cuda_sample_params prm[ROWS];
    for (int i = 0; i < ROWS; i++)
        prm[i] = p;
    prm[4].temperature = 0.0f; /* greedy on a clean row */
    float *d_logits = sn_dev_upload(logits, sizeof logits), *d_probs = sn_dev_alloc(sizeof probs);
    uint64_t *d_allowed = sn_dev_upload(allowed, sizeof allowed);
    sn_cuda_sample_params *d_prm = sn_dev_upload(prm, sizeof prm);
    int32_t *d_tok = sn_dev_alloc(ROWS * 4), tok[ROWS];
    const size_t ws_bytes = sn_cuda_sample_workspace(ROWS, VOCAB);
    void *d_ws = sn_dev_alloc(ws_bytes);
    LAUNCH(sn_cuda_sample(d_tok, d_probs, d_logits, VOCAB, d_allowed, NULL, d_prm, ROWS, VOCAB, d_ws, ws_bytes, 0));
    sn_dev_download(tok, d_tok, sizeof tok);
    sn_dev_download(probs, d_probs, sizeof probs);
    for (int i = 0; i < 3; i++)
        cr_expect_eq(tok[i], SN_CUDA_TOKEN_NONFINITE, "row %d: got %d", i, tok[i]);
    int nonzero = 0;
    for (int j = 0; j < 3 * VOCAB; j++)
        nonzero += probs[j] != 0.0f;
    cr_expect_eq(nonzero, 0, "%d probabilities of the flagged rows are not 0", nonzero);
    for (int i = 3; i < ROWS; i++) {
        const int32_t want = sn_ref_sample(NULL, logits + (size_t)i * VOCAB, allowed + (size_t)i * WORDS, NULL,
                                           prm[i].temperature, prm[i].top_k, prm[i].top_p, prm[i].min_p,
                                           prm[i].repetition_penalty, prm[i].seed, 0, VOCAB);
        cr_expect_eq(tok[i], want, "row %d: got %d, want %d", i, tok[i], want);
    }
    CU(cudaFree(d_logits));
    CU(cudaFree(d_probs));
    CU(cudaFree(d_allowed));
    CU(cudaFree(d_prm));
    CU(cudaFree(d_tok));
    CU(cudaFree(d_ws));
}

Test(cuda_sample, rejects_bad_arguments)
{
    int32_t *d = sn_dev_alloc(4096);
    cr_expect_eq(sn_cuda_sample(d, NULL, (float *)d, 10, NULL, NULL, (sn_cuda_sample_params *)d, 1, 10, d, 8, 0),
                 cudaErrorInvalidValue, "workspace too small");
    cr_expect_eq(sn_cuda_sample(d, NULL, (float *)d, 9, NULL, NULL, (sn_cuda_sample_params *)d, 1, 10, d, 4096, 0),
                 cudaErrorInvalidValue, "logits stride below the vocabulary");
    cr_expect_eq(sn_cuda_sample(d, NULL, (float *)d, 10, NULL, NULL, (sn_cuda_sample_params *)d, 0, 10, NULL, 0, 0),
                 cudaSuccess, "no rows");
    CU(cudaFree(d));
}

SN_CUDA_TEST_MAIN()
