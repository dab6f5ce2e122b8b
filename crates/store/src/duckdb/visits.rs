//! The `visits` table, kept at write time so visit metrics read one row per visit
//! instead of cutting visits from raw events on every query.
//!
//! A visit is what the query engine cut from raw events before this table existed
//! (docs/queries.md): each session id a client sent is one visit; a person's events
//! without one are cut into visits by more than 30 minutes without such an event. A row
//! holds the visit's person, first and last event time, events, page views, entry and
//! exit page, and its events and page views per page.
//!
//! The writer re-derives, in the transaction that stores a batch, only the visits the
//! batch can change, from the events themselves, so the table always equals cutting
//! every stored event anew (the tests check exactly that, batch after batch):
//! - for each person with events in the batch without a session id, the window from the
//!   batch's first to last such event, widened to every visit of that person within 30
//!   minutes of it (a late event can join two visits or fall inside one);
//! - for each session id in the batch, that session's visit;
//! - for each device linked to a user in the batch, every visit of the device: its
//!   events now belong to the user, whose visits around them are re-derived too.
//!
//! The visits in those windows are deleted and cut again from all the events of the
//! window. A visit outside the window cannot change: it is more than 30 minutes away
//! from every new event, and from every visit re-derived.
//!
//! Under live traffic a batch only appends: all its events of a person (or a session)
//! come after that person's visits and nothing was linked. Then the last visit is
//! extended in place and the visits the batch starts are inserted ([`append`]), without
//! reading the old events again.

use ::duckdb::{params, Connection, Transaction};

use super::writer::ts;
use crate::StoreError;

/// The inactivity that ends a visit (the query engine's rule).
pub const VISIT_TIMEOUT_MINUTES: u32 = 30;

/// The working tables of one re-derivation (and of [`super::open_visits`]: the devices
/// it looks up, the rows it replaces), created once per connection.
const WORK: &str = "
    CREATE TEMP TABLE IF NOT EXISTS visit_redo_persons (
        project_id VARCHAR, person_id VARCHAR, lo TIMESTAMP, hi TIMESTAMP, append BOOLEAN);
    CREATE TEMP TABLE IF NOT EXISTS visit_redo_sessions (
        project_id VARCHAR, session_id VARCHAR, lo TIMESTAMP, hi TIMESTAMP, append BOOLEAN);
    CREATE TEMP TABLE IF NOT EXISTS visit_devices (project_id VARCHAR, device_id VARCHAR);
    CREATE TEMP TABLE IF NOT EXISTS visit_replaced (
        project_id VARCHAR, session_id VARCHAR, person_id VARCHAR, start_ts TIMESTAMP, end_ts TIMESTAMP);";

pub(super) fn create_work_tables(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(WORK)?;
    Ok(())
}

/// The analytics events (not identify, group or alias calls) with their person resolved
/// as the query engine does: the user id, else the user the device is linked to, else
/// the visitor id. `{where}` restricts the events scanned.
fn resolved(where_: &str) -> String {
    format!(
        "SELECT e.project_id, e.session_id, e.ts, e.page, \
                (e.type = 'page' OR e.event = 'page_visit') AS is_pv, \
                coalesce(e.user_id, i.user_id, e.visitor_id) AS person_id \
         FROM events e LEFT JOIN identities i \
           ON e.user_id IS NULL AND i.project_id = e.project_id AND i.device_id = e.device_id \
         WHERE e.type NOT IN ('identify', 'group', 'alias') AND {where_}"
    )
}

/// Cuts the visits of `visit_redo_persons` and (with `sessions`) `visit_redo_sessions`
/// from the events between `?1` and `?2` (the union of their windows) into `visits`.
fn derive_sql(sessions: bool) -> String {
    let select = visits_select(
        &resolved("e.ts BETWEEN ?1 AND ?2"),
        "JOIN visit_redo_persons r ON r.project_id = ev.project_id AND r.person_id = ev.person_id \
         WHERE NOT r.append AND ev.session_id IS NULL AND ev.ts BETWEEN r.lo AND r.hi",
        if sessions {
            "JOIN visit_redo_sessions s ON s.project_id = ev.project_id AND s.session_id = ev.session_id \
             WHERE NOT s.append AND ev.ts BETWEEN s.lo AND s.hi"
        } else {
            "WHERE false"
        },
    );
    format!("INSERT INTO visits {select}")
}

