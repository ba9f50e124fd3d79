//! A throwaway Redis: Debian's `redis-server` on a free loopback port, in a temp
//! directory, persisting nothing, killed on drop. `.ci/run` installs the package;
//! tests start their own instances so that they can stop and restart them.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::hub::temp_dir;

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Serving TLS only, with the certificate and key in this directory
    /// (`server.pem`, `server.key`, `ca.pem`).
    tls: Option<PathBuf>,
}

impl Redis {
    /// Starts an instance and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts an instance that speaks only TLS, with the certificate in `certs`
    /// (a hub's development certificates: `localhost` and 127.0.0.1).
    pub fn start_tls(certs: &std::path::Path) -> Self {
        Self::start_with(Some(certs.to_path_buf()))
    }

    fn start_with(tls: Option<PathBuf>) -> Self {
        let port = server_port();
        let mut redis = Redis {
            port,
            dir: temp_dir("redis"),
            child: None,
            tls,
        };
        redis.resume();
        redis
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://localhost:PORT` for TLS.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://localhost:{}", self.port),
        }
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "redis is running");
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(certs) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(certs.join("server.pem"))
                .arg("--tls-key-file")
                .arg(certs.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(certs.join("ca.pem")),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting redis-server ({e}): install Debian's redis-server (`apt-get install redis-server`; .ci/run does)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        if self.tls.is_some() {
            // Listening is enough: the cluster tests check what TLS carries.
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

/// A free loopback port for a server a test may stop and start again: below the
/// ephemeral range (32768..), so that no connection of another test takes it
/// meanwhile; the first free one from a random start.
pub fn server_port() -> u16 {
    let start: u16 = 20_000 + rand::random::<u16>() % 10_000;
    (start..30_000)
        .chain(20_000..start)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 20000..30000")
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
