// Shared by the peer servers of the load comparison (benches/compare.sh): the tick source and the
// protocol subset the harness uses. The peers replay the same recorded file as quotegw (made by
// `quotegw record --virtual-time`), at the same rate, restamping `ts` with the emission time, and
// answer `subscribe` with an ack and a snapshot per symbol, then one pre-serialized update per tick.
import fs from "node:fs";

/** Reads the recorded ticks (NDJSON) once. */
export function loadTicks(path) {
  return fs
    .readFileSync(path, "utf8")
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
}

/**
 * Plays `ticks` in a loop at `speed` × recorded timing, checking every millisecond (the timer's
 * finest step): the recorded ticks are 1 ms apart and quotegw's replay emits each when it is due,
 * so every server sees the same cadence. (Until 2026-11-23 the peers emitted in 10 ms batches,
 * which gave them a tenth of quotegw's socket writes; docs/benchmarks.md has both.)
 * For each tick calls `emit(symbol, payload)` with the update frame, already serialized.
 */
export function play(ticks, speed, quotes, emit) {
  const first = ticks[0].ts;
  const span = ticks[ticks.length - 1].ts - first + 1;
  const started = Date.now();
  let i = 0;
  let pass = 0;
  const fields = ["bid", "ask", "last", "bid_size", "ask_size", "last_size", "volume"];
  setInterval(() => {
    const now = Date.now();
    const due = (now - started) * speed;
    while ((ticks[i].ts - first) + pass * span <= due) {
      const t = ticks[i];
      let q = quotes.get(t.symbol);
      if (!q) {
        q = { symbol: t.symbol, seq: 0, status: "live" };
        quotes.set(t.symbol, q);
      }
      q.seq += 1;
      q.ts = now;
      const update = { type: "update", symbol: t.symbol, seq: q.seq, ts: now };
      for (const f of fields) {
        if (t[f] !== undefined && t[f] !== null) {
          q[f] = t[f];
          update[f] = t[f];
        }
      }
      if (t.status) q.status = t.status;
      if (q.seq > 1) emit(t.symbol, "[" + JSON.stringify(update) + "]");
      i += 1;
      if (i === ticks.length) {
        i = 0;
        pass += 1;
      }
    }
  }, 1);
}

/**
 * Answers one client frame: `symbols`, or `subscribe` (ack, then a snapshot per known symbol, in one
 * frame). `subscribe(symbol)` registers the client with the server's fan-out.
 */
export function handleOp(data, quotes, send, subscribe) {
  let op;
  try {
    op = JSON.parse(data);
  } catch {
    return;
  }
  if (op.op === "symbols") {
    send(JSON.stringify([{ type: "symbols", symbols: [...quotes.keys()].sort() }]));
  } else if (op.op === "subscribe" && Array.isArray(op.symbols)) {
    const ok = op.symbols.filter((s) => quotes.has(s));
    const out = [{ type: "ack", op: "subscribe", symbols: ok, rejected: [] }];
    for (const s of ok) {
      subscribe(s);
      out.push({ type: "snapshot", ...quotes.get(s) });
    }
    send(JSON.stringify(out));
  }
}

export function args() {
  const [port, file, speed] = process.argv.slice(2);
  return { port: Number(port), file, speed: Number(speed || 1) };
}
