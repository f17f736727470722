use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use stratus_core::{AliasName, FunctionName, FunctionSpec, VersionNumber, now_ms};
use stratus_store::{
    AliasChange, AliasRecord, ChangeReason, FunctionRecord, LogLine, LogQuery, LogStore, LogStream,
    Metastore, NewVersion, Result, RoutableFunction, RoutingSnapshot, StoreError, VersionRecord,
    rollback_target,
};
use tokio::sync::watch;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    next_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    spec TEXT NOT NULL,
    artifact TEXT NOT NULL,
    artifact_size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (function, number)
);
CREATE TABLE IF NOT EXISTS aliases (
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (function, name),
    FOREIGN KEY (function, version) REFERENCES versions(function, number)
);
CREATE TABLE IF NOT EXISTS alias_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    alias TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alias_history_by_alias ON alias_history(function, alias, seq);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    instance TEXT NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs(function, id);
PRAGMA user_version = 1;
"#;

/// Metastore and log store on one SQLite database (WAL mode). Calls run on tokio's blocking pool
/// so the async runtime never waits on disk; one connection serialises writers, which is what
/// SQLite does anyway.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    changes: Arc<watch::Sender<u64>>,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(db)?;
        Self::init(conn)
    }

    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory().map_err(db)?)
    }

    fn init(conn: Connection) -> Result<Self> {
        // WAL + NORMAL: a committed transaction survives a process kill (the WAL is written
        // before commit returns); only an OS crash may lose the last commits.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
        )
        .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            changes: Arc::new(watch::channel(0).0),
        })
    }

    async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Runs `f` in a transaction and announces the change once it is committed.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let out = self
            .with(move |c| {
                let tx = c.transaction().map_err(db)?;
                let out = f(&tx)?;
                tx.commit().map_err(db)?;
                Ok(out)
            })
            .await?;
        self.changes.send_modify(|g| *g += 1);
        Ok(out)
    }
}

fn function_exists(tx: &Connection, name: &str) -> Result<()> {
    let found: Option<i64> = tx
        .query_row("SELECT 1 FROM functions WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db)?;
    found
        .map(|_| ())
        .ok_or_else(|| StoreError::FunctionNotFound(name.into()))
}

fn read_version(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, u32, String, String, i64, i64, String)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

fn to_version(raw: (String, u32, String, String, i64, i64, String)) -> Result<VersionRecord> {
    let (function, number, spec, artifact, size, created_at, created_by) = raw;
    let spec: FunctionSpec = serde_json::from_str(&spec).map_err(|e| {
        StoreError::Backend(format!(
            "stored spec of {function}@{number} is unreadable: {e}"
        ))
    })?;
    Ok(VersionRecord {
        function: FunctionName::new(function).map_err(|e| StoreError::Backend(e.to_string()))?,
        number: VersionNumber(number),
        spec,
        artifact,
        artifact_size: size as u64,
        created_at,
        created_by,
    })
}

const VERSION_COLS: &str =
    "function, number, spec, artifact, artifact_size, created_at, created_by";

fn versions_of(c: &Connection, name: &str) -> Result<Vec<VersionRecord>> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {VERSION_COLS} FROM versions WHERE function = ?1 ORDER BY number"
        ))
        .map_err(db)?;
    let rows = st.query_map([name], read_version).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(to_version)).collect()
}

fn alias_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, u32, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn to_alias(
    (function, name, version, updated_at): (String, String, u32, i64),
) -> Result<AliasRecord> {
    Ok(AliasRecord {
        function: FunctionName::new(function).map_err(|e| StoreError::Backend(e.to_string()))?,
        name: AliasName::new(name).map_err(|e| StoreError::Backend(e.to_string()))?,
        version: VersionNumber(version),
        updated_at,
    })
}

fn aliases_of(c: &Connection, name: &str) -> Result<Vec<AliasRecord>> {
    let mut st = c
        .prepare_cached("SELECT function, name, version, updated_at FROM aliases WHERE function = ?1 ORDER BY name")
        .map_err(db)?;
    let rows = st.query_map([name], alias_of).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(to_alias)).collect()
}

