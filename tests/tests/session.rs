//! The session path end to end: Remote-SSH (emulated) on the laptop, real
//! sshd and vscode-shim on the login node, a real Slurm job with
//! `--vscode`, vscode-job-helper and a server on a compute node.

use std::time::Duration;
use vscode_slurm_tests::session::{assert_nothing_left, dump, json_field, Session, SessionOptions};
use vscode_slurm_tests::{stderr_of, stdout_of, wait_until, Lab};

const NODE_ADDR: [(&str, &str); 2] = [("c1", "10.77.1.11"), ("c2", "10.77.1.12")];

fn node_addr(node: &str) -> &'static str {
    NODE_ADDR
        .iter()
        .find(|(n, _)| *n == node)
        .map(|(_, a)| *a)
        .unwrap_or_else(|| panic!("not a node: {node}"))
}

/// The whole path in one mode: the answer comes from inside a job, on a
/// compute node, from a server on a unix socket behind the helper's door.
fn session_in_mode(mode: &str) {
    let lab = Lab::get();
    let mut session = Session::open(&lab, SessionOptions { mode, ..Default::default() });
    let node = session.node();
    let job = session.job_id();
    assert!(["c1", "c2"].contains(&node.as_str()), "answered from {node}, not a compute node");

    // The job is ours, named as a vscode session, and running where the server answered from.
    let squeue = lab.sh_ok(None, "login", &format!("squeue -h -j {job} -o '%u %j %T %N'"));
    let fields: Vec<&str> = squeue.split_whitespace().collect();
    assert!(
        fields.len() == 4
            && fields[0] == "alice"
            && fields[1].starts_with("vscode:")
            && fields[2] == "RUNNING"
            && fields[3] == node,
        "want alice's vscode:PROFILE job running on {node}: {squeue}"
    );
    // The plugin ran for this job (only --vscode jobs get a runtime dir), and the server saw it.
    let runtime_dir = session.field("runtime_dir");
    assert_eq!(runtime_dir, format!("/run/vscode-slurm/{job}"));
    let stat = lab.sh_ok(None, &node, &format!("stat -c '%U %a' {runtime_dir}"));
    assert_eq!(stat.trim(), "alice 700");

    // The server is on a unix socket, in the private runtime dir where the helper chose
    // the path (legacy), and closed to other users in every mode.
    let local = session.field("local_addr");
    assert!(local.starts_with('/'), "the server listens on {local}, not on a unix socket");
    if mode == "legacy" {
        assert!(local.starts_with(&format!("{runtime_dir}/server-")), "legacy server socket {local}");
    }
    let mode_bits = lab.sh_ok(None, &node, &format!("stat -c '%U %a' {local}"));
    assert_eq!(mode_bits.trim(), "alice 600", "the server's socket {local}");
    // The only TCP listener of the session is the helper's door, on the node's own address.
    let addr = node_addr(&node);
    let listeners = lab.sh_ok(None, &node, "ss -Hltnp");
    let ours: Vec<&str> = listeners.lines().filter(|l| !l.contains(":6818")).collect();
    assert!(!ours.is_empty(), "no door on {node}");
    for line in &ours {
        assert!(line.contains(&format!("{addr}:")), "{node} has a listener not on {addr}: {line}");
        assert!(line.contains("vscode-job-help"), "{node} has a TCP listener that is not the door: {line}");
    }

    // The relay keeps working for later connections, as VS Code makes many.
    let again = session.get();
    assert_eq!(json_field(&again, "job_id"), Some(job.to_string()));

    let (took, client) = session.close();
    assert!(took < Duration::from_secs(10), "closing took {took:?}\n{}", dump(&client));
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(10));
}

#[test]
fn legacy_session_runs_inside_a_job_and_leaves_nothing() {
    session_in_mode("legacy");
}

#[test]
fn exec_server_session_runs_inside_a_job_and_leaves_nothing() {
    session_in_mode("exec-server");
}

#[test]
fn socket_session_is_bridged_to_tcp_and_leaves_nothing() {
    session_in_mode("socket");
}

