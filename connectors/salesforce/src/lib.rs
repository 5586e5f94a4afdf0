//! The Salesforce target: leads upserted into `Lead` through the REST API on an External ID
//! field that carries leadsync's idempotency key (`spec/crm-apis.md` §2).
//!
//! It owns the Salesforce wire protocol: OAuth (client credentials against the org's My
//! Domain host, or the JWT bearer grant signed with an RSA key), the token and
//! `instance_url` it reuses until Salesforce says `INVALID_SESSION_ID`, the single-record
//! upsert (`PATCH .../sobjects/Lead/<Field>/<key>`) and the sObject Collections upsert
//! (`PATCH .../composite/sobjects/Lead/<Field>`, 200 records, `allOrNone=false`), and the
//! classification of every answer into one outcome per record. It reads the API quota from
//! `Sforce-Limit-Info` and keeps the last reading for `check` and `status`.
//!
//! It must not sleep or retry in time (the pipeline does), and it never logs a field value,
//! a Salesforce message (they echo values) or a token: only counts, statuses and codes.

use async_trait::async_trait;
use leadsync_core::http::{
    bearer, body_excerpt, build_client, failure_from_transport, redact_url, retry_after,
    HttpSettings,
};
use leadsync_core::jwt::RsaSigner;
use leadsync_core::mapping::ValueSource;
use leadsync_core::oauth::{AccessToken, FormTokenSource, TokenCache, TokenError, TokenSource};
use leadsync_core::{
    BuildContext, BuildError, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome,
    FailureClass, FieldLimit, FieldRule, Mapping, OutboundRecord, Secret, SecretRef,
};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// sObject Collections take at most 200 records per call.
pub const MAX_BATCH: usize = 200;
/// The grant type of the JWT bearer flow.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How the connector gets its access token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// OAuth 2.0 client credentials (connected app with "Enable Client Credentials Flow" and
    /// a Run As user); needs `client_secret`.
    #[default]
    ClientCredentials,
    /// OAuth 2.0 JWT bearer: an RS256 assertion signed with `private_key`, for `username`.
    JwtBearer,
}

impl AuthKind {
    fn as_str(self) -> &'static str {
        match self {
            AuthKind::ClientCredentials => "client_credentials",
            AuthKind::JwtBearer => "jwt_bearer",
        }
    }
}

fn default_api_version() -> String {
    "v62.0".into()
}
fn default_external_id_field() -> String {
    "Leadsync_Key__c".into()
}
fn default_placeholder() -> String {
    "[not provided]".into()
}
fn default_lead_source() -> String {
    "Microsoft Marketplace".into()
}
fn default_description_template() -> String {
    DEFAULT_DESCRIPTION_TEMPLATE.into()
}
fn default_audience() -> String {
    "https://login.salesforce.com".into()
}
fn default_opt_out_fields() -> Vec<String> {
    vec!["HasOptedOutOfEmail".into(), "DoNotCall".into()]
}
fn default_session_lifetime() -> String {
    "1h".into()
}
fn default_request_limit_pause() -> String {
    "15m".into()
}

/// The default `Description`: the customer's note, then the marketplace facts an operator
/// needs to tell one lead from another (raw `LeadSource`, action, offer).
pub const DEFAULT_DESCRIPTION_TEMPLATE: &str =
    "{description}\n\nMicrosoft marketplace: {lead_source} / action {action} / offer {offer} {offer_title}";

