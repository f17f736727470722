//! What holds one instance's processes: its process group, its cgroup (or rlimits), and what the
//! platform meant when it last signalled it, so an exit can be reported as what it was.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use stratus_core::Limits;
use stratus_runtime::{CpuClass, ExitCause, ResourceUsage, RuntimeError};
use tokio::process::Command;

use crate::cgroup::{self, InstanceCgroup, JoinFiles, Rlimits};
use crate::isolate::Plan;

const INTENT_NONE: u8 = 0;
const INTENT_STOP: u8 = 1;
const INTENT_TIMEOUT: u8 = 2;

pub struct Confinement {
    cgroup: Mutex<Option<InstanceCgroup>>,
    rlimits: Rlimits,
    pid: AtomicI32,
    intent: AtomicU8,
    limits: Limits,
    unprivileged: AtomicBool,
}

impl Confinement {
    /// Creates the instance's cgroup (when the host has them) with the function's limits.
    pub fn new(instance_id: &str, limits: &Limits) -> Result<Self, RuntimeError> {
        let cg = InstanceCgroup::create(instance_id, limits).map_err(|e| {
            RuntimeError::StartFailed(format!("cannot create the instance's cgroup: {e}"))
        })?;
        Ok(Self {
            cgroup: Mutex::new(cg),
            rlimits: cgroup::rlimits(limits),
            pid: AtomicI32::new(0),
            intent: AtomicU8::new(INTENT_NONE),
            limits: limits.clone(),
            unprivileged: AtomicBool::new(false),
        })
    }

    fn cg<R>(&self, f: impl FnOnce(&InstanceCgroup) -> R) -> Option<R> {
        let g = self.cgroup.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(f)
    }

    /// Own process group, the cgroup joined, rlimits set, isolation (when the node has it: a
    /// read-only filesystem with `dirs` visible, a private /tmp, `nobody`), `PR_SET_PDEATHSIG`,
    /// all in the child before exec. Keep the returned files until `spawn` returned.
    pub fn configure(
        &self,
        cmd: &mut Command,
        dirs: &[&Path],
        program: &Path,
    ) -> Result<JoinFiles, RuntimeError> {
        let files = self
            .cg(|c| c.join_files())
            .transpose()
            .map_err(|e| {
                RuntimeError::StartFailed(format!("cannot open the instance's cgroup: {e}"))
            })?
            .unwrap_or_else(JoinFiles::empty);
        let plan = Plan::for_instance(dirs, program);
        self.unprivileged.store(
            plan.as_ref().is_some_and(Plan::unprivileged),
            Ordering::Relaxed,
        );
        configure_child(cmd, files.fds(), self.rlimits, plan);
        Ok(files)
    }

    /// CPU and memory use from the instance's cgroup; `None` without one (rlimits only).
    /// cgroupfs files are kernel counters read from memory, not disk: cheap enough for the
    /// scaler's tick on an async thread.
    pub fn usage(&self) -> Option<ResourceUsage> {
        self.cg(|c| ResourceUsage {
            cpu_time: c.cpu_usage(),
            memory_bytes: c.working_set(),
        })
    }

