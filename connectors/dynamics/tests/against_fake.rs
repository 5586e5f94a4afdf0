//! The Dataverse connector against the fake Dataverse of `leadsync-fakes`: upsert and
//! `$batch`, created vs updated, token expiry, throttling, partial batch failures,
//! create-only mode after ambiguous failures, certificate auth and `check --connect`.

use leadsync_core::{
    read_lead, BuildContext, Connector, DeliveryOutcome, FailureClass, Mapping, MappingOverrides,
    OutboundRecord, RawRule,
};
use leadsync_dynamics::{default_mapping, DynamicsConnector, DynamicsSettings};
use leadsync_fakes::dataverse::{AssertionKey, DataverseConfig, FakeDataverse};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The `[connection]` table of a target on the fake, with `extra` keys over it (a `null`
/// removes the key).
fn connection(fake: &FakeDataverse, extra: Value) -> Value {
    let mut v = json!({
        "url": fake.base_url(),
        "authority": fake.authority(),
        "tenant_id": fake.tenant(),
        "client_id": "leadsync-app",
        "client_secret": "s3cret",
        "http": { "timeout": "10s" },
    });
    for (k, x) in extra.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    v
}

fn settings(fake: &FakeDataverse, extra: Value) -> DynamicsSettings {
    serde_json::from_value(connection(fake, extra)).unwrap()
}

/// What the registry hands `build` for a target with this `[connection]` and `[mapping]`
/// (and no `[limits] batch_size`).
fn context<'a>(connection: &'a Value, mapping: &'a MappingOverrides) -> BuildContext<'a> {
    BuildContext {
        target: "dynamics",
        connection,
        base_dir: Path::new("."),
        mapping,
        batch_size: None,
    }
}

struct Target {
    connector: Arc<dyn Connector>,
    mapping: Mapping,
}

/// A target built as the registry builds it, without `[mapping]`; `mapping` is the default
/// mapping its records are mapped with.
fn target(fake: &FakeDataverse, extra: Value) -> Target {
    let conn = connection(fake, extra);
    let s: DynamicsSettings = serde_json::from_value(conn.clone()).unwrap();
    let mapping = default_mapping(&s);
    let connector =
        leadsync_dynamics::build(&context(&conn, &MappingOverrides::default())).unwrap();
    Target { connector, mapping }
}

fn lead_json(i: usize, action: &str) -> Value {
    json!({
        "UserDetails": {"FirstName": format!("Ann{i}"), "LastName": "Lee", "Email": format!("ann{i}@example.com"),
                        "Phone": "+1 555 0100", "Country": "Denmark", "Company": "Contoso", "Title": "CTO"},
        "LeadSource": "AzureMarketplace", "ActionCode": action, "OfferTitle": "Contoso Analytics",
        "Description": "Wants a demo"
    })
}

impl Target {
    fn record_from(&self, i: usize, attempt: u32, v: Value) -> OutboundRecord {
        let lead = read_lead(format!("lead-{i}"), &v).unwrap();
        let key = format!("{i:032x}");
        let (fields, _) = self
            .mapping
            .apply(&lead, &key, &self.connector.field_limits());
        OutboundRecord {
            lead_id: lead.id.clone(),
            idempotency_key: key,
            attempt,
            lead: Arc::new(lead),
            fields,
        }
    }
    fn record(&self, i: usize, attempt: u32) -> OutboundRecord {
        self.record_from(i, attempt, lead_json(i, "INS"))
    }
}

/// The Web API requests the fake received (the token requests left out).
fn api_requests(fake: &FakeDataverse) -> Vec<leadsync_fakes::dataverse::RequestRecord> {
    fake.requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/"))
        .collect()
}

fn delivered(o: &DeliveryOutcome) -> (Option<String>, Option<bool>) {
    match o {
        DeliveryOutcome::Delivered { crm_ref, created } => (crm_ref.clone(), *created),
        DeliveryOutcome::Failed(f) => panic!("expected delivered, got {f:?}"),
    }
}

fn failed(o: &DeliveryOutcome) -> &leadsync_core::DeliveryFailure {
    match o {
        DeliveryOutcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn batch_upsert_creates_then_updates_the_same_records() {
    let fake = FakeDataverse::start().await;
    let t = target(&fake, json!({}));
    let recs: Vec<_> = (0..5).map(|i| t.record(i, 1)).collect();
    let out = t.connector.push(&recs).await;
    assert_eq!(out.len(), 5);
    let mut ids = Vec::new();
    for o in &out {
        let (id, created) = delivered(o);
        assert_eq!(created, Some(true));
        ids.push(id.expect("leadid recorded"));
    }
    assert_eq!(fake.lead_count(), 5);
    let l = fake.lead_by_key(&format!("{:032x}", 3)).unwrap();
    assert_eq!(l["leadid"], Value::String(ids[3].clone()));
    assert_eq!(l["firstname"], "Ann3");
    assert_eq!(l["lastname"], "Lee");
    assert_eq!(l["emailaddress1"], "ann3@example.com");
    assert_eq!(l["telephone1"], "+1 555 0100");
    assert_eq!(l["address1_country"], "Denmark");
    assert_eq!(l["companyname"], "Contoso");
    assert_eq!(l["jobtitle"], "CTO");
    assert_eq!(l["subject"], "Contoso Analytics (INS)");
    assert_eq!(l["description"], "Wants a demo");
    assert_eq!(l["leadsourcecode"], 8);
    assert_eq!(l["leadqualitycode"], 1);
    assert!(
        l.get("donotemail").is_none(),
        "flags are never sent as false"
    );
    // One $batch request carried the five.
    let data = api_requests(&fake);
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].path, "/api/data/v9.2/$batch");
    assert_eq!(data[0].operations, 5);

    // Again: updates, same ids, no new record.
    let again = t.connector.push(&recs).await;
    for (o, id) in again.iter().zip(&ids) {
        assert_eq!(delivered(o), (Some(id.clone()), Some(false)));
    }
    assert_eq!(fake.lead_count(), 5);

    // A batch of one is a single PATCH.
    let one = t.connector.push(&[t.record(9, 1)]).await;
    assert_eq!(delivered(&one[0]).1, Some(true));
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.method, "PATCH");
    assert!(last
        .path
        .starts_with("/api/data/v9.2/leads(new_leadsynckey='"));
    assert_eq!(fake.tokens_issued(), 1, "one token for every push");
}

