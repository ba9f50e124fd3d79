//! The dashboard end to end in a real browser: the README's `telehub demo` (hub and a
//! simulated fleet of 12 devices, as a child process), one extra hostile device that
//! puts markup in everything it controls (its id, a tag, a reading's name and text),
//! and `tests/interop/dashboard_e2e.mjs` driving Debian's headless Chromium with
//! playwright-core through the served dashboard: login by `#token=`, History replay
//! and live charts, the fleet table and its summary in a laptop's first screen, the
//! registry (listed, paged, and a device registered through the operator's form),
//! XSS, a CRITICAL notification to 100 % acknowledged, a phone-width layout whose
//! tables scroll in their own boxes, a hub restart mid-run (the script prints
//! `RESTART-HUB`; this test restarts the demo on the same port and answers
//! `RESTARTED`), and a viewer without the notification and registration forms whose
//! charts can be read (tick labels that fit, an axis per line, latest values in the
//! legends). Screenshots go to `target/dashboard-e2e/`.
//!
//! Chromium (`/usr/bin/chromium`, or `$TELEHUB_CHROMIUM`) and playwright-core
//! (`npm ci` in `tests/interop/`) are installed by `.ci/run`; without them this test
//! fails, never skips. `TELEHUB_DASHBOARD_DIR=dashboards` (read by `telehub demo`)
//! serves the page from disk instead of the copy embedded at build time, for iterating
//! on it without rebuilding.
//!
//! A second test watches the page's delivery mode against an in-process hub whose
//! `[dashboard]` asks for conflation above 2 series (and non-default delays, which the
//! page can only have learnt from `GET /v1/dashboard/settings`): the page subscribes
//! batched and draws what arrives in `Batch`es; a third device makes it re-subscribe
//! conflated and say so; narrowing to two series keeps it conflated (hysteresis) and
//! to one takes it back to batched; Subscribes past the hub's burst, held back with
//! RATE_LIMITED, are sent again. It drives the same Chromium itself over the
//! DevTools protocol ([`Chromium`]), which also shows it every WebSocket frame the
//! page sends and receives.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use common::{number, Client, Hub};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rcgen::{KeyPair, PublicKeyData};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use telehub::{
    auth::{Role, TokenKey},
    proto::{envelope::Body, reading, Ack, Envelope, Reading, Telemetry},
    sim::Endpoint,
    ws,
};
use tokio::{
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{sleep, timeout, timeout_at},
};
use tokio_tungstenite::{tungstenite::Message as CdpMessage, WebSocketStream};

/// Simulated devices of the demo.
const DEVICES: &str = "12";
/// Bound on the demo printing its dashboard line.
const STARTUP: Duration = Duration::from_secs(30);
/// Bound on the demo stopping after SIGTERM.
const SHUTDOWN: Duration = Duration::from_secs(10);
/// How long the hub stays down when the script asks for a restart.
const DOWNTIME: Duration = Duration::from_secs(1);
/// Bound on the whole browser run (the script bounds each of its steps, and itself).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// The hostile device: markup in its id, in a tag, in a reading's name and text.
const HOSTILE_ID: &str = "evil<script>window.__pwned=1</script>";
const HOSTILE_TAG: (&str, &str) = ("note", "<img src=x onerror=\"window.__pwned=2\">");
const HOSTILE_CATEGORY: &str = "env.evil";
const HOSTILE_NAME: &str = "<b>bold</b>";
const HOSTILE_TEXT: &str = "<script>window.__pwned=3</script>";
const HOSTILE_PERIOD: Duration = Duration::from_millis(200);
/// What to do when the browser or its driver is not installed.
const INSTALL_HINT: &str = "the browser test dependencies are missing: run `bash .ci/run` (it \
     installs Debian's chromium as /usr/bin/chromium and runs `npm ci` in tests/interop for \
     playwright-core)";

