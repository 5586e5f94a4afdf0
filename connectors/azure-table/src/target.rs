//! The Azure Table target: each lead written with Insert Or Replace, keyed so that a lead
//! pushed twice lands on the same entity.
//!
//! PartitionKey comes from the target's settings (a fixed value, or the lead's offer id),
//! RowKey is the lead's idempotency key, both made of characters the service allows.
//! Records of one partition go out as entity group transactions of up to 100; when the
//! service names a failing operation, that record gets the failure and the rest of the
//! change set (which the service rolled back) is sent again at once, without it. The table
//! is created on first use when missing. Size limits are enforced before sending
//! (`entity.rs`), so the service never refuses a record for its size.

use async_trait::async_trait;
use leadsync_core::http::{build_client, HttpSettings};
use leadsync_core::{
    BuildContext, BuildError, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome,
    FailureClass, FieldRule, Mapping, OutboundRecord, SecretRef,
};
use serde::Deserialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Mutex;

use crate::auth::SharedKeyScheme;
use crate::client::{BatchOp, BatchOutcome, TableClient, MAX_BATCH_BYTES, MAX_BATCH_OPS};
use crate::conn::{Account, Credential};
use crate::entity::{build_entity, check_property_name, sanitize_key, Oversize};
use crate::error::TableError;

/// Records one `push` accepts.
pub const MAX_BATCH: usize = 100;

/// How the PartitionKey of a lead's entity is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionBy {
    /// Always `partition_key`.
    #[default]
    Fixed,
    /// The lead's offer id (`offerid` of `publisher.offerid`, else the raw offer, else the
    /// offer title), sanitised; `partition_key` when the lead has none.
    Offer,
}

/// `[connection]` of a `kind = "azure_table"` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureTableSettings {
    /// The storage account connection string (a secret: it holds the account key or SAS).
    pub connection_string: SecretRef,
    /// The table leads are written to; created when missing (see `create_table`).
    pub table: String,
    /// The PartitionKey (with `partition_by = "fixed"`), or the fallback. Default "leads".
    #[serde(default = "default_partition_key")]
    pub partition_key: String,
    #[serde(default)]
    pub partition_by: PartitionBy,
    /// `shared_key` (default) or `shared_key_lite`; ignored with a SAS.
    #[serde(default)]
    pub auth_scheme: SharedKeyScheme,
    /// A value over a Table limit: `truncate` (default, with a warning) or `reject`.
    #[serde(default)]
    pub oversize: Oversize,
    /// Create the table on first use when it is missing. Default true.
    #[serde(default = "yes")]
    pub create_table: bool,
    #[serde(default)]
    pub http: HttpSettings,
}

fn default_partition_key() -> String {
    "leads".into()
}
fn yes() -> bool {
    true
}

/// A setting that cannot work, naming its key under `[connection]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct AzureTableError {
    pub key: &'static str,
    pub message: String,
}

/// Is `name` a valid table name (`^[A-Za-z][A-Za-z0-9]{2,62}$`, not `tables`)?
pub fn check_table_name(name: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric())
        && !name.eq_ignore_ascii_case("tables");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid table name: 3 to 63 letters and digits, starting with a \
             letter (and not \"tables\")"
        ))
    }
}

/// A client from a connection string (used by the target and by the staging-table
/// source). `base_dir` resolves relative paths of the HTTP settings.
pub fn client_from_connection_string(
    connection_string: &str,
    scheme: SharedKeyScheme,
    http: &HttpSettings,
    base_dir: &Path,
) -> Result<TableClient, AzureTableError> {
    let account =
        Account::from_connection_string(connection_string).map_err(|e| AzureTableError {
            key: "connection_string",
            message: e.to_string(),
        })?;
    let http = build_client(http, base_dir).map_err(|e| AzureTableError {
        key: "http",
        message: e.to_string(),
    })?;
    Ok(TableClient::new(account, http, scheme))
}

