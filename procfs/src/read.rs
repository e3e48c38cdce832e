//! Bounded reads. A process chooses the size of some of its /proc files
//! (its environment can be moved anywhere in its address space with
//! `prctl(PR_SET_MM_MAP)` inside a user namespace), so nothing here reads a
//! file to its end just because it has one.

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// The first bytes of a file, and whether the bound cut it short.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Prefix {
    pub(crate) bytes: Vec<u8>,
    pub(crate) truncated: bool,
}

/// At most `limit` bytes of `path` (the buffer may reserve up to about
/// twice that while it grows).
pub(crate) fn read_prefix(path: &str, limit: usize) -> io::Result<Prefix> {
    let file = File::open(path)?;
    // One byte past the bound tells a file of exactly `limit` bytes from a longer one.
    let want = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut bytes = Vec::new();
    file.take(want).read_to_end(&mut bytes)?;
    let truncated = bytes.len() > limit;
    bytes.truncate(limit);
    Ok(Prefix { bytes, truncated })
}

/// How long a read of another process's memory (its environ or cmdline)
/// may take. The kernel takes the target's memory-map lock for it, and the
/// target can hold that lock forever (a thread of its own stuck on a FUSE
/// file that never answers, with a writer queued behind it), so such a read
/// has no bound of its own.
const MEMORY_READ_WAIT: Duration = Duration::from_millis(250);

/// Reads that outlived [`MEMORY_READ_WAIT`] and still block, each in a
/// thread of its own. Past this many, further reads of process memory are
/// not tried at all: a user who can stall one read can stall them all.
const MAX_STUCK_READS: usize = 8;

static STUCK_READS: AtomicUsize = AtomicUsize::new(0);

/// [`read_prefix`] of a file whose read takes the process's memory-map
/// lock, bounded in time: an error of kind `TimedOut` when the read did not
/// finish in [`MEMORY_READ_WAIT`], or when too many earlier ones never did.
/// A stuck read's thread is left behind, blocked in a wait the kernel ends
/// with a fatal signal, so it ends at the latest with this (short-lived)
/// process.
pub(crate) fn read_memory_prefix(path: String, limit: usize) -> io::Result<Prefix> {
    if STUCK_READS.load(Ordering::Relaxed) >= MAX_STUCK_READS {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "too many reads of process memory are stuck"));
    }
    let (done, result) = mpsc::sync_channel(1);
    let abandoned = Arc::new(AtomicBool::new(false));
    let reader_abandoned = Arc::clone(&abandoned);
    std::thread::Builder::new().name("proc-read".into()).spawn(move || {
        let read = read_prefix(&path, limit);
        if done.send(read).is_err() && reader_abandoned.load(Ordering::Acquire) {
            STUCK_READS.fetch_sub(1, Ordering::Relaxed);
        }
    })?;
    match result.recv_timeout(MEMORY_READ_WAIT) {
        Ok(read) => read,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            STUCK_READS.fetch_add(1, Ordering::Relaxed);
            abandoned.store(true, Ordering::Release);
            // The read may have finished just now; its answer still counts.
            match result.try_recv() {
                Ok(read) => {
                    STUCK_READS.fetch_sub(1, Ordering::Relaxed);
                    read
                }
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the process's memory could not be read in time",
                )),
            }
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(io::Error::other("the reading thread ended without an answer"))
        }
    }
}

impl Prefix {
    /// The records read whole: a record cut by the bound could read as
    /// another one (`SLURM_JOB_ID=4` of `SLURM_JOB_ID=42`), so it is dropped.
    /// Without a cut the last record counts even without its separator.
    pub(crate) fn whole_records(&self, separator: u8) -> &[u8] {
        if !self.truncated {
            return &self.bytes;
        }
        match self.bytes.iter().rposition(|&b| b == separator) {
            Some(last) => self.bytes.get(..=last).unwrap_or_default(),
            None => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO without a writer blocks its reader's open, as a process with
    /// a stalled memory-map lock blocks a read of its environ.
    #[test]
    fn a_read_that_never_finishes_is_given_up_and_its_thread_counted() {
        let fifo = std::env::temp_dir().join(format!("procfs-stuck-{}", std::process::id()));
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string and a mode.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        let error = read_memory_prefix(fifo.to_str().unwrap().to_owned(), 16).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < MEMORY_READ_WAIT * 4, "gave up after {:?}", started.elapsed());
        assert!(STUCK_READS.load(Ordering::Relaxed) >= 1);
        // A writer lets the stuck thread finish; it then counts itself out.
        let writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        drop(writer);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // allow-sleep: the abandoned thread reports to no one; its count is all there is to watch.
        while STUCK_READS.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(STUCK_READS.load(Ordering::Relaxed), 0, "the late thread counted itself out");
        std::fs::remove_file(fifo).unwrap();
    }

    #[test]
    fn the_bound_is_kept_and_reported() {
        let path = std::env::temp_dir().join(format!("procfs-read-{}", std::process::id()));
        std::fs::write(&path, b"A=1\0B=22\0C=333\0").unwrap();
        let path = path.to_str().unwrap();
        let whole = read_prefix(path, 15).unwrap();
        assert_eq!((whole.bytes.len(), whole.truncated), (15, false));
        let cut = read_prefix(path, 11).unwrap();
        assert_eq!((cut.bytes.as_slice(), cut.truncated), (&b"A=1\0B=22\0C="[..], true));
        assert_eq!(cut.whole_records(0), b"A=1\0B=22\0");
        assert_eq!(read_prefix(path, 2).unwrap().whole_records(0), b"");
        assert_eq!(read_prefix(path, 0).unwrap().whole_records(0), b"");
        std::fs::remove_file(path).unwrap();
        assert!(read_prefix("/proc/-1/stat", 10).is_err());
    }

    #[test]
    fn an_uncut_last_record_counts_without_its_separator() {
        let prefix = Prefix { bytes: b"A=1\0B=2".to_vec(), truncated: false };
        assert_eq!(prefix.whole_records(0), b"A=1\0B=2");
    }
}
