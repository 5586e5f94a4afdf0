//! The ledger: the durable truth of what was staged and what happened to each delivery.
//!
//! It owns the database and nothing else touches it. The contract is [`Ledger`]; SQLite
//! ([`sqlite::SqliteLedger`]) is the embedded default for one process, and
//! [`postgres::PostgresLedger`] (`FOR UPDATE SKIP LOCKED` claims, source leases, heartbeats)
//! serves several instances sharing one database; [`open`] picks one from the settings. Both
//! pass the same scenarios (`contract.rs`), so the SQL stays portable (no SQLite-only upserts
//! beyond `ON CONFLICT ... DO NOTHING/UPDATE`).
//!
//! What the backends have in common is written once: `sql.rs` runs every statement whose text
//! is the same on both (generic over the sqlx database, in the pool or transaction the backend
//! passes), and `codec.rs` holds the conversions and the row types (`#[derive(sqlx::FromRow)]`)
//! that turn rows into the public types. `sqlite.rs` and `postgres.rs` keep only what differs:
//! opening, transactions and locking, claims, recording outcomes, schema handling, leases and
//! heartbeats, and the statements written in their own dialect.
//!
//! It must not decide *when* to retry: the pipeline computes `next_attempt_at` and the ledger
//! stores it.

mod codec;
#[cfg(test)]
mod contract;
mod memory_leases;
pub mod postgres;
mod sql;
pub mod sqlite;

pub use leadsync_core::QuarantinedRecord;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use leadsync_core::Lead;
use serde::Serialize;

use crate::config::{LedgerLocation, LedgerSettings};

/// Errors the ledger can return. The message never carries personal data.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("ledger migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("ledger at {path} is in use by another leadsync process (lock file {lock})")]
    Locked { path: String, lock: String },
    /// An operator command found no ledger: nothing has run yet, or the path is wrong.
    #[error("no ledger at {path} yet: run `leadsync sync --once` or `leadsync run` first")]
    Missing { path: String },
    #[error("ledger I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored lead {lead_id} could not be decoded: {reason}")]
    Corrupt { lead_id: String, reason: String },
    /// The ledger settings cannot be used (e.g. the PostgreSQL URL's secret is unreadable).
    #[error("ledger settings: {0}")]
    Settings(String),
}

/// One delivery a staged lead owes to one target.
#[derive(Debug, Clone)]
pub struct PlannedDelivery {
    pub target: String,
    pub idempotency_key: String,
    /// Not due before this (a digest target's interval end); `None`: due at once.
    pub not_before: Option<DateTime<Utc>>,
}

/// A lead as it enters the ledger, with the deliveries its matching targets need.
#[derive(Debug, Clone)]
pub struct StagedLead {
    pub lead: Lead,
    pub deliveries: Vec<PlannedDelivery>,
}

/// What one source pull hands the ledger, committed in one transaction.
#[derive(Debug, Clone, Default)]
pub struct StageBatch {
    pub source: String,
    pub leads: Vec<StagedLead>,
    pub quarantined: Vec<QuarantinedRecord>,
    /// The source's new cursor; `None` leaves the stored cursor unchanged.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StageReport {
    /// Leads that were new.
    pub staged: u64,
    /// Leads whose id the ledger already had (ignored).
    pub already_known: u64,
    /// Delivery rows created.
    pub deliveries: u64,
    pub quarantined: u64,
}

/// A delivery handed out under a lease by [`Ledger::claim`].
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery_id: i64,
    pub target: String,
    pub idempotency_key: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// When the retry-age clock started (staging, or an operator's retry).
    pub age_from: DateTime<Utc>,
    pub staged_at: DateTime<Utc>,
    /// Shared with the records mapped from it (a lead is not copied per request).
    pub lead: Arc<Lead>,
}

/// What the pipeline decided for one claimed delivery.
#[derive(Debug, Clone)]
pub enum RecordedOutcome {
    Delivered {
        delivery_id: i64,
        crm_ref: Option<String>,
    },
    /// Try again at `next_attempt_at`; counts as an attempt.
    Retry {
        delivery_id: i64,
        next_attempt_at: DateTime<Utc>,
        error_code: Option<String>,
        error: String,
    },
    /// Put back without counting an attempt (e.g. the target paused before it was sent).
    Release {
        delivery_id: i64,
        next_attempt_at: DateTime<Utc>,
    },
    Dead {
        delivery_id: i64,
        error_code: Option<String>,
        error: String,
    },
}

