//! `POST /api/v1/query`: authenticate with a read key, run the query, answer JSON.
//!
//! Answers come from the result cache when it holds a good one (cache.rs, and
//! docs/caching.md): `"refresh"` in the query, or `Cache-Control: no-cache`, says how
//! much the caller accepts; every answer carries a `cache` block, and cached ones an
//! `ETag` that `If-None-Match` turns into 304.
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
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tally_query::{Plan, QueryError};
use tally_store::{Store, StoreError};

use crate::cache::{self, Entry, Key, Refresh, Standing};
use crate::error::ApiError;
use crate::l2::{Lease, L2};
use crate::metrics::{QUERY_SECONDS, STORE_QUERIES, STORE_QUERY_SECONDS};
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
    let mut request: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!(
                "malformed JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    // `refresh` is for the cache, not part of the question (or its key).
    let asked = request.as_object_mut().and_then(|o| o.remove("refresh"));
    let mut refresh =
        Refresh::parse(asked.as_ref()).map_err(|message| invalid("refresh", message))?;
    if no_cache(&headers) {
        refresh = Refresh::Force;
    }
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
    let job = Job {
        state: state.clone(),
        store,
        project,
        budget,
        deadline: start + budget,
    };
    let plan = Arc::new(job.plan(request).await?);
    let kind = plan.kind();
    let response = if state.cache.enabled && plan.cacheable() {
        cached(job, plan, refresh, &headers).await
    } else {
        let (version, as_of) = state.cache.flushes.current();
        job.compute(plan.clone(), version, as_of)
            .await
            .map(|entry| {
                let block = cache_block(&entry, Source::Store, false, chrono::Utc::now());
                json_response(StatusCode::OK, cache::body_with(&entry, &block))
            })
    };
    metrics::histogram!(QUERY_SECONDS, "kind" => kind).record(start.elapsed().as_secs_f64());
    response
}

/// What one request needs to reach the store.
#[derive(Clone)]
struct Job {
    state: Arc<AppState>,
    store: Arc<dyn Store>,
    project: String,
    budget: Duration,
    deadline: Instant,
}

