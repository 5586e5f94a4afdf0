//! leadsync-azure-table: Azure Table Storage for leadsync.
//!
//! A Table REST client on reqwest (no maintained SDK crate exists): connection strings
//! ([`conn`]), Shared Key / Shared Key Lite signing and service SAS ([`auth`]), paged
//! queries, writes and entity group transactions ([`client`]), the service's errors and
//! their failure classes ([`error`]), and the data-model limits ([`entity`]). On top of it,
//! the `azure_table` target ([`AzureTableConnector`]); the binary's staging-table source
//! uses the same client through [`client_from_connection_string`].

pub mod auth;
pub mod client;
pub mod conn;
pub mod entity;
pub mod error;
mod target;

pub use auth::{SharedKeyScheme, TableSas};
pub use client::{BatchOp, BatchOutcome, Continuation, Page, Query, TableClient};
pub use conn::{Account, AccountKey, ConnError, Credential};
pub use entity::{check_property_name, sanitize_key, Oversize};
pub use error::TableError;
pub use target::{
    build, check_table_name, client_from_connection_string, default_mapping, AzureTableConnector,
    AzureTableError, AzureTableSettings, PartitionBy, MAX_BATCH,
};
