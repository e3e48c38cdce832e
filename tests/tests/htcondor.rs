//! The same sessions on an HTCondor pool (`labctl up --scheduler htcondor`):
//! Debian 13's HTCondor with its central manager on head, the access
//! point's schedd on login (login2 submits there too), execute points on
//! c1 and c2. The site default (`vscode-shim.conf` beside the installed
//! shim) names HTCondor, so the laptop's ssh entries are the Slurm lab's.
//!
//! Every test here needs that pool and is ignored in a Slurm lab;
//! `tests/test-all` runs them with `--ignored` on the pool.

use std::time::{Duration, Instant};

use vscode_slurm_tests::proxy::ProxyHost;
use vscode_slurm_tests::session::{dump, json_field, start_client, Session, SessionOptions};
use vscode_slurm_tests::strangers::{alices_doors, assert_nothing_from_the_server, connections, tools};
use vscode_slurm_tests::{wait_until, Lab};

const REUSE: &str = include_str!("../scripts/reuse.sh");
/// HTCondor's own pace beyond ours: a negotiation cycle, a starter's exit.
const CONDOR_SLACK: Duration = Duration::from_secs(60);

/// A window of `mode`'s own launch script, or of [`REUSE`] (which finds the
/// server an earlier window of the job started) with `reuse`.
fn open(lab: &Lab, mode: &str, reuse: bool, remote_command: &str, ssh_options: &[&str]) -> Session {
    Session::open(
        lab,
        SessionOptions {
            user: "alice",
            mode,
            template: reuse.then_some(REUSE),
            remote_command: Some(remote_command),
            ssh_options,
        },
    )
}

/// `user`'s jobs in the queue: (cluster, JobStatus).
fn queue(lab: &Lab, user: &str) -> Vec<(u32, u32)> {
    // The pool shows every user's jobs (CONDOR_Q_ONLY_MY_JOBS = False): name the user.
    lab.sh_ok(Some(user), "login", &format!("condor_q {user} -af ClusterId JobStatus"))
        .lines()
        .filter_map(|l| {
            let (id, status) = l.split_once(' ')?;
            Some((id.parse().ok()?, status.trim().parse().ok()?))
        })
        .collect()
}

/// The session's editor job, from the server's own answer: its cluster id
/// comes from the job ad the starter wrote, so the server runs inside it.
fn cluster(session: &Session) -> u32 {
    session
        .field("condor_cluster")
        .parse()
        .unwrap_or_else(|_| panic!("the server does not run in an HTCondor job: {}", session.answer))
}

/// Nothing of `user` anywhere: not in the queue, no process on the access
/// points or execute points, no job directory left on an execute point.
fn assert_nothing_left(lab: &Lab, user: &str, job: u32, within: Duration) {
    wait_until(&format!("job {job} to leave the queue"), within, || queue(lab, user), |jobs| jobs.is_empty());
    for host in ["login", "login2", "c1", "c2"] {
        wait_until(
            &format!("no process of {user} on {host} after job {job}"),
            within,
            || lab.sh_ok(None, host, &format!("ps -u {user} -o pid=,args= || true")),
            |ps| ps.trim().is_empty(),
        );
    }
    for host in ["c1", "c2"] {
        wait_until(
            &format!("job {job}'s execute directory on {host} to be removed"),
            within,
            || lab.sh_ok(None, host, "ls -A /var/lib/condor/execute"),
            |dirs| dirs.trim().is_empty(),
        );
    }
}

