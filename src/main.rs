//! The `telehub` command: `serve` (production entry), `token` (mint a token),
//! `demo` (hub + simulated fleet + dashboard URL in one command), and `notify` /
//! `devices` (the REST API from the command line, see `cli`).

mod cli;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use telehub::{
    auth::{parse_tag, Role, Scope, TokenKey},
    config::Config,
    hub::category::Pattern,
    server::Server,
    sim::{run_fleet, FleetConfig, FleetStats, TokenSource},
    tls,
};

#[derive(Parser)]
#[command(
    name = "telehub",
    version,
    about = "IoT telemetry and notification hub"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "TELEHUB_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Print a signed token for a device, viewer or operator.
    Token(TokenArgs),
    /// Run the hub with a simulated fleet and print the dashboard URL.
    Demo(DemoArgs),
    /// Push notifications to devices and follow their delivery.
    #[command(subcommand)]
    Notify(cli::notify::NotifyCommand),
    /// Register devices and list the registry.
    #[command(subcommand)]
    Devices(cli::notify::DevicesCommand),
    /// Revoke tokens on a running hub and list the revocations.
    #[command(subcommand)]
    Tokens(cli::tokens::TokensCommand),
    /// Publish telemetry as a device (waits for the hub's confirmations).
    Pub(cli::pubsub::PubArgs),
    /// Print a dashboard's telemetry stream, one line per message, until interrupted.
    Sub(cli::pubsub::SubArgs),
    /// Development certificates for devices.
    #[command(subcommand)]
    Certs(CertsCommand),
}

/// Flags override the config file, which overrides the defaults.
#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (see README, "Configuration").
    #[arg(long, env = "TELEHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Address and port to serve on, e.g. 0.0.0.0:8443 [default: the config
    /// file's `listen`, else 127.0.0.1:8443]
    #[arg(long, env = "TELEHUB_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where the token key and the SQLite store live [default: the config file's
    /// `data_dir`, else ./data]
    #[arg(long, env = "TELEHUB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The server certificate and key (development ones are made here on first
    /// start) [default: the config file's `certs_dir`, else ./certs]
    #[arg(long, env = "TELEHUB_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// Serve ws:// and http:// without TLS (behind a TLS-terminating proxy, benchmarks).
    #[arg(long)]
    plaintext: bool,
    /// Telemetry messages per second allowed per device connection.
    #[arg(long, env = "TELEHUB_RATE")]
    rate: Option<u32>,
    /// Messages a device may send at once above the rate.
    #[arg(long, env = "TELEHUB_BURST")]
    burst: Option<u32>,
    /// Serve the dashboard from this directory instead of the built-in copy.
    #[arg(long, env = "TELEHUB_DASHBOARD_DIR")]
    dashboard_dir: Option<PathBuf>,
    /// Join a cluster through Redis: redis://[USER:PASSWORD@]HOST:PORT[/DB] or
    /// rediss:// (TLS). Every node needs the same token.key.
    #[arg(long, env = "TELEHUB_CLUSTER", hide_env_values = true)]
    cluster: Option<String>,
    /// This node's name in the cluster (default: HOSTNAME:PORT).
    #[arg(long, env = "TELEHUB_NODE_ID")]
    node_id: Option<String>,
    /// Keep notifications and the device registry in this PostgreSQL database,
    /// postgres://USER:PASSWORD@HOST:PORT/DB (required with --cluster; default:
    /// the embedded SQLite database in the data dir).
    #[arg(long, env = "TELEHUB_STORE", hide_env_values = true)]
    store: Option<String>,
    /// For a PostgreSQL store over TLS: the CA (PEM) its certificate chains to
    /// (makes TLS required; default with sslmode=require: the system's roots).
    #[arg(long, env = "TELEHUB_STORE_CA")]
    store_ca: Option<PathBuf>,
    /// For a rediss:// cluster: the CA (PEM) Redis's certificate chains to
    /// (default: the system's trusted roots).
    #[arg(long, env = "TELEHUB_CLUSTER_CA")]
    cluster_ca: Option<PathBuf>,
}

