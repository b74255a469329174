/*
 * kv_cache.h - the block allocator of the paged KV cache: a pool of fixed-size blocks and
 * one block table per sequence. Backend-independent: the CPU backend keeps keys and values in
 * host memory and the CUDA backend in device memory, both addressed through these tables.
 */
#ifndef SN_KV_CACHE_H
#define SN_KV_CACHE_H

#include <stdint.h>

#include "internal.h"

typedef struct sn_kv_alloc {
    int32_t block;             /* positions per block */
    int32_t n_blocks;          /* pool size */
    int32_t n_free;
    int32_t *free_list;        /* (n_blocks) a stack of free block indices, top at n_free-1 */
    int32_t max_seqs;
    int32_t max_blocks_per_seq;
    int32_t *tables;           /* (max_seqs, max_blocks_per_seq) block indices */
    int32_t *n_seq_blocks;     /* (max_seqs) blocks each sequence holds */
} sn_kv_alloc;

sn_status sn_kv_alloc_init(sn_kv_alloc *a, int32_t block, int32_t n_blocks, int32_t max_seqs,
                           int32_t max_positions);
void sn_kv_alloc_free(sn_kv_alloc *a);

/* Makes room for positions [0, n_positions) of seq. SN_ERR_NOMEM (with nothing allocated)
 * when too few blocks are free; SN_ERR_INVALID_ARG past max_positions. */
sn_status sn_kv_alloc_reserve(sn_kv_alloc *a, int32_t seq, int32_t n_positions);
void sn_kv_alloc_release(sn_kv_alloc *a, int32_t seq);

/* The pool slot of position pos of seq (block * block_size + pos % block_size). The
 * position must be reserved. */
static inline int32_t sn_kv_slot(const sn_kv_alloc *a, int32_t seq, int32_t pos)
{
    return a->tables[(size_t)seq * (size_t)a->max_blocks_per_seq + (size_t)(pos / a->block)] * a->block +
           pos % a->block;
}

#endif /* SN_KV_CACHE_H */
