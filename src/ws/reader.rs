//! Receive side: bytes → frames → messages.
//!
//! Every receive-side MUST of RFC 6455 and RFC 7692 is enforced here, in
//! [`ReadState::check_header`] (everything decidable from a header, before any payload
//! is buffered) or in the payload handlers just below it (close body, UTF-8, inflation).
//!
//! Cancel safety: `next` only mutates `buf` across an `.await` (through `read_buf` or
//! `read_fresh`, both cancel-safe: bytes land in `buf` in the poll that reads them); a
//! frame is consumed and acted on synchronously once it is complete, so dropping the
//! future between frames or mid-frame loses nothing.
//!
//! Memory: a connection with nothing buffered holds no read buffer (see
//! [`read_fresh`]).

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::deflate::Inflater;
use super::error::{Error, ProtocolError};
use super::extension::DeflateParams;
use super::frame::{apply_mask, decode_header, Header, Opcode};
use super::message::{CloseFrame, Config, Incoming, Message, Role};

/// Smallest read we ask the socket for while a frame is in progress.
const READ_CHUNK: usize = 4 << 10;
/// The per-thread buffer a connection with nothing buffered reads into.
const SCRATCH: usize = 16 << 10;

thread_local! {
    /// Where idle connections read (see [`read_fresh`]): one per worker thread
    /// instead of one per connection.
    static SCRATCH_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Reads into this thread's scratch buffer and leaves in `buf` exactly the bytes
/// that arrived. A connection waiting here for its next message holds no buffer:
/// most of a fleet is idle most of the time, and a 4 KiB buffer kept per waiting
/// connection was a third of its memory. The scratch is borrowed only within one
/// poll, never across an `.await`, so tasks on the same thread never share it.
async fn read_fresh<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        SCRATCH_BUF.with(|cell| {
            // Only a reader nested inside another reader's `poll_read` on this
            // thread could find it borrowed: it then reads into its own buffer.
            let Ok(mut scratch) = cell.try_borrow_mut() else {
                let mut own = [0u8; READ_CHUNK];
                let mut rb = ReadBuf::new(&mut own);
                std::task::ready!(std::pin::Pin::new(&mut *io).poll_read(cx, &mut rb))?;
                buf.extend_from_slice(rb.filled());
                return std::task::Poll::Ready(Ok(rb.filled().len()));
            };
            let mut rb = ReadBuf::new(&mut scratch[..]);
            std::task::ready!(std::pin::Pin::new(&mut *io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            buf.extend_from_slice(rb.filled());
            std::task::Poll::Ready(Ok(n))
        })
    })
    .await
}

/// The receive half's state, separate from the I/O object so that `Connection` and
/// `Reader` share it.
pub(crate) struct ReadState {
    role: Role,
    config: Config,
    /// Bytes received and not yet consumed as complete frames.
    buf: BytesMut,
    /// The fragmented data message in progress.
    partial: Option<Partial>,
    /// Payload of the message in progress (still compressed if `partial.compressed`).
    body: Vec<u8>,
    /// Receive-side decompressor; `None` when permessage-deflate was not negotiated, which
    /// also makes RSV1 a protocol error.
    inflater: Option<Inflater>,
    /// A Close frame was received or the stream failed: nothing more will be read.
    done: bool,
}

/// A data message that started but has not seen its final frame.
struct Partial {
    text: bool,
    compressed: bool,
    fragmented: bool,
    /// Prefix of `body` already validated as UTF-8 (uncompressed text only).
    utf8_checked: usize,
}

impl ReadState {
    pub(crate) fn new(
        role: Role,
        config: Config,
        deflate: Option<DeflateParams>,
        buffered: BytesMut,
    ) -> Self {
        let inflater = deflate.map(|p| {
            let (bits, takeover) = p.incoming(role);
            Inflater::new(bits, takeover)
        });
        ReadState {
            role,
            config,
            buf: buffered,
            partial: None,
            body: Vec::new(),
            inflater,
            done: false,
        }
    }

