//! The `[connection]` settings of a `kind = "salesforce"` target and what follows from them
//! without the network: the serde types and their defaults ([`SalesforceSettings`],
//! [`AuthKind`]), the settings error that names the key at fault ([`SalesforceError`]), the
//! default Lead mapping ([`default_mapping`]), the Lead field lengths it truncates to
//! ([`lead_field_limits`]), and the small checks `try_new` runs on URLs, durations and field
//! names.
//!
//! Nothing here reads a secret, opens a connection or logs.

use leadsync_core::http::HttpSettings;
use leadsync_core::{FieldLimit, FieldRule, Mapping, SecretRef};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

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
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn new(key: &str, message: impl Into<String>) -> Self {
        SalesforceError {
            key: format!("connection.{key}"),
            message: message.into(),
        }
    }
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

pub(crate) fn duration(key: &str, s: &str) -> Result<Duration, SalesforceError> {
    humantime::parse_duration(s).map_err(|e| {
        SalesforceError::new(
            key,
            format!("expected a duration such as \"1h\", found {s:?}: {e}"),
        )
    })
}

pub(crate) fn valid_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}
