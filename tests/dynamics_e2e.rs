//! The `leadsync` binary delivering to a fake Dataverse (`leadsync_fakes::dataverse`): what an
//! operator would check — the leads in Dynamics with their mapped columns, no duplicate when
//! the same leads are pushed again, an expiring token costing no lead, a 429 pausing the
//! target for its `Retry-After`, a batch with failing parts retrying only those and
//! dead-lettering the rejected with Dataverse's message, `check --connect`, and the example
//! target file loading.

mod common;
use common::{copy_dir, shared_fixtures, text, Deployment};
use leadsync_fakes::dataverse::FakeDataverse;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::process::Output;
use std::time::Duration;

const SECRET_ENV: &str = "DV_TEST_SECRET";

fn target_toml(fake: &FakeDataverse, rest: &str) -> String {
    format!(
        r#"
name = "dynamics"
kind = "dynamics"
[connection]
url = "{url}"
authority = "{url}"
tenant_id = "{tenant}"
client_id = "leadsync-app"
client_secret = {{ env = "{SECRET_ENV}" }}
[connection.http]
timeout = "10s"
[retry]
min_delay = "10ms"
max_delay = "50ms"
{rest}
"#,
        url = fake.base_url(),
        tenant = fake.tenant(),
    )
}

fn deployment(fake: &FakeDataverse, rest: &str) -> Deployment {
    let d = Deployment::with_target(&target_toml(fake, rest));
    let targets = d.root().join("config/targets");
    std::fs::rename(targets.join("csv.toml"), targets.join("dynamics.toml")).unwrap();
    d
}

/// Run the binary off the async runtime, so the fake keeps answering meanwhile.
async fn run(d: &Deployment, args: &[&str], secret: &str) -> Output {
    let mut cmd = d.command();
    cmd.args(args).env(SECRET_ENV, secret);
    tokio::task::spawn_blocking(move || cmd.output().expect("run leadsync"))
        .await
        .unwrap()
}

async fn status(d: &Deployment) -> Value {
    let out = run(d, &["status", "--json"], "s3cret").await;
    assert!(out.status.success(), "{}", text(&out));
    let s: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    s["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "dynamics")
        .cloned()
        .expect("dynamics target in status")
}

fn leads_jsonl(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({
                "UserDetails": {"FirstName": format!("Ann{i}"), "LastName": "Smith",
                                "Email": format!("ann{i}@contoso.example"), "Phone": "+45 1234",
                                "Country": "Denmark", "Company": "Contoso", "Title": "CTO"},
                "LeadSource": "AzureMarketplace", "ActionCode": if i % 3 == 1 { "PLT" } else { "INS" },
                "OfferTitle": "Contoso CRM", "Description": format!("lead {i}")
            })
            .to_string()
                + "\n"
        })
        .collect()
}

