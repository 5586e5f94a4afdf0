//! The [`Ledger`] contract as executable scenarios, run against every backend: SQLite always,
//! PostgreSQL when it is reachable (each test in a schema of its own, dropped afterwards).
//! Without PostgreSQL the PostgreSQL tests skip with a loud message, unless
//! `LEADSYNC_REQUIRE_SERVICES=1` (CI), where they fail. `LEADSYNC_TEST_PG_URL` overrides the
//! server (default `postgres://postgres@127.0.0.1:5432/test`).
//!
//! Scenarios speak only through the trait, so they hold for any backend; the few that need
//! several instances or raw SQL are PostgreSQL-only and say so.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use leadsync_core::Lead;

use super::postgres::{PostgresLedger, PostgresOptions};
use super::{
    DeadLetterFilter, DeliveryState, InstanceInfo, Ledger, LedgerError, PlannedDelivery,
    QuarantinedRecord, RecordedOutcome, StageBatch, StageReport, StagedLead, TargetDown,
};

const LEASE: Duration = Duration::from_secs(60);

fn lead_with_email(id: &str, email: &str) -> Lead {
    leadsync_core::read_lead(
        id.to_owned(),
        &serde_json::json!({
            "UserDetails": {
                "FirstName": "Ada",
                "LastName": "Lovelace",
                "Email": email,
                "Company": "Contoso"
            },
            "LeadSource": "AzureMarketplace",
            "ActionCode": "INS",
            "OfferTitle": "Widget",
            "Description": "call me"
        }),
    )
    .expect("test lead reads")
}

pub(super) fn lead(id: &str) -> Lead {
    lead_with_email(id, "ada@example.com")
}

pub(super) fn staged(id: &str, targets: &[&str]) -> StagedLead {
    StagedLead {
        lead: lead(id),
        deliveries: targets
            .iter()
            .map(|t| PlannedDelivery {
                target: (*t).to_owned(),
                idempotency_key: format!("{t}:{id}"),
                not_before: None,
            })
            .collect(),
    }
}

pub(super) fn batch(ids: &[&str], targets: &[&str], cursor: Option<&str>) -> StageBatch {
    StageBatch {
        source: "spool".to_owned(),
        leads: ids.iter().map(|id| staged(id, targets)).collect(),
        quarantined: Vec::new(),
        cursor: cursor.map(str::to_owned),
    }
}

/// A moment safely after everything staged so far (stage uses the wall clock).
pub(super) fn soon() -> DateTime<Utc> {
    Utc::now() + TimeDelta::milliseconds(5)
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// An instance named `host:pid[:nonce]`, as its heartbeat describes it.
fn instance(id: &str) -> InstanceInfo {
    let (host, pid) = crate::identity::host_and_pid(id);
    InstanceInfo {
        id: id.into(),
        host,
        pid,
        version: "0.0.1-test".into(),
        started_at: Utc::now() - TimeDelta::hours(1),
    }
}

/// `count` leads named `lead-0000`, `lead-0001`, ... staged for `target`.
async fn stage_numbered(ledger: &dyn Ledger, count: usize, target: &str) {
    let ids: Vec<String> = (0..count).map(|i| format!("lead-{i:04}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ledger
        .stage(batch(&refs, &[target], None))
        .await
        .expect("stage");
}

async fn delivery_state(ledger: &dyn Ledger, lead: &str) -> (DeliveryState, u32) {
    let (_, _, d) = ledger.trace(lead).await.expect("trace").expect("known");
    (d[0].state, d[0].attempts)
}

// ---------------------------------------------------------------------------------------
// Scenarios every backend must pass
// ---------------------------------------------------------------------------------------

async fn staging_twice_ignores_known_leads(ledger: &dyn Ledger) {
    let first = ledger
        .stage(batch(&["a", "b"], &["crm1", "crm2"], Some("c1")))
        .await
        .expect("stage");
    assert_eq!(
        first,
        StageReport {
            staged: 2,
            already_known: 0,
            deliveries: 4,
            quarantined: 0
        }
    );
    let second = ledger
        .stage(batch(&["a", "b", "c"], &["crm1", "crm2"], Some("c2")))
        .await
        .expect("stage again");
    assert_eq!(
        second,
        StageReport {
            staged: 1,
            already_known: 2,
            deliveries: 2,
            quarantined: 0
        }
    );
    let status = ledger.status(soon()).await.expect("status");
    assert_eq!(status.leads, 3);
    let pending: u64 = status.targets.iter().map(|t| t.pending).sum();
    assert_eq!(pending, 6);

    // The same id twice in one batch is one lead.
    let dup = ledger
        .stage(batch(&["d", "d"], &["crm1"], None))
        .await
        .expect("stage dup");
    assert_eq!((dup.staged, dup.already_known, dup.deliveries), (1, 1, 1));

    let (stored, _, deliveries) = ledger.trace("a").await.expect("trace").expect("known");
    assert_eq!(stored, lead("a"));
    assert_eq!(deliveries.len(), 2);
    assert!(ledger.trace("zzz").await.expect("trace").is_none());
}

async fn cursor_moves_only_with_its_leads(ledger: &dyn Ledger) {
    assert_eq!(ledger.cursor("spool").await.expect("cursor"), None);
    ledger
        .stage(batch(&["a"], &["crm1"], Some("c1")))
        .await
        .expect("stage");
    assert_eq!(
        ledger.cursor("spool").await.expect("cursor").as_deref(),
        Some("c1")
    );
    ledger
        .stage(batch(&["b"], &["crm1"], None))
        .await
        .expect("stage without cursor");
    assert_eq!(
        ledger.cursor("spool").await.expect("cursor").as_deref(),
        Some("c1")
    );
    let mut with_quarantine = batch(&["c"], &["crm1"], Some("c2"));
    with_quarantine.quarantined.push(QuarantinedRecord {
        origin: "inbox/x.jsonl:1".to_owned(),
        reason: "not JSON".to_owned(),
    });
    let report = ledger.stage(with_quarantine.clone()).await.expect("stage");
    assert_eq!(report.quarantined, 1);
    // The same record seen again is one quarantine entry.
    let report = ledger.stage(with_quarantine).await.expect("stage again");
    assert_eq!((report.quarantined, report.already_known), (0, 1));
    assert_eq!(
        ledger.cursor("spool").await.expect("cursor").as_deref(),
        Some("c2")
    );
    assert_eq!(ledger.cursor("other").await.expect("cursor"), None);
}

async fn claim_respects_due_time_lease_and_limit(ledger: &dyn Ledger) {
    ledger
        .stage(batch(&["a", "b", "c"], &["crm1", "crm2"], None))
        .await
        .expect("stage");
    let before = Utc::now() - TimeDelta::hours(1);
    assert!(ledger
        .claim("crm1", before, 10, LEASE, "w1")
        .await
        .expect("claim")
        .is_empty());

    let now = soon();
    let first = ledger
        .claim("crm1", now, 2, LEASE, "w1")
        .await
        .expect("claim");
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|d| d.target == "crm1" && d.attempts == 0));
    assert_eq!(first[0].lead.id, "a");
    assert_eq!(first[0].idempotency_key, "crm1:a");
    assert_eq!(first[1].lead.id, "b");

    let second = ledger
        .claim("crm1", now, 10, LEASE, "w2")
        .await
        .expect("claim");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].lead.id, "c");

    assert!(ledger
        .claim("crm1", now, 10, LEASE, "w3")
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(
        ledger
            .claim("crm2", now, 10, LEASE, "w3")
            .await
            .expect("claim")
            .len(),
        3
    );
    assert!(ledger
        .claim("crm1", now, 0, LEASE, "w3")
        .await
        .expect("claim")
        .is_empty());

    // While leased, the next due time is the end of the lease.
    let due = ledger.next_due("crm1").await.expect("next due");
    assert_eq!(
        due.map(|d| d.timestamp_millis()),
        Some(ms(now + TimeDelta::seconds(60)))
    );

    // Leases run out: everything is claimable again, still oldest first.
    let later = now + TimeDelta::seconds(61);
    let again = ledger
        .claim("crm1", later, 10, LEASE, "w4")
        .await
        .expect("claim");
    let ids: Vec<_> = again.iter().map(|d| d.lead.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);

    let retry_at = later + TimeDelta::hours(1);
    ledger
        .record(
            &[RecordedOutcome::Retry {
                delivery_id: again[0].delivery_id,
                next_attempt_at: retry_at,
                error_code: Some("http_503".to_owned()),
                error: "service unavailable".to_owned(),
            }],
            "w4",
        )
        .await
        .expect("record");
    let even_later = later + TimeDelta::seconds(61);
    let got = ledger
        .claim("crm1", even_later, 10, Duration::from_secs(7200), "w5")
        .await
        .expect("claim");
    let ids: Vec<_> = got.iter().map(|d| d.lead.id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
    let got = ledger
        .claim("crm1", retry_at, 10, LEASE, "w6")
        .await
        .expect("claim");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].lead.id, "a");
    assert_eq!(got[0].attempts, 1);
}

