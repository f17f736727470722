//! [`EventStore`] on the SQLite database: invocations and timer state in two tables, on the one
//! connection (so a claim cannot race another claim on this node). The hot writes (enqueue,
//! claim, complete) go through a group commit ([`group_commit`]): many callers, one transaction,
//! each answered after it committed. The rest are one transaction per call.

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use stratus_core::now_ms;
use stratus_store::{
    AttemptError, EventStore, Invocation, InvocationState, NewInvocation, Outcome, Result,
    StoreError,
};

use tokio::sync::oneshot;

use super::{SqliteStore, db};

// The indexes are partial, so each write touches as few b-trees as possible: a pending row is in
// the due index only, a running one in the owner index only, a dead letter in the dead-letter
// index only, and a succeeded one (the bulk of the table) in none but the primary key.
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
    owner TEXT,
    traceparent TEXT
);
DROP INDEX IF EXISTS invocations_due;
DROP INDEX IF EXISTS invocations_by_function;
DROP INDEX IF EXISTS invocations_by_owner;
CREATE INDEX IF NOT EXISTS invocations_pending ON invocations(next_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS invocations_dead ON invocations(function, created_at) WHERE state = 'dead_lettered';
CREATE INDEX IF NOT EXISTS invocations_owned ON invocations(owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS timers (
    key TEXT PRIMARY KEY,
    last_fire INTEGER NOT NULL
);
"#;

/// Brings an invocations table from before trace propagation up to date.
pub(crate) fn migrate(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    let has: i64 = c.query_row(
        "SELECT count(*) FROM pragma_table_info('invocations') WHERE name = 'traceparent'",
        [],
        |r| r.get(0),
    )?;
    if has == 0 {
        c.execute_batch("ALTER TABLE invocations ADD COLUMN traceparent TEXT")?;
    }
    Ok(())
}

const COLUMNS: &str = "id, function, target, webhook, payload, content_type, event_type, source, state, attempts, created_at, updated_at, next_at, result, status, errors, owner, traceparent";

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
        traceparent: r.get(17)?,
    })
}

fn insert(c: &Connection, i: &NewInvocation) -> Result<()> {
    let n = c
        .prepare_cached(
            "INSERT OR IGNORE INTO invocations (id, function, target, webhook, payload, content_type, event_type, source, state, attempts, created_at, updated_at, next_at, errors, traceparent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', 0, ?9, ?9, ?10, '[]', ?11)",
        )
        .and_then(|mut st| {
            st.execute(params![i.id, i.function, i.target, i.webhook, i.payload, i.content_type, i.event_type, i.source, i.created_at, i.not_before, i.traceparent])
        })
        .map_err(db)?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "invocation {} exists already",
            i.id
        )));
    }
    Ok(())
}

fn get(c: &Connection, id: &str) -> Result<Option<Invocation>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM invocations WHERE id = ?1"))
        .and_then(|mut st| st.query_row([id], row).optional())
        .map_err(db)
}

/// One statement: mark up to `limit` due invocations running and read them back.
fn claim(
    c: &Connection,
    owner: &str,
    now: i64,
    limit: u32,
    exclude: &[String],
) -> Result<Vec<Invocation>> {
    let marks = vec!["?"; exclude.len()].join(",");
    let sql = format!(
        "UPDATE invocations SET state = 'running', attempts = attempts + 1, owner = ?, updated_at = ? \
         WHERE rowid IN (SELECT rowid FROM invocations WHERE state = 'pending' AND next_at <= ? AND function NOT IN ({marks}) ORDER BY next_at, rowid LIMIT ?) \
         RETURNING {COLUMNS}, rowid"
    );
    let mut args: Vec<rusqlite::types::Value> =
        vec![owner.to_string().into(), now_ms().into(), now.into()];
    args.extend(exclude.iter().cloned().map(Into::into));
    args.push((limit as i64).into());
    let mut st = c.prepare_cached(&sql).map_err(db)?;
    let mut got: Vec<(Invocation, i64)> = st
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok((row(r)?, r.get(18)?))
        })
        .map_err(db)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db)?;
    // RETURNING has no order: oldest due first, as selected.
    got.sort_by_key(|(i, rowid)| (i.next_at, *rowid));
    Ok(got.into_iter().map(|(i, _)| i).collect())
}

