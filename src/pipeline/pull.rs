//! Pulling: read what is new from a source and stage it, with one delivery per target whose
//! filter admits the lead, in one ledger transaction per batch — under the source's lease, so
//! that on a shared ledger one instance pulls a source at a time. `sync` and the daemon share
//! [`pull_leased`].

use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

use super::{PipelineError, Target, STAGE_BATCH};
use crate::ledger::{Ledger, StageBatch, StageReport, StagedLead};
use crate::metrics as m;
use crate::sources::Source;

/// Pull everything new from one source and stage it for every matching target.
pub async fn pull_source(
    ledger: &dyn Ledger,
    source: &mut dyn Source,
    targets: &[Arc<Target>],
) -> Result<StageReport, PipelineError> {
    let name = source.name().to_string();
    let result = pull_batches(ledger, source, targets, &name).await;
    // The source's health for `status` and `/metrics`: its last error until a pull succeeds.
    let label = [("source", name.clone())];
    match &result {
        Ok(_) => metrics::gauge!(m::SOURCE_LAST_SUCCESS, &label)
            .set(Utc::now().timestamp_millis() as f64 / 1000.0),
        Err(_) => metrics::counter!(m::SOURCE_PULL_FAILURES, &label).increment(1),
    }
    let note = match &result {
        Ok(_) => None,
        Err(PipelineError::Source(e)) => Some(e.to_string()),
        Err(PipelineError::Ledger(_)) => return result,
    };
    ledger
        .set_source_error(&name, note.as_deref(), Utc::now())
        .await?;
    result
}

async fn pull_batches(
    ledger: &dyn Ledger,
    source: &mut dyn Source,
    targets: &[Arc<Target>],
    name: &str,
) -> Result<StageReport, PipelineError> {
    let mut total = StageReport::default();
    let name = name.to_string();
    loop {
        let cursor = ledger.cursor(&name).await?;
        let Some(batch) = source.next_batch(cursor.as_deref(), STAGE_BATCH).await? else {
            break;
        };
        let leads = batch
            .leads
            .iter()
            .map(|lead| StagedLead {
                deliveries: targets.iter().filter_map(|t| t.plan(lead)).collect(),
                lead: lead.clone(),
            })
            .collect();
        let report = ledger
            .stage(StageBatch {
                source: name.clone(),
                leads,
                quarantined: batch.quarantined.clone(),
                cursor: batch.cursor.clone(),
            })
            .await?;
        source.committed(&batch).await?;
        metrics::counter!(m::LEADS_STAGED, "source" => name.clone()).increment(report.staged);
        metrics::counter!(m::RECORDS_QUARANTINED, "source" => name.clone())
            .increment(report.quarantined);
        total.staged += report.staged;
        total.already_known += report.already_known;
        total.deliveries += report.deliveries;
        total.quarantined += report.quarantined;
    }
    if total.staged + total.quarantined > 0 {
        tracing::info!(
            source = %name,
            staged = total.staged,
            already_known = total.already_known,
            deliveries = total.deliveries,
            quarantined = total.quarantined,
            "pulled"
        );
    }
    Ok(total)
}

/// How a pull holds its source on a shared ledger: the lease is taken (or renewed) as
/// `owner` for `ttl`, renewed at a third of it while the pull runs, and given back at the end
/// when `release_after` (`sync`; the daemon keeps it from one tick to the next).
#[derive(Debug, Clone, Copy)]
pub struct SourceLease<'a> {
    pub owner: &'a str,
    pub ttl: Duration,
    pub release_after: bool,
}

/// What [`pull_leased`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullOutcome {
    Pulled(StageReport),
    /// Another instance holds the source's lease: nothing pulled.
    HeldElsewhere,
    /// The lease was lost mid-pull (this process stalled past it): the pull stopped; the
    /// ledger ignores leads it already has, so the new holder may redo it.
    LeaseLost,
}

/// The one pull step of `sync` and the daemon: take the source's lease, pull and stage under
/// it, and release it if asked. On a SQLite ledger the lease is always this process's.
pub async fn pull_leased(
    ledger: &dyn Ledger,
    source: &mut dyn Source,
    targets: &[Arc<Target>],
    lease: SourceLease<'_>,
) -> Result<PullOutcome, PipelineError> {
    let name = source.name().to_string();
    let hold = || ledger.acquire_source(&name, lease.owner, lease.ttl, Utc::now());
    if !hold().await? {
        tracing::debug!(source = %name, "another instance is pulling this source");
        return Ok(PullOutcome::HeldElsewhere);
    }
    let result = {
        let pull = pull_source(ledger, source, targets);
        tokio::pin!(pull);
        let mut renew = tokio::time::interval(lease.ttl.max(Duration::from_millis(30)) / 3);
        renew.tick().await;
        loop {
            tokio::select! {
                r = &mut pull => break r.map(PullOutcome::Pulled),
                _ = renew.tick() => {
                    if !hold().await.unwrap_or(false) {
                        tracing::warn!(source = %name, "source lease lost while pulling; stopping this pull");
                        break Ok(PullOutcome::LeaseLost);
                    }
                }
            }
        }
    };
    if lease.release_after {
        if let Err(e) = ledger.release_source(&name, lease.owner).await {
            tracing::warn!(source = %name, error = %e, "releasing the source lease failed");
        }
    }
    result
}
