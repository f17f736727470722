//! Invocation routes: synchronous and async invocation, invocation records by id, and the
//! dead-letter list with redrive. The engine lives in `stratus-events`; these handlers only
//! translate HTTP.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use stratus_core::{ErrorCode, FunctionName, PlatformError};
use stratus_events::Engine;
use stratus_events::mapping::payload_json;
use stratus_store::Invocation;

use crate::{ApiError, ApiRoutes, AppState, bad_request};

/// `Event` queues the invocation and answers 202; `RequestResponse` (the default) runs it now.
pub const INVOCATION_TYPE: &str = "x-stratus-invocation-type";

pub fn register(r: ApiRoutes) -> ApiRoutes {
    r.add("post", "/api/v1/functions/{name}/invocations", post(invoke))
        .add("get", "/api/v1/invocations/{id}", get(invocation))
        .add("get", "/api/v1/functions/{name}/dlq", get(dead_letters))
        .add(
            "post",
            "/api/v1/functions/{name}/dlq/redrive",
            post(redrive),
        )
}

fn engine(cp: &AppState) -> Result<&std::sync::Arc<Engine>, ApiError> {
    cp.events.get().ok_or_else(|| {
        ApiError(PlatformError::new(
            ErrorCode::Internal,
            "async invocation is not enabled on this node",
        ))
    })
}

fn function(name: &str) -> Result<FunctionName, ApiError> {
    FunctionName::new(name).map_err(|e| bad_request(e.to_string()))
}

/// An invocation record with its payload as JSON (the store keeps bytes).
fn view(inv: &Invocation) -> Value {
    let mut v = serde_json::to_value(inv).expect("invocations serialize");
    v["payload"] = payload_json(&inv.payload);
    if let Some(r) = &inv.result {
        v["result"] = payload_json(r.as_bytes());
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeQuery {
    /// An alias or version number; `latest` by default.
    target: Option<String>,
}

async fn invoke(
    State(cp): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<InvokeQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let f = function(&name)?;
    let engine = engine(&cp)?;
    let target = q.target.unwrap_or_else(|| "latest".into());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| Some("application/json".into()));
    // The caller's trace continues into every attempt (W3C trace context).
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let kind = headers
        .get(INVOCATION_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    match kind {
        "Event" => {
            let id = engine
                .submit(&f, &target, body, content_type, traceparent)
                .await?;
            Ok((StatusCode::ACCEPTED, Json(json!({"invocation_id": id}))).into_response())
        }
        "RequestResponse" => {
            let r = engine
                .invoke_sync(&f, &target, body, content_type, traceparent)
                .await?;
            let mut resp = (
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY),
                r.body,
            )
                .into_response();
            for (k, v) in r.headers.iter() {
                if k == header::CONTENT_TYPE || k.as_str().starts_with("x-") {
                    resp.headers_mut().append(k.clone(), v.clone());
                }
            }
            Ok(resp)
        }
        other => Err(bad_request(format!(
            "unknown {INVOCATION_TYPE} `{other}`: use `Event` (async, 202) or `RequestResponse` (the default)"
        ))),
    }
}

async fn invocation(
    State(cp): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view(&engine(&cp)?.get(&id).await?)))
}

async fn dead_letters(
    State(cp): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let f = function(&name)?;
    cp.store.get_function(&f).await?;
    let list = engine(&cp)?.dead_letters(&f).await?;
    Ok(Json(list.iter().map(view).collect()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Redrive {
    /// One dead letter; all of them when absent.
    id: Option<String>,
}

async fn redrive(
    State(cp): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let f = function(&name)?;
    let req: Redrive = if body.is_empty() {
        Redrive::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| bad_request(format!("expected {{\"id\": \"inv-...\"}} or no body: {e}")))?
    };
    let n = engine(&cp)?.redrive(&f, req.id.as_deref()).await?;
    Ok(Json(json!({"redriven": n})))
}
