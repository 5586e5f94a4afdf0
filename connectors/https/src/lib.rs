//! The HTTPS endpoint target: each lead POSTed as JSON to a URL the publisher owns (a Power
//! Automate "When a HTTP request is received" flow, a webhook, an API gateway).
//!
//! It owns the request: the body ([`body`]: the marketplace's own HTTPS-endpoint shape by
//! default, so existing flows keep working; optionally extended with leadsync's fields, or
//! the target's mapping as a flat object; optionally an array of them per request), the
//! `Idempotency-Key` header, the optional HMAC signature ([`signature`]), auth from secrets,
//! TLS through `leadsync_core::http::build_client` (verification always on, extra CA, client
//! certificate), and the classification of every answer. It never waits or retries in time:
//! the pipeline does.
//!
//! The URL is treated as a secret (Power Automate URLs carry their signature in the query
//! string): it is resolved from a `SecretRef` and only `redact_url` (scheme, host, port,
//! path) ever reaches a log line or a stored message.

pub mod body;
pub mod signature;

use async_trait::async_trait;
use leadsync_core::http::{self, HttpSettings, HttpSetupError};
use leadsync_core::{
    BuildContext, BuildError, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome,
    FailureClass, FieldRule, Mapping, OutboundRecord, Secret, SecretRef,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// Records per push at most: one request each, or one array in batch mode.
pub const MAX_BATCH: usize = 100;
/// The most of a response body read (for `crm_ref` and error excerpts).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The most of a response body kept in a failure message.
const EXCERPT_CHARS: usize = 500;

/// Which body the target sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyShape {
    /// The marketplace's HTTPS-endpoint body (`UserDetails{...}`, `LeadSource`, `ActionCode`,
    /// `OfferTitle`, `Description`). The target's mapping is not used.
    #[default]
    Marketplace,
    /// The target's mapping fields as a flat JSON object.
    Mapped,
}

/// How the target authenticates, besides any signature in the URL itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSettings {
    /// `Authorization: Bearer <token>`.
    Bearer { token: SecretRef },
    /// `Authorization: Basic base64(<username>:<password>)`.
    Basic {
        username: String,
        password: SecretRef,
    },
    /// `<name>: <value>` (an API key header).
    Header { name: String, value: SecretRef },
}

/// `[connection.signature]`: HMAC-SHA256 over `<timestamp>.<body>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureSettings {
    pub secret: SecretRef,
    #[serde(default = "default_timestamp_header")]
    pub timestamp_header: String,
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
}

fn default_timestamp_header() -> String {
    signature::DEFAULT_TIMESTAMP_HEADER.to_string()
}
fn default_signature_header() -> String {
    signature::DEFAULT_SIGNATURE_HEADER.to_string()
}

/// `[connection]` of a `kind = "https"` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsSettings {
    /// The endpoint. A secret: `{ env = ... }`, `{ file = ... }`, `{ credential = ... }`, or
    /// inline for URLs that carry no signature.
    pub url: SecretRef,
    /// Accept an `http://` URL (tests, a receiver on the same host). Default false.
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub body: BodyShape,
    /// Add a `Leadsync` object (lead id, idempotency key, offer, test and DNC flags) to the
    /// marketplace body.
    #[serde(default)]
    pub extended: bool,
    /// Send a JSON array of bodies per request (up to `limits.batch_size`, at most 100).
    #[serde(default)]
    pub batch: bool,
    #[serde(default)]
    pub auth: Option<AuthSettings>,
    #[serde(default)]
    pub signature: Option<SignatureSettings>,
    /// Extra fixed headers (not secrets: they are shown by `check`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Timeouts, extra CA, client certificate.
    #[serde(default)]
    pub http: HttpSettings,
}

impl HttpsSettings {
    /// Whether the target's `[mapping]` shapes the body (`body = "mapped"`).
    pub fn uses_mapping(&self) -> bool {
        self.body == BodyShape::Mapped
    }
}

/// Why the HTTPS target cannot be built; [`HttpsError::key`] names the setting.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("{0}")]
    Url(String),
    #[error(transparent)]
    Http(#[from] HttpSetupError),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Signature(String),
    #[error("{0}")]
    Headers(String),
}

