//! Raw-deflate compression and bounded inflation for permessage-deflate (RFC 7692 §7.2).
//!
//! A compressed message is the output of a raw deflate stream flushed with
//! `Z_SYNC_FLUSH`, minus the trailing `00 00 ff ff` (RFC 7692 §7.2.1); the receiver
//! appends those four bytes back before inflating (§7.2.2).
//!
//! Memory: no connection owns a zlib stream. Without context takeover a message needs
//! no state after it is done, so every message uses one reusable compressor or
//! decompressor per thread and window size. *With* context takeover, the only state
//! that crosses a message boundary is the sliding window: after a sync flush both ends
//! sit on a block boundary, and the next message may refer back only to the last
//! 2^window_bits bytes of the stream (RFC 1951 §3.2). So a direction with context
//! takeover keeps just those bytes in a [`Window`] (allocated on its first message, at
//! most 32 KiB, 2 KiB under the hub's default `client_max_window_bits`) and primes the
//! per-thread compressor or decompressor with them as a preset dictionary
//! (`deflateSetDictionary`/`inflateSetDictionary`) for each message. A zlib stream
//! with a 15-bit window costs ~256 KiB to compress and ~40 KiB to inflate; a kept
//! window costs its own size. Retained windows are counted in
//! [`inflate_context_bytes`] so the hub can export them.
//!
//! Window bits: zlib cannot produce a raw deflate stream with an 8-bit window (it bumps
//! 8 to 9, which could emit distances the peer's 256-byte window cannot resolve), so a
//! direction limited to 8 bits is never compressed — sending uncompressed messages is
//! always allowed (RSV1 is per message). Inflating with a window *larger* than the
//! sender's is always correct, so we inflate with at least 9 bits.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::error::Error;

