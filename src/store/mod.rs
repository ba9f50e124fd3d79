//! Embedded durable storage: the device registry, notifications and their
//! per-device delivery state, in one SQLite database in the data dir.
//!
//! Why SQLite (rusqlite, bundled): the questions asked of this data are relational
//! (counts by state, one campaign's devices paged, a device's open notifications in
//! order), WAL lets REST reads run beside the writer, its crash safety is the most
//! tested there is, and an operator can open the file with `sqlite3`. redb would
//! avoid the C build but leave every index and count to us.
//!
//! Writes: one writer thread owns the write connection and applies [`Op`]s in
//! *group commits*: it takes everything queued (up to [`MAX_BATCH`]), applies it in
//! one transaction (each op in its own savepoint, so one failing op fails alone) and
//! commits once, so a burst of 10,000 acks costs a handful of fsyncs rather than
//! 10,000. An op's completion fires only after its transaction is durable. The op
//! queue is bounded ([`QUEUE`]); senders wait when the disk falls behind.
//!
//! Reads: a separate read-only connection behind a mutex, used from
//! `spawn_blocking`, never on the async threads. [`Store::barrier`] waits until
//! everything sent before it is committed, so a read after it sees every change
//! the caller made before.

mod queries;
mod schema;
mod writer;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

pub use queries::{
    CampaignRow, Counts, DeliveryRow, DeviceRow, LoadedCampaign, Snapshot, Status, Summary,
};
pub use schema::FILE;
pub use writer::Stats;

/// Ops waiting for the writer; a sender waits when it is full.
const QUEUE: usize = 65_536;
/// Most ops in one transaction.
pub const MAX_BATCH: usize = 8192;

/// SQLite's page size (its default, which the store keeps).
const PAGE_BYTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database schema is version {found}; this telehub supports up to {supported}")]
    NewerSchema { found: i64, supported: i64 },
    #[error("stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the store is shut down")]
    Closed,
    #[error("commit failed: {0}")]
    CommitFailed(String),
}

/// Where one device stands with one notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeliveryState {
    /// Not yet sent to the device.
    Pending = 0,
    /// Sent; for critical notifications, not yet acknowledged.
    Delivered = 1,
    Acknowledged = 2,
    /// Expired before it was acknowledged (critical) or delivered (others).
    Expired = 3,
}

impl DeliveryState {
    pub fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            0 => Self::Pending,
            1 => Self::Delivered,
            2 => Self::Acknowledged,
            3 => Self::Expired,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Acknowledged => "acknowledged",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Delivered,
            Self::Acknowledged,
            Self::Expired,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// A notification as created, before it has a sequence number.
#[derive(Clone, Debug)]
pub struct NewNotification {
    pub id: String,
    pub severity: i32,
    pub title: String,
    pub body: String,
    pub payload: Vec<u8>,
    /// The request's targets as JSON, kept for display.
    pub targets_json: String,
    pub created_by: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// One change for the writer.
#[derive(Debug)]
pub enum Op {
    /// Registers or updates a device with its complete tag set.
    Device {
        id: String,
        tags: BTreeMap<String, String>,
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
    /// Deletes notifications completed before the instant, with their deliveries.
    Prune {
        completed_before_ms: u64,
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
    /// Rows changed (`Acked`, `Expire`, `Prune`).
    Rows(usize),
}

struct Job {
    op: Op,
    done: Option<oneshot::Sender<Result<Done, StoreError>>>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    health: Arc<Health>,
}

/// Shared with the writer thread.
#[derive(Debug)]
pub(crate) struct Health {
    /// The last commit went through.
    ok: AtomicBool,
    /// The most pages the database may hold (see [`Store::limit_size`]).
    max_pages: AtomicU64,
    /// Ops kept for another attempt while the store cannot write.
    kept: AtomicUsize,
    /// Writes refused as by a read-only database (see [`Store::refuse_writes`]).
    read_only: AtomicBool,
}

impl Store {
    /// Opens the database in `data_dir` (creating and migrating it), starts the writer
    /// thread and returns what was stored: the registry and every open notification.
    /// Call from a blocking context (startup). `stats` counts the writer's work.
    pub fn open(data_dir: &Path, stats: Stats) -> Result<(Self, Snapshot), StoreError> {
        let mut write = schema::open(data_dir)?;
        schema::migrate(&mut write)?;
        let read = schema::open(data_dir)?;
        let snapshot = queries::load(&read)?;
        let (jobs, rx) = mpsc::channel(QUEUE);
        let health = Arc::new(Health {
            ok: AtomicBool::new(true),
            max_pages: AtomicU64::new(u64::MAX),
            kept: AtomicUsize::new(0),
            read_only: AtomicBool::new(false),
        });
        writer::spawn(write, rx, stats, health.clone())?;
        Ok((
            Store {
                jobs,
                reader: Arc::new(Mutex::new(read)),
                health,
            },
            snapshot,
        ))
    }

    /// Whether the last commit went through. While it is false the writer keeps
    /// and retries what was already applied in memory, and new notifications are
    /// refused.
    pub fn healthy(&self) -> bool {
        self.health.ok.load(Ordering::Relaxed)
    }

    /// Whether an op with a waiter (a new notification) would be tried soon: the
    /// writer can write, or what it keeps for another attempt leaves room for it.
    /// When false, such ops should be refused at once.
    pub fn accepting(&self) -> bool {
        self.healthy() || self.health.kept.load(Ordering::Relaxed) < MAX_BATCH
    }

    /// Makes the writer refuse every write as a read-only database does (SQLite's
    /// `query_only`), or write again: for maintenance that needs the file still
    /// (a copy), and to exercise what happens when the store cannot write.
    /// Applied before the writer's next batch.
    pub fn refuse_writes(&self, refuse: bool) {
        self.health.read_only.store(refuse, Ordering::Relaxed);
    }

    /// Bounds the database file to about `max_bytes` (`None`: no bound): past
    /// it, writes fail as on a full disk, and succeed again once the bound is
    /// raised (or pruning frees pages). Applied before the writer's next batch.
    pub fn limit_size(&self, max_bytes: Option<u64>) {
        let pages = max_bytes.map_or(u64::MAX, |b| (b / PAGE_BYTES).max(1));
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

    /// Runs a read on the read connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while reading cannot leave the connection inconsistent.
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// One notification's status: counts by state and a page of per-device rows.
    pub async fn status(
        &self,
        id: String,
        state: Option<DeliveryState>,
        after: Option<String>,
        limit: usize,
    ) -> Result<Option<Status>, StoreError> {
        self.read(move |c| queries::status(c, &id, state, after.as_deref(), limit))
            .await
    }

    /// The most recent notifications, newest first, with their counts.
    pub async fn recent(&self, limit: usize) -> Result<Vec<Summary>, StoreError> {
        self.read(move |c| queries::recent(c, limit)).await
    }

    /// The registry, paged by device id.
    pub async fn devices(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<DeviceRow>, StoreError> {
        self.read(move |c| queries::devices(c, after.as_deref(), limit))
            .await
    }

    /// Where `device` stands with notification `id`, if it was ever targeted:
    /// (sequence number, severity, state).
    pub async fn delivery(
        &self,
        id: String,
        device: String,
    ) -> Result<Option<(i64, i32, DeliveryState)>, StoreError> {
        self.read(move |c| queries::delivery(c, &id, &device)).await
    }
}
