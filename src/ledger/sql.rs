//! The statements both ledger backends run with the same text, written once and generic over
//! the sqlx database ([`Statements<Sqlite>`](Statements) and `Statements<Postgres>`; never
//! `sqlx::Any`): staging, the reads behind `cursor`, `next_due`, `paused_until`, `status`,
//! `trace`, `overdue`, `dead_letters` and `target_down`, the plain writes (pauses, notes,
//! targets down, source errors, `retry_dead`, `replay`, `extend_retry_age`), lease renewals
//! and the redaction of erased leads. Rows come back through the row types of `codec.rs`.
//! Parameters are `$n`, which both backends accept, or the database's own placeholder where
//! a statement is built value by value.
//!
//! It must not open, commit or lock anything: the backend passes the pool or the transaction
//! each call runs in, and keeps in its own file what really differs: SQLite's write mutex and
//! `BEGIN IMMEDIATE`, PostgreSQL's `FOR UPDATE SKIP LOCKED` claims, snapshots, deadlock
//! retries and schemas, how each records outcomes, and the statements whose text differs.

use std::collections::HashSet;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use leadsync_core::Lead;
use sqlx::{Arguments, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};

use super::codec::{
    encode_lead, opt_from_ms, shift_ms, to_ms, to_u64, DeadLetterRow, LeadBodyRow, SourceRow,
    StagedLeadRow, TargetCountsRow, TargetDownRow, TraceRow,
};
use super::{
    DeadLetter, DeadLetterFilter, DeliveryTrace, LedgerError, LedgerStatus, PlannedDelivery,
    StageBatch, StageReport, StagedLead, TargetDown,
};

/// Rows per multi-row statement (at most 7 parameters a row, far below SQLite's limit of
/// 32,766 and PostgreSQL's of 65,535 parameters a statement).
pub(super) const ROWS_PER_INSERT: usize = 500;

/// The shared statements, run on database `DB` (each backend names it once, e.g.
/// `type Sql = sql::Statements<Sqlite>;`). Single statements take any executor (the pool or
/// a transaction); a call that runs several takes the caller's connection or transaction.
pub(super) struct Statements<DB>(PhantomData<DB>);

