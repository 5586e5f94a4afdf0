//! `sync --once` end to end on the embedded defaults: spool → SQLite ledger → CSV.

mod common;
use common::{text, Deployment};

const LEADS: &str = r#"{"UserDetails": {"FirstName": "Ann", "LastName": "Lee", "Email": "ann.lee@example.com", "Company": "Contoso"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso Analytics"}
{"PartitionKey": "11:2F1:2F2026", "RowKey": "r-1", "Timestamp": "2026-11-01T08:00:00Z", "LeadSource": "SPZA-PLT|contoso.crm", "ActionCode": "PLT", "CreatedTime": "11/01/2026 08:00:00 AM", "CustomerInfo": "{\"FirstName\": \"Bo\", \"Email\": \"bo@example.com\"}", "OfferDisplayName": "Contoso CRM"}
{"UserDetails": {"FirstName": "Cy", "Email": "cy@example.com"}, "LeadSource": "AppSource (SPZA)", "ActionCode": "DNC", "OfferTitle": "Contoso CRM"}
{"userDetails": {"FirstName": "MSFT_TEST_1", "Email": "MSFT_TEST_1@test.com"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso Test"}
"#;

#[test]
fn delivers_each_lead_once_and_a_rerun_adds_nothing() {
    let d = Deployment::new();
    std::fs::write(d.spool().join("drop.jsonl"), LEADS).unwrap();
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows = d.csv_rows();
    // The test lead is skipped by the default filter; the DNC lead is delivered, marked.
    assert_eq!(rows.len(), 3, "{rows:?}");
    let by_name = |n: &str| rows.iter().find(|r| r["First Name"] == n).unwrap().clone();
    assert_eq!(by_name("Ann")["Action"], "INS");
    assert_eq!(by_name("Bo")["Offer"], "contoso.crm");
    assert_eq!(by_name("Cy")["Do Not Contact"], "true");
    assert!(d.spool().join("processed/drop.jsonl").exists());

    // The same leads dropped again (a re-sent file): nothing new.
    std::fs::write(d.spool().join("again.jsonl"), LEADS).unwrap();
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 new lead(s), 4 already known"),
        "{}",
        text(&out)
    );
    assert_eq!(d.csv_rows().len(), 3);

    let status = d.status_json();
    let t = &status["targets"][0];
    assert_eq!(t["target"], "csv");
    assert_eq!(t["delivered"], 3);
    assert_eq!(t["pending"], 0);
    assert_eq!(t["dead"], 0);
    assert_eq!(status["leads"], 4);
}

#[test]
fn keys_are_unique_and_trace_shows_the_row() {
    let d = Deployment::new();
    std::fs::write(d.spool().join("drop.jsonl"), LEADS).unwrap();
    assert_eq!(d.run(&["sync", "--once"]).status.code(), Some(0));
    let rows = d.csv_rows();
    let keys: std::collections::HashSet<_> =
        rows.iter().map(|r| r["Leadsync Key"].clone()).collect();
    assert_eq!(keys.len(), rows.len());
    let lead = rows[0]["Lead ID"].clone();
    let out = d.run(&["trace", &lead]);
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("csv: delivered after 1 attempt(s), CRM record row 1"),
        "{s}"
    );
}

#[test]
fn a_failing_source_is_shown_in_status_until_a_pull_succeeds() {
    let d = Deployment::new();
    let spool = d.spool();
    std::fs::remove_dir_all(&spool).unwrap();
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let status = d.status_json();
    let src = &status["sources"][0];
    assert_eq!(src["source"], "inbox");
    assert!(
        src["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("spool"),
        "{status}"
    );
    let out = d.run(&["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("source inbox: last pull FAILED"),
        "{}",
        text(&out)
    );
    std::fs::create_dir_all(&spool).unwrap();
    assert_eq!(d.run(&["sync", "--once"]).status.code(), Some(0));
    assert!(d.status_json()["sources"][0]["last_error"].is_null());
}
