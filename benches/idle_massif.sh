#!/usr/bin/env bash
# Where an idle connection's heap goes: runs the release gateway (one worker, the embedded simulated
# feed) under valgrind's massif, opens N idle WebSocket connections (all on one symbol, every
# snapshot read), takes a heap snapshot, and prints the bytes per connection of the largest allocation sites.
# RSS per connection (W0 of benches/compare.sh) also counts allocator slack and kernel socket memory;
# this says which of our structures the heap part is.
#   benches/idle_massif.sh [N]     (default 2000; installs Debian's valgrind when it is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000}"
tests/support/apt-install.sh /usr/bin/valgrind valgrind
cargo build --release --locked --bin quotegw >&2
dir="$(mktemp -d)"
trap 'kill "$gw" "${holder:-}" 2>/dev/null || true; rm -rf "$dir"' EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat > "$dir/idle.toml" <<EOF
listen = "127.0.0.1:$port"
workers = 1
[limits]
max_connections = $((n + 100))
max_connections_per_ip = $((n + 100))
max_connections_per_token = $((n + 100))
# The python client answers no ping: keep its connections open for the whole measurement.
idle_timeout_ms = 600000
ping_interval_ms = 600000
[[feeds]]
kind = "simulated"
name = "sim"
symbols = ["IDLE"]
ticks_per_second = 1
seed = 1
EOF
valgrind --tool=massif --massif-out-file="$dir/massif.out" --threshold=0.5 \
  target/release/quotegw --config "$dir/idle.toml" 2>"$dir/valgrind.log" &
gw=$!
# The idle connections (held open by a background python), then a heap snapshot with all of them open.
python3 - "$port" "$n" "$dir/ready" <<'PY' &
import os, socket, struct, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
deadline = time.time() + 300
while True:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
    except OSError:
        if time.time() > deadline: sys.exit("idle_massif: the gateway did not start")
        time.sleep(0.5)
def frame(text):
    p = text.encode(); mask = os.urandom(4)
    head = bytes([0x81, 0x80 | len(p)]) if len(p) < 126 else bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(p))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(p))
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    s.sendall(frame('{"op":"subscribe","symbols":["IDLE"]}'))
    conns.append(s)
time.sleep(5)
for s in conns:  # the handshake answers and snapshots, so nothing waits in a buffer of ours
    s.setblocking(False)
    try:
        while s.recv(65536): pass
    except BlockingIOError:
        pass
time.sleep(5)
print(f"idle_massif: {n} idle connections open", file=sys.stderr)
open(sys.argv[3], "w").close()
time.sleep(600)  # held open until the snapshot is taken
PY
holder=$!
for _ in $(seq 600); do
  [ -e "$dir/ready" ] && break
  if ! kill -0 "$gw" 2>/dev/null || ! kill -0 "$holder" 2>/dev/null; then
    echo "idle_massif: the gateway or the client ended early; valgrind's log:" >&2
    grep -v '^==' "$dir/valgrind.log" | head -5 >&2
    exit 1
  fi
  sleep 1
done
[ -e "$dir/ready" ] || { echo "idle_massif: the connections were not opened" >&2; exit 1; }
# A detailed snapshot now, with every connection open and idle (vgdb talks to valgrind's gdbserver).
vgdb --pid="$gw" detailed_snapshot "$dir/idle.massif" >&2
kill "$holder" 2>/dev/null || true
kill -INT "$gw"
wait "$gw" || true
python3 - "$dir/idle.massif" "$n" <<'PY'
import re, sys
# The snapshot's allocation tree in bytes per connection, sites under 2% of the heap left out. A
# chain of frames that all hold the same bytes prints as one line: its first frame that names our
# code (else the first named frame), so each line is one place the bytes are allocated from.
text = open(sys.argv[1]).read(); n = int(sys.argv[2])
snap = next(s for s in text.split("snapshot=") if "heap_tree=detailed" in s or "heap_tree=peak" in s)
total = int(re.search(r"mem_heap_B=(\d+)", snap).group(1))
print(f"heap with the connections idle: {total:,} B = {total / n:,.0f} B per connection "
      f"({n} connections; includes the gateway's fixed part)")
nodes = []
for line in snap.splitlines():
    m = re.match(r"^( *)n\d+: (\d+) (?:0x[0-9A-F]+: )?(.*)", line)
    if m:
        nodes.append((len(m.group(1)), int(m.group(2)), re.sub(r" \((?:in |/).*\)$", "", m.group(3))))
chain = None  # [depth, bytes, names, depth of its last frame]
def flush(chain):
    if chain and chain[1] >= total * 0.02:
        names = [x for x in chain[2] if x != "UnknownInlinedFun"]
        ours = [x for x in names if "quotegw" in x]
        print(f"{chain[1] / n:8,.0f} B/conn {'  ' * chain[0]}{(ours or names or ['?'])[0][:150]}")
for depth, size, name in nodes:
    if chain and depth == chain[3] + 1 and size == chain[1]:
        chain[2].append(name); chain[3] = depth
        continue
    flush(chain)
    chain = [depth, size, [name], depth]
flush(chain)
PY
