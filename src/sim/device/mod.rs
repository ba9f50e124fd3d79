//! One simulated device's life: connect, say hello, stream telemetry, keep
//! generating into the backlog while it cannot send, back off and reconnect on any
//! failure, stop cleanly with close code 1000.
//!
//! Every wait is inside a `select!` with the stop signal, every queue is bounded
//! (the backlog), and every peer-controlled input (envelopes, close frames, upgrade
//! answers) is handled as data: the worst a hub can do is end the session.

mod confirm;

use std::{collections::VecDeque, sync::Arc, time::Duration};

use bytes::Bytes;
use prost::Message as _;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    time::{interval_at, sleep_until, timeout, Instant, Interval, MissedTickBehavior},
};

use super::{
    backoff::Backoff,
    buffer::{Backlog, Seen},
    endpoint::Endpoint,
    inflight::{Inflight, Next},
    pacer::Pacer,
    profile::Profile,
    FleetStats,
};
use crate::{
    proto::{
        envelope::Body, error::Code, Ack, ConfirmTelemetry, Envelope, Notification, Telemetry,
        Welcome,
    },
    ws,
};

/// Bound on each connection step (TCP, TLS, upgrade) and on waiting for `Welcome`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on writing one message before the connection is considered stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for the hub's Close after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A session that lasted this long resets the back-off.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);
/// Longest pause we accept from a `RATE_LIMITED` `retry_after_ms`.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// What every device of a fleet shares.
pub(crate) struct Shared {
    /// The hub's nodes (one for a hub alone).
    pub endpoints: Vec<Endpoint>,
    pub stats: Arc<FleetStats>,
    pub rate_hz: f64,
    pub compression: bool,
    pub backlog: usize,
    pub pace_to_limit: bool,
    /// Ask for uplink confirmations (when the hub offers them).
    pub confirm: bool,
    /// Initial connects are spread uniformly over this window.
    pub stagger: Duration,
    pub ack_delay: Duration,
    pub ack_loss: f64,
    pub on_notification: Option<super::NotificationHook>,
}

/// How a session ended, which decides the back-off.
enum End {
    /// The fleet is stopping.
    Stopped,
    /// The session lasted long enough to reset the back-off.
    Healthy,
    /// Back off further.
    Failed,
}

pub(crate) struct Device {
    shared: Arc<Shared>,
    /// The hub's nodes, each with this device's own TLS session cache (it resumes
    /// on reconnect).
    endpoints: Vec<Endpoint>,
    /// The node it connects to: it moves to the next when a connect fails.
    current: usize,
    token: String,
    profile: Profile,
    backlog: Backlog<Telemetry>,
    /// Sent, not yet confirmed (uplink confirmations).
    inflight: Inflight,
    /// This run's boot id for confirmations: its seqs start at 1.
    boot_id: u64,
    last_tick: Instant,
    rng: StdRng,
    /// Notification ids already handed to the application, oldest first.
    seen: Seen,
}

/// The two things every wait of a device also waits for, kept apart from [`Device`] so
/// a `select!` can poll them while its handler mutates the device.
pub(crate) struct Signals {
    /// Fires every `1/rate_hz`: time to generate a reading batch.
    ticker: Interval,
    /// Becomes `true` when the fleet stops.
    stop: watch::Receiver<bool>,
}

