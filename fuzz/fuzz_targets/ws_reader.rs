//! Fuzz target for the receive side of telehub's WebSocket transport: frame header
//! decoding, the RFC 6455 / RFC 7692 checks, reassembly, UTF-8 validation and bounded
//! inflation (`telehub::ws::Reader`).
//!
//! Input layout:
//! - byte 0: negotiation and limits. Bit 0: permessage-deflate negotiated; bit 1:
//!   `server_no_context_takeover`; bit 2: `client_no_context_takeover`; bits 3-5:
//!   window bits of the direction being read (8 + value, both directions get it);
//!   bits 6-7: one of the `LIMITS` presets.
//! - byte 1: how the bytes arrive. Bits 0-5: read size (1 + value bytes; 63 means "all
//!   that fits"); bit 6: return `Pending` before every other read (the driver then
//!   drops `Reader::next`'s future, exercising cancel safety); bit 7: read as a client
//!   (server frames, unmasked) instead of as the server (masked client frames).
//! - the rest: the bytes the peer sends.
//!
//! The reader is drained until it ends. Invariants checked, besides "no panic":
//! - every message fits `max_message_size`, every control payload 125 bytes, every
//!   Close code received is one allowed on the wire;
//! - the stream ends in EOF, a Close frame, or an error whose close code is 1002, 1007 or
//!   1009 (never an I/O error or anything without a code); afterwards `next` keeps
//!   returning `Error::Closed`;
//! - no single allocation during the run exceeds a small multiple of the limits, so a
//!   decompression bomb cannot be inflated past them (checked with a counting global
//!   allocator; the run is single-threaded).

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use telehub::ws::{Config, DeflateParams, Error, Incoming, Reader, Role};
use tokio::io::{AsyncRead, ReadBuf};

/// (max_frame_size, max_message_size) presets. Small ones make every limit reachable;
/// the third has frames larger than messages; the last is roomy enough for bombs to
/// inflate a lot before they are stopped.
const LIMITS: [(usize, usize); 4] = [
    (125, 125),
    (1024, 4096),
    (4096, 1024),
    (64 << 10, 256 << 10),
];

/// Records the largest single allocation since the last reset.
struct LargestAllocation;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` unchanged; the bookkeeping is one atomic.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// The peer: hands `data` out `chunk` bytes per read, optionally returning `Pending`
/// (after waking itself) before every other read.
struct Peer<'a> {
    data: &'a [u8],
    chunk: usize,
    stall: bool,
    stalled: bool,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.stall && !this.stalled {
            this.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.stalled = false;
        let n = this.chunk.min(buf.remaining()).min(this.data.len());
        buf.put_slice(&this.data[..n]);
        this.data = &this.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// `reader.next()`, polled once at a time; on `Pending` the future is dropped and a new
/// one started (in-memory I/O never really waits).
fn next_now(reader: &mut Reader<Peer<'_>>) -> Result<Incoming, Error> {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        let mut next = pin!(reader.next());
        if let Poll::Ready(result) = next.as_mut().poll(&mut cx) {
            return result;
        }
    }
}

/// RFC 6455 §7.4: the close codes that may appear in a Close frame.
fn valid_wire_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fuzz_target!(|input: &[u8]| {
    let [setup, arrival, data @ ..] = input else {
        return;
    };
    let bits = 8 + ((setup >> 3) & 7);
    let deflate = (setup & 1 != 0).then_some(DeflateParams {
        server_no_context_takeover: setup & 2 != 0,
        client_no_context_takeover: setup & 4 != 0,
        server_max_window_bits: bits,
        client_max_window_bits: bits,
    });
    let (max_frame_size, max_message_size) = LIMITS[usize::from(setup >> 6)];
    let config = Config {
        max_frame_size,
        max_message_size,
        compress_threshold: 64,
    };
    let chunk = match arrival & 0x3f {
        63 => usize::MAX,
        n => usize::from(n) + 1,
    };
    let role = if arrival & 0x80 != 0 {
        Role::Client
    } else {
        Role::Server
    };
    let peer = Peer {
        data,
        chunk,
        stall: arrival & 0x40 != 0,
        stalled: false,
    };
    let bound = 4 * (max_frame_size + max_message_size + (8 << 10)) + (256 << 10);

    LARGEST.store(0, Ordering::Relaxed);
    let mut reader = Reader::new(peer, role, config, deflate);
    // Every item consumes at least a 2-byte frame header.
    let mut items_left = data.len() / 2 + 1;
    loop {
        assert!(items_left > 0, "more items than frames");
        items_left -= 1;
        match next_now(&mut reader) {
            Ok(Incoming::Message(m)) => {
                let len = m.as_bytes().len();
                assert!(len <= max_message_size, "{len}-byte message");
            }
            Ok(Incoming::Ping(p) | Incoming::Pong(p)) => {
                assert!(p.len() <= 125, "{}-byte control payload", p.len());
            }
            Ok(Incoming::Close(close)) => {
                if let Some(c) = close {
                    assert!(valid_wire_code(c.code), "close code {}", c.code);
                }
                break;
            }
            Err(Error::Eof) => break,
            Err(e) => {
                let code = e.close_code();
                assert!(
                    matches!(code, Some(1002 | 1007 | 1009)),
                    "{e:?} has close code {code:?}"
                );
                break;
            }
        }
    }
    assert!(matches!(next_now(&mut reader), Err(Error::Closed)));
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= bound,
        "allocated {largest} bytes at once (bound {bound})"
    );
});
