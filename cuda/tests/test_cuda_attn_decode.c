/*
 * test_cuda_attn_decode.c - sn_cuda_attn_decode against ref/attn_decode_ref.c (fp64): head
 * sizes 64/96/128/256, GQA groups 1, 2, 3, 4, 8 and 16 with odd head counts, contexts of 0, 1,
 * 15, 16, 17 and other sizes that are not multiples of a KV block or a tile, blocks scattered
 * through the pool, batches small enough that the context is split (and merged) and large
 * enough that it is not, sharp and flat softmaxes.
 * Tolerance: 2e-4 + 8e-3|ref|: fp32 scores and accumulation against fp64, and the output's
 * rounding to bf16 (2^-9 relative); an addressing or masking mistake is off by 0.1 or more.
 */
#include "cuda_test.h"

typedef struct shape {
    int32_t nh, nkv, hd;
} shape;

static void run_case(shape sh, int32_t n_seqs, const int32_t *ctx, float key_gain, uint64_t seed)
{
    sn_rng r = {seed};
    int32_t max_ctx = 0;
    for (int32_t s = 0; s < n_seqs; s++)
        max_ctx = ctx[s] > max_ctx ? ctx[s] : max_ctx;
    const int32_t table_stride = (max_ctx + 15) / 16 + 2, n_blocks = n_seqs * table_stride + 5;
    const size_t pool = (size_t)n_blocks * sh.nkv * 16 * sh.hd;
    uint16_t *kc = malloc(pool * 2), *vc = malloc(pool * 2);
    for (size_t i = 0; i < pool; i++) {
        kc[i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -1.0f, 1.0f) * key_gain);
        vc[i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -1.0f, 1.0f));
    }
    int32_t *perm = malloc((size_t)n_blocks * sizeof *perm);
    for (int32_t i = 0; i < n_blocks; i++)
        perm[i] = i;
    for (int32_t i = n_blocks - 1; i > 0; i--) {
        const int32_t j = sn_rng_int(&r, i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    /* table rows in reverse sequence order; unused entries point at block 0 */
    int32_t *tables = malloc((size_t)n_seqs * table_stride * sizeof *tables), *rows = malloc((size_t)n_seqs * 4);
    for (int32_t i = 0; i < n_seqs * table_stride; i++)
        tables[i] = perm[i];
    for (int32_t s = 0; s < n_seqs; s++)
        rows[s] = n_seqs - 1 - s;
    const int64_t q_stride = (int64_t)sh.nh * sh.hd + 16, out_stride = (int64_t)sh.nh * sh.hd + 8;
    const size_t qlen = (size_t)n_seqs * q_stride, olen = (size_t)n_seqs * out_stride;
    uint16_t *q16 = malloc(qlen * 2);
    float *qf = malloc((size_t)n_seqs * sh.nh * sh.hd * sizeof *qf);
    for (int32_t s = 0; s < n_seqs; s++)
        for (int32_t i = 0; i < sh.nh * sh.hd; i++) {
            q16[s * q_stride + i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -1.0f, 1.0f));
            qf[(size_t)s * sh.nh * sh.hd + i] = sn_ref_bf16_to_f32(q16[s * q_stride + i]);
        }
    const float scale = 1.0f / sqrtf((float)sh.hd);
    uint16_t *d_kc = sn_dev_upload(kc, pool * 2), *d_vc = sn_dev_upload(vc, pool * 2), *d_q = sn_dev_upload(q16, qlen * 2);
    int32_t *d_tables = sn_dev_upload(tables, (size_t)n_seqs * table_stride * 4), *d_rows = sn_dev_upload(rows, (size_t)n_seqs * 4);
    int32_t *d_ctx = sn_dev_upload(ctx, (size_t)n_seqs * 4);
    uint16_t *d_out = sn_dev_alloc(olen * 2);
    CU(cudaMemset(d_out, 0xff, olen * 2)); /* NaN: an unwritten output shows */
    const sn_cuda_paged_kv kv = {.k_cache = d_kc, .v_cache = d_vc, .block_tables = d_tables, .table_stride = table_stride,
                                 .n_heads = sh.nh, .n_kv_heads = sh.nkv, .head_dim = sh.hd, .scale = scale};
    const size_t ws_bytes = sn_cuda_attn_decode_workspace(n_seqs, sh.nh, sh.hd, sh.nkv, max_ctx);
    void *d_ws = ws_bytes ? sn_dev_alloc(ws_bytes) : NULL;
    LAUNCH(sn_cuda_attn_decode(d_out, out_stride, d_q, q_stride, &kv, d_rows, d_ctx, n_seqs, max_ctx, d_ws, ws_bytes, 0));

    const size_t n_out = (size_t)n_seqs * sh.nh * sh.hd;
    double *want = malloc(n_out * sizeof *want);
    sn_ref_attn_decode(want, qf, kc, vc, tables, table_stride, rows, ctx, n_seqs, sh.nh, sh.nkv, sh.hd, scale);
    uint16_t *o16 = malloc(olen * 2);
    sn_dev_download(o16, d_out, olen * 2);
    float *got = malloc(n_out * sizeof *got);
    for (int32_t s = 0; s < n_seqs; s++)
        for (int32_t i = 0; i < sh.nh * sh.hd; i++)
            got[(size_t)s * sh.nh * sh.hd + i] = sn_ref_bf16_to_f32(o16[s * out_stride + i]);
    char what[128];
    snprintf(what, sizeof what, "decode %d seqs, %d/%d heads x %d, max ctx %d, workspace %zu bytes", n_seqs, sh.nh, sh.nkv,
             sh.hd, max_ctx, ws_bytes);
    cr_expect_eq(sn_test_compare(what, got, want, n_out, 2e-4, 8e-3), 0);
    CU(cudaFree(d_kc));
    CU(cudaFree(d_vc));
    CU(cudaFree(d_q));
    CU(cudaFree(d_tables));
    CU(cudaFree(d_rows));
    CU(cudaFree(d_ctx));
    CU(cudaFree(d_out));
    if (d_ws)
        CU(cudaFree(d_ws));
    free(kc), free(vc), free(perm), free(tables), free(rows), free(q16), free(qf), free(want), free(o16), free(got);
}

