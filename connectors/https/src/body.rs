//! The JSON bodies the HTTPS target sends: the marketplace's own HTTPS-endpoint shape
//! (`spec/marketplace-leads.md` §3.2), optionally extended with leadsync's fields, or the
//! target's mapped fields as a flat object; and the batch idempotency key.
//!
//! Pure functions of the record: no I/O, no logging (bodies are personal data).

use leadsync_core::{Lead, OutboundRecord};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `UserDetails` of the marketplace body. Every key is always present: a value the lead
/// lacks is sent as `""` (all properties are strings in the marketplace's schema, and flows
/// that read `UserDetails.Phone` without a null check keep working).
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct UserDetails {
    first_name: String,
    last_name: String,
    email: String,
    phone: String,
    country: String,
    company: String,
    title: String,
}

/// leadsync's additions when `extended = true`: under one key, so a receiver built for the
/// plain marketplace body can ignore it.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct LeadsyncExtension {
    lead_id: String,
    idempotency_key: String,
    /// `publisherid.offerid` as received, when the lead named one.
    offer: Option<String>,
    offer_id: Option<String>,
    publisher_id: Option<String>,
    is_test: bool,
    do_not_contact: bool,
    created_at: Option<String>,
}

/// The marketplace body, in the documented key order.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct MarketplaceBody {
    user_details: UserDetails,
    lead_source: String,
    action_code: String,
    offer_title: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    leadsync: Option<LeadsyncExtension>,
}

/// The source part of `LeadSource` exactly as received: the whole value for the HTTPS shape
/// (`AppSource (SPZA)`), the part before `-Action|Offer` for the Table shape (`SPZA`).
pub fn raw_source(lead: &Lead) -> String {
    let Some(src) = &lead.source else {
        return String::new();
    };
    let left = src.raw.split_once('|').map_or(src.raw.as_str(), |(l, _)| l);
    let left = left.trim();
    // Split off the action only where the reader did (it parsed one out of this value).
    match (&src.action, left.rsplit_once('-')) {
        (Some(_), Some((source, _))) => source.trim().to_string(),
        _ => left.to_string(),
    }
}

fn text(v: Option<&str>) -> String {
    v.unwrap_or_default().to_string()
}

/// The marketplace body for one record, serialised in the documented key order.
pub fn marketplace_body(
    record: &OutboundRecord,
    extended: bool,
) -> Result<Box<RawValue>, serde_json::Error> {
    let lead = &record.lead;
    let c = &lead.customer;
    let pii = |p: &Option<leadsync_core::Pii>| text(p.as_ref().map(|p| p.expose()));
    let body = MarketplaceBody {
        user_details: UserDetails {
            first_name: pii(&c.first_name),
            last_name: pii(&c.last_name),
            email: pii(&c.email),
            phone: pii(&c.phone),
            country: text(c.country.as_deref()),
            company: pii(&c.company),
            title: pii(&c.title),
        },
        lead_source: raw_source(lead),
        action_code: text(lead.action.as_ref().map(|a| a.code())),
        offer_title: text(lead.offer.display_title.as_deref()),
        // As received (`"Campaigns: "` included): the same body the marketplace would send.
        description: pii(&lead.description_raw.clone().or(lead.description.clone())),
        leadsync: extended.then(|| LeadsyncExtension {
            lead_id: lead.id.clone(),
            idempotency_key: record.idempotency_key.clone(),
            offer: lead.offer.raw.clone(),
            offer_id: lead.offer.offer_id.clone(),
            publisher_id: lead.offer.publisher_id.clone(),
            is_test: lead.is_test,
            do_not_contact: lead.is_do_not_contact(),
            created_at: lead.created_at.map(|t| t.to_rfc3339()),
        }),
    };
    serde_json::value::to_raw_value(&body)
}

/// The mapped body: the target's mapping fields as a flat JSON object.
pub fn mapped_body(record: &OutboundRecord) -> Result<Box<RawValue>, serde_json::Error> {
    serde_json::value::to_raw_value(&Value::Object(record.fields.to_json_object()))
}

