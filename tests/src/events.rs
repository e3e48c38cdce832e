//! Waiting on what the kernel announces instead of polling for it: a
//! process's exit (its pidfd turns readable) and a descriptor's data. A
//! test that polls is as slow as its period and only as sure as the guess
//! behind it; these return the moment the event happens, and give up at a
//! bound the caller names.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A descriptor that turns readable once process `pid` has exited (a
/// zombie has), whichever process is its parent.
pub fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd_open returned no descriptor"))?;
    // SAFETY: a descriptor the kernel has just opened for this call alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `fd` turns readable (or reaches its end) within `within`; with
/// no bound, waits until it does.
pub fn readable_within(fd: BorrowedFd<'_>, within: Option<Duration>) -> io::Result<bool> {
    let deadline = within.map(|within| Instant::now() + within);
    loop {
        let timeout_ms = match deadline {
            None => -1,
            // Rounded up: a wait cut short of its bound would give up early.
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
            }
        };
        let mut pollfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, valid for the call.
        match unsafe { libc::poll(&mut pollfd, 1, timeout_ms) } {
            0 => return Ok(false),
            ready if ready > 0 => return Ok(true),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}

/// `child`'s exit status as soon as it exits, or `None` when it still runs
/// after `within` (it is left running: the caller decides what then).
pub fn exit_within(child: &mut Child, within: Duration) -> io::Result<Option<ExitStatus>> {
    // Checked first: a child not yet reaped keeps its pid, so the pidfd
    // cannot name a newer process that was given the same number.
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    let exited = pidfd(child.id())?;
    if readable_within(exited.as_fd(), Some(within))? {
        child.wait().map(Some)
    } else {
        Ok(None)
    }
}

/// Like [`exit_within`], but a child that has not exited by then, or that
/// cannot be waited on, is killed: for ending what a test started, however
/// it went.
pub fn exit_or_kill(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    match exit_within(child, within) {
        Ok(Some(status)) => Some(status),
        Ok(None) | Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn an_exit_is_seen_when_it_happens_and_not_before() {
        let mut child = Command::new("cat").stdin(Stdio::piped()).spawn().expect("start cat");
        assert_eq!(exit_within(&mut child, Duration::ZERO).unwrap(), None, "cat ended with its stdin open");
        drop(child.stdin.take());
        let status = exit_within(&mut child, Duration::from_secs(10)).unwrap();
        assert!(status.is_some_and(|s| s.success()), "cat did not end with its stdin: {status:?}");
    }

    #[test]
    fn a_pidfd_turns_readable_at_the_exit() {
        let mut child = Command::new("cat").stdin(Stdio::piped()).spawn().expect("start cat");
        let exited = pidfd(child.id()).unwrap();
        assert!(!readable_within(exited.as_fd(), Some(Duration::ZERO)).unwrap());
        drop(child.stdin.take());
        assert!(readable_within(exited.as_fd(), Some(Duration::from_secs(10))).unwrap(), "no exit seen");
        child.wait().unwrap();
    }
}
