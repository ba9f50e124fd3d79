//! `telehub pub` and `telehub sub`: telemetry from a terminal, as `mosquitto_pub`
//! and `mosquitto_sub` do for MQTT.
//!
//! `pub` is a device: it asks for uplink confirmations, paces itself below the rate
//! the Welcome announces, resends what the rate limiter refused, and exits 0 only
//! once the hub confirmed every message (1 if its wait runs out first). `sub` is a
//! dashboard: one line per message on stdout (text, or the envelope's proto3 JSON
//! with `--json`) until interrupted or `--count` messages were printed.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Args;
use prost::Message as _;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader},
    sync::mpsc,
    time::Instant,
};

use super::notify::HubArgs;
use telehub::{
    auth::{parse_tag, Role},
    hub::category,
    proto::{
        envelope::Body, error::Code, reading::Value, ConfirmTelemetry, Envelope, Presence, Reading,
        Subscribe, Telemetry,
    },
    sim::{Endpoint, Pacer, SimStream},
    ws,
};

/// Bound on connecting, and on each reply the commands wait for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one write to the hub.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct PubArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The messages' category, e.g. env.temperature (with --stdin: for lines that
    /// name none).
    #[arg(long)]
    category: Option<String>,
    /// A reading, NAME=VALUE or NAME:UNIT=VALUE (repeatable). VALUE is an integer,
    /// a number, true or false, or else text: temperature:Cel=21.5, door=true.
    #[arg(long = "reading", value_parser = parse_reading)]
    readings: Vec<Reading>,
    /// Read messages from stdin instead, one JSON object per line:
    /// {"category": "env.t", "readings": {"t": 21.5, "rh": {"value": 40, "unit": "%"}}}
    #[arg(long, conflicts_with = "readings")]
    stdin: bool,
    /// Send the message this many times.
    #[arg(long, default_value_t = 1, conflicts_with = "stdin")]
    count: u64,
    /// Wait between repeated messages, e.g. 1s.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, conflicts_with = "stdin")]
    interval: Duration,
    /// With --data-dir: the device id of the minted token.
    #[arg(long, default_value = "cli")]
    device: String,
    /// How long to wait for the last confirmation once everything was sent.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

#[derive(Args, Debug)]
pub struct SubArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Category patterns: env.temperature, env.* or * (default: *).
    patterns: Vec<String>,
    /// Only this device's telemetry (repeatable).
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Only devices with this tag, K=V (repeatable: all must match).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Print each message as its envelope's proto3 JSON (one object per line).
    #[arg(long)]
    json: bool,
    /// Exit after printing this many telemetry messages (the subscription's history
    /// counts).
    #[arg(long)]
    count: Option<u64>,
    /// Leave out presence changes.
    #[arg(long)]
    no_presence: bool,
}

impl SubArgs {
    /// Whether the device of `p` passes --device and --tag.
    fn wants(&self, p: &Presence) -> bool {
        (self.devices.is_empty() || self.devices.contains(&p.device_id))
            && self.tags.iter().all(|(k, v)| p.tags.get(k) == Some(v))
    }
}

