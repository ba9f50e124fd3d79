//! Graceful shutdown as a mechanism (after mini-redis): the server flips one watch
//! channel; every task holds a [`Shutdown`] that `select!`s on it and, by being
//! alive, keeps a completion channel open, so the server knows when all are done.

use tokio::sync::{mpsc, watch};

/// The server's end: trigger, then wait for every [`Shutdown`] to be dropped.
pub struct Trigger {
    tx: watch::Sender<bool>,
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
}

/// A task's end: resolves `recv` once shutdown starts.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    /// Never sent on: its drop tells [`Trigger::wait`] this task has finished.
    _done: mpsc::Sender<()>,
}

impl Default for Trigger {
    fn default() -> Self {
        Self::new()
    }
}

impl Trigger {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            tx,
            done_tx: Some(done_tx),
            done_rx,
        }
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
            // `wait` takes done_tx only after triggering, when nothing subscribes any more.
            _done: match &self.done_tx {
                Some(tx) => tx.clone(),
                None => mpsc::channel(1).0,
            },
        }
    }

    /// A handle that only observes whether shutdown started (it does not keep the
    /// server waiting, unlike a [`Shutdown`]): for `/healthz`.
    pub fn draining(&self) -> Draining {
        Draining(self.tx.subscribe())
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Triggers (if not yet) and waits until every `Shutdown` has been dropped.
    pub async fn wait(mut self) {
        self.trigger();
        self.done_tx.take();
        let _ = self.done_rx.recv().await;
    }
}

/// Whether shutdown has started (see [`Trigger::draining`]).
#[derive(Clone)]
pub struct Draining(watch::Receiver<bool>);

impl Draining {
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}

impl Shutdown {
    /// Resolves once shutdown has started. Cancel-safe.
    pub async fn recv(&mut self) {
        // An error means the trigger was dropped: treat it as shutdown too.
        let _ = self.rx.wait_for(|down| *down).await;
    }
}