#[tokio::test]
async fn dashboard_in_headless_chromium() {
    let started = Instant::now();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let interop = manifest.join("tests/interop");
    let chromium = chromium_path();
    let playwright = interop.join("node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "no {}: {INSTALL_HINT}",
        playwright.display()
    );

    let root = TempDir::new();
    let out_dir = manifest.join("target/dashboard-e2e");
    std::fs::create_dir_all(&out_dir).expect("creating target/dashboard-e2e");
    for stale in [
        "laptop.png",
        "laptop-first-screen.png",
        "phone.png",
        "viewer.png",
        "failure.png",
    ] {
        let _ = std::fs::remove_file(out_dir.join(stale));
    }

    let mut demo = Demo::start(&root.0, "127.0.0.1:0").await;
    eprintln!(
        "demo up at port {} after {:?}",
        demo.port,
        started.elapsed()
    );
    let key = TokenKey::load_or_create(&root.0.join("data")).expect("the demo's token key");
    let ttl = Duration::from_secs(3600);
    let hostile_token = key.issue(
        HOSTILE_ID,
        Role::Device,
        BTreeMap::from([(HOSTILE_TAG.0.to_owned(), HOSTILE_TAG.1.to_owned())]),
        ttl,
    );
    let viewer_token = key.issue("e2e-viewer", Role::Viewer, BTreeMap::new(), ttl);
    let mut hostile = Hostile::start(&root.0, demo.port, &hostile_token);

    let node = std::env::var_os("TELEHUB_INTEROP_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "node".into());
    let child = Command::new(&node)
        .arg(interop.join("dashboard_e2e.mjs"))
        .arg(&demo.url)
        .arg(root.0.join("certs/server.pem"))
        .arg(&out_dir)
        .arg(&viewer_token)
        .env("TELEHUB_CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}; {INSTALL_HINT}", node.display()));
    let mut script = Reaped(child);
    let mut stdin: ChildStdin = script.0.stdin.take().expect("the script's stdin");
    let mut lines = lines_of(script.0.stdout.take(), "");

    let deadline = tokio::time::Instant::now() + SCRIPT_TIMEOUT;
    let mut restarts = 0;
    loop {
        let line = match timeout_at(deadline, lines.recv()).await {
            Err(_) => panic!("dashboard_e2e.mjs did not finish within {SCRIPT_TIMEOUT:?}"),
            Ok(None) => break,
            Ok(Some(line)) => line,
        };
        if line.trim() == "RESTART-HUB" {
            restarts += 1;
            let t = Instant::now();
            hostile.stop().await;
            let port = demo.port;
            demo.stop().await;
            // Down for a moment, as in a real restart: the page's reconnects are refused.
            sleep(DOWNTIME).await;
            demo = Demo::start(&root.0, &format!("127.0.0.1:{port}")).await;
            assert_eq!(
                demo.port, port,
                "the restarted demo must listen on the same port"
            );
            hostile = Hostile::start(&root.0, demo.port, &hostile_token);
            eprintln!("demo restarted on port {port} in {:?}", t.elapsed());
            stdin
                .write_all(b"RESTARTED\n")
                .and_then(|()| stdin.flush())
                .expect("telling the script the hub restarted");
        }
    }
    let status = loop {
        if let Some(status) = script.0.try_wait().expect("polling the script") {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dashboard_e2e.mjs did not exit within {SCRIPT_TIMEOUT:?}"
        );
        sleep(Duration::from_millis(20)).await;
    };
    let sent = hostile.stop().await;
    demo.stop().await;
    eprintln!(
        "browser run finished ({status}) after {:?}; the hostile device sent {sent} messages on its last run",
        started.elapsed()
    );
    assert!(
        status.success(),
        "dashboard_e2e.mjs failed ({status}); see its output above and {}",
        out_dir.join("failure.png").display()
    );
    assert_eq!(restarts, 1, "the script asked for one hub restart");
    for shot in [
        "laptop.png",
        "laptop-first-screen.png",
        "phone.png",
        "viewer.png",
    ] {
        assert!(out_dir.join(shot).exists(), "no screenshot {shot}");
    }
}

