//! Paced wake-ups: how a new notification reaches the sessions of its online
//! targets without starving telemetry.
//!
//! Each woken session costs the hub ~25 µs (a write, an ack, a store op), so waking
//! 10,000 at once would saturate a core for a quarter second and queue every
//! telemetry task behind them. Paced at `notify.dispatch_rate`, fan-out keeps its
//! share of the CPU and the campaign takes `targets / dispatch_rate` seconds.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;

/// Device sessions woken together.
const WAKE_BATCH: usize = 64;

/// Wakes `sessions` at most `per_second` a second, in small batches.
pub async fn wake_paced(sessions: Vec<Arc<Notify>>, per_second: u32) {
    let period = Duration::from_secs_f64(WAKE_BATCH as f64 / f64::from(per_second.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for batch in sessions.chunks(WAKE_BATCH) {
        tick.tick().await;
        for s in batch {
            s.notify_one();
        }
    }
}
