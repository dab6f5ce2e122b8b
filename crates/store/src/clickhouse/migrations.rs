//! The ClickHouse schema, as numbered migrations rendered for the server's version.
//!
//! One schema for every supported version (Debian's 18.16 up to current releases), so
//! the same rows and the same reads work on all of them. Where versions differ, the
//! difference is a setting, never a column:
//!
//! - Times are `Int64` microseconds since the Unix epoch, UTC, as in Tally's event model
//!   (`UInt64` where ReplacingMergeTree needs a version column, which 18.16 wants
//!   unsigned): `DateTime64` only exists from 20.1 on.
//! - From 22.2 on, `events` keeps the hashes of its last 1,000 inserted blocks
//!   (`non_replicated_deduplication_window`), and the store sends a deterministic
//!   `insert_deduplication_token` per batch, so a batch sent twice is stored once at
//!   insert time. On every version `events` is a `ReplacingMergeTree` whose sorting key
//!   ends with the event uuid, so duplicate rows also collapse in merges and reads with
//!   `FINAL` never see them.

use super::Version;

/// The first version with per-table block dedup for plain MergeTree tables and the
/// `insert_deduplication_token` setting.
pub(super) const DEDUP_TOKEN_SINCE: Version = Version(22, 2, 0);

/// `(version, statements)` in order. A statement's `{db}` is the database name.
pub(super) fn migrations(server: Version) -> Vec<(u32, Vec<String>)> {
    let events_settings = if server >= DEDUP_TOKEN_SINCE {
        "\nSETTINGS non_replicated_deduplication_window = 1000"
    } else {
        ""
    };
    vec![(
        1,
        vec![
            // Events: one wide table, one partition per month, sorted for a project's
            // time range, then event name; the uuid last makes retried rows identical
            // in the sorting key, which is what ReplacingMergeTree collapses.
            format!(
                "CREATE TABLE IF NOT EXISTS {{db}}.events (
    project_id  String,
    uuid        String,
    type        String,
    event       String,
    user_id     Nullable(String),
    device_id   Nullable(String),
    session_id  Nullable(String),
    group_id    Nullable(String),
    visitor_id  String,
    ts          Int64,
    received_at Int64,
    page        Nullable(String),
    properties  String,
    traits      String,
    context     String,
    lsn         UInt64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(ts, 1000000)))
ORDER BY (project_id, ts, event, uuid){events_settings}"
            ),
            traits_table("persons", "user_id"),
            traits_table("groups", "group_id"),
            // Memberships and identity links: one row per batch that saw them; reads aggregate
            // (min first_seen, max last_seen; the earliest link of a device wins).
            "CREATE TABLE IF NOT EXISTS {db}.group_members (
    project_id String,
    group_id   String,
    user_id    String,
    first_seen Int64,
    last_seen  Int64
) ENGINE = MergeTree()
ORDER BY (project_id, group_id, user_id)"
                .to_owned(),
            "CREATE TABLE IF NOT EXISTS {db}.identities (
    project_id String,
    device_id  String,
    user_id    String,
    linked_at  Int64
) ENGINE = MergeTree()
ORDER BY (project_id, device_id)"
                .to_owned(),
            // The queue position committed after each batch; the highest one counts.
            "CREATE TABLE IF NOT EXISTS {db}.queue_offsets (
    queue String,
    lsn   UInt64
) ENGINE = ReplacingMergeTree(lsn)
ORDER BY queue"
                .to_owned(),
        ],
    )]
}

/// People or accounts: one row per write with the traits merged so far; the row written
/// last (`written_at`, the writer's clock, strictly increasing per key) is the current
/// one. `updated_at` is the time of the latest call.
fn traits_table(table: &str, key: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {{db}}.{table} (
    project_id String,
    {key} String,
    traits     String,
    created_at UInt64,
    updated_at UInt64,
    written_at UInt64
) ENGINE = ReplacingMergeTree(written_at)
ORDER BY (project_id, {key})"
    )
}
