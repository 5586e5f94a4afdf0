//! The PostgreSQL ledger: the [`Ledger`] contract for several leadsync instances sharing one
//! database (scale-out and failover).
//!
//! It owns its schema (the embedded migrations in `migrations/postgres/`, applied under
//! sqlx's advisory lock so instances starting together do not race), the connection pool,
//! and the coordination between instances, which is nothing but rows and row locks:
//!
//! - **Delivery leases.** A claim is one statement: the due, unleased (or lease-expired)
//!   pending rows are picked with `FOR UPDATE SKIP LOCKED` and leased to the claiming
//!   instance (`lease_owner` = its `host:pid:nonce`, see `crate::identity`) in the same
//!   `UPDATE`, so two instances never get the same row and never wait on each other. An
//!   instance that dies leaves its leases to run out; the claim condition then hands the
//!   rows to whoever asks next. Opening the ledger never clears leases: they may belong to
//!   live instances.
//! - **Late outcomes.** `record` only changes rows still `pending`. When an instance's lease
//!   ran out mid-push and another instance took the delivery over, both may push (the CRM
//!   write is idempotent) and both may record: a second `Delivered` finds the row delivered
//!   and is ignored; a stale `Retry`/`Release`/`Dead` cannot undo a newer `Delivered`, and
//!   applies only while its instance still holds the lease, so it cannot pre-empt the new
//!   holder either.
//! - **Source leases.** `source_leases` has one row per source; only its holder pulls
//!   ([`Ledger::acquire_source`]), renewed while it pulls and taken over once it runs out.
//! - **Heartbeats.** `instances` has one row per daemon (its id, host, pid, version and start
//!   time), refreshed every few seconds, so `status` lists the instances with their source
//!   and delivery leases.
//! - **Failover.** An instance whose heartbeat stopped (SIGKILL, lost host) would hold its
//!   leases until they run out (`ledger.lease`, minutes). The live instances call
//!   [`Ledger::release_stale_leases`] after each heartbeat: one statement frees the delivery
//!   and source leases of every instance whose heartbeat is too old, picking the rows with
//!   `FOR UPDATE SKIP LOCKED` so instances doing it at once share the rows instead of
//!   waiting on (or deadlocking with) each other. An instance that was only paused past
//!   that point (a stalled VM) may find its deliveries taken over: the second push is the
//!   same idempotent CRM write, and `record` accepts only one outcome, as above.
//!
//! Timestamps are BIGINT unix milliseconds (UTC) taken from the instances' clocks (leases
//! compare them across machines: keep the clocks synchronised with NTP). Leads are JSON text.
//! Erasure (`forget_email`, retention) rewrites the rows and then runs a plain `VACUUM` so the
//! old row versions' space is reclaimed; PostgreSQL does not zero that space (there is no
//! `secure_delete`), and WAL archives and backups keep their own copies until they expire.
//!
//! The statements SQLite runs with the same text are in `sql.rs`; this file keeps what is
//! PostgreSQL's own: the pool and schema, claims, outcomes (`UNNEST` arrays), deadlock
//! retries, snapshots (`REPEATABLE READ READ ONLY`), erasure's row locks and `VACUUM`, the
//! instances in `status`, and failover.
//!
//! It must not decide when to retry (the pipeline passes `next_attempt_at` in).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use leadsync_core::Lead;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, Postgres, Row};

use crate::config::redact_database_url;

use super::codec::{encode_leads, from_ms, ms_after, to_ms, to_u32, to_u64, ClaimRow};
use super::sql::{self, log_staged};
use super::{
    ClaimedDelivery, DeadLetter, DeadLetterFilter, DeliveryTrace, InstanceInfo, InstanceStatus,
    Ledger, LedgerError, LedgerStatus, RecordedOutcome, StageBatch, StageReport, StagedLead,
    TargetDown, INSTANCE_ALIVE,
};

/// The statements whose text both backends share.
type Sql = sql::Statements<Postgres>;

