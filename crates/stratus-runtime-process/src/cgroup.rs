//! Per-instance resource limits: one cgroup per instance, detected once per server.
//!
//! Detection order: cgroup v2 with the memory/cpu/pids controllers delegated to a `stratus`
//! subtree, else the cgroup v1 per-controller hierarchies (each controller found in
//! `/proc/self/mountinfo` and proven writable), else rlimits (`RLIMIT_AS` for memory,
//! `RLIMIT_NPROC` for processes; CPU cannot be rate-limited that way, so it is not enforced).
//!
//! An instance joins its cgroup in the forked child before `exec` (it writes `0`, meaning
//! itself, into `cgroup.procs` through descriptors the parent opened), so no user code ever runs
//! outside it and everything it forks is inside. Stopping kills every process in the cgroup.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;
use stratus_core::Limits;
use stratus_runtime::CpuClass;

const PARENT: &str = "stratus";

/// Which mechanism enforces the limits on this host.
#[derive(Debug, Clone)]
enum Backend {
    /// The `stratus` directory under the cgroup2 mount, with these controllers enabled.
    V2 {
        dir: PathBuf,
        controllers: Vec<&'static str>,
    },
    /// `<mount>/stratus` of each v1 controller that works here.
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        /// CPU accounting; often its own hierarchy, sometimes mounted with `cpu`.
        cpuacct: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    Rlimit,
}

/// What this server enforces, and how; logged at start and shown by `stratus info`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Enforcement {
    /// `cgroup v2`, `cgroup v1` or `rlimit`.
    pub mechanism: String,
    /// How `limits.memory` is enforced, or `not enforced: why`.
    pub memory: String,
    pub cpu: String,
    pub pids: String,
    /// How stopping an instance reaches every process it started.
    pub stop: String,
    /// How an instance's CPU and memory use are observed (for `scaling.cpu_target` /
    /// `memory_target` and `stratus info`), or `not observed: why`.
    pub usage: String,
    /// How an instance with no request to serve is kept from slowing those that have one (the
    /// background CPU class), or `not enforced: why`.
    pub cpu_class: String,
}

struct Detected {
    backend: Backend,
    report: Enforcement,
}

static DETECTED: OnceLock<Detected> = OnceLock::new();

fn detected() -> &'static Detected {
    DETECTED.get_or_init(detect)
}

/// The enforcement this server uses (detected on first use).
pub fn enforcement() -> Enforcement {
    detected().report.clone()
}

fn detect() -> Detected {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(d) = detect_v2(&mounts) {
        return d;
    }
    if let Some(d) = detect_v1(&mounts) {
        return d;
    }
    let why = if is_root() {
        "no writable cgroup hierarchy with the memory, cpu or pids controller"
    } else {
        "the server is not root, so it cannot create cgroups"
    };
    Detected {
        backend: Backend::Rlimit,
        report: Enforcement {
            mechanism: "rlimit".into(),
            memory: format!("RLIMIT_AS (address space, not resident memory; {why})"),
            cpu: format!("not enforced: an rlimit cannot limit a CPU rate ({why})"),
            pids: if is_root() {
                "not enforced: RLIMIT_NPROC does not apply to root".into()
            } else {
                "RLIMIT_NPROC (counts every process of the server's user)".into()
            },
            stop: "SIGKILL to the instance's process group (a process that leaves it survives)"
                .into(),
            usage: format!(
                "not observed: no cgroups ({why}), so scaling.cpu_target and scaling.memory_target cannot act"
            ),
            cpu_class: format!("not enforced: no cgroups ({why})"),
        },
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid() == 0
    }
}

/// `(mount point, fstype, super options)` of each cgroup mount.
fn cgroup_mounts(mountinfo: &str) -> Vec<(PathBuf, String, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next()?;
            let opts = r.next().unwrap_or("");
            fstype.starts_with("cgroup").then(|| {
                (
                    PathBuf::from(mount_point),
                    fstype.to_string(),
                    opts.to_string(),
                )
            })
        })
        .collect()
}