#[derive(Args)]
struct TokenArgs {
    /// Data directory holding the signing secret (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, value_enum)]
    role: Role,
    /// Device id, or user name for viewers and operators.
    #[arg(long)]
    subject: String,
    /// Tag carried by the token, e.g. --tag fleet=north (repeatable).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Validity, e.g. 24h, 30d.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Devices: a category pattern it may publish to (repeatable; none: any).
    #[arg(long = "publish", value_parser = parse_pattern)]
    publish: Vec<Pattern>,
    /// Dashboards: a pattern its subscriptions must fall within (repeatable; none: any).
    #[arg(long = "subscribe", value_parser = parse_pattern)]
    subscribe: Vec<Pattern>,
    /// Viewers and operators: see and notify only devices with this tag, K=V
    /// (repeatable: all must match; none: every device).
    #[arg(long = "device-tag", value_parser = parse_tag)]
    device_tags: Vec<(String, String)>,
}

fn parse_pattern(s: &str) -> Result<Pattern, String> {
    Pattern::parse(s).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Issue a device certificate and key from the development device CA
    /// (CERTS_DIR/device-ca.pem, created on first use).
    IssueDevice(IssueDeviceArgs),
}

#[derive(Args)]
struct IssueDeviceArgs {
    /// The device id, written in the CN and a SAN URI urn:telehub:device:ID.
    #[arg(long)]
    subject: String,
    /// Where the device CA lives (the hub's certs dir).
    #[arg(long, default_value = "certs")]
    certs_dir: PathBuf,
    /// Where ID.pem and ID.key go (default: CERTS_DIR/devices).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Validity, e.g. 365d.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    valid_for: Duration,
}

#[derive(Args)]
struct DemoArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// Telemetry messages per second per device.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "certs")]
    certs_dir: PathBuf,
    /// Serve the dashboard from this directory instead of the built-in copy.
    #[arg(long, env = "TELEHUB_DASHBOARD_DIR")]
    dashboard_dir: Option<PathBuf>,
    /// Run two nodes joined through this Redis (redis://HOST:PORT): the devices
    /// on the first (--listen), the dashboard on the second (the next port, data
    /// in DATA_DIR/node-2). Needs --store.
    #[arg(
        long,
        hide_env_values = true,
        env = "TELEHUB_CLUSTER",
        requires = "store"
    )]
    cluster: Option<String>,
    /// The PostgreSQL database the nodes share (postgres://USER:PASSWORD@HOST:PORT/DB).
    #[arg(long, hide_env_values = true, env = "TELEHUB_STORE")]
    store: Option<String>,
}

/// mimalloc instead of the system allocator: connections allocate and free short-lived
/// buffers (inflated messages, frames) between long-lived per-connection state, and
/// glibc's arenas keep the holes as resident memory; mimalloc returns them
/// (BENCHMARKS.md, memory per idle connection).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Errors end the process with status 1 and one line, `Error: what: why: cause`:
/// never a backtrace, even with `RUST_BACKTRACE=1` set, because they are the
/// user's to fix (a refused token, a port in use), not the program's.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Token(args) => token(args),
        Command::Demo(args) => runtime.block_on(demo(args)),
        Command::Notify(cmd) => exit_with(runtime.block_on(cli::notify::notify(cmd))),
        Command::Devices(cmd) => exit_with(runtime.block_on(cli::notify::devices(cmd))),
        Command::Tokens(cmd) => exit_with(runtime.block_on(cli::tokens::tokens(cmd))),
        Command::Pub(args) => exit_with(runtime.block_on(cli::pubsub::publish(args))),
        Command::Sub(args) => exit_with(runtime.block_on(cli::pubsub::subscribe(args))),
        Command::Certs(CertsCommand::IssueDevice(args)) => issue_device(args),
    }
}

