//! Transport errors. Every protocol violation names the RFC rule it breaks, and
//! [`Error::close_code`] maps each error to the status code we send before closing
//! (RFC 6455 §7.4.1), so callers never pick codes by hand.

use super::handshake::HandshakeError;

/// A violation of RFC 6455 or RFC 7692 by the peer. Each variant's message cites the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("RFC 6455 §5.1: a server MUST close the connection upon receiving an unmasked frame")]
    UnmaskedFrame,
    #[error("RFC 6455 §5.1: a client MUST close the connection if it detects a masked frame")]
    MaskedFrame,
    #[error("RFC 6455 §5.2: RSV bits MUST be 0 unless an extension defining them was negotiated")]
    ReservedBits,
    #[error("RFC 6455 §5.2: unknown opcode {0:#x} MUST fail the connection")]
    ReservedOpcode(u8),
    #[error("RFC 6455 §5.2: the most significant bit of a 64-bit payload length MUST be 0")]
    LengthMsb,
    #[error("RFC 6455 §5.5: control frames MUST NOT be fragmented")]
    FragmentedControl,
    #[error("RFC 6455 §5.5: control frames MUST have a payload length of 125 bytes or less")]
    ControlTooLong,
    #[error("RFC 6455 §5.4: continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("RFC 6455 §5.4: new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    #[error("RFC 6455 §5.5.1: a close frame body is empty or starts with a 2-byte code")]
    CloseBodyTooShort,
    #[error("RFC 6455 §7.4: close code {0} is not valid on the wire")]
    InvalidCloseCode(u16),
    #[error("RFC 7692 §6.1: RSV1 MUST NOT be set on control frames")]
    CompressedControl,
    #[error("RFC 7692 §6.1: RSV1 is set only on the first frame of a message")]
    CompressedContinuation,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream without a Close frame (the 1006 situation).
    #[error("connection closed by the peer without a close frame")]
    Eof,
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("RFC 6455 §8.1: text message or close reason is not valid UTF-8")]
    Utf8,
    #[error("RFC 7692 §6.2: compressed message is not valid deflate data")]
    InvalidDeflate,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooBig { len: u64, max: usize },
    #[error("message exceeds the limit of {max} bytes")]
    MessageTooBig { max: usize },
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// A client handshake answered with something other than 101 Switching Protocols.
    #[error("server answered the upgrade with HTTP status {0}")]
    HttpStatus(u16),
    /// We may not send this close code (RFC 6455 §7.4.1: 1005, 1006 and 1015 MUST NOT be
    /// sent; codes below 1000 are unused).
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
    /// The close handshake already happened in this direction.
    #[error("connection already closed")]
    Closed,
}

impl Error {
    /// The status code to send in our Close frame when failing the connection because of
    /// this error, or `None` when no Close frame makes sense (I/O errors, handshake).
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Error::Protocol(_) => Some(1002),
            Error::Utf8 | Error::InvalidDeflate => Some(1007),
            Error::FrameTooBig { .. } | Error::MessageTooBig { .. } => Some(1009),
            Error::Io(_)
            | Error::Eof
            | Error::Handshake(_)
            | Error::HttpStatus(_)
            | Error::InvalidCloseCode(_)
            | Error::Closed => None,
        }
    }
}
