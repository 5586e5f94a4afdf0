//! Telling people, with the real binary: a hot lead POSTed to the inbox under `run` becomes
//! one e-mail at a real SMTP server (the test's `leadsync_fakes::smtp`, STARTTLS and a
//! login) and a Teams card, cold and DNC leads do not; 500 leads with a one-minute digest
//! are one e-mail listing them all; a restart sends nothing twice; an SMTP server refusing
//! the login marks the target down; and `[alerts]` tells an operator once when a target goes
//! down, once when it has dead letters, and once when it is resolved.

mod common;
use common::{eventually, free_port, text, Daemon, Deployment};

use leadsync_fakes::chat_webhook::{ChatFlavor, ChatWebhookFake};
use leadsync_fakes::https_receiver::{HttpsReceiver, ReceiverOptions, Reply};
use leadsync_fakes::smtp::{SmtpFake, SmtpFakeConfig};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SECRET: &str = "inbox-secret-0123456789abcdef";

/// An SMTP fake with STARTTLS and a login, its CA written beside the target files.
async fn smtp(d: &Deployment) -> SmtpFake {
    let fake = SmtpFake::start(SmtpFakeConfig::starttls("sales-bot", "s3cret-password"))
        .await
        .unwrap();
    std::fs::write(
        d.root().join("config/smtp-ca.pem"),
        fake.ca_certificate_pem(),
    )
    .unwrap();
    fake
}

/// The `[connection]` keys of an e-mail to `fake` (files relative to `config/`).
fn email_connection(fake: &SmtpFake, ca: &str) -> String {
    format!(
        r#"host = "localhost"
port = {port}
tls = "starttls"
username = "sales-bot"
password = {{ env = "SMTP_TEST_PASSWORD" }}
from = "leadsync <leads@contoso.example>"
to = ["sales@contoso.example"]
ca_file = "{ca}""#,
        port = fake.port()
    )
}

/// `[alerts]` (with `settings`, TOML lines) appended to the main file, with one e-mail
/// channel `ops` through `fake` to ops@.
fn alert_by_email(d: &Deployment, fake: &SmtpFake, settings: &str) {
    let main = std::fs::read_to_string(d.config()).unwrap();
    std::fs::write(
        d.config(),
        format!(
            "{main}\n[alerts]\n{settings}[alerts.channels.ops]\nkind = \"email\"\n{}\n",
            email_connection(fake, "smtp-ca.pem").replace("sales@", "ops@")
        ),
    )
    .unwrap();
}

fn lead(i: usize, action: &str) -> String {
    serde_json::json!({
        "UserDetails": {"FirstName": format!("Ann{i}"), "LastName": "Smith",
                        "Email": format!("ann{i}@contoso.example"), "Company": "Contoso",
                        "Phone": "+1 555 0100"},
        "LeadSource": "AzureMarketplace", "ActionCode": action,
        "OfferTitle": "Contoso CRM", "Description": format!("lead {i}")
    })
    .to_string()
}

fn run(d: &Deployment) -> Daemon {
    let mut c = d.command();
    c.arg("run").env("SMTP_TEST_PASSWORD", "s3cret-password");
    Daemon::spawn(c)
}

