#!/usr/bin/env bash
# Scale-out leadership figures for docs/benchmarks.md ("Scale-out failover"), on this machine,
# loopback:
#  1. failover: two ingests (simulated market, 500 symbols, 2,000 ticks/s) and one edge; the leader
#     is SIGKILLed (at a random point of its renewal cycle) and the time until the edge serves a
#     symbol live again under the new leader's term (its first update from the new leader, polled
#     every 5 ms over REST) is taken; the killed ingest is started again as the standby. TRIALS trials (10), p50 and max, with lease_ms
#     LEASE_MS (3000, the default);
#  2. the reconcile's cost: one ingest with 500 and 10,000 symbols at 100 ticks/s, its CPU over
#     20 s with reconcile_ms = 1000 against reconcile off (a day), and the states it publishes.
# Needs Debian's nats-server (apt-get install nats-server).
#   benches/failover.sh            TRIALS=3 benches/failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked >&2
bin=$PWD/target/release/quotegw
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
trials=${TRIALS:-10}
lease=${LEASE_MS:-3000}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

np=$(port)
/usr/sbin/nats-server -js -a 127.0.0.1 -p "$np" -sd "$dir/nats" >/dev/null 2>&1 &
sleep 0.5

ingest_config() { # port symbols ticks_per_second reconcile_ms
  cat <<TOML
listen = "127.0.0.1:$1"
workers = 1
[[feeds]]
kind = "simulated"
name = "sim"
symbols = $2
ticks_per_second = $3
seed = 42
[publish]
nats_url = "nats://127.0.0.1:$np"
lease_ms = $lease
reconcile_ms = $4
TOML
}

echo "== 1. failover: SIGKILL the leader -> first update under the new term at an edge ($trials trials, lease_ms = $lease)"
pa=$(port); pb=$(port); pe=$(port)
ingest_config "$pa" 500 2000 30000 > "$dir/a.toml"
ingest_config "$pb" 500 2000 30000 > "$dir/b.toml"
cat > "$dir/edge.toml" <<TOML
listen = "127.0.0.1:$pe"
workers = 1
[[feeds]]
kind = "nats"
name = "bus"
nats_url = "nats://127.0.0.1:$np"
TOML
python3 - "$bin" "$dir" "$pa" "$pb" "$pe" "$trials" <<'PY'
import json, random, signal, subprocess, sys, time, urllib.request
bin_, d, pa, pb, pe, trials = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.read().decode()
    except Exception:
        return ""
def metric(port, series):
    for line in get(port, "/metrics").splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return None
def run(name):
    return subprocess.Popen([bin_, "--config", f"{d}/{name}.toml"], stderr=subprocess.DEVNULL)
def wait(cond, what, limit=30):
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            sys.exit(f"never: {what}")
        time.sleep(0.005)
procs = {pa: run("a"), pb: run("b")}
edge = subprocess.Popen([bin_, "--config", f"{d}/edge.toml"], stderr=subprocess.DEVNULL)
leader = lambda p: metric(p, 'quotegw_bus_leader{stream="QUOTEGW"}') == 1
wait(lambda: leader(pa) or leader(pb), "a leader")
def quote():
    body = get(pe, "/v1/quotes?symbols=AAPL")
    q = json.loads(body)["quotes"] if body else []
    return q[0] if q else None
wait(lambda: (quote() or {}).get("status") == "live", "the edge live")
times = []
for t in range(trials):
    lead = pa if leader(pa) else pb
    other = pb if lead == pa else pa
    wait(lambda: metric(other, 'quotegw_bus_leader{stream="QUOTEGW"}') == 0, "the standby up")
    old_term = metric(pe, 'quotegw_bus_term{link="bus"}')
    # At a random point of the leader's renewal cycle (lease_ms / 3), not in step with the last trial.
    time.sleep(random.uniform(0, 1.5))
    t0 = time.monotonic()
    procs[lead].send_signal(signal.SIGKILL)
    procs[lead].wait()
    def moved():
        q = quote()
        return q is not None and q.get("status") == "live" and metric(pe, 'quotegw_bus_term{link="bus"}') != old_term
    wait(moved, "the edge live under the new term")
    times.append(time.monotonic() - t0)
    print(f"trial {t + 1}: {times[-1] * 1000:.0f} ms", flush=True)
    procs[lead] = run("a" if lead == pa else "b")
    wait(lambda: get(lead, "/healthz") != "" or get(lead, "/readyz") != "", "the restarted ingest up")
times.sort()
p50 = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
print(f"failover over {len(times)} trials: p50 {p50 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms, min {times[0] * 1000:.0f} ms")
for p in list(procs.values()) + [edge]:
    p.kill()
PY

echo "== 2. the reconcile's cost (one ingest, 100 ticks/s, 20 s)"
for symbols in 500 10000; do
  for reconcile in 86400000 1000; do
    gp=$(port)
    ingest_config "$gp" "$symbols" 100 "$reconcile" > "$dir/r.toml"
    "$bin" --config "$dir/r.toml" 2>/dev/null &
    pid=$!
    until curl -sf "http://127.0.0.1:$gp/readyz" >/dev/null; do sleep 0.1; done
    sleep 3
    c0=$(awk '{print $14+$15}' "/proc/$pid/stat"); s0=$(date +%s.%N)
    p0=$(curl -s "http://127.0.0.1:$gp/metrics" | awk '$1 == "quotegw_bus_published_total" { print $2 }')
    sleep 20
    c1=$(awk '{print $14+$15}' "/proc/$pid/stat"); s1=$(date +%s.%N)
    p1=$(curl -s "http://127.0.0.1:$gp/metrics" | awk '$1 == "quotegw_bus_published_total" { print $2 }')
    python3 - "$symbols" "$reconcile" "$c0" "$c1" "$s0" "$s1" "$p0" "$p1" "$(getconf CLK_TCK)" <<'PY'
import sys
n, r = sys.argv[1], int(sys.argv[2])
c0, c1, s0, s1, p0, p1, hz = map(float, sys.argv[3:])
dt = s1 - s0
label = "reconcile_ms = 1000" if r == 1000 else "reconcile off     "
print(f"{n:>6} symbols, {label}: ingest CPU {(c1 - c0) / hz / dt * 100:5.1f} % of a core, {(p1 - p0) / dt:8,.0f} states/s published")
PY
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
