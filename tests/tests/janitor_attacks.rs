//! The login-node janitor (`vscode-janitor`) under attack by a user
//! (issue 15, finding 6): ten thousand fake servers must neither crash nor
//! stall it, a forged `SLURM_JOB_ID` must not hide a server from it, and a
//! real job's processes must still be spared.
//!
//! The fakes are what the janitor looks for: a process whose executable and
//! command line are under `~/.vscode-server` (a copy of `sleep`), left to
//! init. In the lab jobs run only on c1 and c2 (login has no slurmd), so the
//! test of a real job runs the janitor on c1, where the job is: the rule is
//! the same on every node ("in a job" means tracked by a job running on that
//! node), and on c1 a job's process that the rule failed to see would be
//! ended, its owner having no ssh session there.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use vscode_slurm_tests::{stderr_of, stdout_of, wait_until, Lab, LineProcess, Proc};

/// The fake servers' version directory, under ~/.vscode-server/bin (and
/// /tmp/.vscode-server/bin for root): everything this file starts runs
/// from it, which is how cleanup finds it.
const COMMIT: &str = "janitor-attack-0000";

/// How many fake servers bob starts.
const FAKES: usize = 10_000;

/// The janitor must end them all well within this; it runs from cron every
/// 15 minutes (docs/janitor.md). In the lab it took about 6 s: the 3 s grace
/// period, then SIGKILL for every fake.
const BOUND: Duration = Duration::from_secs(60);

/// `node` (a copy of sleep) and `spawn.py`, which starts N copies of
/// `node 3600` with posix_spawn and exits, leaving them to init. They ignore
/// SIGTERM (inherited across exec), the janitor's worst case: each one waits
/// out the grace period and needs SIGKILL.
fn install_script(home: &str) -> String {
    format!(
        "set -e; d={home}/.vscode-server/bin/{COMMIT}; mkdir -p $d; cp /bin/sleep $d/node; \
         cat > $d/spawn.py <<'EOF'\n\
         import os, signal, sys\n\
         signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         node, n = sys.argv[1], int(sys.argv[2])\n\
         for _ in range(n):\n\
         \x20   os.posix_spawn(node, [node, '3600'], {{}})\n\
         EOF\n"
    )
}

/// Processes started from this file's directory on `host`.
fn ours(lab: &Lab, host: &str) -> Vec<Proc> {
    lab.processes(host).into_iter().filter(|p| p.args.contains(&format!("/bin/{COMMIT}/"))).collect()
}

/// Ends (SIGKILL, by pid) every process this test started and removes its
/// files and jobs when the test is over, passed or not.
struct Cleanup<'a> {
    lab: &'a Lab,
    hosts: &'static [&'static str],
    extra: Vec<(&'static str, i32)>,
    jobs: Vec<u32>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for job in &self.jobs {
            self.lab.sh(None, "login", &format!("scancel {job}"));
        }
        for host in self.hosts {
            let mut pids: Vec<String> = ours(self.lab, host).iter().map(|p| p.pid.to_string()).collect();
            pids.extend(self.extra.iter().filter(|(h, _)| h == host).map(|(_, pid)| pid.to_string()));
            if !pids.is_empty() {
                self.lab.sh(None, host, &format!("kill -KILL {} 2>/dev/null", pids.join(" ")));
            }
        }
        self.lab.sh(
            None,
            "login",
            &format!(
                "rm -rf /tmp/.vscode-server; for u in alice bob; do rm -rf /home/$u/.vscode-server/bin/{COMMIT}; \
                 rmdir /home/$u/.vscode-server/bin /home/$u/.vscode-server 2>/dev/null; done; true"
            ),
        );
    }
}

/// What one janitor run printed, reduced.
#[derive(Debug)]
struct Run {
    /// `pid user reason result` per tree.
    trees: BTreeSet<String>,
    /// The janitor's own run time.
    seconds: f64,
    /// Processes that needed SIGKILL, over all trees.
    sigkills: usize,
}

