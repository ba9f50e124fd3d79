//! SQLite's side of the writer: one batch in one transaction, one savepoint per
//! op, so an op that is wrong in itself fails alone.

use rusqlite::{ffi::ErrorCode, params, Connection};

use crate::store::{Done, Op, StoreError};

/// SQLite's largest page count (what "no limit" sets).
pub(super) const MAX_PAGES: u64 = 4_294_967_294;

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
pub(super) fn apply_batch(
    conn: &mut Connection,
    batch: &[&Op],
) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
    let mut tx = conn.transaction()?;
    let mut results = Vec::with_capacity(batch.len());
    for op in batch {
        let mut sp = tx.savepoint()?;
        let result = apply(&sp, op);
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
        Op::ExpireDue { now_ms } => {
            let n = tx
                .prepare_cached(
                    "UPDATE deliveries SET state = 3
                     WHERE notification IN (SELECT seq FROM notifications
                                            WHERE completed_ms IS NULL AND expires_ms <= ?1)
                       AND (state = 0 OR (state = 1 AND (SELECT severity FROM notifications
                                                         WHERE seq = notification) = ?2))",
                )?
                .execute(params![*now_ms as i64, CRITICAL])?;
            Ok(Done::Rows(n))
        }
        Op::CompleteDone { now_ms } => {
            let n = tx
                .prepare_cached(
                    "UPDATE notifications SET completed_ms = ?1
                     WHERE completed_ms IS NULL AND NOT EXISTS (
                         SELECT 1 FROM deliveries d WHERE d.notification = seq
                           AND (d.state = 0 OR (d.state = 1 AND severity = ?2)))",
                )?
                .execute(params![*now_ms as i64, CRITICAL])?;
            Ok(Done::Rows(n))
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
        Op::Revoke(r) => {
            tx.prepare_cached(
                "INSERT INTO revocations
                     (kind, value, issued_before_ms, expires_ms, created_ms, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(kind, value) DO UPDATE SET
                     issued_before_ms = max(issued_before_ms, excluded.issued_before_ms),
                     expires_ms = max(expires_ms, excluded.expires_ms),
                     created_ms = excluded.created_ms, created_by = excluded.created_by",
            )?
            .execute(params![
                r.kind.as_str(),
                r.value,
                r.issued_before_ms as i64,
                r.expires_ms as i64,
                r.created_ms as i64,
                r.created_by,
            ])?;
            Ok(Done::Nothing)
        }
        Op::PruneRevocations { now_ms } => {
            let n = tx
                .prepare_cached("DELETE FROM revocations WHERE expires_ms <= ?1")?
                .execute(params![*now_ms as i64])?;
            Ok(Done::Rows(n))
        }
        Op::Barrier => Ok(Done::Nothing),
    }
}

/// The stored severity of CRITICAL notifications (open until acknowledged).
const CRITICAL: i32 = crate::proto::notification::Severity::Critical as i32;
