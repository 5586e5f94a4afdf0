//! The PostgreSQL ledger: the [`Ledger`] contract for several leadsync instances sharing one
//! database (scale-out and failover).
//!
//! It owns its schema (the embedded migrations in `migrations/postgres/`, applied under
//! sqlx's advisory lock so instances starting together do not race), the connection pool,
//! and the coordination between instances, which is nothing but rows and row locks:
//!
//! - **Delivery leases.** A claim is one statement: the due, unleased (or lease-expired)
//!   pending rows are picked with `FOR UPDATE SKIP LOCKED` and leased to the claiming
//!   instance (`lease_owner` = its `host:pid`) in the same `UPDATE`, so two instances never
//!   get the same row and never wait on each other. An instance that dies leaves its leases
//!   to run out; the claim condition then hands the rows to whoever asks next. Opening the
//!   ledger never clears leases: they may belong to live instances.
//! - **Late outcomes.** `record` only changes rows still `pending`. When an instance's lease
//!   ran out mid-push and another instance took the delivery over, both may push (the CRM
//!   write is idempotent) and both may record: a second `Delivered` finds the row delivered
//!   and is ignored; a stale `Retry`/`Release`/`Dead` cannot undo a newer `Delivered`, and
//!   applies only while its instance still holds the lease, so it cannot pre-empt the new
//!   holder either.
//! - **Source leases.** `source_leases` has one row per source; only its holder pulls
//!   ([`Ledger::acquire_source`]), renewed while it pulls and taken over once it runs out.
//! - **Heartbeats.** `instances` has one row per daemon, refreshed every few seconds, so
//!   `status` lists the instances with their source and delivery leases.
//!
//! Timestamps are BIGINT unix milliseconds (UTC) taken from the instances' clocks (leases
//! compare them across machines: keep the clocks synchronised with NTP). Leads are JSON text.
//! Erasure (`forget_email`, retention) rewrites the rows and then runs a plain `VACUUM` so the
//! old row versions' space is reclaimed; PostgreSQL does not zero that space (there is no
//! `secure_delete`), and WAL archives and backups keep their own copies until they expire.
//!
//! It must not decide when to retry (the pipeline passes `next_attempt_at` in).

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use leadsync_core::Lead;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Executor, Postgres, QueryBuilder, Row};

use super::codec::{
    decode_lead, encode_lead, from_ms, ms_after, opt_from_ms, parse_state, to_ms, to_u32, to_u64,
};
use super::{
    ClaimedDelivery, DeadLetter, DeadLetterFilter, DeliveryTrace, InstanceInfo, InstanceStatus,
    Ledger, LedgerError, LedgerStatus, PlannedDelivery, RecordedOutcome, SourceStatus, StageBatch,
    StageReport, StagedLead, TargetStatus, INSTANCE_ALIVE,
};

/// The schema, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows per multi-row INSERT while staging (at most 9 parameters a row, far below
/// PostgreSQL's limit of 65,535 parameters a statement).
const ROWS_PER_INSERT: usize = 500;
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

/// `postgres://user:***@host/db` for messages: the password never shows.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres://…".to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let tail = tail.split('?').next().unwrap_or_default();
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => authority.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn is_deadlock(e: &LedgerError) -> bool {
    matches!(e, LedgerError::Database(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("40P01") | Some("40001")))
}

