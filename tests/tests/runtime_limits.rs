//! The plugin's root code against a hostile user, in the lab (issue 15):
//! a runtime directory filled every way there is, a runtime_dir whose
//! parent a user controls or that leads through a symlink, steps of one
//! job racing to create the directory, and a resolver that answers with an
//! address the login nodes cannot reach.
//!
//! Each test that changes the lab (plugstack, /run, /etc/hosts, an address)
//! puts it back when it ends, also when it fails.

use std::time::{Duration, Instant};
use vscode_slurm_tests::{stderr_of, stdout_of, wait_until, Lab};

const NODE: &str = "c1";
const NODE_ADDR: &str = "10.77.1.11";

/// Rewrites the plugin's plugstack arguments and puts the defaults back when
/// dropped.
struct Plugstack<'a>(&'a Lab);

impl<'a> Plugstack<'a> {
    fn set(lab: &'a Lab, args: &str) -> Plugstack<'a> {
        let out = lab.labctl(&["plugstack", args]);
        assert!(out.status.success(), "labctl plugstack {args:?}: {}", stderr_of(&out));
        Plugstack(lab)
    }
}

impl Drop for Plugstack<'_> {
    fn drop(&mut self) {
        let _ = self.0.labctl(&["plugstack", ""]);
    }
}

/// Runs a root shell script on some hosts when dropped (to undo a set-up).
struct Undo<'a>(&'a Lab, Vec<(&'static str, String)>);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        for (host, script) in &self.1 {
            let _ = self.0.sh(None, host, script);
        }
    }
}

/// Free bytes and free inodes of a host's /run (statvfs).
fn run_free(lab: &Lab, host: &str) -> (u64, u64) {
    parse_statfs(&lab.sh_ok(None, host, "stat -f -c '%a %S %d' /run"))
}

/// `stat -f -c '%a %S %d'`: available blocks, block size, free inodes.
fn parse_statfs(text: &str) -> (u64, u64) {
    let n: Vec<u64> = text.split_whitespace().map(|w| w.parse().expect("a number from stat -f")).collect();
    assert_eq!(n.len(), 3, "stat -f said {text:?}");
    (n[0] * n[1], n[2])
}

