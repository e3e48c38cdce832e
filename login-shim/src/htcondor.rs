//! The profile lifecycle on an HTCondor pool: the same windows, reattach,
//! linger and warnings as on Slurm, with HTCondor's own parts. The profile's
//! job is an editor job (vanilla universe) whose executable is the helper's
//! keeper, tagged with ClassAd attributes a site's policy can select
//! (`protocol::htcondor`). Each window runs the helper inside the job
//! through `condor_ssh_to_job` (stdio only, as `srun --overlap` is on
//! Slurm); that command passes no environment, so the session's secrets go
//! as the first line of the window's stdin.
//!
//! The server's door works as on Slurm: the helper opens it on the execute
//! point's own address, which the access point reaches (condor_ssh_to_job
//! itself connects there), and the relay proves the door key to it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::time::{sleep, Instant};
use vscode_slurm_common::htcondor::{parse_terse, Condor};
use vscode_slurm_common::logging;
use vscode_slurm_protocol::htcondor::{self as condor, JobStatus};
use vscode_slurm_protocol::{env, helper};

use crate::cli::SessionArgs;
use crate::job::{self, Secrets, Started};
use crate::profile::{self, Attempt, Found};
use crate::session::{shutdown_reason, Kind, Signals};

/// What a removal by the shim says in the job's RemoveReason.
const REMOVED_PENDING: &str = "vscode-shim: the session ended before its first window started";
const REMOVED_HELD: &str = "vscode-shim: the editor job was held";
const REMOVED_TWIN: &str = "vscode-shim: another window submitted the profile's job at the same time";

/// The user's words after `--`, each one submit command, checked before
/// anything is asked of HTCondor.
pub fn submit_commands(job_args: &[OsString]) -> Result<Vec<(String, String)>, String> {
    job_args
        .iter()
        .map(|arg| {
            let text = arg.to_str().ok_or_else(|| format!("{arg:?} after -- is not UTF-8"))?;
            condor::check_submit_command(text).map_err(|e| {
                format!(
                    "{e}; after -- come HTCondor submit commands, one per argument, e.g. 'request_cpus = 4'"
                )
            })
        })
        .collect()
}

/// Joins (or submits) the profile's editor job and starts this window in
/// it; returns once the helper's shell runs there.
pub async fn start_window(
    args: &SessionArgs,
    condor: &Condor,
    signals: &mut Signals,
    hangup: &mut oneshot::Receiver<()>,
    secrets: &Secrets,
    kind: Kind,
) -> Result<Started, String> {
    let commands = submit_commands(&args.job_args)?;
    let profile = profile::profile(args)?;
    let helper_path = absolute_helper(&args.helper)?;
    for _ in 0..profile::JOIN_TRIES {
        let (id, submitted) =
            join_or_submit(args, condor, &profile, &commands, &helper_path, signals, hangup).await?;
        let mut window = window_command(condor, id, &helper_path, kind)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", condor.programs.condor_ssh_to_job.display()))?;
        let line = session_line(secrets, kind);
        if let Some(stdin) = window.stdin.as_mut() {
            // A window that cannot take its first line has already failed,
            // and says why on stderr below.
            let _ = stdin.write_all(line.as_bytes()).await;
        }
        match profile::await_window(window, id, args, secrets, signals, hangup).await {
            Attempt::Started(started) => return Ok(*started),
            Attempt::Retry => {}
            Attempt::Stop(why) => {
                if submitted {
                    let _ = condor.rm(id, REMOVED_PENDING).await;
                }
                return Err(why);
            }
        }
    }
    Err(format!(
        "could not join a job of profile {profile} in {} tries; reconnect to try again",
        profile::JOIN_TRIES
    ))
}

/// The keeper runs where the job lands, without file transfer: HTCondor
/// needs its absolute path, the same on every node (as the site installs it).
fn absolute_helper(helper: &Path) -> Result<PathBuf, String> {
    let found = if helper.is_absolute() {
        helper.to_path_buf()
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(helper))
            .find(|candidate| candidate.is_absolute() && candidate.is_file())
            .ok_or_else(|| {
                format!("{} is not on this node's PATH; give --helper an absolute path", helper.display())
            })?
    };
    // It goes into the submit description as it is.
    let text = found.to_string_lossy();
    if text.contains(|c: char| c.is_control() || c.is_whitespace() || matches!(c, '$' | '"' | '\'' | '\\')) {
        return Err(format!(
            "the helper's path {text:?} holds characters a submit description would read; install it elsewhere"
        ));
    }
    Ok(found)
}