/// Debian's Chromium, or `$TELEHUB_CHROMIUM`; it must be installed.
fn chromium_path() -> PathBuf {
    let chromium = std::env::var_os("TELEHUB_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        chromium.exists(),
        "no {}: {INSTALL_HINT}",
        chromium.display()
    );
    chromium
}

/// `telehub demo` as a child process: killed (SIGKILL) and reaped on drop.
struct Demo {
    child: Reaped,
    /// `https://127.0.0.1:PORT/#token=<operator token>`.
    url: String,
    port: u16,
}

impl Demo {
    /// Starts the demo on `listen` with `root`'s data and certs dirs, and waits for its
    /// dashboard line.
    async fn start(root: &Path, listen: &str) -> Demo {
        let child = Command::new(env!("CARGO_BIN_EXE_telehub"))
            .args(["demo", "--listen", listen, "--devices", DEVICES])
            .arg("--data-dir")
            .arg(root.join("data"))
            .arg("--certs-dir")
            .arg(root.join("certs"))
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting telehub demo");
        let mut child = Reaped(child);
        let mut lines = lines_of(child.0.stdout.take(), "[demo] ");
        let url = timeout(STARTUP, async {
            while let Some(line) = lines.recv().await {
                if let Some(url) = line.trim().strip_prefix("dashboard:") {
                    return url.trim().to_owned();
                }
            }
            panic!("telehub demo exited without printing its dashboard line");
        })
        .await
        .unwrap_or_else(|_| panic!("telehub demo printed no dashboard line within {STARTUP:?}"));
        let port = url
            .strip_prefix("https://127.0.0.1:")
            .and_then(|rest| rest.split('/').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected dashboard URL {url:?}"));
        assert!(
            url.contains("/#token="),
            "no token in the dashboard URL {url:?}"
        );
        Demo { child, url, port }
    }

    /// SIGTERM, then a bounded wait for the process to exit (SIGKILL after that).
    async fn stop(&mut self) {
        let pid = self.child.0.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + SHUTDOWN;
        while sent && Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                eprintln!("telehub demo stopped: {status}");
                return;
            }
            sleep(Duration::from_millis(20)).await;
        }
        panic!("telehub demo did not stop within {SHUTDOWN:?} of SIGTERM");
    }
}

/// A child process killed and reaped on drop, so a failing test leaves nothing behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `pipe` line by line on a thread, echoing each line (with `prefix`) to stderr
/// and passing it on; keeps draining after the receiver is gone.
fn lines_of(
    pipe: Option<impl Read + Send + 'static>,
    prefix: &'static str,
) -> mpsc::UnboundedReceiver<String> {
    let pipe = pipe.expect("a piped stdout");
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            eprintln!("{prefix}{line}");
            let _ = tx.send(line);
        }
    });
    rx
}

/// The hostile device: connects with the crate's own WebSocket client and sends
/// [`HOSTILE_CATEGORY`] telemetry every [`HOSTILE_PERIOD`] until stopped, reconnecting
/// after any failure.
struct Hostile {
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

impl Hostile {
    fn start(root: &Path, port: u16, token: &str) -> Hostile {
        let endpoint = Endpoint::parse(
            &format!("wss://127.0.0.1:{port}"),
            Some(&root.join("certs/ca.pem")),
        )
        .expect("the hub's endpoint");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(hostile_device(endpoint, token.to_owned(), stopped));
        Hostile { stop, task }
    }

