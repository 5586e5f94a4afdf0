//! The `https_inbox` source under a running `leadsync run`: the marketplace's bodies (both
//! casings, the test lead, a tolerated and a rejected one) reach a file target and an HTTPS
//! fake once each; wrong secrets, oversized bodies, a slow-loris client and a flood are each
//! answered without blocking others; a SIGKILL while POSTs are in flight loses no lead that
//! was answered 200; TLS and a secret rotated by SIGHUP.

mod common;
use common::{eventually, free_port, Daemon, Deployment};

use leadsync_fakes::https_receiver::{HttpsReceiver, ReceiverOptions, TestPki};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SECRET: &str = "inbox-secret-0123456789abcdef";

/// A deployment whose only source is an inbox on `port` (`extra` appended to its table),
/// with a JSONL file target and, when given, an HTTPS target at `hook`.
fn deployment(port: u16, extra: &str, hook: Option<&str>) -> Deployment {
    let d = Deployment::with_sources(
        &format!(
            r#"
[sources.marketplace]
kind = "https_inbox"
listen = "127.0.0.1:{port}"
path = "/leads"
secret = "{SECRET}"
{extra}
"#
        ),
        r#"
kind = "file"
schedule = "0 0 0 1 1 *"
[connection]
path = "../../out/leads.jsonl"
format = "jsonl"
"#,
    );
    if let Some(hook) = hook {
        std::fs::write(
            d.root().join("config/targets/hook.toml"),
            format!(
                r#"
kind = "https"
schedule = "0 0 0 1 1 *"
[connection]
url = "{hook}"
allow_http = true
"#
            ),
        )
        .unwrap();
    }
    d
}

fn start(d: &Deployment, port: u16) -> Daemon {
    let daemon = Daemon::spawn({
        let mut c = d.command();
        c.arg("run");
        c
    });
    eventually(Duration::from_secs(60), "the inbox listening", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    daemon
}

fn url(port: u16, secret: &str) -> String {
    format!("http://127.0.0.1:{port}/leads/{secret}")
}

async fn post(client: &reqwest::Client, url: &str, body: &str) -> (u16, String) {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// The keys of the file target's rows (each once per line written).
fn file_keys(d: &Deployment) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(d.root().join("out/leads.jsonl")) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("row is JSON");
            v["leadsync_key"].as_str().expect("key").to_string()
        })
        .collect()
}

