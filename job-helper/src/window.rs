//! A window: the launch script's shell (ours, or the keeper's), its stdin
//! passed through the bind rewriter, its stdout through the `listeningOn`
//! scanner, until VS Code or the script is done.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use vscode_job_helper::bind_rewrite::{BindRewriter, Conversions};
use vscode_job_helper::listening::{ListeningScanner, Piece};
use vscode_slurm_protocol::{self as protocol, ControlMessage};

use crate::announcer::Announcer;
use crate::cli::fail;
use crate::keeper;
use crate::keeper::client::{Event, KeptShell};
use crate::launch_lock::{self, LaunchLock};
use crate::session::Session;
use crate::shell::{self, Shell};

/// How long the script's processes get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// How long output still in the pipe may take to reach VS Code once the
/// script's processes are gone.
const DRAIN: Duration = Duration::from_secs(1);

/// The same for a kept shell that exited: its output is in the pipe by
/// then, but the pipe stays open for the server that inherited it.
const KEPT_DRAIN: Duration = Duration::from_millis(100);

/// Why the session ended.
enum End {
    StdinClosed,
    StdoutClosed,
    ShellExited(io::Result<i32>),
    Signal(i32),
}

/// The launch script's shell: our child, or the keeper's (see `keeper`).
enum Script {
    Here(Shell),
    Kept(KeptShell),
}

type Input = Box<dyn AsyncWrite + Unpin + Send>;
type Output = Box<dyn AsyncRead + Unpin + Send>;

impl Script {
    async fn start(program: &Path, keeper_dir: Option<&Path>) -> io::Result<(Script, Input, Output, Output)> {
        match keeper_dir {
            None => {
                let (shell, stdin, stdout, stderr) = Shell::spawn(program)?;
                Ok((Script::Here(shell), Box::new(stdin), Box::new(stdout), Box::new(stderr)))
            }
            Some(dir) => {
                let (kept, streams) = keeper::client::spawn(program, &[], dir).await?;
                tracing::debug!("the keeper started {} as pid {}", program.display(), kept.pid);
                Ok((
                    Script::Kept(kept),
                    Box::new(streams.stdin),
                    Box::new(streams.stdout),
                    Box::new(streams.stderr),
                ))
            }
        }
    }

    /// The shell's exit code; notices from the keeper go to `notices` meanwhile.
    async fn wait(&mut self, notices: &mpsc::UnboundedSender<String>) -> io::Result<i32> {
        match self {
            Script::Here(shell) => shell.wait().await.map(shell::exit_code),
            Script::Kept(kept) => loop {
                match kept.next().await {
                    Event::Exited(code) => return Ok(code),
                    Event::Notice(text) => {
                        let _ = notices.send(text);
                    }
                    Event::KeeperGone => {
                        return Err(io::Error::other("the job's keeper is gone: the job is ending"))
                    }
                }
            },
        }
    }

    /// A shell of ours ends with its whole group; a kept one is left to the
    /// keeper, because the server it started must outlive this window.
    async fn end(&mut self) {
        if let Script::Here(shell) = self {
            shell.end_group(GRACE).await;
        }
    }
}

pub async fn run(shell_path: &Path, session: Session, keeper_dir: Option<PathBuf>) -> i32 {
    let signals = [SignalKind::terminate(), SignalKind::hangup(), SignalKind::interrupt()].map(signal);
    let [Ok(mut term), Ok(mut hup), Ok(mut int)] = signals else {
        tracing::error!("cannot handle signals");
        return 1;
    };
    // Only kept scripts share a job's server; a script of our own is alone.
    let launch_lock = match &keeper_dir {
        Some(dir) => launch_lock::take(dir).await,
        None => None,
    };
    let (mut shell, shell_in, shell_out, mut shell_err) =
        match Script::start(shell_path, keeper_dir.as_deref()).await {
            Ok(spawned) => spawned,
            Err(e) => {
                fail(format_args!("cannot start the shell {}: {e}; check --shell", shell_path.display()))
            }
        };
    let (notices_tx, notices) = mpsc::unbounded_channel();
    // Before any of the script's output: the shim holds the script back until it sees this.
    let mut stdout = tokio::io::stdout();
    let ready = protocol::encode(&session.nonce, &ControlMessage::Ready);
    if stdout.write_all(&ready).await.and(stdout.flush().await).is_err() {
        tracing::info!("our stdout is gone before the script started");
    }
    let conversions = Arc::new(Mutex::new(Conversions::default()));
    let script_ended = Arc::new(AtomicBool::new(false));
    let stdin_task = tokio::spawn(pump_stdin(
        tokio::io::stdin(),
        shell_in,
        BindRewriter::new(session.sockets.clone()),
        conversions.clone(),
        script_ended.clone(),
    ));
    // The script's stderr reaches VS Code's log unchanged.
    let mut stderr_task =
        tokio::spawn(async move { tokio::io::copy(&mut shell_err, &mut tokio::io::stderr()).await });
    let (broken_tx, broken_rx) = oneshot::channel();
    let announcer = Announcer::new(session, conversions);
    let mut stdout_task = tokio::spawn(async move {
        if let Err(e) =
            pump_stdout(shell_out, tokio::io::stdout(), announcer, notices, launch_lock, script_ended).await
        {
            tracing::debug!("our stdout is gone: {e}");
            let _ = broken_tx.send(());
        }
    });

    let end = tokio::select! {
        _ = stdin_task => End::StdinClosed,
        status = shell.wait(&notices_tx) => End::ShellExited(status),
        Ok(()) = broken_rx => End::StdoutClosed,
        _ = term.recv() => End::Signal(libc::SIGTERM),
        _ = hup.recv() => End::Signal(libc::SIGHUP),
        _ = int.recv() => End::Signal(libc::SIGINT),
    };
    let code = match &end {
        End::StdinClosed => {
            tracing::info!("stdin closed: ending the launch script");
            0
        }
        End::StdoutClosed => {
            tracing::info!("stdout closed: ending the launch script");
            0
        }
        End::ShellExited(Ok(code)) => {
            tracing::info!("the launch script's shell exited ({code}): ending what it started");
            *code
        }
        End::ShellExited(Err(e)) => {
            tracing::error!("cannot wait for the launch script's shell: {e}");
            1
        }
        End::Signal(number) => {
            tracing::info!("signal {number}: ending the launch script");
            128 + number
        }
    };
    shell.end().await;
    // A kept shell's server outlives this window and holds the script's
    // output pipes, so they never reach EOF: after VS Code left (or we were
    // told to stop) there is no one to drain them for, and after the shell
    // exited, what it wrote is already in the pipe and read at once.
    let kept = matches!(shell, Script::Kept(_));
    let drain = match end {
        End::StdoutClosed => None,
        End::StdinClosed | End::Signal(_) if kept => None,
        End::ShellExited(_) if kept => Some(KEPT_DRAIN),
        _ => Some(DRAIN),
    };
    if let Some(drain) = drain {
        if tokio::time::timeout(drain, &mut stdout_task).await.is_err() && !kept {
            tracing::warn!("output of the launch script still open after its processes ended; dropping it");
        }
        let _ = tokio::time::timeout(drain, &mut stderr_task).await;
    }
    code
}

