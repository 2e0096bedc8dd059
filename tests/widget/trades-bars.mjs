// The trades-and-bars checks of tests/widget/run.mjs: <quote-ticker sparkline="..."> and
// <quote-tape>, on pages from another origin (the embed server), compared with what the test itself
// reads from the gateway (GET /v1/bars, GET /v1/trades). Every wait is a bounded poll for a
// condition: the feed is live, so a widget and a separate read can be a trade apart at any instant,
// and a comparison is retried until they agree (never a check of speed).
//
// Failing, sleeping and comparing decimals come from tests/widget/toolkit.mjs, as in run.mjs.

import { POLL_MS, decimalCmp, fail, sleep } from "./toolkit.mjs";

/** Every WebSocket a page opens: the ops it sent and the messages it received, parsed. */
export function recordSockets(page) {
  const sockets = [];
  page.on("websocket", (ws) => {
    const s = { url: ws.url(), sent: [], received: [], closed: false };
    sockets.push(s);
    ws.on("framesent", (f) => {
      try {
        s.sent.push(JSON.parse(f.payload));
      } catch {
        s.sent.push({ raw: String(f.payload) });
      }
    });
    ws.on("framereceived", (f) => {
      try {
        const frame = JSON.parse(f.payload);
        for (const m of Array.isArray(frame) ? frame : [frame]) s.received.push(m);
      } catch {
        // not JSON: nothing to check here
      }
    });
    ws.on("close", () => (s.closed = true));
  });
  return sockets;
}

/** Requests a page makes to the gateway's /v1/ routes (bars, trades). */
export function recordRestCalls(page) {
  const calls = [];
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith("/v1/")) {
      calls.push({ method: r.method(), url: r.url(), path: u.pathname, query: Object.fromEntries(u.searchParams), authorization: r.headers().authorization || null });
    }
  });
  return calls;
}

async function getJson(url, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(5000) });
  const body = await res.json().catch(() => null);
  return { status: res.status, body };
}

