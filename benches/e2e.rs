//! End-to-end benchmarks: throughput against the limit, freshness, ledger rate and memory.
//! Each part prints a table; the README's "Performance" section quotes them.
//!
//! `cargo bench --bench e2e -- <part>...` (no part: all of them), parts:
//!
//! - `https`: spool → ledger → `kind = "https"` target → fake receiver at zero latency, in
//!   this process (`pull_source`, then `drain_target`), next to a raw reqwest loop against the
//!   same fake with the same concurrency (the limit). Per-lead POSTs and batch mode.
//!   `LEADSYNC_BENCH_HTTPS_LEADS` (default 20000).
//! - `https-hang`: the HTTPS target, one lead per POST, 8 in flight, 50 ms added to every
//!   request and a 1 s request timeout; once fault-free, once with every tenth request
//!   committing and then hanging past the timeout. `LEADSYNC_BENCH_HANG_LEADS` (default 2000).
//! - `batch`: Salesforce sObject Collections and Dataverse `$batch` against their fakes, each
//!   answering 50 ms after a request arrived (its own work inside those 50 ms, as a CRM's is
//!   inside its round trip); leads/s next to in_flight × batch ÷ 50 ms.
//!   `LEADSYNC_BENCH_BATCH_ROUNDS` (default 30 rounds of batch × concurrency leads: a drain
//!   has a fixed cost, filling the slots at its start and its last round's slots finishing
//!   out of phase, 20–40 ms, which is 1–2 % of 30 rounds and 4–5 % of 10).
//! - `paced`: Marketo 300 × 1 and HubSpot 100 × 4 against their fakes with 50 ms added to
//!   every request; there the CRM's own call-rate limit (Marketo 100 calls per 20 s, HubSpot
//!   100 per 10 s) is the ceiling, not the round trip: leads/s next to calls per window ×
//!   batch ÷ window, and the most calls the fake counted in one window.
//!   `LEADSYNC_BENCH_PACED_CALLS` (default 150 calls each).
//! - `freshness`: the real binary in `run` mode, a spool source pulled every second, an https
//!   target; leads dropped at random times; drop → arrival at the fake, p50/p99/max.
//!   `LEADSYNC_BENCH_FRESH_LEADS` (default 100), `LEADSYNC_BENCH_FRESH_SECS` (default 40).
//! - `inbox`: the real binary in `run` mode with an `https_inbox` source (plain HTTP on
//!   loopback, no rate limit) and an https target at zero latency: POST → durable `200`
//!   latency and POSTs/s with 1 and 64 concurrent clients, and POST → arrival at the fake.
//!   `LEADSYNC_BENCH_INBOX_POSTS` (default 2000 for one client, 10× that for 64).
//! - `ledger`: `Ledger::stage` in batches of 500 into SQLite, then the push side's
//!   `claim` + `record` in rounds of 1,600. `LEADSYNC_BENCH_LEDGER_LEADS` (default 100000).
//! - `rss`: peak RSS (VmHWM) of the real binary doing `sync --once` through a generated
//!   backlog to an https receiver at zero latency (batch mode).
//!   `LEADSYNC_BENCH_RSS_LEADS` (default 250000, about a minute; the README figure is 1000000).
//! - `idle`: RSS and CPU seconds (utime + stime) of an idle `run` over
//!   `LEADSYNC_BENCH_IDLE_SECS` (default 60).
//!
//! A profile of the timed pushes alone: `mkfifo /tmp/ctl`, then
//! `LEADSYNC_BENCH_PERF_CTL=/tmp/ctl perf record --control=fifo:/tmp/ctl -D -1 <bench binary>
//! --bench batch` (staging and warm-up are left out).
//!
//! Everything is loopback. The binary is `CARGO_BIN_EXE_leadsync` (cargo builds it in the
//! bench profile). `cargo test --all-targets` runs this without `--bench`: it then does
//! nothing.

use chrono::{DateTime, Utc};
use leadsync::ledger::{
    Ledger, OpenMode, PlannedDelivery, RecordedOutcome, StageBatch, StagedLead,
};
use leadsync::pipeline::{drain_target, pull_source, PushReport, Target};
use leadsync::sources::Source;
use leadsync_core::{idempotency_key, KeyScope};
use leadsync_fakes::dataverse::FakeDataverse;
use leadsync_fakes::https_receiver::{HttpsReceiver, ReceiverOptions, Reply};
use leadsync_fakes::hubspot::{HubSpotFake, HubSpotFakeConfig};
use leadsync_fakes::marketo::{MarketoFake, MarketoFakeConfig};
use leadsync_fakes::salesforce::{SalesforceFake, SalesforceFakeConfig};
use rand::Rng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// One generated marketplace lead in the HTTPS-endpoint shape, distinct per `i`.
fn lead_json(i: usize, tag: &str) -> String {
    const FIRST: [&str; 6] = ["Ann", "Bo", "Chloé", "Dmitri", "Eva", "Farid"];
    const COMPANY: [&str; 5] = [
        "Contoso",
        "Fabrikam",
        "Northwind Traders",
        "Tailspin Toys",
        "Wide World Importers",
    ];
    const ACTION: [&str; 4] = ["INS", "PLT", "INS", "Create"];
    serde_json::json!({
        "UserDetails": {
            "FirstName": FIRST[i % FIRST.len()],
            "LastName": format!("Lead{i}"),
            "Email": format!("lead{i}.{tag}@contoso.example"),
            "Phone": "+1 425 555 0100",
            "Country": "US",
            "Company": COMPANY[i % COMPANY.len()],
            "Title": "IT Manager"
        },
        "LeadSource": "AzureMarketplace",
        "ActionCode": ACTION[i % ACTION.len()],
        "OfferTitle": "Contoso Analytics",
        "Description": format!("{tag} lead {i}: interested in a 50-seat pilot")
    })
    .to_string()
}

