/*
 * kv_cache.c - the paged KV cache's block pool and block tables (see kv_cache.h).
 *
 * Blocks are handed out from a stack, so a freed block is reused first (warm in cache). A
 * reservation is all or nothing: when the pool cannot cover it, nothing changes and the
 * scheduler decides whether to wait or to preempt a session.
 */
#include <stdlib.h>
#include <string.h>

#include "kv_cache.h"

sn_status sn_kv_alloc_init(sn_kv_alloc *a, int32_t block, int32_t n_blocks, int32_t max_seqs,
                           int32_t max_positions)
{
    memset(a, 0, sizeof *a);
    if (block <= 0 || n_blocks <= 0 || max_seqs <= 0 || max_positions <= 0)
        return sn_fail(SN_ERR_INVALID_ARG, "KV cache: %d blocks of %d positions for %d sequences of %d positions",
                       n_blocks, block, max_seqs, max_positions);
    a->block = block;
    a->n_blocks = n_blocks;
    a->max_seqs = max_seqs;
    a->max_blocks_per_seq = (max_positions + block - 1) / block;
    a->free_list = malloc((size_t)n_blocks * sizeof *a->free_list);
    a->tables = malloc((size_t)max_seqs * (size_t)a->max_blocks_per_seq * sizeof *a->tables);
    a->n_seq_blocks = calloc((size_t)max_seqs, sizeof *a->n_seq_blocks);
    if (!a->free_list || !a->tables || !a->n_seq_blocks) {
        sn_kv_alloc_free(a);
        return sn_fail(SN_ERR_NOMEM, "out of memory for the KV cache's block tables");
    }
    /* Lowest block on top of the stack: allocation order is deterministic. */
    for (int32_t i = 0; i < n_blocks; i++)
        a->free_list[i] = n_blocks - 1 - i;
    a->n_free = n_blocks;
    return SN_OK;
}

void sn_kv_alloc_free(sn_kv_alloc *a)
{
    free(a->free_list);
    free(a->tables);
    free(a->n_seq_blocks);
    memset(a, 0, sizeof *a);
}

sn_status sn_kv_alloc_reserve(sn_kv_alloc *a, int32_t seq, int32_t n_positions)
{
    if (seq < 0 || seq >= a->max_seqs)
        return sn_fail(SN_ERR_INVALID_ARG, "KV cache: sequence %d outside 0..%d", seq, a->max_seqs - 1);
    int32_t need = (n_positions + a->block - 1) / a->block;
    if (need > a->max_blocks_per_seq)
        return sn_fail(SN_ERR_INVALID_ARG, "KV cache: %d positions exceed the model's context of %d",
                       n_positions, a->max_blocks_per_seq * a->block);
    int32_t have = a->n_seq_blocks[seq];
    if (need <= have)
        return SN_OK;
    if (need - have > a->n_free)
        return sn_fail(SN_ERR_NOMEM, "KV cache: sequence %d needs %d more blocks, %d of %d are free",
                       seq, need - have, a->n_free, a->n_blocks);
    int32_t *table = a->tables + (size_t)seq * (size_t)a->max_blocks_per_seq;
    for (int32_t i = have; i < need; i++)
        table[i] = a->free_list[--a->n_free];
    a->n_seq_blocks[seq] = need;
    return SN_OK;
}

void sn_kv_alloc_release(sn_kv_alloc *a, int32_t seq)
{
    if (seq < 0 || seq >= a->max_seqs)
        return;
    int32_t *table = a->tables + (size_t)seq * (size_t)a->max_blocks_per_seq;
    /* Push in reverse so that the sequence's first block is reused first. */
    for (int32_t i = a->n_seq_blocks[seq] - 1; i >= 0; i--)
        a->free_list[a->n_free++] = table[i];
    a->n_seq_blocks[seq] = 0;
}
