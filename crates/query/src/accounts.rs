//! The `accounts` query: ThriveStack's B2B view of each account (group).
//!
//! First seen and last active look at all history of events that name the account
//! (`group_id`) and at the group call; activity through membership only counts within
//! the scanned window (the previous period, or 30 days).
//!
//! For every account: its name (trait `name`, else ThriveStack's `account_name`), its users (members from group calls, plus anyone whose events
//! name the account), DAU / WAU / MAU at the end of the period, stickiness (DAU / MAU),
//! activity this period and in the period of equal length before it, the trend between
//! them, when it was last active, and a health status. With `account_id` the answer is
//! that account's users instead, and `activity`: its events and active people on each
//! local day of the range.
//!
//! Health, first rule that holds (thresholds in `health`, defaults in brackets):
//! - **New**: first seen within `new_days` [14] of the period's end.
//! - **Inactive**: no activity in the period.
//! - **Critical**: activity fell by `critical_drop` % [50] or more.
//! - **At Risk**: activity fell by `at_risk_drop` % [25] or more, or stickiness is below
//!   `min_stickiness` [0.1].
//! - **Healthy**: otherwise.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};
use tally_store::sql::json_key_path;
use tally_store::Store;

use crate::common::{check_keys, num, range_echo, Interval, Scan, WeekStart};
use crate::request::{parse_date_range, parse_pagination_with, parse_timezone, string_list};
use crate::time::MICROS_PER_SEC;
use crate::{Binder, QueryError};

const DAY: i64 = 86_400 * MICROS_PER_SEC;

const SORT_KEYS: &[&str] = &[
    "account_id",
    "name",
    "users",
    "dau",
    "wau",
    "mau",
    "stickiness",
    "events",
    "previous_events",
    "trend",
    "last_active",
    "health",
];

#[derive(Debug, Clone, PartialEq)]
struct Health {
    new_days: f64,
    critical_drop: f64,
    at_risk_drop: f64,
    min_stickiness: f64,
}

