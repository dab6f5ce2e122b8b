//! The visits live traffic can still extend, kept in the writer's memory, so a batch that
//! only appends to them is cut in Rust and written as rows: no SQL reads the batch's
//! events or the `visits` table again (that was most of the writer's time per batch, and
//! cost single-event ingest 14%: docs/benchmarks.md).
//!
//! [`OpenVisits`] holds the last visit of every person (events without a session id)
//! and of every session whose last visit ends at or after its `floor`, exactly as the
//! `visits` table has it. So for a person whose first event in a batch is at least 30
//! minutes after the floor, the memory knows every visit the batch can touch: the last
//! one, or none. A batch is cut here ([`OpenVisits::append`]) when each of its persons
//! and sessions is known that way and all their events come after the start of that
//! visit (those before its end without a page: they only add to its counts). Any other
//! batch (late events, identity links, a session not seen since the floor) takes the SQL
//! path, and the visits it re-derived are read back into memory
//! ([`OpenVisits::reload_redone`]).
//!
//! Memory is bounded by raising the floor: visits that ended more than [`KEEP`] before
//! the newest event time seen (capped by the time it was received, so a client's clock
//! far ahead cannot evict everything) are dropped, and a floor reached by
//! [`MAX_OPEN`] open visits is raised to 30 minutes before that time. The persons'
//! users (device links) are remembered the same way, bounded by clearing.
//!
//! Nothing here changes before the transaction commits: each call returns the changes,
//! and [`OpenVisits::apply`] takes them in after the commit.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use ::duckdb::types::{OrderedMap, Value as DuckValue};
use ::duckdb::{params, Connection, Transaction};

use super::visits::VISIT_TIMEOUT_MINUTES;
use super::writer::ts;
use crate::StoreError;

const MINUTE: i64 = 60_000_000;
const TIMEOUT: i64 = VISIT_TIMEOUT_MINUTES as i64 * MINUTE;
/// How long after its end a visit is kept in memory.
pub(super) const KEEP: i64 = 120 * MINUTE;
/// The open visits at which the floor is raised to 30 minutes before the newest event.
const MAX_OPEN: usize = 1_000_000;
/// 0001-01-01, the earliest time a bound on `visits` is given as.
const EARLIEST: i64 = -62_135_596_800_000_000;
/// The devices whose user is remembered, before the memory of them is cleared.
const MAX_DEVICES: usize = 1_000_000;

/// What a visit row is of: a person's events without a session id, or a session's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Key {
    Person(String),
    Session(String),
}

/// A row of `visits`, as the table has it.
#[derive(Debug, Clone, PartialEq)]
struct Visit {
    person: String,
    start: i64,
    end: i64,
    events: i32,
    pageviews: i32,
    entry: Option<String>,
    exit: Option<String>,
    /// Per page (`None` first, as the table orders them): events and page views.
    pages: BTreeMap<Option<String>, (i32, i32)>,
}

/// One analytics event of a batch (not an identify, group or alias call), as
/// [`OpenVisits::append`] needs it.
pub(super) struct Seen<'a> {
    pub project: &'a str,
    pub session: Option<&'a str>,
    pub user: Option<&'a str>,
    pub device: Option<&'a str>,
    /// The stored `visitor_id` (the person when there is no user).
    pub visitor: &'a str,
    pub ts: i64,
    pub received: i64,
    pub page: Option<Cow<'a, str>>,
    pub pageview: bool,
}

type At = (String, Key);

/// An event as a visit is cut from it: time, page, person, whether a page view. Sorted
/// so, the first page met is a visit's entry and the last its exit.
type Cut<'a> = (i64, Option<&'a str>, &'a str, bool);

#[derive(Default)]
pub(super) struct OpenVisits {
    /// The last visit of every key whose last visit ends at or after `floor`.
    last: HashMap<At, Visit>,
    floor: i64,
    /// The newest event time seen, each capped by the time it was received.
    newest: i64,
    /// project -> device -> the user it is linked to, or `None`: not linked. Nested so
    /// a device is found by `&str`.
    users: HashMap<String, HashMap<String, Option<String>>>,
    /// Set when memory and table were found to differ: reload before using memory.
    stale: bool,
}

