//! `POST /api/v1/query`: authenticate with a read key, run the query, answer JSON.
//!
//! Admission: at most `query.max_concurrent` queries run on the store at once, and at
//! most `query.max_queued` more wait for a turn; a query past both is refused at once
//! with 503 `too_busy` and `Retry-After`, so a burst of heavy dashboards cannot pile up
//! memory in the store or starve ingest of CPU. Every query has one time budget,
//! `query.timeout_ms`, for its wait and all its statements together: past it the
//! running statement is stopped and the answer is 503 `query_timeout`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tally_query::QueryError;
use tally_store::{Store, StoreError};

use crate::error::ApiError;
use crate::metrics::QUERY_SECONDS;
use crate::AppState;

/// A query is a small JSON object; a larger body is a mistake or an attack. 413 with
/// Tally's JSON error (docs/queries.md).
const MAX_QUERY_BODY_BYTES: usize = 1024 * 1024;

/// `?project=<id>`: which project, when the dashboard's session cookie authorizes.
#[derive(serde::Deserialize)]
pub(crate) struct Target {
    project: Option<String>,
}

pub(crate) async fn query(
    State(state): State<Arc<AppState>>,
    Query(target): Query<Target>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let project = state.authorize_read(&headers, &Method::POST, target.project.as_deref())?;
    let body = crate::ingest::read_body(
        body,
        &headers,
        MAX_QUERY_BODY_BYTES,
        StatusCode::PAYLOAD_TOO_LARGE,
        state.body_timeout(),
    )
    .await?;
    let request: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!(
                "malformed JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    // A label from the fixed list, never the client's text.
    let kind = match request.get("kind").and_then(Value::as_str) {
        None => "stats",
        Some(k) => tally_query::KINDS
            .iter()
            .copied()
            .find(|known| *known == k)
            .unwrap_or("unknown"),
    };
    let store = match &state.store {
        Some(store) => store.clone(),
        None => {
            return Err(ApiError::wrong_role(
                state.config.role,
                "answers no queries; send them to a query process",
            ))
        }
    };
    let start = Instant::now();
    let budget = Duration::from_millis(state.config.query.timeout_ms);
    let deadline = start + budget;
    let permit = state.admission.admit(deadline, budget).await?;
    let result = tokio::task::spawn_blocking(move || {
        // Held until the store is done, even if the client has gone.
        let _permit = permit;
        let store = Deadline {
            inner: store,
            until: deadline,
        };
        tally_query::run(&store, &project, &request, chrono::Utc::now())
    })
    .await
    .map_err(ApiError::internal)?;
    metrics::histogram!(QUERY_SECONDS, "kind" => kind).record(start.elapsed().as_secs_f64());
    match result {
        Ok(body) => Ok((StatusCode::OK, Json(body)).into_response()),
        Err(QueryError::Invalid { field, message }) => Err(ApiError::bad_request(
            "invalid_query",
            format!("{field}: {message}"),
        )
        .with_details(json!({ "field": field }))),
        Err(QueryError::Store(StoreError::Timeout(_))) => {
            metrics::counter!(QUERIES_REFUSED, "reason" => "timeout").increment(1);
            Err(timed_out(budget))
        }
        Err(QueryError::Unsupported(message)) => Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            message,
        )),
        Err(QueryError::Store(e)) => Err(ApiError::internal(e)),
    }
}

const QUERIES_REFUSED: &str = "tally_queries_refused_total";

fn timed_out(budget: Duration) -> ApiError {
    ApiError::unavailable(
        "query_timeout",
        format!(
            "the query took longer than its budget of {} ms (query.timeout_ms) and was stopped",
            budget.as_millis()
        ),
        1,
    )
}

/// The bound on queries at the store: `running` permits, and a short queue.
pub(crate) struct Admission {
    running: Arc<tokio::sync::Semaphore>,
    /// Queries running or waiting.
    inside: Arc<AtomicUsize>,
    max_inside: usize,
}

/// A turn at the store; gives its place back when dropped.
pub(crate) struct Permit {
    _running: tokio::sync::OwnedSemaphorePermit,
    _inside: Inside,
}

struct Inside(Arc<AtomicUsize>);

impl Drop for Inside {
    fn drop(&mut self) {
        let now = self.0.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("tally_queries_in_flight").set(now as f64);
    }
}

impl Admission {
    pub(crate) fn new(max_concurrent: usize, max_queued: usize) -> Self {
        Self {
            running: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
            inside: Arc::new(AtomicUsize::new(0)),
            max_inside: max_concurrent + max_queued,
        }
    }

