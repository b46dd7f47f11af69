//! PostgreSQL result sets reach the caller row by row: reading a table far
//! larger than the memory the read may take does not load it whole.
//!
//! Needs the test server at `PERSIST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). The bound is checked on
//! the process's peak resident memory (reset just before the read), not on
//! time: a 100 MB result read whole (libpq's default) raises the peak by
//! more than 100 MB; read row by row, by a few MB.

use persist_core::backend::pg::{open, PgOptions};
use persist_core::backend::Statement;
use persist_core::{SqlType, Value};

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

#[test]
fn a_large_result_is_not_held_whole() {
    let url = std::env::var("PERSIST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let schema = format!("persist_rows_in_flight_{}", std::process::id());
    let mut conn = open(&PgOptions::new(url).schema(schema.clone())).unwrap();
    const ROWS: i64 = 100_000;
    const BODY: usize = 1000;
    conn.batch(&format!(
        "CREATE TABLE big (id BIGINT PRIMARY KEY, body TEXT NOT NULL);
         INSERT INTO big SELECT g, repeat('x', {BODY}) FROM generate_series(1, {ROWS}) g"
    ))
    .unwrap();

    // Peak resident memory from here on.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kb("VmRSS:");
    let (mut rows, mut bytes) = (0i64, 0usize);
    conn.query(
        &Statement::new("SELECT id, body FROM big ORDER BY id"),
        &[],
        &[SqlType::BigInt, SqlType::Text],
        &mut |row| {
            rows += 1;
            if let [Value::I64(id), Value::Text(body)] = &row[..] {
                assert_eq!(*id, rows);
                bytes += body.len();
            }
            Ok(())
        },
    )
    .unwrap();
    let peak = status_kb("VmHWM:");
    conn.batch(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .unwrap();

    assert_eq!(rows, ROWS);
    assert_eq!(bytes, ROWS as usize * BODY);
    let grew_mb = peak.saturating_sub(before) as f64 / 1024.0;
    let result_mb = bytes as f64 / (1024.0 * 1024.0);
    assert!(
        grew_mb < result_mb / 4.0,
        "reading a {result_mb:.0} MB result raised peak memory by {grew_mb:.1} MB"
    );
}