/// The lines slurmd's log (steps and epilogs of the node) got since `from`.
fn slurmd_log_since(lab: &Lab, node: &str, from: usize) -> Vec<String> {
    let log = lab.read(&format!("log/slurmd-{node}.log"));
    log.get(from..).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn slurmd_log_len(lab: &Lab, node: &str) -> usize {
    lab.read(&format!("log/slurmd-{node}.log")).len()
}

/// Waits until `job` has left the queue and `node` is idle (not drained,
/// not completing), and returns how long that took.
fn wait_job_gone_and_node_idle(lab: &Lab, job: u32, node: &str) -> Duration {
    let started = Instant::now();
    wait_until(
        &format!("job {job} to leave the queue"),
        Duration::from_secs(60),
        || lab.sh_ok(None, "login", &format!("squeue -h -j {job} -o %T 2>/dev/null || true")),
        |state| state.trim().is_empty(),
    );
    let state = wait_until(
        &format!("{node} to be idle again"),
        Duration::from_secs(60),
        || lab.sh_ok(None, "login", &format!("sinfo -h -n {node} -o %t")),
        |state| state.trim() != "comp" && state.trim() != "mix" && state.trim() != "alloc",
    );
    assert_eq!(state.trim(), "idle", "{node} is not idle after job {job} (drained by its epilog?)");
    started.elapsed()
}

/// What the plugin's epilog said about removing job's runtime directory.
fn teardown_line(lab: &Lab, node: &str, from: usize, job: u32) -> String {
    let wanted = format!("vscode: job {job}: removed /run/vscode-slurm/{job}");
    wait_until(
        &format!("the epilog's teardown line for job {job}"),
        Duration::from_secs(30),
        || slurmd_log_since(lab, node, from).into_iter().find(|l| l.contains(&wanted)),
        Option::is_some,
    )
    .unwrap_or_default()
}

/// `... in 0.004 s` at the end of the teardown line.
fn teardown_seconds(line: &str) -> f64 {
    line.rsplit(" in ").next().and_then(|t| t.trim_end_matches(" s").parse().ok()).unwrap_or_else(|| {
        panic!("no time in the teardown line: {line}");
    })
}

/// How a cancelled job's runtime directory went, as [`cancel_and_time_teardown`] saw it.
struct Teardown {
    /// Where slurmd's log stood before the job was cancelled.
    log_from: usize,
    /// The epilog's teardown line ([`teardown_line`]).
    line: String,
    /// The time the line gives.
    seconds: f64,
    /// From `scancel` until the job left the queue and the node was idle.
    until_idle: Duration,
}

/// Cancels `job` (running on [`NODE`]), waits for it to go and the node to
/// be idle, and reads what the epilog said about its runtime directory.
fn cancel_and_time_teardown(lab: &Lab, job: u32) -> Teardown {
    let log_from = slurmd_log_len(lab, NODE);
    lab.sh_ok(None, "login", &format!("scancel {job}"));
    let until_idle = wait_job_gone_and_node_idle(lab, job, NODE);
    let line = teardown_line(lab, NODE, log_from, job);
    let seconds = teardown_seconds(&line);
    Teardown { log_from, line, seconds, until_idle }
}

/// Perl, not a shell loop: one process making 100 000 files (or a
/// 200 000-deep chain of directories, each made and entered in turn), which
/// stops at the first error and says how far it got and why.
const FILES: &str = r#"my $n = 0; for my $i (1 .. 100000) { open(my $f, ">", "f$i") or do { print "files_err $!\n"; last }; close $f; $n = $i } print "files $n\n""#;
const DEEP: &str = r#"my $n = 0; while ($n < 200000) { mkdir "d" or do { print "deep_err $!\n"; last }; chdir "d" or die "chdir: $!"; $n++ } print "deep $n\n""#;

/// An attack job: cancelled, and its files in alice's home removed, when
/// dropped (a failed test leaves neither a job nor a report behind).
struct Attack<'a> {
    lab: &'a Lab,
    job: u32,
    name: &'static str,
}

impl Drop for Attack<'_> {
    fn drop(&mut self) {
        let _ = self.lab.sh(None, "login", &format!("scancel {} 2>/dev/null", self.job));
        let home = self.lab.dir.join("home/alice");
        for entry in std::fs::read_dir(&home).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(self.name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Submits `script` as alice's `--vscode` batch job on NODE and waits for the
/// script to say it is done (it writes `~/NAME-JOB.done` and then waits).
fn run_attack<'a>(lab: &'a Lab, name: &'static str, script: &str) -> (Attack<'a>, String) {
    let wrapped = format!(
        "out=$HOME/{name}-$SLURM_JOB_ID; d=$VSCODE_SLURM_RUNTIME_DIR\n\
         FILES='{FILES}'\nDEEP='{DEEP}'\n{script}\n\
         touch $out.done; exec sleep 600\n"
    );
    std::fs::write(lab.dir.join(format!("home/alice/{name}.sh")), wrapped).expect("write the job script");
    let submit = lab.sh_ok(
        Some("alice"),
        "login",
        &format!("sbatch --vscode -N1 -w {NODE} --parsable -o {name}.log --wrap 'bash {name}.sh'"),
    );
    let job: u32 = submit.trim().parse().unwrap_or_else(|_| panic!("sbatch said {submit:?}"));
    let attack = Attack { lab, job, name };
    let done = lab.dir.join(format!("home/alice/{name}-{job}.done"));
    wait_until(
        &format!("job {job}'s attack script to finish"),
        Duration::from_secs(300),
        || {
            done.exists()
                || lab.sh_ok(None, "login", &format!("squeue -h -j {job} -o %T || true")).trim().is_empty()
        },
        |finished| *finished,
    );
    let report = lab.read(&format!("home/alice/{name}-{job}"));
    assert!(done.exists(), "job {job} ended before its script finished; it wrote:\n{report}");
    (attack, report)
}

/// The value after `key ` on the report's line for it.
fn field<'r>(report: &'r str, key: &str) -> &'r str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key} in the report:\n{report}"))
}

