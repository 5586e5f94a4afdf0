//! The HubSpot connector against the fake portal (`leadsync_fakes::hubspot`): batch upserts
//! with the default mapping, re-pushes updating the same contacts, 207 multi-status and a
//! batch refused as a whole for one input, 429 windows as target-wide pauses, a revoked
//! token as the target down, the pacer under the portal's burst limit, and
//! `check --connect`.

use leadsync_core::{
    idempotency_key, read_lead, BuildContext, Connector, DeliveryFailure, DeliveryOutcome,
    FailureClass, KeyScope, MappingOverrides, OutboundRecord,
};
use leadsync_fakes::hubspot::{Fault, HubSpotFake, HubSpotFakeConfig, PropertySpec};
use leadsync_hubspot::{default_mapping, HubSpotSettings};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn connector(fake: &HubSpotFake, extra: Value) -> Arc<dyn Connector> {
    let mut connection = json!({
        "base_url": fake.base_url(),
        "access_token": HubSpotFakeConfig::default().token,
    });
    if let (Some(o), Value::Object(e)) = (connection.as_object_mut(), extra) {
        o.extend(e);
    }
    let mapping = MappingOverrides::default();
    leadsync_hubspot::build(&BuildContext {
        target: "hs",
        connection: &connection,
        base_dir: Path::new("."),
        mapping: &mapping,
        batch_size: None,
    })
    .expect("connector")
}

/// Lead `i` of customer `email`, mapped with the default mapping as the pipeline would.
fn record(i: usize, email: &str, action: &str) -> OutboundRecord {
    let lead = read_lead(
        format!("lead-{i}"),
        &json!({"UserDetails": {"FirstName": format!("Grace{i}"), "LastName": "Hopper",
                "Email": email, "Company": "Fabrikam", "Country": "US", "Title": "Admiral",
                "Phone": "+1 555 0100"},
                "LeadSource": "AppSource", "ActionCode": action,
                "OfferTitle": "Fabrikam Analytics", "Description": format!("note {i}")}),
    )
    .unwrap();
    let key = idempotency_key("hs", KeyScope::Lead, &lead);
    let s: HubSpotSettings = serde_json::from_value(json!({"access_token": "pat-na1-x"})).unwrap();
    let (fields, _) = default_mapping(&s).apply(&lead, &key, &[]);
    OutboundRecord {
        lead_id: lead.id.clone(),
        idempotency_key: key,
        attempt: 1,
        lead: Arc::new(lead),
        fields,
    }
}

fn email(i: usize) -> String {
    format!("grace{i}@fabrikam.example")
}

fn failure(o: &DeliveryOutcome) -> &DeliveryFailure {
    match o {
        DeliveryOutcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn written(o: &DeliveryOutcome) -> (String, bool) {
    match o {
        DeliveryOutcome::Delivered {
            crm_ref: Some(id),
            created: Some(c),
        } => (id.clone(), *c),
        other => panic!("expected delivered with id, got {other:?}"),
    }
}

async fn fake() -> HubSpotFake {
    HubSpotFake::start(HubSpotFakeConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn contacts_arrive_mapped_and_a_repush_updates_the_same_contacts() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    let batch: Vec<_> = (0..5).map(|i| record(i, &email(i), "Create")).collect();
    let first: Vec<_> = c.push(&batch).await.iter().map(written).collect();
    assert!(first.iter().all(|(_, new)| *new), "{first:?}");
    let contacts = fake.contacts();
    assert_eq!(contacts.len(), 5);
    let g = contacts
        .iter()
        .find(|x| x.get_str("email") == Some("grace3@fabrikam.example"))
        .unwrap();
    assert_eq!(g.get_str("firstname"), Some("Grace3"));
    assert_eq!(g.get_str("lastname"), Some("Hopper"));
    assert_eq!(g.get_str("company"), Some("Fabrikam"));
    assert_eq!(g.get_str("jobtitle"), Some("Admiral"));
    assert_eq!(g.get_str("phone"), Some("+1 555 0100"));
    assert_eq!(g.get_str("country"), Some("US"));
    assert_eq!(g.get_str("hs_lead_status"), Some("NEW"));
    let note = g
        .get_str(leadsync_hubspot::DEFAULT_DESCRIPTION_PROPERTY)
        .unwrap();
    assert!(note.contains("note 3") && note.contains("Create"), "{note}");
    // Results are matched by e-mail, whatever order HubSpot answers in.
    let again: Vec<_> = c.push(&batch).await.iter().map(written).collect();
    assert!(again.iter().all(|(_, new)| !*new));
    assert_eq!(
        first.iter().map(|x| &x.0).collect::<Vec<_>>(),
        again.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    assert_eq!(fake.contacts().len(), 5);
}

#[tokio::test]
async fn a_mixed_batch_delivers_the_good_and_rejects_the_bad_with_the_reason() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    let mut batch: Vec<_> = (0..8).map(|i| record(i, &email(i), "INS")).collect();
    batch[5] = record(5, "not-an-email", "INS");
    let out = c.push(&batch).await;
    for (i, o) in out.iter().enumerate() {
        if i == 5 {
            let f = failure(o);
            assert_eq!(f.class, FailureClass::Rejected, "{f:?}");
            assert!(f.code.starts_with("hubspot_"), "{}", f.code);
        } else {
            written(o);
        }
    }
    assert_eq!(fake.contacts().len(), 7);
}

#[tokio::test]
async fn an_unknown_property_fails_the_batch_without_splitting_it_apart() {
    let fake = fake().await;
    fake.remove_property(leadsync_hubspot::DEFAULT_DESCRIPTION_PROPERTY);
    let c = connector(&fake, json!({}));
    let batch: Vec<_> = (0..16).map(|i| record(i, &email(i), "INS")).collect();
    let out = c.push(&batch).await;
    assert!(out
        .iter()
        .all(|o| failure(o).class == FailureClass::Rejected));
    assert!(
        fake.requests().len() <= 3,
        "{} calls",
        fake.requests().len()
    );
    let e = c.check(true).await.unwrap_err();
    assert_eq!(
        e.what,
        format!(
            "mapping.fields.{}",
            leadsync_hubspot::DEFAULT_DESCRIPTION_PROPERTY
        )
    );
}

#[tokio::test]
async fn rate_limit_answers_pause_the_whole_target_for_the_window() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    let batch = [record(0, &email(0), "INS"), record(1, &email(1), "INS")];
    fake.inject(
        Fault::TenSecondlyRolling {
            retry_after_secs: None,
        },
        1,
    );
    for o in c.push(&batch).await {
        let f = failure(&o).clone();
        assert_eq!(f.class, FailureClass::Throttled);
        assert_eq!(f.retry_after, Some(Duration::from_secs(10)));
    }
    fake.inject(
        Fault::TenSecondlyRolling {
            retry_after_secs: Some(3),
        },
        1,
    );
    assert_eq!(
        failure(&c.push(&batch).await[0]).retry_after,
        Some(Duration::from_secs(3))
    );
    fake.inject(Fault::Daily, 1);
    let f = failure(&c.push(&batch).await[0]).clone();
    assert_eq!(
        (f.class, f.code.as_str()),
        (FailureClass::Throttled, "hubspot_DAILY")
    );
    fake.inject(Fault::Locked423, 1);
    assert_eq!(
        failure(&c.push(&batch).await[0]).class,
        FailureClass::Throttled
    );
    fake.inject(Fault::ServerError, 1);
    assert_eq!(
        failure(&c.push(&batch).await[0]).class,
        FailureClass::Transient
    );
    assert!(fake.contacts().is_empty());
    assert!(c
        .push(&batch)
        .await
        .iter()
        .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })));
}