impl Device {
    pub(crate) fn new(
        shared: Arc<Shared>,
        index: usize,
        token: String,
        stop: watch::Receiver<bool>,
    ) -> (Self, Signals) {
        let mut rng = StdRng::from_os_rng();
        let period = Duration::from_secs_f64(1.0 / shared.rate_hz);
        // Spread the devices' ticks over one period so the fleet does not pulse.
        let phase = rng.random_range(0.0..=1.0) * period.min(Duration::from_secs(1)).as_secs_f64();
        let mut ticker = interval_at(Instant::now() + Duration::from_secs_f64(phase), period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let device = Device {
            endpoints: shared
                .endpoints
                .iter()
                .map(Endpoint::with_own_sessions)
                .collect(),
            current: index % shared.endpoints.len().max(1),
            profile: Profile::new(super::profile::Kind::for_index(index), &mut rng),
            backlog: Backlog::new(shared.backlog),
            inflight: Inflight::new(shared.backlog),
            boot_id: rng.random::<u64>().max(1),
            shared,
            token,
            last_tick: Instant::now(),
            rng,
            seen: Seen::default(),
        };
        (device, Signals { ticker, stop })
    }

    /// Runs until the stop signal (or its sender's drop).
    pub(crate) async fn run(mut self, mut sig: Signals) {
        let stagger = self.rng.random_range(0.0..=1.0) * self.shared.stagger.as_secs_f64();
        if self
            .idle_until(&mut sig, Instant::now() + Duration::from_secs_f64(stagger))
            .await
        {
            return self.finish();
        }
        let mut backoff = Backoff::default();
        let mut first = true;
        loop {
            if !first {
                FleetStats::inc(&self.shared.stats.reconnects);
            }
            first = false;
            let end = match self.connect(&mut sig).await {
                None => End::Stopped,
                Some(Ok(conn)) => self.session(&mut sig, conn).await,
                Some(Err(e)) => {
                    self.connect_failed(&e);
                    // Its node may be gone: the next attempt goes to the next one.
                    self.current = (self.current + 1) % self.endpoints.len().max(1);
                    End::Failed
                }
            };
            match end {
                End::Stopped => break,
                End::Healthy => backoff.reset(),
                End::Failed => {}
            }
            let delay = backoff.next_delay(&mut self.rng);
            tracing::debug!(?delay, attempts = backoff.attempts(), "device reconnecting");
            if self.idle_until(&mut sig, Instant::now() + delay).await {
                break;
            }
        }
        self.finish()
    }

    /// Leaves whatever is still buffered counted in `stats.buffered`: in the final
    /// summary that gauge reads "generated but never sent".
    fn finish(&mut self) {
        tracing::debug!(unsent = self.backlog.len(), "device stopped");
    }

    fn connect_failed(&self, e: &ws::Error) {
        let stats = &self.shared.stats;
        FleetStats::inc(&stats.errors);
        if matches!(e, ws::Error::HttpStatus(401 | 403)) {
            FleetStats::inc(&stats.auth_failures);
            tracing::warn!(error = %e, "device token refused");
        } else {
            tracing::debug!(error = %e, "device connect failed");
        }
    }

    /// Produces one reading batch into the backlog.
    fn generate(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last_tick).as_secs_f64();
        self.last_tick = now;
        let t = self.profile.next(dt, &mut self.rng);
        let stats = &self.shared.stats;
        if self.backlog.push(t) {
            FleetStats::inc(&stats.dropped_from_buffer);
        } else {
            FleetStats::inc(&stats.buffered);
        }
    }

