//! The spool source: a directory of `*.json` (one object, or an array of objects) and
//! `*.jsonl` (one object per line) files.
//!
//! Files are read oldest first (modification time, then name). In `move` mode a file goes to
//! `processed/` once all its records are staged, and the records it could not read go to
//! `rejected/`: `rejected/<file>` holds them (the whole file when nothing in it was usable),
//! `rejected/<file>.reason` names each line (or array element) and why. In `keep` mode files
//! stay where they are and are read again on the next start (the ledger ignores leads it
//! has); within one process a file whose size and time did not change is not re-read.
//!
//! **The half-written-file rule.** Writers should create a file under a name that starts with
//! `.` or ends in `.tmp`/`.part` and rename it into place when done; such names are never
//! read. As a second guard, a file that looks unfinished (a `.jsonl` whose last line has no
//! newline, or a `.json` that ends mid-value) and was modified less than `settle` ago is left
//! for the next pull. An unfinished file older than that is read as it is: its broken tail is
//! quarantined like any bad record.
//!
//! **Bytes that are not UTF-8** are judged field by field (`leadsync_core::decode`): in the
//! customer's e-mail, names, company or phone they quarantine the record, naming the field;
//! elsewhere they become U+FFFD and the lead is logged with a warning naming the field, the
//! file and the line. A quarantined `.jsonl` line keeps its original bytes in `rejected/`; a
//! `.json` element is copied there with U+FFFD in their place.
//!
//! A lead's id is `spool:` + a hash of the record with its keys sorted, so the same record in
//! two files, or read twice after a crash, is one lead.

use async_trait::async_trait;
use leadsync_core::decode::{self, DecodedRecord, InvalidMark};
use leadsync_core::lead::{parse_record, parse_record_text, ReadError, MAX_RECORD_BYTES};
use leadsync_core::Lead;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Source, SourceBatch, SourceError};
use crate::config::AfterRead;
use leadsync_core::QuarantinedRecord;

/// A `.json` file larger than this is refused whole: use `.jsonl` for big drops.
pub const MAX_JSON_FILE_BYTES: u64 = 64 * 1024 * 1024;

pub struct SpoolSource {
    name: String,
    dir: PathBuf,
    after: AfterRead,
    settle: Duration,
    /// Files of the current pull still to read.
    queue: VecDeque<PathBuf>,
    current: Option<OpenFile>,
    /// Files read in this process (keep mode): path -> (size, mtime).
    seen: HashMap<PathBuf, (u64, SystemTime)>,
    /// Rejections of files finished in a batch, written out on commit.
    finished: HashMap<String, FinishedFile>,
}

struct FinishedFile {
    path: PathBuf,
    fingerprint: (u64, SystemTime),
    good: usize,
    rejects: Vec<Reject>,
}

struct Reject {
    place: String,
    reason: String,
    raw: Option<Vec<u8>>,
}

enum Records {
    Lines {
        reader: BufReader<File>,
        line: usize,
    },
    Elements {
        items: std::vec::IntoIter<Result<Box<serde_json::value::RawValue>, ReadError>>,
        index: usize,
        /// How the file's bytes that are not UTF-8 were marked, if it had any.
        mark: Option<InvalidMark>,
    },
}

struct OpenFile {
    path: PathBuf,
    fingerprint: (u64, SystemTime),
    records: Records,
    good: usize,
    rejects: Vec<Reject>,
}

impl SpoolSource {
    pub fn new(name: String, dir: PathBuf, after: AfterRead, settle: Duration) -> Self {
        SpoolSource {
            name,
            dir,
            after,
            settle,
            queue: VecDeque::new(),
            current: None,
            seen: HashMap::new(),
            finished: HashMap::new(),
        }
    }

    fn io_err(&self, path: &Path, error: std::io::Error) -> SourceError {
        SourceError::Io {
            source_name: self.name.clone(),
            path: path.display().to_string(),
            error,
        }
    }