async fn record_stores_each_outcome(ledger: &dyn Ledger) {
    ledger
        .stage(batch(&["a", "b", "c", "d"], &["crm"], None))
        .await
        .expect("stage");
    let now = soon();
    let claimed = ledger
        .claim("crm", now, 10, LEASE, "w1")
        .await
        .expect("claim");
    let id = |lead: &str| {
        claimed
            .iter()
            .find(|d| d.lead.id == lead)
            .map(|d| d.delivery_id)
            .expect("claimed")
    };
    let retry_at = now + TimeDelta::minutes(5);
    let release_at = now + TimeDelta::minutes(1);
    ledger
        .record(
            &[
                RecordedOutcome::Delivered {
                    delivery_id: id("a"),
                    crm_ref: Some("crm-001".to_owned()),
                },
                RecordedOutcome::Retry {
                    delivery_id: id("b"),
                    next_attempt_at: retry_at,
                    error_code: Some("http_503".to_owned()),
                    error: "service unavailable".to_owned(),
                },
                RecordedOutcome::Release {
                    delivery_id: id("c"),
                    next_attempt_at: release_at,
                },
                RecordedOutcome::Dead {
                    delivery_id: id("d"),
                    error_code: Some("REQUIRED_FIELD_MISSING".to_owned()),
                    error: "LastName is required".to_owned(),
                },
            ],
            "w1",
        )
        .await
        .expect("record");

    let trace = |lead: &'static str| async move {
        let (_, _, mut d) = ledger.trace(lead).await.expect("trace").expect("known");
        assert_eq!(d.len(), 1);
        d.remove(0)
    };
    let a = trace("a").await;
    assert_eq!(a.state, DeliveryState::Delivered);
    assert_eq!(a.attempts, 1);
    assert_eq!(a.crm_ref.as_deref(), Some("crm-001"));
    assert_eq!(a.next_attempt_at, None);

    let b = trace("b").await;
    assert_eq!(b.state, DeliveryState::Pending);
    assert_eq!(b.attempts, 1);
    assert_eq!(b.error_code.as_deref(), Some("http_503"));
    assert_eq!(b.error.as_deref(), Some("service unavailable"));
    assert_eq!(
        b.next_attempt_at.map(|t| t.timestamp_millis()),
        Some(ms(retry_at))
    );

    let c = trace("c").await;
    assert_eq!(c.state, DeliveryState::Pending);
    assert_eq!(c.attempts, 0);
    assert_eq!(c.error, None);

    let d = trace("d").await;
    assert_eq!(d.state, DeliveryState::Dead);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.error_code.as_deref(), Some("REQUIRED_FIELD_MISSING"));

    // The released one is due again at its new time (its lease cleared), no attempt counted.
    let got = ledger
        .claim("crm", release_at, 10, LEASE, "w2")
        .await
        .expect("claim");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].lead.id.as_str(), got[0].attempts), ("c", 0));

    // A late outcome cannot undo a delivered or dead row.
    ledger
        .record(
            &[
                RecordedOutcome::Retry {
                    delivery_id: id("a"),
                    next_attempt_at: now,
                    error_code: None,
                    error: "late".to_owned(),
                },
                RecordedOutcome::Delivered {
                    delivery_id: id("d"),
                    crm_ref: None,
                },
            ],
            "w2",
        )
        .await
        .expect("record late");
    assert_eq!(trace("a").await.state, DeliveryState::Delivered);
    assert_eq!(trace("d").await.state, DeliveryState::Dead);

    let dead = ledger.dead_letters(None).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].lead_id, "d");
    assert_eq!(dead[0].target, "crm");
    assert_eq!(dead[0].idempotency_key, "crm:d");
    assert_eq!(dead[0].error.as_deref(), Some("LastName is required"));
    assert!(ledger
        .dead_letters(Some("other"))
        .await
        .expect("dead letters")
        .is_empty());
    assert_eq!(
        ledger
            .dead_letters(Some("crm"))
            .await
            .expect("dead letters")
            .len(),
        1
    );
}

