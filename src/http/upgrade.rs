//! WebSocket upgrades for `/v1/device` and `/v1/dashboard`.
//!
//! Everything is checked before the `101 Switching Protocols`: the handshake
//! (RFC 6455 §4.2.1), the token and role, the subprotocol and, for dashboards, the
//! Origin. Only then is the connection handed to the transport and a session.
//! Each handler's `#[utoipa::path]` lists every refusal it answers.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, StatusCode},
    response::Response,
};
use hyper_util::rt::TokioIo;

use super::{openapi as doc, refuse, ConnInfo};
use crate::{
    app::App,
    auth::{token_from_headers, Claims, Role},
    hub::WireFormat,
    metrics::RoleMeters,
    session::{self, metered::Metered},
    shutdown::Shutdown,
    ws,
};

pub const PROTOCOL: &str = "telehub.v1";
pub const PROTOCOL_JSON: &str = "telehub.v1.json";

/// The device WebSocket.
///
/// A WebSocket upgrade (RFC 6455; permessage-deflate, RFC 7692, when offered) for
/// devices. Subprotocol `telehub.v1`: after the `101 Switching Protocols` every
/// message is one binary Protocol Buffers `telehub.v1.Envelope` (see
/// `proto/telehub/v1/telehub.proto`): the hub sends `Welcome`, the device sends
/// `Telemetry` and `Ack`, the hub sends `Notification`s and `Error`s; bad input after
/// the upgrade is answered with an `Error` envelope or a close code (1002, 1003,
/// 1007, 1008, 1009, 4003 revoked). Role: device, by a token (`Authorization:
/// Bearer`) or, without one, by a client certificate the device CA verified.
#[utoipa::path(
    get,
    path = "/v1/device",
    operation_id = "device_websocket",
    tag = "websocket",
    security(("bearer" = []), ("mutualTLS" = [])),
    params(
        ("Upgrade" = String, Header, description = "`websocket`"),
        ("Connection" = String, Header, description = "Includes `Upgrade`."),
        ("Sec-WebSocket-Key" = String, Header, description = "16 random bytes, base64."),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`"),
        ("Sec-WebSocket-Protocol" = Option<String>, Header,
            description = "`telehub.v1` (the only one offered here)."),
        ("Sec-WebSocket-Extensions" = Option<String>, Header,
            description = "`permessage-deflate` with its parameters, if wanted."),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol.", headers(
            ("Upgrade" = String, description = "`websocket`"),
            ("Sec-WebSocket-Accept" = String, description = "RFC 6455 §4.2.2"),
            ("Sec-WebSocket-Protocol" = String, description = "`telehub.v1`, if offered"),
            ("Sec-WebSocket-Extensions" = String,
                description = "The permessage-deflate parameters agreed, if any"),
        )),
        (status = 400, description = "Not a valid WebSocket upgrade (RFC 6455 §4.2.1), or \
            subprotocols offered and none is `telehub.v1`.", body = String),
        (status = 401, description = "No token and no client certificate the device CA \
            verified, or a token or certificate that is refused (malformed, wrongly \
            signed, expired, revoked, naming no device); the body says which.",
            body = String),
        (status = 403, description = "The token's role is not device.", body = String),
        (status = 409, description = "The device is connected with a token and this \
            connection presents a certificate, or the reverse: neither may take the \
            other's place.", body = String),
        (status = 426, description = "A WebSocket version other than 13.", body = String,
            headers(("Sec-WebSocket-Version" = String, description = "`13`"))),
        (status = 500, description = "The connection was not registered by the hub's \
            listener (never on a hub's own listener).", body = String),
    )
)]
pub async fn device(State(app): State<Arc<App>>, req: Request) -> Response {
    upgrade(app, req, Endpoint::Device).await
}

/// The dashboard WebSocket.
///
/// A WebSocket upgrade (RFC 6455; permessage-deflate, RFC 7692, when offered) for
/// browsers and tools. Subprotocol `telehub.v1`: every message is one binary
/// Protocol Buffers `telehub.v1.Envelope` (see `proto/telehub/v1/telehub.proto`);
/// `telehub.v1.json`: one text message per `Envelope` in the proto3 JSON mapping.
/// The dashboard sends `Subscribe` (categories, tags, devices) and receives
/// `Telemetry`, presence and fleet statistics; operators also send
/// `NotificationRequest`. Role: viewer or operator, by `Authorization: Bearer`, a
/// `bearer.<token>` entry in `Sec-WebSocket-Protocol` (browsers cannot set headers)
/// or the `telehub_token` cookie. A browser's `Origin` must be the hub's own, on
/// localhost, or in `dashboard.allowed_origins`.
#[utoipa::path(
    get,
    path = "/v1/dashboard",
    operation_id = "dashboard_websocket",
    tag = "websocket",
    security(("bearer" = []), ("cookie" = [])),
    params(
        ("Upgrade" = String, Header, description = "`websocket`"),
        ("Connection" = String, Header, description = "Includes `Upgrade`."),
        ("Sec-WebSocket-Key" = String, Header, description = "16 random bytes, base64."),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`"),
        ("Sec-WebSocket-Protocol" = Option<String>, Header,
            description = "`telehub.v1` or `telehub.v1.json`, and optionally a \
                `bearer.<token>` entry carrying the token."),
        ("Sec-WebSocket-Extensions" = Option<String>, Header,
            description = "`permessage-deflate` with its parameters, if wanted."),
        ("Origin" = Option<String>, Header, description = "Sent by browsers; checked."),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol.", headers(
            ("Upgrade" = String, description = "`websocket`"),
            ("Sec-WebSocket-Accept" = String, description = "RFC 6455 §4.2.2"),
            ("Sec-WebSocket-Protocol" = String,
                description = "`telehub.v1` or `telehub.v1.json`, the one chosen"),
            ("Sec-WebSocket-Extensions" = String,
                description = "The permessage-deflate parameters agreed, if any"),
        )),
        (status = 400, description = "Not a valid WebSocket upgrade (RFC 6455 §4.2.1), or \
            subprotocols offered and none is supported.", body = String),
        (status = 401, description = doc::UNAUTHORIZED, body = String),
        (status = 403, description = "The token's role is neither viewer nor operator, or \
            the `Origin` is not allowed.", body = String),
        (status = 426, description = "A WebSocket version other than 13.", body = String,
            headers(("Sec-WebSocket-Version" = String, description = "`13`"))),
        (status = 500, description = "The connection was not registered by the hub's \
            listener (never on a hub's own listener).", body = String),
    )
)]
pub async fn dashboard(State(app): State<Arc<App>>, req: Request) -> Response {
    upgrade(app, req, Endpoint::Dashboard).await
}