impl HttpsError {
    /// The `[connection]` key at fault, for the configuration error.
    pub fn key(&self) -> &'static str {
        match self {
            HttpsError::Url(_) => "connection.url",
            HttpsError::Http(_) => "connection.http",
            HttpsError::Auth(_) => "connection.auth",
            HttpsError::Signature(_) => "connection.signature",
            HttpsError::Headers(_) => "connection.headers",
        }
    }
}

/// Build an HTTPS target from its settings (the registry's entry for kind `https`).
pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    let settings: HttpsSettings = ctx.settings()?;
    if !settings.uses_mapping() && !ctx.mapping.is_empty() {
        return Err(BuildError::new(
            "mapping.fields",
            "the marketplace body is fixed and uses no mapping; set connection.body = \"mapped\" to send mapped fields",
        ));
    }
    let mapping = ctx.mapping(default_mapping(&settings));
    let mut connector = HttpsConnector::try_new(settings, ctx.base_dir)
        .map_err(|e| BuildError::new(e.key(), e.to_string()))?;
    connector.mapping = mapping;
    Ok(Arc::new(connector))
}

/// The default mapping, used only with `body = "mapped"`: marketplace-style names, flat.
/// With the marketplace body it is empty: that body is fixed.
pub fn default_mapping(settings: &HttpsSettings) -> Mapping {
    if !settings.uses_mapping() {
        return Mapping::default();
    }
    let f = FieldRule::field;
    let rules = [
        f("FirstName", "first_name"),
        f("LastName", "last_name"),
        f("Email", "email"),
        f("Phone", "phone"),
        f("Country", "country"),
        f("Company", "company"),
        f("Title", "title"),
        f("LeadSource", "lead_source"),
        f("Origin", "origin"),
        f("ActionCode", "action"),
        f("Offer", "offer"),
        f("PublisherId", "publisher_id"),
        f("OfferId", "offer_id"),
        f("OfferTitle", "offer_title"),
        f("Description", "description"),
        f("CreatedAt", "created_at"),
        f("LeadId", "lead_id"),
        f("IdempotencyKey", "idempotency_key"),
        f("IsTest", "is_test"),
        f("DoNotContact", "dnc"),
    ];
    // All names are valid lead fields (a unit test checks the count).
    Mapping::new(rules.into_iter().filter_map(Result::ok).collect())
}

#[derive(Clone)]
enum Auth {
    Headers(Vec<(HeaderName, HeaderValue)>),
}

#[derive(Clone)]
struct Signer {
    secret: Secret,
    timestamp_header: HeaderName,
    signature_header: HeaderName,
}

/// The HTTPS endpoint connector.
pub struct HttpsConnector {
    client: reqwest::Client,
    /// The full URL: a secret. Never logged; see `shown_url`.
    url: Url,
    /// Shapes the body only with `body = "mapped"`.
    mapping: Mapping,
    shown_url: String,
    body: BodyShape,
    extended: bool,
    batch: bool,
    auth: Option<Auth>,
    auth_kind: &'static str,
    signer: Option<Signer>,
    headers: HeaderMap,
}

impl std::fmt::Debug for HttpsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsConnector")
            .field("url", &self.shown_url)
            .field("body", &self.body)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

fn header_name(name: &str, err: impl Fn(String) -> HttpsError) -> Result<HeaderName, HttpsError> {
    HeaderName::from_str(name.trim())
        .map_err(|_| err(format!("{name:?} is not a valid header name")))
}