/// Every visit cut anew from all stored events, in the shape of `visits` (for tests that
/// check the table the writer keeps against it).
pub fn visits_from_events_sql() -> String {
    visits_select(
        &resolved("true"),
        "WHERE ev.session_id IS NULL",
        "WHERE ev.session_id IS NOT NULL",
    )
}

/// The visits cut from `ev`, in the columns of `visits`: `gap` (joins and filters on
/// `ev`) picks the events cut by silence, `sessions` the events of sessions. Ties
/// (two first events at one time) go to the smaller person and page, so a visit cut
/// twice is the same row.
fn visits_select(ev: &str, gap: &str, sessions: &str) -> String {
    format!(
        "WITH ev AS ({ev}), \
         gap AS (SELECT ev.* FROM ev {gap}), \
         marked AS (SELECT *, CASE WHEN lag(ts) OVER w IS NULL \
                      OR ts - lag(ts) OVER w > INTERVAL {VISIT_TIMEOUT_MINUTES} MINUTE THEN 1 ELSE 0 END AS brk \
                    FROM gap WINDOW w AS (PARTITION BY project_id, person_id ORDER BY ts)), \
         cut AS (SELECT project_id, NULL::VARCHAR AS session_id, person_id AS gp, \
                        sum(brk) OVER (PARTITION BY project_id, person_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS n, \
                        person_id, ts, page, is_pv FROM marked \
                 UNION ALL \
                 SELECT ev.project_id, ev.session_id, NULL AS gp, 0 AS n, ev.person_id, ev.ts, ev.page, ev.is_pv \
                 FROM ev {sessions}), \
         per_page AS (SELECT project_id, session_id, gp, n, page, \
                        list(person_id ORDER BY ts, person_id)[1] AS person_id, \
                        min(ts) AS first_ts, max(ts) AS last_ts, \
                        count(*) AS events, count(*) FILTER (WHERE is_pv) AS pageviews \
                      FROM cut GROUP BY project_id, session_id, gp, n, page) \
         SELECT project_id, session_id, list(person_id ORDER BY first_ts, person_id)[1], \
                min(first_ts), max(last_ts), sum(events), sum(pageviews), \
                (list(page ORDER BY first_ts, page) FILTER (WHERE page IS NOT NULL))[1], \
                (list(page ORDER BY last_ts DESC, page DESC) FILTER (WHERE page IS NOT NULL))[1], \
                list({{'page': page, 'events': events, 'pageviews': pageviews}} ORDER BY page NULLS FIRST) \
         FROM per_page GROUP BY project_id, session_id, gp, n"
    )
}

/// The window of the events `visit_redo_*` name, or `None` when there is nothing to do.
fn redo_bounds(tx: &Connection, sessions: bool) -> Result<Option<(i64, i64)>, StoreError> {
    let sql = if sessions {
        "SELECT epoch_us(min(lo)), epoch_us(max(hi)) FROM \
         (SELECT lo, hi FROM visit_redo_persons WHERE NOT append \
          UNION ALL SELECT lo, hi FROM visit_redo_sessions WHERE NOT append)"
    } else {
        "SELECT epoch_us(min(lo)), epoch_us(max(hi)) FROM visit_redo_persons WHERE NOT append"
    };
    let bounds: (Option<i64>, Option<i64>) = tx
        .prepare_cached(sql)?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(match bounds {
        (Some(lo), Some(hi)) => Some((lo, hi)),
        _ => None,
    })
}

/// Cuts the visits of the window tables anew (see [`derive_sql`]); with `replace`, first
/// deletes the visits of `visit_redo_persons` that are not appended to. Nothing to cut,
/// the common case under live traffic, costs one statement.
fn derive(tx: &Connection, sessions: bool, replace: bool) -> Result<(), StoreError> {
    let Some((lo, hi)) = redo_bounds(tx, sessions)? else {
        return Ok(());
    };
    if replace {
        tx.prepare_cached(
            "DELETE FROM visits v USING visit_redo_persons r \
             WHERE NOT r.append AND v.session_id IS NULL AND v.project_id = r.project_id \
               AND v.person_id = r.person_id AND v.start_ts >= r.lo AND v.end_ts <= r.hi",
        )?
        .execute([])?;
    }
    tx.prepare_cached(&derive_sql(sessions))?
        .execute(params![ts(lo), ts(hi)])?;
    Ok(())
}

