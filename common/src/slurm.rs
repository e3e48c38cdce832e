//! The one way vscode-shim and the keeper ask Slurm something: every client
//! command bounded in time, and every failure an error that says which
//! program failed and how, never an empty answer. A `squeue` that timed out
//! must not read as "no job" (the shim would submit a second one) nor as
//! "the job is gone" (it would end a live session).

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::time::timeout;

/// The Slurm client programs. The flags are hidden: they exist so that
/// tests without a cluster can put scripts in Slurm's place.
#[derive(Debug, Clone, clap::Args)]
pub struct Programs {
    /// The squeue program.
    #[arg(long, value_name = "PATH", default_value = "squeue", hide = true)]
    pub squeue: PathBuf,
    /// The sbatch program.
    #[arg(long, value_name = "PATH", default_value = "sbatch", hide = true)]
    pub sbatch: PathBuf,
    /// The srun program.
    #[arg(long, value_name = "PATH", default_value = "srun", hide = true)]
    pub srun: PathBuf,
    /// The scancel program.
    #[arg(long, value_name = "PATH", default_value = "scancel", hide = true)]
    pub scancel: PathBuf,
    /// The scontrol program.
    #[arg(long, value_name = "PATH", default_value = "scontrol", hide = true)]
    pub scontrol: PathBuf,
}

/// How a Slurm command failed; its text is one clause for a user's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlurmError {
    Start { program: String, error: String },
    Timeout { program: String, after: Duration },
    Failed { program: String, stderr: String },
}

impl SlurmError {
    /// squeue and scontrol say this of a job the controller has forgotten
    /// (it ended more than MinJobAge ago): an answer, not a fault.
    pub fn is_unknown_job(&self) -> bool {
        matches!(self, SlurmError::Failed { stderr, .. } if stderr.contains("Invalid job id"))
    }
}

impl fmt::Display for SlurmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlurmError::Start { program, error } => write!(f, "cannot run {program}: {error}"),
            SlurmError::Timeout { program, after } => {
                write!(f, "{program} did not answer within {}s", after.as_secs())
            }
            SlurmError::Failed { program, stderr } if stderr.is_empty() => write!(f, "{program} failed"),
            SlurmError::Failed { program, stderr } => write!(f, "{program} failed: {stderr}"),
        }
    }
}

/// A submission may wait on a busy controller much longer than a query;
/// cut off, it may still have queued the job, which the keeper then ends for
/// want of a window, and the next connection finds it by name.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Slurm {
    pub programs: Programs,
    /// How long a query (squeue, scontrol, scancel) may take.
    pub timeout: Duration,
}

impl Slurm {
    pub fn new(programs: Programs, timeout: Duration) -> Slurm {
        Slurm { programs, timeout }
    }

    /// squeue's stdout.
    pub async fn squeue<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String, SlurmError> {
        self.query(&self.programs.squeue, args).await
    }

    /// scontrol's stdout.
    pub async fn scontrol<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String, SlurmError> {
        self.query(&self.programs.scontrol, args).await
    }

    /// Cancels job `id`; the error says why it may still run.
    pub async fn scancel(&self, id: u32) -> Result<(), SlurmError> {
        tracing::info!("cancelling job {id}");
        self.query(&self.programs.scancel, &[id.to_string()]).await.map(|_| ())
    }

    /// Runs sbatch; its whole output, success or not, since its stderr
    /// carries what the user must read either way (a capped limit, a refusal).
    pub async fn sbatch<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output, SlurmError> {
        run(&self.programs.sbatch, args, SUBMIT_TIMEOUT).await
    }

    async fn query<S: AsRef<OsStr>>(&self, program: &Path, args: &[S]) -> Result<String, SlurmError> {
        query(program, args, self.timeout).await
    }
}

/// A query's stdout; a failed exit is an error carrying its stderr. Shared
/// with the HTCondor client, whose tools fail the same way.
pub(crate) async fn query<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    bound: Duration,
) -> Result<String, SlurmError> {
    let output = run(program, args, bound).await?;
    if !output.status.success() {
        let error = SlurmError::Failed {
            program: name(program),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        };
        tracing::info!("{error}");
        return Err(error);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) async fn run<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    bound: Duration,
) -> Result<Output, SlurmError> {
    run_with_input(program, args, None, bound).await
}

/// `input`, if any, is written to the program's stdin, which is then closed.
pub(crate) async fn run_with_input<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    input: Option<&[u8]>,
    bound: Duration,
) -> Result<Output, SlurmError> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Cut off at the bound, it must not live on unobserved.
        .kill_on_drop(true);
    let finished = async {
        let mut child = command.spawn()?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(input).await?;
        }
        child.wait_with_output().await
    };
    let error = match timeout(bound, finished).await {
        Ok(Ok(output)) => return Ok(output),
        Ok(Err(e)) => SlurmError::Start { program: name(program), error: e.to_string() },
        Err(_) => SlurmError::Timeout { program: name(program), after: bound },
    };
    tracing::info!("{error}");
    Err(error)
}

fn name(program: &Path) -> String {
    program.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn client(dir: &Path, script: &str, bound: Duration) -> Slurm {
        let path = dir.join("squeue");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let programs = Programs {
            squeue: path,
            sbatch: "/nonexistent/sbatch".into(),
            srun: "srun".into(),
            scancel: "scancel".into(),
            scontrol: "scontrol".into(),
        };
        Slurm::new(programs, bound)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vscode-slurm-common-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn every_failure_is_an_error_that_names_the_program() {
        let dir = temp_dir("errors");
        let ok = client(&dir, "echo 42", Duration::from_secs(5));
        assert_eq!(ok.squeue(&["-h"]).await, Ok("42\n".to_owned()));

        let refused =
            client(&dir, "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1", ok.timeout);
        let error = refused.squeue(&["-j", "9"]).await.unwrap_err();
        assert!(error.is_unknown_job(), "{error}");
        assert!(
            error.to_string().ends_with("failed: slurm_load_jobs error: Invalid job id specified"),
            "{error}"
        );

        let busy = client(&dir, "echo 'Socket timed out' >&2; exit 1", ok.timeout);
        let error = busy.squeue(&["-h"]).await.unwrap_err();
        assert!(!error.is_unknown_job(), "{error}");

        let stuck = client(&dir, "exec sleep 30", Duration::from_millis(200));
        let error = stuck.squeue(&["-h"]).await.unwrap_err();
        assert!(matches!(error, SlurmError::Timeout { .. }), "{error}");

        let missing = ok.sbatch(&["--wrap=true"]).await.unwrap_err();
        assert!(missing.to_string().starts_with("cannot run /nonexistent/sbatch: "), "{missing}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