/// A `stratus` directory under `mount` in which a child can be created and removed.
fn writable_parent(mount: &Path) -> Option<PathBuf> {
    let dir = mount.join(PARENT);
    if fs::create_dir(&dir).is_err() && !dir.is_dir() {
        return None;
    }
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    fs::create_dir(&probe).ok()?;
    fs::remove_dir(&probe).ok()?;
    sweep(&dir);
    Some(dir)
}

fn detect_v2(mounts: &str) -> Option<Detected> {
    let (mount, _, _) = cgroup_mounts(mounts)
        .into_iter()
        .find(|(_, t, _)| t == "cgroup2")?;
    let available = fs::read_to_string(mount.join("cgroup.controllers")).ok()?;
    let wanted: Vec<&'static str> = ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    if wanted.is_empty() {
        return None;
    }
    let dir = writable_parent(&mount)?;
    // Enable the controllers for our subtree and for the instance cgroups below it.
    for c in &wanted {
        let _ = fs::write(mount.join("cgroup.subtree_control"), format!("+{c}"));
        let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
    }
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let controllers: Vec<&'static str> = wanted
        .into_iter()
        .filter(|c| enabled.split_whitespace().any(|a| a == *c))
        .collect();
    if controllers.is_empty() {
        return None;
    }
    let how = |c: &str, file: &str| {
        if controllers.contains(&c) {
            format!("cgroup v2 {file} ({})", dir.display())
        } else {
            format!(
                "not enforced: the {c} controller is not delegated to {}",
                dir.display()
            )
        }
    };
    let report = Enforcement {
        mechanism: "cgroup v2".into(),
        memory: how("memory", "memory.max"),
        cpu: how("cpu", "cpu.max"),
        pids: how("pids", "pids.max"),
        stop: "cgroup.kill of the instance's cgroup".into(),
        // `cpu.stat` is a core file of every v2 cgroup; memory needs its controller.
        usage: if controllers.contains(&"memory") {
            "cgroup v2 cpu.stat usage_usec and memory.current less inactive file cache".into()
        } else {
            "cgroup v2 cpu.stat usage_usec; memory not observed: the memory controller is not delegated, so scaling.memory_target cannot act".into()
        },
        cpu_class: if controllers.contains(&"cpu") {
            background_how(
                &dir,
                "cpu.weight 1",
                dir.join("cgroup.freeze")
                    .exists()
                    .then(|| "cgroup v2 cgroup.freeze 1".to_string()),
            )
        } else {
            format!(
                "not enforced: the cpu controller is not delegated to {}",
                dir.display()
            )
        },
    };
    Some(Detected {
        backend: Backend::V2 { dir, controllers },
        report,
    })
}

fn detect_v1(mounts: &str) -> Option<Detected> {
    let all = cgroup_mounts(mounts);
    let find = |ctrl: &str| {
        all.iter()
            .filter(|(_, t, _)| t == "cgroup")
            .find(|(_, _, o)| o.split(',').any(|x| x == ctrl))
            .and_then(|(m, _, _)| writable_parent(m))
    };
    let (memory, cpu, cpuacct, pids) = (find("memory"), find("cpu"), find("cpuacct"), find("pids"));
    if memory.is_none() && cpu.is_none() && pids.is_none() {
        return None;
    }
    let how = |d: &Option<PathBuf>, c: &str, file: &str| match d {
        Some(d) => format!("cgroup v1 {file} ({})", d.display()),
        None => format!("not enforced: no writable v1 {c} hierarchy"),
    };
    let report = Enforcement {
        mechanism: "cgroup v1".into(),
        memory: how(&memory, "memory", "memory.limit_in_bytes"),
        cpu: how(&cpu, "cpu", "cpu.cfs_quota_us"),
        pids: how(&pids, "pids", "pids.max"),
        stop: "SIGKILL to every process in the instance's cgroup".into(),
        usage: format!(
            "{}; {}",
            match &cpuacct {
                Some(d) => format!("cpu: cgroup v1 cpuacct.usage ({})", d.display()),
                None => "cpu not observed: no writable v1 cpuacct hierarchy, so scaling.cpu_target cannot act".into(),
            },
            match &memory {
                Some(_) => "memory: cgroup v1 memory.usage_in_bytes less inactive file cache".to_string(),
                None => "memory not observed, so scaling.memory_target cannot act".into(),
            }
        ),
        cpu_class: match &cpu {
            // Not v1's freezer: a task it froze does not die of SIGKILL, so the instances of a
            // server that was killed (their PR_SET_PDEATHSIG pending) stayed frozen forever.
            Some(d) => background_how(
                d,
                "cpu.shares 2",
                Some("SIGSTOP to every process in its cgroup".to_string()),
            ),
            None => "not enforced: no writable v1 cpu hierarchy".into(),
        },
    };
    Some(Detected {
        backend: Backend::V1 {
            memory,
            cpu,
            cpuacct,
            pids,
        },
        report,
    })
}

