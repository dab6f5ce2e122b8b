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
//! that account's users instead.
//!
//! Health, first rule that holds (thresholds in `health`, defaults in brackets):
//! - **New**: first seen within `new_days` [14] of the period's end.
//! - **Inactive**: no activity in the period.
//! - **Critical**: activity fell by `critical_drop` % [50] or more.
//! - **At Risk**: activity fell by `at_risk_drop` % [25] or more, or stickiness is below
//!   `min_stickiness` [0.1].
//! - **Healthy**: otherwise.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};
use tally_store::sql::json_key_path;
use tally_store::Store;

use crate::common::{check_keys, num, range_echo, Scan};
use crate::stats::{parse_date_range, parse_pagination_with, parse_timezone, string_list};
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

    /// From how far back the scan must read: the previous period, and 30 days for MAU.
    fn scan_start(&self) -> i64 {
        (self.start - (self.end - self.start)).min(self.end - 30 * DAY)
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
                      count(*) FILTER (WHERE ts < {start}) AS prev \
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
            return Ok(json!({ "results": users, "total_rows": total }));
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