/// Write `n` leads as one `.jsonl` file, renamed into place so the spool never sees it half
/// written.
fn write_spool_file(dir: &Path, name: &str, from: usize, n: usize, tag: &str) {
    let tmp = dir.join(format!(".{name}.part"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("spool file"));
    for i in from..from + n {
        f.write_all(lead_json(i, tag).as_bytes()).expect("write");
        f.write_all(b"\n").expect("write");
    }
    f.flush().expect("flush");
    drop(f);
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// A throw-away deployment: `config/leadsync.toml`, `config/targets/<name>.toml`, `spool/`,
/// `state/ledger.db`.
struct Deployment {
    dir: tempfile::TempDir,
}

impl Deployment {
    /// A spool source pulled on `source_schedule` and one target.
    fn new(target_name: &str, target_toml: &str, source_schedule: &str) -> Deployment {
        let spool = format!(
            r#"
[sources.inbox]
kind = "spool"
dir = "../spool"
after = "move"
settle = "0s"
schedule = "{source_schedule}"
"#
        );
        Self::with_source(target_name, target_toml, &spool)
    }

    /// `source_toml` (a `[sources.<name>]` table) and one target.
    fn with_source(target_name: &str, target_toml: &str, source_toml: &str) -> Deployment {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in ["config/targets", "spool", "state"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(
            root.join("config/leadsync.toml"),
            format!(
                r#"
[ledger]
path = "../state/ledger.db"

[telemetry]
log_format = "json"
log_level = "warn"
{source_toml}"#
            ),
        )
        .expect("config");
        std::fs::write(
            root.join(format!("config/targets/{target_name}.toml")),
            target_toml,
        )
        .expect("target");
        Deployment { dir }
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("config/leadsync.toml")
    }
    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_leadsync"));
        c.arg("--config").arg(self.config());
        c.env_remove("LEADSYNC_CONFIG");
        c
    }
}

/// The library's own pipeline over a deployment, in this process.
struct InProcess {
    ledger: Arc<dyn Ledger>,
    source: Box<dyn Source>,
    targets: Vec<Arc<Target>>,
}

impl InProcess {
    async fn open(d: &Deployment) -> InProcess {
        let loaded = leadsync::wiring::load(&d.config()).unwrap_or_else(|e| panic!("config: {e}"));
        let mut sources = leadsync::wiring::build_sources(&loaded.settings).expect("sources");
        let ledger = leadsync::wiring::open_ledger(&loaded.settings, OpenMode::Exclusive)
            .await
            .expect("ledger");
        InProcess {
            ledger,
            source: sources.remove(0),
            targets: loaded.targets,
        }
    }

    /// Stage everything in the spool; returns (leads staged, seconds).
    async fn stage(&mut self) -> (u64, f64) {
        let t = Instant::now();
        let r = pull_source(self.ledger.as_ref(), self.source.as_mut(), &self.targets)
            .await
            .expect("pull");
        (r.staged, t.elapsed().as_secs_f64())
    }

    /// Push the (only) target until nothing is due; returns (delivered, seconds).
    async fn drain(&self) -> (u64, f64) {
        let push = self.drain_report().await;
        (push.report.delivered, push.secs)
    }

    /// [`InProcess::drain`], with the engine's whole report and the CPU it took.
    async fn drain_report(&self) -> TimedPush {
        perf_control("enable");
        let t = Instant::now();
        let cpu = own_cpu_seconds();
        let r = drain_target(&self.ledger, &self.targets[0], "bench", Utc::now())
            .await
            .expect("drain");
        let secs = t.elapsed().as_secs_f64();
        let cpu_secs = own_cpu_seconds() - cpu;
        perf_control("disable");
        if r.delivered != r.attempted {
            println!(
                "  ! {} attempted, {} delivered, {} retrying, {} dead",
                r.attempted, r.delivered, r.retrying, r.dead
            );
        }
        TimedPush {
            report: r,
            secs,
            cpu_secs,
        }
    }
}

/// With `LEADSYNC_BENCH_PERF_CTL=<fifo>`, tell `perf record --control=fifo:<fifo> -D -1`
/// to sample only the timed pushes (`enable`/`disable`), so a profile leaves staging out.
fn perf_control(command: &str) {
    if let Ok(path) = std::env::var("LEADSYNC_BENCH_PERF_CTL") {
        if let Ok(mut fifo) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = writeln!(fifo, "{command}");
        }
    }
}

/// One timed push: the engine's report, wall-clock seconds and this process's CPU seconds
/// (the in-process fakes' share included).
struct TimedPush {
    report: PushReport,
    secs: f64,
    cpu_secs: f64,
}

/// This process's CPU seconds so far (utime + stime; NaN where /proc is missing).
fn own_cpu_seconds() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(clock_ticks);
    proc_sample(std::process::id(), ticks).map_or(f64::NAN, |(_, _, cpu)| cpu)
}

