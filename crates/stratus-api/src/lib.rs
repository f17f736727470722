//! The control-plane REST API under `/api/v1`.
//!
//! Every route is registered through [`ApiRoutes::add`], which records it, so a test can prove
//! that `openapi.json` documents exactly the routes that exist. Errors are
//! `{"error":{"code","message"}}` with the status decided by [`ErrorCode::http_status`]; access
//! needs the admin bearer token except for the health check and the OpenAPI document.
#![forbid(unsafe_code)]

mod alarms;
mod deploy;
mod events;
mod handlers;
mod observe;
pub mod release;
pub use alarms::spawn_evaluator as spawn_alarm_evaluator;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use stratus_core::{ErrorCode, FunctionName, PlatformError};
use stratus_router::Router as RoutingRouter;
use stratus_runtime::CodeCache;
use stratus_scaler::Fleet;
use stratus_store::{BlobStore, LogStore, Metastore};
use stratus_telemetry::LogHub;
use stratus_telemetry::stats::{ShadowRegistry, TrafficStats};
use stratus_telemetry::trace::Tracer;

pub use deploy::DeployOutcome;

/// The OpenAPI 3 document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest deploy upload accepted.
    pub max_artifact_bytes: u64,
    pub admin_token: String,
    /// `/metrics` needs the token too.
    pub metrics_require_token: bool,
    /// How this node enforces process limits (cgroup v2/v1, rlimits) and isolates instances,
    /// as the process runtime detected it; shown by `stratus info`.
    pub enforcement: serde_json::Value,
}

/// What the control plane is built from. The binary fills it with concrete backends.
pub struct ControlPlaneDeps {
    pub store: Arc<dyn Metastore>,
    pub blobs: Arc<dyn BlobStore>,
    pub logs: Arc<dyn LogStore>,
    pub code: Arc<CodeCache>,
    pub fleet: Arc<Fleet>,
    pub router: Arc<RoutingRouter>,
    pub stats: Arc<TrafficStats>,
    pub shadows: Arc<ShadowRegistry>,
    pub config: ApiConfig,
    /// The telemetry pipeline, for its own counters on `/metrics`.
    pub hub: Option<Arc<LogHub>>,
    pub tracer: Option<Arc<Tracer>>,
}

/// Everything the control plane works with: its dependencies (reached through `Deref`, as
/// `cp.store`, `cp.fleet`, ...) and the state of its own.
pub struct ControlPlane {
    deps: ControlPlaneDeps,
    deploy_locks: tokio::sync::Mutex<HashMap<FunctionName, Arc<tokio::sync::Mutex<()>>>>,
    /// Async invocation, set once by the binary after construction (it needs the router and
    /// fleet the control plane is built with).
    pub events: std::sync::OnceLock<Arc<stratus_events::Engine>>,
}

impl std::ops::Deref for ControlPlane {
    type Target = ControlPlaneDeps;
    fn deref(&self) -> &ControlPlaneDeps {
        &self.deps
    }
}

impl ControlPlane {
    pub fn new(deps: ControlPlaneDeps) -> Arc<Self> {
        Arc::new(Self {
            deps,
            deploy_locks: Default::default(),
            events: Default::default(),
        })
    }
}

/// A platform error as an HTTP response.
pub struct ApiError(pub PlatformError);

impl<E: Into<PlatformError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            self.0.to_json().to_string(),
        )
            .into_response()
    }
}

pub(crate) fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(PlatformError::new(ErrorCode::BadRequest, msg))
}

type AppState = Arc<ControlPlane>;

/// Builds the router while recording each (method, path) it serves.
pub struct ApiRoutes {
    router: axum::Router<AppState>,
    registered: Vec<(String, String)>,
}

impl ApiRoutes {
    fn new() -> Self {
        Self {
            router: axum::Router::new(),
            registered: Vec::new(),
        }
    }

    fn add(mut self, method: &str, path: &str, handler: MethodRouter<AppState>) -> Self {
        self.registered.push((method.to_string(), path.to_string()));
        self.router = self.router.route(path, handler);
        self
    }

    /// The (method, path) pairs the API serves, methods lowercase.
    pub fn registered(&self) -> &[(String, String)] {
        &self.registered
    }
}

pub fn routes() -> ApiRoutes {
    alarms::register(observe::register(handlers::register(ApiRoutes::new())))
}

/// Paths served without a token.
const PUBLIC: &[&str] = &["/api/v1/health", "/api/v1/openapi.json"];

async fn auth(
    State(cp): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if PUBLIC.contains(&path) || (path == "/metrics" && !cp.config.metrics_require_token) {
        return next.run(req).await;
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), cp.config.admin_token.as_bytes()) {
        return ApiError(PlatformError::new(
            ErrorCode::Unauthorized,
            "missing or wrong bearer token: pass --token or STRATUS_TOKEN, or run the CLI with the server's --data-dir",
        ))
        .into_response();
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn fallback() -> ApiError {
    ApiError(PlatformError::new(
        ErrorCode::RouteNotFound,
        "no such API route: see /api/v1/openapi.json",
    ))
}

async fn method_not_allowed(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        let mut r = ApiError(PlatformError::new(
            ErrorCode::BadRequest,
            "method not allowed on this route: see /api/v1/openapi.json",
        ))
        .into_response();
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return r;
    }
    resp
}

/// The complete API application.
pub fn app(cp: Arc<ControlPlane>) -> axum::Router {
    let routes = routes();
    routes
        .router
        .fallback(fallback)
        .layer(axum::middleware::from_fn(method_not_allowed))
        .layer(axum::middleware::from_fn_with_state(cp.clone(), auth))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(cp)
}
