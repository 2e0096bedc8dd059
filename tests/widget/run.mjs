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
// overall timeout; the gateways, the page server and the browser are always stopped, on failure
// too. Exit 0 only when every check passed. No check measures speed: every wait is a bounded poll
// for a condition, and what is counted over a window is an upper bound that a slow machine can
// only make easier to meet.
//
// Four gateways run: the open one of QUOTEGW_CONFIG (no allow-list, no auth), a "lossy" one (the
// same config, keeping one trade per symbol and writing at most one frame a second, so that a tape
// gets real trades_lost), a "restricted" one (the same config plus an [access] section:
// allowed_origins = the host pages' origin A, auth = "api_key") and a "jwt" one (auth = "jwt",
// HS256). Their configs are written at run time into a temporary directory, because origin A's port
// is only known then. Host pages on other origins come from tests/widget/embed-server.mjs. The
// trades-and-bars checks (sparklines, <quote-tape>) live in tests/widget/trades-bars.mjs; what this
// test shares with tests/widget/failover.mjs (failing and counting checks, bounded polls, the
// gateway process, Chromium, stopping everything) in tests/widget/toolkit.mjs.
//
// The gateway serves web/ as embedded at build time. A binary older than the files on disk would
// test old files, so the run fails on a mismatch, unless QUOTEGW_WEB_OVERLAY=1 (development only: the
// files on disk are served through tests/widget/overlay.mjs, with the gateway's own headers).

import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";