/// What one batch changes in memory, taken in by [`OpenVisits::apply`] after the commit.
#[derive(Default)]
pub(super) struct Changes {
    forget: Vec<At>,
    last: Vec<(At, Visit)>,
    users: Vec<((String, String), Option<String>)>,
    forget_users: Vec<(String, String)>,
    newest: i64,
}

impl Changes {
    /// The devices a batch linked: their user is looked up again next time.
    pub(super) fn linked<'a>(&mut self, devices: impl Iterator<Item = (&'a str, &'a str)>) {
        self.forget_users
            .extend(devices.map(|(p, d)| (p.to_owned(), d.to_owned())));
    }
}

/// The columns of `visits` read back into memory.
const COLUMNS: &str =
    "v.project_id, v.session_id, v.person_id, epoch_us(v.start_ts), epoch_us(v.end_ts), \
                       v.events, v.pageviews, v.entry_page, v.exit_page, to_json(v.pages)::VARCHAR";

impl OpenVisits {
    /// Reads the open visits from the table: those that end within [`KEEP`] of the last.
    pub(super) fn load(conn: &Connection) -> Result<Self, StoreError> {
        let mut open = Self::default();
        let newest: Option<i64> =
            conn.query_row("SELECT epoch_us(max(end_ts)) FROM visits", [], |r| r.get(0))?;
        open.newest = newest.unwrap_or(i64::MIN);
        open.floor = newest.map_or(i64::MIN, |n| n.saturating_sub(KEEP));
        let sql = format!(
            "SELECT {COLUMNS} FROM visits v WHERE v.end_ts >= ? \
             QUALIFY row_number() OVER (PARTITION BY v.project_id, v.session_id IS NULL, \
                                        coalesce(v.session_id, v.person_id) ORDER BY v.end_ts DESC) = 1"
        );
        for (at, visit) in read(conn, &sql, &[ts(open.floor.max(EARLIEST))])? {
            open.last.insert(at, visit);
        }
        tracing::debug!(open = open.last.len(), "open visits loaded");
        Ok(open)
    }

    /// Whether memory can be trusted (see [`OpenVisits::apply`]); reloads it if not.
    pub(super) fn ready(&mut self, conn: &Connection) -> Result<(), StoreError> {
        if self.stale {
            *self = Self::load(conn)?;
        }
        Ok(())
    }

