#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 20) each, from the committed seed corpus, and fails on
# any crash. Installs cargo-fuzz from crates.io when missing. Stable Rust: `-s none` (no sanitizer;
# libFuzzer's coverage guidance and our assertions still apply).
#   fuzz/run.sh [SECONDS]
#   QUOTEGW_FUZZ_TARGETS="client_op session_ops" fuzz/run.sh   (a subset; fuzz/selftest.sh uses it)
# That a crash turns this script red is itself checked, by fuzz/selftest.sh.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
targets="${QUOTEGW_FUZZ_TARGETS:-client_op feed_line poll_response session_ops}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
for target in $targets; do
  mkdir -p "corpus/$target" "artifacts/$target"
  # Fresh inputs found during the run go to a scratch copy, so the committed seeds stay small.
  work="target/corpus-$target"
  rm -rf "$work" && mkdir -p "$work" && cp -r "corpus/$target/." "$work/"
  log="target/fuzz-$target.log"
  echo "fuzz: $target for ${seconds}s"
  # The exit status is taken from cargo fuzz itself, before anything else runs: a filter in a
  # pipeline (and `|| true` after it) would hide it.
  status=0
  cargo fuzz run -s none "$target" "$work" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "stat::|DONE|SUMMARY|panicked|ERROR|crash-" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target FOUND A CRASH (exit $status); the input is under fuzz/artifacts/$target/, the log in fuzz/$log" >&2
    exit 1
  fi
done
echo "fuzz: all targets ran ${seconds}s each without a crash"
