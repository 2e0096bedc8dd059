// <quote-ticker>: live stock quotes from a quotegw gateway, as one custom element; and <quote-tape>,
// the trades as they print (time and sales), from the same module.
//
// One plain ES module: no framework, no build step. The gateway serves it at /widget/quote-ticker.js.
//
//   <script type="module" src="https://quotes.example.com/widget/quote-ticker.js"></script>
//   <quote-ticker symbols="AAPL,MSFT,NVDA" layout="grid" sparkline="1m"></quote-ticker>
//   <quote-tape symbols="AAPL" rows="20"></quote-tape>
//
// Attributes
//   symbols  comma-separated tickers, case-insensitive ("aapl, msft"). An entry that is not a symbol
//            by the protocol's rule (see below) is listed as rejected, "not a symbol", and never sent.
//   url      the gateway's WebSocket URL, or several separated by whitespace for failover
//            (url="wss://a.example.com/ws wss://b.example.com/ws"; see "Failover" below). Default:
//            /ws on the host that served this script (ws:// for http, wss:// for https). A relative
//            URL resolves against the page. One entry that is not a WebSocket URL makes the whole
//            attribute invalid (state "failed"): a list is never silently shortened.
//   fields   comma-separated quote fields, in display order. Default "bid,ask,last,volume".
//            Any of: bid, ask, last, bid_size, ask_size, last_size, volume, ts.
//   layout   "tape" (a scrolling strip) or "grid" (a table). Default "grid".
//   sparkline  a bar interval the gateway builds ("1s", "1m", "5m" by default; a bare attribute
//            means "1m"): adds a trend column (grid) or a small chart after the price (tape), the
//            closes of that interval's bars drawn as a line. Without it nothing else is asked of
//            the gateway (no bars in the subscription, no GET /v1/bars). See "Trades and bars".
//
// <quote-tape> attributes
//   symbols  as above; with more than one the rows interleave by time and gain a symbol column.
//   url      as above; a tape and tickers with the same url share the one connection (and tokens).
//   rows     how many trades are shown, newest on top. Default 20, at most 500.
// Each row: the time of the print (local, from its ts, to the millisecond), the price exactly as
// sent, the size, and a tick mark: ▲ above the previous print's price, ▼ below; an unchanged price
// keeps the previous direction, as a zero-plus (faint ▲) or zero-minus (faint ▼) tick; none on the
// first print shown and after a gap, where the previous print is not known. A row in place of
// prints that were missed: "37 trades missed" (the gateway's trades_lost), "Reconnected: trades may
// have been missed" or "Gateway restarted: trades may have been missed" (see below).
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
//   --quote-ticker-sparkline-width   sparkline column   [6em]
//   --quote-ticker-sparkline-height  sparkline height   [1.5em]
//   --quote-tape-max-height          a <quote-tape>'s scroll height [none]
// A sparkline is drawn in --quote-ticker-up when its last close is above its first, in
// --quote-ticker-down when below, else --quote-ticker-muted; a tape's marks and prices likewise.
// <quote-tape> takes the same --quote-ticker-* properties, so one theme covers both.
// Parts for ::part(): container, bar, connection, body, table, row, symbol, price, badge, rejected,
// sparkline (the <svg>); on <quote-tape> also gap (a missed-trades cell) and tick.
//
// Tokens (a gateway with auth = "api_key" or "jwt"): give the widget a token from script, so that it
// never sits in the DOM (a url attribute is visible to every script and extension on the page):
//
//   import { QuoteTicker } from "https://quotes.example.com/widget/quote-ticker.js";
//   QuoteTicker.setToken(async ({ renew }) => (await fetch("/api/quote-token")).text());
//
// (QuoteTape.setToken is the same function: tokens belong to a url, whichever element shows it.)
//
// QuoteTicker.setToken(token, url?, options?)
//   token  a string, or a provider: a function ({ url, renew }) => string | Promise<string>; null or
//          undefined removes it. A provider is called before EVERY connect and reconnect, so it can
//          hand out short-lived tokens; `url` is the gateway's WebSocket URL without its query, and
//          `renew` is true when the gateway just refused the previous token (close 1008, or 401
//          to its ticket request), so a
//          caching provider must not return the same one. A provider that throws, rejects, returns
//          no string or takes longer than 15 s counts as a failed connect (backoff, see below).
//   url    optional: only connections to this gateway URL (resolved as the url attribute is; a
//          token= in its query is ignored, other query parameters count). Without it the token is
//          the page's default, for every url that has no token of its own.
//   options  optional: { tickets: false } for a gateway that predates tickets (its POST /v1/ticket
//          answers 404): the token then goes as ?token= on the WebSocket URL, as before. It applies
//          to the same scope as the token (this url, or the page default), and stays until set
//          again; setToken(null, url, { tickets: false }) sets it for a url whose token is in its
//          url attribute.
//   Tickets (the default): before each connect the widget POSTs <the gateway's origin and path
//   beside /ws>/v1/ticket with "Authorization: Bearer <token>" and opens the WebSocket with the
//   answer as ?ticket=... (single use, 30 s, only from this page's Origin) instead of ?token=, so
//   the long-lived token is never in a URL: not in Chromium's console line for a refused
//   handshake, not in a proxy's or the gateway's access log. The POST is a CORS request (the
//   gateway answers its preflight for allowed Origins). Its answer counts as the handshake's:
//   401 is the token refused, as close 1008 below (the provider asked once with renew: true; then,
//   with a list, the next URL; else, or once every URL of the list refused it, state
//   "unauthorized", with closeCode null and the gateway's message as closeReason); a network
//   error, 403, 429 or 5xx is a failed connect (backoff, and the next URL of a list). A token=
//   in the url attribute is traded for a ticket too (and left out of the WebSocket URL), though it
//   is still in the DOM. GET /v1/trades and /v1/bars keep sending the token as Authorization:
//   Bearer. A ticket is in the WebSocket URL, so Chromium's line for a refused handshake shows
//   it: it is already used or expired by then.
//   Tokens belong to a url, not to an
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
// - unknown_symbol for a symbol already shown: a gateway that just restarted can answer every
//   subscribe so while its cache loads (a gateway may answer 503 until it has loaded, but this
//   client does not count on it). The row is neither dropped nor left as it was: it keeps its last
//   values (what a trader last saw is worth seeing) but marked as not live, status "unavailable"
//   (the badge, the row's data-row-status, displayedQuotes[SYMBOL].status; not in rejectedSymbols),
//   and the symbol is asked again on the same socket after a growing delay (1 s·2^n, equal jitter,
//   capped at 30 s) until the gateway sends its snapshot. A symbol never shown that comes back
//   unknown_symbol is listed as rejected and not asked again, unless the gateway knew none of the
//   symbols asked on that socket (none accepted, none refused otherwise): such a gateway is taken
//   to be loading (or serving another market), so with a list it counts as failed and the next URL
//   is tried (see Failover); with one URL, or once every URL of the list answered so (since a
//   gateway last accepted a symbol; a connect that failed otherwise, refused or unreachable, is no
//   such answer), the connection stays and asks every symbol again with that delay. With a list it
//   stays only for the round backoff (see Failover: a gateway that knows none of the page's symbols
//   is no place to settle while others exist), then tries the next URL; such a socket never counts
//   as one that worked, so that backoff keeps growing. While every row of a <quote-ticker> is
//   unavailable on a live socket its connection part says "Connected, no quotes" (not "Live"), and
//   its container part has data-quotes="none"; connectionState stays "live" (the socket is up).
//   A string that is not a symbol by the protocol's rule (1–32 printable ASCII characters other than
//   space, '"', '\' and ',') is shown as rejected with code "invalid_symbol", as the gateway would
//   reject it, and is never sent: not in any subscribe or unsubscribe, on the first connect, after a
//   reconnect or in a retry; so it cannot disturb the other elements sharing the connection. (An
//   `ack.rejected` entry with code invalid_symbol, whose echo is the string cut to 40 characters,
//   is shown for the symbol it names, or ignored when it names none shown.)
// - Failover (url lists several gateways, e.g. edges of one scale-out ingest: they number seq
//   alike; see docs/deployment.md): elements with the same url attribute (the same list, in the
//   same order) share one connection, which uses one gateway at a time.
//   - Order: the first URL first. When the gateway in use fails (its socket ends other than by
//     1008 or 1012, or a connect to it fails: refused handshake, unreachable, a token provider that
//     fails, a ticket it will not issue; or it refuses the token after the renew, see 1008 below;
//     or it answers every symbol asked unknown_symbol, see above), the next URL of the list is
//     tried, wrapping round to the first. A gateway that works is kept: nothing moves back to the
//     first URL while it works, so a failover never flaps back to a gateway that just died; the
//     first URL is tried again only when the list wraps round to it after the gateway in use
//     fails.
//   - Delays: the first connect to each URL not yet tried since the last socket that worked waits a
//     uniformly random [0, 1 s] (full jitter: quick, since the values on screen are ageing, yet the
//     browsers of a dead gateway do not all land on the next in the same instant). Once every URL
//     has failed in a row, the backoff below applies (500 ms·2^n, equal jitter, capped at 30 s),
//     n counting the full rounds of the list completed, less one: with three URLs, after the first
//     round each connect waits 0.25–0.5 s, after the second 0.5–1 s, after the third 1–2 s, and so
//     on. With one URL this is exactly the backoff below. A socket "worked" when it stayed open
//     5 s with the gateway answering in protocol (and not answering every symbol unknown_symbol
//     while accepting none); a gateway (or proxy) that accepts sockets and
//     drops them sooner gets the growing backoff, however well it answers meanwhile.
//   - While away, the element keeps showing the last values it had, marked as reconnecting: state
//     "reconnecting" (connectionState, the connectionstatechange event, the container part's
//     data-connection attribute, the custom state quote-ticker:state(reconnecting) for the host
//     page's CSS), "Reconnecting…" in the connection part, the body part aria-busy="true" and
//     dimmed, and a polite screen-reader announcement. connectionInfo.url and .urlIndex name the
//     gateway in use (or tried next), without its query.
//   - The seq guard: the new gateway's snapshot of a symbol is shown when its seq is not older than
//     the seq shown. An older one (that gateway is behind, or its seq started over) is held: the
//     row keeps the last values, marked (the row's data-held attribute, a title on its badge,
//     displayedQuotes[SYMBOL].held), the held quote follows that gateway's updates in the
//     background, and is shown as soon as its seq reaches the one shown. A gateway that never
//     gets there (genuinely behind and not moving, or restarted without saying so) is believed
//     after 3 s: values never freeze. After close 1012 (the quote source restarted: seq starts
//     over, PROTOCOL.md) the guard is off for the next socket: its snapshots are shown whatever
//     their seq, and that socket goes to the same gateway (it works; 1012 is not its failure).
//     The shown seq of a symbol therefore never goes back, but after a 1012 or the 3 s bound.
//   - Tokens stay per URL (setToken(token, url) names one gateway of the list; each connect asks
//     the provider of the URL it goes to, with that url); trade and bar history (GET /v1/trades,
//     /v1/bars) is read from the gateway in use.
// - Reconnects and subscribes again. How soon depends on how the socket ended:
//   - 1001 (the gateway is shutting down or restarting): to the next URL when there are several,
//     after a uniformly random delay in
//     [0, 5 s] ("full jitter"; the window grows with the backoff below when a gateway keeps doing
//     it), so a restart does not bring every browser back in the same instant.
//   - 1012 (the quote source restarted): back to the same gateway after a uniformly random delay in
//     [0, 1 s] (every client of the gateway gets it at once), taking its snapshots whatever their
//     seq (see Failover).
//   - 1008 (policy: bad or expired token, refused Origin): with a token provider, asks it for a
//     fresh token ({ renew: true }) and reconnects to the same gateway at once, one time. If that
//     connection also ends in 1008 within 10 s of opening (or there is no provider), that gateway
//     refused the token: with a list, it counts as failed and the next URL is tried (with its own
//     renew); with one URL, or once every URL of the list refused the token one after the other
//     (a failure of another kind in between starts the count again), it stops: state
//     "unauthorized", the gateway's reason on screen, and no retry until QuoteTicker.setToken is
//     called or an element's attributes change (or an element joins the connection).
//   - anything else, including a handshake the gateway refused with HTTP 401/403/429/503 (which a
//     browser reports only as close 1006, without the status): the next URL when there are several
//     (see Failover), then exponential backoff, 500 ms·2^n
//     capped at 30 s, with "equal jitter" (a random delay in [ceiling/2, ceiling]), so no retry is
//     immediate and a refused page backs off further on every attempt; n returns to 0 only after a
//     socket that worked (open 5 s, the gateway answering in protocol; see Failover), so a
//     gateway or proxy that accepts sockets and drops them, or a load balancer that sends the
//     socket to a gateway that refuses the ticket another issued, is retried ever more slowly.
// - Trades and bars (sparkline, <quote-tape>): a symbol's subscribe carries what every element
//   showing it on that connection needs ("trades": true for a tape, "bars": the sparkline's
//   interval), because a later subscribe of a symbol replaces the earlier choice on the gateway; so
//   an element coming or going subscribes the symbol again with the new union (a re-sent snapshot,
//   no gap in trades). One bars interval per symbol and connection: the first one asked for. A
//   sparkline of another interval for the same symbol is read from GET /v1/bars and read again
//   every 5 s instead (its last point can lag by that much).
// - History: after the ack of a subscribe with trades or bars, the tape reads GET
//   /v1/trades?symbol=..&limit=<rows> and the sparkline GET /v1/bars?symbol=..&interval=..&limit=390
//   (a gateway keeping fewer answers with what it keeps). Live
//   messages that arrive meanwhile wait and are applied after it, a print only when its seq is above
//   the newest shown, so nothing is shown twice and nothing falls between the history and the live
//   messages. These requests go to the gateway of the url (http/https for ws/wss, /v1/... beside its
//   /ws path), with the connection's token as "Authorization: Bearer" (never in the URL), at most 4
//   at once per connection; 429/503 are tried again (3 times, 1, 2, 3 s later). A history that
//   cannot be read (401, 403, a network error) leaves a note in the tape's bar ("earlier trades
//   unavailable (...)") or the reason in the sparkline's label; the live messages still show.
// - Bars: the same start again updates that point (the bar with more trades, or the final one,
//   wins); a new start appends one; at most 391 points, 390 final bars and the open one (the
//   oldest go). After a reconnect the history is read again and replaces the line (a restarted
//   gateway has other bars).
// - Trades after a reconnect: the history read again is joined to what is shown. When it holds the
//   newest print shown, only what follows is added; when it does not, a "Reconnected: trades may
//   have been missed" row; when seq went backwards (a new snapshot below the last seq seen, or a
//   history that ends below it), the gateway restarted: a "Gateway restarted" row, and what follows
//   sorts above everything before it, whatever its ts (a restarted replay starts its clock over).
//   A trades_lost message is a "N trades missed" row, unless the history read after it holds them.
// - The gateway refusing extras (an op with bars or trades answered bad_request: an interval it
//   does not build; or unauthorized: a tier without trades) costs no quotes: that interval (or
//   trades) is dropped and the symbols are subscribed again without it; the sparkline says why (its title
//   and aria-label), the tape shows "trades not available: <the gateway's message>". A sparkline
//   value that is not an interval by form ("1m": a number and s, m or h) is never sent.
// - Never logs a URL with its query string or fragment (tokens live there). (Chromium itself logs a
//   failed WebSocket handshake with the full URL: with tickets, the default, that URL holds only a
//   spent or expired ticket; with { tickets: false } it holds the token.)
// - All text goes in through textContent: a symbol or message can never become markup or script.
// - Screen readers: a polite live region announces connection changes and rejected symbols only.
//   The tape is a table (caption, column headers; each tick mark has its words, "up tick", ...,
//   for screen readers); a sparkline is an image whose label names its bar count, first and last
//   close ("AAPL: 23 1m closes, from 189.10 to 189.13").
//
// Read-only inspection (for tests and host pages):
// - element.connectionState: "idle" (no symbols), "connecting", "live", "reconnecting",
//   "unauthorized" (stopped after close 1008, see above) or "failed" (the url is not a WebSocket
//   URL); a "connectionstatechange" event fires when it changes, with element.connectionInfo as
//   its detail.
// - element.connectionInfo: { state, closeCode, closeReason, retryDelayMs, url, urlIndex }: how the
//   connection's last socket ended (null before any, and null again once a socket opens: while
//   "live" they are null, an earlier failure is not the state; 1000 with reason "every symbol
//   unknown_symbol" when it left a gateway that knew none of its symbols; for "unauthorized", code
//   null or 1008 and the gateway's message), the delay chosen for the pending
//   reconnect in ms (null when none is pending), and the gateway in use or tried next (its URL
//   without query, and its place in the url list, from 0).
// - element.displayedQuotes: { SYMBOL: { field: text shown, ..., status, seq, held } } for the shown
//   symbols: status "waiting" (no values yet), "live", "stale", "halted" (the gateway's) or
//   "unavailable" (the gateway answered unknown_symbol; the values are the last shown, see
//   above), seq of the values shown (null before any), held: true while a newer gateway's older
//   snapshot waits behind them (the seq guard, see Failover). Each grid row (and tape item) carries
//   data-symbol, data-seq and, while held, data-held.
// - element.rejectedSymbols: [{ symbol, code }].
// - Every value cell carries data-symbol, data-field and data-value (the raw value as received).
// - element.displayedSparklines (sparkline set): { SYMBOL: { interval, closes: [strings, oldest
//   first], last, error } }; each sparkline <svg> carries data-symbol, data-points,
//   data-last-close (exact) and data-state ("ok", "empty", "unavailable").
// - <quote-tape>: connectionState, connectionInfo, rejectedSymbols and the connectionstatechange
//   event as above, and displayedTrades: the rows on screen, newest first, { kind: "trade", symbol,
//   seq, ts, time, price, size, tick } (time, price and size as shown; tick "up", "down", "zero-up",
//   "zero-down" or null) or { kind: "gap", symbol, reason: "lost" | "reconnect" | "restart", count,
//   text }. Each trade row carries data-seq and data-tick; its cells data-field (ts, price, size)
//   and data-value.

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
// A socket counts as having worked (the reconnect backoff starts over, and the URLs of a list count
// as not yet tried) only once it has stayed open this long and the gateway answered on it in
// protocol: a gateway or proxy that accepts sockets and drops them gets the full backoff.
const STABLE_MS = 5000;
// Symbols a gateway answered unknown_symbol that are asked again (see the header): after a delay
// in [ceiling/2, ceiling], the ceiling UNKNOWN_RETRY_BASE_MS·2^n (n: how many times they were
// asked again on this socket), at most BACKOFF_MAX_MS.
const UNKNOWN_RETRY_BASE_MS = 1000;
// With several gateway URLs, a connect to one not yet tried since the last working socket waits a
// uniformly random delay in [0, this] ("full jitter"): quick, since the quotes on screen are going
// stale, yet spread, so that the browsers of a gateway that died do not all reach the next one in
// the same millisecond.
const FAILOVER_JITTER_MS = 1000;
// A new socket's snapshot older (lower seq) than what is shown waits: it is shown once that
// gateway's stream reaches the seq shown, or after this long (a gateway that is genuinely behind,
// or whose seq started over without a 1012, is then believed; the values must not freeze).
const SEQ_GUARD_MS = 3000;
// Close codes the reconnect logic tells apart (see the header).
const CLOSE_NORMAL = 1000;
const CLOSE_GOING_AWAY = 1001;
const CLOSE_POLICY = 1008;
const CLOSE_ABNORMAL = 1006;
const CLOSE_SERVICE_RESTART = 1012;
// Browsers cannot send WebSocket pings; the ping op keeps idle proxies from dropping the connection.
const PING_INTERVAL_MS = 20000;
// A subscribe op refused with rate_limited is tried again after this long.
const RATE_LIMIT_RETRY_MS = 1000;
// Symbols per subscribe op on (re)connect, well under any sensible max_symbols_per_connection.
const SUBSCRIBE_CHUNK = 500;
// A bar interval as the gateway names them: a number and s, m or h ("1s", "1m", "5m"). A string that
// is not one is never sent (the gateway would refuse the whole op, and with it its symbols).
const INTERVAL_RULE = /^[1-9][0-9]{0,5}[smh]$/;
// Final bars asked of GET /v1/bars for a sparkline: 390 one-minute bars are a trading day, and the
// gateway's default bars history ([bars] keep). It answers them and the open bar, so a sparkline
// keeps one point more, as the oldest go.
const SPARKLINE_POINTS = 390;
const SPARKLINE_KEEP = SPARKLINE_POINTS + 1;
// A sparkline whose interval is not the one its symbol's subscription carries (one interval per
// symbol and connection) is refreshed from GET /v1/bars this often.
const SPARKLINE_POLL_MS = 5000;
// Rows of a <quote-tape>: default and most.
const TAPE_ROWS_DEFAULT = 20;
const TAPE_ROWS_MAX = 500;
// GET /v1/trades and /v1/bars: at most this many at once per connection (a grid of sparklines loads
// one series per symbol), each bounded in time, and one answered 429/503 is tried again later.
const FETCH_CONCURRENCY = 4;
const FETCH_TIMEOUT_MS = 10000;
const FETCH_RETRIES = 3;

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
// setToken(.., { tickets }): scope -> false where a token goes as ?token= (gateways without POST
// /v1/ticket); tickets everywhere else.
const ticketModes = new Map();