/// Helper stdin → rewriter → shell stdin, until our stdin ends; then the
/// shell's stdin is closed. Once the script's output has ended
/// (`script_ended`), what VS Code sends is for the server the script
/// started, and passes untouched.
async fn pump_stdin(
    mut from: impl AsyncRead + Unpin,
    to: Input,
    mut rewriter: BindRewriter,
    conversions: Arc<Mutex<Conversions>>,
    script_ended: Arc<AtomicBool>,
) {
    let mut to = Some(to);
    let mut buf = vec![0u8; 16 * 1024];
    let mut rewriting = true;
    // A read error is the end of VS Code's input like EOF is.
    while let Ok(n) = from.read(&mut buf).await.inspect_err(|e| tracing::debug!("reading our stdin: {e}")) {
        if n == 0 {
            break;
        }
        if rewriting && script_ended.load(Ordering::Acquire) {
            rewriting = false;
            let held = rewriter.finish();
            forward(&mut to, &held).await;
        }
        if !rewriting {
            forward(&mut to, &buf[..n]).await;
            continue;
        }
        let bytes = rewriter.feed(&buf[..n]);
        publish(&conversions, &rewriter);
        forward(&mut to, &bytes).await;
    }
    if rewriting {
        let tail = rewriter.finish();
        publish(&conversions, &rewriter);
        forward(&mut to, &tail).await;
    }
}

fn publish(conversions: &Mutex<Conversions>, rewriter: &BindRewriter) {
    if let Ok(mut shared) = conversions.lock() {
        shared.clone_from(rewriter.conversions());
    }
}

/// Once the shell stops reading, the rest of our stdin is only watched for
/// its end.
async fn forward(to: &mut Option<Input>, bytes: &[u8]) {
    let Some(pipe) = to else { return };
    if bytes.is_empty() {
        return;
    }
    if let Err(e) = pipe.write_all(bytes).await {
        tracing::debug!("the shell stopped reading its stdin: {e}");
        *to = None;
    }
}

/// Shell stdout → scanner → our stdout, flushed after every read because
/// VS Code acts on each line as it comes. Err only when writing fails.
///
/// Notices become control lines for the shim, but only between lines of the
/// script's output (a control line is recognised only at a line start);
/// while a line is unfinished they go to stderr instead, which also reaches
/// the user through the shim.
async fn pump_stdout(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut announcer: Announcer,
    mut notices: mpsc::UnboundedReceiver<String>,
    mut launch_lock: Option<LaunchLock>,
    script_ended: Arc<AtomicBool>,
) -> io::Result<()> {
    let mut scanner = ListeningScanner::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut at_line_start = true;
    let mut notices_open = true;
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => read.unwrap_or_else(|e| {
                tracing::warn!("reading the launch script's output: {e}");
                0
            }),
            notice = notices.recv(), if notices_open => {
                match notice {
                    // Also after the script's end, when the stream may be the
                    // server's own: the shim takes the line out again, so the bytes
                    // VS Code reads are the server's, untouched.
                    Some(text) if at_line_start => {
                        let message = ControlMessage::Notice(text);
                        to.write_all(&protocol::encode(&announcer.session.nonce, &message)).await?;
                        to.flush().await?;
                    }
                    Some(text) => tracing::warn!("{text}"),
                    None => notices_open = false,
                }
                continue;
            }
        };
        if n == 0 {
            to.write_all(&scanner.finish()).await?;
            return to.flush().await;
        }
        for piece in scanner.feed(&buf[..n]) {
            let bytes = match piece {
                Piece::Data(data) => data,
                Piece::Listening(listening) => {
                    let announced = announcer.announce(listening).await;
                    // The server is up: the next window's script may look for it.
                    drop(launch_lock.take());
                    announced
                }
            };
            if let Some(&last) = bytes.last() {
                at_line_start = last == b'\n';
            }
            to.write_all(&bytes).await?;
        }
        if scanner.script_ended() && !script_ended.swap(true, Ordering::AcqRel) {
            tracing::debug!("the launch script's output has ended: the rest of the stream passes untouched");
        }
        to.flush().await?;
    }
}
