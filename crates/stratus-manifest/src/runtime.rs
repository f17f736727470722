//! The keys that depend on `runtime`: what each runtime needs, what it cannot use, and its
//! defaults. A key that has no effect on the chosen runtime is an error rather than silently
//! ignored, so nobody believes a process is sandboxed by `allowed_outbound_hosts`.

use std::path::{Component, Path};

use stratus_core::{HostPattern, Limits, RuntimeKind};

use crate::schema::{Invalid, Manifest, args, count, invalid, parse_size};

/// The runtime-dependent part of a validated manifest.
pub struct RuntimeChecks {
    kind: RuntimeKind,
    /// The process's command, or the wasm component as its only element.
    pub command: Vec<String>,
    outbound: Option<Vec<String>>,
}

impl RuntimeChecks {
    pub fn new(m: &Manifest) -> Result<Self, Invalid> {
        let command = args("command", &m.command)?;
        let command = match m.runtime {
            RuntimeKind::Process => {
                for (key, set) in [
                    ("component", m.component.is_some()),
                    ("allowed_outbound_hosts", m.allowed_outbound_hosts.is_some()),
                ] {
                    if set {
                        return Err(invalid(
                            key,
                            format!(
                                "`{key}` is for runtime \"wasm\"; a process's network is not filtered, so it would have no effect"
                            ),
                        ));
                    }
                }
                command.ok_or_else(|| {
                    invalid(
                        "runtime",
                        "runtime \"process\" needs a `command`, like command = [\"node\", \"server.js\"]",
                    )
                })?
            }
            RuntimeKind::Wasm => {
                if command.is_some() {
                    return Err(invalid(
                        "command",
                        "runtime \"wasm\" runs a component, not a command: remove `command` and set component = \"hello.wasm\"",
                    ));
                }
                if m.health.path.is_some() {
                    return Err(invalid(
                        "health.path",
                        "runtime \"wasm\" has no health check: an instance is ready once its component is compiled",
                    ));
                }
                for (key, set) in [
                    ("limits.cpu", m.limits.cpu.is_some()),
                    ("limits.pids", m.limits.pids.is_some()),
                ] {
                    if set {
                        return Err(invalid(
                            key,
                            format!(
                                "`{key}` is for process instances; a wasm instance runs inside the server, bounded by `limits.memory` and `limits.timeout`"
                            ),
                        ));
                    }
                }
                if m.build.install.is_some() {
                    return Err(invalid(
                        "build.install",
                        "runtime \"wasm\" runs no install step on the server: build the component locally with `build.command`",
                    ));
                }
                let c = m.component.as_deref().ok_or_else(|| {
                    invalid(
                        "runtime",
                        "runtime \"wasm\" needs a `component`, like component = \"hello.wasm\" (a wasi:http component)",
                    )
                })?;
                vec![component_path(c)?]
            }
            RuntimeKind::Lambda | RuntimeKind::Node | RuntimeKind::Python => {
                handler_runtime(m, command)?
            }
        };
        Ok(Self {
            kind: m.runtime,
            command,
            outbound: m.allowed_outbound_hosts.clone(),
        })
    }

    pub fn concurrency(&self, v: Option<i64>) -> Result<u32, Invalid> {
        let default = match self.kind {
            RuntimeKind::Process => Limits::default().concurrency,
            RuntimeKind::Wasm => Limits::WASM_CONCURRENCY,
            // One invocation per instance at a time, as in Lambda: the Runtime API's `next`
            // hands out one event and waits for its response.
            RuntimeKind::Lambda | RuntimeKind::Node | RuntimeKind::Python => {
                return match v {
                    None | Some(1) => Ok(1),
                    Some(n) => Err(invalid(
                        "limits.concurrency",
                        format!(
                            "{n} is not allowed: a handler runtime runs one invocation per instance at a time (scale with `scaling.max`)"
                        ),
                    )),
                };
            }
        };
        count("limits.concurrency", v, default, 1, 10_000)
    }

