/*
 * test_cuda_swiglu.c - sn_cuda_swiglu against ref/swiglu_ref.c: gate and up as the two halves
 * of one fused buffer (strided rows), odd widths, f32 and bf16, inputs in [-12, 12] (both
 * saturated ends of silu).
 * Tolerances: f32 1e-7 + 4e-6|ref| (expf within 2 ulp, a division and two products);
 * bf16 1e-6 + 5e-3|ref| (one bf16 rounding).
 */
#include "cuda_test.h"

static void run_case(int32_t n, int32_t cols, sn_cuda_dtype type, uint64_t seed)
{
    sn_rng r = {seed};
    const int64_t in_stride = 2 * (int64_t)cols + 1, out_stride = cols + 3;
    const size_t in_len = (size_t)n * in_stride, out_len = (size_t)n * out_stride;
    float *in = malloc(in_len * sizeof *in);
    uint16_t *in16 = malloc(in_len * 2);
    for (size_t i = 0; i < in_len; i++) {
        in16[i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -12.0f, 12.0f));
        in[i] = type == SN_CUDA_BF16 ? sn_ref_bf16_to_f32(in16[i]) : sn_rng_uniform(&r, -12.0f, 12.0f);
    }
    const size_t es = type == SN_CUDA_F32 ? 4 : 2;
    char *d_in = type == SN_CUDA_F32 ? sn_dev_upload(in, in_len * 4) : sn_dev_upload(in16, in_len * 2);
    char *d_out = sn_dev_alloc(out_len * es);
    CU(cudaMemset(d_out, 0, out_len * es));
    LAUNCH(sn_cuda_swiglu(d_out, d_in, d_in + (size_t)cols * es, type, n, cols, out_stride, in_stride, in_stride, 0));
    float *want_f = calloc(out_len, sizeof *want_f), *got = malloc(out_len * sizeof *got);
    sn_ref_swiglu(want_f, in, in + cols, n, cols, out_stride, in_stride, in_stride);
    if (type == SN_CUDA_F32) {
        sn_dev_download(got, d_out, out_len * 4);
    } else {
        uint16_t *g16 = malloc(out_len * 2);
        sn_dev_download(g16, d_out, out_len * 2);
        for (size_t i = 0; i < out_len; i++)
            got[i] = sn_ref_bf16_to_f32(g16[i]);
        free(g16);
    }
    double *want = malloc(out_len * sizeof *want);
    for (size_t i = 0; i < out_len; i++)
        want[i] = want_f[i];
    char what[64];
    snprintf(what, sizeof what, "swiglu %dx%d %s", n, cols, type == SN_CUDA_F32 ? "f32" : "bf16");
    const double rtol = type == SN_CUDA_F32 ? 4e-6 : 5e-3, atol = type == SN_CUDA_F32 ? 1e-7 : 1e-6;
    cr_expect_eq(sn_test_compare(what, got, want, out_len, atol, rtol), 0);
    CU(cudaFree(d_in));
    CU(cudaFree(d_out));
    free(in), free(in16), free(want_f), free(got), free(want);
}

Test(cuda_swiglu, fused_halves_odd_widths)
{
    const int32_t shapes[][2] = {{1, 1}, {3, 17}, {7, 11008}, {64, 1407}, {2, 14336}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ty = 0; ty < 2; ty++)
            run_case(shapes[s][0], shapes[s][1], ty ? SN_CUDA_BF16 : SN_CUDA_F32, 3000 + s * 2 + ty);
}

SN_CUDA_TEST_MAIN()
