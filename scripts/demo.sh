#!/usr/bin/env bash
# scripts/demo.sh - install what is missing, build, and show the project's thesis: a model
# that hears a spoken command and feels a tilt, and answers with action tokens (a named
# action, joint targets) that the action plugins decode, with no text in between; beside
# it the same decisions written as JSON text; the model in a closed loop with a simulated
# body; and a real language model (SmolLM2-135M) on the same engine.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$SN_ROOT"

sn_install_deps
sn_install_python
sn_fetch_smollm2
sn_build "$SN_ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

sn=build/bin/sensorium
model=models/reflex
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

step() { printf '\n\033[1m-- %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "1. The plugins this build found: each a .so owning part of one vocabulary"
run $sn plugins

step "2. The default model's vocabulary: sound, an IMU, named actions, joints and text in one id space"
run $sn info -m $model

step "3. A world the model has never heard: held-out voices and speaker settings"
echo "(scripts/reflex/world.py: espeak-ng says left/right/stop in a random voice, pitch and speed,"
echo " over noise and tones; an IMU reads a tilt; the right answer is a named action and joint"
echo " targets that counter the tilt. The model was trained on the other 9500 episodes.)"
run python3 scripts/reflex/world.py --out "$out/world" --episodes 10000 --test-fraction 0.05 --seed 1 --only-test
ep=$(head -1 "$out/world/episodes.jsonl")
wav=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["feeds"][0]["file"])' "$ep")
imu=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["feeds"][1]["file"])' "$ep")
echo "first episode: $ep" | cut -c1-300

step "4. One stimulus becomes tokens: 1 s of speech, 50 sound units; 20 IMU readings, 40 bins"
run $sn tokenize --plugin audio.melvq --config '{"codebook_size": 256}' --data-dir $model "$out/world/$wav" -o "$out/sound.npy"
run $sn tokenize --plugin sensor.bins --config '{"bins": 128, "low": [-25, -25], "high": [25, 25]}' "$out/world/$imu"

step "5. The model hears, feels and acts: held-out episodes, decisions and timing"
run $sn demo -m $model --baseline models/reflex-json --episodes "$out/world/episodes.jsonl" --limit 12 || true
step "   ...and all 500 held-out episodes, action tokens against the JSON text baseline"
run $sn demo -m $model --baseline models/reflex-json --episodes "$out/world/episodes.jsonl" --quiet || true

step "6. A closed loop: sensor ticks in, actions out, the body moves"
echo "(OMP_WAIT_POLICY=active keeps the engine's threads awake between ticks: a real-time loop"
echo " wants that; otherwise waking them costs this VM about 10 ms per tick)"
OMP_WAIT_POLICY=active run $sn live -m $model --episodes "$out/world/episodes.jsonl" --ticks 30 --rate 10

step "7. The same engine runs a real language model: SmolLM2-135M-Instruct (GGUF, Q4_1)"
run $sn run -m "$SN_SMOLLM2_GGUF" --chat "What is the capital of France?" --plain --max-tokens 40
run $sn run -m "$SN_SMOLLM2_GGUF" --chat "Give me two tips for sleeping well." --plain --max-tokens 80

step "8. Bad input is a clear error, and nothing crashes"
head -c 100 /dev/urandom >"$out/noise.wav"; printf 'RIFF' | dd of="$out/noise.wav" conv=notrunc status=none
run $sn tokenize --plugin audio.melvq --config '{"codebook_size": 256}' --data-dir $model "$out/noise.wav" || echo "(exit status $?)"
: >"$out/empty.wav"
run $sn run -m $model --feed audio:"$out/empty.wav" --generate action || echo "(exit status $?)"

printf '\nWhat happened: speech and a tilt went through plugins into one vocabulary; a small\n'
printf 'transformer answered in action tokens that decoded straight into a named action and\n'
printf 'joint targets, always well-formed, in a fraction of the tokens the JSON baseline spends.\n'
printf 'scripts/reflex/make_models.sh retrains both models from scratch; the README says more.\n'
