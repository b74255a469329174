/*
 * emul_attn.c - attn_decode.cu's split-KV partition and log-sum-exp merge, and
 * attn_prefill.cu's FlashAttention-2 tiling, on the CPU with attn_core.h (see emul.h).
 * Arithmetic is fp32 in the log2 domain as on the GPU; the order of the dot products is the
 * plain one (the tensor cores' order is not reproducible anyway).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/attn_core.h"
#include "emul.h"
#include "ref.h"

int emul_attn_decode(float *out, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                     const int32_t *block_tables, int32_t table_stride, const int32_t *seq_rows,
                     const int32_t *ctx_lens, int32_t n_seqs, int32_t n_heads, int32_t n_kv_heads,
                     int32_t head_dim, float scale, int32_t max_ctx, int32_t n_sm, int32_t *n_splits_out)
{
    const sn_decode_plan plan = sn_decode_make_plan(n_seqs, n_kv_heads, max_ctx, n_sm);
    const int32_t group = n_heads / n_kv_heads, hd = head_dim, S = plan.n_splits;
    const float scale_log2 = scale * SN_LOG2E;
    *n_splits_out = S;
    float *part_o = malloc((size_t)S * hd * sizeof *part_o), *part_m = malloc((size_t)S * sizeof *part_m);
    float *part_l = malloc((size_t)S * sizeof *part_l), *acc = malloc((size_t)hd * sizeof *acc);
    float *sc = malloc(SN_DECODE_TILE * sizeof *sc), *qs = malloc((size_t)hd * sizeof *qs);
    int32_t *hits = calloc((size_t)(max_ctx > 0 ? max_ctx : 1), sizeof *hits);
    int status = 0;
    for (int32_t s = 0; s < n_seqs && !status; s++) {
        const int32_t ctx = ctx_lens[s];
        const int32_t *table_row = block_tables + (size_t)seq_rows[s] * table_stride;
        for (int32_t h = 0; h < n_heads; h++) {
            const int32_t kvh = h / group;
            for (int32_t d = 0; d < hd; d++)
                qs[d] = q[((size_t)s * n_heads + h) * hd + d] * scale_log2;
            if (h == 0)
                memset(hits, 0, (size_t)(max_ctx > 0 ? max_ctx : 1) * sizeof *hits);
            for (int32_t sp = 0; sp < S; sp++) {
                const int32_t begin = sn_split_begin(sp, plan.split_len), end = sn_split_end(sp, plan.split_len, ctx);
                part_m[sp] = -INFINITY;
                part_l[sp] = 0.0f;
                if (begin >= end)
                    continue;
                float m = -INFINITY, l = 0.0f;
                memset(acc, 0, (size_t)hd * sizeof *acc);
                for (int32_t t0 = begin; t0 < end; t0 += SN_DECODE_TILE) {
                    const int32_t nvalid = end - t0 < SN_DECODE_TILE ? end - t0 : SN_DECODE_TILE;
                    float tmax = -INFINITY;
                    for (int32_t t = 0; t < SN_DECODE_TILE; t++) {
                        sc[t] = -INFINITY;
                        if (t < nvalid) {
                            const int64_t off = sn_kv_pos_offset(table_row, t0 + t, kvh, n_kv_heads, hd);
                            float a = 0.0f;
                            for (int32_t d = 0; d < hd; d++)
                                a += qs[d] * sn_ref_bf16_to_f32(k_cache[off + d]);
                            sc[t] = a;
                            if (h == 0)
                                hits[t0 + t]++;
                        }
                        tmax = fmaxf(tmax, sc[t]);
                    }
                    float m_new;
                    const float alpha = sn_online_rescale(m, tmax, &m_new);
                    float psum = 0.0f;
                    for (int32_t d = 0; d < hd; d++)
                        acc[d] *= alpha;
                    for (int32_t t = 0; t < nvalid; t++) {
                        const float p = sn_online_p(sc[t], m_new);
                        psum += p;
                        const int64_t off = sn_kv_pos_offset(table_row, t0 + t, kvh, n_kv_heads, hd);
                        for (int32_t d = 0; d < hd; d++)
                            acc[d] += p * sn_ref_bf16_to_f32(v_cache[off + d]);
                    }
                    m = m_new;
                    l = l * alpha + psum;
                }
                const float inv = l > 0.0f ? 1.0f / l : 0.0f;
                for (int32_t d = 0; d < hd; d++)
                    part_o[(size_t)sp * hd + d] = acc[d] * inv;
                part_m[sp] = m;
                part_l[sp] = l;
            }
            if (h == 0)
                for (int32_t p = 0; p < ctx; p++)
                    if (hits[p] != 1)
                        status = -1;
            /* the merge (with one split the kernel writes part_o directly: the same values) */
            float *o = out + ((size_t)s * n_heads + h) * hd;
            int32_t nv = sn_split_count(ctx, plan.split_len);
            if (nv > S)
                nv = S;
            const float M = sn_lse_max(part_m, part_l, nv);
            float L = 0.0f;
            for (int32_t i = 0; i < nv; i++)
                L += sn_lse_weight(part_m[i], part_l[i], M);
            const float inv = L > 0.0f ? 1.0f / L : 0.0f;
            for (int32_t d = 0; d < hd; d++) {
                float a = 0.0f;
                for (int32_t i = 0; i < nv; i++) {
                    const float w = sn_lse_weight(part_m[i], part_l[i], M);
                    if (w > 0.0f)
                        a += w * part_o[(size_t)i * hd + d];
                }
                o[d] = a * inv;
            }
        }
    }
    free(part_o);
    free(part_m);
    free(part_l);
    free(acc);
    free(sc);
    free(qs);
    free(hits);
    return status;
}