/// How the classes out of `Serving` are applied under `parent` (whose children have the files
/// it has), and how a parked instance is frozen (`None`: no freezer here).
fn background_how(parent: &Path, fallback: &str, freeze: Option<String>) -> String {
    let priority = if parent.join("cpu.idle").exists() {
        "cpu.idle 1".to_string()
    } else {
        format!("{fallback} (no cpu.idle on this kernel)")
    };
    let parked = match freeze {
        Some(how) => format!("frozen: {how}"),
        None => format!("{priority}, at most {PARKED_CORES} cores: no freezer here"),
    };
    format!(
        "a function's instance serving nothing is parked ({parked}); \
         an app's, and instances started ahead of demand, run at {priority} ({})",
        parent.display()
    )
}

/// The rlimits a child sets on itself before exec when no cgroup enforces the limits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rlimits {
    pub address_space: Option<u64>,
    pub processes: Option<u64>,
}

/// CPU use and throttling of one instance, read from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Periods in which the instance hit its quota.
    pub nr_throttled: u64,
    /// Time it spent throttled.
    pub throttled: Duration,
}

/// One instance's cgroup(s); removed (after killing what is left in them) by [`Self::remove`].
#[derive(Debug)]
pub struct InstanceCgroup {
    v2: bool,
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// Where CPU use is counted: the instance's v2 cgroup, or its v1 cpuacct cgroup.
    cpuacct: Option<PathBuf>,
    pids: Option<PathBuf>,
    /// The CPU weight it serves at (`cpu.shares` on v1, `cpu.weight` on v2), restored when it
    /// leaves the background class on a kernel without `cpu.idle`.
    serving_weight: u64,
    /// `limits.cpu`: the quota it serves at (`None`: unlimited).
    serving_cores: Option<f64>,
    /// How it is frozen when parked.
    freezer: Option<Freezer>,
    /// Whether it was last frozen (so that leaving a class other than `Parked` writes nothing).
    frozen: std::sync::atomic::AtomicBool,
}

/// How a parked instance is frozen.
#[derive(Debug)]
enum Freezer {
    /// `cgroup.freeze` of its v2 cgroup (a frozen task still dies of SIGKILL there).
    V2(PathBuf),
    /// SIGSTOP to every process in its (v1) cgroups, SIGCONT to thaw: a stopped process dies of
    /// SIGKILL, its `PR_SET_PDEATHSIG` included, where one frozen by v1's freezer does not.
    Signal,
}

/// What a parked instance (a function's, serving nothing) may use of a core where there is no
/// freezer to freeze it (Function Compute and Lambda freeze theirs: their CPU is there while
/// they serve). Enough for timers and a garbage collector; a spinner or a fork loop with no
/// request to serve gets this and no more.
pub const PARKED_CORES: f64 = 0.05;

/// Open `cgroup.procs` files the child writes itself into; keep alive until spawn returns.
pub struct JoinFiles(Vec<File>);

