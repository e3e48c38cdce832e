//! One process as the janitor sees it, and what can be told from it alone.
//! Filled from /proc by `procfs`, or by hand in tests.

use std::collections::HashMap;
use std::time::Duration;

/// Whether the process runs inside a Slurm job, as far as its environment tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnv {
    Outside,
    Inside,
    /// The environment could not be read, or not whole and no job variable was in
    /// the part read: treated as untouchable.
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
    pub job: JobEnv,
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
        let mut current = self.get(pid).map(|p| p.ppid);
        while let Some(parent) = current {
            if parent <= 0 || out.contains(&parent) || parent == pid {
                break;
            }
            out.push(parent);
            current = self.get(parent).map(|p| p.ppid);
        }
        out
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
            job: JobEnv::Outside,
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
    }
}
