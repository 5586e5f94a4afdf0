//! `replay`, `send-test` and `forget`: the operator's commands that change what the ledger
//! holds for a target or a person. `send-test` stages its lead through the target's own
//! planning and pushes it with the pipeline, like any lead.

use anyhow::Context;
use chrono::Utc;
use std::time::Duration;

use super::{EXIT_DEAD, EXIT_OK, EXIT_TEMPFAIL};
use crate::config::Settings;
use crate::ledger::OpenMode;
use crate::pipeline;
use crate::wiring::{self, Loaded, WiringError};

/// `2026-11-01` (UTC midnight) or an RFC 3339 time.
fn parse_since(since: &str) -> Result<chrono::DateTime<Utc>, WiringError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(since.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(since.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            WiringError::Runtime(anyhow::anyhow!(
                "--since {since:?}: expected a date (2026-11-01) or an RFC 3339 time"
            ))
        })
}

pub(super) async fn replay(
    settings: &Settings,
    target: &str,
    since: &str,
) -> Result<u8, WiringError> {
    let enabled = settings.targets.iter().filter(|t| t.enabled);
    wiring::find_target(target, enabled.map(|t| t.name.as_str()))?;
    let since = parse_since(since)?;
    let ledger = wiring::open_ledger(settings, OpenMode::Shared).await?;
    let n = ledger
        .replay(target, since, Utc::now())
        .await
        .context("replaying deliveries")?;
    println!(
        "{n} delivered lead(s) of {} staged since {} queued again; the CRM writes are \
         idempotent, so existing records are updated, not duplicated",
        target,
        since.to_rfc3339()
    );
    Ok(EXIT_OK)
}

pub(super) async fn send_test(
    loaded: &Loaded,
    target: &str,
    wait: Duration,
) -> Result<u8, WiringError> {
    use crate::ledger::{DeliveryState, StageBatch, StagedLead};
    let t = loaded.target(target)?;
    let now = Utc::now();
    let stamp = now.format("%Y%m%dT%H%M%S%.3fZ");
    let lead = pipeline::canary::marked_test_lead(&format!("send-test:{stamp}"), "send-test", now)
        .map_err(|e| anyhow::anyhow!("building the test lead: {e}"))?;
    let lead_id = lead.id.clone();
    // Works beside a running daemon: claims are transactional, so either process may
    // deliver it, never both.
    let ledger = wiring::open_ledger(&loaded.settings, OpenMode::SharedOrCreate).await?;
    ledger
        .stage(StageBatch {
            source: "send-test".into(),
            leads: vec![StagedLead {
                deliveries: vec![t.delivery_of(&lead)],
                lead,
            }],
            ..Default::default()
        })
        .await
        .context("staging the test lead")?;
    println!("test lead {lead_id} staged for {}", t.name);
    let deadline = tokio::time::Instant::now() + wait;
    let owner = crate::identity::current().id.clone();
    loop {
        pipeline::push_round(&ledger, t, &owner, Utc::now())
            .await
            .context("pushing")?;
        let (_, _, deliveries) = ledger
            .trace(&lead_id)
            .await
            .context("reading the ledger")?
            .ok_or_else(|| anyhow::anyhow!("the test lead vanished from the ledger"))?;
        let Some(d) = deliveries.into_iter().next() else {
            return Err(WiringError::Runtime(anyhow::anyhow!(
                "the test lead has no delivery"
            )));
        };
        match d.state {
            DeliveryState::Delivered => {
                println!(
                    "delivered to {} after {} attempt(s){}",
                    t.name,
                    d.attempts,
                    d.crm_ref
                        .map(|r| format!(": CRM record {r}"))
                        .unwrap_or_default()
                );
                return Ok(EXIT_OK);
            }
            DeliveryState::Dead => {
                println!(
                    "FAILED: {} refused the test lead: {} {}",
                    t.name,
                    d.error_code.as_deref().unwrap_or("-"),
                    d.error.as_deref().unwrap_or("")
                );
                return Ok(EXIT_DEAD);
            }
            DeliveryState::Pending if tokio::time::Instant::now() >= deadline => {
                println!(
                    "FAILED: not delivered within {}; last error {}: {}",
                    humantime::format_duration(wait),
                    d.error_code.as_deref().unwrap_or("-"),
                    d.error.as_deref().unwrap_or("-")
                );
                return Ok(EXIT_TEMPFAIL);
            }
            DeliveryState::Pending => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

pub(super) async fn forget(settings: &Settings, email: &str) -> Result<u8, WiringError> {
    let ledger = wiring::open_ledger(settings, OpenMode::Shared).await?;
    let erased = ledger
        .forget_email(email)
        .await
        .context("erasing personal data")?;
    if erased.is_empty() {
        println!("no lead in the ledger carries that e-mail address");
    } else {
        println!(
            "erased the personal data (names, e-mail, phone, company, title, description, \
             unknown columns, CRM error texts) of {} lead(s):",
            erased.len()
        );
        for id in &erased {
            println!("  {id}");
        }
        println!(
            "the CRMs keep their own copies: erase the person there too (e.g. by the ids \
             `leadsync trace <lead>` shows)"
        );
    }
    Ok(EXIT_OK)
}
