//! Frames: what one node sends the others through Redis
//! (`proto/telehub/cluster/v1/cluster.proto`), built from and read into the hub's
//! own types.
//!
//! A publication crosses as the very envelope bytes its dashboards receive, with
//! the device, category and reception time beside them: the receiving node fans
//! it out without decoding or re-encoding it. Frames of another version, or that
//! do not decode, are refused whole ([`WireError`]); nothing in a frame can make a
//! node panic.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use prost::Message as _;

use crate::{
    hub::{
        history::Kept, DeviceInfo, Filter, NodeId, Pattern, PresenceChange, Publication, WireFormat,
    },
    proto::{cluster as pb, DeviceStats},
};

/// The version of `cluster.proto` this node speaks.
pub const VERSION: u32 = 1;

/// The first byte of an `Envelope` carrying `Telemetry` (field 1, length-delimited).
const TELEMETRY_KEY: u8 = 1 << 3 | 2;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("frame of version {0} (this node speaks {VERSION})")]
    Version(u32),
    #[error("frame without a body")]
    Empty,
    #[error("a publication of {device:?} does not carry telemetry")]
    NotTelemetry { device: String },
}

/// What one frame said.
pub enum Said {
    Publications(Vec<Publication>),
    Presence(PresenceChange),
    Takeover(Arc<DeviceInfo>, u64),
    /// Everything the node holds now.
    Owned(Vec<(Arc<DeviceInfo>, u64)>),
    Leaving,
    NotificationsCreated,
    RevocationsChanged,
    HistoryRequest {
        id: u64,
        patterns: Vec<Pattern>,
        filter: Filter,
    },
    HistoryReply {
        id: u64,
        series: Vec<Kept>,
        last: bool,
    },
    Counts(Vec<DeviceStats>),
}

/// A frame from another node.
pub struct Received {
    pub node: NodeId,
    pub node_name: String,
    pub said: Said,
}

/// Builds this node's frames.
pub struct Writer {
    node: NodeId,
    name: String,
}

impl Writer {
    pub fn new(node: NodeId, name: &str) -> Self {
        Self {
            node,
            name: name.to_owned(),
        }
    }

    fn frame(&self, body: pb::frame::Body) -> Vec<u8> {
        pb::Frame {
            version: VERSION,
            node: self.node,
            node_name: self.name.clone(),
            body: Some(body),
        }
        .encode_to_vec()
    }

    /// One frame for publications of one category, oldest first.
    pub fn publications<'a>(&self, items: impl Iterator<Item = &'a Publication>) -> Vec<u8> {
        let items = items.map(publication).collect();
        self.frame(pb::frame::Body::Publications(pb::Publications { items }))
    }

    pub fn presence(&self, change: &PresenceChange) -> Vec<u8> {
        self.frame(pb::frame::Body::Presence(pb::Presence {
            device: Some(device(&change.device)),
            online: change.online,
            at_ms: change.at_ms,
        }))
    }

    pub fn takeover(&self, info: &DeviceInfo, at_ms: u64) -> Vec<u8> {
        self.frame(pb::frame::Body::Takeover(pb::Takeover {
            device: Some(device(info)),
            at_ms,
        }))
    }

    pub fn owned(&self, devices: &[(Arc<DeviceInfo>, u64)]) -> Vec<u8> {
        let devices = devices.iter().map(|(d, since)| held(d, *since)).collect();
        self.frame(pb::frame::Body::Owned(pb::Owned { devices }))
    }

    pub fn leaving(&self) -> Vec<u8> {
        self.frame(pb::frame::Body::Leaving(pb::Leaving {}))
    }

    pub fn notifications_created(&self) -> Vec<u8> {
        self.frame(pb::frame::Body::NotificationsCreated(
            pb::NotificationsCreated {},
        ))
    }

    pub fn revocations_changed(&self) -> Vec<u8> {
        self.frame(pb::frame::Body::RevocationsChanged(
            pb::RevocationsChanged {},
        ))
    }

    pub fn counts(&self, devices: &[DeviceStats]) -> Vec<u8> {
        let devices = devices
            .iter()
            .map(|d| pb::DeviceCount {
                device: d.device_id.clone(),
                messages: d.messages,
                rate_limited: d.rate_limited,
                dropped: d.dropped,
                last_seen_ms: d.last_seen_ms,
                categories: d.categories.clone(),
            })
            .collect();
        self.frame(pb::frame::Body::Counts(pb::Counts { devices }))
    }

    pub fn history_request(&self, id: u64, patterns: &[Pattern], filter: &Filter) -> Vec<u8> {
        self.frame(pb::frame::Body::HistoryRequest(pb::HistoryRequest {
            id,
            patterns: patterns.iter().map(Pattern::to_string).collect(),
            device_ids: filter.device_ids.iter().cloned().collect(),
            tags: filter.tags.clone(),
        }))
    }

    pub fn history_reply(&self, id: u64, series: &[Kept], last: bool) -> Vec<u8> {
        let series = series
            .iter()
            .map(|k| pb::Series {
                device: k.device.clone(),
                category: k.category.clone(),
                last_ms: k.last_ms,
                envelopes: k.messages.clone(),
            })
            .collect();
        self.frame(pb::frame::Body::HistoryReply(pb::HistoryReply {
            id,
            series,
            last,
        }))
    }
}

