//! The proxy host kind (`vscode-shim proxy` as the laptop's ssh
//! `ProxyCommand`): the laptop's real OpenSSH client reaches an sshd of the
//! user's own inside the profile's job, set up only from what `vscode-shim
//! setup --proxy` prints. Plain ssh, scp both ways, `ssh -L` to the node's
//! loopback, X11 to an X server on the laptop, a second connection joining
//! the job, the last one ending it; no port of the session on the cluster
//! network, and neither another user's key nor another user's shim gets in.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use vscode_slurm_tests::proxy::ProxyHost;
use vscode_slurm_tests::session::assert_nothing_left;
use vscode_slurm_tests::{stderr_of, stdout_of, Lab, LineProcess};

const START: Duration = Duration::from_secs(60);
const END: Duration = Duration::from_secs(60);

/// `ssh [ARGS] HOST COMMAND` on the laptop as `user`; StrictHostKeyChecking
/// stays on (BatchMode: a prompt would be a failure).
fn ssh(lab: &Lab, user: &str, args: &str) -> std::process::Output {
    lab.sh(Some(user), "laptop", &format!("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes {args}"))
}

fn ssh_ok(lab: &Lab, user: &str, args: &str) -> String {
    let out = ssh(lab, user, args);
    assert!(out.status.success(), "ssh {args} as {user} failed ({}): {}", out.status, stderr_of(&out));
    stdout_of(&out)
}

/// `NODE JOB` as a shell in the job sees them.
fn where_am_i(lab: &Lab, user: &str, host: &str) -> (String, u32) {
    let answer = ssh_ok(lab, user, &format!("{host} 'echo $(hostname) $SLURM_JOB_ID $(id -un)'"));
    let words: Vec<&str> = answer.split_whitespace().collect();
    assert_eq!(words.len(), 3, "hostname, job id and user from the job: {answer:?}");
    assert_eq!(words[2], user, "the session runs as {user}: {answer:?}");
    (words[0].to_owned(), words[1].parse().unwrap_or_else(|_| panic!("no SLURM_JOB_ID in {answer:?}")))
}

