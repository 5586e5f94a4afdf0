//! One call to the Marketo REST API: paced under the instance's limits, authenticated with
//! the cached token, and read through Marketo's response envelope
//! (`{"requestId","success","result"|"errors"}`, HTTP 200 even for errors). A 600/601/602
//! answer (token empty, invalid or expired) drops the token and repeats the call once with a fresh one;
//! every other response-level error becomes the failure of the whole call (`classify`).
//!
//! What the calls are for lives in `push` and `check`. It logs URLs only redacted, codes
//! and statuses, never a body or a token.

use leadsync_core::http::{
    bearer, body_excerpt, failure_from_response, failure_from_transport, redact_url,
};
use leadsync_core::DeliveryFailure;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::classify::response_failure;
use crate::MarketoConnector;

impl MarketoConnector {
    /// One REST call (`path` under `/rest/`, e.g. `v1/leads.json`); the answer's `result`
    /// array on success.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Vec<Value>, DeliveryFailure> {
        let url = self
            .rest_url
            .join(path)
            .map_err(|e| DeliveryFailure::transient("bad_url", e.to_string()))?;
        let mut refreshed = false;
        loop {
            let token = self.tokens.get().await.map_err(|e| {
                tracing::warn!(code = %e.code, "Marketo token request failed");
                e.to_failure()
            })?;
            let answer = {
                let _permit = self.pacer.acquire().await;
                let mut req = self
                    .client
                    .request(method.clone(), url.clone())
                    .header(reqwest::header::AUTHORIZATION, bearer(&token.value))
                    .header(reqwest::header::ACCEPT, "application/json");
                if let Some(b) = body {
                    req = req.json(b);
                }
                let resp = req.send().await.map_err(|e| {
                    let f = failure_from_transport(&e);
                    tracing::debug!(url = %redact_url(&url), code = %f.code, "Marketo request failed");
                    f
                })?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let bytes = resp.bytes().await.map_err(|e| failure_from_transport(&e))?;
                (status, headers, bytes)
            };
            let (status, headers, bytes) = answer;
            tracing::debug!(url = %redact_url(&url), status = status.as_u16(), "Marketo answered");
            if status != StatusCode::OK {
                return Err(failure_from_response(status, &headers, &bytes));
            }
            let envelope: Value = serde_json::from_slice(&bytes).map_err(|_| {
                DeliveryFailure::transient(
                    "bad_response",
                    format!(
                        "Marketo answered 200 without JSON: {}",
                        body_excerpt(&bytes, 300)
                    ),
                )
            })?;
            if envelope.get("success").and_then(Value::as_bool) == Some(true) {
                return Ok(match envelope.get("result") {
                    Some(Value::Array(a)) => a.clone(),
                    _ => Vec::new(),
                });
            }
            let (code, message) = first_error(&envelope);
            if matches!(code.as_str(), "600" | "601" | "602") && !refreshed {
                // One refresh for every caller that used this token, then once more.
                self.tokens.invalidate(&token).await;
                refreshed = true;
                continue;
            }
            return Err(response_failure(&code, &message, chrono::Utc::now()));
        }
    }
}

/// The first entry of a failed answer's `errors`: its code (a string, though Marketo
/// documents an integer in quotes; a bare number is read too) and message.
pub(crate) fn first_error(envelope: &Value) -> (String, String) {
    let first = envelope
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    let code = match first.and_then(|e| e.get("code")) {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let message = first
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    (code, message)
}
