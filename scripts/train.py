#!/usr/bin/env python3
"""train.py - trains a small Llama-architecture model on a `sensorium dataset` output and
exports it as a Sensorium model package (model.safetensors + sensorium.json) that the engine
runs as it is.

The model is the engine's: token embedding (tied to the output head), per layer RMSNorm,
grouped-query attention with rotary embeddings (Hugging Face's rotate_half layout), RMSNorm,
SwiGLU MLP; a final RMSNorm. The loss is next-token cross-entropy on the tokens the dataset's
mask marks (the answers: action segments and eos), so the model learns to answer its
stimuli rather than to predict them. Adam with warm-up and cosine decay, gradient clipping;
seeded, so the same data, arguments and seed give the same weights on the same machine.
Written with JAX (CPU), installed from PyPI when missing.

usage: train.py --layout DIR --data PREFIX --out DIR [--eval PREFIX] [--dim 128]
                [--layers 4] [--heads 4] [--kv-heads 2] [--ffn 352] [--steps 3000]
                [--batch 32] [--lr 3e-3] [--seed 0] [--dtype bf16|f32]
  --layout  a model folder whose sensorium.json holds the vocabulary layout (and the plugin
            data files it names); the package is written to --out with the same layout,
            the data files copied, an "architecture" and "weights" added
  --data    the prefix `sensorium dataset -o` wrote (PREFIX.tokens.npy, .mask.npy,
            .offsets.npy); --eval the same for held-out episodes (loss and answer-token
            accuracy are reported on it)
"""
import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time

import numpy as np


def need_jax():
    try:
        import jax  # noqa: F401
    except ImportError:
        print("train.py: installing jax (CPU) from PyPI", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "jax"])


def load_dataset(prefix):
    tokens = np.load(prefix + ".tokens.npy").astype(np.int32)
    mask = np.load(prefix + ".mask.npy").astype(np.float32)
    offsets = np.load(prefix + ".offsets.npy").astype(np.int64)
    seqs = [(tokens[a:b], mask[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    return seqs


def pad_batch(seqs, idx, length, pad):
    """(tokens, loss weights) of shape (len(idx), length): each sequence left-aligned, padded
    with pad and weight 0; weight i applies to predicting token i from the tokens before."""
    toks = np.full((len(idx), length), pad, np.int32)
    wts = np.zeros((len(idx), length), np.float32)
    for r, i in enumerate(idx):
        t, m = seqs[i]
        toks[r, : len(t)] = t
        wts[r, : len(t)] = m
    return toks, wts


# ---------------------------------------------------------------------------------------
# The model


def init_params(key, cfg):
    import jax
    import jax.numpy as jnp

    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = H // nh
    keys = iter(jax.random.split(key, 8 * cfg["num_hidden_layers"] + 2))

    def mat(rows, cols, scale=1.0):
        return jax.random.normal(next(keys), (rows, cols), jnp.float32) * (scale / math.sqrt(cols))

    p = {"model.embed_tokens.weight": jax.random.normal(next(keys), (V, H), jnp.float32) * 0.5,
         "model.norm.weight": jnp.ones((H,), jnp.float32)}
    depth = 1 / math.sqrt(2 * cfg["num_hidden_layers"])  # residual branches scaled down
    for l in range(cfg["num_hidden_layers"]):
        q = f"model.layers.{l}."
        p[q + "input_layernorm.weight"] = jnp.ones((H,), jnp.float32)
        p[q + "post_attention_layernorm.weight"] = jnp.ones((H,), jnp.float32)
        p[q + "self_attn.q_proj.weight"] = mat(nh * hd, H)
        p[q + "self_attn.k_proj.weight"] = mat(nkv * hd, H)
        p[q + "self_attn.v_proj.weight"] = mat(nkv * hd, H)
        p[q + "self_attn.o_proj.weight"] = mat(H, nh * hd, depth)
        p[q + "mlp.gate_proj.weight"] = mat(I, H)
        p[q + "mlp.up_proj.weight"] = mat(I, H)
        p[q + "mlp.down_proj.weight"] = mat(H, I, depth)
    return p


def forward(p, tokens, cfg):
    """Logits (B, T, V) of every position."""
    import jax
    import jax.numpy as jnp

    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps = H // nh, cfg["rms_norm_eps"]
    B, T = tokens.shape
    inv = cfg["rope_theta"] ** (-jnp.arange(0, hd, 2, dtype=jnp.float32) / hd)
    ang = jnp.arange(T, dtype=jnp.float32)[:, None] * inv[None, :]
    cos, sin = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]

    def rope(x):  # (B, T, heads, hd), dims i and i + hd/2 rotate together
        a, b = x[..., : hd // 2], x[..., hd // 2:]
        return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

    def norm(x, w):
        return x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + eps) * w

    causal = jnp.tril(jnp.ones((T, T), bool))
    x = p["model.embed_tokens.weight"][tokens]
    for l in range(cfg["num_hidden_layers"]):
        q = f"model.layers.{l}."
        h = norm(x, p[q + "input_layernorm.weight"])
        qh = rope((h @ p[q + "self_attn.q_proj.weight"].T).reshape(B, T, nh, hd))
        kh = rope((h @ p[q + "self_attn.k_proj.weight"].T).reshape(B, T, nkv, hd))
        vh = (h @ p[q + "self_attn.v_proj.weight"].T).reshape(B, T, nkv, hd)
        kh, vh = jnp.repeat(kh, nh // nkv, axis=2), jnp.repeat(vh, nh // nkv, axis=2)
        s = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) / math.sqrt(hd)
        s = jnp.where(causal[None, None], s, -1e30)
        att = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), vh).reshape(B, T, nh * hd)
        x = x + att @ p[q + "self_attn.o_proj.weight"].T
        h = norm(x, p[q + "post_attention_layernorm.weight"])
        gate = h @ p[q + "mlp.gate_proj.weight"].T
        x = x + (jax.nn.silu(gate) * (h @ p[q + "mlp.up_proj.weight"].T)) @ p[q + "mlp.down_proj.weight"].T
    x = norm(x, p["model.norm.weight"])
    return x @ p["model.embed_tokens.weight"].T