/// Runs the janitor on `host` with `--json`, and reduces its document (read
/// with python's JSON parser).
fn janitor_json(lab: &Lab, host: &str, args: &str) -> Run {
    janitor_run(lab, host, "", args)
}

/// [`janitor_json`] after `setup` (shell commands, such as a `ulimit`).
fn janitor_run(lab: &Lab, host: &str, setup: &str, args: &str) -> Run {
    let script = format!(
        "set -o pipefail; {setup} t0=$(date +%s.%N); vscode-janitor --json {args} > /tmp/janitor-attacks.json \
         2>/tmp/janitor-attacks.err; rc=$?; t1=$(date +%s.%N); python3 -c '\n\
         import json, sys\n\
         d = json.load(open(\"/tmp/janitor-attacks.json\"))\n\
         kills = sum(t[\"result\"][\"needed_sigkill\"] for t in d[\"trees\"] if t[\"result\"])\n\
         print(float(sys.argv[2]) - float(sys.argv[1]), kills)\n\
         for t in d[\"trees\"]:\n\
         \x20   r = t[\"result\"]\n\
         \x20   res = \"none\" if r is None else (\"ended\" if r[\"ended\"] else \"failed\")\n\
         \x20   print(t[\"pid\"], t[\"user\"], t[\"reason\"], res)\n\
         ' $t0 $t1 || exit 99; rm -f /tmp/janitor-attacks.json; exit $rc"
    );
    let out = lab.sh(None, host, &script);
    let err = lab.sh_ok(None, host, "head -c 2000 /tmp/janitor-attacks.err; rm -f /tmp/janitor-attacks.err");
    assert!(out.status.success(), "janitor --json {args} on {host} failed: {}\n{err}", stderr_of(&out));
    let text = stdout_of(&out);
    let mut lines = text.lines();
    let first: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    let seconds = first.first().and_then(|s| s.parse().ok()).expect("the run time");
    let sigkills = first.get(1).and_then(|s| s.parse().ok()).expect("the SIGKILL count");
    Run { trees: lines.map(str::to_owned).collect(), seconds, sigkills }
}

fn environ_has(lab: &Lab, host: &str, pid: i32, entry: &str) -> bool {
    lab.sh(None, host, &format!("tr '\\0' '\\n' < /proc/{pid}/environ | grep -qx '{entry}'")).status.success()
}