#[test]
fn every_ssh_client_reaches_the_job_through_the_proxy_host() {
    let lab = Lab::get();
    let alice = ProxyHost::install(&lab, "alice", "alice-job", "proxied");

    // A first connection holds the job while the others come and go.
    let mut held = LineProcess::start({
        let mut command = lab.command(
            Some("alice"),
            "laptop",
            &["ssh", "-o", "BatchMode=yes", &alice.name, "echo held $(hostname) $SLURM_JOB_ID; exec cat"],
        );
        command.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        command.stderr(std::process::Stdio::piped());
        command
    });
    let line = held.expect_line("the held connection's first line", START, |l| l.starts_with("held "));
    let mut words = line.split_whitespace().skip(1);
    let (node, job): (String, u32) = (words.next().unwrap().into(), words.next().unwrap().parse().unwrap());
    assert!(node == "c1" || node == "c2", "the job's shell runs on a compute node, not {node}");
    let queue = lab.sh_ok(None, "login", &format!("squeue -h -j {job} -o '%u %j %T'"));
    assert_eq!(queue.trim(), "alice vscode:proxied RUNNING", "the profile's job");

    // A second connection joins the same job.
    assert_eq!(where_am_i(&lab, "alice", &alice.name), (node.clone(), job));

    // No port of the session on the cluster network: nothing of alice's
    // listens on the node (the connection rides the step's I/O).
    let listeners = lab.sh_ok(
        None,
        &node,
        "ss -H -tlnp | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | xargs -r ps -o user= -p || true",
    );
    assert!(!listeners.contains("alice"), "alice has a listening socket on {node}: {listeners}");

    // scp both ways (sftp, the node's sftp-server).
    let payload: String = (0..2000).map(|i| format!("line {i} of the payload\n")).collect();
    let laptop_home = lab.dir.join("laptop-home/alice");
    let owner = fs::metadata(&laptop_home).unwrap();
    fs::write(laptop_home.join("up.txt"), &payload).unwrap();
    std::os::unix::fs::chown(laptop_home.join("up.txt"), Some(owner.uid()), Some(owner.gid())).unwrap();
    let sent = lab.sh(Some("alice"), "laptop", &format!("scp -q up.txt {}:/tmp/proxied.txt", alice.name));
    assert!(sent.status.success(), "scp to the job: {}", stderr_of(&sent));
    assert_eq!(ssh_ok(&lab, "alice", &format!("{} cat /tmp/proxied.txt", alice.name)), payload);
    let back = lab.sh(Some("alice"), "laptop", &format!("scp -q {}:/tmp/proxied.txt down.txt", alice.name));
    assert!(back.status.success(), "scp from the job: {}", stderr_of(&back));
    assert_eq!(fs::read_to_string(laptop_home.join("down.txt")).unwrap(), payload);
    let _ = fs::remove_file(laptop_home.join("up.txt"));
    let _ = fs::remove_file(laptop_home.join("down.txt"));

    // ssh -L to a port bound on the node's loopback, served from inside the job.
    let server = "import socket,os; s=socket.socket(); s.bind(('127.0.0.1',47001)); s.listen(1); \
                  print('listening', flush=True); c,_=s.accept(); \
                  c.sendall(('from %s job %s' % (os.uname().nodename, os.environ['SLURM_JOB_ID'])).encode()); c.close()";
    let mut forward = lab.spawn(
        Some("alice"),
        "laptop",
        &[
            "ssh",
            "-o",
            "BatchMode=yes",
            "-L",
            "47002:127.0.0.1:47001",
            &alice.name,
            &format!("python3 -c \"{server}\""),
        ],
    );
    forward.expect_line("the node's loopback server", START, |l| l == "listening");
    let fetched = lab.sh_ok(
        Some("alice"),
        "laptop",
        "python3 -c \"import socket; c=socket.create_connection(('127.0.0.1',47002)); print(c.recv(100).decode())\"",
    );
    assert_eq!(fetched.trim(), format!("from {node} job {job}"), "ssh -L through the job's sshd");
    assert!(
        forward.wait(END).is_some_and(|s| s.success()),
        "the forwarding ssh did not end with its command"
    );

    // Forwarding anywhere but the node itself is refused by the job's sshd.
    let elsewhere = ssh(&lab, "alice", &format!("-W head:6817 {} </dev/null", alice.name));
    assert!(!elsewhere.status.success(), "ssh -W head:6817 through alice's job must be refused");
    assert!(stderr_of(&elsewhere).contains("administratively prohibited"), "{}", stderr_of(&elsewhere));

    // Bob's key is refused by alice's job sshd: alice's ProxyCommand (her
    // login key) reaches it, but the job's sshd knows only her keys.
    let bobs_key = laptop_home.join("bobs_key");
    fs::copy(lab.dir.join("laptop-home/bob/.ssh/id_ed25519"), &bobs_key).unwrap();
    std::os::unix::fs::chown(&bobs_key, Some(owner.uid()), Some(owner.gid())).unwrap();
    let bobs_config = laptop_home.join("bobs_config");
    fs::write(
        &bobs_config,
        alice.block.replace(
            "    IdentityFile ~/.ssh/id_ed25519\n",
            "    IdentityFile ~/bobs_key\n    IdentitiesOnly yes\n",
        ),
    )
    .unwrap();
    std::os::unix::fs::chown(&bobs_config, Some(owner.uid()), Some(owner.gid())).unwrap();
    let refused = ssh(&lab, "alice", &format!("-F bobs_config {} true", alice.name));
    let _ = fs::remove_file(&bobs_key);
    let _ = fs::remove_file(&bobs_config);
    assert_eq!(refused.status.code(), Some(255), "bob's key got into alice's job: {}", stderr_of(&refused));
    assert!(stderr_of(&refused).contains("Permission denied (publickey)"), "{}", stderr_of(&refused));

    // Bob's own proxy host with alice's profile name lands in a job of bob's.
    {
        let bob = ProxyHost::install(&lab, "bob", "bob-job", "proxied");
        let (_, bobs_job) = where_am_i(&lab, "bob", &bob.name);
        assert_ne!(bobs_job, job, "bob's proxy joined alice's job");
        assert!(bob.known_line != alice.known_line, "bob and alice share a job host key");
        assert_nothing_left(&lab, "bob", bobs_job, END);
    }

    // Closing the last connection ends the job (linger 0) and leaves nothing.
    held.close_stdin();
    assert!(held.wait(END).is_some(), "the held ssh did not end when its command did");
    assert_nothing_left(&lab, "alice", job, END);
    // Nothing waits on it: the key is read as it is now.
    let mode =
        fs::metadata(lab.dir.join("home/alice/.ssh/vscode-slurm-job-host-key")).map(|m| m.mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "alice's job host key is hers alone");
}

