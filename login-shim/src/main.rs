//! `vscode-shim`: the ssh `RemoteCommand` that puts a VS Code Remote-SSH
//! session inside a Slurm job and relays VS Code's connections to it. This
//! file only dispatches: one parse, one match on what was asked.

mod cli;
mod doctor;
mod htcondor;
mod job;
mod no_profile;
mod profile;
mod relay;
mod scheduler;
mod session;
mod sessions;
mod setup;
mod streams;

use std::future::Future;

use clap::CommandFactory;
use vscode_slurm_common::cli::{generate, parse_or_exit};

use crate::cli::{Cli, Command};

fn main() {
    let cli: Cli = parse_or_exit();
    if let Some(what) = &cli.generate {
        std::process::exit(generate(Cli::command(), what));
    }
    let code = match cli.command {
        Some(Command::Setup(args)) => setup::run(&args),
        Some(Command::Doctor(args)) => doctor::run(&args),
        Some(Command::Sessions(args)) => block_on(sessions::sessions(&args)),
        Some(Command::Stop(args)) => block_on(sessions::stop(&args)),
        Some(Command::Proxy(args)) => session::main(args.session, true),
        None => session::main(cli.session, false),
    };
    std::process::exit(code);
}

fn block_on(work: impl Future<Output = i32>) -> i32 {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            eprintln!("vscode-shim: cannot start the async runtime: {e}");
            1
        }
    }
}
