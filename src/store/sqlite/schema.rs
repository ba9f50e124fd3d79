//! The database file, its settings and its schema.
//!
//! Settings, and why: WAL so readers (REST status queries) never block the writer
//! and the writer never blocks them; `synchronous = FULL` so a committed transaction
//! survives power loss, not only a crash of the process; foreign keys on so deleting
//! a notification deletes its deliveries. The schema version lives in
//! `PRAGMA user_version`; [`migrate`] brings any older file up to [`VERSION`].

use std::path::Path;

use rusqlite::Connection;

use crate::store::StoreError;

/// The database file inside the data dir.
pub const FILE: &str = "telehub.db";

/// Current schema version.
const VERSION: i64 = 2;

const SCHEMA_V1: &str = "
CREATE TABLE devices (
    id            TEXT PRIMARY KEY,
    -- JSON object of tag name to value.
    tags          TEXT NOT NULL DEFAULT '{}',
    registered_ms INTEGER NOT NULL,
    -- NULL until the device first connects.
    last_seen_ms  INTEGER
) WITHOUT ROWID;

CREATE TABLE notifications (
    -- Creation order: devices receive their notifications in this order.
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    severity     INTEGER NOT NULL,
    title        TEXT NOT NULL,
    body         TEXT NOT NULL,
    payload      BLOB NOT NULL,
    -- JSON of the request's targets, as the operator gave them.
    targets      TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL,
    -- Set once no delivery can change any more (all acknowledged or expired).
    completed_ms INTEGER
);

CREATE TABLE deliveries (
    notification INTEGER NOT NULL REFERENCES notifications(seq) ON DELETE CASCADE,
    device_id    TEXT NOT NULL,
    -- 0 pending, 1 delivered, 2 acknowledged, 3 expired.
    state        INTEGER NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_sent_ms INTEGER,
    acked_ms     INTEGER,
    PRIMARY KEY (notification, device_id)
) WITHOUT ROWID;

CREATE INDEX notifications_open ON notifications(seq) WHERE completed_ms IS NULL;
";

/// Version 2: token revocations (see `auth`).
const SCHEMA_V2: &str = "
CREATE TABLE revocations (
    -- 'token' (value: a jti) or 'subject' (value: a token subject).
    kind             TEXT NOT NULL,
    value            TEXT NOT NULL,
    issued_before_ms INTEGER NOT NULL,
    expires_ms       INTEGER NOT NULL,
    created_ms       INTEGER NOT NULL,
    created_by       TEXT NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
";

/// Opens (creating if needed) the database in `data_dir` with the settings above.
pub fn open(data_dir: &Path) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let conn = Connection::open(data_dir.join(FILE))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // A reader that meets a checkpoint retries instead of failing at once.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Creates or upgrades the schema.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: VERSION,
        });
    }
    if version < VERSION {
        let tx = conn.transaction()?;
        if version < 1 {
            tx.execute_batch(SCHEMA_V1)?;
        }
        if version < 2 {
            tx.execute_batch(SCHEMA_V2)?;
        }
        tx.pragma_update(None, "user_version", VERSION)?;
        tx.commit()?;
    }
    Ok(())
}
