//! Row codecs shared by the ledger backends: unix-millisecond timestamps, counters, delivery
//! states, lead bodies (JSON text), and the row types (`#[derive(sqlx::FromRow)]`, read alike
//! from SQLite and PostgreSQL rows) that turn into the public results: claimed deliveries,
//! trace rows, dead letters, target counts, sources and targets found down.
//!
//! It owns only these conversions; it must not run SQL (that is `sql.rs` and the backends).

use chrono::{DateTime, Utc};
use leadsync_core::Lead;

use super::memory_leases::QueuePlace;
use super::{
    ClaimedDelivery, DeadLetter, DeliveryState, DeliveryTrace, LedgerError, SourceStatus,
    StagedLead, TargetDown, TargetStatus,
};

pub(super) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// `now + d` in unix milliseconds, saturating.
pub(super) fn ms_after(now: i64, d: std::time::Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The longest shift of a retry-age clock: far beyond any outage, and it keeps the shifted
/// timestamps within what `from_ms` reads back.
const MAX_SHIFT_MS: i64 = 100 * 366 * 24 * 3600 * 1000;

/// A shift of stored timestamps, in milliseconds (at most [`MAX_SHIFT_MS`]).
pub(super) fn shift_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).map_or(MAX_SHIFT_MS, |ms| ms.min(MAX_SHIFT_MS))
}

/// A stored timestamp; `what` names the row for the error (no personal data).
pub(super) fn from_ms(ms: i64, what: &str) -> Result<DateTime<Utc>, LedgerError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| LedgerError::Corrupt {
        lead_id: what.to_owned(),
        reason: format!("timestamp {ms} is out of range"),
    })
}

pub(super) fn opt_from_ms(
    ms: Option<i64>,
    what: &str,
) -> Result<Option<DateTime<Utc>>, LedgerError> {
    ms.map(|ms| from_ms(ms, what)).transpose()
}

pub(super) fn to_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

pub(super) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub(super) fn parse_state(s: &str, lead_id: &str) -> Result<DeliveryState, LedgerError> {
    match s {
        "pending" => Ok(DeliveryState::Pending),
        "delivered" => Ok(DeliveryState::Delivered),
        "dead" => Ok(DeliveryState::Dead),
        other => Err(LedgerError::Corrupt {
            lead_id: lead_id.to_owned(),
            reason: format!("unknown delivery state {other:?}"),
        }),
    }
}

pub(super) fn encode_lead(lead: &Lead) -> Result<String, LedgerError> {
    serde_json::to_string(lead).map_err(|e| LedgerError::Corrupt {
        lead_id: lead.id.clone(),
        reason: format!("could not be encoded: {e}"),
    })
}

pub(super) fn decode_lead(lead_id: &str, body: &str) -> Result<Lead, LedgerError> {
    let lead: Lead = serde_json::from_str(body).map_err(|e| LedgerError::Corrupt {
        lead_id: lead_id.to_owned(),
        // serde_json's message names the position and the expected type, not the content.
        reason: e.to_string(),
    })?;
    if lead.id != lead_id {
        return Err(LedgerError::Corrupt {
            lead_id: lead_id.to_owned(),
            reason: format!("stored body carries another lead id ({})", lead.id),
        });
    }
    Ok(lead)
}

/// The leads of a batch as JSON text, in batch order (encoded before any lock is taken: it
/// is the CPU-heavy part of staging).
pub(super) fn encode_leads(leads: &[StagedLead]) -> Result<Vec<String>, LedgerError> {
    leads
        .iter()
        .map(|staged| encode_lead(&staged.lead))
        .collect()
}

// Rows as both backends return them. The column types are the ones SQLite and PostgreSQL
// share (`i64` for INTEGER/BIGINT, `String` for TEXT), so `#[derive(sqlx::FromRow)]` reads
// them from a `SqliteRow` and a `PgRow` alike; each row turns into the public type here.

/// A claimed delivery with its place in the claim order (`next_attempt_at`, `id`).
pub(super) type PlacedClaim = (ClaimedDelivery, QueuePlace);

/// A claimed delivery with its lead: the columns `claim` returns on both backends (SQLite
/// returns them as a JSON array per row, in this order: see `decode_json_array`).
#[derive(sqlx::FromRow, serde::Deserialize)]
pub(super) struct ClaimRow {
    id: i64,
    target: String,
    idempotency_key: String,
    attempts: i64,
    age_from: i64,
    lead_id: String,
    staged_at: i64,
    body: String,
    /// SQLite only: `next_attempt_at`, the delivery's place in the claim order with `id`
    /// (where the claim cursor reads on from).
    #[sqlx(default)]
    #[serde(default)]
    next_attempt_at: i64,
}

