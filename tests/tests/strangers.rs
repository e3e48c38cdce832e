//! The stranger scan: while alice's session runs, bob tries every way in
//! that the session offers, from the login node, from the other compute
//! node, and from a job of his own on the session's node. He gets nothing
//! from her server: at most the door's greeting (a challenge he cannot
//! answer), and her server sees none of his connections.

use std::time::Duration;
use vscode_slurm_tests::session::{assert_nothing_left, Session, SessionOptions};
use vscode_slurm_tests::strangers::{alices_doors, assert_nothing_from_the_server, connections, tools};
use vscode_slurm_tests::Lab;

fn probe(lab: &Lab, host: &str, via_job_on: Option<&str>, targets: &[String]) -> String {
    let tools = tools(lab);
    let args = targets.join(" ");
    let command = match via_job_on {
        Some(node) => {
            format!("srun -w {node} -N1 -n1 -t 2 --job-name=bob-probe python3 {tools} probe {args}")
        }
        None => format!("python3 {tools} probe {args}"),
    };
    let output = lab.sh(Some("bob"), host, &command);
    assert!(output.status.success(), "bob's probe on {host} failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn strangers_get_nothing(mode: &str) {
    let lab = Lab::get();
    let mut session = Session::open(&lab, SessionOptions { mode, ..Default::default() });
    let node = session.node();
    let other = if node == "c1" { "c2" } else { "c1" };
    let server_local = session.field("local_addr");
    assert!(
        server_local.starts_with('/'),
        "in {mode} mode the server should listen on a unix socket, not {server_local}"
    );
    let targets = alices_doors(&lab, &node, &server_local);
    // Also the node's loopback, where a server left on TCP would be.
    let before = connections(&session.get());

    let node_targets: Vec<String> = targets.iter().filter(|t| !t.starts_with('/')).cloned().collect();
    for (where_from, host, job, tried) in [
        ("on login", "login", None, &node_targets),
        ("on the other node", other, None, &node_targets),
        ("in his own job on the session's node", "login", Some(node.as_str()), &targets),
    ] {
        let report = probe(&lab, host, job, tried);
        assert_nothing_from_the_server(where_from, &report, tried);
    }

    // The server saw only alice's own connections: the one before and this one.
    let after = connections(&session.get());
    assert_eq!(after, before + 1, "alice's server saw {} connections it should not have", after - before - 1);
    let job = session.job_id();
    let (_, _client) = session.close();
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(20));
    let bob_jobs = lab.sh_ok(None, "login", "squeue -h -u bob -o %i");
    assert!(bob_jobs.trim().is_empty(), "bob's probe job is still there: {bob_jobs}");
}

#[test]
fn legacy_session_gives_strangers_nothing() {
    strangers_get_nothing("legacy");
}

#[test]
fn exec_server_session_gives_strangers_nothing() {
    strangers_get_nothing("exec-server");
}

#[test]
fn socket_session_gives_strangers_nothing() {
    strangers_get_nothing("socket");
}

/// Listens as whoever runs it on 127.0.0.1:PORT and reports, per
/// connection, how many bytes arrived before the peer closed.
const SQUATTER: &str = r#"
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", os.getpid(), flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(10)
    c.sendall(b"HTTP/1.0 200 OK\r\n\r\nbob's fake server\n")
    got = 0
    try:
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            got += len(chunk)
    except OSError:
        pass
    print("got", got, flush=True)
    c.close()
"#;