/// The exec-server and legacy launch modes each run in the profile's editor
/// job on an execute point, share it, and the job is tagged for a site's
/// policy; closing the last window ends it and leaves nothing.
#[test]
#[ignore = "needs the lab's HTCondor pool: labctl up --scheduler htcondor"]
fn both_launch_modes_run_inside_one_editor_job_and_closing_the_last_ends_it() {
    let lab = Lab::htcondor();
    let command = "vscode-shim --profile pair -- request_memory=100";
    let first = open(&lab, "exec-server", false, command, &[]);
    let job = cluster(&first);
    let node = first.node();
    assert!(node == "c1" || node == "c2", "the server runs on an execute point, not {node}");
    assert_eq!(json_field(&first.answer, "job_id").as_deref(), Some(""), "no Slurm job: {}", first.answer);
    assert_eq!(queue(&lab, "alice"), [(job, 2)], "one running editor job");
    let tags = lab.sh_ok(
        Some("alice"),
        "login",
        &format!("condor_q {job} -af VSCodeSession VSCodeProfile JobBatchName JobUniverse Cmd"),
    );
    assert_eq!(
        tags.trim(),
        "true pair vscode:pair 5 /usr/local/bin/vscode-job-helper",
        "the job's ad: tagged, named, vanilla, the keeper"
    );
    // The exec server listens on a socket of its own; only the door is on TCP.
    let local = first.field("local_addr");
    assert!(local.starts_with('/'), "the exec server is on a unix socket: {local}");

    let mut second = open(&lab, "legacy", false, command, &["HostName=login2"]);
    assert_eq!((cluster(&second), second.node()), (job, node.clone()), "the second window joins the job");
    // The legacy server's loopback bind was moved into the job's private directory.
    let local = second.field("local_addr");
    assert!(
        local.starts_with("/var/lib/condor/execute/dir_") && local.contains("/vscode-slurm/server-"),
        "the server is moved off TCP into the job's private directory: {local}"
    );
    assert_eq!(queue(&lab, "alice"), [(job, 2)], "still one job");
    assert!(second.get().contains("\"condor_cluster\""));

    let (_, _client) = first.close();
    assert_eq!(queue(&lab, "alice"), [(job, 2)], "the other window keeps the job");
    assert!(second.get().contains(&format!("\"condor_cluster\":\"{job}\"")));
    let (took, client) = second.close();
    assert!(took < Duration::from_secs(20), "closing took {took:?}\n{}", dump(&client));
    assert_nothing_left(&lab, "alice", job, CONDOR_SLACK);
    let ended =
        lab.sh_ok(Some("alice"), "login", &format!("condor_history {job} -limit 1 -af JobStatus ExitCode"));
    assert_eq!(ended.trim(), "4 0", "the keeper ended the job by itself: {ended}");
}

/// A window dropped on login comes back through login2 to the same server
/// while the job lingers; once no window is back for the linger time, the
/// keeper ends the job.
#[test]
#[ignore = "needs the lab's HTCondor pool: labctl up --scheduler htcondor"]
fn a_window_reattaches_from_login2_while_the_job_lingers_then_it_ends() {
    let lab = Lab::htcondor();
    let command = "vscode-shim --profile linger --linger 20s -- request_memory=100";
    let first = open(&lab, "legacy", true, command, &[]);
    let (job, pid) = (cluster(&first), first.field("pid"));
    let (_, _client) = first.close();
    let attached = wait_until(
        "the keeper to publish that no window is attached",
        Duration::from_secs(20),
        || lab.sh_ok(Some("alice"), "login", &format!("condor_q {job} -af JobStatus VSCodeWindows")),
        |ad| ad.starts_with("2 vscode:windows=0,ends="),
    );
    assert!(!attached.is_empty());
    let shown = lab.sh_ok(Some("alice"), "login2", "vscode-shim sessions");
    assert!(
        shown.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.len() == 7 && cells[..6] == ["linger", &job.to_string(), cells[2], "RUNNING", "-", "0"]
        }),
        "sessions on login2 shows the lingering job with no window:\n{shown}"
    );

    let second = open(&lab, "legacy", true, command, &["HostName=login2"]);
    assert_eq!(cluster(&second), job, "reattached through login2");
    assert_eq!(second.field("pid"), pid, "to the same server");
    assert!(
        second.client.stderr_seen.iter().any(|l| l.contains(&format!("joining job {job} of profile linger"))),
        "{}",
        dump(&second.client)
    );
    let (_, _client) = second.close();
    let closed = Instant::now();
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(20) + CONDOR_SLACK);
    assert!(
        closed.elapsed() >= Duration::from_secs(15),
        "the job ended before its linger: {:?}",
        closed.elapsed()
    );
}

