//! Which processes a Slurm job on this node tracks: the only ones spared
//! for being "in a job".
//!
//! A process is in a job when the job runs on this node and Slurm's own
//! process tracking counts the process as the job's:
//!
//! 1. it descends (by parent pid) from a slurmstepd, root's and running
//!    root's executable: what proctrack/linuxproc counts as a step's
//!    processes, and where every task starts under the other plugins; or
//! 2. it is in a job's cgroup directory, as a slurmstepd of that job running
//!    here shows it (proctrack/cgroup, task/cgroup, cgroup v1 or v2; see
//!    `vscode_slurm_procfs::Cgroups`).
//!
//! Its environment does not count: `SLURM_JOB_ID` is set by whoever starts
//! the process, and it stays in a process that left its job. A process that
//! left the step's tree and its cgroups (reparented to init under
//! proctrack/linuxproc or proctrack/pgid) is no longer tracked and is judged
//! like any other.
//!
//! Rule 2 needs a process's cgroups only on a node where some job's
//! slurmstepd is in a job directory; elsewhere (login nodes, Slurm without
//! cgroups) they are not read at all. Where they are needed and cannot be
//! read, the process is `Unknown`, and never ended.

use std::collections::HashMap;

use vscode_slurm_procfs::{read_cgroups, read_stat, Cgroups, JobDir};

use crate::process::{Job, Process, Table};

/// A process's cgroups, None when they could not be read or understood.
pub type CgroupsOf<'a> = &'a dyn Fn(&Process) -> Option<Cgroups>;

/// The jobs running on this node in cgroups: what judges processes found
/// after the scan (children forked while a tree is being ended).
#[derive(Debug, Default)]
pub struct NodeJobs {
    /// Each job's directory, with the job's id when its slurmstepd's title names it.
    dirs: HashMap<JobDir, Option<u32>>,
}

impl NodeJobs {
    /// False where no job here is kept in cgroups: nothing needs reading then.
    pub fn in_cgroups(&self) -> bool {
        !self.dirs.is_empty()
    }

    /// Rule 2, for a process outside every slurmstepd's tree.
    pub fn by_cgroups(&self, cgroups: Option<&Cgroups>) -> Job {
        if self.dirs.is_empty() {
            return Job::Outside;
        }
        let Some(cgroups) = cgroups else { return Job::Unknown };
        self.dirs
            .iter()
            .find(|(dir, _)| cgroups.within(dir))
            .map_or(Job::Outside, |(_, job)| Job::Inside(*job))
    }
}

/// Sets the `job` of every process in `table`.
pub fn classify(table: &mut Table, cgroups_of: CgroupsOf<'_>) -> NodeJobs {
    let stepds: HashMap<i32, Option<u32>> =
        table.processes.values().filter_map(|p| Some((p.pid, p.slurmstepd()?))).collect();
    let below = table.nearest_marked_ancestors(|p| stepds.contains_key(&p.pid));
    let mut jobs = NodeJobs::default();
    for (pid, job) in &stepds {
        let Some(cgroups) = table.get(*pid).and_then(cgroups_of) else { continue };
        for dir in cgroups.slurmstepd_job_dirs(*job) {
            jobs.dirs.entry(dir).or_insert(*job);
        }
    }
    let verdicts: Vec<(i32, Job)> = table
        .processes
        .values()
        .map(|p| {
            let job = if let Some(job) = stepds.get(&p.pid) {
                Job::Inside(*job)
            } else if let Some(stepd) = below.get(&p.pid) {
                Job::Inside(stepds.get(stepd).copied().flatten())
            } else if !jobs.in_cgroups() {
                Job::Outside
            } else {
                jobs.by_cgroups(cgroups_of(p).as_ref())
            };
            (p.pid, job)
        })
        .collect();
    for (pid, job) in verdicts {
        if let Some(p) = table.processes.get_mut(&pid) {
            p.job = job;
        }
    }
    jobs
}

