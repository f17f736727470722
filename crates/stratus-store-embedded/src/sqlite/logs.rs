//! Log lines and request records. Both are append-only, written in batches by the telemetry
//! writer, and pruned by age and count. Lines are rows with indexes; records are packed a
//! batch to a row ([`chunks`]), and queries skip whole chunks by their time and id ranges,
//! functions, status classes and Bloom filter of ids before decoding the rest.

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, params};
use stratus_store::{
    CaptureRecord, LogLine, LogQuery, LogStore, LogStream, RequestQuery, RequestRecord,
    RequestSummary, Result, SummaryQuery, Trigger,
};

use super::{SqliteStore, chunks, db};

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
-- Request records, a writer batch to a row (see `chunks`). Record ids run first_id..=last_id.
CREATE TABLE IF NOT EXISTS request_chunks (
    id INTEGER PRIMARY KEY,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    min_start_ms INTEGER NOT NULL,
    max_start_ms INTEGER NOT NULL,
    functions TEXT NOT NULL,
    classes INTEGER NOT NULL,
    bloom BLOB NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS request_chunks_by_end ON request_chunks(max_start_ms);
-- The last record id handed out: ids never go back, even when every chunk is pruned.
CREATE TABLE IF NOT EXISTS request_seq (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    last_id INTEGER NOT NULL
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
    c.execute_batch(SCHEMA)?;
    migrate_record_rows(c)?;
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

/// Records from before chunks (a row each, in `requests`) are packed into chunks, ids kept,
/// and the old tables dropped: one pass on the first open.
fn migrate_record_rows(c: &Connection) -> rusqlite::Result<()> {
    let has_rows: bool = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'requests'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    if !has_rows {
        return Ok(());
    }
    let tx = c.unchecked_transaction()?;
    {
        let mut st = tx.prepare("SELECT id, request_id, trace_id, function, version, instance, trigger, method, path, start_ms, duration_us, queue_us, init_us, status, error, bytes_in, bytes_out FROM requests WHERE id > ?1 ORDER BY id LIMIT 4096")?;
        let mut after = 0i64;
        loop {
            let batch: Vec<RequestRecord> = st
                .query_map([after], |r| {
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
                })?
                .collect::<rusqlite::Result<_>>()?;
            let Some(last) = batch.last() else { break };
            after = last.id;
            store_chunk(&tx, &batch)?;
        }
    }
    // AUTOINCREMENT's high-water mark, so no id is handed out twice.
    let seq: i64 = tx.query_row(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'requests'), (SELECT max(id) FROM requests), 0)",
        [],
        |r| r.get(0),
    )?;
    set_last_id(&tx, seq)?;
    tx.execute_batch("DROP TABLE requests; DROP TABLE IF EXISTS request_minutes;")?;
    tx.commit()
}

/// Stores a chunk of `records`. No per-record index: the platform's ids are found by their
/// time, a caller's through the chunks' Bloom filters (an index of random keys cost ~45 µs a
/// record here, every record dirtying a random page).
fn store_chunk(c: &Connection, records: &[RequestRecord]) -> rusqlite::Result<()> {
    put_chunk(c, None, &chunks::encode(records))
}

/// Writes a chunk's row: a new one, or (with `id`) the one it replaces, keeping its place.
fn put_chunk(c: &Connection, id: Option<i64>, k: &chunks::Chunk) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO request_chunks (id, first_id, last_id, n, min_start_ms, max_start_ms, functions, classes, bloom, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        id,
        k.first_id,
        k.last_id,
        k.n,
        k.min_start_ms,
        k.max_start_ms,
        k.functions,
        k.classes,
        k.bloom,
        k.data
    ])?;
    Ok(())
}

fn last_id(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT coalesce((SELECT last_id FROM request_seq WHERE one = 1), 0)",
        [],
        |r| r.get(0),
    )
}

fn set_last_id(c: &Connection, id: i64) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO request_seq (one, last_id) VALUES (1, ?1) ON CONFLICT (one) DO UPDATE SET last_id = max(last_id, excluded.last_id)",
    )?
    .execute([id])?;
    Ok(())
}

fn chunk_err(e: String) -> stratus_store::StoreError {
    stratus_store::StoreError::Backend(e)
}

/// ASCII case-insensitive substring test (what `LIKE` did for the grep).
fn contains_ci(hay: &str, needle_lower: &str) -> bool {
    needle_lower.is_empty()
        || hay
            .as_bytes()
            .windows(needle_lower.len())
            .any(|w| w.eq_ignore_ascii_case(needle_lower.as_bytes()))
}

