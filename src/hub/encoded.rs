//! One envelope, encoded once for every subscriber.
//!
//! An [`Encoded`] holds the protobuf bytes of an envelope and, made on first use and
//! then shared, its proto3 JSON text and the compressed and framed variants inside
//! `ws::SharedMessage`. Fan-out pushes one `Arc<Encoded>` to each subscriber, so no
//! message is encoded, compressed or framed per subscriber.
//!
//! Telemetry is held as bytes only: the hub never keeps its decoded form (a 60 KB
//! message of many small readings would take tens of times its size decoded). A
//! JSON dashboard's text is rendered from a decoding that is dropped at once.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Instant,
};

use bytes::Bytes;

use crate::{
    proto::{envelope::Body, Envelope},
    ws::SharedMessage,
};

/// How a dashboard wants its envelopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    /// Binary frames, one protobuf `Envelope` each (`telehub.v1`).
    Protobuf,
    /// Text frames, the proto3 JSON mapping (`telehub.v1.json`).
    Json,
}

/// One envelope, encoded at most once per wire format.
pub struct Encoded {
    /// Set at construction, or decoded from `binary` on first use (an envelope
    /// assembled as bytes, see [`Encoded::from_binary`]).
    envelope: OnceLock<Envelope>,
    binary: SharedMessage,
    json: OnceLock<SharedMessage>,
    /// Telemetry messages it carries: 1 for a `Telemetry` (and for other messages
    /// the hub encodes, so that queue counts stay meaningful), n for a `Batch`; 0
    /// for a `History`, which is never dropped.
    carries: u64,
    /// The senders' dropped counters, charged when a slow dashboard's queue evicts
    /// this message (set by the hub as it publishes or batches): no lookup.
    charges: OnceLock<Charges>,
    /// When the hub built it, or for an assembled batch its oldest message: what
    /// `telehub_delivery_delay_seconds` measures from (one clock read per message
    /// built, shared by every dashboard it goes to).
    created: Instant,
}

/// Who is charged when a message is dropped, and how many of their messages it
/// carries.
enum Charges {
    One(Arc<AtomicU64>),
    /// A batch: each sender once, with its count (attributed in one add each).
    Many(Vec<(Arc<AtomicU64>, u64)>),
}

impl Encoded {
    pub fn new(envelope: Envelope) -> Arc<Self> {
        let binary = SharedMessage::binary(Bytes::from(prost::Message::encode_to_vec(&envelope)));
        Arc::new(Self {
            envelope: OnceLock::from(envelope),
            binary,
            json: OnceLock::new(),
            carries: 1,
            charges: OnceLock::new(),
            created: Instant::now(),
        })
    }

    /// `Envelope{<field>: <parts back to back>}` as bytes: a message the hub
    /// assembles from kept encodings without decoding them (a `History`, a
    /// `Batch`). It carries `carries` telemetry messages, whose drops are charged
    /// to the senders of `charged` (see [`Encoded::charge_drops_to`]).
    pub fn assemble<'a>(
        field: u32,
        parts: &[&[u8]],
        carries: u64,
        charged: impl IntoIterator<Item = &'a Encoded>,
    ) -> Arc<Self> {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = bytes::BytesMut::with_capacity(len + 8);
        encode_key(field, WireType::LengthDelimited, &mut out);
        encode_varint(len as u64, &mut out);
        for p in parts {
            out.extend_from_slice(p);
        }
        let mut charges: Vec<(Arc<AtomicU64>, u64)> = Vec::new();
        // A batch is as old as its oldest message: its delivery delay includes
        // the time the batch waited to be built.
        let mut created: Option<Instant> = None;
        for m in charged {
            created = Some(created.map_or(m.created, |c| c.min(m.created)));
            let Some(Charges::One(c)) = m.charges.get() else {
                continue;
            };
            // Runs of one sender's messages become one entry; a sender seen again
            // later gets another (charges add up the same), so this stays linear.
            match charges.last_mut() {
                Some((k, n)) if Arc::ptr_eq(k, c) => *n += 1,
                _ => charges.push((c.clone(), 1)),
            }
        }
        Arc::new(Self {
            envelope: OnceLock::new(),
            binary: SharedMessage::binary(out.freeze()),
            json: OnceLock::new(),
            carries,
            charges: if charges.is_empty() {
                OnceLock::new()
            } else {
                OnceLock::from(Charges::Many(charges))
            },
            created: created.unwrap_or_else(Instant::now),
        })
    }

    /// An envelope the hub encoded itself, as bytes (telemetry, or a `History`
    /// assembled from kept telemetry without decoding it): never kept decoded by
    /// the hub's own paths; [`Encoded::envelope`] decodes and keeps it.
    pub fn from_binary(bytes: Bytes) -> Arc<Self> {
        Arc::new(Self {
            envelope: OnceLock::new(),
            binary: SharedMessage::binary(bytes),
            json: OnceLock::new(),
            carries: 1,
            charges: OnceLock::new(),
            created: Instant::now(),
        })
    }

    /// When the hub built this message.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// The envelope, decoded (and then kept) if it was built from bytes.
    pub fn envelope(&self) -> &Envelope {
        self.envelope.get_or_init(|| self.decode())
    }

    fn decode(&self) -> Envelope {
        // Only the hub's own encodings get here, so decoding cannot fail; an empty
        // envelope would be the harmless answer if it did.
        prost::Message::decode(self.binary.payload().clone()).unwrap_or_default()
    }

    /// The message for `format`; the JSON text is produced on first use only,
    /// from a decoding that is not kept.
    pub fn message(&self, format: WireFormat) -> &SharedMessage {
        match format {
            WireFormat::Protobuf => &self.binary,
            WireFormat::Json => self.json.get_or_init(|| {
                SharedMessage::text(match self.envelope.get() {
                    Some(e) => to_json(e),
                    None => to_json(&self.decode()),
                })
            }),
        }
    }

    /// Charges this message's future drops to `counter` (the first call wins).
    pub fn charge_drops_to(&self, counter: &Arc<AtomicU64>) {
        if self.charges.get().is_none() {
            let _ = self.charges.set(Charges::One(counter.clone()));
        }
    }

    /// Telemetry messages this message carries (see the field).
    pub fn carries(&self) -> u64 {
        self.carries
    }

    /// Whether the decoded form is kept.
    #[cfg(test)]
    pub(crate) fn is_decoded(&self) -> bool {
        self.envelope.get().is_some()
    }

    /// A slow dashboard's queue dropped this message: charges its senders, and
    /// returns how many telemetry messages were dropped with it. One atomic add
    /// per sender, no lookup, no allocation.
    pub fn dropped(&self) -> u64 {
        match self.charges.get() {
            Some(Charges::One(c)) => {
                c.fetch_add(self.carries, Ordering::Relaxed);
            }
            Some(Charges::Many(senders)) => {
                for (c, n) in senders {
                    c.fetch_add(*n, Ordering::Relaxed);
                }
            }
            None => {}
        }
        self.carries
    }
}

