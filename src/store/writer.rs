//! The writer thread: group commits of [`Op`]s (see the module doc of `store`).
//!
//! Invariants:
//! - a job's completion is sent only after the transaction holding its op has
//!   committed;
//! - an op nobody waits for was already applied in memory (an ack, a write to a
//!   device, a registration): it is never dropped. When the store cannot write
//!   (disk full, read-only, I/O error), such ops are kept, in order, and the batch
//!   is tried again with back-off until it commits; ops with a waiter (a new
//!   notification, a barrier) get the error at once, so their callers can say 503;
//! - what is kept is bounded ([`MAX_BATCH`] ops): beyond, new ops wait in the
//!   queue and then their senders wait, which slows the sessions down; nothing is
//!   lost while the process runs. Only a shutdown while the store still fails
//!   loses the kept ops, and says how many.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use rusqlite::{ffi::ErrorCode, params, Connection};
use tokio::sync::mpsc;

use super::{Done, Health, Job, Op, StoreError, MAX_BATCH};

/// Writer throughput (shared with the metrics registry).
#[derive(Clone, Default)]
pub struct Stats {
    pub ops: Counter,
    pub commits: Counter,
}

/// Waits between attempts while the store cannot write.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a shutdown keeps trying to commit what is kept.
const SHUTDOWN_TRIES: Duration = Duration::from_secs(5);

pub fn spawn(
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    stats: Stats,
    health: Arc<Health>,
) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("telehub-store".into())
        .spawn(move || run(conn, rx, &stats, &health))
        .map(|_| ())
        .map_err(|source| StoreError::Io {
            path: super::FILE.into(),
            source,
        })
}

/// Runs until every sender is gone (the hub shut down), committing what is queued.
fn run(mut conn: Connection, mut rx: mpsc::Receiver<Job>, stats: &Stats, health: &Health) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut kept: Vec<Job> = Vec::new();
    let mut wait = RETRY_MIN;
    let mut limit = u64::MAX;
    let mut read_only = false;
    let mut closed = false;
    let mut closed_at = None;
    loop {
        if kept.is_empty() {
            if closed {
                break;
            }
            match rx.blocking_recv() {
                Some(first) => batch.push(first),
                None => break,
            }
        } else {
            batch.append(&mut kept);
        }
        while batch.len() < MAX_BATCH && !closed {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
            }
        }
        let refuse = health.read_only.load(Ordering::Relaxed);
        if refuse != read_only {
            match conn.pragma_update(None, "query_only", refuse) {
                Ok(()) => read_only = refuse,
                Err(e) => tracing::error!(error = %e, "switching the store's writes"),
            }
        }
        let wanted = health.max_pages.load(Ordering::Relaxed);
        if wanted != limit {
            match conn.pragma_update(None, "max_page_count", wanted.min(MAX_PAGES) as i64) {
                Ok(()) => limit = wanted,
                Err(e) => tracing::error!(error = %e, "setting the store's size limit"),
            }
        }
        match apply_batch(&mut conn, &batch) {
            Ok(results) => {
                stats.ops.inc_by(batch.len() as u64);
                stats.commits.inc();
                if !health.ok.swap(true, Ordering::Relaxed) {
                    tracing::info!("the store writes again: every kept change is committed");
                }
                wait = RETRY_MIN;
                health.kept.store(0, Ordering::Relaxed);
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
                if health.ok.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %e, "the store cannot write: changes already made are kept and retried, new notifications are refused (503) until it can");
                }
                let message = e.to_string();
                for job in batch.drain(..) {
                    match job.done {
                        Some(done) => {
                            let _ = done.send(Err(StoreError::CommitFailed(message.clone())));
                        }
                        None => kept.push(job),
                    }
                }
                health.kept.store(kept.len(), Ordering::Relaxed);
                if closed {
                    let since = *closed_at.get_or_insert_with(Instant::now);
                    if since.elapsed() >= SHUTDOWN_TRIES {
                        tracing::error!(
                            lost = kept.len(),
                            "shutting down while the store cannot write: these changes are lost"
                        );
                        break;
                    }
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

/// SQLite's largest page count (what "no limit" sets).
const MAX_PAGES: u64 = 4_294_967_294;

/// Whether an error says the store cannot write now (the same op may succeed
/// later), as opposed to an op that is wrong in itself.
fn cannot_write(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DiskFull
                | ErrorCode::ReadOnly
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::FileLockingProtocolFailed
        )
    )
}

/// One transaction for the whole batch, one savepoint per op. An op that fails
/// because the store cannot write fails the whole batch.
fn apply_batch(
    conn: &mut Connection,
    batch: &[Job],
) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
    let mut tx = conn.transaction()?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let mut sp = tx.savepoint()?;
        let result = apply(&sp, &job.op);
        match result {
            Ok(_) => sp.commit()?,
            Err(StoreError::Sqlite(e)) if cannot_write(&e) => return Err(StoreError::Sqlite(e)),
            Err(_) => sp.rollback()?,
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
