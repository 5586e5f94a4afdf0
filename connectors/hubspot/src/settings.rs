//! The `[connection]` settings of a `kind = "hubspot"` target and what follows from them
//! without the network: the serde type and its defaults ([`HubSpotSettings`]), the settings
//! error naming the key at fault ([`HubSpotError`]) and the default contact mapping
//! ([`default_mapping`]).
//!
//! Nothing here reads a secret, opens a connection or logs.

use leadsync_core::http::HttpSettings;
use leadsync_core::{FieldRule, Mapping, SecretRef};
use serde::Deserialize;
use serde_json::json;

fn default_base_url() -> String {
    "https://api.hubapi.com".into()
}
fn default_id_property() -> String {
    "email".into()
}
fn default_lead_status() -> String {
    "NEW".into()
}
fn default_description_property() -> String {
    DEFAULT_DESCRIPTION_PROPERTY.into()
}
fn default_description_template() -> String {
    DEFAULT_DESCRIPTION_TEMPLATE.into()
}
fn default_calls_per_window() -> u32 {
    100
}
fn default_window() -> String {
    "10s".into()
}
fn default_max_in_flight() -> usize {
    10
}

/// The contact property the description template is written to by default.
pub const DEFAULT_DESCRIPTION_PROPERTY: &str = "message";

/// The default description: the customer's note, then the marketplace facts an operator
/// needs to tell one lead from another (raw `LeadSource`, action, offer).
pub const DEFAULT_DESCRIPTION_TEMPLATE: &str =
    "{description}\n\nMicrosoft marketplace: {lead_source} / action {action} / offer {offer} {offer_title}";

/// `[connection]` of a `kind = "hubspot"` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotSettings {
    /// The private app's (static) access token, with the scopes
    /// `crm.objects.contacts.write`, `crm.objects.contacts.read` and
    /// `crm.schemas.contacts.read`.
    pub access_token: SecretRef,
    /// Default `https://api.hubapi.com`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The unique contact property upserts match on: `email` (default: one contact per
    /// customer e-mail) or a custom property with unique values that leadsync fills with its
    /// idempotency key.
    #[serde(default = "default_id_property")]
    pub id_property: String,
    /// The `hs_lead_status` written on every contact; `""` writes none.
    #[serde(default = "default_lead_status")]
    pub lead_status: String,
    /// The contact property the description template goes to.
    #[serde(default = "default_description_property")]
    pub description_property: String,
    #[serde(default = "default_description_template")]
    pub description_template: String,
    /// A boolean contact property set to true on do-not-contact leads (and never cleared by
    /// later events). HubSpot keeps its own opt-out in subscriptions, which this API does
    /// not write, so the property is the operator's choice; none by default.
    #[serde(default)]
    pub do_not_contact_property: Option<String>,
    /// The portal's burst limit: at most `calls_per_window` calls per `window` (100 per
    /// 10 s for Free and Starter, 190 for Professional and Enterprise) and `max_in_flight`
    /// at once. Lower them when other apps share the portal's limit.
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
pub struct HubSpotError {
    /// `connection.<key>`.
    pub key: String,
    pub message: String,
}

impl HubSpotError {
    pub(crate) fn new(key: &str, message: impl Into<String>) -> Self {
        HubSpotError {
            key: format!("connection.{key}"),
            message: message.into(),
        }
    }
}

/// The default mapping to HubSpot's standard contact properties (internal names).
/// Overridable field by field in TOML. The id property itself is set by the connector.
pub fn default_mapping(settings: &HubSpotSettings) -> Mapping {
    let field = FieldRule::field;
    let mut rules = vec![
        field("email", "email"),
        field("firstname", "first_name"),
        field("lastname", "last_name"),
        field("company", "company"),
        field("jobtitle", "title"),
        field("phone", "phone"),
        field("country", "country"),
        FieldRule::template(
            &settings.description_property,
            &settings.description_template,
        ),
    ];
    if !settings.lead_status.is_empty() {
        rules.push(Ok(FieldRule::constant(
            "hs_lead_status",
            json!(settings.lead_status),
        )));
    }
    if let Some(p) = &settings.do_not_contact_property {
        rules.push(field(p, "dnc"));
    }
    // A bad template or property name is reported by `try_new`; here it is left out.
    Mapping::new(rules.into_iter().filter_map(Result::ok).collect())
}

/// A HubSpot property's internal name: lower-case letters, digits and underscores,
/// starting with a letter.
pub(crate) fn valid_property_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
}