/// `[connection]` of a `kind = "salesforce"` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceSettings {
    /// The org's My Domain URL, e.g. `https://acme.my.salesforce.com`; the token request goes
    /// to `<login_url>/services/oauth2/token`.
    pub login_url: String,
    #[serde(default)]
    pub auth: AuthKind,
    /// The connected app's consumer key.
    pub client_id: SecretRef,
    /// The consumer secret (`auth = "client_credentials"`).
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// The pre-authorised user (`auth = "jwt_bearer"`).
    #[serde(default)]
    pub username: Option<String>,
    /// The RSA private key (PEM) whose certificate is uploaded to the connected app
    /// (`auth = "jwt_bearer"`).
    #[serde(default)]
    pub private_key: Option<SecretRef>,
    /// The JWT `aud`: `https://login.salesforce.com`, or `https://test.salesforce.com` for a
    /// sandbox.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// REST API version, `vXX.X`; at least v46.0 (collections upsert).
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The Lead field flagged External ID (and Unique) that holds the idempotency key.
    #[serde(default = "default_external_id_field")]
    pub external_id_field: String,
    /// `LastName` when the marketplace gives none (Salesforce requires it).
    #[serde(default = "default_placeholder")]
    pub default_last_name: String,
    /// `Company` when the marketplace gives none (Salesforce requires it).
    #[serde(default = "default_placeholder")]
    pub default_company: String,
    /// The `LeadSource` picklist value written on every lead.
    #[serde(default = "default_lead_source")]
    pub lead_source: String,
    /// The `Description` template (lead fields in braces).
    #[serde(default = "default_description_template")]
    pub description_template: String,
    /// Checkbox fields leadsync only ever sets to true: a `false` is not sent, so a later
    /// event never clears a do-not-contact mark.
    #[serde(default = "default_opt_out_fields")]
    pub opt_out_fields: Vec<String>,
    /// Salesforce gives no token lifetime: renew after this even without a 401.
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime: String,
    /// How long the target pauses on `REQUEST_LIMIT_EXCEEDED` (the daily quota).
    #[serde(default = "default_request_limit_pause")]
    pub request_limit_pause: String,
    #[serde(default)]
    pub http: HttpSettings,
}

/// A settings mistake, naming the key under `[connection]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SalesforceError {
    /// `connection.<key>`.
    pub key: String,
    pub message: String,
}

impl SalesforceError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        SalesforceError {
            key: format!("connection.{key}"),
            message: message.into(),
        }
    }
}

/// Build a Salesforce target from its settings (the registry's entry for kind `salesforce`).
pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    let settings: SalesforceSettings = ctx.settings()?;
    let mapping = ctx.mapping(default_mapping(&settings));
    let connector = SalesforceConnector::try_new(settings, ctx.base_dir)
        .map_err(|e| BuildError::new(e.key, e.message))?
        .with_mapping(mapping);
    Ok(Arc::new(connector))
}

/// The default mapping (spec §2.6 field names). Overridable field by field in TOML.
pub fn default_mapping(settings: &SalesforceSettings) -> Mapping {
    let field = FieldRule::field;
    let rules = [
        field("FirstName", "first_name"),
        field("LastName", "last_name").map(|r| r.with_default(json!(settings.default_last_name))),
        field("Company", "company").map(|r| r.with_default(json!(settings.default_company))),
        field("Email", "email"),
        field("Phone", "phone"),
        field("Country", "country"),
        field("Title", "title"),
        Ok(FieldRule::constant(
            "LeadSource",
            json!(settings.lead_source),
        )),
        FieldRule::template("Description", &settings.description_template),
        field("HasOptedOutOfEmail", "dnc"),
        field("DoNotCall", "dnc"),
    ];
    // A bad `description_template` is reported by `try_new`; here it is left out.
    Mapping::new(rules.into_iter().filter_map(Result::ok).collect())
}

/// Lead field lengths (spec §2.6); the mapping truncates to them.
pub fn lead_field_limits() -> Vec<FieldLimit> {
    [
        ("FirstName", 40),
        ("LastName", 80),
        ("MiddleName", 40),
        ("Suffix", 40),
        ("Title", 128),
        ("Company", 255),
        ("Email", 80),
        ("Phone", 40),
        ("MobilePhone", 40),
        ("Fax", 40),
        ("Website", 255),
        ("Street", 255),
        ("City", 40),
        ("State", 80),
        ("PostalCode", 20),
        ("Country", 80),
        ("Description", 32000),
        ("Industry", 40),
    ]
    .into_iter()
    .map(|(f, n)| FieldLimit {
        field: f.to_string(),
        max_chars: n,
    })
    .collect()
}

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

/// The JWT bearer grant: a fresh assertion signed for every token request.
struct JwtTokenSource {
    client: reqwest::Client,
    url: Url,
    signer: RsaSigner,
    client_id: Secret,
    username: String,
    audience: String,
    default_lifetime: Duration,
}

