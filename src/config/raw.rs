//! The configuration files as written: serde structs that only know keys and TOML types.
//!
//! Every struct denies unknown keys, so a typo is an error naming the key. Values are kept
//! as written (durations, cron expressions and enum-like words as strings, numbers as `i64`)
//! so that `validate.rs` can check them all and report every mistake with its key; these
//! structs must not carry defaults or meaning beyond "this key exists with this type".
//!
//! Sections that need their own path-aware handling (`sources.*`, `mapping.fields`,
//! `qualify.*`) are
//! declared here as [`IgnoredAny`] so they count as known keys, and are read from the
//! merged value tree by `validate.rs`.

use serde::de::IgnoredAny;
use serde::Deserialize;

// ---------------------------------------------------------------------------------------
// leadsync.toml
// ---------------------------------------------------------------------------------------

/// The top level of `leadsync.toml`; each section is read on its own (the `IgnoredAny`
/// fields only make their keys known).
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MainTop {
    pub targets_dir: Option<String>,
    pub ledger: Option<IgnoredAny>,
    pub telemetry: Option<IgnoredAny>,
    pub admin: Option<IgnoredAny>,
    pub sources: Option<IgnoredAny>,
    pub alerts: Option<IgnoredAny>,
}

/// The top-level keys of `leadsync.toml`: the only `LEADSYNC_<KEY>...` environment
/// variables read as configuration (others, like `LEADSYNC_CONFIG`, belong to the CLI).
pub(crate) const MAIN_SECTIONS: &[&str] = &[
    "targets_dir",
    "ledger",
    "telemetry",
    "admin",
    "sources",
    "alerts",
];

/// `[alerts]`: when to tell the operator, and where (`[alerts.channels.<name>]`, each a
/// `kind` and that kind's connection keys, read as JSON by `validate.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    pub repeat_after: Option<String>,
    pub source_stale_after: Option<String>,
    pub check_every: Option<String>,
    pub channels: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLedger {
    pub path: Option<String>,
    /// A secret reference (the URL may carry a password), read from the tree by
    /// `validate.rs`.
    #[allow(dead_code)]
    pub url: Option<IgnoredAny>,
    pub schema: Option<String>,
    pub max_connections: Option<i64>,
    pub lease: Option<String>,
    pub retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub followup_sla: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
}

/// The source kinds, for the `kind` key of `[sources.<name>]`.
pub(crate) const SOURCE_KINDS: &[&str] = &["spool", "azure_table", "https_inbox"];

/// `[sources.<name>]`, by its `kind`. The tag is read by hand (not `#[serde(tag)]`, whose
/// buffering loses the key path of errors inside the table); each kind's struct repeats the
/// keys common to all sources so that an unknown key lists everything allowed there.
#[derive(Debug)]
pub(crate) enum RawSourceKind {
    Spool(RawSpool),
    AzureTable(RawAzureTable),
    HttpsInbox(RawHttpsInbox),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpool {
    // common to every source (`kind` was read before choosing this struct)
    #[allow(dead_code)]
    pub kind: Option<IgnoredAny>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    // spool
    pub dir: Option<String>,
    pub after: Option<String>,
    pub settle: Option<String>,
}

/// `[sources.<name>]` with `kind = "azure_table"`: the marketplace's staging table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAzureTable {
    #[allow(dead_code)]
    pub kind: Option<IgnoredAny>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    /// A secret reference, read from the tree by `validate.rs`.
    #[allow(dead_code)]
    pub connection: Option<IgnoredAny>,
    pub table: Option<String>,
    pub overlap: Option<String>,
    pub page_size: Option<i64>,
}

/// `[sources.<name>]` with `kind = "https_inbox"`: the marketplace POSTs leads to it. It is
/// not pulled, so it has no `schedule`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttpsInbox {
    #[allow(dead_code)]
    pub kind: Option<IgnoredAny>,
    pub listen: Option<String>,
    pub path: Option<String>,
    /// Secret references, read from the tree by `validate.rs`.
    #[allow(dead_code)]
    pub secret: Option<IgnoredAny>,
    #[allow(dead_code)]
    pub bearer_token: Option<IgnoredAny>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub plain_http: Option<bool>,
    pub allow_from: Option<Vec<String>>,
    pub max_body_bytes: Option<i64>,
    pub rate_limit: Option<i64>,
}

// ---------------------------------------------------------------------------------------
// targets/<name>.toml
// ---------------------------------------------------------------------------------------

/// The top level of a target file; each section is read on its own (the `IgnoredAny`
/// fields only make their keys known).
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetTop {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub enabled: Option<bool>,
    pub schedule: Option<String>,
    /// When to send the target's canary (a marked test lead), if ever.
    pub canary: Option<String>,
    /// Hold new leads until the end of this interval, so they go out together (a digest).
    pub digest: Option<String>,
    /// Kind-specific: validated later by the connector, kept as JSON.
    pub connection: Option<serde_json::Value>,
    /// Named values computed per lead: read from the tree by `validate.rs`.
    pub qualify: Option<IgnoredAny>,
    pub filter: Option<IgnoredAny>,
    pub mapping: Option<IgnoredAny>,
    pub limits: Option<IgnoredAny>,
    pub retry: Option<IgnoredAny>,
    pub idempotency: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFilter {
    pub actions: Option<Vec<String>>,
    pub origins: Option<Vec<String>>,
    pub offers: Option<Vec<String>>,
    pub test_leads: Option<String>,
    pub dnc: Option<String>,
    /// A condition of the `[qualify]` language (`"complete"`).
    pub when: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMapping {
    pub replace_defaults: Option<bool>,
    /// Read entry by entry (CRM field name -> rule) by `validate.rs`.
    #[allow(dead_code)]
    pub fields: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub batch_size: Option<i64>,
    /// An integer or `"adaptive"`: read by `validate.rs`.
    #[allow(dead_code)]
    pub concurrency: Option<IgnoredAny>,
    pub max_concurrency: Option<i64>,
    pub max_stalled: Option<i64>,
    pub max_age: Option<String>,
    pub lease: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub min_delay: Option<String>,
    pub max_delay: Option<String>,
    pub max_retry_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdempotency {
    pub scope: Option<String>,
    pub namespace: Option<String>,
}