fn number(report: &str, key: &str) -> u64 {
    field(report, key).parse().unwrap_or_else(|_| panic!("{key} is no number in:\n{report}"))
}

/// A 1 GiB file, 100 000 files and a 200 000-deep directory chain, as alice
/// in her `--vscode` job: each stops with ENOSPC at the job's own limits
/// (64M, 4096 inodes by default), /run keeps its free space, and when the
/// job ends (with alice's shell from outside the job still inside the tree)
/// the epilog detaches it in bounded time and the node stays idle.
#[test]
fn a_runtime_dir_filled_every_way_stops_at_its_limits_and_goes_with_the_job() {
    let lab = Lab::get();
    let run_before = run_free(&lab, NODE);
    let script = r#"
        echo "run_before $(stat -f -c '%a %S %d' /run)" >> $out
        echo "job_fs $(stat -f -c '%b %S %c' $d)" >> $out
        head -c 1073741824 /dev/zero > $d/big 2> $out.err
        echo "big_rc $?" >> $out
        echo "big_size $(stat -c %s $d/big)" >> $out
        echo "big_err $(cat $out.err)" >> $out
        echo "run_full $(stat -f -c '%a %S %d' /run)" >> $out
        rm -f $d/big
        (cd $d && perl -e "$FILES") >> $out
        rm -f $d/f*
        (cd $d && perl -e "$DEEP") >> $out
        echo "run_after $(stat -f -c '%a %S %d' /run)" >> $out
    "#;
    let (attack, report) = run_attack(&lab, "rl-limits", script);
    let job = attack.job;
    println!("job {job} on {NODE}:\n{report}");
    let dir = format!("/run/vscode-slurm/{job}");

    // The job's own file system: 64M and 4096 inodes.
    let fs: Vec<u64> = field(&report, "job_fs").split(' ').map(|n| n.parse().unwrap()).collect();
    assert_eq!((fs[0] * fs[1], fs[2]), (64 << 20, 4096), "job fs (blocks, block size, inodes): {fs:?}");
    // Each attack ends in ENOSPC at the limit.
    assert_ne!(number(&report, "big_rc"), 0, "the 1 GiB write succeeded");
    assert!(number(&report, "big_size") <= 64 << 20, "the file grew past 64M");
    assert!(number(&report, "big_size") > 60 << 20, "the file stopped early");
    for key in ["big_err", "files_err", "deep_err"] {
        assert!(field(&report, key).contains("No space left on device"), "{key}: {}", field(&report, key));
    }
    let (files, deep) = (number(&report, "files"), number(&report, "deep"));
    assert!((4000..4096).contains(&files), "{files} files fit in 4096 inodes");
    assert!((4000..4096).contains(&deep), "a {deep}-deep chain in 4096 inodes");
    // /run did not pay, even with the job's file system full (1 MiB and 64
    // inodes of slack for whatever else on the node writes to /run).
    for key in ["run_full", "run_after"] {
        let (bytes, inodes) = parse_statfs(field(&report, key));
        assert!(
            bytes + (1 << 20) >= run_before.0 && inodes + 64 >= run_before.1,
            "/run on {NODE} lost space: {key} {bytes} bytes {inodes} inodes, before {run_before:?}"
        );
    }

    // Root's view: one tmpfs of ours on it, with the limits and flags.
    let mounts = lab.sh_ok(None, NODE, &format!("grep ' {dir} ' /proc/self/mountinfo || true"));
    let mounts: Vec<&str> = mounts.lines().collect();
    assert_eq!(mounts.len(), 1, "mounts on {dir}: {mounts:?}");
    for part in [
        "nosuid",
        "nodev",
        "noexec",
        " - tmpfs vscode-slurm ",
        "size=65536k",
        "nr_inodes=4096",
        "mode=700",
        "uid=2001",
        "gid=2001",
    ] {
        assert!(mounts[0].contains(part), "{part} missing from {}", mounts[0]);
    }

    // Alice's shell from outside the job (no SLURM_JOB_ID: the epilog's
    // sweep leaves it be) sits deep in the tree and keeps it busy.
    let mut busy = lab.spawn(
        Some("alice"),
        NODE,
        &["sh", "-c", &format!("cd {dir}/d/d/d && echo $$ && exec sleep 600")],
    );
    let busy_pid = busy.expect_line("the busy shell's pid", Duration::from_secs(10), |l| !l.is_empty());
    let end_busy = Undo(&lab, vec![(NODE, format!("kill {busy_pid}"))]);

    let Teardown { log_from, line, seconds, until_idle } = cancel_and_time_teardown(&lab, job);
    println!(
        "epilog teardown: {seconds:.3} s ({line}); scancel to node idle: {:.1} s",
        until_idle.as_secs_f64()
    );
    assert!(seconds < 2.0, "the teardown took {seconds} s: {line}");
    assert!(line.contains("(1 unmount)"), "{line}");

    let gone =
        lab.sh_ok(None, NODE, &format!("ls -d {dir} 2>&1; grep -c ' {dir} ' /proc/self/mountinfo || true"));
    assert!(
        gone.contains("No such file or directory") && gone.trim().ends_with('0'),
        "{dir} is still there: {gone}"
    );
    let errors: Vec<String> = slurmd_log_since(&lab, NODE, log_from)
        .into_iter()
        .filter(|l| l.contains("error: vscode:") && l.contains(&format!("job {job}")))
        .collect();
    assert!(errors.is_empty(), "the epilog complained: {errors:?}");
    // The busy shell is still there, in a tree detached from every path.
    let cwd = lab.sh_ok(None, NODE, &format!("readlink /proc/{busy_pid}/cwd"));
    assert!(!cwd.starts_with("/run/"), "the busy shell's directory is still reachable: {cwd}");
    drop(end_busy);
    busy.wait(Duration::from_secs(10));

    let run_end = run_free(&lab, NODE);
    assert!(
        run_end.0 + (1 << 20) >= run_before.0 && run_end.1 + 64 >= run_before.1,
        "/run on {NODE}: {run_end:?} after, {run_before:?} before"
    );
}