#[tokio::test]
async fn an_upsert_prepared_ahead_is_the_same_batch_and_a_stale_one_is_not_sent() {
    let fake = FakeDataverse::start().await;
    let t = target(&fake, json!({}));
    let recs: Vec<_> = (0..4).map(|i| t.record(i, 1)).collect();
    // A single record and create-only have nothing made ahead.
    assert!(t.connector.prepare(&recs[..1]).is_none());
    let create_only = target(&fake, json!({"mode": "create_only"}));
    assert!(create_only.connector.prepare(&recs).is_none());

    let prepared = t
        .connector
        .prepare(&recs)
        .expect("an upsert $batch is made ahead");
    let out = t.connector.push_prepared(&recs, prepared).await;
    for o in &out {
        assert_eq!(delivered(o).1, Some(true));
    }
    assert_eq!(fake.lead_count(), 4);
    let l = fake.lead_by_key(&format!("{:032x}", 2)).unwrap();
    assert_eq!(l["firstname"], "Ann2");
    let data = api_requests(&fake);
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].path, "/api/data/v9.2/$batch");
    assert_eq!(data[0].operations, 4);

    // Made of other records (as many): the batch given is written, not the stale one.
    let stale = t.connector.prepare(&recs[..3]).expect("prepared");
    let more: Vec<_> = (4..7).map(|i| t.record(i, 1)).collect();
    let out = t.connector.push_prepared(&more, stale).await;
    assert_eq!(out.len(), 3);
    for o in &out {
        assert_eq!(delivered(o).1, Some(true));
    }
    assert_eq!(fake.lead_count(), 7);
}

