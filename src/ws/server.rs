//! A minimal server-side upgrade over a raw stream, for tools without an HTTP stack
//! (tests, benchmarks, conformance targets). The hub itself upgrades through hyper and
//! calls [`super::handshake::accept`] directly.
//!
//! Invariants: the request head is bounded in size; a refused upgrade gets its HTTP
//! status (and the 426 version header) before the error is returned; bytes the client
//! sent after the request head become the start of the WebSocket stream.

use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::connection::Connection;
use super::error::Error;
use super::handshake::{accept, Accept, HandshakeError, ServerDeflatePolicy};
use super::message::{Config, Role};

/// Largest request head we read.
const MAX_REQUEST_HEAD: usize = 16 << 10;
const MAX_HEADERS: usize = 64;

/// Reads an HTTP/1.1 upgrade request from `stream`, answers it, and returns the
/// WebSocket connection with the handshake's outcome.
pub async fn accept_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    protocols: &[&str],
    policy: &ServerDeflatePolicy,
    config: Config,
) -> Result<(Connection<S>, Accept), Error> {
    let mut buf = BytesMut::with_capacity(1024);
    let (method, version, headers, head_len) = loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
                    .map_err(|_| HandshakeError::MalformedRequest)?;
                let version = if req.version == Some(1) {
                    Version::HTTP_11
                } else {
                    Version::HTTP_10
                };
                let mut headers = HeaderMap::new();
                for h in req.headers.iter() {
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| HandshakeError::MalformedRequest)?;
                    let value = HeaderValue::from_bytes(h.value)
                        .map_err(|_| HandshakeError::MalformedRequest)?;
                    headers.append(name, value);
                }
                break (method, version, headers, n);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_HEAD => {}
            _ => {
                let err = HandshakeError::MalformedRequest;
                refuse(&mut stream, &err).await;
                return Err(err.into());
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(Error::Eof);
        }
    };
    let answer = match accept(&method, version, &headers, protocols, policy) {
        Ok(a) => a,
        Err(err) => {
            refuse(&mut stream, &err).await;
            return Err(err.into());
        }
    };
    let mut resp = String::from("HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in answer.response_headers().iter() {
        // Our own header values are ASCII (tokens and base64).
        resp.push_str(&format!("{}: {}\r\n", name, value.to_str().unwrap_or("")));
    }
    resp.push_str("\r\n");
    stream.write_all(resp.as_bytes()).await?;
    stream.flush().await?;
    buf.advance(head_len);
    let conn = Connection::with_buffered(stream, Role::Server, config, answer.deflate, buf)
        .with_protocol(answer.protocol.clone());
    Ok((conn, answer))
}

/// Best effort: the client is already misbehaving, the error is what we report.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, err: &HandshakeError) {
    let status = err.status();
    let mut resp = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: 0\r\nConnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in err.response_headers().iter() {
        resp.push_str(&format!("{}: {}\r\n", name, value.to_str().unwrap_or("")));
    }
    resp.push_str("\r\n");
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}
