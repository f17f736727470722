//! `stratus`: one binary. `serve` runs a node; every other subcommand talks to a node's API.
//!
//! Exit codes (stable, for scripts):
//! 0 success · 1 the operation failed (server error, failed deploy) · 2 bad usage or invalid
//! input (flags, manifest) · 3 not found · 4 conflict or refused (alias in use, no history,
//! route taken) · 5 cannot reach the API · 6 unauthorized.
// `deny` rather than `forbid`: `cap_malloc_arenas` is the binary's one `unsafe` call.
#![deny(unsafe_code)]

mod alarm;
mod cli;
mod client;
mod deploy;
mod dev;
mod init;
mod invoke;
mod output;
mod replay;
mod serve;
mod top;

use std::process::ExitCode;

use clap::Parser;

/// glibc arenas the process may use (see [`cap_malloc_arenas`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: i32 = 2;

/// glibc gives threads that contend for the heap arenas of their own, up to 8 per core, and
/// memory freed into one stays there: a server with tokio workers, the blocking pool and wasm
/// guest threads kept about 3/4 of its heap as free arena memory (10,000 idle wasm functions:
/// 941 MiB resident with the default, 238 MiB with two arenas; BENCHMARKS.md, WebAssembly).
/// glibc's per-thread caches still serve most small allocations without taking an arena lock.
/// `MALLOC_ARENA_MAX` in the environment (read by glibc itself) takes precedence.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: `mallopt` only sets an allocator parameter, and this runs before the process
        // starts any thread.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}

fn main() -> ExitCode {
    cap_malloc_arenas();
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = client::exit_code(&e);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}