/// With the inode limit raised far enough for it, a 200 000-deep chain is
/// really built; the epilog still only unmounts, and takes about as long.
#[test]
fn a_200000_deep_tree_goes_with_one_unmount() {
    let lab = Lab::get();
    let _plugstack = Plugstack::set(&lab, "runtime_inodes=262144");
    let script = r#"
        (cd $d && perl -e "$DEEP") >> $out
        echo "inodes_free $(stat -f -c %d $d)" >> $out
    "#;
    let started = Instant::now();
    let (attack, report) = run_attack(&lab, "rl-deep", script);
    let job = attack.job;
    println!("job {job}: built in {:.1} s:\n{report}", started.elapsed().as_secs_f64());
    assert_eq!(number(&report, "deep"), 200_000, "the chain was not built: {report}");

    let Teardown { line, seconds, until_idle, .. } = cancel_and_time_teardown(&lab, job);
    println!(
        "epilog teardown of a 200000-deep tree: {seconds:.3} s; scancel to node idle: {:.1} s",
        until_idle.as_secs_f64()
    );
    assert!(seconds < 5.0, "the teardown took {seconds} s: {line}");
    let gone = lab.sh_ok(None, NODE, &format!("ls -d /run/vscode-slurm/{job} 2>&1 || true"));
    assert!(gone.contains("No such file or directory"), "{gone}");
}