/// The default mapping: property names in the style of the marketplace's own columns.
pub fn default_mapping(_settings: &AzureTableSettings) -> Mapping {
    let field = |c: &str, f: &str| FieldRule::field(c, f);
    let rules = [
        field("FirstName", "first_name"),
        field("LastName", "last_name"),
        field("Email", "email"),
        field("Phone", "phone"),
        field("Company", "company"),
        field("Title", "title"),
        field("Country", "country"),
        field("Origin", "origin"),
        field("LeadSource", "lead_source"),
        field("Action", "action"),
        field("Offer", "offer"),
        field("OfferTitle", "offer_title"),
        field("Description", "description"),
        field("CreatedAt", "created_at"),
        field("IsTest", "is_test"),
        field("DoNotContact", "dnc"),
        field("CustomerInfoRaw", "customer_info_raw"),
        field("LeadId", "lead_id"),
    ];
    // All names above are valid lead fields (unit-tested); filter rather than unwrap.
    Mapping::new(rules.into_iter().filter_map(Result::ok).collect())
}

/// Build an Azure Table target from its settings (the registry's entry for kind
/// `azure_table`): every mapped CRM field must be a valid property name.
pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    let settings: AzureTableSettings = ctx.settings()?;
    let mapping = ctx.mapping(default_mapping(&settings));
    for r in &mapping.rules {
        check_property_name(&r.crm_field)
            .map_err(|m| BuildError::new(format!("mapping.fields.{}", r.crm_field), m))?;
    }
    let mut connector = AzureTableConnector::try_new(settings, ctx.base_dir)
        .map_err(|e| BuildError::in_connection(e.key, e.message))?;
    connector.mapping = mapping;
    connector.target_name = ctx.target.to_string();
    Ok(Arc::new(connector))
}

/// The Azure Table target.
pub struct AzureTableConnector {
    client: TableClient,
    table: String,
    partition_key: String,
    partition_by: PartitionBy,
    oversize: Oversize,
    create_table: bool,
    mapping: Mapping,
    target_name: String,
    /// Whether the table is known to exist (checked or created once).
    ready: Mutex<bool>,
    /// The service refused `$batch` with this SAS: write one by one.
    sas_batches_refused: AtomicBool,
}

fn delivered(pk: &str, op: &BatchOp) -> DeliveryOutcome {
    DeliveryOutcome::delivered(Some(format!("{pk}/{}", op.row_key)), None)
}

impl AzureTableConnector {
    pub fn try_new(settings: AzureTableSettings, base_dir: &Path) -> Result<Self, AzureTableError> {
        check_table_name(&settings.table).map_err(|message| AzureTableError {
            key: "table",
            message,
        })?;
        let partition_key = sanitize_key(&settings.partition_key);
        if partition_key.is_empty() {
            return Err(AzureTableError {
                key: "partition_key",
                message: "must not be empty".into(),
            });
        }
        if partition_key != settings.partition_key {
            return Err(AzureTableError {
                key: "partition_key",
                message: "must not contain `/ \\ # ? % + '`, control characters or surrounding \
                          spaces, nor exceed 255 characters"
                    .into(),
            });
        }
        let secret = settings
            .connection_string
            .resolve(base_dir)
            .map_err(|e| AzureTableError {
                key: "connection_string",
                message: e.to_string(),
            })?;
        let mapping = default_mapping(&settings);
        let client = client_from_connection_string(
            secret.expose(),
            settings.auth_scheme,
            &settings.http,
            base_dir,
        )?;
        Ok(AzureTableConnector {
            client,
            table: settings.table,
            partition_key,
            partition_by: settings.partition_by,
            oversize: settings.oversize,
            create_table: settings.create_table,
            mapping,
            target_name: String::new(),
            ready: Mutex::new(false),
            sas_batches_refused: AtomicBool::new(false),
        })
    }

    pub fn client(&self) -> &TableClient {
        &self.client
    }

    fn uses_sas(&self) -> bool {
        matches!(self.client.account().credential, Credential::Sas(_))
    }

    fn partition_of(&self, rec: &OutboundRecord) -> String {
        match self.partition_by {
            PartitionBy::Fixed => self.partition_key.clone(),
            PartitionBy::Offer => {
                let o = &rec.lead.offer;
                let pk = o
                    .offer_id
                    .as_deref()
                    .or(o.raw.as_deref())
                    .or(o.display_title.as_deref())
                    .map(sanitize_key)
                    .unwrap_or_default();
                if pk.is_empty() {
                    self.partition_key.clone()
                } else {
                    pk
                }
            }
        }
    }

