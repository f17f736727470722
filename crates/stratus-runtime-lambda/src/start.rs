//! Starting a bootstrap: its own Runtime API endpoint, the Lambda environment, output capture,
//! and readiness = its first `invocation/next` (the handler is loaded by then).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stratus_runtime::{CpuClass, InstanceHealth, LogSink, PreparedVersion, RuntimeError};
pub(crate) use stratus_runtime_process::platform_line;
use stratus_runtime_process::{
    Confinement, OutputTail, capture_output, not_found, on_spawner, resolve_program, watch_exit,
};
use stratus_store::LogLine;
use tokio::process::Command;
use tokio::sync::watch;

use crate::api::{RuntimeApi, StartState};
use crate::event::handler_error;
use crate::instance::LambdaInstance;

/// Attributes output lines to their invocation. A `lambda` bootstrap does not tag its own output,
/// so its lines get the id in flight (concurrency is one, so it is the only candidate), also as
/// a text prefix. The shipped node/python bootstraps tag each line exactly as `<id>\t...`, even
/// when the line is read after the response, so their prefix is taken as is.
struct Tagging {
    inner: Arc<dyn LogSink>,
    current: Arc<Mutex<Option<String>>>,
    prefix_text: bool,
}

/// Level words the shipped bootstraps write first when no invocation is in flight.
const LEVELS: &[&str] = &["INFO", "WARN", "ERROR", "DEBUG", "TRACE", "FATAL", "LOG"];

impl LogSink for Tagging {
    fn emit(&self, mut line: LogLine) {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if self.prefix_text {
            if let Some(id) = &current
                && !line.line.contains(id.as_str())
            {
                line.line = format!("{id}\t{}", line.line);
            }
            line.request_id = current;
        } else {
            let tagged = line
                .line
                .split_once('\t')
                .map(|(first, _)| first)
                .filter(|t| {
                    !t.is_empty()
                        && t.len() <= 128
                        && t.bytes().all(|b| b.is_ascii_graphic())
                        && !LEVELS.contains(t)
                })
                .map(str::to_string);
            line.request_id = tagged.or(current);
        }
        self.inner.emit(line);
    }
}

