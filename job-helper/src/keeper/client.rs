//! A window's side: the launch script's shell, started by the job's keeper
//! so that it and the server it starts outlive this window's step.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use vscode_slurm_protocol::env;

use super::wire::{self, Answer, SpawnRequest};

/// The keeper starts with the job; a window's step may come up first.
const KEEPER_WAIT: Duration = Duration::from_secs(60);
/// The first window of a new job starts within a few tens of milliseconds
/// of its keeper, so it asks often at first; later, rarely.
const RETRY_SOON: Duration = Duration::from_millis(5);
const RETRY_SOON_FOR: Duration = Duration::from_secs(2);
const RETRY_LATER: Duration = Duration::from_millis(100);

/// What the keeper tells a window after the shell started.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Exited(i32),
    Notice(String),
    /// The keeper is gone: the job is ending.
    KeeperGone,
}

pub struct KeptShell {
    answers: BufReader<OwnedReadHalf>,
    /// Held open for as long as this window counts as attached.
    _attached: OwnedWriteHalf,
    pub pid: u32,
}

pub struct Streams {
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Connects to the keeper of the job's runtime directory `dir` and has it
/// start `program` with `args` and pipes to us.
pub async fn spawn(program: &Path, args: &[String], dir: &Path) -> io::Result<(KeptShell, Streams)> {
    let path = dir.join(wire::SOCKET_NAME);
    let mut socket = connect(&path).await?;
    let (stdin_read, stdin_write) = pipe_pair()?;
    let (stdout_read, stdout_write) = pipe_pair()?;
    let (stderr_read, stderr_write) = pipe_pair()?;
    let request = SpawnRequest {
        program: program.to_path_buf(),
        args: args.to_vec(),
        cwd: std::env::current_dir()?,
        env: std::env::vars_os()
            .filter(|(key, _)| !env::HIDDEN_FROM_SCRIPT.iter().any(|hidden| key == hidden))
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
    };
    if request.program.as_os_str().as_bytes().first() != Some(&b'/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the program must be an absolute path"));
    }
    wire::send_spawn(&mut socket, &request, [&stdin_read, &stdout_write, &stderr_write])?;
    // The shell has its ends now (the keeper's copies); ours must close, or
    // the shell's exit would never show as EOF here.
    drop((stdin_read, stdout_write, stderr_write));
    let pid = match wire::read_answer(&mut socket)? {
        Some(Answer::Pid(pid)) => pid,
        other => {
            return Err(io::Error::other(format!("the keeper did not start the shell (answer: {other:?})")));
        }
    };
    socket.set_nonblocking(true)?;
    let (read, write) = UnixStream::from_std(socket)?.into_split();
    let streams = Streams {
        stdin: pipe::Sender::from_owned_fd(stdin_write)?,
        stdout: pipe::Receiver::from_owned_fd(stdout_read)?,
        stderr: pipe::Receiver::from_owned_fd(stderr_read)?,
    };
    Ok((KeptShell { answers: BufReader::new(read), _attached: write, pid }, streams))
}

impl KeptShell {
    pub async fn next(&mut self) -> Event {
        let mut line = String::new();
        loop {
            line.clear();
            match self.answers.read_line(&mut line).await {
                Ok(0) | Err(_) => return Event::KeeperGone,
                Ok(_) => match Answer::parse(&line) {
                    Some(Answer::Exit(code)) => return Event::Exited(code),
                    Some(Answer::Notice(text)) => return Event::Notice(text),
                    _ => continue,
                },
            }
        }
    }
}

/// A poll, not an event: the socket's appearance could be watched with
/// inotify, but the keeper may also still be between bind and listen, so a
/// connect attempt would follow the event anyway. Attempts are local
/// syscalls on this node; they cost the controller nothing.
async fn connect(path: &Path) -> io::Result<StdUnixStream> {
    let started = tokio::time::Instant::now();
    let deadline = started + KEEPER_WAIT;
    loop {
        match StdUnixStream::connect(path) {
            Ok(socket) => return Ok(socket),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "the job's keeper did not answer at {} within {KEEPER_WAIT:?}: {e}",
                        path.display()
                    ),
                ));
            }
            Err(_) if started.elapsed() < RETRY_SOON_FOR => tokio::time::sleep(RETRY_SOON).await,
            Err(_) => tokio::time::sleep(RETRY_LATER).await,
        }
    }
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}
