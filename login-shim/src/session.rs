//! One session, from VS Code's first byte to the job's last word. Whichever
//! way the job came to be (a window in the profile's job, see `profile`, or
//! a salloc job of its own, see `no_profile`), the session has one Slurm
//! child on the login node — the window's `srun` or `salloc` — whose pipes
//! carry VS Code's stdio, and a relay for VS Code's connections. A proxy
//! session (`vscode-shim proxy`) is a window whose stdio is one SSH
//! connection to the job's own sshd, passed on untouched, with no relay.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::time::timeout;
use vscode_slurm_common::expand_pid;
use vscode_slurm_common::htcondor::Condor;
use vscode_slurm_common::logging;
use vscode_slurm_common::slurm::Slurm;

use crate::cli::SessionArgs;
use crate::job::{self, JobStatus};
use crate::scheduler::{self, Scheduler};
use crate::streams::{self, StdinEnd};
use crate::{htcondor, no_profile, profile, relay};

/// How long Slurm's client commands may take on a login node, where a user
/// waits for each.
pub const SLURM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a running session gets to end by itself once VS Code is gone.
const QUIET_EXIT: Duration = Duration::from_secs(3);
/// How long the Slurm child gets to leave after its job was cancelled.
const CHILD_GRACE: Duration = Duration::from_secs(10);
/// How long the Slurm child may wait on a step after the allocation was
/// revoked or the job was lost.
pub const REVOKED_GRACE: Duration = Duration::from_secs(3);
/// How long the job's last output may take to drain after the child exits.
const DRAIN: Duration = Duration::from_secs(2);

/// What the window's step serves on its stdio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// VS Code's launch script, with a relay on the login node for the
    /// server's connections (ssh's `RemoteCommand`).
    RemoteCommand { relay_port: u16 },
    /// One SSH connection to the job's sshd (ssh's `ProxyCommand`).
    Proxy,
}

