#!/usr/bin/env python3
"""make_model.py - writes a small seeded random Llama model for the engine's tests.

Layouts: a Hugging Face folder (config.json + model.safetensors, or shards + index) or a
Sensorium folder (sensorium.json with architecture, weights and a vocabulary layout whose
text.bytes segment covers ids 8..263, so --vocab >= 264 there). The safetensors format is
written here by hand (8-byte little-endian header length, JSON header, raw little-endian
data), numpy only; BF16 is float32 rounded to nearest even. Shards are named as Hugging Face
names them (model-00001-of-00003.safetensors) with a model.safetensors.index.json.

usage: make_model.py OUT_DIR [--vocab 300] [--hidden 64] [--intermediate 96] [--layers 2]
       [--heads 4] [--kv-heads 2] [--head-dim 16] [--tie] [--rope-theta 10000]
       [--llama3-rope] [--dtype f32|f16|bf16] [--seed 0] [--layout hf|sensorium] [--shards 1]
       [--context 512]
"""
import argparse
import json
import os

import numpy as np


def bf16_bits(a):
    """float32 -> bfloat16 bit patterns, rounding to nearest even."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def encode(a, dtype):
    if dtype == "f32":
        return "F32", a.astype("<f4").tobytes()
    if dtype == "f16":
        return "F16", a.astype("<f2").tobytes()
    return "BF16", bf16_bits(a).astype("<u2").tobytes()


def write_safetensors(path, tensors, dtype):
    """8-byte little-endian header length, the JSON header padded with spaces to a multiple of
    8 (so every tensor's data stays aligned), then the tensors' bytes back to back."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in tensors:
        code, data = encode(a, dtype)
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--vocab", type=int, default=300)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=96)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--tie", action="store_true")
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--llama3-rope", action="store_true")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["hf", "sensorium"], default="hf")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--corrupt", metavar="TENSOR", help="one element of TENSOR set to NaN (a corrupted file)")
    a = p.parse_args()
    if a.heads % a.kv_heads:
        p.error("--heads must be a multiple of --kv-heads")
    if a.layout == "sensorium" and a.vocab < 264:
        p.error("the sensorium layout's text.bytes segment covers ids 8..263: --vocab must be >= 264")

    rng = np.random.default_rng(a.seed)
    H, I, hd = a.hidden, a.intermediate, a.head_dim

    # Linear weights ~ N(0, 1/fan_in) keep each projection's output at unit scale, and norm
    # weights ~ 1, so activations stay O(1) whatever the width; the embedding is N(0, 1).
    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = [("model.embed_tokens.weight", rng.standard_normal((a.vocab, H)).astype(np.float32))]
    for l in range(a.layers):
        pre = f"model.layers.{l}."
        t += [(pre + "input_layernorm.weight", norm(H)),
              (pre + "self_attn.q_proj.weight", mat(a.heads * hd, H)),
              (pre + "self_attn.k_proj.weight", mat(a.kv_heads * hd, H)),
              (pre + "self_attn.v_proj.weight", mat(a.kv_heads * hd, H)),
              (pre + "self_attn.o_proj.weight", mat(H, a.heads * hd)),
              (pre + "post_attention_layernorm.weight", norm(H)),
              (pre + "mlp.gate_proj.weight", mat(I, H)),
              (pre + "mlp.up_proj.weight", mat(I, H)),
              (pre + "mlp.down_proj.weight", mat(H, I))]
    t.append(("model.norm.weight", norm(H)))
    if not a.tie:
        t.append(("lm_head.weight", mat(a.vocab, H)))
    if a.corrupt:
        hit = [x for n, x in t if n == a.corrupt]
        if not hit:
            p.error(f"--corrupt: no tensor {a.corrupt}")
        hit[0].flat[0] = np.nan
    if not 1 <= a.shards <= len(t):
        p.error(f"--shards must be between 1 and the number of tensors, {len(t)}")

    torch_dtype = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[a.dtype]
    arch = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "torch_dtype": torch_dtype, "vocab_size": a.vocab, "hidden_size": H,
            "intermediate_size": I, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
            "num_key_value_heads": a.kv_heads, "head_dim": hd, "max_position_embeddings": a.context,
            "rms_norm_eps": 1e-5, "rope_theta": a.rope_theta, "tie_word_embeddings": a.tie}
    if a.llama3_rope:
        arch["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    os.makedirs(a.out, exist_ok=True)
    if a.shards > 1:
        weight_map, total = {}, 0
        for s in range(a.shards):  # contiguous runs of tensors, none empty
            name = f"model-{s + 1:05d}-of-{a.shards:05d}.safetensors"
            part = t[s * len(t) // a.shards:(s + 1) * len(t) // a.shards]
            write_safetensors(os.path.join(a.out, name), part, a.dtype)
            weight_map.update({n: name for n, _ in part})
            total += sum(len(encode(x, a.dtype)[1]) for _, x in part)
        weights = "model.safetensors.index.json"
        with open(os.path.join(a.out, weights), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    else:
        weights = "model.safetensors"
        write_safetensors(os.path.join(a.out, weights), t, a.dtype)
    if a.layout == "hf":
        with open(os.path.join(a.out, "config.json"), "w") as f:
            json.dump(arch, f, indent=1)
    else:
        manifest = {"sensorium": 1, "name": "random test model", "architecture": arch, "weights": weights,
                    "vocab": {"size": a.vocab, "bos": 0, "eos": 1, "pad": 2,
                              "segments": [{"modality": "text", "plugin": "text.bytes", "start": 8,
                                            "size": 256, "begin": 3, "end": 4}]}}
        with open(os.path.join(a.out, "sensorium.json"), "w") as f:
            json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
