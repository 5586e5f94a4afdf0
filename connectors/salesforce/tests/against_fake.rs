//! The Salesforce connector against the fake org (`leadsync_fakes::salesforce`): both OAuth
//! grants, single and collection upserts, per-record classification, token expiry, quota
//! and `check --connect`.

use leadsync_core::{
    idempotency_key, read_lead, BuildContext, Connector, DeliveryFailure, DeliveryOutcome,
    FailureClass, KeyScope, MappedRecord, MappingOverrides, OutboundRecord, RawRule,
};
use leadsync_fakes::salesforce::{
    generate_rsa_key_pem, Fault, FieldSpec, SalesforceFake, SalesforceFakeConfig,
    DEFAULT_EXTERNAL_ID_FIELD as EXT,
};
use leadsync_salesforce::{
    default_mapping, lead_field_limits, SalesforceConnector, SalesforceSettings,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The `[connection]` table of a target on the fake org, with `extra` keys over it.
fn connection(fake: &SalesforceFake, extra: Value) -> Value {
    let mut v = json!({
        "login_url": fake.base_url(),
        "client_id": fake.config().client_id,
        "client_secret": fake.config().client_secret,
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

fn settings(fake: &SalesforceFake, extra: Value) -> SalesforceSettings {
    serde_json::from_value(connection(fake, extra)).expect("settings")
}

/// What the registry hands `build` for a target with this `[connection]` and `[mapping]`.
fn context<'a>(connection: &'a Value, mapping: &'a MappingOverrides) -> BuildContext<'a> {
    BuildContext {
        target: "sf",
        connection,
        base_dir: Path::new("."),
        mapping,
        batch_size: None,
    }
}

/// The target as the registry builds it, with the `[mapping]` overrides given.
fn built(connection: &Value, mapping: &MappingOverrides) -> Arc<dyn Connector> {
    leadsync_salesforce::build(&context(connection, mapping)).expect("connector")
}

fn connector(fake: &SalesforceFake) -> Arc<dyn Connector> {
    connector_with(fake, json!({}))
}

fn connector_with(fake: &SalesforceFake, extra: Value) -> Arc<dyn Connector> {
    built(&connection(fake, extra), &MappingOverrides::default())
}

/// The concrete connector, for the tests that read [`SalesforceConnector::last_api_usage`]
/// (not part of the `Connector` trait); `try_new` gives it the default mapping, which is what
/// `build` gives a target without `[mapping]`.
fn concrete_connector(fake: &SalesforceFake) -> SalesforceConnector {
    SalesforceConnector::try_new(settings(fake, json!({})), Path::new(".")).expect("connector")
}

/// A record mapped with the default mapping, as the pipeline would hand it over.
fn record(i: usize, customer: Value, action: &str) -> OutboundRecord {
    let lead = read_lead(
        format!("lead-{i}"),
        &json!({"UserDetails": customer, "LeadSource": "AzureMarketplace", "ActionCode": action,
                "OfferTitle": "Contoso CRM", "Description": format!("note {i}")}),
    )
    .unwrap();
    let key = idempotency_key("sf", KeyScope::Lead, &lead);
    let s: SalesforceSettings = serde_json::from_value(json!({
        "login_url": "https://x.my.salesforce.com", "client_id": "x", "client_secret": "y"
    }))
    .unwrap();
    let (fields, _) = default_mapping(&s).apply(&lead, &key, &lead_field_limits());
    OutboundRecord {
        lead_id: lead.id.clone(),
        idempotency_key: key,
        attempt: 1,
        lead: Arc::new(lead),
        fields,
    }
}

fn person(i: usize) -> Value {
    json!({"FirstName": format!("Ada{i}"), "LastName": "Lovelace", "Email": format!("ada{i}@contoso.example"),
           "Company": "Contoso", "Country": "GB", "Title": "CTO", "Phone": "+44 1234"})
}

/// A record with exactly these CRM fields (to send what the mapping would never produce).
fn raw_record(i: usize, fields: Value) -> OutboundRecord {
    let mut r = record(i, person(i), "INS");
    r.fields = MappedRecord {
        fields: fields
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    r
}

fn failure(o: &DeliveryOutcome) -> &DeliveryFailure {
    match o {
        DeliveryOutcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// The sObject Collections calls the fake received.
fn collection_calls(fake: &SalesforceFake) -> Vec<leadsync_fakes::salesforce::RequestInfo> {
    fake.requests()
        .into_iter()
        .filter(|r| r.path.contains("/composite/sobjects/Lead/"))
        .collect()
}

fn delivered(o: &DeliveryOutcome) -> (String, bool) {
    match o {
        DeliveryOutcome::Delivered {
            crm_ref: Some(id),
            created: Some(c),
        } => (id.clone(), *c),
        other => panic!("expected delivered with id and created, got {other:?}"),
    }
}

async fn fake() -> SalesforceFake {
    SalesforceFake::start(SalesforceFakeConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn collection_upsert_creates_maps_and_repush_updates_the_same_records() {
    let fake = fake().await;
    let c = concrete_connector(&fake);
    let mut batch: Vec<_> = (0..3).map(|i| record(i, person(i), "INS")).collect();
    // An .edu-style lead without personal data still satisfies LastName and Company.
    batch.push(record(3, json!({"Email": "student@uni.edu"}), "PLT"));
    let out = c.push(&batch).await;
    let ids: Vec<(String, bool)> = out.iter().map(delivered).collect();
    assert!(ids.iter().all(|(_, created)| *created));
    assert_eq!(fake.records().len(), 4);

    let r = fake
        .record_by_external_id(EXT, &batch[0].idempotency_key)
        .unwrap();
    assert_eq!(r.id, ids[0].0);
    assert_eq!(r.get_str("FirstName"), Some("Ada0"));
    assert_eq!(r.get_str("LastName"), Some("Lovelace"));
    assert_eq!(r.get_str("Company"), Some("Contoso"));
    assert_eq!(r.get_str("Email"), Some("ada0@contoso.example"));
    assert_eq!(r.get_str("Phone"), Some("+44 1234"));
    assert_eq!(r.get_str("Country"), Some("GB"));
    assert_eq!(r.get_str("Title"), Some("CTO"));
    assert_eq!(r.get_str("LeadSource"), Some("Microsoft Marketplace"));
    let d = r.get_str("Description").unwrap();
    assert!(d.starts_with("note 0"), "{d}");
    assert!(d.contains("AzureMarketplace") && d.contains("INS") && d.contains("Contoso CRM"));
    assert_eq!(r.fields["HasOptedOutOfEmail"], json!(false));
    let edu = fake
        .record_by_external_id(EXT, &batch[3].idempotency_key)
        .unwrap();
    assert_eq!(edu.get_str("LastName"), Some("[not provided]"));
    assert_eq!(edu.get_str("Company"), Some("[not provided]"));

    // One collections call for four records, and quota noted.
    let data = collection_calls(&fake);
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].records, 4);
    assert_eq!(c.last_api_usage().map(|u| u.max), Some(15_000));

    // Re-push: same records updated, none created.
    let again = c.push(&batch).await;
    for (o, (id, _)) in again.iter().zip(&ids) {
        assert_eq!(delivered(o), (id.clone(), false));
    }
    assert_eq!(fake.records().len(), 4);
    assert!(fake.records().iter().all(|r| r.updates == 1));
    assert_eq!(fake.token_request_count(), 1, "the token is reused");
}

#[tokio::test]
async fn a_collection_prepared_ahead_is_the_same_call_and_a_stale_one_is_not_sent() {
    let fake = fake().await;
    let c = connector(&fake);
    let batch: Vec<_> = (0..3).map(|i| record(i, person(i), "INS")).collect();
    // One record, or a key twice (two collections in turn), has nothing made ahead.
    assert!(c.prepare(&batch[..1]).is_none());
    let twice = vec![batch[0].clone(), batch[1].clone(), batch[0].clone()];
    assert!(c.prepare(&twice).is_none());

    let prepared = c.prepare(&batch).expect("a collection is made ahead");
    let out = c.push_prepared(&batch, prepared).await;
    assert!(out.iter().map(delivered).all(|(_, created)| created));
    let r = fake
        .record_by_external_id(EXT, &batch[1].idempotency_key)
        .unwrap();
    assert_eq!(r.get_str("FirstName"), Some("Ada1"));
    let data = collection_calls(&fake);
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].records, 3);

    // Made of other records (as many): the batch given is written, not the stale one.
    let stale = c.prepare(&batch).expect("prepared");
    let more: Vec<_> = (3..6).map(|i| record(i, person(i), "INS")).collect();
    let out = c.push_prepared(&more, stale).await;
    assert!(out.iter().map(delivered).all(|(_, created)| created));
    assert_eq!(fake.records().len(), 6);
}

#[tokio::test]
async fn a_single_record_uses_the_single_upsert_201_then_200() {
    let fake = fake().await;
    let c = connector(&fake);
    let rec = record(1, person(1), "PLT");
    let (id, created) = delivered(&c.push(std::slice::from_ref(&rec)).await[0]);
    assert!(created);
    let (id2, created2) = delivered(&c.push(std::slice::from_ref(&rec)).await[0]);
    assert_eq!((id2, created2), (id, false));
    let reqs = fake.requests();
    let singles: Vec<_> = reqs
        .iter()
        .filter(|r| {
            r.path
                .ends_with(&format!("/sobjects/Lead/{EXT}/{}", rec.idempotency_key))
        })
        .collect();
    assert_eq!(singles.len(), 2);
    assert_eq!(singles[0].status, 201);
    assert_eq!(singles[1].status, 200);
    assert_eq!(fake.records().len(), 1);
}

#[tokio::test]
async fn mixed_collection_delivers_good_rejects_bad_and_retries_only_transient() {
    let fake = fake().await;
    fake.set_duplicate_rule(true);
    let c = connector(&fake);
    // An existing lead for the duplicate rule, and two leads sharing one key (300 case).
    let mut seed = serde_json::Map::new();
    seed.insert("LastName".into(), json!("Existing"));
    seed.insert("Company".into(), json!("X"));
    seed.insert("Email".into(), json!("dup@contoso.example"));
    fake.insert_record(seed);
    let multi = record(90, person(90), "INS");
    for _ in 0..2 {
        let mut m = serde_json::Map::new();
        m.insert(EXT.into(), json!(multi.idempotency_key));
        m.insert("LastName".into(), json!("Twin"));
        fake.insert_record(m);
    }
    let locked = record(5, person(5), "INS");
    fake.lock_row(&locked.idempotency_key, 1);
    let batch = vec![
        record(0, person(0), "INS"),
        raw_record(
            1,
            json!({"LastName": "L", "Company": "C", "Email": "not an email"}),
        ),
        raw_record(2, json!({"LastName": "x".repeat(81), "Company": "C"})),
        raw_record(3, json!({"FirstName": "No", "Company": "C"})),
        raw_record(
            4,
            json!({"LastName": "D", "Company": "C", "Email": "dup@contoso.example"}),
        ),
        locked.clone(),
        multi,
        record(7, person(7), "PLT"),
    ];
    let out = c.push(&batch).await;
    assert_eq!(out.len(), batch.len());
    delivered(&out[0]);
    delivered(&out[7]);
    let expect = [
        (1, "INVALID_EMAIL_ADDRESS", "invalid email address"),
        (2, "STRING_TOO_LONG", "max length=80"),
        (3, "REQUIRED_FIELD_MISSING", "[LastName]"),
        (4, "DUPLICATES_DETECTED", "duplicate record"),
        (6, "DUPLICATE_EXTERNAL_ID", "more than one record"),
    ];
    for (i, code, text) in expect {
        let f = failure(&out[i]);
        assert_eq!(f.class, FailureClass::Rejected, "record {i}: {f:?}");
        assert_eq!(f.code, code);
        assert!(f.message.contains(text), "record {i}: {}", f.message);
    }
    let f = failure(&out[5]);
    assert_eq!(f.class, FailureClass::Transient);
    assert_eq!(f.code, "UNABLE_TO_LOCK_ROW");

    // Only the transient one is tried again (by the pipeline): it lands.
    let (_, created) = delivered(&c.push(std::slice::from_ref(&locked)).await[0]);
    assert!(created);
    assert!(fake
        .record_by_external_id(EXT, &locked.idempotency_key)
        .is_some());
    // 1 seed + 2 twins + good 0, 7 and the locked one.
    assert_eq!(fake.records().len(), 6);
}

#[tokio::test]
async fn several_matches_on_a_single_upsert_is_rejected_with_300() {
    let fake = fake().await;
    let c = connector(&fake);
    let rec = record(1, person(1), "INS");
    for _ in 0..2 {
        let mut m = serde_json::Map::new();
        m.insert(EXT.into(), json!(rec.idempotency_key.to_uppercase()));
        fake.insert_record(m);
    }
    let f = failure(&c.push(&[rec]).await[0]).clone();
    assert_eq!(f.class, FailureClass::Rejected);
    assert_eq!(f.code, "MULTIPLE_MATCHES");
    assert!(f.message.contains("/sobjects/Lead/00Q"), "{}", f.message);
}

#[tokio::test]
async fn expired_session_is_refreshed_once_and_nothing_is_lost() {
    let fake = fake().await;
    let c = connector(&fake);
    let first: Vec<_> = (0..3).map(|i| record(i, person(i), "INS")).collect();
    assert!(c
        .push(&first)
        .await
        .iter()
        .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })));
    fake.expire_tokens();
    let second: Vec<_> = (3..8).map(|i| record(i, person(i), "INS")).collect();
    let out = c.push(&second).await;
    for o in &out {
        let f = failure(o);
        assert_eq!(f.class, FailureClass::AuthExpired);
        assert_eq!(f.code, "INVALID_SESSION_ID");
    }
    // What the pipeline does: push the expired ones again at once.
    let out = c.push(&second).await;
    assert!(out.iter().all(|o| delivered(o).1));
    assert_eq!(fake.token_request_count(), 2);
    assert_eq!(fake.records().len(), 8);

    // Many concurrent pushes hitting one stale token cause one refresh.
    fake.expire_tokens();
    let mut handles = Vec::new();
    for i in 0..6 {
        let c = Arc::clone(&c);
        let r = record(100 + i, person(100 + i), "INS");
        handles.push(tokio::spawn(async move { c.push(&[r]).await }));
    }
    for h in handles {
        h.await.unwrap();
    }
    delivered(&c.push(&[record(200, person(200), "INS")]).await[0]);
    assert_eq!(fake.token_request_count(), 3);
}

#[tokio::test]
async fn quota_throttling_and_server_errors_are_classified() {
    let fake = fake().await;
    let c = concrete_connector(&fake);
    let recs: Vec<_> = (0..2).map(|i| record(i, person(i), "INS")).collect();
    fake.set_api_usage(15_000, 15_000);
    let out = c.push(&recs).await;
    for o in &out {
        let f = failure(o);
        assert_eq!(f.class, FailureClass::Throttled);
        assert_eq!(f.code, "REQUEST_LIMIT_EXCEEDED");
        assert_eq!(f.retry_after, Some(Duration::from_secs(15 * 60)));
    }
    let u = c.last_api_usage().unwrap();
    assert_eq!((u.used, u.max), (15_000, 15_000));
    for o in &out {
        assert!(
            !failure(o).concurrency_limit,
            "the daily quota is not a concurrency limit"
        );
    }

    // The concurrent long-request limit: a short pause and fewer requests in flight.
    fake.set_api_usage(10, 15_000);
    fake.inject(Fault::ConcurrentRequestLimit, 1);
    let f = failure(&c.push(&recs).await[0]).clone();
    assert_eq!(
        (f.class, f.code.as_str()),
        (FailureClass::Throttled, "REQUEST_LIMIT_EXCEEDED")
    );
    assert!(f.concurrency_limit);
    assert_eq!(f.retry_after, Some(Duration::from_secs(5)));

    fake.set_api_usage(10, 15_000);
    fake.inject(Fault::Unavailable, 1);
    let f = failure(&c.push(&recs).await[0]).clone();
    assert_eq!(
        (f.class, f.code.as_str()),
        (FailureClass::Transient, "SERVER_UNAVAILABLE")
    );
    fake.inject(
        Fault::TooManyRequests {
            retry_after_secs: 7,
        },
        1,
    );
    let f = failure(&c.push(&recs).await[0]).clone();
    assert_eq!(f.class, FailureClass::Throttled);
    assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
    fake.inject(Fault::ServerError, 1);
    let f = failure(&c.push(&recs).await[1]).clone();
    assert_eq!(f.class, FailureClass::Transient);
    // And then it works.
    assert!(c
        .push(&recs)
        .await
        .iter()
        .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })));
}

