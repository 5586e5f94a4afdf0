//! The alert channels' constructor, in one leaf place: the configuration check builds each
//! `[alerts.channels.<name>]` once to name a mistake's key (and `check --connect` asks each
//! whether it would reach anyone), and the alerter builds them to send. Channels are the
//! notification targets' senders (`leadsync-notify`); a build without the `notify` feature
//! has none.

use std::path::Path;

#[cfg(feature = "notify")]
pub type Channel = leadsync_notify::Channel;

/// A build without notification senders: no channel can be made.
#[cfg(not(feature = "notify"))]
pub enum Channel {}

/// The channel of `kind` (`email`, `teams`, `slack`) from its connection keys; the error is
/// `(key, message)`, the key as `connection.<key>`.
#[cfg(feature = "notify")]
pub fn open(
    kind: &str,
    connection: &serde_json::Value,
    base_dir: &Path,
) -> Result<Channel, (String, String)> {
    leadsync_notify::Channel::try_new(kind, connection, base_dir).map_err(|e| (e.key, e.message))
}

#[cfg(not(feature = "notify"))]
pub fn open(_: &str, _: &serde_json::Value, _: &Path) -> Result<Channel, (String, String)> {
    Err((
        "kind".into(),
        "this build has no notification channels (Cargo feature `notify`)".into(),
    ))
}

/// `check --connect`: an SMTP session with its login, or the webhook's host answering;
/// nothing is sent. The line says what was verified; the error, what failed (no secret).
#[cfg(feature = "notify")]
pub async fn check_connection(channel: &Channel) -> Result<String, String> {
    channel.check_connection().await
}

#[cfg(not(feature = "notify"))]
pub async fn check_connection(channel: &Channel) -> Result<String, String> {
    match *channel {}
}
