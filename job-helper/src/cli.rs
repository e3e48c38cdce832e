//! The helper's command line. The shim writes parts of it (`keep`,
//! `--warn-before`, `--through-keeper`): those names come from
//! `vscode_slurm_protocol::helper`, so both sides use one definition.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vscode_slurm_common::logging::LogArgs;
use vscode_slurm_common::slurm::Programs;
use vscode_slurm_protocol::{self as protocol, helper};

/// Runs VS Code's launch script (read from stdin) inside a Slurm job step.
///
/// Started by vscode-shim through `srun`; the step's environment carries
/// the session (VSCODE_SLURM_NONCE, VSCODE_SLURM_DOOR_KEY,
/// VSCODE_SLURM_RELAY_PORT), the node's published address
/// (VSCODE_SLURM_BIND_ADDR) and the job's private runtime directory
/// (VSCODE_SLURM_RUNTIME_DIR), both from the spank_vscode plugin.
#[derive(Debug, Parser)]
#[command(name = "vscode-job-helper", version)]
pub struct Cli {
    /// Shell that reads the launch script from its stdin.
    #[arg(long, value_name = "PATH", default_value = "/bin/bash")]
    pub shell: PathBuf,

    #[command(flatten)]
    pub log: LogArgs,

    /// Address the door listens on, instead of VSCODE_SLURM_BIND_ADDR.
    #[arg(long, value_name = "ADDR")]
    pub bind_addr: Option<IpAddr>,

    /// Have the job's keeper start the shell, so that it and the server it
    /// starts outlive this window (set by vscode-shim for every window).
    #[arg(long = helper::long(helper::THROUGH_KEEPER))]
    pub through_keeper: bool,

    /// Read the session's variables from the first line of stdin instead of
    /// the environment (set by vscode-shim where the scheduler's remote
    /// command passes no environment: HTCondor's condor_ssh_to_job).
    #[arg(long = helper::long(helper::SESSION_ON_STDIN))]
    pub session_on_stdin: bool,

    /// Print a man page or a completion script (man, bash, zsh, fish), for packaging.
    #[arg(long, value_name = "WHAT", hide = true)]
    pub generate: Option<String>,

    #[command(subcommand)]
    pub command: Option<Mode>,
}

#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Hold the job while windows are attached, then for its linger time;
    /// warn before the time limit. vscode-shim submits this as the job's batch script.
    #[command(name = helper::KEEP)]
    Keep {
        /// Warn this long before the time limit (comma-separated, e.g. 10m,2m).
        #[arg(
            long = helper::long(helper::WARN_BEFORE),
            value_name = "DURATIONS",
            default_value = "10m,2m",
            value_parser = parse_durations
        )]
        warn_before: Durations,

        #[command(flatten)]
        slurm: Programs,

        /// HTCondor's condor_chirp, with which a keeper in an HTCondor job
        /// publishes its attached windows in the job's ad.
        #[arg(long, value_name = "PATH", default_value = "/usr/libexec/condor/condor_chirp", hide = true)]
        condor_chirp: PathBuf,
    },
    /// Serve one SSH connection on stdin/stdout with the node's sshd in
    /// inetd mode, as the user, started by the job's keeper: a window of
    /// `vscode-shim proxy`.
    #[command(name = helper::SSHD)]
    Sshd {
        /// The OpenSSH server to run (an absolute path).
        #[arg(long, value_name = "PATH", default_value = "/usr/sbin/sshd")]
        sshd: PathBuf,
    },
    /// Open one door in front of TARGET (HOST:PORT or a socket path), say
    /// where in a control line, and serve it until stdin closes: what a
    /// window does for its server, alone, for benchmarks and tests.
    #[command(hide = true)]
    Door {
        #[arg(long, value_name = "TARGET")]
        to: String,
    },
}

#[derive(Debug, Clone)]
pub struct Durations(pub Vec<Duration>);

fn parse_durations(text: &str) -> Result<Durations, String> {
    if text.trim() == "none" {
        return Ok(Durations(Vec::new()));
    }
    text.split(',').map(protocol::duration::parse).collect::<Result<_, _>>().map(Durations)
}

/// Exits with one line naming what is unusable in the arguments or the
/// step's environment.
pub fn fail(message: std::fmt::Arguments<'_>) -> ! {
    eprintln!("vscode-job-helper: {message}");
    std::process::exit(vscode_slurm_common::cli::USAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// What the shim writes (see `vscode-shim`'s profile module), parsed
    /// by the helper's own definition.
    #[test]
    fn the_shims_command_lines_parse() {
        let keep = ["vscode-job-helper", helper::KEEP, &format!("{}=5m,1m", helper::WARN_BEFORE)];
        let Some(Mode::Keep { warn_before, .. }) = Cli::try_parse_from(keep).unwrap().command else {
            panic!("not the keeper")
        };
        assert_eq!(warn_before.0, [Duration::from_secs(300), Duration::from_secs(60)]);
        let proxy = Cli::try_parse_from(["vscode-job-helper", helper::SSHD]).unwrap();
        assert!(matches!(proxy.command, Some(Mode::Sshd { .. })));
        let window = Cli::try_parse_from(["vscode-job-helper", helper::THROUGH_KEEPER]).unwrap();
        assert!(window.through_keeper && window.command.is_none());
        Cli::command().debug_assert();
    }
}