#[async_trait]
impl TokenSource for JwtTokenSource {
    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Salesforce accepts `exp` at most 3 minutes ahead.
        let claims = json!({
            "iss": self.client_id.expose(),
            "sub": self.username,
            "aud": self.audience,
            "exp": now + 150,
        });
        let assertion = self.signer.sign(&claims).map_err(|e| TokenError {
            class: FailureClass::Rejected,
            code: "token_jwt_signing".into(),
            message: e.to_string(),
            retry_after: None,
        })?;
        FormTokenSource {
            client: self.client.clone(),
            url: self.url.clone(),
            form: vec![
                ("grant_type".into(), Secret::new(JWT_BEARER_GRANT)),
                ("assertion".into(), Secret::new(assertion)),
            ],
            default_lifetime: self.default_lifetime,
        }
        .fetch()
        .await
    }
}

/// A Salesforce target.
pub struct SalesforceConnector {
    client: reqwest::Client,
    tokens: TokenCache,
    login_url: Url,
    token_url: Url,
    auth: AuthKind,
    api_version: String,
    external_id_field: String,
    opt_out_fields: Vec<String>,
    request_limit_pause: Duration,
    /// The target's effective mapping, for `check --connect` (the default mapping until the
    /// registry sets the target's own).
    mapping: Mapping,
    usage: Mutex<Option<ApiUsage>>,
}

/// `https`, or `http` to a loopback address (tests, local fakes).
fn acceptable_url(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => matches!(
            url.host_str(),
            Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
        ),
        _ => false,
    }
}

fn duration(key: &str, s: &str) -> Result<Duration, SalesforceError> {
    humantime::parse_duration(s).map_err(|e| {
        SalesforceError::new(
            key,
            format!("expected a duration such as \"1h\", found {s:?}: {e}"),
        )
    })
}

fn valid_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

