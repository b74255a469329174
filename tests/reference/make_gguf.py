#!/usr/bin/env python3
"""make_gguf.py - a small seeded random Llama model as a GGUF file, written by the gguf
package (llama.cpp's own Python writer), for the engine's GGUF tests.

Every ggml type the engine computes on appears: the layers cycle their projections through
Q4_0, Q4_1, Q8_0, F16, BF16 and F32, the embedding is Q8_0 and the head (when untied) Q4_0.
Q and K are written as llama.cpp's converter writes them: rows permuted for the interleaved
rotary layout. Dimensions are multiples of 32, the block size.

usage: make_gguf.py OUT.gguf [--seed S] [--tie] [--layers N] [--hidden H] [--heads H]
                    [--kv-heads K] [--ffn F] [--vocab V]
"""
import argparse

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

CYCLE = [T.Q4_0, T.Q4_1, T.Q8_0, T.F16, T.BF16, T.F32]


def permute(w, heads):
    """llama.cpp's permutation of Q/K rows: per head, (2, hd/2) reordered to (hd/2, 2)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add(writer, name, w, qtype):
    if qtype == T.F32:
        writer.add_tensor(name, w.astype(np.float32))
    elif qtype == T.F16:
        writer.add_tensor(name, w.astype(np.float16))
    else:
        q = gguf.quants.quantize(w.astype(np.float32), qtype)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tie", action="store_true")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=224)
    ap.add_argument("--vocab", type=int, default=96)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    hd = a.hidden // a.heads
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_block_count(a.layers)
    w.add_context_length(256)
    w.add_embedding_length(a.hidden)
    w.add_feed_forward_length(a.ffn)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(a.vocab)

    def mat(rows, cols):
        return rng.normal(0, 1 / np.sqrt(cols), (rows, cols))

    def norm(n):
        return 1 + 0.1 * rng.normal(size=n)

    add(w, "token_embd.weight", mat(a.vocab, a.hidden), T.Q8_0)
    k = 0
    for layer in range(a.layers):
        p = f"blk.{layer}."
        add(w, p + "attn_norm.weight", norm(a.hidden), T.F32)
        add(w, p + "attn_q.weight", permute(mat(a.heads * hd, a.hidden), a.heads), CYCLE[k % 6])
        add(w, p + "attn_k.weight", permute(mat(a.kv_heads * hd, a.hidden), a.kv_heads), CYCLE[(k + 1) % 6])
        add(w, p + "attn_v.weight", mat(a.kv_heads * hd, a.hidden), CYCLE[(k + 2) % 6])
        add(w, p + "attn_output.weight", mat(a.hidden, a.heads * hd), CYCLE[(k + 3) % 6])
        add(w, p + "ffn_norm.weight", norm(a.hidden), T.F32)
        add(w, p + "ffn_gate.weight", mat(a.ffn, a.hidden), CYCLE[(k + 4) % 6])
        add(w, p + "ffn_up.weight", mat(a.ffn, a.hidden), CYCLE[(k + 5) % 6])
        add(w, p + "ffn_down.weight", mat(a.hidden, a.ffn), CYCLE[(k + 1) % 6])
        k += 1
    add(w, "output_norm.weight", norm(a.hidden), T.F32)
    if not a.tie:
        add(w, "output.weight", mat(a.vocab, a.hidden), T.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
