//! The Dynamics 365 / Dataverse target (`kind = "dynamics"`): leads written to the `lead`
//! table through the Dataverse Web API (spec `crm-apis.md` §1).
//!
//! It owns: Entra ID client-credentials auth (client secret or certificate assertion; one
//! token cache per target, renewed before expiry and once on a 401), idempotent writes
//! (upsert by an alternate key holding the idempotency key, or, in create-only mode, a
//! create that is never repeated after an ambiguous failure without first looking the lead
//! up by its key column), `$batch` with `Prefer: odata.continue-on-error`, the default
//! `lead` mapping, and the classification of every Dataverse answer into a failure class.
//!
//! It must not sleep, schedule or retry in time (the pipeline does), and never logs bodies,
//! field values, tokens or query strings: only counts, status codes and error codes.

pub mod auth;
pub mod batch;

use async_trait::async_trait;
use leadsync_core::http::{body_excerpt, build_client, class_of_status, HttpSettings};
use leadsync_core::oauth::{AccessToken, FormTokenSource, TokenCache};
use leadsync_core::retry_after::parse_retry_after;
use leadsync_core::{
    BuildContext, BuildError, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome,
    FailureClass, FieldLimit, FieldRule, Mapping, OutboundRecord, Secret, SecretRef,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::{BatchOp, PartResponse};

/// Requests per `$batch` at most (spec §1.6).
pub const MAX_BATCH: usize = 1000;
/// Leads per push when `[limits] batch_size` is not set: the service-protection docs advise
/// small batches (§1.7), since a batch counts against the execution-time limit.
pub const DEFAULT_BATCH: usize = 50;

/// The §1.7 service-protection codes: whatever the status, they mean "throttled".
pub const THROTTLE_CODES: &[&str] = &["0x80072322", "0x80072321", "0x80072326"];

/// Do-not-contact columns: only ever set, never cleared (see [`DynamicsConnector::body`]).
pub const DO_NOT_CONTACT_FIELDS: &[&str] = &[
    "donotemail",
    "donotphone",
    "donotbulkemail",
    "donotpostalmail",
    "donotfax",
    "donotsendmm",
];

/// Out-of-the-box `lead` text lengths (spec §1.8), in characters.
pub const LEAD_LIMITS: &[(&str, usize)] = &[
    ("firstname", 50),
    ("lastname", 50),
    ("middlename", 50),
    ("emailaddress1", 100),
    ("emailaddress2", 100),
    ("emailaddress3", 100),
    ("telephone1", 50),
    ("mobilephone", 20),
    ("companyname", 100),
    ("jobtitle", 100),
    ("subject", 300),
    ("description", 2000),
    ("address1_country", 80),
    ("address1_city", 80),
    ("address1_line1", 250),
    ("address1_line2", 250),
    ("address1_line3", 250),
    ("address1_county", 50),
    ("websiteurl", 200),
];

/// How leads are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// `PATCH leads(<key_column>='<key>')`: needs an active alternate key on the column.
    #[default]
    Upsert,
    /// `POST leads`, for organisations without the alternate key: a retried lead is first
    /// looked up by its key column.
    CreateOnly,
}

