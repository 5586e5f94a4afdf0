//! Several `leadsync run` processes on one PostgreSQL ledger and one spool source: 10,000
//! leads delivered exactly once between them, and again when one of them is SIGKILLed
//! mid-run. The SIGKILL runs use the default `ledger.lease` of 2 minutes: the others must take
//! the killed instance's leases over once its heartbeat stops (within [`TAKEOVER_WITHIN`]),
//! not when the leases run out.
//!
//! Each process writes to a JSONL file of its own (`LEADSYNC_TARGET_OUT__CONNECTION__PATH`):
//! the file target de-duplicates only within one file, so one file per process keeps each
//! process's writes honest, and the union of the files is what "the CRM" received. Exactly
//! once is judged twice: the ledger says 10,000 delivered, 0 pending, 0 dead; and across all
//! files every lead's key is present, and none twice, except (after a SIGKILL) what the
//! killed process had written but not yet recorded, which a survivor pushes again under the
//! same idempotency key (what a CRM upsert absorbs): only deliveries it held leased at the
//! kill (the engine bounds those: the batches in flight, the ones claimed ahead and the
//! answers its committer has not yet written).
//!
//! Needs the PostgreSQL at 127.0.0.1:5432 (`LEADSYNC_TEST_PG_URL` to change it); skips loudly
//! without it, fails under `LEADSYNC_REQUIRE_SERVICES=1`. Each run uses a schema of its own,
//! dropped at the end.

mod common;
use common::{pg_or_skip, pg_url};

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgConnection;

const LEADS: usize = 10_000;
const FILES: usize = 10;
const INSTANCES: usize = 3;
/// `batch_size` of the target (`concurrency` is 1).
const CLAIM: usize = 100;
/// `ledger.lease` of the SIGKILL runs: far longer than a takeover may take.
const LONG_LEASE: &str = "2m";
/// How soon after a SIGKILL the survivors must hold (or have delivered) what the killed
/// instance held: three missed 5 s heartbeats, a survivor's next beat, a claim.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(20);

/// A throw-away deployment: config (with `ledger.lease` = `lease`), spool with 10,000 leads
/// in 10 files, output folder, and a schema of its own.
struct Cluster {
    dir: tempfile::TempDir,
    schema: String,
    nodes: Vec<Option<Child>>,
}