impl SalesforceConnector {
    /// Validate the settings, read the secrets and build the HTTP client. No network.
    pub fn try_new(settings: SalesforceSettings, base_dir: &Path) -> Result<Self, SalesforceError> {
        let login_url = Url::parse(settings.login_url.trim_end_matches('/')).map_err(|e| {
            SalesforceError::new(
                "login_url",
                format!(
                    "expected the org's My Domain URL (https://<domain>.my.salesforce.com): {e}"
                ),
            )
        })?;
        if !acceptable_url(&login_url) {
            return Err(SalesforceError::new(
                "login_url",
                "must be an https:// URL (the org's My Domain)",
            ));
        }
        let token_url = login_url
            .join("/services/oauth2/token")
            .map_err(|e| SalesforceError::new("login_url", e.to_string()))?;
        let version_ok = settings
            .api_version
            .strip_prefix('v')
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 46.0)
            && settings.api_version.contains('.');
        if !version_ok {
            return Err(SalesforceError::new(
                "api_version",
                format!(
                    "expected a REST API version such as \"v62.0\" (v46.0 or later, for collections upsert), found {:?}",
                    settings.api_version
                ),
            ));
        }
        if !valid_field_name(&settings.external_id_field) {
            return Err(SalesforceError::new(
                "external_id_field",
                format!(
                    "expected a field API name such as \"Leadsync_Key__c\", found {:?}",
                    settings.external_id_field
                ),
            ));
        }
        for f in &settings.opt_out_fields {
            if !valid_field_name(f) {
                return Err(SalesforceError::new(
                    "opt_out_fields",
                    format!("expected field API names, found {f:?}"),
                ));
            }
        }
        if let Err(e) = FieldRule::template("Description", &settings.description_template) {
            return Err(SalesforceError::new("description_template", e.reason));
        }
        let session_lifetime = duration("session_lifetime", &settings.session_lifetime)?;
        let request_limit_pause = duration("request_limit_pause", &settings.request_limit_pause)?;
        let client = build_client(&settings.http, base_dir)
            .map_err(|e| SalesforceError::new("http", e.to_string()))?;
        let client_id = settings
            .client_id
            .resolve(base_dir)
            .map_err(|e| SalesforceError::new("client_id", e.to_string()))?;
        let source: Box<dyn TokenSource> = match settings.auth {
            AuthKind::ClientCredentials => {
                let secret = settings
                    .client_secret
                    .as_ref()
                    .ok_or_else(|| {
                        SalesforceError::new(
                            "client_secret",
                            "required with auth = \"client_credentials\"",
                        )
                    })?
                    .resolve(base_dir)
                    .map_err(|e| SalesforceError::new("client_secret", e.to_string()))?;
                Box::new(FormTokenSource {
                    client: client.clone(),
                    url: token_url.clone(),
                    form: vec![
                        ("grant_type".into(), Secret::new("client_credentials")),
                        ("client_id".into(), client_id),
                        ("client_secret".into(), secret),
                    ],
                    default_lifetime: session_lifetime,
                })
            }
            AuthKind::JwtBearer => {
                let username = settings
                    .username
                    .clone()
                    .filter(|u| !u.trim().is_empty())
                    .ok_or_else(|| {
                        SalesforceError::new("username", "required with auth = \"jwt_bearer\"")
                    })?;
                let key = settings
                    .private_key
                    .as_ref()
                    .ok_or_else(|| {
                        SalesforceError::new("private_key", "required with auth = \"jwt_bearer\"")
                    })?
                    .resolve(base_dir)
                    .map_err(|e| SalesforceError::new("private_key", e.to_string()))?;
                let signer = RsaSigner::from_pem(key.expose(), None)
                    .map_err(|e| SalesforceError::new("private_key", e.to_string()))?;
                if settings.client_secret.is_some() {
                    return Err(SalesforceError::new(
                        "client_secret",
                        "not used with auth = \"jwt_bearer\"; remove it",
                    ));
                }
                Box::new(JwtTokenSource {
                    client: client.clone(),
                    url: token_url.clone(),
                    signer,
                    client_id,
                    username,
                    audience: settings.audience.clone(),
                    default_lifetime: session_lifetime,
                })
            }
        };
        let mapping = default_mapping(&settings);
        Ok(SalesforceConnector {
            client,
            tokens: TokenCache::new(source),
            login_url,
            token_url,
            auth: settings.auth,
            api_version: settings.api_version,
            external_id_field: settings.external_id_field,
            opt_out_fields: settings.opt_out_fields,
            request_limit_pause,
            mapping,
            usage: Mutex::new(None),
        })
    }

    /// Give the connector the target's effective mapping, so `check --connect` can verify
    /// the mapped fields against the org. For tests; the registry goes through [`build`].
    pub fn with_mapping(mut self, mapping: Mapping) -> Self {
        self.mapping = mapping;
        self
    }

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
    fn instance(&self, token: &AccessToken) -> Result<Url, DeliveryFailure> {
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
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&Value>,
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

    /// The body of one record: the mapped fields, minus the external ID (it travels in the
    /// URL or is set from the key) and minus opt-out checkboxes that are false.
    fn record_body(&self, rec: &OutboundRecord) -> Map<String, Value> {
        let mut body = rec.fields.to_json_object();
        body.retain(|k, v| {
            if k.eq_ignore_ascii_case(&self.external_id_field) {
                return false;
            }
            let opt_out = self
                .opt_out_fields
                .iter()
                .any(|f| f.eq_ignore_ascii_case(k));
            !(opt_out && *v == Value::Bool(false))
        });
        body
    }

    async fn upsert_one(&self, rec: &OutboundRecord) -> DeliveryOutcome {
        let body = Value::Object(self.record_body(rec));
        let answer = match self
            .call(
                Method::PATCH,
                &[
                    "sobjects",
                    "Lead",
                    self.external_id_field.as_str(),
                    rec.idempotency_key.as_str(),
                ],
                Some(&body),
            )
            .await
        {
            Ok(a) => a,
            Err(f) => return DeliveryOutcome::Failed(f),
        };
        match answer.status.as_u16() {
            200 | 201 => {
                let v: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
                let id = v.get("id").and_then(Value::as_str).map(str::to_string);
                let created = v
                    .get("created")
                    .and_then(Value::as_bool)
                    .unwrap_or(answer.status == StatusCode::CREATED);
                if v.get("success").and_then(Value::as_bool) == Some(false) {
                    return DeliveryOutcome::Failed(self.record_failure(
                        v.get("errors"),
                        StatusCode::OK,
                        &answer.headers,
                    ));
                }
                DeliveryOutcome::delivered(id, Some(created))
            }
            // API 45.0 and older answer an update with no body.
            204 => DeliveryOutcome::delivered(None, Some(false)),
            _ => DeliveryOutcome::Failed(self.request_failure(&answer)),
        }
    }

    async fn upsert_collection(&self, recs: &[&OutboundRecord]) -> Vec<DeliveryOutcome> {
        let records: Vec<Value> = recs
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("attributes".into(), json!({"type": "Lead"}));
                o.extend(self.record_body(r));
                o.insert(
                    self.external_id_field.clone(),
                    Value::String(r.idempotency_key.clone()),
                );
                Value::Object(o)
            })
            .collect();
        let body = json!({"allOrNone": false, "records": records});
        let all = |f: DeliveryFailure| vec![DeliveryOutcome::Failed(f); recs.len()];
        let answer = match self
            .call(
                Method::PATCH,
                &[
                    "composite",
                    "sobjects",
                    "Lead",
                    self.external_id_field.as_str(),
                ],
                Some(&body),
            )
            .await
        {
            Ok(a) => a,
            Err(f) => return all(f),
        };
        if answer.status != StatusCode::OK {
            return all(self.request_failure(&answer));
        }
        let results: Vec<Value> = match serde_json::from_slice(&answer.body) {
            Ok(Value::Array(v)) if v.len() == recs.len() => v,
            _ => {
                tracing::warn!(
                    records = recs.len(),
                    "Salesforce collections answer did not have one result per record"
                );
                return all(DeliveryFailure::transient(
                    "bad_response",
                    format!(
                        "collections upsert answered 200 without one result per record: {}",
                        body_excerpt(&answer.body, 300)
                    ),
                ));
            }
        };
        let mut out = Vec::with_capacity(recs.len());
        let mut expired = false;
        for r in &results {
            if r.get("success").and_then(Value::as_bool) == Some(true) {
                out.push(DeliveryOutcome::delivered(
                    r.get("id").and_then(Value::as_str).map(str::to_string),
                    r.get("created").and_then(Value::as_bool),
                ));
            } else {
                let f = self.record_failure(r.get("errors"), answer.status, &answer.headers);
                expired |= f.class == FailureClass::AuthExpired;
                out.push(DeliveryOutcome::Failed(f));
            }
        }
        if expired {
            self.tokens.invalidate(&answer.token).await;
        }
        out
    }

    /// The failure of one record from a Salesforce error list (`statusCode` in collections,
    /// `errorCode` in single-resource answers).
    fn record_failure(
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
    fn request_failure(&self, answer: &Answer) -> DeliveryFailure {
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
        let mut f = DeliveryFailure::new(class, code, message).with_retry_after(asked);
        if class == FailureClass::Throttled && code == "REQUEST_LIMIT_EXCEEDED" && asked.is_none() {
            // The daily quota rolls over 24 hours; pause the target rather than hammer it.
            f.retry_after = Some(self.request_limit_pause);
        }
        f
    }

    async fn describe_lead(&self) -> Result<Vec<Value>, CheckError> {
        let err = |reason: String| CheckError {
            what: "describe Lead".into(),
            reason,
        };
        let answer = self
            .call(Method::GET, &["sobjects", "Lead", "describe"], None)
            .await
            .map_err(|f| err(format!("{}: {}", f.code, f.message)))?;
        if !answer.status.is_success() {
            let f = self.request_failure(&answer);
            return Err(err(format!("{}: {}", f.code, f.message)));
        }
        let v: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| err(format!("answer is not JSON: {e}")))?;
        match v.get("fields") {
            Some(Value::Array(fields)) => Ok(fields.clone()),
            _ => Err(err("answer has no `fields` list".into())),
        }
    }
}

