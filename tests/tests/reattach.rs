//! Sessions that survive: a profile's job is joined again after a drop,
//! from either login node, by several windows at once, and ends by itself
//! once no window has been attached for its linger time; warnings come
//! before the time limit.

use std::time::{Duration, Instant};

use vscode_slurm_tests::session::{
    assert_nothing_left, cancel_batch_job, dump, json_field, Session, SessionOptions,
};
use vscode_slurm_tests::{wait_until, Lab};

const REUSE: &str = include_str!("../scripts/reuse.sh");
/// Bounds on Slurm's own pace (job end, epilog), beyond the linger itself.
const SLURM_SLACK: Duration = Duration::from_secs(60);

fn open(lab: &Lab, user: &str, remote_command: &str, ssh_options: &[&str]) -> Session {
    Session::open(
        lab,
        SessionOptions {
            user,
            template: Some(REUSE),
            remote_command: Some(remote_command),
            ssh_options,
            ..SessionOptions::default()
        },
    )
}

/// The server as the answer describes it: its pid and start time.
fn server_identity(session: &Session) -> (String, String) {
    (session.field("pid"), session.field("start_time"))
}

/// A network drop: the laptop's ssh dies; the shim must leave, the job stay.
fn drop_connection(lab: &Lab, session: Session, user: &str) {
    lab.sh_ok(None, "laptop", &format!("pkill -KILL -u {user} -x ssh"));
    for login in ["login", "login2"] {
        wait_until(
            &format!("the shim on {login} to exit after the drop"),
            Duration::from_secs(20),
            || lab.sh_ok(None, login, &format!("pgrep -u {user} -x vscode-shim || true")),
            |pids| pids.trim().is_empty(),
        );
    }
    drop(session);
}

fn queue(lab: &Lab, user: &str) -> String {
    lab.sh_ok(None, "login", &format!("squeue -h -u {user} -o '%i %j %T'"))
}

#[test]
fn a_dropped_window_reattaches_to_the_same_server_from_either_login_node_then_the_job_lingers_out() {
    let lab = Lab::get();
    let command = "vscode-shim --profile reattach --linger 30s -- --time=10";
    let first = open(&lab, "alice", command, &[]);
    let (job, node, server) = (first.job_id(), first.node(), server_identity(&first));
    drop_connection(&lab, first, "alice");
    assert!(
        queue(&lab, "alice").contains(&format!("{job} vscode:reattach RUNNING")),
        "{}",
        queue(&lab, "alice")
    );

    let second = open(&lab, "alice", command, &[]);
    assert_eq!((second.job_id(), second.node()), (job, node.clone()), "the same job on the same node");
    assert_eq!(server_identity(&second), server, "the same server process (pid, start time)");
    assert!(second.client.stderr_seen.iter().any(|l| l.contains(&format!("joining job {job}"))));
    drop_connection(&lab, second, "alice");

    let mut third = open(&lab, "alice", command, &["HostName=login2"]);
    assert_eq!(third.job_id(), job, "reattached through login2");
    assert_eq!(server_identity(&third), server);
    let answer = third.get();
    assert_eq!(json_field(&answer, "job_id"), Some(job.to_string()), "{answer}");
    // The server sees only the door (over its unix socket); the relay is the shim on login2.
    let shims = lab.sh_ok(None, "login2", "ps -u alice -o comm=");
    assert!(shims.lines().any(|l| l.trim() == "vscode-shim"), "the relay runs on login2: {shims}");

    let (_, client) = third.close();
    let closed = Instant::now();
    // Within the grace the job waits for a window...
    let shown = lab.sh_ok(Some("alice"), "login2", "vscode-shim sessions");
    assert!(
        shown.lines().any(|l| l.starts_with("reattach") && l.contains(&job.to_string()) && l.contains(" 0 ")),
        "sessions shows the lingering job with no window:\n{shown}\n{}",
        dump(&client)
    );
    // ...then ends by itself, leaving nothing anywhere.
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(30) + SLURM_SLACK);
    assert!(
        closed.elapsed() >= Duration::from_secs(25),
        "the job ended before its grace: {:?}",
        closed.elapsed()
    );
}

#[test]
fn two_windows_share_one_job_and_closing_one_keeps_the_other() {
    let lab = Lab::get();
    let command = "vscode-shim --profile pair -- --time=10";
    // Opened at the same moment: both find no job and submit one; the
    // younger job is withdrawn and both windows share the older.
    let (first, mut second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| open(&lab, "alice", command, &[]));
        let second = scope.spawn(|| open(&lab, "alice", command, &["HostName=login2"]));
        (first.join().expect("first window"), second.join().expect("second window"))
    });
    let job = first.job_id();
    assert_eq!(second.job_id(), job, "one job for both windows");
    assert_eq!(server_identity(&second), server_identity(&first));
    assert_eq!(queue(&lab, "alice").lines().count(), 1, "{}", queue(&lab, "alice"));
    first.close();
    let again = second.get();
    assert_eq!(json_field(&again, "job_id"), Some(job.to_string()), "{again}");
    second.close();
    // No linger (the site's default 0): the last window's end ends the job.
    assert_nothing_left(&lab, "alice", job, SLURM_SLACK);
}

