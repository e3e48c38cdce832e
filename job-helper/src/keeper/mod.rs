//! The keeper: the job's batch step, which holds the job while windows come
//! and go, so nothing on the login node has to.
//!
//! Every window's helper (a step of its own, started by `srun --overlap`)
//! has the keeper start its launch script's shell. The shell and whatever it
//! starts (the VS Code server) therefore live in the keeper's step, not in
//! the window's: a window's step ending (a dropped connection) leaves the
//! server running for the next window to find. The keeper counts the open
//! connections; once none is left for the job's linger time, it returns,
//! the batch script ends, and Slurm ends the job and everything in it.
//!
//! On the way it warns before the time limit (a banner on the job's
//! terminals and a notice to every window) and keeps the job's Comment
//! saying how many windows are attached, for `vscode-shim sessions`.

pub mod client;
pub mod terminals;
pub mod wire;

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{sleep_until, Instant};
use vscode_slurm_common::slurm::Slurm;
use vscode_slurm_common::unix_now;
use vscode_slurm_protocol::slurm::Attachment;
use vscode_slurm_protocol::{duration, env};

use self::wire::{Answer, SpawnRequest};

/// A job whose first window never arrives (its shim died while the job was
/// pending) ends after this long, or after its linger time if that is longer.
const FIRST_WINDOW_WAIT: Duration = Duration::from_secs(120);
/// A time limit moved by more than this since the last look is re-planned.
const LIMIT_SLACK: Duration = Duration::from_secs(5);

pub struct KeepOptions {
    /// Warn this long before the time limit, each once.
    pub warn_before: Vec<Duration>,
    pub slurm: Slurm,
    /// HTCondor's tool for a job to update its own ad.
    pub condor_chirp: PathBuf,
}

/// Which scheduler runs the job: where its attachment is published and its
/// time limit read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheduler {
    Slurm,
    HtCondor,
}

struct Job {
    id: String,
    uid: u32,
    linger: Duration,
    scheduler: Scheduler,
}

fn job_from_env() -> Result<(Job, PathBuf), String> {
    let slurm_id = std::env::var("SLURM_JOB_ID")
        .ok()
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
    let (id, scheduler) = match (slurm_id, crate::htcondor::cluster_id()) {
        (Some(id), _) => (id, Scheduler::Slurm),
        (None, Some(id)) => (id, Scheduler::HtCondor),
        (None, None) => {
            return Err("SLURM_JOB_ID is not set (nor an HTCondor job ad): the keeper runs as the batch script of a vscode-shim job".to_owned())
        }
    };
    let dir = std::env::var_os(env::RUNTIME_DIR).map(PathBuf::from).ok_or_else(|| {
        format!(
            "{} is not set: the job was not submitted with --vscode, or the plugin is not loaded",
            env::RUNTIME_DIR
        )
    })?;
    let linger = match std::env::var(env::LINGER) {
        Ok(text) => Duration::from_secs(
            text.parse().map_err(|_| format!("{} is not a number of seconds: {text:?}", env::LINGER))?,
        ),
        Err(_) => Duration::ZERO,
    };
    Ok((Job { id, uid: nix::unistd::getuid().as_raw(), linger, scheduler }, dir))
}

