/*
 * attn_core.h - the index math and softmax bookkeeping of the paged attention kernels
 * (attn_decode.cu, attn_prefill.cu, kv_store.cu), shared with the CPU test that replays the
 * split-KV decode and the FlashAttention-2 prefill tiling sequentially against a plain
 * reference.
 *
 * KV pool of one layer: (n_blocks, n_kv_heads, 16, head_dim); position p of a sequence is slot
 * p % 16 of block table_row[p / 16] (core/src/backend.h, SN_KV_BLOCK).
 *
 * Softmax runs in the log2 domain: scores are multiplied by scale * log2(e) once, then
 * exp2f. A partial result over some keys is (m, l, o): the running maximum, the sum of
 * 2^(s - m), and o = sum 2^(s - m) v / l (normalised). Partials merge with weights
 * l_i * 2^(m_i - M), M = max m_i (the log-sum-exp combine).
 */
#ifndef SN_ATTN_CORE_H
#define SN_ATTN_CORE_H

#include <math.h>

#include "sn_hd.h"

#ifndef SN_CUDA_KV_BLOCK
#define SN_CUDA_KV_BLOCK 16
#endif

#define SN_LOG2E 1.4426950408889634f

/* ---------------------------------------------------------------------------------------- */
/* KV addresses                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Element offset of the first value of (block, kv_head): 16 * head_dim contiguous values. */
static inline SN_HD int64_t sn_kv_block_base(int32_t block, int32_t kvh, int32_t n_kv_heads, int32_t head_dim)
{
    return ((int64_t)block * n_kv_heads + kvh) * SN_CUDA_KV_BLOCK * head_dim;
}

/* Element offset of position pos of a sequence (its block-table row), KV head kvh. */
static inline SN_HD int64_t sn_kv_pos_offset(const int32_t *table_row, int32_t pos, int32_t kvh,
                                             int32_t n_kv_heads, int32_t head_dim)
{
    return sn_kv_block_base(table_row[pos / SN_CUDA_KV_BLOCK], kvh, n_kv_heads, head_dim) +
           (int64_t)(pos % SN_CUDA_KV_BLOCK) * head_dim;
}

/* Element offset of pool slot `slot` (block * 16 + position % 16), KV head kvh. */
static inline SN_HD int64_t sn_kv_slot_offset(int32_t slot, int32_t kvh, int32_t n_kv_heads, int32_t head_dim)
{
    return sn_kv_block_base(slot / SN_CUDA_KV_BLOCK, kvh, n_kv_heads, head_dim) +
           (int64_t)(slot % SN_CUDA_KV_BLOCK) * head_dim;
}

/* ---------------------------------------------------------------------------------------- */
/* Online softmax and the log-sum-exp merge                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Folds a tile whose largest score is tile_max into a running maximum m_old: sets *m_new and
 * returns the factor that rescales the old sum and output (0 when there was nothing yet). */
static inline SN_HD float sn_online_rescale(float m_old, float tile_max, float *m_new)
{
    const float m = fmaxf(m_old, tile_max);
    *m_new = m;
    return m == -INFINITY ? 1.0f : exp2f(m_old - m);
}

/* The weight of a score s (log2 domain, -inf when masked) under the running maximum m. */
static inline SN_HD float sn_online_p(float s, float m)
{
    return m == -INFINITY ? 0.0f : exp2f(s - m);
}

/* The largest m of n partials (-inf when none has any weight). */
static inline SN_HD float sn_lse_max(const float *m, const float *l, int32_t n)
{
    float mx = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (l[i] > 0.0f)
            mx = fmaxf(mx, m[i]);
    return mx;
}

/* The weight of partial (m, l) in a merge whose maximum is M; a partial without keys
 * (l == 0) weighs nothing. */
static inline SN_HD float sn_lse_weight(float m, float l, float M)
{
    return l > 0.0f ? l * exp2f(m - M) : 0.0f;
}

/* ---------------------------------------------------------------------------------------- */
/* Split-KV decode                                                                           */
/* ---------------------------------------------------------------------------------------- */

#define SN_DECODE_TILE 64            /* positions per shared-memory tile */
#define SN_DECODE_MIN_SPLIT_TILES 2  /* a split reads at least this many tiles */
#define SN_DECODE_MAX_SPLITS 256

typedef struct sn_decode_plan {
    int32_t split_len; /* positions per split, a multiple of SN_DECODE_TILE */
    int32_t n_splits;  /* splits the grid has room for (the longest context's) */
} sn_decode_plan;

/* Cuts contexts of up to max_ctx positions into splits so that the grid (n_seqs x
 * n_kv_heads x splits blocks) fills about twice the device's n_sm multiprocessors. */