    /// Stops the device (Close 1000) and returns how many messages it sent.
    async fn stop(&mut self) -> u64 {
        self.stop.send_replace(true);
        timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the hostile device did not stop within 10 s")
            .expect("the hostile device task panicked")
    }
}

async fn hostile_device(endpoint: Endpoint, token: String, mut stop: watch::Receiver<bool>) -> u64 {
    let mut seq = 0u64;
    while !*stop.borrow() {
        let (conn, _) = match endpoint
            .connect("/v1/device", &token, true, Duration::from_secs(5))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("hostile device: connecting: {e}");
                tokio::select! {
                    _ = sleep(HOSTILE_PERIOD) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        let (mut reader, mut writer) = conn.split();
        let mut tick = tokio::time::interval(HOSTILE_PERIOD);
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = timeout(Duration::from_secs(2), writer.close(1000, "done")).await;
                    return seq;
                }
                _ = tick.tick() => {
                    seq += 1;
                    if let Err(e) = writer.send(&hostile_telemetry(seq)).await {
                        eprintln!("hostile device: sending: {e}");
                        break;
                    }
                }
                incoming = reader.next() => match incoming {
                    Ok(ws::Incoming::Ping(p)) => {
                        if writer.pong(&p).await.is_err() {
                            break;
                        }
                    }
                    // Acknowledge any notification, so a campaign that happens to
                    // target this device still completes.
                    Ok(ws::Incoming::Message(ws::Message::Binary(data))) => {
                        if let Ok(Envelope { body: Some(Body::Notification(n)) }) = Envelope::decode(data) {
                            let ack = Envelope {
                                body: Some(Body::Ack(Ack { notification_id: n.id })),
                            };
                            let msg = ws::Message::Binary(ack.encode_to_vec().into());
                            if writer.send(&msg).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(ws::Incoming::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                },
            }
        }
        // The hub went away (e.g. it is restarting): try again shortly.
        tokio::select! {
            _ = sleep(HOSTILE_PERIOD) => {}
            _ = stop.changed() => {}
        }
    }
    seq
}

fn hostile_telemetry(seq: u64) -> ws::Message {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let env = Envelope {
        body: Some(Body::Telemetry(Telemetry {
            category: HOSTILE_CATEGORY.to_owned(),
            timestamp_ms: now,
            seq,
            readings: vec![Reading {
                name: HOSTILE_NAME.to_owned(),
                value: Some(reading::Value::Text(HOSTILE_TEXT.to_owned())),
                unit: String::new(),
            }],
            ..Default::default()
        })),
    };
    ws::Message::Binary(env.encode_to_vec().into())
}

/// A fresh directory for the demo's data and certificates, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "telehub-dashboard-e2e-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("creating the temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- The delivery mode: batched by default, conflated above a number of series ----

/// The `[dashboard]` page settings of the hub in [`dashboard_batches_then_conflates`]:
/// none is the default, so the page can only have them from the hub.
const PAGE_MAX_DELAY_MS: u64 = 40;
const PAGE_CONFLATE_MS: u64 = 300;
const PAGE_CONFLATE_ABOVE: usize = 2;
/// What its devices publish, and how often.
const CATEGORY: &str = "env.temperature";
const PUBLISH_PERIOD: Duration = Duration::from_millis(100);
/// Subscriptions submitted at once: more than the hub's burst of Subscribes (64).
const HELD_BACK_PATTERNS: u64 = 80;
/// Bound on each browser step (and on each DevTools command).
const STEP: Duration = Duration::from_secs(10);
/// Between two looks at the page.
const POLL: Duration = Duration::from_millis(100);

/// In the page: `#delivery-mode`'s mode and text.
const MODE_JS: &str = "(() => { const m = document.querySelector('#delivery-mode'); \
     return m && { mode: m.getAttribute('data-mode'), text: m.textContent.trim() }; })()";
/// In the page: the latest-telemetry rows, device -> seq shown.
const LATEST_JS: &str = "Object.fromEntries([...document.querySelectorAll('table#latest tbody tr[data-device]')]\
     .map((tr) => [tr.getAttribute('data-device'), Number(tr.querySelector('td.seq')?.textContent || 0)]))";
/// In the page: the charts, device -> points drawn.
const CHARTS_JS: &str = "Object.fromEntries([...document.querySelectorAll('#charts div.chart')]\
     .map((c) => [c.getAttribute('data-device'), Number(c.getAttribute('data-points') || 0)]))";

#[tokio::test]
async fn dashboard_batches_then_conflates() {
    let hub = Hub::with(|c| {
        c.dashboard.page_max_delay = Duration::from_millis(PAGE_MAX_DELAY_MS);
        c.dashboard.page_conflate_interval = Duration::from_millis(PAGE_CONFLATE_MS);
        c.dashboard.page_conflate_above = PAGE_CONFLATE_ABOVE;
    })
    .await;
    let _dev1 = Publisher::start(hub.device("dev-1").await);
    let mut page = Chromium::launch(&hub.certs_dir.join("server.key")).await;
    let token = hub.token("e2e-viewer", Role::Viewer, &[]);
    page.navigate(&format!(
        "https://127.0.0.1:{}/#token={token}&subscribe=*",
        hub.addr.port()
    ))
    .await;
    page.until(
        "#conn-state[data-state=open]",
        "document.querySelector('#conn-state')?.getAttribute('data-state')",
        |v, _| v == "open",
    )
    .await;

    // One series: batched, with the hub's delay, and what arrives in batches is drawn.
    let batched = json!({"mode": "batched", "text": format!("batched ≤ {PAGE_MAX_DELAY_MS} ms")});
    page.until("#delivery-mode says batched", MODE_JS, |v, _| *v == batched)
        .await;
    page.until(
        "dev-1's latest row showing a message that came in a batch",
        LATEST_JS,
        |v, seen| shows_from(v, "dev-1", &seen.received, false),
    )
    .await;
    let drawn = page
        .until("dev-1's chart holding points", CHARTS_JS, |v, _| {
            v["dev-1"].as_u64().is_some_and(|points| points > 0)
        })
        .await["dev-1"]
        .as_u64();
    page.until("dev-1's chart growing", CHARTS_JS, |v, _| {
        v["dev-1"].as_u64() > drawn
    })
    .await;
    assert_eq!(
        page.seen.subscribes(),
        [json!({"categories": ["*"], "maxDelayMs": PAGE_MAX_DELAY_MS})],
        "the page's first Subscribe"
    );
    let live = page
        .seen
        .received
        .iter()
        .filter(|f| f.get("telemetry").is_some());
    assert_eq!(
        live.count(),
        0,
        "live Telemetry envelopes reached a batched page"
    );
    eprintln!("batched: dev-1 drawn from batches");

    // Three series, more than 2: the page re-subscribes conflated and says so.
    let _dev2 = Publisher::start(hub.device("dev-2").await);
    let _dev3 = Publisher::start(hub.device("dev-3").await);
    let conflated = |n: usize| json!({"mode": "conflated", "text": format!("conflated every {PAGE_CONFLATE_MS} ms ({n} series shown)")});
    page.until(
        "#delivery-mode says conflated, 3 series",
        MODE_JS,
        |v, _| *v == conflated(3),
    )
    .await;
    for device in ["dev-2", "dev-3"] {
        page.until(
            &format!("{device}'s latest row showing a message that came in a conflated batch"),
            LATEST_JS,
            |v, seen| shows_from(v, device, &seen.received, true),
        )
        .await;
    }
    assert_eq!(
        page.seen.subscribes()[1..],
        [json!({"categories": ["*"], "conflateMs": PAGE_CONFLATE_MS})],
        "the switch re-sends the subscription with its new mode"
    );
    eprintln!("conflated: 3 series shown, dev-2 and dev-3 drawn from conflated batches");

    // Narrowed to two series: not below the hysteresis mark (80 % of 2), so still
    // conflated; the count in the text shows the page looked again.
    page.subscribe_form("*", "dev-1, dev-2").await;
    page.until(
        "#delivery-mode says conflated, 2 series",
        MODE_JS,
        |v, _| *v == conflated(2),
    )
    .await;
    // Narrowed to one: batched again, and dev-1 drawn from the new batches.
    page.subscribe_form("*", "dev-1").await;
    page.until("#delivery-mode says batched again", MODE_JS, |v, _| {
        *v == batched
    })
    .await;
    let since = page.seen.received.len();
    page.until(
        "only dev-1's row left, showing a message from a batch after the switch back",
        LATEST_JS,
        |v, seen| {
            v.as_object().is_some_and(|rows| rows.len() == 1)
                && shows_from(v, "dev-1", &seen.received[since..], false)
        },
    )
    .await;
    let only_dev1 = json!({"categories": ["*"], "deviceIds": ["dev-1"]});
    assert_eq!(
        page.seen.subscribes()[2..],
        [
            json!({"categories": ["*"], "deviceIds": ["dev-1", "dev-2"], "conflateMs": PAGE_CONFLATE_MS}),
            with(&only_dev1, "conflateMs", PAGE_CONFLATE_MS),
            with(&only_dev1, "maxDelayMs", PAGE_MAX_DELAY_MS),
        ],
        "a filter change keeps the mode; the switch back re-sends the subscription batched"
    );
    eprintln!("back to batched below the mark; the hysteresis held at 2 series");

    // A switch re-sends every subscription at once; past the hub's burst of
    // Subscribes (64) some are held back (RATE_LIMITED) and must be sent again.
    let script = format!(
        "for (let i = 0; i < {HELD_BACK_PATTERNS}; i++) {{\
           document.querySelector('input#pattern').value = 'load.p' + i;\
           document.querySelector('input#filter-devices').value = '';\
           document.querySelector('form#subscribe').requestSubmit();\
         }}"
    );
    if let Err(e) = page.eval(&script).await {
        panic!("submitting {HELD_BACK_PATTERNS} subscriptions: {e}");
    }
    page.until(
        "every pattern listed in ul#subscriptions, those held back included",
        "document.querySelectorAll('ul#subscriptions li[data-pattern]').length",
        |v, _| v.as_u64() == Some(HELD_BACK_PATTERNS + 1),
    )
    .await;
    let held = page
        .seen
        .received
        .iter()
        .filter(|f| f["error"]["code"] == "RATE_LIMITED");
    assert!(
        held.count() > 0,
        "the hub held back none of the Subscribes: nothing was tested"
    );
    let banner = page
        .eval("document.querySelector('#hub-error').hidden")
        .await;
    assert_eq!(
        banner,
        Ok(json!(true)),
        "a held-back Subscribe is not an error to show"
    );
    eprintln!("held-back Subscribes sent again");

    page.pump(POLL).await;
    assert!(
        page.seen.problems.is_empty(),
        "the page complained:\n  {}",
        page.seen.problems.join("\n  ")
    );
}

/// Whether the latest-telemetry rows `rows` (see [`LATEST_JS`]) show for `device` a
/// message that one of `frames` carried in a batch (a conflated one if `conflated`).
fn shows_from(rows: &Value, device: &str, frames: &[Value], conflated: bool) -> bool {
    let Some(seq) = rows[device].as_u64() else {
        return false;
    };
    frames.iter().any(|f| {
        let batch = &f["batch"];
        batch["conflated"].as_bool().unwrap_or(false) == conflated
            && batch["telemetry"].as_array().is_some_and(|ts| {
                // 64-bit integers are strings in the JSON mapping.
                ts.iter().any(|t| {
                    t["deviceId"] == device
                        && t["seq"].as_str().and_then(|s| s.parse().ok()) == Some(seq)
                })
            })
    })
}

/// `object` with `key` set to `value`.
fn with(object: &Value, key: &str, value: u64) -> Value {
    let mut object = object.clone();
    object[key] = json!(value);
    object
}

/// A device publishing [`CATEGORY`] every [`PUBLISH_PERIOD`] until dropped; its one
/// reading counts the messages, so every value differs (conflation sends each).
struct Publisher(JoinHandle<()>);

impl Publisher {
    fn start(mut device: Client) -> Publisher {
        Publisher(tokio::spawn(async move {
            for n in 1u64.. {
                device
                    .send_telemetry(CATEGORY, vec![number("n", n as f64, "")])
                    .await;
                sleep(PUBLISH_PERIOD).await;
            }
        }))
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Headless Chromium driven over the DevTools protocol (CDP) on its own WebSocket:
/// one page, what it complained about, and the JSON text frames of its WebSockets.
struct Chromium {
    /// Killed and reaped on drop, before its profile directory is removed.
    _process: Reaped,
    _profile: TempDir,
    cdp: WebSocketStream<TcpStream>,
    /// The page's CDP session (flat mode: its commands carry this id).
    session: String,
    next_id: u64,
    seen: Seen,
}

/// What the page did, as recorded from its DevTools events.
#[derive(Default)]
struct Seen {
    /// Console errors and warnings, uncaught exceptions and the browser's own log
    /// errors (a failed load, a CSP violation): the page must cause none.
    problems: Vec<String>,
    /// JSON text frames the page sent and received on its WebSockets, in order.
    sent: Vec<Value>,
    received: Vec<Value>,
}

impl Seen {
    /// The Subscribes the page sent, in order.
    fn subscribes(&self) -> Vec<Value> {
        self.sent
            .iter()
            .filter_map(|f| f.get("subscribe").cloned())
            .collect()
    }
}

impl Chromium {
    /// Starts Chromium trusting exactly the hub's certificate (by the SHA-256 of the
    /// public key in `server_key`, as tests/interop/chromium.mjs does) and opens a
    /// blank page with its console, log and network events on.
    async fn launch(server_key: &Path) -> Chromium {
        let pem = std::fs::read_to_string(server_key).expect("reading the hub's server key");
        let spki = KeyPair::from_pem(&pem)
            .expect("the hub's server key")
            .subject_public_key_info();
        let pin = STANDARD.encode(Sha256::digest(spki));
        let profile = TempDir::new();
        let child = Command::new(chromium_path())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg(format!("--ignore-certificate-errors-spki-list={pin}"))
            .arg("about:blank")
            // Nothing it prints is needed (its stderr is mostly complaints about the
            // D-Bus a container lacks).
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting chromium: {e}; {INSTALL_HINT}"));
        let mut process = Reaped(child);
        // With port 0, Chromium writes the port it chose and the browser's path into
        // the profile once it listens.
        let active = profile.0.join("DevToolsActivePort");
        let deadline = Instant::now() + STARTUP;
        let (port, path) = loop {
            let text = std::fs::read_to_string(&active).unwrap_or_default();
            if let Some((port, path)) = text.split_once('\n') {
                if !path.trim().is_empty() {
                    break (port.trim().to_owned(), path.trim().to_owned());
                }
            }
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!("chromium exited ({status}) before opening its DevTools port");
            }
            assert!(
                Instant::now() < deadline,
                "chromium opened no DevTools port within {STARTUP:?}"
            );
            sleep(POLL).await;
        };
        let url = format!("ws://127.0.0.1:{port}{path}");
        let tcp = TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .expect("connecting to DevTools");
        let (cdp, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .expect("the DevTools WebSocket");
        let mut browser = Chromium {
            _process: process,
            _profile: profile,
            cdp,
            session: String::new(),
            next_id: 0,
            seen: Seen::default(),
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a CDP session id")
            .to_owned();
        for domain in ["Runtime", "Log", "Network"] {
            browser.call(&format!("{domain}.enable"), json!({})).await;
        }
        browser
    }

    async fn navigate(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({"url": url})).await;
        assert!(
            result.get("errorText").is_none(),
            "navigating to the dashboard: {result}"
        );
    }

    /// One CDP command (on the page's session once attached): its result. Events
    /// read meanwhile are recorded.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(result) => result,
            Err(e) => panic!("{method}: {e}"),
        }
    }

    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        timeout(STEP, self.cdp.send(CdpMessage::text(command.to_string())))
            .await
            .unwrap_or_else(|_| panic!("sending {method} took over {STEP:?}"))
            .unwrap_or_else(|e| panic!("sending {method}: {e}"));
        loop {
            let Some(message) = self.read(STEP).await else {
                panic!("no answer to {method} within {STEP:?}");
            };
            if message["id"] == id {
                return match message.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(message["result"].clone()),
                };
            }
            self.record(&message);
        }
    }

