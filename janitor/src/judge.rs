//! Which VS Code server trees on this node are orphaned, and why. Pure: it
//! sees only a process table, so every rule is tested on made-up tables.

use std::collections::HashSet;
use std::time::Duration;

use crate::process::{Job, Process, Table};

#[derive(Debug, Clone)]
pub struct Policy {
    pub min_age: Duration,
    pub min_uid: u32,
    /// `--user`: only this uid's trees are looked at.
    pub only_uid: Option<u32>,
    /// The janitor itself, so it never ends the tree it was started from.
    pub self_pid: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its ssh session ended and left it to init.
    Reparented,
    /// Still has a parent (tmux, nohup under some shell) but its owner is not logged in at all.
    NoSshSession,
}

impl Why {
    pub fn text(self) -> &'static str {
        match self {
            Why::Reparented => "reparented to init",
            Why::NoSshSession => "owner has no ssh session",
        }
    }

    /// Stable word for `--json` consumers.
    pub fn key(self) -> &'static str {
        match self {
            Why::Reparented => "reparented",
            Why::NoSshSession => "no-ssh-session",
        }
    }
}

/// Why a tree is left alone; kept for tests and for reasoning, not printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Root or a system account.
    SystemUser,
    /// Part of an ssh session that is still connected.
    Attached,
    /// Detached, but its owner is logged in and may come back to it.
    OwnerConnected,
    TooYoung,
    /// The janitor runs inside it.
    Janitor,
    /// Every process of it is in a job, someone else's, or unreadable.
    NothingOfTheOwners,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Orphaned(Why),
    Kept(Keep),
}

/// A process to end, identified so that a reused pid is never signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub pid: i32,
    pub start_ticks: u64,
}

#[derive(Debug, Clone)]
pub struct Tree {
    pub root: i32,
    pub uid: u32,
    pub user: String,
    pub age: Duration,
    /// The processes that would be ended: the owner's, outside any job; root first.
    pub members: Vec<Member>,
    pub rss_bytes: u64,
    pub cpu: Duration,
    pub command: String,
    pub verdict: Verdict,
}