    /// Create the table once when allowed; a service SAS cannot create tables, so a refusal
    /// there means "assume it exists" and the writes will tell.
    async fn ensure_table(&self, force: bool) -> Result<(), TableError> {
        let mut ready = self.ready.lock().await;
        if *ready && !force {
            return Ok(());
        }
        if self.create_table {
            match self.client.create_table(&self.table).await {
                Ok(true) => {
                    tracing::info!(target_name = %self.target_name, table = %self.table, "created the table");
                }
                Ok(false) => {}
                Err(e) if e.is_auth() && self.uses_sas() => {}
                Err(e) => return Err(e),
            }
        }
        *ready = true;
        Ok(())
    }

    fn log_failure(&self, e: &TableError) {
        if e.is_auth() {
            tracing::error!(
                target_name = %self.target_name,
                account = %self.client.account_name(),
                error_code = e.code(),
                "the storage account refused the credentials: check the account key or SAS in this target's connection_string"
            );
        }
    }

    /// Write one chunk (one partition, distinct row keys); fills `outcomes` for its records.
    /// Returns the failure that must stop the rest of the push (throttling, credentials,
    /// transport), if any.
    async fn write_chunk(
        &self,
        pk: &str,
        mut pending: Vec<(usize, BatchOp)>,
        outcomes: &mut [Option<DeliveryOutcome>],
    ) -> Option<DeliveryFailure> {
        let mut recreated = false;
        // Each round either finishes or drops one record, so this is bounded.
        for _ in 0..=pending.len() + 2 {
            if pending.is_empty() {
                return None;
            }
            if pending.len() == 1 || self.sas_batches_refused.load(Ordering::Relaxed) {
                return self.write_singles(pk, pending, outcomes).await;
            }
            let ops: Vec<BatchOp> = pending.iter().map(|(_, op)| op.clone()).collect();
            let error = match self.client.submit_batch(&self.table, pk, &ops).await {
                Ok(BatchOutcome::Applied) => {
                    for (i, op) in pending.drain(..) {
                        outcomes[i] = Some(delivered(pk, &op));
                    }
                    return None;
                }
                Ok(BatchOutcome::Failed {
                    index: Some(j),
                    error,
                }) if error.class() == FailureClass::Rejected && j < pending.len() => {
                    let (i, _) = pending.remove(j);
                    outcomes[i] = Some(DeliveryOutcome::Failed(error.to_failure()));
                    continue;
                }
                Ok(BatchOutcome::Failed { error, .. }) => error,
                Err(error) => error,
            };
            if error.is_auth() && self.uses_sas() {
                // Some services refuse a table SAS on `$batch` (Azurite does): write one by
                // one from now on; a real credential problem shows again there.
                tracing::info!(target_name = %self.target_name, "transactions refused with this SAS; writing entities one by one");
                self.sas_batches_refused.store(true, Ordering::Relaxed);
                continue;
            }
            if error.is_table_not_found() && self.create_table && !recreated {
                recreated = true;
                match self.ensure_table(true).await {
                    Ok(()) => continue,
                    Err(e) => {
                        self.log_failure(&e);
                        return Some(self.fail_all(pending, &e, outcomes));
                    }
                }
            }
            self.log_failure(&error);
            if error.class() == FailureClass::Rejected {
                // The service refused the change set without naming a record: each record
                // is tried again later rather than dead-lettered together.
                let f = DeliveryFailure::transient(error.code(), error.explain());
                for (i, _) in pending.drain(..) {
                    outcomes[i] = Some(DeliveryOutcome::Failed(f.clone()));
                }
                return None;
            }
            return Some(self.fail_all(pending, &error, outcomes));
        }
        None
    }

