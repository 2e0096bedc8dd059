#!/usr/bin/env node
// Browser test of <quote-ticker> failing over between gateways (url="ws://A/ws ws://B/ws"), in real
// headless Chromium (Debian's, driven by playwright-core, as tests/widget/run.mjs), against a real
// scale-out: one ingest (a simulated market) publishing to a real nats-server, and two edges, A and
// B, serving clients from it. The host page comes from another origin (tests/widget/embed-server.mjs)
// and loads the widget from edge B.
//
//   NATS_URL=nats://127.0.0.1:4222 QUOTEGW_BIN=target/debug/quotegw node tests/widget/failover.mjs
//
// Without NATS_URL it starts /usr/sbin/nats-server itself on a free port (development; CI's
// tests/web.rs passes the one tests/support/nats.rs started). QUOTEGW_BIN defaults to
// target/release/quotegw or target/debug/quotegw. QUOTEGW_WEB_OVERLAY=1: as in run.mjs, a binary
// embedding an older web/quote-ticker.js than the one on disk is bridged by tests/widget/overlay.mjs
// (development only; without it such a binary fails the run).
//
// Checks, in order:
//   1. The element is live on A (the first URL) and its values move.
//   2. A is SIGKILLed mid-stream: the element says reconnecting (state, the container's
//      data-connection, the :state() custom state, aria-busy, its text) and still shows the last
//      values it had; then it is live on B and keeps updating; its seq for a symbol never goes
//      back; what it shows equals B's GET /v1/quotes (retried until they agree); no socket goes
//      back to A (it stays on the gateway that works).
//   3. A page whose first URL is down at load goes on to the second and shows B's quotes.
//   4. Close 1012: the ingest is killed, the cache's quote and bar subjects purged (so its
//      successor numbers seq from 1 again), a new ingest started; B closes the element's socket
//      with 1012; it reconnects to B and takes the lower seq at once (no symbol held back by the
//      seq guard), and shows B's quotes again.
//   5. The seq guard, against two scripted gateways (see the step).
//   6–12. Gateways that fail otherwise, scripted: unknown_symbol from a restarted (loading)
//      gateway, on one URL and on a list; a token refused by one URL of a list (401 to the ticket,
//      close 1008) and by all; the backoff per round of a list of three refusing gateways; a
//      gateway that accepts sockets and drops them; a list whose other gateway serves other
//      symbols only while the first refuses connects (see gatewayFaults).
// No check measures speed, but for the backoff's delays (9, 10; and 6's retries): lower bounds,
// and in 9 upper bounds with generous slack; every other wait is a bounded poll for a condition
// with a generous deadline.
// The helpers it shares with run.mjs (checks, polls, the gateway process, Chromium, stopping
// everything on failure too) are in tests/widget/toolkit.mjs.

import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

import { embedPage, startEmbedServer, tokenScript } from "./embed-server.mjs";
import {
  Gateway,
  POLL_MS,
  ROOT,
  configure,
  describeError,
  fail,
  freePort,
  killGroup,
  launchChromium,
  loadPlaywright,
  log,
  ok,
  passedCount,
  removeDirs,
  resolveBin,
  sleep,
  startWatchdog,
  stopAll,
  waitFor,
} from "./toolkit.mjs";

const OVERALL_TIMEOUT_MS = 240_000;
const READY_TIMEOUT_MS = 30_000;
const STEP_TIMEOUT_MS = 30_000;
configure({ stepTimeoutMs: STEP_TIMEOUT_MS });
const SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN"];
const PRICE_FIELDS = ["bid", "ask", "last"];
// Unique per run, so that a NATS server shared with other runs never mixes their states.
const STREAM = `QGWFAIL${process.pid}`;
const PREFIX = `qgwfail${process.pid}`;

/**
 * Purges `subjects` of a JetStream stream through NATS's own client protocol (a plain TCP
 * connection: CONNECT, SUB an inbox, PUB the $JS.API request, read the reply), as
 * `nats stream purge STREAM --subject ...` would. Resolves to the reply's JSON.
 */
function natsPurge(natsUrl, stream, subject) {
  const u = new URL(natsUrl.split(",")[0].trim());
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(u.port || 4222), u.hostname);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no purge reply from ${u.host} within 10 s`));
    }, 10_000);
    let buf = Buffer.alloc(0);
    let sent = false;
    sock.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        const eol = buf.indexOf("\r\n");
        if (eol < 0) return;
        const line = buf.subarray(0, eol).toString();
        if (line.startsWith("MSG ")) {
          const size = Number(line.trim().split(/\s+/).pop());
          if (buf.length < eol + 2 + size + 2) return;
          const payload = buf.subarray(eol + 2, eol + 2 + size).toString();
          clearTimeout(timer);
          sock.destroy();
          try {
            resolve(JSON.parse(payload));
          } catch (e) {
            reject(e);
          }
          return;
        }
        buf = buf.subarray(eol + 2);
        if (line.startsWith("INFO ") && !sent) {
          sent = true;
          const body = JSON.stringify({ filter: subject });
          const auth = u.username ? `,"user":${JSON.stringify(decodeURIComponent(u.username))},"pass":${JSON.stringify(decodeURIComponent(u.password))}` : "";
          sock.write(`CONNECT {"verbose":false,"pedantic":false,"headers":false${auth}}\r\nSUB _INBOX.purge 1\r\n`);
          sock.write(`PUB $JS.API.STREAM.PURGE.${stream} _INBOX.purge ${Buffer.byteLength(body)}\r\n${body}\r\n`);
        } else if (line.startsWith("PING")) {
          sock.write("PONG\r\n");
        } else if (line.startsWith("-ERR")) {
          clearTimeout(timer);
          sock.destroy();
          reject(new Error(line));
          return;
        }
      }
    });
  });
}

/** Starts Debian's nats-server (JetStream) on a free port when the caller gave no NATS_URL. */
async function ownNats(state) {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "quotegw-failover-nats-"));
  state.tmpDirs.push(dir);
  const conf = path.join(dir, "nats.conf");
  fs.writeFileSync(conf, `listen: 127.0.0.1:${port}\njetstream { store_dir: "${path.join(dir, "store")}" }\n`);
  const proc = spawn("/usr/sbin/nats-server", ["-c", conf], { stdio: "ignore", detached: true });
  state.nats = proc;
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise((r) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.destroy();
        r(true);
      });
      s.on("error", () => r(false));
    });
    if (up) break;
    if (Date.now() > deadline) fail("nats-server did not listen within 10 s");
    await sleep(50);
  }
  return `nats://127.0.0.1:${port}`;
}

