//! `status` (per target: pending, delivered, dead, oldest pending, and a note: down, paused,
//! last error, the connector's report; sources; instances with host, pid, version and start
//! time) and `trace <lead>` (one lead's path through every target). Read-only, beside a
//! running daemon.

use anyhow::Context;
use chrono::{SecondsFormat, Utc};
use std::time::Duration;

use super::{EXIT_OK, EXIT_RUNTIME};
use crate::config::Settings;
use crate::ledger::{InstanceStatus, OpenMode};
use crate::wiring::{self, WiringError};

fn age(since: Option<chrono::DateTime<Utc>>) -> String {
    match since {
        None => "-".into(),
        Some(t) => {
            let secs = (Utc::now() - t).num_seconds().max(0) as u64;
            humantime::format_duration(Duration::from_secs(secs)).to_string()
        }
    }
}

pub(super) async fn status(settings: &Settings, json: bool) -> Result<u8, WiringError> {
    let ledger = wiring::open_ledger(settings, OpenMode::Shared).await?;
    let status = ledger.status(Utc::now()).await.context("reading status")?;
    if json {
        let out = serde_json::to_string_pretty(&status).context("encoding status")?;
        println!("{out}");
        return Ok(EXIT_OK);
    }
    println!(
        "{:<24} {:>9} {:>9} {:>10} {:>7} {:>14}  paused until / last error",
        "TARGET", "PENDING", "RETRYING", "DELIVERED", "DEAD", "OLDEST PENDING"
    );
    for t in &status.targets {
        let mut note = match (&t.paused_until, &t.last_error_code) {
            (Some(p), _) => format!("paused until {}", p.to_rfc3339()),
            (None, Some(c)) => c.clone(),
            _ => String::new(),
        };
        // An outage comes first: it explains the pending count and the last error.
        if let Some(since) = t.down_since {
            let down = format!(
                "down since {}: {}",
                since.to_rfc3339(),
                t.down_reason.as_deref().unwrap_or("-")
            );
            note = if note.is_empty() {
                down
            } else {
                format!("{down}; {note}")
            };
        }
        if let Some(n) = &t.note {
            if !note.is_empty() {
                note.push_str("; ");
            }
            note.push_str(n);
        }
        println!(
            "{:<24} {:>9} {:>9} {:>10} {:>7} {:>14}  {}",
            t.target,
            t.pending,
            t.retrying,
            t.delivered,
            t.dead,
            age(t.oldest_pending_staged_at),
            note
        );
    }
    println!(
        "{} lead(s) in the ledger, {} quarantined record(s)",
        status.leads, status.quarantined
    );
    for s in status.sources.iter().filter(|s| s.last_error.is_some()) {
        println!(
            "source {}: last pull FAILED: {}",
            s.source,
            s.last_error.as_deref().unwrap_or_default()
        );
    }
    if !status.instances.is_empty() {
        print_instances(&status.instances);
    }
    Ok(EXIT_OK)
}

/// One line per instance: its id, host, pid, version, start, heartbeat and leases.
fn print_instances(instances: &[InstanceStatus]) {
    println!();
    println!(
        "{:<40} {:<20} {:>8} {:<10} {:<20} {:>5} {:>14} {:>7}  sources pulled",
        "INSTANCE", "HOST", "PID", "VERSION", "STARTED", "STATE", "LAST SEEN", "LEASED"
    );
    for i in instances {
        let state = match (i.alive, i.seen_at) {
            (true, _) => "up",
            (false, Some(_)) => "gone",
            (false, None) => "-",
        };
        let started = i.started_at.map_or_else(
            || "-".to_string(),
            |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
        let sources = if i.sources.is_empty() {
            "-".to_string()
        } else {
            i.sources.join(", ")
        };
        println!(
            "{:<40} {:<20} {:>8} {:<10} {:<20} {:>5} {:>14} {:>7}  {}",
            i.id,
            i.host,
            i.pid,
            i.version.as_deref().unwrap_or("-"),
            started,
            state,
            age(i.seen_at),
            i.delivery_leases,
            sources
        );
    }
}

pub(super) async fn trace(settings: &Settings, lead: &str, json: bool) -> Result<u8, WiringError> {
    let ledger = wiring::open_ledger(settings, OpenMode::Shared).await?;
    let Some((l, staged_at, deliveries)) =
        ledger.trace(lead).await.context("reading the ledger")?
    else {
        println!("lead {lead} is not in the ledger");
        return Ok(EXIT_RUNTIME);
    };
    if json {
        let v = serde_json::json!({
            "lead": l.id, "staged_at": staged_at, "is_test": l.is_test,
            "action": l.action.as_ref().map(|a| a.code()),
            "origin": l.origin().map(|o| o.as_str()),
            "offer": l.offer.raw, "deliveries": deliveries,
        });
        println!("{}", serde_json::to_string_pretty(&v).context("encoding")?);
        return Ok(EXIT_OK);
    }
    println!("lead {} staged {}", l.id, staged_at.to_rfc3339());
    if deliveries.is_empty() {
        println!("  no target's filter selected it");
    }
    for d in deliveries {
        println!(
            "  {}: {} after {} attempt(s){}{}",
            d.target,
            d.state.as_str(),
            d.attempts,
            d.crm_ref
                .map(|r| format!(", CRM record {r}"))
                .unwrap_or_default(),
            d.error_code
                .map(|c| format!(", last error {c}"))
                .unwrap_or_default()
        );
    }
    Ok(EXIT_OK)
}
