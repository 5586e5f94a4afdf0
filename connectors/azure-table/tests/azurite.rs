//! The client and the target against Azurite, the real emulator, which verifies Shared Key
//! and SAS signatures itself. Skips loudly when Azurite is not running (fails in CI).

mod common;

use common::*;
use leadsync_azure_table::{
    Account, AccountKey, Query, SharedKeyScheme, TableClient, TableError, TableSas,
};
use leadsync_core::{Connector, DeliveryOutcome, FailureClass};
use serde_json::{json, Map, Value};

fn entity(pk: &str, rk: &str, extra: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("PartitionKey".into(), json!(pk));
    m.insert("RowKey".into(), json!(rk));
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    m
}

async fn all_entities(client: &TableClient, table: &str) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    let mut next = None;
    loop {
        let page = client
            .query_page(table, &Query::default(), next.as_ref())
            .await
            .unwrap();
        out.extend(page.entities);
        match page.next {
            Some(n) => next = Some(n),
            None => return out,
        }
    }
}

#[tokio::test]
async fn shared_key_and_shared_key_lite_are_accepted() {
    if !azurite_up() {
        return;
    }
    for scheme in [SharedKeyScheme::SharedKey, SharedKeyScheme::SharedKeyLite] {
        let client = dev_client(scheme);
        let table = unique_table("sk");
        assert!(client.create_table(&table).await.unwrap());
        assert!(
            !client.create_table(&table).await.unwrap(),
            "second create says exists"
        );
        assert!(client.table_exists(&table).await.unwrap());
        // Keys with a quote and the escaped-date style of the marketplace.
        client
            .insert_entity(
                &table,
                &entity("9:2F28:2F2018", "O'Brien", json!({"A": "x"})),
            )
            .await
            .unwrap();
        client
            .insert_or_replace(
                &table,
                "9:2F28:2F2018",
                "O'Brien",
                &entity("9:2F28:2F2018", "O'Brien", json!({"A": "y"})),
            )
            .await
            .unwrap();
        let rows = all_entities(&client, &table).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["A"], "y");
        assert_eq!(rows[0]["RowKey"], "O'Brien");
        assert!(client.list_tables().await.unwrap().contains(&table));
        client.delete_table(&table).await.unwrap();
    }
}

#[tokio::test]
async fn a_service_sas_is_accepted_and_a_wrong_one_refused() {
    if !azurite_up() {
        return;
    }
    let owner = dev_client(SharedKeyScheme::SharedKey);
    let table = unique_table("sas");
    owner.create_table(&table).await.unwrap();
    let account_key = AccountKey::from_base64(leadsync_azure_table::conn::DEV_ACCOUNT_KEY).unwrap();
    let sas = TableSas {
        table: table.clone(),
        permissions: "raud".into(),
        expiry: (chrono::Utc::now() + chrono::Duration::hours(1))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        version: "2019-02-02".into(),
        ..Default::default()
    };
    let token = sas.token("devstoreaccount1", &account_key);
    let conn = format!(
        "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;SharedAccessSignature={token}"
    );
    let client = TableClient::new(
        Account::from_connection_string(&conn).unwrap(),
        reqwest::Client::new(),
        SharedKeyScheme::SharedKey,
    );
    client
        .insert_or_replace(&table, "p", "r1", &entity("p", "r1", json!({"A": 1})))
        .await
        .unwrap();
    let rows = all_entities(&client, &table).await;
    assert_eq!(rows.len(), 1);

    // The target works through a SAS too (it cannot create the table, which exists).
    let c = connector(settings(&conn, &table, json!({})));
    let out = c
        .push(&[record(1, &key(1), "hello"), record(2, &key(2), "hi")])
        .await;
    assert!(
        out.iter()
            .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })),
        "{out:?}"
    );
    assert_eq!(all_entities(&owner, &table).await.len(), 3);

    // A SAS signed with another key is refused as a credential problem.
    let bad = AccountKey::from_base64("a2V5a2V5a2V5").unwrap();
    let bad_conn = format!(
        "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;SharedAccessSignature={}",
        sas.token("devstoreaccount1", &bad)
    );
    let client = TableClient::new(
        Account::from_connection_string(&bad_conn).unwrap(),
        reqwest::Client::new(),
        SharedKeyScheme::SharedKey,
    );
    let err = client
        .query_page(&table, &Query::default(), None)
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    owner.delete_table(&table).await.unwrap();
}

