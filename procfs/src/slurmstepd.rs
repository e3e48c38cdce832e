//! Slurm's step daemon, from which Slurm itself counts a step's processes.
//!
//! Every step running on a node has a slurmstepd there (batch, extern and
//! interactive steps included), and it is what Slurm's process tracking
//! starts from: proctrack/linuxproc takes a step's processes to be the
//! slurmstepd's descendants (`src/plugins/proctrack/linuxproc`:
//! `proctrack_p_create` makes the slurmstepd's pid the container, and
//! `kill_proc_tree`/`proctrack_linuxproc_get_pids` walk down from it by
//! parent pid), and the cgroup plugins put the slurmstepd in the job's
//! directory (see `cgroup.rs`). A process that left that tree (reparented to
//! init) is no longer tracked by proctrack/linuxproc, whatever its
//! environment says.
//!
//! Slurm finds its slurmstepds by command line (`find_ancestor`), which any
//! user can imitate; here only a process of root's, running root's
//! `slurmstepd` executable, counts.

use crate::status::Uids;

/// The executable's name: Slurm's, and Debian's (`/usr/sbin/slurmstepd` is
/// an alternatives link to `/usr/sbin/slurmstepd-wlm`, and /proc shows the
/// target).
const NAMES: [&[u8]; 2] = [b"slurmstepd", b"slurmstepd-wlm"];

/// True for a process running Slurm's slurmstepd as root (real and
/// effective): no user can start one, or name one of theirs so.
/// `exe` is the target of /proc/PID/exe (`" (deleted)"` after an upgrade).
pub fn is_slurmstepd(uids: Uids, exe: &[u8]) -> bool {
    if uids.real != 0 || uids.effective != 0 {
        return false;
    }
    let exe = exe.strip_suffix(b" (deleted)").unwrap_or(exe);
    exe.rsplit(|&b| b == b'/').next().is_some_and(|name| NAMES.contains(&name))
}

/// The job a slurmstepd's title names: slurmstepd sets it to
/// `slurmstepd: [JOB.STEP]` (`slurmstepd.c`, `_set_job_log_prefix`:
/// `[42.0]`, `[42.batch]`, `[42.extern]`, `[42.interactive]`, `[42.0+1]`,
/// `[42.0 stepmgr]`) or `slurmstepd: [JOB:namespace]` for a job container's
/// keeper, after the name it was started by (`slurmstepd-wlm: [...]` when
/// started by Debian's name). None for anything else, such as `slurmstepd
/// infinity` (cgroup v2's scope keeper) or a slurmstepd that has not set its
/// title yet.
pub fn slurmstepd_job(title: &[u8]) -> Option<u32> {
    let rest = NAMES.iter().find_map(|name| title.strip_prefix(*name)?.strip_prefix(b": ["))?;
    let digits = rest.iter().position(|b| !b.is_ascii_digit())?;
    if !matches!(rest.get(digits), Some(b'.' | b':' | b']')) {
        return None;
    }
    std::str::from_utf8(rest.get(..digits)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Uids = Uids { real: 0, effective: 0 };

    #[test]
    fn only_roots_slurmstepd_executable_is_a_slurmstepd() {
        assert!(is_slurmstepd(ROOT, b"/usr/sbin/slurmstepd"));
        assert!(is_slurmstepd(ROOT, b"/opt/slurm/24.05/sbin/slurmstepd (deleted)"));
        assert!(is_slurmstepd(ROOT, b"/usr/sbin/slurmstepd-wlm"), "Debian's");
        assert!(
            !is_slurmstepd(Uids { real: 2001, effective: 2001 }, b"/usr/sbin/slurmstepd"),
            "a user's copy"
        );
        assert!(!is_slurmstepd(Uids { real: 2001, effective: 0 }, b"/usr/sbin/slurmstepd"));
        assert!(!is_slurmstepd(Uids { real: 0, effective: 2001 }, b"/usr/sbin/slurmstepd"));
        for exe in
            [&b"/usr/bin/python3"[..], b"/usr/sbin/slurmd", b"/usr/sbin/slurmstepd-x", b"slurmstepd.sh", b""]
        {
            assert!(!is_slurmstepd(ROOT, exe), "{:?}", String::from_utf8_lossy(exe));
        }
    }

    #[test]
    fn titles_name_the_job() {
        for (title, job) in [
            (&b"slurmstepd: [42.0]"[..], 42),
            (b"slurmstepd: [42.batch]", 42),
            (b"slurmstepd: [7.extern]", 7),
            (b"slurmstepd: [7.interactive]", 7),
            (b"slurmstepd: [42.0+1]", 42),
            (b"slurmstepd: [42.0 stepmgr]", 42),
            (b"slurmstepd: [42:namespace]", 42),
            (b"slurmstepd: [4294967295.0]", u32::MAX),
            (b"slurmstepd-wlm: [42.batch]", 42),
        ] {
            assert_eq!(slurmstepd_job(title), Some(job), "{:?}", String::from_utf8_lossy(title));
        }
    }

    #[test]
    fn other_titles_name_no_job() {
        for title in [
            &b"slurmstepd infinity"[..],
            b"/usr/sbin/slurmstepd",
            b"slurmstepd",
            b"slurmstepd: [",
            b"slurmstepd: [42",
            b"slurmstepd: [.0]",
            b"slurmstepd: [x42.0]",
            b"slurmstepd: [42x.0]",
            b"slurmstepd: [4294967296.0]",
            b"slurmstepd: [99999999999999999999999.0]",
            b"slurmstepd:  [42.0]",
            b"xslurmstepd: [42.0]",
            b"slurmstepd-x: [42.0]",
            b"slurmd: [42.0]",
            b"",
        ] {
            assert_eq!(slurmstepd_job(title), None, "{:?}", String::from_utf8_lossy(title));
        }
    }
}
