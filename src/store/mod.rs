//! Durable storage: the device registry, notifications and their per-device
//! delivery state. Two backends behind one [`Store`] handle:
//!
//! - **SQLite** (embedded, the default): one file in the data dir, for one node.
//!   Why SQLite (rusqlite, bundled): the questions asked of this data are
//!   relational (counts by state, one campaign's devices paged, a device's open
//!   notifications in order), WAL lets REST reads run beside the writer, its crash
//!   safety is the most tested there is, and an operator can open the file with
//!   `sqlite3`.
//! - **PostgreSQL** (`store.url = "postgres://..."`): one database shared by the
//!   nodes of a cluster, with the same tables and the same semantics, plus what
//!   only a shared store needs ([`Shared`]: the open set and counts as every node
//!   changed them, a device's open deliveries when it moves between nodes, and the
//!   lease that elects the node running the sweeps).
//!
//! Writes: one writer per process applies [`Op`]s in *group commits*: it takes
//! everything queued (up to [`MAX_BATCH`]), applies it in one transaction and
//! commits once, so a burst of 10,000 acks costs a handful of commits rather than
//! 10,000. An op's completion fires only after its transaction is durable. The op
//! queue is bounded ([`QUEUE`]); senders wait when the store falls behind. When the
//! store cannot write, what was already applied in memory is kept and retried
//! (see `writer`).
//!
//! Reads: SQLite answers on a separate read-only connection behind a mutex, used
//! from `spawn_blocking`, never on the async threads; PostgreSQL from a small
//! connection pool. [`Store::barrier`] waits until everything sent before it is
//! committed, so a read after it sees every change the caller made before.

mod postgres;
mod sqlite;
mod types;
mod writer;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

use tokio::sync::{mpsc, oneshot};

pub use postgres::{Lease, Select, Shared};
pub use sqlite::FILE;
pub use types::{
    CampaignRow, Counts, DeliveryRow, DeliveryState, DeviceRow, LoadedCampaign, NewNotification,
    Revocation, RevocationKind, Snapshot, Status, Summary,
};
pub use writer::Stats;

/// Ops waiting for the writer; a sender waits when it is full.
const QUEUE: usize = 65_536;
/// Most ops in one transaction.
pub const MAX_BATCH: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {}", postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL: {0}")]
    Pool(String),
    #[error("store.url: {0}")]
    BadUrl(String),
    #[error("TLS to PostgreSQL: {0}")]
    Tls(String),
    #[error("the database schema is version {found}; this telehub supports up to {supported}")]
    NewerSchema { found: i64, supported: i64 },
    #[error("stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stored data is invalid: {0}")]
    Invalid(String),
    #[error("the store is shut down")]
    Closed,
    #[error("commit failed: {0}")]
    CommitFailed(String),
}

/// One change for the writer.
#[derive(Debug)]
pub enum Op {
    /// Registers or updates a device with its complete tag set.
    Device {
        id: String,
        tags: std::collections::BTreeMap<String, String>,
        registered_ms: u64,
        seen_ms: Option<u64>,
    },
    /// A new notification and one pending delivery per target. Answers its sequence
    /// number.
    Create {
        notification: NewNotification,
        devices: Vec<String>,
    },
    /// The notification was written to the device (again).
    Sent {
        seq: i64,
        device: String,
        at_ms: u64,
    },
    Acked {
        seq: i64,
        device: String,
        at_ms: u64,
    },
    /// Every delivery still open expires; for non-critical notifications only the
    /// undelivered ones are open.
    Expire {
        seq: i64,
        critical: bool,
    },
    Complete {
        seq: i64,
        at_ms: u64,
    },
    /// Shared store: every open delivery of every notification due at `now_ms`
    /// expires, whichever node's devices they are. Answers the rows expired.
    ExpireDue {
        now_ms: u64,
    },
    /// Shared store: every open notification none of whose deliveries is still
    /// open completes.
    CompleteDone {
        now_ms: u64,
    },
    /// Deletes notifications completed before the instant, with their deliveries.
    Prune {
        completed_before_ms: u64,
    },
    /// Records a revocation, or widens the one of the same kind and value.
    Revoke(Revocation),
    /// Deletes the revocations that expired at the instant.
    PruneRevocations {
        now_ms: u64,
    },
    /// Changes nothing; completes once everything queued before it is committed.
    Barrier,
}

