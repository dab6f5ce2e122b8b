//! The part of the engine that compiles to ClickHouse SQL (the scale-out store).
//!
//! Every report kind but `accounts`: `stats` (the event plan, read from the hourly
//! rollup where that is exact, and the visit plan), `trends`, `funnel`s, `retention`,
//! `lifecycle` and `stickiness` counted per person or per account, `paths`, `realtime`
//! and `events`, with every dimension and filter operator. `accounts` is refused with
//! [`QueryError::Unsupported`] (HTTP 501), never answered differently from DuckDB:
//! `tests/conformance` runs the same queries on both stores.
//!
//! The SQL runs on Debian's ClickHouse 18.16 and on current releases (checked in chDB):
//! no window functions, no `GROUP BY ALL`, no `formatDateTime`, no server-side parameters
//! (the store inlines them), and every joined subquery has an alias (current releases
//! require one). Times are `Int64` microseconds (see the store's schema); local time is
//! the same integer shift as on DuckDB, with `multiIf` over the zone's offset changes.

use chrono_tz::Tz;

use crate::common::{EventMatch, Interval, WeekStart};
use crate::dims::{Dimension, Filter, Op};
use crate::funnel::Attribution;
use crate::time::{self, MICROS_PER_SEC};
use crate::{Binder, QueryError};

/// What a `stats` query asks, as the ClickHouse compiler needs it.
pub(crate) struct StatsParts<'a> {
    pub metrics: &'a [String],
    pub dimensions: &'a [Dimension],
    pub filters: &'a [Filter],
    /// `(column, descending)`, columns being `d<i>` / `m<i>`.
    pub order: &'a [(String, bool)],
    pub tz: Tz,
    /// Whether the store's `events_hourly` rollup may be read ([`tally_store::Store::rollups`]).
    pub rollups: bool,
    /// The event whose people count as converted (`conversion_rate`).
    pub goal: Option<&'a str>,
}

fn unsupported(what: impl std::fmt::Display) -> QueryError {
    QueryError::Unsupported(format!(
        "{what} is not available on the ClickHouse store yet; every other report kind is"
    ))
}

/// `ts` shifted to local wall-clock time in `tz`, in microseconds, exact over `[start, end)`.
fn local_us(tz: Tz, start: i64, end: i64) -> String {
    let segs = time::offset_segments(tz, start / MICROS_PER_SEC, end / MICROS_PER_SEC);
    let us = |off: i32| i64::from(off) * MICROS_PER_SEC;
    if segs.len() == 1 {
        return format!("(ts + {})", us(segs[0].1));
    }
    let mut arms = Vec::new();
    for pair in segs.windows(2) {
        arms.push(format!(
            "ts < {}, {}",
            pair[1].0 * MICROS_PER_SEC,
            us(pair[0].1)
        ));
    }
    let last = us(segs.last().expect("non-empty").1);
    format!("(ts + multiIf({}, {last}))", arms.join(", "))
}

/// The label of the time bucket holding `lts`, formatted as the DuckDB compiler's.
fn time_label(interval: Interval, week: WeekStart) -> String {
    let (bucket, _, label) = bucket_number(interval, week);
    label.replace("{n}", &format!("({bucket})"))
}

/// The top-level `key` of the JSON object in `col` as DuckDB's `json_extract_string`
/// gives it: a string unescaped, any other value as its JSON text, NULL when the key is
/// missing or null. 18.16 has no JSONExtract; its `visitParam*` functions find the
/// first `"key":` in the text, which is the top-level one unless an object nested
/// before it has the same key, and 18.16 gives '' for an object or array value holding
/// an escaped string (docs/scale-out.md).
fn json_text(col: &str, key: &str) -> String {
    let k = tally_store::clickhouse::quote_str(key);
    let raw = format!("visitParamExtractRaw({col}, {k})");
    // 18.16's visitParamExtractRaw gives '' for a string holding an escape (which
    // visitParamExtractString decodes), so '' is read as a string too.
    format!(
        "multiIf(NOT visitParamHas({col}, {k}), NULL, {raw} = 'null', NULL, \
         {raw} = '' OR startsWith({raw}, '\"'), visitParamExtractString({col}, {k}), {raw})"
    )
}

/// A field at a path of keys inside the JSON object in `col` (`["page", "url"]` is
/// DuckDB's `$.page.url`), as [`json_text`] reads it.
fn json_at(col: &str, path: &[&str]) -> String {
    match path {
        [key] => json_text(col, key),
        [outer, rest @ ..] => {
            let outer = tally_store::clickhouse::quote_str(outer);
            json_at(&format!("visitParamExtractRaw({col}, {outer})"), rest)
        }
        [] => "CAST(NULL AS Nullable(String))".into(),
    }
}

fn first_of(exprs: &[String]) -> String {
    format!("coalesce({})", exprs.join(", "))
}

/// The page's URL, from the event's properties or its context (the DuckDB rule).
fn page_url() -> String {
    first_of(&[
        json_text("properties", "page_url"),
        json_text("properties", "url"),
        json_text("properties", "$current_url"),
        json_at("context", &["page", "url"]),
    ])
}

fn referrer() -> String {
    let any = first_of(&[
        json_text("properties", "page_referrer"),
        json_text("properties", "referrer"),
        json_text("properties", "$referrer"),
        json_at("context", &["page", "referrer"]),
    ]);
    format!("nullIf(nullIf({any}, ''), '$direct')")
}

fn utm(field: &str) -> String {
    let segment = match field {
        "utm_campaign" => "name",
        other => other.trim_start_matches("utm_"),
    };
    first_of(&[
        json_text("properties", field),
        json_at("context", &["campaign", segment]),
    ])
}

/// `multiIf` over LIKE tests of the user agent, NULL without one; `prop` (a property
/// the SDK may send) wins, as on DuckDB.
fn from_user_agent(prop: &str, arms: &[(&[&str], &str)], otherwise: &str) -> String {
    let ua = first_of(&[
        json_text("context", "user_agent"),
        json_text("context", "userAgent"),
    ]);
    let mut tests = vec![format!("isNull({ua}), CAST(NULL AS Nullable(String))")];
    for (patterns, value) in arms {
        let any: Vec<String> = patterns
            .iter()
            .map(|p| format!("ifNull({ua}, '') LIKE '%{p}%'"))
            .collect();
        tests.push(format!("{}, '{value}'", any.join(" OR ")));
    }
    first_of(&[
        json_text("properties", prop),
        format!("multiIf({}, '{otherwise}')", tests.join(", ")),
    ])
}

/// The host of a URL (scheme required), without `www.` when `strip_www`; NULL if none.
fn host_of(url: &str, strip_www: bool) -> String {
    let pattern = if strip_www {
        r"^[A-Za-z][A-Za-z0-9+.-]*://(?:www\.)?([^/:?#]+)"
    } else {
        "^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#]+)"
    };
    format!(
        "nullIf(extract({url}, {}), '')",
        tally_store::clickhouse::quote_str(pattern)
    )
}

/// A dimension's value (a label string for time), over the scan's columns.
fn dimension(d: &Dimension) -> Result<String, QueryError> {
    Ok(match d {
        Dimension::Name => "event".into(),
        Dimension::Page => "page".into(),
        Dimension::Prop(key) => json_text("properties", key),
        Dimension::Hostname => host_of(&page_url(), false),
        Dimension::Referrer => referrer(),
        Dimension::Source => first_of(&[
            utm("utm_source"),
            host_of(&referrer(), true),
            "'Direct'".into(),
        ]),
        Dimension::Utm(u) => utm(u),
        Dimension::Device => from_user_agent(
            "$device_type",
            &[
                (&["iPad", "Tablet"], "Tablet"),
                (&["Mobi", "iPhone", "Android"], "Mobile"),
            ],
            "Desktop",
        ),
        Dimension::Browser => from_user_agent(
            "$browser",
            &[
                (&["Edg/"], "Edge"),
                (&["OPR/", "Opera"], "Opera"),
                (&["Firefox/", "FxiOS/"], "Firefox"),
                (&["Chrome/", "CriOS/"], "Chrome"),
                (&["Safari/"], "Safari"),
            ],
            "Other",
        ),
        Dimension::Os => from_user_agent(
            "$os",
            &[
                (&["Windows"], "Windows"),
                (&["Android"], "Android"),
                (&["iPhone", "iPad"], "iOS"),
                (&["Mac OS X", "Macintosh"], "macOS"),
                (&["CrOS"], "Chrome OS"),
                (&["Linux"], "Linux"),
            ],
            "Other",
        ),
        // Columns of the visit plan.
        Dimension::PersonProp(key) => json_text("person_traits", key),
        Dimension::EntryPage => "entry_page".into(),
        Dimension::ExitPage => "exit_page".into(),
        Dimension::Country => first_of(&[
            json_text("properties", "$geoip_country_code"),
            json_at("context", &["location", "country"]),
            json_text("context", "country"),
        ]),
        Dimension::Time(g) => time_label(*g, WeekStart::Monday),
    })
}

