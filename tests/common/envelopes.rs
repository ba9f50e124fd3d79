//! Builders for what devices send (telemetry envelopes and their readings, payloads
//! deflate cannot shrink) and the code of an `Error` the hub answers.

use telehub::proto::{
    envelope::Body, error::Code, reading, Envelope, Error as ErrorMsg, Reading, Telemetry,
};

/// A Telemetry envelope.
pub fn telemetry(category: &str, seq: u64, readings: Vec<Reading>) -> Envelope {
    Envelope {
        body: Some(Body::Telemetry(Telemetry {
            device_id: String::new(),
            category: category.to_string(),
            timestamp_ms: 1_700_000_000_000 + seq,
            seq,
            readings,
            received_ms: 0,
        })),
    }
}

pub fn number(name: &str, value: f64, unit: &str) -> Reading {
    Reading {
        name: name.to_string(),
        value: Some(reading::Value::Number(value)),
        unit: unit.to_string(),
    }
}

pub fn raw(name: &str, bytes: Vec<u8>) -> Reading {
    Reading {
        name: name.to_string(),
        value: Some(reading::Value::Raw(bytes)),
        unit: String::new(),
    }
}

/// `n` bytes that deflate cannot shrink (xorshift).
pub fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn code(e: &ErrorMsg) -> Code {
    Code::try_from(e.code).unwrap_or(Code::Unspecified)
}
