/*
 * tp_split.h - which query heads, KV heads and FFN columns tensor-parallel shard s of tp owns:
 * contiguous equal slices, [s * n / tp, (s + 1) * n / tp), the arithmetic of cpu_backend.c's
 * shards (cpu_open), so that a CUDA rank holds exactly the weights the CPU shard s holds and
 * the partial sums agree. n % tp == 0 is checked at open (both backends refuse otherwise).
 */
#ifndef SN_TP_SPLIT_H
#define SN_TP_SPLIT_H

#include <stdint.h>

typedef struct sn_tp_slice {
    int32_t h0, nh;   /* query heads [h0, h0+nh) */
    int32_t kv0, nkv; /* KV heads [kv0, kv0+nkv) */
    int32_t f0, nf;   /* FFN columns [f0, f0+nf) */
} sn_tp_slice;

/* 0 when n_heads, n_kv_heads and intermediate do not all split evenly over tp. */
static inline int sn_tp_split(int32_t n_heads, int32_t n_kv_heads, int32_t intermediate, int32_t tp,
                              int32_t s, sn_tp_slice *out)
{
    if (tp <= 0 || s < 0 || s >= tp || n_heads % tp || n_kv_heads % tp || intermediate % tp)
        return 0;
    out->nh = n_heads / tp;
    out->h0 = s * out->nh;
    out->nkv = n_kv_heads / tp;
    out->kv0 = s * out->nkv;
    out->nf = intermediate / tp;
    out->f0 = s * out->nf;
    return 1;
}

#endif /* SN_TP_SPLIT_H */