fn filter(f: &Filter, b: &mut Binder) -> Result<String, QueryError> {
    Ok(match f {
        Filter::And(items) => join(items, " AND ", b)?,
        Filter::Or(items) => join(items, " OR ", b)?,
        Filter::Not(inner) => format!("(NOT {})", filter(inner, b)?),
        Filter::Cmp {
            op,
            dimension: d,
            values,
            numbers,
        } => {
            let expr = dimension(d)?;
            let any = |b: &mut Binder, test: &dyn Fn(&str) -> String| {
                let parts: Vec<String> = values
                    .iter()
                    .map(|v| format!("ifNull({}, 0)", test(&b.text(v))))
                    .collect();
                format!("({})", parts.join(" OR "))
            };
            // The NULL rules of the DuckDB compiler: a row without the value matches
            // is_not and contains_not, and not is or contains.
            let mut list = || {
                values
                    .iter()
                    .map(|v| b.text(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            match op {
                Op::Is => format!("ifNull({expr} IN ({}), 0)", list()),
                Op::IsNot => format!("ifNull({expr} NOT IN ({}), 1)", list()),
                Op::Contains => any(b, &|v| {
                    format!("positionCaseInsensitiveUTF8({expr}, {v}) > 0")
                }),
                Op::ContainsNot => format!(
                    "(NOT {})",
                    any(b, &|v| format!(
                        "positionCaseInsensitiveUTF8({expr}, {v}) > 0"
                    ))
                ),
                // RE2 on both stores, a match anywhere in the value.
                Op::Matches => any(b, &|v| format!("match({expr}, {v})")),
                Op::MatchesNot => format!("(NOT {})", any(b, &|v| format!("match({expr}, {v})"))),
                Op::Gt | Op::Lt => {
                    let cmp = if *op == Op::Gt { ">" } else { "<" };
                    let n = b.bind(tally_store::Param::Float(numbers[0]));
                    format!("ifNull(toFloat64OrNull({expr}) {cmp} {n}, 0)")
                }
                Op::IsSet => format!("isNotNull({expr})"),
                Op::IsNotSet => format!("isNull({expr})"),
            }
        }
    })
}

fn join(items: &[Filter], sep: &str, b: &mut Binder) -> Result<String, QueryError> {
    let parts = items
        .iter()
        .map(|f| filter(f, b))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("({})", parts.join(sep)))
}

/// Whether any of `dims` is a person's trait (the scan then joins the persons).
fn reads_persons<'a>(dims: impl IntoIterator<Item = &'a Dimension>) -> bool {
    dims.into_iter().any(Dimension::needs_person)
}

fn filters_read_persons(filters: &[Filter]) -> bool {
    reads_persons(filters.iter().flat_map(Filter::dimensions))
}

/// Who a query counts: nobody (counts of events), people, or accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Events,
    People,
    Accounts,
}

impl From<crate::common::CountBy> for Unit {
    fn from(c: crate::common::CountBy) -> Unit {
        match c {
            crate::common::CountBy::Person => Unit::People,
            crate::common::CountBy::Account => Unit::Accounts,
        }
    }
}

/// The events of `project` in `[start, end)` (analytics calls only) with `lts` (local
/// time, µs) and, unless `unit` is [`Unit::Events`], `device` and `person_id`: the
/// counted unit, a person or an account, as a subquery.
///
/// Each event's person is its user, else the user its device was first linked to, else
/// its visitor id (the DuckDB store's rule). Its account is its group, else the group
/// its user (signed in, or linked) was last seen in; events without an account are left
/// out when counting accounts, as on DuckDB. FINAL reads each event once even before
/// ReplacingMergeTree has merged away a replayed copy. Counts of events skip the joins.
/// 18.16 allows one JOIN per SELECT, so each join is a level of its own.
fn scan(
    project: &str,
    start: i64,
    end: i64,
    tz: Tz,
    unit: Unit,
    persons: bool,
    b: &mut Binder,
) -> String {
    let lts = local_us(tz, start, end);
    let project = b.text(project);
    let (start, end) = (b.ts(start), b.ts(end));
    let events = format!(
        "FROM events FINAL \
         WHERE project_id = {project} AND ts >= {start} AND ts < {end} \
           AND type NOT IN ('identify', 'group', 'alias')"
    );
    if unit == Unit::Events && !persons {
        return format!(
            "SELECT event, type, page, properties, context, session_id, ts, {lts} AS lts {events}"
        );
    }
    let mut people = format!(
        "SELECT event, type, page, properties, context, session_id, ts, {lts} AS lts, if(dev != '', dev, visitor_id) AS device, \
                if(isNotNull(user_id), assumeNotNull(user_id), if(linked != '', linked, visitor_id)) AS person_id, \
                if(isNotNull(user_id), assumeNotNull(user_id), linked) AS uid, group_id \
         FROM (SELECT event, type, page, properties, context, session_id, ts, user_id, visitor_id, group_id, ifNull(device_id, '') AS dev \
               {events}) AS e \
         ANY LEFT JOIN (SELECT device_id AS dev, argMin(user_id, linked_at) AS linked \
                        FROM identities WHERE project_id = {project} GROUP BY device_id) AS l \
         USING dev"
    );
    let mut traits_col = "";
    if persons {
        // The person's current traits (the last written row), by the signed-in or
        // linked user; '' when there is none.
        people = format!(
            "SELECT * FROM ({people}) AS pp \
             ANY LEFT JOIN (SELECT user_id AS uid, argMax(traits, written_at) AS person_traits \
                            FROM persons WHERE project_id = {project} GROUP BY user_id) AS pr \
             USING uid"
        );
        traits_col = ", person_traits";
    }
    if unit != Unit::Accounts {
        return people;
    }
    format!(
        "SELECT event, type, page, properties, context, session_id, ts, lts, device{traits_col}, member, account AS person_id FROM \
           (SELECT *, if(isNotNull(group_id), assumeNotNull(group_id), member_of) AS account, person_id AS member \
            FROM ({people}) AS p \
            ANY LEFT JOIN (SELECT user_id AS uid, argMax(group_id, last_seen) AS member_of \
                           FROM group_members WHERE project_id = {project} GROUP BY user_id) AS g \
            USING uid) AS pa \
         WHERE account != ''"
    )
}

/// Whether the `events_hourly` rollup answers `q` over `[start, end)` exactly: counts of
/// events and page views only (a person count needs the events), by name, page and
/// time no finer than the hour, filtered on name and page, over whole UTC hours, in a
/// zone whose offsets and offset changes fall on whole hours (so every event of an hour
/// has one local hour).
fn rollup_answers(q: &StatsParts<'_>, start: i64, end: i64) -> bool {
    const HOUR_US: i64 = 3_600 * MICROS_PER_SEC;
    fn on_name_or_page(f: &Filter) -> bool {
        match f {
            Filter::And(items) | Filter::Or(items) => items.iter().all(on_name_or_page),
            Filter::Not(inner) => on_name_or_page(inner),
            Filter::Cmp { dimension, .. } => matches!(dimension, Dimension::Name | Dimension::Page),
        }
    }
    q.rollups
        && start % HOUR_US == 0
        && end % HOUR_US == 0
        && q.metrics.iter().all(|m| m == "events" || m == "pageviews")
        && q.dimensions.iter().all(|d| {
            matches!(d, Dimension::Name | Dimension::Page)
                || matches!(d, Dimension::Time(g) if *g != Interval::Minute)
        })
        && q.filters.iter().all(on_name_or_page)
        && time::offset_segments(q.tz, start / MICROS_PER_SEC, end / MICROS_PER_SEC)
            .iter()
            .all(|(at, off)| at % 3_600 == 0 && off % 3_600 == 0)
}

/// The rollup rows of `project` in `[start, end)` with the columns of [`scan`] that a
/// rollup-answered query reads: `event`, `page`, `lts` (the local time of the hour) and
/// the partial counts `events` and `pageviews`.
fn rollup_scan(project: &str, start: i64, end: i64, tz: Tz, b: &mut Binder) -> String {
    // `local_us` shifts `ts`; here that is the hour, whose events share one offset.
    let lts = local_us(tz, start, end);
    let project = b.text(project);
    let (start, end) = (b.ts(start), b.ts(end));
    format!(
        "SELECT event, if(page_null = 1, NULL, page_key) AS page, {lts} AS lts, events, pageviews \
         FROM (SELECT event, page_key, page_null, hour AS ts, events, pageviews FROM events_hourly \
               WHERE project_id = {project} AND hour >= {start} AND hour < {end}) AS h"
    )
}

