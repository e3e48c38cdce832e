//! Runs the built helper as srun would: environment from the "step", the
//! launch script on stdin, stdout read line by line while stdin stays open
//! (as VS Code keeps it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use vscode_slurm_protocol::{encode, ControlMessage, Nonce};
use vscode_slurm_tests::events;

const NONCE: &str = "00112233445566778899aabbccddeeff";
const DOOR_KEY: &str = "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5";
const BIND: &str = "127.0.0.2";
const WAIT: Duration = Duration::from_secs(10);

struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

fn command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vscode-job-helper"));
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// The helper with stdin and stdout piped, as srun's task has them.
fn spawn(env: &[(&str, &str)], args: &[&str], stderr: Stdio) -> Child {
    command(env)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start the helper")
}

fn session_env() -> Env {
    vec![
        ("VSCODE_SLURM_NONCE", NONCE),
        ("VSCODE_SLURM_DOOR_KEY", DOOR_KEY),
        ("VSCODE_SLURM_RELAY_PORT", "4444"),
        ("VSCODE_SLURM_BIND_ADDR", BIND),
    ]
}

impl Helper {
    fn start(env: &[(&str, &str)], script: &str) -> Helper {
        Helper::start_with(env, &[], script)
    }

    fn start_with(env: &[(&str, &str)], args: &[&str], script: &str) -> Helper {
        let mut child = spawn(env, args, Stdio::inherit());
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(script.as_bytes()).unwrap();
        stdin.flush().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let helper = Helper { child, stdin: Some(stdin), lines };
        // Before anything of the script: the shim waits for this line.
        let nonce = Nonce::parse(NONCE).unwrap();
        let ready = String::from_utf8(encode(&nonce, &ControlMessage::Ready)).unwrap();
        assert_eq!(helper.next_line(), ready.trim_end(), "the ready line comes first");
        helper
    }

    fn next_line(&self) -> String {
        self.lines.recv_timeout(WAIT).expect("a line from the helper in time")
    }

    /// Lines up to and including the first one equal to `last`.
    fn lines_until(&self, last: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self.next_line();
            let done = line == last;
            seen.push(line);
            if done {
                return seen;
            }
        }
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        match events::exit_within(&mut self.child, limit).expect("wait for the helper") {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                panic!("the helper did not exit within {limit:?}");
            }
        }
    }
}

/// Ends the session as VS Code does, by closing stdin: a SIGKILL would leave
/// the script's processes behind, which is exactly what the helper cannot
/// prevent.
impl Drop for Helper {
    fn drop(&mut self) {
        self.stdin = None;
        events::exit_or_kill(&mut self.child, WAIT);
    }
}

fn control_line(endpoint: &str) -> String {
    let nonce = Nonce::parse(NONCE).unwrap();
    let line = encode(&nonce, &ControlMessage::Endpoint(endpoint.parse().unwrap()));
    String::from_utf8(line).unwrap().trim_end().to_owned()
}

fn parse_control_line(line: &str) -> SocketAddr {
    let prefix = control_line("1.1.1.1:1");
    let prefix = prefix.strip_suffix("1.1.1.1:1").unwrap();
    line.strip_prefix(prefix).expect("a control line").parse().unwrap()
}

/// A process that is gone or only a zombie (the test machine's pid 1 may
/// never reap orphans) holds nothing open any more.
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("job-helper-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn port_form_is_announced_and_rewritten() {
    let mut helper =
        Helper::start(&session_env(), "echo 'abc: start'\necho listeningOn==5555==\necho 'abc: end'\n");
    let lines = helper.lines_until("abc: end");
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(parse_control_line(&lines[1]).ip().to_string(), BIND, "the door is on the published address");
    assert_eq!([&lines[0], &lines[2], &lines[3]], ["abc: start", "listeningOn==4444==", "abc: end"]);
    helper.close_stdin();
    assert_eq!(helper.wait(WAIT).code(), Some(0));
}

#[test]
fn the_script_never_sees_the_session_secret() {
    let helper = Helper::start(
        &session_env(),
        "echo \"nonce=${VSCODE_SLURM_NONCE:-unset} key=${VSCODE_SLURM_DOOR_KEY:-unset} \
         port=${VSCODE_SLURM_RELAY_PORT:-unset} bind=$VSCODE_SLURM_BIND_ADDR\"\n",
    );
    assert_eq!(helper.next_line(), "nonce=unset key=unset port=unset bind=127.0.0.2");
}

#[test]
fn host_port_form_keeps_its_form() {
    let helper = Helper::start(&session_env(), "echo listeningOn==127.0.0.1:6666==\necho done\n");
    let lines = helper.lines_until("done");
    assert_eq!(parse_control_line(&lines[0]).ip().to_string(), BIND);
    assert_eq!([&lines[1], &lines[2]], ["listeningOn==127.0.0.1:4444==", "done"]);
}