/// The proto3 JSON mapping of an envelope.
///
/// pbjson writes doubles as JSON numbers, so a NaN or infinite reading (a failed
/// sensor reports NaN) would come out as `null`; proto3 JSON spells them as the
/// strings "NaN", "Infinity" and "-Infinity", which this patches in. Only telemetry
/// (or history) carrying such a reading takes the slower path.
fn to_json(envelope: &Envelope) -> String {
    use crate::proto::reading::Value as Reading;
    let patch_of = |prefix: String, t: &crate::proto::Telemetry| {
        t.readings
            .iter()
            .enumerate()
            .filter_map(move |(i, r)| match r.value {
                Some(Reading::Number(n)) if !n.is_finite() => {
                    Some((format!("{prefix}/readings/{i}/number"), n))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let patch: Vec<(String, f64)> = match &envelope.body {
        Some(Body::Telemetry(t)) => patch_of("/telemetry".into(), t),
        Some(Body::History(h)) => h
            .telemetry
            .iter()
            .enumerate()
            .flat_map(|(j, t)| patch_of(format!("/history/telemetry/{j}"), t))
            .collect(),
        Some(Body::Batch(b)) => b
            .telemetry
            .iter()
            .enumerate()
            .flat_map(|(j, t)| patch_of(format!("/batch/telemetry/{j}"), t))
            .collect(),
        _ => Vec::new(),
    };
    // Generated serde impls of plain data cannot fail to serialize.
    if patch.is_empty() {
        return serde_json::to_string(envelope).unwrap_or_default();
    }
    let mut value = serde_json::to_value(envelope).unwrap_or_default();
    for (pointer, n) in patch {
        let spelled = if n.is_nan() {
            "NaN"
        } else if n > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        };
        if let Some(slot) = value.pointer_mut(&pointer) {
            *slot = serde_json::Value::String(spelled.into());
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Telemetry;

    #[test]
    fn json_spells_non_finite_readings_as_proto3_does() {
        use crate::proto::{reading::Value, Reading};
        let reading = |name: &str, n: f64| Reading {
            name: name.into(),
            value: Some(Value::Number(n)),
            unit: String::new(),
        };
        let e = Encoded::new(Envelope {
            body: Some(Body::Telemetry(Telemetry {
                device_id: "d".into(),
                category: "env.t".into(),
                readings: vec![
                    reading("ok", 1.5),
                    reading("nan", f64::NAN),
                    reading("up", f64::INFINITY),
                    reading("down", f64::NEG_INFINITY),
                ],
                ..Default::default()
            })),
        });
        let text = String::from_utf8(e.message(WireFormat::Json).payload().to_vec()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let numbers: Vec<serde_json::Value> = (0..4)
            .map(|i| v["telemetry"]["readings"][i]["number"].clone())
            .collect();
        assert_eq!(
            numbers,
            [
                serde_json::json!(1.5),
                serde_json::json!("NaN"),
                serde_json::json!("Infinity"),
                serde_json::json!("-Infinity")
            ]
        );
        // And it parses back into the same message (pbjson reads the strings).
        let back: Envelope = serde_json::from_str(&text).unwrap();
        let Some(Body::Telemetry(t)) = back.body else {
            panic!("{text}")
        };
        assert!(matches!(t.readings[1].value, Some(Value::Number(n)) if n.is_nan()));
        assert_eq!(t.readings[3].value, Some(Value::Number(f64::NEG_INFINITY)));

        // The same readings replayed in a History, second of two.
        let history = Encoded::new(Envelope {
            body: Some(Body::History(crate::proto::History {
                telemetry: vec![Telemetry::default(), t.clone()],
                more: false,
            })),
        });
        let text = String::from_utf8(history.message(WireFormat::Json).payload().to_vec()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["history"]["telemetry"][1]["readings"][2]["number"],
            serde_json::json!("Infinity"),
            "{text}"
        );
        let back: Envelope = serde_json::from_str(&text).unwrap();
        let Some(Body::History(h)) = back.body else {
            panic!("{text}")
        };
        assert!(matches!(h.telemetry[1].readings[1].value, Some(Value::Number(n)) if n.is_nan()));
    }
}