/// `telehub pub`.
pub async fn publish(a: PubArgs) -> anyhow::Result<i32> {
    if !a.stdin && a.category.is_none() {
        bail!("pass --category (and --reading NAME=VALUE), or --stdin");
    }
    let token = a.hub.token(Role::Device, &a.device)?;
    let (mut link, welcome) = Link::open(&a.hub, "/v1/device", &token, true).await?;
    if !welcome.confirmations {
        bail!("this hub does not confirm telemetry (it is older than this command)");
    }
    let boot_id = rand::random::<u64>().max(1);
    link.send(&Body::ConfirmTelemetry(ConfirmTelemetry { boot_id }))
        .await?;

    let (tx, mut messages) = mpsc::channel::<Telemetry>(64);
    let mut source = if a.stdin {
        tokio::spawn(read_stdin(a.category.clone(), tx))
    } else {
        let t = Telemetry {
            category: a.category.clone().unwrap_or_default(),
            readings: a.readings.clone(),
            ..Default::default()
        };
        tokio::spawn(repeat(t, a.count, a.interval, tx))
    };

    let mut pacer = Pacer::below_limit(welcome.rate_per_second, welcome.burst, Instant::now());
    let mut seq = 0u64;
    let mut unconfirmed: BTreeMap<u64, Envelope> = BTreeMap::new();
    let mut refused: BTreeSet<u64> = BTreeSet::new();
    let mut resend_at: Option<Instant> = None;
    let mut sent_all_at: Option<Instant> = None;
    let mut next: Option<Telemetry> = None;
    let mut through = 0;
    let mut invalid = 0u64;
    loop {
        if sent_all_at.is_some() && unconfirmed.is_empty() {
            break;
        }
        let now = Instant::now();
        // The next send (a resend first) waits for the pacer's token.
        let ready_at = pacer
            .as_mut()
            .map_or(now, |p| p.next_available(now))
            .max(resend_at.filter(|_| !refused.is_empty()).unwrap_or(now));
        let want_send = !refused.is_empty() || next.is_some();
        let deadline = sent_all_at.map(|at| at + a.wait);
        tokio::select! {
            m = messages.recv(), if next.is_none() && sent_all_at.is_none() => match m {
                Some(t) => {
                    check(&t, &welcome).with_context(|| format!("message {}", seq + 1))?;
                    next = Some(t);
                }
                None => {
                    (&mut source).await.context("reading the messages")??;
                    sent_all_at = Some(Instant::now());
                }
            },
            _ = tokio::time::sleep_until(ready_at), if want_send => {
                if let Some(p) = pacer.as_mut() {
                    if !p.try_take(Instant::now()) {
                        continue;
                    }
                }
                let envelope = if let Some(s) = refused.pop_first() {
                    unconfirmed.get(&s).cloned()
                } else if let Some(mut t) = next.take() {
                    seq += 1;
                    t.seq = seq;
                    if t.timestamp_ms == 0 {
                        t.timestamp_ms = now_ms();
                    }
                    let envelope = Envelope { body: Some(Body::Telemetry(t)) };
                    unconfirmed.insert(seq, envelope.clone());
                    Some(envelope)
                } else {
                    None
                };
                if let Some(envelope) = envelope {
                    link.send_envelope(&envelope).await?;
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(now)), if deadline.is_some() => {
                eprintln!(
                    "{} of {seq} messages not confirmed within {} (confirmed through seq {through})",
                    unconfirmed.len(),
                    humantime::format_duration(a.wait)
                );
                link.close().await;
                return Ok(1);
            }
            incoming = link.next() => match incoming? {
                In::Ping(p) => link.pong(&p).await?,
                In::Body(Body::TelemetryConfirmed(c)) if c.boot_id == boot_id => {
                    through = c.through_seq;
                    unconfirmed.retain(|&s, _| s > c.through_seq);
                    if !c.rate_limited.is_empty() {
                        refused.extend(c.rate_limited.iter().filter(|s| unconfirmed.contains_key(s)));
                        resend_at = Some(Instant::now() + Duration::from_millis(c.retry_after_ms.into()));
                    }
                }
                In::Body(Body::Error(e)) if e.code == Code::RateLimited as i32 => {}
                In::Body(Body::Error(e)) => {
                    // Invalid or forbidden: never accepted (the confirmations pass over it).
                    invalid += 1;
                    eprintln!("hub: {:?}: {}", e.code(), e.message);
                }
                In::Body(Body::Notification(n)) => eprintln!("notification {} for this device (not acknowledged): {}", n.id, n.title),
                In::Body(_) => {}
            },
        }
    }
    link.close().await;
    if invalid > 0 {
        eprintln!("{invalid} of {seq} messages refused by the hub (see above)");
        return Ok(1);
    }
    eprintln!("{seq} messages published and confirmed");
    Ok(0)
}

/// `telehub sub`.
pub async fn subscribe(a: SubArgs) -> anyhow::Result<i32> {
    let token = a.hub.token(Role::Viewer, "cli")?;
    let (mut link, _) = Link::open(&a.hub, "/v1/dashboard", &token, true).await?;
    let categories = match a.patterns.is_empty() {
        true => vec!["*".to_owned()],
        false => a.patterns.clone(),
    };
    link.send(&Body::Subscribe(Subscribe {
        categories,
        device_ids: a.devices.clone(),
        tags: a.tags.iter().cloned().collect(),
        ..Default::default()
    }))
    .await?;
    let mut printed = 0u64;
    // Line-buffered, as a terminal or a pipe reader expects each message at once.
    let mut out = std::io::LineWriter::new(std::io::stdout().lock());
    let done = |printed: u64| a.count.is_some_and(|n| printed >= n);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while !done(printed) {
        let body = match tokio::select! {
            _ = &mut interrupted => break,
            incoming = link.next() => incoming?,
        } {
            In::Ping(p) => {
                link.pong(&p).await?;
                continue;
            }
            In::Body(body) => body,
        };
        let shown = match body {
            Body::Telemetry(t) => {
                printed += 1;
                print_telemetry(&mut out, &t, a.json)
            }
            Body::History(h) => {
                let mut shown = Ok(());
                for t in h.telemetry {
                    if done(printed) || shown.is_err() {
                        break;
                    }
                    printed += 1;
                    shown = print_telemetry(&mut out, &t, a.json);
                }
                shown
            }
            // The hub sends every device's presence; the filter applies here.
            Body::Presence(p) if !a.no_presence && a.wants(&p) => {
                if a.json {
                    print_json(&mut out, Body::Presence(p))
                } else {
                    let state = if p.online { "online" } else { "offline" };
                    writeln!(out, "{} {} {state}", time(p.at_ms), p.device_id)
                }
            }
            Body::Dropped(d) => {
                eprintln!(
                    "{} messages dropped: this terminal reads too slowly",
                    d.count
                );
                Ok(())
            }
            Body::Error(e) => bail!(
                "the hub refused the subscription: {:?}: {}",
                e.code(),
                e.message
            ),
            _ => Ok(()),
        };
        match shown {
            Ok(()) => {}
            // Whoever reads stdout is gone (`telehub sub | head -3`): done.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e).context("writing to stdout"),
        }
    }
    link.close().await;
    Ok(0)
}

/// Telemetry as it will be checked by the hub: refused here with a clear message
/// rather than sent and answered with an `Error`.
fn check(t: &Telemetry, welcome: &telehub::proto::Welcome) -> anyhow::Result<()> {
    category::validate(&t.category)
        .map_err(|e| anyhow::anyhow!("category {:?}: {e}", t.category))?;
    let max = welcome.max_readings as usize;
    if max > 0 && t.readings.len() > max {
        bail!(
            "{} readings; the hub takes at most {max} per message",
            t.readings.len()
        );
    }
    Ok(())
}

fn print_telemetry(out: &mut impl Write, t: &Telemetry, json: bool) -> std::io::Result<()> {
    if json {
        return print_json(out, Body::Telemetry(t.clone()));
    }
    let mut line = format!(
        "{} {} {} #{}",
        time(t.received_ms),
        t.device_id,
        t.category,
        t.seq
    );
    for r in &t.readings {
        line.push(' ');
        line.push_str(&format_reading(r));
    }
    writeln!(out, "{line}")
}

fn print_json(out: &mut impl Write, body: Body) -> std::io::Result<()> {
    let env = Envelope { body: Some(body) };
    writeln!(out, "{}", serde_json::to_string(&env)?)
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `name=value` plus the unit, as `--reading` takes them back.
fn format_reading(r: &Reading) -> String {
    let value = match &r.value {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Integer(i)) => i.to_string(),
        Some(Value::Flag(b)) => b.to_string(),
        Some(Value::Text(s)) => format!("{s:?}"),
        Some(Value::Raw(b)) => format!("<{} bytes>", b.len()),
        None => "-".to_owned(),
    };
    match r.unit.as_str() {
        "" => format!("{}={value}", r.name),
        unit => format!("{}:{unit}={value}", r.name),
    }
}

/// `NAME=VALUE` or `NAME:UNIT=VALUE`.
fn parse_reading(s: &str) -> Result<Reading, String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE or NAME:UNIT=VALUE"))?;
    let (name, unit) = key.split_once(':').unwrap_or((key, ""));
    if name.is_empty() {
        return Err(format!("{s:?}: the reading has no name"));
    }
    let value = if let Ok(i) = value.parse::<i64>() {
        Value::Integer(i)
    } else if let Ok(n) = value.parse::<f64>() {
        Value::Number(n)
    } else if let Ok(b) = value.parse::<bool>() {
        Value::Flag(b)
    } else {
        Value::Text(value.to_owned())
    };
    Ok(Reading {
        name: name.to_owned(),
        value: Some(value),
        unit: unit.to_owned(),
    })
}

