/*
 * test_cuda_gather.c - sn_cuda_gather_rows against ref/gather_ref.c: repeated and
 * out-of-order rows, widths that are not multiples of the block, no rows. Exact (a copy).
 */
#include "cuda_test.h"

Test(cuda_gather, picks_rows_in_any_order)
{
    const int32_t widths[] = {1, 255, 256, 2049};
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
        const int32_t cols = widths[w], src_rows = 37, n = 9;
        const int32_t idx[9] = {36, 0, 5, 5, 17, 1, 36, 20, 2};
        sn_rng r = {4100 + w};
        uint16_t *src = malloc((size_t)src_rows * cols * 2), *want = malloc((size_t)n * cols * 2),
                 *got = malloc((size_t)n * cols * 2);
        for (size_t i = 0; i < (size_t)src_rows * cols; i++)
            src[i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -3.0f, 3.0f));
        sn_ref_gather_rows(want, src, idx, n, cols);
        sn_bf16 *d_src = sn_dev_upload(src, (size_t)src_rows * cols * 2), *d_dst = sn_dev_alloc((size_t)n * cols * 2);
        int32_t *d_idx = sn_dev_upload(idx, sizeof idx);
        LAUNCH(sn_cuda_gather_rows(d_dst, d_src, d_idx, n, cols, 0));
        sn_dev_download(got, d_dst, (size_t)n * cols * 2);
        cr_expect(memcmp(got, want, (size_t)n * cols * 2) == 0, "%d columns: gathered rows differ", cols);
        LAUNCH(sn_cuda_gather_rows(d_dst, d_src, d_idx, 0, cols, 0)); /* no rows: nothing */
        cr_expect_eq(sn_cuda_gather_rows(d_dst, d_src, d_idx, 1, 0, 0), cudaErrorInvalidValue);
        CU(cudaFree(d_src));
        CU(cudaFree(d_dst));
        CU(cudaFree(d_idx));
        free(src), free(want), free(got);
    }
}

SN_CUDA_TEST_MAIN()