    /// List the files of a new pull, oldest first.
    fn scan(&mut self) -> Result<(), SourceError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => return Err(self.io_err(&self.dir.clone(), e)),
        };
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let lower = name.to_ascii_lowercase();
            if name.starts_with('.') || !(lower.ends_with(".json") || lower.ends_with(".jsonl")) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if self.seen.get(&path) == Some(&(meta.len(), mtime)) {
                continue;
            }
            files.push((mtime, path));
        }
        files.sort();
        self.queue = files.into_iter().map(|(_, p)| p).collect();
        Ok(())
    }

    /// Open the next file, or `None` when the pull is done. Unfinished young files are
    /// skipped until a later pull.
    fn open_next(&mut self) -> Result<Option<OpenFile>, SourceError> {
        while let Some(path) = self.queue.pop_front() {
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                // Gone since the scan (another process moved it): nothing to do.
                Err(_) => continue,
            };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let young = SystemTime::now()
                .duration_since(mtime)
                .map(|age| age < self.settle)
                .unwrap_or(true);
            let fingerprint = (meta.len(), mtime);
            let is_jsonl = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
            let records = if is_jsonl {
                if young && !ends_with_newline(&path).unwrap_or(true) {
                    tracing::debug!(source = %self.name, file = %path.display(), "file still being written; left for the next pull");
                    continue;
                }
                let file = File::open(&path).map_err(|e| self.io_err(&path, e))?;
                Records::Lines {
                    reader: BufReader::with_capacity(64 * 1024, file),
                    line: 0,
                }
            } else {
                match read_json_file(&path, meta.len()) {
                    Ok((items, mark)) => Records::Elements {
                        items: items.into_iter(),
                        index: 0,
                        mark,
                    },
                    Err(JsonFileError::Incomplete) if young => {
                        tracing::debug!(source = %self.name, file = %path.display(), "file still being written; left for the next pull");
                        continue;
                    }
                    Err(JsonFileError::Io(e)) => return Err(self.io_err(&path, e)),
                    Err(e) => Records::Elements {
                        items: vec![Err(e.into_read_error())].into_iter(),
                        index: 0,
                        mark: None,
                    },
                }
            };
            return Ok(Some(OpenFile {
                path,
                fingerprint,
                records,
                good: 0,
                rejects: Vec::new(),
            }));
        }
        Ok(None)
    }

    fn file_label(path: &Path) -> String {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn write_out(&mut self, f: FinishedFile) -> Result<(), SourceError> {
        let name = Self::file_label(&f.path);
        if self.after == AfterRead::Keep {
            self.seen.insert(f.path, f.fingerprint);
            return Ok(());
        }
        let rejected_dir = self.dir.join("rejected");
        let processed_dir = self.dir.join("processed");
        if !f.rejects.is_empty() {
            std::fs::create_dir_all(&rejected_dir).map_err(|e| self.io_err(&rejected_dir, e))?;
            let target = unique_path(&rejected_dir, &name);
            let mut reason = String::new();
            for r in &f.rejects {
                reason.push_str(&format!("{name}: {}: {}\n", r.place, r.reason));
            }
            let reason_path = rejected_dir.join(format!("{}.reason", Self::file_label(&target)));
            std::fs::write(&reason_path, reason).map_err(|e| self.io_err(&reason_path, e))?;
            if f.good == 0 {
                // Nothing usable: the file itself is the quarantine.
                std::fs::rename(&f.path, &target).map_err(|e| self.io_err(&f.path, e))?;
                return Ok(());
            }
            let mut raw = Vec::new();
            for r in &f.rejects {
                if let Some(bytes) = &r.raw {
                    raw.extend_from_slice(bytes);
                    raw.push(b'\n');
                }
            }
            std::fs::write(&target, raw).map_err(|e| self.io_err(&target, e))?;
        }
        std::fs::create_dir_all(&processed_dir).map_err(|e| self.io_err(&processed_dir, e))?;
        let target = unique_path(&processed_dir, &name);
        std::fs::rename(&f.path, &target).map_err(|e| self.io_err(&f.path, e))?;
        Ok(())
    }
}

