//! The `leadsync` binary delivering to a fake Marketo instance (`leadsync_fakes::marketo`):
//! the fixture leads with the mapped fields, a replay updating the same leads, dead letters
//! with Marketo's reason, a 606 pausing the whole target for its 20 s, a 2,000-lead backlog
//! kept under 100 calls per 20 s, `check --connect` naming a missing lookup field, and the
//! example file loading.

mod common;
use common::{copy_dir, shared_fixtures, text, Deployment};
use leadsync_fakes::marketo::{Fault, FieldSpec, MarketoFake, MarketoFakeConfig};
use std::process::Output;

fn target_toml(fake: &MarketoFake, extra_connection: &str, rest: &str) -> String {
    format!(
        r#"
name = "marketo"
kind = "marketo"
[connection]
endpoint = "{url}"
client_id = "{id}"
client_secret = {{ env = "MKTO_TEST_SECRET" }}
{extra_connection}
[retry]
min_delay = "10ms"
max_delay = "50ms"
{rest}
"#,
        url = fake.base_url(),
        id = MarketoFakeConfig::default().client_id,
    )
}

/// Run the binary off the async runtime, so the fake keeps answering meanwhile.
async fn run(d: &Deployment, args: &[&str]) -> Output {
    let mut cmd = d.command();
    cmd.args(args).env(
        "MKTO_TEST_SECRET",
        MarketoFakeConfig::default().client_secret,
    );
    tokio::task::spawn_blocking(move || cmd.output().expect("run leadsync"))
        .await
        .unwrap()
}

