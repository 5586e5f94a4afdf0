//! The connector contract: what every CRM target implements, and the failure classes it
//! reports.
//!
//! A connector speaks one CRM's protocol and classifies every answer into a
//! [`DeliveryOutcome`] per record. It must not sleep, schedule or retry in time: the pipeline
//! owns that (DESIGN.md, "Failure classes"). A connector may retry once at once after
//! refreshing an expired token, because that is part of speaking the protocol.

use async_trait::async_trait;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

use crate::lead::Lead;
use crate::mapping::{truncate_in_place, FieldLimit, MappedRecord, Mapping};

/// How the pipeline must treat a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// Connect error, timeout, reset, 5xx, 408: retry with backoff.
    Transient,
    /// 429 and its cousins: pause the whole target.
    Throttled,
    /// 401 and its cousins: the connector already refreshed once; retry at once.
    AuthExpired,
    /// The CRM refused the record itself: dead letter, never retried by itself.
    Rejected,
    /// The target, not the record: its token endpoint refuses the client
    /// (`invalid_client`), the connection is refused, DNS or TLS fails. The pipeline opens
    /// the target's circuit (pauses it as a whole and probes it) and charges no lead.
    TargetDown,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Throttled => "throttled",
            FailureClass::AuthExpired => "auth_expired",
            FailureClass::Rejected => "rejected",
            FailureClass::TargetDown => "target_down",
        }
    }
}

/// A classified failure. `message` is what the CRM said (bounded); it goes to the ledger and
/// `dead-letters list`, never to a log line, because CRMs echo field values in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    pub class: FailureClass,
    /// A short machine code safe for logs (`http_503`, `REQUIRED_FIELD_MISSING`, `0x80072322`).
    pub code: String,
    pub message: String,
    /// What the CRM asked us to wait, when it said.
    pub retry_after: Option<Duration>,
    /// A throttle that says too many requests were in flight at once (Salesforce's
    /// concurrent long-request limit), not too many over time: the pipeline lowers the
    /// target's concurrency as well as pausing it.
    pub concurrency_limit: bool,
}

impl DeliveryFailure {
    pub fn new(class: FailureClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        truncate_in_place(&mut message, 2000);
        DeliveryFailure {
            class,
            code: code.into(),
            message,
            retry_after: None,
            concurrency_limit: false,
        }
    }
    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(FailureClass::Transient, code, message)
    }
    pub fn rejected(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(FailureClass::Rejected, code, message)
    }
    pub fn throttled(
        code: impl Into<String>,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let mut f = Self::new(FailureClass::Throttled, code, message);
        f.retry_after = retry_after;
        f
    }
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }
    pub fn target_down(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(FailureClass::TargetDown, code, message)
    }
    /// Mark a throttle as a concurrency limit (see [`DeliveryFailure::concurrency_limit`]).
    pub fn limiting_concurrency(mut self) -> Self {
        self.concurrency_limit = true;
        self
    }
}

/// What happened to one record of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The CRM holds the record. `crm_ref` is its id there, when the CRM gave one; `created`
    /// tells a new record from an update of an existing one, when the CRM said.
    Delivered {
        crm_ref: Option<String>,
        created: Option<bool>,
    },
    Failed(DeliveryFailure),
}

impl DeliveryOutcome {
    pub fn delivered(crm_ref: Option<String>, created: Option<bool>) -> Self {
        DeliveryOutcome::Delivered { crm_ref, created }
    }
}

/// One record handed to a connector: the lead, its mapped CRM fields and the idempotency key
/// the connector must write with.
#[derive(Debug, Clone)]
pub struct OutboundRecord {
    pub lead_id: String,
    pub idempotency_key: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub lead: Arc<Lead>,
    pub fields: MappedRecord,
}

/// What [`Connector::prepare`] made of a batch ahead of its request: the connector's own
/// type (a serialised request body, say), read back by [`Connector::push_prepared`], with the
/// records it was made of (their idempotency keys, in order).
pub struct PreparedBatch {
    keys: Vec<String>,
    made: Box<dyn std::any::Any + Send + Sync>,
}

impl PreparedBatch {
    /// `made`, made of `batch`.
    pub fn new<T: std::any::Any + Send + Sync>(batch: &[OutboundRecord], made: T) -> Self {
        PreparedBatch {
            keys: batch.iter().map(|r| r.idempotency_key.clone()).collect(),
            made: Box::new(made),
        }
    }

    /// What was made, if it is a `T` made of `batch` (the same keys in the same order). The
    /// pipeline hands each batch what was made of it; this keeps a request made of other
    /// records from ever being sent, and its answers from landing on the wrong leads.
    pub fn take_for<T: std::any::Any>(self, batch: &[OutboundRecord]) -> Option<T> {
        let same = self.keys.len() == batch.len()
            && self
                .keys
                .iter()
                .zip(batch)
                .all(|(k, r)| *k == r.idempotency_key);
        if !same {
            return None;
        }
        self.made.downcast::<T>().ok().map(|made| *made)
    }
}

impl std::fmt::Debug for PreparedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreparedBatch")
    }
}

/// What `check` found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// One line per thing verified, safe to print (no secrets).
    pub verified: Vec<String>,
}

/// Why `check` failed, safe to print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct CheckError {
    pub what: String,
    pub reason: String,
}

/// The contract of a CRM target.
#[async_trait]
pub trait Connector: Send + Sync {
    /// The target kind (`file`, `https`, `dynamics`, ...).
    fn kind(&self) -> &'static str;

    /// The largest batch one `push` accepts.
    fn max_batch(&self) -> usize;

    /// The effective mapping: the connector's defaults with the target's `[mapping]` applied
    /// (see [`crate::build::BuildContext::mapping`]). The pipeline maps each lead with it.
    fn mapping(&self) -> &Mapping;

    /// Field lengths the CRM enforces; the mapping truncates to them.
    fn field_limits(&self) -> Vec<FieldLimit> {
        Vec::new()
    }

    /// A one-line report of the connector's own state worth showing in `status` (e.g. an
    /// API quota the CRM reported), if any. No personal data, no secrets.
    fn status_note(&self) -> Option<String> {
        None
    }

    /// Whether the target would take a request now, asked by the pipeline while the
    /// target's circuit is open, once per backoff step: connectors with a token endpoint ask
    /// it for a token (one request) and answer `Some`. `None` (the default) means there is
    /// nothing to ask: the probe is the single small batch the pipeline sends next.
    async fn probe(&self) -> Option<Result<(), DeliveryFailure>> {
        None
    }

    /// Verify configuration; with `connect`, verify credentials and reachability too.
    async fn check(&self, connect: bool) -> Result<CheckReport, CheckError>;

    /// Write a batch (at most [`Connector::max_batch`] records) idempotently. Returns exactly
    /// one outcome per record, in order.
    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome>;

    /// Work on a batch that needs no connection, such as serialising its request body. The
    /// pipeline runs it with the mapping, while other requests are in flight, so that it is
    /// not inside this request's round trip; [`Connector::push_prepared`] then sends it.
    /// `None` (the default): nothing is made ahead.
    fn prepare(&self, _batch: &[OutboundRecord]) -> Option<PreparedBatch> {
        None
    }

    /// [`Connector::push`], with what [`Connector::prepare`] made of this same batch.
    async fn push_prepared(
        &self,
        batch: &[OutboundRecord],
        _prepared: PreparedBatch,
    ) -> Vec<DeliveryOutcome> {
        self.push(batch).await
    }
}