fn session_line(secrets: &Secrets, kind: Kind) -> String {
    let port = match kind {
        Kind::RemoteCommand { relay_port } => Some(relay_port.to_string()),
        Kind::Proxy => None,
    };
    let door_key = secrets.door_key.as_hex();
    let mut vars = vec![(env::NONCE, secrets.nonce.as_str()), (env::DOOR_KEY, door_key.as_str())];
    if let Some(port) = &port {
        vars.push((env::RELAY_PORT, port));
    }
    helper::session_line(&vars)
}

/// One window: the helper inside the job, through condor_ssh_to_job.
/// `-auto-retry` waits out the moment after a start when the starter's
/// address is not yet known.
fn window_command(condor: &Condor, id: u32, helper_path: &Path, kind: Kind) -> Command {
    let mut command = Command::new(&condor.programs.condor_ssh_to_job);
    command.arg("-auto-retry").arg(id.to_string()).arg(helper_path).arg(helper::SESSION_ON_STDIN);
    match kind {
        Kind::RemoteCommand { .. } => command.arg(helper::THROUGH_KEEPER),
        Kind::Proxy => command.arg(helper::SSHD),
    };
    // The secrets go on stdin; the environment stays the shim's own.
    job::piped_in_own_group(&mut command);
    command
}

/// The profile's idle or running job, else a new one; returns once it runs.
async fn join_or_submit(
    args: &SessionArgs,
    condor: &Condor,
    profile: &str,
    commands: &[(String, String)],
    helper_path: &Path,
    signals: &mut Signals,
    hangup: &mut oneshot::Receiver<()>,
) -> Result<(u32, bool), String> {
    let jobs = list(condor, profile).await.map_err(|e| {
        format!("cannot ask HTCondor for the job of profile {profile} ({e}); reconnect to try again")
    })?;
    let (mut id, mut submitted) = match profile::choose(&jobs) {
        Some(found) if found.running => {
            logging::progress(format_args!("joining job {} of profile {profile}", found.id));
            return Ok((found.id, false));
        }
        Some(found) => {
            logging::progress(format_args!("waiting with job {} of profile {profile}", found.id));
            (found.id, false)
        }
        None => {
            let id = submit(args, condor, profile, commands, helper_path).await?;
            tracing::info!("submitted job {id} for profile {profile}");
            (id, true)
        }
    };
    if submitted {
        if let Ok(jobs) = list(condor, profile).await {
            if let Some(older) = jobs.iter().map(|j| j.id).min().filter(|&older| older < id) {
                tracing::info!("job {older} of profile {profile} was submitted at the same time; joining it");
                let _ = condor.rm(id, REMOVED_TWIN).await;
                (id, submitted) = (older, false);
            }
        }
    }
    let why = tokio::select! {
        running = wait_running(args, condor, id) => return running.map(|()| (id, submitted)),
        code = signals.next() => shutdown_reason(code),
        _ = &mut *hangup => shutdown_reason(0),
    };
    if submitted {
        let _ = condor.rm(id, REMOVED_PENDING).await;
        Err(format!("{why}; job {id} was still idle and was removed"))
    } else {
        Err(format!("{why} while job {id} was idle; it is left to its other windows"))
    }
}

/// The name HTCondor knows this user by (the jobs' `Owner`).
pub fn user_name() -> Result<String, String> {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|user| user.name)
        .ok_or_else(|| format!("uid {uid} has no passwd entry on this node"))
}

/// The user's joinable editor jobs of this profile.
async fn list(condor: &Condor, profile: &str) -> Result<Vec<Found>, String> {
    let constraint = condor::profile_constraint(&user_name()?, profile);
    let out = condor
        .q(&["-constraint", &constraint, "-af", "ClusterId", "JobStatus"])
        .await
        .map_err(|e| e.to_string())?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let (id, status) = line.trim().split_once(' ')?;
            let status = JobStatus::from_code(status)?;
            status
                .joinable()
                .then(|| Some(Found { id: id.parse().ok()?, running: status == JobStatus::Running }))?
        })
        .collect())
}

