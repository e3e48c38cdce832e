//! Reading /proc. Processes come and go while it is read: one that vanishes
//! half-way is simply not in the table, and nothing here panics on what a
//! process's files contain. The parsers are separate so they can be tested
//! on text.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::process::{JobEnv, Process, Table};

/// The fields of /proc/PID/stat the janitor uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub utime: u64,
    pub stime: u64,
    pub start_ticks: u64,
    pub rss_pages: u64,
}

/// The command name sits in parentheses and may itself contain spaces and
/// parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 of proc(5).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// Real and effective uid from /proc/PID/status.
pub fn parse_uids(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|s| s.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

/// NUL-separated, with the padding that `setproctitle` leaves (sshd) dropped.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let mut argv: Vec<String> =
        raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    while argv.last().is_some_and(|a| a.is_empty()) {
        argv.pop();
    }
    argv
}

/// What Slurm puts in every job's processes, and what the spank plugin's
/// epilog keys on: the one sign that a process belongs to a job.
pub fn environ_in_job(raw: &[u8]) -> bool {
    raw.split(|b| *b == 0).any(|var| var.starts_with(b"SLURM_JOB_ID="))
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

fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// One process, or None when it went away while being read.
pub fn read_process(pid: i32, clock: &Clock) -> Option<Process> {
    let dir = format!("/proc/{pid}");
    let stat = parse_stat(&fs::read_to_string(format!("{dir}/stat")).ok()?)?;
    let (uid, euid) = parse_uids(&fs::read_to_string(format!("{dir}/status")).ok()?)?;
    let argv = parse_cmdline(&fs::read(format!("{dir}/cmdline")).ok()?);
    let exe = fs::read_link(format!("{dir}/exe"))
        .ok()
        .map(|p| String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned());
    let job = match fs::read(format!("{dir}/environ")) {
        Ok(raw) if environ_in_job(&raw) => JobEnv::Inside,
        // An empty environment is what a zombie or a kernel thread shows.
        Ok(_) => JobEnv::Outside,
        Err(e) if gone(&e) => return None,
        Err(_) => JobEnv::Unknown,
    };
    // Read last: if the pid was reused during the reads above, the start time changed.
    let again = parse_stat(&fs::read_to_string(format!("{dir}/stat")).ok()?)?;
    if again.start_ticks != stat.start_ticks {
        return None;
    }
    Some(Process {
        pid,
        ppid: stat.ppid,
        uid,
        euid,
        start_ticks: stat.start_ticks,
        age: clock.ticks(clock.uptime_ticks.saturating_sub(stat.start_ticks)),
        cpu: clock.ticks(stat.utime + stat.stime),
        rss_bytes: stat.rss_pages.saturating_mul(clock.page_size),
        comm: stat.comm,
        argv,
        exe,
        job,
        zombie: matches!(again.state, 'Z' | 'X'),
    })
}

pub fn pids() -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
            out.push(pid);
        }
    }
    Ok(out)
}

/// Every process of the node; an error only when /proc itself cannot be read.
pub fn scan() -> io::Result<Table> {
    let clock = Clock::now()?;
    let processes: Vec<Process> = pids()?.into_iter().filter_map(|pid| read_process(pid, &clock)).collect();
    Ok(Table::new(processes))
}

/// The stat of one process, None when it is gone.
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Field 22 (start) is 4242, field 24 (rss) is 77, utime 5 and stime 6.
    const STAT: &str =
        "1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 4242 1000000 77 18446744073709551615";

    #[test]
    fn stat_fields_are_counted_from_the_last_paren() {
        let stat = parse_stat(STAT).expect("parses");
        assert_eq!(stat.comm, "we ird) name)");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!((stat.utime, stat.stime), (5, 6));
        assert_eq!(stat.start_ticks, 4242);
        assert_eq!(stat.rss_pages, 77);
        assert_eq!(parse_stat("1234 (cut"), None);
        assert_eq!(parse_stat("1234 (x) S 1"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn uids_come_from_the_status_line() {
        let status = "Name:\tsudo\nUid:\t2001\t0\t0\t0\nGid:\t2001\t2001\t2001\t2001\n";
        assert_eq!(parse_uids(status), Some((2001, 0)));
        assert_eq!(parse_uids("Name:\tx\n"), None);
        assert_eq!(parse_uids("Uid:\tabc\n"), None);
    }

    #[test]
    fn cmdline_drops_title_padding() {
        assert_eq!(parse_cmdline(b"sshd: alice [priv]\0\0\0\0\0"), vec!["sshd: alice [priv]"]);
        assert_eq!(parse_cmdline(b"sleep\x00180\x00"), vec!["sleep", "180"]);
        assert_eq!(parse_cmdline(b""), Vec::<String>::new());
        assert_eq!(parse_cmdline(b"a\0\0b\0"), vec!["a", "", "b"]);
    }

    #[test]
    fn job_id_is_found_only_as_a_whole_variable() {
        assert!(environ_in_job(b"HOME=/home/a\0SLURM_JOB_ID=42\0"));
        assert!(environ_in_job(b"SLURM_JOB_ID=\0"));
        assert!(!environ_in_job(b"HOME=/home/a\0OLD_SLURM_JOB_ID=42\0X=SLURM_JOB_ID=1\0"));
        assert!(!environ_in_job(b""));
    }

    #[test]
    fn this_process_reads_back() {
        let clock = Clock::now().expect("clock");
        let me = read_process(std::process::id() as i32, &clock).expect("self");
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert!(!me.argv.is_empty());
        assert!(me.exe.is_some());
        assert_eq!(read_process(-5, &clock).map(|p| p.pid), None);
    }
}