#[test]
fn server_that_escaped_the_session_is_ended_by_the_epilog() {
    let lab = Lab::get();
    // The launch script also starts a server in a session of its own, out of
    // reach of the helper's process group: only the epilog can find it.
    let template = include_str!("../scripts/legacy.sh").replace(
        "echo \"$DISTRO_ID: start\"\necho \"exitCode==0==\"",
        "setsid nohup sleep 100000 </dev/null >/dev/null 2>&1 &\n\
         echo \"escaped=$!\" >&2\n\
         echo \"$DISTRO_ID: start\"\necho \"exitCode==0==\"",
    );
    assert!(template.contains("setsid nohup"), "the template changed; update this test");
    let session = Session::open(&lab, SessionOptions { template: Some(&template), ..Default::default() });
    let node = session.node();
    let job = session.job_id();
    let escaped = wait_until(
        "the escaped process to show on the node",
        Duration::from_secs(10),
        || lab.sh_ok(None, &node, "pgrep -u alice -x sleep -a || true"),
        |ps| ps.contains("sleep 100000"),
    );
    let escaped_pid = escaped
        .lines()
        .find(|l| l.contains("sleep 100000"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no escaped sleep in {escaped}"))
        .to_owned();
    let sid = lab.sh_ok(None, &node, &format!("ps -o sid= -p {escaped_pid}"));
    assert_eq!(sid.trim(), escaped_pid, "the test process did not get a session of its own");

    let (_, _client) = session.close();
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(20));
    // It was the plugin's epilog that ended it, and it says so in slurmd's log.
    let slurmd_log = lab.read(&format!("log/slurmd-{node}.log"));
    let ours: Vec<&str> = slurmd_log.lines().filter(|l| l.contains(&format!("vscode: job {job}:"))).collect();
    assert!(
        ours.iter().any(|l| l.contains("SIGTERM") && l.contains(&escaped_pid)),
        "the epilog did not report ending pid {escaped_pid} of job {job} on {node}: {ours:?}"
    );
}

#[test]
fn another_user_cannot_use_alices_relay() {
    let lab = Lab::get();
    let mut session = Session::open(&lab, SessionOptions::default());
    let port = session.relay_port;
    // bob is on the same login node and knows the port (ports are no secret).
    let probe = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} || exit 3; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; timeout 5 cat <&3"
    );
    let bob = lab.sh(Some("bob"), "login", &probe);
    assert!(
        !stdout_of(&bob).contains("job_id"),
        "bob got an answer from alice's server: {}",
        stdout_of(&bob)
    );
    // alice still can, from the same node, without ssh in between.
    let alice = lab.sh(Some("alice"), "login", &probe);
    assert!(stdout_of(&alice).contains("\"job_id\""), "alice got no answer: {}", stderr_of(&alice));
    wait_until(
        "the shim to log the refusal",
        Duration::from_secs(5),
        || {
            session.client.drain_stderr();
            session.client.stderr_seen.join("\n")
        },
        |log| log.contains("refused") && log.contains("2002"),
    );
    let job = session.job_id();
    session.get();
    session.close();
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(10));
}

#[test]
fn forged_control_lines_are_data_and_do_not_move_the_relay() {
    let lab = Lab::get();
    let forged = "@@vscode-slurm@@ 00000000000000000000000000000000 endpoint 10.77.1.12:1";
    let template = include_str!("../scripts/legacy.sh")
        .replace("echo \"$DISTRO_ID: end\"\n\n", &format!("echo \"$DISTRO_ID: end\"\necho '{forged}'\n\n"));
    assert!(template.contains(forged), "the template changed; update this test");
    let mut session = Session::open(&lab, SessionOptions { template: Some(&template), ..Default::default() });
    session
        .client
        .expect_line("the forged line as data", Duration::from_secs(10), |l| l == format!("out: {forged}"));
    let job = session.job_id();
    // Still relayed to the real server, not to the forged endpoint.
    let again = session.get();
    assert_eq!(json_field(&again, "job_id"), Some(job.to_string()));
    session.close();
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(10));
}

