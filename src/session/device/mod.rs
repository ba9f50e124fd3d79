//! A device connection: telemetry in (rate-limited, validated, stamped, published),
//! acks in, errors and notifications out (see [`delivery`]).
//!
//! Parse, then apply: each binary message becomes a [`Command`]
//! ([`Command::parse`]), and each command has its handler in its own file
//! ([`telemetry`], [`ack`]) returning one `Reply`; the session sends what the
//! reply carries and counts strikes in one place (`session::reply::Strikes`).

pub mod ack;
pub mod confirm;
pub mod delivery;
pub mod telemetry;

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};

use super::{
    close, finish, receive,
    reply::{Refusal, Reply, Strikes},
    send, Close, KeepAlive, Step,
};
use crate::{
    app::App,
    auth::{Claims, Credential, Scope},
    hub::{DeviceInfo, DeviceSession},
    metrics::RoleMeters,
    proto::{envelope::Body, error::Code, Ack, ConfirmTelemetry, Envelope, Telemetry, Welcome},
    shutdown::Shutdown,
    ws,
};
use delivery::Deliveries;

/// Runs one device connection to its end.
///
/// Its future is what every idle device's task holds for the connection's life,
/// so what is awaited once or rarely is boxed (here and in `serve`): the start
/// (Welcome, coming online, registration) and the close handshake. The future
/// then holds the connection, the device and `serve`'s own state, little more.
pub async fn run<S>(
    conn: ws::Connection<S>,
    claims: Claims,
    by_certificate: bool,
    app: Arc<App>,
    meters: RoleMeters,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = conn.split();
    let start = Device::start(&mut writer, claims, by_certificate, app, meters);
    let Some(mut device) = Box::pin(start).await else {
        return;
    };
    let close = device.serve(&mut reader, &mut writer, shutdown).await;
    device.app.hub.device_offline(&device.session);
    if let Some(c) = &close {
        tracing::debug!(device = %device.session.info.id, code = c.code, reason = %c.reason, "device session closing");
    }
    Box::pin(finish(&mut reader, &mut writer, close.as_ref())).await;
}

/// One connected device.
pub(super) struct Device {
    /// Its place in the hub's directory: identity, kick and wake signals, counters.
    session: DeviceSession,
    app: Arc<App>,
    meters: RoleMeters,
    /// Rate limit and ordering state of its telemetry.
    telemetry: telemetry::Telemetry,
    strikes: Strikes,
    deliveries: Deliveries,
    /// Its token, checked again when revocations change.
    credential: Credential,
    /// What its token lets it publish.
    scope: Scope,
    /// Uplink confirmations, once the device asked for them (boxed: most devices
    /// never do, and every idle connection holds this struct).
    confirm: Option<Box<confirm::Confirmations>>,
}

/// What a device may send, parsed.
pub(super) enum Command {
    Telemetry(Telemetry),
    Ack(Ack),
    Confirm(ConfirmTelemetry),
}

impl Command {
    /// Parses one binary message; refusals count as strikes.
    fn parse(data: Bytes, app: &App) -> Result<Self, Refusal> {
        let envelope = Envelope::decode(data).map_err(|e| {
            app.metrics.decode_errors.inc();
            Refusal::new(
                close::INVALID_PAYLOAD,
                Code::Malformed,
                format!("not a telehub.v1.Envelope: {e}"),
            )
        })?;
        match envelope.body {
            Some(Body::Telemetry(t)) => Ok(Command::Telemetry(t)),
            Some(Body::Ack(a)) => Ok(Command::Ack(a)),
            Some(Body::ConfirmTelemetry(c)) => Ok(Command::Confirm(c)),
            Some(_) => Err(Refusal::new(
                close::POLICY_VIOLATION,
                Code::Malformed,
                "devices may send only Telemetry, Ack and ConfirmTelemetry",
            )),
            None => Err(Refusal::new(
                close::POLICY_VIOLATION,
                Code::Malformed,
                "empty Envelope",
            )),
        }
    }
}

