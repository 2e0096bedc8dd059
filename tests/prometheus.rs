//! The Grafana dashboards and the alert rules against a real Prometheus (Debian's 2.42, installed
//! when missing: `tests/support/prometheus.rs`). Prometheus scrapes three real gateways every second,
//! under a little load: one process with a simulated feed and an HTTP-polled one, with auth on (the
//! scrape sends the API key from a `credentials_file`, as README says), and a scale-out ingest and
//! its edge on a real nats-server (the edge's metrics on `metrics_listen`). It loads
//! `dashboards/alerts.yml`, and a copy of it whose `for:` are all 1 s. Then:
//!
//! - every panel query of `dashboards/*.json`, and every variable's `label_values`, is evaluated
//!   through `/api/v1/query` (`/api/v1/label/.../values`), the variables at their defaults and
//!   `$__rate_interval` a fixed window: a query that errors, returns no series, or returns only NaN
//!   (what Grafana shows when a ratio or a quantile has nothing to work on) fails the test;
//! - every rule group of `dashboards/alerts.yml` must load and evaluate healthy (`/api/v1/rules`);
//! - stopping the polled feed's upstream must move `QuotegwFeedDown` for that feed to pending or
//!   firing (in the short-`for:` copy; the rule's own minute would only slow the test down).
//!
//! What the panels draw is created, not assumed: trades and bars go to a WebSocket and an SSE
//! client, a client paced by `max_hz` is conflated, one sends a bad op, and one stops reading until
//! it is closed as a slow consumer. Every dashboard variable defaults to All, whose `allValue` is `.*`
//! (what Grafana puts in the `=~` matchers), so each query runs over all three gateways: the bus_*
//! panels draw the ingest and the edge, the others all of them.
//!
//! The evaluated queries, with their series counts and values, are printed (`--nocapture`) and
//! written to target/prometheus-queries.txt.

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::nats::NatsServer;
use support::prometheus::{Prometheus, Sample};
use support::upstream::Upstream;
use support::{Client, RawClient, SseClient, DEADLINE};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

/// The one process's API key: clients and Prometheus's scrape use it.
const KEY: &str = "k-prometheus-0123456789abcdef";

/// What `$__rate_interval` becomes. Grafana derives it from the panel's step and the data source's
/// scrape interval (at least four scrapes); with the test's 1 s scrapes, 10 s holds about ten
/// samples, so `rate` has the two it needs once every target has been scraped four times, which the
/// test waits for.
const RATE_WINDOW: &str = "10s";

const SIM_SYMBOLS: [&str; 5] = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL"];
const POLL_SYMBOLS: [&str; 2] = ["IBM", "ORCL"];
/// The polled feed's name: its upstream is the fault.
const POLL_FEED: &str = "poll";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The one process: a simulated feed for the load and an HTTP-polled one for the fault; auth on, so
/// that its `/metrics` wants the scrape's credential; a client that stops reading is closed within
/// about a second (a small send buffer fills at once).
fn gateway_config(upstream: &str) -> String {
    let list = |s: &[&str]| serde_json::to_string(s).expect("a list of strings");
    format!(
        r#"
[limits]
slow_consumer_timeout_ms = 1000
send_buffer_bytes = 4096
[access]
auth = "api_key"
api_keys = ["{KEY}"]
[[feeds]]
kind = "simulated"
name = "sim"
symbols = {sim}
ticks_per_second = 500
seed = 7
[[feeds]]
kind = "http_poll"
name = "{POLL_FEED}"
base = "{upstream}"
url = "{{base}}/v1/quotes?symbols={{symbols}}"
symbols = {poll}
interval_ms = 200
timeout_ms = 500
stale_after_ms = 2000
backoff_max_ms = 500
[feeds.response]
shape = "array"
root = "data"
symbol = "sym"
fields = {{ bid = "b", ask = "a", volume = "v" }}
"#,
        sim = list(&SIM_SYMBOLS),
        poll = list(&POLL_SYMBOLS),
    )
}

fn poll_body() -> String {
    let quotes: Vec<Value> = POLL_SYMBOLS
        .iter()
        .map(|s| json!({"sym": s, "b": "10.00", "a": "10.02", "v": 100}))
        .collect();
    json!({ "data": quotes }).to_string()
}

