//! Metastore and log store on one SQLite database (WAL mode).

mod chunks;
mod events;
mod logs;
mod meta;
mod rows;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Transaction};
use stratus_store::{Result, StoreError};
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
    policy TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (function, name)
);
CREATE TABLE IF NOT EXISTS alias_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    alias TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER NOT NULL,
    from_policy TEXT,
    to_policy TEXT NOT NULL,
    reason TEXT NOT NULL,
    note TEXT,
    actor TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alias_history_by_alias ON alias_history(function, alias, seq);
CREATE TABLE IF NOT EXISTS alarms (
    id TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL,
    alias TEXT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_by_function ON releases(function, id);
PRAGMA user_version = 1;
"#;

/// Calls run on tokio's blocking pool so the async runtime never waits on disk; one connection
/// serialises writers, which is what SQLite does anyway.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    changes: Arc<watch::Sender<u64>>,
    /// The event queue's group commit (see `events`), started on first use.
    queue: Arc<std::sync::OnceLock<std::sync::mpsc::Sender<events::Op>>>,
    /// Transactions the group commit ran (tests check that writes were grouped).
    queue_commits: Arc<std::sync::atomic::AtomicU64>,
    /// Versions as read for routing snapshots, by function and number: versions never change,
    /// so each is parsed once and every snapshot shares it (deleting evicts).
    versions: Arc<Mutex<VersionCache>>,
}

pub(crate) type VersionCache = std::collections::HashMap<
    String,
    std::collections::HashMap<u32, Arc<stratus_store::VersionRecord>>,
>;

pub(crate) fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(db)?;
        Self::init(conn)
    }

    /// Gives the connection a page cache of `kib` KiB (SQLite's default is 2 MiB). The log
    /// store wants more: its request-id and trace-id indexes take random keys, so with a small
    /// cache every insert re-reads index pages through `pread`.
    pub fn with_cache_kib(self, kib: u32) -> Result<Self> {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .execute_batch(&format!("PRAGMA cache_size = -{kib}"))
            .map_err(db)?;
        Ok(self)
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
        conn.execute_batch(events::SCHEMA).map_err(db)?;
        events::migrate(&conn).map_err(db)?;
        logs::migrate(&conn).map_err(db)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            changes: Arc::new(watch::channel(0).0),
            queue: Arc::default(),
            queue_commits: Arc::default(),
            versions: Arc::default(),
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

#[cfg(test)]
mod tests {
    use stratus_core::{AliasName, FunctionName, VersionNumber};
    use stratus_store::Metastore;

    use super::*;

    #[tokio::test]
    async fn metastore_conformance() {
        let store = SqliteStore::open_in_memory().unwrap();
        stratus_store::conformance::metastore(&store).await;
    }

    #[tokio::test]
    async fn eventstore_conformance() {
        let store = SqliteStore::open_in_memory().unwrap();
        stratus_store::events::conformance::run(&store).await;
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
        assert_eq!(names, ["conf-a", "conf-b", "conf-p"]);
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
