#!/usr/bin/env bash
# test_reflex.sh - the committed reflex model end to end: held-out episodes of the reflex
# world (voices and speaker settings never seen in training) through `sensorium demo`, whose
# exit status says whether the >= 95 % accuracy goal holds, with zero malformed actions; and
# `sensorium live` in a closed loop, whose controller must keep the body nearer upright than
# no controller under the same disturbances.
# Usage: test_reflex.sh SENSORIUM_BINARY SOURCE_DIR [EPISODES]   (EPISODES: score only the first
# that many held-out episodes; 0 or absent: all 500)
# Exits 77 (skipped) when espeak-ng, which synthesises the spoken commands, is missing.
set -u
sn=$1 src=$2 limit=${3:-0}
command -v espeak-ng >/dev/null || { echo "SKIP: espeak-ng is not installed (scripts/test.sh installs it)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# The test split of the training run's world (scripts/reflex/make_models.sh: seed 1, 10000
# episodes, 5 % test): its 500 held-out episodes.
python3 "$src/scripts/reflex/world.py" --out "$tmp/world" --episodes 10000 --test-fraction 0.05 --seed 1 --only-test >/dev/null 2>&1 \
  || { echo "FAIL: world.py"; exit 1; }
if out=$("$sn" demo -m "$src/models/reflex" --episodes "$tmp/world/episodes.jsonl" --limit "$limit" --quiet 2>&1); then
  echo "ok   demo: $(grep '^accuracy' <<<"$out")"
else
  echo "FAIL demo (exit $?):"; echo "$out"; fail=1
fi
grep -Eq '^malformed outputs +0$' <<<"$out" || { echo "FAIL: malformed action outputs"; echo "$out"; fail=1; }

out=$("$sn" live -m "$src/models/reflex" --episodes "$tmp/world/episodes.jsonl" --ticks 60 --rate 1000 --quiet 2>&1) \
  || { echo "FAIL live:"; echo "$out"; exit 1; }
echo "$out"
read -r with without < <(sed -nE 's/^balance error .*: ([0-9.]+) degrees with the model, ([0-9.]+) with no controller.*/\1 \2/p' <<<"$out")
if [[ -z ${with:-} ]] || ! awk -v a="$with" -v b="$without" 'BEGIN { exit !(a < b / 2) }'; then
  echo "FAIL live: balance error ${with:-?} with the model is not under half of ${without:-?} without"; fail=1
else
  echo "ok   live: balance error $with degrees with the model, $without without"
fi
grep -Eq 'reaction p50 [0-9.]+ ms, p99 [0-9.]+ ms' <<<"$out" || { echo "FAIL live: no latency percentiles"; fail=1; }
exit $fail
