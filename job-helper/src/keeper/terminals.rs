//! A `wall` limited to one job: the terminals its processes have open.
//!
//! Only processes of the job's own user are looked at (the keeper runs as
//! that user and could not read others' anyway), and a process counts as
//! the job's when its environment names the job: Slurm sets SLURM_JOB_ID in
//! every step, and what the user starts in a terminal inherits it.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Writes `text` as one line to each terminal of the job's processes;
/// returns how many took it. Never blocks on a terminal nobody reads.
pub fn write_banner(job_id: &str, uid: u32, text: &str) -> usize {
    let line = format!("\r\n*** {} ***\r\n", text.replace(|c: char| c.is_control(), " "));
    job_terminals(Path::new("/proc"), job_id, uid, std::process::id())
        .into_iter()
        .filter(|tty| {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                .open(tty)
                .and_then(|mut terminal| terminal.write_all(line.as_bytes()))
                .map_err(|e| tracing::debug!("cannot write to {}: {e}", tty.display()))
                .is_ok()
        })
        .count()
}

/// The terminal devices on the standard streams of the job's processes.
pub fn job_terminals(proc: &Path, job_id: &str, uid: u32, except_pid: u32) -> BTreeSet<PathBuf> {
    let Ok(job_id) = job_id.parse::<u32>() else { return BTreeSet::new() };
    let Ok(entries) = fs::read_dir(proc) else { return BTreeSet::new() };
    let mut found = BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == except_pid || entry.metadata().map_or(true, |m| m.uid() != uid) {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else { continue };
        // The same rule as the epilog's: one definition of "in this job".
        if !vscode_slurm_procfs::environ_names_job(&environ, job_id) {
            continue;
        }
        for fd in 0..3 {
            let Ok(target) = fs::read_link(entry.path().join("fd").join(fd.to_string())) else { continue };
            if is_terminal_device(&target) {
                found.insert(target);
            }
        }
    }
    found
}

/// Pseudo-terminals and the console-like ttys, nothing else under /dev.
fn is_terminal_device(path: &Path) -> bool {
    let text = path.to_string_lossy();
    text.strip_prefix("/dev/pts/").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        || text
            .strip_prefix("/dev/tty")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_terminal_devices_count() {
        for yes in ["/dev/pts/0", "/dev/pts/17", "/dev/tty3"] {
            assert!(is_terminal_device(Path::new(yes)), "{yes}");
        }
        for no in ["/dev/null", "/dev/pts/ptmx", "/dev/tty", "/dev/pts/", "pipe:[123]", "/home/x/dev/pts/1"] {
            assert!(!is_terminal_device(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn a_process_of_the_job_with_a_terminal_is_found() {
        // A fake /proc: pid 10 is in job 7 with a pty, 11 in job 8, 12 in
        // job 7 but without a terminal.
        let root = std::env::temp_dir().join(format!("vscode-terminals-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let uid = nix::unistd::getuid().as_raw();
        for (pid, env, tty) in [
            ("10", "A=1\0SLURM_JOB_ID=7\0", "/dev/pts/5"),
            ("11", "SLURM_JOB_ID=8\0", "/dev/pts/6"),
            ("12", "SLURM_JOB_ID=7\0", "/dev/null"),
        ] {
            let dir = root.join(pid);
            fs::create_dir_all(dir.join("fd")).unwrap();
            fs::write(dir.join("environ"), env).unwrap();
            std::os::unix::fs::symlink(tty, dir.join("fd/1")).unwrap();
        }
        let found = job_terminals(&root, "7", uid, 0);
        assert_eq!(found.into_iter().collect::<Vec<_>>(), vec![PathBuf::from("/dev/pts/5")]);
        assert!(job_terminals(&root, "7", uid + 1, 0).is_empty(), "another user's processes are skipped");
        assert!(job_terminals(&root, "7", uid, 10).is_empty(), "the keeper itself is skipped");
        fs::remove_dir_all(&root).unwrap();
    }
}
