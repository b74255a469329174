/*
 * sample_ref.c - the reference of the sampling kernel is the CPU sampler itself
 * (core/src/sampler.c): this turns the kernel's inputs into the sampler's (the seen bitset
 * into a history of ids) and calls it.
 */
#include <stdlib.h>

#include "ref.h"
#include "sampler.h"

int32_t sn_ref_sample(float *probs, const float *logits, const uint64_t *allowed, const uint64_t *seen,
                      float temperature, int32_t top_k, float top_p, float min_p,
                      float repetition_penalty, uint64_t seed, uint64_t step, int32_t vocab)
{
    sn_sampler s;
    if (sn_sampler_init(&s, vocab) != SN_OK)
        return -2;
    int32_t *history = NULL;
    size_t n_history = 0;
    if (seen) {
        history = malloc((size_t)vocab * sizeof *history);
        if (!history) {
            sn_sampler_free(&s);
            return -2;
        }
        for (int32_t i = 0; i < vocab; i++)
            if ((seen[i / 64] >> (i % 64)) & 1)
                history[n_history++] = i;
    }
    const sn_sampling prm = {.temperature = temperature, .top_k = top_k, .top_p = top_p, .min_p = min_p,
                             .repetition_penalty = repetition_penalty};
    const int32_t token = sn_sample(&s, logits, allowed, &prm, history, n_history, seed, step);
    if (probs)
        sn_sample_distribution(&s, logits, allowed, &prm, history, n_history, probs);
    free(history);
    sn_sampler_free(&s);
    return token;
}