fn secret_header_value(
    value: &str,
    err: impl Fn(String) -> HttpsError,
) -> Result<HeaderValue, HttpsError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| err("the secret holds characters not allowed in a header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Headers leadsync sets itself; `[connection.headers]` may not override them.
const RESERVED: &[&str] = &["content-type", "idempotency-key", "authorization", "host"];

impl HttpsConnector {
    pub fn try_new(settings: HttpsSettings, base_dir: &Path) -> Result<Self, HttpsError> {
        // The URL: resolved and parsed without ever putting its text in an error.
        let raw = settings
            .url
            .resolve(base_dir)
            .map_err(|e| HttpsError::Url(e.to_string()))?;
        let url = Url::parse(raw.expose().trim())
            .map_err(|e| HttpsError::Url(format!("not a valid URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if settings.allow_http => {}
            "http" => {
                return Err(HttpsError::Url(
                    "an http:// URL sends leads unencrypted; use https:// (or set allow_http = true for a receiver on this host)".into(),
                ))
            }
            other => {
                return Err(HttpsError::Url(format!(
                    "scheme {other:?} is not supported; use https://"
                )))
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(HttpsError::Url("the URL has no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(HttpsError::Url(
                "credentials in the URL are not supported; use [connection.auth]".into(),
            ));
        }
        let client = http::build_client(&settings.http, base_dir)?;

        let (auth, auth_kind) = match &settings.auth {
            None => (None, "none"),
            Some(a) => {
                let resolve = |s: &SecretRef| {
                    s.resolve(base_dir)
                        .map_err(|e| HttpsError::Auth(e.to_string()))
                };
                let (name, value, kind) = match a {
                    AuthSettings::Bearer { token } => (
                        reqwest::header::AUTHORIZATION,
                        http::bearer(&resolve(token)?),
                        "bearer",
                    ),
                    AuthSettings::Basic { username, password } => {
                        use base64::Engine;
                        let pw = resolve(password)?;
                        let pair = format!("{username}:{}", pw.expose());
                        (
                            reqwest::header::AUTHORIZATION,
                            format!(
                                "Basic {}",
                                base64::engine::general_purpose::STANDARD.encode(pair)
                            ),
                            "basic",
                        )
                    }
                    AuthSettings::Header { name, value } => {
                        let n = header_name(name, HttpsError::Auth)?;
                        if RESERVED.contains(&n.as_str()) && n != reqwest::header::AUTHORIZATION {
                            return Err(HttpsError::Auth(format!(
                                "header {name:?} is set by leadsync itself"
                            )));
                        }
                        (n, resolve(value)?.expose().to_string(), "header")
                    }
                };
                let value = secret_header_value(&value, HttpsError::Auth)?;
                (Some(Auth::Headers(vec![(name, value)])), kind)
            }
        };

        let signer = match &settings.signature {
            None => None,
            Some(s) => Some(Signer {
                secret: s
                    .secret
                    .resolve(base_dir)
                    .map_err(|e| HttpsError::Signature(e.to_string()))?,
                timestamp_header: header_name(&s.timestamp_header, HttpsError::Signature)?,
                signature_header: header_name(&s.signature_header, HttpsError::Signature)?,
            }),
        };

        let mut headers = HeaderMap::new();
        for (k, v) in &settings.headers {
            let name = header_name(k, HttpsError::Headers)?;
            let clashes_with_signature = signer
                .as_ref()
                .is_some_and(|s| name == s.timestamp_header || name == s.signature_header);
            if RESERVED.contains(&name.as_str()) || clashes_with_signature {
                return Err(HttpsError::Headers(format!(
                    "header {k:?} is set by leadsync itself"
                )));
            }
            let value = HeaderValue::from_str(v)
                .map_err(|_| HttpsError::Headers(format!("header {k:?}: invalid value")))?;
            headers.insert(name, value);
        }

        Ok(HttpsConnector {
            client,
            mapping: default_mapping(&settings),
            shown_url: http::redact_url(&url),
            url,
            body: settings.body,
            extended: settings.extended,
            batch: settings.batch,
            auth,
            auth_kind,
            signer,
            headers,
        })
    }

    /// The endpoint as it may be shown: scheme, host, port and path.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    fn body_of(&self, record: &OutboundRecord) -> Result<Box<RawValue>, serde_json::Error> {
        match self.body {
            BodyShape::Marketplace => body::marketplace_body(record, self.extended),
            BodyShape::Mapped => body::mapped_body(record),
        }
    }

    fn apply_auth(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(Auth::Headers(h)) = &self.auth {
            for (k, v) in h {
                req = req.header(k.clone(), v.clone());
            }
        }
        req.headers(self.headers.clone())
    }

    /// One POST. `Ok` is any HTTP answer; `Err` a request that got none.
    async fn post(
        &self,
        body: Vec<u8>,
        idempotency_key: &str,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), DeliveryFailure> {
        let mut req = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", idempotency_key);
        req = self.apply_auth(req);
        if let Some(s) = &self.signer {
            let ts = chrono::Utc::now().timestamp();
            req = req
                .header(s.timestamp_header.clone(), ts.to_string())
                .header(
                    s.signature_header.clone(),
                    signature::sign(&s.secret, ts, &body),
                );
        }
        let mut resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| http::failure_from_transport(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        // Read a bounded prefix: enough for an id or an error excerpt.
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_RESPONSE_BYTES.saturating_sub(bytes.len());
                    bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if bytes.len() >= MAX_RESPONSE_BYTES {
                        break;
                    }
                }
                Ok(None) => break,
                // The status arrived: a body cut short still tells what happened, unless it
                // was a success whose outcome we then cannot be sure of (idempotent: retry).
                Err(e) if status.is_success() => return Err(http::failure_from_transport(&e)),
                Err(_) => break,
            }
        }
        Ok((status, headers, bytes))
    }

    /// Classify an HTTP answer for `n` records.
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        n: usize,
    ) -> Vec<DeliveryOutcome> {
        if status.is_success() {
            let created = (status == StatusCode::CREATED).then_some(true);
            let refs = crm_refs(headers, body, n);
            return refs
                .into_iter()
                .map(|r| DeliveryOutcome::delivered(r, created))
                .collect();
        }
        vec![DeliveryOutcome::Failed(self.failure(status, headers, body)); n]
    }

    fn failure(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> DeliveryFailure {
        let code = status.as_u16();
        if status.is_redirection() {
            // build_client follows same-host redirects only; anything that comes back here
            // is one it refused (another host, or a loop).
            let to = headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| self.url.join(l).ok())
                .map(|u| http::redact_url(&u))
                .unwrap_or_else(|| "an unknown location".into());
            return DeliveryFailure::rejected(
                format!("http_{code}"),
                format!(
                    "HTTP {status}: the endpoint redirects to {to}; redirects to another host are not followed (they would carry the lead and credentials elsewhere): configure the final URL"
                ),
            );
        }
        let mut f = http::failure_from_response(status, headers, body);
        match code {
            // No token to refresh: the endpoint refused the configured credentials (or the
            // URL's signature). Dead letter; `leadsync dead-letters retry` once fixed.
            401 | 403 => {
                f.class = FailureClass::Rejected;
                f.message = format!(
                    "HTTP {status}: the endpoint refused the credentials (auth, signature or the URL's own sig): {}",
                    http::body_excerpt(body, EXCERPT_CHARS)
                );
            }
            // The pipeline honours Retry-After on throttled failures only; a 503 (or 408,
            // 5xx) that says when to come back is throttling in all but name.
            _ if f.class == FailureClass::Transient && f.retry_after.is_some() => {
                f.class = FailureClass::Throttled;
            }
            _ => {}
        }
        f
    }

    async fn push_single(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        let mut out = Vec::with_capacity(batch.len());
        for (i, rec) in batch.iter().enumerate() {
            let body = match self.body_of(rec) {
                Ok(b) => b.get().as_bytes().to_vec(),
                Err(e) => {
                    out.push(DeliveryOutcome::Failed(DeliveryFailure::rejected(
                        "body_error",
                        format!("cannot serialise the body: {e}"),
                    )));
                    continue;
                }
            };
            let outcome = match self.post(body, &rec.idempotency_key).await {
                Ok((status, headers, bytes)) => {
                    tracing::debug!(endpoint = %self.shown_url, lead = %rec.lead_id, attempt = rec.attempt, status = status.as_u16(), "POST answered");
                    self.classify(status, &headers, &bytes, 1)
                        .pop()
                        .unwrap_or_else(|| DeliveryOutcome::delivered(None, None))
                }
                Err(f) => {
                    tracing::debug!(endpoint = %self.shown_url, lead = %rec.lead_id, attempt = rec.attempt, error_code = %f.code, "POST got no answer");
                    DeliveryOutcome::Failed(f)
                }
            };
            // An endpoint that is throttling or failing will fail the rest too: stop here
            // and let the pipeline schedule them, rather than hammer it.
            if let DeliveryOutcome::Failed(f) = &outcome {
                if matches!(f.class, FailureClass::Throttled | FailureClass::Transient) {
                    let rest = batch.len() - i - 1;
                    let mut skipped = DeliveryFailure::new(
                        f.class,
                        "not_sent",
                        format!(
                            "not sent: an earlier request in the same batch failed ({})",
                            f.code
                        ),
                    );
                    skipped.retry_after = f.retry_after;
                    out.push(outcome);
                    out.extend(std::iter::repeat_n(DeliveryOutcome::Failed(skipped), rest));
                    return out;
                }
            }
            out.push(outcome);
        }
        out
    }

    async fn push_array(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        let bodies: Result<Vec<Box<RawValue>>, _> = batch.iter().map(|r| self.body_of(r)).collect();
        let body = match bodies.and_then(|b| serde_json::to_vec(&b)) {
            Ok(b) => b,
            Err(e) => {
                return vec![
                    DeliveryOutcome::Failed(DeliveryFailure::rejected(
                        "body_error",
                        format!("cannot serialise the body: {e}"),
                    ));
                    batch.len()
                ]
            }
        };
        let key = body::batch_key(batch);
        match self.post(body, &key).await {
            Ok((status, headers, bytes)) => {
                tracing::debug!(endpoint = %self.shown_url, records = batch.len(), status = status.as_u16(), "batch POST answered");
                self.classify(status, &headers, &bytes, batch.len())
            }
            Err(f) => {
                tracing::debug!(endpoint = %self.shown_url, records = batch.len(), error_code = %f.code, "batch POST got no answer");
                vec![DeliveryOutcome::Failed(f); batch.len()]
            }
        }
    }
}

