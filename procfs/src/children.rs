//! /proc/PID/task/TID/children: a process's children without a pass over
//! all of /proc.
//!
//! Linux has these files only with `CONFIG_PROC_CHILDREN` (Debian's and
//! RHEL's kernels set it), one per thread, and proc(5) calls them reliable
//! only while the children are stopped. So they are a hint: they let the
//! janitor catch the newest generation of a fork chain faster than the
//! chain grows, and it still passes over /proc to be sure.

use std::fs;
use std::io;

use crate::read::read_prefix;

/// Threads looked at; a process may have thousands, each with its own list.
const THREADS_LIMIT: usize = 4096;
/// Bytes of one thread's list (a pid is at most 8 bytes with its space).
const LIST_LIMIT: usize = 64 * 1024;

/// The children of `pid` that its threads' lists show, as far as the bounds
/// go. `NotFound` when the process is gone or the kernel has no such files.
pub fn read_children(pid: i32) -> io::Result<Vec<i32>> {
    let mut children = Vec::new();
    let mut listed = false;
    for (n, task) in fs::read_dir(format!("/proc/{pid}/task"))?.enumerate() {
        if n >= THREADS_LIMIT {
            break;
        }
        let Ok(task) = task else { continue };
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else { continue };
        let Ok(list) = read_prefix(&format!("/proc/{pid}/task/{tid}/children"), LIST_LIMIT) else { continue };
        listed = true;
        children.extend(parse_children(list.whole_records(b' ')));
    }
    if !listed {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    Ok(children)
}

/// Space-separated pids; anything that is not a positive number is skipped.
pub fn parse_children(list: &[u8]) -> impl Iterator<Item = i32> + '_ {
    list.split(|b| b.is_ascii_whitespace())
        .filter_map(|word| std::str::from_utf8(word).ok()?.parse::<i32>().ok())
        .filter(|pid| *pid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        assert_eq!(parse_children(b"12 345 6 ").collect::<Vec<_>>(), vec![12, 345, 6]);
        assert_eq!(parse_children(b"").count(), 0);
        assert_eq!(parse_children(b"1 x -3 0 99999999999 7").collect::<Vec<_>>(), vec![1, 7]);
    }

    #[test]
    fn a_stopped_child_is_listed() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = i32::try_from(child.id()).unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        match read_children(me) {
            Ok(children) => assert!(children.contains(&pid), "{children:?}"),
            // A kernel without CONFIG_PROC_CHILDREN lists none.
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(read_children(-5).is_err());
    }
}