/// `x` rounded to `digits` decimals as DuckDB's `round` does for the non-negative values
/// it is used on here (half away from zero; ClickHouse's own rounds floats half to even).
fn round_half_up(x: &str, digits: u32) -> String {
    let scale = 10u64.pow(digits);
    if digits == 0 {
        format!("floor({x} + 0.5)")
    } else {
        format!("floor({x} * {scale} + 0.5) / {scale}")
    }
}

/// DuckDB's `quantile_cont(v, q)`: linear interpolation between the closest ranks of the
/// numbers among `v`, NULL without any.
fn quantile_cont(v: &str, q: f64) -> String {
    let a = format!("arraySort(groupArray({v}))");
    let pos = format!("((length({a}) - 1) * {q:?})");
    let at = |i: String| format!("arrayElement({a}, toUInt64({i}) + 1)");
    format!(
        "if(length({a}) = 0, CAST(NULL AS Nullable(Float64)), \
         toNullable({lo} + ({pos} - floor({pos})) * ({hi} - {lo})))",
        lo = at(format!("floor({pos})")),
        hi = at(format!("ceil({pos})")),
    )
}

/// The metrics that need each person's events cut into visits.
fn is_visit_metric(m: &str) -> bool {
    matches!(
        m,
        "visits" | "bounce_rate" | "visit_duration" | "views_per_visit"
    )
}

/// A `stats` query over `[start, end)` as ClickHouse SQL: columns `d<i>...`, `m<i>...`,
/// one row per group, every group, in the requested order.
///
/// Two plans, as on DuckDB: counts over the events (read from the hourly rollup where
/// that is exact), or, for visit metrics and the entry/exit page, the visit plan: each
/// person's events cut into visits (the session id, else 30 minutes of silence ends
/// one), then filtered, then counted per visit.
pub(crate) fn stats_sql(
    q: StatsParts<'_>,
    project: &str,
    start: i64,
    end: i64,
) -> Result<tally_store::Sql, QueryError> {
    let mut b = Binder::numbered();
    let visits = q.metrics.iter().any(|m| is_visit_metric(m))
        || q.dimensions
            .iter()
            .chain(q.filters.iter().flat_map(Filter::dimensions))
            .any(Dimension::needs_visits);
    let rollup = !visits && rollup_answers(&q, start, end);
    let goal = q.goal.map(|g| b.text(g));
    let dims = q
        .dimensions
        .iter()
        .enumerate()
        .map(|(i, d)| Ok(format!("{} AS d{i}", dimension(d)?)))
        .collect::<Result<Vec<_>, QueryError>>()?;
    let group: Vec<String> = (0..q.dimensions.len()).map(|i| format!("d{i}")).collect();
    let wheres = filters_sql(q.filters, &mut b)?;
    let where_ = where_of(&wheres);
    let people = |m: &str| matches!(m, "visitors" | "percentage" | "conversion_rate");
    let persons = reads_persons(q.dimensions) || filters_read_persons(q.filters);
    let unit = if visits || q.metrics.iter().any(|m| people(m)) {
        Unit::People
    } else {
        Unit::Events
    };
    let mut text = if visits {
        let scan = scan(project, start, end, q.tz, unit, persons, &mut b);
        // Each person's events without a session id in time order, a visit number
        // that grows after 30 minutes of silence, and the visit id DuckDB gives: the
        // session, else the person and that number. The gaps come from the times and the times shifted
        // by one, element by element: a lambda reading `evs` by position would get a
        // copy of them per event.
        let cut = format!(
            "SELECT person_id, tup.1 AS ts, tup.2 AS event, tup.3 AS type, tup.4 AS page, \
                    tup.5 AS properties, tup.6 AS context, tup.7 AS lts{traits_out}, \
                    if(isNotNull(tup.8), concat('s:', assumeNotNull(tup.8)), \
                       concat('v:', person_id, ':', toString(vn))) AS visit_id \
             FROM (SELECT person_id, \
                          arraySort(x -> x.1, groupArray(tuple(ts, event, type, page, properties, context, lts, session_id{traits_in}))) AS evs, \
                          arrayMap(x -> x.1, evs) AS tss, \
                          arrayCumSum(arrayMap((i, t, prev) -> if(i = 1 OR t - prev > {timeout}, 1, 0), \
                                               arrayEnumerate(tss), tss, arrayPushFront(arrayPopBack(tss), 0))) AS vns \
                   FROM ({scan}) AS s GROUP BY person_id, isNull(session_id)) AS g \
             ARRAY JOIN evs AS tup, vns AS vn",
            traits_in = if persons { ", person_traits" } else { "" },
            traits_out = if persons { ", tup.9 AS person_traits" } else { "" },
            timeout = i64::from(tally_store::duckdb::visits::VISIT_TIMEOUT_MINUTES) * 60_000_000,
        );
        let per_visit = format!(
            "SELECT visit_id, (max(ts) - min(ts)) / 1000000 AS visit_duration, \
                    countIf(type = 'page' OR event = 'page_visit') AS visit_pageviews, count() AS visit_events, \
                    argMinIf(page, ts, isNotNull(page)) AS entry_page, argMaxIf(page, ts, isNotNull(page)) AS exit_page, \
                    argMin(person_id, ts) AS visit_person \
             FROM ({cut}) AS c GROUP BY visit_id"
        );
        let converted = match &goal {
            Some(g) => format!("max(event = {g})"),
            None => "0".into(),
        };
        let visit_dims = if dims.is_empty() {
            String::new()
        } else {
            format!("{}, ", dims.join(", "))
        };
        // No alias here repeats a column's name (18.16 resolves it in the whole SELECT).
        let pv = format!(
            "SELECT {visit_dims}visit_id, any(visit_person) AS pid, any(visit_duration) AS vdur, \
                    any(visit_pageviews) AS vpv, any(visit_events) AS vev, count() AS n_events, \
                    countIf(type = 'page' OR event = 'page_visit') AS n_pageviews, {converted} AS conv \
             FROM ({cut}) AS c ANY LEFT JOIN ({per_visit}) AS v USING visit_id{where_} \
             GROUP BY {}visit_id",
            group.iter().map(|g| format!("{g}, ")).collect::<String>(),
        );
        let metrics = q
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let sql = match m.as_str() {
                    "visitors" => "uniqExact(pid)".to_owned(),
                    "visits" => "count()".to_owned(),
                    "events" => "sum(n_events)".to_owned(),
                    "pageviews" => "sum(n_pageviews)".to_owned(),
                    "views_per_visit" => round_half_up("sum(n_pageviews) / count()", 2),
                    "bounce_rate" => {
                        round_half_up("100.0 * avg(if(vpv <= 1 AND vev <= 1, 1, 0))", 0)
                    }
                    "visit_duration" => round_half_up("avg(vdur)", 0),
                    "percentage" => round_half_up(
                        &format!(
                            "100.0 * uniqExact(pid) / nullIf((SELECT uniqExact(pid) FROM ({pv}) AS all_visits), 0)"
                        ),
                        2,
                    ),
                    "conversion_rate" => round_half_up(
                        "100.0 * uniqExactIf(pid, conv = 1) / nullIf(uniqExact(pid), 0)",
                        2,
                    ),
                    other => return Err(unsupported(format!("the metric {other} with visits"))),
                };
                Ok(format!("{sql} AS m{i}"))
            })
            .collect::<Result<Vec<_>, QueryError>>()?;
        let select: Vec<String> = group.iter().chain(&metrics).cloned().collect();
        format!("SELECT {} FROM ({pv}) AS pv", select.join(", "))
    } else {
        let scan = if rollup {
            rollup_scan(project, start, end, q.tz, &mut b)
        } else {
            scan(project, start, end, q.tz, unit, persons, &mut b)
        };
        let metrics = q
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let number = |key: &str| format!("toFloat64OrNull({})", json_text("properties", key));
                let sql = match (m.as_str(), rollup) {
                    ("events", false) => "count()".to_owned(),
                    ("events", true) => "sum(events)".to_owned(),
                    ("visitors", _) => "uniqExact(person_id)".to_owned(),
                    ("pageviews", false) => "countIf(type = 'page' OR event = 'page_visit')".to_owned(),
                    ("pageviews", true) => "sum(pageviews)".to_owned(),
                    ("percentage", _) => round_half_up(
                        &format!(
                            "100.0 * uniqExact(person_id) / nullIf((SELECT uniqExact(person_id) FROM ({scan}) AS t{where_}), 0)"
                        ),
                        2,
                    ),
                    ("conversion_rate", _) => round_half_up(
                        &format!(
                            "100.0 * uniqExactIf(person_id, event = {}) / nullIf(uniqExact(person_id), 0)",
                            goal.as_deref().unwrap_or("NULL")
                        ),
                        2,
                    ),
                    (other, _) => match other.split_once(':') {
                        Some((f @ ("sum" | "avg" | "min" | "max"), key)) => {
                            format!("{f}({})", number(key))
                        }
                        Some((p @ ("p50" | "p90" | "p95" | "p99"), key)) => {
                            let q: f64 = p[1..].parse::<f64>().unwrap_or(50.0) / 100.0;
                            quantile_cont(&number(key), q)
                        }
                        _ => return Err(unsupported(format!("the metric {other}"))),
                    },
                };
                Ok(format!("{sql} AS m{i}"))
            })
            .collect::<Result<Vec<_>, QueryError>>()?;
        let select: Vec<String> = dims.iter().chain(&metrics).cloned().collect();
        format!("SELECT {} FROM ({scan}) AS s{where_}", select.join(", "))
    };
    if !q.dimensions.is_empty() {
        let mut order: Vec<String> = q
            .order
            .iter()
            .map(|(col, desc)| format!("{col} {}", if *desc { "DESC" } else { "ASC" }))
            .collect();
        // Ties break on the dimensions, NULLs last: the DuckDB compiler's order.
        order.extend(group.iter().map(|g| format!("isNull({g}) ASC, {g} ASC")));
        text.push_str(&format!(
            " GROUP BY {} ORDER BY {}",
            group.join(", "),
            order.join(", ")
        ));
    }
    Ok(b.finish(text))
}

