//! Runs VS Code's launch script inside a Slurm job step: on the way in the
//! script's loopback binds move the server somewhere only this session
//! reaches (a private unix socket where it can), and on the way out the
//! server's `listeningOn` line opens a door for it on the node's published
//! address, announced to `vscode-shim` in a control line, with the relay's
//! port for VS Code. This file only dispatches.

mod announcer;
mod cli;
mod htcondor;
mod keeper;
mod launch_lock;
#[cfg(test)]
mod scratch;
mod session;
mod shell;
mod sshd;
mod window;

use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;
use vscode_slurm_common::cli::{generate, parse_or_exit};
use vscode_slurm_common::logging;
use vscode_slurm_common::slurm::Slurm;
use vscode_slurm_door::door::Target as DoorTarget;
use vscode_slurm_protocol::env;

use crate::cli::{fail, Cli, Mode};
use crate::session::Session;

/// The keeper's Slurm commands run unattended on a compute node; a busy
/// controller gets longer than on a login node, where a user waits.
const SLURM_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    // The environment holds the session's secrets; as a non-dumpable process
    // its /proc files (environ included) are root's, so nothing else the
    // user runs on the node, the launch script included, can read them.
    // SAFETY: prctl with plain integer arguments touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let cli: Cli = parse_or_exit();
    if let Some(what) = &cli.generate {
        std::process::exit(generate(Cli::command(), what));
    }
    let style = logging::Style { program: "vscode-job-helper", label_levels: true };
    if let Err(e) = logging::init(&cli.log, style, None) {
        fail(format_args!("{e}"));
    }
    // Both only set this process's environment: done before the runtime
    // starts a thread.
    if cli.session_on_stdin {
        if let Err(e) = htcondor::read_session_from_stdin() {
            fail(format_args!("{e}; start windows with vscode-shim"));
        }
    }
    if let Err(e) = htcondor::adopt_job_environment() {
        fail(format_args!("{e}"));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => fail(format_args!("cannot start the async runtime: {e}")),
    };
    let code = match cli.command {
        Some(Mode::Keep { warn_before, slurm, condor_chirp }) => {
            let slurm = Slurm::new(slurm, SLURM_TIMEOUT);
            runtime.block_on(keeper::run(keeper::KeepOptions {
                warn_before: warn_before.0,
                slurm,
                condor_chirp,
            }))
        }
        Some(Mode::Sshd { sshd }) => runtime.block_on(sshd::run(sshd::Options { sshd })),
        Some(Mode::Door { ref to }) => {
            let session = session_or_exit(&cli);
            let target = match to.parse() {
                Ok(addr) => DoorTarget::Tcp(addr),
                Err(_) if to.starts_with('/') => DoorTarget::Unix(PathBuf::from(to)),
                Err(_) => fail(format_args!("--to takes HOST:PORT or an absolute socket path, not {to:?}")),
            };
            runtime.block_on(announcer::serve_one_door(session, target))
        }
        None => {
            let session = session_or_exit(&cli);
            let keeper_dir = cli.through_keeper.then(|| {
                std::env::var_os(env::RUNTIME_DIR).map(PathBuf::from).unwrap_or_else(|| {
                    fail(format_args!(
                        "{} is not set: --through-keeper needs a job submitted with --vscode",
                        env::RUNTIME_DIR
                    ))
                })
            });
            runtime.block_on(window::run(&cli.shell, session, keeper_dir))
        }
    };
    // Not returning: the runtime would wait for the blocking read of our
    // stdin, which may never end.
    std::process::exit(code)
}

fn session_or_exit(cli: &Cli) -> Session {
    Session::from_env(cli.bind_addr).unwrap_or_else(|message| fail(format_args!("{message}")))
}