#[tokio::test]
async fn quality_from_action_and_dnc_flags_set_but_never_cleared() {
    let fake = FakeDataverse::start().await;
    let t = target(
        &fake,
        json!({"lead_quality": {"PLT": 3, "other": 2}, "lead_source_code": 4}),
    );
    let plt = t.record_from(1, 1, lead_json(1, "PLT"));
    let odd = t.record_from(2, 1, lead_json(2, "Weird"));
    let dnc = t.record_from(3, 1, lead_json(3, "DNC"));
    for o in t.connector.push(&[plt, odd, dnc]).await {
        delivered(&o);
    }
    let get = |i: usize| fake.lead_by_key(&format!("{i:032x}")).unwrap();
    assert_eq!(get(1)["leadqualitycode"], 3);
    assert_eq!(get(2)["leadqualitycode"], 2);
    assert_eq!(get(1)["leadsourcecode"], 4);
    assert_eq!(get(3)["donotemail"], true);
    assert_eq!(get(3)["donotphone"], true);
    assert_eq!(get(3)["donotbulkemail"], true);
    // A later non-DNC event on the same key does not clear the opt-out.
    let later = t.record_from(3, 1, lead_json(3, "INS"));
    delivered(&t.connector.push(&[later]).await[0]);
    assert_eq!(get(3)["donotemail"], true);
    assert_eq!(get(3)["subject"], "Contoso Analytics (INS)");
}

#[tokio::test]
async fn expired_token_costs_no_lead_and_is_refreshed_once() {
    let fake = FakeDataverse::start().await;
    let t = target(&fake, json!({}));
    let recs: Vec<_> = (0..4).map(|i| t.record(i, 1)).collect();
    for o in t.connector.push(&recs[..2]).await {
        delivered(&o);
    }
    fake.expire_tokens();
    // Two batches in flight with the now stale token.
    let (a, b) = tokio::join!(t.connector.push(&recs[2..3]), t.connector.push(&recs[3..4]));
    for o in a.iter().chain(b.iter()) {
        assert_eq!(failed(o).class, FailureClass::AuthExpired);
    }
    // What the pipeline does: push those again at once.
    let (a, b) = tokio::join!(t.connector.push(&recs[2..3]), t.connector.push(&recs[3..4]));
    delivered(&a[0]);
    delivered(&b[0]);
    assert_eq!(fake.tokens_issued(), 2, "one refresh for both");
    assert_eq!(fake.lead_count(), 4);

    // A token that dies before its announced end (revocation) behaves the same.
    fake.set_token_lifetime(Duration::from_millis(1));
    fake.expire_tokens();
    let r = t.connector.push(&recs[..1]).await;
    assert_eq!(failed(&r[0]).class, FailureClass::AuthExpired);
    fake.set_token_lifetime(Duration::from_secs(3600));
    delivered(&t.connector.push(&recs[..1]).await[0]);
}

#[tokio::test]
async fn service_protection_429_is_throttled_with_retry_after() {
    let fake = FakeDataverse::start().await;
    let t = target(&fake, json!({}));
    let recs: Vec<_> = (0..3).map(|i| t.record(i, 1)).collect();
    fake.throttle_next(1, 7);
    let out = t.connector.push(&recs).await;
    for o in &out {
        let f = failed(o);
        assert_eq!(f.class, FailureClass::Throttled);
        assert_eq!(f.code, "0x80072322");
        assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        assert!(f.message.contains("Number of requests exceeded"));
    }
    assert_eq!(fake.lead_count(), 0);
    fake.throttle_next_with(1, 2, leadsync_fakes::dataverse::CODE_CONCURRENCY);
    let f = t.connector.push(&recs[..1]).await;
    assert_eq!(failed(&f[0]).code, "0x80072326");
    for o in t.connector.push(&recs).await {
        delivered(&o);
    }
}

