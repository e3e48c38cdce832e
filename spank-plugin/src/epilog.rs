//! Job epilog (root, a fresh process on every node of the job): end what a
//! VS Code session left behind and remove the job's runtime directory.
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
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use slurm_spank::{spank_log, LogLevel, SpankHandle};

use crate::config::Config;
use crate::remote;

/// How often the epilog looks again while waiting for processes to exit.
const POLL: Duration = Duration::from_millis(100);
/// SIGKILL rounds: each catches what was forked since the previous scan.
const KILL_ROUNDS: usize = 10;
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
/// `SLURM_JOB_ID=<id>` or `SLURM_JOBID=<id>` as a whole entry of its initial
/// environment. `own_pid` is the epilog itself.
pub fn is_job_process(pid: i32, own_pid: i32, real_uid: u32, environ: &[u8], job: &Job) -> bool {
    pid > 0 && pid != own_pid && real_uid != 0 && real_uid == job.uid && environ_names_job(environ, job.id)
}

/// `environ` is /proc/PID/environ: NUL-separated `NAME=value` entries.
pub fn environ_names_job(environ: &[u8], job_id: u32) -> bool {
    let job_id_entry = format!("SLURM_JOB_ID={job_id}");
    let jobid_entry = format!("SLURM_JOBID={job_id}");
    environ
        .split(|&b| b == 0)
        .any(|entry| entry == job_id_entry.as_bytes() || entry == jobid_entry.as_bytes())
}