struct Answer {
    /// The token the call was made with (to invalidate exactly that one).
    token: Arc<AccessToken>,
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
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

/// Split a batch into rounds with no idempotency key twice in a round (Salesforce refuses a
/// collection naming one external ID twice), keeping each key's records in order.
fn rounds_by_key(batch: &[OutboundRecord]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<(HashSet<String>, Vec<usize>)> = Vec::new();
    for (i, r) in batch.iter().enumerate() {
        let key = r.idempotency_key.to_lowercase();
        // After the last round holding this key, so that later events land later.
        let last = rounds.iter().rposition(|(keys, _)| keys.contains(&key));
        let start = last.map(|l| l + 1).unwrap_or(0);
        match rounds[start..]
            .iter_mut()
            .find(|(keys, _)| !keys.contains(&key))
        {
            Some((keys, idx)) => {
                keys.insert(key);
                idx.push(i);
            }
            None => rounds.push((HashSet::from([key]), vec![i])),
        }
    }
    rounds.into_iter().map(|(_, idx)| idx).collect()
}

fn describe_field<'a>(fields: &'a [Value], name: &str) -> Option<&'a Value> {
    fields.iter().find(|f| {
        f.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}

fn flag(f: &Value, name: &str) -> bool {
    f.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn picklist_values(f: &Value) -> Vec<&str> {
    f.get("picklistValues")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|p| p.get("active").and_then(Value::as_bool).unwrap_or(true))
                .filter_map(|p| p.get("value").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

#[async_trait]
impl Connector for SalesforceConnector {
    fn kind(&self) -> &'static str {
        "salesforce"
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn field_limits(&self) -> Vec<FieldLimit> {
        lead_field_limits()
    }

    fn status_note(&self) -> Option<String> {
        self.last_api_usage().map(|u| {
            format!(
                "API requests in the last 24 h: {} of {} ({}%)",
                u.used,
                u.max,
                u.used.saturating_mul(100).checked_div(u.max).unwrap_or(0)
            )
        })
    }

    async fn check(&self, connect: bool) -> Result<CheckReport, CheckError> {
        let mut report = CheckReport::default();
        report.verified.push(format!(
            "token endpoint {} ({})",
            redact_url(&self.token_url),
            self.auth.as_str()
        ));
        report.verified.push(format!(
            "REST API {}, upsert on Lead.{}",
            self.api_version, self.external_id_field
        ));
        if !connect {
            return Ok(report);
        }
        let token = self.tokens.get().await.map_err(|e| CheckError {
            what: "token".into(),
            reason: format!("{} ({})", e.message, e.code),
        })?;
        let instance = self.instance(&token).map_err(|f| CheckError {
            what: "token".into(),
            reason: f.message,
        })?;
        report.verified.push(format!(
            "token obtained; instance {}",
            redact_url(&instance)
        ));
        let fields = self.describe_lead().await?;
        let fail = |what: &str, reason: String| CheckError {
            what: what.into(),
            reason,
        };
        // The external ID field.
        let ext = describe_field(&fields, &self.external_id_field).ok_or_else(|| {
            fail(
                "connection.external_id_field",
                format!(
                    "Lead has no field {}; create a Text field with \"External ID\" and \"Unique\" ticked",
                    self.external_id_field
                ),
            )
        })?;
        if !flag(ext, "externalId") {
            return Err(fail(
                "connection.external_id_field",
                format!(
                    "Lead.{} exists but is not flagged External ID",
                    self.external_id_field
                ),
            ));
        }
        if !flag(ext, "createable") || !flag(ext, "updateable") {
            return Err(fail(
                "connection.external_id_field",
                format!(
                    "Lead.{} is not createable and updateable for the integration user",
                    self.external_id_field
                ),
            ));
        }
        if let Some(len) = ext.get("length").and_then(Value::as_u64) {
            if len > 0 && len < 32 {
                return Err(fail(
                    "connection.external_id_field",
                    format!(
                        "Lead.{} holds {len} characters; keys are 32",
                        self.external_id_field
                    ),
                ));
            }
        }
        report.verified.push(format!(
            "Lead.{} is an External ID{}",
            self.external_id_field,
            if flag(ext, "unique") {
                " (unique)"
            } else {
                " (not unique: tick Unique to be safe from duplicates)"
            }
        ));
        // Mapped fields.
        let rules: &[FieldRule] = &self.mapping.rules;
        for rule in rules {
            let name = &rule.crm_field;
            if name.eq_ignore_ascii_case(&self.external_id_field) {
                continue;
            }
            let key = format!("mapping.fields.{name}");
            let f = describe_field(&fields, name)
                .ok_or_else(|| fail(&key, format!("Lead has no field {name}")))?;
            if !flag(f, "createable") || !flag(f, "updateable") {
                return Err(fail(
                    &key,
                    format!(
                        "Lead.{name} is not createable and updateable for the integration user (field-level security)"
                    ),
                ));
            }
            let is_picklist = f.get("type").and_then(Value::as_str) == Some("picklist");
            if let (true, ValueSource::Constant(Value::String(v))) = (is_picklist, &rule.source) {
                let values = picklist_values(f);
                if !values.contains(&v.as_str()) {
                    if flag(f, "restrictedPicklist") {
                        return Err(fail(
                            &key,
                            format!(
                                "{v:?} is not a value of the restricted picklist Lead.{name}: every lead would be rejected; add it in Setup or map one of: {}",
                                values.join(", ")
                            ),
                        ));
                    }
                    report.verified.push(format!(
                        "warning: {v:?} is not among the values of picklist Lead.{name}; Salesforce stores it, but add it in Setup so reports and filters show it"
                    ));
                }
            }
        }
        report.verified.push(format!(
            "{} mapped field(s) exist on Lead and are createable and updateable",
            rules.len()
        ));
        // Required fields the mapping leaves empty would reject every lead (the Web-to-Lead
        // trap of a required custom picklist).
        for f in &fields {
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                continue;
            };
            let required = flag(f, "createable")
                && !flag(f, "nillable")
                && !flag(f, "defaultedOnCreate")
                && f.get("type").and_then(Value::as_str) != Some("boolean");
            if !required || name.eq_ignore_ascii_case(&self.external_id_field) {
                continue;
            }
            match rules.iter().find(|r| r.crm_field.eq_ignore_ascii_case(name)) {
                None => {
                    return Err(fail(
                        &format!("mapping.fields.{name}"),
                        format!(
                            "Lead.{name} is required and not mapped: Salesforce would reject every lead (REQUIRED_FIELD_MISSING); map it, e.g. {name} = {{ value = \"...\" }}"
                        ),
                    ))
                }
                Some(r) if r.default.is_none() && !matches!(r.source, ValueSource::Constant(_)) => {
                    report.verified.push(format!(
                        "warning: Lead.{name} is required and its mapping has no default: leads without a value will be rejected"
                    ));
                }
                Some(_) => {}
            }
        }
        report
            .verified
            .push("every required Lead field is mapped".to_string());
        if let Some(u) = self.last_api_usage() {
            report.verified.push(format!(
                "API requests used in the last 24 h: {} of {}",
                u.used, u.max
            ));
        }
        Ok(report)
    }

    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        let mut out: Vec<Option<DeliveryOutcome>> = vec![None; batch.len()];
        for round in rounds_by_key(batch) {
            for chunk in round.chunks(MAX_BATCH) {
                let outcomes = if let [only] = chunk {
                    vec![self.upsert_one(&batch[*only]).await]
                } else {
                    let recs: Vec<&OutboundRecord> = chunk.iter().map(|i| &batch[*i]).collect();
                    self.upsert_collection(&recs).await
                };
                for (i, o) in chunk.iter().zip(outcomes) {
                    out[*i] = Some(o);
                }
            }
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    DeliveryOutcome::Failed(DeliveryFailure::transient(
                        "internal",
                        "record was not sent",
                    ))
                })
            })
            .collect()
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

    #[test]
    fn rounds_keep_keys_apart_and_in_order() {
        let rec = |k: &str| OutboundRecord {
            lead_id: k.into(),
            idempotency_key: k.into(),
            attempt: 1,
            lead: Arc::new(
                leadsync_core::read_lead("x".into(), &json!({"LeadSource": "SPZA"})).unwrap(),
            ),
            fields: Default::default(),
        };
        let batch = [rec("a"), rec("b"), rec("a"), rec("c"), rec("a"), rec("b")];
        assert_eq!(
            rounds_by_key(&batch),
            vec![vec![0, 1, 3], vec![2, 5], vec![4]]
        );
    }
}
