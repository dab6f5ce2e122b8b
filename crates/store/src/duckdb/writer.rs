//! One batch from the queue becomes rows, in one DuckDB transaction.

use std::collections::HashMap;

use ::duckdb::types::{TimeUnit, Value as DuckValue};
use ::duckdb::{params, Connection};
use serde_json::value::RawValue;
use serde_json::Value;
use tally_model::{EventType, StoredBatch};

use super::open_visits::{OpenVisits, Seen};
use crate::derived::{Derived, Key, Traits};
use crate::{InsertStats, Lsn, StoreError, VisitsPath};

/// Devices, per project, whose link is already in `identities`. Looked up by `&str` for
/// every signed-in event, so a known link costs no allocation.
#[derive(Default)]
pub(super) struct LinkCache {
    known: HashMap<String, std::collections::HashSet<String>>,
    len: usize,
}

impl LinkCache {
    const MAX: usize = 1_000_000;

    fn contains(&self, project: &str, device: &str) -> bool {
        self.known.get(project).is_some_and(|d| d.contains(device))
    }

    fn remember(&mut self, links: HashMap<String, HashMap<String, (String, i64)>>) {
        if self.len > Self::MAX {
            self.known.clear();
            self.len = 0;
        }
        for (project, devices) in links {
            let known = self.known.entry(project).or_default();
            for device in devices.into_keys() {
                if known.insert(device) {
                    self.len += 1;
                }
            }
        }
    }
}

