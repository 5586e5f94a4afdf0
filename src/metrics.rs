//! The metric names leadsync exports, and their registration.
//!
//! Counters and the latency histogram are updated where things happen (the pipeline);
//! gauges that describe the ledger's state (pending, dead, oldest pending, throttled,
//! overdue) are read from the ledger when `/metrics` is scraped, so they are never stale and
//! cost nothing between scrapes. Without the admin endpoint no recorder is installed and
//! every update is a no-op.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Leads a source staged (new ones only). Label `source`.
pub const LEADS_STAGED: &str = "leadsync_leads_staged_total";
/// Records a source quarantined. Label `source`.
pub const RECORDS_QUARANTINED: &str = "leadsync_records_quarantined_total";
/// Delivery attempts by outcome. Labels `target`, `outcome` (`delivered`, `retry`, `dead`).
pub const DELIVERIES: &str = "leadsync_deliveries_total";
/// Attempts that will be retried, by failure class. Labels `target`, `class`.
pub const RETRIES: &str = "leadsync_retries_total";
/// Seconds from staging to delivery. Label `target`.
pub const DELIVERY_LATENCY: &str = "leadsync_delivery_latency_seconds";
/// 1 while the target is paused by throttling. Label `target`.
pub const THROTTLED: &str = "leadsync_target_throttled";
/// Deliveries not yet delivered (due or backing off). Label `target`.
pub const PENDING: &str = "leadsync_pending";
/// Deliveries that failed for good. Label `target`.
pub const DEAD: &str = "leadsync_dead";
/// Age of the oldest pending delivery's lead, seconds (0 when none). Label `target`.
pub const OLDEST_PENDING_AGE: &str = "leadsync_oldest_pending_age_seconds";
/// 1 while the target is up, 0 while its circuit is open (down). Label `target`.
pub const TARGET_UP: &str = "leadsync_target_up";
/// Times the target's circuit opened. Labels `target`, `reason` (the failure code).
pub const CIRCUIT_OPENED: &str = "leadsync_target_circuit_opened_total";
/// Pending deliveries older than the follow-up SLA (`telemetry.followup_sla`). Label `target`.
pub const FOLLOWUP_OVERDUE: &str = "leadsync_followup_overdue";

/// Latency buckets, seconds: sub-second to a day (the marketplace's follow-up advice).
const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// Install the Prometheus recorder for this process (once; later calls return `None`).
pub fn install() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.to_string()), LATENCY_BUCKETS)
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    metrics::describe_counter!(LEADS_STAGED, "Leads a source staged (new ones only)");
    metrics::describe_counter!(RECORDS_QUARANTINED, "Records a source could not read");
    metrics::describe_counter!(DELIVERIES, "Delivery attempts by outcome");
    metrics::describe_counter!(RETRIES, "Attempts to be retried, by failure class");
    metrics::describe_histogram!(
        DELIVERY_LATENCY,
        metrics::Unit::Seconds,
        "Seconds from staging to delivery"
    );
    metrics::describe_gauge!(THROTTLED, "1 while the target is paused by throttling");
    metrics::describe_gauge!(TARGET_UP, "1 while the target is up, 0 while it is down");
    metrics::describe_counter!(CIRCUIT_OPENED, "Times the target went down, by reason");
    metrics::describe_gauge!(PENDING, "Deliveries not yet delivered");
    metrics::describe_gauge!(DEAD, "Deliveries that failed for good");
    metrics::describe_gauge!(
        OLDEST_PENDING_AGE,
        "Age of the oldest pending lead, seconds"
    );
    metrics::describe_gauge!(
        FOLLOWUP_OVERDUE,
        "Pending deliveries older than the follow-up SLA"
    );
    Some(handle)
}
