#!/usr/bin/env bash
# scripts/gpu-check.sh - the device check of the CUDA backend, for a machine with an NVIDIA GPU:
# configures and builds cuda/ on its own for sm_90a (the GPU machine has nvcc and CMake but not
# the engine's other dependencies), runs the CUDA test suites (the backend's end-to-end test
# test_cuda_backend as its own step), the end-to-end decode benchmark of a 1B-shaped model
# (bench/bench_cuda_e2e.c, against the bandwidth roofline), the kernel benchmarks
# (bench/bench_cuda.cu) and their PyTorch counterparts (bench/bench_cuda_torch.py), then
# compute-sanitizer on the attention and sampling suites if time is left, and prints a table.
#
# Every step has a timeout and a share of one overall budget (GPU_CHECK_BUDGET seconds, default
# 420, well under 8 minutes: give the device tool a timeout_s of at least the budget + 60); a
# failed step is reported and the next one still runs, and the summary table is always printed
# last. Exit status: 0 when every step passed, 1 when one failed, 77 when there is no GPU.
#
# Logs and results go to $GPU_CHECK_OUT, else $OUT (the device tool's folder), else
# build-gpu/logs, in 6 files (the device tool brings back at most 8): build.log, ctest.log (the
# suites and test_cuda_backend), bench.log (the benchmarks' tables), bench.jsonl (every
# benchmark's JSON lines), sanitizer.log, summary.txt. The build keeps going past a target that
# fails to compile, and every step whose program was built still runs.
#
# Environment: GPU_CHECK_BUDGET (seconds), GPU_CHECK_QUICK=1 (smaller benchmarks),
# GPU_CHECK_SANITIZER=0 (skip compute-sanitizer), CUDA_ARCH (default 90a).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD="$ROOT/build-gpu"
LOGS="${GPU_CHECK_OUT:-${OUT:-$BUILD/logs}}"
BUDGET=${GPU_CHECK_BUDGET:-420}
ARCH=${CUDA_ARCH:-90a}
QUICK=${GPU_CHECK_QUICK:-0}
START=$(date +%s)

say() { printf '\n== gpu-check: %s (t+%ss)\n' "$*" "$(( $(date +%s) - START ))"; }

# ---- Is there a GPU? (before anything is written) --------------------------------------------
# nvidia-smi on the PATH or in the driver's usual folders; without it, the device nodes decide
# (the CUDA suites then probe the device themselves and say why if it is unusable).
smi=$(command -v nvidia-smi 2>/dev/null)
for d in /usr/local/nvidia/bin /usr/bin /usr/local/bin; do
  [[ -z $smi && -x $d/nvidia-smi ]] && smi=$d/nvidia-smi
done
gpu_list=""
if [[ -n $smi ]]; then
  gpu_list=$(timeout 30 "$smi" -L 2>&1) || gpu_list=""
  gpu_list=$(grep '^GPU' <<<"$gpu_list")
elif [[ -e /dev/nvidiactl && -e /dev/nvidia0 ]]; then
  gpu_list="GPU (nvidia-smi not found; /dev/nvidia0 present)"
fi
if [[ -z $gpu_list ]]; then
  echo "gpu-check: SKIP: no NVIDIA GPU here (nvidia-smi: ${smi:-not installed}; no GPU listed)"
  exit 77
fi
echo "gpu-check: $gpu_list"
[[ -n $smi ]] && { timeout 30 "$smi" --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 || true; }

mkdir -p "$LOGS" "$BUILD/gpu-check"
: >"$LOGS/bench.jsonl"

if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break
  done
fi
command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -2
# CMake, CTest and Ninja may come from pip, next to the image's python3
if ! command -v cmake >/dev/null 2>&1 || ! command -v ninja >/dev/null 2>&1; then
  for d in "$(dirname "$(readlink -f "$(command -v python3 2>/dev/null || echo /nonexistent)")")" \
           "$(dirname "$(command -v python3 2>/dev/null || echo /nonexistent)")" /opt/torch/.venv/bin /usr/local/bin; do
    [ -x "$d/cmake" ] && ! command -v cmake >/dev/null 2>&1 && export PATH="$PATH:$d"
    [ -x "$d/ninja" ] && ! command -v ninja >/dev/null 2>&1 && export PATH="$PATH:$d"
  done
fi
echo "gpu-check: cmake $(cmake --version 2>/dev/null | head -1 | awk '{print $3}'), ninja $(ninja --version 2>/dev/null), $(gcc --version 2>/dev/null | head -1)"

# ---- Steps ------------------------------------------------------------------------------------
declare -a STEP_NAMES=() STEP_STATUS=() STEP_SECS=()
FAILED=0

