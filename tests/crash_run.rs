//! SIGKILL of the `leadsync run` daemon at seeded random moments while it stages and pushes
//! thousands of leads to an HTTPS receiver (the fake stores one record per
//! `Idempotency-Key`, as an idempotent endpoint does), restarted until everything is
//! delivered. Then: 0 leads lost, 0 duplicated in the CRM, every spool file processed, and
//! the ledger agrees (`status --json`, `trace --json`).
//!
//! `tests/crash.rs` does the same to `sync --once` with a file target; this one kills the
//! daemon, with its schedules, immediate pushes after a pull and concurrent batches.
//! Rounds: `LEADSYNC_CRASH_ROUNDS` (default 6); seed: `LEADSYNC_CRASH_SEED` (default
//! 20261201); leads: `LEADSYNC_CRASH_LEADS` (default 3000). All printed.

mod common;
use common::{text, Deployment};
use leadsync_fakes::https_receiver::{HttpsReceiver, ReceiverOptions};
use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const FILES: usize = 6;

fn spawn_daemon(d: &Deployment, url: &str) -> Child {
    d.command()
        .arg("run")
        .env("CRASH_HOOK_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start leadsync run")
}

fn status(d: &Deployment, url: &str) -> serde_json::Value {
    let out = d
        .command()
        .args(["status", "--json"])
        .env("CRASH_HOOK_URL", url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn spool_files_left(d: &Deployment) -> usize {
    std::fs::read_dir(d.spool())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .count()
}

#[test]
fn sigkill_of_the_daemon_loses_and_duplicates_nothing() {
    let rounds = env_num("LEADSYNC_CRASH_ROUNDS", 6) as usize;
    let seed = env_num("LEADSYNC_CRASH_SEED", 20261201);
    let leads = env_num("LEADSYNC_CRASH_LEADS", 3000) as usize;
    eprintln!(
        "daemon crash test: {leads} leads in {FILES} files, {rounds} kill rounds, seed {seed}"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rx = rt
        .block_on(HttpsReceiver::start(ReceiverOptions::http().return_id()))
        .unwrap();
    // A little latency per request, so that a kill lands mid-push rather than after it.
    rx.set_latency(Duration::from_millis(2));
    let url = rx.url("/hook");

    let d = Deployment::with_target(
        r#"
kind = "https"
schedule = "*/1 * * * * *"
[connection]
url = { env = "CRASH_HOOK_URL" }
allow_http = true
extended = true
[limits]
batch_size = 25
concurrency = 4
[retry]
min_delay = "20ms"
max_delay = "200ms"
"#,
    );
    for f in 0..FILES {
        let mut file = std::fs::File::create(d.spool().join(format!("drop-{f}.jsonl"))).unwrap();
        for i in (f..leads).step_by(FILES) {
            writeln!(
                file,
                "{}",
                serde_json::json!({
                    "UserDetails": {"FirstName": format!("P{i}"), "Email": format!("p{i}@example.com")},
                    "LeadSource": "AzureMarketplace", "ActionCode": "INS",
                    "OfferTitle": format!("Offer {}", i % 7), "Description": format!("lead number {i}")
                })
            )
            .unwrap();
        }
    }

    let mut rng = Rng(seed.max(1));
    let mut killed = 0;
    for round in 0..rounds {
        let delay = Duration::from_millis(150 + rng.next() % 2500);
        let mut child = spawn_daemon(&d, &url);
        std::thread::sleep(delay);
        if let Some(status) = child.try_wait().unwrap() {
            panic!("round {round}: the daemon exited by itself ({status})");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        killed += 1;
        eprintln!(
            "round {round}: SIGKILL after {delay:?}: {} stored, {} POSTs, {} spool files left",
            rx.stored().len(),
            rx.posts().len(),
            spool_files_left(&d)
        );
    }

    // A last run, left to finish.
    let mut child = spawn_daemon(&d, &url);
    let deadline = Instant::now() + Duration::from_secs(120);
    let last = loop {
        let s = status(&d, &url);
        let done = s["leads"] == leads as u64
            && s["targets"][0]["pending"] == 0
            && spool_files_left(&d) == 0;
        if done || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // The CRM: one record per key, every lead once.
    let stored = rx.stored();
    let mut per_lead: HashMap<usize, usize> = HashMap::new();
    for s in &stored {
        let desc = s.body["Description"].as_str().unwrap();
        let i: usize = desc.trim_start_matches("lead number ").parse().unwrap();
        *per_lead.entry(i).or_default() += 1;
    }
    let missing: Vec<_> = (0..leads).filter(|i| !per_lead.contains_key(i)).collect();
    let duplicated: Vec<_> = per_lead.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: {} leads lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        duplicated.is_empty(),
        "seed {seed}: {} leads stored twice, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    assert_eq!(stored.len(), leads);

    // The ledger: every lead staged once, delivered, nothing dead or quarantined.
    assert_eq!(last["leads"], leads as u64, "{last}");
    assert_eq!(last["targets"][0]["delivered"], leads as u64, "{last}");
    assert_eq!(last["targets"][0]["pending"], 0, "{last}");
    assert_eq!(last["targets"][0]["dead"], 0, "{last}");
    assert_eq!(spool_files_left(&d), 0, "every file processed");
    let rejected = d.spool().join("rejected");
    assert!(
        !rejected.exists() || std::fs::read_dir(&rejected).unwrap().next().is_none(),
        "nothing quarantined"
    );
    // And per lead, for a sample: the ledger's CRM reference is the receiver's record.
    for s in stored.iter().step_by((leads / 20).max(1)) {
        let lead = s.body["Leadsync"]["LeadId"].as_str().unwrap();
        let out = d
            .command()
            .args(["trace", lead, "--json"])
            .env("CRASH_HOOK_URL", &url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let del = &t["deliveries"][0];
        assert_eq!(del["state"], "delivered", "{t}");
        assert_eq!(
            del["idempotency_key"].as_str(),
            s.idempotency_key.as_deref(),
            "{t}"
        );
        let crm_ref = del["crm_ref"].as_str().unwrap_or_default();
        assert!(
            crm_ref.ends_with(&format!("/{}", s.id)) || crm_ref == s.id,
            "{t}"
        );
    }
    let posts = rx.posts().len();
    eprintln!(
        "daemon crash test: seed {seed}: killed {killed} of {rounds} rounds; {leads} leads, \
         0 lost, 0 duplicated; {posts} POSTs ({} re-sent after a crash, stored once)",
        posts - leads
    );
}
