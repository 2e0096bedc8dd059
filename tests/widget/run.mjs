#!/usr/bin/env node
// Browser test of the <quote-ticker> widget and the pages the gateway serves, in real headless
// Chromium (Debian's) driven by playwright-core, against a real gateway process.
//
//   QUOTEGW_BIN=target/release/quotegw QUOTEGW_CONFIG=tests/widget/gateway.toml \
//   SCREENSHOT_DIR=target/widget-screenshots node tests/widget/run.mjs
//
// Defaults: QUOTEGW_BIN = target/release/quotegw or target/debug/quotegw (whichever exists),
// QUOTEGW_CONFIG = tests/widget/gateway.toml, SCREENSHOT_DIR = target/widget-screenshots.
// Installs what is missing first (tests/widget/ensure-browser.sh), then runs every check under one
// overall timeout; the gateway and the browser are always stopped, on failure too. Exit 0 only when
// every check passed. No check measures speed: every wait is a bounded poll for a condition.

import { spawn, spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const OVERALL_TIMEOUT_MS = 120_000;
const READY_TIMEOUT_MS = 20_000;
const STEP_TIMEOUT_MS = 15_000;
// After a restart the widget waits out its backoff (capped at 30 s, but a gateway that is down for a
// second or two is retried within a few seconds).
const RECONNECT_TIMEOUT_MS = 40_000;
const POLL_MS = 100;

const XSS_SYMBOL = "<img src=x onerror=window.__xss=1>";
// Symbols of the demo page's grid whose displayed values are checked against the gateway's quotes.
const CHECKED_SYMBOLS = ["AAPL", "MSFT", "NVDA", "JPM"];
const PRICE_FIELDS = ["bid", "ask", "last"];

class TestFailure extends Error {}

function fail(message) {
  throw new TestFailure(message);
}

function log(line) {
  process.stdout.write(`${line}\n`);
}

let passed = 0;
function ok(what) {
  passed++;
  log(`ok ${passed} - ${what}`);
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `probe` until it returns a truthy value; fails with `what` (and the last value) at the deadline. */
async function waitFor(what, probe, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last && last.ok !== false) return last;
    if (Date.now() > deadline) {
      const detail = last && last.detail !== undefined ? `; last seen: ${JSON.stringify(last.detail)}` : "";
      fail(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await sleep(POLL_MS);
  }
}

/** Exact comparison of decimal strings, written independently of the widget's comparator. */
function decimalCmp(a, b) {
  const split = (s) => {
    const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(s);
    if (!m) fail(`not a decimal string: ${JSON.stringify(s)}`);
    return { neg: m[1] === "-", int: m[2], frac: m[3] || "" };
  };
  const x = split(a);
  const y = split(b);
  const scale = Math.max(x.frac.length, y.frac.length);
  const big = (d) => (d.neg ? -1n : 1n) * BigInt(d.int + d.frac.padEnd(scale, "0"));
  const bx = big(x);
  const by = big(y);
  return bx < by ? -1 : bx > by ? 1 : 0;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------

class Gateway {
  constructor(bin, config, port) {
    this.bin = bin;
    this.config = config;
    this.port = port;
    this.proc = null;
    this.output = [];
  }

  get base() {
    return `http://127.0.0.1:${this.port}`;
  }

  start() {
    // Its own process group, so that stopping it also stops anything it started.
    const proc = spawn(this.bin, ["--config", this.config, "--listen", `127.0.0.1:${this.port}`], {
      detached: true,
      cwd: ROOT, // the config's replay path is relative to the repository root
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.proc = proc;
    proc.exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
    proc.on("error", (e) => this.output.push(`spawn error: ${e.message}`));
    for (const stream of [proc.stdout, proc.stderr]) {
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        for (const line of chunk.split("\n")) if (line) this.output.push(line);
        if (this.output.length > 200) this.output.splice(0, this.output.length - 200);
      });
    }
  }

  /** Starts it and waits for GET /readyz = 200; a start that fails to bind (port still held) is retried. */
  async startReady() {
    for (let attempt = 1; ; attempt++) {
      this.start();
      const proc = this.proc;
      let exited = null;
      proc.exited.then((e) => (exited = e));
      const deadline = Date.now() + READY_TIMEOUT_MS;
      while (Date.now() < deadline && !exited) {
        try {
          const res = await fetch(`${this.base}/readyz`, { signal: AbortSignal.timeout(1000) });
          if (res.status === 200) return;
        } catch {
          // not listening yet
        }
        await sleep(POLL_MS);
      }
      if (!exited) fail(`gateway not ready (GET /readyz != 200) within ${READY_TIMEOUT_MS} ms`);
      if (attempt >= 5) fail(`gateway exited during start-up (${JSON.stringify(exited)}) ${attempt} times`);
      await sleep(500);
    }
  }

  /** Stops the gateway's process group and waits (bounded) for it to be gone. */
  async stop(signal = "SIGKILL") {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    try {
      process.kill(-proc.pid, signal);
    } catch {
      try {
        proc.kill(signal);
      } catch {
        // already gone
      }
    }
    await Promise.race([proc.exited, sleep(5000)]);
  }

  /** For the watchdog: no awaiting. */
  stopNow() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    try {
      process.kill(-proc.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }

  tail(n = 40) {
    return this.output.slice(-n).join("\n");
  }
}

// ---------------------------------------------------------------------------------------------
// In-page helpers, installed before any page script runs. They only read what the widgets show and
// keep an independent reference view of the gateway's quotes over a separate WebSocket.

function pageHelpers() {
  window.__qtTest = {
    /** Every <quote-ticker> on the page: its state and what its cells show. */
    read() {
      const out = {};
      document.querySelectorAll("quote-ticker").forEach((w, i) => {
        const r = w.shadowRoot;
        const rejectedBox = r && r.querySelector("[part=rejected]");
        const d = {
          state: w.connectionState,
          connText: (r && r.querySelector("[part=connection]")?.textContent) || "",
          rejectedText: rejectedBox && !rejectedBox.hidden ? rejectedBox.textContent : "",
          quotes: {},
        };
        if (r) {
          for (const c of r.querySelectorAll("[data-symbol][data-field]")) {
            if (c.closest("[hidden]")) continue; // not on screen
            const q = (d.quotes[c.dataset.symbol] ??= {});
            q[c.dataset.field] = { text: c.textContent, value: c.dataset.value ?? null };
          }
        }
        out[w.id || `#${i}`] = d;
      });
      return out;
    },

    /** Records each value change of a price cell with the flash direction the widget chose. */
    watchFlashes() {
      const seen = (this.flashes = []);
      const observer = new MutationObserver((records) => {
        for (const rec of records) {
          const t = rec.target;
          if (rec.attributeName !== "data-value" || !t.dataset.field) continue;
          seen.push({
            symbol: t.dataset.symbol,
            field: t.dataset.field,
            before: rec.oldValue,
            after: t.dataset.value,
            dir: t.dataset.dir || null,
            flash: t.dataset.flash || null,
          });
        }
      });
      for (const w of document.querySelectorAll("quote-ticker")) {
        observer.observe(w.shadowRoot, {
          subtree: true,
          attributes: true,
          attributeOldValue: true,
          attributeFilter: ["data-value"],
        });
      }
      this.flashObserver = observer;
    },

    /** A reference client: its own socket, applying snapshot + updates by seq, as the protocol says. */
    openReference(url, symbols) {
      if (this.ref && this.ref.ws) this.ref.ws.close();
      const ref = (this.ref = { ws: new WebSocket(url), quotes: {}, acked: false, errors: [] });
      ref.ws.onopen = () => ref.ws.send(JSON.stringify({ op: "subscribe", id: "reference", symbols }));
      ref.ws.onmessage = (ev) => {
        for (const m of JSON.parse(ev.data)) {
          if (m.type === "ack" && m.id === "reference") ref.acked = true;
          else if (m.type === "snapshot") ref.quotes[m.symbol] = { ...m };
          else if (m.type === "update") {
            const q = ref.quotes[m.symbol];
            if (!q) ref.errors.push(`update before snapshot for ${m.symbol}`);
            else if (!(m.seq > q.seq)) ref.errors.push(`seq ${m.seq} after ${q.seq} for ${m.symbol}`);
            else Object.assign(q, m, { type: "snapshot" });
          } else if (m.type === "status" && ref.quotes[m.symbol]) ref.quotes[m.symbol].status = m.status;
        }
      };
    },

    referenceReady(symbols) {
      const ref = this.ref;
      return !!ref && ref.acked && symbols.every((s) => ref.quotes[s]);
    },

    /** Compares, in one synchronous read after a frame, what a widget shows with the reference. */
    async compare(widgetId, symbols, priceFields) {
      await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
      const shown = this.read()[widgetId].quotes;
      const result = {};
      for (const s of symbols) {
        const q = this.ref.quotes[s];
        const d = shown[s];
        const diffs = [];
        if (!q || !d) diffs.push("missing");
        else {
          for (const f of priceFields) {
            const want = q[f] === null || q[f] === undefined ? "—" : q[f];
            if (d[f].text !== want) diffs.push(`${f}: shown ${d[f].text} != gateway ${want}`);
          }
          if (d.volume && d.volume.value !== String(q.volume ?? "")) {
            diffs.push(`volume: shown ${d.volume.value} != gateway ${q.volume}`);
          }
          if (d.status && d.status.text !== q.status) diffs.push(`status: shown ${d.status.text} != gateway ${q.status}`);
        }
        result[s] = diffs;
      }
      return { result, errors: this.ref.errors };
    },

    shadowImgCount() {
      let n = document.querySelectorAll("img").length;
      for (const w of document.querySelectorAll("*")) if (w.shadowRoot) n += w.shadowRoot.querySelectorAll("img").length;
      return n;
    },
  };
}

// ---------------------------------------------------------------------------------------------

function resolveInputs() {
  const candidates = [process.env.QUOTEGW_BIN, "target/release/quotegw", "target/debug/quotegw"].filter(Boolean);
  const bin = candidates.map((c) => path.resolve(ROOT, c)).find((c) => fs.existsSync(c));
  if (!bin) fail(`no gateway binary: set QUOTEGW_BIN (tried ${candidates.join(", ")})`);
  const config = path.resolve(ROOT, process.env.QUOTEGW_CONFIG || "tests/widget/gateway.toml");
  if (!fs.existsSync(config)) fail(`no gateway config at ${config} (QUOTEGW_CONFIG)`);
  const shots = path.resolve(ROOT, process.env.SCREENSHOT_DIR || "target/widget-screenshots");
  return { bin, config, shots };
}

function loadPlaywright() {
  const ensure = path.join(ROOT, "tests/widget/ensure-browser.sh");
  const r = spawnSync("bash", [ensure], { stdio: ["ignore", "pipe", "inherit"], encoding: "utf8", timeout: 900_000 });
  if (r.status !== 0) fail(`${ensure} failed (exit ${r.status}${r.signal ? `, ${r.signal}` : ""})`);
  const nodeDir = r.stdout.trim().split("\n").pop();
  const require = createRequire(path.join(nodeDir, "package.json"));
  return require("playwright-core");
}

async function main(state, { bin, config, shots }, chromium) {

  const port = await freePort();
  const gw = (state.gateway = new Gateway(bin, config, port));
  await gw.startReady();
  ok(`gateway ready on ${gw.base} (${path.relative(ROOT, bin) || bin}, ${path.relative(ROOT, config)})`);

  state.userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "quotegw-widget-chromium-"));
  const context = (state.context = await chromium.launchPersistentContext(state.userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    timeout: 30_000,
    viewport: { width: 1280, height: 900 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  }));
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  await context.addInitScript(pageHelpers);

  const page = context.pages()[0] || (await context.newPage());
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // Every WebSocket the page opens, and the ops each one sent.
  const sockets = [];
  page.on("websocket", (ws) => {
    const s = { url: ws.url(), sent: [], closed: false };
    sockets.push(s);
    ws.on("framesent", (f) => {
      try {
        s.sent.push(JSON.parse(f.payload));
      } catch {
        s.sent.push({ raw: String(f.payload) });
      }
    });
    ws.on("close", () => (s.closed = true));
  });
  const isReference = (s) => s.sent.some((op) => op.id === "reference");
  const widgetSockets = () => sockets.filter((s) => !isReference(s));
  const read = () => page.evaluate(() => window.__qtTest.read());
  const wsUrl = `ws://127.0.0.1:${port}/ws`;

  // 1. The demo page, from the gateway itself.
  for (const [route, type, file] of [
    ["/", "text/html", "web/index.html"],
    ["/widget/quote-ticker.js", "javascript", "web/quote-ticker.js"],
    ["/examples/trading.html", "text/html", "web/examples/trading.html"],
  ]) {
    const r = await fetch(`${gw.base}${route}`, { signal: AbortSignal.timeout(5000) });
    const got = r.headers.get("content-type") || "";
    if (r.status !== 200) fail(`GET ${route} returned ${r.status}: the gateway does not serve ${file}`);
    if (!got.includes(type)) fail(`GET ${route} has content-type ${JSON.stringify(got)}, want ${type} (a module script needs a JavaScript type)`);
  }
  const res = await page.goto(`${gw.base}/`, { waitUntil: "load" });
  if (!res || res.status() !== 200) fail(`GET / returned ${res ? res.status() : "nothing"}, want 200`);
  await waitFor("the quote-ticker element to be defined", () =>
    page.evaluate(() => !!customElements.get("quote-ticker")),
  );
  const ids = await page.evaluate(() => [...document.querySelectorAll("quote-ticker")].map((w) => w.id));
  for (const id of ["demo-tape", "demo-grid"]) if (!ids.includes(id)) fail(`demo page has no #${id} widget (has ${ids})`);
  ok(`demo page served at / with ${ids.length} widgets (${ids.join(", ")})`);

  // 2. Prices appear in every widget, and every widget says it is live.
  const decimal = /^-?\d+(\.\d+)?$/;
  const allPricesShown = (view) => {
    const missing = [];
    for (const [id, w] of Object.entries(view)) {
      if (w.state !== "live") missing.push(`${id}: state ${w.state}`);
      if (Object.keys(w.quotes).length === 0) missing.push(`${id}: no cells`);
      for (const [sym, q] of Object.entries(w.quotes)) {
        for (const f of PRICE_FIELDS) if (q[f] && !decimal.test(q[f].text)) missing.push(`${id} ${sym} ${f}=${q[f].text}`);
      }
    }
    return missing;
  };
  await waitFor("prices in every widget and state live", async () => {
    const missing = allPricesShown(await read());
    return { ok: missing.length === 0, detail: missing.slice(0, 6) };
  });
  const liveText = (await read())["demo-grid"].connText;
  if (!/live/i.test(liveText)) fail(`connection indicator says ${JSON.stringify(liveText)}, want "Live"`);
  ok("prices appear in every widget, each a decimal string; connection state live");

  // 3. Several widgets, one WebSocket.
  await sleep(300);
  if (sockets.length !== 1) fail(`the demo page opened ${sockets.length} WebSockets for ${ids.length} widgets, want 1`);
  if (sockets[0].url !== wsUrl) fail(`the widget connected to ${sockets[0].url}, want ${wsUrl} (derived from the script's URL)`);
  const subscribed = new Set(sockets[0].sent.filter((o) => o.op === "subscribe").flatMap((o) => o.symbols));
  if (subscribed.size !== 12) fail(`the shared socket subscribed ${[...subscribed]}, want the 12 demo symbols once each`);
  ok(`${ids.length} widgets share one WebSocket (${wsUrl}) that subscribed each of ${subscribed.size} symbols`);

  // 4. Prices change, and each flash direction agrees with an exact decimal comparison.
  await page.evaluate(() => window.__qtTest.watchFlashes());
  const flashes = await waitFor("price changes with up/down flashes", async () => {
    const seen = await page.evaluate(() => window.__qtTest.flashes);
    const moves = seen.filter((f) => PRICE_FIELDS.includes(f.field) && decimal.test(f.before || "") && decimal.test(f.after || ""));
    const directional = moves.filter((f) => decimalCmp(f.after, f.before) !== 0);
    return { ok: directional.length >= 5, moves: directional, detail: `${directional.length} directional moves` };
  });
  for (const f of flashes.moves) {
    const want = decimalCmp(f.after, f.before) > 0 ? "up" : "down";
    if (f.dir !== want || !f.flash || !f.flash.startsWith(want)) {
      fail(`${f.symbol} ${f.field} went ${f.before} -> ${f.after} but the widget flashed ${f.flash} (dir ${f.dir}), want ${want}`);
    }
  }
  ok(`prices change; ${flashes.moves.length} moves flashed in the right direction (exact decimal comparison)`);

  // 5. What is shown equals the gateway's quote, by an independent client on its own socket.
  const compareWithGateway = async (label) => {
    await page.evaluate(([u, s]) => window.__qtTest.openReference(u, s), [wsUrl, CHECKED_SYMBOLS]);
    await waitFor("the reference socket's snapshots", () =>
      page.evaluate((s) => window.__qtTest.referenceReady(s), CHECKED_SYMBOLS),
    );
    const matched = new Set();
    let last = null;
    // The feed is live, so two sockets can be a tick apart at any instant: retry until every checked
    // symbol has been seen equal at least once, within a bounded number of reads.
    for (let attempt = 0; attempt < 150 && matched.size < CHECKED_SYMBOLS.length; attempt++) {
      last = await page.evaluate(
        ([s, f]) => window.__qtTest.compare("demo-grid", s, f),
        [CHECKED_SYMBOLS, PRICE_FIELDS],
      );
      if (last.errors.length) fail(`reference client saw a protocol violation: ${last.errors[0]}`);
      for (const [sym, diffs] of Object.entries(last.result)) if (diffs.length === 0) matched.add(sym);
      if (matched.size < CHECKED_SYMBOLS.length) await sleep(POLL_MS);
    }
    if (matched.size < CHECKED_SYMBOLS.length) {
      fail(`${label}: displayed quotes never equalled the gateway's for ${CHECKED_SYMBOLS.filter((s) => !matched.has(s))}: ${JSON.stringify(last.result)}`);
    }
    await page.evaluate(() => window.__qtTest.ref.ws.close());
  };
  await compareWithGateway("before restart");
  ok(`displayed bid/ask/last/volume/status equal the gateway's quotes for ${CHECKED_SYMBOLS.join(", ")}`);

  // 6. A hostile symbol is text, runs nothing, and opens no extra socket.
  const socketsBefore = widgetSockets().length;
  await page.evaluate((symbol) => {
    for (const layout of ["grid", "tape"]) {
      const w = document.createElement("quote-ticker");
      w.id = `xss-${layout}`;
      w.setAttribute("layout", layout);
      w.setAttribute("symbols", `AAPL,${symbol}`);
      document.querySelector("main").append(w);
    }
  }, XSS_SYMBOL);
  await waitFor("the hostile symbol in the rejected list of both new widgets", async () => {
    const v = await read();
    const texts = ["xss-grid", "xss-tape"].map((id) => v[id] && v[id].rejectedText);
    return { ok: texts.every((t) => t && t.toLowerCase().includes(XSS_SYMBOL.toLowerCase())), detail: texts };
  });
  await sleep(500);
  const xss = await page.evaluate(() => ({ flag: window.__xss, imgs: window.__qtTest.shadowImgCount() }));
  if (xss.flag !== undefined) fail(`the symbol ${XSS_SYMBOL} ran script (window.__xss = ${xss.flag})`);
  if (xss.imgs !== 0) fail(`the symbol ${XSS_SYMBOL} became markup: ${xss.imgs} <img> element(s) on the page`);
  const rejected = await page.evaluate(() => document.getElementById("xss-grid").rejectedSymbols);
  if (rejected.length !== 1 || rejected[0].code !== "unknown_symbol") fail(`rejectedSymbols = ${JSON.stringify(rejected)}, want one unknown_symbol`);
  const xssView = (await read())["xss-grid"];
  if (!xssView.quotes.AAPL || !decimal.test(xssView.quotes.AAPL.last.text)) fail("the valid symbol next to the hostile one shows no price");
  if (widgetSockets().length !== socketsBefore) fail("adding widgets opened another WebSocket");
  await page.evaluate(() => ["xss-grid", "xss-tape"].forEach((id) => document.getElementById(id).remove()));
  ok(`symbol ${XSS_SYMBOL} is listed as rejected text in both layouts; no script ran, no <img>, no new socket`);

  // 7. Stop the gateway: the widgets say so. Start it again on the same port: they resume.
  const before = (await read())["demo-grid"].quotes;
  await gw.stop("SIGKILL");
  await waitFor("every widget to show the reconnecting state", async () => {
    const v = await read();
    const states = Object.entries(v).map(([id, w]) => `${id}:${w.state}:${w.connText}`);
    return { ok: Object.values(v).every((w) => w.state === "reconnecting" && /reconnecting/i.test(w.connText)), detail: states };
  });
  ok("gateway killed: every widget shows reconnecting");
  await gw.startReady();
  await waitFor(
    "every widget to be live again",
    async () => {
      const v = await read();
      return { ok: Object.values(v).every((w) => w.state === "live"), detail: Object.entries(v).map(([id, w]) => `${id}:${w.state}`) };
    },
    RECONNECT_TIMEOUT_MS,
  );
  const resumedAt = (await read())["demo-grid"].quotes;
  await waitFor("prices to change after the restart", async () => {
    const now = (await read())["demo-grid"].quotes;
    const changed = Object.keys(now).filter((s) => PRICE_FIELDS.some((f) => now[s][f].text !== resumedAt[s][f].text));
    return { ok: changed.length > 0, detail: `unchanged since resume; before the kill: ${JSON.stringify(before.AAPL)}` };
  });
  const afterRestart = widgetSockets();
  const resub = afterRestart.filter((s) => s.sent.length > 0).pop().sent.filter((o) => o.op === "subscribe").flatMap((o) => o.symbols);
  if (new Set(resub).size !== 12) fail(`after reconnecting the widget subscribed ${resub}, want the 12 demo symbols`);
  const open = afterRestart.filter((s) => !s.closed && s.sent.length > 0);
  if (open.length !== 1) fail(`after the restart ${open.length} widget sockets are open, want 1`);
  await compareWithGateway("after restart");
  ok("gateway restarted on the same port: widgets resubscribed on one socket, are live, prices change and equal the gateway's");

  // 8. The screenshot, of the healthy demo page.
  fs.mkdirSync(shots, { recursive: true });
  const demoPng = path.join(shots, "demo.png");
  await page.screenshot({ path: demoPng, fullPage: true });
  log(`screenshot: ${demoPng}`);
  ok("screenshot of the demo page saved");

  // 9. Reference counting: a symbol is unsubscribed only when the last widget showing it goes away.
  const live = open[0];
  const unsubs = () => live.sent.filter((o) => o.op === "unsubscribe").flatMap((o) => o.symbols);
  await page.evaluate(() => document.getElementById("demo-dark").remove());
  await sleep(500);
  if (unsubs().length) fail(`removing a widget whose symbols the tape still shows sent unsubscribe ${unsubs()}`);
  await page.evaluate(() => document.getElementById("demo-tape").remove());
  const gone = await waitFor("an unsubscribe for the symbols no widget shows any more", () => {
    const u = unsubs();
    return { ok: u.length > 0, u, detail: u };
  });
  const want = ["JNJ", "V", "WMT", "XOM"];
  if (JSON.stringify([...gone.u].sort()) !== JSON.stringify(want)) fail(`unsubscribed ${[...gone.u].sort()}, want ${want}`);
  await page.evaluate(() => document.getElementById("demo-grid").remove());
  await waitFor("the shared socket to close when the last widget goes", () => live.closed);
  ok("symbols are refcounted: unsubscribed when their last widget goes; the socket closes with the last widget");

  // 10. The trading example: its widgets share a socket, and a click on the watchlist drives the ticket.
  const trading = await context.newPage();
  trading.on("pageerror", (e) => pageErrors.push(`trading: ${e}`));
  let tradingSockets = 0;
  trading.on("websocket", () => tradingSockets++);
  const tres = await trading.goto(`${gw.base}/examples/trading.html`, { waitUntil: "load" });
  if (!tres || tres.status() !== 200) fail(`GET /examples/trading.html returned ${tres ? tres.status() : "nothing"}`);
  const readTrading = () => trading.evaluate(() => window.__qtTest.read());
  await waitFor("prices on the trading page", async () => {
    const missing = allPricesShown(await readTrading());
    return { ok: missing.length === 0, detail: missing.slice(0, 6) };
  });
  await trading.locator('#watchlist tr[data-symbol="MSFT"]').click();
  await waitFor("the order ticket to show MSFT", async () => {
    const t = (await readTrading())["ticket-quote"].quotes;
    return { ok: !!t.MSFT && decimal.test(t.MSFT.bid.text) && Object.keys(t).length === 1, detail: Object.keys(t) };
  });
  await trading.click("#submit");
  const blotter = await trading.locator("#blotter li").first().textContent();
  if (!/BUY 100 MSFT/.test(blotter)) fail(`blotter shows ${JSON.stringify(blotter)}, want a BUY 100 MSFT line`);
  if (tradingSockets !== 1) fail(`the trading page opened ${tradingSockets} WebSockets, want 1`);
  const tradingPng = path.join(shots, "trading.png");
  await trading.screenshot({ path: tradingPng, fullPage: true });
  log(`screenshot: ${tradingPng}`);
  ok("trading example: live watchlist, tape and ticket on one socket; a watchlist click loads the ticket");

  // 11. Protocol cases the live feed does not produce on demand, from a scripted server (Playwright
  //     answers the widget's WebSocket itself): statuses, nulls, stale seqs, an update before its
  //     snapshot, and prices whose order differs from their string order.
  const mock = await context.newPage();
  mock.on("pageerror", (e) => pageErrors.push(`scripted: ${e}`));
  const mockOps = [];
  await mock.routeWebSocket("ws://scripted.quotegw.test/ws", (ws) => {
    ws.onMessage((text) => {
      const op = JSON.parse(String(text));
      mockOps.push(op);
      if (op.op !== "subscribe") return;
      const send = (...msgs) => ws.send(JSON.stringify(msgs));
      const quote = (symbol, seq, extra) => ({
        type: "snapshot", symbol, seq, ts: 1732200000000, bid: "1.00", ask: "1.01", bid_size: 100, ask_size: 100,
        last: "1.00", last_size: 10, volume: 1000, status: "live", ...extra,
      });
      send(
        { type: "ack", id: op.id, op: "subscribe", symbols: ["HALT", "STALE", "NULLS", "SEQ"], rejected: [{ symbol: "NOPE", code: "unknown_symbol" }] },
        { type: "update", symbol: "SEQ", seq: 5, ts: 1732200000001, bid: "555.55" }, // before its snapshot: ignored
      );
      send(
        quote("HALT", 1, { status: "halted", bid: "10.00" }),
        quote("STALE", 1),
        quote("NULLS", 1, { bid: null, ask: "0.0001", last: null }),
        quote("SEQ", 10, { bid: "9.99", ask: "10.50" }),
      );
      send({ type: "status", symbol: "STALE", status: "stale" });
      // Later, so that 9.99 has been painted first (the widget paints once per animation frame).
      setTimeout(() => {
        send({ type: "update", symbol: "SEQ", seq: 11, ts: 1732200000002, bid: "10.01" }); // up, though "10.01" < "9.99" as strings
        send(
          { type: "update", symbol: "SEQ", seq: 11, ts: 1732200000003, bid: "1.11" }, // repeated seq: ignored
          { type: "update", symbol: "SEQ", seq: 9, ts: 1732200000004, ask: "2.22" }, // older seq: ignored
          // The same value in other digits: shown exactly as sent.
          { type: "update", symbol: "SEQ", seq: 12, ts: 1732200000005, ask: "10.5000", conflated: 3 },
          { type: "pong", id: 99 },
        );
      }, 500);
    });
  });
  await mock.goto(`${gw.base}/healthz`);
  const cmp = await mock.evaluate(async () => {
    const { compareDecimal } = await import("/widget/quote-ticker.js");
    const cases = [
      ["10.01", "9.99", 1], ["9.99", "10.01", -1], ["189.10", "189.1", 0], ["0.0001", "0.001", -1],
      ["-1.5", "-1.25", -1], ["-0", "0", 0], ["007.50", "7.5", 0], ["1e3", "1", null], ["", "1", null],
      ["123456789012345678.000000001", "123456789012345678", 1],
    ];
    return cases.filter(([a, b, want]) => compareDecimal(a, b) !== want).map(([a, b, want]) => `${a} vs ${b}: got ${compareDecimal(a, b)}, want ${want}`);
  });
  if (cmp.length) fail(`compareDecimal is wrong: ${cmp.join("; ")}`);
  await mock.evaluate(() => {
    const w = document.createElement("quote-ticker");
    w.id = "scripted";
    w.setAttribute("url", "ws://scripted.quotegw.test/ws");
    w.setAttribute("fields", "bid,ask,last");
    w.setAttribute("symbols", "halt, stale,NULLS,seq,nope");
    document.body.append(w);
  });
  const scripted = await waitFor("the scripted quotes on screen", async () => {
    const v = (await mock.evaluate(() => window.__qtTest.read())).scripted;
    return { ok: v.quotes.SEQ && v.quotes.SEQ.ask.text === "10.5000" && v.quotes.STALE.status.text === "stale", v, detail: v };
  });
  const s = scripted.v.quotes;
  const expect = [
    ["SEQ bid (update before snapshot, repeated and older seq ignored)", s.SEQ.bid.text, "10.01"],
    ["SEQ ask (exact digits of the latest update)", s.SEQ.ask.text, "10.5000"],
    ["HALT status", s.HALT.status.text, "halted"],
    ["HALT bid", s.HALT.bid.text, "10.00"],
    ["STALE status (from a status message)", s.STALE.status.text, "stale"],
    ["NULLS bid (null price)", s.NULLS.bid.text, "—"],
    ["NULLS ask", s.NULLS.ask.text, "0.0001"],
    ["rejected list", /NOPE \(unknown symbol\)/.test(scripted.v.rejectedText), true],
    ["rejected symbol has no row", s.NOPE === undefined, true],
  ];
  for (const [what, got, want] of expect) if (got !== want) fail(`scripted server: ${what}: shown ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  const seqBid = await mock.evaluate(() => {
    const c = document.getElementById("scripted").shadowRoot.querySelector('[data-symbol="SEQ"][data-field="bid"]');
    return { dir: c.dataset.dir, flash: c.dataset.flash };
  });
  if (seqBid.dir !== "up" || !String(seqBid.flash).startsWith("up")) fail(`9.99 -> 10.01 flashed ${JSON.stringify(seqBid)}, want up`);
  const firstOp = mockOps[0];
  if (!firstOp || firstOp.op !== "subscribe" || JSON.stringify(firstOp.symbols) !== JSON.stringify(["HALT", "STALE", "NULLS", "SEQ", "NOPE"])) {
    fail(`the widget's first op was ${JSON.stringify(firstOp)}, want one subscribe of HALT, STALE, NULLS, SEQ, NOPE (upper-cased, trimmed)`);
  }
  ok("scripted server: halted/stale shown, null price as —, stale seqs and early updates ignored, 9.99 -> 10.01 flashes up, compareDecimal exact");

  if (pageErrors.length) fail(`uncaught errors in the page: ${pageErrors.join(" | ")}`);
  ok("no uncaught errors in any page");
}

// ---------------------------------------------------------------------------------------------

async function cleanup(state) {
  const jobs = [];
  if (state.context) jobs.push(state.context.close().catch(() => {}));
  if (state.gateway) jobs.push(state.gateway.stop("SIGKILL"));
  await Promise.race([Promise.all(jobs), sleep(10_000)]);
  if (state.gateway) state.gateway.stopNow();
  if (state.userDataDir) fs.rmSync(state.userDataDir, { recursive: true, force: true });
}

// Installing (first run on a machine) is not part of the timed test.
let inputs;
let chromium;
try {
  inputs = resolveInputs();
  ({ chromium } = loadPlaywright());
} catch (e) {
  log(`FAIL: ${e instanceof TestFailure ? e.message : e && e.stack ? e.stack : e}`);
  process.exit(1);
}

const state = {};
const watchdog = setTimeout(() => {
  // Playwright kills the browser it launched when this process exits.
  log(`FAIL: the widget test did not finish within ${OVERALL_TIMEOUT_MS / 1000} s`);
  if (state.gateway) {
    state.gateway.stopNow();
    log(`gateway output (last lines):\n${state.gateway.tail()}`);
  }
  if (state.userDataDir) fs.rmSync(state.userDataDir, { recursive: true, force: true });
  process.exit(1);
}, OVERALL_TIMEOUT_MS);
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    if (state.gateway) state.gateway.stopNow();
    process.exit(1);
  });
}

let exitCode = 0;
try {
  await main(state, inputs, chromium);
  log(`widget: all ${passed} checks passed`);
} catch (e) {
  exitCode = 1;
  log(`FAIL: ${e instanceof TestFailure ? e.message : e && e.stack ? e.stack : e}`);
  if (state.gateway) log(`gateway output (last lines):\n${state.gateway.tail()}`);
} finally {
  await cleanup(state);
  clearTimeout(watchdog);
}
process.exit(exitCode);
