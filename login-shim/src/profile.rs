//! The default lifecycle, a window in the profile's job. Jobs outlive a
//! window: one job per user and profile, found again by
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
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, Instant};
use vscode_slurm_common::logging;
use vscode_slurm_common::slurm::{Slurm, SlurmError};
use vscode_slurm_protocol::{helper, slurm, ControlFilter};

use crate::cli::SessionArgs;
use crate::job::{self, Secrets, Started};
use crate::session::{kill_group, shutdown_reason, Kind, Signals, REVOKED_GRACE};
use crate::streams;

/// Tries at joining a profile's job; one fails when the job ends between
/// being found and being joined.
pub const JOIN_TRIES: u32 = 3;
/// How often a window checks that its job still runs: one controller RPC
/// (`scontrol --local show job`) a minute per idle window. A node that fails
/// is noticed by the controller (SlurmdTimeout), then here within a minute.
const JOB_WATCH_INTERVAL: Duration = Duration::from_secs(60);
/// While a new job waits to start, its state is asked this often: the
/// controller allocates batch jobs on its own schedule and tells no one, so
/// the window must look (one RPC each), and a coarse poll would add up to
/// its interval to every start.
pub const START_POLL: Duration = Duration::from_millis(100);
/// How long the start is polled that often before backing off towards
/// `--poll-interval`: longer than the controller's batch scheduling delay
/// (`batch_sched_delay`, 3 s by default) on an idle cluster.
pub const START_POLL_FOR: Duration = Duration::from_secs(5);

/// Joins (or submits) the profile's job and starts this window's step in
/// it; returns once the helper's shell runs there, so VS Code's script is
/// only sent to a window that has its place.
pub async fn start_window(
    args: &SessionArgs,
    slurm: &Slurm,
    signals: &mut Signals,
    hangup: &mut oneshot::Receiver<()>,
    secrets: &Secrets,
    kind: Kind,
) -> Result<Started, String> {
    let profile = profile(args)?;
    for _ in 0..JOIN_TRIES {
        let (id, submitted) = join_or_submit(args, slurm, &profile, signals, hangup).await?;
        let step = step_command(args, id, &profile, secrets, kind)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", args.slurm.srun.display()))?;
        match await_window(step, id, args, secrets, signals, hangup).await {
            Attempt::Started(started) => return Ok(*started),
            Attempt::Retry => {}
            Attempt::Stop(why) => {
                if submitted {
                    let _ = slurm.scancel(id).await;
                }
                return Err(why);
            }
        }
    }
    Err(format!("could not join a job of profile {profile} in {JOIN_TRIES} tries; reconnect to try again"))
}

/// How one try at a window ended.
pub enum Attempt {
    Started(Box<Started>),
    /// The job ended between being found and being joined: try again.
    Retry,
    /// The session is over before it started; the line to say.
    Stop(String),
}

/// Waits for the window's helper to say it runs (whichever scheduler
/// command started it), or for the user to give up.
pub async fn await_window(
    mut step: Child,
    id: u32,
    args: &SessionArgs,
    secrets: &Secrets,
    signals: &mut Signals,
    hangup: &mut oneshot::Receiver<()>,
) -> Attempt {
    let mut filter = ControlFilter::new(secrets.nonce.clone());
    let Some(stdout) = step.stdout.as_mut() else { unreachable!("window commands pipe stdout") };
    let stop = tokio::select! {
        ready = timeout(args.connect_wait(), streams::wait_ready(stdout, &mut filter)) => match ready {
            Ok(Some(early)) => return Attempt::Started(Box::new(Started { child: step, joined: Some(id), filter, early })),
            Ok(None) => None,
            Err(_) => Some(format!(
                "job {id} did not start the window within {}s (--connect-wait); reconnect to try again",
                args.connect_wait
            )),
        },
        code = signals.next() => Some(shutdown_reason(code)),
        _ = &mut *hangup => Some(shutdown_reason(0)),
    };
    if let Some(why) = stop {
        let _ = step.start_kill();
        return Attempt::Stop(why);
    }
    let _ = step.wait().await;
    let said = read_all_stderr(&mut step).await;
    tracing::info!("job {id} did not take the window ({said}); trying again");
    Attempt::Retry
}

/// The step's own words on why it did not start, for the log.
async fn read_all_stderr(step: &mut Child) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    if let Some(stderr) = step.stderr.as_mut() {
        let _ = timeout(Duration::from_secs(2), stderr.read_to_string(&mut text)).await;
    }
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" / ")
}

