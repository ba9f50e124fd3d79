//! PostgreSQL's side of the writer: one batch in one transaction, its statements
//! *pipelined* (sent without waiting for each answer, and executed in order), and
//! its writes and acks folded into a few statements over arrays ([`Step`]),
//! so 10,000 acks cost a few round trips and a few statements rather than 10,000.
//!
//! An op that is wrong in itself (a duplicate id) aborts a pipelined transaction:
//! the batch is then applied again one op at a time, each in a savepoint, so that
//! op fails alone. A failure of the database or of the link to it (connection
//! lost, server shutting down, disk full, a deadlock between nodes) fails the
//! whole batch for the writer to try again: see [`cannot_write`].

use std::error::Error as _;

use deadpool_postgres::Object;
use tokio_postgres::Statement;

use super::Db;
use crate::store::{writer::Backend, Done, Op, StoreError};

/// The stored severity of CRITICAL notifications (open until acknowledged).
const CRITICAL: i32 = crate::proto::notification::Severity::Critical as i32;

/// A registration (no `last_seen_ms`) replaces the tags; a connection (with one)
/// adds its token's tags to those registered, which another node may have
/// written since this one last read them.
const DEVICE: &str = "INSERT INTO devices (id, tags, registered_ms, last_seen_ms)
     VALUES ($1, ($2::text)::jsonb, $3, $4)
     ON CONFLICT (id) DO UPDATE SET
         tags = CASE WHEN excluded.last_seen_ms IS NULL THEN excluded.tags
                     ELSE devices.tags || excluded.tags END,
         last_seen_ms = coalesce(excluded.last_seen_ms, devices.last_seen_ms)";
const CREATE: &str = "WITH n AS (
         INSERT INTO notifications
             (id, severity, title, body, payload, targets, created_by, created_ms, expires_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq),
     d AS (INSERT INTO deliveries (notification, device_id)
           SELECT n.seq, unnest($10::text[]) FROM n)
     SELECT seq FROM n";
const SENT: &str = "UPDATE deliveries SET state = CASE WHEN state = 0 THEN 1 ELSE state END,
         attempts = attempts + 1, last_sent_ms = $3
     WHERE notification = $1 AND device_id = $2";
const ACKED: &str = "UPDATE deliveries SET state = 2, acked_ms = $3
     WHERE notification = $1 AND device_id = $2 AND state < 2";
const EXPIRE: &str = "UPDATE deliveries SET state = 3 WHERE notification = $1 AND state < $2";
const COMPLETE: &str =
    "UPDATE notifications SET completed_ms = $2 WHERE seq = $1 AND completed_ms IS NULL";
const EXPIRE_DUE: &str = "UPDATE deliveries d SET state = 3 FROM notifications n
     WHERE d.notification = n.seq AND n.completed_ms IS NULL AND n.expires_ms <= $1
       AND (d.state = 0 OR (d.state = 1 AND n.severity = $2))";
const COMPLETE_DONE: &str = "UPDATE notifications n SET completed_ms = $1
     WHERE n.completed_ms IS NULL AND NOT EXISTS (
         SELECT 1 FROM deliveries d WHERE d.notification = n.seq
           AND (d.state = 0 OR (d.state = 1 AND n.severity = $2)))";
const REVOKE: &str = "INSERT INTO revocations
         (kind, value, issued_before_ms, expires_ms, created_ms, created_by)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (kind, value) DO UPDATE SET
         issued_before_ms = greatest(revocations.issued_before_ms, excluded.issued_before_ms),
         expires_ms = greatest(revocations.expires_ms, excluded.expires_ms),
         created_ms = excluded.created_ms, created_by = excluded.created_by";
const PRUNE_REVOCATIONS: &str = "DELETE FROM revocations WHERE expires_ms <= $1";
const PRUNE: &str =
    "DELETE FROM notifications WHERE completed_ms IS NOT NULL AND completed_ms < $1";

/// The writer's handle on the pool (one connection per batch, usually the same).
pub(crate) struct Writer {
    db: Db,
}

impl Writer {
    pub(super) fn new(db: Db) -> Self {
        Writer { db }
    }
}