    /// Moves the instance's cgroup to `class`; false without a CPU controller (or when the
    /// write failed: the instance keeps the class it had, which is logged, not fatal).
    pub fn set_cpu_class(&self, class: CpuClass) -> bool {
        self.cg(|c| match c.set_class(class) {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(
                    "cannot move an instance to the {} CPU class: {e}",
                    class.as_str()
                );
                false
            }
        })
        .unwrap_or(false)
    }

    /// The class its cgroup is in now; `None` without a CPU controller.
    pub fn cpu_class(&self) -> Option<CpuClass> {
        self.cg(|c| c.class()).flatten()
    }

    /// `limits.memory` in bytes, 0 when unset.
    pub fn memory_limit(&self) -> u64 {
        self.limits.memory_bytes.unwrap_or(0)
    }

    /// Whether the instance runs as the unprivileged user (isolation on, code readable to it).
    pub fn unprivileged(&self) -> bool {
        self.unprivileged.load(Ordering::Relaxed)
    }

    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::Relaxed)
    }

    pub fn set_pid(&self, pid: i32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// Signals the instance's process group (thawed first: a frozen process would not see it).
    pub fn signal(&self, sig: i32) {
        self.cg(|c| c.thaw());
        signal_group(self.pid.load(Ordering::Relaxed), sig);
    }

    /// SIGKILL to the process group and to every process in the cgroup (which also holds the
    /// ones that left the group: `setsid`, double forks).
    pub fn kill_all(&self) {
        self.signal(libc::SIGKILL);
        self.cg(|c| c.kill_all());
    }

    /// Stops the instance now, as the platform (so its exit is not counted as a crash).
    pub fn kill_now(&self) {
        self.mark_stopping();
        self.kill_all();
    }

    /// [`Self::release`] off the async threads (rmdir of a cgroup waits for the kernel to
    /// finish the killed processes).
    pub async fn release_blocking(self: &Arc<Self>) {
        let conf = self.clone();
        let _ = tokio::task::spawn_blocking(move || conf.release()).await;
    }

    /// The platform is stopping the instance: its exit is not a crash.
    pub fn mark_stopping(&self) {
        let _ = self.intent.compare_exchange(
            INTENT_NONE,
            INTENT_STOP,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The platform kills the instance because an invocation ran past its timeout.
    pub fn mark_timeout(&self) {
        self.intent.store(INTENT_TIMEOUT, Ordering::Relaxed);
    }

    /// Why the instance went away: the kernel's OOM kill counter first (it is the only one
    /// that knows), then what the platform meant, else it crashed (or exited) by itself.
    pub fn cause(&self) -> ExitCause {
        if self.cg(|c| c.oom_kills()).unwrap_or(0) > 0 {
            return ExitCause::OutOfMemory;
        }
        match self.intent.load(Ordering::Relaxed) {
            INTENT_TIMEOUT => ExitCause::Timeout,
            INTENT_STOP => ExitCause::Stopped,
            _ => ExitCause::Crashed,
        }
    }

    /// The platform log line for an exit.
    pub fn exit_line(&self, id: &str, code: Option<i32>, signal: Option<i32>) -> String {
        let how = match (code, signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => "exited".into(),
        };
        let mut line = match self.cause() {
            ExitCause::OutOfMemory => {
                let limit = self.limits.memory_bytes.unwrap_or(0);
                format!(
                    "instance {id} killed: out of memory (limit {} MiB)",
                    limit / (1024 * 1024)
                )
            }
            ExitCause::Timeout => format!(
                "instance {id} killed: invocation timed out after {:?} ({how})",
                self.limits.timeout
            ),
            _ => format!("instance {id} {how}"),
        };
        if let (Some(refused), Some(max)) =
            (self.cg(|c| c.pids_refused()).flatten(), self.limits.pids)
            && refused > 0
        {
            line.push_str(&format!("; {refused} forks refused at limits.pids = {max}"));
        }
        line
    }

    /// Runs `f` on the instance's cgroup, if it has one (tests and stats read it).
    pub fn with_cgroup<R>(&self, f: impl FnOnce(&InstanceCgroup) -> R) -> Option<R> {
        self.cg(f)
    }

    /// Kills whatever is left and removes the cgroup; idempotent.
    pub fn release(&self) {
        self.kill_all();
        let cg = self.cgroup.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(cg) = cg {
            cg.remove();
        }
    }
}

impl Drop for Confinement {
    fn drop(&mut self) {
        // An instance dropped without a stop still leaves nothing running and no cgroup behind.
        if self.cg(|_| ()).is_some() {
            self.release();
        }
    }
}

/// Signals an instance's whole process group (the leader was started with
/// [`configure_child`]).
#[allow(unsafe_code)]
pub fn signal_group(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; it has no memory-safety
        // preconditions.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

/// Own process group, `PR_SET_PDEATHSIG`, cgroup membership and rlimits, for every instance
/// process the platform starts.
#[allow(unsafe_code)]
fn configure_child(cmd: &mut Command, join: Vec<i32>, rl: Rlimits, plan: Option<Plan>) {
    // Own process group: stop signals the group, reaching grandchildren too.
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // (write, setrlimit, the isolation's unshare/mount/setuid, prctl, getppid), which are
    // async-signal-safe; it reads memory moved into it and allocates nothing on the success path.
    unsafe {
        cmd.pre_exec(move || {
            // "0" is the writing process itself: the child is in its cgroup before it runs
            // any user code, so nothing it forks can start outside.
            for fd in &join {
                // ENODEV here means the cgroup was removed under us.
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let set = |res, v: u64| {
                let lim = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v as libc::rlim_t,
                };
                libc::setrlimit(res, &lim)
            };
            if let Some(b) = rl.address_space
                && set(libc::RLIMIT_AS, b) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(n) = rl.processes
                && set(libc::RLIMIT_NPROC, n) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(plan) = &plan {
                plan.apply()?;
            }
            // Last: changing the user clears the parent-death signal.
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other(
                        "server exited while starting the instance",
                    ));
                }
            }
            Ok(())
        });
    }
}