def loss_and_acc(p, tokens, weights, cfg):
    """Mean cross-entropy of the weighted next tokens, and the fraction predicted right."""
    import jax
    import jax.numpy as jnp

    logits = forward(p, tokens[:, :-1], cfg)
    target, w = tokens[:, 1:], weights[:, 1:]
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, target[..., None], -1)[..., 0]
    right = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    return (nll * w).sum() / n, (right * w).sum() / n


# ---------------------------------------------------------------------------------------
# Export


def to_bf16(a):
    """float32 -> bfloat16 bits (uint16), rounded to nearest even, as torch does."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype(np.uint16)


def write_safetensors(path, tensors, dtype="BF16"):
    """safetensors with every tensor in dtype (BF16 or F32): an 8-byte header length, the JSON
    header, the data in name order. BF16 halves the package; the engine computes in fp32."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name], np.float32)
        raw = (to_bf16(a) if dtype == "BF16" else np.ascontiguousarray(a)).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path + ".part", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".part", path)


def export(params, cfg, layout_dir, out_dir, manifest, dtype):
    os.makedirs(out_dir, exist_ok=True)
    if os.path.abspath(layout_dir) != os.path.abspath(out_dir):
        for name in os.listdir(layout_dir):  # the plugins' data files (codebooks, ranges)
            if name.endswith(".npy"):
                shutil.copy2(os.path.join(layout_dir, name), os.path.join(out_dir, name))
    write_safetensors(os.path.join(out_dir, "model.safetensors"), params, dtype)
    m = dict(manifest)
    m["architecture"] = cfg
    m["weights"] = "model.safetensors"
    with open(os.path.join(out_dir, "sensorium.json") + ".part", "w") as f:
        json.dump(m, f, indent=1)
        f.write("\n")
    os.replace(os.path.join(out_dir, "sensorium.json") + ".part", os.path.join(out_dir, "sensorium.json"))


