//! Instance identity, through the real binary: processes started at the same moment never
//! name themselves alike, not even two that share a host name and a pid (two PID
//! namespaces, as two containers or two cloned machines would); the host part is the
//! gethostname(2) name, never `localhost` when the host has one; and two daemons on one
//! PostgreSQL ledger show up in `status` with their own id, host, pid, version and start time.
//!
//! The PostgreSQL test skips loudly without the server (fails under
//! `LEADSYNC_REQUIRE_SERVICES=1`); the PID-namespace test skips loudly where `unshare` is not
//! permitted.

mod common;
use common::{pg_or_skip, pg_url, text};

use std::collections::HashSet;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

fn leadsync() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_leadsync"));
    c.env_remove("LEADSYNC_CONFIG");
    c
}

/// What gethostname(2) says, as the id carries it.
fn host_name() -> String {
    gethostname::gethostname()
        .to_string_lossy()
        .trim()
        .to_string()
}

/// `id` is `<host>:<pid>:<six lower-case hex digits>`.
fn assert_id_shape(id: &str, host: &str, pid: u32) {
    let prefix = format!("{host}:{pid}:");
    let nonce = id.strip_prefix(&prefix).unwrap_or_else(|| {
        panic!("{id:?} does not start with {prefix:?}");
    });
    assert!(
        nonce.len() == 6 && nonce.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{id:?}: the nonce is not six hex digits"
    );
    if host != "localhost" && !host.is_empty() {
        assert!(!id.contains("localhost"), "{id:?} names localhost");
    }
}

