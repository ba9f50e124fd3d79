//! The Grafana dashboard (`deploy/grafana/telehub.json`) against a real Prometheus:
//! Debian's `prometheus` scrapes a hub over TLS (the README's scrape configuration)
//! every second while a simulated fleet streams to it (one device over its rate
//! limit), three dashboards receive (live, batched, conflated) and CRITICAL
//! notifications are pushed and acknowledged. Then every panel's every query,
//! with Grafana's variables put in, is evaluated through Prometheus' HTTP API and
//! must answer data: an error, an empty answer or an answer that is only NaN fails
//! the test with the panel's title and the query.
//!
//! The dashboard's JSON is checked as Grafana would import it, too: unique panel
//! ids and titles, a position for each, the data source variable on every panel
//! and query, a unit on every panel, and template variables whose queries find the
//! hub.

mod common;

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;
use telehub::{
    auth::{Role, TokenKey},
    proto::Subscribe,
    sim::{run_fleet, FleetConfig, FleetStats, TokenSource},
};

/// Prometheus scrapes the hub this often.
const SCRAPE_INTERVAL: &str = "1s";

/// What `$__rate_interval` stands for. Grafana makes it at least four scrape
/// intervals; ten leave room for a late scrape on a busy machine.
const RATE_INTERVAL: &str = "10s";

/// The job name of the README's scrape configuration.
const JOB: &str = "telehub";

/// Panels whose queries may answer NaN, with why. They must still answer a series
/// (so a misspelled name still fails); only the value may be NaN.
const NAN_ALLOWED: &[(&str, &str)] = &[(
    "Cluster: Redis round trip",
    // histogram_quantile() over buckets that all grew by zero is NaN. A node alone
    // has no link to Redis and so no heartbeat round trips: its
    // telehub_cluster_redis_rtt_seconds histogram is exported, but empty.
    "a node alone measures no Redis round trip",
)];

/// Queries whose value must be above zero under this test's load: (panel, refId,
/// what the load does that shows there). Not every panel: many count what this
/// load never does (refusals, expiries, cluster traffic) and answer zeros.
const LOAD_SHOWS: &[(&str, &str, &str)] = &[
    ("Devices online", "A", "the fleet's devices are connected"),
    ("Telemetry from devices", "A", "telemetry is accepted"),
    ("Telemetry from devices", "B", "one device exceeds its rate"),
    ("Telemetry to dashboards", "A", "dashboards receive it"),
    ("Delivery delay to dashboards", "A", "dashboards receive it"),
    ("Store writable", "A", "the store writes"),
    ("Ready", "A", "the hub is ready"),
    (
        "Batches and conflation",
        "A",
        "a batched and a conflated dashboard",
    ),
    (
        "Notification ack latency",
        "A",
        "critical notifications are acked",
    ),
    (
        "Notifications accepted by severity",
        "A",
        "notifications are pushed",
    ),
    ("Per-device deliveries", "C", "devices acknowledge"),
];

fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/telehub.json");
    let text = std::fs::read_to_string(path).expect("reading deploy/grafana/telehub.json");
    serde_json::from_str(&text).expect("deploy/grafana/telehub.json is JSON")
}

/// Every panel, rows included, with the panels inside collapsed rows.
fn all_panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("<untitled>")
}

