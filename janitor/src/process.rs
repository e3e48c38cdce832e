//! One process as the janitor sees it, and what can be told from it alone.
//! Filled from /proc by `procfs`, or by hand in tests.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Whether a Slurm job running on this node tracks the process (`jobs.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Outside,
    /// The job's id, when its slurmstepd's title names it.
    Inside(Option<u32>),
    /// What would tell could not be read (its cgroups, on a node where jobs
    /// run in cgroups): treated as untouchable.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    /// Real uid: who the process belongs to.
    pub uid: u32,
    /// Effective uid: a set-uid root helper in a user's tree is not the user's to end.
    pub euid: u32,
    /// Clock ticks since boot: with the pid, what identifies the process across pid reuse.
    pub start_ticks: u64,
    pub age: Duration,
    /// User plus system time.
    pub cpu: Duration,
    pub rss_bytes: u64,
    pub comm: String,
    pub argv: Vec<String>,
    /// Target of /proc/PID/exe, `" (deleted)"` suffix included when there is one.
    pub exe: Option<String>,
    /// Unknown until `jobs::classify` has looked at the whole table.
    pub job: Job,
    pub zombie: bool,
}

impl Process {
    /// The `code` CLI, `code-server`, node, the extension host and scripts
    /// run from the server's directory all carry that directory in their
    /// executable or their arguments; user shells they start do not, which
    /// is why trees are taken whole from their topmost such process.
    pub fn looks_like_vscode_server(&self) -> bool {
        self.exe.as_deref().is_some_and(is_vscode_server_path)
            || self.argv.iter().any(|a| is_vscode_server_path(a))
    }

    /// The root-owned privilege-separation monitor of an ssh session, which
    /// exists for as long as the session is connected: `sshd: alice [priv]`
    /// (`sshd-session: ...` from OpenSSH 9.8; titled `[postauth]` instead of
    /// `[priv]` by OpenSSH 10.6, Debian testing's, seen with Slurm 26.05 in
    /// the lab). Only root can own it, so a user cannot keep servers alive by
    /// naming a process after it.
    pub fn ssh_session_user(&self) -> Option<&str> {
        if self.uid != 0 || self.euid != 0 {
            return None;
        }
        let exe = self.exe.as_deref()?;
        let exe = exe.strip_suffix(" (deleted)").unwrap_or(exe);
        let program = exe.rsplit('/').next()?;
        if program != "sshd" && program != "sshd-session" {
            return None;
        }
        let title = self.argv.first()?.trim();
        let rest = title.strip_prefix(program)?.strip_prefix(": ")?;
        let user = rest.strip_suffix(" [priv]").or_else(|| rest.strip_suffix(" [postauth]"))?;
        (!user.is_empty() && !user.contains(' ')).then_some(user)
    }

    /// The job a slurmstepd runs for (None inside when its title names
    /// none); None for every other process.
    pub fn slurmstepd(&self) -> Option<Option<u32>> {
        let uids = vscode_slurm_procfs::Uids { real: self.uid, effective: self.euid };
        if !vscode_slurm_procfs::is_slurmstepd(uids, self.exe.as_deref()?.as_bytes()) {
            return None;
        }
        Some(self.argv.first().and_then(|title| vscode_slurm_procfs::slurmstepd_job(title.as_bytes())))
    }

    /// What the table shows: the command line, or the kernel's name when the
    /// command line is gone (zombies, some kernel threads).
    /// Values of `--...token...=` arguments are hidden: older servers took
    /// their connection token on the command line, and the table goes to
    /// cron mail and syslog.
    pub fn command(&self) -> String {
        if self.argv.is_empty() {
            return format!("[{}]", self.comm);
        }
        let shown: Vec<String> = self
            .argv
            .iter()
            .map(|arg| match arg.split_once('=') {
                Some((key, _))
                    if key.starts_with("--")
                        && key.to_ascii_lowercase().contains("token")
                        && !key.ends_with("-file") =>
                {
                    format!("{key}=***")
                }
                _ => arg.clone(),
            })
            .collect();
        shown.join(" ")
    }
}