async fn retry_dead_brings_dead_letters_back(ledger: &dyn Ledger) {
    ledger
        .stage(batch(&["a", "b"], &["crm1", "crm2"], None))
        .await
        .expect("stage");
    let now = soon();
    let mut outcomes = Vec::new();
    for target in ["crm1", "crm2"] {
        for d in ledger
            .claim(target, now, 10, LEASE, "w")
            .await
            .expect("claim")
        {
            outcomes.push(RecordedOutcome::Dead {
                delivery_id: d.delivery_id,
                error_code: Some("INVALID".to_owned()),
                error: "rejected".to_owned(),
            });
        }
    }
    ledger.record(&outcomes, "w").await.expect("record");
    assert_eq!(ledger.dead_letters(None).await.expect("dead").len(), 4);

    let retry_at = now + TimeDelta::minutes(10);
    let none = DeadLetterFilter {
        target: Some("crm1".to_owned()),
        lead_id: Some("zzz".to_owned()),
    };
    assert_eq!(ledger.retry_dead(&none, retry_at).await.expect("retry"), 0);
    let one = DeadLetterFilter {
        target: Some("crm1".to_owned()),
        lead_id: Some("a".to_owned()),
    };
    assert_eq!(ledger.retry_dead(&one, retry_at).await.expect("retry"), 1);
    let by_target = DeadLetterFilter {
        target: Some("crm2".to_owned()),
        lead_id: None,
    };
    assert_eq!(
        ledger
            .retry_dead(&by_target, retry_at)
            .await
            .expect("retry"),
        2
    );
    assert_eq!(ledger.dead_letters(None).await.expect("dead").len(), 1);

    let got = ledger
        .claim("crm1", retry_at, 10, LEASE, "w")
        .await
        .expect("claim");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].lead.id, "a");
    assert_eq!(got[0].attempts, 0);
    assert_eq!(got[0].age_from.timestamp_millis(), ms(retry_at));
    let (_, _, deliveries) = ledger.trace("a").await.expect("trace").expect("known");
    assert!(deliveries
        .iter()
        .all(|d| d.error_code.as_deref() == Some("INVALID")));

    let all = DeadLetterFilter::default();
    assert_eq!(ledger.retry_dead(&all, retry_at).await.expect("retry"), 1);
    assert!(ledger.dead_letters(None).await.expect("dead").is_empty());
}

async fn status_counts_per_target(ledger: &dyn Ledger) {
    let mut first = batch(&["a", "b", "c", "d"], &["crm1"], Some("c1"));
    first.leads.push(staged("e", &["crm1", "crm2"]));
    first.quarantined.push(QuarantinedRecord {
        origin: "inbox/x.jsonl:7".to_owned(),
        reason: "not JSON".to_owned(),
    });
    let report = ledger.stage(first).await.expect("stage");
    assert_eq!(report.quarantined, 1);

    let now = soon();
    let claimed = ledger
        .claim("crm1", now, 10, LEASE, "w")
        .await
        .expect("claim");
    let id = |lead: &str| {
        claimed
            .iter()
            .find(|d| d.lead.id == lead)
            .map(|d| d.delivery_id)
            .expect("claimed")
    };
    ledger
        .record(
            &[
                RecordedOutcome::Delivered {
                    delivery_id: id("a"),
                    crm_ref: None,
                },
                RecordedOutcome::Dead {
                    delivery_id: id("b"),
                    error_code: Some("STRING_TOO_LONG".to_owned()),
                    error: "too long".to_owned(),
                },
            ],
            "w",
        )
        .await
        .expect("record");
    // Recorded later, so it is the latest error (updated_at has millisecond resolution).
    tokio::time::sleep(Duration::from_millis(5)).await;
    ledger
        .record(
            &[RecordedOutcome::Retry {
                delivery_id: id("c"),
                next_attempt_at: now + TimeDelta::hours(1),
                error_code: Some("http_503".to_owned()),
                error: "unavailable".to_owned(),
            }],
            "w",
        )
        .await
        .expect("record");
    ledger
        .pause_target("crm1", now + TimeDelta::hours(2), "429")
        .await
        .expect("pause");
    ledger
        .pause_target("crm2", now - TimeDelta::hours(2), "old")
        .await
        .expect("pause");

    let status = ledger.status(now).await.expect("status");
    assert_eq!(status.leads, 5);
    assert_eq!(status.quarantined, 1);
    assert_eq!(status.sources.len(), 1);
    assert_eq!(status.sources[0].source, "spool");
    assert_eq!(status.sources[0].cursor.as_deref(), Some("c1"));
    assert_eq!(status.targets.len(), 2);
    let crm1 = &status.targets[0];
    assert_eq!(crm1.target, "crm1");
    assert_eq!(
        (crm1.pending, crm1.retrying, crm1.delivered, crm1.dead),
        (3, 1, 1, 1)
    );
    assert!(crm1.oldest_pending_staged_at.is_some_and(|t| t <= now));
    assert_eq!(
        crm1.paused_until.map(|t| t.timestamp_millis()),
        Some(ms(now + TimeDelta::hours(2)))
    );
    assert_eq!(crm1.last_error_code.as_deref(), Some("http_503"));
    let crm2 = &status.targets[1];
    assert_eq!(crm2.target, "crm2");
    assert_eq!(
        (crm2.pending, crm2.retrying, crm2.delivered, crm2.dead),
        (1, 0, 0, 0)
    );
    assert_eq!(crm2.paused_until, None);
    assert_eq!(crm2.last_error_code, None);
}

async fn pauses_and_next_due(ledger: &dyn Ledger) {
    assert_eq!(ledger.paused_until("crm").await.expect("paused"), None);
    assert_eq!(ledger.next_due("crm").await.expect("due"), None);
    let until = Utc::now() + TimeDelta::minutes(5);
    ledger
        .pause_target("crm", until, "throttled")
        .await
        .expect("pause");
    assert_eq!(
        ledger.paused_until("crm").await.expect("paused").map(ms),
        Some(ms(until))
    );
    let past = Utc::now() - TimeDelta::seconds(1);
    ledger
        .pause_target("crm", past, "over")
        .await
        .expect("pause");
    assert_eq!(
        ledger.paused_until("crm").await.expect("paused").map(ms),
        Some(ms(past))
    );
    let before = Utc::now();
    ledger
        .stage(batch(&["a"], &["crm"], None))
        .await
        .expect("stage");
    let due = ledger
        .next_due("crm")
        .await
        .expect("due")
        .expect("something is due");
    assert!(ms(due) >= ms(before) && due <= Utc::now());
}

async fn replay_and_overdue(ledger: &dyn Ledger) {
    ledger
        .stage(batch(&["a", "b"], &["crm"], None))
        .await
        .expect("stage");
    let now = soon();
    let overdue = ledger.overdue(now).await.expect("overdue");
    assert_eq!(overdue, vec![("crm".to_string(), 2)]);
    assert!(ledger
        .overdue(now - TimeDelta::hours(1))
        .await
        .expect("overdue")
        .is_empty());

    let claimed = ledger
        .claim("crm", now, 10, LEASE, "w")
        .await
        .expect("claim");
    let outcomes: Vec<_> = claimed
        .iter()
        .map(|d| RecordedOutcome::Delivered {
            delivery_id: d.delivery_id,
            crm_ref: None,
        })
        .collect();
    ledger.record(&outcomes, "w").await.expect("record");
    assert!(ledger.overdue(now).await.expect("overdue").is_empty());

    assert_eq!(
        ledger
            .replay("crm", now + TimeDelta::hours(1), now)
            .await
            .expect("replay"),
        0
    );
    assert_eq!(
        ledger
            .replay("other", now - TimeDelta::hours(1), now)
            .await
            .expect("replay"),
        0
    );
    let later = now + TimeDelta::seconds(1);
    assert_eq!(
        ledger
            .replay("crm", now - TimeDelta::hours(1), later)
            .await
            .expect("replay"),
        2
    );
    let again = ledger
        .claim("crm", later, 10, LEASE, "w")
        .await
        .expect("claim");
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|d| d.attempts == 0));
}

