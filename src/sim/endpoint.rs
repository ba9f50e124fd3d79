//! Where the hub is and how to reach it: `ws://` or `wss://` URL parsing, TCP (with
//! `TCP_NODELAY`), TLS against a given CA, and the WebSocket upgrade with a bearer
//! token and the `telehub.v1` subprotocol. Shared by the fleet and the benchmarks.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{bail, Context as _};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::{
    client::TlsStream,
    rustls::{self, pki_types::ServerName},
    TlsConnector,
};

use crate::ws::{
    self,
    client::{ClientConfig, ClientDeflateOffer, Handshake},
};

/// The subprotocol devices and protobuf dashboards speak.
pub const SUBPROTOCOL: &str = "telehub.v1";

/// A parsed hub address plus what it takes to connect to it.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port` to dial.
    addr: String,
    /// The `Host` header value.
    host_header: String,
    /// TLS configuration and the name the certificate must carry; `None` for `ws://`.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// The local address to connect from; `None` lets the kernel choose.
    source: Option<IpAddr>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Endpoint {
    /// Parses `ws://HOST[:PORT]` or `wss://HOST[:PORT]` (a trailing path is ignored;
    /// IPv6 hosts in brackets). `wss://` needs `ca`, the PEM file of the CA to trust.
    /// `https://` and `http://` are accepted as the same as `wss://` and `ws://` (the
    /// hub serves its REST API and its WebSockets on one port).
    pub fn parse(url: &str, ca: Option<&Path>) -> anyhow::Result<Self> {
        Self::parse_with(url, |_| {
            let ca = ca.with_context(|| {
                format!("{url:?} is wss://: pass the CA certificate (--ca PEM)")
            })?;
            crate::tls::client_config(ca)
                .with_context(|| format!("loading the CA certificate {}", ca.display()))
        })
    }

    /// As [`parse`](Self::parse), but a TLS URL without `ca` is checked against the
    /// system's trusted roots (for servers other than the hub, e.g. a key set URL).
    pub fn parse_trusting(url: &str, ca: Option<&Path>) -> anyhow::Result<Self> {
        Self::parse_with(url, |_| Ok(crate::tls::client_config_trusting(ca)?))
    }

    fn parse_with(
        url: &str,
        tls_config: impl FnOnce(&str) -> anyhow::Result<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Self> {
        let (tls, rest) = if let Some(rest) = url
            .strip_prefix("wss://")
            .or_else(|| url.strip_prefix("https://"))
        {
            (true, rest)
        } else if let Some(rest) = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
        {
            (false, rest)
        } else {
            bail!("{url:?}: the URL must start with ws://, wss://, http:// or https://");
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') {
            bail!("{url:?}: expected ws[s]://HOST[:PORT]");
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(authority, default_port)
            .with_context(|| format!("{url:?}: bad host or port"))?;
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = if tls {
            let config = tls_config(&host)?;
            let name = ServerName::try_from(host.clone())
                .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
            Some((config, name))
        } else {
            None
        };
        Ok(Endpoint {
            host_header: addr.clone(),
            addr,
            tls,
            source: None,
        })
    }

    /// The same endpoint with its own TLS session cache, as one device keeps: its
    /// reconnects resume the TLS session (a ticket from its previous connection)
    /// instead of a full handshake. Endpoints cloned from one another share their
    /// cache, which keeps a few tickets per server name: enough for one device.
    pub fn with_own_sessions(&self) -> Endpoint {
        let mut own = self.clone();
        if let Some((config, _)) = &mut own.tls {
            let mut c = (**config).clone();
            c.resumption = rustls::client::Resumption::in_memory_sessions(4);
            *config = Arc::new(c);
        }
        own
    }

    /// The same endpoint presenting a client certificate and key (PEM) in its TLS
    /// handshakes, trusting the CA in `ca`: a device authenticating with a
    /// certificate (connect it with an empty token). Its TLS sessions are its own.
    pub fn with_client_cert(
        &self,
        ca: &Path,
        cert_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<Endpoint> {
        use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let mut own = self.clone();
        let Some((config, _)) = &mut own.tls else {
            bail!("a client certificate needs a wss:// URL");
        };
        let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes())?];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(crate::tls::roots(Some(ca))?)
            .with_client_auth_cert(chain, key)?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c.resumption = rustls::client::Resumption::in_memory_sessions(4);
        *config = Arc::new(c);
        Ok(own)
    }

    /// The same endpoint, connecting from local address `source` (its port chosen by
    /// the kernel). A benchmark on one machine spreads thousands of connections over
    /// several loopback addresses, as real devices come from many addresses: toward
    /// one (address, port) from one address, the kernel's search for a free
    /// ephemeral port grows with the connections already open and dominates a
    /// reconnect storm's client CPU.
    pub fn with_source(&self, source: IpAddr) -> Endpoint {
        Endpoint {
            source: Some(source),
            ..self.clone()
        }
    }

    /// Whether this endpoint uses TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `host:port` as dialled.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Dials, (TLS-)handshakes and upgrades `path` with `Authorization: Bearer token`,
    /// offering permessage-deflate when `compression` is set. Each step is bounded by
    /// `timeout`. A refused upgrade is `ws::Error::HttpStatus`.
    pub async fn connect(
        &self,
        path: &str,
        token: &str,
        compression: bool,
        timeout: Duration,
    ) -> Result<(ws::Connection<SimStream>, Handshake), ws::Error> {
        let stream = self.stream(timeout).await?;
        let cfg = ClientConfig {
            ws: ws::Config::default(),
            offer_deflate: compression.then(ClientDeflateOffer::default),
            protocols: vec![SUBPROTOCOL.to_owned()],
            // No token: a device that authenticates with its TLS client certificate.
            headers: match token {
                "" => Vec::new(),
                t => vec![("Authorization".to_owned(), format!("Bearer {t}"))],
            },
        };
        tokio::time::timeout(
            timeout,
            ws::client::connect(stream, &self.host_header, path, &cfg),
        )
        .await
        .map_err(|_| {
            ws::Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "WebSocket upgrade timed out",
            ))
        })?
    }

    /// Dials and, for `wss://`, completes TLS; each step bounded by `timeout`.
    pub async fn stream(&self, timeout: Duration) -> io::Result<SimStream> {
        let step = |what: &'static str| move |_| io::Error::new(io::ErrorKind::TimedOut, what);
        let tcp = tokio::time::timeout(timeout, self.dial())
            .await
            .map_err(step("TCP connect timed out"))??;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => SimStream::Plain(tcp),
            Some((config, name)) => {
                let connector = TlsConnector::from(config.clone());
                let tls = tokio::time::timeout(timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(step("TLS handshake timed out"))??;
                SimStream::Tls(Box::new(tls))
            }
        })
    }

    async fn dial(&self) -> io::Result<TcpStream> {
        let Some(source) = self.source else {
            return TcpStream::connect(&self.addr).await;
        };
        let mut last = None;
        for to in tokio::net::lookup_host(&self.addr).await? {
            if to.is_ipv4() != source.is_ipv4() {
                continue;
            }
            let socket = match to {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            // The previous connections from this address may linger in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(source, 0))?;
            match socket.connect(to).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no address of the family of {source}", self.addr),
            )
        }))
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> &str {
        &self.host_header
    }
}

