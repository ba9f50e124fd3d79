//! Send side: messages → frames. Compresses when negotiated and worthwhile, masks in the
//! client role, and writes batches of pre-framed [`SharedMessage`]s with few syscalls.
//!
//! Invariants: at most one Close frame is ever sent and nothing follows it (RFC 6455
//! §5.5.1); in the server role every compressed message is compressed independently
//! (no context takeover), so our own frames and shared frames can be mixed; frame
//! buffers are reused between sends, so steady-state sending does not allocate.

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::deflate::Deflater;
use super::error::Error;
use super::extension::DeflateParams;
use super::frame::{encode_frame, Opcode};
use super::message::{Config, Message, Role};
use super::shared::SharedMessage;

/// Buffers larger than this are released after a write so one big message does not pin
/// memory on an otherwise idle connection.
const KEEP_BUF: usize = 64 << 10;
/// `send_shared` copies frames into one buffer up to this size per write.
const BATCH: usize = 64 << 10;

/// The send half's state, separate from the I/O object so that `Connection` and
/// `Writer` share it.
pub(crate) struct WriteState {
    role: Role,
    compress_threshold: usize,
    deflate: Option<DeflateParams>,
    /// `None` when deflate was not negotiated or our direction is limited to an 8-bit
    /// window that zlib cannot honour (we then send uncompressed, which is always legal).
    deflater: Option<Deflater>,
    /// Frame assembly buffer, reused for every write.
    buf: Vec<u8>,
    /// Compressed payload scratch space, reused.
    scratch: Vec<u8>,
    close_sent: bool,
}

impl WriteState {
    pub(crate) fn new(role: Role, config: &Config, deflate: Option<DeflateParams>) -> Self {
        let deflater = deflate.and_then(|p| {
            let (bits, takeover) = p.outgoing(role);
            // Server role: never context takeover, see the module invariant.
            Deflater::new(bits, takeover && role == Role::Client)
        });
        WriteState {
            role,
            compress_threshold: config.compress_threshold,
            deflate,
            deflater,
            buf: Vec::new(),
            scratch: Vec::new(),
            close_sent: false,
        }
    }

    fn mask(&self) -> Option<[u8; 4]> {
        // RFC 6455 §5.3: a fresh, unpredictable key per frame from the client.
        (self.role == Role::Client).then(rand::random)
    }

    /// Starts a write: refuses after Close, and drops anything a cancelled earlier
    /// write left in the buffer so it is never sent in front of this one.
    fn check_open(&mut self) -> Result<(), Error> {
        self.buf.clear();
        // RFC 6455 §5.5.1: after sending a Close frame, the endpoint MUST NOT send any
        // more data frames.
        if self.close_sent {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn frame_data(&mut self, text: bool, payload: &[u8]) -> Result<(), Error> {
        let opcode = if text { Opcode::Text } else { Opcode::Binary };
        let mask = self.mask();
        match &mut self.deflater {
            Some(deflater) if payload.len() >= self.compress_threshold => {
                self.scratch.clear();
                deflater.compress(payload, &mut self.scratch)?;
                // RFC 7692 §6: RSV1 on the first (here: only) frame marks compression.
                encode_frame(&mut self.buf, true, true, opcode, mask, &self.scratch);
                if self.scratch.capacity() > KEEP_BUF {
                    self.scratch = Vec::new();
                }
            }
            _ => encode_frame(&mut self.buf, true, false, opcode, mask, payload),
        }
        Ok(())
    }

    async fn flush_buf<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> Result<(), Error> {
        let res = io.write_all(&self.buf).await;
        self.buf.clear();
        if self.buf.capacity() > KEEP_BUF {
            self.buf = Vec::new();
        }
        res?;
        io.flush().await?;
        Ok(())
    }

    pub(crate) async fn send<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        msg: &Message,
    ) -> Result<(), Error> {
        self.check_open()?;
        self.frame_data(matches!(msg, Message::Text(_)), msg.as_bytes())?;
        self.flush_buf(io).await
    }

    pub(crate) async fn send_shared<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        msgs: &[SharedMessage],
    ) -> Result<(), Error> {
        self.check_open()?;
        if self.role == Role::Client {
            // Shared frames are unmasked server frames; a client frames each one itself.
            for m in msgs {
                self.frame_data(m.is_text(), m.payload())?;
            }
            return self.flush_buf(io).await;
        }
        self.buf.clear();
        for m in msgs {
            let frame: Bytes = m.framed(self.deflate.as_ref(), self.compress_threshold);
            if !self.buf.is_empty() && self.buf.len() + frame.len() > BATCH {
                io.write_all(&self.buf).await?;
                self.buf.clear();
            }
            if frame.len() >= BATCH {
                // Large frames go out as they are rather than through a copy.
                io.write_all(&frame).await?;
            } else {
                self.buf.extend_from_slice(&frame);
            }
        }
        self.flush_buf(io).await
    }

