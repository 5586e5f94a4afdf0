//! Marked test leads: the one `send-test` stages, and the canary a target may send on its own
//! schedule (`canary = "<cron>"` in the target file, off by default).
//!
//! Both are the marketplace's own test-lead form (`MSFT_TEST_…` names, an `example.invalid`
//! address), so a CRM's rules and people treat them as tests. The canary always has the same
//! lead id, hence the same idempotency key: the CRM holds one canary record, updated each time,
//! never a pile of them. It is pushed straight through the target's mapping and connector,
//! not through the ledger: it is a probe of the target, not a lead to keep.

use chrono::{DateTime, Utc};
use leadsync_core::{read_lead, DeliveryFailure, DeliveryOutcome, Lead, OutboundRecord, ReadError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Target;

/// A marked test lead with `id`; `purpose` and `at` go into its last name and description.
pub fn marked_test_lead(id: &str, purpose: &str, at: DateTime<Utc>) -> Result<Lead, ReadError> {
    let stamp = at.format("%Y-%m-%dT%H:%M:%SZ");
    let record = serde_json::json!({
        "UserDetails": {
            "FirstName": "MSFT_TEST_leadsync",
            "LastName": format!("{purpose} {stamp}"),
            "Email": "msft_test_leadsync@example.invalid",
            "Company": "MSFT_TEST leadsync",
            "Country": "US",
        },
        "LeadSource": "AzureMarketplace",
        "ActionCode": "INS",
        "OfferTitle": format!("leadsync {purpose}"),
        "Description": format!("MSFT_TEST lead sent by leadsync ({purpose}) at {stamp}"),
    });
    read_lead(id.to_string(), &record)
}

/// Why the canary did not arrive: the CRM's failure, or a lead that could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CanaryError {
    #[error("{} {}: {}", .0.class.as_str(), .0.code, .0.message)]
    Refused(DeliveryFailure),
    #[error("building the canary lead: {0}")]
    Lead(#[from] ReadError),
}

/// Send `target`'s canary once; how long it took when it arrived.
pub async fn send_canary(target: &Target) -> Result<Duration, CanaryError> {
    let lead = marked_test_lead(&format!("canary:{}", target.name), "canary", Utc::now())?;
    let key = target.delivery_of(&lead).idempotency_key;
    let (fields, _) = target.mapping.apply(&lead, &key, &target.field_limits);
    let record = OutboundRecord {
        lead_id: lead.id.clone(),
        idempotency_key: key,
        attempt: 1,
        lead: Arc::new(lead),
        fields,
    };
    let started = Instant::now();
    let mut outcome = target.connector.push(std::slice::from_ref(&record)).await;
    if let Some(DeliveryOutcome::Failed(f)) = outcome.first() {
        if f.class == leadsync_core::FailureClass::AuthExpired {
            // As for any lead: the connector refreshed its token; once more at once.
            outcome = target.connector.push(std::slice::from_ref(&record)).await;
        }
    }
    match outcome.into_iter().next() {
        Some(DeliveryOutcome::Delivered { .. }) => Ok(started.elapsed()),
        Some(DeliveryOutcome::Failed(f)) => Err(CanaryError::Refused(f)),
        None => Err(CanaryError::Refused(DeliveryFailure::transient(
            "connector_outcome_mismatch",
            "the connector returned no outcome",
        ))),
    }
}
