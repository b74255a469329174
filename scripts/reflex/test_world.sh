#!/usr/bin/env bash
# scripts/reflex/test_world.sh - checks the reflex world generator (world.py) end to end in a
# temporary directory: espeak-ng is deterministic, the same seed gives byte-identical output
# whatever the worker count, every file has the promised format, the targets follow from the
# stimuli, the recorded SNR is what the audio measures (within 1 dB), and the test split's
# speakers never occur in train. Exits 0 on success, 1 on failure, 77 (skip) when espeak-ng or
# numpy is missing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if ! command -v espeak-ng >/dev/null; then
  echo "SKIP: espeak-ng not found (apt-get install -y espeak-ng)" >&2; exit 77
fi
if ! python3 -c "import numpy" 2>/dev/null; then
  echo "SKIP: python3 numpy not found (python3 -m pip install numpy)" >&2; exit 77
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# espeak-ng gives the same bytes for the same arguments (world.py's determinism rests on it).
espeak-ng -v en+f3 -p 55 -s 160 -w "$tmp/a.wav" stop
espeak-ng -v en+f3 -p 55 -s 160 -w "$tmp/b.wav" stop
cmp -s "$tmp/a.wav" "$tmp/b.wav" || fail "espeak-ng gave different bytes for the same arguments"

# Same seed, different worker counts: byte-identical trees. A different seed: different audio.
python3 "$here/world.py" --out "$tmp/a" --episodes 60 --seed 7 2>"$tmp/a.log" \
  || { cat "$tmp/a.log" >&2; fail "world.py --seed 7 failed"; }
python3 "$here/world.py" --out "$tmp/b" --episodes 60 --seed 7 --jobs 1 2>"$tmp/b.log" \
  || { cat "$tmp/b.log" >&2; fail "world.py --seed 7 --jobs 1 failed"; }
diff -r "$tmp/a" "$tmp/b" >/dev/null || fail "same seed, different output: diff -r $tmp/a $tmp/b"
python3 "$here/world.py" --out "$tmp/c" --episodes 60 --seed 8 2>/dev/null \
  || fail "world.py --seed 8 failed"
cmp -s "$tmp/a/audio/train-00000.wav" "$tmp/c/audio/train-00000.wav" \
  && fail "seeds 7 and 8 gave the same train-00000.wav"
grep -q "60/60 episodes" "$tmp/a.log" || fail "no progress line on stderr: $(cat "$tmp/a.log")"

# A fixed SNR for sweeps.
python3 "$here/world.py" --out "$tmp/d" --episodes 9 --seed 3 --noise-db 12,12 2>/dev/null \
  || fail "world.py --noise-db 12,12 failed"

python3 - "$tmp/a" 60 0.2 "$tmp/d" 12 <<'EOF'
import json, math, os, sys, wave
import numpy as np

errors = []
def check(ok, msg):
    if not ok:
        errors.append(msg)

VOICES = {"en", "en-us", "en+m1", "en+m2", "en+m3", "en+m4", "en+m5", "en+m6", "en+m7",
          "en+f1", "en+f2", "en+f3", "en+f4", "en+croak"}
ACTIONS = {"left": "raise_left_hand", "right": "raise_right_hand", "stop": "stop"}

