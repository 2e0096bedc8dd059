//! Stage 1, feeds: the HTTP polling adapter (`kind = "http_poll"`): asks an upstream REST endpoint
//! for its symbols' quotes every `interval_ms`, in batches, and turns the quotes that changed into
//! ticks.
//!
//! The response shape is config, not code (`[feeds.response]`): a JSON array of objects or an object
//! keyed by symbol, optionally under a `root` path, with upstream field names mapped to quote fields.
//! Prices are parsed from the raw JSON text (`crate::fields`), never through `f64`.
//!
//! Faults: each batch backs off exponentially with jitter after a failed poll (so a dead upstream is
//! not hammered, and many gateways do not retry in lock-step), and a symbol without a good answer for
//! `stale_after_ms` is marked `stale`; the first good answer is sent whole as a tick, which makes it
//! `live` again (and, with failover, takes it back) with the prices of that answer. A quote that fails
//! to parse is dropped whole and counted: the gateway would rather show an old price than a wrong one.
//!
//! Backpressure: polling is paced by the interval; a poll's ticks wait in `FeedContext::send` if the
//! index is behind, which only delays the next poll.

mod response;

use response::QUOTE_FIELDS;
pub use response::{map_response, Mapped, ResponseConfig, Shape};

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg32;
use serde::Deserialize;
use tokio::time::Instant;

use super::{Feed, FeedContext, FeedError};
use crate::access::Secret;
use crate::log_limit::{truncated, LogLimiter};
use crate::model::{
    ms_within, same_price, valid_symbol, Status, Symbol, Tick, Trade, MAX_SETTING_MS, SYMBOL_RULE,
};

/// Answers larger than this are refused (a misbehaving upstream cannot exhaust memory).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPollConfig {
    pub name: String,
    /// Substituted for `{base}` in `url`.
    #[serde(default)]
    pub base: String,
    /// Request URL; `{symbols}` becomes the batch, comma-separated and percent-encoded.
    pub url: String,
    pub symbols: Vec<String>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// A symbol with no good answer for this long is marked `stale`.
    #[serde(default = "default_stale_after_ms")]
    pub stale_after_ms: u64,
    /// The longest wait between retries of a failing batch.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Request headers. A value `${NAME}` is read from the environment at start. Values are never
    /// logged.
    #[serde(default)]
    pub headers: HashMap<String, Secret>,
    pub response: ResponseConfig,
}

fn default_batch_size() -> usize {
    50
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    2000
}
fn default_stale_after_ms() -> u64 {
    5000
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

impl HttpPollConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !self.url.contains("{symbols}") {
            return Err(("url".into(), "must contain {symbols}".into()));
        }
        if self.symbols.is_empty() {
            return Err(("symbols".into(), "list at least one symbol".into()));
        }
        if let Some(bad) = self.symbols.iter().find(|s| !valid_symbol(s)) {
            return Err((
                "symbols".into(),
                format!("'{bad}' is not a symbol: {SYMBOL_RULE}"),
            ));
        }
        if self.batch_size == 0 {
            return Err(("batch_size".into(), "must be at least 1".into()));
        }
        ms_within("interval_ms", self.interval_ms, 10..=MAX_SETTING_MS)?;
        ms_within("timeout_ms", self.timeout_ms, 1..=MAX_SETTING_MS)?;
        ms_within("stale_after_ms", self.stale_after_ms, 1..=MAX_SETTING_MS)?;
        ms_within("backoff_max_ms", self.backoff_max_ms, 1..=MAX_SETTING_MS)?;
        // The request URL as the poller will build it: a URL that cannot be one is a config
        // error at start, not an upstream failing for ever.
        let example = self
            .url
            .replace("{base}", &self.base)
            .replace("{symbols}", "AAPL");
        match reqwest::Url::parse(&example) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            // Not echoed: a vendor's key may sit in the URL.
            Ok(_) => {
                return Err((
                    "url".into(),
                    "with {base} filled in, must be an http:// or https:// URL with a host".into(),
                ))
            }
            Err(e) => {
                return Err((
                    "url".into(),
                    format!("with {{base}} filled in, it is not a URL: {e}"),
                ))
            }
        }
        if let Some(bad) = self
            .response
            .fields
            .keys()
            .find(|k| !QUOTE_FIELDS.contains(&k.as_str()))
        {
            return Err((
                format!("response.fields.{bad}"),
                format!("not a quote field; use one of {}", QUOTE_FIELDS.join(", ")),
            ));
        }
        Ok(())
    }
}

pub struct HttpPollFeed {
    config: HttpPollConfig,
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
    symbols: Vec<Symbol>,
}