/// A path (it has a slash: a bare word in an argument list is not a
/// server) with a component that is a VS Code server directory.
fn is_vscode_server_path(arg: &str) -> bool {
    arg.contains('/')
        && arg
            .split('/')
            .any(|component| component == ".vscode-server" || component == ".vscode-server-insiders")
}

/// Every process of the node at one moment (as near to one moment as /proc allows).
#[derive(Debug, Default)]
pub struct Table {
    pub processes: HashMap<i32, Process>,
    children: HashMap<i32, Vec<i32>>,
}

impl Table {
    pub fn new(processes: impl IntoIterator<Item = Process>) -> Table {
        let processes: HashMap<i32, Process> = processes.into_iter().map(|p| (p.pid, p)).collect();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in processes.values() {
            children.entry(p.ppid).or_default().push(p.pid);
        }
        for list in children.values_mut() {
            list.sort_unstable();
        }
        Table { processes, children }
    }

    pub fn get(&self, pid: i32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    /// `pid` and everything below it, parents before children.
    pub fn subtree(&self, pid: i32) -> Vec<i32> {
        let mut out = vec![pid];
        let mut next = 0;
        while next < out.len() {
            if let Some(kids) = self.children.get(&out[next]) {
                // A scan racing pid reuse can show a cycle; never loop on it.
                out.extend(kids.iter().filter(|k| **k != pid));
            }
            next += 1;
            if out.len() > self.processes.len() + 1 {
                break;
            }
        }
        out
    }

    /// Parents of `pid`, nearest first, as far as the table knows them.
    pub fn ancestors(&self, pid: i32) -> Vec<i32> {
        let mut out = Vec::new();
        let mut seen = HashSet::from([pid]);
        let mut current = self.get(pid).map(|p| p.ppid);
        while let Some(parent) = current {
            // A scan racing pid reuse can show a cycle; never loop on it.
            if parent <= 0 || !seen.insert(parent) {
                break;
            }
            out.push(parent);
            current = self.get(parent).map(|p| p.ppid);
        }
        out
    }

    /// For every process below a `marked` one, the nearest such ancestor.
    ///
    /// A user can nest thousands of processes in one chain, so this does not
    /// walk up from every process: each is looked at once, and every chain
    /// walked up is answered for all its members together.
    pub fn nearest_marked_ancestors(&self, marked: impl Fn(&Process) -> bool) -> HashMap<i32, i32> {
        // None: no marked ancestor. Only processes of the table get an answer.
        let mut answers: HashMap<i32, Option<i32>> = HashMap::with_capacity(self.processes.len());
        let mut chain: Vec<i32> = Vec::new();
        let mut on_chain: HashSet<i32> = HashSet::new();
        for &start in self.processes.keys() {
            if answers.contains_key(&start) {
                continue;
            }
            chain.clear();
            on_chain.clear();
            let mut current = start;
            chain.push(current);
            on_chain.insert(current);
            // Every process on `chain` has the answer of the last one.
            let answer = loop {
                let Some(parent) = self.get(current).map(|p| p.ppid) else { break None };
                let Some(parent_process) = self.get(parent).filter(|_| parent > 0) else { break None };
                if marked(parent_process) {
                    break Some(parent);
                }
                if let Some(known) = answers.get(&parent) {
                    break *known;
                }
                if !on_chain.insert(parent) {
                    // A cycle (a scan racing pid reuse): nothing above it is known.
                    break None;
                }
                chain.push(parent);
                current = parent;
            };
            for pid in &chain {
                answers.insert(*pid, answer);
            }
        }
        answers.into_iter().filter_map(|(pid, answer)| Some((pid, answer?))).collect()
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A plain process of `uid` outside any job; tests change what they need.
    pub fn proc(pid: i32, ppid: i32, uid: u32, argv: &[&str]) -> Process {
        Process {
            pid,
            ppid,
            uid,
            euid: uid,
            start_ticks: 1_000 + pid as u64,
            age: Duration::from_secs(7_200),
            cpu: Duration::from_millis(1_500),
            rss_bytes: 10 << 20,
            comm: argv.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_owned()).unwrap_or_default(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            exe: None,
            job: Job::Outside,
            zombie: false,
        }
    }

    pub fn sshd_monitor(pid: i32, ppid: i32, user: &str) -> Process {
        let title = format!("sshd: {user} [priv]");
        let mut p = proc(pid, ppid, 0, &[&title]);
        p.exe = Some("/usr/sbin/sshd".into());
        p
    }

    #[test]
    fn server_paths_are_recognised_by_component() {
        let node = proc(10, 1, 2001, &["/home/alice/.vscode-server/bin/abc/node", "--type=extensionHost"]);
        assert!(node.looks_like_vscode_server());
        let flag = proc(11, 1, 2001, &["sh", "--cli-data-dir=/home/alice/.vscode-server/cli"]);
        assert!(flag.looks_like_vscode_server());
        let insiders = proc(12, 1, 2001, &["/home/a/.vscode-server-insiders/code-insiders"]);
        assert!(insiders.looks_like_vscode_server());
        for argv in [
            &["grep", ".vscode-server"][..],
            &["/home/alice/.vscode-server-backup/node"],
            &["/home/alice/vscode-server/node"],
            &["/home/alice/x.vscode-server/node"],
            &["bash"],
        ] {
            assert!(!proc(13, 1, 2001, argv).looks_like_vscode_server(), "{argv:?}");
        }
        let mut by_exe = proc(14, 1, 2001, &["node"]);
        by_exe.exe = Some("/home/alice/.vscode-server/bin/abc/node (deleted)".into());
        assert!(by_exe.looks_like_vscode_server());
    }

    #[test]
    fn ssh_sessions_are_the_root_owned_monitors() {
        assert_eq!(sshd_monitor(5, 1, "alice").ssh_session_user(), Some("alice"));
        let mut session = sshd_monitor(5, 1, "bob");
        session.exe = Some("/usr/sbin/sshd (deleted)".into());
        assert_eq!(session.ssh_session_user(), Some("bob"), "after an openssh upgrade");
        let mut new_style = proc(5, 1, 0, &["sshd-session: carol [priv]"]);
        new_style.exe = Some("/usr/lib/openssh/sshd-session".into());
        assert_eq!(new_style.ssh_session_user(), Some("carol"));
        let mut openssh_10_6 = proc(5, 1, 0, &["sshd-session: dave [postauth]"]);
        openssh_10_6.exe = Some("/usr/lib/openssh/sshd-session".into());
        assert_eq!(openssh_10_6.ssh_session_user(), Some("dave"));

        let mut user_side = proc(6, 5, 2001, &["sshd: alice@notty"]);
        user_side.exe = Some("/usr/sbin/sshd".into());
        assert_eq!(user_side.ssh_session_user(), None, "the user-owned half is not proof");
        let mut spoofed = sshd_monitor(7, 1, "alice");
        spoofed.uid = 2001;
        spoofed.euid = 2001;
        assert_eq!(spoofed.ssh_session_user(), None, "a user naming a process after a session");
        let mut other_exe = sshd_monitor(8, 1, "alice");
        other_exe.exe = Some("/usr/bin/python3".into());
        assert_eq!(other_exe.ssh_session_user(), None);
        let mut listener = sshd_monitor(9, 1, "x");
        listener.argv = vec!["sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups".into()];
        assert_eq!(listener.ssh_session_user(), None);
        let mut preauth = sshd_monitor(9, 1, "x");
        preauth.argv = vec!["sshd: alice [preauth]".into()];
        assert_eq!(preauth.ssh_session_user(), None);
    }

    #[test]
    fn commands_hide_tokens() {
        let p = proc(
            5,
            1,
            2001,
            &["node", "--connection-token=s3cret", "--port=0", "--connection-token-file=/f"],
        );
        assert_eq!(p.command(), "node --connection-token=*** --port=0 --connection-token-file=/f");
        let mut zombie = proc(6, 1, 2001, &[]);
        zombie.comm = "node".into();
        assert_eq!(zombie.command(), "[node]");
    }

    #[test]
    fn subtree_and_ancestors_follow_parent_links() {
        let table = Table::new([
            proc(1, 0, 0, &["init"]),
            proc(10, 1, 2001, &["a"]),
            proc(11, 10, 2001, &["b"]),
            proc(12, 11, 2001, &["c"]),
            proc(13, 10, 2001, &["d"]),
            proc(20, 1, 2001, &["other"]),
        ]);
        assert_eq!(table.subtree(10), vec![10, 11, 13, 12]);
        assert_eq!(table.ancestors(12), vec![11, 10, 1]);
        assert_eq!(table.ancestors(1), Vec::<i32>::new());
    }

    #[test]
    fn a_cycle_from_a_racy_scan_does_not_hang() {
        let table = Table::new([proc(10, 11, 2001, &["a"]), proc(11, 10, 2001, &["b"])]);
        assert_eq!(table.ancestors(10), vec![11]);
        assert_eq!(table.subtree(10), vec![10, 11]);
        assert!(table.nearest_marked_ancestors(|_| false).is_empty());
        let marked = table.nearest_marked_ancestors(|p| p.pid == 11);
        assert_eq!(marked.get(&10), Some(&11));
    }

    /// A process the `nearest_marked_ancestors` tests mark ([`is_marked`]).
    fn marked(pid: i32, ppid: i32, uid: u32) -> Process {
        proc(pid, ppid, uid, &["mark"])
    }

    fn is_marked(p: &Process) -> bool {
        p.argv == ["mark"]
    }

    #[test]
    fn nearest_marked_ancestors_are_the_nearest() {
        let table = Table::new([
            proc(1, 0, 0, &["init"]),
            marked(10, 1, 0),
            proc(11, 10, 2001, &["a"]),
            marked(12, 11, 2001),
            proc(13, 12, 2001, &["b"]),
            proc(14, 13, 2001, &["c"]),
            proc(20, 1, 2001, &["d"]),
            proc(21, 99, 2001, &["parent not in the table"]),
        ]);
        let found = table.nearest_marked_ancestors(is_marked);
        let mut found: Vec<(i32, i32)> = found.into_iter().collect();
        found.sort_unstable();
        assert_eq!(found, vec![(11, 10), (12, 10), (13, 12), (14, 12)]);
    }

    #[test]
    fn a_chain_of_ten_thousand_is_walked_once() {
        // Every process one level below the last, the top one marked: an
        // answer per process in linear time, where walking up from each
        // would take fifty million steps.
        let mut chain = vec![marked(1, 0, 0)];
        chain.extend((2..=10_001).map(|pid| proc(pid, pid - 1, 2001, &["x"])));
        let table = Table::new(chain);
        let t0 = std::time::Instant::now();
        let found = table.nearest_marked_ancestors(is_marked);
        assert_eq!(found.len(), 10_000);
        assert!(found.values().all(|a| *a == 1));
        assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
        assert_eq!(table.ancestors(10_001).len(), 10_000);
    }

    #[test]
    fn slurmstepds_are_roots_and_name_their_job() {
        let mut stepd = proc(40, 1, 0, &["slurmstepd: [42.batch]"]);
        stepd.exe = Some("/usr/sbin/slurmstepd".into());
        assert_eq!(stepd.slurmstepd(), Some(Some(42)));
        stepd.argv = vec!["/usr/sbin/slurmstepd".into()];
        assert_eq!(stepd.slurmstepd(), Some(None), "before its title is set");
        let mut users = proc(41, 1, 2001, &["slurmstepd: [42.0]"]);
        users.exe = Some("/home/alice/bin/slurmstepd".into());
        assert_eq!(users.slurmstepd(), None);
        let mut renamed = proc(42, 1, 0, &["slurmstepd: [42.0]"]);
        renamed.exe = Some("/usr/bin/perl".into());
        assert_eq!(renamed.slurmstepd(), None);
        assert_eq!(proc(43, 1, 0, &["slurmstepd: [42.0]"]).slurmstepd(), None, "no executable read");
    }
}