/// The editor job's submit description: ours first, then the user's
/// commands (checked: none of them can override ours), then `queue`.
pub fn description(
    helper_path: &Path,
    warn_before: Option<&str>,
    linger: Option<Duration>,
    profile: &str,
    commands: &[(String, String)],
) -> String {
    let mut arguments = helper::KEEP.to_owned();
    if let Some(warn) = warn_before {
        arguments.push_str(&format!(" {}={warn}", helper::WARN_BEFORE));
    }
    let linger = linger.unwrap_or_default().as_secs();
    let mut text = format!(
        "universe = vanilla\n\
         executable = {helper}\n\
         transfer_executable = false\n\
         arguments = \"{arguments}\"\n\
         environment = \"{linger_var}={linger}\"\n\
         output = /dev/null\n\
         error = /dev/null\n\
         batch_name = {batch}\n\
         +{session} = True\n\
         +{profile_attr} = {profile_value}\n\
         +WantIOProxy = True\n",
        helper = helper_path.display(),
        linger_var = env::LINGER,
        batch = condor::batch_name(profile),
        session = condor::SESSION_ATTR,
        profile_attr = condor::PROFILE_ATTR,
        profile_value = condor::classad_string(profile),
    );
    for (name, value) in commands {
        text.push_str(&format!("{name} = {value}\n"));
    }
    text.push_str("queue\n");
    text
}

async fn submit(
    args: &SessionArgs,
    condor: &Condor,
    profile: &str,
    commands: &[(String, String)],
    helper_path: &Path,
) -> Result<u32, String> {
    let text = description(helper_path, args.warn_before.as_deref(), args.linger, profile, commands);
    let output = condor.submit(&text).await.map_err(|e| {
        format!("condor_submit could not submit the job: {e}; reconnect to try again (a job it queued is found then)")
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match (output.status.success(), parse_terse(&stdout)) {
        (true, Some(id)) => Ok(id),
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let why = stderr
                .lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix("ERROR: "))
                .or_else(|| stderr.lines().map(str::trim).find(|l| !l.is_empty()))
                .map_or_else(|| format!("condor_submit failed ({})", output.status), str::to_owned);
            Err(format!(
                "condor_submit refused the job: {why}; check the submit commands after -- in RemoteCommand"
            ))
        }
    }
}

/// How long a window whose channel ended waits for the schedd to say why.
const END_STATE_WAIT: Duration = Duration::from_secs(15);
const END_STATE_POLL: Duration = Duration::from_millis(250);

/// condor_q calls that may fail in a row before the session gives up.
const QUERY_TRIES: u32 = 3;

/// Waits until the job runs, saying every `--poll-interval` how long it has
/// been idle. A held job is removed (it would hold its slot request forever
/// and no window can use it) and its hold reason is the session's last line.
async fn wait_running(args: &SessionArgs, condor: &Condor, id: u32) -> Result<(), String> {
    let started = Instant::now();
    let every = args.poll_interval();
    let mut pause = profile::START_POLL;
    let mut next_report = started + every;
    let mut failed_in_a_row = 0;
    loop {
        match state(condor, id).await {
            Ok(Some((JobStatus::Running, _))) => return Ok(()),
            Ok(Some((JobStatus::Idle, _))) => {
                failed_in_a_row = 0;
                if Instant::now() >= next_report {
                    next_report += every;
                    let waited = job::format_waited(started.elapsed());
                    logging::progress(format_args!("job {id} is idle, waited {waited}"));
                }
            }
            Ok(Some((JobStatus::Held, reason))) => {
                let _ = condor.rm(id, REMOVED_HELD).await;
                return Err(format!(
                    "job {id} was held by HTCondor ({reason}) and has been removed; fix what the reason names and reconnect"
                ));
            }
            Ok(Some((status, reason))) => {
                return Err(format!(
                    "job {id} ended before a window could join it: {}{}; reconnect to start a new session",
                    status.word(),
                    if reason.is_empty() { String::new() } else { format!(" ({reason})") }
                ));
            }
            Ok(None) => {
                return Err(format!("job {id} is no longer in the queue; reconnect to start a new session"))
            }
            Err(e) => {
                failed_in_a_row += 1;
                if failed_in_a_row >= QUERY_TRIES {
                    return Err(format!(
                        "cannot ask HTCondor whether job {id} runs ({e}, {QUERY_TRIES} times); reconnect to try again"
                    ));
                }
            }
        }
        sleep(pause).await;
        pause = profile::next_pause(pause, started, every);
    }
}

