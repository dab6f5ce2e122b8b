//! The parsers every query kind shares: timezone, date range, string lists and
//! pagination, from the request's JSON. No SQL here, and no store access: the one range
//! that depends on the data (`"all"`) takes the project's first event time from the
//! caller, which may read it from the store or from a cache, and [`all_time`] turns it
//! into the range.

use chrono::{DateTime, Datelike, Duration, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::time::{self, Bound, MICROS_PER_SEC};
use crate::QueryError;

pub(crate) fn parse_timezone(v: Option<&Value>) -> Result<Tz, QueryError> {
    match v {
        None | Some(Value::Null) => Ok(Tz::UTC),
        Some(Value::String(s)) => s.parse().map_err(|_| {
            QueryError::invalid("timezone", format!("{s:?} is not an IANA timezone name"))
        }),
        Some(_) => Err(QueryError::invalid("timezone", "must be a string")),
    }
}

pub(crate) fn string_list(v: Option<&Value>, field: &str) -> Result<Vec<String>, QueryError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(QueryError::invalid(
                    format!("{field}[{i}]"),
                    "must be a string",
                )),
            })
            .collect(),
        Some(_) => Err(QueryError::invalid(field, "must be a list of strings")),
    }
}

/// A request's `date_range` as `[start, end)` in microseconds, the days taken in `tz`.
/// `first_event` is asked only for `"all"`.
pub(crate) fn parse_date_range(
    v: Option<&Value>,
    tz: Tz,
    now: DateTime<Utc>,
    first_event: impl FnOnce() -> Result<Option<i64>, QueryError>,
) -> Result<(i64, i64), QueryError> {
    let today = time::today(tz, now);
    let day_after = |d: chrono::NaiveDate| time::day_start(tz, d + Duration::days(1));
    let last_days = |n: i64| {
        Ok((
            time::day_start(tz, today - Duration::days(n - 1)),
            day_after(today),
        ))
    };
    match v {
        None => Err(QueryError::invalid(
            "date_range",
            "is required: \"day\", \"7d\", \"30d\", \"month\", \"all\", or [from, to]",
        )),
        Some(Value::String(preset)) => match preset.as_str() {
            "day" => last_days(1),
            "7d" => last_days(7),
            "28d" => last_days(28),
            "30d" => last_days(30),
            "91d" => last_days(91),
            "month" => {
                let first = today.with_day0(0).expect("day 1 exists");
                Ok((time::day_start(tz, first), day_after(today)))
            }
            "year" => {
                let first = today.with_ordinal0(0).expect("day 1 exists");
                Ok((time::day_start(tz, first), day_after(today)))
            }
            "all" => Ok(all_time(first_event()?, tz, now)),
            other => Err(QueryError::invalid(
                "date_range",
                format!(
                    "unknown preset {other:?}; use day, 7d, 28d, 30d, 91d, month, year, all, \
                     or [from, to]"
                ),
            )),
        },
        Some(Value::Array(pair)) if pair.len() == 2 => {
            let bound = |i: usize| -> Result<Bound, QueryError> {
                let field = format!("date_range[{i}]");
                match &pair[i] {
                    Value::String(s) => time::parse_bound(s, &field),
                    _ => Err(QueryError::invalid(field, "must be a string date")),
                }
            };
            let start = match bound(0)? {
                Bound::Date(d) => time::day_start(tz, d),
                Bound::Instant(t) => t,
            };
            // A date as the end means "through the end of that day".
            let end = match bound(1)? {
                Bound::Date(d) => day_after(d),
                Bound::Instant(t) => t + MICROS_PER_SEC,
            };
            if end <= start {
                return Err(QueryError::invalid(
                    "date_range",
                    "the end is before the start",
                ));
            }
            Ok((start, end))
        }
        Some(_) => Err(QueryError::invalid(
            "date_range",
            "must be a preset string or a list of two dates [from, to]",
        )),
    }
}

/// The range `"all"`: from the day of the project's first event (`None`: no events, so
/// today) through today, in `tz`.
pub(crate) fn all_time(first_event: Option<i64>, tz: Tz, now: DateTime<Utc>) -> (i64, i64) {
    let today = time::today(tz, now);
    let first = first_event.unwrap_or(now.timestamp_micros());
    let first_day = DateTime::<Utc>::from_timestamp_micros(first)
        .unwrap_or(now)
        .with_timezone(&tz)
        .date_naive();
    (
        time::day_start(tz, first_day.min(today)),
        time::day_start(tz, today + Duration::days(1)),
    )
}

pub(crate) fn parse_pagination_with(
    v: Option<&Value>,
    default_limit: u64,
    max_limit: u64,
) -> Result<(u64, u64), QueryError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok((default_limit, 0)),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(QueryError::invalid(
                "pagination",
                "must be {\"limit\": n, \"offset\": n}",
            ))
        }
    };
    let num = |k: &str, default: u64| -> Result<u64, QueryError> {
        match obj.get(k) {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                QueryError::invalid(format!("pagination.{k}"), "must be a whole number ≥ 0")
            }),
        }
    };
    if let Some(k) = obj.keys().find(|k| *k != "limit" && *k != "offset") {
        return Err(QueryError::invalid(
            format!("pagination.{k}"),
            "unknown key",
        ));
    }
    let limit = num("limit", default_limit)?;
    if limit == 0 || limit > max_limit {
        return Err(QueryError::invalid(
            "pagination.limit",
            format!("must be 1 to {max_limit}"),
        ));
    }
    Ok((limit, num("offset", 0)?))
}
