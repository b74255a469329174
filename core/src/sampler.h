/*
 * sampler.h - turning one row of logits into one token: repetition penalty, temperature,
 * the constraint mask (segment automaton and plugin constrain), top-k, top-p, min-p, and a
 * counter-based Philox draw.
 *
 * Stage of the pipeline: after the backend's forward pass, before the vocabulary layout routes
 * the sampled id to its decoder. The CUDA sampling kernel must reproduce these exact rules
 * (same filtering order, same draw), so that a session gets the same token on either backend
 * for the same logits and seed; this file is the reference.
 */
#ifndef SN_SAMPLER_H
#define SN_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"

/* Sampling parameters of one output modality. temperature 0 means greedy. */
typedef struct sn_sampling {
    float temperature;        /* > 0 scales logits; 0: greedy (argmax after masking/penalty) */
    int32_t top_k;            /* keep the k most likely; 0: off */
    float top_p;              /* keep the smallest set with probability >= top_p; 1: off */
    float min_p;              /* drop ids with p < min_p * p_max; 0: off */
    float repetition_penalty; /* CTRL-style on ids in the history: logit > 0 ? l / r : l * r; 1: off */
} sn_sampling;

/* The defaults: greedy, no filtering, no penalty. */
sn_sampling sn_sampling_default(void);

/* Checks ranges (temperature >= 0, top_k >= 0, 0 < top_p <= 1, 0 <= min_p <= 1,
 * repetition_penalty > 0); SN_ERR_CONFIG with the offending field otherwise. */
sn_status sn_sampling_check(const sn_sampling *s);

/* Philox4x32-10 (Salmon et al., SC'11): counter-based, so the draw for (seed, step) does not
 * depend on anything else that ran. Returns the four 32-bit outputs for counter
 * (c0, c1, c2, c3) and key (k0, k1). */
void sn_philox4x32(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]);

/* The uniform in [0, 1) a session draws at generation step `step`: Philox with key = seed
 * (low, high 32 bits), counter = (step low, step high, 0, 0), first output, top 24 bits
 * times 2^-24. */
float sn_philox_uniform(uint64_t seed, uint64_t step);

/* Scratch space for one vocabulary size, allocated once (no allocation per token). */
typedef struct sn_sampler {
    int32_t vocab;
    float *probs;  /* (vocab) */
    int32_t *idx;  /* (vocab) */
    uint64_t *seen; /* (vocab bits) ids already penalised; all zero between calls */
} sn_sampler;

sn_status sn_sampler_init(sn_sampler *s, int32_t vocab);
void sn_sampler_free(sn_sampler *s);

/*
 * Samples one id from logits (vocab floats; not modified). Order of operations (the CUDA
 * kernel follows the same):
 *   1. allowed (vocab bits, bit i = allowed[i/64] >> (i%64) & 1; NULL = all) masks ids out;
 *   2. repetition penalty on ids present in history[0..n_history);
 *   3. greedy (temperature 0): the allowed id with the largest penalised logit, the lowest
 *      id on ties; stop.
 *   4. softmax of logit/temperature over allowed ids;
 *   5. top-k: keep the k largest probabilities (ties at the boundary: lower ids first);
 *   6. top-p: sorted by probability descending (ties: lower id first), keep the shortest
 *      prefix whose sum >= top_p (always at least one id);
 *   7. min-p: drop ids with p < min_p * max p;
 *   8. renormalise, and walk the kept ids in ascending id order accumulating probability
 *      until the sum exceeds u * total, u = sn_philox_uniform(seed, step); that id is the
 *      sample (the last kept id if rounding leaves the sum short).
 * Returns the id, or -1 when no id is allowed (the caller reports the dead end).
 * Top-k and top-p must not fully sort the vocabulary: select (partial sort or a threshold
 * search) over the candidates.
 */
int32_t sn_sample(sn_sampler *s, const float *logits, const uint64_t *allowed,
                  const sn_sampling *params, const int32_t *history, size_t n_history,
                  uint64_t seed, uint64_t step);

/* sn_sample with the ids under the repetition penalty given as bits (vocab bits, as allowed;
 * NULL: none) instead of a history: what a backend that samples on its device is handed
 * (sn_seen_bits builds them). The same id as sn_sample with that history. */
int32_t sn_sample_seen(sn_sampler *s, const float *logits, const uint64_t *allowed,
                       const sn_sampling *params, const uint64_t *seen, uint64_t seed, uint64_t step);
void sn_seen_bits(uint64_t *seen, int32_t vocab, const int32_t *history, size_t n_history);

/* For tests and the CUDA comparison: the normalised probabilities step 8 draws from,
 * written to probs (vocab; 0 for dropped ids). Returns the number of kept ids. */
int32_t sn_sample_distribution(sn_sampler *s, const float *logits, const uint64_t *allowed,
                               const sn_sampling *params, const int32_t *history,
                               size_t n_history, float *probs);

#endif /* SN_SAMPLER_H */