/// The dashboard as Grafana imports it: see the module doc.
fn check_structure(dash: &Value) {
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion: {}",
        dash["schemaVersion"]
    );
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    // `id` null: an import creates the dashboard, never overwrites one by number.
    assert!(dash["id"].is_null(), "id must be null: {}", dash["id"]);

    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("template variable {name} missing"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for name in ["job", "instance"] {
        assert_eq!(var(name)["type"], "query", "{name}");
        assert_eq!(var(name)["datasource"]["uid"], "${datasource}", "{name}");
    }

    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in all_panels(dash) {
        let t = title(p);
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{t}: no numeric id"));
        assert!(ids.insert(id), "{t}: panel id {id} used twice");
        assert!(titles.insert(t), "two panels are titled {t:?}");
        let g = &p["gridPos"];
        let at = |k: &str| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{t}: gridPos.{k} missing"))
        };
        assert!(
            at("w") >= 1 && at("h") >= 1 && at("x") + at("w") <= 24,
            "{t}: gridPos {g}"
        );
        at("y");
        if p["type"] == "row" {
            if p["collapsed"] != true {
                // An open row's panels follow it at the top level.
                assert!(
                    p["panels"].as_array().is_none_or(|v| v.is_empty()),
                    "{t}: an open row holds no panels"
                );
            }
            continue;
        }
        assert_eq!(
            p["datasource"],
            serde_json::json!({"type": "prometheus", "uid": "${datasource}"}),
            "{t}: data source"
        );
        assert!(
            p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_some_and(|u| !u.is_empty()),
            "{t}: no unit"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{t}: no query");
        let mut refs = BTreeSet::new();
        for q in targets {
            assert_eq!(q["datasource"], p["datasource"], "{t}: query data source");
            assert!(q["expr"].as_str().is_some_and(|e| !e.trim().is_empty()));
            let r = q["refId"].as_str().expect("refId");
            assert!(refs.insert(r), "{t}: refId {r} used twice");
        }
    }

    // Panels shown together do not overlap: the top level, and each collapsed row's.
    let mut groups = vec![dash["panels"].as_array().expect("panels").clone()];
    for p in all_panels(dash) {
        if p["type"] == "row" && p["collapsed"] == true {
            groups.push(p["panels"].as_array().cloned().unwrap_or_default());
        }
    }
    for group in groups {
        let rect = |p: &Value| {
            let g = &p["gridPos"];
            let n = |k: &str| g[k].as_u64().unwrap_or(0);
            (n("x"), n("y"), n("x") + n("w"), n("y") + n("h"))
        };
        for (i, a) in group.iter().enumerate() {
            for b in &group[i + 1..] {
                let (ra, rb) = (rect(a), rect(b));
                let apart = ra.2 <= rb.0 || rb.2 <= ra.0 || ra.3 <= rb.1 || rb.3 <= ra.1;
                assert!(apart, "{} and {} overlap", title(a), title(b));
            }
        }
    }
}

/// Puts Grafana's variables into `expr` as the dashboard would on this hub:
/// `${name}`, `${name:format}` and `$name`. Fails on any variable left.
fn substitute(expr: &str, vars: &[(&str, String)]) -> String {
    let mut vars = vars.to_vec();
    // Longest first: `$__rate_interval` before a shorter name it begins with.
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = expr.to_string();
    for (name, value) in &vars {
        while let Some(start) = out.find(&format!("${{{name}")) {
            let end = start + out[start..].find('}').expect("an unclosed ${");
            out.replace_range(start..=end, value);
        }
        out = out.replace(&format!("${name}"), value);
    }
    assert!(
        !out.contains('$'),
        "a variable the test does not know: {expr}"
    );
    out
}

/// One query of one panel, variables put in.
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
}

fn panel_queries(dash: &Value, vars: &[(&str, String)]) -> Vec<PanelQuery> {
    all_panels(dash)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| PanelQuery {
                    panel: title(p).to_string(),
                    ref_id: t["refId"].as_str().unwrap_or("?").to_string(),
                    expr: substitute(t["expr"].as_str().unwrap_or_default(), vars),
                })
        })
        .collect()
}

/// Evaluates `q`: `Err` says what is wrong (an error, nothing, only NaN where NaN
/// is not allowed); `Ok` holds the values.
async fn evaluate(prom: &Prometheus, q: &PanelQuery) -> Result<Vec<f64>, String> {
    let samples = prom.query(&q.expr).await?;
    if samples.is_empty() {
        return Err("no data".into());
    }
    let values: Vec<f64> = samples.iter().map(|s| s.number()).collect();
    let nan_allowed = NAN_ALLOWED.iter().any(|(panel, _)| *panel == q.panel);
    if values.iter().all(|v| v.is_nan()) && !nan_allowed {
        return Err(format!("only NaN: {samples:?}"));
    }
    Ok(values)
}

