#!/usr/bin/env bash
# test_cli.sh - the `sensorium` command as a user meets it: listings, round trips through
# files, exit codes (0 ok, 1 runtime error, 2 usage error) and one-line errors.
# Usage: test_cli.sh SENSORIUM_BINARY TEST_PLUGIN_DIR SOURCE_DIR [HOSTSIM_CUDA_LIB]
set -u
sn=$1 test_plugins=$2 src=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export SENSORIUM_PLUGIN_PATH=
pass=0 fail=0

# check NAME EXPECTED_STATUS PATTERN -- COMMAND...: runs COMMAND, checks its exit status and
# that its stdout+stderr matches the extended regex PATTERN ('' for any).
check() {
  local name=$1 want=$2 pattern=$3; shift 4
  local out status
  out=$("$@" 2>&1); status=$?
  if [[ $status -ne $want ]]; then
    echo "FAIL $name: exit status $status, expected $want"; echo "$out" | head -20; fail=$((fail+1)); return
  fi
  if [[ -n $pattern ]] && ! grep -Eq -- "$pattern" <<<"$out"; then
    echo "FAIL $name: output does not match /$pattern/"; echo "$out" | head -20; fail=$((fail+1)); return
  fi
  echo "ok   $name"; pass=$((pass+1))
}

actions='{"actions": ["raise_left_hand", "raise_right_hand", "stop"]}'
printf 'héllo, wörld 🖐\n' >"$tmp/text.txt"
printf 'stop raise_left_hand\nstop\n' >"$tmp/acts.txt"

check help 0 'commands:' -- "$sn" --help
check version 0 'plugin ABI 1\.' -- "$sn" --version
for c in plugins tokenize detokenize vocab fit run info extend dataset; do
  check "help_$c" 0 "usage: sensorium $c" -- "$sn" "$c" --help
done
check no_command 2 'usage:' -- "$sn"
check unknown_command 2 "unknown command 'frob'" -- "$sn" frob
check unknown_option 2 "unknown option '--bogus'" -- "$sn" tokenize --plugin text.bytes --bogus x
check missing_value 2 "needs a value" -- "$sn" tokenize "$tmp/text.txt" --plugin
check missing_plugin_opt 2 'plugin NAME is required' -- "$sn" tokenize "$tmp/text.txt"

check plugins_lists_both 0 'action\.discrete .*tok\+dec.*1\.0\.0' -- "$sn" plugins
check plugins_text_vocab 0 'text\.bytes +tok\+dec +1\.0\.0 +256 ' -- "$sn" plugins
check plugins_broken_listed 0 'not_elf\.so: not a shared object' -- "$sn" --plugin-path "$test_plugins" plugins
check plugins_broken_abi 0 'abi_major\.so: descriptor #0: built for plugin ABI 2\.0 but this engine speaks 1\.x' -- "$sn" --plugin-path "$test_plugins" plugins
check plugins_create_fail 0 'test\.create_fail .*create failed: the test plugin always fails create' -- "$sn" --plugin-path "$test_plugins" plugins
check plugins_good_still_load 0 'test\.good +tok\+dec' -- "$sn" --plugin-path "$test_plugins" plugins

check tokenize_text 0 '^104 195 169 108' -- "$sn" tokenize --plugin text.bytes "$tmp/text.txt"
check tokenize_to_npy 0 '-> 20 tokens' -- "$sn" tokenize --plugin text.bytes "$tmp/text.txt" -o "$tmp/t.npy"
check tokenize_chunked 0 '' -- "$sn" tokenize --plugin text.bytes --chunk 3 "$tmp/text.txt" -o "$tmp/t3.npy"
check chunked_same_ids 0 '' -- cmp "$tmp/t.npy" "$tmp/t3.npy"
check detokenize_text 0 '"text":"héllo, wörld 🖐' -- "$sn" detokenize --plugin text.bytes "$tmp/t.npy"
check detokenize_to_file 0 '' -- "$sn" detokenize --plugin text.bytes "$tmp/t.npy" -o "$tmp/back.txt"
check text_round_trip 0 '' -- cmp "$tmp/text.txt" "$tmp/back.txt"

check tokenize_actions 0 '^2 0 2$' -- "$sn" tokenize --plugin action.discrete --config "$actions" "$tmp/acts.txt"
printf '%s' "$actions" >"$tmp/actions.json"
check config_from_file 0 '' -- "$sn" tokenize --plugin action.discrete --config "@$tmp/actions.json" "$tmp/acts.txt" -o "$tmp/a.npy"
check detokenize_actions 0 '"kind":"action","name":"raise_left_hand","index":0' -- "$sn" detokenize --plugin action.discrete --config "$actions" "$tmp/a.npy"
check actions_to_jsonl 0 '' -- "$sn" detokenize --plugin action.discrete --config "$actions" "$tmp/a.npy" -o "$tmp/a.jsonl"
check actions_jsonl_lines 0 '^3$' -- bash -c "wc -l <'$tmp/a.jsonl'"

