//! Stage 8, HTTP beside the WebSocket: `GET /v1/quotes?symbols=...` (snapshots, exactly as on
//! `/ws`), `GET /v1/symbols` (what this credential may subscribe to), and a symbol's recent
//! trades and bars (`GET /v1/trades`, `GET /v1/bars`). Same access rules as
//! `/ws` (`admit.rs`: Origin, token, per-client limits; a request takes no connection place), the
//! same symbol rule and per-connection symbol limit, the credential's tier, CORS for allowed
//! Origins (with preflight, since a browser sending `Authorization` asks first), and
//! `Cache-Control: no-store`: a quote is only true now. Errors are
//! `{"error":{"code":...,"message":...}}` with the matching status.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::access::{CorsOrigin, Grant, Refusal, Tier, TICKET_TTL};
use crate::admit::{admit, Admitted, ClientRequest, Refused};
use crate::delta::{encode_snapshot, with_delayed_ms};
use crate::protocol::{push_json_str, ErrorCode, SymbolList};
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/quotes", web::get().to(quotes))
        .route("/v1/symbols", web::get().to(symbols))
        .route("/v1/bars", web::get().to(bars))
        .route("/v1/trades", web::get().to(trades))
        .service(
            web::resource("/v1/ticket")
                .route(web::post().to(ticket))
                .route(web::method(actix_web::http::Method::OPTIONS).to(preflight))
                .default_service(web::to(|| async {
                    HttpResponse::MethodNotAllowed()
                        .insert_header(("Allow", "POST, OPTIONS"))
                        .body("POST /v1/ticket, with the credential in Authorization: Bearer\n")
                })),
        )
        .route("/v1/stream", web::get().to(stream_on_a_used_connection))
        .route(
            "/v1/{tail:.*}",
            web::method(actix_web::http::Method::OPTIONS).to(preflight),
        );
}

/// A query string, decoded as browsers encode forms (`+` is a space, `%XX` a byte; bytes that are
/// not UTF-8 become U+FFFD). A parameter given twice has no value (`None` in the map): which
/// one a proxy or a client library would keep is not ours to guess, so `get` refuses it.
pub struct Query(HashMap<String, Option<String>>);

impl Query {
    pub fn parse(query: &str) -> Query {
        let mut params = HashMap::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()).into_owned() {
            params
                .entry(key)
                .and_modify(|v| *v = None)
                .or_insert(Some(value));
        }
        Query(params)
    }

    /// The parameter's value; a parameter given more than once is a `bad_request`.
    pub fn get(&self, key: &str) -> Result<Option<&str>, Refused> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Some(value)) => Ok(Some(value)),
            Some(None) => Err(Refused::bad_request(
                "bad_request",
                format!("'{key}' is given more than once: give it once"),
            )),
        }
    }
}

/// The `symbols` parameter: comma-separated, each a symbol by the contract's rule (upper-cased,
/// repeats dropped, at most `max` of them) or a string that is not one, rejected alone
/// (`invalid_symbol`, as on `/ws`).
pub fn symbols_param(query: &Query, max: usize) -> Result<SymbolList, Refused> {
    let Some(list) = query.get("symbols")?.filter(|l| !l.is_empty()) else {
        return Err(Refused::bad_request(
            "bad_request",
            "give the symbols as ?symbols=AAPL,MSFT",
        ));
    };
    let mut symbols = SymbolList::default();
    for s in list.split(',') {
        symbols.push(s);
    }
    let symbols = symbols.deduped();
    // Every string counts, symbol or not: it bounds `rejected` too.
    if symbols.len() > max {
        return Err(Refused::bad_request(
            "too_many_symbols",
            format!("a request may name at most {max} symbols"),
        ));
    }
    Ok(symbols)
}

