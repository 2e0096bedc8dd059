// Peer for the load comparison: Node with `ws`, a broadcast loop sending one pre-serialized string per
// tick to every subscriber of the symbol. No conflation. A client with more than MAX_BUFFERED bytes
// queued is skipped (the update is lost for it, which the harness counts as a gap), the guard any
// hand-rolled broadcast loop needs: without it ws queues without bound and W2 exhausts memory.
//   node benches/peers/node-ws.mjs PORT TICKS.ndjson SPEED
import { createRequire } from "node:module";
import { args, handleOp, loadTicks, play } from "./common.mjs";

const require = createRequire(process.env.PEERS_NODE_MODULES + "/");
const { WebSocketServer } = require("ws");

const { port, file, speed } = args();
const MAX_BUFFERED = 1024 * 1024; // the same bound as the Bun peer's backpressureLimit
const quotes = new Map();
const subscribers = new Map(); // symbol -> Set<ws>
const wss = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false });

wss.on("connection", (ws) => {
  const mine = new Set();
  ws.on("message", (data) => {
    handleOp(data, quotes, (text) => ws.send(text), (symbol) => {
      if (!subscribers.has(symbol)) subscribers.set(symbol, new Set());
      subscribers.get(symbol).add(ws);
      mine.add(symbol);
    });
  });
  ws.on("close", () => {
    for (const s of mine) subscribers.get(s)?.delete(ws);
  });
});

play(loadTicks(file), speed, quotes, (symbol, payload) => {
  const subs = subscribers.get(symbol);
  if (subs) for (const ws of subs) {
    if (ws.bufferedAmount <= MAX_BUFFERED) ws.send(payload);
  }
});
console.error(`node-ws peer listening on 127.0.0.1:${port}`);
