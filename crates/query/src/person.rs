//! The `person` query: one person's profile, for the dashboard's person page and for
//! support ("what did this user do?").
//!
//! A person is what every report counts (see [`crate::common::Scan`]): a user id, with
//! the events of every device linked to it (`identities`), or an anonymous visitor id.
//! A device id that is linked to a user asks for that user (`asked_for` keeps the id
//! asked for), so a link from an anonymous event opens its person.
//! The answer has their current traits, the devices merged into them and when each was
//! linked, the accounts they belong to, when they were first and last seen (all time),
//! how many events they have in the range, and those events newest first, a page at a
//! time (`pagination`, as the `events` kind). Only analytics calls (track, page,
//! screen) are in the timeline and the counts, as in every report.
//!
//! The SQL is one text for both stores but for a few expressions (`dialect` below): on
//! ClickHouse a device belongs to the user it was first linked to (`argMin` by link
//! time) and `FINAL` reads a replayed event once; on DuckDB the identities table keeps
//! one link per device already.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tally_store::{Dialect, Store};

use crate::events::{event_columns_sql, event_objects};
use crate::request::{parse_date_range, parse_pagination_with, parse_timezone};
use crate::time::{self, MICROS_PER_SEC};
use crate::{Binder, QueryError};

const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 1_000;
/// Longer ids than this are no id an SDK sends.
const MAX_ID_CHARS: usize = 512;

pub(crate) struct PersonQuery {
    person: String,
    tz: chrono_tz::Tz,
    start: i64,
    end: i64,
    limit: u64,
    offset: u64,
}

impl PersonQuery {
    pub(crate) fn parse(
        obj: &Map<String, Value>,
        now: DateTime<Utc>,
        first_event: impl FnOnce() -> Result<Option<i64>, QueryError>,
    ) -> Result<Self, QueryError> {
        const KEYS: &[&str] = &["kind", "person_id", "date_range", "timezone", "pagination"];
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(QueryError::invalid(
                k.as_str(),
                format!("unknown key; a person query has: {}", KEYS.join(", ")),
            ));
        }
        let person = match obj.get("person_id") {
            Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_ID_CHARS => {
                s.clone()
            }
            _ => {
                return Err(QueryError::invalid(
                    "person_id",
                    format!(
                        "is required: the person's user id, or an anonymous visitor's id (1 to {MAX_ID_CHARS} characters)"
                    ),
                ))
            }
        };
        let tz = parse_timezone(obj.get("timezone"))?;
        let (start, end) = parse_date_range(obj.get("date_range"), tz, now, first_event)?;
        let (limit, offset) =
            parse_pagination_with(obj.get("pagination"), DEFAULT_LIMIT, MAX_LIMIT)?;
        Ok(Self {
            person,
            tz,
            start,
            end,
            limit,
            offset,
        })
    }
}

/// The condition "this event is `person`'s", over the columns of `events`: their own
/// signed-in events, and the anonymous ones of a device linked to them or, for an
/// anonymous visitor, of their visitor id on a device linked to nobody.
fn is_person_sql(dialect: Dialect, project: &str, person: &str, b: &mut Binder) -> String {
    let (p, who) = (b.text(project), b.text(person));
    let linked = format!("SELECT device_id FROM identities WHERE project_id = {p}");
    let (theirs, device) = match dialect {
        Dialect::DuckDb => (format!("{linked} AND user_id = {who}"), "device_id"),
        Dialect::ClickHouse => (
            format!("{linked} GROUP BY device_id HAVING argMin(user_id, linked_at) = {who}"),
            "ifNull(device_id, '')",
        ),
    };
    format!(
        "project_id = {p} AND type NOT IN ('identify', 'group', 'alias') AND \
         (user_id = {who} OR (user_id IS NULL AND ({device} IN ({theirs}) \
          OR (visitor_id = {who} AND (device_id IS NULL OR {device} NOT IN ({linked}))))))"
    )
}

/// `µs` as the RFC 3339 UTC time the `events` kind writes.
fn iso(us: &Value) -> Value {
    us.as_i64()
        .and_then(DateTime::from_timestamp_micros)
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
        .unwrap_or(Value::Null)
}

/// The first column of the first row `sql` answers, if any.
fn first_cell(store: &dyn Store, sql: &tally_store::Sql) -> Result<Option<Value>, QueryError> {
    Ok(store
        .query(sql)?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next()))
}

fn traits(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| json!({})),
        Value::Object(_) => v.clone(),
        _ => json!({}),
    }
}

impl crate::Report for PersonQuery {
    /// Traits, links and first/last seen are about all time.
    fn reads(&self) -> crate::Reads {
        crate::Reads::ALL
    }

    fn normalized(&self) -> Value {
        json!({
            "kind": "person",
            "person_id": self.person,
            "date_range": [
                time::rfc3339_in(self.tz, self.start),
                time::rfc3339_in(self.tz, self.end - MICROS_PER_SEC),
            ],
            "timezone": self.tz.name(),
            "pagination": { "limit": self.limit, "offset": self.offset },
        })
    }

    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        let dialect = store.dialect();
        // A device id linked to a user is that user (as in every report).
        let mut b = Binder::numbered();
        let (p, asked) = (b.text(project), b.text(&self.person));
        let link_sql = match dialect {
            Dialect::DuckDb => format!(
                "SELECT user_id FROM identities WHERE project_id = {p} AND device_id = {asked}"
            ),
            Dialect::ClickHouse => format!(
                "SELECT argMin(user_id, linked_at) FROM identities \
                 WHERE project_id = {p} AND device_id = {asked} GROUP BY device_id"
            ),
        };
        let linked = first_cell(store, &b.finish(link_sql))?;
        let person = linked
            .as_ref()
            .and_then(Value::as_str)
            .unwrap_or(&self.person);
        let (us, events) = match dialect {
            Dialect::DuckDb => ("epoch_us", "events"),
            // Times are µs there already; FINAL reads a replayed event once.
            Dialect::ClickHouse => ("", "events FINAL"),
        };
        let us = |col: &str| format!("{us}({col})");