impl Job {
    /// Parses the query. Only `date_range: "all"` needs the store (the project's first
    /// event); that lookup takes no turn at the store, it is one small statement.
    async fn plan(&self, request: Value) -> Result<Plan, ApiError> {
        let now = chrono::Utc::now();
        let needs_store = std::cell::Cell::new(false);
        let quick = tally_query::plan(&request, now, || {
            needs_store.set(true);
            Ok(None)
        });
        if !needs_store.get() {
            return quick.map_err(|e| query_error(e, self.budget));
        }
        let job = self.clone();
        tokio::task::spawn_blocking(move || {
            let store = job.timed_store();
            tally_query::plan(&request, now, || {
                tally_query::first_event_time(&store, &job.project)
            })
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| query_error(e, self.budget))
    }

    fn timed_store(&self) -> Deadline {
        Deadline {
            inner: self.store.clone(),
            until: self.deadline,
        }
    }

    /// Runs `plan` on the store, after waiting for a turn. `version` and `as_of`: the
    /// data version current before it began, which the answer is at least as new as.
    async fn compute(
        &self,
        plan: Arc<Plan>,
        version: u64,
        as_of: chrono::DateTime<chrono::Utc>,
    ) -> Result<Arc<Entry>, ApiError> {
        let permit = self
            .state
            .admission
            .admit(self.deadline, self.budget)
            .await?;
        let kind = plan.kind();
        let job = self.clone();
        let start = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            // Held until the store is done, even if the client has gone.
            let _permit = permit;
            plan.execute(&job.timed_store(), &job.project)
                .map(|body| (body, plan.reads()))
        })
        .await
        .map_err(ApiError::internal)?;
        metrics::counter!(STORE_QUERIES, "kind" => kind).increment(1);
        metrics::histogram!(STORE_QUERY_SECONDS, "kind" => kind)
            .record(start.elapsed().as_secs_f64());
        let (body, reads) = result.map_err(|e| query_error(e, self.budget))?;
        let body = serde_json::to_vec(&body).map_err(ApiError::internal)?;
        Ok(Arc::new(Entry {
            body: body.into(),
            reads,
            version,
            data_as_of: as_of,
            computed_at: chrono::Utc::now(),
        }))
    }

    /// The entry for `key` after one computation at most for all the requests that
    /// ask for it at once: a request that finds another computing waits for its answer
    /// (in this process through L1, in others through a lease in L2). `good_enough` says
    /// which kept entry spares a computation. Where the entry came from.
    async fn single_flight(
        &self,
        key: Key,
        plan: Arc<Plan>,
        good_enough: fn(Standing) -> bool,
    ) -> Result<(Arc<Entry>, Source), ApiError> {
        let cache = &self.state.cache;
        let from_l2 = std::sync::atomic::AtomicBool::new(false);
        let from_l2 = &from_l2;
        let result = cache
            .l1
            .entry(key)
            .and_try_compute_with(|kept| async move {
                if let Some(kept) = kept {
                    let standing = cache.standing(&self.project, kept.value(), chrono::Utc::now());
                    if good_enough(standing) {
                        return Ok(moka::ops::compute::Op::Nop);
                    }
                }
                let entry = match &cache.l2 {
                    Some(l2) => {
                        let (entry, shared) =
                            self.shared_flight(l2, &key, plan, good_enough).await?;
                        from_l2.store(shared, Ordering::Relaxed);
                        entry
                    }
                    None => {
                        let (version, as_of) = cache.flushes.current();
                        self.compute(plan, version, as_of).await?
                    }
                };
                Ok::<_, ApiError>(moka::ops::compute::Op::Put(entry))
            })
            .await?;
        cache.record_size();
        use moka::ops::compute::CompResult;
        match result {
            CompResult::Unchanged(e) => {
                metrics::counter!("tally_cache_singleflight_waits_total").increment(1);
                Ok((e.into_value(), Source::L1))
            }
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) => {
                let source = if from_l2.load(Ordering::Relaxed) {
                    Source::L2
                } else {
                    Source::Store
                };
                Ok((e.into_value(), source))
            }
            CompResult::StillNone(_) | CompResult::Removed(_) => {
                Err(ApiError::internal("the cache kept no answer"))
            }
        }
    }

    /// One computation across processes: the process that gets the lease on `key`
    /// computes and keeps the answer in L2; the others wait for it there. Without
    /// Redis, or past the lease, this process computes. Whether the answer came from L2.
    async fn shared_flight(
        &self,
        l2: &L2,
        key: &Key,
        plan: Arc<Plan>,
        good_enough: fn(Standing) -> bool,
    ) -> Result<(Arc<Entry>, bool), ApiError> {
        let cache = &self.state.cache;
        let usable = |e: Entry| {
            let good = good_enough(cache.standing(&self.project, &e, chrono::Utc::now()));
            good.then(|| Arc::new(e))
        };
        let ttl = self.deadline.saturating_duration_since(Instant::now());
        let mut lease = l2.lease(key, ttl).await;
        if let Lease::Taken = lease {
            // Another process computes: wait for its answer while it holds the lease.
            let mut pause = Duration::from_millis(5);
            while Instant::now() + pause < self.deadline {
                tokio::time::sleep(pause).await;
                if let Some(e) = l2.get(key).await.and_then(usable) {
                    metrics::counter!("tally_cache_singleflight_waits_total").increment(1);
                    return Ok((e, true));
                }
                if !l2.leased(key).await {
                    lease = l2
                        .lease(key, self.deadline.saturating_duration_since(Instant::now()))
                        .await;
                    if !matches!(lease, Lease::Taken) {
                        break;
                    }
                }
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
        // Kept by another process between this request's look and its lease?
        if let Lease::Mine(_) = lease {
            if let Some(e) = l2.get(key).await.and_then(usable) {
                if let Lease::Mine(token) = &lease {
                    l2.release(key, token).await;
                }
                return Ok((e, true));
            }
        }
        let (version, as_of) = cache.flushes.current();
        let computed = self.compute(plan, version, as_of).await;
        if let Ok(entry) = &computed {
            l2.put(key, entry).await;
        }
        if let Lease::Mine(token) = &lease {
            l2.release(key, token).await;
        }
        Ok((computed?, false))
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Computed for this request.
    Store,
    L1,
    L2,
}

impl Source {
    fn layer(self) -> Value {
        match self {
            Source::Store => Value::Null,
            Source::L1 => "l1".into(),
            Source::L2 => "l2".into(),
        }
    }
}

/// Answers from the cache, computing when it has nothing good enough (module docs of
/// cache.rs).
async fn cached(
    job: Job,
    plan: Arc<Plan>,
    refresh: Refresh,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let cache = &job.state.cache;
    let key = Key::new(&job.project, &plan.normalized());
    cache.want(key, &job.project, &plan).await;
    let now = chrono::Utc::now();
    let kept = match refresh {
        Refresh::Force => None,
        _ => cache.l1.get(&key).await,
    };
    let mut kept = kept.map(|e| {
        let standing = cache.standing(&job.project, &e, now);
        (e, standing, Source::L1)
    });
    // Nothing good here: another query process may have it (L2).
    let good_here = matches!(kept, Some((_, s, _)) if s != Standing::Stale);
    if let (Some(l2), false, false) = (&cache.l2, good_here, refresh == Refresh::Force) {
        match l2.get(&key).await {
            Some(e) if kept.as_ref().is_none_or(|(k, _, _)| e.version > k.version) => {
                let e = Arc::new(e);
                let standing = cache.standing(&job.project, &e, now);
                count("l2", standing_result(standing));
                if standing != Standing::Stale {
                    cache.l1.insert(key, e.clone()).await;
                }
                kept = Some((e, standing, Source::L2));
            }
            Some(_) => count("l2", "stale"),
            None => count("l2", "miss"),
        }
    }
    let (entry, source, stale) = match (refresh, kept) {
        (Refresh::CacheOnly, None) => {
            count("l1", "miss");
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_cached",
                "no answer to this query is kept yet; ask with \"refresh\": \"auto\" to compute it",
            ));
        }
        (Refresh::CacheOnly, Some((e, standing, source))) => {
            (e, source, standing != Standing::Fresh)
        }
        (Refresh::StaleWhileRevalidate, Some((e, standing, source))) => {
            if standing != Standing::Fresh {
                let (job, plan) = (job.clone(), plan.clone());
                tokio::spawn(async move {
                    if let Err(e) = job.single_flight(key, plan, |s| s == Standing::Fresh).await {
                        tracing::warn!(error = %e.message, "background recompute failed");
                    }
                });
            }
            (e, source, standing != Standing::Fresh)
        }
        (Refresh::Auto, Some((e, standing, source))) if standing != Standing::Stale => {
            (e, source, standing == Standing::Recent)
        }
        (refresh, _) => {
            let good_enough: fn(Standing) -> bool = match refresh {
                Refresh::Force => |_| false,
                _ => |s| s != Standing::Stale,
            };
            let (e, source) = job.single_flight(key, plan, good_enough).await?;
            (e, source, false)
        }
    };
    // L1's count: a hit served from it, a stale entry served from it, or a miss (the
    // answer came from L2 or the store).
    count(
        "l1",
        match (source, stale) {
            (Source::L1, false) => "hit",
            (Source::L1, true) => "stale",
            _ => "miss",
        },
    );
    let now = chrono::Utc::now();
    let etag = cache::etag(&key, &entry);
    let max_age = cache
        .allowance(entry.reads, now)
        .saturating_sub(cache::age(&entry, now))
        .as_secs();
    let cache_headers = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, format!("private, max-age={max_age}")),
        (header::VARY, "authorization, x-api-key, cookie".to_owned()),
    ];
    if let Some(asked) = headers.get(header::IF_NONE_MATCH) {
        let matches = asked
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim() == etag))
            .unwrap_or(false);
        metrics::counter!("tally_cache_requests_total", "layer" => "http",
            "result" => if matches { "hit" } else { "miss" })
        .increment(1);
        if matches {
            return Ok((StatusCode::NOT_MODIFIED, cache_headers).into_response());
        }
    }
    let block = cache_block(&entry, source, stale, now);
    let mut response = json_response(StatusCode::OK, cache::body_with(&entry, &block));
    for (name, value) in cache_headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("ASCII header values"));
    }
    Ok(response)
}