static const shape shapes[] = {{8, 8, 64}, {14, 7, 128}, {12, 3, 96}, {32, 4, 128}, {16, 1, 64}, {8, 2, 256}, {40, 5, 128}, {15, 5, 128}};

Test(cuda_attn_decode, few_sequences_split_contexts)
{
    const int32_t quick = sn_test_quick();
    const int32_t ctx[] = {1, 15, 16, 17, 100, 4099, 0, quick ? 700 : 20000};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        run_case(shapes[s], 8, ctx, s % 2 ? 4.0f : 1.0f, 6000 + s);
}

Test(cuda_attn_decode, many_sequences_one_pass)
{
    enum { N = 300 };
    int32_t ctx[N];
    sn_rng r = {6100};
    for (int i = 0; i < N; i++)
        ctx[i] = 1 + sn_rng_int(&r, sn_test_quick() ? 64 : 600);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        run_case(shapes[s], sn_test_quick() ? 40 : N, ctx, 2.0f, 6200 + s);
}

/* A graph captured for max_ctx serves any shorter contexts: replays after the context lengths
 * change in device memory match direct launches bit for bit. */
Test(cuda_attn_decode, graph_for_max_ctx_serves_shorter_contexts)
{
    enum { S = 3, NH = 8, NKV = 2, HD = 128, MAX_CTX = 3000 };
    sn_rng r = {6300};
    const int32_t table_stride = (MAX_CTX + 15) / 16, n_blocks = S * table_stride;
    const size_t pool = (size_t)n_blocks * NKV * 16 * HD;
    uint16_t *kc = malloc(pool * 2), *q = malloc((size_t)S * NH * HD * 2);
    for (size_t i = 0; i < pool; i++)
        kc[i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -1.0f, 1.0f));
    for (size_t i = 0; i < (size_t)S * NH * HD; i++)
        q[i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -1.0f, 1.0f));
    int32_t tables[S * ((MAX_CTX + 15) / 16)], rows[S] = {0, 1, 2};
    for (int32_t i = 0; i < n_blocks; i++)
        tables[i] = (i * 7) % n_blocks;
    uint16_t *d_kc = sn_dev_upload(kc, pool * 2), *d_q = sn_dev_upload(q, (size_t)S * NH * HD * 2);
    int32_t *d_tables = sn_dev_upload(tables, sizeof tables), *d_rows = sn_dev_upload(rows, sizeof rows);
    int32_t *d_ctx = sn_dev_alloc(S * 4);
    uint16_t *d_out = sn_dev_alloc((size_t)S * NH * HD * 2), *d_out2 = sn_dev_alloc((size_t)S * NH * HD * 2);
    const sn_cuda_paged_kv kv = {.k_cache = d_kc, .v_cache = d_kc, .block_tables = d_tables, .table_stride = table_stride,
                                 .n_heads = NH, .n_kv_heads = NKV, .head_dim = HD, .scale = 0.088f};
    const size_t ws_bytes = sn_cuda_attn_decode_workspace(S, NH, HD, NKV, MAX_CTX);
    void *d_ws = ws_bytes ? sn_dev_alloc(ws_bytes) : NULL;
    cudaStream_t st;
    CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    /* a backend's warm-up launch before capturing */
    CU(cudaMemset(d_ctx, 0, S * 4));
    LAUNCH(sn_cuda_attn_decode(d_out, NH * HD, d_q, NH * HD, &kv, d_rows, d_ctx, S, MAX_CTX, d_ws, ws_bytes, st));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    const cudaError_t launched = sn_cuda_attn_decode(d_out, NH * HD, d_q, NH * HD, &kv, d_rows, d_ctx, S, MAX_CTX, d_ws,
                                                     ws_bytes, st);
    CU(cudaStreamEndCapture(st, &graph));
    CU(launched);
    CU(cudaGraphInstantiate(&exec, graph, 0));
    const int32_t ctx_steps[3][S] = {{1, 17, 3000}, {2999, 64, 65}, {0, 1000, 1}};
    uint16_t *a = malloc((size_t)S * NH * HD * 2), *b = malloc((size_t)S * NH * HD * 2);
    for (int k = 0; k < 3; k++) {
        CU(cudaMemcpyAsync(d_ctx, ctx_steps[k], S * 4, cudaMemcpyHostToDevice, st));
        CU(cudaGraphLaunch(exec, st));
        CU(sn_cuda_attn_decode(d_out2, NH * HD, d_q, NH * HD, &kv, d_rows, d_ctx, S, MAX_CTX, d_ws, ws_bytes, st));
        CU(cudaMemcpyAsync(a, d_out, (size_t)S * NH * HD * 2, cudaMemcpyDeviceToHost, st));
        CU(cudaMemcpyAsync(b, d_out2, (size_t)S * NH * HD * 2, cudaMemcpyDeviceToHost, st));
        CU(cudaStreamSynchronize(st));
        cr_expect(memcmp(a, b, (size_t)S * NH * HD * 2) == 0, "replay %d differs from a direct launch", k);
    }
    CU(cudaGraphExecDestroy(exec));
    CU(cudaGraphDestroy(graph));
    CU(cudaStreamDestroy(st));
    CU(cudaFree(d_kc));
    CU(cudaFree(d_q));
    CU(cudaFree(d_tables));
    CU(cudaFree(d_rows));
    CU(cudaFree(d_ctx));
    CU(cudaFree(d_out));
    CU(cudaFree(d_out2));
    if (d_ws)
        CU(cudaFree(d_ws));
    free(kc), free(q), free(a), free(b);
}

