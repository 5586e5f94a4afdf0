//! Failures Azurite cannot produce, against the fault stub: throttling (503 ServerBusy, 500
//! OperationTimedOut), timeouts, and one failing operation inside a transaction.

mod common;

use common::*;
use leadsync_core::{Connector, DeliveryOutcome, FailureClass};
use leadsync_fakes::azure_table_faults::AzureTableFaults;
use serde_json::json;
use std::time::Duration;

fn failure(o: &DeliveryOutcome) -> &leadsync_core::DeliveryFailure {
    match o {
        DeliveryOutcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn server_busy_is_throttled_with_retry_after() {
    let fake = AzureTableFaults::start().await.unwrap();
    let c = connector(settings(&fake.connection_string(), "Leads", json!({})));
    c.push(&[record(0, &key(0), "warm-up")]).await; // creates the table
    fake.fail_next(1, 503, "ServerBusy", Some(7));
    let out = c
        .push(&[record(1, &key(1), "a"), record(2, &key(2), "b")])
        .await;
    for o in &out {
        let f = failure(o);
        assert_eq!(f.class, FailureClass::Throttled);
        assert_eq!(f.code, "ServerBusy");
        assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
    }
    fake.fail_next(1, 500, "OperationTimedOut", None);
    let out = c.push(&[record(3, &key(3), "c")]).await;
    assert_eq!(failure(&out[0]).class, FailureClass::Throttled);
    // Afterwards it goes through.
    let out = c.push(&[record(1, &key(1), "a")]).await;
    assert!(matches!(out[0], DeliveryOutcome::Delivered { .. }));
}

#[tokio::test]
async fn a_throttled_partition_stops_the_rest_of_the_push() {
    let fake = AzureTableFaults::start().await.unwrap();
    let c = connector(settings(
        &fake.connection_string(),
        "Leads",
        json!({"partition_by": "offer"}),
    ));
    c.push(&[record(0, &key(0), "warm-up")]).await;
    let before = fake.request_count();
    fake.fail_next(1, 503, "ServerBusy", None);
    let out = c
        .push(&[record(1, &key(1), "a"), record(2, &key(2), "b")])
        .await;
    assert!(out
        .iter()
        .all(|o| failure(o).class == FailureClass::Throttled));
    // Both records share the offer partition: one request only.
    assert_eq!(fake.request_count() - before, 1);
}

#[tokio::test]
async fn one_failing_operation_is_mapped_back_to_its_record_and_the_rest_resent() {
    let fake = AzureTableFaults::start().await.unwrap();
    let c = connector(settings(&fake.connection_string(), "Leads", json!({})));
    let records: Vec<_> = (0..5).map(|i| record(i, &key(i), "x")).collect();
    fake.fail_batch_operation(&key(3), 400, "PropertyValueTooLarge");
    let out = c.push(&records).await;
    for (i, o) in out.iter().enumerate() {
        if i == 3 {
            let f = failure(o);
            assert_eq!(f.class, FailureClass::Rejected);
            assert_eq!(f.code, "PropertyValueTooLarge");
            assert!(
                f.message.contains("Injected failure of operation 3"),
                "{}",
                f.message
            );
            assert!(!f.message.starts_with("3:"), "{}", f.message);
        } else {
            assert!(matches!(o, DeliveryOutcome::Delivered { .. }), "{i}: {o:?}");
        }
    }
    assert_eq!(
        fake.batch_count(),
        2,
        "the change set was resent once without record 3"
    );
    let stored = fake.entities("Leads");
    assert_eq!(stored.len(), 4);
    assert!(!stored.keys().any(|(_, rk)| rk == &key(3)));
}

#[tokio::test]
async fn a_slow_service_is_a_transient_timeout() {
    let fake = AzureTableFaults::start().await.unwrap();
    let mut s = settings(
        &fake.connection_string(),
        "Leads",
        json!({"http": {"timeout": "300ms"}}),
    );
    s.create_table = false;
    let c = connector(s);
    fake.set_latency(Duration::from_secs(2));
    let out = c.push(&[record(1, &key(1), "a")]).await;
    let f = failure(&out[0]);
    assert_eq!(f.class, FailureClass::Transient);
    assert_eq!(f.code, "timeout");
}

#[tokio::test]
async fn forbidden_is_reported_as_a_credentials_problem() {
    let fake = AzureTableFaults::start().await.unwrap();
    let c = connector(settings(&fake.connection_string(), "Leads", json!({})));
    fake.fail_next(1, 403, "AuthorizationFailure", None);
    let err = c.check(true).await.unwrap_err();
    assert!(err.reason.contains("refused the credentials"), "{err}");
}
