//! Isolation of instances when the server runs as root: a private mount namespace in which the
//! whole filesystem is read-only and `/tmp` is a fresh tmpfs of the instance's own, and an
//! unprivileged user (`nobody`) when the code folder is readable to it.
//!
//! Configured once by the server ([`configure`]), proven at once with a probe process, and off
//! (with the reason in the log) wherever it does not work: never a hard failure. Folders the
//! instance needs that lie under `/tmp` (a data dir there, as in tests) are bind-mounted back
//! into the private `/tmp`, read-only like everything else.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;

/// `--isolation`: `auto` isolates when root and the kernel allows it, `off` never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationMode {
    Auto,
    Off,
}

/// What isolation instances get on this node, for the serve log and `stratus info`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IsolationReport {
    pub enabled: bool,
    /// `nobody (uid 65534)` when the code folder is readable to it, else root; or why not.
    pub user: String,
    pub tmp: String,
    pub filesystem: String,
    /// Namespaces not used, and why.
    pub not_isolated: String,
}

struct Config {
    report: IsolationReport,
    uid: Option<(u32, u32)>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

const OFF_NOTE: &str = "pid and network namespaces are not used: the gateway reaches instances on \
                        127.0.0.1:$PORT and stop signals them from the host's pid namespace";

fn off(why: &str) -> Config {
    Config {
        report: IsolationReport {
            enabled: false,
            user: format!("same as the server ({why})"),
            tmp: "shared /tmp".into(),
            filesystem: "the server's view".into(),
            not_isolated: OFF_NOTE.into(),
        },
        uid: None,
    }
}

/// Sets the node's isolation once (later calls keep the first) and says what it is.
pub fn configure(mode: IsolationMode) -> IsolationReport {
    CONFIG
        .get_or_init(|| match mode {
            IsolationMode::Off => off("isolation is off: --isolation off"),
            IsolationMode::Auto => detect(),
        })
        .report
        .clone()
}

/// The node's isolation (off unless [`configure`] turned it on).
pub fn report() -> IsolationReport {
    CONFIG
        .get()
        .map(|c| c.report.clone())
        .unwrap_or_else(|| off("isolation not configured").report)
}

fn detect() -> Config {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        return off("the server is not root");
    }
    let uid = nobody();
    // Prove it: a probe goes through exactly what an instance will.
    let plan = Plan::build(&[], uid);
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", "test ! -w /etc && touch /tmp/probe"]);
    plan.install_std(&mut cmd);
    match cmd.status() {
        Ok(s) if s.success() => Config {
            report: IsolationReport {
                enabled: true,
                user: match uid {
                    Some((u, _)) => format!(
                        "nobody (uid {u}) when the code folder is readable to it, else root"
                    ),
                    None => "root: no `nobody` user in /etc/passwd".into(),
                },
                tmp: "private tmpfs per instance".into(),
                filesystem: "read-only (own mount namespace)".into(),
                not_isolated: OFF_NOTE.into(),
            },
            uid,
        },
        Ok(s) => off(&format!("the isolation probe failed ({s})")),
        Err(e) => off(&format!("the isolation probe could not start: {e}")),
    }
}

/// `nobody`'s uid and gid from /etc/passwd.
fn nobody() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == "nobody").then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Every folder from `/` to `dir` can be searched by other users, and `dir` read.
fn readable_by_others(dir: &Path) -> bool {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode());
    if !mode(dir).is_ok_and(|m| m & 0o005 == 0o005) {
        return false;
    }
    dir.ancestors()
        .skip(1)
        .all(|a| mode(a).is_ok_and(|m| m & 0o001 != 0))
}

