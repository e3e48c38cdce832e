//! /proc/PID/cgroup: whether a process is kept in a Slurm job's cgroup.
//!
//! Slurm's cgroup plugins keep every process of a step in a directory of
//! its job, and the step's slurmstepd in (or right beside) that directory:
//!
//! - cgroup v1 (`src/plugins/cgroup/v1/xcgroup.c`, `xcgroup_create_hierarchy`):
//!   `CgroupPrepend/uid_U/job_J/step_S/task_T` in each hierarchy Slurm uses
//!   (`CgroupPrepend` is `/slurm`, `/slurm_NODE` with multiple slurmd); the
//!   slurmstepd itself goes into `.../uid_U/job_J` of the freezer hierarchy
//!   (`cgroup_v1.c`, `cgroup_p_step_addto`: "Stick slurmstepd pid to the
//!   newly created job container").
//! - cgroup v2 (`src/plugins/cgroup/v2/cgroup_v2.c`, `cgroup_p_step_create`):
//!   `SLICE/[NODE_]slurmstepd.scope/JOB/step_S/user/task_T`, where `JOB` is
//!   `job_J` (up to 25.11, or `CgroupJobIdPaths=yes`) or the job's SLUID
//!   (26.05), and the slurmstepd in `.../JOB/step_S/slurm`.
//!
//! A directory's name proves nothing: on cgroup v2 systemd delegates a
//! subtree to every user, who may create `.../slurmstepd.scope/job_42/...`
//! below it. So a job's directory is taken only from where a root-owned
//! slurmstepd of that job is ([`Cgroups::slurmstepd_job_dirs`]), and a
//! process is in the job when it is in that directory or below it, in the
//! same hierarchy ([`Cgroups::within`]). Users cannot move root's processes
//! between cgroups, nor create directories under Slurm's.
//!
//! The kernel refuses cgroup names with a newline (`cgroup_mkdir`,
//! `cgroup1_rename`), so a name cannot forge a line of this file.

use std::io;

use crate::read::read_prefix;

/// A line per hierarchy (about a dozen with cgroup v1), each path at most
/// `PATH_MAX` (the kernel fails the read rather than write a longer one).
/// Past this, the file is not one this parser understands.
const CGROUP_LIMIT: usize = 64 * 1024;

/// One line of /proc/PID/cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Membership {
    /// `ID:CONTROLLERS` (`0:` for cgroup v2): paths of different hierarchies
    /// are never compared.
    hierarchy: Vec<u8>,
    /// The path's components, without the leading `/`.
    path: Vec<Vec<u8>>,
}

/// Where a process is, in every cgroup hierarchy of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    lines: Vec<Membership>,
}

/// A job's directory in one hierarchy, as its slurmstepd's own cgroup shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobDir {
    hierarchy: Vec<u8>,
    path: Vec<Vec<u8>>,
}

impl JobDir {
    /// For messages and tests: `ID:CONTROLLERS:/path`.
    pub fn display(&self) -> String {
        let path: Vec<String> = self.path.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        format!("{}:/{}", String::from_utf8_lossy(&self.hierarchy), path.join("/"))
    }
}

/// None when any line is not `ID:CONTROLLERS:/PATH` with a numeric id, or
/// there is none: the whole file is then not understood, never half-read.
pub fn parse_cgroups(raw: &[u8]) -> Option<Cgroups> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    if raw.is_empty() {
        return None;
    }
    let mut lines = Vec::new();
    for line in raw.split(|&b| b == b'\n') {
        let first = line.iter().position(|&b| b == b':')?;
        let id = line.get(..first)?;
        if id.is_empty() || !id.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let rest = line.get(first.checked_add(1)?..)?;
        let second = rest.iter().position(|&b| b == b':')?;
        let hierarchy = line.get(..first.checked_add(1)?.checked_add(second)?)?.to_vec();
        let path = rest.get(second.checked_add(1)?..)?.strip_prefix(b"/")?;
        let path = if path.is_empty() {
            Vec::new()
        } else {
            path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect()
        };
        lines.push(Membership { hierarchy, path });
    }
    Some(Cgroups { lines })
}

/// The error is the read's (`NotFound` or `ESRCH` when the process is gone;
/// `ENAMETOOLONG` when one of its paths is longer than `PATH_MAX`); None
/// when the file is cut by the bound or not understood.
pub fn read_cgroups(pid: i32) -> io::Result<Option<Cgroups>> {
    let prefix = read_prefix(&format!("/proc/{pid}/cgroup"), CGROUP_LIMIT)?;
    if prefix.truncated {
        return Ok(None);
    }
    Ok(parse_cgroups(&prefix.bytes))
}

