//! Why a record could not be read as a lead: the one error type of the readers
//! ([`crate::lead`]) and of byte decoding ([`crate::decode`]), kept apart from both so that
//! each can name it without importing the other. The messages never carry a value.

/// The largest record a reader accepts, in bytes (the table source's entity limit).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Why a record could not become a lead. Messages carry no personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("expected a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("record is {0} bytes, over the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("record carries no lead: no customer details, LeadSource, ActionCode or offer")]
    Empty,
    /// An identity field (see [`crate::decode`]) held bytes that are not UTF-8; `field` names
    /// it (`UserDetails.Email`), never its value.
    #[error("{field} holds bytes that are not UTF-8")]
    NotUtf8 { field: String },
}