/// The four bytes a sync flush ends with, removed by the sender and re-appended by the
/// receiver (RFC 7692 §7.2.1, §7.2.2).
pub const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output is grown by at most this much per inflate step (doubling from a guess up to
/// it), so a decompression bomb is caught within one step of crossing the limit.
const INFLATE_STEP: usize = 32 << 10;

/// zlib level 6 is its default; fan-out compresses each message once, so the extra
/// ratio over level 1 is cheap for us and saves bytes for every subscriber.
const LEVEL: u32 = 6;

/// Smallest window zlib can honour for raw deflate (see module doc).
pub const MIN_COMPRESS_WINDOW_BITS: u8 = 9;

thread_local! {
    /// Reusable no-context-takeover compressors, indexed by window bits - 9.
    static COMPRESSORS: RefCell<[Option<Box<Compress>>; 7]> = RefCell::default();
    /// Reusable no-context-takeover decompressors, indexed by window bits - 9.
    static DECOMPRESSORS: RefCell<[Option<Box<Decompress>>; 7]> = RefCell::default();
}

/// Bytes held by live receive-side [`Window`]s, process-wide.
static INFLATE_CONTEXT: AtomicUsize = AtomicUsize::new(0);

/// Memory the process holds to inflate peers that compress with context takeover:
/// the sum of every live connection's retained receive window. (Send-side windows
/// exist only in the client role, never in the hub, and are not counted.)
pub fn inflate_context_bytes() -> usize {
    INFLATE_CONTEXT.load(Ordering::Relaxed)
}

/// The last 2^bits bytes of one direction's uncompressed stream: all the context a
/// permessage-deflate message with context takeover may refer to.
struct Window {
    size: usize,
    /// Capacity reserved once, in full, on first use.
    bytes: Vec<u8>,
    /// Where the capacity is counted, if anywhere.
    counter: Option<&'static AtomicUsize>,
}

impl Window {
    fn new(window_bits: u8, counter: Option<&'static AtomicUsize>) -> Self {
        Window {
            size: 1 << window_bits,
            bytes: Vec::new(),
            counter,
        }
    }

    /// Appends a message's bytes, keeping only the last `size`.
    fn remember(&mut self, data: &[u8]) {
        if self.bytes.capacity() == 0 && !data.is_empty() {
            self.bytes.reserve_exact(self.size);
            if let Some(c) = self.counter {
                c.fetch_add(self.bytes.capacity(), Ordering::Relaxed);
            }
        }
        if data.len() >= self.size {
            self.bytes.clear();
            self.bytes
                .extend_from_slice(&data[data.len() - self.size..]);
        } else {
            let excess = (self.bytes.len() + data.len()).saturating_sub(self.size);
            self.bytes.drain(..excess);
            self.bytes.extend_from_slice(data);
        }
    }

    /// The sender started a new deflate stream: nothing before it can be referred to.
    fn forget(&mut self) {
        self.bytes.clear();
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        if let Some(c) = self.counter {
            c.fetch_sub(self.bytes.capacity(), Ordering::Relaxed);
        }
    }
}

fn slot(window_bits: u8) -> usize {
    usize::from(window_bits.clamp(9, 15) - 9)
}

/// Compresses `input` as one complete message with no context takeover, appending the
/// result (trailer already stripped) to `out`. `window_bits` must be >= 9.
pub fn compress_once(window_bits: u8, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    COMPRESSORS.with(|cell| {
        let mut slots = cell.borrow_mut();
        let c = slots[slot(window_bits)].get_or_insert_with(|| new_compress(window_bits));
        c.reset();
        compress_into(c, input, out)
    })
}

fn new_compress(window_bits: u8) -> Box<Compress> {
    Box::new(Compress::new_with_window_bits(
        Compression::new(LEVEL),
        false,
        window_bits.clamp(9, 15),
    ))
}

fn compress_into(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    let start_in = c.total_in();
    loop {
        out.reserve(input.len() / 2 + 64);
        let consumed = (c.total_in() - start_in) as usize;
        c.compress_vec(&input[consumed..], out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        let consumed = (c.total_in() - start_in) as usize;
        // Done once all input is in and the flush left spare room (nothing pending).
        if consumed == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out[start..].ends_with(&TRAILER) {
        out.truncate(out.len() - TRAILER.len());
    }
    Ok(())
}

/// Our sending direction's compressor.
pub struct Deflater {
    window_bits: u8,
    /// With context takeover: what the next message is compressed against.
    window: Option<Window>,
}

impl Deflater {
    /// `None` when this direction cannot be compressed (window limited to 8 bits).
    pub fn new(window_bits: u8, context_takeover: bool) -> Option<Self> {
        (window_bits >= MIN_COMPRESS_WINDOW_BITS).then(|| Deflater {
            window_bits,
            window: context_takeover.then(|| Window::new(window_bits, None)),
        })
    }

    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let Some(window) = &mut self.window else {
            return compress_once(self.window_bits, input, out);
        };
        COMPRESSORS.with(|cell| {
            let mut slots = cell.borrow_mut();
            let c =
                slots[slot(self.window_bits)].get_or_insert_with(|| new_compress(self.window_bits));
            c.reset();
            if !window.as_slice().is_empty() {
                c.set_dictionary(window.as_slice())
                    .map_err(io::Error::other)?;
            }
            compress_into(c, input, out)
        })?;
        window.remember(input);
        Ok(())
    }
}

/// Our receiving direction's decompressor.
pub struct Inflater {
    window_bits: u8,
    /// With context takeover: what the next message may refer back to.
    window: Option<Window>,
}

impl Inflater {
    pub fn new(window_bits: u8, context_takeover: bool) -> Self {
        let window_bits = window_bits.clamp(9, 15);
        Inflater {
            window_bits,
            window: context_takeover.then(|| Window::new(window_bits, Some(&INFLATE_CONTEXT))),
        }
    }

    /// Inflates one complete message. `input` is the concatenated compressed payload;
    /// the trailer is appended here. Fails with `MessageTooBig` as soon as the output
    /// passes `max`, without inflating the rest.
    pub fn inflate(&mut self, input: &mut Vec<u8>, max: usize) -> Result<Vec<u8>, Error> {
        input.extend_from_slice(&TRAILER);
        let (out, stream_ended) = DECOMPRESSORS.with(|cell| {
            let mut slots = cell.borrow_mut();
            let d = slots[slot(self.window_bits)].get_or_insert_with(|| {
                Box::new(Decompress::new_with_window_bits(false, self.window_bits))
            });
            d.reset(false);
            if let Some(window) = self.window.as_ref().filter(|w| !w.as_slice().is_empty()) {
                d.set_dictionary(window.as_slice())
                    .map_err(|_| Error::InvalidDeflate)?;
            }
            inflate_into(d, input, max)
        })?;
        if let Some(window) = &mut self.window {
            if stream_ended {
                // The sender closed its deflate stream (BFINAL); its next message
                // starts a new one.
                window.forget();
            } else {
                window.remember(&out);
            }
        }
        Ok(out)
    }
}

/// Inflates `input` into a new buffer; `true` when the sender ended its deflate
/// stream with a final block.
fn inflate_into(d: &mut Decompress, input: &[u8], max: usize) -> Result<(Vec<u8>, bool), Error> {
    let too_big = Error::MessageTooBig { max };
    let mut out: Vec<u8> = Vec::new();
    let start_in = d.total_in();
    loop {
        if out.len() == out.capacity() {
            if out.len() > max {
                return Err(too_big);
            }
            // Start near the likely size (telemetry inflates ~4x) and double, so a
            // small message does not allocate a whole step, and never grow by more
            // than a step or past the limit.
            let step = out.len().max(input.len() * 4).clamp(256, INFLATE_STEP);
            out.reserve(step.min(max.saturating_add(1) - out.len()));
        }
        let before_in = d.total_in();
        let before_out = d.total_out();
        let consumed = (before_in - start_in) as usize;
        let status = d
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|_| Error::InvalidDeflate)?;
        if out.len() > max {
            return Err(too_big);
        }
        let consumed = (d.total_in() - start_in) as usize;
        if status == Status::StreamEnd {
            // The peer ended the deflate stream with a final block; whatever follows
            // (our re-appended trailer) is not part of it.
            return Ok((out, true));
        }
        if consumed == input.len() && out.len() < out.capacity() {
            return Ok((out, false));
        }
        let progressed = d.total_in() != before_in || d.total_out() != before_out;
        if !progressed && out.len() < out.capacity() {
            // Input left, room left, yet nothing moves: the stream is corrupt.
            return Err(Error::InvalidDeflate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ (i / 7) as u8).collect()
    }

    #[test]
    fn round_trip_without_context_takeover_all_windows() {
        for bits in 9..=15u8 {
            let data = sample(100_000);
            let mut z = Vec::new();
            compress_once(bits, &data, &mut z).unwrap();
            assert!(!z.ends_with(&TRAILER));
            let mut inf = Inflater::new(bits, false);
            assert_eq!(inf.inflate(&mut z, 1 << 20).unwrap(), data, "bits {bits}");
        }
    }

    #[test]
    fn context_takeover_shrinks_repeats_and_round_trips() {
        let msg = b"{\"category\":\"temperature\",\"value\":21.5,\"device\":\"d-0001\"}".repeat(2);
        let mut tx = Deflater::new(15, true).unwrap();
        let mut rx = Inflater::new(15, true);
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let mut z = Vec::new();
            tx.compress(&msg, &mut z).unwrap();
            sizes.push(z.len());
            assert_eq!(rx.inflate(&mut z, 1 << 20).unwrap(), msg);
        }
        // The second message refers back to the first one's window.
        assert!(sizes[1] < sizes[0], "{sizes:?}");

        // A receiver without the shared context cannot decode the second message.
        let mut tx = Deflater::new(15, true).unwrap();
        let mut z1 = Vec::new();
        tx.compress(&msg, &mut z1).unwrap();
        let mut z2 = Vec::new();
        tx.compress(&msg, &mut z2).unwrap();
        let mut fresh = Inflater::new(15, false);
        assert!(fresh
            .inflate(&mut z2, 1 << 20)
            .map(|o| o != msg)
            .unwrap_or(true));
    }

    #[test]
    fn context_takeover_streams_interleave_on_one_thread() {
        // Two connections share this thread's decompressor; each keeps only its own
        // window between messages. Message sizes cross the 512-byte window in both
        // directions so references reach back across message boundaries.
        let msgs: Vec<Vec<u8>> = (0..40)
            .map(|i| {
                let base = format!("{{\"device\":\"d-{:02}\",\"temperature\":21.{i}}}", i % 3);
                base.repeat(1 + i % 25).into_bytes()
            })
            .collect();
        let (mut tx_a, mut tx_b) = (
            Deflater::new(9, true).unwrap(),
            Deflater::new(9, true).unwrap(),
        );
        let (mut rx_a, mut rx_b) = (Inflater::new(9, true), Inflater::new(9, true));
        let mut saved = 0usize;
        for m in &msgs {
            for (tx, rx) in [(&mut tx_a, &mut rx_a), (&mut tx_b, &mut rx_b)] {
                let mut z = Vec::new();
                tx.compress(m, &mut z).unwrap();
                saved += m.len().saturating_sub(z.len());
                assert_eq!(&rx.inflate(&mut z, 1 << 20).unwrap(), m);
                assert!(rx.window.as_ref().unwrap().bytes.len() <= 512);
            }
        }
        assert!(saved > 0);
        // Each side retains exactly one 512-byte window; the receive windows are
        // counted process-wide (other tests may hold some too, hence >=).
        for w in [&rx_a.window, &rx_b.window, &tx_a.window, &tx_b.window] {
            assert_eq!(w.as_ref().unwrap().bytes.capacity(), 512);
        }
        assert!(inflate_context_bytes() >= 1024);
    }

    #[test]
    fn without_context_takeover_nothing_is_retained() {
        let mut rx = Inflater::new(15, false);
        let mut z = Vec::new();
        compress_once(15, &sample(10_000), &mut z).unwrap();
        rx.inflate(&mut z, 1 << 20).unwrap();
        assert!(rx.window.is_none());
    }

    #[test]
    fn window_8_is_never_compressed() {
        assert!(Deflater::new(8, false).is_none());
        // ... but 8-bit senders are inflated with a 9-bit window.
        let data = sample(5000);
        let mut z = Vec::new();
        compress_once(9, &data, &mut z).unwrap();
        assert_eq!(
            Inflater::new(8, false).inflate(&mut z, 1 << 20).unwrap(),
            data
        );
    }

    #[test]
    fn bomb_is_stopped_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut z = Vec::new();
        compress_once(15, &zeros, &mut z).unwrap();
        assert!(z.len() < 20 << 10, "bomb is {} bytes", z.len());
        let err = Inflater::new(15, false)
            .inflate(&mut z, 1 << 20)
            .unwrap_err();
        assert!(matches!(err, Error::MessageTooBig { max } if max == 1 << 20));
    }

    #[test]
    fn garbage_is_invalid_deflate() {
        let mut junk = vec![0xff; 64];
        let err = Inflater::new(15, false)
            .inflate(&mut junk, 1 << 20)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidDeflate), "{err:?}");
    }

    #[test]
    fn empty_message_round_trips() {
        let mut z = Vec::new();
        compress_once(15, b"", &mut z).unwrap();
        assert!(z.len() <= 2, "{z:?}");
        assert_eq!(Inflater::new(15, false).inflate(&mut z, 10).unwrap(), b"");
    }

    #[test]
    fn exact_limit_is_allowed() {
        let data = vec![7u8; 1000];
        let mut z = Vec::new();
        compress_once(15, &data, &mut z).unwrap();
        assert_eq!(
            Inflater::new(15, false)
                .inflate(&mut z.clone(), 1000)
                .unwrap(),
            data
        );
        assert!(Inflater::new(15, false).inflate(&mut z, 999).is_err());
    }
}