#[test]
fn loopback_binds_in_the_script_move_to_private_sockets() {
    let dir = scratch_dir("rewrite");
    // The plugin's runtime dir is private; only such a dir gets the sockets.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut env = session_env();
    let dir_text = dir.display().to_string();
    env.push(("VSCODE_SLURM_RUNTIME_DIR", &dir_text));
    let script =
        "echo --host=127.0.0.1 --port=0\necho \"--on-host 127.0.0.1 --on-port\" --bind-addr=localhost:8080\n\
                  echo --host=127.0.0.10 --port=80\n";
    let helper = Helper::start(&env, script);
    let legacy = helper.next_line();
    let socket = legacy.strip_prefix("--host=127.0.0.1 --socket-path=").expect(&legacy);
    assert!(socket.starts_with(&format!("{dir_text}/server-")) && socket.ends_with("-1.sock"), "{legacy}");
    let exec = helper.next_line();
    assert!(exec.starts_with("--on-host 127.0.0.1 --on-socket --socket "), "{exec}");
    assert!(exec.ends_with("-2.sock --bind-addr=localhost:8080"), "{exec}");
    assert_eq!(helper.next_line(), "--host=127.0.0.10 --port=80");
    drop(helper);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bind_addr_flag_overrides_the_environment() {
    let mut env = session_env();
    env.retain(|(name, _)| *name != "VSCODE_SLURM_BIND_ADDR");
    let helper = Helper::start_with(&env, &["--bind-addr", "::1"], "echo listeningOn==5==\n");
    assert_eq!(parse_control_line(&helper.next_line()).ip().to_string(), "::1");
}

#[test]
fn closing_stdin_ends_the_whole_script() {
    let mut helper =
        Helper::start(&session_env(), "sleep 1000 &\necho $!\n(trap '' TERM; sleep 1000) &\necho $!\n");
    let plain: u32 = helper.next_line().parse().unwrap();
    let stubborn: u32 = helper.next_line().parse().unwrap();
    let started = Instant::now();
    helper.close_stdin();
    assert_eq!(helper.wait(WAIT).code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(is_gone(plain), "sleep {plain} survived");
    assert!(is_gone(stubborn), "TERM-ignoring subshell {stubborn} survived");
}

#[test]
fn helper_killed_outright_leaves_no_one_holding_the_steps_output() {
    // As srun's task: if leftovers of the script held these pipes, Slurm
    // would wait on the step (and keep the job COMPLETING) until they die.
    let mut child = spawn(&session_env(), &[], Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echo to-stderr >&2\nsetsid sleep 1000 </dev/null &\necho $!\n").unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert_eq!(line, "to-stderr\n", "the script's stderr is passed on");
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains(" ready"), "the ready line first: {line}");
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let leftover: u32 = line.trim().parse().expect("pid of the background sleep");
    child.kill().unwrap();
    child.wait().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest);
        let _ = stderr.read_to_end(&mut rest);
        let _ = tx.send(());
    });
    rx.recv_timeout(WAIT).expect("the helper's stdout and stderr to close once it is dead");
    assert!(!is_gone(leftover), "the test needs the leftover to still run");
    unsafe { libc::kill(leftover as i32, libc::SIGKILL) };
}

#[test]
fn shell_exit_ends_its_children_and_passes_the_code_on() {
    let mut helper = Helper::start(&session_env(), "sleep 1000 &\necho $!\nexit 7\n");
    let pid: u32 = helper.next_line().parse().unwrap();
    assert_eq!(helper.wait(WAIT).code(), Some(7));
    assert!(is_gone(pid), "sleep {pid} survived");
}

#[test]
fn signals_end_the_script_with_128_plus_the_signal() {
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129), (libc::SIGINT, 130)] {
        let mut helper = Helper::start(&session_env(), "sleep 1000 &\necho $!\n");
        let pid: u32 = helper.next_line().parse().unwrap();
        unsafe { libc::kill(helper.child.id() as i32, signal) };
        assert_eq!(helper.wait(WAIT).code(), Some(code), "signal {signal}");
        assert!(is_gone(pid), "sleep {pid} survived signal {signal}");
    }
}