/// Stage `warm` leads and push them (connections, tokens), then stage `n` and push them,
/// timed. Returns (staged, stage s, delivered, push s).
async fn warm_then_measure(d: &Deployment, warm: usize, n: usize) -> (u64, f64, u64, f64) {
    let (staged, stage_s, push) = warm_then_report(d, warm, n).await;
    (staged, stage_s, push.report.delivered, push.secs)
}

/// [`warm_then_measure`], with the push's whole report.
async fn warm_then_report(d: &Deployment, warm: usize, n: usize) -> (u64, f64, TimedPush) {
    let mut p = InProcess::open(d).await;
    if warm > 0 {
        write_spool_file(&d.spool(), "warm.jsonl", 0, warm, "warm");
        p.stage().await;
        p.drain().await;
    }
    write_spool_file(&d.spool(), "leads.jsonl", 0, n, "bench");
    let (staged, stage_s) = p.stage().await;
    (staged, stage_s, p.drain_report().await)
}

/// The raw client: `requests` POSTs of `per_request` marketplace bodies each (an array when
/// more than one), `concurrency` at a time, over one reqwest client. Returns seconds.
async fn raw_client(url: &str, requests: usize, per_request: usize, concurrency: usize) -> f64 {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let next = Arc::clone(&next);
            let url = url.to_string();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    let body = if per_request == 1 {
                        lead_json(i, "raw")
                    } else {
                        let items: Vec<String> = (0..per_request)
                            .map(|j| lead_json(i * per_request + j, "raw"))
                            .collect();
                        format!("[{}]", items.join(","))
                    };
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("idempotency-key", format!("raw-{i:028}"))
                        .body(body)
                        .send()
                        .await
                        .expect("raw POST");
                    assert!(r.status().is_success(), "raw POST: {}", r.status());
                    let _ = r.bytes().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("raw task");
    }
    t.elapsed().as_secs_f64()
}

fn https_target(url: &str, batch: bool, batch_size: usize, concurrency: usize) -> String {
    format!(
        r#"
kind = "https"
schedule = "*/30 * * * * *"
[connection]
url = "{url}"
allow_http = true
batch = {batch}
[limits]
batch_size = {batch_size}
concurrency = {concurrency}
"#
    )
}

async fn bench_https() {
    let n = env_usize("LEADSYNC_BENCH_HTTPS_LEADS", 20_000);
    println!("\n## https: spool → ledger → https target → fake receiver (zero latency), {n} leads");
    println!(
        "{:<34} {:>10} {:>10} {:>11} {:>12} {:>10}",
        "mode (batch_size × concurrency)",
        "stage/s",
        "push/s",
        "end-to-end",
        "raw client",
        "of raw"
    );
    // (batch mode, leads per push, pushes in flight)
    for (batch, batch_size, concurrency) in [(false, 100, 8), (false, 100, 16), (true, 100, 4)] {
        let fake = HttpsReceiver::start(ReceiverOptions::http())
            .await
            .expect("receiver");
        let d = Deployment::new(
            "crm",
            &https_target(&fake.url("/leads"), batch, batch_size, concurrency),
            "*/30 * * * * *",
        );
        let (staged, stage_s, delivered, push_s) =
            warm_then_measure(&d, batch_size * concurrency, n).await;
        assert_eq!(staged as usize, n, "staged");
        let posts = fake.request_count();
        drop(fake);
        // The limit: the same fake, a fresh instance, the same requests in flight.
        // The best of three runs, each against a fresh receiver.
        let per_request = if batch { batch_size } else { 1 };
        let mut raw_s = f64::INFINITY;
        for _ in 0..3 {
            let fake = HttpsReceiver::start(ReceiverOptions::http())
                .await
                .expect("receiver");
            let s = raw_client(
                &fake.url("/leads"),
                n / per_request,
                per_request,
                concurrency,
            )
            .await;
            raw_s = raw_s.min(s);
        }
        let raw_rate = n as f64 / raw_s;
        let push_rate = delivered as f64 / push_s;
        let mode = if batch {
            format!("batch array of {batch_size} × {concurrency}")
        } else {
            format!("one lead per POST, {batch_size} × {concurrency}")
        };
        println!(
            "{:<34} {:>10.0} {:>10.0} {:>11.0} {:>12.0} {:>9.0}%",
            mode,
            staged as f64 / stage_s,
            push_rate,
            delivered as f64 / (stage_s + push_s),
            raw_rate,
            100.0 * push_rate / raw_rate,
        );
        if delivered as usize != n {
            println!("  ! only {delivered} of {n} delivered ({posts} requests)");
        }
    }
    println!("(leads/s; end-to-end = N ÷ (stage + push time); \"of raw\" compares the push phase)");
}

const ADDED_LATENCY: Duration = Duration::from_millis(50);

/// The HTTPS target, one lead per request, `concurrency` in flight, a 1 s request timeout,
/// quick retries, `max_stalled` if given (else its default, twice the concurrency).
fn https_hang_target(url: &str, concurrency: usize, max_stalled: Option<usize>) -> String {
    // Appended to `[limits]`, which `https_target` ends with.
    let stalled = max_stalled.map_or(String::new(), |n| format!("max_stalled = {n}\n"));
    format!(
        r#"{limits}{stalled}
[connection.http]
timeout = "1s"
[retry]
min_delay = "100ms"
max_delay = "1s"
"#,
        limits = https_target(url, false, 1, concurrency)
    )
}

