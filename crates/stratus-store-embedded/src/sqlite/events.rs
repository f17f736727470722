//! [`EventStore`] on the SQLite database: invocations and timer state in two tables, each call
//! one transaction on the one connection (so a claim cannot race another claim on this node).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, Transaction, params};
use stratus_core::now_ms;
use stratus_store::{
    AttemptError, EventStore, Invocation, InvocationState, NewInvocation, Outcome, Result,
    StoreError,
};

use super::{SqliteStore, db};

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS invocations (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    target TEXT NOT NULL,
    webhook TEXT,
    payload BLOB NOT NULL,
    content_type TEXT,
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    result TEXT,
    status INTEGER,
    errors TEXT NOT NULL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS invocations_due ON invocations(state, next_at);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations(function, state, created_at);
CREATE INDEX IF NOT EXISTS invocations_by_owner ON invocations(owner);
CREATE TABLE IF NOT EXISTS timers (
    key TEXT PRIMARY KEY,
    last_fire INTEGER NOT NULL
);
"#;

const COLUMNS: &str = "id, function, target, webhook, payload, content_type, event_type, source, state, attempts, created_at, updated_at, next_at, result, status, errors, owner";

fn row(r: &Row<'_>) -> rusqlite::Result<Invocation> {
    let errors: String = r.get(15)?;
    Ok(Invocation {
        id: r.get(0)?,
        function: r.get(1)?,
        target: r.get(2)?,
        webhook: r.get(3)?,
        payload: r.get(4)?,
        content_type: r.get(5)?,
        event_type: r.get(6)?,
        source: r.get(7)?,
        state: InvocationState::parse(&r.get::<_, String>(8)?),
        attempts: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        next_at: r.get(12)?,
        result: r.get(13)?,
        status: r.get(14)?,
        errors: serde_json::from_str(&errors).unwrap_or_default(),
        owner: r.get(16)?,
    })
}

fn insert(tx: &Transaction<'_>, i: &NewInvocation) -> Result<()> {
    let n = tx
        .execute(
            "INSERT OR IGNORE INTO invocations (id, function, target, webhook, payload, content_type, event_type, source, state, attempts, created_at, updated_at, next_at, errors) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', 0, ?9, ?9, ?10, '[]')",
            params![i.id, i.function, i.target, i.webhook, i.payload, i.content_type, i.event_type, i.source, i.created_at, i.not_before],
        )
        .map_err(db)?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "invocation {} exists already",
            i.id
        )));
    }
    Ok(())
}

fn get(tx: &rusqlite::Connection, id: &str) -> Result<Option<Invocation>> {
    tx.query_row(
        &format!("SELECT {COLUMNS} FROM invocations WHERE id = ?1"),
        [id],
        row,
    )
    .optional()
    .map_err(db)
}

impl SqliteStore {
    async fn tx<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        // Not through `write`: the queue is not routing state, the router must not rebuild.
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            let out = f(&tx)?;
            tx.commit().map_err(db)?;
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn enqueue(&self, inv: NewInvocation) -> Result<()> {
        self.tx(move |tx| insert(tx, &inv)).await
    }

    async fn claim_due(
        &self,
        owner: &str,
        now: i64,
        limit: u32,
        exclude: &[String],
    ) -> Result<Vec<Invocation>> {
        let owner = owner.to_string();
        let exclude = exclude.to_vec();
        self.tx(move |tx| {
            let marks = vec!["?"; exclude.len()].join(",");
            let sql = format!(
                "SELECT id FROM invocations WHERE state = 'pending' AND next_at <= ? AND function NOT IN ({marks}) ORDER BY next_at, rowid LIMIT ?"
            );
            let mut args: Vec<rusqlite::types::Value> = vec![now.into()];
            args.extend(exclude.into_iter().map(Into::into));
            args.push((limit as i64).into());
            let ids: Vec<String> = {
                let mut st = tx.prepare_cached(&sql).map_err(db)?;
                st.query_map(rusqlite::params_from_iter(args), |r| r.get(0))
                    .map_err(db)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(db)?
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                tx.execute(
                    "UPDATE invocations SET state = 'running', attempts = attempts + 1, owner = ?2, updated_at = ?3 WHERE id = ?1",
                    params![id, owner, now_ms()],
                )
                .map_err(db)?;
                out.extend(get(tx, &id)?);
            }
            Ok(out)
        })
        .await
    }

