//! The C reference client (`clients/c`) against a real hub: `make -C clients/c`
//! builds it (and runs its core's unit tests), then its example device,
//! `telehub-sensor`, runs as a process over TLS on loopback while a dashboard
//! watches, as a device in the field would:
//!
//! - its telemetry reaches a dashboard once each, with its readings, and every
//!   message is confirmed (uplink confirmations);
//! - CRITICAL notifications, stored before it connects and sent while it is
//!   online, are received and acknowledged (the hub's status says so);
//! - messages the rate limiter refuses are resent with their seq and published
//!   once;
//! - a takeover (close 4001) and its reconnection neither lose nor repeat a
//!   message;
//! - a hub restarted (SIGTERM) and killed (SIGKILL) mid-stream, each time a
//!   `telehub serve` process started again on the same port and directories,
//!   loses nothing the device held: what it buffered while the hub was down and
//!   what the old hub had not confirmed reach the new hub's dashboard.
//!
//! The test follows the device through its stdout lines only (see
//! `clients/c/examples/sensor.c`). The build needs a C compiler, `protoc`,
//! nanopb and libwebsockets (`.ci/run` installs them); without them these tests
//! fail with that hint, never skip.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use common::*;
use telehub::{
    auth::{Role, TokenKey},
    client::Api,
    proto::{envelope::Body, reading, Telemetry},
};
use tokio::{sync::mpsc, task::JoinHandle, time::timeout};

/// The category the device publishes and the dashboards subscribe to.
const CATEGORY: &str = "env.temperature";
/// Bound on one device run from start to exit.
const RUN_LIMIT: Duration = Duration::from_secs(40);
/// What to do when the client cannot be built.
const INSTALL_HINT: &str = "the C client's build dependencies are missing or broken: run `bash .ci/run` \
     (it installs build-essential, protobuf-compiler, nanopb, libnanopb-dev and libwebsockets-dev with apt)";

/// `clients/c` in this checkout.
fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/c")
}

/// Builds the client and runs its unit tests, once per test binary; the
/// example device's path.
fn sensor_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = Command::new("make")
            .arg("-C")
            .arg(client_dir())
            .args(["all", "check"])
            .output()
            .map_err(|e| format!("running make: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "make -C clients/c all check: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(client_dir().join("build/telehub-sensor"))
    });
    match built {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}\n{INSTALL_HINT}"),
    }
}

/// One run of `telehub-sensor`: its stdout and stderr lines as they come,
/// killed on drop.
struct Sensor {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far (stderr's prefixed), for failure messages.
    transcript: Vec<String>,
}

impl Sensor {
    /// Starts the device on `port` (trusting `ca`) with `args` after the connection's.
    fn start(port: u16, ca: &Path, token_file: &Path, args: &[&str]) -> Sensor {
        let mut child = Command::new(sensor_binary())
            .arg("--url")
            .arg(format!("wss://localhost:{port}"))
            .arg("--ca")
            .arg(ca)
            .arg("--token-file")
            .arg(token_file)
            .args(["--category", CATEGORY, "--timeout-s", "35"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting telehub-sensor: {e}\n{INSTALL_HINT}"));
        let (tx, lines) = mpsc::unbounded_channel();
        forward(child.stdout.take().expect("stdout"), "", tx.clone());
        forward(child.stderr.take().expect("stderr"), "stderr: ", tx);
        Sensor {
            child,
            lines,
            transcript: Vec::new(),
        }
    }

    /// Reads lines until `pick` accepts one (bounded by `limit`).
    async fn until<R>(
        &mut self,
        what: &str,
        limit: Duration,
        mut pick: impl FnMut(&str) -> Option<R>,
    ) -> R {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => panic!(
                    "the device exited before {what}:\n{}",
                    self.transcript.join("\n")
                ),
                Err(_) => panic!(
                    "timed out after {limit:?} waiting for {what}:\n{}",
                    self.transcript.join("\n")
                ),
            };
            self.transcript.push(line.clone());
            if let Some(r) = pick(&line) {
                return r;
            }
        }
    }

    /// Reads to the end of the output; the exit status and every line.
    async fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = tokio::time::Instant::now() + RUN_LIMIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.transcript.push(line),
                Ok(None) => break,
                Err(_) => panic!(
                    "the device did not finish within {RUN_LIMIT:?}:\n{}",
                    self.transcript.join("\n")
                ),
            }
        }
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the device") {
                break status;
            }
            assert!(
                started.elapsed() < T,
                "the device closed its output but did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (status, std::mem::take(&mut self.transcript))
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends each line of `from` (prefixed) to `tx`, from a thread.
fn forward(
    from: impl Read + Send + 'static,
    prefix: &'static str,
    tx: mpsc::UnboundedSender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(format!("{prefix}{line}")).is_err() {
                break;
            }
        }
    });
}

