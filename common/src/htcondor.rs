//! The one way vscode-shim and the keeper ask HTCondor something, bounded in
//! time like the Slurm client next door, and failing the same way: an error
//! that names the program, never an empty answer read as "no job".

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use crate::slurm::{query, run_with_input, SlurmError};

/// The HTCondor client programs; hidden, like Slurm's, for tests.
#[derive(Debug, Clone, clap::Args)]
pub struct Programs {
    /// The condor_q program.
    #[arg(long, value_name = "PATH", default_value = "condor_q", hide = true)]
    pub condor_q: PathBuf,
    /// The condor_submit program.
    #[arg(long, value_name = "PATH", default_value = "condor_submit", hide = true)]
    pub condor_submit: PathBuf,
    /// The condor_rm program.
    #[arg(long, value_name = "PATH", default_value = "condor_rm", hide = true)]
    pub condor_rm: PathBuf,
    /// The condor_history program.
    #[arg(long, value_name = "PATH", default_value = "condor_history", hide = true)]
    pub condor_history: PathBuf,
    /// The condor_ssh_to_job program.
    #[arg(long, value_name = "PATH", default_value = "condor_ssh_to_job", hide = true)]
    pub condor_ssh_to_job: PathBuf,
}

/// Like Slurm's: a submission may wait on a busy schedd much longer than a query.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Condor {
    pub programs: Programs,
    /// How long a query (condor_q, condor_rm, condor_history) may take.
    pub timeout: Duration,
}

impl Condor {
    pub fn new(programs: Programs, timeout: Duration) -> Condor {
        Condor { programs, timeout }
    }

    /// condor_q's stdout.
    pub async fn q<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String, SlurmError> {
        self.query(&self.programs.condor_q, args).await
    }

    /// condor_history's stdout.
    pub async fn history<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String, SlurmError> {
        self.query(&self.programs.condor_history, args).await
    }

    /// Removes cluster `id`, saying why in the job's RemoveReason.
    pub async fn rm(&self, id: u32, reason: &str) -> Result<(), SlurmError> {
        tracing::info!("removing job {id}");
        self.query(&self.programs.condor_rm, &["-reason", reason, &id.to_string()]).await.map(|_| ())
    }

    /// Runs `condor_submit -terse -` with the description on its stdin; its
    /// whole output, since its stderr says what was wrong either way.
    pub async fn submit(&self, description: &str) -> Result<Output, SlurmError> {
        run_with_input(
            &self.programs.condor_submit,
            &["-terse", "-"],
            Some(description.as_bytes()),
            SUBMIT_TIMEOUT,
        )
        .await
    }

    async fn query<S: AsRef<OsStr>>(
        &self,
        program: &std::path::Path,
        args: &[S],
    ) -> Result<String, SlurmError> {
        query(program, args, self.timeout).await
    }
}

/// The cluster id in `condor_submit -terse`'s `12.0 - 12.0`.
pub fn parse_terse(stdout: &str) -> Option<u32> {
    stdout.trim().split(['.', ' ']).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terse_submissions_name_their_cluster() {
        assert_eq!(parse_terse("12.0 - 12.0\n"), Some(12));
        assert_eq!(parse_terse(""), None);
        assert_eq!(parse_terse("ERROR"), None);
    }
}
