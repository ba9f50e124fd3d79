//! Reads: the startup snapshot and the REST API's queries.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::store::{
    CampaignRow, Counts, DeliveryRow, DeliveryState, DeviceRow, LoadedCampaign, NewNotification,
    Revocation, Snapshot, Status, StoreError, Summary,
};

const CAMPAIGN_COLUMNS: &str = "seq, id, severity, title, body, payload, targets, created_by, created_ms, expires_ms, completed_ms";

fn campaign(r: &Row<'_>) -> rusqlite::Result<CampaignRow> {
    Ok(CampaignRow {
        seq: r.get(0)?,
        notification: NewNotification {
            id: r.get(1)?,
            severity: r.get(2)?,
            title: r.get(3)?,
            body: r.get(4)?,
            payload: r.get(5)?,
            targets_json: r.get(6)?,
            created_by: r.get(7)?,
            created_ms: r.get::<_, i64>(8)? as u64,
            expires_ms: r.get::<_, i64>(9)? as u64,
        },
        completed_ms: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
    })
}

fn state(v: i64) -> rusqlite::Result<DeliveryState> {
    DeliveryState::from_i64(v).ok_or(rusqlite::Error::IntegralValueOutOfRange(0, v))
}

fn device_row(r: &Row<'_>) -> rusqlite::Result<(String, String, i64, Option<i64>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn to_device(
    (id, tags, registered, seen): (String, String, i64, Option<i64>),
) -> Result<DeviceRow, StoreError> {
    Ok(DeviceRow {
        id,
        tags: serde_json::from_str(&tags)?,
        registered_ms: registered as u64,
        last_seen_ms: seen.map(|v| v as u64),
    })
}

