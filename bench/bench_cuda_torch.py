#!/usr/bin/env python3
"""bench_cuda_torch.py - the PyTorch side of the kernel benchmarks in scripts/gpu-check.sh.

Times, on the same GPU and the same shapes as bench/bench_cuda.cu:
  - torch.nn.functional.scaled_dot_product_attention, causal, bf16 (Llama-3-8B layer: 32 query
    heads, 8 KV heads, head_dim 128), once per SDPA backend that accepts the call (flash,
    memory-efficient, cuDNN), plus the default dispatch with the kernel the profiler saw;
  - sort-based sampling at vocabulary 128256 (temperature, repetition penalty, top-k via
    torch.topk, top-p via a full sort and cumsum, softmax, torch.multinomial), batch 1/16/64/256.
Prints one JSON object per measurement on stdout and a readable table on stderr. Without torch
or without a GPU it says so (JSON line with "bench": "torch_missing") and exits 0, so the
engine's own numbers still print.

Usage: bench_cuda_torch.py [--quick]
"""
import json
import sys


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    quick = "--quick" in sys.argv[1:]
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # noqa: BLE001 - any import failure means "no torch here"
        emit({"bench": "torch_missing", "reason": f"import torch failed: {e}"})
        print(f"bench_cuda_torch: torch is not installed ({e}); only the engine's numbers are available",
              file=sys.stderr)
        return 0
    if not torch.cuda.is_available():
        emit({"bench": "torch_missing", "reason": "torch sees no CUDA device"})
        print("bench_cuda_torch: torch sees no CUDA device", file=sys.stderr)
        return 0
    dev = torch.device("cuda")
    emit({"bench": "torch_device", "torch": torch.__version__, "name": torch.cuda.get_device_name(0)})
    rows = []

    def time_ms(fn, warm=3, reps=10, inner=1):
        """Median over reps of the time per call of `inner` back-to-back calls between two events
        (as bench_cuda.cu's time_ms: the host's dispatch before the first call is spread over
        `inner` calls instead of counting in full against one), after `warm` calls, ms."""
        for _ in range(warm):
            fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(inner):
                fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) / inner)
        ts.sort()
        return ts[len(ts) // 2]

    def first_line(e):
        lines = str(e).splitlines()
        return (lines[0] if lines else repr(e))[:160]

    # ---- prefill attention: SDPA -------------------------------------------------------------
    nh, nkv, hd = 32, 8, 128
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backends = [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
        if hasattr(SDPBackend, "CUDNN_ATTENTION"):
            backends.append(("cudnn", SDPBackend.CUDNN_ATTENTION))
    except Exception:  # noqa: BLE001 - old torch: only the default dispatch
        backends, sdpa_kernel = [], None
    for batch, length in [(1, 4096), (4, 2048), (16, 512)]:
        if quick:
            length //= 4
        q = torch.randn(batch, nh, length, hd, device=dev, dtype=torch.bfloat16)
        k = torch.randn(batch, nkv, length, hd, device=dev, dtype=torch.bfloat16)
        v = torch.randn(batch, nkv, length, hd, device=dev, dtype=torch.bfloat16)
        k_rep = k.repeat_interleave(nh // nkv, dim=1)
        v_rep = v.repeat_interleave(nh // nkv, dim=1)
        flops = 4.0 * nh * hd * batch * length * (length + 1) / 2.0

        def sdpa_gqa():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        def sdpa_expanded():
            return F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True)

        candidates = [("default", None)] + backends
        for name, backend in candidates:
            for gqa, fn in (("native", sdpa_gqa), ("expanded", sdpa_expanded)):
                try:
                    if backend is None:
                        ms = time_ms(fn, inner=5)
                    else:
                        with sdpa_kernel(backend):
                            ms = time_ms(fn, inner=5)
                except Exception as e:  # noqa: BLE001 - this backend refuses these inputs
                    emit({"bench": "torch_sdpa", "batch": batch, "len": length, "backend": name, "gqa": gqa,
                          "error": first_line(e)})
                    continue
                kernel = ""
                if backend is None:
                    try:
                        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                            fn()
                            torch.cuda.synchronize()
                        evs = sorted(prof.key_averages(), key=lambda e: -getattr(e, "device_time_total",
                                                                                  getattr(e, "cuda_time_total", 0)))
                        kernel = evs[0].key[:80] if evs else ""
                    except Exception as e:  # noqa: BLE001 - profiler unavailable: say so
                        kernel = f"(profiler failed: {str(e)[:60]})"
                tf = flops / (ms * 1e-3) / 1e12
                emit({"bench": "torch_sdpa", "batch": batch, "len": length, "n_heads": nh, "n_kv_heads": nkv,
                      "head_dim": hd, "backend": name, "gqa": gqa, "ms": round(ms, 4), "TFLOPs": round(tf, 1),
                      "kernel": kernel})
                rows.append(f"torch sdpa {name:9s} gqa {gqa:8s} batch {batch:3d} len {length:5d} "
                            f"{ms:8.3f} ms {tf:7.1f} TFLOP/s {kernel}")
                break  # native GQA worked: the expanded variant is only a fallback
        del q, k, v, k_rep, v_rep
        torch.cuda.empty_cache()

    # ---- sampling: sort-based top-k / top-p + multinomial -----------------------------------
    vocab = 128256
    temperature, top_k, top_p, penalty = 0.8, 50, 0.9, 1.1

    def torch_sample(logits, seen):
        x = logits / temperature
        x = torch.where(seen, torch.where(x > 0, x / penalty, x * penalty), x)
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
        sx, si = torch.sort(x, descending=True, dim=-1)
        probs = torch.softmax(sx, dim=-1)
        remove = probs.cumsum(dim=-1) - probs > top_p
        sx = sx.masked_fill(remove, float("-inf"))
        x = torch.empty_like(x).scatter_(-1, si, sx)
        return torch.multinomial(torch.softmax(x, dim=-1), 1)

    n = 10 if quick else 50
    for batch in (1, 16, 64, 256):
        # uniform in [-8, 8), as bench_cuda.cu's logits
        logits = (torch.rand(batch, vocab, device=dev, dtype=torch.float32) * 2.0 - 1.0) * 8.0
        seen = torch.zeros(batch, vocab, device=dev, dtype=torch.bool)
        seen[:, :64] = True

        us = time_ms(lambda: torch_sample(logits, seen), warm=n, reps=5, inner=n) * 1e3
        emit({"bench": "torch_sample", "vocab": vocab, "batch": batch, "top_k": top_k, "top_p": top_p,
              "temperature": temperature, "us": round(us, 2)})
        rows.append(f"torch sample batch {batch:3d} vocab {vocab} {us:9.1f} us (topk + sort + cumsum + multinomial)")

    print(f"\nbench_cuda_torch: torch {torch.__version__} on {torch.cuda.get_device_name(0)}", file=sys.stderr)
    for r in rows:
        print("  " + r, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
