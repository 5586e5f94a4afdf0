//! Writing leads: the `Connector::push` path. Each record's id value (its e-mail, or
//! leadsync's idempotency key for a custom id property) decides the order: a batch is split
//! into rounds in which no id value appears twice (HubSpot refuses a batch naming one id
//! twice), each call holds its values' locks (`leadsync_core::serial`), and a round goes
//! out as batch upserts of at most [`MAX_BATCH`] inputs.
//!
//! HubSpot answers 200 when every input was written, 207 with `errors[]` naming the inputs
//! that were not by their `objectWriteTraceId` (set to the id value), and refuses a whole
//! batch (400, 409) for one bad input when it cannot answer per input (always when matching
//! on `email`): the batch is then
//! split in halves and each half sent again (not when the refusal is the batch's own, an
//! unknown property), so the good inputs are
//! delivered and the bad ones stand alone with HubSpot's reason. Results are matched to
//! inputs by their id value, not by position (HubSpot does not promise the order).
//!
//! It must not sleep or retry in time (the pipeline does), and never logs a value.

use leadsync_core::serial::{write_in_rounds, KeyedRecord};
use leadsync_core::{DeliveryFailure, DeliveryOutcome, FailureClass, OutboundRecord};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use crate::classify::input_failure;
use crate::HubSpotConnector;

/// Batch upserts take at most 100 inputs per call.
pub const MAX_BATCH: usize = 100;

const UPSERT_PATH: &str = "crm/v3/objects/contacts/batch/upsert";

impl HubSpotConnector {
    /// Deliver a batch: one outcome per record, in order.
    pub(crate) async fn push_batch(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        let key = |r: &OutboundRecord| {
            self.id_value(r).ok_or_else(|| {
                DeliveryFailure::rejected(
                    "hubspot_no_id_value",
                    format!(
                        "the lead has no {}: HubSpot matches contacts on it",
                        self.id_property
                    ),
                )
            })
        };
        write_in_rounds(batch, MAX_BATCH, key, |chunk| async move {
            let _held = self
                .key_locks
                .lock(chunk.iter().map(|(_, v)| v.as_str()))
                .await;
            self.upsert_splitting(batch, &chunk).await
        })
        .await
    }

    /// The value HubSpot matches this record on: the mapped e-mail, or the key.
    fn id_value(&self, rec: &OutboundRecord) -> Option<String> {
        if !self.matches_on_email() {
            return Some(rec.idempotency_key.clone());
        }
        rec.fields
            .fields
            .iter()
            .find(|(k, _)| k == "email")
            .and_then(|(_, v)| v.as_str())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    /// One input: the mapped properties (a false do-not-contact flag left out, so a later
    /// event never clears it), matched on the id property.
    fn input(&self, rec: &OutboundRecord, id: &str) -> Value {
        let mut props: Map<String, Value> = rec.fields.to_json_object();
        if let Some(p) = &self.do_not_contact_property {
            if props.get(p) == Some(&Value::Bool(false)) {
                props.remove(p);
            }
        }
        props.insert(self.id_property.clone(), Value::String(id.to_string()));
        // HubSpot takes every property value as a string.
        for v in props.values_mut() {
            if let Value::Bool(b) = v {
                *v = Value::String(b.to_string());
            } else if let Value::Number(n) = v {
                *v = Value::String(n.to_string());
            }
        }
        // The trace id is how a 207's error names its input; the id value is unique in a call.
        json!({"idProperty": self.id_property, "id": id, "objectWriteTraceId": id, "properties": props})
    }

    /// Upsert `inputs`, splitting a batch HubSpot refused as a whole (see the module
    /// comment). One outcome per input, in order.
    fn upsert_splitting<'a>(
        &'a self,
        batch: &'a [OutboundRecord],
        inputs: &'a [KeyedRecord],
    ) -> Pin<Box<dyn Future<Output = Vec<DeliveryOutcome>> + Send + 'a>> {
        Box::pin(async move {
            let refused = match self.upsert(batch, inputs).await {
                Ok(outcomes) => return outcomes,
                Err(f) => f,
            };
            if refused.class != FailureClass::Rejected || inputs.len() < 2 || batch_wide(&refused) {
                return vec![DeliveryOutcome::Failed(refused); inputs.len()];
            }
            let (left, right) = inputs.split_at(inputs.len() / 2);
            let mut first = self.upsert_splitting(batch, left).await;
            first.extend(self.upsert_splitting(batch, right).await);
            first
        })
    }

    /// One batch upsert call: per-input outcomes, or the failure of the whole call.
    async fn upsert(
        &self,
        batch: &[OutboundRecord],
        inputs: &[KeyedRecord],
    ) -> Result<Vec<DeliveryOutcome>, DeliveryFailure> {
        let body = json!({
            "inputs": inputs.iter().map(|(i, id)| self.input(&batch[*i], id)).collect::<Vec<_>>()
        });
        let answer = self.call(Method::POST, UPSERT_PATH, Some(&body)).await?;
        Ok(self.read_results(inputs, answer.status, &answer.body))
    }

    /// Tie results and errors to inputs by id value.
    fn read_results(
        &self,
        inputs: &[KeyedRecord],
        status: StatusCode,
        body: &Value,
    ) -> Vec<DeliveryOutcome> {
        let mut written: HashMap<String, DeliveryOutcome> = HashMap::new();
        let results = body
            .get("results")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for r in &results {
            let id = r
                .get("properties")
                .and_then(|p| p.get(&self.id_property))
                .and_then(Value::as_str);
            if let Some(id) = id {
                written.insert(id.trim().to_lowercase(), delivered(r));
            }
        }
        // Without the id property echoed, a complete answer is read by position.
        if written.is_empty() && results.len() == inputs.len() && status == StatusCode::OK {
            return results.iter().map(delivered).collect();
        }
        let mut refused: HashMap<String, DeliveryFailure> = HashMap::new();
        for e in body
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for id in named_ids(e) {
                refused.insert(id, input_failure(e));
            }
        }
        inputs
            .iter()
            .map(|(_, id)| {
                let id = id.trim().to_lowercase();
                if let Some(o) = written.remove(&id) {
                    o
                } else if let Some(f) = refused.remove(&id) {
                    DeliveryOutcome::Failed(f)
                } else {
                    DeliveryOutcome::Failed(DeliveryFailure::transient(
                        "hubspot_no_result",
                        format!("HubSpot answered {status} without a result or an error for this contact"),
                    ))
                }
            })
            .collect()
    }
}

fn delivered(r: &Value) -> DeliveryOutcome {
    DeliveryOutcome::delivered(
        r.get("id").and_then(Value::as_str).map(str::to_string),
        r.get("new").and_then(Value::as_bool),
    )
}

/// The id values an error names: every string in its `context`, lower-cased. HubSpot puts
/// the input's `objectWriteTraceId` there (`{"objectWriteTraceId": ["a@b.com"]}`), and the
/// ids of a refused batch (`{"ids": [...]}`).
fn named_ids(error: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Value::Object(context)) = error.get("context") {
        for v in context.values() {
            match v {
                Value::String(s) => out.push(s.trim().to_lowercase()),
                Value::Array(a) => out.extend(
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|s| s.trim().to_lowercase()),
                ),
                _ => {}
            }
        }
    }
    out
}

/// A refusal no input can escape by being sent alone: a property the portal does not have.
fn batch_wide(f: &DeliveryFailure) -> bool {
    f.message.contains("PROPERTY_DOESNT_EXIST") || f.message.contains("does not exist")
}
