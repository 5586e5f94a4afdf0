//! The Azure Table source: the table the marketplace stages leads in (`MarketplaceLeads` by
//! default), read the way the marketplace's own polling recipe reads it.
//!
//! Each pull queries `Timestamp gt datetime'<cursor − overlap>'` (the whole table when there
//! is no cursor yet) and follows the `x-ms-continuation-*` headers page by page until they
//! stop, even after an empty page. Only one page (plus what is left of the previous one) is
//! held in memory; each `next_batch` hands out at most `max` records. Timestamps are
//! assigned at commit and writers can commit out of order, so every pull starts `overlap`
//! before the cursor; the ledger ignores the leads it already has.
//!
//! **The cursor** is the highest `Timestamp` seen in a pull. Query results come in key
//! order, not time order, so it is handed to the ledger only with the pull's last batch,
//! once every entity up to it has been staged: a crash or an error mid-pull leaves the
//! stored cursor where it was, and the next pull reads those entities again.
//!
//! A lead's id is `azure-table:<account>/<table>/<PartitionKey>/<RowKey>`, with the table
//! name lower-cased (Azure compares table names without case). A missing table means "no
//! leads yet" (the marketplace creates it with the first lead); an unreachable account or
//! refused credentials are [`SourceError::Unavailable`], logged by the pipeline.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use leadsync_azure_table::{Continuation, Credential, Query, TableClient, TableError};
use leadsync_core::read_lead;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::time::Duration;

use super::{Source, SourceBatch, SourceError};
use leadsync_core::QuarantinedRecord;

pub struct AzureTableSource {
    name: String,
    client: TableClient,
    /// The table name as configured.
    table: String,
    /// The table name as the service has it, once found.
    resolved: Option<String>,
    overlap: Duration,
    page_size: u32,
    pull: Option<Pull>,
    /// "No table yet" was logged at info once; later pulls log it at debug.
    told_missing: bool,
}

/// The state of one pull, kept between `next_batch` calls.
struct Pull {
    table: String,
    query: Query,
    next: Option<Continuation>,
    /// No page is left to fetch.
    done: bool,
    buffer: VecDeque<Map<String, Value>>,
    /// The cursor the pull started from.
    start: Option<DateTime<Utc>>,
    /// The highest `Timestamp` seen so far (at least `start`).
    high_water: Option<DateTime<Utc>>,
    /// The pull's final batch, with the cursor, was handed out.
    finished: bool,
}

