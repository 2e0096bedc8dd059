//! A real NATS server (Debian's `nats-server`, JetStream on) for the scale-out tests: installed when
//! missing, started on 127.0.0.1 on a free port with its own store directory, killed on drop. It can
//! be stopped and started again on the same port and store, as an operator's restart would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/sbin/nats-server";

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    pub dir: PathBuf,
    /// Lines added to nats.conf (a `tls` or `authorization` block).
    extra: String,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with(|_| String::new())
    }

    /// With lines added to its nats.conf, made from its store directory (where a test may put
    /// certificates first).
    pub fn start_with(extra: impl FnOnce(&Path) -> String) -> NatsServer {
        super::ensure_installed(BIN, &["nats-server"]);
        let (port, dir) = super::port_and_dir("nats");
        let mut server = NatsServer {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            extra: String::new(),
            dir,
        };
        server.extra = extra(&server.dir);
        server.run();
        server
    }

    /// Starts the process (again) and waits until it accepts connections.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        // A short write deadline: a client that stops reading is cut after 1 s (a slow consumer).
        let conf = self.dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{}\nwrite_deadline: \"1s\"\njetstream {{ store_dir: \"{}\" }}\n{}\n",
                self.port,
                self.dir.join("store").display(),
                self.extra
            ),
        )
        .expect("write nats.conf");
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL: a crash, not a polite shutdown).
    /// Sends the running server `signal` (e.g. "STOP", "CONT": a server that stalls).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
