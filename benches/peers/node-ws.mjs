// Peer for the load comparison: Node with `ws`, a broadcast loop sending one pre-serialized string per
// tick to every subscriber of the symbol. No conflation: ws queues what a slow client cannot take.
//   node benches/peers/node-ws.mjs PORT TICKS.ndjson SPEED
import { createRequire } from "node:module";
import { args, loadTicks, play, snapshot } from "./common.mjs";

const require = createRequire(process.env.PEERS_NODE_MODULES + "/");
const { WebSocketServer } = require("ws");

const { port, file, speed } = args();
const quotes = new Map();
const subscribers = new Map(); // symbol -> Set<ws>
const wss = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false });

wss.on("connection", (ws) => {
  const mine = new Set();
  ws.on("message", (data) => {
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
        if (!subscribers.has(s)) subscribers.set(s, new Set());
        subscribers.get(s).add(ws);
        mine.add(s);
        out.push(snapshot(quotes.get(s)));
      }
      ws.send(JSON.stringify(out));
    }
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
