//! Stateful fakes of the services leadsync writes to, each following the "faithful fake"
//! checklist of `spec/crm-apis.md`: they keep records, enforce the rules the real service
//! enforces (lengths, required fields, keys), and can be told to misbehave (throttling,
//! token expiry, server errors, latency) so tests and benchmarks see the real failure
//! shapes. Each listens on 127.0.0.1 on a free port.

pub mod azure_table_faults;
pub mod chat_webhook;
pub mod dataverse;
pub mod https_receiver;
pub mod hubspot;
pub mod marketo;
pub mod salesforce;
pub mod smtp;

/// Announce a skipped test where the person running `cargo test` sees it: written straight
/// to the process's stderr, past the test harness's output capture, which would otherwise
/// hide the message of a test that then passes. Every line starts with `SKIPPED`, so a run's
/// skips can be counted with `grep -c '^SKIPPED'`.
pub fn announce_skip(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {message}");
}
