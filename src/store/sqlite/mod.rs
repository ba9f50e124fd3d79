//! The embedded backend: one SQLite database in the data dir, for one node.
//!
//! The writer owns the write connection on a thread of its own (its calls
//! block); reads run on a second, read-only connection behind a mutex, from
//! `spawn_blocking`, never on the async threads.

mod apply;
mod queries;
mod schema;

use std::{
    path::Path,
    sync::{atomic::Ordering, Arc, Mutex},
};

use rusqlite::Connection;

use super::{writer::Backend, Done, Health, Op, Snapshot, StoreError};

pub(super) use queries::{delivery, devices, recent, revocations, status};
pub use schema::FILE;

/// SQLite's page size (its default, which the store keeps).
pub(super) const PAGE_BYTES: u64 = 4096;

/// Opens (creating and migrating) the database in `data_dir`: the writer's
/// connection, the readers' and what was stored. Blocks.
pub(super) fn open(data_dir: &Path) -> Result<(Writer, Reader, Snapshot), StoreError> {
    let mut write = schema::open(data_dir)?;
    schema::migrate(&mut write)?;
    let read = schema::open(data_dir)?;
    let snapshot = queries::load(&read)?;
    Ok((
        Writer {
            conn: write,
            limit: u64::MAX,
            read_only: false,
        },
        Reader(Arc::new(Mutex::new(read))),
        snapshot,
    ))
}

/// The read connection.
#[derive(Clone)]
pub(super) struct Reader(Arc<Mutex<Connection>>);

impl Reader {
    /// Runs a read on the read connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = self.0.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while reading cannot leave the connection inconsistent.
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// The writer's connection and the settings last applied to it.
pub(super) struct Writer {
    conn: Connection,
    /// The `max_page_count` in force (`u64::MAX`: none).
    limit: u64,
    /// `query_only` in force.
    read_only: bool,
}

impl Backend for Writer {
    async fn apply_batch(
        &mut self,
        ops: &[&Op],
    ) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
        apply::apply_batch(&mut self.conn, ops)
    }

    fn configure(&mut self, health: &Health) {
        let refuse = health.read_only.load(Ordering::Relaxed);
        if refuse != self.read_only {
            match self.conn.pragma_update(None, "query_only", refuse) {
                Ok(()) => self.read_only = refuse,
                Err(e) => tracing::error!(error = %e, "switching the store's writes"),
            }
        }
        let wanted = health.max_pages.load(Ordering::Relaxed);
        if wanted != self.limit {
            let pages = wanted.min(apply::MAX_PAGES) as i64;
            match self.conn.pragma_update(None, "max_page_count", pages) {
                Ok(()) => self.limit = wanted,
                Err(e) => tracing::error!(error = %e, "setting the store's size limit"),
            }
        }
    }
}