/// `ssh -X` into the job with an X server on the laptop (Xvfb): an X client
/// in the job reaches it through the job's sshd (X11 forwarding, xauth on
/// the node). The forwarded display is a door on the node's loopback: bob,
/// on the same node, gets nothing through it.
#[test]
fn ssh_x_into_the_job_reaches_the_laptops_x_server_and_no_one_else_does() {
    let lab = Lab::get();
    let alice = ProxyHost::install(&lab, "alice", "alice-x11", "x11");
    // Xvfb says its display once it accepts clients (-displayfd); it is
    // ended by pid in the same script, however ssh ends. The session stays
    // open (`cat`) until the test closes its stdin.
    let script = format!(
        "coproc X {{ exec Xvfb :7 -nolisten tcp -displayfd 1 2>/dev/null; }}\n\
         read -t 30 -r display <&\"${{X[0]}}\" || {{ echo 'Xvfb did not start'; exit 97; }}\n\
         DISPLAY=:$display ssh -o BatchMode=yes -X {} \
           'echo display $DISPLAY $SLURM_JOB_ID $(hostname); xdpyinfo | grep -m1 \"vendor string\"; exec cat'\n\
         rc=$?; kill $X_PID; wait $X_PID 2>/dev/null; exit $rc",
        alice.name
    );
    let mut session = lab.spawn(Some("alice"), "laptop", &["bash", "-c", &script]);
    let line = session
        .expect_line("the job's DISPLAY", START, |l| l.starts_with("display ") || l.starts_with("Xvfb"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 4, "display, job and node from the job: {line}");
    let (display, node) = (words[1].to_owned(), words[3].to_owned());
    let job: u32 = words[2].parse().unwrap_or_else(|_| panic!("no job id in {line}"));
    assert!(display.starts_with("localhost:1"), "DISPLAY in the job is sshd's forwarded one: {display}");
    let vendor =
        session.expect_line("xdpyinfo through the forwarding", START, |l| l.contains("vendor string"));
    assert_eq!(vendor.trim(), "vendor string:    The X.Org Foundation");

    // The forwarded display listens on the node's loopback only...
    let port =
        6000 + display.trim_start_matches("localhost:").split('.').next().unwrap().parse::<u16>().unwrap();
    let listeners = lab.sh_ok(None, &node, &format!("ss -Hltn 'sport = :{port}'"));
    assert!(!listeners.trim().is_empty(), "no X11 listener on {node}:{port}");
    for line in listeners.lines() {
        assert!(
            line.contains("127.0.0.1:") || line.contains("[::1]:"),
            "X11 listener not on loopback: {line}"
        );
    }
    // ...and bob, on that node, without alice's cookie, is turned away.
    let bob = lab.sh(Some("bob"), &node, &format!("xdpyinfo -display {display}"));
    assert!(!bob.status.success(), "bob reached alice's X server: {}", stdout_of(&bob));
    assert!(stdout_of(&bob).is_empty(), "bob got an answer: {}", stdout_of(&bob));
    assert!(stderr_of(&bob).contains("unable to open display"), "{}", stderr_of(&bob));

    session.close_stdin();
    assert!(session.wait(END).is_some_and(|s| s.success()), "the X11 session did not end cleanly");
    assert_nothing_left(&lab, "alice", job, END);
}

/// Remote-SSH without RemoteCommand (VSCodium's open-remote-ssh, or VS Code
/// on a ProxyCommand host): the usual launch script on `sh`'s stdin, `-D`
/// for the server. `listeningOn==127.0.0.1:PORT==` is the node's loopback,
/// and the SOCKS connection reaches it through the job's sshd.
#[test]
fn remote_ssh_without_remote_command_reaches_the_server_through_the_proxy_host() {
    let lab = Lab::get();
    let alice = ProxyHost::install(&lab, "alice", "alice-plain", "plain");
    let mut client = lab.spawn(
        Some("alice"),
        "laptop",
        &["remote-ssh-client", "--host", &alice.name, "--mode", "exec-server", "--remote-command", "sh"],
    );
    let listening = client.expect_line("listeningOn", START, |l| l.starts_with("result listeningOn="));
    assert!(
        listening.starts_with("result listeningOn=127.0.0.1:"),
        "the server's own loopback bind: {listening}"
    );
    let answer = client.expect_line("the server's answer over SOCKS", START, |l| l.starts_with("answer "));
    let job: u32 = answer
        .split("\"job_id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no job id in the server's answer: {answer}"));
    assert!(answer.contains("\"hostname\":\"c"), "the server runs on a compute node: {answer}");
    client.expect_line("ready", START, |l| l == "ready");
    client.send("echo 200000");
    client.expect_line("a 200 kB echo through the job's sshd", START, |l| l == "echo ok 200000");
    client.send("close");
    client.expect_line("the session to close", END, |l| l.starts_with("closed "));
    assert_nothing_left(&lab, "alice", job, END);
}
