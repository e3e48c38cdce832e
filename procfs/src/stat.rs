//! /proc/PID/stat: what identifies a process across pid reuse (its start
//! time), its parent, and whether it has exited.

use crate::read::read_prefix;

/// Far more than the kernel writes (52 numbers and a command name of at
/// most 64 bytes): a longer file is not one this parser understands.
const STAT_LIMIT: usize = 4096;

/// The fields of /proc/PID/stat that the epilog and the janitor use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The kernel's name for the process; the process chose it, so it is
    /// for showing only (lossily decoded: it need not be UTF-8).
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub utime: u64,
    pub stime: u64,
    /// Clock ticks after boot: with the pid, what tells a process from a
    /// later one that got the same pid.
    pub start_ticks: u64,
    pub rss_pages: u64,
}

impl Stat {
    /// A zombie has exited and only waits for its parent; signals and
    /// waiting no longer concern it.
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// The command name sits in parentheses and may itself contain spaces,
/// parentheses and newlines, so the fields are counted from the last `)`:
/// the kernel writes nothing the process chooses after it.
pub fn parse_stat(raw: &[u8]) -> Option<Stat> {
    let open = raw.iter().position(|&b| b == b'(')?;
    let close = raw.iter().rposition(|&b| b == b')')?;
    let comm = String::from_utf8_lossy(raw.get(open.checked_add(1)?..close)?).into_owned();
    let rest = std::str::from_utf8(raw.get(close.checked_add(1)?..)?).ok()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 of proc(5).
    let number = |n: usize| fields.get(n.checked_sub(3)?).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        utime: number(14)?,
        stime: number(15)?,
        start_ticks: number(22)?,
        rss_pages: number(24)?,
    })
}

/// None when the process is gone (or its stat is not one the parser knows).
pub fn read_stat(pid: i32) -> Option<Stat> {
    let prefix = read_prefix(&format!("/proc/{pid}/stat"), STAT_LIMIT).ok()?;
    if prefix.truncated {
        return None;
    }
    parse_stat(&prefix.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Field 22 (start) is 4242, field 24 (rss) is 77, utime 5 and stime 6.
    const STAT: &[u8] =
        b"1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 4242 1000000 77 18446744073709551615";

    #[test]
    fn fields_are_counted_from_the_last_paren() {
        let stat = parse_stat(STAT).expect("parses");
        assert_eq!(stat.comm, "we ird) name)");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!((stat.utime, stat.stime), (5, 6));
        assert_eq!(stat.start_ticks, 4242);
        assert_eq!(stat.rss_pages, 77);
        assert!(!stat.exited());
        let odd = b"4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(odd).map(|s| (s.comm, s.start_ticks)), Some(("a b) c)".to_owned(), 987654)));
    }

    #[test]
    fn names_the_process_chose_cannot_shift_the_fields() {
        let newline = b"7 (x) Z 1\n2 3) Z 1 7 7 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 99 1000 3";
        let stat = parse_stat(newline).expect("parses");
        assert_eq!((stat.comm.as_str(), stat.state, stat.start_ticks), ("x) Z 1\n2 3", 'Z', 99));
        assert!(stat.exited());
        let invalid = b"8 (\xff\xfe) S 1 8 8 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 99 1000 3";
        assert_eq!(parse_stat(invalid).map(|s| s.start_ticks), Some(99), "a name need not be UTF-8");
    }

    #[test]
    fn short_or_garbled_stat_is_none() {
        for bad in [
            "1234 (cut",
            "1234 (x) S 1",
            "1 (x) S 0",
            "",
            "garbage",
            ")(",
            "1 (x) S one 1 1 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 99 1000 3",
        ] {
            assert_eq!(parse_stat(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn this_process_reads_back() {
        let me = read_stat(i32::try_from(std::process::id()).unwrap()).expect("own stat");
        assert!(me.start_ticks > 0);
        assert_eq!(read_stat(-5), None);
    }
}