/// The job's status and, for a held or removed job, why; `None` once it
/// has left the queue.
async fn state(
    condor: &Condor,
    id: u32,
) -> Result<Option<(JobStatus, String)>, vscode_slurm_common::slurm::SlurmError> {
    let out = condor.q(&[&id.to_string(), "-af:t", "JobStatus", "HoldReason", "RemoveReason"]).await?;
    Ok(out.lines().next().and_then(parse_state))
}

/// `condor_q -af:t JobStatus HoldReason RemoveReason` (tab-separated,
/// `undefined` for an attribute the job does not have).
fn parse_state(line: &str) -> Option<(JobStatus, String)> {
    let mut fields = line.trim_end_matches(['\n', '\r']).split('\t');
    let status = JobStatus::from_code(fields.next()?)?;
    let reasons: Vec<&str> = fields.map(str::trim).filter(|r| !r.is_empty() && *r != "undefined").collect();
    Some((status, reasons.join("; ")))
}

/// Why a window's condor_ssh_to_job ended, in one line: the job was removed,
/// held (then removed here), or completed; asked of the queue, then of
/// the history once the job has left it.
pub async fn explain_end(condor: &Condor, id: u32) -> String {
    // The window's channel ends as the starter goes, before the schedd has
    // recorded why (a hold, a removal): wait, bounded, for the job to leave
    // the running state.
    let deadline = Instant::now() + END_STATE_WAIT;
    let mut known = state(condor, id).await.ok().flatten();
    while matches!(known, Some((JobStatus::Running, _))) && Instant::now() < deadline {
        sleep(END_STATE_POLL).await;
        known = state(condor, id).await.ok().flatten();
    }
    if known.is_none() {
        let out = condor
            .history(&[&id.to_string(), "-limit", "1", "-af:t", "JobStatus", "HoldReason", "RemoveReason"])
            .await
            .unwrap_or_default();
        known = out.lines().next().and_then(parse_state);
    }
    match known {
        Some((JobStatus::Held, reason)) => {
            let _ = condor.rm(id, REMOVED_HELD).await;
            format!("job {id} was held by HTCondor ({reason}) and has been removed; reconnect to start a new session")
        }
        Some((JobStatus::Removed, reason)) => {
            let why = if reason.is_empty() { String::new() } else { format!(" ({reason})") };
            format!("job {id} was removed{why}; reconnect to start a new session")
        }
        Some((JobStatus::Completed, _)) => {
            format!("job {id} has ended (its keeper ended it, or its time ran out); reconnect to start a new session")
        }
        Some((status, _)) => format!(
            "the window's connection into job {id} ended while the job is {}; reconnect to open another",
            status.word()
        ),
        None => format!("job {id} is no longer known to HTCondor; reconnect to start a new session"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_has_ours_then_the_users_then_queue() {
        let commands = submit_commands(&["request_cpus = 2".into(), "+Site=\"x\"".into()]).unwrap();
        let text = description(
            Path::new("/usr/bin/vscode-job-helper"),
            Some("5m"),
            Some(Duration::from_secs(600)),
            "gpu",
            &commands,
        );
        assert!(text.starts_with("universe = vanilla\nexecutable = /usr/bin/vscode-job-helper\n"), "{text}");
        assert!(text.contains("arguments = \"keep --warn-before=5m\"\n"), "{text}");
        assert!(text.contains("environment = \"VSCODE_SLURM_LINGER=600\"\n"), "{text}");
        assert!(text.contains("+VSCodeSession = True\n+VSCodeProfile = \"gpu\"\n"), "{text}");
        assert!(text.ends_with("request_cpus = 2\n+Site = \"x\"\nqueue\n"), "{text}");
    }

    #[test]
    fn bad_commands_are_one_line_before_anything_runs() {
        let e = submit_commands(&["queue 3".into()]).unwrap_err();
        assert!(e.starts_with("'queue' is written by vscode-shim"), "{e}");
        assert!(e.contains("after -- come HTCondor submit commands"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn states_and_reasons() {
        assert_eq!(parse_state("2\tundefined\tundefined\n"), Some((JobStatus::Running, String::new())));
        assert_eq!(
            parse_state("5\tError from slot1@c1: no such file\tundefined"),
            Some((JobStatus::Held, "Error from slot1@c1: no such file".to_owned()))
        );
        assert_eq!(
            parse_state("3\tundefined\tvia condor_rm (by user alice)"),
            Some((JobStatus::Removed, "via condor_rm (by user alice)".to_owned()))
        );
        assert_eq!(parse_state(""), None);
    }
}