    /// Cuts the batch's `events` into the visits they extend or start and writes them,
    /// when every person and session of the batch only appends to what memory knows
    /// (see the module docs). `Ok(None)`: nothing was written, take the SQL path.
    pub(super) fn append(
        &self,
        tx: &Transaction<'_>,
        events: &[Seen<'_>],
    ) -> Result<Option<Changes>, StoreError> {
        let mut changes = Changes {
            newest: newest(events),
            ..Changes::default()
        };
        let users = self.users_of(tx, events, &mut changes)?;
        // Per key, its events by time, then page (`None` first): the first page met is
        // the entry and the last the exit, as the SQL cut breaks ties.
        let mut by_key: BTreeMap<(&str, Key), Vec<Cut<'_>>> = BTreeMap::new();
        for (e, person) in events.iter().zip(&users) {
            let key = match e.session {
                Some(s) => Key::Session(s.to_owned()),
                None => Key::Person(person.to_string()),
            };
            by_key.entry((e.project, key)).or_default().push((
                e.ts,
                e.page.as_deref(),
                person,
                e.pageview,
            ));
        }
        let mut replaced = Vec::new();
        let mut rows = Vec::new();
        for ((project, key), mut evs) in by_key {
            evs.sort_unstable();
            let first = evs[0].0;
            let at = (project.to_owned(), key);
            let known = self.last.get(&at);
            let appends = match (&at.1, known) {
                // Events within the visit (after its start, up to its end) only without
                // a page: they change its counts, not its entry or exit, which memory
                // could not place them against. Concurrent requests of one person reach
                // the queue a little out of time order so.
                (_, Some(v)) => evs
                    .iter()
                    .take_while(|c| c.0 <= v.end)
                    .all(|c| c.0 > v.start && c.1.is_none()),
                // Unknown: no visit of this person ends at or after the floor, so none
                // is within 30 minutes of these events.
                (Key::Person(_), None) => first.saturating_sub(TIMEOUT) >= self.floor,
                // A session has one visit however long its silences: it may be older.
                (Key::Session(_), None) => false,
            };
            if !appends {
                return Ok(None);
            }
            let cuts = matches!(at.1, Key::Person(_));
            let mut current = match known {
                Some(v) if !cuts || first - v.end <= TIMEOUT => {
                    replaced.push((at.clone(), v.clone()));
                    Some(v.clone())
                }
                _ => None,
            };
            for (t, page, person, pageview) in evs {
                let visit = match current.as_mut() {
                    Some(v) if !cuts || t - v.end <= TIMEOUT => v,
                    _ => {
                        if let Some(done) = current.take() {
                            rows.push((at.clone(), done));
                        }
                        current.insert(Visit {
                            person: person.to_owned(),
                            start: t,
                            end: t,
                            events: 0,
                            pageviews: 0,
                            entry: None,
                            exit: None,
                            pages: BTreeMap::new(),
                        })
                    }
                };
                if t == visit.start && person < visit.person.as_str() {
                    // The visit's person is its first event's; ties go to the smaller.
                    visit.person = person.to_owned();
                }
                visit.end = visit.end.max(t);
                visit.events += 1;
                visit.pageviews += i32::from(pageview);
                if let Some(page) = page {
                    if visit.entry.is_none() {
                        visit.entry = Some(page.to_owned());
                    }
                    visit.exit = Some(page.to_owned());
                }
                let counts = visit.pages.entry(page.map(str::to_owned)).or_default();
                counts.0 += 1;
                counts.1 += i32::from(pageview);
            }
            let last = current.expect("a key has events");
            rows.push((at.clone(), last.clone()));
            changes.last.push((at, last));
        }
        write(tx, &replaced, &rows)?;
        Ok(Some(changes))
    }

    /// After the SQL path re-derived the visits of the keys in the window tables
    /// (`visit_redo_*`): reads their last visits back, to replace what memory had.
    /// `sessions`: whether the SQL path filled `visit_redo_sessions` for this batch.
    pub(super) fn reload_redone(
        &self,
        tx: &Transaction<'_>,
        sessions: bool,
        events: &[Seen<'_>],
    ) -> Result<Changes, StoreError> {
        let mut changes = Changes {
            newest: newest(events),
            ..Changes::default()
        };
        let tables = [
            ("visit_redo_persons", "person_id"),
            ("visit_redo_sessions", "session_id"),
        ];
        for (table, key) in &tables[..if sessions { 2 } else { 1 }] {
            let (table, key) = (*table, *key);
            let own = if key == "person_id" {
                "v.session_id IS NULL"
            } else {
                "v.session_id IS NOT NULL"
            };
            let forget = format!("SELECT project_id, {key} FROM {table}");
            let mut stmt = tx.prepare_cached(&forget)?;
            let mut found = stmt.query([])?;
            while let Some(row) = found.next()? {
                let id: String = row.get(1)?;
                let key = if key == "person_id" {
                    Key::Person(id)
                } else {
                    Key::Session(id)
                };
                changes.forget.push((row.get(0)?, key));
            }
            let sql = format!(
                "SELECT {COLUMNS} FROM visits v JOIN {table} r \
                   ON r.project_id = v.project_id AND r.{key} = v.{key} \
                 WHERE {own} AND v.end_ts >= ? \
                 QUALIFY row_number() OVER (PARTITION BY v.project_id, v.{key} ORDER BY v.end_ts DESC) = 1"
            );
            let floor = ts(self.floor.max(EARLIEST));
            // Without join filter pushdown: on this statement DuckDB 1.4's bloom filter,
            // pushed from the join into the scan of `visits`, wrote out of bounds (valgrind
            // under tests/visits_table.rs; the process then aborted in malloc).
            tx.execute_batch("SET disabled_optimizers = 'join_filter_pushdown'")?;
            let read = read(tx, &sql, &[floor]);
            tx.execute_batch("RESET disabled_optimizers")?;
            changes.last.extend(read?);
        }
        Ok(changes)
    }

    /// Takes in a committed batch's changes, then raises the floor if memory is over
    /// its bounds.
    pub(super) fn apply(&mut self, changes: Changes) {
        for at in changes.forget {
            self.last.remove(&at);
        }
        self.newest = self.newest.max(changes.newest);
        for (at, visit) in changes.last {
            if visit.end >= self.floor {
                self.last.insert(at, visit);
            }
        }
        if self.users.values().map(HashMap::len).sum::<usize>() > MAX_DEVICES {
            self.users.clear();
        }
        for (project, device) in changes.forget_users {
            if let Some(devices) = self.users.get_mut(&project) {
                devices.remove(&device);
            }
        }
        for ((project, device), user) in changes.users {
            self.users.entry(project).or_default().insert(device, user);
        }
        if self.newest.saturating_sub(KEEP) > self.floor.saturating_add(KEEP / 2) {
            self.raise(self.newest.saturating_sub(KEEP));
        }
        if self.last.len() > MAX_OPEN {
            self.raise(self.newest.saturating_sub(TIMEOUT));
        }
    }

    /// Memory and table differ (a bug): use the SQL path until memory is read again.
    pub(super) fn distrust(&mut self) {
        self.stale = true;
        self.last.clear();
        self.floor = i64::MAX;
    }

    fn raise(&mut self, floor: i64) {
        if floor > self.floor {
            self.floor = floor;
            self.last.retain(|_, v| v.end >= floor);
        }
    }

    /// Each event's person: its user, else the user its device is linked to, else its
    /// visitor id. Devices not in memory are looked up in one statement.
    fn users_of<'e>(
        &self,
        tx: &Transaction<'_>,
        events: &[Seen<'e>],
        changes: &mut Changes,
    ) -> Result<Vec<Cow<'e, str>>, StoreError> {
        let known = |p: &str, d: &str| self.users.get(p).and_then(|devices| devices.get(d));
        let unknown: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e.user.is_none())
            .filter_map(|e| Some((e.project, e.device?)))
            .filter(|(p, d)| known(p, d).is_none())
            .collect();
        let mut found: HashMap<(String, String), Option<String>> = HashMap::new();
        if !unknown.is_empty() {
            tx.prepare_cached("DELETE FROM visit_devices")?
                .execute([])?;
            {
                let mut app = tx.appender("visit_devices")?;
                for (p, d) in &unknown {
                    app.append_row(params![p, d])?;
                }
                app.flush()?;
            }
            let mut stmt = tx.prepare_cached(
                "SELECT DISTINCT d.project_id, d.device_id, i.user_id FROM visit_devices d \
                 LEFT JOIN identities i ON i.project_id = d.project_id AND i.device_id = d.device_id",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                found.insert((row.get(0)?, row.get(1)?), row.get(2)?);
            }
        }
        let persons = events
            .iter()
            .map(|e| match (e.user, e.device) {
                (Some(user), _) => Cow::Borrowed(user),
                (None, None) => Cow::Borrowed(e.visitor),
                (None, Some(d)) => {
                    let user = known(e.project, d).cloned().unwrap_or_else(|| {
                        found
                            .get(&(e.project.to_owned(), d.to_owned()))
                            .cloned()
                            .flatten()
                    });
                    user.map_or(Cow::Borrowed(e.visitor), Cow::Owned)
                }
            })
            .collect();
        changes.users.extend(found);
        Ok(persons)
    }
}