/// `dir/name`, or `dir/name.<n>` when taken.
fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| dir.join(format!("{name}.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

enum JsonFileError {
    Io(std::io::Error),
    Incomplete,
    TooLarge(u64),
    Invalid(String),
    Unreadable(ReadError),
}

impl JsonFileError {
    fn into_read_error(self) -> ReadError {
        match self {
            JsonFileError::TooLarge(n) => ReadError::Json(format!(
                "file is {n} bytes, over the {MAX_JSON_FILE_BYTES}-byte limit for .json (use .jsonl)"
            )),
            JsonFileError::Incomplete => ReadError::Json("file ends before the JSON does".into()),
            JsonFileError::Invalid(m) => ReadError::Json(m),
            JsonFileError::Io(e) => ReadError::Json(e.to_string()),
            JsonFileError::Unreadable(e) => e,
        }
    }
}

type RawRecord = Result<Box<serde_json::value::RawValue>, ReadError>;

/// A `.json` file: one object, or an array whose elements are records; with the mark its
/// bytes that are not UTF-8 were decoded as (each element is checked field by field).
fn read_json_file(
    path: &Path,
    len: u64,
) -> Result<(Vec<RawRecord>, Option<InvalidMark>), JsonFileError> {
    if len > MAX_JSON_FILE_BYTES {
        return Err(JsonFileError::TooLarge(len));
    }
    let bytes = std::fs::read(path).map_err(JsonFileError::Io)?;
    let decoded = decode::decode(&bytes).map_err(JsonFileError::Unreadable)?;
    let text = decoded.text.trim_start_matches('\u{feff}');
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Ok((Vec::new(), None));
    }
    let items = if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<Box<serde_json::value::RawValue>>>(trimmed)
            .map(|items| items.into_iter().map(Ok).collect())
    } else {
        serde_json::from_str::<Box<serde_json::value::RawValue>>(trimmed).map(|v| vec![Ok(v)])
    };
    match items {
        Ok(items) => Ok((items, decoded.mark)),
        Err(e) if e.is_eof() => Err(JsonFileError::Incomplete),
        Err(e) => Err(JsonFileError::Invalid(e.to_string())),
    }
}

/// Read one line of at most `MAX_RECORD_BYTES` (+1 to detect overflow); a longer line is
/// consumed to its end and reported as too large without holding it in memory.
fn read_bounded_line(
    reader: &mut BufReader<File>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    buf.clear();
    let mut total = 0usize;
    let mut any = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(any.then_some(total));
        }
        any = true;
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        total += chunk.len();
        if buf.len() <= MAX_RECORD_BYTES {
            let room = MAX_RECORD_BYTES + 1 - buf.len();
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        let consumed = done.unwrap_or(available.len());
        reader.consume(consumed);
        if done.is_some() {
            return Ok(Some(total));
        }
    }
}