fn device(info: &DeviceInfo) -> pb::Device {
    pb::Device {
        id: info.id.clone(),
        tags: info.tags.clone(),
        certificate: info.by_certificate,
    }
}

fn held(info: &DeviceInfo, since_ms: u64) -> pb::Held {
    pb::Held {
        device: Some(device(info)),
        since_ms,
    }
}

fn publication(p: &Publication) -> pb::Publication {
    pb::Publication {
        device: Some(device(p.device())),
        category: p.category().to_owned(),
        received_ms: p.received_ms(),
        envelope: p.message().message(WireFormat::Protobuf).payload().clone(),
    }
}

/// The value of a device in a node's hash of held devices.
pub fn held_value(info: &DeviceInfo, since_ms: u64) -> Vec<u8> {
    held(info, since_ms).encode_to_vec()
}

/// Reads frames, sharing one `DeviceInfo` per device across publications (a
/// publication would otherwise allocate its device's id and tags again).
#[derive(Default)]
pub struct Reader {
    devices: HashMap<String, Arc<DeviceInfo>>,
}

/// Devices a [`Reader`] remembers before it starts over.
const MAX_DEVICES: usize = 250_000;

impl Reader {
    pub fn read(&mut self, bytes: Bytes) -> Result<Received, WireError> {
        let frame = pb::Frame::decode(bytes)?;
        if frame.version != VERSION {
            return Err(WireError::Version(frame.version));
        }
        let said = match frame.body.ok_or(WireError::Empty)? {
            pb::frame::Body::Publications(p) => {
                let mut out = Vec::with_capacity(p.items.len());
                for item in p.items {
                    let device = self.device(item.device.unwrap_or_default());
                    if item.envelope.first() != Some(&TELEMETRY_KEY) {
                        return Err(WireError::NotTelemetry {
                            device: device.id.clone(),
                        });
                    }
                    out.push(Publication::forwarded(
                        device,
                        item.category,
                        item.received_ms,
                        item.envelope,
                    ));
                }
                Said::Publications(out)
            }
            pb::frame::Body::Presence(p) => Said::Presence(PresenceChange {
                device: self.device(p.device.unwrap_or_default()),
                online: p.online,
                at_ms: p.at_ms,
            }),
            pb::frame::Body::Takeover(t) => {
                Said::Takeover(self.device(t.device.unwrap_or_default()), t.at_ms)
            }
            pb::frame::Body::Owned(o) => Said::Owned(
                o.devices
                    .into_iter()
                    .map(|h| (self.device(h.device.unwrap_or_default()), h.since_ms))
                    .collect(),
            ),
            pb::frame::Body::Leaving(_) => Said::Leaving,
            pb::frame::Body::NotificationsCreated(_) => Said::NotificationsCreated,
            pb::frame::Body::RevocationsChanged(_) => Said::RevocationsChanged,
            pb::frame::Body::Counts(c) => Said::Counts(
                c.devices
                    .into_iter()
                    .map(|d| DeviceStats {
                        device_id: d.device,
                        messages: d.messages,
                        rate_limited: d.rate_limited,
                        dropped: d.dropped,
                        last_seen_ms: d.last_seen_ms,
                        categories: d.categories,
                        ..Default::default()
                    })
                    .collect(),
            ),
            pb::frame::Body::HistoryRequest(r) => Said::HistoryRequest {
                id: r.id,
                // A pattern this node cannot read matches nothing here.
                patterns: r
                    .patterns
                    .iter()
                    .filter_map(|p| Pattern::parse(p).ok())
                    .collect(),
                filter: Filter {
                    device_ids: r.device_ids.into_iter().collect(),
                    tags: r.tags,
                },
            },
            pb::frame::Body::HistoryReply(r) => Said::HistoryReply {
                id: r.id,
                series: r
                    .series
                    .into_iter()
                    .map(|s| Kept {
                        device: s.device,
                        category: s.category,
                        last_ms: s.last_ms,
                        messages: s
                            .envelopes
                            .into_iter()
                            .filter(|e| e.first() == Some(&TELEMETRY_KEY))
                            .collect(),
                    })
                    .collect(),
                last: r.last,
            },
        };
        Ok(Received {
            node: frame.node,
            node_name: frame.node_name,
            said,
        })
    }

    /// A value of a node's hash of held devices.
    pub fn held(&mut self, bytes: Bytes) -> Result<(Arc<DeviceInfo>, u64), WireError> {
        let h = pb::Held::decode(bytes)?;
        Ok((self.device(h.device.unwrap_or_default()), h.since_ms))
    }

