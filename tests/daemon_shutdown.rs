//! SIGTERM while a push is in flight to a slow CRM: the daemon stops scheduling, lets the
//! request finish, records its outcome and exits 0; nothing is lost and nothing is sent
//! twice (a rerun sends only what was never sent).

mod common;
use common::{text, Deployment};
use leadsync_fakes::https_receiver::{HttpsReceiver, ReceiverOptions};
use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_during_a_slow_push_exits_0_and_loses_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let receiver = rt
        .block_on(HttpsReceiver::start(ReceiverOptions::http()))
        .unwrap();
    receiver.set_latency(Duration::from_secs(2));
    let url = receiver.url("/leads");

    let d = Deployment::with_target("");
    let targets = d.root().join("config/targets");
    std::fs::remove_file(targets.join("csv.toml")).unwrap();
    std::fs::write(
        targets.join("hook.toml"),
        format!("kind = \"https\"\nschedule = \"*/1 * * * * *\"\n[limits]\nbatch_size = 1\nconcurrency = 2\n[connection]\nurl = \"{url}\"\nallow_http = true\n"),
    )
    .unwrap();
    let mut f = std::fs::File::create(d.spool().join(".drop.jsonl")).unwrap();
    for i in 0..6 {
        writeln!(f, r#"{{"UserDetails": {{"FirstName": "P{i}", "Email": "p{i}@example.com"}}, "LeadSource": "SPZA", "ActionCode": "PLT", "OfferTitle": "Contoso"}}"#).unwrap();
    }
    drop(f);

    let child = d
        .command()
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::rename(d.spool().join(".drop.jsonl"), d.spool().join("drop.jsonl")).unwrap();
    let start = Instant::now();
    while receiver.request_count() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no request reached the receiver"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A request is in flight (the receiver holds it for 2 s): stop the daemon now.
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sent_before_stop = receiver.posts().len();
    assert!(
        (1..6).contains(&sent_before_stop),
        "sent {sent_before_stop} before stopping"
    );

    // What the stopped daemon recorded: the in-flight leads delivered, the rest pending.
    let status = d.status_json();
    let t = &status["targets"][0];
    assert_eq!(
        t["delivered"].as_u64().unwrap() as usize,
        sent_before_stop,
        "{status}"
    );
    assert_eq!(
        t["pending"].as_u64().unwrap() as usize,
        6 - sent_before_stop,
        "{status}"
    );

    // A rerun sends the rest, and only the rest.
    receiver.set_latency(Duration::ZERO);
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for p in receiver.posts() {
        *per_key
            .entry(p.header("idempotency-key").unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_key.len(), 6, "every lead arrived");
    assert!(
        per_key.values().all(|n| *n == 1),
        "a lead was sent twice: {per_key:?}"
    );
    assert_eq!(d.status_json()["targets"][0]["delivered"], 6);
}
