//! `telehub tokens revoke|list`: revoking tokens on a running hub (see
//! `http::revocations`).

use std::{path::PathBuf, time::SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use telehub::{http::revocations::RevokeBody, store::Revocation};

use super::notify::ApiArgs;

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Revoke one token (by --jti or --token-file) or every token of a subject.
    Revoke(RevokeArgs),
    /// The revocations in force.
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The token's id (its `jti` claim).
    #[arg(long, conflicts_with_all = ["token_file", "subject"], required_unless_present_any = ["token_file", "subject"])]
    jti: Option<String>,
    /// A file holding the token itself: the hub reads its `jti` and expiry.
    #[arg(long, conflicts_with = "subject")]
    token_file: Option<PathBuf>,
    /// Every token of this subject (device id or user name) issued until now, or
    /// until --issued-before.
    #[arg(long)]
    subject: Option<String>,
    /// With --subject: an RFC 3339 instant, e.g. 2026-12-06T12:00:00Z.
    #[arg(long, requires = "subject", value_parser = humantime::parse_rfc3339_weak)]
    issued_before: Option<SystemTime>,
    /// Forget the revocation after this long (when what it covers has expired);
    /// default: the token's expiry, else the hub's auth.max_token_lifetime.
    #[arg(long, value_parser = humantime::parse_duration)]
    keep_for: Option<std::time::Duration>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    api: ApiArgs,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs a `tokens` subcommand; returns the process exit code.
pub async fn tokens(cmd: TokensCommand) -> anyhow::Result<i32> {
    match cmd {
        TokensCommand::Revoke(a) => {
            let token = match &a.token_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading the token file {}", f.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            let body = RevokeBody {
                jti: a.jti,
                token,
                subject: a.subject,
                issued_before_ms: a.issued_before.map(ms),
                expires_ms: a.keep_for.map(|d| ms(SystemTime::now() + d)),
            };
            let r = a.api.api()?.revoke(&body).await?;
            if a.api.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("revoked: {}", describe(&r));
            }
            Ok(0)
        }
        TokensCommand::List(a) => {
            let list = a.api.api()?.revocations().await?;
            if a.api.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.revocations.is_empty() {
                println!("no revocations in force");
            } else {
                for r in &list.revocations {
                    println!("{}", describe(r));
                }
            }
            Ok(0)
        }
    }
}

/// One line: what is covered, until when, by whom.
fn describe(r: &Revocation) -> String {
    let at = |ms: u64| {
        humantime::format_rfc3339_seconds(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
    };
    let what = match r.kind {
        telehub::store::RevocationKind::Token => format!("token jti={}", r.value),
        telehub::store::RevocationKind::Subject => format!(
            "every token of subject {} issued until {}",
            r.value,
            at(r.issued_before_ms)
        ),
    };
    format!(
        "{what} (by {} at {}, kept until {})",
        r.created_by,
        at(r.created_ms),
        at(r.expires_ms)
    )
}
