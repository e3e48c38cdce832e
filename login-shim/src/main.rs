//! `vscode-shim`: the ssh `RemoteCommand` that puts a VS Code Remote-SSH
//! session inside a Slurm job and relays VS Code's connections to it.

mod cli;
mod commands;
mod doctor;
mod job;
mod logging;
mod persistent;
mod relay;
mod sessions;
mod setup;
mod streams;

use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::time::timeout;
use vscode_slurm_protocol::door::DoorKey;
use vscode_slurm_protocol::{ControlFilter, Piece};

use crate::cli::{expand_pid, Cli};
use crate::job::JobStatus;
use crate::streams::StdinEnd;

/// How long a running session gets to end by itself once VS Code is gone.
const QUIET_EXIT: Duration = Duration::from_secs(3);
/// How long salloc gets to leave after its job was cancelled.
const SALLOC_GRACE: Duration = Duration::from_secs(10);
/// How long salloc may wait on its srun after the allocation was revoked.
const REVOKED_GRACE: Duration = Duration::from_secs(3);
/// Set when the window's srun is ended because its job is gone: its death
/// by our signal is then the job's end, not a fault of its own.
static JOB_LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// How often a window checks that its job still runs (one squeue of one job).
const JOB_WATCH_INTERVAL: Duration = Duration::from_secs(30);
/// How long the job's last output may take to drain after salloc exits.
const DRAIN: Duration = Duration::from_secs(2);

fn main() {
    if let Some(code) = commands::dispatch() {
        std::process::exit(code);
    }
    if let Some(code) = sessions::dispatch() {
        std::process::exit(code);
    }
    let cli = Cli::parse_or_exit();
    let log_file = cli.log_file.as_deref().map(expand_pid);
    let tee_stderr = cli.tee_stderr.as_deref().map(expand_pid);
    let logging = logging::init(logging::Options {
        verbose: cli.verbose,
        quiet: cli.quiet,
        log_file: log_file.as_deref(),
        tee_stderr: tee_stderr.as_deref(),
    });
    if let Err(e) = logging {
        eprintln!("vscode-shim: cannot set up logging: {e}");
        std::process::exit(1);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(run(cli));
    // Exiting without dropping the runtime: tokio's stdin reader may sit in
    // a blocking read that a runtime shutdown would wait for.
    std::process::exit(code);
}

enum Outcome {
    /// VS Code hung up or we were told to stop; the code to exit with.
    Shutdown(i32),
    /// The server refused a relay connection: it has exited, and VS Code
    /// cannot start another one over this ssh session.
    ServerGone(std::net::SocketAddr),
    SallocExited(io::Result<ExitStatus>),
}

/// What exists once the session is under way.
struct Started {
    listener: tokio::net::TcpListener,
    signals: Signals,
    tee_stdin: Option<File>,
    tee_stdout: Option<File>,
    /// salloc, or with a profile the window's srun step.
    salloc: tokio::process::Child,
    /// With a profile: the job the window joined, already running.
    joined: Option<u32>,
    /// The window's output so far (with a profile, read up to the helper's
    /// ready line), and the filter that read it.
    filter: ControlFilter,
    early: Vec<Piece>,
    /// The relay proves it to the server's door.
    door_key: std::sync::Arc<DoorKey>,
}

/// Tries at joining a profile's job; one fails when the job ends between
/// being found and being joined.
const JOIN_TRIES: u32 = 3;

/// The listener comes first: its port goes into the job's environment.
async fn start(cli: &Cli) -> Result<Started, String> {
    let listener = relay::bind(cli.listen_host, cli.listen_port)
        .map_err(|e| format!("cannot listen on {}:{}: {e}", cli.listen_host, cli.listen_port))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let mut signals = Signals::new().map_err(|e| format!("cannot handle signals: {e}"))?;
    let tee_stdin = open_tee(cli.tee_stdin.as_deref(), "--tee-stdin")?;
    let tee_stdout = open_tee(cli.tee_stdout.as_deref(), "--tee-stdout")?;
    let secrets = job::Secrets::generate()?;
    if cli.persistent() {
        let mut hangup = streams::watch_hangup();
        let (step, id, filter, early) = start_window(cli, &mut signals, &mut hangup, &secrets, port).await?;
        tracing::info!("relay listening on port {port}; window started in job {id}");
        return Ok(Started {
            listener,
            signals,
            tee_stdin,
            tee_stdout,
            salloc: step,
            joined: Some(id),
            filter,
            early,
            door_key: secrets.door_key,
        });
    }
    let salloc = job::salloc_command(cli, &secrets, port)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cli.salloc.display()))?;
    tracing::info!("relay listening on port {port}; salloc started");
    let filter = ControlFilter::new(secrets.nonce);
    Ok(Started {
        listener,
        signals,
        tee_stdin,
        tee_stdout,
        salloc,
        joined: None,
        filter,
        early: vec![],
        door_key: secrets.door_key,
    })
}

