use tally_store::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QueryError {
    /// The request is wrong; `field` is a path into it such as `filters[0][1]`.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A valid query this store cannot answer yet (ClickHouse supports part of `stats`, `trends`, `funnel`, `retention`, `lifecycle`, `stickiness`, `paths`, `realtime` and `events`).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QueryError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        QueryError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}
