use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use stratus_core::{AliasName, FunctionName, TrafficPolicy, VersionNumber};
use stratus_scaler::PoolStatus;
use stratus_store::{
    AliasChange, AliasRecord, ChangeReason, FunctionRecord, Release, VersionRecord,
};

use crate::release::NewRelease;
use crate::{ApiError, ApiRoutes, AppState, OPENAPI, bad_request};

const ACTOR: &str = "admin";

pub fn register(r: ApiRoutes) -> ApiRoutes {
    let r = crate::events::register(r);
    r.add("get", "/api/v1/health", get(health))
        .add("get", "/api/v1/openapi.json", get(openapi))
        .add("post", "/api/v1/deploy", post(deploy))
        .add("get", "/api/v1/functions", get(list_functions))
        .add("get", "/api/v1/functions/{name}", get(function_info))
        .add(
            "delete",
            "/api/v1/functions/{name}",
            delete(delete_function),
        )
        .add(
            "get",
            "/api/v1/functions/{name}/versions",
            get(list_versions),
        )
        .add(
            "get",
            "/api/v1/functions/{name}/versions/{version}",
            get(get_version),
        )
        .add(
            "delete",
            "/api/v1/functions/{name}/versions/{version}",
            delete(delete_version),
        )
        .add("get", "/api/v1/functions/{name}/aliases", get(list_aliases))
        .add(
            "get",
            "/api/v1/functions/{name}/aliases/{alias}",
            get(get_alias),
        )
        .add(
            "put",
            "/api/v1/functions/{name}/aliases/{alias}",
            put(set_alias),
        )
        .add(
            "get",
            "/api/v1/functions/{name}/aliases/{alias}/history",
            get(alias_history),
        )
        .add(
            "post",
            "/api/v1/functions/{name}/aliases/{alias}/rollback",
            post(rollback),
        )
        .add(
            "get",
            "/api/v1/functions/{name}/aliases/{alias}/shadow",
            get(alias_shadow),
        )
        .add(
            "get",
            "/api/v1/functions/{name}/releases",
            get(list_releases),
        )
        .add(
            "post",
            "/api/v1/functions/{name}/releases",
            post(start_release),
        )
        .add(
            "post",
            "/api/v1/functions/{name}/releases/{id}/abort",
            post(abort_release),
        )
        .add("get", "/api/v1/functions/{name}/instances", get(instances))
}

pub(crate) fn function(name: &str) -> Result<FunctionName, ApiError> {
    FunctionName::new(name).map_err(|e| bad_request(e.to_string()))
}

fn alias(name: &str) -> Result<AliasName, ApiError> {
    AliasName::new(name).map_err(|e| bad_request(e.to_string()))
}

fn version(v: &str) -> Result<VersionNumber, ApiError> {
    v.parse()
        .map_err(|e: stratus_core::NameError| bad_request(e.to_string()))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Deserialize)]
struct DeployQuery {
    /// When given, the manifest must name this function.
    function: Option<String>,
}