    pub(crate) async fn next<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Result<Incoming, Error> {
        if self.done {
            return Err(Error::Closed);
        }
        loop {
            match self.next_buffered() {
                Ok(Some(incoming)) => return Ok(incoming),
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
            let read = if self.buf.is_empty() {
                read_fresh(io, &mut self.buf).await
            } else {
                if self.buf.capacity() - self.buf.len() < READ_CHUNK {
                    self.buf.reserve(READ_CHUNK);
                }
                io.read_buf(&mut self.buf).await
            };
            match read {
                Ok(0) => {
                    self.done = true;
                    return Err(Error::Eof);
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Err(e.into());
                }
            }
        }
    }

    /// Consumes complete frames from `buf` until one yields something for the caller;
    /// `Ok(None)` when more bytes are needed.
    fn next_buffered(&mut self) -> Result<Option<Incoming>, Error> {
        loop {
            let Some(h) = decode_header(&self.buf)? else {
                return Ok(None);
            };
            self.check_header(&h)?;
            // Checked against max_frame_size above, so this fits in usize.
            let len = h.len as usize;
            let total = h.header_len + len;
            if self.buf.len() < total {
                // Reserve the whole frame at once: one allocation, bounded by the limit.
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(h.header_len);
            let mut payload = self.buf.split_to(len);
            if self.buf.is_empty() {
                // Nothing more buffered: hold no capacity while waiting (see
                // `read_fresh`).
                self.buf = BytesMut::new();
            }
            if let Some(mask) = h.mask {
                apply_mask(&mut payload, mask);
            }
            let incoming = match h.opcode {
                Opcode::Ping => Some(Incoming::Ping(payload.freeze())),
                Opcode::Pong => Some(Incoming::Pong(payload.freeze())),
                Opcode::Close => {
                    self.done = true;
                    Some(Incoming::Close(parse_close(&payload)?))
                }
                Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                    self.on_data(&h, payload)?.map(Incoming::Message)
                }
            };
            if incoming.is_some() {
                return Ok(incoming);
            }
        }
    }

    /// All checks that need only the header. The RFC rule is cited beside each.
    fn check_header(&self, h: &Header) -> Result<(), Error> {
        // RFC 6455 §5.2: "the most significant bit MUST be 0" for 64-bit lengths.
        if h.len > i64::MAX as u64 {
            return Err(ProtocolError::LengthMsb.into());
        }
        // RFC 6455 §5.2: RSV1-3 "MUST be 0 unless an extension is negotiated that defines
        // meanings for non-zero values". permessage-deflate defines RSV1 only.
        if h.rsv23 || (h.rsv1 && self.inflater.is_none()) {
            return Err(ProtocolError::ReservedBits.into());
        }
        if h.rsv1 {
            // RFC 7692 §6.1: RSV1 on control frames is an error...
            if h.opcode.is_control() {
                return Err(ProtocolError::CompressedControl.into());
            }
            // ...and it is set on the first frame of a message only.
            if h.opcode == Opcode::Continuation {
                return Err(ProtocolError::CompressedContinuation.into());
            }
        }
        // RFC 6455 §5.1: clients mask every frame, servers never do.
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame.into()),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame.into()),
            _ => {}
        }
        if h.opcode.is_control() {
            // RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes
            // or less and MUST NOT be fragmented."
            if !h.fin {
                return Err(ProtocolError::FragmentedControl.into());
            }
            if h.len > 125 {
                return Err(ProtocolError::ControlTooLong.into());
            }
            return Ok(());
        }
        // RFC 6455 §5.4: fragments of one message are not interleaved with another's, and
        // a continuation needs a message in progress.
        match (h.opcode, &self.partial) {
            (Opcode::Continuation, None) => {
                return Err(ProtocolError::UnexpectedContinuation.into())
            }
            (Opcode::Text | Opcode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation.into())
            }
            _ => {}
        }
        // Limits (RFC 6455 §10.4), checked before any of the payload is buffered.
        if h.len > self.config.max_frame_size as u64 {
            return Err(Error::FrameTooBig {
                len: h.len,
                max: self.config.max_frame_size,
            });
        }
        let compressed = h.rsv1 || self.partial.as_ref().is_some_and(|p| p.compressed);
        let limit = if compressed {
            // Compressed bytes are bounded loosely (incompressible data grows by a few
            // bytes per 64 KiB block); the inflated size is checked exactly later.
            self.config
                .max_message_size
                .saturating_add(self.config.max_message_size / 256 + 64)
        } else {
            self.config.max_message_size
        };
        let so_far = if self.partial.is_some() {
            self.body.len()
        } else {
            0
        };
        if so_far as u64 + h.len > limit as u64 {
            return Err(Error::MessageTooBig {
                max: self.config.max_message_size,
            });
        }
        Ok(())
    }

    fn on_data(&mut self, h: &Header, payload: BytesMut) -> Result<Option<Message>, Error> {
        if h.opcode != Opcode::Continuation {
            let text = h.opcode == Opcode::Text;
            if h.fin && !h.rsv1 {
                // The common case: one uncompressed frame, no copy for binary.
                return Ok(Some(if text {
                    // RFC 6455 §8.1: text payloads MUST be valid UTF-8.
                    Message::Text(String::from_utf8(payload.into()).map_err(|_| Error::Utf8)?)
                } else {
                    Message::Binary(payload.freeze())
                }));
            }
            self.body.clear();
            self.partial = Some(Partial {
                text,
                compressed: h.rsv1,
                fragmented: !h.fin,
                utf8_checked: 0,
            });
        }
        let Some(partial) = self.partial.as_mut() else {
            // check_header rejected continuations without a message in progress.
            return Err(ProtocolError::UnexpectedContinuation.into());
        };
        partial.fragmented |= h.opcode == Opcode::Continuation;
        self.body.extend_from_slice(&payload);
        if partial.text && !partial.compressed {
            // Fail fast on an invalid prefix rather than at the end of a long message.
            check_utf8(&self.body, &mut partial.utf8_checked, h.fin)?;
        }
        if !h.fin {
            return Ok(None);
        }
        let Some(partial) = self.partial.take() else {
            return Ok(None);
        };
        let body = std::mem::take(&mut self.body);
        let body = match (&mut self.inflater, partial.compressed) {
            (Some(inflater), true) => {
                // A single-frame message must also fit the frame limit once inflated.
                let max = if partial.fragmented {
                    self.config.max_message_size
                } else {
                    self.config.max_message_size.min(self.config.max_frame_size)
                };
                let mut body = body;
                inflater.inflate(&mut body, max)?
            }
            _ => body,
        };
        Ok(Some(if partial.text {
            // RFC 6455 §8.1 (compressed text is validated here, once inflated).
            Message::Text(String::from_utf8(body).map_err(|_| Error::Utf8)?)
        } else {
            Message::Binary(Bytes::from(body))
        }))
    }
}

