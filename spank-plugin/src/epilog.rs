//! Job epilog (root, a fresh process on every node of the job): end what a
//! VS Code session left behind and remove the job's runtime directory.
//!
//! The directory is a tmpfs of its own (see `runtime`), so removing it is a
//! lazy unmount and one rmdir, whatever the user left in it: the time and
//! memory it takes do not depend on the tree.
//!
//! With proctrack/linuxproc, servers that daemonised (`setsid nohup ...`)
//! survive the job, and a keep-alive loop can fork a new child between two of
//! Slurm's kill sweeps. Such processes still carry the job's `SLURM_JOB_ID` in
//! their initial environment, so that, together with the job's uid, is what
//! identifies them here. The scan is repeated while waiting so children forked
//! during the grace period are caught too.
//!
//! Everything here is best effort: an epilog error on a `required` plugin
//! drains the node, so problems are logged and the callback still succeeds.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use slurm_spank::{spank_log, LogLevel, SpankHandle};
use vscode_slurm_procfs::{environ_names_job, pids, read_uids, wait_all_exited, Environ, Pinned};

use crate::config::Config;
use crate::runtime::{Base, Missing, Removed};

/// New children announce nothing, so while waiting for processes to exit
/// the epilog scans /proc again at this interval.
const POLL: Duration = Duration::from_millis(100);
/// SIGKILL rounds: each catches what was forked since the previous scan.
const KILL_ROUNDS: usize = 10;
/// Lines about processes that could not be judged, at most.
const MAX_ERROR_LINES: usize = 20;
/// Pids listed per log line; the rest are counted.
const MAX_LISTED_PIDS: usize = 32;

/// The ended job, from Slurm's own records (spank items), never from the
/// environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub id: u32,
    pub uid: u32,
}

/// Whether a process belongs to `job`: the job's user (never root), and
/// its initial environment naming the job (`vscode_slurm_procfs`'s rule,
/// shared with the janitor). `own_pid` is the epilog itself.
pub fn is_job_process(pid: i32, own_pid: i32, real_uid: u32, environ: &[u8], job: &Job) -> bool {
    pid > 0 && pid != own_pid && real_uid != 0 && real_uid == job.uid && environ_names_job(environ, job.id)
}

