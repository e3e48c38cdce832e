//! Runs the launch script's shell as the leader of its own session, and ends
//! everything the script started.
//!
//! Slurm's kill sweep (proctrack/linuxproc) signals processes one by one; the
//! script's keep-alive loop can fork a new `sleep` between two sweeps, and that
//! sleep then holds the step's output open for minutes. Owning the script as
//! one process group lets the helper end all of it at once, SIGKILL included.

use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

/// How long the group gets after SIGKILL before the helper stops waiting.
const KILL_WAIT: Duration = Duration::from_secs(1);

use vscode_slurm_protocol::env;

const POLL: Duration = Duration::from_millis(20);

pub struct Shell {
    child: Child,
    group: Pid,
}

impl Shell {
    /// Starts `program` with no arguments, so it reads the script from stdin.
    ///
    /// All three streams are our pipes, none of them the step's own: should
    /// the helper die, whatever the script left running must not hold the
    /// step's output open, or Slurm would wait on the step forever.
    pub fn spawn(program: &Path) -> io::Result<(Shell, ChildStdin, ChildStdout, ChildStderr)> {
        let mut command = Command::new(program);
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // The nonce makes a control line genuine and the door key opens the
        // door; nothing the script starts (servers, the user's terminals)
        // needs them or may learn them.
        for name in env::HIDDEN_FROM_SCRIPT {
            command.env_remove(name);
        }
        // A helper killed outright takes the shell with it; what the shell
        // started is left to the job's end and the epilog.
        // SAFETY: setsid and prctl are async-signal-safe and touch no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(io::Error::from)?;
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let pid = child.id().ok_or_else(|| io::Error::other("the shell exited before it was seen"))?;
        let stdin = child.stdin.take().ok_or_else(|| io::Error::other("no pipe to the shell's stdin"))?;
        let stdout =
            child.stdout.take().ok_or_else(|| io::Error::other("no pipe from the shell's stdout"))?;
        let stderr =
            child.stderr.take().ok_or_else(|| io::Error::other("no pipe from the shell's stderr"))?;
        let group = Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?);
        tracing::debug!("started {} as pid {pid} in its own session", program.display());
        Ok((Shell { child, group }, stdin, stdout, stderr))
    }

    /// Waits for the shell itself; what it started may live on.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM to the whole group, SIGKILL to whatever is left after `grace`.
    /// Also reaps the shell.
    pub async fn end_group(&mut self, grace: Duration) {
        if self.signal(Signal::SIGTERM) && !self.wait_group_gone(grace).await {
            tracing::info!("processes of the launch script outlived SIGTERM by {grace:?}; sending SIGKILL");
            if self.signal(Signal::SIGKILL) && !self.wait_group_gone(KILL_WAIT).await {
                tracing::warn!("processes of the launch script (group {}) outlived SIGKILL", self.group);
            }
        }
        let _ = self.child.try_wait();
    }

    /// Whether anyone was left to signal.
    fn signal(&self, signal: Signal) -> bool {
        match killpg(self.group, signal) {
            Ok(()) => true,
            Err(Errno::ESRCH) => false,
            Err(e) => {
                tracing::warn!("cannot send {signal} to the launch script's group {}: {e}", self.group);
                false
            }
        }
    }

    async fn wait_group_gone(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            // The shell's own zombie would keep the group alive.
            let _ = self.child.try_wait();
            if !group_alive(self.group) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Whether the group still has a member that is not a zombie. Orphans are
/// reaped by whoever adopted them, which may be slow or never (some
/// containers' pid 1); a zombie holds no files, so it does not count.
fn group_alive(group: Pid) -> bool {
    if killpg(group, None) == Err(Errno::ESRCH) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let is_pid = entry.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        is_pid
            && std::fs::read(entry.path().join("stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_some_and(|(state, pgrp)| pgrp == group.as_raw() && state != b'Z')
    })
}

/// State and process group from `/proc/PID/stat`. The command name may hold
/// spaces and parentheses, so fields are counted from its last `)`.
fn parse_stat(stat: &[u8]) -> Option<(u8, i32)> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Exit code the way a shell reports it: 128+N for death by signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|signal| 128 + signal)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_parsed_past_odd_command_names() {
        assert_eq!(parse_stat(b"42 (a) b) (c) S 1 777 777 0 -1"), Some((b'S', 777)));
        assert_eq!(parse_stat(b"42 (sleep) Z 1 9 9 0"), Some((b'Z', 9)));
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn the_whole_group_ends_including_term_ignoring_children() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
            let (mut shell, mut stdin, stdout, _stderr) = Shell::spawn(Path::new("/bin/sh")).unwrap();
            stdin
                .write_all(
                    b"sleep 1000 & echo $!\n(trap '' TERM; echo ready; sleep 1000) & sleep 1; echo $!\n",
                )
                .await
                .unwrap();
            let mut lines = BufReader::new(stdout).lines();
            let plain: i32 = lines.next_line().await.unwrap().unwrap().parse().unwrap();
            assert_eq!(lines.next_line().await.unwrap().unwrap(), "ready");
            let stubborn: i32 = lines.next_line().await.unwrap().unwrap().parse().unwrap();
            let started = Instant::now();
            shell.end_group(Duration::from_millis(300)).await;
            assert!(started.elapsed() < Duration::from_secs(3));
            assert!(!group_alive(shell.group));
            for pid in [plain, stubborn] {
                let stat = std::fs::read(format!("/proc/{pid}/stat")).ok();
                assert!(
                    stat.and_then(|s| parse_stat(&s)).is_none_or(|(state, _)| state == b'Z'),
                    "{pid} lives"
                );
            }
        });
    }
}
