// Peer for the load comparison: Bun's WebSocket pub/sub (uWebSockets inside): one topic per symbol,
// `server.publish` per tick with the pre-serialized update.
//   bun benches/peers/bun.mjs PORT TICKS.ndjson SPEED
import { args, loadTicks, play, snapshot } from "./common.mjs";

const { port, file, speed } = args();
const quotes = new Map();

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(req, server) {
    if (server.upgrade(req)) return undefined;
    return new Response("websocket only", { status: 400 });
  },
  websocket: {
    perMessageDeflate: false,
    message(ws, data) {
      let op;
      try {
        op = JSON.parse(data);
      } catch {
        return;
      }
      if (op.op === "symbols") {
        ws.send(JSON.stringify([{ type: "symbols", symbols: [...quotes.keys()].sort() }]));
      } else if (op.op === "subscribe") {
        const ok = op.symbols.filter((s) => quotes.has(s));
        const out = [{ type: "ack", op: "subscribe", symbols: ok, rejected: [] }];
        for (const s of ok) {
          ws.subscribe(s);
          out.push(snapshot(quotes.get(s)));
        }
        ws.send(JSON.stringify(out));
      }
    },
  },
});

play(loadTicks(file), speed, quotes, (symbol, payload) => server.publish(symbol, payload));
console.error(`bun peer listening on 127.0.0.1:${server.port}`);
