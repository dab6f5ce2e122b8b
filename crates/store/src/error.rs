use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("duckdb: {0}")]
    DuckDb(#[from] ::duckdb::Error),
    #[error("store i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("migration {version} failed: {source}")]
    Migration {
        version: u32,
        source: ::duckdb::Error,
    },
    #[error("query was interrupted after {0:?}")]
    Timeout(std::time::Duration),
    /// An error ClickHouse answered (`code` is its error code when it gave one), or a
    /// request that did not get an answer (`code` is `None`).
    #[error("clickhouse: {message}")]
    ClickHouse {
        code: Option<u32>,
        message: String,
        transient: bool,
    },
    /// Transient failures that outlasted every retry.
    #[error("clickhouse unavailable after {attempts} attempts: {message}")]
    Unavailable { attempts: u32, message: String },
    /// The store cannot work again until the process restarts ([`crate::Store::failure`]).
    #[error("the store failed and cannot be used until the process restarts: {0}")]
    Failed(String),
    /// What the store keeps was found inconsistent (a bug); the call can be retried.
    #[error("store inconsistency: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether trying again later can succeed (the server was away or overloaded), as
    /// opposed to a request that will fail the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::ClickHouse { transient, .. } => *transient,
            StoreError::Unavailable { .. } | StoreError::Timeout(_) => true,
            _ => false,
        }
    }
}