/// `job_J` with J the job's id, or any `job_DIGITS` when the id is not known.
fn names_job(component: &[u8], job: Option<u32>) -> bool {
    let Some(digits) = component.strip_prefix(b"job_") else { return false };
    match job {
        Some(id) => digits == id.to_string().as_bytes(),
        None => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
    }
}

impl Cgroups {
    /// The directories of the job a slurmstepd runs for, read from the
    /// slurmstepd's own cgroups (`job`: the id its title names, when it
    /// names one): on cgroup v2 the directory above its `step_S/slurm`, on
    /// cgroup v1 its `.../job_J` itself. None where the slurmstepd is in no
    /// such place: in the scope's waiting area (`.../slurmstepd.scope/system`),
    /// or in slurmd's own cgroup when Slurm does not use cgroups at all
    /// (proctrack/linuxproc with task/none, as in the lab).
    ///
    /// Only for a process [`crate::is_slurmstepd`] accepts: these paths are
    /// trusted because only root can have put it there.
    pub fn slurmstepd_job_dirs(&self, job: Option<u32>) -> Vec<JobDir> {
        let mut dirs = Vec::new();
        for line in &self.lines {
            let path = &line.path;
            let dir = match path.as_slice() {
                [dir @ .., step, last]
                    if last.as_slice() == b"slurm"
                        && step.len() > b"step_".len()
                        && step.starts_with(b"step_") =>
                {
                    dir
                }
                [.., last] if names_job(last, job) => path.as_slice(),
                _ => continue,
            };
            // A job's directory is never the root of a hierarchy: that would
            // put every process of the node in the job.
            if dir.is_empty() {
                continue;
            }
            dirs.push(JobDir { hierarchy: line.hierarchy.clone(), path: dir.to_vec() });
        }
        dirs
    }