/// Polls `expr` until its value (summed) is at least `min`, bounded by `limit`.
async fn wait_value(prom: &Prometheus, expr: &str, min: f64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let v = prom.value(expr).await;
        if v >= min {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {expr} >= {min} (last {v}); targets:\n{}\nprometheus log:\n{}",
            prom.targets().await,
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A dashboard that reads whatever comes, in its own task, until aborted.
fn keep_reading(mut dash: Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match dash.next_event_within(Duration::from_millis(500)).await {
                Some(Event::Close(_)) | Some(Event::Gone(_)) => return,
                _ => {}
            }
        }
    })
}

#[test]
fn the_dashboard_is_well_formed() {
    check_structure(&dashboard());
}

/// The JSON is generated: `deploy/grafana/generate.py` must reproduce it, so edits go
/// to the script (and are not lost at the next regeneration).
#[test]
fn the_dashboard_is_what_its_generator_makes() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/generate.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .output()
        .expect("running python3 deploy/grafana/generate.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated: Value = serde_json::from_slice(&out.stdout).expect("the generator's JSON");
    assert!(
        generated == dashboard(),
        "deploy/grafana/telehub.json differs from what generate.py makes: \
         python3 deploy/grafana/generate.py > deploy/grafana/telehub.json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_answers_data_from_prometheus_scraping_a_loaded_hub() {
    let dash = dashboard();
    let hub = Hub::with(|c| {
        // Low enough that the greedy device below is refused most of the time.
        c.rate.per_second = 20;
        c.rate.burst = 20;
        c.rate.abuse_seconds = 3600;
    })
    .await;
    let instance = format!("127.0.0.1:{}", hub.addr.port());

    // The README's scrape configuration, at one scrape a second.
    let config = format!(
        "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: {SCRAPE_INTERVAL}\n\
         scrape_configs:\n  - job_name: {JOB}\n    scheme: https\n    tls_config:\n      \
         ca_file: {ca}\n    static_configs:\n      - targets: ['{instance}']\n",
        ca = hub.certs_dir.join("ca.pem").display()
    );
    let prom = Prometheus::start(&config).await;

    // Dashboards: live, batched and conflated, each reading all categories.
    let mut readers = Vec::new();
    for (max_delay_ms, conflate_ms) in [(0, 0), (200, 0), (0, 300)] {
        let mut d = hub.dashboard().await;
        d.subscribe_with(Subscribe {
            categories: vec!["*".into()],
            max_delay_ms,
            conflate_ms,
            ..Default::default()
        })
        .await;
        readers.push(keep_reading(d));
    }

    // The fleet: four devices within their rate and acknowledging, one that sends
    // three times what its limit allows.
    let key = TokenKey::load_or_create(&hub.data_dir).expect("token key");
    let url = format!("wss://localhost:{}", hub.addr.port());
    let mut steady = FleetConfig::new(url.clone(), TokenSource::mint(key.clone()));
    steady.ca = Some(hub.certs_dir.join("ca.pem"));
    steady.devices = 4;
    steady.rate_hz = 5.0;
    steady.ack_delay = Duration::from_millis(20);
    let mut greedy = FleetConfig::new(url, TokenSource::mint(key));
    greedy.ca = steady.ca.clone();
    greedy.devices = 1;
    greedy.rate_hz = 60.0;
    greedy.pace_to_limit = false;
    greedy.confirm = false;
    greedy.id_prefix = "greedy-".into();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let fleets: Vec<_> = [steady, greedy]
        .into_iter()
        .map(|cfg| {
            let mut stopped = stopped.clone();
            tokio::spawn(run_fleet(cfg, Arc::new(FleetStats::new()), async move {
                let _ = stopped.wait_for(|s| *s).await;
            }))
        })
        .collect();

    // Notifications: one of each severity, then a CRITICAL one every second, so
    // acks (and their latency) fall in every rate interval.
    let api = hub.api(Role::Operator);
    let ids: Vec<String> = (0..4).map(|i| telehub::sim::device_id("sim-", i)).collect();
    for id in &ids {
        wait_registered(&api, id).await;
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    for severity in ["info", "warning"] {
        api.create(&notification(severity, to_devices(&id_refs), "hello"))
            .await
            .expect("POST notification");
    }
    let pusher = {
        let targets = to_devices(&id_refs);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let body = notification("critical", targets.clone(), &format!("check {n}"));
                api.create(&body).await.expect("POST critical notification");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        })
    };

    // Enough scrapes that every rate interval holds several samples, and the load
    // visible in them.
    let window = format!("[{RATE_INTERVAL}]");
    let up = format!("sum_over_time(up{{job=\"{JOB}\"}}{window})");
    wait_value(&prom, &up, 8.0, Duration::from_secs(30)).await;
    for counter in [
        "telehub_telemetry_rate_limited_total",
        "telehub_telemetry_delivered_total",
        "telehub_notifications_acked_total",
    ] {
        let grew = format!("increase({counter}{window})");
        wait_value(&prom, &grew, 1.0, Duration::from_secs(10)).await;
    }

    // The template variables find this hub.
    let job_values = prom
        .label_values("telehub_build_info", "job")
        .await
        .expect("label_values(telehub_build_info, job)");
    assert_eq!(job_values, [JOB]);
    let instances = prom
        .label_values(&format!("telehub_build_info{{job=~\"{JOB}\"}}"), "instance")
        .await
        .expect("label_values(..., instance)");
    assert_eq!(instances, [instance.as_str()]);

    // Every query of every panel.
    let vars = [
        ("__rate_interval", RATE_INTERVAL.to_string()),
        ("__interval", SCRAPE_INTERVAL.to_string()),
        ("__range", "1h".to_string()),
        ("job", JOB.to_string()),
        ("instance", instance.clone()),
    ];
    let queries = panel_queries(&dash, &vars);
    assert!(queries.len() >= 30, "{} queries", queries.len());
    let mut failures = Vec::new();
    let mut answers = Vec::new();
    for q in &queries {
        match evaluate(&prom, q).await {
            Ok(values) => answers.push((q, values)),
            Err(why) => failures.push(format!("{} ({}): {why}\n    {}", q.panel, q.ref_id, q.expr)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} panel queries have no data:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );
    for (panel, ref_id, why) in LOAD_SHOWS {
        let (_, values) = answers
            .iter()
            .find(|(q, _)| q.panel == *panel && q.ref_id == *ref_id)
            .unwrap_or_else(|| panic!("no query {panel} ({ref_id})"));
        assert!(
            values.iter().any(|v| *v > 0.0),
            "{panel} ({ref_id}) should show that {why}: {values:?}"
        );
    }
    for (panel, _) in NAN_ALLOWED {
        assert!(
            queries.iter().any(|q| q.panel == *panel),
            "NAN_ALLOWED names {panel:?}, which is not on the dashboard"
        );
    }

    // The check can fail: a misspelled metric answers nothing, a bad query errors.
    for expr in [
        "sum(rate(telehub_telemetry_acepted_total[10s]))",
        "sum(rate(telehub_telemetry_accepted_total))",
    ] {
        let typo = PanelQuery {
            panel: "typo".into(),
            ref_id: "A".into(),
            expr: expr.into(),
        };
        assert!(evaluate(&prom, &typo).await.is_err(), "{expr} passed");
    }

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), pusher).await;
    for fleet in fleets {
        let summary = tokio::time::timeout(Duration::from_secs(10), fleet)
            .await
            .expect("fleet stops")
            .expect("fleet task")
            .expect("fleet run");
        assert!(
            summary.sent > 0 && summary.auth_failures == 0,
            "{summary:?}"
        );
    }
    for r in readers {
        r.abort();
    }
    drop(prom);
    hub.stop().await;
}