impl HttpPollFeed {
    pub fn new(config: HttpPollConfig) -> Result<HttpPollFeed, FeedError> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, secret) in &config.headers {
            let value = secret
                .resolve()
                .map_err(|e| FeedError::Setup(format!("header '{name}': {e}")))?;
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| FeedError::Setup(format!("'{name}' is not a header name")))?;
            let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                FeedError::Setup(format!(
                    "header '{name}': the value is not a valid header value"
                ))
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let from = attempt.previous().last().cloned();
                match from.map(|from| redirect_allowed(&from, attempt.url())) {
                    _ if attempt.previous().len() > MAX_REDIRECTS => {
                        attempt.error("more than 5 redirects")
                    }
                    Some(Err(why)) => attempt.error(why),
                    _ => attempt.follow(),
                }
            }))
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            .user_agent(concat!("quotegw/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FeedError::Setup(format!("cannot build the HTTP client: {e}")))?;
        let symbols = config
            .symbols
            .iter()
            .map(|s| Symbol::from(s.to_uppercase()))
            .collect();
        Ok(HttpPollFeed {
            config,
            client,
            headers,
            symbols,
        })
    }
}

/// Redirects followed at most, each within the upstream's own host.
const MAX_REDIRECTS: usize = 5;

/// Whether the poller follows a redirect from `from` to `to`. Never to another host (or port):
/// reqwest strips only `Authorization` and cookies on such a redirect, so a custom header such as
/// `X-Api-Key` would reach whoever the upstream points at. Never from https to http: the key and
/// the quotes would then travel in clear.
pub fn redirect_allowed(from: &reqwest::Url, to: &reqwest::Url) -> Result<(), &'static str> {
    // http → https on the same host and default ports is the usual upgrade, and safe.
    let upgrade = from.scheme() == "http"
        && to.scheme() == "https"
        && from.port().is_none()
        && to.port().is_none();
    if from.scheme() == "https" && to.scheme() != "https" {
        Err("redirect from https to http refused")
    } else if from.host_str() != to.host_str()
        || (from.port_or_known_default() != to.port_or_known_default() && !upgrade)
    {
        Err("redirect to another host refused (it would receive the request headers)")
    } else {
        Ok(())
    }
}

/// Why a poll failed; the label of `quotegw_poll_errors_total`.
#[derive(Debug)]
enum PollError {
    Connect(String),
    Timeout,
    Status(u16),
    Redirect(String),
    Body(String),
    Decode(String),
}

impl PollError {
    fn kind(&self) -> &'static str {
        match self {
            PollError::Connect(_) => "connect",
            PollError::Timeout => "timeout",
            PollError::Status(_) => "status",
            PollError::Redirect(_) => "redirect",
            PollError::Body(_) => "body",
            PollError::Decode(_) => "decode",
        }
    }
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollError::Connect(e) => write!(f, "cannot connect: {e}"),
            PollError::Timeout => f.write_str("no answer within timeout_ms"),
            PollError::Status(s) => write!(f, "HTTP status {s}"),
            PollError::Redirect(e) => write!(f, "{e}"),
            PollError::Body(e) => write!(f, "reading the body failed: {e}"),
            PollError::Decode(e) => write!(f, "the body does not match [response]: {e}"),
        }
    }
}

fn from_reqwest(e: reqwest::Error) -> PollError {
    if e.is_timeout() {
        PollError::Timeout
    } else if e.is_connect() {
        PollError::Connect(e.without_url().to_string())
    } else if e.is_redirect() {
        // The policy's own reason, without the URL (it may carry the symbols or a key).
        let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        PollError::Redirect(why)
    } else {
        PollError::Body(e.without_url().to_string())
    }
}

struct Batch {
    symbols: Vec<Symbol>,
    url: String,
    next_due: Instant,
    failures: u32,
}

/// Per-symbol memory: what was last sent and when the upstream last answered for it.
struct SymbolState {
    sent: Tick,
    good_at: Instant,
    stale: bool,
    /// A good answer for it came within `stale_after_ms`: what `quotegw_feed_up` follows.
    answered: bool,
}

/// What a symbol keeps unescaped in a URL: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn batch_url(template: &str, base: &str, symbols: &[Symbol]) -> String {
    let mut list = String::new();
    for (i, s) in symbols.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.extend(percent_encoding::utf8_percent_encode(s, UNRESERVED));
    }
    template.replace("{base}", base).replace("{symbols}", &list)
}