/// Walks the chunks a query may need, newest first, calling `f` with each chunk's records
/// (oldest first within it) until `f` returns false. `sql_where` narrows by the chunk columns;
/// `id_key` (a request or trace id) also skips chunks whose Bloom filter rules it out.
fn scan_chunks(
    c: &Connection,
    sql_where: &str,
    args: &[Value],
    id_key: Option<&str>,
    mut f: impl FnMut(Packed<'_>) -> Result<bool>,
) -> Result<()> {
    let sql = format!(
        "SELECT first_id, min_start_ms, bloom, data FROM request_chunks WHERE 1=1{sql_where} ORDER BY id DESC"
    );
    let mut st = c.prepare_cached(&sql).map_err(db)?;
    let mut rows = st.query(rusqlite::params_from_iter(args)).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        if let Some(key) = id_key {
            let bloom = r
                .get_ref(2)
                .map_err(db)?
                .as_blob()
                .map_err(|e| chunk_err(e.to_string()))?;
            if !chunks::Bloom::may_contain(bloom, key) {
                continue;
            }
        }
        let data = r
            .get_ref(3)
            .map_err(db)?
            .as_blob()
            .map_err(|e| chunk_err(e.to_string()))?;
        let chunk = Packed {
            data,
            first_id: r.get(0).map_err(db)?,
            min_start_ms: r.get(1).map_err(db)?,
        };
        if !f(chunk)? {
            break;
        }
    }
    Ok(())
}

/// One chunk's records as the row holds them.
struct Packed<'a> {
    data: &'a [u8],
    first_id: i64,
    min_start_ms: i64,
}

