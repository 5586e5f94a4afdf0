//! The SQLite ledger: the embedded default behind the [`Ledger`] contract.
//!
//! It owns one SQLite database file (WAL, `synchronous=FULL`), its schema (the embedded
//! migrations in `migrations/sqlite/`) and an exclusive advisory lock on `<db>.lock`, so that
//! exactly one process holds the ledger. Because of that, its delivery leases live in that
//! process's memory ([`MemoryLeases`]): a claim is a read beside the writer, not a write
//! (lease columns an older version left in the file are cleared at open). Writes are
//! serialised in-process and start with `BEGIN IMMEDIATE`. Timestamps are stored as INTEGER
//! unix milliseconds (UTC) and leads as JSON text.
//!
//! The statements PostgreSQL runs with the same text are in `sql.rs` (this file passes them
//! its write transaction or its pool); here are the SQLite-only parts: the lock file, the
//! write mutex and `BEGIN IMMEDIATE`, claiming (a read, then a lease in memory), recording
//! outcomes, `next_due` over the leases in memory, the status counts, erasure's `LIKE`
//! prefilter and the WAL checkpoints after it.
//!
//! It must not decide when to retry (the pipeline passes `next_attempt_at` in), and its SQL
//! stays close to what PostgreSQL accepts (`$n` parameters, `ON CONFLICT`, `CASE` instead of
//! SQLite-only functions).

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use leadsync_core::Lead;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use super::codec::{encode_leads, ms_after, opt_from_ms, to_ms, ClaimRow, PlacedClaim};
use super::memory_leases::{MemoryLeases, QueuePlace};
use super::sql::{self, log_staged};
use super::{
    ClaimedDelivery, DeadLetter, DeadLetterFilter, DeliveryTrace, InstanceInfo, Ledger,
    LedgerError, LedgerStatus, RecordedOutcome, StageBatch, StageReport, StagedLead, TargetDown,
};

/// The statements whose text both backends share.
type Sql = sql::Statements<Sqlite>;

/// The schema, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Connections in the pool (reads run in parallel; writes are serialised).
const MAX_CONNECTIONS: u32 = 4;
/// How long SQLite waits on a locked database before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Every write transaction takes the write lock up front, so that no reader ever has to
/// upgrade (the source of `SQLITE_BUSY` deadlocks).
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";
/// Per-target counts for `status` (`$1`: now).
const TARGET_COUNTS: &str = "SELECT target, \
        SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending, \
        SUM(CASE WHEN state = 'pending' AND next_attempt_at > $1 THEN 1 ELSE 0 END) AS retrying, \
        SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS delivered, \
        SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END) AS dead \
    FROM deliveries GROUP BY target ORDER BY target";

/// The ledger in one SQLite file, held exclusively by this process.
#[derive(Debug)]
pub struct SqliteLedger {
    pool: SqlitePool,
    /// Serialises write transactions within this process (fair, and no busy-waiting).
    write: Mutex<()>,
    /// One claim at a time: between reading what is free and leasing it, no other claim may
    /// read the same rows.
    claiming: Mutex<()>,
    /// The delivery leases this process holds (see [`MemoryLeases`]).
    leases: std::sync::Mutex<MemoryLeases>,
    path: PathBuf,
    /// The advisory lock on `<db>.lock`, released when the ledger is dropped; `None` for a
    /// shared (operator command) handle.
    _lock: Option<File>,
}

impl SqliteLedger {
    /// Open (creating if missing) the ledger at `path`, take its lock, bring the schema up to
    /// date and void the leases a previous process left behind.
    pub async fn open(path: &Path) -> Result<SqliteLedger, LedgerError> {
        Self::open_with(path, true).await
    }

    /// Open the ledger beside a running daemon, for operator commands (`status`, `trace`,
    /// `dead-letters`): no lock is taken and leases are left alone. SQLite's own locking
    /// keeps the two consistent.
    pub async fn open_shared(path: &Path) -> Result<SqliteLedger, LedgerError> {
        if !path.exists() {
            return Err(LedgerError::Missing {
                path: path.display().to_string(),
            });
        }
        Self::open_with(path, false).await
    }

