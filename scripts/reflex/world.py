#!/usr/bin/env python3
"""scripts/reflex/world.py - the reflex world: a seeded generator of synthetic episodes.

Each episode is one stimulus and its correct response, the data a Sensorium model is trained
and tested on for the reflex task:
  feeds    audio/ID.wav  1.0 s, 16 kHz mono 16-bit: a spoken command word (espeak-ng) at a
                         random onset, background noise at a random SNR, sometimes a tone
           imu/ID.npy    float32 (20, 2): roll and pitch in degrees, 20 ticks at 50 Hz
  targets  action        raise_left_hand / raise_right_hand / stop, from the word
           joints        (1, 2): ankle_roll, ankle_pitch = -(mean tilt), clipped to +-25 deg
and one line per episode in DIR/episodes.jsonl. The stages run in data-flow order below:
plan an episode's random choices, synthesise the word, resample it to 16 kHz, mix the clip,
draw the tilt series, write the files. Only numpy and the espeak-ng command are needed.

Determinism: every random choice of an episode comes from its own numpy generator seeded
with (seed, split, index), so the same arguments give byte-identical files whatever the
number of parallel workers. README.md says what the test split holds out.
"""

import argparse
import concurrent.futures
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave

import numpy as np

RATE = 16000                  # output sample rate, Hz
CLIP_SAMPLES = RATE           # 1.0 s
IMU_TICKS, IMU_RATE = 20, 50  # 0.4 s of tilt at 50 Hz

WORDS = ("left", "right", "stop")
ACTIONS = {"left": "raise_left_hand", "right": "raise_right_hand", "stop": "stop"}

# espeak-ng's English voice and its variants (en+whisper left out: too hard to hear).
VOICES = ("en", "en-us", "en+m1", "en+m2", "en+m3", "en+m4", "en+m5", "en+m6", "en+m7",
          "en+f1", "en+f2", "en+f3", "en+f4", "en+croak")
# Never used in train; half the test episodes (on average) speak with one of these.
HELD_OUT_VOICES = ("en+m6", "en+f2")
TRAIN_VOICES = tuple(v for v in VOICES if v not in HELD_OUT_VOICES)
PITCH_RANGE = (20, 80)        # espeak-ng -p, inclusive
SPEED_RANGE = (130, 210)      # espeak-ng -s, words per minute, inclusive

SNR_DB_RANGE = (5.0, 30.0)    # word power over noise power
TONE_PROB = 0.5
TONE_HZ_RANGE = (200.0, 2000.0)
TONE_DB_RANGE = (-20.0, 0.0)  # tone RMS relative to the word's RMS
TONE_DUR_RANGE = (0.1, 0.6)   # seconds
PEAK_RANGE = (0.3, 0.9)       # final peak amplitude, full scale = 1
PINK_LOW_HZ = 20.0            # pink noise has no energy below this (a microphone's high-pass)

TILT_RANGE = 20.0             # constant tilt, uniform in [-20, 20] degrees per axis
DRIFT_RANGE = 2.0             # linear drift over the window, uniform in [-2, 2] degrees
IMU_NOISE_SIGMA = 0.5
JOINT_LIMIT = 25.0

SPLIT_CODE = {"train": 0, "test": 1}


# ---------------------------------------------------------------------------------------
# Planning: every random choice of one episode, drawn from that episode's own generator.

def episode_rng(seed, split, index):
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODE[split], index]))


def draw_speaker(rng, split, train_speakers):
    """A (voice, pitch, speed) triple. Test triples never occur in train: half come from
    the held-out voices, half from the train voices redrawn until unused by train."""
    if split == "test" and rng.random() < 0.5:
        voices = HELD_OUT_VOICES
    else:
        voices = TRAIN_VOICES
    while True:
        speaker = (voices[rng.integers(len(voices))],
                   int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
                   int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)))
        if split == "train" or speaker not in train_speakers:
            return speaker


