//! The Marketo connector against the fake instance (`leadsync_fakes::marketo`): Sync Leads
//! with the default mapping, re-pushes updating the same leads, the token reused and
//! refreshed once on 602, throttles (606, 615, 607) as target-wide pauses of the right
//! length, the pacer keeping a backlog under the instance's limits, a mixed batch, the
//! per-key serialisation and `check --connect`.

use leadsync_core::{
    idempotency_key, read_lead, BuildContext, Connector, DeliveryFailure, DeliveryOutcome,
    FailureClass, KeyScope, MappingOverrides, OutboundRecord,
};
use leadsync_fakes::marketo::{Fault, FieldSpec, MarketoFake, MarketoFakeConfig};
use leadsync_marketo::{default_mapping, lead_field_limits, next_quota_reset, MarketoSettings};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn connection(fake: &MarketoFake, extra: Value) -> Value {
    let defaults = MarketoFakeConfig::default();
    let mut v = json!({
        "endpoint": fake.base_url(),
        "client_id": defaults.client_id,
        "client_secret": defaults.client_secret,
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// The target as the registry builds it.
fn connector(fake: &MarketoFake, extra: Value) -> Arc<dyn Connector> {
    let connection = connection(fake, extra);
    let mapping = MappingOverrides::default();
    leadsync_marketo::build(&BuildContext {
        target: "mkto",
        connection: &connection,
        base_dir: Path::new("."),
        mapping: &mapping,
        batch_size: None,
    })
    .expect("connector")
}

/// Lead `i` of customer `email`, mapped with the default mapping as the pipeline would.
fn record(i: usize, email: &str) -> OutboundRecord {
    let lead = read_lead(
        format!("lead-{i}"),
        &json!({"UserDetails": {"FirstName": format!("Ada{i}"), "LastName": "Lovelace",
                "Email": email, "Company": "Contoso", "Country": "GB", "Title": "CTO",
                "Phone": "+44 1234"},
                "LeadSource": "AzureMarketplace", "ActionCode": "INS",
                "OfferTitle": "Contoso CRM", "Description": format!("note {i}")}),
    )
    .unwrap();
    let key = idempotency_key("mkto", KeyScope::Lead, &lead);
    let s: MarketoSettings = serde_json::from_value(
        json!({"endpoint": "https://1.mktorest.com", "client_id": "x", "client_secret": "y"}),
    )
    .unwrap();
    let (fields, _) = default_mapping(&s).apply(&lead, &key, &lead_field_limits(&s));
    OutboundRecord {
        lead_id: lead.id.clone(),
        idempotency_key: key,
        attempt: 1,
        lead: Arc::new(lead),
        fields,
    }
}

fn email(i: usize) -> String {
    format!("ada{i}@contoso.example")
}

fn failure(o: &DeliveryOutcome) -> &DeliveryFailure {
    match o {
        DeliveryOutcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn created(o: &DeliveryOutcome) -> (String, bool) {
    match o {
        DeliveryOutcome::Delivered {
            crm_ref: Some(id),
            created: Some(c),
        } => (id.clone(), *c),
        other => panic!("expected delivered with id, got {other:?}"),
    }
}

async fn fake() -> MarketoFake {
    MarketoFake::start(MarketoFakeConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn leads_arrive_mapped_and_a_repush_updates_the_same_leads() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    let batch: Vec<_> = (0..3).map(|i| record(i, &email(i))).collect();
    let first: Vec<_> = c.push(&batch).await.iter().map(created).collect();
    assert!(first.iter().all(|(_, new)| *new), "{first:?}");
    let leads = fake.leads();
    assert_eq!(leads.len(), 3);
    let l = leads
        .iter()
        .find(|l| l.get_str("email") == Some("ada1@contoso.example"))
        .unwrap();
    assert_eq!(l.get_str("firstName"), Some("Ada1"));
    assert_eq!(l.get_str("lastName"), Some("Lovelace"));
    assert_eq!(l.get_str("company"), Some("Contoso"));
    assert_eq!(l.get_str("title"), Some("CTO"));
    assert_eq!(l.get_str("country"), Some("GB"));
    assert_eq!(l.get_str("leadSource"), Some("Microsoft Marketplace"));
    let note = l
        .get_str(leadsync_marketo::DEFAULT_DESCRIPTION_FIELD)
        .unwrap();
    assert!(note.contains("note 1") && note.contains("INS"), "{note}");
    let again: Vec<_> = c.push(&batch).await.iter().map(created).collect();
    assert!(again.iter().all(|(_, new)| !*new));
    assert_eq!(
        first.iter().map(|x| &x.0).collect::<Vec<_>>(),
        again.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    assert_eq!(fake.leads().len(), 3);
    // One token for all of it: Marketo hands out the same one until it expires.
    assert_eq!(fake.token_requests(), 1);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_costs_nothing() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    created(&c.push(&[record(0, &email(0))]).await[0]);
    fake.expire_tokens();
    let out = c.push(&[record(1, &email(1)), record(2, &email(2))]).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })),
        "{out:?}"
    );
    assert_eq!(fake.token_requests(), 2);
    fake.inject(Fault::TokenInvalid601, 1);
    created(&c.push(&[record(3, &email(3))]).await[0]);
    assert_eq!(fake.leads().len(), 4);
}

#[tokio::test]
async fn throttles_pause_the_whole_target_for_the_right_time() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    let batch = [record(0, &email(0)), record(1, &email(1))];
    fake.inject(Fault::RateLimit606, 1);
    let out = c.push(&batch).await;
    for o in &out {
        let f = failure(o);
        assert_eq!(
            (f.class, f.code.as_str()),
            (FailureClass::Throttled, "marketo_606")
        );
        assert_eq!(f.retry_after, Some(Duration::from_secs(20)));
    }
    fake.inject(Fault::Concurrency615, 1);
    let f = failure(&c.push(&batch).await[0]).clone();
    assert!(f.concurrency_limit && f.class == FailureClass::Throttled);
    fake.inject(Fault::DailyQuota607, 1);
    let f = failure(&c.push(&batch).await[0]).clone();
    assert_eq!(f.class, FailureClass::Throttled);
    let until_reset = next_quota_reset(chrono::Utc::now());
    let asked = f.retry_after.unwrap();
    // Asked a moment before `until_reset` was computed: at most a few seconds longer.
    assert!(asked >= until_reset && asked <= until_reset + Duration::from_secs(5));
    fake.inject(Fault::TooManyJobs1029, 1);
    assert_eq!(
        failure(&c.push(&batch).await[0]).class,
        FailureClass::Throttled
    );
    for (fault, code) in [
        (Fault::Timeout604, "marketo_604"),
        (Fault::Unavailable608, "marketo_608"),
        (Fault::SystemError611, "marketo_611"),
    ] {
        fake.inject(fault, 1);
        let f = failure(&c.push(&batch).await[0]).clone();
        assert_eq!((f.class, f.code.as_str()), (FailureClass::Transient, code));
    }
    // Nothing was written by the refused calls; the next push writes both.
    assert!(fake.leads().is_empty());
    assert!(c
        .push(&batch)
        .await
        .iter()
        .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })));
}