impl Backend for Writer {
    async fn apply_batch(
        &mut self,
        ops: &[&Op],
    ) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
        let mut client = self.db.client().await?;
        match pipelined(&mut client, ops).await {
            Ok(done) => Ok(done.into_iter().map(Ok).collect()),
            Err(e) if cannot_write(&e) => Err(e.into()),
            Err(e) => {
                tracing::debug!(error = %e, "a batch failed: applying its ops one by one");
                one_by_one(&mut client, ops).await
            }
        }
    }
}

/// Whether an error says the database cannot write now (the same batch may
/// succeed later), as opposed to an op that is wrong in itself.
fn cannot_write(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return true;
    }
    match e.code().map(|c| c.code()) {
        // Connection exceptions, insufficient resources (disk full, out of
        // memory), operator intervention (shutting down), system errors, and
        // a conflict with another node's transaction.
        Some(c) => {
            ["08", "53", "57", "58", "XX"]
                .iter()
                .any(|class| c.starts_with(class))
                || matches!(c, "40001" | "40P01" | "25006")
        }
        // No SQLSTATE: the link failed (a timeout, a protocol error).
        None => e.as_db_error().is_none() && e.source().is_none(),
    }
}

/// A segment's `Sent` ops as one statement (see [`Step`]): each delivery once,
/// with its writes counted and its latest time.
const SENT_MANY: &str = "UPDATE deliveries d
     SET state = CASE WHEN d.state = 0 THEN 1 ELSE d.state END,
         attempts = d.attempts + u.n, last_sent_ms = u.at
     FROM unnest($1::bigint[], $2::text[], $3::int[], $4::bigint[]) AS u(seq, device, n, at)
     WHERE d.notification = u.seq AND d.device_id = u.device";
/// A segment's `Acked` ops as one statement (each delivery's first ack).
const ACKED_MANY: &str = "UPDATE deliveries d SET state = 2, acked_ms = u.at
     FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u(seq, device, at)
     WHERE d.notification = u.seq AND d.device_id = u.device AND d.state < 2";

/// What the pipeline sends: one op, or all the writes or all the acks of a
/// *segment* (the ops between two that change notifications: a creation, an
/// expiry, a completion, a prune), which cost PostgreSQL one statement over
/// arrays instead of one per device.
///
/// Why folding keeps the ops' meaning: a write and an ack commute (a write never
/// lowers a state: acknowledged stays acknowledged, and the write is counted
/// either way), both commute with registrations (another table) and barriers,
/// and a segment never crosses an op they do not commute with (an ack after an
/// expiry must stay refused). The deliveries of a run are sorted, so that nodes
/// lock rows in one order.
enum Step<'a> {
    /// An op by itself, at this index of the batch.
    One(usize, &'a Op),
    /// (sequence, device) → (writes, latest time).
    Sent(std::collections::BTreeMap<(i64, &'a str), (i32, i64)>),
    /// (sequence, device) → first ack time.
    Acked(std::collections::BTreeMap<(i64, &'a str), i64>),
}

fn steps<'a>(ops: &[&'a Op]) -> Vec<Step<'a>> {
    let mut out: Vec<Step<'a>> = Vec::new();
    let mut sent = std::collections::BTreeMap::new();
    let mut acked = std::collections::BTreeMap::new();
    let flush = |out: &mut Vec<Step<'a>>,
                 sent: &mut std::collections::BTreeMap<_, _>,
                 acked: &mut std::collections::BTreeMap<_, _>| {
        if !sent.is_empty() {
            out.push(Step::Sent(std::mem::take(sent)));
        }
        if !acked.is_empty() {
            out.push(Step::Acked(std::mem::take(acked)));
        }
    };
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Sent { seq, device, at_ms } => {
                let e: &mut (i32, i64) = sent.entry((*seq, device.as_str())).or_insert((0, 0));
                *e = (e.0 + 1, e.1.max(*at_ms as i64));
            }
            Op::Acked { seq, device, at_ms } => {
                acked
                    .entry((*seq, device.as_str()))
                    .or_insert(*at_ms as i64);
            }
            // Other tables: they commute with writes and acks.
            Op::Device { .. } | Op::Revoke(_) | Op::PruneRevocations { .. } | Op::Barrier => {
                out.push(Step::One(i, op))
            }
            _ => {
                flush(&mut out, &mut sent, &mut acked);
                out.push(Step::One(i, op));
            }
        }
    }
    flush(&mut out, &mut sent, &mut acked);
    out
}

