//! What a newcomer sees from the command line when something is off: one line per
//! error that names the hub (no backtrace, even with `RUST_BACKTRACE=1`), `serve
//! --help` that says what its directories and address default to, and text (not
//! JSON) from `devices put`.

mod common;

use std::process::{Command, Output};

use common::*;

fn telehub(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telehub"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "warn")
        .output()
        .expect("running telehub")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_hub_that_is_not_there_is_one_line_naming_its_address() {
    let hub = Hub::start().await;
    let port = free_port();
    let (ca, data) = (hub.certs_dir.join("ca.pem"), hub.data_dir.clone());
    let args = [
        "notify",
        "list",
        "--url",
        &format!("https://127.0.0.1:{port}"),
        "--ca",
        ca.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]
    .map(str::to_owned);
    let out = tokio::task::spawn_blocking(move || {
        telehub(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line, no backtrace: {stderr}"
    );
    assert!(
        stderr.contains(&format!("cannot reach the hub at 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("refused").count(),
        1,
        "the cause once: {stderr}"
    );
}

#[test]
fn serve_help_says_what_the_address_and_directories_default_to() {
    let out = telehub(&["serve", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for default in ["127.0.0.1:8443", "./data", "./certs"] {
        assert!(help.contains(default), "{default} missing from:\n{help}");
    }
}

#[tokio::test]
async fn devices_put_answers_in_text_and_json_on_request() {
    let hub = Hub::start().await;
    let url = format!("https://localhost:{}", hub.addr.port());
    let ca = hub.certs_dir.join("ca.pem").to_str().unwrap().to_owned();
    let data = hub.data_dir.to_str().unwrap().to_owned();
    let put = move |json: bool| {
        let mut args = vec![
            "devices",
            "put",
            "dev-7",
            "--tag",
            "fleet=north",
            "--url",
            &url,
            "--ca",
            &ca,
            "--data-dir",
            &data,
        ];
        if json {
            args.push("--json");
        }
        telehub(&args)
    };
    let (plain, json) = tokio::task::spawn_blocking(move || (put(false), put(true)))
        .await
        .unwrap();
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    assert_eq!(text(&plain.stdout).trim(), "registered dev-7 fleet=north");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON with --json");
    assert_eq!(v["id"], "dev-7");
}
