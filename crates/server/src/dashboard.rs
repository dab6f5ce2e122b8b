//! The dashboard: web/dist (TypeScript built by Vite) embedded by build.rs and served at
//! `/`. It is a static page that signs in through `POST /api/v1/login` and reads the
//! query API with the session cookie, so it needs nothing the API does not offer.
//!
//! `/`, `/login`, `/insights/*`, `/accounts`, `/events`, `/people` and `/settings` answer `index.html` (the page picks its
//! view from the path and the query string, so a link to any view opens cold);
//! `/assets/*` are the bundles, whose names carry a content hash, so they may be cached
//! for a year. A binary built without web/dist answers `/` with a page
//! that says how to build the dashboard.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));

/// Who may frame the page (nobody), and where scripts, styles and requests may go (this
/// server only). uPlot sets element styles from script, which needs no `unsafe-inline`
/// for scripts.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Tally: dashboard not built</title></head><body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\">\
<h1>The dashboard was not built</h1><p>This Tally binary was compiled without the dashboard's \
assets (<code>web/dist</code> was missing). The API works as usual.</p><p>To get the dashboard, \
build it and then the server: <code>(cd web &amp;&amp; npm ci &amp;&amp; npm run build)</code>, \
then <code>cargo build --release --locked</code>; <code>scripts/run.sh</code> does both.</p></body></html>";

fn find(path: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, t, b)| (*t, *b))
}

/// Was the binary built with the dashboard?
pub(crate) fn built() -> bool {
    find("/index.html").is_some()
}

pub(crate) async fn index() -> Response {
    let mut response = match find("/index.html") {
        Some((content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        None => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            NOT_BUILT,
        )
            .into_response(),
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

pub(crate) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (content_type, body) = find(&format!("/assets/{file}")).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            if built() {
                "no such dashboard asset"
            } else {
                "the dashboard was not built into this binary (web/dist was missing)"
            },
        )
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response())
}