#[tokio::test]
async fn dnc_marks_opt_out_and_a_later_event_never_clears_it() {
    let fake = fake().await;
    let c = connector(&fake);
    // Customer-scoped keys: the DNC notice and a later install share one record.
    let customer = person(1);
    let mk = |action: &str, i: usize| {
        let mut r = record(i, customer.clone(), action);
        let lead = (*r.lead).clone();
        r.idempotency_key = idempotency_key("sf", KeyScope::Customer, &lead);
        let s: SalesforceSettings = serde_json::from_value(json!({
            "login_url": "https://x.my.salesforce.com", "client_id": "x", "client_secret": "y"
        }))
        .unwrap();
        r.fields = default_mapping(&s)
            .apply(&lead, &r.idempotency_key, &lead_field_limits())
            .0;
        r
    };
    let dnc = mk("DNC", 1);
    c.push(std::slice::from_ref(&dnc)).await;
    let stored = fake
        .record_by_external_id(EXT, &dnc.idempotency_key)
        .unwrap();
    assert_eq!(stored.fields["HasOptedOutOfEmail"], json!(true));
    assert_eq!(stored.fields["DoNotCall"], json!(true));
    let ins = mk("INS", 2);
    assert_eq!(ins.idempotency_key, dnc.idempotency_key);
    let (_, created) = delivered(&c.push(&[ins]).await[0]);
    assert!(!created);
    let stored = fake
        .record_by_external_id(EXT, &dnc.idempotency_key)
        .unwrap();
    assert_eq!(stored.fields["HasOptedOutOfEmail"], json!(true));
    assert_eq!(stored.fields["DoNotCall"], json!(true));
}