pub(super) fn insert(
    conn: &mut Connection,
    batches: &[StoredBatch<'_>],
    upto: Lsn,
    linked: &mut LinkCache,
    open: &mut OpenVisits,
) -> Result<InsertStats, StoreError> {
    let mut derived = Derived::default();
    let mut stats = InsertStats::default();
    let (mut earliest, mut sessions) = (i64::MAX, false);
    let mut seen = Vec::new();

    let tx = conn.transaction()?;
    {
        let mut app = tx.appender("events")?;
        for batch in batches {
            let project: &str = &batch.project_id;
            let mut uuid = ::uuid::Uuid::encode_buffer();
            for e in &batch.events {
                let page = e.stored_page();
                app.append_row(params![
                    project,
                    &*e.uuid.hyphenated().encode_lower(&mut uuid),
                    e.kind.as_str(),
                    &*e.event,
                    e.user_id.as_deref(),
                    e.device_id.as_deref(),
                    e.session_id.as_deref(),
                    e.group_id.as_deref(),
                    e.visitor_id(),
                    DuckValue::Timestamp(TimeUnit::Microsecond, e.timestamp),
                    DuckValue::Timestamp(TimeUnit::Microsecond, e.received_at),
                    page.as_deref(),
                    e.properties.map(RawValue::get),
                    e.traits.map(RawValue::get),
                    e.context.map(RawValue::get),
                    upto,
                ])?;
                stats.events += 1;
                if !matches!(
                    e.kind,
                    EventType::Identify | EventType::Group | EventType::Alias
                ) {
                    seen.push(Seen {
                        project,
                        session: e.session_id.as_deref(),
                        user: e.user_id.as_deref(),
                        device: e.device_id.as_deref(),
                        visitor: e.visitor_id(),
                        ts: e.timestamp,
                        received: e.received_at,
                        page,
                        pageview: e.kind == EventType::Page || &*e.event == "page_visit",
                    });
                }
                earliest = earliest.min(e.timestamp);
                sessions |= e.session_id.is_some();
                derived.add(project, e, |p, d| linked.contains(p, d));
            }
        }
        app.flush()?;
    }

    stats.identities = derived.projects();
    let (persons, groups, members) = (
        std::mem::take(&mut derived.persons),
        std::mem::take(&mut derived.groups),
        std::mem::take(&mut derived.members),
    );
    stats.persons = persons.len();
    staged_upsert(&tx, &PERSONS, traits_rows(persons))?;
    stats.groups = groups.len();
    staged_upsert(&tx, &GROUPS, traits_rows(groups))?;
    staged_upsert(
        &tx,
        &MEMBERS,
        members
            .into_iter()
            .map(|((project, group, user), (first, last))| {
                vec![
                    project.into(),
                    group.into(),
                    user.into(),
                    ts(first),
                    ts(last),
                ]
            }),
    )?;
    let links = staged_upsert(
        &tx,
        &LINKS,
        derived.links().map(|(project, device, user, at)| {
            vec![
                project.to_owned().into(),
                device.to_owned().into(),
                user.to_owned().into(),
                ts(at),
            ]
        }),
    )?;
    // Live traffic's visits are cut in memory; anything else re-derives them in SQL.
    open.ready(&tx)?;
    let appended = if links {
        None
    } else {
        match open.append(&tx, &seen) {
            Err(e @ StoreError::Internal(_)) => {
                open.distrust();
                return Err(e);
            }
            other => other?,
        }
    };
    stats.visits = if appended.is_some() {
        VisitsPath::Memory
    } else {
        VisitsPath::Sql
    };
    let mut changes = match appended {
        Some(changes) => changes,
        None => {
            super::visits::update(
                &tx,
                &super::visits::Stored {
                    lsn: upto,
                    earliest,
                    sessions,
                    links,
                },
            )?;
            open.reload_redone(&tx, sessions || links, &seen)?
        }
    };
    changes.linked(
        derived
            .links
            .iter()
            .flat_map(|(p, devices)| devices.keys().map(move |d| (p.as_str(), d.as_str()))),
    );
    let moved = tx
        .prepare_cached("UPDATE queue_offsets SET lsn = ? WHERE queue = 'wal'")?
        .execute([upto])?;
    if moved == 0 {
        tx.execute("INSERT INTO queue_offsets VALUES ('wal', ?)", [upto])?;
    }
    tx.commit()?;
    open.apply(changes);
    linked.remember(derived.links);
    Ok(stats)
}

/// A temporary staging table, and the statement that upserts its rows into their table.
///
/// Many rows are upserted with one statement: they are appended to the staging table,
/// then the upsert (an `INSERT ... SELECT ... ON CONFLICT`) moves them. A statement per
/// row costs tens of microseconds; a batch touching 20,000 memberships would spend a
/// second there. The staging tables are created once per connection, not in every batch
/// (`bench/src/bin/store_insert_bench.rs`: each statement costs DuckDB about a
/// millisecond of planning, and it plans even a prepared one again when it runs).
pub(super) struct Stage {
    table: &'static str,
    columns: &'static str,
    upsert: &'static str,
}

/// Traits merge: the later call's value wins per trait; an earlier call that arrives late
/// only fills gaps.
macro_rules! traits_stage {
    ($table:literal, $id:literal) => {
        Stage {
            table: concat!("stage_", $table),
            columns: "project_id VARCHAR, id VARCHAR, traits VARCHAR, created_at TIMESTAMP, updated_at TIMESTAMP",
            upsert: concat!(
                "INSERT INTO ", $table,
                " SELECT project_id, id, traits::JSON, created_at, updated_at FROM stage_", $table,
                " ON CONFLICT (project_id, ", $id, ") DO UPDATE SET
                     traits = CASE WHEN excluded.updated_at >= ", $table, ".updated_at
                         THEN json_merge_patch(", $table, ".traits, excluded.traits)
                         ELSE json_merge_patch(excluded.traits, ", $table, ".traits) END,
                     created_at = least(", $table, ".created_at, excluded.created_at),
                     updated_at = greatest(", $table, ".updated_at, excluded.updated_at)"
            ),
        }
    };
}

const PERSONS: Stage = traits_stage!("persons", "user_id");
const GROUPS: Stage = traits_stage!("groups", "group_id");
const MEMBERS: Stage = Stage {
    table: "stage_members",
    columns: "project_id VARCHAR, group_id VARCHAR, user_id VARCHAR, first_seen TIMESTAMP, last_seen TIMESTAMP",
    upsert: "INSERT INTO group_members SELECT * FROM stage_members
             ON CONFLICT (project_id, group_id, user_id) DO UPDATE SET
                 first_seen = least(group_members.first_seen, excluded.first_seen),
                 last_seen = greatest(group_members.last_seen, excluded.last_seen)",
};
const LINKS: Stage = Stage {
    table: "stage_links",
    columns: "project_id VARCHAR, device_id VARCHAR, user_id VARCHAR, linked_at TIMESTAMP",
    upsert: "INSERT INTO identities SELECT * FROM stage_links ON CONFLICT DO NOTHING",
};

/// Creates the staging tables on the writer's connection (they last as long as it).
pub(super) fn create_stages(conn: &Connection) -> Result<(), StoreError> {
    for Stage { table, columns, .. } in [&PERSONS, &GROUPS, &MEMBERS, &LINKS] {
        // Constants of this module, not input.
        conn.execute_batch(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS {table} ({columns})"
        ))?;
    }
    Ok(())
}

/// Whether there were rows to upsert.
fn staged_upsert(
    tx: &::duckdb::Transaction<'_>,
    stage: &Stage,
    rows: impl Iterator<Item = Vec<DuckValue>>,
) -> Result<bool, StoreError> {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(false);
    }
    tx.prepare_cached(&format!("DELETE FROM {}", stage.table))?
        .execute([])?;
    {
        let mut app = tx.appender(stage.table)?;
        for row in rows {
            app.append_row(::duckdb::appender_params_from_iter(row))?;
        }
        app.flush()?;
    }
    tx.prepare_cached(stage.upsert)?.execute([])?;
    Ok(true)
}

fn traits_rows(rows: HashMap<Key, Traits>) -> impl Iterator<Item = Vec<DuckValue>> {
    rows.into_iter().map(|((project, id), t)| {
        vec![
            project.into(),
            id.into(),
            Value::Object(t.traits).to_string().into(),
            ts(t.first),
            ts(t.last),
        ]
    })
}

/// A timestamp parameter from Unix micros.
pub(super) fn ts(micros: i64) -> DuckValue {
    DuckValue::Timestamp(TimeUnit::Microsecond, micros)
}