/// Every op in one transaction, pipelined. Writes and acks answer
/// `Done::Nothing` (nothing waits on their row counts).
async fn pipelined(client: &mut Object, ops: &[&Op]) -> Result<Vec<Done>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let steps = steps(ops);
    // Prepared one after the other before anything runs, so the pipeline below
    // sends the statements in the steps' order.
    let mut statements = Vec::with_capacity(steps.len());
    for step in &steps {
        let sql = match step {
            Step::One(_, op) => sql(op),
            Step::Sent(..) => Some(SENT_MANY),
            Step::Acked(..) => Some(ACKED_MANY),
        };
        statements.push(match sql {
            Some(sql) => Some(tx.prepare_cached(sql).await?),
            None => None,
        });
    }
    let answers =
        futures_util::future::try_join_all(steps.iter().zip(&statements).map(|(step, stmt)| {
            let tx = &tx;
            async move {
                match (step, stmt) {
                    (Step::One(i, op), stmt) => Ok(Some((*i, apply(tx, stmt.as_ref(), op).await?))),
                    (Step::Sent(run), Some(stmt)) => {
                        let (seqs, devices): (Vec<i64>, Vec<&str>) = run.keys().copied().unzip();
                        let (writes, at): (Vec<i32>, Vec<i64>) = run.values().copied().unzip();
                        tx.execute(stmt, &[&seqs, &devices, &writes, &at]).await?;
                        Ok(None)
                    }
                    (Step::Acked(run), Some(stmt)) => {
                        let (seqs, devices): (Vec<i64>, Vec<&str>) = run.keys().copied().unzip();
                        let at: Vec<i64> = run.values().copied().collect();
                        tx.execute(stmt, &[&seqs, &devices, &at]).await?;
                        Ok(None)
                    }
                    // A run always has its statement.
                    (_, None) => Ok(None),
                }
            }
        }))
        .await?;
    tx.commit().await?;
    let mut done: Vec<Done> = std::iter::repeat_with(|| Done::Nothing)
        .take(ops.len())
        .collect();
    for (i, d) in answers.into_iter().flatten() {
        done[i] = d;
    }
    Ok(done)
}

/// Every op in one transaction, each in a savepoint: one that fails on its own
/// fails alone.
async fn one_by_one(
    client: &mut Object,
    ops: &[&Op],
) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
    let mut tx = client.transaction().await?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let sp = tx.transaction().await?;
        let stmt = match sql(op) {
            Some(sql) => Some(sp.prepare_cached(sql).await?),
            None => None,
        };
        match apply(&sp, stmt.as_ref(), op).await {
            Ok(done) => {
                sp.commit().await?;
                results.push(Ok(done));
            }
            Err(e) if cannot_write(&e) => return Err(e.into()),
            Err(e) => {
                sp.rollback().await?;
                results.push(Err(e.into()));
            }
        }
    }
    tx.commit().await?;
    Ok(results)
}

fn sql(op: &Op) -> Option<&'static str> {
    Some(match op {
        Op::Device { .. } => DEVICE,
        Op::Create { .. } => CREATE,
        Op::Sent { .. } => SENT,
        Op::Acked { .. } => ACKED,
        Op::Expire { .. } => EXPIRE,
        Op::Complete { .. } => COMPLETE,
        Op::ExpireDue { .. } => EXPIRE_DUE,
        Op::CompleteDone { .. } => COMPLETE_DONE,
        Op::Prune { .. } => PRUNE,
        Op::Revoke(_) => REVOKE,
        Op::PruneRevocations { .. } => PRUNE_REVOCATIONS,
        Op::Barrier => return None,
    })
}

