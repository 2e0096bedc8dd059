// <quote-ticker>: live stock quotes from a quotegw gateway, as one custom element.
//
// One plain ES module: no framework, no build step. The gateway serves it at /widget/quote-ticker.js.
//
//   <script type="module" src="https://quotes.example.com/widget/quote-ticker.js"></script>
//   <quote-ticker symbols="AAPL,MSFT,NVDA" layout="grid"></quote-ticker>
//
// Attributes
//   symbols  comma-separated tickers, case-insensitive ("aapl, msft"). An entry that is not a symbol
//            by the protocol's rule (see below) is listed as rejected, "not a symbol", and never sent.
//   url      the gateway's WebSocket URL. Default: /ws on the host that served this script
//            (ws:// for http, wss:// for https). A relative URL resolves against the page.
//   fields   comma-separated quote fields, in display order. Default "bid,ask,last,volume".
//            Any of: bid, ask, last, bid_size, ask_size, last_size, volume, ts.
//   layout   "tape" (a scrolling strip) or "grid" (a table). Default "grid".
//
// Theming: CSS custom properties, set on quote-ticker or on any ancestor. Defaults in brackets.
//   --quote-ticker-font            font family        [system-ui, sans-serif]
//   --quote-ticker-mono            font for numbers   [ui-monospace, SFMono-Regular, Menlo, monospace]
//   --quote-ticker-font-size       base size          [14px]
//   --quote-ticker-bg              background         [#ffffff]
//   --quote-ticker-fg              text               [#1b1f24]
//   --quote-ticker-muted           secondary text     [#6a737d]
//   --quote-ticker-border          lines and frame    [#d8dee4]
//   --quote-ticker-header-bg       grid header        [#f6f8fa]
//   --quote-ticker-row-alt-bg      grid zebra rows    [transparent]
//   --quote-ticker-radius          corner radius      [6px]
//   --quote-ticker-up              price went up      [#1a7f37]
//   --quote-ticker-down            price went down    [#cf222e]
//   --quote-ticker-up-flash        flash background   [rgba(26,127,55,.22)]
//   --quote-ticker-down-flash      flash background   [rgba(207,34,46,.22)]
//   --quote-ticker-flash-duration  flash length       [900ms]
//   --quote-ticker-stale           stale badge        [#9a6700]
//   --quote-ticker-halted          halted badge       [#cf222e]
//   --quote-ticker-live            "live" dot         [#1a7f37]
//   --quote-ticker-warn            connecting dot     [#bf8700]
//   --quote-ticker-tape-speed      tape scroll speed, pixels per second (a plain number) [60]
// Parts for ::part(): container, bar, connection, body, table, row, symbol, price, badge, rejected.
//
// Tokens (a gateway with auth = "api_key" or "jwt"): give the widget a token from script, so that it
// never sits in the DOM (a url attribute is visible to every script and extension on the page):
//
//   import { QuoteTicker } from "https://quotes.example.com/widget/quote-ticker.js";
//   QuoteTicker.setToken(async ({ renew }) => (await fetch("/api/quote-token")).text());
//
// QuoteTicker.setToken(token, url?)
//   token  a string, or a provider: a function ({ url, renew }) => string | Promise<string>; null or
//          undefined removes it. A provider is called before EVERY connect and reconnect, so it can
//          hand out short-lived tokens; `url` is the gateway's WebSocket URL without its query, and
//          `renew` is true when the gateway just refused the previous token (close 1008), so a
//          caching provider must not return the same one. A provider that throws, rejects, returns
//          no string or takes longer than 15 s counts as a failed connect (backoff, see below).
//   url    optional: only connections to this gateway URL (resolved as the url attribute is; a
//          token= in its query is ignored, other query parameters count). Without it the token is
//          the page's default, for every url that has no token of its own.
//   The token goes to the gateway as ?token=... on the WebSocket URL (browsers cannot set headers
//   on a WebSocket), replacing any token= in the url attribute. Tokens belong to a url, not to an
//   element, so they never split a shared connection: one provider call per connect of the one
//   socket, however many elements show that url. Call setToken in the module that imports the
//   widget (or before adding the elements): a connection's first connect waits one microtask for
//   it. Calling setToken again (even with the same provider) makes connections it covers that
//   stopped or wait for a retry connect now; a live connection keeps its socket and uses the new
//   token next time. A token in the url attribute still works, but is in the DOM.
//
// What it does, per the gateway's wire protocol (version 1):
// - Several <quote-ticker>s on a page with the same url share ONE WebSocket. Symbol subscriptions
//   are reference-counted: a symbol is unsubscribed when the last element showing it goes away.
// - Applies each symbol's snapshot, then its updates (which carry only the changed fields); ignores
//   updates before the snapshot and any seq that is not greater than the last one applied.
// - Shows prices exactly as the decimal strings the gateway sent; up/down flashes compare them as
//   decimals (never as binary floats).
// - Shows live/stale/halted per symbol, the connection state, and the symbols the gateway rejected.
//   A string that is not a symbol by the protocol's rule (1–32 printable ASCII characters other than
//   space, '"', '\' and ',') is shown as rejected with code "invalid_symbol", as the gateway would
//   reject it, and is never sent: not in any subscribe or unsubscribe, on the first connect, after a
//   reconnect or in a retry; so it cannot disturb the other elements sharing the connection. (An
//   `ack.rejected` entry with code invalid_symbol, whose echo is the string cut to 40 characters,
//   is shown for the symbol it names, or ignored when it names none shown.)
// - Reconnects and subscribes again. How soon depends on how the socket ended:
//   - 1001 (the gateway is shutting down or restarting): after a uniformly random delay in
//     [0, 5 s] ("full jitter"; the window grows with the backoff below when a gateway keeps doing
//     it), so a restart does not bring every browser back in the same instant.
//   - 1008 (policy: bad or expired token, refused Origin): with a token provider, asks it for a
//     fresh token ({ renew: true }) and reconnects at once, one time. If that connection also ends
//     in 1008 within 10 s of opening (or there is no provider), it stops: state "unauthorized",
//     the gateway's reason on screen, and no retry until QuoteTicker.setToken is called or an
//     element's attributes change (or an element joins the connection).
//   - anything else, including a handshake the gateway refused with HTTP 401/403/429/503 (which a
//     browser reports only as close 1006, without the status): exponential backoff, 500 ms·2^n
//     capped at 30 s, with "equal jitter" (a random delay in [ceiling/2, ceiling]), so no retry is
//     immediate and a refused page backs off further on every attempt; n returns to 0 once the
//     gateway answers in protocol.
// - Never logs a URL with its query string or fragment (tokens live there). (Chromium itself logs a
//   failed WebSocket handshake with the full URL; only a token outside the URL avoids that.)
// - All text goes in through textContent: a symbol or message can never become markup or script.
// - Screen readers: a polite live region announces connection changes and rejected symbols only.
//
// Read-only inspection (for tests and host pages):
// - element.connectionState: "idle" (no symbols), "connecting", "live", "reconnecting",
//   "unauthorized" (stopped after close 1008, see above) or "failed" (the url is not a WebSocket
//   URL); a "connectionstatechange" event fires when it changes, with element.connectionInfo as
//   its detail.
// - element.connectionInfo: { state, closeCode, closeReason, retryDelayMs }: how the connection's
//   last socket ended (null before any), and the delay chosen for the pending reconnect in ms (null
//   when none is pending).
// - element.displayedQuotes: { SYMBOL: { field: text shown, ..., status } } for the shown symbols.
// - element.rejectedSymbols: [{ symbol, code }].
// - Every value cell carries data-symbol, data-field and data-value (the raw value as received).