/// The alert rules with every `for:` at 1 s and each group renamed (`<name>-short-for`), so that a
/// fault fires within seconds and the copy's groups are told apart from the originals.
fn short_for_copy(rules: &str) -> String {
    let (mut fors, mut groups) = (0, 0);
    let mut out = String::new();
    for line in rules.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let trimmed = line.trim_start();
        if trimmed.starts_with("for:") {
            fors += 1;
            out.push_str(&format!("{indent}for: 1s\n"));
        } else if trimmed.starts_with("- name:") {
            groups += 1;
            out.push_str(&format!("{line}-short-for\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        fors > 0 && groups > 0,
        "the rules' copy changed no `for:` or no group name: has alerts.yml's layout changed?"
    );
    out
}

/// The group names of a rules file (`- name:` entries).
fn group_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- name:"))
        .map(|n| n.trim().trim_matches('"').to_string())
        .collect()
}

/// Each dashboard variable's value as the dashboard opens: its `current` selection, where All is
/// the variable's `allValue`, as Grafana puts it into a query. The data source variable picks where
/// queries go and is never in their text, so it has none.
fn variable_defaults(dashboard: &Value) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().ok_or("a variable without a name")?;
        if v["type"] == "datasource" {
            continue;
        }
        let values: Vec<&str> = match &v["current"]["value"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let value = if values.is_empty() {
            return Err(format!("variable {name} has no default (`current.value`)"));
        } else if values.contains(&"$__all") {
            v["allValue"]
                .as_str()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| {
                    format!(
                        "variable {name} defaults to All without an allValue: Grafana would send \
                         the regex of its options, which this test does not compute"
                    )
                })?
                .to_string()
        } else if values.len() == 1 {
            values[0].to_string()
        } else {
            format!("({})", values.join("|"))
        };
        vars.insert(name.to_string(), value);
    }
    Ok(vars)
}

/// `expr` with Grafana's variables replaced: `$name`, `${name}` and `${name:format}` by `vars`,
/// `$__rate_interval` by `RATE_WINDOW`. `$1`-style names are left alone (label_replace's groups);
/// any other unknown name is an error rather than a query that silently matches nothing.
fn resolve(expr: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced
                    .find('}')
                    .ok_or_else(|| format!("an unclosed ${{ in {expr}"))?;
                let name = braced[..end].split(':').next().unwrap_or_default();
                (name, end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        match name {
            "__rate_interval" => out.push_str(RATE_WINDOW),
            n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                out.push_str(&rest[i..i + 1 + len])
            }
            n => out.push_str(
                vars.get(n)
                    .ok_or_else(|| format!("unknown variable ${n} in {expr}"))?,
            ),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One query a dashboard makes.
struct DashboardQuery {
    /// Where it is: "quotegw.json: Overview / Connections (A)" or "quotegw.json: variable instance".
    title: String,
    what: Query,
}

enum Query {
    /// A panel target's `expr`, variables resolved.
    Panel(String),
    /// A variable's `label_values(selector, label)`, variables resolved in the selector.
    LabelValues { selector: String, label: String },
}

/// Every query of `dashboard` (a panel's targets, in rows or nested in collapsed ones, and the
/// variables'), or what keeps one from being run.
fn dashboard_queries(file: &str, dashboard: &Value) -> Vec<Result<DashboardQuery, String>> {
    let mut out = Vec::new();
    let vars = match variable_defaults(dashboard) {
        Ok(vars) => vars,
        Err(e) => return vec![Err(format!("{file}: {e}"))],
    };
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or_default();
        let title = format!("{file}: variable {name}");
        let query = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_default();
        let parsed = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','));
        out.push(match parsed {
            Some((selector, label)) => resolve(selector.trim(), &vars)
                .map(|selector| DashboardQuery {
                    title,
                    what: Query::LabelValues {
                        selector,
                        label: label.trim().to_string(),
                    },
                })
                .map_err(|e| format!("{file}: variable {name}: {e}")),
            None => Err(format!(
                "{title}: {query:?} is not label_values(selector, label), the only variable query \
                 this test runs"
            )),
        });
    }
    walk_panels(file, &vars, dashboard["panels"].as_array(), "", &mut out);
    out
}