#[tokio::test]
async fn a_batch_with_failing_parts_fails_only_those_with_dataverse_reasons() {
    let fake = FakeDataverse::start().await;
    // This organisation shortened jobtitle: our default limit does not know it.
    fake.set_max_length("jobtitle", 10);
    let t = target(&fake, json!({}));
    let mut long = lead_json(2, "INS");
    long["UserDetails"]["Title"] = json!("Chief Technology Officer");
    let recs = vec![
        t.record(0, 1),
        t.record(1, 1),
        t.record_from(2, 1, long),
        t.record(3, 1),
    ];
    fake.fail_next_operations(1, 503);
    let out = t.connector.push(&recs).await;
    let f0 = failed(&out[0]);
    assert_eq!(f0.class, FailureClass::Transient);
    delivered(&out[1]);
    let f2 = failed(&out[2]);
    assert_eq!(f2.class, FailureClass::Rejected);
    assert_eq!(f2.code, "0x80044331");
    assert_eq!(
        f2.message,
        "A validation error occurred.  The length of the 'jobtitle' attribute of the 'lead' entity exceeded the maximum allowed length of '10'."
    );
    delivered(&out[3]);
    assert_eq!(fake.lead_count(), 2);
    // Only the transient one is retried.
    let again = t.connector.push(&recs[..1]).await;
    assert_eq!(delivered(&again[0]).1, Some(true));
    assert_eq!(fake.lead_count(), 3);
    assert!(fake.lead_by_key(&format!("{:032x}", 2)).is_none());
}

#[tokio::test]
async fn over_length_values_are_cut_to_the_spec_lengths_before_sending() {
    let fake = FakeDataverse::start().await;
    let t = target(&fake, json!({}));
    let mut v = lead_json(1, "INS");
    // 49 letters and an emoji: 50 characters but 51 UTF-16 units.
    v["UserDetails"]["FirstName"] = json!(format!("{}😀", "a".repeat(49)));
    v["Description"] = json!("d".repeat(2500));
    let r = t.record_from(1, 1, v);
    delivered(&t.connector.push(&[r]).await[0]);
    let l = fake.lead_by_key(&format!("{:032x}", 1)).unwrap();
    assert_eq!(l["firstname"].as_str().unwrap(), "a".repeat(49));
    assert_eq!(l["description"].as_str().unwrap().len(), 2000);
}

#[tokio::test]
async fn create_only_looks_the_lead_up_before_creating_again() {
    let fake = FakeDataverse::start_with(DataverseConfig {
        alternate_key_status: None,
        ..Default::default()
    })
    .await;
    let t = target(&fake, json!({"mode": "create_only"}));
    // The create lands but its answer is lost.
    fake.commit_then_fail_next_operations(1, 503);
    let first = t.connector.push(&[t.record(1, 1)]).await;
    assert_eq!(failed(&first[0]).class, FailureClass::Transient);
    assert_eq!(fake.lead_count(), 1);
    // The pipeline retries (attempt 2): found, not created again.
    let second = t.connector.push(&[t.record(1, 2), t.record(2, 1)]).await;
    let stored = fake.lead_by_key(&format!("{:032x}", 1)).unwrap();
    assert_eq!(
        delivered(&second[0]),
        (
            Some(stored["leadid"].as_str().unwrap().to_string()),
            Some(false)
        )
    );
    assert_eq!(delivered(&second[1]).1, Some(true));
    assert_eq!(fake.lead_count(), 2);
    // A retried lead that never landed is created.
    let third = t.connector.push(&[t.record(3, 2)]).await;
    assert_eq!(delivered(&third[0]).1, Some(true));
    assert_eq!(fake.lead_count(), 3);
    let gets = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/data/v9.2/leads")
        .count();
    assert_eq!(gets, 2, "one lookup per retried lead");
}

