//! Scale-out benchmark: 1 → 4 `leadsync run` instances sharing one PostgreSQL ledger, pushing
//! to a fake CRM that takes 50 ms per request. Prints leads/s per instance count and the
//! speed-up over one instance (the figures in the README's "Several nodes" section).
//!
//! `cargo bench --bench scaleout` (the release binary is built by cargo). Settings:
//! `LEADSYNC_BENCH_LEADS` (default 2000), `LEADSYNC_BENCH_MAX_INSTANCES` (default 4),
//! `LEADSYNC_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`). Each run
//! uses a schema of its own, dropped afterwards. Without PostgreSQL it says so and exits.
//!
//! The fake CRM is a minimal HTTP receiver in this file: it sleeps 50 ms per request, then
//! answers 200 and counts requests per `Idempotency-Key`. The target is `kind = "https"`
//! ([`target_toml`]), so the build needs the `https` feature (on by default).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

/// One request's round trip at the fake CRM.
const CRM_LATENCY: Duration = Duration::from_millis(50);
/// Per instance: requests in flight at once (`limits.concurrency`), each batch sent one
/// request after another (`limits.batch_size`).
const CONCURRENCY: usize = 4;
const BATCH_SIZE: usize = 10;

fn pg_url() -> String {
    std::env::var("LEADSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the fake CRM saw.
#[derive(Default)]
struct Received {
    per_key: HashMap<String, usize>,
    first: Option<Instant>,
    last: Option<Instant>,
}

type Shared = Arc<Mutex<Received>>;

async fn receive(
    axum::extract::State(state): axum::extract::State<Shared>,
    headers: axum::http::HeaderMap,
) -> (axum::http::StatusCode, &'static str) {
    tokio::time::sleep(CRM_LATENCY).await;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    if let Ok(mut r) = state.lock() {
        let now = Instant::now();
        r.first.get_or_insert(now);
        r.last = Some(now);
        *r.per_key.entry(key).or_default() += 1;
    }
    (axum::http::StatusCode::OK, "{}")
}

/// Start the fake CRM on a free local port.
async fn fake_crm() -> (SocketAddr, Shared) {
    let state: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/leads", axum::routing::post(receive))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake CRM");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, state)
}

/// The target every instance pushes to. Switch the kind here when comparing connectors.
#[cfg(feature = "https")]
fn target_toml(crm: SocketAddr) -> Option<String> {
    Some(format!(
        r#"
kind = "https"
schedule = "*/1 * * * * *"
[connection]
url = "http://{crm}/leads"
allow_http = true
[limits]
batch_size = {BATCH_SIZE}
concurrency = {CONCURRENCY}
"#
    ))
}

#[cfg(not(feature = "https"))]
fn target_toml(_crm: SocketAddr) -> Option<String> {
    None
}

fn write_deployment(root: &Path, schema: &str, target: &str, leads: usize) {
    for d in ["config/targets", "spool", "logs"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::write(
        root.join("config/leadsync.toml"),
        format!(
            r#"
[ledger]
url = "{url}"
schema = "{schema}"
lease = "30s"

[telemetry]
log_format = "json"
log_level = "warn"

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
    .expect("config");
    std::fs::write(root.join("config/targets/crm.toml"), target).expect("target");
    let tmp = root.join("spool/.leads.jsonl");
    let mut f = std::fs::File::create(&tmp).expect("spool file");
    for i in 0..leads {
        writeln!(
            f,
            r#"{{"UserDetails": {{"FirstName": "P{i}", "Email": "p{i}@example.com"}}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Offer {o}", "Description": "bench lead {i}"}}"#,
            o = i % 7
        )
        .expect("write");
    }
    drop(f);
    std::fs::rename(&tmp, root.join("spool/leads.jsonl")).expect("rename");
}

async fn drop_schema(schema: &str) {
    if let Ok(mut conn) = PgConnection::connect(&pg_url()).await {
        let _ = conn
            .execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
            .await;
    }
}

struct Run {
    instances: usize,
    wall: Duration,
    window: Duration,
    requests: usize,
    keys: usize,
}

async fn run(instances: usize, leads: usize) -> Run {
    let (crm, received) = fake_crm().await;
    let target = target_toml(crm).expect("a target kind with network latency");
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = format!("leadsync_bench_{:08x}", rand::random::<u32>());
    write_deployment(dir.path(), &schema, &target, leads);

    let started = Instant::now();
    let mut children: Vec<Child> = (0..instances)
        .map(|i| {
            let log =
                std::fs::File::create(dir.path().join(format!("logs/node-{i}.log"))).expect("log");
            Command::new(env!("CARGO_BIN_EXE_leadsync"))
                .arg("--config")
                .arg(dir.path().join("config/leadsync.toml"))
                .arg("run")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start leadsync run")
        })
        .collect();
    let deadline = started + Duration::from_secs(env_usize("LEADSYNC_BENCH_TIMEOUT_S", 600) as u64);
    loop {
        let done = received.lock().map(|r| r.per_key.len()).unwrap_or(0);
        if done >= leads {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("{done} of {leads} delivered after 10 minutes; giving up");
            for i in 0..instances {
                let log = std::fs::read_to_string(dir.path().join(format!("logs/node-{i}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "--- node {i} log tail\n{}",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = started.elapsed();
    for c in &mut children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for c in &mut children {
        let _ = c.wait();
    }
    drop_schema(&schema).await;
    let r = received.lock().expect("receiver state");
    Run {
        instances,
        wall,
        window: match (r.first, r.last) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        },
        requests: r.per_key.values().sum(),
        keys: r.per_key.len(),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo test --benches` runs benches with `--bench`-less arguments: do nothing then.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let leads = env_usize("LEADSYNC_BENCH_LEADS", 2000);
    let max = env_usize("LEADSYNC_BENCH_MAX_INSTANCES", 4);
    if target_toml("127.0.0.1:1".parse().expect("address")).is_none() {
        println!("scaleout: skipped: this build has no `https` target kind");
        return;
    }
    match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&pg_url())).await {
        Ok(Ok(c)) => {
            let _ = c.close().await;
        }
        _ => {
            println!("scaleout: skipped: PostgreSQL is unreachable (LEADSYNC_TEST_PG_URL)");
            return;
        }
    }
    println!(
        "scaleout: {leads} leads, fake CRM {} ms per request, per instance {CONCURRENCY} \
         requests in flight (batch_size {BATCH_SIZE}), PostgreSQL ledger",
        CRM_LATENCY.as_millis()
    );
    println!(
        "{:>9} {:>10} {:>12} {:>10} {:>9} {:>10}",
        "instances", "wall s", "push window s", "leads/s", "speed-up", "repeats"
    );
    let mut base: Option<f64> = None;
    for n in 1..=max {
        let r = run(n, leads).await;
        let rate = r.keys as f64 / r.window.as_secs_f64().max(0.001);
        let speedup = rate / *base.get_or_insert(rate);
        println!(
            "{:>9} {:>10.1} {:>12.1} {:>10.1} {:>8.2}x {:>10}",
            r.instances,
            r.wall.as_secs_f64(),
            r.window.as_secs_f64(),
            rate,
            speedup,
            r.requests - r.keys
        );
        if r.keys < leads {
            println!("  (only {} of {leads} leads arrived)", r.keys);
        }
    }
}
