#!/usr/bin/env python3
"""llama_ref.py - an independent, plain float64 numpy forward pass of a Llama model: the
reference the engine's CPU backend is tested against.

Written from the model's definition (Hugging Face transformers' LlamaForCausalLM), sharing no
code with the engine or make_model.py:
  x = embed[tokens]
  per layer:  x += o_proj(attention(rope(q_proj(h)), rope(k_proj(h)), v_proj(h))),  h = rmsnorm(x)
              x += down_proj(silu(gate_proj(h)) * up_proj(h)),                      h = rmsnorm(x)
  logits = rmsnorm(x) @ head.T      (head: lm_head, or the embedding when tied)
RMSNorm: x / sqrt(mean(x^2) + eps) * w. Rotary embeddings in Hugging Face's rotate_half
layout (dimension i pairs with i + head_dim/2), theta from the config, Llama 3 frequency
scaling when configured. Grouped-query attention: query head h reads key/value head
h // (heads / kv_heads). Causal, scaled by 1/sqrt(head_dim).

GGUF files load through the gguf package (llama.cpp's own Python reader): every tensor is
dequantised by gguf.quants.dequantize, renamed to Hugging Face's names, and the Q and K rows
that llama.cpp's converter permuted for its interleaved rotary layout are permuted back, so
the forward pass above runs unchanged.

usage: llama_ref.py MODEL OUT.npy TOKEN [TOKEN ...]
       writes the logits of every position, float32, shape (T, vocab)
       llama_ref.py --greedy N MODEL OUT.json TOKEN [TOKEN ...]
       writes {"generated": [N ids], "margins": [top-1 minus top-2 logit at each step]}
MODEL is a model folder or a .gguf file.
"""
import json
import math
import os
import sys

import numpy as np


def read_safetensors(path):
    """{name: float64 array} from one .safetensors file: an 8-byte little-endian header
    length, a JSON header {name: {dtype, shape, data_offsets}}, then the data."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        begin, end = e["data_offsets"]
        raw = data[begin:end]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw, "<f4")
        elif e["dtype"] == "F16":
            a = np.frombuffer(raw, "<f2")
        elif e["dtype"] == "BF16":  # the top 16 bits of a float32
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: tensor {name}: dtype {e['dtype']}")
        out[name] = a.astype(np.float64).reshape(e["shape"])
    return out


GGUF_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def unpermute(w, heads):
    """Undoes llama.cpp's permutation of a Q or K matrix (rows grouped per head as
    (2, hd/2) reshaped to (hd/2, 2)): back to rotate_half order."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path):
    """(config dict in Hugging Face's keys, {HF tensor name: float64 array}) of a GGUF."""
    import gguf  # llama.cpp's reader, from PyPI

    r = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}
    a = meta["general.architecture"]
    nh = meta[f"{a}.attention.head_count"]
    cfg = {
        "hidden_size": meta[f"{a}.embedding_length"],
        "num_attention_heads": nh,
        "num_key_value_heads": meta.get(f"{a}.attention.head_count_kv", nh),
        "num_hidden_layers": meta[f"{a}.block_count"],
        "rms_norm_eps": meta[f"{a}.attention.layer_norm_rms_epsilon"],
        "rope_theta": meta.get(f"{a}.rope.freq_base", 10000.0),
    }
    w = {}
    for t in r.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        x = x.reshape([int(d) for d in reversed(t.shape)])  # ggml lists the fastest dim first
        parts = t.name.split(".")
        if parts[0] == "blk":
            base = GGUF_NAMES[parts[2]]
            if parts[2] == "attn_q":
                x = unpermute(x, nh)
            elif parts[2] == "attn_k":
                x = unpermute(x, cfg["num_key_value_heads"])
            w[f"model.layers.{parts[1]}.{base}.weight"] = x
        elif t.name == "token_embd.weight":
            w["model.embed_tokens.weight"] = x
        elif t.name == "output_norm.weight":
            w["model.norm.weight"] = x
        elif t.name == "output.weight":
            w["lm_head.weight"] = x
        else:
            raise ValueError(f"{path}: tensor {t.name} is not a Llama tensor")
    cfg["tie_word_embeddings"] = "lm_head.weight" not in w
    return cfg, w


def load(model_dir):
    """(config dict, {tensor name: float64 array}) for either layout, or a GGUF file."""
    if os.path.isfile(model_dir):
        return load_gguf(model_dir)
    manifest = os.path.join(model_dir, "sensorium.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            m = json.load(f)
        cfg, weights = m["architecture"], m["weights"]
    else:
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        single = "model.safetensors"  # preferred to an index, as transformers does
        weights = single if os.path.exists(os.path.join(model_dir, single)) else "model.safetensors.index.json"
    w = {}
    if weights.endswith(".json"):
        with open(os.path.join(model_dir, weights)) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        for shard in shards:
            w.update(read_safetensors(os.path.join(model_dir, shard)))
    else:
        w = read_safetensors(os.path.join(model_dir, weights))
    return cfg, w


def inv_frequencies(cfg, hd):
    """The rotary frequencies theta^(-2i/hd), i < hd/2, with Llama 3 scaling when configured:
    wavelengths shorter than original/high_freq_factor are kept, longer than
    original/low_freq_factor divided by factor, and in between interpolated."""
    rs = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rs.get("rope_theta", cfg.get("rope_theta", 10000.0))
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    if rs.get("rope_type", rs.get("type", "default")) != "llama3":
        return inv
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs.get("original_max_position_embeddings", cfg.get("max_position_embeddings", 2048))
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(f)
        elif wavelen > old / lo:
            out.append(f / factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)


def rope(x, pos, inv):
    """x: (T, heads, hd) rotated by angle pos * inv[i] in the plane of dims (i, i + hd/2)."""
    half = x.shape[-1] // 2
    ang = pos[:, None] * inv[None, :]  # (T, hd/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def forward(cfg, w, tokens):
    """Logits (T, vocab) of every position of tokens, float64."""
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    inv = inv_frequencies(cfg, hd)
    x = w["model.embed_tokens.weight"][tokens]  # (T, H)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd)
        q, k = rope(q, pos, inv), rope(k, pos, inv)
        out = np.zeros((T, nh, hd))
        for head in range(nh):
            g = head // (nh // nkv)
            for t in range(T):  # position t attends to 0..t
                s = k[: t + 1, g, :] @ q[t, head, :] / math.sqrt(hd)
                s = np.exp(s - s.max())
                out[t, head, :] = (s / s.sum()) @ v[: t + 1, g, :]
        x = x + out.reshape(T, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


def main():
    args = sys.argv[1:]
    greedy = 0
    if args[:1] == ["--greedy"] and len(args) > 1:
        greedy, args = int(args[1]), args[2:]
    if len(args) < 3:
        sys.exit(__doc__.split("usage: ")[1])
    model_dir, out = args[0], args[1]
    tokens = [int(t) for t in args[2:]]
    cfg, w = load(model_dir)
    if not greedy:
        np.save(out, forward(cfg, w, tokens).astype(np.float32))
        return
    generated, margins = [], []
    for _ in range(greedy):  # recomputed from scratch each step: plain, not fast
        last = forward(cfg, w, tokens + generated)[-1]
        top2 = np.sort(last)[-2:]
        generated.append(int(np.argmax(last)))
        margins.append(float(top2[1] - top2[0]))
    with open(out, "w") as f:
        json.dump({"generated": generated, "margins": margins}, f)


if __name__ == "__main__":
    main()
