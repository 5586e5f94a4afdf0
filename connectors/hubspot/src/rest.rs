//! One call to the HubSpot API: paced under the portal's burst limit, authenticated with
//! the static token, and the daily usage read from the rate-limit headers
//! (`X-HubSpot-RateLimit-Daily`, `-Daily-Remaining`), kept for `status`. A non-success
//! answer becomes the failure of the whole call (`classify`); a 207 is the caller's to read.
//!
//! It logs URLs only redacted, codes and statuses, never a body or the token.

use leadsync_core::http::{bearer, failure_from_transport, redact_url};
use leadsync_core::DeliveryFailure;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::classify::call_failure;
use crate::HubSpotConnector;

/// The portal's daily API usage, from the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyUsage {
    pub max: u64,
    pub remaining: u64,
}

impl DailyUsage {
    fn from_headers(headers: &HeaderMap) -> Option<DailyUsage> {
        let num = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse().ok();
        Some(DailyUsage {
            max: num("x-hubspot-ratelimit-daily")?,
            remaining: num("x-hubspot-ratelimit-daily-remaining")?,
        })
    }
    fn low(&self) -> bool {
        self.max > 0 && self.remaining.saturating_mul(10) <= self.max
    }
}

/// A successful answer: its status (200, 201 or 207) and JSON body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl HubSpotConnector {
    /// The daily usage HubSpot reported on the last response, if any.
    pub fn last_daily_usage(&self) -> Option<DailyUsage> {
        self.daily.lock().ok().and_then(|d| *d)
    }

    fn note_usage(&self, headers: &HeaderMap) {
        let Some(usage) = DailyUsage::from_headers(headers) else {
            return;
        };
        let previous = self.daily.lock().ok().and_then(|mut d| d.replace(usage));
        if usage.low() && !previous.is_some_and(|p| p.low()) {
            tracing::warn!(
                daily_remaining = usage.remaining,
                daily_max = usage.max,
                "HubSpot: less than 10% of the portal's daily API calls left"
            );
        }
    }

    /// One call (`path` under the base URL); the answer of a 2xx, else the failure.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, DeliveryFailure> {
        let url = self
            .base_url
            .join(path)
            .map_err(|e| DeliveryFailure::transient("bad_url", e.to_string()))?;
        let (status, headers, bytes) = {
            let _permit = self.pacer.acquire().await;
            let mut req = self
                .client
                .request(method, url.clone())
                .header(reqwest::header::AUTHORIZATION, bearer(&self.token))
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| {
                let f = failure_from_transport(&e);
                tracing::debug!(url = %redact_url(&url), code = %f.code, "HubSpot request failed");
                f
            })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.map_err(|e| failure_from_transport(&e))?;
            (status, headers, bytes)
        };
        self.note_usage(&headers);
        tracing::debug!(url = %redact_url(&url), status = status.as_u16(), "HubSpot answered");
        if !status.is_success() {
            return Err(call_failure(status, &headers, &bytes));
        }
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|_| {
                DeliveryFailure::transient(
                    "bad_response",
                    format!("HubSpot answered {status} without JSON"),
                )
            })?
        };
        Ok(Answer { status, body })
    }
}
