//! What the properties generate: payloads (built from a seed by [`Rng`]), the
//! operations of the round-trip and connection-pair properties, negotiated
//! `DeflateParams`, roles and close codes.

use proptest::prelude::*;
use proptest::sample::select;
use telehub::ws::{DeflateParams, Message, Role};

/// A small deterministic generator (SplitMix64): payloads are built from a seed so that
/// proptest shrinks sizes and seeds instead of generating (and shrinking) every byte.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// Characters of every UTF-8 length, so text splits inside code points.
const PALETTE: [char; 10] = ['a', 'q', ' ', '"', 'é', 'ж', '€', '中', '😀', '\u{10ffff}'];

#[derive(Clone, Copy, Debug)]
pub(crate) enum Content {
    /// One value repeated: compresses to almost nothing.
    Run,
    /// Random: incompressible.
    Noise,
    /// A random block repeated: back-references at distance `period`, which may be
    /// beyond small windows.
    Repeats { period: usize },
}

#[derive(Clone, Debug)]
pub(crate) struct Payload {
    pub(crate) text: bool,
    pub(crate) content: Content,
    /// Exact size in bytes (UTF-8 bytes for text).
    pub(crate) len: usize,
    pub(crate) seed: u64,
}

impl Payload {
    pub(crate) fn message(&self) -> Message {
        let mut rng = Rng(self.seed);
        if self.text {
            Message::Text(text_of(self.content, self.len, &mut rng))
        } else {
            Message::Binary(bytes_of(self.content, self.len, &mut rng).into())
        }
    }
}

fn bytes_of(content: Content, len: usize, rng: &mut Rng) -> Vec<u8> {
    match content {
        Content::Run => vec![rng.next() as u8; len],
        Content::Noise => rng.bytes(len),
        Content::Repeats { period } => {
            let block = rng.bytes(period.max(1));
            block.iter().cycle().take(len).copied().collect()
        }
    }
}

fn text_of(content: Content, len: usize, rng: &mut Rng) -> String {
    let mut s = String::with_capacity(len);
    match content {
        Content::Run => {
            let c = ['a', 'é', '€', '😀'][rng.below(4)];
            while s.len() + c.len_utf8() <= len {
                s.push(c);
            }
        }
        Content::Noise => {
            while s.len() + 4 <= len {
                s.push(PALETTE[rng.below(PALETTE.len())]);
            }
        }
        Content::Repeats { period } => {
            let block = text_of(Content::Noise, period.clamp(4, len.max(4)), rng);
            for c in block.chars().cycle() {
                if s.len() + c.len_utf8() > len {
                    break;
                }
                s.push(c);
            }
        }
    }
    while s.len() < len {
        s.push('a');
    }
    s
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        Just(Content::Run),
        Just(Content::Noise),
        (1usize..600).prop_map(|period| Content::Repeats { period }),
        (600usize..40_000).prop_map(|period| Content::Repeats { period }),
    ]
}

/// Sizes: mostly small, the length-encoding boundaries (RFC 6455 §5.2: 7-bit up to 125,
/// 16-bit up to 65535, 64-bit beyond), sometimes large.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        5 => 0usize..300,
        3 => select(vec![0usize, 1, 2, 124, 125, 126, 127, 128, 65534, 65535, 65536, 65537]),
        1 => 300usize..70_000,
    ]
}

pub(crate) fn payload_with(len: impl Strategy<Value = usize>) -> impl Strategy<Value = Payload> {
    (any::<bool>(), content(), len, any::<u64>()).prop_map(|(text, content, len, seed)| Payload {
        text,
        content,
        len,
        seed,
    })
}

pub(crate) fn payload() -> impl Strategy<Value = Payload> {
    payload_with(length())
}

pub(crate) fn deflate_params() -> impl Strategy<Value = DeflateParams> {
    (any::<bool>(), any::<bool>(), 8u8..=15, 8u8..=15).prop_map(|(snct, cnct, sbits, cbits)| {
        DeflateParams {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: sbits,
            client_max_window_bits: cbits,
        }
    })
}

pub(crate) fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Client), Just(Role::Server)]
}

pub(crate) fn peer(role: Role) -> Role {
    match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    }
}

/// Close codes a peer may send (RFC 6455 §7.4.1, §7.4.2).
pub(crate) fn sendable_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        select(vec![
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014
        ]),
        3000u16..5000,
    ]
}

/// Close reasons, some longer than the 123 bytes a Close frame has room for.
pub(crate) fn reason() -> impl Strategy<Value = String> {
    "[a-zé€😀]{0,45}"
}

/// Independent statement of which close codes may appear on the wire (RFC 6455 §7.4).
pub(crate) fn valid_wire_code(code: u16) -> bool {
    (1000..5000).contains(&code)
        && !matches!(code, 1004 | 1005 | 1006 | 1015)
        && !(1016..3000).contains(&code)
}

/// One step of `writer_to_reader_round_trip`: what its `Writer` is asked to send.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Send(Payload),
    Shared(Vec<Payload>),
    Ping(Vec<u8>),
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => payload().prop_map(Op::Send),
        2 => prop::collection::vec(payload(), 0..4).prop_map(Op::Shared),
        // Writers cut control payloads to 125 bytes; some are longer.
        1 => prop::collection::vec(any::<u8>(), 0..140).prop_map(Op::Ping),
    ]
}

/// One step of `connection_pair_echo`: what its client sends.
#[derive(Clone, Debug)]
pub(crate) enum ConnOp {
    Send(Payload),
    Ping(Vec<u8>),
}

pub(crate) fn conn_op() -> impl Strategy<Value = ConnOp> {
    prop_oneof![
        4 => payload_with(prop_oneof![
            3 => 0usize..300,
            1 => select(vec![125usize, 126, 65535, 65536]),
            1 => 300usize..20_000,
        ])
        .prop_map(ConnOp::Send),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(ConnOp::Ping),
    ]
}
