//! One run at a time. Cron starts a run every period whether the last one
//! ended or not; a run that something stalls must not be joined by another,
//! and another, each a root process reading every user's /proc.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// In /run, which only root can write: a lock a user could create (under
/// /run/lock or /tmp) would let them stop every run by holding it.
const LOCK: &str = "/run/vscode-janitor.lock";

/// Held for the run; the kernel lets go when the process ends, however.
pub struct RunLock {
    _file: File,
}

/// The lock, or one line saying why this run must not start.
pub fn take() -> Result<RunLock, String> {
    take_at(Path::new(LOCK))
}

fn take_at(path: &Path) -> Result<RunLock, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot open the run lock {}: {e}", path.display()))?;
    let meta = file.metadata().map_err(|e| format!("cannot inspect the run lock {}: {e}", path.display()))?;
    // SAFETY: geteuid cannot fail and touches no memory.
    if meta.uid() != unsafe { libc::geteuid() } || !meta.file_type().is_file() {
        return Err(format!("the run lock {} is not a file of root's; remove it", path.display()));
    }
    // SAFETY: flock on a descriptor we own, with plain flags.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        return Err(if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            format!(
                "an earlier run still holds {}; not starting another (if it is stuck, see which \
                 process it reads with `cat /proc/PID/stack` and end it)",
                path.display()
            )
        } else {
            format!("cannot lock {}: {error}", path.display())
        });
    }
    Ok(RunLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_does_not_start_while_the_first_holds_the_lock() {
        let path = std::env::temp_dir().join(format!("janitor-run-lock-{}", std::process::id()));
        let first = take_at(&path).expect("the first run");
        let second = take_at(&path).err().expect("a second run is refused");
        assert!(second.contains("an earlier run still holds"), "{second}");
        drop(first);
        take_at(&path).expect("a later run, once the first ended");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(take_at(&path).is_err(), "a link is not followed");
        std::fs::remove_file(&path).unwrap();
    }
}
