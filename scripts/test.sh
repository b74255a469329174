#!/usr/bin/env bash
# scripts/test.sh - the one test command: installs what is missing, builds, and runs every
# test twice: a plain build with warnings as errors, and an AddressSanitizer +
# UndefinedBehaviorSanitizer build. Idempotent; rerunning rebuilds only what changed.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$SN_ROOT"

sn_install_deps
sn_install_python
sn_fetch_testdata
sn_fetch_smollm2

jobs=$(nproc)
sn_build "$SN_ROOT/build" -DSN_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
# The sanitizer build skips CUDA: nvcc host code and ASan do not mix, and no GPU runs it here.
sn_build "$SN_ROOT/build-asan" -DSN_WERROR=ON -DSN_SANITIZE=ON -DSN_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug

sn_log "tests (plain build)"
ctest --test-dir build -j "$jobs" --output-on-failure

sn_log "tests (AddressSanitizer + UndefinedBehaviorSanitizer)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan -j "$jobs" --output-on-failure
