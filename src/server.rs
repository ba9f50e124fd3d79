//! The listener: accepts TCP, enforces the connection caps, terminates TLS, serves
//! HTTP/1.1 (axum on hyper) with upgrades, and shuts everything down gracefully.
//!
//! Caps: a connection over `limits.max_connections` or over
//! `limits.max_connections_per_ip` is closed right after accept (counted in
//! `telehub_connections_refused`); its place is held by a [`ConnGuard`] that lives
//! as long as the HTTP connection *and* any WebSocket session upgraded from it.
//!
//! Shutdown: the accept loop stops, sessions receive the signal and close with
//! 1001, HTTP connections finish their current request, and [`Server::run`]
//! returns when all are done or after [`DRAIN_TIMEOUT`].

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::{
    app::App,
    auth::TokenKey,
    config::Config,
    hub::{HistoryLimits, Hub},
    metrics::Metrics,
    notify::Notifier,
    shutdown::{Shutdown, Trigger},
    store::{self, Store},
    tls,
};

/// Longest wait for sessions to close after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Request extension carried into upgraded sessions: who is connected, and the
/// guard keeping the connection counted.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    _guard: Arc<ConnGuard>,
}

/// Global and per-IP connection accounting.
struct Caps {
    global: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// A counted connection; releases its places on drop.
pub struct ConnGuard {
    caps: Arc<Caps>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Caps {
    fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, &'static str> {
        let permit = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| "global_cap")?;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err("per_ip_cap");
        }
        *n += 1;
        Ok(ConnGuard {
            caps: self.clone(),
            ip,
            _permit: permit,
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut per_ip = self.caps.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A bound, not yet running hub.
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    trigger: Trigger,
    caps: Arc<Caps>,
}

impl Server {
    /// Prepares certificates, the token key and the listener.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let tokens = TokenKey::load_or_create(&config.data_dir)?;
        let tls = if config.plaintext {
            tracing::warn!("plaintext mode: serving ws:// and http:// without TLS; use only behind a TLS-terminating proxy or for benchmarks");
            None
        } else {
            match tls::ensure_dev_certificates(&config.certs_dir)? {
                tls::CertSource::Existing => {}
                tls::CertSource::Generated { new_ca } => tracing::warn!(
                    certs_dir = %config.certs_dir.display(),
                    new_ca,
                    "generated a development certificate for localhost, 127.0.0.1 and ::1; clients must trust {}",
                    config.certs_dir.join(tls::CA_CERT).display()
                ),
            }
            Some(TlsAcceptor::from(tls::server_config(&config.certs_dir)?))
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let metrics = Arc::new(Metrics::new());
        let store_stats = store::Stats {
            ops: metrics.store_ops.clone(),
            commits: metrics.store_commits.clone(),
        };
        let data_dir = config.data_dir.clone();
        let (store, snapshot) =
            tokio::task::spawn_blocking(move || Store::open(&data_dir, store_stats))
                .await
                .context("opening the store")?
                .with_context(|| {
                    format!("opening {}", config.data_dir.join(store::FILE).display())
                })?;
        tracing::info!(
            devices = snapshot.devices.len(),
            open_notifications = snapshot.campaigns.len(),
            "store opened"
        );
        let d = &config.dashboard;
        let hub = Hub::with_history(
            metrics.clone(),
            HistoryLimits {
                len: d.history_len,
                replay_max: d.history_replay_max,
                series_per_device: d.history_series_per_device,
                max_bytes: d.history_max_bytes,
            },
        );
        // Devices seen within `forget_after` before this start are listed offline
        // (their counters start from zero) until they reconnect.
        let since = crate::hub::now_ms().saturating_sub(d.forget_after.as_millis() as u64);
        for device in &snapshot.devices {
            if let Some(seen) = device.last_seen_ms.filter(|&t| t >= since) {
                let info = crate::hub::DeviceInfo {
                    id: device.id.clone(),
                    tags: device.tags.clone(),
                };
                hub.fleet.remember_offline(Arc::new(info), seen);
            }
        }
        let notifier = Notifier::new(
            store,
            snapshot,
            hub.clone(),
            metrics.clone(),
            config.notify.clone(),
        );
        let trigger = Trigger::new();
        let caps = Arc::new(Caps {
            global: Arc::new(Semaphore::new(config.limits.max_connections)),
            per_ip: Mutex::default(),
            max_per_ip: config.limits.max_connections_per_ip,
        });
        let app = Arc::new(App {
            hub,
            notifier,
            metrics,
            tokens,
            shutdown: trigger.subscribe(),
            config: Arc::new(config),
        });
        Ok(Self {
            listener,
            app,
            tls,
            trigger,
            caps,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server {
            listener,
            app,
            tls,
            trigger,
            caps,
        } = self;
        let router = crate::http::router(app.clone());
        tokio::spawn(app.notifier.clone().run(trigger.subscribe()));
        tokio::spawn(app.hub.clone().run_fleet_stats(
            app.config.dashboard.fleet_interval,
            app.config.dashboard.forget_after,
            trigger.subscribe(),
        ));
        // Kept past the drain so the last acks are committed before we return.
        let store = app.notifier.store().clone();
        tokio::pin!(signal);
        let mut backoff = Duration::from_millis(5);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut signal => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => { backoff = Duration::from_millis(5); a }
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning; the listener stays up.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            let guard = match caps.try_admit(peer.ip()) {
                Ok(g) => g,
                Err(reason) => {
                    app.metrics.refused(reason);
                    tracing::debug!(%peer, reason, "connection refused");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let info = ConnInfo {
                peer,
                _guard: Arc::new(guard),
            };
            tokio::spawn(serve_tcp(
                tcp,
                info,
                tls.clone(),
                router.clone(),
                app.clone(),
                trigger.subscribe(),
            ));
        }
        tracing::info!("shutting down: closing every connection with 1001");
        drop(listener);
        // The router holds the App, and the App holds a `Shutdown`: both must go, or
        // `trigger.wait()` waits for our own handle and always runs into the timeout.
        drop(router);
        drop(app);
        if tokio::time::timeout(DRAIN_TIMEOUT, trigger.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within {DRAIN_TIMEOUT:?}");
        }
        if let Err(e) = store.barrier().await {
            tracing::error!(error = %e, "flushing the store");
        }
        Ok(())
    }
}

async fn serve_tcp(
    tcp: TcpStream,
    info: ConnInfo,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    app: Arc<App>,
    shutdown: Shutdown,
) {
    let timeout = app.config.limits.handshake_timeout;
    match tls {
        None => serve_http(tcp, info, router, app, shutdown).await,
        Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => serve_http(stream, info, router, app, shutdown).await,
            Ok(Err(e)) => {
                app.metrics.refused("tls_handshake");
                tracing::debug!(peer = %info.peer, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                app.metrics.refused("handshake_timeout");
                tracing::debug!(peer = %info.peer, "TLS handshake timed out");
            }
        },
    }
}

async fn serve_http<I>(
    io: I,
    info: ConnInfo,
    router: axum::Router,
    app: Arc<App>,
    mut shutdown: Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(info.clone());
            router.clone().call(req)
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.limits.handshake_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        _ = shutdown.recv() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = res {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}