        // Their events: how many in the range, first and last ever.
        let mut b = Binder::numbered();
        let is_person = is_person_sql(dialect, project, person, &mut b);
        let (start, end) = (b.ts(self.start), b.ts(self.end));
        let in_range = match dialect {
            Dialect::DuckDb => format!("count(*) FILTER (WHERE ts >= {start} AND ts < {end})"),
            Dialect::ClickHouse => format!("countIf(ts >= {start} AND ts < {end})"),
        };
        let summary = store.query(&b.finish(format!(
            "SELECT {in_range}, count(*), {}, {} FROM {events} WHERE {is_person}",
            us("min(ts)"),
            us("max(ts)"),
        )))?;
        let row = summary.first().cloned().unwrap_or_default();
        let count = row.first().and_then(Value::as_u64).unwrap_or(0);
        // ClickHouse answers 0, not NULL, for the min of nothing.
        let ever = row.get(1).and_then(Value::as_u64).unwrap_or(0) > 0;
        let seen = |i: usize| match row.get(i) {
            Some(v) if ever => iso(v),
            _ => Value::Null,
        };
        let (first_seen, last_seen) = (seen(2), seen(3));

        // The page of the timeline, newest first.
        let mut b = Binder::numbered();
        let is_person = is_person_sql(dialect, project, person, &mut b);
        let (start, end) = (b.ts(self.start), b.ts(self.end));
        let (limit, offset) = (b.int(self.limit as i64), b.int(self.offset as i64));
        let timeline = event_objects(store.query(&b.finish(format!(
            "SELECT {} FROM {events} WHERE {is_person} AND ts >= {start} AND ts < {end} \
             ORDER BY ts DESC, lsn DESC, uuid DESC LIMIT {limit} OFFSET {offset}",
            event_columns_sql(dialect)
        )))?);

        // Their traits, as the last identify calls left them.
        let traits = match dialect {
            Dialect::DuckDb => {
                let mut b = Binder::numbered();
                let (p, who) = (b.text(project), b.text(person));
                first_cell(store, &b.finish(format!(
                    "SELECT CAST(traits AS VARCHAR) FROM persons WHERE project_id = {p} AND user_id = {who}"
                )))?
            }
            // The accounts report's query: rows `(user, traits)`.
            Dialect::ClickHouse => store
                .query(&crate::clickhouse::person_traits_sql(project, &[person.to_owned()]))?
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().nth(1)),
        }
        .map(|v| traits(&v))
        .unwrap_or_else(|| json!({}));

        // The devices merged into them, in the order they were linked.
        let mut b = Binder::numbered();
        let (p, who) = (b.text(project), b.text(person));
        let devices_sql = match dialect {
            Dialect::DuckDb => format!(
                "SELECT device_id, epoch_us(linked_at) AS linked FROM identities \
                 WHERE project_id = {p} AND user_id = {who} ORDER BY linked, device_id"
            ),
            Dialect::ClickHouse => format!(
                "SELECT device_id, min(linked_at) AS linked FROM identities WHERE project_id = {p} \
                 GROUP BY device_id HAVING argMin(user_id, linked_at) = {who} ORDER BY linked, device_id"
            ),
        };
        let devices: Vec<Value> = store
            .query(&b.finish(devices_sql))?
            .iter()
            .map(|r| json!({ "device_id": r[0], "linked_at": iso(&r[1]) }))
            .collect();

        // The accounts they belong to: by group calls, and by the events they sent
        // naming one (as the accounts report counts them).
        let mut b = Binder::numbered();
        let (p, who) = (b.text(project), b.text(person));
        let members = store.query(&b.finish(format!(
            "SELECT group_id, {}, {} FROM group_members \
             WHERE project_id = {p} AND user_id = {who} GROUP BY group_id",
            us("min(first_seen)"),
            us("max(last_seen)"),
        )))?;
        let mut b = Binder::numbered();
        let is_person = is_person_sql(dialect, project, person, &mut b);
        let named = store.query(&b.finish(format!(
            "SELECT group_id, {}, {} FROM {events} \
             WHERE {is_person} AND group_id IS NOT NULL GROUP BY group_id",
            us("min(ts)"),
            us("max(ts)"),
        )))?;
        let mut spans: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        for r in members.iter().chain(&named) {
            let (Some(id), Some(first), Some(last)) = (r[0].as_str(), r[1].as_i64(), r[2].as_i64())
            else {
                continue;
            };
            let span = spans.entry(id.to_owned()).or_insert((first, last));
            *span = (span.0.min(first), span.1.max(last));
        }
        let mut accounts: Vec<(String, (i64, i64))> = spans.into_iter().collect();
        accounts.sort_by(|a, b| (a.1 .0, &a.0).cmp(&(b.1 .0, &b.0)));
        let accounts: Vec<Value> = accounts
            .into_iter()
            .map(|(id, (first, last))| {
                json!({ "account_id": id, "first_seen": iso(&json!(first)), "last_seen": iso(&json!(last)) })
            })
            .collect();

        Ok(json!({
            "results": {
                "person_id": person,
                "asked_for": self.person,
                "traits": traits,
                "devices": devices,
                "accounts": accounts,
                "first_seen": first_seen,
                "last_seen": last_seen,
                "events": count,
                "timeline": timeline,
            },
            "total_rows": count,
        }))
    }
}