#[tokio::test]
async fn jwt_bearer_assertion_is_verified_with_the_configured_public_key() {
    let (private, public) = generate_rsa_key_pem();
    let fake = SalesforceFake::start(SalesforceFakeConfig {
        jwt_public_key_pem: Some(public),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sf.key"), &private).unwrap();
    let jwt = |user: &str| {
        serde_json::from_value::<SalesforceSettings>(json!({
            "login_url": fake.base_url(),
            "auth": "jwt_bearer",
            "client_id": fake.config().client_id,
            "username": user,
            "private_key": {"file": "sf.key"},
        }))
        .unwrap()
    };
    let c = SalesforceConnector::try_new(jwt("integration@example.com"), dir.path()).unwrap();
    let (_, created) = delivered(&c.push(&[record(1, person(1), "INS")]).await[0]);
    assert!(created);
    let report = c.check(true).await.unwrap();
    assert!(report.verified.iter().any(|l| l.contains("jwt_bearer")));

    // A user the app was not approved for, and a key the org does not know.
    let c = SalesforceConnector::try_new(jwt("someone@else.example"), dir.path()).unwrap();
    let f = failure(&c.push(&[record(2, person(2), "INS")]).await[0]).clone();
    assert_eq!(f.code, "token_invalid_grant");
    assert!(f.message.contains("approved"), "{}", f.message);
    let (other, _) = generate_rsa_key_pem();
    std::fs::write(dir.path().join("sf.key"), &other).unwrap();
    let c = SalesforceConnector::try_new(jwt("integration@example.com"), dir.path()).unwrap();
    let f = failure(&c.push(&[record(3, person(3), "INS")]).await[0]).clone();
    assert_eq!(f.code, "token_invalid_grant");
    assert_eq!(fake.records().len(), 1);
}

#[tokio::test]
async fn bad_client_secret_is_a_token_failure_not_a_dead_letter() {
    let fake = fake().await;
    let c = connector_with(&fake, json!({"client_secret": "wrong"}));
    let f = failure(&c.push(&[record(1, person(1), "INS")]).await[0]).clone();
    assert_eq!(f.code, "token_invalid_client");
    assert_eq!(f.class, FailureClass::TargetDown);
    let e = c.check(true).await.unwrap_err();
    assert_eq!(e.what, "token");
    assert!(!e.reason.contains("wrong"));
}

#[tokio::test]
async fn check_connect_verifies_the_org() {
    let fake = fake().await;
    let c = connector(&fake);
    let r = c.check(true).await.unwrap();
    let text = r.verified.join("\n");
    assert!(text.contains("token obtained"), "{text}");
    assert!(text.contains(&format!("Lead.{EXT} is an External ID (unique)")));
    assert!(text.contains("mapped field(s) exist"));
    assert!(text.contains("warning: \"Microsoft Marketplace\" is not among the values"));
    assert!(text.contains("API requests used"));

    // A required custom picklist no lead fills: the Web-to-Lead trap.
    fake.add_field(FieldSpec::picklist("Region__c", "Region", &["EMEA", "APAC"], true).required());
    let e = c.check(true).await.unwrap_err();
    assert_eq!(e.what, "mapping.fields.Region__c");
    assert!(e.reason.contains("REQUIRED_FIELD_MISSING"));
    // Mapped to a value the restricted picklist lacks: still every lead rejected.
    let conn = connection(&fake, json!({}));
    let mut overrides = BTreeMap::new();
    overrides.insert(
        "Region__c".to_string(),
        RawRule::Spec(leadsync_core::mapping::RawRuleSpec {
            value: Some(json!("Mars")),
            ..Default::default()
        }),
    );
    let m = MappingOverrides::from_raw(false, &overrides).unwrap();
    let c2 = built(&conn, &m);
    let e = c2.check(true).await.unwrap_err();
    assert!(e.reason.contains("restricted picklist"), "{e}");
    // Mapped to a good value: fine.
    overrides.insert(
        "Region__c".to_string(),
        RawRule::Spec(leadsync_core::mapping::RawRuleSpec {
            value: Some(json!("EMEA")),
            ..Default::default()
        }),
    );
    let m = MappingOverrides::from_raw(false, &overrides).unwrap();
    let c3 = built(&conn, &m);
    c3.check(true).await.unwrap();

    // A mapped field the org does not have.
    overrides.insert("Nope__c".to_string(), RawRule::Field("email".into()));
    let m = MappingOverrides::from_raw(false, &overrides).unwrap();
    let c4 = built(&conn, &m);
    let e = c4.check(true).await.unwrap_err();
    assert_eq!(e.what, "mapping.fields.Nope__c");

    // An external ID field that is not one.
    let c5 = connector_with(&fake, json!({"external_id_field": "Title"}));
    let e = c5.check(true).await.unwrap_err();
    assert!(e.reason.contains("not flagged External ID"), "{e}");
    let c6 = connector_with(&fake, json!({"external_id_field": "Missing__c"}));
    let e = c6.check(true).await.unwrap_err();
    assert!(e.reason.contains("has no field"), "{e}");
}

#[tokio::test]
async fn unknown_external_id_field_is_rejected_404() {
    let fake = fake().await;
    let c = connector_with(&fake, json!({"external_id_field": "Missing__c"}));
    let f = failure(&c.push(&[record(1, person(1), "INS")]).await[0]).clone();
    assert_eq!(
        (f.class, f.code.as_str()),
        (FailureClass::Rejected, "NOT_FOUND")
    );
}

#[tokio::test]
async fn non_ascii_email_needs_eai() {
    let fake = fake().await;
    let c = connector(&fake);
    let mut p = person(1);
    p["Email"] = json!("zoë@fabrikam.example");
    let rec = record(1, p, "INS");
    let f = failure(&c.push(std::slice::from_ref(&rec)).await[0]).clone();
    assert_eq!(f.code, "INVALID_EMAIL_ADDRESS");
    fake.set_eai(true);
    delivered(&c.push(&[rec]).await[0]);
}

#[test]
fn settings_are_validated() {
    let base = json!({"login_url": "https://acme.my.salesforce.com", "client_id": "id"});
    let try_new = |extra: Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let s: SalesforceSettings = serde_json::from_value(v).unwrap();
        SalesforceConnector::try_new(s, std::path::Path::new(".")).err()
    };
    assert_eq!(try_new(json!({})).unwrap().key, "connection.client_secret");
    assert!(try_new(json!({"client_secret": "s"})).is_none());
    assert_eq!(
        try_new(json!({"client_secret": "s", "api_version": "v45.0"}))
            .unwrap()
            .key,
        "connection.api_version"
    );
    assert_eq!(
        try_new(json!({"client_secret": "s", "login_url": "http://acme.my.salesforce.com"}))
            .unwrap()
            .key,
        "connection.login_url"
    );
    assert_eq!(
        try_new(json!({"auth": "jwt_bearer", "username": "u"}))
            .unwrap()
            .key,
        "connection.private_key"
    );
    assert_eq!(
        try_new(json!({"client_secret": "s", "description_template": "{nope}"}))
            .unwrap()
            .key,
        "connection.description_template"
    );
    assert!(serde_json::from_value::<SalesforceSettings>(
        json!({"login_url": "https://a", "client_id": "x", "bogus": 1})
    )
    .is_err());
}
