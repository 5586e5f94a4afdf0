//! What Salesforce's answers mean: every refusal, of one record in a collection or of a
//! whole call, becomes a [`DeliveryFailure`] with a class the pipeline acts on. Salesforce's
//! own codes come first (`INVALID_SESSION_ID` is an expired token, `REQUEST_LIMIT_EXCEEDED`
//! the daily quota, a row lock or a busy server transient), then what the HTTP status
//! implies; a 300 (an external ID matching several Leads) is rejected.
//!
//! It decides, it does not act: invalidating the token and pausing are the callers' and the
//! pipeline's. Salesforce messages echo field values, so they go into the failure (for the
//! ledger) and never into a log.

use leadsync_core::http::{body_excerpt, retry_after};
use leadsync_core::{DeliveryFailure, FailureClass};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

/// How long the target pauses on Salesforce's concurrent-request limit: long-running
/// requests finish within seconds, and the pipeline also lowers the concurrency.
const CONCURRENT_LIMIT_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

use crate::rest::Answer;
use crate::SalesforceConnector;

impl SalesforceConnector {
    /// The failure of one record from a Salesforce error list (`statusCode` in collections,
    /// `errorCode` in single-resource answers).
    pub(crate) fn record_failure(
        &self,
        errors: Option<&Value>,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> DeliveryFailure {
        let errors: Vec<&Value> = match errors {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v @ Value::Object(_)) => vec![v],
            _ => Vec::new(),
        };
        let Some(first) = errors.first() else {
            return DeliveryFailure::transient(
                "bad_response",
                format!("Salesforce reported a failure without an error (HTTP {status})"),
            );
        };
        let code = error_code(first).unwrap_or("UNKNOWN").to_string();
        let message = errors
            .iter()
            .map(|e| describe_error(e))
            .collect::<Vec<_>>()
            .join("; ");
        self.classify(&code, status, message, headers)
    }

    /// The failure of every record of a call that was refused as a whole.
    pub(crate) fn request_failure(&self, answer: &Answer) -> DeliveryFailure {
        let status = answer.status;
        if status == StatusCode::MULTIPLE_CHOICES {
            return DeliveryFailure::rejected(
                "MULTIPLE_MATCHES",
                format!(
                    "HTTP 300: the external ID {} matched several Leads; nothing was written: {}",
                    self.external_id_field,
                    body_excerpt(&answer.body, 500)
                ),
            );
        }
        let parsed: Option<Value> = serde_json::from_slice(&answer.body).ok();
        let errors: Vec<Value> = match parsed {
            Some(Value::Array(a)) => a,
            Some(v @ Value::Object(_)) => vec![v],
            _ => Vec::new(),
        };
        match errors.first().and_then(error_code) {
            Some(code) => {
                let message = errors
                    .iter()
                    .map(describe_error)
                    .collect::<Vec<_>>()
                    .join("; ");
                self.classify(
                    code,
                    status,
                    format!("HTTP {}: {message}", status.as_u16()),
                    &answer.headers,
                )
            }
            None => {
                let code = format!("http_{}", status.as_u16());
                self.classify(
                    &code,
                    status,
                    format!("HTTP {status}: {}", body_excerpt(&answer.body, 500)),
                    &answer.headers,
                )
            }
        }
    }

    /// Salesforce codes first, then what the HTTP status implies.
    fn classify(
        &self,
        code: &str,
        status: StatusCode,
        message: String,
        headers: &HeaderMap,
    ) -> DeliveryFailure {
        let asked = retry_after(headers);
        let class = match code {
            "INVALID_SESSION_ID" => FailureClass::AuthExpired,
            "REQUEST_LIMIT_EXCEEDED" => FailureClass::Throttled,
            // A row lock or a busy server says nothing about the record itself.
            "UNABLE_TO_LOCK_ROW" | "SERVER_UNAVAILABLE" | "ALL_OR_NONE_OPERATION_ROLLED_BACK" => {
                FailureClass::Transient
            }
            _ => match status.as_u16() {
                401 => FailureClass::AuthExpired,
                429 => FailureClass::Throttled,
                408 | 425 => FailureClass::Transient,
                s if s >= 500 => FailureClass::Transient,
                _ => FailureClass::Rejected,
            },
        };
        let concurrent = code == "REQUEST_LIMIT_EXCEEDED" && self.is_concurrency_limit(&message);
        let mut f = DeliveryFailure::new(class, code, message).with_retry_after(asked);
        if concurrent {
            // Too many long-running requests at once: fewer in flight and a short pause, not
            // a day's wait.
            f = f.limiting_concurrency();
            f.retry_after = asked.or(Some(CONCURRENT_LIMIT_PAUSE));
        } else if class == FailureClass::Throttled
            && code == "REQUEST_LIMIT_EXCEEDED"
            && asked.is_none()
        {
            // The daily quota rolls over 24 hours; pause the target rather than hammer it.
            f.retry_after = Some(self.request_limit_pause);
        }
        f
    }

    /// `REQUEST_LIMIT_EXCEEDED` means the org's daily allocation (`TotalRequests Limit
    /// exceeded.`) or a concurrent-request limit (`ConcurrentPerOrgLongTxn Limit exceeded.`,
    /// `ConcurrentRequests (Concurrent API Requests) Limit exceeded`; the exact text is not
    /// documented). Tell them apart by the message, else by the `Sforce-Limit-Info` usage
    /// already read: an allocation that is not spent cannot be the daily limit.
    fn is_concurrency_limit(&self, message: &str) -> bool {
        let m = message.to_ascii_lowercase();
        if m.contains("concurrent") {
            return true;
        }
        if m.contains("totalrequests") {
            return false;
        }
        self.last_api_usage()
            .is_some_and(|u| u.max > 0 && u.used.saturating_mul(100) < u.max.saturating_mul(95))
    }
}

fn error_code(e: &Value) -> Option<&str> {
    e.get("statusCode")
        .or_else(|| e.get("errorCode"))
        .and_then(Value::as_str)
}

fn describe_error(e: &Value) -> String {
    let code = error_code(e).unwrap_or("UNKNOWN");
    let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
    let fields: Vec<&str> = e
        .get("fields")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if fields.is_empty() {
        format!("{code}: {msg}")
    } else {
        format!("{code}: {msg} (fields: {})", fields.join(", "))
    }
}
