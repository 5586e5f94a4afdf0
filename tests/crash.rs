//! SIGKILL during `sync --once` of 10,000 generated leads, then reruns: every lead exactly
//! once in the output, none missing. Rounds: `LEADSYNC_CRASH_ROUNDS` (default 4); the kill
//! moments come from `LEADSYNC_CRASH_SEED` (default 20261124), printed for reproduction.

mod common;
use common::{text, Deployment};
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

const LEADS: usize = 10_000;

/// A small deterministic generator (xorshift), so a failing seed can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_mid_sync_loses_and_duplicates_nothing() {
    let rounds: usize = std::env::var("LEADSYNC_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("LEADSYNC_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261124);
    eprintln!("crash test: {LEADS} leads, {rounds} kill rounds, seed {seed}");
    let d = Deployment::new();
    let mut f = std::fs::File::create(d.spool().join("backlog.jsonl")).unwrap();
    for i in 0..LEADS {
        writeln!(
            f,
            r#"{{"UserDetails": {{"FirstName": "P{i}", "Email": "p{i}@example.com"}}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Offer {o}", "Description": "lead number {i}"}}"#,
            o = i % 7
        )
        .unwrap();
    }
    drop(f);

    let mut rng = Rng(seed.max(1));
    let mut killed = 0;
    for round in 0..rounds {
        let delay = Duration::from_millis(30 + rng.next() % 1200);
        let mut child = d
            .command()
            .args(["sync", "--once", "--wait", "0s"])
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        match child.try_wait().unwrap() {
            Some(status) => {
                eprintln!("round {round}: finished before the kill at {delay:?} ({status})")
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed += 1;
                // The CSV may end in a row torn by the kill (the next run cuts it off), so
                // count lines here rather than parse it.
                let lines = std::fs::read_to_string(d.csv())
                    .map(|t| t.lines().count())
                    .unwrap_or(0);
                eprintln!("round {round}: SIGKILL after {delay:?}, {lines} lines so far");
            }
        }
    }
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    eprintln!("killed {killed} of {rounds} rounds");

    let rows = d.csv_rows();
    let mut per_lead: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *per_lead.entry(r["First Name"].clone()).or_default() += 1;
    }
    let missing: Vec<usize> = (0..LEADS)
        .filter(|i| !per_lead.contains_key(&format!("P{i}")))
        .collect();
    let duplicated: Vec<_> = per_lead.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{} leads missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        duplicated.is_empty(),
        "{} leads duplicated, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    assert_eq!(rows.len(), LEADS);
    let status = d.status_json();
    assert_eq!(status["targets"][0]["delivered"], LEADS as u64);
    assert_eq!(status["targets"][0]["pending"], 0);
    assert_eq!(status["leads"], LEADS as u64);
}