fn complete(
    c: &Connection,
    id: &str,
    owner: &str,
    outcome: Outcome,
    then: Option<&NewInvocation>,
) -> Result<bool> {
    let Some(cur) = get(c, id)? else {
        return Ok(false);
    };
    if cur.state != InvocationState::Running || cur.owner.as_deref() != Some(owner) {
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
    c.prepare_cached(
        "UPDATE invocations SET state = ?2, next_at = ?3, status = ?4, result = ?5, errors = ?6, owner = NULL, updated_at = ?7 WHERE id = ?1",
    )
    .and_then(|mut st| {
        st.execute(params![
            id,
            state.as_str(),
            next_at,
            status,
            result,
            serde_json::to_string(&errors).expect("errors serialize"),
            now
        ])
    })
    .map_err(db)?;
    if let Some(t) = then {
        insert(c, t)?;
    }
    Ok(true)
}

/// A queue write waiting for the next group commit, with where its answer goes.
pub(crate) enum Op {
    Enqueue(NewInvocation, oneshot::Sender<Result<()>>),
    Claim {
        owner: String,
        now: i64,
        limit: u32,
        exclude: Vec<String>,
        reply: oneshot::Sender<Result<Vec<Invocation>>>,
    },
    Complete {
        id: String,
        owner: String,
        outcome: Outcome,
        then: Option<NewInvocation>,
        reply: oneshot::Sender<Result<bool>>,
    },
}

/// An op's result, held until its batch is committed.
enum Done {
    Enqueue(Result<()>, oneshot::Sender<Result<()>>),
    Claim(
        Result<Vec<Invocation>>,
        oneshot::Sender<Result<Vec<Invocation>>>,
    ),
    Complete(Result<bool>, oneshot::Sender<Result<bool>>),
}

impl Done {
    /// Sends the result, or `err` instead of a success when the batch did not commit.
    fn send(self, err: Option<&StoreError>) {
        fn pick<T>(r: Result<T>, err: Option<&StoreError>) -> Result<T> {
            match (r, err) {
                (Ok(_), Some(e)) => Err(StoreError::Backend(e.to_string())),
                (r, _) => r,
            }
        }
        // A caller that went away (its request was dropped) is no error here.
        match self {
            Done::Enqueue(r, tx) => drop(tx.send(pick(r, err))),
            Done::Claim(r, tx) => drop(tx.send(pick(r, err))),
            Done::Complete(r, tx) => drop(tx.send(pick(r, err))),
        }
    }
}

/// Largest number of queue writes in one transaction (bounds the time others wait for the lock).
const GROUP_MAX: usize = 512;

/// The group commit: one thread takes every queue write waiting (up to [`GROUP_MAX`]), runs them
/// in one transaction and answers each only after that transaction committed. While a commit is
/// being written, new writes queue up and go in the next one, so the number of commits per second
/// stays bounded however many callers there are, and a 202 still means "on disk in the WAL".
/// Each write is atomic on its own: a failing one (a duplicate id) is undone alone.
fn group_commit(conn: Arc<Mutex<Connection>>, rx: mpsc::Receiver<Op>, commits: Arc<AtomicU64>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
        run_batch(&mut guard, ops);
        commits.fetch_add(1, Ordering::Relaxed);
    }
}