/// What [`update`] needs to know of a stored batch.
pub(super) struct Stored {
    /// The queue position its rows carry.
    pub lsn: u64,
    /// Its earliest event time (micros).
    pub earliest: i64,
    /// Whether an event of it has a session id.
    pub sessions: bool,
    /// Whether it staged identity links (in `stage_links`, already upserted).
    pub links: bool,
}

/// Re-derives the visits a stored batch can change (see the module docs), in five
/// statements for a batch without sessions or links: DuckDB plans every statement anew,
/// at about a millisecond each (bench/src/bin/store_insert_bench.rs).
pub(super) fn update(tx: &Transaction<'_>, batch: &Stored) -> Result<(), StoreError> {
    let margin = format!("INTERVAL {VISIT_TIMEOUT_MINUTES} MINUTE");
    let events = resolved("e.lsn = $1");
    // A newly linked device's visits move to the user (and stop being the device's).
    let moved = "SELECT v.project_id, v.person_id AS device, i.user_id, v.session_id, v.start_ts, v.end_ts \
                 FROM visits v \
                 JOIN stage_links l ON l.project_id = v.project_id AND l.device_id = v.person_id \
                 JOIN identities i ON i.project_id = l.project_id AND i.device_id = l.device_id";
    let (person_touch, session_touch) = if batch.links {
        (
            format!(
                " UNION ALL SELECT project_id, user_id, start_ts, end_ts, true FROM ({moved}) WHERE session_id IS NULL \
                  UNION ALL SELECT project_id, device, start_ts, end_ts, true FROM ({moved}) WHERE session_id IS NULL"
            ),
            format!(
                " UNION ALL SELECT project_id, session_id, start_ts, end_ts, true FROM ({moved}) WHERE session_id IS NOT NULL"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    // Without links, every visit to widen to ends at most 30 minutes before the batch's
    // earliest event: a bound DuckDB prunes the table's row groups with.
    let recent = if batch.links {
        "true".to_owned()
    } else {
        format!("end_ts >= $2 - {margin}")
    };
    let mut params = vec![::duckdb::types::Value::UBigInt(batch.lsn)];
    if !batch.links {
        params.push(ts(batch.earliest));
    }
    // `append`: every event of the person in the batch is later than the end of each of
    // their visits, and no link moved visits to them. Then only their last visit can be
    // within 30 minutes of the batch, and the batch's events extend it or start new
    // visits without cutting the old events again.
    let persons = redo_sql(
        &GAPS,
        &events,
        &person_touch,
        &recent,
        &format!("v.end_ts >= t.lo - {margin} AND v.start_ts <= t.hi + {margin}"),
    );
    tx.prepare_cached(&persons)?
        .execute(::duckdb::params_from_iter(params.iter()))?;
    append(tx, &GAPS, &events, &recent, &params)?;
    let sessions = batch.sessions || batch.links;
    if sessions {
        let redo = redo_sql(&SESSIONS, &events, &session_touch, "true", "true");
        tx.prepare_cached(&redo)?.execute([batch.lsn])?;
        append(tx, &SESSIONS, &events, "true", &params[..1])?;
        tx.prepare_cached(
            "DELETE FROM visits v USING visit_redo_sessions s \
             WHERE NOT s.append AND v.project_id = s.project_id AND v.session_id = s.session_id",
        )?
        .execute([])?;
    }
    derive(tx, sessions, true)
}

/// The statement that fills the window table of `kind`: per key in the batch (`events`,
/// plus the `touch` rows a link moved), its events' span widened to the visits of that
/// key that `overlap` it (among those `recent` keeps), and whether the batch only
/// appends to them (every event later than each visit, nothing moved).
fn redo_sql(kind: &Kind, events: &str, touch: &str, recent: &str, overlap: &str) -> String {
    let Kind { key, redo, own, .. } = kind;
    format!(
        "CREATE OR REPLACE TEMP TABLE {redo} AS \
         SELECT t.project_id, t.{key}, least(t.lo, coalesce(min(v.start_ts), t.lo)) AS lo, \
                greatest(t.hi, coalesce(max(v.end_ts), t.hi)) AS hi, \
                NOT t.moved AND coalesce(max(v.end_ts) < t.lo, true) AS append \
         FROM (SELECT project_id, {key}, min(lo) AS lo, max(hi) AS hi, bool_or(moved) AS moved FROM \
                 (SELECT project_id, {key}, min(ts) AS lo, max(ts) AS hi, false AS moved FROM ({events}) \
                  WHERE {own} GROUP BY ALL{touch}) \
               GROUP BY ALL) t \
         LEFT JOIN (SELECT * FROM visits WHERE {own} AND {recent}) v \
           ON v.project_id = t.project_id AND v.{key} = t.{key} AND {overlap} \
         GROUP BY t.project_id, t.{key}, t.lo, t.hi, t.moved"
    )
}

/// The two kinds of visit [`append`] extends: a person's events without a session id,
/// cut by silence, and a session's.
struct Kind {
    /// What identifies the visit besides the project.
    key: &'static str,
    /// Its window table.
    redo: &'static str,
    /// Which rows of `visits` are of this kind.
    own: &'static str,
    /// The `session_id` column of a new visit.
    session: &'static str,
    /// Whether 30 minutes without an event start a new visit.
    cuts: bool,
}

const GAPS: Kind = Kind {
    key: "person_id",
    redo: "visit_redo_persons",
    own: "session_id IS NULL",
    session: "NULL",
    cuts: true,
};

const SESSIONS: Kind = Kind {
    key: "session_id",
    redo: "visit_redo_sessions",
    own: "session_id IS NOT NULL",
    session: "session_id",
    cuts: false,
};

/// The batch's events of the visits marked `append` (all of them later than the visit
/// of that key): the first of them joins the key's last visit (when within 30 minutes of
/// its end, for persons) as an update of that row (counts added, pages merged, the exit
/// page moved on), and the visits they start are inserted. The old events are not read.
fn append(
    tx: &Transaction<'_>,
    kind: &Kind,
    events: &str,
    recent: &str,
    params: &[::duckdb::types::Value],
) -> Result<(), StoreError> {
    let Kind {
        key,
        redo,
        own,
        session,
        cuts,
    } = kind;
    let margin = format!("INTERVAL {VISIT_TIMEOUT_MINUTES} MINUTE");
    let (first_brk, next_brk) = if *cuts {
        (
            format!("l.l_end IS NULL OR b.ts - l.l_end > {margin}"),
            format!("b.ts - lag(b.ts) OVER w > {margin}"),
        )
    } else {
        ("l.l_end IS NULL".to_owned(), "false".to_owned())
    };
    let chains = format!(
        "CREATE OR REPLACE TEMP TABLE visit_chains AS \
         WITH b AS (SELECT ev.* FROM ({events}) ev JOIN {redo} r \
                      ON r.project_id = ev.project_id AND r.{key} = ev.{key} \
                    WHERE r.append AND ev.{own}), \
         l AS (SELECT v.project_id, v.{key}, v.end_ts AS l_end, v.pages AS l_pages \
               FROM (SELECT * FROM visits WHERE {own} AND {recent}) v \
               JOIN {redo} r ON r.project_id = v.project_id AND r.{key} = v.{key} \
               WHERE r.append AND v.start_ts >= r.lo AND v.end_ts <= r.hi), \
         marked AS (SELECT b.*, l.l_end, CASE WHEN lag(b.ts) OVER w IS NULL \
                        THEN ({first_brk}) ELSE {next_brk} END::INTEGER AS brk \
                    FROM b LEFT JOIN l ON l.project_id = b.project_id AND l.{key} = b.{key} \
                    WINDOW w AS (PARTITION BY b.project_id, b.{key} ORDER BY b.ts)), \
         cut AS (SELECT *, sum(brk) OVER (PARTITION BY project_id, {key} ORDER BY ts \
                   ROWS UNBOUNDED PRECEDING) AS n FROM marked), \
         per_page AS (SELECT project_id, {key}, n, page, min(ts) AS first_ts, max(ts) AS last_ts, \
                        (list(person_id ORDER BY ts, person_id))[1] AS first_person, \
                        count(*) AS events, count(*) FILTER (WHERE is_pv) AS pageviews \
                      FROM cut GROUP BY project_id, {key}, n, page), \
         merged_pages AS (SELECT project_id, {key}, n, list({{'page': page, 'events': events, 'pageviews': pageviews}} \
                            ORDER BY page NULLS FIRST) AS pages \
                          FROM (SELECT project_id, {key}, n, page, sum(events) AS events, sum(pageviews) AS pageviews \
                                FROM (SELECT project_id, {key}, n, page, events, pageviews FROM per_page \
                                      UNION ALL \
                                      SELECT l.project_id, l.{key}, 0, p.page, p.events, p.pageviews \
                                      FROM (SELECT *, unnest(l_pages) AS p FROM l) l \
                                      WHERE EXISTS (SELECT 1 FROM per_page c WHERE c.n = 0 \
                                        AND c.project_id = l.project_id AND c.{key} = l.{key})) \
                                GROUP BY ALL) \
                          GROUP BY ALL) \
         SELECT c.project_id, c.{key}, c.n, min(first_ts) AS start_ts, max(last_ts) AS end_ts, \
                (list(first_person ORDER BY first_ts, first_person))[1] AS person, \
                sum(events)::INTEGER AS events, sum(pageviews)::INTEGER AS pageviews, \
                (list(page ORDER BY first_ts, page) FILTER (WHERE page IS NOT NULL))[1] AS entry_page, \
                (list(page ORDER BY last_ts DESC, page DESC) FILTER (WHERE page IS NOT NULL))[1] AS exit_page, \
                any_value(m.pages) AS pages \
         FROM per_page c JOIN merged_pages m USING (project_id, {key}, n) \
         GROUP BY c.project_id, c.{key}, c.n"
    );
    tx.prepare_cached(&chains)?
        .execute(::duckdb::params_from_iter(params.iter()))?;
    // The last visit, found as in `visit_chains` (`$1`: the bound of `recent`, if any).
    let (bound, bound_param) = match params.get(1) {
        Some(earliest) => (
            format!("AND v.end_ts >= $1 - {margin}"),
            vec![earliest.clone()],
        ),
        None => (String::new(), vec![]),
    };
    tx.prepare_cached(&format!(
        "UPDATE visits v SET end_ts = c.end_ts, events = v.events + c.events, \
                pageviews = v.pageviews + c.pageviews, entry_page = coalesce(v.entry_page, c.entry_page), \
                exit_page = coalesce(c.exit_page, v.exit_page), pages = c.pages \
         FROM visit_chains c, {redo} r \
         WHERE c.n = 0 AND r.project_id = c.project_id AND r.{key} = c.{key} \
           AND v.project_id = c.project_id AND v.{key} = c.{key} AND v.{own} \
           AND v.start_ts >= r.lo AND v.end_ts <= r.hi {bound}"
    ))?
    .execute(::duckdb::params_from_iter(bound_param))?;
    tx.prepare_cached(&format!(
        "INSERT INTO visits SELECT project_id, {session}, person, start_ts, end_ts, events, pageviews, \
                entry_page, exit_page, pages FROM visit_chains WHERE n > 0"
    ))?
    .execute([])?;
    Ok(())
}

/// Fills `visits` from the events stored before it existed, once: in `CHUNKS` parts
/// (by a hash of the person or session), each in its own transaction, logging progress.
/// An interrupted back-fill starts over at the next open.
pub(super) fn backfill(conn: &mut Connection) -> Result<(), StoreError> {
    const CHUNKS: u32 = 16;
    let done: i64 = conn.query_row("SELECT count(*) FROM visits_backfill", [], |r| r.get(0))?;
    if done > 0 {
        return Ok(());
    }
    let events: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    conn.execute_batch("DELETE FROM visits")?;
    if events > 0 {
        tracing::info!(events, "building the visits table from the stored events");
    }
    let all = resolved("true");
    for chunk in 0..if events > 0 { CHUNKS } else { 0 } {
        let tx = conn.transaction()?;
        for table in ["visit_redo_persons", "visit_redo_sessions"] {
            tx.execute_batch(&format!("DELETE FROM {table}"))?;
        }
        tx.execute(
            &format!(
                "INSERT INTO visit_redo_persons SELECT project_id, person_id, min(ts), max(ts), false \
                 FROM ({all}) WHERE session_id IS NULL AND hash(person_id) % {CHUNKS} = ? GROUP BY ALL"
            ),
            [chunk],
        )?;
        tx.execute(
            &format!(
                "INSERT INTO visit_redo_sessions SELECT project_id, session_id, min(ts), max(ts), false \
                 FROM ({all}) WHERE session_id IS NOT NULL AND hash(session_id) % {CHUNKS} = ? GROUP BY ALL"
            ),
            [chunk],
        )?;
        derive(&tx, true, false)?;
        tx.commit()?;
        tracing::info!(
            part = chunk + 1,
            of = CHUNKS,
            "visits table: {}% built",
            (chunk + 1) * 100 / CHUNKS
        );
    }
    conn.execute_batch("INSERT INTO visits_backfill VALUES (true)")?;
    Ok(())
}