    async fn complete(
        &self,
        id: &str,
        owner: &str,
        outcome: Outcome,
        then: Option<NewInvocation>,
    ) -> Result<bool> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.tx(move |tx| {
            let Some(cur) = get(tx, &id)? else {
                return Ok(false);
            };
            if cur.state != InvocationState::Running || cur.owner.as_deref() != Some(&owner) {
                return Ok(false);
            }
            let now = now_ms();
            let mut errors = cur.errors;
            let failed = |errors: &mut Vec<AttemptError>, e: String| {
                errors.push(AttemptError {
                    attempt: cur.attempts,
                    at: now,
                    error: e,
                })
            };
            let (state, next_at, status, result) = match outcome {
                Outcome::Succeeded { status, result } => {
                    (InvocationState::Succeeded, cur.next_at, status, result)
                }
                Outcome::Retry { error, at } => {
                    failed(&mut errors, error);
                    (InvocationState::Pending, at, None, None)
                }
                Outcome::DeadLetter { error } => {
                    failed(&mut errors, error);
                    (InvocationState::DeadLettered, cur.next_at, None, None)
                }
            };
            tx.execute(
                "UPDATE invocations SET state = ?2, next_at = ?3, status = ?4, result = ?5, errors = ?6, owner = NULL, updated_at = ?7 WHERE id = ?1",
                params![
                    id,
                    state.as_str(),
                    next_at,
                    status,
                    result,
                    serde_json::to_string(&errors).expect("errors serialize"),
                    now
                ],
            )
            .map_err(db)?;
            if let Some(t) = &then {
                insert(tx, t)?;
            }
            Ok(true)
        })
        .await
    }

    async fn release_owned(&self, owner: &str) -> Result<u64> {
        let owner = owner.to_string();
        self.tx(move |tx| {
            let n = tx
                .execute(
                    "UPDATE invocations SET state = 'pending', owner = NULL, updated_at = ?2 WHERE owner = ?1 AND state = 'running'",
                    params![owner, now_ms()],
                )
                .map_err(db)?;
            Ok(n as u64)
        })
        .await
    }

    async fn get_invocation(&self, id: &str) -> Result<Option<Invocation>> {
        let id = id.to_string();
        self.with(move |c| get(c, &id)).await
    }

    async fn next_due(&self) -> Result<Option<i64>> {
        self.with(|c| {
            c.query_row(
                "SELECT MIN(next_at) FROM invocations WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )
            .map_err(db)
        })
        .await
    }

    async fn dead_letters(&self, function: &str, limit: u32) -> Result<Vec<Invocation>> {
        let function = function.to_string();
        self.with(move |c| {
            let mut st = c
                .prepare_cached(&format!("SELECT {COLUMNS} FROM invocations WHERE function = ?1 AND state = 'dead_lettered' ORDER BY created_at, rowid LIMIT ?2"))
                .map_err(db)?;
            st.query_map(params![function, limit as i64], row)
                .map_err(db)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db)
        })
        .await
    }

    async fn redrive(&self, function: &str, id: Option<&str>, now: i64) -> Result<u64> {
        let function = function.to_string();
        let id = id.map(str::to_string);
        self.tx(move |tx| {
            let n = tx
                .execute(
                    "UPDATE invocations SET state = 'pending', attempts = 0, next_at = ?3, updated_at = ?4 WHERE function = ?1 AND state = 'dead_lettered' AND (?2 IS NULL OR id = ?2)",
                    params![function, id, now, now_ms()],
                )
                .map_err(db)?;
            Ok(n as u64)
        })
        .await
    }

    async fn prune_invocations(&self, before_ms: i64) -> Result<u64> {
        self.tx(move |tx| {
            let n = tx
                .execute(
                    "DELETE FROM invocations WHERE state = 'succeeded' AND updated_at < ?1",
                    [before_ms],
                )
                .map_err(db)?;
            Ok(n as u64)
        })
        .await
    }

    async fn timer_last_fire(&self, key: &str) -> Result<Option<i64>> {
        let key = key.to_string();
        self.with(move |c| {
            c.query_row("SELECT last_fire FROM timers WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn claim_fire(
        &self,
        key: &str,
        expected: Option<i64>,
        fire_at: i64,
        inv: Option<NewInvocation>,
    ) -> Result<bool> {
        let key = key.to_string();
        self.tx(move |tx| {
            let cur: Option<i64> = tx
                .query_row("SELECT last_fire FROM timers WHERE key = ?1", [&key], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db)?;
            if cur != expected {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO timers (key, last_fire) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET last_fire = excluded.last_fire",
                params![key, fire_at],
            )
            .map_err(db)?;
            if let Some(i) = &inv {
                insert(tx, i)?;
            }
            Ok(true)
        })
        .await
    }
}
