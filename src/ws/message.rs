//! The values the transport hands to and takes from its users: roles, limits,
//! messages and control events. No I/O here.

use bytes::Bytes;

/// Which end of the connection we are. It decides masking (RFC 6455 §5.1: clients mask,
/// servers don't) and which half of the negotiated deflate parameters applies to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Per-connection limits and tuning.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest accepted frame payload, checked from the header before the payload is
    /// read. For compressed messages it also bounds the inflated size (a single-frame
    /// message may not inflate beyond it). Default 64 KiB.
    pub max_frame_size: usize,
    /// Largest accepted message after reassembly and inflation. Default 1 MiB.
    pub max_message_size: usize,
    /// Messages shorter than this are sent uncompressed even when deflate was
    /// negotiated: tiny payloads do not shrink and compressing them costs CPU. Default 64.
    pub compress_threshold: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: 64 << 10,
            max_message_size: 1 << 20,
            compress_threshold: 64,
        }
    }
}

/// A complete data message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Bytes),
}

impl Message {
    /// The payload bytes as they go on the wire (before compression).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }
}

/// The body of a Close frame (RFC 6455 §5.5.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    pub reason: String,
}

/// What [`crate::ws::Reader::next`] yields: a data message or a control frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Message(Message),
    Ping(Bytes),
    Pong(Bytes),
    /// The peer's Close frame; `None` when it carried no status code.
    Close(Option<CloseFrame>),
}
