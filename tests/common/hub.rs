//! The hub under test: [`Hub`], a real hub running in this process on its own
//! temporary data and certificate directories, with the connections, clients, HTTP
//! requests and metrics reads the tests make on it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use telehub::{
    app::App,
    auth::{Role, TokenKey},
    client::Api,
    config::Config,
    server::Server,
    ws::{self, client::ClientConfig},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::oneshot,
    task::JoinHandle,
    time::timeout,
};
use tokio_rustls::{client::TlsStream, rustls::pki_types::ServerName, TlsConnector};

use super::{
    client::{client_config, Client},
    http::{parse_http_response, Metrics},
    PROTOCOL, T,
};

/// A fresh, unique directory under the system temp dir (removed by its owner's Drop).
/// A temp dir removed when dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(label: &str) -> Self {
        Dir(temp_dir(label))
    }

    /// A configuration tweak that puts a hub's data and certificates here, so a
    /// hub started again with it finds what the previous one left.
    pub fn hub_dirs(&self) -> impl Fn(&mut telehub::config::Config) + Copy + '_ {
        move |c| {
            c.data_dir = self.0.join("data");
            c.certs_dir = self.0.join("certs");
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn temp_dir(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "telehub-it-{}-{}-{label}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

/// A hub running in this process, stopped (gracefully) and cleaned up on drop.
pub struct Hub {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    pub key: TokenKey,
    /// `None` once stopping: the App holds a shutdown handle the hub waits for.
    app: Option<Arc<App>>,
    tls: TlsConnector,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Hub {
    /// A hub with the default configuration (but on port 0 and temp dirs).
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// A hub whose configuration `tweak` adjusts (small limits for one test).
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::with_bus(Arc::new(telehub::hub::bus::Local), tweak).await
    }

    /// A hub joined to other nodes by `bus`.
    pub async fn with_bus(
        bus: Arc<dyn telehub::hub::Bus>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let root = temp_dir("hub");
        let data_dir = root.join("data");
        let certs_dir = root.join("certs");
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.clone(),
            certs_dir: certs_dir.clone(),
            ..Config::default()
        };
        config.store.url = super::current_store();
        tweak(&mut config);
        // A tweak may point the hub at other dirs (e.g. to restart on the same ones).
        let (data_dir, certs_dir) = (config.data_dir.clone(), config.certs_dir.clone());
        let server = Server::bind_with_bus(config, bus)
            .await
            .expect("binding the hub");
        let addr = server.local_addr().expect("local_addr");
        let app = server.app().clone();
        if super::current_store().is_some() {
            assert_eq!(app.notifier.store().kind(), "postgres", "the test's store");
        }
        let key = TokenKey::load_or_create(&data_dir).expect("token key");
        let tls = TlsConnector::from(
            telehub::tls::client_config(&certs_dir.join("ca.pem")).expect("client TLS config"),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Hub {
            addr,
            root,
            data_dir,
            certs_dir,
            key,
            app: Some(app),
            tls,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The running hub's shared state (hub, metrics, config).
    pub fn app(&self) -> &Arc<App> {
        self.app.as_ref().expect("hub is stopping")
    }

    /// `localhost:PORT`, the Host header clients send.
    pub fn host(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    pub fn token(&self, subject: &str, role: Role, tags: &[(&str, &str)]) -> String {
        let tags: BTreeMap<String, String> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.key
            .issue(subject, role, tags, Duration::from_secs(3600))
    }

    /// A TCP connection to the hub (from 127.0.0.1, or from `from` when given).
    pub async fn tcp(&self, from: Option<SocketAddr>, recv_buffer: Option<u32>) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        if let Some(from) = from {
            socket.bind(from).expect("binding the client address");
        }
        let tcp = timeout(T, socket.connect(self.addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        tcp.set_nodelay(true).expect("nodelay");
        tcp
    }

    /// A TLS connection to the hub, verified against the hub's development CA.
    pub async fn tls_on(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from("localhost").expect("server name");
        timeout(T, self.tls.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
    }

    pub async fn tls(&self) -> TlsStream<TcpStream> {
        let tcp = self.tcp(None, None).await;
        self.tls_on(tcp).await.expect("TLS handshake")
    }

    /// Upgrades a fresh TLS connection on `path` with `cfg`; `Err` is what the client saw.
    pub async fn connect(&self, path: &str, cfg: &ClientConfig) -> Result<Client, ws::Error> {
        let tls = self.tls().await;
        self.connect_over(tls, path, cfg).await
    }

    pub async fn connect_over(
        &self,
        tls: TlsStream<TcpStream>,
        path: &str,
        cfg: &ClientConfig,
    ) -> Result<Client, ws::Error> {
        Client::upgrade(tls, &self.host(), path, cfg).await
    }

    /// A device connected with a fresh token for `id`; its Welcome is checked and consumed.
    pub async fn device(&self, id: &str) -> Client {
        self.device_tagged(id, &[]).await
    }

    pub async fn device_tagged(&self, id: &str, tags: &[(&str, &str)]) -> Client {
        let token = self.token(id, Role::Device, tags);
        let mut device = self
            .connect("/v1/device", &client_config(Some(&token), &[PROTOCOL]))
            .await
            .expect("device upgrade");
        let welcome = device.expect_welcome().await;
        assert_eq!(welcome.subject, id);
        assert_eq!(welcome.role, "device");
        assert!(welcome.confirmations);
        let max_readings = self.app().config.limits.max_readings;
        assert_eq!(welcome.max_readings as usize, max_readings);
        device
    }

    /// A viewer dashboard; its Welcome (always the first message) is checked and consumed.
    pub async fn dashboard(&self) -> Client {
        self.dashboard_with(&client_config(
            Some(&self.token("viewer", Role::Viewer, &[])),
            &[PROTOCOL],
        ))
        .await
    }

    pub async fn dashboard_with(&self, cfg: &ClientConfig) -> Client {
        let mut dashboard = self
            .connect("/v1/dashboard", cfg)
            .await
            .expect("dashboard upgrade");
        let welcome = dashboard.expect_welcome().await;
        assert_eq!(welcome.rate_per_second, 0, "dashboards have no rate");
        dashboard
    }

    /// A viewer dashboard that will read slowly or not at all: a tiny TCP receive
    /// window and no compression, so the hub fills its socket quickly. Its Welcome
    /// is read.
    pub async fn slow_dashboard(&self, subject: &str) -> Client {
        let viewer = self.token(subject, Role::Viewer, &[]);
        let tcp = self.tcp(None, Some(4096)).await;
        let tls = self.tls_on(tcp).await.expect("TLS");
        let mut slow = self
            .connect_over(
                tls,
                "/v1/dashboard",
                &ClientConfig {
                    offer_deflate: None,
                    ..client_config(Some(&viewer), &[PROTOCOL])
                },
            )
            .await
            .expect("slow dashboard");
        slow.expect_welcome().await;
        slow
    }

    /// A plain HTTP/1.1 GET over TLS: (status, headers, body).
    pub async fn get(&self, path: &str) -> (u16, String, String) {
        self.request("GET", path, None, None).await
    }

    /// A GET that must answer 200 with a JSON body: the parsed body.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, head, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{path}: {head}"
        );
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
    }

    /// One raw HTTP/1.1 request over TLS, with a bearer token and a JSON body when
    /// given (for what [`Api`] cannot send: no token, a body that is not JSON):
    /// (status, headers, body).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String, String) {
        let mut tls = self.tls().await;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.host()
        );
        if let Some(token) = token {
            req.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method != "GET" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        tls.write_all(req.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("writing {method} {path}: {e}"));
        let mut raw = Vec::new();
        // The hub may end TLS without close_notify after `Connection: close`: keep what came.
        let _ = timeout(T, tls.read_to_end(&mut raw))
            .await
            .expect("HTTP response timed out");
        parse_http_response(&raw)
    }

    /// `https://localhost:PORT`, for the REST client.
    pub fn url(&self) -> String {
        format!("https://{}", self.host())
    }

    /// The REST API with a fresh token of `role` (its subject is the role's name).
    pub fn api(&self, role: Role) -> Api {
        Api::new(
            &self.url(),
            Some(&self.certs_dir.join("ca.pem")),
            self.token(role.as_str(), role, &[]),
        )
        .expect("REST client")
    }

    /// An operator dashboard (may push notifications); its Welcome is consumed.
    pub async fn operator_dashboard(&self) -> Client {
        let token = self.token("operator", Role::Operator, &[]);
        self.dashboard_with(&client_config(Some(&token), &[PROTOCOL]))
            .await
    }

    /// `/metrics` over HTTPS, parsed into `series -> value`.
    pub async fn scrape(&self) -> Metrics {
        let (status, _, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        Metrics::parse(&body)
    }

    /// The hub's metrics read in-process (when HTTP itself is what is being limited).
    pub fn metrics(&self) -> Metrics {
        Metrics::parse(&self.app().metrics.encode())
    }

    /// Polls `cond` on the in-process metrics until it holds (bounded by [`T`]).
    pub async fn wait_metrics(&self, what: &str, cond: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let m = self.metrics();
            if cond(&m) {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for metrics: {what}\n{}",
                m.text
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the hub gracefully and waits for `run` to return.
    pub async fn stop(mut self) {
        self.app.take();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            timeout(T + T, task)
                .await
                .expect("hub did not stop")
                .expect("hub task panicked")
                .expect("hub run failed");
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.app.take();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Reads the signing secret of a data dir (to craft tokens the hub would never issue).
pub fn secret(data_dir: &Path) -> Vec<u8> {
    std::fs::read(data_dir.join(telehub::auth::SECRET_FILE)).expect("token.key")
}
