//! The `leadsync` binary delivering to a fake HubSpot portal (`leadsync_fakes::hubspot`):
//! the fixture leads as contacts with the mapped properties, a replay updating the same
//! contacts, dead letters with HubSpot's reason, a 429 pausing the whole target for its
//! window, `check --connect` naming a missing id property, and the example file loading.

mod common;
use common::{copy_dir, shared_fixtures, text, Deployment};
use leadsync_fakes::hubspot::{Fault, HubSpotFake, HubSpotFakeConfig, PropertySpec};
use std::process::Output;

fn target_toml(fake: &HubSpotFake, extra_connection: &str, rest: &str) -> String {
    format!(
        r#"
name = "hubspot"
kind = "hubspot"
[connection]
base_url = "{url}"
access_token = {{ env = "HS_TEST_TOKEN" }}
{extra_connection}
[retry]
min_delay = "10ms"
max_delay = "50ms"
{rest}
"#,
        url = fake.base_url(),
    )
}

/// Run the binary off the async runtime, so the fake keeps answering meanwhile.
async fn run(d: &Deployment, args: &[&str]) -> Output {
    let mut cmd = d.command();
    cmd.args(args)
        .env("HS_TEST_TOKEN", HubSpotFakeConfig::default().token);
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
                "LeadSource": "AppSource", "ActionCode": "Create",
                "OfferTitle": "Contoso CRM", "Description": format!("lead {i}")
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Keyed on a unique custom property: one contact per marketplace lead, and HubSpot's
/// per-input (207) answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_leads_arrive_mapped_and_a_replay_updates_the_same_contacts() {
    let Some(fx) = shared_fixtures() else { return };
    let fake = HubSpotFake::start(HubSpotFakeConfig::default())
        .await
        .unwrap();
    fake.add_property(PropertySpec::unique_text("leadsync_key"));
    let d = Deployment::with_target(&target_toml(&fake, "id_property = \"leadsync_key\"", ""));
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
    // Every lead but the marketplace test lead (test leads are opt-in) reached an end.
    assert_eq!(
        delivered + dead,
        status["leads"].as_u64().unwrap() - 1,
        "{status}"
    );
    assert!(delivered >= 70, "{status}");
    let contacts = fake.contacts();
    assert_eq!(contacts.len() as u64, delivered);
    let ada = contacts
        .iter()
        .find(|c| c.get_str("email") == Some("ada.müller0@contoso.com"))
        .or_else(|| {
            contacts
                .iter()
                .find(|c| c.get_str("firstname") == Some("Ada"))
        })
        .expect("fixture lead present");
    assert_eq!(ada.get_str("firstname"), Some("Ada"));
    assert_eq!(ada.get_str("company"), Some("Contoso"));
    assert_eq!(ada.get_str("hs_lead_status"), Some("NEW"));
    let note = ada.get_str("message").unwrap();
    assert!(note.contains("Open edX Cypress"), "{note}");
    // Whatever HubSpot refused is a dead letter with its reason, not a lost lead.
    if dead > 0 {
        let out = run(&d, &["dead-letters", "list"]).await;
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("hubspot_"),
            "{}",
            text(&out)
        );
    }

    let out = run(
        &d,
        &["replay", "--target", "hubspot", "--since", "2000-01-01"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(&d, &["sync", "--once"]).await;
    assert!(
        matches!(out.status.code(), Some(0) | Some(2)),
        "{}",
        text(&out)
    );
    let again = fake.contacts();
    assert_eq!(again.len(), contacts.len());
    assert!(
        again.iter().all(|c| c.updates == 1),
        "every contact updated once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_pauses_the_whole_target_and_loses_nothing() {
    let fake = HubSpotFake::start(HubSpotFakeConfig::default())
        .await
        .unwrap();
    let d = Deployment::with_target(&target_toml(
        &fake,
        "",
        "[limits]\nbatch_size = 5\nconcurrency = 2\n",
    ));
    std::fs::write(d.spool().join("leads.jsonl"), leads_jsonl(30)).unwrap();
    fake.inject_after(
        1,
        Fault::TenSecondlyRolling {
            retry_after_secs: Some(2),
        },
        1,
    );
    let out = run(&d, &["sync", "--once", "--wait", "20s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fake.contacts().len(), 30);
    let upserts: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("batch/upsert"))
        .collect();
    let throttled = upserts.iter().find(|r| r.status == 429).expect("a 429").at;
    // Requests already in flight may land; none is sent after the 429 before its window.
    let early = upserts
        .iter()
        .filter(|r| r.at > throttled + std::time::Duration::from_millis(200))
        .filter(|r| r.at < throttled + std::time::Duration::from_secs(2))
        .count();
    assert_eq!(early, 0, "{upserts:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("TEN_SECONDLY_ROLLING"), "{log}");
    assert!(!log.contains("ann1@contoso.example"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_reports_a_missing_id_property() {
    let fake = HubSpotFake::start(HubSpotFakeConfig::default())
        .await
        .unwrap();
    let d = Deployment::with_target(&target_toml(&fake, "id_property = \"leadsync_key\"", ""));
    let out = run(&d, &["check", "--connect"]).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAILED") && stdout.contains("leadsync_key"),
        "{stdout}"
    );
    assert!(!stdout.contains(&HubSpotFakeConfig::default().token));
    fake.add_property(PropertySpec::unique_text("leadsync_key"));
    let out = run(&d, &["check", "--connect"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn the_example_target_file_loads() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples/targets/hubspot.toml");
    let d = Deployment::new();
    std::fs::remove_file(d.root().join("config/targets/csv.toml")).unwrap();
    std::fs::copy(&example, d.root().join("config/targets/hubspot.toml")).unwrap();
    let out = d
        .command()
        .arg("check")
        .env("HUBSPOT_ACCESS_TOKEN", "pat-na1-example")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("target hubspot (hubspot): ok"),
        "{}",
        text(&out)
    );
    let out = d
        .command()
        .arg("check")
        .env_remove("HUBSPOT_ACCESS_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("connection.access_token"),
        "{}",
        text(&out)
    );
}
