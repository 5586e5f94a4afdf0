//! OAuth access tokens: one cache per target, renewed before expiry, and refreshed once
//! (not once per caller) when the CRM says the token went stale.
//!
//! [`TokenCache::get`] hands out the current token, fetching a new one when there is none or
//! it expires within the refresh margin; the fetch happens under a lock, so concurrent
//! callers wait for one request instead of each sending their own. On a 401 a connector
//! calls [`TokenCache::invalidate`] with the token it used: only if that token is still the
//! cached one is it dropped, so a burst of 401s from one stale token causes one refresh.
//!
//! [`FormTokenSource`] is the client-credentials request (Microsoft Entra ID, Salesforce,
//! Marketo all take a form POST and answer `access_token` + `expires_in`); a connector
//! whose grant needs a freshly signed assertion implements [`TokenSource`] itself and reuses
//! [`parse_token_response`].

use async_trait::async_trait;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

use crate::connector::FailureClass;
use crate::http::{body_excerpt, failure_from_transport, redact_url, retry_after};
use crate::pii::Secret;

/// An access token and what came with it.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub value: Secret,
    pub expires_at: Instant,
    /// The whole token response minus the token itself (e.g. Salesforce's `instance_url`).
    pub extra: serde_json::Map<String, Value>,
}

/// Why a token could not be had. `class` tells the pipeline how to treat records that
/// needed it: `Rejected` for credentials the server refused (`invalid_client`), transient
/// or throttled for a server that did not answer well.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token request failed ({code}): {message}")]
pub struct TokenError {
    pub class: FailureClass,
    pub code: String,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl TokenError {
    /// Turn into a per-record failure.
    pub fn to_failure(&self) -> crate::connector::DeliveryFailure {
        // A refused credential (`invalid_client`, an expired secret) is about the target,
        // not the lead: the pipeline pauses the target and probes it until an operator fixes
        // it, and no lead spends an attempt or becomes a dead letter meanwhile.
        let class = match self.class {
            FailureClass::Rejected | FailureClass::AuthExpired => FailureClass::TargetDown,
            other => other,
        };
        crate::connector::DeliveryFailure::new(class, self.code.clone(), self.message.clone())
            .with_retry_after(self.retry_after)
    }
}

#[async_trait]
pub trait TokenSource: Send + Sync {
    async fn fetch(&self) -> Result<AccessToken, TokenError>;
}

pub struct TokenCache {
    source: Box<dyn TokenSource>,
    current: Mutex<Option<Arc<AccessToken>>>,
    /// Renew this long before expiry.
    margin: Duration,
    /// Fetches started so far, and the last one that failed (its number and error): callers
    /// that queued behind a failing fetch share its answer instead of each asking again.
    fetches: std::sync::atomic::AtomicU64,
    last_failure: std::sync::Mutex<Option<(u64, TokenError)>>,
}

impl TokenCache {
    pub fn new(source: Box<dyn TokenSource>) -> Self {
        Self::with_margin(source, Duration::from_secs(120))
    }

    pub fn with_margin(source: Box<dyn TokenSource>, margin: Duration) -> Self {
        TokenCache {
            source,
            current: Mutex::new(None),
            margin,
            fetches: std::sync::atomic::AtomicU64::new(0),
            last_failure: std::sync::Mutex::new(None),
        }
    }

    /// The current token, fetched (once, for all waiting callers) when missing or near
    /// expiry. Callers that were waiting while a fetch failed get that failure: a refused
    /// client secret costs one token request per burst, not one per caller.
    pub async fn get(&self) -> Result<Arc<AccessToken>, TokenError> {
        use std::sync::atomic::Ordering;
        let seen = self.fetches.load(Ordering::SeqCst);
        let mut current = self.current.lock().await;
        if let Some(t) = current.as_ref() {
            if t.expires_at > Instant::now() + self.margin {
                return Ok(Arc::clone(t));
            }
        }
        if let Ok(last) = self.last_failure.lock() {
            if let Some((n, e)) = last.as_ref().filter(|(n, _)| *n > seen) {
                tracing::trace!(
                    fetch = n,
                    "sharing the failure of the token request just made"
                );
                return Err(e.clone());
            }
        }
        let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        match self.source.fetch().await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                tracing::debug!("access token renewed");
                *current = Some(Arc::clone(&fresh));
                Ok(fresh)
            }
            Err(e) => {
                if let Ok(mut last) = self.last_failure.lock() {
                    *last = Some((n, e.clone()));
                }
                Err(e)
            }
        }
    }

    /// The CRM refused `stale`: drop it if it is still the cached token, so the next `get`
    /// fetches a new one. Later callers holding the same stale token do nothing.
    pub async fn invalidate(&self, stale: &AccessToken) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|t| t.value.expose() == stale.value.expose())
        {
            *current = None;
        }
    }
}