    async fn open_with(path: &Path, exclusive: bool) -> Result<SqliteLedger, LedgerError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| LedgerError::Io {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let lock = if exclusive {
            Some(take_lock(path)?)
        } else {
            None
        };

        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Deleted and overwritten content is zeroed on disk, so erased personal data
            // (`forget`, retention) does not linger in free pages.
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;

        // Only one process can hold this ledger, so any lease still set was taken by a
        // process that is gone: its deliveries are free to be claimed again.
        if exclusive {
            let cleared = sqlx::query(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner IS NOT NULL OR lease_until IS NOT NULL",
            )
            .execute(&pool)
            .await?
            .rows_affected();
            if cleared > 0 {
                tracing::info!(
                    ledger = %path.display(),
                    leases = cleared,
                    "cleared leases left by a previous process"
                );
            }
        }

        Ok(SqliteLedger {
            pool,
            write: Mutex::new(()),
            claiming: Mutex::new(()),
            leases: std::sync::Mutex::default(),
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The database file this ledger lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Close the connections (checkpointing the WAL), then release the lock.
    pub async fn close(self) {
        self.pool.close().await;
    }

    /// Start a write: the in-process write lock, then SQLite's own (`BEGIN IMMEDIATE`).
    async fn begin_write(
        &self,
    ) -> Result<(MutexGuard<'_, ()>, Transaction<'_, Sqlite>), LedgerError> {
        let guard = self.write.lock().await;
        Ok((guard, self.pool.begin_with(BEGIN_WRITE).await?))
    }

    /// This process's delivery leases (a poisoned lock still holds consistent leases: every
    /// change to them is a single map operation).
    fn held_leases(&self) -> std::sync::MutexGuard<'_, MemoryLeases> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Up to `limit` due pending deliveries of `target` not in `busy` (a JSON array of
    /// ids), in claim order, after `after` when given, with their places in that order. One
    /// statement (one snapshot) on a connection of its own; the rows come back as one JSON
    /// array in one row: sqlx hands each result row over from its connection thread on its
    /// own, and row by row that hand-over was most of a claim's time (see README,
    /// Performance). Everything is decoded before anything is leased: a corrupt row fails
    /// the whole claim.
    async fn read_due(
        &self,
        target: &str,
        now: i64,
        limit: u32,
        after: Option<QueuePlace>,
        busy: &str,
    ) -> Result<Vec<PlacedClaim>, LedgerError> {
        let (after_at, after_id) = after.unwrap_or((i64::MIN, i64::MIN));
        let rows: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(id, target, idempotency_key, attempts, \
                    age_from, lead_id, staged_at, body, next_attempt_at) \
                    ORDER BY next_attempt_at, id) \
             FROM (SELECT d.id, d.target, d.idempotency_key, d.attempts, d.age_from, \
                          d.next_attempt_at, l.id AS lead_id, l.staged_at, l.body \
                   FROM deliveries d JOIN leads l ON l.id = d.lead_id \
                   WHERE d.target = $1 AND d.state = 'pending' AND d.next_attempt_at <= $2 \
                     AND d.next_attempt_at >= $5 \
                     AND (d.next_attempt_at > $5 OR d.id > $6) \
                     AND d.id NOT IN (SELECT value FROM json_each($4)) \
                   ORDER BY d.next_attempt_at, d.id \
                   LIMIT $3)",
        )
        .bind(target)
        .bind(now)
        .bind(i64::from(limit))
        .bind(busy)
        .bind(after_at)
        .bind(after_id)
        .fetch_one(&self.pool)
        .await?;
        ClaimRow::decode_json_array(&rows, target)
    }

    /// The outcomes `owner` may record: every `Delivered` (the CRM has the record, whoever
    /// sent it), and the others only while `owner` holds their lease or nobody does; the
    /// rest are logged and ignored.
    fn decided_by<'o>(
        &self,
        outcomes: &'o [RecordedOutcome],
        owner: &str,
    ) -> Vec<&'o RecordedOutcome> {
        let leases = self.held_leases();
        outcomes
            .iter()
            .filter(|outcome| {
                let id = outcome.delivery_id();
                let decides = matches!(outcome, RecordedOutcome::Delivered { .. })
                    || leases.may_decide(id, owner);
                if !decides {
                    tracing::warn!(
                        delivery_id = id,
                        "outcome from an instance that no longer holds the lease; ignored"
                    );
                }
                decides
            })
            .collect()
    }

    /// Write the WAL back into the database file and truncate it: old page images of erased
    /// rows live on in the WAL until then.
    async fn checkpoint(&self) -> Result<(), LedgerError> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// `<db path>.lock`, beside the database.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Take the exclusive advisory lock on `<db>.lock` and write our pid into it (for operators).