    /// True when the process is in `dir` or below it, in `dir`'s hierarchy.
    /// Below means by name, component by component: `job_42` does not
    /// contain `job_421`, and nothing below may be `.` or `..`.
    pub fn within(&self, dir: &JobDir) -> bool {
        self.lines.iter().any(|line| {
            line.hierarchy == dir.hierarchy
                && line.path.starts_with(&dir.path)
                && line.path.get(dir.path.len()..).is_some_and(|below| {
                    below.iter().all(|c| !c.is_empty() && c.as_slice() != b"." && c.as_slice() != b"..")
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Cgroups {
        parse_cgroups(text.as_bytes()).unwrap_or_else(|| panic!("parses: {text:?}"))
    }

    fn dirs(text: &str, job: Option<u32>) -> Vec<String> {
        parse(text).slurmstepd_job_dirs(job).iter().map(JobDir::display).collect()
    }

    /// A compute node with cgroup v1, proctrack/cgroup and task/cgroup, as
    /// Slurm lays it out: the slurmstepd of job 42 and a task of its step 0.
    const V1_STEPD: &str = "12:pids:/system.slice/slurmd.service\n11:freezer:/slurm/uid_2001/job_42\n\
        7:memory:/system.slice/slurmd.service\n4:cpuset:/\n1:name=systemd:/system.slice/slurmd.service\n";
    const V1_TASK: &str =
        "12:pids:/system.slice/slurmd.service\n11:freezer:/slurm/uid_2001/job_42/step_0/task_0\n\
        7:memory:/slurm/uid_2001/job_42/step_0/task_0\n4:cpuset:/slurm/uid_2001/job_42/step_0\n\
        1:name=systemd:/system.slice/slurmd.service\n";
    /// cgroup v2 with systemd: the slurmstepd of job 42's batch step and its task.
    const V2_STEPD: &str = "0::/system.slice/slurmstepd.scope/job_42/step_batch/slurm\n";
    const V2_TASK: &str = "0::/system.slice/slurmstepd.scope/job_42/step_batch/user/task_0\n";

    #[test]
    fn a_v2_slurmstepd_shows_its_jobs_directory() {
        assert_eq!(dirs(V2_STEPD, Some(42)), vec!["0::/system.slice/slurmstepd.scope/job_42"]);
        // 26.05 names the directory by the job's SLUID, not its id.
        assert_eq!(
            dirs("0::/system.slice/slurmstepd.scope/sEKNKTV3WPV500/step_0/slurm\n", Some(42)),
            vec!["0::/system.slice/slurmstepd.scope/sEKNKTV3WPV500"]
        );
        // Multiple slurmd, another slice, a title that named no job.
        assert_eq!(
            dirs("0::/hpc.slice/c1_slurmstepd.scope/job_7/step_extern/slurm\n", None),
            vec!["0::/hpc.slice/c1_slurmstepd.scope/job_7"]
        );
        let task = parse(V2_TASK);
        let dir = &parse(V2_STEPD).slurmstepd_job_dirs(Some(42))[0];
        assert!(task.within(dir));
        assert!(parse("0::/system.slice/slurmstepd.scope/job_42\n").within(dir), "the directory itself");
    }

    #[test]
    fn a_v1_slurmstepd_shows_its_jobs_directory_in_the_freezer() {
        assert_eq!(dirs(V1_STEPD, Some(42)), vec!["11:freezer:/slurm/uid_2001/job_42"]);
        assert_eq!(dirs(V1_STEPD, None), vec!["11:freezer:/slurm/uid_2001/job_42"]);
        assert_eq!(dirs(V1_STEPD, Some(4)), Vec::<String>::new(), "another job's directory");
        let dir = &parse(V1_STEPD).slurmstepd_job_dirs(Some(42))[0];
        assert!(parse(V1_TASK).within(dir));
        let multiple = "5:freezer:/slurm_c1/uid_2001/job_42\n";
        assert_eq!(dirs(multiple, Some(42)), vec!["5:freezer:/slurm_c1/uid_2001/job_42"]);
    }

    #[test]
    fn a_slurmstepd_outside_job_directories_shows_none() {
        for text in [
            // proctrack/linuxproc, task/none: slurmd's own cgroup (the lab's case).
            "0::/system.slice/slurmd.service\n",
            "0::/\n",
            // The waiting area for new slurmstepds, and the scope's keeper.
            "0::/system.slice/slurmstepd.scope/system\n",
            "0::/system.slice/slurmstepd.scope\n",
            // Not a step's slurm directory.
            "0::/system.slice/step_/slurm\n",
            "0::/slurm\n",
            // A hierarchy's root is never a job's directory.
            "0::/step_0/slurm\n",
            "4:freezer:/job_42/x\n",
        ] {
            assert_eq!(dirs(text, Some(42)), Vec::<String>::new(), "{text:?}");
        }
    }

    #[test]
    fn a_users_own_copy_of_the_layout_is_not_the_job() {
        let v2 = &parse(V2_STEPD).slurmstepd_job_dirs(Some(42))[0];
        let v1 = &parse(V1_STEPD).slurmstepd_job_dirs(Some(42))[0];
        let outside_v2 = [
            // systemd delegates user@UID.service to the user, who may build anything below it.
            "0::/user.slice/user-2001.slice/user@2001.service/app.slice/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n",
            "0::/user.slice/user-2001.slice/session-3.scope\n",
            // Another job, a longer id, a sibling.
            "0::/system.slice/slurmstepd.scope/job_421/step_0/user/task_0\n",
            "0::/system.slice/slurmstepd.scope/job_4/step_0/user\n",
            "0::/system.slice/slurmstepd.scope/system\n",
            // A parent of the directory is not inside it.
            "0::/system.slice/slurmstepd.scope\n",
            // The same path in another hierarchy.
            "1:name=systemd:/system.slice/slurmstepd.scope/job_42/step_0/user\n",
            // Not a canonical path (the kernel never writes these below a directory).
            "0::/system.slice/slurmstepd.scope/job_42/../../../user.slice\n",
            "0::/system.slice/slurmstepd.scope/job_42//x\n",
            "0::/system.slice/slurmstepd.scope/job_42/.\n",
        ];
        let outside_v1 = [
            "11:freezer:/slurm/uid_2002/job_42\n",
            "11:freezer:/other/slurm/uid_2001/job_42/step_0\n",
            "7:memory:/slurm/uid_2001/job_42/step_0/task_0\n",
            "0::/slurm/uid_2001/job_42/step_0\n",
        ];
        let cases = outside_v2.map(|text| (v2, text)).into_iter().chain(outside_v1.map(|text| (v1, text)));
        for (dir, text) in cases {
            assert!(!parse(text).within(dir), "{text:?}");
        }
    }

    #[test]
    fn garbled_files_are_not_understood() {
        for bad in [
            "",
            "\n",
            "0:/x\n",
            "x::/a\n",
            "::/a\n",
            "0::relative\n",
            "0::/a\ngarbage\n",
            "0::/a\n\n",
            "-1::/a\n",
        ] {
            assert_eq!(parse_cgroups(bad.as_bytes()), None, "{bad:?}");
        }
        // Colons and odd bytes in a name are the name's.
        let odd = parse("0::/a:b/\u{fffd} (deleted)\n");
        assert_eq!(odd.lines[0].path, vec![b"a:b".to_vec(), "\u{fffd} (deleted)".as_bytes().to_vec()]);
        assert_eq!(parse("0::/").lines[0].path, Vec::<Vec<u8>>::new(), "no trailing newline, the root");
    }

    #[test]
    fn this_process_reads_back() {
        let me = read_cgroups(i32::try_from(std::process::id()).unwrap()).expect("readable").expect("parses");
        assert!(!me.lines.is_empty());
        assert!(read_cgroups(-5).is_err());
    }
}
