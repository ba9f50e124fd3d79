//! What the store holds and answers, the same for every backend: the rows of the
//! registry and of notifications, the states of deliveries and their counts.

use std::collections::BTreeMap;

/// Where one device stands with one notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeliveryState {
    /// Not yet sent to the device.
    Pending = 0,
    /// Sent; for critical notifications, not yet acknowledged.
    Delivered = 1,
    Acknowledged = 2,
    /// Expired before it was acknowledged (critical) or delivered (others).
    Expired = 3,
}

impl DeliveryState {
    pub fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            0 => Self::Pending,
            1 => Self::Delivered,
            2 => Self::Acknowledged,
            3 => Self::Expired,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Acknowledged => "acknowledged",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Delivered,
            Self::Acknowledged,
            Self::Expired,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// A notification as created, before it has a sequence number.
#[derive(Clone, Debug)]
pub struct NewNotification {
    pub id: String,
    pub severity: i32,
    pub title: String,
    pub body: String,
    pub payload: Vec<u8>,
    /// The request's targets as JSON, kept for display.
    pub targets_json: String,
    pub created_by: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: String,
    pub tags: BTreeMap<String, String>,
    pub registered_ms: u64,
    /// `None` until it first connects.
    pub last_seen_ms: Option<u64>,
}

/// A stored notification.
#[derive(Clone, Debug)]
pub struct CampaignRow {
    pub seq: i64,
    pub notification: NewNotification,
    pub completed_ms: Option<u64>,
}

/// An open notification with every device's state, as loaded at startup.
#[derive(Debug)]
pub struct LoadedCampaign {
    pub row: CampaignRow,
    /// (device, state, attempts so far)
    pub deliveries: Vec<(String, DeliveryState, u32)>,
}

/// What the store held at startup.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub devices: Vec<DeviceRow>,
    /// Notifications not yet completed, oldest first.
    pub campaigns: Vec<LoadedCampaign>,
}

/// Deliveries by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: u64,
    pub delivered: u64,
    pub acknowledged: u64,
    pub expired: u64,
}

impl Counts {
    pub fn add(&mut self, state: DeliveryState, n: u64) {
        match state {
            DeliveryState::Pending => self.pending += n,
            DeliveryState::Delivered => self.delivered += n,
            DeliveryState::Acknowledged => self.acknowledged += n,
            DeliveryState::Expired => self.expired += n,
        }
    }

    pub fn remove(&mut self, state: DeliveryState) {
        let slot = match state {
            DeliveryState::Pending => &mut self.pending,
            DeliveryState::Delivered => &mut self.delivered,
            DeliveryState::Acknowledged => &mut self.acknowledged,
            DeliveryState::Expired => &mut self.expired,
        };
        *slot = slot.saturating_sub(1);
    }

    pub fn total(&self) -> u64 {
        self.pending + self.delivered + self.acknowledged + self.expired
    }
}

/// One device's delivery of one notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRow {
    pub device_id: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_sent_ms: Option<u64>,
    pub acked_ms: Option<u64>,
}

/// `GET /v1/notifications/{id}`.
#[derive(Debug)]
pub struct Status {
    pub campaign: CampaignRow,
    pub counts: Counts,
    /// One page of devices, ordered by device id.
    pub devices: Vec<DeliveryRow>,
    /// The device id to continue after, when there are more.
    pub next: Option<String>,
}

/// `GET /v1/notifications`.
#[derive(Debug)]
pub struct Summary {
    pub campaign: CampaignRow,
    pub counts: Counts,
}

/// What a revocation covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationKind {
    /// One token, by its `jti`.
    Token,
    /// Every token of a subject issued before an instant.
    Subject,
}

impl RevocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Subject => "subject",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "token" => Some(Self::Token),
            "subject" => Some(Self::Subject),
            _ => None,
        }
    }
}

/// A stored revocation. Kept until `expires_ms`, when the tokens it covers have
/// expired anyway; one per (kind, value): revoking again widens it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    pub kind: RevocationKind,
    /// The `jti` (kind `token`) or the subject (kind `subject`).
    pub value: String,
    /// Kind `subject`: tokens whose `iat` is before this instant are covered.
    pub issued_before_ms: u64,
    pub expires_ms: u64,
    pub created_ms: u64,
    /// The operator who revoked.
    pub created_by: String,
}

impl Revocation {
    /// A row as both backends store it.
    pub(crate) fn from_row(
        kind: &str,
        value: String,
        issued_before_ms: i64,
        expires_ms: i64,
        created_ms: i64,
        created_by: String,
    ) -> Result<Self, super::StoreError> {
        let kind = RevocationKind::parse(kind)
            .ok_or_else(|| super::StoreError::Invalid(format!("revocation kind {kind:?}")))?;
        Ok(Revocation {
            kind,
            value,
            issued_before_ms: issued_before_ms.max(0) as u64,
            expires_ms: expires_ms.max(0) as u64,
            created_ms: created_ms.max(0) as u64,
            created_by,
        })
    }
}
