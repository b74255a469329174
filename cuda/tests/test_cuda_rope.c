/*
 * test_cuda_rope.c - sn_cuda_rope against ref/rope_ref.c: both pair layouts, head sizes 2 to
 * 256, odd head counts, rows strided as in a fused QKV buffer (the elements between rows must
 * stay untouched), positions up to 2^17 (large angles), f32 and bf16.
 * Tolerances: f32 2e-6 + 1e-5|ref| (the same float angle; sincosf within 2 ulp; fp32 rotation
 * against fp64); bf16 1e-5 + 5e-3|ref| (one bf16 rounding of the result).
 */
#include "cuda_test.h"

static void run_case(int32_t n_tokens, int32_t n_heads, int32_t hd, int interleaved, sn_cuda_dtype type, uint64_t seed)
{
    sn_rng r = {seed};
    const int64_t stride = (int64_t)(n_heads + 3) * hd + 2; /* other heads and a gap between rows */
    const size_t len = (size_t)n_tokens * stride;
    float *x = malloc(len * sizeof *x), *inv = malloc((size_t)hd / 2 * sizeof *inv);
    uint16_t *x16 = malloc(len * 2);
    int32_t *pos = malloc((size_t)n_tokens * sizeof *pos);
    for (size_t i = 0; i < len; i++) {
        x16[i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -2.0f, 2.0f));
        x[i] = type == SN_CUDA_BF16 ? sn_ref_bf16_to_f32(x16[i]) : sn_rng_uniform(&r, -2.0f, 2.0f);
    }
    for (int32_t j = 0; j < hd / 2; j++)
        inv[j] = (float)pow(500000.0, -2.0 * j / hd);
    for (int32_t t = 0; t < n_tokens; t++)
        pos[t] = t % 3 == 0 ? t : sn_rng_int(&r, 1 << 17);
    void *d_x = type == SN_CUDA_F32 ? sn_dev_upload(x, len * 4) : sn_dev_upload(x16, len * 2);
    int32_t *d_pos = sn_dev_upload(pos, (size_t)n_tokens * 4);
    float *d_inv = sn_dev_upload(inv, (size_t)hd / 2 * 4);
    LAUNCH(sn_cuda_rope(d_x, type, n_tokens, n_heads, hd, stride, d_pos, d_inv, interleaved, 0));

    float *want_f = malloc(len * sizeof *want_f), *got = malloc(len * sizeof *got);
    memcpy(want_f, x, len * sizeof *x);
    sn_ref_rope(want_f, n_tokens, n_heads, hd, stride, pos, inv, interleaved);
    if (type == SN_CUDA_F32) {
        sn_dev_download(got, d_x, len * 4);
    } else {
        sn_dev_download(x16, d_x, len * 2);
        for (size_t i = 0; i < len; i++)
            got[i] = sn_ref_bf16_to_f32(x16[i]);
    }
    double *want = malloc(len * sizeof *want);
    for (size_t i = 0; i < len; i++)
        want[i] = want_f[i];
    char what[96];
    snprintf(what, sizeof what, "rope %d tokens x %d heads x %d, %s, %s", n_tokens, n_heads, hd,
             interleaved ? "interleaved" : "rotate_half", type == SN_CUDA_F32 ? "f32" : "bf16");
    /* untouched elements compare exactly: their reference is the input */
    const double rtol = type == SN_CUDA_F32 ? 1e-5 : 5e-3, atol = type == SN_CUDA_F32 ? 2e-6 : 1e-5;
    cr_expect_eq(sn_test_compare(what, got, want, len, atol, rtol), 0);
    size_t changed_outside = 0;
    for (int32_t t = 0; t < n_tokens; t++)
        for (int64_t i = (int64_t)n_heads * hd; i < stride; i++)
            changed_outside += got[t * stride + i] != x[t * stride + i];
    cr_expect_eq(changed_outside, 0, "%s: %zu elements outside the heads changed", what, changed_outside);
    CU(cudaFree(d_x));
    CU(cudaFree(d_pos));
    CU(cudaFree(d_inv));
    free(x), free(inv), free(x16), free(pos), free(want_f), free(got), free(want);
}

Test(cuda_rope, both_layouts_odd_shapes)
{
    const int32_t shapes[][3] = {{1, 1, 2}, {7, 3, 64}, {33, 5, 128}, {4, 32, 128}, {9, 7, 96}, {3, 2, 256}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int il = 0; il < 2; il++)
            for (int ty = 0; ty < 2; ty++)
                run_case(shapes[s][0], shapes[s][1], shapes[s][2], il, ty ? SN_CUDA_BF16 : SN_CUDA_F32, 2000 + s * 4 + il * 2 + ty);
}

SN_CUDA_TEST_MAIN()
