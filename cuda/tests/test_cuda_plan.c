/*
 * test_cuda_plan.c - the CUDA backend's host-side logic, on any machine: packing a ragged
 * batch's metadata (positions, KV slots through core/src/kv_cache.c's block tables, runs,
 * logits rows), refusing bad batches, choosing the decode graph (batch size and context
 * bucket), the SN_CUDA_* switches, and the tensor-parallel split (the same slices as
 * cpu_backend.c's shards: contiguous, equal, covering every head and FFN column once).
 */
#include "cuda_plan.h"
#include "cuda_test.h"
#include "tp_split.h"

static int32_t meta[4096];

static void init_kv(sn_kv_alloc *kv)
{
    cr_assert(sn_kv_alloc_init(kv, SN_KV_BLOCK, 64, 4, 256) == SN_OK);
    /* Interleave reservations so that the sequences' blocks are not contiguous. */
    cr_assert(sn_kv_alloc_reserve(kv, 2, 16) == SN_OK);
    cr_assert(sn_kv_alloc_reserve(kv, 0, 40) == SN_OK);
    cr_assert(sn_kv_alloc_reserve(kv, 2, 33) == SN_OK);
    cr_assert(sn_kv_alloc_reserve(kv, 1, 1) == SN_OK);
}

Test(cuda_plan, packs_a_ragged_batch)
{
    sn_kv_alloc kv;
    init_kv(&kv);
    sn_cuda_meta_layout lay;
    sn_cuda_meta_layout_init(&lay, 32, 4);
    cr_assert(lay.total == 3 * 32 + 5 * 4 + 1);
    /* seq 0: positions 30..39 (10 tokens, crosses a block), seq 2: position 32 (decode),
     * seq 1: position 0 (one-token prefill) without logits. */
    int32_t tokens[12], seq_ids[3] = {0, 2, 1}, start[4] = {0, 10, 11, 12}, pos[3] = {30, 32, 0};
    uint8_t lf[3] = {1, 1, 0};
    for (int i = 0; i < 12; i++)
        tokens[i] = 100 + i;
    sn_batch b = {12, tokens, 3, seq_ids, start, pos, lf};
    sn_cuda_step st;
    cr_assert(sn_cuda_plan_pack(&kv, &b, 1000, &lay, meta, &st) == SN_OK);
    cr_expect(st.n_tokens == 12 && st.n_seqs == 3 && st.n_rows == 2);
    cr_expect(!st.decode_only && !st.rows_are_tokens);
    cr_expect(st.max_ctx == 40, "max_ctx %d", st.max_ctx);
    for (int i = 0; i < 10; i++) {
        cr_expect(meta[lay.tokens + i] == 100 + i);
        cr_expect(meta[lay.pos + i] == 30 + i);
        cr_expect(meta[lay.slots + i] == sn_kv_slot(&kv, 0, 30 + i), "token %d: slot %d", i, meta[lay.slots + i]);
    }
    cr_expect(meta[lay.slots + 10] == sn_kv_slot(&kv, 2, 32));
    cr_expect(meta[lay.slots + 11] == sn_kv_slot(&kv, 1, 0));
    cr_expect(meta[lay.slots + 9] / SN_KV_BLOCK != meta[lay.slots + 0] / SN_KV_BLOCK, "position 39 is in another block than 30");
    const int32_t rows[3] = {0, 2, 1}, ctx[3] = {40, 33, 1}, sp[4] = {0, 10, 11, 12};
    for (int r = 0; r < 3; r++) {
        cr_expect(meta[lay.seq_rows + r] == rows[r]);
        cr_expect(meta[lay.ctx_lens + r] == ctx[r]);
        cr_expect(meta[lay.seq_pos + r] == pos[r]);
    }
    for (int r = 0; r < 4; r++)
        cr_expect(meta[lay.seq_start + r] == sp[r]);
    cr_expect(meta[lay.out_rows + 0] == 9 && meta[lay.out_rows + 1] == 10, "logits rows are each run's last token");
    sn_cuda_graph_key key;
    cr_expect(!sn_cuda_graph_key_of(&st, 256, 1, &key), "a prefill step runs eagerly");
    sn_kv_alloc_free(&kv);
}