#[derive(Clone, Copy)]
enum Endpoint {
    Device,
    Dashboard,
}

async fn upgrade(app: Arc<App>, req: Request, endpoint: Endpoint) -> Response {
    let (mut parts, _body) = req.into_parts();
    let (roles, protocols): (&[Role], &[&str]) = match endpoint {
        Endpoint::Device => (&[Role::Device], &[PROTOCOL]),
        Endpoint::Dashboard => (&[Role::Viewer, Role::Operator], &[PROTOCOL, PROTOCOL_JSON]),
    };
    let policy = app.deflate_policy();
    let accept = match ws::handshake::accept(
        &parts.method,
        parts.version,
        &parts.headers,
        protocols,
        &policy,
    ) {
        Ok(a) => a,
        Err(e) => {
            app.metrics.refused("bad_handshake");
            let mut resp = refuse(e.status(), &e);
            // 426 carries `Sec-WebSocket-Version: 13`, 405 carries `Allow: GET`.
            resp.headers_mut().extend(e.response_headers());
            return resp;
        }
    };
    // A device without a token authenticates with its client certificate, if it
    // presented one the device CA verified.
    let token = token_from_headers(&parts.headers);
    let device_cert = match endpoint {
        Endpoint::Device if token.is_none() => parts
            .extensions
            .get::<ConnInfo>()
            .and_then(|c| c.device_cert.clone()),
        _ => None,
    };
    let by_certificate = device_cert.is_some();
    let checked = match &device_cert {
        Some(named) => app.auth.authorize_certificate(named).map(|mut c| {
            c.tags = app.hub.registered_tags(&c.sub);
            c.tags.extend(app.live().device_tags.clone());
            c
        }),
        None => app.auth.authorize(token, roles),
    };
    let claims = match checked {
        Ok(c) => c,
        Err(e) => {
            app.metrics.refused(match e.status() {
                StatusCode::FORBIDDEN => "forbidden",
                _ => "unauthorized",
            });
            return refuse(e.status(), &e);
        }
    };
    // A certificate may not take over a device connected with a token, nor a
    // token one connected with a certificate.
    if let (Endpoint::Device, Some(held)) = (endpoint, app.hub.held_by_certificate(&claims.sub)) {
        if held != by_certificate {
            app.metrics.refused("conflict");
            let (now, then) = match held {
                true => ("a client certificate", "a token"),
                false => ("a token", "a client certificate"),
            };
            return refuse(
                StatusCode::CONFLICT,
                format!(
                    "device {:?} is connected with {now}: a connection with {then} cannot take it over",
                    claims.sub
                ),
            );
        }
    }
    if let Endpoint::Dashboard = endpoint {
        if let Err(msg) = check_origin(&parts.headers, &app.live().allowed_origins) {
            app.metrics.refused("origin");
            return refuse(StatusCode::FORBIDDEN, msg);
        }
    }
    if accept.protocol.is_none() && offered_protocols(&parts.headers) {
        app.metrics.refused("bad_handshake");
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "unsupported subprotocol; this endpoint speaks {}",
                protocols.join(", ")
            ),
        );
    }
    let format = match accept.protocol.as_deref() {
        Some(PROTOCOL_JSON) => WireFormat::Json,
        _ => WireFormat::Protobuf,
    };
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(StatusCode::BAD_REQUEST, "connection cannot be upgraded");
    };
    // Holds this connection's place under the connection caps for the session's
    // life, and carries the session's shutdown signal.
    let Some(conn) = parts.extensions.remove::<ConnInfo>() else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "connection not registered by the listener",
        );
    };
    let role = claims.role;
    let meters = app.metrics.role(role);
    let ws_config = app.ws_config();
    let deflate = accept.deflate;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let io = Metered::new(
            TokioIo::new(upgraded),
            meters.wire_in.clone(),
            meters.wire_out.clone(),
        );
        let conn_ws = ws::Connection::new(io, ws::Role::Server, ws_config, deflate);
        app.metrics
            .connections_accepted
            .get_or_create(&crate::metrics::RoleLabel {
                role: role.as_str(),
            })
            .inc();
        let shutdown = conn.shutdown.clone();
        let session = Session {
            claims,
            endpoint,
            format,
            by_certificate,
        };
        run_session(conn_ws, session, app, meters, shutdown).await;
        drop(conn);
    });
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = accept.response_headers();
    resp
}

