//! Jobs that outlive a window: one job per user and profile, found again by
//! its name (`vscode:PROFILE`) from any login node, because the state lives
//! in Slurm and not here.
//!
//! The job is submitted with `sbatch`, so no process on the login node holds
//! it: its batch script is the helper's keeper (see the helper's `keeper`
//! module), which ends the job once no window has been attached for the
//! linger time. Each window is a step of its own in that job (`srun
//! --overlap`), whose helper has the keeper start the launch script; the
//! server the script starts thus lives in the keeper's step and is there for
//! the next window.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::{sleep, Instant};
use vscode_slurm_protocol::slurm;

use crate::cli::Cli;
use crate::job;
use crate::logging;

/// Profile names go into job names and command lines.
const MAX_PROFILE: usize = 40;

/// The profile a session belongs to: the user's `--profile`, or one derived
/// from the salloc arguments, so one ssh host entry always maps to one job.
pub fn profile(cli: &Cli) -> Result<String, String> {
    match &cli.profile {
        Some(name) => check_profile(name).map(|()| name.clone()),
        None => Ok(derived_profile(&cli.salloc_args)),
    }
}

pub fn check_profile(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= MAX_PROFILE
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with(['-', '.']);
    if fine {
        Ok(())
    } else {
        Err(format!(
            "--profile '{name}' is not a usable name: use up to {MAX_PROFILE} letters, digits, '-', '_' or '.', \
             e.g. --profile gpu"
        ))
    }
}

