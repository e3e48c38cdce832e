//! Nothing lost, nothing left: each fault is injected into a live session,
//! and the test checks (a) the line the user gets in VS Code's log, (b) that
//! the shim is gone in time, with a non-zero status where it can report one,
//! and (c) that nothing of the session is left on any host.

use std::time::{Duration, Instant};
use vscode_slurm_tests::session::{
    assert_nothing_left, cancel_batch_job, dump, start_client, Session, SessionOptions,
};
use vscode_slurm_tests::{wait_until, Lab, LineProcess};

/// How long after the fault the shim must be gone.
const SHIM_EXIT: Duration = Duration::from_secs(10);
/// How long after the shim is gone the last traces may take to disappear.
const LEFTOVERS: Duration = Duration::from_secs(15);

/// Opens a session whose shim also logs (info level) to a file on the login
/// node, for faults where no client is left to show its stderr.
fn open(lab: &Lab, name: &str, salloc_args: &str) -> Session {
    let remote_command = format!("vscode-shim --log-file /tmp/fault-{name}-%p.log -- {salloc_args}");
    Session::open(lab, SessionOptions { remote_command: Some(&remote_command), ..Default::default() })
}

/// A client whose ssh runs `remote_command`, for faults that strike
/// before a session is open.
fn client_running(lab: &Lab, remote_command: &str) -> LineProcess {
    start_client(lab, &SessionOptions { remote_command: Some(remote_command), ..Default::default() })
}

fn shim_log(lab: &Lab, name: &str) -> String {
    lab.sh_ok(None, "login", &format!("cat /tmp/fault-{name}-*.log 2>/dev/null || true"))
}

/// The `vscode-shim:` lines the client saw on ssh's stderr.
fn shim_lines(client: &mut LineProcess) -> Vec<String> {
    client.drain_stderr();
    client.stderr_seen.iter().filter(|l| l.starts_with("vscode-shim:")).cloned().collect()
}

/// Waits for ssh to end with the shim's exit status; returns it.
fn ssh_exit(client: &mut LineProcess, within: Duration) -> i32 {
    let line = client.expect_line("`ssh-exited`", within, |l| l.starts_with("ssh-exited"));
    line.trim_start_matches("ssh-exited ").parse().unwrap_or_else(|_| panic!("bad line {line}"))
}

/// Injects a fault and checks the shim, which VS Code's ssh waits on, exits
/// non-zero within [`SHIM_EXIT`] of it.
fn fault_ends_the_shim(client: &mut LineProcess, inject: impl FnOnce(&mut LineProcess)) {
    let started = Instant::now();
    inject(client);
    let code = ssh_exit(client, SHIM_EXIT);
    assert!(started.elapsed() <= SHIM_EXIT && code != 0, "exit {code} after {:?}", started.elapsed());
}

/// Injects a fault into `session` and checks all a fault must end with: the
/// shim gone in time (see [`fault_ends_the_shim`]), one line that explains
/// the end, naming the job and every word of `words`, and nothing left.
fn fault_ends_the_session(
    lab: &Lab,
    mut session: Session,
    words: &[&str],
    inject: impl FnOnce(&mut LineProcess),
) {
    let job = session.job_id();
    fault_ends_the_shim(&mut session.client, inject);
    let job_named = format!("job {job}");
    assert_one_line(&mut session.client, &[&[job_named.as_str()], words].concat());
    assert_nothing_left(lab, "alice", job, LEFTOVERS);
}

/// The one line that explains the end, containing every word of `words`.
/// Called once ssh has exited: the client exits right after, and its
/// stderr is read to its end so that the shim's last line is not missed.
fn assert_one_line(client: &mut LineProcess, words: &[&str]) -> String {
    client.stderr_to_end(Duration::from_secs(10));
    // A time-limit warning may come first (these jobs are short enough for
    // the keeper's default 10m warning); it is a notice, not the end.
    let lines: Vec<String> =
        shim_lines(client).into_iter().filter(|l| !l.contains("reaches its time limit in")).collect();
    assert_eq!(lines.len(), 1, "want exactly one vscode-shim line, got {lines:?}\n{}", dump(client));
    for word in words {
        assert!(lines[0].contains(word), "the line does not say {word:?}: {}", lines[0]);
    }
    lines[0].clone()
}