    /// Keeps generating until `deadline`; true if told to stop meanwhile.
    async fn idle_until(&mut self, sig: &mut Signals, deadline: Instant) -> bool {
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => return false,
                _ = sig.ticker.tick() => self.generate(),
                _ = stopped(&mut sig.stop) => return true,
            }
        }
    }

    /// One connection attempt, generating meanwhile; `None` if told to stop.
    async fn connect(
        &mut self,
        sig: &mut Signals,
    ) -> Option<Result<ws::Connection<super::SimStream>, ws::Error>> {
        let (endpoint, token) = (self.endpoints[self.current].clone(), self.token.clone());
        let attempt = endpoint.connect(
            "/v1/device",
            &token,
            self.shared.compression,
            CONNECT_TIMEOUT,
        );
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                r = &mut attempt => return Some(r.map(|(conn, _)| conn)),
                _ = sig.ticker.tick() => self.generate(),
                _ = stopped(&mut sig.stop) => return None,
            }
        }
    }

    async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sig: &mut Signals,
        conn: ws::Connection<S>,
    ) -> End {
        let (mut reader, mut writer) = conn.split();
        let stats = self.shared.stats.clone();
        // The hub speaks first: Welcome carries our rate limit.
        let welcome_by = Instant::now() + CONNECT_TIMEOUT;
        let welcome = loop {
            tokio::select! {
                _ = sleep_until(welcome_by) => {
                    FleetStats::inc(&stats.errors);
                    return End::Failed;
                }
                _ = sig.ticker.tick() => self.generate(),
                _ = stopped(&mut sig.stop) => {
                    close(&mut reader, &mut writer).await;
                    return End::Stopped;
                }
                incoming = reader.next() => match incoming {
                    Ok(ws::Incoming::Message(ws::Message::Binary(data))) => {
                        match Envelope::decode(data).map(|e| e.body) {
                            Ok(Some(Body::Welcome(w))) => break w,
                            Ok(Some(Body::Error(e))) => {
                                FleetStats::inc(&stats.server_errors);
                                tracing::warn!(code = e.code, message = %e.message, "hub error before welcome");
                            }
                            _ => {}
                        }
                    }
                    Ok(ws::Incoming::Ping(p)) => {
                        if writer.pong(&p).await.is_err() {
                            FleetStats::inc(&stats.errors);
                            return End::Failed;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "connection lost before welcome");
                        FleetStats::inc(&stats.errors);
                        return End::Failed;
                    }
                },
            }
        };
        let started = Instant::now();
        FleetStats::inc(&stats.connected);
        let end = self.stream(sig, &mut reader, &mut writer, &welcome).await;
        FleetStats::dec(&stats.connected);
        match end {
            End::Failed if started.elapsed() >= HEALTHY_AFTER => End::Healthy,
            other => other,
        }
    }

    /// The connected phase: flush the backlog within the pacing and any pause, react to
    /// what the hub sends.
    async fn stream<R, W>(
        &mut self,
        sig: &mut Signals,
        reader: &mut ws::Reader<R>,
        writer: &mut ws::Writer<W>,
        welcome: &Welcome,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let stats = self.shared.stats.clone();
        let mut pacer = if self.shared.pace_to_limit {
            Pacer::below_limit(welcome.rate_per_second, welcome.burst, Instant::now())
        } else {
            None
        };
        let mut paused_until: Option<Instant> = None;
        let mut buf = Vec::with_capacity(256);
        // With confirmations, nothing goes out before the hub's first answer says
        // what it already has.
        let confirming = self.shared.confirm && welcome.confirmations;
        let mut resumed = !confirming;
        if confirming {
            self.inflight.reconnected();
            let ask = Envelope {
                body: Some(Body::ConfirmTelemetry(ConfirmTelemetry {
                    boot_id: self.boot_id,
                })),
            };
            let msg = ws::Message::Binary(Bytes::from(ask.encode_to_vec()));
            if !matches!(timeout(SEND_TIMEOUT, writer.send(&msg)).await, Ok(Ok(()))) {
                FleetStats::inc(&stats.errors);
                return End::Failed;
            }
        }
        // Acks waiting for `ack_delay`, in the order they fall due. Lost with the
        // session: the hub redelivers what was not acknowledged.
        let mut acks: VecDeque<(Instant, String)> = VecDeque::new();
        loop {
            while acks.front().is_some_and(|(due, _)| *due <= Instant::now()) {
                let Some((_, id)) = acks.pop_front() else {
                    break;
                };
                let ack = Envelope {
                    body: Some(Body::Ack(Ack {
                        notification_id: id,
                    })),
                };
                let msg = ws::Message::Binary(Bytes::from(ack.encode_to_vec()));
                if !matches!(timeout(SEND_TIMEOUT, writer.send(&msg)).await, Ok(Ok(()))) {
                    FleetStats::inc(&stats.errors);
                    return End::Failed;
                }
                FleetStats::inc(&stats.acks_sent);
            }
            let next_ack = acks.front().map(|(due, _)| *due);
            // Flush what we may: resends first, then the backlog.
            let mut wake = None;
            loop {
                if !resumed {
                    break;
                }
                let now = Instant::now();
                if let Some(until) = paused_until {
                    if now < until {
                        wake = Some(until);
                        break;
                    }
                    paused_until = None;
                }
                buf.clear();
                let resend = match confirming.then(|| self.inflight.next(now)) {
                    Some(Next::Resend(t)) => {
                        encode_telemetry(t, &mut buf);
                        Some(t.seq)
                    }
                    Some(Next::Wait(at)) => {
                        wake = at;
                        break;
                    }
                    Some(Next::New) | None => match self.backlog.front() {
                        Some(t) => {
                            encode_telemetry(t, &mut buf);
                            None
                        }
                        None => break,
                    },
                };
                if let Some(p) = pacer.as_mut() {
                    if !p.try_take(now) {
                        wake = Some(p.next_available(now));
                        break;
                    }
                }
                let msg = ws::Message::Binary(Bytes::copy_from_slice(&buf));
                match timeout(SEND_TIMEOUT, writer.send(&msg)).await {
                    Ok(Ok(())) => self.sent(resend, confirming),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "send failed");
                        FleetStats::inc(&stats.errors);
                        return End::Failed;
                    }
                    Err(_) => {
                        tracing::debug!("send timed out");
                        FleetStats::inc(&stats.errors);
                        return End::Failed;
                    }
                }
            }
            tokio::select! {
                _ = stopped(&mut sig.stop) => {
                    if confirming {
                        self.await_confirmations(reader, writer).await;
                    }
                    close(reader, writer).await;
                    return End::Stopped;
                }
                _ = sig.ticker.tick() => self.generate(),
                _ = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
                _ = sleep_until(next_ack.unwrap_or_else(Instant::now)), if next_ack.is_some() => {}
                incoming = reader.next() => match incoming {
                    Ok(ws::Incoming::Message(ws::Message::Binary(data))) => {
                        match Envelope::decode(data).map(|e| e.body) {
                            Ok(Some(Body::Error(e))) if e.code == Code::RateLimited as i32 => {
                                FleetStats::inc(&stats.rate_limited);
                                let pause = Duration::from_millis(u64::from(e.retry_after_ms.max(1)))
                                    .min(MAX_PAUSE);
                                paused_until = Some(Instant::now() + pause);
                            }
                            Ok(Some(Body::Error(e))) => {
                                FleetStats::inc(&stats.server_errors);
                                tracing::debug!(code = e.code, message = %e.message, "hub error");
                            }
                            Ok(Some(Body::TelemetryConfirmed(c))) if confirming && c.boot_id == self.boot_id => {
                                resumed = true;
                                self.on_confirmed(&c);
                            }
                            Ok(Some(Body::Notification(n))) => {
                                if let Some(id) = self.on_notification(&welcome.subject, n) {
                                    acks.push_back((Instant::now() + self.shared.ack_delay, id));
                                }
                            }
                            // Anything else (or undecodable) is not for a device; ignore it.
                            _ => {}
                        }
                    }
                    Ok(ws::Incoming::Message(ws::Message::Text(_))) => {}
                    Ok(ws::Incoming::Ping(p)) => {
                        if writer.pong(&p).await.is_err() {
                            FleetStats::inc(&stats.errors);
                            return End::Failed;
                        }
                    }
                    Ok(ws::Incoming::Pong(_)) => {}
                    Ok(ws::Incoming::Close(frame)) => {
                        let code = frame.as_ref().map_or(1000, |f| f.code);
                        // Complete the close handshake (RFC 6455 §5.5.1), best effort.
                        let _ = timeout(CLOSE_TIMEOUT, writer.close(code, "")).await;
                        if !matches!(code, 1000 | 1001) {
                            FleetStats::inc(&stats.errors);
                        }
                        tracing::debug!(code, reason = %frame.map(|f| f.reason).unwrap_or_default(), "hub closed the connection");
                        return End::Failed;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "connection lost");
                        FleetStats::inc(&stats.errors);
                        return End::Failed;
                    }
                },
            }
        }
    }
}

