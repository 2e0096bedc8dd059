#!/usr/bin/env bash
# Reproduces the side-by-side comparison in docs/benchmarks.md: quotegw (1 worker with the default
# config; with `min_frame_interval_ms = 16`; with `fanout_busy_percent = 100` (label quotegw-busy100,
# not in the default list); 2 workers on one core; 2 workers unpinned), Bun's pub/sub
# (uWebSockets) and Node 20 + ws, on the workloads of benches/load.rs, median of RUNS (default 3) runs
# each. LABELS picks servers (default: all of the above), e.g. LABELS="quotegw bun". The server runs on core 0 and the harness on core 1. The peers
# are installed from npm into target/peers/ when missing. Writes target/compare/results.jsonl and
# prints the markdown tables.
#   benches/compare.sh [WORKLOAD...]     (default: w0 w5 hot1k hot2k hot3k hot5k w1 w2 w3 w4)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
peers="${QUOTEGW_PEERS_DIR:-$PWD/target/peers}"
export QUOTEGW_PEERS_DIR="$peers"
if [ ! -x "$peers/node_modules/.bin/bun" ] || [ ! -d "$peers/node_modules/ws" ]; then
  echo "compare: installing bun and ws into $peers" >&2
  mkdir -p "$peers"
  [ -f "$peers/package.json" ] || echo '{"name":"quotegw-bench-peers","private":true}' > "$peers/package.json"
  (cd "$peers" && npm install --no-audit --no-fund --loglevel=error bun@1.3 ws@8 >&2)
fi
echo "compare: $(node --version) node, bun $("$peers/node_modules/.bin/bun" --version), $(nproc) cores" >&2
cargo bench --bench load --no-run >&2
out=target/compare
mkdir -p "$out"
: > "$out/results.jsonl"
: > "$out/stderr.txt"
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(w0 w5 hot1k hot2k hot3k hot5k w1 w2 w3 w4)
for w in "${workloads[@]}"; do
  for label in ${LABELS:-quotegw quotegw-16ms quotegw-2w1c quotegw-2w bun node}; do
    export QUOTEGW_LOAD_LIMITS=""
    case "$label" in
      quotegw) args=(--server quotegw) ;;
      # The operator's hard cap: at most one frame per 16 ms per connection.
      quotegw-16ms) args=(--server quotegw); export QUOTEGW_LOAD_LIMITS="min_frame_interval_ms = 16" ;;
      # No rest after long passes: frames grow only once the worker is saturated.
      quotegw-busy100) args=(--server quotegw); export QUOTEGW_LOAD_LIMITS="fanout_busy_percent = 100" ;;
      # Two workers on the server's one core: threads must pay for themselves.
      quotegw-2w1c) args=(--server quotegw --workers 2) ;;
      quotegw-2w) args=(--server quotegw --workers 2 --no-pin) ;;
      *) args=(--server "$label") ;;
    esac
    echo "compare: $w $label" >&2
    # A run that produced no result (the harness failed) is recorded as such and the rest go on.
    line=$(cargo bench --bench load -- run "$w" "${args[@]}" --runs "$runs" 2>>"$out/stderr.txt" | tee -a "$out/log.txt" | grep '^MEDIAN ' | sed 's/^MEDIAN //') || line='{"error":"no result, see target/compare/stderr.txt"}'
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["preset"]=sys.argv[2]; d["label"]=sys.argv[3]; print(json.dumps(d))' \
      "$line" "$w" "$label" >> "$out/results.jsonl"
  done
done
python3 benches/compare_table.py "$out/results.jsonl"