async fn deploy(
    State(cp): State<AppState>,
    Query(q): Query<DeployQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let expected = q.function.as_deref().map(function).transpose()?;
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let reader = tokio_util::io::StreamReader::new(stream);
    let out = cp.deploy(Box::new(reader), expected, ACTOR).await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn list_functions(State(cp): State<AppState>) -> Result<Json<Vec<FunctionRecord>>, ApiError> {
    Ok(Json(cp.store.list_functions().await?))
}

#[derive(Serialize)]
struct FunctionInfo {
    function: FunctionRecord,
    aliases: Vec<AliasRecord>,
    versions: Vec<VersionSummary>,
    pools: Vec<PoolStatus>,
    /// The latest version's resource limits and how this node enforces them.
    limits: LimitsInfo,
}

#[derive(Serialize)]
struct LimitsInfo {
    memory_bytes: Option<u64>,
    cpu: Option<f64>,
    pids: Option<u32>,
    enforcement: serde_json::Value,
}

#[derive(Serialize)]
struct VersionSummary {
    number: VersionNumber,
    artifact: String,
    artifact_size: u64,
    created_at: i64,
    runtime: &'static str,
    routes: Vec<stratus_core::RouteSpec>,
}

impl From<&VersionRecord> for VersionSummary {
    fn from(v: &VersionRecord) -> Self {
        Self {
            number: v.number,
            artifact: v.artifact.clone(),
            artifact_size: v.artifact_size,
            created_at: v.created_at,
            runtime: v.spec.runtime.as_str(),
            routes: v.spec.routes.clone(),
        }
    }
}

async fn function_info(
    State(cp): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<FunctionInfo>, ApiError> {
    let f = function(&name)?;
    let record = cp.store.get_function(&f).await?;
    let aliases = cp.store.list_aliases(&f).await?;
    let versions = cp.store.list_versions(&f).await?;
    let latest = versions.iter().max_by_key(|v| v.number);
    let limits = LimitsInfo {
        memory_bytes: latest.and_then(|v| v.spec.limits.memory_bytes),
        cpu: latest.and_then(|v| v.spec.limits.cpu),
        pids: latest.and_then(|v| v.spec.limits.pids),
        enforcement: cp.config.enforcement.clone(),
    };
    Ok(Json(FunctionInfo {
        function: record,
        aliases,
        versions: versions.iter().map(VersionSummary::from).collect(),
        pools: cp.fleet.status(&f),
        limits,
    }))
}

async fn delete_function(
    State(cp): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let f = function(&name)?;
    cp.store.delete_function(&f).await?;
    cp.serving_now().await;
    cp.fleet.retire(&f, None).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_versions(
    State(cp): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionRecord>>, ApiError> {
    Ok(Json(cp.store.list_versions(&function(&name)?).await?))
}

async fn get_version(
    State(cp): State<AppState>,
    Path((name, v)): Path<(String, String)>,
) -> Result<Json<VersionRecord>, ApiError> {
    Ok(Json(
        cp.store
            .get_version(&function(&name)?, version(&v)?)
            .await?,
    ))
}

async fn delete_version(
    State(cp): State<AppState>,
    Path((name, v)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (f, v) = (function(&name)?, version(&v)?);
    cp.store.delete_version(&f, v).await?;
    cp.serving_now().await;
    cp.fleet.retire(&f, Some(v)).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_aliases(
    State(cp): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<AliasRecord>>, ApiError> {
    Ok(Json(cp.store.list_aliases(&function(&name)?).await?))
}

async fn get_alias(
    State(cp): State<AppState>,
    Path((name, a)): Path<(String, String)>,
) -> Result<Json<AliasRecord>, ApiError> {
    Ok(Json(
        cp.store.get_alias(&function(&name)?, &alias(&a)?).await?,
    ))
}

/// `{"version": 3}`, or a whole traffic policy (`weights`, `rules`, `sticky`, `shadow`).
#[derive(Deserialize)]
#[serde(untagged)]
enum SetAlias {
    Version { version: u32 },
    Policy(TrafficPolicy),
}

async fn set_alias(
    State(cp): State<AppState>,
    Path((name, a)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<AliasRecord>, ApiError> {
    let req: SetAlias = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!(
            "expected {{\"version\": 3}} or a traffic policy like {{\"weights\": [{{\"version\": 3, \"weight\": 90}}, {{\"version\": 4, \"weight\": 10}}]}}: {e}"
        ))
    })?;
    let policy = match req {
        SetAlias::Version { version: v } => TrafficPolicy::single(version(&v.to_string())?),
        SetAlias::Policy(p) => p,
    };
    let rec = cp
        .store
        .set_alias_policy(
            &function(&name)?,
            &alias(&a)?,
            policy,
            ChangeReason::Manual,
            None,
            ACTOR,
        )
        .await?;
    cp.serving_now().await;
    Ok(Json(rec))
}

async fn alias_shadow(
    State(cp): State<AppState>,
    Path((name, a)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (f, al) = (function(&name)?, alias(&a)?);
    let rec = cp.store.get_alias(&f, &al).await?;
    Ok(Json(
        json!({"shadow": rec.policy.shadow, "results": cp.shadows.summaries(f.as_str(), al.as_str())}),
    ))
}

async fn start_release(
    State(cp): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Release>), ApiError> {
    let req: NewRelease = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("expected a release like {{\"alias\": \"release\", \"to\": 5, \"steps\": [10, 50, 100], \"interval\": \"1m\"}}: {e}")))?;
    let r = cp.start_release(&function(&name)?, req).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

async fn list_releases(
    State(cp): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Release>>, ApiError> {
    Ok(Json(cp.store.list_releases(&function(&name)?).await?))
}

async fn abort_release(
    State(cp): State<AppState>,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Json<Release>, ApiError> {
    Ok(Json(cp.abort_release(&function(&name)?, id).await?))
}

async fn alias_history(
    State(cp): State<AppState>,
    Path((name, a)): Path<(String, String)>,
) -> Result<Json<Vec<AliasChange>>, ApiError> {
    Ok(Json(
        cp.store
            .alias_history(&function(&name)?, &alias(&a)?)
            .await?,
    ))
}

async fn rollback(
    State(cp): State<AppState>,
    Path((name, a)): Path<(String, String)>,
) -> Result<Json<AliasRecord>, ApiError> {
    let rec = cp
        .store
        .rollback_alias(&function(&name)?, &alias(&a)?, ACTOR)
        .await?;
    cp.serving_now().await;
    Ok(Json(rec))
}

async fn instances(
    State(cp): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<PoolStatus>>, ApiError> {
    let f = function(&name)?;
    cp.store.get_function(&f).await?;
    Ok(Json(cp.fleet.status(&f)))
}
