/*
 * test_cuda_kv_store.c - sn_cuda_kv_store against ref/kv_store_ref.c: keys and values of a
 * batch scattered into a pool of shuffled blocks through 16-byte copies (head_dim a multiple
 * of 8, aligned strides) and element copies (odd head_dim or stride), with padding slots (-1).
 * Tolerance: none; the whole pool, written slots and untouched ones, must equal the
 * reference's bit for bit.
 */
#include "cuda_test.h"

static void run_case(int32_t n_tokens, int32_t nkv, int32_t hd, int64_t src_stride, uint64_t seed)
{
    sn_rng r = {seed};
    const int32_t n_blocks = (n_tokens + 15) / 16 * 2 + 3;
    const size_t pool = (size_t)n_blocks * nkv * 16 * hd, src = (size_t)n_tokens * src_stride;
    uint16_t *kc = malloc(pool * 2), *vc = malloc(pool * 2), *k = malloc(src * 2), *v = malloc(src * 2);
    for (size_t i = 0; i < pool; i++) {
        kc[i] = (uint16_t)sn_rng_next(&r);
        vc[i] = (uint16_t)sn_rng_next(&r);
    }
    for (size_t i = 0; i < src; i++) {
        k[i] = (uint16_t)sn_rng_next(&r);
        v[i] = (uint16_t)sn_rng_next(&r);
    }
    /* distinct slots, in shuffled order, some tokens padding */
    int32_t *slots = malloc((size_t)n_tokens * sizeof *slots), *perm = malloc((size_t)n_blocks * 16 * sizeof *perm);
    for (int32_t i = 0; i < n_blocks * 16; i++)
        perm[i] = i;
    for (int32_t i = n_blocks * 16 - 1; i > 0; i--) {
        const int32_t j = sn_rng_int(&r, i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int32_t i = 0; i < n_tokens; i++)
        slots[i] = i % 11 == 5 ? -1 : perm[i];
    uint16_t *d_kc = sn_dev_upload(kc, pool * 2), *d_vc = sn_dev_upload(vc, pool * 2);
    uint16_t *d_k = sn_dev_upload(k, src * 2), *d_v = sn_dev_upload(v, src * 2);
    int32_t *d_slots = sn_dev_upload(slots, (size_t)n_tokens * 4);
    LAUNCH(sn_cuda_kv_store(d_kc, d_vc, d_k, d_v, src_stride, d_slots, n_tokens, nkv, hd, 0));
    sn_ref_kv_store(kc, vc, k, v, src_stride, slots, n_tokens, nkv, hd);
    uint16_t *gk = malloc(pool * 2), *gv = malloc(pool * 2);
    sn_dev_download(gk, d_kc, pool * 2);
    sn_dev_download(gv, d_vc, pool * 2);
    size_t bad = 0;
    for (size_t i = 0; i < pool; i++)
        bad += (gk[i] != kc[i]) + (gv[i] != vc[i]);
    fprintf(stderr, "kv_store %d tokens, %d kv heads x %d, stride %lld: %zu differing values of %zu\n", n_tokens, nkv, hd,
            (long long)src_stride, bad, 2 * pool);
    cr_expect_eq(bad, 0);
    CU(cudaFree(d_kc));
    CU(cudaFree(d_vc));
    CU(cudaFree(d_k));
    CU(cudaFree(d_v));
    CU(cudaFree(d_slots));
    free(kc), free(vc), free(k), free(v), free(slots), free(perm), free(gk), free(gv);
}

Test(cuda_kv_store, vector_and_scalar_paths)
{
    run_case(37, 8, 128, (32 + 2 * 8) * 128, 5000); /* fused QKV row: 16-byte copies */
    run_case(1, 1, 64, 64, 5001);
    run_case(100, 3, 96, 3 * 96 + 8, 5002);
    run_case(19, 2, 10, 2 * 10, 5003);              /* head_dim not a multiple of 8 */
    run_case(23, 4, 64, 4 * 64 + 3, 5004);          /* odd stride */
}

SN_CUDA_TEST_MAIN()