/// The fields of `now` that differ from `sent`, or `None` when nothing but `ts` changed.
fn changes(sent: &Tick, now: &Tick) -> Option<Tick> {
    let price = |a: Option<rust_decimal::Decimal>, b| (!same_price(a, b)).then_some(b).flatten();
    let num = |a: Option<i64>, b: Option<i64>| (a != b).then_some(b).flatten();
    let t = Tick {
        feed: 0,
        symbol: now.symbol.clone(),
        ts: now.ts,
        bid: price(sent.bid, now.bid),
        ask: price(sent.ask, now.ask),
        last: price(sent.last, now.last),
        bid_size: num(sent.bid_size, now.bid_size),
        ask_size: num(sent.ask_size, now.ask_size),
        last_size: num(sent.last_size, now.last_size),
        volume: num(sent.volume, now.volume),
        status: (sent.status != now.status).then_some(now.status).flatten(),
        trade: inferred_trade(sent, now),
    };
    has_values(&t).then_some(t)
}

/// The trade a poll shows, if any: the upstream answers with the latest state, not its trades, so
/// a trade is inferred from it moving. With `volume`: a rise is a trade of that many shares at
/// `last` (two or more trades between polls look like one, the volume between them as its
/// size; a fall is a new session, not a trade). Without `volume`: a new `last` is a trade of
/// `last_size`. Nothing is inferred from a symbol's first answer, or the first after an outage
/// (`sent` is empty then): what printed before it is unknown.
fn inferred_trade(sent: &Tick, now: &Tick) -> Option<Trade> {
    let price = now.last.or(sent.last)?;
    match (sent.volume, now.volume) {
        (Some(before), Some(after)) if after > before => Some(Trade {
            price,
            size: after - before,
        }),
        (None, None) if sent.last.is_some() && !same_price(sent.last, now.last) => {
            Trade::of_fields(now.last, now.last_size.or(sent.last_size))
        }
        _ => None,
    }
}

/// Whether a tick carries any quote field (its `ts` aside).
fn has_values(t: &Tick) -> bool {
    t.bid.is_some()
        || t.ask.is_some()
        || t.last.is_some()
        || t.bid_size.is_some()
        || t.ask_size.is_some()
        || t.last_size.is_some()
        || t.volume.is_some()
        || t.status.is_some()
}

/// Merges the given fields of `tick` into `into` (what was sent so far).
fn remember(into: &mut Tick, tick: &Tick) {
    into.bid = tick.bid.or(into.bid);
    into.ask = tick.ask.or(into.ask);
    into.last = tick.last.or(into.last);
    into.bid_size = tick.bid_size.or(into.bid_size);
    into.ask_size = tick.ask_size.or(into.ask_size);
    into.last_size = tick.last_size.or(into.last_size);
    into.volume = tick.volume.or(into.volume);
    into.status = tick.status.or(into.status);
}

