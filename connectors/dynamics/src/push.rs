//! Writing leads: the `Connector::push` path and the Web API requests it is made of. Upsert
//! mode sends `PATCH leads(<key_column>='<key>')`; create-only mode sends `POST leads`, after
//! looking up by the key column any lead being retried (its earlier create may have landed)
//! and any 412 duplicate. One lead goes as its own request, several as one `$batch` with
//! `Prefer: odata.continue-on-error` (wire format in `batch`). It also builds each lead's
//! body ([`DynamicsConnector::body`]) and the authenticated request every call, `check`'s
//! included, goes through.
//!
//! It must not sleep, schedule or retry in time (the pipeline does); an expired token is
//! invalidated once and the leads returned as `auth_expired`. It never logs bodies, field
//! values, tokens or query strings: only counts and codes.

use leadsync_core::oauth::AccessToken;
use leadsync_core::{DeliveryFailure, DeliveryOutcome, FailureClass, OutboundRecord};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::batch::{self, BatchOp, PartResponse};
use crate::classify::{classify, op_result, OpKind, OpResult};
use crate::settings::{WriteMode, LEAD_LIMITS, MAX_BATCH};
use crate::DynamicsConnector;

/// Do-not-contact columns: only ever set, never cleared (see [`DynamicsConnector::body`]).
pub const DO_NOT_CONTACT_FIELDS: &[&str] = &[
    "donotemail",
    "donotphone",
    "donotbulkemail",
    "donotpostalmail",
    "donotfax",
    "donotsendmm",
];

/// OData string literal inside a key or `$filter`, percent-encoded for a URL: quotes
/// doubled (spec §1.5 [U]), everything but unreserved characters encoded.
pub fn odata_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    let mut out = String::with_capacity(doubled.len() + 2);
    out.push('\'');
    for b in doubled.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'\'' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out.push('\'');
    out
}

/// The longest prefix of `s` of at most `max` UTF-16 code units (Dataverse counts .NET
/// string length).
pub(crate) fn utf16_prefix(s: &str, max: usize) -> &str {
    let mut units = 0;
    for (i, c) in s.char_indices() {
        if units + c.len_utf16() > max {
            return &s[..i];
        }
        units += c.len_utf16();
    }
    s
}

/// One record's JSON body (see [`DynamicsConnector::body`]), serialised straight from its
/// mapped fields: a map of cloned values per record cost about 10 µs a lead in a `$batch`.
pub struct LeadBody<'a> {
    connector: &'a DynamicsConnector,
    rec: &'a OutboundRecord,
}

impl Serialize for LeadBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.connector;
        let mut o = s.serialize_map(None)?;
        for (k, v) in &self.rec.fields.fields {
            let false_opt_out =
                DO_NOT_CONTACT_FIELDS.contains(&k.as_str()) && *v == Value::Bool(false);
            if *k == c.key_column || false_opt_out {
                continue;
            }
            match v {
                Value::String(code) if k == "leadqualitycode" => {
                    o.serialize_entry(k, &c.lead_quality_of(code))?
                }
                Value::String(text) => match LEAD_LIMITS.iter().find(|(f, _)| f == k) {
                    Some((_, max)) => o.serialize_entry(k, utf16_prefix(text, *max))?,
                    None => o.serialize_entry(k, text)?,
                },
                other => o.serialize_entry(k, other)?,
            }
        }
        if c.mode == WriteMode::CreateOnly {
            o.serialize_entry(&c.key_column, &self.rec.idempotency_key)?;
        }
        o.end()
    }
}

/// A `$batch` request of writes, ready to send but for its token.
pub(crate) struct BatchRequest {
    kind: OpKind,
    /// How many writes it holds (one result each).
    records: usize,
    boundary: String,
    body: String,
}

fn outcomes_of(results: Vec<OpResult>) -> Vec<DeliveryOutcome> {
    results.into_iter().map(|r| r.outcome).collect()
}