/// The schema, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Per-target counts for `status` (`$1`: now).
const TARGET_COUNTS: &str = "SELECT target, \
        COUNT(*) FILTER (WHERE state = 'pending') AS pending, \
        COUNT(*) FILTER (WHERE state = 'pending' AND next_attempt_at > $1) AS retrying, \
        COUNT(*) FILTER (WHERE state = 'delivered') AS delivered, \
        COUNT(*) FILTER (WHERE state = 'dead') AS dead \
    FROM deliveries GROUP BY target ORDER BY target";
/// How long to wait for a pooled connection before failing the call.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// A transaction that lost a deadlock (SQLSTATE 40P01) is run again this many times.
const DEADLOCK_RETRIES: u32 = 3;
/// Heartbeats older than this are deleted (the instance is long gone).
const FORGET_INSTANCES_AFTER_MS: i64 = 24 * 3600 * 1000;

/// How to connect, beside the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// The schema the tables live in, created if missing; `None` uses the server's
    /// `search_path` (normally `public`). Tests use a schema each.
    pub schema: Option<String>,
    /// Pool size of this instance.
    pub max_connections: u32,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: None,
            max_connections: 8,
        }
    }
}

/// The ledger in a PostgreSQL database, shared by every instance that connects to it.
#[derive(Debug, Clone)]
pub struct PostgresLedger {
    pool: PgPool,
    schema: Option<String>,
}

/// A schema name we are willing to put into SQL: lower-case letters, digits, `_`.
fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_deadlock(e: &LedgerError) -> bool {
    matches!(e, LedgerError::Database(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("40P01") | Some("40001")))
}

/// Run `attempt` (one transaction) again when it lost a deadlock, up to
/// [`DEADLOCK_RETRIES`] times.
async fn with_deadlock_retries<T, F, Fut>(mut attempt: F) -> Result<T, LedgerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    let mut retries = 0;
    loop {
        match attempt().await {
            Err(e) if is_deadlock(&e) && retries < DEADLOCK_RETRIES => retries += 1,
            other => return other,
        }
    }
}

/// Frees the leases of every instance whose heartbeat is older than `$1`: its pending
/// deliveries' leases (nothing else of theirs changes) and its source leases. Rows another
/// transaction holds are skipped (another instance freeing them, or a claim taking them
/// over); the next heartbeat's call finds what is left. One row per instance freed:
/// `owner`, `deliveries`, `sources`.
const RELEASE_STALE: &str = "\
    WITH stale AS (SELECT id FROM instances WHERE seen_at < $1), \
    picked AS ( \
        SELECT id, lease_owner AS owner FROM deliveries \
        WHERE state = 'pending' AND lease_owner IN (SELECT id FROM stale) \
        FOR UPDATE SKIP LOCKED), \
    freed AS ( \
        UPDATE deliveries d SET lease_owner = NULL, lease_until = NULL \
        FROM picked WHERE d.id = picked.id \
        RETURNING picked.owner), \
    held AS ( \
        SELECT source, owner FROM source_leases \
        WHERE owner IN (SELECT id FROM stale) \
        FOR UPDATE SKIP LOCKED), \
    dropped AS ( \
        DELETE FROM source_leases s USING held \
        WHERE s.source = held.source AND s.owner = held.owner \
        RETURNING held.owner) \
    SELECT owner, \
           COUNT(*) FILTER (WHERE kind = 'delivery') AS deliveries, \
           COUNT(*) FILTER (WHERE kind = 'source') AS sources \
    FROM (SELECT owner, 'delivery' AS kind FROM freed \
          UNION ALL SELECT owner, 'source' AS kind FROM dropped) AS released \
    GROUP BY owner ORDER BY owner";

