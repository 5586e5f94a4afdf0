//! The `leadsync` binary delivering to a fake Salesforce org (`leadsync_fakes::salesforce`):
//! what an operator would check — the Leads in the org, no duplicate on a re-run or a
//! replay, `status --json` counts, dead letters with Salesforce's reason, an expired session
//! mid-run losing nothing, the JWT bearer grant, and the example target file loading.

mod common;
use common::{copy_dir, shared_fixtures, text, Deployment};
use leadsync_fakes::salesforce::{
    generate_rsa_key_pem, Fault, SalesforceFake, SalesforceFakeConfig,
    DEFAULT_EXTERNAL_ID_FIELD as EXT,
};
use std::process::Output;

fn target_toml(fake: &SalesforceFake, extra_connection: &str, rest: &str) -> String {
    format!(
        r#"
name = "salesforce"
kind = "salesforce"
[connection]
login_url = "{url}"
{extra_connection}
[retry]
min_delay = "10ms"
max_delay = "50ms"
{rest}
"#,
        url = fake.base_url(),
    )
}

fn client_credentials(fake: &SalesforceFake) -> String {
    format!(
        "client_id = \"{}\"\nclient_secret = {{ env = \"SF_TEST_SECRET\" }}",
        fake.config().client_id
    )
}

/// Run the binary off the async runtime, so the fake keeps answering meanwhile.
async fn run(d: &Deployment, args: &[&str], secret: &str) -> Output {
    let mut cmd = d.command();
    cmd.args(args).env("SF_TEST_SECRET", secret);
    tokio::task::spawn_blocking(move || cmd.output().expect("run leadsync"))
        .await
        .unwrap()
}

