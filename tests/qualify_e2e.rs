//! `[qualify]` end to end (docs/qualification.md): one target takes only complete leads
//! (`[filter] when = "complete"`), another takes every lead; both write the computed values
//! into their columns; `check` lists the values in the order they are computed.

mod common;
use common::{text, Deployment};
use std::collections::HashMap;
use std::path::Path;

/// The rules both targets share.
const QUALIFY: &str = r#"
[qualify.complete]
when = "has email and has company and not free_mail"

[qualify.score]
base = 10
add = [
  { when = "action in [PLT, StartTestDrive]", points = 40 },
  { when = "action in [INS, Create]", points = 20 },
  { when = "has company", points = 20 },
  { when = "has phone", points = 20 },
  { when = "free_mail", points = -20 },
]

[qualify.rating]
cases = [
  { when = "dnc", value = "Cold" },
  { when = "complete and score >= 70", value = "Hot" },
  { when = "score >= 40", value = "Warm" },
]
default = "Cold"
"#;

const LEADS: &str = r#"{"UserDetails": {"FirstName": "Ann", "Email": "ann@contoso.com", "Company": "Contoso", "Phone": "+1 425 555 0100"}, "LeadSource": "SPZA", "ActionCode": "PLT", "OfferTitle": "Contoso CRM"}
{"UserDetails": {"FirstName": "Bo", "Email": "bo@gmail.com", "Company": "Bo's Bikes", "Phone": "0301234"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso CRM"}
{"UserDetails": {"FirstName": "Cy", "Email": "cy@fabrikam.example"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso CRM"}
{"UserDetails": {"FirstName": "Di", "Email": "di@northwind.example", "Company": "Northwind"}, "LeadSource": "AzurePortal", "ActionCode": "Create", "OfferTitle": "Contoso CRM"}
{"UserDetails": {"FirstName": "Ed", "Email": "ed@tailspin.example", "Company": "Tailspin"}, "LeadSource": "SPZA", "ActionCode": "DNC", "OfferTitle": "Contoso CRM"}
"#;

fn deployment() -> Deployment {
    let complete_only = format!(
        r#"
kind = "file"
schedule = "*/1 * * * * *"
[connection]
path = "../../out/leads.csv"
{QUALIFY}
[filter]
when = "complete"

[mapping.fields]
Rating = "rating"
Score = "score"
Summary = {{ template = "{{rating}} lead, score {{score}}" }}
"#
    );
    let d = Deployment::with_target(&complete_only);
    let everything = format!(
        r#"
kind = "file"
schedule = "*/1 * * * * *"
[connection]
path = "../../out/all.csv"
{QUALIFY}
[mapping.fields]
Rating = "rating"
Complete = "complete"
"#
    );
    std::fs::write(d.root().join("config/targets/all.toml"), everything).unwrap();
    d
}

fn rows(path: &Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            headers
                .iter()
                .map(String::from)
                .zip(rec.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

fn by_name(rows: &[HashMap<String, String>]) -> HashMap<String, HashMap<String, String>> {
    rows.iter()
        .map(|r| (r["First Name"].clone(), r.clone()))
        .collect()
}

#[test]
fn a_when_filter_delivers_only_complete_leads_and_every_target_maps_the_values() {
    let d = deployment();
    let out = d.run(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("qualifies each lead: complete, score, rating"),
        "{stdout}"
    );

    std::fs::write(d.spool().join("drop.jsonl"), LEADS).unwrap();
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The complete-only target: Ann, Di and Ed (the DNC notice is complete too); not Bo
    // (free mail) nor Cy (no company).
    let complete = by_name(&d.csv_rows());
    let mut names: Vec<&str> = complete.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["Ann", "Di", "Ed"], "{complete:?}");
    assert_eq!(complete["Ann"]["Rating"], "Hot");
    assert_eq!(complete["Ann"]["Score"], "90");
    assert_eq!(complete["Ann"]["Summary"], "Hot lead, score 90");
    assert_eq!(complete["Di"]["Rating"], "Warm");
    assert_eq!(complete["Di"]["Score"], "50");
    assert_eq!(complete["Ed"]["Rating"], "Cold");
    assert_eq!(complete["Ed"]["Do Not Contact"], "true");

    // The other target: every lead, with its values.
    let all = by_name(&rows(&d.root().join("out/all.csv")));
    let got: Vec<(&str, &str, &str)> = ["Ann", "Bo", "Cy", "Di", "Ed"]
        .iter()
        .map(|n| {
            let r = &all[*n];
            (*n, r["Rating"].as_str(), r["Complete"].as_str())
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Ann", "Hot", "true"),
            ("Bo", "Warm", "false"),
            ("Cy", "Cold", "false"),
            ("Di", "Warm", "true"),
            ("Ed", "Cold", "true"),
        ]
    );

    // The ledger holds one delivery per admitted (target, lead): 3 + 5.
    let status = d.status_json();
    let delivered: HashMap<String, u64> = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["target"].as_str().unwrap().to_string(),
                t["delivered"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(delivered["csv"], 3, "{status}");
    assert_eq!(delivered["all"], 5, "{status}");
}
