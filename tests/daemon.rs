//! `leadsync run` as systemd runs it: notify messages, the watchdog, SIGHUP reloads (good
//! and broken), the push that follows a pull, and the admin endpoint's metrics.

mod common;
use common::{eventually, free_port, text, Deployment};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn stop(mut child: Child) -> std::process::Output {
    signal(&child, "-TERM");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("daemon did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn drop_lead(d: &Deployment, name: &str, first: &str) {
    // Written under a dot name and renamed into place, as the spool rule asks.
    let tmp = d.spool().join(format!(".{name}"));
    let mut f = std::fs::File::create(&tmp).unwrap();
    writeln!(f, r#"{{"UserDetails": {{"FirstName": "{first}", "Email": "{first}@example.com"}}, "LeadSource": "SPZA", "ActionCode": "PLT", "OfferTitle": "Contoso"}}"#).unwrap();
    drop(f);
    std::fs::rename(tmp, d.spool().join(name)).unwrap();
}

fn daemon(d: &Deployment, env: &[(&str, &str)]) -> Child {
    let mut c = d.command();
    c.arg("run").stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

#[test]
fn notify_ready_watchdog_status_stopping_in_order() {
    let d = Deployment::new();
    let sock_path = d.root().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let child = daemon(
        &d,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let read = |seen: &mut Vec<String>, buf: &mut [u8]| {
        let n = sock.recv(buf).expect("a notification");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        seen.extend(msg.lines().map(String::from));
    };
    while !seen.iter().any(|m| m == "WATCHDOG=1") || !seen.iter().any(|m| m.starts_with("STATUS="))
    {
        read(&mut seen, &mut buf);
    }
    let out = stop(child);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    while let Ok(n) = sock.recv(&mut buf) {
        seen.extend(String::from_utf8_lossy(&buf[..n]).lines().map(String::from));
        if seen.iter().any(|m| m == "STOPPING=1") {
            break;
        }
    }
    let pos = |m: &str| {
        seen.iter()
            .position(|s| s == m)
            .unwrap_or_else(|| panic!("{m} not sent: {seen:?}"))
    };
    assert!(pos("READY=1") < pos("WATCHDOG=1"), "{seen:?}");
    assert!(pos("WATCHDOG=1") < pos("STOPPING=1"), "{seen:?}");
    let status = seen.iter().find(|m| m.starts_with("STATUS=")).unwrap();
    assert!(
        status.contains("pending") && status.contains("delivered"),
        "{status}"
    );
}

#[test]
fn a_pull_that_stages_leads_pushes_at_once() {
    // The target's own schedule fires once a year: a lead can only arrive through the push
    // that follows the (every-second) pull.
    let d = Deployment::with_target(
        "kind = \"file\"\nschedule = \"0 0 0 1 1 *\"\n[connection]\npath = \"../../out/leads.csv\"\n",
    );
    let child = daemon(&d, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let dropped = Instant::now();
    drop_lead(&d, "one.jsonl", "Fresh");
    eventually(Duration::from_secs(30), "the lead in the CSV", || {
        d.csv_rows().len() == 1
    });
    eprintln!(
        "dropped -> delivered in {:?} (pull every 1 s)",
        dropped.elapsed()
    );
    let out = stop(child);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(d.csv_rows()[0]["First Name"], "Fresh");
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_running_on_a_broken_one() {
    let d = Deployment::new();
    let child = daemon(&d, &[]);
    drop_lead(&d, "a.jsonl", "Before");
    eventually(Duration::from_secs(30), "first lead", || {
        d.csv_rows().len() == 1
    });

    // A broken target file, then SIGHUP: the old configuration keeps working.
    let target = d.root().join("config/targets/csv.toml");
    let good = std::fs::read_to_string(&target).unwrap();
    std::fs::write(&target, format!("{good}\nbogus_key = 1\n")).unwrap();
    signal(&child, "-HUP");
    std::thread::sleep(Duration::from_millis(500));
    drop_lead(&d, "b.jsonl", "WhileBroken");
    eventually(Duration::from_secs(30), "lead under the old config", || {
        d.csv_rows().len() == 2
    });

    // A valid change (a second target), then SIGHUP: applied.
    std::fs::write(&target, &good).unwrap();
    std::fs::write(
        d.root().join("config/targets/jsonl.toml"),
        "kind = \"file\"\nschedule = \"*/1 * * * * *\"\n[connection]\npath = \"../../out/leads.jsonl\"\nformat = \"jsonl\"\n",
    )
    .unwrap();
    signal(&child, "-HUP");
    std::thread::sleep(Duration::from_millis(500));
    drop_lead(&d, "c.jsonl", "AfterReload");
    let jsonl = d.root().join("out/leads.jsonl");
    eventually(Duration::from_secs(30), "lead in the new target", || {
        std::fs::read_to_string(&jsonl)
            .map(|t| t.contains("AfterReload"))
            .unwrap_or(false)
    });
    let out = stop(child);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("configuration reload refused"), "{logs}");
    assert!(
        logs.contains("bogus_key"),
        "the refusal names the key: {logs}"
    );
    assert!(logs.contains("configuration reloaded"), "{logs}");
    assert_eq!(d.csv_rows().len(), 3);
}

#[test]
fn metrics_describe_a_sync() {
    let port = free_port();
    let d = Deployment::new();
    let main = std::fs::read_to_string(d.config()).unwrap();
    std::fs::write(
        d.config(),
        format!("{main}\n[admin]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/leads");
    let child = daemon(&d, &[]);
    common::copy_dir(&examples, &d.spool());
    // 10 example leads, one a marketplace test lead the default filter skips.
    eventually(Duration::from_secs(30), "9 leads delivered", || {
        d.csv_rows().len() == 9
    });
    let get = |path: &str| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let (code, body) = get("/metrics");
    assert_eq!(code, 200, "{body}");
    let value = |series: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("series {series} missing:\n{body}"))
    };
    assert_eq!(value("leadsync_leads_staged_total{source=\"inbox\"}"), 10.0);
    assert_eq!(
        value("leadsync_deliveries_total{target=\"csv\",outcome=\"delivered\"}"),
        9.0
    );
    assert_eq!(value("leadsync_pending{target=\"csv\"}"), 0.0);
    assert_eq!(value("leadsync_dead{target=\"csv\"}"), 0.0);
    assert_eq!(value("leadsync_target_throttled{target=\"csv\"}"), 0.0);
    assert_eq!(
        value("leadsync_oldest_pending_age_seconds{target=\"csv\"}"),
        0.0
    );
    assert_eq!(value("leadsync_followup_overdue{target=\"csv\"}"), 0.0);
    assert_eq!(
        value("leadsync_delivery_latency_seconds_count{target=\"csv\"}"),
        9.0
    );
    assert_eq!(value("leadsync_target_up{target=\"csv\"}"), 1.0);
    assert!(value("leadsync_source_last_success_timestamp_seconds{source=\"inbox\"}") > 1.7e9);
    assert!(
        body.lines().any(|l| l.starts_with("leadsync_build_info{")
            && l.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && l.contains("commit=\"")),
        "{body}"
    );
    assert!(value("process_resident_memory_bytes") > 0.0, "{body}");
    assert!(!body.contains("example.com"), "no personal data in metrics");
    let (code, _) = get("/healthz");
    assert_eq!(code, 200);
    eventually(
        Duration::from_secs(30),
        "/readyz after the target check",
        || get("/readyz").0 == 200,
    );
    let out = stop(child);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