/// The lock belongs to the open file, so a second open in the same process fails too.
fn take_lock(path: &Path) -> Result<File, LedgerError> {
    let lock = lock_path(path);
    let io = |source| LedgerError::Io {
        path: lock.display().to_string(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(LedgerError::Locked {
                path: path.display().to_string(),
                lock: lock.display().to_string(),
            })
        }
        Err(TryLockError::Error(source)) => return Err(io(source)),
    }
    file.set_len(0).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

/// Mark `(delivery id, crm_ref)` delivered in one `UPDATE ... FROM json_each(...)`: the
/// pairs go in as one JSON array, not a bound value per row, and nothing comes back row by
/// row (see `claim`). (The unary `+` keeps the planner from driving the update by the state
/// index, which scanned every pending row once per pair.) Only pending rows change; an
/// outcome for any other row is logged and ignored, asked for only when the update changed
/// fewer rows than it was given.
async fn record_delivered(
    conn: &mut sqlx::SqliteConnection,
    delivered: &[(i64, Option<&str>)],
    now: i64,
) -> Result<(), LedgerError> {
    if delivered.is_empty() {
        return Ok(());
    }
    let pairs = serde_json::to_string(delivered).map_err(|e| LedgerError::Corrupt {
        lead_id: "(delivered outcomes)".to_owned(),
        reason: e.to_string(),
    })?;
    let updated = sqlx::query(
        "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, \
         crm_ref = COALESCE(v.crm_ref, deliveries.crm_ref), next_attempt_at = NULL, \
         delivered_at = $2, updated_at = $2 \
         FROM (SELECT value ->> 0 AS id, value ->> 1 AS crm_ref FROM json_each($1)) AS v \
         WHERE deliveries.id = v.id AND +deliveries.state = 'pending'",
    )
    .bind(&pairs)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let mut seen = HashSet::with_capacity(delivered.len());
    let repeated: Vec<i64> = delivered
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !seen.insert(*id))
        .collect();
    // Usually every one was pending: then nothing is asked. Otherwise the ones this update
    // did not deliver are those not delivered at `now` (a second answer within the same
    // millisecond as the first goes unlogged, nothing else).
    let not_pending = if updated == seen.len() as u64 {
        HashSet::new()
    } else {
        not_delivered_at(conn, &pairs, now).await?
    };
    for delivery_id in not_pending.iter().chain(&repeated) {
        // A second outcome for the same delivery is a late answer, as one for a row that is
        // no longer pending.
        tracing::warn!(
            delivery_id,
            "outcome for a delivery that is not pending (or does not exist); ignored"
        );
    }
    Ok(())
}

/// Store a `Retry`, `Release` or `Dead` outcome (its lease holder already checked). Only a
/// pending delivery takes an outcome: a late answer must never turn a delivered or dead row
/// back into something else.
async fn record_other(
    conn: &mut sqlx::SqliteConnection,
    outcome: &RecordedOutcome,
    now: i64,
) -> Result<(), LedgerError> {
    let query = match outcome {
        RecordedOutcome::Delivered { .. } => return Ok(()),
        RecordedOutcome::Retry {
            delivery_id,
            next_attempt_at,
            error_code,
            error,
        } => sqlx::query(
            "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = $1, \
             error_code = $2, error = $3, updated_at = $4 WHERE id = $5 AND state = 'pending'",
        )
        .bind(to_ms(*next_attempt_at))
        .bind(error_code.as_deref())
        .bind(error.as_str())
        .bind(now)
        .bind(*delivery_id),
        RecordedOutcome::Release {
            delivery_id,
            next_attempt_at,
        } => sqlx::query(
            "UPDATE deliveries SET next_attempt_at = $1, updated_at = $2 \
             WHERE id = $3 AND state = 'pending'",
        )
        .bind(to_ms(*next_attempt_at))
        .bind(now)
        .bind(*delivery_id),
        RecordedOutcome::Dead {
            delivery_id,
            error_code,
            error,
        } => sqlx::query(
            "UPDATE deliveries SET state = 'dead', attempts = attempts + 1, \
             next_attempt_at = NULL, error_code = $1, error = $2, updated_at = $3 \
             WHERE id = $4 AND state = 'pending'",
        )
        .bind(error_code.as_deref())
        .bind(error.as_str())
        .bind(now)
        .bind(*delivery_id),
    };
    if query.execute(&mut *conn).await?.rows_affected() == 0 {
        tracing::warn!(
            delivery_id = outcome.delivery_id(),
            "outcome for a delivery that is not pending (or does not exist); ignored"
        );
    }
    Ok(())
}

