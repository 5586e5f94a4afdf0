//! The pipeline: pull → stage; claim → map → push → record.
//!
//! This is the one place that decides *when* a delivery is tried again: exponential backoff
//! with full jitter (the schedule comes from backon), `Retry-After` honoured and clamped, a
//! throttled target paused as a whole, an expired token retried once at once, a rejected
//! record sent to the dead letters with the CRM's reason, and a lead given up once it is older
//! than the target's `max_age`. It also bounds how many requests run at once per target.
//!
//! Every function takes `now` from its caller, so tests drive time without sleeping.

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use leadsync_core::{
    idempotency_key, Connector, DeliveryFailure, DeliveryOutcome, FailureClass, FieldLimit,
    KeyScope, Mapping, OutboundRecord,
};
use rand::Rng;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{RetryPolicy, TargetFilter};
use crate::ledger::{
    ClaimedDelivery, Ledger, LedgerError, PlannedDelivery, RecordedOutcome, StageBatch,
    StageReport, StagedLead,
};
use crate::metrics as m;
use crate::sources::{Source, SourceError};

/// Records read from a source per ledger transaction.
pub const STAGE_BATCH: usize = 500;

/// A target ready to push: its connector and everything the pipeline needs to drive it.
pub struct Target {
    pub name: String,
    pub connector: Arc<dyn Connector>,
    pub mapping: Mapping,
    pub field_limits: Vec<FieldLimit>,
    pub filter: TargetFilter,
    pub key_scope: KeyScope,
    pub key_namespace: String,
    pub batch_size: usize,
    pub concurrency: usize,
    pub max_age: Duration,
    pub lease: Duration,
    pub retry: RetryPolicy,
}

impl Target {
    /// The delivery this target owes `lead`, if its filter admits it.
    pub fn plan(&self, lead: &leadsync_core::Lead) -> Option<PlannedDelivery> {
        match self.filter.admits(lead) {
            Ok(()) => Some(self.delivery_of(lead)),
            Err(why) => {
                tracing::debug!(target = %self.name, lead = %lead.id, reason = why, "lead not for this target");
                None
            }
        }
    }
}

