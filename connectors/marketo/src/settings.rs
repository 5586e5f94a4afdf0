//! The `[connection]` settings of a `kind = "marketo"` target and what follows from them
//! without the network: the serde type and its defaults ([`MarketoSettings`]), the settings
//! error naming the key at fault ([`MarketoError`]), the default lead mapping
//! ([`default_mapping`]) and the field lengths it truncates to ([`lead_field_limits`]).
//!
//! Nothing here reads a secret, opens a connection or logs.

use leadsync_core::http::HttpSettings;
use leadsync_core::{FieldLimit, FieldRule, Mapping, SecretRef};
use serde::Deserialize;
use serde_json::json;

fn default_lookup_field() -> String {
    "email".into()
}
fn default_lead_source() -> String {
    "Microsoft Marketplace".into()
}
fn default_description_field() -> String {
    DEFAULT_DESCRIPTION_FIELD.into()
}
fn default_description_template() -> String {
    DEFAULT_DESCRIPTION_TEMPLATE.into()
}
fn default_opt_out_fields() -> Vec<String> {
    vec!["unsubscribed".into()]
}
fn default_calls_per_window() -> u32 {
    100
}
fn default_window() -> String {
    "20s".into()
}
fn default_max_in_flight() -> usize {
    10
}

/// The lead field the description template is written to by default.
pub const DEFAULT_DESCRIPTION_FIELD: &str = "mktoPersonNotes";

/// The default description: the customer's note, then the marketplace facts an operator
/// needs to tell one lead from another (raw `LeadSource`, action, offer).
pub const DEFAULT_DESCRIPTION_TEMPLATE: &str =
    "{description}\n\nMicrosoft marketplace: {lead_source} / action {action} / offer {offer} {offer_title}";

/// `[connection]` of a `kind = "marketo"` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketoSettings {
    /// The REST endpoint's host as Admin → Web Services shows it, without `/rest`
    /// (`https://123-ABC-456.mktorest.com`). Either this or `munchkin_id`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The instance's Munchkin id (`123-ABC-456`): the endpoint is then
    /// `https://<munchkin_id>.mktorest.com`.
    #[serde(default)]
    pub munchkin_id: Option<String>,
    /// The custom service's client id and secret (Admin → LaunchPoint).
    pub client_id: SecretRef,
    pub client_secret: SecretRef,
    /// The field Sync Leads looks leads up by: `email` (default: one Marketo lead per
    /// customer e-mail) or a custom unique, searchable field that leadsync fills with its
    /// idempotency key (one Marketo lead per marketplace lead, or per customer with
    /// `idempotency.scope = "customer"`).
    #[serde(default = "default_lookup_field")]
    pub lookup_field: String,
    /// A lead partition to create leads in; Marketo's default partition when absent.
    #[serde(default)]
    pub partition_name: Option<String>,
    /// The `leadSource` written on every lead.
    #[serde(default = "default_lead_source")]
    pub lead_source: String,
    /// The text field the description template goes to.
    #[serde(default = "default_description_field")]
    pub description_field: String,
    #[serde(default = "default_description_template")]
    pub description_template: String,
    /// Boolean fields leadsync only ever sets to true (a DNC lead sets them; later events
    /// never clear them). Default `["unsubscribed"]`; add `"marketingSuspended"` to suspend
    /// the lead from marketing too.
    #[serde(default = "default_opt_out_fields")]
    pub opt_out_fields: Vec<String>,
    /// Marketo's call-rate limit: at most `calls_per_window` REST calls per `window` and
    /// `max_in_flight` at once for the whole instance. leadsync paces itself under them.
    /// Lower them when other integrations share the instance's limits.
    #[serde(default = "default_calls_per_window")]
    pub calls_per_window: u32,
    #[serde(default = "default_window")]
    pub window: String,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub http: HttpSettings,
}

/// A settings mistake, naming the key under `[connection]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MarketoError {
    /// `connection.<key>`.
    pub key: String,
    pub message: String,
}

impl MarketoError {
    pub(crate) fn new(key: &str, message: impl Into<String>) -> Self {
        MarketoError {
            key: format!("connection.{key}"),
            message: message.into(),
        }
    }
}

/// The default mapping to Marketo's standard lead fields (REST names). Overridable field
/// by field in TOML. The lookup field itself is set by the connector (from the mapping for
/// `email`, from the idempotency key for a custom field).
pub fn default_mapping(settings: &MarketoSettings) -> Mapping {
    let field = FieldRule::field;
    let mut rules = vec![
        field("email", "email"),
        field("firstName", "first_name"),
        field("lastName", "last_name"),
        field("company", "company"),
        field("title", "title"),
        field("phone", "phone"),
        field("country", "country"),
        Ok(FieldRule::constant(
            "leadSource",
            json!(settings.lead_source),
        )),
        FieldRule::template(&settings.description_field, &settings.description_template),
    ];
    for f in &settings.opt_out_fields {
        rules.push(field(f, "dnc"));
    }
    // A bad template or field name is reported by `try_new`; here it is left out.
    Mapping::new(rules.into_iter().filter_map(Result::ok).collect())
}

/// Marketo's string fields hold 255 characters; text-area fields more.
pub fn lead_field_limits(settings: &MarketoSettings) -> Vec<FieldLimit> {
    [
        "email",
        "firstName",
        "lastName",
        "company",
        "title",
        "phone",
        "country",
        "leadSource",
    ]
    .into_iter()
    .map(|f| FieldLimit {
        field: f.to_string(),
        max_chars: 255,
    })
    .chain(std::iter::once(FieldLimit {
        field: settings.description_field.clone(),
        max_chars: 32_000,
    }))
    .collect()
}

/// A Marketo REST field name: letters, digits and underscores, starting with a letter.
pub(crate) fn valid_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

/// A Munchkin id: `123-ABC-456`.
pub(crate) fn valid_munchkin_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
}