pub async fn start(
    p: &PreparedVersion,
    instance_id: &str,
    class: CpuClass,
    command: Vec<String>,
    logs: Arc<dyn LogSink>,
) -> Result<LambdaInstance, RuntimeError> {
    let spec = &p.spec;
    let (api, queue) = RuntimeApi::start()
        .await
        .map_err(|e| RuntimeError::StartFailed(format!("cannot open the Runtime API port: {e}")))?;
    let program = resolve_program(&p.dir, &command[0]);
    if !program.is_absolute() {
        return Err(not_found(&command[0]));
    }
    let mut cmd = Command::new(&program);
    cmd.args(&command[1..])
        .current_dir(&p.dir)
        .env("PYTHONUNBUFFERED", "1")
        .envs(&spec.env)
        .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
        .env("_HANDLER", spec.events.handler.as_deref().unwrap_or(""))
        .env("LAMBDA_TASK_ROOT", &p.dir)
        .env("AWS_LAMBDA_FUNCTION_NAME", spec.name.as_str())
        .env("AWS_LAMBDA_FUNCTION_VERSION", p.version.to_string())
        .env(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            // MiB, as Lambda reports it; 128 (Lambda's smallest) when unlimited.
            spec.limits
                .memory_bytes
                .map_or(128, |b| b / (1024 * 1024))
                .to_string(),
        )
        .env(
            "AWS_LAMBDA_FUNCTION_TIMEOUT",
            spec.limits.timeout.as_secs().max(1).to_string(),
        )
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/stratus/{}", spec.name),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", instance_id)
        .env("STRATUS_FUNCTION", spec.name.as_str())
        .env("STRATUS_VERSION", p.version.to_string())
        .env("STRATUS_INSTANCE", instance_id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // The shipped bootstraps live outside the code folder: keep their folder visible too.
    let mut dirs = vec![p.dir.clone()];
    dirs.extend(
        command
            .iter()
            .map(std::path::Path::new)
            .filter(|a| a.is_absolute())
            .filter_map(|a| a.parent())
            .map(|d| d.to_path_buf()),
    );
    let started = Instant::now();
    // Off the async workers, as the process runtime does (see `on_spawner`).
    let (conf, spawned) = {
        let id = instance_id.to_string();
        let limits = spec.limits.clone();
        let program = program.clone();
        on_spawner(move || -> Result<_, RuntimeError> {
            let conf = Arc::new(Confinement::new(&id, &limits)?);
            if class != CpuClass::Serving {
                conf.set_cpu_class(class);
            }
            let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
            let join = conf.configure(&mut cmd, &dirs, &program)?;
            let spawned = cmd.spawn();
            drop(join);
            Ok((conf, spawned))
        })
        .await??
    };
    let mut child = spawned.map_err(|e| {
        RuntimeError::StartFailed(if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "command `{}` not found: install it or fix `command` in stratus.toml",
                command[0]
            )
        } else {
            format!("command `{}` could not start: {e}", command[0])
        })
    })?;
    conf.set_pid(child.id().unwrap_or(0) as i32);
    let tail = OutputTail::default();
    let sink: Arc<dyn LogSink> = Arc::new(Tagging {
        inner: logs.clone(),
        current: api.current.clone(),
        prefix_text: spec.runtime == stratus_core::RuntimeKind::Lambda,
    });
    capture_output(
        &mut child,
        spec.name.as_str(),
        p.version,
        instance_id,
        sink,
        tail.clone(),
    );
    let (health_tx, mut health) = watch::channel(InstanceHealth::Running);
    {
        let (logs, p, id) = (logs.clone(), p.clone(), instance_id.to_string());
        watch_exit(child, logs, p, id, health_tx, conf.clone(), || {});
    }
    let mut start = api.start.clone();
    let timeout = spec.health.startup_timeout;
    let outcome = tokio::time::timeout(timeout, async {
        loop {
            match start.borrow_and_update().clone() {
                StartState::Ready => return Ok(()),
                StartState::InitFailed { type_header, body } => {
                    let e = handler_error(type_header.as_deref(), &body);
                    let mut why = format!("the handler failed to load: {}: {}", e.error_type, e.message);
                    for l in e.stack.iter().take(10) {
                        why.push_str("\n    ");
                        why.push_str(l);
                    }
                    return Err(why);
                }
                StartState::Starting => {}
            }
            if let InstanceHealth::Exited { code, signal, cause } = *health.borrow_and_update() {
                if cause == stratus_runtime::ExitCause::OutOfMemory {
                    return Err(format!(
                        "the bootstrap was killed for going over limits.memory ({} MiB) before it asked for an invocation",
                        spec.limits.memory_bytes.unwrap_or(0) / (1024 * 1024)
                    ));
                }
                return Err(match (code, signal) {
                    (Some(c), _) => format!("the bootstrap exited with code {c} before it asked for an invocation"),
                    (_, Some(s)) => format!("the bootstrap was killed by signal {s} before it asked for an invocation"),
                    _ => "the bootstrap exited before it asked for an invocation".into(),
                });
            }
            tokio::select! {
                _ = start.changed() => {}
                _ = health.changed() => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "the bootstrap did not ask for an invocation (GET /2018-06-01/runtime/invocation/next on AWS_LAMBDA_RUNTIME_API) within {timeout:?}"
        ))
    });
    let inst = LambdaInstance::new(
        instance_id.to_string(),
        conf,
        api,
        queue,
        health,
        p.clone(),
        logs.clone(),
    );
    match outcome {
        Ok(()) => {
            platform_line(
                &*logs,
                p,
                instance_id,
                format!(
                    "instance {instance_id} ready (bootstrap polling) in {} ms",
                    started.elapsed().as_millis()
                ),
            );
            Ok(inst)
        }
        Err(why) => {
            inst.kill_now();
            // Let the output readers drain what the process wrote before quoting it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(RuntimeError::StartFailed(format!(
                "{why}; last output:\n{}",
                tail.text()
            )))
        }
    }
}