impl Health {
    fn parse(v: Option<&Value>) -> Result<Self, QueryError> {
        let mut h = Health {
            new_days: 14.0,
            critical_drop: 50.0,
            at_risk_drop: 25.0,
            min_stickiness: 0.1,
        };
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(h);
        };
        let obj = v
            .as_object()
            .ok_or_else(|| QueryError::invalid("health", "must be an object of thresholds"))?;
        check_keys(
            obj,
            "health",
            &[
                "new_days",
                "critical_drop",
                "at_risk_drop",
                "min_stickiness",
            ],
        )?;
        for (k, v) in obj {
            let x = v
                .as_f64()
                .filter(|x| *x >= 0.0 && x.is_finite())
                .ok_or_else(|| {
                    QueryError::invalid(format!("health.{k}"), "must be a number ≥ 0")
                })?;
            match k.as_str() {
                "new_days" => h.new_days = x,
                "critical_drop" => h.critical_drop = x,
                "at_risk_drop" => h.at_risk_drop = x,
                _ => h.min_stickiness = x,
            }
        }
        if h.at_risk_drop > h.critical_drop {
            return Err(QueryError::invalid(
                "health.at_risk_drop",
                "must not be above critical_drop",
            ));
        }
        Ok(h)
    }

    fn echo(&self) -> Value {
        json!({
            "new_days": self.new_days,
            "critical_drop": self.critical_drop,
            "at_risk_drop": self.at_risk_drop,
            "min_stickiness": self.min_stickiness,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum AccountField {
    Id,
    Health,
    Trait(String),
}

#[derive(Debug, Clone, PartialEq)]
struct AccountFilter {
    op: &'static str,
    field: AccountField,
    values: Vec<String>,
}

pub(crate) struct AccountsQuery {
    account_id: Option<String>,
    filters: Vec<AccountFilter>,
    order_by: Vec<(String, bool)>,
    health: Health,
    limit: u64,
    offset: u64,
    tz: Tz,
    start: i64,
    end: i64,
}

impl AccountsQuery {
    pub(crate) fn parse(
        obj: &Map<String, Value>,
        now: DateTime<Utc>,
        first_event: impl FnOnce() -> Result<Option<i64>, QueryError>,
    ) -> Result<Self, QueryError> {
        check_keys(
            obj,
            "",
            &[
                "kind",
                "date_range",
                "timezone",
                "account_id",
                "filters",
                "order_by",
                "health",
                "pagination",
            ],
        )?;
        let tz = parse_timezone(obj.get("timezone"))?;
        let date_range = obj.get("date_range").cloned().unwrap_or(json!("30d"));
        let (start, end) = parse_date_range(Some(&date_range), tz, now, first_event)?;
        let account_id = match obj.get("account_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(a)) if !a.is_empty() => Some(a.clone()),
            Some(_) => return Err(QueryError::invalid("account_id", "must be an account id")),
        };
        let (limit, offset) = parse_pagination_with(obj.get("pagination"), 100, 1_000)?;
        Ok(Self {
            account_id,
            filters: parse_account_filters(obj.get("filters"))?,
            order_by: parse_sort(obj.get("order_by"))?,
            health: Health::parse(obj.get("health"))?,
            limit,
            offset,
            tz,
            start,
            end,
        })
    }

    /// The previous period: as long as the period, just before it.
    fn previous_start(&self) -> i64 {
        self.start - (self.end - self.start)
    }

    /// From how far back the scan must read: the previous period, and 30 days for MAU.
    /// Only `[previous_start, start)` counts as the previous period's events.
    fn scan_start(&self) -> i64 {
        self.previous_start().min(self.end - 30 * DAY)
    }

    fn scan(&self, project: &str, b: &mut Binder) -> String {
        Scan {
            project,
            start: Some(self.scan_start()),
            end: self.end,
            tz: self.tz,
            local_range: (self.scan_start(), self.end),
            filters: &[],
            persons: false,
            accounts: true,
        }
        .sql(b)
    }

    pub(crate) fn compile(&self, project: &str) -> tally_store::Sql {
        let mut b = Binder::numbered();
        let scan = self.scan(project, &mut b);
        let p = b.text(project);
        let (start, end) = (b.ts(self.start), b.ts(self.end));
        let prev_start = b.ts(self.previous_start());
        let (d1, d7, d30) = (
            b.ts(self.end - DAY),
            b.ts(self.end - 7 * DAY),
            b.ts(self.end - 30 * DAY),
        );
        let h = &self.health;
        let new_since = b.ts(self.end - (h.new_days * DAY as f64) as i64);
        let mut wheres = Vec::new();
        for f in &self.filters {
            let expr = match &f.field {
                AccountField::Id => "account_id".to_owned(),
                AccountField::Health => "health".to_owned(),
                AccountField::Trait(t) => {
                    format!("json_extract_string(traits, {})", json_key_path(t))
                }
            };
            let values: Vec<String> = f.values.iter().map(|v| b.text(v)).collect();
            wheres.push(match f.op {
                "is" => format!("{expr} IN ({})", values.join(", ")),
                "is_not" => format!("({expr} IS NULL OR {expr} NOT IN ({}))", values.join(", ")),
                _ => format!(
                    "coalesce({}, false)",
                    values
                        .iter()
                        .map(|v| format!("contains(lower({expr}), lower({v}))"))
                        .collect::<Vec<_>>()
                        .join(" OR ")
                ),
            });
        }
        let where_ = if wheres.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", wheres.join(" AND "))
        };
        let order: Vec<String> = self
            .order_by
            .iter()
            .map(|(k, desc)| format!("{k} {} NULLS LAST", if *desc { "DESC" } else { "ASC" }))
            .chain(std::iter::once("account_id ASC".to_owned()))
            .collect();
        let (limit, offset) = (b.int(self.limit as i64), b.int(self.offset as i64));
        let text = format!(
            "WITH act AS (SELECT account_id, person_id, ts FROM ({scan}) e WHERE account_id IS NOT NULL), \
             pa AS (SELECT account_id, person_id, max(ts) AS last_ts, min(ts) AS first_ts, \
                      count(*) FILTER (WHERE ts >= {start}) AS ev, \
                      count(*) FILTER (WHERE ts < {start} AND ts >= {prev_start}) AS prev \
                    FROM act GROUP BY 1, 2), \
             m AS (SELECT account_id, \
                     count(*) FILTER (WHERE last_ts >= {d1}) AS dau, \
                     count(*) FILTER (WHERE last_ts >= {d7}) AS wau, \
                     count(*) FILTER (WHERE last_ts >= {d30}) AS mau, \
                     sum(ev) AS events, sum(prev) AS previous_events, \
                     max(last_ts) AS last_active, min(first_ts) AS first_event \
                   FROM pa GROUP BY 1), \
             known AS (SELECT group_id AS account_id, traits, created_at FROM groups \
                       WHERE project_id = {p} AND created_at < {end}), \
             tagged AS (SELECT group_id AS account_id, min(ts) AS first_tagged, max(ts) AS last_tagged \
                        FROM events WHERE project_id = {p} AND group_id IS NOT NULL AND ts < {end} \
                        AND type NOT IN ('identify', 'group', 'alias') GROUP BY 1), \
             accts AS (SELECT * FROM known UNION ALL \
                       SELECT account_id, NULL, first_event FROM m \
                       WHERE account_id NOT IN (SELECT account_id FROM known)), \
             members AS (SELECT account_id, count(DISTINCT uid) AS users FROM ( \
                           SELECT group_id AS account_id, user_id AS uid FROM group_members \
                           WHERE project_id = {p} AND first_seen < {end} \
                           UNION ALL SELECT account_id, person_id FROM pa WHERE ev > 0) \
                         GROUP BY 1), \
             acct_rows AS (SELECT a.account_id, coalesce(json_extract_string(a.traits, '$.name'), json_extract_string(a.traits, '$.account_name')) AS name, \
                        CAST(a.traits AS VARCHAR) AS traits_json, a.traits, \
                        least(a.created_at, coalesce(m.first_event, a.created_at), \
                              coalesce(t.first_tagged, a.created_at)) AS first_seen, \
                        coalesce(u.users, 0) AS users, coalesce(m.dau, 0) AS dau, \
                        coalesce(m.wau, 0) AS wau, coalesce(m.mau, 0) AS mau, \
                        CASE WHEN coalesce(m.mau, 0) = 0 THEN 0.0 \
                             ELSE round(m.dau / m.mau, 4) END AS stickiness, \
                        coalesce(m.events, 0) AS events, \
                        coalesce(m.previous_events, 0) AS previous_events, \
                        CASE WHEN coalesce(m.previous_events, 0) = 0 THEN NULL \
                             ELSE round((m.events - m.previous_events) * 100.0 / m.previous_events, 2) \
                        END AS trend, \
                        greatest(m.last_active, t.last_tagged) AS last_active \
                      FROM accts a LEFT JOIN m ON m.account_id = a.account_id \
                      LEFT JOIN tagged t ON t.account_id = a.account_id \
                      LEFT JOIN members u ON u.account_id = a.account_id), \
             scored AS (SELECT *, CASE \
                          WHEN first_seen >= {new_since} THEN 'New' \
                          WHEN events = 0 THEN 'Inactive' \
                          WHEN trend <= -{crit} THEN 'Critical' \
                          WHEN trend <= -{risk} OR stickiness < {stick} THEN 'At Risk' \
                          ELSE 'Healthy' END AS health FROM acct_rows) \
             SELECT account_id, name, traits_json, users, dau, wau, mau, stickiness, events, \
                    previous_events, trend, strftime(last_active, '%Y-%m-%dT%H:%M:%SZ'), \
                    strftime(first_seen, '%Y-%m-%dT%H:%M:%SZ'), health, count(*) OVER () \
             FROM scored {where_} ORDER BY {order} LIMIT {limit} OFFSET {offset}",
            crit = h.critical_drop,
            risk = h.at_risk_drop,
            stick = h.min_stickiness,
            order = order.join(", "),
        );
        b.finish(text)
    }

    /// One account's activity per local day: `(day label, events, people)`.
    fn compile_activity(&self, project: &str, account: &str) -> tally_store::Sql {
        let mut b = Binder::numbered();
        let scan = self.scan(project, &mut b);
        let a = b.text(account);
        let start = b.ts(self.start);
        let day = Interval::Day.label_sql(&Interval::Day.trunc_sql("lts", WeekStart::Monday));
        b.finish(format!(
            "SELECT {day} AS d, count(*), count(DISTINCT person_id) \
             FROM ({scan}) e WHERE account_id = {a} AND ts >= {start} GROUP BY d ORDER BY d"
        ))
    }

    /// Every local day of the range, oldest first, with the account's events and people
    /// that day (0 for a day without): `rows` as [`Self::compile_activity`] answers them.
    fn activity(&self, rows: &[Vec<Value>]) -> Value {
        let by_day: HashMap<&str, (u64, u64)> = rows
            .iter()
            .filter_map(|r| Some((r[0].as_str()?, (num(&r[1]) as u64, num(&r[2]) as u64))))
            .collect();
        Interval::Day
            .labels(self.tz, self.start, self.end, WeekStart::Monday)
            .into_iter()
            .map(|day| {
                let (events, people) = by_day.get(day.as_str()).copied().unwrap_or((0, 0));
                json!({ "day": day, "events": events, "people": people })
            })
            .collect()
    }

    fn compile_users(&self, project: &str, account: &str) -> tally_store::Sql {
        let mut b = Binder::numbered();
        let scan = self.scan(project, &mut b);
        let p = b.text(project);
        let a = b.text(account);
        let start = b.ts(self.start);
        let (limit, offset) = (b.int(self.limit as i64), b.int(self.offset as i64));
        let text = format!(
            "WITH act AS (SELECT person_id, ts, lts FROM ({scan}) e WHERE account_id = {a} AND ts >= {start}), \
             m AS (SELECT person_id, count(*) AS events, count(DISTINCT CAST(lts AS DATE)) AS days_active, \
                          max(ts) AS last_active FROM act GROUP BY 1), \
             ids AS (SELECT user_id AS person_id FROM group_members WHERE project_id = {p} AND group_id = {a} \
                     UNION SELECT person_id FROM m) \
             SELECT ids.person_id, CAST(pr.traits AS VARCHAR), coalesce(m.events, 0), \
                    coalesce(m.days_active, 0), strftime(m.last_active, '%Y-%m-%dT%H:%M:%SZ'), count(*) OVER () \
             FROM ids LEFT JOIN m ON m.person_id = ids.person_id \
             LEFT JOIN persons pr ON pr.project_id = {p} AND pr.user_id = ids.person_id \
             ORDER BY coalesce(m.events, 0) DESC, ids.person_id LIMIT {limit} OFFSET {offset}"
        );
        b.finish(text)
    }
}

impl crate::Report for AccountsQuery {
    fn reads(&self) -> crate::Reads {
        // Health compares windows before the range's end, and "new" asks whether an
        // account was seen before: its whole history.
        crate::Reads {
            from: i64::MIN,
            to: self.end,
        }
    }

    fn normalized(&self) -> Value {
        json!({
            "kind": "accounts",
            "account_id": self.account_id,
            "filters": self.filters.iter().map(|f| {
                let field = match &f.field {
                    AccountField::Id => "account:id".to_owned(),
                    AccountField::Health => "account:health".to_owned(),
                    AccountField::Trait(t) => format!("account:props:{t}"),
                };
                json!([f.op, field, f.values])
            }).collect::<Vec<_>>(),
            "order_by": self.order_by.iter()
                .map(|(k, d)| json!([k, if *d { "desc" } else { "asc" }])).collect::<Vec<_>>(),
            "health": self.health.echo(),
            "pagination": { "limit": self.limit, "offset": self.offset },
            "date_range": range_echo(self.tz, self.start, self.end),
            "timezone": self.tz.name(),
        })
    }

    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        if store.dialect() == tally_store::Dialect::ClickHouse {
            return self.execute_clickhouse(store, project);
        }
        if let Some(account) = &self.account_id {
            let rows = store.query(&self.compile_users(project, account))?;
            let total = rows.first().map(|r| num(&r[5]) as u64).unwrap_or(0);
            let users: Vec<Value> = rows
                .into_iter()
                .map(|r| {
                    json!({
                        "user_id": r[0],
                        "traits": parse_json(&r[1]),
                        "events": r[2],
                        "days_active": r[3],
                        "last_active": r[4],
                    })
                })
                .collect();
            let activity = self.activity(&store.query(&self.compile_activity(project, account))?);
            return Ok(json!({ "results": users, "total_rows": total, "activity": activity }));
        }
        let rows = store.query(&self.compile(project))?;
        let total = rows.first().map(|r| num(&r[14]) as u64).unwrap_or(0);
        let accounts: Vec<Value> = rows
            .into_iter()
            .map(|r| {
                json!({
                    "account_id": r[0],
                    "name": r[1],
                    "traits": parse_json(&r[2]),
                    "users": r[3],
                    "dau": r[4],
                    "wau": r[5],
                    "mau": r[6],
                    "stickiness": r[7],
                    "events": r[8],
                    "previous_events": r[9],
                    "trend": r[10],
                    "last_active": r[11],
                    "first_seen": r[12],
                    "health": r[13],
                })
            })
            .collect();
        Ok(json!({ "results": accounts, "total_rows": total }))
    }
}

/// One row of the accounts view, as the DuckDB compiler computes it.
struct AccountRow {
    account_id: String,
    name: Option<String>,
    traits: Option<String>,
    users: u64,
    dau: u64,
    wau: u64,
    mau: u64,
    stickiness: f64,
    events: u64,
    previous_events: u64,
    trend: Option<f64>,
    last_active: Option<i64>,
    first_seen: i64,
    health: &'static str,
}

/// A value of a sort key: numbers and texts order as in SQL, NULL last either way.
#[derive(PartialEq, PartialOrd)]
enum SortValue {
    Num(f64),
    Text(String),
}

impl AccountRow {
    fn sort_value(&self, key: &str) -> Option<SortValue> {
        use SortValue::{Num, Text};
        Some(match key {
            "account_id" => Text(self.account_id.clone()),
            "name" => Text(self.name.clone()?),
            "users" => Num(self.users as f64),
            "dau" => Num(self.dau as f64),
            "wau" => Num(self.wau as f64),
            "mau" => Num(self.mau as f64),
            "stickiness" => Num(self.stickiness),
            "events" => Num(self.events as f64),
            "previous_events" => Num(self.previous_events as f64),
            "trend" => Num(self.trend?),
            "last_active" => Num(self.last_active? as f64),
            _ => Text(self.health.to_owned()),
        })
    }

    /// The value an account filter compares (a trait as DuckDB's `json_extract_string`).
    fn field(&self, field: &AccountField) -> Option<String> {
        match field {
            AccountField::Id => Some(self.account_id.clone()),
            AccountField::Health => Some(self.health.to_owned()),
            AccountField::Trait(t) => trait_text(self.traits.as_deref()?, t),
        }
    }
}

/// `json_extract_string(traits, '$."key"')`: a string as is, any other value as its
/// JSON text, NULL when missing or null.
fn trait_text(traits: &str, key: &str) -> Option<String> {
    let v: Value = serde_json::from_str(traits).ok()?;
    match v.get(key)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// DuckDB's `round(x, digits)` on a double: half away from zero.
fn round_to(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

fn utc_text(micros: i64) -> Value {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| json!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string()))
        .unwrap_or(Value::Null)
}

impl AccountsQuery {
    /// The accounts view on ClickHouse: three aggregates from the store (activity per
    /// account, the accounts' current traits, the accounts named on events) and the
    /// memberships, put together here by the DuckDB compiler's rules (18.16 allows one
    /// JOIN per SELECT; an account list is small).
    fn execute_clickhouse(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        use crate::clickhouse as ch;
        let parts = ch::AccountsParts {
            scan_start: self.scan_start(),
            previous_start: self.previous_start(),
            start: self.start,
            end: self.end,
            since: [self.end - DAY, self.end - 7 * DAY, self.end - 30 * DAY],
            tz: self.tz,
        };
        let int = |v: &Value| num(v) as i64;
        let text = |v: &Value| v.as_str().map(str::to_owned);
        if let Some(account) = &self.account_id {
            return self.account_users_clickhouse(store, project, account, &parts);
        }
        struct Activity {
            dau: u64,
            wau: u64,
            mau: u64,
            events: u64,
            previous: u64,
            last: i64,
            first: i64,
        }
        let mut activity = HashMap::new();
        let mut users: HashMap<String, BTreeSet<String>> = HashMap::new();
        for r in store.query(&ch::accounts_activity_sql(&parts, project))? {
            let Some(id) = text(&r[0]) else { continue };
            let active = users.entry(id.clone()).or_default();
            for p in r[8].as_array().into_iter().flatten() {
                if let Some(p) = p.as_str() {
                    active.insert(p.to_owned());
                }
            }
            activity.insert(
                id,
                Activity {
                    dau: num(&r[1]) as u64,
                    wau: num(&r[2]) as u64,
                    mau: num(&r[3]) as u64,
                    events: num(&r[4]) as u64,
                    previous: num(&r[5]) as u64,
                    last: int(&r[6]),
                    first: int(&r[7]),
                },
            );
        }
        for r in store.query(&ch::account_members_sql(project, None))? {
            if let (Some(g), Some(u)) = (text(&r[0]), text(&r[1])) {
                if int(&r[2]) < self.end {
                    users.entry(g).or_default().insert(u);
                }
            }
        }
        let mut tagged = HashMap::new();
        for r in store.query(&ch::accounts_tagged_sql(project, self.end))? {
            if let Some(g) = text(&r[0]) {
                tagged.insert(g, (int(&r[1]), int(&r[2])));
            }
        }
        // Known accounts, then those only seen on events.
        let mut accounts: Vec<(String, Option<String>, i64)> = store
            .query(&ch::accounts_known_sql(project, self.end))?
            .into_iter()
            .filter_map(|r| Some((text(&r[0])?, text(&r[1]), int(&r[2]))))
            .collect();
        let known: HashSet<String> = accounts.iter().map(|(id, _, _)| id.clone()).collect();
        for (id, a) in &activity {
            if !known.contains(id) {
                accounts.push((id.clone(), None, a.first));
            }
        }
        let h = &self.health;
        let new_since = self.end - (h.new_days * DAY as f64) as i64;
        let mut rows: Vec<AccountRow> = accounts
            .into_iter()
            .map(|(id, traits, created)| {
                let a = activity.get(&id);
                let t = tagged.get(&id);
                let (dau, wau, mau) = a.map_or((0, 0, 0), |a| (a.dau, a.wau, a.mau));
                let (events, previous) = a.map_or((0, 0), |a| (a.events, a.previous));
                let name = traits
                    .as_deref()
                    .and_then(|t| trait_text(t, "name").or_else(|| trait_text(t, "account_name")));
                let first_seen = created
                    .min(a.map_or(created, |a| a.first))
                    .min(t.map_or(created, |t| t.0));
                let stickiness = if mau == 0 {
                    0.0
                } else {
                    round_to(dau as f64 / mau as f64, 4)
                };
                let trend = (previous != 0).then(|| {
                    round_to(
                        (events as f64 - previous as f64) * 100.0 / previous as f64,
                        2,
                    )
                });
                let last_active = match (a.map(|a| a.last), t.map(|t| t.1)) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    (x, y) => x.or(y),
                };
                let health = if first_seen >= new_since {
                    "New"
                } else if events == 0 {
                    "Inactive"
                } else if trend.is_some_and(|t| t <= -h.critical_drop) {
                    "Critical"
                } else if trend.is_some_and(|t| t <= -h.at_risk_drop)
                    || stickiness < h.min_stickiness
                {
                    "At Risk"
                } else {
                    "Healthy"
                };
                AccountRow {
                    users: users.get(&id).map_or(0, |u| u.len() as u64),
                    account_id: id,
                    name,
                    traits,
                    dau,
                    wau,
                    mau,
                    stickiness,
                    events,
                    previous_events: previous,
                    trend,
                    last_active,
                    first_seen,
                    health,
                }
            })
            .filter(|row| {
                self.filters.iter().all(|f| {
                    let v = row.field(&f.field);
                    match f.op {
                        "is" => v.is_some_and(|v| f.values.contains(&v)),
                        "is_not" => v.is_none_or(|v| !f.values.contains(&v)),
                        _ => v.is_some_and(|v| {
                            let v = v.to_lowercase();
                            f.values.iter().any(|x| v.contains(&x.to_lowercase()))
                        }),
                    }
                })
            })
            .collect();
        rows.sort_by(|a, b| {
            for (key, desc) in &self.order_by {
                let (x, y) = (a.sort_value(key), b.sort_value(key));
                let ord = match (x, y) {
                    (None, None) => std::cmp::Ordering::Equal,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (Some(x), Some(y)) => {
                        let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
                        if *desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            a.account_id.cmp(&b.account_id)
        });
        let total = rows.len();
        let page: Vec<Value> = rows
            .into_iter()
            .skip(self.offset as usize)
            .take(self.limit as usize)
            .map(|r| {
                json!({
                    "account_id": r.account_id,
                    "name": r.name,
                    "traits": r.traits.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok()).unwrap_or(json!({})),
                    "users": r.users,
                    "dau": r.dau,
                    "wau": r.wau,
                    "mau": r.mau,
                    "stickiness": r.stickiness,
                    "events": r.events,
                    "previous_events": r.previous_events,
                    "trend": r.trend,
                    "last_active": r.last_active.map_or(Value::Null, utc_text),
                    "first_seen": utc_text(r.first_seen),
                    "health": r.health,
                })
            })
            .collect();
        // As DuckDB's `count(*) OVER ()` on the page: 0 when the page is empty.
        let total = if page.is_empty() { 0 } else { total };
        Ok(json!({ "results": page, "total_rows": total }))
    }

    /// One account's people on ClickHouse: its members and everyone active for it in the
    /// range, with their events, days active and traits.
    fn account_users_clickhouse(
        &self,
        store: &dyn Store,
        project: &str,
        account: &str,
        parts: &crate::clickhouse::AccountsParts,
    ) -> Result<Value, QueryError> {
        use crate::clickhouse as ch;
        // Person -> (events, days active, last event).
        type Activity = (u64, u64, Option<i64>);
        let mut people: BTreeMap<String, Activity> = BTreeMap::new();
        for r in store.query(&ch::account_people_sql(parts, project, account))? {
            if let Some(p) = r[0].as_str() {
                people.insert(
                    p.to_owned(),
                    (
                        num(&r[1]) as u64,
                        num(&r[2]) as u64,
                        Some(num(&r[3]) as i64),
                    ),
                );
            }
        }
        for r in store.query(&ch::account_members_sql(project, Some(account)))? {
            if let Some(u) = r[1].as_str() {
                people.entry(u.to_owned()).or_insert((0, 0, None));
            }
        }
        let ids: Vec<String> = people.keys().cloned().collect();
        let traits: HashMap<String, String> = store
            .query(&ch::person_traits_sql(project, &ids))?
            .into_iter()
            .filter_map(|r| Some((r[0].as_str()?.to_owned(), r[1].as_str()?.to_owned())))
            .collect();
        let mut rows: Vec<(String, Activity)> = people.into_iter().collect();
        rows.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        let total = rows.len();
        let page: Vec<Value> = rows
            .into_iter()
            .skip(self.offset as usize)
            .take(self.limit as usize)
            .map(|(id, (events, days, last))| {
                json!({
                    "user_id": id,
                    "traits": traits.get(&id).and_then(|t| serde_json::from_str::<Value>(t).ok()).unwrap_or(json!({})),
                    "events": events,
                    "days_active": days,
                    "last_active": last.map_or(Value::Null, utc_text),
                })
            })
            .collect();
        let total = if page.is_empty() { 0 } else { total };
        let activity =
            self.activity(&store.query(&ch::account_activity_sql(parts, project, account))?);
        Ok(json!({ "results": page, "total_rows": total, "activity": activity }))
    }
}

fn parse_json(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or(json!({})),
        _ => json!({}),
    }
}

fn parse_sort(v: Option<&Value>) -> Result<Vec<(String, bool)>, QueryError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(vec![("events".into(), true)]),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(QueryError::invalid(
                "order_by",
                "must be a list of [key, \"asc\" | \"desc\"]",
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("order_by[{i}]");
            let pair = item
                .as_array()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| QueryError::invalid(&field, "must be [key, \"asc\" | \"desc\"]"))?;
            let key = pair[0]
                .as_str()
                .and_then(|k| SORT_KEYS.iter().find(|s| **s == k))
                .ok_or_else(|| {
                    QueryError::invalid(
                        format!("{field}[0]"),
                        format!("must be one of: {}", SORT_KEYS.join(", ")),
                    )
                })?;
            let desc = match pair[1].as_str() {
                Some("asc") => false,
                Some("desc") => true,
                _ => {
                    return Err(QueryError::invalid(
                        format!("{field}[1]"),
                        "must be \"asc\" or \"desc\"",
                    ))
                }
            };
            Ok(((*key).to_owned(), desc))
        })
        .collect()
}