/// `[connection]` of a `kind = "dynamics"` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicsSettings {
    /// The environment (organisation) URL, e.g. `https://contoso.crm.dynamics.com`.
    pub url: String,
    /// Entra ID tenant: GUID or domain.
    pub tenant_id: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    /// Client secret; give this or `certificate`.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// Certificate (PEM) registered on the app; its private key in `private_key` or in the
    /// same PEM.
    #[serde(default)]
    pub certificate: Option<SecretRef>,
    #[serde(default)]
    pub private_key: Option<SecretRef>,
    /// Entra ID host; sovereign clouds differ. Default `https://login.microsoftonline.com`.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// The whole token endpoint; default `{authority}/{tenant_id}/oauth2/v2.0/token`.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Default `{url}/.default`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Default `v9.2`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The custom `lead` column holding leadsync's idempotency key (and the alternate key
    /// on it, in upsert mode). Default `new_leadsynckey`.
    #[serde(default = "default_key_column")]
    pub key_column: String,
    #[serde(default)]
    pub mode: WriteMode,
    /// `leadsourcecode` option value of the default mapping. Default 8 (Web).
    #[serde(default = "default_lead_source_code")]
    pub lead_source_code: i64,
    /// `leadqualitycode` option value per action code (`INS`, `PLT`, `DNC`, `Create`,
    /// `StartTestDrive`, any other code) and `other`; merged over the defaults
    /// INS/Create = 1 (Hot), PLT/StartTestDrive = 2 (Warm), other = 3 (Cold).
    #[serde(default)]
    pub lead_quality: BTreeMap<String, i64>,
    #[serde(default)]
    pub http: HttpSettings,
}

fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_api_version() -> String {
    "v9.2".into()
}
fn default_key_column() -> String {
    "new_leadsynckey".into()
}
fn default_lead_source_code() -> i64 {
    8
}