    pub fn memory_bytes(&self, v: Option<&str>) -> Result<Option<u64>, Invalid> {
        let Some(s) = v else {
            // A process has no memory limit unless the manifest sets one.
            return Ok((self.kind == RuntimeKind::Wasm).then_some(Limits::WASM_MEMORY_BYTES));
        };
        let bad = |why: String| invalid("limits.memory", why);
        let n = parse_size(s).ok_or_else(|| {
            bad(format!(
                "invalid size \"{s}\": write a number and a unit, like \"64MiB\" or \"1GiB\""
            ))
        })?;
        if self.kind != RuntimeKind::Wasm {
            // Below a few MiB no interpreter even starts; the limit would only look like a crash.
            if !(Limits::PROCESS_MIN_MEMORY_BYTES..=Limits::PROCESS_MAX_MEMORY_BYTES).contains(&n) {
                return Err(bad(format!("{s} is out of range: allowed 4MiB to 1TiB")));
            }
            return Ok(Some(n));
        }
        // One wasm page is 64 KiB; a memory can never be smaller than its first page.
        if !(64 * 1024..=Limits::WASM_MAX_MEMORY_BYTES).contains(&n) {
            return Err(bad(format!(
                "{s} is out of range: allowed 64KiB to 4GiB (the most a 32-bit linear memory can address)"
            )));
        }
        Ok(Some(n))
    }

    /// Fractional cores; the kernel's smallest quota is 1 ms per (at most 100 ms) period, so
    /// 0.01 core is the finest step.
    pub fn cpu(&self, v: Option<f64>) -> Result<Option<f64>, Invalid> {
        match v {
            None => Ok(None),
            Some(c) if c.is_finite() && (0.01..=1024.0).contains(&c) => Ok(Some(c)),
            Some(c) => Err(invalid(
                "limits.cpu",
                format!(
                    "{c} is out of range: allowed 0.01 to 1024 cores (like 0.5 for half a core)"
                ),
            )),
        }
    }

    pub fn pids(&self, v: Option<i64>) -> Result<Option<u32>, Invalid> {
        match v {
            None => Ok(None),
            Some(n) => count("limits.pids", Some(n), 0, 1, 4_194_304).map(Some),
        }
    }

    pub fn allowed_outbound_hosts(&self) -> Result<Vec<String>, Invalid> {
        let hosts = self.outbound.clone().unwrap_or_default();
        for h in &hosts {
            HostPattern::parse(h).map_err(|e| invalid("allowed_outbound_hosts", e))?;
        }
        Ok(hosts)
    }
}

/// The component must be a file inside the function folder: the archive holds nothing else.
fn component_path(c: &str) -> Result<String, Invalid> {
    let p = Path::new(c);
    let inside = !c.is_empty()
        && p.components()
            .all(|part| matches!(part, Component::Normal(_) | Component::CurDir));
    if !inside {
        return Err(invalid(
            "component",
            format!(
                "component \"{c}\" must be a path inside the function folder, like \"hello.wasm\" or \"target/hello.wasm\""
            ),
        ));
    }
    Ok(c.trim_start_matches("./").to_string())
}

/// `lambda` runs the manifest's `command` as its bootstrap; `node` and `python` run the
/// platform's own bootstrap with the interpreter as `command`. None of them opens a port, so a
/// health path means nothing (ready is the bootstrap's first `next`).
fn handler_runtime(m: &Manifest, command: Option<Vec<String>>) -> Result<Vec<String>, Invalid> {
    let rt = m.runtime.as_str();
    for (key, set) in [
        ("component", m.component.is_some()),
        ("allowed_outbound_hosts", m.allowed_outbound_hosts.is_some()),
    ] {
        if set {
            return Err(invalid(
                key,
                format!(
                    "`{key}` is for runtime \"wasm\"; runtime \"{rt}\" does not filter the network"
                ),
            ));
        }
    }
    if m.health.path.is_some() {
        return Err(invalid(
            "health.path",
            format!(
                "runtime \"{rt}\" has no health check: an instance is ready when its bootstrap first asks for an invocation"
            ),
        ));
    }
    match m.runtime {
        RuntimeKind::Lambda => command.ok_or_else(|| {
            invalid(
                "runtime",
                "runtime \"lambda\" needs a `command`: the bootstrap, like command = [\"python3\", \"-m\", \"awslambdaric\", \"app.handler\"]",
            )
        }),
        _ if command.is_some() => Err(invalid(
            "command",
            format!(
                "runtime \"{rt}\" runs the platform's bootstrap: remove `command` (set `handler`), or use runtime \"lambda\" with your own bootstrap"
            ),
        )),
        RuntimeKind::Node => Ok(vec!["node".into()]),
        _ => Ok(vec!["python3".into()]),
    }
}
