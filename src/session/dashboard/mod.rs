//! A dashboard connection: subscriptions in, telemetry, presence and notices out;
//! for operators, notification requests in and campaign progress out.
//!
//! The session drains its outbox (see `hub::outbox` for the drop policy) and
//! writes everything queued as one batch of pre-encoded, pre-framed messages:
//! the same bytes every other subscriber with the same wire format and
//! compression parameters gets. When the outbox dropped telemetry since the last
//! batch, a `Dropped{count,total}` notice goes first.
//!
//! Parse, then apply: each message becomes a [`Command`] ([`Command::parse`]), and
//! each command has its handler in its own file ([`subscribe`], [`watch`],
//! [`notification`]) returning one `Reply`; the session sends what the reply
//! carries and counts strikes in one place (`session::reply::Strikes`).

pub mod notification;
pub mod subscribe;
pub mod watch;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    close, finish, receive,
    reply::{Refusal, Reply, Strikes},
    send, timed, Close, KeepAlive, Step,
};
use crate::{
    app::App,
    auth::{Claims, Credential, Role, Scope},
    hub::{DashboardHandle, Encoded, Pattern, WireFormat},
    metrics::RoleMeters,
    proto::{
        envelope::Body, error::Code, Dropped, Envelope, NotificationRequest, Subscribe,
        Unsubscribe, WatchFleet, WatchNotifications, Welcome,
    },
    shutdown::Shutdown,
    ws,
};

/// Longest a dashboard waits at shutdown for the devices' last telemetry.
const LAST_FLUSH: Duration = Duration::from_secs(1);

/// Runs one dashboard connection to its end.
pub async fn run<S>(
    conn: ws::Connection<S>,
    claims: Claims,
    format: WireFormat,
    app: Arc<App>,
    meters: RoleMeters,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = conn.split();
    let handle = app.hub.register_scoped_dashboard(
        app.config.dashboard.queue_len,
        format,
        claims.scope.device_tags.clone(),
    );
    let mut dashboard = Dashboard {
        handle,
        role: claims.role,
        credential: Credential::from(&claims),
        scope: claims.scope.clone(),
        format,
        app: app.clone(),
        meters,
        patterns: BTreeMap::new(),
        strikes: Strikes::new(app.config.limits.max_malformed),
        subscribes: subscribe::pacer(),
    };
    let welcome = Envelope {
        body: Some(Body::Welcome(Welcome {
            subject: claims.sub.clone(),
            role: claims.role.as_str().into(),
            max_message_bytes: app.config.limits.max_message_bytes as u32,
            rate_per_second: 0,
            burst: 0,
            server_version: env!("CARGO_PKG_VERSION").into(),
            confirmations: false,
            max_readings: 0,
        })),
    };
    let close = match send(&mut writer, &encode(format, &welcome), &dashboard.meters).await {
        Ok(()) => dashboard.serve(&mut reader, &mut writer, shutdown).await,
        Err(_) => None,
    };
    app.hub
        .unregister_dashboard(&dashboard.handle, dashboard.patterns.values());
    finish(&mut reader, &mut writer, close.as_ref()).await;
}

pub(super) struct Dashboard {
    handle: Arc<DashboardHandle>,
    /// Viewers watch; operators may also push notifications.
    role: Role,
    /// Its token, checked again when revocations change.
    credential: Credential,
    /// What its token lets it subscribe to and see.
    scope: Scope,
    format: WireFormat,
    app: Arc<App>,
    meters: RoleMeters,
    /// This dashboard's subscriptions by their text form (what `Subscribed` lists).
    patterns: BTreeMap<String, Pattern>,
    strikes: Strikes,
    /// Paces Subscribes (see [`subscribe::SUBSCRIBES_PER_SECOND`]).
    subscribes: governor::DefaultDirectRateLimiter,
}

/// What a dashboard may send, parsed.
pub(super) enum Command {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    WatchNotifications(WatchNotifications),
    WatchFleet(WatchFleet),
    NotificationRequest(NotificationRequest),
}

