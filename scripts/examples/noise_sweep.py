#!/usr/bin/env python3
"""noise_sweep.py - how well does the reflex model hear through noise? An example experiment
with the Python binding.

For each SNR band (word power over noise power, in dB) it asks the reflex world generator
(scripts/reflex/world.py) for N test episodes, feeds each episode's stimuli (a spoken command
as audio, a tilt as an IMU series) to a session of the model, lets the model answer with one
"action" segment, and counts how often the named action is the episode's target. Sessions run
in batches through one engine (continuous batching), and the result is a plot of accuracy
against SNR, with the chance level for reference, plus a JSON line per band on stdout.

Every band uses the same world seed, so the bands hold the same words, speakers, tilts and
noise colours and differ only in the noise level.

usage: noise_sweep.py [--model models/reflex] [--bands -10,-5,0,5,10,20,30] [--episodes 60]
                      [--seed 1] [--out noise_sweep.png] [--batch 8] [--threads 0]
                      [--world scripts/reflex/world.py] [--work DIR]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import wave

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import sensorium as sn  # noqa: E402


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, installed with pip when missing."""
    try:
        import matplotlib
    except ImportError:
        print("noise_sweep: installing matplotlib (python3 -m pip install matplotlib)", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "matplotlib"])
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_wav(path):
    """(float32 mono samples in [-1, 1], sample rate) of a 16-bit PCM WAV."""
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit samples; this reader takes 16-bit PCM")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, channels)
    return (pcm.astype(np.float32) / 32768.0).mean(axis=1), rate


def feed_episode(session, episode, root):
    """Feeds an episode's stimuli in order: WAV as audio, NPY as a series, text as text."""
    for f in episode["feeds"]:
        path = os.path.join(root, f["file"])
        if path.endswith(".wav"):
            samples, rate = read_wav(path)
            session.feed(f["modality"], samples, rate=rate)
        elif path.endswith(".npy"):
            session.feed(f["modality"], np.load(path).astype(np.float32), rate=f.get("rate"))
        else:
            session.feed_file(f["modality"], path)


def target_action(episode, modality):
    for t in episode["targets"]:
        if t["modality"] == modality:
            return t["text"]
    raise ValueError(f"episode {episode['id']} has no '{modality}' target")


def make_episodes(world, out_dir, n, seed, low, high):
    """Runs the world generator for n test episodes with SNR in [low, high] dB; returns them."""
    cmd = [sys.executable, world, "--out", out_dir, "--episodes", str(n), "--seed", str(seed),
           f"--noise-db={low:g},{high:g}", "--test-fraction", "1"]  # = : LOW may be negative
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"noise_sweep: {' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr.strip()}")
    with open(os.path.join(out_dir, "episodes.jsonl"), encoding="utf-8") as f:
        episodes = [json.loads(line) for line in f if line.strip()]
    return [e for e in episodes if e.get("split") == "test"]