impl RecordedOutcome {
    /// The delivery this outcome is for.
    pub fn delivery_id(&self) -> i64 {
        match self {
            RecordedOutcome::Delivered { delivery_id, .. }
            | RecordedOutcome::Retry { delivery_id, .. }
            | RecordedOutcome::Release { delivery_id, .. }
            | RecordedOutcome::Dead { delivery_id, .. } => *delivery_id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
}

/// Per-target counts for `status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetStatus {
    pub target: String,
    pub pending: u64,
    /// Pending deliveries whose next attempt is in the future (backing off).
    pub retrying: u64,
    pub delivered: u64,
    pub dead: u64,
    pub oldest_pending_staged_at: Option<DateTime<Utc>>,
    pub paused_until: Option<DateTime<Utc>>,
    pub last_error_code: Option<String>,
    /// The connector's own one-line report (e.g. Salesforce's API quota), if it gave one.
    pub note: Option<String>,
    /// Since when the target has been down (see [`Ledger::set_target_down`]), if it is.
    pub down_since: Option<DateTime<Utc>>,
    /// Why it is down: a class or code, never personal data.
    pub down_reason: Option<String>,
}

/// A target found unusable (bad credentials, refused connections) until it comes back, for
/// `status` and for the push engine, which uses `since` to credit the outage back to the
/// leads' retry age ([`Ledger::extend_retry_age`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetDown {
    pub since: DateTime<Utc>,
    /// A class or code such as `invalid_client` or `connect refused`; no personal data.
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LedgerStatus {
    pub targets: Vec<TargetStatus>,
    pub leads: u64,
    pub quarantined: u64,
    pub sources: Vec<SourceStatus>,
    /// The daemon instances sharing this ledger (PostgreSQL; SQLite reports none).
    pub instances: Vec<InstanceStatus>,
}

/// One leadsync process, as its heartbeat describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The lease owner name, `host:pid:nonce` (see `crate::identity`).
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// The leadsync version it runs.
    pub version: String,
    pub started_at: DateTime<Utc>,
}

impl From<&crate::identity::Identity> for InstanceInfo {
    /// What a process's heartbeat writes to the ledger.
    fn from(me: &crate::identity::Identity) -> Self {
        InstanceInfo {
            id: me.id.clone(),
            host: me.host.clone(),
            pid: me.pid,
            version: me.version.to_string(),
            started_at: me.started_at,
        }
    }
}

/// One instance as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// `None` for a lease owner that never sent a heartbeat (e.g. `sync --once`), or one
    /// that ran a version before heartbeats carried it.
    pub version: Option<String>,
    /// `None` for a lease owner that never sent a heartbeat (e.g. `sync --once`).
    pub started_at: Option<DateTime<Utc>>,
    pub seen_at: Option<DateTime<Utc>>,
    /// Its heartbeat is recent (within [`INSTANCE_ALIVE`]).
    pub alive: bool,
    /// Sources it holds the pull lease of.
    pub sources: Vec<String>,
    /// Deliveries leased to it right now (being pushed).
    pub delivery_leases: u64,
}

/// An instance whose heartbeat is older than this is shown as gone.
pub const INSTANCE_ALIVE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub source: String,
    pub cursor: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Why the last pull failed (e.g. the account is unreachable); `None` after a good pull.
    pub last_error: Option<String>,
}

/// One dead delivery, for `dead-letters list`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub delivery_id: i64,
    pub target: String,
    pub lead_id: String,
    pub idempotency_key: String,
    pub attempts: u32,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// One delivery row as `trace` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryTrace {
    pub target: String,
    pub state: DeliveryState,
    pub idempotency_key: String,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub crm_ref: Option<String>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Which dead letters an operator's `retry` brings back.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub target: Option<String>,
    pub lead_id: Option<String>,
}