#[test]
fn ten_thousand_fake_servers_neither_crash_nor_stall_the_janitor() {
    let lab = Lab::get();
    lab.install_in_every_home(install_script);
    let mut cleanup = Cleanup { lab: &lab, hosts: &["login"], extra: vec![], jobs: vec![] };

    // Left alone: alice's server inside her connected ssh session, her
    // plain process, and root's server-shaped process left to init.
    let mut session: LineProcess = lab.spawn(Some("alice"), "laptop", &["ssh", "-T", "login", "bash"]);
    session.send(&format!("~/.vscode-server/bin/{COMMIT}/node 3600 & echo started"));
    session.expect_line("from the ssh session", Duration::from_secs(15), |l| l == "started");
    lab.sh_ok(
        Some("alice"),
        "login",
        "setsid sleep 3600 </dev/null >/dev/null 2>&1 & echo $! > /tmp/alice-plain",
    );
    let plain: i32 =
        lab.sh_ok(None, "login", "cat /tmp/alice-plain; rm -f /tmp/alice-plain").trim().parse().unwrap();
    cleanup.extra.push(("login", plain));
    lab.sh_ok(
        None,
        "login",
        &format!("setsid /tmp/.vscode-server/bin/{COMMIT}/node 3600 </dev/null >/dev/null 2>&1 &"),
    );

    // The attack: bob's ten thousand fake servers, left to init, deaf to SIGTERM.
    let t0 = Instant::now();
    lab.sh_ok(
        Some("bob"),
        "login",
        &format!(
            "d=$HOME/.vscode-server/bin/{COMMIT}; cd /; setsid python3 $d/spawn.py $d/node {FAKES} \
             </dev/null >/dev/null 2>&1"
        ),
    );
    let started = t0.elapsed();
    let procs = ours(&lab, "login");
    let fakes: BTreeSet<i32> = procs.iter().filter(|p| p.uid == 2002 && p.ppid == 1).map(|p| p.pid).collect();
    assert_eq!(fakes.len(), FAKES, "bob's fakes, left to init");
    let keep: BTreeSet<i32> = procs.iter().filter(|p| p.uid != 2002).map(|p| p.pid).chain([plain]).collect();
    assert_eq!(keep.len(), 3, "alice's server and plain process, root's server: {procs:?}");
    let attached = procs.iter().find(|p| p.uid == 2001).expect("alice's server");
    assert_ne!(attached.ppid, 1, "alice's server is not in her session");
    println!("started {FAKES} fake servers in {:.1} s", started.as_secs_f64());

    // Once they are a second old, the dry run lists exactly them.
    let expected: BTreeSet<String> = fakes.iter().map(|pid| format!("{pid} bob reparented none")).collect();
    let dry = wait_until(
        "the dry run to list every fake",
        Duration::from_secs(60),
        || janitor_json(&lab, "login", "--min-age 1s"),
        |run| run.trees.len() >= FAKES,
    );
    let listed = &dry.trees;
    assert!(
        *listed == expected,
        "listed {} trees, {} of them not bob's fakes",
        listed.len(),
        listed.difference(&expected).count()
    );

    // With cron's usual open-file limit (soft and hard): a pidfd each for the
    // first thousand or so, the rest pinned by start time.
    let run = janitor_run(&lab, "login", "ulimit -n 1024;", "--kill --min-age 1s --grace 3s");
    let expected: BTreeSet<String> = fakes.iter().map(|pid| format!("{pid} bob reparented ended")).collect();
    let ended = &run.trees;
    assert!(
        *ended == expected,
        "{} results, {} unexpected",
        ended.len(),
        ended.difference(&expected).count()
    );
    assert_eq!(run.sigkills, FAKES, "every fake ignores SIGTERM");
    println!(
        "vscode-janitor on login: {FAKES} fake server trees listed in {:.2} s, ended in {:.2} s \
         (--grace 3s, then SIGKILL for all {FAKES}; open-file limit 1024)",
        dry.seconds, run.seconds
    );
    assert!(run.seconds < BOUND.as_secs_f64(), "took {:.1} s", run.seconds);

    assert_eq!(lab.alive("login", &fakes), BTreeSet::new(), "fakes left");
    assert_eq!(lab.alive("login", &keep), keep, "processes that were not to be touched are gone");
    assert!(session.child.try_wait().expect("try_wait").is_none(), "the ssh session went away");
    drop(session);
    drop(cleanup);
}

/// bob's job, running on c1, and its id: what a forged variable would name.
fn bobs_job(lab: &Lab, cleanup: &mut Cleanup<'_>, wrap: &str) -> u32 {
    let job: u32 = lab
        .sh_ok(Some("bob"), "login", &format!("sbatch --parsable -w c1 --wrap '{wrap}'"))
        .trim()
        .parse()
        .expect("job id from sbatch --parsable");
    cleanup.jobs.push(job);
    wait_until(
        "bob's job to run",
        Duration::from_secs(30),
        || lab.sh_ok(None, "login", &format!("squeue -h -j {job} -o %T")).trim().to_owned(),
        |state| state == "RUNNING",
    );
    job
}

