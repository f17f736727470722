//! Row reading and shared statements of the SQLite backend.

use rusqlite::{Connection, OptionalExtension, params};
use stratus_core::{AliasName, FunctionName, FunctionSpec, TrafficPolicy, VersionNumber, now_ms};
use stratus_store::{
    AliasChange, AliasRecord, ChangeReason, FunctionRecord, Result, StoreError, VersionRecord,
};

use super::db;

pub fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub fn json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Backend(format!("stored JSON is unreadable: {e}")))
}

pub fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(backend)
}

pub fn function_exists(c: &Connection, name: &str) -> Result<()> {
    let found: Option<i64> = c
        .query_row("SELECT 1 FROM functions WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db)?;
    found
        .map(|_| ())
        .ok_or_else(|| StoreError::FunctionNotFound(name.into()))
}

pub const VERSION_COLS: &str =
    "function, number, spec, artifact, artifact_size, created_at, created_by";

type RawVersion = (String, u32, String, String, i64, i64, String);

pub fn read_version(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawVersion> {
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

pub fn to_version(raw: RawVersion) -> Result<VersionRecord> {
    let (function, number, spec, artifact, size, created_at, created_by) = raw;
    let spec: FunctionSpec = json(&spec)?;
    Ok(VersionRecord {
        function: FunctionName::new(function).map_err(backend)?,
        number: VersionNumber(number),
        spec,
        artifact,
        artifact_size: size as u64,
        created_at,
        created_by,
    })
}

pub fn versions_of(c: &Connection, name: &str) -> Result<Vec<VersionRecord>> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {VERSION_COLS} FROM versions WHERE function = ?1 ORDER BY number"
        ))
        .map_err(db)?;
    let rows = st.query_map([name], read_version).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(to_version)).collect()
}

pub const ALIAS_COLS: &str = "function, name, version, policy, updated_at";

type RawAlias = (String, String, u32, String, i64);

pub fn read_alias(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawAlias> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

pub fn to_alias((function, name, version, policy, updated_at): RawAlias) -> Result<AliasRecord> {
    Ok(AliasRecord {
        function: FunctionName::new(function).map_err(backend)?,
        name: AliasName::new(name).map_err(backend)?,
        version: VersionNumber(version),
        policy: json(&policy)?,
        updated_at,
    })
}

pub fn aliases_of(c: &Connection, name: &str) -> Result<Vec<AliasRecord>> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {ALIAS_COLS} FROM aliases WHERE function = ?1 ORDER BY name"
        ))
        .map_err(db)?;
    let rows = st.query_map([name], read_alias).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(to_alias)).collect()
}

pub fn history_of(c: &Connection, function: &str, alias: &str) -> Result<Vec<AliasChange>> {
    let mut st = c
        .prepare_cached(
            "SELECT seq, from_version, to_version, from_policy, to_policy, reason, note, actor, at
             FROM alias_history WHERE function = ?1 AND alias = ?2 ORDER BY seq",
        )
        .map_err(db)?;
    type Raw = (
        i64,
        Option<u32>,
        u32,
        Option<String>,
        String,
        String,
        Option<String>,
        String,
        i64,
    );
    let rows = st
        .query_map([function, alias], |r| -> rusqlite::Result<Raw> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .map_err(db)?;
    let f = FunctionName::new(function).map_err(backend)?;
    let a = AliasName::new(alias).map_err(backend)?;
    rows.map(|r| {
        let (seq, from, to, from_policy, to_policy, reason, note, actor, at) = r.map_err(db)?;
        Ok(AliasChange {
            seq,
            function: f.clone(),
            alias: a.clone(),
            from: from.map(VersionNumber),
            to: VersionNumber(to),
            from_policy: from_policy.as_deref().map(json).transpose()?,
            to_policy: json(&to_policy)?,
            reason: ChangeReason::parse(&reason).unwrap_or(ChangeReason::Manual),
            note,
            actor,
            at,
        })
    })
    .collect()
}

fn exists(c: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<bool> {
    let found: Option<i64> = c.query_row(sql, p, |r| r.get(0)).optional().map_err(db)?;
    Ok(found.is_some())
}

/// Gives an alias a policy inside an open transaction, recording history.
pub fn move_alias(
    tx: &Connection,
    function: &str,
    alias: &str,
    policy: TrafficPolicy,
    reason: ChangeReason,
    note: Option<String>,
    actor: &str,
) -> Result<AliasRecord> {
    let policy = policy
        .validate()
        .map_err(|e| StoreError::InvalidPolicy(e.to_string()))?;
    for v in policy.versions() {
        if !exists(
            tx,
            "SELECT 1 FROM versions WHERE function = ?1 AND number = ?2",
            params![function, v.0],
        )? {
            return Err(StoreError::VersionNotFound(function.into(), v));
        }
    }
    for a in policy.alias_refs() {
        if a.as_str() == alias {
            return Err(StoreError::InvalidPolicy(format!(
                "a rule of alias `{alias}` cannot point at `{alias}` itself"
            )));
        }
        if !exists(
            tx,
            "SELECT 1 FROM aliases WHERE function = ?1 AND name = ?2",
            [function, a.as_str()],
        )? {
            return Err(StoreError::AliasNotFound(function.into(), a.to_string()));
        }
    }
    let previous: Option<(u32, String)> = tx
        .query_row(
            "SELECT version, policy FROM aliases WHERE function = ?1 AND name = ?2",
            [function, alias],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db)?;
    let (from, from_policy) = previous.unzip();
    let now = now_ms();
    let to = policy.primary();
    let policy_json = to_json(&policy)?;
    tx.execute(
        "INSERT INTO aliases (function, name, version, policy, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (function, name) DO UPDATE SET version = excluded.version, policy = excluded.policy,
         updated_at = excluded.updated_at",
        params![function, alias, to.0, policy_json, now],
    )
    .map_err(db)?;
    tx.execute(
        "INSERT INTO alias_history (function, alias, from_version, to_version, from_policy, to_policy, reason, note, actor, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![function, alias, from, to.0, from_policy, policy_json, reason.as_str(), note, actor, now],
    )
    .map_err(db)?;
    tx.execute(
        "UPDATE functions SET updated_at = ?2 WHERE name = ?1",
        params![function, now],
    )
    .map_err(db)?;
    Ok(AliasRecord {
        function: FunctionName::new(function).map_err(backend)?,
        name: AliasName::new(alias).map_err(backend)?,
        version: to,
        policy,
        updated_at: now,
    })
}

pub fn function_record(c: &Connection, name: &str) -> Result<FunctionRecord> {
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
        name: FunctionName::new(name).map_err(backend)?,
        created_at,
        updated_at,
        latest_version: latest.map(VersionNumber),
        version_count: count,
    })
}
