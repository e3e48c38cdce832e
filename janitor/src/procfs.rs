//! Reading /proc into the janitor's table. The per-file parsers are
//! `vscode_slurm_procfs`'s, shared with the plugin's epilog; what is here is
//! only what the janitor alone shows or needs (command lines, ages, sizes).
//! Processes come and go while /proc is read: one that vanishes half-way is
//! simply not in the table.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use vscode_slurm_procfs::{pids, read_cmdline, read_stat, read_uids};

use crate::jobs::{self, NodeJobs};
use crate::process::{Job, Process, Table};

/// NUL-separated, with the padding that `setproctitle` leaves (sshd) dropped.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let mut argv: Vec<String> =
        raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    while argv.last().is_some_and(|a| a.is_empty()) {
        argv.pop();
    }
    argv
}

/// Constants of the running system the conversions need.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub ticks_per_sec: u64,
    pub page_size: u64,
    pub uptime_ticks: u64,
}

impl Clock {
    pub fn now() -> io::Result<Clock> {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let ticks_per_sec = u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100);
        let page_size = u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096);
        let uptime = fs::read_to_string("/proc/uptime")?;
        let secs: f64 = uptime
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("cannot read /proc/uptime: {uptime:?}")))?;
        Ok(Clock { ticks_per_sec, page_size, uptime_ticks: (secs * ticks_per_sec as f64) as u64 })
    }

    pub fn ticks(&self, ticks: u64) -> Duration {
        Duration::from_millis(ticks.saturating_mul(1000) / self.ticks_per_sec)
    }
}

/// One process, or None when it went away while being read. Its `job` is
/// Unknown: only the whole table tells (`jobs::classify`).
pub fn read_process(pid: i32, clock: &Clock) -> Option<Process> {
    let stat = read_stat(pid)?;
    let uids = read_uids(pid)?;
    let argv = parse_cmdline(&read_cmdline(pid).ok()?);
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned());
    // Read last: if the pid was reused during the reads above, the start time changed.
    let again = read_stat(pid)?;
    if again.start_ticks != stat.start_ticks {
        return None;
    }
    let mut process = Process {
        pid,
        ppid: stat.ppid,
        uid: uids.real,
        euid: uids.effective,
        start_ticks: stat.start_ticks,
        age: clock.ticks(clock.uptime_ticks.saturating_sub(stat.start_ticks)),
        cpu: clock.ticks(stat.utime + stat.stime),
        rss_bytes: stat.rss_pages.saturating_mul(clock.page_size),
        comm: stat.comm,
        argv,
        exe,
        job: Job::Unknown,
        zombie: again.exited(),
    };
    if !keeps_arguments(&process) {
        process.argv = Vec::new();
    }
    Some(process)
}

/// Arguments are kept only where they are used (to show a server, to
/// recognise root's ssh sessions and slurmstepds): with thousands of
/// processes on the node, memory stays a few hundred bytes per process.
fn keeps_arguments(p: &Process) -> bool {
    p.uid == 0 || p.euid == 0 || p.looks_like_vscode_server()
}

/// Every process of the node, each with its job; an error only when /proc
/// itself cannot be read.
pub fn scan() -> io::Result<(Table, NodeJobs)> {
    let clock = Clock::now()?;
    let processes: Vec<Process> = pids()?.into_iter().filter_map(|pid| read_process(pid, &clock)).collect();
    let mut table = Table::new(processes);
    let jobs = jobs::classify(&mut table, &|p: &Process| jobs::read_cgroups_of(p.pid, p.start_ticks));
    Ok((table, jobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_drops_title_padding() {
        assert_eq!(parse_cmdline(b"sshd: alice [priv]\0\0\0\0\0"), vec!["sshd: alice [priv]"]);
        assert_eq!(parse_cmdline(b"sleep\x00180\x00"), vec!["sleep", "180"]);
        assert_eq!(parse_cmdline(b""), Vec::<String>::new());
        assert_eq!(parse_cmdline(b"a\0\0b\0"), vec!["a", "", "b"]);
    }

    #[test]
    fn this_process_reads_back() {
        let clock = Clock::now().expect("clock");
        let me = read_process(std::process::id() as i32, &clock).expect("self");
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert_eq!(me.argv.is_empty(), me.uid != 0, "{:?}", me.argv);
        assert!(me.exe.is_some());
        assert_eq!(read_process(-5, &clock).map(|p| p.pid), None);
    }

    #[test]
    fn a_job_variable_does_not_put_a_process_in_a_job() {
        // Outside any job (no slurmstepd above it), whatever its environment says.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("SLURM_JOB_ID", "9")
            .env("SLURM_JOBID", "9")
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        let (table, _) = scan().expect("scan");
        let in_a_step = table.nearest_marked_ancestors(|p| p.slurmstepd().is_some()).contains_key(&pid);
        let p = table.get(pid).expect("child");
        if !in_a_step {
            assert_eq!(p.job, Job::Outside);
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn arguments_are_kept_only_where_used() {
        use crate::process::tests::proc;
        assert!(keeps_arguments(&proc(5, 1, 2001, &["/home/u/.vscode-server/bin/x/node", "main.js"])));
        assert!(keeps_arguments(&proc(6, 1, 0, &["sshd: alice [priv]"])));
        assert!(!keeps_arguments(&proc(7, 1, 2001, &["python3", "train.py"])));
    }
}
