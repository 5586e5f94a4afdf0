//! Log setup. JSON lines when stderr is not a terminal (journald, files, pipes), readable text
//! otherwise. Logs go to stderr so that a command's own output on stdout (`status --json`)
//! stays machine-readable.
//!
//! Personal data never reaches a log line: leads are logged by id, and `Pii`/`Secret` redact
//! themselves. The level the operator asks for applies to leadsync's own code; the libraries
//! underneath (HTTP, TLS, SQL) stay at `warn`, because at `trace` they would print
//! request headers and statements.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub use crate::config::LogFormat;

/// The filter for `level`: leadsync at that level, dependencies no chattier than `info`.
pub fn filter_for(level: &str) -> EnvFilter {
    // Directive targets match by prefix: `leadsync` covers every `leadsync_*` crate; the
    // libraries underneath stay at `warn`.
    EnvFilter::try_new(format!("warn,leadsync={level}")).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Install the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat, level: &str) {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter_for(level))
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    // Already installed (tests): keep the first.
    let _ = result;
}