/// Whoever ends the job from outside, the window says so in one line and
/// nothing is left: `condor_rm`, a hold (which the shim turns into a
/// removal, since a held editor job would wait for ever), `vscode-shim stop`.
#[test]
#[ignore = "needs the lab's HTCondor pool: labctl up --scheduler htcondor"]
fn a_removed_and_a_held_job_each_end_the_session_with_one_line() {
    let lab = Lab::htcondor();
    for (action, says) in [
        ("condor_rm", "was removed (via condor_rm"),
        ("condor_hold", "was held by HTCondor ("),
        ("vscode-shim stop", "was removed (vscode-shim stop"),
    ] {
        let command =
            format!("vscode-shim --profile {} -- request_memory=100", action.replace([' ', '_'], "-"));
        let mut session = open(&lab, "legacy", false, &command, &[]);
        let job = cluster(&session);
        lab.sh_ok(Some("alice"), "login", &format!("{action} {job}"));
        session.client.expect_line("ssh to exit", Duration::from_secs(60), |l| l.starts_with("ssh-exited"));
        session.client.stderr_to_end(Duration::from_secs(10));
        let lines: Vec<&String> =
            session.client.stderr_seen.iter().filter(|l| l.contains(&format!("job {job} "))).collect();
        let ends: Vec<&&String> = lines.iter().filter(|l| l.contains(says)).collect();
        assert_eq!(ends.len(), 1, "{action}: one line that says why:\n{}", dump(&session.client));
        assert!(ends[0].ends_with("reconnect to start a new session"), "{}", ends[0]);
        drop(session);
        assert_nothing_left(&lab, "alice", job, CONDOR_SLACK);
    }
}

/// Submit commands after `--` are checked: the shim's own are refused
/// before anything is submitted, and what condor_submit refuses comes back
/// as one line; either way nothing is in the queue.
#[test]
#[ignore = "needs the lab's HTCondor pool: labctl up --scheduler htcondor"]
fn bad_submit_commands_are_one_line_and_submit_nothing() {
    let lab = Lab::htcondor();
    let before = lab.sh_ok(None, "login", "condor_history -af ClusterId | wc -l");
    for (args, says) in [
        ("'queue 5'", "vscode-shim: 'queue' is written by vscode-shim"),
        ("'executable = /bin/sh'", "vscode-shim: 'executable' is written by vscode-shim"),
        ("request_cpus", "vscode-shim: 'request_cpus' is not a submit command of the form name = value"),
        ("'requirements = (('", "vscode-shim: condor_submit refused the job: "),
    ] {
        let remote_command = format!("vscode-shim --profile bad -- {args}");
        let options = SessionOptions { remote_command: Some(&remote_command), ..SessionOptions::default() };
        let mut client = start_client(&lab, &options);
        client.expect_line("ssh to exit", Duration::from_secs(30), |l| l.starts_with("ssh-exited"));
        client.stderr_to_end(Duration::from_secs(10));
        let ours: Vec<&String> =
            client.stderr_seen.iter().filter(|l| l.starts_with("vscode-shim:")).collect();
        assert_eq!(ours.len(), 1, "{args}: one line\n{}", dump(&client));
        assert!(ours[0].starts_with(says), "{args}: {}", ours[0]);
        assert!(queue(&lab, "alice").is_empty(), "{args}: something was queued");
    }
    let after = lab.sh_ok(None, "login", "condor_history -af ClusterId | wc -l");
    assert_eq!(before, after, "no job was submitted and removed either");
}