// What the shared statements ask of a database: executors, `$n`/placeholder arguments, and
// the `i64`/`String` columns of the schema. SQLite and PostgreSQL both meet it.
impl<DB> Statements<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB>,
    for<'q> &'q str: Encode<'q, DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> String: Decode<'r, DB>,
    i64: Type<DB>,
    str: Type<DB>,
    String: Type<DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    DB::QueryResult: RowsAffected,
{
    /// Insert the leads (in the order given: the caller may sort them), a delivery per
    /// planned target of each new lead, the quarantined records and the new cursor of one
    /// batch, inside the caller's transaction.
    pub(super) async fn stage(
        conn: &mut DB::Connection,
        batch: &StageBatch,
        leads: &[(&StagedLead, &String)],
        now: i64,
    ) -> Result<StageReport, LedgerError> {
        let mut report = StageReport::default();
        // Multi-row inserts: one statement per chunk rather than one per row, since each
        // statement is a round trip (to SQLite's worker thread, or to the server).
        let mut inserted: HashSet<String> = HashSet::new();
        for chunk in leads.chunks(ROWS_PER_INSERT) {
            let mut insert = Values::<DB>::new("INSERT INTO leads (id, source, staged_at, body) ");
            for (staged, body) in chunk {
                insert
                    .row()
                    .bind(staged.lead.id.as_str())?
                    .bind(batch.source.as_str())?
                    .bind(now)?
                    .bind(body.as_str())?;
            }
            let (sql, args) = insert.finish(" ON CONFLICT (id) DO NOTHING RETURNING id");
            // Only the rows actually inserted come back.
            let ids: Vec<String> = sqlx::query_scalar_with(&sql, args)
                .fetch_all(&mut *conn)
                .await?;
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
            let mut insert = Values::<DB>::new(
                "INSERT INTO deliveries (lead_id, target, idempotency_key, state, attempts, \
                 next_attempt_at, age_from, created_at, updated_at) ",
            );
            for (lead_id, delivery) in chunk {
                insert
                    .row()
                    .bind(*lead_id)?
                    .bind(delivery.target.as_str())?
                    .bind(delivery.idempotency_key.as_str())?
                    .value("'pending'")
                    .value("0")
                    .bind(delivery.not_before.map_or(now, super::codec::to_ms))?
                    .bind(now)?
                    .bind(now)?
                    .bind(now)?;
            }
            // A target planned twice for one lead is one delivery.
            let (sql, args) = insert.finish(" ON CONFLICT (lead_id, target) DO NOTHING");
            report.deliveries += sqlx::query_with(&sql, args)
                .execute(&mut *conn)
                .await?
                .rows_affected();
        }

        for chunk in batch.quarantined.chunks(ROWS_PER_INSERT) {
            let mut insert =
                Values::<DB>::new("INSERT INTO quarantine (source, origin, reason, at) ");
            for record in chunk {
                insert
                    .row()
                    .bind(batch.source.as_str())?
                    .bind(record.origin.as_str())?
                    .bind(record.reason.as_str())?
                    .bind(now)?;
            }
            // The same record seen again (a re-read file) is one quarantine entry.
            let (sql, args) = insert.finish(" ON CONFLICT (source, origin, reason) DO NOTHING");
            report.quarantined += sqlx::query_with(&sql, args)
                .execute(&mut *conn)
                .await?
                .rows_affected();
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
            .execute(&mut *conn)
            .await?;
        }
        Ok(report)
    }

    /// The stored cursor of a source.
    pub(super) async fn cursor<'c, E>(exec: E, source: &str) -> Result<Option<String>, LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        let cursor: Option<Option<String>> =
            sqlx::query_scalar("SELECT cursor FROM source_cursors WHERE source = $1")
                .bind(source)
                .fetch_optional(exec)
                .await?;
        Ok(cursor.flatten())
    }

    /// The earliest time a pending delivery of `target` can be claimed: its
    /// `next_attempt_at`, or the end of its lease if it is leased beyond that (so a loop
    /// waiting on this does not spin on deliveries already in flight).
    pub(super) async fn next_due<'c, E>(
        exec: E,
        target: &str,
    ) -> Result<Option<DateTime<Utc>>, LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(CASE WHEN lease_until IS NOT NULL AND lease_until > next_attempt_at \
                        THEN lease_until ELSE next_attempt_at END) \
             FROM deliveries WHERE target = $1 AND state = 'pending'",
        )
        .bind(target)
        .fetch_one(exec)
        .await?;
        opt_from_ms(due, target)
    }

    pub(super) async fn pause_target<'c, E>(
        exec: E,
        target: &str,
        until: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        sqlx::query(
            "INSERT INTO target_pauses (target, paused_until, reason) VALUES ($1, $2, $3) \
             ON CONFLICT (target) DO UPDATE \
             SET paused_until = excluded.paused_until, reason = excluded.reason",
        )
        .bind(target)
        .bind(to_ms(until))
        .bind(reason)
        .execute(exec)
        .await?;
        Ok(())
    }

    pub(super) async fn set_source_error<'c, E>(
        exec: E,
        source: &str,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
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
                .execute(exec)
                .await?;
            }
            None => {
                sqlx::query(
                    "UPDATE source_cursors SET last_error = NULL \
                     WHERE source = $1 AND last_error IS NOT NULL",
                )
                .bind(source)
                .execute(exec)
                .await?;
            }
        }
        Ok(())
    }

    pub(super) async fn set_target_note<'c, E>(
        exec: E,
        target: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        sqlx::query(
            "INSERT INTO target_notes (target, note, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (target) DO UPDATE SET note = excluded.note, updated_at = excluded.updated_at",
        )
        .bind(target)
        .bind(note)
        .bind(to_ms(now))
        .execute(exec)
        .await?;
        Ok(())
    }

    /// Mark `target` down, keeping the earlier `since` of an outage already recorded, or
    /// (`None`) back up.
    pub(super) async fn set_target_down<'c, E>(
        exec: E,
        target: &str,
        down: Option<&TargetDown>,
    ) -> Result<(), LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        match down {
            Some(down) => {
                sqlx::query(
                    "INSERT INTO target_down (target, down_since, reason) VALUES ($1, $2, $3) \
                     ON CONFLICT (target) DO UPDATE SET reason = excluded.reason, \
                     down_since = CASE WHEN target_down.down_since < excluded.down_since \
                                       THEN target_down.down_since \
                                       ELSE excluded.down_since END",
                )
                .bind(target)
                .bind(to_ms(down.since))
                .bind(down.reason.as_str())
                .execute(exec)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM target_down WHERE target = $1")
                    .bind(target)
                    .execute(exec)
                    .await?;
            }
        }
        Ok(())
    }

    pub(super) async fn target_down<'c, E>(
        exec: E,
        target: &str,
    ) -> Result<Option<TargetDown>, LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        let row: Option<TargetDownRow> =
            sqlx::query_as("SELECT down_since, reason FROM target_down WHERE target = $1")
                .bind(target)
                .fetch_optional(exec)
                .await?;
        row.map(|row| row.decode(target)).transpose()
    }

    /// Move the retry-age clock of `target`'s pending deliveries forward by `by`; returns
    /// how many moved. `updated_at` stays: nothing happened to the deliveries themselves.
    pub(super) async fn extend_retry_age<'c, E>(
        exec: E,
        target: &str,
        by: std::time::Duration,
    ) -> Result<u64, LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        let n = sqlx::query(
            "UPDATE deliveries SET age_from = age_from + $1 \
             WHERE target = $2 AND state = 'pending'",
        )
        .bind(shift_ms(by))
        .bind(target)
        .execute(exec)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Clear `target`'s down row and credit its outage (from the row's `since` to `now`) to
    /// the retry age of the target's pending deliveries, in the caller's transaction.
    /// `None`, and nothing credited, when no row was there: another instance brought the
    /// target up first and credited the outage itself.
    pub(super) async fn target_up(
        conn: &mut DB::Connection,
        target: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<std::time::Duration>, LedgerError> {
        let since: Option<i64> =
            sqlx::query_scalar("DELETE FROM target_down WHERE target = $1 RETURNING down_since")
                .bind(target)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(since) = since else {
            return Ok(None);
        };
        let outage =
            std::time::Duration::from_millis(u64::try_from(to_ms(now) - since).unwrap_or(0));
        Self::extend_retry_age(&mut *conn, target, outage).await?;
        Ok(Some(outage))
    }

    /// Extend to `until` (never shorten) the leases `owner` holds on those of `ids` still
    /// pending, in the caller's transaction; returns how many it holds. One statement per
    /// chunk of ids, as claims lease them.
    pub(super) async fn renew_leases(
        conn: &mut DB::Connection,
        ids: &[i64],
        owner: &str,
        until: i64,
    ) -> Result<u64, LedgerError> {
        let mut renewed = 0;
        for chunk in ids.chunks(ROWS_PER_INSERT) {
            let mut update =
                Bound::<DB>::new("UPDATE deliveries SET lease_until = CASE WHEN lease_until > ");
            update
                .bind(until)?
                .push(" THEN lease_until ELSE ")
                .bind(until)?
                .push(" END WHERE state = 'pending' AND lease_owner = ")
                .bind(owner)?
                .push(" AND id IN ")
                .bind_list(chunk.iter().copied())?;
            let (sql, args) = update.finish();
            renewed += sqlx::query_with(&sql, args)
                .execute(&mut *conn)
                .await?
                .rows_affected();
        }
        Ok(renewed)
    }

    /// One trivial statement: the database answers (for `/readyz`, which must stay cheap).
    pub(super) async fn ping<'c, E>(exec: E) -> Result<(), LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        sqlx::query("SELECT 1").execute(exec).await?;
        Ok(())
    }

    pub(super) async fn paused_until<'c, E>(
        exec: E,
        target: &str,
    ) -> Result<Option<DateTime<Utc>>, LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        let until: Option<i64> =
            sqlx::query_scalar("SELECT paused_until FROM target_pauses WHERE target = $1")
                .bind(target)
                .fetch_optional(exec)
                .await?;
        opt_from_ms(until, target)
    }

    /// Everything `status` shows but the instances (left empty), read in the caller's
    /// transaction so that every number comes from the same snapshot. `counts` is the
    /// backend's per-target count query (`target`, `pending`, `retrying`, `delivered`,
    /// `dead`; `$1` is `now`).
    pub(super) async fn status(
        conn: &mut DB::Connection,
        counts: &str,
        now: i64,
    ) -> Result<LedgerStatus, LedgerError> {
        let rows: Vec<TargetCountsRow> = sqlx::query_as(counts)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
        let mut targets: Vec<_> = rows.into_iter().map(TargetCountsRow::decode).collect();
        for status in &mut targets {
            let oldest: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(l.staged_at) FROM deliveries d JOIN leads l ON l.id = d.lead_id \
                 WHERE d.target = $1 AND d.state = 'pending'",
            )
            .bind(status.target.as_str())
            .fetch_one(&mut *conn)
            .await?;
            status.oldest_pending_staged_at = opt_from_ms(oldest, &status.target)?;

            let paused: Option<i64> = sqlx::query_scalar(
                "SELECT paused_until FROM target_pauses WHERE target = $1 AND paused_until > $2",
            )
            .bind(status.target.as_str())
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            status.paused_until = opt_from_ms(paused, &status.target)?;

            status.note = sqlx::query_scalar("SELECT note FROM target_notes WHERE target = $1")
                .bind(status.target.as_str())
                .fetch_optional(&mut *conn)
                .await?;

            if let Some(down) = Self::target_down(&mut *conn, &status.target).await? {
                status.down_since = Some(down.since);
                status.down_reason = Some(down.reason);
            }

            let last_error: Option<Option<String>> = sqlx::query_scalar(
                "SELECT error_code FROM deliveries \
                 WHERE target = $1 AND state IN ('pending', 'dead') AND error IS NOT NULL \
                 ORDER BY updated_at DESC, id DESC LIMIT 1",
            )
            .bind(status.target.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            status.last_error_code = last_error.flatten();
        }

        let leads: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leads")
            .fetch_one(&mut *conn)
            .await?;
        let quarantined: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM quarantine")
            .fetch_one(&mut *conn)
            .await?;
        let sources: Vec<SourceRow> = sqlx::query_as(
            "SELECT source, cursor, updated_at, last_error FROM source_cursors ORDER BY source",
        )
        .fetch_all(&mut *conn)
        .await?;
        Ok(LedgerStatus {
            targets,
            leads: to_u64(leads),
            quarantined: to_u64(quarantined),
            sources: sources
                .into_iter()
                .map(SourceRow::decode)
                .collect::<Result<_, _>>()?,
            instances: Vec::new(),
        })
    }

    /// The dead deliveries, of one target or all, oldest first.
    pub(super) async fn dead_letters<'c, E>(
        exec: E,
        target: Option<&str>,
    ) -> Result<Vec<DeadLetter>, LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        let mut sql = String::from(
            "SELECT id, target, lead_id, idempotency_key, attempts, error_code, error, \
             updated_at FROM deliveries WHERE state = 'dead'",
        );
        if target.is_some() {
            sql.push_str(" AND target = $1");
        }
        sql.push_str(" ORDER BY updated_at, id");
        let mut query = sqlx::query_as::<_, DeadLetterRow>(&sql);
        if let Some(target) = target {
            query = query.bind(target);
        }
        let rows = query.fetch_all(exec).await?;
        rows.into_iter().map(DeadLetterRow::decode).collect()
    }

    /// Put matching dead deliveries back to pending, due `now`; returns how many.
    pub(super) async fn retry_dead<'c, E>(
        exec: E,
        filter: &DeadLetterFilter,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        // The error fields stay: they say why it died before the operator brought it back.
        let mut sql = String::from(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, \
             age_from = $1, lease_owner = NULL, lease_until = NULL, updated_at = $1 \
             WHERE state = 'dead'",
        );
        let mut n = 1;
        if filter.target.is_some() {
            n += 1;
            sql.push_str(&format!(" AND target = ${n}"));
        }
        if filter.lead_id.is_some() {
            n += 1;
            sql.push_str(&format!(" AND lead_id = ${n}"));
        }
        let mut query = sqlx::query(&sql).bind(to_ms(now));
        if let Some(target) = &filter.target {
            query = query.bind(target.as_str());
        }
        if let Some(lead_id) = &filter.lead_id {
            query = query.bind(lead_id.as_str());
        }
        Ok(query.execute(exec).await?.rows_affected())
    }

    /// Put `target`'s delivered deliveries of leads staged at or after `since` back to
    /// pending, due `now`; returns how many.
    pub(super) async fn replay<'c, E>(
        exec: E,
        target: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        let n = sqlx::query(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, \
                    age_from = $1, updated_at = $1, lease_owner = NULL, lease_until = NULL \
             WHERE target = $2 AND state = 'delivered' \
               AND lead_id IN (SELECT id FROM leads WHERE staged_at >= $3)",
        )
        .bind(to_ms(now))
        .bind(target)
        .bind(to_ms(since))
        .execute(exec)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Erase the leads `select` returns (`$1` is `pattern`; columns `id`, `body`) whose
    /// e-mail is `wanted`, in the caller's transaction. Returns the ids erased.
    pub(super) async fn forget_email(
        conn: &mut DB::Connection,
        select: &str,
        pattern: &str,
        wanted: &str,
    ) -> Result<Vec<String>, LedgerError> {
        let rows: Vec<LeadBodyRow> = sqlx::query_as(select)
            .bind(pattern)
            .fetch_all(&mut *conn)
            .await?;
        let mut erased = Vec::new();
        for row in rows {
            let lead = row.decode()?;
            if lead.email_normalised().as_deref() != Some(wanted) {
                continue;
            }
            Self::redact(conn, &row.id, lead).await?;
            erased.push(row.id);
        }
        Ok(erased)
    }

    /// Erase every lead `select` returns (`$1` is `before`; columns `id`, `body`), in the
    /// caller's transaction. Returns how many (0: nothing is left to purge).
    pub(super) async fn purge(
        conn: &mut DB::Connection,
        select: &str,
        before: i64,
    ) -> Result<u64, LedgerError> {
        let rows: Vec<LeadBodyRow> = sqlx::query_as(select)
            .bind(before)
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            Self::redact(conn, &row.id, row.decode()?).await?;
        }
        Ok(rows.len() as u64)
    }

    /// Redact one lead's body and clear its deliveries' error texts (CRMs echo values).
    async fn redact(
        conn: &mut DB::Connection,
        id: &str,
        mut lead: Lead,
    ) -> Result<(), LedgerError> {
        lead.redact();
        sqlx::query("UPDATE leads SET body = $1 WHERE id = $2")
            .bind(encode_lead(&lead)?.as_str())
            .bind(id)
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE deliveries SET error = NULL WHERE lead_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Per target, how many pending deliveries belong to leads staged before
    /// `staged_before`.
    pub(super) async fn overdue<'c, E>(
        exec: E,
        staged_before: DateTime<Utc>,
    ) -> Result<Vec<(String, u64)>, LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT d.target, COUNT(*) AS n FROM deliveries d JOIN leads l ON l.id = d.lead_id \
             WHERE d.state = 'pending' AND l.staged_at < $1 GROUP BY d.target ORDER BY d.target",
        )
        .bind(to_ms(staged_before))
        .fetch_all(exec)
        .await?;
        Ok(rows.into_iter().map(|(t, n)| (t, to_u64(n))).collect())
    }

    /// A lead and when it was staged, for `trace`.
    pub(super) async fn staged_lead<'c, E>(
        exec: E,
        lead_id: &str,
    ) -> Result<Option<(Lead, DateTime<Utc>)>, LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        let row: Option<StagedLeadRow> =
            sqlx::query_as("SELECT staged_at, body FROM leads WHERE id = $1")
                .bind(lead_id)
                .fetch_optional(exec)
                .await?;
        row.map(|row| row.decode(lead_id)).transpose()
    }

    /// Every delivery of one lead, for `trace`.
    pub(super) async fn delivery_traces<'c, E>(
        exec: E,
        lead_id: &str,
    ) -> Result<Vec<DeliveryTrace>, LedgerError>
    where
        E: Executor<'c, Database = DB>,
    {
        let rows: Vec<TraceRow> = sqlx::query_as(
            "SELECT target, state, idempotency_key, attempts, next_attempt_at, crm_ref, \
                    error_code, error, updated_at \
             FROM deliveries WHERE lead_id = $1 ORDER BY target, id",
        )
        .bind(lead_id)
        .fetch_all(exec)
        .await?;
        rows.into_iter().map(|row| row.decode(lead_id)).collect()
    }
}

