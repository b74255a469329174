/*
 * test_cuda_embed.c - sn_cuda_embed against ref/embed_ref.c: f32 and bf16 tables into f32 and
 * bf16 rows, odd hidden sizes, repeated ids, and ids outside the vocabulary (zero rows).
 * Tolerance: none; a gather and a conversion are exact (bf16 output: the reference's value
 * rounded to bf16 the same way).
 */
#include "cuda_test.h"

static void run_case(int32_t vocab, int32_t hidden, int32_t n, sn_cuda_dtype tt, sn_cuda_dtype ot, uint64_t seed)
{
    sn_rng r = {seed};
    const size_t tlen = (size_t)vocab * hidden, olen = (size_t)n * hidden;
    float *table = malloc(tlen * sizeof *table);
    uint16_t *table16 = malloc(tlen * 2);
    for (size_t i = 0; i < tlen; i++) {
        table16[i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -1.0f, 1.0f));
        table[i] = tt == SN_CUDA_BF16 ? sn_ref_bf16_to_f32(table16[i]) : sn_rng_uniform(&r, -1.0f, 1.0f);
    }
    int32_t *tok = malloc((size_t)n * sizeof *tok);
    for (int32_t i = 0; i < n; i++)
        tok[i] = i == 1 ? -1 : i == 2 ? vocab : i == 3 ? vocab - 1 : sn_rng_int(&r, vocab);
    void *d_table = tt == SN_CUDA_F32 ? sn_dev_upload(table, tlen * 4) : sn_dev_upload(table16, tlen * 2);
    int32_t *d_tok = sn_dev_upload(tok, (size_t)n * 4);
    const size_t oes = ot == SN_CUDA_F32 ? 4 : 2;
    void *d_out = sn_dev_alloc(olen * oes);
    LAUNCH(sn_cuda_embed(d_out, ot, d_table, tt, d_tok, n, hidden, vocab, 0));
    float *ref = malloc(olen * sizeof *ref), *got = malloc(olen * sizeof *got);
    sn_ref_embed(ref, table, tok, n, hidden, vocab);
    if (ot == SN_CUDA_F32) {
        sn_dev_download(got, d_out, olen * 4);
    } else {
        uint16_t *g16 = malloc(olen * 2);
        sn_dev_download(g16, d_out, olen * 2);
        for (size_t i = 0; i < olen; i++)
            got[i] = sn_ref_bf16_to_f32(g16[i]);
        free(g16);
    }
    double *want = malloc(olen * sizeof *want);
    for (size_t i = 0; i < olen; i++)
        want[i] = ot == SN_CUDA_BF16 ? sn_ref_round_bf16(ref[i]) : ref[i];
    char what[96];
    snprintf(what, sizeof what, "embed vocab %d hidden %d, %s table, %s out", vocab, hidden,
             tt == SN_CUDA_F32 ? "f32" : "bf16", ot == SN_CUDA_F32 ? "f32" : "bf16");
    cr_expect_eq(sn_test_compare(what, got, want, olen, 0.0, 0.0), 0);
    CU(cudaFree(d_table));
    CU(cudaFree(d_tok));
    CU(cudaFree(d_out));
    free(table), free(table16), free(tok), free(ref), free(got), free(want);
}

Test(cuda_embed, tables_and_outputs_of_both_types)
{
    for (int tt = 0; tt < 2; tt++)
        for (int ot = 0; ot < 2; ot++) {
            run_case(1000, 4099, 37, tt ? SN_CUDA_BF16 : SN_CUDA_F32, ot ? SN_CUDA_BF16 : SN_CUDA_F32, 4000 + tt * 2 + ot);
            run_case(5, 1, 9, tt ? SN_CUDA_BF16 : SN_CUDA_F32, ot ? SN_CUDA_BF16 : SN_CUDA_F32, 4100 + tt * 2 + ot);
        }
}

SN_CUDA_TEST_MAIN()
