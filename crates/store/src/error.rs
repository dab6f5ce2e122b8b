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
}
