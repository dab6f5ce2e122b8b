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
    let mut list = vec![(
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
    )];
    list.push((2, rollup(server)));
    list
}

/// The rollup of the hottest aggregates: events and page views per project, UTC hour,
/// event name and page, kept by a materialized view on `events` (sums, so a row of
/// `events_hourly` is one partial count; reads add them up). Analytics calls only (no
/// identify, group or alias), as every count of the query engine.
///
/// A view sees each inserted block: a block inserted twice is counted twice, unless the
/// insert itself is deduplicated. From 22.2 on, the rollup keeps block hashes as
/// `events` does and the store inserts with
/// `deduplicate_blocks_in_dependent_materialized_views`, so a replayed batch is not
/// counted again; on older servers the query engine reads the rollup only when told to
/// (`clickhouse.rollups`, see docs/scale-out.md). The last statement fills the rollup
/// from the events stored before it existed.
fn rollup(server: Version) -> Vec<String> {
    let settings = if server >= DEDUP_TOKEN_SINCE {
        "\nSETTINGS non_replicated_deduplication_window = 1000"
    } else {
        ""
    };
    // `page_key`/`page_null`: 18.16 has no Nullable columns in a sorting key.
    let select = "SELECT project_id, intDiv(ts, 3600000000) * 3600000000 AS hour, event, \
                  ifNull(page, '') AS page_key, toUInt8(isNull(page)) AS page_null, \
                  count() AS events, countIf(type = 'page' OR event = 'page_visit') AS pageviews";
    let group = "WHERE type NOT IN ('identify', 'group', 'alias') \
                 GROUP BY project_id, hour, event, page_key, page_null";
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {{db}}.events_hourly (
    project_id String,
    hour       Int64,
    event      String,
    page_key   String,
    page_null  UInt8,
    events     UInt64,
    pageviews  UInt64
) ENGINE = SummingMergeTree((events, pageviews))
PARTITION BY toYYYYMM(toDateTime(intDiv(hour, 1000000)))
ORDER BY (project_id, hour, event, page_key, page_null){settings}"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.events_hourly_mv TO {{db}}.events_hourly \
             AS {select} FROM {{db}}.events {group}"
        ),
        format!("INSERT INTO {{db}}.events_hourly {select} FROM {{db}}.events FINAL {group}"),
    ]
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
