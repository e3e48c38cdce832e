//! Signalling a process, never a later one that got its pid.
//!
//! Pids are reused, and a scan may be seconds old by the time a signal goes
//! out. A pidfd (Linux 5.3) refers to one process for as long as it is held:
//! a signal through it reaches that process or fails with `ESRCH`, and it
//! becomes readable when that process exits, which is the event waited for
//! here. On older kernels, or without a free descriptor, the start time is
//! compared again right before `kill(2)` (a small window remains), and exits
//! are learnt by looking at /proc again.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use crate::stat::read_stat;

/// How often a process without a pidfd is looked at again while waiting
/// for it to exit.
const RECHECK: Duration = Duration::from_millis(50);

/// A process pinned by [`Pinned::open`].
#[derive(Debug)]
pub struct Pinned {
    pid: i32,
    start_ticks: u64,
    pidfd: Option<OwnedFd>,
}

impl Pinned {
    /// Pins the process that has `pid` now; None when there is none.
    ///
    /// Whatever is read about `pid` afterwards describes the pinned process
    /// or a successor, and a successor is out of reach of the pin: check
    /// what decides whether to signal (uid, environment, the start time of
    /// a scan) after this, not before.
    pub fn open(pid: i32) -> Option<Pinned> {
        // 0 and negative pids name groups of processes for kill(2).
        if pid <= 0 {
            return None;
        }
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return None,
            // ENOSYS before Linux 5.3; EMFILE when out of descriptors.
            Err(_) => None,
        };
        let start_ticks = read_stat(pid)?.start_ticks;
        Some(Pinned { pid, start_ticks, pidfd })
    }

    /// Pins by start time alone, holding no descriptor: for a caller that
    /// pins thousands of processes and must keep descriptors free to read
    /// /proc with. A signal then compares the start time right before
    /// `kill(2)`, and exits are learnt from /proc, as on kernels without
    /// pidfds.
    pub fn open_without_pidfd(pid: i32) -> Option<Pinned> {
        if pid <= 0 {
            return None;
        }
        let start_ticks = read_stat(pid)?.start_ticks;
        Some(Pinned { pid, start_ticks, pidfd: None })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// For waiting on many processes in one `poll(2)` (`exits.rs`).
    pub(crate) fn pidfd(&self) -> Option<&OwnedFd> {
        self.pidfd.as_ref()
    }

    /// A pin as on a kernel without pidfds, for tests of the fallback.
    #[cfg(test)]
    pub(crate) fn without_pidfd(pid: i32, start_ticks: u64) -> Pinned {
        Pinned { pid, start_ticks, pidfd: None }
    }

    /// Compared with a scan's start time, tells whether the pinned process
    /// is the one that was scanned.
    pub fn start_ticks(&self) -> u64 {
        self.start_ticks
    }

    /// False once the process has exited, zombies included: a zombie only
    /// waits for its parent and cannot be ended any further.
    pub fn is_alive(&self) -> bool {
        if let Some(fd) = &self.pidfd {
            let mut fds = [pollfd(fd)];
            if let Ok(ready) = poll(&mut fds, Duration::ZERO) {
                if ready == 0 {
                    return true;
                }
                if fds.iter().any(|p| p.revents & (libc::POLLIN | libc::POLLHUP) != 0) {
                    return false;
                }
            }
        }
        read_stat(self.pid).is_some_and(|s| s.start_ticks == self.start_ticks && !s.exited())
    }

    /// `ESRCH` when the pinned process is gone, even if its pid is in use again.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        if let Some(fd) = &self.pidfd {
            return pidfd_send_signal(fd, signal);
        }
        if read_stat(self.pid).map(|s| s.start_ticks) != Some(self.start_ticks) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: kill has no memory-safety preconditions; `pid` is positive
        // (checked in `open`), so it names one process, never a group.
        if unsafe { libc::kill(self.pid, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Returns once every one of `processes` has exited (true) or after
/// `timeout` (false). Exits are awaited on the pidfds; processes without
/// one are looked at again every 50 ms.
pub fn wait_all_exited(processes: &[Pinned], timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        let living: Vec<&Pinned> = processes.iter().filter(|p| p.is_alive()).collect();
        if living.is_empty() {
            return true;
        }
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return false;
        }
        let mut fds: Vec<libc::pollfd> = living.iter().filter_map(|p| p.pidfd.as_ref()).map(pollfd).collect();
        let step = if fds.len() == living.len() { left } else { left.min(RECHECK) };
        let waited = !fds.is_empty()
            && match poll(&mut fds, step) {
                Ok(_) => true,
                Err(e) => e.kind() == io::ErrorKind::Interrupted,
            };
        if !waited {
            // allow-sleep: none of these processes has a pidfd to wait on (or
            // poll failed), and nothing else announces that a process exited;
            // /proc is looked at again after this.
            thread::sleep(step);
        }
    }
}

