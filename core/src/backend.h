/*
 * backend.h - what the engine asks of a compute backend (the CPU's, cuda/'s, or replicas of
 * either): run one forward pass over a ragged batch against a paged KV cache that the backend
 * owns, and hand back a token for each row the scheduler asked for (sampled with sampler.c's
 * rules under the masks the scheduler decided), and the logits when it wants them.
 *
 * Stage of the pipeline: between the scheduler (which packs sessions' tokens into a batch,
 * manages KV blocks per sequence and builds each row's mask) and the decoders (which turn
 * tokens into actions). The interface is the same for every backend, so the scheduler never
 * knows which one runs, and a GPU samples where its logits are.
 *
 * The paged KV cache. Keys and values live in fixed-size blocks of SN_KV_BLOCK positions from
 * one pool, sized by a memory budget when the backend opens. Each sequence (a session's
 * token stream) has a block table: position p is slot p % SN_KV_BLOCK of block
 * table[p / SN_KV_BLOCK]. The scheduler reserves blocks before a step (kv_reserve) and
 * releases a sequence's blocks when its session closes or is preempted (kv_release); a
 * sequence only ever reads and writes its own blocks.
 */
#ifndef SN_BACKEND_H
#define SN_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"
#include "model.h"
#include "sampler.h"

#define SN_KV_BLOCK 16

/* A ragged batch: the tokens of n_seqs sequences, each a run of consecutive positions (a
 * prefill chunk, or one decode token). */
typedef struct sn_batch {
    int32_t n_tokens;
    const int32_t *tokens;    /* (n_tokens) global ids */
    int32_t n_seqs;
    const int32_t *seq_ids;   /* (n_seqs) KV-cache sequence of each run */
    const int32_t *seq_start; /* (n_seqs + 1) run i is tokens[seq_start[i] .. seq_start[i+1]) */
    const int32_t *seq_pos;   /* (n_seqs) the position of each run's first token */
    const uint8_t *logits_for;/* (n_seqs) nonzero: compute logits of the run's last token */
} sn_batch;

/* What the backend needs to sample each logits row of a batch itself (forward_sample): the
 * scheduler's masks and parameters, decided before the step runs. */
typedef struct sn_sample_row {
    sn_sampling params;
    uint64_t seed, step;      /* the draw is sn_philox_uniform(seed, step) */
} sn_sample_row;

typedef struct sn_sample_req {
    const sn_sample_row *rows; /* (logits rows) */
    const uint64_t *allowed;   /* (logits rows, vocab words): each row's mask, as sampler.h's */
    const uint64_t *seen;      /* (logits rows, vocab words): ids under the repetition penalty
                                  (sn_seen_bits of the row's context); NULL: none in any row */
} sn_sample_req;

#define SN_TOKEN_NONFINITE (-2)

typedef struct sn_backend_opts {
    int32_t threads;        /* 0: all cores */
    int32_t tp;             /* tensor-parallel shards (heads and FFN columns split); >= 1 */
    size_t kv_bytes;        /* KV-cache budget in bytes; 0: room for max_seqs full contexts */
    int32_t max_seqs;       /* sequences that may hold blocks at once */
    int32_t max_batch_tokens; /* the largest batch forward() will be given */
    int32_t device_first;   /* GPU backends: shard s runs on device device_first + s */
    int32_t dp;             /* data-parallel replicas (sn_backend_dp_open); 0: 1. A single
                               backend reads it only for its messages */
} sn_backend_opts;

typedef struct sn_backend_ops sn_backend_ops;

/* Every backend's state begins with this, so the engine can reach the ops. */
typedef struct sn_backend {
    const sn_backend_ops *ops;
} sn_backend;

struct sn_backend_ops {
    const char *name;
    /* Prepares weights (converting or uploading them) and allocates the KV pool and every
     * buffer a step needs: forward() does not allocate. */
    sn_status (*open)(const sn_model *model, const sn_backend_opts *opts, sn_backend **out);
    void (*close)(sn_backend *b);
    /* Runs the batch; writes the logits of each run with logits_for set, in run order, to
     * logits (rows of vocab_size floats). Every position the batch covers must already have
     * a KV slot (kv_reserve). */
    sn_status (*forward)(sn_backend *b, const sn_batch *batch, float *logits);
    /* forward(), then one token per logits row with sampler.c's rules and result
     * (sn_sample_seen), or -1 where the row allows nothing, or SN_TOKEN_NONFINITE where a
     * logit of the row is NaN or +inf (corrupted weights, overflowing activations): the
     * engine's path, so that a GPU backend samples on the device and sends back tokens, not
     * rows of logits. The logits are written too when logits is not NULL. */
    sn_status (*forward_sample)(sn_backend *b, const sn_batch *batch, const sn_sample_req *req,
                                int32_t *tokens, float *logits);
    /* Makes room in sequence seq for positions [0, n_positions): allocates blocks as needed.
     * SN_ERR_NOMEM when the pool has too few free blocks; then nothing is allocated. */
    sn_status (*kv_reserve)(sn_backend *b, int32_t seq, int32_t n_positions);
    /* Returns every block of sequence seq to the pool. */
    void (*kv_release)(sn_backend *b, int32_t seq);
    /* Free blocks in the pool, and the pool's size. */
    int32_t (*kv_free_blocks)(const sn_backend *b);
    int32_t (*kv_total_blocks)(const sn_backend *b);
    /* The pool sequence seq takes its blocks from, or -1 while it holds none; only blocks
     * of the same pool can make room for it. NULL: one pool for every sequence. */
    int32_t (*kv_domain)(const sn_backend *b, int32_t seq);
};

/* The CPU backend: the reference every other backend is tested against. */
extern const sn_backend_ops sn_cpu_backend;

/* Data-parallel replicas (backend_dp.c): opts->dp copies of the backend `inner`, replica r
 * on devices r * tp ..., each with its own weights and KV pool of opts->kv_bytes, behind one
 * backend. A sequence lives on one replica from its first kv_reserve until kv_release; each
 * forward() splits the batch by replica and, when `parallel`, runs the replicas on threads of
 * their own (GPU replicas; CPU replicas share the cores and run one after another). */
sn_status sn_backend_dp_open(const sn_backend_ops *inner, const sn_model *model, const sn_backend_opts *opts,
                             int parallel, sn_backend **out);

/* Opens the backend called name (backend_loader.c): "cpu"; "cuda", libsensorium_cuda.so
 * loaded with dlopen when a GPU is present (an error naming why otherwise); or "auto", CUDA
 * when it can, else the CPU with one log line saying why. opts->dp > 1 opens that many
 * replicas (sn_backend_dp_open). */
sn_status sn_backend_open_named(const char *name, const sn_model *model, const sn_backend_opts *opts,
                                sn_backend **out);

#endif /* SN_BACKEND_H */
