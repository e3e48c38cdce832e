//! The login-node janitor (`vscode-janitor`) on the lab's login node, among
//! server trees shaped like the ones Remote-SSH leaves there: only the
//! orphaned ones are listed and ended, whole, and nothing else is touched.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::Duration;
use vscode_slurm_tests::{stderr_of, stdout_of, wait_until, Lab, LineProcess, Proc};

/// The fake server's version directory, under each user's ~/.vscode-server/bin.
const COMMIT: &str = "janitor-test-0000";

/// Stands in for a server tree: a wrapper that does not exec node (like
/// `bin/code-server`), "node" processes whose executable is under
/// ~/.vscode-server, optionally one that ignores SIGTERM, and the launch
/// script's keep-alive loop with its `sleep` child.
const SERVER_SH: &str = r#"#!/bin/bash
d=$(dirname "$0")
"$d/node" 1000 &
"$d/node" 1001 &
if [ "$2" = stubborn ]; then (trap '' TERM; exec "$d/node" 1002) & fi
while true; do sleep 180; done
"#;

/// A server directory for `home` (a user's, or root's stand-in in /tmp).
fn install_script(home: &str) -> String {
    format!(
        "set -e; d={home}/.vscode-server/bin/{COMMIT}; mkdir -p $d; cp /bin/sleep $d/node; \
         cat > $d/server.sh <<'EOF'\n{SERVER_SH}EOF\nchmod 755 $d/server.sh"
    )
}

fn subtree(procs: &[Proc], root: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::from([root]);
    loop {
        let more: Vec<i32> =
            procs.iter().filter(|p| out.contains(&p.ppid) && !out.contains(&p.pid)).map(|p| p.pid).collect();
        if more.is_empty() {
            return out;
        }
        out.extend(more);
    }
}

/// The trees this test started, by root pid; ended (SIGKILL, by pid) and
/// their files removed when the test is over, passed or not.
struct Started<'a> {
    lab: &'a Lab,
    roots: BTreeMap<&'static str, i32>,
    extra_pids: Vec<i32>,
}

impl Started<'_> {
    /// Waits for the tree tagged `tag` to have its root and `size` processes.
    fn await_tree(&mut self, tag: &'static str, size: usize) -> i32 {
        let lab = self.lab;
        let found = wait_until(
            &format!("tree {tag} with {size} processes"),
            Duration::from_secs(10),
            || {
                let procs = lab.processes("login");
                let root = procs.iter().find(|p| {
                    p.args.starts_with("bash /")
                        && (p.args.ends_with(&format!("/server.sh {tag}"))
                            || p.args.ends_with(&format!("/server.sh {tag} stubborn")))
                });
                root.map(|r| (r.pid, subtree(&procs, r.pid).len()))
            },
            |found| found.is_some_and(|(_, n)| n == size),
        );
        let pid = found.map(|(pid, _)| pid).unwrap_or_default();
        self.roots.insert(tag, pid);
        pid
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        let procs = self.lab.processes("login");
        let mut pids = BTreeSet::new();
        for root in self.roots.values().chain(&self.extra_pids) {
            if procs.iter().any(|p| p.pid == *root) {
                pids.extend(subtree(&procs, *root));
            }
        }
        if !pids.is_empty() {
            let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            self.lab.sh(None, "login", &format!("kill -KILL {} 2>/dev/null", list.join(" ")));
        }
        self.lab.sh(
            None,
            "login",
            &format!(
                "rm -rf /tmp/.vscode-server /tmp/janitor-target; for u in alice bob; do \
                 rm -rf /home/$u/.vscode-server/bin/{COMMIT}; rm -f /home/$u/.vscode-server/ENDED-BY-ADMIN.txt; \
                 rmdir /home/$u/.vscode-server/bin /home/$u/.vscode-server 2>/dev/null; done; true"
            ),
        );
    }
}

/// Starts `server.sh TAG [stubborn]` as `user` (None: root, from /tmp),
/// detached so that its parent exits and it is left to init. With
/// `holder`, it runs under a long-lived plain `bash` instead (like tmux),
/// so it is not reparented; the holder outlives the tree. `env` goes into the tree's environment.
fn start_detached(lab: &Lab, user: Option<&str>, tag: &str, stubborn: bool, holder: bool, env: &str) {
    let home = if user.is_some() { "$HOME" } else { "/tmp" };
    let arg = if stubborn { " stubborn" } else { "" };
    // The server's path goes through the environment so that no launcher's
    // or holder's own command line names ~/.vscode-server.
    let script = if holder {
        format!(
            "D={home}/.vscode-server/bin/{COMMIT} {env} setsid bash -c 'bash \"$D/server.sh\" {tag}{arg} & wait; sleep 600' \
             </dev/null >/dev/null 2>&1 &"
        )
    } else {
        format!(
            "D={home}/.vscode-server/bin/{COMMIT}; {env} setsid bash \"$D/server.sh\" {tag}{arg} \
             </dev/null >/dev/null 2>&1 &"
        )
    };
    lab.sh_ok(user, "login", &script);
}