/// What an op produced.
#[derive(Debug)]
pub enum Done {
    Nothing,
    /// `Create`: the new notification's sequence number.
    Seq(i64),
    /// Rows changed (`Acked`, `Expire`, `ExpireDue`, `Prune`).
    Rows(usize),
}

struct Job {
    op: Op,
    done: Option<oneshot::Sender<Result<Done, StoreError>>>,
}

/// Where reads go.
#[derive(Clone)]
enum Reader {
    Sqlite(sqlite::Reader),
    Postgres(postgres::Db),
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    reader: Reader,
    health: Arc<Health>,
}

/// Shared with the writer.
#[derive(Debug)]
pub(crate) struct Health {
    /// The last commit went through.
    ok: AtomicBool,
    /// SQLite: the most pages the database may hold (see [`Store::limit_size`]).
    max_pages: AtomicU64,
    /// Ops kept for another attempt while the store cannot write.
    kept: AtomicUsize,
    /// SQLite: writes refused as by a read-only database (see [`Store::refuse_writes`]).
    read_only: AtomicBool,
    /// The last periodic read went through (see [`Store::reached`]).
    reached: AtomicBool,
}

impl Store {
    /// Opens the store `url` names (`postgres://...`, over TLS verified against
    /// `ca` when given), or the embedded database in `data_dir` when it is `None`
    /// (creating and migrating either), starts the writer and returns what was
    /// stored: the registry and every open notification. `stats` counts the
    /// writer's work.
    pub async fn open(
        url: Option<&str>,
        ca: Option<&Path>,
        data_dir: &Path,
        stats: Stats,
    ) -> Result<(Self, Snapshot), StoreError> {
        let health = Arc::new(Health {
            ok: AtomicBool::new(true),
            max_pages: AtomicU64::new(u64::MAX),
            kept: AtomicUsize::new(0),
            read_only: AtomicBool::new(false),
            reached: AtomicBool::new(true),
        });
        let (jobs, rx) = mpsc::channel(QUEUE);
        let (reader, snapshot) = match url {
            None => {
                let dir = data_dir.to_path_buf();
                let (writer, reader, snapshot) =
                    tokio::task::spawn_blocking(move || sqlite::open(&dir))
                        .await
                        .map_err(|_| StoreError::Closed)??;
                writer::spawn_thread(writer, rx, stats, health.clone())?;
                (Reader::Sqlite(reader), snapshot)
            }
            Some(url) => {
                let (writer, db, snapshot) = postgres::open(url, ca).await?;
                tokio::spawn(writer::run(writer, rx, stats, health.clone()));
                (Reader::Postgres(db), snapshot)
            }
        };
        Ok((
            Store {
                jobs,
                reader,
                health,
            },
            snapshot,
        ))
    }

