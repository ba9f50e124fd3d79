//! Device and dashboard connections after the upgrade.
//!
//! A session sees whole `Envelope`s and never touches frames: `ws::Reader` and
//! `ws::Writer` own the framing. Each session is one task that `select!`s over
//! its socket, its outbox (dashboards), the keep-alive timer and the shutdown
//! signal, so there is exactly one writer per socket and no lock around it.
//!
//! Both sessions have one shape: parse each message into a command, apply it with
//! the command's handler, and judge the [`reply::Reply`] with one strike counter.
//! Every way a session ends is a [`Close`] with a code and a reason sent to the
//! peer (best effort, bounded by the send timeout).

pub mod dashboard;
pub mod device;
pub mod metered;
pub mod reply;

use std::{future::Future, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Instant, Interval},
};

use crate::{
    metrics::RoleMeters,
    proto::{envelope::Body, error::Code, Envelope, Error as ErrorMsg},
    ws,
};

/// Close codes the hub uses (RFC 6455 §7.4.1 and the private range).
pub mod close {
    pub const NORMAL: u16 = 1000;
    /// Server shutting down, or idle timeout.
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame on the binary-only device endpoint.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Repeated undecodable envelopes.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Sustained rate-limit abuse, repeated invalid requests, a too-slow dashboard.
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// A newer connection with the same device id took the session over.
    pub const TAKEN_OVER: u16 = 4001;
    /// The connection's token was revoked (`POST /v1/revocations`).
    pub const REVOKED: u16 = 4003;
}

/// Why a session ends.
#[derive(Debug)]
pub struct Close {
    pub code: u16,
    pub reason: String,
    /// This close answers the peer's Close frame (so there is nothing left to wait for).
    pub answering: bool,
}

impl Close {
    /// A close the hub initiates.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            answering: false,
        }
    }

    /// The reply to the peer's Close frame: echo its code (RFC 6455 §5.5.1).
    pub fn answer(frame: Option<ws::CloseFrame>) -> Self {
        Self {
            code: frame.map_or(close::NORMAL, |f| f.code),
            reason: String::new(),
            answering: true,
        }
    }

    /// The close answering a transport error (`None`: the socket is gone, send nothing).
    pub fn from_ws(err: &ws::Error) -> Option<Self> {
        err.close_code()
            .map(|code| Self::new(code, err.to_string()))
    }
}