/// One stdin line: `{"category": ..., "readings": {name: value | {"value": v,
/// "unit": u}}, "timestamp_ms": ...}`.
fn parse_line(line: &str, category: Option<&str>) -> anyhow::Result<Telemetry> {
    let v: serde_json::Value = serde_json::from_str(line)?;
    let category = match v.get("category") {
        Some(serde_json::Value::String(c)) => c.clone(),
        Some(_) => bail!("\"category\" must be a string"),
        None => category
            .context("the line names no \"category\" and --category is not set")?
            .to_owned(),
    };
    let mut readings = Vec::new();
    if let Some(r) = v.get("readings") {
        let r = r.as_object().context("\"readings\" must be an object")?;
        for (name, value) in r {
            let (value, unit) = match value {
                serde_json::Value::Object(o) => (
                    o.get("value").context("a reading object needs \"value\"")?,
                    o.get("unit").and_then(|u| u.as_str()).unwrap_or(""),
                ),
                other => (other, ""),
            };
            let value = match value {
                serde_json::Value::Bool(b) => Value::Flag(*b),
                serde_json::Value::String(s) => Value::Text(s.clone()),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Value::Integer(i),
                    None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
                },
                other => bail!("reading {name:?}: {other} is not a number, bool or string"),
            };
            readings.push(Reading {
                name: name.clone(),
                value: Some(value),
                unit: unit.to_owned(),
            });
        }
    }
    Ok(Telemetry {
        category,
        readings,
        timestamp_ms: v.get("timestamp_ms").and_then(|t| t.as_u64()).unwrap_or(0),
        ..Default::default()
    })
}