/// One `trends` series over `[start, end)`: rows `(bucket label, breakdown..., value)`,
/// then `(NULL, breakdown..., value over the whole range)`, as the DuckDB compiler
/// answers. With a breakdown, values outside the `breakdown_limit` most frequent
/// combinations are folded into `$other`; a missing value is `(none)`.
pub(crate) struct TrendsSeries<'a> {
    pub math: &'a str,
    /// The property `sum`, `avg`, `min` and `max` aggregate.
    pub property: Option<&'a str>,
    pub matcher: &'a EventMatch,
    pub filters: &'a [Filter],
    pub breakdown: &'a [Dimension],
    pub breakdown_limit: u64,
    pub interval: Interval,
    pub week: WeekStart,
    pub tz: Tz,
}

pub(crate) fn trends_series_sql(
    q: TrendsSeries<'_>,
    project: &str,
    start: i64,
    end: i64,
) -> Result<tally_store::Sql, QueryError> {
    let number = || {
        let key = q.property.unwrap_or_default();
        format!("toFloat64OrNull({})", json_text("properties", key))
    };
    let agg = match q.math {
        "total" => "count()".to_owned(),
        "unique" | "dau" => "uniqExact(person_id)".to_owned(),
        "wau" => return rolling_sql(&q, project, start, end, 7),
        "mau" => return rolling_sql(&q, project, start, end, 30),
        // DuckDB's TRY_CAST: a value that is not a number counts as NULL, and the
        // aggregate of no numbers is NULL.
        "sum" | "avg" | "min" | "max" => format!("{}({})", q.math, number()),
        other => return Err(unsupported(format!("the trends math {other}"))),
    };
    let mut b = Binder::numbered();
    let where_ = where_clause(q.matcher, q.filters, &mut b)?;
    let unit = if matches!(q.math, "unique" | "dau") {
        Unit::People
    } else {
        Unit::Events
    };
    let persons =
        reads_persons(q.breakdown) || filters_read_persons(q.filters) || q.matcher.needs_persons();
    let scan = scan(project, start, end, q.tz, unit, persons, &mut b);
    let label = time_label(q.interval, q.week);
    if q.breakdown.is_empty() {
        let text = format!(
            "SELECT toNullable(bucket) AS bucket, value FROM \
               (SELECT {label} AS bucket, {agg} AS value FROM ({scan}) AS s{where_} GROUP BY bucket) \
             UNION ALL \
             SELECT CAST(NULL AS Nullable(String)), {agg} FROM ({scan}) AS s{where_}"
        );
        return Ok(b.finish(text));
    }
    let dims = q
        .breakdown
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Ok::<_, QueryError>(format!(
                "ifNull(toString({}), '(none)') AS b{i}",
                dimension(d)?
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = (0..q.breakdown.len()).map(|i| format!("b{i}")).collect();
    let names = names.join(", ");
    let base = format!("SELECT *, {} FROM ({scan}) AS s{where_}", dims.join(", "));
    let limit = b.int(q.breakdown_limit as i64);
    let top = format!(
        "(SELECT {names} FROM ({base}) AS t GROUP BY {names} ORDER BY count() DESC, {names} LIMIT {limit})"
    );
    let folded: Vec<String> = (0..q.breakdown.len())
        .map(|i| format!("if(({names}) IN {top}, b{i}, '$other') AS f{i}"))
        .collect();
    let fnames: Vec<String> = (0..q.breakdown.len()).map(|i| format!("f{i}")).collect();
    let fnames = fnames.join(", ");
    let folded_base = format!("SELECT *, {} FROM ({base}) AS fb", folded.join(", "));
    let text = format!(
        "SELECT toNullable(bucket) AS bucket, {fnames}, value FROM \
           (SELECT {label} AS bucket, {fnames}, {agg} AS value FROM ({folded_base}) AS x GROUP BY bucket, {fnames}) \
         UNION ALL \
         SELECT CAST(NULL AS Nullable(String)), {fnames}, {agg} FROM ({folded_base}) AS y GROUP BY {fnames}"
    );
    Ok(b.finish(text))
}

/// The `realtime` report's statements over `[start, end)`: rows of `(kind, key, visitors,
/// devices, events, pageviews)`, kind being `totals`, `page` (top 10), `event` (top 10)
/// or `minute`, as the DuckDB compiler's single statement answers.
pub(crate) fn realtime_sql(project: &str, start: i64, end: i64) -> Vec<tally_store::Sql> {
    let null = "CAST(NULL AS Nullable(UInt64))";
    let minute = "concat(replaceOne(toString(toDateTime(intDiv(lts, 1000000) - intDiv(lts, 1000000) % 60, 'UTC')), ' ', 'T'), 'Z')";
    [
        "SELECT 'totals', CAST(NULL AS Nullable(String)), uniqExact(person_id), uniqExact(device), \
                count(), countIf(type = 'page' OR event = 'page_visit') FROM ({scan}) AS s"
            .to_owned(),
        format!(
            "SELECT 'page', page, uniqExact(person_id) AS visitors, {null}, count(), {null} \
             FROM ({{scan}}) AS s WHERE isNotNull(page) GROUP BY page ORDER BY visitors DESC, page LIMIT 10"
        ),
        format!(
            "SELECT 'event', event, uniqExact(person_id), {null}, count() AS events, {null} \
             FROM ({{scan}}) AS s GROUP BY event ORDER BY events DESC, event LIMIT 10"
        ),
        format!(
            "SELECT 'minute', {minute} AS m, uniqExact(person_id), {null}, count(), {null} \
             FROM ({{scan}}) AS s GROUP BY m"
        ),
    ]
    .into_iter()
    .map(|text| {
        let mut b = Binder::numbered();
        let scan = scan(project, start, end, chrono_tz::UTC, Unit::People, false, &mut b);
        b.finish(text.replace("{scan}", &scan))
    })
    .collect()
}

/// The `events` kind: raw events of `[start, end)`, oldest first, one page; the columns
/// of the DuckDB compiler's, times as RFC 3339 UTC with microseconds.
/// A µs column as RFC 3339 UTC with microseconds (`2026-11-02T10:00:00.000000Z`), as
/// DuckDB's `strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ')` writes it.
pub(crate) fn iso_sql(col: &str) -> String {
    format!(
        "concat(replaceOne(toString(toDateTime(intDiv({col}, 1000000), 'UTC')), ' ', 'T'), '.', \
                substring(toString(1000000 + {col} % 1000000), 2), 'Z')"
    )
}

pub(crate) fn events_sql(
    project: &str,
    start: i64,
    end: i64,
    filters: &[Filter],
    limit: u64,
    offset: u64,
) -> Result<tally_store::Sql, QueryError> {
    let mut b = Binder::numbered();
    let wheres = filters_sql(filters, &mut b)?;
    let project = b.text(project);
    let (start, end) = (b.ts(start), b.ts(end));
    let filters = wheres
        .iter()
        .map(|w| format!(" AND {w}"))
        .collect::<String>();
    let text = format!(
        "SELECT {columns} \
         FROM events FINAL \
         WHERE project_id = {project} AND ts >= {start} AND ts < {end}{filters} \
         ORDER BY ts, lsn, uuid LIMIT {limit} OFFSET {offset}",
        columns = crate::events::event_columns_sql(tally_store::Dialect::ClickHouse),
        limit = b.int(limit as i64),
        offset = b.int(offset as i64),
    );
    Ok(b.finish(text))
}

/// A rolling count of people per day (`wau`: the 7 days ending that day, `mau`: 30),
/// as the DuckDB compiler answers it: rows `(day label, people)` for the days with
/// anyone, then `(NULL, people active in the range)`. 18.16 has no window functions:
/// each active (person, day) is spread over the `days` days whose window holds it.
fn rolling_sql(
    q: &TrendsSeries<'_>,
    project: &str,
    start: i64,
    end: i64,
    days: i64,
) -> Result<tally_store::Sql, QueryError> {
    let mut b = Binder::numbered();
    let lookback = (days - 1) * 86_400 * MICROS_PER_SEC;
    let where_ = where_clause(q.matcher, q.filters, &mut b)?;
    let persons = filters_read_persons(q.filters) || q.matcher.needs_persons();
    let scan = scan(
        project,
        start - lookback,
        end,
        q.tz,
        Unit::People,
        persons,
        &mut b,
    );
    let day_of = |t: i64| {
        let local =
            t + i64::from(time::offset_at(q.tz, t.div_euclid(MICROS_PER_SEC))) * MICROS_PER_SEC;
        local.div_euclid(86_400 * MICROS_PER_SEC)
    };
    let (first, last) = (b.int(day_of(start)), b.int(day_of(end - 1)));
    let active = format!(
        "SELECT DISTINCT person_id, intDiv(lts, 86400000000) AS d FROM ({scan}) AS s{where_}"
    );
    let text = format!(
        "SELECT toNullable(toString(toDate(n))) AS bucket, value FROM \
           (SELECT n, uniqExact(person_id) AS value FROM \
              (SELECT person_id, d + k AS n FROM ({active}) AS a ARRAY JOIN range({days}) AS k) \
            WHERE n >= {first} AND n <= {last} GROUP BY n) \
         UNION ALL \
         SELECT CAST(NULL AS Nullable(String)), uniqExact(person_id) FROM ({active}) AS t \
         WHERE d >= {first} AND d <= {last}"
    );
    Ok(b.finish(text))
}

/// What lifecycle and stickiness both take: the events counted, and the frame.
pub(crate) struct Targeted<'a> {
    pub unit: Unit,
    pub target: &'a EventMatch,
    pub filters: &'a [Filter],
    pub interval: Interval,
    pub week: WeekStart,
    pub tz: Tz,
}

/// The `stickiness` kind, counted per person: rows `(periods active, people)`.
pub(crate) fn stickiness_sql(
    q: Targeted<'_>,
    project: &str,
    start: i64,
    end: i64,
) -> Result<tally_store::Sql, QueryError> {
    let mut b = Binder::numbered();
    let where_ = where_clause(q.target, q.filters, &mut b)?;
    let persons = filters_read_persons(q.filters) || q.target.needs_persons();
    let scan = scan(project, start, end, q.tz, q.unit, persons, &mut b);
    let label = time_label(q.interval, q.week);
    let text = format!(
        "SELECT active, count() FROM \
           (SELECT person_id, uniqExact({label}) AS active FROM ({scan}) AS s{where_} GROUP BY person_id) \
         GROUP BY active ORDER BY active"
    );
    Ok(b.finish(text))
}

/// A bucket as a whole number (so neighbours are `± step`), the step, and its label
/// (`{n}` stands for the number).
fn bucket_number(interval: Interval, week: WeekStart) -> (String, i64, String) {
    let day = "intDiv(lts, 86400000000)";
    match interval {
        Interval::Minute => (
            "intDiv(lts, 60000000)".into(),
            1,
            "toString(toDateTime({n} * 60, 'UTC'))".into(),
        ),
        Interval::Hour => (
            "intDiv(lts, 3600000000)".into(),
            1,
            "toString(toDateTime({n} * 3600, 'UTC'))".into(),
        ),
        Interval::Day => (day.into(), 1, "toString(toDate({n}))".into()),
        Interval::Week => {
            let back = if week == WeekStart::Monday { 3 } else { 4 };
            (
                format!("{day} - ({day} + {back}) % 7"),
                7,
                "toString(toDate({n}))".into(),
            )
        }
        Interval::Month => (
            format!("toRelativeMonthNum(toDate({day}))"),
            1,
            "toString(addMonths(toDate('1970-01-01'), toInt32({n} - toRelativeMonthNum(toDate('1970-01-01')))))"
                .into(),
        ),
    }
}

/// The `lifecycle` kind, counted per person: rows `(label, status, count)` where status
/// is new (first bucket ever), returning (active the bucket before), resurrecting, or
/// dormant (active the bucket before, not in this one). One join per SELECT: 18.16
/// allows no more. An alias is visible in the whole SELECT, `USING` included, so no
/// alias here reuses a column's name (`n + 1 AS n` would join on `n + 1`).
pub(crate) fn lifecycle_sql(
    q: Targeted<'_>,
    project: &str,
    end: i64,
) -> Result<tally_store::Sql, QueryError> {
    let mut b = Binder::numbered();
    let where_ = where_clause(q.target, q.filters, &mut b)?;
    // All history: "new" means the first activity ever.
    let persons = filters_read_persons(q.filters) || q.target.needs_persons();
    let scan = scan(project, 0, end, q.tz, q.unit, persons, &mut b);
    let (bucket, step, label) = bucket_number(q.interval, q.week);
    let label = label.replace("{n}", "n");
    let acts = format!(
        "SELECT DISTINCT person_id AS agg, toInt64({bucket}) AS bk FROM ({scan}) AS s{where_}"
    );
    let text = format!(
        "SELECT {label} AS label, status, count() AS c FROM ( \
           SELECT n, multiIf(n = fb, 'new', has_prev = 1, 'returning', 'resurrecting') AS status FROM \
             (SELECT agg, bk AS n, fb FROM ({acts}) AS a \
              ANY LEFT JOIN (SELECT agg, min(bk) AS fb FROM ({acts}) AS a0 GROUP BY agg) AS f USING agg) AS af \
             ANY LEFT JOIN (SELECT agg, nb AS n, toUInt8(1) AS has_prev \
                            FROM (SELECT agg, bk + {step} AS nb FROM ({acts}) AS a1) AS p1) AS p USING (agg, n) \
           UNION ALL \
           SELECT n + {step} AS dn, 'dormant' AS status FROM \
             (SELECT agg, bk AS n FROM ({acts}) AS a2) AS cur \
             ANY LEFT JOIN (SELECT agg, pb AS n, toUInt8(1) AS has_next \
                            FROM (SELECT agg, bk - {step} AS pb FROM ({acts}) AS a3) AS n1) AS nx USING (agg, n) \
             WHERE has_next = 0 \
         ) AS st GROUP BY n, status"
    );
    Ok(b.finish(text))
}

fn filters_sql(filters: &[Filter], b: &mut Binder) -> Result<Vec<String>, QueryError> {
    filters.iter().map(|f| filter(f, b)).collect()
}

/// A matcher's conditions: its event name, then its filters.
fn matcher_conds(matcher: &EventMatch, b: &mut Binder) -> Result<Vec<String>, QueryError> {
    let mut conds = Vec::new();
    if let Some(event) = &matcher.event {
        conds.push(format!("event = {}", b.text(event)));
    }
    conds.extend(filters_sql(&matcher.filters, b)?);
    Ok(conds)
}

/// ` WHERE a AND b ...`, or nothing for no conditions.
fn where_of(conds: &[String]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// ` WHERE <event and filters>` for a matcher and the query-wide filters ("" for none).
fn where_clause(
    matcher: &EventMatch,
    filters: &[Filter],
    b: &mut Binder,
) -> Result<String, QueryError> {
    let mut conds = matcher_conds(matcher, b)?;
    conds.extend(filters_sql(filters, b)?);
    Ok(where_of(&conds))
}

/// A matcher's conditions as one SQL boolean (1 when there are none).
fn all_of(matcher: &EventMatch, b: &mut Binder) -> Result<String, QueryError> {
    let conds = matcher_conds(matcher, b)?;
    Ok(if conds.is_empty() {
        "1".into()
    } else {
        format!("({})", conds.join(" AND "))
    })
}

/// What a `retention` query asks, for the ClickHouse compiler.
pub(crate) struct RetentionParts<'a> {
    pub unit: Unit,
    pub target: &'a EventMatch,
    pub returning: &'a EventMatch,
    pub filters: &'a [Filter],
    /// First-time cohorts (first `target` event ever), else recurring.
    pub first_time: bool,
    pub intervals: u64,
    pub interval: Interval,
    pub week: WeekStart,
    pub tz: Tz,
}

/// The `retention` kind, counted per person: rows `(cohort label, interval, count)`,
/// interval 0 being the cohort's size.
pub(crate) fn retention_sql(
    q: RetentionParts<'_>,
    project: &str,
    start: i64,
    end: i64,
    scan_end: i64,
) -> Result<tally_store::Sql, QueryError> {
    let mut b = Binder::numbered();
    let t = all_of(q.target, &mut b)?;
    let r = all_of(q.returning, &mut b)?;
    let mut wheres = vec![format!("({t} OR {r})")];
    wheres.extend(filters_sql(q.filters, &mut b)?);
    // "First time" means first ever, so the history before the range counts.
    let scan_start = if q.first_time { 0 } else { start };
    let persons =
        filters_read_persons(q.filters) || q.target.needs_persons() || q.returning.needs_persons();
    let scan = scan(project, scan_start, scan_end, q.tz, q.unit, persons, &mut b);
    let (bucket, step, label) = bucket_number(q.interval, q.week);
    let (start, end) = (b.ts(start), b.ts(end));
    let ev = format!(
        "SELECT person_id AS agg, ts, toInt64({bucket}) AS bk, {t} AS is_t, {r} AS is_r \
         FROM ({scan}) AS s WHERE {}",
        wheres.join(" AND ")
    );
    let cohorts = if q.first_time {
        format!(
            "SELECT agg, argMin(bk, ts) AS cohort FROM ({ev}) AS e1 WHERE is_t GROUP BY agg \
             HAVING min(ts) >= {start} AND min(ts) < {end}"
        )
    } else {
        format!(
            "SELECT DISTINCT agg, bk AS cohort FROM ({ev}) AS e1 WHERE is_t AND ts >= {start} AND ts < {end}"
        )
    };
    let returns = format!("SELECT DISTINCT agg, bk FROM ({ev}) AS e2 WHERE is_r AND ts >= {start}");
    let n = b.int(q.intervals as i64);
    let text = format!(
        "SELECT {size_label} AS label, toInt64(0) AS i, count() AS c FROM ({cohorts}) AS c0 GROUP BY cohort \
         UNION ALL \
         SELECT {ret_label}, toInt64(intDiv(bk - cohort, {step})) AS i, uniqExact(agg) \
         FROM ({cohorts}) AS c1 ALL INNER JOIN ({returns}) AS r1 USING agg \
         WHERE bk > cohort AND intDiv(bk - cohort, {step}) < {n} GROUP BY cohort, i",
        size_label = label.replace("{n}", "cohort"),
        ret_label = label.replace("{n}", "cohort"),
    );
    Ok(b.finish(text))
}

/// What a `paths` query asks, for the ClickHouse compiler.
pub(crate) struct PathsParts<'a> {
    pub start_at: &'a EventMatch,
    pub filters: &'a [Filter],
    pub next: bool,
    pub pages: bool,
    pub depth: u64,
    pub tz: Tz,
}

