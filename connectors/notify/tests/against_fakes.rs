//! The notification targets against real protocol fakes: e-mail through the SMTP fake
//! (`leadsync_fakes::smtp`, STARTTLS or implicit TLS with a login, read back as a client
//! would), and chat messages through webhooks that check the payload shape Slack and Teams
//! document (`leadsync_fakes::chat_webhook`).

use leadsync_core::{
    read_lead, BuildContext, Connector, DeliveryFailure, DeliveryOutcome, FailureClass,
    MappingOverrides, OutboundRecord,
};
use leadsync_fakes::chat_webhook::{ChatFault, ChatFlavor, ChatWebhookFake};
use leadsync_fakes::smtp::{SmtpFake, SmtpFakeConfig};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

fn build(kind: &str, connection: Value, dir: &Path) -> Arc<dyn Connector> {
    let mapping = MappingOverrides::default();
    let ctx = BuildContext {
        target: "notify",
        connection: &connection,
        base_dir: dir,
        mapping: &mapping,
        batch_size: None,
    };
    match kind {
        "email" => leadsync_notify::build_email(&ctx),
        "teams" => leadsync_notify::build_teams(&ctx),
        _ => leadsync_notify::build_slack(&ctx),
    }
    .expect("connector")
}

fn record(c: &dyn Connector, i: usize, action: &str) -> OutboundRecord {
    let lead = read_lead(
        format!("lead-{i}"),
        &json!({"UserDetails": {"FirstName": format!("Zoë{i}"), "LastName": "Müller",
                "Email": format!("zoe{i}@fabrikam.example"), "Company": "Fabrikam <R&D>",
                "Phone": "+49 30 1234", "Country": "DE", "Title": "CTO"},
                "LeadSource": "AppSource", "ActionCode": action, "OfferTitle": "Fabrikam Analytics",
                "Description": "Please call me\nafter 3pm"}),
    )
    .unwrap();
    let key = format!("key-{i}");
    let (fields, _) = c.mapping().apply(&lead, &key, &[]);
    OutboundRecord {
        lead_id: lead.id.clone(),
        idempotency_key: key,
        attempt: 1,
        lead: Arc::new(lead),
        fields,
    }
}

fn failure(o: &DeliveryOutcome) -> &DeliveryFailure {
    match o {
        DeliveryOutcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// The SMTP fake with STARTTLS and a login, and a connection table trusting its CA.
async fn smtp(dir: &Path, tls: &str) -> (SmtpFake, Value) {
    let config = if tls == "implicit" {
        SmtpFakeConfig::implicit_tls("sales-bot", "s3cret-password")
    } else {
        SmtpFakeConfig::starttls("sales-bot", "s3cret-password")
    };
    let fake = SmtpFake::start(config).await.unwrap();
    std::fs::write(dir.join("smtp-ca.pem"), fake.ca_certificate_pem()).unwrap();
    let connection = json!({
        "host": "localhost", "port": fake.port(), "tls": tls,
        "username": "sales-bot", "password": "s3cret-password",
        "from": "leadsync <leads@contoso.example>",
        "to": ["sales@contoso.example", "ceo@contoso.example"],
        "ca_file": "smtp-ca.pem",
    });
    (fake, connection)
}

#[tokio::test]
async fn one_lead_is_one_email_with_subject_text_and_html() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, connection) = smtp(dir.path(), "starttls").await;
    let c = build("email", connection, dir.path());
    let out = c.push(&[record(c.as_ref(), 1, "INS")]).await;
    assert!(
        matches!(out[0], DeliveryOutcome::Delivered { .. }),
        "{out:?}"
    );
    let messages = fake.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert!(m.tls, "sent over STARTTLS");
    assert_eq!(m.authenticated_as.as_deref(), Some("sales-bot"));
    assert_eq!(m.rcpt_to.len(), 2);
    assert_eq!(
        m.subject().as_deref(),
        Some("New marketplace lead: Zoë1 Müller, Fabrikam <R&D> (INS, Fabrikam Analytics)")
    );
    let text = m.text_body().unwrap();
    assert!(text.contains("E-mail: zoe1@fabrikam.example"), "{text}");
    assert!(text.contains("Phone: +49 30 1234"));
    assert!(text.contains("Offer: Fabrikam Analytics"));
    let html = m.html_body().unwrap();
    assert!(html.contains("Fabrikam &lt;R&amp;D&gt;"), "{html}");
    assert!(m
        .header("Message-ID")
        .is_some_and(|id| id.contains("@leadsync")));
}

#[tokio::test]
async fn a_batch_is_one_digest_email_listing_every_lead() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, connection) = smtp(dir.path(), "implicit").await;
    let c = build("email", connection, dir.path());
    let batch: Vec<_> = (0..500).map(|i| record(c.as_ref(), i, "PLT")).collect();
    let out = c.push(&batch).await;
    assert!(out
        .iter()
        .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })));
    let messages = fake.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].subject().as_deref(),
        Some("500 new marketplace leads")
    );
    let text = messages[0].text_body().unwrap();
    for i in [0, 250, 499] {
        assert!(
            text.contains(&format!("zoe{i}@fabrikam.example")),
            "lead {i} listed"
        );
    }
    // The same batch again (a crash between sending and recording): the same Message-ID.
    c.push(&batch).await;
    let again = fake.messages();
    assert_eq!(again[0].header("Message-ID"), again[1].header("Message-ID"));
}

