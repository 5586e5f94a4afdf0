//! Writing leads: the `Connector::push` path. Each record's lookup value (its e-mail, or
//! leadsync's idempotency key for a custom lookup field) decides the order: a batch is split
//! into rounds in which no lookup value appears twice, and each call holds its values'
//! locks (`leadsync_core::serial`), so no two writes of one Marketo lead ever run at once.
//! A round goes out as Sync Leads calls of at most [`MAX_BATCH`] records
//! (`createOrUpdate`), and Marketo's per-record results, in input order, become outcomes.
//!
//! It must not sleep or retry (the pipeline does), and never logs a field value.

use leadsync_core::serial::{write_in_rounds, KeyedRecord};
use leadsync_core::{DeliveryFailure, DeliveryOutcome, OutboundRecord};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::classify::skipped_failure;
use crate::MarketoConnector;

/// Sync Leads takes at most 300 records per call.
pub const MAX_BATCH: usize = 300;

impl MarketoConnector {
    /// Deliver a batch: one outcome per record, in order.
    pub(crate) async fn push_batch(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        let key = |r: &OutboundRecord| {
            self.lookup_value(r).ok_or_else(|| {
                DeliveryFailure::rejected(
                    "marketo_no_lookup_value",
                    format!(
                        "the lead has no {}: Marketo looks leads up by it",
                        self.lookup_field
                    ),
                )
            })
        };
        write_in_rounds(batch, MAX_BATCH, key, |chunk| async move {
            self.sync_leads(batch, &chunk).await
        })
        .await
    }

    /// The value Marketo looks this record up by: the mapped e-mail, or the key.
    fn lookup_value(&self, rec: &OutboundRecord) -> Option<String> {
        if !self.looks_up_by_email() {
            return Some(rec.idempotency_key.clone());
        }
        rec.fields
            .fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("email"))
            .and_then(|(_, v)| v.as_str())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    /// One record's input: the mapped fields, minus opt-out flags that are false (a later
    /// event never clears an opt-out), with the lookup field set from `lookup`.
    fn record_input(&self, rec: &OutboundRecord, lookup: &str) -> Value {
        let mut input: Map<String, Value> = rec
            .fields
            .fields_to_write(&self.lookup_field, &self.opt_out_fields)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        input.insert(self.lookup_field.clone(), Value::String(lookup.to_string()));
        Value::Object(input)
    }

    /// One Sync Leads call for `recs` (index into `batch`, lookup value), none sharing a
    /// lookup value: one outcome per record, in order.
    async fn sync_leads(
        &self,
        batch: &[OutboundRecord],
        recs: &[KeyedRecord],
    ) -> Vec<DeliveryOutcome> {
        let inputs: Vec<Value> = recs
            .iter()
            .map(|(i, lookup)| self.record_input(&batch[*i], lookup))
            .collect();
        let mut body = json!({
            "action": "createOrUpdate",
            "lookupField": self.lookup_field,
            "input": inputs,
        });
        if let (Some(p), Some(o)) = (&self.partition_name, body.as_object_mut()) {
            o.insert("partitionName".into(), Value::String(p.clone()));
        }
        let _held = self
            .key_locks
            .lock(recs.iter().map(|(_, v)| v.as_str()))
            .await;
        let all = |f: DeliveryFailure| vec![DeliveryOutcome::Failed(f); recs.len()];
        let results = match self.call(Method::POST, "v1/leads.json", Some(&body)).await {
            Ok(r) => r,
            Err(f) => return all(f),
        };
        if results.len() != recs.len() {
            tracing::warn!(
                records = recs.len(),
                results = results.len(),
                "Marketo answered Sync Leads without one result per record"
            );
            return all(DeliveryFailure::transient(
                "bad_response",
                format!(
                    "Sync Leads answered {} results for {} records",
                    results.len(),
                    recs.len()
                ),
            ));
        }
        results.iter().map(record_outcome).collect()
    }
}

/// One entry of Sync Leads' `result`.
fn record_outcome(r: &Value) -> DeliveryOutcome {
    let id = match r.get("id") {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    match r.get("status").and_then(Value::as_str) {
        Some("created") => DeliveryOutcome::delivered(id, Some(true)),
        Some("updated") => DeliveryOutcome::delivered(id, Some(false)),
        _ => {
            let reason = r
                .get("reasons")
                .and_then(Value::as_array)
                .and_then(|a| a.first());
            let code = match reason.and_then(|x| x.get("code")) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            let message = reason
                .and_then(|x| x.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            DeliveryOutcome::Failed(skipped_failure(&code, message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadsync_core::FailureClass;

    #[test]
    fn results_become_outcomes() {
        assert_eq!(
            record_outcome(&json!({"id": 50, "status": "created"})),
            DeliveryOutcome::delivered(Some("50".into()), Some(true))
        );
        assert_eq!(
            record_outcome(&json!({"id": 51, "status": "updated"})),
            DeliveryOutcome::delivered(Some("51".into()), Some(false))
        );
        let DeliveryOutcome::Failed(f) = record_outcome(&json!({"status": "skipped",
            "reasons": [{"code": "1003", "message": "Invalid email"}]}))
        else {
            panic!("expected a failure")
        };
        assert_eq!(
            (f.class, f.code.as_str()),
            (FailureClass::Rejected, "marketo_1003")
        );
    }
}