/// Joins (or submits) the profile's job and starts this window's step in
/// it; returns once the helper's shell runs there, so VS Code's script is
/// only sent to a window that has its place.
async fn start_window(
    cli: &Cli,
    signals: &mut Signals,
    hangup: &mut tokio::sync::oneshot::Receiver<()>,
    secrets: &job::Secrets,
    port: u16,
) -> Result<(tokio::process::Child, u32, ControlFilter, Vec<Piece>), String> {
    let profile = persistent::profile(cli)?;
    for _ in 0..JOIN_TRIES {
        let (id, submitted) = join_or_submit(cli, &profile, signals, hangup).await?;
        let mut step = persistent::step_command(cli, id, &profile, secrets, port)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", cli.srun.display()))?;
        let mut filter = ControlFilter::new(secrets.nonce.clone());
        let Some(stdout) = step.stdout.as_mut() else { unreachable!("step_command pipes stdout") };
        let stop = tokio::select! {
            ready = timeout(cli.connect_wait(), streams::wait_ready(stdout, &mut filter)) => match ready {
                Ok(Some(early)) => return Ok((step, id, filter, early)),
                Ok(None) => None,
                Err(_) => Some(format!(
                    "job {id} did not start the window within {}s (--connect-wait); reconnect to try again",
                    cli.connect_wait
                )),
            },
            code = signals.next() => Some(shutdown_reason(code)),
            _ = &mut *hangup => Some(shutdown_reason(0)),
        };
        if let Some(why) = stop {
            let _ = step.start_kill();
            if submitted {
                job::scancel(&cli.scancel, id).await;
            }
            return Err(why);
        }
        let _ = step.wait().await;
        let said = read_all_stderr(&mut step).await;
        tracing::info!("job {id} did not take the window ({said}); trying again");
    }
    Err(format!("could not join a job of profile {profile} in {JOIN_TRIES} tries; reconnect to try again"))
}

async fn read_all_stderr(step: &mut tokio::process::Child) -> String {
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
    cli: &Cli,
    profile: &str,
    signals: &mut Signals,
    hangup: &mut tokio::sync::oneshot::Receiver<()>,
) -> Result<(u32, bool), String> {
    let (mut id, mut submitted) = match persistent::find(cli, profile).await? {
        Some(found) => {
            let how = if found.running { "joining" } else { "waiting with" };
            logging::progress(format_args!("{how} job {} of profile {profile}", found.id));
            (found.id, false)
        }
        None => {
            let id = persistent::submit(cli, profile).await?;
            tracing::info!("submitted job {id} for profile {profile}");
            (id, true)
        }
    };
    if submitted {
        if let Some(older) = persistent::oldest(cli, profile).await.filter(|&older| older < id) {
            tracing::info!("job {older} of profile {profile} was submitted at the same time; joining it");
            job::scancel(&cli.scancel, id).await;
            (id, submitted) = (older, false);
        }
    }
    let why = tokio::select! {
        running = persistent::wait_running(cli, id) => return running.map(|()| (id, submitted)),
        code = signals.next() => shutdown_reason(code),
        _ = &mut *hangup => shutdown_reason(0),
    };
    if submitted {
        job::scancel(&cli.scancel, id).await;
        Err(format!("{why}; job {id} was still pending and was cancelled"))
    } else {
        Err(format!("{why} while job {id} was pending; it is left to its other windows"))
    }
}

