//! The independent client encoder of the fragmentation property: masked client
//! frames, compressed by flate2 (sync-flushed with the trailer removed, or ended with a
//! final block), split into fragments with control frames interleaved, together with
//! what a reader must yield for them.

use bytes::Bytes;
use flate2::{Compress, Compression};
use proptest::prelude::*;
use telehub::ws::{DeflateParams, Incoming, Message, Role};

use super::codec::{deflate, sender_params};
use super::strategies::{payload, Payload, Rng};
use super::wire::client_frame;

/// One message as the independent client encoder frames it.
#[derive(Clone, Debug)]
pub(crate) struct Framing {
    payload: Payload,
    /// Compress it (when deflate was negotiated).
    compress: bool,
    /// End the deflate stream with a final block instead of a sync flush.
    finish: bool,
    /// Fragment boundaries, as fractions of the (compressed) payload out of 65535.
    cuts: Vec<u16>,
    /// Control frames before each fragment (cycled).
    controls: Vec<u8>,
}

pub(crate) fn framing() -> impl Strategy<Value = Framing> {
    (
        payload(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::collection::vec(any::<u16>(), 0..5),
        prop::collection::vec(prop_oneof![3 => Just(0u8), 1 => 1u8..3], 1..4),
    )
        .prop_map(|(payload, compress, finish, cuts, controls)| Framing {
            payload,
            compress,
            finish,
            cuts,
            controls,
        })
}

/// The client side of RFC 6455 + RFC 7692, written independently of telehub.
pub(crate) struct ClientEncoder {
    rng: Rng,
    /// The compressor and whether it keeps its context between messages.
    deflater: Option<(Compress, bool)>,
    pub(crate) out: Vec<u8>,
    pub(crate) expected: Vec<Incoming>,
}

impl ClientEncoder {
    pub(crate) fn new(seed: u64, deflate_on: Option<DeflateParams>, level: u32) -> Self {
        let deflater = deflate_on.map(|p| {
            let (bits, takeover) = sender_params(&p, Role::Client);
            // zlib cannot do an 8-bit raw window; 9 bits is what real clients then use and
            // what a receiver must accept (it inflates with at least 9 bits).
            let z = Compress::new_with_window_bits(Compression::new(level), false, bits.max(9));
            (z, takeover)
        });
        ClientEncoder {
            rng: Rng(seed),
            deflater,
            out: Vec::new(),
            expected: Vec::new(),
        }
    }

    pub(crate) fn mask(&mut self) -> [u8; 4] {
        (self.rng.next() as u32).to_ne_bytes()
    }

    pub(crate) fn control(&mut self) {
        let payload = {
            let n = self.rng.below(126);
            self.rng.bytes(n)
        };
        let (opcode, incoming) = if self.rng.below(3) == 0 {
            (0x8a, Incoming::Pong(Bytes::from(payload.clone())))
        } else {
            (0x89, Incoming::Ping(Bytes::from(payload.clone())))
        };
        let mask = self.mask();
        client_frame(&mut self.out, opcode, &payload, mask);
        self.expected.push(incoming);
    }

    pub(crate) fn message(&mut self, f: &Framing) {
        let msg = f.payload.message();
        let raw = msg.as_bytes();
        let compressed = match (&mut self.deflater, f.compress) {
            (Some((z, takeover)), true) => {
                if !*takeover {
                    z.reset();
                }
                let body = deflate(z, raw, f.finish);
                if f.finish {
                    // A finished stream cannot continue: the next message starts afresh.
                    z.reset();
                }
                Some(body)
            }
            _ => None,
        };
        let body = compressed.as_deref().unwrap_or(raw);
        let mut bounds: Vec<usize> = f
            .cuts
            .iter()
            .map(|&c| c as usize * body.len() / 65535)
            .collect();
        bounds.push(0);
        bounds.push(body.len());
        bounds.sort_unstable();
        let opcode = if matches!(msg, Message::Text(_)) {
            0x1
        } else {
            0x2
        };
        let last = bounds.len() - 2;
        for (i, w) in bounds.windows(2).enumerate() {
            for _ in 0..f.controls[i % f.controls.len()] {
                self.control();
            }
            let mut first = if i == 0 { opcode } else { 0x0 };
            if i == last {
                first |= 0x80;
            }
            // RFC 7692 §6: RSV1 on the first frame of a compressed message only.
            if i == 0 && compressed.is_some() {
                first |= 0x40;
            }
            let mask = self.mask();
            client_frame(&mut self.out, first, &body[w[0]..w[1]], mask);
        }
        self.expected.push(Incoming::Message(msg));
    }
}