def plan_episode(seed, split, index, snr_range, train_speakers):
    rng = episode_rng(seed, split, index)
    word = WORDS[index % len(WORDS)]
    voice, pitch, speed = draw_speaker(rng, split, train_speakers)
    return {
        "id": "%s-%05d" % (split, index), "split": split, "word": word,
        "voice": voice, "pitch": pitch, "speed": speed,
        "snr_db": float(rng.uniform(*snr_range)),
        "noise": "pink" if rng.random() < 0.5 else "white",
        "peak": float(rng.uniform(*PEAK_RANGE)),
        "rng": rng,   # the rest (onset, tone, noise samples, tilt) is drawn while mixing
    }


# ---------------------------------------------------------------------------------------
# Synthesis: one espeak-ng process per word, the word trimmed of its leading and trailing
# silence so the onset and the SNR refer to the speech itself.

def synthesise(word, voice, pitch, speed, tmpdir, name):
    path = os.path.join(tmpdir, name + ".wav")
    cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", path, word]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0 or not os.path.exists(path):
        raise RuntimeError("%s: exit %d: %s" % (" ".join(cmd), proc.returncode,
                                                proc.stderr.decode(errors="replace").strip()))
    try:
        with wave.open(path, "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise RuntimeError("%s: expected mono 16-bit output, got %d channels, %d bytes"
                                   % (" ".join(cmd), w.getnchannels(), w.getsampwidth()))
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    finally:
        os.remove(path)
    x = x.astype(np.float64) / 32768.0
    loud = np.flatnonzero(np.abs(x) > 0.005 * np.max(np.abs(x))) if x.size else []
    if len(loud) == 0:
        raise RuntimeError("%s: espeak-ng produced silence" % " ".join(cmd))
    return x[loud[0]:loud[-1] + 1], rate


# ---------------------------------------------------------------------------------------
# Resampling: polyphase windowed sinc. For rates in/out = M/L (reduced), output sample n
# sits at input position n*M/L; its fractional part takes one of L values, so the filter
# is tabulated once per phase. Kaiser window, cutoff 0.94 of the lower Nyquist frequency:
# for 22050 -> 16000 Hz, flat to 7 kHz (-0.04 dB), -6 dB at 7.5 kHz, nothing from 8 kHz.

_FILTERS = {}   # (up, down) -> table; two threads racing only build the same table twice


def _polyphase_table(up, down, zero_crossings=32, beta=8.6):
    key = (up, down)
    if key not in _FILTERS:
        fc = 0.5 * min(1.0, up / down) * 0.94            # cycles per input sample
        half = int(math.ceil(zero_crossings / (2.0 * fc)))  # half-width, input samples
        k = np.arange(-half + 1, half + 1)                  # taps relative to floor(pos)
        frac = np.arange(up) / up                           # fractional position per phase
        tau = k[None, :] - frac[:, None]                    # (phase, tap) distance
        h = 2.0 * fc * np.sinc(2.0 * fc * tau) * _kaiser(tau / half, beta)
        h /= h.sum(axis=1, keepdims=True)                   # unit gain at DC for every phase
        _FILTERS[key] = (h, k)
    return _FILTERS[key]


def _kaiser(u, beta):
    """Kaiser window at positions u in [-1, 1] (0 outside)."""
    inside = np.abs(u) <= 1.0
    arg = beta * np.sqrt(np.clip(1.0 - u * u, 0.0, None))
    return np.where(inside, np.i0(arg) / np.i0(beta), 0.0)


def resample(x, rate_in, rate_out):
    if rate_in == rate_out:
        return x.copy()
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    h, k = _polyphase_table(up, down)
    n_out = -(-len(x) * up // down)
    pos = np.arange(n_out, dtype=np.int64) * down
    base, phase = pos // up, pos % up
    pad = len(k)
    xp = np.concatenate([np.zeros(pad), x, np.zeros(pad)])
    idx = base[:, None] + k[None, :] + pad                  # (out, tap) into xp
    return np.einsum("nt,nt->n", xp[idx], h[phase])


# ---------------------------------------------------------------------------------------
# Mixing: word (unit RMS over its extent) + optional tone + noise scaled to the SNR, then
# the whole clip scaled to the drawn peak and quantised to 16 bits.

def make_noise(rng, kind, n):
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1.0 / RATE)
    gain = np.zeros_like(f)
    gain[f >= PINK_LOW_HZ] = 1.0 / np.sqrt(f[f >= PINK_LOW_HZ])
    return np.fft.irfft(spec * gain, n)