/// The record ids a success answer gives: a `Location` header, else `id` in a JSON object;
/// for a batch, `id`s of a JSON array of the same length (else the one for all, or none).
fn crm_refs(headers: &HeaderMap, body: &[u8], n: usize) -> Vec<Option<String>> {
    let id_of = |v: &Value| match v.get("id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.chars().take(200).collect()),
        Some(Value::Number(x)) => Some(x.to_string()),
        _ => None,
    };
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if n > 1 {
        if let Some(Value::Array(items)) = &json {
            if items.len() == n {
                return items.iter().map(id_of).collect();
            }
        }
    }
    let one = headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(500).collect::<String>())
        .filter(|s| !s.is_empty())
        .or_else(|| json.as_ref().and_then(id_of));
    vec![one; n]
}

#[async_trait]
impl Connector for HttpsConnector {
    fn kind(&self) -> &'static str {
        "https"
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    async fn check(&self, connect: bool) -> Result<CheckReport, CheckError> {
        let mut verified = vec![
            format!("endpoint {} (query string not shown)", self.shown_url),
            format!(
                "body: {}{}{}",
                match self.body {
                    BodyShape::Marketplace => "marketplace schema",
                    BodyShape::Mapped => "mapped fields",
                },
                if self.extended && self.body == BodyShape::Marketplace {
                    " + Leadsync extension"
                } else {
                    ""
                },
                if self.batch {
                    ", JSON array per request"
                } else {
                    ", one lead per request"
                }
            ),
            format!(
                "auth: {}; signature: {}",
                self.auth_kind,
                self.signer
                    .as_ref()
                    .map(|s| format!("HMAC-SHA256 in {}", s.signature_header))
                    .unwrap_or_else(|| "off".into())
            ),
        ];
        if !connect {
            return Ok(CheckReport { verified });
        }
        let err = |reason: String| CheckError {
            what: format!("endpoint {}", self.shown_url),
            reason,
        };
        // OPTIONS sends no lead; any HTTP answer proves DNS, TCP and a verified TLS
        // handshake. Receivers that only accept POST answer 404/405: tolerated.
        let req = self.apply_auth(
            self.client
                .request(reqwest::Method::OPTIONS, self.url.clone()),
        );
        let resp = req
            .send()
            .await
            .map_err(|e| err(http::failure_from_transport(&e).message))?;
        let status = resp.status();
        match status.as_u16() {
            401 | 403 => Err(err(format!(
                "answered OPTIONS with {status}: the endpoint refused the credentials"
            ))),
            s if s >= 500 => Err(err(format!("answered OPTIONS with {status}"))),
            s if (300..400).contains(&s) => Err(err(format!(
                "answered OPTIONS with {status} (a redirect, not followed to another host): configure the final URL"
            ))),
            _ => {
                verified.push(format!(
                    "connected{}; OPTIONS answered {status}{}",
                    if self.url.scheme() == "https" { ", TLS verified" } else { " (plain HTTP)" },
                    if status.is_success() { "" } else { " (tolerated: only POST matters)" }
                ));
                Ok(CheckReport { verified })
            }
        }
    }

    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        if batch.is_empty() {
            return Vec::new();
        }
        if self.batch {
            self.push_array(batch).await
        } else {
            self.push_single(batch).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_like: Value) -> Result<HttpsSettings, serde_json::Error> {
        serde_json::from_value(toml_like)
    }