function ingestConfig(natsUrl) {
  return `# tests/widget/failover.mjs: the scale-out ingest (a simulated market), publishing to NATS.
listen = "127.0.0.1:8080"
workers = 1

[[feeds]]
kind = "simulated"
name = "sim"
symbols = ${JSON.stringify(SYMBOLS)}
ticks_per_second = 40
seed = 7

[publish]
nats_url = "${natsUrl}"
stream = "${STREAM}"
subject_prefix = "${PREFIX}"
heartbeat_ms = 100
lease_ms = 1000
cache_wait_ms = 3000
`;
}

function edgeConfig(natsUrl) {
  return `# tests/widget/failover.mjs: an edge, serving clients from the ingest's states on NATS.
listen = "127.0.0.1:8080"
workers = 1

[[feeds]]
kind = "nats"
name = "bus"
nats_url = "${natsUrl}"
stream = "${STREAM}"
subject_prefix = "${PREFIX}"
stale_after_ms = 800
`;
}

/**
 * Installed in every page before its scripts: records, for each <quote-ticker>, every change of a
 * row's data-seq (a seq going back is a violation, unless a 1012 came between), of data-held, and
 * every connectionstatechange with what the element showed at that instant.
 */
function pageRecorder() {
  const rec = (window.__fo = { events: [], seqBack: [], held: [], status: [], epochs: 0, maxSeq: {}, observed: new Set() });
  document.addEventListener("connectionstatechange", (e) => {
    const w = e.target;
    const box = w.shadowRoot && w.shadowRoot.querySelector("[part=container]");
    const body = w.shadowRoot && w.shadowRoot.querySelector("[part=body]");
    let customState = null;
    try {
      customState = w.matches(`:state(${e.detail.state})`);
    } catch {
      customState = "unsupported";
    }
    rec.events.push({
      id: w.id,
      t: Date.now(),
      ...e.detail,
      shown: w.displayedQuotes,
      dataConnection: box ? box.dataset.connection : null,
      ariaBusy: body ? body.getAttribute("aria-busy") : null,
      connText: (w.shadowRoot && w.shadowRoot.querySelector("[part=connection]")?.textContent) || "",
      customState,
      maxSeq: { ...(rec.maxSeq[w.id] || {}) },
    });
    // seq may start over from here: a new epoch for the never-back check
    if (e.detail.closeCode === 1012 && e.detail.state === "reconnecting") rec.epochs++;
  });
  rec.observe = (id) => {
    if (rec.observed.has(id)) return true;
    const w = document.getElementById(id);
    if (!w || !w.shadowRoot) return false;
    rec.observed.add(id);
    rec.maxSeq[id] = {};
    new MutationObserver((records) => {
      for (const r of records) {
        const row = r.target;
        const sym = row.dataset && row.dataset.symbol;
        if (!sym) continue;
        if (r.attributeName === "data-row-status") {
          rec.status.push({ id, sym, status: row.dataset.rowStatus, t: Date.now() });
          continue;
        }
        if (r.attributeName === "data-held") {
          rec.held.push({ id, sym, held: row.hasAttribute("data-held"), epoch: rec.epochs, t: Date.now() });
          continue;
        }
        const seq = row.dataset.seq === "" || row.dataset.seq === undefined ? null : Number(row.dataset.seq);
        if (seq === null) continue;
        // The last seq shown: a seq below it is a step back (the guard must prevent it but after 1012).
        const before = rec.maxSeq[id][sym];
        if (before !== undefined && seq < before) rec.seqBack.push({ id, sym, from: before, to: seq, epoch: rec.epochs });
        rec.maxSeq[id][sym] = seq;
      }
    }).observe(w.shadowRoot, { subtree: true, attributes: true, attributeFilter: ["data-seq", "data-held", "data-row-status"] });
    return true;
  };
}

/**
 * A scripted gateway: a minimal WebSocket server (RFC 6455 handshake, unmasked text frames out,
 * masked ones in) on a free port. `onOp(op, send, conn)` is called for each client op; `send(messages)`
 * writes one frame (a JSON array) to that socket, `conn.close(code, reason)` closes it with a close
 * frame, `conn.no` is the socket's number (from 1) and `conn.ops` the ops it has had. Options:
 * `upgrade(path)` may refuse a handshake by returning an HTTP status (a browser sees only 1006);
 * `http(method, path, headers)` answers any other request: { status, body } (a JSON body, with CORS
 * headers for the requesting Origin; OPTIONS is a preflight, answered for POST with Authorization).
 * `connections` records every handshake asked for ({ t, path, refused }); `drop()` cuts every
 * socket (a crash: 1006).
 */