/// The `paths` kind: rows `(step, from, to, people)` for steps 1..depth after (or
/// before) each person's first start event, and `(0, NULL, start item, people)`, in the
/// DuckDB compiler's order. Without window functions in 18.16, each person's events
/// become one array sorted by time; events at the same microsecond are ordered by item
/// here and by arrival on DuckDB, the one place the two can differ.
pub(crate) fn paths_sql(
    q: PathsParts<'_>,
    project: &str,
    start: i64,
    end: i64,
) -> Result<tally_store::Sql, QueryError> {
    let mut b = Binder::numbered();
    let is_start = all_of(q.start_at, &mut b)?;
    let mut wheres = Vec::new();
    wheres.extend(filters_sql(q.filters, &mut b)?);
    let (item, keep) = if q.pages {
        ("assumeNotNull(page)", "isNotNull(page)")
    } else {
        ("event", "1")
    };
    wheres.push(keep.to_owned());
    let persons = filters_read_persons(q.filters) || q.start_at.needs_persons();
    let scan = scan(project, start, end, q.tz, Unit::People, persons, &mut b);
    let depth = b.int(q.depth as i64);
    // Positions in the person's sorted events: the start `s`, the step's item and the
    // one before it on the path.
    let (to, from, in_range) = if q.next {
        ("s + k", "s + k - 1", "s + k <= length(evs)")
    } else {
        ("s - k", "s - k + 1", "s - k >= 1")
    };
    let people = format!(
        "SELECT person_id AS agg, \
                arraySort(x -> (x.1, x.2), groupArray(({ts_col}, {item}, toUInt8({is_start})))) AS evs, \
                arrayFirstIndex(x -> x.3 = 1, evs) AS s \
         FROM ({scan}) AS sc WHERE {wheres} GROUP BY person_id HAVING s > 0",
        ts_col = "ts",
        wheres = wheres.join(" AND "),
    );
    // ORDER BY after a UNION ALL would sort only its last SELECT: sort the whole.
    let text = format!(
        "SELECT * FROM ( \
           SELECT toInt64(k) AS step, toNullable(evs[{from}].2) AS prev, evs[{to}].2 AS item, count() AS c \
           FROM (SELECT *, arrayJoin(arrayMap(x -> x + 1, range(toUInt64({depth})))) AS k FROM ({people}) AS p1) AS p2 \
           WHERE {in_range} GROUP BY step, prev, item \
           UNION ALL \
           SELECT toInt64(0), CAST(NULL AS Nullable(String)), evs[s].2, count() FROM ({people}) AS p3 GROUP BY evs[s].2 \
         ) AS u ORDER BY step, c DESC, prev, item"
    );
    Ok(b.finish(text))
}