fn lead(i: usize) -> String {
    format!(
        r#"{{"UserDetails": {{"FirstName": "P{i}", "LastName": "L", "Email": "p{i}@example.com", "Company": "C"}}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Offer", "Description": "lead {i}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_leads_reach_every_target_once_and_bad_bodies_are_refused() {
    let hook = HttpsReceiver::start(ReceiverOptions::http()).await.unwrap();
    let port = free_port();
    let d = deployment(port, "", Some(&hook.url("/hook")));
    let daemon = start(&d, port);
    let client = reqwest::Client::new();
    let at = url(port, SECRET);

    // The documented sample (UserDetails), the FAQ's test lead (userDetails), a tolerated
    // body (phone as a number), an array of two, and the first one again.
    let doc = r#"{"UserDetails": {"FirstName": "Some", "LastName": "One", "Email": "someone@contoso.com", "Phone": "16175555555", "Country": "USA", "Company": "Contoso", "Title": "Esquire"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Test Microsoft", "Description": "Test run through Power Automate"}"#;
    let test_lead = r#"{"userDetails": {"FirstName": "MSFT_TEST_636573304831318844", "LastName": "MSFT_TEST_636573304831318844", "Email": "MSFT_TEST_636573304831318844@test.com", "Phone": "1234567890", "Country": "US", "Company": "MSFT_TEST_636573304831318844", "Title": "MSFT_TEST_636573304831318844"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso Test", "Description": "MSFT_TEST_636573304831318844"}"#;
    let tolerated = r#"{"UserDetails": {"FirstName": "Num", "Email": "num@example.com", "Phone": 4255550100}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "T"}"#;
    let pair = format!("[{}, {}]", lead(1), lead(2));
    for body in [doc, test_lead, tolerated, pair.as_str(), doc] {
        let (status, answer) = post(&client, &at, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    // The same lead POSTed by 10 clients at once (one group commit, or several): one lead.
    let same = lead(7);
    let concurrent: Vec<_> = (0..10)
        .map(|_| {
            let (client, at, body) = (client.clone(), at.clone(), same.clone());
            tokio::spawn(async move { post(&client, &at, &body).await.0 })
        })
        .collect();
    for c in concurrent {
        assert_eq!(c.await.unwrap(), 200);
    }
    // A body that is not a lead, and one that is not JSON: 400 with a reason, quarantined.
    let (status, answer) = post(&client, &at, "[1, 2]").await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("item 1: ") && answer.contains("item 2: "),
        "{answer}"
    );
    let (status, answer) = post(&client, &at, "this is not json").await;
    assert_eq!(status, 400);
    assert!(answer.contains("not JSON"), "{answer}");

    // 6 distinct leads stored (the repeated ones once); the test lead is skipped by the
    // default filter: 5 delivered to each target, once. 3 records quarantined.
    eventually(Duration::from_secs(30), "5 leads in the file", || {
        file_keys(&d).len() >= 5
    });
    eventually(Duration::from_secs(30), "5 leads at the hook", || {
        hook.posts().len() >= 5
    });
    std::thread::sleep(Duration::from_millis(500));
    let keys = file_keys(&d);
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 5);
    assert_eq!(hook.posts().len(), 5);
    let status = d.status_json();
    assert_eq!(status["leads"], 6, "{status}");
    assert_eq!(status["quarantined"], 3, "{status}");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_oversized_slow_and_flooding_clients_are_answered_and_block_no_one() {
    let port = free_port();
    let d = deployment(port, "max_body_bytes = 4096\nrate_limit = 5", None);
    let daemon = start(&d, port);
    let client = reqwest::Client::new();

    // A slow-loris client: headers trickling in, never finished.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"POST /leads/").unwrap();
    let slow_started = Instant::now();

    let (status, _) = post(&client, &url(port, "wrong-secret-0123456789abc"), &lead(1)).await;
    assert_eq!(status, 404);
    let (status, _) = post(&client, &format!("http://127.0.0.1:{port}/leads"), &lead(1)).await;
    assert_eq!(status, 404, "no secret at all");
    let big = format!(
        r#"{{"UserDetails": {{"Email": "big@example.com"}}, "Description": "{}"}}"#,
        "x".repeat(10_000)
    );
    let (status, _) = post(&client, &url(port, SECRET), &big).await;
    assert_eq!(status, 413);

    // A flood from another address: some throttled with Retry-After, none stored.
    let flooder = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let mut throttled = 0;
    for _ in 0..40 {
        let r = flooder
            .post(url(port, "guess-0123456789abcdefgh"))
            .body(lead(2))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            throttled += 1;
        } else {
            assert_eq!(r.status().as_u16(), 404);
        }
    }
    assert!(throttled >= 25, "only {throttled} of 40 throttled");

    // Meanwhile a good client is served at once.
    let (status, answer) = post(&client, &url(port, SECRET), &lead(3)).await;
    assert_eq!(status, 200, "{answer}");
    slow.write_all(b"x").unwrap();

    // The slow client is cut off by the header timeout (10 s), not served forever.
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        slow_started.elapsed() < Duration::from_secs(25),
        "the slow client was held {:?}",
        slow_started.elapsed()
    );

    let status = d.status_json();
    assert_eq!(status["leads"], 1, "only the good POST stored: {status}");
    let log = daemon.log();
    // Some 17 wrong or missing secrets, one WARN line a minute at most (this test may run
    // past a minute on a loaded machine).
    let secret_lines = log.matches("wrong or missing secret").count();
    assert!(
        (1..=2).contains(&secret_lines),
        "{secret_lines} lines: {log}"
    );
    // The peer is shown as its network, never its address.
    for line in log
        .lines()
        .filter(|l| l.contains("wrong or missing secret"))
    {
        assert!(
            line.contains("127.0.0.0/24") && !line.contains("127.0.0.1"),
            "{line}"
        );
    }
    assert!(!log.contains("wrong-secret-0123456789abc") && !log.contains("guess-0123456789"));
    assert!(!log.contains(SECRET), "the secret reached the log");
    assert!(
        !log.contains("p3@example.com"),
        "personal data reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_posting_loses_no_lead_that_was_answered_200() {
    const LEADS: usize = 300;
    let port = free_port();
    let d = deployment(port, "rate_limit = 0", None);
    let mut daemon = start(&d, port);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // 16 clients POST their share; the daemon is SIGKILLed after about 100 answers.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (client, acked, at) = (client.clone(), acked.clone(), url(port, SECRET));
        clients.push(tokio::spawn(async move {
            for i in (c..LEADS).step_by(16) {
                let sent = client.post(&at).body(lead(i)).send().await;
                match sent {
                    Ok(r) if r.status().as_u16() == 200 => {
                        acked.lock().unwrap().insert(i);
                    }
                    _ => return,
                }
            }
        }));
    }
    eventually(Duration::from_secs(60), "100 answers", || {
        acked.lock().unwrap().len() >= 100
    });
    daemon.kill();
    for c in clients {
        let _ = c.await;
    }
    let acked: HashSet<usize> = acked.lock().unwrap().clone();
    assert!(
        acked.len() < LEADS,
        "everything was answered before the kill"
    );

    // Restarted, the clients send again what had no answer, and some that had (a client
    // cannot know a lost answer from a lost request): each lead is stored once.
    let daemon = start(&d, port);
    for i in 0..LEADS {
        if !acked.contains(&i) || i % 10 == 0 {
            let (status, answer) = post(&client, &url(port, SECRET), &lead(i)).await;
            assert_eq!(status, 200, "{answer}");
        }
    }
    let status = d.status_json();
    assert_eq!(status["leads"], LEADS as u64, "{status}");
    // Push what was staged (the file target's schedule is far away; staging pushes at once).
    eventually(Duration::from_secs(60), "every lead in the file", || {
        file_keys(&d).len() >= LEADS
    });
    let keys = file_keys(&d);
    assert_eq!(keys.len(), LEADS);
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), LEADS);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_a_secret_rotated_by_sighup() {
    let pki = TestPki::generate().unwrap();
    let port = free_port();
    let d = deployment(port, "", None);
    let tls_dir = d.root().join("config");
    std::fs::write(tls_dir.join("inbox.crt"), &pki.server_cert_pem).unwrap();
    std::fs::write(tls_dir.join("inbox.key"), &pki.server_key_pem).unwrap();
    let config = std::fs::read_to_string(d.config()).unwrap();
    let with_tls = config.replace(
        "path = \"/leads\"",
        "path = \"/leads\"\ntls_cert = \"inbox.crt\"\ntls_key = \"inbox.key\"",
    );
    std::fs::write(d.config(), &with_tls).unwrap();
    let daemon = start(&d, port);
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let https = |secret: &str| format!("https://127.0.0.1:{port}/leads/{secret}");
    let (status, answer) = post(&client, &https(SECRET), &lead(1)).await;
    assert_eq!(status, 200, "{answer}");
    // Plain HTTP to a TLS listener is not served.
    assert!(reqwest::Client::new()
        .post(url(port, SECRET))
        .body(lead(2))
        .send()
        .await
        .is_err());

    // Rotate: new and old both accepted, then only the new one.
    let next = "next-secret-0123456789abcdef";
    let both = with_tls.replace(
        &format!("secret = \"{SECRET}\""),
        &format!("secret = \"{next} {SECRET}\""),
    );
    std::fs::write(d.config(), &both).unwrap();
    let pid = daemon.id();
    let hup = || {
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success())
    };
    hup();
    let mut rotated = false;
    for _ in 0..50 {
        if post(&client, &https(next), &lead(3)).await.0 == 200 {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "the new secret was not taken on SIGHUP");
    assert_eq!(post(&client, &https(SECRET), &lead(4)).await.0, 200);
    let only_new = with_tls.replace(
        &format!("secret = \"{SECRET}\""),
        &format!("secret = \"{next}\""),
    );
    std::fs::write(d.config(), &only_new).unwrap();
    hup();
    let (mut retired, mut taken_before) = (false, 0);
    for _ in 0..50 {
        match post(&client, &https(SECRET), &lead(5)).await.0 {
            404 => {
                retired = true;
                break;
            }
            _ => taken_before = 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(retired, "the old secret still works after rotation");
    // lead 5 is stored if the old secret was still taken before the reload.
    assert_eq!(d.status_json()["leads"], 3 + taken_before);
    drop(daemon);
}

#[test]
fn check_refuses_plain_http_off_loopback_and_short_secrets() {
    let port = free_port();
    let d = deployment(port, "", None);
    let out = d.run(&["check"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("listens on http://127.0.0.1"));

    let config = std::fs::read_to_string(d.config()).unwrap();
    std::fs::write(d.config(), config.replace("127.0.0.1:", "0.0.0.0:")).unwrap();
    let out = d.run(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sources.marketplace.listen") && err.contains("plain_http"),
        "{err}"
    );

    std::fs::write(d.config(), config.replace(SECRET, "short")).unwrap();
    let out = d.run(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`secret`") && !err.contains("short\""),
        "{err}"
    );
}

#[test]
fn the_example_configuration_loads_and_checks_with_real_files() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples/leadsync-inbox.toml");
    let empty = tempfile::tempdir().unwrap();
    let s = leadsync::config::load_with_env(
        &example,
        &leadsync::registry::known_kinds(),
        vec![(
            "LEADSYNC_TARGETS_DIR".to_string(),
            empty.path().display().to_string(),
        )],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let leadsync::config::SourceKind::HttpsInbox(inbox) = &s.sources[0].kind else {
        panic!("{:?}", s.sources[0].kind);
    };
    assert_eq!(inbox.path, "/leads");
    assert_eq!((inbox.max_body_bytes, inbox.rate_limit), (1 << 20, 20));
    // With a certificate, key and secret where the example points, the listener checks out.
    let pki = TestPki::generate().unwrap();
    let dir = empty.path();
    std::fs::write(dir.join("inbox.crt"), &pki.server_cert_pem).unwrap();
    std::fs::write(dir.join("inbox.key"), &pki.server_key_pem).unwrap();
    let mut inbox = inbox.clone();
    inbox.tls = Some(leadsync::config::InboxTls {
        cert: dir.join("inbox.crt"),
        key: dir.join("inbox.key"),
    });
    inbox.secret = leadsync_core::SecretRef::Inline(SECRET.into());
    let line = leadsync::inbox::check("marketplace", &inbox, dir).unwrap();
    assert!(
        line.contains("https://0.0.0.0:8443/leads/<secret>"),
        "{line}"
    );
    // A key that does not match is named.
    std::fs::write(
        dir.join("inbox.key"),
        TestPki::generate().unwrap().server_key_pem,
    )
    .unwrap();
    let e = leadsync::inbox::check("marketplace", &inbox, dir).unwrap_err();
    assert!(e.contains("inbox.key"), "{e}");
}