#[test]
fn a_forged_job_id_does_not_hide_a_server_outside_any_job() {
    let lab = Lab::get();
    lab.sh_ok(Some("bob"), "login", &install_script("$HOME"));
    let mut cleanup = Cleanup { lab: &lab, hosts: &["login"], extra: vec![], jobs: vec![] };
    // The variable names a job of bob's that really runs (elsewhere).
    let job = bobs_job(&lab, &mut cleanup, "sleep 600");
    lab.sh_ok(
        Some("bob"),
        "login",
        &format!(
            "SLURM_JOB_ID={job} SLURM_JOBID={job} setsid ~/.vscode-server/bin/{COMMIT}/node 3600 \
             </dev/null >/dev/null 2>&1 &"
        ),
    );
    let forged = wait_until(
        "the forged server",
        Duration::from_secs(10),
        || ours(&lab, "login").iter().find(|p| p.ppid == 1 && p.uid == 2002).map(|p| p.pid),
        Option::is_some,
    )
    .unwrap_or_default();
    assert!(environ_has(&lab, "login", forged, &format!("SLURM_JOB_ID={job}")));

    let run = janitor_json(&lab, "login", "--kill --min-age 0 --grace 2s --user bob");
    assert_eq!(run.trees, BTreeSet::from([format!("{forged} bob reparented ended")]));
    assert_eq!(lab.alive("login", &BTreeSet::from([forged])), BTreeSet::new());
    drop(cleanup);
}

#[test]
fn a_real_jobs_processes_are_spared_and_what_left_the_job_is_not() {
    let lab = Lab::get();
    lab.sh_ok(Some("bob"), "login", &install_script("$HOME"));
    let mut cleanup = Cleanup { lab: &lab, hosts: &["c1", "login"], extra: vec![], jobs: vec![] };
    // The batch step runs a fake server as its child, and one that
    // daemonises out of the step (double fork: left to c1's init).
    let d = format!("$HOME/.vscode-server/bin/{COMMIT}");
    let job = bobs_job(&lab, &mut cleanup, &format!("{d}/node 3601 & ({d}/node 3602 &); wait"));
    // bob starts another on c1 outside the job, naming the job in its environment.
    lab.sh_ok(
        Some("bob"),
        "c1",
        &format!("SLURM_JOB_ID={job} SLURM_JOBID={job} setsid {d}/node 3603 </dev/null >/dev/null 2>&1 &"),
    );
    let procs = wait_until(
        "the three servers on c1",
        Duration::from_secs(15),
        || ours(&lab, "c1"),
        |procs| procs.len() == 3,
    );
    let by_arg = |arg: &str| procs.iter().find(|p| p.args.ends_with(arg)).cloned().expect(arg);
    let (in_job, escaped, forged) = (by_arg(" 3601"), by_arg(" 3602"), by_arg(" 3603"));
    let stepd = lab
        .processes("c1")
        .into_iter()
        .find(|p| p.args == format!("slurmstepd: [{job}.batch]"))
        .expect("the batch step's slurmstepd");
    let script = lab.processes("c1").into_iter().find(|p| p.pid == in_job.ppid).expect("the batch script");
    assert_eq!(script.ppid, stepd.pid, "the job's server is not below its slurmstepd");
    assert_eq!((escaped.ppid, forged.ppid), (1, 1));
    for p in [&in_job, &escaped, &forged] {
        assert!(environ_has(&lab, "c1", p.pid, &format!("SLURM_JOB_ID={job}")), "{p:?}");
    }

    // bob has no ssh session on c1: without the job, all three would go.
    // The dry run lists the two outside it, then --kill ends just those.
    for (args, result) in
        [("--min-age 0 --user bob", "none"), ("--kill --min-age 0 --grace 2s --user bob", "ended")]
    {
        let trees = janitor_json(&lab, "c1", args).trees;
        assert_eq!(
            trees,
            BTreeSet::from([
                format!("{} bob reparented {result}", escaped.pid),
                format!("{} bob reparented {result}", forged.pid)
            ]),
            "{args}"
        );
    }
    let all = BTreeSet::from([in_job.pid, escaped.pid, forged.pid]);
    assert_eq!(lab.alive("c1", &all), BTreeSet::from([in_job.pid]), "only the job's own server is left");
    assert_eq!(lab.sh_ok(None, "login", &format!("squeue -h -j {job} -o %T")).trim(), "RUNNING");
    drop(cleanup);
}
