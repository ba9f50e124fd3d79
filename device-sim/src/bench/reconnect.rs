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
    /// How devices authenticate: an HS256 JWT (`token`), the deprecated `th1.`
    /// format (`legacy`), an ES256 JWT from the key set (`es256`: the hub needs
    /// `[auth] jwks_file` = DEVICE_KEYS/jwks.json), or a client certificate issued
    /// from the development device CA in DEVICE_KEYS (`certificate`: the hub needs
    /// `[tls] device_ca` = DEVICE_KEYS/device-ca.pem).
    #[arg(long, value_enum, default_value = "token")]
    auth: Auth,
    /// Where the device CA and the ES256 key live (created when missing).
    #[arg(long, required_if_eq_any = [("auth", "certificate"), ("auth", "es256")])]
    device_keys: Option<std::path::PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Auth {
    Token,
    Legacy,
    Es256,
    Certificate,
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
    auth: Auth,
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
    let credentials = Credentials::new(&a, &setup)?;
    let endpoint = |i: usize| -> anyhow::Result<Endpoint> {
        let own = credentials.endpoint(&setup.endpoint, i)?;
        Ok(if spread {
            // 127.0.0.2 onwards: 127.0.0.1 stays the kernel's default.
            let n = 2 + (i % usize::from(a.sources)) as u8;
            own.with_source(Ipv4Addr::new(127, 0, 0, n).into())
        } else {
            own
        })
    };
    let devices: Vec<Arc<(Endpoint, String)>> = (0..a.devices)
        .map(|i| anyhow::Ok(Arc::new((endpoint(i)?, credentials.token(i)))))
        .collect::<anyhow::Result<_>>()?;
    let (first, conns) = wave(&a, &devices).await?;
    // Everyone drops at once: no Close handshake, as when a network path fails.
    drop(conns);
    let devices = if a.no_resume {
        devices
            .iter()
            .enumerate()
            .map(|(i, d)| anyhow::Ok(Arc::new((endpoint(i)?, d.1.clone()))))
            .collect::<anyhow::Result<_>>()?
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
        auth: a.auth,
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

/// What each device presents: a token, or a certificate (and an empty token).
struct Credentials<'a> {
    auth: Auth,
    setup: &'a Setup,
    ca: Option<std::path::PathBuf>,
    /// `certificate`: each device's certificate and key (PEM).
    certs: Vec<(String, String)>,
    /// `es256`: the issuer's key.
    es256: Option<jsonwebtoken::EncodingKey>,
}

impl<'a> Credentials<'a> {
    fn new(a: &ReconnectArgs, setup: &'a Setup) -> anyhow::Result<Self> {
        telehub::auth::crypto::install();
        let dir = a.device_keys.as_deref();
        let mut certs = Vec::new();
        let mut es256 = None;
        match (a.auth, dir) {
            (Auth::Certificate, Some(dir)) => {
                let now = std::time::SystemTime::now();
                let (from, until) = (
                    now - Duration::from_secs(60),
                    now + Duration::from_secs(86_400),
                );
                for i in 0..a.devices {
                    let c = telehub::tls::device::issue(dir, &device_id(i), from, until)?;
                    certs.push((c.cert_pem, c.key_pem));
                }
            }
            (Auth::Es256, Some(dir)) => es256 = Some(es256_key(dir)?),
            _ => {}
        }
        Ok(Credentials {
            auth: a.auth,
            setup,
            ca: a.common.ca.clone(),
            certs,
            es256,
        })
    }

    /// Device `i`'s endpoint, with a TLS session cache of its own.
    fn endpoint(&self, base: &Endpoint, i: usize) -> anyhow::Result<Endpoint> {
        match (self.certs.get(i), &self.ca) {
            (Some((cert, key)), Some(ca)) => base.with_client_cert(ca, cert, key),
            (Some(_), None) => bail!("--auth certificate needs --ca"),
            (None, _) => Ok(base.with_own_sessions()),
        }
    }

    fn token(&self, i: usize) -> String {
        let id = device_id(i);
        let key = &self.setup.key;
        match (self.auth, &self.es256) {
            (Auth::Certificate, _) => String::new(),
            (Auth::Legacy, _) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                key.issue_legacy(&telehub::auth::Claims {
                    sub: id,
                    role: Role::Device,
                    tags: Default::default(),
                    iat: now,
                    exp: now + 3600,
                    jti: None,
                    scope: Default::default(),
                })
            }
            (Auth::Es256, Some(es)) => {
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                header.kid = Some(ES256_KID.into());
                let exp = jsonwebtoken::get_current_timestamp() + 3600;
                let claims = serde_json::json!({"sub": id, "role": "device", "exp": exp});
                jsonwebtoken::encode(&header, &claims, es).unwrap_or_default()
            }
            _ => self.setup.token(&id, Role::Device),
        }
    }
}

fn device_id(i: usize) -> String {
    format!("storm-{i:05}")
}

const ES256_KID: &str = "bench-es256";

/// The bench's ES256 issuer key in `dir` (`bench-es256.der`, PKCS#8), created with
/// its `jwks.json` when missing.
fn es256_key(dir: &std::path::Path) -> anyhow::Result<jsonwebtoken::EncodingKey> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let path = dir.join("bench-es256.der");
    if !path.exists() {
        std::fs::create_dir_all(dir)?;
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let raw = pair.public_key_raw();
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": ES256_KID,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..])}]});
        std::fs::write(dir.join("jwks.json"), jwks.to_string())?;
        std::fs::write(&path, pair.serialize_der())?;
    }
    Ok(jsonwebtoken::EncodingKey::from_ec_der(&std::fs::read(
        &path,
    )?))
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
