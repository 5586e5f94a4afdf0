//! Deciding what becomes of one delivery after its push: delivered, retried at a time the
//! backoff (full jitter over backon's exponential schedule) and the CRM's `Retry-After` say,
//! given up past `max_age`, or dead with the CRM's reason; and turning a claimed delivery
//! into the record a connector writes (the target's mapping, truncated to the CRM's limits).
//!
//! Nothing here does I/O: times come from the caller, so tests drive them.

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use leadsync_core::{DeliveryFailure, DeliveryOutcome, FailureClass, OutboundRecord};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

use super::{PushReport, Target};
use crate::config::RetryPolicy;
use crate::ledger::{ClaimedDelivery, RecordedOutcome};
use crate::metrics as m;

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
pub(super) fn chrono_after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    let t = now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(365));
    let ms =
        t.timestamp_millis() + i64::from(!t.timestamp_subsec_nanos().is_multiple_of(1_000_000));
    DateTime::from_timestamp_millis(ms).unwrap_or(t)
}

/// Decide what becomes of one failed delivery.
pub(super) fn decide_failure(
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

pub(super) fn outbound(target: &Target, d: &ClaimedDelivery) -> OutboundRecord {
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
        lead: Arc::clone(&d.lead),
        fields,
    }
}

/// A target's metrics of delivered leads, looked up once per answered request: a lookup
/// per lead (its labels built and hashed) was a visible share of judging a 500-lead batch.
pub(super) struct DeliveredMetrics {
    count: metrics::Counter,
    latency: metrics::Histogram,
}

impl DeliveredMetrics {
    pub(super) fn of(target: &Target) -> Self {
        let name = target.name.clone();
        DeliveredMetrics {
            count: metrics::counter!(m::DELIVERIES, "target" => name.clone(), "outcome" => "delivered"),
            latency: metrics::histogram!(m::DELIVERY_LATENCY, "target" => name),
        }
    }
}

/// What to store for one delivery's outcome (and a pause, if it was throttled), with its
/// metrics and count in `report`. Per-lead lines are `debug`, except a delivery (`info`) and
/// a dead letter (`error`), which an operator follows lead by lead; the engine writes one line
/// per failed request.
pub(super) fn decide_outcome(
    target: &Target,
    d: &ClaimedDelivery,
    outcome: DeliveryOutcome,
    answered: DateTime<Utc>,
    (report, delivered): (&mut PushReport, &DeliveredMetrics),
) -> (RecordedOutcome, Option<DateTime<Utc>>) {
    report.attempted += 1;
    let attempt = d.attempts + 1;
    let f = match outcome {
        DeliveryOutcome::Delivered { crm_ref, created } => {
            report.delivered += 1;
            delivered.count.increment(1);
            let latency = (answered - d.staged_at).num_milliseconds().max(0) as f64 / 1000.0;
            delivered.latency.record(latency);
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
    let name = target.name.clone();
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
            tracing::debug!(target = %target.name, lead = %d.lead.id, attempt, outcome = "retry", class = f.class.as_str(), error_code = %f.code, next_attempt_at = %next_attempt_at.to_rfc3339(), "delivery failed; will retry");
        }
        _ => {}
    }
    (rec, pause)
}