impl Target {
    /// The delivery of `lead` to this target, whatever its filter says: `send-test` sends its
    /// marked test lead on purpose.
    pub fn delivery_of(&self, lead: &leadsync_core::Lead) -> PlannedDelivery {
        PlannedDelivery {
            target: self.name.clone(),
            idempotency_key: idempotency_key(&self.key_namespace, self.key_scope, lead),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// Pull everything new from one source and stage it for every matching target.
pub async fn pull_source(
    ledger: &dyn Ledger,
    source: &mut dyn Source,
    targets: &[Arc<Target>],
) -> Result<StageReport, PipelineError> {
    let name = source.name().to_string();
    let result = pull_batches(ledger, source, targets, &name).await;
    // The source's health for `status`: its last error until a pull succeeds.
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

/// What one push round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PushReport {
    pub attempted: u64,
    pub delivered: u64,
    pub retrying: u64,
    pub dead: u64,
    /// The target was (or became) paused.
    pub paused_until: Option<DateTime<Utc>>,
}

impl PushReport {
    fn add(&mut self, other: PushReport) {
        self.attempted += other.attempted;
        self.delivered += other.delivered;
        self.retrying += other.retrying;
        self.dead += other.dead;
        self.paused_until = self.paused_until.max(other.paused_until);
    }
}

/// The delay before attempt `attempt + 1` after `attempt` failures: backon's exponential
/// schedule (min_delay × 2^(attempt-1), capped at max_delay), with full jitter
/// (uniform in [0, schedule]) so that a crowd of failed leads does not retry in lockstep.
pub fn backoff_delay(policy: &RetryPolicy, attempt: u32) -> Duration {
    let ceiling = backon::ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(attempt.saturating_sub(1).min(64) as usize)
        .unwrap_or(policy.max_delay);
    let millis = ceiling.as_millis().min(u64::MAX as u128) as u64;
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// `now + d`, rounded up to the millisecond the ledger stores, so that a stored pause or
/// retry time is never earlier than what the CRM asked for.
fn chrono_after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    let t = now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(365));
    let ms =
        t.timestamp_millis() + i64::from(!t.timestamp_subsec_nanos().is_multiple_of(1_000_000));
    DateTime::from_timestamp_millis(ms).unwrap_or(t)
}

/// Decide what becomes of one failed delivery.
fn decide_failure(
    target: &Target,
    d: &ClaimedDelivery,
    failure: &DeliveryFailure,
    now: DateTime<Utc>,
) -> (RecordedOutcome, Option<DateTime<Utc>>) {
    let attempts = d.attempts + 1;
    let code = Some(failure.code.clone());
    let failure = &DeliveryFailure {
        message: d.lead.scrub_personal_values(&failure.message),
        ..failure.clone()
    };
    if failure.class == FailureClass::Rejected {
        return (
            RecordedOutcome::Dead {
                delivery_id: d.delivery_id,
                error_code: code,
                error: failure.message.clone(),
            },
            None,
        );
    }
    let mut delay = backoff_delay(&target.retry, attempts);
    let mut pause = None;
    if failure.class == FailureClass::Throttled {
        let asked = failure
            .retry_after
            .unwrap_or(Duration::ZERO)
            .min(target.retry.max_retry_after);
        delay = delay.max(asked);
        pause = Some(chrono_after(now, delay));
    }
    let next = chrono_after(now, delay);
    let age_limit = chrono_after(d.age_from, target.max_age);
    if next > age_limit {
        return (
            RecordedOutcome::Dead {
                delivery_id: d.delivery_id,
                error_code: code,
                error: format!(
                    "gave up after {attempts} attempt(s): older than max_age {}; last error: {}",
                    humantime::format_duration(target.max_age),
                    failure.message
                ),
            },
            pause,
        );
    }
    (
        RecordedOutcome::Retry {
            delivery_id: d.delivery_id,
            next_attempt_at: next,
            error_code: code,
            error: failure.message.clone(),
        },
        pause,
    )
}

fn outbound(target: &Target, d: &ClaimedDelivery) -> OutboundRecord {
    let (fields, truncations) =
        target
            .mapping
            .apply(&d.lead, &d.idempotency_key, &target.field_limits);
    for t in truncations {
        tracing::warn!(
            target = %target.name,
            lead = %d.lead.id,
            field = %t.field,
            original_chars = t.original_chars,
            max_chars = t.max_chars,
            "value truncated to the field's limit"
        );
    }
    OutboundRecord {
        lead_id: d.lead.id.clone(),
        idempotency_key: d.idempotency_key.clone(),
        attempt: d.attempts + 1,
        lead: Arc::new(d.lead.clone()),
        fields,
    }
}

/// Push one batch, retrying at once (once) the records whose token had expired.
async fn push_batch(target: &Target, records: Vec<OutboundRecord>) -> Vec<DeliveryOutcome> {
    let mut outcomes = target.connector.push(&records).await;
    if outcomes.len() != records.len() {
        // A connector bug must not lose or mis-attribute leads: treat the batch as failed.
        tracing::error!(target = %target.name, sent = records.len(), answered = outcomes.len(), "connector returned the wrong number of outcomes");
        return vec![
            DeliveryOutcome::Failed(DeliveryFailure::transient(
                "connector_outcome_mismatch",
                "connector returned the wrong number of outcomes",
            ));
            records.len()
        ];
    }
    let expired: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, DeliveryOutcome::Failed(f) if f.class == FailureClass::AuthExpired))
        .map(|(i, _)| i)
        .collect();
    if !expired.is_empty() {
        tracing::info!(target = %target.name, records = expired.len(), "credentials expired; retrying once at once");
        let again: Vec<OutboundRecord> = expired.iter().map(|i| records[*i].clone()).collect();
        let second = target.connector.push(&again).await;
        for (slot, outcome) in expired.iter().zip(second) {
            outcomes[*slot] = match outcome {
                DeliveryOutcome::Failed(mut f) if f.class == FailureClass::AuthExpired => {
                    // Refreshed and still refused: back off like any transient failure.
                    f.class = FailureClass::Transient;
                    DeliveryOutcome::Failed(f)
                }
                other => other,
            };
        }
    }
    outcomes
}

/// One push round for a target: claim what is due, push it in up to `concurrency` batches
/// at once, record every outcome.
pub async fn push_round(
    ledger: &dyn Ledger,
    target: &Target,
    owner: &str,
    now: DateTime<Utc>,
) -> Result<PushReport, PipelineError> {
    // Measured from the start: `now` + elapsed must not fall short of the CRM's answer time,
    // or a pause for its Retry-After would end early by the time the claim took.
    let started = std::time::Instant::now();
    if let Some(until) = ledger.paused_until(&target.name).await? {
        if until > now {
            return Ok(PushReport {
                paused_until: Some(until),
                ..PushReport::default()
            });
        }
    }
    let batches = claim_batches(ledger, target, owner, now).await?;
    if batches.is_empty() {
        return Ok(PushReport::default());
    }
    let pushes = batches.into_iter().map(|batch| async move {
        let records: Vec<OutboundRecord> = batch.iter().map(|d| outbound(target, d)).collect();
        let outcomes = push_batch(target, records).await;
        (batch, outcomes)
    });
    let results = futures::future::join_all(pushes).await;
    // A CRM's Retry-After counts from its answer, not from before our request: move `now` on
    // by the time the push took (a test-driven `now` stays consistent).
    let answered = chrono_after(now, started.elapsed());
    record_outcomes(ledger, target, owner, results, answered).await
}

