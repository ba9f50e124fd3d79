//! The harness for the hub's integration tests: a real hub started in-process on
//! 127.0.0.1:0 with its own temporary data and certificate directories, real TLS
//! clients speaking `telehub.v1` through the project's own WebSocket client, and
//! helpers that read like the README: a device connects and sends, a dashboard
//! subscribes and receives.
//!
//! Every wait is bounded ([`T`]); a wait that runs out fails the test with a message
//! saying what was awaited.

#![allow(dead_code)]

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

use prost::Message as _;
use telehub::{
    app::App,
    auth::{Role, TokenKey},
    client::{Api, ApiError},
    config::Config,
    http::api::{CreateBody, DeliveryBody, DeviceOut, StatusBody, TargetsBody},
    proto::{
        envelope::Body, error::Code, reading, Ack, Envelope, Error as ErrorMsg, Notification,
        NotificationProgress, Presence, Reading, Subscribe, Telemetry, Unsubscribe,
        WatchNotifications,
    },
    server::Server,
    ws::{
        self,
        client::{ClientConfig, Handshake},
        CloseFrame, Incoming, Message,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf},
    net::{TcpSocket, TcpStream},
    sync::oneshot,
    task::JoinHandle,
    time::timeout,
};
use tokio_rustls::{client::TlsStream, rustls::pki_types::ServerName, TlsConnector};

/// The bound on every single wait in these tests.
pub const T: Duration = Duration::from_secs(5);

pub const PROTOCOL: &str = "telehub.v1";
pub const PROTOCOL_JSON: &str = "telehub.v1.json";