#[tokio::test]
async fn a_revoked_token_is_the_target_down_and_check_names_it() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    written(&c.push(&[record(0, &email(0), "INS")]).await[0]);
    fake.revoke_token();
    let f = failure(&c.push(&[record(1, &email(1), "INS")]).await[0]).clone();
    assert_eq!(f.class, FailureClass::TargetDown);
    assert!(c.probe().await.unwrap().is_err());
    let e = c.check(true).await.unwrap_err();
    assert_eq!(e.what, "access_token");
}

/// 1,000 contacts in batches of 10 from 20 pushes at once against a portal allowing 100
/// calls per second (HubSpot's 100 per 10 s, ten times faster): never a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pacer_keeps_a_backlog_under_the_burst_limit() {
    let fake = HubSpotFake::start(HubSpotFakeConfig {
        burst_window: Duration::from_secs(1),
        ..HubSpotFakeConfig::default()
    })
    .await
    .unwrap();
    let c = connector(&fake, json!({"window": "1s"}));
    let batches: Arc<Vec<Vec<OutboundRecord>>> = Arc::new(
        (0..100)
            .map(|b| {
                (0..10)
                    .map(|i| record(b * 10 + i, &email(b * 10 + i), "INS"))
                    .collect()
            })
            .collect(),
    );
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
    assert_eq!(fake.contacts().len(), 1000);
    assert!(fake.requests().iter().all(|r| r.status != 429));
    assert!(
        fake.max_calls_in_window() <= 100,
        "{}",
        fake.max_calls_in_window()
    );
}

#[tokio::test]
async fn a_custom_id_property_holds_the_key_and_check_connect_catches_it_missing() {
    let fake = fake().await;
    let c = connector(&fake, json!({"id_property": "leadsync_key"}));
    let e = c.check(true).await.unwrap_err();
    assert_eq!(e.what, "connection.id_property");
    fake.add_property(PropertySpec::text("leadsync_key"));
    let e = c.check(true).await.unwrap_err();
    assert!(e.reason.contains("unique"), "{}", e.reason);
    fake.remove_property("leadsync_key");
    fake.add_property(PropertySpec::unique_text("leadsync_key"));
    let report = c.check(true).await.unwrap();
    assert!(
        report.verified.iter().any(|l| l.contains("scopes")),
        "{:?}",
        report.verified
    );
    let out = c
        .push(&[
            record(0, "one@fabrikam.example", "INS"),
            record(1, "two@fabrikam.example", "Create"),
        ])
        .await;
    let ids: Vec<_> = out.iter().map(written).collect();
    assert_ne!(ids[0].0, ids[1].0);
    assert_eq!(
        fake.contacts()
            .iter()
            .filter(|x| x.get_str("leadsync_key").is_some())
            .count(),
        2
    );
}

#[tokio::test]
async fn dnc_sets_the_chosen_property_and_a_later_event_never_clears_it() {
    let fake = fake().await;
    fake.add_property(PropertySpec {
        name: "leadsync_dnc".into(),
        label: "Do not contact (marketplace)".into(),
        type_: "bool".into(),
        field_type: "booleancheckbox".into(),
        has_unique_value: false,
        options: vec!["true".into(), "false".into()],
    });
    let c = connector(&fake, json!({"do_not_contact_property": "leadsync_dnc"}));
    // Mapped with this target's mapping, which carries the DNC property.
    let mapped = |mut r: OutboundRecord| {
        r.fields = c.mapping().apply(&r.lead, &r.idempotency_key, &[]).0;
        r
    };
    written(&c.push(&[mapped(record(0, &email(0), "DNC"))]).await[0]);
    written(&c.push(&[mapped(record(1, &email(0), "INS"))]).await[0]);
    let contacts = fake.contacts();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].get_str("leadsync_dnc"), Some("true"));
}