async fn run(cli: Cli) -> i32 {
    let started = match start(&cli).await {
        Ok(started) => started,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    let Started { listener, mut signals, tee_stdin, tee_stdout, mut salloc, joined, filter, early, door_key } =
        started;

    let (Some(to_salloc), Some(from_salloc), Some(salloc_stderr)) =
        (salloc.stdin.take(), salloc.stdout.take(), salloc.stderr.take())
    else {
        unreachable!("salloc_command pipes all three streams");
    };
    let (endpoint_tx, endpoint_rx) = watch::channel(None);
    let (status_tx, status_rx) = watch::channel(JobStatus {
        id: joined,
        granted: joined.is_some(),
        window: joined.is_some(),
        ..Default::default()
    });

    let stdout_task =
        tokio::spawn(streams::forward_stdout(from_salloc, filter, early, endpoint_tx, tee_stdout));
    let stderr_task = tokio::spawn(job::follow_stderr(salloc_stderr, status_tx));
    let mut stdin_task = tokio::spawn(streams::forward_stdin(to_salloc, tee_stdin));
    let (server_gone_tx, mut server_gone) = tokio::sync::mpsc::channel(1);
    tokio::spawn(relay::serve(listener, endpoint_rx, door_key, cli.connect_wait(), server_gone_tx));
    let salloc_group = salloc.id().and_then(|pid| i32::try_from(pid).ok());
    tokio::spawn(end_revoked_allocation(status_rx.clone(), salloc_group));
    if let Some(id) = joined {
        tokio::spawn(end_window_of_lost_job(id, cli.squeue.clone(), salloc_group));
    }
    let progress = tokio::spawn({
        let (status, squeue, every) = (status_rx.clone(), cli.squeue.clone(), cli.poll_interval());
        async move { job::report_progress(status, &squeue, every).await }
    });

    let mut stdin_open = true;
    let outcome = loop {
        tokio::select! {
            // Closing salloc's stdin makes it exit; that exit must not be
            // mistaken for the job ending by itself.
            biased;
            end = &mut stdin_task, if stdin_open => {
                stdin_open = false;
                match end {
                    // salloc stopped reading: it is leaving, and says why below.
                    Ok(StdinEnd::SallocGone) => continue,
                    Ok(StdinEnd::Eof) | Err(_) => break Outcome::Shutdown(0),
                }
            }
            code = signals.next() => break Outcome::Shutdown(code),
            Some(server) = server_gone.recv() => break Outcome::ServerGone(server),
            status = salloc.wait() => break Outcome::SallocExited(status),
        }
    };
    progress.abort();

    match outcome {
        Outcome::ServerGone(server) => {
            let job = status_rx.borrow().id.map_or_else(String::new, |id| format!(" of job {id}"));
            tracing::error!(
                "the VS Code server{job} at {server} refused the connection (it has exited); \
                 the session is ended: reconnect to start a new one"
            );
            let stdin_task = stdin_open.then_some(stdin_task);
            end_session("the server exited", stdin_task, &mut salloc, &status_rx, &cli).await;
            1
        }
        Outcome::Shutdown(code) => {
            let stdin_task = stdin_open.then_some(stdin_task);
            end_session(&shutdown_reason(code), stdin_task, &mut salloc, &status_rx, &cli).await;
            code
        }
        Outcome::SallocExited(status) => {
            // The job's last words (an exitCode line, a Slurm error) come first.
            let _ = timeout(DRAIN, stdout_task).await;
            let _ = timeout(DRAIN, stderr_task).await;
            let status = match status {
                Ok(status) => status,
                Err(e) => {
                    tracing::error!("lost track of salloc: {e}");
                    return 1;
                }
            };
            let job = status_rx.borrow().clone();
            // salloc gives its allocation back when it leaves by itself; killed,
            // it cannot, and the job would run on with nobody attached to it.
            let lost = JOB_LOST.load(std::sync::atomic::Ordering::Relaxed);
            if let (true, Some(id), Some(signal), false) = (job.window, job.id, status.signal(), lost) {
                tracing::error!("{}", job::explain_srun_killed(id, signal));
                return 1;
            }
            if let (Some(id), Some(signal), false, false) = (job.id, status.signal(), job.revoked, job.window)
            {
                job::scancel(&cli.scancel, id).await;
                tracing::error!("{}", job::explain_salloc_killed(id, signal));
                return 1;
            }
            let end = match job.id {
                Some(id) => job::query_end(&cli.scontrol, id).await,
                None => None,
            };
            tracing::error!("{}", job::explain_end(&job, end.as_ref(), status));
            1
        }
    }
}

fn shutdown_reason(code: i32) -> String {
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
    salloc: &mut tokio::process::Child,
    status: &watch::Receiver<JobStatus>,
    cli: &Cli,
) {
    if let Some(stdin_task) = stdin_task {
        stdin_task.abort();
        // Dropping the task closes salloc's stdin.
        let _ = stdin_task.await;
    }
    let job = status.borrow().clone();
    let ended_by_itself = job.granted && timeout(QUIET_EXIT, salloc.wait()).await.is_ok();
    match job.id {
        _ if ended_by_itself && cli.persistent() => tracing::info!("{why}; the window's step ended"),
        _ if ended_by_itself => tracing::info!("{why}; the job ended with it"),
        // Other windows may use the job; its keeper ends it after the linger time.
        Some(id) if cli.persistent() => tracing::info!("{why}; the window left job {id}"),
        Some(id) => {
            job::scancel(&cli.scancel, id).await;
            let state = if job.granted { "did not end by itself" } else { "was still pending" };
            tracing::warn!("{why}; job {id} {state} and was cancelled");
        }
        None => tracing::info!("{why} before salloc named a job"),
    }
    if !ended_by_itself {
        job::stop(salloc, SALLOC_GRACE).await;
    }
}

/// Once Slurm revokes the allocation (a node failed, say), salloc waits for
/// its srun, and srun for a step on a node that may never answer again: give
/// them a moment to leave by themselves, then end both.
async fn end_revoked_allocation(mut status: watch::Receiver<JobStatus>, salloc_group: Option<i32>) {
    if status.wait_for(|job| job.revoked).await.is_err() {
        return;
    }
    tokio::time::sleep(REVOKED_GRACE).await;
    tracing::info!("the allocation was revoked and salloc is still waiting; ending it");
    kill_group(salloc_group);
}

/// Ends salloc or a window's srun with everything it started (each runs as
/// its own process group, see `job::with_session_streams`).
fn kill_group(group: Option<i32>) {
    if let Some(group) = group {
        let _ =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), nix::sys::signal::Signal::SIGKILL);
    }
}