fn janitor(lab: &Lab, args: &[&str]) -> Output {
    let mut argv = vec!["vscode-janitor"];
    argv.extend(args);
    lab.command(None, "login", &argv).output().expect("run vscode-janitor")
}

/// Runs the janitor with `--json` and parses its document with a real
/// JSON parser (python's), reducing it to `pid -> "user reason result"`.
fn janitor_json(lab: &Lab, args: &[&str]) -> (BTreeMap<i32, String>, String) {
    let script = format!(
        "set -o pipefail; vscode-janitor --json {} > /tmp/janitor.json; rc=$?; python3 -c '\n\
         import json\n\
         d = json.load(open(\"/tmp/janitor.json\"))\n\
         assert d[\"host\"] == \"login\"\n\
         for t in d[\"trees\"]:\n\
         \x20   r = t[\"result\"]\n\
         \x20   res = \"none\" if r is None else (\"ended-sigkill-%d\" % r[\"needed_sigkill\"] if r[\"ended\"] else \"failed\")\n\
         \x20   note = \"note\" if t[\"note\"] else (\"note-error\" if \"note_error\" in t else \"-\")\n\
         \x20   assert t[\"pids\"][0] == t[\"pid\"] and t[\"processes\"] == len(t[\"pids\"])\n\
         \x20   print(t[\"pid\"], t[\"user\"], t[\"reason\"], res, note)\n\
         ' || exit 99; exit $rc",
        args.join(" ")
    );
    let out = lab.sh(None, "login", &script);
    let raw = lab.sh_ok(None, "login", "cat /tmp/janitor.json; rm -f /tmp/janitor.json");
    assert!(out.status.success(), "janitor --json {args:?} failed: {}\n{raw}", stderr_of(&out));
    let map = stdout_of(&out)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(pid, rest)| (pid.parse().unwrap_or(-1), rest.to_owned())))
        .collect();
    (map, raw)
}

fn age_secs(lab: &Lab, pid: i32) -> u64 {
    lab.sh_ok(None, "login", &format!("ps -o etimes= -p {pid}")).trim().parse().unwrap_or(0)
}

