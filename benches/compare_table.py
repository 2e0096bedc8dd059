"""Turns benches/compare.sh's results.jsonl into the markdown tables of docs/benchmarks.md."""
import json
import sys

TITLES = {
    "w0": "W0: 10,000 idle connections, 1 symbol each",
    "w5": "W5: 2,000 clients × 10 symbols, Zipf over 500, 5,000 ticks/s",
    "hot1k": "Hot1k: 1,000 clients on 1 hot symbol, 1,000 ticks/s",
    "hot2k": "Hot2k: 1,000 clients on 1 hot symbol, 2,000 ticks/s",
    "hot3k": "Hot3k: 1,000 clients on 1 hot symbol, 3,000 ticks/s",
    "hot5k": "Hot5k: 1,000 clients on 1 hot symbol, 5,000 ticks/s",
    "w1": "W1: 1,000 clients on 1 hot symbol, ramped (highest rate with p99 < 50 ms, no conflation)",
    "w2": "W2: 5,000 clients × 20 symbols, Zipf over 500, 10,000 ticks/s",
    "w3": "W3: W2 with 5% of clients reading 10 messages/s",
    "w4": "W4: W2 with 200 connects and disconnects per second",
}


def fmt(v, spec="{:,.0f}"):
    return "–" if v is None else spec.format(v)


def per_cpu(r):
    cpu = r.get("server_cpu_s_per_million")
    return None if not cpu else 1e6 / cpu


rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for preset in TITLES:
    mine = [r for r in rows if r["preset"] == preset]
    if not mine:
        continue
    print(f"### {TITLES[preset]}\n")
    print("| server | rate in/s | deliveries/s | deliveries per server CPU-s | conflated/s | latency p50 / p99 / p999 ms | p99 fast clients ms | CPU-µs per delivery | RSS MiB | RSS per connection KiB | seq regressions / gaps | clients ready (setup s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in mine:
        if "error" in r:
            print(f'| {r["label"]} | {r["error"]} |' + " |" * 10)
            continue
        name = r["label"]
        if preset == "w1" and not r.get("clean", True):
            name += " (no clean rate: first step shown)"
        lat = f'{fmt(r["latency_ms_p50"], "{}")} / {fmt(r["latency_ms_p99"], "{}")} / {fmt(r["latency_ms_p999"], "{}")}'
        print(
            f'| {name} | {fmt(r["rate_configured"])} | {fmt(r["deliveries_per_s"])} | {fmt(per_cpu(r))} | {fmt(r["conflated_per_s"])} | {lat} '
            f'| {fmt(r["fast_latency_ms_p99"], "{}")} | {fmt(r["server_cpu_s_per_million"], "{:.2f}")} '
            f'| {r["server_rss_mib"]:.1f} | {r["rss_per_connection_kib"]:.2f} | {r["seq_regressions"]} / {r["gaps"]} '
            f'| {r.get("ready_clients", "?")} / {r["clients"]} ({r.get("setup_s", 0):.0f}) |'
        )
    print()
