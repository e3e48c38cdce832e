use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgAction, Parser};

/// Starts a Slurm job for a VS Code Remote-SSH session and relays to it.
///
/// Meant as the `RemoteCommand` of an ssh host entry, e.g.
/// `RemoteCommand vscode-shim -- --partition=gpu --time=4:00:00`.
#[derive(Debug, Parser)]
#[command(
    name = "vscode-shim",
    version,
    after_help = "Subcommands:\n  \
                  setup      the laptop's ssh entry and VS Code settings (`vscode-shim setup --help`)\n  \
                  doctor     checks this login node (`vscode-shim doctor --help`)\n  \
                  sessions   lists your VS Code jobs\n  \
                  stop       ends a VS Code job (`vscode-shim stop PROFILE|JOBID`)"
)]
pub struct Cli {
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

    /// The salloc program.
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

    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Also log to this file (at least info level); %p becomes the pid.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Copy what VS Code sends (the launch script) to this file; %p becomes the pid.
    #[arg(long, value_name = "PATH")]
    pub tee_stdin: Option<PathBuf>,

    /// Copy what VS Code receives to this file; %p becomes the pid.
    #[arg(long, value_name = "PATH")]
    pub tee_stdout: Option<PathBuf>,

    /// Copy everything written to stderr to this file; %p becomes the pid.
    #[arg(long, value_name = "PATH")]
    pub tee_stderr: Option<PathBuf>,

    /// The scancel program (for tests without Slurm).
    #[arg(long, value_name = "PATH", default_value = "scancel", hide = true)]
    pub scancel: PathBuf,

    /// The squeue program (for tests without Slurm).
    #[arg(long, value_name = "PATH", default_value = "squeue", hide = true)]
    pub squeue: PathBuf,

    /// The sbatch program (for tests without Slurm).
    #[arg(long, value_name = "PATH", default_value = "sbatch", hide = true)]
    pub sbatch: PathBuf,

    /// The srun program (for tests without Slurm).
    #[arg(long, value_name = "PATH", default_value = "srun", hide = true)]
    pub srun: PathBuf,

    /// The scontrol program (for tests without Slurm).
    #[arg(long, value_name = "PATH", default_value = "scontrol", hide = true)]
    pub scontrol: PathBuf,

    /// Arguments for salloc, e.g. `--partition=gpu --time=4:00:00`.
    #[arg(last = true, value_name = "SALLOC_ARGS")]
    pub salloc_args: Vec<OsString>,
}

impl Cli {
    /// ssh shows stderr to VS Code's log line by line, so clap's multi-line
    /// usage errors are cut down to one line; help and version print as usual.
    pub fn parse_or_exit() -> Cli {
        match Cli::try_parse() {
            Ok(cli) => cli,
            Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
            Err(e) => {
                eprintln!("{}", one_line_error(&e.render().to_string()));
                std::process::exit(2);
            }
        }
    }

    /// Whether the session joins or keeps a job of a profile.
    pub fn persistent(&self) -> bool {
        !self.no_profile
    }

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

fn one_line_error(rendered: &str) -> String {
    let first = rendered.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("invalid arguments");
    let what = first.strip_prefix("error: ").unwrap_or(first);
    format!("vscode-shim: {what}; see 'vscode-shim --help'")
}

/// Lets several sessions of one user share a path pattern without clobbering each other.
pub fn expand_pid(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    if text.contains("%p") {
        PathBuf::from(text.replace("%p", &std::process::id().to_string()))
    } else {
        path.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vscode-shim").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_salloc_args_after_double_dash() {
        let cli = parse(&["-vv", "--", "--partition=gpu", "--time=4:00:00"]).unwrap();
        assert_eq!(cli.listen_host.to_string(), "127.0.0.1");
        assert_eq!(cli.listen_port, 0);
        assert_eq!(cli.job_name, "vscode");
        assert_eq!(cli.connect_wait, 300);
        assert_eq!(cli.poll_interval, 5);
        assert_eq!(cli.verbose, 2);
        assert_eq!(
            cli.salloc_args,
            vec![OsString::from("--partition=gpu"), OsString::from("--time=4:00:00")]
        );
    }

    #[test]
    fn salloc_args_need_the_double_dash() {
        assert!(parse(&["--partition=gpu"]).is_err());
        assert!(parse(&["stray"]).is_err());
    }

    #[test]
    fn errors_become_one_line() {
        let e = parse(&["--bogus"]).unwrap_err();
        let line = one_line_error(&e.render().to_string());
        assert!(!line.contains('\n'));
        assert!(line.starts_with("vscode-shim: unexpected argument '--bogus'"), "{line}");
        assert!(line.ends_with("; see 'vscode-shim --help'"));
    }

    #[test]
    fn bad_durations_are_one_clear_line() {
        let e = parse(&["--linger", "10", "--"]).unwrap_err();
        let line = one_line_error(&e.render().to_string());
        assert!(line.contains("'10' has no unit"), "{line}");
        assert!(line.contains("--linger"), "{line}");
        assert!(!line.contains('\n'));
        assert!(parse(&["--warn-before", "2m,x", "--"]).is_err());
        let cli = parse(&["--linger", "1h30m", "--warn-before", "2m,1m", "--"]).unwrap();
        assert_eq!(cli.linger, Some(Duration::from_secs(5400)));
        assert!(cli.persistent());
        assert!(parse(&["--"]).unwrap().persistent());
        assert!(!parse(&["--no-profile", "--"]).unwrap().persistent());
        assert!(parse(&["--no-profile", "--profile", "x", "--"]).is_err());
    }

    #[test]
    fn pid_placeholder_is_expanded() {
        let pid = std::process::id().to_string();
        assert_eq!(expand_pid(Path::new("/tmp/shim-%p.log")), PathBuf::from(format!("/tmp/shim-{pid}.log")));
        assert_eq!(expand_pid(Path::new("/tmp/shim.log")), PathBuf::from("/tmp/shim.log"));
    }
}