/// The `Idempotency-Key` of a batch request: derived from its records' keys, so the same
/// set of records in the same order always gets the same key (32 hex characters, like a
/// record's key).
pub fn batch_key(records: &[OutboundRecord]) -> String {
    let mut h = Sha256::new();
    h.update(b"leadsync-batch\0");
    for r in records {
        h.update(r.idempotency_key.as_bytes());
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadsync_core::{read_lead, MappedRecord};
    use serde_json::json;
    use std::sync::Arc;

    fn mb(r: &OutboundRecord, extended: bool) -> Value {
        serde_json::from_str(marketplace_body(r, extended).unwrap().get()).unwrap()
    }

    fn record(v: Value) -> OutboundRecord {
        let lead = read_lead("l1".into(), &v).unwrap();
        OutboundRecord {
            lead_id: lead.id.clone(),
            idempotency_key: "k1".into(),
            attempt: 1,
            lead: Arc::new(lead),
            fields: MappedRecord::default(),
        }
    }

    #[test]
    fn https_payload_round_trips_to_the_same_body() {
        let sample = json!({
          "UserDetails": {"FirstName": "Some", "LastName": "One", "Email": "someone@contoso.com",
                          "Phone": "16175555555", "Country": "USA", "Company": "Contoso", "Title": "Esquire"},
          "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Test Microsoft",
          "Description": "Test run through Power Automate"
        });
        assert_eq!(mb(&record(sample.clone()), false), sample);
        // Key order follows the documented sample.
        let raw = marketplace_body(&record(sample), false).unwrap();
        let text = raw.get();
        assert!(
            text.starts_with("{\"UserDetails\":{\"FirstName\""),
            "{text}"
        );
    }

    #[test]
    fn missing_values_are_empty_strings_and_description_is_kept_raw() {
        let r = record(json!({"userDetails": {"Email": "a@b.example"},
                              "LeadSource": "AppSource (SPZA)", "ActionCode": "dnc",
                              "Description": "Campaigns: "}));
        let b = mb(&r, false);
        assert_eq!(b["UserDetails"]["FirstName"], "");
        assert_eq!(b["UserDetails"]["Email"], "a@b.example");
        assert_eq!(b["LeadSource"], "AppSource (SPZA)");
        assert_eq!(b["ActionCode"], "DNC");
        assert_eq!(b["OfferTitle"], "");
        assert_eq!(b["Description"], "Campaigns: ");
        assert!(b.get("Leadsync").is_none());
    }

    #[test]
    fn table_entities_send_the_source_part_and_the_extension() {
        let r = record(
            json!({"PartitionKey": "p", "RowKey": "r", "LeadSource": "SPZA-DNC|contoso.crm",
                              "CustomerInfo": "{\"FirstName\":\"Bo\"}", "OfferDisplayName": "Contoso CRM",
                              "CreatedTime": "11/01/2026 08:00:00 AM"}),
        );
        let b = mb(&r, true);
        assert_eq!(b["LeadSource"], "SPZA");
        assert_eq!(b["ActionCode"], "DNC");
        assert_eq!(b["OfferTitle"], "Contoso CRM");
        let x = &b["Leadsync"];
        assert_eq!(x["LeadId"], "l1");
        assert_eq!(x["IdempotencyKey"], "k1");
        assert_eq!(x["OfferId"], "crm");
        assert_eq!(x["PublisherId"], "contoso");
        assert_eq!(x["DoNotContact"], true);
        assert_eq!(x["IsTest"], false);
        assert_eq!(x["CreatedAt"], "2026-11-01T08:00:00+00:00");
        // A source with no action keeps its hyphen-free raw value whole.
        let r = record(json!({"LeadSource": "Some-Thing-Else", "OfferTitle": "X"}));
        assert_eq!(mb(&r, false)["LeadSource"], "Some-Thing-Else");
    }

    #[test]
    fn batch_keys_are_stable_and_order_sensitive() {
        let a = record(json!({"LeadSource": "SPZA"}));
        let mut b = a.clone();
        b.idempotency_key = "k2".into();
        let k = batch_key(&[a.clone(), b.clone()]);
        assert_eq!(k.len(), 32);
        assert_eq!(k, batch_key(&[a.clone(), b.clone()]));
        assert_ne!(k, batch_key(&[b, a]));
    }
}