def mix_clip(ep, word):
    rng = ep["rng"]
    if len(word) > CLIP_SAMPLES:
        raise RuntimeError("%s: '%s' in voice %s at speed %d lasts %.2f s, longer than the clip"
                           % (ep["id"], ep["word"], ep["voice"], ep["speed"], len(word) / RATE))
    word = word / np.sqrt(np.mean(word ** 2))
    onset = int(rng.integers(0, CLIP_SAMPLES - len(word) + 1))
    clip = np.zeros(CLIP_SAMPLES)
    clip[onset:onset + len(word)] = word

    ep["tone_hz"] = ep["tone_db"] = ep["tone_onset_s"] = ep["tone_dur_s"] = None
    if rng.random() < TONE_PROB:
        hz = round(float(rng.uniform(*TONE_HZ_RANGE)), 1)
        db = round(float(rng.uniform(*TONE_DB_RANGE)), 2)
        dur = int(rng.uniform(*TONE_DUR_RANGE) * RATE)
        start = int(rng.integers(0, CLIP_SAMPLES - dur + 1))
        phase = rng.uniform(0.0, 2.0 * np.pi)
        t = np.arange(dur) / RATE
        ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades, no clicks
        amp = math.sqrt(2.0) * 10.0 ** (db / 20.0)              # RMS of the word is 1
        clip[start:start + dur] += amp * ramp * np.sin(2.0 * np.pi * hz * t + phase)
        ep.update(tone_hz=hz, tone_db=db, tone_onset_s=start / RATE, tone_dur_s=dur / RATE)

    noise = make_noise(rng, ep["noise"], CLIP_SAMPLES)
    noise *= 10.0 ** (-ep["snr_db"] / 20.0) / np.sqrt(np.mean(noise ** 2))
    clip += noise
    clip *= ep["peak"] / np.max(np.abs(clip))
    ep["onset_s"] = onset / RATE
    ep["word_dur_s"] = len(word) / RATE
    return np.round(clip * 32767.0).astype("<i2")


def write_wav(path, samples):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.tobytes())


# ---------------------------------------------------------------------------------------
# Tilt: constant tilt + linear drift + sensor noise; the joints counter the mean tilt.

def make_tilt(rng):
    tilt = rng.uniform(-TILT_RANGE, TILT_RANGE, 2)
    drift = rng.uniform(-DRIFT_RANGE, DRIFT_RANGE, 2)
    ramp = np.arange(IMU_TICKS) / (IMU_TICKS - 1)
    series = tilt[None, :] + ramp[:, None] * drift[None, :] \
        + rng.normal(0.0, IMU_NOISE_SIGMA, (IMU_TICKS, 2))
    series = series.astype(np.float32)                       # (tick, [roll, pitch]) degrees
    joints = np.clip(-series.astype(np.float64).mean(axis=0), -JOINT_LIMIT, JOINT_LIMIT)
    return series, tilt, drift, joints


# ---------------------------------------------------------------------------------------
# One episode end to end (runs in a worker thread; espeak-ng and numpy release the GIL).

def r(x, nd=3):
    return round(float(x), nd)


def make_episode(ep, out, tmpdir):
    word, rate = synthesise(ep["word"], ep["voice"], ep["pitch"], ep["speed"], tmpdir, ep["id"])
    samples = mix_clip(ep, resample(word, rate, RATE))
    series, tilt, drift, joints = make_tilt(ep["rng"])
    write_wav(os.path.join(out, "audio", ep["id"] + ".wav"), samples)
    np.save(os.path.join(out, "imu", ep["id"] + ".npy"), series)
    record = {
        "id": ep["id"], "split": ep["split"],
        "feeds": [{"modality": "audio", "file": "audio/%s.wav" % ep["id"]},
                  {"modality": "imu", "file": "imu/%s.npy" % ep["id"]}],
        "targets": [{"modality": "action", "text": ACTIONS[ep["word"]]},
                    {"modality": "joints", "values": [[r(joints[0]), r(joints[1])]]}],
        "meta": {"word": ep["word"], "voice": ep["voice"], "pitch": ep["pitch"],
                 "speed": ep["speed"], "onset_s": ep["onset_s"],
                 "snr_db": r(ep["snr_db"], 2), "tone_hz": ep["tone_hz"],
                 "tilt": [r(tilt[0]), r(tilt[1])],
                 "word_dur_s": ep["word_dur_s"], "noise": ep["noise"],
                 "peak": r(ep["peak"], 4), "tone_db": ep["tone_db"],
                 "tone_onset_s": ep["tone_onset_s"], "tone_dur_s": ep["tone_dur_s"],
                 "drift": [r(drift[0]), r(drift[1])],
                 "held_out_voice": ep["voice"] in HELD_OUT_VOICES},
    }
    return json.dumps(record, separators=(", ", ": "))


