//! Ending the orphaned trees for good, all of them together.
//!
//! Signalling a tree process by process races with it: the launch script's
//! keep-alive loop can fork its next `sleep 180` between two signals, and
//! that sleep escapes to init. So the trees are frozen first (SIGSTOP), the
//! children forked in the meantime are swept in, and only then are they
//! told to stop (SIGTERM, SIGCONT). Whatever is left when the grace period
//! runs out is frozen and swept again, then killed.
//!
//! The work is bounded by the node, not by the number of trees: every tree
//! shares one grace period, one `poll(2)` waits for all their processes
//! (pidfds), and one pass over /proc finds new descendants for all of them,
//! at most every [`SWEEP_EVERY`] and at most a fifth of the time. No thread
//! is started, so a user with ten thousand fake servers cannot exhaust
//! them, and nothing here panics.
//!
//! Pids are reused, and a scan may be seconds old by the time a signal goes
//! out: each process is pinned (`vscode_slurm_procfs::Pinned`) while its
//! start time still matches the scan, so a signal can only ever reach that
//! process.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use vscode_slurm_procfs::{pids, poll_exited, read_children, read_stat, read_uids, Pinned};

use crate::jobs::{read_cgroups_of, NodeJobs};
use crate::judge::Member;
use crate::process::Job;

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

/// One tree to end: the owner's processes the scan found, and the owner.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub members: &'a [Member],
    pub uid: u32,
}

/// Forks announce nothing, so while processes ignore SIGTERM the trees are
/// swept for new children at most this often.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// A sweep reads every process's stat: the next one waits at least this
/// many times as long as the last took, so sweeping never takes more than
/// a fifth of a core however many processes the node has.
const SWEEP_DUTY: u32 = 4;
/// Exits come in bursts after a signal to thousands of processes: looking
/// at most this often bounds the passes over their descriptors.
const EXIT_POLL_GAP: Duration = Duration::from_millis(10);
/// SIGKILL cannot be refused, but a process in uninterruptible sleep (a hung
/// NFS home) takes its time; past this it is reported as a survivor.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// A fork bomb could keep the sweep going forever.
const SWEEP_ROUNDS: usize = 50;
/// Descriptors left free, whatever the pidfds take: reading /proc (a file
/// and a directory listing at a time), the log, the notes.
const DESCRIPTORS_KEPT: usize = 64;

struct Handle {
    pinned: Pinned,
    /// Index of its tree in the targets.
    tree: usize,
    alive: bool,
}

/// `--grace` can be any duration the grammar reads (`100000d`): past what
/// `Instant` can hold, waiting is as good as forever, and must not panic.
fn after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait).or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400))).unwrap_or(now)
}

/// How many pidfds a run may hold. The open-file limit is raised to the
/// hard limit first (ten thousand trees need more than a cron job's usual
/// 1024); what is already open and [`DESCRIPTORS_KEPT`] are left free, for
/// a process pinned with the last descriptor could not be looked at in
/// /proc any more. Past the budget, processes are pinned by start time.
fn pidfd_budget() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `limit`, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads `raised`, which outlives the call. On
        // failure the old limit stays, and the budget is taken from it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let Ok(open) = fs::read_dir("/proc/self/fd").map(Iterator::count) else { return 0 };
    usize::try_from(limit.rlim_cur)
        .unwrap_or(usize::MAX)
        .saturating_sub(open)
        .saturating_sub(DESCRIPTORS_KEPT)
}

