//! The API description at `GET /v1/openapi.json`, checked from outside a running hub:
//!
//! - it is a valid OpenAPI document by an independent validator (Python's
//!   `openapi-spec-validator`, `tests/interop/openapi_validate.py`), and real answers
//!   of the hub (bodies, statuses, content types) match what it documents;
//! - every route the router serves is described, or listed in
//!   `telehub::http::UNDESCRIBED` with a reason, and every described operation is
//!   served: each is requested over TLS, without and with a token, and must be
//!   routed (no 404 from the dashboard's catch-all, no 405) and answer only
//!   documented statuses (401 without a token exactly where a token is required).

mod common;

use std::{collections::BTreeSet, path::Path};

use common::*;
use serde_json::{json, Value};
use telehub::auth::Role;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::timeout,
};

/// Every route the hub serves. Adding a route to the router means adding it here
/// (and describing it, or listing it in `telehub::http::UNDESCRIBED`).
const KNOWN: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/device"),
    ("GET", "/v1/dashboard"),
    ("GET", "/v1/dashboard/settings"),
    ("GET", "/v1/notifications"),
    ("POST", "/v1/notifications"),
    ("GET", "/v1/notifications/{id}"),
    ("GET", "/v1/devices"),
    ("PUT", "/v1/devices/{id}"),
    ("GET", "/v1/revocations"),
    ("POST", "/v1/revocations"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/{*file}"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace", "query",
];

/// (METHOD, path) of every operation in a description.
fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    let paths = spec["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| (m.to_ascii_uppercase(), path.clone()))
        })
        .collect()
}

fn set(routes: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    routes
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

async fn fetch_spec(hub: &Hub) -> Value {
    let spec = hub.get_json("/v1/openapi.json").await;
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        spec["openapi"]
    );
    assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
    spec
}

#[tokio::test]
async fn every_served_route_is_described_and_every_description_served() {
    let hub = Hub::start().await;
    let spec = fetch_spec(&hub).await;
    let described = operations(&spec);
    let undescribed: BTreeSet<(String, String)> = telehub::http::UNDESCRIBED
        .iter()
        .map(|(method, path, why)| {
            assert!(
                why.len() > 20,
                "{method} {path}: say why it is not described"
            );
            (method.to_string(), path.to_string())
        })
        .collect();

    // What the router is built from is what this test knows, and all of it is
    // described except the listed exclusions.
    let served: BTreeSet<(String, String)> = telehub::http::routes().into_iter().collect();
    assert_eq!(
        served,
        set(KNOWN),
        "the router's routes changed: update KNOWN"
    );
    let expected: BTreeSet<_> = served.difference(&undescribed).cloned().collect();
    assert_eq!(
        described, expected,
        "described operations differ from the served routes"
    );
    assert!(described.is_disjoint(&undescribed));

    // A `.route(...)` outside utoipa-axum's `routes!` is served but not described:
    // each must be a listed exclusion.
    let undescribed_paths: BTreeSet<String> = undescribed.iter().map(|(_, p)| p.clone()).collect();
    let manual = manual_routes(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        !manual.is_empty(),
        "the source scan found no `.route(` at all"
    );
    for (file, call, path) in &manual {
        assert!(
            path.as_ref().is_some_and(|p| undescribed_paths.contains(p)),
            "{file}: `{call}({})` is served but not described: annotate its handler with \
             #[utoipa::path] and add it with routes!, or list it in http::UNDESCRIBED \
             with the reason",
            path.as_deref().unwrap_or("<not a string literal>")
        );
    }

    // Every described operation is served: requested without and with a token, it
    // is routed and answers only documented statuses.
    let operator = hub.token("operator", Role::Operator, &[]);
    let created = hub
        .request(
            "POST",
            "/v1/notifications",
            Some(&operator),
            Some(r#"{"targets":{"device_ids":["probe-dev"]},"severity":"info","title":"t"}"#),
        )
        .await;
    assert_eq!(created.0, 201, "{}", created.2);
    let id = serde_json::from_str::<Value>(&created.2).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (method, template) in &described {
        let op = &spec["paths"][template][method.to_ascii_lowercase()];
        let path = template.replace(
            "{id}",
            if template.starts_with("/v1/notifications/") {
                &id
            } else {
                "probe-dev"
            },
        );
        let websocket = op["tags"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("websocket")));
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        let token = match path.as_str() {
            "/v1/device" => hub.token("probe-dev", Role::Device, &[]),
            "/v1/dashboard" => hub.token("viewer", Role::Viewer, &[]),
            _ => operator.clone(),
        };
        let body = (method != "GET").then_some("{}");
        for token in [None, Some(token.as_str())] {
            let (status, _, text) = send(&hub, method, &path, token, body, websocket).await;
            let what = format!(
                "{method} {path} ({}): {status} {text}",
                if token.is_some() { "token" } else { "no token" }
            );
            assert!(routed(status, &text), "not served: {what}");
            assert!(
                op["responses"].get(status.to_string()).is_some(),
                "undocumented status: {what}"
            );
            match (token, secured) {
                (None, true) => assert_eq!(status, 401, "{what}"),
                (None, false) => assert!(status != 401 && status != 403, "{what}"),
                (Some(_), _) => assert!(status != 401 && status != 403, "{what}"),
            }
            if websocket && token.is_some() {
                assert_eq!(status, 101, "{what}");
            }
        }
    }

    // The check above can fail: a path nothing serves is told apart.
    for method in ["GET", "POST"] {
        let (status, _, text) = send(&hub, method, "/v1/nothing", None, None, false).await;
        assert!(
            !routed(status, &text),
            "{method} /v1/nothing: {status} {text}"
        );
    }
}