/// How many rows a statement changed: each driver's result type has `rows_affected` as an
/// inherent method only, which generic code cannot call. (Inside the impls below the
/// inherent method is the one called: it takes precedence over the trait's.)
pub(super) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// The debug line of a committed batch.
pub(super) fn log_staged(source: &str, report: &StageReport) {
    tracing::debug!(
        source = %source,
        staged = report.staged,
        already_known = report.already_known,
        deliveries = report.deliveries,
        quarantined = report.quarantined,
        "staged batch"
    );
}

/// SQL text and its arguments, built piece by piece with the database's own placeholders
/// (`?` or `$n`), for statements whose number of values varies (multi-row inserts, `IN`
/// lists). It hands out its arguments, so that code generic over the database can run it
/// (a `sqlx::QueryBuilder`'s query borrows the builder for as long as its arguments live).
struct Bound<'q, DB: Database> {
    sql: String,
    args: DB::Arguments<'q>,
}

impl<'q, DB: Database> Bound<'q, DB> {
    fn new(sql: &str) -> Self {
        Bound {
            sql: sql.to_owned(),
            args: Default::default(),
        }
    }

    /// SQL text (keywords, constants).
    fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// A bound value.
    fn bind<T>(&mut self, value: T) -> Result<&mut Self, LedgerError>
    where
        T: 'q + Encode<'q, DB> + Type<DB>,
    {
        self.args.add(value).map_err(sqlx::Error::Encode)?;
        self.args
            .format_placeholder(&mut self.sql)
            .map_err(|e| sqlx::Error::Encode(e.into()))?;
        Ok(self)
    }