#[tokio::test]
async fn a_refused_login_is_the_target_down_and_check_connect_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, mut connection) = smtp(dir.path(), "starttls").await;
    connection["password"] = json!("wrong-password");
    let c = build("email", connection, dir.path());
    let f = failure(&c.push(&[record(c.as_ref(), 1, "INS")]).await[0]).clone();
    assert_eq!(
        (f.class, f.code.as_str()),
        (FailureClass::TargetDown, "smtp_auth")
    );
    assert!(!f.message.contains("wrong-password"));
    assert!(c.probe().await.unwrap().is_err());
    let e = c.check(true).await.unwrap_err();
    assert!(e.reason.contains("smtp_auth"), "{}", e.reason);
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn check_connect_logs_in_without_sending() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, connection) = smtp(dir.path(), "starttls").await;
    let c = build("email", connection, dir.path());
    let report = c.check(true).await.unwrap();
    assert!(
        report.verified.iter().any(|l| l.contains("logged in")),
        "{:?}",
        report.verified
    );
    assert!(fake.messages().is_empty());
    assert!(fake
        .sessions()
        .iter()
        .any(|s| s.authenticated_as.as_deref() == Some("sales-bot")));
}

#[tokio::test]
async fn slack_blocks_teams_cards_and_plain_text_are_what_each_service_takes() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, flavor, format) in [
        ("slack", ChatFlavor::Slack, None),
        ("slack", ChatFlavor::Slack, Some("text")),
        ("teams", ChatFlavor::Teams, None),
        ("slack", ChatFlavor::Generic, Some("text")),
    ] {
        let fake = ChatWebhookFake::start(flavor).await.unwrap();
        let mut connection = json!({"url": fake.url()});
        if let Some(f) = format {
            connection["format"] = json!(f);
        }
        let c = build(kind, connection, dir.path());
        let one = c.push(&[record(c.as_ref(), 1, "StartTestDrive")]).await;
        assert!(
            matches!(one[0], DeliveryOutcome::Delivered { .. }),
            "{kind} {format:?}: {one:?}"
        );
        let digest: Vec<_> = (0..15).map(|i| record(c.as_ref(), i, "INS")).collect();
        let out = c.push(&digest).await;
        assert!(
            matches!(out[0], DeliveryOutcome::Delivered { .. }),
            "{kind} {format:?}: {out:?}"
        );
        let texts = fake.texts();
        assert_eq!(texts.len(), 2, "{kind} {format:?}");
        let first = texts[0].join("\n");
        assert!(first.contains("Zoë1 Müller"), "{kind} {format:?}: {first}");
        assert!(
            first.contains("zoe1@fabrikam.example"),
            "{kind} {format:?}: {first}"
        );
        assert!(texts[1].join("\n").contains("15 new marketplace leads"));
    }
}

#[tokio::test]
async fn webhook_answers_are_classified_and_the_url_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    let fake = ChatWebhookFake::start(ChatFlavor::Slack).await.unwrap();
    let c = build("slack", json!({"url": fake.url()}), dir.path());
    let rec = || record(c.as_ref(), 1, "INS");
    fake.inject(
        ChatFault::TooManyRequests {
            retry_after_secs: 7,
        },
        1,
    );
    let f = failure(&c.push(&[rec()]).await[0]).clone();
    assert_eq!(f.class, FailureClass::Throttled);
    assert_eq!(f.retry_after, Some(std::time::Duration::from_secs(7)));
    fake.inject(ChatFault::ServerError, 1);
    assert_eq!(
        failure(&c.push(&[rec()]).await[0]).class,
        FailureClass::Transient
    );
    fake.inject(ChatFault::Gone, 1);
    let f = failure(&c.push(&[rec()]).await[0]).clone();
    assert_eq!(f.class, FailureClass::TargetDown);
    let secret_path = fake.url().rsplit('/').next().unwrap().to_string();
    assert!(!f.message.contains(&secret_path), "{}", f.message);
    let report = c.check(false).await.unwrap();
    assert!(report.verified.iter().all(|l| !l.contains(&secret_path)));
    assert!(c.check(true).await.is_ok());
}

#[test]
fn settings_name_the_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = MappingOverrides::default();
    let err = |kind: &str, connection: Value| {
        let ctx = BuildContext {
            target: "n",
            connection: &connection,
            base_dir: dir.path(),
            mapping: &mapping,
            batch_size: None,
        };
        let built = match kind {
            "email" => leadsync_notify::build_email(&ctx),
            _ => leadsync_notify::build_teams(&ctx),
        };
        built.err().map(|e| e.key)
    };
    let ok = json!({"host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"]});
    assert_eq!(err("email", ok.clone()), None);
    let mut bad = ok.clone();
    bad["to"] = json!(["not an address"]);
    assert_eq!(err("email", bad), Some("connection.to".into()));
    let mut bad = ok.clone();
    bad["tls"] = json!("none");
    assert_eq!(err("email", bad), Some("connection.tls".into()));
    let mut bad = ok;
    bad["username"] = json!("u");
    assert_eq!(err("email", bad), Some("connection.password".into()));
    assert_eq!(
        err("teams", json!({"url": "http://teams.example.com/x"})),
        Some("connection.url".into())
    );
}
