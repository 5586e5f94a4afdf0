//! SIGKILL during `sync --once`, then reruns: every lead exactly once in the output, none
//! missing. Once with 10,000 generated leads into a CSV file, once with 2,000 into the
//! Marketo and HubSpot fakes at once (requests in flight when the process dies). Rounds:
//! `LEADSYNC_CRASH_ROUNDS` (default 4); the kill moments come from `LEADSYNC_CRASH_SEED`
//! (default 20261124), printed for reproduction.

mod common;
use common::{text, Deployment};
use leadsync_fakes::hubspot::{HubSpotFake, HubSpotFakeConfig};
use leadsync_fakes::marketo::{MarketoFake, MarketoFakeConfig};
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

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_backlog(d: &Deployment, leads: usize) {
    let mut f = std::fs::File::create(d.spool().join("backlog.jsonl")).unwrap();
    for i in 0..leads {
        writeln!(
            f,
            r#"{{"UserDetails": {{"FirstName": "P{i}", "Email": "p{i}@example.com"}}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Offer {o}", "Description": "lead number {i}"}}"#,
            o = i % 7
        )
        .unwrap();
    }
}

/// `rounds` runs of `sync --once --wait 0s`, each SIGKILLed at a seeded moment (or let
/// finish if it is done first); `progress` says what has arrived so far. Returns how many
/// were killed.
fn kill_rounds(d: &Deployment, envs: &[(&str, String)], progress: &dyn Fn() -> String) -> usize {
    let rounds = env_num("LEADSYNC_CRASH_ROUNDS", 4) as usize;
    let seed = env_num("LEADSYNC_CRASH_SEED", 20261124);
    eprintln!("crash test: {rounds} kill rounds, seed {seed}");
    let mut rng = Rng(seed.max(1));
    let mut killed = 0;
    for round in 0..rounds {
        let delay = Duration::from_millis(30 + rng.next() % 1200);
        let mut child = d
            .command()
            .args(["sync", "--once", "--wait", "0s"])
            .envs(envs.iter().map(|(k, v)| (k, v)))
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
                eprintln!("round {round}: SIGKILL after {delay:?}, {}", progress());
            }
        }
    }
    eprintln!("killed {killed} of {rounds} rounds");
    killed
}

#[test]
fn sigkill_mid_sync_loses_and_duplicates_nothing() {
    let d = Deployment::new();
    write_backlog(&d, LEADS);
    // The CSV may end in a row torn by the kill (the next run cuts it off), so count lines
    // rather than parse it.
    let lines = || {
        let n = std::fs::read_to_string(d.csv()).map_or(0, |t| t.lines().count());
        format!("{n} lines so far")
    };
    kill_rounds(&d, &[], &lines);
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

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

/// The same over two CRM targets whose requests are in flight when the process dies:
/// Marketo (looked up by e-mail) and HubSpot (matched on e-mail), 30 ms per call, small
/// batches, two calls at once each. Afterwards each fake holds exactly one record per lead.
#[test]
fn sigkill_mid_sync_over_marketo_and_hubspot_loses_and_duplicates_nothing() {
    const N: usize = 2_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Limits raised: this test is about crashes, the pacers have tests of their own, and a
    // killed process's pacer forgets the calls it made.
    let (mkto, hs) = rt.block_on(async {
        let m = MarketoFake::start(MarketoFakeConfig {
            calls_per_window: 10_000,
            max_concurrent: 100,
            ..MarketoFakeConfig::default()
        })
        .await
        .unwrap();
        let h = HubSpotFake::start(HubSpotFakeConfig {
            burst_max: 10_000,
            ..HubSpotFakeConfig::default()
        })
        .await
        .unwrap();
        (m, h)
    });
    mkto.set_latency(Duration::from_millis(30));
    hs.set_latency(Duration::from_millis(30));
    let mc = MarketoFakeConfig::default();
    let d = Deployment::with_target(&format!(
        r#"
name = "marketo"
kind = "marketo"
[connection]
endpoint = "{url}"
client_id = "{id}"
client_secret = {{ env = "CRASH_MKTO_SECRET" }}
calls_per_window = 5000
window = "20s"
[limits]
batch_size = 20
concurrency = 2
"#,
        url = mkto.base_url(),
        id = mc.client_id,
    ));
    std::fs::write(
        d.root().join("config/targets/hubspot.toml"),
        format!(
            r#"
kind = "hubspot"
[connection]
base_url = "{url}"
access_token = {{ env = "CRASH_HS_TOKEN" }}
calls_per_window = 5000
[limits]
batch_size = 20
concurrency = 2
"#,
            url = hs.base_url()
        ),
    )
    .unwrap();
    write_backlog(&d, N);
    let envs = [
        ("CRASH_MKTO_SECRET", mc.client_secret.clone()),
        ("CRASH_HS_TOKEN", HubSpotFakeConfig::default().token),
    ];
    let stored = || {
        format!(
            "{} Marketo leads, {} HubSpot contacts so far",
            mkto.leads().len(),
            hs.contacts().len()
        )
    };
    kill_rounds(&d, &envs, &stored);
    let mut cmd = d.command();
    cmd.args(["sync", "--once"])
        .envs(envs.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let count = |names: Vec<Option<String>>, what: &str| {
        let mut per_lead: HashMap<String, usize> = HashMap::new();
        for n in names {
            *per_lead.entry(n.unwrap_or_default()).or_default() += 1;
        }
        let missing = (0..N)
            .filter(|i| !per_lead.contains_key(&format!("P{i}")))
            .count();
        let doubled = per_lead.values().filter(|n| **n > 1).count();
        assert_eq!((missing, doubled), (0, 0), "{what}: missing, duplicated");
        assert_eq!(per_lead.len(), N, "{what}");
    };
    count(
        mkto.leads()
            .iter()
            .map(|l| l.get_str("firstName").map(str::to_string))
            .collect(),
        "marketo",
    );
    count(
        hs.contacts()
            .iter()
            .map(|c| c.get_str("firstname").map(str::to_string))
            .collect(),
        "hubspot",
    );
    let status = d.status_json();
    for t in status["targets"].as_array().unwrap() {
        assert_eq!(t["delivered"], N as u64, "{status}");
        assert_eq!(t["pending"], 0, "{status}");
    }
}