/// The stranger scan on the HTCondor path: bob tries alice's door and every
/// port she listens on, from login, from the other execute point and from a
/// job of his own on her node, and gets at most the door's challenge; her
/// server sees none of it.
#[test]
#[ignore = "needs the lab's HTCondor pool: labctl up --scheduler htcondor"]
fn strangers_get_nothing_on_the_htcondor_path() {
    let lab = Lab::htcondor();
    let command = "vscode-shim --profile strangers -- request_memory=100";
    // bob labels a job of his own as a session of alice's profile, running
    // and idle: the pool shows every user's jobs, but alice's windows must
    // never take his for hers.
    let decoy = "printf '%s\\n' 'executable = /bin/sleep' 'arguments = 600' 'request_memory = 50' \
                 '+VSCodeSession = True' '+VSCodeProfile = \"strangers\"' 'queue 2' | condor_submit -terse -";
    let decoys = lab.sh_ok(Some("bob"), "login", decoy);
    let decoy_cluster: u32 =
        decoys.split('.').next().and_then(|id| id.trim().parse().ok()).expect("bob's cluster");
    let mut session = open(&lab, "legacy", false, command, &[]);
    let (job, node) = (cluster(&session), session.node());
    assert_ne!(job, decoy_cluster, "alice's window joined bob's labelled job");
    lab.sh_ok(Some("bob"), "login", &format!("condor_rm {decoy_cluster}"));
    wait_until(
        "bob's labelled jobs to leave the queue",
        CONDOR_SLACK,
        || lab.sh_ok(Some("bob"), "login", "condor_q bob -af ClusterId"),
        |q| q.trim().is_empty(),
    );
    let other = if node == "c1" { "c2" } else { "c1" };
    let server_local = session.field("local_addr");
    // The starter's chirp proxy (the keeper's way to update its job's ad)
    // listens on the node's loopback under alice's uid; it is HTCondor's,
    // and answers a stranger with chirp's refusal, `-1`, only.
    let chirp = chirp_proxy(&lab, &node);
    let targets: Vec<String> =
        alices_doors(&lab, &node, &server_local).into_iter().filter(|t| Some(t) != chirp.as_ref()).collect();
    let node_targets: Vec<String> = targets.iter().filter(|t| !t.starts_with('/')).cloned().collect();
    let before = connections(&session.get());
    for (where_from, host) in [("on login", "login"), ("on the other execute point", other)] {
        let report = lab.sh_ok(
            Some("bob"),
            host,
            &format!("python3 {} probe {}", tools(&lab), node_targets.join(" ")),
        );
        assert_nothing_from_the_server(where_from, &report, &node_targets);
    }
    // bob's own job, matched to alice's node, tries everything there, her socket too.
    let out = format!("/home/bob/probe-{}.out", std::process::id());
    let submit = format!(
        "printf '%s\\n' 'universe = vanilla' 'executable = /usr/bin/python3' 'arguments = {} probe {}' \
         'requirements = Machine == \"{node}.lab\"' 'request_memory = 50' 'output = {out}' 'error = {out}.err' \
         'queue' | condor_submit -terse -",
        tools(&lab),
        targets.join(" ")
    );
    let submitted = lab.sh_ok(Some("bob"), "login", &submit);
    let bob_job = submitted.split('.').next().unwrap_or_default().trim().to_owned();
    wait_until(
        &format!("bob's probe job {bob_job} to finish"),
        CONDOR_SLACK,
        || lab.sh_ok(Some("bob"), "login", "condor_q bob -af ClusterId"),
        |q| q.trim().is_empty(),
    );
    let report = lab.sh_ok(Some("bob"), "login", &format!("cat {out}; rm -f {out} {out}.err"));
    assert_nothing_from_the_server("in his own job on alice's node", &report, &targets);
    if let Some(chirp) = &chirp {
        let report = lab.sh_ok(Some("bob"), &node, &format!("python3 {} probe {chirp}", tools(&lab)));
        let fields: Vec<&str> = report.split_whitespace().collect();
        let refused = match fields[..] {
            [_, "ERR", _] | [_, "0"] | [_, "0", _] => true,
            [_, n, hex] => {
                hex.len() <= 16
                    && hex.starts_with("2d310a")
                    && hex.len() == n.parse::<usize>().unwrap_or(0) * 2
            }
            _ => false,
        };
        assert!(refused, "bob got more than chirp's refusal from the starter's proxy: {report}");
    }
    let after = connections(&session.get());
    assert_eq!(after, before + 1, "alice's server saw {} connections it should not have", after - before - 1);
    // Nor can bob reach into her job, or end it.
    let into = lab.sh(Some("bob"), "login", &format!("condor_ssh_to_job {job} true"));
    assert!(!into.status.success(), "bob entered alice's job: {into:?}");
    let removed = lab.sh(Some("bob"), "login", &format!("condor_rm {job}"));
    assert!(!removed.status.success(), "bob removed alice's job: {removed:?}");
    assert_eq!(queue(&lab, "alice"), [(job, 2)]);
    let (_, _client) = session.close();
    assert_nothing_left(&lab, "alice", job, CONDOR_SLACK);
}

