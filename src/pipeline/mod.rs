//! The pipeline: pull → stage; claim → map → push → record.
//!
//! This is the one place that decides *when* a delivery is tried again and how hard a target
//! is pushed:
//! - [`pull`]: a source's new records staged with one delivery per matching target, under
//!   the source's lease (the step `sync` and the daemon share);
//! - [`engine`]: continuous pushing per target — up to its concurrency of requests in flight
//!   at all times, claiming ahead, leases renewed under slow requests, one log line per failed
//!   request;
//! - [`health`]: the target's circuit — an outage of the target pauses it as a whole and
//!   probes it with backoff, and charges no lead;
//! - [`concurrency`]: fixed or adaptive (AIMD) requests in flight;
//! - [`decide`]: per delivery — exponential backoff with full jitter (backon's schedule),
//!   `Retry-After` honoured and clamped, a throttled target paused as a whole, an expired
//!   token retried once at once, a rejected record sent to the dead letters with the CRM's
//!   reason, a lead given up once it has failed on its own for longer than `max_age`;
//! - [`canary`]: marked test leads, for `send-test` and a target's own canary;
//! - [`clock`]: where time comes from, so tests drive it without sleeping.

pub mod canary;
pub mod clock;
pub mod concurrency;
pub mod decide;
pub mod engine;
pub mod health;
pub mod pull;

use chrono::{DateTime, Utc};
use leadsync_core::{idempotency_key, Connector, FieldLimit, KeyScope, Mapping};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use clock::{Clock, FixedClock, SystemClock};
pub use decide::backoff_delay;
pub use engine::{HealthSink, TargetEngine};
pub use pull::{pull_leased, pull_source, PullOutcome, SourceLease};

use crate::config::{RetryPolicy, TargetFilter};
use crate::ledger::{Ledger, LedgerError, PlannedDelivery};
use crate::sources::SourceError;

/// Records read from a source per ledger transaction.
pub const STAGE_BATCH: usize = 500;

/// A target ready to push: its connector and everything the pipeline needs to drive it.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub connector: Arc<dyn Connector>,
    pub mapping: Mapping,
    pub field_limits: Vec<FieldLimit>,
    pub filter: TargetFilter,
    pub key_scope: KeyScope,
    pub key_namespace: String,
    pub batch_size: usize,
    /// Requests in flight at most: `limits.concurrency`, or `limits.max_concurrency` when
    /// adaptive.
    pub concurrency: usize,
    /// `limits.concurrency = "adaptive"`: find the target's knee (AIMD) up to `concurrency`.
    pub adaptive: bool,
    /// Requests that may be set aside as stalled at once, beyond `concurrency`
    /// (`limits.max_stalled`; 0 keeps `concurrency` a hard cap).
    pub max_stalled: usize,
    pub max_age: Duration,
    pub lease: Duration,
    pub retry: RetryPolicy,
    /// New leads wait for the end of this interval and go out together (see
    /// [`digest_due`]); `None`: at once.
    pub digest: Option<Duration>,
}

impl Target {
    /// The delivery this target owes `lead`, if its filter admits it.
    pub fn plan(&self, lead: &leadsync_core::Lead) -> Option<PlannedDelivery> {
        match self.filter.admits(lead) {
            Ok(()) => Some(PlannedDelivery {
                not_before: self.digest.map(|d| digest_due(Utc::now(), d)),
                ..self.delivery_of(lead)
            }),
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
            not_before: None,
        }
    }
}

/// When a lead staged at `now` is due on a target with a `digest` interval: the end of the
/// interval `now` falls in, intervals counted from the Unix epoch, so every lead of one
/// interval comes due at the same moment and goes out in one batch (one message).
pub fn digest_due(now: DateTime<Utc>, digest: Duration) -> DateTime<Utc> {
    let every = (digest.as_millis() as i64).max(1);
    let next = (now.timestamp_millis().div_euclid(every) + 1) * every;
    DateTime::from_timestamp_millis(next).unwrap_or(now)
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Source(#[from] SourceError),
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
    /// Requests answered (or timed out), and the time they held in all, from mapping to
    /// answer: their mean is the round trip the concurrency works against.
    pub requests: u64,
    pub request_time: std::time::Duration,
}

impl PushReport {
    pub fn add(&mut self, other: PushReport) {
        self.attempted += other.attempted;
        self.delivered += other.delivered;
        self.retrying += other.retrying;
        self.dead += other.dead;
        self.paused_until = self.paused_until.max(other.paused_until);
        self.requests += other.requests;
        self.request_time += other.request_time;
    }
}

/// One push round for a target at `now`: claim what is due, push it in up to `concurrency`
/// batches at once, record every outcome (a fresh engine each time: no circuit or adaptive
/// state carries over). `send-test` and tests that drive time use it.
pub async fn push_round(
    ledger: &Arc<dyn Ledger>,
    target: &Arc<Target>,
    owner: &str,
    now: DateTime<Utc>,
) -> Result<PushReport, PipelineError> {
    TargetEngine::new(Arc::clone(target), Arc::clone(ledger), owner)
        .with_clock(Arc::new(FixedClock(now)))
        .push_due(&CancellationToken::new(), false)
        .await
}

/// Push a target until nothing is due, waiting for retries, pauses and probes that come due
/// before `wait_until` (for `sync --once`). Returns the totals.
pub async fn drain_target(
    ledger: &Arc<dyn Ledger>,
    target: &Arc<Target>,
    owner: &str,
    wait_until: DateTime<Utc>,
) -> Result<PushReport, PipelineError> {
    TargetEngine::new(Arc::clone(target), Arc::clone(ledger), owner)
        .drain(&CancellationToken::new(), Some(wait_until))
        .await
}