impl PostgresLedger {
    /// Connect to `url`, create the schema if asked and missing, and bring the tables up to
    /// date. Leases are left alone: other instances may hold them.
    pub async fn connect(url: &str, options: &PostgresOptions) -> Result<Self, LedgerError> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| {
                LedgerError::Settings(format!(
                    "ledger.url {} is not a usable PostgreSQL URL: {e}",
                    redact_database_url(url)
                ))
            })?
            .application_name("leadsync");
        if let Some(schema) = &options.schema {
            if !valid_schema(schema) {
                return Err(LedgerError::Settings(format!(
                    "ledger.schema {schema:?}: expected lower-case letters, digits and `_`"
                )));
            }
            create_schema(&connect, schema).await?;
        }
        let search_path = options
            .schema
            .as_ref()
            .map(|s| format!("SET search_path TO \"{s}\""));
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _meta| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    if let Some(sql) = search_path {
                        conn.execute(sql.as_str()).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PostgresLedger {
            pool,
            schema: options.schema.clone(),
        })
    }

    /// The schema the tables live in, if one was set.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The connection pool (for tests and tools that inspect the tables).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Close the connections.
    pub async fn close(self) {
        self.pool.close().await;
    }

    async fn stage_once(
        &self,
        batch: &StageBatch,
        bodies: &[String],
        now: i64,
    ) -> Result<StageReport, LedgerError> {
        let mut tx = self.pool.begin().await?;
        // Rows go in id order, so that two transactions staging overlapping leads wait on
        // each other instead of deadlocking.
        let mut leads: Vec<(&StagedLead, &String)> = batch.leads.iter().zip(bodies).collect();
        leads.sort_by(|a, b| a.0.lead.id.cmp(&b.0.lead.id));
        let report = Sql::stage(&mut tx, batch, &leads, now).await?;
        tx.commit().await?;
        log_staged(&batch.source, &report);
        Ok(report)
    }

    async fn record_once(
        &self,
        outcomes: &[RecordedOutcome],
        owner: &str,
    ) -> Result<u64, LedgerError> {
        let now = to_ms(Utc::now());
        let mut delivered: (Vec<i64>, Vec<Option<String>>) = Default::default();
        let mut retry: (Vec<i64>, Vec<i64>, Vec<Option<String>>, Vec<String>) = Default::default();
        let mut release: (Vec<i64>, Vec<i64>) = Default::default();
        let mut dead: (Vec<i64>, Vec<Option<String>>, Vec<String>) = Default::default();
        for outcome in outcomes {
            match outcome {
                RecordedOutcome::Delivered {
                    delivery_id,
                    crm_ref,
                } => {
                    delivered.0.push(*delivery_id);
                    delivered.1.push(crm_ref.clone());
                }
                RecordedOutcome::Retry {
                    delivery_id,
                    next_attempt_at,
                    error_code,
                    error,
                } => {
                    retry.0.push(*delivery_id);
                    retry.1.push(to_ms(*next_attempt_at));
                    retry.2.push(error_code.clone());
                    retry.3.push(error.clone());
                }
                RecordedOutcome::Release {
                    delivery_id,
                    next_attempt_at,
                } => {
                    release.0.push(*delivery_id);
                    release.1.push(to_ms(*next_attempt_at));
                }
                RecordedOutcome::Dead {
                    delivery_id,
                    error_code,
                    error,
                } => {
                    dead.0.push(*delivery_id);
                    dead.1.push(error_code.clone());
                    dead.2.push(error.clone());
                }
            }
        }

        // One statement per kind of outcome. Only a pending delivery takes an outcome: a
        // late answer never turns a delivered or dead row back into something else.
        let mut tx = self.pool.begin().await?;
        let mut changed = 0;
        if !delivered.0.is_empty() {
            changed += sqlx::query(
                "UPDATE deliveries d SET state = 'delivered', attempts = d.attempts + 1, \
                 crm_ref = COALESCE(u.crm_ref, d.crm_ref), delivered_at = $1, \
                 next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL, updated_at = $1 \
                 FROM UNNEST($2::BIGINT[], $3::TEXT[]) AS u (id, crm_ref) \
                 WHERE d.id = u.id AND d.state = 'pending'",
            )
            .bind(now)
            .bind(&delivered.0)
            .bind(&delivered.1)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !retry.0.is_empty() {
            changed += sqlx::query(
                "UPDATE deliveries d SET attempts = d.attempts + 1, next_attempt_at = u.next, \
                 error_code = u.code, error = u.error, lease_owner = NULL, lease_until = NULL, \
                 updated_at = $1 \
                 FROM UNNEST($2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[]) \
                      AS u (id, next, code, error) \
                 WHERE d.id = u.id AND d.state = 'pending' \
                   AND (d.lease_owner IS NULL OR d.lease_owner = $6)",
            )
            .bind(now)
            .bind(&retry.0)
            .bind(&retry.1)
            .bind(&retry.2)
            .bind(&retry.3)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !release.0.is_empty() {
            changed += sqlx::query(
                "UPDATE deliveries d SET next_attempt_at = u.next, \
                 lease_owner = NULL, lease_until = NULL, updated_at = $1 \
                 FROM UNNEST($2::BIGINT[], $3::BIGINT[]) AS u (id, next) \
                 WHERE d.id = u.id AND d.state = 'pending' \
                   AND (d.lease_owner IS NULL OR d.lease_owner = $4)",
            )
            .bind(now)
            .bind(&release.0)
            .bind(&release.1)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !dead.0.is_empty() {
            changed += sqlx::query(
                "UPDATE deliveries d SET state = 'dead', attempts = d.attempts + 1, \
                 next_attempt_at = NULL, error_code = u.code, error = u.error, \
                 lease_owner = NULL, lease_until = NULL, updated_at = $1 \
                 FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[]) AS u (id, code, error) \
                 WHERE d.id = u.id AND d.state = 'pending' \
                   AND (d.lease_owner IS NULL OR d.lease_owner = $5)",
            )
            .bind(now)
            .bind(&dead.0)
            .bind(&dead.1)
            .bind(&dead.2)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Reclaim the space of erased row versions (best effort: the erasure itself is done).
    async fn vacuum(&self) {
        if let Err(e) = self.pool.execute("VACUUM leads, deliveries").await {
            tracing::warn!(
                error = %e,
                "VACUUM after erasing personal data failed; old row versions stay until \
                 autovacuum reclaims them"
            );
        }
    }
}

/// `CREATE SCHEMA IF NOT EXISTS`, tolerating another instance creating it at the same time.
async fn create_schema(connect: &PgConnectOptions, schema: &str) -> Result<(), LedgerError> {
    let mut conn = connect.connect().await?;
    let created = conn
        .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
        .await;
    if let Err(e) = created {
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_namespace WHERE nspname = $1")
                .bind(schema)
                .fetch_optional(&mut conn)
                .await?;
        if exists.is_none() {
            return Err(e.into());
        }
    }
    conn.close().await?;
    Ok(())
}

/// What a claim returns: the shared columns, and the due time it is sorted by.
#[derive(sqlx::FromRow)]
struct PgClaimRow {
    next_attempt_at: i64,
    #[sqlx(flatten)]
    claim: ClaimRow,
}

#[async_trait]
impl Ledger for PostgresLedger {
    async fn stage(&self, batch: StageBatch) -> Result<StageReport, LedgerError> {
        let bodies = encode_leads(&batch.leads)?;
        let now = to_ms(Utc::now());
        with_deadlock_retries(|| self.stage_once(&batch, &bodies, now)).await
    }

    async fn cursor(&self, source: &str) -> Result<Option<String>, LedgerError> {
        Sql::cursor(&self.pool, source).await
    }

    async fn claim(
        &self,
        target: &str,
        now: DateTime<Utc>,
        limit: u32,
        lease: Duration,
        owner: &str,
    ) -> Result<Vec<ClaimedDelivery>, LedgerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = to_ms(now);
        let until = ms_after(now, lease);
        let mut tx = self.pool.begin().await?;
        // Pick and lease in one statement; rows another instance is claiming right now are
        // skipped rather than waited for. An expired lease counts as no lease.
        let rows: Vec<PgClaimRow> = sqlx::query_as(
            "WITH picked AS ( \
                 SELECT id FROM deliveries \
                 WHERE target = $1 AND state = 'pending' AND next_attempt_at <= $2 \
                   AND (lease_until IS NULL OR lease_until <= $2) \
                 ORDER BY next_attempt_at, id \
                 LIMIT $3 \
                 FOR UPDATE SKIP LOCKED) \
             UPDATE deliveries d SET lease_owner = $4, lease_until = $5 \
             FROM picked, leads l \
             WHERE d.id = picked.id AND l.id = d.lead_id \
             RETURNING d.id, d.target, d.idempotency_key, d.attempts, d.age_from, \
                       d.next_attempt_at, l.id AS lead_id, l.staged_at, l.body",
        )
        .bind(target)
        .bind(now)
        .bind(i64::from(limit))
        .bind(owner)
        .bind(until)
        .fetch_all(&mut *tx)
        .await?;
        // Decode everything before committing: a corrupt row rolls the whole claim back.
        let mut claimed = rows
            .into_iter()
            .map(|row| Ok((row.next_attempt_at, row.claim.decode()?)))
            .collect::<Result<Vec<_>, LedgerError>>()?;
        tx.commit().await?;
        claimed.sort_by_key(|(due, d)| (*due, d.delivery_id));
        tracing::trace!(target = %target, claimed = claimed.len(), "claimed deliveries under lease");
        Ok(claimed.into_iter().map(|(_, d)| d).collect())
    }

    async fn record(&self, outcomes: &[RecordedOutcome], owner: &str) -> Result<(), LedgerError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let changed = with_deadlock_retries(|| self.record_once(outcomes, owner)).await?;
        let ignored = (outcomes.len() as u64).saturating_sub(changed);
        if ignored > 0 {
            tracing::warn!(
                outcomes = ignored,
                "outcome(s) for deliveries that are no longer pending (recorded by another \
                 instance after a lease ran out, or unknown); ignored"
            );
        }
        Ok(())
    }

    async fn next_due(&self, target: &str) -> Result<Option<DateTime<Utc>>, LedgerError> {
        Sql::next_due(&self.pool, target).await
    }

    async fn pause_target(
        &self,
        target: &str,
        until: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), LedgerError> {
        Sql::pause_target(&self.pool, target, until, reason).await
    }

    async fn set_source_error(
        &self,
        source: &str,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        Sql::set_source_error(&self.pool, source, error, now).await
    }

    async fn set_target_note(
        &self,
        target: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        Sql::set_target_note(&self.pool, target, note, now).await
    }

    async fn paused_until(&self, target: &str) -> Result<Option<DateTime<Utc>>, LedgerError> {
        Sql::paused_until(&self.pool, target).await
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        Sql::ping(&self.pool).await
    }

    async fn set_target_down(
        &self,
        target: &str,
        down: Option<&TargetDown>,
    ) -> Result<(), LedgerError> {
        Sql::set_target_down(&self.pool, target, down).await
    }

    /// One transaction: the delete that decides which instance credits the outage, and the
    /// credit (retried on a deadlock with a `record`, as `extend_retry_age`).
    async fn target_up(
        &self,
        target: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Duration>, LedgerError> {
        with_deadlock_retries(|| async {
            let mut tx = self.pool.begin().await?;
            let outage = Sql::target_up(&mut tx, target, now).await?;
            tx.commit().await?;
            Ok(outage)
        })
        .await
    }

    async fn target_down(&self, target: &str) -> Result<Option<TargetDown>, LedgerError> {
        Sql::target_down(&self.pool, target).await
    }

    /// One statement over the target's pending rows; it waits on rows a `record` holds,
    /// so it may lose a deadlock to one and is then run again.
    async fn extend_retry_age(&self, target: &str, by: Duration) -> Result<u64, LedgerError> {
        with_deadlock_retries(|| Sql::extend_retry_age(&self.pool, target, by)).await
    }

    async fn status(&self, now: DateTime<Utc>) -> Result<LedgerStatus, LedgerError> {
        let now_ms = to_ms(now);
        // One snapshot for every number.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let mut status = Sql::status(&mut tx, TARGET_COUNTS, now_ms).await?;

        // Instances: every heartbeat, plus lease owners that never sent one.
        let mut instances: BTreeMap<String, InstanceStatus> = BTreeMap::new();
        let rows = sqlx::query("SELECT id, host, pid, version, started_at, seen_at FROM instances")
            .fetch_all(&mut *tx)
            .await?;
        let alive_after = now_ms - i64::try_from(INSTANCE_ALIVE.as_millis()).unwrap_or(0);
        for row in &rows {
            let id: String = row.try_get("id")?;
            let seen_at: i64 = row.try_get("seen_at")?;
            instances.insert(
                id.clone(),
                InstanceStatus {
                    host: row.try_get("host")?,
                    pid: to_u32(row.try_get("pid")?),
                    version: row.try_get("version")?,
                    started_at: Some(from_ms(row.try_get("started_at")?, &id)?),
                    seen_at: Some(from_ms(seen_at, &id)?),
                    alive: seen_at >= alive_after,
                    sources: Vec::new(),
                    delivery_leases: 0,
                    id,
                },
            );
        }
        let unknown = |owner: &str| {
            let (host, pid) = crate::identity::host_and_pid(owner);
            InstanceStatus {
                id: owner.to_string(),
                host,
                pid,
                version: None,
                started_at: None,
                seen_at: None,
                alive: false,
                sources: Vec::new(),
                delivery_leases: 0,
            }
        };
        let rows = sqlx::query(
            "SELECT source, owner FROM source_leases WHERE lease_until > $1 ORDER BY source",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let owner: String = row.try_get("owner")?;
            instances
                .entry(owner.clone())
                .or_insert_with(|| unknown(&owner))
                .sources
                .push(row.try_get("source")?);
        }
        let rows = sqlx::query(
            "SELECT lease_owner, COUNT(*) AS n FROM deliveries \
             WHERE lease_owner IS NOT NULL AND state = 'pending' AND lease_until > $1 \
             GROUP BY lease_owner",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let owner: String = row.try_get("lease_owner")?;
            instances
                .entry(owner.clone())
                .or_insert_with(|| unknown(&owner))
                .delivery_leases = to_u64(row.try_get("n")?);
        }
        tx.commit().await?;
        status.instances = instances.into_values().collect();
        Ok(status)
    }

    async fn dead_letters(&self, target: Option<&str>) -> Result<Vec<DeadLetter>, LedgerError> {
        Sql::dead_letters(&self.pool, target).await
    }

    async fn retry_dead(
        &self,
        filter: &DeadLetterFilter,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        Sql::retry_dead(&self.pool, filter, now).await
    }

    async fn replay(
        &self,
        target: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        Sql::replay(&self.pool, target, since, now).await
    }

    async fn forget_email(&self, email: &str) -> Result<Vec<String>, LedgerError> {
        let wanted = email.trim().to_lowercase();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // The e-mail lives inside the JSON body: a substring match narrows the scan (strpos,
        // so no LIKE wildcard or escape in an address matters), decoding confirms it.
        let erased = Sql::forget_email(
            &mut tx,
            "SELECT id, body FROM leads WHERE strpos(lower(body), $1) > 0 ORDER BY id FOR UPDATE",
            &wanted,
            &wanted,
        )
        .await?;
        tx.commit().await?;
        if !erased.is_empty() {
            self.vacuum().await;
        }
        Ok(erased)
    }

    async fn purge_personal_data(&self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        let before = to_ms(before);
        let mut purged = 0u64;
        loop {
            let mut tx = self.pool.begin().await?;
            // SKIP LOCKED: instances purging at the same time share the work.
            let n = Sql::purge(
                &mut tx,
                "SELECT l.id, l.body FROM leads l \
                 WHERE l.staged_at < $1 AND l.body NOT LIKE '%\"redacted\":true}' \
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.lead_id = l.id \
                        AND (d.state <> 'delivered' OR d.delivered_at IS NULL \
                             OR d.delivered_at >= $1)) \
                 ORDER BY l.id LIMIT 500 FOR UPDATE OF l SKIP LOCKED",
                before,
            )
            .await?;
            if n == 0 {
                break;
            }
            tx.commit().await?;
            purged += n;
        }
        if purged > 0 {
            self.vacuum().await;
        }
        Ok(purged)
    }

    async fn overdue(
        &self,
        staged_before: DateTime<Utc>,
    ) -> Result<Vec<(String, u64)>, LedgerError> {
        Sql::overdue(&self.pool, staged_before).await
    }

    async fn trace(
        &self,
        lead_id: &str,
    ) -> Result<Option<(Lead, DateTime<Utc>, Vec<DeliveryTrace>)>, LedgerError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let Some((lead, staged_at)) = Sql::staged_lead(&mut *tx, lead_id).await? else {
            return Ok(None);
        };
        let deliveries = Sql::delivery_traces(&mut *tx, lead_id).await?;
        tx.commit().await?;
        Ok(Some((lead, staged_at, deliveries)))
    }

    async fn acquire_source(
        &self,
        source: &str,
        owner: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let now = to_ms(now);
        // Inserted, renewed by its holder, or taken over once expired; otherwise the
        // conflict's WHERE is false and nothing comes back.
        let holder: Option<String> = sqlx::query_scalar(
            "INSERT INTO source_leases (source, owner, lease_until, acquired_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (source) DO UPDATE \
             SET owner = excluded.owner, lease_until = excluded.lease_until, \
                 acquired_at = CASE WHEN source_leases.owner = excluded.owner \
                                    THEN source_leases.acquired_at \
                                    ELSE excluded.acquired_at END \
             WHERE source_leases.lease_until <= $4 OR source_leases.owner = excluded.owner \
             RETURNING owner",
        )
        .bind(source)
        .bind(owner)
        .bind(ms_after(now, ttl))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(holder.is_some())
    }

    async fn release_source(&self, source: &str, owner: &str) -> Result<(), LedgerError> {
        sqlx::query("DELETE FROM source_leases WHERE source = $1 AND owner = $2")
            .bind(source)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        instance: &InstanceInfo,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let now = to_ms(now);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO instances (id, host, pid, version, started_at, seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(instance.id.as_str())
        .bind(instance.host.as_str())
        .bind(i64::from(instance.pid))
        .bind(instance.version.as_str())
        .bind(to_ms(instance.started_at))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM instances WHERE seen_at < $1")
            .bind(now.saturating_sub(FORGET_INSTANCES_AFTER_MS))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn renew_leases(
        &self,
        delivery_ids: &[i64],
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        if delivery_ids.is_empty() {
            return Ok(0);
        }
        // In id order, so that renewals and outcomes lock rows in the same order as far as
        // they can; a deadlock that still happens is retried.
        let mut ids = delivery_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let until = to_ms(until);
        with_deadlock_retries(|| async {
            let mut tx = self.pool.begin().await?;
            let renewed = Sql::renew_leases(&mut tx, &ids, owner, until).await?;
            tx.commit().await?;
            Ok(renewed)
        })
        .await
    }

    async fn release_stale_leases(
        &self,
        now: DateTime<Utc>,
        stale_after: Duration,
    ) -> Result<u64, LedgerError> {
        let seen_before = to_ms(now).saturating_sub(ms_after(0, stale_after));
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(RELEASE_STALE)
            .bind(seen_before)
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let deliveries: i64 = rows.iter().map(|(_, d, _)| d).sum();
        let sources: i64 = rows.iter().map(|(_, _, s)| s).sum();
        let instances: Vec<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
        tracing::info!(
            instances = %instances.join(", "),
            deliveries,
            sources,
            stale_after = %humantime::format_duration(stale_after),
            "released the leases of instance(s) whose heartbeat stopped; the live instances \
             take their work over now"
        );
        Ok(to_u64(deliveries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(valid_schema("leadsync_t_1a"));
        assert!(!valid_schema("Public"));
        assert!(!valid_schema("a\"; DROP TABLE leads; --"));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema(""));
    }
}
