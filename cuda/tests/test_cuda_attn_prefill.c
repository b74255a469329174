/*
 * test_cuda_attn_prefill.c - sn_cuda_attn_prefill against ref/attn_prefill_ref.c (fp64): a
 * ragged batch of runs (1 token, 16, 17, 64, 100, 130 tokens; starting at position 0, mid
 * block, or after a long cached prefix), head sizes 64/96/128/256, GQA groups 1, 2, 3, 4, 5, 7,
 * 8, 16 and 64 (odd head counts; groups 3, 5 and 7 leave padding rows in a 64-row tile, 16 and
 * 64 put 4 and 1 tokens in it), shuffled blocks, sharp and flat softmaxes.
 * Tolerance: 4e-3 + 1.5e-2|ref|. P enters the tensor cores as bf16 (2^-9 relative per
 * weight) and the output is rounded to bf16; test_cuda_cpu replays the same tiling with bf16
 * P within 2e-3 + 1e-2|ref|, and exactly (2e-6) with fp32 P. A wrong mask, row or block is off
 * by 0.05 or more.
 */
#include "cuda_test.h"

typedef struct shape {
    int32_t nh, nkv, hd;
} shape;

static void run_case(shape sh, int32_t n_seqs, const int32_t *lens, const int32_t *starts, float key_gain, uint64_t seed)
{
    sn_rng r = {seed};
    int32_t *seq_start = malloc((size_t)(n_seqs + 1) * 4), *rows = malloc((size_t)n_seqs * 4), max_len = 0;
    seq_start[0] = 0;
    for (int32_t s = 0; s < n_seqs; s++) {
        seq_start[s + 1] = seq_start[s] + lens[s];
        rows[s] = (s * 5 + 2) % n_seqs;
        max_len = starts[s] + lens[s] > max_len ? starts[s] + lens[s] : max_len;
    }
    const int32_t n_tokens = seq_start[n_seqs];
    const int32_t table_stride = (max_len + 15) / 16 + 1, n_blocks = n_seqs * table_stride + 3;
    const size_t pool = (size_t)n_blocks * sh.nkv * 16 * sh.hd;
    uint16_t *kc = malloc(pool * 2), *vc = malloc(pool * 2);
    for (size_t i = 0; i < pool; i++) {
        kc[i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -1.0f, 1.0f) * key_gain);
        vc[i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -1.0f, 1.0f));
    }
    int32_t *perm = malloc((size_t)n_blocks * 4), *tables = malloc((size_t)n_seqs * table_stride * 4);
    for (int32_t i = 0; i < n_blocks; i++)
        perm[i] = i;
    for (int32_t i = n_blocks - 1; i > 0; i--) {
        const int32_t j = sn_rng_int(&r, i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int32_t i = 0; i < n_seqs * table_stride; i++)
        tables[i] = perm[i];
    const int64_t q_stride = (int64_t)(sh.nh + 2 * sh.nkv) * sh.hd, out_stride = (int64_t)sh.nh * sh.hd + 8;
    const size_t qlen = (size_t)n_tokens * q_stride, olen = (size_t)n_tokens * out_stride, n_out = (size_t)n_tokens * sh.nh * sh.hd;
    uint16_t *q16 = malloc(qlen * 2);
    float *qf = malloc(n_out * sizeof *qf);
    for (int32_t t = 0; t < n_tokens; t++)
        for (int32_t i = 0; i < sh.nh * sh.hd; i++) {
            q16[t * q_stride + i] = sn_ref_f32_to_bf16(sn_rng_uniform(&r, -1.0f, 1.0f));
            qf[(size_t)t * sh.nh * sh.hd + i] = sn_ref_bf16_to_f32(q16[t * q_stride + i]);
        }
    const float scale = 1.0f / sqrtf((float)sh.hd);
    uint16_t *d_kc = sn_dev_upload(kc, pool * 2), *d_vc = sn_dev_upload(vc, pool * 2), *d_q = sn_dev_upload(q16, qlen * 2);
    int32_t *d_tables = sn_dev_upload(tables, (size_t)n_seqs * table_stride * 4), *d_rows = sn_dev_upload(rows, (size_t)n_seqs * 4);
    int32_t *d_start = sn_dev_upload(seq_start, (size_t)(n_seqs + 1) * 4), *d_pos = sn_dev_upload(starts, (size_t)n_seqs * 4);
    uint16_t *d_out = sn_dev_alloc(olen * 2);
    CU(cudaMemset(d_out, 0xff, olen * 2));
    const sn_cuda_paged_kv kv = {.k_cache = d_kc, .v_cache = d_vc, .block_tables = d_tables, .table_stride = table_stride,
                                 .n_heads = sh.nh, .n_kv_heads = sh.nkv, .head_dim = sh.hd, .scale = scale};
    LAUNCH(sn_cuda_attn_prefill(d_out, out_stride, d_q, q_stride, &kv, d_rows, d_start, d_pos, n_seqs, n_tokens, 0));

    double *want = malloc(n_out * sizeof *want);
    sn_ref_attn_prefill(want, qf, kc, vc, tables, table_stride, rows, seq_start, starts, n_seqs, sh.nh, sh.nkv, sh.hd, scale);
    uint16_t *o16 = malloc(olen * 2);
    sn_dev_download(o16, d_out, olen * 2);
    float *got = malloc(n_out * sizeof *got);
    for (int32_t t = 0; t < n_tokens; t++)
        for (int32_t i = 0; i < sh.nh * sh.hd; i++)
            got[(size_t)t * sh.nh * sh.hd + i] = sn_ref_bf16_to_f32(o16[t * out_stride + i]);
    char what[128];
    snprintf(what, sizeof what, "prefill %d runs, %d tokens, %d/%d heads x %d", n_seqs, n_tokens, sh.nh, sh.nkv, sh.hd);
    cr_expect_eq(sn_test_compare(what, got, want, n_out, 4e-3, 1.5e-2), 0);
    CU(cudaFree(d_kc));
    CU(cudaFree(d_vc));
    CU(cudaFree(d_q));
    CU(cudaFree(d_tables));
    CU(cudaFree(d_rows));
    CU(cudaFree(d_start));
    CU(cudaFree(d_pos));
    CU(cudaFree(d_out));
    free(seq_start), free(rows), free(kc), free(vc), free(perm), free(tables), free(q16), free(qf), free(want), free(o16), free(got);
}

static const shape shapes[] = {{8, 8, 64}, {6, 3, 64},  {12, 3, 96}, {32, 4, 128}, {14, 2, 128}, {21, 3, 128},
                               {4, 2, 256}, {9, 3, 128}, {10, 2, 96}, {16, 1, 64},  {64, 1, 64}};

Test(cuda_attn_prefill, ragged_batch_with_cached_prefixes)
{
    const int32_t lens[] = {1, 17, 64, 100, 5, 130, 16};
    const int32_t starts[] = {0, 0, 0, 37, 1000, 3, 15};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        run_case(shapes[s], 7, lens, starts, s % 2 ? 3.0f : 1.0f, 7000 + s);
}

Test(cuda_attn_prefill, one_long_prompt)
{
    const int32_t lens[] = {sn_test_quick() ? 300 : 1100};
    const int32_t starts[] = {0};
    const shape big[] = {{32, 8, 128}, {16, 16, 64}};
    for (size_t s = 0; s < 2; s++)
        run_case(big[s], 1, lens, starts, 1.0f, 7100 + s);
}

SN_CUDA_TEST_MAIN()
