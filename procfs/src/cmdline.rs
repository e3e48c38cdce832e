//! /proc/PID/cmdline, read up to a bound.

use std::io;

use crate::read::read_memory_prefix;

/// Real command lines are far shorter (a VS Code server's is under 1 KiB),
/// but a process may make its own as long as its address space (the kernel
/// allows arguments of several MiB, and `PR_SET_MM` moves them anywhere): a
/// root process reading every user's cannot follow them there, or ten
/// thousand such processes would take gigabytes.
const CMDLINE_LIMIT: usize = 8 * 1024;

/// The NUL-separated arguments read whole; an argument cut by the bound is
/// left out (its beginning could read as another path). The error is the
/// read's: `NotFound` or `ESRCH` when the process is gone.
pub fn read_cmdline(pid: i32) -> io::Result<Vec<u8>> {
    let prefix = read_memory_prefix(format!("/proc/{pid}/cmdline"), CMDLINE_LIMIT)?;
    Ok(prefix.whole_records(0).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Right after exec the new command line may not be in place yet.
    fn settled(pid: i32) -> Vec<u8> {
        for _ in 0..200 {
            let read = read_cmdline(pid).expect("cmdline");
            if !read.is_empty() {
                return read;
            }
            // allow-sleep: nothing announces that exec has set up the new command line.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no command line for {pid}");
    }

    #[test]
    fn a_long_command_line_is_cut_at_a_whole_argument() {
        let long = "x".repeat(CMDLINE_LIMIT);
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line", "sh", &long, "1"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let pid = i32::try_from(child.id()).unwrap();
        let read = settled(pid);
        assert_eq!(read, b"sh\x00-c\x00read line\x00sh\x00", "{:?}", String::from_utf8_lossy(&read));
        child.kill().unwrap();
        child.wait().unwrap();
        let mut short = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        assert_eq!(settled(i32::try_from(short.id()).unwrap()), b"sleep\x0030\x00");
        short.kill().unwrap();
        short.wait().unwrap();
        assert!(read_cmdline(-5).is_err());
    }
}