/// How the cursor is written: RFC 3339 with the service's 100 ns precision.
fn format_time(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl AzureTableSource {
    pub fn new(
        name: String,
        client: TableClient,
        table: String,
        overlap: Duration,
        page_size: u32,
    ) -> Self {
        AzureTableSource {
            name,
            client,
            table,
            resolved: None,
            overlap,
            page_size,
            pull: None,
            told_missing: false,
        }
    }

    fn unavailable(&self, e: &TableError) -> SourceError {
        SourceError::Unavailable {
            source_name: self.name.clone(),
            message: format!(
                "azure table {}/{}: {} ({})",
                self.client.account_name(),
                self.table,
                e.explain(),
                e.code()
            ),
        }
    }

    /// The table's name as the service has it, or `None` when it does not exist yet. The
    /// exact name is tried first; otherwise the account's tables are listed and matched
    /// without case (the docs show `MarketplaceLeads`, `MarketPlaceLeads`, `marketplaceleads`).
    async fn resolve(&mut self) -> Result<Option<String>, SourceError> {
        if let Some(t) = &self.resolved {
            return Ok(Some(t.clone()));
        }
        let found = match self.client.table_exists(&self.table).await {
            Ok(true) => Some(self.table.clone()),
            Ok(false) => {
                let tables = self
                    .client
                    .list_tables()
                    .await
                    .map_err(|e| self.unavailable(&e))?;
                tables
                    .into_iter()
                    .find(|t| t.eq_ignore_ascii_case(&self.table))
            }
            // A SAS scoped to the table cannot read the table list: query it directly.
            Err(e) if e.is_auth() && self.uses_sas() => Some(self.table.clone()),
            Err(e) => return Err(self.unavailable(&e)),
        };
        match &found {
            Some(t) => {
                if *t != self.table {
                    tracing::info!(source = %self.name, configured = %self.table, found = %t, "table found under another case");
                }
                self.resolved = Some(t.clone());
            }
            None if !self.told_missing => {
                self.told_missing = true;
                tracing::info!(source = %self.name, table = %self.table, "table does not exist yet: no leads so far (the marketplace creates it with the first lead)");
            }
            None => {
                tracing::debug!(source = %self.name, table = %self.table, "table does not exist yet");
            }
        }
        Ok(found)
    }

    fn uses_sas(&self) -> bool {
        matches!(self.client.account().credential, Credential::Sas(_))
    }

    async fn start_pull(&mut self, cursor: Option<&str>) -> Result<bool, SourceError> {
        let Some(table) = self.resolve().await? else {
            return Ok(false);
        };
        let start = cursor.and_then(|c| {
            let t = parse_time(c);
            if t.is_none() {
                tracing::warn!(source = %self.name, "stored cursor is not a timestamp; reading the whole table");
            }
            t
        });
        let overlap = chrono::Duration::from_std(self.overlap).unwrap_or(chrono::Duration::zero());
        let filter = start.map(|s| format!("Timestamp gt datetime'{}'", format_time(s - overlap)));
        self.pull = Some(Pull {
            table,
            query: Query {
                filter,
                select: None,
                top: Some(self.page_size),
            },
            next: None,
            done: false,
            buffer: VecDeque::new(),
            start,
            high_water: start,
            finished: false,
        });
        Ok(true)
    }

    /// Turn one entity into a lead, or a quarantined record with the reason.
    fn read(
        &self,
        table: &str,
        entity: Map<String, Value>,
        batch: &mut SourceBatch,
    ) -> Option<DateTime<Utc>> {
        let key = |k: &str| {
            entity
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (pk, rk) = (key("PartitionKey"), key("RowKey"));
        let stamp = entity
            .get("Timestamp")
            .and_then(|v| v.as_str())
            .and_then(parse_time);
        let id = format!(
            "azure-table:{}/{}/{pk}/{rk}",
            self.client.account_name(),
            table.to_lowercase()
        );
        match read_lead(id.clone(), &Value::Object(entity)) {
            Ok(lead) => {
                for w in &lead.warnings {
                    tracing::warn!(source = %self.name, lead = %lead.id, warning = %w, "lead read with a warning");
                }
                batch.leads.push(lead);
            }
            Err(e) => batch.quarantined.push(QuarantinedRecord {
                origin: id,
                reason: e.to_string(),
            }),
        }
        stamp
    }
}

#[async_trait]
impl Source for AzureTableSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn next_batch(
        &mut self,
        cursor: Option<&str>,
        max: usize,
    ) -> Result<Option<SourceBatch>, SourceError> {
        let max = max.max(1);
        if self.pull.is_none() && !self.start_pull(cursor).await? {
            return Ok(None);
        }
        // Fill the buffer up to `max`, one page at a time.
        loop {
            let Some(pull) = self.pull.as_mut() else {
                return Ok(None);
            };
            if pull.done || pull.buffer.len() >= max {
                break;
            }
            let result = self
                .client
                .query_page(&pull.table, &pull.query, pull.next.as_ref())
                .await;
            match result {
                Ok(page) => {
                    pull.done = page.next.is_none();
                    pull.next = page.next;
                    pull.buffer.extend(page.entities);
                }
                Err(e) => {
                    // Start over from the stored cursor next time.
                    self.pull = None;
                    if e.is_table_not_found() {
                        self.resolved = None;
                        return Ok(None);
                    }
                    return Err(self.unavailable(&e));
                }
            }
        }
        let Some(mut pull) = self.pull.take() else {
            return Ok(None);
        };
        let take = pull.buffer.len().min(max);
        let entities: Vec<Map<String, Value>> = pull.buffer.drain(..take).collect();
        let mut batch = SourceBatch::default();
        for entity in entities {
            if let Some(t) = self.read(&pull.table, entity, &mut batch) {
                pull.high_water = pull.high_water.max(Some(t));
            }
        }
        let last = pull.done && pull.buffer.is_empty();
        if last {
            if pull.finished {
                return Ok(None);
            }
            pull.finished = true;
            if pull.high_water > pull.start {
                batch.cursor = pull.high_water.map(format_time);
            }
            if batch.leads.is_empty() && batch.quarantined.is_empty() && batch.cursor.is_none() {
                return Ok(None);
            }
        }
        self.pull = Some(pull);
        Ok(Some(batch))
    }

    async fn committed(&mut self, _batch: &SourceBatch) -> Result<(), SourceError> {
        // The cursor travels with the batch into the ledger; nothing to move here.
        Ok(())
    }

    async fn check_connect(&mut self) -> Result<Vec<String>, SourceError> {
        self.resolved = None;
        match self.resolve().await? {
            Some(t) => {
                let probe = Query {
                    top: Some(1),
                    ..Default::default()
                };
                self.client
                    .query_page(&t, &probe, None)
                    .await
                    .map_err(|e| self.unavailable(&e))?;
                Ok(vec![format!(
                    "credentials accepted by account {}; table {t} readable",
                    self.client.account_name()
                )])
            }
            None => Ok(vec![format!(
                "credentials accepted by account {}; table {} does not exist yet (the \
                 marketplace creates it with the first lead)",
                self.client.account_name(),
                self.table
            )]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_times_round_trip_at_service_precision() {
        let t = parse_time("2026-11-01T08:00:00.8990608Z").unwrap();
        assert_eq!(format_time(t), "2026-11-01T08:00:00.8990608Z");
        assert!(parse_time("not a time").is_none());
    }
}