/// A window's srun is not told when its job is lost with its node (salloc
/// is, as "revoked"): it waits on a step that can no longer answer. So the
/// job's state is looked at now and then, and once it is no longer running
/// the window's srun is ended; its end is then explained as usual.
async fn end_window_of_lost_job(id: u32, squeue: std::path::PathBuf, srun_group: Option<i32>) {
    loop {
        tokio::time::sleep(JOB_WATCH_INTERVAL).await;
        let state =
            job::run_slurm_command(&squeue, ["-h", "-t", "all", "-j", &id.to_string(), "-o", "%T"]).await;
        let Some(state) = state else { continue };
        let state = state.trim();
        if state == "RUNNING" {
            continue;
        }
        let state = if state.is_empty() { "gone" } else { state };
        tracing::info!("job {id} is {state}; ending this window's srun");
        JOB_LOST.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(REVOKED_GRACE).await;
        kill_group(srun_group);
        return;
    }
}

fn open_tee(path: Option<&Path>, flag: &str) -> Result<Option<File>, String> {
    let Some(path) = path.map(expand_pid) else { return Ok(None) };
    logging::open_private(&path)
        .map(Some)
        .map_err(|e| format!("cannot open {flag} file {}: {e}", path.display()))
}

/// The signals that end a session, as exit codes in the shell's 128+N style.
struct Signals {
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

    async fn next(&mut self) -> i32 {
        let number = tokio::select! {
            _ = self.hangup.recv() => libc::SIGHUP,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.interrupt.recv() => libc::SIGINT,
        };
        tracing::info!("got signal {number}");
        128 + number
    }
}
