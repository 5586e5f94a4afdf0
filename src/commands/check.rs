//! `check [--connect]`: the configuration is valid (it was loaded to get here), and every
//! target and source can be built from it.
//!
//! Without `--connect` nothing is contacted, and a `{ credential = … }` secret that cannot be
//! read here (an operator's shell, not the service, whose credentials systemd loads at start)
//! is a note, not an error. With `--connect` every secret must resolve — from
//! `$CREDENTIALS_DIRECTORY`, else the service's `/run/credentials/leadsync.service` when it is
//! readable, and the output says which — and each source and target is asked whether its
//! credentials and settings work, and each `[alerts]` channel whether it reaches anyone
//! (an SMTP login, a webhook host answering; nothing is sent).

use super::{EXIT_OK, EXIT_RUNTIME};
use crate::alert_channel;
use crate::config::Settings;
use crate::pipeline::Target;
use crate::wiring::{self, WiringError};
use std::sync::Arc;

pub(super) async fn check(s: &Settings, connect: bool) -> Result<u8, WiringError> {
    let (targets, notes) = if connect {
        (wiring::build(s.clone())?.targets, Vec::new())
    } else {
        let built = wiring::build_for_check(s);
        if !built.errors.is_empty() {
            return Err(WiringError::Config(built.errors.join("\n")));
        }
        (built.targets, built.notes)
    };
    let inboxes = wiring::check_inboxes(s).map_err(WiringError::Config)?;
    println!("configuration {} is valid", s.config_path.display());
    println!("  ledger: {}", s.ledger.location.describe());
    for src in s.sources.iter().filter(|s| s.kind.is_pulled()) {
        println!("  source {}: schedule {}", src.name, src.schedule);
    }
    for line in inboxes {
        println!("  {line}");
    }
    if s.targets.iter().all(|t| !t.enabled) {
        println!("  warning: no enabled target: leads will be staged but go nowhere");
    }
    for n in &notes {
        println!("  note: {n}");
    }
    if connect {
        match leadsync_core::secret_ref::credentials_directory() {
            Some(d) => println!("  credentials: {d}"),
            None => println!("  credentials: none readable (no {{ credential = … }} secret used)"),
        }
    }
    let mut failed = connect && !check_sources(s).await?;
    failed |= !check_targets(&targets, connect).await;
    failed |= connect && !check_alert_channels(s).await;
    Ok(if failed { EXIT_RUNTIME } else { EXIT_OK })
}

/// `check --connect` for every source; false if one failed.
async fn check_sources(s: &Settings) -> Result<bool, WiringError> {
    let mut ok = true;
    for source in wiring::build_sources(s)?.iter_mut() {
        match source.check_connect().await {
            Ok(lines) => {
                println!("  source {}: ok", source.name());
                for v in lines {
                    println!("    - {v}");
                }
            }
            Err(e) => {
                ok = false;
                println!("  source {}: FAILED: {e}", source.name());
            }
        }
    }
    Ok(ok)
}

/// `check --connect` for each `[alerts]` channel: an alert that cannot be sent is found now,
/// not during the incident it was meant to tell of. False if one failed.
async fn check_alert_channels(s: &Settings) -> bool {
    let Some(alerts) = &s.alerts else {
        return true;
    };
    let mut ok = true;
    for c in &alerts.channels {
        let checked = match alert_channel::open(&c.kind, &c.connection, &s.config_dir) {
            Ok(channel) => alert_channel::check_connection(&channel).await,
            Err((key, message)) => Err(format!("alerts.channels.{}.{key}: {message}", c.name)),
        };
        match checked {
            Ok(line) => println!("  alert channel {} ({}): ok\n    - {line}", c.name, c.kind),
            Err(e) => {
                ok = false;
                println!("  alert channel {} ({}): FAILED: {e}", c.name, c.kind);
            }
        }
    }
    ok
}

/// Each target's own check (offline, or against the CRM with `connect`); false if one failed.
async fn check_targets(targets: &[Arc<Target>], connect: bool) -> bool {
    let mut ok = true;
    for t in targets {
        match t.connector.check(connect).await {
            Ok(r) => {
                println!("  target {} ({}): ok", t.name, t.connector.kind());
                if let Some(q) = t.mapping.qualification.as_deref().filter(|q| !q.is_empty()) {
                    let names: Vec<&str> = q.names().collect();
                    println!("    - qualifies each lead: {}", names.join(", "));
                }
                for v in r.verified {
                    println!("    - {v}");
                }
            }
            Err(e) => {
                ok = false;
                println!("  target {} ({}): FAILED: {e}", t.name, t.connector.kind());
            }
        }
    }
    ok
}