/// Ends VS Code's ssh on the laptop with `signal` and waits, at most
/// [`SHIM_EXIT`], until `listing` on the login node lists nothing: what the
/// end must take with it.
fn end_ssh_until_gone(lab: &Lab, signal: &str, what: &str, listing: &str) {
    lab.sh_ok(None, "laptop", &format!("pkill -{signal} -u alice -x ssh"));
    wait_until(what, SHIM_EXIT, || lab.sh_ok(None, "login", listing), |listed| listed.trim().is_empty());
}

fn pid_of(lab: &Lab, host: &str, pattern: &str) -> String {
    let pids = wait_until(
        &format!("a process matching {pattern} on {host}"),
        Duration::from_secs(10),
        || lab.sh_ok(None, host, &format!("pgrep -u alice -f '{pattern}' || true")),
        |pids| pids.lines().count() == 1,
    );
    pids.trim().to_owned()
}

#[test]
fn scancel_mid_session() {
    let lab = Lab::get();
    let session = open(&lab, "scancel", "--time=10");
    let scancel = format!("scancel {}", session.job_id());
    fault_ends_the_session(&lab, session, &["CANCELLED", "reconnect"], |_| {
        lab.sh_ok(Some("alice"), "login", &scancel);
    });
}

#[test]
fn job_reaches_its_time_limit() {
    let lab = Lab::get();
    let mut session = open(&lab, "timeout", "--time=1");
    let job = session.job_id();
    // Slurm enforces limits on its own schedule (every 30 s, then KillWait).
    let code = ssh_exit(&mut session.client, Duration::from_secs(150));
    assert_ne!(code, 0);
    assert_one_line(&mut session.client, &[&format!("job {job}"), "TIMEOUT", "time limit", "--time"]);
    assert_nothing_left(&lab, "alice", job, LEFTOVERS);
}

#[test]
fn shim_killed() {
    let lab = Lab::get();
    let session = open(&lab, "kill-shim", "--time=10");
    let job = session.job_id();
    let shim = pid_of(&lab, "login", "^vscode-shim");
    lab.sh_ok(None, "login", &format!("kill -KILL {shim}"));
    // Nobody is left to explain; the job must still end (the helper sees EOF).
    assert_nothing_left(&lab, "alice", job, LEFTOVERS);
    drop(session);
}

#[test]
fn srun_killed() {
    let lab = Lab::get();
    let session = open(&lab, "kill-srun", "--time=10");
    // srun runs as two processes; the first is the one the shim started.
    let srun = lab.sh_ok(None, "login", "pgrep -o -u alice -f '^srun --jobid'").trim().to_owned();
    assert!(!srun.is_empty(), "no srun of the window on login");
    // The window's step goes with its srun; with no other window the job ends.
    fault_ends_the_session(&lab, session, &["srun", "killed", "reconnect"], |_| {
        lab.sh_ok(None, "login", &format!("kill -KILL {srun}"));
    });
}

#[test]
fn salloc_killed_without_a_profile() {
    let lab = Lab::get();
    let remote_command = "vscode-shim --no-profile --log-file /tmp/fault-kill-salloc-%p.log -- --time=10";
    let session =
        Session::open(&lab, SessionOptions { remote_command: Some(remote_command), ..Default::default() });
    let salloc = pid_of(&lab, "login", "^salloc --vscode");
    fault_ends_the_session(&lab, session, &["salloc", "killed", "cancelled", "reconnect"], |_| {
        lab.sh_ok(None, "login", &format!("kill -KILL {salloc}"));
    });
}

