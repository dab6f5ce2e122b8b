//! The ClickHouse schema, as numbered migrations rendered for the server's version and
//! layout (one server, or a cluster).
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
//!
//! On a cluster (`clickhouse.cluster`), every table `t` is a `Replicated*` table `t_local`
//! on each shard, created `ON CLUSTER`, with its data in ZooKeeper at
//! `/clickhouse/tables/{shard}/<database>/t_local` (the servers' `shard` and `replica`
//! macros), plus a `Distributed` table `t` over them that every read and insert names.
//! Replicated tables drop a block inserted twice on every version, so there a replayed
//! batch is dropped at insert time even on 18.16.

use super::Version;

/// The first version with per-table block dedup for plain MergeTree tables and the
/// `insert_deduplication_token` setting.
pub(super) const DEDUP_TOKEN_SINCE: Version = Version(22, 2, 0);

/// Where the schema goes: one server, or every shard of a cluster.
#[derive(Debug, Clone, Copy)]
pub(super) enum Layout<'a> {
    Single,
    Cluster(&'a str),
}

/// A MergeTree-family table of the schema, rendered per [`Layout`].
struct Table {
    name: &'static str,
    columns: &'static str,
    /// `ReplacingMergeTree`, `SummingMergeTree`...; `Replicated` is prefixed on a cluster.
    engine: &'static str,
    /// The engine's own arguments, e.g. the version column.
    engine_args: &'static str,
    /// `PARTITION BY ... ORDER BY ...`.
    keys: &'static str,
    /// How a `Distributed` table spreads rows over shards: rows that must meet (the
    /// copies of one event, the versions of one person) hash alike.
    shard_by: &'static str,
    /// Whether `events`' insert dedup window applies (22.2 and later, one server).
    dedup_window: bool,
}

impl Table {
    fn create(&self, server: Version, layout: Layout<'_>) -> Vec<String> {
        let Table {
            name,
            columns,
            engine,
            engine_args,
            keys,
            shard_by,
            dedup_window,
        } = self;
        match layout {
            Layout::Single => {
                let settings = if *dedup_window && server >= DEDUP_TOKEN_SINCE {
                    "\nSETTINGS non_replicated_deduplication_window = 1000"
                } else {
                    ""
                };
                vec![format!(
                    "CREATE TABLE IF NOT EXISTS {{db}}.{name} (\n{columns}\n) \
                     ENGINE = {engine}({engine_args})\n{keys}{settings}"
                )]
            }
            Layout::Cluster(cluster) => {
                let args = if engine_args.is_empty() {
                    String::new()
                } else {
                    format!(", {engine_args}")
                };
                vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {{db}}.{name}_local ON CLUSTER `{cluster}` (\n{columns}\n) \
                         ENGINE = Replicated{engine}('/clickhouse/tables/{{shard}}/{{db_name}}/{name}_local', '{{replica}}'{args})\n{keys}"
                    ),
                    format!(
                        "CREATE TABLE IF NOT EXISTS {{db}}.{name} ON CLUSTER `{cluster}` AS {{db}}.{name}_local \
                         ENGINE = Distributed(`{cluster}`, {{db_name_literal}}, '{name}_local', {shard_by})"
                    ),
                ]
            }
        }
    }
}

/// The table [`ClickHouseStore`](super::ClickHouseStore) records applied migrations in.
pub(super) fn migrations_table(layout: Layout<'_>) -> Vec<String> {
    Table {
        name: "tally_migrations",
        columns: "    version    UInt32,\n    applied_at DateTime",
        engine: "MergeTree",
        engine_args: "",
        keys: "ORDER BY version",
        shard_by: "rand()",
        dedup_window: false,
    }
    .create(Version(0, 0, 0), layout)
}