async fn status_json(d: &Deployment) -> serde_json::Value {
    let out = run(d, &["status", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

fn leads_jsonl(n: usize) -> String {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "UserDetails": {"FirstName": format!("Ann{i}"), "LastName": "Smith",
                                "Email": format!("ann{i}@contoso.example"), "Company": "Contoso"},
                "LeadSource": "AzureMarketplace", "ActionCode": "INS",
                "OfferTitle": "Contoso CRM", "Description": format!("lead {i}")
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Looked up by e-mail (the default): the fixtures' leads without an e-mail, and those
/// whose address is not ASCII (Marketo takes ASCII e-mail only), are dead letters with the
/// reason; every other lead is in Marketo, mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_leads_arrive_mapped_and_a_replay_updates_the_same_leads() {
    let Some(fx) = shared_fixtures() else { return };
    let fake = MarketoFake::start(MarketoFakeConfig::default())
        .await
        .unwrap();
    let d = Deployment::with_target(&target_toml(&fake, "", ""));
    copy_dir(&fx.join("leads"), &d.spool());
    let out = run(&d, &["sync", "--once"]).await;
    assert!(
        matches!(out.status.code(), Some(0) | Some(2)),
        "{}",
        text(&out)
    );

    let status = status_json(&d).await;
    let t = &status["targets"][0];
    let (delivered, dead) = (
        t["delivered"].as_u64().unwrap(),
        t["dead"].as_u64().unwrap(),
    );
    assert_eq!(
        delivered + dead,
        status["leads"].as_u64().unwrap() - 1,
        "{status}"
    );
    assert!(delivered >= 20, "{status}");
    let leads = fake.leads();
    // One Marketo lead per e-mail: several marketplace events of one customer update it.
    let emails: std::collections::HashSet<_> =
        leads.iter().filter_map(|l| l.get_str("email")).collect();
    assert_eq!(emails.len(), leads.len());
    assert!(leads.len() as u64 <= delivered);
    let someone = leads
        .iter()
        .find(|l| {
            l.get_str("email").is_some_and(|e| e.is_ascii()) && l.get_str("firstName").is_some()
        })
        .expect("an ASCII-addressed fixture lead");
    assert_eq!(someone.get_str("leadSource"), Some("Microsoft Marketplace"));
    let note = someone.get_str("mktoPersonNotes").unwrap();
    assert!(note.contains("Microsoft marketplace:"), "{note}");
    if dead > 0 {
        let out = run(&d, &["dead-letters", "list"]).await;
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            listing.contains("marketo_1003") || listing.contains("marketo_no_lookup_value"),
            "{}",
            text(&out)
        );
    }

    let out = run(
        &d,
        &["replay", "--target", "marketo", "--since", "2000-01-01"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(&d, &["sync", "--once"]).await;
    assert!(
        matches!(out.status.code(), Some(0) | Some(2)),
        "{}",
        text(&out)
    );
    let again = fake.leads();
    assert_eq!(again.len(), leads.len());
    assert_eq!(
        again.iter().map(|l| l.id).collect::<Vec<_>>(),
        leads.iter().map(|l| l.id).collect::<Vec<_>>()
    );
    assert!(again.iter().zip(&leads).all(|(a, b)| a.updates > b.updates));
}

/// A 606 pauses the whole target for Marketo's 20 s window: nothing reaches Marketo in
/// between, and the leads arrive after it. The log has one line for the throttled call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_answer_pauses_the_target_for_the_window() {
    let fake = MarketoFake::start(MarketoFakeConfig::default())
        .await
        .unwrap();
    let d = Deployment::with_target(&target_toml(
        &fake,
        "",
        "[limits]\nbatch_size = 5\nconcurrency = 1\n",
    ));
    std::fs::write(d.spool().join("leads.jsonl"), leads_jsonl(15)).unwrap();
    fake.inject_after(1, Fault::RateLimit606, 1);
    let out = run(&d, &["sync", "--once", "--wait", "40s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fake.leads().len(), 15);
    let calls: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/rest/"))
        .collect();
    let throttled = calls
        .iter()
        .find(|r| r.code.as_deref() == Some("606"))
        .expect("a 606")
        .at;
    let next = calls
        .iter()
        .find(|r| r.at > throttled)
        .expect("a call after")
        .at;
    assert!(
        next.duration_since(throttled) >= std::time::Duration::from_secs(20),
        "{:?}",
        next.duration_since(throttled)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("marketo_606"), "{log}");
    assert!(!log.contains("ann1@contoso.example"), "{log}");
}

/// 2,000 leads, batches of 10 (200 calls), four in flight: the pacer keeps Marketo's own
/// count under 100 calls in every 20 s, so it never answers 606 or 615.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_stays_under_100_calls_per_20_seconds() {
    let fake = MarketoFake::start(MarketoFakeConfig::default())
        .await
        .unwrap();
    let d = Deployment::with_target(&target_toml(
        &fake,
        "",
        "[limits]\nbatch_size = 10\nconcurrency = 4\n",
    ));
    std::fs::write(d.spool().join("leads.jsonl"), leads_jsonl(2000)).unwrap();
    let out = run(&d, &["sync", "--once", "--wait", "120s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fake.leads().len(), 2000);
    let refused = fake.requests().iter().filter(|r| r.code.is_some()).count();
    assert_eq!(refused, 0);
    assert!(
        fake.max_calls_in_window() <= 100,
        "{}",
        fake.max_calls_in_window()
    );
    assert!(fake.max_in_flight() <= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_reports_a_missing_lookup_field() {
    let fake = MarketoFake::start(MarketoFakeConfig::default())
        .await
        .unwrap();
    let d = Deployment::with_target(&target_toml(&fake, "lookup_field = \"leadsyncKey\"", ""));
    let out = run(&d, &["check", "--connect"]).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAILED") && stdout.contains("leadsyncKey"),
        "{stdout}"
    );
    assert!(!stdout.contains(&MarketoFakeConfig::default().client_secret));
    fake.add_field(FieldSpec::custom_key("leadsyncKey"));
    let out = run(&d, &["check", "--connect"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn the_example_target_file_loads() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples/targets/marketo.toml");
    let d = Deployment::new();
    std::fs::remove_file(d.root().join("config/targets/csv.toml")).unwrap();
    std::fs::copy(&example, d.root().join("config/targets/marketo.toml")).unwrap();
    let out = d
        .command()
        .arg("check")
        .env("MARKETO_CLIENT_ID", "client-id")
        .env("MARKETO_CLIENT_SECRET", "client-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("target marketo (marketo): ok"),
        "{}",
        text(&out)
    );
    let out = d
        .command()
        .arg("check")
        .env("MARKETO_CLIENT_ID", "client-id")
        .env_remove("MARKETO_CLIENT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("connection.client_secret"),
        "{}",
        text(&out)
    );
}