#[test]
fn helper_killed() {
    let lab = Lab::get();
    let session = open(&lab, "kill-helper", "--time=10");
    let node = session.node();
    let helper = pid_of(&lab, &node, "^/usr/local/bin/vscode-job-helper");
    // The script's processes outlive the helper; the epilog ends them.
    fault_ends_the_session(&lab, session, &["ended", "reconnect"], |_| {
        lab.sh_ok(None, &node, &format!("kill -KILL {helper}"));
    });
}

#[test]
fn node_fails() {
    let lab = Lab::get();
    let mut session = open(&lab, "node-fail", "--time=10");
    let job = session.job_id();
    let node = session.node();
    lab.sh_ok(None, &node, "pkill -KILL -x slurmd");
    let failed = std::time::Instant::now();
    let _revive = Revive { lab: &lab, node: &node };
    // The controller declares the node dead after SlurmdTimeout (20 s in the
    // lab); the window asks the controller about its job once a minute.
    let code = ssh_exit(&mut session.client, Duration::from_secs(120));
    assert_ne!(code, 0);
    println!("node failure: the session ended {:.1} s after slurmd died", failed.elapsed().as_secs_f64());
    assert_one_line(&mut session.client, &[&format!("job {job}"), "NODE_FAIL", "reconnect"]);
    // The node comes back; Slurm tells it to end the dead job, and the epilog runs.
    drop(_revive);
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(60));
    wait_until(
        &format!("{node} to be back in service"),
        Duration::from_secs(60),
        || lab.sh_ok(None, "login", &format!("sinfo -h -n {node} -o %t")),
        |state| state.trim() == "idle",
    );
}

/// Restarts a node's slurmd however the test ends, so later tests have it.
struct Revive<'a> {
    lab: &'a Lab,
    node: &'a str,
}

impl Drop for Revive<'_> {
    fn drop(&mut self) {
        self.lab.sh(None, self.node, "pgrep -x slurmd >/dev/null || slurmd");
    }
}

#[test]
fn laptop_ssh_client_killed() {
    let lab = Lab::get();
    let session = open(&lab, "drop", "--time=10");
    let job = session.job_id();
    // The shim reads end of input (and sshd hangs up): it must be gone in time...
    end_ssh_until_gone(
        &lab,
        "KILL",
        "the shim to exit after the network drop",
        "pgrep -u alice -x vscode-shim || true",
    );
    assert_nothing_left(&lab, "alice", job, LEFTOVERS);
    // ...and say why in its log, the only place anyone can read it now.
    let log = shim_log(&lab, "drop");
    assert!(log.contains("the client closed the session") || log.contains("hung up"), "shim log: {log}");
    drop(session);
}

#[test]
fn launch_script_fails_before_listening() {
    let lab = Lab::get();
    let script = "echo 'f00d: running'\necho 'the server could not start' >&2\n\
                  echo 'f00d: start'\necho 'exitCode==44=='\necho 'f00d: end'\nexit 44\n";
    let file = write_template(&lab, "fails", script);
    // Plain ssh with stdin held open, as VS Code holds it after the script
    // (by a sleep that does not hold our stderr too: its end is awaited).
    let mut client = lab.spawn(
        Some("alice"),
        "laptop",
        &[
            "bash",
            "-c",
            &format!(
                "ssh -F .ssh/vscode-slurm.config cluster-vscode < <(cat {file}; sleep 60 2>/dev/null); echo \"ssh-exited $?\""
            ),
        ],
    );
    let code = ssh_exit(&mut client, Duration::from_secs(60));
    assert_ne!(code, 0);
    let line = assert_one_line(&mut client, &["ended", "reconnect"]);
    let job: u32 = line
        .split_whitespace()
        .skip_while(|w| *w != "job")
        .nth(1)
        .and_then(|id| id.trim_end_matches(':').parse().ok())
        .unwrap_or_else(|| panic!("no job id in {line}"));
    assert!(client.stdout_seen.iter().any(|l| l == "exitCode==44=="), "{}", dump(&client));
    assert_nothing_left(&lab, "alice", job, LEFTOVERS);
}

