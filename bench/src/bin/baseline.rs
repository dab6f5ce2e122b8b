//! The ingest benchmark's baseline: an axum server whose `/api/track` reads the body and
//! answers 200 with the same JSON shape Tally sends, doing no other work. Tally's numbers
//! are reported as a ratio to this one, measured in the same run on the same machine.

use axum::body::Bytes;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".into());
    let app = Router::new().route(
        "/api/track",
        post(|_body: Bytes| async { Json(json!({"success": true, "accepted": 1})) }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