/// A runtime_dir reached through a symlink, or below a directory alice
/// owns: salloc refuses with one `vscode:` line when the login node shows it,
/// the node refuses the step (one `vscode:` line in its log) when only the
/// node does, and nothing is created in either place.
#[test]
fn a_runtime_dir_through_a_symlink_or_a_users_directory_is_refused() {
    let lab = Lab::get();
    let hosts = ["login", NODE];
    let set_up = "mkdir -p /run/vscode-target && ln -sfn /run/vscode-target /run/vscode-link \
                  && mkdir -p /run/alice-owned && chown alice /run/alice-owned";
    let clean_up = "rm -rf /run/vscode-target /run/vscode-link /run/alice-owned";
    let _undo = Undo(&lab, hosts.iter().map(|h| (*h, clean_up.to_owned())).collect());
    let cases = [
        (
            "/run/vscode-link/x",
            "/run/vscode-link is a symbolic link",
            "/run/vscode-target",
            "rm /run/vscode-link",
        ),
        (
            "/run/alice-owned/x",
            "/run/alice-owned is owned by uid 2001, not root",
            "/run/alice-owned",
            "rm -r /run/alice-owned",
        ),
    ];
    for (runtime_dir, why, must_stay_empty, fix_on_login) in cases {
        for host in hosts {
            lab.sh_ok(None, host, set_up);
        }
        let _plugstack = Plugstack::set(&lab, &format!("runtime_dir={runtime_dir}"));

        // Both the login node and the node show it: salloc refuses.
        let out = lab.sh(Some("alice"), "login", &format!("salloc --vscode -N1 -w {NODE} srun true"));
        let err = stderr_of(&out);
        assert!(!out.status.success(), "salloc accepted runtime_dir={runtime_dir}: {err}");
        let ours: Vec<&str> = err.lines().filter(|l| l.contains("vscode:")).collect();
        assert_eq!(ours.len(), 1, "want one vscode: line for runtime_dir={runtime_dir}: {err}");
        assert!(ours[0].contains(&format!("refusing runtime_dir={runtime_dir}: {why};")), "{}", ours[0]);
        let queue = lab.sh_ok(None, "login", "squeue -h");
        assert!(queue.trim().is_empty(), "a job was queued: {queue}");

        // Only the node shows it: the node refuses the step.
        lab.sh_ok(None, "login", fix_on_login);
        let log_from = slurmd_log_len(&lab, NODE);
        let out = lab.sh(Some("alice"), "login", &format!("salloc --vscode -N1 -w {NODE} srun true"));
        let err = stderr_of(&out);
        // srun's words for it differ by release: "Plugin initialization
        // failed" up to 24.11, "Unspecified error" in 26.05; the node's log
        // below says why in ours.
        assert!(
            err.contains("task 0 launch failed: Plugin initialization failed")
                || err.contains("task 0 launch failed: Unspecified error"),
            "the step was not refused: {err}"
        );
        let ours: Vec<String> =
            slurmd_log_since(&lab, NODE, log_from).into_iter().filter(|l| l.contains("vscode:")).collect();
        assert_eq!(ours.len(), 1, "want one vscode: line in {NODE}'s log: {ours:?}");
        assert!(ours[0].contains(&format!("refusing runtime_dir={runtime_dir}: {why};")), "{}", ours[0]);

        for host in hosts {
            let left = lab.sh_ok(None, host, &format!("ls -A {must_stay_empty} 2>/dev/null || true"));
            assert!(left.trim().is_empty(), "{host}:{must_stay_empty} got {left}");
            lab.sh_ok(None, host, clean_up);
        }
    }
    // The default runtime_dir works again.
    let ok = lab.sh(
        Some("alice"),
        "login",
        &format!("salloc --vscode -N1 -w {NODE} srun printenv VSCODE_SLURM_RUNTIME_DIR"),
    );
    assert!(ok.status.success(), "{}", stderr_of(&ok));
    assert!(stdout_of(&ok).starts_with("/run/vscode-slurm/"), "{}", stdout_of(&ok));
}

