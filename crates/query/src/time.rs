//! Dates and timezones without a timezone library in the database.
//!
//! The bundled DuckDB has no ICU, so local time is computed here: for a query's range we
//! list the UTC instants where the zone's offset changes (chrono-tz knows them), and the
//! SQL adds the right offset to `ts` with a CASE over those instants. Each local day is
//! then exactly the hours it had on the wall clock: a 23-hour day in spring and a 25-hour
//! day in autumn, neither duplicated nor missing.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use crate::QueryError;

pub(crate) const MICROS_PER_SEC: i64 = 1_000_000;

/// The offset from UTC, in seconds, that `tz` has at the UTC instant `secs`.
pub(crate) fn offset_at(tz: Tz, secs: i64) -> i32 {
    let utc = DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or_default();
    tz.offset_from_utc_datetime(&utc.naive_utc())
        .fix()
        .local_minus_utc()
}

/// The offsets in force over `[start, end)` (UTC seconds): the first element starts at
/// `start`, each later one at the instant its offset begins.
pub(crate) fn offset_segments(tz: Tz, start: i64, end: i64) -> Vec<(i64, i32)> {
    const DAY: i64 = 86_400;
    let mut segments = vec![(start, offset_at(tz, start))];
    let mut cur = start;
    while cur < end {
        let next = (cur + DAY).min(end);
        let off = segments.last().expect("never empty").1;
        if offset_at(tz, next) != off {
            // Find the first second in (cur, next] with the new offset.
            let (mut lo, mut hi) = (cur, next);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if offset_at(tz, mid) == off {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            segments.push((hi, offset_at(tz, hi)));
            cur = hi;
        } else {
            cur = next;
        }
    }
    segments
}

/// `ts` (a UTC TIMESTAMP column) shifted to local wall-clock time in `tz`, exact for
/// instants in `[start, end)` (UTC micros); outside it the nearest segment's offset holds.
///
/// The shift is integer arithmetic on epoch microseconds: on 10M rows it costs about a
/// quarter of what `ts + INTERVAL` does, and a zone at UTC over the range costs nothing.
pub(crate) fn local_ts_sql(tz: Tz, start: i64, end: i64) -> String {
    let segs = offset_segments(tz, start / MICROS_PER_SEC, end / MICROS_PER_SEC);
    if segs.len() == 1 {
        return match segs[0].1 {
            0 => "ts".to_owned(),
            off => format!(
                "make_timestamp(epoch_us(ts) + {})",
                i64::from(off) * MICROS_PER_SEC
            ),
        };
    }
    let mut case = String::from("CASE");
    for pair in segs.windows(2) {
        case.push_str(&format!(
            " WHEN ts < {} THEN {}",
            ts_literal(pair[1].0),
            i64::from(pair[0].1) * MICROS_PER_SEC
        ));
    }
    case.push_str(&format!(
        " ELSE {} END",
        i64::from(segs.last().expect("non-empty").1) * MICROS_PER_SEC
    ));
    format!("make_timestamp(epoch_us(ts) + {case})")
}

/// The UTC instant (micros) when the local day `date` starts in `tz`. Where midnight
/// does not exist (a DST gap at 00:00), the day starts at the first instant that does.
pub(crate) fn day_start(tz: Tz, date: NaiveDate) -> i64 {
    let mut local = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    for _ in 0..4 {
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                return t.timestamp() * MICROS_PER_SEC
            }
            LocalResult::None => local += Duration::minutes(30),
        }
    }
    tz.from_utc_datetime(&local).timestamp() * MICROS_PER_SEC
}

/// Today's date in `tz`.
pub(crate) fn today(tz: Tz, now: DateTime<Utc>) -> NaiveDate {
    now.with_timezone(&tz).date_naive()
}

/// `micros` (UTC) as an RFC 3339 time in `tz`, e.g. `2026-03-29T00:00:00+01:00`.
pub(crate) fn rfc3339_in(tz: Tz, micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// A SQL timestamp literal for a UTC instant in whole seconds. Only ever fed numbers we
/// computed, never user text.
pub(crate) fn ts_literal(secs: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or_default();
    format!("TIMESTAMP '{}'", t.naive_utc().format("%Y-%m-%d %H:%M:%S"))
}

/// A bound of an absolute date range: a date (`2026-11-01`) or a date-time with offset.
pub(crate) enum Bound {
    Date(NaiveDate),
    Instant(i64),
}

pub(crate) fn parse_bound(s: &str, field: &str) -> Result<Bound, QueryError> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(Bound::Date(d));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Bound::Instant(t.timestamp_micros()));
    }
    if NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").is_ok() {
        return Err(QueryError::invalid(
            field,
            format!("{s:?} has no UTC offset; write it as 2026-11-01T10:00:00+01:00 or Z"),
        ));
    }
    Err(QueryError::invalid(
        field,
        format!("{s:?} is not a date (YYYY-MM-DD) or an RFC 3339 date-time"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn berlin_spring_forward_is_found_to_the_second() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let segs = offset_segments(tz, utc("2026-03-28T00:00:00Z"), utc("2026-03-31T00:00:00Z"));
        assert_eq!(
            segs,
            vec![
                (utc("2026-03-28T00:00:00Z"), 3600),
                (utc("2026-03-29T01:00:00Z"), 7200)
            ]
        );
    }

    #[test]
    fn a_year_in_new_york_has_two_transitions() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let segs = offset_segments(tz, utc("2026-01-01T00:00:00Z"), utc("2027-01-01T00:00:00Z"));
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[1], (utc("2026-03-08T07:00:00Z"), -4 * 3600));
        assert_eq!(segs[2], (utc("2026-11-01T06:00:00Z"), -5 * 3600));
    }

    #[test]
    fn day_start_skips_a_midnight_that_does_not_exist() {
        // Chile's clocks jump from 00:00 to 01:00 on the first Sunday of September.
        let tz: Tz = "America/Santiago".parse().unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
        let start = day_start(tz, d) / MICROS_PER_SEC;
        assert_eq!(
            rfc3339_in(tz, start * MICROS_PER_SEC),
            "2026-09-06T01:00:00-03:00"
        );
    }

    #[test]
    fn bounds_accept_dates_and_offsets_and_refuse_naive_times() {
        assert!(matches!(parse_bound("2026-11-01", "f"), Ok(Bound::Date(_))));
        assert!(matches!(
            parse_bound("2026-11-01T10:00:00+01:00", "f"),
            Ok(Bound::Instant(_))
        ));
        let err = parse_bound("2026-11-01T10:00:00", "date_range[0]")
            .err()
            .unwrap();
        assert!(err.to_string().starts_with("date_range[0]: "), "{err}");
        assert!(parse_bound("yesterday", "f").is_err());
    }
}
