//! Ending one tree for good.
//!
//! Signalling a tree process by process races with it: the launch script's
//! keep-alive loop can fork its next `sleep 180` between two signals, and
//! that sleep escapes to init. So the tree is frozen first (SIGSTOP), the
//! children forked in the meantime are swept in, and only then is it told
//! to stop (SIGTERM, SIGCONT). Whatever is left after the grace period is
//! frozen and swept again, then killed.
//!
//! Pids are reused, and a scan may be seconds old by the time a signal goes
//! out: each process is pinned (`vscode_slurm_procfs::Pinned`) while its
//! start time still matches the scan, so a signal can only ever reach that
//! process.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use vscode_slurm_procfs::{pids, read_stat, wait_all_exited, Pinned};

use crate::judge::Member;
use crate::process::JobEnv;
use crate::procfs;

/// Forks announce nothing, so while processes ignore SIGTERM the tree is
/// swept for new children at this interval.
const POLL: Duration = Duration::from_millis(50);
/// SIGKILL cannot be refused, but a process in uninterruptible sleep (a hung
/// NFS home) takes its time; past this it is reported as a survivor.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// A fork bomb could keep the sweep going forever.
const SWEEP_ROUNDS: usize = 50;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Processes signalled, including children found while ending the tree.
    pub signalled: usize,
    /// Gone between the scan and the first signal.
    pub already_gone: usize,
    /// Still there when the grace period ran out.
    pub needed_sigkill: usize,
    /// Still there even after SIGKILL.
    pub survivors: Vec<i32>,
}

impl Reaped {
    pub fn ended(&self) -> bool {
        self.survivors.is_empty()
    }
}

/// None when the process is gone or the pid now belongs to another process.
fn pin(member: Member) -> Option<Pinned> {
    // The pin holds whatever process has the pid now: make sure it is the scanned one.
    Pinned::open(member.pid).filter(|p| p.start_ticks() == member.start_ticks && p.is_alive())
}

/// Delivery is not checked: a process that is gone has nothing left to end,
/// and whether it is gone is looked at afterwards.
fn signal_all(handles: &[Pinned], signal: i32) {
    for h in handles {
        let _ = h.signal(signal);
    }
}

/// Ends `members` (the owner's processes of one tree) and any child they
/// fork while being ended; SIGKILL for what is left after `grace`.
pub fn end_tree(members: &[Member], owner_uid: u32, grace: Duration) -> Reaped {
    let mut handles: Vec<Pinned> = members.iter().filter_map(|m| pin(*m)).collect();
    let mut reaped = Reaped { already_gone: members.len() - handles.len(), ..Reaped::default() };

    signal_all(&handles, libc::SIGSTOP);
    sweep_children(&mut handles, owner_uid, libc::SIGSTOP);
    signal_all(&handles, libc::SIGTERM);
    signal_all(&handles, libc::SIGCONT);

    let mut signalled: HashSet<i32> = handles.iter().map(Pinned::pid).collect();
    let started = Instant::now();
    loop {
        // A process that ignores SIGTERM may still fork; its children get it too.
        sweep_children(&mut handles, owner_uid, libc::SIGTERM);
        signalled.extend(handles.iter().map(Pinned::pid));
        handles.retain(Pinned::is_alive);
        let left = grace.saturating_sub(started.elapsed());
        if handles.is_empty() || left.is_zero() {
            break;
        }
        wait_all_exited(&handles, POLL.min(left));
    }

    if !handles.is_empty() {
        signal_all(&handles, libc::SIGSTOP);
        sweep_children(&mut handles, owner_uid, libc::SIGSTOP);
        signalled.extend(handles.iter().map(Pinned::pid));
        reaped.needed_sigkill = handles.len();
        signal_all(&handles, libc::SIGKILL);
        wait_all_exited(&handles, KILL_WAIT);
        handles.retain(Pinned::is_alive);
    }
    reaped.signalled = signalled.len();
    reaped.survivors = handles.iter().map(Pinned::pid).collect();
    reaped
}

