//! `telehub notify send|status|list` and `telehub devices put|list`: notifications
//! and the device registry from the command line.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use base64::{engine::general_purpose::STANDARD, Engine};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use telehub::{
    auth::{parse_tag, Role, TokenKey, SECRET_FILE},
    client::Api,
    http::api::{CreateBody, DeviceBody, StatusBody, TargetsBody},
    tls,
};

/// How to reach the hub and who we are (every subcommand that talks to a hub).
#[derive(Args, Debug)]
pub struct HubArgs {
    /// The hub.
    #[arg(long, env = "TELEHUB_URL", default_value = "https://127.0.0.1:8443")]
    url: String,
    /// CA certificate (PEM) to trust; default: certs/ca.pem.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// File holding a token (an operator's for changes, a viewer's for reading, a
    /// device's for `pub`).
    #[arg(long, env = "TELEHUB_TOKEN_FILE", conflicts_with = "data_dir")]
    token_file: Option<PathBuf>,
    /// Development: mint a 10-minute token with the hub's key from its data dir
    /// instead of --token-file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl HubArgs {
    /// The token from --token-file, or one minted for `role` and `subject` with the
    /// key in --data-dir.
    pub(crate) fn token(&self, role: Role, subject: &str) -> anyhow::Result<String> {
        Ok(match (&self.token_file, &self.data_dir) {
            (Some(f), _) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?
                .trim()
                .to_owned(),
            (None, Some(dir)) => {
                if !dir.join(SECRET_FILE).exists() {
                    bail!(
                        "{} holds no {SECRET_FILE}: is it the hub's data dir?",
                        dir.display()
                    );
                }
                TokenKey::load_or_create(dir)?.issue(
                    subject,
                    role,
                    BTreeMap::new(),
                    Duration::from_secs(600),
                )
            }
            (None, None) => {
                bail!("pass --token-file FILE (or --data-dir DIR on the hub's machine)")
            }
        })
    }

    /// --ca, or certs/ca.pem when it exists.
    pub(crate) fn ca(&self) -> Option<PathBuf> {
        let default_ca = PathBuf::from("certs").join(tls::CA_CERT);
        self.ca
            .clone()
            .or_else(|| default_ca.exists().then_some(default_ca))
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// The REST API's address and credentials, and how to print its answers.
#[derive(Args, Debug)]
pub struct ApiArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Print JSON (the API's answer) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

impl ApiArgs {
    pub(crate) fn api(&self) -> anyhow::Result<Api> {
        let token = self.hub.token(Role::Operator, "cli")?;
        Api::new(&self.hub.url, self.hub.ca().as_deref(), token)
    }
}

#[derive(Subcommand, Debug)]
pub enum NotifyCommand {
    /// Push a notification to devices, a tag selector or every device.
    Send(SendArgs),
    /// A notification's counts and devices.
    Status(StatusArgs),
    /// Recent notifications.
    List(ListArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Target this device (repeatable).
    #[arg(long = "device", conflicts_with_all = ["tags", "all"])]
    devices: Vec<String>,
    /// Target registered devices with this tag, K=V (repeatable: all must match).
    #[arg(long = "tag", value_parser = parse_tag, conflicts_with = "all")]
    tags: Vec<(String, String)>,
    /// Target every registered device.
    #[arg(long)]
    all: bool,
    #[arg(long, value_enum, default_value = "info")]
    severity: Severity,
    #[arg(long)]
    title: String,
    #[arg(long, default_value = "")]
    body: String,
    /// File whose bytes travel as the notification's payload.
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// Lifetime, e.g. 10m, 2h; default: the hub's notify.default_ttl.
    #[arg(long)]
    ttl: Option<String>,
    /// Follow delivery until every device acknowledged or expired (exit 1 if the
    /// wait runs out first, 2 if some deliveries expired).
    #[arg(long)]
    wait: bool,
    /// Longest --wait.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    wait_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
    id: String,
    /// Only devices in this state: pending, delivered, acknowledged, expired.
    #[arg(long)]
    state: Option<String>,
    /// Devices to list (the counts always cover all).
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

#[derive(Subcommand, Debug)]
pub enum DevicesCommand {
    /// Register a device ahead of its first connection, or replace its tags.
    Put(PutArgs),
    /// The device registry.
    List(DevicesListArgs),
}

#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    api: ApiArgs,
    id: String,
    /// K=V (repeatable).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
}

#[derive(Args, Debug)]
pub struct DevicesListArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[arg(long)]
    after: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// Runs a `notify` subcommand; returns the process exit code.
pub async fn notify(cmd: NotifyCommand) -> anyhow::Result<i32> {
    match cmd {
        NotifyCommand::Send(a) => send(a).await,
        NotifyCommand::Status(a) => {
            let api = a.api.api()?;
            let s = api.status(&a.id, a.state.as_deref(), None, a.limit).await?;
            if a.api.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            Ok(0)
        }
        NotifyCommand::List(a) => {
            let api = a.api.api()?;
            let list = api.list(a.limit).await?;
            if a.api.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for n in list.notifications {
                    let c = &n.counts;
                    println!(
                        "{}  {:<8} {:>6} acked / {:<6} {:>5} expired  {}{}",
                        n.id,
                        n.severity,
                        c.acknowledged,
                        c.total,
                        c.expired,
                        n.title,
                        if n.complete { "  (complete)" } else { "" }
                    );
                }
            }
            Ok(0)
        }
    }
}

pub async fn devices(cmd: DevicesCommand) -> anyhow::Result<i32> {
    match cmd {
        DevicesCommand::Put(a) => {
            let api = a.api.api()?;
            let d = api
                .put_device(
                    &a.id,
                    &DeviceBody {
                        tags: a.tags.into_iter().collect(),
                    },
                )
                .await?;
            if a.api.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                let tags: Vec<String> = d.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("registered {} {}", d.id, tags.join(","));
            }
            Ok(0)
        }
        DevicesCommand::List(a) => {
            let api = a.api.api()?;
            let list = api.devices(a.after.as_deref(), a.limit).await?;
            if a.api.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for d in list.devices {
                    let tags: Vec<String> =
                        d.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:<24} {:<12} {}",
                        d.id,
                        if d.last_seen_ms.is_some() {
                            "seen"
                        } else {
                            "never seen"
                        },
                        tags.join(",")
                    );
                }
            }
            Ok(0)
        }
    }
}