/// The loopback listener of the job's starter on `node` (its chirp proxy), if any.
fn chirp_proxy(lab: &Lab, node: &str) -> Option<String> {
    let listeners = lab.sh_ok(None, node, "ss -Hltnp");
    listeners
        .lines()
        .filter(|l| l.contains("\"condor_starter\""))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .find(|addr| addr.starts_with("127.0.0.1:"))
}

/// A server that escapes its session (`setsid`, its own session and group,
/// re-parented away from the job) does not outlive the editor job: the
/// starter ends every process the job started (HTCondor's procd tracks
/// descendants by their inherited environment, not by parentage).
#[test]
#[ignore = "needs the lab's HTCondor pool: labctl up --scheduler htcondor"]
fn an_escaped_server_does_not_outlive_the_job() {
    let lab = Lab::htcondor();
    let marker = format!("{}", 40_000 + std::process::id() % 10_000);
    let template = include_str!("../scripts/legacy.sh").replacen(
        "echo \"@ID@: running\"",
        &format!("echo \"@ID@: running\"\nsetsid nohup sleep {marker} >/dev/null 2>&1 </dev/null &"),
        1,
    );
    let command = "vscode-shim --profile escape -- request_memory=100";
    let options = SessionOptions {
        template: Some(&template),
        remote_command: Some(command),
        mode: "legacy",
        ..SessionOptions::default()
    };
    let session = Session::open(&lab, options);
    let (job, node) = (cluster(&session), session.node());
    let escaped = lab.sh_ok(
        None,
        &node,
        &format!("ps -u alice -o pid=,ppid=,sid=,args= | grep 'sleep {marker}' | grep -v grep"),
    );
    let fields: Vec<&str> = escaped.split_whitespace().collect();
    assert!(fields.len() >= 3, "the escaped process runs: {escaped}");
    assert_eq!(fields[0], fields[2], "it leads a session of its own (setsid): {escaped}");
    let (_, _client) = session.close();
    assert_nothing_left(&lab, "alice", job, CONDOR_SLACK);
}