check missing_input 1 "nonexistent\.txt: cannot open" -- "$sn" tokenize --plugin text.bytes "$tmp/nonexistent.txt"
check unknown_plugin 1 "unknown plugin 'audio\.nothing'" -- "$sn" tokenize --plugin audio.nothing "$tmp/text.txt"
check bad_config_json 1 'line 1 column' -- "$sn" tokenize --plugin action.discrete --config '{oops' "$tmp/acts.txt"
check plugin_config_error 1 "action\.discrete .*create failed: .*actions" -- "$sn" tokenize --plugin action.discrete "$tmp/acts.txt"
check unknown_action 1 "unknown action 'jump'" -- bash -c "echo jump | tee '$tmp/j.txt' >/dev/null; '$sn' tokenize --plugin action.discrete --config '$actions' '$tmp/j.txt'"
check ids_out_of_range 1 "outside action\.discrete's vocabulary 0\.\.2" -- "$sn" detokenize --plugin action.discrete --config "$actions" "$tmp/t.npy"
check one_line_error 0 '^1$' -- bash -c "'$sn' tokenize --plugin text.bytes '$tmp/nonexistent.txt' 2>&1 | wc -l"

check fit_needs_output 2 'fit: -o FILE is required' -- "$sn" fit --plugin text.bytes "$tmp/text.txt"
check fit_needs_data 2 'at least one DATA file' -- "$sn" fit --plugin text.bytes -o "$tmp/x.npy"
check fit_unsupported 1 'text\.bytes .*learns nothing from data' -- "$sn" fit --plugin text.bytes "$tmp/text.txt" -o "$tmp/x.npy"
check fit_bad_data 1 'nonexistent\.wav: cannot open' -- "$sn" fit --plugin text.bytes "$tmp/nonexistent.wav" -o "$tmp/x.npy"

check vocab_demo 0 '264\.\.266 +tokens +action +action\.discrete' -- "$sn" vocab "$src/models/demo"
mkdir -p "$tmp/model"
sed 's/"start": 264/"start": 260/' "$src/models/demo/sensorium.json" >"$tmp/model/sensorium.json"
check vocab_overlap 1 'sensorium\.json: vocab\.segments\[1\] \(action\) ids 260\.\.262 overlap vocab\.segments\[0\] \(text\)' -- "$sn" vocab "$tmp/model"
check vocab_missing 1 'no manifest here' -- "$sn" vocab "$tmp"

# The engine through the CLI, on a small random model with the text layout.
python3 "$src/tests/reference/make_model.py" "$tmp/llm" --layout sensorium --seed 3 >/dev/null
check info 0 '2 layers, hidden 64, 4 heads \(2 KV\)' -- "$sn" info -m "$tmp/llm"
check info_layout 0 '8\.\.263 +tokens +text +text\.bytes' -- "$sn" info -m "$tmp/llm"
check run_raw 0 '^\{"generated": \[[0-9]+, [0-9]+, [0-9]+\]\}$' -- "$sn" run -m "$tmp/llm" --feed-tokens "0,3,72,4" --generate raw --max-tokens 3 --print-tokens
check run_text 0 'generated [0-9]+ in .* stopped: (eos|max tokens)' -- "$sn" run -m "$tmp/llm" --feed text:"$tmp/text.txt" --generate text --max-tokens 40 --temperature 1 --seed 2
check run_needs_model 2 'run: -m MODEL is required' -- "$sn" run --generate text
check run_needs_generate 2 'say what to generate' -- "$sn" run -m "$tmp/llm" --feed text:"$tmp/text.txt"
check run_unknown_modality 1 "no modality 'audio'" -- "$sn" run -m "$tmp/llm" --feed audio:"$tmp/text.txt" --generate text
check run_bad_number 2 '--max-tokens needs a number' -- "$sn" run -m "$tmp/llm" --generate text --max-tokens many
# Data-parallel replicas on the CPU: the same tokens as one, and the layout said by info.
check info_dp 0 'backend cpu, dp 2 x tp 1, [0-9]+ KV blocks of 16 positions per replica' -- "$sn" info -m "$tmp/llm" --backend cpu --dp 2
check info_dp_range 1 '--dp 65: must be between 1 and 64' -- "$sn" info -m "$tmp/llm" --backend cpu --dp 65
check info_dp_number 2 '--dp needs a number' -- "$sn" info -m "$tmp/llm" --dp two
"$sn" run -m "$tmp/llm" --backend cpu --feed-tokens "0,3,72,4" --generate raw --max-tokens 6 --print-tokens >"$tmp/dp1.txt" 2>/dev/null
check run_dp_same_tokens 0 '' -- bash -c "test -s '$tmp/dp1.txt' && '$sn' run -m '$tmp/llm' --backend cpu --dp 3 --feed-tokens '0,3,72,4' --generate raw --max-tokens 6 --print-tokens 2>/dev/null | cmp - '$tmp/dp1.txt'"
# A corrupted weight (one NaN) is an error naming the model, not garbage tokens.
python3 "$src/tests/reference/make_model.py" "$tmp/nan" --layout sensorium --seed 3 --corrupt model.layers.1.mlp.down_proj.weight >/dev/null
check run_nan_weights 1 'nan: the logits at position 5 are NaN or infinite: the weights are corrupted' -- "$sn" run -m "$tmp/nan" --backend cpu --feed-tokens "0,3,72,4" --generate raw --max-tokens 5
check run_cuda_without_gpu 1 'backend cuda' -- "$sn" run -m "$tmp/llm" --backend cuda --generate text
check run_not_a_model 1 'not a model folder' -- "$sn" run -m "$tmp" --generate raw