/// The newest event time of `events`, each capped by the time it was received.
fn newest(events: &[Seen<'_>]) -> i64 {
    events
        .iter()
        .map(|e| e.ts.min(e.received))
        .max()
        .unwrap_or(i64::MIN)
}

/// Deletes the `replaced` rows (each known exactly) and inserts `rows`.
fn write(
    tx: &Transaction<'_>,
    replaced: &[(At, Visit)],
    rows: &[(At, Visit)],
) -> Result<(), StoreError> {
    if !replaced.is_empty() {
        tx.prepare_cached("DELETE FROM visit_replaced")?
            .execute([])?;
        {
            let mut app = tx.appender("visit_replaced")?;
            for ((project, key), v) in replaced {
                let session = match key {
                    Key::Session(s) => Some(s.as_str()),
                    Key::Person(_) => None,
                };
                app.append_row(params![project, session, v.person, ts(v.start), ts(v.end)])?;
            }
            app.flush()?;
        }
        let oldest = replaced.iter().map(|(_, v)| v.end).min().unwrap_or(0);
        let deleted = tx
            .prepare_cached(
                "DELETE FROM visits v USING visit_replaced r \
                 WHERE v.end_ts >= ? AND v.project_id = r.project_id \
                   AND v.session_id IS NOT DISTINCT FROM r.session_id \
                   AND v.person_id = r.person_id AND v.start_ts = r.start_ts AND v.end_ts = r.end_ts",
            )?
            .execute([ts(oldest)])?;
        if deleted != replaced.len() {
            return Err(StoreError::Internal(format!(
                "the writer's open visits differ from the visits table ({deleted} of {} rows found)",
                replaced.len()
            )));
        }
    }
    let mut app = tx.appender("visits")?;
    for ((project, key), v) in rows {
        let session = match key {
            Key::Session(s) => Some(s.as_str()),
            Key::Person(_) => None,
        };
        let pages: Vec<DuckValue> = v
            .pages
            .iter()
            .map(|(page, (events, pageviews))| {
                DuckValue::Struct(OrderedMap::from(vec![
                    (
                        "page".to_owned(),
                        page.clone().map_or(DuckValue::Null, DuckValue::Text),
                    ),
                    ("events".to_owned(), DuckValue::Int(*events)),
                    ("pageviews".to_owned(), DuckValue::Int(*pageviews)),
                ]))
            })
            .collect();
        app.append_row(params![
            project,
            session,
            v.person,
            ts(v.start),
            ts(v.end),
            v.events,
            v.pageviews,
            v.entry,
            v.exit,
            DuckValue::List(pages),
        ])?;
    }
    app.flush()?;
    Ok(())
}

/// Visit rows read with [`COLUMNS`].
fn read(
    conn: &Connection,
    sql: &str,
    params: &[DuckValue],
) -> Result<Vec<(At, Visit)>, StoreError> {
    #[derive(serde::Deserialize)]
    struct Page {
        page: Option<String>,
        events: i32,
        pageviews: i32,
    }
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(::duckdb::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let session: Option<String> = row.get(1)?;
        let person: String = row.get(2)?;
        let pages: String = row.get(9)?;
        let pages: Vec<Page> = serde_json::from_str(&pages)
            .map_err(|e| StoreError::Internal(format!("a visit's pages do not parse: {e}")))?;
        let key = match session {
            Some(s) => Key::Session(s),
            None => Key::Person(person.clone()),
        };
        out.push((
            (row.get(0)?, key),
            Visit {
                person,
                start: row.get(3)?,
                end: row.get(4)?,
                events: row.get(5)?,
                pageviews: row.get(6)?,
                entry: row.get(7)?,
                exit: row.get(8)?,
                pages: pages
                    .into_iter()
                    .map(|p| (p.page, (p.events, p.pageviews)))
                    .collect(),
            },
        ));
    }
    Ok(out)
}
