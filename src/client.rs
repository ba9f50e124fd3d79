//! A client for the hub's REST API (see `http::api`), used by `telehub notify`, the
//! benchmarks and the tests: one HTTP/1.1 request per connection, over TLS with the
//! hub's CA for `https://`, every step bounded by a timeout.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    http::{
        api::{CreateBody, CreatedBody, DeviceBody, DeviceOut, DevicesOut, ListBody, StatusBody},
        revocations::{RevocationsBody, RevokeBody},
    },
    sim::Endpoint,
    store::Revocation,
};

/// Bound on connecting, and on the whole exchange of one request.
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The hub answered with an error status; `message` is its one-line reason.
    #[error("HTTP {status}: {message}")]
    Status { status: StatusCode, message: String },
    /// No connection: refused, unreachable, or TLS failed (a wrong `--ca`).
    #[error("cannot reach the hub at {addr} (is it running there, and is this its CA?)")]
    Unreachable {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("unexpected answer: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the request timed out")]
    Timeout,
}

/// The REST API of one hub, with one bearer token.
#[derive(Clone, Debug)]
pub struct Api {
    endpoint: Endpoint,
    token: String,
}

impl Api {
    /// `url`: `https://HOST:PORT` (or `wss://`; `http://`/`ws://` for a plaintext
    /// hub); `ca`: the PEM of the CA to trust for TLS.
    pub fn new(url: &str, ca: Option<&Path>, token: String) -> anyhow::Result<Self> {
        Ok(Api {
            endpoint: Endpoint::parse(url, ca)?,
            token,
        })
    }

    pub async fn create(&self, body: &CreateBody) -> Result<CreatedBody, ApiError> {
        self.call(Method::POST, "/v1/notifications", Some(body))
            .await
    }

    /// One notification's counts and a page of its devices (`state`: only those in
    /// that state; `after`: the `next` of the previous page).
    pub async fn status(
        &self,
        id: &str,
        state: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StatusBody, ApiError> {
        let mut path = format!("/v1/notifications/{}?limit={limit}", encode(id));
        if let Some(s) = state {
            path.push_str(&format!("&state={}", encode(s)));
        }
        if let Some(a) = after {
            path.push_str(&format!("&after={}", encode(a)));
        }
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn list(&self, limit: usize) -> Result<ListBody, ApiError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/v1/notifications?limit={limit}"),
            None,
        )
        .await
    }

    pub async fn put_device(&self, id: &str, body: &DeviceBody) -> Result<DeviceOut, ApiError> {
        self.call(
            Method::PUT,
            &format!("/v1/devices/{}", encode(id)),
            Some(body),
        )
        .await
    }

    pub async fn devices(&self, after: Option<&str>, limit: usize) -> Result<DevicesOut, ApiError> {
        let mut path = format!("/v1/devices?limit={limit}");
        if let Some(a) = after {
            path.push_str(&format!("&after={}", encode(a)));
        }
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/revocations`: the revocation, once in force.
    pub async fn revoke(&self, body: &RevokeBody) -> Result<Revocation, ApiError> {
        self.call(Method::POST, "/v1/revocations", Some(body)).await
    }

    /// `GET /v1/revocations`: those in force, oldest first.
    pub async fn revocations(&self) -> Result<RevocationsBody, ApiError> {
        self.call::<(), _>(Method::GET, "/v1/revocations", None)
            .await
    }

    /// `GET /readyz`: the readiness body (an error with status 503 and the body
    /// when the node is not ready).
    pub async fn readyz(&self) -> Result<String, ApiError> {
        self.text("/readyz").await
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        self.text("/metrics").await
    }

    /// A `GET` whose answer is text, not JSON.
    async fn text(&self, path: &str) -> Result<String, ApiError> {
        let bytes = tokio::time::timeout(TIMEOUT, self.exchange::<()>(Method::GET, path, None))
            .await
            .map_err(|_| ApiError::Timeout)??;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let bytes = tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| ApiError::Timeout)??;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// One request; the body of a successful answer.
    async fn exchange<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Bytes, ApiError> {
        let payload = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        request(
            &self.endpoint,
            method,
            path,
            Some(&self.token),
            payload,
            usize::MAX,
        )
        .await
    }
}

/// `GET path` on `endpoint` without a token: the body of a successful answer, at
/// most `limit` bytes (for servers other than the hub, e.g. a key set URL).
pub async fn get(endpoint: &Endpoint, path: &str, limit: usize) -> Result<Bytes, ApiError> {
    request(endpoint, Method::GET, path, None, Bytes::new(), limit).await
}

/// One request on a connection of its own; the body of a successful answer.
async fn request(
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    token: Option<&str>,
    payload: Bytes,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let http = |e: hyper::Error| ApiError::Http(e.to_string());
    let stream = endpoint
        .stream(TIMEOUT)
        .await
        .map_err(|source| ApiError::Unreachable {
            addr: endpoint.addr().to_owned(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // Drives the connection; ends with the response (one request per connection).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, endpoint.host_header())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(payload))
        .map_err(|e| ApiError::Http(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    let bytes = http_body_util::Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| ApiError::Http(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(ApiError::Status {
            status,
            message: String::from_utf8_lossy(&bytes).trim().to_owned(),
        });
    }
    Ok(bytes)
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encoding() {
        assert_eq!(super::encode("dev-1_a.b~"), "dev-1_a.b~");
        assert_eq!(super::encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