// PROTOCOL.md: a symbol is 1–32 printable ASCII characters other than space, '"', '\' and ','.
const SYMBOL_RULE = /^[\x21\x23-\x2B\x2D-\x5B\x5D-\x7E]{1,32}$/;
/** Whether `s` is a symbol by the protocol's rule: only such strings are ever sent. */
function isSymbol(s) {
  return typeof s === "string" && SYMBOL_RULE.test(s);
}
const DEFAULT_FIELDS = ["bid", "ask", "last", "volume"];
const PRICE_FIELDS = new Set(["bid", "ask", "last"]);
const INTEGER_FIELDS = new Set(["bid_size", "ask_size", "last_size", "volume"]);
const FIELD_LABELS = {
  bid: "Bid",
  ask: "Ask",
  last: "Last",
  bid_size: "Bid size",
  ask_size: "Ask size",
  last_size: "Last size",
  volume: "Volume",
  ts: "Time",
};
const TAPE_LABELS = {
  bid: "B",
  ask: "A",
  last: "",
  bid_size: "BS",
  ask_size: "AS",
  last_size: "LS",
  volume: "Vol",
  ts: "",
};
const CODE_TEXT = {
  unknown_symbol: "unknown symbol",
  too_many_symbols: "too many symbols",
  invalid_symbol: "not a symbol",
  bad_request: "bad request",
  rate_limited: "rate limited",
  unauthorized: "unauthorized",
};

// Reconnect backoff: BASE·2^attempt, capped, with "equal jitter" (half fixed, half random) so that a
// restarted gateway is not hit by every browser in the same instant, and no retry is ever immediate.
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30000;
// After close 1001 (gateway going away) the retry is uniformly random in [0, this] ("full jitter"):
// every browser of a restarting gateway gets its 1001 in the same instant, and a restart (or a
// rolling one behind a load balancer) takes seconds, so spreading the return over seconds costs a
// user little and keeps the new gateway from taking every reconnect and resubscribe at once.
const RESTART_JITTER_MS = 5000;
// A connection that ends in 1008 after at least this long open was working: its next 1008 (an
// expired token, typically) may ask the token provider again. A shorter one means the fresh token
// did not help, and retrying would only loop.
const POLICY_REARM_MS = 10000;
// A token provider that has not answered after this long counts as failed.
const TOKEN_TIMEOUT_MS = 15000;
// Close codes the reconnect logic tells apart (see the header).
const CLOSE_GOING_AWAY = 1001;
const CLOSE_POLICY = 1008;
const CLOSE_ABNORMAL = 1006;
// Browsers cannot send WebSocket pings; the ping op keeps idle proxies from dropping the connection.
const PING_INTERVAL_MS = 20000;
// A subscribe op refused with rate_limited is tried again after this long.
const RATE_LIMIT_RETRY_MS = 1000;
// Symbols per subscribe op on (re)connect, well under any sensible max_symbols_per_connection.
const SUBSCRIBE_CHUNK = 500;

// ---------------------------------------------------------------------------------------------
// Decimal strings

/** Splits "-012.340" into { neg, int: "12", frac: "34" }, or null when it is not a plain decimal. */
function parseDecimal(s) {
  if (typeof s !== "string" && typeof s !== "number") return null;
  const m = /^\s*([+-]?)(\d*)(?:\.(\d*))?\s*$/.exec(String(s));
  if (!m || (m[2] === "" && (m[3] === undefined || m[3] === ""))) return null;
  const int = m[2].replace(/^0+/, "");
  const frac = (m[3] || "").replace(/0+$/, "");
  return { neg: m[1] === "-" && (int !== "" || frac !== ""), int, frac };
}

/**
 * Compares two decimal strings exactly: -1, 0 or 1, or null when either is not a decimal.
 * "189.10" equals "189.1"; "-0" equals "0"; no binary floating point is involved.
 */
export function compareDecimal(a, b) {
  const x = parseDecimal(a);
  const y = parseDecimal(b);
  if (!x || !y) return null;
  if (x.neg !== y.neg) return x.neg ? -1 : 1;
  let mag = 0;
  if (x.int.length !== y.int.length) {
    mag = x.int.length < y.int.length ? -1 : 1;
  } else if (x.int !== y.int) {
    mag = x.int < y.int ? -1 : 1; // same length, digits only: string order is numeric order
  } else {
    const n = Math.max(x.frac.length, y.frac.length);
    const fx = x.frac.padEnd(n, "0");
    const fy = y.frac.padEnd(n, "0");
    if (fx !== fy) mag = fx < fy ? -1 : 1;
  }
  return x.neg ? -mag : mag;
}

// ---------------------------------------------------------------------------------------------
// The shared connection: one per url, refcounted symbols, snapshot/update state per symbol

const connections = new Map(); // url -> Connection

// Tokens set with QuoteTicker.setToken: scope (a url without its token=, or DEFAULT_SCOPE) -> a
// string or a provider function.
const tokenSources = new Map();
const DEFAULT_SCOPE = "";

function defaultUrl() {
  const u = new URL("/ws", import.meta.url);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}

/** Resolves a url attribute to an absolute ws:/wss: URL, or null when it cannot be one. */
function resolveUrl(attr) {
  if (!attr || !attr.trim()) return defaultUrl();
  try {
    const u = new URL(attr.trim(), document.baseURI);
    if (u.protocol === "http:") u.protocol = "ws:";
    else if (u.protocol === "https:") u.protocol = "wss:";
    if (u.protocol !== "ws:" && u.protocol !== "wss:") return null;
    u.hash = "";
    return u.href;
  } catch {
    return null;
  }
}

/** Which setToken scope a resolved url belongs to: the url without its token= parameter. */
function tokenScope(url) {
  const u = new URL(url);
  u.searchParams.delete("token");
  return u.href;
}

/** The url as it may be shown or logged: scheme, host and path; no credentials, query or fragment. */
function redactUrl(url) {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return "(invalid url)";
  }
}