/// 2,000 leads in batches of 10 from 20 pushes at once, against an instance allowing 100
/// calls per 2 s (Marketo's 100 per 20 s, ten times faster) and 10 at once: the pacer keeps
/// every window under the limit, so Marketo never answers 606 or 615.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pacer_keeps_a_backlog_under_the_instances_limits() {
    let fake = MarketoFake::start(MarketoFakeConfig {
        window: Duration::from_secs(2),
        ..MarketoFakeConfig::default()
    })
    .await
    .unwrap();
    fake.set_latency(Duration::from_millis(20));
    let c = connector(&fake, json!({"window": "2s"}));
    let batches: Vec<Vec<OutboundRecord>> = (0..200)
        .map(|b| {
            (0..10)
                .map(|i| record(b * 10 + i, &email(b * 10 + i)))
                .collect()
        })
        .collect();
    let batches = Arc::new(batches);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..20 {
        let (c, batches, next) = (c.clone(), batches.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut failed = 0;
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(batch) = batches.get(b) else {
                    return failed;
                };
                failed += c
                    .push(batch)
                    .await
                    .iter()
                    .filter(|o| !matches!(o, DeliveryOutcome::Delivered { .. }))
                    .count();
            }
        }));
    }
    for w in workers {
        assert_eq!(w.await.unwrap(), 0);
    }
    assert_eq!(fake.leads().len(), 2000);
    let calls = fake.requests();
    assert!(calls.iter().all(|r| r.code.is_none()), "a call was refused");
    assert!(
        fake.max_calls_in_window() <= 100,
        "{} calls in one window",
        fake.max_calls_in_window()
    );
    assert!(
        fake.max_in_flight() <= 10,
        "{} in flight",
        fake.max_in_flight()
    );
}

#[tokio::test]
async fn a_mixed_batch_delivers_the_good_and_rejects_the_bad_with_the_reason() {
    let fake = fake().await;
    let mut dup = serde_json::Map::new();
    dup.insert("email".into(), json!("twin@contoso.example"));
    fake.seed_lead(dup.clone());
    fake.seed_lead(dup);
    let c = connector(&fake, json!({}));
    let mut long = record(2, &email(2));
    for (k, v) in long.fields.fields.iter_mut() {
        if k == "company" {
            *v = json!("x".repeat(300));
        }
    }
    let batch = [
        record(0, &email(0)),
        record(1, "twin@contoso.example"),
        long,
        record(3, &email(3)),
    ];
    let out = c.push(&batch).await;
    created(&out[0]);
    created(&out[3]);
    let twin = failure(&out[1]);
    assert_eq!(
        (twin.class, twin.code.as_str()),
        (FailureClass::Rejected, "marketo_1007")
    );
    assert!(twin.message.contains("merge them"), "{}", twin.message);
    let bad = failure(&out[2]);
    assert_eq!(
        (bad.class, bad.code.as_str()),
        (FailureClass::Rejected, "marketo_1003")
    );
}