async fn forget_and_purge_erase_personal_data(ledger: &dyn Ledger) {
    let mut b = batch(&[], &[], None);
    for (id, email) in [
        ("a", "Ada@Example.com"),
        ("b", "grace@example.com"),
        ("c", "ada@example.com.evil"),
        ("d", "dan@example.com"),
    ] {
        b.leads.push(StagedLead {
            lead: lead_with_email(id, email),
            deliveries: vec![PlannedDelivery {
                target: "crm".to_owned(),
                idempotency_key: format!("crm:{id}"),
                not_before: None,
            }],
        });
    }
    ledger.stage(b).await.expect("stage");
    let now = soon();
    let claimed = ledger
        .claim("crm", now, 10, LEASE, "w")
        .await
        .expect("claim");
    let mut outcomes = Vec::new();
    for d in &claimed {
        outcomes.push(match d.lead.id.as_str() {
            "b" => RecordedOutcome::Retry {
                delivery_id: d.delivery_id,
                next_attempt_at: now,
                error_code: Some("INVALID_EMAIL".to_owned()),
                error: "grace@example.com is not valid".to_owned(),
            },
            _ => RecordedOutcome::Delivered {
                delivery_id: d.delivery_id,
                crm_ref: None,
            },
        });
    }
    ledger.record(&outcomes, "w").await.expect("record");

    let erased = ledger
        .forget_email(" ADA@example.com ")
        .await
        .expect("forget");
    assert_eq!(erased, vec!["a".to_string()]);
    let (a, _, _) = ledger.trace("a").await.expect("trace").expect("known");
    assert!(a.redacted);
    assert_eq!(a.email_normalised(), None);
    let (c, _, _) = ledger.trace("c").await.expect("trace").expect("known");
    assert!(
        !c.redacted,
        "a longer address that contains it is another person"
    );
    assert!(ledger
        .forget_email("nobody@example.com")
        .await
        .expect("forget")
        .is_empty());

    let erased = ledger
        .forget_email("grace@example.com")
        .await
        .expect("forget");
    assert_eq!(erased, vec!["b".to_string()]);
    let (_, _, d) = ledger.trace("b").await.expect("trace").expect("known");
    assert_eq!(d[0].error, None, "CRM error texts echo values: cleared");
    assert_eq!(d[0].error_code.as_deref(), Some("INVALID_EMAIL"));

    // Retention: only leads whose every delivery is delivered before the cut-off.
    assert_eq!(
        ledger
            .purge_personal_data(now - TimeDelta::hours(1))
            .await
            .expect("purge"),
        0
    );
    let cut = Utc::now() + TimeDelta::seconds(1);
    // c and d are delivered (a already redacted); b is still pending.
    assert_eq!(ledger.purge_personal_data(cut).await.expect("purge"), 2);
    assert_eq!(ledger.purge_personal_data(cut).await.expect("purge"), 0);
    let (d, _, _) = ledger.trace("d").await.expect("trace").expect("known");
    assert!(d.redacted);
}