# ---------------------------------------------------------------------------------------
# Command line.

def parse_range(text):
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected LOW,HIGH in dB, e.g. 5,30; got '%s'" % text)
    if lo > hi:
        raise argparse.ArgumentTypeError("LOW %g is above HIGH %g" % (lo, hi))
    return lo, hi


def main(argv=None):
    ap = argparse.ArgumentParser(description="Generate reflex-world episodes (see README.md).")
    ap.add_argument("--out", required=True, help="output directory (created if missing)")
    ap.add_argument("--episodes", type=int, default=2000, help="total episodes (default 2000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--test-fraction", type=float, default=0.2,
                    help="fraction of episodes in the test split (default 0.2)")
    ap.add_argument("--noise-db", type=parse_range, default=SNR_DB_RANGE, metavar="LOW,HIGH",
                    help="SNR range in dB, word over noise (default 5,30)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="parallel workers (default: CPU count); output does not depend on it")
    ap.add_argument("--only-test", action="store_true",
                    help="write only the test split (the same files as a full run's test split: "
                         "the held-out episodes a demo needs, without synthesising the training set)")
    args = ap.parse_args(argv)
    if args.episodes < 1 or not 0.0 <= args.test_fraction <= 1.0 or args.seed < 0 \
            or args.jobs < 1:
        ap.error("need --episodes >= 1, 0 <= --test-fraction <= 1, --seed >= 0, --jobs >= 1")
    if shutil.which("espeak-ng") is None:
        print("world.py: espeak-ng not found on PATH; install it with: "
              "apt-get install -y espeak-ng", file=sys.stderr)
        return 1

    n_test = int(round(args.episodes * args.test_fraction))
    n_train = args.episodes - n_test
    train = [plan_episode(args.seed, "train", i, args.noise_db, None) for i in range(n_train)]
    train_speakers = {(e["voice"], e["pitch"], e["speed"]) for e in train}
    test = [plan_episode(args.seed, "test", i, args.noise_db, train_speakers)
            for i in range(n_test)]
    plan = test if args.only_test else train + test

    os.makedirs(os.path.join(args.out, "audio"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "imu"), exist_ok=True)
    index_path = os.path.join(args.out, "episodes.jsonl")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reflex-world-") as tmpdir, \
            concurrent.futures.ThreadPoolExecutor(args.jobs) as pool, \
            open(index_path + ".part", "w", encoding="utf-8") as index:
        lines = pool.map(lambda ep: make_episode(ep, args.out, tmpdir), plan)
        try:
            for done, line in enumerate(lines, 1):
                index.write(line + "\n")
                if done % 100 == 0 or done == len(plan):
                    elapsed = time.monotonic() - start
                    print("world.py: %d/%d episodes, %.1f s, %.0f episodes/s"
                          % (done, len(plan), elapsed, done / max(elapsed, 1e-9)),
                          file=sys.stderr)
        except (RuntimeError, OSError) as e:
            print("world.py: %s" % e, file=sys.stderr)
            pool.shutdown(cancel_futures=True)
            index.close()
            os.remove(index_path + ".part")
            return 1
    os.replace(index_path + ".part", index_path)
    print("world.py: wrote %d train + %d test episodes to %s"
          % (0 if args.only_test else n_train, n_test, args.out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