static inline SN_HD sn_decode_plan sn_decode_make_plan(int32_t n_seqs, int32_t n_kv_heads,
                                                       int32_t max_ctx, int32_t n_sm)
{
    sn_decode_plan p;
    const int32_t tiles = max_ctx > 0 ? (max_ctx + SN_DECODE_TILE - 1) / SN_DECODE_TILE : 1;
    const int64_t base = (int64_t)n_seqs * n_kv_heads, target = 2 * (int64_t)(n_sm > 0 ? n_sm : 1);
    int64_t splits = base >= target ? 1 : (target + base - 1) / base;
    const int64_t by_len = tiles / SN_DECODE_MIN_SPLIT_TILES;
    if (splits > by_len)
        splits = by_len;
    if (splits > SN_DECODE_MAX_SPLITS)
        splits = SN_DECODE_MAX_SPLITS;
    if (splits < 1)
        splits = 1;
    const int32_t split_tiles = (int32_t)((tiles + splits - 1) / splits);
    p.split_len = split_tiles * SN_DECODE_TILE;
    p.n_splits = (tiles + split_tiles - 1) / split_tiles;
    return p;
}

/* Positions [begin, end) of split s of a context of ctx positions (empty past the end). */
static inline SN_HD int32_t sn_split_begin(int32_t s, int32_t split_len) { return s * split_len; }

static inline SN_HD int32_t sn_split_end(int32_t s, int32_t split_len, int32_t ctx)
{
    const int32_t e = (s + 1) * split_len;
    return e < ctx ? e : ctx;
}

/* Splits that hold positions of a context of ctx. */
static inline SN_HD int32_t sn_split_count(int32_t ctx, int32_t split_len)
{
    return ctx > 0 ? (ctx + split_len - 1) / split_len : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Prefill tiles (FlashAttention-2)                                                          */
/* ---------------------------------------------------------------------------------------- */

#define SN_PREFILL_BM 64 /* query rows per tile: tokens x the query heads of one KV group */
#define SN_PREFILL_BN 64 /* keys per KV tile */

/* Tokens per query tile: rows are (token, head of the group) pairs, row = t * group + g. */
static inline SN_HD int32_t sn_prefill_tokens_per_tile(int32_t group)
{
    return group >= SN_PREFILL_BM ? 1 : SN_PREFILL_BM / group;
}

/* An upper bound of the query tiles of a batch (the grid's x size). */
static inline SN_HD int32_t sn_prefill_max_tiles(int32_t n_tokens, int32_t n_seqs, int32_t tm)
{
    return (n_tokens + tm - 1) / tm + n_seqs;
}

typedef struct sn_prefill_tile {
    int32_t run;  /* the run (sequence chunk) of the batch */
    int32_t tok0; /* first token (batch index) */
    int32_t ntok; /* tokens, 1..tm */
} sn_prefill_tile;

/* Query tile j of the batch, runs in order and, within a run, its last (heaviest: most keys)
 * tile first. 0 when j is past the last tile. */
static inline SN_HD int sn_prefill_find_tile(const int32_t *seq_start, int32_t n_seqs, int32_t tm,
                                             int32_t j, sn_prefill_tile *t)
{
    for (int32_t r = 0; r < n_seqs; r++) {
        const int32_t len = seq_start[r + 1] - seq_start[r];
        const int32_t nt = len > 0 ? (len + tm - 1) / tm : 0;
        if (j < nt) {
            const int32_t q = nt - 1 - j;
            t->run = r;
            t->tok0 = seq_start[r] + q * tm;
            t->ntok = seq_start[r + 1] - t->tok0 < tm ? seq_start[r + 1] - t->tok0 : tm;
            return 1;
        }
        j -= nt;
    }
    return 0;
}

/* Keys the tile reads: positions [0, kv_end) where kv_end is its last token's position + 1. */
static inline SN_HD int32_t sn_prefill_kv_end(const sn_prefill_tile *t, const int32_t *seq_start,
                                              const int32_t *seq_pos)
{
    return seq_pos[t->run] + (t->tok0 - seq_start[t->run]) + t->ntok;
}

/* Position of the token of row `row` (token row / group of the tile); -1 for a padding row. */
static inline SN_HD int32_t sn_prefill_row_pos(const sn_prefill_tile *t, const int32_t *seq_start,
                                               const int32_t *seq_pos, int32_t group, int32_t row)
{
    const int32_t tl = row / group;
    if (tl >= t->ntok)
        return -1;
    return seq_pos[t->run] + (t->tok0 - seq_start[t->run]) + tl;
}

#endif /* SN_ATTN_CORE_H */