    /// Which backend this is, for logs and `/readyz`: `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self.reader {
            Reader::Sqlite(_) => "sqlite",
            Reader::Postgres(_) => "postgres",
        }
    }

    /// What only a store shared by several nodes answers; `None` for the
    /// embedded one.
    pub fn shared(&self) -> Option<Shared> {
        match &self.reader {
            Reader::Sqlite(_) => None,
            Reader::Postgres(db) => Some(Shared::new(db.clone())),
        }
    }

    /// Whether the last commit went through. While it is false the writer keeps
    /// and retries what was already applied in memory, and new notifications are
    /// refused.
    pub fn healthy(&self) -> bool {
        self.health.ok.load(Ordering::Relaxed) && self.health.reached.load(Ordering::Relaxed)
    }

    /// Records whether a periodic read of the store went through, so that
    /// [`Store::healthy`] turns false when the database is unreachable although
    /// nothing was written meanwhile.
    pub fn reached(&self, ok: bool) {
        if self.health.reached.swap(ok, Ordering::Relaxed) != ok {
            match ok {
                true => tracing::info!("the store answers again"),
                false => tracing::error!("the store does not answer"),
            }
        }
    }

    /// Applied changes the writer keeps for another attempt while it cannot write.
    pub fn kept(&self) -> usize {
        self.health.kept.load(Ordering::Relaxed)
    }

    /// Whether an op with a waiter (a new notification) would be tried soon: the
    /// writer can write, or what it keeps for another attempt leaves room for it.
    /// When false, such ops should be refused at once.
    pub fn accepting(&self) -> bool {
        self.health.ok.load(Ordering::Relaxed)
            || self.health.kept.load(Ordering::Relaxed) < MAX_BATCH
    }

    /// SQLite: makes the writer refuse every write as a read-only database does
    /// (`query_only`), or write again: for maintenance that needs the file still
    /// (a copy), and to exercise what happens when the store cannot write.
    /// Applied before the writer's next batch.
    pub fn refuse_writes(&self, refuse: bool) {
        self.health.read_only.store(refuse, Ordering::Relaxed);
    }

    /// SQLite: bounds the database file to about `max_bytes` (`None`: no bound):
    /// past it, writes fail as on a full disk, and succeed again once the bound is
    /// raised (or pruning frees pages). Applied before the writer's next batch.
    pub fn limit_size(&self, max_bytes: Option<u64>) {
        let pages = max_bytes.map_or(u64::MAX, |b| (b / sqlite::PAGE_BYTES).max(1));
        self.health.max_pages.store(pages, Ordering::Relaxed);
    }

    /// Queues an op; returns once it is queued (not yet durable).
    pub async fn send(&self, op: Op) -> Result<(), StoreError> {
        self.jobs
            .send(Job { op, done: None })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Applies an op and returns once it is durable.
    pub async fn commit(&self, op: Op) -> Result<Done, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job { op, done: Some(tx) })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Returns once every op sent before it is durable.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        self.commit(Op::Barrier).await.map(|_| ())
    }

    /// One notification's status: counts by state and a page of per-device rows.
    pub async fn status(
        &self,
        id: String,
        state: Option<DeliveryState>,
        after: Option<String>,
        limit: usize,
    ) -> Result<Option<Status>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => {
                r.read(move |c| sqlite::status(c, &id, state, after.as_deref(), limit))
                    .await
            }
            Reader::Postgres(db) => db.status(&id, state, after.as_deref(), limit).await,
        }
    }

    /// The most recent notifications, newest first, with their counts.
    pub async fn recent(&self, limit: usize) -> Result<Vec<Summary>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.read(move |c| sqlite::recent(c, limit)).await,
            Reader::Postgres(db) => db.recent(limit).await,
        }
    }

    /// The registry, paged by device id.
    pub async fn devices(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<DeviceRow>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => {
                r.read(move |c| sqlite::devices(c, after.as_deref(), limit))
                    .await
            }
            Reader::Postgres(db) => db.devices(after.as_deref(), limit).await,
        }
    }

    /// The revocations still in force at `now_ms`, oldest first.
    pub async fn revocations(&self, now_ms: u64) -> Result<Vec<Revocation>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.read(move |c| sqlite::revocations(c, now_ms)).await,
            Reader::Postgres(db) => db.revocations(now_ms).await,
        }
    }

    /// Where `device` stands with notification `id`, if it was ever targeted:
    /// (sequence number, severity, state).
    pub async fn delivery(
        &self,
        id: String,
        device: String,
    ) -> Result<Option<(i64, i32, DeliveryState)>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.read(move |c| sqlite::delivery(c, &id, &device)).await,
            Reader::Postgres(db) => db.delivery(&id, &device).await,
        }
    }
}