/// A server left on a fixed loopback port (nothing to move to a socket)
/// exits; bob takes its port on the node. VS Code's next connection reaches
/// the door, which finds bob's process there instead of alice's: the relay
/// says so in one line and ends the session, and bob gets no byte.
#[test]
fn a_stranger_in_the_servers_place_gets_no_byte() {
    let lab = Lab::get();
    let port = "45678";
    let template = include_str!("../scripts/legacy.sh").replace("--port=0", &format!("--port={port}"));
    let mut session = Session::open(&lab, SessionOptions { template: Some(&template), ..Default::default() });
    let node = session.node();
    let job = session.job_id();
    assert_eq!(session.field("local_addr"), format!("127.0.0.1:{port}"), "the server is on the fixed port");

    lab.sh_ok(None, &node, &format!("kill -9 {}", session.field("pid")));
    vscode_slurm_tests::wait_until(
        &format!("port {port} to be free on {node}"),
        Duration::from_secs(10),
        || lab.sh_ok(None, &node, &format!("ss -Hltn 'sport = :{port}'")),
        |listeners| listeners.trim().is_empty(),
    );
    let mut squatter = lab.spawn(Some("bob"), &node, &["python3", "-c", SQUATTER, port]);
    let listening =
        squatter.expect_line("`listening PID`", Duration::from_secs(10), |l| l.starts_with("listening "));
    let squatter_pid = listening.trim_start_matches("listening ").to_owned();

    // Waiting for stdout collects stderr too: the refusal may come first.
    let mark = session.client.stderr_mark();
    session.client.send("get");
    let seen = session.client.expect_line("the refused `get`", Duration::from_secs(20), |l| {
        l.starts_with("answer") || l.starts_with("error") || l.starts_with("ssh-exited")
    });
    assert!(!seen.contains("bob's fake server"), "VS Code got bob's bytes: {seen}");
    assert!(!seen.starts_with("answer"), "VS Code got an answer from bob's process: {seen}");
    session.client.expect_stderr_line_after(mark, "the relay's refusal", Duration::from_secs(20), |l| {
        l.contains("found another user's process where the session's server was; not forwarding")
    });
    let got = squatter
        .expect_line("`got N` from bob's listener", Duration::from_secs(20), |l| l.starts_with("got "));
    assert_eq!(got, "got 0", "bob's process received bytes of the session");
    lab.sh_ok(None, &node, &format!("kill {squatter_pid}"));
    drop(squatter);
    // The relay ended the session: ssh is gone, and with it the window.
    session.client.expect_line("ssh to exit", Duration::from_secs(20), |l| l.starts_with("ssh-exited"));
    drop(session);
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(20));
}

/// The bytes of one strace line's string argument (`"\x56\x53..."` with -xx).
fn strace_bytes(line: &str) -> Option<Vec<u8>> {
    let quoted = line.split_once('"')?.1.split_once('"')?.0;
    quoted.split("\\x").skip(1).map(|h| u8::from_str_radix(h, 16).ok()).collect()
}

