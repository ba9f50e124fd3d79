//! Interoperability with independent WebSocket and protobuf implementations in other
//! languages: Python's `websockets` with Google's `protobuf`, and Node's `ws` with
//! `protobufjs`, run as child processes (`tests/interop/`) against a real hub on
//! 127.0.0.1 over real TLS.
//!
//! In every test a dashboard connects and subscribes, a device connects and sends
//! telemetry (small messages and large compressible ones), and the dashboard receives
//! each message exactly as sent, stamped with the device id from the token. Each test
//! makes a different permessage-deflate offer (none, the library's default, a smaller
//! client window, no context takeover) and checks the hub's exact
//! `Sec-WebSocket-Extensions` answer, and the hub's byte counters show whether the
//! messages really travelled compressed, both from the device and to the dashboard.
//!
//! The clients' dependencies (a venv at `target/interop-venv`, `npm ci` in
//! `tests/interop/`) are installed by `.ci/run`; without them these tests fail, never
//! skip.

mod common;

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::*;
use prost::Message as _;
use serde_json::Value;
use telehub::{
    auth::Role,
    proto::{envelope::Body, reading, Envelope, Reading, Telemetry},
};

/// The category the device sends and the dashboard subscribes to.
const CATEGORY: &str = "env.interop";
/// The device's token subject: the device id the dashboard must see.
const DEVICE_ID: &str = "interop-dev-1";
/// Bound on one client run; the scripts bound each of their own waits to 10 s.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// What to do when a client's dependencies are not installed.
const INSTALL_HINT: &str =
    "the interop test dependencies are missing: run `bash .ci/run` (it creates the venv \
     target/interop-venv from tests/interop/requirements.txt and runs `npm ci` in tests/interop)";

/// The independent client implementations.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// `tests/interop/py_client.py`: websockets (asyncio API) + protobuf.
    PythonWebsockets,
    /// `tests/interop/node_client.mjs`: ws + protobufjs.
    NodeWs,
}

/// One interop scenario: a client library, what it offers, what the hub must answer.
struct Case {
    peer: Peer,
    /// Script flags choosing the permessage-deflate offer.
    flags: &'static [&'static str],
    /// The `Sec-WebSocket-Extensions` offer the library must send (`None`: no offer).
    offer: Option<&'static str>,
    /// The hub's answer (`None`: no extension agreed, nothing compressed); `{window}`
    /// stands for the window the hub asks of clients that let it choose
    /// (`compression.client_max_window_bits`).
    answer: Option<&'static str>,
}

#[tokio::test]
async fn python_websockets_without_compression() {
    device_sends_dashboard_receives(Case {
        peer: Peer::PythonWebsockets,
        flags: &["--no-compression"],
        offer: None,
        answer: None,
    })
    .await;
}

#[tokio::test]
async fn python_websockets_default_deflate_offer() {
    device_sends_dashboard_receives(Case {
        peer: Peer::PythonWebsockets,
        flags: &[],
        offer: Some("permessage-deflate; client_max_window_bits"),
        answer: Some(
            "permessage-deflate; server_no_context_takeover; client_max_window_bits={window}",
        ),
    })
    .await;
}

#[tokio::test]
async fn python_websockets_client_max_window_bits_10() {
    device_sends_dashboard_receives(Case {
        peer: Peer::PythonWebsockets,
        flags: &["--client-max-window-bits", "10"],
        offer: Some("permessage-deflate; client_max_window_bits=10"),
        // RFC 7692 §7.1.2.2: the hub answers with the window the client promised (the
        // hub's own limit is larger).
        answer: Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=10"),
    })
    .await;
}

#[tokio::test]
async fn python_websockets_no_context_takeover_both_ways() {
    device_sends_dashboard_receives(Case {
        peer: Peer::PythonWebsockets,
        flags: &[
            "--client-no-context-takeover",
            "--server-no-context-takeover",
        ],
        offer: Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             client_max_window_bits",
        ),
        answer: Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             client_max_window_bits={window}",
        ),
    })
    .await;
}

