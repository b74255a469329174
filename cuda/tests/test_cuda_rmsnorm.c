/*
 * test_cuda_rmsnorm.c - sn_cuda_rmsnorm against ref/rmsnorm_ref.c on odd row sizes, with and
 * without the residual add (f32 and bf16 deltas), f32 and bf16 outputs.
 * Tolerances: the updated residual is exact (one f32 add, as the reference); the output
 * within 1e-6 + 2e-5|ref| in f32 (fp32 sum of squares against fp64), 1e-5 + 5e-3|ref| in bf16
 * (one rounding to 8 bits of mantissa, 2^-9 relative, on top).
 */
#include "cuda_test.h"

static void run_case(int32_t n, int32_t dim, int delta_kind, sn_cuda_dtype out_type, uint64_t seed)
{
    sn_rng r = {seed};
    const size_t len = (size_t)n * dim;
    float *x = malloc(len * sizeof *x), *delta = malloc(len * sizeof *delta), *w = malloc((size_t)dim * sizeof *w);
    uint16_t *delta16 = malloc(len * sizeof *delta16);
    for (size_t i = 0; i < len; i++) {
        x[i] = sn_rng_uniform(&r, -2.0f, 2.0f);
        delta16[i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -1.0f, 1.0f));
        delta[i] = delta_kind == 2 ? sn_ref_bf16_to_f32(delta16[i]) : sn_rng_uniform(&r, -1.0f, 1.0f);
    }
    for (int32_t j = 0; j < dim; j++)
        w[j] = sn_rng_uniform(&r, 0.5f, 1.5f);
    const float eps = 1e-5f;

    float *d_x = sn_dev_upload(x, len * sizeof *x), *d_w = sn_dev_upload(w, (size_t)dim * sizeof *w);
    void *d_delta = delta_kind == 2 ? sn_dev_upload(delta16, len * 2) : sn_dev_upload(delta, len * 4);
    const size_t out_es = out_type == SN_CUDA_F32 ? 4 : 2;
    void *d_out = sn_dev_alloc(len * out_es);
    LAUNCH(sn_cuda_rmsnorm(d_out, out_type, d_x, delta_kind ? d_delta : NULL,
                           delta_kind == 2 ? SN_CUDA_BF16 : SN_CUDA_F32, d_w, n, dim, eps, 0));

    float *ref_out = malloc(len * sizeof *ref_out);
    sn_ref_rmsnorm(ref_out, x, delta_kind ? delta : NULL, w, n, dim, eps);
    float *got_res = malloc(len * sizeof *got_res), *got = malloc(len * sizeof *got);
    sn_dev_download(got_res, d_x, len * sizeof *got_res);
    if (out_type == SN_CUDA_F32) {
        sn_dev_download(got, d_out, len * 4);
    } else {
        uint16_t *g16 = malloc(len * 2);
        sn_dev_download(g16, d_out, len * 2);
        for (size_t i = 0; i < len; i++)
            got[i] = sn_ref_bf16_to_f32(g16[i]);
        free(g16);
    }
    double *want = malloc(len * sizeof *want), *want_res = malloc(len * sizeof *want_res);
    for (size_t i = 0; i < len; i++) {
        want[i] = ref_out[i];
        want_res[i] = x[i];
    }
    char what[96];
    snprintf(what, sizeof what, "rmsnorm %dx%d delta %d out %s residual", n, dim, delta_kind,
             out_type == SN_CUDA_F32 ? "f32" : "bf16");
    cr_expect_eq(sn_test_compare(what, got_res, want_res, len, 0.0, 0.0), 0);
    snprintf(what, sizeof what, "rmsnorm %dx%d delta %d out %s", n, dim, delta_kind, out_type == SN_CUDA_F32 ? "f32" : "bf16");
    const double rtol = out_type == SN_CUDA_F32 ? 2e-5 : 5e-3, atol = out_type == SN_CUDA_F32 ? 1e-6 : 1e-5;
    cr_expect_eq(sn_test_compare(what, got, want, len, atol, rtol), 0);

    CU(cudaFree(d_x));
    CU(cudaFree(d_w));
    CU(cudaFree(d_delta));
    CU(cudaFree(d_out));
    free(x), free(delta), free(delta16), free(w), free(ref_out), free(got_res), free(got), free(want), free(want_res);
}

Test(cuda_rmsnorm, odd_shapes_all_types)
{
    const int32_t shapes[][2] = {{1, 1}, {3, 7}, {5, 4099}, {2, 8192}, {17, 129}, {64, 4096}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int dk = 0; dk < 3; dk++)
            for (int ot = 0; ot < 2; ot++)
                run_case(shapes[s][0], shapes[s][1], dk, ot ? SN_CUDA_BF16 : SN_CUDA_F32, 1000 + s * 10 + dk * 2 + ot);
}

Test(cuda_rmsnorm, rejects_bad_arguments)
{
    float *d = sn_dev_alloc(64);
    cr_expect_eq(sn_cuda_rmsnorm(d, SN_CUDA_F32, d, NULL, SN_CUDA_F32, d, 1, 4, 1e-5f, 0), cudaErrorInvalidValue,
                 "out aliasing residual");
    cr_expect_eq(sn_cuda_rmsnorm(d + 4, SN_CUDA_F32, d, NULL, SN_CUDA_F32, d, 1, 0, 1e-5f, 0), cudaErrorInvalidValue);
    cr_expect_eq(sn_cuda_rmsnorm(d + 4, SN_CUDA_F32, d, NULL, SN_CUDA_F32, d, 0, 4, 1e-5f, 0), cudaSuccess);
    CU(cudaFree(d));
}

SN_CUDA_TEST_MAIN()