/// One pass of `n` leads through the HTTPS target against a receiver answering after
/// `ADDED_LATENCY`; with `hang_every`, every such request commits and then hangs past the
/// client's 1 s timeout. Returns (delivered in the pass, pass seconds, delivered after the
/// retries, receiver's stored leads).
async fn https_hang_pass(
    n: usize,
    concurrency: usize,
    hang_every: Option<usize>,
    max_stalled: Option<usize>,
) -> (u64, f64, u64, usize, Option<String>) {
    let fake = HttpsReceiver::start(ReceiverOptions::http())
        .await
        .expect("receiver");
    fake.set_latency(ADDED_LATENCY);
    let d = Deployment::new(
        "crm",
        &https_hang_target(&fake.url("/leads"), concurrency, max_stalled),
        "*/30 * * * * *",
    );
    let mut p = InProcess::open(&d).await;
    // Warm up (connections) with a fault-free round, then script the faults.
    write_spool_file(&d.spool(), "warm.jsonl", 0, concurrency, "warm");
    p.stage().await;
    p.drain().await;
    if let Some(every) = hang_every {
        let hang = Reply::commit_then(200).after(Duration::from_secs(5));
        fake.script((0..n).map(|i| {
            if i % every == every - 1 {
                hang.clone()
            } else {
                Reply::normal()
            }
        }));
    }
    write_spool_file(&d.spool(), "leads.jsonl", 0, n, "bench");
    p.stage().await;
    let t = Instant::now();
    let first = drain_target(&p.ledger, &p.targets[0], "bench", Utc::now())
        .await
        .expect("drain");
    let secs = t.elapsed().as_secs_f64();
    // Why the first drain ended, if not because everything was delivered.
    let down = p
        .ledger
        .target_down(&p.targets[0].name)
        .await
        .ok()
        .flatten()
        .map(|d| d.reason);
    let rest = drain_target(
        &p.ledger,
        &p.targets[0],
        "bench",
        Utc::now() + chrono::Duration::seconds(60),
    )
    .await
    .expect("drain the retries");
    let stored = fake.stored().len();
    (
        first.delivered,
        secs,
        first.delivered + rest.delivered,
        stored,
        down,
    )
}

/// The HTTPS receiver with one request in ten hanging until the client's 1 s timeout, next
/// to the same receiver without faults: a stalled request must not hold up the others.
async fn bench_https_hang() {
    let n = env_usize("LEADSYNC_BENCH_HANG_LEADS", 2_000);
    let conc = 8;
    println!(
        "\n## https-hang: one lead per POST, {conc} in flight, +{} ms per request, 1 s timeout, {n} leads",
        ADDED_LATENCY.as_millis()
    );
    let (ok_first, ok_s, _, _, _) = https_hang_pass(n, conc, None, None).await;
    let ok_rate = ok_first as f64 / ok_s;
    println!(
        "{:<44} {:>9} {:>8} {:>8} {:>9}",
        "receiver", "delivered", "seconds", "leads/s", "of fault-free"
    );
    println!(
        "{:<44} {:>9} {:>8.2} {:>8.0} {:>9}",
        "fault-free", ok_first, ok_s, ok_rate, "100%"
    );
    for (what, max_stalled) in [
        ("10 % hang; max_stalled = 16 (the default)", None),
        ("10 % hang; max_stalled = 8", Some(conc)),
        ("10 % hang; max_stalled = 0 (hard cap)", Some(0)),
    ] {
        let (first, secs, all, stored, down) =
            https_hang_pass(n, conc, Some(10), max_stalled).await;
        let rate = first as f64 / secs;
        println!(
            "{:<44} {:>9} {:>8.2} {:>8.0} {:>12.0}%",
            what,
            first,
            secs,
            rate,
            100.0 * rate / ok_rate
        );
        if let Some(reason) = down.filter(|_| first < n as u64) {
            println!("  ! the pass stopped after {first} of {n}: the target was marked down ({reason}); the rest went after its probe");
        }
        if all as usize != n || stored != n + conc {
            println!("  ! after the retries {all} of {n} delivered; the receiver holds {stored} (warm-up {conc} included)");
        }
    }
    println!("(a pass ends when nothing is due: every lead delivered, the hung ones' retries included, unless the target was marked down)");
}

