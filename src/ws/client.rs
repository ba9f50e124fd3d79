//! Client side of the opening handshake (RFC 6455 §4.1) over an already connected
//! stream (plain TCP or TLS), as used by the device simulator and tests.
//!
//! Invariants: the request is built only from validated parts (no CR/LF injection
//! through host, path or extra headers); the response is read with a size bound; every
//! §4.1 "the client MUST _Fail the WebSocket Connection_" check is in [`connect`]; bytes
//! the server sent after its headers are handed to the connection, not lost.

use bytes::{Buf, BytesMut};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::connection::Connection;
use super::error::Error;
pub use super::extension::ClientDeflateOffer;
use super::extension::{self, DeflateParams};
use super::handshake::{header_tokens, HandshakeError};
use super::message::{Config, Role};

/// Largest HTTP response head we accept.
const MAX_RESPONSE_HEAD: usize = 16 << 10;
/// Most response headers we parse.
const MAX_HEADERS: usize = 64;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub ws: Config,
    /// `None`: do not offer compression. Default: `permessage-deflate; client_max_window_bits`.
    pub offer_deflate: Option<ClientDeflateOffer>,
    /// Subprotocols to offer, in order of preference.
    pub protocols: Vec<String>,
    /// Extra request headers, e.g. `Authorization`.
    pub headers: Vec<(String, String)>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            ws: Config::default(),
            offer_deflate: Some(ClientDeflateOffer::default()),
            protocols: Vec::new(),
            headers: Vec::new(),
        }
    }
}

/// What the server agreed to.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub protocol: Option<String>,
    pub deflate: Option<DeflateParams>,
    /// All response headers.
    pub headers: HeaderMap,
}

fn valid_field(s: &str) -> bool {
    // RFC 9110 §5.5: field values are visible ASCII, spaces and tabs; no CR/LF.
    s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn build_request(
    host: &str,
    path: &str,
    key: &str,
    cfg: &ClientConfig,
) -> Result<Vec<u8>, HandshakeError> {
    let bad = HandshakeError::InvalidRequest;
    if host.is_empty()
        || !host.bytes().all(|b| b.is_ascii_graphic())
        || !path.starts_with('/')
        || !path.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad);
    }
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if !cfg.protocols.is_empty() {
        if !cfg
            .protocols
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_graphic() && b != b','))
        {
            return Err(bad);
        }
        req.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            cfg.protocols.join(", ")
        ));
    }
    if let Some(offer) = &cfg.offer_deflate {
        req.push_str(&format!("Sec-WebSocket-Extensions: {}\r\n", offer.header()));
    }
    for (name, value) in &cfg.headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err() || !valid_field(value) {
            return Err(bad);
        }
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    Ok(req.into_bytes())
}

/// Performs the HTTP/1.1 upgrade over `stream`; `host` goes into the `Host` header and
/// `path` (with any query) into the request line.
///
/// A non-101 answer is [`Error::HttpStatus`]; a 101 that fails any RFC 6455 §4.1 or
/// RFC 7692 check is [`Error::Handshake`].
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
    cfg: &ClientConfig,
) -> Result<(Connection<S>, Handshake), Error> {
    let key = tungstenite::handshake::client::generate_key();
    let request = build_request(host, path, &key, cfg)?;
    stream.write_all(&request).await?;
    stream.flush().await?;

    let mut buf = BytesMut::with_capacity(1024);
    let (status, head_len, headers) = loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut headers = HeaderMap::new();
                for h in resp.headers.iter() {
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| HandshakeError::MalformedResponse)?;
                    let value = HeaderValue::from_bytes(h.value)
                        .map_err(|_| HandshakeError::MalformedResponse)?;
                    headers.append(name, value);
                }
                break (resp.code.unwrap_or(0), n, headers);
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err(HandshakeError::MalformedResponse.into()),
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(HandshakeError::ResponseTooLarge.into());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(Error::Eof);
        }
    };
    // §4.1: "If the status code received from the server is not 101, the client handles
    // the response per HTTP procedures" — for us: report it.
    if status != 101 {
        return Err(Error::HttpStatus(status));
    }
    // §4.1 items 2 and 3 of the response checks.
    if !header_tokens(&headers, UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket"))
        || !header_tokens(&headers, CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return Err(HandshakeError::ResponseNotUpgrade.into());
    }
    // §4.1 item 4: the accept value is derived from our key.
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    match headers.get(SEC_WEBSOCKET_ACCEPT) {
        Some(v) if v.as_bytes().trim_ascii() == expected.as_bytes() => {}
        _ => return Err(HandshakeError::BadAccept.into()),
    }
    // §4.1 item 6: at most one protocol, and one we offered.
    let protocol = {
        let mut chosen = header_tokens(&headers, SEC_WEBSOCKET_PROTOCOL);
        match (chosen.next(), chosen.next()) {
            (None, _) => None,
            (Some(p), None) if cfg.protocols.iter().any(|o| o == p) => Some(p.to_owned()),
            _ => return Err(HandshakeError::UnexpectedProtocol.into()),
        }
    };
    // §4.1 item 5 and RFC 7692 §7.1: only extensions we offered, with valid parameters.
    let answer = extension::parse(headers.get_all(SEC_WEBSOCKET_EXTENSIONS));
    let deflate = ClientDeflateOffer::check_answer(cfg.offer_deflate.as_ref(), &answer)
        .map_err(HandshakeError::from)?;

    buf.advance(head_len);
    let conn = Connection::with_buffered(stream, Role::Client, cfg.ws.clone(), deflate, buf)
        .with_protocol(protocol.clone());
    Ok((
        conn,
        Handshake {
            protocol,
            deflate,
            headers,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_validated() {
        let cfg = ClientConfig {
            protocols: vec!["telehub.v1".into()],
            headers: vec![("Authorization".into(), "Bearer abc".into())],
            ..Default::default()
        };
        let req =
            String::from_utf8(build_request("h:1", "/v1/device?x=1", "k", &cfg).unwrap()).unwrap();
        assert!(req.starts_with("GET /v1/device?x=1 HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(req.contains("Sec-WebSocket-Protocol: telehub.v1\r\n"));
        assert!(req
            .contains("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"));
        assert!(req.contains("Authorization: Bearer abc\r\n"));
        assert!(req.ends_with("\r\n\r\n"));

        assert!(build_request("h\r\nX: y", "/", "k", &cfg).is_err());
        assert!(build_request("h", "/a b", "k", &cfg).is_err());
        assert!(build_request("h", "nopath", "k", &cfg).is_err());
        let evil = ClientConfig {
            headers: vec![("X".into(), "a\r\nInjected: 1".into())],
            ..Default::default()
        };
        assert!(build_request("h", "/", "k", &evil).is_err());
    }
}