/// A root tap on the login node records a real handshake between alice's
/// relay and her door (strace on the shim); replaying the relay's recorded
/// proof at the door gets no answer and nothing reaches the server.
#[test]
fn a_recorded_handshake_replayed_at_the_door_gets_nothing() {
    let lab = Lab::get();
    let mut session = Session::open(&lab, SessionOptions::default());
    let job = session.job_id();
    let shim = lab.sh_ok(None, "login", "ps -u alice -o pid=,comm= | awk '$2 == \"vscode-shim\" {print $1}'");
    let shim: Vec<&str> = shim.split_whitespace().collect();
    assert_eq!(shim.len(), 1, "alice's one vscode-shim on login: {shim:?}");
    let tap_file = format!("/tmp/door-tap-{}", std::process::id());
    let strace = format!(
        "echo $$; exec strace -f -p {} -xx -s 256 -e trace=connect,read,recvfrom,write,sendto -o {tap_file}",
        shim[0]
    );
    let mut tap = lab.spawn(None, "login", &["sh", "-c", &strace]);
    let tap_pid = tap.expect_line("the tap's pid", Duration::from_secs(10), |l| l.parse::<u32>().is_ok());
    tap.expect_stderr_line("strace attached", Duration::from_secs(10), |l| l.contains("attached"));
    let before = connections(&session.get());
    lab.sh_ok(None, "login", &format!("kill -INT {tap_pid}"));
    assert!(tap.wait(Duration::from_secs(10)).is_some(), "strace did not stop");
    let trace = lab.sh_ok(None, "login", &format!("cat {tap_file}; rm -f {tap_file}"));

    // The door's address from the relay's connect, the hello read, then the 64-byte proof written.
    let door = trace
        .lines()
        .filter(|l| l.contains("connect(") && l.contains("sin_port=htons("))
        .find_map(|l| {
            let port = l.split("sin_port=htons(").nth(1)?.split(')').next()?;
            // With -xx strace writes even the address as \x escapes.
            let escaped = l.split("inet_addr(\"").nth(1)?.split('"').next()?;
            let ip = String::from_utf8(strace_bytes(&format!("\"{escaped}\""))?).ok()?;
            (ip != "127.0.0.1").then(|| format!("{ip}:{port}"))
        })
        .unwrap_or_else(|| panic!("no connect to the door in the tap:\n{trace}"));
    let mut recorded = None;
    let mut saw_hello = false;
    for line in trace.lines() {
        let bytes = strace_bytes(line);
        if line.contains("read") || line.contains("recvfrom") {
            saw_hello |= bytes.as_deref().is_some_and(|b| b.len() == 36 && b.starts_with(b"VSD1"));
        } else if saw_hello && (line.contains("write(") || line.contains("sendto(")) {
            if let Some(b) = bytes.filter(|b| b.len() == 64) {
                recorded = Some(b);
                break;
            }
        }
    }
    let proof = recorded.unwrap_or_else(|| panic!("no recorded relay proof in the tap:\n{trace}"));
    let hex: String = proof.iter().map(|b| format!("{b:02x}")).collect();

    let replay = lab.sh_ok(None, "login", &format!("python3 {} replay {door} {hex}", tools(&lab)));
    let lines: Vec<&str> = replay.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("hello VSD1 ")),
        "the door greets with a challenge: {replay}"
    );
    assert_eq!(lines.get(1).copied(), Some("answer 0"), "the door answered a replayed proof: {replay}");

    let after = connections(&session.get());
    assert_eq!(after, before + 1, "the replay reached alice's server");
    let _ = session.close();
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(20));
}

/// code-server with `--auth none` (a shell for whoever reaches it): alice's
/// session works through the relay, and bob, trying every door from
/// everywhere, gets nothing of it.
#[test]
fn code_server_without_auth_gives_strangers_nothing() {
    let lab = Lab::get();
    let mut session = Session::open(
        &lab,
        SessionOptions { template: Some(include_str!("../scripts/code-server.sh")), ..Default::default() },
    );
    assert!(session.answer.contains("<!DOCTYPE html>"), "alice gets the workbench: {:.200}", session.answer);
    let queue = lab.sh_ok(None, "login", "squeue -h -u alice -t running -o '%i %N'");
    let fields: Vec<&str> = queue.split_whitespace().collect();
    let [job, node] = fields[..] else { panic!("want one running job of alice: {queue}") };
    let sockets = lab.sh_ok(None, node, "ss -Hlx");
    let prefix = format!("/run/vscode-slurm/{job}/server-");
    let socket = sockets
        .split_whitespace()
        .find(|w| w.starts_with(&prefix))
        .unwrap_or_else(|| panic!("code-server has no socket in {prefix}*: {sockets}"))
        .to_owned();
    let targets = alices_doors(&lab, node, &socket);
    let other = if node == "c1" { "c2" } else { "c1" };
    let node_targets: Vec<String> = targets.iter().filter(|t| !t.starts_with('/')).cloned().collect();
    for (where_from, host, own_job, tried) in [
        ("on login", "login", None, &node_targets),
        ("on the other node", other, None, &node_targets),
        ("in his own job on the session's node", "login", Some(node), &targets),
    ] {
        let report = probe(&lab, host, own_job, tried);
        assert_nothing_from_the_server(where_from, &report, tried);
    }
    assert!(session.get().contains("<!DOCTYPE html>"), "alice still gets the workbench");
    let job: u32 = job.parse().unwrap();
    let _ = session.close();
    assert_nothing_left(&lab, "alice", job, Duration::from_secs(20));
}