    /// The next CDP message, or `None` when none came `within`.
    async fn read(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match timeout_at(deadline, self.cdp.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(CdpMessage::Text(text)))) => {
                    return Some(serde_json::from_str(&text).expect("DevTools sends JSON"))
                }
                Ok(Some(Ok(_))) => {} // pings and the like
                Ok(other) => panic!("the DevTools connection ended: {other:?}"),
            }
        }
    }

    /// Records the events this test looks at.
    fn record(&mut self, message: &Value) {
        let p = &message["params"];
        let method = message["method"].as_str().unwrap_or_default();
        match method {
            "Runtime.consoleAPICalled"
                if matches!(p["type"].as_str(), Some("error" | "warning" | "assert")) =>
            {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        a["value"]
                            .as_str()
                            .map_or_else(|| a["description"].to_string(), str::to_owned)
                    })
                    .collect();
                self.seen
                    .problems
                    .push(format!("console.{}: {}", p["type"], args.join(" ")));
            }
            "Runtime.exceptionThrown" => {
                let d = &p["exceptionDetails"];
                self.seen.problems.push(format!(
                    "uncaught: {} {}",
                    d["text"], d["exception"]["description"]
                ));
            }
            "Log.entryAdded"
                if matches!(p["entry"]["level"].as_str(), Some("error" | "warning")) =>
            {
                let e = &p["entry"];
                self.seen.problems.push(format!(
                    "{} {}: {} {}",
                    e["source"], e["level"], e["text"], e["url"]
                ));
            }
            "Network.webSocketFrameSent" | "Network.webSocketFrameReceived" => {
                let frame = &p["response"];
                // Opcode 1: a text frame, i.e. one envelope of the JSON mapping.
                let Some(text) = frame["payloadData"]
                    .as_str()
                    .filter(|_| frame["opcode"] == 1)
                else {
                    return;
                };
                let envelope = serde_json::from_str(text).unwrap_or_else(|e| {
                    panic!("a WebSocket text frame that is not JSON ({e}): {text}")
                });
                if method == "Network.webSocketFrameSent" {
                    self.seen.sent.push(envelope);
                } else {
                    self.seen.received.push(envelope);
                }
            }
            _ => {}
        }
    }

    /// Records events for `d`.
    async fn pump(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.read(left).await {
                Some(message) => self.record(&message),
                None => break,
            }
        }
    }

    /// `expression`'s value in the page (JSON), or why there is none (e.g. the page
    /// is still loading).
    async fn eval(&mut self, expression: &str) -> Result<Value, Value> {
        let r = self
            .try_call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await?;
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// Looks at `expression` in the page until `done` holds for its value and what
    /// was recorded so far; returns the value. Fails the test after [`STEP`], saying
    /// `what` and the last value seen.
    async fn until(
        &mut self,
        what: &str,
        expression: &str,
        done: impl Fn(&Value, &Seen) -> bool,
    ) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            let value = self.eval(expression).await;
            if let Ok(value) = &value {
                if done(value, &self.seen) {
                    return value.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {STEP:?}; seen: {value:?}; Subscribes sent: {:?}; \
                 {} frames received; page problems: {:?}",
                self.seen.subscribes(),
                self.seen.received.len(),
                self.seen.problems
            );
            self.pump(POLL).await;
        }
    }

    /// Submits the page's subscribe form as a user would.
    async fn subscribe_form(&mut self, pattern: &str, devices: &str) {
        let script = format!(
            "document.querySelector('input#pattern').value = {};\
             document.querySelector('input#filter-devices').value = {};\
             document.querySelector('form#subscribe').requestSubmit();",
            json!(pattern),
            json!(devices)
        );
        if let Err(e) = self.eval(&script).await {
            panic!("submitting the subscribe form: {e}");
        }
    }
}