# ---------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--eval")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=352)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16", help="weights as written (default bf16)")
    a = ap.parse_args()

    with open(os.path.join(a.layout, "sensorium.json")) as f:
        manifest = json.load(f)
    train = load_dataset(a.data)
    held = load_dataset(a.eval) if a.eval else None
    longest = max(len(t) for t, _ in train + (held or []))
    length = -(-longest // 16) * 16  # one shape for every batch: compiled once
    vocab = manifest["vocab"]
    cfg = {"vocab_size": vocab["size"], "hidden_size": a.dim, "intermediate_size": a.ffn,
           "num_hidden_layers": a.layers, "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
           "max_position_embeddings": max(256, length), "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": True}
    pad = vocab.get("pad", vocab["eos"])

    need_jax()
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_default_matmul_precision", "highest")
    params = init_params(jax.random.PRNGKey(a.seed), cfg)
    n_params = sum(int(np.prod(v.shape)) for v in params.values())
    print(f"train.py: {len(train)} sequences ({sum(len(t) for t, _ in train)} tokens, "
          f"{int(sum(m.sum() for _, m in train))} in the loss), padded to {length}; "
          f"model {a.layers}x{a.dim}, {n_params / 1e6:.2f} M parameters", file=sys.stderr)

    def lr_at(step):
        warm = min(200, a.steps // 10)
        if step < warm:
            return a.lr * (step + 1) / warm
        t = (step - warm) / max(1, a.steps - warm)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    grad_fn = jax.jit(jax.value_and_grad(lambda p, t, w: loss_and_acc(p, t, w, cfg), has_aux=True))
    eval_fn = jax.jit(lambda p, t, w: loss_and_acc(p, t, w, cfg))

    @jax.jit
    def adam(p, g, m, v, lr, step):
        b1, b2, wd = 0.9, 0.98, 0.01
        gnorm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(g)))
        scale = jnp.minimum(1.0, 1.0 / (gnorm + 1e-6))  # clip the global norm at 1
        g = jax.tree_util.tree_map(lambda x: x * scale, g)
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        c1, c2 = 1 - b1 ** step, 1 - b2 ** step
        p = jax.tree_util.tree_map(lambda p, m, v: p - lr * (m / c1 / (jnp.sqrt(v / c2) + 1e-8) + wd * p * (p.ndim > 1)),
                                   p, m, v)
        return p, m, v, gnorm

    def evaluate(p):
        losses, accs, ns = [], [], []
        for i in range(0, len(held), 64):
            idx = list(range(i, min(i + 64, len(held))))
            t, w = pad_batch(held, idx, length, pad)
            l_, acc = eval_fn(p, jnp.asarray(t), jnp.asarray(w))
            losses.append(float(l_))
            accs.append(float(acc))
            ns.append(float(w[:, 1:].sum()))
        ns = np.array(ns)
        return float(np.dot(losses, ns) / ns.sum()), float(np.dot(accs, ns) / ns.sum())

    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    rng = np.random.default_rng(a.seed)
    order, cursor = rng.permutation(len(train)), 0
    t0, tokens_seen, log = time.time(), 0, []
    for step in range(1, a.steps + 1):
        if cursor + a.batch > len(order):
            order, cursor = rng.permutation(len(train)), 0
        idx = order[cursor: cursor + a.batch]
        cursor += a.batch
        t, w = pad_batch(train, idx, length, pad)
        (l_, acc), g = grad_fn(params, jnp.asarray(t), jnp.asarray(w))
        params, m, v, gnorm = adam(params, g, m, v, lr_at(step - 1), step)
        tokens_seen += sum(len(train[i][0]) for i in idx)
        log.append(float(l_))
        if step % 50 == 0 or step == a.steps:
            line = (f"step {step}/{a.steps}  loss {np.mean(log[-50:]):.4f}  answer-token acc {float(acc):.3f}  "
                    f"lr {lr_at(step - 1):.2e}  {tokens_seen / (time.time() - t0):.0f} tok/s")
            if held and (step % 500 == 0 or step == a.steps):
                hl, ha = evaluate(params)
                line += f"  held-out loss {hl:.4f} acc {ha:.3f}"
            print(line, file=sys.stderr, flush=True)
    export({k: np.asarray(x) for k, x in params.items()}, cfg, a.layout, a.out, manifest, a.dtype.upper())
    print(f"train.py: wrote {a.out} ({n_params / 1e6:.2f} M parameters, {time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
