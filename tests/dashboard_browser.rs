//! The dashboard end to end in a real browser: the README's `telehub demo` (hub and a
//! simulated fleet of 12 devices, as a child process), one extra hostile device that
//! puts markup in everything it controls (its id, a tag, a reading's name and text),
//! and `tests/interop/dashboard_e2e.mjs` driving Debian's headless Chromium with
//! playwright-core through the served dashboard: login by `#token=`, History replay
//! and live charts, the fleet table, XSS, a CRITICAL notification to 100 %
//! acknowledged, a phone-width layout, a hub restart mid-run (the script prints
//! `RESTART-HUB`; this test restarts the demo on the same port and answers
//! `RESTARTED`), and a viewer without the notification form. Screenshots go to
//! `target/dashboard-e2e/`.
//!
//! Chromium (`/usr/bin/chromium`, or `$TELEHUB_CHROMIUM`) and playwright-core
//! (`npm ci` in `tests/interop/`) are installed by `.ci/run`; without them this test
//! fails, never skips. `TELEHUB_DASHBOARD_DIR=dashboards` (read by `telehub demo`)
//! serves the page from disk instead of the copy embedded at build time, for iterating
//! on it without rebuilding.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prost::Message as _;
use telehub::{
    auth::{Role, TokenKey},
    proto::{envelope::Body, reading, Ack, Envelope, Reading, Telemetry},
    sim::Endpoint,
    ws,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{sleep, timeout, timeout_at},
};

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
    let chromium = std::env::var_os("TELEHUB_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        chromium.exists(),
        "no {}: {INSTALL_HINT}",
        chromium.display()
    );
    let playwright = interop.join("node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "no {}: {INSTALL_HINT}",
        playwright.display()
    );

    let root = TempDir::new();
    let out_dir = manifest.join("target/dashboard-e2e");
    std::fs::create_dir_all(&out_dir).expect("creating target/dashboard-e2e");
    for stale in ["laptop.png", "phone.png", "failure.png"] {
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
    for shot in ["laptop.png", "phone.png"] {
        assert!(out_dir.join(shot).exists(), "no screenshot {shot}");
    }
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
