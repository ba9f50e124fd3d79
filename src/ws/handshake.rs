//! Server side of the opening handshake (RFC 6455 §4.2): validate the HTTP/1.1 upgrade
//! request, pick the subprotocol, negotiate permessage-deflate and compute the answer.
//!
//! HTTP itself stays with the HTTP stack (hyper/axum): this module only looks at the
//! method, version and headers it is given and produces the 101 headers or the error
//! status. Each request requirement of §4.2.1 is checked once, in [`accept`].

use base64::Engine as _;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};

use super::extension::{self, DeflateParams};
pub use super::extension::{ExtensionAnswerError, ServerDeflatePolicy};

/// Why an upgrade request was refused, or (client side) why the server's answer was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("RFC 6455 §4.2.1: the method of an upgrade request MUST be GET")]
    MethodNotGet,
    #[error("malformed HTTP upgrade request")]
    MalformedRequest,
    #[error("RFC 6455 §4.2.1: an upgrade request MUST be HTTP/1.1 or higher")]
    HttpVersion,
    #[error("RFC 6455 §4.2.1: missing or wrong Upgrade: websocket header")]
    NoUpgradeWebsocket,
    #[error("RFC 6455 §4.2.1: the Connection header MUST include the token \"Upgrade\"")]
    NoConnectionUpgrade,
    #[error("RFC 6455 §4.2.1: missing Sec-WebSocket-Version header")]
    MissingVersion,
    #[error("RFC 6455 §4.2.2: unsupported Sec-WebSocket-Version (only 13)")]
    UnsupportedVersion,
    #[error("RFC 6455 §4.2.1: Sec-WebSocket-Key MUST be one base64-encoded 16-byte value")]
    BadKey,
    // Client side.
    #[error("invalid request target, host or header for the upgrade request")]
    InvalidRequest,
    #[error("malformed HTTP response to the upgrade request")]
    MalformedResponse,
    #[error("HTTP response headers too large")]
    ResponseTooLarge,
    #[error("RFC 6455 §4.1: the response lacks Upgrade: websocket / Connection: Upgrade")]
    ResponseNotUpgrade,
    #[error("RFC 6455 §4.1: Sec-WebSocket-Accept does not match our key")]
    BadAccept,
    #[error("RFC 6455 §4.1: the server chose a subprotocol we did not offer")]
    UnexpectedProtocol,
    #[error("{0}")]
    Extension(#[from] ExtensionAnswerError),
}

impl HandshakeError {
    /// The HTTP status to refuse the upgrade with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Headers to add to the refusal: §4.2.2 asks a 426 to name the versions we speak.
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        match self {
            HandshakeError::UnsupportedVersion => {
                h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            }
            HandshakeError::MethodNotGet => {
                h.insert(http::header::ALLOW, HeaderValue::from_static("GET"));
            }
            _ => {}
        }
        h
    }
}

/// The server's positive answer to an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    pub accept_key: String,
    /// The first subprotocol in the client's list that we support.
    pub protocol: Option<String>,
    /// The `Sec-WebSocket-Extensions` answer, if an extension was accepted.
    pub extensions: Option<String>,
    pub deflate: Option<DeflateParams>,
}

impl Accept {
    /// Headers of the 101 Switching Protocols response.
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        let values = [
            (SEC_WEBSOCKET_ACCEPT, Some(&self.accept_key)),
            (SEC_WEBSOCKET_PROTOCOL, self.protocol.as_ref()),
            (SEC_WEBSOCKET_EXTENSIONS, self.extensions.as_ref()),
        ];
        for (name, value) in values {
            // All values were built from tokens and base64, so they are valid; skipping
            // is the safe answer should that ever change.
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                h.insert(name, v);
            }
        }
        h
    }
}

/// Iterates the comma-separated tokens of every `name` header, trimmed.
pub(crate) fn header_tokens<'a>(
    headers: &'a HeaderMap,
    name: http::header::HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Validates an upgrade request and computes the answer. `protocols` are the
