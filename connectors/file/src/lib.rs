//! The file target: leads written to a local CSV or JSONL file, one row per idempotency key.
//!
//! It owns one output file and guarantees "exactly one row per key, even across crashes and
//! re-runs": on first use it reads the file back, drops a torn last row (a crash mid-write),
//! and remembers every key it holds; a push appends only rows whose key is new, in one write,
//! then `fsync`s before reporting them delivered. A lead pushed again after a crash finds its
//! key and is reported delivered without a second row.
//!
//! CSV cells starting with `=`, `+`, `-`, `@`, tab or CR are prefixed with `'` so that a
//! spreadsheet never runs them as formulas. The default columns suit the Salesforce and
//! Dynamics 365 import wizards; the target's `[mapping]` changes them.

use async_trait::async_trait;
use leadsync_core::{
    BuildContext, BuildError, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome,
    FieldRule, Mapping, OutboundRecord,
};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The column that carries the idempotency key; always the last one.
pub const KEY_COLUMN: &str = "Leadsync Key";
/// The JSONL property that carries the idempotency key.
pub const KEY_PROPERTY: &str = "leadsync_key";

/// Rows written per push at most.
pub const MAX_BATCH: usize = 1000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    #[default]
    Csv,
    Jsonl,
}

/// `[connection]` of a `kind = "file"` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// The output file; relative to the target file's folder.
    pub path: PathBuf,
    #[serde(default)]
    pub format: FileFormat,
}

/// Why the file target cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum FileTargetError {
    #[error("path must name a file, not {0:?}")]
    NotAFile(PathBuf),
}

/// The default mapping: column names the Salesforce and Dynamics 365 import wizards
/// recognise, then marketplace details.
pub fn default_mapping() -> Mapping {
    let field = |c: &str, f: &str| FieldRule::field(c, f);
    let rules = [
        field("First Name", "first_name"),
        field("Last Name", "last_name"),
        field("Email", "email"),
        field("Phone", "phone"),
        field("Company", "company"),
        field("Title", "title"),
        field("Country", "country"),
        field("Lead Source", "origin"),
        FieldRule::template("Topic", "{offer_title} ({action})"),
        field("Description", "description"),
        field("Offer", "offer"),
        field("Action", "action"),
        field("Do Not Contact", "dnc"),
        field("Test Lead", "is_test"),
        field("Created", "created_at"),
        field("Lead ID", "lead_id"),
    ];
    // The names above are all valid lead fields; a failure here would be a bug caught by the
    // unit tests, so it is filtered rather than unwrapped.
    Mapping::new(rules.into_iter().filter_map(Result::ok).collect())
}

/// Build a file target from its settings (the registry's entry for kind `file`).
pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    let settings: FileSettings = ctx.settings()?;
    let mapping = ctx.mapping(default_mapping());
    let connector = FileConnector::try_new(settings, ctx.base_dir, mapping)
        .map_err(|e| BuildError::new("connection.path", e.to_string()))?;
    Ok(Arc::new(connector))
}

/// A CSV or JSONL file target.
pub struct FileConnector {
    path: PathBuf,
    format: FileFormat,
    mapping: Mapping,
    /// CSV header: the mapping's field names, then [`KEY_COLUMN`].
    columns: Arc<Vec<String>>,
    state: Arc<Mutex<Option<FileState>>>,
}

struct FileState {
    file: File,
    keys: HashSet<u128>,
    rows: u64,
    /// The CSV header in the file (`None` for JSONL or a new file).
    header: Option<Vec<String>>,
}

