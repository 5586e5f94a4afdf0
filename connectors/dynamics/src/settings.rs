//! The `[connection]` settings of a `kind = "dynamics"` target and what follows from them
//! without the network: the serde types and their defaults ([`DynamicsSettings`],
//! [`WriteMode`], [`default_lead_quality`]), the settings error that names the key at fault
//! ([`DynamicsError`]), the batch limits ([`MAX_BATCH`], [`DEFAULT_BATCH`]), the default
//! `lead` mapping ([`default_mapping`]) and the column lengths ([`LEAD_LIMITS`]), and the
//! URL check `try_new` runs on `url`, `authority` and `token_url`.
//!
//! Nothing here reads a secret, opens a connection or logs.

use leadsync_core::http::HttpSettings;
use leadsync_core::{FieldRule, Mapping, SecretRef};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

/// Requests per `$batch` at most (spec §1.6).
pub const MAX_BATCH: usize = 1000;
/// Leads per push when `[limits] batch_size` is not set: the service-protection docs advise
/// small batches (§1.7), since a batch counts against the execution-time limit.
pub const DEFAULT_BATCH: usize = 50;

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
    pub(crate) fn new(key: &str, reason: impl Into<String>) -> Self {
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

pub(crate) fn parse_url(key: &str, s: &str) -> Result<reqwest::Url, DynamicsError> {
    leadsync_core::http::parse_service_url(s).map_err(|reason| DynamicsError::new(key, reason))
}