/// What an ordered `funnel` asks, for the ClickHouse compiler.
/// The aliased columns of a funnel's per-unit SELECT (over `evs`, the unit's events in
/// time order), with the lookup arrays they need.
#[derive(Default)]
struct Stages {
    columns: Vec<String>,
    indexed: std::collections::BTreeSet<String>,
}

impl Stages {
    fn push(&mut self, column: String) {
        self.columns.push(column);
    }

    /// Adds `column` (an alias of the same SELECT) once, under `name`.
    fn once(&mut self, name: &str, column: impl FnOnce() -> Vec<String>) {
        if self.indexed.insert(name.to_owned()) {
            self.columns.extend(column());
        }
    }

    /// `tss`: the unit's event times, in order.
    fn times(&mut self) -> &'static str {
        self.once("tss", || vec!["arrayMap(x -> x.1, evs) AS tss".into()]);
        "tss"
    }

    /// `fl<f>`: the unit's flag field `f`, one byte per event.
    fn flag(&mut self, f: usize) -> String {
        self.once(&format!("fl{f}"), || {
            vec![format!("arrayMap(x -> x.{f}, evs) AS fl{f}")]
        });
        format!("fl{f}")
    }

    /// For a condition on an event, two arrays per unit: `cnt_<name>[i]`, how many of the
    /// first i events meet it, and `pos_<name>`, the positions that do, both built
    /// element by element. The next such position after p is then `pos[cnt[p] + 1]`.
    fn index(&mut self, name: &str, cond: &dyn Fn(&str) -> String) {
        self.once(name, || {
            vec![
                format!(
                    "arrayCumSum(arrayMap(x -> toUInt64({}), evs)) AS cnt_{name}",
                    cond("x")
                ),
                format!(
                    "arrayFilter((i, x) -> {}, arrayEnumerate(evs), evs) AS pos_{name}",
                    cond("x")
                ),
            ]
        });
    }

    /// The first position after `p` (0: none, or `p` is 0) holding flag field `f`.
    fn after_flag(&mut self, f: usize, p: &str) -> String {
        let name = format!("f{f}");
        self.index(&name, &|e| format!("{e}.{f} = 1"));
        format!(
            "if({p} = 0, 0, if(cnt_{name}[{p}] < length(pos_{name}), pos_{name}[cnt_{name}[{p}] + 1], 0))"
        )
    }

    /// The first position at or after `p` (≥ 1) holding flag field `f`.
    fn at_or_after_flag(&mut self, f: usize, p: &str) -> String {
        let name = format!("f{f}");
        self.index(&name, &|e| format!("{e}.{f} = 1"));
        let flag = self.flag(f);
        // The events before p that hold it, then the next one.
        let before = format!("(cnt_{name}[{p}] - {flag}[{p}])");
        format!("if({before} < length(pos_{name}), pos_{name}[{before} + 1], 0)")
    }
}

pub(crate) struct FunnelParts<'a> {
    pub unit: Unit,
    pub steps: &'a [EventMatch],
    pub order: FunnelOrder,
    /// `(events, from step, to step)`: an attempt with one of these events after its
    /// `from` step and before its `to` step does not count (ordered and strict only).
    pub exclusions: &'a [(&'a EventMatch, usize, usize)],
    /// Each attempt is broken down by the value of the event `attribution` names.
    pub breakdown: Option<&'a Dimension>,
    pub attribution: Attribution,
    pub filters: &'a [Filter],
    /// Microseconds.
    pub window: i64,
    pub tz: Tz,
}

/// How a funnel's steps must follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FunnelOrder {
    /// Each step after the one before, other events between allowed.
    Ordered,
    /// Each step the very next event of the person.
    Strict,
    /// The steps in any order, within the window of the attempt's first event.
    Unordered,
}

