//! Embedded, versioned schema migrations. Each file runs once, in its own transaction,
//! and is recorded in `schema_migrations`; a database newer than this binary is refused.

use ::duckdb::Connection;

use crate::StoreError;

const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("migrations/001_init.sql")),
    (2, include_str!("migrations/002_identities.sql")),
    (3, include_str!("migrations/003_visits.sql")),
];

pub(super) fn run(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        )",
    )?;
    let current: Option<u32> =
        conn.query_row("SELECT max(version) FROM schema_migrations", [], |row| {
            row.get(0)
        })?;
    let current = current.unwrap_or(0);
    let newest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > newest {
        return Err(StoreError::Migration {
            version: current,
            source: ::duckdb::Error::InvalidParameterName(format!(
                "database schema version {current} is newer than this tally ({newest})"
            )),
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let apply = || -> Result<(), ::duckdb::Error> {
            conn.execute_batch("BEGIN TRANSACTION")?;
            conn.execute_batch(sql)?;
            conn.execute(
                "INSERT INTO schema_migrations (version) VALUES (?)",
                [version],
            )?;
            conn.execute_batch("COMMIT")
        };
        if let Err(source) = apply() {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(StoreError::Migration {
                version: *version,
                source,
            });
        }
        tracing::info!(version, "applied store migration");
    }
    Ok(())
}
