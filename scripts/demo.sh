#!/usr/bin/env bash
# scripts/demo.sh - install what is missing, build, and show what Sensorium does today:
# stimuli become tokens through plugins and tokens become text and named actions again.
# and a transformer (random weights: the trained default model is not built yet) reads a
# stimulus and answers under the segment automaton.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$SN_ROOT"

sn_install_deps
sn_install_python
sn_build "$SN_ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

sn=build/bin/sensorium
model=models/demo
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
actions_config=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["vocab"]["segments"][1]["config"]))' "$model/sensorium.json" 2>/dev/null \
  || echo '{"actions": ["raise_left_hand", "raise_right_hand", "stop"]}')

step() { printf '\n\033[1m-- %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "1. The plugins this build found"
run $sn plugins

step "2. The demo model's vocabulary: one id space shared by text and actions"
run $sn vocab $model

step "3. A stimulus becomes tokens: text, one token per UTF-8 byte"
printf 'stimulus: %s' "$(cat $model/samples/greeting.txt)"; echo
run $sn tokenize --plugin text.bytes $model/samples/greeting.txt -o "$out/greeting.npy"
run $sn tokenize --plugin text.bytes --chunk 7 $model/samples/greeting.txt -o "$out/greeting-chunked.npy"
cmp -s "$out/greeting.npy" "$out/greeting-chunked.npy" \
  && echo "fed whole or 7 bytes at a time as a live feed: the same tokens"

step "4. Tokens become text again, never a broken character"
run $sn detokenize --plugin text.bytes "$out/greeting.npy" -o "$out/greeting.txt"
cmp -s $model/samples/greeting.txt "$out/greeting.txt" && echo "round trip: identical bytes"

step "5. Actions are tokens too: named actions in, action events out"
run $sn tokenize --plugin action.discrete --config "$actions_config" $model/samples/actions.txt -o "$out/actions.npy"
run $sn detokenize --plugin action.discrete --config "$actions_config" "$out/actions.npy"

step "6. Bad input is a clear error, and nothing crashes"
head -c 100 /dev/urandom >"$out/noise.wav"; printf 'RIFF' | dd of="$out/noise.wav" conv=notrunc status=none
run $sn tokenize --plugin text.bytes "$out/noise.wav" || echo "(exit status $?)"
run $sn tokenize --plugin audio.nothing $model/samples/greeting.txt || echo "(exit status $?)"

step "7. A transformer reads the tokens and answers with action tokens"
echo "(a small model with random weights and the demo's vocabulary: its choices are noise, but"
echo " the segment automaton makes every answer a well-formed action segment)"
python3 tests/reference/make_model.py "$out/model" --layout sensorium --vocab 272 --seed 7 >/dev/null
python3 - "$out/model/sensorium.json" "$model/sensorium.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); m["vocab"] = json.load(open(sys.argv[2]))["vocab"]
json.dump(m, open(sys.argv[1], "w"), indent=1)
PY
run $sn info -m "$out/model"
for seed in 1 2 3; do
  run $sn run -m "$out/model" --feed text:$model/samples/greeting.txt --generate action \
      --max-segments 1 --temperature 1 --seed $seed --print-tokens
done

printf '\nWhat happened: text and actions went through the same plugin interface into one\n'
printf 'vocabulary and back, and a model read a stimulus and answered with an action token,\n'
printf 'well-formed by construction. Next: a trained model (see the README for what is built).\n'