fn run_for_error(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let out = command(env).args(args).stdin(Stdio::null()).output().unwrap();
    assert!(out.stdout.is_empty());
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

type Env = Vec<(&'static str, &'static str)>;

fn without(name: &str) -> Env {
    session_env().into_iter().filter(|(n, _)| *n != name).collect()
}

fn with(name: &'static str, value: &'static str) -> Env {
    let mut env = without(name);
    env.push((name, value));
    env
}

#[test]
fn bad_environment_or_arguments_give_one_line_and_code_2() {
    let cases: Vec<(Env, &[&str], &str)> = vec![
        (without("VSCODE_SLURM_BIND_ADDR"), &[], "VSCODE_SLURM_BIND_ADDR is not set"),
        (without("VSCODE_SLURM_NONCE"), &[], "VSCODE_SLURM_NONCE is not set"),
        (without("VSCODE_SLURM_DOOR_KEY"), &[], "VSCODE_SLURM_DOOR_KEY is not set"),
        (with("VSCODE_SLURM_DOOR_KEY", "XYZ"), &[], "VSCODE_SLURM_DOOR_KEY is malformed"),
        (without("VSCODE_SLURM_RELAY_PORT"), &[], "VSCODE_SLURM_RELAY_PORT is not set"),
        (with("VSCODE_SLURM_NONCE", "XYZ"), &[], "VSCODE_SLURM_NONCE is malformed"),
        (with("VSCODE_SLURM_RELAY_PORT", "0"), &[], "VSCODE_SLURM_RELAY_PORT is not a port"),
        (with("VSCODE_SLURM_RELAY_PORT", "70000"), &[], "VSCODE_SLURM_RELAY_PORT is not a port"),
        (with("VSCODE_SLURM_BIND_ADDR", "node1"), &[], "VSCODE_SLURM_BIND_ADDR is not an IP address"),
        (session_env(), &["--nope"], "unexpected argument"),
        (session_env(), &["--bind-addr", "x"], "invalid value"),
        (session_env(), &["-v", "-q"], "cannot be used with"),
        (session_env(), &["--shell", "/nonexistent/sh"], "cannot start the shell"),
        (session_env(), &["--log-file", "/nonexistent/dir/%p.log"], "cannot open the log file"),
    ];
    for (env, args, expected) in cases {
        let (code, stderr) = run_for_error(&env, args);
        assert_eq!(code, Some(2), "{args:?} {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("vscode-job-helper: "), "{stderr}");
        assert!(stderr.contains(expected), "{stderr:?} lacks {expected:?}");
    }
    let (_, stderr) = run_for_error(&with("VSCODE_SLURM_NONCE", "0123456789abcdef0123456789abcdeX"), &[]);
    assert!(!stderr.contains("0123456789abcdef"), "the nonce must not be echoed: {stderr}");
}

#[test]
fn help_and_version_print_normally() {
    let out = command(&[]).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("vscode-job-helper "));
    let out = command(&[]).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("--bind-addr"));
}

const ECHO_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen()
print("listeningOn==" + sys.argv[1] + "==", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(c.recv(100).upper())
    c.close()
"#;

fn socket_session(name: &str) -> (Helper, SocketAddr, PathBuf) {
    let dir = scratch_dir(name);
    std::fs::write(dir.join("server.py"), ECHO_SERVER).unwrap();
    let script = format!("umask 000; /usr/bin/python3 {0}/server.py {0}/s.sock &\n", dir.display());
    let helper = Helper::start(&session_env(), &script);
    let endpoint = parse_control_line(&helper.next_line());
    assert_eq!(helper.next_line(), "listeningOn==4444==");
    (helper, endpoint, dir)
}

/// Connects to the door as the relay would, with `key`.
fn through_door(endpoint: SocketAddr, key: &str) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let key = vscode_slurm_protocol::door::DoorKey::parse(key).unwrap();
        let mut conn = tokio::net::TcpStream::connect(endpoint).await.map_err(|e| e.to_string())?;
        let status = vscode_slurm_door::handshake::open(&mut conn, &key).await.map_err(|e| e.to_string())?;
        assert_eq!(status, vscode_slurm_protocol::door::Status::Forwarding);
        conn.write_all(b"ping").await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        Ok(answer)
    })
}

#[test]
fn a_socket_server_is_served_through_the_door_and_closed_to_others() {
    use std::os::unix::fs::PermissionsExt;
    let (mut helper, endpoint, dir) = socket_session("door");
    assert_eq!(endpoint.ip().to_string(), BIND);
    for _ in 0..2 {
        assert_eq!(through_door(endpoint, DOOR_KEY).unwrap(), "PING");
    }
    let mode = std::fs::metadata(dir.join("s.sock")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the server made it world-connectable; the helper closes it");
    helper.close_stdin();
    assert_eq!(helper.wait(WAIT).code(), Some(0));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_door_refuses_another_key_and_raw_bytes() {
    let (_helper, endpoint, dir) = socket_session("refuse");
    let wrong = through_door(endpoint, &"b6".repeat(32)).unwrap_err();
    assert!(wrong.contains("did not prove"), "{wrong}");
    let mut conn = TcpStream::connect(endpoint).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let _ = conn.write_all(&[b'x'; 64]);
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    assert_eq!(answer.len(), vscode_slurm_protocol::door::HELLO_LEN, "nothing but the door's hello");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A server that cannot be served safely is not passed on: VS Code would
/// dial its address on the login node, where anyone may be listening.
#[test]
fn an_unservable_server_fails_closed() {
    let helper = Helper::start(&session_env(), "echo listeningOn==/etc/passwd==\necho done\n");
    assert_eq!(helper.lines_until("done"), ["listeningOn==unavailable==", "done"]);
}