#[tokio::test]
async fn a_wrong_account_key_is_a_clear_configuration_error() {
    if !azurite_up() {
        return;
    }
    let conn = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=d3Jvbmcga2V5IHdyb25nIGtleQ==;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1";
    let table = unique_table("wk");
    let c = connector(settings(conn, &table, json!({})));
    let err = c.check(true).await.unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    assert!(err.to_string().contains(&table), "{err}");
    let out = c.push(&[record(1, &key(1), "x")]).await;
    match &out[0] {
        DeliveryOutcome::Failed(f) => {
            assert_eq!(f.code, "AuthorizationFailure");
            assert_eq!(f.class, FailureClass::TargetDown);
            assert!(f.message.contains("AccountKey"), "{}", f.message);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn queries_page_over_more_than_1000_entities_across_partitions() {
    if !azurite_up() {
        return;
    }
    let client = dev_client(SharedKeyScheme::SharedKey);
    let table = unique_table("pg");
    client.create_table(&table).await.unwrap();
    // 1,150 entities over three partitions, written in transactions of 100.
    let mut total = 0;
    for (p, n) in [("a", 500), ("b", 450), ("c", 200)] {
        let ops: Vec<_> = (0..n)
            .map(|i| leadsync_azure_table::BatchOp {
                row_key: format!("{i:05}"),
                entity: entity(p, &format!("{i:05}"), json!({"N": i})),
            })
            .collect();
        for chunk in ops.chunks(100) {
            let outcome = client.submit_batch(&table, p, chunk).await.unwrap();
            assert_eq!(outcome, leadsync_azure_table::BatchOutcome::Applied);
        }
        total += n;
    }
    // Default pages (the service's 1000 cap) and small pages both see every entity once.
    for top in [None, Some(97)] {
        let mut seen = std::collections::HashSet::new();
        let mut pages = 0;
        let mut next = None;
        loop {
            let page = client
                .query_page(
                    &table,
                    &Query {
                        top,
                        ..Default::default()
                    },
                    next.as_ref(),
                )
                .await
                .unwrap();
            pages += 1;
            for e in page.entities {
                let id = format!("{}/{}", e["PartitionKey"], e["RowKey"]);
                assert!(seen.insert(id), "an entity came twice");
            }
            match page.next {
                Some(n) => next = Some(n),
                None => break,
            }
        }
        assert_eq!(seen.len(), total);
        assert!(
            pages >= 2,
            "expected several pages with top {top:?}, got {pages}"
        );
    }
    client.delete_table(&table).await.unwrap();
}

#[tokio::test]
async fn the_target_upserts_by_key_in_transactions_and_creates_its_table() {
    if !azurite_up() {
        return;
    }
    let table = unique_table("tg");
    let c = connector(settings("UseDevelopmentStorage=true", &table, json!({})));
    let report = c.check(true).await.unwrap();
    assert!(
        report.verified.iter().any(|v| v.contains("created")),
        "{report:?}"
    );
    // 150 records: two transactions in one partition; one key twice in the batch.
    let mut records: Vec<_> = (0..150).map(|i| record(i, &key(i), "first")).collect();
    records.push(record(7, &key(7), "again"));
    let out = c.push(&records[..100]).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })),
        "{out:?}"
    );
    let out = c.push(&records[100..]).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })),
        "{out:?}"
    );
    let client = dev_client(SharedKeyScheme::SharedKey);
    let rows = all_entities(&client, &table).await;
    assert_eq!(rows.len(), 150);
    let seven = rows.iter().find(|r| r["RowKey"] == key(7)).unwrap();
    assert_eq!(seven["Description"], "again");
    assert_eq!(seven["PartitionKey"], "leads");
    assert_eq!(seven["FirstName"], "Ann7");
    assert_eq!(seven["LastName"], "O'Brien");
    assert_eq!(seven["Action"], "PLT");
    // Pushing again changes nothing.
    let out = c.push(&records[..50]).await;
    assert!(out
        .iter()
        .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })));
    assert_eq!(all_entities(&client, &table).await.len(), 150);

    // Partition by offer.
    let table2 = unique_table("tgo");
    let c2 = connector(settings(
        "UseDevelopmentStorage=true",
        &table2,
        json!({"partition_by": "offer"}),
    ));
    let out = c2.push(&[record(1, &key(1), "x")]).await;
    assert!(
        matches!(&out[0], DeliveryOutcome::Delivered { crm_ref: Some(r), .. } if r.starts_with("crm-offer/")),
        "{out:?}"
    );
    client.delete_table(&table).await.unwrap();
    client.delete_table(&table2).await.unwrap();
}

#[tokio::test]
async fn oversized_values_are_truncated_or_rejected_before_the_service_sees_them() {
    if !azurite_up() {
        return;
    }
    let client = dev_client(SharedKeyScheme::SharedKey);
    let long = "é🚀".repeat(15_000); // 45,000 UTF-16 units
    let table = unique_table("ov");
    let c = connector(settings("UseDevelopmentStorage=true", &table, json!({})));
    let out = c
        .push(&[record(1, &key(1), &long), record(2, &key(2), "short")])
        .await;
    assert!(
        out.iter()
            .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })),
        "{out:?}"
    );
    let rows = all_entities(&client, &table).await;
    let d = rows.iter().find(|r| r["RowKey"] == key(1)).unwrap()["Description"]
        .as_str()
        .unwrap()
        .encode_utf16()
        .count();
    assert!(d <= 32 * 1024 && d > 32 * 1024 - 2, "{d}");

    let table_r = unique_table("ovr");
    let c = connector(settings(
        "UseDevelopmentStorage=true",
        &table_r,
        json!({"oversize": "reject"}),
    ));
    let out = c
        .push(&[record(1, &key(1), &long), record(2, &key(2), "short")])
        .await;
    match &out[0] {
        DeliveryOutcome::Failed(f) => {
            assert_eq!(f.class, FailureClass::Rejected);
            assert_eq!(f.code, "PropertyValueTooLarge");
            assert!(f.message.contains("Description"), "{}", f.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(out[1], DeliveryOutcome::Delivered { .. }));
    assert_eq!(all_entities(&client, &table_r).await.len(), 1);
    client.delete_table(&table).await.unwrap();
    client.delete_table(&table_r).await.unwrap();
}

#[tokio::test]
async fn a_missing_table_reads_as_table_not_found() {
    if !azurite_up() {
        return;
    }
    let client = dev_client(SharedKeyScheme::SharedKey);
    let err = client
        .query_page(&unique_table("none"), &Query::default(), None)
        .await
        .unwrap_err();
    assert!(err.is_table_not_found(), "{err:?}");
    assert!(matches!(err, TableError::Service { status: 404, .. }));
}