import { embedPage, startEmbedServer, tokenScript } from "./embed-server.mjs";
import {
  checkPolledSparkline,
  checkSparklines,
  checkTape,
  extrasOf,
  lastSubscribeOf,
  recordRestCalls,
  recordSockets,
} from "./trades-bars.mjs";
import {
  Gateway as GatewayProcess,
  POLL_MS,
  ROOT,
  configure,
  decimalCmp,
  describeError,
  fail,
  freePort,
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

const OVERALL_TIMEOUT_MS = 180_000;
const READY_TIMEOUT_MS = 20_000;
const STEP_TIMEOUT_MS = 15_000;
// After a restart the widget waits out its backoff (capped at 30 s, but a gateway that is down for a
// second or two is retried within a few seconds).
const RECONNECT_TIMEOUT_MS = 40_000;
configure({ stepTimeoutMs: STEP_TIMEOUT_MS });

// The widget's reconnect rules (web/quote-ticker.js), restated to check them: after close 1001 a
// delay uniform in [0, RESTART_JITTER_MS]; after any other loss (a refused handshake included) at
// least min(BACKOFF_BASE_MS·2^n, BACKOFF_MAX_MS) / 2 between attempts n+1 and n+2 (n from 0); a
// 1008 within 10 s of opening, after one fresh token, stops it.
const RESTART_JITTER_MS = 5000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30_000;
// Browsers clamp and round timers, never fire them early by more than this.
const TIMER_SLACK_MS = 5;
// Connections, each with its own 1001 delay, that show the jitter is not a fixed delay.
const JITTER_WIDGETS = 8;
// A refused page is watched until it has made this many attempts (the first and three retries).
const REFUSED_ATTEMPTS = 4;
// After a 1008 stop, the widget must open nothing in this long (its backoff would retry within 0.5 s).
const STOPPED_QUIET_MS = 3000;

// Credentials of the restricted and jwt gateways (test-only values).
const API_KEY = "widget-test-api-key-5f1c2a9e";
const WRONG_KEY = "widget-test-wrong-key-00000000";
// A throttled credential: its tier has no trades ([tiers.throttled] trades is false by default).
const THROTTLED_KEY = "widget-test-throttled-key-7a3d";
const JWT_SECRET = "widget-test-hs256-secret-0123456789abcdef";
// Long-lived credentials no gateway log line may carry (the JWTs minted are added as they are).
const SECRETS = [API_KEY, WRONG_KEY, THROTTLED_KEY, JWT_SECRET];
// A JWT the widget gets first in the expiry checks lives 2..3 s (exp is in whole seconds).
const SHORT_TOKEN_S = 3;
const LONG_TOKEN_S = 3600;

const XSS_SYMBOL = "<img src=x onerror=window.__xss=1>";
// Hostile too, but a symbol by the protocol's rule (no space, quote, backslash or comma): the widget
// sends it, and the gateway echoes it back in `ack.rejected`.
const XSS_SYMBOL_SENT = "<svg/onload=window.__xss=2>";
// Not a symbol either (a non-ASCII letter), but Unicode upper-casing would make it one: "ſ" (long s)
// upper-cases to "S", so "aſpl" would go out as the symbol "ASPL". Only ASCII letters change case.
const UNICODE_NOT_SYMBOL = "aſpl";
// What the gateway serves from web/: (route, content type, file).
const WEB_ASSETS = [
  ["/", "text/html", "web/index.html"],
  ["/widget/quote-ticker.js", "javascript", "web/quote-ticker.js"],
  ["/examples/trading.html", "text/html", "web/examples/trading.html"],
];
// Symbols of the demo page's grid whose displayed values are checked against the gateway's quotes.
const CHECKED_SYMBOLS = ["AAPL", "MSFT", "NVDA", "JPM"];
const PRICE_FIELDS = ["bid", "ask", "last"];
// Rows of the tapes on the demo page (web/index.html) and on the trades page below.
const DEMO_TAPE_ROWS = 15;
const TAPE_ROWS = 15;

/** PROTOCOL.md's symbol rule, restated independently of the widget's regular expression. */
function isProtocolSymbol(s) {
  if (typeof s !== "string" || s.length < 1 || s.length > 32) return false;
  for (const c of s) {
    const b = c.codePointAt(0);
    if (b < 0x21 || b > 0x7e || c === '"' || c === "\\" || c === ",") return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------

/**
 * A gateway process (tests/widget/toolkit.mjs), and what this test adds: a start that fails to bind
 * (port still held) is retried, every output line is searched for a long-lived credential, and its
 * Prometheus counters are read.
 */
class Gateway extends GatewayProcess {
  constructor(bin, config, port, name = "gateway") {
    super(bin, config, port, name, { readyTimeoutMs: READY_TIMEOUT_MS, startAttempts: 5, keepLines: 200 });
    this.leaks = []; // output lines that carry one of SECRETS
  }

  onLine(line) {
    // Every line, not only the kept tail, is searched for a long-lived credential.
    if (SECRETS.some((t) => line.includes(t))) this.leaks.push(line);
  }

  /**
   * The value of a Prometheus counter line `name{label}` in GET /metrics (0 when absent). With auth
   * on, the public /metrics wants a credential, as Prometheus sends it: `token`.
   */
  async metric(name, label, token) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const res = await fetch(`${this.base}/metrics`, { headers, signal: AbortSignal.timeout(5000) });
    if (!res.ok) fail(`${this.name}: GET /metrics answered ${res.status}`);
    const text = await res.text();
    const line = text.split("\n").find((l) => (l.startsWith(`${name}{`) || l.startsWith(`${name} `)) && l.includes(label));
    return line ? Number(line.trim().split(/\s+/).pop()) : 0;
  }
}

// ---------------------------------------------------------------------------------------------
// In-page helpers, installed before any page script runs. They only read what the widgets show and
// keep an independent reference view of the gateway's quotes over a separate WebSocket.

function pageHelpers() {
  // Every connectionstatechange of every widget, with the widget's connectionInfo as detail.
  const events = [];
  document.addEventListener("connectionstatechange", (e) => {
    events.push({ id: e.target.id || "", t: performance.now(), ...e.detail });
  });
  window.__qtTest = {
    events,

    /** Every <quote-ticker> on the page: its state and what its cells show. */
    read() {
      const out = {};
      document.querySelectorAll("quote-ticker").forEach((w, i) => {
        const r = w.shadowRoot;
        const rejectedBox = r && r.querySelector("[part=rejected]");
        const d = {
          state: w.connectionState,
          info: w.connectionInfo || null,
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

    /** <img> and <svg> elements on the page and in shadow roots, but the widget's own sparklines. */
    shadowImgCount() {
      const hostile = 'img, svg:not([part~="sparkline"])';
      let n = document.querySelectorAll(hostile).length;
      for (const w of document.querySelectorAll("*")) if (w.shadowRoot) n += w.shadowRoot.querySelectorAll(hostile).length;
      return n;
    },
  };
}

/** Init script for pages whose connection attempts are counted: wraps window.WebSocket. */
function countWebSockets() {
  const Native = window.WebSocket;
  const attempts = (window.__wsAttempts = []);
  // And the widget's POST /v1/ticket requests, each one a connect attempt of a page with a token.
  const tickets = (window.__ticketAttempts = []);
  const nativeFetch = window.fetch;
  window.fetch = function fetch(input, init) {
    const url = String(input instanceof Request ? input.url : input);
    if (/\/v1\/ticket(\?|$)/.test(url)) {
      const headers = new Headers((init && init.headers) || undefined);
      tickets.push({ t: performance.now(), url, authorization: headers.get("authorization") });
    }
    return nativeFetch.call(this, input, init);
  };
  window.WebSocket = class WebSocket extends Native {
    constructor(url, protocols) {
      attempts.push({ t: performance.now(), url: String(url) });
      if (protocols === undefined) super(url);
      else super(url, protocols);
    }
  };
}

/**
 * Init script of the ticket page: the widget's first POST /v1/ticket is answered with a ticket the
 * gateway never issued (the real request still goes out), so that its first handshake is refused.
 */
function garbageFirstTicket() {
  const nativeFetch = window.fetch;
  let n = 0;
  window.__ticketAnswers = [];
  window.fetch = async function fetch(input, init) {
    const url = String(input instanceof Request ? input.url : input);
    const res = await nativeFetch.call(this, input, init);
    if (!/\/v1\/ticket(\?|$)/.test(url)) return res;
    n++;
    window.__ticketAnswers.push(res.status);
    if (n !== 1 || !res.ok) return res;
    const body = JSON.stringify({ ticket: "garbage0ticket0never0issued0by0the0gateway00", expires_in: 30 });
    return new Response(body, { status: 200, headers: { "content-type": "application/json" } });
  };
}

async function ticketLeakCheck({ embed, context, rgw, rWs, rScript, tGrid, pageErrors }) {
  embed.page("r-ticket", embedPage("Tickets", tokenScript(rScript, { all: "good" }), tGrid()));
  // The garbage ticket and the used one are both bad_ticket (foreign_ticket is only for a ticket
  // sealed by another gateway's key).
  const refusedTickets = () => rgw.metric("quotegw_connections_refused_total", 'reason="bad_ticket"', API_KEY);
  const badBefore = await refusedTickets();
  const leaksBefore = rgw.leaks.length;
  const page = await context.newPage();
  await page.addInitScript(garbageFirstTicket);
  const seen = watchPage(page, "ticket page", pageErrors);
  const sockets = [];
  page.on("websocket", (ws) => {
    const s = { url: ws.url(), frames: 0, error: null, closed: false };
    sockets.push(s);
    ws.on("framereceived", () => s.frames++);
    ws.on("socketerror", (e) => (s.error = String(e)));
    ws.on("close", () => (s.closed = true));
  });
  await page.goto(`${embed.originA}/r-ticket.html`, { waitUntil: "load" });
  const live = await waitFor("the ticket page live after its garbage ticket was refused", async () => {
    const v = (await page.evaluate(() => window.__qtTest.read()))["t-grid"];
    const accepted = sockets.find((s) => s.frames > 0 && !s.closed);
    return { ok: v.state === "live" && !!accepted, accepted, detail: { state: v.state, sockets } };
  }, 30_000);
  const tokenUrls = sockets.filter((s) => /[?&]token=/.test(s.url) || s.url.includes(API_KEY));
  if (tokenUrls.length) fail(`the ticket page opened WebSockets with a token in the URL: ${tokenUrls.map((s) => s.url)}`);
  const first = sockets[0];
  if (!first.url.includes("ticket=garbage0ticket") || first.frames !== 0) fail(`the ticket page's first WebSocket ${JSON.stringify(first)}, want the garbage ticket, refused`);
  // The accepted socket's ticket, used once already: opened again from the same page and Origin.
  const again = await page.evaluate((url) => new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.onopen = () => resolve("open");
    ws.onclose = (e) => resolve(`closed ${e.code}`);
  }), live.accepted.url);
  if (again === "open") fail(`a used ticket opened a second WebSocket: ${live.accepted.url}`);
  const badAfter = await waitFor("the gateway to count both refused tickets", async () => {
    const n = await refusedTickets();
    return { ok: n - badBefore >= 2, n, detail: n - badBefore };
  });
  const answers = await page.evaluate(() => window.__ticketAnswers);
  await sleep(300); // console messages of the refusals reach the test process
  const withToken = sockets.filter((s) => /[?&]token=/.test(s.url) || s.url.includes(API_KEY));
  if (withToken.length) fail(`the ticket page opened WebSockets with a token in the URL: ${withToken.map((s) => s.url)}`);
  const consoleLeaks = seen.console.filter((m) => m.text.includes(API_KEY));
  if (consoleLeaks.length) fail(`console lines of the ticket page carry the key: ${JSON.stringify(consoleLeaks)}`);
  const refusedLines = seen.console.filter((m) => /WebSocket connection to .* failed/.test(m.text));
  if (!refusedLines.length) fail(`Chromium logged no refused handshake on the ticket page (the check would see nothing); console: ${JSON.stringify(seen.console)}`);
  const logLeaks = rgw.leaks.slice(leaksBefore);
  if (logLeaks.length) fail(`the restricted gateway's log carries a credential: ${logLeaks[0]}`);
  await page.close();

  // The opt-out for gateways without tickets: setToken(.., { tickets: false }) sends ?token= as before.
  const legacyScript = `  <script type="module">
    import { QuoteTicker } from ${JSON.stringify(rScript)};
    QuoteTicker.setToken(async () => (await fetch("/api/quote-token?case=good")).text(), undefined, { tickets: false });
  </script>`;
  embed.page("r-legacy", embedPage("Tickets off", legacyScript, tGrid()));
  const legacy = await context.newPage();
  const legacyUrls = [];
  legacy.on("websocket", (ws) => legacyUrls.push(ws.url()));
  const legacyPosts = recordRestCalls(legacy);
  await legacy.goto(`${embed.originA}/r-legacy.html`, { waitUntil: "load" });
  await waitFor("the tickets-off page live with ?token=", async () => {
    const v = (await legacy.evaluate(() => window.__qtTest.read()))["t-grid"];
    return { ok: v.state === "live", detail: { state: v.state, legacyUrls } };
  });
  if (legacyUrls.length !== 1 || new URL(legacyUrls[0]).searchParams.get("token") !== API_KEY || legacyPosts.some((c) => c.path === "/v1/ticket")) fail(`tickets: false: sockets ${legacyUrls.map((u) => u.replace(API_KEY, "<key>"))}, ticket requests ${legacyPosts.filter((c) => c.path === "/v1/ticket").length}; want one socket with ?token=<key> and no POST /v1/ticket`);
  await legacy.close();
  ok(`tickets: the ticket page's POSTs (${answers.join(", ")}) and ${sockets.length} WebSockets (a garbage ticket refused, a real one accepted, that one again refused: single use; ${badAfter.n - badBefore} counted as bad_ticket); no WebSocket URL has token=; no console line (of ${seen.console.length}, ${refusedLines.length} Chromium's refused handshakes) and no gateway log line carries the key; setToken(.., { tickets: false }) connects with ?token= and asks for no ticket`);
}

/** An HS256 JWT, as an auth service would sign it for the gateway's jwt_hs256_secret. */
function signJwt(claims, secret) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${unsigned}.${crypto.createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/** GET with chosen headers (an Origin, which fetch would not let us set): status and headers. */
function httpGet(url, headers) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers, timeout: 5000 }, (res) => {
      res.resume();
      resolve({ status: res.statusCode, headers: res.headers });
    });
    req.on("timeout", () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on("error", reject);
  });
}

/** The base config with an [access] section added, written to `dir`/`name`; returns its path. */
function writeAccessConfig(dir, name, baseConfig, accessLines) {
  const base = fs.readFileSync(baseConfig, "utf8");
  if (/^\s*\[access\]/m.test(base)) fail(`${baseConfig} has an [access] section; the derived ${name} adds its own`);
  const file = path.join(dir, name);
  fs.writeFileSync(file, `${base}\n# Added by tests/widget/run.mjs\n[access]\n${accessLines.join("\n")}\n`);
  return file;
}

/**
 * The base config with lines added to its [limits] section (`limits`) and new sections appended
 * (`sections`, e.g. "[trades]" and its keys), written to `dir`/`name`; returns its path.
 */
function writeDerivedConfig(dir, name, baseConfig, { limits = [], sections = [] }) {
  let text = fs.readFileSync(baseConfig, "utf8");
  for (const header of sections.filter((l) => /^\[.*\]$/.test(l))) {
    if (text.split("\n").some((l) => l.trim() === header)) fail(`${baseConfig} has a ${header} section; the derived ${name} adds its own`);
  }
  if (limits.length) {
    if (/^\[limits\][ \t]*$/m.test(text)) text = text.replace(/^\[limits\][ \t]*$/m, (h) => `${h}\n${limits.join("\n")}`);
    else text += `\n[limits]\n${limits.join("\n")}\n`;
  }
  const file = path.join(dir, name);
  fs.writeFileSync(file, `${text}\n# Added by tests/widget/run.mjs\n${sections.join("\n")}\n`);
  return file;
}

/** Console messages and uncaught errors of one page, kept for the checks. */
function watchPage(page, label, pageErrors) {
  const seen = { console: [] };
  page.on("console", (m) => seen.console.push({ type: m.type(), text: m.text() }));
  page.on("pageerror", (e) => pageErrors.push(`${label}: ${e}`));
  seen.errors = () => seen.console.filter((m) => m.type === "error").map((m) => m.text);
  return seen;
}

// ---------------------------------------------------------------------------------------------

function resolveInputs() {
  const bin = resolveBin();
  const config = path.resolve(ROOT, process.env.QUOTEGW_CONFIG || "tests/widget/gateway.toml");
  if (!fs.existsSync(config)) fail(`no gateway config at ${config} (QUOTEGW_CONFIG)`);
  const shots = path.resolve(ROOT, process.env.SCREENSHOT_DIR || "target/widget-screenshots");
  return { bin, config, shots };
}

async function main(state, { bin, config, shots }, chromium) {
  const tmp = (state.tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), "quotegw-widget-")));
  const webFiles = new Map(WEB_ASSETS.map(([route, , file]) => [route, fs.readFileSync(path.join(ROOT, file))]));
  const port = await freePort();
  const gw = new Gateway(bin, config, port, "gateway");
  state.gateways.push(gw);
  await gw.startReady();
  // The gateway serves web/ as compiled in: a binary older than the files on disk would test them
  // as they were, so a difference fails the run (or, in development, is bridged on purpose).
  const stale = [];
  for (const [route, body] of webFiles) {
    const res = await fetch(`${gw.base}${route}`, { signal: AbortSignal.timeout(5000) });
    if (!Buffer.from(await res.arrayBuffer()).equals(body)) stale.push(route);
  }
  const overlay = stale.length > 0 && process.env.QUOTEGW_WEB_OVERLAY === "1";
  if (stale.length && !overlay) {
    fail(`${bin} embeds other versions of ${stale.join(", ")} than web/ on disk: rebuild it (cargo build), or set QUOTEGW_WEB_OVERLAY=1 to test the files on disk through tests/widget/overlay.mjs`);
  }
  if (overlay) {
    await gw.stop();
    await gw.enableOverlay(webFiles);
    await gw.startReady();
    log(`note: QUOTEGW_WEB_OVERLAY=1: ${stale.join(", ")} served from web/ on disk through an overlay proxy; the binary embeds older copies`);
  }
  ok(`gateway ready on ${gw.base} (${path.relative(ROOT, bin) || bin}, ${path.relative(ROOT, config)})`);
  const startGateway = async (name, configFile) => {
    const g = new Gateway(bin, configFile, await freePort(), name);
    state.gateways.push(g);
    if (overlay) await g.enableOverlay(webFiles);
    await g.startReady();
    return g;
  };
  // The host pages on other origins (A and B), with the widget file as a page's own copy.
  const embed = (state.embed = await startEmbedServer(webFiles.get("/widget/quote-ticker.js")));

  state.userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "quotegw-widget-chromium-"));
  const context = (state.context = await launchChromium(chromium, state.userDataDir, { viewport: { width: 1280, height: 900 } }));
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
  for (const [route, type, file] of WEB_ASSETS) {
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
  const demoExtras = await page.evaluate(() => ({
    tapes: [...document.querySelectorAll("quote-tape")].map((w) => w.id),
    sparkline: document.getElementById("demo-grid").getAttribute("sparkline"),
    tapeDefined: !!customElements.get("quote-tape"),
  }));
  if (!demoExtras.tapeDefined || !demoExtras.tapes.includes("demo-trades")) fail(`demo page has no <quote-tape id="demo-trades"> (tapes: ${demoExtras.tapes}, defined: ${demoExtras.tapeDefined})`);
  if (demoExtras.sparkline !== "1m") fail(`demo page's #demo-grid has sparkline=${JSON.stringify(demoExtras.sparkline)}, want "1m"`);
  ok(`demo page served at / with ${ids.length} tickers (${ids.join(", ")}; #demo-grid with a 1m sparkline) and a tape (${demoExtras.tapes})`);

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
  // What each symbol's subscribe carries is the union of what its elements need: AAPL (grid with a
  // sparkline, and the tape) trades and 1m bars; the grid's others 1m bars; the rest nothing at all.
  for (const [sym, want] of [["AAPL", "trades+1m"], ["MSFT", "1m"], ["JPM", "1m"], ["XOM", "none"], ["V", "none"]]) {
    const got = extrasOf(lastSubscribeOf(sockets[0], sym));
    if (got !== want) fail(`the demo page subscribed ${sym} with ${got}, want ${want}: ${JSON.stringify(sockets[0].sent)}`);
  }
  ok(`${ids.length + demoExtras.tapes.length} widgets share one WebSocket (${wsUrl}) that subscribed each of ${subscribed.size} symbols, with trades and bars only where an element needs them`);

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
  const compareWithGateway = async (label, pg = page, widgetId = "demo-grid", url = wsUrl, symbols = CHECKED_SYMBOLS) => {
    await pg.evaluate(([u, s]) => window.__qtTest.openReference(u, s), [url, symbols]);
    await waitFor(`the reference socket's snapshots (${label})`, () =>
      pg.evaluate((s) => window.__qtTest.referenceReady(s), symbols),
    );
    const matched = new Set();
    let last = null;
    // The feed is live, so two sockets can be a tick apart at any instant: retry until every checked
    // symbol has been seen equal at least once, within a bounded number of reads.
    for (let attempt = 0; attempt < 150 && matched.size < symbols.length; attempt++) {
      last = await pg.evaluate(
        ([id, s, f]) => window.__qtTest.compare(id, s, f),
        [widgetId, symbols, PRICE_FIELDS],
      );
      if (last.errors.length) fail(`reference client saw a protocol violation: ${last.errors[0]}`);
      for (const [sym, diffs] of Object.entries(last.result)) if (diffs.length === 0) matched.add(sym);
      if (matched.size < symbols.length) await sleep(POLL_MS);
    }
    if (matched.size < symbols.length) {
      fail(`${label}: displayed quotes never equalled the gateway's for ${symbols.filter((s) => !matched.has(s))}: ${JSON.stringify(last.result)}`);
    }
    await pg.evaluate(() => window.__qtTest.ref.ws.close());
  };
  await compareWithGateway("before restart");
  ok(`displayed bid/ask/last/volume/status equal the gateway's quotes for ${CHECKED_SYMBOLS.join(", ")}`);
  const demoSpark = await checkSparklines(page, "demo-grid", gw.base, CHECKED_SYMBOLS, "1m", "demo page");
  const demoTape = await checkTape(page, "demo-trades", gw.base, "AAPL", DEMO_TAPE_ROWS, "demo page");
  ok(`demo page: sparklines equal GET /v1/bars (1m; ${[...demoSpark].map(([s, n]) => `${s} ${n}`).join(", ")} bars); the tape's newest ${demoTape.compared} AAPL prints equal GET /v1/trades`);

  // 6. A hostile symbol is text, runs nothing, and opens no extra socket.
  const socketsBefore = widgetSockets().length;
  await page.evaluate(([symbol, sent]) => {
    for (const layout of ["grid", "tape"]) {
      const w = document.createElement("quote-ticker");
      w.id = `xss-${layout}`;
      w.setAttribute("layout", layout);
      w.setAttribute("symbols", `AAPL,${symbol},${sent}`);
      document.querySelector("main").append(w);
    }
  }, [XSS_SYMBOL, XSS_SYMBOL_SENT]);
  await waitFor("the hostile symbols in the rejected list of both new widgets", async () => {
    const v = await read();
    const texts = ["xss-grid", "xss-tape"].map((id) => v[id] && v[id].rejectedText);
    const shows = (t) => t && [XSS_SYMBOL, XSS_SYMBOL_SENT].every((x) => t.toLowerCase().includes(x.toLowerCase()));
    return { ok: texts.every(shows), detail: texts };
  });
  await sleep(500);
  const xss = await page.evaluate(() => ({ flag: window.__xss, imgs: window.__qtTest.shadowImgCount() }));
  if (xss.flag !== undefined) fail(`a hostile symbol ran script (window.__xss = ${xss.flag})`);
  if (xss.imgs !== 0) fail(`a hostile symbol became markup: ${xss.imgs} <img>/<svg> element(s) on the page`);
  const rejected = await page.evaluate(() => document.getElementById("xss-grid").rejectedSymbols);
  // The one with spaces is not a symbol by the protocol's rule: rejected by the widget itself
  // (invalid_symbol, as the gateway would), never sent. The other comes back from the gateway.
  const codes = Object.fromEntries(rejected.map((r) => [r.symbol, r.code]));
  if (rejected.length !== 2 || codes[XSS_SYMBOL.toUpperCase()] !== "invalid_symbol" || codes[XSS_SYMBOL_SENT.toUpperCase()] !== "unknown_symbol") {
    fail(`rejectedSymbols = ${JSON.stringify(rejected)}, want ${XSS_SYMBOL} invalid_symbol and ${XSS_SYMBOL_SENT} unknown_symbol`);
  }
  const xssView = (await read())["xss-grid"];
  if (!xssView.quotes.AAPL || !decimal.test(xssView.quotes.AAPL.last.text)) fail("the valid symbol next to the hostile one shows no price");
  if (widgetSockets().length !== socketsBefore) fail("adding widgets opened another WebSocket");
  await page.evaluate(() => ["xss-grid", "xss-tape"].forEach((id) => document.getElementById(id).remove()));
  ok(`symbols ${XSS_SYMBOL} (refused by the widget) and ${XSS_SYMBOL_SENT} (by the gateway) are listed as rejected text in both layouts; no script ran, no <img>/<svg>, no new socket`);

  // 6b. The widget embedded by a page on ANOTHER origin (origin A, the embed server), from the
  //     gateway's URL, as a trading UI on its own site embeds it. Module scripts are always fetched
  //     in CORS mode: unless the gateway answers GET /widget/quote-ticker.js with
  //     Access-Control-Allow-Origin, Chromium blocks the script ("... has been blocked by CORS
  //     policy" in the console), <quote-ticker> is never defined, and this check fails at "the
  //     widget to be defined on the cross-origin page". The same-origin demo page above cannot see
  //     that: a same-origin module script needs no CORS header.
  const xScript = `${gw.base}/widget/quote-ticker.js`;
  embed.page(
    "open",
    embedPage(
      "Cross-origin embed",
      `  <script type="module" src="${xScript}"></script>`,
      `  <quote-ticker id="x-grid" layout="grid" fields="bid,ask,last,volume" symbols="${CHECKED_SYMBOLS.join(",")}"></quote-ticker>\n` +
        `  <quote-ticker id="x-tape" layout="tape" fields="last" symbols="AAPL,MSFT,AMZN"></quote-ticker>`,
    ),
  );
  const xPage = await context.newPage();
  const xSeen = watchPage(xPage, "cross-origin", pageErrors);
  const xSockets = [];
  xPage.on("websocket", (ws) => xSockets.push(ws.url()));
  const xFrames = recordSockets(xPage);
  const xRest = recordRestCalls(xPage);
  const readX = () => xPage.evaluate(() => window.__qtTest.read());
  await xPage.goto(`${embed.originA}/open.html`, { waitUntil: "load" });
  await waitFor("the widget to be defined on the cross-origin page", async () => ({
    ok: await xPage.evaluate(() => !!customElements.get("quote-ticker")),
    detail: { console: xSeen.errors() },
  }));
  await waitFor("prices in every widget of the cross-origin page, state live", async () => {
    const missing = allPricesShown(await readX());
    return { ok: missing.length === 0, detail: missing.slice(0, 6) };
  });
  if (xSockets[0] !== wsUrl) fail(`the cross-origin page's widget connected to ${xSockets[0]}, want ${wsUrl} (the host that served the script, not the page's)`);
  await compareWithGateway("cross-origin page", xPage, "x-grid");
  if (xSeen.errors().length) fail(`console errors on the cross-origin page: ${xSeen.errors().join(" | ")}`);
  if (pageErrors.length) fail(`uncaught errors: ${pageErrors.join(" | ")}`);
  // Without a sparkline or a tape nothing changes: no trades or bars in any op, no GET /v1/... .
  const xExtras = xFrames.flatMap((f) => f.sent).filter((o) => "trades" in o || "bars" in o);
  if (xExtras.length || xRest.length) fail(`the cross-origin page (no sparkline, no tape) sent ${JSON.stringify(xExtras)} and requested ${JSON.stringify(xRest.map((c) => c.url))}`);
  ok(`page on ${embed.originA} embeds the widget from ${xScript} (Access-Control-Allow-Origin *): live on ${wsUrl}, quotes equal the gateway's, no console errors; no trades or bars asked, nothing fetched`);
  // From here on the gateway is stopped on purpose, and Chromium itself logs each refused WebSocket
  // ("WebSocket connection to 'ws://...' failed: ..."): those lines are expected, no others are.
  const outageLine = (text) => text.startsWith(`WebSocket connection to '${wsUrl}`) && text.includes("failed");

  // 6c. Issue 25: a page on another origin with two widgets on the SAME gateway url, one of them
  //     given strings that are not symbols. The widget must never send such a string (the gateway
  //     would refuse the whole op, bad_request, and with it the other widget's symbols): not on the
  //     first connect, and not on the reconnect of check 7 (checked again there). So: every op the
  //     page sends passes the protocol's rule; the clean widget and the garbage one's good symbols
  //     show the gateway's quotes; the garbage is listed as rejected, invalid_symbol, as text.
  const mixedGood = ["AAPL", "MSFT"];
  const mixedBad = [XSS_SYMBOL.toUpperCase(), UNICODE_NOT_SYMBOL.replace(/[a-z]/g, (c) => c.toUpperCase())];
  embed.page(
    "mixed",
    embedPage(
      "Two widgets, one url, one with garbage",
      `  <script type="module" src="${xScript}"></script>`,
      `  <quote-ticker id="m-garbage" url="${wsUrl}" fields="bid,ask,last,volume" symbols="${mixedGood.join(",")},${XSS_SYMBOL},${UNICODE_NOT_SYMBOL}"></quote-ticker>\n` +
        `  <quote-ticker id="m-clean" url="${wsUrl}" fields="bid,ask,last,volume" symbols="MSFT"></quote-ticker>`,
    ),
  );
  const mPage = await context.newPage();
  const mSeen = watchPage(mPage, "mixed page", pageErrors);
  const mSockets = []; // as `sockets` above: every frame the page SENDS, per WebSocket
  mPage.on("websocket", (ws) => {
    const s = { url: ws.url(), sent: [], closed: false };
    mSockets.push(s);
    ws.on("framesent", (f) => {
      try {
        s.sent.push(JSON.parse(f.payload));
      } catch {
        s.sent.push({ raw: String(f.payload) });
      }
    });
    ws.on("close", () => (s.closed = true));
  });
  const readM = () => mPage.evaluate(() => window.__qtTest.read());
  const mWidgetSockets = () => mSockets.filter((s) => !isReference(s));
  // `after`: how many widget sockets the page had opened before (refused attempts during an outage
  // count too); the one checked is the first one after those that sent a subscribe.
  const checkMixed = async (label, after) => {
    // The frames first: on the old widget this is where it shows (the garbage in a subscribe).
    const sock = await waitFor(`${label}: a new widget socket of the mixed page to send a subscribe`, () => {
      const ws = mWidgetSockets();
      const s = ws.slice(after).find((w) => w.sent.some((o) => o.op === "subscribe"));
      return { ok: !!s, s, detail: ws.map((w) => w.sent) };
    }, RECONNECT_TIMEOUT_MS);
    const badOps = () =>
      mWidgetSockets().flatMap((s, i) =>
        s.sent.filter((o) => "symbols" in o && !(Array.isArray(o.symbols) && o.symbols.every(isProtocolSymbol))).map((o) => `socket ${i + 1} sent ${JSON.stringify(o)}`),
      );
    if (badOps().length) fail(`${label}: the widget sent strings that are not symbols: ${badOps().join(" | ")}`);
    await waitFor(`${label}: both widgets of the mixed page live, with prices for their good symbols`, async () => {
      const v = await readM();
      const missing = [];
      for (const [id, syms] of [["m-garbage", mixedGood], ["m-clean", ["MSFT"]]]) {
        const w = v[id];
        if (w.state !== "live") missing.push(`${id}: ${w.state}`);
        for (const sym of syms) if (!w.quotes[sym] || !decimal.test(w.quotes[sym].last.text)) missing.push(`${id}: no price for ${sym}`);
      }
      // The garbage widget lists its garbage as rejected (checked below); the clean one lists nothing.
      if (v["m-clean"].rejectedText) missing.push(`m-clean: ${JSON.stringify(v["m-clean"].rejectedText)}`);
      return { ok: missing.length === 0, detail: { missing, rejected: v["m-garbage"].rejectedText, console: mSeen.console.map((m) => m.text).slice(-3) } };
    }, RECONNECT_TIMEOUT_MS);
    await compareWithGateway(`${label}: the clean widget`, mPage, "m-clean", wsUrl, ["MSFT"]);
    await compareWithGateway(`${label}: the garbage widget's good symbols`, mPage, "m-garbage", wsUrl, mixedGood);
    const rej = await mPage.evaluate(() => ["m-garbage", "m-clean"].map((id) => document.getElementById(id).rejectedSymbols));
    const got = JSON.stringify([...rej[0]].sort((a, b) => (a.symbol < b.symbol ? -1 : 1)));
    const want = JSON.stringify([...mixedBad].sort().map((symbol) => ({ symbol, code: "invalid_symbol" })));
    if (got !== want || rej[1].length !== 0) fail(`${label}: rejectedSymbols ${got} and ${JSON.stringify(rej[1])}, want ${want} and []`);
    const v = await readM();
    for (const bad of mixedBad) if (!v["m-garbage"].rejectedText.includes(`${bad} (not a symbol)`)) fail(`${label}: the garbage widget shows ${JSON.stringify(v["m-garbage"].rejectedText)}, want ${bad} (not a symbol) in its rejected list`);
    const badRequest = [...Object.values(v).map((w) => w.rejectedText), ...mSeen.console.map((m) => m.text)].filter((t) => /bad_request|bad request/i.test(t));
    if (badRequest.length) fail(`${label}: bad_request on the mixed page: ${badRequest.join(" | ")}`);
    const xssM = await mPage.evaluate(() => ({ flag: window.__xss, imgs: window.__qtTest.shadowImgCount() }));
    if (xssM.flag !== undefined || xssM.imgs !== 0) fail(`${label}: the garbage became script or markup (window.__xss = ${xssM.flag}, ${xssM.imgs} <img>/<svg>)`);
    if (badOps().length) fail(`${label}: the widget sent strings that are not symbols: ${badOps().join(" | ")}`);
    const subs = sock.s.sent.filter((o) => o.op === "subscribe").flatMap((o) => o.symbols);
    if (JSON.stringify([...new Set(subs)].sort()) !== JSON.stringify(mixedGood)) fail(`${label}: the socket subscribed ${JSON.stringify(subs)}, want ${mixedGood} only`);
    return sock.s;
  };
  await mPage.goto(`${embed.originA}/mixed.html`, { waitUntil: "load" });
  await checkMixed("mixed page", 0);
  if (mWidgetSockets().length !== 1) fail(`the mixed page opened ${mWidgetSockets().length} widget WebSockets, want 1 shared by both widgets`);
  ok(`page on ${embed.originA}, two widgets on ${wsUrl}: every op sent passes the symbol rule; the clean widget and the other's ${mixedGood.join(", ")} equal the gateway's quotes; ${mixedBad.join(" and ")} listed as rejected (invalid_symbol) as text; no bad_request, no script ran`);

  // 6d. Trades and bars (PROTOCOL.md "Trades and bars"), on a page from origin A with the widget
  //     from the gateway: a grid with 1m sparklines (AAPL, MSFT), a tape of AAPL and a plain grid
  //     (AAPL, NVDA), all on one socket. A symbol's subscribe carries the union of what its elements
  //     need (a later subscribe replaces the choice): AAPL trades and 1m bars, MSFT 1m bars, NVDA
  //     nothing. The sparklines equal GET /v1/bars and the tape GET /v1/trades, read by this test.
  //     Then a tape of MSFT joins and leaves (MSFT subscribed again with trades, then without), and
  //     a sparkline of an interval the gateway does not build (2m) costs no quotes.
  embed.page(
    "trades",
    embedPage(
      "Trades and bars",
      `  <script type="module" src="${xScript}"></script>`,
      [
        `  <quote-ticker id="s-grid" fields="last" symbols="AAPL,MSFT" sparkline="1m"></quote-ticker>`,
        `  <quote-tape id="s-tape" symbols="AAPL" rows="${TAPE_ROWS}"></quote-tape>`,
        `  <quote-ticker id="s-plain" fields="bid,ask,last" symbols="AAPL,NVDA"></quote-ticker>`,
      ].join("\n"),
    ),
  );
  const sPage = await context.newPage();
  const sSeen = watchPage(sPage, "trades page", pageErrors);
  const sSockets = recordSockets(sPage);
  const sRest = recordRestCalls(sPage);
  const tapeState = (pg, id) => pg.evaluate((i) => document.getElementById(i).connectionState, id);
  await sPage.goto(`${embed.originA}/trades.html`, { waitUntil: "load" });
  await waitFor("the trades page live, with prices", async () => {
    const missing = allPricesShown(await sPage.evaluate(() => window.__qtTest.read()));
    const tape = await tapeState(sPage, "s-tape");
    if (tape !== "live") missing.push(`s-tape: ${tape}`);
    return { ok: missing.length === 0, detail: missing };
  });
  if (sSockets.length !== 1) fail(`the trades page opened ${sSockets.length} WebSockets for its 3 elements, want 1`);
  const sSock = sSockets[0];
  for (const [sym, want] of [["AAPL", "trades+1m"], ["MSFT", "1m"], ["NVDA", "none"]]) {
    const got = extrasOf(lastSubscribeOf(sSock, sym));
    if (got !== want) fail(`the trades page subscribed ${sym} with ${got}, want ${want}: ${JSON.stringify(sSock.sent)}`);
  }
  const sSpark = await checkSparklines(sPage, "s-grid", gw.base, ["AAPL", "MSFT"], "1m", "trades page");
  const sTape = await checkTape(sPage, "s-tape", gw.base, "AAPL", TAPE_ROWS, "trades page", { minRows: 3 });
  const restOf = (path, sym) => sRest.filter((c) => c.path === path && c.query.symbol === sym);
  const tradeReads = restOf("/v1/trades", "AAPL");
  if (!tradeReads.length || tradeReads[0].query.limit !== String(TAPE_ROWS)) fail(`the tape read ${JSON.stringify(tradeReads)}, want GET /v1/trades?symbol=AAPL&limit=${TAPE_ROWS}`);
  for (const sym of ["AAPL", "MSFT"]) {
    const reads = restOf("/v1/bars", sym);
    if (!reads.length || reads[0].query.interval !== "1m" || reads[0].query.limit !== "390") fail(`the sparkline of ${sym} read ${JSON.stringify(reads)}, want GET /v1/bars?symbol=${sym}&interval=1m&limit=390`);
  }
  if (sRest.some((c) => c.query.symbol === "NVDA" || (c.path === "/v1/trades" && c.query.symbol !== "AAPL"))) fail(`the trades page fetched for elements without a sparkline or tape: ${JSON.stringify(sRest)}`);
  ok(`trades page on ${embed.originA}, one socket: AAPL subscribed with trades and 1m bars, MSFT 1m bars, NVDA neither; sparklines equal GET /v1/bars (${[...sSpark].map(([s, n]) => `${s} ${n}`).join(", ")} bars: count, exact closes, geometry); the tape's newest ${sTape.compared} prints equal GET /v1/trades (seq, time, exact price, size; tick marks by the tick test)`);

  let sMark = sSock.sent.length;
  await sPage.evaluate(() => {
    const w = document.createElement("quote-tape");
    w.id = "s-tape2";
    w.setAttribute("symbols", "MSFT");
    w.setAttribute("rows", "5");
    document.body.append(w);
  });
  await waitFor("MSFT subscribed again, with trades and its 1m bars", () => {
    const ops = sSock.sent.slice(sMark).filter((o) => o.op === "subscribe" && o.symbols.includes("MSFT"));
    return { ok: ops.some((o) => extrasOf(o) === "trades+1m"), detail: sSock.sent.slice(sMark) };
  });
  await checkTape(sPage, "s-tape2", gw.base, "MSFT", 5, "a second tape (MSFT)");
  sMark = sSock.sent.length;
  await sPage.evaluate(() => document.getElementById("s-tape2").remove());
  await waitFor("MSFT subscribed again without trades when its tape goes", () => {
    const op = lastSubscribeOf({ sent: sSock.sent.slice(sMark) }, "MSFT");
    return { ok: extrasOf(op) === "1m", detail: sSock.sent.slice(sMark) };
  });
  if (sSock.sent.slice(sMark).some((o) => o.op === "unsubscribe")) fail(`removing the MSFT tape unsubscribed something: ${JSON.stringify(sSock.sent.slice(sMark))}`);
  await checkSparklines(sPage, "s-grid", gw.base, ["MSFT"], "1m", "after the MSFT tape left");

  sMark = sSock.sent.length;
  const sReceived = sSock.received.length;
  await sPage.evaluate(() => {
    const w = document.createElement("quote-ticker");
    w.id = "s-2m";
    w.setAttribute("fields", "bid,ask,last");
    w.setAttribute("symbols", "NVDA");
    w.setAttribute("sparkline", "2m");
    document.body.append(w);
  });
  const refused2m = await waitFor("the 2m sparkline refused, NVDA subscribed again without bars and quoted", async () => {
    const d = await sPage.evaluate(() => {
      const w = document.getElementById("s-2m");
      return { spark: w.displayedSparklines, quotes: w.displayedQuotes };
    });
    const ops = sSock.sent.slice(sMark).filter((o) => o.op === "subscribe" && o.symbols.includes("NVDA"));
    const quoted = d.quotes.NVDA && decimal.test(d.quotes.NVDA.last);
    return {
      ok: !!(d.spark.NVDA && d.spark.NVDA.error) && ops.length >= 2 && extrasOf(ops[ops.length - 1]) === "none" && quoted,
      d,
      ops,
      detail: { d, ops },
    };
  });
  const asked2m = refused2m.ops.filter((o) => o.bars === "2m");
  const errors2m = sSock.received.slice(sReceived).filter((m) => m.type === "error");
  if (asked2m.length !== 1 || !errors2m.some((m) => m.code === "bad_request" && asked2m.some((o) => o.id === m.id))) {
    fail(`the 2m sparkline: ops ${JSON.stringify(refused2m.ops)}, errors ${JSON.stringify(errors2m)}; want one subscribe with bars 2m, answered bad_request`);
  }
  const sRejected = await sPage.evaluate(() => [...document.querySelectorAll("quote-ticker, quote-tape")].flatMap((w) => w.rejectedSymbols));
  if (sRejected.length) fail(`a refused bars interval made symbols rejected: ${JSON.stringify(sRejected)}`);
  await compareWithGateway("NVDA after the 2m refusal", sPage, "s-2m", wsUrl, ["NVDA"]);
  await compareWithGateway("the plain grid after the 2m refusal", sPage, "s-plain", wsUrl, ["AAPL", "NVDA"]);
  await sPage.evaluate(() => document.getElementById("s-2m").remove());
  await checkTape(sPage, "s-tape", gw.base, "AAPL", TAPE_ROWS, "the tape after the 2m refusal");
  if (sSeen.errors().length) fail(`console errors on the trades page: ${sSeen.errors().join(" | ")}`);
  ok(`a tape joining and leaving re-subscribes MSFT with trades and then without (its 1m bars kept, nothing unsubscribed); a 2m sparkline (not built by this gateway: "${refused2m.d.spark.NVDA.error}") is refused once, NVDA is subscribed again without it: its quotes, the others' and the tape unaffected, no symbol rejected`);

  // A 1s sparkline gains points within seconds: each new bar appended from the socket (the history
  // is read once), and still equal to GET /v1/bars. A 5m sparkline on AAPL, whose subscription
  // carries 1m (one interval per symbol and connection): no subscribe is sent for it; it is read
  // from GET /v1/bars and refreshed from there.
  sMark = sSock.sent.length;
  await sPage.evaluate(() => {
    for (const [id, symbols, interval] of [["s-fast", "NVDA", "1s"], ["s-poll", "AAPL", "5m"]]) {
      const w = document.createElement("quote-ticker");
      w.id = id;
      w.setAttribute("fields", "last");
      w.setAttribute("symbols", symbols);
      w.setAttribute("sparkline", interval);
      document.body.append(w);
    }
  });
  await waitFor("NVDA subscribed with 1s bars", () => {
    const op = lastSubscribeOf({ sent: sSock.sent.slice(sMark) }, "NVDA");
    return { ok: extrasOf(op) === "1s", detail: sSock.sent.slice(sMark) };
  });
  const fast1 = (await checkSparklines(sPage, "s-fast", gw.base, ["NVDA"], "1s", "1s sparkline")).get("NVDA");
  // NVDA prints at least every 6.5 s in the fixture: a new 1s bar comes well within this bound.
  await waitFor("the 1s sparkline to gain points from the socket", async () => {
    const d = await sPage.evaluate(() => document.getElementById("s-fast").displayedSparklines.NVDA);
    return { ok: d && d.closes.length > fast1, detail: d && d.closes.length };
  }, 30_000);
  const fast2 = (await checkSparklines(sPage, "s-fast", gw.base, ["NVDA"], "1s", "1s sparkline, later")).get("NVDA");
  const fastReads = restOf("/v1/bars", "NVDA").filter((c) => c.query.interval === "1s");
  if (fastReads.length !== 1) fail(`the 1s sparkline read GET /v1/bars ${fastReads.length} times, want once (then live from the socket)`);
  const pollN = await checkPolledSparkline(sPage, "s-poll", gw.base, "AAPL", "5m", "5m sparkline on AAPL");
  await waitFor("the 5m sparkline refreshed from GET /v1/bars", () => {
    const reads = restOf("/v1/bars", "AAPL").filter((c) => c.query.interval === "5m");
    return { ok: reads.length >= 2, detail: reads };
  });
  if (sSock.sent.slice(sMark).some((o) => Array.isArray(o.symbols) && o.symbols.includes("AAPL"))) fail(`a 5m sparkline on AAPL sent ${JSON.stringify(sSock.sent.slice(sMark))}, want no op for AAPL (its subscription keeps 1m)`);
  await sPage.evaluate(() => ["s-fast", "s-poll"].forEach((id) => document.getElementById(id).remove()));
  ok(`a 1s sparkline (NVDA) grows from ${fast1} to ${fast2} points from the socket (one GET /v1/bars), equal to the gateway's each time; a 5m one on AAPL (subscribed for 1m) is read and refreshed from GET /v1/bars (${pollN} bars), no op sent`);

  // 6e. trades_lost for real: a gateway that keeps one trade per symbol and writes at most one frame
  //     a second, so a connection falls behind whenever a symbol prints twice within a frame. The
  //     tape shows each loss as a gap row, with the count of a trades_lost the gateway sent on its
  //     socket, between the prints before and after the loss. It also asked for more history than
  //     that gateway keeps (limit 40 > 1: answered 400) and took the gateway's default instead.
  const lossyConfig = writeDerivedConfig(tmp, "lossy.toml", config, {
    limits: ["min_frame_interval_ms = 1000"],
    sections: ["[trades]", "keep = 1"],
  });
  const lgw = await startGateway("lossy gateway", lossyConfig);
  embed.page(
    "lossy",
    embedPage(
      "A tape that falls behind",
      `  <script type="module" src="${lgw.base}/widget/quote-ticker.js"></script>`,
      `  <quote-tape id="l-tape" symbols="AAPL,MSFT" rows="40"></quote-tape>`,
    ),
  );
  const lPage = await context.newPage();
  const lSeen = watchPage(lPage, "lossy page", pageErrors);
  const lSockets = recordSockets(lPage);
  const lRest = recordRestCalls(lPage);
  await lPage.goto(`${embed.originA}/lossy.html`, { waitUntil: "load" });
  const lost = await waitFor("a gap row for a trades_lost the gateway sent, between two prints", async () => {
    const rows = await lPage.evaluate(() => document.getElementById("l-tape").displayedTrades);
    const messages = lSockets.flatMap((s) => s.received).filter((m) => m.type === "trades_lost");
    for (let i = 0; i < rows.length; i++) {
      const g = rows[i];
      if (g.kind !== "gap" || g.reason !== "lost") continue;
      const above = rows.slice(0, i).reverse().find((r) => r.kind === "trade" && r.symbol === g.symbol);
      const below = rows.slice(i + 1).find((r) => r.kind === "trade" && r.symbol === g.symbol);
      if (!above || !below) continue;
      const m = messages.find((x) => x.symbol === g.symbol && x.count === g.count && above.seq > x.to_seq && below.seq < x.from_seq);
      if (m) return { gap: g, message: m, above, below, rows };
    }
    return { ok: false, detail: { messages: messages.slice(-3), rows: rows.slice(0, 6) } };
  });
  const lostCount = lost.message.count;
  const wantText = `${lost.gap.symbol}: ${lostCount.toLocaleString("en-US")} ${lostCount === 1 ? "trade" : "trades"} missed`;
  if (lost.gap.text !== wantText) fail(`the gap row says ${JSON.stringify(lost.gap.text)}, want ${JSON.stringify(wantText)}`);
  const lSeqs = lost.rows.filter((r) => r.kind === "trade").map((r) => `${r.symbol}:${r.seq}`);
  if (new Set(lSeqs).size !== lSeqs.length) fail(`the lossy tape shows a print twice: ${lSeqs}`);
  for (const sym of ["AAPL", "MSFT"]) {
    const reads = lRest.filter((c) => c.path === "/v1/trades" && c.query.symbol === sym);
    if (reads.length !== 1 || reads[0].query.limit !== "40") fail(`the lossy tape read ${JSON.stringify(reads)} for ${sym}, want one read with limit=40 (answered with the 1 print the gateway keeps)`);
  }
  const lUnexpected = lSeen.errors();
  if (lUnexpected.length) fail(`console errors on the lossy page: ${lUnexpected.join(" | ")}`);
  await lPage.close();
  await lgw.stop();
  ok(`trades_lost from a gateway that falls behind (keep = 1, one frame a second): the tape shows "${lost.gap.text}" between ${lost.gap.symbol} prints ${lost.below.seq} and ${lost.above.seq} (lost ${lost.message.from_seq}..${lost.message.to_seq}); no print twice; one history read (limit=40, answered with what the gateway keeps)`);

  // 7. Stop the gateway: the widgets say so. Start it again on the same port: they resume.
  const before = (await read())["demo-grid"].quotes;
  const mBefore = mWidgetSockets().length;
  await gw.stop("SIGKILL");
  await waitFor("every widget to show the reconnecting state", async () => {
    const v = await read();
    const states = Object.entries(v).map(([id, w]) => `${id}:${w.state}:${w.connText}`);
    return { ok: Object.values(v).every((w) => w.state === "reconnecting" && /reconnecting/i.test(w.connText)), detail: states };
  });
  await waitFor("the cross-origin page's widgets to show reconnecting", async () => {
    const v = await readX();
    return { ok: Object.values(v).every((w) => w.state === "reconnecting"), detail: Object.entries(v).map(([id, w]) => `${id}:${w.state}`) };
  });
  ok("gateway killed: every widget shows reconnecting, on the cross-origin page too");
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
  await waitFor(
    "the cross-origin page's widgets to be live again",
    async () => {
      const v = await readX();
      return { ok: Object.values(v).every((w) => w.state === "live"), detail: Object.entries(v).map(([id, w]) => `${id}:${w.state}`) };
    },
    RECONNECT_TIMEOUT_MS,
  );
  await compareWithGateway("cross-origin page after restart", xPage, "x-grid");
  // The trades page after the restart: the gateway's seq (and the replay's clock) started over, so
  // the tape shows a gap row for the restart below the new prints, which equal the new gateway's;
  // the sparklines are read again and equal its bars.
  await waitFor(
    "the trades page live again",
    async () => {
      const states = [await tapeState(sPage, "s-tape"), ...Object.values(await sPage.evaluate(() => window.__qtTest.read())).map((w) => w.state)];
      return { ok: states.every((st) => st === "live"), detail: states };
    },
    RECONNECT_TIMEOUT_MS,
  );
  const restartGap = await waitFor("the tape to show the restart as a gap row below the new prints", async () => {
    const rows = await sPage.evaluate(() => document.getElementById("s-tape").displayedTrades);
    const gap = rows.findIndex((r) => r.kind === "gap");
    return { ok: gap > 0, gap: rows[gap], detail: rows.slice(0, 5) };
  });
  if (restartGap.gap.reason !== "restart" || restartGap.gap.text !== "Gateway restarted: trades may have been missed") fail(`after the restart the tape's gap row is ${JSON.stringify(restartGap.gap)}, want reason restart`);
  const sTapeAfter = await checkTape(sPage, "s-tape", gw.base, "AAPL", TAPE_ROWS, "the trades page after the restart");
  const sSparkAfter = await checkSparklines(sPage, "s-grid", gw.base, ["AAPL", "MSFT"], "1m", "the trades page after the restart");
  const sUnexpected = sSeen.errors().filter((t) => !outageLine(t));
  if (sUnexpected.length) fail(`console errors on the trades page: ${sUnexpected.join(" | ")}`);
  await sPage.close();
  // The reconnect path of issue 25: the mixed page's new socket also sends symbols only.
  await checkMixed("mixed page after the restart", mBefore);
  if (!mWidgetSockets()[mBefore - 1].closed) fail("the mixed page's first socket is still open after the gateway was killed");
  const mAttempts = mWidgetSockets().length - mBefore;
  await mPage.close();
  ok(`gateway restarted on the same port: widgets resubscribed on one socket, are live, prices change and equal the gateway's, on the cross-origin page too; the mixed page's widgets (WebSocket attempts after the kill: ${mAttempts}) resubscribed ${mixedGood.join(", ")} only, nothing that is not a symbol, quotes equal the gateway's; the tape shows "${restartGap.gap.text}" under ${sTapeAfter.compared} new prints equal to the new gateway's, the sparklines its bars (${[...sSparkAfter].map(([sym, n]) => `${sym} ${n}`).join(", ")})`);

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
  // The grid goes: its symbols are unsubscribed but AAPL, which the tape still shows: AAPL is
  // subscribed again with trades only (its bars were the grid's).
  const beforeGrid = live.sent.length;
  await page.evaluate(() => document.getElementById("demo-grid").remove());
  const gridGone = await waitFor("the grid's symbols unsubscribed and AAPL subscribed again for the tape alone", () => {
    const after = live.sent.slice(beforeGrid);
    const u = after.filter((o) => o.op === "unsubscribe").flatMap((o) => o.symbols);
    const aapl = lastSubscribeOf({ sent: after }, "AAPL");
    return { ok: u.length > 0 && !!aapl, u, aapl, detail: after };
  });
  const gridOnly = ["AMZN", "GOOGL", "JPM", "META", "MSFT", "NVDA", "TSLA"];
  if (JSON.stringify([...gridGone.u].sort()) !== JSON.stringify(gridOnly)) fail(`removing the grid unsubscribed ${[...gridGone.u].sort()}, want ${gridOnly}`);
  if (extrasOf(gridGone.aapl) !== "trades" || JSON.stringify(gridGone.aapl.symbols) !== '["AAPL"]') fail(`after the grid went AAPL was subscribed with ${JSON.stringify(gridGone.aapl)}, want AAPL with trades only`);
  await page.evaluate(() => document.getElementById("demo-trades").remove());
  await waitFor("the shared socket to close when the last widget goes", () => live.closed);
  ok("symbols are refcounted: unsubscribed when their last widget goes, and subscribed again with what the remaining ones need (AAPL: trades only once the sparkline grid went); the socket closes with the last widget");

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

  // 11b. The rate-limit retry (a subscribe refused with rate_limited goes out again after 1 s), from a
  //      scripted server, with a string that is not a symbol on the element: neither the first op
  //      nor the retry carries it. The ack that finally comes also rejects an invalid_symbol echo cut
  //      to 40 characters (as PROTOCOL.md says the gateway does) that names nothing shown: ignored.
  const longGarbage = "<img src=x onerror=window.__xss=3> and then some more text";
  const limitedOps = [];
  await mock.routeWebSocket("ws://scripted.quotegw.test/limited", (ws) => {
    ws.onMessage((text) => {
      const op = JSON.parse(String(text));
      limitedOps.push(op);
      if (op.op !== "subscribe") return;
      const send = (...msgs) => ws.send(JSON.stringify(msgs));
      if (limitedOps.filter((o) => o.op === "subscribe").length === 1) {
        send({ type: "error", id: op.id, code: "rate_limited", message: "too many ops per second" });
        return;
      }
      send(
        { type: "ack", id: op.id, op: "subscribe", symbols: ["LIM"], rejected: [{ symbol: longGarbage.slice(0, 40), code: "invalid_symbol" }] },
        { type: "snapshot", symbol: "LIM", seq: 1, ts: 1732200000000, bid: "2.00", ask: "2.01", last: "2.00", volume: 5, status: "live" },
      );
    });
  });
  await mock.evaluate((garbage) => {
    const w = document.createElement("quote-ticker");
    w.id = "limited";
    w.setAttribute("url", "ws://scripted.quotegw.test/limited");
    w.setAttribute("fields", "bid,ask,last");
    w.setAttribute("symbols", `lim,${garbage}`);
    document.body.append(w);
  }, longGarbage);
  const limited = await waitFor("the rate-limited subscribe retried and LIM on screen", async () => {
    const v = (await mock.evaluate(() => window.__qtTest.read())).limited;
    return { ok: !!v.quotes.LIM && v.quotes.LIM.last.text === "2.00", v, detail: { v, ops: limitedOps } };
  });
  const limitedSubs = limitedOps.filter((o) => o.op === "subscribe");
  const limitedBad = limitedOps.filter((o) => "symbols" in o && !(Array.isArray(o.symbols) && o.symbols.every(isProtocolSymbol)));
  if (limitedBad.length) fail(`rate-limit retry: the widget sent strings that are not symbols: ${JSON.stringify(limitedBad)}`);
  if (limitedSubs.length !== 2 || limitedSubs.some((o) => JSON.stringify(o.symbols) !== '["LIM"]')) fail(`rate-limit retry: subscribes ${JSON.stringify(limitedSubs)}, want two, each of LIM only`);
  const limitedRejected = await mock.evaluate(() => document.getElementById("limited").rejectedSymbols);
  const garbageShown = longGarbage.replace(/[a-z]/g, (c) => c.toUpperCase());
  if (JSON.stringify(limitedRejected) !== JSON.stringify([{ symbol: garbageShown, code: "invalid_symbol" }])) {
    fail(`rate-limit retry: rejectedSymbols ${JSON.stringify(limitedRejected)}, want the garbage as invalid_symbol`);
  }
  if (!limited.v.rejectedText.includes(`${garbageShown} (not a symbol)`)) fail(`rate-limit retry: rejected list shows ${JSON.stringify(limited.v.rejectedText)}`);
  const xssL = await mock.evaluate(() => ({ flag: window.__xss, imgs: window.__qtTest.shadowImgCount() }));
  if (xssL.flag !== undefined || xssL.imgs !== 0) fail(`rate-limit retry: the garbage became script or markup (window.__xss = ${xssL.flag}, ${xssL.imgs} <img>/<svg>)`);
  ok("scripted server: a rate_limited subscribe is retried with the symbol only, never the string that is not one (listed as invalid_symbol, as text); an invalid_symbol echo cut to 40 characters breaks nothing");

  // 12. A gateway with an Origin allow-list (origin A only) and API keys. First the headers that
  //     decide whether a page may run the widget, as the browser gets them.
  const restrictedConfig = writeAccessConfig(tmp, "restricted.toml", config, [
    'auth = "api_key"',
    `api_keys = ["${API_KEY}", { key = "${THROTTLED_KEY}", tier = "throttled" }]`,
    `allowed_origins = ["${embed.originA}"]`,
  ]);
  const rgw = await startGateway("restricted gateway", restrictedConfig);
  const rScript = `${rgw.base}/widget/quote-ticker.js`;
  const rWs = `ws://127.0.0.1:${rgw.port}/ws`;
  for (const [g, origin, want, vary] of [
    [gw, embed.originA, "*", false],
    [rgw, embed.originA, embed.originA, true],
    [rgw, embed.originB, undefined, true],
  ]) {
    const r = await httpGet(`${g.base}/widget/quote-ticker.js`, { origin });
    const acao = r.headers["access-control-allow-origin"];
    if (r.status !== 200 || acao !== want) {
      fail(`${g.name}: GET /widget/quote-ticker.js with Origin ${origin}: ${r.status}, Access-Control-Allow-Origin ${JSON.stringify(acao)}; want 200, ${JSON.stringify(want)}`);
    }
    if (/\borigin\b/i.test(r.headers.vary || "") !== vary) fail(`${g.name}: Vary ${JSON.stringify(r.headers.vary)} for Origin ${origin}, want ${vary ? "Origin" : "none"}`);
  }
  ok("widget script CORS: * from the open gateway; the restricted one echoes an allowed Origin (Vary: Origin), and sends none for others");

  // 13. The token hook on the restricted gateway: a page on origin A imports the widget from the
  //     gateway (the echoed-Origin path) and gives it a provider calling its own token endpoint.
  embed.tokenCase("good", () => API_KEY);
  embed.tokenCase("wrong", () => WRONG_KEY);
  embed.tokenCase("broken", () => 503);
  const tGrid = (extra = "") =>
    `  <quote-ticker id="t-grid" layout="grid" fields="bid,ask,last,volume" symbols="${CHECKED_SYMBOLS.join(",")}"${extra}></quote-ticker>`;
  // The good page also has a tape: its history comes from GET /v1/trades, with the provider's token.
  const tTape = `\n  <quote-tape id="t-tape" symbols="AAPL" rows="5"></quote-tape>`;
  for (const c of ["good", "wrong", "broken"]) embed.page(`r-${c}`, embedPage(`Token: ${c}`, tokenScript(rScript, { all: c }), tGrid() + (c === "good" ? tTape : "")));
  const rPage = await context.newPage();
  const rSeen = watchPage(rPage, "token page", pageErrors);
  const rRest = recordRestCalls(rPage);
  const rSockets = [];
  rPage.on("websocket", (ws) => rSockets.push(ws.url()));
  await rPage.goto(`${embed.originA}/r-good.html`, { waitUntil: "load" });
  await waitFor("the token page's widget to be live on the restricted gateway", async () => {
    const v = (await rPage.evaluate(() => window.__qtTest.read()))["t-grid"];
    return { ok: !!v && v.state === "live", detail: { state: v && v.state, console: rSeen.errors() } };
  });
  await compareWithGateway("token page", rPage, "t-grid", `${rWs}?token=${API_KEY}`);
  const goodCalls = embed.calls("good");
  if (goodCalls.length !== 1 || goodCalls[0].renew) fail(`the token provider was called ${JSON.stringify(goodCalls)}, want once (before the first connect), renew false`);
  // The key goes in a header, to POST /v1/ticket; the WebSocket URL carries only the ticket.
  const sentTicket = new URL(rSockets[0]).searchParams.get("ticket");
  if (!rSockets[0].startsWith(`${rWs}?`) || !sentTicket || new URL(rSockets[0]).searchParams.has("token") || rSockets[0].includes(API_KEY)) fail(`the widget's WebSocket was ${rSockets[0]}, want ${rWs}?ticket=<a ticket>, no token`);
  const rTickets = rRest.filter((c) => c.path === "/v1/ticket");
  if (rTickets.length !== 1 || rTickets[0].method !== "POST" || rTickets[0].authorization !== `Bearer ${API_KEY}` || Object.keys(rTickets[0].query).length) fail(`the widget asked for tickets with ${JSON.stringify(rTickets)}, want one POST /v1/ticket with the provider's key as Authorization: Bearer`);
  const dom = await rPage.evaluate(() =>
    [document.documentElement.outerHTML, ...[...document.querySelectorAll("quote-ticker")].flatMap((w) => [w.shadowRoot.innerHTML, ...[...w.attributes].map((a) => a.value)])].join("\n"),
  );
  if (dom.includes(API_KEY)) fail("the token is in the page's DOM");
  await checkTape(rPage, "t-tape", rgw.base, "AAPL", 5, "token page", { token: API_KEY });
  const rReads = rRest.filter((c) => c.path === "/v1/trades");
  if (!rReads.length || rReads.some((c) => c.authorization !== `Bearer ${API_KEY}` || "token" in c.query)) fail(`the tape read the restricted gateway with ${JSON.stringify(rReads)}, want the provider's key as Authorization: Bearer, not in the URL`);
  if (embed.calls("good").length !== 1) fail(`the token provider was called ${embed.calls("good").length} times; the tape's GET /v1/trades must reuse the connection's token`);
  if (rSeen.errors().length) fail(`console errors on the token page: ${rSeen.errors().join(" | ")}`);
  // A throttled key: the tape's trades are refused (unauthorized: the tier has none), and that must
  // cost no quotes (found from outside: the widget dropped AAPL's quotes from the grid too).
  embed.tokenCase("throttled", () => THROTTLED_KEY);
  embed.page("r-throttled", embedPage("Token: throttled", tokenScript(rScript, { all: "throttled" }), tGrid() + `\n  <quote-tape id="t-tape" symbols="AAPL" rows="5"></quote-tape>`));
  const thPage = await context.newPage();
  const thSeen = watchPage(thPage, "throttled page", pageErrors);
  await thPage.goto(`${embed.originA}/r-throttled.html`, { waitUntil: "load" });
  const th = await waitFor("the throttled page's grid to show every symbol and its tape to say why it has no trades", async () => {
    const got = await thPage.evaluate((symbols) => {
      const grid = document.getElementById("t-grid");
      const tape = document.getElementById("t-tape");
      return {
        shown: symbols.filter((s) => s in grid.displayedQuotes),
        rejected: grid.rejectedSymbols,
        note: tape.shadowRoot.textContent.includes("trades not available"),
      };
    }, CHECKED_SYMBOLS);
    return { ok: got.shown.length === CHECKED_SYMBOLS.length && got.rejected.length === 0 && got.note, got, detail: got };
  });
  const thUnexpected = thSeen.errors().filter((t) => !/gateway error unauthorized/.test(t));
  if (thUnexpected.length) fail(`console errors on the throttled page: ${thUnexpected.join(" | ")}`);
  await thPage.close();
  ok(`throttled key: the tape's trades refused (unauthorized), every symbol's quotes still shown (${th.got.shown.join(", ")}), none listed as rejected, the tape says "trades not available"`);

  // 13b. Tickets keep the key out of every URL, console line and log line: a page on origin A whose
  //      first ticket is swapped for garbage (a refused handshake, as an expired ticket would be),
  //      then a real one (accepted), then that used ticket opened again (refused: single use).
  //      No console message of the page (its own, and Chromium's for the refused handshakes and
  //      requests) and no line the gateway wrote carries the key; no WebSocket URL has token=.
  await ticketLeakCheck({ embed, context, rgw, rWs, rScript, tGrid, pageErrors });

  ok(`setToken provider on ${embed.originA}: called once before connecting; its key reached the restricted gateway's POST /v1/ticket as Authorization: Bearer and the WebSocket carried ?ticket= only (live; quotes equal the gateway's) and the tape's GET /v1/trades as Authorization: Bearer (cross-origin, preflighted; prints equal the gateway's); not in the DOM; no console errors`);

  // 14. Refused pages must not spin. A token provider that fails, and origin B (HTTP 403 to its
  //     POST /v1/ticket: it serves its own copy of the widget, since the gateway's script is not
  //     CORS-readable there, and sends the right key, so only its Origin is refused) are failed
  //     connects; each retry must wait at least the backoff's minimum, which doubles: 250, 500,
  //     1000 ms. A wrong key (HTTP 401 to its POST /v1/ticket) is a refused token, as a 1008: the
  //     provider is asked once more (renew: true), then the widget stops ("unauthorized") and
  //     opens no WebSocket at all. A fourth page on origin B loads the script from the restricted
  //     gateway: Chromium must block it (no Access-Control-Allow-Origin for B).
  embed.page(
    "r-self-hosted",
    embedPage("Origin B, self-hosted widget", tokenScript("/quote-ticker.js", { all: "good" }), tGrid(` url="${rWs}"`)),
  );
  embed.page("r-blocked", embedPage("Origin B, widget from the restricted gateway", `  <script type="module" src="${rScript}"></script>`, tGrid()));
  const refusedBefore = {
    issued: await rgw.metric("quotegw_tickets_issued_total", "", API_KEY),
    unauthorized: await rgw.metric("quotegw_connections_refused_total", 'reason="unauthorized"', API_KEY),
  };
  const refused = {};
  for (const [name, origin] of [["r-wrong", embed.originA], ["r-broken", embed.originA], ["r-self-hosted", embed.originB], ["r-blocked", embed.originB]]) {
    const pg = await context.newPage();
    await pg.addInitScript(countWebSockets);
    refused[name] = { page: pg, seen: watchPage(pg, name, pageErrors), origin };
  }
  await Promise.all(Object.entries(refused).map(([name, r]) => r.page.goto(`${r.origin}/${name}.html`, { waitUntil: "load" })));
  const attemptsOf = (name) => refused[name].page.evaluate(() => window.__wsAttempts);
  const ticketsOf = (name) => refused[name].page.evaluate(() => window.__ticketAttempts);
  // The failing provider's calls as its token endpoint saw them: a gap there is at least the
  // widget's delay too (the earlier call's answer, and the later call's request, only add to it).
  const providerCallsOf = (c) => embed.calls(c).map((call) => ({ t: call.at }));
  const watched = await waitFor(`${REFUSED_ATTEMPTS} attempts by each refused page`, async () => {
    const got = {
      "r-self-hosted": await ticketsOf("r-self-hosted"),
      "r-broken": providerCallsOf("broken"),
    };
    const counts = Object.fromEntries(Object.entries(got).map(([k, v]) => [k, v.length]));
    return { ok: Object.values(counts).every((n) => n >= REFUSED_ATTEMPTS), got, detail: counts };
  }, 30_000);
  for (const [name, list] of Object.entries(watched.got)) {
    const times = list.map((a) => a.t);
    for (let k = 1; k < times.length; k++) {
      const least = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** (k - 1)) / 2;
      if (times[k] - times[k - 1] < least - TIMER_SLACK_MS) {
        fail(`${name}: attempt ${k + 1} came ${Math.round(times[k] - times[k - 1])} ms after attempt ${k}, less than the backoff's ${least} ms (attempts at ${times.map(Math.round)} ms)`);
      }
    }
    const v = (await refused[name].page.evaluate(() => window.__qtTest.read()))["t-grid"];
    if (v.state !== "reconnecting" || !/reconnecting/i.test(v.connText)) fail(`${name}: the widget shows ${v.state} / ${JSON.stringify(v.connText)}, want reconnecting`);
  }
  for (const a of watched.got["r-self-hosted"]) if (a.authorization !== `Bearer ${API_KEY}` || new URL(a.url).search) fail(`r-self-hosted asked ${a.url} with ${a.authorization}, want the good key as Authorization: Bearer`);
  if ((await attemptsOf("r-self-hosted")).length !== 0) fail("r-self-hosted opened a WebSocket though its Origin gets no ticket");
  const wrongView = await waitFor("the wrong-key page to stop (unauthorized) after one renew", async () => {
    const v = (await refused["r-wrong"].page.evaluate(() => window.__qtTest.read()))["t-grid"];
    return { ok: v.state === "unauthorized", v, detail: v };
  });
  const wrongCalls = embed.calls("wrong");
  if (wrongCalls.length !== 2 || wrongCalls[0].renew || !wrongCalls[1].renew) fail(`r-wrong: provider calls ${JSON.stringify(wrongCalls)}, want 2: renew false, then true`);
  const wrongTickets = await ticketsOf("r-wrong");
  if (wrongTickets.length !== 2 || wrongTickets.some((a) => a.authorization !== `Bearer ${WRONG_KEY}`)) fail(`r-wrong asked for tickets ${JSON.stringify(wrongTickets)}, want 2 with the wrong key`);
  if ((await attemptsOf("r-wrong")).length !== 0) fail("r-wrong opened a WebSocket without a ticket");
  if (wrongView.v.info.closeCode !== null || wrongView.v.info.retryDelayMs !== null || !/^not authorized/i.test(wrongView.v.connText)) fail(`r-wrong: ${JSON.stringify(wrongView.v)}, want "Not authorized: <the gateway's message>", closeCode null, no retry pending`);
  if ((await attemptsOf("r-broken")).length !== 0) fail("r-broken opened a WebSocket without a token");
  if (!refused["r-broken"].seen.console.some((m) => m.text.startsWith(`quote-ticker: the token provider for ${rWs} failed: `))) {
    fail(`r-broken: no console warning that the token provider failed; console: ${JSON.stringify(refused["r-broken"].seen.console)}`);
  }
  const refusedAfter = {
    issued: await rgw.metric("quotegw_tickets_issued_total", "", API_KEY),
    unauthorized: await rgw.metric("quotegw_connections_refused_total", 'reason="unauthorized"', API_KEY),
  };
  // Origin B's POSTs end at their CORS preflight (no Access-Control-Allow-Origin for B): the
  // gateway issues none of these pages a ticket.
  if (refusedAfter.issued !== refusedBefore.issued) fail(`the restricted gateway issued ${refusedAfter.issued - refusedBefore.issued} tickets to the refused pages, want none`);
  if (!refused["r-self-hosted"].seen.errors().some((t) => /CORS policy/.test(t) && t.includes("/v1/ticket"))) fail(`origin B: no CORS error for its POST /v1/ticket; console: ${JSON.stringify(refused["r-self-hosted"].seen.errors())}`);
  if (refusedAfter.unauthorized - refusedBefore.unauthorized < 2) fail(`the restricted gateway refused ${refusedAfter.unauthorized - refusedBefore.unauthorized} ticket requests as unauthorized, want the wrong key's 2`);
  const blocked = refused["r-blocked"];
  if (await blocked.page.evaluate(() => !!customElements.get("quote-ticker"))) fail(`origin B ran the widget script from the restricted gateway, whose allow-list has only ${embed.originA}`);
  if (!blocked.seen.errors().some((t) => /CORS policy/.test(t) && t.includes(rScript))) fail(`origin B: no CORS error for ${rScript}; console: ${JSON.stringify(blocked.seen.errors())}`);
  if ((await attemptsOf("r-blocked")).length !== 0) fail("origin B opened a WebSocket without the widget");
  ok(`refused pages back off (each retry >= 250, 500, 1000 ms after the one before) and show reconnecting: failing token provider (no socket), origin B (its POST /v1/ticket stopped at the CORS preflight; no ticket issued, no socket); a wrong key (401 to POST /v1/ticket) asks the provider once more, then stops: unauthorized, no socket; origin B cannot load the script from the restricted gateway (CORS)`);

  // 15. "Until something changes": the wrong-key page gets a good provider and goes live at once.
  const wrong = refused["r-wrong"].page;
  await wrong.evaluate(() =>
    customElements.get("quote-ticker").setToken(async () => (await fetch("/api/quote-token?case=good")).text()),
  );
  await waitFor("the wrong-key page to be live after setToken with a good provider", async () => {
    const v = (await wrong.evaluate(() => window.__qtTest.read()))["t-grid"];
    return { ok: v.state === "live", detail: v.state };
  });
  ok("after QuoteTicker.setToken(a good provider) the wrong-key page is live");
  for (const r of Object.values(refused)) await r.page.close();

  // 16. Close code 1008 on a gateway with JWTs: a token that expires while connected. With a
  //     provider, one fresh token ({ renew: true }) and at once live again; when that one expires
  //     within 10 s too, the widget stops (no retry) until setToken is called. A token in the url
  //     attribute (no provider) stops at the first 1008; an attribute change tries again.
  const jwtConfig = writeAccessConfig(tmp, "jwt.toml", config, ['auth = "jwt"', `jwt_hs256_secret = "${JWT_SECRET}"`]);
  const jgw = await startGateway("jwt gateway", jwtConfig);
  const jWs = `ws://127.0.0.1:${jgw.port}/ws`;
  const minted = [];
  const mint = (ttlS) => {
    const t = signJwt({ sub: "widget-test", exp: Math.floor(Date.now() / 1000) + ttlS }, JWT_SECRET);
    minted.push(t);
    SECRETS.push(t);
    return t;
  };
  embed.tokenCase("refresh", (n) => mint(n === 1 ? SHORT_TOKEN_S : LONG_TOKEN_S));
  embed.tokenCase("expiring", () => mint(SHORT_TOKEN_S));
  embed.tokenCase("long", () => mint(LONG_TOKEN_S));
  const caseUrl = (c) => `${jWs}?case=${c}`;
  embed.page("jwt", () =>
    embedPage(
      "Expiring tokens",
      tokenScript(`${jgw.base}/widget/quote-ticker.js`, { scoped: { [caseUrl("refresh")]: "refresh", [caseUrl("expiring")]: "expiring" } }),
      [
        `  <quote-ticker id="jwt-refresh" url="${caseUrl("refresh")}" symbols="AAPL,MSFT"></quote-ticker>`,
        `  <quote-ticker id="jwt-expiring" url="${caseUrl("expiring")}" symbols="AAPL,MSFT"></quote-ticker>`,
        // Minted when the page is served, with a little more time: it must still be valid when the
        // widget connects.
        `  <quote-ticker id="jwt-in-url" url="${caseUrl("in-url")}&amp;token=${mint(SHORT_TOKEN_S + 2)}" symbols="AAPL,MSFT"></quote-ticker>`,
      ].join("\n"),
    ),
  );
  const jPage = await context.newPage();
  const jSeen = watchPage(jPage, "jwt page", pageErrors);
  const jSockets = [];
  jPage.on("websocket", (ws) => jSockets.push(ws.url()));
  const jRest = recordRestCalls(jPage);
  // The tokens each element's POST /v1/ticket carried (every element of this page asks the same
  // gateway for tickets; the token tells them apart).
  const ticketTokens = () => jRest.filter((c) => c.path === "/v1/ticket").map((c) => (c.authorization || "").replace(/^Bearer /, ""));
  const readJ = () => jPage.evaluate(() => window.__qtTest.read());
  const jEvents = (id) => jPage.evaluate((i) => window.__qtTest.events.filter((e) => e.id === i), id);
  await jPage.goto(`${embed.originA}/jwt.html`, { waitUntil: "load" });
  await waitFor("the refreshed widget live again after a 1008, and the others stopped", async () => {
    const v = await readJ();
    const refreshed = (await jEvents("jwt-refresh")).some((e) => e.closeCode === 1008);
    const states = Object.fromEntries(Object.entries(v).map(([id, w]) => [id, `${w.state}: ${w.connText}`]));
    return {
      ok: refreshed && v["jwt-refresh"].state === "live" && v["jwt-expiring"].state === "unauthorized" && v["jwt-in-url"].state === "unauthorized",
      detail: { states, console: jSeen.console.map((m) => m.text) },
    };
  }, 30_000);
  const refreshEvents = await jEvents("jwt-refresh");
  const expiry = refreshEvents.find((e) => e.closeCode === 1008);
  if (expiry.state !== "reconnecting" || expiry.closeReason !== "token expired" || expiry.retryDelayMs !== 0) {
    fail(`jwt-refresh: after the 1008 the widget said ${JSON.stringify(expiry)}, want reconnecting at once (retryDelayMs 0), reason "token expired"`);
  }
  const refreshCalls = embed.calls("refresh");
  if (refreshCalls.length !== 2 || refreshCalls[0].renew || !refreshCalls[1].renew) fail(`jwt-refresh: provider calls ${JSON.stringify(refreshCalls)}, want 2: renew false, then true`);
  const refreshTickets = jSockets.filter((u) => u.startsWith(caseUrl("refresh"))).map((u) => new URL(u).searchParams);
  if (refreshTickets.length !== 2 || refreshTickets.some((q) => !q.get("ticket") || q.has("token")) || refreshTickets[0].get("ticket") === refreshTickets[1].get("ticket")) fail(`jwt-refresh: sockets ${jSockets.filter((u) => u.startsWith(caseUrl("refresh")))}, want 2 with different tickets and no token`);
  const jView = await readJ();
  for (const id of ["jwt-expiring", "jwt-in-url"]) {
    if (!/not authorized: token expired/i.test(jView[id].connText)) fail(`${id}: shows ${JSON.stringify(jView[id].connText)}, want "Not authorized: token expired"`);
    const info = jView[id].info;
    if (info.closeCode !== 1008 || info.retryDelayMs !== null) fail(`${id}: connectionInfo ${JSON.stringify(info)}, want closeCode 1008 and no retry pending`);
  }
  const expiringCalls = embed.calls("expiring");
  if (expiringCalls.length < 2 || expiringCalls[0].renew || !expiringCalls.some((c) => c.renew)) fail(`jwt-expiring: provider calls ${JSON.stringify(expiringCalls)}, want a first one and a renew: true`);
  const attemptsFor = (c) => jSockets.filter((u) => u.startsWith(caseUrl(c))).length;
  const inUrlToken = await jPage.evaluate(() => new URL(document.getElementById("jwt-in-url").getAttribute("url")).searchParams.get("token"));
  const inUrlTickets = () => ticketTokens().filter((t) => t === inUrlToken).length;
  if (inUrlTickets() < 1) fail("jwt-in-url: the token in its url attribute was never traded for a ticket (POST /v1/ticket)");
  if (jSockets.some((u) => new URL(u).searchParams.has("token"))) fail(`the jwt page opened a WebSocket with token=: ${jSockets.filter((u) => u.includes("token="))}`);
  const quiet = { expiring: attemptsFor("expiring"), inUrl: attemptsFor("in-url"), tickets: ticketTokens().length, calls: expiringCalls.length };
  await sleep(STOPPED_QUIET_MS);
  if (attemptsFor("expiring") !== quiet.expiring || attemptsFor("in-url") !== quiet.inUrl || ticketTokens().length !== quiet.tickets || embed.calls("expiring").length !== quiet.calls) {
    fail(`a widget stopped after 1008 tried again by itself within ${STOPPED_QUIET_MS} ms`);
  }
  ok("1008 (token expired): with a provider, one renew and live again at once; expiring again within 10 s, or with the token in the url, it stops: \"Not authorized: token expired\", no retry");

  await jPage.evaluate((url) => {
    customElements.get("quote-ticker").setToken(async ({ renew }) => (await fetch(`/api/quote-token?case=long&renew=${renew}`)).text(), url);
  }, caseUrl("expiring"));
  const inUrlBefore = inUrlTickets();
  await jPage.evaluate(() => document.getElementById("jwt-in-url").setAttribute("symbols", "AAPL"));
  // The url's token has expired: its new POST /v1/ticket is refused (401), so it tries once and
  // stops again (no provider to renew it).
  await waitFor("the stopped widgets to try again: setToken, an attribute change", async () => {
    const v = await readJ();
    return { ok: v["jwt-expiring"].state === "live" && inUrlTickets() > inUrlBefore && v["jwt-in-url"].state === "unauthorized", detail: { expiring: v["jwt-expiring"].state, inUrl: v["jwt-in-url"].state, inUrlTickets: inUrlTickets() } };
  });
  await jPage.evaluate(() => document.getElementById("jwt-in-url").remove()); // its token stays expired
  ok("a widget stopped after 1008 connects again when setToken is called (live) or its attributes change");

  // 17. What the widget logs never carries a query string or a token (the 1008 stop of a url with
  //     ?token= names that url). Chromium's own lines for a refused handshake do carry the full URL;
  //     no script can change that, so they are only counted here.
  const allConsole = [xSeen, mSeen, rSeen, jSeen, ...Object.values(refused).map((r) => r.seen)].flatMap((s) => s.console);
  const secrets = [API_KEY, WRONG_KEY, ...minted];
  const widgetLines = allConsole.filter((m) => m.text.startsWith("quote-ticker:")).map((m) => m.text);
  for (const line of widgetLines) {
    if (/[a-z]+:\/\/[^\s'"]*[?#]/i.test(line) || /token=[^…]/.test(line) || secrets.some((t) => line.includes(t))) fail(`the widget logged a URL with its query or a token: ${line}`);
  }
  if (!widgetLines.some((l) => l.includes(`${jWs} closed the connection with 1008`))) fail(`no widget line names the url of the stopped connection; widget lines: ${JSON.stringify(widgetLines)}`);
  // Tickets keep tokens out of WebSocket URLs, so Chromium's own lines for refused handshakes
  // (which show the full URL) carry none either.
  const browserLeaks = allConsole.filter((m) => !m.text.startsWith("quote-ticker:") && secrets.some((t) => m.text.includes(t)));
  if (browserLeaks.length) fail(`Chromium's console lines carry a token: ${browserLeaks[0].text}`);
  ok(`${widgetLines.length} widget console lines: URLs without query, no token`);

  // 18. Close 1001 (the gateway shutting down: SIGTERM) brings every connection back after a random
  //     delay in [0, 5 s], not a fixed one: eight connections (one widget each, on urls that differ
  //     in a query parameter) must choose delays in that range that are spread out. The chance
  //     that eight uniform draws fall within 500 ms of each other is below 1e-6.
  await xPage.evaluate(([base, n]) => {
    for (let i = 1; i <= n; i++) {
      const w = document.createElement("quote-ticker");
      w.id = `jitter-${i}`;
      w.setAttribute("url", `${base}?jitter=${i}`);
      w.setAttribute("fields", "last");
      w.setAttribute("symbols", "AAPL");
      document.body.append(w);
    }
  }, [wsUrl, JITTER_WIDGETS]);
  const allLiveX = async () => {
    const v = await readX();
    return { ok: Object.values(v).every((w) => w.state === "live"), detail: Object.entries(v).map(([id, w]) => `${id}:${w.state}`) };
  };
  await waitFor("the jitter widgets live", allLiveX);
  const mark = await xPage.evaluate(() => window.__qtTest.events.length);
  await gw.stop("SIGTERM");
  const jitterIds = Array.from({ length: JITTER_WIDGETS }, (_, i) => `jitter-${i + 1}`);
  const firstLoss = await waitFor("every jitter widget to see its connection close", async () => {
    const first = {};
    for (const e of (await xPage.evaluate(() => window.__qtTest.events)).slice(mark)) {
      if (e.state === "reconnecting" && !first[e.id]) first[e.id] = e;
    }
    return { ok: jitterIds.every((id) => first[id]), first, detail: Object.keys(first) };
  });
  const delays = [];
  for (const id of jitterIds) {
    const e = firstLoss.first[id];
    if (e.closeCode !== 1001) fail(`${id}: the stopping gateway closed it with ${e.closeCode}, want 1001`);
    if (!(e.retryDelayMs >= 0 && e.retryDelayMs <= RESTART_JITTER_MS)) fail(`${id}: retry in ${e.retryDelayMs} ms after 1001, want within [0, ${RESTART_JITTER_MS}]`);
    delays.push(e.retryDelayMs);
  }
  const spread = Math.max(...delays) - Math.min(...delays);
  if (spread < 500) fail(`the 1001 retry delays ${delays} lie within ${spread} ms of each other: not jittered over [0, ${RESTART_JITTER_MS}] ms`);
  await gw.startReady();
  await waitFor("every widget of the cross-origin page live again after the graceful restart", allLiveX, RECONNECT_TIMEOUT_MS);
  await compareWithGateway("cross-origin page after the graceful restart", xPage, "x-grid");
  const xUnexpected = xSeen.errors().filter((t) => !outageLine(t));
  if (xUnexpected.length) fail(`console errors on the cross-origin page: ${xUnexpected.join(" | ")}`);
  ok(`close 1001 (SIGTERM): retry delays ${[...delays].sort((a, b) => a - b).join(", ")} ms (full jitter over [0, ${RESTART_JITTER_MS}]); all live again after the restart; cross-origin page: no console errors but the outages' refused WebSockets`);

  if (pageErrors.length) fail(`uncaught errors in the page: ${pageErrors.join(" | ")}`);
  ok("no uncaught errors in any page");
  const gatewayLeaks = state.gateways.flatMap((g) => g.leaks.map((l) => `${g.name}: ${l}`));
  if (gatewayLeaks.length) fail(`gateway log lines carry a credential: ${gatewayLeaks.slice(0, 3).join(" | ")}`);
  ok(`no line any of the ${state.gateways.length} gateways wrote carries an API key or JWT`);
}

// ---------------------------------------------------------------------------------------------

async function cleanup(state) {
  await stopAll({ context: state.context, gateways: state.gateways, servers: [state.embed] });
  removeTemp(state);
}

function removeTemp(state) {
  removeDirs([state.userDataDir, state.tmpDir]);
}

// Installing (first run on a machine) is not part of the timed test.
let inputs;
let chromium;
try {
  inputs = resolveInputs();
  ({ chromium } = loadPlaywright());
} catch (e) {
  log(`FAIL: ${describeError(e)}`);
  process.exit(1);
}

const state = { gateways: [] };
const watchdog = startWatchdog({
  what: "widget",
  timeoutMs: OVERALL_TIMEOUT_MS,
  gateways: state.gateways,
  tailLines: 40,
  onTimeout: () => removeTemp(state),
});

let exitCode = 0;
try {
  await main(state, inputs, chromium);
  log(`widget: all ${passedCount()} checks passed`);
} catch (e) {
  exitCode = 1;
  log(`FAIL: ${describeError(e)}`);
  for (const g of state.gateways) log(g.report(20));
} finally {
  await cleanup(state);
  clearTimeout(watchdog);
}
process.exit(exitCode);