/// The real uid from /proc/PID/status (`Uid:\treal\teffective\tsaved\tfs`).
pub fn parse_real_uid(status: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(status).ok()?;
    let line = text.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Field 22 (start time in clock ticks) of /proc/PID/stat. The command name
/// (field 2) may contain spaces and ')', so fields are counted from the last ')'.
pub fn parse_start_time(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    // After ')' come fields 3 (state) onwards; field 22 is the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
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
    let used_vscode = spank.is_option_set(crate::OPTION)
        || std::env::var_os(format!("SPANK_{}", crate::JOB_CONTROL_MARK)).is_some_and(|v| v == "1")
        || config.as_ref().is_some_and(|c| remote::job_dir_exists(&c.runtime_dir, job.id));
    if !used_vscode {
        return;
    }

    let grace = config.as_ref().map_or_else(|| Config::default().kill_grace, |c| c.kill_grace);
    if job.uid == 0 {
        log_info(&format!("vscode: job {}: owned by root, so no processes are ended", job.id));
    } else {
        let outcome = sweep(&job, grace);
        for line in &outcome.scan_errors {
            log_error(line);
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

    if let Some(config) = config {
        match remote::remove_job_dir(&config.runtime_dir, job.id) {
            Ok(Some(path)) => log_info(&format!("vscode: job {}: removed {}", job.id, path.display())),
            Ok(None) => {}
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
        if !self.termed.is_empty() {
            lines.push(format!(
                "vscode: job {}: sent SIGTERM to {} of uid {} ({})",
                job.id,
                count(self.termed.len()),
                job.uid,
                list_pids(&self.termed)
            ));
        }
        if !self.killed.is_empty() {
            lines.push(format!(
                "vscode: job {}: sent SIGKILL to {} of uid {} still running after {} s ({})",
                job.id,
                count(self.killed.len()),
                job.uid,
                grace.as_secs(),
                list_pids(&self.killed)
            ));
        }
        lines
    }
}

/// SIGTERM, wait up to `grace` (catching new children), then SIGKILL.
fn sweep(job: &Job, grace: Duration) -> Outcome {
    let own_pid = i32::try_from(std::process::id()).unwrap_or(0);
    let mut outcome = Outcome::default();
    let deadline = Instant::now() + grace;
    loop {
        let targets = scan(job, own_pid, &mut outcome.scan_errors);
        if targets.is_empty() {
            return outcome;
        }
        for target in &targets {
            if !outcome.termed.contains(&target.pid) && target.signal(libc::SIGTERM) {
                outcome.termed.insert(target.pid);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
    for _ in 0..KILL_ROUNDS {
        let targets = scan(job, own_pid, &mut outcome.scan_errors);
        if targets.is_empty() {
            return outcome;
        }
        for target in &targets {
            if target.signal(libc::SIGKILL) {
                outcome.killed.insert(target.pid);
            }
        }
        std::thread::sleep(POLL);
    }
    outcome.survivors = scan(job, own_pid, &mut outcome.scan_errors).iter().map(|t| t.pid).collect();
    outcome
}

/// A process found by a scan, pinned so that a signal can only reach the
/// process that was checked, not a later one that got the same pid.
struct Target {
    pid: i32,
    pin: Pin,
}

enum Pin {
    /// Signals through the pidfd reach only this process.
    Pidfd(OwnedFd),
    /// Kernels without pidfd: the start time is compared again right before
    /// signalling (a small window remains).
    StartTime(u64),
}

impl Target {
    /// Pins `pid`, then reads its uid and environment: whatever is read after
    /// pinning either describes the pinned process or a successor, and a
    /// signal to a successor through the pin fails with ESRCH.
    fn check(pid: i32, own_pid: i32, job: &Job) -> Option<Target> {
        let pin = match pidfd_open(pid) {
            Ok(fd) => Pin::Pidfd(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return None,
            Err(_) => Pin::StartTime(start_time(pid)?),
        };
        let uid = parse_real_uid(&fs::read(format!("/proc/{pid}/status")).ok()?)?;
        // Cheap test first: most processes on a node are someone else's.
        if uid != job.uid {
            return None;
        }
        let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
        is_job_process(pid, own_pid, uid, &environ, job).then_some(Target { pid, pin })
    }

    /// Whether the signal was delivered (false: the process is gone).
    fn signal(&self, signal: libc::c_int) -> bool {
        match &self.pin {
            Pin::Pidfd(fd) => pidfd_send_signal(fd, signal).is_ok(),
            Pin::StartTime(started) => {
                if start_time(self.pid) != Some(*started) {
                    return false;
                }
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(self.pid, signal) == 0 }
            }
        }
    }
}

/// Every live process of `job`. Unreadable entries are skipped: processes
/// come and go while /proc is read.
fn scan(job: &Job, own_pid: i32, errors: &mut BTreeSet<String>) -> Vec<Target> {
    let entries = match fs::read_dir("/proc") {
        Ok(entries) => entries,
        Err(e) => {
            errors.insert(format!("vscode: job {}: cannot list /proc: {e}", job.id));
            return Vec::new();
        }
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Target::check(pid, own_pid, job))
        .collect()
}

fn start_time(pid: i32) -> Option<u64> {
    parse_start_time(&fs::read(format!("/proc/{pid}/stat")).ok()?)
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_send_signal(fd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    let info: *const libc::siginfo_t = std::ptr::null();
    // SAFETY: a valid pidfd, a signal number, a null siginfo and no flags.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), signal, info, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
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

    fn env(entries: &[&str]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in entries {
            bytes.extend_from_slice(entry.as_bytes());
            bytes.push(0);
        }
        bytes
    }

    #[test]
    fn matches_the_jobs_processes() {
        let environ = env(&["HOME=/home/u", "SLURM_JOB_ID=42", "PATH=/bin"]);
        assert!(is_job_process(123, 1, 2001, &environ, &JOB));
        assert!(is_job_process(123, 1, 2001, &env(&["SLURM_JOBID=42"]), &JOB));
        // Last entry without the trailing NUL, as a truncated read would give.
        assert!(is_job_process(123, 1, 2001, b"A=1\0SLURM_JOB_ID=42", &JOB));
        assert!(is_job_process(123, 1, 2001, b"SLURM_JOB_ID=42", &JOB));
    }

    #[test]
    fn other_uid_with_the_same_job_id_is_not_matched() {
        let environ = env(&["SLURM_JOB_ID=42"]);
        assert!(!is_job_process(123, 1, 2002, &environ, &JOB));
    }

    #[test]
    fn root_is_never_matched() {
        let environ = env(&["SLURM_JOB_ID=42"]);
        assert!(!is_job_process(123, 1, 0, &environ, &JOB));
        let root_job = Job { id: 42, uid: 0 };
        assert!(!is_job_process(123, 1, 0, &environ, &root_job));
    }

    #[test]
    fn the_epilog_itself_is_never_matched() {
        let environ = env(&["SLURM_JOB_ID=42"]);
        assert!(!is_job_process(77, 77, 2001, &environ, &JOB));
        assert!(!is_job_process(0, 77, 2001, &environ, &JOB));
        assert!(!is_job_process(-1, 77, 2001, &environ, &JOB));
    }

    #[test]
    fn job_id_must_match_exactly() {
        let environ = env(&["SLURM_JOB_ID=42"]);
        assert!(!is_job_process(123, 1, 2001, &environ, &Job { id: 4, uid: 2001 }));
        assert!(!is_job_process(123, 1, 2001, &environ, &Job { id: 421, uid: 2001 }));
        for other in
            ["SLURM_JOB_ID=421", "SLURM_JOB_ID=4", "SLURM_JOB_ID=042", "SLURM_JOB_ID=42 ", "SLURM_JOB_ID="]
        {
            assert!(!is_job_process(123, 1, 2001, &env(&[other]), &JOB), "{other}");
        }
    }

    #[test]
    fn job_id_inside_another_variable_is_not_matched() {
        for hidden in [
            "X=SLURM_JOB_ID=42",
            "XSLURM_JOB_ID=42",
            "SLURM_JOB_ID_X=42",
            "slurm_job_id=42",
            "SLURM_JOBID_=42",
        ] {
            assert!(!is_job_process(123, 1, 2001, &env(&[hidden]), &JOB), "{hidden}");
        }
        assert!(!is_job_process(123, 1, 2001, b"", &JOB));
        assert!(!is_job_process(123, 1, 2001, b"\0\0", &JOB));
    }

    #[test]
    fn parses_real_uid_from_status() {
        let status = b"Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t2001\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        assert_eq!(parse_real_uid(status), Some(2001));
        assert_eq!(parse_real_uid(b"Name:\tx\n"), None);
        assert_eq!(parse_real_uid(b"Uid:\tabc\n"), None);
    }

    #[test]
    fn parses_start_time_despite_odd_command_names() {
        let stat = b"4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time(b"1 (x) S 0"), None);
        assert_eq!(parse_start_time(b"garbage"), None);
    }

    #[test]
    fn own_process_start_time_is_readable() {
        let pid = i32::try_from(std::process::id()).unwrap();
        assert!(start_time(pid).is_some());
    }

    /// Starts `sleep` as an unprivileged uid inside a made-up job, the way a
    /// leftover server would look. Needs root; skipped otherwise.
    fn leftover(job: &Job, ignore_term: bool, job_var: &str) -> Option<std::process::Child> {
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return None;
        }
        let script = if ignore_term { "trap '' TERM; exec sleep 30" } else { "exec sleep 30" };
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .env_clear()
            .env(job_var, job.id.to_string())
            .uid(job.uid)
            .gid(job.uid)
            .spawn()
            .unwrap();
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
        std::thread::sleep(Duration::from_millis(300)); // let the shells exec and set up traps

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
