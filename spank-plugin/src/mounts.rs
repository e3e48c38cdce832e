//! What is mounted on a job's runtime directory, from the kernel's mount
//! table rather than from the directory itself.
//!
//! Asking the directory (stat, statfs) would ask whatever file system is
//! mounted there, and a user may have mounted a FUSE file system of their own
//! on it, whose server can leave that question unanswered for ever. The mount
//! table is the kernel's, so reading it cannot be held up by a user.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The `source` of every runtime directory mount, so that it can be told
/// apart from any other tmpfs (`findmnt -S vscode-slurm` lists them all).
pub const SOURCE: &str = "vscode-slurm";

/// The calling thread's view: the mount namespace is per thread, and tests
/// give their thread one of its own.
const MOUNTINFO: &str = "/proc/thread-self/mountinfo";

/// A mount point is at most PATH_MAX (4096) bytes, four times that once
/// escaped; longer lines cannot name our directory and are skipped unread.
const MAX_LINE: usize = 64 * 1024;

/// What the mount table holds at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mounted {
    Nothing,
    /// Exactly one mount, a tmpfs with our source: a runtime directory.
    Ours,
    /// Anything else, described for a log line.
    Other(String),
}

/// What is mounted at `path` (absolute, no symlinks) in this thread's mount
/// namespace. Reads the table as a stream: memory is bounded by `MAX_LINE`,
/// time by the size of the table, which the kernel bounds.
pub fn at(path: &Path) -> io::Result<Mounted> {
    scan(File::open(MOUNTINFO)?, path)
}

fn scan(table: impl Read, path: &Path) -> io::Result<Mounted> {
    let wanted = escape(path.as_os_str().as_bytes());
    let mut reader = BufReader::new(table);
    let mut line = Vec::new();
    let mut count = 0usize;
    let mut top: Option<(Vec<u8>, Vec<u8>)> = None;
    loop {
        line.clear();
        let bound = u64::try_from(MAX_LINE).unwrap_or(u64::MAX);
        if (&mut reader).take(bound).read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() != Some(&b'\n') && line.len() >= MAX_LINE {
            skip_rest_of_line(&mut reader)?;
            continue;
        }
        if let Some(entry) = parse(&line) {
            if entry.mount_point == wanted.as_slice() {
                count += 1;
                // Later lines are mounted later: the last one is on top.
                top = Some((entry.fs_type.to_vec(), entry.source.to_vec()));
            }
        }
    }
    Ok(match (count, top) {
        (0, _) | (_, None) => Mounted::Nothing,
        (1, Some((fs_type, source))) if fs_type == b"tmpfs" && source == SOURCE.as_bytes() => Mounted::Ours,
        (n, Some((fs_type, source))) => Mounted::Other(format!(
            "{n} mount{} on it, the top one {} from {}",
            if n == 1 { "" } else { "s" },
            String::from_utf8_lossy(&fs_type),
            String::from_utf8_lossy(&source)
        )),
    })
}

fn skip_rest_of_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let (done, used) = {
            let buf = reader.fill_buf()?;
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (buf.is_empty(), buf.len()),
            }
        };
        reader.consume(used);
        if done {
            return Ok(());
        }
    }
}

struct Entry<'a> {
    mount_point: &'a [u8],
    fs_type: &'a [u8],
    source: &'a [u8],
}

/// One line of mountinfo (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNT_POINT
/// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
fn parse(line: &[u8]) -> Option<Entry<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut fields = line.split(|&b| b == b' ');
    let mount_point = fields.nth(4)?;
    let _options = fields.next()?;
    // Optional fields (shared:N, master:N, ...) end at a lone "-".
    fields.find(|field| *field == b"-")?;
    Some(Entry { mount_point, fs_type: fields.next()?, source: fields.next()? })
}

/// A path as mountinfo shows it: space, tab, newline and backslash as octal
/// escapes (the kernel's `mangle` in fs/proc_namespace.c).
fn escape(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        match b {
            b' ' => out.extend_from_slice(b"\\040"),
            b'\t' => out.extend_from_slice(b"\\011"),
            b'\n' => out.extend_from_slice(b"\\012"),
            b'\\' => out.extend_from_slice(b"\\134"),
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 0:21 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,mode=755
23 22 0:22 / /run/vscode-slurm/41 rw,nosuid,nodev,noexec shared:6 - tmpfs vscode-slurm rw,size=65536k
24 22 0:23 / /run/vscode-slurm/42 rw - tmpfs vscode-slurm rw
25 24 0:24 / /run/vscode-slurm/42 rw,nosuid,nodev - fuse.sshfs alice@x:/ rw,user_id=2001
26 22 0:25 / /run/vscode-slurm/43 rw - tmpfs tmpfs rw
27 22 0:26 / /run/with\\040space rw master:1 - tmpfs vscode-slurm rw
";

    fn at_in(table: &str, path: &str) -> Mounted {
        scan(table.as_bytes(), Path::new(path)).unwrap()
    }

    #[test]
    fn tells_ours_from_nothing_and_from_anything_else() {
        assert_eq!(at_in(TABLE, "/run/vscode-slurm/41"), Mounted::Ours);
        assert_eq!(at_in(TABLE, "/run/vscode-slurm/4"), Mounted::Nothing);
        assert_eq!(at_in(TABLE, "/run/vscode-slurm"), Mounted::Nothing);
        assert_eq!(
            at_in(TABLE, "/run/vscode-slurm/42"),
            Mounted::Other("2 mounts on it, the top one fuse.sshfs from alice@x:/".into())
        );
        assert_eq!(
            at_in(TABLE, "/run/vscode-slurm/43"),
            Mounted::Other("1 mount on it, the top one tmpfs from tmpfs".into())
        );
        assert_eq!(at_in(TABLE, "/run/with space"), Mounted::Ours);
        assert_eq!(at_in(TABLE, "/run/with\\040space"), Mounted::Nothing);
    }

    #[test]
    fn malformed_and_overlong_lines_are_skipped() {
        let long =
            format!("1 2 0:1 / /run/vscode-slurm/41{} rw - tmpfs vscode-slurm rw\n", "x".repeat(MAX_LINE));
        let table = format!("garbage\n\n1 2 3\n- - - - - - -\n{long}{TABLE}");
        assert_eq!(at_in(&table, "/run/vscode-slurm/41"), Mounted::Ours);
        assert_eq!(at_in("23 22 0:22 / /run/x rw - tmpfs", "/run/x"), Mounted::Nothing);
        assert_eq!(at_in("23 22 0:22 / /run/x rw - tmpfs vscode-slurm", "/run/x"), Mounted::Ours);
        assert_eq!(at_in(&"\u{0}".repeat(3 * MAX_LINE), "/run/x"), Mounted::Nothing);
    }

    #[test]
    fn escapes_as_the_kernel_does() {
        assert_eq!(escape(b"/a b\tc\nd\\e"), b"/a\\040b\\011c\\012d\\134e".to_vec());
    }

    #[test]
    fn reads_this_threads_table() {
        assert!(matches!(at(Path::new("/")), Ok(Mounted::Other(_) | Mounted::Nothing)));
        assert_eq!(at(Path::new("/no/such/mount/point")).unwrap(), Mounted::Nothing);
    }
}