#[test]
fn janitor_lists_and_ends_exactly_the_orphaned_server_trees() {
    let lab = Lab::get();
    lab.install_in_every_home(install_script);
    let mut started = Started { lab: &lab, roots: BTreeMap::new(), extra_pids: vec![] };

    // alice: one left to init, one under a live ssh session, one detached
    // under a holder process while she is still logged in.
    start_detached(&lab, Some("alice"), "A-orphan", false, false, "");
    // The session shell reads its commands from stdin, as Remote-SSH's does.
    let mut session: LineProcess = lab.spawn(Some("alice"), "laptop", &["ssh", "-T", "login", "bash"]);
    session.send(&format!("bash ~/.vscode-server/bin/{COMMIT}/server.sh A-attached & echo started"));
    session.expect_line("from the ssh session", Duration::from_secs(15), |l| l == "started");
    start_detached(&lab, Some("alice"), "A-held", false, true, "");
    // bob: one left to init with a process that ignores SIGTERM, one under a
    // holder while he has no ssh session at all, one left to init that claims
    // a Slurm job in its environment (no job here tracks it: judged like any other).
    start_detached(&lab, Some("bob"), "B-orphan", true, false, "");
    start_detached(&lab, Some("bob"), "B-held", false, true, "");
    start_detached(&lab, Some("bob"), "B-in-job", false, false, "SLURM_JOB_ID=4242");
    // root: same shape, same names, left to init.
    start_detached(&lab, None, "R-root", false, false, "");

    let a_orphan = started.await_tree("A-orphan", 4);
    let a_attached = started.await_tree("A-attached", 4);
    let a_held = started.await_tree("A-held", 4);
    let b_orphan = started.await_tree("B-orphan", 5);
    let b_held = started.await_tree("B-held", 4);
    let b_forged = started.await_tree("B-in-job", 4);
    let r_root = started.await_tree("R-root", 4);
    let holders: Vec<i32> = [a_held, b_held]
        .iter()
        .filter_map(|root| lab.processes("login").iter().find(|p| p.pid == *root).map(|p| p.ppid))
        .collect();
    started.extra_pids.extend(holders.iter().copied());
    let procs = lab.processes("login");
    assert!(holders.len() == 2 && holders.iter().all(|h| *h > 1), "held trees without a holder: {holders:?}");
    assert_ne!(procs.iter().find(|p| p.pid == a_attached).map(|p| p.ppid), Some(1), "not in the session");
    assert_eq!(procs.iter().find(|p| p.pid == r_root).map(|p| p.uid), Some(0));
    assert_eq!(procs.iter().find(|p| p.pid == a_orphan).map(|p| p.ppid), Some(1));

    // Old enough for a 6 s --min-age: the dry run lists exactly the orphans, with their reasons.
    let listed = wait_until(
        "the dry run to list the orphaned trees",
        Duration::from_secs(30),
        || janitor_json(&lab, &["--min-age", "6s"]).0,
        |trees| trees.len() >= 4,
    );
    let expected = BTreeMap::from([
        (a_orphan, "alice reparented none -".to_owned()),
        (b_orphan, "bob reparented none -".to_owned()),
        (b_held, "bob no-ssh-session none -".to_owned()),
        (b_forged, "bob reparented none -".to_owned()),
    ]);
    assert_eq!(listed, expected);

    // The table says the same to a person.
    let table = janitor(&lab, &["--min-age", "6s"]);
    assert!(table.status.success(), "{}", stderr_of(&table));
    let text = stdout_of(&table);
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{text}");
    let mut bobs = [
        (b_orphan, "reparented to init"),
        (b_held, "owner has no ssh session"),
        (b_forged, "reparented to init"),
    ];
    bobs.sort();
    for (row, (user, pid, why)) in rows.iter().zip(
        std::iter::once(("alice", a_orphan, "reparented to init"))
            .chain(bobs.iter().map(|(pid, why)| ("bob", *pid, *why))),
    ) {
        let mut cells = row.split_whitespace();
        assert_eq!((cells.next(), cells.next()), (Some(user), Some(pid.to_string().as_str())), "{text}");
        assert!(row.ends_with(why), "{text}");
        assert!(row.contains(&format!("bash /home/{user}/.vscode-server/bin/{COMMIT}/")), "{text}");
    }
    let b_orphan_row = rows
        .iter()
        .find(|r| r.split_whitespace().nth(1) == Some(b_orphan.to_string().as_str()))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(b_orphan_row[5], "5", "processes counted in bob's tree: {text}");

    // --user limits to one user.
    let (bobs, _) = janitor_json(&lab, &["--min-age", "6s", "--user", "bob"]);
    assert_eq!(bobs.keys().copied().collect::<BTreeSet<_>>(), BTreeSet::from([b_orphan, b_held, b_forged]));
    let (alices, _) = janitor_json(&lab, &["--min-age", "6s", "--user", "alice"]);
    assert_eq!(alices.keys().copied().collect::<Vec<_>>(), vec![a_orphan]);

    // A young orphan: listed only once --min-age allows it.
    start_detached(&lab, Some("alice"), "A-young", false, false, "");
    let a_young = started.await_tree("A-young", 4);
    let (everything, _) = janitor_json(&lab, &["--min-age", "0"]);
    assert_eq!(everything.get(&a_young).map(String::as_str), Some("alice reparented none -"));
    assert_eq!(
        everything.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([a_orphan, b_orphan, b_held, b_forged, a_young])
    );

    // Before: every tree's processes, to prove afterwards what went and what stayed.
    let procs = lab.processes("login");
    let trees: BTreeMap<i32, BTreeSet<i32>> =
        started.roots.values().map(|r| (*r, subtree(&procs, *r))).collect();
    let to_end: BTreeSet<i32> =
        [a_orphan, b_orphan, b_held, b_forged].iter().flat_map(|r| trees[r].clone()).collect();
    let to_keep: BTreeSet<i32> = [a_attached, a_held, r_root, a_young]
        .iter()
        .flat_map(|r| trees[r].clone())
        .chain(holders.iter().copied())
        .collect();

    // bob's note location is a planted symlink to a root-owned file: refused.
    lab.sh_ok(None, "login", "echo untouched > /tmp/janitor-target");
    lab.sh_ok(Some("bob"), "login", "ln -s /tmp/janitor-target ~/.vscode-server/ENDED-BY-ADMIN.txt");

    // --min-age between the young tree's age and the others', measured now.
    let old = age_secs(&lab, b_held);
    let young = age_secs(&lab, a_young);
    assert!(old >= young + 4, "the trees are too close in age: {old}s and {young}s");
    let min_age = format!("{}s", (old + young) / 2);
    let (ended, raw) = janitor_json(&lab, &["--kill", "--min-age", &min_age, "--grace", "2s", "--message"]);
    assert_eq!(
        ended,
        BTreeMap::from([
            (a_orphan, "alice reparented ended-sigkill-0 note".to_owned()),
            (b_orphan, "bob reparented ended-sigkill-1 note-error".to_owned()),
            (b_held, "bob no-ssh-session ended-sigkill-0 note-error".to_owned()),
            (b_forged, "bob reparented ended-sigkill-0 note-error".to_owned()),
        ]),
        "{raw}"
    );
    assert_eq!(lab.alive("login", &to_end), BTreeSet::new(), "processes of ended trees left");
    assert_eq!(lab.alive("login", &to_keep), to_keep, "processes that were not to be touched are gone");
    assert!(session.child.try_wait().expect("try_wait").is_none(), "the ssh session went away");

    // alice's note: hers, readable, saying what, why and the way instead.
    let stat = lab.sh_ok(None, "login", "stat -c '%U %a %h' /home/alice/.vscode-server/ENDED-BY-ADMIN.txt");
    assert_eq!(stat.trim(), "alice 644 1");
    let note = lab.read("home/alice/.vscode-server/ENDED-BY-ADMIN.txt");
    for wanted in [&format!("pid {a_orphan} "), "reparented to init", "RemoteCommand vscode-shim", " UTC"] {
        assert!(note.contains(wanted), "note lacks {wanted:?}:\n{note}");
    }
    assert_eq!(lab.sh_ok(None, "login", "cat /tmp/janitor-target"), "untouched\n");
    assert!(
        raw.contains("\"note_error\":\"cannot open /home/bob/.vscode-server/ENDED-BY-ADMIN.txt"),
        "{raw}"
    );

    // Nothing left to end: a second run finds nothing.
    let (again, _) = janitor_json(&lab, &["--kill", "--min-age", &min_age]);
    assert!(again.is_empty(), "{again:?}");
    drop(session);
    drop(started);
}