    fn device(&mut self, d: pb::Device) -> Arc<DeviceInfo> {
        if let Some(known) = self.devices.get(&d.id) {
            if known.tags == d.tags && known.by_certificate == d.certificate {
                return known.clone();
            }
        }
        if self.devices.len() >= MAX_DEVICES {
            self.devices.clear();
        }
        let info = Arc::new(DeviceInfo {
            id: d.id,
            tags: d.tags,
            by_certificate: d.certificate,
        });
        self.devices.insert(info.id.clone(), info.clone());
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{envelope::Body, reading::Value, Envelope, Reading, Telemetry};

    fn info(id: &str) -> Arc<DeviceInfo> {
        Arc::new(DeviceInfo {
            id: id.into(),
            tags: [("fleet".to_owned(), "north".to_owned())].into(),
            ..Default::default()
        })
    }

    fn telemetry(seq: u64) -> Telemetry {
        Telemetry {
            category: "env.t".into(),
            seq,
            readings: vec![Reading {
                name: "t".into(),
                value: Some(Value::Number(21.5)),
                unit: "Cel".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn publications_cross_as_the_bytes_dashboards_receive() {
        let w = Writer::new(7, "node-a");
        let sent: Vec<Publication> = (1..=3)
            .map(|n| Publication::new(info("d1"), telemetry(n), 1000 + n))
            .collect();
        let frame = w.publications(sent.iter());
        let mut r = Reader::default();
        let got = r.read(Bytes::from(frame)).unwrap();
        assert_eq!((got.node, got.node_name.as_str()), (7, "node-a"));
        let Said::Publications(got) = got.said else {
            panic!("not publications")
        };
        assert_eq!(got.len(), 3);
        for (a, b) in sent.iter().zip(&got) {
            assert_eq!(a.category(), b.category());
            assert_eq!(a.received_ms(), b.received_ms());
            assert_eq!(a.device(), b.device());
            assert_eq!(
                a.message().message(WireFormat::Protobuf).payload(),
                b.message().message(WireFormat::Protobuf).payload()
            );
            let Some(Body::Telemetry(t)) = &b.message().envelope().body else {
                panic!("not telemetry");
            };
            assert_eq!(t.device_id, "d1");
        }
        assert!(
            Arc::ptr_eq(got[0].device(), got[2].device()),
            "one DeviceInfo per device"
        );
    }

    #[test]
    fn bad_frames_are_refused_whole() {
        let mut r = Reader::default();
        assert!(matches!(
            r.read(Bytes::from_static(b"\xff\xff\xff")),
            Err(WireError::Decode(_))
        ));
        let future = pb::Frame {
            version: 2,
            ..Default::default()
        };
        assert!(matches!(
            r.read(Bytes::from(future.encode_to_vec())),
            Err(WireError::Version(2))
        ));
        let empty = pb::Frame {
            version: VERSION,
            ..Default::default()
        };
        assert!(matches!(
            r.read(Bytes::from(empty.encode_to_vec())),
            Err(WireError::Empty)
        ));
        // A publication whose envelope is not telemetry.
        let notice = Envelope {
            body: Some(Body::Error(Default::default())),
        };
        let frame = pb::Frame {
            version: VERSION,
            body: Some(pb::frame::Body::Publications(pb::Publications {
                items: vec![pb::Publication {
                    envelope: Bytes::from(notice.encode_to_vec()),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        assert!(matches!(
            r.read(Bytes::from(frame.encode_to_vec())),
            Err(WireError::NotTelemetry { .. })
        ));
    }

    #[test]
    fn presence_takeover_and_holdings_round_trip() {
        let w = Writer::new(1, "n");
        let mut r = Reader::default();
        let change = PresenceChange {
            device: info("d"),
            online: true,
            at_ms: 5,
        };
        match r.read(Bytes::from(w.presence(&change))).unwrap().said {
            Said::Presence(c) => {
                assert_eq!(
                    (c.device.as_ref(), c.online, c.at_ms),
                    (info("d").as_ref(), true, 5)
                )
            }
            _ => panic!("not presence"),
        }
        match r.read(Bytes::from(w.takeover(&info("d"), 9))).unwrap().said {
            Said::Takeover(d, at) => assert_eq!((d.id.as_str(), at), ("d", 9)),
            _ => panic!("not a takeover"),
        }
        let owned = vec![(info("a"), 1), (info("b"), 2)];
        match r.read(Bytes::from(w.owned(&owned))).unwrap().said {
            Said::Owned(o) => assert_eq!(o, owned),
            _ => panic!("not owned"),
        }
        let (d, since) = r.held(Bytes::from(held_value(&info("a"), 3))).unwrap();
        assert_eq!((d.id.as_str(), since), ("a", 3));
        assert!(matches!(
            r.read(Bytes::from(w.leaving())).unwrap().said,
            Said::Leaving
        ));
        assert!(matches!(
            r.read(Bytes::from(w.notifications_created())).unwrap().said,
            Said::NotificationsCreated
        ));
        assert!(matches!(
            r.read(Bytes::from(w.revocations_changed())).unwrap().said,
            Said::RevocationsChanged
        ));
    }
}
