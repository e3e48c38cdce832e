//! Bounded reads. A process chooses the size of some of its /proc files
//! (its environment can be moved anywhere in its address space with
//! `prctl(PR_SET_MM_MAP)` inside a user namespace), so nothing here reads a
//! file to its end just because it has one.

use std::fs::File;
use std::io::{self, Read};

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