impl Device {
    /// De-duplicates a received notification, hands a new one to the application,
    /// and returns the id to acknowledge unless this ack is to be withheld.
    fn on_notification(&mut self, device_id: &str, n: Notification) -> Option<String> {
        let stats = &self.shared.stats;
        FleetStats::inc(&stats.notifications_received);
        if self.seen.insert(&n.id) {
            FleetStats::inc(&stats.notifications);
            if let Some(hook) = &self.shared.on_notification {
                (hook.0)(device_id, &n);
            }
        } else {
            FleetStats::inc(&stats.duplicates);
        }
        if self.shared.ack_loss > 0.0 && self.rng.random_bool(self.shared.ack_loss) {
            FleetStats::inc(&stats.acks_withheld);
            return None;
        }
        Some(n.id)
    }
}

/// Completes once the fleet is told to stop (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, before any await.
    let _ = stop.wait_for(|&s| s).await.map(|_| ());
}

/// Sends Close 1000 and waits (bounded) for the hub's answering Close.
async fn close<R, W>(reader: &mut ws::Reader<R>, writer: &mut ws::Writer<W>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !matches!(
        timeout(CLOSE_TIMEOUT, writer.close(1000, "device-sim stopping")).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let _ = timeout(CLOSE_TIMEOUT, async {
        // Bounded by the timeout; each iteration consumes a frame.
        loop {
            match reader.next().await {
                Ok(ws::Incoming::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    let _ = writer.shutdown().await;
}

/// Encodes `Envelope{telemetry: t}` into `buf` without cloning `t`: a oneof member is
/// encoded exactly as a message field with its own number (1 for `telemetry`).
pub(crate) fn encode_telemetry(t: &Telemetry, buf: &mut Vec<u8>) {
    prost::encoding::message::encode(1u32, t, buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{reading::Value, Reading};

    #[test]
    fn telemetry_encodes_like_an_envelope() {
        let t = Telemetry {
            device_id: String::new(),
            category: "env.temperature".into(),
            timestamp_ms: 1_700_000_000_000,
            seq: 42,
            readings: vec![Reading {
                name: "temperature".into(),
                value: Some(Value::Number(21.5)),
                unit: "Cel".into(),
            }],
            received_ms: 0,
        };
        let mut buf = Vec::new();
        encode_telemetry(&t, &mut buf);
        let env = Envelope {
            body: Some(Body::Telemetry(t)),
        };
        assert_eq!(buf, env.encode_to_vec());
    }
}
