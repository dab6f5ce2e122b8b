//! One batch from the queue becomes rows, in one DuckDB transaction.

use std::collections::HashMap;

use ::duckdb::types::{TimeUnit, Value as DuckValue};
use ::duckdb::{params, Connection};
use serde_json::{Map, Value};
use tally_model::{EventBatch, EventType};

use crate::{InsertStats, Lsn, StoreError};

/// The merged traits of one person or group within a batch.
struct Traits {
    traits: Map<String, Value>,
    first: i64,
    last: i64,
}

impl Traits {
    fn merge(&mut self, traits: &Map<String, Value>, at: i64) {
        // Later calls win per trait; an earlier call that arrives late only fills gaps.
        for (k, v) in traits {
            if at >= self.last || !self.traits.contains_key(k) {
                self.traits.insert(k.clone(), v.clone());
            }
        }
        self.first = self.first.min(at);
        self.last = self.last.max(at);
    }
}

type Key = (String, String);

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

    fn remember(&mut self, keys: impl IntoIterator<Item = Key>) {
        if self.len > Self::MAX {
            self.known.clear();
            self.len = 0;
        }
        for (project, device) in keys {
            if self.known.entry(project).or_default().insert(device) {
                self.len += 1;
            }
        }
    }
}

pub(super) fn insert(
    conn: &mut Connection,
    batches: &[EventBatch],
    upto: Lsn,
    linked: &mut LinkCache,
) -> Result<InsertStats, StoreError> {
    let mut persons: HashMap<Key, Traits> = HashMap::new();
    let mut groups: HashMap<Key, Traits> = HashMap::new();
    let mut members: HashMap<(String, String, String), (i64, i64)> = HashMap::new();
    // (project, device) -> (user, first time seen together); the earliest link wins.
    let mut links: HashMap<Key, (String, i64)> = HashMap::new();
    let mut stats = InsertStats::default();

    let tx = conn.transaction()?;
    {
        let mut app = tx.appender("events")?;
        for batch in batches {
            let project = &batch.project_id;
            for e in &batch.events {
                app.append_row(params![
                    project,
                    e.uuid.to_string(),
                    e.kind.as_str(),
                    e.event,
                    e.user_id,
                    e.device_id,
                    e.session_id,
                    e.group_id,
                    e.visitor_id(),
                    DuckValue::Timestamp(TimeUnit::Microsecond, e.timestamp),
                    DuckValue::Timestamp(TimeUnit::Microsecond, e.received_at),
                    e.stored_page(),
                    json_text(&e.properties),
                    json_text(&e.traits),
                    json_text(&e.context),
                    upto,
                ])?;
                stats.events += 1;
                if let Some((user, device)) = e.identity_link() {
                    if !linked.contains(project, device) {
                        let link = links
                            .entry((project.clone(), device.to_owned()))
                            .or_insert_with(|| (user.to_owned(), e.timestamp));
                        if e.timestamp < link.1 {
                            *link = (user.to_owned(), e.timestamp);
                        }
                    }
                }
                match (e.kind, &e.user_id, &e.group_id) {
                    (EventType::Identify, Some(user), _) => {
                        accumulate(&mut persons, project, user, &e.traits, e.timestamp)
                    }
                    (EventType::Group, user, Some(group)) => {
                        accumulate(&mut groups, project, group, &e.traits, e.timestamp);
                        if let Some(user) = user {
                            let key = (project.clone(), group.clone(), user.clone());
                            let seen = members.entry(key).or_insert((e.timestamp, e.timestamp));
                            seen.0 = seen.0.min(e.timestamp);
                            seen.1 = seen.1.max(e.timestamp);
                        }
                    }
                    _ => {}
                }
            }
        }
        app.flush()?;
    }

    stats.persons = persons.len();
    upsert_traits(&tx, "persons", "user_id", persons)?;
    stats.groups = groups.len();
    upsert_traits(&tx, "groups", "group_id", groups)?;
    staged_upsert(
        &tx,
        "stage_members",
        "project_id VARCHAR, group_id VARCHAR, user_id VARCHAR, first_seen TIMESTAMP, last_seen TIMESTAMP",
        "INSERT INTO group_members SELECT * FROM stage_members
         ON CONFLICT (project_id, group_id, user_id) DO UPDATE SET
             first_seen = least(group_members.first_seen, excluded.first_seen),
             last_seen = greatest(group_members.last_seen, excluded.last_seen)",
        members.into_iter().map(|((project, group, user), (first, last))| {
            vec![project.into(), group.into(), user.into(), ts(first), ts(last)]
        }),
    )?;
    staged_upsert(
        &tx,
        "stage_links",
        "project_id VARCHAR, device_id VARCHAR, user_id VARCHAR, linked_at TIMESTAMP",
        "INSERT INTO identities SELECT * FROM stage_links ON CONFLICT DO NOTHING",
        links.iter().map(|((project, device), (user, at))| {
            vec![
                project.clone().into(),
                device.clone().into(),
                user.clone().into(),
                ts(*at),
            ]
        }),
    )?;
    tx.execute(
        "INSERT INTO queue_offsets VALUES ('wal', ?)
         ON CONFLICT (queue) DO UPDATE SET lsn = excluded.lsn",
        [upto],
    )?;
    tx.commit()?;
    linked.remember(links.into_keys());
    Ok(stats)
}