/// Ends every target and any child its processes fork while being ended;
/// SIGKILL for what is left after `grace`. One result per target, in order.
/// `jobs` judges the children found meanwhile, as the scan judged the rest.
pub fn end_trees(targets: &[Target<'_>], jobs: &NodeJobs, grace: Duration) -> Vec<Reaped> {
    let budget = if targets.is_empty() { 0 } else { pidfd_budget() };
    end_trees_within(targets, jobs, grace, budget)
}

/// [`end_trees`] holding at most `pidfd_budget` pidfds.
fn end_trees_within(
    targets: &[Target<'_>],
    jobs: &NodeJobs,
    grace: Duration,
    pidfd_budget: usize,
) -> Vec<Reaped> {
    let mut reaped = vec![Reaped::default(); targets.len()];
    let mut ending = Ending { targets, jobs, handles: Vec::new(), last_poll: None, pidfd_budget };
    for (tree, target) in targets.iter().enumerate() {
        for member in target.members {
            // The pin holds whatever process has the pid now: make sure it is the scanned one.
            let pinned =
                ending.pin(member.pid).filter(|p| p.start_ticks() == member.start_ticks && p.is_alive());
            match pinned {
                Some(pinned) => ending.hold(pinned, tree),
                None => {
                    if let Some(r) = reaped.get_mut(tree) {
                        r.already_gone += 1;
                    }
                }
            }
        }
    }

    ending.signal(libc::SIGSTOP);
    ending.sweep_until_quiet(libc::SIGSTOP);
    ending.signal(libc::SIGTERM);
    ending.signal(libc::SIGCONT);

    let deadline = after(grace);
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    loop {
        let now = Instant::now();
        if now >= next_sweep {
            // A process that ignores SIGTERM may still fork; its children get it too.
            ending.sweep(libc::SIGTERM);
            next_sweep = Instant::now() + SWEEP_EVERY.max(now.elapsed().saturating_mul(SWEEP_DUTY));
        }
        let now = Instant::now();
        if !ending.any_alive() || now >= deadline {
            break;
        }
        ending.wait_exits(deadline.min(next_sweep).saturating_duration_since(now));
    }

    if ending.any_alive() {
        ending.signal(libc::SIGSTOP);
        ending.sweep_until_quiet(libc::SIGSTOP);
        for h in ending.handles.iter().filter(|h| h.alive) {
            if let Some(r) = reaped.get_mut(h.tree) {
                r.needed_sigkill += 1;
            }
        }
        ending.signal(libc::SIGKILL);
        let deadline = Instant::now() + KILL_WAIT;
        while ending.any_alive() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            ending.wait_exits(left);
        }
    }
    for h in &ending.handles {
        if let Some(r) = reaped.get_mut(h.tree) {
            r.signalled += 1;
            if h.alive {
                r.survivors.push(h.pinned.pid());
            }
        }
    }
    reaped
}

struct Ending<'a> {
    targets: &'a [Target<'a>],
    jobs: &'a NodeJobs,
    handles: Vec<Handle>,
    last_poll: Option<Instant>,
    /// Handles this run may still pin with a pidfd (`pidfd_budget`).
    pidfd_budget: usize,
}