#[tokio::test]
async fn create_only_resolves_a_412_duplicate_by_lookup() {
    let fake = FakeDataverse::start().await;
    let t = target(&fake, json!({"mode": "create_only"}));
    let mut m = serde_json::Map::new();
    m.insert("new_leadsynckey".into(), json!(format!("{:032x}", 5)));
    let id = fake.insert_lead(m);
    // attempt 1, so no lookup first: the create meets the alternate key's 412.
    let out = t.connector.push(&[t.record(5, 1), t.record(6, 1)]).await;
    assert_eq!(delivered(&out[0]), (Some(id), Some(false)));
    assert_eq!(delivered(&out[1]).1, Some(true));
    assert_eq!(fake.lead_count(), 2);
}

#[tokio::test]
async fn check_connect_verifies_token_whoami_key_and_columns() {
    let fake = FakeDataverse::start().await;
    let t = target(&fake, json!({}));
    let offline = t.connector.check(false).await.unwrap();
    assert_eq!(fake.request_count(), 0);
    assert!(offline.verified.iter().any(|l| l.contains("client secret")));
    let r = t.connector.check(true).await.unwrap();
    let text = r.verified.join("\n");
    assert!(text.contains("token obtained"), "{text}");
    assert!(text.contains("WhoAmI answered"), "{text}");
    assert!(
        text.contains("alternate key new_leadsynckey_key on new_leadsynckey is Active"),
        "{text}"
    );
    assert!(text.contains("mapped column(s) exist"), "{text}");

    // A mapping of only these two columns (`replace_defaults`).
    let only = BTreeMap::from([
        ("firstname".to_string(), RawRule::Field("first_name".into())),
        ("new_nosuch".to_string(), RawRule::Field("email".into())),
    ]);
    let only = MappingOverrides::from_raw(true, &only).unwrap();
    let conn = connection(&fake, json!({}));
    let bad = leadsync_dynamics::build(&context(&conn, &only)).unwrap();
    let e = bad.check(true).await.unwrap_err();
    assert_eq!(e.what, "mapping");
    assert!(e.reason.contains("new_nosuch"));

    fake.set_alternate_key_status(Some("Pending"));
    let e = t.connector.check(true).await.unwrap_err();
    assert!(e.reason.contains("Pending"), "{e}");
    fake.set_alternate_key_status(None);
    let e = t.connector.check(true).await.unwrap_err();
    assert!(e.reason.contains("create_only"), "{e}");
    // create-only needs no key, only the column.
    let co = target(&fake, json!({"mode": "create_only"}));
    co.connector.check(true).await.unwrap();

    let wrong = target(&fake, json!({"client_secret": "nope"}));
    let e = wrong.connector.check(true).await.unwrap_err();
    assert_eq!(e.what, "token");
    assert!(e.reason.contains("AADSTS7000215"), "{e}");
    // A push with a refused secret is about the target (an operator fixes it): the pipeline
    // opens the target's circuit; no lead becomes a dead letter.
    let f = wrong.connector.push(&[t.record(1, 1)]).await;
    assert_eq!(failed(&f[0]).class, FailureClass::TargetDown);
}