fn walk_panels(
    file: &str,
    vars: &BTreeMap<String, String>,
    panels: Option<&Vec<Value>>,
    row: &str,
    out: &mut Vec<Result<DashboardQuery, String>>,
) {
    let mut row = row.to_string();
    for p in panels.into_iter().flatten() {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        if p["type"] == "row" {
            row = title.to_string();
            // A collapsed row holds its panels; an open one is followed by them.
            walk_panels(file, vars, p["panels"].as_array(), &row, out);
            continue;
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if targets.is_empty() {
            out.push(Err(format!(
                "{file}: {row} / {title}: a panel without a query"
            )));
        }
        for t in targets {
            let title = format!(
                "{file}: {row} / {title} ({})",
                t["refId"].as_str().unwrap_or("?")
            );
            out.push(match t["expr"].as_str().filter(|e| !e.trim().is_empty()) {
                Some(expr) => resolve(expr, vars)
                    .map(|q| DashboardQuery {
                        title: title.clone(),
                        what: Query::Panel(q),
                    })
                    .map_err(|e| format!("{title}: {e}")),
                None => Err(format!("{title}: a target without an expr")),
            });
        }
    }
}

/// A number as a report shows it: integers whole, others to four places (tiny ones in e-notation).
fn show(value: &str) -> String {
    match value.parse::<f64>() {
        Ok(x) if x.is_finite() && x == x.trunc() && x.abs() < 1e15 => format!("{x}"),
        Ok(x) if x.is_finite() && x != 0.0 && x.abs() < 0.01 => format!("{x:.2e}"),
        Ok(x) if x.is_finite() => {
            let s = format!("{x:.4}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        _ => value.to_string(),
    }
}

/// The series of a result as `labels=value`, at most six of them.
fn show_samples(samples: &[Sample]) -> String {
    let mut shown: Vec<String> = samples
        .iter()
        .take(6)
        .map(|s| {
            let labels: Vec<&str> = s.labels.values().filter_map(Value::as_str).collect();
            match labels.is_empty() {
                true => show(&s.value),
                false => format!("{}={}", labels.join("/"), show(&s.value)),
            }
        })
        .collect();
    if samples.len() > 6 {
        shown.push("…".into());
    }
    shown.join(", ")
}

/// Evaluates one query: a line for the report (and whether it failed).
async fn evaluate(prom: &Prometheus, q: &DashboardQuery) -> (String, bool) {
    let (expr, result) = match &q.what {
        Query::Panel(expr) => (
            expr.clone(),
            prom.query(expr).await.map(|samples| {
                let nan = samples.iter().all(|s| s.number().is_nan());
                (samples.len(), "series", nan, show_samples(&samples))
            }),
        ),
        Query::LabelValues { selector, label } => {
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("match[]", selector)
                .finish();
            let values = prom
                .api(&format!("label/{label}/values?{q}"))
                .await
                .map(|v| {
                    let values: Vec<String> = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect();
                    let noun = if values.len() == 1 { "value" } else { "values" };
                    (values.len(), noun, false, values.join(", "))
                });
            (format!("label_values({selector}, {label})"), values)
        }
    };
    let (verdict, failed, detail) = match result {
        Err(e) => ("FAIL".to_string(), true, format!("error: {e}")),
        Ok((0, noun, _, _)) => ("FAIL".to_string(), true, format!("no {noun}")),
        Ok((n, noun, true, values)) => (
            "FAIL".to_string(),
            true,
            format!("{n} {noun}, only NaN: {values}"),
        ),
        Ok((n, noun, false, values)) => ("ok".to_string(), false, format!("{n} {noun}: {values}")),
    };
    (
        format!(
            "{verdict:4} {}\n       {expr}\n       → {detail}\n",
            q.title
        ),
        failed,
    )
}

/// Reads a WebSocket until it ends, so that the gateway always has a reader to write to.
fn keep_reading(mut c: Client) -> JoinHandle<()> {
    tokio::spawn(async move { while let Some(Ok(_)) = c.ws.next().await {} })
}

/// A WebSocket client on `url` that sends `op` (a subscribe) and reads whatever comes, or `None` if
/// its subscribe was refused (symbols the gateway does not have yet).
async fn reader(url: &str, op: Value) -> Option<JoinHandle<()>> {
    let mut c = Client::connect(url).await;
    c.send(op).await;
    let ack = c.expect("ack").await;
    (ack["rejected"] == json!([])).then(|| keep_reading(c))
}

/// The state (`pending` or `firing`) and `instance` of the short-`for:` copy's `QuotegwFeedDown`
/// alert for the polled feed, if it is active.
async fn feed_down(prom: &Prometheus, short_rules: &str) -> Option<(String, String)> {
    let data = prom.api("rules").await.expect("/api/v1/rules answers");
    let alert = data["groups"]
        .as_array()?
        .iter()
        .filter(|g| g["file"] == short_rules)
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter(|r| r["name"] == "QuotegwFeedDown")
        .flat_map(|r| r["alerts"].as_array().into_iter().flatten())
        .find(|a| a["labels"]["feed"] == POLL_FEED)?;
    let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
    Some((text(&alert["state"]), text(&alert["labels"]["instance"])))
}

/// The short-`for:` copy's `QuotegwFeedDown` rule as Prometheus reports it (its query, health,
/// state and alerts), for a failure's message.
async fn feed_down_rule(prom: &Prometheus, short_rules: &str) -> Value {
    let data = prom.api("rules").await.expect("/api/v1/rules answers");
    data["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["file"] == short_rules)
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .find(|r| r["name"] == "QuotegwFeedDown")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Writes the report where `--nocapture` is not needed to read it.
fn write_report(report: &str) -> PathBuf {
    let path = root().join("target/prometheus-queries.txt");
    let _ = std::fs::create_dir_all(root().join("target"));
    std::fs::write(&path, report).expect("write target/prometheus-queries.txt");
    path
}

/// Evaluates every query of every `dashboards/*.json`, once, into `report` (and `failures`).
async fn evaluate_dashboards(prom: &Prometheus, report: &mut String, failures: &mut Vec<String>) {
    let mut dashboards: Vec<PathBuf> = std::fs::read_dir(root().join("dashboards"))
        .expect("dashboards/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    dashboards.sort();
    assert!(!dashboards.is_empty(), "no dashboards/*.json");
    let (mut evaluated, failed_before) = (0, failures.len());
    for path in &dashboards {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(path).expect("a dashboard");
        let dashboard: Value = serde_json::from_str(&text).expect("a dashboard is JSON");
        for q in dashboard_queries(&file, &dashboard) {
            let (line, failed) = match q {
                Ok(q) => {
                    evaluated += 1;
                    evaluate(prom, &q).await
                }
                Err(e) => (format!("FAIL {e}\n"), true),
            };
            report.push_str(&line);
            if failed {
                failures.push(line);
            }
        }
    }
    let _ = writeln!(
        report,
        "\n{evaluated} queries evaluated, {} failed; allow-list: none (every query must return a \
         series that is not only NaN)",
        failures.len() - failed_before
    );
}

/// Waits until Prometheus has evaluated every rule it loaded, then checks that each group is
/// healthy and that the groups of `alerts` are all there. (Healthy means it parses and evaluates: a
/// rule naming a metric nobody exports is healthy too, which tests/web.rs's name check catches, and
/// the fault below for QuotegwFeedDown.)
async fn check_rule_groups(
    prom: &Prometheus,
    alerts: &Path,
    short_rules: &str,
    expected: &[String],
    report: &mut String,
    failures: &mut Vec<String>,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let groups = loop {
        let data = prom.api("rules").await.expect("/api/v1/rules answers");
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        let mut rules = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .peekable();
        if rules.peek().is_some() && rules.all(|r| r["health"] != "unknown") {
            break groups;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rules never evaluated: {data}\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let alerts_file = alerts.display().to_string();
    let mut loaded = Vec::new();
    for g in &groups {
        let (name, file) = (g["name"].as_str().unwrap_or("?"), g["file"].as_str());
        let rules = g["rules"].as_array().cloned().unwrap_or_default();
        let sick: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} ({}: {})", r["name"], r["health"], r["lastError"]))
            .collect();
        let origin = match file {
            Some(f) if f == alerts_file => {
                loaded.push(name.to_string());
                "dashboards/alerts.yml"
            }
            Some(f) if f == short_rules => "the short-for: copy",
            _ => "?",
        };
        let line = if sick.is_empty() {
            format!(
                "ok   rule group {name} ({origin}): {} rules, all healthy\n",
                rules.len()
            )
        } else {
            format!("FAIL rule group {name} ({origin}): {}\n", sick.join("; "))
        };
        report.push_str(&line);
        if !sick.is_empty() {
            failures.push(line);
        }
    }
    if loaded != expected {
        let line = format!(
            "FAIL dashboards/alerts.yml has the groups {expected:?}, Prometheus loaded {loaded:?}\n"
        );
        report.push_str(&line);
        failures.push(line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_series_and_the_alert_rules_work_in_a_real_prometheus() {
    let up = Upstream::start(&poll_body()).await;
    let gw = support::start_config(2, &gateway_config(&up.base));
    let nats = NatsServer::start();
    let ingest = support::start_config(
        1,
        &format!(
            "[publish]\nnats_url = \"{}\"\nheartbeat_ms = 200\n\
             [[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = [\"AAPL\", \"MSFT\"]\n\
             ticks_per_second = 100\nseed = 3\n",
            nats.url
        ),
    );
    let edge = support::start_config(
        1,
        &format!(
            "metrics_listen = \"127.0.0.1:0\"\n\
             [[feeds]]\nkind = \"nats\"\nname = \"bus\"\nnats_url = \"{}\"\n",
            nats.url
        ),
    );
    let edge_metrics = edge.gw.metrics_addr().expect("metrics_listen is set");

    // A little load on the one process: WebSocket and SSE readers with trades and bars, and a client
    // paced by max_hz, which the simulated feed's 100 ticks/s per symbol conflate.
    let url = format!("{}?token={KEY}", gw.url());
    let symbols = SIM_SYMBOLS.to_vec();
    let mut load = Vec::new();
    let op = json!({"op": "subscribe", "symbols": symbols, "trades": true, "bars": "1s"});
    load.push(reader(&url, op).await.expect("the simulated symbols"));
    let op = json!({"op": "subscribe", "symbols": symbols, "max_hz": 2});
    load.push(reader(&url, op).await.expect("the simulated symbols"));
    let poll = POLL_SYMBOLS.to_vec();
    gw.wait_metric(&format!("quotegw_feed_up{{feed=\"{POLL_FEED}\"}}"), |v| {
        v == 1.0
    })
    .await;
    let op = json!({"op": "subscribe", "symbols": poll});
    load.push(reader(&url, op).await.expect("the polled symbols"));
    let bearer = format!("Bearer {KEY}");
    let mut sse = SseClient::connect(
        gw.addr,
        &format!(
            "/v1/stream?symbols={}&trades=true&bars=1s",
            symbols.join(",")
        ),
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    load.push(tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(1..) = sse.tcp.read(&mut buf).await {}
    }));
    // And on the edge, once it has the ingest's symbols.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let op = json!({"op": "subscribe", "symbols": ["AAPL", "MSFT"], "trades": true});
    // (It refuses clients with 503 until its cache is loaded.)
    while support::quotes(edge.addr, &["AAPL", "MSFT"]).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge never had the ingest's symbols"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        if let Some(r) = reader(&edge.url(), op.clone()).await {
            load.push(r);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge never had the ingest's symbols"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let alerts = root().join("dashboards/alerts.yml");
    let alerts_text = std::fs::read_to_string(&alerts).expect("dashboards/alerts.yml");
    let targets = [gw.addr, ingest.addr, edge_metrics];
    let prom = Prometheus::start(|dir| {
        // As README says: the scrape's credential in a file, the repo's rules as they are.
        std::fs::write(dir.join("quotegw.key"), KEY).expect("write the credential");
        std::fs::write(
            dir.join("alerts-short-for.yml"),
            short_for_copy(&alerts_text),
        )
        .expect("write the rules' copy");
        let targets: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n  - {}\n\
             scrape_configs:\n  - job_name: quotegw\n    metrics_path: /metrics\n\
             \x20   static_configs:\n      - targets: [{}]\n\
             \x20   authorization:\n      credentials_file: {}\n",
            alerts.display(),
            dir.join("alerts-short-for.yml").display(),
            targets.join(", "),
            dir.join("quotegw.key").display(),
        )
    })
    .await;
    let short_rules = prom.dir.join("alerts-short-for.yml").display().to_string();
    let started = tokio::time::Instant::now();

    // Every target up, then scraped often enough for rate() over the window.
    prom.wait_for(r#"count(up{job="quotegw"} == 1)"#, |v| {
        v == targets.len() as f64
    })
    .await;
    prom.wait_for(
        &format!(r#"min(count_over_time(up{{job="quotegw"}}[{RATE_WINDOW}]))"#),
        |v| v >= 4.0,
    )
    .await;

    // What the error and slow-consumer panels draw: a bad op, and a client that subscribes to
    // everything with trades and bars and never reads (a 16 KiB receive buffer and the gateway's
    // 4 KiB send buffer fill at once), closed with 4008 a second later.
    let mut bad = Client::connect(&url).await;
    bad.send_text("not json").await;
    assert_eq!(bad.expect("error").await["code"], "bad_json");
    load.push(keep_reading(bad));
    let mut slow = RawClient::connect_unread(gw.addr, &format!("/ws?token={KEY}")).await;
    let op = json!({"op": "subscribe", "symbols": symbols, "trades": true, "bars": "1s"});
    slow.send_text(&op.to_string()).await;
    gw.wait_metric("quotegw_slow_consumer_closes_total", |v| v >= 1.0)
        .await;
    drop(slow);
    prom.wait_for(
        r#"sum(quotegw_slow_consumer_closes_total{job="quotegw"})"#,
        |v| v >= 1.0,
    )
    .await;
    prom.wait_for(
        r#"sum(quotegw_client_errors_total{job="quotegw", code="bad_json"})"#,
        |v| v >= 1.0,
    )
    .await;

    let mut report = format!(
        "Dashboard queries evaluated by tests/prometheus.rs against Prometheus {} scraping {} \
         gateways every 1 s\n(variables at their defaults: job, instance, feed = All = \".*\"; \
         $__rate_interval = {RATE_WINDOW})\n\n",
        prometheus_version(),
        targets.len()
    );
    let mut failures = Vec::new();
    evaluate_dashboards(&prom, &mut report, &mut failures).await;
    write_report(&report);
    report.push('\n');
    let expected_groups = group_names(&alerts_text);
    check_rule_groups(
        &prom,
        &alerts,
        &short_rules,
        &expected_groups,
        &mut report,
        &mut failures,
    )
    .await;

    // The fault: the polled feed's upstream goes away. Before it, the alert is quiet even with
    // `for: 1s`; after it, pending or firing.
    let line = match feed_down(&prom, &short_rules).await {
        Some((state, instance)) => format!(
            "FAIL QuotegwFeedDown{{feed=\"{POLL_FEED}\", instance=\"{instance}\"}} is {state} before \
             its upstream stopped\n"
        ),
        None => {
            up.stop();
            gw.wait_metric(&format!("quotegw_feed_up{{feed=\"{POLL_FEED}\"}}"), |v| {
                v == 0.0
            })
            .await;
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                if let Some((state, instance)) = feed_down(&prom, &short_rules).await {
                    break format!(
                        "ok   fault: {POLL_FEED}'s upstream stopped → QuotegwFeedDown{{feed=\"{POLL_FEED}\", \
                         instance=\"{instance}\"}} {state} (inactive before)\n"
                    );
                }
                if tokio::time::Instant::now() >= deadline {
                    break format!(
                        "FAIL fault: {POLL_FEED}'s upstream stopped, its feed is down, and \
                         QuotegwFeedDown never became active: {}\n",
                        feed_down_rule(&prom, &short_rules).await
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    if line.starts_with("FAIL") {
        failures.push(line.clone());
    }
    let _ = writeln!(
        report,
        "{line}\nPrometheus checks took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let path = write_report(&report);
    println!("{report}\n(written to {})", path.display());
    for task in load {
        task.abort();
    }
    assert!(
        failures.is_empty(),
        "dashboards or rules that do not work in a real Prometheus:\n{}",
        failures.join("")
    );
}

/// The server's version line, for the report.
fn prometheus_version() -> String {
    std::process::Command::new("/usr/bin/prometheus")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(2))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

#[test]
fn grafana_variables_resolve_to_their_defaults_and_unknown_ones_are_errors() {
    let vars = BTreeMap::from([("job".to_string(), ".*".to_string())]);
    assert_eq!(
        resolve(
            r#"rate(x{job=~"$job", a=~"${job}", b=~"${job:regex}"}[$__rate_interval])"#,
            &vars
        )
        .unwrap(),
        format!(r#"rate(x{{job=~".*", a=~".*", b=~".*"}}[{RATE_WINDOW}])"#)
    );
    assert_eq!(
        resolve(r#"label_replace(x, "d", "$1", "s", "(.*)")"#, &vars).unwrap(),
        r#"label_replace(x, "d", "$1", "s", "(.*)")"#
    );
    assert!(resolve(r#"x{job=~"$jbo"}"#, &vars).is_err());
    let dashboard = json!({"templating": {"list": [
        {"type": "datasource", "name": "datasource", "current": {}},
        {"type": "query", "name": "job", "allValue": ".*", "current": {"value": ["$__all"]}},
        {"type": "custom", "name": "two", "current": {"value": ["a", "b"]}},
        {"type": "custom", "name": "one", "current": {"value": "a"}},
    ]}});
    assert_eq!(
        variable_defaults(&dashboard).unwrap(),
        BTreeMap::from([
            ("job".to_string(), ".*".to_string()),
            ("two".to_string(), "(a|b)".to_string()),
            ("one".to_string(), "a".to_string()),
        ])
    );
}