impl HttpPollFeed {
    async fn poll(&self, url: &str) -> Result<Vec<u8>, PollError> {
        let response = self
            .client
            .get(url)
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(from_reqwest)?;
        if !response.status().is_success() {
            return Err(PollError::Status(response.status().as_u16()));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(from_reqwest)?;
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(PollError::Body(format!(
                    "the answer is larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The delay before retrying a batch after `failures` failed polls in a row: exponential from
    /// the interval, capped, with "full jitter" over its upper half.
    fn backoff(&self, failures: u32, rng: &mut Pcg32) -> Duration {
        let base = self.config.interval_ms.max(1);
        let exp = base.saturating_mul(1u64 << failures.min(20));
        let capped = exp.min(self.config.backoff_max_ms.max(base));
        let jitter = u64::from(rng.next_u32()) % (capped / 2 + 1);
        Duration::from_millis(capped / 2 + jitter)
    }
}

impl Feed for HttpPollFeed {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn symbols(&self) -> Vec<Symbol> {
        self.symbols.clone()
    }

    fn run(self: Box<Self>, ctx: FeedContext) -> BoxFuture<'static, Result<(), FeedError>> {
        Box::pin(async move {
            let name = self.config.name.clone();
            let requests = ctx.metrics.poll_requests.with_label_values(&[&name]);
            let latency = ctx.metrics.poll_seconds.with_label_values(&[&name]);
            let error_counter =
                |kind: &str| ctx.metrics.poll_errors.with_label_values(&[&name, kind]);
            // What a hostile upstream can put into the log: a few lines a second, each short.
            let log_limit = LogLimiter::new(10, 1);
            let interval = Duration::from_millis(self.config.interval_ms);
            let stale_after = Duration::from_millis(self.config.stale_after_ms);
            let mut rng = Pcg32::seed_from_u64(
                std::process::id() as u64 ^ u64::from(ctx.id) << 32 ^ crate::model::now_ms() as u64,
            );
            let start = Instant::now();
            let mut batches: Vec<Batch> = self
                .symbols
                .chunks(self.config.batch_size)
                .map(|chunk| Batch {
                    url: batch_url(&self.config.url, &self.config.base, chunk),
                    symbols: chunk.to_vec(),
                    next_due: start,
                    failures: 0,
                })
                .collect();
            let mut state: HashMap<Symbol, SymbolState> = self
                .symbols
                .iter()
                .map(|s| {
                    (
                        s.clone(),
                        SymbolState {
                            sent: Tick::default(),
                            good_at: start,
                            stale: false,
                            answered: false,
                        },
                    )
                })
                .collect();
            loop {
                // Wake for the next poll, or in time to mark a symbol stale while batches back off.
                let next_poll = batches.iter().map(|b| b.next_due).min().unwrap_or(start);
                let next_stale = state
                    .values()
                    .filter(|st| !st.stale)
                    .map(|st| st.good_at + stale_after)
                    .min();
                let due = next_stale.map_or(next_poll, |at| at.min(next_poll));
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(due) => {}
                }
                let now = Instant::now();
                let due: Vec<usize> = (0..batches.len())
                    .filter(|&i| batches[i].next_due <= now)
                    .collect();
                // Due batches are polled concurrently: one slow batch does not delay the others.
                let results = futures_util::future::join_all(due.iter().map(|&i| {
                    let url = batches[i].url.clone();
                    let this = &self;
                    let latency = latency.clone();
                    async move {
                        let timer = latency.start_timer();
                        let r = this.poll(&url).await;
                        timer.observe_duration();
                        r
                    }
                }))
                .await;
                let received_at = crate::model::now_ms();
                for (&i, result) in due.iter().zip(results) {
                    requests.inc();
                    let batch = &mut batches[i];
                    let parsed = result.and_then(|body| {
                        map_response(&body, &self.config.response).map_err(PollError::Decode)
                    });
                    match parsed {
                        Ok((quotes, bad)) => {
                            batch.failures = 0;
                            batch.next_due = now + interval;
                            for e in &bad {
                                error_counter("bad_quote").inc();
                                if let Some(suppressed) = log_limit.admit(std::time::Instant::now())
                                {
                                    tracing::warn!(feed = %name, suppressed, "quote dropped: {}", truncated(e));
                                }
                            }
                            for (symbol, mut tick) in quotes {
                                let Some(st) = state.get_mut(symbol.as_str()) else {
                                    continue; // not one of ours: upstreams sometimes add extras
                                };
                                if tick.ts == 0 {
                                    tick.ts = received_at;
                                }
                                let symbol = batch
                                    .symbols
                                    .iter()
                                    .find(|s| s.as_ref() == symbol.as_str())
                                    .cloned()
                                    .unwrap_or_else(|| Symbol::from(symbol.as_str()));
                                tick.symbol = symbol.clone();
                                st.good_at = now;
                                st.answered = true;
                                if st.stale {
                                    // Recovery is a tick with the whole answer, not a status: the
                                    // index takes a symbol back (and marks it live) only on a
                                    // fresh tick, so it never republishes pre-outage prices.
                                    st.stale = false;
                                    st.sent = Tick::default();
                                }
                                if let Some(change) = changes(&st.sent, &tick) {
                                    remember(&mut st.sent, &change);
                                    ctx.send(change).await?;
                                }
                            }
                        }
                        Err(e) => {
                            error_counter(e.kind()).inc();
                            batch.failures += 1;
                            let wait = self.backoff(batch.failures, &mut rng);
                            batch.next_due = now + wait;
                            if let Some(suppressed) = log_limit.admit(std::time::Instant::now()) {
                                tracing::warn!(
                                    feed = %name,
                                    failures = batch.failures,
                                    retry_in_ms = wait.as_millis() as u64,
                                    suppressed,
                                    "poll failed: {}",
                                    truncated(&e.to_string())
                                );
                            }
                        }
                    }
                }
                // Staleness is judged on every wake-up, so it is on time even while backing off.
                for (symbol, st) in state.iter_mut() {
                    if !st.stale && now.duration_since(st.good_at) >= stale_after {
                        st.stale = true;
                        st.answered = false;
                        ctx.set_status(symbol.clone(), Status::Stale).await?;
                    }
                }
                // Up while the feed delivers: some symbol got a good answer within its staleness
                // window. Answers that arrive but lack every symbol (an upstream returning `[]`,
                // or other symbols) are not delivering, however well the HTTP side goes.
                ctx.set_up(state.values().any(|st| st.answered));
            }
            ctx.set_up(false);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