/// Whether an answer came from a route of its own: an unrouted GET falls to the
/// dashboard's catch-all (404 `no such page`), any other unrouted method gets 405.
fn routed(status: u16, body: &str) -> bool {
    status != 405 && !(status == 404 && body.starts_with("no such page"))
}

/// Every `.route(`-like call in the Rust files under `dir`: (file, call, its first
/// argument when it is a string literal).
fn manual_routes(dir: &Path) -> Vec<(String, String, Option<String>)> {
    const CALLS: &[&str] = &[
        ".route(",
        ".route_service(",
        ".nest(",
        ".nest_service(",
        ".merge(",
        ".fallback(",
        ".fallback_service(",
    ];
    let mut out = Vec::new();
    let mut files = vec![dir.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                files.push(entry.unwrap().path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for call in CALLS {
            for (at, _) in text.match_indices(call) {
                let line = &text[text[..at].rfind('\n').map_or(0, |n| n + 1)..at];
                if line.trim_start().starts_with("//") {
                    continue;
                }
                let rest = text[at + call.len()..].trim_start();
                let literal = rest
                    .strip_prefix('"')
                    .and_then(|r| r.split_once('"'))
                    .map(|(p, _)| p.to_owned());
                out.push((
                    path.display().to_string(),
                    call.trim_end_matches('(').to_owned(),
                    literal,
                ));
            }
        }
    }
    out
}

/// One request over TLS; with `websocket`, a complete upgrade handshake. Returns
/// (status, head, body); a `101` is returned as soon as its head is read.
async fn send(
    hub: &Hub,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    websocket: bool,
) -> (u16, String, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: {}\r\n",
        hub.host(),
        if websocket { "Upgrade" } else { "close" }
    );
    if websocket {
        req.push_str(
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: telehub.v1\r\n",
        );
    }
    if let Some(token) = token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or_default());
    let mut tls = hub.tls().await;
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // Read to the end of the answer: the connection stays open after an upgrade, and
    // after a refused one (its `Connection: Upgrade` asked for no close).
    let read = async {
        loop {
            let n = tls.read(&mut buf).await.unwrap_or(0);
            raw.extend_from_slice(&buf[..n]);
            if n == 0 || complete(&raw) {
                break;
            }
        }
    };
    timeout(T, read)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer"));
    parse_http_response(&raw)
}