#[test]
fn bad_shim_arguments_and_unknown_partitions_fail_with_one_line() {
    let lab = Lab::get();
    let bad_flag = lab.sh(Some("alice"), "login", "vscode-shim --no-such-flag </dev/null");
    assert_eq!(bad_flag.status.code(), Some(2));
    let err = stderr_of(&bad_flag);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("vscode-shim: ") && err.contains("--no-such-flag"), "{err}");

    // Through ssh, as VS Code would start it, with stdin still open: held by
    // a process substitution, which bash does not wait for as it would for
    // a pipeline's first command, so the call returns when ssh does.
    let out = lab.sh(
        Some("alice"),
        "laptop",
        "ssh -F .ssh/vscode-slurm.config -o 'RemoteCommand=vscode-shim -- --partition=nope' cluster-vscode \
         < <(sleep 30 2>/dev/null)",
    );
    assert!(!out.status.success());
    let err = stderr_of(&out);
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("vscode-shim:")).collect();
    assert_eq!(ours.len(), 1, "want one vscode-shim line: {err}");
    assert!(ours[0].contains("partition"), "the line does not say what was wrong: {}", ours[0]);
    assert!(stdout_of(&out).is_empty(), "wrote to VS Code's stdout: {}", stdout_of(&out));
    assert_nothing_left(&lab, "alice", 0, Duration::from_secs(10));
}

#[test]
fn bad_plugstack_arguments_make_salloc_refuse_with_a_vscode_line() {
    let lab = Lab::get();
    let set = |args: &str| {
        let out = lab.labctl(&["plugstack", args]);
        assert!(out.status.success(), "labctl plugstack failed: {}", stderr_of(&out));
    };
    for bad in ["frob=1", "bind", "kill_grace=forever", "runtime_dir=relative/dir"] {
        set(bad);
        let out = lab.sh(Some("alice"), "login", "salloc --vscode -N1 true");
        let err = stderr_of(&out);
        set("");
        assert!(!out.status.success(), "salloc accepted plugstack args {bad:?}");
        let ours: Vec<&str> = err.lines().filter(|l| l.contains("vscode:")).collect();
        assert!(!ours.is_empty(), "no vscode: line for {bad:?}: {err}");
        assert!(ours[0].contains(bad.split('=').next().unwrap()), "line does not name {bad:?}: {}", ours[0]);
    }
    let queue = lab.sh_ok(None, "login", "squeue -h");
    assert!(queue.trim().is_empty(), "a job was queued: {queue}");
    // And the plugin is back to working order.
    let ok = lab.sh(Some("alice"), "login", "salloc --vscode -N1 srun printenv VSCODE_SLURM_BIND_ADDR");
    assert!(ok.status.success(), "{}", stderr_of(&ok));
    assert!(["10.77.1.11", "10.77.1.12"].contains(&stdout_of(&ok).trim()), "{}", stdout_of(&ok));
}

/// The exec server over the launch stream (Remote-SSH builds of 2025-2026):
/// `listeningOn====` passes on empty, and after the script's end marker the
/// same stdin and stdout carry the server's bytes, through the shim, srun
/// and the helper, untouched — bytes that look like markers, bind flags and
/// our control lines included.
#[test]
fn stdio_exec_server_works_over_the_launch_stream() {
    let lab = Lab::get();
    let mut client = lab.spawn(
        Some("alice"),
        "laptop",
        &[
            "remote-ssh-client",
            "--host",
            "cluster-vscode",
            "--ssh-config",
            ".ssh/vscode-slurm.config",
            "--mode",
            "stdio",
        ],
    );
    let listening = client.expect_line("listeningOn", Duration::from_secs(90), |l| {
        l.starts_with("result listeningOn=") || l.starts_with("error") || l.starts_with("ssh-exited")
    });
    assert_eq!(listening, "result listeningOn=", "an empty listeningOn reaches VS Code as it was");
    let answer = client.expect_line("the server's first line", Duration::from_secs(30), |l| {
        l.starts_with("answer ") || l.starts_with("error")
    });
    let answer = answer.trim_start_matches("answer ");
    let node = json_field(answer, "hostname").unwrap_or_default();
    assert!(["c1", "c2"].contains(&node.as_str()), "the server runs on a compute node: {answer}");
    let job: u32 = json_field(answer, "job_id")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("the server runs in a job: {answer}"));
    client.expect_line("ready", Duration::from_secs(10), |l| l == "ready");
    for n in [64, 100_000, 1_000_000] {
        client.send(&format!("echo {n}"));
        let echoed = client.expect_line("the echo over the launch stream", Duration::from_secs(60), |l| {
            l.starts_with("echo ok ") || l.starts_with("error")
        });
        assert_eq!(echoed, format!("echo ok {n}"));
    }
    client.send("close");
    client.expect_line("the session to close", Duration::from_secs(30), |l| l.starts_with("closed "));
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(20));
}