/// The delivery ids of `pairs` (a JSON array of `[id, crm_ref]`) whose row was not
/// delivered at `now` or does not exist, as one JSON array from SQLite.
async fn not_delivered_at(
    conn: &mut sqlx::SqliteConnection,
    pairs: &str,
    now: i64,
) -> Result<HashSet<i64>, LedgerError> {
    let ids: String = sqlx::query_scalar(
        "SELECT json_group_array(v.value ->> 0) FROM json_each($1) AS v \
         WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = v.value ->> 0 \
                           AND d.state = 'delivered' AND d.delivered_at = $2)",
    )
    .bind(pairs)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let ids: Vec<i64> = serde_json::from_str(&ids).map_err(|e| LedgerError::Corrupt {
        lead_id: "(delivered outcomes)".to_owned(),
        reason: format!("SQLite's list of rows not delivered could not be read: {e}"),
    })?;
    Ok(ids.into_iter().collect())
}

#[async_trait]
impl Ledger for SqliteLedger {
    async fn stage(&self, batch: StageBatch) -> Result<StageReport, LedgerError> {
        let bodies = encode_leads(&batch.leads)?;
        let leads: Vec<(&StagedLead, &String)> = batch.leads.iter().zip(&bodies).collect();
        let now = to_ms(Utc::now());
        let (_guard, mut tx) = self.begin_write().await?;
        let report = Sql::stage(&mut tx, &batch, &leads, now).await?;
        tx.commit().await?;
        log_staged(&batch.source, &report);
        Ok(report)
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

        // Leases live in memory (see module doc), so a claim only reads, skipping what this
        // process has leased; from the target's claim cursor when it has one, and from the
        // queue's head for what that read did not fill (see `MemoryLeases`).
        let _claiming = self.claiming.lock().await;
        let resume = self.held_leases().resume_point(target, now);
        let mut claimed = Vec::new();
        if let Some(after) = resume {
            let busy = self.held_leases().busy(target, Some(after), &[]);
            claimed = self
                .read_due(target, now, limit, Some(after), &busy)
                .await?;
        }
        let mut last = claimed.last().map(|(_, place)| *place);
        let short = limit as usize - claimed.len();
        if short > 0 {
            let taken: Vec<i64> = claimed.iter().map(|(d, _)| d.delivery_id).collect();
            let busy = self.held_leases().busy(target, None, &taken);
            let behind = self
                .read_due(target, now, short as u32, None, &busy)
                .await?;
            // A full read from the head anchors the cursor at its end; a short one found all
            // there is, so the cursor goes on from the furthest place read.
            last = match (behind.last(), behind.len() == short) {
                (Some((_, end)), true) => Some(*end),
                (Some((_, end)), false) => last.max(Some(*end)),
                (None, _) => last,
            };
            claimed.splice(0..0, behind);
        }
        let places: Vec<(i64, (i64, i64))> = claimed
            .iter()
            .map(|(d, place)| (d.delivery_id, *place))
            .collect();
        let mut leases = self.held_leases();
        leases.grant(target, &places, owner, until);
        leases.claimed_up_to(target, last, short > 0, now);
        drop(leases);
        tracing::trace!(target = %target, claimed = claimed.len(), "claimed deliveries under lease");
        Ok(claimed.into_iter().map(|(d, _)| d).collect())
    }