int emul_attn_prefill(float *out, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                      const int32_t *block_tables, int32_t table_stride, const int32_t *seq_rows,
                      const int32_t *seq_start, const int32_t *seq_pos, int32_t n_seqs, int32_t n_tokens,
                      int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, float scale, int bf16_p)
{
    enum { BM = SN_PREFILL_BM, BN = SN_PREFILL_BN };
    const int32_t group = n_heads / n_kv_heads, hd = head_dim;
    const int32_t tm = sn_prefill_tokens_per_tile(group);
    const int32_t max_tiles = sn_prefill_max_tiles(n_tokens, n_seqs, tm);
    const float scale_log2 = scale * SN_LOG2E;
    float *Q = malloc((size_t)BM * hd * sizeof *Q), *K = malloc((size_t)BN * hd * sizeof *K);
    float *V = malloc((size_t)BN * hd * sizeof *V), *O = malloc((size_t)BM * hd * sizeof *O);
    int32_t *written = calloc((size_t)n_tokens * n_heads, sizeof *written);
    float m_s[BM], l_s[BM], P[BM][BN];
    int32_t pos_s[BM];
    int status = 0;
    int32_t expected_tiles = 0;
    for (int32_t r = 0; r < n_seqs; r++)
        expected_tiles += (seq_start[r + 1] - seq_start[r] + tm - 1) / tm;
    if (expected_tiles > max_tiles || tm * group > BM)
        status = -1;
    for (int32_t kvh = 0; kvh < n_kv_heads; kvh++) {
        int32_t found = 0;
        for (int32_t j = 0; j < max_tiles; j++) {
            sn_prefill_tile tile;
            if (!sn_prefill_find_tile(seq_start, n_seqs, tm, j, &tile)) {
                if (j < expected_tiles)
                    status = -1; /* tiles must be 0..expected-1 */
                continue;
            }
            found++;
            if (j >= expected_tiles || tile.ntok < 1 || tile.ntok > tm || tile.tok0 < seq_start[tile.run] ||
                tile.tok0 + tile.ntok > seq_start[tile.run + 1])
                status = -1;
            const int32_t kv_end = sn_prefill_kv_end(&tile, seq_start, seq_pos);
            const int32_t *table_row = block_tables + (size_t)seq_rows[tile.run] * table_stride;
            const int32_t rows = tile.ntok * group;
            for (int32_t r = 0; r < BM; r++) {
                pos_s[r] = sn_prefill_row_pos(&tile, seq_start, seq_pos, group, r);
                m_s[r] = -INFINITY;
                l_s[r] = 0.0f;
                for (int32_t d = 0; d < hd; d++) {
                    Q[(size_t)r * hd + d] = r < rows ? q[((size_t)(tile.tok0 + r / group) * n_heads + kvh * group + r % group) * hd + d] : 0.0f;
                    O[(size_t)r * hd + d] = 0.0f;
                }
                if ((r < rows) != (pos_s[r] >= 0) || pos_s[r] >= kv_end)
                    status = -1;
            }
            int32_t warp_max_pos[BM / 16];
            for (int32_t w = 0; w < BM / 16; w++) {
                warp_max_pos[w] = -1;
                for (int32_t r = 0; r < 16; r++)
                    if (pos_s[w * 16 + r] > warp_max_pos[w])
                        warp_max_pos[w] = pos_s[w * 16 + r];
            }
            for (int32_t kt0 = 0; kt0 < kv_end; kt0 += BN) {
                for (int32_t t = 0; t < BN; t++) {
                    const int32_t p = kt0 + t;
                    const int64_t off = p < kv_end ? sn_kv_pos_offset(table_row, p, kvh, n_kv_heads, hd) : -1;
                    for (int32_t d = 0; d < hd; d++) {
                        K[(size_t)t * hd + d] = off >= 0 ? sn_ref_bf16_to_f32(k_cache[off + d]) : 0.0f;
                        V[(size_t)t * hd + d] = off >= 0 ? sn_ref_bf16_to_f32(v_cache[off + d]) : 0.0f;
                    }
                }
                for (int32_t r = 0; r < BM; r++) {
                    if (kt0 > warp_max_pos[r / 16])
                        continue; /* the warp skips this tile */
                    float s[BN], tmax = -INFINITY;
                    for (int32_t c = 0; c < BN; c++) {
                        float a = 0.0f;
                        for (int32_t d = 0; d < hd; d++)
                            a += Q[(size_t)r * hd + d] * K[(size_t)c * hd + d];
                        s[c] = kt0 + c <= pos_s[r] ? a * scale_log2 : -INFINITY;
                        tmax = fmaxf(tmax, s[c]);
                    }
                    float m_new;
                    const float alpha = sn_online_rescale(m_s[r], tmax, &m_new);
                    float psum = 0.0f;
                    for (int32_t c = 0; c < BN; c++) {
                        const float p = sn_online_p(s[c], m_new);
                        psum += p;
                        P[r][c] = bf16_p ? sn_ref_round_bf16(p) : p;
                    }
                    m_s[r] = m_new;
                    l_s[r] = l_s[r] * alpha + psum;
                    for (int32_t d = 0; d < hd; d++) {
                        float a = O[(size_t)r * hd + d] * alpha;
                        for (int32_t c = 0; c < BN; c++)
                            a += P[r][c] * V[(size_t)c * hd + d];
                        O[(size_t)r * hd + d] = a;
                    }
                }
            }
            for (int32_t r = 0; r < BM; r++) {
                if (pos_s[r] < 0)
                    continue;
                const int32_t tok = tile.tok0 + r / group, h = kvh * group + r % group;
                const float inv = l_s[r] > 0.0f ? 1.0f / l_s[r] : 0.0f;
                for (int32_t d = 0; d < hd; d++)
                    out[((size_t)tok * n_heads + h) * hd + d] = O[(size_t)r * hd + d] * inv;
                written[(size_t)tok * n_heads + h]++;
            }
        }
        if (found != expected_tiles)
            status = -1;
    }
    for (int32_t i = 0; i < n_tokens * n_heads; i++)
        if (written[i] != 1)
            status = -1;
    free(Q);
    free(K);
    free(V);
    free(O);
    free(written);
    return status;
}
