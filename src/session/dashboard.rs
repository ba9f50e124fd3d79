//! A dashboard connection: subscriptions in, telemetry, presence and notices out;
//! for operators, notification requests in and campaign progress out.
//!
//! The session drains its outbox (see `hub::outbox` for the drop policy) and
//! writes everything queued as one batch of pre-encoded, pre-framed messages:
//! the same bytes every other subscriber with the same wire format and
//! compression parameters gets. When the outbox dropped telemetry since the last
//! batch, a `Dropped{count,total}` notice goes first.

use std::{collections::BTreeMap, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    clock::{Clock, DefaultClock},
    DefaultDirectRateLimiter, Quota, RateLimiter,
};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{close, error_envelope, finish, receive, send, timed, Close, KeepAlive, Step};
use crate::{
    app::App,
    auth::Claims,
    auth::Role,
    hub::{
        index::{MAX_FILTER_DEVICE_IDS, MAX_FILTER_TAGS},
        progress_key, DashboardHandle, Encoded, Filter, Pattern, WireFormat,
    },
    metrics::RoleMeters,
    notify::{CreateError, Request},
    proto::{
        envelope::Body, error::Code, notification::Severity, Dropped, Envelope,
        NotificationAccepted, NotificationRequest, Subscribe, Subscribed, Unsubscribe, Welcome,
    },
    ws,
};

/// Subscribes a dashboard may send per second, and at once: each replays history
/// (up to `dashboard.history_replay_max` messages), so a client looping on Subscribe
/// must not make the hub copy history without end. The burst covers a page
/// resubscribing everything after a reconnect.
const SUBSCRIBES_PER_SECOND: u32 = 5;
const SUBSCRIBE_BURST: u32 = 64;