#[tokio::test]
async fn node_ws_default_per_message_deflate() {
    device_sends_dashboard_receives(Case {
        peer: Peer::NodeWs,
        flags: &[],
        offer: Some("permessage-deflate; client_max_window_bits"),
        answer: Some(
            "permessage-deflate; server_no_context_takeover; client_max_window_bits={window}",
        ),
    })
    .await;
}

#[tokio::test]
async fn node_ws_deflate_with_parameters() {
    device_sends_dashboard_receives(Case {
        peer: Peer::NodeWs,
        // Threshold 0: ws compresses every message, not only those of 1024 bytes or more.
        flags: &[
            "--client-max-window-bits",
            "10",
            "--client-no-context-takeover",
            "--server-no-context-takeover",
            "--threshold",
            "0",
        ],
        offer: Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             client_max_window_bits=10",
        ),
        answer: Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             client_max_window_bits=10",
        ),
    })
    .await;
}

#[tokio::test]
async fn node_ws_without_per_message_deflate() {
    device_sends_dashboard_receives(Case {
        peer: Peer::NodeWs,
        flags: &["--no-compression"],
        offer: None,
        answer: None,
    })
    .await;
}

/// The scenario every test runs; see the module doc.
async fn device_sends_dashboard_receives(case: Case) {
    let hub = Hub::start().await;
    let sent = telemetry_to_send();
    let report = run_client(&hub, &case, &sent).await;
    let window = hub
        .app()
        .config
        .compression
        .client_max_window_bits
        .to_string();
    let answer = case.answer.map(|a| a.replace("{window}", &window));

    // Both connections agreed on the subprotocol and on exactly the expected extension.
    for side in ["device", "dashboard"] {
        let h = &report[side];
        assert_eq!(h["protocol"], PROTOCOL, "{side}: subprotocol\n{report:#}");
        assert_eq!(
            h["offered"].as_str().map(extension_elements),
            case.offer.map(extension_elements),
            "{side}: what {:?} offered: {}",
            case.peer,
            h["offered"]
        );
        assert_eq!(
            h["extensions"].as_str().map(extension_elements),
            answer.as_deref().map(extension_elements),
            "{side}: the hub's Sec-WebSocket-Extensions answer to {:?}: {}",
            case.peer,
            h["extensions"]
        );
        // What the library itself agreed to: it accepted the hub's answer.
        let agreed = if case.answer.is_some() {
            "permessage-deflate"
        } else {
            ""
        };
        assert_eq!(h["agreed"], agreed, "{side}: extensions in use");
        assert_eq!(h["close_code"], 1000, "{side}: the hub's answering Close");
    }
    assert_eq!(report["device"]["welcome"]["subject"], DEVICE_ID);
    assert_eq!(report["device"]["welcome"]["role"], "device");
    assert_eq!(report["dashboard"]["welcome"]["role"], "viewer");
    assert_eq!(
        report["dashboard"]["subscribed"],
        serde_json::json!([CATEGORY])
    );

    // The dashboard received every message, in order, exactly as the device sent it,
    // with the hub's stamps: the token's subject as device_id and a receive time.
    let received: Vec<Telemetry> = report["received"]
        .as_array()
        .expect("a list of received envelopes")
        .iter()
        .map(|v| match serde_json::from_value::<Envelope>(v.clone()) {
            Ok(Envelope {
                body: Some(Body::Telemetry(t)),
            }) => t,
            other => panic!("the dashboard's envelope is not Telemetry: {v} -> {other:?}"),
        })
        .collect();
    assert_eq!(received.len(), sent.len());
    for (got, sent) in received.iter().zip(&sent) {
        assert!(got.received_ms > 0, "received_ms not stamped: {got:?}");
        let want = Telemetry {
            device_id: DEVICE_ID.to_string(),
            received_ms: got.received_ms,
            ..sent.clone()
        };
        assert_eq!(got, &want, "telemetry seq {} at the dashboard", sent.seq);
    }

    // Wire bytes (framed, compressed) against payload bytes (the envelopes): below
    // when the messages travelled compressed, above (frame headers) when they did not.
    let sent_bytes: usize = sent
        .iter()
        .map(|t| {
            Envelope {
                body: Some(Body::Telemetry(t.clone())),
            }
            .encoded_len()
        })
        .sum();
    let m = hub.scrape().await;
    for (direction, role) in [("received", "device"), ("sent", "viewer")] {
        let series = |kind| format!("telehub_{kind}_{direction}_bytes_total{{role=\"{role}\"}}");
        let (wire, payload) = (m.get(&series("wire")), m.get(&series("payload")));
        assert!(
            payload >= sent_bytes as f64,
            "{role} {direction}: {payload} payload bytes, {sent_bytes} sent"
        );
        if case.answer.is_some() {
            assert!(
                wire < payload / 2.0,
                "{role} {direction}: {wire} wire bytes for {payload} payload bytes: not compressed"
            );
        } else {
            assert!(
                wire > payload,
                "{role} {direction}: {wire} wire bytes for {payload} payload bytes"
            );
        }
    }
    hub.stop().await;
}