async fn stages_a_large_batch_in_one_transaction(ledger: &dyn Ledger) {
    let ids: Vec<String> = (0..10_000).map(|i| format!("lead-{i:05}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let report = ledger
        .stage(batch(&refs, &["crm1", "crm2"], Some("end")))
        .await
        .expect("stage");
    assert_eq!((report.staged, report.deliveries), (10_000, 20_000));
    let got = ledger
        .claim("crm2", soon(), 500, LEASE, "w")
        .await
        .expect("claim");
    assert_eq!(got.len(), 500);
    assert_eq!(got[0].lead.id, "lead-00000");
}

/// Four workers claiming at once never get the same delivery, and together get them all.
async fn concurrent_claims_never_overlap(ledger: &dyn Ledger) {
    let ids: Vec<String> = (0..1_000).map(|i| format!("lead-{i:04}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ledger
        .stage(batch(&refs, &["crm"], None))
        .await
        .expect("stage");
    let now = soon();
    let worker = |owner: String| async move {
        let mut mine = Vec::new();
        loop {
            let got = ledger
                .claim("crm", now, 37, LEASE, &owner)
                .await
                .expect("claim");
            if got.is_empty() {
                break mine;
            }
            mine.extend(got.into_iter().map(|d| d.delivery_id));
        }
    };
    let all = futures::future::join_all((0..4).map(|w| worker(format!("w{w}")))).await;
    let mut seen = std::collections::HashSet::new();
    for id in all.iter().flatten() {
        assert!(seen.insert(*id), "delivery {id} handed out twice");
    }
    assert_eq!(seen.len(), 1_000);
}

/// An instance whose lease ran out loses the delivery to another; its late outcomes
/// cannot undo what the other recorded.
async fn expired_leases_are_taken_over(ledger: &dyn Ledger) {
    ledger
        .stage(batch(&["a"], &["crm"], None))
        .await
        .expect("stage");
    let now = soon();
    let slow = ledger
        .claim("crm", now, 10, LEASE, "host-a:1")
        .await
        .expect("claim");
    assert_eq!(slow.len(), 1);
    assert!(ledger
        .claim("crm", now + TimeDelta::seconds(59), 10, LEASE, "host-b:2")
        .await
        .expect("claim")
        .is_empty());
    let fast = ledger
        .claim("crm", now + TimeDelta::seconds(60), 10, LEASE, "host-b:2")
        .await
        .expect("claim");
    assert_eq!(fast.len(), 1);
    assert_eq!(fast[0].delivery_id, slow[0].delivery_id);
    let id = fast[0].delivery_id;
    // The slow instance gives up on it while the new holder is still pushing: ignored, the
    // delivery is no longer its to decide.
    ledger
        .record(
            &[RecordedOutcome::Dead {
                delivery_id: id,
                error_code: Some("timeout".into()),
                error: "gave up".into(),
            }],
            "host-a:1",
        )
        .await
        .expect("stale record");
    assert_eq!(
        delivery_state(ledger, "a").await,
        (DeliveryState::Pending, 0)
    );
    ledger
        .record(
            &[RecordedOutcome::Delivered {
                delivery_id: id,
                crm_ref: Some("crm-1".into()),
            }],
            "host-b:2",
        )
        .await
        .expect("record");
    ledger
        .record(
            &[
                RecordedOutcome::Retry {
                    delivery_id: id,
                    next_attempt_at: now,
                    error_code: Some("timeout".into()),
                    error: "timed out".into(),
                },
                RecordedOutcome::Delivered {
                    delivery_id: id,
                    crm_ref: Some("crm-2".into()),
                },
            ],
            "host-a:1",
        )
        .await
        .expect("late record");
    assert_eq!(
        delivery_state(ledger, "a").await,
        (DeliveryState::Delivered, 1)
    );
    let (_, _, d) = ledger.trace("a").await.expect("trace").expect("known");
    assert_eq!(d[0].crm_ref.as_deref(), Some("crm-1"));
}

/// A slow push keeps its deliveries: `renew_leases` extends the leases its owner still holds
/// on pending deliveries (more ids than one statement takes), never another owner's, never
/// a finished delivery's, and never shortens one.
async fn renew_leases_extend_only_the_owners_pending_leases(ledger: &dyn Ledger) {
    stage_numbered(ledger, 1_100, "crm").await;
    let now = soon();
    let mine = ledger
        .claim("crm", now, 1_050, LEASE, "w1")
        .await
        .expect("claim");
    let theirs = ledger
        .claim("crm", now, 100, LEASE, "w2")
        .await
        .expect("claim");
    assert_eq!((mine.len(), theirs.len()), (1_050, 50));
    ledger
        .record(
            &[RecordedOutcome::Delivered {
                delivery_id: mine[0].delivery_id,
                crm_ref: None,
            }],
            "w1",
        )
        .await
        .expect("record");
    let mut ids: Vec<i64> = mine.iter().chain(&theirs).map(|d| d.delivery_id).collect();
    ids.push(-1);
    let until = now + TimeDelta::minutes(10);
    let renew = |owner: &'static str, until: DateTime<Utc>| {
        let ids = &ids;
        async move { ledger.renew_leases(ids, owner, until).await.expect("renew") }
    };
    assert_eq!(renew("w1", until).await, 1_049);
    assert_eq!(renew("w3", until).await, 0, "holds none of them");
    assert_eq!(
        ledger.renew_leases(&[], "w1", until).await.expect("renew"),
        0
    );
    // A shorter renewal keeps the longer lease; w1 still holds them all.
    assert_eq!(renew("w1", now + TimeDelta::seconds(1)).await, 1_049);

    // When the first leases run out, only w2's (not renewed) are free.
    let hour = Duration::from_secs(3600);
    let free = ledger
        .claim("crm", now + TimeDelta::seconds(61), 2_000, hour, "w3")
        .await
        .expect("claim");
    let ids_of = |ds: &[super::ClaimedDelivery]| -> HashSet<i64> {
        ds.iter().map(|d| d.delivery_id).collect()
    };
    assert_eq!(ids_of(&free), ids_of(&theirs));
    // w1's run until the renewed end.
    assert!(ledger
        .claim("crm", until - TimeDelta::milliseconds(1), 2_000, hour, "w4")
        .await
        .expect("claim")
        .is_empty());
    let later = ledger
        .claim("crm", until, 2_000, hour, "w4")
        .await
        .expect("claim");
    assert_eq!(ids_of(&later), ids_of(&mine[1..]));
}

/// A target marked down shows in `status` (and its JSON) and `target_down` until it is
/// cleared; a later report of the same outage keeps when it started and updates the reason.
async fn targets_marked_down_show_until_cleared(ledger: &dyn Ledger) {
    assert_eq!(ledger.target_down("crm1").await.expect("down"), None);
    ledger
        .stage(batch(&["a"], &["crm1", "crm2"], None))
        .await
        .expect("stage");
    let since = Utc::now() - TimeDelta::minutes(3);
    let down = TargetDown {
        since,
        reason: "invalid_client".into(),
    };
    ledger
        .set_target_down("crm1", Some(&down))
        .await
        .expect("set down");
    let got = ledger
        .target_down("crm1")
        .await
        .expect("down")
        .expect("crm1 is down");
    assert_eq!(
        (ms(got.since), got.reason.as_str()),
        (ms(since), "invalid_client")
    );
    assert_eq!(ledger.target_down("crm2").await.expect("down"), None);

    // Another instance notices the same outage a minute later, failing another way.
    let later = TargetDown {
        since: since + TimeDelta::minutes(1),
        reason: "connect refused".into(),
    };
    ledger
        .set_target_down("crm1", Some(&later))
        .await
        .expect("set down again");
    let status = ledger.status(soon()).await.expect("status");
    let (crm1, crm2) = (&status.targets[0], &status.targets[1]);
    assert_eq!(
        (crm1.target.as_str(), crm2.target.as_str()),
        ("crm1", "crm2")
    );
    assert_eq!(crm1.down_since.map(ms), Some(ms(since)));
    assert_eq!(crm1.down_reason.as_deref(), Some("connect refused"));
    assert_eq!((crm2.down_since, crm2.down_reason.as_deref()), (None, None));
    let json = serde_json::to_value(&status).expect("status as JSON");
    assert_eq!(json["targets"][0]["down_reason"], "connect refused");
    assert!(json["targets"][0]["down_since"].is_string());
    assert!(json["targets"][1]["down_since"].is_null());

    ledger.set_target_down("crm1", None).await.expect("clear");
    ledger
        .set_target_down("crm1", None)
        .await
        .expect("clear what is clear");
    assert_eq!(ledger.target_down("crm1").await.expect("down"), None);
    let status = ledger.status(soon()).await.expect("status");
    assert!(status
        .targets
        .iter()
        .all(|t| t.down_since.is_none() && t.down_reason.is_none()));

    // The next outage starts afresh.
    ledger
        .set_target_down("crm1", Some(&later))
        .await
        .expect("down again");
    assert_eq!(
        ledger.target_down("crm1").await.expect("down"),
        Some(TargetDown {
            since: DateTime::from_timestamp_millis(ms(later.since)).expect("ms"),
            reason: "connect refused".into(),
        })
    );
}

/// A target coming back is credited its outage once: the call that clears the down row
/// moves the pending deliveries' retry age by `now - since`; instances closing the same
/// outage after it (at once, or later) credit nothing, and a target not down is a no-op.
async fn target_up_credits_an_outage_once(ledger: &dyn Ledger) {
    ledger
        .stage(batch(&["a", "b"], &["crm"], None))
        .await
        .expect("stage");
    let now = soon();
    let age_of =
        |ds: &[super::ClaimedDelivery]| -> Vec<i64> { ds.iter().map(|d| ms(d.age_from)).collect() };
    let before = ledger
        .claim("crm", now, 10, LEASE, "w")
        .await
        .expect("claim");
    let ids: Vec<i64> = before.iter().map(|d| d.delivery_id).collect();
    let release: Vec<RecordedOutcome> = ids
        .iter()
        .map(|&delivery_id| RecordedOutcome::Release {
            delivery_id,
            next_attempt_at: now,
        })
        .collect();
    ledger.record(&release, "w").await.expect("release");

    assert_eq!(ledger.target_up("crm", now).await.expect("up"), None);
    let down = TargetDown {
        since: now - TimeDelta::minutes(10),
        reason: "invalid_client".into(),
    };
    ledger
        .set_target_down("crm", Some(&down))
        .await
        .expect("down");
    let ups = futures::future::join_all((0..3).map(|_| ledger.target_up("crm", now))).await;
    let credited: Vec<Duration> = ups.into_iter().filter_map(|r| r.expect("up")).collect();
    assert_eq!(credited, [Duration::from_secs(600)], "credited once");
    assert_eq!(ledger.target_down("crm").await.expect("down"), None);
    assert_eq!(ledger.target_up("crm", now).await.expect("up"), None);

    let after = ledger
        .claim("crm", now, 10, LEASE, "w")
        .await
        .expect("claim");
    let moved: Vec<i64> = age_of(&before).iter().map(|a| a + 600_000).collect();
    assert_eq!(age_of(&after), moved);
}

/// Coming back from an outage moves the retry-age clock of the target's pending deliveries
/// (leased or not) and of nothing else: not delivered or dead ones, not other targets'.
async fn extend_retry_age_moves_only_pending_deliveries(ledger: &dyn Ledger) {
    ledger
        .stage(batch(&["a", "b", "c"], &["crm1", "crm2"], None))
        .await
        .expect("stage");
    let now = soon();
    let first = ledger
        .claim("crm1", now, 10, LEASE, "w")
        .await
        .expect("claim");
    let staged_age: Vec<i64> = first.iter().map(|d| ms(d.age_from)).collect();
    assert_eq!(first.len(), 3);
    ledger
        .record(
            &[
                RecordedOutcome::Delivered {
                    delivery_id: first[0].delivery_id,
                    crm_ref: None,
                },
                RecordedOutcome::Dead {
                    delivery_id: first[1].delivery_id,
                    error_code: Some("INVALID".into()),
                    error: "rejected".into(),
                },
                RecordedOutcome::Retry {
                    delivery_id: first[2].delivery_id,
                    next_attempt_at: now,
                    error_code: Some("connect refused".into()),
                    error: "connection refused".into(),
                },
            ],
            "w",
        )
        .await
        .expect("record");

    let hour = Duration::from_secs(3600);
    assert_eq!(
        ledger.extend_retry_age("crm1", hour).await.expect("extend"),
        1
    );
    assert_eq!(
        ledger
            .extend_retry_age("other", hour)
            .await
            .expect("extend"),
        0
    );
    let c = ledger
        .claim("crm1", now, 10, LEASE, "w")
        .await
        .expect("claim");
    assert_eq!((c.len(), c[0].lead.id.as_str(), c[0].attempts), (1, "c", 1));
    assert_eq!(ms(c[0].age_from), staged_age[2] + 3_600_000);

    // A leased delivery is pending too: it moves.
    assert_eq!(
        ledger
            .extend_retry_age("crm1", Duration::from_secs(60))
            .await
            .expect("extend"),
        1
    );
    ledger
        .record(
            &[RecordedOutcome::Release {
                delivery_id: c[0].delivery_id,
                next_attempt_at: now,
            }],
            "w",
        )
        .await
        .expect("release");
    let c = ledger
        .claim("crm1", now, 10, LEASE, "w")
        .await
        .expect("claim");
    assert_eq!(ms(c[0].age_from), staged_age[2] + 3_660_000);

    // The other target's deliveries of the same leads kept their clock.
    let other = ledger
        .claim("crm2", now, 10, LEASE, "w")
        .await
        .expect("claim");
    let other_age: Vec<i64> = other.iter().map(|d| ms(d.age_from)).collect();
    assert_eq!(other_age, staged_age);
}

/// Failover by heartbeat. Where the backend records heartbeats (`status` lists them:
/// PostgreSQL), an instance whose heartbeat is older than `stale_after` loses its delivery
/// leases (attempts and due times kept) and source leases at once, and another owner claims
/// them without waiting the lease out; a live instance and an owner that never sent a
/// heartbeat (`sync --once`) keep theirs, and callers racing each other free each delivery
/// once. A backend that records no heartbeat (SQLite: one process holds the file) has no
/// stale instance and frees nothing.
async fn stale_instances_lose_their_leases(ledger: &dyn Ledger) {
    let (stale, live, once, other) = ("host-a:1", "host-b:2", "sync:77", "host-c:3");
    let now = Utc::now();
    ledger
        .heartbeat(&instance(stale), now - TimeDelta::minutes(1))
        .await
        .expect("heartbeat");
    ledger
        .heartbeat(&instance(live), now)
        .await
        .expect("heartbeat");
    ledger
        .stage(batch(&["a", "b", "c", "d", "e", "f"], &["crm"], None))
        .await
        .expect("stage");
    let at = soon();
    let hour = Duration::from_secs(3600);
    // The stale instance tried `a` once already, then took it again with `b`.
    let tried = ledger
        .claim("crm", at, 1, hour, stale)
        .await
        .expect("claim");
    let due = at - TimeDelta::hours(1);
    ledger
        .record(
            &[RecordedOutcome::Retry {
                delivery_id: tried[0].delivery_id,
                next_attempt_at: due,
                error_code: Some("http_503".into()),
                error: "unavailable".into(),
            }],
            stale,
        )
        .await
        .expect("record");
    let leads = |ds: Vec<super::ClaimedDelivery>| -> Vec<String> {
        let mut ids: Vec<String> = ds.into_iter().map(|d| d.lead.id.clone()).collect();
        ids.sort();
        ids
    };
    let claim = |owner: &'static str, limit: u32| async move {
        leads(
            ledger
                .claim("crm", at, limit, hour, owner)
                .await
                .expect("claim"),
        )
    };
    assert_eq!(claim(stale, 2).await, ["a", "b"]);
    assert_eq!(claim(live, 2).await, ["c", "d"]);
    assert_eq!(claim(once, 1).await, ["e"]);
    assert!(ledger
        .acquire_source("inbox", stale, hour, at)
        .await
        .expect("source"));
    assert!(ledger
        .acquire_source("table", live, hour, at)
        .await
        .expect("source"));
    let records_heartbeats = ledger
        .status(at)
        .await
        .expect("status")
        .instances
        .iter()
        .any(|i| i.id == stale);

    // Every live instance runs it after its heartbeat, possibly at the same moment.
    let stale_after = Duration::from_secs(15);
    let freed: u64 =
        futures::future::join_all((0..4).map(|_| ledger.release_stale_leases(at, stale_after)))
            .await
            .into_iter()
            .map(|r| r.expect("release"))
            .sum();

    if !records_heartbeats {
        assert_eq!(freed, 0);
        assert_eq!(claim(other, 10).await, ["f"]);
        return;
    }
    assert_eq!(freed, 2, "a and b");
    let (_, _, a) = ledger.trace("a").await.expect("trace").expect("known");
    assert_eq!((a[0].state, a[0].attempts), (DeliveryState::Pending, 1));
    assert_eq!(a[0].next_attempt_at.map(ms), Some(ms(due)));
    // Taken over at once, not in an hour; the live and heartbeat-less owners keep theirs.
    assert_eq!(claim(other, 10).await, ["a", "b", "f"]);
    assert!(ledger
        .acquire_source("inbox", other, hour, at)
        .await
        .expect("source"));
    assert!(!ledger
        .acquire_source("table", other, hour, at)
        .await
        .expect("source"));
    assert_eq!(
        ledger
            .release_stale_leases(at, stale_after)
            .await
            .expect("release"),
        0
    );
    // A live instance that falls silent for long enough is stale too.
    let much_later = at + TimeDelta::minutes(5);
    assert_eq!(
        ledger
            .release_stale_leases(much_later, stale_after)
            .await
            .expect("release"),
        2,
        "c and d"
    );
    assert_eq!(
        leads(
            ledger
                .claim("crm", much_later, 10, hour, other)
                .await
                .expect("claim")
        ),
        ["c", "d"],
        "e stays with the owner that never sent a heartbeat"
    );
}

// ---------------------------------------------------------------------------------------
// PostgreSQL only: several instances, raw SQL
// ---------------------------------------------------------------------------------------

async fn pg_source_leases_pass_between_instances(ledger: &PostgresLedger) {
    let now = Utc::now();
    let ttl = Duration::from_secs(10);
    let a = "host-a:1";
    let b = "host-b:2";
    assert!(ledger
        .acquire_source("inbox", a, ttl, now)
        .await
        .expect("a"));
    assert!(!ledger
        .acquire_source("inbox", b, ttl, now)
        .await
        .expect("b"));
    // Another source is free.
    assert!(ledger
        .acquire_source("table", b, ttl, now)
        .await
        .expect("b"));
    // The holder renews; the other still waits until the renewed lease runs out.
    let renewed = now + TimeDelta::seconds(8);
    assert!(ledger
        .acquire_source("inbox", a, ttl, renewed)
        .await
        .expect("renew"));
    assert!(!ledger
        .acquire_source("inbox", b, ttl, now + TimeDelta::seconds(12))
        .await
        .expect("b"));
    let expired = renewed + TimeDelta::seconds(10);
    assert!(ledger
        .acquire_source("inbox", b, ttl, expired)
        .await
        .expect("takeover"));
    assert!(!ledger
        .acquire_source("inbox", a, ttl, expired)
        .await
        .expect("a lost it"));
    // Releasing what one does not hold does nothing; the holder's release frees it.
    ledger.release_source("inbox", a).await.expect("release");
    assert!(!ledger
        .acquire_source("inbox", a, ttl, expired)
        .await
        .expect("a"));
    ledger.release_source("inbox", b).await.expect("release");
    assert!(ledger
        .acquire_source("inbox", a, ttl, expired)
        .await
        .expect("a again"));

    // Many instances racing for one source: exactly one wins.
    let results = futures::future::join_all((0..8).map(|i| async move {
        let owner = format!("racer:{i}");
        ledger
            .acquire_source("race", &owner, ttl, now)
            .await
            .expect("race")
    }))
    .await;
    assert_eq!(results.iter().filter(|won| **won).count(), 1);
}

async fn pg_status_shows_instances_and_their_leases(ledger: &PostgresLedger) {
    let now = Utc::now();
    let started = now - TimeDelta::minutes(5);
    // `twin` shares `a`'s host and pid (another machine cloned from one image): only the
    // nonce tells them apart, and they must stay two instances.
    let (a, b, twin) = ("host-a:1:00a0a0", "host-b:2:00b0b0", "host-a:1:0f0f0f");
    for (id, seen) in [(a, now), (b, now - TimeDelta::minutes(2))] {
        let info = InstanceInfo {
            started_at: started,
            ..instance(id)
        };
        ledger.heartbeat(&info, seen).await.expect("heartbeat");
    }
    ledger
        .stage(batch(&["a", "b", "c", "d"], &["crm"], None))
        .await
        .expect("stage");
    let claim_at = soon();
    // A `sync --once` (no heartbeat) and an owner named by a version before the nonce.
    for (owner, n) in [(a, 2), ("sync-host:77:00cafe", 1), (twin, 1)] {
        let claimed = ledger
            .claim("crm", claim_at, n, LEASE, owner)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), n as usize);
    }
    assert!(ledger
        .acquire_source("inbox", "old-host:5", LEASE, claim_at)
        .await
        .expect("source"));
    let status = ledger.status(claim_at).await.expect("status");
    let ids: Vec<&str> = status.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        [a, twin, b, "old-host:5", "sync-host:77:00cafe"],
        "one row per owner name"
    );
    let a = &status.instances[0];
    assert!(a.alive);
    assert_eq!((a.host.as_str(), a.pid), ("host-a", 1));
    assert_eq!(a.version.as_deref(), Some("0.0.1-test"));
    assert_eq!(a.delivery_leases, 2);
    assert_eq!(a.started_at.map(ms), Some(ms(started)));
    let twin = &status.instances[1];
    assert_eq!((twin.host.as_str(), twin.pid), ("host-a", 1));
    assert_eq!((twin.delivery_leases, twin.seen_at), (1, None));
    let b = &status.instances[2];
    assert!(!b.alive, "no heartbeat for two minutes");
    assert_eq!(b.version.as_deref(), Some("0.0.1-test"));
    assert_eq!((b.sources.len(), b.delivery_leases), (0, 0));
    let old = &status.instances[3];
    assert_eq!((old.host.as_str(), old.pid), ("old-host", 5));
    assert_eq!(old.sources, ["inbox"]);
    assert_eq!((old.version.as_deref(), old.started_at), (None, None));
    let sync = &status.instances[4];
    assert_eq!((sync.host.as_str(), sync.pid), ("sync-host", 77));
    assert_eq!((sync.delivery_leases, sync.seen_at), (1, None));
    // Expired leases are not shown.
    let later = ledger
        .status(claim_at + TimeDelta::minutes(2))
        .await
        .expect("status");
    assert!(later.instances.iter().all(|i| i.delivery_leases == 0));
}