/// A ProxyCommand host (`vscode-shim setup --proxy`) on the pool: plain ssh
/// and scp reach an sshd of alice's own inside her editor job, whose shell
/// sees the job (its ad, its scratch dir); the last connection ends the job.
#[test]
#[ignore = "needs the lab's HTCondor pool: labctl up --scheduler htcondor"]
fn a_proxy_host_reaches_an_sshd_inside_the_editor_job() {
    let lab = Lab::htcondor();
    let host = ProxyHost::install(&lab, "alice", "alice-condor-job", "proxied");
    let ssh = |user: &str, args: &str| {
        lab.sh(Some(user), "laptop", &format!("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes {args}"))
    };
    let answer = ssh(
        "alice",
        &format!(
            "{} 'echo $(hostname) $BATCH_SYSTEM $(sed -n \"s/^ClusterId = //p\" $_CONDOR_JOB_AD) $(id -un)'",
            host.name
        ),
    );
    let text = String::from_utf8_lossy(&answer.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(answer.status.success() && words.len() == 4, "ssh through the proxy host: {answer:?}");
    assert!(words[0] == "c1" || words[0] == "c2", "answered on an execute point: {text}");
    assert_eq!((words[1], words[3]), ("HTCondor", "alice"), "inside an HTCondor job, as alice: {text}");
    let job: u32 = words[2].parse().unwrap_or_else(|_| panic!("no cluster id in {text}"));
    lab.sh_ok(Some("alice"), "laptop", "echo carried > ~/carried.txt");
    let copied =
        lab.sh(Some("alice"), "laptop", &format!("scp -q -o BatchMode=yes carried.txt {}:", host.name));
    assert!(copied.status.success(), "scp into the job: {copied:?}");
    assert_eq!(lab.sh_ok(Some("alice"), "c1", "cat ~/carried.txt").trim(), "carried");
    lab.sh_ok(Some("alice"), "c1", "rm -f ~/carried.txt");
    lab.sh_ok(Some("alice"), "laptop", "rm -f ~/carried.txt");
    assert_nothing_left(&lab, "alice", job, CONDOR_SLACK);
}

/// A job with a time limit (`allowed_job_duration`) warns each window
/// before it, as on Slurm; when HTCondor then holds the job for running too
/// long, the window says so in one line and the job is gone.
#[test]
#[ignore = "needs the lab's HTCondor pool: labctl up --scheduler htcondor"]
fn a_time_limit_warns_before_and_its_hold_ends_the_session() {
    let lab = Lab::htcondor();
    let command =
        "vscode-shim --profile limited --warn-before 1m -- request_memory=100 allowed_job_duration=90";
    let mut session = open(&lab, "legacy", false, command, &[]);
    let job = cluster(&session);
    let warned = session.client.expect_stderr_line("the time-limit warning", Duration::from_secs(60), |l| {
        l.contains(&format!("job {job} reaches its time limit in about 1 minute"))
    });
    assert!(warned.contains("save your work"), "{warned}");
    session
        .client
        .expect_line("ssh to exit at the limit", Duration::from_secs(90), |l| l.starts_with("ssh-exited"));
    session.client.stderr_to_end(Duration::from_secs(10));
    let held: Vec<&String> =
        session.client.stderr_seen.iter().filter(|l| l.contains("was held by HTCondor")).collect();
    assert_eq!(held.len(), 1, "one line for the hold:\n{}", dump(&session.client));
    drop(session);
    assert_nothing_left(&lab, "alice", job, CONDOR_SLACK);
}

/// `vscode-shim doctor` on an access point checks the pool: client
/// commands, the helper, the schedd, and a tiny job running the helper at
/// the same path on an execute point; a helper only the access point has
/// fails that last check with the fix.
#[test]
#[ignore = "needs the lab's HTCondor pool: labctl up --scheduler htcondor"]
fn doctor_checks_the_pool() {
    let lab = Lab::htcondor();
    let out = lab.sh(Some("alice"), "login", "vscode-shim doctor -- request_memory=50");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "doctor failed on a working pool:\n{text}");
    assert!(text.contains("ok    schedd answers: condor_q answers"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("ok    helper in a job: ran in slot") && l.ends_with(".lab")),
        "{text}"
    );
    // A helper that exists on this access point only (its /tmp is its own).
    let out = lab.sh(
        Some("alice"),
        "login",
        "cp /usr/local/bin/vscode-job-helper /tmp/helper-here-only && \
         vscode-shim doctor --helper /tmp/helper-here-only -- request_memory=50; echo exit=$?; rm -f /tmp/helper-here-only",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("exit=1"), "{text}");
    assert!(text.contains("FAIL  helper in a job: the test job"), "{text}");
    assert!(
        text.contains("fix: install vscode-job-helper at /tmp/helper-here-only on every execute point"),
        "{text}"
    );
    assert!(queue(&lab, "alice").is_empty(), "doctor left a job behind");
}
