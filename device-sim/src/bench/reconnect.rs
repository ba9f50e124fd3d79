//! `device-sim bench reconnect`: a TLS reconnect storm. N devices connect (full
//! handshakes), then every connection drops at once and every device reconnects at
//! once; reports how long each wave took to be back (every device welcomed), the
//! hub's CPU per connect, and how many reconnects resumed their TLS session.
//!
//! Each device keeps its own TLS session cache, as a real device does
//! (`Endpoint::with_own_sessions`); `--no-resume` reconnects with an empty one, for
//! the comparison.

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Args;
use serde::Serialize;
use telehub::{
    auth::Role,
    proto::envelope::Body,
    sim::{Endpoint, SimStream},
    ws,
};
use tokio::{sync::Semaphore, task::JoinSet};

use super::common::{round, wait_for, Common, Setup};
use crate::cpu;

/// One step (TCP, TLS, upgrade) of one connect may take this long in a storm.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct ReconnectArgs {
    #[command(flatten)]
    common: Common,
    /// Devices (each holds one connection; mind the open-file limits of both ends).
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Connects in flight at once (the rest wait their turn, as a listen backlog
    /// would make them).
    #[arg(long, default_value_t = 512)]
    parallel: usize,
    /// Reconnect with an empty TLS session cache (full handshakes again).
    #[arg(long)]
    no_resume: bool,
    /// Spread the devices over this many local addresses 127.0.0.2, 127.0.0.3, ...
    /// when the hub is on 127.0.0.1 (1: the kernel's choice). Real devices come from
    /// many addresses; from one, the kernel's search for a free ephemeral port
    /// toward the hub's one port costs the generator more CPU than TLS does.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=200))]
    sources: u8,
}

#[derive(Serialize, Debug)]
struct Wave {
    /// From the first attempt until every device is welcomed.
    seconds: f64,
    connects_per_s: f64,
    /// Hub CPU during the wave (with --hub-pid).
    hub_cpu_s: Option<f64>,
    hub_cpu_us_per_connect: Option<f64>,
    /// This process's CPU during the wave, as a share of one core.
    generator_cpu: f64,
    /// Handshakes that resumed a TLS session.
    resumed: usize,
}

#[derive(Serialize, Debug)]
struct ReconnectReport {
    devices: usize,
    parallel: usize,
    tls: bool,
    resume: bool,
    /// Every device's first connection.
    first: Wave,
    /// Every connection dropped at once, every device reconnecting at once.
    storm: Wave,
}

pub async fn reconnect(a: ReconnectArgs) -> anyhow::Result<()> {
    if a.devices == 0 || a.devices > 50_000 {
        bail!("--devices must be 1..=50000");
    }
    if a.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let setup = Arc::new(Setup::new(&a.common)?);
    if !setup.endpoint.is_tls() {
        eprintln!("note: a ws:// hub: no TLS, nothing to resume");
    }
    let spread = a.sources > 1 && hub_on_loopback(&setup.endpoint).await;
    let endpoint = |i: usize| {
        let own = setup.endpoint.with_own_sessions();
        if spread {
            // 127.0.0.2 onwards: 127.0.0.1 stays the kernel's default.
            let n = 2 + (i % usize::from(a.sources)) as u8;
            own.with_source(Ipv4Addr::new(127, 0, 0, n).into())
        } else {
            own
        }
    };
    let devices: Vec<Arc<(Endpoint, String)>> = (0..a.devices)
        .map(|i| {
            Arc::new((
                endpoint(i),
                setup.token(&format!("storm-{i:05}"), Role::Device),
            ))
        })
        .collect();
    let (first, conns) = wave(&a, &devices).await?;
    // Everyone drops at once: no Close handshake, as when a network path fails.
    drop(conns);
    let devices = if a.no_resume {
        devices
            .iter()
            .enumerate()
            .map(|(i, d)| Arc::new((endpoint(i), d.1.clone())))
            .collect()
    } else {
        devices
    };
    let (storm, conns) = wave(&a, &devices).await?;
    for mut c in conns {
        let _ = tokio::time::timeout(Duration::from_millis(100), c.close(1000, "bench done")).await;
    }
    let report = ReconnectReport {
        devices: a.devices,
        parallel: a.parallel,
        tls: setup.endpoint.is_tls(),
        resume: !a.no_resume,
        first,
        storm,
    };
    if a.common.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report:#?}");
    }
    Ok(())
}

/// Whether every address the hub's name resolves to is IPv4 loopback.
async fn hub_on_loopback(endpoint: &Endpoint) -> bool {
    match tokio::net::lookup_host(endpoint.addr()).await {
        Ok(addrs) => {
            let v4: Vec<_> = addrs.filter(|a| a.is_ipv4()).collect();
            !v4.is_empty() && v4.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// Connects every device (at most `parallel` at once) until each is welcomed.
async fn wave(
    a: &ReconnectArgs,
    devices: &[Arc<(Endpoint, String)>],
) -> anyhow::Result<(Wave, Vec<ws::Connection<SimStream>>)> {
    let hub0 = a.common.hub_pid.map(cpu::process_cpu).transpose()?;
    let gen0 = cpu::self_cpu();
    let t0 = Instant::now();
    let gate = Arc::new(Semaphore::new(a.parallel));
    let mut tasks = JoinSet::new();
    for d in devices {
        let (d, gate, compression) = (d.clone(), gate.clone(), a.common.compression);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let (endpoint, token) = &*d;
            let (mut conn, _) = endpoint
                .connect("/v1/device", token, compression, STEP_TIMEOUT)
                .await
                .context("connecting")?;
            let resumed = conn.get_ref().resumed();
            // The Welcome comes after the session ticket: once it is read, the
            // device holds a ticket for its next connection.
            wait_for(&mut conn, |b| matches!(b, Body::Welcome(_))).await?;
            anyhow::Ok((conn, resumed))
        });
    }
    let mut conns = Vec::with_capacity(devices.len());
    let mut resumed = 0;
    while let Some(r) = tasks.join_next().await {
        let (conn, r) = r.context("connect task")??;
        resumed += usize::from(r);
        conns.push(conn);
    }
    let secs = t0.elapsed().as_secs_f64();
    let gen_cpu = cpu::self_cpu().saturating_sub(gen0);
    let hub_cpu = match (a.common.hub_pid, hub0) {
        (Some(pid), Some(h0)) => Some(cpu::process_cpu(pid)?.saturating_sub(h0)),
        _ => None,
    };
    let n = devices.len() as f64;
    Ok((
        Wave {
            seconds: round(secs, 3),
            connects_per_s: round(n / secs, 0),
            hub_cpu_s: hub_cpu.map(|c| round(c.as_secs_f64(), 3)),
            hub_cpu_us_per_connect: hub_cpu.map(|c| round(c.as_secs_f64() * 1e6 / n, 1)),
            generator_cpu: round(gen_cpu.as_secs_f64() / secs, 3),
            resumed,
        },
        conns,
    ))
}