/// `default` without arguments, else `args-` and a stable hash of them.
pub fn derived_profile(args: &[OsString]) -> String {
    if args.is_empty() {
        return "default".to_owned();
    }
    // FNV-1a: stable across releases and machines, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for arg in args {
        for &byte in arg.as_encoded_bytes().iter().chain(&[0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("args-{:08x}", hash >> 32)
}

/// `vscode:PROFILE`: `squeue --me` shows the jobs as sessions, and admins
/// select them with `squeue --name`.
pub fn job_name(profile: &str) -> String {
    slurm::job_name(profile)
}

/// A job of ours for this profile that a window can join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: u32,
    pub running: bool,
}

/// `squeue --me -o '%i|%T'` for the profile's name: a running job first,
/// else one still pending (another window submitted it). Anything ending or
/// ended is never joined.
pub fn pick(output: &str) -> Option<Found> {
    let jobs = joinable(output);
    jobs.iter()
        .filter(|j| j.running)
        .max_by_key(|j| j.id)
        .or_else(|| jobs.iter().max_by_key(|j| j.id))
        .cloned()
}

/// Every running or pending job in `squeue -o '%i|%T'` output.
pub fn joinable(output: &str) -> Vec<Found> {
    output
        .lines()
        .filter_map(|line| {
            let (id, state) = line.trim().split_once('|')?;
            let id = id.parse().ok()?;
            match state {
                "RUNNING" => Some(Found { id, running: true }),
                "PENDING" => Some(Found { id, running: false }),
                _ => None,
            }
        })
        .collect()
}

/// The profile's joinable job, if any. A failed or silent squeue is an
/// error, not "no job": reading it as one would submit a second job.
pub async fn find(cli: &Cli, profile: &str) -> Result<Option<Found>, String> {
    match list(cli, profile).await {
        Some(output) => Ok(pick(&output)),
        None => Err(format!(
            "cannot ask Slurm for the job of profile {profile} (squeue failed or did not answer); \
             reconnect to try again"
        )),
    }
}

/// Two windows opened at once (on one login node or two) may both have
/// submitted a job: the oldest is the one both should join.
pub async fn oldest(cli: &Cli, profile: &str) -> Option<u32> {
    joinable(&list(cli, profile).await?).iter().map(|j| j.id).min()
}

async fn list(cli: &Cli, profile: &str) -> Option<String> {
    let name = job_name(profile);
    job::run_slurm_command(&cli.squeue, ["--me", "-h", "-t", "RUNNING,PENDING", "-n", &name, "-o", "%i|%T"])
        .await
}

/// Submits the profile's job; its id, or the one line to show.
pub async fn submit(cli: &Cli, profile: &str) -> Result<u32, String> {
    let mut keep = format!("exec {} keep", shell_quote(&cli.helper.to_string_lossy()));
    if let Some(warn) = &cli.warn_before {
        keep.push_str(&format!(" --warn-before={}", shell_quote(warn)));
    }
    let mut command = Command::new(&cli.sbatch);
    command
        // Requeued after a node failure, the job would come back without
        // its server, and pending windows would wait for it: never.
        .args([
            "--parsable",
            &slurm::option_flag(),
            "--no-requeue",
            "--output=/dev/null",
            "--error=/dev/null",
        ])
        .arg(format!("--job-name={}", job_name(profile)));
    if let Some(linger) = cli.linger {
        command.arg(slurm::linger_flag(linger));
    }
    command
        .args(&cli.salloc_args)
        .arg(format!("--wrap={keep}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = command.output().await.map_err(|e| format!("cannot run {}: {e}", cli.sbatch.display()))?;
    // sbatch's own lines (a capped --linger, say) are for the user.
    logging::write_stderr(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let id = stdout.trim().split(';').next().and_then(|id| id.parse().ok());
    match (output.status.success(), id) {
        (true, Some(id)) => Ok(id),
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let why = lines
                .iter()
                .rev()
                .find_map(|l| l.strip_prefix("sbatch: error: "))
                .or_else(|| lines.last().map(|l| l.strip_prefix("sbatch: ").unwrap_or(l)))
                .map_or_else(|| format!("sbatch failed ({})", output.status), str::to_owned);
            Err(format!("sbatch could not submit the job: {why}; check the salloc arguments after -- in RemoteCommand"))
        }
    }
}

/// squeue calls that may fail in a row before a pending job counts as gone.
const SQUEUE_TRIES: u32 = 3;

/// Waits until the job runs, saying how long it has waited every
/// `report_every`. There is no event to wait on from here: the controller
/// is asked, soon at first, then at most every `report_every`.
pub async fn wait_running(cli: &Cli, id: u32) -> Result<(), String> {
    let started = Instant::now();
    let every = cli.poll_interval();
    let mut pause = Duration::from_millis(200);
    let mut next_report = started + every;
    // One failed squeue (a busy controller) is not the job's end; only
    // several in a row are taken as "no longer known" (squeue also fails
    // for a job the controller has forgotten).
    let mut failed_in_a_row = 0;
    loop {
        let output = job::run_slurm_command(&cli.squeue, ["-h", "-j", &id.to_string(), "-o", "%T|%r"]).await;
        failed_in_a_row = if output.is_some() { 0 } else { failed_in_a_row + 1 };
        if output.is_none() && failed_in_a_row < SQUEUE_TRIES {
            sleep(pause).await;
            pause = (pause * 2).min(every);
            continue;
        }
        let state = output.and_then(|out| job::parse_squeue(&out));
        match state {
            Some((state, _)) if state == "RUNNING" => return Ok(()),
            Some((state, reason)) if state == "PENDING" || state == "CONFIGURING" => {
                if Instant::now() >= next_report {
                    next_report += every;
                    let waited = job::format_waited(started.elapsed());
                    logging::progress(format_args!("job {id} is pending (reason: {reason}), waited {waited}"));
                }
            }
            Some((state, reason)) => {
                return Err(format!(
                    "job {id} ended before a window could join it: {state} (Slurm reason: {reason}); reconnect to start a new session"
                ))
            }
            None => return Err(format!("job {id} is no longer known to Slurm; reconnect to start a new session")),
        }
        sleep(pause).await;
        pause = (pause * 2).min(every);
    }
}

/// One window: a step in the job running the helper, which has the keeper
/// start the launch script.
pub fn step_command(cli: &Cli, id: u32, profile: &str, secrets: &job::Secrets, relay_port: u16) -> Command {
    let mut command = Command::new(&cli.srun);
    command
        .arg(format!("--jobid={id}"))
        .args([
            "--overlap",
            &slurm::option_flag(),
            "--export=ALL",
            "--nodes=1",
            "--ntasks=1",
            "--kill-on-bad-exit=1",
        ])
        .arg(format!("--job-name={}", job_name(profile)))
        .arg(&cli.helper)
        .arg("--through-keeper");
    job::with_session_streams(&mut command, secrets, relay_port);
    command
}

/// For the batch script, which sbatch runs with /bin/sh.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_checked_and_derived_stably() {
        for good in ["gpu", "a100-long", "x.y_z", "A1"] {
            assert!(check_profile(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "ä", &"x".repeat(41), "a;rm"] {
            let e = check_profile(bad).unwrap_err();
            assert!(e.starts_with(&format!("--profile '{bad}' is not a usable name")), "{e}");
        }
        assert_eq!(derived_profile(&[]), "default");
        let a = derived_profile(&["--time=10".into(), "--partition=gpu".into()]);
        assert_eq!(a, derived_profile(&["--time=10".into(), "--partition=gpu".into()]));
        assert_ne!(a, derived_profile(&["--time=10".into()]));
        assert_ne!(derived_profile(&["ab".into(), "c".into()]), derived_profile(&["a".into(), "bc".into()]));
        assert!(a.starts_with("args-") && a.len() == 13, "{a}");
        assert!(check_profile(&a).is_ok());
    }

    #[test]
    fn a_running_job_is_joined_before_a_pending_one_and_ending_ones_never() {
        assert_eq!(pick("12|PENDING\n9|RUNNING\n"), Some(Found { id: 9, running: true }));
        assert_eq!(pick("12|PENDING\n"), Some(Found { id: 12, running: false }));
        assert_eq!(pick("7|COMPLETING\n8|CANCELLED\n"), None);
        assert_eq!(pick(""), None);
        assert_eq!(pick("garbage\n"), None);
    }

    #[test]
    fn batch_script_words_are_quoted() {
        assert_eq!(shell_quote("/usr/bin/vscode-job-helper"), "'/usr/bin/vscode-job-helper'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
