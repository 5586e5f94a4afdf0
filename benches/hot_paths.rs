//! Criterion benchmarks of the per-lead hot functions: reading a lead in both wire shapes,
//! parsing `LeadSource`, deriving the idempotency key and the spool id, and mapping a lead
//! to CRM fields (the file, Salesforce and Dynamics default mappings).
//! `cargo bench --bench hot_paths`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use leadsync::sources::spool::spool_lead_id;
use leadsync_core::lead::parse_record;
use leadsync_core::{idempotency_key, read_lead, KeyScope, LeadSource};
use std::hint::black_box;

const TABLE_ENTITY: &str = r#"{"PartitionKey": "11:2F1:2F2026", "RowKey": "7403e430-ec66-a787-95e7-61d17731af10", "Timestamp": "2026-11-01T08:14:00.6066345Z", "LeadSource": "SPZA-PLT|docusign.3701c77e-1cfa-4c56-91e6-3ed0b622145a", "ActionCode": "PLT", "CreatedTime": "11/01/2026 08:14:00 AM", "CustomerInfo": "{\"FirstName\": \"Zoë\", \"LastName\": \"García\", \"Email\": \"zoe.garcia2@fabrikam.example\", \"Phone\": \"+39 06 1234 5678\", \"Country\": \"USA\", \"Company\": \"Tailspin Toys\", \"Title\": \"IT Manager\"}", "Description": "Campaigns: ", "OfferDisplayName": "DocuSign eSignature"}"#;
const HTTPS_PAYLOAD: &str = r#"{"UserDetails": {"FirstName": "Renée", "LastName": "Müller", "Email": "renee.muller41@northwind.example", "Phone": "16175555555", "Country": "US", "Company": "Wide World Importers", "Title": "CTO"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "DocuSign eSignature", "Description": "Interested in a 50-seat pilot, call after 3pm CET."}"#;

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("lead");
    g.throughput(Throughput::Elements(1));
    g.bench_function("read_table_entity", |b| {
        b.iter(|| {
            let r = parse_record(black_box(TABLE_ENTITY.as_bytes())).unwrap();
            r.read_lead("id".into()).unwrap()
        })
    });
    g.bench_function("read_https_payload", |b| {
        b.iter(|| {
            let r = parse_record(black_box(HTTPS_PAYLOAD.as_bytes())).unwrap();
            r.read_lead("id".into()).unwrap()
        })
    });
    g.bench_function("parse_lead_source", |b| {
        b.iter(|| LeadSource::parse(black_box("AppSource (SPZA)-INS|bitnami.openedxcypress")))
    });
    let value = parse_record(HTTPS_PAYLOAD.as_bytes()).unwrap().value;
    let lead = read_lead("spool:abc".into(), &value).unwrap();
    g.bench_function("spool_lead_id", |b| {
        b.iter(|| spool_lead_id(black_box(&value)))
    });
    g.bench_function("idempotency_key_lead", |b| {
        b.iter(|| idempotency_key(black_box("crm"), KeyScope::Lead, black_box(&lead)))
    });
    g.bench_function("idempotency_key_customer", |b| {
        b.iter(|| idempotency_key(black_box("crm"), KeyScope::Customer, black_box(&lead)))
    });
    let mapping = leadsync_file::default_mapping();
    g.bench_function("map_default_file_columns", |b| {
        b.iter(|| mapping.apply(black_box(&lead), "0123456789abcdef0123456789abcdef", &[]))
    });
    let sf: leadsync_salesforce::SalesforceSettings = serde_json::from_value(serde_json::json!({
        "login_url": "https://example.my.salesforce.com",
        "client_id": "id",
        "client_secret": "secret"
    }))
    .unwrap();
    let mapping = leadsync_salesforce::default_mapping(&sf);
    g.bench_function("map_default_salesforce", |b| {
        b.iter(|| mapping.apply(black_box(&lead), "0123456789abcdef0123456789abcdef", &[]))
    });
    let dv: leadsync_dynamics::DynamicsSettings = serde_json::from_value(serde_json::json!({
        "url": "https://example.crm.dynamics.com",
        "tenant_id": "tenant",
        "client_id": "id",
        "client_secret": "secret"
    }))
    .unwrap();
    let mapping = leadsync_dynamics::default_mapping(&dv);
    g.bench_function("map_default_dynamics", |b| {
        b.iter(|| mapping.apply(black_box(&lead), "0123456789abcdef0123456789abcdef", &[]))
    });
    g.finish();
}

criterion_group!(hot, benches);
criterion_main!(hot);
