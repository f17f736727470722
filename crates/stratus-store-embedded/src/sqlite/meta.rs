use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use stratus_core::{AliasName, FunctionName, TrafficPolicy, VersionNumber, now_ms};
use stratus_store::{
    AlarmRecord, AliasChange, AliasRecord, ChangeReason, FunctionRecord, Metastore, NewVersion,
    Release, ReleaseState, Result, RoutableFunction, RoutingSnapshot, StoreError, VersionRecord,
    rollback_target,
};
use tokio::sync::watch;

use super::rows::*;
use super::{SqliteStore, db};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
            tx.execute(
                "INSERT INTO versions (function, number, spec, artifact, artifact_size, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![name, new.number.0, to_json(&new.spec)?, new.artifact, new.artifact_size as i64, now, new.actor],
            )
            .map_err(db)?;
            tx.execute("UPDATE functions SET next_version = ?2 WHERE name = ?1", params![name, next + 1]).map_err(db)?;
            move_alias(tx, &name, "latest", TrafficPolicy::single(new.number), ChangeReason::Deploy, None, &new.actor)?;
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
        let cache = self.versions.clone();
        self.write(move |tx| {
            function_exists(tx, &name)?;
            // Under the connection: no snapshot runs between this and the commit.
            lock(&cache).remove(&name);
            for table in ["alias_history", "aliases", "versions", "releases"] {
                tx.execute(&format!("DELETE FROM {table} WHERE function = ?1"), [&name])
                    .map_err(db)?;
            }
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
        let cache = self.versions.clone();
        self.write(move |tx| {
            function_exists(tx, &name)?;
            let users: Vec<String> = aliases_of(tx, &name)?
                .into_iter()
                .filter(|a| a.policy.versions().contains(&v))
                .map(|a| a.name.to_string())
                .collect();
            if !users.is_empty() {
                return Err(StoreError::AliasInUse {
                    function: name.clone(),
                    version: v,
                    aliases: users.join(", "),
                });
            }
            if let Some(m) = lock(&cache).get_mut(&name) {
                m.remove(&v.0);
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
                    &format!("SELECT {ALIAS_COLS} FROM aliases WHERE function = ?1 AND name = ?2"),
                    [&name, &alias],
                    read_alias,
                )
                .optional()
                .map_err(db)?;
            to_alias(raw.ok_or_else(|| StoreError::AliasNotFound(name.clone(), alias.clone()))?)
        })
        .await
    }

    async fn set_alias_policy(
        &self,
        name: &FunctionName,
        alias: &AliasName,
        policy: TrafficPolicy,
        reason: ChangeReason,
        note: Option<String>,
        actor: &str,
    ) -> Result<AliasRecord> {
        let (name, alias, actor) = (name.to_string(), alias.to_string(), actor.to_string());
        self.write(move |tx| {
            function_exists(tx, &name)?;
            move_alias(tx, &name, &alias, policy, reason, note, &actor)
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
            let target = rollback_target(&history)
                .ok_or_else(|| StoreError::NoHistory(name.clone(), alias.clone()))?;
            let shown = target.to_string();
            move_alias(
                tx,
                &name,
                &alias,
                target,
                ChangeReason::Rollback,
                None,
                &actor,
            )
            .map_err(|e| match e {
                StoreError::VersionNotFound(f, v) => StoreError::Conflict(format!(
                    "cannot roll `{alias}` of `{f}` back to {shown}: version {v} was deleted"
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

    async fn create_release(&self, release: Release) -> Result<Release> {
        self.write(move |tx| {
            function_exists(tx, release.function.as_str())?;
            let running: Option<i64> = tx
                .query_row(
                    "SELECT id FROM releases WHERE function = ?1 AND alias = ?2 AND state = 'running'",
                    [release.function.as_str(), release.alias.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            if let Some(id) = running {
                return Err(StoreError::Conflict(format!(
                    "release {id} is still running on `{}` of `{}`: abort it first (stratus release abort)",
                    release.alias, release.function
                )));
            }
            tx.execute(
                "INSERT INTO releases (function, alias, state, data) VALUES (?1, ?2, ?3, '{}')",
                params![release.function.as_str(), release.alias.as_str(), release.state.as_str()],
            )
            .map_err(db)?;
            let mut release = release;
            release.id = tx.last_insert_rowid();
            tx.execute("UPDATE releases SET data = ?2 WHERE id = ?1", params![release.id, to_json(&release)?]).map_err(db)?;
            Ok(release)
        })
        .await
    }

    async fn update_release(&self, release: &Release) -> Result<()> {
        let release = release.clone();
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE releases SET state = ?2, data = ?3 WHERE id = ?1",
                    params![release.id, release.state.as_str(), to_json(&release)?],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "release {} no longer exists",
                    release.id
                )));
            }
            Ok(())
        })
        .await
    }

    async fn list_releases(&self, name: &FunctionName) -> Result<Vec<Release>> {
        let name = name.to_string();
        self.with(move |c| {
            function_exists(c, &name)?;
            let mut st = c
                .prepare_cached("SELECT data FROM releases WHERE function = ?1 ORDER BY id DESC")
                .map_err(db)?;
            let rows: Vec<String> = st
                .query_map([&name], |r| r.get(0))
                .map_err(db)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db)?;
            rows.iter().map(|d| json(d)).collect()
        })
        .await
    }

    async fn create_alarm(&self, alarm: &AlarmRecord) -> Result<()> {
        let (id, data) = (alarm.id.clone(), to_json(alarm)?);
        // Not through `write`: alarms are not routing changes.
        self.with(move |c| {
            let n = c
                .execute(
                    "INSERT INTO alarms (id, data) VALUES (?1, ?2) ON CONFLICT(id) DO NOTHING",
                    params![id, data],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "an alarm `{id}` already exists"
                )));
            }
            Ok(())
        })
        .await
    }

    async fn update_alarm(&self, alarm: &AlarmRecord) -> Result<()> {
        let (id, data) = (alarm.id.clone(), to_json(alarm)?);
        self.with(move |c| {
            let n = c
                .execute(
                    "UPDATE alarms SET data = ?2 WHERE id = ?1",
                    params![id, data],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(StoreError::AlarmNotFound(id));
            }
            Ok(())
        })
        .await
    }

    async fn list_alarms(&self) -> Result<Vec<AlarmRecord>> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT data FROM alarms ORDER BY id")
                .map_err(db)?;
            let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(db)?;
            let mut out = Vec::new();
            for data in rows {
                out.push(serde_json::from_str(&data.map_err(db)?).map_err(|e| {
                    StoreError::Backend(format!("a stored alarm does not parse: {e}"))
                })?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_alarm(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.with(move |c| {
            let n = c
                .execute("DELETE FROM alarms WHERE id = ?1", [&id])
                .map_err(db)?;
            if n == 0 {
                return Err(StoreError::AlarmNotFound(id));
            }
            Ok(())
        })
        .await
    }

    async fn running_releases(&self) -> Result<Vec<Release>> {
        self.with(move |c| {
            let mut st = c
                .prepare_cached("SELECT data FROM releases WHERE state = ?1 ORDER BY id")
                .map_err(db)?;
            let rows: Vec<String> = st
                .query_map([ReleaseState::Running.as_str()], |r| r.get(0))
                .map_err(db)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db)?;
            rows.iter().map(|d| json(d)).collect()
        })
        .await
    }

    async fn routing_snapshot(&self) -> Result<RoutingSnapshot> {
        let generation = *self.changes.borrow();
        let cache = self.versions.clone();
        self.with(move |c| {
            // Three scans, not two queries per function: the router reads this after every
            // change, and with thousands of functions the per-function queries were most of a
            // deploy's time.
            let tx = c.transaction().map_err(db)?;
            let mut st = tx
                .prepare_cached("SELECT name FROM functions ORDER BY name")
                .map_err(db)?;
            let mut functions = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(db)?
                .map(|n| {
                    Ok(RoutableFunction {
                        name: FunctionName::new(n.map_err(db)?).map_err(backend)?,
                        aliases: vec![],
                        versions: vec![],
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            drop(st);
            let mut st = tx
                .prepare_cached(&format!(
                    "SELECT {ALIAS_COLS} FROM aliases ORDER BY function, name"
                ))
                .map_err(db)?;
            // Both lists are ordered by function name, as `functions` is: walk them together.
            let mut at = 0;
            for raw in st.query_map([], read_alias).map_err(db)? {
                let a = to_alias(raw.map_err(db)?)?;
                while at < functions.len() && functions[at].name.as_str() < a.function.as_str() {
                    at += 1;
                }
                if let Some(f) = functions.get_mut(at).filter(|f| f.name == a.function) {
                    f.aliases.push(a);
                }
            }
            drop(st);
            // Versions never change: only the keys are read, and a version not seen before is
            // read and parsed once, then shared by every later snapshot.
            let mut keys = tx
                .prepare_cached("SELECT function, number FROM versions ORDER BY function, number")
                .map_err(db)?;
            let mut rows = keys.query([]).map_err(db)?;
            let mut cache = lock(&cache);
            let mut at = 0;
            while let Some(row) = rows.next().map_err(db)? {
                let function = row.get_ref(0).map_err(db)?.as_str().map_err(backend)?;
                let number: u32 = row.get(1).map_err(db)?;
                while at < functions.len() && functions[at].name.as_str() < function {
                    at += 1;
                }
                let Some(f) = functions.get_mut(at).filter(|f| f.name.as_str() == function) else {
                    continue;
                };
                let cached = cache.get(function).and_then(|m| m.get(&number)).cloned();
                let v = match cached {
                    Some(v) => v,
                    None => {
                        let raw = tx
                            .prepare_cached(&format!(
                                "SELECT {VERSION_COLS} FROM versions WHERE function = ?1 AND number = ?2"
                            ))
                            .map_err(db)?
                            .query_row(params![function, number], read_version)
                            .map_err(db)?;
                        let v = Arc::new(to_version(raw)?);
                        cache
                            .entry(function.to_string())
                            .or_default()
                            .insert(number, v.clone());
                        v
                    }
                };
                f.versions.push(v);
            }
            drop(rows);
            drop(keys);
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
