//! `stratus serve`: builds the embedded backends and the services on them, and runs both
//! listeners until a signal, then shuts down in order: stop accepting, drain, stop instances,
//! flush logs. This is the only place that names concrete backends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use stratus_api::{ApiConfig, ControlPlane, ControlPlaneDeps};
use stratus_core::RuntimeKind;
use stratus_gateway::{Gateway, Observers};
use stratus_router::{Router, RoutingTable};
use stratus_runtime::{CodeCache, LogSink, RequestSink, Runtime};
use stratus_runtime_lambda::LambdaRuntime;
use stratus_runtime_process::ProcessRuntime;
use stratus_runtime_wasm::{WasmConfig, WasmRuntime};
use stratus_scaler::{Fleet, FleetConfig};
use stratus_store::{BlobStore, LogStore, Metastore};
use stratus_store_embedded::{LocalBlobStore, SqliteStore};
use stratus_telemetry::stats::{ShadowRegistry, TrafficStats};
use stratus_telemetry::trace::{TraceConfig, Tracer};
use stratus_telemetry::{LogConfig, LogHub};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::{ENV_API_LISTEN, ENV_DATA_DIR, ENV_LISTEN};
use crate::client::{TOKEN_FILE, default_data_dir};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address of the gateway (data plane).
    #[arg(long, env = ENV_LISTEN, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the control-plane API.
    #[arg(long, env = ENV_API_LISTEN, default_value = "127.0.0.1:8081")]
    pub api_listen: SocketAddr,
    /// Where functions, versions, artifacts and logs are kept.
    #[arg(long, env = ENV_DATA_DIR)]
    pub data_dir: Option<PathBuf>,
    /// Deploy these folders once serving (a function folder, or a folder of them).
    #[arg(long, value_name = "DIR")]
    pub deploy: Vec<PathBuf>,
    /// Also print instance output to this terminal.
    #[arg(long)]
    pub echo_logs: bool,
    /// How long in-flight requests get to finish at shutdown.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Largest deploy archive accepted, in MiB.
    #[arg(long, default_value_t = 512)]
    pub max_artifact_mib: u64,
    /// Export trace spans over OTLP/HTTP (protobuf) to this collector, e.g. http://127.0.0.1:4318.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces (requests without a traceparent) to sample, 0..=1; a caller's
    /// sampling decision is always kept.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,
    /// Require the admin bearer token on /metrics (open by default, like most exporters).
    #[arg(long, env = "STRATUS_METRICS_REQUIRE_TOKEN")]
    pub metrics_require_token: bool,
    /// Do not store a record per request (counters and traces are unaffected).
    #[arg(long)]
    pub no_request_log: bool,
    /// How long request records and log lines are kept.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub log_retention: Duration,
    /// How many request records (and, separately, log lines) are kept at most.
    #[arg(long, default_value_t = 10_000_000)]
    pub log_max_records: u64,
    /// Isolate instances (read-only filesystem, private /tmp, the `nobody` user) when the
    /// server runs as root and the kernel allows it; `off` runs them as the server's user.
    #[arg(long, env = "STRATUS_ISOLATION", value_enum, default_value_t = Isolation::Auto)]
    pub isolation: Isolation,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    Auto,
    Off,
}

/// Reads the admin token, creating it (mode 0600) on first start.
fn admin_token(dir: &Path) -> Result<String> {
    let path = dir.join(TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_string());
    }
    let token: [u8; 32] = rand::random();
    let token = hex::encode(token);
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Function folders under `path`: itself if it has a manifest, else its children that do.
fn function_dirs(path: &Path) -> Vec<PathBuf> {
    if path.join(stratus_manifest::MANIFEST_FILE).exists() {
        return vec![path.to_path_buf()];
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(stratus_manifest::MANIFEST_FILE).exists())
        .collect();
    dirs.sort();
    dirs
}

