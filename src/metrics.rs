//! The metric names leadsync exports, and their registration.
//!
//! Counters and the latency histogram are updated where things happen (the pipeline);
//! gauges that describe the ledger's state (pending, dead, oldest pending, throttled,
//! overdue) are read from the ledger when `/metrics` is scraped, so they are never stale and
//! cost nothing between scrapes; so are the process metrics (`process_*`, metrics-process). Without the admin endpoint no recorder is installed and
//! every update is a no-op.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The process's own figures (CPU seconds, resident memory, open files, threads, start
/// time), in the names the Prometheus client libraries use (`process_*`), read at each scrape.
static PROCESS: std::sync::LazyLock<metrics_process::Collector> =
    std::sync::LazyLock::new(metrics_process::Collector::default);

/// Refresh the process metrics (call before rendering a scrape).
pub fn collect_process() {
    PROCESS.collect();
}

/// Leads a source staged (new ones only). Label `source`.
pub const LEADS_STAGED: &str = "leadsync_leads_staged_total";
/// When the source last pulled without error, Unix seconds. Label `source`.
pub const SOURCE_LAST_SUCCESS: &str = "leadsync_source_last_success_timestamp_seconds";
/// Pulls that failed (the source, or the ledger staging its records). Label `source`.
pub const SOURCE_PULL_FAILURES: &str = "leadsync_source_pull_failures_total";
/// When the target's canary last arrived, Unix seconds. Label `target`.
pub const CANARY_LAST_SUCCESS: &str = "leadsync_canary_last_success_timestamp_seconds";
/// How long the target's last canary that arrived took, seconds. Label `target`.
pub const CANARY_LATENCY: &str = "leadsync_canary_latency_seconds";
/// Always 1; labels `version` and `commit` say what is running.
pub const BUILD_INFO: &str = "leadsync_build_info";
/// Records a source quarantined. Label `source`.
pub const RECORDS_QUARANTINED: &str = "leadsync_records_quarantined_total";
/// Delivery attempts by outcome. Labels `target`, `outcome` (`delivered`, `retry`, `dead`).
pub const DELIVERIES: &str = "leadsync_deliveries_total";
/// Attempts that will be retried, by failure class. Labels `target`, `class`.
pub const RETRIES: &str = "leadsync_retries_total";
/// Seconds from staging to delivery. Label `target`.
pub const DELIVERY_LATENCY: &str = "leadsync_delivery_latency_seconds";
/// Seconds one request (one batch) took, from the connector's push to its answer. Label
/// `target`.
pub const REQUEST_DURATION: &str = "leadsync_request_duration_seconds";
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

/// Requests the `https_inbox` answered, by status code. Labels `source`, `code`.
pub const INBOX_REQUESTS: &str = "leadsync_inbox_requests_total";
/// Seconds from an inbox request's arrival to its answer (a `200` only once durable).
/// Label `source`.
pub const INBOX_REQUEST_DURATION: &str = "leadsync_inbox_request_duration_seconds";

/// Latency buckets, seconds: sub-second to a day (the marketplace's follow-up advice).
const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// Request buckets, seconds: a fast webhook to a CRM's slowest batch and the timeouts.
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Install the Prometheus recorder for this process (once; later calls return `None`).
pub fn install() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.to_string()), LATENCY_BUCKETS)
        .ok()?
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_string()), REQUEST_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(INBOX_REQUEST_DURATION.to_string()),
                REQUEST_BUCKETS,
            )
        })
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    metrics::describe_counter!(LEADS_STAGED, "Leads a source staged (new ones only)");
    metrics::describe_counter!(INBOX_REQUESTS, "Requests the https_inbox answered, by code");
    metrics::describe_histogram!(
        INBOX_REQUEST_DURATION,
        "Seconds from an inbox request to its answer (200 only once durable)"
    );
    metrics::describe_gauge!(
        SOURCE_LAST_SUCCESS,
        metrics::Unit::Seconds,
        "When the source last pulled without error (Unix time)"
    );
    metrics::describe_counter!(SOURCE_PULL_FAILURES, "Pulls of the source that failed");
    metrics::describe_gauge!(BUILD_INFO, "The running version and commit (always 1)");
    metrics::describe_gauge!(
        CANARY_LAST_SUCCESS,
        metrics::Unit::Seconds,
        "When the target's canary last arrived (Unix time)"
    );
    metrics::describe_gauge!(
        CANARY_LATENCY,
        metrics::Unit::Seconds,
        "How long the target's last canary took"
    );
    metrics::gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("LEADSYNC_GIT_COMMIT")
    )
    .set(1.0);
    PROCESS.describe();
    metrics::describe_counter!(RECORDS_QUARANTINED, "Records a source could not read");
    metrics::describe_counter!(DELIVERIES, "Delivery attempts by outcome");
    metrics::describe_counter!(RETRIES, "Attempts to be retried, by failure class");
    metrics::describe_histogram!(
        DELIVERY_LATENCY,
        metrics::Unit::Seconds,
        "Seconds from staging to delivery"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Seconds one request (one batch) took, from the connector's push to its answer"
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
