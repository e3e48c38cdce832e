//! The processes of the node, as /proc lists them.

use std::fs;
use std::io;

/// Every process id in /proc; an error only when /proc itself cannot be
/// listed. Entries that go away while being listed are skipped. Threads
/// other than a process's main one are not listed, and neither is anything
/// that is not a positive number (a pid of 0 or -1 given to `kill(2)` would
/// reach whole groups).
pub fn pids() -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()).filter(|p| *p > 0) {
            out.push(pid);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_listed() {
        let me = i32::try_from(std::process::id()).unwrap();
        let all = pids().unwrap();
        assert!(all.contains(&me));
        assert!(all.iter().all(|p| *p > 0));
    }
}