const OWN_LEADS: &str = r#"{"UserDetails": {"FirstName": "Ann", "LastName": "Lee", "Email": "ann.lee@example.com", "Company": "Contoso", "Title": "CTO", "Phone": "+1 555 0100", "Country": "United States"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso Analytics", "Description": "Please call"}
{"PartitionKey": "11:2F1:2F2026", "RowKey": "r-1", "Timestamp": "2026-11-01T08:00:00Z", "LeadSource": "SPZA-PLT|contoso.crm", "ActionCode": "PLT", "CreatedTime": "11/01/2026 08:00:00 AM", "CustomerInfo": "{\"FirstName\": \"Bo\", \"LastName\": \"Berg\", \"Email\": \"bo@example.com\"}", "OfferDisplayName": "Contoso CRM"}
{"UserDetails": {"FirstName": "Cy", "Email": "cy@example.com"}, "LeadSource": "AppSource (SPZA)", "ActionCode": "DNC", "OfferTitle": "Contoso CRM"}
{"UserDetails": {"FirstName": "Di", "LastName": "Dahl", "Email": "di@example.com"}, "LeadSource": "AzurePortal", "ActionCode": "Create", "OfferTitle": "Contoso VM"}
{"userDetails": {"FirstName": "MSFT_TEST_1", "Email": "MSFT_TEST_1@test.com"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso Test"}
"#;

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

/// Drop the input leads into the spool: the shared fixtures when present, else our own.
/// Returns how many leads should reach Dynamics (test leads are skipped by default).
fn drop_leads(d: &Deployment) -> (usize, bool) {
    match shared_fixtures() {
        Some(fx) => {
            copy_dir(&fx.join("leads"), &d.spool());
            // One marketplace test lead among them (see the fixtures' README).
            (count_records(&fx.join("leads")) - 1, true)
        }
        None => {
            std::fs::write(d.spool().join("own.jsonl"), OWN_LEADS).unwrap();
            (4, false)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_arrive_mapped_and_pushing_them_again_updates_the_same_records() {
    let fake = FakeDataverse::start().await;
    let d = deployment(&fake, "[limits]\nbatch_size = 20\n");
    let (expected, fixtures) = drop_leads(&d);
    let out = run(&d, &["sync", "--once"], "s3cret").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fake.lead_count(), expected, "{}", text(&out));
    let leads: Vec<Value> = fake.leads().into_iter().map(Value::Object).collect();
    let keys: HashSet<String> = leads
        .iter()
        .map(|l| l["new_leadsynckey"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), expected, "one Dynamics lead per key");
    for l in &leads {
        assert_eq!(l["leadsourcecode"], 8);
        assert!(matches!(l["leadqualitycode"].as_i64(), Some(1..=3)));
        assert!(
            l.get("firstname")
                .is_none_or(|f| !f.as_str().unwrap().starts_with("MSFT_TEST")),
            "test leads are skipped"
        );
    }
    if fixtures {
        // Every lead carries the mapped topic; those with a person have their columns.
        assert!(leads.iter().all(|l| l["subject"].is_string()));
        assert!(
            leads
                .iter()
                .filter(|l| l["emailaddress1"].is_string())
                .count()
                > expected / 2
        );
        assert!(
            leads.iter().any(|l| l["donotemail"] == true),
            "a DNC fixture is marked"
        );
    } else {
        let by_first = |n: &str| {
            leads
                .iter()
                .find(|l| l["firstname"] == n)
                .unwrap_or_else(|| panic!("no lead {n}"))
                .clone()
        };
        let ann = by_first("Ann");
        assert_eq!(ann["lastname"], "Lee");
        assert_eq!(ann["emailaddress1"], "ann.lee@example.com");
        assert_eq!(ann["telephone1"], "+1 555 0100");
        assert_eq!(ann["address1_country"], "United States");
        assert_eq!(ann["companyname"], "Contoso");
        assert_eq!(ann["jobtitle"], "CTO");
        assert_eq!(ann["subject"], "Contoso Analytics (INS)");
        assert_eq!(ann["description"], "Please call");
        assert_eq!(ann["leadqualitycode"], 1);
        assert_eq!(by_first("Bo")["leadqualitycode"], 2);
        assert_eq!(by_first("Bo")["subject"], "Contoso CRM (PLT)");
        assert_eq!(by_first("Di")["leadqualitycode"], 1);
        let cy = by_first("Cy");
        assert_eq!(cy["donotemail"], true);
        assert_eq!(cy["donotphone"], true);
        assert_eq!(cy["donotbulkemail"], true);
        assert_eq!(cy["leadqualitycode"], 3);
    }
    let ids_before: HashSet<String> = leads
        .iter()
        .map(|l| l["leadid"].as_str().unwrap().to_string())
        .collect();
    let s = status(&d).await;
    assert_eq!(s["delivered"], expected as u64);
    assert_eq!(s["pending"], 0);
    assert_eq!(s["dead"], 0);

    // The ledger is lost (a crash between push and record, a restore): the same leads are
    // pushed again and land on the same records.
    std::fs::remove_dir_all(d.root().join("state")).unwrap();
    let _ = drop_leads(&d);
    let writes_before = fake.requests().len();
    let out = run(&d, &["sync", "--once"], "s3cret").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(fake.requests().len() > writes_before, "pushed again");
    assert_eq!(fake.lead_count(), expected, "no duplicate");
    let ids_after: HashSet<String> = fake
        .leads()
        .iter()
        .map(|l| l["leadid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids_before, ids_after);
    assert_eq!(status(&d).await["delivered"], expected as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_expiring_mid_run_costs_no_lead() {
    let fake = FakeDataverse::start().await;
    // Tokens announce an hour but die after 400 ms; each request takes 100 ms.
    fake.set_token_lifetime(Duration::from_millis(400));
    fake.set_latency(Duration::from_millis(100));
    let d = deployment(&fake, "[limits]\nbatch_size = 1\n");
    std::fs::write(d.spool().join("leads.jsonl"), leads_jsonl(12)).unwrap();
    let out = run(&d, &["sync", "--once"], "s3cret").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fake.lead_count(), 12);
    assert!(
        fake.unauthorized_count() >= 1,
        "the token did expire mid-run"
    );
    assert!(fake.tokens_issued() >= 2, "and was renewed");
    let s = status(&d).await;
    assert_eq!(s["delivered"], 12);
    assert_eq!(s["dead"], 0);
    assert_eq!(s["pending"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_pauses_the_target_for_retry_after() {
    let fake = FakeDataverse::start().await;
    fake.throttle_next(1, 2);
    let d = deployment(&fake, "[limits]\nbatch_size = 3\n");
    std::fs::write(d.spool().join("leads.jsonl"), leads_jsonl(6)).unwrap();
    let out = run(&d, &["sync", "--once"], "s3cret").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fake.lead_count(), 6);
    let data: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/"))
        .collect();
    let throttled = data.iter().position(|r| r.status == 429).expect("a 429");
    let next = &data[throttled + 1];
    let waited = next.at.duration_since(data[throttled].at);
    // The pipeline counts Retry-After from its own clock, taken just before it sent the
    // request; allow for that request's travel time.
    assert!(
        waited >= Duration::from_millis(1900),
        "the target resumed after {waited:?}, before Retry-After"
    );
    let s = status(&d).await;
    assert_eq!(s["delivered"], 6);
    assert_eq!(s["dead"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_with_failing_parts_retries_only_those_and_dead_letters_the_rejected() {
    let fake = FakeDataverse::start().await;
    // This organisation shortened jobtitle below the out-of-the-box 100.
    fake.set_max_length("jobtitle", 10);
    fake.fail_next_operations(1, 503);
    let d = deployment(&fake, "[limits]\nbatch_size = 10\n");
    let mut leads = leads_jsonl(5);
    leads.push_str(
        &json!({"UserDetails": {"FirstName": "Long", "LastName": "Title", "Email": "long@example.com",
                                "Title": "Chief Technology Officer"},
                "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso CRM"})
        .to_string(),
    );
    std::fs::write(d.spool().join("leads.jsonl"), leads).unwrap();
    let out = run(&d, &["sync", "--once"], "s3cret").await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "one dead letter: {}",
        text(&out)
    );
    assert_eq!(fake.lead_count(), 5);
    let batches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/"))
        .collect();
    assert_eq!(batches[0].operations, 6, "all six went in one $batch");
    assert_eq!(batches.len(), 2, "{batches:?}");
    assert_eq!(
        batches[1].operations, 1,
        "only the transient failure was retried"
    );
    assert_eq!(batches[1].method, "PATCH");

    let out = run(&d, &["dead-letters", "list"], "s3cret").await;
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(listing.contains("code=0x80044331"), "{listing}");
    assert!(
        listing.contains("The length of the 'jobtitle' attribute of the 'lead' entity exceeded the maximum allowed length of '10'."),
        "{listing}"
    );
    let s = status(&d).await;
    assert_eq!(s["delivered"], 5);
    assert_eq!(s["dead"], 1);
    assert_eq!(s["pending"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_connect_reports_what_it_verified_and_never_the_secret() {
    let fake = FakeDataverse::start().await;
    let d = deployment(&fake, "");
    let out = run(&d, &["check", "--connect"], "s3cret").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("target dynamics (dynamics): ok"),
        "{stdout}"
    );
    assert!(stdout.contains("WhoAmI answered"), "{stdout}");
    assert!(stdout.contains("is Active"), "{stdout}");

    let wrong = "not-the-secret-42";
    let out = run(&d, &["check", "--connect"], wrong).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("FAILED"), "{all}");
    assert!(all.contains("AADSTS7000215"), "{all}");
    assert!(!all.contains(wrong));

    fake.set_alternate_key_status(None);
    let out = run(&d, &["check", "--connect"], "s3cret").await;
    assert!(text(&out).contains("create_only"), "{}", text(&out));
}

#[test]
fn the_example_target_file_loads() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples/targets/dynamics.toml");
    let d = Deployment::new();
    std::fs::remove_file(d.root().join("config/targets/csv.toml")).unwrap();
    std::fs::copy(&example, d.root().join("config/targets/dynamics.toml")).unwrap();
    let out = d
        .command()
        .arg("check")
        .env("DATAVERSE_CLIENT_SECRET", "example-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("target dynamics (dynamics): ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("upsert on the alternate key over new_leadsynckey, up to 50"),
        "{stdout}"
    );
    let out = d
        .command()
        .arg("check")
        .env_remove("DATAVERSE_CLIENT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("connection.client_secret"),
        "{}",
        text(&out)
    );
}