pub async fn run(options: KeepOptions) -> i32 {
    let (job, dir) = match job_from_env() {
        Ok(found) => found,
        Err(e) => {
            tracing::error!("{e}");
            return 2;
        }
    };
    let socket = dir.join(wire::SOCKET_NAME);
    let listener = match listen(&socket) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", socket.display());
            return 1;
        }
    };
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        tracing::error!("cannot handle SIGTERM");
        return 1;
    };
    tracing::info!(
        "job {}: keeping it while windows are attached, then {}",
        job.id,
        duration::Display(job.linger)
    );

    let (notices, _) = broadcast::channel::<String>(8);
    let (detached_tx, mut detached) = mpsc::unbounded_channel::<()>();
    let first_wait = job.linger.max(FIRST_WINDOW_WAIT);
    let (attachment_tx, attachment) =
        watch::channel(Attachment { windows: 0, ends_at: Some(unix_now() + first_wait.as_secs()) });
    let local = tokio::task::LocalSet::new();
    let job = Rc::new(job);
    // The sessions of the shells this keeper started, still running.
    let groups: Groups = Rc::default();
    let code = local
        .run_until(async {
            let publisher = match job.scheduler {
                Scheduler::Slurm => Publisher::Slurm(options.slurm.clone()),
                Scheduler::HtCondor => Publisher::Chirp(options.condor_chirp.clone()),
            };
            tokio::task::spawn_local(publish_attachment(job.id.clone(), publisher, attachment));
            tokio::task::spawn_local(warn_before_limit(job.clone(), options, notices.clone()));
            let windows = Rc::new(Cell::new(0usize));
            let started = Rc::clone(&groups);
            let mut deadline = Some(Instant::now() + first_wait);
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            windows.set(windows.get() + 1);
                            deadline = None;
                            tokio::task::spawn_local(serve_window(stream, job.uid, notices.subscribe(), detached_tx.clone(), Rc::clone(&started)));
                        }
                        Err(e) => {
                            tracing::warn!("accepting a window: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    Some(()) = detached.recv() => {
                        windows.set(windows.get().saturating_sub(1));
                        if windows.get() == 0 {
                            deadline = Some(Instant::now() + job.linger);
                        }
                    }
                    () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                        tracing::info!("job {}: no window for {}; ending the job", job.id, duration::Display(job.linger));
                        break 0;
                    }
                    _ = term.recv() => {
                        tracing::info!("job {}: SIGTERM; ending", job.id);
                        break 143;
                    }
                }
                let ends_at = deadline.map(|d| unix_now() + d.saturating_duration_since(Instant::now()).as_secs());
                attachment_tx.send_if_modified(|a| {
                    let next = Attachment { windows: windows.get(), ends_at };
                    std::mem::replace(a, next) != next
                });
            }
        })
        .await;
    let _ = std::fs::remove_file(&socket);
    end_groups(&groups);
    code
}

/// Only the user can reach the socket: the runtime directory is theirs and
/// 0700, and the socket itself is 0600 on top of that.
fn listen(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// One window: start its shell, report the shell's end and any notices,
/// and count it as attached until its connection closes.
/// The process groups (each a session: see `spawn_shell`) of the shells
/// the keeper started that have not exited.
type Groups = Rc<std::cell::RefCell<std::collections::BTreeSet<i32>>>;

/// Ends every shell the keeper started, with all it started in its session,
/// in one signal per group. Left to the scheduler's sweep (Slurm's kill,
/// HTCondor's starter), a launch script's keep-alive loop can fork its next
/// `sleep` between two kills of a process-by-process sweep; that sleep then
/// outlives the job (seen in the HTCondor lab after `condor_rm`). A group
/// signal reaches every member at once, and a fork racing it is killed too.
fn end_groups(groups: &Groups) {
    for &group in groups.borrow().iter() {
        let _ =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), nix::sys::signal::Signal::SIGKILL);
    }
}

async fn serve_window(
    mut stream: UnixStream,
    uid: u32,
    mut notices: broadcast::Receiver<String>,
    detached: mpsc::UnboundedSender<()>,
    groups: Groups,
) {
    if let Err(e) = serve_window_inner(&mut stream, uid, &mut notices, groups).await {
        tracing::warn!("a window's connection failed: {e}");
    }
    let _ = detached.send(());
}

