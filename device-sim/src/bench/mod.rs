//! Benchmarks against a running hub (start it with `--plaintext --rate 10000000
//! --burst 10000000` so the per-device limiter never refuses).
//!
//! - `fanout`: P publisher devices, S dashboard subscribers, payloads that carry the
//!   send instant; reports deliveries/s, delivery latency percentiles (hdrhistogram),
//!   the generator's own CPU time and, with `--hub-pid`, the hub's CPU µs per delivery.
//! - `idle`: connects N idle devices and reports the hub's RSS growth per connection.
//! - `campaign`: a critical notification to N online devices while telemetry flows.
//! - `reconnect`: a TLS reconnect storm: N devices drop at once and reconnect at
//!   once, resuming their TLS sessions (or not, `--no-resume`).
//!
//! `fanout` also measures batched (`--max-delay-ms`) and conflated (`--conflate-ms`)
//! subscriptions; stuck dashboards are measured with `fanout --stuck`.
//!
//! Each bench has its own file; what they share is in [`common`] (arguments,
//! connection setup, report rounding) and [`traffic`] (the timestamped telemetry
//! publishers and subscribers). The benches use those two, never each other.

mod campaign;
mod common;
mod fanout;
mod idle;
mod reconnect;
mod traffic;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Publishers → hub → subscribers throughput and latency.
    Fanout(fanout::FanoutArgs),
    /// Hub memory per idle device connection.
    Idle(idle::IdleArgs),
    /// A critical notification to N online devices: time to acknowledgement, store
    /// writes, telemetry latency meanwhile.
    Campaign(campaign::CampaignArgs),
    /// N devices connect, drop at once and reconnect at once (TLS resumption).
    Reconnect(reconnect::ReconnectArgs),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Fanout(a) => fanout::fanout(a).await,
        BenchCommand::Idle(a) => idle::idle(a).await,
        BenchCommand::Campaign(a) => campaign::campaign(a).await,
        BenchCommand::Reconnect(a) => reconnect::reconnect(a).await,
    }
}