fn parse_account_filters(v: Option<&Value>) -> Result<Vec<AccountFilter>, QueryError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(QueryError::invalid("filters", "must be a list of filters")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let field = format!("filters[{i}]");
            let parts = f.as_array().filter(|p| p.len() == 3).ok_or_else(|| {
                QueryError::invalid(
                    &field,
                    "an account filter is [operator, field, [values]], e.g. \
                     [\"is\", \"account:props:plan\", [\"pro\"]]",
                )
            })?;
            let op = match parts[0].as_str() {
                Some("is") => "is",
                Some("is_not") => "is_not",
                Some("contains") => "contains",
                _ => {
                    return Err(QueryError::invalid(
                        format!("{field}[0]"),
                        "operator must be \"is\", \"is_not\" or \"contains\"",
                    ))
                }
            };
            let name = parts[1].as_str().unwrap_or_default();
            let account_field = match name {
                "account:id" => AccountField::Id,
                "account:health" => AccountField::Health,
                _ => match name.strip_prefix("account:props:") {
                    Some(t) if !t.is_empty() && t.len() <= 200 => AccountField::Trait(t.to_owned()),
                    _ => {
                        return Err(QueryError::invalid(
                            format!("{field}[1]"),
                            "must be account:id, account:health or account:props:<trait>",
                        ))
                    }
                },
            };
            let values = string_list(Some(&parts[2]), &format!("{field}[2]"))?;
            if values.is_empty() || values.len() > 1_000 {
                return Err(QueryError::invalid(
                    format!("{field}[2]"),
                    "must list 1 to 1000 values",
                ));
            }
            Ok(AccountFilter {
                op,
                field: account_field,
                values,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints the SQL and parameters of the benchmark's accounts query, for profiling:
    /// `cargo test --release --workspace --lib -- --ignored --nocapture print_accounts_sql`.
    #[test]
    #[ignore]
    fn print_accounts_sql() {
        let req = json!({"kind": "accounts", "date_range": "30d"});
        let q = AccountsQuery::parse(req.as_object().unwrap(), Utc::now(), || Ok(None)).unwrap();
        let sql = q.compile("bench");
        println!("{}\n{:?}", sql.text, sql.params);
    }
}