/// Ends the process with a subcommand's exit code (errors print as usual).
fn exit_with(result: anyhow::Result<i32>) -> anyhow::Result<()> {
    match result? {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The configuration `serve` runs with: the file, then the command line and the
/// environment over it. Read again on SIGHUP.
fn serve_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = &args.certs_dir {
        config.certs_dir = v.clone();
    }
    if args.plaintext {
        config.plaintext = true;
    }
    if let Some(v) = args.rate {
        config.rate.per_second = v;
    }
    if let Some(v) = args.burst {
        config.rate.burst = v;
    }
    if let Some(v) = &args.dashboard_dir {
        config.dashboard.assets_dir = Some(v.clone());
    }
    if let Some(v) = &args.cluster {
        config.cluster.url = Some(v.clone());
    }
    if let Some(v) = &args.node_id {
        config.cluster.node_id = Some(v.clone());
    }
    if let Some(v) = &args.cluster_ca {
        config.cluster.ca = Some(v.clone());
    }
    if let Some(v) = &args.store {
        config.store.url = Some(v.clone());
    }
    if let Some(v) = &args.store_ca {
        config.store.ca = Some(v.clone());
    }
    Ok(config)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = serve_config(&args)?;
    let server = if config.cluster.url.is_some() {
        config.validate()?;
        let bus = telehub::cluster::RedisBus::new(&config.cluster, config.listen)?;
        Server::bind_with_bus(config, bus).await?
    } else {
        Server::bind(config).await?
    };
    let addr = server.local_addr()?;
    let scheme = if server.app().config.plaintext {
        "http"
    } else {
        "https"
    };
    tracing::info!(%addr, "telehub listening: {scheme}://{addr}/ (devices: /v1/device, dashboards: /v1/dashboard)");
    // The dashboard asks for a token: say how to make one.
    let data_dir = &server.app().config.data_dir;
    tracing::info!(
        "dashboard: open {scheme}://localhost:{}/ with a viewer token from `telehub token --data-dir {} --role viewer --subject $USER --ttl 12h`",
        addr.port(),
        data_dir.display()
    );
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(args, server.app().clone()));
    // A `Type=notify` service: ready now that the port accepts, stopping when the
    // signal comes, alive while the watchdog is fed.
    #[cfg(unix)]
    let manager = telehub::systemd::Notifier::from_env().map(Arc::new);
    #[cfg(unix)]
    if let Some(m) = &manager {
        m.send(&format!("READY=1\nSTATUS=listening on {addr}"));
        if let Some(every) = telehub::systemd::Notifier::watchdog_interval() {
            let m = m.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    m.send("WATCHDOG=1");
                }
            });
        }
    }
    let signal = async move {
        shutdown_signal().await;
        #[cfg(unix)]
        if let Some(m) = &manager {
            m.send("STOPPING=1\nSTATUS=closing every connection");
        }
    };
    server.run(signal).await
}

/// On each SIGHUP: reads the configuration again and reloads what can be (see
/// `telehub::reload`); a file that does not read keeps everything as it was.
#[cfg(unix)]
async fn reload_on_sighup(args: ServeArgs, app: Arc<telehub::app::App>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: reloading is off");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading");
        match serve_config(&args) {
            Ok(config) => {
                app.reload(&config);
            }
            Err(e) => {
                app.metrics.reloads("error");
                tracing::error!(
                    error = format!("{e:#}"),
                    "reload: the configuration does not read; nothing changed"
                );
            }
        }
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let key = TokenKey::load_or_create(&args.data_dir)?;
    let tags: BTreeMap<String, String> = args.tags.into_iter().collect();
    let scope = Scope {
        publish: (!args.publish.is_empty()).then_some(args.publish),
        subscribe: (!args.subscribe.is_empty()).then_some(args.subscribe),
        device_tags: (!args.device_tags.is_empty()).then(|| args.device_tags.into_iter().collect()),
    };
    println!(
        "{}",
        key.issue_scoped(&args.subject, args.role, tags, scope, args.ttl)
    );
    Ok(())
}

fn issue_device(args: IssueDeviceArgs) -> anyhow::Result<()> {
    let out = args.out.unwrap_or_else(|| args.certs_dir.join("devices"));
    let (cert, key) =
        tls::device::issue_files(&args.certs_dir, &args.subject, args.valid_for, &out)
            .context("issuing the device certificate")?;
    println!("certificate: {}", cert.display());
    println!("key:         {}", key.display());
    println!(
        "the hub trusts it with [tls] device_ca = \"{}\"",
        args.certs_dir.join(tls::device::DEVICE_CA_CERT).display()
    );
    Ok(())
}