/// A fresh, unique directory under the system temp dir (removed by its owner's Drop).
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
        let root = temp_dir("hub");
        let data_dir = root.join("data");
        let certs_dir = root.join("certs");
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.clone(),
            certs_dir: certs_dir.clone(),
            ..Config::default()
        };
        tweak(&mut config);
        // A tweak may point the hub at other dirs (e.g. to restart on the same ones).
        let (data_dir, certs_dir) = (config.data_dir.clone(), config.certs_dir.clone());
        let server = Server::bind(config).await.expect("binding the hub");
        let addr = server.local_addr().expect("local_addr");
        let app = server.app().clone();
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

    /// A plain HTTP/1.1 GET over TLS: (status, headers, body).
    pub async fn get(&self, path: &str) -> (u16, String, String) {
        self.request("GET", path, None, None).await
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

/// A TLS connection to `addr` trusting the CA in `ca_pem`, for hubs run as a process.
pub async fn tls_to(addr: SocketAddr, ca_pem: &Path) -> TlsStream<TcpStream> {
    let connector = TlsConnector::from(telehub::tls::client_config(ca_pem).expect("client TLS"));
    let tcp = timeout(T, TcpStream::connect(addr))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect");
    let name = ServerName::try_from("localhost").expect("server name");
    timeout(T, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake")
}

/// A client configuration with a bearer token (if any) and the given subprotocols.
/// Offers permessage-deflate, as real devices do.
pub fn client_config(token: Option<&str>, protocols: &[&str]) -> ClientConfig {
    ClientConfig {
        protocols: protocols.iter().map(|p| p.to_string()).collect(),
        headers: token
            .map(|t| vec![("Authorization".to_string(), format!("Bearer {t}"))])
            .unwrap_or_default(),
        ..ClientConfig::default()
    }
}

/// What a client saw next.
#[derive(Debug)]
pub enum Event {
    Envelope(Envelope),
    /// A text frame (JSON dashboards).
    Text(String),
    /// The hub's Close frame (`None`: no status code).
    Close(Option<CloseFrame>),
    /// The stream ended or failed without a Close frame.
    Gone(String),
}

/// One WebSocket client (device or dashboard) over TLS.
pub struct Client {
    reader: ws::Reader<ReadHalf<TlsStream<TcpStream>>>,
    writer: ws::Writer<WriteHalf<TlsStream<TcpStream>>>,
    pub handshake: Handshake,
    /// Text frames are JSON envelopes (`telehub.v1.json`).
    pub json: bool,
    /// Answer the hub's pings (a live client). Off: a client that stopped responding.
    pub auto_pong: bool,
    /// Last telemetry `seq` sent.
    pub seq: u64,
    /// Envelopes read past while waiting for a reply (e.g. telemetry queued before a
    /// `Subscribed`), returned first by [`Client::next_envelope`].
    stash: std::collections::VecDeque<Envelope>,
    /// Pings received from the hub.
    pub pings: u64,
}

impl Client {
    /// Performs the WebSocket upgrade over an established TLS connection.
    pub async fn upgrade(
        tls: TlsStream<TcpStream>,
        host: &str,
        path: &str,
        cfg: &ClientConfig,
    ) -> Result<Client, ws::Error> {
        let (conn, handshake) = timeout(T, ws::client::connect(tls, host, path, cfg))
            .await
            .expect("WebSocket handshake timed out")?;
        let json = handshake.protocol.as_deref() == Some(PROTOCOL_JSON);
        let (reader, writer) = conn.split();
        Ok(Client {
            reader,
            writer,
            handshake,
            json,
            auto_pong: true,
            seq: 0,
            stash: Default::default(),
            pings: 0,
        })
    }

    pub async fn send(&mut self, env: &Envelope) {
        self.send_raw(Message::Binary(env.encode_to_vec().into()))
            .await
    }

    pub async fn send_raw(&mut self, msg: Message) {
        timeout(T, self.writer.send(&msg))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Like [`send_raw`] but tolerates a hub that already closed.
    pub async fn try_send_raw(&mut self, msg: Message) -> Result<(), ws::Error> {
        timeout(T, self.writer.send(&msg))
            .await
            .expect("send timed out")
    }

    /// Publishes telemetry with the next `seq`; returns that `seq`.
    pub async fn send_telemetry(&mut self, category: &str, readings: Vec<Reading>) -> u64 {
        self.seq += 1;
        let env = telemetry(category, self.seq, readings);
        self.send(&env).await;
        self.seq
    }

    /// Adds subscriptions and returns the patterns the hub confirms.
    pub async fn subscribe(&mut self, patterns: &[&str]) -> Vec<String> {
        self.subscribe_filtered(patterns, &[], &[]).await
    }

    pub async fn subscribe_filtered(
        &mut self,
        patterns: &[&str],
        device_ids: &[&str],
        tags: &[(&str, &str)],
    ) -> Vec<String> {
        self.send(&Envelope {
            body: Some(Body::Subscribe(Subscribe {
                categories: patterns.iter().map(|p| p.to_string()).collect(),
                device_ids: device_ids.iter().map(|d| d.to_string()).collect(),
                tags: tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })),
        })
        .await;
        self.expect_subscribed().await
    }

    /// Removes subscriptions (empty: all) and returns the patterns that remain.
    pub async fn unsubscribe(&mut self, patterns: &[&str]) -> Vec<String> {
        self.send(&Envelope {
            body: Some(Body::Unsubscribe(Unsubscribe {
                categories: patterns.iter().map(|p| p.to_string()).collect(),
            })),
        })
        .await;
        self.expect_subscribed().await
    }

    /// The next message or close, answering pings on the way (when `auto_pong`).
    pub async fn next_event_within(&mut self, limit: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let incoming = match tokio::time::timeout_at(deadline, self.reader.next()).await {
                Err(_) => return None,
                Ok(r) => r,
            };
            return Some(match incoming {
                Ok(Incoming::Message(Message::Binary(b))) => match Envelope::decode(b.clone()) {
                    Ok(env) => Event::Envelope(env),
                    Err(e) => panic!("hub sent a binary frame that is not an Envelope: {e}"),
                },
                Ok(Incoming::Message(Message::Text(s))) => Event::Text(s),
                Ok(Incoming::Ping(p)) => {
                    self.pings += 1;
                    if self.auto_pong {
                        let _ = self.writer.pong(&p).await;
                    }
                    continue;
                }
                Ok(Incoming::Pong(_)) => continue,
                Ok(Incoming::Close(frame)) => {
                    // Complete the close handshake, echoing the code.
                    let code = frame.as_ref().map_or(1000, |f| f.code);
                    let _ = timeout(Duration::from_secs(1), self.writer.close(code, "")).await;
                    Event::Close(frame)
                }
                Err(e) => Event::Gone(e.to_string()),
            });
        }
    }

    pub async fn next_event(&mut self) -> Event {
        self.next_event_within(T)
            .await
            .expect("timed out waiting for a message from the hub")
    }

    /// The next envelope (binary, or JSON text on a JSON dashboard); a close fails the test.
    pub async fn next_envelope(&mut self) -> Envelope {
        if let Some(env) = self.stash.pop_front() {
            return env;
        }
        match self.next_event().await {
            Event::Envelope(env) => env,
            Event::Text(s) if self.json => serde_json::from_str(&s)
                .unwrap_or_else(|e| panic!("hub sent text that is not a JSON Envelope ({e}): {s}")),
            other => panic!("expected an envelope, got {other:?}"),
        }
    }

    /// Reads until `pick` accepts a body. Presence, Welcome and History are skipped on the way;
    /// anything else unexpected fails the test.
    pub async fn expect<R>(&mut self, what: &str, mut pick: impl FnMut(&Body) -> Option<R>) -> R {
        loop {
            let env = self.next_envelope().await;
            let body = env.body.expect("hub sent an empty Envelope");
            if let Some(r) = pick(&body) {
                return r;
            }
            match body {
                // A subscription's History comes before its live telemetry; tests
                // that look for something else skip it (tests/hub_history.rs checks it).
                Body::Presence(_) | Body::Welcome(_) | Body::History(_) => continue,
                other => panic!("expected {what}, got {other:?}"),
            }
        }
    }

    /// The very next envelope must be Welcome.
    pub async fn expect_welcome(&mut self) -> telehub::proto::Welcome {
        match self.next_envelope().await.body {
            Some(Body::Welcome(w)) => w,
            other => panic!("the first message must be Welcome, got {other:?}"),
        }
    }

    pub async fn expect_telemetry(&mut self) -> Telemetry {
        self.expect("Telemetry", |b| match b {
            Body::Telemetry(t) => Some(t.clone()),
            _ => None,
        })
        .await
    }

    pub async fn expect_error(&mut self) -> ErrorMsg {
        self.expect("Error", |b| match b {
            Body::Error(e) => Some(e.clone()),
            _ => None,
        })
        .await
    }

    /// The next `Subscribed`; telemetry, presence and notices queued before it are
    /// kept for later reads, in order.
    pub async fn expect_subscribed(&mut self) -> Vec<String> {
        let mut passed = Vec::new();
        let found = loop {
            let env = self.next_envelope().await;
            match &env.body {
                Some(Body::Subscribed(s)) => break s.categories.clone(),
                Some(Body::Error(e)) => panic!("expected Subscribed, got {e:?}"),
                _ => passed.push(env),
            }
        };
        // What was read past goes before anything still stashed.
        for env in passed.into_iter().rev() {
            self.stash.push_front(env);
        }
        found
    }

    /// The next Presence event (nothing but Welcome may come before it).
    pub async fn expect_presence(&mut self) -> Presence {
        loop {
            match self.next_envelope().await.body {
                Some(Body::Presence(p)) => return p,
                Some(Body::Welcome(_)) => continue,
                other => panic!("expected Presence, got {other:?}"),
            }
        }
    }

    /// Reads (skipping data) until the hub's Close frame; returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.next_event().await {
                Event::Close(Some(f)) => return f.code,
                Event::Close(None) => panic!("close frame without a status code"),
                Event::Gone(e) => panic!("connection ended without a close frame: {e}"),
                Event::Envelope(_) | Event::Text(_) => continue,
            }
        }
    }

    /// Reads for `d`, failing on any telemetry (Presence and pings are fine).
    pub async fn expect_no_telemetry(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event_within(left).await {
                None => return,
                Some(Event::Envelope(Envelope {
                    body: Some(Body::Presence(_)),
                })) => {}
                Some(other) => panic!("expected nothing, got {other:?}"),
            }
        }
    }

    /// The next Notification (Presence and Welcome may come before it; anything else
    /// fails the test).
    pub async fn expect_notification(&mut self) -> Notification {
        self.expect("Notification", |b| match b {
            Body::Notification(n) => Some(n.clone()),
            _ => None,
        })
        .await
    }

    /// Sends `Ack{notification_id: id}`.
    pub async fn ack(&mut self, id: &str) {
        self.send(&Envelope {
            body: Some(Body::Ack(Ack {
                notification_id: id.to_string(),
            })),
        })
        .await
    }

    /// Acks `id` and proves the hub answered nothing to it: a second ack, for an id
    /// never sent to anyone, must be answered by the very next message, an
    /// `UNKNOWN_NOTIFICATION` naming that id.
    pub async fn ack_silently(&mut self, id: &str) {
        self.ack(id).await;
        let probe = format!("probe-after-{id}");
        let e = self.ack_refused(&probe).await;
        assert!(
            e.message.contains(&probe),
            "the ack of {id} was answered: {e:?}"
        );
    }

    /// Acks `id` and returns the `Error{UNKNOWN_NOTIFICATION}` that must answer it.
    pub async fn ack_refused(&mut self, id: &str) -> ErrorMsg {
        self.ack(id).await;
        let e = self.expect_error().await;
        assert_eq!(code(&e), Code::UnknownNotification, "ack of {id}: {e:?}");
        e
    }

    /// Reads for `d`, failing on any message but Presence (pings are answered).
    pub async fn expect_nothing(&mut self, d: Duration) {
        self.expect_no_telemetry(d).await
    }

    /// Starts (or stops) receiving `NotificationProgress`, and returns once the hub
    /// has applied it: an empty Subscribe (which changes nothing) makes the round
    /// trip; what is read past its answer is kept for later reads.
    pub async fn watch_notifications(&mut self, watch: bool) {
        self.send(&Envelope {
            body: Some(Body::WatchNotifications(WatchNotifications { watch })),
        })
        .await;
        self.subscribe(&[]).await;
    }

    /// Reads `NotificationProgress` for notification `id` until `done` accepts one;
    /// returns every update seen for `id`, the accepted one last. Progress for other
    /// notifications, Presence and Welcome are skipped; anything else fails the test.
    pub async fn expect_progress(
        &mut self,
        id: &str,
        done: impl Fn(&NotificationProgress) -> bool,
    ) -> Vec<NotificationProgress> {
        let mut seen = Vec::new();
        loop {
            match self.next_envelope().await.body {
                Some(Body::NotificationProgress(p)) if p.id == id => {
                    let finished = done(&p);
                    seen.push(p);
                    if finished {
                        return seen;
                    }
                }
                Some(Body::NotificationProgress(_) | Body::Presence(_) | Body::Welcome(_)) => {}
                other => panic!("expected NotificationProgress for {id}, got {other:?}"),
            }
        }
    }

    /// Closes normally and waits for the hub's answering Close (the hub has then
    /// processed everything this client sent).
    pub async fn close(mut self) -> u16 {
        timeout(T, self.writer.close(1000, "bye"))
            .await
            .expect("close timed out")
            .expect("sending close");
        loop {
            match self.next_event().await {
                Event::Close(f) => return f.map_or(1005, |f| f.code),
                Event::Gone(e) => panic!("no close answer: {e}"),
                _ => {}
            }
        }
    }
}