/// Why an incoming message is not a command.
enum Unparsed {
    /// Text on a binary subprotocol or the reverse: closed with 1003.
    WrongType(&'static str),
    /// Not an envelope at all (counted in `telehub_decode_errors`): an Error and a
    /// strike.
    Undecodable(Refusal),
    /// An envelope a dashboard may not send: an Error and a strike.
    Invalid(Refusal),
}

impl Command {
    /// Parses one message in the connection's wire format.
    fn parse(msg: ws::Message, format: WireFormat) -> Result<Self, Unparsed> {
        let envelope = match (msg, format) {
            (ws::Message::Binary(data), WireFormat::Protobuf) => Envelope::decode(data)
                .map_err(|e| undecodable(format!("not a telehub.v1.Envelope: {e}"), "")),
            (ws::Message::Text(text), WireFormat::Json) => {
                serde_json::from_str(&text).map_err(|e| {
                    undecodable(
                        format!("not a telehub.v1.Envelope in JSON: {e}"),
                        &json_request_id(&text),
                    )
                })
            }
            (ws::Message::Text(_), WireFormat::Protobuf) => Err(Unparsed::WrongType(
                "subprotocol telehub.v1 takes binary frames; use telehub.v1.json for text",
            )),
            (ws::Message::Binary(_), WireFormat::Json) => Err(Unparsed::WrongType(
                "subprotocol telehub.v1.json takes text frames",
            )),
        }?;
        match envelope.body {
            Some(Body::Subscribe(s)) => Ok(Command::Subscribe(s)),
            Some(Body::Unsubscribe(u)) => Ok(Command::Unsubscribe(u)),
            Some(Body::WatchNotifications(w)) => Ok(Command::WatchNotifications(w)),
            Some(Body::WatchFleet(w)) => Ok(Command::WatchFleet(w)),
            Some(Body::NotificationRequest(r)) => Ok(Command::NotificationRequest(r)),
            Some(_) => Err(Unparsed::Invalid(Refusal::new(
                close::POLICY_VIOLATION,
                Code::Malformed,
                "dashboards may send only Subscribe, Unsubscribe, WatchNotifications, WatchFleet and (operators) NotificationRequest",
            ))),
            None => Err(Unparsed::Invalid(Refusal::new(
                close::POLICY_VIOLATION,
                Code::Malformed,
                "empty Envelope",
            ))),
        }
    }
}

/// An undecodable message: 1007 once the strikes run out.
fn undecodable(message: String, request_id: &str) -> Unparsed {
    Unparsed::Undecodable(
        Refusal::new(close::INVALID_PAYLOAD, Code::Malformed, message).for_request(request_id),
    )
}

/// The `notificationRequest.requestId` of a JSON message that is not a valid
/// envelope (say, an unknown severity), so the refusal still names its request.
fn json_request_id(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            let r = &v["notificationRequest"];
            r.get("requestId")
                .or_else(|| r.get("request_id"))
                .and_then(|id| id.as_str())
                .map(|id| id.chars().take(128).collect())
        })
        .unwrap_or_default()
}

