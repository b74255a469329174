/* embed_ref.c - embedding rows by id; out-of-range ids give zero rows. */
#include "ref.h"

void sn_ref_embed(float *out, const float *table, const int32_t *tokens, int32_t n, int32_t hidden,
                  int32_t vocab)
{
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < hidden; j++)
            out[(size_t)i * hidden + j] =
                tokens[i] >= 0 && tokens[i] < vocab ? table[(size_t)tokens[i] * hidden + j] : 0.0f;
}