/** Text for the console: any URL in it loses its query and fragment, and any token= its value. */
function redactText(text) {
  return String(text)
    .replace(/\b([a-z][a-z0-9+.-]*:\/\/[^\s'"<>?#]*)[?#][^\s'"<>]*/gi, "$1")
    .replace(/\btoken=[^\s&'"<>]*/gi, "token=…");
}

function withToken(url, token) {
  const u = new URL(url);
  u.searchParams.set("token", token);
  return u.href;
}

/** Calls a token provider, bounded by TOKEN_TIMEOUT_MS; a throw becomes a rejection. */
function callProvider(provider, info) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no token within ${TOKEN_TIMEOUT_MS} ms`)), TOKEN_TIMEOUT_MS);
    Promise.resolve()
      .then(() => provider(info))
      .then(
        (token) => {
          clearTimeout(timer);
          resolve(token);
        },
        (e) => {
          clearTimeout(timer);
          reject(e);
        },
      );
  });
}

function connectionFor(url) {
  let c = connections.get(url);
  if (!c) {
    c = new Connection(url);
    connections.set(url, c);
  }
  return c;
}

class Connection {
  constructor(url) {
    this.url = url; // may hold a token (from the url attribute): never log it, log safeUrl
    this.safeUrl = redactUrl(url);
    this.scope = tokenScope(url);
    this.state = "connecting";
    this.ws = null;
    this.widgets = new Set(); // attached elements, in attach order (the first one announces)
    // SYMBOL -> how many attached elements show it. Only symbols by the protocol's rule (isSymbol)
    // are ever put here, so everything that subscribes what refs holds (open, retries) sends symbols.
    this.refs = new Map();
    // A string that is not a symbol -> how many attached elements show it. Never sent: shown as
    // rejected (invalid_symbol), for as long as an element shows it.
    this.invalid = new Map();
    this.subscribed = new Set(); // SYMBOLs a subscribe was sent for on the current socket
    this.quotes = new Map(); // SYMBOL -> { socket, seq, fields, status }
    this.rejected = new Map(); // SYMBOL (or a string that is not one) -> code
    this.toSubscribe = new Set();
    this.toUnsubscribe = new Set();
    this.pendingOps = new Map(); // op id -> { op, symbols }
    this.nextId = 1;
    this.socketNo = 0; // which socket a quote's snapshot came from; updates need the same one
    this.attempt = 0;
    this.retryTimer = 0;
    this.retryDelay = null; // ms chosen for the pending reconnect
    this.closeCode = null; // how the last socket ended
    this.closeReason = null;
    this.openedAt = 0; // when the current socket opened (0: not open)
    this.policyRetried = false; // a 1008 already asked the token provider for a fresh token
    this.awaitingToken = false; // a token provider call is under way
    // Bumped by every open, stop and dispose: a token provider that answers after one is ignored.
    this.generation = 0;
    this.disposed = false;
    this.pingTimer = 0;
    this.lastHeard = 0;
    this.pingSentAt = 0;
    this.flushQueued = false;
    this.onOnline = () => {
      if (this.state === "reconnecting" && this.retryTimer) this.open(false);
    };
    window.addEventListener("online", this.onOnline);
    // One microtask late, so that QuoteTicker.setToken() in the module that imports this one (the
    // same task) applies to the first connect too.
    queueMicrotask(() => {
      if (!this.disposed && !this.ws && !this.retryTimer && !this.awaitingToken) this.open(false);
    });
  }

  attach(widget) {
    this.widgets.add(widget);
  }

  detach(widget) {
    this.widgets.delete(widget);
    if (this.widgets.size === 0) this.dispose();
  }

  retain(symbols) {
    let rejectedChanged = false;
    for (const s of symbols) {
      if (!isSymbol(s)) {
        // Not a symbol by the protocol's rule: shown as rejected, as the gateway would reject it
        // (invalid_symbol), and never sent. It stays out of refs, so no subscribe can pick it up.
        const n = this.invalid.get(s) || 0;
        this.invalid.set(s, n + 1);
        if (n === 0) {
          this.rejected.set(s, "invalid_symbol");
          rejectedChanged = true;
        }
        continue;
      }
      const n = this.refs.get(s) || 0;
      this.refs.set(s, n + 1);
      if (n !== 0) continue;
      this.toUnsubscribe.delete(s);
      if (!this.subscribed.has(s)) this.toSubscribe.add(s);
    }
    if (rejectedChanged) {
      queueMicrotask(() => {
        for (const w of this.widgets) w._quotesChanged(new Set(), true);
      });
    }
    this.queueFlush();
  }

  release(symbols) {
    for (const s of symbols) {
      if (this.invalid.has(s)) {
        const n = this.invalid.get(s);
        if (n > 1) {
          this.invalid.set(s, n - 1);
        } else {
          this.invalid.delete(s);
          this.rejected.delete(s);
        }
        continue;
      }
      const n = this.refs.get(s) || 0;
      if (n > 1) {
        this.refs.set(s, n - 1);
        continue;
      }
      this.refs.delete(s);
      this.quotes.delete(s);
      this.rejected.delete(s);
      this.toSubscribe.delete(s);
      if (this.subscribed.has(s)) this.toUnsubscribe.add(s);
    }
    this.queueFlush();
  }

  // Changes made in one task (several elements connecting at once) go out as one op each way.
  queueFlush() {
    if (this.flushQueued) return;
    this.flushQueued = true;
    queueMicrotask(() => {
      this.flushQueued = false;
      this.flush();
    });
  }

  // The one way ops with symbols leave: only strings that are symbols by the protocol's rule go
  // out, whatever put them in toSubscribe or toUnsubscribe.
  flush() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return; // sent on open instead
    if (this.toUnsubscribe.size) {
      const symbols = [...this.toUnsubscribe].filter(isSymbol);
      this.toUnsubscribe.clear();
      for (const s of symbols) this.subscribed.delete(s);
      if (symbols.length) this.send({ op: "unsubscribe", symbols });
    }
    if (this.toSubscribe.size) {
      const all = [...this.toSubscribe].filter(isSymbol);
      this.toSubscribe.clear();
      for (let i = 0; i < all.length; i += SUBSCRIBE_CHUNK) {
        const symbols = all.slice(i, i + SUBSCRIBE_CHUNK);
        for (const s of symbols) this.subscribed.add(s);
        this.send({ op: "subscribe", symbols });
      }
    }
  }

  send(op) {
    // Backstop for the rule flush() applies: a list op never carries a string that is not a symbol.
    if (Array.isArray(op.symbols) && !op.symbols.every(isSymbol)) {
      op = { ...op, symbols: op.symbols.filter(isSymbol) };
      if (!op.symbols.length) return;
    }
    const id = this.nextId++;
    if (op.op === "subscribe") this.pendingOps.set(id, { op: op.op, symbols: op.symbols });
    try {
      this.ws.send(JSON.stringify({ ...op, id }));
    } catch {
      // The socket is closing; onclose reconnects and subscribes everything again.
    }
  }

  /** The token for this url: its own from setToken, else the page's default, else none. */
  tokenSource() {
    return tokenSources.has(this.scope) ? tokenSources.get(this.scope) : tokenSources.get(DEFAULT_SCOPE);
  }

  /** Connects: asks the token provider first (if any), then opens the socket. */
  async open(renew) {
    if (this.disposed) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.retryDelay = null;
    const generation = ++this.generation;
    let url = this.url;
    const source = this.tokenSource();
    if (source !== undefined) {
      let token = source;
      if (typeof source === "function") {
        this.awaitingToken = true;
        try {
          token = await callProvider(source, { url: this.safeUrl, renew: !!renew });
        } catch (e) {
          if (generation !== this.generation) return;
          this.awaitingToken = false;
          const why = redactText(e && e.message ? e.message : e);
          console.warn(`quote-ticker: the token provider for ${this.safeUrl} failed: ${why}`);
          this.retryAfterFailure();
          return;
        }
        if (generation !== this.generation) return; // stopped, disposed or restarted meanwhile
        this.awaitingToken = false;
        if (typeof token !== "string" || !token) {
          console.warn(`quote-ticker: the token provider for ${this.safeUrl} returned no token (want a non-empty string)`);
          this.retryAfterFailure();
          return;
        }
      }
      url = withToken(this.url, token);
    }
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      console.error(`quote-ticker: cannot open ${this.safeUrl}: ${redactText(e.message)}`);
      this.setState("failed");
      return;
    }
    this.ws = ws;
    this.socketNo++;
    this.subscribed.clear();
    this.pendingOps.clear();
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.openedAt = Date.now();
      this.lastHeard = Date.now();
      this.pingSentAt = 0;
      this.setState("live");
      // Everything shown is subscribed again; snapshots replace what this socket has not confirmed.
      this.toUnsubscribe.clear();
      for (const s of this.refs.keys()) if (isSymbol(s)) this.toSubscribe.add(s);
      this.flush();
      this.pingTimer = setInterval(() => this.heartbeat(), PING_INTERVAL_MS);
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      this.receive(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws === this.ws) this.lost(ev.code, ev.reason);
    };
    // onerror is always followed by onclose, which does the work.
    ws.onerror = () => {};
  }

  heartbeat() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    // Nothing at all (not even the pong) since the previous ping: the socket is dead, though a
    // half-open TCP connection can take minutes to report onclose. Counted in pings rather than
    // milliseconds because background tabs run timers late.
    if (this.pingSentAt && this.lastHeard < this.pingSentAt) {
      this.lost(CLOSE_ABNORMAL, "no answer to ping");
      return;
    }
    this.pingSentAt = Date.now();
    try {
      this.ws.send(JSON.stringify({ op: "ping" }));
    } catch {
      // onclose follows
    }
  }

  /** The socket ended (`code` as its close event gave it): reconnect as the header describes. */
  lost(code, reason) {
    const ws = this.ws;
    const openedAt = this.openedAt;
    this.ws = null;
    this.openedAt = 0;
    clearInterval(this.pingTimer);
    this.pingTimer = 0;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch {
        // already closed
      }
    }
    this.closeCode = typeof code === "number" ? code : CLOSE_ABNORMAL;
    this.closeReason = reason ? String(reason) : "";
    if (this.widgets.size === 0) return;
    if (this.closeCode === CLOSE_POLICY) {
      if (openedAt && Date.now() - openedAt >= POLICY_REARM_MS) this.policyRetried = false;
      if (typeof this.tokenSource() === "function" && !this.policyRetried) {
        // One fresh token, at once: an expired token is the usual cause, and the gap shows.
        this.policyRetried = true;
        this.schedule(0, true);
      } else {
        this.stop();
      }
      return;
    }
    const ceiling = this.backoffCeiling();
    const delay =
      this.closeCode === CLOSE_GOING_AWAY
        ? Math.random() * Math.max(RESTART_JITTER_MS, ceiling)
        : ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt++;
    this.schedule(delay, false);
  }

  /** A connect that failed before any socket (the token provider): backoff as for a lost socket. */
  retryAfterFailure() {
    if (this.widgets.size === 0) return;
    const ceiling = this.backoffCeiling();
    this.attempt++;
    this.schedule(ceiling / 2 + Math.random() * (ceiling / 2), false);
  }

  backoffCeiling() {
    return Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(this.attempt, 16));
  }

  schedule(delay, renew) {
    clearTimeout(this.retryTimer);
    this.retryDelay = Math.round(delay);
    this.retryTimer = setTimeout(() => this.open(renew), delay);
    this.setState("reconnecting");
  }

  /** Close 1008 without a way to a better token: no retry until something changes (resume). */
  stop() {
    this.generation++;
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.retryDelay = null;
    this.awaitingToken = false;
    const why = this.closeReason ? `: ${redactText(this.closeReason)}` : "";
    console.warn(
      `quote-ticker: ${this.safeUrl} closed the connection with 1008 (policy${why}); not reconnecting ` +
        "until QuoteTicker.setToken() is called or the element's attributes change",
    );
    this.setState("unauthorized");
  }

  /**
   * Something changed: a stopped connection connects again. With `newToken` (setToken was called)
   * a connection waiting for its retry, or for its token provider, connects now as well.
   */
  resume(newToken) {
    if (this.disposed) return;
    if (this.state === "unauthorized") {
      this.policyRetried = false;
      this.attempt = 0;
      this.setState("connecting");
      this.open(false);
    } else if (newToken && (this.retryTimer || this.awaitingToken)) {
      this.awaitingToken = false;
      this.open(false);
    }
  }

  dispose() {
    this.disposed = true;
    this.generation++;
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    window.removeEventListener("online", this.onOnline);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // already closed
      }
    }
    if (connections.get(this.url) === this) connections.delete(this.url);
  }

  /** What element.connectionInfo shows for this connection. */
  info() {
    return {
      state: this.state,
      closeCode: this.closeCode,
      closeReason: this.closeReason,
      retryDelayMs: this.retryDelay,
    };
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    for (const w of this.widgets) w._connectionChanged(w === this.widgets.values().next().value);
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // not JSON: nothing a client can do with it
    }
    const messages = Array.isArray(frame) ? frame : [frame];
    const changed = new Set();
    let rejectedChanged = false;
    for (const m of messages) {
      if (!m || typeof m !== "object") continue;
      switch (m.type) {
        case "snapshot":
          if (this.applySnapshot(m)) changed.add(m.symbol);
          break;
        case "update":
          if (this.applyUpdate(m)) changed.add(m.symbol);
          break;
        case "status":
          if (this.applyStatus(m)) changed.add(m.symbol);
          break;
        case "ack":
          if (this.applyAck(m)) rejectedChanged = true;
          break;
        case "error":
          if (this.applyError(m)) rejectedChanged = true;
          break;
        default:
          break; // pong, symbols, and anything newer than this client
      }
    }
    // The gateway answers in protocol: the next loss starts the backoff from the beginning again.
    if (Array.isArray(frame)) this.attempt = 0;
    if (changed.size || rejectedChanged) {
      for (const w of this.widgets) w._quotesChanged(changed, rejectedChanged);
    }
  }

  applySnapshot(m) {
    if (typeof m.symbol !== "string" || !this.refs.has(m.symbol)) return false;
    const seq = typeof m.seq === "number" ? m.seq : -Infinity;
    const q = this.quotes.get(m.symbol);
    // A re-sent snapshot on the same socket may repeat the seq; an older one is out of date.
    if (q && q.socket === this.socketNo && seq < q.seq) return false;
    const fields = {};
    for (const [k, v] of Object.entries(m)) {
      if (k !== "type" && k !== "symbol" && k !== "seq" && k !== "status") fields[k] = v;
    }
    this.quotes.set(m.symbol, {
      socket: this.socketNo,
      seq,
      fields,
      status: typeof m.status === "string" ? m.status : "live",
    });
    this.rejected.delete(m.symbol);
    return true;
  }

  applyUpdate(m) {
    const q = this.quotes.get(m.symbol);
    // No snapshot on this socket yet: the update's deltas would apply to the wrong base.
    if (!q || q.socket !== this.socketNo) return false;
    if (typeof m.seq !== "number" || !(m.seq > q.seq)) return false;
    q.seq = m.seq;
    for (const [k, v] of Object.entries(m)) {
      if (k === "type" || k === "symbol" || k === "seq" || k === "conflated") continue;
      if (k === "status") q.status = typeof v === "string" ? v : q.status;
      else q.fields[k] = v;
    }
    return true;
  }

  applyStatus(m) {
    const q = this.quotes.get(m.symbol);
    if (!q || q.socket !== this.socketNo || typeof m.status !== "string") return false;
    q.status = m.status;
    return true;
  }

  applyAck(m) {
    const pending = m.id !== undefined ? this.pendingOps.get(Number(m.id)) : undefined;
    if (m.id !== undefined) this.pendingOps.delete(Number(m.id));
    if (m.op !== "subscribe") return false;
    let changed = false;
    if (Array.isArray(m.symbols)) {
      for (const s of m.symbols) if (this.rejected.delete(s)) changed = true;
    }
    const named = new Set(Array.isArray(m.symbols) ? m.symbols : []);
    if (Array.isArray(m.rejected)) {
      for (const r of m.rejected) {
        if (!r || typeof r.symbol !== "string") continue;
        named.add(r.symbol);
        const sym = r.symbol.toUpperCase();
        // An entry that names no symbol shown is ignored: an invalid_symbol echo (the raw string, cut
        // to 40 characters) can be one, though this widget never sends a string that is not a
        // symbol. The op's other symbols were applied and come back as usual.
        if (!this.refs.has(sym)) continue;
        this.rejected.set(sym, typeof r.code === "string" ? r.code : "rejected");
        this.subscribed.delete(sym);
        changed = true;
      }
    }
    // A symbol this op named that the ack neither accepted nor rejected is not being served.
    if (pending) {
      for (const s of pending.symbols) {
        if (!named.has(s) && this.refs.has(s) && !this.rejected.has(s)) {
          this.rejected.set(s, "rejected");
          this.subscribed.delete(s);
          changed = true;
        }
      }
    }
    return changed;
  }

  applyError(m) {
    const id = m.id !== undefined ? Number(m.id) : undefined;
    const pending = id !== undefined ? this.pendingOps.get(id) : undefined;
    const code = typeof m.code === "string" ? m.code : "error";
    if (typeof m.message === "string") console.warn(`quote-ticker: gateway error ${code}: ${redactText(m.message)}`);
    if (!pending) return false;
    this.pendingOps.delete(id);
    for (const s of pending.symbols) this.subscribed.delete(s);
    if (code === "rate_limited") {
      setTimeout(() => {
        for (const s of pending.symbols) {
          if (isSymbol(s) && this.refs.has(s) && !this.subscribed.has(s)) this.toSubscribe.add(s);
        }
        this.queueFlush();
      }, RATE_LIMIT_RETRY_MS);
      return false;
    }
    let changed = false;
    for (const s of pending.symbols) {
      if (this.refs.has(s)) {
        this.rejected.set(s, code);
        changed = true;
      }
    }
    return changed;
  }
}

// ---------------------------------------------------------------------------------------------
// The element

const STYLE = `
:host {
  display: block;
  font-family: var(--quote-ticker-font, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
  font-size: var(--quote-ticker-font-size, 14px);
  color: var(--quote-ticker-fg, #1b1f24);
  contain: content;
}
:host([hidden]) { display: none; }
.qt {
  background: var(--quote-ticker-bg, #ffffff);
  border: 1px solid var(--quote-ticker-border, #d8dee4);
  border-radius: var(--quote-ticker-radius, 6px);
  overflow: hidden;
}
.sr-only {
  position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; border: 0;
  overflow: hidden; clip: rect(0 0 0 0); clip-path: inset(50%); white-space: nowrap;
}
.num { font-family: var(--quote-ticker-mono, ui-monospace, SFMono-Regular, Menlo, Consolas, monospace);
  font-variant-numeric: tabular-nums; }
.conn { display: inline-flex; align-items: center; gap: .4em; color: var(--quote-ticker-muted, #6a737d);
  font-size: .8em; white-space: nowrap; }
.dot { width: .55em; height: .55em; border-radius: 50%; background: var(--quote-ticker-warn, #bf8700); flex: none; }
.qt[data-connection="live"] .dot { background: var(--quote-ticker-live, #1a7f37); }
.qt[data-connection="reconnecting"] .dot, .qt[data-connection="failed"] .dot,
.qt[data-connection="unauthorized"] .dot {
  background: var(--quote-ticker-down, #cf222e); }
.qt[data-connection="connecting"] .dot, .qt[data-connection="reconnecting"] .dot {
  animation: qt-pulse 1.2s ease-in-out infinite; }
@keyframes qt-pulse { 50% { opacity: .3; } }
.qt:not([data-connection="live"]) .body { opacity: .6; }
.badge { display: inline-block; font-size: .68em; font-weight: 600; letter-spacing: .04em;
  text-transform: uppercase; padding: .1em .45em; border-radius: 999px; line-height: 1.5;
  border: 1px solid currentColor; white-space: nowrap; }
.badge[data-status="live"] { color: var(--quote-ticker-live, #1a7f37); }
.badge[data-status="stale"] { color: var(--quote-ticker-stale, #9a6700); }
.badge[data-status="halted"] { color: var(--quote-ticker-halted, #cf222e); }
.badge[data-status="waiting"] { color: var(--quote-ticker-muted, #6a737d); }
[data-row-status="stale"] .val, [data-row-status="stale"] .sym { opacity: .55; }
[data-row-status="halted"] .val { text-decoration: line-through; text-decoration-thickness: 1px; }
.val { border-radius: 3px; padding: 0 .2em; }
.val[data-dir="up"] { color: var(--quote-ticker-up, #1a7f37); }
.val[data-dir="down"] { color: var(--quote-ticker-down, #cf222e); }
.val[data-flash="up-a"] { animation: qt-up-a var(--quote-ticker-flash-duration, 900ms) ease-out; }
.val[data-flash="up-b"] { animation: qt-up-b var(--quote-ticker-flash-duration, 900ms) ease-out; }
.val[data-flash="down-a"] { animation: qt-down-a var(--quote-ticker-flash-duration, 900ms) ease-out; }
.val[data-flash="down-b"] { animation: qt-down-b var(--quote-ticker-flash-duration, 900ms) ease-out; }
@keyframes qt-up-a { from { background: var(--quote-ticker-up-flash, rgba(26,127,55,.22)); } to { background: transparent; } }
@keyframes qt-up-b { from { background: var(--quote-ticker-up-flash, rgba(26,127,55,.22)); } to { background: transparent; } }
@keyframes qt-down-a { from { background: var(--quote-ticker-down-flash, rgba(207,34,46,.22)); } to { background: transparent; } }
@keyframes qt-down-b { from { background: var(--quote-ticker-down-flash, rgba(207,34,46,.22)); } to { background: transparent; } }
.rejected[hidden] { display: none !important; }
.rejected { padding: .45em .75em; font-size: .8em; color: var(--quote-ticker-muted, #6a737d);
  border-top: 1px solid var(--quote-ticker-border, #d8dee4); }
.rejected ul { display: inline; list-style: none; margin: 0; padding: 0; }
.rejected li { display: inline; }
.rejected li + li::before { content: ", "; }
.rejected .rsym { color: var(--quote-ticker-fg, #1b1f24); font-weight: 600; word-break: break-all; }

/* grid */
.grid .bar { display: flex; justify-content: flex-end; padding: .35em .75em;
  border-bottom: 1px solid var(--quote-ticker-border, #d8dee4); background: var(--quote-ticker-header-bg, #f6f8fa); }
.grid .body { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: .38em .75em; text-align: right; white-space: nowrap; }
thead th { font-size: .75em; font-weight: 600; text-transform: uppercase; letter-spacing: .04em;
  color: var(--quote-ticker-muted, #6a737d); background: var(--quote-ticker-header-bg, #f6f8fa);
  border-bottom: 1px solid var(--quote-ticker-border, #d8dee4); }
th:first-child, td:first-child { text-align: left; }
tbody tr + tr > * { border-top: 1px solid var(--quote-ticker-border, #d8dee4); }
tbody tr:nth-child(even) > * { background: var(--quote-ticker-row-alt-bg, transparent); }
tbody th { font-weight: 600; max-width: 14ch; overflow: hidden; text-overflow: ellipsis; }
td.status { text-align: center; }

/* tape */
.tape { display: flex; align-items: stretch; }
.tape .bar { flex: none; display: flex; align-items: center; padding: 0 .75em;
  border-right: 1px solid var(--quote-ticker-border, #d8dee4); background: var(--quote-ticker-header-bg, #f6f8fa); }
.tape .body { flex: 1; min-width: 0; overflow: hidden; }
/* The strip takes the width it is given and never asks for its content's width: otherwise a tape
   in an auto-sized grid or flex track would widen the page by the whole strip. */
.viewport { overflow: hidden; contain: inline-size; }
.track { display: flex; width: max-content; }
.track[data-scroll] { animation: qt-scroll var(--qt-tape-duration, 60s) linear infinite; }
.viewport:hover .track, .viewport:focus-within .track { animation-play-state: paused; }
@keyframes qt-scroll { to { transform: translateX(-50%); } }
.items { display: flex; list-style: none; margin: 0; padding: 0; }
.items[data-clone][hidden] { display: none; }
.item { display: flex; align-items: baseline; gap: .45em; padding: .5em 1.1em; white-space: nowrap;
  border-right: 1px solid var(--quote-ticker-border, #d8dee4); }
.item[hidden] { display: none; }
.item .sym { font-weight: 700; }
.item .lbl { font-size: .72em; color: var(--quote-ticker-muted, #6a737d); }
.item .arrow { font-size: .75em; width: 1em; }
.item .arrow[data-dir="up"] { color: var(--quote-ticker-up, #1a7f37); }
.item .arrow[data-dir="down"] { color: var(--quote-ticker-down, #cf222e); }
.item .badge[data-status="live"], .item .badge[data-status="waiting"] { display: none; }
.tape .rejected { border-top: 0; border-left: 1px solid var(--quote-ticker-border, #d8dee4);
  flex: none; max-width: 40%; display: flex; align-items: center; }
@media (prefers-reduced-motion: reduce) {
  .track[data-scroll] { animation: none; }
  .viewport { overflow-x: auto; }
  .items[data-clone] { display: none; }
  .val[data-flash] { animation: none; }
  .qt[data-connection] .dot { animation: none; }
}
`;

const CONNECTION_TEXT = {
  idle: "No symbols",
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  unauthorized: "Not authorized",
  failed: "Invalid url",
};
const CONNECTION_ANNOUNCE = {
  live: "Live quotes connected.",
  reconnecting: "Quote connection lost; reconnecting.",
  unauthorized: "Quotes stopped: the gateway refused this page's credentials.",
  failed: "Quotes unavailable: the url is not a WebSocket address.",
};
// The gateway's close reason is shown after "Not authorized: ", at most this many characters.
const REASON_MAX_CHARS = 80;

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function parseList(attr, upper) {
  const out = [];
  const seen = new Set();
  for (const raw of (attr || "").split(",")) {
    // Symbols: only ASCII letters change case, as the gateway does; so a string that is not a
    // symbol stays one that is not (Unicode upper-casing turns "ß" into "SS" and "ſ" into "S").
    const s = upper ? raw.trim().replace(/[a-z]+/g, (m) => m.toUpperCase()) : raw.trim().toLowerCase();
    if (s && !seen.has(s)) {
      seen.add(s);
      out.push(s);
    }
  }
  return out;
}

function formatValue(field, value) {
  if (value === undefined || value === null || value === "") return "—";
  if (PRICE_FIELDS.has(field)) return String(value); // exactly as sent
  if (INTEGER_FIELDS.has(field) && typeof value === "number" && Number.isSafeInteger(value)) {
    return value.toLocaleString("en-US");
  }
  if (field === "ts" && typeof value === "number") {
    const d = new Date(value);
    if (!Number.isNaN(d.getTime())) {
      const p = (n, w = 2) => String(n).padStart(w, "0");
      return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
    }
  }
  return String(value);
}

function rawValue(value) {
  return value === undefined || value === null ? "" : String(value);
}

class QuoteTicker extends HTMLElement {
  static get observedAttributes() {
    return ["symbols", "url", "fields", "layout"];
  }

  #root;
  #conn = null;
  #symbols = [];
  #fields = DEFAULT_FIELDS;
  #layout = "grid";
  #views = new Map(); // SYMBOL -> { rows: [el], cells: { field: [el] }, badges: [el], arrows: [el], shown, status }
  #dirty = new Set();
  #rejectedDirty = false;
  #frame = 0;
  #rebuildQueued = false;
  #state = "idle";
  #announced = "";
  #announcedRejects = new Set();
  #nodes = {};
  #flip = {};
  #resize = null;
  #durationS = 0;

  constructor() {
    super();
    this.#root = this.attachShadow({ mode: "open" });
  }

  /**
   * Gives connections a token without putting it in the DOM; see the header comment.
   * @param {string | ((info: { url: string, renew: boolean }) => string | Promise<string>) | null} token
   * @param {string} [url] only connections to this gateway url; default: every url without its own
   */
  static setToken(token, url) {
    const provider = typeof token === "function";
    if (token !== null && token !== undefined && !provider && (typeof token !== "string" || !token)) {
      throw new TypeError("quote-ticker: setToken takes a non-empty string, a function that returns one (or a promise of one), or null");
    }
    let scope = DEFAULT_SCOPE;
    if (url !== undefined && url !== null) {
      const resolved = resolveUrl(String(url));
      if (!resolved) throw new TypeError("quote-ticker: setToken: url is not a ws:, wss:, http: or https: URL");
      scope = tokenScope(resolved);
    }
    if (token === null || token === undefined) tokenSources.delete(scope);
    else tokenSources.set(scope, token);
    for (const c of connections.values()) {
      if (c.scope === scope || (scope === DEFAULT_SCOPE && !tokenSources.has(c.scope))) c.resume(true);
    }
  }

  /** "idle", "connecting", "live", "reconnecting", "unauthorized" or "failed". */
  get connectionState() {
    return this.#state;
  }

  /** { state, closeCode, closeReason, retryDelayMs }: see the header comment. */
  get connectionInfo() {
    const info = this.#conn
      ? this.#conn.info()
      : { state: this.#state, closeCode: null, closeReason: null, retryDelayMs: null };
    info.state = this.#state;
    return info;
  }

  /** What is on screen: { SYMBOL: { field: text, ..., status } } for every shown symbol. */
  get displayedQuotes() {
    const out = {};
    for (const [sym, v] of this.#views) {
      if (v.rows[0].hidden) continue;
      const q = {};
      for (const f of this.#fields) q[f] = v.cells[f][0].textContent;
      q.status = v.status;
      out[sym] = q;
    }
    return out;
  }

  /** Symbols the gateway refused: [{ symbol, code }]. */
  get rejectedSymbols() {
    if (!this.#conn) return [];
    return this.#symbols
      .filter((s) => this.#conn.rejected.has(s))
      .map((s) => ({ symbol: s, code: this.#conn.rejected.get(s) }));
  }

  connectedCallback() {
    this.#rebuild();
  }

  disconnectedCallback() {
    // A move in the DOM disconnects and reconnects in the same task: keep the subscription then.
    queueMicrotask(() => {
      if (!this.isConnected) this.#detach();
    });
  }

  attributeChangedCallback(name, oldValue, newValue) {
    if (oldValue === newValue || !this.isConnected || this.#rebuildQueued) return;
    this.#rebuildQueued = true;
    queueMicrotask(() => {
      this.#rebuildQueued = false;
      if (this.isConnected) this.#rebuild();
    });
  }

  #detach() {
    if (!this.#conn) return;
    const conn = this.#conn;
    this.#conn = null;
    conn.release(this.#symbols);
    conn.detach(this);
    this.#symbols = [];
    cancelAnimationFrame(this.#frame);
    this.#frame = 0;
    if (this.#resize) this.#resize.disconnect();
  }

  #rebuild() {
    const url = resolveUrl(this.getAttribute("url"));
    const symbols = parseList(this.getAttribute("symbols"), true);
    let fields = parseList(this.getAttribute("fields"), false).filter((f) => {
      if (f in FIELD_LABELS) return true;
      console.warn(`quote-ticker: unknown field '${f}' ignored`);
      return false;
    });
    if (!fields.length) fields = DEFAULT_FIELDS;
    const layout = this.getAttribute("layout") === "tape" ? "tape" : "grid";

    // Subscribe to the new set before releasing the old one, so a shared symbol is never dropped.
    const old = this.#conn;
    const oldSymbols = this.#symbols;
    const conn = url && symbols.length ? connectionFor(url) : null;
    if (conn) {
      conn.attach(this);
      conn.retain(symbols);
      conn.resume(false); // a connection stopped after 1008 tries again when something changes
    }
    if (old) {
      old.release(oldSymbols);
      if (old !== conn) old.detach(this);
    }
    this.#conn = conn;
    this.#symbols = symbols;
    this.#fields = fields;
    this.#layout = layout;
    this.#render();
    // Announced by this element only where no other element already speaks for the connection.
    const lead = !conn || conn.widgets.values().next().value === this;
    this._connectionChanged(lead, url === null ? "failed" : undefined);
    for (const s of symbols) this.#dirty.add(s);
    this.#rejectedDirty = true;
    this.#paint();
  }

  // Builds the static structure for the current symbols, fields and layout. No data here.
  #render() {
    const root = this.#root;
    root.replaceChildren();
    if (this.#resize) this.#resize.disconnect();
    this.#views = new Map();
    this.#durationS = 0;
    const style = el("style");
    style.textContent = STYLE;
    const box = el("div", `qt ${this.#layout}`);
    box.setAttribute("part", "container");
    const bar = el("div", "bar");
    bar.setAttribute("part", "bar");
    const conn = el("span", "conn");
    conn.setAttribute("part", "connection");
    const dot = el("span", "dot");
    dot.setAttribute("aria-hidden", "true");
    const connText = el("span", "conn-text");
    conn.append(dot, connText);
    bar.append(conn);
    const body = el("div", "body");
    body.setAttribute("part", "body");
    const rejected = el("div", "rejected");
    rejected.setAttribute("part", "rejected");
    rejected.hidden = true;
    const rejectedList = el("ul");
    const rejectedInner = el("div");
    rejectedInner.append(el("span", "", "Not available: "), rejectedList);
    rejected.append(rejectedInner);
    const live = el("div", "sr-only");
    live.setAttribute("aria-live", "polite");
    live.setAttribute("aria-atomic", "true");
    live.setAttribute("role", "status");

    for (const s of this.#symbols) {
      this.#views.set(s, {
        rows: [],
        cells: Object.fromEntries(this.#fields.map((f) => [f, []])),
        badges: [],
        arrows: [],
        shown: {},
        status: "waiting",
      });
    }
    if (this.#layout === "grid") body.append(this.#buildGrid());
    else body.append(this.#buildTape());
    box.append(bar, body, rejected, live);
    root.append(style, box);
    this.#nodes = { box, connText, rejected, rejectedList, live, body };
    this.#announcedRejects = new Set();
  }

  #buildGrid() {
    const table = el("table");
    table.setAttribute("part", "table");
    table.append(el("caption", "sr-only", "Stock quotes"));
    const head = el("tr");
    const symTh = el("th", "", "Symbol");
    symTh.scope = "col";
    head.append(symTh);
    for (const f of this.#fields) {
      const th = el("th", "", FIELD_LABELS[f]);
      th.scope = "col";
      head.append(th);
    }
    const stTh = el("th", "", "Status");
    stTh.scope = "col";
    head.append(stTh);
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    for (const [sym, v] of this.#views) {
      const tr = el("tr");
      tr.setAttribute("part", "row");
      tr.dataset.symbol = sym;
      const th = el("th", "sym", sym);
      th.scope = "row";
      th.title = sym;
      th.setAttribute("part", "symbol");
      tr.append(th);
      for (const f of this.#fields) {
        const td = el("td", "num");
        const span = this.#valueCell(sym, f, true);
        td.append(span);
        v.cells[f].push(span);
        tr.append(td);
      }
      const st = el("td", "status");
      const badge = el("span", "badge", "…");
      badge.setAttribute("part", "badge");
      badge.dataset.status = "waiting";
      badge.dataset.symbol = sym;
      badge.dataset.field = "status";
      st.append(badge);
      v.badges.push(badge);
      tr.append(st);
      v.rows.push(tr);
      tbody.append(tr);
    }
    table.append(thead, tbody);
    return table;
  }

  #buildTape() {
    const viewport = el("div", "viewport");
    viewport.setAttribute("role", "marquee");
    viewport.setAttribute("aria-label", "Stock ticker");
    const track = el("div", "track");
    const items = el("ul", "items");
    const clone = el("ul", "items");
    clone.dataset.clone = "";
    clone.setAttribute("aria-hidden", "true");
    clone.hidden = true;
    for (const list of [items, clone]) {
      const primary = list === items;
      for (const [sym, v] of this.#views) {
        const li = el("li", "item");
        li.setAttribute("part", "row");
        if (primary) li.dataset.symbol = sym;
        const symEl = el("span", "sym", sym);
        symEl.setAttribute("part", "symbol");
        const badge = el("span", "badge", "…");
        badge.setAttribute("part", "badge");
        badge.dataset.status = "waiting";
        if (primary) {
          badge.dataset.symbol = sym;
          badge.dataset.field = "status";
        }
        v.badges.push(badge);
        li.append(symEl);
        for (const f of this.#fields) {
          const label = TAPE_LABELS[f];
          if (label) li.append(el("span", "lbl", label));
          const span = this.#valueCell(sym, f, primary);
          v.cells[f].push(span);
          li.append(span);
          if (f === this.#arrowField()) {
            const arrow = el("span", "arrow", "");
            arrow.setAttribute("aria-hidden", "true");
            v.arrows.push(arrow);
            li.append(arrow);
          }
        }
        li.append(badge);
        v.rows.push(li);
        list.append(li);
      }
    }
    track.append(items, clone);
    viewport.append(track);
    // Scroll speed is a constant pixels per second whatever the content width; only when the strip
    // does not fit does it scroll (then the clone makes the loop seamless).
    this.#resize = new ResizeObserver(() => this.#sizeTape(viewport, track, items, clone));
    this.#resize.observe(items);
    this.#resize.observe(viewport);
    return viewport;
  }

  #arrowField() {
    return this.#fields.find((f) => f === "last") || this.#fields.find((f) => PRICE_FIELDS.has(f));
  }

  #sizeTape(viewport, track, items, clone) {
    const width = items.scrollWidth;
    if (width <= viewport.clientWidth) {
      clone.hidden = true;
      track.removeAttribute("data-scroll");
      this.#durationS = 0;
      return;
    }
    clone.hidden = false;
    const speed = parseFloat(getComputedStyle(this).getPropertyValue("--quote-ticker-tape-speed")) || 60;
    const duration = width / Math.max(5, speed);
    // Changing the duration mid-scroll makes the strip jump: only follow big changes in width.
    if (!this.#durationS || Math.abs(duration - this.#durationS) / this.#durationS > 0.15) {
      this.#durationS = duration;
      track.style.setProperty("--qt-tape-duration", `${duration.toFixed(1)}s`);
    }
    track.dataset.scroll = "";
  }

  #valueCell(sym, field, primary) {
    const span = el("span", "val num", "—");
    span.setAttribute("part", "price");
    if (primary) {
      span.dataset.symbol = sym;
      span.dataset.field = field;
      span.dataset.value = "";
    }
    return span;
  }

  // Called by the connection; `lead` is the element that speaks for the whole connection.
  _connectionChanged(lead, forced) {
    const state = forced || (this.#conn ? this.#conn.state : "idle");
    const before = this.#state;
    this.#state = state;
    if (this.#nodes.box) {
      this.#nodes.box.dataset.connection = state;
      let text = CONNECTION_TEXT[state] || state;
      const reason = this.#conn && this.#conn.closeReason;
      if (state === "unauthorized" && reason) {
        text += `: ${reason.length > REASON_MAX_CHARS ? `${reason.slice(0, REASON_MAX_CHARS - 1)}…` : reason}`;
      }
      this.#nodes.connText.textContent = text;
    }
    if (before === state) return;
    // One announcement per page and connection, not one per element.
    if (lead && CONNECTION_ANNOUNCE[state] && this.#announced !== state) {
      this.#announced = state;
      this.#announce(CONNECTION_ANNOUNCE[state]);
    }
    this.dispatchEvent(
      new CustomEvent("connectionstatechange", { detail: this.connectionInfo, bubbles: true, composed: true }),
    );
  }

  _quotesChanged(symbols, rejectedChanged) {
    let any = rejectedChanged;
    for (const s of symbols) {
      if (this.#views.has(s)) {
        this.#dirty.add(s);
        any = true;
      }
    }
    if (rejectedChanged) this.#rejectedDirty = true;
    if (any && !this.#frame) this.#frame = requestAnimationFrame(() => this.#paint());
  }

  // Writes what changed since the last frame: many ticks per symbol per frame cost one DOM write.
  #paint() {
    this.#frame = 0;
    const conn = this.#conn;
    for (const sym of this.#dirty) {
      const v = this.#views.get(sym);
      if (!v) continue;
      const q = conn && conn.quotes.get(sym);
      for (const f of this.#fields) {
        const value = q ? q.fields[f] : undefined;
        const before = v.shown[f];
        if (value === before) continue;
        v.shown[f] = value;
        const text = formatValue(f, value);
        let dir = null;
        if (PRICE_FIELDS.has(f) && before !== undefined && before !== null && value !== null) {
          const c = compareDecimal(value, before);
          dir = c === 1 ? "up" : c === -1 ? "down" : null;
        }
        let flash = "";
        if (dir) {
          // Alternating between two identical animations restarts the flash without a reflow.
          const key = `${sym}\u0000${f}`;
          this.#flip[key] = !this.#flip[key];
          flash = `${dir}-${this.#flip[key] ? "a" : "b"}`;
        }
        for (const cell of v.cells[f]) {
          cell.textContent = text;
          if (cell.dataset.field) cell.dataset.value = rawValue(value);
          if (dir) {
            cell.dataset.flash = flash;
            cell.dataset.dir = dir;
          }
        }
        if (dir && f === this.#arrowField()) {
          for (const a of v.arrows) {
            a.textContent = dir === "up" ? "▲" : "▼";
            a.dataset.dir = dir;
          }
        }
      }
      const status = q ? q.status : "waiting";
      if (status !== v.status) {
        v.status = status;
        for (const b of v.badges) {
          b.textContent = status === "waiting" ? "…" : status;
          b.dataset.status = status;
        }
        for (const r of v.rows) r.dataset.rowStatus = status;
      }
    }
    this.#dirty.clear();
    if (this.#rejectedDirty) {
      this.#rejectedDirty = false;
      this.#paintRejected();
    }
  }

  #paintRejected() {
    const rejected = this.rejectedSymbols;
    const { rejected: box, rejectedList } = this.#nodes;
    const items = rejected.map(({ symbol, code }) => {
      const li = el("li");
      li.dataset.rejected = "";
      li.append(el("span", "rsym", symbol), el("span", "", ` (${CODE_TEXT[code] || code})`));
      return li;
    });
    rejectedList.replaceChildren(...items);
    box.hidden = items.length === 0;
    const gone = new Set(rejected.map((r) => r.symbol));
    for (const [sym, v] of this.#views) for (const r of v.rows) r.hidden = gone.has(sym);
    const fresh = rejected.filter((r) => !this.#announcedRejects.has(r.symbol));
    for (const r of fresh) this.#announcedRejects.add(r.symbol);
    for (const s of [...this.#announcedRejects]) if (!gone.has(s)) this.#announcedRejects.delete(s);
    if (fresh.length) {
      const list = fresh.map((r) => `${r.symbol} (${CODE_TEXT[r.code] || r.code})`).join(", ");
      this.#announce(`Not available: ${list}.`);
    }
  }

  #announce(text) {
    const live = this.#nodes.live;
    if (!live) return;
    // Cleared first so that a repeated message is announced again.
    live.textContent = "";
    setTimeout(() => {
      live.textContent = text;
    }, 50);
  }
}

if (!customElements.get("quote-ticker")) customElements.define("quote-ticker", QuoteTicker);

export { QuoteTicker };
