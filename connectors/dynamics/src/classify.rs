//! What Dataverse's answers mean. [`classify`] turns a non-success answer (a whole request or
//! one `$batch` part) into a [`DeliveryFailure`]: a 429, or any answer carrying one of the
//! §1.7 service-protection codes, is throttled (with `Retry-After`); otherwise the HTTP
//! status decides. Code and message are Dataverse's `error.code` and `error.message`.
//! `op_result` turns one write's answer into a [`DeliveryOutcome`] (created or updated, and
//! the `leadid`), keeping the status that create-only mode needs to spot a 412 duplicate.
//!
//! It decides, it does not act: token refresh and lookups are `push`'s, pausing the
//! pipeline's. Messages go into the failure (for the ledger), never into a log.

use leadsync_core::http::{body_excerpt, class_of_status};
use leadsync_core::retry_after::parse_retry_after;
use leadsync_core::{DeliveryFailure, DeliveryOutcome, FailureClass};
use serde_json::Value;

use crate::batch::{self, PartResponse};

/// The §1.7 service-protection codes: whatever the status, they mean "throttled".
pub const THROTTLE_CODES: &[&str] = &["0x80072322", "0x80072321", "0x80072326"];

/// What Dataverse's error body says: `{"error":{"code","message"}}` (spec §1.3).
fn error_of(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let e = &v["error"];
    let code = e["code"].as_str().unwrap_or("").trim().to_string();
    let message = e["message"].as_str().unwrap_or("").to_string();
    (code, message)
}

/// Classify a non-success answer (a whole request or one batch part).
pub fn classify(status: u16, headers: &[(String, String)], body: &str) -> DeliveryFailure {
    let (code, message) = error_of(body);
    let retry_after = batch::header_of(headers, "retry-after")
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
    let message = if message.is_empty() {
        let excerpt = body_excerpt(body.as_bytes(), 300);
        if excerpt.is_empty() {
            format!("Dataverse answered HTTP {status}")
        } else {
            format!("Dataverse answered HTTP {status}: {excerpt}")
        }
    } else {
        message
    };
    let code = if code.is_empty() {
        format!("http_{status}")
    } else {
        code
    };
    if status == 429 || THROTTLE_CODES.contains(&code.as_str()) {
        return DeliveryFailure::throttled(code, message, retry_after);
    }
    let class = match reqwest::StatusCode::from_u16(status) {
        Ok(s) => class_of_status(s),
        Err(_) => FailureClass::Transient,
    };
    DeliveryFailure::new(class, code, message).with_retry_after(retry_after)
}

/// The lead id of a write's answer: `leadid` of the representation, else the GUID in
/// `OData-EntityId` (a key-form id such as `leads(col='x')` gives none).
fn lead_id_of(resp: &PartResponse) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<Value>(&resp.body) {
        if let Some(id) = v["leadid"].as_str() {
            return Some(id.to_string());
        }
    }
    let eid = resp.header("odata-entityid")?;
    let inner = eid.rsplit_once('(')?.1.trim_end_matches(')');
    let looks_like_guid =
        inner.len() == 36 && inner.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    looks_like_guid.then(|| inner.to_string())
}

/// One write's result with the HTTP status it came from (create-only mode needs the 412s).
#[derive(Debug, Clone)]
pub(crate) struct OpResult {
    pub(crate) status: Option<u16>,
    pub(crate) outcome: DeliveryOutcome,
}

impl OpResult {
    pub(crate) fn failed(f: DeliveryFailure) -> Self {
        OpResult {
            status: None,
            outcome: DeliveryOutcome::Failed(f),
        }
    }
}

/// Which write: an upsert by the key column, or a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Upsert,
    Create,
}

/// One write's answer as its outcome.
pub(crate) fn op_result(kind: OpKind, resp: &PartResponse) -> OpResult {
    let outcome = match resp.status {
        201 => DeliveryOutcome::delivered(lead_id_of(resp), Some(true)),
        200 => DeliveryOutcome::delivered(lead_id_of(resp), Some(false)),
        204 => DeliveryOutcome::delivered(
            lead_id_of(resp),
            // Without a representation an upsert does not say which it was (§1.5).
            (kind == OpKind::Create).then_some(true),
        ),
        s if (200..300).contains(&s) => DeliveryOutcome::delivered(lead_id_of(resp), None),
        s => DeliveryOutcome::Failed(classify(s, &resp.headers, &resp.body)),
    };
    OpResult {
        status: Some(resp.status),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::{odata_literal, utf16_prefix};
    use std::time::Duration;

    #[test]
    fn literals_truncation_and_classes() {
        assert_eq!(odata_literal("ab12"), "'ab12'");
        assert_eq!(odata_literal("it's a/b"), "'it''s%20a%2Fb'");
        // 😀 is two UTF-16 units: it does not fit in the second.
        assert_eq!(utf16_prefix("a😀b", 2), "a");
        assert_eq!(utf16_prefix("a😀b", 3), "a😀");
        assert_eq!(utf16_prefix("abc", 3), "abc");

        let h = vec![("Retry-After".to_string(), "7".to_string())];
        let f = classify(
            429,
            &h,
            r#"{"error":{"code":"0x80072322","message":"Number of requests exceeded"}}"#,
        );
        assert_eq!(f.class, FailureClass::Throttled);
        assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(f.code, "0x80072322");
        let f = classify(503, &[], r#"{"error":{"code":"0x80072326","message":"x"}}"#);
        assert_eq!(f.class, FailureClass::Throttled);
        let f = classify(
            400,
            &[],
            r#"{"error":{"code":"0x80044331","message":"A validation error occurred."}}"#,
        );
        assert_eq!(
            (f.class, f.code.as_str(), f.message.as_str()),
            (
                FailureClass::Rejected,
                "0x80044331",
                "A validation error occurred."
            )
        );
        let f = classify(412, &[], r#"{"error":{"code":"","message":"dup"}}"#);
        assert_eq!(
            (f.class, f.code.as_str()),
            (FailureClass::Rejected, "http_412")
        );
        assert_eq!(classify(401, &[], "").class, FailureClass::AuthExpired);
        assert_eq!(classify(502, &[], "<html>").class, FailureClass::Transient);
    }
}