async fn send(a: SendArgs) -> anyhow::Result<i32> {
    let api = a.api.api()?;
    if a.devices.is_empty() && a.tags.is_empty() && !a.all {
        bail!("say who to notify: --device ID, --tag K=V or --all");
    }
    let payload = match &a.payload_file {
        Some(f) => Some(
            STANDARD.encode(std::fs::read(f).with_context(|| format!("reading {}", f.display()))?),
        ),
        None => None,
    };
    let body = CreateBody {
        targets: TargetsBody {
            device_ids: a.devices,
            tags: a.tags.into_iter().collect(),
            all: a.all,
        },
        severity: format!("{:?}", a.severity).to_lowercase(),
        title: a.title,
        body: a.body,
        payload,
        ttl: a.ttl,
    };
    let created = api.create(&body).await?;
    if a.api.json && !a.wait {
        println!("{}", serde_json::to_string_pretty(&created)?);
        return Ok(0);
    }
    if !a.api.json {
        println!("{} stored for {} devices", created.id, created.targets);
    }
    if !a.wait {
        return Ok(0);
    }
    let bar = ProgressBar::new(u64::from(created.targets));
    if std::io::stderr().is_terminal() && !a.api.json {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} acknowledged {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let status = loop {
        let s = api.status(&created.id, None, None, 1).await?;
        bar.set_position(s.summary.counts.acknowledged);
        bar.set_message(format!(
            "({} pending, {} awaiting ack, {} expired)",
            s.summary.counts.pending, s.summary.counts.delivered, s.summary.counts.expired
        ));
        if s.summary.complete || started.elapsed() >= a.wait_timeout {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish_and_clear();
    // Show the stragglers, if any: devices still awaiting delivery or an ack.
    let mut status = status;
    status.devices.clear();
    status.next = None;
    for state in ["pending", "delivered"] {
        let page = api.status(&created.id, Some(state), None, 50).await?;
        status.devices.extend(page.devices);
        status.next = status.next.or(page.next);
    }
    if a.api.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    Ok(
        match (status.summary.complete, status.summary.counts.expired) {
            (false, _) => 1,
            (true, 0) => 0,
            (true, _) => 2,
        },
    )
}

fn print_status(s: &StatusBody) {
    let n = &s.summary;
    let c = &n.counts;
    println!("{} [{}] {}", n.id, n.severity, n.title);
    println!(
        "  {} targets: {} acknowledged, {} delivered (awaiting ack), {} pending, {} expired{}",
        c.total,
        c.acknowledged,
        c.delivered,
        c.pending,
        c.expired,
        if n.complete { "; complete" } else { "" }
    );
    for d in &s.devices {
        println!(
            "  {:<24} {:<13} attempts {}",
            d.device_id, d.state, d.attempts
        );
    }
    if s.next.is_some() {
        println!("  ... (more devices: --limit, or GET with after=)");
    }
}