/// Start every command at once, then collect each one's output.
fn run_together(commands: Vec<Command>) -> Vec<(u32, Output)> {
    let children: Vec<Child> = commands
        .into_iter()
        .map(|mut c| {
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    children
        .into_iter()
        .map(|c| (c.id(), c.wait_with_output().expect("wait")))
        .collect()
}

fn printed_id(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn processes_started_together_never_share_an_id() {
    let host = host_name();
    let runs = run_together(
        (0..8)
            .map(|_| {
                let mut c = leadsync();
                c.arg("instance-id");
                c
            })
            .collect(),
    );
    let mut ids = HashSet::new();
    for (pid, out) in &runs {
        let id = printed_id(out);
        assert_id_shape(&id, &host, *pid);
        assert!(ids.insert(id.clone()), "{id} reported twice");
    }
}

#[test]
fn same_host_and_same_pid_still_differ() {
    // Each process is pid 1 of a PID namespace of its own, on the same host.
    let in_namespace = || {
        let mut c = Command::new("unshare");
        c.args(["--user", "--map-root-user", "--pid", "--fork", "--"])
            .arg(env!("CARGO_BIN_EXE_leadsync"))
            .arg("instance-id")
            .env_remove("LEADSYNC_CONFIG");
        c
    };
    let runs = run_together(vec![in_namespace(), in_namespace()]);
    if runs.iter().any(|(_, out)| !out.status.success()) {
        leadsync_fakes::announce_skip(&format!(
            "same_host_and_same_pid_still_differ: unshare --user --pid is not permitted here \
             ({}); the nonce is covered by processes_started_together_never_share_an_id",
            String::from_utf8_lossy(&runs[0].1.stderr).trim()
        ));
        return;
    }
    let host = host_name();
    let ids: Vec<String> = runs.iter().map(|(_, out)| printed_id(out)).collect();
    for id in &ids {
        assert_id_shape(id, &host, 1);
    }
    assert_ne!(
        ids[0], ids[1],
        "two pid-1 processes on one host share an id"
    );
}

/// One `leadsync run` deployment on a schema of its own; the schema is dropped at the end.
struct SharedLedger {
    dir: tempfile::TempDir,
    schema: String,
    daemons: Vec<Child>,
}

impl SharedLedger {
    fn new() -> SharedLedger {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let schema = format!("leadsync_identity_{:08x}", rand::random::<u32>());
        for d in ["config/targets", "spool", "out"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(
            root.join("config/leadsync.toml"),
            format!(
                r#"
[ledger]
url = "{url}"
schema = "{schema}"
max_connections = 2

[telemetry]
log_format = "json"
log_level = "info"

[sources.inbox]
kind = "spool"
dir = "../spool"
after = "keep"
settle = "0s"
schedule = "*/1 * * * * *"
"#,
                url = pg_url()
            ),
        )
        .expect("config");
        std::fs::write(
            root.join("config/targets/out.toml"),
            r#"
kind = "file"
schedule = "*/1 * * * * *"
[connection]
path = "../../out/leads.jsonl"
format = "jsonl"
"#,
        )
        .expect("target");
        SharedLedger {
            dir,
            schema,
            daemons: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut c = leadsync();
        c.arg("--config")
            .arg(self.dir.path().join("config/leadsync.toml"));
        c
    }

    fn status(&self, json: bool) -> Output {
        let mut c = self.command();
        c.arg("status");
        if json {
            c.arg("--json");
        }
        c.output().expect("status")
    }
}

impl Drop for SharedLedger {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
        common::drop_pg_schema(self.schema.clone());
    }
}

/// `status --json`'s live instances, once there are `n` of them (within 30 s).
fn live_instances(ledger: &SharedLedger, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ledger.status(true);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            let alive: Vec<serde_json::Value> = v["instances"]
                .as_array()
                .map(|a| a.iter().filter(|i| i["alive"] == true).cloned().collect())
                .unwrap_or_default();
            if alive.len() == n {
                return alive;
            }
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {n} live instances: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_ledger_show_their_own_identity_in_status() {
    let test = "two_daemons_on_one_ledger_show_their_own_identity_in_status";
    let Some(_conn) = pg_or_skip(test).await else {
        return;
    };
    let mut ledger = SharedLedger::new();
    let before = Utc::now() - chrono::TimeDelta::seconds(1);
    for _ in 0..2 {
        let child = ledger
            .command()
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start leadsync run");
        ledger.daemons.push(child);
    }
    let pids: HashSet<u32> = ledger.daemons.iter().map(Child::id).collect();
    let instances = tokio::task::block_in_place(|| live_instances(&ledger, 2));
    let after = Utc::now();

    let host = host_name();
    let ids: HashSet<&str> = instances.iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids.len(), 2, "two daemons, two ids: {instances:?}");
    for i in &instances {
        let id = i["id"].as_str().expect("id");
        let pid = u32::try_from(i["pid"].as_u64().expect("pid")).expect("pid fits");
        assert!(
            pids.contains(&pid),
            "{id}: pid {pid} is not one of {pids:?}"
        );
        assert_id_shape(id, &host, pid);
        assert_eq!(i["host"], host.as_str());
        assert_eq!(i["version"], env!("CARGO_PKG_VERSION"));
        let started: DateTime<Utc> = i["started_at"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{id}: no start time: {i}"));
        assert!(
            before <= started && started <= after,
            "{id}: started {started}, outside {before}..{after}"
        );
    }

    // The table shows the same: one row per instance with its host, pid, version and start.
    let out = ledger.status(false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("HOST") && table.contains("VERSION") && table.contains("STARTED"),
        "{table}"
    );
    for i in &instances {
        let row = table
            .lines()
            .find(|l| l.starts_with(i["id"].as_str().unwrap_or("?")))
            .unwrap_or_else(|| panic!("no row for {}: {table}", i["id"]));
        let started = i["started_at"].as_str().unwrap_or("?");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], host, "{row}");
        assert_eq!(cells[2], i["pid"].to_string(), "{row}");
        assert_eq!(cells[3], env!("CARGO_PKG_VERSION"), "{row}");
        assert!(started.starts_with(&cells[4][..19]), "{row} vs {started}");
        assert_eq!(cells[5], "up", "{row}");
    }
}
