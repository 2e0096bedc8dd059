//! A real Prometheus server (Debian's `prometheus`, 2.42) for the dashboards test: installed when
//! missing, started on 127.0.0.1 on a free port with its own data directory and the config the test
//! writes, killed on drop; its HTTP API read with plain HTTP/1.0 requests. `--web.enable-lifecycle`
//! stays off (nothing may reload or stop it over HTTP), as in a default install.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::DEADLINE;

const BIN: &str = "/usr/bin/prometheus";

pub struct Prometheus {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Holds prometheus.yml, whatever the test put beside it, `data/` and `prometheus.log`.
    pub dir: PathBuf,
}

/// One series of an instant query: its labels and its value as Prometheus wrote it ("NaN" included).
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: String,
}

impl Sample {
    pub fn number(&self) -> f64 {
        self.value.parse().unwrap_or(f64::NAN)
    }
}

impl Prometheus {
    /// Starts Prometheus with the prometheus.yml that `config` returns; `config` gets the server's
    /// directory first, to write the files the config names (rules, a credentials file) there.
    /// Waits until the server is ready (`/-/ready`).
    pub async fn start(config: impl FnOnce(&Path) -> String) -> Prometheus {
        super::ensure_installed(BIN, &["--no-install-recommends", "prometheus"]);
        let (port, dir) = super::port_and_dir("prometheus");
        let conf = dir.join("prometheus.yml");
        std::fs::write(&conf, config(&dir)).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(BIN)
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let mut server = Prometheus {
            child: Some(child),
            addr,
            dir,
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                panic!("prometheus exited ({status}):\n{}", server.log());
            }
            if let Ok(Ok((200, _))) =
                tokio::time::timeout(Duration::from_secs(1), get(addr, "/-/ready")).await
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path_and_query>`: the answer's `data`, or its error (`errorType: error`, or
    /// what went wrong before there was an answer).
    pub async fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let path = format!("/api/v1/{path_and_query}");
        let (status, body) = tokio::time::timeout(DEADLINE, get(self.addr, &path))
            .await
            .map_err(|_| format!("no answer to {path} within the deadline"))?
            .map_err(|e| format!("{path}: {e}"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!(
                "HTTP {status}, {}: {}",
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or(&body)
            ));
        }
        Ok(v["data"].clone())
    }

    /// An instant query at the server's now: its series (a scalar result is one series without
    /// labels), or why it failed.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let q = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish();
        let data = self.api(&format!("query?{q}")).await?;
        let value = |v: &Value| v[1].as_str().unwrap_or_default().to_string();
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Sample {
                    labels: s["metric"].as_object().cloned().unwrap_or_default(),
                    value: value(&s["value"]),
                })
                .collect()),
            Some("scalar") => Ok(vec![Sample {
                labels: Default::default(),
                value: value(&data["result"]),
            }]),
            other => Err(format!("unexpected result type {other:?}: {data}")),
        }
    }

    /// The first series' value of `promql`, if it has one.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        self.query(promql).await.ok()?.first().map(Sample::number)
    }

    /// Waits until `promql` has a first series whose value satisfies `pred`, failing at `DEADLINE`
    /// with the server's log.
    pub async fn wait_for(&self, promql: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let v = self.value(promql).await;
            if let Some(v) = v.filter(|v| pred(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} stuck at {v:?}; prometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `GET path` over HTTP/1.0 (Go's server then sends the body plainly, never chunked, and closes):
/// the status and the body. Errors instead of panicking: a server still starting refuses.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head}")))?;
    Ok((status, body.to_string()))
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
