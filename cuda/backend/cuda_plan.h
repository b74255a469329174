/*
 * cuda_plan.h - the host side of one CUDA forward step, kept apart from the CUDA code so that
 * it is tested on any machine (tests/test_cuda_plan.c): checking a batch against the KV block
 * tables, packing its metadata into the one int32 buffer that is copied to the device each
 * step, and choosing the CUDA graph that serves a decode-only batch.
 *
 * The metadata buffer has fixed offsets (sized for the largest batch at open), so kernels
 * captured in a graph read the same device addresses at every replay; only the contents
 * change, copied host -> device before the step (outside the graph).
 */
#ifndef SN_CUDA_PLAN_H
#define SN_CUDA_PLAN_H

#include <stdint.h>

/* The core headers are C without extern "C" guards. */
#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"
#include "kv_cache.h"

/* Offsets (in int32 elements) of the step's arrays inside the metadata buffer. */
typedef struct sn_cuda_meta_layout {
    int32_t max_tokens, max_seqs;
    int32_t tokens;    /* (max_tokens) token ids */
    int32_t pos;       /* (max_tokens) position of each token */
    int32_t slots;     /* (max_tokens) KV pool slot: block * 16 + pos % 16 */
    int32_t seq_rows;  /* (max_seqs) block-table row of each run (its sequence id) */
    int32_t seq_start; /* (max_seqs + 1) first token of each run */
    int32_t seq_pos;   /* (max_seqs) position of each run's first token */
    int32_t ctx_lens;  /* (max_seqs) context of each run after this step (last pos + 1) */
    int32_t out_rows;  /* (max_seqs) token index of each logits row */
    int32_t total;     /* elements in all */
} sn_cuda_meta_layout;

void sn_cuda_meta_layout_init(sn_cuda_meta_layout *lay, int32_t max_tokens, int32_t max_seqs);

/* What forward() needs to know about a packed batch. */
typedef struct sn_cuda_step {
    int32_t n_tokens, n_seqs;
    int32_t n_rows;      /* runs that want logits */
    int32_t max_ctx;     /* longest context after the step */
    int decode_only;     /* every run is one token */
    int rows_are_tokens; /* the logits rows are tokens 0..n_tokens-1 in order (no gather) */
} sn_cuda_step;

/* Checks the batch (sizes, sequence ids, token ids in [0, vocab), every position reserved
 * in kv) and writes its metadata into meta (lay->total elements). SN_ERR_INVALID_ARG or
 * SN_ERR_INTERNAL (position without a KV slot) with a message, as cpu_backend.c does. */
sn_status sn_cuda_plan_pack(const sn_kv_alloc *kv, const sn_batch *batch, int32_t vocab,
                            const sn_cuda_meta_layout *lay, int32_t *meta, sn_cuda_step *step);

/* The decode graph for a step: batch size and a power-of-two bucket of the context (at
 * least 256, at most max_positions rounded up), which the decode attention's grid is
 * captured for (a graph captured for a bucket serves every shorter context). */
typedef struct sn_cuda_graph_key {
    int32_t n_seqs;
    int32_t ctx_bucket;
} sn_cuda_graph_key;

/* 1 and the key when the step may run as a graph (decode-only, every run wants logits and
 * graphs are enabled); 0 otherwise. */
int sn_cuda_graph_key_of(const sn_cuda_step *step, int32_t max_positions, int graphs_enabled,
                         sn_cuda_graph_key *key);

/* SN_CUDA_GRAPHS / SN_CUDA_NCCL style switches: unset -> dflt; "0", "" , "off", "no",
 * "false" -> 0; anything else -> 1. */
int sn_cuda_env_flag(const char *value, int dflt);

#ifdef __cplusplus
}
#endif

#endif /* SN_CUDA_PLAN_H */
