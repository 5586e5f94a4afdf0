//! Operator commands: `forget` (no trace of the e-mail left in the ledger file),
//! `send-test`, `replay`, and `status` showing a target that is down.

mod common;
use common::{text, Deployment};

const LEADS: &str = r#"{"UserDetails": {"FirstName": "Forgettable", "LastName": "Person", "Email": "Forget.Me@Example.COM", "Phone": "+1 555 0199"}, "LeadSource": "SPZA", "ActionCode": "PLT", "OfferTitle": "Contoso", "Description": "call forget.me@example.com"}
{"UserDetails": {"FirstName": "Kept", "Email": "kept@example.com"}, "LeadSource": "SPZA", "ActionCode": "INS", "OfferTitle": "Contoso"}
"#;

fn ledger_bytes(d: &Deployment) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["state/ledger.db", "state/ledger.db-wal"] {
        if let Ok(b) = std::fs::read(d.root().join(f)) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[test]
fn forget_leaves_no_trace_of_the_email_in_the_ledger_file() {
    let d = Deployment::new();
    std::fs::write(d.spool().join("a.jsonl"), LEADS).unwrap();
    assert_eq!(d.run(&["sync", "--once"]).status.code(), Some(0));
    assert!(
        contains(&ledger_bytes(&d), "forget.me@example.com"),
        "the ledger held it before"
    );

    let out = d.run(&["forget", "--email", "FORGET.me@example.com"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("of 1 lead(s)"), "{stdout}");
    assert!(
        !stdout.contains("Forgettable"),
        "forget prints ids, not the person: {stdout}"
    );

    let bytes = ledger_bytes(&d);
    for trace in ["forget.me@example.com", "Forgettable", "+1 555 0199"] {
        assert!(
            !contains(&bytes, trace),
            "{trace:?} still in the ledger file"
        );
    }
    assert!(
        contains(&bytes, "kept@example.com"),
        "other people are untouched"
    );
    // The lead itself (its id, its delivery) is still there for the record.
    let status = d.status_json();
    assert_eq!(status["leads"], 2);
    assert_eq!(status["targets"][0]["delivered"], 2);
}

#[test]
fn send_test_delivers_a_marked_test_lead() {
    let d = Deployment::new();
    let out = d.run(&["send-test", "--target", "csv", "--wait", "30s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows = d.csv_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["Test Lead"], "true");
    assert!(rows[0]["First Name"].starts_with("MSFT_TEST"));
    let out = d.run(&["send-test", "--target", "nope"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
}

#[test]
fn replay_queues_delivered_leads_again_without_duplicates() {
    let d = Deployment::with_target(
        "kind = \"file\"\n[connection]\npath = \"../../out/leads.jsonl\"\nformat = \"jsonl\"\n",
    );
    std::fs::write(d.spool().join("a.jsonl"), LEADS).unwrap();
    assert_eq!(d.run(&["sync", "--once"]).status.code(), Some(0));
    let out = d.run(&["replay", "--target", "csv", "--since", "2000-01-01"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("2 delivered lead(s)"),
        "{}",
        text(&out)
    );
    assert_eq!(d.status_json()["targets"][0]["pending"], 2);
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 delivered"),
        "{}",
        text(&out)
    );
    // The file target's idempotency: still one row per lead.
    let lines = std::fs::read_to_string(d.root().join("out/leads.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    let out = d.run(&["replay", "--target", "csv", "--since", "yesterday-ish"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn status_shows_a_target_that_is_down() {
    use leadsync::ledger::{sqlite::SqliteLedger, Ledger, TargetDown};
    let d = Deployment::new();
    std::fs::write(d.spool().join("a.jsonl"), LEADS).unwrap();
    assert_eq!(d.run(&["sync", "--once"]).status.code(), Some(0));
    // What the push engine records when a target's credentials are refused.
    let since = chrono::DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
        .unwrap()
        .to_utc();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ledger = SqliteLedger::open(&d.root().join("state/ledger.db"))
            .await
            .unwrap();
        let down = TargetDown {
            since,
            reason: "invalid_client".into(),
        };
        ledger.set_target_down("csv", Some(&down)).await.unwrap();
        ledger.close().await;
    });

    let out = d.run(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("csv "))
        .unwrap_or_else(|| panic!("no row for csv\n{}", text(&out)));
    assert!(
        row.ends_with("down since 2030-01-02T03:04:05+00:00: invalid_client"),
        "{row}"
    );
    let status = d.status_json();
    assert_eq!(status["targets"][0]["down_since"], "2030-01-02T03:04:05Z");
    assert_eq!(status["targets"][0]["down_reason"], "invalid_client");
}