async fn post(port: u16, body: String) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/leads/{SECRET}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Hot leads (INS, Create, StartTestDrive) to e-mail and Teams at once; cold and DNC leads
/// to neither. The POST's `200` is the stage commit: from there to the e-mail is timed and
/// printed (the README's figure), not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_lead_is_one_email_and_one_card_at_once_and_a_restart_sends_nothing_twice() {
    let port = free_port();
    let d = Deployment::with_sources(
        &format!(
            "[sources.marketplace]\nkind = \"https_inbox\"\nlisten = \"127.0.0.1:{port}\"\npath = \"/leads\"\nsecret = \"{SECRET}\"\n"
        ),
        "kind = \"file\"\nschedule = \"0 0 0 1 1 *\"\n[connection]\npath = \"../../out/leads.jsonl\"\nformat = \"jsonl\"\n",
    );
    let mail = smtp(&d).await;
    let teams = ChatWebhookFake::start(ChatFlavor::Teams).await.unwrap();
    let hot_filter = "[filter]\nactions = [\"INS\", \"Create\", \"StartTestDrive\"]\ndnc = \"skip\"\ntest_leads = \"skip\"\n";
    std::fs::write(
        d.root().join("config/targets/hot-mail.toml"),
        format!(
            "kind = \"email\"\nschedule = \"0 0 0 1 1 *\"\n[connection]\n{}\n{hot_filter}",
            email_connection(&mail, "../smtp-ca.pem")
        ),
    )
    .unwrap();
    std::fs::write(
        d.root().join("config/targets/hot-teams.toml"),
        format!(
            "kind = \"teams\"\nschedule = \"0 0 0 1 1 *\"\n[connection]\nurl = \"{}\"\n{hot_filter}",
            teams.url()
        ),
    )
    .unwrap();
    let mut daemon = run(&d);
    eventually(Duration::from_secs(60), "the inbox listening", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert_eq!(post(port, lead(1, "PLT")).await, 200);
    assert_eq!(post(port, lead(2, "DNC")).await, 200);
    assert_eq!(post(port, lead(3, "INS")).await, 200);
    let staged = Instant::now();
    eventually(Duration::from_secs(20), "the hot lead's e-mail", || {
        mail.message_count() >= 1
    });
    let took = staged.elapsed();
    eventually(Duration::from_secs(20), "the hot lead's card", || {
        !teams.accepted().is_empty()
    });
    eprintln!("notify: staged → e-mail at the SMTP server in {took:?}");
    std::thread::sleep(Duration::from_secs(2));
    let messages = mail.messages();
    assert_eq!(messages.len(), 1, "only the hot lead");
    let m = &messages[0];
    assert_eq!(
        m.subject().as_deref(),
        Some("New marketplace lead: Ann3 Smith, Contoso (INS, Contoso CRM)")
    );
    let body = m.text_body().unwrap();
    assert!(
        body.contains("E-mail: ann3@contoso.example") && body.contains("Phone: +1 555 0100"),
        "{body}"
    );
    assert!(m.tls && m.authenticated_as.as_deref() == Some("sales-bot"));
    assert_eq!(teams.accepted().len(), 1);
    assert!(teams.texts()[0].join(" ").contains("Ann3 Smith"));
    // The log names no one.
    assert!(!daemon.log().contains("ann3@contoso.example"));

    // A crash and a restart: nothing is sent again.
    daemon.kill();
    let daemon = run(&d);
    eventually(Duration::from_secs(60), "the inbox listening again", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(mail.message_count(), 1);
    assert_eq!(teams.accepted().len(), 1);
    drop(daemon);
}

/// 500 leads with `digest = "1m"`: they come due together at the end of the minute they
/// were staged in, and go out as one e-mail that lists every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_leads_with_a_one_minute_digest_are_one_email() {
    let d = Deployment::new();
    let mail = smtp(&d).await;
    std::fs::write(
        d.root().join("config/targets/csv.toml"),
        format!(
            "kind = \"email\"\ndigest = \"1m\"\n[connection]\n{}\n[limits]\nbatch_size = 1000\n",
            email_connection(&mail, "../smtp-ca.pem")
        ),
    )
    .unwrap();
    let lines: Vec<String> = (0..500).map(|i| lead(i, "PLT")).collect();
    std::fs::write(d.spool().join("burst.jsonl"), lines.join("\n")).unwrap();
    let mut cmd = d.command();
    cmd.args(["sync", "--once", "--wait", "90s"])
        .env("SMTP_TEST_PASSWORD", "s3cret-password");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let messages = mail.messages();
    assert_eq!(messages.len(), 1, "one digest");
    assert_eq!(
        messages[0].subject().as_deref(),
        Some("500 new marketplace leads")
    );
    let body = messages[0].text_body().unwrap();
    let listed = (0..500)
        .filter(|i| body.contains(&format!("ann{i}@contoso.example")))
        .count();
    assert_eq!(listed, 500);
    assert_eq!(d.status_json()["targets"][0]["delivered"], 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_marks_the_target_down_and_check_names_it() {
    let d = Deployment::new();
    let mail = smtp(&d).await;
    std::fs::write(
        d.root().join("config/targets/csv.toml"),
        format!(
            "kind = \"email\"\n[connection]\n{}\n",
            email_connection(&mail, "../smtp-ca.pem")
        ),
    )
    .unwrap();
    std::fs::write(d.spool().join("one.jsonl"), lead(1, "INS")).unwrap();
    let mut cmd = d.command();
    cmd.args(["check", "--connect"])
        .env("SMTP_TEST_PASSWORD", "wrong-password");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("smtp_auth"), "{stdout}");
    assert!(!text(&out).contains("wrong-password"));
    let mut cmd = d.command();
    cmd.args(["sync", "--once", "--wait", "3s"])
        .env("SMTP_TEST_PASSWORD", "wrong-password");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    // Still pending, nobody charged: exit 75 (work left), the target down.
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let status = d.status_json();
    assert_eq!(status["targets"][0]["pending"], 1, "{status}");
    assert_eq!(status["targets"][0]["dead"], 0, "{status}");
    assert!(
        status["targets"][0]["down_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("smtp_auth"),
        "{status}"
    );
    assert!(mail.messages().is_empty());
}

/// `check --connect` opens each `[alerts]` channel's SMTP session and logs in (nothing
/// sent): a refused login fails the check naming the channel and the code, never the
/// password; the right one passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_logs_in_to_each_alert_channel_without_sending() {
    let d = Deployment::new();
    let mail = smtp(&d).await;
    alert_by_email(&d, &mail, "");
    let check = |password: &'static str| {
        let mut cmd = d.command();
        cmd.args(["check", "--connect"])
            .env("SMTP_TEST_PASSWORD", password);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let refused = check("wrong-password").await.unwrap();
    let stdout = String::from_utf8_lossy(&refused.stdout).to_string();
    assert_ne!(refused.status.code(), Some(0), "{}", text(&refused));
    assert!(
        stdout.contains("alert channel ops (email): FAILED") && stdout.contains("smtp_auth"),
        "{stdout}"
    );
    assert!(!text(&refused).contains("wrong-password"));
    let passed = check("s3cret-password").await.unwrap();
    let stdout = String::from_utf8_lossy(&passed.stdout).to_string();
    assert_eq!(passed.status.code(), Some(0), "{}", text(&passed));
    assert!(stdout.contains("alert channel ops (email): ok"), "{stdout}");
    assert!(stdout.contains("logged in (nothing sent)"), "{stdout}");
    assert!(mail.messages().is_empty(), "check sends nothing");
}

/// `[alerts]` to an e-mail channel: a target down → one alert; still down → no repeat
/// within `repeat_after`; a dead letter → one alert naming the code; the target fixed by a
/// reload → one "resolved".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_tell_a_target_down_once_dead_letters_once_and_the_recovery_once() {
    let closed = free_port();
    let d = Deployment::new();
    let mail = smtp(&d).await;
    alert_by_email(&d, &mail, "check_every = \"1s\"\nrepeat_after = \"1h\"\n");
    let hook = |url: &str| {
        format!("kind = \"https\"\nschedule = \"*/1 * * * * *\"\n[connection]\nurl = \"{url}\"\nallow_http = true\n[retry]\nmin_delay = \"100ms\"\nmax_delay = \"1s\"\n")
    };
    std::fs::write(
        d.root().join("config/targets/csv.toml"),
        hook(&format!("http://127.0.0.1:{closed}/hook")),
    )
    .unwrap();
    let lines: Vec<String> = (0..3).map(|i| lead(i, "INS")).collect();
    std::fs::write(d.spool().join("leads.jsonl"), lines.join("\n")).unwrap();
    let daemon = run(&d);
    eventually(Duration::from_secs(30), "the down alert", || {
        mail.message_count() >= 1
    });
    std::thread::sleep(Duration::from_secs(4));
    let first = mail.messages();
    assert_eq!(first.len(), 1, "one alert, no repeat within repeat_after");
    let subject = first[0].subject().unwrap_or_default();
    assert_eq!(subject, "[leadsync] target csv is down", "{subject}");
    assert_eq!(first[0].rcpt_to, vec!["ops@contoso.example".to_string()]);
    assert!(first[0].text_body().unwrap().contains("connection_refused"));

    // The fix: a receiver that refuses the first lead (a dead letter) and takes the rest.
    let rx = HttpsReceiver::start(ReceiverOptions::http()).await.unwrap();
    rx.script([Reply::status(400)]);
    std::fs::write(
        d.root().join("config/targets/csv.toml"),
        hook(&rx.url("/hook")),
    )
    .unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &daemon.id()])
        .status()
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the resolved and dead-letter alerts",
        || mail.message_count() >= 3,
    );
    std::thread::sleep(Duration::from_secs(3));
    let subjects: Vec<String> = mail.messages().iter().filter_map(|m| m.subject()).collect();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    assert!(
        subjects.contains(&"[leadsync] resolved: target csv is down".to_string()),
        "{subjects:?}"
    );
    assert!(
        subjects.contains(&"[leadsync] target csv has 1 dead letter(s)".to_string()),
        "{subjects:?}"
    );
    let dead = mail
        .messages()
        .into_iter()
        .find(|m| m.subject().is_some_and(|s| s.contains("dead letter")))
        .unwrap();
    let body = dead.text_body().unwrap();
    assert!(body.contains("http_400"), "{body}");
    for m in mail.messages() {
        let all = format!(
            "{}{}",
            m.subject().unwrap_or_default(),
            m.text_body().unwrap_or_default()
        );
        assert!(
            !all.contains("ann0@") && !all.contains("Ann0"),
            "an alert carries no lead's data: {all}"
        );
    }
    assert_eq!(rx.stored().len(), 2);
    drop(daemon);
}

