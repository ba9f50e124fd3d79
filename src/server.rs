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
    config::Config,
    http::ConnInfo,
    hub::{bus, Bus},
    shutdown::Trigger,
    tls,
};

/// Longest wait for sessions to close after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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
    trigger: Trigger,
    caps: Arc<Caps>,
}

impl Server {
    /// Prepares certificates, the listener and the application, for a hub alone.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        Self::bind_with_bus(config, Arc::new(bus::Local)).await
    }

    /// The same, for one node of several joined by `bus`.
    pub async fn bind_with_bus(config: Config, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        config.validate()?;
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
            let tls = tls::ServerTls::load(&config.certs_dir, &config.tls)
                .context("loading the TLS configuration")?;
            Some(Arc::new(tls))
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let trigger = Trigger::new();
        let caps = Arc::new(Caps {
            global: Arc::new(Semaphore::new(config.limits.max_connections)),
            per_ip: Mutex::default(),
            max_per_ip: config.limits.max_connections_per_ip,
        });
        let app = App::build(config, bus, trigger.draining(), tls).await?;
        Ok(Self {
            listener,
            app,
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
            trigger,
            caps,
        } = self;
        let router = crate::http::router(app.clone());
        app.spawn_background(&trigger);
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
            let info = ConnInfo::new(peer, trigger.subscribe(), guard);
            // The configuration in force now (SIGHUP may swap it).
            let tls = app.tls.as_ref().map(|t| t.acceptor());
            tokio::spawn(serve_tcp(tcp, info, tls, router.clone(), app.clone()));
        }
        tracing::info!("shutting down: closing every connection with 1001");
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, trigger.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within {DRAIN_TIMEOUT:?}");
        }
        // The devices' offline changes went to the bus as their sessions closed.
        if tokio::time::timeout(LEAVE_TIMEOUT, app.hub.bus().leave())
            .await
            .is_err()
        {
            tracing::warn!("could not tell the cluster this node left within {LEAVE_TIMEOUT:?}: the others will find out when its heartbeats stop");
        }
        if let Err(e) = store.barrier().await {
            tracing::error!(error = %e, "flushing the store");
        }
        Ok(())
    }
}

/// How long a node leaving a cluster waits for its last messages to go out.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

async fn serve_tcp(
    tcp: TcpStream,
    mut info: ConnInfo,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    app: Arc<App>,
) {
    let timeout = app.config.limits.handshake_timeout;
    match tls {
        None => serve_http(tcp, info, router, app).await,
        Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                // Verified against the device CA by the handshake; named here.
                if let Some(cert) = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                {
                    let named = tls::device::identify(cert, app.config.tls.device_id);
                    info.device_cert = Some(Arc::new(named));
                }
                serve_http(stream, info, router, app).await
            }
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

async fn serve_http<I>(io: I, info: ConnInfo, router: axum::Router, app: Arc<App>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let mut shutdown = info.shutdown.clone();
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