pub(crate) fn pollfd(fd: &OwnedFd) -> libc::pollfd {
    libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }
}

/// How many of `fds` are ready, waiting up to `timeout` (rounded up to the
/// millisecond, so a short wait is not a busy loop).
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let millis = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    let count = libc::nfds_t::try_from(fds.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `fds` is a live, exclusively borrowed array of `count` pollfd
    // structures for the whole call, and poll writes only their `revents`.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, millis) };
    usize::try_from(ready).map_err(|_| io::Error::last_os_error())
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags (none) and returns a new
    // descriptor (close-on-exec) or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_send_signal(fd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    let info: *const libc::siginfo_t = std::ptr::null();
    // SAFETY: a pidfd we own, a signal number, a null siginfo (the kernel
    // fills in one as for kill(2)) and no flags.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), signal, info, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().expect("sleep")
    }

    fn pid(child: &Child) -> i32 {
        i32::try_from(child.id()).unwrap()
    }

    #[test]
    fn a_pinned_process_is_signalled_and_seen_to_exit() {
        let mut child = sleeper();
        let pinned = Pinned::open(pid(&child)).expect("pinned");
        assert_eq!(pinned.pid(), pid(&child));
        assert_eq!(Some(pinned.start_ticks()), read_stat(pid(&child)).map(|s| s.start_ticks));
        assert!(pinned.is_alive());
        assert!(!wait_all_exited(std::slice::from_ref(&pinned), Duration::from_millis(20)));
        pinned.signal(libc::SIGTERM).expect("delivered");
        // Not reaped yet: a zombie has exited all the same.
        assert!(wait_all_exited(std::slice::from_ref(&pinned), Duration::from_secs(10)));
        assert!(!pinned.is_alive());
        child.wait().unwrap();
        let err = pinned.signal(libc::SIGTERM).expect_err("gone");
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn without_a_pidfd_the_start_time_guards_the_pid() {
        let mut child = sleeper();
        let real = Pinned::open(pid(&child)).expect("pinned");
        let stale = Pinned { pid: real.pid, start_ticks: real.start_ticks.wrapping_sub(1), pidfd: None };
        assert!(!stale.is_alive());
        assert_eq!(stale.signal(libc::SIGKILL).map_err(|e| e.raw_os_error()), Err(Some(libc::ESRCH)));
        assert!(real.is_alive(), "a process with another start time was signalled");
        let by_pid = Pinned { pidfd: None, ..real };
        assert!(by_pid.is_alive());
        by_pid.signal(libc::SIGKILL).expect("delivered");
        assert!(wait_all_exited(std::slice::from_ref(&by_pid), Duration::from_secs(10)));
        child.wait().unwrap();
    }

    #[test]
    fn waiting_ends_when_the_last_one_exits() {
        let mut quick =
            Command::new("sh").args(["-c", "read line; exit 0"]).stdin(Stdio::piped()).spawn().expect("sh");
        let mut slow = sleeper();
        let both = [Pinned::open(pid(&quick)).unwrap(), Pinned::open(pid(&slow)).unwrap()];
        drop(quick.stdin.take());
        assert!(!wait_all_exited(&both, Duration::from_millis(200)), "the sleeper is still there");
        assert!(!both[0].is_alive() && both[1].is_alive());
        both[1].signal(libc::SIGKILL).unwrap();
        let t0 = Instant::now();
        assert!(wait_all_exited(&both, Duration::from_secs(10)));
        assert!(t0.elapsed() < Duration::from_secs(5));
        quick.wait().unwrap();
        slow.wait().unwrap();
    }

    #[test]
    fn a_pin_without_a_descriptor_still_guards_the_pid() {
        let mut child = sleeper();
        let pinned = Pinned::open_without_pidfd(pid(&child)).expect("pinned");
        assert!(pinned.pidfd.is_none());
        assert!(pinned.is_alive());
        pinned.signal(libc::SIGKILL).expect("delivered");
        assert!(wait_all_exited(std::slice::from_ref(&pinned), Duration::from_secs(10)));
        child.wait().unwrap();
        assert_eq!(pinned.signal(libc::SIGKILL).map_err(|e| e.raw_os_error()), Err(Some(libc::ESRCH)));
        assert!(Pinned::open_without_pidfd(0).is_none() && Pinned::open_without_pidfd(-1).is_none());
    }

    #[test]
    fn nothing_is_pinned_for_group_pids_or_gone_processes() {
        assert!(Pinned::open(0).is_none());
        assert!(Pinned::open(-1).is_none());
        let mut child = Command::new("true").spawn().expect("true");
        let gone = pid(&child);
        child.wait().unwrap();
        assert!(Pinned::open(gone).is_none());
        assert!(wait_all_exited(&[], Duration::from_secs(10)));
    }
}
