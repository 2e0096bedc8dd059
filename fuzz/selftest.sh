#!/usr/bin/env bash
# Shows that the fuzzing gate can fail: runs fuzz/run.sh on `planted_fault`, a target that panics on
# its first input, and fails unless run.sh exits non-zero and reports the crash. Run by ./test.sh
# before the real fuzzing run.
set -uo pipefail
cd "$(dirname "$0")"
out="$(QUOTEGW_FUZZ_TARGETS=planted_fault ./run.sh 5 2>&1)"
status=$?
rm -rf artifacts/planted_fault
if [ "$status" -eq 0 ]; then
  printf '%s\n' "$out" >&2
  echo "fuzz selftest: FAILED: run.sh exited 0 on a target that crashes" >&2
  exit 1
fi
if ! grep -q "planted_fault FOUND A CRASH" <<<"$out"; then
  printf '%s\n' "$out" >&2
  echo "fuzz selftest: FAILED: run.sh exited $status without reporting the crash" >&2
  exit 1
fi
echo "fuzz selftest: run.sh goes red on a crashing target (exit $status), as it should"