impl FileConnector {
    /// The CRM field names of the effective `mapping`, in order, make the CSV header even
    /// when a lead has no value for some of them.
    pub fn try_new(
        settings: FileSettings,
        base_dir: &Path,
        mapping: Mapping,
    ) -> Result<Self, FileTargetError> {
        let path = base_dir.join(&settings.path);
        if settings.path.as_os_str().is_empty() || path.is_dir() {
            return Err(FileTargetError::NotAFile(settings.path));
        }
        Ok(FileConnector {
            path,
            format: settings.format,
            columns: Arc::new(
                mapping
                    .rules
                    .iter()
                    .map(|r| r.crm_field.clone())
                    .filter(|c| c != KEY_COLUMN)
                    .chain(std::iter::once(KEY_COLUMN.to_string()))
                    .collect(),
            ),
            mapping,
            state: Arc::new(Mutex::new(None)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Keys are 32 hex characters; anything else (a hand-edited file) is hashed to 128 bits.
fn key_bits(key: &str) -> u128 {
    u128::from_str_radix(key, 16).unwrap_or_else(|_| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        u128::from(h.finish()) << 64 | key.len() as u128
    })
}

fn neutralise_cell(s: &str) -> String {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_string(),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => neutralise_cell(s),
        Value::Null => String::new(),
        other => neutralise_cell(&other.to_string()),
    }
}

/// Open the file and recover its state: the keys it holds, and the end of its last complete
/// row (a torn tail is cut off).
fn open_state(path: &Path, format: FileFormat) -> std::io::Result<FileState> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut keys = HashSet::new();
    let mut rows = 0u64;
    let mut header = None;
    let mut good_end = 0usize;
    match format {
        FileFormat::Jsonl => {
            let mut start = 0usize;
            while let Some(nl) = bytes[start..].iter().position(|b| *b == b'\n') {
                let line = &bytes[start..start + nl];
                if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(line) {
                    if let Some(Value::String(k)) = o.get(KEY_PROPERTY) {
                        keys.insert(key_bits(k));
                    }
                    rows += 1;
                }
                start += nl + 1;
                good_end = start;
            }
        }
        FileFormat::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(false)
                .from_reader(&bytes[..]);
            let mut record = csv::StringRecord::new();
            let mut key_idx = None;
            // A read error (a torn quoted field) ends the good part of the file.
            while let Ok(true) = rdr.read_record(&mut record) {
                let end = rdr.position().byte() as usize;
                // A row counts only if its terminator made it to disk.
                if end == 0 || bytes.get(end - 1) != Some(&b'\n') {
                    break;
                }
                match header {
                    None => {
                        let h: Vec<String> = record.iter().map(str::to_string).collect();
                        key_idx = h.iter().position(|c| c == KEY_COLUMN);
                        header = Some(h);
                    }
                    Some(_) => {
                        if let Some(k) = key_idx.and_then(|i| record.get(i)) {
                            keys.insert(key_bits(k));
                        }
                        rows += 1;
                    }
                }
                good_end = end;
            }
        }
    }
    if good_end < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            kept_bytes = good_end,
            dropped_bytes = bytes.len() - good_end,
            "output file ended in a torn row (earlier crash); cut it off"
        );
        file.set_len(good_end as u64)?;
        file.sync_data()?;
    }
    file.seek(SeekFrom::End(0))?;
    Ok(FileState {
        file,
        keys,
        rows,
        header,
    })
}

fn csv_row(cells: Vec<String>) -> std::io::Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(&cells).map_err(std::io::Error::other)?;
    w.into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

