//! Logs captured at trace level during a sync carry none of the leads' e-mails, phones or
//! names. Uses the project's own examples, and the shared fixtures when present.

mod common;
use common::{copy_dir, text, Deployment};
use std::path::Path;

/// Every personal value in a folder of lead files (names, e-mails, phones, companies).
fn personal_values(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut take = |v: &serde_json::Value| {
        let obj = match v {
            serde_json::Value::String(s) => serde_json::from_str::<serde_json::Value>(s).ok(),
            other => Some(other.clone()),
        };
        if let Some(serde_json::Value::Object(o)) = obj {
            for (k, v) in o {
                let key = k.to_ascii_lowercase();
                if ["firstname", "lastname", "email", "phone", "company"].contains(&key.as_str()) {
                    if let Some(s) = v.as_str().filter(|s| s.chars().count() >= 5) {
                        out.push(s.to_string());
                    }
                }
            }
        }
    };
    for e in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        let records: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .chain(serde_json::from_str(&text).ok())
            .collect();
        for r in records {
            if let serde_json::Value::Object(o) = &r {
                for (k, v) in o {
                    if ["userdetails", "customerinfo"].contains(&k.to_ascii_lowercase().as_str()) {
                        take(v);
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn assert_clean(logs: &str, values: &[String]) {
    assert!(!values.is_empty());
    for v in values {
        assert!(
            !logs.contains(v.as_str()),
            "personal value {v:?} found in the logs"
        );
        let escaped = serde_json::to_string(v).unwrap();
        assert!(
            !logs.contains(escaped.trim_matches('"')),
            "personal value {v:?} found (escaped) in the logs"
        );
    }
}

#[test]
fn trace_logs_of_a_sync_hold_no_personal_data() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/leads");
    let mut dirs = vec![examples];
    if let Some(fx) = common::shared_fixtures() {
        dirs.push(fx.join("leads"));
        dirs.push(fx.join("tolerated"));
        dirs.push(fx.join("rejected"));
    }
    let d = Deployment::new();
    let mut values = Vec::new();
    for dir in &dirs {
        copy_dir(dir, &d.spool());
        values.extend(personal_values(dir));
    }
    let out = d.run(&["--log-level", "trace", "sync", "--once"]);
    assert!(out.status.code() == Some(0), "{}", text(&out));
    let logs = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        logs.lines().count() > 50,
        "expected a chatty trace log:\n{logs}"
    );
    assert!(logs.contains("\"lead\":\"spool:"), "leads are logged by id");
    eprintln!(
        "checked {} personal values against {} log lines",
        values.len(),
        logs.lines().count()
    );
    assert_clean(&logs, &values);
    // The operator commands print ids and counts, never the person either.
    let out = d.run(&["--log-level", "trace", "status"]);
    assert_clean(
        &format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        &values,
    );
}
