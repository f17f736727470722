//! Log lines and request records. Both are append-only, written in batches by the telemetry
//! writer, and pruned by age and count; queries go through indexes on function + id, time,
//! request id and trace id, so finding one request among millions is an index lookup.

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, params};
use stratus_store::{
    CaptureRecord, LogLine, LogQuery, LogStore, LogStream, RequestQuery, RequestRecord,
    RequestSummary, Result, SummaryQuery, Trigger,
};

use super::{SqliteStore, db};

fn json_err(e: serde_json::Error) -> stratus_store::StoreError {
    stratus_store::StoreError::Backend(format!("capture record: {e}"))
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    instance TEXT NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs(function, id);
CREATE INDEX IF NOT EXISTS logs_by_at ON logs(at);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    instance TEXT NOT NULL,
    trigger TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    queue_us INTEGER NOT NULL,
    init_us INTEGER,
    status INTEGER NOT NULL,
    error TEXT,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_function ON requests(function, id);
CREATE INDEX IF NOT EXISTS requests_by_start ON requests(start_ms);
CREATE INDEX IF NOT EXISTS requests_by_request_id ON requests(request_id);
CREATE INDEX IF NOT EXISTS requests_by_trace_id ON requests(trace_id);
-- The smallest record id that started in each minute: a time window's records all have ids at
-- or above the window's first minute's, so a windowed query reads a rowid range found here in
-- a few rows (instead of walking the window's entries of `requests_by_start` for `min(id)`).
CREATE TABLE IF NOT EXISTS request_minutes (
    minute INTEGER PRIMARY KEY,
    first_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    function TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_by_request_id ON captures(request_id);
CREATE INDEX IF NOT EXISTS captures_by_at ON captures(at_ms);
"#;

/// Creates the tables, and brings a database from before request records up to date.
pub(super) fn migrate(c: &Connection) -> rusqlite::Result<()> {
    let has_logs: bool = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'logs'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    if has_logs {
        let has_request_id: bool = c
            .query_row(
                "SELECT count(*) FROM pragma_table_info('logs') WHERE name = 'request_id'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)?;
        if !has_request_id {
            c.execute_batch("ALTER TABLE logs ADD COLUMN request_id TEXT")?;
        }
    }
    let has_minutes: bool = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'request_minutes'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    c.execute_batch(SCHEMA)?;
    if !has_minutes {
        // Records written before the table existed: one pass to index their minutes.
        c.execute_batch(
            "INSERT INTO request_minutes (minute, first_id)
             SELECT CASE WHEN start_ms >= 0 THEN start_ms / 60000 ELSE (start_ms - 59999) / 60000 END AS m, min(id)
             FROM requests GROUP BY m",
        )?;
    }
    // Created after the column exists on old databases too.
    c.execute_batch(
        "CREATE INDEX IF NOT EXISTS logs_by_request ON logs(request_id) WHERE request_id IS NOT NULL",
    )
}

/// `LIKE` pattern for a substring, with the wildcards in it escaped.
fn like(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

const RECORD_COLUMNS: &str = "id, request_id, trace_id, function, version, instance, trigger, method, path, start_ms, duration_us, queue_us, init_us, status, error, bytes_in, bytes_out";

/// The minute a record's start falls in (`request_minutes`' key).
fn minute(start_ms: i64) -> i64 {
    start_ms.div_euclid(60_000)
}

/// SQL for the smallest id a record that started at or after the bound's minute can have
/// (past every record when none did). Binds one parameter: the minute.
const FIRST_ID_FROM_MINUTE: &str = "(SELECT coalesce(min(first_id), (SELECT coalesce(max(id), 0) + 1 FROM requests)) FROM request_minutes WHERE minute >= ?)";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRecord> {
    Ok(RequestRecord {
        id: r.get(0)?,
        request_id: r.get(1)?,
        trace_id: r.get(2)?,
        function: r.get(3)?,
        version: r.get(4)?,
        instance: r.get(5)?,
        trigger: Trigger::parse(&r.get::<_, String>(6)?),
        method: r.get(7)?,
        path: r.get(8)?,
        start_ms: r.get(9)?,
        duration_us: r.get::<_, i64>(10)? as u64,
        queue_us: r.get::<_, i64>(11)? as u64,
        init_us: r.get::<_, Option<i64>>(12)?.map(|v| v as u64),
        status: r.get(13)?,
        error: r.get(14)?,
        bytes_in: r.get::<_, i64>(15)? as u64,
        bytes_out: r.get::<_, i64>(16)? as u64,
    })
}

#[async_trait]
impl LogStore for SqliteStore {
    async fn append(&self, lines: Vec<LogLine>) -> Result<()> {
        // Not through `write`: log lines are not routing changes.
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut st = tx
                    .prepare_cached("INSERT INTO logs (at, function, version, instance, stream, line, request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                    .map_err(db)?;
                for l in &lines {
                    st.execute(params![l.at, l.function, l.version, l.instance, l.stream.as_str(), l.line, l.request_id]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn query(&self, q: LogQuery) -> Result<Vec<LogLine>> {
        self.with(move |c| {
            let mut sql = String::from(
                "SELECT id, at, function, version, instance, stream, line, request_id FROM logs WHERE 1=1",
            );
            let mut args: Vec<Value> = Vec::new();
            if let Some(f) = q.function {
                sql.push_str(" AND function = ?");
                args.push(f.into());
            }
            if let Some(v) = q.version {
                sql.push_str(" AND version = ?");
                args.push((v as i64).into());
            }
            if let Some(a) = q.after_id {
                sql.push_str(" AND id > ?");
                args.push(a.into());
            }
            if let Some(s) = q.since_ms {
                sql.push_str(" AND at >= ?");
                args.push(s.into());
            }
            if let Some(u) = q.until_ms {
                sql.push_str(" AND at <= ?");
                args.push(u.into());
            }
            if !q.request_ids.is_empty() {
                sql.push_str(" AND request_id IN (");
                for (i, r) in q.request_ids.into_iter().enumerate() {
                    sql.push_str(if i == 0 { "?" } else { ", ?" });
                    args.push(r.into());
                }
                sql.push(')');
            }
            if let Some(g) = q.grep {
                sql.push_str(" AND line LIKE ? ESCAPE '\\'");
                args.push(like(&g).into());
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push((q.limit.max(1) as i64).into());
            let mut st = c.prepare(&sql).map_err(db)?;
            let rows = st
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok(LogLine {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        function: r.get(2)?,
                        version: r.get(3)?,
                        instance: r.get(4)?,
                        stream: LogStream::parse(&r.get::<_, String>(5)?),
                        line: r.get(6)?,
                        request_id: r.get(7)?,
                    })
                })
                .map_err(db)?;
            let mut out: Vec<LogLine> = rows.collect::<rusqlite::Result<_>>().map_err(db)?;
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn append_requests(&self, records: Vec<RequestRecord>) -> Result<()> {
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO requests (request_id, trace_id, function, version, instance, trigger, method, path, start_ms, duration_us, queue_us, init_us, status, error, bytes_in, bytes_out) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                    )
                    .map_err(db)?;
                let mut minutes: Vec<(i64, i64)> = Vec::new();
                for r in &records {
                    st.execute(params![
                        r.request_id,
                        r.trace_id,
                        r.function,
                        r.version,
                        r.instance,
                        r.trigger.as_str(),
                        r.method,
                        r.path,
                        r.start_ms,
                        r.duration_us as i64,
                        r.queue_us as i64,
                        r.init_us.map(|v| v as i64),
                        r.status,
                        r.error,
                        r.bytes_in as i64,
                        r.bytes_out as i64,
                    ])
                    .map_err(db)?;
                    let (m, id) = (minute(r.start_ms), tx.last_insert_rowid());
                    // A batch spans a minute or two, in order: a short list, not a map.
                    match minutes.iter_mut().find(|(k, _)| *k == m) {
                        Some((_, first)) => *first = (*first).min(id),
                        None => minutes.push((m, id)),
                    }
                }
                let mut up = tx
                    .prepare_cached(
                        "INSERT INTO request_minutes (minute, first_id) VALUES (?1, ?2)
                         ON CONFLICT (minute) DO UPDATE SET first_id = min(first_id, excluded.first_id)",
                    )
                    .map_err(db)?;
                for (m, id) in minutes {
                    up.execute(params![m, id]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn query_requests(&self, q: RequestQuery) -> Result<Vec<RequestRecord>> {
        self.with(move |c| {
            let mut sql = format!("SELECT {RECORD_COLUMNS} FROM requests r WHERE 1=1");
            let mut args: Vec<Value> = Vec::new();
            let mut push = |clause: &str, v: Value| {
                sql.push_str(clause);
                args.push(v);
            };
            if let Some(id) = q.request_id {
                push(" AND request_id = ?", id.into());
            }
            if let Some(t) = q.trace_id {
                push(" AND trace_id = ?", t.into());
            }
            if let Some(f) = q.function {
                push(" AND function = ?", f.into());
            }
            if let Some(v) = q.version {
                push(" AND version = ?", (v as i64).into());
            }
            if let Some(s) = q.status {
                push(" AND status >= ?", (s.min as i64).into());
                push(" AND status <= ?", (s.max as i64).into());
            }
            if let Some(s) = q.since_ms {
                push(" AND start_ms >= ?", s.into());
                // Every record of the window has an id at or above the first one of the window's
                // first minute: a rowid range instead of a scan of the whole table.
                push(&format!(" AND id >= {FIRST_ID_FROM_MINUTE}"), minute(s).into());
            }
            if let Some(u) = q.until_ms {
                push(" AND start_ms <= ?", u.into());
            }
            if let Some(a) = q.after_id {
                push(" AND id > ?", a.into());
            }
            if let Some(g) = q.grep {
                let p = like(&g);
                sql.push_str(" AND (path LIKE ? ESCAPE '\\' OR error LIKE ? ESCAPE '\\' OR ");
                args.extend([p.clone().into(), p.clone().into()]);
                match q.since_ms {
                    // A time window: scan that window's lines once (by time), rather than
                    // looking up every candidate request's lines one by one.
                    Some(since) => {
                        sql.push_str("request_id IN (SELECT request_id FROM logs WHERE at >= ? AND request_id IS NOT NULL AND line LIKE ? ESCAPE '\\'))");
                        args.extend([since.into(), p.into()]);
                    }
                    None => {
                        sql.push_str("EXISTS (SELECT 1 FROM logs l WHERE l.request_id = r.request_id AND l.line LIKE ? ESCAPE '\\'))");
                        args.push(p.into());
                    }
                }
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push((q.limit.max(1) as i64).into());
            let mut st = c.prepare(&sql).map_err(db)?;
            let rows = st
                .query_map(rusqlite::params_from_iter(args), record)
                .map_err(db)?;
            let mut out: Vec<RequestRecord> =
                rows.collect::<rusqlite::Result<_>>().map_err(db)?;
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn summarize(&self, q: SummaryQuery) -> Result<Vec<RequestSummary>> {
        self.with(move |c| {
            // The bucket index as one CASE over the bounds, so SQLite adds up the histogram
            // in the same pass as the counts (no row leaves the database).
            let bucket = if q.bounds_us.is_empty() {
                "0".to_string()
            } else {
                let mut b = String::from("CASE");
                for (i, bound) in q.bounds_us.iter().enumerate() {
                    b.push_str(&format!(" WHEN duration_us <= {bound} THEN {i}"));
                }
                b.push_str(&format!(" ELSE {} END", q.bounds_us.len()));
                b
            };
            let mut sql = format!(
                "SELECT function, {bucket} AS b, count(*), total(status >= 500), total(init_us IS NOT NULL), total(coalesce(error IN ('throttled', 'overloaded'), 0)) FROM requests WHERE start_ms >= ?1 AND start_ms <= ?2 AND id >= {FIRST_ID_FROM_MINUTE}"
            );
            let mut args: Vec<Value> = vec![
                q.since_ms.into(),
                q.until_ms.into(),
                minute(q.since_ms).into(),
            ];
            if let Some(f) = q.function {
                sql.push_str(" AND function = ?");
                args.push(f.into());
            }
            sql.push_str(" GROUP BY function, b ORDER BY function");
            let mut st = c.prepare(&sql).map_err(db)?;
            let mut rows = st.query(rusqlite::params_from_iter(args)).map_err(db)?;
            let mut out: Vec<RequestSummary> = Vec::new();
            while let Some(r) = rows.next().map_err(db)? {
                let function: String = r.get(0).map_err(db)?;
                if out.last().is_none_or(|s| s.function != function) {
                    out.push(RequestSummary {
                        function,
                        buckets: vec![0; q.bounds_us.len() + 1],
                        ..Default::default()
                    });
                }
                let s = out.last_mut().expect("pushed");
                let b: i64 = r.get(1).map_err(db)?;
                let n = |i| r.get::<_, f64>(i).map(|v| v as u64).map_err(db);
                s.buckets[b as usize] += n(2)?;
                s.requests += n(2)?;
                s.errors += n(3)?;
                s.cold_starts += n(4)?;
                s.throttled += n(5)?;
            }
            Ok(out)
        })
        .await
    }

    async fn append_captures(&self, captures: Vec<CaptureRecord>) -> Result<()> {
        let rows = captures
            .iter()
            .map(|c| Ok((c, c.stored_bytes() as i64, serde_json::to_string(c)?)))
            .collect::<std::result::Result<Vec<_>, serde_json::Error>>()
            .map_err(json_err)?
            .into_iter()
            .map(|(c, n, json)| (c.request_id.clone(), c.function.clone(), c.at_ms, n, json))
            .collect::<Vec<_>>();
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut st = tx
                    .prepare_cached("INSERT INTO captures (request_id, function, at_ms, bytes, record) VALUES (?1, ?2, ?3, ?4, ?5)")
                    .map_err(db)?;
                for (id, function, at, n, json) in &rows {
                    st.execute(params![id, function, at, n, json]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn get_capture(&self, request_id: &str) -> Result<Option<CaptureRecord>> {
        let id = request_id.to_string();
        let json: Option<String> = self
            .with(move |c| {
                c.query_row(
                    "SELECT record FROM captures WHERE request_id = ?1 ORDER BY id DESC LIMIT 1",
                    params![id],
                    |r| r.get(0),
                )
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(db(e)),
                })
            })
            .await?;
        json.map(|j| serde_json::from_str(&j).map_err(json_err))
            .transpose()
    }

    async fn prune_captures(&self, before_ms: i64, max_bytes: u64) -> Result<u64> {
        let max_bytes = max_bytes.min(i64::MAX as u64) as i64;
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            let mut n = tx
                .execute("DELETE FROM captures WHERE at_ms < ?1", params![before_ms])
                .map_err(db)?;
            // The newest captures whose running total fits stay; everything older goes.
            n += tx
                .execute(
                    "DELETE FROM captures WHERE id <= (
                        SELECT id FROM (
                            SELECT id, SUM(bytes) OVER (ORDER BY id DESC) AS total FROM captures
                        ) WHERE total > ?1 ORDER BY id DESC LIMIT 1)",
                    params![max_bytes],
                )
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(n as u64)
        })
        .await
    }

    async fn prune(&self, before_ms: i64, max_lines: u64) -> Result<u64> {
        self.with(move |c| {
            let mut n = 0;
            n += c.execute("DELETE FROM logs WHERE at < ?1", [before_ms]).map_err(db)?;
            n += c
                .execute(
                    "DELETE FROM logs WHERE id <= (SELECT id FROM logs ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                    [max_lines as i64],
                )
                .map_err(db)?;
            n += c
                .execute("DELETE FROM requests WHERE start_ms < ?1", [before_ms])
                .map_err(db)?;
            n += c
                .execute(
                    "DELETE FROM requests WHERE id <= (SELECT id FROM requests ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                    [max_lines as i64],
                )
                .map_err(db)?;
            // Minutes before the oldest record left go; a kept minute's first id may now name a
            // deleted record, which is still a correct (lower) bound.
            c.execute(
                "DELETE FROM request_minutes WHERE minute < (SELECT coalesce(min(start_ms), 0) FROM requests) / 60000 - 1",
                [],
            )
            .map_err(db)?;
            Ok(n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_from_before_request_records_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE logs (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, function TEXT NOT NULL, version INTEGER NOT NULL, instance TEXT NOT NULL, stream TEXT NOT NULL, line TEXT NOT NULL);
                 INSERT INTO logs (at, function, version, instance, stream, line) VALUES (1, 'f', 1, 'i', 'stdout', 'kept');",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let lines = store
            .query(LogQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(
            (lines[0].line.as_str(), lines[0].request_id.as_deref()),
            ("kept", None)
        );
        let mut new = lines[0].clone();
        new.request_id = Some("r-1".into());
        store.append(vec![new]).await.unwrap();
        let got = store
            .query(LogQuery {
                request_ids: vec!["r-1".into()],
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "the new column is written and indexed");
    }

    fn rec(request_id: &str, start_ms: i64) -> RequestRecord {
        RequestRecord {
            id: 0,
            request_id: request_id.into(),
            trace_id: "t".into(),
            function: "f".into(),
            version: 1,
            instance: "i".into(),
            trigger: Trigger::Http,
            method: "GET".into(),
            path: "/".into(),
            start_ms,
            duration_us: 1,
            queue_us: 0,
            init_us: None,
            status: 200,
            error: None,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    async fn window(store: &SqliteStore, since_ms: i64) -> Vec<String> {
        store
            .query_requests(RequestQuery {
                since_ms: Some(since_ms),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.request_id)
            .collect()
    }

    #[tokio::test]
    async fn a_window_finds_records_written_after_later_ones_and_old_databases_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.db");
        let min = 60_000;
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .append_requests(vec![rec("a", 10 * min), rec("b", 12 * min + 5)])
                .await
                .unwrap();
            // A long request that started in minute 11 finishes (and is written) after b.
            store
                .append_requests(vec![rec("long", 11 * min + 30_000), rec("c", 13 * min)])
                .await
                .unwrap();
            assert_eq!(window(&store, 11 * min).await, ["b", "long", "c"]);
            assert_eq!(window(&store, 11 * min + 40_000).await, ["b", "c"]);
            assert_eq!(window(&store, 14 * min).await, Vec::<String>::new());
            let total = store
                .summarize(SummaryQuery {
                    since_ms: 11 * min,
                    until_ms: 20 * min,
                    function: None,
                    bounds_us: vec![],
                })
                .await
                .unwrap();
            assert_eq!(total[0].requests, 3);
        }
        // A database from before `request_minutes`: its records' minutes are indexed on open.
        Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE request_minutes")
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(window(&store, 11 * min).await, ["b", "long", "c"]);
        assert_eq!(window(&store, 0).await, ["a", "b", "long", "c"]);
    }
}