pub fn load(c: &Connection) -> Result<Snapshot, StoreError> {
    let devices = c
        .prepare("SELECT id, tags, registered_ms, last_seen_ms FROM devices")?
        .query_map([], device_row)?
        .map(|r| to_device(r?))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = c
        .prepare(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM notifications WHERE completed_ms IS NULL ORDER BY seq"
        ))?
        .query_map([], campaign)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut deliveries =
        c.prepare("SELECT device_id, state, attempts FROM deliveries WHERE notification = ?1")?;
    let mut campaigns = Vec::with_capacity(rows.len());
    for row in rows {
        let d = deliveries
            .query_map([row.seq], |r| {
                Ok((r.get(0)?, state(r.get(1)?)?, r.get::<_, i64>(2)? as u32))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        campaigns.push(LoadedCampaign { row, deliveries: d });
    }
    Ok(Snapshot { devices, campaigns })
}

fn counts(c: &Connection, seq: i64) -> Result<Counts, StoreError> {
    let mut out = Counts::default();
    let mut stmt = c.prepare_cached(
        "SELECT state, COUNT(*) FROM deliveries WHERE notification = ?1 GROUP BY state",
    )?;
    let rows = stmt.query_map([seq], |r| Ok((state(r.get(0)?)?, r.get::<_, i64>(1)?)))?;
    for r in rows {
        let (st, n) = r?;
        out.add(st, n as u64);
    }
    Ok(out)
}

pub fn status(
    c: &Connection,
    id: &str,
    filter: Option<DeliveryState>,
    after: Option<&str>,
    limit: usize,
) -> Result<Option<Status>, StoreError> {
    let Some(campaign) = c
        .prepare_cached(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM notifications WHERE id = ?1"
        ))?
        .query_row([id], campaign)
        .optional()?
    else {
        return Ok(None);
    };
    let counts = counts(c, campaign.seq)?;
    let mut stmt = c.prepare_cached(
        "SELECT device_id, state, attempts, last_sent_ms, acked_ms FROM deliveries
         WHERE notification = ?1 AND device_id > ?2 AND (?3 IS NULL OR state = ?3)
         ORDER BY device_id LIMIT ?4",
    )?;
    let mut devices = stmt
        .query_map(
            params![
                campaign.seq,
                after.unwrap_or(""),
                filter.map(|s| s as i64),
                (limit + 1) as i64
            ],
            |r| {
                Ok(DeliveryRow {
                    device_id: r.get(0)?,
                    state: state(r.get(1)?)?,
                    attempts: r.get::<_, i64>(2)? as u32,
                    last_sent_ms: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    acked_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let next = if devices.len() > limit {
        devices.truncate(limit);
        devices.last().map(|d| d.device_id.clone())
    } else {
        None
    };
    Ok(Some(Status {
        campaign,
        counts,
        devices,
        next,
    }))
}

pub fn recent(c: &Connection, limit: usize) -> Result<Vec<Summary>, StoreError> {
    let rows = c
        .prepare_cached(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM notifications ORDER BY seq DESC LIMIT ?1"
        ))?
        .query_map([limit as i64], campaign)?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|campaign| {
            Ok(Summary {
                counts: counts(c, campaign.seq)?,
                campaign,
            })
        })
        .collect()
}

pub fn devices(
    c: &Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<DeviceRow>, StoreError> {
    c.prepare_cached(
        "SELECT id, tags, registered_ms, last_seen_ms FROM devices WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?
    .query_map(params![after.unwrap_or(""), limit as i64], device_row)?
    .map(|r| to_device(r?))
    .collect()
}

pub fn delivery(
    c: &Connection,
    id: &str,
    device: &str,
) -> Result<Option<(i64, i32, DeliveryState)>, StoreError> {
    Ok(c.prepare_cached(
        "SELECT n.seq, n.severity, d.state FROM notifications n
             JOIN deliveries d ON d.notification = n.seq
             WHERE n.id = ?1 AND d.device_id = ?2",
    )?
    .query_row([id, device], |r| {
        Ok((r.get(0)?, r.get(1)?, state(r.get(2)?)?))
    })
    .optional()?)
}

pub fn revocations(c: &Connection, now_ms: u64) -> Result<Vec<Revocation>, StoreError> {
    let rows = c
        .prepare_cached(
            "SELECT kind, value, issued_before_ms, expires_ms, created_ms, created_by
             FROM revocations WHERE expires_ms > ?1 ORDER BY created_ms, kind, value",
        )?
        .query_map(params![now_ms as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(kind, value, before, expires, created, by)| {
            Revocation::from_row(&kind, value, before, expires, created, by)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{apply, schema};
    use super::*;
    use crate::store::Op;

    fn new(id: &str) -> NewNotification {
        NewNotification {
            id: id.into(),
            severity: 3,
            title: "t".into(),
            body: "b".into(),
            payload: vec![1, 2],
            targets_json: "{}".into(),
            created_by: "op".into(),
            created_ms: 1,
            expires_ms: 100,
        }
    }

    #[test]
    fn ops_and_queries_round_trip() {
        let dir = std::env::temp_dir().join(format!("telehub-store-{}", rand::random::<u64>()));
        let mut c = schema::open(&dir).unwrap();
        schema::migrate(&mut c).unwrap();
        schema::migrate(&mut c).unwrap(); // idempotent
        let apply = |c: &mut Connection, op: Op| {
            let tx = c.transaction().unwrap();
            let done = apply::apply(&tx, &op).unwrap();
            tx.commit().unwrap();
            done
        };
        let seq = match apply(
            &mut c,
            Op::Create {
                notification: new("n1"),
                devices: vec!["b".into(), "a".into(), "c".into()],
            },
        ) {
            crate::store::Done::Seq(s) => s,
            other => panic!("{other:?}"),
        };
        apply(
            &mut c,
            Op::Sent {
                seq,
                device: "a".into(),
                at_ms: 5,
            },
        );
        apply(
            &mut c,
            Op::Sent {
                seq,
                device: "a".into(),
                at_ms: 6,
            },
        );
        apply(
            &mut c,
            Op::Acked {
                seq,
                device: "a".into(),
                at_ms: 7,
            },
        );
        apply(
            &mut c,
            Op::Sent {
                seq,
                device: "b".into(),
                at_ms: 8,
            },
        );
        let s = status(&c, "n1", None, None, 2).unwrap().unwrap();
        assert_eq!(
            s.counts,
            Counts {
                pending: 1,
                delivered: 1,
                acknowledged: 1,
                expired: 0
            }
        );
        assert_eq!(s.devices.len(), 2);
        assert_eq!(s.devices[0].device_id, "a");
        assert_eq!((s.devices[0].attempts, s.devices[0].acked_ms), (2, Some(7)));
        assert_eq!(s.next.as_deref(), Some("b"));
        let page2 = status(&c, "n1", None, Some("b"), 2).unwrap().unwrap();
        assert_eq!(page2.devices.len(), 1);
        assert_eq!(page2.next, None);
        let pending = status(&c, "n1", Some(DeliveryState::Pending), None, 10)
            .unwrap()
            .unwrap();
        assert_eq!(pending.devices.len(), 1);
        assert_eq!(pending.devices[0].device_id, "c");
        // A late ack after expiry does not resurrect the delivery.
        apply(
            &mut c,
            Op::Expire {
                seq,
                critical: true,
            },
        );
        apply(
            &mut c,
            Op::Acked {
                seq,
                device: "c".into(),
                at_ms: 9,
            },
        );
        let s = status(&c, "n1", None, None, 10).unwrap().unwrap();
        assert_eq!(s.counts.expired, 2);
        assert_eq!(
            delivery(&c, "n1", "a").unwrap().map(|d| d.2),
            Some(DeliveryState::Acknowledged)
        );
        assert_eq!(delivery(&c, "n1", "zz").unwrap(), None);
        assert_eq!(load(&c).unwrap().campaigns.len(), 1);
        apply(&mut c, Op::Complete { seq, at_ms: 50 });
        assert_eq!(load(&c).unwrap().campaigns.len(), 0);
        assert_eq!(recent(&c, 5).unwrap().len(), 1);
        apply(
            &mut c,
            Op::Prune {
                completed_before_ms: 51,
            },
        );
        assert!(recent(&c, 5).unwrap().is_empty());
        assert_eq!(
            status(&c, "n1", None, None, 10).unwrap().map(|s| s.counts),
            None
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