/// Validates `body[*checked..]`; an incomplete code point at the end is fine unless the
/// message is complete.
fn check_utf8(body: &[u8], checked: &mut usize, complete: bool) -> Result<(), Error> {
    match std::str::from_utf8(&body[*checked..]) {
        Ok(_) => {
            *checked = body.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() && !complete => {
            *checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(Error::Utf8),
    }
}

/// Parses a Close frame body (RFC 6455 §5.5.1).
fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, Error> {
    match payload {
        [] => Ok(None),
        // §5.5.1: if there is a body, its first two bytes are the status code.
        [_] => Err(ProtocolError::CloseBodyTooShort.into()),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !valid_received_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code).into());
            }
            // §5.5.1: the reason is UTF-8 (and §8.1 makes invalid data fatal).
            let reason = std::str::from_utf8(reason).map_err(|_| Error::Utf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_owned(),
            }))
        }
    }
}

/// RFC 6455 §7.4.1/§7.4.2: codes defined for the wire are 1000-1003 and 1007-1011, plus
/// the IANA-registered 1012-1014 (service restart, try again later, bad gateway: servers
/// do send them), and 3000-4999 for libraries and applications. 1004 is reserved and
/// 1005, 1006 and 1015 MUST NOT appear in a Close frame.
fn valid_received_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The receive half of a connection. See [`ReadState`] for the guarantees.
pub struct Reader<R> {
    io: R,
    state: ReadState,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader over a stream that has completed the upgrade handshake.
    pub fn new(io: R, role: Role, config: Config, deflate: Option<DeflateParams>) -> Self {
        Reader {
            io,
            state: ReadState::new(role, config, deflate, BytesMut::new()),
        }
    }

    pub(crate) fn from_parts(io: R, state: ReadState) -> Self {
        Reader { io, state }
    }

    /// The next message or control frame. Reassembles fragments (control frames may
    /// arrive between them and are returned as they come), validates everything the
    /// RFCs require and inflates compressed messages within the configured limits.
    ///
    /// Cancel-safe: it can be used as a `tokio::select!` branch.
    ///
    /// After a Close frame or an error, further calls return [`Error::Closed`]. Replying
    /// to pings and to the Close frame is the caller's job (see `Connection::read`).
    pub async fn next(&mut self) -> Result<Incoming, Error> {
        self.state.next(&mut self.io).await
    }

    pub fn get_ref(&self) -> &R {
        &self.io
    }

    pub fn into_inner(self) -> R {
        self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
            assert!(valid_received_code(ok), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!valid_received_code(bad), "{bad}");
        }
        assert!(matches!(
            parse_close(&[3]),
            Err(Error::Protocol(ProtocolError::CloseBodyTooShort))
        ));
        assert!(matches!(parse_close(&[0x03, 0xe8, 0xff]), Err(Error::Utf8)));
        assert_eq!(
            parse_close(&[0x03, 0xe8, b'o', b'k']).unwrap(),
            Some(CloseFrame {
                code: 1000,
                reason: "ok".into()
            })
        );
    }

    #[test]
    fn utf8_prefix_checks() {
        let euro = "€".as_bytes(); // e2 82 ac
        let mut checked = 0;
        check_utf8(&euro[..2], &mut checked, false).unwrap();
        assert_eq!(checked, 0);
        assert!(check_utf8(&euro[..2], &mut 0, true).is_err());
        check_utf8(euro, &mut checked, true).unwrap();
        assert_eq!(checked, 3);
        // An impossible byte fails before the message ends.
        assert!(check_utf8(&[b'a', 0xff], &mut 0, false).is_err());
    }
}
