//! A gateway run as its own process (the built binary), for what only a process shows: signals
//! (SIGKILL, SIGSTOP, SIGCONT), its exit status, start-up errors on stderr.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// The binary, run with `--config` (a file this writes), its stderr kept line by line. Killed and
/// reaped on drop, a panicking test included.
pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    config: PathBuf,
}

impl Process {
    pub fn spawn(toml: &str) -> Process {
        static N: AtomicU64 = AtomicU64::new(0);
        let config = std::env::temp_dir().join(format!(
            "quotegw-process-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&config, toml).expect("write the config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_quotegw"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the gateway binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Process { child, log, config }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address it listens on, from its log (waits for it).
    pub fn addr(&self) -> SocketAddr {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let found = self.log.lock().unwrap().iter().find_map(|line| {
                line.split("listening on http://")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_string)
            });
            if let Some(addr) = found {
                return addr.parse().expect("a socket address in the log");
            }
            assert!(
                Instant::now() < deadline,
                "the gateway never listened:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal by name (KILL, STOP, CONT, TERM, HUP).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// Waits for the process to exit (within the support's deadline).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The last lines of stderr may still be on their way.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}
