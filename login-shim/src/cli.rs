//! The whole command line in one place: a session (`vscode-shim [OPTIONS]
//! -- SALLOC_ARGS`, what ssh's RemoteCommand runs) or one subcommand.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use vscode_slurm_common::htcondor::Programs as CondorPrograms;
use vscode_slurm_common::logging::LogArgs;
use vscode_slurm_common::slurm::Programs;

use crate::doctor::DoctorArgs;
use crate::scheduler::Scheduler;
use crate::sessions::{SessionsArgs, StopArgs};
use crate::setup::SetupArgs;

/// Starts a Slurm job for a VS Code Remote-SSH session and relays to it.
///
/// Meant as the `RemoteCommand` of an ssh host entry, e.g.
/// `RemoteCommand vscode-shim -- --partition=gpu --time=4:00:00`.
#[derive(Debug, Parser)]
#[command(name = "vscode-shim", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub session: SessionArgs,

    /// Print a man page (man, man-SUBCOMMAND) or a completion script (bash,
    /// zsh, fish), for packaging.
    #[arg(long, value_name = "WHAT", hide = true)]
    pub generate: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    // Setup and doctor are described by their own structs' doc comments.
    Setup(SetupArgs),
    Doctor(DoctorArgs),
    /// List your VS Code jobs: profile, job, node, state, time left, windows, grace left.
    Sessions(SessionsArgs),
    /// End a VS Code job: by profile name or job id (the only one, if none is given).
    Stop(StopArgs),
    // Boxed: a session's options dwarf the other subcommands'.
    Proxy(Box<ProxyArgs>),
}

/// Connects ssh to a server of your own inside the profile's job, as an ssh ProxyCommand.
///
/// For every SSH client (VSCodium, Cursor, JetBrains Gateway, Zed, plain
/// ssh, scp, rsync, ssh -L, ssh -X): on the laptop,
/// `ProxyCommand ssh -T LOGIN vscode-shim proxy --profile NAME -- SBATCH_ARGS`.
/// The profile's job is found or submitted as for RemoteCommand (same
/// profiles, reattach, windows, linger, warnings on stderr); each connection
/// is a window whose step runs the node's sshd in inetd mode as you, with
/// your authorized keys and your job host key (`vscode-shim setup --proxy`).
/// The connection's bytes ride the step's I/O: no port of the session is
/// open on the cluster network.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub session: SessionArgs,
}

/// A session: what ssh runs for VS Code.
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Address the relay listens on; sshd connects here on VS Code's behalf.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub listen_host: IpAddr,

    /// Port the relay listens on (0: any free port).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub listen_port: u16,

    /// The session's profile: a window joins the user's running job of this
    /// profile (from any login node) instead of queueing a new one. The job
    /// is named vscode:PROFILE. Default: derived from the salloc arguments.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// How long the job stays after its last window closes (e.g. 30m; 0 ends
    /// it at once), capped by the site's maximum. Default: the site's.
    #[arg(long, value_name = "DURATION", value_parser = parse_linger)]
    pub linger: Option<Duration>,

    /// One job per connection, started with salloc and held by this
    /// process: never joined by another window, never lingering.
    #[arg(long, conflicts_with_all = ["profile", "linger"])]
    pub no_profile: bool,

    /// Name of the Slurm job with --no-profile.
    #[arg(long, value_name = "NAME", default_value = "vscode", requires = "no_profile")]
    pub job_name: String,

    /// When to warn before the job's time limit, e.g. 10m,2m (the default), or none.
    #[arg(long, value_name = "DURATIONS", value_parser = parse_warnings)]
    pub warn_before: Option<String>,

    /// The salloc program (used with --no-profile).
    #[arg(long, value_name = "PATH", default_value = "salloc")]
    pub salloc: PathBuf,

    /// The helper program that runs the launch script on the compute node.
    #[arg(long, value_name = "PATH", default_value = "vscode-job-helper")]
    pub helper: PathBuf,

    /// How long a relay connection waits for the session's server to be known.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub connect_wait: u64,

    /// How often to report progress while the job is pending.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_interval: u64,

    #[command(flatten)]
    pub log: LogArgs,

    /// Copy what VS Code sends (the launch script) to this file; %p becomes the pid.
    #[arg(long, value_name = "PATH")]
    pub tee_stdin: Option<PathBuf>,

    /// Copy what VS Code receives to this file; %p becomes the pid.
    #[arg(long, value_name = "PATH")]
    pub tee_stdout: Option<PathBuf>,

    /// Copy everything written to stderr to this file; %p becomes the pid.
    #[arg(long, value_name = "PATH")]
    pub tee_stderr: Option<PathBuf>,

    #[command(flatten)]
    pub slurm: Programs,

    /// The scheduler to run the session's job on. Default: the site's
    /// (vscode-shim.conf next to this program), else the one this login
    /// node has (sbatch, else condor_submit).
    #[arg(long, value_enum, value_name = "NAME")]
    pub scheduler: Option<Scheduler>,

    #[command(flatten)]
    pub condor: CondorPrograms,

    /// Options for the job, as sbatch and salloc take them, e.g.
    /// `--partition=gpu --time=4:00:00`; on HTCondor, submit commands, one
    /// per argument, e.g. 'request_cpus = 4' 'request_gpus = 1'.
    #[arg(last = true, value_name = "SALLOC_ARGS")]
    pub job_args: Vec<OsString>,
}