/// The warmer (docs/caching.md): computes again the most asked answers that newer data
/// made stale, before anyone asks, so the next request finds them fresh. An answer past
/// its allowance (a closed range a late event touched) is due at once, after the flush
/// that touched it; one still within its allowance (a range that reaches now, under
/// steady ingest) only when the allowance is nearly over, since until then it may be
/// served as it is: computing it on every flush would spend the store on answers no one
/// is owed. A pass runs after each flush and each second. At most `cache.warm_keys` a
/// pass, one at a time, each through the usual single-flight (so a request asking
/// meanwhile waits for it rather than computing too) and admission; after each it pauses
/// so that it uses at most `cache.warm_share` of one core's time.
pub(crate) async fn warm(state: Arc<AppState>) {
    let Some(store) = state.store.clone() else {
        return;
    };
    let cache = &state.cache;
    let (keys, share) = (state.config.cache.warm_keys, state.config.cache.warm_share);
    let budget = Duration::from_millis(state.config.query.timeout_ms);
    loop {
        tokio::select! {
            // Flushes come in bursts: one pass for the burst.
            _ = cache.flushes.changed.notified() => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = chrono::Utc::now();
        let mut due = Vec::new();
        for (key, wanted) in cache.wanted.iter() {
            let Some(e) = cache.l1.get(&*key).await else {
                continue;
            };
            let owed = match cache.standing(&wanted.project, &e, now) {
                Standing::Fresh => false,
                Standing::Stale => true,
                Standing::Recent => {
                    let allowance = cache.allowance(e.reads, now);
                    cache::age(&e, now) + WARM_LEAD.max(allowance / 4) >= allowance
                }
            };
            if owed {
                due.push((wanted.asked.load(Ordering::Relaxed), *key, wanted));
            }
        }
        due.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (_, key, wanted) in due.into_iter().take(keys) {
            let job = Job {
                state: state.clone(),
                store: store.clone(),
                project: wanted.project.clone(),
                budget,
                deadline: Instant::now() + budget,
            };
            let start = Instant::now();
            match job
                .single_flight(key, wanted.plan.clone(), |s| s == Standing::Fresh)
                .await
            {
                Ok((_, Source::Store)) => {
                    metrics::counter!("tally_cache_warmer_runs_total").increment(1)
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e.message, "the warmer could not compute an answer")
                }
            }
            tokio::time::sleep(start.elapsed().mul_f64((1.0 - share) / share)).await;
        }
    }
}