# run_step NAME MAX_SECONDS LOGFILE COMMAND...: runs with a timeout of min(MAX, what the budget
# leaves minus 20 s for the summary), appends its output to LOGFILE and echoes it. With
# OPTIONAL=1 a step that runs out of time is reported but does not fail the check.
OPTIONAL=0
run_step() {
  local name=$1 max=$2 log=$3
  shift 3
  local left=$(( BUDGET - ($(date +%s) - START) - 20 ))
  local limit=$(( max < left ? max : left ))
  if (( limit < 10 )); then
    STEP_NAMES+=("$name"); STEP_STATUS+=("skipped: out of time"); STEP_SECS+=(0)
    (( OPTIONAL )) || FAILED=1
    return 1
  fi
  say "$name (timeout ${limit}s)"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  local status=ok
  if (( rc == 124 || rc == 137 )); then status="TIMEOUT after ${limit}s"; elif (( rc == 77 )); then status="skipped (77)";
  elif (( rc != 0 )); then status="FAILED (exit $rc)"; fi
  if [[ $status != ok && $status != skipped* ]] && ! { (( OPTIONAL )) && [[ $status == TIMEOUT* ]]; }; then
    FAILED=1
  fi
  STEP_NAMES+=("$name"); STEP_STATUS+=("$status"); STEP_SECS+=($(( $(date +%s) - t0 )))
  [[ $status == ok ]]
}

# built NAME PATH: 0 when the program was built; otherwise records the step as not built.
built() {
  [[ -x $2 ]] && return 0
  STEP_NAMES+=("$1"); STEP_STATUS+=("not built (see build.log)"); STEP_SECS+=(0)
  FAILED=1
  return 1
}

# run_bench NAME MAX PROGRAM ARGS...: its JSON lines (stdout) are appended to bench.jsonl,
# stdout and stderr (its table) to bench.log.
run_bench() {
  local name=$1 max=$2 json="$BUILD/gpu-check/$1.jsonl"
  shift 2
  : >"$json"
  run_step "$name" "$max" "$LOGS/bench.log" bash -c '"${@:2}" >"$1"; rc=$?; cat "$1"; exit $rc' _ "$json" "$@"
  local rc=$?
  cat "$json" >>"$LOGS/bench.jsonl"
  return $rc
}

generator=()
keep_going=(-- -k)
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja) && keep_going=(-- -k 0)
configured=0
qflag=()
[[ $QUICK == 1 ]] && qflag=(--quick)
if run_step configure 120 "$LOGS/build.log" \
     cmake -S "$ROOT/cuda" -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
       -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DSN_WERROR=OFF; then
  configured=1
  # keeps going past a target that fails: whatever did build is still tested below
  run_step build 300 "$LOGS/build.log" cmake --build "$BUILD" -j "$(nproc)" "${keep_going[@]}"
fi

if (( configured )); then
  # verbose: the worst element of every comparison goes to ctest.log, passing or not (a suite
  # that did not build shows as "Not Run")
  run_step "ctest (CUDA suites)" 200 "$LOGS/ctest.log" \
    ctest --test-dir "$BUILD" -L cuda -E '^test_cuda_backend$' -V --timeout 150 -j 4
  # the backend end to end against the fp32 reference (graphs on and off, one-rank NCCL,
  # replicas on two threads)
  built test_cuda_backend "$BUILD/test_cuda_backend" &&
    run_step "test_cuda_backend" 150 "$LOGS/ctest.log" "$BUILD/test_cuda_backend" --ascii
  # end-to-end decode of a Llama-3.2-1B-shaped random model (batch 1 and 64) against the
  # bandwidth roofline
  built bench_cuda_e2e "$BUILD/bin/bench_cuda_e2e" &&
    run_bench bench_cuda_e2e 120 "$BUILD/bin/bench_cuda_e2e" "${qflag[@]}"
  built bench_cuda "$BUILD/bin/bench_cuda" &&
    run_bench bench_cuda 150 "$BUILD/bin/bench_cuda" "${qflag[@]}"
fi
run_bench bench_cuda_torch 150 env PYTHONUNBUFFERED=1 python3 "$ROOT/bench/bench_cuda_torch.py" "${qflag[@]}"

if (( configured )) && [[ ${GPU_CHECK_SANITIZER:-1} != 0 ]]; then
  san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
  if [[ -n $san ]]; then
    OPTIONAL=1
    # memory errors first, then shared-memory races, most intricate kernels first; each run is
    # small (SN_CUDA_TEST_QUICK) and the budget stops whatever no longer fits
    for check in "memcheck test_cuda_attn_prefill" "racecheck test_cuda_attn_prefill" \
                 "memcheck test_cuda_attn_decode" "racecheck test_cuda_attn_decode" \
                 "memcheck test_cuda_sample" "racecheck test_cuda_sample" "memcheck test_cuda_kv_store"; do
      set -- $check
      [[ -x $BUILD/$2 ]] || continue
      run_step "$1 $2" 75 "$LOGS/sanitizer.log" \
        env SN_CUDA_TEST_QUICK=1 "$san" --tool "$1" --target-processes all --error-exitcode 3 "$BUILD/$2" --ascii
    done
  else
    STEP_NAMES+=("compute-sanitizer"); STEP_STATUS+=("skipped: not installed"); STEP_SECS+=(0)
  fi