/// Serialise with object keys sorted at every level, for a stable hash.
fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                canonical_json(&map[*k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// The stable id of a spool record.
pub fn spool_lead_id(record: &Value) -> String {
    content_lead_id("spool", record)
}

/// `<prefix>:<hash of the record's canonical JSON>`: the same record read twice (a file
/// moved back, a POST sent again) is the same lead.
pub fn content_lead_id(prefix: &str, record: &Value) -> String {
    let mut bytes = Vec::new();
    canonical_json(record, &mut bytes);
    let digest = Sha256::digest(&bytes);
    format!("{prefix}:{}", hex::encode(&digest[..16]))
}

/// The lead in a decoded record, under its spool id.
fn to_lead(record: DecodedRecord) -> Result<Lead, ReadError> {
    record.read_lead(spool_lead_id(&record.value))
}

impl OpenFile {
    /// Read up to `max` more records into `batch`; `true` when the file is exhausted.
    fn read_into(
        &mut self,
        source: &str,
        batch: &mut SourceBatch,
        max: usize,
    ) -> std::io::Result<bool> {
        let label = SpoolSource::file_label(&self.path);
        let mut line_buf = Vec::new();
        while batch.leads.len() + batch.quarantined.len() < max {
            let (place, result, raw) = match &mut self.records {
                Records::Lines { reader, line } => {
                    let Some(len) = read_bounded_line(reader, &mut line_buf)? else {
                        return Ok(true);
                    };
                    *line += 1;
                    let mut slice = &line_buf[..];
                    if slice.last() == Some(&b'\r') {
                        slice = &slice[..slice.len() - 1];
                    }
                    if slice.iter().all(|b| b.is_ascii_whitespace()) && len <= MAX_RECORD_BYTES {
                        continue;
                    }
                    let place = format!("line {line}");
                    if len > MAX_RECORD_BYTES {
                        (place, Err(ReadError::TooLarge(len)), None)
                    } else {
                        (
                            place,
                            parse_record(slice).and_then(to_lead),
                            Some(slice.to_vec()),
                        )
                    }
                }
                Records::Elements { items, index, mark } => {
                    let Some(item) = items.next() else {
                        return Ok(true);
                    };
                    *index += 1;
                    let place = format!("element {index}");
                    match item {
                        Ok(raw) => {
                            let text = raw.get();
                            let lead = parse_record_text(text, *mark).and_then(to_lead);
                            let shown = decode::unmark(text, *mark).as_bytes().to_vec();
                            (place, lead, Some(shown))
                        }
                        Err(e) => (place, Err(e), None),
                    }
                }
            };
            match result {
                Ok(lead) => {
                    if !lead.warnings.is_empty() {
                        tracing::warn!(
                            source = source,
                            lead = %lead.id,
                            file = %label,
                            at = %place,
                            warnings = ?lead.warnings,
                            "lead accepted with tolerated problems"
                        );
                    }
                    self.good += 1;
                    batch.leads.push(lead);
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::warn!(source = source, file = %label, at = %place, reason = %reason, "record quarantined");
                    batch.quarantined.push(QuarantinedRecord {
                        origin: format!("{source}:{label}:{place}"),
                        reason: reason.clone(),
                    });
                    // Oversized records are not copied to rejected/: their size is the problem.
                    let raw = raw.filter(|r| r.len() <= MAX_RECORD_BYTES);
                    self.rejects.push(Reject { place, reason, raw });
                }
            }
        }
        Ok(false)
    }
}

#[async_trait]
impl Source for SpoolSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn next_batch(
        &mut self,
        _cursor: Option<&str>,
        max: usize,
    ) -> Result<Option<SourceBatch>, SourceError> {
        let max = max.max(1);
        if self.current.is_none() && self.queue.is_empty() {
            self.scan()?;
        }
        let mut batch = SourceBatch::default();
        loop {
            if self.current.is_none() {
                match self.open_next()? {
                    Some(f) => self.current = Some(f),
                    None => break,
                }
            }
            let Some(file) = self.current.as_mut() else {
                break;
            };
            let name = self.name.clone();
            let done = match file.read_into(&name, &mut batch, max) {
                Ok(done) => done,
                Err(e) => {
                    let path = file.path.clone();
                    self.current = None;
                    return Err(self.io_err(&path, e));
                }
            };
            if done {
                if let Some(f) = self.current.take() {
                    let key = f.path.display().to_string();
                    batch.acks.push(key.clone());
                    self.finished.insert(
                        key,
                        FinishedFile {
                            path: f.path,
                            fingerprint: f.fingerprint,
                            good: f.good,
                            rejects: f.rejects,
                        },
                    );
                }
            }
            if batch.leads.len() + batch.quarantined.len() >= max {
                break;
            }
        }
        if batch.leads.is_empty() && batch.quarantined.is_empty() && batch.acks.is_empty() {
            return Ok(None);
        }
        Ok(Some(batch))
    }

    async fn committed(&mut self, batch: &SourceBatch) -> Result<(), SourceError> {
        for ack in &batch.acks {
            if let Some(f) = self.finished.remove(ack) {
                self.write_out(f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(src: &mut SpoolSource, max: usize) -> (Vec<Lead>, Vec<QuarantinedRecord>) {
        let (mut leads, mut q) = (Vec::new(), Vec::new());
        while let Some(b) = src.next_batch(None, max).await.unwrap() {
            src.committed(&b).await.unwrap();
            leads.extend(b.leads);
            q.extend(b.quarantined);
        }
        (leads, q)
    }

    #[tokio::test]
    async fn reads_json_jsonl_moves_and_quarantines() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("a.jsonl"),
            "{\"LeadSource\":\"SPZA\"}\r\n\n{oops\n{\"ActionCode\":\"INS\"}\n",
        )
        .unwrap();
        std::fs::write(d.join("b.json"), "\u{feff}[{\"OfferTitle\":\"x\"}, 3]").unwrap();
        std::fs::write(d.join("c.json"), "{\"UserDetails\": {").unwrap();
        std::fs::write(d.join(".hidden.jsonl"), "{\"LeadSource\":\"SPZA\"}\n").unwrap();
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        let mut src = SpoolSource::new(
            "inbox".into(),
            d.to_path_buf(),
            AfterRead::Move,
            Duration::ZERO,
        );
        let (leads, q) = drain(&mut src, 2).await;
        assert_eq!(leads.len(), 3);
        let origins: Vec<_> = q.iter().map(|r| r.origin.as_str()).collect();
        assert!(origins.contains(&"inbox:a.jsonl:line 3"), "{origins:?}");
        assert!(origins.contains(&"inbox:b.json:element 2"), "{origins:?}");
        assert!(origins.contains(&"inbox:c.json:element 1"), "{origins:?}");
        assert!(d.join("processed/a.jsonl").exists());
        assert!(d.join("processed/b.json").exists());
        assert!(
            d.join("rejected/c.json").exists(),
            "wholly bad file moves to rejected/"
        );
        let reason = std::fs::read_to_string(d.join("rejected/a.jsonl.reason")).unwrap();
        assert!(
            reason.starts_with("a.jsonl: line 3: not valid JSON"),
            "{reason}"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("rejected/a.jsonl")).unwrap(),
            "{oops\n"
        );
        assert!(d.join(".hidden.jsonl").exists() && d.join("notes.txt").exists());
        // Nothing left: a new pull finds nothing.
        assert!(src.next_batch(None, 10).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn unfinished_young_files_wait_and_ids_are_content_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("w.jsonl"), "{\"LeadSource\":\"SPZA\"}\n{\"LeadSo").unwrap();
        let mut src = SpoolSource::new(
            "s".into(),
            d.to_path_buf(),
            AfterRead::Keep,
            Duration::from_secs(60),
        );
        assert!(src.next_batch(None, 10).await.unwrap().is_none());
        let mut src =
            SpoolSource::new("s".into(), d.to_path_buf(), AfterRead::Keep, Duration::ZERO);
        let (leads, q) = drain(&mut src, 10).await;
        assert_eq!((leads.len(), q.len()), (1, 1));
        let a = spool_lead_id(&serde_json::json!({"b": 1, "a": {"y": 2, "x": 1}}));
        let b = spool_lead_id(&serde_json::json!({"a": {"x": 1, "y": 2}, "b": 1}));
        assert_eq!(a, b);
        assert_eq!(
            leads[0].id,
            spool_lead_id(&serde_json::json!({"LeadSource": "SPZA"}))
        );
        // Keep mode: unchanged files are not read again in the same process.
        assert!(src.next_batch(None, 10).await.unwrap().is_none());
        assert!(d.join("w.jsonl").exists());
    }

    #[tokio::test]
    async fn latin1_identity_is_quarantined_and_latin1_description_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut jsonl = Vec::new();
        jsonl.extend_from_slice(b"{\"UserDetails\":{\"Email\":\"good@example.com\"}}\n");
        jsonl.extend_from_slice(b"{\"UserDetails\":{\"Email\":\"jos\xe9@example.com\"}}\n");
        jsonl.extend_from_slice(
            b"{\"UserDetails\":{\"Email\":\"d@example.com\"},\"Description\":\"caf\xe9\"}\n",
        );
        std::fs::write(d.join("a.jsonl"), jsonl).unwrap();
        std::fs::write(
            d.join("b.json"),
            b"[{\"CustomerInfo\":\"{\\\"LastName\\\":\\\"M\xfcller\\\"}\"},{\"LeadSource\":\"SPZA\"}]",
        )
        .unwrap();
        let mut src =
            SpoolSource::new("s".into(), d.to_path_buf(), AfterRead::Move, Duration::ZERO);
        let (leads, q) = drain(&mut src, 10).await;
        let reasons: Vec<_> = q
            .iter()
            .map(|r| format!("{} {}", r.origin, r.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                "s:a.jsonl:line 2 UserDetails.Email holds bytes that are not UTF-8",
                "s:b.json:element 1 CustomerInfo.LastName holds bytes that are not UTF-8",
            ]
        );
        assert_eq!(leads.len(), 3, "the good records and the description case");
        let described = leads.iter().find(|l| l.description.is_some()).unwrap();
        assert_eq!(
            described.description.as_ref().unwrap().expose(),
            "caf\u{FFFD}"
        );
        assert!(described
            .warnings
            .contains(&"Description held bytes that are not UTF-8; kept with U+FFFD".to_string()));
        // The quarantined line keeps its original bytes in rejected/.
        assert_eq!(
            std::fs::read(d.join("rejected/a.jsonl")).unwrap(),
            b"{\"UserDetails\":{\"Email\":\"jos\xe9@example.com\"}}\n"
        );
    }

    #[tokio::test]
    async fn oversized_line_is_quarantined_without_losing_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut text = String::from("{\"LeadSource\":\"SPZA\"}\n{\"Description\":\"");
        text.push_str(&"A".repeat(MAX_RECORD_BYTES + 10));
        text.push_str("\"}\n{\"ActionCode\":\"PLT\"}\n");
        std::fs::write(d.join("big.jsonl"), text).unwrap();
        let mut src =
            SpoolSource::new("s".into(), d.to_path_buf(), AfterRead::Move, Duration::ZERO);
        let (leads, q) = drain(&mut src, 100).await;
        assert_eq!(leads.len(), 2);
        assert_eq!(q.len(), 1);
        assert!(
            q[0].reason.contains("over the 1048576-byte limit"),
            "{}",
            q[0].reason
        );
    }
}
