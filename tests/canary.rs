//! A target's canary: a marked test lead sent end to end on the target's own schedule, always
//! under the same key (one CRM record, updated), its success time in `/metrics`; a failing
//! canary turns `/readyz` red.

mod common;
use common::{Daemon, Deployment};
use leadsync_fakes::https_receiver::{HttpsReceiver, ReceiverOptions, Reply};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_arrives_on_its_schedule_and_a_failing_one_makes_readyz_red() {
    let rx = HttpsReceiver::start(ReceiverOptions::http()).await.unwrap();
    let admin = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let d = Deployment::with_target(&format!(
        "kind = \"https\"\ncanary = \"*/1 * * * * *\"\n[connection]\nurl = \"{}\"\nallow_http = true\n",
        rx.url("/hook")
    ));
    let main = std::fs::read_to_string(d.config()).unwrap();
    std::fs::write(
        d.config(),
        format!("{main}\n[admin]\nlisten = \"{admin}\"\n"),
    )
    .unwrap();
    let mut cmd = d.command();
    cmd.arg("run");
    let daemon = Daemon::spawn(cmd);
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let (http, url) = (http.clone(), format!("http://{admin}{path}"));
        async move {
            match http.get(url).send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(_) => (0, String::new()),
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.posts().len() < 3 {
        assert!(Instant::now() < deadline, "{} canaries", rx.posts().len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posts = rx.posts();
    let keys: std::collections::HashSet<_> = posts
        .iter()
        .map(|p| p.header("idempotency-key").unwrap_or_default().to_string())
        .collect();
    assert_eq!(keys.len(), 1, "one key: the CRM holds one canary record");
    assert_eq!(rx.stored().len(), 1);
    let body = posts[0].json().unwrap().to_string();
    assert!(body.contains("MSFT_TEST_leadsync"), "{body}");
    let (_, metrics) = get("/metrics").await;
    let last = metrics
        .lines()
        .find(|l| l.starts_with("leadsync_canary_last_success_timestamp_seconds{target=\"csv\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no canary metric:\n{metrics}"));
    assert!(last > 1.7e9, "{last}");
    assert!(metrics.contains("leadsync_canary_latency_seconds{target=\"csv\"}"));
    let (code, _) = get("/readyz").await;
    assert_eq!(code, 200);

    // The receiver breaks: the next canary fails and the target is not ready.
    rx.fail_next(1_000, Reply::status(500));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get("/readyz").await;
        if code == 503 {
            assert!(body.contains("canary failed"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "readyz stayed {code}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(daemon);
}