async fn serve_window_inner(
    stream: &mut UnixStream,
    uid: u32,
    notices: &mut broadcast::Receiver<String>,
    groups: Groups,
) -> io::Result<()> {
    let peer = stream.peer_cred()?;
    if peer.uid() != uid {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("refused uid {}", peer.uid())));
    }
    let fd = stream.as_raw_fd();
    let (version, len, fds) = stream.async_io(Interest::READABLE, || wire::recv_header(fd)).await?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    let request = wire::decode_payload(version, &payload)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a malformed spawn request"))?;
    let mut child = spawn_shell(&request, fds)?;
    let pid = child.id().unwrap_or(0);
    // Until it is reaped its pid (its group's id) cannot be reused, so the
    // group can be signalled safely; once reaped, no loop of it forks.
    let group = i32::try_from(pid).ok().filter(|&pid| pid > 0);
    if let Some(group) = group {
        groups.borrow_mut().insert(group);
    }
    tracing::info!("started {} as pid {pid} for a window", request.program.display());
    stream.write_all(Answer::Pid(pid).line().as_bytes()).await?;

    let mut shell_done = false;
    let mut probe = [0u8; 64];
    let result = loop {
        tokio::select! {
            status = child.wait(), if !shell_done => {
                shell_done = true;
                if let Some(group) = group {
                    groups.borrow_mut().remove(&group);
                }
                let code = status.map(crate::shell::exit_code).unwrap_or(1);
                stream.write_all(Answer::Exit(code).line().as_bytes()).await?;
            }
            read = stream.read(&mut probe) => match read {
                Ok(0) => break Ok(()),
                Ok(_) => continue,
                Err(e) => break Err(e),
            },
            notice = notices.recv() => match notice {
                Ok(text) => stream.write_all(Answer::Notice(text).line().as_bytes()).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {}
            },
        }
    };
    // The window is gone but its shell may still run (it reads EOF soon);
    // someone must reap it.
    if !shell_done {
        tokio::task::spawn_local(async move {
            let _ = child.wait().await;
            if let Some(group) = group {
                groups.borrow_mut().remove(&group);
            }
        });
    }
    result
}

fn spawn_shell(request: &SpawnRequest, fds: [std::os::fd::OwnedFd; 3]) -> io::Result<tokio::process::Child> {
    let [stdin, stdout, stderr] = fds;
    let mut command = Command::new(&request.program);
    command
        .args(&request.args)
        .current_dir(&request.cwd)
        .env_clear()
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // A session of its own, like a login: no terminal, and its own group.
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(io::Error::from));
    }
    command.spawn()
}

/// Where the attachment goes: the Slurm job's Comment, or the HTCondor
/// job's own ad (condor_chirp, through the starter).
enum Publisher {
    Slurm(Slurm),
    Chirp(PathBuf),
}

/// How long condor_chirp may take: the starter is on this node.
const CHIRP_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps the job's Comment (or its ad's `VSCodeWindows`) saying how many
/// windows are attached (see [`Attachment`]), for `vscode-shim sessions`.
async fn publish_attachment(
    job_id: String,
    publisher: Publisher,
    mut attachment: watch::Receiver<Attachment>,
) {
    loop {
        let comment = attachment.borrow_and_update().encode();
        let published = match &publisher {
            Publisher::Slurm(slurm) => {
                let args = ["update".to_owned(), format!("JobId={job_id}"), format!("Comment={comment}")];
                slurm.scontrol(&args).await.map(|_| ()).map_err(|e| e.to_string())
            }
            Publisher::Chirp(chirp) => {
                let value = vscode_slurm_protocol::htcondor::classad_string(&comment);
                let mut command = Command::new(chirp);
                command.args(["set_job_attr", vscode_slurm_protocol::htcondor::WINDOWS_ATTR, &value]);
                command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
                match tokio::time::timeout(CHIRP_TIMEOUT, command.output()).await {
                    Ok(Ok(out)) if out.status.success() => Ok(()),
                    Ok(Ok(out)) => Err(format!(
                        "{} failed: {}",
                        chirp.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )),
                    Ok(Err(e)) => Err(format!("cannot run {}: {e}", chirp.display())),
                    Err(_) => Err(format!("{} did not answer", chirp.display())),
                }
            }
        };
        if let Err(e) = published {
            tracing::info!("could not record the attached windows in the job: {e}");
        }
        if attachment.changed().await.is_err() {
            return;
        }
    }
}

/// Warns once at each of `warn_before` ahead of the time limit, asking the
/// controller again before each warning, since an admin may have moved it.
async fn warn_before_limit(job: Rc<Job>, options: KeepOptions, notices: broadcast::Sender<String>) {
    let mut pending = options.warn_before.clone();
    pending.sort_unstable_by(|a, b| b.cmp(a));
    let mut at_start = true;
    while !pending.is_empty() {
        let Some(left) = time_left(&options.slurm, &job).await else {
            tracing::info!("job {}: no time limit known; no warnings", job.id);
            return;
        };
        keep_warnings_ahead(&mut pending, left, at_start);
        at_start = false;
        let Some(&next) = pending.first() else { return };
        let at = Instant::now() + left.saturating_sub(next);
        tokio::time::sleep_until(at).await;
        let Some(now_left) = time_left(&options.slurm, &job).await else { return };
        if now_left > next + LIMIT_SLACK {
            continue;
        }
        pending.remove(0);
        let text = format!(
            "job {} reaches its time limit in {}: save your work (reconnecting afterwards starts a new job)",
            job.id,
            minutes(now_left)
        );
        tracing::info!("{text}");
        let reached = terminals::write_banner(&job.id, job.uid, &format!("vscode-slurm: {text}"));
        tracing::info!("the warning reached {reached} terminal(s)");
        let _ = notices.send(text);
    }
}