/// The hub and a simulated fleet in one process, until Ctrl-C.
async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let mut config = Config {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        certs_dir: args.certs_dir.clone(),
        ..Config::default()
    };
    config.dashboard.assets_dir = args.dashboard_dir.clone();
    let busy =
        "starting the demo hub (is another telehub using the port? try --listen 127.0.0.1:0)";
    // With --cluster, a second node on the next port serves the dashboard.
    let (server, second) = match &args.cluster {
        None => (Server::bind(config).await.context(busy)?, None),
        Some(url) => {
            TokenKey::load_or_create(&args.data_dir)?;
            let mut second = config.clone();
            second.listen.set_port(match args.listen.port() {
                0 => 0,
                p => p.checked_add(1).context("--listen port is the last one")?,
            });
            second.data_dir = args.data_dir.join("node-2");
            std::fs::create_dir_all(&second.data_dir)?;
            // Every node of a cluster signs and checks tokens with one key.
            let secret = telehub::auth::SECRET_FILE;
            std::fs::copy(args.data_dir.join(secret), second.data_dir.join(secret))
                .context("copying the signing key to the second node")?;
            config.cluster.url = Some(url.clone());
            config.cluster.node_id = Some("demo-1".into());
            config.store.url = args.store.clone();
            second.store.url = args.store.clone();
            second.cluster.url = Some(url.clone());
            second.cluster.node_id = Some("demo-2".into());
            config.validate()?;
            let bus = telehub::cluster::RedisBus::new(&config.cluster, config.listen)?;
            let first = Server::bind_with_bus(config, bus).await.context(busy)?;
            let bus = telehub::cluster::RedisBus::new(&second.cluster, second.listen)?;
            let second = Server::bind_with_bus(second, bus).await.context(busy)?;
            (first, Some(second))
        }
    };
    let addr = server.local_addr()?;
    let key = TokenKey::load_or_create(&args.data_dir)?;
    let operator = key.issue(
        "demo-operator",
        Role::Operator,
        BTreeMap::new(),
        Duration::from_secs(12 * 3600),
    );
    let ca = args.certs_dir.join(tls::CA_CERT);

    // One signal stops both the fleet and the hub.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let hub = tokio::spawn(server.run(stopped(stop_rx.clone())));
    let (second_addr, second_hub) = match second {
        Some(node) => (
            Some(node.local_addr()?),
            Some(tokio::spawn(node.run(stopped(stop_rx.clone())))),
        ),
        None => (None, None),
    };

    let host = match addr.ip() {
        ip if ip.is_unspecified() => "localhost".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let base = format!("{host}:{}", addr.port());
    // The page is served by the second node when there is one: the devices'
    // telemetry and presence reach it through Redis.
    let page = second_addr.map_or(base.clone(), |a| format!("{host}:{}", a.port()));
    println!();
    println!(
        "telehub demo: {} simulated devices at {} msg/s each",
        args.devices, args.rate
    );
    if second_addr.is_some() {
        println!("  cluster:        devices on node demo-1 ({base}), dashboard on node demo-2 ({page}), joined through Redis");
    }
    println!("  dashboard:      https://{page}/#token={operator}&subscribe=*");
    println!("  operator token: {operator}");
    println!(
        "  CA certificate: {} (trust it, or accept the browser warning once)",
        ca.display()
    );
    println!(
        "  more devices:   cargo run --release -p device-sim -- --url wss://{base} --ca {} --data-dir {} --devices 100 --rate 5 --duration 60s",
        ca.display(),
        args.data_dir.display()
    );
    println!("  Ctrl-C stops the demo.");
    println!();

    let mut fleet = FleetConfig::new(format!("wss://{base}"), TokenSource::mint(key));
    fleet.ca = Some(ca);
    fleet.devices = args.devices;
    fleet.rate_hz = args.rate;
    fleet.id_prefix = "demo-".into();
    let stats = Arc::new(FleetStats::new());
    let progress = {
        let stats = stats.clone();
        let devices = args.devices;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = stats.snapshot(devices);
                tracing::info!(
                    connected = s.connected,
                    sent = s.sent,
                    rate_limited = s.rate_limited,
                    reconnects = s.reconnects,
                    errors = s.errors,
                    "fleet"
                );
            }
        })
    };
    let summary = run_fleet(fleet, stats, stopped(stop_rx)).await;
    progress.abort();
    let summary = summary?;
    tracing::info!(
        sent = summary.sent,
        reconnects = summary.reconnects,
        "fleet stopped"
    );
    if let Some(second) = second_hub {
        second.await.context("second node task")??;
    }
    hub.await.context("hub task")?
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