/// What the device sends: every kind of reading, a device_id the hub must overwrite,
/// non-ASCII text, and large compressible messages (over 300 bytes of repeated text,
/// and over 1024 bytes, Node `ws`'s default compression threshold). Numbers are
/// finite: they reach the clients as proto3 JSON, and pbjson writes a NaN as `null`.
fn telemetry_to_send() -> Vec<Telemetry> {
    let t = |seq: u64, readings: Vec<Reading>| Telemetry {
        device_id: String::new(),
        category: CATEGORY.to_string(),
        timestamp_ms: 1_700_000_000_000 + seq,
        seq,
        readings,
        received_ms: 0,
    };
    let journal: String = (0..80)
        .map(|i| format!("line {i}: vibration within limits\n"))
        .collect();
    vec![
        Telemetry {
            device_id: "someone-else".to_string(),
            ..t(
                1,
                vec![
                    number("temperature", 21.5, "Cel"),
                    value("rssi", reading::Value::Integer(-67), "dBm"),
                    value("charging", reading::Value::Flag(true), ""),
                ],
            )
        },
        t(
            2,
            vec![
                value("log", text(&"pump 3 ok; pressure nominal; ".repeat(12)), ""),
                number("pressure", 0.1 + 0.2, "bar"),
            ],
        ),
        t(
            3,
            vec![
                raw("frame", b"ABCD1234".repeat(200)),
                value("status", text("Temperatur 21,5 °C – ok ✓"), ""),
            ],
        ),
        t(4, vec![value("journal", text(&journal), "")]),
        t(
            5,
            vec![
                value("uptime", reading::Value::Integer(-(1 << 40)), "s"),
                value("charging", reading::Value::Flag(false), ""),
            ],
        ),
    ]
}

fn value(name: &str, value: reading::Value, unit: &str) -> Reading {
    Reading {
        name: name.to_string(),
        value: Some(value),
        unit: unit.to_string(),
    }
}

fn text(s: &str) -> reading::Value {
    reading::Value::Text(s.to_string())
}

/// A `Sec-WebSocket-Extensions` value as one parameter set per element: the order and
/// spacing of parameters don't matter, every parameter and value does.
fn extension_elements(header: &str) -> Vec<BTreeSet<String>> {
    header
        .split(',')
        .map(|e| e.split(';').map(|p| p.trim().to_string()).collect())
        .collect()
}