/// The profile's running (or pending) job, else a new one; returns once it
/// runs, and whether we submitted it. A job we submitted ourselves is
/// cancelled if VS Code goes away while it still waits.
async fn join_or_submit(
    args: &SessionArgs,
    slurm: &Slurm,
    profile: &str,
    signals: &mut Signals,
    hangup: &mut oneshot::Receiver<()>,
) -> Result<(u32, bool), String> {
    let (mut id, mut submitted) = match find(slurm, profile).await? {
        // Found running: joined at once, without asking again.
        Some(found) if found.running => {
            logging::progress(format_args!("joining job {} of profile {profile}", found.id));
            return Ok((found.id, false));
        }
        Some(found) => {
            logging::progress(format_args!("waiting with job {} of profile {profile}", found.id));
            (found.id, false)
        }
        None => {
            let id = submit(args, slurm, profile).await?;
            tracing::info!("submitted job {id} for profile {profile}");
            (id, true)
        }
    };
    if submitted {
        match oldest(slurm, profile).await {
            Ok(Some(older)) if older < id => {
                tracing::info!("job {older} of profile {profile} was submitted at the same time; joining it");
                let _ = slurm.scancel(id).await;
                (id, submitted) = (older, false);
            }
            Ok(_) => {}
            // Keeping our own job is safe: the other one's keeper ends it
            // for want of a window.
            Err(e) => {
                tracing::info!("cannot look for a job submitted at the same time ({e}); keeping job {id}")
            }
        }
    }
    let why = tokio::select! {
        running = wait_running(args, slurm, id) => return running.map(|()| (id, submitted)),
        code = signals.next() => shutdown_reason(code),
        _ = &mut *hangup => shutdown_reason(0),
    };
    if submitted {
        let _ = slurm.scancel(id).await;
        Err(format!("{why}; job {id} was still pending and was cancelled"))
    } else {
        Err(format!("{why} while job {id} was pending; it is left to its other windows"))
    }
}

/// A window's srun is not told when its job is lost with its node (salloc
/// is, as "revoked"): it waits on a step that can no longer answer. So the
/// job's state is looked at now and then (Slurm has no event for a login
/// node to wait on), and once it is no longer running the window's srun is
/// ended. The answer resolves before the srun is ended, so its death by our
/// signal is read as the job's end, not as a fault of its own.
pub fn end_window_of_lost_job(id: u32, slurm: Slurm, srun_group: Option<i32>) -> oneshot::Receiver<()> {
    let (lost_tx, lost) = oneshot::channel();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(JOB_WATCH_INTERVAL).await;
            let state = match job_state(&slurm, id).await {
                Ok(Some((state, _))) => state,
                Ok(None) => String::new(),
                Err(e) if e.is_unknown_job() => String::new(),
                // A busy controller is not a lost job: ask again next time.
                Err(_) => continue,
            };
            if state == "RUNNING" {
                continue;
            }
            let state = if state.is_empty() { "gone" } else { state.as_str() };
            tracing::info!("job {id} is {state}; ending this window's srun");
            let _ = lost_tx.send(());
            tokio::time::sleep(REVOKED_GRACE).await;
            kill_group(srun_group);
            return;
        }
    });
    lost
}

/// Profile names go into job names and command lines.
const MAX_PROFILE: usize = 40;