/// A second instance connecting does not void the first one's leases.
async fn pg_connecting_leaves_leases_alone(ledger: &PostgresLedger, url: &str) {
    ledger
        .stage(batch(&["a"], &["crm"], None))
        .await
        .expect("stage");
    let now = soon();
    assert_eq!(
        ledger
            .claim("crm", now, 10, LEASE, "host-a:1")
            .await
            .expect("claim")
            .len(),
        1
    );
    let second = PostgresLedger::connect(
        url,
        &PostgresOptions {
            schema: ledger.schema().map(str::to_owned),
            max_connections: 2,
        },
    )
    .await
    .expect("second instance connects");
    assert!(second
        .claim("crm", now, 10, LEASE, "host-b:2")
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(
        second
            .claim("crm", now + TimeDelta::seconds(60), 10, LEASE, "host-b:2")
            .await
            .expect("claim")
            .len(),
        1
    );
    second.close().await;
}

async fn pg_a_corrupt_body_fails_the_claim_and_leases_nothing(ledger: &PostgresLedger) {
    ledger
        .stage(batch(&["a", "b"], &["crm"], None))
        .await
        .expect("stage");
    sqlx::query("UPDATE leads SET body = 'not json' WHERE id = 'b'")
        .execute(ledger.pool())
        .await
        .expect("corrupt");
    match ledger.claim("crm", soon(), 10, LEASE, "w").await {
        Err(LedgerError::Corrupt { lead_id, .. }) => assert_eq!(lead_id, "b"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let leased: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE lease_owner IS NOT NULL")
            .fetch_one(ledger.pool())
            .await
            .expect("count");
    assert_eq!(leased, 0);
}

/// Several live instances freeing the same stale instances' leases at once, while others
/// claim: no deadlock or error, every lease freed exactly once, every delivery handed out
/// once.
async fn pg_racing_releases_free_each_lease_once(ledger: &PostgresLedger) {
    stage_numbered(ledger, 1_500, "crm").await;
    let now = Utc::now();
    let at = soon();
    let hour = Duration::from_secs(3600);
    for i in 0..3 {
        let dead = format!("dead-{i}:{i}");
        ledger
            .heartbeat(&instance(&dead), now - TimeDelta::minutes(1))
            .await
            .expect("heartbeat");
        let held = ledger
            .claim("crm", at, 400, hour, &dead)
            .await
            .expect("claim");
        assert_eq!(held.len(), 400);
        assert!(ledger
            .acquire_source(&format!("source-{i}"), &dead, hour, at)
            .await
            .expect("source"));
    }
    let stale_after = Duration::from_secs(15);
    let claimer = |owner: String| async move {
        let mut mine = Vec::new();
        loop {
            let got = ledger
                .claim("crm", at, 50, hour, &owner)
                .await
                .expect("claim");
            if got.is_empty() {
                break mine;
            }
            mine.extend(got.into_iter().map(|d| d.delivery_id));
        }
    };
    let releases =
        futures::future::join_all((0..6).map(|_| ledger.release_stale_leases(at, stale_after)));
    let claims = futures::future::join_all((0..2).map(|i| claimer(format!("live-{i}:{i}"))));
    let (released, claimed) = futures::join!(releases, claims);
    let mut freed: u64 = released.into_iter().map(|r| r.expect("release")).sum();
    freed += ledger
        .release_stale_leases(at, stale_after)
        .await
        .expect("release");
    assert_eq!(freed, 1_200);

    let mut seen = HashSet::new();
    for id in claimed
        .into_iter()
        .flatten()
        .chain(claimer("live-9:9".into()).await)
    {
        assert!(seen.insert(id), "delivery {id} handed out twice");
    }
    assert_eq!(seen.len(), 1_500);
    for i in 0..3 {
        assert!(ledger
            .acquire_source(&format!("source-{i}"), "live-0:0", hour, at)
            .await
            .expect("source"));
    }
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// The PostgreSQL the tests use.
pub(crate) fn pg_url() -> String {
    std::env::var("LEADSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn services_required() -> bool {
    std::env::var("LEADSYNC_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// A ledger in a fresh schema, or `None` (with a loud message) when PostgreSQL is not there.
async fn pg_ledger(test: &str) -> Option<PostgresLedger> {
    use sqlx::Connection;
    let url = pg_url();
    let probe = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::postgres::PgConnection::connect(&url),
    )
    .await;
    match probe {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) if !services_required() => {
            leadsync_fakes::announce_skip(&format!(
                "{test}: PostgreSQL at {} is unreachable ({e}); \
                 set LEADSYNC_REQUIRE_SERVICES=1 to make this a failure",
                crate::config::redact_database_url(&url)
            ));
            return None;
        }
        Err(_) if !services_required() => {
            leadsync_fakes::announce_skip(&format!(
                "{test}: PostgreSQL at {} did not answer within 5 s",
                crate::config::redact_database_url(&url)
            ));
            return None;
        }
        Ok(Err(e)) => panic!("PostgreSQL unreachable and LEADSYNC_REQUIRE_SERVICES=1: {e}"),
        Err(_) => panic!("PostgreSQL did not answer and LEADSYNC_REQUIRE_SERVICES=1"),
    }
    let schema = format!(
        "leadsync_t_{}_{:08x}",
        test.chars().take(30).collect::<String>(),
        rand::random::<u32>()
    );
    let ledger = PostgresLedger::connect(
        &url,
        &PostgresOptions {
            schema: Some(schema),
            max_connections: 8,
        },
    )
    .await
    .expect("PostgreSQL ledger opens");
    Some(ledger)
}

async fn drop_schema(ledger: PostgresLedger) {
    let schema = ledger.schema().map(str::to_owned);
    ledger.close().await;
    if let Some(schema) = schema {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::postgres::PgConnection::connect(&pg_url())
            .await
            .expect("connect to drop the test schema");
        conn.execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
            .await
            .expect("drop the test schema");
    }
}

/// Run `scenario` on a fresh PostgreSQL schema and drop the schema afterwards, even when
/// the scenario panics.
async fn on_postgres<F, Fut>(test: &str, scenario: F)
where
    F: FnOnce(PostgresLedger) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(ledger) = pg_ledger(test).await else {
        return;
    };
    let outcome = tokio::spawn(scenario(ledger.clone())).await;
    drop_schema(ledger).await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("scenario did not finish: {e}");
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let ledger = crate::ledger::sqlite::SqliteLedger::open(
                        &dir.path().join("ledger.db"),
                    )
                    .await
                    .expect("ledger opens");
                    super::$name(&ledger).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::on_postgres(stringify!($name), |ledger| async move {
                        super::$name(&ledger).await
                    })
                    .await;
                }
            )*
        }
    };
}

