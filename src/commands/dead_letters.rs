//! `dead-letters list|retry`: the deliveries that failed for good, with the CRM's reason, and
//! putting them back in the queue once the cause is fixed.

use anyhow::Context;
use chrono::Utc;

use super::EXIT_OK;
use crate::config::Settings;
use crate::ledger::{DeadLetterFilter, OpenMode};
use crate::wiring::{self, WiringError};

pub(super) async fn list(
    settings: &Settings,
    target: Option<&str>,
    json: bool,
) -> Result<u8, WiringError> {
    let ledger = wiring::open_ledger(settings, OpenMode::Shared).await?;
    let dead = ledger
        .dead_letters(target)
        .await
        .context("reading dead letters")?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&dead).context("encoding")?
        );
        return Ok(EXIT_OK);
    }
    if dead.is_empty() {
        println!("no dead letters");
    }
    for d in dead {
        println!(
            "{} {} attempts={} code={} reason={}",
            d.target,
            d.lead_id,
            d.attempts,
            d.error_code.as_deref().unwrap_or("-"),
            d.error.as_deref().unwrap_or("-")
        );
    }
    Ok(EXIT_OK)
}

pub(super) async fn retry(
    settings: &Settings,
    target: Option<String>,
    lead: Option<String>,
) -> Result<u8, WiringError> {
    let ledger = wiring::open_ledger(settings, OpenMode::Shared).await?;
    let n = ledger
        .retry_dead(
            &DeadLetterFilter {
                target,
                lead_id: lead,
            },
            Utc::now(),
        )
        .await
        .context("retrying dead letters")?;
    println!("{n} dead deliveries put back in the queue");
    Ok(EXIT_OK)
}