/// Upserts many rows with one statement: the rows are appended to a temporary staging
/// table, then `upsert` (an `INSERT ... SELECT ... ON CONFLICT`) moves them. A statement
/// per row costs tens of microseconds each; a batch touching 20,000 memberships would
/// spend a second there.
fn staged_upsert(
    tx: &::duckdb::Transaction<'_>,
    stage: &str,
    columns: &str,
    upsert: &str,
    rows: impl Iterator<Item = Vec<DuckValue>>,
) -> Result<(), StoreError> {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    // `stage` and `columns` are constants of this module, not input.
    tx.execute_batch(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS {stage} ({columns}); DELETE FROM {stage};"
    ))?;
    {
        let mut app = tx.appender(stage)?;
        for row in rows {
            app.append_row(::duckdb::appender_params_from_iter(row))?;
        }
        app.flush()?;
    }
    tx.execute_batch(upsert)?;
    Ok(())
}

fn accumulate(
    into: &mut HashMap<Key, Traits>,
    project: &str,
    id: &str,
    traits: &Map<String, Value>,
    at: i64,
) {
    into.entry((project.to_owned(), id.to_owned()))
        .or_insert_with(|| Traits {
            traits: Map::new(),
            first: at,
            last: at,
        })
        .merge(traits, at);
}

fn upsert_traits(
    tx: &::duckdb::Transaction<'_>,
    table: &str,
    id_column: &str,
    rows: HashMap<Key, Traits>,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    // `table` and `id_column` are compile-time constants of this module, not user input.
    let stage = format!("stage_{table}");
    let sql = format!(
        "INSERT INTO {table} SELECT project_id, id, traits::JSON, created_at, updated_at FROM {stage}
         ON CONFLICT (project_id, {id_column}) DO UPDATE SET
             traits = CASE WHEN excluded.updated_at >= {table}.updated_at
                 THEN json_merge_patch({table}.traits, excluded.traits)
                 ELSE json_merge_patch(excluded.traits, {table}.traits) END,
             created_at = least({table}.created_at, excluded.created_at),
             updated_at = greatest({table}.updated_at, excluded.updated_at)"
    );
    staged_upsert(
        tx,
        &stage,
        "project_id VARCHAR, id VARCHAR, traits VARCHAR, created_at TIMESTAMP, updated_at TIMESTAMP",
        &sql,
        rows.into_iter().map(|((project, id), t)| {
            vec![
                project.into(),
                id.into(),
                Value::Object(t.traits).to_string().into(),
                ts(t.first),
                ts(t.last),
            ]
        }),
    )?;
    Ok(())
}

fn ts(micros: i64) -> DuckValue {
    DuckValue::Timestamp(TimeUnit::Microsecond, micros)
}

fn json_text(map: &Map<String, Value>) -> Option<String> {
    if map.is_empty() {
        None
    } else {
        Some(serde_json::to_string(map).expect("a json map always serializes"))
    }
}