fn run_batch(conn: &mut Connection, ops: Vec<Op>) {
    let mut done = Vec::with_capacity(ops.len());
    let mut tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            let e = db(e);
            for op in ops {
                match op {
                    Op::Enqueue(_, r) => Done::Enqueue(Ok(()), r),
                    Op::Claim { reply, .. } => Done::Claim(Ok(vec![]), reply),
                    Op::Complete { reply, .. } => Done::Complete(Ok(false), reply),
                }
                .send(Some(&e));
            }
            return;
        }
    };
    let mut broken = None;
    for op in ops {
        if let Some(e) = &broken {
            // The transaction is gone (SQLite rolls back on I/O errors): nothing after it ran.
            let e = StoreError::Backend(format!("not run: {e}"));
            match op {
                Op::Enqueue(_, r) => Done::Enqueue(Err(e), r),
                Op::Claim { reply, .. } => Done::Claim(Err(e), reply),
                Op::Complete { reply, .. } => Done::Complete(Err(e), reply),
            }
            .send(None);
            continue;
        }
        let d = match op {
            // Single statements: atomic without a savepoint.
            Op::Enqueue(inv, r) => Done::Enqueue(insert(&tx, &inv), r),
            Op::Claim {
                owner,
                now,
                limit,
                exclude,
                reply,
            } => Done::Claim(claim(&tx, &owner, now, limit, &exclude), reply),
            Op::Complete {
                id,
                owner,
                outcome,
                then,
                reply,
            } => {
                let r = match &then {
                    None => complete(&tx, &id, &owner, outcome, None),
                    // Two writes: the destination's insert may fail, undoing the update with it.
                    Some(t) => tx.savepoint().map_err(db).and_then(|mut sp| {
                        sp.set_drop_behavior(rusqlite::DropBehavior::Rollback);
                        let r = complete(&sp, &id, &owner, outcome, Some(t))?;
                        sp.commit().map_err(db)?;
                        Ok(r)
                    }),
                };
                Done::Complete(r, reply)
            }
        };
        let failed = matches!(
            &d,
            Done::Enqueue(Err(_), _) | Done::Claim(Err(_), _) | Done::Complete(Err(_), _)
        );
        if failed && tx.is_autocommit() {
            broken = Some("the transaction was rolled back by an earlier error".to_string());
        }
        done.push(d);
    }
    let err = if broken.is_some() {
        Some(StoreError::Backend(
            "sqlite: the transaction was rolled back".into(),
        ))
    } else {
        tx.commit().err().map(db)
    };
    for d in done {
        d.send(err.as_ref());
    }
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

    /// Hands a write to the group commit (started on first use) and waits for its answer.
    async fn queued<T>(&self, op: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let sender = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let (conn, commits) = (self.conn.clone(), self.queue_commits.clone());
            std::thread::Builder::new()
                .name("stratus-queue-commit".into())
                .spawn(move || group_commit(conn, rx, commits))
                .expect("spawn the queue's commit thread");
            tx
        });
        let (tx, rx) = oneshot::channel();
        sender
            .send(op(tx))
            .map_err(|_| StoreError::Backend("the queue's commit thread is gone".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the queue's commit thread is gone".into()))?
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn enqueue(&self, inv: NewInvocation) -> Result<()> {
        self.queued(|r| Op::Enqueue(inv, r)).await
    }

    async fn claim_due(
        &self,
        owner: &str,
        now: i64,
        limit: u32,
        exclude: &[String],
    ) -> Result<Vec<Invocation>> {
        let (owner, exclude) = (owner.to_string(), exclude.to_vec());
        self.queued(|reply| Op::Claim {
            owner,
            now,
            limit,
            exclude,
            reply,
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
        self.queued(|reply| Op::Complete {
            id,
            owner,
            outcome,
            then,
            reply,
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn inv(id: &str) -> NewInvocation {
        NewInvocation {
            id: id.into(),
            function: "f".into(),
            target: "latest".into(),
            webhook: None,
            payload: b"{}".to_vec(),
            content_type: None,
            event_type: "stratus.invoke".into(),
            source: "test".into(),
            created_at: 1,
            not_before: 1,
            traceparent: None,
        }
    }

    /// Many concurrent enqueues share transactions, yet each is answered only once it is
    /// committed (another connection reads it at once), a duplicate id fails alone, and
    /// concurrent claimers get each invocation exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn grouped_writes_are_each_durable_and_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let store = SqliteStore::open(&path).unwrap();
        let reader = SqliteStore::open(&path).unwrap();
        let (tasks, each) = (64, 40);
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (store, reader) = (store.clone(), reader.clone());
            handles.push(tokio::spawn(async move {
                let dup = store.enqueue(inv("dup")).await;
                for n in 0..each {
                    let id = format!("e-{t}-{n}");
                    store.enqueue(inv(&id)).await.unwrap();
                    let seen = reader.get_invocation(&id).await.unwrap();
                    assert!(seen.is_some(), "{id} was answered before it was committed");
                }
                dup.is_ok()
            }));
        }
        let mut dup_ok = 0;
        for h in handles {
            dup_ok += h.await.unwrap() as usize;
        }
        assert_eq!(dup_ok, 1, "one enqueue of a duplicate id succeeds");
        let total = tasks * each + 1;
        let commits = store.queue_commits.load(Ordering::Relaxed);
        assert!(
            (commits as usize) < total,
            "{commits} commits for {total} enqueues: nothing was grouped"
        );

        // Four nodes claim and complete concurrently: every invocation once, first attempt.
        let mut claimers = Vec::new();
        for c in 0..4 {
            let store = store.clone();
            claimers.push(tokio::spawn(async move {
                let owner = format!("n{c}");
                let mut got = Vec::new();
                loop {
                    let batch = store.claim_due(&owner, 10, 50, &[]).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    let mut done = Vec::new();
                    for i in batch {
                        assert_eq!((i.attempts, i.owner.as_deref()), (1, Some(owner.as_str())));
                        let ok = Outcome::Succeeded {
                            status: Some(200),
                            result: None,
                        };
                        let s = store.clone();
                        let (o, id) = (owner.clone(), i.id.clone());
                        done.push(tokio::spawn(async move {
                            s.complete(&id, &o, ok, None).await.unwrap()
                        }));
                        got.push(i.id);
                    }
                    for d in done {
                        assert!(d.await.unwrap());
                    }
                }
            }));
        }
        let mut all = Vec::new();
        for c in claimers {
            all.extend(c.await.unwrap());
        }
        let unique: HashSet<&String> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "an invocation was claimed twice");
        assert_eq!(all.len(), total);
        drop(store);
        let reopened = SqliteStore::open(&path).unwrap();
        for id in ["dup", "e-0-0", "e-63-39"] {
            let i = reopened.get_invocation(id).await.unwrap().unwrap();
            assert_eq!(i.state, InvocationState::Succeeded, "{id}");
        }
    }

    /// A completion whose destination cannot be stored is undone whole, in its group.
    #[tokio::test]
    async fn a_failing_completion_undoes_only_itself() {
        let store = SqliteStore::open_in_memory().unwrap();
        for id in ["x", "y", "z"] {
            store.enqueue(inv(id)).await.unwrap();
        }
        let got = store.claim_due("n", 10, 10, &[]).await.unwrap();
        assert_eq!(got.len(), 3);
        let ok = || Outcome::Succeeded {
            status: Some(200),
            result: None,
        };
        // Both in flight at once, so they can share a transaction.
        let (bad, good) = tokio::join!(
            store.complete("x", "n", ok(), Some(inv("y"))),
            store.complete("z", "n", ok(), None),
        );
        assert!(matches!(bad, Err(StoreError::Conflict(_))), "{bad:?}");
        assert!(good.unwrap());
        let x = store.get_invocation("x").await.unwrap().unwrap();
        assert_eq!(
            (x.state, x.owner.as_deref()),
            (InvocationState::Running, Some("n"))
        );
        let z = store.get_invocation("z").await.unwrap().unwrap();
        assert_eq!(z.state, InvocationState::Succeeded);
    }
}