async fn deploy_bundled(cp: Arc<ControlPlane>, paths: Vec<PathBuf>, gateway: SocketAddr) {
    for dir in paths.iter().flat_map(|p| function_dirs(p)) {
        let started = std::time::Instant::now();
        let result = async {
            let spec = crate::deploy::manifest(&dir)?;
            crate::deploy::build(&dir, &spec).await?;
            let archive = crate::deploy::pack(&dir, false).await?;
            let file = tokio::fs::File::open(archive.path()).await?;
            cp.deploy(Box::new(file), Some(spec.name.clone()), "serve --deploy")
                .await
                .map_err(anyhow::Error::from)
        }
        .await;
        match result {
            Ok(out) => tracing::info!(
                "deployed {} version {} from {} in {:.1}s: http://{gateway}/fn/{}/",
                out.function,
                out.version,
                dir.display(),
                started.elapsed().as_secs_f64(),
                out.function
            ),
            Err(e) => tracing::error!("deploying {} failed: {e:#}", dir.display()),
        }
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Before any instance starts: every instance is isolated the same way.
    let isolation = stratus_runtime_process::isolate::configure(match args.isolation {
        Isolation::Auto => stratus_runtime_process::IsolationMode::Auto,
        Isolation::Off => stratus_runtime_process::IsolationMode::Off,
    });
    let data = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data)
        .with_context(|| format!("failed to create the data dir {}", data.display()))?;
    let token = admin_token(&data)?;

    // Backends: the embedded default.
    let sqlite = Arc::new(
        SqliteStore::open(&data.join("stratus.db")).context("failed to open the metastore")?,
    );
    let store: Arc<dyn Metastore> = sqlite.clone();
    let event_store: Arc<dyn stratus_store::EventStore> = sqlite.clone();
    // Logs and request records get a database of their own: their write rate and their
    // retention deletes must not queue behind (or in front of) metastore transactions.
    let logs: Arc<dyn LogStore> = Arc::new(
        SqliteStore::open(&data.join("logs.db"))
            .and_then(|s| s.with_cache_kib(32 * 1024))
            .context("failed to open the log store")?,
    );
    let blobs: Arc<dyn BlobStore> = Arc::new(
        LocalBlobStore::open(data.join("blobs")).context("failed to open the blob store")?,
    );
    let code = Arc::new(CodeCache::new(
        data.join("code"),
        blobs.clone(),
        Default::default(),
    )?);
    let log_config = LogConfig {
        retention: args.log_retention,
        max_lines: args.log_max_records,
        ..LogConfig::default()
    };
    let hub = LogHub::start(logs.clone(), log_config, args.echo_logs);
    if !(0.0..=1.0).contains(&args.trace_sample_ratio) {
        anyhow::bail!(
            "--trace-sample-ratio must be between 0 and 1, not {}",
            args.trace_sample_ratio
        );
    }
    let tracer = match &args.otlp_endpoint {
        None => None,
        Some(url) => {
            let t = Tracer::start(TraceConfig::new(url.clone())).map_err(anyhow::Error::msg)?;
            tracing::info!("exporting traces over OTLP/HTTP to {url}");
            Some(t)
        }
    };
    let observers = Observers {
        records: (!args.no_request_log).then(|| hub.clone() as Arc<dyn RequestSink>),
        tracer: tracer.clone(),
        root_sample_ratio: args.trace_sample_ratio,
    };
    let sink: Arc<dyn LogSink> = hub.clone();
    // One runtime for every handler kind: lambda (your bootstrap), node and python (ours).
    let handlers: Arc<dyn Runtime> = Arc::new(
        LambdaRuntime::new(code.clone(), hub.clone(), &data.join("bootstrap"))
            .context("failed to set up the handler runtimes")?,
    );

    // Services.
    let process: Arc<dyn Runtime> = Arc::new(ProcessRuntime::new(code.clone(), sink.clone()));
    let wasm: Arc<dyn Runtime> = Arc::new(
        WasmRuntime::new(
            code.clone(),
            sink,
            WasmConfig {
                cache_dir: data.join("wasm-cache"),
                engine: Default::default(),
            },
        )
        .context("failed to start the wasm runtime")?,
    );
    let fleet = Fleet::new(
        HashMap::from([
            (RuntimeKind::Process, process),
            (RuntimeKind::Wasm, wasm),
            (RuntimeKind::Lambda, handlers.clone()),
            (RuntimeKind::Node, handlers.clone()),
            (RuntimeKind::Python, handlers),
        ]),
        FleetConfig::default(),
    );
    let ticker = fleet.spawn_ticker();
    let router = Router::new(RoutingTable::default());
    router
        .refresh(&*store)
        .await
        .context("failed to load the routing table")?;
    let routes_fleet = fleet.clone();
    let follower = router.follow(store.clone(), move |t| {
        routes_fleet.set_routable(t.routable_versions().collect())
    });

    let stats = Arc::new(TrafficStats::default());
    let shadows = Arc::new(ShadowRegistry::default());
    let cp = ControlPlane::new(ControlPlaneDeps {
        store: store.clone(),
        blobs,
        logs,
        code,
        fleet: fleet.clone(),
        router: router.clone(),
        stats: stats.clone(),
        shadows: shadows.clone(),
        config: ApiConfig {
            max_artifact_bytes: args.max_artifact_mib * 1024 * 1024,
            admin_token: token,
            metrics_require_token: args.metrics_require_token,
            enforcement: {
                let mut v = serde_json::to_value(stratus_runtime_process::enforcement())
                    .unwrap_or_default();
                v["isolation"] = serde_json::to_value(&isolation).unwrap_or_default();
                v
            },
        },
        hub: Some(hub.clone()),
        tracer,
    });
    let releases = stratus_api::release::spawn_controller(&cp, Duration::from_millis(500));
    let alarms = stratus_api::spawn_alarm_evaluator(&cp, Duration::from_secs(1));
    // Async invocations and timers; "local" owns this node's claims, so after a crash the
    // restarted node delivers what it had claimed.
    let engine = stratus_events::Engine::new(event_store, router.clone(), fleet.clone(), "local");
    if !args.no_request_log {
        engine.record_into(hub.clone());
    }
    let _ = cp.events.set(engine.clone());
    let event_tasks = engine
        .spawn()
        .await
        .context("failed to start async delivery")?;

    let gateway_listener = listen(args.listen)
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let api_listener = listen(args.api_listen)
        .with_context(|| format!("cannot listen on {} (--api-listen)", args.api_listen))?;
    let functions = store.list_functions().await?.len();
    let gateway_addr = gateway_listener.local_addr()?;
    tracing::info!(
        "stratus serving functions on http://{} and the API on http://{}; data in {} ({functions} functions)",
        gateway_listener.local_addr()?,
        api_listener.local_addr()?,
        data.display()
    );
    tracing::info!(
        "metrics at http://{}/metrics ({}); request records {}",
        api_listener.local_addr()?,
        if args.metrics_require_token {
            "bearer token required"
        } else {
            "no token"
        },
        if args.no_request_log { "off" } else { "on" },
    );
    if isolation.enabled {
        tracing::info!(
            "instance isolation: {}; {}; user {}; {}",
            isolation.filesystem,
            isolation.tmp,
            isolation.user,
            isolation.not_isolated
        );
    } else {
        tracing::info!("instance isolation off: {}", isolation.user);
    }
    let limits = stratus_runtime_process::enforcement();
    tracing::info!(
        "process limits: {} (memory: {}; cpu: {}; pids: {}; stop: {})",
        limits.mechanism,
        limits.memory,
        limits.cpu,
        limits.pids,
        limits.stop
    );
    tracing::info!("instance CPU and memory use: {}", limits.usage);
    tracing::info!("instances serving nothing: {}", limits.cpu_class);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let gw = tokio::spawn(stratus_gateway::serve(
        gateway_listener,
        Gateway::new(router, fleet.clone(), stats, shadows).with_observers(observers),
        stopped(stop_rx.clone()),
        args.drain_timeout,
    ));
    let api_app = stratus_api::app(cp.clone());
    let api_stop = stopped(stop_rx.clone());
    let api = tokio::spawn(async move {
        axum::serve(api_listener, api_app.into_make_service())
            .with_graceful_shutdown(api_stop)
            .await
    });
    if !args.deploy.is_empty() {
        tokio::spawn(deploy_bundled(cp, args.deploy.clone(), gateway_addr));
    }

    shutdown_signal().await;
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let _ = stop_tx.send(true);
    let _ = gw.await;
    // The API's open streams (log follows) must not hold shutdown up.
    let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
    follower.abort();
    releases.abort();
    alarms.abort();
    event_tasks.iter().for_each(|t| t.abort());
    ticker.abort();
    tracing::info!("stopping {} instances", fleet.instance_count());
    fleet.shutdown().await;
    hub.flush().await;
    tracing::info!("stopped");
    Ok(())
}

/// A listener with a backlog for bursts: `TcpListener::bind` listens with std's 128, and 200
/// clients connecting at once overflowed it; the kernel dropped the other SYNs and those
/// clients retried a second later (the burst benchmark saw its demand arrive in two steps, and
/// the late quarter of it wait a second for nothing). The kernel caps it at `somaxconn`.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