async fn bench_batch() {
    let rounds = env_usize("LEADSYNC_BENCH_BATCH_ROUNDS", 30);
    println!(
        "\n## batch connectors: the fake answers {} ms after a request arrived, {rounds} rounds of batch × in-flight leads",
        ADDED_LATENCY.as_millis()
    );
    println!(
        "{:<12} {:>6} {:>9} {:>7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "connector",
        "batch",
        "in flight",
        "leads",
        "leads/s",
        "limit",
        "of limit",
        "mean rt",
        "rt limit",
        "of rt",
        "µs CPU"
    );
    // Each row's fake is dropped at the end, not while the next row is timed: freeing the
    // tens of thousands of records it holds is no work of leadsync's.
    let mut retired_sf = Vec::new();
    let mut retired_dv = Vec::new();
    for (batch, conc) in [(200, 1), (200, 4), (200, 10)] {
        let fake = SalesforceFake::start(SalesforceFakeConfig {
            api_limit: 1_000_000_000,
            ..SalesforceFakeConfig::default()
        })
        .await
        .expect("salesforce fake");
        fake.set_round_trip(ADDED_LATENCY);
        let target = format!(
            r#"
kind = "salesforce"
schedule = "*/30 * * * * *"
[connection]
login_url = "{url}"
client_id = "{id}"
client_secret = "{secret}"
[limits]
batch_size = {batch}
concurrency = {conc}
"#,
            url = fake.base_url(),
            id = fake.config().client_id,
            secret = fake.config().client_secret,
        );
        let d = Deployment::new("salesforce", &target, "*/30 * * * * *");
        let n = rounds * batch * conc;
        let (_, _, push) = warm_then_report(&d, batch * conc, n).await;
        print_batch_row("salesforce", batch, conc, &push);
        retired_sf.push(fake);
    }
    for (batch, conc) in [(100, 1), (100, 4), (500, 4)] {
        let fake = FakeDataverse::start().await;
        fake.set_round_trip(ADDED_LATENCY);
        let target = format!(
            r#"
kind = "dynamics"
schedule = "*/30 * * * * *"
[connection]
url = "{url}"
authority = "{url}"
tenant_id = "{tenant}"
client_id = "leadsync-app"
client_secret = "s3cret"
[limits]
batch_size = {batch}
concurrency = {conc}
"#,
            url = fake.base_url(),
            tenant = fake.tenant(),
        );
        let d = Deployment::new("dynamics", &target, "*/30 * * * * *");
        let n = rounds * batch * conc;
        let (_, _, push) = warm_then_report(&d, batch * conc, n).await;
        print_batch_row("dynamics", batch, conc, &push);
        retired_dv.push(fake);
    }
    println!("(limit = in flight × batch ÷ 50 ms; rt limit = in flight × batch ÷ the mean round trip the engine measured, from the connector's push to its answer; µs CPU = this process's CPU per lead over the push, the in-process fakes' share included; timed after one warm-up round)");
}

/// Marketo and HubSpot, whose published call rates bound a backlog's throughput: see the
/// module comment (`paced`).
async fn bench_paced() {
    let calls = env_usize("LEADSYNC_BENCH_PACED_CALLS", 150);
    println!(
        "\n## paced connectors: {} ms added per request, {calls} calls each",
        ADDED_LATENCY.as_millis()
    );
    println!(
        "{:<9} {:>6} {:>9} {:>7} {:>9} {:>12} {:>9} {:>9} {:>14}",
        "connector",
        "batch",
        "in flight",
        "leads",
        "leads/s",
        "rate ceiling",
        "of it",
        "rt limit",
        "max calls/win"
    );
    let mkto = MarketoFake::start(MarketoFakeConfig::default())
        .await
        .expect("marketo fake");
    mkto.set_latency(ADDED_LATENCY);
    let mc = MarketoFakeConfig::default();
    let target = format!(
        r#"
kind = "marketo"
schedule = "*/30 * * * * *"
[connection]
endpoint = "{url}"
client_id = "{id}"
client_secret = "{secret}"
[limits]
batch_size = 300
concurrency = 1
"#,
        url = mkto.base_url(),
        id = mc.client_id,
        secret = mc.client_secret,
    );
    let d = Deployment::new("marketo", &target, "*/30 * * * * *");
    let (
        _,
        _,
        TimedPush {
            report: r,
            secs: push_s,
            ..
        },
    ) = warm_then_report(&d, 300, calls * 300).await;
    print_paced_row(
        "marketo",
        300,
        1,
        &r,
        push_s,
        (100, mc.window),
        mkto.max_calls_in_window(),
    );

    let hs = HubSpotFake::start(HubSpotFakeConfig::default())
        .await
        .expect("hubspot fake");
    hs.set_latency(ADDED_LATENCY);
    let hc = HubSpotFakeConfig::default();
    let target = format!(
        r#"
kind = "hubspot"
schedule = "*/30 * * * * *"
[connection]
base_url = "{url}"
access_token = "{token}"
[limits]
batch_size = 100
concurrency = 4
"#,
        url = hs.base_url(),
        token = hc.token,
    );
    let d = Deployment::new("hubspot", &target, "*/30 * * * * *");
    let (
        _,
        _,
        TimedPush {
            report: r,
            secs: push_s,
            ..
        },
    ) = warm_then_report(&d, 400, calls * 100).await;
    print_paced_row(
        "hubspot",
        100,
        4,
        &r,
        push_s,
        (100, hc.burst_window),
        hs.max_calls_in_window(),
    );
    println!("(rate ceiling = the CRM's calls per window × batch ÷ window; rt limit = in flight × batch ÷ the mean round trip, the pacer's waits included; max calls/win = the most calls the fake counted in one window, limit 100; timed after one warm-up round)");
}

fn print_paced_row(
    connector: &str,
    batch: usize,
    conc: usize,
    r: &PushReport,
    push_s: f64,
    (calls, window): (usize, Duration),
    max_in_window: usize,
) {
    let rate = r.delivered as f64 / push_s;
    let ceiling = (calls * batch) as f64 / window.as_secs_f64();
    let mean_rt = r.request_time.as_secs_f64() / r.requests.max(1) as f64;
    println!(
        "{:<9} {:>6} {:>9} {:>7} {:>9.0} {:>12.0} {:>8.0}% {:>9.0} {:>14}",
        connector,
        batch,
        conc,
        r.delivered,
        rate,
        ceiling,
        100.0 * rate / ceiling,
        (batch * conc) as f64 / mean_rt,
        max_in_window,
    );
}