/// Whether `raw` holds a whole answer: a `101` head, or a head and as many body
/// bytes as its `Content-Length` says.
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    if head.starts_with("http/1.1 101") {
        return true;
    }
    let length = head.lines().find_map(|l| {
        let value = l.strip_prefix("content-length:")?;
        value.trim().parse::<usize>().ok()
    });
    length.is_some_and(|n| raw.len() >= end + 4 + n)
}

/// The JSON body of an answer (or the text, for text bodies), as a sample for the
/// validator: the real exchange it checks against the description.
fn sample(
    method: &str,
    template: &str,
    request: Option<&str>,
    answer: &(u16, String, String),
) -> Value {
    let (status, head, body) = answer;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let body = match content_type.starts_with("application/json") {
        true => serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")),
        false => json!(body),
    };
    let mut s = json!({
        "method": method,
        "path": template,
        "status": status,
        "content_type": content_type,
        "body": body,
    });
    if let Some(request) = request {
        s["request"] = serde_json::from_str(request).unwrap();
    }
    s
}

/// One real exchange with the hub, as a sample for the validator: the request's
/// method, the spec's path template, the path requested, the token and body sent.
struct Exchange<'a> {
    method: &'a str,
    template: &'a str,
    path: String,
    token: Option<&'a str>,
    body: Option<&'a str>,
}

impl<'a> Exchange<'a> {
    fn new(method: &'a str, template: &'a str, path: impl Into<String>) -> Self {
        Exchange {
            method,
            template,
            path: path.into(),
            token: None,
            body: None,
        }
    }

    fn token(self, token: &'a str) -> Self {
        Self {
            token: Some(token),
            ..self
        }
    }

    fn body(self, body: &'a str) -> Self {
        Self {
            body: Some(body),
            ..self
        }
    }

    /// Sends it: the sample, and the raw answer.
    async fn run(&self, hub: &Hub) -> (Value, (u16, String, String)) {
        let answer = hub
            .request(self.method, &self.path, self.token, self.body)
            .await;
        let sample = sample(self.method, self.template, self.body, &answer);
        (sample, answer)
    }
}