fn write_template(lab: &Lab, name: &str, text: &str) -> String {
    let file = format!("template-{name}.sh");
    std::fs::write(lab.dir.join("laptop-home/alice").join(&file), text).expect("write template");
    file
}

#[test]
fn user_gives_up_while_the_job_is_pending() {
    let lab = Lab::get();
    // Takes both nodes.
    let blocker = lab.running_batch_job("bob", "-N2 --exclusive --wrap 'sleep 600'", Duration::from_secs(20));
    let mut client = client_running(
        &lab,
        "vscode-shim --poll-interval 1 --log-file /tmp/fault-pending-%p.log -- --time=10",
    );
    // The user sees why it waits, in VS Code's log.
    wait_until(
        "a pending progress line",
        Duration::from_secs(20),
        || shim_lines(&mut client),
        |lines| lines.iter().any(|l| l.contains("is pending") && l.contains("Resources")),
    );
    let job: u32 =
        lab.sh_ok(None, "login", "squeue -h -u alice -o %i").trim().parse().expect("alice's job id");
    // Closing VS Code: ssh ends cleanly.
    end_ssh_until_gone(&lab, "TERM", "the pending job to be cancelled", "squeue -h -u alice -o %i");
    let log = shim_log(&lab, "pending");
    assert!(log.contains(&format!("job {job} was still pending and was cancelled")), "shim log: {log}");
    assert_nothing_left(&lab, "alice", job, LEFTOVERS);
    cancel_batch_job(&lab, "bob", blocker, LEFTOVERS);
}

#[test]
fn invalid_salloc_argument() {
    let lab = Lab::get();
    let mut client = client_running(&lab, "vscode-shim -- --partition=nope");
    let code = ssh_exit(&mut client, SHIM_EXIT);
    assert_eq!(code, 1);
    assert_one_line(&mut client, &["sbatch could not submit the job", "partition", "RemoteCommand"]);
    assert_nothing_left(&lab, "alice", 0, LEFTOVERS);
}

#[test]
fn server_dies_while_vscode_keeps_connecting() {
    let lab = Lab::get();
    let session = open(&lab, "server-died", "--time=10");
    lab.sh_ok(None, &session.node(), &format!("kill -KILL {}", session.field("pid")));
    fault_ends_the_session(&lab, session, &["server", "refused", "reconnect"], |client| {
        client.send("get");
    });
}

#[test]
fn epilog_ends_only_the_jobs_own_processes() {
    let lab = Lab::get();
    let session = open(&lab, "epilog-safety", "--time=10");
    let job = session.job_id();
    let node = session.node();
    // bob forges alice's job id; root runs something with it too.
    let spawn = format!("SLURM_JOB_ID={job} setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!");
    let bobs = lab.sh_ok(Some("bob"), &node, &spawn).trim().to_owned();
    let roots = lab.sh_ok(None, &node, &spawn).trim().to_owned();
    let (_, _client) = session.close();
    assert_nothing_left(&lab, "alice", job, LEFTOVERS);
    wait_until(
        &format!("the epilog of job {job} on {node}"),
        LEFTOVERS,
        || lab.read(&format!("log/slurmd-{node}.log")),
        |log| log.contains(&format!("vscode: job {job}: removed")),
    );
    for (who, pid) in [("bob", &bobs), ("root", &roots)] {
        let alive = lab.sh(None, &node, &format!("kill -0 {pid}"));
        assert!(alive.status.success(), "the epilog of alice's job {job} ended {who}'s process {pid}");
        lab.sh_ok(None, &node, &format!("kill -KILL {pid}"));
    }
}
