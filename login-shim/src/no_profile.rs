//! `--no-profile`: the older lifecycle, one job per connection. salloc holds
//! the allocation and runs the helper as the job's single task; the job is
//! never joined by another window and never lingers. Everything else about
//! the session (pipes, relay, the end) is the same as a window's.

use tokio::process::Command;
use vscode_slurm_common::slurm::Slurm;
use vscode_slurm_protocol::{slurm, ControlFilter};

use crate::cli::SessionArgs;
use crate::job::{self, Secrets, Started};

/// Starts salloc; the job's id and state then come from its stderr.
pub fn start(args: &SessionArgs, secrets: &Secrets, relay_port: u16) -> Result<Started, String> {
    let child = salloc_command(args, secrets, relay_port)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", args.salloc.display()))?;
    Ok(Started { child, joined: None, filter: ControlFilter::new(secrets.nonce.clone()), early: vec![] })
}

/// `--export=ALL` because the launch script needs the user's normal
/// environment (HOME above all), whatever the site's default is.
fn salloc_command(args: &SessionArgs, secrets: &Secrets, relay_port: u16) -> Command {
    let mut command = Command::new(&args.salloc);
    command
        .arg(slurm::option_flag())
        .arg(format!("--job-name={}", args.job_name))
        .args(&args.job_args)
        .args(["srun", "--export=ALL", "--nodes=1", "--ntasks=1", "--kill-on-bad-exit=1", slurm::UNBUFFERED])
        .arg(&args.helper);
    job::with_session_streams(&mut command, secrets, Some(relay_port));
    command
}

/// salloc gives its allocation back when it leaves by itself; killed, it
/// cannot, and the job would run on with nobody attached to it.
pub async fn cancel_after_salloc_killed(slurm: &Slurm, id: u32, signal: i32) {
    let _ = slurm.scancel(id).await;
    tracing::error!(
        "salloc for job {id} was killed by signal {signal}; the job was cancelled so that nothing keeps \
         running; reconnect to start a new session"
    );
}