async fn repeat(
    t: Telemetry,
    count: u64,
    interval: Duration,
    tx: mpsc::Sender<Telemetry>,
) -> anyhow::Result<()> {
    for i in 0..count {
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        if tx.send(t.clone()).await.is_err() {
            break;
        }
    }
    Ok(())
}

async fn read_stdin(category: Option<String>, tx: mpsc::Sender<Telemetry>) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut number = 0;
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let t = parse_line(&line, category.as_deref())
            .with_context(|| format!("stdin line {number}"))?;
        if tx.send(t).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// What [`Link::next`] read.
enum In {
    Body(Body),
    /// Answer with [`Link::pong`] (not inside `next`, which a `select!` may cancel:
    /// a write cut short would corrupt the stream).
    Ping(Bytes),
}

/// A WebSocket to the hub that yields envelope bodies and pings.
struct Link<S> {
    reader: ws::Reader<tokio::io::ReadHalf<S>>,
    writer: ws::Writer<tokio::io::WriteHalf<S>>,
}

impl Link<SimStream> {
    /// Connects to `path` and reads the Welcome.
    async fn open(
        hub: &HubArgs,
        path: &str,
        token: &str,
        compression: bool,
    ) -> anyhow::Result<(Self, telehub::proto::Welcome)> {
        let ca = hub.ca();
        let endpoint = Endpoint::parse(hub.url(), ca.as_deref())?;
        let (conn, _) = endpoint
            .connect(path, token, compression, CONNECT_TIMEOUT)
            .await
            .map_err(|e| match e {
                ws::Error::HttpStatus(401) => anyhow::anyhow!(
                    "{}: the hub refused the token (401): expired, revoked or signed with another key",
                    hub.url()
                ),
                ws::Error::HttpStatus(403) => anyhow::anyhow!(
                    "{}: this token's role may not use {path} (403)",
                    hub.url()
                ),
                e => anyhow::anyhow!("{}: {e}", hub.url()),
            })?;
        let (reader, writer) = conn.split();
        let mut link = Link { reader, writer };
        let welcome = tokio::time::timeout(CONNECT_TIMEOUT, link.next())
            .await
            .context("no Welcome from the hub")??;
        match welcome {
            In::Body(Body::Welcome(w)) => Ok((link, w)),
            In::Body(other) => bail!("the hub's first message is not a Welcome: {other:?}"),
            In::Ping(_) => bail!("the hub's first message is not a Welcome"),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    async fn send(&mut self, body: &Body) -> anyhow::Result<()> {
        self.send_envelope(&Envelope {
            body: Some(body.clone()),
        })
        .await
    }

    async fn send_envelope(&mut self, env: &Envelope) -> anyhow::Result<()> {
        let msg = ws::Message::Binary(Bytes::from(env.encode_to_vec()));
        tokio::time::timeout(SEND_TIMEOUT, self.writer.send(&msg))
            .await
            .context("the hub stopped reading")?
            .context("sending to the hub")
    }

    async fn pong(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        tokio::time::timeout(SEND_TIMEOUT, self.writer.pong(payload))
            .await
            .context("the hub stopped reading")?
            .context("answering a ping")
    }

    /// The next envelope's body, or a ping; a close or a lost connection is an
    /// error. Cancel-safe: it only reads.
    async fn next(&mut self) -> anyhow::Result<In> {
        loop {
            match self.reader.next().await.context("reading from the hub")? {
                ws::Incoming::Message(ws::Message::Binary(b)) => {
                    let env = Envelope::decode(b).context("the hub sent an invalid envelope")?;
                    if let Some(body) = env.body {
                        return Ok(In::Body(body));
                    }
                }
                ws::Incoming::Message(ws::Message::Text(_)) | ws::Incoming::Pong(_) => {}
                ws::Incoming::Ping(p) => return Ok(In::Ping(p)),
                ws::Incoming::Close(frame) => {
                    let _ = self
                        .writer
                        .close(frame.as_ref().map_or(1000, |f| f.code), "")
                        .await;
                    match frame {
                        Some(f) => bail!("the hub closed the connection: {} {}", f.code, f.reason),
                        None => bail!("the hub closed the connection"),
                    }
                }
            }
        }
    }

    /// Closes normally, waiting briefly for the hub's answer.
    async fn close(&mut self) {
        if self.writer.close(1000, "").await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(i) = self.reader.next().await {
                    if matches!(i, ws::Incoming::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_parse_by_their_looks() {
        let r = parse_reading("temperature:Cel=21.5").unwrap();
        assert_eq!((r.name.as_str(), r.unit.as_str()), ("temperature", "Cel"));
        assert_eq!(r.value, Some(Value::Number(21.5)));
        assert_eq!(parse_reading("n=3").unwrap().value, Some(Value::Integer(3)));
        assert_eq!(
            parse_reading("door=true").unwrap().value,
            Some(Value::Flag(true))
        );
        assert_eq!(
            parse_reading("state=a=b").unwrap().value,
            Some(Value::Text("a=b".into()))
        );
        assert!(parse_reading("novalue").is_err());
        assert!(parse_reading("=1").is_err());
        assert_eq!(
            format_reading(&parse_reading("t:Cel=21.5").unwrap()),
            "t:Cel=21.5"
        );
    }

    #[test]
    fn stdin_lines_carry_category_readings_and_units() {
        let t = parse_line(
            r#"{"readings": {"t": 21.5, "rh": {"value": 40, "unit": "%"}, "ok": true}}"#,
            Some("env"),
        )
        .unwrap();
        assert_eq!(t.category, "env");
        let rh = t.readings.iter().find(|r| r.name == "rh").unwrap();
        assert_eq!(
            (rh.value.clone(), rh.unit.as_str()),
            (Some(Value::Integer(40)), "%")
        );
        assert!(parse_line(r#"{"readings": {}}"#, None).is_err());
        assert!(parse_line(r#"{"category": "x", "readings": {"a": [1]}}"#, None).is_err());
        assert!(parse_line("not json", Some("x")).is_err());
    }
}