/// The number after `word ` at the start of `line` (`confirmed 42 ...` -> 42).
fn counter(line: &str, word: &str) -> Option<u64> {
    line.strip_prefix(word)?
        .strip_prefix(' ')?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// The value of `key=` in a `word k=v ...` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Checks the run's exit and the final summary; the summary's counters.
fn finished_ok(status: ExitStatus, lines: &[String]) -> BTreeMap<String, u64> {
    let transcript = lines.join("\n");
    assert!(
        status.success(),
        "the device failed ({status}):\n{transcript}"
    );
    let done = lines
        .iter()
        .find(|l| l.starts_with("done "))
        .unwrap_or_else(|| panic!("no summary line:\n{transcript}"));
    done.split(' ')
        .skip(1)
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// What a dashboard received of one device: every Telemetry, live or from a
/// History, in arrival order.
type Heard = Arc<Mutex<Vec<Telemetry>>>;

/// Reads `dashboard` in the background until the hub closes it (or it is
/// aborted), keeping the telemetry of `device`.
fn listen(mut dashboard: Client, device: &'static str) -> (Heard, JoinHandle<()>) {
    let heard: Heard = Arc::default();
    let into = heard.clone();
    let task = tokio::spawn(async move {
        loop {
            let Some(event) = dashboard.next_event_within(RUN_LIMIT).await else {
                return;
            };
            let body = match event {
                Event::Envelope(env) => env.body,
                Event::Close(_) | Event::Gone(_) => return,
                Event::Text(_) => continue,
            };
            let ours = |t: &Telemetry| t.device_id == device;
            match body {
                Some(Body::Telemetry(t)) if ours(&t) => into.lock().unwrap().push(t),
                Some(Body::History(h)) => into
                    .lock()
                    .unwrap()
                    .extend(h.telemetry.into_iter().filter(ours)),
                _ => {}
            }
        }
    });
    (heard, task)
}

fn seqs(heard: &Heard) -> Vec<u64> {
    heard.lock().unwrap().iter().map(|t| t.seq).collect()
}

/// Waits until the dashboards together heard every seq in 1..=n; the seqs heard.
async fn wait_heard_all(what: &str, heard: &[&Heard], n: u64) -> Vec<u64> {
    wait_heard(what, heard, n, |_| true).await
}

/// Waits until the dashboards together heard every seq in 1..=n that `needed`
/// picks; every seq heard, sorted.
async fn wait_heard(
    what: &str,
    heard: &[&Heard],
    n: u64,
    needed: impl Fn(u64) -> bool,
) -> Vec<u64> {
    let deadline = Instant::now() + T;
    loop {
        let mut all: Vec<u64> = heard.iter().flat_map(|h| seqs(h)).collect();
        all.sort_unstable();
        let missing: Vec<u64> = (1..=n)
            .filter(|&s| needed(s) && all.binary_search(&s).is_err())
            .collect();
        if missing.is_empty() {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: seqs never heard: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `token` in a file under `dir`, as a device keeps it.
fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("device.jwt");
    std::fs::write(&path, format!("{token}\n")).expect("writing the token");
    path
}

#[tokio::test]
async fn a_c_device_streams_confirmed_telemetry_and_acks_critical_notifications() {
    const DEVICE: &str = "c-sensor-1";
    // Built (once) before any hub starts: make blocks this thread.
    sensor_binary();
    let hub = Hub::start().await;
    let mut dashboard = hub.dashboard().await;
    dashboard.subscribe(&["env.*"]).await;
    let (heard, listening) = listen(dashboard, DEVICE);
    let api = hub.api(Role::Operator);
    // Stored before the device connects: delivered when it does.
    let early = api
        .create(&notification(
            "critical",
            to_devices(&[DEVICE]),
            "Firmware recall",
        ))
        .await
        .expect("creating a notification")
        .id;
    let token = token_file(
        &hub.root,
        &hub.token(DEVICE, Role::Device, &[("fleet", "c")]),
    );
    let ca = hub.certs_dir.join("ca.pem");
    let mut sensor = Sensor::start(
        hub.addr.port(),
        &ca,
        &token,
        &["--count", "20", "--interval-ms", "20", "--acks", "2"],
    );

    // Upgraded without permessage-deflate, welcomed with confirmations on.
    let extensions = sensor
        .until("the upgrade", T, |l| {
            l.strip_prefix("connected extensions=").map(str::to_string)
        })
        .await;
    assert_eq!(
        extensions, "none",
        "the device must not negotiate compression"
    );
    let welcome = sensor
        .until("the Welcome", T, |l| {
            l.starts_with("welcome ").then(|| l.to_string())
        })
        .await;
    assert_eq!(field(&welcome, "subject"), Some(DEVICE));
    assert_eq!(field(&welcome, "confirmations"), Some("1"));

    // The stored notification, then one sent while the device is online.
    let notified = sensor
        .until("the stored notification", T, |l| {
            l.starts_with("notification ").then(|| l.to_string())
        })
        .await;
    assert!(
        notified.starts_with(&format!(
            "notification {early} severity=critical redelivery=0"
        )),
        "{notified}"
    );
    assert!(notified.ends_with("title=Firmware recall"), "{notified}");
    sensor
        .until("its ack", T, |l| {
            (l == format!("acked {early}")).then_some(())
        })
        .await;
    let live = api
        .create(&notification("critical", to_devices(&[DEVICE]), "Second"))
        .await
        .expect("creating a notification")
        .id;
    sensor
        .until("the live notification's ack", T, |l| {
            (l == format!("acked {live}")).then_some(())
        })
        .await;
    for id in [&early, &live] {
        wait_status(&api, id, "the device's ack", |s| {
            row(s, DEVICE).state == "acknowledged"
        })
        .await;
    }

    let (status, lines) = sensor.finish().await;
    let done = finished_ok(status, &lines);
    assert_eq!(done["published"], 20);
    assert_eq!(done["confirmed"], 20);
    assert_eq!(done["acks"], 2);
    assert_eq!(done["connects"], 1);
    let last = lines.iter().filter_map(|l| counter(l, "confirmed")).max();
    assert_eq!(last, Some(20), "{lines:#?}");

    // Once each, in order, with the readings the device took.
    let all = wait_heard_all("the dashboard", &[&heard], 20).await;
    assert_eq!(all, (1..=20).collect::<Vec<_>>());
    let telemetry = heard.lock().unwrap().clone();
    for t in &telemetry {
        assert_eq!(t.category, CATEGORY);
        let named = |name: &str| {
            t.readings
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("no reading {name} in {t:?}"))
        };
        assert_eq!(
            named("sample").value,
            Some(reading::Value::Integer(t.seq as i64))
        );
        assert_eq!(named("ok").value, Some(reading::Value::Flag(true)));
        assert_eq!(named("temperature").unit, "Cel");
        assert!(matches!(
            named("temperature").value,
            Some(reading::Value::Number(_))
        ));
        assert!(t.received_ms > 0);
    }
    let seqs_in_order: Vec<u64> = telemetry.iter().map(|t| t.seq).collect();
    assert_eq!(seqs_in_order, all, "telemetry arrives in seq order");
    listening.abort();
}

#[tokio::test]
async fn rate_limited_telemetry_is_resent_with_its_seq_and_published_once() {
    const DEVICE: &str = "c-sensor-2";
    // Built (once) before any hub starts: make blocks this thread.
    sensor_binary();
    let hub = Hub::with(|c| {
        c.rate.per_second = 20;
        c.rate.burst = 5;
    })
    .await;
    let mut dashboard = hub.dashboard().await;
    dashboard.subscribe(&["env.*"]).await;
    let (heard, listening) = listen(dashboard, DEVICE);
    let token = token_file(&hub.root, &hub.token(DEVICE, Role::Device, &[]));
    // Unpaced: the device sends all 40 at once and leaves the rest to the
    // confirmations' rate_limited lists.
    let mut sensor = Sensor::start(
        hub.addr.port(),
        &hub.certs_dir.join("ca.pem"),
        &token,
        &["--count", "40", "--interval-ms", "0", "--unpaced"],
    );
    let limited = sensor
        .until("a confirmation listing refusals", T, |l| {
            let n: u64 = field(l, "rate_limited")?.parse().ok()?;
            (l.starts_with("confirmed ") && n > 0).then_some(n)
        })
        .await;
    assert!(limited > 0);
    let (status, lines) = sensor.finish().await;
    let done = finished_ok(status, &lines);
    assert_eq!(done["confirmed"], 40);
    assert!(done["rate_limited"] > 0, "{done:?}");
    assert!(done["resent"] > 0, "{done:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("error code=2 ")),
        "the hub's RATE_LIMITED error reaches the device:\n{}",
        lines.join("\n")
    );
    let all = wait_heard_all("the dashboard", &[&heard], 40).await;
    assert_eq!(
        all,
        (1..=40).collect::<Vec<_>>(),
        "each message published once"
    );
    let m = hub.metrics();
    assert!(
        m.get("telehub_telemetry_rate_limited_total") > 0.0,
        "{}",
        m.text
    );
    listening.abort();
}

#[tokio::test]
async fn a_takeover_and_reconnection_neither_lose_nor_repeat_a_message() {
    const DEVICE: &str = "c-sensor-3";
    // Built (once) before any hub starts: make blocks this thread.
    sensor_binary();
    let hub = Hub::start().await;
    let mut dashboard = hub.dashboard().await;
    dashboard.subscribe(&["env.*"]).await;
    let (heard, listening) = listen(dashboard, DEVICE);
    let token = token_file(&hub.root, &hub.token(DEVICE, Role::Device, &[]));
    let mut sensor = Sensor::start(
        hub.addr.port(),
        &hub.certs_dir.join("ca.pem"),
        &token,
        &[
            "--count",
            "100",
            "--interval-ms",
            "10",
            "--backoff-min-ms",
            "200",
            "--backoff-max-ms",
            "400",
        ],
    );
    sensor
        .until("20 confirmed", T, |l| {
            counter(l, "confirmed").filter(|&n| n >= 20)
        })
        .await;
    // Another connection for the same device takes it over: the C client is
    // closed with 4001, comes back after its back-off and takes over in turn.
    let other = hub.device(DEVICE).await;
    sensor
        .until("the takeover's close", T, |l| {
            (l.starts_with("closed ") && field(l, "code") == Some("4001")).then_some(())
        })
        .await;
    drop(other);
    let (status, lines) = sensor.finish().await;
    let done = finished_ok(status, &lines);
    assert_eq!(done["confirmed"], 100);
    assert!(done["connects"] >= 2, "{done:?}");
    let all = wait_heard_all("the dashboard", &[&heard], 100).await;
    assert_eq!(
        all,
        (1..=100).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
    listening.abort();
}

/// `telehub serve` as a process on a fixed port and directories, so it can be
/// stopped and started again; SIGKILLed on drop.
struct Serve {
    child: Option<Child>,
    port: u16,
    root: PathBuf,
}

impl Serve {
    fn start(root: &Path, port: u16) -> Serve {
        let child = Command::new(env!("CARGO_BIN_EXE_telehub"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(root.join("data"))
            .arg("--certs-dir")
            .arg(root.join("certs"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting telehub serve");
        Serve {
            child: Some(child),
            port,
            root: root.to_path_buf(),
        }
    }

    async fn ready(&self, api: &Api) {
        wait_for("the hub to listen", Duration::from_secs(20), async || {
            api.readyz().await.is_ok()
        })
        .await;
    }

    /// Stops the hub: SIGTERM (it closes every connection with 1001 and exits)
    /// or SIGKILL (a crash: connections just end).
    async fn stop(&mut self, crash: bool) {
        let mut child = self.child.take().expect("running");
        if crash {
            child.kill().expect("SIGKILL");
        } else {
            let ok = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill -TERM");
            assert!(ok.success());
        }
        let started = Instant::now();
        while child.try_wait().expect("waiting for the hub").is_none() {
            assert!(started.elapsed() < T + T, "the hub did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A viewer dashboard subscribed to the device's category.
    async fn dashboard(&self, key: &TokenKey) -> Client {
        let viewer = key.issue(
            "viewer",
            Role::Viewer,
            Default::default(),
            Duration::from_secs(3600),
        );
        let tls = tls_to(
            ([127, 0, 0, 1], self.port).into(),
            &self.root.join("certs/ca.pem"),
        )
        .await;
        let mut dashboard = Client::upgrade(
            tls,
            &format!("localhost:{}", self.port),
            "/v1/dashboard",
            &client_config(Some(&viewer), &[PROTOCOL]),
        )
        .await
        .expect("dashboard upgrade");
        dashboard.expect_welcome().await;
        dashboard.subscribe(&["env.*"]).await;
        dashboard
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn hub_restarts_mid_stream_lose_nothing_the_device_published() {
    const DEVICE: &str = "c-sensor-4";
    // Built (once) before any hub starts: make blocks this thread.
    sensor_binary();
    const COUNT: u64 = 200;
    let dir = Dir::new("client-c-restart");
    let root = dir.0.clone();
    telehub::tls::ensure_dev_certificates(&root.join("certs")).expect("certificates");
    let key = TokenKey::load_or_create(&root.join("data")).expect("token key");
    let port = free_port();
    let mut serve = Serve::start(&root, port);
    let operator = key.issue(
        "ops",
        Role::Operator,
        Default::default(),
        Duration::from_secs(3600),
    );
    let api = Api::new(
        &format!("https://localhost:{port}"),
        Some(&root.join("certs/ca.pem")),
        operator,
    )
    .expect("REST client");
    serve.ready(&api).await;

    // The device's token as an operator mints it: `telehub token`.
    let minted = Command::new(env!("CARGO_BIN_EXE_telehub"))
        .args([
            "token",
            "--role",
            "device",
            "--subject",
            DEVICE,
            "--ttl",
            "1h",
        ])
        .arg("--data-dir")
        .arg(root.join("data"))
        .output()
        .expect("telehub token");
    assert!(minted.status.success(), "{minted:?}");
    let token = token_file(&root, String::from_utf8(minted.stdout).unwrap().trim());

    let mut dashboards = vec![listen(serve.dashboard(&key).await, DEVICE)];
    let mut sensor = Sensor::start(
        port,
        &root.join("certs/ca.pem"),
        &token,
        &[
            "--count",
            &COUNT.to_string(),
            "--interval-ms",
            "20",
            "--backoff-min-ms",
            "200",
            "--backoff-max-ms",
            "500",
        ],
    );
    // A graceful restart, then a crash; the device keeps measuring meanwhile.
    // `in_flight`: the seqs each stop may have caught between the hub's
    // confirmation and its write to the dashboard (see below).
    let mut in_flight: Vec<std::ops::RangeInclusive<u64>> = Vec::new();
    for (crash, at) in [(false, 30), (true, 100)] {
        sensor
            .until(&format!("{at} confirmed"), T, |l| {
                counter(l, "confirmed").filter(|&n| n >= at)
            })
            .await;
        serve.stop(crash).await;
        let code = if crash { "0" } else { "1001" };
        sensor
            .until(&format!("the close ({code})"), T, |l| {
                (l.starts_with("closed ") && field(l, "code") == Some(code)).then_some(())
            })
            .await;
        let (_, listening) = dashboards.last_mut().expect("a dashboard");
        timeout(T, listening)
            .await
            .expect("the dashboard ends with its hub")
            .expect("listening");
        // A confirmation means accepted and queued for every dashboard, not
        // written to them: a hub that stops right after confirming may not have
        // written the last ones. What an earlier confirmation covered, it had.
        let confirmed: Vec<u64> = sensor
            .transcript
            .iter()
            .filter_map(|l| counter(l, "confirmed"))
            .collect();
        let last = confirmed.last().copied().unwrap_or(0);
        let earlier = confirmed
            .iter()
            .rev()
            .find(|&&n| n < last)
            .copied()
            .unwrap_or(0);
        let heard: Vec<&Heard> = dashboards.iter().map(|(h, _)| h).collect();
        wait_heard("the dashboards before the stop", &heard, earlier, |_| true).await;
        in_flight.push(earlier + 1..=last);
        tokio::time::sleep(Duration::from_millis(300)).await;
        serve = Serve::start(&root, port);
        serve.ready(&api).await;
        // What the device resends before this subscription comes in its History.
        dashboards.push(listen(serve.dashboard(&key).await, DEVICE));
    }

    let (status, lines) = sensor.finish().await;
    let done = finished_ok(status, &lines);
    assert_eq!(done["published"], COUNT);
    assert_eq!(done["confirmed"], COUNT);
    assert_eq!(done["connects"], 3, "{done:?}");
    // At least once: a restarted hub does not know the device's boot, so what the
    // old one accepted but had not confirmed may arrive twice. Nothing the device
    // held is missing: all but what a stop caught in the hub's queues.
    let heard: Vec<&Heard> = dashboards.iter().map(|(h, _)| h).collect();
    let all = wait_heard("the hubs' dashboards", &heard, COUNT, |s| {
        !in_flight.iter().any(|r| r.contains(&s))
    })
    .await;
    let lost: Vec<u64> = in_flight
        .iter()
        .flat_map(|r| r.clone())
        .filter(|s| all.binary_search(s).is_err())
        .collect();
    if !lost.is_empty() {
        eprintln!("confirmed, then lost with the stopped hub's dashboard queue: {lost:?}");
    }
    for (_, listening) in &dashboards {
        listening.abort();
    }
}
