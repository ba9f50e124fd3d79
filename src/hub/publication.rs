//! A [`Publication`]: one accepted telemetry message on its way through the hub.
//!
//! It is the value that crosses the publish path, locally and between nodes: the
//! sending device's identity and tags (subscription filters match on them), its
//! category, the time the hub received it, and the envelope encoded once. The
//! telemetry is kept as its encoding only (see `encoded`): the category and
//! `received_ms` are taken from it as it is encoded, so they cannot disagree with
//! what dashboards receive. [`Published`] counts what its delivery did.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;

use super::{DeviceInfo, Encoded, Pushed};
use crate::proto::{envelope::Body, Envelope, Telemetry};

#[derive(Clone)]
pub struct Publication {
    device: Arc<DeviceInfo>,
    category: String,
    received_ms: u64,
    message: Arc<Encoded>,
}

impl Publication {
    /// Stamps `telemetry` as received from `device` at `received_ms` and encodes
    /// it. The device id comes from the connection's token, never from the frame.
    pub fn new(device: Arc<DeviceInfo>, mut telemetry: Telemetry, received_ms: u64) -> Self {
        telemetry.device_id.clone_from(&device.id);
        telemetry.received_ms = received_ms;
        let envelope = Envelope {
            body: Some(Body::Telemetry(telemetry)),
        };
        let message = Encoded::from_binary(Bytes::from(envelope.encode_to_vec()));
        let category = match envelope.body {
            Some(Body::Telemetry(t)) => t.category,
            _ => String::new(),
        };
        Self {
            device,
            category,
            received_ms,
            message,
        }
    }

    /// A publication another node accepted, as it crossed the cluster: `envelope`
    /// is its encoding (an `Envelope` carrying the telemetry), used as it is.
    pub fn forwarded(
        device: Arc<DeviceInfo>,
        category: String,
        received_ms: u64,
        envelope: Bytes,
    ) -> Self {
        Self {
            device,
            category,
            received_ms,
            message: Encoded::from_binary(envelope),
        }
    }

    pub fn device(&self) -> &Arc<DeviceInfo> {
        &self.device
    }

    pub fn message(&self) -> &Arc<Encoded> {
        &self.message
    }

    pub fn category(&self) -> &str {
        &self.category
    }

    pub fn received_ms(&self) -> u64 {
        self.received_ms
    }
}

/// What one publication's fan-out did on this node (in telemetry messages: a
/// batch counts for what it carries). A publication to batched or conflated
/// subscriptions only is counted when its batch is flushed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Published {
    pub delivered: u64,
    pub dropped: u64,
}

impl Published {
    /// Counts one push of a message carrying `carries` telemetry messages.
    pub(super) fn add(&mut self, pushed: Pushed, carries: u64) {
        match pushed {
            Pushed::Queued { evicted } => {
                self.delivered += carries;
                self.dropped += evicted;
            }
            Pushed::Dropped { evicted } => {
                self.dropped += evicted + carries;
            }
            Pushed::Closed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hub::WireFormat,
        proto::{reading::Value, Reading},
    };

    /// Telemetry is held as bytes: neither publishing nor rendering JSON for a
    /// dashboard keeps its decoded form.
    #[test]
    fn telemetry_is_held_as_its_encoding_only() {
        let device = Arc::new(DeviceInfo {
            id: "d1".into(),
            tags: Default::default(),
            ..Default::default()
        });
        let t = Telemetry {
            device_id: "forged".into(),
            category: "env.t".into(),
            readings: vec![Reading {
                name: "v".into(),
                value: Some(Value::Number(1.5)),
                unit: String::new(),
            }],
            ..Default::default()
        };
        let p = Publication::new(device, t, 42);
        assert_eq!((p.category(), p.received_ms()), ("env.t", 42));
        assert!(!p.message().is_decoded());
        let json = p.message().message(WireFormat::Json).payload().clone();
        assert!(
            !p.message().is_decoded(),
            "JSON rendered from a dropped decoding"
        );
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v["telemetry"]["deviceId"], "d1",
            "the token's id, not the frame's"
        );
        assert_eq!(v["telemetry"]["receivedMs"], "42");
        assert_eq!(v["telemetry"]["readings"][0]["number"], 1.5);
    }
}
