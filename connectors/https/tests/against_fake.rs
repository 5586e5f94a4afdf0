//! The HTTPS connector against the fake receiver (`leadsync_fakes::https_receiver`): real TLS
//! with certificates made at test time, mutual TLS, signatures, idempotency keys and the
//! classification of every kind of answer.

use leadsync_core::{
    idempotency_key, read_lead, Connector, DeliveryOutcome, FailureClass, KeyScope, OutboundRecord,
};
use leadsync_fakes::https_receiver::{
    HttpsReceiver, ReceiverOptions, Reply, SignatureCheck, TestPki,
};
use leadsync_https::{default_mapping, HttpsConnector, HttpsSettings};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const SECRET_QUERY: &str = "sig=SECRETSIG";

fn lead_json(i: usize) -> Value {
    json!({
        "UserDetails": {"FirstName": format!("Ann{i}"), "LastName": "Lee", "Email": format!("ann{i}@contoso.example"),
                        "Phone": "16175555555", "Country": "USA", "Company": "Contoso", "Title": "CTO"},
        "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso Analytics",
        "Description": format!("note {i}")
    })
}

fn record(v: &Value, id: &str, settings: &HttpsSettings) -> OutboundRecord {
    let lead = read_lead(id.into(), v).unwrap();
    let key = idempotency_key("hook", KeyScope::Lead, &lead);
    let (fields, _) = default_mapping(settings).apply(&lead, &key, &[]);
    OutboundRecord {
        lead_id: lead.id.clone(),
        idempotency_key: key,
        attempt: 1,
        lead: Arc::new(lead),
        fields,
    }
}

fn records(n: usize, settings: &HttpsSettings) -> Vec<OutboundRecord> {
    (0..n)
        .map(|i| record(&lead_json(i), &format!("lead-{i}"), settings))
        .collect()
}

fn settings(v: Value) -> HttpsSettings {
    serde_json::from_value(v).unwrap()
}

fn connector(s: &HttpsSettings, dir: &Path) -> HttpsConnector {
    HttpsConnector::try_new(s.clone(), dir).unwrap()
}

/// A temp dir holding `ca.pem` (the receiver's CA) and the client certificate and key.
fn pki_dir(pki: &TestPki) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(d.path().join("client.pem"), &pki.client_cert_pem).unwrap();
    std::fs::write(d.path().join("client.key"), &pki.client_key_pem).unwrap();
    d
}

