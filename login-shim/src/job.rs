//! What both lifecycles share on the Slurm side: the session's secrets and
//! pipes, following the job's state through its srun's or salloc's stderr,
//! and explaining its end in terms the VS Code user can act on.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use vscode_slurm_common::logging;
use vscode_slurm_common::slurm::Slurm;
use vscode_slurm_protocol::door::DoorKey;
use vscode_slurm_protocol::{env, ControlFilter, Nonce, Piece};

/// Longer stderr lines are forwarded in pieces; the bound keeps memory flat.
const MAX_STDERR_LINE: usize = 8192;
/// How long the controller gets to move a job past COMPLETING before its
/// end is explained from what is known.
const END_STATE_WAIT: Duration = Duration::from_secs(5);

/// What either way of starting leaves running: the Slurm child (the
/// window's srun, or salloc) with piped stdio, and what it said so far.
pub struct Started {
    pub child: Child,
    /// With a profile: the job the window joined, already running.
    pub joined: Option<u32>,
    /// The window's output so far (with a profile, read up to the helper's
    /// ready line), and the filter that read it.
    pub filter: ControlFilter,
    pub early: Vec<Piece>,
}

/// What the child's stderr has told us so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobStatus {
    pub id: Option<u32>,
    pub granted: bool,
    pub last_error: Option<String>,
    /// The end state named in a `*** JOB N ON node CANCELLED AT ... ***`
    /// line, for when the controller no longer says.
    pub end_hint: Option<&'static str>,
    pub revoked: bool,
    /// The session is a window (an srun step) in a profile's job, not a
    /// salloc job of its own.
    pub window: bool,
}

/// A line of salloc's or srun's stderr that says something about the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StderrEvent {
    Pending(u32),
    Granted(u32),
    Error(String),
    EndHint(&'static str),
    /// The controller took the allocation back (node failure, cancel):
    /// salloc may still wait for an srun that can no longer end by itself.
    Revoked,
}

/// What only this shim and its window's helper know. Both travel in the
/// step's environment (readable by the user and root only), never on a
/// command line.
pub struct Secrets {
    /// Marks our control lines in the step's output.
    pub nonce: Nonce,
    /// Proves the relay and the door to each other.
    pub door_key: std::sync::Arc<DoorKey>,
}

impl Secrets {
    pub fn generate() -> Result<Secrets, String> {
        let nonce = Nonce::generate().map_err(|e| format!("cannot make the session nonce: {e}"))?;
        let door_key = DoorKey::generate().map_err(|e| format!("cannot make the door key: {e}"))?;
        Ok(Secrets { nonce, door_key: std::sync::Arc::new(door_key) })
    }
}

/// What the helper's step needs from us, whichever command starts it: the
/// session in its environment, and our own pipes. A proxy window has no
/// relay, so no relay port.
pub fn with_session_streams(command: &mut Command, secrets: &Secrets, relay_port: Option<u16>) {
    if let Some(port) = relay_port {
        command.env(env::RELAY_PORT, port.to_string());
    }
    command.env(env::NONCE, secrets.nonce.as_str()).env(env::DOOR_KEY, secrets.door_key.as_hex());
    piped_in_own_group(command);
}