/// The shipped examples: the hot-leads Teams target, the hourly digest e-mail and the
/// alerts configuration check out (secrets from the environment, as in production).
#[test]
fn the_shipped_examples_load() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let d = Deployment::new();
    std::fs::remove_file(d.root().join("config/targets/csv.toml")).unwrap();
    for f in ["hot-leads-teams.toml", "leads-digest-email.toml"] {
        std::fs::copy(
            examples.join("targets").join(f),
            d.root().join("config/targets").join(f),
        )
        .unwrap();
    }
    let alerts = std::fs::read_to_string(examples.join("leadsync-alerts.toml")).unwrap();
    let alerts = alerts
        .split("\n[alerts]\n")
        .nth(1)
        .map(|rest| format!("[alerts]\n{rest}"))
        .unwrap();
    let main = std::fs::read_to_string(d.config()).unwrap();
    std::fs::write(d.config(), format!("{main}\n{alerts}")).unwrap();
    let out = d
        .command()
        .arg("check")
        .env(
            "TEAMS_SALES_WEBHOOK",
            "https://prod-00.westus.logic.azure.com/workflows/x/triggers/manual/paths/invoke?sig=s",
        )
        .env(
            "SLACK_OPS_WEBHOOK",
            "https://hooks.slack.com/services/T0/B0/x",
        )
        .env("SMTP_USERNAME", "leads@example.com")
        .env("SMTP_PASSWORD", "app-password")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("target hot-leads-teams (teams): ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("target leads-digest-email (email): ok"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("sig=s") && !stdout.contains("/B0/"),
        "{stdout}"
    );
    // An alert channel's mistake names its key.
    std::fs::write(
        d.config(),
        format!(
            "{main}\n{}",
            alerts.replace("to = [\"ops@example.com\"]", "to = [\"not an address\"]")
        ),
    )
    .unwrap();
    let out = d
        .command()
        .arg("check")
        .env("TEAMS_SALES_WEBHOOK", "https://example.com/x")
        .env(
            "SLACK_OPS_WEBHOOK",
            "https://hooks.slack.com/services/T0/B0/x",
        )
        .env("SMTP_USERNAME", "u")
        .env("SMTP_PASSWORD", "p")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("alerts.channels.ops-mail.to"),
        "{}",
        text(&out)
    );
}