#[test]
fn settings_are_validated_with_the_key_named() {
    let base = json!({"url": "https://org.crm.dynamics.com", "tenant_id": "t", "client_id": "c", "client_secret": "s"});
    let build = |patch: Value| {
        let mut v = base.clone();
        for (k, x) in patch.as_object().unwrap() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        let s: DynamicsSettings = serde_json::from_value(v).unwrap();
        DynamicsConnector::try_new(s, std::path::Path::new("."))
    };
    assert!(build(json!({})).is_ok());
    assert_eq!(
        build(json!({"url": "http://org.crm.dynamics.com"}))
            .err()
            .unwrap()
            .key(),
        "url"
    );
    assert_eq!(
        build(json!({"client_secret": null})).err().unwrap().key(),
        "client_secret"
    );
    assert_eq!(
        build(json!({"certificate": "x"})).err().unwrap().key(),
        "certificate"
    );
    assert_eq!(
        build(json!({"key_column": "New-Key"})).err().unwrap().key(),
        "key_column"
    );
    assert_eq!(
        build(json!({"api_version": "9"})).err().unwrap().key(),
        "api_version"
    );
    assert_eq!(
        build(json!({"token_url": "ftp://x"})).err().unwrap().key(),
        "token_url"
    );
    assert!(serde_json::from_value::<DynamicsSettings>(
        json!({"url": "u", "tenant_id": "t", "client_id": "c", "bogus": 1})
    )
    .is_err());
    let c = build(json!({})).unwrap();
    assert_eq!(c.max_batch(), 50);
    let (conn, mapping) = (base.clone(), MappingOverrides::default());
    let ctx = BuildContext {
        batch_size: Some(5000),
        ..context(&conn, &mapping)
    };
    assert_eq!(leadsync_dynamics::build(&ctx).unwrap().max_batch(), 1000);
}

/// An RSA key and self-signed certificate made with the `openssl` command, or `None`.
fn openssl_cert(dir: &std::path::Path) -> Option<(String, String, String)> {
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=leadsync-test",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .ok()?
        .status
        .success();
    if !ok {
        return None;
    }
    let pubkey = std::process::Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(dir.join("cert.pem"))
        .output()
        .ok()?;
    Some((
        std::fs::read_to_string(dir.join("key.pem")).ok()?,
        std::fs::read_to_string(dir.join("cert.pem")).ok()?,
        String::from_utf8(pubkey.stdout).ok()?,
    ))
}

#[tokio::test]
async fn certificate_credentials_sign_an_assertion_the_fake_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let Some((key, cert, public)) = openssl_cert(dir.path()) else {
        if std::env::var("LEADSYNC_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("openssl is needed for the certificate test");
        }
        leadsync_fakes::announce_skip("openssl not found; certificate auth not tested");
        return;
    };
    let fake = FakeDataverse::start_with(DataverseConfig {
        client_secret: None,
        assertion_key: Some(AssertionKey {
            public_key_pem: public,
            cert_pem: Some(cert.clone()),
        }),
        ..Default::default()
    })
    .await;
    std::fs::write(dir.path().join("both.pem"), format!("{cert}{key}")).unwrap();
    let s = settings(
        &fake,
        json!({"client_secret": null, "certificate": {"file": dir.path().join("both.pem")}}),
    );
    let mapping = default_mapping(&s);
    let t = Target {
        connector: Arc::new(DynamicsConnector::try_new(s, dir.path()).unwrap()),
        mapping,
    };
    delivered(&t.connector.push(&[t.record(1, 1)]).await[0]);
    assert_eq!(fake.assertions_verified(), 1);
    // Expiry: the next token is fetched with a fresh assertion.
    fake.expire_tokens();
    assert_eq!(
        failed(&t.connector.push(&[t.record(2, 1)]).await[0]).class,
        FailureClass::AuthExpired
    );
    delivered(&t.connector.push(&[t.record(2, 1)]).await[0]);
    assert_eq!(fake.assertions_verified(), 2);

    // Another key with the same certificate name: refused.
    let other = tempfile::tempdir().unwrap();
    let (key2, _, _) = openssl_cert(other.path()).unwrap();
    let s = settings(
        &fake,
        json!({"client_secret": null, "certificate": cert, "private_key": key2}),
    );
    let c = DynamicsConnector::try_new(s, dir.path()).unwrap();
    let e = c.check(true).await.unwrap_err();
    assert!(e.reason.contains("AADSTS700027"), "{e}");
}