#[tokio::test]
async fn the_description_is_valid_and_real_answers_match_it() {
    let hub = Hub::start().await;
    let spec = fetch_spec(&hub).await;
    let operator = hub.token("operator", Role::Operator, &[]);
    let viewer = hub.token("viewer", Role::Viewer, &[]);
    let _device = hub.device("dev-1").await;
    let (op, view) = (operator.as_str(), viewer.as_str());
    let mut samples = Vec::new();

    let (s, _) = Exchange::new("PUT", "/v1/devices/{id}", "/v1/devices/dev-2")
        .token(op)
        .body(r#"{"tags":{"fleet":"north","site":"a"}}"#)
        .run(&hub)
        .await;
    samples.push(s);
    let (s, _) = Exchange::new("GET", "/v1/devices", "/v1/devices?limit=10")
        .token(view)
        .run(&hub)
        .await;
    assert_eq!(
        s["body"]["devices"].as_array().map(Vec::len),
        Some(2),
        "{s}"
    );
    samples.push(s);
    let create = r#"{"targets":{"device_ids":["dev-1","dev-2"]},"severity":"critical",
        "title":"Recall","body":"Stop","payload":"AAEC","ttl":"15m"}"#;
    let (s, answer) = Exchange::new("POST", "/v1/notifications", "/v1/notifications")
        .token(op)
        .body(create)
        .run(&hub)
        .await;
    assert_eq!(answer.0, 201, "{}", answer.2);
    let id = s["body"]["id"].as_str().unwrap().to_owned();
    samples.push(s);
    let tagged = r#"{"targets":{"tags":{"fleet":"north"}},"severity":"info","title":"Hi"}"#;
    let unmatched = r#"{"targets":{"tags":{"fleet":"none"}},"severity":"info","title":"t"}"#;
    let one = format!("/v1/notifications/{id}");
    let answered: Vec<(Exchange, u16)> = vec![
        (
            Exchange::new("POST", "/v1/notifications", "/v1/notifications")
                .token(op)
                .body(tagged),
            201,
        ),
        (
            Exchange::new("GET", "/v1/notifications/{id}", one.as_str()).token(view),
            200,
        ),
        (
            Exchange::new("GET", "/v1/notifications", "/v1/notifications").token(view),
            200,
        ),
        (
            Exchange::new("POST", "/v1/revocations", "/v1/revocations")
                .token(op)
                .body(r#"{"subject":"gone"}"#),
            201,
        ),
        (
            Exchange::new("GET", "/v1/revocations", "/v1/revocations").token(op),
            200,
        ),
        (Exchange::new("GET", "/healthz", "/healthz"), 200),
        (Exchange::new("GET", "/readyz", "/readyz"), 200),
        (
            Exchange::new("GET", "/v1/dashboard/settings", "/v1/dashboard/settings"),
            200,
        ),
        (Exchange::new("GET", "/metrics", "/metrics"), 200),
        (Exchange::new("GET", "/", "/"), 200),
        // Refusals: one-line text/plain bodies, with documented statuses.
        (
            Exchange::new("GET", "/v1/notifications/{id}", "/v1/notifications/nope").token(view),
            404,
        ),
        (
            Exchange::new("GET", "/v1/notifications/{id}", format!("{one}?state=lost")).token(view),
            400,
        ),
        (Exchange::new("GET", "/v1/devices", "/v1/devices"), 401),
        (
            Exchange::new("POST", "/v1/notifications", "/v1/notifications")
                .token(view)
                .body(tagged),
            403,
        ),
        (
            Exchange::new("POST", "/v1/notifications", "/v1/notifications")
                .token(op)
                .body(unmatched),
            422,
        ),
        (
            Exchange::new("PUT", "/v1/devices/{id}", "/v1/devices/dev-3")
                .token(op)
                .body(r#"{"tags":1}"#),
            400,
        ),
    ];
    for (exchange, expected) in answered {
        let (mut s, (status, head, body)) = exchange.run(&hub).await;
        let what = format!("{} {}: {status} {body}", exchange.method, exchange.path);
        assert_eq!(status, expected, "{what}");
        if status >= 400 {
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: text/plain"),
                "{what}: {head}"
            );
            assert_eq!(body.trim_end().lines().count(), 1, "{what}");
            // What was refused need not match the request schema.
            s.as_object_mut().unwrap().remove("request");
        }
        if exchange.path == one {
            assert_eq!(
                s["body"]["devices"].as_array().map(Vec::len),
                Some(2),
                "{s}"
            );
        }
        samples.push(s);
    }
    // One wrong answer the validator must reject (see openapi_validate.py).
    let mut wrong = samples[1].clone();
    wrong["body"]["devices"][0]["registered_ms"] = json!("yesterday");
    wrong["expect_invalid"] = json!(true);
    samples.push(wrong);

    let dir = temp_dir("openapi");
    let spec_file = dir.join("openapi.json");
    let samples_file = dir.join("samples.json");
    std::fs::write(&spec_file, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    std::fs::write(&samples_file, serde_json::to_vec_pretty(&samples).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/openapi_validate.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(interop_python())
            .arg(script)
            .arg(spec_file)
            .arg(samples_file)
            .output()
    })
    .await
    .unwrap()
    .expect("running openapi_validate.py");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        report["operations"],
        KNOWN.len() - telehub::http::UNDESCRIBED.len()
    );
    assert_eq!(report["samples"], samples.len());
    let _ = std::fs::remove_dir_all(dir);
}
