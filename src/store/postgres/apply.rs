//! PostgreSQL's side of the writer: one batch in one transaction, its statements
//! *pipelined* (sent without waiting for each answer, and executed in order), so
//! 10,000 acks cost a few round trips rather than 10,000.
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

/// Every op in one transaction, pipelined.
async fn pipelined(client: &mut Object, ops: &[&Op]) -> Result<Vec<Done>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Prepared one after the other before anything runs, so the pipeline below
    // sends the ops' statements in their order.
    let mut statements = Vec::with_capacity(ops.len());
    for op in ops {
        statements.push(match sql(op) {
            Some(sql) => Some(tx.prepare_cached(sql).await?),
            None => None,
        });
    }
    let done = futures_util::future::try_join_all(
        ops.iter()
            .zip(&statements)
            .map(|(op, stmt)| apply(&tx, stmt.as_ref(), op)),
    )
    .await?;
    tx.commit().await?;
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
        Op::Barrier => Done::Nothing,
    })
}
