/* gather_ref.c - rows of a matrix picked by index. */
#include "ref.h"

void sn_ref_gather_rows(uint16_t *dst, const uint16_t *src, const int32_t *idx, int32_t n_rows, int32_t cols)
{
    for (int32_t i = 0; i < n_rows; i++)
        memcpy(dst + (size_t)i * cols, src + (size_t)idx[i] * cols, (size_t)cols * sizeof *dst);
}