/// Runs a session (`proxy`: a `vscode-shim proxy` one); returns the exit code.
pub fn main(args: SessionArgs, proxy: bool) -> i32 {
    let program = if proxy { "vscode-shim proxy" } else { "vscode-shim" };
    // An unusable --profile is a usage error like clap's own: one line,
    // exit 2, before anything asks Slurm.
    if let Some(Err(e)) = args.profile.as_deref().map(profile::check_profile) {
        eprintln!("{program}: {e}");
        return vscode_slurm_common::cli::USAGE;
    }
    if proxy && args.no_profile {
        eprintln!(
            "{program}: --no-profile does not apply: a proxy connection is a window of its profile's job; drop it, or use --profile NAME; see 'vscode-shim proxy --help'"
        );
        return vscode_slurm_common::cli::USAGE;
    }
    let scheduler = match scheduler::choose(args.scheduler) {
        Ok(scheduler) => scheduler,
        Err(e) => {
            eprintln!("{program}: {e}");
            return 1;
        }
    };
    if scheduler == Scheduler::Htcondor {
        if args.no_profile {
            eprintln!(
                "{program}: --no-profile does not apply on HTCondor: every session is a window of its profile's editor job; drop it"
            );
            return vscode_slurm_common::cli::USAGE;
        }
        if let Err(e) = htcondor::submit_commands(&args.job_args) {
            eprintln!("{program}: {e}");
            return vscode_slurm_common::cli::USAGE;
        }
    }
    let slurm = Slurm::new(args.slurm.clone(), SLURM_TIMEOUT);
    let condor = (scheduler == Scheduler::Htcondor).then(|| Condor::new(args.condor.clone(), SLURM_TIMEOUT));
    let style = logging::Style { program: "vscode-shim", label_levels: false };
    if let Err(e) = logging::init(&args.log, style, args.tee_stderr.as_deref()) {
        eprintln!("vscode-shim: {e}");
        return 1;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    let code = runtime.block_on(run(args, slurm, condor, proxy));
    // Exiting without dropping the runtime: tokio's stdin reader may sit in
    // a blocking read that a runtime shutdown would wait for.
    std::process::exit(code);
}

enum Outcome {
    /// VS Code hung up or we were told to stop; the code to exit with.
    Shutdown(i32),
    /// The server refused a relay connection: it has exited, and VS Code
    /// cannot start another one over this ssh session.
    ServerGone(SocketAddr),
    /// The window's srun (or salloc) exited by itself.
    ChildExited(io::Result<ExitStatus>),
}

/// `condor`: the session's job is an HTCondor editor job, not a Slurm job.
async fn run(args: SessionArgs, slurm: Slurm, condor: Option<Condor>, proxy: bool) -> i32 {
    let start = async {
        // The listener comes first: its port goes into the job's environment.
        let (listener, kind) = if proxy {
            (None, Kind::Proxy)
        } else {
            let listener = relay::bind(args.listen_host, args.listen_port)
                .map_err(|e| format!("cannot listen on {}:{}: {e}", args.listen_host, args.listen_port))?;
            let relay_port = listener.local_addr().map_err(|e| e.to_string())?.port();
            (Some(listener), Kind::RemoteCommand { relay_port })
        };
        let signals = Signals::new().map_err(|e| format!("cannot handle signals: {e}"))?;
        let tee_stdin = open_tee(args.tee_stdin.as_deref(), "--tee-stdin")?;
        let tee_stdout = open_tee(args.tee_stdout.as_deref(), "--tee-stdout")?;
        let secrets = job::Secrets::generate()?;
        Ok::<_, String>((listener, kind, signals, tee_stdin, tee_stdout, secrets))
    };
    let (listener, kind, mut signals, tee_stdin, tee_stdout, secrets) = match start.await {
        Ok(started) => started,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    let started = match kind {
        _ if condor.is_some() => {
            let mut hangup = streams::watch_hangup();
            let Some(condor) = &condor else { unreachable!("checked in the guard") };
            htcondor::start_window(&args, condor, &mut signals, &mut hangup, &secrets, kind).await
        }
        Kind::RemoteCommand { relay_port } if args.no_profile => {
            no_profile::start(&args, &secrets, relay_port)
        }
        _ => {
            let mut hangup = streams::watch_hangup();
            profile::start_window(&args, &slurm, &mut signals, &mut hangup, &secrets, kind).await
        }
    };
    let job::Started { mut child, joined, filter, early } = match started {
        Ok(started) => started,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    match (kind, joined) {
        (Kind::Proxy, Some(id)) => tracing::info!("proxy window started in job {id}"),
        (Kind::RemoteCommand { relay_port }, Some(id)) => {
            tracing::info!("relay listening on port {relay_port}; window started in job {id}")
        }
        (Kind::RemoteCommand { relay_port }, None) => {
            tracing::info!("relay listening on port {relay_port}; salloc started")
        }
        (Kind::Proxy, None) => tracing::info!("proxy window started"),
    }

    let (Some(to_child), Some(from_child), Some(child_stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("job::with_session_streams pipes all three streams");
    };
    let (endpoint_tx, endpoint_rx) = watch::channel(None);
    let (status_tx, status_rx) = watch::channel(JobStatus {
        id: joined,
        granted: joined.is_some(),
        window: joined.is_some(),
        ..Default::default()
    });

    let stdout_task = match kind {
        // After the helper's ready line, every byte is the SSH connection's.
        Kind::Proxy => tokio::spawn(streams::forward_raw(from_child, filter, early, tee_stdout)),
        Kind::RemoteCommand { .. } => {
            tokio::spawn(streams::forward_stdout(from_child, filter, early, endpoint_tx, tee_stdout))
        }
    };
    let stderr_task = tokio::spawn(job::follow_stderr(child_stderr, status_tx));
    let mut stdin_task = tokio::spawn(streams::forward_stdin(to_child, tee_stdin));
    let (server_gone_tx, mut server_gone) = tokio::sync::mpsc::channel(1);
    let door_key = secrets.door_key.clone();
    if let Some(listener) = listener {
        tokio::spawn(relay::serve(listener, endpoint_rx, door_key, args.connect_wait(), server_gone_tx));
    }
    let child_group = child.id().and_then(|pid| i32::try_from(pid).ok());
    tokio::spawn(end_revoked_allocation(status_rx.clone(), child_group));
    // HTCondor ends a window's condor_ssh_to_job itself when the job goes.
    let mut job_lost = joined
        .filter(|_| condor.is_none())
        .map(|id| profile::end_window_of_lost_job(id, slurm.clone(), child_group));
    let progress = tokio::spawn({
        let (status, slurm, every) = (status_rx.clone(), slurm.clone(), args.poll_interval());
        async move { job::report_progress(status, &slurm, every).await }
    });

    let mut stdin_open = true;
    let outcome = loop {
        tokio::select! {
            // Closing the child's stdin makes it exit; that exit must not be
            // mistaken for the job ending by itself.
            biased;
            end = &mut stdin_task, if stdin_open => {
                stdin_open = false;
                match end {
                    // The child stopped reading: it is leaving, and says why below.
                    Ok(StdinEnd::ChildGone) => continue,
                    Ok(StdinEnd::Eof) | Err(_) => break Outcome::Shutdown(0),
                }
            }
            code = signals.next() => break Outcome::Shutdown(code),
            Some(server) = server_gone.recv() => break Outcome::ServerGone(server),
            status = child.wait() => break Outcome::ChildExited(status),
        }
    };
    progress.abort();

    let stdin_task = stdin_open.then_some(stdin_task);
    match outcome {
        Outcome::ServerGone(server) => {
            let job = status_rx.borrow().id.map_or_else(String::new, |id| format!(" of job {id}"));
            tracing::error!(
                "the VS Code server{job} at {server} refused the connection (it has exited); \
                 the session is ended: reconnect to start a new one"
            );
            end_session("the server exited", stdin_task, &mut child, &status_rx, &args, &slurm).await;
            1
        }
        Outcome::Shutdown(code) => {
            end_session(&shutdown_reason(code), stdin_task, &mut child, &status_rx, &args, &slurm).await;
            code
        }
        Outcome::ChildExited(status) => {
            // The job's last words (an exitCode line, a Slurm error) come first.
            let _ = timeout(DRAIN, stdout_task).await;
            let _ = timeout(DRAIN, stderr_task).await;
            let status = match status {
                Ok(status) => status,
                Err(e) => {
                    tracing::error!("lost track of the job's srun or salloc: {e}");
                    return 1;
                }
            };
            let job = status_rx.borrow().clone();
            if let (Some(condor), Some(id)) = (&condor, job.id) {
                tracing::error!("{}", htcondor::explain_end(condor, id).await);
                return 1;
            }
            let lost = job_lost.as_mut().is_some_and(|lost| lost.try_recv().is_ok());
            if let (true, Some(id), Some(signal), false) = (job.window, job.id, status.signal(), lost) {
                tracing::error!("{}", job::explain_srun_killed(id, signal));
                return 1;
            }
            if let (Some(id), Some(signal), false, false) = (job.id, status.signal(), job.revoked, job.window)
            {
                no_profile::cancel_after_salloc_killed(&slurm, id, signal).await;
                return 1;
            }
            let end = match job.id {
                Some(id) => job::query_end(&slurm, id).await,
                None => None,
            };
            tracing::error!("{}", job::explain_end(&job, end.as_ref(), status));
            1
        }
    }
}

pub fn shutdown_reason(code: i32) -> String {
    match code {
        0 => "the client closed the session".to_owned(),
        129 => "the ssh session hung up (SIGHUP)".to_owned(),
        _ => format!("stopped by signal {}", code - 128),
    }
}

/// Ends a session from the login side: closing the job's stdin makes the
/// helper end the launch script, and a running job then ends by itself; only
/// one that does not (still pending, a stuck step) is cancelled, so a normal
/// close leaves no cancellation noise in the user's log.
async fn end_session(
    why: &str,
    stdin_task: Option<tokio::task::JoinHandle<StdinEnd>>,
    child: &mut Child,
    status: &watch::Receiver<JobStatus>,
    args: &SessionArgs,
    slurm: &Slurm,
) {
    if let Some(stdin_task) = stdin_task {
        stdin_task.abort();
        // Dropping the task closes the child's stdin.
        let _ = stdin_task.await;
    }
    let job = status.borrow().clone();
    let ended_by_itself = job.granted && timeout(QUIET_EXIT, child.wait()).await.is_ok();
    let window = !args.no_profile;
    match job.id {
        _ if ended_by_itself && window => tracing::info!("{why}; the window's step ended"),
        _ if ended_by_itself => tracing::info!("{why}; the job ended with it"),
        // Other windows may use the job; its keeper ends it after the linger time.
        Some(id) if window => tracing::info!("{why}; the window left job {id}"),
        Some(id) => {
            let _ = slurm.scancel(id).await;
            let state = if job.granted { "did not end by itself" } else { "was still pending" };
            tracing::warn!("{why}; job {id} {state} and was cancelled");
        }
        None => tracing::info!("{why} before salloc named a job"),
    }
    if !ended_by_itself {
        job::stop(child, CHILD_GRACE).await;
    }
}

/// Once Slurm revokes the allocation (a node failed, say), salloc waits for
/// its srun, and srun for a step on a node that may never answer again: give
/// them a moment to leave by themselves, then end both.
async fn end_revoked_allocation(mut status: watch::Receiver<JobStatus>, child_group: Option<i32>) {
    if status.wait_for(|job| job.revoked).await.is_err() {
        return;
    }
    tokio::time::sleep(REVOKED_GRACE).await;
    tracing::info!("the allocation was revoked and the job's srun or salloc is still waiting; ending it");
    kill_group(child_group);
}

/// Ends salloc or a window's srun with everything it started (each runs as
/// its own process group, see `job::with_session_streams`).
pub fn kill_group(group: Option<i32>) {
    if let Some(group) = group {
        let _ =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), nix::sys::signal::Signal::SIGKILL);
    }
}

fn open_tee(path: Option<&Path>, flag: &str) -> Result<Option<File>, String> {
    let Some(path) = path.map(expand_pid) else { return Ok(None) };
    logging::open_private(&path)
        .map(Some)
        .map_err(|e| format!("cannot open the {flag} file {}: {e}", path.display()))
}

/// The signals that end a session, as exit codes in the shell's 128+N style.
pub struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn next(&mut self) -> i32 {
        let number = tokio::select! {
            _ = self.hangup.recv() => libc::SIGHUP,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.interrupt.recv() => libc::SIGINT,
        };
        tracing::info!("got signal {number}");
        128 + number
    }
}
