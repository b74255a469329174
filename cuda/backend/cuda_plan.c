/*
 * cuda_plan.c - the host side of a CUDA forward step (see cuda_plan.h): batch checks,
 * metadata packing and graph keys. Plain C, no CUDA calls.
 */
#include <string.h>
#include <strings.h>

#include "cuda_plan.h"

void sn_cuda_meta_layout_init(sn_cuda_meta_layout *lay, int32_t max_tokens, int32_t max_seqs)
{
    int32_t o = 0;
    lay->max_tokens = max_tokens;
    lay->max_seqs = max_seqs;
    lay->tokens = o, o += max_tokens;
    lay->pos = o, o += max_tokens;
    lay->slots = o, o += max_tokens;
    lay->seq_rows = o, o += max_seqs;
    lay->seq_start = o, o += max_seqs + 1;
    lay->seq_pos = o, o += max_seqs;
    lay->ctx_lens = o, o += max_seqs;
    lay->out_rows = o, o += max_seqs;
    lay->total = o;
}

sn_status sn_cuda_plan_pack(const sn_kv_alloc *kv, const sn_batch *batch, int32_t vocab,
                            const sn_cuda_meta_layout *lay, int32_t *meta, sn_cuda_step *step)
{
    const int32_t n = batch->n_tokens, S = batch->n_seqs;
    if (n <= 0 || n > lay->max_tokens)
        return sn_fail(SN_ERR_INVALID_ARG, "CUDA backend: batch of %d tokens, the limit is %d", n, lay->max_tokens);
    if (S <= 0 || S > lay->max_seqs || S > n)
        return sn_fail(SN_ERR_INVALID_ARG, "CUDA backend: batch of %d runs (%d tokens), the limit is %d runs",
                       S, n, lay->max_seqs);
    if (batch->seq_start[0] != 0 || batch->seq_start[S] != n)
        return sn_fail(SN_ERR_INVALID_ARG, "CUDA backend: runs cover tokens %d..%d of a batch of %d",
                       batch->seq_start[0], batch->seq_start[S], n);
    memset(step, 0, sizeof *step);
    step->n_tokens = n;
    step->n_seqs = S;
    step->decode_only = 1;
    step->rows_are_tokens = 1;
    for (int32_t r = 0; r < S; r++) {
        const int32_t seq = batch->seq_ids[r], i0 = batch->seq_start[r], i1 = batch->seq_start[r + 1];
        if (seq < 0 || seq >= kv->max_seqs)
            return sn_fail(SN_ERR_INVALID_ARG, "CUDA backend: sequence %d out of range", seq);
        if (i1 <= i0)
            return sn_fail(SN_ERR_INVALID_ARG, "CUDA backend: run %d is empty (tokens %d..%d)", r, i0, i1);
        if (batch->seq_pos[r] < 0)
            return sn_fail(SN_ERR_INVALID_ARG, "CUDA backend: run %d starts at position %d", r, batch->seq_pos[r]);
        const int32_t last = batch->seq_pos[r] + (i1 - i0 - 1);
        if (last / kv->block >= kv->n_seq_blocks[seq])
            return sn_fail(SN_ERR_INTERNAL, "CUDA backend: position %d of sequence %d has no KV slot (kv_reserve first)",
                           last, seq);
        for (int32_t i = i0; i < i1; i++) {
            const int32_t tok = batch->tokens[i], p = batch->seq_pos[r] + (i - i0);
            if (tok < 0 || tok >= vocab)
                return sn_fail(SN_ERR_INVALID_ARG, "token %d outside the model's vocabulary 0..%d", tok, vocab - 1);
            meta[lay->tokens + i] = tok;
            meta[lay->pos + i] = p;
            meta[lay->slots + i] = sn_kv_slot(kv, seq, p);
        }
        meta[lay->seq_rows + r] = seq;
        meta[lay->seq_start + r] = i0;
        meta[lay->seq_pos + r] = batch->seq_pos[r];
        meta[lay->ctx_lens + r] = last + 1;
        if (last + 1 > step->max_ctx)
            step->max_ctx = last + 1;
        if (i1 - i0 != 1)
            step->decode_only = 0;
        if (batch->logits_for[r]) {
            if (i1 - 1 != step->n_rows)
                step->rows_are_tokens = 0;
            meta[lay->out_rows + step->n_rows++] = i1 - 1;
        }
    }
    meta[lay->seq_start + S] = n;
    if (step->n_rows != n)
        step->rows_are_tokens = 0;
    return SN_OK;
}

int sn_cuda_graph_key_of(const sn_cuda_step *step, int32_t max_positions, int graphs_enabled,
                         sn_cuda_graph_key *key)
{
    if (!graphs_enabled || !step->decode_only || step->n_rows != step->n_seqs)
        return 0;
    int32_t b = 256;
    while (b < step->max_ctx && b < max_positions)
        b *= 2;
    key->n_seqs = step->n_seqs;
    key->ctx_bucket = b < step->max_ctx ? step->max_ctx : b;
    return 1;
}

int sn_cuda_env_flag(const char *value, int dflt)
{
    if (!value)
        return dflt;
    if (!*value || strcmp(value, "0") == 0 || strcasecmp(value, "off") == 0 || strcasecmp(value, "no") == 0 ||
        strcasecmp(value, "false") == 0)
        return 0;
    return 1;
}
