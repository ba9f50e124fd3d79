//! The clients: [`Client`], one WebSocket connection (device or dashboard) over TLS
//! that reads and writes `telehub.v1` envelopes, its [`ClientConfig`] and the
//! [`Event`]s it reads; and [`tls_to`] for hubs run as a process.

use std::{net::SocketAddr, path::Path, time::Duration};

use prost::Message as _;
use telehub::proto::{
    envelope::Body, error::Code, Ack, Envelope, Error as ErrorMsg, Notification,
    NotificationProgress, Presence, Reading, Subscribe, Telemetry, Unsubscribe, WatchNotifications,
};
use telehub::ws::{
    self,
    client::{ClientConfig, Handshake},
    CloseFrame, Incoming, Message,
};
use tokio::{
    io::{ReadHalf, WriteHalf},
    net::TcpStream,
    time::timeout,
};
use tokio_rustls::{client::TlsStream, rustls::pki_types::ServerName, TlsConnector};

use super::{
    envelopes::{code, telemetry},
    PROTOCOL_JSON, T,
};

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

/// A TLS connection to `addr` trusting `ca_pem` and presenting a client
/// certificate and key (PEM) when given; `Err` if the handshake fails.
pub async fn tls_presenting(
    addr: SocketAddr,
    ca_pem: &Path,
    cert: Option<(&str, &str)>,
) -> std::io::Result<TlsStream<TcpStream>> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let roots = telehub::tls::roots(Some(ca_pem)).expect("CA");
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("certificate")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client certificate"),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = timeout(T, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("TCP connect timed out"))??;
    let name = ServerName::try_from("localhost").expect("server name");
    timeout(
        T,
        TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
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
                ..Default::default()
            })),
        })
        .await;
        self.expect_subscribed().await
    }

    /// Sends any Subscribe (batched, conflated, ...) and returns the confirmed
    /// patterns.
    pub async fn subscribe_with(&mut self, s: Subscribe) -> Vec<String> {
        self.send(&Envelope {
            body: Some(Body::Subscribe(s)),
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

    /// The next ClusterLink notice (Presence, Welcome and History may come first).
    pub async fn expect_cluster_link(&mut self) -> telehub::proto::ClusterLink {
        self.expect("ClusterLink", |b| match b {
            Body::ClusterLink(c) => Some(c.clone()),
            _ => None,
        })
        .await
    }

    /// Every History message of one Subscribe, up to the last (`more == false`).
    pub async fn expect_history(&mut self) -> Vec<Telemetry> {
        let mut all = Vec::new();
        loop {
            let h = self
                .expect("History", |b| match b {
                    Body::History(h) => Some(h.clone()),
                    _ => None,
                })
                .await;
            all.extend(h.telemetry);
            if !h.more {
                return all;
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
