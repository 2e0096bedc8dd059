// Peer for the load comparison: Node with `ws`, a broadcast loop sending one pre-serialized string per
// tick to every subscriber of the symbol. No conflation: ws queues what a slow client cannot take.
//   node benches/peers/node-ws.mjs PORT TICKS.ndjson SPEED
import { createRequire } from "node:module";
import { args, handleOp, loadTicks, play } from "./common.mjs";

const require = createRequire(process.env.PEERS_NODE_MODULES + "/");
const { WebSocketServer } = require("ws");

const { port, file, speed } = args();
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
  if (subs) for (const ws of subs) ws.send(payload);
});
console.error(`node-ws peer listening on 127.0.0.1:${port}`);
