//! Row codecs shared by the ledger backends: unix-millisecond timestamps, counters, delivery
//! states and lead bodies (JSON text). It owns only these conversions; it must not run SQL.

use chrono::{DateTime, Utc};
use leadsync_core::Lead;

use super::{DeliveryState, LedgerError};

pub(super) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// `now + d` in unix milliseconds, saturating.
pub(super) fn ms_after(now: i64, d: std::time::Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