fn history_of(c: &Connection, function: &str, alias: &str) -> Result<Vec<AliasChange>> {
    let mut st = c
        .prepare_cached(
            "SELECT seq, from_version, to_version, reason, actor, at FROM alias_history
             WHERE function = ?1 AND alias = ?2 ORDER BY seq",
        )
        .map_err(db)?;
    let rows = st
        .query_map([function, alias], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<u32>>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .map_err(db)?;
    let f = FunctionName::new(function).map_err(|e| StoreError::Backend(e.to_string()))?;
    let a = AliasName::new(alias).map_err(|e| StoreError::Backend(e.to_string()))?;
    rows.map(|r| {
        let (seq, from, to, reason, actor, at) = r.map_err(db)?;
        Ok(AliasChange {
            seq,
            function: f.clone(),
            alias: a.clone(),
            from: from.map(VersionNumber),
            to: VersionNumber(to),
            reason: ChangeReason::parse(&reason).unwrap_or(ChangeReason::Manual),
            actor,
            at,
        })
    })
    .collect()
}

/// Moves an alias inside an open transaction, recording history.
fn move_alias(
    tx: &Connection,
    function: &str,
    alias: &str,
    to: VersionNumber,
    reason: ChangeReason,
    actor: &str,
) -> Result<AliasRecord> {
    let exists: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM versions WHERE function = ?1 AND number = ?2",
            params![function, to.0],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    if exists.is_none() {
        return Err(StoreError::VersionNotFound(function.into(), to));
    }
    let from: Option<u32> = tx
        .query_row(
            "SELECT version FROM aliases WHERE function = ?1 AND name = ?2",
            [function, alias],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    let now = now_ms();
    tx.execute(
        "INSERT INTO aliases (function, name, version, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (function, name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        params![function, alias, to.0, now],
    )
    .map_err(db)?;
    tx.execute(
        "INSERT INTO alias_history (function, alias, from_version, to_version, reason, actor, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![function, alias, from, to.0, reason.as_str(), actor, now],
    )
    .map_err(db)?;
    tx.execute(
        "UPDATE functions SET updated_at = ?2 WHERE name = ?1",
        params![function, now],
    )
    .map_err(db)?;
    Ok(AliasRecord {
        function: FunctionName::new(function).map_err(|e| StoreError::Backend(e.to_string()))?,
        name: AliasName::new(alias).map_err(|e| StoreError::Backend(e.to_string()))?,
        version: to,
        updated_at: now,
    })
}

fn function_record(c: &Connection, name: &str) -> Result<FunctionRecord> {
    let row: Option<(i64, i64)> = c
        .query_row(
            "SELECT created_at, updated_at FROM functions WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db)?;
    let (created_at, updated_at) = row.ok_or_else(|| StoreError::FunctionNotFound(name.into()))?;
    let latest: Option<u32> = c
        .query_row(
            "SELECT version FROM aliases WHERE function = ?1 AND name = 'latest'",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    let count: u32 = c
        .query_row(
            "SELECT COUNT(*) FROM versions WHERE function = ?1",
            [name],
            |r| r.get(0),
        )
        .map_err(db)?;
    Ok(FunctionRecord {
        name: FunctionName::new(name).map_err(|e| StoreError::Backend(e.to_string()))?,
        created_at,
        updated_at,
        latest_version: latest.map(VersionNumber),
        version_count: count,
    })
}

#[async_trait]
impl Metastore for SqliteStore {
    async fn next_version_number(&self, function: &FunctionName) -> Result<VersionNumber> {
        let name = function.to_string();
        self.with(move |c| {
            let next: Option<u32> = c
                .query_row(
                    "SELECT next_version FROM functions WHERE name = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            Ok(VersionNumber(next.unwrap_or(1)))
        })
        .await
    }

    async fn create_version(&self, new: NewVersion) -> Result<VersionRecord> {
        self.write(move |tx| {
            let name = new.spec.name.to_string();
            let now = now_ms();
            tx.execute(
                "INSERT INTO functions (name, created_at, updated_at, next_version) VALUES (?1, ?2, ?2, 1)
                 ON CONFLICT (name) DO NOTHING",
                params![name, now],
            )
            .map_err(db)?;
            let next: u32 = tx
                .query_row("SELECT next_version FROM functions WHERE name = ?1", [&name], |r| r.get(0))
                .map_err(db)?;
            if new.number.0 != next {
                return Err(StoreError::Conflict(format!(
                    "version {} of `{name}` was taken by a concurrent deploy: deploy again",
                    new.number
                )));
            }
            let spec = serde_json::to_string(&new.spec).map_err(|e| StoreError::Backend(e.to_string()))?;
            tx.execute(
                "INSERT INTO versions (function, number, spec, artifact, artifact_size, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![name, new.number.0, spec, new.artifact, new.artifact_size as i64, now, new.actor],
            )
            .map_err(db)?;
            tx.execute("UPDATE functions SET next_version = ?2 WHERE name = ?1", params![name, next + 1]).map_err(db)?;
            move_alias(tx, &name, "latest", new.number, ChangeReason::Deploy, &new.actor)?;
            Ok(VersionRecord {
                function: new.spec.name.clone(),
                number: new.number,
                spec: new.spec,
                artifact: new.artifact,
                artifact_size: new.artifact_size,
                created_at: now,
                created_by: new.actor,
            })
        })
        .await
    }

    async fn get_function(&self, name: &FunctionName) -> Result<FunctionRecord> {
        let name = name.to_string();
        self.with(move |c| function_record(c, &name)).await
    }

    async fn list_functions(&self) -> Result<Vec<FunctionRecord>> {
        self.with(|c| {
            let mut st = c
                .prepare_cached("SELECT name FROM functions ORDER BY name")
                .map_err(db)?;
            let names: Vec<String> = st
                .query_map([], |r| r.get(0))
                .map_err(db)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db)?;
            names.iter().map(|n| function_record(c, n)).collect()
        })
        .await
    }

    async fn delete_function(&self, name: &FunctionName) -> Result<()> {
        let name = name.to_string();
        self.write(move |tx| {
            function_exists(tx, &name)?;
            // Explicit order instead of relying on cascades across the alias->version key.
            tx.execute("DELETE FROM alias_history WHERE function = ?1", [&name])
                .map_err(db)?;
            tx.execute("DELETE FROM aliases WHERE function = ?1", [&name])
                .map_err(db)?;
            tx.execute("DELETE FROM versions WHERE function = ?1", [&name])
                .map_err(db)?;
            tx.execute("DELETE FROM functions WHERE name = ?1", [&name])
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn get_version(&self, name: &FunctionName, v: VersionNumber) -> Result<VersionRecord> {
        let name = name.to_string();
        self.with(move |c| {
            function_exists(c, &name)?;
            let raw = c
                .query_row(
                    &format!(
                        "SELECT {VERSION_COLS} FROM versions WHERE function = ?1 AND number = ?2"
                    ),
                    params![name, v.0],
                    read_version,
                )
                .optional()
                .map_err(db)?;
            to_version(raw.ok_or_else(|| StoreError::VersionNotFound(name.clone(), v))?)
        })
        .await
    }

    async fn list_versions(&self, name: &FunctionName) -> Result<Vec<VersionRecord>> {
        let name = name.to_string();
        self.with(move |c| {
            function_exists(c, &name)?;
            versions_of(c, &name)
        })
        .await
    }

    async fn delete_version(&self, name: &FunctionName, v: VersionNumber) -> Result<()> {
        let name = name.to_string();
        self.write(move |tx| {
            function_exists(tx, &name)?;
            let mut st = tx
                .prepare_cached(
                    "SELECT name FROM aliases WHERE function = ?1 AND version = ?2 ORDER BY name",
                )
                .map_err(db)?;
            let users: Vec<String> = st
                .query_map(params![name, v.0], |r| r.get(0))
                .map_err(db)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db)?;
            if !users.is_empty() {
                return Err(StoreError::AliasInUse {
                    function: name.clone(),
                    version: v,
                    aliases: users.join(", "),
                });
            }
            let n = tx
                .execute(
                    "DELETE FROM versions WHERE function = ?1 AND number = ?2",
                    params![name, v.0],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(StoreError::VersionNotFound(name.clone(), v));
            }
            Ok(())
        })
        .await
    }

    async fn list_aliases(&self, name: &FunctionName) -> Result<Vec<AliasRecord>> {
        let name = name.to_string();
        self.with(move |c| {
            function_exists(c, &name)?;
            aliases_of(c, &name)
        })
        .await
    }

    async fn get_alias(&self, name: &FunctionName, alias: &AliasName) -> Result<AliasRecord> {
        let (name, alias) = (name.to_string(), alias.to_string());
        self.with(move |c| {
            function_exists(c, &name)?;
            let raw = c
                .query_row(
                    "SELECT function, name, version, updated_at FROM aliases WHERE function = ?1 AND name = ?2",
                    [&name, &alias],
                    alias_of,
                )
                .optional()
                .map_err(db)?;
            to_alias(raw.ok_or_else(|| StoreError::AliasNotFound(name.clone(), alias.clone()))?)
        })
        .await
    }

    async fn set_alias(
        &self,
        name: &FunctionName,
        alias: &AliasName,
        version: VersionNumber,
        reason: ChangeReason,
        actor: &str,
    ) -> Result<AliasRecord> {
        let (name, alias, actor) = (name.to_string(), alias.to_string(), actor.to_string());
        self.write(move |tx| {
            function_exists(tx, &name)?;
            move_alias(tx, &name, &alias, version, reason, &actor)
        })
        .await
    }

    async fn rollback_alias(
        &self,
        name: &FunctionName,
        alias: &AliasName,
        actor: &str,
    ) -> Result<AliasRecord> {
        let (name, alias, actor) = (name.to_string(), alias.to_string(), actor.to_string());
        self.write(move |tx| {
            function_exists(tx, &name)?;
            let history = history_of(tx, &name, &alias)?;
            if history.is_empty() {
                return Err(StoreError::AliasNotFound(name.clone(), alias.clone()));
            }
            let target = rollback_target(&history).ok_or_else(|| StoreError::NoHistory(name.clone(), alias.clone()))?;
            move_alias(tx, &name, &alias, target, ChangeReason::Rollback, &actor).map_err(|e| match e {
                StoreError::VersionNotFound(f, v) => StoreError::Conflict(format!(
                    "cannot roll `{alias}` of `{f}` back to version {v}: that version was deleted"
                )),
                e => e,
            })
        })
        .await
    }

    async fn alias_history(
        &self,
        name: &FunctionName,
        alias: &AliasName,
    ) -> Result<Vec<AliasChange>> {
        let (name, alias) = (name.to_string(), alias.to_string());
        self.with(move |c| {
            function_exists(c, &name)?;
            history_of(c, &name, &alias)
        })
        .await
    }

    async fn routing_snapshot(&self) -> Result<RoutingSnapshot> {
        let generation = *self.changes.borrow();
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            let mut st = tx
                .prepare_cached("SELECT name FROM functions ORDER BY name")
                .map_err(db)?;
            let names: Vec<String> = st
                .query_map([], |r| r.get(0))
                .map_err(db)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db)?;
            drop(st);
            let mut functions = Vec::with_capacity(names.len());
            for n in names {
                functions.push(RoutableFunction {
                    name: FunctionName::new(n.clone())
                        .map_err(|e| StoreError::Backend(e.to_string()))?,
                    aliases: aliases_of(&tx, &n)?,
                    versions: versions_of(&tx, &n)?,
                });
            }
            Ok(RoutingSnapshot {
                generation,
                functions,
            })
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metastore_conformance() {
        let store = SqliteStore::open_in_memory().unwrap();
        stratus_store::conformance::metastore(&store).await;
    }

    #[tokio::test]
    async fn logstore_conformance() {
        let store = SqliteStore::open_in_memory().unwrap();
        stratus_store::conformance::logstore(&store).await;
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            stratus_store::conformance::metastore(&store).await;
        }
        let store = SqliteStore::open(&path).unwrap();
        let names: Vec<String> = store
            .list_functions()
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.name.to_string())
            .collect();
        assert_eq!(names, ["conf-a", "conf-b"]);
        let f = FunctionName::new("conf-b").unwrap();
        assert_eq!(
            store
                .get_alias(&f, &AliasName::latest())
                .await
                .unwrap()
                .version,
            VersionNumber(1)
        );
    }
}
