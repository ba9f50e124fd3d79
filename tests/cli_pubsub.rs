//! `telehub pub` and `telehub sub` against a real hub, as a user runs them: `sub`
//! prints what `pub` sends (flags and stdin JSON lines, text and `--json`), `pub`
//! exits once the hub confirmed everything even when it is rate-limited, and a bad
//! token is a one-line error naming the hub.

mod common;

use std::{
    io::Write,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// Bound on every command.
const LIMIT: Duration = Duration::from_secs(30);

fn telehub(hub: &Hub, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_telehub"));
    cmd.args(args)
        .arg("--url")
        .arg(format!("https://localhost:{}", hub.addr.port()))
        .arg("--ca")
        .arg(hub.certs_dir.join("ca.pem"))
        // A user's shell, as the brief says: errors must read well with it.
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "warn");
    cmd
}

/// Waits for `child` (killed past [`LIMIT`]) and returns its output, off the
/// runtime the hub under test runs on.
async fn finish(child: Child) -> Output {
    tokio::task::spawn_blocking(move || finish_blocking(child))
        .await
        .expect("waiting for the command")
}

fn finish_blocking(mut child: Child) -> Output {
    let started = Instant::now();
    while child.try_wait().expect("waiting").is_none() {
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "command did not finish within {LIMIT:?}; stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Starts `sub` and waits until the hub counts its dashboard.
async fn start_sub(hub: &Hub, args: &[&str]) -> Child {
    let before = hub
        .scrape()
        .await
        .get("telehub_connections_accepted_total{role=\"viewer\"}");
    let data = hub.data_dir.to_str().unwrap().to_owned();
    let mut all = vec!["sub", "--data-dir", &data];
    all.extend_from_slice(args);
    let child = telehub(hub, &all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("telehub sub");
    hub.wait_metrics("sub's dashboard", |m| {
        m.get("telehub_connections_accepted_total{role=\"viewer\"}") > before
    })
    .await;
    // Its Subscribe follows the upgrade at once; give it a moment to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    child
}

async fn publish(hub: &Hub, args: &[&str], stdin: Option<&str>) -> Output {
    let data = hub.data_dir.to_str().unwrap().to_owned();
    let mut all = vec!["pub", "--data-dir", &data];
    all.extend_from_slice(args);
    let mut child = telehub(hub, &all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("telehub pub");
    let mut input = child.stdin.take().unwrap();
    if let Some(lines) = stdin {
        input.write_all(lines.as_bytes()).unwrap();
    }
    drop(input);
    finish(child).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn sub_prints_what_pub_sends_from_flags_and_stdin() {
    let hub = Hub::start().await;
    let sub = start_sub(&hub, &["env.*", "--count", "4", "--no-presence"]).await;
    let out = publish(
        &hub,
        &[
            "--device",
            "greenhouse-1",
            "--category",
            "env.temperature",
            "--reading",
            "temperature:Cel=21.5",
            "--reading",
            "door=true",
            "--count",
            "2",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "pub: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("2 messages published and confirmed"));
    let lines =
        "{\"category\": \"env.power\", \"readings\": {\"v\": {\"value\": 3.3, \"unit\": \"V\"}}}\n\
                 \n\
                 {\"readings\": {\"note\": \"ok\", \"count\": 7}}\n";
    let out = publish(
        &hub,
        &["--device", "meter-1", "--stdin", "--category", "env.misc"],
        Some(lines),
    )
    .await;
    assert!(out.status.success(), "pub --stdin: {}", text(&out.stderr));

    let out = finish(sub).await;
    assert!(out.status.success(), "sub: {}", text(&out.stderr));
    let printed = text(&out.stdout);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 4, "{printed}");
    assert!(
        lines[0].ends_with(" greenhouse-1 env.temperature #1 temperature:Cel=21.5 door=true"),
        "{}",
        lines[0]
    );
    assert!(lines[1].ends_with(" greenhouse-1 env.temperature #2 temperature:Cel=21.5 door=true"));
    assert!(
        lines[2].ends_with(" meter-1 env.power #1 v:V=3.3"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].ends_with(" meter-1 env.misc #2 count=7 note=\"ok\""),
        "{}",
        lines[3]
    );
}

#[tokio::test]
async fn sub_json_filters_by_device_and_pub_waits_out_the_rate_limit() {
    let hub = Hub::with(|c| {
        c.rate.per_second = 20;
        c.rate.burst = 5;
    })
    .await;
    let sub = start_sub(&hub, &["*", "--device", "d2", "--json", "--count", "30"]).await;
    let other = publish(
        &hub,
        &["--device", "d1", "--category", "x", "--reading", "n=1"],
        None,
    )
    .await;
    assert!(other.status.success());
    let out = publish(
        &hub,
        &[
            "--device",
            "d2",
            "--category",
            "x",
            "--reading",
            "n=2",
            "--count",
            "30",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "pub: {}", text(&out.stderr));

    let out = finish(sub).await;
    assert!(out.status.success(), "sub: {}", text(&out.stderr));
    let seqs: Vec<u64> = text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            if !v["presence"].is_null() {
                assert_eq!(
                    v["presence"]["deviceId"], "d2",
                    "presence is filtered too: {l}"
                );
                return None;
            }
            let t = &v["telemetry"];
            assert_eq!(t["deviceId"], "d2", "{l}");
            let seq = t["seq"].as_str().expect("uint64 as a JSON string");
            Some(seq.parse().unwrap())
        })
        .collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>(), "paced: none refused");
    assert_eq!(
        hub.scrape()
            .await
            .get("telehub_telemetry_rate_limited_total"),
        0.0
    );
}

#[tokio::test]
async fn a_refused_token_is_one_line_naming_the_hub() {
    let hub = Hub::start().await;
    let dir = Dir::new("cli");
    let bad = dir.0.join("token");
    std::fs::write(&bad, "eyJhbGciOiJIUzI1NiJ9.e30.c2ln").unwrap();
    let child = telehub(&hub, &["sub", "--token-file", bad.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("telehub sub");
    let out = finish(child).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line, no backtrace: {stderr}"
    );
    assert!(stderr.contains("refused the token (401)"), "{stderr}");
    assert!(
        stderr.contains(&format!("localhost:{}", hub.addr.port())),
        "{stderr}"
    );
}

#[tokio::test]
async fn pub_refuses_what_the_hub_would_and_sub_ends_quietly_when_its_reader_goes() {
    let hub = Hub::start().await;
    let out = publish(
        &hub,
        &["--category", "bad category", "--reading", "x=1"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("message 1: category \"bad category\""),
        "{stderr}"
    );

    // `telehub sub | head -1`: the reader leaves after one line.
    let mut sub = start_sub(&hub, &["--no-presence"]).await;
    let stdout = sub.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    });
    let sent = publish(&hub, &["--category", "x", "--reading", "n=1"], None).await;
    assert!(sent.status.success());
    assert!(first.await.unwrap().unwrap().contains(" x #1 n=1"));
    // Its stdout is closed now: the next message ends it, without a panic.
    let sent = publish(
        &hub,
        &["--category", "x", "--reading", "n=2", "--count", "3"],
        None,
    )
    .await;
    assert!(sent.status.success());
    let out = finish(sub).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}