#[test]
fn another_users_job_of_the_same_profile_is_never_joined() {
    let lab = Lab::get();
    let bobs = lab.running_batch_job(
        "bob",
        "--job-name=vscode:shared --time=5 --wrap 'sleep 300'",
        Duration::from_secs(30),
    );
    let alices = open(&lab, "alice", "vscode-shim --profile shared -- --time=10", &[]);
    assert_ne!(alices.job_id(), bobs, "alice must get a job of her own");
    assert_eq!(alices.field("user"), "alice");
    let job = alices.job_id();
    alices.close();
    assert_nothing_left(&lab, "alice", job, SLURM_SLACK);
    cancel_batch_job(&lab, "bob", bobs, SLURM_SLACK);
}

#[test]
fn linger_is_capped_at_the_site_maximum_and_bad_durations_are_refused() {
    let lab = Lab::get();
    let bad = lab.sh(Some("alice"), "login", "vscode-shim --linger 10 -- --time=5 </dev/null");
    let stderr = String::from_utf8_lossy(&bad.stderr).to_string();
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("--linger") && stderr.contains("'10' has no unit"), "{stderr}");
    assert!(queue(&lab, "alice").trim().is_empty(), "a refused start submits nothing");

    // The lab keeps the plugin's default maximum, 30 minutes.
    let session = open(&lab, "alice", "vscode-shim --profile capped --linger 2h -- --time=10", &[]);
    let job = session.job_id();
    let capped = session.client.stderr_seen.iter().find(|l| l.contains("capped")).cloned();
    let capped = capped.unwrap_or_else(|| panic!("no line about the cap\n{}", dump(&session.client)));
    assert!(capped.contains("30m"), "{capped}");
    session.close();
    // The job lingers (up to 30 minutes): the user ends it with `stop`.
    let stopped = lab.sh_ok(Some("alice"), "login", "vscode-shim stop capped");
    assert!(stopped.contains(&format!("stopped job {job}")), "{stopped}");
    assert_nothing_left(&lab, "alice", job, SLURM_SLACK);
}

/// A process in the job with a pseudo-terminal on its stdin and stdout, as
/// a VS Code terminal is; it prints what arrives on the terminal.
const PTY_HOLDER: &str = r#"
import os, sys, select
out = os.dup(1)
master, slave = os.openpty()
os.dup2(slave, 0); os.dup2(slave, 1)
os.write(out, b"ready " + os.ttyname(slave).encode() + b"\n")
buf = b""
while True:
    r, _, _ = select.select([master], [], [], 400)
    if not r:
        break
    buf += os.read(master, 4096)
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        if line.strip():
            os.write(out, b"tty: " + line.strip() + b"\n")
"#;

#[test]
fn warnings_reach_the_jobs_terminals_and_the_shim_before_the_time_limit() {
    let lab = Lab::get();
    let mut session = open(&lab, "alice", "vscode-shim --profile warn --warn-before 2m,1m -- --time=3", &[]);
    let job = session.job_id();
    let script = lab.dir.join("home/alice/pty-holder.py");
    std::fs::write(&script, PTY_HOLDER).expect("write the pty holder");
    let mut holder = lab.spawn(
        Some("alice"),
        "login",
        &["srun", &format!("--jobid={job}"), "--overlap", "python3", "-u", "/home/alice/pty-holder.py"],
    );
    let ready =
        holder.expect_line("the pty holder to start", Duration::from_secs(30), |l| l.starts_with("ready"));
    assert!(ready.contains("/dev/pts/"), "{ready}");
    let time_left = || {
        let text = lab.sh_ok(None, "login", &format!("squeue -h -j {job} -o %L"));
        let parts: Vec<u64> = text.trim().split(':').filter_map(|p| p.parse().ok()).collect();
        parts.iter().fold(0, |acc, p| acc * 60 + p)
    };
    for (minutes, wanted) in [(2, 120), (1, 60)] {
        let banner =
            holder.expect_line(&format!("the {minutes}-minute banner"), Duration::from_secs(150), |l| {
                l.starts_with("tty: ")
            });
        let left = time_left();
        assert!(left.abs_diff(wanted) <= 10, "banner with {left}s left, wanted {wanted}s ± 10: {banner}");
        assert!(banner.contains(&format!("job {job} reaches its time limit")), "{banner}");
        let notice = session.client.expect_stderr_line(
            &format!("the shim's {minutes}-minute warning"),
            Duration::from_secs(15),
            |l| l.starts_with("vscode-shim:") && l.contains("reaches its time limit"),
        );
        assert!(notice.contains(&format!("about {minutes} minute")), "{notice}");
    }
    // At the limit the shim's last line says so.
    let last = session.client.expect_stderr_line("the time-limit line", Duration::from_secs(120), |l| {
        l.starts_with("vscode-shim:") && l.contains("ended")
    });
    assert!(last.contains("TIMEOUT") && last.contains("time limit"), "{last}");
    drop(holder);
    assert_nothing_left(&lab, "alice", job, SLURM_SLACK);
    let _ = std::fs::remove_file(script);
}
