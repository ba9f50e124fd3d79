//! [`SharedMessage`]: compress once, send to many.
//!
//! Fan-out sends one message to many subscribers. With `server_no_context_takeover`
//! (which the hub always answers) a compressed message does not depend on what the
//! connection sent before, so its frame bytes are identical for every subscriber with
//! the same window size. A `SharedMessage` therefore computes each wire variant at most
//! once — uncompressed, and compressed per effective window (9..=15 bits) — lazily, on
//! the first subscriber that needs it, and hands out cheap `Bytes` clones afterwards.
//!
//! Frames are server-role frames (unmasked); a client-role `Writer` frames the payload
//! itself.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::deflate::{compress_once, MIN_COMPRESS_WINDOW_BITS};
use super::extension::DeflateParams;
use super::frame::{encode_frame, Opcode};

/// A message encoded once and framed (and compressed) at most once per wire variant.
/// Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct SharedMessage(Arc<Inner>);

struct Inner {
    text: bool,
    payload: Bytes,
    /// The uncompressed frame.
    plain: OnceLock<Bytes>,
    /// Compressed frames, indexed by window bits - 9. A slot may hold the plain frame
    /// when compression did not make the message smaller.
    compressed: [OnceLock<Bytes>; 7],
}

impl std::fmt::Debug for SharedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMessage")
            .field("text", &self.0.text)
            .field("len", &self.0.payload.len())
            .finish()
    }
}

impl SharedMessage {
    pub fn binary(payload: Bytes) -> Self {
        Self::new(false, payload)
    }

    pub fn text(s: String) -> Self {
        Self::new(true, Bytes::from(s.into_bytes()))
    }

    fn new(text: bool, payload: Bytes) -> Self {
        SharedMessage(Arc::new(Inner {
            text,
            payload,
            plain: OnceLock::new(),
            compressed: Default::default(),
        }))
    }

    /// The message payload (uncompressed).
    pub fn payload(&self) -> &Bytes {
        &self.0.payload
    }

    pub fn is_text(&self) -> bool {
        self.0.text
    }

    /// The server-role frame bytes for a connection with these deflate parameters
    /// (`None`: not negotiated) and compression threshold. Computed once per variant.
    pub fn framed(&self, deflate: Option<&DeflateParams>, threshold: usize) -> Bytes {
        let bits = match deflate {
            Some(p)
                if self.0.payload.len() >= threshold
                    && p.server_max_window_bits >= MIN_COMPRESS_WINDOW_BITS =>
            {
                p.server_max_window_bits.min(15)
            }
            _ => return self.plain(),
        };
        self.0.compressed[usize::from(bits - MIN_COMPRESS_WINDOW_BITS)]
            .get_or_init(|| {
                let mut z = Vec::new();
                match compress_once(bits, &self.0.payload, &mut z) {
                    Ok(()) if z.len() < self.0.payload.len() => self.frame(true, &z),
                    // Incompressible: the plain frame is smaller and equally valid.
                    _ => self.plain(),
                }
            })
            .clone()
    }

    fn plain(&self) -> Bytes {
        self.0
            .plain
            .get_or_init(|| self.frame(false, &self.0.payload))
            .clone()
    }

    fn frame(&self, compressed: bool, payload: &[u8]) -> Bytes {
        let opcode = if self.0.text {
            Opcode::Text
        } else {
            Opcode::Binary
        };
        let mut out = Vec::with_capacity(payload.len() + 10);
        encode_frame(&mut out, true, compressed, opcode, None, payload);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::deflate::Inflater;
    use crate::ws::frame::decode_header;

    fn params(bits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: false,
            server_max_window_bits: bits,
            client_max_window_bits: 15,
        }
    }

    #[test]
    fn variants_are_computed_once_and_decode() {
        let payload = Bytes::from("temperature=21.5;".repeat(20));
        let m = SharedMessage::binary(payload.clone());
        let a = m.framed(Some(&params(15)), 64);
        let b = m.clone().framed(Some(&params(15)), 64);
        assert_eq!(a.as_ptr(), b.as_ptr(), "same cached bytes");
        let h = decode_header(&a).unwrap().unwrap();
        assert!(h.rsv1 && h.fin && h.mask.is_none());
        let mut z = a[h.header_len..].to_vec();
        assert_eq!(
            Inflater::new(15, false).inflate(&mut z, 1 << 20).unwrap(),
            payload
        );

        let small = m.framed(Some(&params(9)), 64);
        assert_ne!(small.as_ptr(), a.as_ptr(), "per-window variant");

        let plain = m.framed(None, 64);
        let h = decode_header(&plain).unwrap().unwrap();
        assert!(!h.rsv1);
        assert_eq!(&plain[h.header_len..], &payload[..]);
        // Below threshold, or window 8: plain frame, the same cached bytes.
        assert_eq!(m.framed(Some(&params(15)), 10_000).as_ptr(), plain.as_ptr());
        assert_eq!(m.framed(Some(&params(8)), 64).as_ptr(), plain.as_ptr());
    }

    #[test]
    fn incompressible_payload_is_sent_plain() {
        let payload: Vec<u8> = (0..200).map(|_| rand::random::<u8>()).collect();
        let m = SharedMessage::binary(payload.into());
        let f = m.framed(Some(&params(15)), 0);
        let h = decode_header(&f).unwrap().unwrap();
        assert_eq!(h.opcode, Opcode::Binary);
        assert!(!h.rsv1);
    }

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<SharedMessage>();
    }
}