/// Two `run` instances on one PostgreSQL ledger, both observing the same dead letters: one
/// e-mail, from the instance holding the alerts lease. When that one stops, the other takes
/// the lease over and tells the recovery (its book knew what was told).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_ledger_one_instance_tells_each_alert() {
    use sqlx::Row;
    let Some(mut pg) = common::pg_or_skip("on_a_shared_ledger_one_instance_tells_each_alert").await
    else {
        return;
    };
    struct Schema(String);
    impl Drop for Schema {
        fn drop(&mut self) {
            common::drop_pg_schema(self.0.clone());
        }
    }
    let schema = Schema(format!("leadsync_alerts_{:08x}", rand::random::<u32>()));
    let rx = HttpsReceiver::start(ReceiverOptions::http()).await.unwrap();
    rx.script([Reply::status(400), Reply::status(400)]);
    let d = Deployment::with_target(&format!(
        "kind = \"https\"\nschedule = \"*/1 * * * * *\"\n[connection]\nurl = \"{}\"\nallow_http = true\n",
        rx.url("/hook")
    ));
    let main = std::fs::read_to_string(d.config()).unwrap().replace(
        "path = \"../state/ledger.db\"",
        &format!("url = \"{}\"\nschema = \"{}\"", common::pg_url(), schema.0),
    );
    std::fs::write(d.config(), main).unwrap();
    let mail = smtp(&d).await;
    alert_by_email(&d, &mail, "check_every = \"1s\"\nrepeat_after = \"1h\"\n");
    let lines: Vec<String> = (0..2).map(|i| lead(i, "INS")).collect();
    std::fs::write(d.spool().join("leads.jsonl"), lines.join("\n")).unwrap();
    let daemons = [run(&d), run(&d)];

    eventually(Duration::from_secs(40), "the dead-letter alert", || {
        mail.message_count() >= 1
    });
    // Both instances see the two dead letters every second; only one tells.
    std::thread::sleep(Duration::from_secs(5));
    let subjects: Vec<String> = mail.messages().iter().filter_map(|m| m.subject()).collect();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert!(subjects[0].contains("dead letter"), "{subjects:?}");

    // Stop the holder cleanly: it gives the lease back and the other goes on.
    let owner: String = sqlx::query(&format!(
        "SELECT owner FROM \"{}\".source_leases WHERE source = '(alerts)'",
        schema.0
    ))
    .fetch_one(&mut pg)
    .await
    .expect("the alerts lease is held")
    .get(0);
    let pid = owner.split(':').nth(1).unwrap_or_default().to_string();
    let (holder, other) = match daemons.iter().position(|dm| dm.id() == pid) {
        Some(i) => (&daemons[i], &daemons[1 - i]),
        None => panic!("the alerts lease is held by {owner}, not one of ours"),
    };
    std::process::Command::new("kill")
        .args(["-TERM", &holder.id()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let retried = d
        .command()
        .args(["dead-letters", "retry", "--target", "csv"])
        .env("SMTP_TEST_PASSWORD", "s3cret-password")
        .output()
        .unwrap();
    assert!(retried.status.success(), "{}", text(&retried));
    eventually(Duration::from_secs(40), "the resolved alert", || {
        mail.message_count() >= 2
    });
    std::thread::sleep(Duration::from_secs(3));
    let subjects: Vec<String> = mail.messages().iter().filter_map(|m| m.subject()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(
        subjects[1].starts_with("[leadsync] resolved: "),
        "{subjects:?}"
    );
    assert_eq!(rx.stored().len(), 2, "both leads delivered after the retry");
    assert!(
        other.log().contains("alert sent"),
        "the other instance told the recovery"
    );
}
