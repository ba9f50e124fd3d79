//! The shared backend: one PostgreSQL database for every node of a cluster, with
//! the tables and semantics of the embedded store (`schema.sql`), through
//! `tokio-postgres` and a small `deadpool` pool.
//!
//! - Migrations run at start inside one transaction holding an advisory lock, so
//!   nodes starting together migrate once.
//! - Every wait on the database is bounded ([`TIMEOUT`]): when PostgreSQL is
//!   down, reads answer an error (REST says 503) instead of hanging, and the
//!   writer keeps what it holds and tries again (see `writer`).
//! - Passwords never reach a log: errors name the host and database only.
//! - TLS when asked for (`sslmode=require` or `store.ca`), always verified: see
//!   [`open`].

mod apply;
mod shared;

use std::{collections::BTreeMap, path::Path, str::FromStr, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{config::SslMode, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;

use super::{
    CampaignRow, Counts, DeliveryRow, DeliveryState, DeviceRow, LoadedCampaign, NewNotification,
    Revocation, Snapshot, Status, StoreError, Summary,
};

pub use shared::{Lease, Select, Shared};

/// Current schema version (the `telehub_schema` table).
const VERSION: i64 = 2;
const SCHEMA_V1: &str = include_str!("schema.sql");
/// Version 2: token revocations (see `auth`).
const SCHEMA_V2: &str = "CREATE TABLE revocations (
    kind             TEXT NOT NULL CHECK (kind IN ('token', 'subject')),
    value            TEXT NOT NULL,
    issued_before_ms BIGINT NOT NULL,
    expires_ms       BIGINT NOT NULL,
    created_ms       BIGINT NOT NULL,
    created_by       TEXT NOT NULL,
    PRIMARY KEY (kind, value)
)";
/// The advisory lock migrations hold ("telehub" and 1).
const MIGRATE_LOCK: i64 = 0x7465_6c65_6875_6201;
/// Connections: the writer, the lease holder, reads.
const POOL_SIZE: usize = 8;
/// The longest any single wait on the database may take.
pub(super) const TIMEOUT: Duration = Duration::from_secs(5);

const CAMPAIGN_COLUMNS: &str = "seq, id, severity, title, body, payload, targets, created_by, created_ms, expires_ms, completed_ms";

/// The pool every read and write goes through.
#[derive(Clone)]
pub(super) struct Db {
    pool: Pool,
}

/// Connects to `url`, migrates, and loads what the store holds.
///
/// TLS: when the URL says `sslmode=require`, or `ca` is given, the connection
/// is TLS only, and the server's certificate is verified (against `ca`, or the
/// system's trusted roots) and must name the URL's host, which is stricter than
/// libpq's `require` (`verify-full` there). Otherwise the connection is plain TCP
/// (`prefer` is taken as `disable`: a server's certificate is never accepted
/// unverified).
pub(super) async fn open(
    url: &str,
    ca: Option<&Path>,
) -> Result<(apply::Writer, Db, Snapshot), StoreError> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| StoreError::BadUrl(format!("not a PostgreSQL URL ({e})")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(TIMEOUT);
    }
    config.application_name("telehub");
    let recycling = || ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if ca.is_some() || config.get_ssl_mode() == SslMode::Require {
        config.ssl_mode(SslMode::Require);
        Manager::from_config(config, MakeRustlsConnect::new(tls_config(ca)?), recycling())
    } else {
        config.ssl_mode(SslMode::Disable);
        Manager::from_config(config, NoTls, recycling())
    };
    let pool = Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(TIMEOUT))
        .create_timeout(Some(TIMEOUT))
        .recycle_timeout(Some(TIMEOUT))
        .build()
        .map_err(|e| StoreError::Pool(e.to_string()))?;
    let db = Db { pool };
    db.migrate().await?;
    let snapshot = db.load().await?;
    Ok((apply::Writer::new(db.clone()), db, snapshot))
}

