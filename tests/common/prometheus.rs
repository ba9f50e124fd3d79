//! A throwaway Prometheus: Debian's `prometheus` on a free loopback port, its
//! database in a temp directory, scraping what the test configures, killed on drop.
//! `.ci/run` installs the package; tests never use the system service.
//!
//! Queries go through Prometheus' HTTP API (`/api/v1/query`, `/api/v1/label/…`) as
//! Grafana's Prometheus data source sends them.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use super::{http::parse_http_response, hub::temp_dir, redis::server_port};

pub struct Prometheus {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// One series of an instant query's answer: its labels and its value as
/// Prometheus wrote it (`"NaN"`, `"+Inf"` and numbers).
#[derive(Clone, Debug)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: String,
}

impl Sample {
    /// The value as a number (NaN when Prometheus said so or it does not parse).
    pub fn number(&self) -> f64 {
        self.value.parse().unwrap_or(f64::NAN)
    }
}

impl Prometheus {
    /// Starts an instance whose configuration is `config` (a whole
    /// `prometheus.yml`) and waits until it answers `/-/ready`.
    pub async fn start(config: &str) -> Self {
        let dir = temp_dir("prometheus");
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("writing prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus.log");
        let port = server_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting prometheus ({e}): install Debian's prometheus (`apt-get install prometheus`; .ci/run does)"
                )
            });
        let prometheus = Prometheus {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = prometheus.try_get("/-/ready").await {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready; its log:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the server logged (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// One GET on the HTTP API: (status, body), or why there was no answer.
    pub async fn try_get(&self, path_and_query: &str) -> Result<(u16, String), String> {
        let exchange = async {
            let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
            let req = format!(
                "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.port
            );
            tcp.write_all(req.as_bytes()).await?;
            let mut raw = Vec::new();
            tcp.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        match timeout(Duration::from_secs(5), exchange).await {
            Err(_) => Err(format!("GET {path_and_query}: no answer in 5 s")),
            Ok(Err(e)) => Err(format!("GET {path_and_query}: {e}")),
            Ok(Ok(raw)) if raw.is_empty() => Err(format!("GET {path_and_query}: empty answer")),
            Ok(Ok(raw)) => {
                let (status, _, body) = parse_http_response(&raw);
                Ok((status, body))
            }
        }
    }

    /// The `data` of an API answer, or the error Prometheus gave (its `error`
    /// field) or the transport's.
    pub async fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let (status, body) = self.try_get(path_and_query).await?;
        let json: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if json["status"] != "success" {
            return Err(format!(
                "HTTP {status}: {} {}",
                json["errorType"].as_str().unwrap_or("?"),
                json["error"].as_str().unwrap_or(&body)
            ));
        }
        Ok(json["data"].clone())
    }

    /// An instant query at the current time: every series of the answer (one
    /// unlabelled sample for a scalar), or the error.
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self
            .api(&format!("/api/v1/query?query={}", url_encode(expr)))
            .await?;
        let value = |v: &Value| v[1].as_str().unwrap_or_default().to_string();
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .map(|series| {
                    series
                        .iter()
                        .map(|s| Sample {
                            labels: s["metric"].as_object().cloned().unwrap_or_default(),
                            value: value(&s["value"]),
                        })
                        .collect()
                })
                .unwrap_or_default()),
            Some("scalar") => Ok(vec![Sample {
                labels: Default::default(),
                value: value(&data["result"]),
            }]),
            other => Err(format!("unexpected result type {other:?}: {data}")),
        }
    }

    /// The sum of an instant query's values (0 when it returns nothing).
    pub async fn value(&self, expr: &str) -> f64 {
        match self.query(expr).await {
            Ok(samples) => samples.iter().map(Sample::number).sum(),
            Err(e) => panic!("{expr}: {e}"),
        }
    }

    /// The values of `label` on the series `selector` matches, as Grafana's
    /// `label_values(selector, label)` variable query asks for them.
    pub async fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, String> {
        let data = self
            .api(&format!(
                "/api/v1/label/{label}/values?match[]={}",
                url_encode(selector)
            ))
            .await?;
        Ok(data
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The scrape targets' health and last error, for failure messages.
    pub async fn targets(&self) -> String {
        match self.api("/api/v1/targets").await {
            Ok(data) => data["activeTargets"]
                .as_array()
                .map(|targets| {
                    targets
                        .iter()
                        .map(|t| {
                            format!(
                                "{} {}: {} {}",
                                t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default(),
            Err(e) => e,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