/// `program` (symlinks followed) can be run by other users from where it is.
fn executable_by_others(program: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(program) else {
        return false;
    };
    let searchable = |p: &Path| {
        p.ancestors()
            .skip(1)
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    std::fs::metadata(&real).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
        && searchable(&real)
        && searchable(program)
}

/// A folder under `/tmp` to make visible again inside the private one. The child opens it after
/// `unshare` (a bind source must be in the caller's mount namespace) onto descriptor `fd`, so
/// `source` (`/proc/self/fd/<fd>`) can be built beforehand.
struct Keep {
    fd: libc::c_int,
    source: CString,
    mkdirs: Vec<CString>,
    target: CString,
}

/// Descriptors the child parks the kept folders on; far above anything std or tokio opens.
const KEEP_FD_BASE: libc::c_int = 900;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_int = 0x8000;

/// What one child does before exec; built in the parent so the child only makes system calls.
pub(crate) struct Plan {
    keep: Vec<Keep>,
    uid: Option<(u32, u32)>,
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths have no NUL")
}

impl Plan {
    /// The plan for an instance that needs `dirs` (its code folder, a bootstrap's folder), or
    /// `None` when isolation is off.
    pub(crate) fn for_instance(dirs: &[&Path], program: &Path) -> Option<Plan> {
        let c = CONFIG.get()?;
        if !c.report.enabled {
            return None;
        }
        // Root unless every folder, and the program, are reachable to the unprivileged user
        // (an interpreter installed under /root, say, is not).
        let program_ok = executable_by_others(program);
        let uid = c
            .uid
            .filter(|_| program_ok && dirs.iter().all(|d| readable_by_others(d)));
        Some(Plan::build(dirs, uid))
    }

    fn build(dirs: &[&Path], uid: Option<(u32, u32)>) -> Plan {
        let keep = dirs
            .iter()
            .filter(|d| d.starts_with("/tmp") && d.is_absolute())
            .enumerate()
            .filter_map(|(i, d)| {
                let fd = KEEP_FD_BASE + i as libc::c_int;
                let source = CString::new(format!("/proc/self/fd/{fd}")).ok()?;
                let mut mkdirs: Vec<PathBuf> = d
                    .ancestors()
                    .filter(|a| a.starts_with("/tmp") && *a != Path::new("/tmp"))
                    .map(Path::to_path_buf)
                    .collect();
                mkdirs.reverse();
                Some(Keep {
                    fd,
                    source,
                    mkdirs: mkdirs.iter().map(|p| cstr(p)).collect(),
                    target: cstr(d),
                })
            })
            .collect();
        Plan { keep, uid }
    }

    /// Whether the instance will run as the unprivileged user.
    pub(crate) fn unprivileged(&self) -> bool {
        self.uid.is_some()
    }

    fn install_std(self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: `apply` only makes async-signal-safe system calls on memory built beforehand.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || self.apply());
        }
    }

    /// In the forked child, before exec. Order matters: the mounts need root, and `setuid`
    /// clears `PR_SET_PDEATHSIG`, which the caller sets after this.
    #[allow(unsafe_code)]
    pub(crate) fn apply(&self) -> std::io::Result<()> {
        // Says which step failed on the instance's stderr (quoted in the start error), then
        // returns the errno; a static string, since nothing may be allocated here.
        let fail = |step: &'static [u8]| {
            let e = std::io::Error::last_os_error();
            // SAFETY: write(2) of a static buffer.
            unsafe {
                libc::write(2, step.as_ptr().cast(), step.len());
            }
            e
        };
        // SAFETY: system calls on NUL-terminated strings and a struct owned by `self`.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(fail(b"isolation: unshare failed\n"));
            }
            // Nothing we mount leaks back to the host.
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(fail(b"isolation: make-private failed\n"));
            }
            let attr = MountAttr {
                attr_set: MOUNT_ATTR_RDONLY,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            if libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ) != 0
            {
                return Err(fail(b"isolation: read-only failed\n"));
            }
            // Hold the kept folders before the tmpfs hides them.
            for k in &self.keep {
                let fd = libc::open(k.target.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
                if fd < 0 {
                    return Err(fail(b"isolation: open-kept failed\n"));
                }
                if fd != k.fd {
                    if libc::dup2(fd, k.fd) < 0 {
                        return Err(fail(b"isolation: dup-kept failed\n"));
                    }
                    libc::close(fd);
                }
            }
            if libc::mount(
                c"tmpfs".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=1777,size=256m".as_ptr().cast(),
            ) != 0
            {
                return Err(fail(b"isolation: tmpfs failed\n"));
            }
            for k in &self.keep {
                for d in &k.mkdirs {
                    libc::mkdir(d.as_ptr(), 0o755);
                }
                if libc::mount(
                    k.source.as_ptr(),
                    k.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(fail(b"isolation: bind-kept failed\n"));
                }
                libc::close(k.fd);
            }
            if let Some((uid, gid)) = self.uid
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(fail(b"isolation: setuid failed\n"));
            }
        }
        Ok(())
    }
}