/// Splits `symbols` into those this credential gets and those it does not (with why).
pub fn resolve(
    state: &AppState,
    grant: &Grant,
    symbols: SymbolList,
) -> (Vec<String>, Vec<(String, ErrorCode)>) {
    let mut accepted = Vec::new();
    let mut rejected: Vec<(String, ErrorCode)> = symbols
        .rejections()
        .map(|(s, code)| (s.to_string(), code))
        .collect();
    for s in symbols.valid {
        if !grant.allows(&s) {
            rejected.push((s, ErrorCode::Unauthorized));
        } else if state.sessions.index.lookup(&s).is_none() {
            rejected.push((s, ErrorCode::UnknownSymbol));
        } else {
            accepted.push(s);
        }
    }
    (accepted, rejected)
}

/// The admission checks for one REST request; the guards live as long as the request.
fn admit_request(state: &AppState, req: &HttpRequest) -> Result<Admitted, Refused> {
    let proxied = req
        .conn_data::<crate::proxied::ProxiedClient>()
        .map(|c| c.0);
    admit(
        state,
        &ClientRequest::of(req.headers(), req.query_string(), req.peer_addr()).proxied(proxied),
        None,
    )
}

/// A JSON answer with the headers every `/v1` answer carries.
fn json(state: &AppState, req: &HttpRequest, status: StatusCode, body: String) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"));
    cors(state, req, &mut response);
    response.body(body)
}

fn cors(state: &AppState, req: &HttpRequest, response: &mut actix_web::HttpResponseBuilder) {
    let origin = req.headers().get("origin").and_then(|v| v.to_str().ok());
    match state.access.get().cors_origin(origin) {
        CorsOrigin::Any => {
            response.insert_header(("Access-Control-Allow-Origin", "*"));
        }
        CorsOrigin::Echo(o) => {
            response.insert_header(("Access-Control-Allow-Origin", o.to_string()));
        }
        CorsOrigin::Refused => {}
    }
    if state.access.get().cors_varies_by_origin() {
        response.insert_header(("Vary", "Origin"));
    }
}

/// A refusal as the JSON error of every `/v1` answer (and of the public `/metrics`), counted and
/// logged under `transport`.
pub fn refusal_as(
    state: &AppState,
    req: &HttpRequest,
    refused: Refused,
    transport: &str,
) -> HttpResponse {
    refused.record(state, req.peer_addr(), transport);
    let mut response = HttpResponse::build(refused.status);
    response
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"));
    if let Some(header) = refused.header {
        response.insert_header(header);
    }
    cors(state, req, &mut response);
    response.body(refused.json_body())
}

fn refusal(state: &AppState, req: &HttpRequest, refused: Refused) -> HttpResponse {
    refusal_as(state, req, refused, "rest")
}

