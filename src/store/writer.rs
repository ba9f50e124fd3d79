//! The writer: group commits of [`Op`]s (see the module doc of `store`), the same
//! loop for every backend ([`Backend`] applies one batch in one transaction).
//!
//! Invariants:
//! - a job's completion is sent only after the transaction holding its op has
//!   committed;
//! - an op nobody waits for was already applied in memory (an ack, a write to a
//!   device, a registration): it is never dropped. When the store cannot write
//!   (disk full, read-only, I/O error, PostgreSQL down), such ops are kept, in
//!   order, and the batch is tried again with back-off until it commits; ops with
//!   a waiter (a new notification, a barrier) get the error at once, so their
//!   callers can say 503;
//! - what is kept is bounded ([`MAX_BATCH`] ops): beyond, new ops wait in the
//!   queue ([`super::QUEUE`]) and then their senders wait, which slows the
//!   sessions down; nothing is lost while the process runs. Only a shutdown while
//!   the store still fails loses the kept ops, and says how many.

use std::{
    future::Future,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::{Done, Health, Job, Op, StoreError, MAX_BATCH};

/// Writer throughput (shared with the metrics registry).
#[derive(Clone, Default)]
pub struct Stats {
    pub ops: Counter,
    pub commits: Counter,
    /// Batches whose commit failed (their changes kept and retried, or refused).
    pub failures: Counter,
}

/// Waits between attempts while the store cannot write.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a shutdown keeps trying to commit what is kept.
const SHUTDOWN_TRIES: Duration = Duration::from_secs(5);

/// What a backend does for the writer.
pub(super) trait Backend: Send + 'static {
    /// Applies `ops` in one transaction, in order, and commits it: the result of
    /// each op (one that fails on its own, e.g. a duplicate id, fails alone). `Err`
    /// when the store cannot write now: nothing was applied, and the same batch
    /// may succeed later.
    fn apply_batch(
        &mut self,
        ops: &[&Op],
    ) -> impl Future<Output = Result<Vec<Result<Done, StoreError>>, StoreError>> + Send;

    /// Applies what the handle changed since the last batch (SQLite: its size
    /// bound and read-only switch).
    fn configure(&mut self, _health: &Health) {}
}

/// Runs `run` on a thread of its own, for a backend whose calls block (SQLite).
pub(super) fn spawn_thread<B: Backend>(
    backend: B,
    rx: mpsc::Receiver<Job>,
    stats: Stats,
    health: Arc<Health>,
) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: super::FILE.into(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(io)?;
    std::thread::Builder::new()
        .name("telehub-store".into())
        .spawn(move || runtime.block_on(run(backend, rx, stats, health)))
        .map(|_| ())
        .map_err(io)
}

/// Runs until every sender is gone (the hub shut down), committing what is queued.
pub(super) async fn run<B: Backend>(
    mut backend: B,
    mut rx: mpsc::Receiver<Job>,
    stats: Stats,
    health: Arc<Health>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut kept: Vec<Job> = Vec::new();
    let mut wait = RETRY_MIN;
    let mut closed = false;
    let mut closed_at = None;
    loop {
        if kept.is_empty() {
            if closed {
                break;
            }
            match rx.recv().await {
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
        backend.configure(&health);
        let ops: Vec<&Op> = batch.iter().map(|j| &j.op).collect();
        let applied = backend.apply_batch(&ops).await;
        drop(ops);
        match applied {
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
                stats.failures.inc();
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
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}