/// How long one write may take before the peer is considered stuck.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the hub waits for the peer's Close after sending its own.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Bounds one write by [`SEND_TIMEOUT`]: a stuck peer (one that stopped reading
/// and filled its TCP window) becomes an error instead of a hung session.
pub async fn timed(write: impl Future<Output = Result<(), ws::Error>>) -> Result<(), ws::Error> {
    match tokio::time::timeout(SEND_TIMEOUT, write).await {
        Ok(res) => res,
        Err(_) => Err(ws::Error::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Sends one reply (Welcome, Error, Subscribed...) bounded by [`SEND_TIMEOUT`],
/// counting it in the role's `frames_out`/`payload_out`.
pub async fn send<W: AsyncWrite + Unpin>(
    writer: &mut ws::Writer<W>,
    msg: &ws::Message,
    meters: &RoleMeters,
) -> Result<(), ws::Error> {
    timed(writer.send(msg)).await?;
    meters.frames_out.inc();
    meters.payload_out.inc_by(msg.as_bytes().len() as u64);
    Ok(())
}

/// Ends a connection: sends the Close frame and, when the hub initiated the close,
/// waits (at most [`CLOSE_WAIT`]) for the peer's Close before shutting the socket,
/// as RFC 6455 §7.1.1 asks: closing with unread data would reset the connection
/// and could lose our Close frame and its code.
pub async fn finish<R, W>(
    reader: &mut ws::Reader<R>,
    writer: &mut ws::Writer<W>,
    close: Option<&Close>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Some(c) = close {
        // The reason must fit a control frame (125 bytes minus the code).
        let reason = truncate_utf8(&c.reason, 120);
        if timed(writer.close(c.code, reason)).await.is_ok() && !c.answering {
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                // Ends at the peer's Close, an error, or CLOSE_WAIT.
                while !matches!(reader.next().await, Ok(ws::Incoming::Close(_)) | Err(_)) {}
            })
            .await;
        }
    }
    let _ = tokio::time::timeout(SEND_TIMEOUT, writer.shutdown()).await;
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The clock of every session's rate limiters, made once. A `governor` limiter
/// built with its default clock makes its own, and making a `quanta` clock probes
/// the CPU (CPUID): measured at 4.5 % of the hub's CPU in a reconnect storm.
pub fn limiter_clock() -> governor::clock::DefaultClock {
    static CLOCK: std::sync::OnceLock<governor::clock::DefaultClock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(Default::default).clone()
}

pub fn error_envelope(code: Code, message: impl Into<String>, retry_after_ms: u32) -> Envelope {
    error(code, message.into(), retry_after_ms, String::new())
}

/// An `Error` answering the request `request_id` (empty: none).
pub fn error_for(code: Code, message: impl Into<String>, request_id: String) -> Envelope {
    error(code, message.into(), 0, request_id)
}

fn error(code: Code, message: String, retry_after_ms: u32, request_id: String) -> Envelope {
    Envelope {
        body: Some(Body::Error(ErrorMsg {
            code: code as i32,
            message,
            retry_after_ms,
            request_id,
        })),
    }
}

/// Pings on a timer and notices silence.
pub struct KeepAlive {
    pub ticker: Interval,
    last_heard: Instant,
    idle_timeout: Duration,
}

impl KeepAlive {
    pub fn new(ping_interval: Duration, idle_timeout: Duration) -> Self {
        let mut ticker = tokio::time::interval(ping_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick of an interval fires at once; start one period from now.
        ticker.reset();
        Self {
            ticker,
            last_heard: Instant::now(),
            idle_timeout,
        }
    }

    /// Anything arrived from the peer (a message, a ping, a pong).
    pub fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    pub fn is_idle(&self) -> bool {
        self.last_heard.elapsed() >= self.idle_timeout
    }

    /// On a tick of [`KeepAlive::ticker`]: closes an idle connection (1001), else pings.
    /// `Err` ends the session with that close (`None`: the socket is gone).
    pub async fn on_tick<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut ws::Writer<W>,
    ) -> Result<(), Option<Close>> {
        if self.is_idle() {
            return Err(Some(Close::new(close::GOING_AWAY, "idle timeout")));
        }
        // Boxed, as the pong below: rare writes must not grow every session's future.
        Box::pin(timed(writer.ping(b""))).await.map_err(|_| None)
    }
}

/// What to do with one thing read from the socket.
pub enum Step {
    /// A data message for the session.
    Message(ws::Message),
    /// Handled here (ping answered, pong noted): read on.
    Continue,
    /// The session ends with this close (`None`: the socket is gone).
    End(Option<Close>),
}

/// Handles what every session treats alike: answers pings, notes pongs and the
/// peer's Close, maps transport errors to their close codes. Data messages are
/// passed on.
pub async fn receive<W: AsyncWrite + Unpin>(
    incoming: Result<ws::Incoming, ws::Error>,
    keepalive: &mut KeepAlive,
    writer: &mut ws::Writer<W>,
) -> Step {
    keepalive.heard();
    match incoming {
        Ok(ws::Incoming::Message(msg)) => Step::Message(msg),
        Ok(ws::Incoming::Ping(payload)) => match Box::pin(timed(writer.pong(&payload))).await {
            Ok(()) => Step::Continue,
            Err(_) => Step::End(None),
        },
        Ok(ws::Incoming::Pong(_)) => Step::Continue,
        Ok(ws::Incoming::Close(frame)) => Step::End(Some(Close::answer(frame))),
        Err(e) => Step::End(Close::from_ws(&e)),
    }
}