async function scriptedGateway(onOp, { upgrade = () => undefined, http: onHttp = () => ({ status: 404, body: {} }) } = {}) {
  const sockets = new Set();
  const connections = [];
  const frame = (text) => {
    const body = Buffer.from(text);
    const head = body.length < 126 ? Buffer.from([0x81, body.length]) : Buffer.from([0x81, 126, body.length >> 8, body.length & 255]);
    return Buffer.concat([head, body]);
  };
  const server = net.createServer((sock) => {
    let buf = Buffer.alloc(0);
    let open = false;
    const send = (messages) => sock.write(frame(JSON.stringify(messages)));
    const conn = {
      no: 0,
      ops: [],
      close(code, reason = "") {
        const r = Buffer.from(reason);
        sock.write(Buffer.concat([Buffer.from([0x88, 2 + r.length, code >> 8, code & 255]), r]));
        sock.end();
      },
    };
    sock.on("error", () => {});
    sock.on("close", () => sockets.delete(sock));
    sock.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (!open) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        const [method, reqPath] = head.split("\r\n")[0].split(" ");
        const headers = Object.fromEntries(head.split("\r\n").slice(1).map((l) => [l.slice(0, l.indexOf(":")).trim().toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]));
        if (!/websocket/i.test(headers.upgrade || "")) {
          const origin = headers.origin || "*";
          const cors = `Access-Control-Allow-Origin: ${origin}\r\nAccess-Control-Allow-Headers: authorization\r\nAccess-Control-Allow-Methods: POST\r\nVary: Origin\r\n`;
          if (method === "OPTIONS") {
            sock.end(`HTTP/1.1 204 No Content\r\n${cors}Content-Length: 0\r\nConnection: close\r\n\r\n`);
            return;
          }
          const answer = onHttp(method, reqPath, headers);
          const body = JSON.stringify(answer.body);
          sock.end(`HTTP/1.1 ${answer.status} X\r\n${cors}Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
          return;
        }
        const refused = upgrade(reqPath);
        connections.push({ t: Date.now(), path: reqPath, refused: refused || null });
        if (refused) {
          sock.end(`HTTP/1.1 ${refused} Refused\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
          return;
        }
        const key = /sec-websocket-key:\s*(\S+)/i.exec(head)[1];
        const accept = crypto.createHash("sha1").update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest("base64");
        sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
        buf = buf.subarray(end + 4);
        open = true;
        conn.no = connections.filter((c) => !c.refused).length;
        sockets.add(sock);
      }
      while (buf.length >= 6) {
        let len = buf[1] & 127;
        let at = 2;
        if (len === 126) {
          len = buf.readUInt16BE(2);
          at = 4;
        }
        if (buf.length < at + 4 + len) return;
        const mask = buf.subarray(at, at + 4);
        const payload = Buffer.from(buf.subarray(at + 4, at + 4 + len)).map((x, i) => x ^ mask[i % 4]);
        const opcode = buf[0] & 15;
        buf = buf.subarray(at + 4 + len);
        if (opcode === 1) {
          const op = JSON.parse(payload.toString());
          conn.ops.push({ ...op, t: Date.now() });
          onOp(op, send, conn);
        }
      }
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const port = server.address().port;
  return {
    ws: `ws://127.0.0.1:${port}/ws`,
    base: `http://127.0.0.1:${port}`,
    connections,
    sendAll(messages) {
      for (const s of sockets) s.write(frame(JSON.stringify(messages)));
    },
    drop() {
      for (const s of sockets) s.destroy();
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

async function quotesOf(base, symbols) {
  const res = await fetch(`${base}/v1/quotes?symbols=${symbols.join(",")}`, { signal: AbortSignal.timeout(5000) });
  const body = await res.json().catch(() => null);
  if (res.status !== 200 || !body || !Array.isArray(body.quotes)) fail(`GET ${base}/v1/quotes answered ${res.status} ${JSON.stringify(body)}`);
  return Object.fromEntries(body.quotes.map((q) => [q.symbol, q]));
}

/**
 * What element `id` shows equals gateway `base`'s GET /v1/quotes for every symbol: seq, the prices
 * (exact strings) and volume. The feed is live, so the two are read again until they agree for a
 * symbol (bounded); every symbol must have agreed once.
 */
async function matchGateway(page, id, base, label) {
  const matched = new Set();
  let last = null;
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (matched.size < SYMBOLS.length && Date.now() < deadline) {
    const gw = await quotesOf(base, SYMBOLS);
    const shown = await page.evaluate((id) => document.getElementById(id).displayedQuotes, id);
    for (const s of SYMBOLS) {
      const d = shown[s];
      const g = gw[s];
      const diffs = [];
      if (!d || !g) diffs.push("missing");
      else {
        if (d.seq !== g.seq) diffs.push(`seq ${d.seq} != ${g.seq}`);
        for (const f of PRICE_FIELDS) if (d[f] !== (g[f] ?? "—")) diffs.push(`${f} ${d[f]} != ${g[f]}`);
        if (d.volume.replace(/[^0-9]/g, "") !== String(g.volume)) diffs.push(`volume ${d.volume} != ${g.volume}`);
        if (d.held) diffs.push("held");
      }
      if (diffs.length === 0) matched.add(s);
      else last = { symbol: s, diffs };
    }
    if (matched.size < SYMBOLS.length) await sleep(POLL_MS);
  }
  if (matched.size < SYMBOLS.length) fail(`${label}: the element never showed ${base}'s quotes for ${SYMBOLS.filter((s) => !matched.has(s))}; last difference: ${JSON.stringify(last)}`);
}

async function main(state, bin, chromium) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "quotegw-failover-"));
  state.tmpDirs.push(tmp);
  const natsUrl = process.env.NATS_URL || (await ownNats(state));
  const write = (name, text) => {
    const file = path.join(tmp, name);
    fs.writeFileSync(file, text);
    return file;
  };
  const ingestToml = write("ingest.toml", ingestConfig(natsUrl));
  const edgeToml = write("edge.toml", edgeConfig(natsUrl));
  const launch = async (name, config, overlayFiles) => {
    // An ingest or an edge; a start that exits before it is ready fails the run (no retry).
    const g = new Gateway(bin, config, await freePort(), name, { readyTimeoutMs: READY_TIMEOUT_MS, startAttempts: 1, keepLines: 300 });
    state.gateways.push(g);
    if (overlayFiles) await g.enableOverlay(overlayFiles);
    await g.startReady();
    return g;
  };
  let ingest = await launch("ingest", ingestToml);
  const a = await launch("edge A", edgeToml);
  // B serves the page its widget script: the binary's embedded copy must be the file on disk
  // (or, in development, the file on disk is put in front of it).
  const widget = fs.readFileSync(path.join(ROOT, "web/quote-ticker.js"));
  let b = await launch("edge B", edgeToml);
  const served = Buffer.from(await (await fetch(`${b.base}/widget/quote-ticker.js`)).arrayBuffer());
  if (!served.equals(widget)) {
    if (process.env.QUOTEGW_WEB_OVERLAY !== "1") fail(`${bin} embeds another web/quote-ticker.js than the one on disk: rebuild it (cargo build), or set QUOTEGW_WEB_OVERLAY=1`);
    await b.stop();
    state.gateways.pop();
    b = await launch("edge B", edgeToml, new Map([["/widget/quote-ticker.js", widget]]));
    log("note: QUOTEGW_WEB_OVERLAY=1: /widget/quote-ticker.js served from web/ on disk through an overlay proxy in front of edge B");
  }
  for (const g of [a, b]) {
    await waitFor(`${g.name} to serve every symbol from the ingest`, async () => {
      const q = await quotesOf(g.base, SYMBOLS);
      return { ok: SYMBOLS.every((s) => q[s] && q[s].status === "live"), detail: q };
    });
  }
  ok(`scale-out up: ingest ${ingest.base} publishing to ${natsUrl} (stream ${STREAM}), edges A ${a.base} and B ${b.base} serve ${SYMBOLS.join(", ")} live`);

  const embed = (state.embed = await startEmbedServer(widget));
  const script = `  <script type="module" src="${b.base}/widget/quote-ticker.js"></script>`;
  embed.page("failover", embedPage("Failover", script, `  <quote-ticker id="fo" url="${a.ws}  ${b.ws}" symbols="${SYMBOLS.join(",")}"></quote-ticker>`));

  state.userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "quotegw-failover-chromium-"));
  const context = (state.context = await launchChromium(chromium, state.userDataDir));
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  await context.addInitScript(pageRecorder);
  const page = context.pages()[0] || (await context.newPage());
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  const sockets = [];
  page.on("websocket", (ws) => sockets.push({ url: ws.url() }));
  await page.goto(`${embed.originA}/failover.html`, { waitUntil: "load" });
  await waitFor("the element to be defined and observed", () => page.evaluate(() => window.__fo.observe("fo")));
  const view = () => page.evaluate(() => {
    const w = document.getElementById("fo");
    return { state: w.connectionState, info: w.connectionInfo, quotes: w.displayedQuotes };
  });

  // 1. Live on A, values moving.
  const first = await waitFor("the element live on A with every symbol shown", async () => {
    const v = await view();
    return { ok: v.state === "live" && v.info.urlIndex === 0 && SYMBOLS.every((s) => v.quotes[s] && v.quotes[s].seq !== null), v, detail: v };
  });
  await waitFor("the values to move on A", async () => {
    const v = await view();
    return { ok: SYMBOLS.every((s) => v.quotes[s].seq > first.v.quotes[s].seq), detail: v.quotes };
  });
  if (!sockets.length || !sockets[0].url.startsWith(a.ws)) fail(`the first WebSocket went to ${sockets[0] && sockets[0].url}, want A (${a.ws})`);
  await matchGateway(page, "fo", a.base, "on A");
  ok(`live on A (the first URL of "${a.ws} ${b.ws}"); values move and equal A's GET /v1/quotes`);

  // 2. A dies mid-stream.
  await a.stop("SIGKILL");
  const lost = await waitFor("the element to say reconnecting after A died", async () => {
    const events = await page.evaluate(() => window.__fo.events.filter((e) => e.id === "fo"));
    const e = events.find((x) => x.state === "reconnecting");
    return { ok: !!e, e, detail: events.map((x) => x.state) };
  });
  const e = lost.e;
  const marks = [];
  if (e.dataConnection !== "reconnecting") marks.push(`container data-connection=${e.dataConnection}`);
  if (e.ariaBusy !== "true") marks.push(`body aria-busy=${e.ariaBusy}`);
  if (!/reconnecting/i.test(e.connText)) marks.push(`text ${JSON.stringify(e.connText)}`);
  if (e.customState !== true) marks.push(`:state(reconnecting) ${e.customState}`);
  if (marks.length) fail(`while reconnecting the element is not marked so: ${marks.join(", ")}`);
  const kept = SYMBOLS.filter((s) => {
    const q = e.shown[s];
    return q && q.seq !== null && q.seq === e.maxSeq[s] && PRICE_FIELDS.every((f) => /^\d+(\.\d+)?$/.test(q[f]));
  });
  if (kept.length !== SYMBOLS.length) fail(`while reconnecting the element does not show its last values: shown ${JSON.stringify(e.shown)}, last seqs ${JSON.stringify(e.maxSeq)}`);
  ok(`A SIGKILLed: the element says reconnecting (state, data-connection, :state(reconnecting), aria-busy, "${e.connText}"; close ${e.closeCode}, retry in ${e.retryDelayMs} ms to ${e.url}) and still shows the last values (seq ${SYMBOLS.map((s) => `${s} ${e.shown[s].seq}`).join(", ")})`);

  const onB = await waitFor("the element live on B", async () => {
    const v = await view();
    return { ok: v.state === "live" && v.info.urlIndex === 1 && v.info.url === `${b.ws}`, v, detail: v.info };
  });
  await waitFor("the values to keep moving on B", async () => {
    const v = await view();
    return { ok: SYMBOLS.every((s) => v.quotes[s].seq > e.shown[s].seq && !v.quotes[s].held), detail: v.quotes };
  });
  await matchGateway(page, "fo", b.base, "after the failover");
  const rec = await page.evaluate(() => ({ seqBack: window.__fo.seqBack, held: window.__fo.held }));
  if (rec.seqBack.length) fail(`a shown seq went back: ${JSON.stringify(rec.seqBack.slice(0, 5))}`);
  await sleep(1500); // a socket going back to A would be open by now (it is dead: refused)
  const toA = sockets.slice(1).filter((s) => s.url.startsWith(a.ws));
  if (toA.length) fail(`after the failover the element opened ${toA.length} WebSocket(s) to A again: it must stay on B, which works`);
  ok(`then live on B (${onB.v.info.url}), values keep moving and equal B's GET /v1/quotes; no shown seq went back (${rec.held.filter((h) => h.held).length} symbol(s) held by the seq guard meanwhile); it stays on B`);

  // 3. The first URL down at page load: on to the second.
  embed.page("first-down", embedPage("First URL down", script, `  <quote-ticker id="fd" url="${a.ws} ${b.ws}" symbols="${SYMBOLS.join(",")}"></quote-ticker>`));
  const page2 = await context.newPage();
  page2.on("pageerror", (err) => pageErrors.push(`first-down: ${err}`));
  await page2.goto(`${embed.originA}/first-down.html`, { waitUntil: "load" });
  await waitFor("the first-down page live on B", async () => {
    const v = await page2.evaluate(() => {
      const w = document.getElementById("fd");
      return w && w.connectionInfo ? { state: w.connectionState, info: w.connectionInfo } : null;
    });
    return { ok: !!v && v.state === "live" && v.info.urlIndex === 1, detail: v };
  });
  await matchGateway(page2, "fd", b.base, "first URL down at load");
  await page2.close();
  ok("a page whose first URL is down at load goes on to the second and shows B's quotes");

  // 4. Close 1012: the ingest restarts without its cache; B's seq starts over.
  await ingest.stop("SIGKILL");
  for (const subject of [`${PREFIX}.q.>`, `${PREFIX}.b.>`]) {
    const r = await natsPurge(natsUrl, STREAM, subject);
    if (!r || r.success !== true) fail(`purging ${subject} of ${STREAM}: ${JSON.stringify(r)}`);
  }
  const before1012 = await view();
  ingest = await launch("ingest (restarted, cache purged)", ingestToml);
  const restart = await waitFor("B to close the element's socket with 1012 and the element to be live on B again", async () => {
    const events = await page.evaluate(() => window.__fo.events.filter((x) => x.id === "fo"));
    const i = events.findIndex((x) => x.closeCode === 1012 && x.state === "reconnecting");
    const v = await view();
    return { ok: i >= 0 && v.state === "live" && v.info.urlIndex === 1, e: events[i], detail: { states: events.slice(-4).map((x) => `${x.state}/${x.closeCode}`), info: v.info } };
  }, 60_000);
  await matchGateway(page, "fo", b.base, "after the 1012");
  const after = await page.evaluate(() => ({ seqBack: window.__fo.seqBack, held: window.__fo.held, epochs: window.__fo.epochs }));
  const heldAfter = after.held.filter((h) => h.epoch >= 1 && h.held);
  if (heldAfter.length) fail(`after the 1012 the seq guard held ${JSON.stringify(heldAfter.slice(0, 4))}: a 1012 means seq starts over, the new snapshots are to be shown at once`);
  // The restarted numbering is taken: a symbol B closed with 1012 for steps down once, no more.
  const drops = after.seqBack.filter((x) => x.epoch >= 1);
  const dropped = new Set(drops.map((x) => x.sym));
  if (!dropped.size) fail(`after the 1012 no shown seq went down (before: ${JSON.stringify(before1012.quotes)}): the restarted ingest's numbering never reached the element`);
  if (drops.length !== dropped.size) fail(`after the 1012 a shown seq went back more than once: ${JSON.stringify(drops)}`);
  ok(`close 1012 (ingest restarted with its cache purged): reconnected to B in ${restart.e.retryDelayMs} ms, took the new lower seq at once (${drops.map((x) => `${x.sym} ${x.from}→${x.to}`).join(", ")}; none held), and shows B's quotes`);

  // 5. The seq guard, against two scripted gateways: X shows AAPL at seq 100 and MSFT at 50, then
  //    dies; Y is behind (AAPL 90, MSFT 10). Y's older snapshots are held (the last values stay,
  //    the rows marked data-held) until Y's AAPL stream reaches 100; MSFT, which Y never moves,
  //    is shown after the guard's bound: held values never freeze.
  const quote = (symbol, seq, bid) => ({ type: "snapshot", symbol, seq, ts: 1, bid, ask: "9.99", bid_size: 1, ask_size: 1, last: bid, last_size: 1, volume: seq, status: "live" });
  const ack = (op) => ({ type: "ack", id: op.id, op: op.op, symbols: op.symbols, rejected: [] });
  const x = await scriptedGateway((op, send) => {
    if (op.op === "subscribe") send([ack(op), quote("AAPL", 100, "1.00"), quote("MSFT", 50, "5.00")]);
  });
  const y = await scriptedGateway((op, send) => {
    if (op.op === "subscribe") send([ack(op), quote("AAPL", 90, "0.90"), quote("MSFT", 10, "0.10"), { type: "update", symbol: "AAPL", seq: 95, ts: 2, bid: "0.95" }]);
  });
  state.scripted.push(x, y);
  embed.page("guard", embedPage("Seq guard", `  <script type="module" src="/quote-ticker.js"></script>`, `  <quote-ticker id="sg" url="${x.ws} ${y.ws}" symbols="AAPL,MSFT"></quote-ticker>`));
  const page3 = await context.newPage();
  page3.on("pageerror", (err) => pageErrors.push(`guard: ${err}`));
  await page3.goto(`${embed.originA}/guard.html`, { waitUntil: "load" });
  await waitFor("the guard page's element to be observed", () => page3.evaluate(() => window.__fo.observe("sg")));
  const sg = () => page3.evaluate(() => {
    const w = document.getElementById("sg");
    const rows = {};
    for (const r of w.shadowRoot.querySelectorAll("tr[data-symbol]")) rows[r.dataset.symbol] = r.hasAttribute("data-held");
    return { state: w.connectionState, info: w.connectionInfo, quotes: w.displayedQuotes, rows };
  });
  await waitFor("X's quotes on the guard page", async () => {
    const v = await sg();
    return { ok: v.state === "live" && v.quotes.AAPL && v.quotes.AAPL.seq === 100 && v.quotes.MSFT.seq === 50, detail: v };
  });
  x.drop();
  const held = await waitFor("the element on Y, holding X's newer values", async () => {
    const v = await sg();
    const q = v.quotes;
    return { ok: v.state === "live" && v.info.urlIndex === 1 && q.AAPL.held && q.AAPL.seq === 100 && q.AAPL.bid === "1.00" && v.rows.AAPL, v, detail: v };
  });
  y.sendAll([{ type: "update", symbol: "AAPL", seq: 100, ts: 3, bid: "1.01" }]);
  await waitFor("Y's AAPL shown once its stream reached the seq shown", async () => {
    const v = await sg();
    return { ok: !v.quotes.AAPL.held && v.quotes.AAPL.seq === 100 && v.quotes.AAPL.bid === "1.01" && !v.rows.AAPL, detail: v.quotes.AAPL };
  });
  await waitFor("Y's MSFT shown after the guard's bound, though its stream never passed X's seq", async () => {
    const v = await sg();
    return { ok: !v.quotes.MSFT.held && v.quotes.MSFT.seq === 10 && v.quotes.MSFT.bid === "0.10", detail: v.quotes.MSFT };
  });
  const guardRec = await page3.evaluate(() => window.__fo.seqBack.filter((b) => b.id === "sg"));
  if (guardRec.length !== 1 || guardRec[0].sym !== "MSFT") fail(`on the guard page the shown seq went back ${JSON.stringify(guardRec)}, want once: MSFT after the bound`);
  await page3.close();
  ok(`seq guard (scripted gateways X, Y): Y's older snapshot is held (values of X kept, row data-held; AAPL ${held.v.quotes.AAPL.seq} ${held.v.quotes.AAPL.bid}) until Y's stream reaches the seq shown (then 1.01 from Y); MSFT, never moved by Y, is shown after the bound`);

  await gatewayFaults({ context, embed, state, pageErrors, quote, ack });

  if (pageErrors.length) fail(`page errors: ${pageErrors.join("; ")}`);
}