/// Runs `case.peer`'s script as the device and the dashboard of `hub`, with the device
/// sending `telemetry`; returns the one JSON line it printed.
async fn run_client(hub: &Hub, case: &Case, telemetry: &[Telemetry]) -> Value {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let interop = manifest.join("tests/interop");
    // Inputs go next to the hub's temp dirs, removed with the hub.
    let inputs = hub.root.join("interop");
    std::fs::create_dir_all(&inputs).expect("creating the inputs dir");
    let telemetry_file = inputs.join("telemetry.jsonl");
    let lines: String = telemetry
        .iter()
        .map(|t| {
            let env = Envelope {
                body: Some(Body::Telemetry(t.clone())),
            };
            serde_json::to_string(&env).expect("telemetry as proto3 JSON") + "\n"
        })
        .collect();
    std::fs::write(&telemetry_file, lines).expect("writing the telemetry file");

    let mut args: Vec<OsString> = Vec::new();
    let program = match case.peer {
        Peer::PythonWebsockets => {
            let python = common::interop_python();
            let descriptor = inputs.join("telehub_descriptor.bin");
            std::fs::write(&descriptor, telehub::proto::FILE_DESCRIPTOR_SET)
                .expect("writing the descriptor set");
            args.push(interop.join("py_client.py").into());
            args.extend(["--descriptor".into(), descriptor.into()]);
            python
        }
        Peer::NodeWs => {
            for package in ["ws", "protobufjs"] {
                let installed = interop.join("node_modules").join(package);
                assert!(
                    installed.join("package.json").exists(),
                    "no {}: {INSTALL_HINT}",
                    installed.display()
                );
            }
            args.push(interop.join("node_client.mjs").into());
            args.extend([
                "--proto".into(),
                manifest.join("proto/telehub/v1/telehub.proto").into(),
            ]);
            std::env::var_os("TELEHUB_INTEROP_NODE")
                .map(PathBuf::from)
                .unwrap_or_else(|| "node".into())
        }
    };
    let device_token = hub.token(DEVICE_ID, Role::Device, &[]);
    let dashboard_token = hub.token("interop-viewer", Role::Viewer, &[]);
    // 127.0.0.1, not localhost: the hub listens on IPv4 loopback only, and the
    // development certificate names 127.0.0.1 too.
    let url = format!("wss://127.0.0.1:{}", hub.addr.port());
    for (flag, value) in [
        ("--url", url.into()),
        ("--ca", hub.certs_dir.join("ca.pem").into_os_string()),
        ("--device-token", device_token.into()),
        ("--dashboard-token", dashboard_token.into()),
        ("--category", CATEGORY.into()),
        ("--telemetry", telemetry_file.into_os_string()),
    ] {
        args.extend([OsString::from(flag), value]);
    }
    args.extend(case.flags.iter().map(OsString::from));

    let started = Instant::now();
    let (status, stdout, stderr) = run_bounded(&program, &args).await;
    eprintln!("{:?} {:?}: {:?}", case.peer, case.flags, started.elapsed());
    let status = status.unwrap_or_else(|| {
        panic!(
            "{:?} did not finish within {CLIENT_TIMEOUT:?}; stderr:\n{stderr}",
            case.peer
        )
    });
    assert!(
        status.success(),
        "{:?} failed ({status}); stderr:\n{stderr}\nstdout:\n{stdout}",
        case.peer
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("{:?} printed nothing; stderr:\n{stderr}", case.peer));
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{:?} printed no JSON ({e}): {line}", case.peer))
}

/// A child process, killed (and reaped) when the test is done with it, even on a panic.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `program args` for at most [`CLIENT_TIMEOUT`], polling so the hub keeps running
/// on this test's runtime meanwhile. Returns (exit status, or `None` when killed for
/// taking too long; stdout; stderr).
async fn run_bounded(
    program: &Path,
    args: &[OsString],
) -> (Option<std::process::ExitStatus>, String, String) {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}; {INSTALL_HINT}", program.display()));
    let mut script = Script(child);
    // Drained on threads so a chatty child never blocks on a full pipe.
    let stdout = drain(script.0.stdout.take());
    let stderr = drain(script.0.stderr.take());
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = script.0.try_wait().expect("polling the client process") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Kills a child that ran out of time, which closes its pipes for the drains.
    drop(script);
    let join = |h: JoinHandle<String>| h.join().expect("pipe reader panicked");
    (status, join(stdout), join(stderr))
}
