//! telehub's WebSocket transport: the RFC 6455 message layer and RFC 7692
//! permessage-deflate, for both the hub (server role) and the device simulator
//! (client role).
//!
//! Why our own: tungstenite rejects every frame with RSV1 set, so compression cannot be
//! layered on it. We use tungstenite only as a toolkit (frame header parse/format, the
//! accept-key derivation, client key generation) and own everything above it.
//!
//! Layout, one job per file:
//! - [`frame`]: header encode/decode glue over `tungstenite::protocol::frame`, masking.
//! - `reader`: frames → messages (reassembly, validation, limits, inflation). Every
//!   receive-side RFC MUST is checked there, once, with the rule cited beside it.
//! - `writer`: messages → frames (compression, masking, batching of shared frames).
//! - `shared`: [`SharedMessage`], compress-once-send-to-many for fan-out.
//! - `deflate`: raw-deflate compress/inflate with bounded output (RFC 7692 §7.2).
//! - [`extension`]: `Sec-WebSocket-Extensions` parsing and permessage-deflate negotiation.
//! - [`handshake`]: server-side validation of the HTTP/1.1 upgrade request.
//! - [`client`]: client-side upgrade over an already connected stream.
//! - [`server`]: a minimal upgrade over a raw stream for tools without an HTTP stack.
//! - `connection`: [`Connection`], reader + writer over one stream, with the
//!   convenience behaviour (auto-pong, close handshake).
//!
//! Invariants kept across the module:
//! - `Reader::next` is cancel-safe: the only state mutated across an `.await` is the read
//!   buffer (filled with `read_buf`); a frame is consumed only once it is complete.
//! - Sizes announced by the peer are checked against [`Config`] limits before any
//!   payload is buffered, and compressed messages are inflated in bounded chunks so the
//!   limits hold on the inflated size too.
//! - In the server role outgoing messages are always compressed without context
//!   takeover, so per-connection frames and [`SharedMessage`] frames can be interleaved
//!   freely on one connection.

pub mod client;
mod connection;
mod deflate;
mod error;
pub mod extension;
pub mod frame;
pub mod handshake;
mod message;
mod reader;
pub mod server;
mod shared;
mod writer;

pub use connection::Connection;
pub use deflate::inflate_context_bytes;
pub use error::{Error, ProtocolError};
pub use extension::DeflateParams;
pub use message::{CloseFrame, Config, Incoming, Message, Role};
pub use reader::Reader;
pub use shared::SharedMessage;
pub use writer::Writer;
