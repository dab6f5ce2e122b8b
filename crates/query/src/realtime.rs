//! The `realtime` query: who is here right now. Reads the last N minutes up to the
//! moment of the query; never cached.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tally_store::{Dialect, Store};

use crate::common::{check_keys, num, uint_field, Scan};
use crate::time::MICROS_PER_SEC;
use crate::{Binder, QueryError};

pub(crate) struct RealtimeQuery {
    minutes: u64,
    now: i64,
}

impl RealtimeQuery {
    pub(crate) fn parse(obj: &Map<String, Value>, now: DateTime<Utc>) -> Result<Self, QueryError> {
        check_keys(obj, "", &["kind", "minutes"])?;
        Ok(Self {
            minutes: uint_field(obj, "minutes", "minutes", 5, 1, 60)?,
            now: now.timestamp_micros(),
        })
    }
}

impl crate::Report for RealtimeQuery {
    fn reads(&self) -> crate::Reads {
        // Never cached (`Plan::cacheable`); the last minutes, up to a little ahead.
        crate::Reads {
            from: self.now - self.minutes as i64 * 60 * crate::time::MICROS_PER_SEC,
            to: i64::MAX,
        }
    }

    fn normalized(&self) -> Value {
        json!({ "kind": "realtime", "minutes": self.minutes })
    }

    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        let start = self.now - self.minutes as i64 * 60 * MICROS_PER_SEC;
        let end = self.now + 60 * MICROS_PER_SEC;
        let rows = if store.dialect() == Dialect::ClickHouse {
            let mut rows = Vec::new();
            for sql in crate::clickhouse::realtime_sql(project, start, end) {
                rows.extend(store.query(&sql)?);
            }
            rows
        } else {
            let mut b = Binder::numbered();
            let scan = Scan {
                project,
                start: Some(start),
                // Events stamped a little in the future (client clocks) still count as now.
                end,
                tz: chrono_tz::UTC,
                local_range: (start, self.now),
                filters: &[],
                persons: false,
                accounts: false,
            }
            .sql(&mut b);
            let text = format!(
            "WITH e AS ({scan}) \
             SELECT 'totals', NULL, count(DISTINCT person_id), \
                    count(DISTINCT coalesce(device_id, visitor_id)), count(*), \
                    count(*) FILTER (WHERE type = 'page' OR event = 'page_visit') FROM e \
             UNION ALL (SELECT 'page', page, count(DISTINCT person_id), NULL, count(*), NULL FROM e \
                        WHERE page IS NOT NULL GROUP BY page ORDER BY 3 DESC, 2 LIMIT 10) \
             UNION ALL (SELECT 'event', event, count(DISTINCT person_id), NULL, count(*), NULL FROM e \
                        GROUP BY event ORDER BY 5 DESC, 2 LIMIT 10) \
             UNION ALL SELECT 'minute', strftime(date_trunc('minute', ts), '%Y-%m-%dT%H:%M:00Z'), \
                        count(DISTINCT person_id), NULL, count(*), NULL FROM e GROUP BY 2"
        );
            store.query(&b.finish(text))?
        };
        let totals = rows.iter().find(|r| r[0] == "totals");
        let pick = |kind: &str, key: &str, metric: &str, col: usize| -> Vec<Value> {
            let mut v: Vec<Value> = rows
                .iter()
                .filter(|r| r[0] == kind)
                .map(|r| json!({ key: r[1], metric: num(&r[col]) as u64 }))
                .collect();
            if kind == "minute" {
                v.sort_by(|a, b| a[key].as_str().cmp(&b[key].as_str()));
            }
            v
        };
        let total = |i: usize| totals.map(|r| num(&r[i]) as u64).unwrap_or(0);
        Ok(json!({
            "results": {
                "visitors": total(2),
                "devices": total(3),
                "events": total(4),
                "pageviews": total(5),
                "top_pages": pick("page", "page", "visitors", 2),
                "top_events": pick("event", "event", "events", 4),
                "per_minute": pick("minute", "minute", "events", 4),
            }
        }))
    }
}
