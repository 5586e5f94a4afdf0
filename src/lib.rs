//! The leadsync library: the modules the `leadsync` binary is built from, exposed so that
//! tests and benches can reach them. `main.rs` only parses the command line and calls
//! [`commands::main`]; the commands build what they need through [`wiring`].

pub mod admin;
pub mod alert_channel;
pub mod alerts;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod identity;
pub mod inbox;
pub mod ledger;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod sources;
pub mod telemetry;
pub mod wiring;
