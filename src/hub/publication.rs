//! A [`Publication`]: one accepted telemetry message on its way through the hub.
//!
//! It is the value that crosses the publish path, locally and between nodes: the
//! sending device's identity and tags (subscription filters match on them), the
//! time the hub received it, and the envelope encoded once. The category and
//! `received_ms` are read from the encoded telemetry itself, so they can never
//! disagree with what dashboards receive.

use std::sync::Arc;

use super::{DeviceInfo, Encoded};
use crate::proto::{envelope::Body, Envelope, Telemetry};

#[derive(Clone)]
pub struct Publication {
    device: Arc<DeviceInfo>,
    message: Arc<Encoded>,
}

impl Publication {
    /// Stamps `telemetry` as received from `device` at `received_ms` and encodes
    /// it. The device id comes from the connection's token, never from the frame.
    pub fn new(device: Arc<DeviceInfo>, mut telemetry: Telemetry, received_ms: u64) -> Self {
        telemetry.device_id.clone_from(&device.id);
        telemetry.received_ms = received_ms;
        let message = Encoded::new(Envelope {
            body: Some(Body::Telemetry(telemetry)),
        });
        Self { device, message }
    }

    pub fn device(&self) -> &Arc<DeviceInfo> {
        &self.device
    }

    pub fn message(&self) -> &Arc<Encoded> {
        &self.message
    }

    fn telemetry(&self) -> &Telemetry {
        match &self.message.envelope().body {
            Some(Body::Telemetry(t)) => t,
            // `new` is the only constructor, and it encodes telemetry.
            _ => unreachable!("a Publication always holds telemetry"),
        }
    }

    pub fn category(&self) -> &str {
        &self.telemetry().category
    }

    pub fn received_ms(&self) -> u64 {
        self.telemetry().received_ms
    }
}