async fn read_response(resp: reqwest::Response) -> Result<PartResponse, DeliveryFailure> {
    let status = resp.status().as_u16();
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .bytes()
        .await
        .map_err(|e| leadsync_core::http::failure_from_transport(&e))?;
    Ok(PartResponse {
        content_id: None,
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

impl DynamicsConnector {
    /// Deliver a batch: one outcome per record, in order; `prepared` is its upsert `$batch`
    /// request, made ahead by [`DynamicsConnector::prepared_upsert`].
    pub(crate) async fn push_batch(
        &self,
        batch: &[OutboundRecord],
        prepared: Option<BatchRequest>,
    ) -> Vec<DeliveryOutcome> {
        if batch.is_empty() {
            return Vec::new();
        }
        let token = match self.tokens.get().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(code = %e.code, records = batch.len(), "no Dataverse token");
                return vec![DeliveryOutcome::Failed(e.to_failure()); batch.len()];
            }
        };
        let outcomes = match (self.mode, prepared) {
            (WriteMode::Upsert, Some(request)) => {
                outcomes_of(self.send_batch(&token, request).await)
            }
            (WriteMode::Upsert, None) => {
                let recs: Vec<&OutboundRecord> = batch.iter().collect();
                outcomes_of(self.write(&token, OpKind::Upsert, &recs).await)
            }
            (WriteMode::CreateOnly, _) => self.push_create_only(&token, batch).await,
        };
        let expired = outcomes
            .iter()
            .filter(
                |o| matches!(o, DeliveryOutcome::Failed(f) if f.class == FailureClass::AuthExpired),
            )
            .count();
        if expired > 0 {
            // One refresh for everyone holding this token; the pipeline re-pushes at once.
            self.tokens.invalidate(&token).await;
            tracing::info!(
                records = expired,
                "Dataverse refused the token; it will be renewed"
            );
        }
        tracing::debug!(records = batch.len(), "dataverse push done");
        outcomes
    }

    /// An upsert of `batch` as the one `$batch` request it will be, when it is one: several
    /// records, at most [`MAX_BATCH`] (create-only looks leads up before it writes).
    pub(crate) fn prepared_upsert(&self, batch: &[OutboundRecord]) -> Option<BatchRequest> {
        if self.mode != WriteMode::Upsert || !(2..=MAX_BATCH).contains(&batch.len()) {
            return None;
        }
        let recs: Vec<&OutboundRecord> = batch.iter().collect();
        self.batch_request(OpKind::Upsert, &recs).ok()
    }

    /// The JSON body written for one record. Beside the mapped fields:
    /// - `leadqualitycode` given as text (an action code) becomes its `lead_quality` value;
    /// - a do-not-contact flag that is `false` is left out, so that a later event of the
    ///   same customer never clears an opt-out a `DNC` event set;
    /// - upsert leaves the key column out (it is in the URL, §1.5); create-only sets it;
    /// - text is cut to the §1.8 lengths counted as Dataverse does (UTF-16 units).
    pub fn body<'a>(&'a self, rec: &'a OutboundRecord) -> LeadBody<'a> {
        LeadBody {
            connector: self,
            rec,
        }
    }

    /// The `leadqualitycode` option value for an action code given as text.
    fn lead_quality_of(&self, code: &str) -> i64 {
        let code = code.to_ascii_lowercase();
        self.lead_quality
            .get(&code)
            .or_else(|| self.lead_quality.get("other"))
            .copied()
            .unwrap_or(3)
    }

    fn upsert_url(&self, key: &str) -> String {
        format!(
            "{}/leads({}={})?$select=leadid",
            self.api,
            self.key_column,
            odata_literal(key)
        )
    }

    fn create_url(&self) -> String {
        format!("{}/leads?$select=leadid", self.api)
    }

    pub(crate) fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &AccessToken,
    ) -> Result<reqwest::RequestBuilder, DeliveryFailure> {
        let url = reqwest::Url::parse(url).map_err(|e| {
            DeliveryFailure::rejected("bad_url", format!("could not build the request URL: {e}"))
        })?;
        Ok(self
            .client
            .request(method, url)
            .bearer_auth(token.value.expose())
            .header("Accept", "application/json")
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
            .header("If-None-Match", "null"))
    }

    pub(crate) async fn send(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<PartResponse, DeliveryFailure> {
        match rb.send().await {
            Ok(resp) => read_response(resp).await,
            Err(e) => Err(leadsync_core::http::failure_from_transport(&e)),
        }
    }

    /// One write as its own request.
    async fn write_one(&self, token: &AccessToken, kind: OpKind, rec: &OutboundRecord) -> OpResult {
        let (method, url) = match kind {
            OpKind::Upsert => (
                reqwest::Method::PATCH,
                self.upsert_url(&rec.idempotency_key),
            ),
            OpKind::Create => (reqwest::Method::POST, self.create_url()),
        };
        let rb = match self.request(method, &url, token) {
            Ok(rb) => rb,
            Err(f) => return OpResult::failed(f),
        };
        let rb = rb
            .header("Content-Type", "application/json")
            .header("Prefer", "return=representation")
            .json(&self.body(rec));
        match self.send(rb).await {
            Ok(resp) => op_result(kind, &resp),
            Err(f) => OpResult::failed(f),
        }
    }

    /// Several writes in one `$batch` with continue-on-error; one result per record.
    async fn write_batch(
        &self,
        token: &AccessToken,
        kind: OpKind,
        recs: &[&OutboundRecord],
    ) -> Vec<OpResult> {
        match self.batch_request(kind, recs) {
            Ok(request) => self.send_batch(token, request).await,
            Err(f) => vec![OpResult::failed(f); recs.len()],
        }
    }

    /// The `$batch` request of several writes: what [`Connector::prepare`] makes ahead.
    ///
    /// [`Connector::prepare`]: leadsync_core::Connector::prepare
    pub(crate) fn batch_request(
        &self,
        kind: OpKind,
        recs: &[&OutboundRecord],
    ) -> Result<BatchRequest, DeliveryFailure> {
        let ops: Result<Vec<BatchOp>, serde_json::Error> = recs
            .iter()
            .map(|r| {
                Ok(BatchOp {
                    method: match kind {
                        OpKind::Upsert => "PATCH",
                        OpKind::Create => "POST",
                    },
                    url: match kind {
                        OpKind::Upsert => self.upsert_url(&r.idempotency_key),
                        OpKind::Create => self.create_url(),
                    },
                    body: serde_json::to_string(&self.body(r))?,
                })
            })
            .collect();
        let ops = ops.map_err(|e| {
            DeliveryFailure::rejected(
                "bad_body",
                format!("a record could not be written as JSON: {e}"),
            )
        })?;
        let boundary = format!("batch_{}", batch::random_id());
        let body = batch::build_request(&boundary, &ops);
        Ok(BatchRequest {
            kind,
            records: recs.len(),
            boundary,
            body,
        })
    }

    /// Send a `$batch` request and read one result per write from its answer.
    async fn send_batch(&self, token: &AccessToken, request: BatchRequest) -> Vec<OpResult> {
        let BatchRequest {
            kind,
            records: n,
            boundary,
            body,
        } = request;
        let all = |f: DeliveryFailure| vec![OpResult::failed(f); n];
        let rb = match self.request(
            reqwest::Method::POST,
            &format!("{}/$batch", self.api),
            token,
        ) {
            Ok(rb) => rb,
            Err(f) => return all(f),
        };
        let rb = rb
            .header(
                "Content-Type",
                format!("multipart/mixed; boundary={boundary}"),
            )
            .header("Prefer", "odata.continue-on-error")
            .body(body);
        let resp = match self.send(rb).await {
            Ok(r) => r,
            Err(f) => return all(f),
        };
        let ct = resp.header("content-type").unwrap_or("").to_string();
        let multipart = ct.to_ascii_lowercase().starts_with("multipart/mixed");
        // Without continue-on-error honoured, a failure answers 400 with a multipart body
        // holding the failing part (§1.6): read the parts in that case too.
        if !(resp.status == 200 || (resp.status == 400 && multipart)) {
            let mut f = classify(resp.status, &resp.headers, &resp.body);
            if resp.status == 413 {
                // The batch as a whole was too large: not the leads' fault.
                f.class = FailureClass::Transient;
            }
            return all(f);
        }
        let items = match batch::parse_response(&ct, &resp.body) {
            Ok(items) => items,
            Err(e) => {
                return all(DeliveryFailure::transient(
                    "batch_bad_response",
                    format!("the $batch answer could not be read: {e}"),
                ))
            }
        };
        batch::assign(items, n)
            .into_iter()
            .map(|slot| match slot {
                Some(part) => op_result(kind, &part),
                None => OpResult::failed(DeliveryFailure::transient(
                    "batch_part_missing",
                    "the $batch answer had no response for this lead (processing stopped before it)",
                )),
            })
            .collect()
    }

    async fn write(
        &self,
        token: &AccessToken,
        kind: OpKind,
        recs: &[&OutboundRecord],
    ) -> Vec<OpResult> {
        let mut out = Vec::with_capacity(recs.len());
        for chunk in recs.chunks(MAX_BATCH) {
            if chunk.len() == 1 {
                out.push(self.write_one(token, kind, chunk[0]).await);
            } else {
                out.extend(self.write_batch(token, kind, chunk).await);
            }
        }
        out
    }

    /// The lead whose key column holds `key`, if any.
    async fn lookup(
        &self,
        token: &AccessToken,
        key: &str,
    ) -> Result<Option<String>, DeliveryFailure> {
        let filter = format!("{} eq {}", self.key_column, odata_literal(key));
        let filter = filter.replace(' ', "%20");
        let url = format!("{}/leads?$select=leadid&$filter={filter}&$top=1", self.api);
        let rb = self.request(reqwest::Method::GET, &url, token)?;
        let resp = self.send(rb).await?;
        if resp.status != 200 {
            return Err(classify(resp.status, &resp.headers, &resp.body));
        }
        let v: Value = serde_json::from_str(&resp.body).map_err(|e| {
            DeliveryFailure::transient(
                "lookup_bad_response",
                format!("lookup answer is not JSON: {e}"),
            )
        })?;
        Ok(v["value"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|l| l["leadid"].as_str())
            .map(str::to_string))
    }

    async fn push_create_only(
        &self,
        token: &AccessToken,
        batch: &[OutboundRecord],
    ) -> Vec<DeliveryOutcome> {
        let mut outcomes: Vec<Option<DeliveryOutcome>> = vec![None; batch.len()];
        // A retried lead may already exist (its earlier create may have landed before the
        // failure): look before creating again.
        for (i, rec) in batch.iter().enumerate() {
            if rec.attempt > 1 {
                match self.lookup(token, &rec.idempotency_key).await {
                    Ok(Some(id)) => {
                        outcomes[i] = Some(DeliveryOutcome::delivered(Some(id), Some(false)))
                    }
                    Ok(None) => {}
                    Err(f) => outcomes[i] = Some(DeliveryOutcome::Failed(f)),
                }
            }
        }
        let todo: Vec<usize> = (0..batch.len())
            .filter(|i| outcomes[*i].is_none())
            .collect();
        let recs: Vec<&OutboundRecord> = todo.iter().map(|i| &batch[*i]).collect();
        let results = self.write(token, OpKind::Create, &recs).await;
        for (i, r) in todo.into_iter().zip(results) {
            let outcome = if r.status == Some(412) {
                // A duplicate: the lead is there already if its key is.
                match self.lookup(token, &batch[i].idempotency_key).await {
                    Ok(Some(id)) => DeliveryOutcome::delivered(Some(id), Some(false)),
                    Ok(None) => r.outcome,
                    Err(f) => DeliveryOutcome::Failed(f),
                }
            } else {
                r.outcome
            };
            outcomes[i] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    DeliveryOutcome::Failed(DeliveryFailure::transient("internal", "no outcome"))
                })
            })
            .collect()
    }
}