impl Db {
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(pool_error(e)))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS telehub_schema (version BIGINT NOT NULL)")
            .await?;
        let found: Option<i64> = tx
            .query_opt("SELECT max(version) FROM telehub_schema", &[])
            .await?
            .and_then(|r| r.get(0));
        match found {
            Some(v) if v > VERSION => {
                return Err(StoreError::NewerSchema {
                    found: v,
                    supported: VERSION,
                })
            }
            Some(VERSION) => {}
            found => {
                let found = found.unwrap_or(0);
                if found < 1 {
                    tx.batch_execute(SCHEMA_V1).await?;
                }
                if found < 2 {
                    tx.batch_execute(SCHEMA_V2).await?;
                }
                tx.execute(
                    "INSERT INTO telehub_schema (version) VALUES ($1)",
                    &[&VERSION],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every registered device and every open notification with its deliveries.
    async fn load(&self) -> Result<Snapshot, StoreError> {
        let client = self.client().await?;
        let devices = client
            .query(
                "SELECT id, tags::text, registered_ms, last_seen_ms FROM devices",
                &[],
            )
            .await?
            .iter()
            .map(device_row)
            .collect::<Result<Vec<_>, _>>()?;
        drop(client);
        let open = self.open_seqs().await?;
        let campaigns = self.campaigns(&open).await?;
        Ok(Snapshot { devices, campaigns })
    }

    /// The notifications not yet completed, oldest first.
    pub(super) async fn open_seqs(&self) -> Result<Vec<i64>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq FROM notifications WHERE completed_ms IS NULL ORDER BY seq",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Notifications `seqs` with every device's delivery, in the order given
    /// (those no longer stored are left out).
    pub(super) async fn campaigns(&self, seqs: &[i64]) -> Result<Vec<LoadedCampaign>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {CAMPAIGN_COLUMNS} FROM notifications WHERE seq = ANY($1)"),
                &[&seqs],
            )
            .await?;
        let mut by_seq: BTreeMap<i64, LoadedCampaign> = BTreeMap::new();
        for r in &rows {
            let row = campaign(r)?;
            by_seq.insert(
                row.seq,
                LoadedCampaign {
                    row,
                    deliveries: Vec::new(),
                },
            );
        }
        let deliveries = client
            .query(
                "SELECT notification, device_id, state, attempts FROM deliveries
                 WHERE notification = ANY($1)",
                &[&seqs],
            )
            .await?;
        for r in &deliveries {
            if let Some(c) = by_seq.get_mut(&r.get::<_, i64>(0)) {
                c.deliveries
                    .push((r.get(1), state(r.get(2))?, r.get::<_, i32>(3) as u32));
            }
        }
        Ok(seqs.iter().filter_map(|s| by_seq.remove(s)).collect())
    }

    async fn counts(
        &self,
        client: &deadpool_postgres::Object,
        seq: i64,
    ) -> Result<Counts, StoreError> {
        let stmt = client
            .prepare_cached(
                "SELECT state, sum(n)::bigint FROM delivery_counts WHERE notification = $1
                 GROUP BY state",
            )
            .await?;
        let mut out = Counts::default();
        for r in client.query(&stmt, &[&seq]).await? {
            out.add(state(r.get(0))?, r.get::<_, i64>(1).max(0) as u64);
        }
        Ok(out)
    }

    pub(super) async fn status(
        &self,
        id: &str,
        filter: Option<DeliveryState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Status>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {CAMPAIGN_COLUMNS} FROM notifications WHERE id = $1"
            ))
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
            return Ok(None);
        };
        let campaign = campaign(&row)?;
        let counts = self.counts(&client, campaign.seq).await?;
        let stmt = client
            .prepare_cached(
                "SELECT device_id, state, attempts, last_sent_ms, acked_ms FROM deliveries
                 WHERE notification = $1 AND device_id > $2 AND ($3::int IS NULL OR state = $3)
                 ORDER BY device_id LIMIT $4",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &campaign.seq,
                    &after.unwrap_or(""),
                    &filter.map(|s| s as i32),
                    &((limit + 1) as i64),
                ],
            )
            .await?;
        let mut devices = rows
            .iter()
            .map(|r| {
                Ok(DeliveryRow {
                    device_id: r.get(0),
                    state: state(r.get(1))?,
                    attempts: r.get::<_, i32>(2) as u32,
                    last_sent_ms: r.get::<_, Option<i64>>(3).map(|v| v as u64),
                    acked_ms: r.get::<_, Option<i64>>(4).map(|v| v as u64),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = if devices.len() > limit {
            devices.truncate(limit);
            devices.last().map(|d| d.device_id.clone())
        } else {
            None
        };
        Ok(Some(Status {
            campaign,
            counts,
            devices,
            next,
        }))
    }

    pub(super) async fn recent(&self, limit: usize) -> Result<Vec<Summary>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {CAMPAIGN_COLUMNS} FROM notifications ORDER BY seq DESC LIMIT $1"),
                &[&(limit as i64)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let campaign = campaign(r)?;
            out.push(Summary {
                counts: self.counts(&client, campaign.seq).await?,
                campaign,
            });
        }
        Ok(out)
    }

    pub(super) async fn devices(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRow>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                "SELECT id, tags::text, registered_ms, last_seen_ms FROM devices
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after.unwrap_or(""), &(limit as i64)],
            )
            .await?
            .iter()
            .map(device_row)
            .collect()
    }

    pub(super) async fn revocations(&self, now_ms: u64) -> Result<Vec<Revocation>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT kind, value, issued_before_ms, expires_ms, created_ms, created_by
                 FROM revocations WHERE expires_ms > $1 ORDER BY created_ms, kind, value",
            )
            .await?;
        client
            .query(&stmt, &[&(now_ms as i64)])
            .await?
            .into_iter()
            .map(|r| {
                Revocation::from_row(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
            })
            .collect()
    }

    pub(super) async fn delivery(
        &self,
        id: &str,
        device: &str,
    ) -> Result<Option<(i64, i32, DeliveryState)>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT n.seq, n.severity, d.state FROM notifications n
                 JOIN deliveries d ON d.notification = n.seq
                 WHERE n.id = $1 AND d.device_id = $2",
            )
            .await?;
        match client.query_opt(&stmt, &[&id, &device]).await? {
            Some(r) => Ok(Some((r.get(0), r.get(1), state(r.get(2))?))),
            None => Ok(None),
        }
    }
}

