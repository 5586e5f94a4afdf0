//! A target that is down, seen from the binary: `sync --once` against an HTTPS target whose
//! port is closed writes a bounded log, keeps every lead pending (none dead, no attempt
//! charged) and exits 75; the daemon against a Salesforce org that refuses its client secret
//! shows the target down in `/readyz`, `/metrics` and `status`, and a fixed secret plus
//! SIGHUP delivers everything.

mod common;
use common::{text, Daemon, Deployment};
use std::time::{Duration, Instant};

/// `n` marketplace leads, one JSON object a line.
fn leads(n: usize) -> String {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "UserDetails": {"FirstName": "Ann", "LastName": format!("Lee{i}"),
                    "Email": format!("ann{i}@contoso.example"), "Company": "Contoso"},
                "LeadSource": "AzureMarketplace", "ActionCode": "INS",
                "OfferTitle": "Contoso CRM", "Description": format!("lead {i}")})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn sync_against_a_closed_port_keeps_every_lead_pending_with_a_short_log() {
    let d = Deployment::with_target(&format!(
        "kind = \"https\"\n[connection]\nurl = \"http://127.0.0.1:{}/hook\"\nallow_http = true\n\
         [limits]\nconcurrency = 8\n[retry]\nmin_delay = \"100ms\"\nmax_delay = \"5m\"\n",
        closed_port()
    ));
    std::fs::write(d.spool().join("leads.jsonl"), leads(2000)).unwrap();
    let out = d.run(&["sync", "--once", "--wait", "20s"]);
    let log_lines = String::from_utf8_lossy(&out.stderr).lines().count();
    eprintln!("{log_lines} log lines");
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(log_lines <= 200, "{log_lines} log lines:\n{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("target down"), "{stderr}");
    assert!(stderr.contains("connection_refused"), "{stderr}");

    let status = d.status_json();
    let t = &status["targets"][0];
    assert_eq!(t["pending"], 2000, "{status}");
    assert_eq!(t["dead"], 0, "{status}");
    assert_eq!(t["down_reason"], "connection_refused", "{status}");
    // No lead was charged an attempt for the target's outage.
    let dead = d.run(&["dead-letters", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&dead.stdout).trim(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_shows_a_refused_secret_as_down_and_a_reload_with_the_fix_delivers() {
    use leadsync_fakes::salesforce::{SalesforceFake, SalesforceFakeConfig};
    let fake = SalesforceFake::start(SalesforceFakeConfig::default())
        .await
        .unwrap();
    let admin = format!("127.0.0.1:{}", closed_port());
    let d = Deployment::with_target(&format!(
        "kind = \"salesforce\"\nschedule = \"0 0 0 1 1 *\"\n[connection]\nlogin_url = \"{}\"\n\
         client_id = \"{}\"\nclient_secret = {{ file = \"../secret.txt\" }}\n\
         [retry]\nmin_delay = \"100ms\"\nmax_delay = \"2s\"\n",
        fake.base_url(),
        fake.config().client_id
    ));
    let main = std::fs::read_to_string(d.config()).unwrap();
    std::fs::write(
        d.config(),
        format!("{main}\n[admin]\nlisten = \"{admin}\"\n"),
    )
    .unwrap();
    let secret = d.root().join("config/secret.txt");
    std::fs::write(&secret, "wrong").unwrap();
    std::fs::write(d.spool().join("leads.jsonl"), leads(500)).unwrap();

    let mut cmd = d.command();
    cmd.arg("run");
    let child = Daemon::spawn(cmd);
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = format!("http://{admin}{path}");
        async move {
            match http.get(url).send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(_) => (0, String::new()),
            }
        }
    };
    // Down: /readyz says so, the metric is 0, no lead is dead.
    let deadline = Instant::now() + Duration::from_secs(30);
    let readyz = loop {
        let (code, body) = get("/readyz").await;
        if code == 503 && body.contains("down") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "never reported down: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(readyz.contains("token_invalid_client"), "{readyz}");
    let (_, metrics) = get("/metrics").await;
    assert!(
        metrics.contains("leadsync_target_up{target=\"csv\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("leadsync_target_circuit_opened_total{target=\"csv\",reason=\"token_invalid_client\"} 1"),
        "{metrics}"
    );
    let status = d.status_json();
    assert_eq!(status["targets"][0]["dead"], 0, "{status}");
    assert_eq!(status["targets"][0]["pending"], 500, "{status}");
    assert!(status["targets"][0]["down_since"].is_string(), "{status}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let probes = fake.token_request_count();

    // The operator fixes the secret and reloads.
    std::fs::write(&secret, &fake.config().client_secret).unwrap();
    let pid = child.id();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.records().len() < 500 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if fake.records().len() < 500 {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap();
        panic!(
            "{} of 500 delivered; status {}\n{out}",
            fake.records().len(),
            d.status_json(),
        );
    }
    let (code, _) = get("/readyz").await;
    assert_eq!(code, 200);
    let status = d.status_json();
    assert_eq!(status["targets"][0]["delivered"], 500, "{status}");
    assert!(status["targets"][0]["down_since"].is_null(), "{status}");
    assert!(probes <= 6, "{probes} token requests while down");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap();
    let log = out;
    assert_eq!(log.matches("\"target down").count(), 1, "{log}");
    assert!(
        log.contains("target back up") || log.contains("configuration reloaded"),
        "{log}"
    );
}
