//! Log setup: where log lines go and in what form. Under systemd, when stderr is the journal
//! (`$JOURNAL_STREAM` names the device and inode of fd 2, as systemd.exec(5) documents), the
//! journal's native protocol (`tracing-journald`): each field its own journal field
//! (`LEADSYNC_LEAD`, `LEADSYNC_TARGET`, ...) and the level as `PRIORITY`, so
//! `journalctl -p err -u leadsync` works. Elsewhere JSON lines when stderr is not a terminal
//! (files, pipes), readable text on a terminal. If the journal's socket cannot be opened, JSON
//! lines on stderr, after one line that says so. An explicit `log_format` ("json", "text")
//! always wins. Logs go to stderr (or the journal) so that a command's own output on stdout
//! (`status --json`) stays machine-readable.
//!
//! Personal data never reaches a log line: leads are logged by id, and `Pii`/`Secret` redact
//! themselves. The level the operator asks for applies to leadsync's own code; the libraries
//! underneath (HTTP, TLS, SQL) stay at `warn`, because at `trace` they would print
//! request headers and statements.

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub use crate::config::LogFormat;

/// The prefix of leadsync's own fields in the journal (`LEADSYNC_LEAD=...`), keeping them
/// apart from the journal's standard fields (`TARGET` is the code's module there).
const JOURNAL_FIELD_PREFIX: &str = "LEADSYNC";

/// The filter for `level`: leadsync at that level, dependencies no chattier than `info`.
pub fn filter_for(level: &str) -> EnvFilter {
    // Directive targets match by prefix: `leadsync` covers every `leadsync_*` crate; the
    // libraries underneath stay at `warn`.
    EnvFilter::try_new(format!("warn,leadsync={level}")).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Journal,
    Json,
    Text,
}

fn choose_sink(format: LogFormat) -> Sink {
    match format {
        LogFormat::Json => Sink::Json,
        LogFormat::Text => Sink::Text,
        LogFormat::Auto if stderr_is_the_journal() => Sink::Journal,
        LogFormat::Auto if std::io::stderr().is_terminal() => Sink::Text,
        LogFormat::Auto => Sink::Json,
    }
}

/// Install the global subscriber. Safe to call once per process (a second call keeps the
/// first, as tests do).
pub fn init(format: LogFormat, level: &str) {
    match choose_sink(format) {
        Sink::Journal => match journal_layer() {
            Ok(journal) => {
                let _ = tracing_subscriber::registry()
                    .with(filter_for(level))
                    .with(journal)
                    .try_init();
            }
            Err(e) => {
                init_json(level);
                tracing::warn!(
                    error = %e,
                    "stderr is the journal but its socket cannot be opened; logging JSON lines to stderr"
                );
            }
        },
        Sink::Json => init_json(level),
        Sink::Text => init_text(level),
    }
}

fn init_text(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter_for(level))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn init_json(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter_for(level))
        .with_writer(std::io::stderr)
        .with_target(false)
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .try_init();
}

fn journal_layer() -> std::io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?
        .with_syslog_identifier("leadsync".to_string())
        .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.to_string())))
}

/// systemd connects stderr to the journal and says so in `$JOURNAL_STREAM`; a process that
/// inherited the variable but whose stderr went elsewhere (a shell started from a service,
/// a redirect) must not take it at its word, hence the comparison with fd 2 itself.
fn stderr_is_the_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    stderr_device_and_inode()
        .is_some_and(|fd2| names_device_and_inode(&stream.to_string_lossy(), fd2))
}

/// `(st_dev, st_ino)` of fd 2, from fstat(2) on a duplicate of it.
fn stderr_device_and_inode() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// `$JOURNAL_STREAM` (`<device>:<inode>`, both decimal) names `(device, inode)`.
fn names_device_and_inode(journal_stream: &str, (device, inode): (u64, u64)) -> bool {
    let Some((d, i)) = journal_stream.split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(device) && i.parse::<u64>().ok() == Some(inode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode_in_decimal() {
        assert!(names_device_and_inode("8:123456", (8, 123456)));
        assert!(names_device_and_inode("0:0", (0, 0)));
        assert!(!names_device_and_inode("8:123457", (8, 123456)));
        assert!(!names_device_and_inode("9:123456", (8, 123456)));
        for malformed in [
            "",
            "8",
            "8:",
            ":123456",
            "8:123456:1",
            " 8:123456",
            "0x8:123456",
        ] {
            assert!(
                !names_device_and_inode(malformed, (8, 123456)),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn fd2_is_read_with_fstat() {
        use std::os::unix::fs::MetadataExt;
        let (dev, ino) = stderr_device_and_inode().expect("fd 2 is open under the test harness");
        let proc_view = std::fs::metadata("/proc/self/fd/2").expect("fd 2 through /proc");
        assert_eq!((dev, ino), (proc_view.dev(), proc_view.ino()));
        assert!(names_device_and_inode(&format!("{dev}:{ino}"), (dev, ino)));
    }

    #[test]
    fn an_explicit_format_wins_over_the_journal() {
        assert_eq!(choose_sink(LogFormat::Json), Sink::Json);
        assert_eq!(choose_sink(LogFormat::Text), Sink::Text);
    }
}