fn failure(o: &DeliveryOutcome) -> &leadsync_core::DeliveryFailure {
    match o {
        DeliveryOutcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn assert_no_secret(outcomes: &[DeliveryOutcome]) {
    for o in outcomes {
        if let DeliveryOutcome::Failed(f) = o {
            assert!(!f.message.contains("SECRETSIG"), "{}", f.message);
        }
    }
}

#[tokio::test]
async fn marketplace_body_signed_and_keyed_over_verified_tls() {
    let pki = TestPki::generate().unwrap();
    let rx = HttpsReceiver::start(
        ReceiverOptions::https(&pki)
            .signing_secret("s3cret", true)
            .require_header("authorization", "Bearer t0ken")
            .return_id(),
    )
    .await
    .unwrap();
    let dir = pki_dir(&pki);
    let s = settings(json!({
        "url": rx.url(&format!("/hook?{SECRET_QUERY}")),
        "auth": {"type": "bearer", "token": "t0ken"},
        "signature": {"secret": "s3cret"},
        "http": {"ca_file": "ca.pem"}
    }));
    let c = connector(&s, dir.path());
    let recs = records(3, &s);
    let out = c.push(&recs).await;
    for (i, o) in out.iter().enumerate() {
        assert_eq!(
            o,
            &DeliveryOutcome::delivered(Some(format!("/leads/{}", i + 1)), None)
        );
    }
    let posts = rx.posts();
    assert_eq!(posts.len(), 3);
    for (i, (p, r)) in posts.iter().zip(&recs).enumerate() {
        // Exactly the marketplace's body for the lead that came in that shape.
        assert_eq!(p.json().unwrap(), lead_json(i));
        assert_eq!(
            p.header("idempotency-key"),
            Some(r.idempotency_key.as_str())
        );
        assert_eq!(p.header("content-type"), Some("application/json"));
        // The receiver recomputed the HMAC over "<timestamp>.<body>" and it matched.
        assert_eq!(p.signature, SignatureCheck::Valid);
        assert_eq!(p.query.as_deref(), Some(SECRET_QUERY));
        assert_eq!(p.path, "/hook");
    }
    assert_eq!(rx.stored().len(), 3);
}

#[tokio::test]
async fn an_unknown_ca_is_refused_unless_configured() {
    let pki = TestPki::generate().unwrap();
    let stranger = TestPki::generate().unwrap();
    let rx = HttpsReceiver::start(ReceiverOptions::https(&pki))
        .await
        .unwrap();
    let url = rx.url(&format!("/hook?{SECRET_QUERY}"));
    let dir = pki_dir(&pki);
    let other_dir = pki_dir(&stranger);

    // System roots only: our test CA is unknown.
    let s = settings(json!({ "url": url }));
    let c = connector(&s, dir.path());
    let out = c.push(&records(1, &s)).await;
    let f = failure(&out[0]);
    // A certificate that does not verify is the target's failure: its circuit opens.
    assert_eq!(f.class, FailureClass::TargetDown);
    assert_eq!(f.code, "tls_error");
    assert!(
        f.message.to_lowercase().contains("certificate"),
        "{}",
        f.message
    );
    assert_no_secret(&out);
    let e = c.check(true).await.unwrap_err();
    assert!(!e.to_string().contains("SECRETSIG"), "{e}");

    // Another CA configured: still refused.
    let s = settings(json!({ "url": url, "http": {"ca_file": "ca.pem", "ca_only": true} }));
    let c = connector(&s, other_dir.path());
    let out = c.push(&records(1, &s)).await;
    assert_eq!(failure(&out[0]).code, "tls_error");
    assert!(rx.posts().is_empty());
    assert!(rx.handshake_failures() >= 2);

    // The right CA configured: delivered; `check --connect` sees TLS and tolerates 405.
    let s = settings(json!({ "url": url, "http": {"ca_file": "ca.pem"} }));
    let c = connector(&s, dir.path());
    let out = c.push(&records(1, &s)).await;
    assert!(
        matches!(out[0], DeliveryOutcome::Delivered { .. }),
        "{out:?}"
    );
    let report = c.check(true).await.unwrap();
    let text = report.verified.join("\n");
    assert!(text.contains("TLS verified"), "{text}");
    assert!(text.contains("405"), "{text}");
    assert!(!text.contains("SECRETSIG"), "{text}");
    assert_eq!(rx.posts().len(), 1);
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = TestPki::generate().unwrap();
    let rx = HttpsReceiver::start(ReceiverOptions::https(&pki).mutual_tls())
        .await
        .unwrap();
    let dir = pki_dir(&pki);
    let s = settings(json!({ "url": rx.url("/hook"), "http": {"ca_file": "ca.pem"} }));
    let out = connector(&s, dir.path()).push(&records(1, &s)).await;
    assert_eq!(failure(&out[0]).class, FailureClass::Transient);
    assert!(rx.posts().is_empty());

    let s = settings(json!({
        "url": rx.url("/hook"),
        "http": {"ca_file": "ca.pem", "client_cert": {"file": "client.pem"}, "client_key": {"file": "client.key"}}
    }));
    let out = connector(&s, dir.path()).push(&records(1, &s)).await;
    assert!(
        matches!(out[0], DeliveryOutcome::Delivered { .. }),
        "{out:?}"
    );
    let posts = rx.posts();
    assert_eq!(posts.len(), 1);
    assert!(posts[0].client_cert);
}

#[tokio::test]
async fn the_idempotency_key_is_the_same_across_a_retry() {
    let rx = HttpsReceiver::start(ReceiverOptions::http()).await.unwrap();
    rx.fail_next(1, Reply::with_body(503, "busy"));
    let s = settings(json!({ "url": rx.url("/hook"), "allow_http": true }));
    let c = connector(&s, Path::new("."));
    let mut rec = records(1, &s);
    let first = c.push(&rec).await;
    assert_eq!(failure(&first[0]).class, FailureClass::Transient);
    assert_eq!(failure(&first[0]).code, "http_503");
    // The pipeline's second attempt of the same delivery.
    rec[0].attempt = 2;
    let second = c.push(&rec).await;
    assert!(matches!(second[0], DeliveryOutcome::Delivered { .. }));
    let posts = rx.posts();
    assert_eq!(posts.len(), 2);
    assert_eq!(
        posts[0].header("idempotency-key"),
        posts[1].header("idempotency-key")
    );
    assert_eq!(posts[0].body, posts[1].body);
    // A third push (a lost answer, say) is stored once by an idempotent receiver.
    c.push(&rec).await;
    assert_eq!(rx.stored().len(), 1);
}

#[tokio::test]
async fn every_kind_of_answer_is_classified() {
    let rx = HttpsReceiver::start(ReceiverOptions::http()).await.unwrap();
    let s =
        settings(json!({ "url": rx.url(&format!("/hook?{SECRET_QUERY}")), "allow_http": true }));
    let c = connector(&s, Path::new("."));
    let rec = records(1, &s);
    let long_body = format!(
        "{{\"error\": \"Email is invalid\", \"pad\": \"{}\"}}",
        "x".repeat(5000)
    );
    let cases: Vec<(Reply, FailureClass, &str, Option<Duration>)> = vec![
        (
            Reply::throttled("7"),
            FailureClass::Throttled,
            "http_429",
            Some(Duration::from_secs(7)),
        ),
        (
            Reply::status(429),
            FailureClass::Throttled,
            "http_429",
            None,
        ),
        (
            Reply::status(503).header("retry-after", "2"),
            FailureClass::Throttled,
            "http_503",
            Some(Duration::from_secs(2)),
        ),
        (
            Reply::status(500),
            FailureClass::Transient,
            "http_500",
            None,
        ),
        (
            Reply::status(502),
            FailureClass::Transient,
            "http_502",
            None,
        ),
        (
            Reply::status(408),
            FailureClass::Transient,
            "http_408",
            None,
        ),
        (
            Reply::with_body(400, &long_body),
            FailureClass::Rejected,
            "http_400",
            None,
        ),
        (Reply::status(401), FailureClass::Rejected, "http_401", None),
        (Reply::status(403), FailureClass::Rejected, "http_403", None),
        (Reply::status(404), FailureClass::Rejected, "http_404", None),
        (Reply::status(422), FailureClass::Rejected, "http_422", None),
        (
            Reply::redirect(&rx.other_host_url("/elsewhere?sig=OTHERSECRET")),
            FailureClass::Rejected,
            "http_307",
            None,
        ),
    ];
    for (reply, class, code, retry_after) in cases {
        rx.script([reply]);
        let out = c.push(&rec).await;
        let f = failure(&out[0]);
        assert_eq!(
            (f.class, f.code.as_str(), f.retry_after),
            (class, code, retry_after),
            "{}",
            f.message
        );
        assert_no_secret(&out);
        if code == "http_400" {
            assert!(f.message.contains("Email is invalid"), "{}", f.message);
            assert!(f.message.chars().count() < 700, "{}", f.message.len());
        }
        if code == "http_307" {
            assert!(f.message.contains("http://localhost:"), "{}", f.message);
            assert!(f.message.contains("not followed"), "{}", f.message);
            assert!(!f.message.contains("OTHERSECRET"), "{}", f.message);
        }
    }
    // The redirect to another host was not followed.
    assert!(rx.posts().iter().all(|p| p.path == "/hook"));
    // A redirect within the same host is followed (with the body).
    rx.script([Reply::redirect("/moved")]);
    let out = c.push(&rec).await;
    assert!(
        matches!(out[0], DeliveryOutcome::Delivered { .. }),
        "{out:?}"
    );
    let last = rx.posts().pop().unwrap();
    assert_eq!(last.path, "/moved");
    assert_eq!(last.json().unwrap(), lead_json(0));
}

#[tokio::test]
async fn a_slow_endpoint_times_out_as_transient() {
    let rx = HttpsReceiver::start(ReceiverOptions::http()).await.unwrap();
    rx.script([Reply::status(202).after(Duration::from_secs(3))]);
    let s = settings(json!({
        "url": rx.url(&format!("/hook?{SECRET_QUERY}")), "allow_http": true,
        "http": {"timeout": "300ms"}
    }));
    let out = connector(&s, Path::new(".")).push(&records(1, &s)).await;
    let f = failure(&out[0]);
    assert_eq!(
        (f.class, f.code.as_str()),
        (FailureClass::Transient, "timeout")
    );
    assert_no_secret(&out);
}

#[tokio::test]
async fn a_throttled_endpoint_gets_no_more_requests_in_that_batch() {
    let rx = HttpsReceiver::start(ReceiverOptions::http()).await.unwrap();
    rx.script([Reply::status(202), Reply::throttled("3")]);
    let s = settings(json!({ "url": rx.url("/hook"), "allow_http": true }));
    let out = connector(&s, Path::new(".")).push(&records(4, &s)).await;
    assert_eq!(out.len(), 4);
    assert!(matches!(out[0], DeliveryOutcome::Delivered { .. }));
    for o in &out[1..] {
        let f = failure(o);
        assert_eq!(f.class, FailureClass::Throttled);
        assert_eq!(f.retry_after, Some(Duration::from_secs(3)));
    }
    assert_eq!(failure(&out[2]).code, "not_sent");
    assert_eq!(rx.posts().len(), 2);
}

#[tokio::test]
async fn batch_mode_sends_one_array_all_or_nothing() {
    let rx = HttpsReceiver::start(ReceiverOptions::http()).await.unwrap();
    let s = settings(
        json!({ "url": rx.url("/hook"), "allow_http": true, "batch": true, "extended": true }),
    );
    let c = connector(&s, Path::new("."));
    let recs = records(3, &s);
    rx.script([Reply::status(500)]);
    let out = c.push(&recs).await;
    assert!(out
        .iter()
        .all(|o| failure(o).class == FailureClass::Transient));
    let out = c.push(&recs).await;
    assert!(out
        .iter()
        .all(|o| matches!(o, DeliveryOutcome::Delivered { .. })));
    let posts = rx.posts();
    assert_eq!(posts.len(), 2);
    assert_eq!(
        posts[0].header("idempotency-key"),
        posts[1].header("idempotency-key")
    );
    assert_eq!(
        posts[1].header("idempotency-key"),
        Some(leadsync_https::body::batch_key(&recs).as_str())
    );
    let Value::Array(items) = posts[1].json().unwrap() else {
        panic!("expected an array")
    };
    assert_eq!(items.len(), 3);
    for (item, r) in items.iter().zip(&recs) {
        assert_eq!(
            item["Leadsync"]["IdempotencyKey"],
            r.idempotency_key.as_str()
        );
        assert_eq!(item["Leadsync"]["LeadId"], r.lead_id.as_str());
        let mut plain = item.clone();
        plain.as_object_mut().unwrap().remove("Leadsync");
        let i: usize = r.lead_id.trim_start_matches("lead-").parse().unwrap();
        assert_eq!(plain, lead_json(i));
    }
}

#[tokio::test]
async fn mapped_bodies_and_other_auth_kinds() {
    let rx = HttpsReceiver::start(ReceiverOptions::http().require_header("x-api-key", "k3y"))
        .await
        .unwrap();
    let s = settings(json!({
        "url": rx.url("/hook"), "allow_http": true, "body": "mapped",
        "auth": {"type": "header", "name": "X-Api-Key", "value": "k3y"},
        "headers": {"X-Source": "leadsync"}
    }));
    let recs = records(1, &s);
    let out = connector(&s, Path::new(".")).push(&recs).await;
    assert!(
        matches!(out[0], DeliveryOutcome::Delivered { .. }),
        "{out:?}"
    );
    let p = rx.posts().pop().unwrap();
    assert_eq!(p.header("x-source"), Some("leadsync"));
    let b = p.json().unwrap();
    assert_eq!(b["FirstName"], "Ann0");
    assert_eq!(b["ActionCode"], "INS");
    assert_eq!(b["IdempotencyKey"], recs[0].idempotency_key.as_str());
    assert_eq!(b["DoNotContact"], false);
    assert!(b.get("UserDetails").is_none());

    let rx =
        HttpsReceiver::start(ReceiverOptions::http().require_header("authorization", "Basic dTpw"))
            .await
            .unwrap();
    let s = settings(json!({
        "url": rx.url("/hook"), "allow_http": true,
        "auth": {"type": "basic", "username": "u", "password": "p"}
    }));
    let out = connector(&s, Path::new(".")).push(&records(1, &s)).await;
    assert!(
        matches!(out[0], DeliveryOutcome::Delivered { .. }),
        "{out:?}"
    );
    // Wrong credentials: rejected with the receiver's words.
    let s = settings(json!({
        "url": rx.url("/hook"), "allow_http": true,
        "auth": {"type": "basic", "username": "u", "password": "nope"}
    }));
    let out = connector(&s, Path::new(".")).push(&records(1, &s)).await;
    let f = failure(&out[0]);
    assert_eq!(
        (f.class, f.code.as_str()),
        (FailureClass::Rejected, "http_401")
    );
    assert!(
        f.message.contains("missing or wrong credentials"),
        "{}",
        f.message
    );
}
