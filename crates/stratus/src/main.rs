//! `stratus`: one binary. `serve` runs a node; every other subcommand talks to a node's API.
//!
//! Exit codes (stable, for scripts):
//! 0 success · 1 the operation failed (server error, failed deploy) · 2 bad usage or invalid
//! input (flags, manifest) · 3 not found · 4 conflict or refused (alias in use, no history,
//! route taken) · 5 cannot reach the API · 6 unauthorized.
#![forbid(unsafe_code)]

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

fn main() -> ExitCode {
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