/// The default `lead_quality` table.
pub fn default_lead_quality() -> BTreeMap<String, i64> {
    [
        ("ins", 1),
        ("create", 1),
        ("plt", 2),
        ("starttestdrive", 2),
        ("other", 3),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A setting the target cannot be built with; `key` is relative to `[connection]`.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct DynamicsError {
    pub key: String,
    pub reason: String,
}

impl DynamicsError {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        DynamicsError {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
    /// The `[connection]` key at fault (`url`, `client_secret`, ...).
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Build a Dynamics 365 target from its settings (the registry's entry for kind `dynamics`).
pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    let settings: DynamicsSettings = ctx.settings()?;
    let mapping = ctx.mapping(default_mapping(&settings));
    let connector = DynamicsConnector::try_new(settings, ctx.base_dir)
        .map_err(|e| BuildError::in_connection(&e.key, e.reason))?
        .with_batch_size(ctx.batch_size)
        .with_mapping(mapping);
    Ok(Arc::new(connector))
}

/// The default mapping onto `lead` (spec §1.8 names). The key column gets the idempotency
/// key; `leadqualitycode` gets the action code, turned into an option value by
/// `lead_quality` at push time; the do-not-contact flags get the `DNC` marker.
pub fn default_mapping(settings: &DynamicsSettings) -> Mapping {
    let field = |c: &str, f: &str| FieldRule::field(c, f);
    let rules = [
        field("firstname", "first_name"),
        field("lastname", "last_name"),
        field("emailaddress1", "email"),
        field("telephone1", "phone"),
        field("address1_country", "country"),
        field("companyname", "company"),
        field("jobtitle", "title"),
        FieldRule::template("subject", "{offer_title} ({action})"),
        field("description", "description"),
        Ok(FieldRule::constant(
            "leadsourcecode",
            json!(settings.lead_source_code),
        )),
        field("leadqualitycode", "action").map(|r| r.with_default(json!("other"))),
        field("donotemail", "dnc"),
        field("donotphone", "dnc"),
        field("donotbulkemail", "dnc"),
        field(&settings.key_column, "idempotency_key"),
    ];
    // Every name above is a valid lead field; a failure would be a bug the tests catch.
    Mapping::new(rules.into_iter().filter_map(Result::ok).collect())
}

/// A Dataverse target.
pub struct DynamicsConnector {
    client: reqwest::Client,
    /// `{url}/api/data/{version}`, no trailing slash.
    api: String,
    org: reqwest::Url,
    api_version: String,
    token_url: reqwest::Url,
    client_id: String,
    auth_kind: &'static str,
    tokens: Arc<TokenCache>,
    key_column: String,
    mode: WriteMode,
    lead_quality: BTreeMap<String, i64>,
    batch_size: usize,
    mapping: Mapping,
}

fn is_loopback(url: &reqwest::Url) -> bool {
    matches!(
        url.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    )
}

fn parse_url(key: &str, s: &str) -> Result<reqwest::Url, DynamicsError> {
    let url = reqwest::Url::parse(s.trim())
        .map_err(|e| DynamicsError::new(key, format!("{s:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        // Plain HTTP only to this machine (tests, local proxies): tokens travel in headers.
        "http" if is_loopback(&url) => {}
        other => {
            return Err(DynamicsError::new(
                key,
                format!("expected an https:// URL, found scheme {other:?}"),
            ))
        }
    }
    if url.query().is_some() || !url.username().is_empty() {
        return Err(DynamicsError::new(
            key,
            "the URL must not carry a query string or user name",
        ));
    }
    Ok(url)
}

/// OData string literal inside a key or `$filter`, percent-encoded for a URL: quotes
/// doubled (spec §1.5 [U]), everything but unreserved characters encoded.
pub fn odata_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    let mut out = String::with_capacity(doubled.len() + 2);
    out.push('\'');
    for b in doubled.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'\'' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out.push('\'');
    out
}

/// Cut a string to at most `max` UTF-16 code units (Dataverse counts .NET string length).
fn truncate_utf16(s: &mut String, max: usize) {
    if s.encode_utf16().count() <= max {
        return;
    }
    let mut units = 0;
    let mut cut = s.len();
    for (i, c) in s.char_indices() {
        if units + c.len_utf16() > max {
            cut = i;
            break;
        }
        units += c.len_utf16();
    }
    s.truncate(cut);
}

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
struct OpResult {
    status: Option<u16>,
    outcome: DeliveryOutcome,
}

impl OpResult {
    fn failed(f: DeliveryFailure) -> Self {
        OpResult {
            status: None,
            outcome: DeliveryOutcome::Failed(f),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Upsert,
    Create,
}

fn op_result(kind: OpKind, resp: &PartResponse) -> OpResult {
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

async fn read_response(resp: reqwest::Response) -> Result<PartResponse, DeliveryFailure> {
    let status = resp.status().as_u16();
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .bytes()
        .await
        .map_err(|e| leadsync_core::http::failure_from_transport(&e))?;
    Ok(PartResponse {
        content_id: None,
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

impl DynamicsConnector {
    /// Validate the settings, read the secrets and build the HTTP client and token source.
    pub fn try_new(settings: DynamicsSettings, base_dir: &Path) -> Result<Self, DynamicsError> {
        let org = parse_url("url", &settings.url)?;
        let org_str = org.as_str().trim_end_matches('/').to_string();
        if settings.tenant_id.trim().is_empty() || settings.tenant_id.contains(['/', '?', '#', ' '])
        {
            return Err(DynamicsError::new(
                "tenant_id",
                "expected a tenant GUID or domain name",
            ));
        }
        if settings.client_id.trim().is_empty() {
            return Err(DynamicsError::new("client_id", "must not be empty"));
        }
        let v = &settings.api_version;
        if !(v.starts_with("v9.") && v[3..].chars().all(|c| c.is_ascii_digit()) && v.len() > 3) {
            return Err(DynamicsError::new(
                "api_version",
                format!("expected a Web API version such as \"v9.2\", found {v:?}"),
            ));
        }
        let kc = &settings.key_column;
        if kc.is_empty()
            || !kc
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(DynamicsError::new(
                "key_column",
                format!(
                    "expected a column logical name (lower-case letters, digits, _), found {kc:?}"
                ),
            ));
        }
        let token_url = match &settings.token_url {
            Some(t) => parse_url("token_url", t)?,
            None => {
                let a = parse_url("authority", &settings.authority)?;
                let s = format!(
                    "{}/{}/oauth2/v2.0/token",
                    a.as_str().trim_end_matches('/'),
                    settings.tenant_id.trim()
                );
                parse_url("authority", &s)?
            }
        };
        let scope = settings
            .scope
            .clone()
            .unwrap_or_else(|| format!("{org_str}/.default"));
        let mut lead_quality = default_lead_quality();
        for (k, v) in &settings.lead_quality {
            lead_quality.insert(k.to_ascii_lowercase(), *v);
        }
        let client = build_client(&settings.http, base_dir)
            .map_err(|e| DynamicsError::new("http", e.to_string()))?;
        let default_lifetime = Duration::from_secs(3000);
        let resolve = |key: &str, r: &SecretRef| -> Result<Secret, DynamicsError> {
            r.resolve(base_dir)
                .map_err(|e| DynamicsError::new(key, e.to_string()))
        };
        let (source, auth_kind): (Box<dyn leadsync_core::oauth::TokenSource>, &'static str) = match (
            &settings.client_secret,
            &settings.certificate,
        ) {
            (Some(secret), None) => {
                if settings.private_key.is_some() {
                    return Err(DynamicsError::new(
                        "private_key",
                        "private_key goes with certificate, not with client_secret",
                    ));
                }
                let secret = resolve("client_secret", secret)?;
                let form = vec![
                    ("grant_type".to_string(), Secret::new("client_credentials")),
                    (
                        "client_id".to_string(),
                        Secret::new(settings.client_id.clone()),
                    ),
                    ("client_secret".to_string(), secret),
                    ("scope".to_string(), Secret::new(scope.clone())),
                ];
                (
                    Box::new(FormTokenSource {
                        client: client.clone(),
                        url: token_url.clone(),
                        form,
                        default_lifetime,
                    }),
                    "client secret",
                )
            }
            (None, Some(cert)) => {
                let cert_pem = resolve("certificate", cert)?;
                let key_text = match &settings.private_key {
                    Some(k) => resolve("private_key", k)?,
                    None => cert_pem.clone(),
                };
                let key_pem = auth::private_key_block(key_text.expose()).ok_or_else(|| {
                        DynamicsError::new(
                            "private_key",
                            "no PEM private key found (give private_key, or put the key in the certificate's PEM file)",
                        )
                    })?;
                let signer =
                    leadsync_core::jwt::RsaSigner::from_pem(&key_pem, Some(cert_pem.expose()))
                        .map_err(|e| DynamicsError::new("certificate", e.to_string()))?;
                (
                    Box::new(auth::AssertionTokenSource {
                        client: client.clone(),
                        url: token_url.clone(),
                        client_id: settings.client_id.clone(),
                        scope: scope.clone(),
                        signer,
                        default_lifetime,
                    }),
                    "certificate",
                )
            }
            (Some(_), Some(_)) => {
                return Err(DynamicsError::new(
                    "certificate",
                    "give either client_secret or certificate, not both",
                ))
            }
            (None, None) => {
                return Err(DynamicsError::new(
                    "client_secret",
                    "give client_secret or certificate (with private_key)",
                ))
            }
        };
        Ok(DynamicsConnector {
            client,
            api: format!("{org_str}/api/data/{}", settings.api_version),
            org,
            api_version: settings.api_version,
            token_url,
            client_id: settings.client_id,
            auth_kind,
            tokens: Arc::new(TokenCache::new(source)),
            key_column: settings.key_column,
            mode: settings.mode,
            lead_quality,
            batch_size: DEFAULT_BATCH,
            mapping: Mapping::default(),
        })
    }

    /// `[limits] batch_size`: leads per push (one `$batch`). Absent: [`DEFAULT_BATCH`];
    /// above [`MAX_BATCH`] the registry reports it as over the maximum.
    pub fn with_batch_size(mut self, batch_size: Option<usize>) -> Self {
        self.batch_size = batch_size.unwrap_or(DEFAULT_BATCH).clamp(1, MAX_BATCH);
        self
    }

    /// The effective mapping, whose CRM fields `check --connect` verifies. For tests; the
    /// registry goes through [`build`].
    pub fn with_mapping(mut self, mapping: Mapping) -> Self {
        self.mapping = mapping;
        self
    }

    pub fn mode(&self) -> WriteMode {
        self.mode
    }

    /// The JSON body written for one record. Beside the mapped fields:
    /// - `leadqualitycode` given as text (an action code) becomes its `lead_quality` value;
    /// - a do-not-contact flag that is `false` is left out, so that a later event of the
    ///   same customer never clears an opt-out a `DNC` event set;
    /// - upsert leaves the key column out (it is in the URL, §1.5); create-only sets it;
    /// - text is cut to the §1.8 lengths counted as Dataverse does (UTF-16 units).
    pub fn body(&self, rec: &OutboundRecord) -> Map<String, Value> {
        let mut m = Map::new();
        for (k, v) in &rec.fields.fields {
            if *k == self.key_column {
                continue;
            }
            if DO_NOT_CONTACT_FIELDS.contains(&k.as_str()) && *v == Value::Bool(false) {
                continue;
            }
            let mut v = v.clone();
            if k == "leadqualitycode" {
                if let Value::String(code) = &v {
                    let code = code.to_ascii_lowercase();
                    let q = self
                        .lead_quality
                        .get(&code)
                        .or_else(|| self.lead_quality.get("other"))
                        .copied()
                        .unwrap_or(3);
                    v = json!(q);
                }
            }
            if let Value::String(s) = &mut v {
                if let Some((_, max)) = LEAD_LIMITS.iter().find(|(f, _)| f == k) {
                    truncate_utf16(s, *max);
                }
            }
            m.insert(k.clone(), v);
        }
        if self.mode == WriteMode::CreateOnly {
            m.insert(
                self.key_column.clone(),
                Value::String(rec.idempotency_key.clone()),
            );
        }
        m
    }

    fn upsert_url(&self, key: &str) -> String {
        format!(
            "{}/leads({}={})?$select=leadid",
            self.api,
            self.key_column,
            odata_literal(key)
        )
    }

    fn create_url(&self) -> String {
        format!("{}/leads?$select=leadid", self.api)
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &AccessToken,
    ) -> Result<reqwest::RequestBuilder, DeliveryFailure> {
        let url = reqwest::Url::parse(url).map_err(|e| {
            DeliveryFailure::rejected("bad_url", format!("could not build the request URL: {e}"))
        })?;
        Ok(self
            .client
            .request(method, url)
            .bearer_auth(token.value.expose())
            .header("Accept", "application/json")
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
            .header("If-None-Match", "null"))
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<PartResponse, DeliveryFailure> {
        match rb.send().await {
            Ok(resp) => read_response(resp).await,
            Err(e) => Err(leadsync_core::http::failure_from_transport(&e)),
        }
    }

    /// One write as its own request.
    async fn write_one(&self, token: &AccessToken, kind: OpKind, rec: &OutboundRecord) -> OpResult {
        let (method, url) = match kind {
            OpKind::Upsert => (
                reqwest::Method::PATCH,
                self.upsert_url(&rec.idempotency_key),
            ),
            OpKind::Create => (reqwest::Method::POST, self.create_url()),
        };
        let rb = match self.request(method, &url, token) {
            Ok(rb) => rb,
            Err(f) => return OpResult::failed(f),
        };
        let rb = rb
            .header("Content-Type", "application/json")
            .header("Prefer", "return=representation")
            .json(&Value::Object(self.body(rec)));
        match self.send(rb).await {
            Ok(resp) => op_result(kind, &resp),
            Err(f) => OpResult::failed(f),
        }
    }

    /// Several writes in one `$batch` with continue-on-error; one result per record.
    async fn write_batch(
        &self,
        token: &AccessToken,
        kind: OpKind,
        recs: &[&OutboundRecord],
    ) -> Vec<OpResult> {
        let n = recs.len();
        let all = |f: DeliveryFailure| vec![OpResult::failed(f); n];
        let ops: Vec<BatchOp> = recs
            .iter()
            .map(|r| BatchOp {
                method: match kind {
                    OpKind::Upsert => "PATCH",
                    OpKind::Create => "POST",
                },
                url: match kind {
                    OpKind::Upsert => self.upsert_url(&r.idempotency_key),
                    OpKind::Create => self.create_url(),
                },
                body: Value::Object(self.body(r)).to_string(),
            })
            .collect();
        let boundary = format!("batch_{}", batch::random_id());
        let body = batch::build_request(&boundary, &ops);
        let rb = match self.request(
            reqwest::Method::POST,
            &format!("{}/$batch", self.api),
            token,
        ) {
            Ok(rb) => rb,
            Err(f) => return all(f),
        };
        let rb = rb
            .header(
                "Content-Type",
                format!("multipart/mixed; boundary={boundary}"),
            )
            .header("Prefer", "odata.continue-on-error")
            .body(body);
        let resp = match self.send(rb).await {
            Ok(r) => r,
            Err(f) => return all(f),
        };
        let ct = resp.header("content-type").unwrap_or("").to_string();
        let multipart = ct.to_ascii_lowercase().starts_with("multipart/mixed");
        // Without continue-on-error honoured, a failure answers 400 with a multipart body
        // holding the failing part (§1.6): read the parts in that case too.
        if !(resp.status == 200 || (resp.status == 400 && multipart)) {
            let mut f = classify(resp.status, &resp.headers, &resp.body);
            if resp.status == 413 {
                // The batch as a whole was too large: not the leads' fault.
                f.class = FailureClass::Transient;
            }
            return all(f);
        }
        let items = match batch::parse_response(&ct, &resp.body) {
            Ok(items) => items,
            Err(e) => {
                return all(DeliveryFailure::transient(
                    "batch_bad_response",
                    format!("the $batch answer could not be read: {e}"),
                ))
            }
        };
        batch::assign(items, n)
            .into_iter()
            .map(|slot| match slot {
                Some(part) => op_result(kind, &part),
                None => OpResult::failed(DeliveryFailure::transient(
                    "batch_part_missing",
                    "the $batch answer had no response for this lead (processing stopped before it)",
                )),
            })
            .collect()
    }

    async fn write(
        &self,
        token: &AccessToken,
        kind: OpKind,
        recs: &[&OutboundRecord],
    ) -> Vec<OpResult> {
        let mut out = Vec::with_capacity(recs.len());
        for chunk in recs.chunks(MAX_BATCH) {
            if chunk.len() == 1 {
                out.push(self.write_one(token, kind, chunk[0]).await);
            } else {
                out.extend(self.write_batch(token, kind, chunk).await);
            }
        }
        out
    }

    /// The lead whose key column holds `key`, if any.
    async fn lookup(
        &self,
        token: &AccessToken,
        key: &str,
    ) -> Result<Option<String>, DeliveryFailure> {
        let filter = format!("{} eq {}", self.key_column, odata_literal(key));
        let filter = filter.replace(' ', "%20");
        let url = format!("{}/leads?$select=leadid&$filter={filter}&$top=1", self.api);
        let rb = self.request(reqwest::Method::GET, &url, token)?;
        let resp = self.send(rb).await?;
        if resp.status != 200 {
            return Err(classify(resp.status, &resp.headers, &resp.body));
        }
        let v: Value = serde_json::from_str(&resp.body).map_err(|e| {
            DeliveryFailure::transient(
                "lookup_bad_response",
                format!("lookup answer is not JSON: {e}"),
            )
        })?;
        Ok(v["value"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|l| l["leadid"].as_str())
            .map(str::to_string))
    }

    async fn push_create_only(
        &self,
        token: &AccessToken,
        batch: &[OutboundRecord],
    ) -> Vec<DeliveryOutcome> {
        let mut outcomes: Vec<Option<DeliveryOutcome>> = vec![None; batch.len()];
        // A retried lead may already exist (its earlier create may have landed before the
        // failure): look before creating again.
        for (i, rec) in batch.iter().enumerate() {
            if rec.attempt > 1 {
                match self.lookup(token, &rec.idempotency_key).await {
                    Ok(Some(id)) => {
                        outcomes[i] = Some(DeliveryOutcome::delivered(Some(id), Some(false)))
                    }
                    Ok(None) => {}
                    Err(f) => outcomes[i] = Some(DeliveryOutcome::Failed(f)),
                }
            }
        }
        let todo: Vec<usize> = (0..batch.len())
            .filter(|i| outcomes[*i].is_none())
            .collect();
        let recs: Vec<&OutboundRecord> = todo.iter().map(|i| &batch[*i]).collect();
        let results = self.write(token, OpKind::Create, &recs).await;
        for (i, r) in todo.into_iter().zip(results) {
            let outcome = if r.status == Some(412) {
                // A duplicate: the lead is there already if its key is.
                match self.lookup(token, &batch[i].idempotency_key).await {
                    Ok(Some(id)) => DeliveryOutcome::delivered(Some(id), Some(false)),
                    Ok(None) => r.outcome,
                    Err(f) => DeliveryOutcome::Failed(f),
                }
            } else {
                r.outcome
            };
            outcomes[i] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    DeliveryOutcome::Failed(DeliveryFailure::transient("internal", "no outcome"))
                })
            })
            .collect()
    }

    async fn get_json(
        &self,
        token: &AccessToken,
        path: &str,
        what: &str,
    ) -> Result<Value, CheckError> {
        let err = |reason: String| CheckError {
            what: what.to_string(),
            reason,
        };
        let rb = self
            .request(reqwest::Method::GET, &format!("{}/{path}", self.api), token)
            .map_err(|f| err(f.message))?;
        let resp = self.send(rb).await.map_err(|f| err(f.message))?;
        if resp.status == 401 {
            return Err(err(
                "HTTP 401: the token was refused; is the app registration an application user with a security role in this environment?".into(),
            ));
        }
        if resp.status != 200 {
            let f = classify(resp.status, &resp.headers, &resp.body);
            return Err(err(format!(
                "HTTP {} ({}): {}",
                resp.status, f.code, f.message
            )));
        }
        serde_json::from_str(&resp.body).map_err(|e| err(format!("answer is not JSON: {e}")))
    }
}

#[async_trait]
impl Connector for DynamicsConnector {
    fn kind(&self) -> &'static str {
        "dynamics"
    }

    fn max_batch(&self) -> usize {
        self.batch_size
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn field_limits(&self) -> Vec<FieldLimit> {
        LEAD_LIMITS
            .iter()
            .map(|(f, n)| FieldLimit {
                field: f.to_string(),
                max_chars: *n,
            })
            .collect()
    }

    async fn check(&self, connect: bool) -> Result<CheckReport, CheckError> {
        let mut r = CheckReport::default();
        r.verified.push(format!(
            "environment {} (Web API {})",
            leadsync_core::http::redact_url(&self.org),
            self.api_version
        ));
        r.verified.push(format!(
            "app {} authenticates with a {} at {}",
            self.client_id,
            self.auth_kind,
            leadsync_core::http::redact_url(&self.token_url)
        ));
        r.verified.push(match self.mode {
            WriteMode::Upsert => format!(
                "upsert on the alternate key over {}, up to {} lead(s) per $batch",
                self.key_column, self.batch_size
            ),
            WriteMode::CreateOnly => format!(
                "create-only, retried leads looked up by {} first, up to {} lead(s) per $batch",
                self.key_column, self.batch_size
            ),
        });
        if !connect {
            return Ok(r);
        }
        let token = self.tokens.get().await.map_err(|e| CheckError {
            what: "token".into(),
            reason: format!("{} ({})", e.message, e.code),
        })?;
        r.verified.push("token obtained from Entra ID".into());
        let who = self.get_json(&token, "WhoAmI", "WhoAmI").await?;
        let user = who["UserId"].as_str().unwrap_or("?");
        r.verified
            .push(format!("WhoAmI answered: application user {user}"));
        if self.mode == WriteMode::Upsert {
            let keys = self
                .get_json(
                    &token,
                    "EntityDefinitions(LogicalName='lead')/Keys?$select=LogicalName,KeyAttributes,EntityKeyIndexStatus",
                    "alternate key",
                )
                .await?;
            let found = keys["value"].as_array().and_then(|a| {
                a.iter().find(|k| {
                    k["KeyAttributes"].as_array().is_some_and(|attrs| {
                        attrs.len() == 1 && attrs[0].as_str() == Some(self.key_column.as_str())
                    })
                })
            });
            let Some(key) = found else {
                return Err(CheckError {
                    what: "alternate key".into(),
                    reason: format!(
                        "lead has no alternate key made of exactly the column {}; define one, or set mode = \"create_only\"",
                        self.key_column
                    ),
                });
            };
            let status = key["EntityKeyIndexStatus"].as_str().unwrap_or("unknown");
            if status != "Active" {
                return Err(CheckError {
                    what: "alternate key".into(),
                    reason: format!(
                        "{} is {status}, not Active (Dataverse builds the key's index in the background; a Failed key must be reactivated)",
                        key["LogicalName"].as_str().unwrap_or("the key")
                    ),
                });
            }
            r.verified.push(format!(
                "alternate key {} on {} is Active",
                key["LogicalName"].as_str().unwrap_or("?"),
                self.key_column
            ));
        }
        let attrs = self
            .get_json(
                &token,
                "EntityDefinitions(LogicalName='lead')/Attributes?$select=LogicalName",
                "lead attributes",
            )
            .await?;
        let names: std::collections::HashSet<&str> = attrs["value"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["LogicalName"].as_str()).collect())
            .unwrap_or_default();
        let mut wanted: Vec<&str> = self
            .mapping
            .rules
            .iter()
            .map(|r| r.crm_field.as_str())
            .collect();
        wanted.push(&self.key_column);
        wanted.sort_unstable();
        wanted.dedup();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|f| !f.contains('@') && !names.contains(f))
            .collect();
        if !missing.is_empty() {
            return Err(CheckError {
                what: "mapping".into(),
                reason: format!("lead has no column(s) {}", missing.join(", ")),
            });
        }
        r.verified.push(format!(
            "all {} mapped column(s) exist on lead",
            wanted.len()
        ));
        Ok(r)
    }

    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        if batch.is_empty() {
            return Vec::new();
        }
        let token = match self.tokens.get().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(code = %e.code, records = batch.len(), "no Dataverse token");
                return vec![DeliveryOutcome::Failed(e.to_failure()); batch.len()];
            }
        };
        let outcomes = match self.mode {
            WriteMode::Upsert => {
                let recs: Vec<&OutboundRecord> = batch.iter().collect();
                self.write(&token, OpKind::Upsert, &recs)
                    .await
                    .into_iter()
                    .map(|r| r.outcome)
                    .collect()
            }
            WriteMode::CreateOnly => self.push_create_only(&token, batch).await,
        };
        let expired = outcomes
            .iter()
            .filter(
                |o| matches!(o, DeliveryOutcome::Failed(f) if f.class == FailureClass::AuthExpired),
            )
            .count();
        if expired > 0 {
            // One refresh for everyone holding this token; the pipeline re-pushes at once.
            self.tokens.invalidate(&token).await;
            tracing::info!(
                records = expired,
                "Dataverse refused the token; it will be renewed"
            );
        }
        tracing::debug!(records = batch.len(), "dataverse push done");
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_truncation_and_classes() {
        assert_eq!(odata_literal("ab12"), "'ab12'");
        assert_eq!(odata_literal("it's a/b"), "'it''s%20a%2Fb'");
        let mut s = "a😀b".to_string();
        truncate_utf16(&mut s, 2);
        assert_eq!(s, "a");
        let mut s = "abc".to_string();
        truncate_utf16(&mut s, 3);
        assert_eq!(s, "abc");

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
