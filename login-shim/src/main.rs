//! `vscode-shim`: the ssh `RemoteCommand` that puts a VS Code Remote-SSH
//! session inside a Slurm job and relays VS Code's connections to it.

mod cli;
mod job;
mod logging;
mod peer_uid;
mod relay;
mod streams;

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::time::timeout;
use vscode_slurm_protocol::{ControlFilter, Nonce};

use crate::cli::{expand_pid, Cli};
use crate::job::JobStatus;
use crate::streams::StdinEnd;

/// How long a running session gets to end by itself once VS Code is gone.
const QUIET_EXIT: Duration = Duration::from_secs(3);
/// How long salloc gets to leave after its job was cancelled.
const SALLOC_GRACE: Duration = Duration::from_secs(10);
/// How long the job's last output may take to drain after salloc exits.
const DRAIN: Duration = Duration::from_secs(2);

fn main() {
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
    SallocExited(io::Result<ExitStatus>),
}

/// What exists once the session is under way.
struct Started {
    listener: tokio::net::TcpListener,
    signals: Signals,
    tee_stdin: Option<File>,
    tee_stdout: Option<File>,
    nonce: Nonce,
    salloc: tokio::process::Child,
}

/// The listener comes first: its port goes into the job's environment.
fn start(cli: &Cli) -> Result<Started, String> {
    let listener = relay::bind(cli.listen_host, cli.listen_port)
        .map_err(|e| format!("cannot listen on {}:{}: {e}", cli.listen_host, cli.listen_port))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let signals = Signals::new().map_err(|e| format!("cannot handle signals: {e}"))?;
    let tee_stdin = open_tee(cli.tee_stdin.as_deref(), "--tee-stdin")?;
    let tee_stdout = open_tee(cli.tee_stdout.as_deref(), "--tee-stdout")?;
    let nonce = Nonce::generate().map_err(|e| format!("cannot make the session nonce: {e}"))?;
    let salloc = job::salloc_command(cli, &nonce, port)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cli.salloc.display()))?;
    tracing::info!("relay listening on port {port}; salloc started");
    Ok(Started { listener, signals, tee_stdin, tee_stdout, nonce, salloc })
}

async fn run(cli: Cli) -> i32 {
    let Started { listener, mut signals, tee_stdin, tee_stdout, nonce, mut salloc } = match start(&cli) {
        Ok(started) => started,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };

    let (Some(to_salloc), Some(from_salloc), Some(salloc_stderr)) =
        (salloc.stdin.take(), salloc.stdout.take(), salloc.stderr.take())
    else {
        unreachable!("salloc_command pipes all three streams");
    };
    let (endpoint_tx, endpoint_rx) = watch::channel(None);
    let (status_tx, status_rx) = watch::channel(JobStatus::default());

    let stdout_task = tokio::spawn(streams::forward_stdout(
        from_salloc,
        ControlFilter::new(nonce),
        endpoint_tx,
        tee_stdout,
    ));
    let stderr_task = tokio::spawn(job::follow_stderr(salloc_stderr, status_tx));
    let mut stdin_task = tokio::spawn(streams::forward_stdin(to_salloc, tee_stdin));
    tokio::spawn(relay::serve(listener, endpoint_rx, cli.connect_wait()));
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
            status = salloc.wait() => break Outcome::SallocExited(status),
        }
    };
    progress.abort();

    match outcome {
        Outcome::Shutdown(code) => {
            tracing::info!("ending the session");
            if stdin_open {
                stdin_task.abort();
                // Dropping the task closes salloc's stdin, so the helper ends the script.
                let _ = stdin_task.await;
            }
            // A running session ends by itself once the helper sees stdin
            // close; only a job that does not (still pending, a stuck step)
            // is cancelled, so a normal close leaves no cancellation noise.
            if timeout(QUIET_EXIT, salloc.wait()).await.is_err() {
                let id = status_rx.borrow().id;
                if let Some(id) = id {
                    job::scancel(&cli.scancel, id).await;
                }
                job::stop(&mut salloc, SALLOC_GRACE).await;
            }
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
            let end = match job.id {
                Some(id) => job::query_end(&cli.scontrol, id).await,
                None => None,
            };
            tracing::error!("{}", job::explain_end(&job, end.as_ref(), status));
            1
        }
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