    /// `(v1, v2, ...)`, each value bound.
    fn bind_list<T>(
        &mut self,
        values: impl IntoIterator<Item = T>,
    ) -> Result<&mut Self, LedgerError>
    where
        T: 'q + Encode<'q, DB> + Type<DB>,
    {
        self.push("(");
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(value)?;
        }
        Ok(self.push(")"))
    }

    fn finish(self) -> (String, DB::Arguments<'q>) {
        (self.sql, self.args)
    }
}

/// A multi-row `INSERT ... VALUES (..), (..)`, written as `sqlx::QueryBuilder::push_values`
/// writes it.
struct Values<'q, DB: Database> {
    statement: Bound<'q, DB>,
    /// Values in the current tuple; `None` before the first tuple.
    cells: Option<usize>,
}

impl<'q, DB: Database> Values<'q, DB> {
    /// `head` is the statement up to `VALUES`, ending in a space.
    fn new(head: &str) -> Self {
        Values {
            statement: Bound::new(&format!("{head}VALUES ")),
            cells: None,
        }
    }

    /// Start the next tuple.
    fn row(&mut self) -> &mut Self {
        self.statement
            .push(if self.cells.is_some() { "), (" } else { "(" });
        self.cells = Some(0);
        self
    }

    fn separate(&mut self) {
        if let Some(cells) = &mut self.cells {
            if *cells > 0 {
                self.statement.push(", ");
            }
            *cells += 1;
        }
    }

    /// A value written into the SQL (a constant).
    fn value(&mut self, sql: &str) -> &mut Self {
        self.separate();
        self.statement.push(sql);
        self
    }

    /// A bound value.
    fn bind<T>(&mut self, value: T) -> Result<&mut Self, LedgerError>
    where
        T: 'q + Encode<'q, DB> + Type<DB>,
    {
        self.separate();
        self.statement.bind(value)?;
        Ok(self)
    }

    /// The statement (the tuples, then `tail`) and its arguments.
    fn finish(mut self, tail: &str) -> (String, DB::Arguments<'q>) {
        if self.cells.is_some() {
            self.statement.push(")");
        }
        self.statement.push(tail);
        self.statement.finish()
    }
}