    /// Insert Or Replace each record on its own.
    async fn write_singles(
        &self,
        pk: &str,
        pending: Vec<(usize, BatchOp)>,
        outcomes: &mut [Option<DeliveryOutcome>],
    ) -> Option<DeliveryFailure> {
        let mut recreated = false;
        let mut rest = pending.into_iter();
        while let Some((i, op)) = rest.next() {
            let mut result = self
                .client
                .insert_or_replace(&self.table, pk, &op.row_key, &op.entity)
                .await;
            if matches!(&result, Err(e) if e.is_table_not_found())
                && self.create_table
                && !recreated
            {
                recreated = true;
                result = match self.ensure_table(true).await {
                    Ok(()) => {
                        self.client
                            .insert_or_replace(&self.table, pk, &op.row_key, &op.entity)
                            .await
                    }
                    Err(e) => Err(e),
                };
            }
            match result {
                Ok(()) => outcomes[i] = Some(delivered(pk, &op)),
                Err(e) if e.class() == FailureClass::Rejected => {
                    outcomes[i] = Some(DeliveryOutcome::Failed(e.to_failure()));
                }
                Err(e) => {
                    self.log_failure(&e);
                    let mut left = vec![(i, op)];
                    left.extend(rest);
                    return Some(self.fail_all(left, &e, outcomes));
                }
            }
        }
        None
    }

    fn fail_all(
        &self,
        pending: Vec<(usize, BatchOp)>,
        error: &TableError,
        outcomes: &mut [Option<DeliveryOutcome>],
    ) -> DeliveryFailure {
        let f = error.to_failure();
        for (i, _) in pending {
            outcomes[i] = Some(DeliveryOutcome::Failed(f.clone()));
        }
        f
    }
}