    pub(crate) async fn control<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        opcode: Opcode,
        payload: &[u8],
    ) -> Result<(), Error> {
        self.check_open()?;
        // RFC 6455 §5.5: control payloads are at most 125 bytes; ours are cut to fit.
        let payload = &payload[..payload.len().min(125)];
        let mask = self.mask();
        encode_frame(&mut self.buf, true, false, opcode, mask, payload);
        self.flush_buf(io).await
    }

    /// Sends a Close frame (`None`: without a body). Idempotent.
    pub(crate) async fn close<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        body: Option<(u16, &str)>,
    ) -> Result<(), Error> {
        if self.close_sent {
            return Ok(());
        }
        self.buf.clear();
        let mut payload = Vec::with_capacity(125);
        if let Some((code, reason)) = body {
            // RFC 6455 §7.4.1: 1005, 1006 and 1015 MUST NOT be sent; others outside the
            // defined ranges mean nothing to the peer, which would fail us with 1002.
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(Error::InvalidCloseCode(code));
            }
            payload.extend_from_slice(&code.to_be_bytes());
            // §5.5: the whole body fits 125 bytes; cut the reason at a char boundary.
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            payload.extend_from_slice(&reason.as_bytes()[..end]);
        }
        let mask = self.mask();
        encode_frame(&mut self.buf, true, false, Opcode::Close, mask, &payload);
        self.close_sent = true;
        self.flush_buf(io).await
    }

    pub(crate) fn close_sent(&self) -> bool {
        self.close_sent
    }

    pub(crate) fn deflate(&self) -> Option<DeflateParams> {
        self.deflate
    }
}

/// The send half of a connection. Not cancel-safe: a cancelled send may have written
/// part of a frame, after which the connection must be dropped.
pub struct Writer<W> {
    io: W,
    state: WriteState,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// A writer over a stream that has completed the upgrade handshake.
    pub fn new(io: W, role: Role, config: &Config, deflate: Option<DeflateParams>) -> Self {
        Writer {
            io,
            state: WriteState::new(role, config, deflate),
        }
    }

    pub(crate) fn from_parts(io: W, state: WriteState) -> Self {
        Writer { io, state }
    }

    /// Sends one message as a single frame, compressed if deflate was negotiated and the
    /// message reaches the threshold, masked in the client role; then flushes.
    pub async fn send(&mut self, msg: &Message) -> Result<(), Error> {
        self.state.send(&mut self.io, msg).await
    }

    /// Writes the pre-framed bytes of each message (the variant for this connection's
    /// deflate parameters), batched into as few writes as possible, then flushes.
    pub async fn send_shared(&mut self, msgs: &[SharedMessage]) -> Result<(), Error> {
        self.state.send_shared(&mut self.io, msgs).await
    }

    pub async fn ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.state
            .control(&mut self.io, Opcode::Ping, payload)
            .await
    }

    pub async fn pong(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.state
            .control(&mut self.io, Opcode::Pong, payload)
            .await
    }

    /// Sends a Close frame with `code` and `reason` (cut to fit 125 bytes) and flushes.
    /// Idempotent: later calls do nothing. Sending anything else afterwards fails with
    /// [`Error::Closed`].
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), Error> {
        self.state.close(&mut self.io, Some((code, reason))).await
    }

    /// Shuts the write side of the stream down (TCP FIN, or TLS close_notify).
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        self.io.shutdown().await?;
        Ok(())
    }

    /// Whether our Close frame has been sent.
    pub fn close_sent(&self) -> bool {
        self.state.close_sent()
    }

    pub fn deflate(&self) -> Option<DeflateParams> {
        self.state.deflate()
    }

    pub fn get_ref(&self) -> &W {
        &self.io
    }

    pub fn into_inner(self) -> W {
        self.io
    }
}