fn write_batch(
    slot: &mut Option<FileState>,
    path: &Path,
    format: FileFormat,
    columns: &[String],
    batch: &[OutboundRecord],
) -> std::io::Result<Vec<DeliveryOutcome>> {
    if slot.is_none() {
        *slot = Some(open_state(path, format)?);
    }
    let Some(state) = slot.as_mut() else {
        return Err(std::io::Error::other("file state missing"));
    };
    let mut buf = Vec::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut new_keys = Vec::new();
    let mut rows = state.rows;
    for rec in batch {
        let k = key_bits(&rec.idempotency_key);
        if state.keys.contains(&k) || new_keys.contains(&k) {
            outcomes.push(DeliveryOutcome::delivered(None, Some(false)));
            continue;
        }
        match format {
            FileFormat::Jsonl => {
                let mut obj = rec.fields.to_json_object();
                obj.insert(
                    KEY_PROPERTY.to_string(),
                    Value::String(rec.idempotency_key.clone()),
                );
                serde_json::to_writer(&mut buf, &obj)?;
                buf.push(b'\n');
            }
            FileFormat::Csv => {
                match &state.header {
                    None => {
                        buf.extend(csv_row(columns.to_vec())?);
                        state.header = Some(columns.to_vec());
                    }
                    Some(h) if h != columns => {
                        // The file was written under another mapping: writing these rows
                        // under its header would put values in the wrong columns.
                        outcomes.push(DeliveryOutcome::Failed(DeliveryFailure::transient(
                            "header_mismatch",
                            "the output file's header differs from the target's columns; \
                             move the file aside or change the mapping back",
                        )));
                        continue;
                    }
                    Some(_) => {}
                }
                let cells: Vec<String> = columns
                    .iter()
                    .map(|col| {
                        if col == KEY_COLUMN {
                            rec.idempotency_key.clone()
                        } else {
                            rec.fields.get(col).map(cell).unwrap_or_default()
                        }
                    })
                    .collect();
                buf.extend(csv_row(cells)?);
            }
        }
        rows += 1;
        new_keys.push(k);
        outcomes.push(DeliveryOutcome::delivered(
            Some(format!("row {rows}")),
            Some(true),
        ));
    }
    if !buf.is_empty() {
        let before = state.file.seek(SeekFrom::End(0))?;
        if let Err(e) = state
            .file
            .write_all(&buf)
            .and_then(|_| state.file.sync_data())
        {
            // Leave no half batch behind: cut back to where this batch began.
            let _ = state.file.set_len(before);
            return Err(e);
        }
    }
    state.keys.extend(new_keys);
    state.rows = rows;
    Ok(outcomes)
}

