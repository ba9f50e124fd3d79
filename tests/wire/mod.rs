//! A raw WebSocket peer for the transport's conformance tests: exact client frames
//! built by hand, server frames read and checked byte for byte, and an echo server on
//! a loopback port running telehub's own server-side `Connection`. Compression in the
//! peer uses flate2 directly, never telehub's deflate code, so the two sides are
//! independent implementations of RFC 7692.
//!
//! Every read is under a timeout ([`T`]) so a bug fails a test instead of hanging it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use telehub::ws::handshake::ServerDeflatePolicy;
use telehub::ws::{server, Config, Connection, DeflateParams, Error, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

pub const T: Duration = Duration::from_secs(5);

/// First bytes of frames, FIN set: text, binary, close, ping, pong.
pub const TEXT: u8 = 0x81;
pub const BINARY: u8 = 0x82;
pub const CLOSE: u8 = 0x88;
pub const PING: u8 = 0x89;
pub const PONG: u8 = 0x8a;
/// RSV1: the permessage-deflate bit.
pub const RSV1: u8 = 0x40;

/// A server `Connection` (no HTTP: the frames are what is under test) that echoes
/// every data message and ends with what `read` returned.
pub async fn echo_server(
    config: Config,
    deflate: Option<DeflateParams>,
) -> (SocketAddr, JoinHandle<Result<(), Error>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        echo(Connection::new(stream, Role::Server, config, deflate)).await
    });
    (addr, task)
}

/// Like [`echo_server`], but the connection starts with an HTTP upgrade answered by
/// `policy`, so permessage-deflate is negotiated from the client's real offer.
pub async fn upgrading_echo_server(
    policy: ServerDeflatePolicy,
    config: Config,
) -> (SocketAddr, JoinHandle<Result<(), Error>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (conn, _) = server::accept_stream(stream, &[], &policy, config).await?;
        echo(conn).await
    });
    (addr, task)
}

async fn echo(mut conn: Connection<TcpStream>) -> Result<(), Error> {
    for _ in 0..100_000 {
        match conn.read().await? {
            Some(m) => conn.send(&m).await?,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// A masked client frame. `first` is the whole first byte (FIN, RSV, opcode).
pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    client_frame(&mut out, first, payload, [0x1f, 0x2e, 0x3d, 0x4c]);
    out
}

/// Appends one client frame: `first` is the whole first byte (FIN, RSV, opcode); the
/// payload is masked with `mask` and the length encoded minimally (RFC 6455 §5.2).
pub fn client_frame(out: &mut Vec<u8>, first: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// An unmasked frame (what a server sends; a protocol error from a client).
pub fn unmasked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

pub fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(reason);
    b
}

/// Writes `bytes` in pieces of `chunk` bytes with a pause between them, so the server
/// sees frames split at every position. Stops quietly when the server has closed the
/// connection (it may fail it before the last piece); the replies tell what happened.
pub async fn write_chopped(s: &mut TcpStream, bytes: &[u8], chunk: usize) {
    s.set_nodelay(true).unwrap();
    for piece in bytes.chunks(chunk.max(1)) {
        if s.write_all(piece).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Reads one server frame: (first byte, payload). Asserts it is unmasked.
pub async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    timeout(T, async {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.unwrap();
        assert_eq!(h[1] & 0x80, 0, "server frames are never masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).await.unwrap();
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await.unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).await.unwrap();
        (h[0], p)
    })
    .await
    .expect("timed out waiting for a frame")
}

/// Expects a Close frame with `code`, then the server closing the stream with nothing
/// after the Close frame.
pub async fn expect_close(s: &mut TcpStream, code: u16) {
    let (first, p) = read_frame(s).await;
    assert_eq!(first, CLOSE, "expected a close frame, got {first:#x} {p:?}");
    assert!(p.len() >= 2, "close without code");
    assert_eq!(u16::from_be_bytes([p[0], p[1]]), code);
    expect_eof(s).await;
}

/// Expects the server to close the stream with nothing more sent.
pub async fn expect_eof(s: &mut TcpStream) {
    let mut rest = Vec::new();
    let n = timeout(T, s.read_to_end(&mut rest))
        .await
        .expect("no EOF")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing after the close frame: {rest:?}");
}

pub async fn server_error(task: JoinHandle<Result<(), Error>>) -> Error {
    timeout(T, task).await.unwrap().unwrap().unwrap_err()
}

/// Sends `bytes`, expects close `code`, and returns the server's error.
pub async fn violation(
    config: Config,
    deflate: Option<DeflateParams>,
    bytes: &[u8],
    code: u16,
) -> Error {
    let (addr, task) = echo_server(config, deflate).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    expect_close(&mut s, code).await;
    let err = server_error(task).await;
    assert_eq!(err.close_code(), Some(code), "{err}");
    err
}

/// The parameters of a bare offer answered by the hub's default policy.
pub fn pmd() -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    }
}

/// One direction of permessage-deflate in the raw peer: a flate2 stream whose context
/// is kept or reset per message as negotiated (RFC 7692 §7.2.1).
pub struct PeerDeflate {
    c: Compress,
    takeover: bool,
}

impl PeerDeflate {
    pub fn new(window_bits: u8, takeover: bool) -> Self {
        PeerDeflate {
            c: Compress::new_with_window_bits(Compression::default(), false, window_bits),
            takeover,
        }
    }

    /// The compressed payload of one message, trailer removed.
    pub fn message(&mut self, data: &[u8]) -> Vec<u8> {
        if !self.takeover {
            self.c.reset();
        }
        let start = self.c.total_in();
        let mut out = Vec::with_capacity(data.len() / 2 + 1024);
        loop {
            let consumed = (self.c.total_in() - start) as usize;
            out.reserve(64 << 10);
            self.c
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
                .unwrap();
            if (self.c.total_in() - start) as usize == data.len() && out.len() < out.capacity() {
                break;
            }
        }
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }
}

/// The other direction: inflates the server's messages with a window of exactly the
/// negotiated size, so a server that used a larger window (or kept context it promised
/// to drop, when `takeover` is false) fails the test.
pub struct PeerInflate {
    d: Decompress,
    takeover: bool,
}

impl PeerInflate {
    pub fn new(window_bits: u8, takeover: bool) -> Self {
        PeerInflate {
            d: Decompress::new_with_window_bits(false, window_bits),
            takeover,
        }
    }

    pub fn message(&mut self, data: &[u8]) -> Vec<u8> {
        if !self.takeover {
            self.d.reset(false);
        }
        let mut input = data.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let start_in = self.d.total_in();
        let mut out = Vec::with_capacity(4 * data.len() + 1024);
        loop {
            let consumed = (self.d.total_in() - start_in) as usize;
            self.d
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .expect("the server's deflate stream inflates with the negotiated window");
            if (self.d.total_in() - start_in) as usize == input.len() && out.len() < out.capacity()
            {
                return out;
            }
            out.reserve(64 << 10);
        }
    }
}

/// One message compressed on its own (no context), trailer removed.
pub fn deflate_raw(data: &[u8]) -> Vec<u8> {
    PeerDeflate::new(15, false).message(data)
}

/// One message inflated on its own with a 32 KiB window.
pub fn inflate_raw(data: &[u8]) -> Vec<u8> {
    PeerInflate::new(15, false).message(data)
}