fn split_host_port(authority: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').context("unclosed '['")?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => bail!("junk after ']'"),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        bail!("empty host");
    }
    let port = match port {
        Some(p) => p.parse::<u16>().context("port must be 1..=65535")?,
        None => default_port,
    };
    if port == 0 {
        bail!("port must be 1..=65535");
    }
    Ok((host.to_owned(), port))
}

/// A plain or TLS client stream, so one `ws::Connection` type serves both.
pub enum SimStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl SimStream {
    /// The local end of the TCP connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            SimStream::Plain(s) => s.local_addr(),
            SimStream::Tls(t) => t.get_ref().0.local_addr(),
        }
    }

    /// A TLS stream whose handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        match self {
            SimStream::Plain(_) => false,
            SimStream::Tls(t) => {
                t.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
            }
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SimStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SimStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SimStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SimStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SimStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SimStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SimStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SimStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SimStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            SimStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            SimStream::Plain(s) => s.is_write_vectored(),
            SimStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let e = Endpoint::parse("ws://127.0.0.1:9000", None).unwrap();
        assert_eq!(e.addr(), "127.0.0.1:9000");
        assert!(!e.is_tls());
        let e = Endpoint::parse("ws://localhost/v1/device", None).unwrap();
        assert_eq!(e.addr(), "localhost:80");
        let e = Endpoint::parse("ws://[::1]:8443", None).unwrap();
        assert_eq!(e.addr(), "[::1]:8443");
        // The REST API's schemes name the same endpoints.
        let e = Endpoint::parse("http://127.0.0.1:9000/v1/notifications", None).unwrap();
        assert_eq!((e.addr(), e.is_tls()), ("127.0.0.1:9000", false));
        for bad in [
            "ftp://x",
            "ws://",
            "ws://:80",
            "ws://h:0",
            "ws://h:99999",
            "ws://u@h",
            "ws://[::1",
        ] {
            assert!(Endpoint::parse(bad, None).is_err(), "{bad}");
        }
        // wss without a CA is a clear error, not a panic.
        let err = Endpoint::parse("wss://127.0.0.1:8443", None).unwrap_err();
        assert!(err.to_string().contains("--ca"), "{err}");
    }
}
