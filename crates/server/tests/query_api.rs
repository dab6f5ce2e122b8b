//! The stats query over HTTP: answers worked out by hand for a small fixed dataset.

mod common;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Berlin switches from +01:00 to +02:00 at 2026-03-29T01:00:00Z.
async fn dst_dataset(s: &TestServer) {
    let e = |name: &str, user: &str, ts: &str, props: Value| json!({"event_name": name, "user_id": user, "timestamp": ts, "properties": props});
    let r = s
        .track(json!([
            e(
                "signed_up",
                "u1",
                "2026-03-28T22:30:00Z",
                json!({"plan": "pro", "page_path": "/signup"})
            ), // Berlin 28th 23:30
            e(
                "signed_up",
                "u2",
                "2026-03-28T23:30:00Z",
                json!({"plan": "free", "page_path": "/signup"})
            ), // Berlin 29th 00:30
            e(
                "page_visit",
                "u1",
                "2026-03-29T00:30:00Z",
                json!({"page_path": "/pricing"})
            ), // Berlin 29th 01:30 (+1)
            e(
                "page_visit",
                "u2",
                "2026-03-29T01:30:00Z",
                json!({"page_path": "/pricing/team"})
            ), // Berlin 29th 03:30 (+2)
            e(
                "feature_used",
                "u1",
                "2026-03-29T21:30:00Z",
                json!({"plan": "pro", "feature_name": "export"})
            ), // Berlin 29th 23:30
            e(
                "feature_used",
                "u3",
                "2026-03-29T22:30:00Z",
                json!({"feature_name": "Export CSV"})
            ), // Berlin 30th 00:30
        ]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    s.wait_for_events(6).await;
}

async fn ok(s: &TestServer, q: Value) -> Value {
    let r = s.query(q.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{q} → {}", r.body);
    r.body
}

#[tokio::test]
async fn days_follow_the_timezone_across_a_dst_switch() {
    let s = TestServer::start().await;
    dst_dataset(&s).await;
    let berlin = ok(
        &s,
        json!({
            "metrics": ["events", "visitors"],
            "date_range": ["2026-03-28", "2026-03-30"],
            "dimensions": ["time:day"],
            "timezone": "Europe/Berlin",
        }),
    )
    .await;
    assert_eq!(
        berlin["results"],
        json!([
            {"dimensions": ["2026-03-28"], "metrics": [1, 1]},
            {"dimensions": ["2026-03-29"], "metrics": [4, 2]},
            {"dimensions": ["2026-03-30"], "metrics": [1, 1]},
        ])
    );
    assert_eq!(
        berlin["query"]["date_range"],
        json!(["2026-03-28T00:00:00+01:00", "2026-03-30T23:59:59+02:00"])
    );
    let utc = ok(&s, json!({"metrics": ["events"], "date_range": ["2026-03-28", "2026-03-30"], "dimensions": ["time:day"]})).await;
    assert_eq!(
        utc["results"],
        json!([
            {"dimensions": ["2026-03-28"], "metrics": [2]},
            {"dimensions": ["2026-03-29"], "metrics": [4]},
        ])
    );
}

#[tokio::test]
async fn hours_skip_the_missing_hour_of_spring_forward() {
    let s = TestServer::start().await;
    dst_dataset(&s).await;
    let r = ok(
        &s,
        json!({
            "metrics": ["events"],
            "date_range": ["2026-03-29T00:00:00+01:00", "2026-03-29T05:00:00+02:00"],
            "dimensions": ["time:hour"],
            "timezone": "Europe/Berlin",
        }),
    )
    .await;
    assert_eq!(
        r["results"],
        json!([
            {"dimensions": ["2026-03-29 00:00:00"], "metrics": [1]},
            {"dimensions": ["2026-03-29 01:00:00"], "metrics": [1]},
            {"dimensions": ["2026-03-29 03:00:00"], "metrics": [1]},
        ])
    );
}

#[tokio::test]
async fn filters_breakdowns_and_ordering() {
    let s = TestServer::start().await;
    dst_dataset(&s).await;
    let range = json!(["2026-03-01", "2026-03-31"]);

    let r = ok(&s, json!({"metrics": ["events"], "date_range": range, "dimensions": ["event:props:plan"],
        "filters": [["is_not", "event:name", ["page_visit"]]], "order_by": [["events", "desc"], ["event:props:plan", "asc"]]})).await;
    assert_eq!(
        r["results"],
        json!([
            {"dimensions": ["pro"], "metrics": [2]},
            {"dimensions": ["free"], "metrics": [1]},
            {"dimensions": ["(none)"], "metrics": [1]},
        ])
    );

    let r = ok(
        &s,
        json!({"metrics": ["visitors", "events"], "date_range": range,
        "filters": [["contains", "event:props:feature_name", ["EXPORT"]]]}),
    )
    .await;
    assert_eq!(r["results"], json!([{"dimensions": [], "metrics": [2, 2]}]));

    let r = ok(
        &s,
        json!({"metrics": ["pageviews"], "date_range": range, "dimensions": ["event:page"],
        "filters": [["contains", "event:page", ["/pricing"]]]}),
    )
    .await;
    assert_eq!(
        r["results"],
        json!([
            {"dimensions": ["/pricing"], "metrics": [1]},
            {"dimensions": ["/pricing/team"], "metrics": [1]},
        ])
    );

    let r = ok(
        &s,
        json!({"metrics": ["events"], "date_range": range, "dimensions": ["event:name"],
        "pagination": {"limit": 1, "offset": 1}, "order_by": [["event:name", "asc"]]}),
    )
    .await;
    assert_eq!(
        r["results"],
        json!([{"dimensions": ["page_visit"], "metrics": [2]}])
    );

    let r = ok(
        &s,
        json!({"metrics": ["events"], "date_range": range, "dimensions": ["time:month"]}),
    )
    .await;
    assert_eq!(
        r["results"],
        json!([{"dimensions": ["2026-03-01"], "metrics": [6]}])
    );
    // Weeks start on Monday; in Berlin the last event falls on Monday the 30th.
    let r = ok(
        &s,
        json!({"metrics": ["events"], "date_range": range, "dimensions": ["time:week"]}),
    )
    .await;
    assert_eq!(
        r["results"],
        json!([{"dimensions": ["2026-03-23"], "metrics": [6]}])
    );
    let r = ok(
        &s,
        json!({"metrics": ["events"], "date_range": range, "dimensions": ["time:week"],
        "timezone": "Europe/Berlin"}),
    )
    .await;
    assert_eq!(
        r["results"],
        json!([
            {"dimensions": ["2026-03-23"], "metrics": [5]},
            {"dimensions": ["2026-03-30"], "metrics": [1]},
        ])
    );
}

#[tokio::test]
async fn the_normalized_query_is_echoed_with_defaults() {
    let s = TestServer::start().await;
    let r = ok(
        &s,
        json!({"metrics": ["visitors"], "date_range": "7d", "dimensions": ["event:name"]}),
    )
    .await;
    let q = &r["query"];
    assert_eq!(q["kind"], "stats");
    assert_eq!(q["timezone"], "UTC");
    assert_eq!(q["order_by"], json!([["visitors", "desc"]]));
    assert_eq!(q["pagination"], json!({"limit": 10000, "offset": 0}));
    let today = chrono::Utc::now().date_naive();
    let from = today - chrono::Duration::days(6);
    assert_eq!(
        q["date_range"],
        json!([
            format!("{from}T00:00:00+00:00"),
            format!("{today}T23:59:59+00:00")
        ])
    );
    assert_eq!(r["results"], json!([]));
}

#[tokio::test]
async fn invalid_queries_name_the_field() {
    let s = TestServer::start().await;
    let cases = [
        (json!({"date_range": "7d"}), "metrics"),
        (
            json!({"metrics": ["bounces"], "date_range": "7d"}),
            "metrics[0]",
        ),
        (
            json!({"metrics": ["events"], "date_range": "yesterday"}),
            "date_range",
        ),
        (
            json!({"metrics": ["events"], "date_range": ["2026-01-01T00:00:00", "2026-01-02"]}),
            "date_range[0]",
        ),
        (
            json!({"metrics": ["events"], "date_range": ["2026-02-01", "2026-01-01"]}),
            "date_range",
        ),
        (
            json!({"metrics": ["events"], "date_range": "7d", "timezone": "Mars/Olympus"}),
            "timezone",
        ),
        (
            json!({"metrics": ["events"], "date_range": "7d", "dimensions": ["event:colour"]}),
            "dimensions[0]",
        ),
        (
            json!({"metrics": ["events"], "date_range": "7d", "filters": [["like", "event:name", ["x"]]]}),
            "filters[0][0]",
        ),
        (
            json!({"metrics": ["events"], "date_range": "7d", "filters": [["is", "event:name", []]]}),
            "filters[0][2]",
        ),
        (
            json!({"metrics": ["events"], "date_range": "7d", "order_by": [["visitors", "desc"]]}),
            "order_by[0][0]",
        ),
        (
            json!({"metrics": ["events"], "date_range": "7d", "pagination": {"limit": 0}}),
            "pagination.limit",
        ),
        (
            json!({"metrics": ["events"], "date_range": "7d", "colour": "red"}),
            "colour",
        ),
        (
            json!({"kind": "funnels", "metrics": ["events"], "date_range": "7d"}),
            "kind",
        ),
    ];
    for (q, field) in cases {
        let r = s.query(q.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q} → {}", r.body);
        assert_eq!(r.body["error"], "invalid_query");
        assert_eq!(r.body["field"], field, "{q} → {}", r.body);
        assert!(
            r.body["message"].as_str().unwrap().starts_with(field),
            "{}",
            r.body
        );
    }
    let r = s
        .send(
            "/api/v1/query",
            Some(&s.read_key.clone()),
            "{\"metrics\": [",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"], "malformed_json");
}

#[tokio::test]
async fn projects_only_see_their_own_events() {
    let s = TestServer::start().await;
    let r = s
        .track(json!([{"event_name": "mine", "user_id": "u"}]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    s.wait_for_events(1).await;
    // A second project, added while the server runs, sees nothing of the first.
    let mut projects = tally_server::meta::Projects::load(&s.data_dir).unwrap();
    let other = projects.create_project("other").unwrap();
    projects.save(&s.data_dir).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = s
            .send(
                "/api/v1/query",
                Some(&other.read_key),
                json!({"metrics": ["events"], "date_range": "all"}).to_string(),
            )
            .await;
        if r.status == StatusCode::OK {
            assert_eq!(
                r.body["results"],
                json!([{"dimensions": [], "metrics": [0]}])
            );
            break;
        }
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        assert!(
            std::time::Instant::now() < deadline,
            "new key never picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The OpenAPI document is served, and it names every route the router serves for ingest
/// and queries and every query kind and stats metric the engine has, so it cannot drift
/// silently from the code. A new route belongs in `ROUTES` below and in src/openapi.json.
#[tokio::test]
async fn the_openapi_document_covers_every_route_and_query_kind() {
    const ROUTES: &[&str] = &[
        "/api/track",
        "/api/identify",
        "/api/group",
        "/api/page",
        "/v1/track",
        "/v1/identify",
        "/v1/page",
        "/v1/screen",
        "/v1/group",
        "/v1/alias",
        "/v1/batch",
        "/v1/import",
        "/e",
        "/i/v0/e",
        "/capture",
        "/track",
        "/engage",
        "/batch",
        "/decide",
        "/flags",
        "/api/v1/query",
        "/api/v1/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
        "/js/tally.js",
    ];
    const POSTHOG: &[&str] = &[
        "/e", "/i/v0/e", "/capture", "/track", "/engage", "/batch", "/decide", "/flags",
    ];
    let s = TestServer::start().await;
    let r = s
        .client
        .get(format!("{}/api/v1/openapi.json", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("cache-control"));
    let doc: Value = r.json().await.unwrap();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "openapi {version:?}");

    let paths = doc["paths"].as_object().expect("paths");
    let mut expected: Vec<String> = ROUTES.iter().map(|r| r.to_string()).collect();
    expected.extend(POSTHOG.iter().map(|r| format!("{r}/")));
    for route in &expected {
        assert!(
            paths.contains_key(route),
            "{route} is missing from openapi.json"
        );
    }
    // The other way round: every documented path and method is served (not the 404 or
    // 405 fallback), and the list above is the router's.
    for (path, item) in paths {
        for method in ["get", "post"] {
            if item.get(method).is_none() {
                continue;
            }
            let url = format!("{}{path}", s.base);
            let request = match method {
                "get" => s.client.get(url),
                _ => s.client.post(url).body("{}"),
            };
            let status = request.send().await.unwrap().status();
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but answers {status}"
            );
        }
    }

    let schemas = &doc["components"]["schemas"];
    let schema = |reference: &Value| -> Value {
        let name = reference["$ref"].as_str().unwrap();
        schemas[name.trim_start_matches("#/components/schemas/")].clone()
    };
    let body = &paths["/api/v1/query"]["post"]["requestBody"]["content"]["application/json"];
    let query = schema(&body["schema"]);
    let mut kinds: Vec<String> = query["oneOf"]
        .as_array()
        .expect("the query schema is a oneOf over the kinds")
        .iter()
        .map(|variant| {
            let kind = &schema(variant)["properties"]["kind"]["const"];
            kind.as_str()
                .expect("each variant has a kind const")
                .to_owned()
        })
        .collect();
    kinds.sort();
    let mut known: Vec<&str> = tally_query::KINDS.to_vec();
    known.sort_unstable();
    assert_eq!(kinds, known, "query kinds in openapi.json");

    let mut metrics: Vec<&str> = schemas["StatsMetric"]["anyOf"][0]["enum"]
        .as_array()
        .expect("StatsMetric lists the named metrics first")
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    metrics.sort_unstable();
    let mut known: Vec<&str> = tally_query::STATS_METRICS.to_vec();
    known.sort_unstable();
    assert_eq!(metrics, known, "stats metrics in openapi.json");
}

#[tokio::test]
async fn every_error_is_tallys_json_error_413_included() {
    let s = TestServer::start().await;
    // A query body over the 1 MiB limit, with and without a declared length.
    let big = format!(
        r#"{{"metrics": ["events"], "pad": "{}"}}"#,
        "x".repeat(2 << 20)
    );
    let key = s.read_key.clone();
    let r = s.send("/api/v1/query", Some(&key), big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert_eq!(r.body["error"], "body_too_large");
    assert_eq!(r.body["success"], false);

    // An extractor's own rejection (here a Segment call name that is not UTF-8 in the
    // path) and an unknown route answer JSON too.
    for (method, path) in [
        (reqwest::Method::POST, "/v1/%FF"),
        (reqwest::Method::GET, "/no/such/route"),
        (reqwest::Method::DELETE, "/api/track"),
    ] {
        let r = s
            .client
            .request(method.clone(), format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_client_error(),
            "{method} {path}: {}",
            r.status()
        );
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path} is not JSON: {text}"));
        assert_eq!(body["success"], false, "{method} {path}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}
