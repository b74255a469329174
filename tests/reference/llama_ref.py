#!/usr/bin/env python3
"""llama_ref.py - an independent, plain float64 numpy forward pass of a Llama model: the
reference the engine's CPU backend is tested against.

Written from the model's definition, sharing no code with the engine or make_model.py:
RMSNorm, rotary embeddings in Hugging Face's rotate_half layout (theta from the config,
Llama 3 frequency scaling when configured), grouped-query causal attention, SwiGLU, tied or
separate output embeddings. Reads config.json or sensorium.json's architecture and the
safetensors file(s) itself.

usage: llama_ref.py MODEL_DIR OUT.npy TOKEN [TOKEN ...]
       writes the logits of every position, float32, shape (T, vocab)
"""
import json
import os
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = data[b:end]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw, "<f4")
        elif e["dtype"] == "F16":
            a = np.frombuffer(raw, "<f2")
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: dtype {e['dtype']}")
        out[name] = a.astype(np.float64).reshape(e["shape"])
    return out


def load(model_dir):
    manifest = os.path.join(model_dir, "sensorium.json")
    if os.path.exists(manifest):
        m = json.load(open(manifest))
        cfg, weights = m["architecture"], m["weights"]
    else:
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        idx = os.path.join(model_dir, "model.safetensors.index.json")
        weights = "model.safetensors.index.json" if os.path.exists(idx) else "model.safetensors"
    w = {}
    if weights.endswith(".json"):
        for shard in sorted(set(json.load(open(os.path.join(model_dir, weights)))["weight_map"].values())):
            w.update(read_safetensors(os.path.join(model_dir, shard)))
    else:
        w = read_safetensors(os.path.join(model_dir, weights))
    return cfg, w


def inv_frequencies(cfg, hd):
    theta = cfg.get("rope_theta", 10000.0)
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    rs = cfg.get("rope_scaling")
    if rs:
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        mid = (wavelen <= old / lo) & (wavelen >= old / hi)
        scaled = np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
        inv = scaled
    return inv


def rope(x, pos, inv):
    # x: (T, heads, hd); pairs (i, i + hd/2)
    ang = pos[:, None] * inv[None, :]            # (T, hd/2)
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def forward(cfg, w, tokens):
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim", H // nh)
    eps = cfg.get("rms_norm_eps", 1e-6)
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    inv = inv_frequencies(cfg, hd)
    x = w["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((T, T), -np.inf), 1)
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
            s = q[:, head, :] @ k[:, g, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            out[:, head, :] = s @ v[:, g, :]
        x = x + out.reshape(T, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    tokens = [int(t) for t in sys.argv[3:]]
    cfg, w = load(model_dir)
    np.save(out, forward(cfg, w, tokens).astype(np.float32))


if __name__ == "__main__":
    main()
