//! Remote context (slurmstepd on the compute node): the job-scoped runtime
//! directory and the variables that tell the job helper where to bind and
//! where to keep its files.
//!
//! This runs from `init_post_opt`, not `user_init`: slurmstepd has already
//! dropped its effective uid to the user's when `user_init` runs, and creating
//! the root-owned base directory and mounting the job's tmpfs both need root.
//! `init_post_opt` runs as root, once per step on each node, after the step's
//! options are known and before any task starts, so what is set here reaches
//! every task. Every step of the job comes through here, possibly several at
//! once, so each action is idempotent (see `runtime`).

use std::time::Duration;

use slurm_spank::{spank_log, LogLevel, SpankHandle};
use vscode_slurm_protocol::env;

use crate::bind;
use crate::config::Config;
use crate::failure::Failure;
use crate::runtime::{Base, Missing};

/// Runs for each step started with `--vscode`; an error fails the step.
pub fn prepare_step(spank: &SpankHandle, config: &Config, linger: Duration) -> Result<(), Failure> {
    let item_error = |what: &str, e: &dyn std::fmt::Display| {
        Failure::new(format!("vscode: cannot read the job's {what} from Slurm: {e}"))
    };
    let job_id = spank.job_id().map_err(|e| item_error("id", &e))?;
    let uid = spank.job_uid().map_err(|e| item_error("uid", &e))?;
    let gid = spank.job_gid().map_err(|e| item_error("gid", &e))?;

    // Resolve first: a misconfigured bind= should not leave directories behind.
    let chosen = bind::resolve(&config.bind)?;
    let base = Base::open(&config.runtime_dir, Missing::Create)?.ok_or_else(|| {
        Failure::new(format!(
            "vscode: runtime_dir={} could not be created; create it (root-owned, mode 0755)",
            config.runtime_dir.display()
        ))
    })?;
    let limits = config.runtime_limits();
    let job_dir = base.ensure_job(job_id, uid, gid, limits)?;

    let set = |name: &str, value: &std::ffi::OsStr| {
        spank.setenv(name, value, true).map_err(|e| {
            Failure::new(format!("vscode: job {job_id}: cannot set {name} in the step's environment: {e}"))
        })
    };
    set(env::BIND_ADDR, chosen.addr.to_string().as_ref())?;
    set(env::RUNTIME_DIR, job_dir.as_os_str())?;
    set(env::LINGER, linger.as_secs().to_string().as_ref())?;
    // env::JOB_END is not set: Slurm 22.05 gives plugins no end time (no
    // spank item, no SLURM_JOB_END_TIME), and asking slurmctld from every step
    // would cost an RPC per step.

    spank_log(
        LogLevel::Info,
        &format!(
            "vscode: job {job_id}: doors listen on {} ({}); runtime dir {} ({limits})",
            chosen.addr,
            chosen.source,
            job_dir.display()
        ),
    );
    Ok(())
}