/// The ledger contract. Every method is one transaction.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Insert new leads, a delivery per planned target, the quarantined records and the new
    /// cursor, atomically. A lead id already present is ignored (its deliveries too).
    async fn stage(&self, batch: StageBatch) -> Result<StageReport, LedgerError>;

    /// The stored cursor of a source.
    async fn cursor(&self, source: &str) -> Result<Option<String>, LedgerError>;

    /// Hand out up to `limit` pending deliveries of `target` whose next attempt is due at `now`
    /// and whose lease (if any) has run out, leasing them to `owner` until `now + lease`.
    /// Oldest first.
    async fn claim(
        &self,
        target: &str,
        now: DateTime<Utc>,
        limit: u32,
        lease: std::time::Duration,
        owner: &str,
    ) -> Result<Vec<ClaimedDelivery>, LedgerError>;

    /// Store outcomes and clear their leases. Attempts grow by one for Delivered, Retry, Dead.
    /// Only pending deliveries change. `Delivered` applies whoever holds the lease (the CRM
    /// has the record, whoever sent it); `Retry`, `Release` and `Dead` apply only while
    /// `owner` still holds the lease (or nobody does), so an instance whose lease ran out and
    /// was taken over cannot undo or pre-empt the new holder.
    async fn record(&self, outcomes: &[RecordedOutcome], owner: &str) -> Result<(), LedgerError>;

    /// The earliest `next_attempt_at` among pending deliveries of `target`, if any.
    async fn next_due(&self, target: &str) -> Result<Option<DateTime<Utc>>, LedgerError>;

    /// Pause a whole target until `until` (throttling); persisted so a restart honours it.
    async fn pause_target(
        &self,
        target: &str,
        until: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), LedgerError>;

    /// Record that a pull of `source` failed (`Some(reason)`) or worked (`None`), for
    /// `status`. The cursor is left alone.
    async fn set_source_error(
        &self,
        source: &str,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError>;

    /// Store the connector's one-line report on `target` for `status`.
    async fn set_target_note(
        &self,
        target: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError>;

    /// Mark `target` down (`Some`) or back (`None`), for `status` and every instance. A
    /// target already down keeps the earlier `since` (the outage started then, whichever
    /// instance noticed it first) and takes the new `reason`.
    async fn set_target_down(
        &self,
        target: &str,
        down: Option<&TargetDown>,
    ) -> Result<(), LedgerError>;

    /// `target` is back up: clear its down row and, if this call cleared it, credit the
    /// outage (from the row's `since` to `now`) to the retry age of its pending deliveries
    /// (see [`Ledger::extend_retry_age`]), in one transaction. Returns the outage credited;
    /// `None` when the target was not marked down, e.g. another instance brought it up
    /// first: on several instances one outage is credited once.
    async fn target_up(
        &self,
        target: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<std::time::Duration>, LedgerError>;

    /// Whether `target` is down, and since when (one row read).
    async fn target_down(&self, target: &str) -> Result<Option<TargetDown>, LedgerError>;

    /// Move the retry-age clock (`age_from`) of every pending delivery of `target` forward
    /// by `by`, so the time the target was down does not count against a lead's `max_age`.
    /// Returns how many deliveries moved. Callers on several instances must make sure one
    /// outage is credited once.
    async fn extend_retry_age(
        &self,
        target: &str,
        by: std::time::Duration,
    ) -> Result<u64, LedgerError>;

    /// The end of the target's last pause, as stored (it may be in the past: the caller
    /// compares it with its own `now`).
    async fn paused_until(&self, target: &str) -> Result<Option<DateTime<Utc>>, LedgerError>;

    /// The database answers one trivial statement (`/readyz`; no scan of the deliveries).
    async fn ping(&self) -> Result<(), LedgerError>;

    async fn status(&self, now: DateTime<Utc>) -> Result<LedgerStatus, LedgerError>;

    async fn dead_letters(&self, target: Option<&str>) -> Result<Vec<DeadLetter>, LedgerError>;

    /// Put matching dead deliveries back to pending, due now, attempts reset and age clock
    /// restarted. Returns how many.
    async fn retry_dead(
        &self,
        filter: &DeadLetterFilter,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError>;

    /// Put `target`'s delivered deliveries of leads staged at or after `since` back to
    /// pending, due at `now` (the operator's `replay`). Returns how many.
    async fn replay(
        &self,
        target: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError>;

    /// Erase the personal data of every lead whose e-mail is `email` (case-insensitive):
    /// the lead body is redacted and its deliveries' error texts (CRMs echo values) cleared,
    /// and the freed database pages are overwritten. Returns the lead ids erased.
    async fn forget_email(&self, email: &str) -> Result<Vec<String>, LedgerError>;

    /// Erase the personal data of leads every delivery of which was delivered before
    /// `before` (the retention setting). Leads with no delivery count once staged before
    /// `before`. Returns how many leads were redacted.
    async fn purge_personal_data(&self, before: DateTime<Utc>) -> Result<u64, LedgerError>;

    /// Per target, how many pending deliveries belong to leads staged before `staged_before`
    /// (the follow-up SLA). Targets with none are left out.
    async fn overdue(
        &self,
        staged_before: DateTime<Utc>,
    ) -> Result<Vec<(String, u64)>, LedgerError>;

    /// Every delivery of one lead (for `trace`), and the lead if known.
    async fn trace(
        &self,
        lead_id: &str,
    ) -> Result<Option<(Lead, DateTime<Utc>, Vec<DeliveryTrace>)>, LedgerError>;

    /// Take or renew the lease that lets `owner` pull `source` until `now + ttl`: granted
    /// when nobody holds it, its lease ran out at `now`, or `owner` already holds it.
    /// Returns whether `owner` holds it now. Only the holder pulls; every instance pushes.
    async fn acquire_source(
        &self,
        source: &str,
        owner: &str,
        ttl: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, LedgerError>;

    /// Give up `owner`'s lease on `source` (a clean stop), so another instance takes it
    /// at once. Does nothing if `owner` does not hold it.
    async fn release_source(&self, source: &str, owner: &str) -> Result<(), LedgerError>;

    /// Extend to `until` the leases `owner` holds on those of `delivery_ids` that are still
    /// pending (a lease is never shortened), while a slow push is in flight. Returns how
    /// many `owner` still holds: a delivery missing from the count was taken over or
    /// finished.
    async fn renew_leases(
        &self,
        delivery_ids: &[i64],
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<u64, LedgerError>;

    /// Record that `instance` is alive at `now` (shown by `status`).
    async fn heartbeat(
        &self,
        instance: &InstanceInfo,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError>;

    /// Failover: free the delivery leases (on pending deliveries; attempts and due times
    /// stay) and the source leases held by every instance whose last heartbeat is older
    /// than `now - stale_after`, so the others take its work at once rather than when its
    /// leases run out. Owners that never sent a heartbeat (`sync --once`) and live
    /// instances are left alone; several instances may call it at once. Returns the number
    /// of deliveries freed. A backend that records no heartbeats (SQLite: one process holds
    /// the file) has no stale instance and frees nothing.
    async fn release_stale_leases(
        &self,
        now: DateTime<Utc>,
        stale_after: std::time::Duration,
    ) -> Result<u64, LedgerError>;
}

/// How a command opens the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The daemon or `sync --once`: SQLite takes its exclusive lock and clears stale leases;
    /// PostgreSQL is shared by design and leaves other instances' leases alone.
    Exclusive,
    /// An operator command beside a running daemon; SQLite refuses a missing file.
    Shared,
    /// Beside a running daemon, creating the ledger when there is none yet.
    SharedOrCreate,
}

/// Open the ledger the settings name: a SQLite file or a PostgreSQL database.
pub async fn open(
    settings: &LedgerSettings,
    config_dir: &std::path::Path,
    mode: OpenMode,
) -> Result<Arc<dyn Ledger>, LedgerError> {
    match &settings.location {
        LedgerLocation::Sqlite(path) => {
            let ledger = match mode {
                OpenMode::Exclusive => sqlite::SqliteLedger::open(path).await?,
                OpenMode::Shared => sqlite::SqliteLedger::open_shared(path).await?,
                OpenMode::SharedOrCreate if path.exists() => {
                    sqlite::SqliteLedger::open_shared(path).await?
                }
                OpenMode::SharedOrCreate => sqlite::SqliteLedger::open(path).await?,
            };
            Ok(Arc::new(ledger))
        }
        LedgerLocation::Postgres(pg) => {
            let url = pg
                .url
                .resolve(config_dir)
                .map_err(|e| LedgerError::Settings(format!("ledger.url: {e}")))?;
            let options = postgres::PostgresOptions {
                schema: pg.schema.clone(),
                max_connections: pg.max_connections,
            };
            Ok(Arc::new(
                postgres::PostgresLedger::connect(url.expose(), &options).await?,
            ))
        }
    }
}
