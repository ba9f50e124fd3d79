//! A cluster of real `telehub serve` processes for the tests that kill one: each
//! node with its own data dir holding the cluster's `token.key`, the shared
//! development certificates, one Redis (live plane) and one PostgreSQL database
//! (durable plane).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use telehub::{
    auth::{Role, TokenKey},
    client::Api,
};

/// What every node of a test cluster shares.
pub struct Planes {
    pub root: PathBuf,
    pub certs: PathBuf,
    pub ca: PathBuf,
    pub key: TokenKey,
    key_file: PathBuf,
    pub redis: String,
    pub store: String,
    /// `telehub.toml` given to every node (may be empty).
    pub config: String,
}

impl Planes {
    /// Certificates and a signing key under `root`, for nodes joined through the
    /// Redis at `redis` and sharing the database at `store`.
    pub fn new(root: &Path, redis: String, store: String, config: &str) -> Self {
        let certs = root.join("certs");
        telehub::tls::ensure_dev_certificates(&certs).expect("certificates");
        let key_dir = root.join("key");
        let key = TokenKey::load_or_create(&key_dir).expect("token key");
        Planes {
            root: root.to_path_buf(),
            ca: certs.join("ca.pem"),
            certs,
            key,
            key_file: key_dir.join("token.key"),
            redis,
            store,
            config: config.to_string(),
        }
    }

    /// Starts node `name` on a free port.
    pub fn start(&self, name: &str) -> Node {
        let data = self.root.join(name);
        std::fs::create_dir_all(&data).unwrap();
        // What the README asks of an operator: the same token.key on every node.
        std::fs::copy(&self.key_file, data.join("token.key")).unwrap();
        let config = data.join("telehub.toml");
        std::fs::write(&config, &self.config).unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_telehub"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .arg("--certs-dir")
            .arg(&self.certs)
            .args(["--cluster", &self.redis, "--node-id", name])
            .args(["--store", &self.store])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting telehub serve");
        Node { port, child }
    }

    /// The REST API of `node` as an operator.
    pub fn operator(&self, node: &Node) -> Api {
        let token = self.key.issue(
            "ops",
            Role::Operator,
            Default::default(),
            Duration::from_secs(3600),
        );
        Api::new(&node.url(), Some(&self.ca), token).unwrap()
    }
}

/// A node process, killed (SIGKILL) on drop.
pub struct Node {
    pub port: u16,
    child: Child,
}

impl Node {
    /// `wss://localhost:PORT` (also the REST base, as `https://`).
    pub fn url(&self) -> String {
        format!("wss://localhost:{}", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One series of a node's `/metrics` (0 when absent or unreachable).
pub async fn metric(api: &Api, series: &str) -> f64 {
    let Ok(text) = api.metrics().await else {
        return 0.0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `ok`, failing after `limit`; how long it took.
pub async fn wait_for(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}