Test(cuda_plan, decode_batches_pick_a_graph)
{
    sn_kv_alloc kv;
    init_kv(&kv);
    sn_cuda_meta_layout lay;
    sn_cuda_meta_layout_init(&lay, 8, 4);
    int32_t tokens[3] = {5, 6, 7}, seq_ids[3] = {2, 0, 1}, start[4] = {0, 1, 2, 3}, pos[3] = {32, 39, 0};
    uint8_t lf[3] = {1, 1, 1};
    sn_batch b = {3, tokens, 3, seq_ids, start, pos, lf};
    sn_cuda_step st;
    cr_assert(sn_cuda_plan_pack(&kv, &b, 1000, &lay, meta, &st) == SN_OK);
    cr_expect(st.decode_only && st.rows_are_tokens && st.n_rows == 3);
    sn_cuda_graph_key key;
    cr_assert(sn_cuda_graph_key_of(&st, 4096, 1, &key));
    cr_expect(key.n_seqs == 3 && key.ctx_bucket == 256, "key (%d, %d)", key.n_seqs, key.ctx_bucket);
    cr_expect(!sn_cuda_graph_key_of(&st, 4096, 0, &key), "SN_CUDA_GRAPHS=0 turns graphs off");
    /* Buckets: powers of two from 256, never past max_positions rounded up. */
    sn_cuda_step s2 = st;
    const int32_t ctxs[][3] = {{1, 4096, 256}, {256, 4096, 256}, {257, 4096, 512}, {3000, 4096, 4096},
                               {100, 100, 256}, {1000, 1000, 1024}, {131072, 131072, 131072}};
    for (size_t i = 0; i < sizeof ctxs / sizeof ctxs[0]; i++) {
        s2.max_ctx = ctxs[i][0];
        cr_assert(sn_cuda_graph_key_of(&s2, ctxs[i][1], 1, &key));
        cr_expect(key.ctx_bucket == ctxs[i][2] && key.ctx_bucket >= s2.max_ctx, "ctx %d (max %d): bucket %d, want %d",
                  ctxs[i][0], ctxs[i][1], key.ctx_bucket, ctxs[i][2]);
    }
    /* A decode step in which one run wants no logits runs eagerly (the rows are gathered). */
    lf[1] = 0;
    cr_assert(sn_cuda_plan_pack(&kv, &b, 1000, &lay, meta, &st) == SN_OK);
    cr_expect(st.decode_only && !st.rows_are_tokens && st.n_rows == 2);
    cr_expect(meta[lay.out_rows + 0] == 0 && meta[lay.out_rows + 1] == 2);
    cr_expect(!sn_cuda_graph_key_of(&st, 4096, 1, &key));
    sn_kv_alloc_free(&kv);
}