#[async_trait]
impl Connector for FileConnector {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    async fn check(&self, _connect: bool) -> Result<CheckReport, CheckError> {
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let err = |reason: String| CheckError {
            what: format!("output file {}", self.path.display()),
            reason,
        };
        if dir.exists() && !dir.is_dir() {
            return Err(err(format!("{} is not a directory", dir.display())));
        }
        if self.path.is_dir() {
            return Err(err("is a directory".into()));
        }
        Ok(CheckReport {
            verified: vec![format!(
                "output {} ({:?})",
                self.path.display(),
                self.format
            )],
        })
    }

    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        let state = Arc::clone(&self.state);
        let path = self.path.clone();
        let format = self.format;
        let columns = Arc::clone(&self.columns);
        let owned: Vec<OutboundRecord> = batch.to_vec();
        let n = batch.len();
        let result = tokio::task::spawn_blocking(move || {
            let mut guard = state
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            let result = write_batch(&mut guard, &path, format, &columns, &owned);
            if result.is_err() {
                // Re-read the file next time: the in-memory view may be stale.
                *guard = None;
            }
            result
        })
        .await;
        match result {
            Ok(Ok(outcomes)) => {
                tracing::trace!(records = n, format = ?format, "file target: batch written");
                outcomes
            }
            Ok(Err(e)) => vec![
                DeliveryOutcome::Failed(DeliveryFailure::transient(
                    "io_error",
                    format!("writing {}: {e}", self.path.display()),
                ));
                n
            ],
            Err(e) => vec![
                DeliveryOutcome::Failed(DeliveryFailure::transient(
                    "io_task_failed",
                    e.to_string(),
                ));
                n
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadsync_core::{idempotency_key, read_lead, KeyScope};
    use serde_json::json;

    fn record(i: usize, first: &str) -> OutboundRecord {
        let lead = read_lead(
            format!("lead-{i}"),
            &json!({"UserDetails": {"FirstName": first, "Phone": "+1 555", "Email": format!("p{i}@x.example")},
                    "LeadSource": "SPZA-PLT|pub.offer", "OfferTitle": "Contoso",
                    "Description": "line one\nline \"two\""}),
        )
        .unwrap();
        let key = idempotency_key("t", KeyScope::Lead, &lead);
        let (fields, _) = default_mapping().apply(&lead, &key, &[]);
        OutboundRecord {
            lead_id: lead.id.clone(),
            idempotency_key: key,
            attempt: 1,
            lead: Arc::new(lead),
            fields,
        }
    }

    fn connector(dir: &Path, format: FileFormat, name: &str) -> FileConnector {
        FileConnector::try_new(
            FileSettings {
                path: PathBuf::from(name),
                format,
            },
            dir,
            default_mapping(),
        )
        .unwrap()
    }

    #[test]
    fn default_mapping_is_complete() {
        assert_eq!(default_mapping().rules.len(), 16);
    }

    #[tokio::test]
    async fn csv_one_row_per_key_across_reopen_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let c = connector(dir.path(), FileFormat::Csv, "out/leads.csv");
        let batch: Vec<_> = (0..3).map(|i| record(i, "=cmd|' /C calc'!A0")).collect();
        let out = c.push(&batch).await;
        assert!(out.iter().all(|o| matches!(
            o,
            DeliveryOutcome::Delivered {
                created: Some(true),
                ..
            }
        )));
        // Same keys again, in a fresh connector (a re-run): nothing new.
        let c2 = connector(dir.path(), FileFormat::Csv, "out/leads.csv");
        let out = c2.push(&batch).await;
        assert!(out.iter().all(|o| matches!(
            o,
            DeliveryOutcome::Delivered {
                created: Some(false),
                ..
            }
        )));
        // A torn row (crash mid-write) is cut off and the lead written again.
        let path = dir.path().join("out/leads.csv");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"Ann,Partial,\"unterminated").unwrap();
        drop(f);
        let c3 = connector(dir.path(), FileFormat::Csv, "out/leads.csv");
        let out = c3.push(&[record(3, "Bo")]).await;
        assert!(matches!(
            out[0],
            DeliveryOutcome::Delivered {
                created: Some(true),
                ..
            }
        ));
        let mut rdr = csv::Reader::from_path(&path).unwrap();
        let headers = rdr.headers().unwrap().clone();
        assert_eq!(headers.get(0), Some("First Name"));
        assert_eq!(headers.get(headers.len() - 1), Some(KEY_COLUMN));
        let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 4);
        let keys: HashSet<_> = rows
            .iter()
            .map(|r| r.get(headers.len() - 1).unwrap().to_string())
            .collect();
        assert_eq!(keys.len(), 4);
        // Formula cells and phone numbers starting with + are neutralised.
        assert!(rows[0].get(0).unwrap().starts_with("'="));
        assert_eq!(rows[0].get(3), Some("'+1 555"));
        assert_eq!(rows[0].get(9), Some("line one\nline \"two\""));
    }

    #[tokio::test]
    async fn jsonl_dedupes_within_and_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let c = connector(dir.path(), FileFormat::Jsonl, "leads.jsonl");
        let a = record(1, "Ann");
        let out = c.push(&[a.clone(), a.clone(), record(2, "Bo")]).await;
        assert_eq!(out.len(), 3);
        assert!(matches!(
            out[1],
            DeliveryOutcome::Delivered {
                created: Some(false),
                ..
            }
        ));
        let c2 = connector(dir.path(), FileFormat::Jsonl, "leads.jsonl");
        c2.push(std::slice::from_ref(&a)).await;
        let text = std::fs::read_to_string(dir.path().join("leads.jsonl")).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["First Name"], "Ann");
        assert_eq!(lines[0][KEY_PROPERTY], a.idempotency_key);
    }

    #[tokio::test]
    async fn unwritable_path_is_transient() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("blocker"), "x").unwrap();
        let c = connector(dir.path(), FileFormat::Csv, "blocker/leads.csv");
        let out = c.push(&[record(1, "Ann")]).await;
        assert!(matches!(&out[0], DeliveryOutcome::Failed(f) if f.code == "io_error"));
    }
}