/// `GET /v1/quotes?symbols=AAPL,MSFT` → `{"quotes":[snapshots],"rejected":[...]}`. A served
/// symbol without a quote yet is in neither list (it has nothing to show; `/readyz` says when
/// every feed has delivered). A delayed credential gets the quotes as they were its delay ago.
async fn quotes(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let admitted = match admit_request(&state, &req) {
        Ok(a) => a,
        Err(r) => return refusal(&state, &req, r),
    };
    let limit = state.sessions.limits.max_symbols_per_connection;
    let symbols = match symbols_param(&Query::parse(req.query_string()), limit) {
        Ok(s) => s,
        Err(r) => return refusal(&state, &req, r),
    };
    let grant = &admitted.grant;
    let (accepted, rejected) = resolve(&state, grant, symbols);
    let delay = match grant.tier {
        Tier::Delayed => state.sessions.tiers.delayed.map(|d| d.delay_ms),
        Tier::Realtime | Tier::Throttled => None,
    };
    let now_ms = crate::model::now_ms();
    let mut body = String::from(r#"{"quotes":["#);
    let mut first = true;
    for symbol in &accepted {
        let Some(entry) = state.sessions.index.lookup(symbol) else {
            continue;
        };
        // Each tier reads its own view, kept in the index: never fresher than it may see.
        let state_now = match (grant.tier, delay) {
            (Tier::Delayed, Some(ms)) => entry
                .read_past(now_ms - ms as i64)
                .entry
                .map(|e| (e.seq, e.quote)),
            (Tier::Throttled, _) => entry.read_sampled(now_ms).entry.map(|e| (e.seq, e.quote)),
            _ => entry.read().map(|p| (p.seq, p.quote)),
        };
        let Some((seq, quote)) = state_now else {
            continue;
        };
        if !first {
            body.push(',');
        }
        first = false;
        with_delayed_ms(&mut body, delay, |s| {
            encode_snapshot(s, &entry.symbol, seq, &quote)
        });
    }
    body.push_str(r#"],"rejected":["#);
    for (i, (symbol, code)) in rejected.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"symbol":"#);
        push_json_str(&mut body, symbol);
        body.push_str(r#","code":""#);
        body.push_str(code.as_str());
        body.push_str("\"}");
    }
    body.push_str("]}");
    json(&state, &req, StatusCode::OK, body)
}

/// `GET /v1/symbols` → `{"symbols":[...]}`: what this credential may subscribe to, sorted.
async fn symbols(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let admitted = match admit_request(&state, &req) {
        Ok(a) => a,
        Err(r) => return refusal(&state, &req, r),
    };
    let all = state.sessions.index.symbols_sorted();
    let mut body = String::from(r#"{"symbols":["#);
    for (i, s) in all.iter().filter(|s| admitted.grant.allows(s)).enumerate() {
        if i > 0 {
            body.push(',');
        }
        push_json_str(&mut body, s);
    }
    body.push_str("]}");
    json(&state, &req, StatusCode::OK, body)
}

/// The `symbol` of `/v1/bars` and `/v1/trades`: one symbol this credential may read and the gateway
/// serves, with its entry.
fn one_symbol(
    state: &AppState,
    grant: &Grant,
    query: &Query,
) -> Result<std::sync::Arc<crate::index::SymbolEntry>, Refused> {
    let Some(raw) = query.get("symbol")?.filter(|s| !s.is_empty()) else {
        return Err(Refused::bad_request(
            "bad_request",
            "give the symbol as ?symbol=AAPL",
        ));
    };
    let mut list = SymbolList::default();
    list.push(raw);
    let (accepted, rejected) = resolve(state, grant, list);
    if let Some((_, code)) = rejected.first() {
        let status = match code {
            ErrorCode::Unauthorized => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        let message = match code {
            ErrorCode::InvalidSymbol => crate::model::SYMBOL_RULE.to_string(),
            ErrorCode::Unauthorized => "this credential may not read that symbol".to_string(),
            _ => "the gateway does not serve that symbol".to_string(),
        };
        return Err(Refused::new(status, code.as_str(), "bad_request", message));
    }
    accepted
        .first()
        .and_then(|s| state.sessions.index.lookup(s))
        .ok_or_else(|| {
            Refused::bad_request("unknown_symbol", "the gateway does not serve that symbol")
        })
}

/// `limit`: a whole number from 1, `default` when absent; more than the gateway keeps (`kept`)
/// gets what it keeps (a chart asking for a day gets the day there is).
fn limit_param(query: &Query, default: usize, kept: usize) -> Result<usize, Refused> {
    match query.get("limit")? {
        None => Ok(default.min(kept)),
        // Digits past u64 are still a number above what is kept (found from outside: refused).
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.bytes().any(|b| b != b'0') => {
            Ok(v.parse::<usize>().unwrap_or(usize::MAX).clamp(1, kept.max(1)))
        }
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(usize::MAX).min(kept)),
            _ => Err(Refused::bad_request(
                "bad_request",
                "'limit' must be a whole number from 1 (more than the gateway keeps gets what it keeps)",
            )),
        },
    }
}

/// What a credential's tier may see of trades and bars: the gateway time of the newest it may
/// see (`None`: everything, the realtime tier) and the `delayed_ms` its messages carry. The delayed
/// tier sees nothing the index took later than its delay ago; the throttled tier nothing later
/// than when its current interval began, as its quotes.
fn tier_cutoff(state: &AppState, grant: &Grant) -> (Option<i64>, Option<u64>) {
    let now_ms = crate::model::now_ms();
    let tiers = &state.sessions.tiers;
    match grant.tier {
        Tier::Realtime => (None, None),
        Tier::Delayed => match tiers.delayed {
            Some(d) => (Some(now_ms - d.delay_ms as i64), Some(d.delay_ms)),
            None => (None, None),
        },
        Tier::Throttled => {
            let interval = tiers.throttled.interval_ms.max(1) as i64;
            (Some(now_ms - now_ms.rem_euclid(interval)), None)
        }
    }
}

/// `GET /v1/bars?symbol=AAPL&interval=1m[&limit=100]` → `{"bars":[...]}`: the last `limit` final
/// bars kept (`[bars] keep`), oldest first, then the open bar.
async fn bars(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let answer = || -> Result<String, Refused> {
        let admitted = admit_request(&state, &req)?;
        let (cutoff, delay) = tier_cutoff(&state, &admitted.grant);
        let query = Query::parse(req.query_string());
        let entry = one_symbol(&state, &admitted.grant, &query)?;
        let market = state.sessions.index.market();
        let Some(name) = query.get("interval")? else {
            return Err(Refused::bad_request(
                "bad_request",
                format!(
                    "give the interval as &interval=1m: one of {}",
                    market.interval_names()
                ),
            ));
        };
        let Some(i) = market.interval(name) else {
            let shown: String = name.chars().take(16).collect();
            return Err(Refused::bad_request(
                "bad_request",
                format!(
                    "'interval' must be one of the intervals this gateway builds: {} (got '{shown}')",
                    market.interval_names()
                ),
            ));
        };
        let limit = limit_param(&query, 100, market.bars_keep)?;
        let (finals, open) = entry.bars(i, limit, cutoff);
        let mut body = String::from(r#"{"bars":["#);
        for (n, bar) in finals.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            with_delayed_ms(&mut body, delay, |s| {
                bar.encode(s, &entry.symbol, name, true)
            });
        }
        if let Some(bar) = open {
            if !finals.is_empty() {
                body.push(',');
            }
            bar.encode(&mut body, &entry.symbol, name, false);
        }
        body.push_str("]}");
        Ok(body)
    };
    match answer() {
        Ok(body) => json(&state, &req, StatusCode::OK, body),
        Err(r) => refusal(&state, &req, r),
    }
}

/// `GET /v1/trades?symbol=AAPL[&limit=100]` → `{"trades":[...]}`: the last `limit` prints kept
/// (`[trades] keep`), oldest first, each exactly as a `trade` message on `/ws`.
async fn trades(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let answer = || -> Result<String, Refused> {
        let admitted = admit_request(&state, &req)?;
        if admitted.grant.tier == Tier::Throttled && !state.sessions.tiers.throttled.trades {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                "unauthorized",
                "bad_request",
                "this credential's tier does not include trades ([tiers.throttled] trades)",
            ));
        }
        let (cutoff, delay) = tier_cutoff(&state, &admitted.grant);
        let query = Query::parse(req.query_string());
        let entry = one_symbol(&state, &admitted.grant, &query)?;
        let limit = limit_param(&query, 100, state.sessions.index.market().trades_keep)?;
        let mut body = String::from(r#"{"trades":["#);
        for (n, message) in entry
            .trades(limit, cutoff.unwrap_or(i64::MAX))
            .iter()
            .enumerate()
        {
            if n > 0 {
                body.push(',');
            }
            with_delayed_ms(&mut body, delay, |s| s.push_str(message));
        }
        body.push_str("]}");
        Ok(body)
    };
    match answer() {
        Ok(body) => json(&state, &req, StatusCode::OK, body),
        Err(r) => refusal(&state, &req, r),
    }
}

/// A CORS preflight for `/v1/...`: a browser asks before sending `Authorization` (or
/// `Last-Event-ID`) cross-origin.
async fn preflight(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let origin = req.headers().get("origin").and_then(|v| v.to_str().ok());
    if state.access.get().cors_origin(origin) == CorsOrigin::Refused {
        // Counted and logged like any Origin refusal: a browser stops at this answer, so the
        // request it meant (a ticket, a quote) never comes to be refused itself.
        Refused::new(
            StatusCode::FORBIDDEN,
            "unauthorized",
            Refusal::Origin.reason(),
            "this Origin may not use this gateway",
        )
        .record(&state, req.peer_addr(), "rest");
        return HttpResponse::Forbidden().finish();
    }
    let mut response = HttpResponse::NoContent();
    cors(&state, &req, &mut response);
    response
        .insert_header(("Access-Control-Allow-Methods", "GET, POST"))
        .insert_header((
            "Access-Control-Allow-Headers",
            "Authorization, Last-Event-ID",
        ))
        .insert_header(("Access-Control-Max-Age", "600"))
        .finish()
}

/// `POST /v1/ticket` with the credential in `Authorization: Bearer` → `{"ticket":"...",
/// "expires_in":30}`: a stand-in for the credential that opens one stream (`?ticket=` on `/ws` or
/// `/v1/stream`) within its lifetime, from the same Origin, on any gateway sharing the ticket key
/// (`access/tickets.rs`). A credential in the URL is refused here, since keeping it out of URLs
/// is what a ticket is for.
async fn ticket(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let answer = || -> Result<String, Refused> {
        if Query::parse(req.query_string()).0.contains_key("token") {
            return Err(Refused::bad_request(
                "bad_request",
                "send the token as Authorization: Bearer ..., not in the URL",
            ));
        }
        // The Origin and the credential (with the failure throttle), but no place among the
        // client's connections: a page at its token's connection limit still gets a ticket, and
        // the stream it opens is counted then.
        let origin = req.headers().get("origin").and_then(|v| v.to_str().ok());
        crate::admit::check_origin(&state.access.get(), origin)?;
        let proxied = req
            .conn_data::<crate::proxied::ProxiedClient>()
            .map(|c| c.0);
        let request = ClientRequest::of(req.headers(), "", req.peer_addr()).proxied(proxied);
        crate::admit::verify(&state, &request)?;
        // The token `verify` verified: the ticket stands for it.
        let token = crate::access::presented("", request.authorization, &request.protocols, false);
        let ticket = state.tickets.issue(
            state.access.get().ticket_key(),
            token.token(),
            origin,
            crate::access::tickets_now_ms(),
        );
        state.sessions.metrics.tickets_issued.inc();
        let mut body = String::from(r#"{"ticket":"#);
        push_json_str(&mut body, &ticket);
        body.push_str(r#","expires_in":"#);
        body.push_str(itoa::Buffer::new().format(TICKET_TTL.as_secs()));
        body.push('}');
        Ok(body)
    };
    match answer() {
        Ok(body) => json(&state, &req, StatusCode::OK, body),
        Err(r) => refusal(&state, &req, r),
    }
}

/// `/v1/stream` is taken over from the connection's first bytes (`session::sse`); this answers
/// the only way it can reach a route: as a later request on a connection (pipelining), which the
/// gateway does not keep alive for.
async fn stream_on_a_used_connection(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let refused = Refused::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "rate_limited",
        "bad_request",
        "open /v1/stream as the first request of a connection",
    )
    .with_header("retry-after", "1");
    refusal(&state, &req, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_decoded_and_symbols_checked() {
        let q = Query::parse("symbols=aapl%2CMSFT,aapl&max_hz=2&token=a%2Bb");
        assert_eq!(q.get("token").unwrap(), Some("a+b"));
        // Given twice: refused, whichever value a reader would have kept.
        let twice = Query::parse("symbols=AAPL&max_hz=2&symbols=MSFT");
        assert_eq!(twice.get("max_hz").unwrap(), Some("2"));
        assert_eq!(symbols_param(&twice, 10).unwrap_err().code, "bad_request");
        assert_eq!(symbols_param(&q, 10).unwrap().valid, ["AAPL", "MSFT"]);
        // A string that is not a symbol is set aside (invalid_symbol), not the request's end.
        let s = symbols_param(
            &Query::parse("symbols=A+B,msft,%3Cimg%20src%3Dx%3E,,A+B"),
            10,
        )
        .unwrap();
        assert_eq!(s.valid, ["MSFT"]);
        assert_eq!(s.invalid, ["A B", "<img src=x>", ""]);
        let e = symbols_param(&Query::parse("symbols=A,B,C"), 2).unwrap_err();
        assert_eq!(e.code, "too_many_symbols");
        assert!(symbols_param(&Query::parse(""), 2).is_err());
    }
}
