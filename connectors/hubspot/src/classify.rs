//! What HubSpot's refusals mean (`spec/crm-apis.md` §5.3): each becomes a
//! [`DeliveryFailure`] whose class the pipeline acts on.
//!
//! | answer | class |
//! |---|---|
//! | 401 (a static token: wrong or revoked, not stale), 403 (missing scopes) | target down |
//! | 429 `TEN_SECONDLY_ROLLING` | throttled for `Retry-After`, else the window (10 s) |
//! | 429 `SECONDLY` | throttled 1 s |
//! | 429 `DAILY` | throttled until the next hour (HubSpot does not say when the day ends) |
//! | 423 Locked | throttled 2 s (HubSpot asks for at least 2 s) |
//! | 408, 5xx | transient |
//! | 400 and other 4xx | rejected (a whole batch is split by `push` first) |
//! | an input's error in a 207 | rejected with HubSpot's category and message |
//!
//! HubSpot messages can echo values: they go into the failure (for the ledger), never into
//! a log.

use leadsync_core::http::{body_excerpt, failure_from_response, retry_after};
use leadsync_core::{DeliveryFailure, FailureClass};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// The failure of a whole call HubSpot answered with a non-success status.
pub(crate) fn call_failure(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> DeliveryFailure {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |k: &str| parsed.get(k).and_then(Value::as_str).unwrap_or("");
    let category = text("category");
    let message = format!(
        "HubSpot answered {status}: {}",
        if text("message").is_empty() {
            body_excerpt(body, 500)
        } else {
            body_excerpt(text("message").as_bytes(), 500)
        }
    );
    match status.as_u16() {
        401 | 403 => DeliveryFailure::target_down(
            format!(
                "hubspot_{}",
                if category.is_empty() {
                    status.as_str()
                } else {
                    category
                }
            ),
            format!("{message} (check the private app's token and its scopes)"),
        ),
        429 => {
            let policy = text("policyName");
            let wait = match policy {
                "DAILY" => Duration::from_secs(3600),
                "SECONDLY" => Duration::from_secs(1),
                _ => retry_after(headers)
                    .or_else(|| interval(headers))
                    .unwrap_or(Duration::from_secs(10)),
            };
            let code = if policy.is_empty() {
                "hubspot_429".to_string()
            } else {
                format!("hubspot_{policy}")
            };
            DeliveryFailure::throttled(code, message, Some(wait))
        }
        423 => DeliveryFailure::throttled("hubspot_423", message, Some(Duration::from_secs(2))),
        _ => {
            let f = failure_from_response(status, headers, body);
            let code = if category.is_empty() {
                f.code
            } else {
                format!("hubspot_{category}")
            };
            DeliveryFailure::new(f.class, code, message).with_retry_after(f.retry_after)
        }
    }
}

/// `X-HubSpot-RateLimit-Interval-Milliseconds`: the burst window's length.
fn interval(headers: &HeaderMap) -> Option<Duration> {
    let ms: u64 = headers
        .get("x-hubspot-ratelimit-interval-milliseconds")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms.clamp(100, 60_000)))
}

/// The failure of one input HubSpot refused in a 207 (or a 400 for a lone input).
pub(crate) fn input_failure(error: &Value) -> DeliveryFailure {
    let text = |k: &str| error.get(k).and_then(Value::as_str).unwrap_or("");
    let category = if text("category").is_empty() {
        "error"
    } else {
        text("category")
    };
    let mut message = format!(
        "HubSpot refused the contact ({category}): {}",
        text("message")
    );
    if let Some(errors) = error.get("errors").and_then(Value::as_array) {
        for e in errors.iter().take(5) {
            if let Some(m) = e.get("message").and_then(Value::as_str) {
                message.push_str("; ");
                message.push_str(m);
            }
        }
    }
    DeliveryFailure::new(
        FailureClass::Rejected,
        format!("hubspot_{category}"),
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn classes_of_answers() {
        let ten = br#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}"#;
        let f = call_failure(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("x-hubspot-ratelimit-interval-milliseconds", "10000")]),
            ten,
        );
        assert_eq!(f.class, FailureClass::Throttled);
        assert_eq!(f.code, "hubspot_TEN_SECONDLY_ROLLING");
        assert_eq!(f.retry_after, Some(Duration::from_secs(10)));
        let f = call_failure(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "3")]),
            ten,
        );
        assert_eq!(f.retry_after, Some(Duration::from_secs(3)));
        let daily = br#"{"status":"error","policyName":"DAILY","message":"daily"}"#;
        let f = call_failure(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), daily);
        assert_eq!(f.retry_after, Some(Duration::from_secs(3600)));
        let auth = br#"{"status":"error","message":"Authentication credentials not found.","category":"INVALID_AUTHENTICATION"}"#;
        let f = call_failure(StatusCode::UNAUTHORIZED, &HeaderMap::new(), auth);
        assert_eq!(
            (f.class, f.code.as_str()),
            (FailureClass::TargetDown, "hubspot_INVALID_AUTHENTICATION")
        );
        let f = call_failure(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"");
        assert_eq!(f.class, FailureClass::Transient);
        let f = call_failure(StatusCode::LOCKED, &HeaderMap::new(), b"{}");
        assert_eq!(f.class, FailureClass::Throttled);
        let bad = br#"{"status":"error","message":"Property values were not valid","category":"VALIDATION_ERROR"}"#;
        let f = call_failure(StatusCode::BAD_REQUEST, &HeaderMap::new(), bad);
        assert_eq!(
            (f.class, f.code.as_str()),
            (FailureClass::Rejected, "hubspot_VALIDATION_ERROR")
        );
    }
}