#[test]
fn kill_logs_one_line_per_tree_and_the_table_says_how_it_ended() {
    let lab = Lab::get();
    lab.sh_ok(Some("bob"), "login", &install_script("$HOME"));
    let mut started = Started { lab: &lab, roots: BTreeMap::new(), extra_pids: vec![] };
    start_detached(&lab, Some("bob"), "B-log", true, false, "");
    let root = started.await_tree("B-log", 5);
    let out = janitor(&lab, &["--kill", "--min-age", "0", "--grace", "1s", "--user", "bob"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let table = stdout_of(&out);
    assert!(table.lines().next().is_some_and(|h| h.ends_with("RESULT")), "{table}");
    assert!(table.lines().nth(1).is_some_and(|l| l.ends_with("ended (1 by SIGKILL)")), "{table}");
    // Without a syslog socket on the node, the log line goes to stderr.
    if !lab.sh(None, "login", "test -e /dev/log").status.success() {
        let log = stderr_of(&out);
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(
            log.starts_with(&format!(
                "vscode-janitor: ended (1 by SIGKILL): VS Code server of bob (uid 2002) on login: pid {root}, 5 processes"
            )),
            "{log}"
        );
    }
    assert!(lab.alive("login", &BTreeSet::from([root])).is_empty());
}

#[test]
fn bad_arguments_fail_with_one_clear_line() {
    let lab = Lab::get();
    for (args, wanted) in [
        (
            &["--bogus"][..],
            "vscode-janitor: unexpected argument '--bogus' found; see 'vscode-janitor --help'",
        ),
        (&["--min-age", "soon"], "vscode-janitor: invalid value 'soon' for '--min-age <DURATION>'"),
        (&["--grace", "1h1"], "vscode-janitor: invalid value '1h1' for '--grace <DURATION>'"),
        (&["--user", "nosuchuser"], "vscode-janitor: unknown user 'nosuchuser'; see 'vscode-janitor --help'"),
        (&["--message"], "vscode-janitor: the following required arguments were not provided: --kill"),
        (&["stray"], "vscode-janitor: unexpected argument 'stray' found"),
    ] {
        let out = janitor(&lab, args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with(wanted), "{args:?}: {err}");
        assert!(err.trim_end().ends_with("; see 'vscode-janitor --help'"), "{args:?}: {err}");
        assert!(stdout_of(&out).is_empty(), "{args:?} printed on stdout");
    }
    let help = janitor(&lab, &["--help"]);
    assert!(help.status.success());
    assert!(stdout_of(&help).contains("--min-age <DURATION>"));
    // Not root: refused, not a partial answer.
    let as_user = lab.command(Some("alice"), "login", &["vscode-janitor"]).output().expect("run");
    assert_eq!(as_user.status.code(), Some(1));
    assert!(stderr_of(&as_user).contains("must run as root"));
}