/// One row of the batch table: leads/s next to in_flight × batch ÷ 50 ms and ÷ the mean
/// round trip the engine measured.
fn print_batch_row(connector: &str, batch: usize, conc: usize, push: &TimedPush) {
    let r = &push.report;
    let rate = r.delivered as f64 / push.secs;
    let limit = (batch * conc) as f64 / ADDED_LATENCY.as_secs_f64();
    let mean_rt = r.request_time.as_secs_f64() / r.requests.max(1) as f64;
    let rt_limit = (batch * conc) as f64 / mean_rt;
    println!(
        "{:<12} {:>6} {:>9} {:>7} {:>9.0} {:>9.0} {:>7.0}% {:>6.1}ms {:>9.0} {:>7.0}% {:>8.1}",
        connector,
        batch,
        conc,
        r.delivered,
        rate,
        limit,
        100.0 * rate / limit,
        mean_rt * 1000.0,
        rt_limit,
        100.0 * rate / rt_limit,
        1e6 * push.cpu_secs / r.delivered.max(1) as f64,
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Start `leadsync run` on a deployment, its log in the deployment folder.
fn start_run(d: &Deployment) -> Child {
    let log = std::fs::File::create(d.dir.path().join("run.log")).expect("log file");
    d.command()
        .arg("run")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start leadsync run")
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// The drop ids of the leads the receiver has stored, with their arrival times.
fn arrivals(fake: &HttpsReceiver) -> Vec<(String, DateTime<Utc>)> {
    fake.posts()
        .iter()
        .filter(|r| r.answered < 300)
        .filter_map(|r| {
            let body = r.json()?;
            let desc = body["Description"].as_str()?.to_string();
            Some((desc, r.arrived_at))
        })
        .collect()
}

async fn bench_freshness() {
    let leads = env_usize("LEADSYNC_BENCH_FRESH_LEADS", 100);
    let secs = env_usize("LEADSYNC_BENCH_FRESH_SECS", 40);
    println!(
        "\n## freshness: `leadsync run`, spool pulled every 1 s, {leads} leads dropped at random times over {secs} s"
    );
    let fake = HttpsReceiver::start(ReceiverOptions::http())
        .await
        .expect("receiver");
    let d = Deployment::new(
        "crm",
        &https_target(&fake.url("/leads"), false, 10, 4),
        "*/1 * * * * *",
    );
    let child = start_run(&d);
    // Ready: a first lead went through.
    write_spool_file(&d.spool(), "warm.jsonl", 0, 1, "warm");
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.request_count() == 0 {
        if Instant::now() > deadline {
            stop(child);
            println!(
                "  ! the daemon delivered nothing in 20 s; see its log:\n{}",
                std::fs::read_to_string(d.dir.path().join("run.log")).unwrap_or_default()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut offsets: Vec<f64> = {
        let mut rng = rand::rng();
        (0..leads)
            .map(|_| rng.random_range(0.0..secs as f64))
            .collect()
    };
    offsets.sort_by(f64::total_cmp);
    let start = Instant::now();
    let mut dropped = Vec::with_capacity(leads);
    for (i, off) in offsets.iter().enumerate() {
        let at = start + Duration::from_secs_f64(*off);
        tokio::time::sleep_until(at.into()).await;
        let tag = format!("fresh{i}");
        let desc = format!("{tag} lead {i}: interested in a 50-seat pilot");
        // write_spool_file renames into place: the drop time is just before the rename.
        dropped.push((desc, Utc::now()));
        write_spool_file(&d.spool(), &format!("{tag}.jsonl"), i, 1, &tag);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = arrivals(&fake);
    while got.len() < leads + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        got = arrivals(&fake);
    }
    stop(child);
    let arrived: std::collections::HashMap<String, DateTime<Utc>> = got.into_iter().collect();
    let mut lat: Vec<f64> = dropped
        .iter()
        .filter_map(|(desc, at)| {
            arrived
                .get(desc)
                .map(|t| (*t - *at).num_microseconds().unwrap_or(0) as f64 / 1e6)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "{:>9} {:>8} {:>8} {:>8} {:>8} {:>13}",
        "delivered", "p50 s", "p90 s", "p99 s", "max s", "target p99 s"
    );
    println!(
        "{:>9} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>13}",
        format!("{}/{leads}", lat.len()),
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(f64::NAN),
        "≤ 2.000"
    );
    println!("(drop = rename into the spool; delivered = arrival at the receiver; same clock)");
}

const INBOX_SECRET: &str = "bench-inbox-secret-0123456789";

/// `clients` clients POST `posts` leads (tag `tag`) between them, each waiting for its
/// answer; returns each POST's (Description, sent at, seconds to a 200) and the wall time.
async fn post_leads(
    url: &str,
    posts: usize,
    clients: usize,
    tag: &str,
) -> (Vec<(String, DateTime<Utc>, f64)>, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, url, tag) = (client.clone(), url.to_string(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in (c..posts).step_by(clients) {
                let body = lead_json(i, &tag);
                let desc = format!("{tag} lead {i}: interested in a 50-seat pilot");
                let (at, t) = (Utc::now(), Instant::now());
                let ok = client
                    .post(&url)
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200);
                if ok {
                    done.push((desc, at, t.elapsed().as_secs_f64()));
                }
            }
            done
        }));
    }
    let mut all = Vec::with_capacity(posts);
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    (all, started.elapsed().as_secs_f64())
}

async fn bench_inbox() {
    let posts = env_usize("LEADSYNC_BENCH_INBOX_POSTS", 2000);
    println!("\n## inbox: `leadsync run` with an https_inbox (HTTP on loopback) and an https target at zero latency");
    let fake = HttpsReceiver::start(ReceiverOptions::http())
        .await
        .expect("receiver");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let d = Deployment::with_source(
        "crm",
        &https_target(&fake.url("/leads"), false, 10, 8),
        &format!(
            r#"
[sources.marketplace]
kind = "https_inbox"
listen = "127.0.0.1:{port}"
secret = "{INBOX_SECRET}"
rate_limit = 0
"#
        ),
    );
    let child = start_run(&d);
    let url = format!("http://127.0.0.1:{port}/leads/{INBOX_SECRET}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            stop(child);
            println!("  ! the inbox did not listen in 30 s");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    post_leads(&url, 50, 4, "warm").await;
    println!(
        "{:>8} {:>7} {:>9} {:>12} {:>12} {:>16} {:>16}",
        "clients",
        "posts",
        "POSTs/s",
        "200 p50 ms",
        "200 p99 ms",
        "delivered p50 ms",
        "delivered p99 ms"
    );
    for (clients, n, tag) in [(1, posts, "one"), (64, posts * 10, "many")] {
        let (done, secs) = post_leads(&url, n, clients, tag).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = arrivals(&fake);
        while got.iter().filter(|(d, _)| d.starts_with(tag)).count() < done.len()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            got = arrivals(&fake);
        }
        let arrived: std::collections::HashMap<String, DateTime<Utc>> = got.into_iter().collect();
        let mut answer: Vec<f64> = done.iter().map(|(_, _, s)| s * 1000.0).collect();
        answer.sort_by(f64::total_cmp);
        let mut delivered: Vec<f64> = done
            .iter()
            .filter_map(|(desc, at, _)| {
                arrived
                    .get(desc)
                    .map(|t| (*t - *at).num_microseconds().unwrap_or(0) as f64 / 1e3)
            })
            .collect();
        delivered.sort_by(f64::total_cmp);
        println!(
            "{:>8} {:>7} {:>9.0} {:>12.2} {:>12.2} {:>16.1} {:>16.1}",
            clients,
            format!("{}/{n}", done.len()),
            done.len() as f64 / secs,
            percentile(&answer, 50.0),
            percentile(&answer, 99.0),
            percentile(&delivered, 50.0),
            percentile(&delivered, 99.0),
        );
    }
    stop(child);
    println!("(goals: ≥ 2,000 durable POSTs/s with 64 clients on 2 cores; p99 POST → delivered ≤ 100 ms; 200 = after the SQLite commit, synchronous=FULL; the clients share the two cores)");
}

async fn bench_ledger() {
    let n = env_usize("LEADSYNC_BENCH_LEDGER_LEADS", 100_000);
    println!("\n## ledger: SQLite (WAL, synchronous=FULL), {n} leads, one delivery each");
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = leadsync::ledger::sqlite::SqliteLedger::open(&dir.path().join("ledger.db"))
        .await
        .expect("ledger");
    let leads: Vec<StagedLead> = (0..n)
        .map(|i| {
            let record =
                leadsync_core::lead::parse_record(lead_json(i, "ledger").as_bytes()).expect("json");
            let lead = record.read_lead(format!("spool:{i:016x}")).expect("lead");
            StagedLead {
                deliveries: vec![PlannedDelivery {
                    target: "crm".into(),
                    idempotency_key: idempotency_key("crm", KeyScope::Lead, &lead),
                    not_before: None,
                }],
                lead,
            }
        })
        .collect();
    let t = Instant::now();
    let mut cursor = 0;
    for chunk in leads.chunks(leadsync::pipeline::STAGE_BATCH) {
        cursor += chunk.len();
        ledger
            .stage(StageBatch {
                source: "bench".into(),
                leads: chunk.to_vec(),
                quarantined: Vec::new(),
                cursor: Some(cursor.to_string()),
            })
            .await
            .expect("stage");
    }
    let stage_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let push_cpu = own_cpu_seconds();
    let (mut claim_s, mut claim_cpu) = (0.0, 0.0);
    let mut done = 0;
    loop {
        let (c, c_cpu) = (Instant::now(), own_cpu_seconds());
        let claimed = ledger
            .claim("crm", Utc::now(), 1600, Duration::from_secs(60), "bench")
            .await
            .expect("claim");
        claim_s += c.elapsed().as_secs_f64();
        claim_cpu += own_cpu_seconds() - c_cpu;
        if claimed.is_empty() {
            break;
        }
        done += claimed.len();
        let outcomes: Vec<RecordedOutcome> = claimed
            .iter()
            .map(|d| RecordedOutcome::Delivered {
                delivery_id: d.delivery_id,
                crm_ref: None,
            })
            .collect();
        ledger.record(&outcomes, "bench").await.expect("record");
    }
    let push_s = t.elapsed().as_secs_f64();
    let push_cpu = own_cpu_seconds() - push_cpu;
    let per_lead = |cpu: f64| 1e6 * cpu / done.max(1) as f64;
    println!(
        "{:<44} {:>10} {:>9} {:>12}",
        "operation", "leads/s", "seconds", "µs CPU/lead"
    );
    println!(
        "{:<44} {:>10.0} {:>9.2}",
        "stage (batches of 500, one transaction each)",
        n as f64 / stage_s,
        stage_s
    );
    println!(
        "{:<44} {:>10.0} {:>9.2} {:>12.1}",
        "claim (rounds of 1,600, leases + lead JSON)",
        done as f64 / claim_s,
        claim_s,
        per_lead(claim_cpu)
    );
    println!(
        "{:<44} {:>10.0} {:>9.2} {:>12.1}",
        "claim + record delivered",
        done as f64 / push_s,
        push_s,
        per_lead(push_cpu)
    );
}

/// What /proc says about a process: (VmRSS KiB, VmHWM KiB, CPU seconds).
fn proc_sample(pid: u32, ticks: f64) -> Option<(u64, u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks;
    Some((kib("VmRSS:")?, kib("VmHWM:")?, cpu))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A minimal receiver for big runs: answers 200 at once and counts leads (objects in the
/// array) without keeping anything.
async fn counting_receiver() -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    let app = axum::Router::new().route(
        "/leads",
        axum::routing::post(move |body: axum::body::Bytes| {
            let c = Arc::clone(&c);
            async move {
                let needle = b"{\"UserDetails\"";
                let n = body.windows(needle.len()).filter(|w| w == needle).count();
                c.fetch_add(n as u64, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/leads"), count)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn bench_rss() {
    let n = env_usize("LEADSYNC_BENCH_RSS_LEADS", 250_000);
    println!("\n## peak RSS: `leadsync sync --once` through a backlog of {n} leads");
    let (url, count) = counting_receiver().await;
    let d = Deployment::new("crm", &https_target(&url, true, 100, 4), "*/30 * * * * *");
    let t = Instant::now();
    write_spool_file(&d.spool(), "backlog.jsonl", 0, n, "backlog");
    let size = std::fs::metadata(d.spool().join("backlog.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "  (generated {:.0} MiB of .jsonl in {:.1} s)",
        size as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    let ticks = clock_ticks();
    let t = Instant::now();
    let mut child = d
        .command()
        .args(["sync", "--once", "--wait", "0s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sync --once");
    let pid = child.id();
    let mut last = (0, 0, 0.0);
    let status = loop {
        if let Some(s) = proc_sample(pid, ticks) {
            last = s;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let wall = t.elapsed().as_secs_f64();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let db = d.dir.path().join("state/ledger.db");
    let db_size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    println!(
        "{:>9} {:>11} {:>8} {:>8} {:>9} {:>13} {:>10} {:>10}",
        "leads", "delivered", "wall s", "leads/s", "CPU s", "peak RSS MiB", "target", "ledger MiB"
    );
    println!(
        "{:>9} {:>11} {:>8.1} {:>8.0} {:>9.1} {:>13.1} {:>10} {:>10.0}",
        n,
        count.load(Ordering::Relaxed),
        wall,
        n as f64 / wall,
        last.2,
        mib(last.1),
        "≤ 64",
        db_size as f64 / 1048576.0
    );
    if !status.success() {
        println!(
            "  ! sync --once exited {status}:\n{}",
            err.chars().take(2000).collect::<String>()
        );
    }
    println!("(https target, batch arrays of 100 × 4 in flight, receiver at zero latency; VmHWM sampled every 50 ms)");
}

async fn bench_idle() {
    let secs = env_usize("LEADSYNC_BENCH_IDLE_SECS", 60);
    println!("\n## idle: `leadsync run`, spool pulled every 1 s, nothing to do, {secs} s");
    let (url, _count) = counting_receiver().await;
    let d = Deployment::new("crm", &https_target(&url, false, 100, 4), "*/1 * * * * *");
    let ticks = clock_ticks();
    let child = start_run(&d);
    let pid = child.id();
    // Settle: ledger open, scheduler started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let Some(first) = proc_sample(pid, ticks) else {
        println!("  ! the daemon is not running; see its log");
        stop(child);
        return;
    };
    tokio::time::sleep(Duration::from_secs(secs as u64)).await;
    let last = proc_sample(pid, ticks).unwrap_or(first);
    stop(child);
    println!(
        "{:>8} {:>13} {:>13} {:>10} {:>11} {:>13}",
        "window s", "RSS start MiB", "RSS end MiB", "peak MiB", "CPU s", "CPU % of 1 core"
    );
    println!(
        "{:>8} {:>13.1} {:>13.1} {:>10.1} {:>11.2} {:>13.2}",
        secs,
        mib(first.0),
        mib(last.0),
        mib(last.1),
        last.2 - first.2,
        100.0 * (last.2 - first.2) / secs as f64
    );
    println!(
        "(target: idle RSS ≤ 15 MiB; CPU = utime + stime over the window, after 3 s of start-up)"
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs benches without `--bench`: nothing to do then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let parts: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let all = [
        "https",
        "https-hang",
        "batch",
        "paced",
        "freshness",
        "inbox",
        "ledger",
        "rss",
        "idle",
    ];
    for p in &parts {
        if !all.contains(p) {
            eprintln!("unknown part {p:?}; parts: {}", all.join(", "));
            std::process::exit(2);
        }
    }
    let want = |p: &str| parts.is_empty() || parts.contains(&p);
    println!(
        "leadsync e2e benchmarks on {} ({} cores)",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if want("https") {
        bench_https().await;
    }
    if want("https-hang") {
        bench_https_hang().await;
    }
    if want("batch") {
        bench_batch().await;
    }
    if want("paced") {
        bench_paced().await;
    }
    if want("freshness") {
        bench_freshness().await;
    }
    if want("inbox") {
        bench_inbox().await;
    }
    if want("ledger") {
        bench_ledger().await;
    }
    if want("rss") {
        bench_rss().await;
    }
    if want("idle") {
        bench_idle().await;
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
