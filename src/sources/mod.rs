//! Sources: where staged marketplace leads are read from.
//!
//! A source lists what is new since its cursor and turns each record into a [`Lead`] or a
//! [`QuarantinedRecord`] with a reason. It knows nothing of targets; the pipeline stages what
//! it returns and then calls [`Source::committed`], so that a source moves its own markers
//! (files, cursors) only once the ledger holds the leads. Batches are bounded, so a large
//! backlog never sits in memory at once.

#[cfg(feature = "azure-table")]
pub mod azure_table;
pub mod spool;

use async_trait::async_trait;
use leadsync_core::Lead;

use leadsync_core::QuarantinedRecord;

/// One bounded batch from a source.
#[derive(Debug, Default)]
pub struct SourceBatch {
    pub leads: Vec<Lead>,
    pub quarantined: Vec<QuarantinedRecord>,
    /// The cursor to store with this batch, if the source keeps one in the ledger.
    pub cursor: Option<String>,
    /// Opaque markers the source acts on in [`Source::committed`].
    pub acks: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: {message}")]
    Unavailable {
        source_name: String,
        message: String,
    },
    #[error("source {source_name}: I/O error on {path}: {error}")]
    Io {
        source_name: String,
        path: String,
        error: std::io::Error,
    },
}

#[async_trait]
pub trait Source: Send {
    fn name(&self) -> &str;

    /// The next batch of at most `max` records after `cursor`, or `None` when this pull has
    /// caught up. The next call after `None` starts a new pull.
    async fn next_batch(
        &mut self,
        cursor: Option<&str>,
        max: usize,
    ) -> Result<Option<SourceBatch>, SourceError>;

    /// The ledger committed `batch`: move markers past it.
    async fn committed(&mut self, batch: &SourceBatch) -> Result<(), SourceError>;

    /// `check --connect`: verify the source can be reached and read; returns what was
    /// verified, one line each, safe to print.
    async fn check_connect(&mut self) -> Result<Vec<String>, SourceError> {
        Ok(Vec::new())
    }
}