/// Two pushes in flight at once carrying the same new customer: Marketo would create two
/// leads (its documented race); the key locks make the second wait and update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_sharing_a_lookup_value_never_run_at_once() {
    let fake = fake().await;
    fake.set_latency(Duration::from_millis(100));
    let c = connector(&fake, json!({}));
    let a = [record(0, "same@contoso.example"), record(1, &email(1))];
    let b = [record(2, &email(2)), record(3, "SAME@contoso.example")];
    let within = [
        record(4, "twice@contoso.example"),
        record(5, "twice@contoso.example"),
    ];
    let (x, y, z) = tokio::join!(c.push(&a), c.push(&b), c.push(&within));
    for o in x.iter().chain(&y).chain(&z) {
        created(o);
    }
    let leads = fake.leads();
    let count = |e: &str| {
        leads
            .iter()
            .filter(|l| {
                l.get_str("email")
                    .is_some_and(|v| v.eq_ignore_ascii_case(e))
            })
            .count()
    };
    assert_eq!(count("same@contoso.example"), 1);
    assert_eq!(count("twice@contoso.example"), 1);
    assert_eq!(leads.len(), 4);
}

#[tokio::test]
async fn a_custom_lookup_field_holds_the_key_and_check_connect_catches_it_missing() {
    let fake = fake().await;
    let c = connector(&fake, json!({"lookup_field": "leadsyncKey"}));
    let e = c.check(true).await.unwrap_err();
    assert_eq!(e.what, "connection.lookup_field");
    assert!(e.reason.contains("leadsyncKey"), "{}", e.reason);
    fake.add_field(FieldSpec::custom_key("leadsyncKey"));
    let report = c.check(true).await.unwrap();
    assert!(
        report.verified.iter().any(|l| l.contains("searchable")),
        "{:?}",
        report.verified
    );
    // Two leads of one customer are two Marketo leads, each under its own key.
    let out = c
        .push(&[
            record(0, "one@contoso.example"),
            record(1, "one@contoso.example"),
        ])
        .await;
    let ids: Vec<_> = out.iter().map(created).collect();
    assert_ne!(ids[0].0, ids[1].0);
    let keys: Vec<_> = fake
        .leads()
        .iter()
        .filter_map(|l| l.get_str("leadsyncKey").map(str::to_string))
        .collect();
    assert_eq!(keys.len(), 2);
}

#[tokio::test]
async fn check_connect_names_a_mapped_field_marketo_lacks() {
    let fake = fake().await;
    fake.remove_field(leadsync_marketo::DEFAULT_DESCRIPTION_FIELD);
    let c = connector(&fake, json!({}));
    let e = c.check(true).await.unwrap_err();
    assert_eq!(
        e.what,
        format!(
            "mapping.fields.{}",
            leadsync_marketo::DEFAULT_DESCRIPTION_FIELD
        )
    );
    let offline = c.check(false).await.unwrap();
    assert!(offline.verified[0].contains("looked up by email"));
}

#[tokio::test]
async fn a_refused_client_secret_is_the_target_down_not_a_dead_letter() {
    let fake = fake().await;
    let c = connector(&fake, json!({"client_secret": "wrong-secret"}));
    let f = failure(&c.push(&[record(0, &email(0))]).await[0]).clone();
    assert_eq!(f.class, FailureClass::TargetDown);
    assert!(!f.message.contains("wrong-secret"));
    assert!(c.probe().await.unwrap().is_err());
    let e = c.check(true).await.unwrap_err();
    assert_eq!(e.what, "token");
}

#[test]
fn settings_are_validated_with_the_key_at_fault() {
    let base = |extra: Value| {
        let mut v = json!({"client_id": "x", "client_secret": "y"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value::<MarketoSettings>(v).unwrap()
    };
    let err = |extra: Value| {
        leadsync_marketo::MarketoConnector::try_new(base(extra), Path::new("."))
            .err()
            .map(|e| e.key)
    };
    assert_eq!(err(json!({})), Some("connection.endpoint".into()));
    assert_eq!(
        err(json!({"munchkin_id": "nope"})),
        Some("connection.munchkin_id".into())
    );
    assert_eq!(err(json!({"munchkin_id": "123-ABC-456"})), None);
    assert_eq!(
        err(json!({"endpoint": "http://mkto.example.com"})),
        Some("connection.endpoint".into())
    );
    assert_eq!(
        err(json!({"endpoint": "https://1.mktorest.com", "lookup_field": "bad field"})),
        Some("connection.lookup_field".into())
    );
    assert_eq!(
        err(json!({"endpoint": "https://1.mktorest.com", "calls_per_window": 1})),
        Some("connection.calls_per_window".into())
    );
}