/// The cgroups of the process `pid` started at `start_ticks`; None also
/// when the pid has passed to another process meanwhile.
pub fn read_cgroups_of(pid: i32, start_ticks: u64) -> Option<Cgroups> {
    let cgroups = read_cgroups(pid).ok().flatten();
    // Read after: if the pid was reused during the read, the start time changed.
    if read_stat(pid)?.start_ticks != start_ticks {
        return None;
    }
    cgroups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::tests::proc;
    use vscode_slurm_procfs::parse_cgroups;

    const ALICE: u32 = 2001;
    const BOB: u32 = 2002;

    fn stepd(pid: i32, title: &str) -> Process {
        let mut p = proc(pid, 1, 0, &[title]);
        p.exe = Some("/usr/sbin/slurmstepd".into());
        p
    }

    /// Classifies `processes`, whose cgroups are `cgroups[pid]` (missing: unreadable).
    fn classify_with(processes: Vec<Process>, cgroups: &[(i32, &str)]) -> (HashMap<i32, Job>, NodeJobs) {
        let files: HashMap<i32, String> =
            cgroups.iter().map(|(pid, text)| (*pid, text.to_string())).collect();
        let read = |p: &Process| files.get(&p.pid).and_then(|text| parse_cgroups(text.as_bytes()));
        let mut table = Table::new(processes);
        for p in table.processes.values_mut() {
            p.job = Job::Unknown;
        }
        let jobs = classify(&mut table, &read);
        (table.processes.values().map(|p| (p.pid, p.job)).collect(), jobs)
    }

    #[test]
    fn a_steps_tree_is_in_its_job_and_what_left_it_is_not() {
        // proctrack/linuxproc: no cgroups involved (the lab's slurm.conf).
        let processes = vec![
            proc(1, 0, 0, &["/sbin/init"]),
            stepd(40, "slurmstepd: [42.batch]"),
            proc(41, 40, ALICE, &["/bin/bash", "/var/spool/slurmd/job00042/slurm_script"]),
            proc(42, 41, ALICE, &["/home/alice/.vscode-server/bin/x/node"]),
            // Daemonised out of the step: reparented to init.
            proc(50, 1, ALICE, &["/home/alice/.vscode-server/bin/x/node"]),
            // Whatever its environment says (it is not read).
            proc(60, 1, BOB, &["SLURM_JOB_ID=42"]),
            stepd(70, "slurmstepd infinity"),
            proc(71, 70, BOB, &["x"]),
        ];
        // Nobody's cgroups are needed: not even read.
        let (jobs, node) = classify_with(processes, &[]);
        assert!(!node.in_cgroups());
        assert_eq!(jobs[&40], Job::Inside(Some(42)));
        assert_eq!(jobs[&41], Job::Inside(Some(42)));
        assert_eq!(jobs[&42], Job::Inside(Some(42)));
        assert_eq!(jobs[&50], Job::Outside);
        assert_eq!(jobs[&60], Job::Outside);
        assert_eq!(jobs[&71], Job::Inside(None), "a slurmstepd that names no job still tracks its tree");
        assert_eq!(jobs[&1], Job::Outside);
    }

    #[test]
    fn a_users_slurmstepd_tracks_nothing() {
        let mut fake = proc(40, 1, BOB, &["slurmstepd: [42.0]"]);
        fake.exe = Some("/usr/sbin/slurmstepd".into());
        let mut root_named = proc(45, 1, 0, &["slurmstepd: [42.0]"]);
        root_named.exe = Some("/usr/bin/python3".into());
        let processes = vec![fake, proc(41, 40, BOB, &["x"]), root_named, proc(46, 45, BOB, &["y"])];
        let (jobs, _) = classify_with(processes, &[]);
        assert_eq!((jobs[&41], jobs[&46]), (Job::Outside, Job::Outside));
    }

    const V2_STEPD: &str = "0::/system.slice/slurmstepd.scope/job_42/step_0/slurm\n";

    #[test]
    fn a_jobs_cgroup_counts_where_its_slurmstepd_shows_it() {
        let processes = vec![
            proc(1, 0, 0, &["/sbin/init"]),
            stepd(40, "slurmstepd: [42.0]"),
            // A task that double-forked out of the step's tree: still in the job's cgroup.
            proc(50, 1, ALICE, &["escaped"]),
            // A user's own copy of the layout in the subtree systemd delegates to them.
            proc(51, 1, BOB, &["copy"]),
            proc(52, 1, BOB, &["plain"]),
            proc(53, 1, BOB, &["unreadable"]),
            proc(54, 1, BOB, &["another job's directory"]),
        ];
        let (jobs, node) = classify_with(
            processes,
            &[
                (1, "0::/init.scope\n"),
                (40, V2_STEPD),
                (50, "0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n"),
                (
                    51,
                    "0::/user.slice/user-2002.slice/user@2002.service/slurmstepd.scope/job_42/step_0/user/task_0\n",
                ),
                (52, "0::/user.slice/user-2002.slice/session-4.scope\n"),
                (54, "0::/system.slice/slurmstepd.scope/job_43/step_0/user/task_0\n"),
            ],
        );
        assert!(node.in_cgroups());
        assert_eq!(jobs[&50], Job::Inside(Some(42)));
        assert_eq!(jobs[&51], Job::Outside);
        assert_eq!(jobs[&52], Job::Outside);
        assert_eq!(jobs[&53], Job::Unknown, "cannot read: never ended");
        assert_eq!(jobs[&54], Job::Outside, "job 43 has no slurmstepd here");
        assert_eq!(jobs[&1], Job::Outside);
    }

    #[test]
    fn v1_job_directories_come_from_the_freezer() {
        let processes =
            vec![stepd(40, "slurmstepd: [42.0]"), proc(50, 1, ALICE, &["task"]), proc(51, 1, BOB, &["x"])];
        let (jobs, _) = classify_with(
            processes,
            &[
                (40, "4:freezer:/slurm/uid_2001/job_42\n3:memory:/\n"),
                (50, "4:freezer:/slurm/uid_2001/job_42/step_0/task_0\n3:memory:/slurm/uid_2001/job_42/step_0\n"),
                (51, "4:freezer:/\n3:memory:/slurm/uid_2001/job_42/step_0\n"),
            ],
        );
        assert_eq!(jobs[&50], Job::Inside(Some(42)));
        assert_eq!(jobs[&51], Job::Outside, "only the hierarchy the slurmstepd showed counts");
    }

    #[test]
    fn unreadable_cgroups_matter_only_where_jobs_use_cgroups() {
        // A slurmstepd outside any job directory (linuxproc), and processes whose cgroups cannot be read.
        let processes = vec![stepd(40, "slurmstepd: [42.0]"), proc(50, 1, BOB, &["x"])];
        let (jobs, node) = classify_with(processes, &[(40, "0::/system.slice/slurmd.service\n")]);
        assert!(!node.in_cgroups());
        assert_eq!(jobs[&50], Job::Outside);
        assert_eq!(node.by_cgroups(None), Job::Outside);
    }

    #[test]
    fn children_found_later_are_judged_by_the_same_directories() {
        let (_, node) = classify_with(vec![stepd(40, "slurmstepd: [42.0]")], &[(40, V2_STEPD)]);
        let inside = parse_cgroups(b"0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n");
        let outside = parse_cgroups(b"0::/user.slice/user-2002.slice/session-4.scope\n");
        assert_eq!(node.by_cgroups(inside.as_ref()), Job::Inside(Some(42)));
        assert_eq!(node.by_cgroups(outside.as_ref()), Job::Outside);
        assert_eq!(node.by_cgroups(None), Job::Unknown);
    }

    #[test]
    fn this_process_reads_back_and_a_wrong_start_time_does_not() {
        let me = i32::try_from(std::process::id()).unwrap();
        let start = read_stat(me).unwrap().start_ticks;
        assert!(read_cgroups_of(me, start).is_some());
        assert!(read_cgroups_of(me, start.wrapping_add(1)).is_none());
    }
}