/// Four steps of one job, started together on one node, all find the job's
/// runtime directory made for them (whichever came first made it), mounted
/// once. Three jobs, to give the race its chances.
#[test]
fn steps_of_one_job_starting_at_once_on_one_node_all_succeed() {
    let lab = Lab::get();
    let script = r#"
        for i in 1 2 3 4; do
            srun -n1 --overlap bash -c 'stat -c "$VSCODE_SLURM_RUNTIME_DIR %U %a" $VSCODE_SLURM_RUNTIME_DIR' &
            pids="$pids $!"
        done
        for p in $pids; do wait $p; echo "rc $?"; done
        srun -n1 --overlap grep -c " /run/vscode-slurm/$SLURM_JOB_ID " /proc/self/mountinfo
    "#;
    for round in 1..=3 {
        let out = lab.sh(
            Some("alice"),
            "login",
            &format!("salloc --vscode -N1 -w {NODE} bash -c '{}'", script.replace('\'', r"'\''")),
        );
        let (text, err) = (stdout_of(&out), stderr_of(&out));
        assert!(out.status.success(), "round {round}: {err}\n{text}");
        let lines: Vec<&str> = text.lines().collect();
        let dirs: Vec<&&str> = lines.iter().filter(|l| l.starts_with("/run/vscode-slurm/")).collect();
        assert_eq!(dirs.len(), 4, "round {round}: {text}\n{err}");
        assert!(dirs.iter().all(|l| l.ends_with(" alice 700") && **l == *dirs[0]), "round {round}: {dirs:?}");
        assert_eq!(lines.iter().filter(|l| **l == "rc 0").count(), 4, "round {round}: {text}\n{err}");
        assert_eq!(lines.last(), Some(&"1"), "round {round}: not mounted exactly once: {text}");
    }
}

/// On a dual-stack node whose resolver answers its name with a global IPv6
/// address first, `bind=nodeaddr` still gives the doors the address Slurm
/// uses for the node (its NodeAddr), and the node's log says where it came from.
#[test]
fn bind_nodeaddr_is_slurms_node_addr_not_the_resolvers_first_answer() {
    let lab = Lab::get();
    let hosts_file = lab.dir.join("etc/hosts");
    let original = std::fs::read_to_string(&hosts_file).expect("the lab's hosts file");
    // Written in place: every cluster host has this very file bind-mounted.
    std::fs::write(&hosts_file, format!("2001:db8:77::11 {NODE}\n{original}")).unwrap();
    let restore = format!(
        "ip -6 addr del 2001:db8:77::11/64 dev eth0; printf '%s' '{}' > {}",
        original.replace('\'', r"'\''"),
        hosts_file.display()
    );
    let _undo = Undo(&lab, vec![(NODE, restore)]);
    lab.sh_ok(None, NODE, "ip -6 addr add 2001:db8:77::11/64 dev eth0 nodad");
    let first = lab.sh_ok(None, NODE, &format!("getent ahosts {NODE} | head -1"));
    assert!(first.starts_with("2001:db8:77::11"), "the resolver does not answer IPv6 first: {first}");

    let log_from = slurmd_log_len(&lab, NODE);
    let out = lab.sh(
        Some("alice"),
        "login",
        &format!("salloc --vscode -N1 -w {NODE} srun printenv VSCODE_SLURM_BIND_ADDR"),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out).trim(), NODE_ADDR);
    let said: Vec<String> = slurmd_log_since(&lab, NODE, log_from)
        .into_iter()
        .filter(|l| l.contains("doors listen on"))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains(&format!(
            "doors listen on {NODE_ADDR} (NodeAddr {NODE_ADDR} of node {NODE} in slurm.conf)"
        )),
        "{}",
        said[0]
    );
}
