//! Waiting for thousands of pinned processes at once.
//!
//! [`crate::wait_all_exited`] looks at each process with a system call of
//! its own every time one of them exits: fine for a job's few leftovers,
//! quadratic for the janitor's thousands. Here one `poll(2)` covers all
//! of them and tells at once which have exited.

use std::thread;
use std::time::Duration;

use crate::pidfd::{poll, pollfd, Pinned};

/// How often processes without a pidfd (before Linux 5.3, or out of
/// descriptors) are looked at again while waiting.
const RECHECK: Duration = Duration::from_millis(50);

/// Which of `processes` have exited (zombies included), waiting up to
/// `timeout` for at least one to exit; `result[i]` is about `processes[i]`.
/// Returns early, with nothing new, when a signal interrupts the wait.
pub fn poll_exited(processes: &[&Pinned], timeout: Duration) -> Vec<bool> {
    // Those without a pidfd cannot be waited on: if one is already gone, do not wait at all.
    let gone_without_pidfd = processes.iter().any(|p| p.pidfd().is_none() && !p.is_alive());
    let mut fds: Vec<libc::pollfd> = processes.iter().filter_map(|p| p.pidfd()).map(pollfd).collect();
    let all_have_pidfds = fds.len() == processes.len();
    let wait = if gone_without_pidfd {
        Duration::ZERO
    } else if all_have_pidfds {
        timeout
    } else {
        timeout.min(RECHECK)
    };
    let polled = if fds.is_empty() {
        if !wait.is_zero() {
            // allow-sleep: none of these processes has a pidfd to wait on,
            // and nothing else announces an exit; /proc is looked at after this.
            thread::sleep(wait);
        }
        false
    } else {
        poll(&mut fds, wait).is_ok()
    };
    let mut ready = fds.iter();
    processes
        .iter()
        .map(|p| match p.pidfd() {
            Some(_) => {
                let revents = ready.next().map_or(0, |fd| fd.revents);
                if !polled || revents & (libc::POLLNVAL | libc::POLLERR) != 0 {
                    // Interrupted, or the descriptor is not one poll understands: ask /proc.
                    !p.is_alive()
                } else {
                    revents & (libc::POLLIN | libc::POLLHUP) != 0
                }
            }
            None => !p.is_alive(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::time::Instant;

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().expect("sleep")
    }

    fn pin(child: &Child) -> Pinned {
        Pinned::open(i32::try_from(child.id()).unwrap()).expect("pinned")
    }

    #[test]
    fn says_which_exited_in_one_wait() {
        let mut children: Vec<Child> = (0..3).map(|_| sleeper()).collect();
        let pinned: Vec<Pinned> = children.iter().map(pin).collect();
        let all: Vec<&Pinned> = pinned.iter().collect();
        let t0 = Instant::now();
        assert_eq!(poll_exited(&all, Duration::from_millis(100)), vec![false, false, false]);
        assert!(t0.elapsed() >= Duration::from_millis(90), "returned before the timeout");
        pinned[0].signal(libc::SIGKILL).unwrap();
        pinned[2].signal(libc::SIGKILL).unwrap();
        let mut seen = vec![false; 3];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(seen[0] && seen[2]) && Instant::now() < deadline {
            for (s, now) in seen.iter_mut().zip(poll_exited(&all, Duration::from_secs(10))) {
                *s |= now;
            }
        }
        assert_eq!(seen, vec![true, false, true]);
        pinned[1].signal(libc::SIGKILL).unwrap();
        for child in &mut children {
            child.wait().unwrap();
        }
        assert_eq!(poll_exited(&all, Duration::from_secs(10)), vec![true, true, true], "reaped too");
        assert_eq!(poll_exited(&[], Duration::ZERO), Vec::<bool>::new());
    }

    #[test]
    fn without_pidfds_proc_is_asked() {
        let mut child = sleeper();
        let real = pin(&child);
        let bare = Pinned::without_pidfd(real.pid(), real.start_ticks());
        assert_eq!(poll_exited(&[&bare], Duration::from_millis(10)), vec![false]);
        bare.signal(libc::SIGKILL).unwrap();
        child.wait().unwrap();
        let t0 = Instant::now();
        assert_eq!(poll_exited(&[&bare, &real], Duration::from_secs(10)), vec![true, true]);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