impl Cluster {
    fn new(lease: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let schema = format!("leadsync_scaleout_{:08x}", rand::random::<u32>());
        for d in ["config/targets", "spool", "out", "logs"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(
            root.join("config/leadsync.toml"),
            format!(
                r#"
[ledger]
url = "{url}"
schema = "{schema}"
max_connections = 4
lease = "{lease}"

[telemetry]
log_format = "json"
log_level = "info"

[sources.inbox]
kind = "spool"
dir = "../spool"
after = "move"
settle = "0s"
schedule = "*/1 * * * * *"
"#,
                url = pg_url()
            ),
        )
        .expect("write config");
        std::fs::write(
            root.join("config/targets/out.toml"),
            format!(
                r#"
kind = "file"
schedule = "*/1 * * * * *"
[connection]
path = "../../out/default.jsonl"
format = "jsonl"
[limits]
batch_size = {CLAIM}
concurrency = 1
"#
            ),
        )
        .expect("write target");
        for f in 0..FILES {
            // Written under a hidden name and renamed into place, as writers should.
            let tmp = root.join(format!("spool/.drop-{f}.jsonl"));
            let mut out = std::fs::File::create(&tmp).expect("spool file");
            for i in (f * LEADS / FILES)..((f + 1) * LEADS / FILES) {
                writeln!(
                    out,
                    r#"{{"UserDetails": {{"FirstName": "P{i}", "Email": "p{i}@example.com"}}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Offer {o}", "Description": "lead number {i}"}}"#,
                    o = i % 7
                )
                .expect("write lead");
            }
            drop(out);
            std::fs::rename(&tmp, root.join(format!("spool/drop-{f}.jsonl"))).expect("rename");
        }
        Cluster {
            dir,
            schema,
            nodes: Vec::new(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn output(&self, node: usize) -> PathBuf {
        self.root().join(format!("out/node-{node}.jsonl"))
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_leadsync"));
        c.arg("--config")
            .arg(self.root().join("config/leadsync.toml"));
        c.env_remove("LEADSYNC_CONFIG");
        c
    }

    fn start(&mut self, count: usize) {
        for _ in 0..count {
            let node = self.nodes.len();
            let log = std::fs::File::create(self.root().join(format!("logs/node-{node}.log")))
                .expect("log file");
            let child = self
                .command()
                .arg("run")
                .env("LEADSYNC_TARGET_OUT__CONNECTION__PATH", self.output(node))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start leadsync run");
            self.nodes.push(Some(child));
        }
    }

    fn pid(&self, node: usize) -> Option<u32> {
        self.nodes[node].as_ref().map(Child::id)
    }

    /// Send `signal` (`STOP`, `CONT`) to a running node.
    fn signal(&self, node: usize, signal: &str) {
        if let Some(pid) = self.pid(node) {
            let sent = Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status()
                .expect("kill");
            assert!(sent.success(), "kill -{signal} {pid}");
        }
    }

    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            child.kill().expect("SIGKILL"); // SIGKILL
            child.wait().expect("reap");
        }
    }

    /// SIGTERM everything still running and wait for a clean exit.
    fn stop_all(&mut self) {
        for node in self.nodes.iter_mut() {
            if let Some(mut child) = node.take() {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(40);
                loop {
                    if let Ok(Some(status)) = child.try_wait() {
                        assert!(status.success(), "leadsync run exited with {status}");
                        break;
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("leadsync run did not stop within 40 s of SIGTERM");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn log(&self, node: usize) -> String {
        std::fs::read_to_string(self.root().join(format!("logs/node-{node}.log")))
            .unwrap_or_default()
    }

    /// Every key in each node's output file.
    fn keys_per_node(&self) -> Vec<Vec<String>> {
        (0..self.nodes.len())
            .map(|node| {
                let Ok(text) = std::fs::read_to_string(self.output(node)) else {
                    return Vec::new();
                };
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                let last = lines.len().saturating_sub(1);
                lines
                    .iter()
                    .enumerate()
                    .filter_map(
                        |(i, l)| match serde_json::from_str::<serde_json::Value>(l) {
                            Ok(v) => Some(
                                v["leadsync_key"]
                                    .as_str()
                                    .expect("row carries its key")
                                    .to_string(),
                            ),
                            // A SIGKILL mid-write leaves a torn last row: not a delivery.
                            Err(_) if i == last && !text.ends_with('\n') => None,
                            Err(e) => panic!("node {node}: row {i} is not JSON: {e}"),
                        },
                    )
                    .collect()
            })
            .collect()
    }
}

impl Drop for Cluster {
    /// Kill what still runs and drop the schema, whether the test passed or not.
    fn drop(&mut self) {
        for node in self.nodes.iter_mut() {
            if let Some(mut child) = node.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        common::drop_pg_schema(self.schema.clone());
    }
}

async fn count(conn: &mut PgConnection, schema: &str, sql: &str) -> i64 {
    let sql = sql.replace("{s}", &format!("\"{schema}\""));
    sqlx::query_scalar(&sql)
        .fetch_one(&mut *conn)
        .await
        .unwrap_or(0)
}

async fn delivered(conn: &mut PgConnection, schema: &str) -> i64 {
    count(
        conn,
        schema,
        "SELECT COUNT(*) FROM {s}.deliveries WHERE state = 'delivered'",
    )
    .await
}

/// Wait until the ledger says every lead is delivered.
async fn wait_all_delivered(conn: &mut PgConnection, cluster: &Cluster, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if delivered(conn, &cluster.schema).await == LEADS as i64 {
            return;
        }
        if Instant::now() > deadline {
            let n = delivered(conn, &cluster.schema).await;
            panic!(
                "only {n} of {LEADS} delivered within {within:?}\n--- node 0 log tail\n{}",
                tail(&cluster.log(0))
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The ledger's final word: all delivered, nothing pending or dead, each lead once.
async fn assert_ledger_complete(conn: &mut PgConnection, schema: &str) {
    let leads = count(conn, schema, "SELECT COUNT(*) FROM {s}.leads").await;
    let pending = count(
        conn,
        schema,
        "SELECT COUNT(*) FROM {s}.deliveries WHERE state <> 'delivered'",
    )
    .await;
    let deliveries = count(conn, schema, "SELECT COUNT(*) FROM {s}.deliveries").await;
    assert_eq!(
        (leads, deliveries, delivered(conn, schema).await, pending),
        (LEADS as i64, LEADS as i64, LEADS as i64, 0)
    );
}

/// Every spool file moved to `processed/` once; nothing left in the inbox or rejected.
fn assert_spool_drained(root: &Path) {
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root.join(dir))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert!(
        names("spool").is_empty(),
        "left in the inbox: {:?}",
        names("spool")
    );
    assert_eq!(names("spool/processed").len(), FILES);
    assert!(names("spool/rejected").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_deliver_each_lead_exactly_once() {
    let Some(mut conn) = pg_or_skip("three_instances_deliver_each_lead_exactly_once").await else {
        return;
    };
    let mut cluster = Cluster::new("3s");
    let schema = cluster.schema.clone();
    let started = Instant::now();
    cluster.start(INSTANCES);

    // While they work, `status` lists the three instances (their heartbeats).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cluster
            .command()
            .args(["status", "--json"])
            .output()
            .expect("status");
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            let alive = v["instances"]
                .as_array()
                .map(|a| a.iter().filter(|i| i["alive"] == true).count())
                .unwrap_or(0);
            if alive == INSTANCES {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {INSTANCES} live instances"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    wait_all_delivered(&mut conn, &cluster, Duration::from_secs(180)).await;
    let took = started.elapsed();
    cluster.stop_all();

    assert_ledger_complete(&mut conn, &schema).await;
    assert_spool_drained(cluster.root());
    let per_node = cluster.keys_per_node();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for keys in &per_node {
        for k in keys {
            *seen.entry(k.as_str()).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let counts: Vec<usize> = per_node.iter().map(Vec::len).collect();
    eprintln!("{LEADS} leads in {took:?}; rows written per instance: {counts:?}");
    assert_eq!(seen.len(), LEADS, "every lead reached an output file");
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    assert_eq!(counts.iter().sum::<usize>(), LEADS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_instance_loses_and_duplicates_nothing() {
    sigkill_scenario(
        "sigkill_of_one_instance_loses_and_duplicates_nothing",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_instance_pulling_the_source_mid_pull() {
    sigkill_scenario("sigkill_of_the_instance_pulling_the_source_mid_pull", true).await;
}

/// `leads` staged so far and the owner of the source lease.
async fn pulling(conn: &mut PgConnection, schema: &str) -> (i64, Option<String>) {
    let staged = count(conn, schema, "SELECT COUNT(*) FROM {s}.leads").await;
    let owner: Option<String> = sqlx::query_scalar(&format!(
        "SELECT owner FROM \"{schema}\".source_leases WHERE source = 'inbox'"
    ))
    .fetch_optional(&mut *conn)
    .await
    .unwrap_or(None);
    (staged, owner)
}

/// How long after `since` another instance holds the source lease `dead` held, or the whole
/// spool is staged (polled every 50 ms, up to [`TAKEOVER_WITHIN`] + 10 s).
async fn source_taken_over(
    conn: &mut PgConnection,
    schema: &str,
    dead: &str,
    since: Instant,
) -> Duration {
    loop {
        let (staged, owner) = pulling(conn, schema).await;
        let passed = owner.is_some_and(|o| o != dead) || staged == LEADS as i64;
        if passed || since.elapsed() > TAKEOVER_WITHIN + Duration::from_secs(10) {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node whose process leases as `owner` (`host:pid:nonce`).
fn node_of(cluster: &Cluster, owner: &str) -> Option<usize> {
    let pid: u32 = owner.split(':').nth(1).and_then(|p| p.parse().ok())?;
    (0..INSTANCES).find(|i| cluster.pid(*i) == Some(pid))
}

/// The ids of the pending deliveries `owner` holds the lease of.
async fn leased_to(conn: &mut PgConnection, schema: &str, owner: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT id FROM \"{schema}\".deliveries WHERE lease_owner = $1 AND state = 'pending'"
    ))
    .bind(owner)
    .fetch_all(&mut *conn)
    .await
    .expect("leased deliveries")
}

/// The idempotency keys (what the file target writes as `leadsync_key`) of deliveries `ids`.
async fn keys_of(conn: &mut PgConnection, schema: &str, ids: &[i64]) -> HashSet<String> {
    sqlx::query_scalar::<_, String>(&format!(
        "SELECT idempotency_key FROM \"{schema}\".deliveries WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .expect("keys of leased deliveries")
    .into_iter()
    .collect()
}

/// How long after `since` every one of `ids` is delivered or leased to another owner than
/// `dead` (polled every 50 ms, up to `within` + 10 s so a late takeover is measured too).
async fn taken_over(
    conn: &mut PgConnection,
    schema: &str,
    ids: &[i64],
    dead: &str,
    since: Instant,
    within: Duration,
) -> Duration {
    let sql = format!(
        "SELECT COUNT(*) FROM \"{schema}\".deliveries \
         WHERE id = ANY($1) AND state = 'pending' \
           AND (lease_owner IS NULL OR lease_owner = $2)"
    );
    loop {
        let waiting: i64 = sqlx::query_scalar(&sql)
            .bind(ids)
            .bind(dead)
            .fetch_one(&mut *conn)
            .await
            .expect("deliveries not taken over");
        if waiting == 0 || since.elapsed() > within + Duration::from_secs(10) {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kill one instance mid-run: the one holding the most delivery leases (its leases must be
/// taken over within [`TAKEOVER_WITHIN`] although `ledger.lease` is 2 minutes), or, with
/// `source_holder`, the one pulling the source while it is half-way through the spool (its
/// source lease must pass to another instance, which reads the unmoved files again; the
/// ledger ignores the leads it already has).
async fn sigkill_scenario(test: &str, source_holder: bool) {
    let Some(mut conn) = pg_or_skip(test).await else {
        return;
    };
    let mut cluster = Cluster::new(LONG_LEASE);
    let schema = cluster.schema.clone();
    cluster.start(INSTANCES);

    let deadline = Instant::now() + Duration::from_secs(120);
    let (victim, owner, leased, done_at_kill, stopped_at) = loop {
        let done = delivered(&mut conn, &schema).await;
        if source_holder {
            let (staged, owner) = pulling(&mut conn, &schema).await;
            assert!(
                staged < LEADS as i64,
                "the whole spool was staged before a kill could happen mid-pull"
            );
            if let Some((node, owner)) = owner
                .filter(|_| staged > 0)
                .and_then(|o| Some((node_of(&cluster, &o)?, o)))
            {
                break (node, owner, Vec::new(), done, Instant::now());
            }
            assert!(Instant::now() < deadline, "no mid-pull moment to kill at");
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let holder: Option<(String, i64)> = sqlx::query_as(&format!(
            "SELECT lease_owner, COUNT(*) FROM \"{schema}\".deliveries \
             WHERE lease_owner IS NOT NULL AND state = 'pending' \
             GROUP BY lease_owner ORDER BY COUNT(*) DESC LIMIT 1"
        ))
        .fetch_optional(&mut conn)
        .await
        .unwrap_or(None);
        if let Some((owner, _)) = holder.filter(|_| done >= 1_000) {
            if let Some(node) = node_of(&cluster, &owner) {
                // Frozen, what it holds cannot change: that is what must be taken over.
                // A statement it sent just before (recording its batch) still completes on
                // the server, so look after that has settled; if it holds nothing then, let
                // it go on and look again.
                cluster.signal(node, "STOP");
                let stopped_at = Instant::now();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let leased = leased_to(&mut conn, &schema, &owner).await;
                if !leased.is_empty() {
                    break (node, owner, leased, done, stopped_at);
                }
                cluster.signal(node, "CONT");
            }
        }
        assert!(
            done < LEADS as i64,
            "everything was delivered before a kill could happen mid-run"
        );
        assert!(Instant::now() < deadline, "no mid-run moment to kill at");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (staged_at_kill, source_owner) = pulling(&mut conn, &schema).await;
    let victim_pid = cluster.pid(victim).expect("running");
    let killed_at = Instant::now();
    cluster.kill(victim);
    // Frozen (or killed) from here on: no heartbeat, no lease renewal.
    let dead_from = if source_holder { killed_at } else { stopped_at };
    eprintln!(
        "SIGKILLed node {victim} (pid {victim_pid}) holding {} delivery lease(s) with \
         {done_at_kill} of {LEADS} delivered, {staged_at_kill} staged; source lease held by \
         {source_owner:?}",
        leased.len()
    );

    // Failover: the leases it held (2 minutes long) are taken over within seconds.
    if !source_holder {
        let took = taken_over(
            &mut conn,
            &schema,
            &leased,
            &owner,
            dead_from,
            TAKEOVER_WITHIN,
        )
        .await;
        eprintln!(
            "the killed instance's {} delivery lease(s) were taken over {took:?} after it \
             stopped (ledger.lease = {LONG_LEASE})",
            leased.len()
        );
        assert!(
            took <= TAKEOVER_WITHIN,
            "the killed instance's deliveries were not taken over within {TAKEOVER_WITHIN:?} \
             (took {took:?})"
        );
    } else {
        let took = source_taken_over(&mut conn, &schema, &owner, dead_from).await;
        eprintln!(
            "the killed instance's source lease passed on {took:?} after the kill \
             (ledger.lease = {LONG_LEASE})"
        );
        assert!(
            took <= TAKEOVER_WITHIN,
            "the source lease did not pass on within {TAKEOVER_WITHIN:?} (took {took:?})"
        );
    }

    wait_all_delivered(&mut conn, &cluster, Duration::from_secs(180)).await;
    eprintln!(
        "the survivors finished {:?} after the kill",
        killed_at.elapsed()
    );
    cluster.stop_all();
    // A survivor said whose leases it freed, by instance id.
    assert!(
        (0..INSTANCES).filter(|n| *n != victim).any(|n| cluster
            .log(n)
            .lines()
            .any(|l| l.contains("released the leases of instance") && l.contains(&owner))),
        "no survivor logged releasing {owner}'s leases"
    );

    assert_ledger_complete(&mut conn, &schema).await;
    assert_spool_drained(cluster.root());

    let per_node = cluster.keys_per_node();
    let mut all: HashSet<&str> = HashSet::new();
    let mut survivors: HashSet<&str> = HashSet::new();
    for (node, keys) in per_node.iter().enumerate() {
        let unique: HashSet<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(unique.len(), keys.len(), "node {node} wrote a key twice");
        all.extend(unique.iter().copied());
        if node != victim {
            for k in &unique {
                assert!(survivors.insert(k), "two live instances both wrote {k}");
            }
        }
    }
    // 0 lost: every lead reached an output.
    assert_eq!(all.len(), LEADS, "leads lost");
    // 0 duplicated by the live instances; the only keys written twice are the killed
    // process's last unrecorded batch, pushed again under the same idempotency key.
    let repushed: Vec<&str> = per_node[victim]
        .iter()
        .map(String::as_str)
        .filter(|k| survivors.contains(k))
        .collect();
    let counts: Vec<usize> = per_node.iter().map(Vec::len).collect();
    eprintln!(
        "rows per instance {counts:?}; {} key(s) written by the killed instance but not \
         recorded, pushed again by a survivor under the same idempotency key",
        repushed.len()
    );
    // Re-pushed: only what the killed instance held leased when it stopped.
    let held = keys_of(&mut conn, &schema, &leased).await;
    let foreign: Vec<&&str> = repushed.iter().filter(|k| !held.contains(**k)).collect();
    assert!(
        foreign.is_empty(),
        "{} re-pushed key(s) the killed instance did not hold leased, e.g. {:?}",
        foreign.len(),
        foreign.first()
    );
    assert_eq!(
        counts.iter().sum::<usize>(),
        LEADS + repushed.len(),
        "rows beyond the re-pushed batch"
    );
}