/// Read a token endpoint's JSON answer. `default_lifetime` applies when it gives no
/// `expires_in` (Salesforce does not).
pub fn parse_token_response(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    default_lifetime: Duration,
) -> Result<AccessToken, TokenError> {
    if !status.is_success() {
        let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_slice(body).ok();
        let err = parsed
            .as_ref()
            .and_then(|m| m.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let desc = parsed
            .as_ref()
            .and_then(|m| m.get("error_description"))
            .and_then(Value::as_str)
            .map(|d| body_excerpt(d.as_bytes(), 300))
            .unwrap_or_else(|| body_excerpt(body, 300));
        let class = match status.as_u16() {
            429 => FailureClass::Throttled,
            408 => FailureClass::Transient,
            s if s >= 500 => FailureClass::Transient,
            _ => FailureClass::Rejected,
        };
        let code = if err.is_empty() {
            format!("token_http_{}", status.as_u16())
        } else {
            format!("token_{err}")
        };
        return Err(TokenError {
            class,
            code,
            message: format!("token endpoint answered {status}: {desc}"),
            retry_after: retry_after(headers),
        });
    }
    let mut map: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| TokenError {
            class: FailureClass::Transient,
            code: "token_bad_response".into(),
            message: format!("token endpoint answered with invalid JSON: {e}"),
            retry_after: None,
        })?;
    let token = match map.remove("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t,
        _ => {
            return Err(TokenError {
                class: FailureClass::Transient,
                code: "token_bad_response".into(),
                message: "token endpoint answered without an access_token".into(),
                retry_after: None,
            })
        }
    };
    let lifetime = match map.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64().map(Duration::from_secs),
        Some(Value::String(s)) => s.parse().ok().map(Duration::from_secs),
        _ => None,
    }
    .unwrap_or(default_lifetime);
    Ok(AccessToken {
        value: Secret::new(token),
        expires_at: Instant::now() + lifetime,
        extra: map,
    })
}

/// A token fetched by POSTing a form (client-credentials grant and its cousins).
pub struct FormTokenSource {
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    /// Form fields; secrets stay wrapped until the request is built.
    pub form: Vec<(String, Secret)>,
    pub default_lifetime: Duration,
}

#[async_trait]
impl TokenSource for FormTokenSource {
    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let form: Vec<(&str, &str)> = self
            .form
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        let resp = self
            .client
            .post(self.url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                let f = failure_from_transport(&e);
                TokenError {
                    class: f.class,
                    code: format!("token_{}", f.code),
                    message: format!("token endpoint {}: {}", redact_url(&self.url), f.message),
                    retry_after: None,
                }
            })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| TokenError {
            class: FailureClass::Transient,
            code: "token_body_error".into(),
            message: e.to_string(),
            retry_after: None,
        })?;
        parse_token_response(status, &headers, &body, self.default_lifetime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(Arc<AtomicUsize>);

    #[async_trait]
    impl TokenSource for Counting {
        async fn fetch(&self) -> Result<AccessToken, TokenError> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(AccessToken {
                value: Secret::new(format!("token-{n}")),
                expires_at: Instant::now() + Duration::from_secs(3600),
                extra: Default::default(),
            })
        }
    }

    #[tokio::test]
    async fn one_fetch_for_many_callers_and_one_refresh_per_stale_token() {
        let fetches = Arc::new(AtomicUsize::new(0));
        let cache = Arc::new(TokenCache::new(Box::new(Counting(fetches.clone()))));
        let tokens = futures_join(&cache, 10).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(tokens.iter().all(|t| t.value.expose() == "token-0"));
        // Ten callers report the same stale token: one refresh.
        for t in &tokens {
            cache.invalidate(t).await;
        }
        let again = futures_join(&cache, 10).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        assert!(again.iter().all(|t| t.value.expose() == "token-1"));
        // A late 401 with the old token does not throw away the new one.
        cache.invalidate(&tokens[0]).await;
        assert_eq!(cache.get().await.unwrap().value.expose(), "token-1");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    async fn futures_join(cache: &Arc<TokenCache>, n: usize) -> Vec<Arc<AccessToken>> {
        let mut handles = Vec::new();
        for _ in 0..n {
            let c = Arc::clone(cache);
            handles.push(tokio::spawn(async move { c.get().await.unwrap() }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    #[test]
    fn token_responses() {
        let ok = br#"{"token_type":"Bearer","expires_in":3599,"access_token":"eyJ0","instance_url":"https://x.my.salesforce.com"}"#;
        let t = parse_token_response(
            reqwest::StatusCode::OK,
            &Default::default(),
            ok,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(t.value.expose(), "eyJ0");
        assert!(t.expires_at > Instant::now() + Duration::from_secs(3500));
        assert_eq!(t.extra["instance_url"], "https://x.my.salesforce.com");
        assert!(!t.extra.contains_key("access_token"));
        let bad = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#;
        let e = parse_token_response(
            reqwest::StatusCode::UNAUTHORIZED,
            &Default::default(),
            bad,
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert_eq!(e.code, "token_invalid_client");
        assert_eq!(e.class, FailureClass::Rejected);
        assert!(e.message.contains("AADSTS7000215"));
        let e = parse_token_response(
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            &Default::default(),
            b"",
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert_eq!(e.class, FailureClass::Transient);
    }
}
