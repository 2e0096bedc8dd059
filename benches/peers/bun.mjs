// Peer for the load comparison: Bun's WebSocket pub/sub (uWebSockets inside): one topic per symbol,
// `server.publish` per tick with the pre-serialized update. A client with more than 1 MiB queued has
// the update dropped (uWebSockets' backpressure limit; the harness counts it as a gap). Bun's default
// limit, 16 MiB per connection, would let W2's 5,000 clients queue up to 80 GB.
//   bun benches/peers/bun.mjs PORT TICKS.ndjson SPEED
import { args, handleOp, loadTicks, play } from "./common.mjs";

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
    backpressureLimit: 1024 * 1024,
    closeOnBackpressureLimit: false,
    message(ws, data) {
      handleOp(data, quotes, (text) => ws.send(text), (symbol) => ws.subscribe(symbol));
    },
  },
});

play(loadTicks(file), speed, quotes, (symbol, payload) => server.publish(symbol, payload));
console.error(`bun peer listening on 127.0.0.1:${server.port}`);