/// Drops the warnings whose moment has passed. At the job's start, a
/// warning as long as the whole limit (`--time=10` with a 10-minute warning)
/// would only tell the user what they just asked for, so it goes too; later,
/// one that comes due a few seconds early (a limit moved, a slow controller)
/// is still given.
fn keep_warnings_ahead(pending: &mut Vec<Duration>, left: Duration, at_start: bool) {
    if at_start {
        pending.retain(|&before| before + LIMIT_SLACK < left);
    } else {
        pending.retain(|&before| before < left + LIMIT_SLACK);
    }
}

fn minutes(left: Duration) -> String {
    let minutes = (left.as_secs() + 30) / 60;
    match minutes {
        0 => "less than a minute".to_owned(),
        1 => "about 1 minute".to_owned(),
        n => format!("about {n} minutes"),
    }
}

/// `squeue -o %L`: `[D-]HH:MM:SS`, `MM:SS` or `SS`; `UNLIMITED` or `NOT_SET` when there is no limit.
pub fn parse_time_left(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (days, clock) = match text.split_once('-') {
        Some((days, clock)) => (days.parse::<u64>().ok()?, clock),
        None => (0, text),
    };
    let parts: Vec<u64> = clock.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let secs = match parts[..] {
        [s] => s,
        [m, s] => m * 60 + s,
        [h, m, s] => h * 3600 + m * 60 + s,
        _ => return None,
    };
    Some(Duration::from_secs(days * 86_400 + secs))
}

/// `None` also when the controller cannot be asked: without a known
/// limit there is nothing to warn about, and the job's end still reaches
/// every window.
async fn time_left(slurm: &Slurm, job: &Job) -> Option<Duration> {
    if job.scheduler == Scheduler::HtCondor {
        return crate::htcondor::time_left(unix_now());
    }
    let out = slurm.squeue(&["-h", "-j", &job.id, "-o", "%L"]).await.ok()?;
    parse_time_left(out.lines().next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_as_long_as_the_whole_limit_is_not_given_at_the_start() {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        let mut pending = vec![minutes(10), minutes(2)];
        keep_warnings_ahead(&mut pending, minutes(10) - Duration::from_secs(2), true);
        assert_eq!(pending, [minutes(2)], "--time=10 with 10m,2m: only the 2-minute warning");
        let mut pending = vec![minutes(10), minutes(2)];
        keep_warnings_ahead(&mut pending, minutes(12), true);
        assert_eq!(pending, [minutes(10), minutes(2)]);
        // Later, a warning due a moment ago is still given.
        let mut pending = vec![minutes(2)];
        keep_warnings_ahead(&mut pending, minutes(2) - Duration::from_secs(3), false);
        assert_eq!(pending, [minutes(2)]);
    }

    #[test]
    fn time_left_forms() {
        assert_eq!(parse_time_left("2:58"), Some(Duration::from_secs(178)));
        assert_eq!(parse_time_left("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_time_left("1:00:00\n"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_time_left("2-03:04:05"), Some(Duration::from_secs(2 * 86_400 + 3 * 3600 + 245)));
        assert_eq!(parse_time_left("UNLIMITED"), None);
        assert_eq!(parse_time_left("NOT_SET"), None);
        assert_eq!(parse_time_left("1:2:3:4"), None);
        assert_eq!(parse_time_left(""), None);
    }

    #[test]
    fn minutes_are_rounded_for_people() {
        assert_eq!(minutes(Duration::from_secs(119)), "about 2 minutes");
        assert_eq!(minutes(Duration::from_secs(61)), "about 1 minute");
        assert_eq!(minutes(Duration::from_secs(10)), "less than a minute");
    }
}
