use async_trait::async_trait;
use rusqlite::params;
use stratus_store::{LogLine, LogQuery, LogStore, LogStream, Result};

use super::{SqliteStore, db};

#[async_trait]
impl LogStore for SqliteStore {
    async fn append(&self, lines: Vec<LogLine>) -> Result<()> {
        // Not through `write`: log lines are not routing changes.
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut st = tx
                    .prepare_cached("INSERT INTO logs (at, function, version, instance, stream, line) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                    .map_err(db)?;
                for l in &lines {
                    st.execute(params![l.at, l.function, l.version, l.instance, l.stream.as_str(), l.line]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn query(&self, q: LogQuery) -> Result<Vec<LogLine>> {
        self.with(move |c| {
            let mut sql = String::from(
                "SELECT id, at, function, version, instance, stream, line FROM logs WHERE 1=1",
            );
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
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
                    })
                })
                .map_err(db)?;
            let mut out: Vec<LogLine> = rows.collect::<rusqlite::Result<_>>().map_err(db)?;
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn prune(&self, before_ms: i64, max_lines: u64) -> Result<u64> {
        self.with(move |c| {
            let by_age = c.execute("DELETE FROM logs WHERE at < ?1", [before_ms]).map_err(db)?;
            let by_size = c
                .execute(
                    "DELETE FROM logs WHERE id <= (SELECT id FROM logs ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                    [max_lines as i64],
                )
                .map_err(db)?;
            Ok((by_age + by_size) as u64)
        })
        .await
    }
}