/// Runs the epilog work; never fails (see the module comment).
pub fn run(spank: &SpankHandle) {
    let job = match (spank.job_id(), spank.job_uid()) {
        (Ok(id), Ok(uid)) => Job { id, uid },
        (Err(e), _) | (_, Err(e)) => {
            log_error(&format!(
                "vscode: epilog: cannot read the job's id or uid from Slurm ({e}); nothing done"
            ));
            return;
        }
    };
    let config = match spank
        .plugin_argv()
        .map_err(|e| format!("vscode: plugstack arguments are not valid UTF-8 ({e}); fix plugstack.conf"))
        .and_then(|args| Config::parse(&args).map_err(|e| e.message().to_owned()))
    {
        Ok(config) => Some(config),
        Err(message) => {
            log_error(&format!(
                "{message} (job {}: ending leftover processes with the default grace; runtime directory left alone)",
                job.id
            ));
            None
        }
    };

    // Three signs that the job used --vscode: the option as salloc/sbatch saw
    // it, the variable the allocator set, or a job directory on this node
    // (only a --vscode step creates one, possibly a nested srun whose option
    // the epilog cannot see).
    let marked = spank.is_option_set(crate::OPTION)
        || std::env::var_os(format!("SPANK_{}", crate::JOB_CONTROL_MARK)).is_some_and(|v| v == "1");
    let base = config.as_ref().and_then(|c| match Base::open(&c.runtime_dir, Missing::Stop) {
        Ok(base) => base,
        Err(e) => {
            // Said only for VS Code jobs: every job on the node ends here.
            if marked {
                log_error(&format!("{} (job {}: runtime directory left alone)", e.message(), job.id));
            }
            None
        }
    });
    if !marked && !base.as_ref().is_some_and(|b| b.has_job(job.id)) {
        return;
    }

    let grace = config.as_ref().map_or_else(|| Config::default().kill_grace, |c| c.kill_grace);
    if job.uid == 0 {
        log_info(&format!("vscode: job {}: owned by root, so no processes are ended", job.id));
    } else {
        let outcome = sweep(&job, grace);
        // A user can make thousands of processes unreadable: the log gets
        // a bounded number of lines about them.
        for line in outcome.scan_errors.iter().take(MAX_ERROR_LINES) {
            log_error(line);
        }
        if outcome.scan_errors.len() > MAX_ERROR_LINES {
            let more = outcome.scan_errors.len() - MAX_ERROR_LINES;
            log_error(&format!("vscode: job {}: and {more} more such lines", job.id));
        }
        for line in outcome.log_lines(&job, grace) {
            log_info(&line);
        }
        if !outcome.survivors.is_empty() {
            log_error(&format!(
                "vscode: job {}: {} of uid {} still running after SIGKILL ({})",
                job.id,
                count(outcome.survivors.len()),
                job.uid,
                list_pids(&outcome.survivors)
            ));
        }
    }

    if let Some(base) = base {
        let started = Instant::now();
        let removed = base.remove_job(job.id);
        let seconds = started.elapsed().as_secs_f64();
        match removed {
            Ok(Removed::Removed { unmounts }) => log_info(&format!(
                "vscode: job {}: removed {} ({unmounts} unmount{}) in {seconds:.3} s",
                job.id,
                base.job_path(job.id).display(),
                if unmounts == 1 { "" } else { "s" }
            )),
            Ok(Removed::Nothing) => {}
            Err(e) => log_error(e.message()),
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    termed: BTreeSet<i32>,
    killed: BTreeSet<i32>,
    survivors: BTreeSet<i32>,
    scan_errors: BTreeSet<String>,
}

impl Outcome {
    fn log_lines(&self, job: &Job, grace: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        if self.termed.is_empty() && self.killed.is_empty() {
            lines.push(format!("vscode: job {}: no processes of uid {} left on this node", job.id, job.uid));
        }
        let after_grace = format!(" still running after {} s", grace.as_secs());
        for (signal, pids, when) in
            [("SIGTERM", &self.termed, ""), ("SIGKILL", &self.killed, after_grace.as_str())]
        {
            if !pids.is_empty() {
                let (id, uid, n, listed) = (job.id, job.uid, count(pids.len()), list_pids(pids));
                lines.push(format!("vscode: job {id}: sent {signal} to {n} of uid {uid}{when} ({listed})"));
            }
        }
        lines
    }
}

/// SIGTERM, wait up to `grace` (catching new children), then SIGKILL.
fn sweep(job: &Job, grace: Duration) -> Outcome {
    let own_pid = i32::try_from(std::process::id()).unwrap_or(0);
    let mut outcome = Outcome::default();
    let started = Instant::now();
    loop {
        let targets = scan(job, own_pid, &mut outcome.scan_errors);
        if targets.is_empty() {
            return outcome;
        }
        for target in &targets {
            if !outcome.termed.contains(&target.pid()) && target.signal(libc::SIGTERM).is_ok() {
                outcome.termed.insert(target.pid());
            }
        }
        let left = grace.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        wait_all_exited(&targets, POLL.min(left));
    }
    for _ in 0..KILL_ROUNDS {
        let targets = scan(job, own_pid, &mut outcome.scan_errors);
        if targets.is_empty() {
            return outcome;
        }
        for target in &targets {
            if target.signal(libc::SIGKILL).is_ok() {
                outcome.killed.insert(target.pid());
            }
        }
        wait_all_exited(&targets, POLL);
    }
    outcome.survivors = scan(job, own_pid, &mut outcome.scan_errors).iter().map(Pinned::pid).collect();
    outcome
}

/// Every live process of `job`, pinned so that a signal can only reach the
/// process that was checked, not a later one that got the same pid.
/// Unreadable entries are skipped: processes come and go while /proc is read.
fn scan(job: &Job, own_pid: i32, errors: &mut BTreeSet<String>) -> Vec<Pinned> {
    match pids() {
        Ok(pids) => pids.into_iter().filter_map(|pid| check(pid, own_pid, job, errors)).collect(),
        Err(e) => {
            errors.insert(format!("vscode: job {}: cannot list /proc: {e}", job.id));
            Vec::new()
        }
    }
}

/// Pins `pid` first, then reads its uid and environment: whatever is read
/// after pinning either describes the pinned process or a successor, and a
/// signal to a successor through the pin fails.
///
/// A process whose environment cannot be read in time (its owner can stall
/// the read, see `vscode_slurm_procfs`) is left alone and named in the log:
/// the epilog must end, whatever the user does.
fn check(pid: i32, own_pid: i32, job: &Job, errors: &mut BTreeSet<String>) -> Option<Pinned> {
    let pinned = Pinned::open(pid)?;
    let uid = read_uids(pid)?.real;
    // Cheap test first: most processes on a node are someone else's.
    if uid != job.uid {
        return None;
    }
    let environ = match Environ::read(pid) {
        Ok(environ) => environ,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            errors.insert(format!(
                "vscode: job {}: the environment of pid {pid} (uid {uid}) could not be read in time; left running",
                job.id
            ));
            return None;
        }
        Err(_) => return None,
    };
    is_job_process(pid, own_pid, uid, environ.as_bytes(), job).then_some(pinned)
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 process".to_owned()
    } else {
        format!("{n} processes")
    }
}

fn list_pids(pids: &BTreeSet<i32>) -> String {
    let mut text = String::from(if pids.len() == 1 { "pid" } else { "pids" });
    for pid in pids.iter().take(MAX_LISTED_PIDS) {
        text.push(' ');
        text.push_str(&pid.to_string());
    }
    if pids.len() > MAX_LISTED_PIDS {
        text.push_str(&format!(" and {} more", pids.len() - MAX_LISTED_PIDS));
    }
    text
}

