//! The `https` target end to end: the real binary, a spool of leads, and the fake HTTPS
//! receiver with certificates made at test time. What a publisher would check on their
//! endpoint: the marketplace body for every lead, a signature they can verify, one delivery
//! per lead even when re-run, `Retry-After` waited out with the same `Idempotency-Key`, the
//! receiver's reason in the dead letters, and the URL's signed query string in no log line.

mod common;
use common::{text, Deployment};
use leadsync_fakes::https_receiver::{
    verify_signature, HttpsReceiver, ReceiverOptions, Reply, SignatureCheck, TestPki,
};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::Duration;

const SECRET_QUERY: &str = "api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sig=SECRETSIG";
const HMAC_SECRET: &str = "hmac-shared-secret";

const OWN_LEADS: &str = r#"{"UserDetails": {"FirstName": "Ann", "LastName": "Lee", "Email": "ann.lee@example.com", "Phone": "16175555555", "Country": "USA", "Company": "Contoso", "Title": "CTO"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso Analytics", "Description": "Call me"}
{"UserDetails": {"FirstName": "Bo", "Email": "bo@example.com"}, "LeadSource": "AppSource (SPZA)", "ActionCode": "PLT", "OfferTitle": "Contoso CRM", "Description": "Campaigns: "}
{"userDetails": {"FirstName": "MSFT_TEST_1", "Email": "MSFT_TEST_1@test.com"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso Test"}
"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A deployment whose only target is `hook` (kind https) with this `[connection]` body.
fn deployment(connection: &str, pki: &TestPki) -> Deployment {
    let d = Deployment::with_target("");
    let targets = d.root().join("config/targets");
    std::fs::remove_file(targets.join("csv.toml")).unwrap();
    std::fs::write(targets.join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(
        targets.join("hook.toml"),
        format!(
            "kind = \"https\"\nschedule = \"*/1 * * * * *\"\n[retry]\nmin_delay = \"200ms\"\nmax_delay = \"1s\"\n{connection}"
        ),
    )
    .unwrap();
    d
}

const SIGNED_TLS: &str = r#"
[connection]
url = { env = "LEADSYNC_TEST_HOOK_URL" }
[connection.signature]
secret = { env = "LEADSYNC_TEST_HOOK_SECRET" }
[connection.http]
ca_file = "ca.pem"
"#;

fn run(d: &Deployment, url: &str, args: &[&str]) -> std::process::Output {
    d.command()
        .env("LEADSYNC_TEST_HOOK_URL", url)
        .env("LEADSYNC_TEST_HOOK_SECRET", HMAC_SECRET)
        .args(args)
        .output()
        .expect("run leadsync")
}

/// What the marketplace body of a record in the HTTPS shape must be: every documented key,
/// the values as received, "" for what the record lacks (keys matched case-insensitively).
fn expected_body(record: &Value) -> Value {
    let get = |o: &Map<String, Value>, k: &str| -> Value {
        o.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .and_then(|(_, v)| v.as_str())
            .map(|s| {
                if s.trim().is_empty() && k != "Description" {
                    ""
                } else {
                    s
                }
            })
            .unwrap_or("")
            .into()
    };
    let top = record.as_object().unwrap();
    let empty = Map::new();
    let ud = top
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("UserDetails"))
        .and_then(|(_, v)| v.as_object())
        .unwrap_or(&empty);
    json!({
        "UserDetails": {
            "FirstName": get(ud, "FirstName"), "LastName": get(ud, "LastName"),
            "Email": get(ud, "Email"), "Phone": get(ud, "Phone"), "Country": get(ud, "Country"),
            "Company": get(ud, "Company"), "Title": get(ud, "Title"),
        },
        "LeadSource": get(top, "LeadSource"),
        "ActionCode": get(top, "ActionCode"),
        "OfferTitle": get(top, "OfferTitle"),
        "Description": get(top, "Description"),
    })
}

fn records_of(jsonl: &str) -> Vec<Value> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn leads_arrive_in_the_marketplace_shape_signed_and_once() {
    let rt = runtime();
    let pki = TestPki::generate().unwrap();
    let rx = rt
        .block_on(HttpsReceiver::start(
            ReceiverOptions::https(&pki).signing_secret(HMAC_SECRET, true),
        ))
        .unwrap();
    let url = rx.url(&format!(
        "/workflows/abc/triggers/manual/paths/invoke?{SECRET_QUERY}"
    ));
    let d = deployment(SIGNED_TLS, &pki);

    let mut leads = OWN_LEADS.to_string();
    if let Some(fx) = common::shared_fixtures() {
        let fixture = std::fs::read_to_string(fx.join("leads/https-payloads.jsonl")).unwrap();
        leads.push_str(&fixture);
    }
    std::fs::write(d.spool().join("drop.jsonl"), &leads).unwrap();
    let out = run(&d, &url, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Test leads are skipped by the default filter; every other lead arrives once, in the
    // marketplace's own shape.
    let expected: Vec<String> = records_of(&leads)
        .iter()
        .filter(|r| !r.to_string().contains("MSFT_TEST"))
        .map(|r| expected_body(r).to_string())
        .collect();
    let posts = rx.posts();
    let got: Vec<String> = posts
        .iter()
        .map(|p| p.json().unwrap().to_string())
        .collect();
    assert_eq!(sorted(got), sorted(expected.clone()));

    for p in &posts {
        assert_eq!(p.path, "/workflows/abc/triggers/manual/paths/invoke");
        assert_eq!(p.query.as_deref(), Some(SECRET_QUERY));
        // The receiver's check passed, and a receiver written from the README passes too.
        assert_eq!(p.signature, SignatureCheck::Valid);
        let ts = p.header("x-leadsync-timestamp").unwrap();
        let sig = p.header("x-leadsync-signature").unwrap();
        assert!(verify_signature(HMAC_SECRET.as_bytes(), ts, &p.body, sig));
        assert!(!verify_signature(b"wrong secret", ts, &p.body, sig));
        assert_eq!(p.header("idempotency-key").map(str::len), Some(32));
    }
    let keys: std::collections::HashSet<_> = posts
        .iter()
        .map(|p| p.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), posts.len());

    // The same leads dropped again: nothing new is sent.
    std::fs::write(d.spool().join("again.jsonl"), &leads).unwrap();
    let out = run(&d, &url, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rx.posts().len(), expected.len());
    let status = run(&d, &url, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let t = &status["targets"][0];
    assert_eq!(t["target"], "hook");
    assert_eq!(t["delivered"], expected.len() as u64);
    assert_eq!(t["pending"], 0);
    assert_eq!(t["dead"], 0);
}

#[test]
fn retry_after_is_waited_out_with_the_same_idempotency_key() {
    let rt = runtime();
    let pki = TestPki::generate().unwrap();
    let rx = rt
        .block_on(HttpsReceiver::start(ReceiverOptions::https(&pki)))
        .unwrap();
    rx.script([Reply::throttled("2")]);
    let url = rx.url("/hook");
    let d = deployment(SIGNED_TLS, &pki);
    let one = OWN_LEADS.lines().next().unwrap();
    std::fs::write(d.spool().join("one.jsonl"), format!("{one}\n")).unwrap();
    let out = run(&d, &url, &["sync", "--once", "--wait", "30s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let posts = rx.posts();
    assert_eq!(posts.len(), 2, "{}", text(&out));
    assert_eq!(posts[0].answered, 429);
    assert_eq!(posts[1].answered, 202);
    // Ordering, not a speed limit: the second try came no earlier than Retry-After allowed.
    let gap = posts[1].arrived.duration_since(posts[0].arrived);
    assert!(gap >= Duration::from_secs(2), "second try after {gap:?}");
    assert_eq!(
        posts[0].header("idempotency-key"),
        posts[1].header("idempotency-key")
    );
    assert_eq!(posts[0].body, posts[1].body);
    let status = run(&d, &url, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["targets"][0]["delivered"], 1);
}

#[test]
fn a_refused_lead_is_a_dead_letter_with_the_receivers_reason() {
    let rt = runtime();
    let pki = TestPki::generate().unwrap();
    let rx = rt
        .block_on(HttpsReceiver::start(ReceiverOptions::https(&pki)))
        .unwrap();
    rx.script([Reply::with_body(
        422,
        r#"{"error": "OfferTitle is not one of ours"}"#,
    )]);
    let url = rx.url("/hook");
    let d = deployment(SIGNED_TLS, &pki);
    let one = OWN_LEADS.lines().next().unwrap();
    std::fs::write(d.spool().join("one.jsonl"), format!("{one}\n")).unwrap();
    let out = run(&d, &url, &["sync", "--once", "--wait", "0s"]);
    // Exit 2: a delivery ended dead.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 dead"),
        "{}",
        text(&out)
    );
    let out = run(&d, &url, &["dead-letters", "list", "--json"]);
    let dead: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead[0]["target"], "hook");
    assert_eq!(dead[0]["error_code"], "http_422");
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("OfferTitle is not one of ours"),
        "{dead}"
    );
    assert_eq!(rx.posts().len(), 1);
}

#[test]
fn the_urls_query_string_is_in_no_log_line_at_any_level() {
    let rt = runtime();
    let pki = TestPki::generate().unwrap();
    let rx = rt
        .block_on(HttpsReceiver::start(ReceiverOptions::https(&pki)))
        .unwrap();
    // Failures of every kind, so the error paths log too: a 503, a redirect elsewhere, a
    // 400, then success.
    rx.script([
        Reply::with_body(503, "down"),
        Reply::redirect(&rx.other_host_url("/x?sig=SECRETSIG")),
        Reply::with_body(400, "bad"),
    ]);
    let url = rx.url(&format!("/hook?{SECRET_QUERY}"));
    let d = deployment(SIGNED_TLS, &pki);
    std::fs::write(d.spool().join("drop.jsonl"), OWN_LEADS).unwrap();
    let mut all = String::new();
    for args in [
        &["--log-level", "trace", "sync", "--once", "--wait", "10s"][..],
        &["--log-level", "trace", "check", "--connect"][..],
        &["--log-level", "trace", "status"][..],
        &["--log-level", "trace", "dead-letters", "list"][..],
    ] {
        let out = run(&d, &url, args);
        all.push_str(&text(&out));
    }
    assert!(all.contains("/hook"), "{all}");
    assert!(!all.contains("SECRETSIG"), "{all}");
    assert!(!all.contains("sig="), "{all}");
    assert!(!all.contains("api-version"), "{all}");

    // A TLS failure (CA not configured) does not leak it either.
    let d2 = deployment(
        "[connection]\nurl = { env = \"LEADSYNC_TEST_HOOK_URL\" }\n",
        &pki,
    );
    std::fs::write(d2.spool().join("drop.jsonl"), OWN_LEADS).unwrap();
    let mut all = String::new();
    for args in [
        &["--log-level", "trace", "sync", "--once", "--wait", "0s"][..],
        &["--log-level", "trace", "check", "--connect"][..],
    ] {
        let out = run(&d2, &url, args);
        all.push_str(&text(&out));
    }
    assert!(all.to_lowercase().contains("certificate"), "{all}");
    assert!(!all.contains("SECRETSIG"), "{all}");
}

#[test]
fn check_connect_verifies_tls_and_names_the_endpoint_without_its_query() {
    let rt = runtime();
    let pki = TestPki::generate().unwrap();
    let rx = rt
        .block_on(HttpsReceiver::start(ReceiverOptions::https(&pki)))
        .unwrap();
    let url = rx.url(&format!("/hook?{SECRET_QUERY}"));
    let d = deployment(SIGNED_TLS, &pki);
    let out = run(&d, &url, &["check", "--connect"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("TLS verified"), "{all}");
    assert!(!all.contains("SECRETSIG"), "{all}");
    // OPTIONS only: no lead was sent.
    assert!(rx.posts().is_empty());

    // The marketplace body takes no mapping: saying otherwise is a configuration error.
    let d = deployment(
        &format!("{SIGNED_TLS}\n[mapping.fields]\nFirstName = \"first_name\"\n"),
        &pki,
    );
    let out = run(&d, &url, &["check"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("mapping.fields"), "{}", text(&out));
}

#[test]
fn the_shipped_example_target_loads() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/targets/https.toml");
    let pki = TestPki::generate().unwrap();
    let d = deployment("", &pki);
    let targets = d.root().join("config/targets");
    std::fs::remove_file(targets.join("hook.toml")).unwrap();
    std::fs::copy(&example, targets.join("https.toml")).unwrap();
    let out = d
        .command()
        .env(
            "LEADSYNC_HTTPS_URL",
            "https://prod-00.westus.logic.azure.com/workflows/x/triggers/manual/paths/invoke?sig=SECRETSIG",
        )
        .env("LEADSYNC_HTTPS_SIGNING_SECRET", "s")
        .env("LEADSYNC_HTTPS_TOKEN", "t")
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("SECRETSIG"), "{}", text(&out));
}