async fn status_json(d: &Deployment, secret: &str) -> serde_json::Value {
    let out = run(d, &["status", "--json"], secret).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_leads_arrive_mapped_and_a_replay_updates_the_same_records() {
    let Some(fx) = shared_fixtures() else { return };
    let fake = SalesforceFake::start(SalesforceFakeConfig::default())
        .await
        .unwrap();
    // The fixtures hold non-ASCII e-mail addresses: an org with Email Address
    // Internationalization accepts them (see non_ascii_email_needs_eai for one without).
    fake.set_eai(true);
    let secret = fake.config().client_secret.clone();
    let d = Deployment::with_target(&target_toml(&fake, &client_credentials(&fake), ""));
    copy_dir(&fx.join("leads"), &d.spool());
    let out = run(&d, &["sync", "--once"], &secret).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let status = status_json(&d, &secret).await;
    let delivered = status["targets"][0]["delivered"].as_u64().unwrap();
    let leads = status["leads"].as_u64().unwrap();
    // Every lead but the marketplace test lead (test leads are opt-in).
    assert_eq!(delivered, leads - 1, "{status}");
    assert!(delivered >= 80);
    let records = fake.records();
    assert_eq!(records.len() as u64, delivered);
    let keys: std::collections::HashSet<_> = records
        .iter()
        .map(|r| r.get_str(EXT).unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), records.len());
    // 200 records per collections call at most.
    assert!(fake.requests().iter().all(|r| r.records <= 200));

    // Mapped: the first Table entity of the fixtures.
    let ada = records
        .iter()
        .find(|r| r.get_str("Email") == Some("ada.müller0@contoso.com"))
        .expect("fixture lead present");
    assert_eq!(ada.get_str("FirstName"), Some("Ada"));
    assert_eq!(ada.get_str("LastName"), Some("Müller"));
    assert_eq!(ada.get_str("Company"), Some("Contoso"));
    assert_eq!(ada.get_str("Country"), Some("US"));
    assert_eq!(ada.get_str("Title"), Some("Developer"));
    assert_eq!(ada.get_str("LeadSource"), Some("Microsoft Marketplace"));
    let desc = ada.get_str("Description").unwrap();
    assert!(desc.starts_with("Multi\nline"), "{desc}");
    assert!(desc.contains("TestDrive-StartTestDrive|bitnami.openedxcypress"));
    assert!(desc.contains("Open edX Cypress"));
    // Required fields always filled; lengths always within §2.6.
    for r in &records {
        assert!(r.get_str("LastName").is_some_and(|s| !s.is_empty()));
        assert!(r.get_str("Company").is_some_and(|s| !s.is_empty()));
        assert!(r.get_str("Description").map_or(0, |s| s.chars().count()) <= 32000);
    }
    // DNC leads are marked.
    let dnc: Vec<_> = records
        .iter()
        .filter(|r| {
            r.get_str("Description")
                .is_some_and(|d| d.contains("action DNC"))
        })
        .collect();
    assert!(!dnc.is_empty());
    assert!(dnc
        .iter()
        .all(|r| r.fields["HasOptedOutOfEmail"] == true && r.fields["DoNotCall"] == true));

    // A replay pushes every lead again: the same records are updated, none added.
    let out = run(
        &d,
        &["replay", "--target", "salesforce", "--since", "2000-01-01"],
        &secret,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(&d, &["sync", "--once"], &secret).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let again = fake.records();
    assert_eq!(again.len(), records.len());
    assert!(
        again.iter().all(|r| r.updates == 1),
        "every record updated once"
    );
    let ids: Vec<_> = records.iter().map(|r| &r.id).collect();
    assert_eq!(again.iter().map(|r| &r.id).collect::<Vec<_>>(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_leads_are_dead_lettered_with_the_reason_and_an_expired_session_loses_nothing() {
    let fake = SalesforceFake::start(SalesforceFakeConfig::default())
        .await
        .unwrap();
    let secret = fake.config().client_secret.clone();
    let d = Deployment::with_target(&target_toml(
        &fake,
        &client_credentials(&fake),
        "[limits]\nbatch_size = 3\nconcurrency = 1\n",
    ));
    let mut lines = leads_jsonl(8);
    lines.push('\n');
    lines.push_str(
        &serde_json::json!({"UserDetails": {"LastName": "Bad", "Email": "not-an-address", "Company": "X"},
                            "LeadSource": "SPZA", "ActionCode": "PLT", "OfferTitle": "Contoso CRM"})
        .to_string(),
    );
    std::fs::write(d.spool().join("leads.jsonl"), lines).unwrap();
    // The first collections call goes through, the second finds the session expired (401
    // INVALID_SESSION_ID: refresh, re-push at once), and a later one a busy server (503).
    fake.inject_after(1, Fault::SessionExpired, 1);
    fake.inject_after(1, Fault::Unavailable, 1);
    let out = run(&d, &["sync", "--once", "--wait", "20s"], &secret).await;
    // One dead letter: exit 2.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // The log carries codes and counts, never the person or Salesforce's message.
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(log.contains("INVALID_EMAIL_ADDRESS"), "{log}");
    assert!(
        !log.contains("not-an-address") && !log.contains("Ann0"),
        "{log}"
    );
    assert_eq!(fake.records().len(), 8, "{}", text(&out));
    assert!(fake.token_request_count() >= 2);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&401) && statuses.contains(&503),
        "{statuses:?}"
    );

    let status = status_json(&d, &secret).await;
    let t = &status["targets"][0];
    assert_eq!(t["delivered"], 8, "{status}");
    assert_eq!(t["dead"], 1, "{status}");
    assert_eq!(t["pending"], 0, "{status}");
    // The quota Salesforce reported (Sforce-Limit-Info) is shown by `status`.
    let (used, max) = fake.api_usage();
    let note = t["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("{used} of {max}")) || note.contains(&format!("of {max}")),
        "{status}"
    );
    let out = run(&d, &["status"], &secret).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("API requests in the last 24 h"),
        "{}",
        text(&out)
    );

    let out = run(&d, &["dead-letters", "list"], &secret).await;
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("INVALID_EMAIL_ADDRESS"), "{}", text(&out));
    assert!(listing.contains("invalid email address"), "{}", text(&out));

    // A re-run with the same file adds nothing.
    std::fs::write(d.spool().join("again.jsonl"), leads_jsonl(8)).unwrap();
    let out = run(&d, &["sync", "--once"], &secret).await;
    assert!(out.status.code() == Some(0) || out.status.code() == Some(2));
    assert_eq!(fake.records().len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_target_checks_and_delivers() {
    let (private, public) = generate_rsa_key_pem();
    let fake = SalesforceFake::start(SalesforceFakeConfig {
        jwt_public_key_pem: Some(public),
        ..Default::default()
    })
    .await
    .unwrap();
    let conn = format!(
        "auth = \"jwt_bearer\"\nclient_id = \"{}\"\nusername = \"{}\"\nprivate_key = {{ file = \"sf-jwt.key\" }}",
        fake.config().client_id,
        fake.config().jwt_username
    );
    let d = Deployment::with_target(&target_toml(&fake, &conn, ""));
    std::fs::write(d.root().join("config/targets/sf-jwt.key"), private).unwrap();
    let out = run(&d, &["check", "--connect"], "").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("target salesforce (salesforce): ok"),
        "{stdout}"
    );
    assert!(stdout.contains("token obtained"), "{stdout}");
    assert!(stdout.contains("API requests used"), "{stdout}");

    std::fs::write(d.spool().join("leads.jsonl"), leads_jsonl(3)).unwrap();
    let out = run(&d, &["sync", "--once"], "").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fake.records().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_reports_a_missing_external_id_field() {
    let fake = SalesforceFake::start(SalesforceFakeConfig {
        external_id_fields: vec![],
        ..Default::default()
    })
    .await
    .unwrap();
    let secret = fake.config().client_secret.clone();
    let d = Deployment::with_target(&target_toml(&fake, &client_credentials(&fake), ""));
    let out = run(&d, &["check", "--connect"], &secret).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains("Leadsync_Key__c"), "{stdout}");
    assert!(!stdout.contains(&secret));
}

#[test]
fn the_example_target_file_loads() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples/targets/salesforce.toml");
    let d = Deployment::new();
    std::fs::remove_file(d.root().join("config/targets/csv.toml")).unwrap();
    std::fs::copy(&example, d.root().join("config/targets/salesforce.toml")).unwrap();
    let out = d
        .command()
        .arg("check")
        .env("SALESFORCE_CLIENT_ID", "consumer-key")
        .env("SALESFORCE_CLIENT_SECRET", "consumer-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("target salesforce (salesforce): ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("upsert on Lead.Leadsync_Key__c"),
        "{stdout}"
    );
    // Without the secret, check names the key.
    let out = d
        .command()
        .arg("check")
        .env("SALESFORCE_CLIENT_ID", "consumer-key")
        .env_remove("SALESFORCE_CLIENT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("connection.client_secret"),
        "{}",
        text(&out)
    );
}
