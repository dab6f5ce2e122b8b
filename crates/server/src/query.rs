//! `POST /api/v1/query`: authenticate with a read key, run the query, answer JSON.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tally_query::QueryError;
use tally_store::StoreError;

use crate::error::ApiError;
use crate::meta::KeyKind;
use crate::metrics::QUERY_SECONDS;
use crate::AppState;

/// A query is a small JSON object; a larger body is a mistake or an attack. 413 with
/// Tally's JSON error (docs/queries.md).
const MAX_QUERY_BODY_BYTES: usize = 1024 * 1024;

pub(crate) async fn query(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let project = state.authenticate(&headers, KeyKind::Read)?;
    let body = crate::ingest::read_body(
        body,
        &headers,
        MAX_QUERY_BODY_BYTES,
        StatusCode::PAYLOAD_TOO_LARGE,
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
    let result = tokio::task::spawn_blocking(move || {
        tally_query::run(store.as_ref(), &project, &request, chrono::Utc::now())
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
        Err(QueryError::Store(StoreError::Timeout(t))) => Err(ApiError::unavailable(
            "query_timeout",
            format!(
                "the query ran longer than {} ms and was stopped",
                t.as_millis()
            ),
            1,
        )),
        Err(QueryError::Unsupported(message)) => Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            message,
        )),
        Err(QueryError::Store(e)) => Err(ApiError::internal(e)),
    }
}