    /// Waits for a turn until `deadline` (the end of the request's `budget`); refuses at
    /// once when the queue is full.
    async fn admit(&self, deadline: Instant, budget: Duration) -> Result<Permit, ApiError> {
        let before = self.inside.fetch_add(1, Ordering::AcqRel);
        let inside = Inside(self.inside.clone());
        if before >= self.max_inside {
            metrics::counter!(QUERIES_REFUSED, "reason" => "too_busy").increment(1);
            return Err(ApiError::unavailable(
                "too_busy",
                format!(
                    "{before} queries are running or waiting, the most this server takes \
                     (query.max_concurrent + query.max_queued); retry shortly"
                ),
                1,
            ));
        }
        metrics::gauge!("tally_queries_in_flight").set((before + 1) as f64);
        let acquire = self.running.clone().acquire_owned();
        match tokio::time::timeout_at(deadline.into(), acquire).await {
            Ok(Ok(running)) => Ok(Permit {
                _running: running,
                _inside: inside,
            }),
            Ok(Err(closed)) => Err(ApiError::internal(closed)),
            Err(_) => {
                metrics::counter!(QUERIES_REFUSED, "reason" => "timeout").increment(1);
                Err(timed_out(budget))
            }
        }
    }
}

/// The store, seen by one request: every statement ends by the request's deadline.
struct Deadline {
    inner: Arc<dyn Store>,
    until: Instant,
}

impl Store for Deadline {
    fn dialect(&self) -> tally_store::Dialect {
        self.inner.dialect()
    }

    fn rollups(&self) -> bool {
        self.inner.rollups()
    }

    fn committed_lsn(&self) -> Result<tally_store::Lsn, StoreError> {
        self.inner.committed_lsn()
    }

    fn insert(
        &self,
        batches: &[tally_model::StoredBatch<'_>],
        upto: tally_store::Lsn,
    ) -> Result<tally_store::InsertStats, StoreError> {
        self.inner.insert(batches, upto)
    }

    fn query(&self, sql: &tally_store::Sql) -> Result<tally_store::Rows, StoreError> {
        self.inner.query_until(sql, self.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_runs_a_bounded_number_queues_a_few_and_refuses_the_rest_at_once() {
        let admission = Arc::new(Admission::new(1, 1));
        let far = Instant::now() + Duration::from_secs(30);
        let first = admission
            .admit(far, Duration::from_secs(30))
            .await
            .expect("a free turn is taken");

        // The second waits in the queue...
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move {
                admission
                    .admit(far, Duration::from_secs(30))
                    .await
                    .map(|_| ())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the queued query waits for a turn");

        // ...and the third finds running and queue full: refused without waiting.
        let started = Instant::now();
        let refused = admission
            .admit(far, Duration::from_secs(30))
            .await
            .err()
            .expect("refused");
        assert!(started.elapsed() < Duration::from_millis(20));
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.code, "too_busy");
        assert_eq!(refused.retry_after_secs, Some(1));

        // The turn passes on when the running one ends.
        drop(first);
        waiting.await.unwrap().expect("the queued query ran");
        assert_eq!(admission.inside.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_wait_past_the_budget_ends_in_query_timeout() {
        let admission = Admission::new(1, 4);
        let _running = admission
            .admit(
                Instant::now() + Duration::from_secs(30),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        let budget = Duration::from_millis(30);
        let err = admission
            .admit(Instant::now() + budget, budget)
            .await
            .err()
            .expect("timed out");
        assert_eq!(err.code, "query_timeout");
        assert!(err.message.contains("budget of 30 ms"), "{}", err.message);
        assert_eq!(
            admission.inside.load(Ordering::Acquire),
            1,
            "its place is given back"
        );
    }

    #[test]
    fn a_deadline_that_has_passed_stops_the_next_statement() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            tally_store::duckdb::DuckStore::open(
                &dir.path().join("t.duckdb"),
                tally_store::duckdb::DuckConfig::default(),
            )
            .unwrap(),
        );
        let sql = tally_store::Sql {
            text: "SELECT 1".into(),
            params: vec![],
        };
        let live = Deadline {
            inner: store.clone(),
            until: Instant::now() + Duration::from_secs(10),
        };
        assert!(live.query(&sql).is_ok());
        let spent = Deadline {
            inner: store,
            until: Instant::now(),
        };
        assert!(matches!(spent.query(&sql), Err(StoreError::Timeout(_))));
    }
}