/// The profile a session belongs to: the user's `--profile`, or one derived
/// from the salloc arguments, so one ssh host entry always maps to one job.
pub fn profile(args: &SessionArgs) -> Result<String, String> {
    match &args.profile {
        Some(name) => check_profile(name).map(|()| name.clone()),
        None => Ok(derived_profile(&args.job_args)),
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
    choose(&joinable(output))
}

/// The job a window joins among a profile's joinable jobs, whatever the scheduler.
pub fn choose(jobs: &[Found]) -> Option<Found> {
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
pub async fn find(slurm: &Slurm, profile: &str) -> Result<Option<Found>, String> {
    match list(slurm, profile).await {
        Ok(output) => Ok(pick(&output)),
        Err(e) => {
            Err(format!("cannot ask Slurm for the job of profile {profile} ({e}); reconnect to try again"))
        }
    }
}

/// Two windows opened at once (on one login node or two) may both have
/// submitted a job: the oldest is the one both should join.
pub async fn oldest(slurm: &Slurm, profile: &str) -> Result<Option<u32>, SlurmError> {
    Ok(joinable(&list(slurm, profile).await?).iter().map(|j| j.id).min())
}

async fn list(slurm: &Slurm, profile: &str) -> Result<String, SlurmError> {
    let name = job_name(profile);
    slurm.squeue(&["--me", "-h", "-t", "RUNNING,PENDING", "-n", &name, "-o", "%i|%T"]).await
}

/// Submits the profile's job; its id, or the one line to show.
pub async fn submit(args: &SessionArgs, slurm: &Slurm, profile: &str) -> Result<u32, String> {
    let mut keep = format!("exec {} {}", shell_quote(&args.helper.to_string_lossy()), helper::KEEP);
    if let Some(warn) = &args.warn_before {
        keep.push_str(&format!(" {}={}", helper::WARN_BEFORE, shell_quote(warn)));
    }
    let mut sbatch_args: Vec<OsString> = [
        "--parsable",
        &slurm::option_flag(),
        // Requeued after a node failure, the job would come back without
        // its server, and pending windows would wait for it: never.
        "--no-requeue",
        "--output=/dev/null",
        "--error=/dev/null",
        &format!("--job-name={}", job_name(profile)),
    ]
    .map(OsString::from)
    .into();
    if let Some(linger) = args.linger {
        sbatch_args.push(slurm::linger_flag(linger).into());
    }
    sbatch_args.extend(args.job_args.iter().cloned());
    sbatch_args.push(format!("--wrap={keep}").into());
    let output = slurm.sbatch(&sbatch_args).await.map_err(|e| {
        format!(
            "sbatch could not submit the job: {e}; reconnect to try again (a job it queued is found then)"
        )
    })?;
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

/// squeue calls that may fail in a row before the session gives up on a
/// pending job.
const SQUEUE_TRIES: u32 = 3;

/// Waits until the job runs, saying how long it has waited every
/// `report_every`. There is no event to wait on from here: the controller
/// is asked, soon at first, then at most every `report_every`.
pub async fn wait_running(args: &SessionArgs, slurm: &Slurm, id: u32) -> Result<(), String> {
    let started = Instant::now();
    let every = args.poll_interval();
    let mut pause = START_POLL;
    let mut next_report = started + every;
    // One failed squeue (a busy controller) is not the job's end; only
    // several in a row end the wait.
    let mut failed_in_a_row = 0;
    loop {
        let state = match job_state(slurm, id).await {
            Ok(state) => {
                failed_in_a_row = 0;
                state
            }
            // squeue's answer for a job the controller has forgotten.
            Err(e) if e.is_unknown_job() => None,
            Err(e) => {
                failed_in_a_row += 1;
                if failed_in_a_row >= SQUEUE_TRIES {
                    return Err(format!(
                        "cannot ask Slurm whether job {id} runs ({e}, {SQUEUE_TRIES} times); reconnect to try again"
                    ));
                }
                sleep(pause).await;
                pause = next_pause(pause, started, every);
                continue;
            }
        };
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
        pause = next_pause(pause, started, every);
    }
}

/// Often while a start is likely soon, then backing off to `every`.
pub fn next_pause(pause: Duration, started: Instant, every: Duration) -> Duration {
    if started.elapsed() < START_POLL_FOR {
        START_POLL
    } else {
        (pause * 2).min(every)
    }
}

/// The job's state and reason in one controller RPC: `--local` spares the
/// federation lookup squeue and a plain scontrol make first.
async fn job_state(slurm: &Slurm, id: u32) -> Result<Option<(String, String)>, SlurmError> {
    let output = slurm.scontrol(&["--local", "-o", "show", "job", &id.to_string()]).await?;
    Ok(job::parse_scontrol(&output).map(|end| (end.state, end.reason)))
}

/// One window: a step in the job running the helper, which has the keeper
/// start the launch script (or, for a proxy window, the node's sshd).
pub fn step_command(args: &SessionArgs, id: u32, profile: &str, secrets: &Secrets, kind: Kind) -> Command {
    let mut command = Command::new(&args.slurm.srun);
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
        .arg(slurm::UNBUFFERED)
        .arg(&args.helper);
    let relay_port = match kind {
        Kind::RemoteCommand { relay_port } => {
            command.arg(helper::THROUGH_KEEPER);
            Some(relay_port)
        }
        Kind::Proxy => {
            command.arg(helper::SSHD);
            None
        }
    };
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
