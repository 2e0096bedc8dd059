#!/usr/bin/env bash
# Scale-out figures for docs/benchmarks.md ("Scale-out"), on this machine, loopback:
#  1. ticks/s one ingest takes in and publishes (index + NATS, nothing else on the machine): an
#     ingest replaying a recorded file as fast as it can ("max"), 15 s, its /metrics read before and
#     after;
#  2. what ingest -> NATS -> edge adds (p50/p99) and what an edge costs per delivery, against one
#     embedded gateway on the same workload, at 2,000 and 20,000 ticks/s (benches/load.rs
#     --topology edge: nats-server and the ingest on the harness's core, the edge on its own).
# Needs Debian's nats-server (apt-get install nats-server).
#   benches/scaleout.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench load --no-run >&2
bin=target/release/quotegw
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
ticks=target/load-ticks/u500-r20000-s42.ndjson
if [ ! -f "$ticks" ]; then
  mkdir -p target/load-ticks
  printf '[[feeds]]\nkind = "simulated"\nname = "sim"\nsymbols = 500\nticks_per_second = 20000\nseed = 42\n' > "$dir/rec.toml"
  "$bin" record --virtual-time --duration 30 --config "$dir/rec.toml" --to "$ticks" 2>/dev/null
fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }

echo "== 1. ingest throughput (replay at max speed, 15 s)"
np=$(port); gp=$(port)
/usr/sbin/nats-server -js -a 127.0.0.1 -p "$np" -sd "$dir/nats" >/dev/null 2>&1 &
sleep 0.5
cat > "$dir/ingest.toml" <<TOML
listen = "127.0.0.1:$gp"
workers = 1
[publish]
nats_url = "nats://127.0.0.1:$np"
[[feeds]]
kind = "replay"
name = "rp"
path = "$PWD/$ticks"
speed = "max"
loop = true
TOML
"$bin" --config "$dir/ingest.toml" 2>/dev/null &
ingest=$!
until curl -sf "http://127.0.0.1:$gp/readyz" >/dev/null; do sleep 0.1; done
t0=$(metric "$gp" 'quotegw_ticks_received_total{feed="rp"}'); p0=$(metric "$gp" quotegw_bus_published_total)
c0=$(awk '{print $14+$15}' "/proc/$ingest/stat"); s0=$(date +%s.%N)
sleep 15
t1=$(metric "$gp" 'quotegw_ticks_received_total{feed="rp"}'); p1=$(metric "$gp" quotegw_bus_published_total)
c1=$(awk '{print $14+$15}' "/proc/$ingest/stat"); s1=$(date +%s.%N)
python3 - "$t0" "$t1" "$p0" "$p1" "$c0" "$c1" "$s0" "$s1" "$(getconf CLK_TCK)" <<'PY'
import sys
t0,t1,p0,p1,c0,c1,s0,s1,hz=map(float,sys.argv[1:])
dt=s1-s0
print(f"ingest: {(t1-t0)/dt:,.0f} ticks/s in, {(p1-p0)/dt:,.0f} states/s published to NATS, ingest CPU {(c1-c0)/hz/dt:.2f} cores")
PY
kill "$ingest"; wait "$ingest" 2>/dev/null || true

echo "== 2. added latency and cost per delivery, embedded vs edge"
for rate in 2000 20000; do
  for topology in embedded edge; do
    cargo bench --bench load -- fanout --clients 200 --symbols-per-client 10 --universe 500 \
      --rate "$rate" --duration-s 10 --source file --topology "$topology" 2>/dev/null | grep '^RESULT' \
      | sed "s/^RESULT /$topology $rate /"
  done
done