/// A Telemetry envelope.
pub fn telemetry(category: &str, seq: u64, readings: Vec<Reading>) -> Envelope {
    Envelope {
        body: Some(Body::Telemetry(Telemetry {
            device_id: String::new(),
            category: category.to_string(),
            timestamp_ms: 1_700_000_000_000 + seq,
            seq,
            readings,
            received_ms: 0,
        })),
    }
}

pub fn number(name: &str, value: f64, unit: &str) -> Reading {
    Reading {
        name: name.to_string(),
        value: Some(reading::Value::Number(value)),
        unit: unit.to_string(),
    }
}

pub fn raw(name: &str, bytes: Vec<u8>) -> Reading {
    Reading {
        name: name.to_string(),
        value: Some(reading::Value::Raw(bytes)),
        unit: String::new(),
    }
}

/// `n` bytes that deflate cannot shrink (xorshift).
pub fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn code(e: &ErrorMsg) -> Code {
    Code::try_from(e.code).unwrap_or(Code::Unspecified)
}

/// Prometheus text, parsed into `series (with labels) -> value`.
pub struct Metrics {
    pub text: String,
    values: BTreeMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect();
        Metrics {
            text: text.to_string(),
            values,
        }
    }

    /// The value of one series, e.g. `telehub_rate_limited_total` or
    /// `telehub_connections{role="device"}`; 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.values.get(series).copied().unwrap_or(0.0)
    }

    pub fn has(&self, series: &str) -> bool {
        self.values.contains_key(series)
    }
}

