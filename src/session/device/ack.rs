//! A device acknowledges a notification.
//!
//! A refused ack is a strike: a device cannot make the hub answer an unbounded
//! stream of them. Repeated acks are harmless and silent.

use super::Device;
use crate::{
    notify::AckOutcome,
    proto::{error::Code, Ack},
    session::{
        close,
        reply::{Refusal, Reply},
    },
};

impl Device {
    pub(super) async fn on_ack(&mut self, ack: Ack) -> Reply {
        match self.deliveries.ack(&ack.notification_id).await {
            AckOutcome::Accepted(_) | AckOutcome::Duplicate(_) => Reply::none(),
            AckOutcome::Unknown => Refusal::new(
                close::POLICY_VIOLATION,
                Code::UnknownNotification,
                format!(
                    "no notification {:?} was sent to this device",
                    truncate(&ack.notification_id)
                ),
            )
            .into(),
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