/// One op's statement (`stmt`: its [`sql`], prepared).
async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    stmt: Option<&Statement>,
    op: &Op,
) -> Result<Done, tokio_postgres::Error> {
    let Some(stmt) = stmt else {
        return Ok(Done::Nothing);
    };
    let ms = |v: u64| v as i64;
    let rows = |n: u64| Done::Rows(n as usize);
    Ok(match op {
        Op::Device {
            id,
            tags,
            registered_ms,
            seen_ms,
        } => {
            // A map of strings always serializes.
            let tags = serde_json::to_string(tags).unwrap_or_else(|_| "{}".into());
            let seen = seen_ms.map(ms);
            tx.execute(stmt, &[id, &tags, &ms(*registered_ms), &seen])
                .await?;
            Done::Nothing
        }
        Op::Create {
            notification: n,
            devices,
        } => {
            let row = tx
                .query_one(
                    stmt,
                    &[
                        &n.id,
                        &n.severity,
                        &n.title,
                        &n.body,
                        &n.payload,
                        &n.targets_json,
                        &n.created_by,
                        &ms(n.created_ms),
                        &ms(n.expires_ms),
                        devices,
                    ],
                )
                .await?;
            Done::Seq(row.get(0))
        }
        Op::Sent { seq, device, at_ms } | Op::Acked { seq, device, at_ms } => {
            rows(tx.execute(stmt, &[seq, device, &ms(*at_ms)]).await?)
        }
        Op::Expire { seq, critical } => {
            let open_below: i32 = if *critical { 2 } else { 1 };
            rows(tx.execute(stmt, &[seq, &open_below]).await?)
        }
        Op::Complete { seq, at_ms } => rows(tx.execute(stmt, &[seq, &ms(*at_ms)]).await?),
        Op::ExpireDue { now_ms } | Op::CompleteDone { now_ms } => {
            rows(tx.execute(stmt, &[&ms(*now_ms), &CRITICAL]).await?)
        }
        Op::Prune {
            completed_before_ms,
        } => rows(tx.execute(stmt, &[&ms(*completed_before_ms)]).await?),
        Op::Revoke(r) => {
            tx.execute(
                stmt,
                &[
                    &r.kind.as_str(),
                    &r.value,
                    &ms(r.issued_before_ms),
                    &ms(r.expires_ms),
                    &ms(r.created_ms),
                    &r.created_by,
                ],
            )
            .await?;
            Done::Nothing
        }
        Op::PruneRevocations { now_ms } => rows(tx.execute(stmt, &[&ms(*now_ms)]).await?),
        Op::Barrier => Done::Nothing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(seq: i64, device: &str, at_ms: u64) -> Op {
        Op::Sent {
            seq,
            device: device.into(),
            at_ms,
        }
    }

    fn acked(seq: i64, device: &str, at_ms: u64) -> Op {
        Op::Acked {
            seq,
            device: device.into(),
            at_ms,
        }
    }

    /// Writes and acks fold into one step each per segment, across registrations
    /// and barriers; a change to notifications (here an expiry) ends a segment.
    #[test]
    fn writes_and_acks_fold_per_segment() {
        let ops = [
            sent(1, "b", 5),
            acked(1, "a", 10),
            sent(1, "a", 6),
            Op::Barrier,
            sent(1, "b", 9),
            acked(1, "a", 12),
            Op::Expire {
                seq: 1,
                critical: true,
            },
            acked(1, "b", 13),
        ];
        let refs: Vec<&Op> = ops.iter().collect();
        let steps = steps(&refs);
        assert_eq!(steps.len(), 5);
        assert!(matches!(steps[0], Step::One(3, Op::Barrier)));
        let Step::Sent(run) = &steps[1] else {
            panic!("the segment's writes")
        };
        // Sorted by delivery; b written twice, at its latest time.
        let rows: Vec<_> = run.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(rows, [((1, "a"), (1, 6)), ((1, "b"), (2, 9))]);
        let Step::Acked(run) = &steps[2] else {
            panic!("the segment's acks")
        };
        assert_eq!(run.len(), 1);
        assert_eq!(run.get(&(1, "a")), Some(&10), "the first ack's time");
        assert!(matches!(steps[3], Step::One(6, Op::Expire { .. })));
        assert!(matches!(&steps[4], Step::Acked(run) if run.len() == 1));
    }
}
