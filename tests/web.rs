//! The ticker widget in real headless Chromium (`tests/widget/run.mjs`, playwright-core driving
//! Debian's chromium, both installed by `tests/widget/ensure-browser.sh` when missing), and the
//! Grafana dashboards and alert rules (`tests/dashboards/check.sh`: promtool, and every metric they
//! reference must exist in the gateway's `/metrics`).

mod support;

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One browser test at a time: two Chromiums and their gateways on a 2-core machine would make
/// each one's bounded waits a race with the other.
static BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_browser() -> std::sync::MutexGuard<'static, ()> {
    BROWSER.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn the_widget_works_in_chromium_against_a_replaying_gateway() {
    let _browser = one_browser();
    let screenshots = root().join("target/widget-screenshots");
    // A screenshot left by an earlier run must not pass for this run's.
    let _ = std::fs::remove_dir_all(&screenshots);
    let status = Command::new("node")
        .arg("tests/widget/run.mjs")
        .current_dir(root())
        .env("QUOTEGW_BIN", env!("CARGO_BIN_EXE_quotegw"))
        .env("QUOTEGW_CONFIG", root().join("tests/widget/gateway.toml"))
        .env("SCREENSHOT_DIR", &screenshots)
        .status()
        .expect("node runs (Debian: apt-get install nodejs npm)");
    assert!(
        status.success(),
        "the browser test failed (its output above says which check)"
    );
    assert!(screenshots.join("demo.png").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alert_rules_reference_only_metrics_the_gateway_exports() {
    // Every feed kind's metrics: a simulated feed and the scripted one of the test support, then
    // a scale-out ingest's and edge's.
    let gw = support::start(
        "[[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = 5\nticks_per_second = 100\n",
        &[],
    );
    let (status, mut scrape) = support::http_get(gw.addr, "/metrics").await;
    assert_eq!(status, 200);
    // And the scale-out roles' (real nats-server): an ingest's and an edge's own series.
    let nats = support::nats::NatsServer::start();
    let ingest = support::start(
        &format!(
            "[publish]\nnats_url = \"{}\"\nheartbeat_ms = 100\n",
            nats.url
        ),
        &["AAA"],
    );
    ingest
        .push(support::tick("AAA", 1, &[("bid", "1.00")]))
        .await;
    let edge = support::start_config(
        1,
        &format!(
            "[[feeds]]\nkind = \"nats\"\nname = \"bus\"\nnats_url = \"{}\"\n",
            nats.url
        ),
    );
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    for role in [ingest.addr, edge.addr] {
        loop {
            let (_, body) = support::http_get(role, "/metrics").await;
            // Each role's series appear once it has connected and (an edge) heard the leader.
            if body.contains("quotegw_bus_term{") && body.contains("quotegw_bus_connected{") {
                scrape.push_str(&body);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{body}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let file = std::env::temp_dir().join(format!("quotegw-metrics-{}.txt", std::process::id()));
    std::fs::write(&file, scrape).unwrap();
    let status = Command::new("bash")
        .arg("tests/dashboards/check.sh")
        .arg(&file)
        .current_dir(root())
        .status()
        .expect("bash runs");
    assert!(
        status.success(),
        "the dashboards check failed (its output above says why)"
    );
}

/// The widget failing over between two edges of one scale-out ingest on a real nats-server
/// (`tests/widget/failover.mjs`): edge A killed mid-stream, the first URL down at page load, a
/// close 1012, and the seq guard against scripted gateways, in headless Chromium.
#[test]
fn the_widget_fails_over_between_edges_in_chromium() {
    let _browser = one_browser();
    let nats = support::nats::NatsServer::start();
    let status = Command::new("node")
        .arg("tests/widget/failover.mjs")
        .current_dir(root())
        .env("QUOTEGW_BIN", env!("CARGO_BIN_EXE_quotegw"))
        .env("NATS_URL", &nats.url)
        .status()
        .expect("node runs (Debian: apt-get install nodejs npm)");
    assert!(
        status.success(),
        "the failover browser test failed (its output above says which check)"
    );
}