/// The TLS client of the connections: the CA in `ca` (PEM), or the system's
/// trusted roots. No ALPN: PostgreSQL 17 refuses a protocol other than its own.
fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, StoreError> {
    let tls = |e: String| StoreError::Tls(e);
    let roots = crate::tls::roots(ca).map_err(|e| match e {
        crate::tls::TlsError::NoRoots => {
            tls("no trusted roots on this system: give store.ca".into())
        }
        e => tls(e.to_string()),
    })?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A driver error with its causes ("db error" alone says nothing: the server's
/// message is its source), without anything of the URL.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A pool error, without anything of the URL but what the driver says.
fn pool_error(e: deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => describe(&e),
        deadpool_postgres::PoolError::Timeout(_) => {
            format!("no connection within {} s", TIMEOUT.as_secs())
        }
        other => other.to_string(),
    }
}

pub(super) fn state(v: i32) -> Result<DeliveryState, StoreError> {
    DeliveryState::from_i64(i64::from(v))
        .ok_or_else(|| StoreError::Invalid(format!("delivery state {v}")))
}

fn campaign(r: &Row) -> Result<CampaignRow, StoreError> {
    Ok(CampaignRow {
        seq: r.try_get(0)?,
        notification: NewNotification {
            id: r.try_get(1)?,
            severity: r.try_get(2)?,
            title: r.try_get(3)?,
            body: r.try_get(4)?,
            payload: r.try_get(5)?,
            targets_json: r.try_get(6)?,
            created_by: r.try_get(7)?,
            created_ms: r.try_get::<_, i64>(8)? as u64,
            expires_ms: r.try_get::<_, i64>(9)? as u64,
        },
        completed_ms: r.try_get::<_, Option<i64>>(10)?.map(|v| v as u64),
    })
}

fn device_row(r: &Row) -> Result<DeviceRow, StoreError> {
    Ok(DeviceRow {
        id: r.try_get(0)?,
        tags: serde_json::from_str(r.try_get(1)?)?,
        registered_ms: r.try_get::<_, i64>(2)? as u64,
        last_seen_ms: r.try_get::<_, Option<i64>>(3)?.map(|v| v as u64),
    })
}