def evaluate(engine, episodes, root, modality, batch):
    """(correct, total, per-episode records): each episode in its own session, batch of them
    at a time through the engine, greedy, one segment of `modality` each."""
    correct, records = 0, []
    for i in range(0, len(episodes), batch):
        group = episodes[i:i + batch]
        sessions = []
        for ep in group:
            s = engine.session(seed=0)
            feed_episode(s, ep, root)
            s.generate(modality, max_tokens=16, max_segments=1)
            sessions.append(s)
        engine.run()
        for ep, s in zip(group, sessions):
            named = [a for a in s.actions if isinstance(a, sn.NamedAction) and a.modality == modality]
            got = named[0].name if named else None
            want = target_action(ep, modality)
            correct += got == want
            records.append({"id": ep["id"], "want": want, "got": got, "stop": s.stop_reason,
                            "snr_db": ep.get("meta", {}).get("snr_db")})
            s.close()
    return correct, len(episodes), records


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(REPO, "models", "reflex"),
                    help="the trained reflex model folder (default models/reflex)")
    ap.add_argument("--bands", default="-10,-5,0,5,10,20,30",
                    help="SNR band edges in dB, ascending: each pair of neighbours is one band")
    ap.add_argument("--episodes", type=int, default=60, help="test episodes per band")
    ap.add_argument("--seed", type=int, default=1, help="world seed, the same for every band")
    ap.add_argument("--out", default="noise_sweep.png", help="the plot (PNG)")
    ap.add_argument("--batch", type=int, default=8, help="sessions run together")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    ap.add_argument("--modality", default="action", help="the output modality scored")
    ap.add_argument("--world", default=os.path.join(REPO, "scripts", "reflex", "world.py"),
                    help="the world generator")
    ap.add_argument("--work", help="keep the episodes in this folder (default: a temporary one)")
    args = ap.parse_args()

    if not os.path.isdir(args.model):
        sys.exit(f"noise_sweep: the model folder '{args.model}' does not exist. Train the reflex "
                 "model first (scripts/train.py) or pass --model DIR.")
    if not os.path.isfile(args.world):
        sys.exit(f"noise_sweep: the world generator '{args.world}' does not exist; pass --world PATH")
    try:
        edges = [float(x) for x in args.bands.split(",")]
    except ValueError:
        sys.exit(f"noise_sweep: --bands wants numbers separated by commas, not '{args.bands}'")
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        sys.exit("noise_sweep: --bands needs at least two ascending edges, e.g. -10,0,10,20")
    if args.episodes < 1 or args.batch < 1:
        sys.exit("noise_sweep: --episodes and --batch must be positive")

    try:
        engine = sn.Engine(args.model, threads=args.threads, max_sessions=args.batch)
    except sn.SensoriumError as e:
        sys.exit(f"noise_sweep: cannot open the model '{args.model}': {e}")
    with engine, tempfile.TemporaryDirectory(prefix="noise_sweep_") as tmp:
        print(f"noise_sweep: {engine.describe}", file=sys.stderr)
        m = engine.modalities.get(args.modality)
        if m is None or not m.decoder:
            sys.exit(f"noise_sweep: the model has no output modality '{args.modality}' "
                     f"(it has: {', '.join(engine.modalities) or 'none'})")
        n_classes = len(m.config.get("actions", [])) or None
        work = args.work or tmp
        results = []
        for low, high in zip(edges, edges[1:]):
            band_dir = os.path.join(work, f"snr_{low:g}_{high:g}")
            t0 = time.monotonic()
            episodes = make_episodes(args.world, band_dir, args.episodes, args.seed, low, high)
            t1 = time.monotonic()
            correct, total, records = evaluate(engine, episodes, band_dir, args.modality, args.batch)
            t2 = time.monotonic()
            r = {"snr_low_db": low, "snr_high_db": high, "episodes": total, "correct": correct,
                 "accuracy": correct / total if total else float("nan"),
                 "no_answer": sum(x["got"] is None for x in records),
                 "world_s": round(t1 - t0, 2), "model_s": round(t2 - t1, 2)}
            results.append(r)
            print(json.dumps(r), flush=True)

    plt = pyplot()
    centre = [(r["snr_low_db"] + r["snr_high_db"]) / 2 for r in results]
    acc = [r["accuracy"] for r in results]
    err = [math.sqrt(a * (1 - a) / r["episodes"]) if r["episodes"] else 0 for a, r in zip(acc, results)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar(centre, acc, yerr=err, marker="o", capsize=3, label=os.path.basename(os.path.normpath(args.model)))
    for r, x in zip(results, centre):  # the band each point stands for
        ax.hlines(r["accuracy"], r["snr_low_db"], r["snr_high_db"], alpha=0.3)
    if n_classes:
        ax.axhline(1 / n_classes, ls="--", color="gray", label=f"chance (1/{n_classes})")
    ax.set_xlabel("SNR band, dB (word power / noise power)")
    ax.set_ylabel(f"'{args.modality}' accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Reflex: {args.modality} accuracy vs noise ({args.episodes} test episodes per band)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"noise_sweep: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