contract!(
    staging_twice_ignores_known_leads,
    cursor_moves_only_with_its_leads,
    claim_respects_due_time_lease_and_limit,
    record_stores_each_outcome,
    retry_dead_brings_dead_letters_back,
    status_counts_per_target,
    pauses_and_next_due,
    replay_and_overdue,
    forget_and_purge_erase_personal_data,
    stages_a_large_batch_in_one_transaction,
    concurrent_claims_never_overlap,
    expired_leases_are_taken_over,
    renew_leases_extend_only_the_owners_pending_leases,
    targets_marked_down_show_until_cleared,
    target_up_credits_an_outage_once,
    extend_retry_age_moves_only_pending_deliveries,
    stale_instances_lose_their_leases,
);

mod several_instances {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn source_leases_pass_between_instances() {
        super::on_postgres("source_leases", |l| async move {
            super::pg_source_leases_pass_between_instances(&l).await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn status_shows_instances_and_their_leases() {
        super::on_postgres("status_instances", |l| async move {
            super::pg_status_shows_instances_and_their_leases(&l).await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn connecting_leaves_leases_alone() {
        super::on_postgres("connecting_leases", |l| async move {
            super::pg_connecting_leaves_leases_alone(&l, &super::pg_url()).await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_releases_free_each_lease_once() {
        super::on_postgres("racing_releases", |l| async move {
            super::pg_racing_releases_free_each_lease_once(&l).await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_corrupt_body_fails_the_claim_and_leases_nothing() {
        super::on_postgres("corrupt_body", |l| async move {
            super::pg_a_corrupt_body_fails_the_claim_and_leases_nothing(&l).await
        })
        .await;
    }

    #[tokio::test]
    async fn sqlite_holds_every_source_and_shows_no_instances() {
        use super::Ledger;
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = crate::ledger::sqlite::SqliteLedger::open(&dir.path().join("l.db"))
            .await
            .expect("opens");
        let now = chrono::Utc::now();
        let ttl = std::time::Duration::from_secs(1);
        assert!(ledger
            .acquire_source("s", "a:1", ttl, now)
            .await
            .expect("a"));
        assert!(ledger
            .acquire_source("s", "b:2", ttl, now)
            .await
            .expect("b"));
        assert!(ledger
            .status(now)
            .await
            .expect("status")
            .instances
            .is_empty());
    }
}
