//! [`Connection`]: one upgraded stream with its read and write state, plus the
//! behaviour most users want by default — answering pings, completing the close
//! handshake, and sending the right close code before giving up on a bad peer.
//!
//! For concurrent reading and writing (a session `select!`ing between its socket and its
//! queue) use [`Connection::split`]; the halves keep all negotiated state.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::error::Error;
use super::extension::DeflateParams;
use super::frame::Opcode;
use super::message::{Config, Incoming, Message, Role};
use super::reader::{ReadState, Reader};
use super::writer::{WriteState, Writer};

pub struct Connection<S> {
    io: S,
    role: Role,
    read: ReadState,
    write: WriteState,
    /// The subprotocol agreed in the handshake, kept for the session's convenience.
    protocol: Option<String>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a stream whose upgrade handshake is complete.
    pub fn new(stream: S, role: Role, config: Config, deflate: Option<DeflateParams>) -> Self {
        Self::with_buffered(stream, role, config, deflate, BytesMut::new())
    }

    /// Like [`Connection::new`], for when the handshake code read past the end of the
    /// HTTP headers: `buffered` holds those bytes, the start of the WebSocket stream.
    pub fn with_buffered(
        stream: S,
        role: Role,
        config: Config,
        deflate: Option<DeflateParams>,
        buffered: BytesMut,
    ) -> Self {
        Connection {
            io: stream,
            role,
            write: WriteState::new(role, &config, deflate),
            read: ReadState::new(role, config, deflate, buffered),
            protocol: None,
        }
    }

    /// Records the negotiated subprotocol (returned by [`Connection::protocol`]).
    pub fn with_protocol(mut self, protocol: Option<String>) -> Self {
        self.protocol = protocol;
        self
    }

    /// The next data message. Pings are answered, pongs skipped. `Ok(None)` once the
    /// peer's Close frame arrived and the close handshake is complete (our Close was
    /// sent, echoing the peer's code). On a protocol error the matching close code
    /// (1002/1007/1009) is sent before the error is returned.
    ///
    /// Not cancel-safe (it may write a pong); use `split` for `select!`.
    pub async fn read(&mut self) -> Result<Option<Message>, Error> {
        loop {
            match self.read.next(&mut self.io).await {
                Ok(Incoming::Message(m)) => return Ok(Some(m)),
                // RFC 6455 §5.5.2: a Pong "MUST" answer a Ping, with the same payload.
                // After our Close went out we may not send, and the peer will not care.
                Ok(Incoming::Ping(p)) if !self.write.close_sent() => {
                    self.write.control(&mut self.io, Opcode::Pong, &p).await?
                }
                Ok(Incoming::Ping(_) | Incoming::Pong(_)) => {}
                Ok(Incoming::Close(frame)) => {
                    // RFC 6455 §5.5.1: answer a Close with a Close, typically echoing the
                    // status code. `close` is a no-op if ours was already sent.
                    let body = frame.as_ref().map(|f| (f.code, ""));
                    self.write.close(&mut self.io, body).await?;
                    if self.role == Role::Server {
                        // §7.1.1: the server should close the TCP connection first.
                        let _ = self.io.shutdown().await;
                    }
                    return Ok(None);
                }
                Err(e) => {
                    if let Some(code) = e.close_code() {
                        // Best effort: the peer is misbehaving, the error is what matters.
                        let _ = self.write.close(&mut self.io, Some((code, ""))).await;
                        let _ = self.io.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// The next message or control frame, without any automatic replies.
    pub async fn next(&mut self) -> Result<Incoming, Error> {
        self.read.next(&mut self.io).await
    }

    pub async fn send(&mut self, msg: &Message) -> Result<(), Error> {
        self.write.send(&mut self.io, msg).await
    }

    pub async fn send_shared(&mut self, msgs: &[super::SharedMessage]) -> Result<(), Error> {
        self.write.send_shared(&mut self.io, msgs).await
    }

    pub async fn ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.write
            .control(&mut self.io, Opcode::Ping, payload)
            .await
    }

    /// Sends our Close frame and flushes (idempotent). To complete the handshake, keep
    /// calling [`Connection::read`] until it returns `Ok(None)` (bounded by a timeout).
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), Error> {
        self.write.close(&mut self.io, Some((code, reason))).await
    }

    /// Splits into independently usable halves sharing nothing but the stream.
    pub fn split(self) -> (Reader<ReadHalf<S>>, Writer<WriteHalf<S>>) {
        let (r, w) = tokio::io::split(self.io);
        (
            Reader::from_parts(r, self.read),
            Writer::from_parts(w, self.write),
        )
    }

    pub fn deflate(&self) -> Option<DeflateParams> {
        self.write.deflate()
    }

    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }
}