/// `(version, statements)` in order. A statement's `{db}` is the quoted database name,
/// `{db_name}` the bare name (in a ZooKeeper path) and `{db_name_literal}` the name as a
/// string literal.
pub(super) fn migrations(server: Version, layout: Layout<'_>) -> Vec<(u32, Vec<String>)> {
    let tables = [
        // Events: one wide table, one partition per month, sorted for a project's time
        // range, then event name; the uuid last makes retried rows identical in the
        // sorting key, which is what ReplacingMergeTree collapses. On a cluster, a
        // visitor's events share a shard (and so do an event's copies).
        Table {
            name: "events",
            columns: "    project_id  String,
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
    lsn         UInt64",
            engine: "ReplacingMergeTree",
            engine_args: "",
            keys: "PARTITION BY toYYYYMM(toDateTime(intDiv(ts, 1000000)))
ORDER BY (project_id, ts, event, uuid)",
            shard_by: "cityHash64(project_id, visitor_id)",
            dedup_window: true,
        },
        traits_table("persons", "user_id"),
        traits_table("groups", "group_id"),
        // Memberships and identity links: one row per batch that saw them; reads
        // aggregate (min first_seen, max last_seen; the earliest link of a device wins).
        Table {
            name: "group_members",
            columns: "    project_id String,
    group_id   String,
    user_id    String,
    first_seen Int64,
    last_seen  Int64",
            engine: "MergeTree",
            engine_args: "",
            keys: "ORDER BY (project_id, group_id, user_id)",
            shard_by: "cityHash64(project_id, group_id)",
            dedup_window: false,
        },
        Table {
            name: "identities",
            columns: "    project_id String,
    device_id  String,
    user_id    String,
    linked_at  Int64",
            engine: "MergeTree",
            engine_args: "",
            keys: "ORDER BY (project_id, device_id)",
            shard_by: "cityHash64(project_id, device_id)",
            dedup_window: false,
        },
        // The queue position committed after each batch; the highest one counts.
        Table {
            name: "queue_offsets",
            columns: "    queue String,
    lsn   UInt64",
            engine: "ReplacingMergeTree",
            engine_args: "lsn",
            keys: "ORDER BY queue",
            shard_by: "rand()",
            dedup_window: false,
        },
    ];
    vec![
        (
            1,
            tables
                .iter()
                .flat_map(|t| t.create(server, layout))
                .collect(),
        ),
        (2, rollup(server, layout)),
    ]
}

/// People or accounts: one row per write with the traits merged so far; the row written
/// last (`written_at`, the writer's clock, strictly increasing per key) is the current
/// one. `updated_at` is the time of the latest call.
fn traits_table(name: &'static str, key: &'static str) -> Table {
    let (columns, keys, shard_by) = match key {
        "user_id" => (
            "    project_id String,
    user_id    String,
    traits     String,
    created_at UInt64,
    updated_at UInt64,
    written_at UInt64",
            "ORDER BY (project_id, user_id)",
            "cityHash64(project_id, user_id)",
        ),
        _ => (
            "    project_id String,
    group_id   String,
    traits     String,
    created_at UInt64,
    updated_at UInt64,
    written_at UInt64",
            "ORDER BY (project_id, group_id)",
            "cityHash64(project_id, group_id)",
        ),
    };
    Table {
        name,
        columns,
        engine: "ReplacingMergeTree",
        engine_args: "written_at",
        keys,
        shard_by,
        dedup_window: false,
    }
}

/// The rollup of the hottest aggregates: events and page views per project, UTC hour,
/// event name and page, kept by a materialized view on `events` (sums, so a row of
/// `events_hourly` is one partial count; reads add them up). Analytics calls only (no
/// identify, group or alias), as every count of the query engine.
///
/// A view sees each inserted block: a block inserted twice is counted twice, unless the
/// insert itself is dropped as a duplicate. From 22.2 on, the rollup keeps block hashes
/// as `events` does and the store inserts with
/// `deduplicate_blocks_in_dependent_materialized_views`; on a cluster the replicated
/// tables drop the block on every version. Elsewhere the query engine reads the rollup
/// only when told to (`clickhouse.rollups`, see docs/scale-out.md). The last statement
/// fills the rollup from the events stored before it existed.
fn rollup(server: Version, layout: Layout<'_>) -> Vec<String> {
    // `page_key`/`page_null`: 18.16 has no Nullable columns in a sorting key.
    let select = "SELECT project_id, intDiv(ts, 3600000000) * 3600000000 AS hour, event, \
                  ifNull(page, '') AS page_key, toUInt8(isNull(page)) AS page_null, \
                  count() AS events, countIf(type = 'page' OR event = 'page_visit') AS pageviews";
    let group = "WHERE type NOT IN ('identify', 'group', 'alias') \
                 GROUP BY project_id, hour, event, page_key, page_null";
    let mut out = Table {
        name: "events_hourly",
        columns: "    project_id String,
    hour       Int64,
    event      String,
    page_key   String,
    page_null  UInt8,
    events     UInt64,
    pageviews  UInt64",
        engine: "SummingMergeTree",
        engine_args: "(events, pageviews)",
        keys: "PARTITION BY toYYYYMM(toDateTime(intDiv(hour, 1000000)))
ORDER BY (project_id, hour, event, page_key, page_null)",
        shard_by: "cityHash64(project_id, hour)",
        dedup_window: true,
    }
    .create(server, layout);
    // The view is fed where inserts land: each shard's local table on a cluster.
    out.push(match layout {
        Layout::Single => format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.events_hourly_mv TO {{db}}.events_hourly \
             AS {select} FROM {{db}}.events {group}"
        ),
        Layout::Cluster(cluster) => format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.events_hourly_mv ON CLUSTER `{cluster}` \
             TO {{db}}.events_hourly_local AS {select} FROM {{db}}.events_local {group}"
        ),
    });
    out.push(format!(
        "INSERT INTO {{db}}.events_hourly {select} FROM {{db}}.events FINAL {group}"
    ));
    out
}