    #[test]
    fn settings_parse_and_reject_unknown_keys() {
        let s = settings(serde_json::json!({
            "url": {"env": "X"},
            "auth": {"type": "basic", "username": "u", "password": "p"},
            "signature": {"secret": {"file": "s"}},
            "http": {"timeout": "5s"}
        }))
        .unwrap();
        assert!(matches!(s.auth, Some(AuthSettings::Basic { .. })));
        assert_eq!(
            s.signature.unwrap().signature_header,
            signature::DEFAULT_SIGNATURE_HEADER
        );
        assert!(settings(serde_json::json!({"url": "https://x", "bogus": 1})).is_err());
        assert!(settings(serde_json::json!({
            "url": "https://x", "auth": {"type": "bearer", "token": "t", "extra": 1}
        }))
        .is_err());
        assert!(settings(serde_json::json!({"url": "https://x", "body": "other"})).is_err());
    }

    #[test]
    fn default_mapping_only_for_mapped_bodies() {
        let mut s = settings(serde_json::json!({"url": "https://x"})).unwrap();
        assert!(default_mapping(&s).rules.is_empty());
        s.body = BodyShape::Mapped;
        assert_eq!(default_mapping(&s).rules.len(), 20);
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        let dir = Path::new(".");
        let build = |v: Value| HttpsConnector::try_new(settings(v).unwrap(), dir);
        let e =
            build(serde_json::json!({"url": "http://example.com/x?sig=SECRETSIG"})).unwrap_err();
        assert_eq!(e.key(), "connection.url");
        assert!(!e.to_string().contains("SECRETSIG"));
        let e = build(serde_json::json!({"url": "not a url sig=SECRETSIG"})).unwrap_err();
        assert!(!e.to_string().contains("SECRETSIG"), "{e}");
        let e = build(serde_json::json!({"url": "https://u:pw@example.com/"})).unwrap_err();
        assert!(e.to_string().contains("credentials in the URL"));
        let c =
            build(serde_json::json!({"url": "https://example.com/hook?sig=SECRETSIG"})).unwrap();
        assert_eq!(c.shown_url(), "https://example.com/hook");
        assert!(!format!("{c:?}").contains("SECRETSIG"));
        let e = build(serde_json::json!({
            "url": "https://example.com/", "headers": {"Idempotency-Key": "x"}
        }))
        .unwrap_err();
        assert_eq!(e.key(), "connection.headers");
    }

    #[test]
    fn crm_refs_from_location_or_id() {
        let mut h = HeaderMap::new();
        assert_eq!(crm_refs(&h, b"", 1), vec![None]);
        assert_eq!(crm_refs(&h, br#"{"id": 7}"#, 1), vec![Some("7".into())]);
        assert_eq!(
            crm_refs(&h, br#"[{"id": "a"}, {"id": "b"}]"#, 2),
            vec![Some("a".into()), Some("b".into())]
        );
        h.insert(LOCATION, HeaderValue::from_static("/leads/9"));
        assert_eq!(
            crm_refs(&h, br#"{"id": 7}"#, 1),
            vec![Some("/leads/9".into())]
        );
    }
}