/// Adds the owner's children of living handles that are not handled yet,
/// sending each `signal`, until a round finds none.
fn sweep_children(handles: &mut Vec<Pinned>, owner_uid: u32, signal: i32) {
    for _ in 0..SWEEP_ROUNDS {
        let parents: HashSet<i32> = handles.iter().filter(|h| h.is_alive()).map(Pinned::pid).collect();
        let known: HashSet<i32> = handles.iter().map(Pinned::pid).collect();
        let (Ok(all), Ok(clock)) = (pids(), procfs::Clock::now()) else { return };
        let mut found = false;
        for pid in all.into_iter().filter(|p| !known.contains(p)) {
            if !read_stat(pid).is_some_and(|s| parents.contains(&s.ppid)) {
                continue;
            }
            let Some(p) = procfs::read_process(pid, &clock) else { continue };
            if p.uid != owner_uid || p.euid != owner_uid || p.job != JobEnv::Outside || p.zombie {
                continue;
            }
            if let Some(h) = pin(Member { pid, start_ticks: p.start_ticks }) {
                let _ = h.signal(signal);
                handles.push(h);
                found = true;
            }
        }
        if !found {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn member(pid: i32) -> Member {
        let stat = read_stat(pid).expect("process exists");
        Member { pid, start_ticks: stat.start_ticks }
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    fn children_of(pid: i32) -> Vec<i32> {
        pids().unwrap().into_iter().filter(|p| read_stat(*p).is_some_and(|s| s.ppid == pid)).collect()
    }

    fn start(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).spawn().expect("sh")
    }

    /// Waits until `pid` has `kids` children.
    fn children_once_started(pid: i32, kids: usize) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = children_of(pid);
            if found.len() >= kids {
                return found;
            }
            assert!(Instant::now() < deadline, "children of {pid} did not start");
            // allow-sleep: a fork announces nothing outside the forking shell; look again.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn gone(pid: i32) -> bool {
        read_stat(pid).is_none_or(|s| s.state == 'Z')
    }

    #[test]
    fn ends_a_tree_with_sigterm_and_does_not_wait_out_the_grace() {
        let mut sh = start("sleep 60 & sleep 60 & wait");
        let kids = children_once_started(sh.id() as i32, 2);
        let mut members = vec![member(sh.id() as i32)];
        members.extend(kids.iter().map(|k| member(*k)));
        let t0 = Instant::now();
        let reaped = end_tree(&members, me(), Duration::from_secs(20));
        assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
        assert_eq!(reaped, Reaped { signalled: 3, ..Reaped::default() });
        assert!(reaped.ended());
        let _ = sh.wait();
        assert!(kids.iter().all(|k| gone(*k)));
    }

    #[test]
    fn sigkill_after_the_grace_for_what_ignores_sigterm() {
        let mut sh = start("trap '' TERM; sleep 60 & sleep 60 & wait");
        let kids = children_once_started(sh.id() as i32, 2);
        let members: Vec<Member> =
            std::iter::once(sh.id() as i32).chain(kids.iter().copied()).map(member).collect();
        let t0 = Instant::now();
        let reaped = end_tree(&members, me(), Duration::from_millis(500));
        assert!(t0.elapsed() >= Duration::from_millis(500));
        // The sleeps inherit the ignored SIGTERM: all three needed SIGKILL.
        assert_eq!(reaped.needed_sigkill, 3, "{reaped:?}");
        assert!(reaped.ended());
        let _ = sh.wait();
    }

    #[test]
    fn children_forked_while_ending_are_ended_too() {
        // A loop that survives SIGTERM and keeps forking, like a launch script's keep-alive loop.
        let mut sh = start("trap '' TERM; while :; do sleep 0.05; done");
        children_once_started(sh.id() as i32, 1);
        let reaped = end_tree(&[member(sh.id() as i32)], me(), Duration::from_millis(400));
        assert!(reaped.ended(), "{reaped:?}");
        assert!(reaped.signalled >= 2, "the loop's sleeps were not swept in: {reaped:?}");
        let _ = sh.wait();
    }

    #[test]
    fn a_reused_or_vanished_pid_is_not_signalled() {
        let mut sh = Command::new("sleep").arg("60").spawn().expect("sleep");
        let pid = sh.id() as i32;
        let real = member(pid);
        let stale = Member { pid, start_ticks: real.start_ticks.wrapping_sub(1) };
        let reaped = end_tree(&[stale], me(), Duration::from_millis(100));
        assert_eq!(reaped, Reaped { already_gone: 1, ..Reaped::default() });
        assert!(!gone(pid), "a process with another start time was signalled");
        let _ = sh.kill();
        let _ = sh.wait();
        let reaped = end_tree(&[real], me(), Duration::from_millis(100));
        assert_eq!(reaped.already_gone, 1);
    }
}