# A real model (SmolLM2-135M-Instruct, GGUF; scripts/test.sh fetches it): its own tokenizer
# through text.bpe, its chat template, greedy answers.
smol="$src/.testdata/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
check gguf_info 0 'Llama, 30 layers, hidden 576, 9 heads \(3 KV\).*vocab 49152' -- "$sn" info -m "$smol"
check gguf_layout 0 '17\.\.49151 +tokens +text +text\.bpe' -- "$sn" info -m "$smol"
check gguf_control_tokens_stop 0 '^0\.\.16 +eos' -- "$sn" vocab "$smol"
check gguf_chat 0 'capital of France is Paris' -- "$sn" run -m "$smol" --chat "What is the capital of France?" --plain --max-tokens 24
check gguf_chat_stops 0 'stopped: eos' -- "$sn" run -m "$smol" --chat "What is the capital of France?" --plain --max-tokens 24
check gguf_chat_json 0 '"kind":"text","text":"The"' -- "$sn" run -m "$smol" --chat "What is the capital of France?" --max-tokens 3
check gguf_prompt 0 'tokens' -- "$sn" run -m "$smol" --prompt "Once upon a time" --plain --max-tokens 4
# The CUDA backend's own code on simulated GPUs (cuda/hostsim): the real model, sampled on
# the "device", over 2 replicas of 3 tensor-parallel GPUs each.
if [[ -n ${4:-} ]]; then
  { SENSORIUM_CUDA_LIB=$4 SN_HOSTSIM_GPUS=6 "$sn" run -m "$smol" --backend cuda --dp 2 --tp 3 \
      --chat "What is the capital of France?" --plain --max-tokens 12; echo "exit $?"; } >"$tmp/hostsim.txt" 2>&1
  check cuda_hostsim_layout 0 'backend cuda, dp 2 x tp 3' -- cat "$tmp/hostsim.txt"
  check cuda_hostsim_chat 0 'The capital of France is Paris\.' -- cat "$tmp/hostsim.txt"
  check cuda_hostsim_exit 0 '^exit 0$' -- cat "$tmp/hostsim.txt"
fi
check gguf_raw 0 '^\{"generated": \[504, 3575, 282, 4649, 314, 7042' -- "$sn" run -m "$smol" --feed-tokens 1,4093,198,1780,314,260,3575,282,4649,47,2,198,1,520,9531,198 --generate raw --max-tokens 6 --print-tokens
check chat_needs_gguf 1 'chat templates are read from GGUF model files' -- "$sn" run -m "$tmp/llm" --chat "hi"

# sensorium dataset: episodes into training sequences with the demo layout.
printf 'go left' >"$tmp/cmd.txt"
printf '{"id": "a", "split": "train", "feeds": [{"modality": "text", "file": "cmd.txt"}], "targets": [{"modality": "action", "text": "raise_left_hand"}]}\n' >"$tmp/episodes.jsonl"
check dataset 0 '1 episodes, 14 tokens \(4 answer tokens' -- "$sn" dataset -m "$src/models/demo" --episodes "$tmp/episodes.jsonl" -o "$tmp/ds"
check dataset_files 0 '' -- test -s "$tmp/ds.tokens.npy" -a -s "$tmp/ds.mask.npy" -a -s "$tmp/ds.offsets.npy"
check dataset_json 0 '1 episodes' -- "$sn" dataset -m "$src/models/demo" --episodes "$tmp/episodes.jsonl" --targets-as-json text -o "$tmp/dsj"
check dataset_usage 2 'required' -- "$sn" dataset -m "$src/models/demo"
check dataset_bad_split 1 "no episodes of split 'test'" -- "$sn" dataset -m "$src/models/demo" --episodes "$tmp/episodes.jsonl" --split test -o "$tmp/ds"

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