/// Who the upgrade authenticated, and for what.
struct Session {
    claims: Claims,
    endpoint: Endpoint,
    format: WireFormat,
    /// The device authenticated with a client certificate.
    by_certificate: bool,
}

async fn run_session<S>(
    conn: ws::Connection<S>,
    Session {
        claims,
        endpoint,
        format,
        by_certificate,
    }: Session,
    app: Arc<App>,
    meters: RoleMeters,
    shutdown: Shutdown,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    meters.connections.inc();
    let subject = claims.sub.clone();
    tracing::debug!(%subject, role = %claims.role, "session start");
    match endpoint {
        // Boxed apart: a device's task holds a device session's future, not one as
        // large as a dashboard's (idle fleets are mostly devices).
        Endpoint::Device => {
            Box::pin(session::device::run(
                conn,
                claims,
                by_certificate,
                app,
                meters.clone(),
                shutdown,
            ))
            .await
        }
        Endpoint::Dashboard => {
            Box::pin(session::dashboard::run(
                conn,
                claims,
                format,
                app,
                meters.clone(),
                shutdown,
            ))
            .await
        }
    }
    meters.connections.dec();
    tracing::debug!(%subject, "session end");
}

fn offered_protocols(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        // `bearer.<token>` entries carry the browser's token, not a protocol choice.
        .any(|p| !p.trim().is_empty() && !p.trim().starts_with("bearer."))
}

/// Browsers send `Origin`; tools usually don't (and are not subject to CSRF-style
/// abuse through a victim's browser), so a missing Origin is allowed. A present one
/// must be same-origin with `Host`, on localhost, or in the configured allow-list.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| "unreadable Origin header".to_string())?;
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    let Some((_, host)) = origin.split_once("://") else {
        return Err(format!("origin {origin} is not allowed"));
    };
    if let Some(req_host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        if req_host.eq_ignore_ascii_case(host) {
            return Ok(());
        }
    }
    let hostname = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    if matches!(hostname, "localhost" | "127.0.0.1" | "::1") {
        return Ok(());
    }
    Err(format!("origin {origin} is not allowed on /v1/dashboard"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(header::HOST, host.parse().unwrap());
        h
    }

    #[test]
    fn origin_policy() {
        assert!(check_origin(&HeaderMap::new(), &[]).is_ok());
        assert!(check_origin(
            &headers("https://hub.example:8443", "hub.example:8443"),
            &[]
        )
        .is_ok());
        assert!(check_origin(&headers("http://localhost:3000", "hub.example"), &[]).is_ok());
        assert!(check_origin(&headers("http://[::1]:3000", "hub.example"), &[]).is_ok());
        assert!(check_origin(&headers("https://evil.example", "hub.example"), &[]).is_err());
        assert!(check_origin(
            &headers("https://ops.example", "hub.example"),
            &["https://ops.example".into()]
        )
        .is_ok());
    }
}