fi

# ---- Summary ----------------------------------------------------------------------------------
{
  echo
  echo "== gpu-check summary: $(head -1 <<<"$gpu_list"), $(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - START ))s =="
  printf '%-34s %-26s %s\n' step status seconds
  for i in "${!STEP_NAMES[@]}"; do
    printf '%-34s %-26s %s\n' "${STEP_NAMES[$i]}" "${STEP_STATUS[$i]}" "${STEP_SECS[$i]}"
  done
  if [[ -s $LOGS/ctest.log ]]; then
    grep -E 'tests passed|\(Failed\)|\(Timeout\)|\(SEGFAULT\)|\(Subprocess|\(Skipped\)' "$LOGS/ctest.log" | sed 's/^/  ctest: /' | head -20
  fi
  if [[ -s $LOGS/sanitizer.log ]]; then
    grep -E 'ERROR SUMMARY' "$LOGS/sanitizer.log" | sort | uniq -c | sed 's/^/  sanitizer: /'
  fi
  python3 - "$LOGS/bench.jsonl" <<'EOF' || cat "$LOGS/bench.jsonl"
import json, sys
rows = []
for path in sys.argv[1:]:
    try:
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
by = lambda kind: [r for r in rows if r.get("bench") == kind]
print()
print(f"{'kernel':38s} {'ours':>22s} {'torch':>28s} {'ours/torch':>11s}")
for r in by("copy"):
    print(f"{'D2D copy (roofline)':38s} {r['GBps_read_plus_write']:>17.0f} GB/s")
for r in by("decode_attn"):
    name = f"decode attn b{r['batch']} ctx{r['ctx']}"
    print(f"{name:38s} {r['kv_GBps']:>12.0f} GB/s {r['fraction_of_copy']:>4.2f}x copy")
torch_sdpa = [r for r in by("torch_sdpa") if "TFLOPs" in r]
for r in by("prefill_attn"):
    name = f"prefill attn b{r['batch']} len{r['len']} causal"
    peers = [t for t in torch_sdpa if t["batch"] == r["batch"] and t["len"] == r["len"]]
    best = max(peers, key=lambda t: t["TFLOPs"]) if peers else None
    peer = f"{best['TFLOPs']:.1f} TF/s ({best['backend']})" if best else "n/a"
    ratio = f"{r['TFLOPs'] / best['TFLOPs']:.2f}" if best else ""
    print(f"{name:38s} {r['TFLOPs']:>14.1f} TFLOP/s {peer:>28s} {ratio:>11s}")
    for t in peers:
        if t["backend"] == "default" and t.get("kernel"):
            print(f"{'':38s}   torch default ran: {t['kernel']}")
torch_sample = {r["batch"]: r for r in by("torch_sample")}
for r in by("sample"):
    name = f"sample vocab{r['vocab']} b{r['batch']}"
    t = torch_sample.get(r["batch"])
    peer = f"{t['us']:.1f} us" if t else "n/a"
    ratio = f"{t['us'] / r['us']:.2f}x faster" if t else ""
    print(f"{name:38s} {r['us']:>8.1f} us (graph {r['graph_us']:.1f}) {peer:>21s} {ratio:>11s}")
for r in by("torch_missing"):
    print(f"torch: {r['reason']}")
for r in by("e2e_prefill"):
    print(f"{'e2e prefill 1B-shape (graphs ' + ('on' if r['graphs'] else 'off') + ')':38s} {r['tokens_per_s']:>10.0f} tok/s {r['TFLOPs']:>6.1f} TFLOP/s")
for r in by("e2e_decode"):
    name = f"e2e decode 1B-shape b{r['batch']} graphs {'on' if r['graphs'] else 'off'}"
    print(f"{name:38s} {r['step_ms']:>9.3f} ms/step  roofline {r['roofline_ms']:.3f} ms  {r['fraction_of_roofline']:.2f}x roofline")
for r in by("e2e_error"):
    print(f"bench_cuda_e2e error: {r}")
for r in by("error"):
    print(f"bench_cuda error: {r}")
EOF
  echo
  if (( FAILED )); then echo "gpu-check: FAILED steps above (logs in $LOGS)"; else echo "gpu-check: all steps passed (logs in $LOGS)"; fi
} 2>&1 | tee "$LOGS/summary.txt"
exit $(( FAILED ? 1 : 0 ))