impl SessionArgs {
    pub fn connect_wait(&self) -> Duration {
        Duration::from_secs(self.connect_wait)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval)
    }
}

fn parse_linger(text: &str) -> Result<Duration, String> {
    vscode_slurm_protocol::duration::parse(text)
}

fn parse_warnings(text: &str) -> Result<String, String> {
    if text != "none" {
        for part in text.split(',') {
            vscode_slurm_protocol::duration::parse(part)?;
        }
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use vscode_slurm_common::cli::one_line;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vscode-shim").chain(args.iter().copied()))
    }

    fn session(args: &[&str]) -> SessionArgs {
        let cli = parse(args).unwrap();
        assert!(cli.command.is_none());
        cli.session
    }

    fn error_line(args: &[&str]) -> String {
        one_line("vscode-shim", None, &parse(args).unwrap_err().render().to_string())
    }

    #[test]
    fn defaults_and_job_args_after_double_dash() {
        let cli = session(&["-vv", "--", "--partition=gpu", "--time=4:00:00"]);
        assert_eq!(cli.listen_host.to_string(), "127.0.0.1");
        assert_eq!(cli.listen_port, 0);
        assert_eq!(cli.job_name, "vscode");
        assert_eq!(cli.connect_wait, 300);
        assert_eq!(cli.poll_interval, 5);
        assert_eq!(cli.log.verbose, 2);
        assert_eq!(cli.slurm.squeue, PathBuf::from("squeue"));
        assert_eq!(cli.job_args, vec![OsString::from("--partition=gpu"), OsString::from("--time=4:00:00")]);
    }

    #[test]
    fn job_args_need_the_double_dash() {
        assert!(parse(&["--partition=gpu"]).is_err());
        assert!(parse(&["stray"]).is_err());
    }

    #[test]
    fn subcommands_are_one_enum_and_exclude_session_options() {
        assert!(matches!(parse(&["sessions"]).unwrap().command, Some(Command::Sessions(_))));
        assert!(matches!(parse(&["stop", "gpu"]).unwrap().command, Some(Command::Stop(_))));
        assert!(matches!(parse(&["doctor", "--no-job"]).unwrap().command, Some(Command::Doctor(_))));
        // The fake Slurm programs of tests reach every subcommand.
        let Some(Command::Sessions(sessions)) =
            parse(&["sessions", "--squeue", "/x/squeue"]).unwrap().command
        else {
            panic!("not parsed as sessions")
        };
        assert_eq!(sessions.jobs.slurm.squeue, PathBuf::from("/x/squeue"));
        assert!(parse(&["--profile", "x", "sessions"]).is_err());
    }

    #[test]
    fn errors_become_one_line() {
        let line = error_line(&["--bogus"]);
        assert!(!line.contains('\n'));
        assert!(line.starts_with("vscode-shim: unexpected argument '--bogus'"), "{line}");
        assert!(line.ends_with("; see 'vscode-shim --help'"));
    }

    #[test]
    fn bad_durations_are_one_clear_line() {
        let line = error_line(&["--linger", "10", "--"]);
        assert!(line.contains("'10' has no unit"), "{line}");
        assert!(line.contains("--linger"), "{line}");
        assert!(!line.contains('\n'));
        assert!(parse(&["--warn-before", "2m,x", "--"]).is_err());
        let cli = session(&["--linger", "1h30m", "--warn-before", "2m,1m", "--"]);
        assert_eq!(cli.linger, Some(Duration::from_secs(5400)));
        assert!(!session(&["--"]).no_profile);
        assert!(session(&["--no-profile", "--"]).no_profile);
        assert!(parse(&["--no-profile", "--profile", "x", "--"]).is_err());
    }

    #[test]
    fn the_command_is_consistent() {
        Cli::command().debug_assert();
    }
}
