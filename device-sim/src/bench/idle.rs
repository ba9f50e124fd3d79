//! `device-sim bench idle`: connects N idle devices (optionally after a few messages
//! each) and reports the hub's RSS growth per connection.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Args;
use prost::Message as _;
use serde::Serialize;
use telehub::{
    auth::Role,
    proto::{envelope::Body, Envelope},
    sim::profile::{Kind, Profile},
    ws,
};
use tokio::{sync::Semaphore, task::JoinSet};

use super::common::{round, Common, Setup, CONNECT_PARALLELISM};
use crate::cpu;

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Idle devices to connect.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Settle time after the last connection before RSS is read.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Telemetry messages each device sends (simulated readings) before going idle, so
    /// that per-connection compression state, if any, exists when RSS is read. At most
    /// the hub's rate-limit burst.
    #[arg(long, default_value_t = 0)]
    messages: usize,
}

#[derive(Serialize, Debug)]
struct IdleReport {
    devices: usize,
    compression: bool,
    messages_per_device: usize,
    hub_rss_before_kib: Option<u64>,
    hub_rss_after_kib: Option<u64>,
    hub_kib_per_connection: Option<f64>,
    connect_s: f64,
}

pub async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    if a.devices == 0 || a.devices > 50_000 {
        bail!("--devices must be 1..=50000");
    }
    let setup = Arc::new(Setup::new(&a.common)?);
    let before = a.common.hub_pid.map(cpu::process_rss_kib).transpose()?;
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..a.devices {
        let (setup, gate, messages) = (setup.clone(), gate.clone(), a.messages);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut conn = setup
                .connect("/v1/device", &format!("idle-{i:05}"), Role::Device)
                .await?;
            let batch: Vec<Bytes> = {
                let mut rng = rand::rng();
                let mut profile = Profile::new(Kind::for_index(i), &mut rng);
                (0..messages)
                    .map(|_| {
                        let body = Body::Telemetry(profile.next(1.0, &mut rng));
                        Bytes::from(Envelope { body: Some(body) }.encode_to_vec())
                    })
                    .collect()
            };
            for payload in batch {
                conn.send(&ws::Message::Binary(payload)).await?;
            }
            anyhow::Ok(conn)
        });
    }
    let mut conns = Vec::with_capacity(a.devices);
    while let Some(r) = tasks.join_next().await {
        conns.push(r.context("connect task")??);
    }
    let connect_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(a.settle).await;
    let after = a.common.hub_pid.map(cpu::process_rss_kib).transpose()?;
    let report = IdleReport {
        devices: a.devices,
        compression: a.common.compression,
        messages_per_device: a.messages,
        hub_rss_before_kib: before,
        hub_rss_after_kib: after,
        hub_kib_per_connection: before
            .zip(after)
            .map(|(b, x)| round((x as f64 - b as f64) / a.devices as f64, 2)),
        connect_s: round(connect_s, 3),
    };
    for mut c in conns {
        let _ = tokio::time::timeout(Duration::from_millis(200), c.close(1000, "bench done")).await;
    }
    if a.common.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report:#?}");
    }
    Ok(())
}
