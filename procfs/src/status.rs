//! /proc/PID/status, for the uids: who a process belongs to.

use crate::read::read_prefix;

/// The `Uid:` line is among the first of the file; the lines after it can
/// grow with the number of CPUs and NUMA nodes and are not needed.
const STATUS_LIMIT: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uids {
    /// Who the process belongs to.
    pub real: u32,
    /// A set-uid root helper in a user's tree has the user's real uid but is
    /// not the user's to end.
    pub effective: u32,
}

/// Takes bytes, not text: the `Name:` line is the process's own choice and
/// need not be UTF-8. The kernel escapes newlines in it, so it cannot
/// forge a `Uid:` line of its own.
pub fn parse_uids(status: &[u8]) -> Option<Uids> {
    let line = status.split(|&b| b == b'\n').find_map(|line| line.strip_prefix(b"Uid:"))?;
    let mut ids = std::str::from_utf8(line).ok()?.split_whitespace().map(|s| s.parse::<u32>().ok());
    Some(Uids { real: ids.next()??, effective: ids.next()?? })
}

/// None when the process is gone.
pub fn read_uids(pid: i32) -> Option<Uids> {
    let prefix = read_prefix(&format!("/proc/{pid}/status"), STATUS_LIMIT).ok()?;
    parse_uids(prefix.whole_records(b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_come_from_the_status_line() {
        let status = b"Name:\tsudo\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t2001\t0\t0\t0\nGid:\t2001\t2001\t2001\t2001\n";
        assert_eq!(parse_uids(status), Some(Uids { real: 2001, effective: 0 }));
        // The kernel writes a newline in the name as `\n`: the forged line stays part of the name.
        let forged = b"Name:\tx\\nUid:\t0\t0\t0\t0\nUid:\t5\t5\t5\t5\n";
        assert_eq!(parse_uids(forged), Some(Uids { real: 5, effective: 5 }));
        assert_eq!(parse_uids(b"Name:\t\xff\nUid:\t5\t6\t5\t5\n").map(|u| u.effective), Some(6));
        assert_eq!(parse_uids(b"Name:\tx\n"), None);
        assert_eq!(parse_uids(b"Uid:\tabc\n"), None);
        assert_eq!(parse_uids(b"Uid:\t2001\n"), None);
    }

    #[test]
    fn this_process_reads_back() {
        let me = read_uids(i32::try_from(std::process::id()).unwrap()).expect("own status");
        // SAFETY: getuid has no preconditions.
        assert_eq!(me.real, unsafe { libc::getuid() });
        assert_eq!(read_uids(-5), None);
    }
}