    async fn record(&self, outcomes: &[RecordedOutcome], owner: &str) -> Result<(), LedgerError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = to_ms(Utc::now());
        let decided = self.decided_by(outcomes, owner);

        let (_guard, mut tx) = self.begin_write().await?;
        // Deliveries (the common outcome) are written a chunk per statement, in order with
        // the other outcomes; see `record_delivered`.
        let mut delivered: Vec<(i64, Option<&str>)> = Vec::new();
        for outcome in &decided {
            if let RecordedOutcome::Delivered {
                delivery_id,
                crm_ref,
            } = outcome
            {
                delivered.push((*delivery_id, crm_ref.as_deref()));
                continue;
            }
            record_delivered(&mut tx, &delivered, now).await?;
            delivered.clear();
            record_other(&mut tx, outcome, now).await?;
        }
        record_delivered(&mut tx, &delivered, now).await?;
        tx.commit().await?;
        // Only now that they are committed: a claim that read the rows before this commit
        // still found them leased and skipped them.
        let mut leases = self.held_leases();
        leases.end(decided.iter().map(|o| o.delivery_id()));
        // A delivery back in the queue may sit behind a claim cursor.
        if decided.iter().any(|o| {
            matches!(
                o,
                RecordedOutcome::Retry { .. } | RecordedOutcome::Release { .. }
            )
        }) {
            leases.forget_cursors();
        }
        Ok(())
    }

    /// The earliest time a pending delivery of `target` can be claimed: its due time, or
    /// for one leased in memory the end of its lease, if later.
    async fn next_due(&self, target: &str) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let held = self.held_leases().held_json(target);
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(due) FROM ( \
                 SELECT MIN(next_attempt_at) AS due FROM deliveries \
                 WHERE target = $1 AND state = 'pending' \
                   AND id NOT IN (SELECT value ->> 0 FROM json_each($2)) \
                 UNION ALL \
                 SELECT MIN(CASE WHEN j.value ->> 1 > d.next_attempt_at \
                                 THEN j.value ->> 1 ELSE d.next_attempt_at END) \
                 FROM json_each($2) AS j JOIN deliveries d ON d.id = j.value ->> 0 \
                 WHERE d.state = 'pending')",
        )
        .bind(target)
        .bind(held)
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
        let (_guard, mut tx) = self.begin_write().await?;
        Sql::pause_target(&mut *tx, target, until, reason).await?;
        Ok(tx.commit().await?)
    }

    async fn set_source_error(
        &self,
        source: &str,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let (_guard, mut tx) = self.begin_write().await?;
        Sql::set_source_error(&mut *tx, source, error, now).await?;
        Ok(tx.commit().await?)
    }

    async fn set_target_note(
        &self,
        target: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let (_guard, mut tx) = self.begin_write().await?;
        Sql::set_target_note(&mut *tx, target, note, now).await?;
        Ok(tx.commit().await?)
    }

    async fn set_target_down(
        &self,
        target: &str,
        down: Option<&TargetDown>,
    ) -> Result<(), LedgerError> {
        let (_guard, mut tx) = self.begin_write().await?;
        Sql::set_target_down(&mut *tx, target, down).await?;
        Ok(tx.commit().await?)
    }

    async fn target_up(
        &self,
        target: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Duration>, LedgerError> {
        let (_guard, mut tx) = self.begin_write().await?;
        let outage = Sql::target_up(&mut tx, target, now).await?;
        tx.commit().await?;
        Ok(outage)
    }

    async fn target_down(&self, target: &str) -> Result<Option<TargetDown>, LedgerError> {
        Sql::target_down(&self.pool, target).await
    }

    async fn extend_retry_age(&self, target: &str, by: Duration) -> Result<u64, LedgerError> {
        let (_guard, mut tx) = self.begin_write().await?;
        let moved = Sql::extend_retry_age(&mut *tx, target, by).await?;
        tx.commit().await?;
        Ok(moved)
    }

    async fn paused_until(&self, target: &str) -> Result<Option<DateTime<Utc>>, LedgerError> {
        Sql::paused_until(&self.pool, target).await
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        Sql::ping(&self.pool).await
    }

    async fn status(&self, now: DateTime<Utc>) -> Result<LedgerStatus, LedgerError> {
        // One read transaction: every number comes from the same snapshot. One process
        // holds a SQLite ledger: there are no instances to show.
        let mut tx = self.pool.begin().await?;
        let status = Sql::status(&mut tx, TARGET_COUNTS, to_ms(now)).await?;
        tx.commit().await?;
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
        let (_guard, mut tx) = self.begin_write().await?;
        let count = Sql::retry_dead(&mut *tx, filter, now).await?;
        tx.commit().await?;
        // Due at `now`, they may sit behind a claim cursor.
        self.held_leases().forget_cursors();
        Ok(count)
    }

    async fn replay(
        &self,
        target: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        let (_guard, mut tx) = self.begin_write().await?;
        let n = Sql::replay(&mut *tx, target, since, now).await?;
        tx.commit().await?;
        self.held_leases().forget_cursors();
        Ok(n)
    }

    async fn forget_email(&self, email: &str) -> Result<Vec<String>, LedgerError> {
        let wanted = email.trim().to_lowercase();
        let (_guard, mut tx) = self.begin_write().await?;
        // The e-mail lives inside the JSON body; a LIKE on the lower-cased body narrows the
        // scan, and decoding confirms the match exactly.
        let pattern = format!("%{}%", wanted.replace(['%', '_'], ""));
        let erased = Sql::forget_email(
            &mut tx,
            "SELECT id, body FROM leads WHERE lower(body) LIKE $1",
            &pattern,
            &wanted,
        )
        .await?;
        tx.commit().await?;
        self.checkpoint().await?;
        Ok(erased)
    }

    async fn purge_personal_data(&self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        let before = to_ms(before);
        let mut purged = 0u64;
        loop {
            let (_guard, mut tx) = self.begin_write().await?;
            let n = Sql::purge(
                &mut tx,
                "SELECT l.id, l.body FROM leads l \
                 WHERE l.staged_at < $1 AND l.body NOT LIKE '%\"redacted\":true}' \
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.lead_id = l.id \
                        AND (d.state <> 'delivered' OR d.delivered_at IS NULL OR d.delivered_at >= $1)) \
                 LIMIT 500",
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
            self.checkpoint().await?;
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
        let mut tx = self.pool.begin().await?;
        let Some((lead, staged_at)) = Sql::staged_lead(&mut *tx, lead_id).await? else {
            return Ok(None);
        };
        let deliveries = Sql::delivery_traces(&mut *tx, lead_id).await?;
        tx.commit().await?;
        Ok(Some((lead, staged_at, deliveries)))
    }

    /// One process holds a SQLite ledger (its file lock), so it always holds every source.
    async fn acquire_source(
        &self,
        _source: &str,
        _owner: &str,
        _ttl: Duration,
        _now: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        Ok(true)
    }

    async fn release_source(&self, _source: &str, _owner: &str) -> Result<(), LedgerError> {
        Ok(())
    }

    /// Nothing to record: no other instance can share a SQLite ledger.
    async fn heartbeat(
        &self,
        _instance: &InstanceInfo,
        _now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        Ok(())
    }

    /// Leases live in memory: renewing them writes nothing.
    async fn renew_leases(
        &self,
        delivery_ids: &[i64],
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        Ok(self.held_leases().renew(delivery_ids, owner, to_ms(until)))
    }

    /// Nothing is ever stale: the only process that can hold leases is this one (the lock
    /// file), and the leases of one that died were cleared when this one opened the file.
    async fn release_stale_leases(
        &self,
        _now: DateTime<Utc>,
        _stale_after: Duration,
    ) -> Result<u64, LedgerError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    //! SQLite-only behaviour (the file lock, leases voided at reopen, a trigger proving the
    //! stage transaction is atomic). The shared scenarios run on both backends in
    //! `ledger::contract`.
    use super::*;
    use crate::ledger::contract::{batch, soon, staged};
    use crate::ledger::QuarantinedRecord;

    const LEASE: Duration = Duration::from_secs(60);

    async fn open(dir: &tempfile::TempDir) -> SqliteLedger {
        SqliteLedger::open(&dir.path().join("state").join("ledger.db"))
            .await
            .expect("ledger opens")
    }

    async fn count(ledger: &SqliteLedger, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&ledger.pool)
            .await
            .expect("count query")
    }

    #[tokio::test]
    async fn cursor_moves_only_with_its_leads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(&dir).await;
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

        // Make the second lead's delivery fail half way through the transaction.
        sqlx::query(
            "CREATE TRIGGER boom BEFORE INSERT ON deliveries WHEN NEW.target = 'boom' \
             BEGIN SELECT RAISE(ABORT, 'boom'); END",
        )
        .execute(&ledger.pool)
        .await
        .expect("trigger");
        let mut failing = batch(&["c"], &["crm1"], Some("c2"));
        failing.leads.push(staged("d", &["boom"]));
        failing.quarantined.push(QuarantinedRecord {
            origin: "inbox/x.jsonl:1".to_owned(),
            reason: "not JSON".to_owned(),
        });
        assert!(ledger.stage(failing).await.is_err());

        assert_eq!(
            ledger.cursor("spool").await.expect("cursor").as_deref(),
            Some("c1")
        );
        assert!(ledger.trace("c").await.expect("trace").is_none());
        assert_eq!(count(&ledger, "SELECT COUNT(*) FROM leads").await, 2);
        assert_eq!(count(&ledger, "SELECT COUNT(*) FROM quarantine").await, 0);
    }

    /// The claim cursor only ever saves reading: across claims, deliveries, releases,
    /// retries and leads that come due behind it, no delivery is handed out while leased, a
    /// claim that comes back short took everything due, and in the end every lead arrives.
    #[tokio::test]
    async fn claims_from_a_cursor_never_hand_out_a_leased_delivery_nor_miss_a_due_one() {
        use std::collections::HashMap;
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(&dir).await;
        let first: Vec<String> = (0..60).map(|i| format!("l{i:03}")).collect();
        let first: Vec<&str> = first.iter().map(String::as_str).collect();
        ledger
            .stage(batch(&first, &["crm"], None))
            .await
            .expect("stage");
        let start = soon();
        let mut now = start;
        let mut leased: HashMap<i64, String> = HashMap::new();
        let mut arrived: HashSet<String> = HashSet::new();
        let mut staged = first.len();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for step in 0..400 {
            match next(5) {
                0 | 1 => {
                    let limit = 1 + next(7) as usize;
                    let got = ledger
                        .claim("crm", now, limit as u32, LEASE, "me")
                        .await
                        .expect("claim");
                    for d in &got {
                        let lead = d.lead.id.to_string();
                        assert!(!arrived.contains(&lead), "step {step}: {lead} again");
                        let before = leased.insert(d.delivery_id, lead);
                        assert!(before.is_none(), "step {step}: handed out while leased");
                    }
                    if got.len() < limit {
                        let due: Vec<i64> = sqlx::query_scalar(
                            "SELECT id FROM deliveries WHERE target = 'crm' \
                             AND state = 'pending' AND next_attempt_at <= $1",
                        )
                        .bind(to_ms(now))
                        .fetch_all(&ledger.pool)
                        .await
                        .expect("due");
                        let missed: Vec<i64> = due
                            .into_iter()
                            .filter(|id| !leased.contains_key(id))
                            .collect();
                        assert!(
                            missed.is_empty(),
                            "step {step}: a short claim left {missed:?}"
                        );
                    }
                }
                2 | 3 if !leased.is_empty() => {
                    let mut ids: Vec<i64> = leased.keys().copied().collect();
                    ids.sort_unstable();
                    let id = ids[next(ids.len() as u64) as usize];
                    let lead = leased.remove(&id).expect("leased");
                    let outcome = match next(3) {
                        0 => {
                            arrived.insert(lead);
                            RecordedOutcome::Delivered {
                                delivery_id: id,
                                crm_ref: None,
                            }
                        }
                        1 => RecordedOutcome::Release {
                            delivery_id: id,
                            next_attempt_at: now,
                        },
                        _ => RecordedOutcome::Retry {
                            delivery_id: id,
                            next_attempt_at: now,
                            error_code: None,
                            error: "try again".to_owned(),
                        },
                    };
                    ledger.record(&[outcome], "me").await.expect("record");
                }
                _ => {
                    // A lead that comes due behind wherever the cursor is (as one staged
                    // while a claim ran does).
                    let id = format!("x{step:03}");
                    ledger
                        .stage(batch(&[id.as_str()], &["crm"], None))
                        .await
                        .expect("stage");
                    sqlx::query("UPDATE deliveries SET next_attempt_at = $1 WHERE lead_id = $2")
                        .bind(to_ms(start) - 1_000)
                        .bind(&id)
                        .execute(&ledger.pool)
                        .await
                        .expect("behind");
                    staged += 1;
                }
            }
            now += chrono::TimeDelta::milliseconds(next(120) as i64);
        }
        for (id, lead) in leased.drain() {
            arrived.insert(lead);
            let delivered = RecordedOutcome::Delivered {
                delivery_id: id,
                crm_ref: None,
            };
            ledger.record(&[delivered], "me").await.expect("record");
        }
        loop {
            let got = ledger
                .claim("crm", now, 50, LEASE, "me")
                .await
                .expect("claim");
            if got.is_empty() {
                break;
            }
            for d in got {
                assert!(
                    arrived.insert(d.lead.id.to_string()),
                    "claimed twice at the end"
                );
                let delivered = RecordedOutcome::Delivered {
                    delivery_id: d.delivery_id,
                    crm_ref: None,
                };
                ledger.record(&[delivered], "me").await.expect("record");
            }
        }
        assert_eq!(arrived.len(), staged, "every lead arrived once");
    }

    #[tokio::test]
    async fn reopening_clears_leases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = {
            let ledger = open(&dir).await;
            ledger
                .stage(batch(&["a", "b"], &["crm"], Some("c1")))
                .await
                .expect("stage");
            let now = soon();
            let got = ledger
                .claim("crm", now, 1, Duration::from_secs(3600), "w1")
                .await
                .expect("claim");
            assert_eq!(got.len(), 1);
            // A lease as an older version wrote it into the file.
            sqlx::query("UPDATE deliveries SET lease_owner = 'old', lease_until = $1")
                .bind(to_ms(now) + 3_600_000)
                .execute(&ledger.pool)
                .await
                .expect("old lease");
            now
        };
        let ledger = open(&dir).await;
        assert_eq!(
            count(
                &ledger,
                "SELECT COUNT(*) FROM deliveries WHERE lease_owner IS NOT NULL"
            )
            .await,
            0
        );
        let got = ledger
            .claim("crm", now, 10, LEASE, "w2")
            .await
            .expect("claim");
        let ids: Vec<_> = got.iter().map(|d| d.lead.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(
            ledger.cursor("spool").await.expect("cursor").as_deref(),
            Some("c1")
        );
        ledger.close().await;

        // Closing explicitly releases the lock as well.
        let ledger = open(&dir).await;
        assert_eq!(count(&ledger, "SELECT COUNT(*) FROM leads").await, 2);
    }

    #[tokio::test]
    async fn a_second_open_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        let first = SqliteLedger::open(&path).await.expect("first open");
        match SqliteLedger::open(&path).await {
            Err(LedgerError::Locked { path: p, lock }) => {
                assert_eq!(p, path.display().to_string());
                assert!(lock.ends_with("ledger.db.lock"), "{lock}");
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        SqliteLedger::open(&path)
            .await
            .expect("open after the first is gone");
    }

    #[tokio::test]
    async fn a_corrupt_body_fails_the_claim_and_leases_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(&dir).await;
        ledger
            .stage(batch(&["a", "b"], &["crm"], None))
            .await
            .expect("stage");
        sqlx::query("UPDATE leads SET body = 'not json' WHERE id = 'b'")
            .execute(&ledger.pool)
            .await
            .expect("corrupt");
        match ledger.claim("crm", soon(), 10, LEASE, "w").await {
            Err(LedgerError::Corrupt { lead_id, .. }) => assert_eq!(lead_id, "b"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(ledger.held_leases().busy("crm", None, &[]), "[]");
        assert!(matches!(
            ledger.trace("b").await,
            Err(LedgerError::Corrupt { .. })
        ));
    }
}
