//! What the benchmark binaries share.

/// Runs one statement on ClickHouse's HTTP interface at `url`; its answer, or the
/// server's error text.
pub fn clickhouse_sql(
    http: &reqwest::blocking::Client,
    url: &str,
    sql: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let r = http.post(url).body(sql.to_owned()).send()?;
    let ok = r.status().is_success();
    let text = r.text()?;
    if !ok {
        return Err(text.into());
    }
    Ok(text)
}