/**
 * 6–12. Gateways that fail in other ways than dying, from scripted gateways (see scriptedGateway):
 *   6. One URL whose gateway restarted and, still loading its cache, answers every subscribe
 *      unknown_symbol: the rows shown before say "unavailable" (not live, last values kept), the
 *      widget asks again (more than once, with growing gaps) and shows the gateway's quotes once
 *      it knows them.
 *   7. Two URLs, the second answering unknown_symbol for everything: the element leaves it for the
 *      first again (the gateway counts as failed), rows marked unavailable meanwhile.
 *   8. Two URLs with a token provider: the first refuses the token (401 to POST /v1/ticket, after
 *      the renew; and, another page, close 1008 on the socket): the element goes on to the second,
 *      which accepts it. Two URLs that both refuse: "unauthorized", and nothing more is asked.
 *   9. Three URLs that refuse every handshake (503): the first connect to each comes within 1 s,
 *      then the backoff grows per full round of the list (not per attempt).
 *  10. A gateway that accepts the socket, answers, and drops it at once: the reconnects back off
 *      (250·2^n ms at least), the backoff is not reset by its answers.
 *  11. url="E X", X serving other symbols only (unknown_symbol for all): E dies and refuses
 *      connects a while. A refused connect is no unknown_symbol answer, so the element does not
 *      settle on X; it is live on E soon after E is back, connectionInfo.closeCode null again.
 *  12. The same list, E restarted (1012) and loading while X knows nothing: every URL answered
 *      unknown_symbol, so the element stays a while, but leaves X after the round backoff and is
 *      live on E once it knows the symbols.
 *   (6 also checks that the connection part does not say plain "Live" while every row is
 *   unavailable.)
 */
