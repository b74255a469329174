#!/usr/bin/env bash
# scripts/reflex/make_models.sh - rebuilds the committed reflex models from nothing: the world
# (seed 1, 10000 episodes, 5 % held out), the audio codebook fitted on the training clips,
# the training sequences made by `sensorium dataset` with the models' own layout, and two
# models trained by scripts/train.py on the same episodes: models/reflex (answers in action
# tokens) and models/reflex-json (the baseline: the same decisions as JSON function calls in
# text). Seeded throughout. About 40 minutes on 2 CPU cores, most of it training.
# Usage: scripts/reflex/make_models.sh [WORK_DIR]   (default /tmp/reflex-work)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-/tmp/reflex-work}
sn=$root/build/bin/sensorium
[[ -x $sn ]] || { echo "build first: scripts/test.sh or scripts/demo.sh" >&2; exit 1; }
mkdir -p "$work/data"

python3 "$root/scripts/reflex/world.py" --out "$work/world" --episodes 10000 --test-fraction 0.05 --seed 1
grep -o '"audio/train-[0-9]*\.wav"' "$work/world/episodes.jsonl" | tr -d '"' | sed "s|^|$work/world/|" >"$work/train-audio.txt"
"$sn" fit --plugin audio.melvq --config '{"codebook_size": 256, "seed": 1}' $(head -1600 "$work/train-audio.txt") \
    -o "$root/models/reflex/audio.melvq.npy"
for split in train test; do
  "$sn" dataset -m "$root/models/reflex" --episodes "$work/world/episodes.jsonl" --split $split -o "$work/data/$split"
  "$sn" dataset -m "$root/models/reflex" --episodes "$work/world/episodes.jsonl" --split $split \
      --targets-as-json text -o "$work/data/json-$split"
done
python3 "$root/scripts/train.py" --layout "$root/models/reflex" --data "$work/data/train" --eval "$work/data/test" \
    --out "$root/models/reflex" --steps 2500 --batch 32 --seed 0
python3 "$root/scripts/train.py" --layout "$root/models/reflex" --data "$work/data/json-train" \
    --eval "$work/data/json-test" --out "$root/models/reflex-json" --steps 2500 --batch 32 --seed 0