/// Claim up to `batch_size × concurrency` due deliveries under a lease, cut into batches.
async fn claim_batches(
    ledger: &dyn Ledger,
    target: &Target,
    owner: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Vec<ClaimedDelivery>>, PipelineError> {
    let limit = (target.batch_size * target.concurrency).min(u32::MAX as usize) as u32;
    let claimed = ledger
        .claim(&target.name, now, limit, target.lease, owner)
        .await?;
    if !claimed.is_empty() {
        tracing::trace!(target = %target.name, claimed = claimed.len(), batch_size = target.batch_size, "pushing claimed deliveries");
    }
    // Move the claimed deliveries into their batches (no copy of each lead).
    let mut batches: Vec<Vec<ClaimedDelivery>> = Vec::new();
    let mut rest = claimed.into_iter().peekable();
    while rest.peek().is_some() {
        batches.push(rest.by_ref().take(target.batch_size.max(1)).collect());
    }
    Ok(batches)
}

/// Decide, log, count and store the outcome of every pushed delivery; pause the target if
/// the CRM throttled it.
async fn record_outcomes(
    ledger: &dyn Ledger,
    target: &Target,
    owner: &str,
    results: Vec<(Vec<ClaimedDelivery>, Vec<DeliveryOutcome>)>,
    answered: DateTime<Utc>,
) -> Result<PushReport, PipelineError> {
    let mut report = PushReport::default();
    let mut recorded = Vec::new();
    let mut pause: Option<DateTime<Utc>> = None;
    for (batch, outcomes) in results {
        for (d, outcome) in batch.iter().zip(outcomes) {
            let (rec, p) = decide_outcome(target, d, outcome, answered, &mut report);
            pause = pause.max(p);
            recorded.push(rec);
        }
    }
    if let Some(until) = pause {
        tracing::warn!(target = %target.name, paused_until = %until.to_rfc3339(), "target throttled; paused as a whole");
        ledger
            .pause_target(&target.name, until, "throttled by the CRM")
            .await?;
        report.paused_until = Some(until);
    }
    ledger.record(&recorded, owner).await?;
    if let Some(note) = target.connector.status_note() {
        ledger
            .set_target_note(&target.name, &note, answered)
            .await?;
    }
    Ok(report)
}

/// What to store for one delivery's outcome (and a pause, if it was throttled), with its
/// log line, metrics and count in `report`.
fn decide_outcome(
    target: &Target,
    d: &ClaimedDelivery,
    outcome: DeliveryOutcome,
    answered: DateTime<Utc>,
    report: &mut PushReport,
) -> (RecordedOutcome, Option<DateTime<Utc>>) {
    report.attempted += 1;
    let attempt = d.attempts + 1;
    let name = target.name.clone();
    let f = match outcome {
        DeliveryOutcome::Delivered { crm_ref, created } => {
            report.delivered += 1;
            metrics::counter!(m::DELIVERIES, "target" => name.clone(), "outcome" => "delivered")
                .increment(1);
            let latency = (answered - d.staged_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!(m::DELIVERY_LATENCY, "target" => name).record(latency);
            tracing::info!(target = %target.name, lead = %d.lead.id, attempt, outcome = "delivered", created = created, "delivered");
            let rec = RecordedOutcome::Delivered {
                delivery_id: d.delivery_id,
                crm_ref,
            };
            return (rec, None);
        }
        DeliveryOutcome::Failed(f) => f,
    };
    let (rec, pause) = decide_failure(target, d, &f, answered);
    match &rec {
        RecordedOutcome::Dead { .. } => {
            report.dead += 1;
            metrics::counter!(m::DELIVERIES, "target" => name, "outcome" => "dead").increment(1);
            tracing::error!(target = %target.name, lead = %d.lead.id, attempt, outcome = "dead", class = f.class.as_str(), error_code = %f.code, "delivery failed for good; see dead-letters list");
        }
        RecordedOutcome::Retry {
            next_attempt_at, ..
        } => {
            report.retrying += 1;
            metrics::counter!(m::DELIVERIES, "target" => name.clone(), "outcome" => "retry")
                .increment(1);
            metrics::counter!(m::RETRIES, "target" => name, "class" => f.class.as_str())
                .increment(1);
            tracing::warn!(target = %target.name, lead = %d.lead.id, attempt, outcome = "retry", class = f.class.as_str(), error_code = %f.code, next_attempt_at = %next_attempt_at.to_rfc3339(), "delivery failed; will retry");
        }
        _ => {}
    }
    (rec, pause)
}

/// Push a target until nothing is due, waiting for retries that come due before
/// `wait_until` (for `sync --once`). Returns the totals.
pub async fn drain_target(
    ledger: &dyn Ledger,
    target: &Target,
    owner: &str,
    wait_until: DateTime<Utc>,
) -> Result<PushReport, PipelineError> {
    let mut total = PushReport::default();
    loop {
        let now = Utc::now();
        let round = push_round(ledger, target, owner, now).await?;
        let did_work = round.attempted > 0;
        total.add(round);
        if did_work {
            continue;
        }
        let paused = ledger
            .paused_until(&target.name)
            .await?
            .filter(|p| *p > now);
        let next = match (ledger.next_due(&target.name).await?, paused) {
            (None, _) => break,
            (Some(due), Some(p)) => due.max(p),
            (Some(due), None) => due,
        };
        if next > wait_until || Utc::now() > wait_until {
            break;
        }
        let sleep = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(sleep.max(Duration::from_millis(10))).await;
    }
    Ok(total)
}