impl Ending<'_> {
    /// None when there is no process `pid`. A pin that is not held is
    /// dropped, and its descriptor with it.
    fn pin(&self, pid: i32) -> Option<Pinned> {
        if self.pidfd_budget == 0 {
            return Pinned::open_without_pidfd(pid);
        }
        Pinned::open(pid)
    }

    /// Keeps `pinned` as a process of `tree` to end.
    fn hold(&mut self, pinned: Pinned, tree: usize) {
        self.pidfd_budget = self.pidfd_budget.saturating_sub(1);
        self.handles.push(Handle { pinned, tree, alive: true });
    }

    fn any_alive(&self) -> bool {
        self.handles.iter().any(|h| h.alive)
    }

    /// Delivery is not checked beyond "gone": whether a process is gone is
    /// looked at afterwards anyway.
    fn signal(&mut self, signal: i32) {
        for h in self.handles.iter_mut().filter(|h| h.alive) {
            if let Err(e) = h.pinned.signal(signal) {
                if e.raw_os_error() == Some(libc::ESRCH) {
                    h.alive = false;
                }
            }
        }
    }

    /// Waits up to `timeout` for some living process to exit, and notes every one that has.
    fn wait_exits(&mut self, timeout: Duration) {
        let started = Instant::now();
        if let Some(last) = self.last_poll {
            let gap = EXIT_POLL_GAP.saturating_sub(last.elapsed()).min(timeout);
            if !gap.is_zero() {
                // allow-sleep: coalesces a burst of exits into one pass over
                // thousands of descriptors instead of one pass per exit.
                thread::sleep(gap);
            }
        }
        let timeout = timeout.saturating_sub(started.elapsed());
        let living: Vec<usize> =
            (0..self.handles.len()).filter(|&i| self.handles.get(i).is_some_and(|h| h.alive)).collect();
        let pinned: Vec<&Pinned> =
            living.iter().filter_map(|&i| self.handles.get(i)).map(|h| &h.pinned).collect();
        let exited = poll_exited(&pinned, timeout);
        self.last_poll = Some(Instant::now());
        for (i, gone) in living.into_iter().zip(exited) {
            if let Some(h) = self.handles.get_mut(i).filter(|_| gone) {
                h.alive = false;
            }
        }
    }

    fn sweep_until_quiet(&mut self, signal: i32) {
        for _ in 0..SWEEP_ROUNDS {
            if !self.sweep(signal) {
                return;
            }
        }
    }

    /// One pass over /proc: every descendant of a living process of a tree
    /// that is the tree owner's, outside any job, and not handled yet is
    /// pinned, sent `signal` and added to its tree, parents first. True when
    /// one was found.
    ///
    /// Descendants, not only children: the pass reads every process's
    /// parent once and follows whole chains from that one snapshot, so a
    /// chain that forks a new generation faster than /proc can be read
    /// (each process starting the next, then becoming something else) is
    /// caught whole, not a generation per pass.
    fn sweep(&mut self, signal: i32) -> bool {
        // pid -> handle, for the processes of the trees that are alive.
        let living: HashMap<i32, usize> = self
            .handles
            .iter()
            .enumerate()
            .filter(|(_, h)| h.alive)
            .map(|(i, h)| (h.pinned.pid(), i))
            .collect();
        let Ok(all) = pids() else { return false };
        let mut children: HashMap<i32, Vec<(i32, u64)>> = HashMap::new();
        for pid in all.into_iter().filter(|p| !living.contains_key(p)) {
            if let Some(stat) = read_stat(pid).filter(|s| !s.exited()) {
                children.entry(stat.ppid).or_default().push((pid, stat.start_ticks));
            }
        }
        // (parent, its tree): the handles first, then what this pass adds. A
        // handle that is still alive now held its pid while the snapshot was
        // read, so the children the snapshot gives it are its own, not those
        // of a later process that got its pid.
        let mut queue: Vec<(i32, usize)> = living
            .into_iter()
            .filter(|(pid, _)| children.contains_key(pid))
            .filter_map(|(pid, i)| self.handles.get(i).filter(|h| h.pinned.is_alive()).map(|h| (pid, h.tree)))
            .collect();
        let mut added: Vec<(i32, usize)> = Vec::new();
        while let Some((parent, tree)) = queue.pop() {
            for (pid, start_ticks) in children.remove(&parent).unwrap_or_default() {
                if let Some(pinned) = self.take_in(pid, start_ticks, tree) {
                    let _ = pinned.signal(signal);
                    self.hold(pinned, tree);
                    queue.push((pid, tree));
                    added.push((pid, tree));
                }
            }
        }
        // What was just added may have forked after the snapshot, and a
        // chain may be forking still: follow it by its children lists (a few
        // reads per generation, where a pass reads every process) until it
        // is caught. The next pass checks.
        let found = !added.is_empty();
        let mut known: HashSet<i32> =
            self.handles.iter().filter(|h| h.alive).map(|h| h.pinned.pid()).collect();
        while let Some((parent, tree)) = added.pop() {
            let Ok(kids) = read_children(parent) else { continue };
            for pid in kids {
                if known.contains(&pid) {
                    continue;
                }
                let Some(stat) = read_stat(pid).filter(|s| s.ppid == parent && !s.exited()) else { continue };
                if let Some(pinned) = self.take_in(pid, stat.start_ticks, tree) {
                    let _ = pinned.signal(signal);
                    self.hold(pinned, tree);
                    known.insert(pid);
                    added.push((pid, tree));
                }
            }
        }
        found
    }

    /// Pins `pid`, seen in the snapshot started at `start_ticks`, when it
    /// is still that process and belongs in `tree`: the owner's, real and
    /// effective, and outside any job.
    fn take_in(&self, pid: i32, start_ticks: u64, tree: usize) -> Option<Pinned> {
        let owner = self.targets.get(tree)?.uid;
        let pinned = self.pin(pid).filter(|p| p.start_ticks() == start_ticks)?;
        // Read after pinning: what is read now is the pinned process or a
        // later one with another start time.
        let uids = read_uids(pid)?;
        if uids.real != owner || uids.effective != owner {
            return None;
        }
        // Below a tree member, so outside every slurmstepd's tree; only its
        // cgroups can still put it in a job.
        if self.jobs.in_cgroups()
            && self.jobs.by_cgroups(read_cgroups_of(pid, start_ticks).as_ref()) != Job::Outside
        {
            return None;
        }
        (read_stat(pid)?.start_ticks == start_ticks).then_some(pinned)
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

    /// `count` trees of two processes, a shell and its child, that both
    /// ignore SIGTERM: the shells, and each tree's members.
    fn stubborn_trees(count: usize) -> (Vec<Child>, Vec<Vec<Member>>) {
        let shells: Vec<Child> = (0..count).map(|_| start("trap '' TERM; sleep 60 & wait")).collect();
        let trees = shells
            .iter()
            .map(|sh| {
                let kids = children_once_started(sh.id() as i32, 1);
                std::iter::once(sh.id() as i32).chain(kids).map(member).collect()
            })
            .collect();
        (shells, trees)
    }

    fn gone(pid: i32) -> bool {
        read_stat(pid).is_none_or(|s| s.state == 'Z')
    }

    fn end_tree(members: &[Member], grace: Duration) -> Reaped {
        let mut all = end_trees(&[Target { members, uid: me() }], &NodeJobs::default(), grace);
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    #[test]
    fn ends_a_tree_with_sigterm_and_does_not_wait_out_the_grace() {
        let mut sh = start("sleep 60 & sleep 60 & wait");
        let kids = children_once_started(sh.id() as i32, 2);
        let mut members = vec![member(sh.id() as i32)];
        members.extend(kids.iter().map(|k| member(*k)));
        let t0 = Instant::now();
        let reaped = end_tree(&members, Duration::from_secs(20));
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
        let reaped = end_tree(&members, Duration::from_millis(500));
        assert!(t0.elapsed() >= Duration::from_millis(500));
        // The sleeps inherit the ignored SIGTERM: all three needed SIGKILL.
        assert_eq!(reaped.needed_sigkill, 3, "{reaped:?}");
        assert!(reaped.ended());
        let _ = sh.wait();
    }

    #[test]
    fn children_forked_while_ending_are_ended_too() {
        // A loop that survives SIGTERM and keeps forking, like a launch
        // script's keep-alive loop; its sleeps inherit the ignored SIGTERM.
        // Besides the sleep running when it is frozen, the grace period sees
        // it fork more (two, on an idle machine), each swept in as it comes.
        let mut sh = start("trap '' TERM; while :; do sleep 0.5; done");
        children_once_started(sh.id() as i32, 1);
        let reaped = end_tree(&[member(sh.id() as i32)], Duration::from_millis(1_500));
        assert!(reaped.ended(), "{reaped:?}");
        assert!(reaped.signalled >= 3, "the loop's sleeps were not swept in: {reaped:?}");
        let _ = sh.wait();
    }

    #[test]
    fn a_chain_forking_faster_than_proc_is_read_is_caught_whole() {
        // Each link starts the next and becomes a sleep that ignores SIGTERM:
        // a new generation every few milliseconds (at most 2000 of them).
        let dir = std::env::temp_dir().join(format!("janitor-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sleep = dir.join("sleep");
        std::fs::copy("/bin/sleep", &sleep).unwrap();
        let link = dir.join("link.sh");
        std::fs::write(
            &link,
            "trap '' TERM\nif [ \"$1\" -gt 0 ]; then sh \"$0\" $(($1 - 1)) & fi\nexec \"$SLEEP\" 60\n",
        )
        .unwrap();
        let mut head = Command::new("sh").arg(&link).arg("2000").env("SLEEP", &sleep).spawn().expect("sh");
        let marker = dir.to_string_lossy().into_owned();
        let ours = || -> Vec<i32> {
            pids()
                .unwrap()
                .into_iter()
                .filter(|p| !gone(*p))
                .filter(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while ours().len() < 50 {
            assert!(Instant::now() < deadline, "the chain did not grow");
            // allow-sleep: nothing announces that the chain has grown.
            std::thread::sleep(Duration::from_millis(10));
        }
        let reaped = end_tree(&[member(head.id() as i32)], Duration::from_millis(300));
        let _ = head.wait();
        let left = ours();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(reaped.ended(), "{reaped:?}");
        assert!(reaped.signalled >= 50, "{reaped:?}");
        assert_eq!(left, Vec::<i32>::new(), "links escaped: {reaped:?}");
    }

    #[test]
    fn past_the_descriptor_budget_processes_are_ended_all_the_same() {
        // Three of the twelve pinned with pidfds, the rest by start time, as
        // when ten thousand trees meet an open-file limit.
        let (mut shells, trees) = stubborn_trees(6);
        let targets: Vec<Target<'_>> = trees.iter().map(|m| Target { members: m, uid: me() }).collect();
        let reaped = end_trees_within(&targets, &NodeJobs::default(), Duration::from_millis(300), 3);
        for r in &reaped {
            assert_eq!((r.signalled, r.needed_sigkill, r.ended()), (2, 2, true), "{r:?}");
        }
        for sh in &mut shells {
            let _ = sh.wait();
        }
        assert!(trees.iter().flatten().all(|m| gone(m.pid)));
    }

    #[test]
    fn a_reused_or_vanished_pid_is_not_signalled() {
        let mut sh = Command::new("sleep").arg("60").spawn().expect("sleep");
        let pid = sh.id() as i32;
        let real = member(pid);
        let stale = Member { pid, start_ticks: real.start_ticks.wrapping_sub(1) };
        let reaped = end_tree(&[stale], Duration::from_millis(100));
        assert_eq!(reaped, Reaped { already_gone: 1, ..Reaped::default() });
        assert!(!gone(pid), "a process with another start time was signalled");
        let _ = sh.kill();
        let _ = sh.wait();
        let reaped = end_tree(&[real], Duration::from_millis(100));
        assert_eq!(reaped.already_gone, 1);
    }

    #[test]
    fn many_trees_share_one_grace_period() {
        // Twenty trees, each with a process that ignores SIGTERM: one grace
        // period for all of them, not one after another, and each tree's own result.
        let (mut shells, trees) = stubborn_trees(20);
        let targets: Vec<Target<'_>> = trees.iter().map(|m| Target { members: m, uid: me() }).collect();
        let t0 = Instant::now();
        let reaped = end_trees(&targets, &NodeJobs::default(), Duration::from_millis(600));
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(4), "took {took:?}");
        assert_eq!(reaped.len(), 20);
        for r in &reaped {
            assert_eq!((r.signalled, r.needed_sigkill, r.ended()), (2, 2, true), "{r:?}");
        }
        for sh in &mut shells {
            let _ = sh.wait();
        }
        assert!(end_trees(&[], &NodeJobs::default(), Duration::MAX).is_empty(), "no panic, no wait");
    }
}