impl ClaimRow {
    /// A claim returned as one JSON array of rows (each an array of the columns in field
    /// order), decoded in order with each one's place in the claim order; `target` names the
    /// claim in the error.
    pub(super) fn decode_json_array(
        rows: &str,
        target: &str,
    ) -> Result<Vec<PlacedClaim>, LedgerError> {
        let rows: Vec<ClaimRow> = serde_json::from_str(rows).map_err(|e| LedgerError::Corrupt {
            lead_id: format!("(claim for target {target})"),
            reason: e.to_string(),
        })?;
        rows.into_iter()
            .map(|row| {
                let place = (row.next_attempt_at, row.id);
                Ok((row.decode()?, place))
            })
            .collect()
    }

    pub(super) fn decode(self) -> Result<ClaimedDelivery, LedgerError> {
        Ok(ClaimedDelivery {
            delivery_id: self.id,
            target: self.target,
            idempotency_key: self.idempotency_key,
            attempts: to_u32(self.attempts),
            age_from: from_ms(self.age_from, &self.lead_id)?,
            staged_at: from_ms(self.staged_at, &self.lead_id)?,
            lead: std::sync::Arc::new(decode_lead(&self.lead_id, &self.body)?),
        })
    }
}

/// A lead's id and stored body (erasure reads these).
#[derive(sqlx::FromRow)]
pub(super) struct LeadBodyRow {
    pub(super) id: String,
    body: String,
}

impl LeadBodyRow {
    pub(super) fn decode(&self) -> Result<Lead, LedgerError> {
        decode_lead(&self.id, &self.body)
    }
}

/// One lead for `trace`: when it was staged and its body.
#[derive(sqlx::FromRow)]
pub(super) struct StagedLeadRow {
    staged_at: i64,
    body: String,
}

impl StagedLeadRow {
    pub(super) fn decode(self, lead_id: &str) -> Result<(Lead, DateTime<Utc>), LedgerError> {
        let staged_at = from_ms(self.staged_at, lead_id)?;
        Ok((decode_lead(lead_id, &self.body)?, staged_at))
    }
}

/// One delivery row for `trace`.
#[derive(sqlx::FromRow)]
pub(super) struct TraceRow {
    target: String,
    state: String,
    idempotency_key: String,
    attempts: i64,
    next_attempt_at: Option<i64>,
    crm_ref: Option<String>,
    error_code: Option<String>,
    error: Option<String>,
    updated_at: i64,
}

impl TraceRow {
    pub(super) fn decode(self, lead_id: &str) -> Result<DeliveryTrace, LedgerError> {
        Ok(DeliveryTrace {
            state: parse_state(&self.state, lead_id)?,
            target: self.target,
            idempotency_key: self.idempotency_key,
            attempts: to_u32(self.attempts),
            next_attempt_at: opt_from_ms(self.next_attempt_at, lead_id)?,
            crm_ref: self.crm_ref,
            error_code: self.error_code,
            error: self.error,
            updated_at: from_ms(self.updated_at, lead_id)?,
        })
    }
}

/// One dead delivery for `dead-letters list`.
#[derive(sqlx::FromRow)]
pub(super) struct DeadLetterRow {
    id: i64,
    target: String,
    lead_id: String,
    idempotency_key: String,
    attempts: i64,
    error_code: Option<String>,
    error: Option<String>,
    updated_at: i64,
}

impl DeadLetterRow {
    pub(super) fn decode(self) -> Result<DeadLetter, LedgerError> {
        Ok(DeadLetter {
            delivery_id: self.id,
            target: self.target,
            updated_at: from_ms(self.updated_at, &self.lead_id)?,
            lead_id: self.lead_id,
            idempotency_key: self.idempotency_key,
            attempts: to_u32(self.attempts),
            error_code: self.error_code,
            error: self.error,
        })
    }
}

/// One target's delivery counts for `status` (the backend's own count query).
#[derive(sqlx::FromRow)]
pub(super) struct TargetCountsRow {
    target: String,
    pending: i64,
    retrying: i64,
    delivered: i64,
    dead: i64,
}

impl TargetCountsRow {
    /// The counts; the other fields are filled in afterwards.
    pub(super) fn decode(self) -> TargetStatus {
        TargetStatus {
            target: self.target,
            pending: to_u64(self.pending),
            retrying: to_u64(self.retrying),
            delivered: to_u64(self.delivered),
            dead: to_u64(self.dead),
            ..TargetStatus::default()
        }
    }
}

/// One source's cursor row for `status`.
#[derive(sqlx::FromRow)]
pub(super) struct SourceRow {
    source: String,
    cursor: Option<String>,
    updated_at: i64,
    last_error: Option<String>,
}

impl SourceRow {
    pub(super) fn decode(self) -> Result<SourceStatus, LedgerError> {
        Ok(SourceStatus {
            updated_at: from_ms(self.updated_at, &self.source)?,
            source: self.source,
            cursor: self.cursor,
            last_error: self.last_error,
        })
    }
}

/// A target's outage row for `target_down` and `status`.
#[derive(sqlx::FromRow)]
pub(super) struct TargetDownRow {
    down_since: i64,
    reason: String,
}

impl TargetDownRow {
    pub(super) fn decode(self, target: &str) -> Result<TargetDown, LedgerError> {
        Ok(TargetDown {
            since: from_ms(self.down_since, target)?,
            reason: self.reason,
        })
    }
}
