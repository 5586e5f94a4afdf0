//! Conformance with `../shared/fixtures` (see its README): every lead accepted, tolerated
//! inputs accepted with a warning and their oddities kept, rejected inputs quarantined with a
//! reason naming the file and line, and nothing else lost. Skips loudly where the folder is
//! absent; fails under `LEADSYNC_REQUIRE_SERVICES=1`.

mod common;
use common::{copy_dir, shared_fixtures, text, Deployment};
use std::collections::HashSet;

fn count_records(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let t = std::fs::read_to_string(&p).unwrap();
        n += match p.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => t.lines().filter(|l| !l.trim().is_empty()).count(),
            _ if t.trim().is_empty() => 0,
            _ => 1,
        };
    }
    n
}

#[test]
fn every_fixture_lead_is_delivered_once() {
    let Some(fx) = shared_fixtures() else { return };
    let d = Deployment::new();
    copy_dir(&fx.join("leads"), &d.spool());
    let expected = count_records(&fx.join("leads"));
    assert!(expected >= 80, "fixtures shrank? {expected}");
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "staged {expected} new lead(s), 0 already known, 0 quarantined"
        )),
        "{stdout}"
    );

    // One test lead (MSFT_TEST_...) is staged but not delivered: test leads are opt-in.
    let rows = d.csv_rows();
    assert_eq!(rows.len(), expected - 1, "{}", text(&out));
    let ids: HashSet<_> = rows.iter().map(|r| r["Lead ID"].clone()).collect();
    assert_eq!(ids.len(), rows.len(), "a lead was written twice");
    assert!(rows
        .iter()
        .all(|r| !r["First Name"].starts_with("MSFT_TEST")));

    // A second run adds nothing (the files were moved; drop them again to prove the ledger).
    copy_dir(&fx.join("leads"), &d.spool());
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(d.csv_rows().len(), expected - 1);

    let status = d.status_json();
    assert_eq!(status["targets"][0]["delivered"], (expected - 1) as u64);
    assert_eq!(status["targets"][0]["pending"], 0);
    assert_eq!(status["leads"], expected as u64);
}

#[test]
fn tolerated_inputs_are_accepted_with_a_warning_and_kept() {
    let Some(fx) = shared_fixtures() else { return };
    let d = Deployment::with_target(
        r#"
kind = "file"
[connection]
path = "../../out/leads.jsonl"
format = "jsonl"
[mapping.fields]
Future = "extra.SomeFutureColumn"
CustomerInfoRaw = "customer_info_raw"
LeadSourceRaw = "lead_source"
"#,
    );
    copy_dir(&fx.join("tolerated"), &d.spool());
    let expected = count_records(&fx.join("tolerated"));
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("lead accepted with tolerated problems"))
        .count();
    assert_eq!(
        warnings, expected,
        "one warning per tolerated lead:\n{stderr}"
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(d.root().join("out/leads.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), expected);
    let any = |f: &dyn Fn(&serde_json::Value) -> bool| rows.iter().any(f);
    assert!(
        any(&|r| r["Future"] == "kept, not rejected"),
        "unknown column kept"
    );
    assert!(
        any(&|r| r["CustomerInfoRaw"] == "{FirstName: John"),
        "unreadable CustomerInfo kept raw"
    );
    assert!(
        any(&|r| r["CustomerInfoRaw"] == "42"),
        "CustomerInfo of the wrong type kept"
    );
    assert!(
        any(&|r| r["Phone"] == "16175555555"),
        "a number became a string"
    );
    assert!(
        any(&|r| r["Topic"] == "badtitle (StartTestDrive)"),
        "control characters stripped"
    );
    assert!(
        any(&|r| r["LeadSourceRaw"] == "SomeNewPortal" && r["Action"] == "Renew"),
        "unknown source and action kept"
    );
    assert!(rows.iter().all(|r| !r.to_string().contains('\u{1b}')));
}

#[test]
fn rejected_inputs_are_quarantined_with_file_and_line() {
    let Some(fx) = shared_fixtures() else { return };
    let d = Deployment::new();
    copy_dir(&fx.join("rejected"), &d.spool());
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    // mixed-good-and-bad.jsonl: the two good leads are staged and delivered.
    assert_eq!(d.csv_rows().len(), 2, "{}", text(&out));
    let rejected = d.spool().join("rejected");
    let reason = |f: &str| {
        std::fs::read_to_string(rejected.join(format!("{f}.reason")))
            .unwrap_or_else(|e| panic!("{f}.reason: {e}\n{}", text(&out)))
    };
    assert!(reason("mixed-good-and-bad.jsonl")
        .starts_with("mixed-good-and-bad.jsonl: line 2: not valid JSON"));
    assert_eq!(
        std::fs::read_to_string(rejected.join("mixed-good-and-bad.jsonl")).unwrap(),
        "{oops\n"
    );
    assert!(d
        .spool()
        .join("processed/mixed-good-and-bad.jsonl")
        .exists());
    assert!(reason("huge-description.json").contains("over the 1048576-byte limit"));
    assert!(reason("not-json.json").contains("not-json.json: element 1"));
    assert!(reason("array-of-numbers.json")
        .contains("element 3: expected a JSON object, found a number"));
    assert!(reason("null-everything.json").contains("carries no lead"));
    for f in [
        "huge-description.json",
        "not-json.json",
        "array-of-numbers.json",
        "null-everything.json",
    ] {
        assert!(rejected.join(f).exists(), "{f} moved to rejected/");
    }
    let status = d.status_json();
    assert_eq!(status["quarantined"], 7, "{status}");
}
