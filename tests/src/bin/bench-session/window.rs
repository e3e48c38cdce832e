//! One VS Code window as the benchmark drives it: `remote-ssh-client` on the
//! lab's laptop, each line it prints stamped with the moment it arrived here.
//!
//! The client's stdout carries its own lines (`session id=` just before it
//! starts ssh, `out: ...` for each line of VS Code's stdout, `result
//! listeningOn=` the moment it parses that line); its stderr is ssh's, which
//! carries the shim's log from the login node. The stamps are taken by a
//! reader thread per stream as each line arrives, so a figure is the time
//! between two events as the laptop saw them, not the time the benchmark
//! got round to looking.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use vscode_slurm_tests::events::{self, pidfd, readable_within};
use vscode_slurm_tests::session::{json_field, OPEN_TIMEOUT};
use vscode_slurm_tests::{remote_ssh_client_argv, Lab};

/// The name the launch script has in each user's laptop home.
pub const TEMPLATE: &str = "bench-session.sh";
/// The reattach tests' launch script: Remote-SSH's legacy shape, one test
/// server per job that later windows find and reuse, as VS Code's script
/// reuses the server of its commit. Light on purpose: what is measured is
/// the session's set-up and teardown, not a server's download or start.
pub const LAUNCH_SCRIPT: &str = include_str!("../../../scripts/reuse.sh");
/// The line the RemoteCommand says before it execs the shim: its arrival
/// marks the moment ssh has connected, authenticated and run the command.
/// It costs a shell builtin, and the shell then execs the shim as it would.
pub const COMMAND_STARTS: &str = "vscode-bench: command starts";
/// How long a closing window may take to let ssh go and print `closed`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

#[derive(Debug, Clone)]
pub struct Line {
    pub stream: Stream,
    pub at: Instant,
    pub text: String,
}

/// What opening a window measured, in seconds from ssh's start.
#[derive(Debug, Clone)]
pub struct Opened {
    pub first_output: f64,
    pub listening_on: f64,
    /// The test server's answer through the whole path (its job id above all).
    pub answer: String,
}

pub struct Window {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Line>,
    pub seen: Vec<Line>,
    pub user: String,
    /// When the client said it starts ssh.
    pub ssh_start: Option<Instant>,
    /// ssh's pidfd, once it is found under the client: its exit is the
    /// event "ssh exits" is measured to.
    ssh: Option<OwnedFd>,
}

/// The RemoteCommand of a window: the marker line, then the shim with
/// `shim_args` and its `-vv` log (info and debug lines: the steps of the
/// set-up, which say where the time goes).
pub fn remote_command(shim_args: &str) -> String {
    format!("echo '{COMMAND_STARTS}' >&2; exec vscode-shim -vv {shim_args}")
}

impl Window {
    /// Starts `remote-ssh-client` as `user` on the laptop with the given
    /// RemoteCommand and the benchmark's launch script.
    pub fn start(lab: &Lab, user: &str, remote_command: &str) -> Window {
        let rc = format!("RemoteCommand={remote_command}");
        let mut argv = remote_ssh_client_argv(TEMPLATE).to_vec();
        argv.extend(["--ssh-option", rc.as_str()]);
        let mut command = lab.command(Some(user), "laptop", &argv);
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start labctl exec remote-ssh-client");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        stamp_lines(child.stdout.take().expect("piped stdout"), Stream::Out, tx.clone());
        stamp_lines(child.stderr.take().expect("piped stderr"), Stream::Err, tx);
        Window { child, stdin, lines, seen: vec![], user: user.to_owned(), ssh_start: None, ssh: None }
    }