function defaultUrl() {
  const u = new URL("/ws", import.meta.url);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}

/**
 * Resolves a url attribute (one URL, or several separated by whitespace) to its absolute ws:/wss:
 * URLs joined by single spaces (a resolved URL holds no space: the parser escapes it), or null when
 * any entry cannot be one.
 */
function resolveUrl(attr) {
  if (!attr || !attr.trim()) return defaultUrl();
  const urls = attr.trim().split(/\s+/).map(resolveOne);
  return urls.every(Boolean) ? urls.join(" ") : null;
}

/** Resolves one URL to an absolute ws:/wss: URL, or null when it cannot be one. */
function resolveOne(attr) {
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

/** The WebSocket URL with `?ticket=`, and without any token= the url attribute had. */
function withTicket(url, ticket) {
  const u = new URL(url);
  u.searchParams.delete("token");
  u.searchParams.set("ticket", ticket);
  return u.href;
}

/**
 * POST <gateway>/v1/ticket with `token` as Authorization: Bearer. Resolves to { ticket }, to
 * { refused: the gateway's message } on 401, or to {} when it failed otherwise (network, 403, 429,
 * 5xx, an answer without a ticket): a failed connect. Never rejects; logs no URL query or token.
 */
async function requestTicket(wsUrl, token) {
  const url = restUrl(wsUrl, "v1/ticket");
  const what = `POST ${redactUrl(url.href)}`;
  let res;
  let body = null;
  try {
    res = await fetch(url.href, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
      credentials: "omit",
      cache: "no-store",
      signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    });
    body = await res.json().catch(() => null);
  } catch (e) {
    console.warn(`quote-ticker: ${what} failed: ${redactText(e && e.message ? e.message : e)}`);
    return {};
  }
  const err = body && body.error && typeof body.error === "object" ? body.error : {};
  const message = typeof err.message === "string" ? redactText(err.message) : `HTTP ${res.status}`;
  if (res.status === 401) return { refused: message };
  if (!res.ok || !body || typeof body.ticket !== "string" || !body.ticket) {
    console.warn(`quote-ticker: ${what} answered ${res.status}: ${message}`);
    return {};
  }
  return { ticket: body.ticket };
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

function connectionFor(key) {
  let c = connections.get(key);
  if (!c) {
    c = new Connection(key);
    connections.set(key, c);
  }
  return c;
}

class Connection {
  /** `key`: what resolveUrl gave, one gateway URL or several separated by single spaces. */
  constructor(key) {
    this.key = key;
    // The gateways, in the order given; `index` is the one in use (or tried next). A URL may hold a
    // token (from the url attribute): never log it, log safeUrl.
    this.urls = key.split(" ");
    this.index = 0;
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
    // What else elements need of a symbol: SYMBOL -> { tapes: [rows of each <quote-tape>], bars:
    // Map(interval -> how many sparklines) }. A subscribe carries the union (wants()): a later
    // subscribe of a symbol replaces its trades/bars choice on the gateway, so every element sharing
    // the symbol must be served by one op. One bars interval per symbol: the first one asked for
    // (Map order); a sparkline of another interval is refreshed from GET /v1/bars instead.
    this.extras = new Map();
    this.sentWants = new Map(); // SYMBOL -> wantsKey() of the subscribe last sent on this socket
    this.refusedBars = new Map(); // interval -> the gateway's message (bad_request): never sent again
    this.tradesRefused = null; // the gateway's message when it refused trades (e.g. the tier)
    this.tapes = new Map(); // SYMBOL -> recent trades and gaps (newTape), for <quote-tape>
    this.series = new Map(); // SYMBOL + "\u0000" + interval -> bars (newSeries), for sparklines
    // Bumped when the gateway's seq went backwards (it restarted): tape rows of an older epoch sort
    // below newer ones whatever their ts (a restarted replay starts its clock over too).
    this.epoch = 0;
    this.epochSocket = 0;
    this.entryNo = 0; // arrival order of tape rows, the last tie-break
    this.extrasRefused = false; // receive(): an op's trades or bars were refused in this frame
    this.fetchQueue = [];
    this.fetchesRunning = 0;
    this.restToken = null; // the token of the current connect, for GET /v1/... as a Bearer header
    this.pollTimer = 0;
    this.quotes = new Map(); // SYMBOL -> { socket, seq, fields, status }: what is shown
    // The seq guard: SYMBOL -> { quote, since } for a snapshot of the current socket older than
    // what is shown (another gateway, or one behind); updates apply to it, and it is shown once its
    // seq reaches the shown one, or after SEQ_GUARD_MS (see the header).
    this.held = new Map();
    this.guardTimer = 0;
    // After close 1012 (the quote source restarted, seq starts over): the next socket's snapshots
    // are taken whatever their seq. freshSocket is that socket's number.
    this.seqReset = false;
    this.freshSocket = 0;
    this.rejected = new Map(); // SYMBOL (or a string that is not one) -> code
    this.toSubscribe = new Set();
    this.toUnsubscribe = new Set();
    this.pendingOps = new Map(); // op id -> { op, symbols }
    this.nextId = 1;
    this.socketNo = 0; // which socket a quote's snapshot came from; updates need the same one
    // Failed connects since the last socket that worked (STABLE_MS): the backoff's input.
    this.attempt = 0;
    // URLs of a list that refused the token one after the other (after the one renew each); when
    // every URL of the list has, the connection stops as "unauthorized" (see policyRefused).
    this.refusals = 0;
    // URLs of the list (their indexes) that answered every symbol unknown_symbol since a socket on
    // which a gateway accepted a symbol: with a list, such a gateway is left for the next URL,
    // until every URL answered so (a connect that failed otherwise is no such answer); then the
    // connection stays and asks again with backoff, yet leaves for the next URL after the round
    // backoff (leaveTimer; see the header).
    this.emptyAnswers = new Set();
    this.leaveTimer = 0;
    // Of the current socket: symbols its gateway accepted, answered unknown_symbol, or refused
    // otherwise; whether it answered in protocol at all; whether its all-unknown answer counted.
    this.socketAccepted = 0;
    this.socketUnknown = new Set();
    this.socketOther = 0;
    this.heard = false;
    this.emptyCounted = false;
    // Symbols answered unknown_symbol that are asked again on this socket, after the backoff.
    this.unknownRetry = new Set();
    this.unknownTimer = 0;
    this.unknownTries = 0;
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

  /** The gateway URL in use, or tried next. */
  get url() {
    return this.urls[this.index];
  }

  get safeUrl() {
    return redactUrl(this.url);
  }

  /** The setToken scope of the gateway in use. */
  get scope() {
    return tokenScope(this.url);
  }

  /** Whether setToken(.., scope) concerns this connection: one of its URLs, or the page default. */
  coveredBy(scope) {
    return this.urls.some((u) => {
      const own = tokenScope(u);
      return own === scope || (scope === DEFAULT_SCOPE && !tokenSources.has(own));
    });
  }

  attach(widget) {
    this.widgets.add(widget);
  }

  detach(widget) {
    this.widgets.delete(widget);
    if (this.widgets.size === 0) this.dispose();
  }

  /**
   * An element shows `symbols`. `extras` (optional) is what else it needs of each: { trades: rows }
   * (a <quote-tape>) or { bars: interval } (a sparkline); release() takes the same arguments.
   */
  retain(symbols, extras) {
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
      if (extras) this.retainExtras(s, extras);
      const n = this.refs.get(s) || 0;
      this.refs.set(s, n + 1);
      if (n === 0) this.toUnsubscribe.delete(s);
      if (this.subscribed.has(s)) this.resubscribeIfChanged(s);
      else if (n === 0) this.toSubscribe.add(s);
    }
    if (rejectedChanged) {
      queueMicrotask(() => {
        for (const w of this.widgets) w._quotesChanged(new Set(), true);
      });
    }
    this.queueFlush();
  }

  release(symbols, extras) {
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
      if (extras) this.releaseExtras(s, extras);
      const n = this.refs.get(s) || 0;
      if (n > 1) {
        this.refs.set(s, n - 1);
        if (this.subscribed.has(s)) this.resubscribeIfChanged(s);
        continue;
      }
      this.refs.delete(s);
      this.quotes.delete(s);
      this.held.delete(s);
      this.rejected.delete(s);
      this.toSubscribe.delete(s);
      if (this.subscribed.has(s)) this.toUnsubscribe.add(s);
    }
    this.queueFlush();
  }

  retainExtras(s, extras) {
    let e = this.extras.get(s);
    if (!e) {
      e = { tapes: [], bars: new Map() };
      this.extras.set(s, e);
    }
    if (extras.trades) {
      e.tapes.push(extras.trades);
      if (!this.tapes.has(s)) this.tapes.set(s, newTape(s));
      this.tapes.get(s).cap = Math.max(...e.tapes);
    }
    if (extras.bars) {
      e.bars.set(extras.bars, (e.bars.get(extras.bars) || 0) + 1);
      const key = seriesKey(s, extras.bars);
      if (!this.series.has(key)) {
        this.series.set(key, newSeries(s, extras.bars));
        queueMicrotask(() => this.pollSeries(true));
      }
      if (!this.pollTimer) this.pollTimer = setInterval(() => this.pollSeries(), SPARKLINE_POLL_MS);
    }
  }

  releaseExtras(s, extras) {
    const e = this.extras.get(s);
    if (!e) return;
    if (extras.trades) {
      const i = e.tapes.indexOf(extras.trades);
      if (i >= 0) e.tapes.splice(i, 1);
      if (e.tapes.length) this.tapes.get(s).cap = Math.max(...e.tapes);
      else this.tapes.delete(s);
    }
    if (extras.bars && e.bars.has(extras.bars)) {
      const n = e.bars.get(extras.bars);
      if (n > 1) {
        e.bars.set(extras.bars, n - 1);
      } else {
        e.bars.delete(extras.bars);
        this.series.delete(seriesKey(s, extras.bars));
      }
    }
    if (!e.tapes.length && !e.bars.size) this.extras.delete(s);
    if (!this.series.size && this.pollTimer) {
      clearInterval(this.pollTimer);
      this.pollTimer = 0;
    }
  }

  /** Why the gateway will not (or cannot) give bars of `interval`, or null when it may. */
  intervalRefusal(interval) {
    if (!INTERVAL_RULE.test(interval)) return "not a bar interval";
    return this.refusedBars.has(interval) ? this.refusedBars.get(interval) : null;
  }

  /** What a subscribe of `s` carries beside the symbol: the union of what its elements need. */
  wants(s) {
    const e = this.extras.get(s);
    if (!e) return { trades: false, bars: null };
    let bars = null;
    for (const interval of e.bars.keys()) {
      if (!this.intervalRefusal(interval)) {
        bars = interval;
        break;
      }
    }
    return { trades: e.tapes.length > 0 && this.tradesRefused === null, bars };
  }

  // A symbol already subscribed on this socket whose elements now need other extras: subscribe it
  // again, with the new union (the gateway replaces the old choice and re-sends the snapshot).
  resubscribeIfChanged(s) {
    if (this.sentWants.get(s) !== wantsKey(this.wants(s))) this.toSubscribe.add(s);
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
      for (const s of symbols) {
        this.subscribed.delete(s);
        this.sentWants.delete(s);
      }
      if (symbols.length) this.send({ op: "unsubscribe", symbols });
    }
    if (this.toSubscribe.size) {
      const all = [...this.toSubscribe].filter(isSymbol);
      this.toSubscribe.clear();
      // One op per distinct extras: symbols nobody wants trades or bars of go out as before, with
      // no extra field at all.
      const groups = new Map(); // wantsKey -> { wants, symbols }
      for (const s of all) {
        const wants = this.wants(s);
        const key = wantsKey(wants);
        if (!groups.has(key)) groups.set(key, { wants, symbols: [] });
        groups.get(key).symbols.push(s);
      }
      for (const [key, { wants, symbols: list }] of groups) {
        for (let i = 0; i < list.length; i += SUBSCRIBE_CHUNK) {
          const symbols = list.slice(i, i + SUBSCRIBE_CHUNK);
          for (const s of symbols) {
            this.subscribed.add(s);
            this.sentWants.set(s, key);
          }
          const op = { op: "subscribe", symbols };
          if (wants.trades) op.trades = true;
          if (wants.bars) op.bars = wants.bars;
          this.send(op);
        }
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
    if (op.op === "subscribe") {
      this.pendingOps.set(id, { op: op.op, symbols: op.symbols, trades: !!op.trades, bars: op.bars || null });
    }
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

  /** Whether a token for this url is traded for a ticket (the default) or sent as ?token=. */
  ticketsOn() {
    const mode = ticketModes.has(this.scope) ? ticketModes.get(this.scope) : ticketModes.get(DEFAULT_SCOPE);
    return mode !== false;
  }

  /** Connects: asks the token provider first (if any), then opens the socket. */
  async open(renew) {
    if (this.disposed) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.retryDelay = null;
    const generation = ++this.generation;
    let url = this.url;
    // GET /v1/... of this connection send the same token, as a Bearer header (see restToken).
    this.restToken = new URL(this.url).searchParams.get("token");
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
      this.restToken = token;
    }
    const token = this.restToken;
    if (token && this.ticketsOn()) {
      // The token goes in a header, to POST /v1/ticket; the WebSocket URL carries only the ticket,
      // single use and short-lived (a URL is what browsers and proxies log).
      this.awaitingToken = true;
      const answer = await requestTicket(this.url, token);
      if (generation !== this.generation) return;
      this.awaitingToken = false;
      if (answer.refused !== undefined) {
        // 401: the token was refused, as a 1008 refuses it on an open socket.
        this.closeCode = null;
        this.closeReason = answer.refused;
        this.policyRefused(0, "refused the token for a ticket (401)");
        return;
      }
      if (!answer.ticket) {
        this.retryAfterFailure();
        return;
      }
      url = withTicket(this.url, answer.ticket);
    } else if (token) {
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
    this.socketAccepted = 0;
    this.socketUnknown.clear();
    this.socketOther = 0;
    this.heard = false;
    this.emptyCounted = false;
    this.unknownRetry.clear();
    clearTimeout(this.unknownTimer);
    this.unknownTimer = 0;
    this.unknownTries = 0;
    this.subscribed.clear();
    this.sentWants.clear();
    this.pendingOps.clear();
    // What the previous socket held back is of no use: this one sends its own snapshots.
    const unheld = new Set(this.held.keys());
    this.held.clear();
    if (unheld.size) for (const w of this.widgets) w._quotesChanged(unheld, false);
    if (this.seqReset) {
      this.seqReset = false;
      this.freshSocket = this.socketNo;
    }
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.openedAt = Date.now();
      this.lastHeard = Date.now();
      this.pingSentAt = 0;
      // A socket works again: how an earlier one ended is no longer the connection's state.
      this.closeCode = null;
      this.closeReason = null;
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
    clearTimeout(this.unknownTimer);
    this.unknownTimer = 0;
    clearTimeout(this.leaveTimer);
    this.leaveTimer = 0;
    // A socket that stayed open STABLE_MS, with the gateway answering in protocol, worked: the
    // backoff starts over and every URL of a list counts as not yet tried. One that was dropped
    // sooner (a flapping gateway or proxy) did not: the backoff goes on growing; nor did one whose
    // gateway knew none of the symbols (it showed nothing).
    const knewNothing = this.emptyCounted && this.socketAccepted === 0;
    if (openedAt && this.heard && !knewNothing && Date.now() - openedAt >= STABLE_MS) {
      this.attempt = 0;
      this.refusals = 0;
    }
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
      this.policyRefused(openedAt, "closed the connection with 1008 (policy)");
      return;
    }
    if (this.closeCode === CLOSE_SERVICE_RESTART) {
      // The quote source restarted: this gateway works, and its seq starts over. Back to it (it is
      // the one whose new numbering the next snapshots carry), with the guard off for one socket.
      this.seqReset = true;
      const delay = this.attempt === 0 ? Math.random() * FAILOVER_JITTER_MS : this.equalJitter();
      this.attempt++;
      this.schedule(delay, false);
      return;
    }
    this.failedOver(this.closeCode === CLOSE_GOING_AWAY);
  }

  /**
   * The gateway in use failed (a lost socket, a refused handshake, a token provider or ticket that
   * failed): on to the next URL of the list (round robin), after the delay the header describes.
   * `goingAway`: it closed with 1001.
   */
  failedOver(goingAway = false, refused = false) {
    if (this.widgets.size === 0) return;
    // The token refusals that stop a list must be one after the other (one round of the list).
    if (!refused) this.refusals = 0;
    // Another URL not tried since the last socket that worked: go now (jittered).
    const untried = this.attempt < this.urls.length - 1;
    let delay;
    if (goingAway) delay = Math.random() * Math.max(RESTART_JITTER_MS, this.backoffCeiling());
    else if (untried) delay = Math.random() * FAILOVER_JITTER_MS;
    else delay = this.equalJitter();
    this.attempt++;
    this.index = (this.index + 1) % this.urls.length;
    this.schedule(delay, false);
  }

  /** A connect that failed before any socket (the token provider): as a lost socket. */
  retryAfterFailure() {
    this.failedOver(false);
  }

  /** A delay in [ceiling/2, ceiling] ("equal jitter"): never immediate. */
  equalJitter() {
    const ceiling = this.backoffCeiling();
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  // BACKOFF_BASE_MS·2^n, at most BACKOFF_MAX_MS, for the connect after failed connect number
  // `attempt` (from 0, since the last socket that worked): n is the number of full rounds of the
  // list completed, less one (with one URL: every failed connect is a round, so n = attempt).
  // With three URLs: failures 0 and 1 go on to untried URLs (failedOver), 2, 3 and 4 wait with
  // n = 0, 5, 6 and 7 with n = 1, and so on.
  backoffCeiling() {
    const rounds = Math.max(0, Math.floor((this.attempt + 1) / this.urls.length) - 1);
    return Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(rounds, 16));
  }

  schedule(delay, renew) {
    clearTimeout(this.retryTimer);
    this.retryDelay = Math.round(delay);
    this.retryTimer = setTimeout(() => this.open(renew), delay);
    this.setState("reconnecting");
  }

  /**
   * The gateway refused the token (close 1008 on a socket open since `openedAt`, or 401 from POST
   * /v1/ticket with `openedAt` 0): one fresh token from the provider, at once; else stop.
   */
  policyRefused(openedAt, what) {
    if (openedAt && Date.now() - openedAt >= POLICY_REARM_MS) this.policyRetried = false;
    const source = this.tokenSource();
    if (typeof source === "function" && !this.policyRetried) {
      // One fresh token, at once: an expired token is the usual cause, and the gap shows.
      this.policyRetried = true;
      this.schedule(0, true);
      return;
    }
    // With a list, a gateway that refuses the token has failed, for this URL only: the next URL
    // (with its own renew), until every URL of the list has refused it, one after the other.
    if (this.urls.length > 1) {
      this.refusals++;
      if (this.refusals < this.urls.length) {
        console.warn(`quote-ticker: ${this.safeUrl} ${what}; trying the next url of the list`);
        this.policyRetried = false;
        this.failedOver(false, true);
        return;
      }
      what += " (as did every url of the list)";
    }
    this.stop(what);
  }

  /** A refused token without a way to a better one: no retry until something changes (resume). */
  stop(what) {
    this.generation++;
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.retryDelay = null;
    this.awaitingToken = false;
    const why = this.closeReason ? `: ${redactText(this.closeReason)}` : "";
    console.warn(
      `quote-ticker: ${this.safeUrl} ${what}${why}; not reconnecting ` +
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
      this.refusals = 0;
      this.emptyAnswers.clear();
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
    clearInterval(this.pollTimer);
    clearTimeout(this.guardTimer);
    clearTimeout(this.unknownTimer);
    clearTimeout(this.leaveTimer);
    this.fetchQueue = [];
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
    if (connections.get(this.key) === this) connections.delete(this.key);
  }

  /** What element.connectionInfo shows for this connection. */
  info() {
    return {
      state: this.state,
      closeCode: this.closeCode,
      closeReason: this.closeReason,
      retryDelayMs: this.retryDelay,
      url: this.safeUrl,
      urlIndex: this.index,
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
    const trades = new Set(); // SYMBOLs whose tape changed
    const bars = new Set(); // series keys that changed
    this.extrasRefused = false;
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
          if (this.applyAck(m, changed)) rejectedChanged = true;
          break;
        case "error":
          if (this.applyError(m)) rejectedChanged = true;
          break;
        case "trade":
        case "trades_lost":
          if (this.applyTrade(m)) trades.add(m.symbol);
          break;
        case "bar":
          if (this.applyBar(m)) bars.add(seriesKey(m.symbol, m.interval));
          break;
        default:
          break; // pong, symbols, and anything newer than this client
      }
    }
    // The gateway answers in protocol (with STABLE_MS open, the socket worked: see lost()).
    if (Array.isArray(frame)) this.heard = true;
    if (changed.size || rejectedChanged) {
      for (const w of this.widgets) w._quotesChanged(changed, rejectedChanged);
    }
    if (trades.size || bars.size || this.extrasRefused) this.extrasChanged(trades, bars, this.extrasRefused);
    if (this.socketUnknown.size) this.unknownAnswered();
  }

  /**
   * The gateway of this socket answered symbols unknown_symbol (applyAck). A gateway that answered
   * every symbol so (none accepted, none refused otherwise, no subscribe pending) is taken to be
   * still loading, or not to serve this market: with a list it is left for the next URL, until
   * every URL answered so one after the other. Symbols that were shown, and with such a gateway
   * every symbol, are asked again after a growing delay (they may be loading).
   */
  unknownAnswered() {
    if (!this.ws) return;
    const empty = this.socketAccepted === 0 && this.socketOther === 0 && this.pendingOps.size === 0;
    if (empty && !this.emptyCounted) {
      this.emptyCounted = true;
      this.emptyAnswers.add(this.index);
      if (this.urls.length > 1 && this.emptyAnswers.size < this.urls.length) {
        console.warn(`quote-ticker: ${this.safeUrl} knows none of the symbols asked for (still loading?); trying the next url of the list`);
        this.lost(CLOSE_NORMAL, "every symbol unknown_symbol");
        return;
      }
      if (this.urls.length > 1 && !this.leaveTimer) {
        // Every URL answered so: stay and ask again, but a gateway that knows nothing of what the
        // page shows is no place to settle while others exist: the next URL after the round backoff.
        const ws = this.ws;
        this.leaveTimer = setTimeout(() => {
          this.leaveTimer = 0;
          if (this.ws === ws && this.socketAccepted === 0) this.lost(CLOSE_NORMAL, "every symbol unknown_symbol");
        }, this.equalJitter());
      }
    }
    for (const s of this.socketUnknown) {
      if (empty || this.quotes.has(s)) this.unknownRetry.add(s);
    }
    this.socketUnknown.clear();
    if (!this.unknownRetry.size || this.unknownTimer) return;
    const ceiling = Math.min(BACKOFF_MAX_MS, UNKNOWN_RETRY_BASE_MS * 2 ** Math.min(this.unknownTries, 16));
    this.unknownTries++;
    this.unknownTimer = setTimeout(() => {
      this.unknownTimer = 0;
      for (const s of this.unknownRetry) {
        if (this.refs.has(s) && !this.subscribed.has(s)) this.toSubscribe.add(s);
      }
      this.unknownRetry.clear();
      this.flush();
    }, ceiling / 2 + Math.random() * (ceiling / 2));
  }

  /** Tells the elements that tapes (`trades`: SYMBOLs) or sparklines (`bars`: series keys) changed. */
  extrasChanged(trades, bars, all = false) {
    for (const w of this.widgets) w._extrasChanged(trades, bars, all);
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
    const quote = { socket: this.socketNo, seq, fields, status: typeof m.status === "string" ? m.status : "live" };
    this.rejected.delete(m.symbol);
    // A new socket's snapshot older than what is shown: another gateway, one behind, or one whose
    // seq started over. Held back (the seq guard) unless a 1012 said seq starts over.
    if (q && q.socket !== this.socketNo && seq < q.seq) {
      if (this.freshSocket !== this.socketNo) {
        const h = this.held.get(m.symbol);
        this.held.set(m.symbol, { quote, since: h && h.quote.socket === this.socketNo ? h.since : Date.now() });
        this.armGuard();
        return true; // the row now shows it is held
      }
      this.seqRestarted();
    }
    this.held.delete(m.symbol);
    this.quotes.set(m.symbol, quote);
    return true;
  }

  applyUpdate(m) {
    if (typeof m.seq !== "number") return false;
    const h = this.held.get(m.symbol);
    if (h && h.quote.socket === this.socketNo) {
      // Held: followed in the background, shown once it reaches the seq on screen.
      if (!(m.seq > h.quote.seq)) return false;
      applyDelta(h.quote, m);
      const q = this.quotes.get(m.symbol);
      return !q || h.quote.seq >= q.seq ? this.releaseHeld(m.symbol, false) : false;
    }
    const q = this.quotes.get(m.symbol);
    // No snapshot on this socket yet: the update's deltas would apply to the wrong base.
    if (!q || q.socket !== this.socketNo) return false;
    if (!(m.seq > q.seq)) return false;
    applyDelta(q, m);
    return true;
  }

  applyStatus(m) {
    if (typeof m.status !== "string") return false;
    const h = this.held.get(m.symbol);
    if (h && h.quote.socket === this.socketNo) {
      h.quote.status = m.status;
      return false;
    }
    const q = this.quotes.get(m.symbol);
    if (!q || q.socket !== this.socketNo) return false;
    q.status = m.status;
    return true;
  }

  /** Shows a held quote. `bounded`: SEQ_GUARD_MS passed first, so its seq started over (or lags). */
  releaseHeld(symbol, bounded) {
    const h = this.held.get(symbol);
    if (!h) return false;
    this.held.delete(symbol);
    if (bounded) this.seqRestarted();
    this.quotes.set(symbol, h.quote);
    return true;
  }

  /** Whether `symbol` is shown with an older gateway's values while this socket's are held. */
  isHeld(symbol) {
    const h = this.held.get(symbol);
    return !!h && h.quote.socket === this.socketNo;
  }

  // One timer for every held symbol: at each deadline, what has waited SEQ_GUARD_MS is shown.
  armGuard() {
    if (this.guardTimer) return;
    const oldest = Math.min(...[...this.held.values()].map((h) => h.since));
    this.guardTimer = setTimeout(() => {
      this.guardTimer = 0;
      const now = Date.now();
      const changed = new Set();
      for (const [s, h] of [...this.held]) {
        if (h.quote.socket !== this.socketNo) this.held.delete(s);
        else if (now - h.since >= SEQ_GUARD_MS && this.releaseHeld(s, true)) changed.add(s);
      }
      if (changed.size) for (const w of this.widgets) w._quotesChanged(changed, false);
      if (this.held.size) this.armGuard();
    }, Math.max(0, oldest + SEQ_GUARD_MS - Date.now()));
  }

  /** An ack; `shown`: a Set, gains the SYMBOLs whose row changed (marked unavailable). */
  applyAck(m, shown) {
    const pending = m.id !== undefined ? this.pendingOps.get(Number(m.id)) : undefined;
    if (m.id !== undefined) this.pendingOps.delete(Number(m.id));
    if (m.op !== "subscribe") return false;
    let changed = false;
    if (Array.isArray(m.symbols)) {
      for (const s of m.symbols) if (this.rejected.delete(s)) changed = true;
      if (m.symbols.length) {
        this.socketAccepted += m.symbols.length;
        this.emptyAnswers.clear();
        clearTimeout(this.leaveTimer);
        this.leaveTimer = 0;
      }
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
        const code = typeof r.code === "string" ? r.code : "rejected";
        this.subscribed.delete(sym);
        if (code === "unknown_symbol") this.socketUnknown.add(sym);
        else this.socketOther++;
        const q = this.quotes.get(sym);
        if (code === "unknown_symbol" && q) {
          // Shown before: this gateway does not know it now (restarted, still loading its cache?).
          // The row stays, with its last values marked as not live; it is asked again later.
          const wasHeld = this.held.delete(sym);
          if (wasHeld || q.status !== "unavailable") {
            q.status = "unavailable";
            shown.add(sym);
          }
          continue;
        }
        this.rejected.set(sym, code);
        changed = true;
      }
    }
    // Trades and bars flow from the ack on: what came before it is read now (GET /v1/...), so that
    // nothing falls between the history and the live messages.
    if (pending && Array.isArray(m.symbols)) {
      for (const s of m.symbols) if (this.refs.has(s)) this.loadExtras(s, pending);
    }
    // A symbol this op named that the ack neither accepted nor rejected is not being served.
    if (pending) {
      for (const s of pending.symbols) {
        if (!named.has(s) && this.refs.has(s) && !this.rejected.has(s)) {
          this.socketOther++;
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
    for (const s of pending.symbols) {
      this.subscribed.delete(s);
      this.sentWants.delete(s);
    }
    const tradesRefused = code === "unauthorized" && pending.trades;
    if ((code === "bad_request" && (pending.trades || pending.bars)) || tradesRefused) {
      // The extras were refused (bad_request: an interval this gateway does not build;
      // unauthorized: a tier without trades), not the symbols: drop one extra and subscribe again,
      // so that a sparkline or a tape never costs the quotes of the elements sharing the symbols.
      // Bars first on bad_request; trades when an op with trades only is refused too, or at once
      // on unauthorized (found from outside: a throttled key lost the symbol's quotes). Each
      // interval, and trades, is refused once per connection: never sent again on it.
      const message = typeof m.message === "string" ? m.message : code;
      if (pending.bars && !tradesRefused) this.refusedBars.set(pending.bars, message);
      else this.tradesRefused = message;
      for (const s of pending.symbols) if (this.refs.has(s) && !this.subscribed.has(s)) this.toSubscribe.add(s);
      this.queueFlush();
      this.extrasRefused = true;
      return false;
    }
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

  /** The gateway started seq over (it restarted): a new epoch for tape rows, once per socket. */
  seqRestarted() {
    if (this.epochSocket === this.socketNo) return;
    this.epoch++;
    this.epochSocket = this.socketNo;
  }

  /** After the ack of `pending` for `s`: read the history of what that op (or polling) serves. */
  loadExtras(s, pending) {
    const tape = this.tapes.get(s);
    if (tape && pending.trades) this.loadTape(tape);
    const e = this.extras.get(s);
    if (!e) return;
    const live = this.wants(s).bars;
    for (const interval of e.bars.keys()) {
      const series = this.series.get(seriesKey(s, interval));
      // The interval this op carries, or one served by polling; the symbol's live interval waits
      // for the op that carries it.
      if (series && (interval === pending.bars || interval !== live)) this.loadSeries(series, false);
    }
  }

  applyTrade(m) {
    const tape = typeof m.symbol === "string" ? this.tapes.get(m.symbol) : undefined;
    if (!tape) return false;
    if (tape.loadedOn !== this.socketNo) {
      // Until the history is read, live prints wait, so that they land after it.
      if (tape.loadingOn === this.socketNo) waitBounded(tape.pending, m);
      return false;
    }
    return m.type === "trade" ? this.tapeTrade(tape, m) : this.tapeLost(tape, m);
  }

  /** A live print: shown unless the tape already has it (seq ≤ the newest shown). */
  tapeTrade(tape, m) {
    if (typeof m.seq !== "number") return false;
    if (tape.newestSeq !== null && m.seq <= tape.newestSeq) return false;
    this.pushTrade(tape, m);
    return true;
  }

  /** trades_lost: a gap row, unless the history read after it already holds those prints. */
  tapeLost(tape, m) {
    if (tape.newestSeq !== null && typeof m.to_seq === "number" && m.to_seq <= tape.newestSeq) return false;
    const count = typeof m.count === "number" && Number.isSafeInteger(m.count) ? m.count : null;
    this.pushGap(tape, "lost", count);
    return true;
  }

  pushTrade(tape, m) {
    // The tick test: versus the previous print; an unchanged price keeps the last direction (a
    // zero-plus or zero-minus tick). After a gap the previous print is unknown: no mark.
    const c = tape.lastPrice === null ? null : compareDecimal(m.price, tape.lastPrice);
    let tick = null;
    if (c === 1 || c === -1) {
      tick = c === 1 ? "up" : "down";
      tape.lastDir = tick;
    } else if (c === 0 && tape.lastDir) {
      tick = `zero-${tape.lastDir}`;
    } else if (c === null) {
      tape.lastDir = null;
    }
    tape.lastPrice = typeof m.price === "string" || typeof m.price === "number" ? m.price : null;
    tape.newestSeq = m.seq;
    tape.entries.push({
      kind: "trade",
      symbol: tape.symbol,
      seq: m.seq,
      ts: typeof m.ts === "number" ? m.ts : 0,
      price: m.price,
      size: m.size,
      tick,
      epoch: this.epoch,
      n: ++this.entryNo,
    });
    trimTape(tape);
  }

  /** A gap row: `reason` "lost" (trades_lost, `count` known), "reconnect" or "restart". */
  pushGap(tape, reason, count) {
    const prev = tape.entries[tape.entries.length - 1];
    tape.entries.push({
      kind: "gap",
      symbol: tape.symbol,
      reason,
      count,
      // Right after the print before it; a restart's gap goes below everything of the new epoch.
      ts: reason !== "restart" && prev && prev.epoch === this.epoch ? prev.ts : -Infinity,
      epoch: this.epoch,
      n: ++this.entryNo,
    });
    tape.lastPrice = null;
    tape.lastDir = null;
    trimTape(tape);
  }

  /** Reads GET /v1/trades for a tape on this socket, then applies the prints that came meanwhile. */
  loadTape(tape) {
    const socket = this.socketNo;
    if (tape.loadedOn === socket || tape.loadingOn === socket) return;
    tape.loadingOn = socket;
    tape.pending = [];
    const limit = Math.min(tape.cap, TAPE_ROWS_MAX);
    this.fetchJson("v1/trades", { symbol: tape.symbol, limit }, "trades").then(({ list, error }) => {
      if (this.tapes.get(tape.symbol) !== tape || tape.loadingOn !== socket) return; // released
      tape.loadingOn = 0;
      if (this.socketNo !== socket) return; // a newer socket's ack reads it again
      this.mergeTape(tape, list, error);
      tape.loadedOn = socket;
      for (const m of tape.pending) {
        if (m.type === "trade") this.tapeTrade(tape, m);
        else this.tapeLost(tape, m);
      }
      tape.pending = [];
      this.extrasChanged(new Set([tape.symbol]), new Set());
    });
  }

  // The history read on a socket, joined to what the tape shows. A tape that shows nothing yet
  // takes it whole. Otherwise, when it holds the newest print shown, only what follows it is new;
  // when it does not, prints may have been missed while the connection was down (a gap row), and
  // when seq went backwards the gateway restarted (a gap row, and a new epoch).
  mergeTape(tape, list, error) {
    const restarted = tape.entries.length > 0 && tape.epoch !== this.epoch;
    tape.epoch = this.epoch;
    tape.note = error ? `earlier trades unavailable (${error})` : "";
    if (!list) {
      if (tape.entries.length) this.pushGap(tape, "reconnect", null);
      return;
    }
    const prints = list.filter((m) => m && typeof m === "object" && typeof m.seq === "number");
    if (!tape.entries.length && !restarted) {
      for (const m of prints) this.tapeTrade(tape, m);
      return;
    }
    let gap = restarted ? "restart" : null;
    if (!gap) {
      const shown = [...tape.entries].reverse().find((e) => e.kind === "trade");
      const at = prints.findIndex((m) => m.seq === tape.newestSeq);
      const same = (m) => shown && m.ts === shown.ts && m.price === shown.price && m.size === shown.size;
      const newest = prints[prints.length - 1];
      if (at >= 0 && !same(prints[at])) gap = "restart";
      else if (at < 0 && (!newest || newest.seq < tape.newestSeq)) gap = "restart";
      else if (at < 0) gap = "reconnect";
    }
    if (gap === "restart") {
      this.seqRestarted();
      tape.epoch = this.epoch;
      tape.newestSeq = null;
    }
    if (gap) this.pushGap(tape, gap, null);
    for (const m of prints) this.tapeTrade(tape, m);
  }

  applyBar(m) {
    if (typeof m.symbol !== "string" || typeof m.interval !== "string") return false;
    const series = this.series.get(seriesKey(m.symbol, m.interval));
    if (!series) return false;
    if (series.loadedOn !== this.socketNo) {
      if (series.loadingOn === this.socketNo) waitBounded(series.pending, m);
      return false;
    }
    return mergeBar(series, m);
  }

  /**
   * Reads GET /v1/bars for a sparkline: on a new socket it replaces the series (the gateway may
   * have restarted), then applies the bars that came meanwhile; a poll (`refresh`) merges.
   */
  loadSeries(series, refresh) {
    const socket = this.socketNo;
    const refusal = this.intervalRefusal(series.interval);
    if (refusal) {
      series.error = refusal;
      return;
    }
    if (series.loadingOn === socket || (!refresh && series.loadedOn === socket)) return;
    series.loadingOn = socket;
    if (!refresh) series.pending = [];
    const params = { symbol: series.symbol, interval: series.interval, limit: SPARKLINE_POINTS };
    this.fetchJson("v1/bars", params, "bars").then(({ list, error }) => {
      const key = seriesKey(series.symbol, series.interval);
      if (this.series.get(key) !== series || series.loadingOn !== socket) return;
      series.loadingOn = 0;
      if (this.socketNo !== socket) return;
      series.error = error;
      if (list && !refresh) series.bars = [];
      for (const m of list || []) mergeBar(series, m);
      if (series.loadedOn !== socket) {
        for (const m of series.pending) mergeBar(series, m);
        series.pending = [];
        series.loadedOn = socket;
      }
      this.extrasChanged(new Set(), new Set([key]));
    });
  }

  /**
   * Sparklines whose interval is not their symbol's live one (the subscription carries one): read
   * now and then. `fresh`: only those not read on this socket yet (a sparkline just added).
   */
  pollSeries(fresh = false) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    for (const series of this.series.values()) {
      const read = series.loadedOn === this.socketNo;
      if ((fresh && read) || !this.subscribed.has(series.symbol)) continue;
      if (this.wants(series.symbol).bars !== series.interval) this.loadSeries(series, read);
    }
  }

  /**
   * GET <gateway>/<path>?<params> with this connection's token; resolves to { list, error }: the
   * array `field` of the answer, or null and why not. At most FETCH_CONCURRENCY at once.
   */
  fetchJson(path, params, field) {
    return new Promise((resolve) => {
      this.fetchQueue.push({ path, params: { ...params }, field, resolve, tries: 0 });
      this.pumpFetches();
    });
  }

  pumpFetches() {
    while (this.fetchesRunning < FETCH_CONCURRENCY && this.fetchQueue.length && !this.disposed) {
      const job = this.fetchQueue.shift();
      this.fetchesRunning++;
      this.runFetch(job).finally(() => {
        this.fetchesRunning--;
        this.pumpFetches();
      });
    }
  }

  async runFetch(job) {
    const url = restUrl(this.url, job.path);
    for (const [k, v] of Object.entries(job.params)) url.searchParams.set(k, String(v));
    const what = `GET ${redactUrl(url.href)} (${job.params.symbol})`;
    // Authorization makes a cross-origin request preflighted; the gateway answers OPTIONS /v1/...
    const headers = this.restToken ? { Authorization: `Bearer ${this.restToken}` } : {};
    let res;
    let body = null;
    try {
      res = await fetch(url.href, { headers, credentials: "omit", cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
      body = await res.json().catch(() => null);
    } catch (e) {
      const why = redactText(e && e.message ? e.message : e);
      console.warn(`quote-ticker: ${what} failed: ${why}`);
      job.resolve({ list: null, error: "network error" });
      return;
    }
    const err = body && body.error && typeof body.error === "object" ? body.error : {};
    if ((res.status === 429 || res.status === 503) && job.tries < FETCH_RETRIES) {
      job.tries++;
      setTimeout(() => {
        this.fetchQueue.push(job);
        this.pumpFetches();
      }, RATE_LIMIT_RETRY_MS * job.tries);
      return;
    }
    if (!res.ok || !body || !Array.isArray(body[job.field])) {
      const code = typeof err.code === "string" ? err.code : `HTTP ${res.status}`;
      const message = typeof err.message === "string" ? `: ${redactText(err.message)}` : "";
      console.warn(`quote-ticker: ${what} answered ${res.status} ${code}${message}`);
      job.resolve({ list: null, error: CODE_TEXT[code] || code });
      return;
    }
    job.resolve({ list: body[job.field], error: null });
  }
}

// ---------------------------------------------------------------------------------------------
// Trades and bars kept by a connection, shared by the elements that show them

/** Applies an update's fields (only the changed ones travel) to a quote `q`, seq included. */
function applyDelta(q, m) {
  q.seq = m.seq;
  for (const [k, v] of Object.entries(m)) {
    if (k === "type" || k === "symbol" || k === "seq" || k === "conflated") continue;
    if (k === "status") q.status = typeof v === "string" ? v : q.status;
    else q.fields[k] = v;
  }
}

function seriesKey(symbol, interval) {
  return `${symbol}\u0000${interval}`;
}

/** What a subscribe op carries beside its symbols, as a string to compare and group by. */
function wantsKey(wants) {
  return `${wants.trades ? "trades" : ""}|${wants.bars || ""}`;
}

/** A symbol's recent prints and gap rows, oldest first, as <quote-tape>s show them. */
function newTape(symbol) {
  return {
    symbol,
    cap: TAPE_ROWS_DEFAULT, // rows kept: the most any element showing it wants
    entries: [], // { kind: "trade", seq, ts, price, size, tick, epoch, n } | { kind: "gap", reason, count, ts, epoch, n }
    newestSeq: null, // seq of the newest print shown: a print at or below it is a duplicate
    lastPrice: null, // the previous print's price and direction, for the tick mark
    lastDir: null,
    epoch: 0,
    loadedOn: 0, // the socket whose history this tape has read (0: none)
    loadingOn: 0, // the socket whose history is being read
    pending: [], // live messages that came while the history was read
    note: "",
  };
}

function trimTape(tape) {
  if (tape.entries.length > tape.cap) tape.entries.splice(0, tape.entries.length - tape.cap);
}

/** A symbol's bars of one interval, oldest first: { start, close, final, trades }. */
function newSeries(symbol, interval) {
  return { symbol, interval, bars: [], loadedOn: 0, loadingOn: 0, pending: [], error: null };
}

/**
 * Applies a bar message to a series. The same `start` again is the same bar, newer when it is final
 * or has counted more trades (the history read and the live messages may arrive in either order).
 */
function mergeBar(series, m) {
  if (!m || typeof m !== "object" || typeof m.start !== "number" || m.close === undefined || m.close === null) return false;
  const bar = { start: m.start, close: String(m.close), final: m.final === true, trades: typeof m.trades === "number" ? m.trades : 0 };
  const bars = series.bars;
  let i = bars.length - 1;
  while (i >= 0 && bars[i].start > bar.start) i--;
  if (i >= 0 && bars[i].start === bar.start) {
    const old = bars[i];
    if (old.final && !bar.final) return false;
    if (!bar.final && !old.final && bar.trades < old.trades) return false;
    if (old.final === bar.final && old.trades === bar.trades && old.close === bar.close) return false;
    bars[i] = bar;
    return true;
  }
  bars.splice(i + 1, 0, bar);
  if (bars.length > SPARKLINE_KEEP) bars.splice(0, bars.length - SPARKLINE_KEEP);
  return true;
}

/** The gateway's HTTP URL for `path` ("v1/trades"), beside the WebSocket URL's /ws. */
function restUrl(wsUrl, path) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.search = "";
  u.hash = "";
  u.pathname = u.pathname.replace(/\/ws\/?$/, "/");
  return new URL(path, u);
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
.badge[data-status="unavailable"] { color: var(--quote-ticker-stale, #9a6700); border-style: dashed; }
[data-row-status="stale"] .val, [data-row-status="stale"] .sym, [data-held] .val { opacity: .55; }
[data-row-status="unavailable"] .val, [data-row-status="unavailable"] .sym { opacity: .4; }
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
/* sparkline column */
th.spark { text-align: left; }
td.spark { padding-top: .2em; padding-bottom: .2em; }
.spark-svg { display: block; width: var(--quote-ticker-sparkline-width, 6em);
  height: var(--quote-ticker-sparkline-height, 1.5em); overflow: visible; }
.spark-svg polyline, .spark-svg .last { fill: none; stroke: var(--quote-ticker-muted, #6a737d);
  stroke-linejoin: round; stroke-linecap: round; vector-effect: non-scaling-stroke; }
.spark-svg polyline { stroke-width: 1.25; }
.spark-svg .last { stroke-width: 3.5; }
.spark-svg[data-dir="up"] polyline, .spark-svg[data-dir="up"] .last { stroke: var(--quote-ticker-up, #1a7f37); }
.spark-svg[data-dir="down"] polyline, .spark-svg[data-dir="down"] .last { stroke: var(--quote-ticker-down, #cf222e); }
.item .spark-svg { width: 4em; height: 1.1em; align-self: center; }

/* quote-tape */
.trades .bar { justify-content: space-between; align-items: baseline; gap: .75em; }
.trades .title { font-weight: 600; font-size: .85em; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.trades .note { flex: 1; font-size: .75em; color: var(--quote-ticker-stale, #9a6700); }
.trades .note[hidden], .trades .empty[hidden] { display: none; }
.trades .body { max-height: var(--quote-tape-max-height, none); overflow-y: auto; }
.trades td.time { text-align: left; color: var(--quote-ticker-muted, #6a737d); }
.trades .tick-col, .trades td.tick { width: 1.4em; padding-left: 0; text-align: center; }
.trades td.tick { font-size: .75em; }
.trades td.sym { font-weight: 600; }
.trades .sym { text-align: left; }
tr[data-tick="up"] .mark, tr[data-tick="zero-up"] .mark, tr[data-tick="up"] [data-field="price"] {
  color: var(--quote-ticker-up, #1a7f37); }
tr[data-tick="down"] .mark, tr[data-tick="zero-down"] .mark, tr[data-tick="down"] [data-field="price"] {
  color: var(--quote-ticker-down, #cf222e); }
tr[data-tick^="zero"] .mark { opacity: .55; }
td.gap { text-align: center; font-size: .8em; font-style: italic; color: var(--quote-ticker-stale, #9a6700);
  background: var(--quote-ticker-header-bg, #f6f8fa); }
tr[data-flash="up"] > * { animation: qt-up-a var(--quote-ticker-flash-duration, 900ms) ease-out; }
tr[data-flash="down"] > * { animation: qt-down-a var(--quote-ticker-flash-duration, 900ms) ease-out; }
.trades .empty { padding: .6em .75em; font-size: .85em; color: var(--quote-ticker-muted, #6a737d); }
@media (prefers-reduced-motion: reduce) {
  tr[data-flash] > * { animation: none; }
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
// The connection part of a <quote-ticker> while live but with every row unavailable (its gateway
// knows none of the element's symbols now): the socket is up, yet nothing shown is live.
const NO_QUOTES_TEXT = "Connected, no quotes";
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

/** The connection indicator's text: the state, and the gateway's reason when it stopped us. */
function connectionLabel(state, reason) {
  let text = CONNECTION_TEXT[state] || state;
  if (state === "unauthorized" && reason) {
    text += `: ${reason.length > REASON_MAX_CHARS ? `${reason.slice(0, REASON_MAX_CHARS - 1)}…` : reason}`;
  }
  return text;
}

// Sparklines: an inline SVG per row, in a 100×24 box stretched to the cell (the stroke keeps its
// width). Geometry may use binary floats; every value shown (the label) is the gateway's string.
const SVG_NS = "http://www.w3.org/2000/svg";
const SPARK_W = 100;
const SPARK_H = 24;
const SPARK_PAD = 2;
const sparkDrawn = new WeakMap(); // svg -> { closes, error }: what it draws, for displayedSparklines

function sparklineSvg(symbol, primary) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("class", "spark-svg");
  svg.setAttribute("part", "sparkline");
  svg.setAttribute("viewBox", `0 0 ${SPARK_W} ${SPARK_H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("focusable", "false");
  if (primary) {
    svg.setAttribute("role", "img");
    svg.dataset.symbol = symbol;
  } else {
    svg.setAttribute("aria-hidden", "true");
  }
  const title = document.createElementNS(SVG_NS, "title");
  const line = document.createElementNS(SVG_NS, "polyline");
  const dot = document.createElementNS(SVG_NS, "path"); // the last close: a round cap on a 0-length line
  dot.setAttribute("class", "last");
  svg.append(title, line, dot);
  drawSparkline(svg, symbol, "", [], null);
  return svg;
}

/** Draws `bars` (oldest first) as the closes' polyline; labels it with the exact strings. */
function drawSparkline(svg, symbol, interval, bars, error) {
  const closes = bars.map((b) => b.close);
  const values = closes.map(Number);
  const finite = values.filter(Number.isFinite);
  const lo = finite.length ? Math.min(...finite) : 0;
  const hi = finite.length ? Math.max(...finite) : 0;
  const n = closes.length;
  const x = (i) => (n === 1 ? SPARK_W - SPARK_PAD : SPARK_PAD + (i * (SPARK_W - 2 * SPARK_PAD)) / (n - 1));
  // A ratio first: closes near the float range overflow hi - lo (found from outside: NaN points).
  const y = (v) => {
    const r = (hi - v) / (hi - lo);
    return !Number.isFinite(r) || hi === lo ? SPARK_H / 2 : SPARK_PAD + r * (SPARK_H - 2 * SPARK_PAD);
  };
  const points = values.map((v, i) => `${x(i).toFixed(2)},${y(v).toFixed(2)}`);
  const [title, line, dot] = svg.children;
  line.setAttribute("points", points.join(" "));
  if (n) dot.setAttribute("d", `M${points[n - 1]}h0`);
  else dot.removeAttribute("d");
  const first = closes[0];
  const last = closes[n - 1];
  const c = n > 1 ? compareDecimal(last, first) : 0;
  svg.dataset.dir = c === 1 ? "up" : c === -1 ? "down" : "flat";
  svg.dataset.points = String(n);
  svg.dataset.lastClose = n ? last : "";
  svg.dataset.state = error ? "unavailable" : n ? "ok" : "empty";
  let label;
  if (error) label = `${symbol}: no ${interval} bars (${error})`;
  else if (!n) label = `${symbol}: no ${interval} bars yet`;
  else if (n === 1) label = `${symbol}: one ${interval} bar, close ${last}`;
  else label = `${symbol}: ${n} ${interval} closes, from ${first} to ${last}`;
  title.textContent = label;
  if (svg.getAttribute("role") === "img") svg.setAttribute("aria-label", label);
  sparkDrawn.set(svg, { closes, error: error || null });
}

// Live messages that wait for a history read keep at most this many, the newest (found from outside:
// a gateway that never answered the read and flooded prints grew the page's memory until the read
// timed out). A tape shows at most TAPE_ROWS_MAX prints and a sparkline SPARKLINE_POINTS bars.
const PENDING_MAX = 2 * TAPE_ROWS_MAX;

function waitBounded(pending, m) {
  pending.push(m);
  if (pending.length > PENDING_MAX) pending.splice(0, pending.length - PENDING_MAX);
}

// Shows `text` in an element's aria-live region: cleared first, so that a repeated message is
// announced again.
function announce(live, text) {
  if (!live) return;
  live.textContent = "";
  setTimeout(() => {
    live.textContent = text;
  }, 50);
}

// Lists the symbols the gateway refused (`nodes.rejected`, `nodes.rejectedList`) and announces
// those newly refused, once each while they stay refused (`announced`, the element's memory of
// them). Returns the refused symbols.
function paintRejected(rejected, nodes, announced) {
  const items = rejected.map(({ symbol, code }) => {
    const li = el("li");
    li.dataset.rejected = "";
    li.append(el("span", "rsym", symbol), el("span", "", ` (${CODE_TEXT[code] || code})`));
    return li;
  });
  nodes.rejectedList.replaceChildren(...items);
  nodes.rejected.hidden = items.length === 0;
  const gone = new Set(rejected.map((r) => r.symbol));
  const fresh = rejected.filter((r) => !announced.has(r.symbol));
  for (const r of fresh) announced.add(r.symbol);
  for (const s of [...announced]) if (!gone.has(s)) announced.delete(s);
  if (fresh.length) {
    const list = fresh.map((r) => `${r.symbol} (${CODE_TEXT[r.code] || r.code})`).join(", ");
    announce(nodes.live, `Not available: ${list}.`);
  }
  return gone;
}

// What <quote-ticker> and <quote-tape> do alike as elements: build when connected, build again
// once per task after attributes change (however many changed together), and leave their
// connection only when removed for good (a move in the DOM disconnects and reconnects in the same
// task, and keeps the subscription). The element's own work is behind two symbol-keyed methods,
// so none of it becomes public API.
const REBUILD = Symbol("rebuild");
const DETACH = Symbol("detach");

class GatewayElement extends HTMLElement {
  #rebuildQueued = false;
  #internals = null;

  constructor() {
    super();
    try {
      this.#internals = this.attachInternals();
    } catch {
      // no ElementInternals: the states are still on the container part (data-connection)
    }
  }

  // The connection state as a custom state of the element, for host pages' CSS:
  // quote-ticker:state(reconnecting) { outline: 2px dashed orange; }
  _reflectState(state) {
    const states = this.#internals && this.#internals.states;
    if (!states) return;
    try {
      for (const s of [...states]) if (s !== state) states.delete(s);
      states.add(state);
    } catch {
      // a browser that only takes the older "--state" form: data-connection still says it
    }
  }

  connectedCallback() {
    this[REBUILD]();
  }

  disconnectedCallback() {
    queueMicrotask(() => {
      if (!this.isConnected) this[DETACH]();
    });
  }

  attributeChangedCallback(name, oldValue, newValue) {
    if (oldValue === newValue || !this.isConnected || this.#rebuildQueued) return;
    this.#rebuildQueued = true;
    queueMicrotask(() => {
      this.#rebuildQueued = false;
      if (this.isConnected) this[REBUILD]();
    });
  }
}

class QuoteTicker extends GatewayElement {
  static get observedAttributes() {
    return ["symbols", "url", "fields", "layout", "sparkline"];
  }

  #root;
  #conn = null;
  #symbols = [];
  #fields = DEFAULT_FIELDS;
  #layout = "grid";
  #sparkline = null; // bar interval of the sparkline column, or null: none
  #views = new Map(); // SYMBOL -> { rows: [el], cells: { field: [el] }, badges: [el], arrows: [el], sparks: [svg], shown, status }
  #sparkDirty = new Set();
  #dirty = new Set();
  #rejectedDirty = false;
  #frame = 0;
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
   * @param {{ tickets?: boolean }} [options] tickets: false sends the token as ?token= (a gateway
   *   without POST /v1/ticket); default: traded for a ticket before each connect
   */
  static setToken(token, url, options) {
    const provider = typeof token === "function";
    if (token !== null && token !== undefined && !provider && (typeof token !== "string" || !token)) {
      throw new TypeError("quote-ticker: setToken takes a non-empty string, a function that returns one (or a promise of one), or null");
    }
    let scope = DEFAULT_SCOPE;
    if (url !== undefined && url !== null) {
      const resolved = String(url).trim() ? resolveOne(String(url)) : null;
      if (!resolved) throw new TypeError("quote-ticker: setToken: url is not one ws:, wss:, http: or https: URL");
      scope = tokenScope(resolved);
    }
    if (token === null || token === undefined) tokenSources.delete(scope);
    else tokenSources.set(scope, token);
    if (options && typeof options === "object" && "tickets" in options) ticketModes.set(scope, options.tickets !== false);
    for (const c of connections.values()) if (c.coveredBy(scope)) c.resume(true);
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
      q.seq = v.seq === "" || v.seq === undefined ? null : Number(v.seq);
      q.held = !!v.held;
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

  /**
   * What the sparkline column draws: { SYMBOL: { interval, closes: [exact strings, oldest first],
   * last, error } } for every shown symbol; {} without the sparkline attribute.
   */
  get displayedSparklines() {
    const out = {};
    if (!this.#sparkline) return out;
    for (const [sym, v] of this.#views) {
      if (v.rows[0].hidden || !v.sparks[0]) continue;
      const d = sparkDrawn.get(v.sparks[0]) || { closes: [], error: null };
      out[sym] = { interval: this.#sparkline, closes: [...d.closes], last: d.closes.length ? d.closes[d.closes.length - 1] : null, error: d.error };
    }
    return out;
  }

  [REBUILD]() {
    this.#rebuild();
  }

  [DETACH]() {
    this.#detach();
  }

  #detach() {
    if (!this.#conn) return;
    const conn = this.#conn;
    this.#conn = null;
    conn.release(this.#symbols, this.#extras());
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
    const spark = this.getAttribute("sparkline");
    // A bare attribute means one-minute bars; the value is sent as given (case and all).
    const sparkline = spark === null ? null : spark.trim() || "1m";

    // Subscribe to the new set before releasing the old one, so a shared symbol is never dropped.
    const old = this.#conn;
    const oldSymbols = this.#symbols;
    const oldExtras = this.#extras();
    const conn = url && symbols.length ? connectionFor(url) : null;
    if (conn) {
      conn.attach(this);
      conn.retain(symbols, sparkline ? { bars: sparkline } : null);
      conn.resume(false); // a connection stopped after 1008 tries again when something changes
    }
    if (old) {
      old.release(oldSymbols, oldExtras);
      if (old !== conn) old.detach(this);
    }
    this.#conn = conn;
    this.#symbols = symbols;
    this.#fields = fields;
    this.#layout = layout;
    this.#sparkline = sparkline;
    this.#render();
    // Announced by this element only where no other element already speaks for the connection.
    const lead = !conn || conn.widgets.values().next().value === this;
    this._connectionChanged(lead, url === null ? "failed" : undefined);
    for (const s of symbols) this.#dirty.add(s);
    for (const s of this.#sparkline ? symbols : []) this.#sparkDirty.add(s);
    this.#rejectedDirty = true;
    this.#paint();
  }

  /** What this element asks of its connection beside quotes (Connection.retain). */
  #extras() {
    return this.#sparkline ? { bars: this.#sparkline } : null;
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
        sparks: [],
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
    if (this.#sparkline) {
      const spTh = el("th", "spark", `Trend (${this.#sparkline})`);
      spTh.scope = "col";
      head.append(spTh);
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
      if (this.#sparkline) {
        const td = el("td", "spark");
        const svg = sparklineSvg(sym, true);
        td.append(svg);
        v.sparks.push(svg);
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
        if (this.#sparkline) {
          const svg = sparklineSvg(sym, primary);
          v.sparks.push(svg);
          li.append(svg);
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

  // The connection part's text: "Live" only when some row is not unavailable (data-quotes="none"
  // on the container otherwise).
  #labelConnection() {
    const { box, connText } = this.#nodes;
    if (!box) return;
    const state = this.#state;
    const none = state === "live" && this.#views.size > 0 && [...this.#views.values()].every((v) => v.status === "unavailable");
    const text = none ? NO_QUOTES_TEXT : connectionLabel(state, this.#conn && this.#conn.closeReason);
    if (connText.textContent !== text) connText.textContent = text;
    if (none) box.dataset.quotes = "none";
    else delete box.dataset.quotes;
  }

  // Called by the connection; `lead` is the element that speaks for the whole connection.
  _connectionChanged(lead, forced) {
    const state = forced || (this.#conn ? this.#conn.state : "idle");
    const before = this.#state;
    this.#state = state;
    if (this.#nodes.box) {
      this.#nodes.box.dataset.connection = state;
      this.#labelConnection();
      // The values on screen are the last ones received, not live, until the connection is back.
      this.#nodes.body.setAttribute("aria-busy", String(state === "connecting" || state === "reconnecting"));
    }
    this._reflectState(state);
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

  // Called by the connection: tapes (`trades`) or series (`bars`, keys) changed; `all`: refusals.
  _extrasChanged(trades, bars, all) {
    if (!this.#sparkline) return;
    let any = false;
    for (const s of this.#symbols) {
      if (all || bars.has(seriesKey(s, this.#sparkline))) {
        this.#sparkDirty.add(s);
        any = true;
      }
    }
    if (any && !this.#frame) this.#frame = requestAnimationFrame(() => this.#paint());
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
    let statusChanged = false;
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
        statusChanged = true;
      }
      const seq = q ? String(q.seq) : "";
      const held = !!conn && conn.isHeld(sym);
      if (seq !== v.seq || held !== v.held) {
        v.seq = seq;
        v.held = held;
        for (const r of v.rows) {
          if (r.dataset.symbol) r.dataset.seq = seq;
          r.toggleAttribute("data-held", held);
        }
        for (const b of v.badges) {
          if (held) b.title = "Waiting for this gateway to catch up; showing the last values";
          else b.removeAttribute("title");
        }
      }
    }
    this.#dirty.clear();
    if (statusChanged) this.#labelConnection();
    for (const sym of this.#sparkDirty) {
      const v = this.#views.get(sym);
      if (!v || !v.sparks.length) continue;
      const series = conn && conn.series.get(seriesKey(sym, this.#sparkline));
      const error = conn ? conn.intervalRefusal(this.#sparkline) || (series && series.error) : null;
      for (const svg of v.sparks) drawSparkline(svg, sym, this.#sparkline, series ? series.bars : [], error);
    }
    this.#sparkDirty.clear();
    if (this.#rejectedDirty) {
      this.#rejectedDirty = false;
      this.#paintRejected();
    }
  }

  #paintRejected() {
    const gone = paintRejected(this.rejectedSymbols, this.#nodes, this.#announcedRejects);
    for (const [sym, v] of this.#views) for (const r of v.rows) r.hidden = gone.has(sym);
  }

  #announce(text) {
    announce(this.#nodes.live, text);
  }
}

if (!customElements.get("quote-ticker")) customElements.define("quote-ticker", QuoteTicker);

// ---------------------------------------------------------------------------------------------
// <quote-tape>: the last trades of some symbols, newest on top (see the header)

const TICK_MARK = { up: "▲", down: "▼", "zero-up": "▲", "zero-down": "▼" };
const TICK_TEXT = { up: "up tick", down: "down tick", "zero-up": "zero-plus tick", "zero-down": "zero-minus tick" };

function gapText(entry, multi) {
  let text;
  if (entry.reason === "lost" && entry.count !== null) {
    text = `${entry.count.toLocaleString("en-US")} ${entry.count === 1 ? "trade" : "trades"} missed`;
  } else if (entry.reason === "restart") {
    text = "Gateway restarted: trades may have been missed";
  } else if (entry.reason === "reconnect") {
    text = "Reconnected: trades may have been missed";
  } else {
    text = "Trades missed";
  }
  return multi ? `${entry.symbol}: ${text}` : text;
}

/** Newest first: a later epoch (the gateway restarted), a later ts, a later arrival. */
function newestFirst(a, b) {
  if (a.epoch !== b.epoch) return b.epoch - a.epoch;
  if (a.ts !== b.ts) return a.ts < b.ts ? 1 : -1;
  return b.n - a.n;
}

class QuoteTape extends GatewayElement {
  static get observedAttributes() {
    return ["symbols", "url", "rows"];
  }

  #root;
  #conn = null;
  #symbols = [];
  #rows = TAPE_ROWS_DEFAULT;
  #state = "idle";
  #announced = "";
  #announcedRejects = new Set();
  #nodes = {};
  #rowEls = new Map(); // entry -> <tr>
  #frame = 0;

  constructor() {
    super();
    this.#root = this.attachShadow({ mode: "open" });
  }

  /** The same as QuoteTicker.setToken: tokens belong to a url, whichever element shows it. */
  static setToken(token, url, options) {
    QuoteTicker.setToken(token, url, options);
  }

  /** "idle", "connecting", "live", "reconnecting", "unauthorized" or "failed". */
  get connectionState() {
    return this.#state;
  }

  /** { state, closeCode, closeReason, retryDelayMs }: as QuoteTicker's. */
  get connectionInfo() {
    const info = this.#conn
      ? this.#conn.info()
      : { state: this.#state, closeCode: null, closeReason: null, retryDelayMs: null };
    info.state = this.#state;
    return info;
  }

  /** Symbols the gateway refused: [{ symbol, code }]. */
  get rejectedSymbols() {
    if (!this.#conn) return [];
    return this.#symbols
      .filter((s) => this.#conn.rejected.has(s))
      .map((s) => ({ symbol: s, code: this.#conn.rejected.get(s) }));
  }

  /**
   * The rows on screen, newest first: { kind: "trade", symbol, seq, ts, time, price, size, tick }
   * (time, price and size as shown; tick "up", "down", "zero-up", "zero-down" or null) or
   * { kind: "gap", symbol, reason: "lost" | "reconnect" | "restart", count, text }.
   */
  get displayedTrades() {
    const body = this.#nodes.tbody;
    if (!body) return [];
    return [...body.rows].map((tr) => {
      const d = tr.dataset;
      if (d.kind === "gap") {
        return { kind: "gap", symbol: d.symbol, reason: d.reason, count: d.count ? Number(d.count) : null, text: tr.textContent };
      }
      const cell = (f) => tr.querySelector(`[data-field="${f}"]`);
      return {
        kind: "trade",
        symbol: d.symbol,
        seq: Number(d.seq),
        ts: Number(cell("ts").dataset.value),
        time: cell("ts").textContent,
        price: cell("price").textContent,
        size: cell("size").textContent,
        tick: d.tick || null,
      };
    });
  }

  [REBUILD]() {
    this.#rebuild();
  }

  [DETACH]() {
    this.#detach();
  }

  #detach() {
    if (!this.#conn) return;
    const conn = this.#conn;
    this.#conn = null;
    conn.release(this.#symbols, { trades: this.#rows });
    conn.detach(this);
    this.#symbols = [];
    cancelAnimationFrame(this.#frame);
    this.#frame = 0;
  }

  #rebuild() {
    const url = resolveUrl(this.getAttribute("url"));
    const symbols = parseList(this.getAttribute("symbols"), true);
    // As a number, whole rows: "1e9" is the most (not 1, as parseInt reads it), "2.5" is 2.
    const asked = Number((this.getAttribute("rows") || "").trim() || Number.NaN);
    const rows = Number.isFinite(asked) && asked >= 1 ? Math.min(Math.floor(asked), TAPE_ROWS_MAX) : TAPE_ROWS_DEFAULT;
    // As QuoteTicker: the new set first, so that a shared symbol (and its tape) is never dropped.
    const old = this.#conn;
    const oldSymbols = this.#symbols;
    const oldRows = this.#rows;
    const conn = url && symbols.length ? connectionFor(url) : null;
    if (conn) {
      conn.attach(this);
      conn.retain(symbols, { trades: rows });
      conn.resume(false);
    }
    if (old) {
      old.release(oldSymbols, { trades: oldRows });
      if (old !== conn) old.detach(this);
    }
    this.#conn = conn;
    this.#symbols = symbols;
    this.#rows = rows;
    this.#render();
    const lead = !conn || conn.widgets.values().next().value === this;
    this._connectionChanged(lead, url === null ? "failed" : undefined);
    this.#paint();
  }

  #render() {
    const multi = this.#symbols.length > 1;
    const style = el("style");
    style.textContent = STYLE;
    const box = el("div", "qt grid trades");
    box.setAttribute("part", "container");
    const bar = el("div", "bar");
    bar.setAttribute("part", "bar");
    const title = el("span", "title", this.#symbols.filter(isSymbol).join(", "));
    const note = el("span", "note");
    note.hidden = true;
    const conn = el("span", "conn");
    conn.setAttribute("part", "connection");
    const dot = el("span", "dot");
    dot.setAttribute("aria-hidden", "true");
    const connText = el("span", "conn-text");
    conn.append(dot, connText);
    bar.append(title, note, conn);
    const body = el("div", "body");
    body.setAttribute("part", "body");
    const table = el("table");
    table.setAttribute("part", "table");
    table.append(el("caption", "sr-only", `Trades: ${this.#symbols.join(", ")}, newest first`));
    const head = el("tr");
    const labels = ["Time", ...(multi ? ["Symbol"] : []), "Price", "Size"];
    for (const label of labels) {
      const th = el("th", label === "Symbol" ? "sym" : "", label);
      th.scope = "col";
      head.append(th);
    }
    const tickTh = el("th", "tick-col");
    tickTh.scope = "col";
    tickTh.append(el("span", "sr-only", "Tick"));
    head.append(tickTh);
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    table.append(thead, tbody);
    const empty = el("div", "empty", "No trades yet");
    body.append(table, empty);
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
    box.append(bar, body, rejected, live);
    this.#root.replaceChildren(style, box);
    this.#nodes = { box, connText, note, body, tbody, empty, rejected, rejectedList, live, columns: labels.length + 1, multi };
    this.#rowEls = new Map();
    this.#announcedRejects = new Set();
  }

  // Called by the connection, as on QuoteTicker.
  _connectionChanged(lead, forced) {
    const state = forced || (this.#conn ? this.#conn.state : "idle");
    const before = this.#state;
    this.#state = state;
    if (this.#nodes.box) {
      this.#nodes.box.dataset.connection = state;
      this.#nodes.connText.textContent = connectionLabel(state, this.#conn && this.#conn.closeReason);
      // The values on screen are the last ones received, not live, until the connection is back.
      this.#nodes.body.setAttribute("aria-busy", String(state === "connecting" || state === "reconnecting"));
    }
    this._reflectState(state);
    if (before === state) return;
    if (lead && CONNECTION_ANNOUNCE[state] && this.#announced !== state) {
      this.#announced = state;
      this.#announce(CONNECTION_ANNOUNCE[state]);
    }
    this.dispatchEvent(
      new CustomEvent("connectionstatechange", { detail: this.connectionInfo, bubbles: true, composed: true }),
    );
  }

  _quotesChanged(symbols, rejectedChanged) {
    if (rejectedChanged) this.#schedule();
  }

  _extrasChanged(trades, bars, all) {
    if (all || this.#symbols.some((s) => trades.has(s))) this.#schedule();
  }

  #schedule() {
    if (!this.#frame) this.#frame = requestAnimationFrame(() => this.#paint());
  }

  // Rows are kept per entry, so a new print adds one row at the top and the others stay put.
  #paint() {
    this.#frame = 0;
    const conn = this.#conn;
    const { tbody, empty, note, multi } = this.#nodes;
    const entries = [];
    const notes = [];
    for (const s of this.#symbols) {
      const tape = conn && conn.tapes.get(s);
      if (!tape) continue;
      entries.push(...tape.entries);
      if (tape.note) notes.push(multi ? `${s}: ${tape.note}` : tape.note);
    }
    entries.sort(newestFirst);
    const shown = entries.slice(0, this.#rows);
    const wasEmpty = this.#rowEls.size === 0;
    const next = new Map();
    const rows = shown.map((entry) => {
      let tr = this.#rowEls.get(entry);
      if (!tr) {
        tr = this.#row(entry);
        // A live print flashes; the history read at once does not.
        if (!wasEmpty && entry.kind === "trade" && entry.tick) tr.dataset.flash = entry.tick.replace("zero-", "");
      }
      next.set(entry, tr);
      return tr;
    });
    // Rows that stay are never moved (a moved row would restart its flash): old ones go, new ones
    // are inserted where they belong.
    for (const [entry, tr] of this.#rowEls) if (!next.has(entry)) tr.remove();
    this.#rowEls = next;
    let cursor = tbody.firstElementChild;
    for (const tr of rows) {
      if (tr === cursor) cursor = cursor.nextElementSibling;
      else tbody.insertBefore(tr, cursor);
    }
    empty.hidden = rows.length > 0;
    const refused = conn && conn.tradesRefused ? [`trades not available: ${conn.tradesRefused}`] : [];
    const text = [...refused, ...notes].join("; ");
    note.textContent = text;
    note.hidden = !text;
    this.#paintRejected();
  }

  #row(entry) {
    const multi = this.#nodes.multi;
    const tr = el("tr");
    tr.setAttribute("part", "row");
    tr.dataset.symbol = entry.symbol;
    tr.dataset.kind = entry.kind;
    if (entry.kind === "gap") {
      tr.dataset.reason = entry.reason;
      if (entry.count !== null) tr.dataset.count = String(entry.count);
      const td = el("td", "gap", gapText(entry, multi));
      td.colSpan = this.#nodes.columns;
      td.setAttribute("part", "gap");
      tr.append(td);
      return tr;
    }
    tr.dataset.seq = String(entry.seq);
    tr.dataset.tick = entry.tick || "";
    const cell = (field, text, raw, className) => {
      const td = el("td", className);
      const span = el("span", "val num", text);
      span.dataset.field = field;
      span.dataset.value = rawValue(raw);
      if (field === "price") span.setAttribute("part", "price");
      td.append(span);
      return td;
    };
    tr.append(cell("ts", formatValue("ts", entry.ts), entry.ts, "time"));
    if (multi) tr.append(el("td", "sym", entry.symbol));
    tr.append(cell("price", formatValue("last", entry.price), entry.price, "num"));
    tr.append(cell("size", formatValue("last_size", entry.size), entry.size, "num"));
    const tick = el("td", "tick");
    tick.setAttribute("part", "tick");
    if (entry.tick) {
      const mark = el("span", "mark", TICK_MARK[entry.tick]);
      mark.setAttribute("aria-hidden", "true");
      tick.append(mark, el("span", "sr-only", TICK_TEXT[entry.tick]));
    }
    tr.append(tick);
    return tr;
  }

  #paintRejected() {
    paintRejected(this.rejectedSymbols, this.#nodes, this.#announcedRejects);
  }

  #announce(text) {
    announce(this.#nodes.live, text);
  }
}

if (!customElements.get("quote-tape")) customElements.define("quote-tape", QuoteTape);

export { QuoteTicker, QuoteTape };
