//! Hostile input for the robustness property: streams of mangled frames (lying lengths,
//! bad UTF-8, decompression bombs, flipped bits, truncation) or plain noise, small
//! reader limits, and [`drain`], which reads such a stream to its end checking every
//! item.

use std::sync::OnceLock;

use flate2::{Compress, Compression};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use telehub::ws::{Config, Error, Incoming, Reader};
use tokio::io::AsyncRead;

use super::codec::deflate;
use super::io::next_now;
use super::strategies::{payload_with, sendable_code, valid_wire_code};
use super::wire::client_frame;

/// A frame of a hostile stream.
#[derive(Clone, Debug)]
struct HostileFrame {
    /// FIN, RSV1-3 and opcode: either a plausible combination or any byte.
    first: u8,
    masked: bool,
    body: Vec<u8>,
    /// Announce this length instead of the body's.
    lie: Option<u64>,
}

/// A decompression bomb: 4 MiB of zeros, raw deflate, sync-flushed, trailer removed.
/// Prefixes of it are bombs too (they inflate to a prefix of the zeros).
pub(crate) fn bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        let mut z = Compress::new_with_window_bits(Compression::new(9), false, 15);
        deflate(&mut z, &vec![0u8; 4 << 20], false)
    })
}

fn noise(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Text, valid or not.
fn text_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "\\PC{0,40}".prop_map(String::into_bytes),
        1 => noise(40),
    ]
}

/// Deflate data: real messages (sync-flushed or finished), bombs, or junk.
fn deflated_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (payload_with(0usize..3000), 9u8..=15, any::<bool>()).prop_map(|(p, bits, finish)| {
            let mut z = Compress::new_with_window_bits(Compression::new(6), false, bits);
            deflate(&mut z, p.message().as_bytes(), finish)
        }),
        2 => any::<prop::sample::Index>().prop_map(|i| bomb()[..=i.index(bomb().len())].to_vec()),
        1 => noise(64),
    ]
}

fn close_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![3 => sendable_code(), 1 => any::<u16>()],
        text_body(),
    )
        .prop_map(|(code, reason)| {
            let mut body = code.to_be_bytes().to_vec();
            body.extend(reason);
            body
        })
}

fn hostile_frame() -> impl Strategy<Value = HostileFrame> {
    // Mostly frames whose header matches their body (so that the reader gets past the
    // header checks and into reassembly, UTF-8 and inflation), some with any first byte.
    let coherent = prop_oneof![
        (select(vec![0x81u8, 0x01, 0x80, 0x00]), text_body()),
        (select(vec![0x82u8, 0x02, 0x80, 0x00]), noise(300)),
        (
            select(vec![0xc1u8, 0xc2, 0x41, 0x42, 0x80, 0x00]),
            deflated_body()
        ),
        (Just(0x88u8), close_body()),
        (select(vec![0x89u8, 0x8a]), noise(130)),
    ];
    let wild = (
        any::<u8>(),
        prop_oneof![noise(200), text_body(), deflated_body(), close_body()],
    );
    (
        prop_oneof![4 => coherent, 1 => wild],
        prop::bool::weighted(0.95),
        prop::option::weighted(0.05, prop_oneof![any::<u64>(), 0u64..300]),
    )
        .prop_map(|((first, body), masked, lie)| HostileFrame {
            first,
            masked,
            body,
            lie,
        })
}

/// In-order fragmentation (RFC 6455 §5.4) imposed on generated frames, so that most
/// streams get past sequencing into the interesting checks: a data frame outside a
/// message becomes a Text/Binary start, one inside a message a continuation (RSV1
/// cleared). Other bits, and control frames, are left as they are.
fn tidy(frames: &mut [HostileFrame]) {
    let mut in_message = false;
    for f in frames {
        let opcode = f.first & 0x0f;
        if opcode > 2 {
            continue;
        }
        if in_message && opcode != 0 {
            f.first &= 0xb0;
        } else if !in_message && opcode == 0 {
            f.first |= if f.body.is_ascii() { 0x1 } else { 0x2 };
        }
        in_message = f.first & 0x80 == 0;
    }
}

pub(crate) fn hostile_wire() -> impl Strategy<Value = Vec<u8>> {
    let frames = (
        prop::collection::vec(hostile_frame(), 0..6),
        prop::bool::weighted(0.7),
        prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..2),
        prop::option::weighted(0.2, any::<prop::sample::Index>()),
    )
        .prop_map(|(mut frames, tidied, flips, cut)| {
            if tidied {
                tidy(&mut frames);
            }
            let mut wire = Vec::new();
            for f in &frames {
                let start = wire.len();
                if f.masked {
                    client_frame(&mut wire, f.first, &f.body, [0xa5, 0x5a, 0x0f, 0xf0]);
                } else {
                    wire.push(f.first);
                    wire.push(f.body.len().min(125) as u8);
                    wire.extend_from_slice(&f.body[..f.body.len().min(125)]);
                }
                if let Some(len) = f.lie {
                    // Rewrite the length as a 64-bit field announcing `len`.
                    let mut header = vec![f.first, (wire[start + 1] & 0x80) | 127];
                    header.extend_from_slice(&len.to_be_bytes());
                    let old_len_bytes = match wire[start + 1] & 0x7f {
                        126 => 4,
                        127 => 10,
                        _ => 2,
                    };
                    wire.splice(start..start + old_len_bytes, header);
                }
            }
            if !wire.is_empty() {
                for (i, x) in flips {
                    let i = i.index(wire.len());
                    wire[i] ^= x;
                }
            }
            if let Some(cut) = cut {
                wire.truncate(cut.index(wire.len() + 1));
            }
            wire
        });
    prop_oneof![
        7 => frames,
        1 => noise(512),
    ]
}

pub(crate) fn small_config() -> impl Strategy<Value = Config> {
    (
        select(vec![0usize, 1, 125, 126, 300, 1000, 4096, 65536]),
        select(vec![0usize, 1, 125, 300, 2048, 65536]),
    )
        .prop_map(|(max_frame_size, max_message_size)| Config {
            max_frame_size,
            max_message_size,
            compress_threshold: 64,
        })
}

/// Drains `reader` to its end, checking every item; returns how it ended.
pub(crate) fn drain<R: AsyncRead + Unpin>(
    reader: &mut Reader<R>,
    config: &Config,
    max_items: usize,
) -> Result<String, TestCaseError> {
    for _ in 0..max_items {
        match next_now(reader) {
            Ok(Incoming::Message(m)) => {
                prop_assert!(
                    m.as_bytes().len() <= config.max_message_size,
                    "{} bytes > max_message_size {}",
                    m.as_bytes().len(),
                    config.max_message_size
                );
            }
            Ok(Incoming::Ping(p) | Incoming::Pong(p)) => {
                prop_assert!(p.len() <= 125, "control payload of {} bytes", p.len());
            }
            Ok(Incoming::Close(c)) => {
                if let Some(c) = &c {
                    prop_assert!(valid_wire_code(c.code), "close code {}", c.code);
                }
                return Ok("close".into());
            }
            Err(Error::Eof) => return Ok("eof".into()),
            Err(e) => {
                let code = e.close_code();
                prop_assert!(
                    matches!(code, Some(1002 | 1007 | 1009)),
                    "{e:?} maps to close code {code:?}"
                );
                return Ok(format!("{e:?}"));
            }
        }
    }
    // Every item consumes at least a 2-byte header.
    Err(TestCaseError::fail(
        "the reader yields more items than frames",
    ))
}
