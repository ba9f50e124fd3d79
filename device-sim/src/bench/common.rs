//! What every bench shares: the [`Common`] arguments, [`Setup`] (endpoint and token
//! key) to connect devices and dashboards, [`wait_for`] an envelope, and [`round`] for
//! the reports.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use clap::Args;
use prost::Message as _;
use telehub::{
    auth::Role,
    proto::{envelope::Body, Envelope},
    sim::{Endpoint, SimStream},
    ws,
};

const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent connection setups.
pub(crate) const CONNECT_PARALLELISM: usize = 64;

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The hub, normally ws://127.0.0.1:PORT (a --plaintext hub).
    #[arg(long)]
    pub(crate) url: String,
    /// CA certificate for wss:// URLs.
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// The hub's data dir (tokens are minted with its key).
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// The hub's process id: adds its CPU time (fanout, campaign) or RSS (idle) to the
    /// report.
    #[arg(long)]
    pub(crate) hub_pid: Option<u32>,
    /// Dashboards connect here instead of --url: another node of a cluster.
    #[arg(long)]
    pub(crate) dashboard_url: Option<String>,
    /// Another process whose CPU the report adds (fanout), e.g. --pid redis=1234 or
    /// --pid node-b=5678 (repeatable).
    #[arg(long = "pid", value_parser = parse_named_pid)]
    pub(crate) pids: Vec<(String, u32)>,
    /// Offer permessage-deflate on every connection.
    #[arg(long)]
    pub(crate) compression: bool,
    /// Print one JSON object on stdout instead of the text report.
    #[arg(long)]
    pub(crate) json: bool,
}

fn parse_named_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PID"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("{s:?}: {pid:?} is not a process id"))?;
    Ok((name.to_owned(), pid))
}

pub(crate) struct Setup {
    pub(crate) endpoint: Endpoint,
    /// Where dashboards connect (`--dashboard-url`, else `endpoint`).
    dashboards: Endpoint,
    pub(crate) key: telehub::auth::TokenKey,
    compression: bool,
}

impl Setup {
    pub(crate) fn new(c: &Common) -> anyhow::Result<Self> {
        let endpoint = Endpoint::parse(&c.url, c.ca.as_deref())?;
        let dashboards = match &c.dashboard_url {
            Some(url) => Endpoint::parse(url, c.ca.as_deref())?,
            None => endpoint.clone(),
        };
        Ok(Setup {
            endpoint,
            dashboards,
            key: crate::load_key(&c.data_dir)?,
            compression: c.compression,
        })
    }

    pub(crate) fn token(&self, subject: &str, role: Role) -> String {
        self.key
            .issue(subject, role, BTreeMap::new(), Duration::from_secs(3600))
    }

    /// Connects and waits for `Welcome`.
    pub(crate) async fn connect(
        &self,
        path: &str,
        subject: &str,
        role: Role,
    ) -> anyhow::Result<ws::Connection<SimStream>> {
        let token = self.token(subject, role);
        let endpoint = match path {
            "/v1/dashboard" => &self.dashboards,
            _ => &self.endpoint,
        };
        let (mut conn, _) = endpoint
            .connect(path, &token, self.compression, STEP_TIMEOUT)
            .await
            .with_context(|| format!("connecting {subject} to {path}"))?;
        wait_for(&mut conn, |b| matches!(b, Body::Welcome(_)))
            .await
            .with_context(|| format!("{subject}: no Welcome"))?;
        Ok(conn)
    }
}

/// Reads until an envelope matching `want` arrives (bounded by [`STEP_TIMEOUT`]).
pub(crate) async fn wait_for(
    conn: &mut ws::Connection<SimStream>,
    want: impl Fn(&Body) -> bool,
) -> anyhow::Result<()> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match conn.read().await? {
                Some(ws::Message::Binary(b)) => {
                    if let Some(body) = Envelope::decode(b)?.body {
                        if let Body::Error(e) = &body {
                            bail!("hub error {}: {}", e.code, e.message);
                        }
                        if want(&body) {
                            return Ok(());
                        }
                    }
                }
                Some(_) => {}
                None => bail!("connection closed"),
            }
        }
    })
    .await
    .context("timed out")?
}

pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}