/// The session's child with our own pipes, in a group of its own.
pub fn piped_in_own_group(command: &mut Command) {
    command
        // A group of its own, so salloc (or srun) and its children can be
        // ended together when the job is lost but they wait on a dead node.
        .process_group(0)
        // Our own pipes, never inherited descriptors: if the shim dies, the
        // helper sees EOF on stdin and the session ends with it.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

pub fn parse_stderr_line(line: &str) -> Option<StderrEvent> {
    if let Some(hint) = end_hint(line) {
        return Some(StderrEvent::EndHint(hint));
    }
    let line = line.trim_end();
    // A window's srun says what salloc would when the allocation is lost.
    if let Some(rest) = line.strip_prefix("srun: ") {
        if rest.starts_with("error: Node failure on ") {
            return Some(StderrEvent::EndHint("NODE_FAIL"));
        }
        return (rest.starts_with("Job allocation ") && rest.ends_with(" has been revoked."))
            .then_some(StderrEvent::Revoked);
    }
    let rest = line.strip_prefix("salloc: ")?;
    if rest.starts_with("error: Node failure on ") {
        return Some(StderrEvent::EndHint("NODE_FAIL"));
    }
    if rest.starts_with("Job allocation ") && rest.ends_with(" has been revoked.") {
        return Some(StderrEvent::Revoked);
    }
    if let Some(error) = rest.strip_prefix("error: ") {
        return Some(StderrEvent::Error(error.trim().to_owned()));
    }
    if let Some(id) = rest.strip_prefix("Pending job allocation ") {
        return id.parse().ok().map(StderrEvent::Pending);
    }
    if let Some(id) = rest.strip_prefix("Granted job allocation ") {
        return id.parse().ok().map(StderrEvent::Granted);
    }
    let (id, tail) = rest.strip_prefix("job ")?.split_once(' ')?;
    let id = id.parse().ok()?;
    match tail {
        "queued and waiting for resources" => Some(StderrEvent::Pending(id)),
        "has been allocated resources" => Some(StderrEvent::Granted(id)),
        _ => None,
    }
}

/// slurmstepd's `*** JOB 42 ON c1 CANCELLED AT 2024-05-01T10:00:00 DUE TO TIME LIMIT ***`,
/// relayed by srun, names the cause even when the job record is gone.
fn end_hint(line: &str) -> Option<&'static str> {
    let start = line.find("*** JOB ").or_else(|| line.find("*** STEP "))?;
    let banner = &line[start..];
    if !banner.contains(" CANCELLED AT ") {
        return None;
    }
    Some(if banner.contains("DUE TO TIME LIMIT") {
        "TIMEOUT"
    } else if banner.contains("DUE TO NODE FAILURE") {
        "NODE_FAIL"
    } else if banner.contains("DUE TO PREEMPTION") {
        "PREEMPTED"
    } else {
        "CANCELLED"
    })
}

fn apply(status: &mut JobStatus, event: StderrEvent) {
    match event {
        StderrEvent::Pending(id) => status.id = Some(id),
        StderrEvent::Granted(id) => {
            status.id = Some(id);
            status.granted = true;
        }
        StderrEvent::Error(text) => status.last_error = Some(text),
        StderrEvent::EndHint(state) => status.end_hint = Some(state),
        StderrEvent::Revoked => status.revoked = true,
    }
}

/// Forwards the child's stderr (which also carries the helper's)
/// line by line, learning the job's id and state on the way.
pub async fn follow_stderr(stderr: ChildStderr, status: watch::Sender<JobStatus>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_bounded(&mut reader, &mut line, MAX_STDERR_LINE).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("reading the job's stderr: {e}");
                return;
            }
        }
        logging::write_stderr(&line);
        if let Some(event) = parse_stderr_line(&String::from_utf8_lossy(&line)) {
            tracing::debug!("from the job's stderr: {event:?}");
            status.send_if_modified(|s| {
                let before = s.clone();
                apply(s, event);
                *s != before
            });
        }
    }
}

/// Like `read_until(b'\n')` but stops after `max` bytes, newline or not.
async fn read_line_bounded<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    while line.len() < max {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            break;
        }
        let room = max - line.len();
        let take = match available.iter().take(room).position(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None => available.len().min(room),
        };
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if line.last() == Some(&b'\n') {
            break;
        }
    }
    Ok(line.len())
}

/// While the job waits in the queue nothing reaches VS Code, so stderr is
/// the only sign of life the user gets.
pub async fn report_progress(mut status: watch::Receiver<JobStatus>, slurm: &Slurm, every: Duration) {
    let started = Instant::now();
    let mut ticks = tokio::time::interval_at(started + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            changed = status.changed() => {
                if changed.is_err() || status.borrow_and_update().granted {
                    return;
                }
                continue;
            }
        }
        let current = status.borrow().clone();
        if current.granted {
            return;
        }
        let waited = format_waited(started.elapsed());
        let Some(id) = current.id else {
            logging::progress(format_args!("waiting for salloc to submit the job, waited {waited}"));
            continue;
        };
        let state = slurm
            .squeue(&["-h", "-j", &id.to_string(), "-o", "%T|%r"])
            .await
            .ok()
            .and_then(|out| parse_squeue(&out));
        match state {
            Some((state, _)) if state == "RUNNING" => return,
            Some((state, reason)) => logging::progress(format_args!(
                "job {id} is {} (reason: {reason}), waited {waited}",
                state.to_lowercase()
            )),
            None => logging::progress(format_args!("job {id} is pending, waited {waited}")),
        }
    }
}

