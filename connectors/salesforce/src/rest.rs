//! One authenticated call to the Salesforce REST API and what every answer carries: the
//! REST base (the token's `instance_url`, else the login URL), `/services/data/<version>/…`
//! URLs, the bearer header, one token refresh when Salesforce answers 401, and the org's API
//! usage read from `Sforce-Limit-Info` ([`ApiUsage`]), kept for `check` and `status`.
//!
//! What the calls are for (upserts, describe) and what their answers mean live in `push`,
//! `check` and `classify`. It logs URLs only redacted, and never a body or a token.

use leadsync_core::http::{bearer, failure_from_transport, redact_url};
use leadsync_core::oauth::AccessToken;
use leadsync_core::DeliveryFailure;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use std::sync::Arc;

use crate::SalesforceConnector;
use leadsync_core::http::is_https_or_loopback as acceptable_url;

/// The org's API request usage, from `Sforce-Limit-Info: api-usage=<used>/<max>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiUsage {
    pub used: u64,
    pub max: u64,
}

impl ApiUsage {
    /// Read the header value (`api-usage=25/15000`, possibly among other entries).
    pub fn parse(header: &str) -> Option<ApiUsage> {
        header.split([',', ';']).find_map(|part| {
            let v = part.trim().strip_prefix("api-usage=")?;
            let (used, max) = v.split_once('/')?;
            Some(ApiUsage {
                used: used.trim().parse().ok()?,
                max: max.trim().parse().ok()?,
            })
        })
    }
    fn high(&self) -> bool {
        self.max > 0 && self.used.saturating_mul(10) >= self.max.saturating_mul(9)
    }
}

/// What Salesforce answered to one call.
pub(crate) struct Answer {
    /// The token the call was made with (to invalidate exactly that one).
    pub(crate) token: Arc<AccessToken>,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl SalesforceConnector {
    /// The API usage Salesforce reported on the last response, if any.
    pub fn last_api_usage(&self) -> Option<ApiUsage> {
        self.usage.lock().ok().and_then(|u| *u)
    }

    fn note_usage(&self, headers: &HeaderMap) {
        let Some(usage) = headers
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
            .and_then(ApiUsage::parse)
        else {
            return;
        };
        let previous = self.usage.lock().ok().and_then(|mut u| u.replace(usage));
        if usage.high() && !previous.is_some_and(|p| p.high()) {
            tracing::warn!(
                api_used = usage.used,
                api_max = usage.max,
                "Salesforce API usage above 90% of the org's daily allocation"
            );
        } else {
            tracing::debug!(
                api_used = usage.used,
                api_max = usage.max,
                "Salesforce API usage"
            );
        }
    }

    /// The REST base for a token: its `instance_url`, else the login URL.
    pub(crate) fn instance(&self, token: &AccessToken) -> Result<Url, DeliveryFailure> {
        match token.extra.get("instance_url").and_then(Value::as_str) {
            None => Ok(self.login_url.clone()),
            Some(s) => {
                let url = Url::parse(s).map_err(|_| {
                    DeliveryFailure::transient(
                        "bad_instance_url",
                        "the token response's instance_url is not a URL",
                    )
                })?;
                if !acceptable_url(&url) {
                    return Err(DeliveryFailure::transient(
                        "bad_instance_url",
                        "the token response's instance_url is not https",
                    ));
                }
                Ok(url)
            }
        }
    }

    fn data_url(&self, base: &Url, segments: &[&str]) -> Result<Url, DeliveryFailure> {
        let mut url = base.clone();
        url.set_query(None);
        {
            let mut path = url.path_segments_mut().map_err(|_| {
                DeliveryFailure::transient("bad_instance_url", "instance_url cannot be a base")
            })?;
            path.clear()
                .extend(["services", "data", self.api_version.as_str()])
                .extend(segments);
        }
        Ok(url)
    }

    /// One authenticated REST call. A failure to get a token or to get any answer is
    /// returned as the failure of every record in the call.
    pub(crate) async fn call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&(impl serde::Serialize + ?Sized)>,
    ) -> Result<Answer, DeliveryFailure> {
        let token = self.tokens.get().await.map_err(|e| {
            tracing::warn!(code = %e.code, "Salesforce token request failed");
            e.to_failure()
        })?;
        let base = self.instance(&token)?;
        let url = self.data_url(&base, segments)?;
        let mut req = self
            .client
            .request(method, url.clone())
            .header(reqwest::header::AUTHORIZATION, bearer(&token.value))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            let f = failure_from_transport(&e);
            tracing::warn!(url = %redact_url(&url), code = %f.code, "Salesforce request failed");
            f
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| failure_from_transport(&e))?;
        self.note_usage(&headers);
        tracing::debug!(
            url = %redact_url(&url),
            status = status.as_u16(),
            "Salesforce answered"
        );
        if status == StatusCode::UNAUTHORIZED {
            // One refresh for all callers that used this token; the pipeline retries at once.
            self.tokens.invalidate(&token).await;
        }
        Ok(Answer {
            token,
            status,
            headers,
            body: bytes.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_header() {
        assert_eq!(
            ApiUsage::parse("api-usage=25/15000"),
            Some(ApiUsage {
                used: 25,
                max: 15000
            })
        );
        assert_eq!(
            ApiUsage::parse("per-app-api-usage=1/10(appName=x), api-usage=3/5"),
            Some(ApiUsage { used: 3, max: 5 })
        );
        assert_eq!(ApiUsage::parse("nonsense"), None);
    }
}