/** The gateway's own bars and trades, as this test reads them. */
export async function gatewayBars(base, symbol, interval, limit = 390) {
  const r = await getJson(`${base}/v1/bars?symbol=${symbol}&interval=${interval}&limit=${limit}`);
  if (r.status !== 200 || !r.body || !Array.isArray(r.body.bars)) fail(`GET /v1/bars for ${symbol} ${interval}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.bars;
}

export async function gatewayTrades(base, symbol, limit, token) {
  const r = await getJson(`${base}/v1/trades?symbol=${symbol}&limit=${limit}`, token);
  if (r.status !== 200 || !r.body || !Array.isArray(r.body.trades)) fail(`GET /v1/trades for ${symbol}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.trades;
}

/** What a sparkline element draws, read from its shadow DOM and its displayedSparklines. */
function readSparklines(page, id) {
  return page.evaluate((id) => {
    const w = document.getElementById(id);
    const svgs = {};
    for (const svg of w.shadowRoot.querySelectorAll('svg[part~="sparkline"][data-symbol]')) {
      if (svg.closest("[hidden]")) continue;
      const pts = (svg.querySelector("polyline").getAttribute("points") || "").trim();
      svgs[svg.dataset.symbol] = {
        points: pts ? pts.split(/\s+/).map((p) => p.split(",").map(Number)) : [],
        pointsAttr: svg.dataset.points,
        lastClose: svg.dataset.lastClose,
        state: svg.dataset.state,
        label: svg.getAttribute("aria-label") || "",
      };
    }
    return { svgs, data: w.displayedSparklines };
  }, id);
}

/**
 * The sparkline of each of `symbols` on element `id` equals the gateway's GET /v1/bars: as many
 * points as bars, the closes (exact strings, oldest first) the same, the last one named in its
 * label; and the geometry agrees with the closes (x grows; y moves opposite to an exact decimal
 * comparison, as SVG's y grows downwards). The open bar moves, so both are read again until they
 * agree for every symbol (bounded).
 */
export async function checkSparklines(page, id, base, symbols, interval, label) {
  const matched = new Map(); // symbol -> bars count seen equal
  let last = null;
  for (let attempt = 0; attempt < 150 && matched.size < symbols.length; attempt++) {
    for (const sym of symbols) {
      if (matched.has(sym)) continue;
      const bars = await gatewayBars(base, sym, interval);
      const again = await readSparklines(page, id);
      const s = again.svgs[sym];
      const d = again.data[sym];
      const closes = bars.map((b) => b.close);
      last = { sym, gateway: closes.slice(-5), gatewayCount: closes.length, shown: s && { points: s.points.length, lastClose: s.lastClose, state: s.state }, data: d && d.closes.slice(-5) };
      if (!s || !d || bars.length === 0) continue;
      const same =
        s.points.length === bars.length &&
        s.pointsAttr === String(bars.length) &&
        s.lastClose === closes[closes.length - 1] &&
        JSON.stringify(d.closes) === JSON.stringify(closes) &&
        d.interval === interval &&
        d.error === null &&
        s.state === "ok";
      if (!same) continue;
      if (!s.label.includes(closes[closes.length - 1])) fail(`${label}: ${sym} sparkline label ${JSON.stringify(s.label)} does not name the last close ${closes[closes.length - 1]}`);
      for (let i = 1; i < s.points.length; i++) {
        const [x0, y0] = s.points[i - 1];
        const [x1, y1] = s.points[i];
        if (!(x1 > x0)) fail(`${label}: ${sym} sparkline x does not grow at point ${i}: ${x0} -> ${x1}`);
        const c = decimalCmp(closes[i], closes[i - 1]);
        const dy = Math.sign(y0 - y1); // up on screen when the close rose
        if (dy !== c) fail(`${label}: ${sym} sparkline point ${i} goes ${dy > 0 ? "up" : dy < 0 ? "down" : "flat"} for closes ${closes[i - 1]} -> ${closes[i]}`);
      }
      matched.set(sym, bars.length);
    }
    if (matched.size < symbols.length) await sleep(POLL_MS);
  }
  if (matched.size < symbols.length) {
    fail(`${label}: the sparklines of ${symbols.filter((s) => !matched.has(s))} never equalled GET /v1/bars (${interval}); last seen: ${JSON.stringify(last)}`);
  }
  return matched;
}

/** "HH:MM:SS.mmm" in local time, as the widget shows a trade's ts (written independently). */
function localTime(ts) {
  const d = new Date(ts);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** The tick mark the newer of two consecutive prints must carry, by the tick test. */
function expectedTick(newer, older) {
  const c = decimalCmp(newer.price, older.price);
  if (c > 0) return "up";
  if (c < 0) return "down";
  if (older.tick === "up" || older.tick === "zero-up") return "zero-up";
  if (older.tick === "down" || older.tick === "zero-down") return "zero-down";
  return null;
}

/**
 * The tape `id`'s newest rows for `symbol` (down to its first gap row) equal the gateway's prints
 * (GET /v1/trades, newest `limit`): the same seq, ts (and the time shown from it), price (the exact
 * string) and size, in order, no duplicates; each row's tick mark agrees with the tick test against
 * the row below it. Retried until a read of both agrees (bounded). Returns the rows compared.
 * `token`: the test reads the gateway with it (a gateway with auth).
 */
export async function checkTape(page, id, base, symbol, limit, label, { minRows = 1, token } = {}) {
  let last = null;
  for (let attempt = 0; attempt < 150; attempt++) {
    const rows = await page.evaluate((id) => document.getElementById(id).displayedTrades, id);
    const mine = rows.filter((r) => r.symbol === symbol);
    const firstGap = mine.findIndex((r) => r.kind === "gap");
    const top = firstGap < 0 ? mine : mine.slice(0, firstGap);
    const gateway = (await gatewayTrades(base, symbol, limit, token)).reverse();
    last = { shown: top.slice(0, 4), gateway: gateway.slice(0, 4) };
    if (top.length < minRows) {
      await sleep(POLL_MS);
      continue;
    }
    const seqs = mine.filter((r) => r.kind === "trade").map((r) => r.seq);
    if (new Set(seqs).size !== seqs.length) fail(`${label}: the tape shows a print twice: seqs ${seqs}`);
    const k = gateway.findIndex((g) => g.seq === top[0].seq);
    if (k < 0) {
      await sleep(POLL_MS);
      continue; // the tape and the read are a print apart: read both again
    }
    const n = Math.min(top.length, gateway.length - k);
    const diffs = [];
    for (let i = 0; i < n; i++) {
      const r = top[i];
      const g = gateway[k + i];
      if (r.seq !== g.seq || r.price !== g.price || r.size !== g.size.toLocaleString("en-US") || r.ts !== g.ts || r.time !== localTime(g.ts)) {
        diffs.push(`row ${i + 1}: shown ${JSON.stringify(r)} != gateway ${JSON.stringify(g)}`);
      }
    }
    if (diffs.length) {
      last.diffs = diffs.slice(0, 3);
      await sleep(POLL_MS);
      continue;
    }
    for (let i = 0; i + 1 < n; i++) {
      const want = expectedTick(top[i], top[i + 1]);
      if (top[i].tick !== want) fail(`${label}: ${symbol} print ${top[i].seq} at ${top[i].price} after ${top[i + 1].price} (${top[i + 1].tick}) shows tick ${top[i].tick}, want ${want}`);
    }
    return { rows, top, compared: n };
  }
  fail(`${label}: the tape's ${symbol} rows never equalled GET /v1/trades; last seen: ${JSON.stringify(last)}`);
}

/** The last subscribe op a socket sent that named `symbol`, or undefined. */
export function lastSubscribeOf(socket, symbol) {
  return [...socket.sent].reverse().find((o) => o.op === "subscribe" && Array.isArray(o.symbols) && o.symbols.includes(symbol));
}

/** "trades" and "bars" of an op as a short string, for messages: "trades+1m", "1m", "none". */
export function extrasOf(op) {
  if (!op) return "no subscribe";
  const parts = [];
  if ("trades" in op) parts.push(op.trades === true ? "trades" : `trades=${JSON.stringify(op.trades)}`);
  if ("bars" in op) parts.push(op.bars);
  return parts.join("+") || "none";
}

/**
 * A sparkline refreshed from GET /v1/bars (its interval is not the one its symbol's subscription
 * carries): as many points as the gateway's bars and the same closes but the open bar's, whose
 * last change the widget reads at its next refresh. Retried until they agree (bounded).
 */
export async function checkPolledSparkline(page, id, base, symbol, interval, label) {
  let last = null;
  for (let attempt = 0; attempt < 150; attempt++) {
    const closes = (await gatewayBars(base, symbol, interval)).map((b) => b.close);
    const d = await page.evaluate(([i, s]) => document.getElementById(i).displayedSparklines[s], [id, symbol]);
    last = { gateway: closes.slice(-3), shown: d };
    if (d && !d.error && closes.length > 0 && d.closes.length === closes.length && JSON.stringify(d.closes.slice(0, -1)) === JSON.stringify(closes.slice(0, -1))) {
      return closes.length;
    }
    await sleep(POLL_MS);
  }
  fail(`${label}: the ${interval} sparkline of ${symbol} never matched GET /v1/bars; last seen: ${JSON.stringify(last)}`);
}