impl Device {
    /// Sends the Welcome, brings the device online in the hub and registers it;
    /// `None` if the connection failed meanwhile.
    async fn start<W: AsyncWrite + Unpin>(
        writer: &mut ws::Writer<W>,
        claims: Claims,
        by_certificate: bool,
        app: Arc<App>,
        meters: RoleMeters,
    ) -> Option<Device> {
        let credential = Credential::from(&claims);
        let scope = claims.scope.clone();
        let info = Arc::new(DeviceInfo {
            id: claims.sub,
            tags: claims.tags,
            by_certificate,
        });
        // The rate limits in force now hold for this connection's life.
        let live = app.live();
        let welcome = Envelope {
            body: Some(Body::Welcome(Welcome {
                subject: info.id.clone(),
                role: "device".into(),
                max_message_bytes: app.config.limits.max_message_bytes as u32,
                rate_per_second: live.rate.per_second,
                burst: live.rate.burst,
                server_version: env!("CARGO_PKG_VERSION").into(),
                confirmations: true,
                max_readings: app
                    .config
                    .limits
                    .max_readings
                    .try_into()
                    .unwrap_or(u32::MAX),
            })),
        };
        send(writer, &binary(&welcome), &meters).await.ok()?;
        let connected = app.hub.device_online(info);
        app.notifier.registered(connected.registration).await;
        let session = connected.session;
        // Before the first look at what is open for it (see `notify::shared`).
        app.notifier.device_connected(&session.info.id).await;
        Some(Device {
            credential,
            scope,
            confirm: None,
            deliveries: Deliveries::new(app.notifier.clone(), session.info.id.clone()),
            telemetry: telemetry::Telemetry::new(&live.rate),
            strikes: Strikes::new(app.config.limits.max_malformed),
            session,
            app,
            meters,
        })
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
        let (kick, wake) = (self.session.kick.clone(), self.session.wake.clone());
        // Watched from here on; a revocation since the upgrade's check is seen now.
        let mut revocations = self.app.auth.revocations_changed();
        if self.app.auth.is_revoked(&self.credential) {
            return Some(Close::new(close::REVOKED, "token revoked"));
        }
        loop {
            let next_due = self.deliveries.next_due();
            let confirm_due = self.confirm.as_ref().and_then(|c| c.due());
            tokio::select! {
                _ = tokio::time::sleep_until(confirm_due.unwrap_or_else(Instant::now)), if confirm_due.is_some() => {
                    if self.send_confirmation(writer).await.is_err() {
                        return None;
                    }
                }
                _ = wake.notified() => {
                    if Box::pin(self.deliveries.send_new(writer, &self.meters)).await.is_err() {
                        return None;
                    }
                }
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    if Box::pin(self.deliveries.resend_due(writer, &self.meters)).await.is_err() {
                        return None;
                    }
                }
                _ = shutdown.recv() => {
                    return self.closing(writer, Close::new(close::GOING_AWAY, "server shutting down")).await;
                }
                _ = kick.notified() => {
                    return self.closing(writer, Close::new(close::TAKEN_OVER, "a newer connection took this device over")).await;
                }
                Ok(()) = revocations.changed() => {
                    if self.app.auth.is_revoked(&self.credential) {
                        return self.closing(writer, Close::new(close::REVOKED, "token revoked")).await;
                    }
                }
                _ = keepalive.ticker.tick() => {
                    if let Err(end) = keepalive.on_tick(writer).await {
                        return end;
                    }
                }
                incoming = reader.next() => {
                    let data = match receive(incoming, &mut keepalive, writer).await {
                        Step::Message(ws::Message::Binary(data)) => data,
                        // RFC 6455 §7.4.1: 1003 for a data type the endpoint cannot accept.
                        Step::Message(ws::Message::Text(_)) => {
                            return Some(Close::new(close::UNSUPPORTED_DATA, "the device endpoint takes binary envelopes only"));
                        }
                        Step::Continue => continue,
                        Step::End(close) => return close,
                    };
                    self.meters.frames_in.inc();
                    self.meters.payload_in.inc_by(data.len() as u64);
                    let reply = match Command::parse(data, &self.app) {
                        Ok(command) => self.apply(command).await,
                        Err(refusal) => refusal.into(),
                    };
                    if let Err(end) = self.strikes.answer(reply, writer, binary, &self.meters).await {
                        return match end {
                            Some(close) => self.closing(writer, close).await,
                            None => None,
                        };
                    }
                    if self.confirm.as_ref().is_some_and(|c| c.due_now())
                        && self.send_confirmation(writer).await.is_err()
                    {
                        return None;
                    }
                }
            }
        }
    }

    async fn apply(&mut self, command: Command) -> Reply {
        match command {
            Command::Telemetry(t) => self.on_telemetry(t),
            Command::Ack(a) => Box::pin(self.on_ack(a)).await,
            Command::Confirm(c) => self.on_confirm(c),
        }
    }

    /// The hub ends a live connection on purpose (shutdown, takeover, revocation,
    /// repeated invalid messages): what it accepted (and what it awaits) is
    /// confirmed first, so the device need not send it again.
    async fn closing<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut ws::Writer<W>,
        close: Close,
    ) -> Option<Close> {
        if self.confirm.as_ref().is_some_and(|c| c.due().is_some())
            && self.send_confirmation(writer).await.is_err()
        {
            return None;
        }
        Some(close)
    }

    /// Sends the due `TelemetryConfirmed`. Boxed like every rare write (see `run`).
    async fn send_confirmation<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut ws::Writer<W>,
    ) -> Result<(), ()> {
        let Some(confirm) = &mut self.confirm else {
            return Ok(());
        };
        let envelope = confirm.take();
        self.app.metrics.confirmations.inc();
        Box::pin(send(writer, &binary(&envelope), &self.meters))
            .await
            .map_err(|_| ())
    }
}

fn binary(env: &Envelope) -> ws::Message {
    ws::Message::Binary(Bytes::from(env.encode_to_vec()))
}