/// Split one partition's operations into transactions: at most 100 operations, at most
/// ~4 MiB, and no row key twice (a later write of the same key goes in a later batch, so
/// the last one wins as it would one by one).
fn chunks(ops: Vec<(usize, BatchOp, usize)>) -> Vec<Vec<(usize, BatchOp)>> {
    let mut out: Vec<Vec<(usize, BatchOp)>> = Vec::new();
    let mut current: Vec<(usize, BatchOp)> = Vec::new();
    let mut bytes = 0usize;
    // Leave room for the multipart framing around each operation.
    let budget = MAX_BATCH_BYTES - 256 * 1024;
    for (i, op, size) in ops {
        let dup = current.iter().any(|(_, o)| o.row_key == op.row_key);
        if !current.is_empty() && (current.len() >= MAX_BATCH_OPS || bytes + size > budget || dup) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size + 512;
        current.push((i, op));
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[async_trait]
impl Connector for AzureTableConnector {
    fn kind(&self) -> &'static str {
        "azure_table"
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    async fn check(&self, connect: bool) -> Result<CheckReport, CheckError> {
        let account = self.client.account();
        let mut report = CheckReport::default();
        report.verified.push(format!(
            "account {} at {} ({}, {})",
            account.name,
            leadsync_core::http::redact_url(&account.table_endpoint),
            if account.is_path_style() {
                "path-style URLs"
            } else {
                "host-style URLs"
            },
            if self.uses_sas() {
                "SAS"
            } else {
                "account key"
            }
        ));
        if !connect {
            return Ok(report);
        }
        let fail = |e: TableError| CheckError {
            what: format!("table {}", self.table),
            reason: e.explain(),
        };
        if self.create_table {
            match self.client.create_table(&self.table).await {
                Ok(created) => {
                    report.verified.push(format!(
                        "credentials accepted; table {} {}",
                        self.table,
                        if created { "created" } else { "exists" }
                    ));
                    return Ok(report);
                }
                Err(e) if e.is_auth() && self.uses_sas() => {}
                Err(e) => return Err(fail(e)),
            }
        }
        let query = crate::client::Query {
            top: Some(1),
            ..Default::default()
        };
        self.client
            .query_page(&self.table, &query, None)
            .await
            .map_err(fail)?;
        report.verified.push(format!(
            "credentials accepted; table {} reachable",
            self.table
        ));
        Ok(report)
    }

    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        let mut outcomes: Vec<Option<DeliveryOutcome>> = vec![None; batch.len()];
        if let Err(e) = self.ensure_table(false).await {
            self.log_failure(&e);
            let f = e.to_failure();
            return batch
                .iter()
                .map(|_| DeliveryOutcome::Failed(f.clone()))
                .collect();
        }
        // Build every entity; group by partition in arrival order.
        let mut groups: Vec<(String, Vec<(usize, BatchOp, usize)>)> = Vec::new();
        for (i, rec) in batch.iter().enumerate() {
            let pk = self.partition_of(rec);
            let rk = sanitize_key(&rec.idempotency_key);
            match build_entity(&pk, &rk, &rec.fields.fields, self.oversize) {
                Ok((entity, cuts)) => {
                    for c in cuts {
                        tracing::warn!(
                            target_name = %self.target_name,
                            lead = %rec.lead_id,
                            property = %c.property,
                            original_utf16_units = c.from_units,
                            kept_utf16_units = c.to_units,
                            "value truncated to fit Azure Table's limits"
                        );
                    }
                    let size = crate::entity::entity_size(&entity);
                    let op = BatchOp {
                        row_key: rk,
                        entity,
                    };
                    match groups.iter_mut().find(|(p, _)| *p == pk) {
                        Some((_, ops)) => ops.push((i, op, size)),
                        None => groups.push((pk, vec![(i, op, size)])),
                    }
                }
                Err(refusal) => {
                    outcomes[i] = Some(DeliveryOutcome::Failed(DeliveryFailure::rejected(
                        refusal.code,
                        refusal.message,
                    )));
                }
            }
        }
        let mut stop: Option<DeliveryFailure> = None;
        for (pk, ops) in groups {
            for chunk in chunks(ops) {
                if let Some(f) = &stop {
                    for (i, _) in chunk {
                        outcomes[i] = Some(DeliveryOutcome::Failed(f.clone()));
                    }
                    continue;
                }
                stop = self.write_chunk(&pk, chunk, &mut outcomes).await;
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    DeliveryOutcome::Failed(DeliveryFailure::transient(
                        "not_attempted",
                        "record was not attempted",
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mapping_is_complete_and_valid() {
        let settings: AzureTableSettings = serde_json::from_value(serde_json::json!({
            "connection_string": "UseDevelopmentStorage=true",
            "table": "Leads"
        }))
        .unwrap();
        let m = default_mapping(&settings);
        assert_eq!(m.rules.len(), 18);
        for r in &m.rules {
            crate::entity::check_property_name(&r.crm_field).unwrap();
        }
        assert!(check_table_name("Leads").is_ok());
        assert!(check_table_name("1abc").is_err());
        assert!(check_table_name("ab").is_err());
        assert!(check_table_name("my-table").is_err());
        assert!(check_table_name("Tables").is_err());
    }

    #[test]
    fn chunking_respects_count_and_duplicates() {
        let op = |rk: &str| BatchOp {
            row_key: rk.into(),
            entity: Default::default(),
        };
        let ops: Vec<_> = (0..250).map(|i| (i, op(&format!("k{i}")), 100)).collect();
        let c = chunks(ops);
        assert_eq!(
            c.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
        let dup = vec![(0, op("a"), 1), (1, op("b"), 1), (2, op("a"), 1)];
        assert_eq!(chunks(dup).len(), 2);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let s = |v: serde_json::Value| -> AzureTableSettings { serde_json::from_value(v).unwrap() };
        let dir = std::env::temp_dir();
        let e = AzureTableConnector::try_new(
            s(serde_json::json!({"connection_string": "UseDevelopmentStorage=true", "table": "bad-name"})),
            &dir,
        )
        .err()
        .unwrap();
        assert_eq!(e.key, "table");
        let e = AzureTableConnector::try_new(
            s(serde_json::json!({"connection_string": "AccountName=x", "table": "Leads"})),
            &dir,
        )
        .err()
        .unwrap();
        assert_eq!(e.key, "connection_string");
        let e = AzureTableConnector::try_new(
            s(serde_json::json!({"connection_string": "UseDevelopmentStorage=true", "table": "Leads", "partition_key": "a/b"})),
            &dir,
        )
        .err()
        .unwrap();
        assert_eq!(e.key, "partition_key");
        assert!(serde_json::from_value::<AzureTableSettings>(
            serde_json::json!({"connection_string": "x", "table": "Leads", "tabel": 1})
        )
        .is_err());
    }
}