/// How long before an answer's allowance runs out the warmer computes it again (or a
/// quarter of the allowance, if longer): a pass each second, and the computation's time.
const WARM_LEAD: Duration = Duration::from_secs(2);

fn count(layer: &'static str, result: &'static str) {
    metrics::counter!("tally_cache_requests_total", "layer" => layer, "result" => result)
        .increment(1);
}

fn standing_result(standing: Standing) -> &'static str {
    match standing {
        Standing::Fresh => "hit",
        Standing::Recent | Standing::Stale => "stale",
    }
}

/// `"cache"` in every answer: whether it came from the cache, and how old it is.
fn cache_block(
    entry: &Entry,
    source: Source,
    stale: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let age = cache::age(entry, now).as_millis() as f64 / 1000.0;
    json!({
        "hit": source != Source::Store,
        "layer": source.layer(),
        "computed_at": entry.computed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data_as_of": entry.data_as_of.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "age_s": age,
        "stale": stale,
    })
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

/// `Cache-Control: no-cache` from the client: compute now, as `"refresh": "force"`.
fn no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError::bad_request("invalid_query", format!("{field}: {message}"))
        .with_details(json!({ "field": field }))
}

fn query_error(e: QueryError, budget: Duration) -> ApiError {
    match e {
        QueryError::Invalid { field, message } => invalid(&field, message),
        QueryError::Store(StoreError::Timeout(_)) => {
            metrics::counter!(QUERIES_REFUSED, "reason" => "timeout").increment(1);
            timed_out(budget)
        }
        QueryError::Unsupported(message) => {
            ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", message)
        }
        QueryError::Store(StoreError::Failed(why)) => ApiError::unavailable(
            "store_failed",
            format!(
                "the store failed and cannot answer until Tally restarts (it is exiting): {why}"
            ),
            5,
        ),
        QueryError::Store(e) => ApiError::internal(e),
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