/// Every server tree on the node with its verdict, ordered by user then pid.
/// `user_name` maps uids to names (ssh session titles carry names).
pub fn judge(table: &Table, policy: &Policy, user_name: &dyn Fn(u32) -> Option<String>) -> Vec<Tree> {
    let candidate = |p: &Process| !p.zombie && p.job == Job::Outside && p.looks_like_vscode_server();
    let logged_in: HashSet<&str> = table.processes.values().filter_map(|p| p.ssh_session_user()).collect();
    let janitor_line: HashSet<i32> =
        std::iter::once(policy.self_pid).chain(table.ancestors(policy.self_pid)).collect();
    // Each computed once for the whole table: walking up from every process
    // would be quadratic in a chain a user can make thousands deep.
    let below_candidate = table.nearest_marked_ancestors(candidate);
    let in_session = table.nearest_marked_ancestors(|p| p.ssh_session_user().is_some());

    let mut roots: Vec<i32> = table
        .processes
        .values()
        .filter(|p| candidate(p) && !below_candidate.contains_key(&p.pid))
        .map(|p| p.pid)
        .collect();
    roots.sort_unstable();

    let mut trees = Vec::new();
    for root_pid in roots {
        let Some(root) = table.get(root_pid) else { continue };
        if policy.only_uid.is_some_and(|uid| uid != root.uid) {
            continue;
        }
        let user = user_name(root.uid).unwrap_or_else(|| root.uid.to_string());
        let all = table.subtree(root_pid);
        let members: Vec<Member> = all
            .iter()
            .filter_map(|pid| table.get(*pid))
            .filter(|p| {
                p.uid == root.uid
                    && p.euid == root.uid
                    && p.job == Job::Outside
                    && !p.zombie
                    && !janitor_line.contains(&p.pid)
            })
            .map(|p| Member { pid: p.pid, start_ticks: p.start_ticks })
            .collect();

        let verdict = if root.uid == 0 || root.euid == 0 || root.uid < policy.min_uid {
            Verdict::Kept(Keep::SystemUser)
        } else if all.iter().any(|pid| janitor_line.contains(pid)) {
            Verdict::Kept(Keep::Janitor)
        } else if in_session.contains_key(&root_pid) {
            // Any session, not only the owner's: `su` from an admin's
            // connected session is still a connected session.
            Verdict::Kept(Keep::Attached)
        } else if members.is_empty() {
            Verdict::Kept(Keep::NothingOfTheOwners)
        } else {
            let why = if root.ppid == 1 {
                Some(Why::Reparented)
            } else if !logged_in.contains(user.as_str()) {
                Some(Why::NoSshSession)
            } else {
                None
            };
            match why {
                None => Verdict::Kept(Keep::OwnerConnected),
                Some(_) if root.age < policy.min_age => Verdict::Kept(Keep::TooYoung),
                Some(why) => Verdict::Orphaned(why),
            }
        };

        let mut rss_bytes = 0;
        let mut cpu = Duration::ZERO;
        for p in members.iter().filter_map(|m| table.get(m.pid)) {
            rss_bytes += p.rss_bytes;
            cpu += p.cpu;
        }
        trees.push(Tree {
            root: root_pid,
            uid: root.uid,
            user,
            age: root.age,
            members,
            rss_bytes,
            cpu,
            command: root.command(),
            verdict,
        });
    }
    trees.sort_by(|a, b| a.user.cmp(&b.user).then(a.root.cmp(&b.root)));
    trees
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::tests::{proc, sshd_monitor};

    const ALICE: u32 = 2001;
    const BOB: u32 = 2002;
    const NODE: &str = "/home/alice/.vscode-server/bin/abc/node";

    fn names(uid: u32) -> Option<String> {
        match uid {
            0 => Some("root".into()),
            ALICE => Some("alice".into()),
            BOB => Some("bob".into()),
            _ => None,
        }
    }

    fn policy() -> Policy {
        Policy { min_age: Duration::from_secs(3_600), min_uid: 1_000, only_uid: None, self_pid: 9_999 }
    }

    fn run(processes: Vec<Process>, policy: &Policy) -> Vec<Tree> {
        judge(&Table::new(processes), policy, &names)
    }

    /// init, the sshd listener, and a connected session of `alice` whose shell is pid 42.
    fn node_with_alice_connected() -> Vec<Process> {
        vec![
            proc(1, 0, 0, &["/sbin/init"]),
            sshd_monitor(30, 1, "alice"),
            proc(31, 30, ALICE, &["sshd: alice@notty"]),
            proc(42, 31, ALICE, &["bash"]),
        ]
    }

    /// A server tree as Remote-SSH leaves it: the launch script's loop, the
    /// server wrapper, node, the extension host, a terminal and a sleep.
    fn server_tree(root: i32, parent: i32, uid: u32) -> Vec<Process> {
        vec![
            proc(root, parent, uid, &["bash", "/home/u/.vscode-server/bin/abc/launch.sh"]),
            proc(root + 1, root, uid, &["sleep", "180"]),
            proc(root + 2, root, uid, &["sh", "/home/u/.vscode-server/bin/abc/bin/code-server", "--port=0"]),
            proc(root + 3, root + 2, uid, &[NODE, "out/server-main.js"]),
            proc(root + 4, root + 3, uid, &[NODE, "--type=extensionHost"]),
            proc(root + 5, root + 4, uid, &["/bin/bash", "--login"]),
        ]
    }

    fn verdicts(trees: &[Tree]) -> Vec<(i32, Verdict)> {
        trees.iter().map(|t| (t.root, t.verdict)).collect()
    }

    #[test]
    fn a_reparented_tree_is_orphaned_whole() {
        let mut procs = vec![proc(1, 0, 0, &["/sbin/init"])];
        procs.extend(server_tree(100, 1, ALICE));
        let trees = run(procs, &policy());
        assert_eq!(verdicts(&trees), vec![(100, Verdict::Orphaned(Why::Reparented))]);
        let tree = &trees[0];
        assert_eq!(tree.user, "alice");
        let pids: Vec<i32> = tree.members.iter().map(|m| m.pid).collect();
        assert_eq!(pids, vec![100, 101, 102, 103, 104, 105], "the sleep and the terminal go too");
        assert_eq!(tree.rss_bytes, 6 * (10 << 20));
        assert_eq!(tree.cpu, Duration::from_millis(9_000));
        assert_eq!(tree.command, "bash /home/u/.vscode-server/bin/abc/launch.sh");
        assert_eq!(tree.members[0].start_ticks, 1_100);
    }

    #[test]
    fn reparenting_counts_even_when_the_owner_is_connected_elsewhere() {
        let mut procs = node_with_alice_connected();
        procs.extend(server_tree(100, 1, ALICE));
        assert_eq!(verdicts(&run(procs, &policy())), vec![(100, Verdict::Orphaned(Why::Reparented))]);
    }

    #[test]
    fn a_tree_inside_a_connected_session_is_attached() {
        let mut procs = node_with_alice_connected();
        procs.extend(server_tree(100, 42, ALICE));
        assert_eq!(verdicts(&run(procs, &policy())), vec![(100, Verdict::Kept(Keep::Attached))]);
    }

    #[test]
    fn a_tree_under_some_other_parent_depends_on_the_owner_being_logged_in() {
        // E.g. under tmux: not reparented, not in a session.
        let mut procs = node_with_alice_connected();
        procs.push(proc(50, 1, ALICE, &["tmux"]));
        procs.extend(server_tree(100, 50, ALICE));
        procs.push(proc(60, 1, BOB, &["tmux"]));
        procs.extend(server_tree(200, 60, BOB));
        assert_eq!(
            verdicts(&run(procs, &policy())),
            vec![(100, Verdict::Kept(Keep::OwnerConnected)), (200, Verdict::Orphaned(Why::NoSshSession))]
        );
    }

    #[test]
    fn only_a_root_owned_session_monitor_counts_as_logged_in() {
        let mut procs = vec![proc(1, 0, 0, &["/sbin/init"]), proc(60, 1, BOB, &["tmux"])];
        let mut fake = sshd_monitor(70, 1, "bob");
        fake.uid = BOB;
        fake.euid = BOB;
        procs.push(fake);
        procs.extend(server_tree(200, 60, BOB));
        assert_eq!(verdicts(&run(procs, &policy())), vec![(200, Verdict::Orphaned(Why::NoSshSession))]);
    }

    #[test]
    fn young_trees_wait() {
        let mut procs = vec![proc(1, 0, 0, &["/sbin/init"])];
        procs.extend(server_tree(100, 1, ALICE));
        procs[1].age = Duration::from_secs(3_599);
        assert_eq!(verdicts(&run(procs, &policy())), vec![(100, Verdict::Kept(Keep::TooYoung))]);
    }

    #[test]
    fn root_and_system_users_are_never_touched() {
        let mut procs = vec![proc(1, 0, 0, &["/sbin/init"])];
        procs.extend(server_tree(100, 1, 0));
        procs.extend(server_tree(200, 1, 999));
        let mut setuid = server_tree(300, 1, ALICE);
        setuid[0].euid = 0;
        procs.extend(setuid);
        let trees = run(procs.clone(), &policy());
        assert!(trees.iter().all(|t| t.verdict == Verdict::Kept(Keep::SystemUser)), "{:?}", verdicts(&trees));
        let lower = Policy { min_uid: 0, ..policy() };
        let trees = run(procs, &lower);
        assert_eq!(
            trees.iter().find(|t| t.root == 100).map(|t| t.verdict),
            Some(Verdict::Kept(Keep::SystemUser))
        );
        assert_eq!(
            trees.iter().find(|t| t.root == 200).map(|t| t.verdict),
            Some(Verdict::Orphaned(Why::Reparented))
        );
    }

    #[test]
    fn processes_inside_jobs_are_neither_roots_nor_members() {
        let mut procs = vec![proc(1, 0, 0, &["/sbin/init"])];
        let mut in_job = server_tree(100, 1, ALICE);
        for p in &mut in_job {
            p.job = Job::Inside(Some(42));
        }
        procs.extend(in_job);
        let mut mixed = server_tree(200, 1, BOB);
        mixed[5].job = Job::Inside(None); // a terminal moved into a job's cgroup
        mixed[1].job = Job::Unknown;
        procs.extend(mixed);
        let trees = run(procs, &policy());
        assert_eq!(verdicts(&trees), vec![(200, Verdict::Orphaned(Why::Reparented))]);
        let pids: Vec<i32> = trees[0].members.iter().map(|m| m.pid).collect();
        assert_eq!(pids, vec![200, 202, 203, 204]);
    }

    #[test]
    fn other_users_and_zombies_inside_a_tree_are_left_out() {
        let mut procs = vec![proc(1, 0, 0, &["/sbin/init"])];
        let mut tree = server_tree(100, 1, ALICE);
        tree[5].uid = 0; // sudo in the terminal
        tree[5].euid = 0;
        tree[1].zombie = true;
        procs.extend(tree);
        let trees = run(procs, &policy());
        let pids: Vec<i32> = trees[0].members.iter().map(|m| m.pid).collect();
        assert_eq!(pids, vec![100, 102, 103, 104]);
    }

    #[test]
    fn the_root_is_the_topmost_server_process() {
        // A server process started from a terminal of another server: one tree.
        let mut procs = vec![proc(1, 0, 0, &["/sbin/init"])];
        procs.extend(server_tree(100, 1, ALICE));
        procs.push(proc(150, 105, ALICE, &[NODE, "second"]));
        // The wrapper exited: node alone, reparented, is its own root.
        procs.push(proc(300, 1, ALICE, &[NODE, "out/server-main.js"]));
        let trees = run(procs, &policy());
        assert_eq!(
            verdicts(&trees),
            vec![(100, Verdict::Orphaned(Why::Reparented)), (300, Verdict::Orphaned(Why::Reparented))]
        );
        assert!(trees[0].members.iter().any(|m| m.pid == 150));
    }

    #[test]
    fn the_janitors_own_tree_is_kept() {
        let mut procs = vec![proc(1, 0, 0, &["/sbin/init"])];
        procs.extend(server_tree(100, 1, ALICE));
        procs.push(proc(500, 105, 0, &["sudo", "vscode-janitor"]));
        procs.push(proc(501, 500, 0, &["vscode-janitor", "--kill"]));
        let policy = Policy { self_pid: 501, ..policy() };
        assert_eq!(verdicts(&run(procs, &policy)), vec![(100, Verdict::Kept(Keep::Janitor))]);
    }

    #[test]
    fn user_filter_and_ordering() {
        let mut procs = vec![proc(1, 0, 0, &["/sbin/init"])];
        procs.extend(server_tree(300, 1, BOB));
        procs.extend(server_tree(200, 1, ALICE));
        procs.extend(server_tree(100, 1, BOB));
        let all = run(procs.clone(), &policy());
        let order: Vec<(String, i32)> = all.iter().map(|t| (t.user.clone(), t.root)).collect();
        assert_eq!(order, vec![("alice".into(), 200), ("bob".into(), 100), ("bob".into(), 300)]);
        let bob_only = run(procs, &Policy { only_uid: Some(BOB), ..policy() });
        assert!(bob_only.iter().all(|t| t.uid == BOB) && bob_only.len() == 2);
    }

    #[test]
    fn unknown_uids_are_named_by_number_and_have_no_session() {
        let mut procs = vec![proc(1, 0, 0, &["/sbin/init"]), proc(60, 1, 4242, &["tmux"])];
        procs.extend(server_tree(100, 60, 4242));
        let trees = run(procs, &policy());
        assert_eq!(trees[0].user, "4242");
        assert_eq!(trees[0].verdict, Verdict::Orphaned(Why::NoSshSession));
    }

    #[test]
    fn ten_thousand_trees_and_a_chain_ten_thousand_deep_are_judged_at_once() {
        let mut procs = vec![proc(1, 0, 0, &["/sbin/init"])];
        procs.extend((0..10_000).map(|i| proc(30_000 + i, 1, BOB, &[NODE, "fake"])));
        procs.push(proc(20_000, 1, ALICE, &[NODE, "top"]));
        procs.extend((20_001..30_000).map(|pid| proc(pid, pid - 1, ALICE, &[NODE, "nested"])));
        let t0 = std::time::Instant::now();
        let trees = run(procs, &policy());
        assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
        assert_eq!(trees.len(), 10_001);
        assert!(trees.iter().all(|t| t.verdict == Verdict::Orphaned(Why::Reparented)));
        let chain = trees.iter().find(|t| t.root == 20_000).expect("the chain is one tree");
        assert_eq!(chain.members.len(), 10_000);
    }

    #[test]
    fn ordinary_processes_are_not_trees() {
        let mut procs = node_with_alice_connected();
        procs.push(proc(70, 1, ALICE, &["/usr/bin/python3", "train.py"]));
        procs.push(proc(71, 1, ALICE, &["vim", "/home/alice/.vscode-server-notes/todo"]));
        assert!(run(procs, &policy()).is_empty());
    }
}