/// `m:ss`, or `h:mm:ss` from an hour on.
pub fn format_waited(waited: Duration) -> String {
    let secs = waited.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// `squeue -h -o '%T|%r'` output: state and reason.
pub fn parse_squeue(output: &str) -> Option<(String, String)> {
    let (state, reason) = output.lines().next()?.trim().split_once('|')?;
    (!state.is_empty()).then(|| (state.to_owned(), reason.to_owned()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    pub state: String,
    pub reason: String,
}

/// `scontrol -o show job N`: one line of `Key=Value` words.
pub fn parse_scontrol(output: &str) -> Option<JobEnd> {
    let line = output.lines().next()?;
    let field =
        |key: &str| line.split_whitespace().find_map(|word| word.strip_prefix(key)).map(str::to_owned);
    Some(JobEnd { state: field("JobState=")?, reason: field("Reason=").unwrap_or_default() })
}

/// States a job passes through on its way out; worth asking again.
fn is_transient(state: &str) -> bool {
    matches!(state, "COMPLETING" | "RUNNING" | "CONFIGURING" | "STAGE_OUT" | "PENDING")
}

/// Asks the controller how the job ended, giving it a few seconds to move
/// past COMPLETING (the epilog is still running when salloc returns).
pub async fn query_end(slurm: &Slurm, id: u32) -> Option<JobEnd> {
    let deadline = Instant::now() + END_STATE_WAIT;
    loop {
        let end = slurm
            .scontrol(&["-o", "show", "job", &id.to_string()])
            .await
            .ok()
            .and_then(|out| parse_scontrol(&out));
        match end {
            Some(end) if is_transient(&end.state) && Instant::now() < deadline => {
                // The controller sends no event when a job's state settles.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            end => return end,
        }
    }
}

/// Slurm's end states a user meets: what each means, and what to ask for
/// next time if asking can help.
const END_CAUSES: [(&str, &str, Option<&str>); 8] = [
    ("TIMEOUT", "the job reached its time limit", Some("more time with --time")),
    ("CANCELLED", "cancelled by scancel or an admin", None),
    ("NODE_FAIL", "the node failed", None),
    ("FAILED", "the helper or script failed — see the lines above", None),
    ("OUT_OF_MEMORY", "the job ran out of memory", Some("more memory with --mem")),
    ("PREEMPTED", "a higher-priority job preempted it", None),
    ("DEADLINE", "the job reached its deadline", None),
    ("BOOT_FAIL", "the node failed to boot", None),
];

/// The one line the user sees when the session ends without VS Code asking.
pub fn explain_end(status: &JobStatus, end: Option<&JobEnd>, child: ExitStatus) -> String {
    let describe_exit = |exit| describe_exit(exit, status.window);
    let Some(id) = status.id else {
        let cause = status.last_error.clone().unwrap_or_else(|| describe_exit(child));
        return format!(
            "salloc could not start the job: {cause}; check the salloc arguments after -- in RemoteCommand"
        );
    };
    if status.window && end.is_some_and(|end| end.state == "RUNNING") {
        return format!(
            "this window's step in job {id} ended ({}); the job goes on for its other windows: reconnect to join it",
            describe_exit(child)
        );
    }
    let (state, reason) = match end {
        Some(end) if !is_transient(&end.state) => (end.state.as_str(), end.reason.as_str()),
        _ => match status.end_hint {
            Some(hint) => (hint, ""),
            None => {
                return format!("job {id} ended ({}); reconnect to start a new session", describe_exit(child))
            }
        },
    };
    let again = "reconnect to start a new session";
    let (why, more) = match state {
        "COMPLETED" if status.window => ("its last window closed", None),
        "COMPLETED" => ("the session's shell exited", None),
        _ => END_CAUSES.iter().find(|cause| cause.0 == state).map_or(("", None), |cause| (cause.1, cause.2)),
    };
    let advice = match more {
        Some(more) => format!("{again}, or ask for {more} in RemoteCommand"),
        None => again.to_owned(),
    };
    let slurm_reason = match reason {
        "" | "None" => None,
        _ if matches!(state, "FAILED" | "NODE_FAIL") || why.is_empty() => Some(reason),
        _ => None,
    };
    let detail = match (why, slurm_reason) {
        ("", None) => String::new(),
        ("", Some(r)) => format!(" (Slurm reason: {r})"),
        (w, None) => format!(" ({w})"),
        (w, Some(r)) => format!(" ({w}; Slurm reason: {r})"),
    };
    format!("job {id} ended: {state}{detail}; {advice}")
}

/// The line for a window's srun that died by a signal of someone else's.
pub fn explain_srun_killed(id: u32, signal: i32) -> String {
    format!(
        "srun for this window of job {id} was killed by signal {signal}; the job ends unless another window \
         uses it; reconnect to start or join a session"
    )
}

fn describe_exit(status: ExitStatus, window: bool) -> String {
    use std::os::unix::process::ExitStatusExt;
    let program = if window { "srun" } else { "salloc" };
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("{program} exited with status {code}"),
        (None, Some(signal)) => format!("{program} was killed by signal {signal}"),
        _ => format!("{program} exited"),
    }
}

/// Ends the child: a bounded wait for it to leave by itself (stdin closed,
/// job cancelled), then SIGTERM, then SIGKILL.
pub async fn stop(child: &mut Child, grace: Duration) {
    if let Ok(Ok(status)) = timeout(grace, child.wait()).await {
        tracing::debug!("the job's srun or salloc exited: {status}");
        return;
    }
    if let Some(pid) = child.id() {
        tracing::info!("the job's srun or salloc still runs after {grace:?}; sending SIGTERM");
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        if timeout(Duration::from_secs(2), child.wait()).await.is_ok() {
            return;
        }
    }
    tracing::info!("the job's srun or salloc ignored SIGTERM; killing it");
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn stderr_lines() {
        let cases = [
            ("salloc: Pending job allocation 42\n", Some(StderrEvent::Pending(42))),
            ("salloc: job 42 queued and waiting for resources", Some(StderrEvent::Pending(42))),
            ("salloc: job 42 has been allocated resources\n", Some(StderrEvent::Granted(42))),
            ("salloc: Granted job allocation 42", Some(StderrEvent::Granted(42))),
            (
                "salloc: error: Job submit/allocate failed: Invalid partition name specified\n",
                Some(StderrEvent::Error("Job submit/allocate failed: Invalid partition name specified".into())),
            ),
            (
                "slurmstepd: error: *** STEP 42.0 ON c1 CANCELLED AT 2024-05-01T10:00:00 DUE TO TIME LIMIT ***",
                Some(StderrEvent::EndHint("TIMEOUT")),
            ),
            (
                "srun: error: *** JOB 42 ON c1 CANCELLED AT 2024-05-01T10:00:00 ***",
                Some(StderrEvent::EndHint("CANCELLED")),
            ),
            ("salloc: error: Node failure on c1\n", Some(StderrEvent::EndHint("NODE_FAIL"))),
            ("salloc: Job allocation 42 has been revoked.\n", Some(StderrEvent::Revoked)),
            ("srun: error: Node failure on c1", Some(StderrEvent::EndHint("NODE_FAIL"))),
            ("srun: Job allocation 42 has been revoked.", Some(StderrEvent::Revoked)),
            ("salloc: Waiting for resource configuration", None),
            ("salloc: Nodes c1 are ready for job", None),
            ("salloc: Relinquishing job allocation 42", None),
            ("salloc: Granted job allocation forty-two", None),
            ("salloc: job 42 queued", None),
            ("srun: error: c1: task 0: Exited with exit code 1", None),
            ("listeningOn==4000==", None),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_stderr_line(line), expected, "{line}");
        }
    }

    #[test]
    fn status_follows_the_events() {
        let mut status = JobStatus::default();
        for line in ["salloc: Pending job allocation 7", "salloc: job 7 queued and waiting for resources"] {
            apply(&mut status, parse_stderr_line(line).unwrap());
        }
        assert_eq!(status.id, Some(7));
        assert!(!status.granted);
        apply(&mut status, parse_stderr_line("salloc: Granted job allocation 7").unwrap());
        assert!(status.granted);
    }

    #[test]
    fn squeue_output() {
        assert_eq!(parse_squeue("PENDING|Resources\n"), Some(("PENDING".into(), "Resources".into())));
        assert_eq!(parse_squeue("RUNNING|None\n"), Some(("RUNNING".into(), "None".into())));
        assert_eq!(parse_squeue(""), None);
        assert_eq!(parse_squeue("slurm_load_jobs error: Invalid job id specified\n"), None);
    }

    const SCONTROL: &str = "JobId=42 JobName=vscode UserId=alice(1000) GroupId=alice(1000) MCS_label=N/A \
        Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) \
        Requeue=1 Restarts=0 BatchFlag=0 Reboot=0 ExitCode=0:15 RunTime=00:01:00 TimeLimit=00:01:00 \
        Partition=debug NodeList=c1 Command=/usr/bin/vscode-job-helper WorkDir=/home/alice Power=\n";

    #[test]
    fn scontrol_output() {
        assert_eq!(
            parse_scontrol(SCONTROL),
            Some(JobEnd { state: "TIMEOUT".into(), reason: "TimeLimit".into() })
        );
        assert_eq!(parse_scontrol("slurm_load_jobs error: Invalid job id specified\n"), None);
        assert_eq!(parse_scontrol(""), None);
    }

    fn ended(id: Option<u32>, state: &str, reason: &str) -> String {
        let status = JobStatus { id, ..JobStatus::default() };
        let end = JobEnd { state: state.into(), reason: reason.into() };
        explain_end(&status, Some(&end), ExitStatus::from_raw(1 << 8))
    }

    #[test]
    fn end_explanations() {
        assert_eq!(
            ended(Some(42), "TIMEOUT", "TimeLimit"),
            "job 42 ended: TIMEOUT (the job reached its time limit); reconnect to start a new session, \
             or ask for more time with --time in RemoteCommand"
        );
        assert!(ended(Some(42), "CANCELLED", "None").contains("(cancelled by scancel or an admin)"));
        assert!(
            ended(Some(42), "NODE_FAIL", "NodeDown").contains("(the node failed; Slurm reason: NodeDown)")
        );
        assert!(ended(Some(42), "FAILED", "NonZeroExitCode").contains("see the lines above"));
        assert!(ended(Some(42), "COMPLETED", "None").contains("(the session's shell exited)"));
        assert_eq!(
            ended(Some(42), "SUSPENDED", "None"),
            "job 42 ended: SUSPENDED; reconnect to start a new session"
        );
        for line in ["TIMEOUT", "CANCELLED", "NODE_FAIL", "FAILED", "COMPLETED", "WEIRD"]
            .map(|s| ended(Some(1), s, "X"))
        {
            assert!(!line.contains('\n'));
        }
    }

    #[test]
    fn end_falls_back_to_the_banner_then_to_salloc_status() {
        let mut status = JobStatus { id: Some(9), ..JobStatus::default() };
        let completing = JobEnd { state: "COMPLETING".into(), reason: "None".into() };
        let salloc = ExitStatus::from_raw(1 << 8);
        assert_eq!(
            explain_end(&status, Some(&completing), salloc),
            "job 9 ended (salloc exited with status 1); reconnect to start a new session"
        );
        status.end_hint = Some("TIMEOUT");
        assert!(explain_end(&status, None, salloc).starts_with("job 9 ended: TIMEOUT (the job reached"));
    }

    #[test]
    fn start_failures() {
        let mut status = JobStatus::default();
        let salloc = ExitStatus::from_raw(1 << 8);
        assert_eq!(
            explain_end(&status, None, salloc),
            "salloc could not start the job: salloc exited with status 1; check the salloc arguments after -- in RemoteCommand"
        );
        status.last_error = Some("invalid partition specified: gpu".into());
        assert_eq!(
            explain_end(&status, None, salloc),
            "salloc could not start the job: invalid partition specified: gpu; check the salloc arguments after -- in RemoteCommand"
        );
    }

    #[test]
    fn waited() {
        assert_eq!(format_waited(Duration::from_secs(35)), "0:35");
        assert_eq!(format_waited(Duration::from_secs(605)), "10:05");
        assert_eq!(format_waited(Duration::from_secs(3 * 3600 + 65)), "3:01:05");
    }

    #[tokio::test]
    async fn long_stderr_lines_are_cut_not_buffered() {
        let input = [vec![b'x'; 20], b"\nshort\nend".to_vec()].concat();
        let mut reader = BufReader::with_capacity(4, input.as_slice());
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            if read_line_bounded(&mut reader, &mut line, 8).await.unwrap() == 0 {
                break;
            }
            lines.push(String::from_utf8(line).unwrap());
        }
        assert_eq!(lines, ["xxxxxxxx", "xxxxxxxx", "xxxx\n", "short\n", "end"]);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(line in ".*") {
            let _ = parse_stderr_line(&line);
            let _ = parse_scontrol(&line);
            let _ = parse_squeue(&line);
        }
    }
}
