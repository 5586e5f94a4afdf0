//! Writing leads: the `Connector::push` path. A batch is split into rounds in which no
//! idempotency key appears twice (Salesforce refuses a collection naming one external ID
//! twice); each round goes out as the single-record upsert
//! (`PATCH .../sobjects/Lead/<Field>/<key>`) when it holds one record, else as sObject
//! Collections upserts (`PATCH .../composite/sobjects/Lead/<Field>`, `allOrNone=false`, at
//! most [`MAX_BATCH`] records a call). It builds each record's body (opt-out checkboxes that
//! are false left out) and reads the success answers; every failure is turned into a class
//! by `classify`.
//!
//! It must not sleep or retry (the pipeline does), and never logs a field value.

use leadsync_core::http::body_excerpt;
use leadsync_core::serial::{rounds_by_key, write_in_rounds};
use leadsync_core::{DeliveryFailure, DeliveryOutcome, FailureClass, OutboundRecord};
use reqwest::{Method, StatusCode};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::SalesforceConnector;

/// sObject Collections take at most 200 records per call.
pub const MAX_BATCH: usize = 200;

impl SalesforceConnector {
    /// Deliver a batch: one outcome per record, in order.
    pub(crate) async fn push_batch(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        let key = |r: &OutboundRecord| Ok(r.idempotency_key.clone());
        write_in_rounds(batch, MAX_BATCH, key, |chunk| async move {
            if let [(only, _)] = chunk.as_slice() {
                vec![self.upsert_one(&batch[*only]).await]
            } else {
                let recs: Vec<&OutboundRecord> = chunk.iter().map(|(i, _)| &batch[*i]).collect();
                self.upsert_collection(&recs).await
            }
        })
        .await
    }

    /// The body of one record: the mapped fields, minus the external ID (it travels in the
    /// URL or is set from the key) and minus opt-out checkboxes that are false.
    fn record_body(&self, rec: &OutboundRecord) -> Map<String, Value> {
        self.fields_to_write(rec)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn fields_to_write<'a>(
        &'a self,
        rec: &'a OutboundRecord,
    ) -> impl Iterator<Item = (&'a String, &'a Value)> + 'a {
        rec.fields
            .fields_to_write(&self.external_id_field, &self.opt_out_fields)
    }

    async fn upsert_one(&self, rec: &OutboundRecord) -> DeliveryOutcome {
        let body = Value::Object(self.record_body(rec));
        let answer = match self
            .call(
                Method::PATCH,
                &[
                    "sobjects",
                    "Lead",
                    self.external_id_field.as_str(),
                    rec.idempotency_key.as_str(),
                ],
                Some(&body),
            )
            .await
        {
            Ok(a) => a,
            Err(f) => return DeliveryOutcome::Failed(f),
        };
        match answer.status.as_u16() {
            200 | 201 => {
                let v: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
                let id = v.get("id").and_then(Value::as_str).map(str::to_string);
                let created = v
                    .get("created")
                    .and_then(Value::as_bool)
                    .unwrap_or(answer.status == StatusCode::CREATED);
                if v.get("success").and_then(Value::as_bool) == Some(false) {
                    return DeliveryOutcome::Failed(self.record_failure(
                        v.get("errors"),
                        StatusCode::OK,
                        &answer.headers,
                    ));
                }
                DeliveryOutcome::delivered(id, Some(created))
            }
            // API 45.0 and older answer an update with no body.
            204 => DeliveryOutcome::delivered(None, Some(false)),
            _ => DeliveryOutcome::Failed(self.request_failure(&answer)),
        }
    }

    async fn upsert_collection(&self, recs: &[&OutboundRecord]) -> Vec<DeliveryOutcome> {
        let body = CollectionUpsert {
            connector: self,
            records: recs,
        };
        self.send_collection(recs, &body).await
    }

    /// A batch's collections upsert body, written ahead, when the batch goes as one
    /// collection: 2 to [`MAX_BATCH`] records, no idempotency key twice.
    pub(crate) fn prepared_collection(
        &self,
        batch: &[OutboundRecord],
    ) -> Option<PreparedCollection> {
        let rounds = rounds_by_key(batch.iter().map(|r| r.idempotency_key.as_str()));
        if !(2..=MAX_BATCH).contains(&batch.len()) || rounds.len() != 1 {
            return None;
        }
        let records: Vec<&OutboundRecord> = batch.iter().collect();
        let body = CollectionUpsert {
            connector: self,
            records: &records,
        };
        let body = serde_json::value::to_raw_value(&body).ok()?;
        Some(PreparedCollection { body })
    }

    /// Deliver a batch with the collection body written ahead of it, if there is one; else
    /// as [`SalesforceConnector::push_batch`] does.
    pub(crate) async fn push_prepared_collection(
        &self,
        batch: &[OutboundRecord],
        prepared: Option<PreparedCollection>,
    ) -> Vec<DeliveryOutcome> {
        match prepared {
            Some(p) => {
                let recs: Vec<&OutboundRecord> = batch.iter().collect();
                self.send_collection(&recs, &p.body).await
            }
            None => self.push_batch(batch).await,
        }
    }

    async fn send_collection(
        &self,
        recs: &[&OutboundRecord],
        body: &(impl Serialize + ?Sized),
    ) -> Vec<DeliveryOutcome> {
        let all = |f: DeliveryFailure| vec![DeliveryOutcome::Failed(f); recs.len()];
        let answer = match self
            .call(
                Method::PATCH,
                &[
                    "composite",
                    "sobjects",
                    "Lead",
                    self.external_id_field.as_str(),
                ],
                Some(body),
            )
            .await
        {
            Ok(a) => a,
            Err(f) => return all(f),
        };
        if answer.status != StatusCode::OK {
            return all(self.request_failure(&answer));
        }
        let results: Vec<Value> = match serde_json::from_slice(&answer.body) {
            Ok(Value::Array(v)) if v.len() == recs.len() => v,
            _ => {
                tracing::warn!(
                    records = recs.len(),
                    "Salesforce collections answer did not have one result per record"
                );
                return all(DeliveryFailure::transient(
                    "bad_response",
                    format!(
                        "collections upsert answered 200 without one result per record: {}",
                        body_excerpt(&answer.body, 300)
                    ),
                ));
            }
        };
        let mut out = Vec::with_capacity(recs.len());
        let mut expired = false;
        for r in &results {
            if r.get("success").and_then(Value::as_bool) == Some(true) {
                out.push(DeliveryOutcome::delivered(
                    r.get("id").and_then(Value::as_str).map(str::to_string),
                    r.get("created").and_then(Value::as_bool),
                ));
            } else {
                let f = self.record_failure(r.get("errors"), answer.status, &answer.headers);
                expired |= f.class == FailureClass::AuthExpired;
                out.push(DeliveryOutcome::Failed(f));
            }
        }
        if expired {
            self.tokens.invalidate(&answer.token).await;
        }
        out
    }
}