async function gatewayFaults({ context, embed, state, pageErrors, quote, ack }) {
  const widgetTag = `  <script type="module" src="/quote-ticker.js"></script>`;
  const openPage = async (name, head, body, id) => {
    embed.page(name, embedPage(name, head, body));
    const page = await context.newPage();
    page.on("pageerror", (err) => pageErrors.push(`${name}: ${err}`));
    await page.goto(`${embed.originA}/${name}.html`, { waitUntil: "load" });
    await waitFor(`the ${name} page's element to be observed`, () => page.evaluate((id) => window.__fo.observe(id), id));
    const view = () => page.evaluate((id) => {
      const w = document.getElementById(id);
      const conn = w.shadowRoot && w.shadowRoot.querySelector("[part=connection]");
      return { state: w.connectionState, info: w.connectionInfo, quotes: w.displayedQuotes, rejected: w.rejectedSymbols, connText: conn ? conn.textContent : "" };
    }, id);
    return { page, view };
  };
  const gaps = (times) => times.slice(1).map((t, i) => t - times[i]);
  const unknownAck = (op) => ({ type: "ack", id: op.id, op: "subscribe", symbols: [], rejected: op.symbols.map((symbol) => ({ symbol, code: "unknown_symbol" })) });

  // 6. One URL, restarted and loading: unknown_symbol for its first two subscribes.
  const asked = []; // when the restarted gateway's socket had each subscribe
  const loading = await scriptedGateway((op, send, conn) => {
    if (op.op !== "subscribe") return;
    const subs = conn.ops.filter((o) => o.op === "subscribe").length;
    if (conn.no === 2) asked.push(Date.now());
    if (conn.no === 1) send([ack(op), quote("AAPL", 100, "1.00"), quote("MSFT", 50, "5.00")]);
    else if (subs <= 2) send([unknownAck(op)]);
    else send([ack(op), quote("AAPL", 120, "1.20"), quote("MSFT", 60, "6.00")]);
  });
  state.scripted.push(loading);
  const l = await openPage("loading", widgetTag, `  <quote-ticker id="ld" url="${loading.ws}" symbols="AAPL,MSFT"></quote-ticker>`, "ld");
  await waitFor("the loading gateway's first quotes", async () => {
    const v = await l.view();
    return { ok: v.state === "live" && v.quotes.AAPL && v.quotes.AAPL.seq === 100 && v.quotes.AAPL.status === "live", detail: v };
  });
  loading.drop();
  const unavailable = await waitFor("the rows shown before marked unavailable after the restarted gateway answered unknown_symbol", async () => {
    const v = await l.view();
    const q = v.quotes;
    return { ok: ["AAPL", "MSFT"].every((s) => q[s] && q[s].status === "unavailable") && q.AAPL.bid === "1.00" && v.rejected.length === 0 && v.state === "live", v, detail: v };
  });
  if (/^live$/i.test(unavailable.v.connText.trim())) fail(`every row unavailable, yet the connection part says "${unavailable.v.connText}"`);
  await waitFor("the restarted gateway's quotes, once it knows the symbols", async () => {
    const v = await l.view();
    return { ok: v.state === "live" && v.quotes.AAPL && v.quotes.AAPL.seq === 120 && v.quotes.AAPL.status === "live" && v.quotes.MSFT.status === "live", detail: v };
  });
  if (loading.connections.length !== 2) fail(`the widget opened ${loading.connections.length} sockets to the loading gateway, want 2 (it asks again on the same socket)`);
  const ag = gaps(asked);
  if (asked.length !== 3 || ag[0] < 480 || ag[1] < 980) fail(`the restarted gateway was asked at gaps ${JSON.stringify(ag)} ms (${asked.length} subscribes), want 3 subscribes, at least 500 then 1000 ms apart (a growing backoff)`);
  await l.page.close();
  ok(`a restarted gateway answering unknown_symbol (loading): the rows shown before say "unavailable" (status, last values ${unavailable.v.quotes.AAPL.bid} kept, not listed as rejected), the widget asks again on the same socket (gaps ${ag.join(", ")} ms) and shows the gateway's quotes once it knows them`);

  // 7. Two URLs; the second knows no symbol: it counts as failed, back to the first.
  const p1 = await scriptedGateway((op, send, conn) => {
    if (op.op === "subscribe") send([ack(op), quote("AAPL", 100 + conn.no, "1.00"), quote("MSFT", 50 + conn.no, "5.00")]);
  });
  const q1 = await scriptedGateway((op, send) => {
    if (op.op === "subscribe") send([unknownAck(op)]);
  });
  state.scripted.push(p1, q1);
  const u = await openPage("unknown-failover", widgetTag, `  <quote-ticker id="uf" url="${p1.ws} ${q1.ws}" symbols="AAPL,MSFT"></quote-ticker>`, "uf");
  await waitFor("the element live on P", async () => {
    const v = await u.view();
    return { ok: v.state === "live" && v.info.urlIndex === 0 && v.quotes.AAPL && v.quotes.AAPL.seq === 101, detail: v };
  });
  p1.drop();
  const back = await waitFor("the element to leave Q (every symbol unknown) and be live on P again", async () => {
    const v = await u.view();
    return { ok: q1.connections.length >= 1 && p1.connections.length >= 2 && v.state === "live" && v.info.urlIndex === 0 && v.quotes.AAPL.seq === 102 && v.quotes.AAPL.status === "live", v, detail: { v, q: q1.connections.length, p: p1.connections.length } };
  });
  const marked = await u.page.evaluate(() => window.__fo.status.filter((x) => x.id === "uf" && x.status === "unavailable").map((x) => x.sym));
  if (!marked.includes("AAPL") || !marked.includes("MSFT")) fail(`while Q answered unknown_symbol the rows were not marked unavailable: ${JSON.stringify(marked)}`);
  await u.page.close();
  ok(`two URLs, the second answering unknown_symbol for every symbol: its rows marked unavailable, the element counted it failed and went back to the first (live there, seq ${back.v.quotes.AAPL.seq})`);

  // 8. Tokens: a gateway of a list that refuses the token is failed for that URL only.
  const tickets = (refuse) => ({
    http: (method, reqPath) => {
      if (method === "POST" && reqPath.startsWith("/v1/ticket")) {
        return refuse ? { status: 401, body: { error: { code: "unauthorized", message: "unknown key" } } } : { status: 200, body: { ticket: `tk${Date.now()}` } };
      }
      return { status: 404, body: {} };
    },
    upgrade: (reqPath) => (/[?&]ticket=tk/.test(reqPath) ? undefined : 401),
  });
  const serve = (op, send) => {
    if (op.op === "subscribe") send([ack(op), quote("AAPL", 7, "7.00"), quote("MSFT", 8, "8.00")]);
  };
  const xr = await scriptedGateway(serve, tickets(true));
  const xr2 = await scriptedGateway(serve, tickets(true));
  const yk = await scriptedGateway(serve, tickets(false));
  const wp = await scriptedGateway((op, send, conn) => conn.close(1008, "token revoked"), tickets(false));
  state.scripted.push(xr, xr2, yk, wp);
  embed.tokenCase("f2", (n, { renew }) => (renew ? `renewed${n}` : `tok${n}`));
  const tokenHead = `${tokenScript("/quote-ticker.js", { all: "f2" })}\n${widgetTag}`;
  const tries = [];
  for (const [id, first, what] of [["tk401", xr, "401 to POST /v1/ticket"], ["tk1008", wp, "close 1008"]]) {
    const t = await openPage(`token-${id}`, tokenHead, `  <quote-ticker id="${id}" url="${first.ws} ${yk.ws}" symbols="AAPL,MSFT"></quote-ticker>`, id);
    const v = await waitFor(`the ${id} element live on the second URL after the first refused the token (${what})`, async () => {
      const x = await t.view();
      return { ok: x.state === "live" && x.info.urlIndex === 1 && x.quotes.AAPL && x.quotes.AAPL.seq === 7, x, detail: x };
    });
    tries.push(`${what}: live on the second URL (state ${v.x.state})`);
    await t.page.close();
  }
  const renews = embed.calls("f2").map((c) => c.renew);
  if (!renews.includes(true)) fail(`the token provider was never asked with renew: true: ${JSON.stringify(renews)}`);
  const both = await openPage("token-both", tokenHead, `  <quote-ticker id="tkboth" url="${xr.ws} ${xr2.ws}" symbols="AAPL"></quote-ticker>`, "tkboth");
  const stopped = await waitFor("the element stopped as unauthorized once both URLs refused the token", async () => {
    const x = await both.view();
    return { ok: x.state === "unauthorized" && x.info.retryDelayMs === null, x, detail: x };
  });
  const calls = embed.calls("f2").length;
  await sleep(1500);
  if (embed.calls("f2").length !== calls) fail(`after stopping as unauthorized the element asked the token provider again (${embed.calls("f2").length - calls} call(s))`);
  await both.page.close();
  ok(`a list whose first URL refuses the token (${tries.join("; ")}) goes on to the next; every URL refusing stops it as "${stopped.x.state}" ("${stopped.x.info.closeReason}"), and nothing more is asked`);

  // 9. Backoff per round of the list: three gateways refusing every handshake (503).
  const dead = [];
  for (let i = 0; i < 3; i++) dead.push(await scriptedGateway(() => {}, { upgrade: () => 503 }));
  state.scripted.push(...dead);
  const d = await openPage("dead-three", widgetTag, `  <quote-ticker id="d3" url="${dead.map((g) => g.ws).join(" ")}" symbols="AAPL"></quote-ticker>`, "d3");
  const attempts = await waitFor("nine handshakes to the three refusing gateways (three rounds)", async () => {
    const all = dead.flatMap((g, i) => g.connections.map((c) => ({ t: c.t, i }))).sort((a, b) => a.t - b.t);
    return { ok: all.length >= 9, all, detail: all.length };
  });
  await d.page.close();
  const seq = attempts.all.slice(0, 9);
  const g = gaps(seq.map((a) => a.t));
  const order = seq.map((a) => a.i).join("");
  const bad = [];
  if (order !== "012012012") bad.push(`order ${order}, want 012012012`);
  // Upper bounds with slack for the refused handshake itself and late timers (a loaded machine),
  // yet below what a backoff per attempt gives: its third gap of round 2 is at least 1000 ms, its
  // gaps of round 3 at least 2000 ms.
  g.forEach((gap, k) => {
    const [lo, hi, slack] = k < 2 ? [0, 1000, 500] : k < 5 ? [250, 500, 450] : [500, 1000, 900];
    if (gap < lo - 20 || gap > hi + slack) bad.push(`gap ${k + 1} ${gap} ms, want [${lo}, ${hi}] (+${slack} slack)`);
  });
  if (bad.length) fail(`three refusing gateways: handshakes at gaps ${JSON.stringify(g)} ms: ${bad.join("; ")} (the first try of each URL within 1 s, then 500 ms·2^n per full round, equal jitter)`);
  ok(`three URLs refusing every handshake (503): tried in order, gaps ${g.join(", ")} ms: the first of each URL within 1 s, then the backoff grows per full round of the list`);

  // 10. A gateway that accepts, answers and drops at once: real backoff, not a reset per answer.
  const flap = await scriptedGateway((op, send, conn) => {
    if (op.op !== "subscribe") return;
    send([ack(op), quote("AAPL", 10 + conn.no, "1.00")]);
    setTimeout(() => conn.close(1011, "flap"), 100);
  });
  state.scripted.push(flap);
  const f = await openPage("flapping", widgetTag, `  <quote-ticker id="fl" url="${flap.ws}" symbols="AAPL"></quote-ticker>`, "fl");
  const flaps = await waitFor("five sockets to the flapping gateway", async () => ({ ok: flap.connections.length >= 5, detail: flap.connections.length }), 30_000);
  await f.page.close();
  const fg = gaps(flap.connections.slice(0, 5).map((c) => c.t));
  const slow = fg.map((gap, k) => gap >= 250 * 2 ** k - 20);
  if (!slow.every(Boolean)) fail(`a gateway dropping every socket at once was reconnected to at gaps ${JSON.stringify(fg)} ms, want at least 250, 500, 1000, 2000 (the backoff must not restart on its answers)`);
  ok(`a gateway that accepts, answers and drops the socket at once: reconnects at gaps ${fg.join(", ")} ms (the backoff grows; ${flaps.detail ?? flap.connections.length} sockets)`);

  // 11. url="E X", X serving other symbols only (unknown_symbol for everything): E dies and refuses
  // connects for a while. A refused connect is no unknown_symbol answer: the element must not
  // settle on X (it knows nothing of the page), but keep trying E and be live there once E is back.
  let eDown = false;
  let eLoading = false;
  const eSockets = new Set();
  const e = await scriptedGateway((op, send, conn) => {
    eSockets.add(conn);
    if (op.op !== "subscribe") return;
    if (eLoading) send([unknownAck(op)]);
    else send([ack(op), quote("AAPL", 200 + conn.no, "2.00"), quote("MSFT", 300 + conn.no, "3.00")]);
  }, { upgrade: () => (eDown ? 503 : undefined) });
  const x = await scriptedGateway((op, send) => {
    if (op.op === "subscribe") send([unknownAck(op)]);
  });
  state.scripted.push(e, x);
  const ex = await openPage("other-market", widgetTag, `  <quote-ticker id="ox" url="${e.ws} ${x.ws}" symbols="AAPL,MSFT"></quote-ticker>`, "ox");
  await waitFor("the element live on E", async () => {
    const v = await ex.view();
    return { ok: v.state === "live" && v.info.urlIndex === 0 && v.quotes.AAPL && v.quotes.AAPL.seq === 201 && v.info.closeCode === null, detail: v };
  });
  eDown = true;
  e.drop();
  // X answered unknown_symbol twice, with a refused connect to E in between.
  await waitFor("X asked twice, E refused in between", async () => {
    const xs = x.connections.length;
    const refused = e.connections.filter((c) => c.refused).length;
    return { ok: xs >= 2 && refused >= 1, detail: { xs, refused } };
  }, 15_000);
  eDown = false;
  const upAt = Date.now();
  const eBack = await waitFor("the element to try E again once it is back, and be live there (not settled on X)", async () => {
    const v = await ex.view();
    return { ok: v.state === "live" && v.info.urlIndex === 0 && v.quotes.AAPL.status === "live" && v.quotes.AAPL.seq > 201, v, detail: { v, e: e.connections.length, x: x.connections.length } };
  }, 20_000);
  if (eBack.v.info.closeCode !== null || eBack.v.info.closeReason !== null) fail(`live again, yet connectionInfo keeps the old failure: closeCode ${eBack.v.info.closeCode}, closeReason ${JSON.stringify(eBack.v.info.closeReason)}`);
  const eRefused = e.connections.filter((c) => c.refused).length;
  const xSockets = x.connections.length;
  ok(`url="E X", X knowing none of the symbols: E refused connects (${eRefused} refused), the element did not settle on X (${xSockets} sockets) and was live on E ${Date.now() - upAt} ms after it was back; connectionInfo.closeCode null once live`);

  // 12. Every URL of the list answers unknown_symbol (E restarted with 1012 and loading, X another
  // market): the element may stay on X, but only for the round backoff; it tries E again and is
  // live there once E knows the symbols.
  eLoading = true;
  for (const c of eSockets) c.close(1012, "restart");
  eSockets.clear();
  await waitFor("the element on X after E and X both answered unknown_symbol", async () => {
    const v = await ex.view();
    return { ok: v.info.urlIndex === 1 && v.state === "live" && x.connections.length > xSockets, detail: { v, x: x.connections.length } };
  }, 15_000);
  eLoading = false;
  const loadedAt = Date.now();
  await waitFor("the element to leave X for E (loaded now) and be live there", async () => {
    const v = await ex.view();
    return { ok: v.state === "live" && v.info.urlIndex === 0 && v.quotes.AAPL.status === "live", detail: { v, e: e.connections.length, x: x.connections.length } };
  }, 20_000);
  await ex.page.close();
  ok(`url="E X", E loading and X another market (both unknown_symbol): the element did not settle on X; live on E again ${Date.now() - loadedAt} ms after E knew the symbols`);
}

async function cleanup(state) {
  await stopAll({ context: state.context, gateways: state.gateways, servers: [state.embed, ...state.scripted] });
  killGroup(state.nats);
  removeDirs([...state.tmpDirs, state.userDataDir]);
}

const state = { gateways: [], tmpDirs: [], scripted: [] };
let exitCode = 0;
const watchdog = startWatchdog({
  what: "failover",
  timeoutMs: OVERALL_TIMEOUT_MS,
  gateways: state.gateways,
  tailLines: 25,
  onTimeout: () => killGroup(state.nats),
  onSignal: () => killGroup(state.nats),
});
try {
  const bin = resolveBin();
  const { chromium } = loadPlaywright();
  await main(state, bin, chromium);
  log(`failover: all ${passedCount()} checks passed`);
} catch (e) {
  exitCode = 1;
  log(`FAIL: ${describeError(e)}`);
  for (const g of state.gateways) log(g.report(15));
} finally {
  await cleanup(state);
  clearTimeout(watchdog);
}
process.exit(exitCode);
