#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 20) each, from the committed seed corpus, and fails on
# any crash. Installs cargo-fuzz from crates.io when missing. Stable Rust: `-s none` (no sanitizer;
# libFuzzer's coverage guidance and our assertions still apply).
#   fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
for target in client_op feed_line poll_response; do
  mkdir -p "corpus/$target" "artifacts/$target"
  # Fresh inputs found during the run go to a scratch copy, so the committed seeds stay small.
  work="target/corpus-$target"
  rm -rf "$work" && mkdir -p "$work" && cp -r "corpus/$target/." "$work/"
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run -s none "$target" "$work" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -print_final_stats=1 2>&1 | \
    grep -E "stat::|DONE|SUMMARY|panicked|ERROR|crash-" || true
  # cargo fuzz exits non-zero on a crash; PIPESTATUS carries it through the grep.
  status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $target FOUND A CRASH (exit $status); the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "fuzz: all targets ran ${seconds}s each without a crash"