/// Splits a raw HTTP/1.1 response into status, header block and (de-chunked) body.
pub fn parse_http_response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete HTTP response: {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

/// A `POST /v1/notifications` body: `severity` ("info", "warning", "critical") to
/// `targets`, titled `title`, with the default ttl and no body or payload.
pub fn notification(severity: &str, targets: TargetsBody, title: &str) -> CreateBody {
    CreateBody {
        targets,
        severity: severity.to_string(),
        title: title.to_string(),
        body: String::new(),
        payload: None,
        ttl: None,
    }
}

/// A tag map, as the API and tokens carry them.
pub fn tag_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Targets: these device ids.
pub fn to_devices(ids: &[&str]) -> TargetsBody {
    TargetsBody {
        device_ids: ids.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    }
}

/// Targets: registered devices carrying all of these tags.
pub fn to_tags(tags: &[(&str, &str)]) -> TargetsBody {
    TargetsBody {
        tags: tag_map(tags),
        ..Default::default()
    }
}

/// The HTTP status of a refused API call (fails the test if the call succeeded).
pub fn status_of<T: std::fmt::Debug>(r: Result<T, ApiError>) -> u16 {
    match r {
        Err(ApiError::Status { status, .. }) => status.as_u16(),
        other => panic!("expected an HTTP error status, got {other:?}"),
    }
}

/// Polls `GET /v1/notifications/{id}` (all devices on one page) until `cond` holds,
/// bounded by [`T`]; the status reads after a store barrier, so each poll sees
/// everything the hub did before it.
pub async fn wait_status(
    api: &Api,
    id: &str,
    what: &str,
    cond: impl Fn(&StatusBody) -> bool,
) -> StatusBody {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = api.status(id, None, None, 1000).await.expect("GET status");
        if cond(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {id}: {what}; last status: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET /v1/devices` until `id` is registered and has connected (bounded by
/// [`T`]): a device session registers with the notifier just after its Welcome.
pub async fn wait_registered(api: &Api, id: &str) -> DeviceOut {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let page = api.devices(None, 1000).await.expect("GET devices");
        if let Some(d) = page
            .devices
            .into_iter()
            .find(|d| d.id == id && d.last_seen_ms.is_some())
        {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for device {id} to register"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state of `device` in a status answer (fails the test if it is not listed).
pub fn row<'a>(s: &'a StatusBody, device: &str) -> &'a DeliveryBody {
    s.devices
        .iter()
        .find(|d| d.device_id == device)
        .unwrap_or_else(|| panic!("{device} is not in the status: {s:#?}"))
}

/// Reads the signing secret of a data dir (to craft tokens the hub would never issue).
pub fn secret(data_dir: &Path) -> Vec<u8> {
    std::fs::read(data_dir.join(telehub::auth::SECRET_FILE)).expect("token.key")
}