impl Dashboard {
    /// Sends what the outbox holds (and a `Dropped` notice if it dropped some).
    /// `Err` ends the session with that close (`None`: the socket is gone).
    async fn flush<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut ws::Writer<W>,
        queued: &mut Vec<Arc<Encoded>>,
        batch: &mut Vec<ws::SharedMessage>,
    ) -> Result<(), Option<Close>> {
        let drained = self.handle.outbox.drain(queued);
        if drained.overflowed {
            self.app.metrics.closed_slow.inc();
            return Err(Some(Close::new(
                close::POLICY_VIOLATION,
                "too slow: control messages overflowed the queue",
            )));
        }
        batch.clear();
        if drained.dropped > 0 {
            let notice = Encoded::new(Envelope {
                body: Some(Body::Dropped(Dropped {
                    count: drained.dropped,
                    total: drained.dropped_total,
                })),
            });
            batch.push(notice.message(self.format).clone());
        }
        let mut payload = 0u64;
        for m in queued.iter() {
            let msg = m.message(self.format);
            payload += msg.payload().len() as u64;
            batch.push(msg.clone());
        }
        let oldest = queued.iter().map(|m| m.created()).min();
        queued.clear();
        if batch.is_empty() {
            return Ok(());
        }
        if timed(writer.send_shared(batch)).await.is_err() {
            return Err(None);
        }
        self.meters.frames_out.inc_by(batch.len() as u64);
        self.meters.payload_out.inc_by(payload);
        // Once per write, not per message: the oldest message's wait is the write's.
        if let Some(oldest) = oldest {
            self.app.metrics.delivery_delay.observe(oldest.elapsed());
        }
        Ok(())
    }

    /// Shutting down: devices are closing at the same moment, and what they
    /// published first is in the outbox or about to be. It is delivered before the
    /// close (waiting for more at most [`LAST_FLUSH`], then sending what is
    /// there), so a graceful restart loses none of the telemetry the hub
    /// confirmed to devices.
    async fn last_flush<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut ws::Writer<W>,
        queued: &mut Vec<Arc<Encoded>>,
        batch: &mut Vec<ws::SharedMessage>,
    ) -> Result<(), Option<Close>> {
        let deadline = tokio::time::Instant::now() + LAST_FLUSH;
        loop {
            // Read before the drain: a device session counted out has published
            // its last message already.
            let devices_gone = self.app.hub.device_sessions() == 0;
            let late = tokio::time::Instant::now() >= deadline;
            self.flush(writer, queued, batch).await?;
            if devices_gone || late {
                return Ok(());
            }
            tokio::select! {
                _ = self.handle.outbox.ready() => {}
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn serve<R, W>(
        &mut self,
        reader: &mut ws::Reader<R>,
        writer: &mut ws::Writer<W>,
        mut shutdown: Shutdown,
    ) -> Option<Close>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let limits = &self.app.config.limits;
        let mut keepalive = KeepAlive::new(limits.ping_interval, limits.idle_timeout);
        let mut queued: Vec<Arc<Encoded>> = Vec::new();
        let mut batch: Vec<ws::SharedMessage> = Vec::new();
        // Watched from here on; a revocation since the upgrade's check is seen now.
        let mut revocations = self.app.auth.revocations_changed();
        if self.app.auth.is_revoked(&self.credential) {
            return Some(Close::new(close::REVOKED, "token revoked"));
        }
        loop {
            tokio::select! {
                _ = shutdown.recv() => {
                    if let Err(end) = self.last_flush(writer, &mut queued, &mut batch).await {
                        return end;
                    }
                    return Some(Close::new(close::GOING_AWAY, "server shutting down"));
                }
                Ok(()) = revocations.changed() => {
                    if self.app.auth.is_revoked(&self.credential) {
                        return Some(Close::new(close::REVOKED, "token revoked"));
                    }
                }
                _ = self.handle.outbox.ready() => {
                    if let Err(end) = self.flush(writer, &mut queued, &mut batch).await {
                        return end;
                    }
                }
                _ = keepalive.ticker.tick() => {
                    if let Err(end) = keepalive.on_tick(writer).await {
                        return end;
                    }
                }
                incoming = reader.next() => {
                    let msg = match receive(incoming, &mut keepalive, writer).await {
                        Step::Message(msg) => msg,
                        Step::Continue => continue,
                        Step::End(close) => return close,
                    };
                    self.meters.frames_in.inc();
                    let len = msg.as_bytes().len() as u64;
                    let reply = match Command::parse(msg, self.format) {
                        Ok(command) => {
                            self.meters.payload_in.inc_by(len);
                            self.apply(command).await
                        }
                        // RFC 6455 §7.4.1: 1003 for a data type the endpoint cannot accept.
                        Err(Unparsed::WrongType(why)) => {
                            return Some(Close::new(close::UNSUPPORTED_DATA, why));
                        }
                        Err(Unparsed::Undecodable(refusal)) => {
                            self.meters.payload_in.inc_by(len);
                            self.app.metrics.decode_errors.inc();
                            refusal.into()
                        }
                        Err(Unparsed::Invalid(refusal)) => {
                            self.meters.payload_in.inc_by(len);
                            refusal.into()
                        }
                    };
                    let format = self.format;
                    if let Err(end) = self.strikes.answer(reply, writer, |e| encode(format, e), &self.meters).await {
                        return end;
                    }
                }
            }
        }
    }

    async fn apply(&mut self, command: Command) -> Reply {
        match command {
            Command::Subscribe(s) => self.on_subscribe(s),
            Command::Unsubscribe(u) => self.on_unsubscribe(u),
            Command::WatchNotifications(w) => self.on_watch_notifications(w),
            Command::WatchFleet(w) => self.on_watch_fleet(w),
            Command::NotificationRequest(r) => self.on_notification_request(r).await,
        }
    }
}

/// A reply in the connection's wire format.
fn encode(format: WireFormat, env: &Envelope) -> ws::Message {
    match format {
        WireFormat::Protobuf => ws::Message::Binary(env.encode_to_vec().into()),
        WireFormat::Json => ws::Message::Text(serde_json::to_string(env).unwrap_or_default()),
    }
}
