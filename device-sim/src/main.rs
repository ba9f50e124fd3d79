//! `device-sim`: a simulated telehub device fleet (see `telehub::sim`) and the
//! fan-out benchmark (`device-sim bench ...`, see [`bench`]).
//!
//! ```text
//! device-sim --url wss://127.0.0.1:8443 --ca certs/ca.pem --data-dir data \
//!            --devices 100 --rate 2 --duration 60s [--json]
//! device-sim bench fanout --url ws://127.0.0.1:9000 --data-dir data --publishers 10 --subscribers 100
//! device-sim bench idle --url ws://127.0.0.1:9000 --data-dir data --devices 1000 --hub-pid PID
//! ```

mod bench;
mod cpu;

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use telehub::{
    auth::TokenKey,
    sim::{run_fleet, FleetConfig, FleetStats, Summary, TokenSource},
};

#[derive(Parser, Debug)]
#[command(
    name = "device-sim",
    version,
    about = "Simulated telehub device fleet and load generator",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Benchmarks against a running hub.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The hub: wss://HOST:PORT, or ws://HOST:PORT for a --plaintext hub. Repeat for
    /// the nodes of a cluster: devices spread over them and move to the next when
    /// theirs cannot be reached.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// CA certificate (PEM) to trust for wss:// (the hub's CERTS_DIR/ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// File with one device token per line (from `telehub token --role device`).
    #[arg(
        long,
        conflicts_with = "data_dir",
        required_unless_present = "data_dir"
    )]
    token_file: Option<PathBuf>,
    /// The hub's data dir: device tokens are minted with its signing key.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of simulated devices.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Telemetry messages per second per device.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Print exactly one JSON object (the final summary) on stdout; no progress line.
    #[arg(long)]
    json: bool,
    /// Prefix of minted device ids (with --data-dir).
    #[arg(long, default_value = "sim-")]
    id_prefix: String,
    /// Do not offer permessage-deflate.
    #[arg(long)]
    no_compression: bool,
    /// Messages each device buffers while it cannot send (oldest dropped beyond).
    #[arg(long, default_value_t = 1000)]
    backlog: usize,
    /// Send as generated even above the hub's announced rate limit (to exercise it).
    #[arg(long)]
    ignore_rate_limit: bool,
    /// Do not ask the hub to confirm telemetry: what is in flight when a connection
    /// drops is lost instead of sent again.
    #[arg(long)]
    no_confirm: bool,
    /// Wait this long before acknowledging a notification (e.g. 2s).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    ack_delay: Duration,
    /// Share of received notifications (0..=1) whose ack is withheld, so the hub
    /// redelivers them.
    #[arg(long, default_value_t = 0.0)]
    ack_loss: f64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Some(Command::Bench(cmd)) => runtime.block_on(bench::run(cmd)),
        None => runtime.block_on(fleet(cli.run)),
    }
}

fn tracing_init() {
    // Logs go to stderr (default: warnings), so --json output on stdout stays clean.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Loads the signing key of an existing hub data dir (never creates one: a fresh key
/// would mint tokens the hub rejects).
pub(crate) fn load_key(data_dir: &Path) -> anyhow::Result<TokenKey> {
    let path = data_dir.join(telehub::auth::SECRET_FILE);
    if !path.exists() {
        bail!(
            "{} does not exist: point --data-dir at the hub's data directory (the hub creates the key on first start)",
            path.display()
        );
    }
    TokenKey::load_or_create(data_dir)
        .with_context(|| format!("loading the signing key from {}", data_dir.display()))
}

async fn fleet(args: RunArgs) -> anyhow::Result<()> {
    let mut urls = args.url.into_iter();
    let url = urls.next().context("--url is required")?;
    let tokens = match (&args.token_file, &args.data_dir) {
        (Some(file), _) => TokenSource::from_file(file)?,
        (None, Some(dir)) => TokenSource::mint(load_key(dir)?),
        (None, None) => bail!("pass --token-file FILE or --data-dir DIR"),
    };
    let mut cfg = FleetConfig::new(url, tokens);
    cfg.urls.extend(urls);
    cfg.ca = args.ca;
    cfg.devices = args.devices;
    cfg.rate_hz = args.rate;
    cfg.duration = args.duration;
    cfg.id_prefix = args.id_prefix;
    cfg.compression = !args.no_compression;
    cfg.backlog = args.backlog;
    cfg.pace_to_limit = !args.ignore_rate_limit;
    cfg.confirm = !args.no_confirm;
    cfg.ack_delay = args.ack_delay;
    cfg.ack_loss = args.ack_loss;
    let devices = cfg.devices;

    let stats = Arc::new(FleetStats::new());
    let bar = progress_bar(args.json, cfg.duration);
    let ticker = {
        let (bar, stats) = (bar.clone(), stats.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                let s = stats.snapshot(devices);
                if let Some(total) = bar.length() {
                    bar.set_position((s.elapsed_s as u64).min(total));
                }
                bar.set_message(progress_line(&s));
            }
        })
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = run_fleet(cfg, stats, shutdown).await;
    ticker.abort();
    bar.finish_and_clear();
    let summary = result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).context("serializing the summary")?
        );
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn progress_bar(json: bool, duration: Option<Duration>) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match duration {
        Some(d) => {
            let bar = ProgressBar::new(d.as_secs().max(1));
            bar.set_style(
                ProgressStyle::with_template("{elapsed:>4} [{bar:20}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        }
    };
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn progress_line(s: &Summary) -> String {
    format!(
        "{}/{} connected  sent {} ({:.0}/s)  rate-limited {}  reconnects {}  errors {}  buffered {}  dropped {}  notifications {}",
        s.connected,
        s.devices,
        s.sent,
        s.sent_per_s,
        s.rate_limited,
        s.reconnects,
        s.errors,
        s.buffered,
        s.dropped_from_buffer,
        s.notifications
    )
}

fn print_summary(s: &Summary) {
    println!("devices              {}", s.devices);
    println!("elapsed              {:.1} s", s.elapsed_s);
    println!("sent                 {} ({:.1}/s)", s.sent, s.sent_per_s);
    println!(
        "confirmed            {} ({} unconfirmed, {} resent)",
        s.confirmed, s.unconfirmed, s.resent
    );
    println!("rate limited         {}", s.rate_limited);
    println!("reconnects           {}", s.reconnects);
    println!(
        "errors               {} (auth {}, hub errors {})",
        s.errors, s.auth_failures, s.server_errors
    );
    println!("dropped from backlog {}", s.dropped_from_buffer);
    println!(
        "notifications        {} distinct ({} received, {} duplicates; {} acks sent, {} withheld)",
        s.notifications, s.notifications_received, s.duplicates, s.acks_sent, s.acks_withheld
    );
}
