//! The property tests' own frame parser and DEFLATE codec (RFC 6455 §5.2, RFC 1951),
//! independent of `telehub::ws`: the oracle that checks the wire itself, including
//! that no back-reference reaches beyond the negotiated window.

use super::*;

/// A frame as parsed by the test's own decoder (RFC 6455 §5.2), payload unmasked.
#[derive(Debug)]
pub(crate) struct WireFrame {
    pub(crate) fin: bool,
    pub(crate) rsv1: bool,
    pub(crate) rsv23: bool,
    pub(crate) opcode: u8,
    pub(crate) masked: bool,
    pub(crate) payload: Vec<u8>,
}

/// Parses complete frames, checking that every length uses the minimal encoding
/// (RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length").
pub(crate) fn parse_frames(mut wire: &[u8]) -> Result<Vec<WireFrame>, TestCaseError> {
    let mut frames = Vec::new();
    while !wire.is_empty() {
        prop_assert!(wire.len() >= 2, "truncated header");
        let (b0, b1) = (wire[0], wire[1]);
        let (len, mut at) = match b1 & 0x7f {
            126 => {
                prop_assert!(wire.len() >= 4, "truncated length");
                let len = u16::from_be_bytes([wire[2], wire[3]]) as usize;
                prop_assert!(len >= 126, "non-minimal 16-bit length {len}");
                (len, 4)
            }
            127 => {
                prop_assert!(wire.len() >= 10, "truncated length");
                let len = u64::from_be_bytes(wire[2..10].try_into().unwrap());
                prop_assert!(len > 0xffff, "non-minimal 64-bit length {len}");
                (len as usize, 10)
            }
            n => (n as usize, 2),
        };
        let mask = if b1 & 0x80 != 0 {
            prop_assert!(wire.len() >= at + 4, "truncated mask");
            let m = [wire[at], wire[at + 1], wire[at + 2], wire[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        prop_assert!(wire.len() >= at + len, "truncated payload");
        let mut payload = wire[at..at + len].to_vec();
        if let Some(m) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        frames.push(WireFrame {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            rsv23: b0 & 0x30 != 0,
            opcode: b0 & 0x0f,
            masked: mask.is_some(),
            payload,
        });
        wire = &wire[at + len..];
    }
    Ok(frames)
}

/// (window bits, context takeover) of the messages `sender` emits, read straight from
/// RFC 7692 §7.1: "server_*" parameters govern the server's messages.
pub(crate) fn sender_params(p: &DeflateParams, sender: Role) -> (u8, bool) {
    match sender {
        Role::Server => (p.server_max_window_bits, !p.server_no_context_takeover),
        Role::Client => (p.client_max_window_bits, !p.client_no_context_takeover),
    }
}

/// Raw-deflate compression with flate2, as a peer would do it (RFC 7692 §7.2.1).
/// `finish`: end with a final block instead of a sync flush with the trailer removed.
pub(crate) fn deflate(z: &mut Compress, input: &[u8], finish: bool) -> Vec<u8> {
    let flush = if finish {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let start = z.total_in();
    loop {
        if out.len() == out.capacity() {
            out.reserve(4096);
        }
        let consumed = (z.total_in() - start) as usize;
        let status = z.compress_vec(&input[consumed..], &mut out, flush).unwrap();
        let consumed = (z.total_in() - start) as usize;
        let done = if finish {
            status == Status::StreamEnd
        } else {
            consumed == input.len() && out.len() < out.capacity()
        };
        if done {
            break;
        }
    }
    if !finish {
        if out.ends_with(&TRAILER) {
            out.truncate(out.len() - TRAILER.len());
        } else {
            // zlib skips a sync flush that would repeat the previous one (nothing new to
            // flush): an empty message right after another message.
            assert!(out.is_empty(), "a sync flush ends with the trailer");
        }
    }
    out
}

/// The receiving end of one direction of permessage-deflate, written from RFC 1951 and
/// RFC 7692 §7.2.2 without zlib: zlib-rs always keeps a 32 KiB window whatever window
/// bits it is given, so it cannot tell whether a sender kept to the negotiated window.
/// This decoder fails on any back-reference farther than `1 << bits` bytes, or farther
/// than the data it has (the previous messages' too, with context takeover).
pub(crate) struct WindowedInflater {
    window: usize,
    takeover: bool,
    /// The last `window` bytes of earlier messages (context takeover only).
    history: Vec<u8>,
}

impl WindowedInflater {
    pub(crate) fn new(bits: u8, takeover: bool) -> Self {
        WindowedInflater {
            window: 1 << bits,
            takeover,
            history: Vec::new(),
        }
    }

    /// One message's payload, as it came off the wire (trailer removed by the sender).
    pub(crate) fn inflate(&mut self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&TRAILER);
        let mut bits = Bits {
            data: &input,
            pos: 0,
        };
        let mut out = if self.takeover {
            std::mem::take(&mut self.history)
        } else {
            Vec::new()
        };
        let start = out.len();
        loop {
            // A sync-flushed message ends on a byte boundary after the trailer's empty
            // stored block; a message may also end with a final block.
            if bits.pos == input.len() * 8 {
                break;
            }
            let last = bits.take(1)? == 1;
            match bits.take(2)? {
                0 => {
                    bits.pos = bits.pos.div_ceil(8) * 8;
                    let len = bits.take(16)? as usize;
                    let nlen = bits.take(16)? as usize;
                    if len != !nlen & 0xffff {
                        return Err("stored block length check".into());
                    }
                    for _ in 0..len {
                        out.push(bits.take(8)? as u8);
                    }
                }
                1 => {
                    let mut lengths = [8u8; 288];
                    lengths[144..256].fill(9);
                    lengths[256..280].fill(7);
                    let lit = Huffman::new(&lengths);
                    let dist = Huffman::new(&[5; 30]);
                    self.codes(&mut bits, &lit, &dist, &mut out, start)?;
                }
                2 => {
                    let (lit, dist) = dynamic_tables(&mut bits)?;
                    self.codes(&mut bits, &lit, &dist, &mut out, start)?;
                }
                _ => return Err("reserved block type".into()),
            }
            if last {
                break;
            }
        }
        let message = out[start..].to_vec();
        if self.takeover {
            out.drain(..out.len().saturating_sub(self.window));
            self.history = out;
        }
        Ok(message)
    }

    /// Decodes one Huffman-coded block's symbols (RFC 1951 §3.2.5) into `out`, whose
    /// first `start` bytes are history.
    pub(crate) fn codes(
        &self,
        bits: &mut Bits<'_>,
        lit: &Huffman,
        dist: &Huffman,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), String> {
        const LEN_BASE: [u16; 29] = [
            3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99,
            115, 131, 163, 195, 227, 258,
        ];
        const LEN_EXTRA: [u8; 29] = [
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
        ];
        const DIST_BASE: [u16; 30] = [
            1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025,
            1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
        ];
        const DIST_EXTRA: [u8; 30] = [
            0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12,
            12, 13, 13,
        ];
        loop {
            let symbol = lit.decode(bits)? as usize;
            match symbol {
                0..=255 => out.push(symbol as u8),
                256 => return Ok(()),
                257..=285 => {
                    let i = symbol - 257;
                    let len = LEN_BASE[i] as usize + bits.take(LEN_EXTRA[i])? as usize;
                    let d = dist.decode(bits)? as usize;
                    if d >= 30 {
                        return Err(format!("distance code {d}"));
                    }
                    let distance = DIST_BASE[d] as usize + bits.take(DIST_EXTRA[d])? as usize;
                    if distance > self.window {
                        return Err(format!(
                            "distance {distance} beyond the {}-byte window",
                            self.window
                        ));
                    }
                    let available = if self.takeover {
                        out.len()
                    } else {
                        out.len() - start
                    };
                    if distance > available {
                        return Err(format!("distance {distance} beyond the data"));
                    }
                    for _ in 0..len {
                        out.push(out[out.len() - distance]);
                    }
                }
                _ => return Err(format!("length symbol {symbol}")),
            }
        }
    }
}

/// Reads a dynamic block's code tables (RFC 1951 §3.2.7).
pub(crate) fn dynamic_tables(bits: &mut Bits<'_>) -> Result<(Huffman, Huffman), String> {
    const ORDER: [usize; 19] = [
        16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
    ];
    let nlen = bits.take(5)? as usize + 257;
    let ndist = bits.take(5)? as usize + 1;
    let ncode = bits.take(4)? as usize + 4;
    let mut code_lengths = [0u8; 19];
    for &i in &ORDER[..ncode] {
        code_lengths[i] = bits.take(3)? as u8;
    }
    let code = Huffman::new(&code_lengths);
    let mut lengths = Vec::with_capacity(nlen + ndist);
    while lengths.len() < nlen + ndist {
        let (value, repeat) = match code.decode(bits)? {
            sym @ 0..=15 => (sym as u8, 1),
            16 => (
                *lengths.last().ok_or("repeat with no previous length")?,
                3 + bits.take(2)?,
            ),
            17 => (0, 3 + bits.take(3)?),
            _ => (0, 11 + bits.take(7)?),
        };
        lengths.extend(std::iter::repeat_n(value, repeat as usize));
    }
    if lengths.len() != nlen + ndist {
        return Err("code lengths overrun".into());
    }
    Ok((
        Huffman::new(&lengths[..nlen]),
        Huffman::new(&lengths[nlen..]),
    ))
}

/// LSB-first bit reader (RFC 1951 §3.1.1).
pub(crate) struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn take(&mut self, n: u8) -> Result<u32, String> {
        let mut v = 0;
        for i in 0..n {
            let byte = *self
                .data
                .get(self.pos / 8)
                .ok_or("truncated deflate data")?;
            v |= u32::from((byte >> (self.pos % 8)) & 1) << i;
            self.pos += 1;
        }
        Ok(v)
    }
}

/// A canonical Huffman code, decoded one bit at a time (RFC 1951 §3.2.2).
pub(crate) struct Huffman {
    /// Number of codes of each length 0..=15.
    count: [u16; 16],
    /// Symbols ordered by code.
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Self {
        let mut count = [0u16; 16];
        for &l in lengths {
            count[l as usize] += 1;
        }
        let mut offsets = [0u16; 16];
        for len in 1..15 {
            offsets[len + 1] = offsets[len] + count[len];
        }
        let mut symbols = vec![0; lengths.len()];
        for (symbol, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbols[offsets[l as usize] as usize] = symbol as u16;
                offsets[l as usize] += 1;
            }
        }
        Huffman { count, symbols }
    }

    fn decode(&self, bits: &mut Bits<'_>) -> Result<u16, String> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= bits.take(1)? as i32;
            let count = i32::from(self.count[len]);
            if code - first < count {
                return Ok(self.symbols[(index + code - first) as usize]);
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Err("invalid Huffman code".into())
    }
}

/// The test oracle must itself catch a window violation (and decode what zlib
/// produces), or the window checks below prove nothing.
#[test]
fn windowed_inflater_rejects_distances_beyond_its_window() {
    let block = Rng(7).bytes(3000);
    let data = block.repeat(4); // back-references at distance 3000
    for level in [0, 1, 6, 9] {
        let mut z = Compress::new_with_window_bits(Compression::new(level), false, 15);
        let compressed = deflate(&mut z, &data, false);
        let inflated = WindowedInflater::new(15, false).inflate(&compressed);
        assert_eq!(inflated.unwrap(), data, "level {level}");
        if level > 0 {
            let err = WindowedInflater::new(11, false)
                .inflate(&compressed)
                .unwrap_err();
            assert!(err.contains("beyond the 2048-byte window"), "{err}");
        }
    }
    // With context takeover, the second message refers back into the first.
    let mut z = Compress::new_with_window_bits(Compression::new(6), false, 15);
    let first = deflate(&mut z, &block, false);
    let second = deflate(&mut z, &block, false);
    assert!(second.len() < 100, "{}", second.len());
    let mut rx = WindowedInflater::new(15, true);
    assert_eq!(rx.inflate(&first).unwrap(), block);
    assert_eq!(rx.inflate(&second).unwrap(), block);
    let err = WindowedInflater::new(15, false)
        .inflate(&second)
        .unwrap_err();
    assert!(err.contains("beyond the data"), "{err}");
}
