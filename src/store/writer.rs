//! The writer thread: group commits of [`Op`]s (see the module doc of `store`).
//!
//! Invariant: a job's completion is sent only after the transaction holding its op
//! has committed; if the commit fails, every job of the batch gets the error.

use prometheus_client::metrics::counter::Counter;
use rusqlite::{params, Connection};
use tokio::sync::mpsc;

use super::{Done, Job, Op, StoreError, MAX_BATCH};

/// Writer throughput (shared with the metrics registry).
#[derive(Clone, Default)]
pub struct Stats {
    pub ops: Counter,
    pub commits: Counter,
}

pub fn spawn(conn: Connection, rx: mpsc::Receiver<Job>, stats: Stats) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("telehub-store".into())
        .spawn(move || run(conn, rx, &stats))
        .map(|_| ())
        .map_err(|source| StoreError::Io {
            path: super::FILE.into(),
            source,
        })
}

/// Runs until every sender is gone (the hub shut down), committing what is queued.
fn run(mut conn: Connection, mut rx: mpsc::Receiver<Job>, stats: &Stats) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = apply_batch(&mut conn, &batch);
        stats.ops.inc_by(batch.len() as u64);
        stats.commits.inc();
        match results {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    if let Err(e) = &result {
                        tracing::error!(error = %e, op = ?job.op, "store op failed");
                    }
                    if let Some(done) = job.done {
                        let _ = done.send(result);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = batch.len(), "store commit failed");
                let message = e.to_string();
                for job in batch.drain(..) {
                    if let Some(done) = job.done {
                        let _ = done.send(Err(StoreError::CommitFailed(message.clone())));
                    }
                }
            }
        }
    }
}

/// One transaction for the whole batch, one savepoint per op.
fn apply_batch(
    conn: &mut Connection,
    batch: &[Job],
) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
    let mut tx = conn.transaction()?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let mut sp = tx.savepoint()?;
        let result = apply(&sp, &job.op);
        if result.is_ok() {
            sp.commit()?;
        } else {
            sp.rollback()?;
        }
        results.push(result);
    }
    tx.commit()?;
    Ok(results)
}

pub(super) fn apply(tx: &Connection, op: &Op) -> Result<Done, StoreError> {
    match op {
        Op::Device {
            id,
            tags,
            registered_ms,
            seen_ms,
        } => {
            tx.prepare_cached(
                "INSERT INTO devices (id, tags, registered_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET tags = excluded.tags,
                     last_seen_ms = coalesce(excluded.last_seen_ms, last_seen_ms)",
            )?
            .execute(params![
                id,
                serde_json::to_string(tags)?,
                *registered_ms as i64,
                seen_ms.map(|v| v as i64)
            ])?;
            Ok(Done::Nothing)
        }
        Op::Create {
            notification: n,
            devices,
        } => {
            tx.prepare_cached(
                "INSERT INTO notifications
                    (id, severity, title, body, payload, targets, created_by, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                n.id,
                n.severity,
                n.title,
                n.body,
                n.payload,
                n.targets_json,
                n.created_by,
                n.created_ms as i64,
                n.expires_ms as i64
            ])?;
            let seq = tx.last_insert_rowid();
            let mut insert = tx.prepare_cached(
                "INSERT INTO deliveries (notification, device_id) VALUES (?1, ?2)",
            )?;
            for d in devices {
                insert.execute(params![seq, d])?;
            }
            Ok(Done::Seq(seq))
        }
        Op::Sent { seq, device, at_ms } => {
            tx.prepare_cached(
                "UPDATE deliveries SET state = CASE WHEN state = 0 THEN 1 ELSE state END,
                     attempts = attempts + 1, last_sent_ms = ?3
                 WHERE notification = ?1 AND device_id = ?2",
            )?
            .execute(params![seq, device, *at_ms as i64])?;
            Ok(Done::Nothing)
        }
        Op::Acked { seq, device, at_ms } => {
            let n = tx
                .prepare_cached(
                    "UPDATE deliveries SET state = 2, acked_ms = ?3
                     WHERE notification = ?1 AND device_id = ?2 AND state < 2",
                )?
                .execute(params![seq, device, *at_ms as i64])?;
            Ok(Done::Rows(n))
        }
        Op::Expire { seq, critical } => {
            let open_below = if *critical { 2 } else { 1 };
            let n = tx
                .prepare_cached(
                    "UPDATE deliveries SET state = 3 WHERE notification = ?1 AND state < ?2",
                )?
                .execute(params![seq, open_below])?;
            Ok(Done::Rows(n))
        }
        Op::Complete { seq, at_ms } => {
            tx.prepare_cached(
                "UPDATE notifications SET completed_ms = ?2 WHERE seq = ?1 AND completed_ms IS NULL",
            )?
            .execute(params![seq, *at_ms as i64])?;
            Ok(Done::Nothing)
        }
        Op::Prune {
            completed_before_ms,
        } => {
            let n = tx
                .prepare_cached(
                    "DELETE FROM notifications WHERE completed_ms IS NOT NULL AND completed_ms < ?1",
                )?
                .execute(params![*completed_before_ms as i64])?;
            Ok(Done::Rows(n))
        }
        Op::Barrier => Ok(Done::Nothing),
    }
}