/// A collections upsert body written ahead ([`leadsync_core::Connector::prepare`]).
pub(crate) struct PreparedCollection {
    body: Box<serde_json::value::RawValue>,
}

/// The body of a collections upsert, `{"allOrNone": false, "records": [...]}`, written
/// straight from the mapped fields: building a `serde_json::Map` per record first cost more
/// CPU than the rest of the request.
struct CollectionUpsert<'a> {
    connector: &'a SalesforceConnector,
    records: &'a [&'a OutboundRecord],
}

/// One record: its `attributes`, the fields `MappedRecord::fields_to_write` keeps,
/// and the external ID from the idempotency key.
struct CollectionRecord<'a> {
    connector: &'a SalesforceConnector,
    record: &'a OutboundRecord,
}

impl Serialize for CollectionUpsert<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let records: Vec<CollectionRecord<'_>> = self
            .records
            .iter()
            .map(|record| CollectionRecord {
                connector: self.connector,
                record,
            })
            .collect();
        let mut body = s.serialize_map(Some(2))?;
        body.serialize_entry("allOrNone", &false)?;
        body.serialize_entry("records", &records)?;
        body.end()
    }
}

/// `{"type": "Lead"}`, written without building a map per record.
#[derive(serde::Serialize)]
struct LeadAttributes {
    r#type: &'static str,
}

impl Serialize for CollectionRecord<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.connector;
        let mut o = s.serialize_map(None)?;
        o.serialize_entry("attributes", &LeadAttributes { r#type: "Lead" })?;
        for (field, value) in c.fields_to_write(self.record) {
            if field != "attributes" {
                o.serialize_entry(field, value)?;
            }
        }
        o.serialize_entry(&c.external_id_field, &self.record.idempotency_key)?;
        o.end()
    }
}