def load(d):
    with open(os.path.join(d, "episodes.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]

def read_wav(path):
    with wave.open(path, "rb") as w:
        fmt = (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes())
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32767.0
    return fmt, x

def measured_snr(ep, x):
    """Word power (word region minus the noise floor) over noise power (outside the word and
    the tone). None where the tone overlaps the word or too little noise-only audio is left."""
    m = ep["meta"]
    w0 = int(round(m["onset_s"] * 16000)); w1 = w0 + int(round(m["word_dur_s"] * 16000))
    noise_only = np.ones(len(x), bool); noise_only[w0:w1] = False
    if m["tone_hz"] is not None:
        t0 = int(round(m["tone_onset_s"] * 16000)); t1 = t0 + int(round(m["tone_dur_s"] * 16000))
        if t0 < w1 and t1 > w0:
            return None
        noise_only[t0:t1] = False
    if noise_only.sum() < 1600:
        return None
    pn = np.mean(x[noise_only] ** 2)
    pw = np.mean(x[w0:w1] ** 2) - pn
    return 10 * math.log10(pw / pn)

def check_dir(d, n, test_fraction):
    eps = load(d)
    check(len(eps) == n, "%s: %d episodes, expected %d" % (d, len(eps), n))
    n_test = int(round(n * test_fraction))
    ids = [e["id"] for e in eps]
    check(len(set(ids)) == n, "%s: duplicate ids" % d)
    want = ["train-%05d" % i for i in range(n - n_test)] + ["test-%05d" % i for i in range(n_test)]
    check(ids == want, "%s: ids are not train-00000.. then test-00000..: %s" % (d, ids[:3]))
    snr_err = []
    for e in eps:
        m, i = e["meta"], e["id"]
        check(e["split"] == i.split("-")[0], "%s: split %s" % (i, e["split"]))
        check(e["feeds"] == [{"modality": "audio", "file": "audio/%s.wav" % i},
                             {"modality": "imu", "file": "imu/%s.npy" % i}], "%s: feeds" % i)
        action, joints = e["targets"]
        check(action == {"modality": "action", "text": ACTIONS[m["word"]]}, "%s: action" % i)
        check(m["word"] == ("left", "right", "stop")[int(i.split("-")[1]) % 3],
              "%s: word %s breaks the left/right/stop cycle" % (i, m["word"]))
        check(m["voice"] in VOICES and 20 <= m["pitch"] <= 80 and 130 <= m["speed"] <= 210,
              "%s: speaker %s %s %s out of range" % (i, m["voice"], m["pitch"], m["speed"]))

        fmt, x = read_wav(os.path.join(d, e["feeds"][0]["file"]))
        check(fmt == (1, 2, 16000, 16000),
              "%s: wav (channels, bytes, rate, frames) = %s, want (1, 2, 16000, 16000)" % (i, fmt))
        check(abs(np.max(np.abs(x)) - m["peak"]) < 2e-4,
              "%s: peak %.4f, meta says %.4f" % (i, np.max(np.abs(x)), m["peak"]))
        check(0 <= m["onset_s"] and m["onset_s"] + m["word_dur_s"] <= 1.0,
              "%s: word %.3f+%.3f s does not fit the clip" % (i, m["onset_s"], m["word_dur_s"]))
        if m["tone_hz"] is not None:
            check(200 <= m["tone_hz"] <= 2000, "%s: tone %s Hz" % (i, m["tone_hz"]))
        snr = measured_snr(e, x)
        if snr is not None:
            snr_err.append((abs(snr - m["snr_db"]), i, snr, m["snr_db"]))

        imu = np.load(os.path.join(d, e["feeds"][1]["file"]))
        check(imu.dtype == np.float32 and imu.shape == (20, 2),
              "%s: imu %s %s, want float32 (20, 2)" % (i, imu.dtype, imu.shape))
        want_j = np.clip(-imu.astype(np.float64).mean(axis=0), -25, 25)
        check(joints["modality"] == "joints" and len(joints["values"]) == 1
              and np.allclose(joints["values"][0], want_j, atol=1e-3),
              "%s: joints %s, want -(mean tilt) %s" % (i, joints["values"], want_j))
        check(np.all(np.abs(imu.mean(axis=0) - np.array(m["tilt"])) < 1.6),
              "%s: mean tilt %s far from drawn tilt %s" % (i, imu.mean(axis=0), m["tilt"]))
    return eps, snr_err

d, n, frac = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
d_fixed, fixed = sys.argv[4], float(sys.argv[5])
eps, snr_err = check_dir(d, n, frac)
check(len(snr_err) >= 20, "only %d episodes had a measurable SNR" % len(snr_err))
worst = max(snr_err)
check(worst[0] <= 1.0, "%s: measured SNR %.2f dB, recorded %.2f dB" % worst[1:])
print("SNR: %d episodes measured, worst error %.2f dB (%s)" % (len(snr_err), worst[0], worst[1]))

train = [e["meta"] for e in eps if e["split"] == "train"]
test = [e["meta"] for e in eps if e["split"] == "test"]
triples = lambda ms: {(m["voice"], m["pitch"], m["speed"]) for m in ms}
check(not (triples(train) & triples(test)), "speaker triples in both splits: %s"
      % (triples(train) & triples(test)))
check(not {m["voice"] for m in train} & {"en+m6", "en+f2"}, "held-out voice used in train")
check(any(m["held_out_voice"] for m in test), "no test episode uses a held-out voice")

eps_fixed, snr_fixed = check_dir(d_fixed, 9, 0.2)
check(all(e["meta"]["snr_db"] == fixed for e in eps_fixed),
      "--noise-db %g,%g not obeyed" % (fixed, fixed))
check(all(err <= 1.0 for err, *_ in snr_fixed), "--noise-db: measured SNR off: %s" % snr_fixed)

for msg in errors[:20]:
    print("FAIL:", msg, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
echo "PASS: reflex world (determinism, formats, targets, SNR, held-out speakers)"
