//! The lead fields a mapping, a template or a qualification rule can read by name
//! (`email`, `offer_title`, `extra.<Column>`, a `[qualify]` value), and each one's value
//! for a lead. `mapping` and `qualify` both name fields through this module.

use serde_json::Value;

use crate::lead::Lead;

/// A lead field a mapping can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadField {
    FirstName,
    LastName,
    /// First and last name joined by a space.
    FullName,
    Email,
    Phone,
    Country,
    Company,
    Title,
    Description,
    /// The description as received, before trimming.
    DescriptionRaw,
    /// Normalised origin (`AzureMarketplace`, `AzurePortal`, `AppSource`, `TestDrive`, other).
    Origin,
    /// `LeadSource` exactly as received.
    LeadSource,
    /// Action code (`INS`, `PLT`, `DNC`, `Create`, `StartTestDrive`, other).
    Action,
    /// `publisherid.offerid` as received.
    Offer,
    PublisherId,
    OfferId,
    OfferTitle,
    /// RFC 3339 creation time.
    CreatedAt,
    LeadId,
    IdempotencyKey,
    /// Boolean: a marketplace test lead.
    IsTest,
    /// Boolean: a `DNC` lead.
    DoNotContact,
    /// `CustomerInfo` kept raw because it could not be read.
    CustomerInfoRaw,
    /// An unknown column kept from the source, by its name.
    Extra(String),
    /// A value of the target's `[qualify]` table, by its name. It has a value only where
    /// the qualification was computed (`LeadField::value_with` (in `mapping`), [`Mapping::apply`]).
    Qualified(String),
}

impl LeadField {
    /// Names accepted in TOML, for error messages.
    pub const NAMES: &'static [&'static str] = &[
        "first_name",
        "last_name",
        "full_name",
        "email",
        "phone",
        "country",
        "company",
        "title",
        "description",
        "description_raw",
        "origin",
        "lead_source",
        "action",
        "offer",
        "publisher_id",
        "offer_id",
        "offer_title",
        "created_at",
        "lead_id",
        "idempotency_key",
        "is_test",
        "dnc",
        "customer_info_raw",
        "extra.<Column>",
    ];

    pub fn parse(name: &str) -> Option<LeadField> {
        Some(match name {
            "first_name" => LeadField::FirstName,
            "last_name" => LeadField::LastName,
            "full_name" => LeadField::FullName,
            "email" => LeadField::Email,
            "phone" => LeadField::Phone,
            "country" => LeadField::Country,
            "company" => LeadField::Company,
            "title" => LeadField::Title,
            "description" => LeadField::Description,
            "description_raw" => LeadField::DescriptionRaw,
            "origin" => LeadField::Origin,
            "lead_source" => LeadField::LeadSource,
            "action" => LeadField::Action,
            "offer" => LeadField::Offer,
            "publisher_id" => LeadField::PublisherId,
            "offer_id" => LeadField::OfferId,
            "offer_title" => LeadField::OfferTitle,
            "created_at" => LeadField::CreatedAt,
            "lead_id" => LeadField::LeadId,
            "idempotency_key" => LeadField::IdempotencyKey,
            "is_test" => LeadField::IsTest,
            "dnc" => LeadField::DoNotContact,
            "customer_info_raw" => LeadField::CustomerInfoRaw,
            other => {
                let col = other.strip_prefix("extra.")?;
                if col.is_empty() {
                    return None;
                }
                LeadField::Extra(col.to_string())
            }
        })
    }

    /// [`LeadField::parse`], or a name of the target's `[qualify]` table.
    pub fn parse_named(name: &str, qualified: &[String]) -> Option<LeadField> {
        LeadField::parse(name).or_else(|| {
            qualified
                .iter()
                .any(|q| q == name)
                .then(|| LeadField::Qualified(name.to_string()))
        })
    }

    /// The value of this field for one lead; `None` when the lead has none (and for a
    /// [`LeadField::Qualified`] value, which needs `LeadField::value_with` (in `mapping`)).
    pub fn value(&self, lead: &Lead, idempotency_key: &str) -> Option<Value> {
        let s = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(|s| Value::String(s.into()));
        let c = &lead.customer;
        match self {
            LeadField::FirstName => s(c.first_name.as_ref().map(|p| p.expose())),
            LeadField::LastName => s(c.last_name.as_ref().map(|p| p.expose())),
            LeadField::FullName => {
                let parts: Vec<&str> = [&c.first_name, &c.last_name]
                    .iter()
                    .filter_map(|p| p.as_ref().map(|p| p.expose().trim()))
                    .filter(|p| !p.is_empty())
                    .collect();
                s(Some(&parts.join(" ")))
            }
            LeadField::Email => s(c.email.as_ref().map(|p| p.expose())),
            LeadField::Phone => s(c.phone.as_ref().map(|p| p.expose())),
            LeadField::Country => s(c.country.as_deref()),
            LeadField::Company => s(c.company.as_ref().map(|p| p.expose())),
            LeadField::Title => s(c.title.as_ref().map(|p| p.expose())),
            LeadField::Description => s(lead.description.as_ref().map(|p| p.expose())),
            LeadField::DescriptionRaw => s(lead
                .description_raw
                .as_ref()
                .or(lead.description.as_ref())
                .map(|p| p.expose())),
            LeadField::Origin => s(lead.origin().map(|o| o.as_str())),
            LeadField::LeadSource => s(lead.source.as_ref().map(|x| x.raw.as_str())),
            LeadField::Action => s(lead.action.as_ref().map(|a| a.code())),
            LeadField::Offer => s(lead.offer.raw.as_deref()),
            LeadField::PublisherId => s(lead.offer.publisher_id.as_deref()),
            LeadField::OfferId => s(lead.offer.offer_id.as_deref()),
            LeadField::OfferTitle => s(lead.offer.display_title.as_deref()),
            LeadField::CreatedAt => lead.created_at.map(|t| Value::String(t.to_rfc3339())),
            LeadField::LeadId => s(Some(&lead.id)),
            LeadField::IdempotencyKey => s(Some(idempotency_key)),
            LeadField::IsTest => Some(Value::Bool(lead.is_test)),
            LeadField::DoNotContact => Some(Value::Bool(lead.is_do_not_contact())),
            LeadField::CustomerInfoRaw => s(c.unparsed.as_ref().map(|p| p.expose())),
            LeadField::Extra(col) => lead
                .extra
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(col))
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_null()),
            LeadField::Qualified(_) => None,
        }
    }
}
