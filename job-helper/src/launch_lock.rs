//! Windows of one job start their launch scripts one at a time.
//!
//! VS Code's script looks for a running server (its pid file) and starts
//! one only if there is none. Two windows opened together would both look
//! before either started one, and the job would run two servers. So a
//! window holds the job's launch lock from before its script starts until
//! its server is announced (or the window ends); the next window's script
//! then finds that server and reuses it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// The lock's name in the job's private runtime directory.
const LOCK_NAME: &str = "launch.lock";
/// A script that announces no server in this long (a slow first download
/// of the server, a broken script) no longer holds the others back.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// Held while this window's script starts its server; dropping it lets
/// the next window's script start.
pub struct LaunchLock {
    _file: File,
}

/// Waits (on the kernel's lock, not a poll) until no other window of the
/// job is starting its script, for at most [`LOCK_WAIT`]. `None` when the
/// lock cannot be had: the window starts anyway, as it would without one.
pub async fn take(dir: &Path) -> Option<LaunchLock> {
    let path = dir.join(LOCK_NAME);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) => {
            tracing::info!("cannot open the launch lock {}: {e}; starting without it", path.display());
            return None;
        }
    };
    // flock(2) blocks in the kernel until the holder lets go; a thread of
    // its own keeps the runtime free meanwhile.
    let waiting = tokio::task::spawn_blocking(move || lock(&file).map(|()| file));
    match tokio::time::timeout(LOCK_WAIT, waiting).await {
        Ok(Ok(Ok(file))) => Some(LaunchLock { _file: file }),
        Ok(Ok(Err(e))) => {
            tracing::info!("cannot take the launch lock: {e}; starting without it");
            None
        }
        Ok(Err(e)) => {
            tracing::info!("waiting for the launch lock failed: {e}; starting without it");
            None
        }
        // The waiting thread takes the lock later and drops it at once.
        Err(_) => {
            tracing::info!("another window's script announced no server in {LOCK_WAIT:?}; starting anyway");
            None
        }
    }
}

fn lock(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own, with a plain flag.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_window_waits_until_the_first_lets_go() {
        let dir = crate::scratch::dir("launch-lock", 0o700);
        let first = take(&dir).await.expect("the first window takes the lock");
        let mut second = tokio::spawn({
            let dir = dir.clone();
            async move { take(&dir).await.is_some() }
        });
        // Showing that something does not happen takes a bound: the second
        // window is still waiting on the kernel's lock after 200 ms.
        let early = tokio::time::timeout(Duration::from_millis(200), &mut second).await;
        assert!(early.is_err(), "the second window did not wait for the first");
        drop(first);
        let taken = tokio::time::timeout(Duration::from_secs(10), second).await;
        assert!(taken.expect("bounded").unwrap(), "the second window took the lock once the first let go");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