Test(cuda_plan, bad_batches_are_refused)
{
    sn_kv_alloc kv;
    init_kv(&kv);
    sn_cuda_meta_layout lay;
    sn_cuda_meta_layout_init(&lay, 8, 2);
    int32_t tokens[9] = {0}, seq_ids[3] = {0, 1, 2}, start[4] = {0, 1, 2, 3}, pos[3] = {0, 0, 0};
    uint8_t lf[3] = {1, 1, 1};
    sn_cuda_step st;
    sn_batch b = {9, tokens, 1, seq_ids, (const int32_t[]){0, 9}, pos, lf};
    cr_expect(sn_cuda_plan_pack(&kv, &b, 10, &lay, meta, &st) == SN_ERR_INVALID_ARG, "more tokens than max_tokens");
    b = (sn_batch){3, tokens, 3, seq_ids, start, pos, lf};
    cr_expect(sn_cuda_plan_pack(&kv, &b, 10, &lay, meta, &st) == SN_ERR_INVALID_ARG, "more runs than max_seqs");
    int32_t bad_seq = 7;
    b = (sn_batch){1, tokens, 1, &bad_seq, start, pos, lf};
    cr_expect(sn_cuda_plan_pack(&kv, &b, 10, &lay, meta, &st) == SN_ERR_INVALID_ARG, "sequence out of range");
    int32_t seq3 = 3;
    b = (sn_batch){1, tokens, 1, &seq3, start, pos, lf};
    cr_expect(sn_cuda_plan_pack(&kv, &b, 10, &lay, meta, &st) == SN_ERR_INTERNAL, "no KV slot reserved");
    int32_t far = 40; /* seq 0 holds positions 0..47 (3 blocks) */
    b = (sn_batch){8, tokens, 1, seq_ids, (const int32_t[]){0, 8}, &far, lf};
    cr_expect(sn_cuda_plan_pack(&kv, &b, 10, &lay, meta, &st) == SN_OK);
    far = 41;
    cr_expect(sn_cuda_plan_pack(&kv, &b, 10, &lay, meta, &st) == SN_ERR_INTERNAL, "position 48 is not reserved");
    tokens[0] = 10;
    b = (sn_batch){1, tokens, 1, seq_ids, start, pos, lf};
    cr_expect(sn_cuda_plan_pack(&kv, &b, 10, &lay, meta, &st) == SN_ERR_INVALID_ARG, "token outside the vocabulary");
    tokens[0] = 0;
    b = (sn_batch){2, tokens, 2, seq_ids, (const int32_t[]){0, 0, 2}, pos, lf};
    cr_expect(sn_cuda_plan_pack(&kv, &b, 10, &lay, meta, &st) == SN_ERR_INVALID_ARG, "an empty run");
    sn_kv_alloc_free(&kv);
}

Test(cuda_plan, tp_split_matches_the_cpu_shards)
{
    const int32_t shapes[][3] = {{32, 8, 8192}, {9, 3, 1536}, {4, 2, 344}, {1, 1, 1}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int32_t tp = 1; tp <= 8; tp++) {
            const int32_t nh = shapes[i][0], nkv = shapes[i][1], ff = shapes[i][2];
            const int even = nh % tp == 0 && nkv % tp == 0 && ff % tp == 0;
            sn_tp_slice sl;
            cr_expect(sn_tp_split(nh, nkv, ff, tp, 0, &sl) == even, "(%d, %d, %d) over %d", nh, nkv, ff, tp);
            if (!even)
                continue;
            int32_t h = 0, kv = 0, f = 0;
            for (int32_t s = 0; s < tp; s++) {
                cr_assert(sn_tp_split(nh, nkv, ff, tp, s, &sl));
                /* cpu_open: nh = n_heads / tp, h0 = s * nh, and the same for KV heads and FFN. */
                cr_expect(sl.h0 == h && sl.nh == nh / tp && sl.kv0 == kv && sl.nkv == nkv / tp && sl.f0 == f &&
                          sl.nf == ff / tp);
                cr_expect(sl.h0 / (nh / nkv) == sl.kv0, "a shard's query heads map to its own KV heads");
                h += sl.nh, kv += sl.nkv, f += sl.nf;
            }
            cr_expect(h == nh && kv == nkv && f == ff);
        }
    sn_tp_slice sl;
    cr_expect(!sn_tp_split(8, 8, 8, 2, 2, &sl) && !sn_tp_split(8, 8, 8, 0, 0, &sl));
}

Test(cuda_plan, env_switches)
{
    cr_expect(sn_cuda_env_flag(NULL, 1) == 1 && sn_cuda_env_flag(NULL, 0) == 0);
    const char *off[] = {"0", "", "off", "OFF", "no", "false"}, *on[] = {"1", "yes", "on", "2"};
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++)
        cr_expect(sn_cuda_env_flag(off[i], 1) == 0, "'%s'", off[i]);
    for (size_t i = 0; i < sizeof on / sizeof on[0]; i++)
        cr_expect(sn_cuda_env_flag(on[i], 0) == 1, "'%s'", on[i]);
}

SN_CUDA_TEST_MAIN()
