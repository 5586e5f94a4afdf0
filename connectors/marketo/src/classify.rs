//! What Marketo's codes mean. Marketo answers HTTP 200 with `success:false` and a 3-digit
//! code for errors of the whole call, and `status:"skipped"` with a 1xxx reason for a
//! record it did not write (`spec/crm-apis.md` §4.3). Each becomes a [`DeliveryFailure`]
//! whose class the pipeline acts on:
//!
//! | code | meaning | class |
//! |---|---|---|
//! | 600, 601, 602 | token empty / invalid / expired (after the one refresh `rest` makes) | auth expired |
//! | 603 | access denied (permissions, IP allow-list) | target down |
//! | 604, 608, 611, 713 | time-out, temporarily unavailable, system error | transient |
//! | 606 | more than 100 calls in 20 s | throttled, 20 s pause |
//! | 615 | more than 10 calls at once | throttled, 2 s pause, concurrency lowered |
//! | 607 | daily quota reached | throttled until the quota resets (00:00 US Central) |
//! | 1029 | too many jobs in the queue | throttled, 60 s pause |
//! | 610 | resource not found (wrong endpoint) | target down |
//! | 609, 612, 701, other 1xxx | the request itself is wrong | rejected |
//! | skipped with 1xxx | the record (1003 invalid, 1006 unknown field, 1007 several leads match, …) | rejected |
//!
//! Marketo messages can echo values: they go into the failure (for the ledger), never into
//! a log.

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use leadsync_core::{DeliveryFailure, FailureClass};
use std::time::Duration;

/// The failure of a whole call that Marketo refused with response-level `code`.
pub(crate) fn response_failure(code: &str, message: &str, now: DateTime<Utc>) -> DeliveryFailure {
    let text = format!("Marketo error {code}: {message}");
    let tag = format!("marketo_{code}");
    let throttled = |secs: u64| {
        DeliveryFailure::throttled(tag.clone(), text.clone(), Some(Duration::from_secs(secs)))
    };
    match code {
        "600" | "601" | "602" => DeliveryFailure::new(FailureClass::AuthExpired, tag, text),
        "603" | "610" => DeliveryFailure::target_down(tag, text),
        "604" | "608" | "611" | "713" => DeliveryFailure::transient(tag, text),
        "606" => throttled(20),
        "615" => throttled(2).limiting_concurrency(),
        "607" => DeliveryFailure::throttled(
            tag,
            format!("{text} (the daily API quota; it resets at 00:00 US Central)"),
            Some(next_quota_reset(now)),
        ),
        "1029" => throttled(60),
        "609" | "612" | "701" => DeliveryFailure::rejected(tag, text),
        "" => DeliveryFailure::transient(
            "marketo_no_code",
            "Marketo answered success:false without an error code",
        ),
        c if c.starts_with('6') || c.starts_with('7') => DeliveryFailure::transient(tag, text),
        _ => DeliveryFailure::rejected(tag, text),
    }
}

/// The failure of one record Marketo skipped, from its first reason.
pub(crate) fn skipped_failure(code: &str, message: &str) -> DeliveryFailure {
    let note = match code {
        "1007" => " (several Marketo leads have this lookup value: merge them in Marketo, then replay)",
        "1006" => " (a mapped field does not exist in Marketo: fix [mapping.fields] or create it, then replay)",
        "1008" => " (the API user has no access to the partition)",
        _ => "",
    };
    let code = if code.is_empty() { "skipped" } else { code };
    DeliveryFailure::rejected(
        format!("marketo_{code}"),
        format!("Marketo skipped the record, reason {code}: {message}{note}"),
    )
}

/// How long until the daily quota resets. Marketo documents 00:00 CST; whether it follows
/// daylight time is not documented, so this waits for the next of 05:00 and 06:00 UTC
/// (midnight CDT and CST): at worst one call an hour early, answered 607 again.
pub fn next_quota_reset(now: DateTime<Utc>) -> Duration {
    let midnight = now
        .with_hour(0)
        .and_then(|t| t.with_minute(0))
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now);
    let next = [5, 6, 29, 30]
        .into_iter()
        .map(|h| midnight + ChronoDuration::hours(h))
        .find(|t| *t > now)
        .unwrap_or(now + ChronoDuration::hours(1));
    (next - now).to_std().unwrap_or(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn classes_of_response_codes() {
        let now = at("2026-11-30T12:00:00Z");
        let f = response_failure(
            "606",
            "Max rate limit '100' exceeded with in '20' secs",
            now,
        );
        assert_eq!(
            (f.class, f.retry_after),
            (FailureClass::Throttled, Some(Duration::from_secs(20)))
        );
        let f = response_failure("615", "Concurrent access limit reached", now);
        assert!(f.concurrency_limit && f.class == FailureClass::Throttled);
        let f = response_failure("607", "Daily quota reached", now);
        assert_eq!(f.retry_after, Some(Duration::from_secs(17 * 3600)));
        for c in ["604", "608", "611", "713"] {
            assert_eq!(
                response_failure(c, "", now).class,
                FailureClass::Transient,
                "{c}"
            );
        }
        assert_eq!(
            response_failure("603", "", now).class,
            FailureClass::TargetDown
        );
        assert_eq!(
            response_failure("602", "", now).class,
            FailureClass::AuthExpired
        );
        assert_eq!(
            response_failure("609", "", now).class,
            FailureClass::Rejected
        );
        assert_eq!(
            response_failure("1003", "", now).class,
            FailureClass::Rejected
        );
        assert_eq!(
            response_failure("1029", "", now).class,
            FailureClass::Throttled
        );
        let f = skipped_failure("1007", "Multiple lead match lookup criteria");
        assert_eq!(f.class, FailureClass::Rejected);
        assert!(f.message.contains("merge them"));
    }

    #[test]
    fn quota_resets_at_the_next_us_central_midnight() {
        let h = |d: Duration| d.as_secs() as f64 / 3600.0;
        assert_eq!(h(next_quota_reset(at("2026-11-30T04:00:00Z"))), 1.0);
        assert_eq!(h(next_quota_reset(at("2026-11-30T05:30:00Z"))), 0.5);
        assert_eq!(h(next_quota_reset(at("2026-11-30T06:00:00Z"))), 23.0);
        assert_eq!(h(next_quota_reset(at("2026-11-30T23:00:00Z"))), 6.0);
    }
}