/// A funnel with the DuckDB compiler's rules, counted per person or account:
///
/// - **ordered**: an attempt starts at every step-0 event; step k is the first step-k
///   event after step k-1's (without exclusions, only the last start before each step-1
///   event is followed, and the earliest start of its group that reaches as far takes
///   its place); **strict**: every step-0 event starts one, and step k must be the very next
///   event; either reaches step k if within `window` of the start, and is void if an
///   exclusion event comes after its `from` step and before its (reached) `to` step;
/// - **unordered**: every step or exclusion event starts an attempt; step k is the
///   first step-k event at or after the start, within `window`; the steps reached,
///   sorted by time, are the attempt's times.
///
/// Each unit's best attempt (highest level, then earliest start) counts, under the
/// breakdown value of the event `attribution` names. Rows: `(breakdown, c0..c{n-1}, arrays of t_k - t_{k-1} over
/// the units that reached step k)` — one row without breakdown, else one per value plus
/// the total (NULL) — in no order; medians and means are taken by the caller, exactly
/// as DuckDB's `median` and `avg` do. Each unit's events are one array sorted by time
/// (18.16 has no window functions), one subquery level per step; events at the same
/// microsecond are ordered by their flags here and by arrival on DuckDB.
pub(crate) fn funnel_sql(
    q: FunnelParts<'_>,
    project: &str,
    start: i64,
    end: i64,
) -> Result<tally_store::Sql, QueryError> {
    let n = q.steps.len();
    let m = q.exclusions.len();
    let mut b = Binder::numbered();
    let step_flags = q
        .steps
        .iter()
        .map(|s| all_of(s, &mut b).map(|c| format!("toUInt8({c})")))
        .collect::<Result<Vec<_>, _>>()?;
    let excl_flags = q
        .exclusions
        .iter()
        .map(|(x, _, _)| all_of(x, &mut b).map(|c| format!("toUInt8({c})")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut wheres = Vec::new();
    // A strict funnel needs every event, to know what came right after a step.
    if q.order != FunnelOrder::Strict {
        let any: Vec<String> = step_flags
            .iter()
            .chain(&excl_flags)
            .map(|f| format!("{f} = 1"))
            .collect();
        wheres.push(format!("({})", any.join(" OR ")));
    }
    wheres.extend(filters_sql(q.filters, &mut b)?);
    let persons = filters_read_persons(q.filters)
        || reads_persons(q.breakdown)
        || q.steps.iter().any(EventMatch::needs_persons)
        || q.exclusions.iter().any(|(x, _, _)| x.needs_persons());
    let scan = scan(project, start, end, q.tz, q.unit, persons, &mut b);
    let window = b.int(q.window);
    // Tuple fields: 1 = time, s_k = k + 2, x_i = n + 2 + i, breakdown = n + m + 2.
    let (sf, xf, bdf) = (|k: usize| k + 2, |i: usize| n + 2 + i, n + m + 2);
    // ClickHouse hands a lambda its own copy of every array the lambda reads besides its
    // arguments, once per element it maps: reading the unit's events (`evs`) from a
    // lambda over positions would copy them once per position. So lambdas here read
    // narrow arrays (times, one-byte flags, counts) and only over the starts, and the
    // events carry no breakdown value unless one is asked for.
    let (bd_field, bd_of_start) = match q.breakdown {
        Some(d) => (
            format!(", ifNull(toString({}), '(none)')", dimension(d)?),
            "bds[p0]",
        ),
        None => (String::new(), "''"),
    };
    let level_sql = format!(
        "SELECT person_id AS agg, arraySort(groupArray(tuple(ts, {flags}{bd_field}))) AS evs \
         FROM ({scan}) AS sc{where_} GROUP BY person_id",
        flags = step_flags
            .iter()
            .chain(&excl_flags)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        where_ = where_of(&wheres),
    );
    let mut stages = Stages::default();
    if q.breakdown.is_some() {
        stages.push(format!("arrayMap(x -> x.{bdf}, evs) AS bds"));
    }
    // As on DuckDB: without exclusions, an ordered funnel follows only the last start of
    // each group of starts with no step-1 event between them (the head), then takes the
    // group's earliest start that reaches as far (`qc`).
    let grouped = q.order == FunnelOrder::Ordered && q.exclusions.is_empty();
    // q0: the starts (the heads, when grouped).
    let starts = match q.order {
        FunnelOrder::Ordered if grouped => {
            // Over the events that are step 0 or 1 (`k` = 2·s0 + s1), a head is a step 0
            // whose next one is not step 0 only: element by element, with the kinds
            // shifted by one.
            let s1 = sf(1);
            stages.index("s01", &|e| format!("({e}.2 = 1 OR {e}.{s1} = 1)"));
            stages.push(format!(
                "arrayFilter(k -> k > 0, arrayMap(x -> x.2 * 2 + x.{s1}, evs)) AS kinds"
            ));
            "arrayFilter((p, k, kn) -> k >= 2 AND kn != 2, pos_s01, kinds, \
             arrayPushBack(arrayPopFront(kinds), 0))"
                .to_owned()
        }
        FunnelOrder::Ordered | FunnelOrder::Strict => {
            "arrayFilter((i, x) -> x.2 = 1, arrayEnumerate(evs), evs)".to_owned()
        }
        FunnelOrder::Unordered => "arrayEnumerate(evs)".to_owned(),
    };
    stages.push(format!("{starts} AS q0"));
    let mut times = Vec::new();
    let level;
    let mut void = "0".to_owned();
    if q.order == FunnelOrder::Unordered {
        // c_k: the time of the first step-k event at or after the start, within the
        // window, else a time after every other (sorted last).
        const NEVER: &str = "toInt64(9223372036854775807)";
        let tss = stages.times();
        let cs: Vec<String> = (0..n)
            .map(|k| {
                let pos = stages.at_or_after_flag(sf(k), "p");
                format!(
                    "if({pos} > 0 AND {tss}[{pos}] - {tss}[p] <= {window}, {tss}[{pos}], {NEVER})"
                )
            })
            .collect();
        stages.push(format!(
            "arrayMap(p -> arraySort([{}]), q0) AS cs",
            cs.join(", ")
        ));
        level = format!("arrayCount(t -> t != {NEVER}, c)");
        for k in 0..n {
            times.push(format!("c[{}]", k + 1));
        }
    } else {
        for k in 1..n {
            let next = match q.order {
                FunnelOrder::Strict => {
                    let flag = stages.flag(sf(k));
                    format!("if(p = 0, 0, if({flag}[p + 1] = 1, p + 1, 0))")
                }
                _ => stages.after_flag(sf(k), "p"),
            };
            stages.push(format!("arrayMap(p -> {next}, q{}) AS q{k}", k - 1));
        }
        for (i, (_, from_step, _)) in q.exclusions.iter().enumerate() {
            let next = stages.after_flag(xf(i), "p");
            stages.push(format!("arrayMap(p -> {next}, q{from_step}) AS xq{i}"));
        }
        let tss = stages.times();
        let reached = |k: usize| format!("(p{k} > 0 AND {tss}[p{k}] - {tss}[p0] <= {window})");
        if grouped {
            // The group runs from just after the step-1 event before the head (the head
            // alone if it is a step-1 event itself); its earliest start within the window
            // of the head's last reached step gets as far.
            let s1 = sf(1);
            let (fl0, fl1) = (stages.flag(2), stages.flag(s1));
            let lo = format!(
                "if({fl1}[p0] = 1, p0, if(cnt_f{s1}[p0] = 0, 1, pos_f{s1}[cnt_f{s1}[p0]] + 1))"
            );
            let bound_arms: String = (1..n)
                .rev()
                .map(|k| format!("{}, {tss}[p{k}] - {window}, ", reached(k)))
                .collect();
            let bound = format!("multiIf({bound_arms}toInt64(-9223372036854775807))");
            let params: Vec<String> = (0..n).map(|k| format!("p{k}")).collect();
            let arrays: Vec<String> = (0..n).map(|k| format!("q{k}")).collect();
            stages.push(format!(
                "arrayMap(({params}) -> {bound}, {arrays}) AS bnd",
                params = params.join(", "),
                arrays = arrays.join(", "),
            ));
            // The inner lambda reads only its slices and the scalar bound: a captured
            // array would be copied once per element of the slice.
            stages.push(format!(
                "arrayMap((p0, b) -> ({lo}) - 1 + arrayFirstIndex((t, f) -> f = 1 AND t >= b, \
                 arraySlice({tss}, {lo}, p0 - ({lo}) + 1), arraySlice({fl0}, {lo}, p0 - ({lo}) + 1)), \
                 q0, bnd) AS qc"
            ));
        }
        let arms: String = (1..n)
            .map(|k| format!("NOT {}, {k}, ", reached(k)))
            .collect();
        level = format!("multiIf({arms}{n})");
        for k in 0..n {
            times.push(if k == 0 {
                format!("{tss}[{}]", if grouped { "pc" } else { "p0" })
            } else {
                format!("if({}, {tss}[p{k}], 0)", reached(k))
            });
        }
        let voids: Vec<String> = q
            .exclusions
            .iter()
            .enumerate()
            .map(|(i, (_, _, to))| format!("({} AND x{i} > 0 AND x{i} < p{to})", reached(*to)))
            .collect();
        if !voids.is_empty() {
            void = format!("toUInt8({})", voids.join(" OR "));
        }
    }
    let bd_of_start = if grouped && q.breakdown.is_some() {
        "bds[pc]"
    } else {
        bd_of_start
    };
    let bd_of_attempt = match (q.breakdown, q.attribution) {
        (None, _) | (_, Attribution::FirstTouch | Attribution::Step(0)) => bd_of_start.to_owned(),
        (Some(_), Attribution::LastTouch) => {
            let arms: String = (1..n)
                .map(|k| format!("({level}) = {}, bds[p{k}], ", k + 1))
                .collect();
            format!("multiIf({arms}{bd_of_start})")
        }
        (Some(_), Attribution::Step(k)) => format!("if(({level}) > {k}, bds[p{k}], '(none)')"),
    };
    // Each attempt as (level, -t0, t0.., breakdown, void): the best is the greatest of
    // the attempts that are not void. Layout: t_k at k + 3, breakdown at n + 3. The
    // position arrays go in as lambda arguments.
    let (params, arrays): (Vec<String>, Vec<String>) = if q.order == FunnelOrder::Unordered {
        (
            vec!["p0".into(), "c".into()],
            vec!["q0".into(), "cs".into()],
        )
    } else {
        (0..n)
            .map(|k| (format!("p{k}"), format!("q{k}")))
            .chain((0..m).map(|i| (format!("x{i}"), format!("xq{i}"))))
            .chain(grouped.then(|| ("pc".to_owned(), "qc".to_owned())))
            .unzip()
    };
    let attempts = format!(
        "arrayFilter(a -> a.{v} = 0, arrayMap(({params}) -> tuple({level}, -{t0}, {times}, {bd_of_attempt}, {void}), \
         {arrays}))",
        v = n + 4,
        t0 = times[0],
        times = times.join(", "),
        params = params.join(", "),
        arrays = arrays.join(", "),
    );
    let best = format!(
        "SELECT agg, arrayReverseSort(att)[1] AS best FROM \
           (SELECT agg, evs, {stages}, {attempts} AS att FROM ({level_sql}) AS lv) AS la \
         WHERE length(att) > 0",
        stages = stages.columns.join(", "),
    );
    let mut cols = Vec::new();
    for k in 0..n {
        cols.push(format!("countIf(best.1 >= {})", k + 1));
    }
    for k in 1..n {
        cols.push(format!(
            "groupArrayIf(best.{tk} - best.{tp}, best.1 >= {l})",
            tk = k + 3,
            tp = k + 2,
            l = k + 1
        ));
    }
    let cols = cols.join(", ");
    let text = if q.breakdown.is_some() {
        format!(
            "SELECT CAST(NULL AS Nullable(String)) AS bd, {cols} FROM ({best}) AS bs \
             UNION ALL \
             SELECT toNullable(best.{b}) AS bd, {cols} FROM ({best}) AS bs GROUP BY bd",
            b = n + 3
        )
    } else {
        format!("SELECT CAST(NULL AS Nullable(String)) AS bd, {cols} FROM ({best}) AS bs")
    };
    Ok(b.finish(text))
}

/// The accounts view's activity: per account, from its events in `[scan_start, end)`
/// (an event's account as everywhere: its group, else its user's), rows `(account,
/// people active since d1, d7, d30, events since start, events of the previous period
/// (`[previous_start, start)`: the scan may reach further back, for MAU), last
/// event, first event, people with an event since start)`. The view itself (traits,
/// members, health, filters, order) is put together by the caller: 18.16 allows one
/// JOIN per SELECT, and an account list is small.
pub(crate) struct AccountsParts {
    pub scan_start: i64,
    pub previous_start: i64,
    pub start: i64,
    pub end: i64,
    pub since: [i64; 3],
    pub tz: Tz,
}

impl AccountsParts {
    /// The events of `[scan_start, end)` with their account (`person_id`) and person
    /// (`member`).
    fn scan(&self, project: &str, b: &mut Binder) -> String {
        scan(
            project,
            self.scan_start,
            self.end,
            self.tz,
            Unit::Accounts,
            false,
            b,
        )
    }
}

pub(crate) fn accounts_activity_sql(q: &AccountsParts, project: &str) -> tally_store::Sql {
    let mut b = Binder::numbered();
    let scan = q.scan(project, &mut b);
    let start = b.ts(q.start);
    let prev_start = b.ts(q.previous_start);
    let [d1, d7, d30] = q.since.map(|t| b.ts(t));
    let text = format!(
        "SELECT acct, countIf(last_ts >= {d1}), countIf(last_ts >= {d7}), countIf(last_ts >= {d30}), \
                sum(ev), sum(prev), max(last_ts), min(first_ts), groupArrayIf(member, ev > 0) \
         FROM (SELECT person_id AS acct, member, max(ts) AS last_ts, min(ts) AS first_ts, \
                      countIf(ts >= {start}) AS ev, countIf(ts < {start} AND ts >= {prev_start}) AS prev \
               FROM ({scan}) AS s GROUP BY acct, member) AS pa \
         GROUP BY acct"
    );
    b.finish(text)
}

/// The accounts known before `end`: `(account, current traits, created_at µs)`.
pub(crate) fn accounts_known_sql(project: &str, end: i64) -> tally_store::Sql {
    let mut b = Binder::numbered();
    let (p, end) = (b.text(project), b.ts(end));
    b.finish(format!(
        "SELECT group_id, argMax(traits, written_at), min(created_at) FROM groups \
         WHERE project_id = {p} GROUP BY group_id HAVING min(created_at) < {end}"
    ))
}

/// Accounts named on events before `end`: `(account, first, last event µs)`.
pub(crate) fn accounts_tagged_sql(project: &str, end: i64) -> tally_store::Sql {
    let mut b = Binder::numbered();
    let (p, end) = (b.text(project), b.ts(end));
    b.finish(format!(
        "SELECT assumeNotNull(group_id) AS g, min(ts), max(ts) FROM events FINAL \
         WHERE project_id = {p} AND isNotNull(group_id) AND ts < {end} \
           AND type NOT IN ('identify', 'group', 'alias') GROUP BY g"
    ))
}

/// The members of every account (or of `account`), with the time each was first seen:
/// `(account, user, first seen µs)`.
pub(crate) fn account_members_sql(project: &str, account: Option<&str>) -> tally_store::Sql {
    let mut b = Binder::numbered();
    let p = b.text(project);
    let one = account
        .map(|a| format!(" AND group_id = {}", b.text(a)))
        .unwrap_or_default();
    b.finish(format!(
        "SELECT group_id, user_id, min(first_seen) FROM group_members \
         WHERE project_id = {p}{one} GROUP BY group_id, user_id"
    ))
}

/// One account's activity per local day in `[start, end)`: `(day label, events,
/// people)`, for the days with any.
pub(crate) fn account_activity_sql(
    q: &AccountsParts,
    project: &str,
    account: &str,
) -> tally_store::Sql {
    let mut b = Binder::numbered();
    let scan = q.scan(project, &mut b);
    let (a, start) = (b.text(account), b.ts(q.start));
    b.finish(format!(
        "SELECT {day} AS d, count(), uniqExact(member) FROM ({scan}) AS s \
         WHERE person_id = {a} AND ts >= {start} GROUP BY d ORDER BY d",
        day = time_label(Interval::Day, WeekStart::Monday),
    ))
}

/// One account's people active in `[start, end)`: `(person, events, local days active,
/// last event µs)`.
pub(crate) fn account_people_sql(
    q: &AccountsParts,
    project: &str,
    account: &str,
) -> tally_store::Sql {
    let mut b = Binder::numbered();
    let scan = q.scan(project, &mut b);
    let (a, start) = (b.text(account), b.ts(q.start));
    b.finish(format!(
        "SELECT member, count(), uniqExact(intDiv(lts, 86400000000)), max(ts) FROM ({scan}) AS s \
         WHERE person_id = {a} AND ts >= {start} GROUP BY member"
    ))
}

/// The current traits of `users`: `(user, traits)`.
pub(crate) fn person_traits_sql(project: &str, users: &[String]) -> tally_store::Sql {
    let mut b = Binder::numbered();
    let p = b.text(project);
    let list: Vec<String> = users.iter().map(|u| b.text(u)).collect();
    let list = if list.is_empty() {
        "''".to_owned()
    } else {
        list.join(", ")
    };
    b.finish(format!(
        "SELECT user_id, argMax(traits, written_at) FROM persons \
         WHERE project_id = {p} AND user_id IN ({list}) GROUP BY user_id"
    ))
}