/// Runs one dashboard connection to its end.
pub async fn run<S>(
    conn: ws::Connection<S>,
    claims: Claims,
    format: WireFormat,
    app: Arc<App>,
    meters: RoleMeters,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = conn.split();
    let handle = app.hub.register_dashboard(app.config.dashboard.queue_len);
    let mut dashboard = Dashboard {
        handle,
        role: claims.role,
        subject: claims.sub.clone(),
        format,
        app: app.clone(),
        meters,
        patterns: BTreeMap::new(),
        strikes: 0,
        subscribes: RateLimiter::direct(
            Quota::per_second(NonZeroU32::new(SUBSCRIBES_PER_SECOND).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(SUBSCRIBE_BURST).unwrap_or(NonZeroU32::MIN)),
        ),
    };
    let welcome = Envelope {
        body: Some(Body::Welcome(Welcome {
            subject: claims.sub.clone(),
            role: claims.role.as_str().into(),
            max_message_bytes: app.config.limits.max_message_bytes as u32,
            rate_per_second: 0,
            burst: 0,
            server_version: env!("CARGO_PKG_VERSION").into(),
        })),
    };
    let close = match send(&mut writer, &dashboard.encode(&welcome), &dashboard.meters).await {
        Ok(()) => dashboard.serve(&mut reader, &mut writer).await,
        Err(_) => None,
    };
    app.hub
        .unregister_dashboard(&dashboard.handle, dashboard.patterns.values());
    finish(&mut reader, &mut writer, close.as_ref()).await;
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

/// Why an incoming message is not an envelope.
enum Undecodable {
    /// Text on a binary subprotocol or the reverse: closed with 1003.
    WrongType(&'static str),
    /// Not a valid envelope: an Error (carrying the request id of a
    /// NotificationRequest when one can still be read), and a strike.
    Invalid { message: String, request_id: String },
}

impl Undecodable {
    fn invalid(message: String) -> Self {
        Undecodable::Invalid {
            message,
            request_id: String::new(),
        }
    }
}

struct Dashboard {
    handle: Arc<DashboardHandle>,
    /// Viewers watch; operators may also push notifications.
    role: Role,
    subject: String,
    format: WireFormat,
    app: Arc<App>,
    meters: RoleMeters,
    /// This dashboard's subscriptions by their text form (what `Subscribed` lists).
    patterns: BTreeMap<String, Pattern>,
    strikes: u32,
    /// Paces Subscribes (see [`SUBSCRIBES_PER_SECOND`]).
    subscribes: DefaultDirectRateLimiter,
}

impl Dashboard {
    async fn serve<R, W>(
        &mut self,
        reader: &mut ws::Reader<R>,
        writer: &mut ws::Writer<W>,
    ) -> Option<Close>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let limits = &self.app.config.limits;
        let mut keepalive = KeepAlive::new(limits.ping_interval, limits.idle_timeout);
        let mut shutdown = self.app.shutdown.clone();
        let mut queued: Vec<Arc<Encoded>> = Vec::new();
        let mut batch: Vec<ws::SharedMessage> = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.recv() => {
                    return Some(Close::new(close::GOING_AWAY, "server shutting down"));
                }
                _ = self.handle.outbox.ready() => {
                    let drained = self.handle.outbox.drain(&mut queued);
                    if drained.overflowed {
                        self.app.metrics.closed_slow.inc();
                        return Some(Close::new(close::POLICY_VIOLATION, "too slow: control messages overflowed the queue"));
                    }
                    batch.clear();
                    if drained.dropped > 0 {
                        let notice = Encoded::new(Envelope {
                            body: Some(Body::Dropped(Dropped { count: drained.dropped, total: drained.dropped_total })),
                        });
                        batch.push(notice.message(self.format).clone());
                    }
                    let mut payload = 0u64;
                    for m in &queued {
                        let msg = m.message(self.format);
                        payload += msg.payload().len() as u64;
                        batch.push(msg.clone());
                    }
                    queued.clear();
                    if batch.is_empty() {
                        continue;
                    }
                    if timed(writer.send_shared(&batch)).await.is_err() {
                        return None;
                    }
                    self.meters.frames_out.inc_by(batch.len() as u64);
                    self.meters.payload_out.inc_by(payload);
                }
                _ = keepalive.ticker.tick() => {
                    if let Err(end) = keepalive.on_tick(writer).await {
                        return end;
                    }
                }
                incoming = reader.next() => {
                    let envelope = match receive(incoming, &mut keepalive, writer).await {
                        Step::Message(msg) => self.decode(msg),
                        Step::Continue => continue,
                        Step::End(close) => return close,
                    };
                    let reply = match envelope {
                        Ok(Envelope { body: Some(Body::NotificationRequest(r)) }) => {
                            self.on_notification_request(r).await
                        }
                        Ok(env) => self.on_envelope(env),
                        // RFC 6455 §7.4.1: 1003 for a data type the endpoint cannot accept.
                        Err(Undecodable::WrongType(why)) => {
                            return Some(Close::new(close::UNSUPPORTED_DATA, why));
                        }
                        Err(Undecodable::Invalid { message, request_id }) => {
                            self.app.metrics.decode_errors.inc();
                            self.strike(close::INVALID_PAYLOAD, Code::Malformed, message).map(|mut env| {
                                if let Some(Body::Error(e)) = &mut env.body {
                                    e.request_id = request_id;
                                }
                                Some(env)
                            })
                        }
                    };
                    match reply {
                        Ok(Some(env)) => {
                            if send(writer, &self.encode(&env), &self.meters).await.is_err() {
                                return None;
                            }
                        }
                        Ok(None) => {}
                        Err(c) => return Some(c),
                    }
                }
            }
        }
    }

    /// Parses one incoming message in this connection's wire format.
    fn decode(&mut self, msg: ws::Message) -> Result<Envelope, Undecodable> {
        self.meters.frames_in.inc();
        match (msg, self.format) {
            (ws::Message::Binary(data), WireFormat::Protobuf) => {
                self.meters.payload_in.inc_by(data.len() as u64);
                Envelope::decode(data)
                    .map_err(|e| Undecodable::invalid(format!("not a telehub.v1.Envelope: {e}")))
            }
            (ws::Message::Text(text), WireFormat::Json) => {
                self.meters.payload_in.inc_by(text.len() as u64);
                serde_json::from_str(&text).map_err(|e| Undecodable::Invalid {
                    message: format!("not a telehub.v1.Envelope in JSON: {e}"),
                    request_id: json_request_id(&text),
                })
            }
            (ws::Message::Text(_), WireFormat::Protobuf) => Err(Undecodable::WrongType(
                "subprotocol telehub.v1 takes binary frames; use telehub.v1.json for text",
            )),
            (ws::Message::Binary(_), WireFormat::Json) => Err(Undecodable::WrongType(
                "subprotocol telehub.v1.json takes text frames",
            )),
        }
    }

    fn on_envelope(&mut self, env: Envelope) -> Result<Option<Envelope>, Close> {
        match env.body {
            Some(Body::Subscribe(s)) => self.on_subscribe(s),
            Some(Body::Unsubscribe(u)) => Ok(Some(self.on_unsubscribe(u))),
            Some(Body::WatchNotifications(w)) => {
                self.strikes = 0;
                self.app.hub.watch_notifications(&self.handle, w.watch);
                if w.watch {
                    for (id, p) in self.app.notifier.progress_all() {
                        self.handle.outbox.push_latest(&progress_key(&id), p);
                    }
                }
                Ok(None)
            }
            Some(Body::WatchFleet(w)) => {
                self.strikes = 0;
                self.app.hub.fleet.watch(&self.handle, w.watch, crate::hub::now_ms());
                Ok(None)
            }
            Some(_) => self
                .strike(
                    close::POLICY_VIOLATION,
                    Code::Malformed,
                    "dashboards may send only Subscribe, Unsubscribe, WatchNotifications, WatchFleet and (operators) NotificationRequest".into(),
                )
                .map(Some),
            None => self
                .strike(
                    close::POLICY_VIOLATION,
                    Code::Malformed,
                    "empty Envelope".into(),
                )
                .map(Some),
        }
    }

    /// An operator pushes a notification: answered with `NotificationAccepted` once
    /// it is stored, or an `Error` carrying the request id.
    async fn on_notification_request(
        &mut self,
        r: NotificationRequest,
    ) -> Result<Option<Envelope>, Close> {
        let request_id = r.request_id.clone();
        let refuse = |this: &mut Self, code: Code, message: String| {
            this.strike(close::POLICY_VIOLATION, code, message)
                .map(|mut env| {
                    if let Some(Body::Error(e)) = &mut env.body {
                        e.request_id.clone_from(&request_id);
                    }
                    Some(env)
                })
        };
        if self.role != Role::Operator {
            return refuse(
                self,
                Code::Forbidden,
                "only operators may push notifications".into(),
            );
        }
        let severity = Severity::try_from(r.severity).unwrap_or(Severity::Unspecified);
        let ttl = (r.ttl_seconds > 0).then(|| Duration::from_secs(u64::from(r.ttl_seconds)));
        let req = match Request::new(
            r.targets.unwrap_or_default(),
            severity,
            r.title,
            r.body,
            r.payload,
            ttl,
            &self.app.config.notify,
        ) {
            Ok(req) => req,
            Err(e) => return refuse(self, Code::Malformed, format!("invalid notification: {e}")),
        };
        match self.app.notifier.create(req, &self.subject).await {
            Ok(created) => {
                self.strikes = 0;
                Ok(Some(Envelope {
                    body: Some(Body::NotificationAccepted(NotificationAccepted {
                        request_id,
                        id: created.id,
                        targets: created.targets,
                        expires_ms: created.expires_ms,
                    })),
                }))
            }
            Err(CreateError::Store(e)) => {
                tracing::error!(error = %e, "storing a notification");
                let mut env = error_envelope(
                    Code::Unavailable,
                    "the notification could not be stored; try again",
                    0,
                );
                if let Some(Body::Error(err)) = &mut env.body {
                    err.request_id = request_id;
                }
                Ok(Some(env))
            }
            Err(e) => refuse(self, Code::Malformed, e.to_string()),
        }
    }

    /// Applies a Subscribe atomically: every pattern is valid, or none is added.
    fn on_subscribe(&mut self, s: Subscribe) -> Result<Option<Envelope>, Close> {
        if let Err(not_until) = self.subscribes.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Ok(Some(error_envelope(
                Code::RateLimited,
                format!(
                    "at most {SUBSCRIBES_PER_SECOND} Subscribes per second (burst {SUBSCRIBE_BURST}); nothing of this one was applied"
                ),
                wait.as_millis().clamp(1, u32::MAX as u128) as u32,
            )));
        }
        let mut parsed = Vec::with_capacity(s.categories.len());
        for c in &s.categories {
            match Pattern::parse(c) {
                Ok(p) => parsed.push(p),
                Err(e) => {
                    return self
                        .strike(
                            close::POLICY_VIOLATION,
                            Code::InvalidSubscription,
                            format!("{e}"),
                        )
                        .map(Some)
                }
            }
        }
        let new = parsed
            .iter()
            .filter(|p| !self.patterns.contains_key(&p.to_string()))
            .count();
        let max = self.app.config.dashboard.max_subscriptions;
        if self.patterns.len() + new > max {
            return self
                .strike(
                    close::POLICY_VIOLATION,
                    Code::InvalidSubscription,
                    format!("at most {max} subscriptions per dashboard"),
                )
                .map(Some);
        }
        if s.device_ids.len() > MAX_FILTER_DEVICE_IDS || s.tags.len() > MAX_FILTER_TAGS {
            return self
                .strike(
                    close::POLICY_VIOLATION,
                    Code::InvalidSubscription,
                    format!(
                        "a filter may name at most {MAX_FILTER_DEVICE_IDS} devices and {MAX_FILTER_TAGS} tags"
                    ),
                )
                .map(Some);
        }
        self.strikes = 0;
        let filter = Filter {
            device_ids: s.device_ids.into_iter().collect(),
            tags: s.tags.into_iter().collect(),
        };
        let history = self.app.hub.subscribe(&self.handle, &parsed, filter);
        let (hub, format) = (self.app.hub.clone(), self.format);
        tokio::task::spawn_blocking(move || history.run(&hub.fleet, format));
        for p in parsed {
            self.patterns.insert(p.to_string(), p);
        }
        Ok(Some(self.subscribed()))
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Envelope {
        self.strikes = 0;
        let names: Vec<String> = if u.categories.is_empty() {
            self.patterns.keys().cloned().collect()
        } else {
            u.categories
        };
        let removed: Vec<Pattern> = names
            .iter()
            .filter_map(|name| self.patterns.remove(name))
            .collect();
        self.app.hub.unsubscribe(&self.handle, &removed);
        self.subscribed()
    }

    fn subscribed(&self) -> Envelope {
        Envelope {
            body: Some(Body::Subscribed(Subscribed {
                categories: self.patterns.keys().cloned().collect(),
            })),
        }
    }

    /// An `Error` reply, or a close once `limits.max_malformed` arrived in a row.
    fn strike(&mut self, close_code: u16, code: Code, message: String) -> Result<Envelope, Close> {
        self.strikes += 1;
        if self.strikes >= self.app.config.limits.max_malformed {
            return Err(Close::new(
                close_code,
                format!(
                    "{} invalid messages in a row; last: {message}",
                    self.strikes
                ),
            ));
        }
        Ok(error_envelope(code, message, 0))
    }

    fn encode(&self, env: &Envelope) -> ws::Message {
        match self.format {
            WireFormat::Protobuf => ws::Message::Binary(env.encode_to_vec().into()),
            WireFormat::Json => ws::Message::Text(serde_json::to_string(env).unwrap_or_default()),
        }
    }
}