/// subprotocols we support, in no particular order (the client's preference wins).
pub fn accept(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    protocols: &[&str],
    deflate: &ServerDeflatePolicy,
) -> Result<Accept, HandshakeError> {
    // §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
    if method != Method::GET {
        return Err(HandshakeError::MethodNotGet);
    }
    if version < Version::HTTP_11 {
        return Err(HandshakeError::HttpVersion);
    }
    // §4.2.1 item 3: Upgrade contains "websocket", ASCII case-insensitive.
    if !header_tokens(headers, UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket")) {
        return Err(HandshakeError::NoUpgradeWebsocket);
    }
    // §4.2.1 item 4: Connection includes the token "Upgrade", case-insensitive.
    if !header_tokens(headers, CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    // §4.2.1 item 6 and §4.2.2: version 13, otherwise 426 naming the version we speak.
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (None, _) => return Err(HandshakeError::MissingVersion),
        (Some(v), None) if v.as_bytes().trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    // §4.2.1 item 5: exactly one key that decodes to 16 bytes.
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k.as_bytes().trim_ascii(),
        _ => return Err(HandshakeError::BadKey),
    };
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    let accept_key = tungstenite::handshake::derive_accept_key(key);

    // §4.2.2 item 5.4: the first of the client's protocols (in its order of preference)
    // that we support; none means no header in the answer.
    let protocol = header_tokens(headers, SEC_WEBSOCKET_PROTOCOL)
        .find(|p| protocols.contains(p))
        .map(str::to_owned);

    let offers = extension::parse(headers.get_all(SEC_WEBSOCKET_EXTENSIONS));
    let (deflate, extensions) = match deflate.negotiate(&offers) {
        Some((params, answer)) => (Some(params), Some(answer)),
        None => (None, None),
    };
    Ok(Accept {
        accept_key,
        protocol,
        extensions,
        deflate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn request(extra: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ] {
            if !extra.iter().any(|(e, _)| *e == k) {
                h.append(k, HeaderValue::from_static(v));
            }
        }
        for (k, v) in extra {
            if !v.is_empty() {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
        }
        h
    }

    fn run(h: &HeaderMap) -> Result<Accept, HandshakeError> {
        accept(
            &Method::GET,
            Version::HTTP_11,
            h,
            &["telehub.v1", "telehub.v1.json"],
            &ServerDeflatePolicy::default(),
        )
    }

    #[test]
    fn rfc_sample_key() {
        let a = run(&request(&[])).unwrap();
        // RFC 6455 §1.3.
        assert_eq!(a.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(a.protocol, None);
        assert_eq!(a.deflate, None);
        let h = a.response_headers();
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(!h.contains_key(SEC_WEBSOCKET_EXTENSIONS));
    }

    #[test]
    fn protocol_and_extension() {
        let a = run(&request(&[
            ("sec-websocket-protocol", "mqtt, telehub.v1.json"),
            ("sec-websocket-protocol", "telehub.v1"),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ]))
        .unwrap();
        assert_eq!(a.protocol.as_deref(), Some("telehub.v1.json"));
        assert_eq!(
            a.extensions.as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        let h = a.response_headers();
        assert_eq!(h[SEC_WEBSOCKET_PROTOCOL], "telehub.v1.json");
        assert!(a.deflate.unwrap().server_no_context_takeover);
    }

    #[test]
    fn refusals() {
        type Case<'a> = (&'a [(&'a str, &'a str)], HandshakeError, u16);
        let cases: &[Case] = &[
            (&[("upgrade", "")], HandshakeError::NoUpgradeWebsocket, 400),
            (
                &[("upgrade", "h2c")],
                HandshakeError::NoUpgradeWebsocket,
                400,
            ),
            (
                &[("connection", "keep-alive")],
                HandshakeError::NoConnectionUpgrade,
                400,
            ),
            (
                &[("sec-websocket-version", "")],
                HandshakeError::MissingVersion,
                400,
            ),
            (
                &[("sec-websocket-version", "8")],
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (&[("sec-websocket-key", "")], HandshakeError::BadKey, 400),
            (
                &[("sec-websocket-key", "c2hvcnQ=")],
                HandshakeError::BadKey,
                400,
            ),
            (&[("sec-websocket-key", "!!!")], HandshakeError::BadKey, 400),
        ];
        for (extra, want, status) in cases {
            let err = run(&request(extra)).unwrap_err();
            assert_eq!(&err, want, "{extra:?}");
            assert_eq!(err.status().as_u16(), *status);
        }
        let err = run(&request(&[("sec-websocket-version", "8")])).unwrap_err();
        assert_eq!(err.response_headers()[SEC_WEBSOCKET_VERSION], "13");

        let h = request(&[]);
        let policy = ServerDeflatePolicy::default();
        assert_eq!(
            accept(&Method::POST, Version::HTTP_11, &h, &[], &policy),
            Err(HandshakeError::MethodNotGet)
        );
        assert_eq!(
            accept(&Method::GET, Version::HTTP_10, &h, &[], &policy),
            Err(HandshakeError::HttpVersion)
        );
        // Two keys are as bad as none.
        let mut two = request(&[]);
        two.append(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(run(&two), Err(HandshakeError::BadKey));
    }
}