fn log_info(message: &str) {
    spank_log(LogLevel::Info, message);
}

fn log_error(message: &str) {
    spank_log(LogLevel::Error, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: Job = Job { id: 42, uid: 2001 };

    #[test]
    fn matches_the_jobs_processes() {
        let environ = b"HOME=/home/u\0SLURM_JOB_ID=42\0PATH=/bin\0";
        assert!(is_job_process(123, 1, 2001, environ, &JOB));
        assert!(is_job_process(123, 1, 2001, b"SLURM_JOBID=42\0", &JOB));
        // The rest of the environment rule is `vscode_slurm_procfs`'s and tested there.
        assert!(!is_job_process(123, 1, 2001, environ, &Job { id: 4, uid: 2001 }));
    }

    #[test]
    fn other_uid_with_the_same_job_id_is_not_matched() {
        let environ = b"SLURM_JOB_ID=42\0";
        assert!(!is_job_process(123, 1, 2002, environ, &JOB));
    }

    #[test]
    fn root_is_never_matched() {
        let environ = b"SLURM_JOB_ID=42\0";
        assert!(!is_job_process(123, 1, 0, environ, &JOB));
        let root_job = Job { id: 42, uid: 0 };
        assert!(!is_job_process(123, 1, 0, environ, &root_job));
    }

    #[test]
    fn the_epilog_itself_is_never_matched() {
        let environ = b"SLURM_JOB_ID=42\0";
        assert!(!is_job_process(77, 77, 2001, environ, &JOB));
        assert!(!is_job_process(0, 77, 2001, environ, &JOB));
        assert!(!is_job_process(-1, 77, 2001, environ, &JOB));
    }

    /// Starts `sleep` as an unprivileged uid inside a made-up job, the way a
    /// leftover server would look, and returns once its shell has set up its
    /// trap (it says so on stdout). Needs root; skipped otherwise.
    fn leftover(job: &Job, ignore_term: bool, job_var: &str) -> Option<std::process::Child> {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return None;
        }
        let script =
            if ignore_term { "trap '' TERM; echo ready; exec sleep 30" } else { "echo ready; exec sleep 30" };
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .env_clear()
            .env(job_var, job.id.to_string())
            .uid(job.uid)
            .gid(job.uid)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = ready_tx.send(line);
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => assert_eq!(line, "ready\n", "the leftover's shell ({script}) said something else"),
            Err(_) => panic!("the leftover's shell ({script}) did not say it was ready within 10 s"),
        }
        Some(child)
    }

    #[test]
    fn sweep_ends_leftovers_and_nothing_else() {
        use std::os::unix::process::ExitStatusExt;
        // Ids nobody else on this machine uses.
        let job = Job { id: 3_999_000_000 + std::process::id() % 1000, uid: 54321 };
        let Some(mut polite) = leftover(&job, false, "SLURM_JOB_ID") else { return };
        let Some(mut stubborn) = leftover(&job, true, "SLURM_JOBID") else { return };
        let other_job = Job { id: job.id + 1, ..job };
        let Some(mut bystander) = leftover(&other_job, false, "SLURM_JOB_ID") else { return };

        let outcome = sweep(&job, Duration::from_secs(1));
        let (polite_pid, stubborn_pid) = (polite.id() as i32, stubborn.id() as i32);
        assert_eq!(outcome.termed, [polite_pid, stubborn_pid].into_iter().collect());
        assert_eq!(outcome.killed, [stubborn_pid].into_iter().collect());
        assert!(outcome.survivors.is_empty());
        assert_eq!(polite.wait().unwrap().signal(), Some(libc::SIGTERM));
        assert_eq!(stubborn.wait().unwrap().signal(), Some(libc::SIGKILL));

        assert_eq!(bystander.try_wait().unwrap(), None, "another job's process was touched");
        bystander.kill().unwrap();
        bystander.wait().unwrap();
        assert!(sweep(&job, Duration::ZERO).termed.is_empty());
    }

    #[test]
    fn log_lines_name_every_action() {
        let outcome = Outcome {
            termed: [123, 456].into_iter().collect(),
            killed: [456].into_iter().collect(),
            ..Outcome::default()
        };
        assert_eq!(
            outcome.log_lines(&JOB, Duration::from_secs(5)),
            vec![
                "vscode: job 42: sent SIGTERM to 2 processes of uid 2001 (pids 123 456)".to_owned(),
                "vscode: job 42: sent SIGKILL to 1 process of uid 2001 still running after 5 s (pid 456)"
                    .to_owned(),
            ]
        );
        assert_eq!(
            Outcome::default().log_lines(&JOB, Duration::from_secs(5)),
            vec!["vscode: job 42: no processes of uid 2001 left on this node".to_owned()]
        );
        let many: BTreeSet<i32> = (1..=40).collect();
        assert!(list_pids(&many).ends_with(" 32 and 8 more"));
    }
}
