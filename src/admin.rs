//! The admin endpoint (off unless `[admin] listen` is set): `/metrics` in Prometheus format,
//! `/healthz` (the scheduler loop is making progress) and `/readyz` (the ledger is open, no
//! target is down and every target's last check passed).
//!
//! It serves no personal data: metrics carry target and source names only. It has no
//! authentication, so it belongs on a local or private address.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;
use crate::metrics as m;

/// What the daemon knows about its own health, shared with the admin endpoint.
#[derive(Default)]
pub struct Health {
    /// Unix milliseconds of the scheduler loop's last tick.
    pub last_tick_ms: AtomicI64,
    /// Per target: `None` = check passed, `Some(reason)` = failed or not yet run.
    pub checks: Mutex<BTreeMap<String, Option<String>>>,
    /// Targets whose circuit is open (down), with the reason.
    pub down: Mutex<BTreeMap<String, String>>,
    /// Targets whose last canary failed, with the reason.
    pub canaries: Mutex<BTreeMap<String, String>>,
}

impl crate::pipeline::HealthSink for Health {
    fn target_down(&self, target: &str, reason: Option<&str>) {
        if let Ok(mut d) = self.down.lock() {
            match reason {
                Some(r) => d.insert(target.to_string(), r.to_string()),
                None => d.remove(target),
            };
        }
    }
}

impl Health {
    pub fn tick(&self) {
        self.last_tick_ms
            .store(Utc::now().timestamp_millis(), Ordering::SeqCst);
    }

    /// The loop ticked within `within`.
    pub fn is_live(&self, within: Duration) -> bool {
        let last = self.last_tick_ms.load(Ordering::SeqCst);
        last > 0 && Utc::now().timestamp_millis() - last <= within.as_millis() as i64
    }

    pub fn set_check(&self, target: &str, result: Option<String>) {
        if let Ok(mut c) = self.checks.lock() {
            c.insert(target.to_string(), result);
        }
    }

    /// Record the outcome of `target`'s last canary: `None` arrived, `Some(reason)` failed.
    pub fn set_canary(&self, target: &str, failure: Option<String>) {
        if let Ok(mut c) = self.canaries.lock() {
            match failure {
                Some(r) => c.insert(target.to_string(), r),
                None => c.remove(target),
            };
        }
    }

    /// Targets that are down, whose canary failed, or whose last check did not pass.
    pub fn not_ready(&self) -> Vec<(String, String)> {
        let tagged = |m: &Mutex<BTreeMap<String, String>>, tag: &str| -> Vec<(String, String)> {
            m.lock()
                .map(|d| {
                    d.iter()
                        .map(|(t, r)| (t.clone(), format!("{tag}: {r}")))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = tagged(&self.down, "down");
        out.extend(tagged(&self.canaries, "canary failed"));
        out.extend(self.failing_checks());
        out
    }

    /// Targets whose last check did not pass, with the reason.
    pub fn failing_checks(&self) -> Vec<(String, String)> {
        self.checks
            .lock()
            .map(|c| {
                c.iter()
                    .filter_map(|(t, r)| r.as_ref().map(|r| (t.clone(), r.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Clone)]
struct AdminState {
    ledger: Arc<dyn Ledger>,
    health: Arc<Health>,
    prometheus: Option<PrometheusHandle>,
    followup_sla: Duration,
}

/// Bind the admin endpoint; it serves until `stop` is cancelled.
pub async fn serve(
    listen: SocketAddr,
    ledger: Arc<dyn Ledger>,
    health: Arc<Health>,
    prometheus: Option<PrometheusHandle>,
    followup_sla: Duration,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listen, "admin endpoint listening");
    let state = AdminState {
        ledger,
        health,
        prometheus,
        followup_sla,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    Ok(tokio::spawn(async move {
        let shutdown = async move { stop.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    }))
}

/// Set the ledger-state gauges from the ledger, now.
pub async fn refresh_gauges(ledger: &dyn Ledger, followup_sla: Duration) -> Result<(), String> {
    let now = Utc::now();
    let status = ledger.status(now).await.map_err(|e| e.to_string())?;
    for t in &status.targets {
        let labels = [("target", t.target.clone())];
        metrics::gauge!(m::PENDING, &labels).set(t.pending as f64);
        metrics::gauge!(m::DEAD, &labels).set(t.dead as f64);
        let age = t
            .oldest_pending_staged_at
            .map(|s| (now - s).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!(m::OLDEST_PENDING_AGE, &labels).set(age);
        let throttled = t.paused_until.is_some_and(|p| p > now);
        metrics::gauge!(m::THROTTLED, &labels).set(if throttled { 1.0 } else { 0.0 });
        metrics::gauge!(m::FOLLOWUP_OVERDUE, &labels).set(0.0);
    }
    let sla = chrono::Duration::from_std(followup_sla).unwrap_or(chrono::Duration::hours(1));
    for (target, n) in ledger.overdue(now - sla).await.map_err(|e| e.to_string())? {
        metrics::gauge!(m::FOLLOWUP_OVERDUE, "target" => target).set(n as f64);
    }
    Ok(())
}

async fn metrics_page(State(s): State<AdminState>) -> impl IntoResponse {
    let Some(handle) = &s.prometheus else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n".to_string(),
        );
    };
    if let Err(e) = refresh_gauges(s.ledger.as_ref(), s.followup_sla).await {
        tracing::warn!(error = %e, "reading the ledger for /metrics failed");
    }
    m::collect_process();
    handle.run_upkeep();
    (StatusCode::OK, handle.render())
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.health.is_live(Duration::from_secs(30)) {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "scheduler loop not making progress\n",
        )
    }
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    // Cheap: one trivial statement, whatever the size of the ledger.
    if let Err(e) = s.ledger.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("ledger: {e}\n"));
    }
    let failing = s.health.not_ready();
    if failing.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        let lines: Vec<String> = failing
            .iter()
            .map(|(t, r)| format!("target {t}: {r}"))
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", lines.join("\n")),
        )
    }
}
