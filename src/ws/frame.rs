//! Frame-level glue over `tungstenite::protocol::frame`: decoding a header from the
//! front of a buffer, encoding one into an output buffer, and XOR masking.
//!
//! Only syntax lives here; which headers are *acceptable* is decided in `reader`, so
//! each RFC rule is enforced in one place.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::error::{Error, ProtocolError};

/// The opcodes the message layer works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }

    fn to_tungstenite(self) -> OpCode {
        match self {
            Opcode::Continuation => OpCode::Data(Data::Continue),
            Opcode::Text => OpCode::Data(Data::Text),
            Opcode::Binary => OpCode::Data(Data::Binary),
            Opcode::Close => OpCode::Control(Control::Close),
            Opcode::Ping => OpCode::Control(Control::Ping),
            Opcode::Pong => OpCode::Control(Control::Pong),
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub rsv1: bool,
    /// RSV2 or RSV3: no extension we support defines them.
    pub rsv23: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    /// Payload length as announced (not yet checked against limits).
    pub len: u64,
    /// Bytes the header itself occupies.
    pub header_len: usize,
}

/// Decodes the header at the front of `buf`; `Ok(None)` if more bytes are needed.
/// Nothing is consumed.
pub fn decode_header(buf: &[u8]) -> Result<Option<Header>, Error> {
    let mut cursor = Cursor::new(buf);
    let parsed = FrameHeader::parse(&mut cursor).map_err(|err| match err {
        tungstenite::Error::Protocol(tungstenite::error::ProtocolError::InvalidOpcode(op)) => {
            Error::Protocol(ProtocolError::ReservedOpcode(op))
        }
        // Parsing from memory performs no real I/O; any other error is still the
        // peer's bytes being unacceptable.
        _ => Error::Protocol(ProtocolError::ReservedOpcode(buf[0] & 0x0f)),
    })?;
    let Some((h, len)) = parsed else {
        return Ok(None);
    };
    let opcode = match h.opcode {
        OpCode::Data(Data::Continue) => Opcode::Continuation,
        OpCode::Data(Data::Text) => Opcode::Text,
        OpCode::Data(Data::Binary) => Opcode::Binary,
        OpCode::Control(Control::Close) => Opcode::Close,
        OpCode::Control(Control::Ping) => Opcode::Ping,
        OpCode::Control(Control::Pong) => Opcode::Pong,
        // tungstenite already rejects these; keep the mapping total anyway.
        OpCode::Data(Data::Reserved(op)) | OpCode::Control(Control::Reserved(op)) => {
            return Err(Error::Protocol(ProtocolError::ReservedOpcode(op)))
        }
    };
    Ok(Some(Header {
        fin: h.is_final,
        rsv1: h.rsv1,
        rsv23: h.rsv2 || h.rsv3,
        opcode,
        mask: h.mask,
        len,
        header_len: cursor.position() as usize,
    }))
}

/// Appends a frame header to `out`.
pub fn encode_header(
    out: &mut Vec<u8>,
    fin: bool,
    rsv1: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    len: usize,
) {
    let header = FrameHeader {
        is_final: fin,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode: opcode.to_tungstenite(),
        mask,
    };
    // Writing into a Vec cannot fail; the Result is an artefact of `io::Write`.
    let _ = header.format(len as u64, out);
}

/// Appends a complete frame (header and payload, masked if `mask` is given) to `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    rsv1: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    encode_header(out, fin, rsv1, opcode, mask, payload.len());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask);
    }
}

/// XORs `buf` with the 4-byte masking key (RFC 6455 §5.3), eight bytes at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The processed prefix is a multiple of 8, hence of 4: the key restarts at index 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_matches_bytewise_definition() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(31)).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow, "len {len}");
            apply_mask(&mut fast, mask);
            assert_eq!(fast, data, "masking twice is the identity");
        }
    }

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let wire = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let h = decode_header(&wire).unwrap().unwrap();
        assert_eq!(h.opcode, Opcode::Text);
        assert!(h.fin);
        assert_eq!(h.len, 5);
        assert_eq!(h.header_len, 6);
        let mut payload = wire[6..].to_vec();
        apply_mask(&mut payload, h.mask.unwrap());
        assert_eq!(payload, b"Hello");

        let mut out = Vec::new();
        encode_frame(&mut out, true, false, Opcode::Text, h.mask, b"Hello");
        assert_eq!(out, wire);
    }

    #[test]
    fn header_needs_more_bytes() {
        assert_eq!(decode_header(&[0x82]).unwrap(), None);
        assert_eq!(decode_header(&[0x82, 126, 0]).unwrap(), None);
        assert_eq!(decode_header(&[0x82, 0x80, 1, 2]).unwrap(), None);
    }

    #[test]
    fn lengths_round_trip() {
        for len in [0usize, 125, 126, 65535, 65536, 1 << 20] {
            let mut out = Vec::new();
            encode_header(&mut out, true, true, Opcode::Binary, None, len);
            let h = decode_header(&out).unwrap().unwrap();
            assert_eq!(h.len, len as u64);
            assert_eq!(h.header_len, out.len());
            assert!(h.rsv1);
        }
    }

    #[test]
    fn reserved_opcode_is_rejected() {
        let err = decode_header(&[0x83, 0x00]).unwrap_err();
        assert!(matches!(
            err,
            Error::Protocol(ProtocolError::ReservedOpcode(3))
        ));
        let err = decode_header(&[0x8b, 0x00]).unwrap_err();
        assert!(matches!(
            err,
            Error::Protocol(ProtocolError::ReservedOpcode(0xb))
        ));
    }
}