impl<'a> Packed<'a> {
    /// Each record in place, oldest first.
    fn for_each(&self, f: impl FnMut(chunks::Raw<'a>)) -> Result<()> {
        chunks::for_each(self.data, self.first_id, self.min_start_ms, f).map_err(chunk_err)
    }
}

/// Rewrites a chunk with only the records `keep` keeps (or deletes it when none are left);
/// returns how many went.
fn trim_chunk(
    c: &Connection,
    id: i64,
    first_id: i64,
    min_start_ms: i64,
    data: &[u8],
    keep: impl FnMut(&RequestRecord) -> bool,
) -> Result<u64> {
    let mut records = chunks::decode(data, first_id, min_start_ms).map_err(chunk_err)?;
    let before = records.len();
    records.retain(keep);
    let gone = (before - records.len()) as u64;
    if records.is_empty() {
        c.execute("DELETE FROM request_chunks WHERE id = ?1", [id])
            .map_err(db)?;
    } else if gone > 0 {
        put_chunk(c, Some(id), &chunks::encode(&records)).map_err(db)?;
    }
    Ok(gone)
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

    async fn append_requests(&self, mut records: Vec<RequestRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            let first = last_id(&tx).map_err(db)? + 1;
            for (i, r) in records.iter_mut().enumerate() {
                r.id = first + i as i64;
            }
            store_chunk(&tx, &records).map_err(db)?;
            set_last_id(&tx, first + records.len() as i64 - 1).map_err(db)?;
            tx.commit().map_err(db)
        })
        .await
    }

    async fn query_requests(&self, q: RequestQuery) -> Result<Vec<RequestRecord>> {
        self.with(move |c| {
            let mut sql = String::new();
            let mut args: Vec<Value> = Vec::new();
            let mut push = |clause: &str, v: Value| {
                sql.push_str(clause);
                args.push(v);
            };
            if let Some(f) = &q.function {
                push(" AND instr(functions, ?) > 0", format!("\n{f}\n").into());
            }
            if let Some(s) = q.status {
                push(" AND classes & ? != 0", chunks::class_mask(s.min, s.max).into());
            }
            if let Some(s) = q.since_ms {
                push(" AND max_start_ms >= ?", s.into());
            }
            if let Some(u) = q.until_ms {
                push(" AND min_start_ms <= ?", u.into());
            }
            if let Some(a) = q.after_id {
                push(" AND last_id > ?", a.into());
            }
            let id_key = q.request_id.as_deref().or(q.trace_id.as_deref());
            // Request ids and trace ids that carry their time point at the chunks of that time
            // (a few minutes either side); any other id is looked for in every chunk's filter.
            let hint = id_key.and_then(chunks::id_window);
            let grep = q.grep.as_deref().map(str::to_ascii_lowercase);
            let line_hits: std::collections::HashSet<String> = match &q.grep {
                None => Default::default(),
                Some(g) => {
                    let (cond, mut a): (&str, Vec<Value>) = match q.since_ms {
                        Some(since) => (" AND at >= ?", vec![since.into()]),
                        None => ("", vec![]),
                    };
                    a.push(like(g).into());
                    // Neither DISTINCT nor `request_id IS NOT NULL`: either lets SQLite walk all
                    // lines through the request-id index instead of the window by time.
                    let mut st = c
                        .prepare(&format!("SELECT request_id FROM logs WHERE 1=1{cond} AND line LIKE ? ESCAPE '\\'"))
                        .map_err(db)?;
                    st.query_map(rusqlite::params_from_iter(a), |r| r.get::<_, Option<String>>(0))
                        .map_err(db)?
                        .filter_map(|r| r.transpose())
                        .collect::<rusqlite::Result<_>>()
                        .map_err(db)?
                }
            };
            let keep = |r: &chunks::Raw<'_>| {
                q.function.as_deref().is_none_or(|f| r.function == f)
                    && q.version.is_none_or(|v| r.version == v)
                    && q.status.is_none_or(|s| (s.min..=s.max).contains(&r.status))
                    && q.since_ms.is_none_or(|s| r.start_ms >= s)
                    && q.until_ms.is_none_or(|u| r.start_ms <= u)
                    && q.after_id.is_none_or(|a| r.id > a)
                    && q.request_id.as_deref().is_none_or(|id| r.request_id == id)
                    && q.trace_id.as_deref().is_none_or(|id| r.trace_id == id)
                    && grep.as_ref().is_none_or(|g| {
                        contains_ci(r.path, g)
                            || r.error.is_some_and(|e| contains_ci(e, g))
                            || line_hits.contains(r.request_id)
                    })
            };
            let limit = q.limit.max(1) as usize;
            let mut out: Vec<RequestRecord> = Vec::new();
            let collect = |out: &mut Vec<RequestRecord>, chunk: Packed<'_>|
             -> Result<bool> {
                let mut kept = Vec::new();
                chunk.for_each(|r| {
                    if keep(&r) {
                        kept.push(r.to_record());
                    }
                })?;
                for r in kept.into_iter().rev() {
                    out.push(r);
                    if out.len() >= limit {
                        return Ok(false);
                    }
                }
                Ok(true)
            };
            if let Some((from, to)) = hint {
                let mut a = args.clone();
                a.extend([from.into(), to.into()]);
                let w = format!("{sql} AND max_start_ms >= ? AND min_start_ms <= ?");
                scan_chunks(c, &w, &a, id_key, |rs| collect(&mut out, rs))?;
            }
            if out.is_empty() {
                // No id, an id with no time, or one whose time is not its request's (a caller's
                // UUIDv7 made elsewhere): every chunk in the other bounds, through the filters.
                scan_chunks(c, &sql, &args, id_key, |rs| collect(&mut out, rs))?;
            }
            // Chunks are newest first, and within one, newest last; a record written late
            // (a long request) can sit after newer ones: order by id.
            out.sort_by_key(|r| r.id);
            Ok(out)
        })
        .await
    }

    async fn summarize(&self, q: SummaryQuery) -> Result<Vec<RequestSummary>> {
        self.with(move |c| {
            let mut sql = String::from(" AND max_start_ms >= ? AND min_start_ms <= ?");
            let mut args: Vec<Value> = vec![q.since_ms.into(), q.until_ms.into()];
            if let Some(f) = &q.function {
                sql.push_str(" AND instr(functions, ?) > 0");
                args.push(format!("\n{f}\n").into());
            }
            let mut by_function: std::collections::BTreeMap<String, RequestSummary> =
                Default::default();
            scan_chunks(c, &sql, &args, None, |chunk| {
                chunk.for_each(|r| {
                    if r.start_ms < q.since_ms
                        || r.start_ms > q.until_ms
                        || q.function.as_deref().is_some_and(|f| r.function != f)
                    {
                        return;
                    }
                    if !by_function.contains_key(r.function) {
                        by_function.insert(
                            r.function.to_string(),
                            RequestSummary {
                                function: r.function.to_string(),
                                buckets: vec![0; q.bounds_us.len() + 1],
                                ..Default::default()
                            },
                        );
                    }
                    let s = by_function.get_mut(r.function).expect("inserted");
                    let b = q.bounds_us.partition_point(|&bound| r.duration_us > bound);
                    s.buckets[b] += 1;
                    s.requests += 1;
                    s.errors += (r.status >= 500) as u64;
                    s.cold_starts += r.init_us.is_some() as u64;
                    s.throttled += matches!(r.error, Some("throttled" | "overloaded")) as u64;
                })?;
                Ok(true)
            })?;
            Ok(by_function.into_values().collect())
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
            let tx = c.unchecked_transaction().map_err(db)?;
            let mut gone = n as u64;
            let mut gone_records = 0u64;
            // By age: whole chunks that ended before the cut, then the one or two that
            // straddle it, rewritten without their old records.
            gone_records += tx
                .query_row(
                    "SELECT coalesce(sum(n), 0) FROM request_chunks WHERE max_start_ms < ?1",
                    [before_ms],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db)? as u64;
            tx.execute("DELETE FROM request_chunks WHERE max_start_ms < ?1", [before_ms])
                .map_err(db)?;
            let straddling: Vec<(i64, i64, i64, Vec<u8>)> = tx
                .prepare("SELECT id, first_id, min_start_ms, data FROM request_chunks WHERE min_start_ms < ?1")
                .map_err(db)?
                .query_map([before_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(db)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db)?;
            for (id, first, min_start, data) in straddling {
                gone_records +=
                    trim_chunk(&tx, id, first, min_start, &data, |r| r.start_ms >= before_ms)?;
            }
            // By count: the oldest chunks while the rest still hold `max_lines`, then the oldest
            // records of the next one.
            let total: u64 = tx
                .query_row("SELECT coalesce(sum(n), 0) FROM request_chunks", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(db)? as u64;
            if total > max_lines {
                // Only ids and sizes until the boundary: a chunk deleted whole is never read.
                let mut excess = total - max_lines;
                let mut boundary = None;
                let mut whole = Vec::new();
                {
                    let mut st = tx
                        .prepare("SELECT id, n FROM request_chunks ORDER BY id")
                        .map_err(db)?;
                    let mut rows = st.query([]).map_err(db)?;
                    while excess > 0
                        && let Some(r) = rows.next().map_err(db)?
                    {
                        let (id, n): (i64, i64) = (r.get(0).map_err(db)?, r.get(1).map_err(db)?);
                        if n as u64 <= excess {
                            excess -= n as u64;
                            whole.push((id, n as u64));
                        } else {
                            boundary = Some(id);
                            break;
                        }
                    }
                }
                for (id, n) in whole {
                    tx.execute("DELETE FROM request_chunks WHERE id = ?1", [id])
                        .map_err(db)?;
                    gone_records += n;
                }
                if let Some(id) = boundary {
                    let (first, min_start, data): (i64, i64, Vec<u8>) = tx
                        .query_row(
                            "SELECT first_id, min_start_ms, data FROM request_chunks WHERE id = ?1",
                            [id],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                        )
                        .map_err(db)?;
                    // A chunk's records are in id order: the oldest `excess` go.
                    let mut skip = excess;
                    gone_records += trim_chunk(&tx, id, first, min_start, &data, |_| {
                        let keep = skip == 0;
                        skip = skip.saturating_sub(1);
                        keep
                    })?;
                }
            }
            tx.commit().map_err(db)?;
            gone += gone_records;
            Ok(gone)
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
    }

    #[tokio::test]
    async fn records_stored_a_row_each_are_packed_into_chunks_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.db");
        {
            // The schema before chunks, with a gap in the ids and a deleted newest row.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, trace_id TEXT NOT NULL, function TEXT NOT NULL, version INTEGER NOT NULL, instance TEXT NOT NULL, trigger TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL, start_ms INTEGER NOT NULL, duration_us INTEGER NOT NULL, queue_us INTEGER NOT NULL, init_us INTEGER, status INTEGER NOT NULL, error TEXT, bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL);
                 CREATE TABLE request_minutes (minute INTEGER PRIMARY KEY, first_id INTEGER NOT NULL);",
            )
            .unwrap();
            for i in 0..5000i64 {
                c.execute(
                    "INSERT INTO requests (request_id, trace_id, function, version, instance, trigger, method, path, start_ms, duration_us, queue_us, init_us, status, error, bytes_in, bytes_out) VALUES (?1, 't', 'f', 1, 'i', 'timer', 'GET', '/', ?2, 7, 0, NULL, 200, NULL, 0, 3)",
                    params![format!("old-{i}"), 1_000 + i],
                )
                .unwrap();
            }
            c.execute_batch("DELETE FROM requests WHERE id IN (10, 5000)")
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let all = window(&store, 0).await;
        assert_eq!(all.len(), 100, "the newest 100 (the limit)");
        assert_eq!(all.last().unwrap(), "old-4998");
        let one = store
            .query_requests(RequestQuery {
                request_id: Some("old-11".into()),
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            (one.len(), one[0].id, one[0].trigger),
            (1, 12, Trigger::Timer)
        );
        // New records continue after the old high-water mark (5000 was handed out once).
        store
            .append_requests(vec![rec("new", 9_000)])
            .await
            .unwrap();
        let new = store
            .query_requests(RequestQuery {
                after_id: Some(4999),
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((new.len(), new[0].id), (1, 5001));
        let c = Connection::open(&path).unwrap();
        let old_tables: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('requests', 'request_minutes')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_tables, 0);
    }

    #[tokio::test]
    async fn ids_are_found_by_their_time_or_by_the_filters_and_pruning_cuts_inside_chunks() {
        let store = SqliteStore::open_in_memory().unwrap();
        let now = stratus_core::now_ms();
        // 20 batches a second apart; every record's request id is a UUIDv7 of its start,
        // every trace id a random-looking one.
        for b in 0..20i64 {
            let batch = (0..50i64)
                .map(|i| {
                    let at = now - 20_000 + b * 1000 + i;
                    let mut r = rec(
                        &format!(
                            "{:08x}-{:04x}-7000-8000-{:012x}",
                            at >> 16,
                            at & 0xffff,
                            b * 50 + i
                        ),
                        at,
                    );
                    r.trace_id = format!(
                        "{:016x}{:016x}",
                        ((b * 50 + i) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        b
                    );
                    r
                })
                .collect();
            store.append_requests(batch).await.unwrap();
        }
        let find = |q: RequestQuery| {
            let store = &store;
            async move { store.query_requests(q).await.unwrap() }
        };
        let at = now - 20_000 + 7 * 1000 + 3;
        let v7 = format!(
            "{:08x}-{:04x}-7000-8000-{:012x}",
            at >> 16,
            at & 0xffff,
            7 * 50 + 3
        );
        let got = find(RequestQuery {
            request_id: Some(v7.clone()),
            limit: 5,
            ..Default::default()
        })
        .await;
        assert_eq!((got.len(), got[0].id), (1, 7 * 50 + 3 + 1));
        let trace = format!(
            "{:016x}{:016x}",
            ((12 * 50 + 9) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            12
        );
        let got = find(RequestQuery {
            trace_id: Some(trace),
            limit: 5,
            ..Default::default()
        })
        .await;
        assert_eq!(
            got.len(),
            1,
            "an id with no time is found through the filters"
        );
        assert_eq!(got[0].start_ms, now - 20_000 + 12 * 1000 + 9);
        let missing = find(RequestQuery {
            request_id: Some("nope".into()),
            limit: 5,
            ..Default::default()
        })
        .await;
        assert!(missing.is_empty());
        // The newest 3 of a window that ends inside a chunk.
        let w = find(RequestQuery {
            until_ms: Some(now - 20_000 + 5 * 1000 + 10),
            limit: 3,
            ..Default::default()
        })
        .await;
        assert_eq!(w.iter().map(|r| r.id).collect::<Vec<_>>(), [259, 260, 261]);
        // By age: chunk 3 is cut at its 20th record; by count: 100 left of the rest.
        let cut = now - 20_000 + 3 * 1000 + 20;
        assert_eq!(store.prune(cut, u64::MAX).await.unwrap(), 3 * 50 + 20);
        let left = find(RequestQuery {
            limit: 10_000,
            ..Default::default()
        })
        .await;
        assert_eq!(
            (left.len(), left[0].id, left[0].start_ms),
            (1000 - 170, 171, cut)
        );
        assert_eq!(store.prune(0, 100).await.unwrap(), 1000 - 170 - 100);
        let left = find(RequestQuery {
            limit: 10_000,
            ..Default::default()
        })
        .await;
        assert_eq!((left.len(), left[0].id), (100, 901));
        // Everything pruned: ids still do not go back.
        store.prune(0, 0).await.unwrap();
        store
            .append_requests(vec![rec("after", now)])
            .await
            .unwrap();
        let after = find(RequestQuery {
            limit: 10,
            ..Default::default()
        })
        .await;
        assert_eq!(after[0].id, 1001);
    }
}