impl PostgresLedger {
    /// Connect to `url`, create the schema if asked and missing, and bring the tables up to
    /// date. Leases are left alone: other instances may hold them.
    pub async fn connect(url: &str, options: &PostgresOptions) -> Result<Self, LedgerError> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| {
                LedgerError::Settings(format!(
                    "ledger.url {} is not a usable PostgreSQL URL: {e}",
                    redact_url(url)
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
        let mut report = StageReport::default();
        let mut tx = self.pool.begin().await?;

        // Rows go in id order, so that two transactions staging overlapping leads wait on
        // each other instead of deadlocking.
        let mut leads: Vec<(&StagedLead, &String)> = batch.leads.iter().zip(bodies).collect();
        leads.sort_by(|a, b| a.0.lead.id.cmp(&b.0.lead.id));
        let mut inserted: HashSet<String> = HashSet::new();
        for chunk in leads.chunks(ROWS_PER_INSERT) {
            let mut insert =
                QueryBuilder::<Postgres>::new("INSERT INTO leads (id, source, staged_at, body) ");
            insert.push_values(chunk, |mut row, (staged, body)| {
                row.push_bind(staged.lead.id.as_str())
                    .push_bind(batch.source.as_str())
                    .push_bind(now)
                    .push_bind(body.as_str());
            });
            insert.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
            let ids: Vec<String> = insert.build_query_scalar().fetch_all(&mut *tx).await?;
            inserted.extend(ids);
        }
        report.staged = inserted.len() as u64;
        report.already_known = leads.len() as u64 - report.staged;

        // The deliveries of each new lead, taken from its first occurrence in the batch only.
        let deliveries: Vec<(&str, &PlannedDelivery)> = batch
            .leads
            .iter()
            .filter(|staged| inserted.remove(staged.lead.id.as_str()))
            .flat_map(|staged| {
                staged
                    .deliveries
                    .iter()
                    .map(move |d| (staged.lead.id.as_str(), d))
            })
            .collect();
        for chunk in deliveries.chunks(ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::<Postgres>::new(
                "INSERT INTO deliveries (lead_id, target, idempotency_key, state, attempts, \
                 next_attempt_at, age_from, created_at, updated_at) ",
            );
            insert.push_values(chunk, |mut row, (lead_id, delivery)| {
                row.push_bind(*lead_id)
                    .push_bind(delivery.target.as_str())
                    .push_bind(delivery.idempotency_key.as_str())
                    .push("'pending'")
                    .push("0")
                    .push_bind(now)
                    .push_bind(now)
                    .push_bind(now)
                    .push_bind(now);
            });
            insert.push(" ON CONFLICT (lead_id, target) DO NOTHING");
            report.deliveries += insert.build().execute(&mut *tx).await?.rows_affected();
        }

        for chunk in batch.quarantined.chunks(ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::<Postgres>::new(
                "INSERT INTO quarantine (source, origin, reason, at) ",
            );
            insert.push_values(chunk, |mut row, record| {
                row.push_bind(batch.source.as_str())
                    .push_bind(record.origin.as_str())
                    .push_bind(record.reason.as_str())
                    .push_bind(now);
            });
            insert.push(" ON CONFLICT (source, origin, reason) DO NOTHING");
            report.quarantined += insert.build().execute(&mut *tx).await?.rows_affected();
        }
        if let Some(cursor) = &batch.cursor {
            sqlx::query(
                "INSERT INTO source_cursors (source, cursor, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (source) DO UPDATE \
                 SET cursor = excluded.cursor, updated_at = excluded.updated_at",
            )
            .bind(batch.source.as_str())
            .bind(cursor.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
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

    /// Redact one lead's body and clear its deliveries' error texts, inside `tx`.
    async fn redact(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        id: &str,
        mut lead: Lead,
    ) -> Result<(), LedgerError> {
        lead.redact();
        sqlx::query("UPDATE leads SET body = $1 WHERE id = $2")
            .bind(encode_lead(&lead)?)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE deliveries SET error = NULL WHERE lead_id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
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

fn claimed_from_row(row: &PgRow) -> Result<(i64, ClaimedDelivery), LedgerError> {
    let lead_id: String = row.try_get("lead_id")?;
    let body: String = row.try_get("body")?;
    Ok((
        row.try_get("next_attempt_at")?,
        ClaimedDelivery {
            delivery_id: row.try_get("id")?,
            target: row.try_get("target")?,
            idempotency_key: row.try_get("idempotency_key")?,
            attempts: to_u32(row.try_get("attempts")?),
            age_from: from_ms(row.try_get("age_from")?, &lead_id)?,
            staged_at: from_ms(row.try_get("staged_at")?, &lead_id)?,
            lead: decode_lead(&lead_id, &body)?,
        },
    ))
}

/// `host:pid` split back, for lease owners that never sent a heartbeat (`sync --once`).
fn split_owner(owner: &str) -> (String, u32) {
    match owner.rsplit_once(':') {
        Some((host, pid)) => (host.to_string(), pid.parse().unwrap_or(0)),
        None => (owner.to_string(), 0),
    }
}

#[async_trait]
impl Ledger for PostgresLedger {
    async fn stage(&self, batch: StageBatch) -> Result<StageReport, LedgerError> {
        let bodies = batch
            .leads
            .iter()
            .map(|staged| encode_lead(&staged.lead))
            .collect::<Result<Vec<_>, _>>()?;
        let now = to_ms(Utc::now());
        let mut attempt = 0;
        let report = loop {
            match self.stage_once(&batch, &bodies, now).await {
                Err(e) if is_deadlock(&e) && attempt < DEADLOCK_RETRIES => attempt += 1,
                other => break other?,
            }
        };
        tracing::debug!(
            source = %batch.source,
            staged = report.staged,
            already_known = report.already_known,
            deliveries = report.deliveries,
            quarantined = report.quarantined,
            "staged batch"
        );
        Ok(report)
    }

    async fn cursor(&self, source: &str) -> Result<Option<String>, LedgerError> {
        let cursor: Option<Option<String>> =
            sqlx::query_scalar("SELECT cursor FROM source_cursors WHERE source = $1")
                .bind(source)
                .fetch_optional(&self.pool)
                .await?;
        Ok(cursor.flatten())
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
        let rows = sqlx::query(
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
            .iter()
            .map(claimed_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        claimed.sort_by_key(|(due, d)| (*due, d.delivery_id));
        tracing::trace!(target = %target, claimed = claimed.len(), "claimed deliveries under lease");
        Ok(claimed.into_iter().map(|(_, d)| d).collect())
    }

    async fn record(&self, outcomes: &[RecordedOutcome], owner: &str) -> Result<(), LedgerError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut attempt = 0;
        let changed = loop {
            match self.record_once(outcomes, owner).await {
                Err(e) if is_deadlock(&e) && attempt < DEADLOCK_RETRIES => attempt += 1,
                other => break other?,
            }
        };
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

    /// The earliest time a pending delivery of `target` can be claimed: its
    /// `next_attempt_at`, or the end of its lease if it is leased beyond that.
    async fn next_due(&self, target: &str) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(CASE WHEN lease_until IS NOT NULL AND lease_until > next_attempt_at \
                        THEN lease_until ELSE next_attempt_at END) \
             FROM deliveries WHERE target = $1 AND state = 'pending'",
        )
        .bind(target)
        .fetch_one(&self.pool)
        .await?;
        opt_from_ms(due, target)
    }

    async fn pause_target(
        &self,
        target: &str,
        until: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO target_pauses (target, paused_until, reason) VALUES ($1, $2, $3) \
             ON CONFLICT (target) DO UPDATE \
             SET paused_until = excluded.paused_until, reason = excluded.reason",
        )
        .bind(target)
        .bind(to_ms(until))
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_source_error(
        &self,
        source: &str,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        match error {
            // A failure creates the row if the source never stored a cursor (a spool).
            Some(e) => {
                sqlx::query(
                    "INSERT INTO source_cursors (source, cursor, updated_at, last_error) \
                     VALUES ($1, NULL, $2, $3) \
                     ON CONFLICT (source) DO UPDATE SET last_error = excluded.last_error",
                )
                .bind(source)
                .bind(to_ms(now))
                .bind(e)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query(
                    "UPDATE source_cursors SET last_error = NULL \
                     WHERE source = $1 AND last_error IS NOT NULL",
                )
                .bind(source)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn set_target_note(
        &self,
        target: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO target_notes (target, note, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (target) DO UPDATE SET note = excluded.note, updated_at = excluded.updated_at",
        )
        .bind(target)
        .bind(note)
        .bind(to_ms(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn paused_until(&self, target: &str) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let until: Option<i64> =
            sqlx::query_scalar("SELECT paused_until FROM target_pauses WHERE target = $1")
                .bind(target)
                .fetch_optional(&self.pool)
                .await?;
        opt_from_ms(until, target)
    }

    async fn status(&self, now: DateTime<Utc>) -> Result<LedgerStatus, LedgerError> {
        let now_ms = to_ms(now);
        // One snapshot for every number.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;

        let rows = sqlx::query(
            "SELECT target, \
                    COUNT(*) FILTER (WHERE state = 'pending') AS pending, \
                    COUNT(*) FILTER (WHERE state = 'pending' AND next_attempt_at > $1) \
                        AS retrying, \
                    COUNT(*) FILTER (WHERE state = 'delivered') AS delivered, \
                    COUNT(*) FILTER (WHERE state = 'dead') AS dead \
             FROM deliveries GROUP BY target ORDER BY target",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut targets = Vec::with_capacity(rows.len());
        for row in &rows {
            targets.push(TargetStatus {
                target: row.try_get("target")?,
                pending: to_u64(row.try_get("pending")?),
                retrying: to_u64(row.try_get("retrying")?),
                delivered: to_u64(row.try_get("delivered")?),
                dead: to_u64(row.try_get("dead")?),
                ..TargetStatus::default()
            });
        }
        for status in &mut targets {
            let oldest: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(l.staged_at) FROM deliveries d JOIN leads l ON l.id = d.lead_id \
                 WHERE d.target = $1 AND d.state = 'pending'",
            )
            .bind(status.target.as_str())
            .fetch_one(&mut *tx)
            .await?;
            status.oldest_pending_staged_at = opt_from_ms(oldest, &status.target)?;

            let paused: Option<i64> = sqlx::query_scalar(
                "SELECT paused_until FROM target_pauses WHERE target = $1 AND paused_until > $2",
            )
            .bind(status.target.as_str())
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            status.paused_until = opt_from_ms(paused, &status.target)?;

            status.note = sqlx::query_scalar("SELECT note FROM target_notes WHERE target = $1")
                .bind(status.target.as_str())
                .fetch_optional(&mut *tx)
                .await?;

            let last_error: Option<Option<String>> = sqlx::query_scalar(
                "SELECT error_code FROM deliveries \
                 WHERE target = $1 AND state IN ('pending', 'dead') AND error IS NOT NULL \
                 ORDER BY updated_at DESC, id DESC LIMIT 1",
            )
            .bind(status.target.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            status.last_error_code = last_error.flatten();
        }

        let leads: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leads")
            .fetch_one(&mut *tx)
            .await?;
        let quarantined: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM quarantine")
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT source, cursor, updated_at, last_error FROM source_cursors ORDER BY source",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut sources = Vec::with_capacity(rows.len());
        for row in &rows {
            let source: String = row.try_get("source")?;
            let updated_at = from_ms(row.try_get("updated_at")?, &source)?;
            sources.push(SourceStatus {
                cursor: row.try_get("cursor")?,
                last_error: row.try_get("last_error")?,
                source,
                updated_at,
            });
        }

        // Instances: every heartbeat, plus lease owners that never sent one.
        let mut instances: BTreeMap<String, InstanceStatus> = BTreeMap::new();
        let rows = sqlx::query("SELECT id, host, pid, started_at, seen_at FROM instances")
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
            let (host, pid) = split_owner(owner);
            InstanceStatus {
                id: owner.to_string(),
                host,
                pid,
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

        Ok(LedgerStatus {
            targets,
            leads: to_u64(leads),
            quarantined: to_u64(quarantined),
            sources,
            instances: instances.into_values().collect(),
        })
    }

    async fn dead_letters(&self, target: Option<&str>) -> Result<Vec<DeadLetter>, LedgerError> {
        let rows = sqlx::query(
            "SELECT id, target, lead_id, idempotency_key, attempts, error_code, error, \
             updated_at FROM deliveries \
             WHERE state = 'dead' AND ($1::TEXT IS NULL OR target = $1) \
             ORDER BY updated_at, id",
        )
        .bind(target)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let lead_id: String = row.try_get("lead_id")?;
                Ok(DeadLetter {
                    delivery_id: row.try_get("id")?,
                    target: row.try_get("target")?,
                    idempotency_key: row.try_get("idempotency_key")?,
                    attempts: to_u32(row.try_get("attempts")?),
                    error_code: row.try_get("error_code")?,
                    error: row.try_get("error")?,
                    updated_at: from_ms(row.try_get("updated_at")?, &lead_id)?,
                    lead_id,
                })
            })
            .collect()
    }

    async fn retry_dead(
        &self,
        filter: &DeadLetterFilter,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        // The error fields stay: they say why it died before the operator brought it back.
        let n = sqlx::query(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, \
             age_from = $1, lease_owner = NULL, lease_until = NULL, updated_at = $1 \
             WHERE state = 'dead' AND ($2::TEXT IS NULL OR target = $2) \
               AND ($3::TEXT IS NULL OR lead_id = $3)",
        )
        .bind(to_ms(now))
        .bind(filter.target.as_deref())
        .bind(filter.lead_id.as_deref())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn replay(
        &self,
        target: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        let n = sqlx::query(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, \
                    age_from = $1, updated_at = $1, lease_owner = NULL, lease_until = NULL \
             WHERE target = $2 AND state = 'delivered' \
               AND lead_id IN (SELECT id FROM leads WHERE staged_at >= $3)",
        )
        .bind(to_ms(now))
        .bind(target)
        .bind(to_ms(since))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn forget_email(&self, email: &str) -> Result<Vec<String>, LedgerError> {
        let wanted = email.trim().to_lowercase();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // The e-mail lives inside the JSON body: a substring match narrows the scan (strpos,
        // so no LIKE wildcard or escape in an address matters), decoding confirms it.
        let rows = sqlx::query(
            "SELECT id, body FROM leads WHERE strpos(lower(body), $1) > 0 ORDER BY id FOR UPDATE",
        )
        .bind(&wanted)
        .fetch_all(&mut *tx)
        .await?;
        let mut erased = Vec::new();
        for row in rows {
            let id: String = row.try_get("id")?;
            let body: String = row.try_get("body")?;
            let lead = decode_lead(&id, &body)?;
            if lead.email_normalised().as_deref() != Some(wanted.as_str()) {
                continue;
            }
            Self::redact(&mut tx, &id, lead).await?;
            erased.push(id);
        }
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
            let rows = sqlx::query(
                "SELECT l.id, l.body FROM leads l \
                 WHERE l.staged_at < $1 AND l.body NOT LIKE '%\"redacted\":true}' \
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.lead_id = l.id \
                        AND (d.state <> 'delivered' OR d.delivered_at IS NULL \
                             OR d.delivered_at >= $1)) \
                 ORDER BY l.id LIMIT 500 FOR UPDATE OF l SKIP LOCKED",
            )
            .bind(before)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let id: String = row.try_get("id")?;
                let body: String = row.try_get("body")?;
                let lead = decode_lead(&id, &body)?;
                Self::redact(&mut tx, &id, lead).await?;
            }
            tx.commit().await?;
            purged += rows.len() as u64;
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
        let rows = sqlx::query(
            "SELECT d.target, COUNT(*) AS n FROM deliveries d JOIN leads l ON l.id = d.lead_id \
             WHERE d.state = 'pending' AND l.staged_at < $1 GROUP BY d.target ORDER BY d.target",
        )
        .bind(to_ms(staged_before))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("target")?, to_u64(r.try_get("n")?))))
            .collect()
    }

    async fn trace(
        &self,
        lead_id: &str,
    ) -> Result<Option<(Lead, DateTime<Utc>, Vec<DeliveryTrace>)>, LedgerError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let Some(row) = sqlx::query("SELECT staged_at, body FROM leads WHERE id = $1")
            .bind(lead_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let staged_at = from_ms(row.try_get("staged_at")?, lead_id)?;
        let body: String = row.try_get("body")?;
        let lead = decode_lead(lead_id, &body)?;
        let rows = sqlx::query(
            "SELECT target, state, idempotency_key, attempts, next_attempt_at, crm_ref, \
                    error_code, error, updated_at \
             FROM deliveries WHERE lead_id = $1 ORDER BY target, id",
        )
        .bind(lead_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let deliveries = rows
            .iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(DeliveryTrace {
                    target: row.try_get("target")?,
                    state: parse_state(&state, lead_id)?,
                    idempotency_key: row.try_get("idempotency_key")?,
                    attempts: to_u32(row.try_get("attempts")?),
                    next_attempt_at: opt_from_ms(row.try_get("next_attempt_at")?, lead_id)?,
                    crm_ref: row.try_get("crm_ref")?,
                    error_code: row.try_get("error_code")?,
                    error: row.try_get("error")?,
                    updated_at: from_ms(row.try_get("updated_at")?, lead_id)?,
                })
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
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
            "INSERT INTO instances (id, host, pid, started_at, seen_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(instance.id.as_str())
        .bind(instance.host.as_str())
        .bind(i64::from(instance.pid))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_for_messages() {
        assert_eq!(
            redact_url("postgres://leadsync:s3cret@db.internal:5432/leads?sslmode=require"),
            "postgres://leadsync@db.internal:5432/leads"
        );
        assert_eq!(
            redact_url("postgresql://db.internal/leads"),
            "postgresql://db.internal/leads"
        );
        assert_eq!(redact_url("not a url s3cret"), "postgres://…");
        assert_eq!(redact_url("postgres://u:p@h"), "postgres://u@h");
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(valid_schema("leadsync_t_1a"));
        assert!(!valid_schema("Public"));
        assert!(!valid_schema("a\"; DROP TABLE leads; --"));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema(""));
    }
}