Test(cuda_attn_decode, rejects_unsupported_shapes)
{
    uint16_t *d = sn_dev_alloc(4096);
    int32_t *di = sn_dev_alloc(4096);
    sn_cuda_paged_kv kv = {.k_cache = d, .v_cache = d, .block_tables = di, .table_stride = 1, .n_heads = 8,
                           .n_kv_heads = 8, .head_dim = 80, .scale = 1.0f};
    cr_expect_eq(sn_cuda_attn_decode(d, 640, d, 640, &kv, di, di, 1, 16, NULL, 0, 0), cudaErrorInvalidValue, "head_dim 80");
    kv.head_dim = 64;
    kv.n_heads = 64;
    kv.n_kv_heads = 2;
    cr_expect_eq(sn_cuda_attn_decode(d, 4096, d, 4096, &kv, di, di, 1, 16, NULL, 0, 0), cudaErrorInvalidValue, "group 32");
    kv.n_heads = 9;
    kv.n_kv_heads = 2;
    cr_expect_eq(sn_cuda_attn_decode(d, 640, d, 640, &kv, di, di, 1, 16, NULL, 0, 0), cudaErrorInvalidValue, "9 / 2 heads");
    CU(cudaFree(d));
    CU(cudaFree(di));
}

SN_CUDA_TEST_MAIN()