    /// Waits for a line satisfying `wanted`; a stdout line saying the
    /// session failed (`error ...`, `ssh-exited ...`) ends the wait with
    /// everything seen so far.
    pub fn wait_line(
        &mut self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&Line) -> bool,
    ) -> Result<Instant, String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let (at, hit) = (line.at, wanted(&line));
                    let failed = line.stream == Stream::Out
                        && (line.text.starts_with("error") || line.text.starts_with("ssh-exited"));
                    self.seen.push(line);
                    if hit {
                        return Ok(at);
                    }
                    if failed {
                        self.collect(Duration::from_secs(2));
                        return Err(format!(
                            "{}'s window failed waiting for {what}:\n{}",
                            self.user,
                            self.dump()
                        ));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}'s window: no {what} within {within:?}:\n{}",
                        self.user,
                        self.dump()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{}'s window ended before {what}:\n{}", self.user, self.dump()))
                }
            }
        }
    }

    /// Opens the session as VS Code would (the client connects through the
    /// relay the moment `listeningOn` arrives) and returns once the client
    /// is ready for commands.
    pub fn open(&mut self) -> Result<Opened, String> {
        let start = self.wait_line("`session id=` (ssh starting)", OPEN_TIMEOUT, |l| {
            l.stream == Stream::Out && l.text.starts_with("session id=")
        })?;
        self.ssh_start = Some(start);
        let listening = self.wait_line("`listeningOn`", OPEN_TIMEOUT, |l| {
            l.stream == Stream::Out && l.text.starts_with("result listeningOn=")
        })?;
        self.wait_line("the server's answer through the relay", OPEN_TIMEOUT, |l| {
            l.stream == Stream::Out && l.text.starts_with("answer ")
        })?;
        self.wait_line("`ready`", OPEN_TIMEOUT, |l| l.stream == Stream::Out && l.text == "ready")?;
        let first_output = self
            .first(|l| l.stream == Stream::Out && l.text.starts_with("out: "))
            .map(|l| l.at)
            .ok_or_else(|| format!("no output from the launch script before `ready`:\n{}", self.dump()))?;
        let answer = self
            .first(|l| l.stream == Stream::Out && l.text.starts_with("answer "))
            .map(|l| l.text.trim_start_matches("answer ").to_owned())
            .unwrap_or_default();
        let secs = |at: Instant| at.duration_since(start).as_secs_f64();
        Ok(Opened { first_output: secs(first_output), listening_on: secs(listening), answer })
    }

    /// Finds ssh under the client, so that its exit can be awaited as the
    /// kernel announces it (`close` then measures to that moment).
    pub fn watch_ssh(&mut self) -> Result<(), String> {
        let pid = descendant_named(self.child.id(), "ssh").ok_or_else(|| {
            format!("no ssh process under {}'s client (pid {})", self.user, self.child.id())
        })?;
        self.ssh = Some(pidfd(pid).map_err(|e| format!("a pidfd for {}'s ssh (pid {pid}): {e}", self.user))?);
        Ok(())
    }

    /// Closes the window as VS Code does (the client closes ssh's stdin);
    /// returns when that was asked and when ssh exited.
    pub fn close(&mut self) -> Result<Closed, String> {
        let (asked, asked_wall) = (Instant::now(), SystemTime::now());
        self.send("close");
        let ssh_exited = match self.ssh.take() {
            Some(ssh) => match readable_within(ssh.as_fd(), Some(CLOSE_TIMEOUT)) {
                Ok(true) => Some(Instant::now()),
                _ => return Err(format!("{}'s ssh did not exit within {CLOSE_TIMEOUT:?}", self.user)),
            },
            None => None,
        };
        let closed = self.wait_line("`closed`", CLOSE_TIMEOUT, |l| {
            l.stream == Stream::Out && l.text.starts_with("closed")
        })?;
        // Unwatched windows (the idle ones) have the client's own word: it
        // says `closed` the moment it has reaped ssh.
        let ssh_exited = ssh_exited.unwrap_or(closed);
        let status = events::exit_within(&mut self.child, Duration::from_secs(20))
            .map_err(|e| format!("waiting for {}'s client: {e}", self.user))?;
        if status.is_none() {
            return Err(format!("{}'s client did not exit after `closed`:\n{}", self.user, self.dump()));
        }
        self.collect(Duration::from_secs(2));
        Ok(Closed { asked, asked_wall, ssh_exited })
    }

    pub fn send(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        }
    }

    pub fn first(&self, wanted: impl Fn(&Line) -> bool) -> Option<&Line> {
        self.seen.iter().find(|l| wanted(l))
    }

    /// The job the server's answer names.
    pub fn job_id(opened: &Opened) -> Result<u32, String> {
        json_field(&opened.answer, "job_id")
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| format!("the server's answer names no job: {}", opened.answer))
    }

    /// Takes in what is still on its way, until the streams end or `within`.
    fn collect(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(line);
        }
    }

    pub fn dump(&self) -> String {
        self.seen
            .iter()
            .map(|l| format!("{} {}", if l.stream == Stream::Out { "out|" } else { "err|" }, l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        self.stdin.take();
        events::exit_or_kill(&mut self.child, Duration::from_secs(5));
    }
}

/// Windows that go together: when dropped (however the benchmark ends),
/// every client is told to close before any is waited for, so that a
/// hundred open windows are not ended one after the other.
pub struct Windows(pub Vec<Window>);

impl Drop for Windows {
    fn drop(&mut self) {
        for window in &mut self.0 {
            window.stdin.take();
        }
    }
}

/// What closing a window measured.
pub struct Closed {
    /// When the client was told to close (it closes ssh's stdin at once).
    pub asked: Instant,
    /// The same moment on the realtime clock, which the lab's hosts share
    /// with this process: the job-gone poller on the head node stamps with it.
    pub asked_wall: SystemTime,
    pub ssh_exited: Instant,
}

fn stamp_lines(stream: impl Read + Send + 'static, which: Stream, tx: Sender<Line>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(text) = line else { break };
            let line = Line { stream: which, at: Instant::now(), text };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// The first process named `name` (its comm) among `root`'s descendants,
/// as this (the root) pid namespace numbers them.
fn descendant_named(root: u32, name: &str) -> Option<u32> {
    let processes = all_processes();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, comm) in &processes {
            if *ppid == parent {
                if comm == name {
                    return Some(*pid);
                }
                frontier.push(*pid);
            }
        }
    }
    None
}

/// Every process's pid, parent and name, from /proc.
pub fn all_processes() -> Vec<(u32, u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
        Some((pid, ppid, comm))
    })
    .collect()
}
