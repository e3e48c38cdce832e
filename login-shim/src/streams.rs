//! The two pipes between VS Code and the job: the launch script going in,
//! its output (minus our control lines) coming back.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::watch;
use vscode_slurm_protocol::{ControlFilter, ControlMessage, Piece};

const BUFFER: usize = 16 * 1024;
/// How long a line start that could be a control line is held when nothing
/// more comes: the helper writes each control line whole, so its bytes
/// follow at once; an exec server speaking over the launch stream must not
/// wait on the filter for the rest of its reply.
const HELD_QUIET: std::time::Duration = std::time::Duration::from_millis(50);

/// Why stdin forwarding stopped: VS Code hanging up means "end the session";
/// the job's srun or salloc no longer reading means it is on its way out by
/// itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinEnd {
    Eof,
    ChildGone,
}

/// Copies our stdin to the child byte for byte; returning drops (closes)
/// its stdin, which is how the helper learns the session is over.
pub async fn forward_stdin(mut to_child: ChildStdin, mut tee: Option<File>) -> StdinEnd {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match stdin.read(&mut buf).await {
            Ok(0) => return StdinEnd::Eof,
            Ok(n) => n,
            Err(e) => {
                tracing::info!("reading stdin: {e}");
                return StdinEnd::Eof;
            }
        };
        write_tee(&mut tee, &buf[..n]);
        if let Err(e) = async {
            to_child.write_all(&buf[..n]).await?;
            to_child.flush().await
        }
        .await
        {
            tracing::debug!("writing to the job's stdin: {e}");
            return StdinEnd::ChildGone;
        }
    }
}

/// Passes the job's stdout to VS Code, taking out this session's control
/// lines. An endpoint is published before any byte after it is written, so
/// the relay knows its target by the time VS Code reads `listeningOn`.
pub async fn forward_stdout(
    mut from_child: ChildStdout,
    mut filter: ControlFilter,
    early: Vec<Piece>,
    endpoint: watch::Sender<Option<SocketAddr>>,
    tee: Option<File>,
) {
    let mut out = Stdout { stdout: tokio::io::stdout(), tee, broken: false };
    for piece in early {
        handle(piece, &mut out, &endpoint).await;
    }
    let mut buf = vec![0u8; BUFFER];
    loop {
        let read = if filter.is_holding() {
            match tokio::time::timeout(HELD_QUIET, from_child.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => {
                    out.write(&filter.give_up_held()).await;
                    continue;
                }
            }
        } else {
            from_child.read(&mut buf).await
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("reading the job's stdout: {e}");
                break;
            }
        };
        for piece in filter.feed(&buf[..n]) {
            handle(piece, &mut out, &endpoint).await;
        }
    }
    let rest = filter.finish();
    out.write(&rest).await;
}

/// A proxy window's stdout: what came with the helper's ready line, then
/// the SSH connection's bytes untouched (the filter only ends what it held).
pub async fn forward_raw(
    mut from_child: ChildStdout,
    mut filter: ControlFilter,
    early: Vec<Piece>,
    tee: Option<File>,
) {
    let mut out = Stdout { stdout: tokio::io::stdout(), tee, broken: false };
    for piece in early {
        if let Piece::Data(data) = piece {
            out.write(&data).await;
        }
    }
    out.write(&filter.finish()).await;
    let mut buf = vec![0u8; BUFFER];
    loop {
        match from_child.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => out.write(&buf[..n]).await,
            Err(e) => {
                tracing::debug!("reading the job's stdout: {e}");
                return;
            }
        }
    }
}

async fn handle(piece: Piece, out: &mut Stdout, endpoint: &watch::Sender<Option<SocketAddr>>) {
    match piece {
        Piece::Data(data) => out.write(&data).await,
        Piece::Control(ControlMessage::Endpoint(addr)) => {
            tracing::info!("the session's server is at {addr}");
            endpoint.send_replace(Some(addr));
        }
        // The connection log is the one place VS Code shows our stderr.
        Piece::Control(ControlMessage::Notice(text)) => tracing::warn!("{text}"),
        Piece::Control(ControlMessage::Ready) => tracing::debug!("the launch script's shell runs"),
    }
}

/// Fires when VS Code's end of our stdin is closed, without reading it:
/// while the job is pending nothing reads stdin, and the launch script in
/// it must stay there for the job. A thread of its own, because tokio has
/// no way to wait for a hang-up alone.
pub fn watch_hangup() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned =
        std::thread::Builder::new().name("stdin-hangup".into()).stack_size(64 * 1024).spawn(move || {
            let mut fd = libc::pollfd { fd: 0, events: libc::POLLRDHUP, revents: 0 };
            loop {
                // SAFETY: one pollfd, valid for the call; fd 0 is ours for the process's life.
                let n = unsafe { libc::poll(&mut fd, 1, -1) };
                if n > 0
                    && fd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL) != 0
                {
                    let _ = tx.send(());
                    return;
                }
                if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::info!("cannot watch stdin for a hang-up: {e}");
    }
    rx
}

/// Reads the window's output until the helper says its shell runs; what
/// came with it is returned, to be passed on first. `None`: the step ended
/// before that (the job was ending, say).
pub async fn wait_ready(from: &mut ChildStdout, filter: &mut ControlFilter) -> Option<Vec<Piece>> {
    let mut early = Vec::new();
    let mut buf = vec![0u8; BUFFER];
    let mut ready = false;
    while !ready {
        let n = from.read(&mut buf).await.ok().filter(|&n| n > 0)?;
        for piece in filter.feed(&buf[..n]) {
            if piece == Piece::Control(ControlMessage::Ready) {
                ready = true;
            } else {
                early.push(piece);
            }
        }
    }
    Some(early)
}

struct Stdout {
    stdout: tokio::io::Stdout,
    tee: Option<File>,
    /// Once VS Code is gone we keep draining the job's output so the job never blocks
    /// on a full pipe while it is being torn down.
    broken: bool,
}

impl Stdout {
    async fn write(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        write_tee(&mut self.tee, data);
        if self.broken {
            return;
        }
        let result = async {
            self.stdout.write_all(data).await?;
            self.stdout.flush().await
        }
        .await;
        if let Err(e) = result {
            tracing::info!("writing stdout: {e}; discarding the job's further output");
            self.broken = true;
        }
    }
}

fn write_tee(tee: &mut Option<File>, data: &[u8]) {
    if let Some(file) = tee {
        if let Err(e) = file.write_all(data) {
            tracing::warn!("tee file: {e}; no longer copying");
            *tee = None;
        }
    }
}