impl JoinFiles {
    pub(crate) fn empty() -> Self {
        Self(Vec::new())
    }

    pub(crate) fn fds(&self) -> Vec<RawFd> {
        self.0.iter().map(|f| f.as_raw_fd()).collect()
    }
}

/// The rlimits to apply when no cgroup enforces `limits` (empty when cgroups do).
pub(crate) fn rlimits(limits: &Limits) -> Rlimits {
    match detected().backend {
        Backend::Rlimit => Rlimits {
            address_space: limits.memory_bytes,
            processes: limits.pids.map(u64::from),
        },
        _ => Rlimits::default(),
    }
}

impl InstanceCgroup {
    /// Creates the instance's cgroup with its limits; `None` when this host has no cgroups.
    pub fn create(instance_id: &str, limits: &Limits) -> io::Result<Option<Self>> {
        let cg = match &detected().backend {
            Backend::Rlimit => return Ok(None),
            Backend::V2 { dir, controllers } => {
                let d = claim(&[dir.as_path()], instance_id)?.remove(0);
                let has = |c: &str| controllers.contains(&c);
                Self {
                    v2: true,
                    memory: has("memory").then(|| d.clone()),
                    cpu: has("cpu").then(|| d.clone()),
                    cpuacct: Some(d.clone()),
                    freezer: d
                        .join("cgroup.freeze")
                        .exists()
                        .then(|| Freezer::V2(d.clone())),
                    pids: Some(d),
                    serving_weight: limits.cpu.map_or(100, |c| cpu_settings(c).weight),
                    serving_cores: limits.cpu,
                    frozen: false.into(),
                }
            }
            Backend::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
            } => {
                // Controllers mounted together (`cpu,cpuacct`) share one directory.
                let mut parents: Vec<&Path> = Vec::new();
                for p in [memory, cpu, cpuacct, pids].into_iter().flatten() {
                    if !parents.contains(&p.as_path()) {
                        parents.push(p);
                    }
                }
                let made = claim(&parents, instance_id)?;
                let dir = |p: &Option<PathBuf>| {
                    let i = parents.iter().position(|q| Some(*q) == p.as_deref())?;
                    Some(made[i].clone())
                };
                Self {
                    v2: false,
                    memory: dir(memory),
                    cpu: dir(cpu),
                    cpuacct: dir(cpuacct),
                    pids: dir(pids),
                    freezer: Some(Freezer::Signal),
                    serving_weight: limits.cpu.map_or(1024, |c| cpu_settings(c).shares),
                    serving_cores: limits.cpu,
                    frozen: false.into(),
                }
            }
        };
        // From here on, a failure must not leave the directories behind.
        if let Err(e) = cg.apply(limits) {
            cg.remove();
            return Err(e);
        }
        Ok(Some(cg))
    }

    fn apply(&self, limits: &Limits) -> io::Result<()> {
        let write = |dir: &Path, file: &str, value: String| {
            fs::write(dir.join(file), &value).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("writing {value} to {}: {e}", dir.join(file).display()),
                )
            })
        };
        if let (Some(d), Some(bytes)) = (&self.memory, limits.memory_bytes) {
            if self.v2 {
                write(d, "memory.max", bytes.to_string())?;
                // No swap: past the limit the instance is killed, not slowed to a crawl.
                let _ = fs::write(d.join("memory.swap.max"), "0");
            } else {
                write(d, "memory.limit_in_bytes", bytes.to_string())?;
                if d.join("memory.memsw.limit_in_bytes").exists() {
                    write(d, "memory.memsw.limit_in_bytes", bytes.to_string())?;
                }
            }
        }
        if let (Some(d), Some(cores)) = (&self.cpu, limits.cpu) {
            let c = cpu_settings(cores);
            if self.v2 {
                write(d, "cpu.max", format!("{} {}", c.quota_us, c.period_us))?;
                write(d, "cpu.weight", c.weight.to_string())?;
            } else {
                write(d, "cpu.cfs_quota_us", c.quota_us.to_string())?;
                write(d, "cpu.cfs_period_us", c.period_us.to_string())?;
                write(d, "cpu.shares", c.shares.to_string())?;
            }
        }
        if let (Some(d), Some(n)) = (&self.pids, limits.pids) {
            write(d, "pids.max", n.to_string())?;
        }
        Ok(())
    }

    /// Puts the instance in a CPU class (see `stratus_runtime::CpuClass`). Priority: `cpu.idle`
    /// where the kernel has it (5.15+, v1 and v2: the cgroup is scheduled like `SCHED_IDLE`
    /// against its siblings, and so weighs next to nothing in its parent's share too), else the
    /// smallest weight. A parked instance is also frozen where there is a freezer, else held to
    /// [`PARKED_CORES`] (or its own lower limit): a low priority alone still let a parked
    /// spinner's few milliseconds of CPU add a third to a busy neighbour's p99 on 2 cores
    /// (BENCHMARKS.md). False without a CPU controller or a freezer.
    pub fn set_class(&self, class: CpuClass) -> io::Result<bool> {
        let parked = class == CpuClass::Parked;
        // Frozen first when parking; thawed last when leaving, so that it wakes in its new class.
        if parked {
            self.set_frozen(true)?;
        }
        let mut done = parked && self.freezer.is_some();
        if let Some(d) = &self.cpu {
            let low = class != CpuClass::Serving;
            let idle = d.join("cpu.idle");
            if idle.exists() {
                fs::write(&idle, if low { "1" } else { "0" })?;
            } else {
                let (file, least) = self.weight_file();
                let w = if low { least } else { self.serving_weight };
                fs::write(d.join(file), w.to_string())?;
            }
            // Frozen, it runs nothing: the quota stays the one it serves at (set at creation).
            if self.freezer.is_none() {
                let quota = match (class, self.serving_cores) {
                    (CpuClass::Parked, Some(c)) => Some(c.min(PARKED_CORES)),
                    (CpuClass::Parked, None) => Some(PARKED_CORES),
                    (_, c) => c,
                };
                self.write_quota(d, quota)?;
            }
            done = true;
        }
        if !parked {
            self.set_frozen(false)?;
        }
        Ok(done)
    }

    /// Freezes or thaws every process in the instance (nothing without a freezer, or when it is
    /// already so). Freezing returns at once; the kernel stops the tasks as they reach a safe
    /// point.
    fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        let Some(f) = &self.freezer else {
            return Ok(());
        };
        if self.frozen.load(Ordering::Relaxed) == frozen {
            return Ok(());
        }
        match f {
            Freezer::V2(d) => fs::write(d.join("cgroup.freeze"), if frozen { "1" } else { "0" })?,
            Freezer::Signal => self.signal_all(if frozen { libc::SIGSTOP } else { libc::SIGCONT }),
        }
        self.frozen.store(frozen, Ordering::Relaxed);
        Ok(())
    }

    /// Sends `sig` to every process in the instance. One cgroup's list is all of them (the
    /// child joins each of its cgroups before exec, and what it forks inherits them), which
    /// keeps a thaw (on the request path) to one file read. A stop looks again for any process
    /// forked meanwhile, until a pass finds none (bounded: the pids limit bounds a fork loop);
    /// a stopped process forks nothing, so a continue needs one pass.
    fn signal_all(&self, sig: i32) {
        let Some(dir) = self.dirs().first().map(|d| d.to_path_buf()) else {
            return;
        };
        let passes = if sig == libc::SIGSTOP { 100 } else { 1 };
        let mut done: Vec<i32> = Vec::new();
        for _ in 0..passes {
            let fresh: Vec<i32> = pids_in(&dir)
                .into_iter()
                .filter(|p| !done.contains(p))
                .collect();
            if fresh.is_empty() {
                return;
            }
            for pid in fresh {
                // SAFETY: kill(2) has no memory-safety preconditions.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, sig);
                }
                done.push(pid);
            }
        }
    }

    /// Thaws the instance if it is frozen: a stopped or frozen process does not act on SIGTERM
    /// until then, so every stop (and, to be sure, every kill) thaws first.
    pub fn thaw(&self) {
        if let Err(e) = self.set_frozen(false) {
            tracing::warn!("cannot thaw an instance's cgroup: {e}");
        }
    }

    /// The CPU weight's file and its smallest value, where `cpu.idle` is missing.
    fn weight_file(&self) -> (&'static str, u64) {
        if self.v2 {
            ("cpu.weight", 1)
        } else {
            ("cpu.shares", 2)
        }
    }

    fn write_quota(&self, d: &Path, cores: Option<f64>) -> io::Result<()> {
        let c = cores.map(cpu_settings);
        if self.v2 {
            let v = c.map_or("max 100000".to_string(), |c| {
                format!("{} {}", c.quota_us, c.period_us)
            });
            fs::write(d.join("cpu.max"), v)
        } else {
            // The period first when the quota is set, the quota first when it is lifted: the
            // kernel refuses a quota above what the period allows of the parent's.
            match c {
                Some(c) => {
                    fs::write(d.join("cpu.cfs_period_us"), c.period_us.to_string())?;
                    fs::write(d.join("cpu.cfs_quota_us"), c.quota_us.to_string())
                }
                None => fs::write(d.join("cpu.cfs_quota_us"), "-1"),
            }
        }
    }

    /// The class the instance's cgroup is in now, read back from its files; `None` without a
    /// CPU controller.
    pub fn class(&self) -> Option<CpuClass> {
        let frozen = match &self.freezer {
            Some(Freezer::V2(d)) => {
                fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|v| v.trim() == "1")
            }
            // A stop is asynchronous (the kernel stops each task as it next runs): what was
            // sent, not yet what /proc shows.
            Some(Freezer::Signal) => self.frozen.load(std::sync::atomic::Ordering::Relaxed),
            None => false,
        };
        if frozen {
            return Some(CpuClass::Parked);
        }
        let d = self.cpu.as_ref()?;
        let low = if let Ok(v) = fs::read_to_string(d.join("cpu.idle")) {
            v.trim() == "1"
        } else {
            let (file, least) = self.weight_file();
            let w: u64 = fs::read_to_string(d.join(file)).ok()?.trim().parse().ok()?;
            w <= least
        };
        if !low {
            return Some(CpuClass::Serving);
        }
        let parked = cpu_settings(self.serving_cores.unwrap_or(PARKED_CORES).min(PARKED_CORES));
        let quota = if self.v2 {
            fs::read_to_string(d.join("cpu.max"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        } else {
            fs::read_to_string(d.join("cpu.cfs_quota_us"))
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        };
        // (With its own limit at or under the parked one, parked and background look alike.)
        Some(
            if self.freezer.is_none() && quota == Some(parked.quota_us) {
                CpuClass::Parked
            } else {
                CpuClass::Background
            },
        )
    }

    fn dirs(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = Vec::new();
        for d in [&self.memory, &self.cpu, &self.cpuacct, &self.pids]
            .into_iter()
            .flatten()
        {
            if !v.contains(&d.as_path()) {
                v.push(d);
            }
        }
        v
    }

    pub(crate) fn join_files(&self) -> io::Result<JoinFiles> {
        self.dirs()
            .into_iter()
            .map(|d| OpenOptions::new().write(true).open(d.join("cgroup.procs")))
            .collect::<io::Result<Vec<_>>>()
            .map(JoinFiles)
    }

    /// Every process in the instance's cgroup(s).
    pub fn procs(&self) -> Vec<i32> {
        let mut all = Vec::new();
        for d in self.dirs() {
            all.extend(pids_in(d));
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Kills every process in the cgroup, until none is left (a fork bomb's children are
    /// caught by the next pass; the pids limit bounds how many there can be).
    pub fn kill_all(&self) {
        self.thaw();
        if self.v2
            && let Some(d) = self.dirs().first()
        {
            let _ = fs::write(d.join("cgroup.kill"), "1");
        }
        for _ in 0..1000 {
            let procs = self.procs();
            if procs.is_empty() {
                return;
            }
            for pid in procs {
                // SAFETY: kill(2) has no memory-safety preconditions.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills what is left and removes the directories (a cgroup can only be removed once empty,
    /// and killed processes leave it when the kernel has finished them, a moment later).
    pub fn remove(&self) {
        self.kill_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        for d in self.dirs() {
            while let Err(e) = fs::remove_dir(d) {
                if e.kind() == io::ErrorKind::NotFound || Instant::now() > deadline {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!("could not remove cgroup {}: {e}", d.display());
                    }
                    break;
                }
                self.kill_all();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// How many times the kernel's OOM killer killed a process in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some(d) = &self.memory else { return 0 };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        read_key(&d.join(file), "oom_kill").unwrap_or(0)
    }

    /// Memory the instance uses now (resident and page cache, as the cgroup counts it).
    pub fn memory_usage(&self) -> Option<u64> {
        let d = self.memory.as_ref()?;
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        fs::read_to_string(d.join(file)).ok()?.trim().parse().ok()
    }

    /// The working set: memory in use less the inactive file cache, which the kernel reclaims
    /// before it would OOM-kill (what the kubelet and HPA call a container's memory).
    pub fn working_set(&self) -> Option<u64> {
        let usage = self.memory_usage()?;
        let d = self.memory.as_ref()?;
        let key = if self.v2 {
            "inactive_file"
        } else {
            "total_inactive_file"
        };
        let inactive = read_key(&d.join("memory.stat"), key).unwrap_or(0);
        Some(usage.saturating_sub(inactive))
    }

    /// CPU time used by every process in the cgroup since it was created.
    pub fn cpu_usage(&self) -> Option<Duration> {
        let d = self.cpuacct.as_ref()?;
        if self.v2 {
            return read_key(&d.join("cpu.stat"), "usage_usec").map(Duration::from_micros);
        }
        let ns: u64 = fs::read_to_string(d.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Duration::from_nanos(ns))
    }

    pub fn cpu_stats(&self) -> Option<CpuStats> {
        let d = self.cpu.as_ref()?;
        let stat = d.join("cpu.stat");
        let nr_throttled = read_key(&stat, "nr_throttled")?;
        let throttled = if self.v2 {
            Duration::from_micros(read_key(&stat, "throttled_usec")?)
        } else {
            Duration::from_nanos(read_key(&stat, "throttled_time")?)
        };
        Some(CpuStats {
            nr_throttled,
            throttled,
        })
    }

    /// Processes and threads in the cgroup now.
    pub fn pids_current(&self) -> Option<u64> {
        let d = self.pids.as_ref()?;
        fs::read_to_string(d.join("pids.current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Times a fork was refused because of `pids.max`.
    pub fn pids_refused(&self) -> Option<u64> {
        let d = self.pids.as_ref()?;
        read_key(&d.join("pids.events"), "max")
    }
}

/// The processes listed in one cgroup directory.
fn pids_in(dir: &Path) -> Vec<i32> {
    let mut s = String::new();
    if File::open(dir.join("cgroup.procs"))
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_err()
    {
        return Vec::new();
    }
    s.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Creates `<parent>/<name>` in every parent, where the name is the instance id, or the id with a
/// suffix when another server on this host (or a test) already has a cgroup of that name: ids
/// are unique per server, not per host. `mkdir` is the claim, so two racing servers never share.
fn claim(parents: &[&Path], instance_id: &str) -> io::Result<Vec<PathBuf>> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut name = instance_id.to_string();
    for _ in 0..100 {
        let mut made = Vec::new();
        let mut taken = false;
        for p in parents {
            let d = p.join(&name);
            match fs::create_dir(&d) {
                Ok(()) => made.push(d),
                Err(e) => {
                    for m in made.iter().rev() {
                        let _ = fs::remove_dir(m);
                    }
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                    taken = true;
                    break;
                }
            }
        }
        if !taken {
            return Ok(made);
        }
        name = format!(
            "{instance_id}.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free cgroup name for {instance_id}"),
    ))
}

/// Removes instance cgroups a killed server left behind: empty and older than a minute. A
/// fresh empty one may be another server's instance about to join it, and a non-empty one is
/// running; both are left alone.
fn sweep(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let old = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(60)))
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir()
            && old(&p)
            && fs::read_to_string(p.join("cgroup.procs")).is_ok_and(|s| s.trim().is_empty())
        {
            let _ = fs::remove_dir(&p);
        }
    }
}

/// The CFS settings for `limits.cpu`.
#[derive(Debug, PartialEq, Eq)]
struct CpuSettings {
    period_us: u64,
    quota_us: u64,
    /// cgroup v1 `cpu.shares` (1024 = the default, an unlimited instance's).
    shares: u64,
    /// cgroup v2 `cpu.weight` (100 = the default).
    weight: u64,
}

/// A 10 ms period (not the kernel's default 100 ms): a throttled instance runs its whole quota
/// in a burst at the start of each period, on every core it has threads for, and for that
/// burst its neighbours wait; at 100 ms a half-core spinner with two threads took both cores
/// for 25 ms at a time, at 10 ms for 2.5 ms. The kernel's smallest quota is 1 ms, so below
/// 0.1 core the period grows again (to 100 ms for 0.01). The share is in proportion to the
/// limit, so when the node is contended an instance capped at half a core also weighs half of
/// an uncapped one.
fn cpu_settings(cores: f64) -> CpuSettings {
    let period_us = ((1000.0 / cores).ceil() as u64).clamp(10_000, 100_000);
    let quota_us = ((cores * period_us as f64).round() as u64).max(1000);
    CpuSettings {
        period_us,
        quota_us,
        shares: ((cores * 1024.0).round() as u64).clamp(2, 262_144),
        weight: ((cores * 100.0).round() as u64).clamp(1, 10_000),
    }
}

/// `key value` lines (cgroup stat files).
fn read_key(file: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_and_v2_mounts_in_mountinfo() {
        let info = "\
30 24 0:26 / /sys/fs/cgroup rw,relatime shared:4 - tmpfs tmpfs rw,mode=755
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime shared:7 - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:8 - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";
        let m = cgroup_mounts(info);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].0, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(m[1].2, "rw,cpu,cpuacct");
        assert_eq!(m[2].1, "cgroup2");
    }

    #[test]
    fn cpu_limits_use_short_periods_and_proportional_shares() {
        let half = cpu_settings(0.5);
        assert_eq!((half.period_us, half.quota_us), (10_000, 5_000));
        assert_eq!((half.shares, half.weight), (512, 50));
        let two = cpu_settings(2.0);
        assert_eq!(
            (two.period_us, two.quota_us, two.shares),
            (10_000, 20_000, 2048)
        );
        // The kernel's 1 ms minimum quota: the period grows for small limits.
        let tiny = cpu_settings(0.01);
        assert_eq!((tiny.period_us, tiny.quota_us), (100_000, 1_000));
        assert_eq!((tiny.shares, tiny.weight), (10, 1));
        let fifth = cpu_settings(0.05);
        assert_eq!((fifth.period_us, fifth.quota_us), (20_000, 1_000));
    }

    #[test]
    fn reads_stat_keys() {
        let dir = std::env::temp_dir().join(format!("stratus-cg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("cpu.stat");
        fs::write(&f, "nr_periods 10\nnr_throttled 4\nthrottled_time 123\n").unwrap();
        assert_eq!(read_key(&f, "nr_throttled"), Some(4));
        assert_eq!(read_key(&f, "throttled_time"), Some(123));
        assert_eq!(read_key(&f, "nr"), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
