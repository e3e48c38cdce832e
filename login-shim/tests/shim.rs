//! Runs the real `vscode-shim` binary against a stand-in for salloc: a bash
//! script that plays the helper's part (echoing, emitting control lines on
//! request) so the shim's streams, relay and lifecycle can be checked
//! without Slurm. The real Slurm path is tested elsewhere.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vscode_slurm_tests::events;

const TIMEOUT: Duration = Duration::from_secs(15);

const STAND_IN: &str = r#"#!/bin/bash
printf '%s\n' "$@" > "$STANDIN_DIR/args"
printf '%s' "$VSCODE_SLURM_NONCE" > "$STANDIN_DIR/nonce"
printf '%s' "$VSCODE_SLURM_DOOR_KEY" > "$STANDIN_DIR/door_key"
echo $$ > "$STANDIN_DIR/pid"
case "$STANDIN_MODE" in
  fail)
    echo "salloc: error: Job submit/allocate failed: Invalid partition name specified" >&2
    exit 1 ;;
  pending)
    echo "salloc: Pending job allocation 7" >&2
    echo "salloc: job 7 queued and waiting for resources" >&2 ;;
  *)
    echo "salloc: Granted job allocation 7" >&2 ;;
esac
while IFS= read -r line; do
  case "$line" in
    emit-endpoint\ *)
      printf '@@vscode-slurm@@ %s endpoint 127.0.0.1:%s\n' "$VSCODE_SLURM_NONCE" "${line#emit-endpoint }"
      echo "listeningOn==$VSCODE_SLURM_RELAY_PORT==" ;;
    emit-forged)
      echo "@@vscode-slurm@@ ffffffffffffffffffffffffffffffff endpoint 127.0.0.1:1" ;;
    port) echo "port==$VSCODE_SLURM_RELAY_PORT==" ;;
    grant) echo "salloc: job 7 has been allocated resources" >&2 ;;
    exit) exit 3 ;;
    *) echo "echo $line" ;;
  esac
done
# A job whose step does not end when stdin closes: only scancel ends it
# (exec: the pid scancel kills is this one, and no child outlives it).
if [ "$STANDIN_MODE" = stuck ]; then
  exec sleep infinity
fi
"#;

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "vscode-shim-test-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap_or_default()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Echoes every connection until the client half-closes, then half-closes back.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

struct Shim {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stdout_seen: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// Gets a message whenever stderr has grown.
    stderr_grew: Receiver<()>,
    /// Nothing is sent on it: it hangs up when both readers have reached
    /// the end of the shim's output.
    output_ended: Receiver<()>,
    dir: Dir,
    echo_port: u16,
}

fn start(mode: &str, args: &[&str]) -> Shim {
    let dir = Dir::new();
    let salloc = dir.script("salloc", STAND_IN);
    let scancel = dir.script(
        "scancel",
        "#!/bin/sh\necho \"$@\" >> \"$STANDIN_DIR/scancelled\"\nkill \"$(cat \"$STANDIN_DIR/pid\")\"\n",
    );
    let squeue = dir.script("squeue", "#!/bin/sh\necho 'PENDING|Resources'\n");
    let scontrol = dir.script(
        "scontrol",
        "#!/bin/sh\necho \"JobId=7 JobName=vscode UserId=u(1000) JobState=TIMEOUT Reason=TimeLimit Dependency=(null)\"\n",
    );
    let echo_port = echo_server();
    let mut command = Command::new(env!("CARGO_BIN_EXE_vscode-shim"));
    command
        .arg("--no-profile")
        .arg("--salloc")
        .arg(&salloc)
        .arg("--scancel")
        .arg(&scancel)
        .arg("--squeue")
        .arg(&squeue)
        .arg("--scontrol")
        .arg(&scontrol)
        .args(args)
        .env("STANDIN_DIR", &dir.0)
        .env("STANDIN_MODE", mode)
        .env("ECHO_PORT", echo_port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();

    let (ended, output_ended) = mpsc::channel();
    let (tx, stdout) = mpsc::channel();
    let stdout_seen = Arc::new(Mutex::new(String::new()));
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let seen = stdout_seen.clone();
    let stdout_ended = ended.clone();
    thread::spawn(move || {
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            seen.lock().unwrap().push_str(&line);
            let _ = tx.send(std::mem::take(&mut line));
        }
        drop(stdout_ended);
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let (grew, stderr_grew) = mpsc::channel();
    let mut err_reader = child.stderr.take().unwrap();
    let sink = stderr.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = err_reader.read(&mut buf) {
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = grew.send(());
        }
        drop(ended);
    });
    let stdin = child.stdin.take();
    Shim { child, stdin, stdout, stdout_seen, stderr, stderr_grew, output_ended, dir, echo_port }
}

impl Shim {
    /// Opens a door (the helper's, with the key the shim gave the job) in
    /// front of the echo server and has the job announce it.
    fn emit_endpoint(&mut self) {
        let key = vscode_slurm_protocol::door::DoorKey::parse(&self.dir.read("door_key"))
            .expect("the shim's door key");
        let target = vscode_slurm_door::door::Target::Tcp(([127, 0, 0, 1], self.echo_port).into());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
                let door =
                    vscode_slurm_door::door::start(loopback, target, std::sync::Arc::new(key)).await.unwrap();
                tx.send(door.port()).unwrap();
                std::future::pending::<()>().await
            })
        });
        let door_port = rx.recv_timeout(Duration::from_secs(10)).expect("the door opened");
        self.send(&format!("emit-endpoint {door_port}"));
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn expect_line(&self, starts_with: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.starts_with(starts_with) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no stdout line starting {starts_with:?}; stderr: {}", self.stderr()),
            }
        }
    }

    fn relay_port(&mut self) -> u16 {
        self.send("port");
        let line = self.expect_line("port==");
        line.trim().trim_start_matches("port==").trim_end_matches("==").parse().unwrap()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_for_stderr(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.stderr().contains(needle) {
            match self.stderr_grew.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("stderr did not come to contain {needle:?} within {TIMEOUT:?}: {}", self.stderr())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("stderr ended without {needle:?}: {}", self.stderr())
                }
            }
        }
    }

    /// Fails as soon as a new `vscode-shim:` line comes within `within`.
    /// Only a bounded look can show that something does not happen.
    fn assert_no_new_shim_line(&self, within: Duration, why: &str) {
        let before = self.shim_lines().len();
        let deadline = Instant::now() + within;
        while let Ok(()) = self.stderr_grew.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            assert_eq!(self.shim_lines().len(), before, "{why}: {}", self.stderr());
        }
    }

    /// The shim's exit status, once it has exited and all it wrote has
    /// been read.
    fn wait(&mut self, within: Duration) -> ExitStatus {
        let exited = events::exit_within(&mut self.child, within).expect("wait for the shim");
        let Some(status) = exited else {
            let _ = self.child.kill();
            panic!("shim still running after {within:?}; stderr: {}", self.stderr());
        };
        // The readers end with the shim's output, which ends with the shim:
        // what salloc and its stand-ins were given are pipes of its own.
        match self.output_ended.recv_timeout(TIMEOUT) {
            Err(RecvTimeoutError::Disconnected) => status,
            _ => panic!("the shim's output did not end within {TIMEOUT:?} of its exit: {}", self.stderr()),
        }
    }

    fn shim_lines(&self) -> Vec<String> {
        self.stderr().lines().filter(|l| l.starts_with("vscode-shim:")).map(str::to_owned).collect()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic but irregular bytes, so misordered or dropped chunks show:
/// the top byte of a 64-bit linear congruential sequence (Knuth's MMIX
/// constants).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let next = |state: &u64| Some(state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    std::iter::successors(next(&seed), next).take(len).map(|state| (state >> 56) as u8).collect()
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).unwrap()
}

/// Sends 1 MiB through the relay while reading the echo, then half-closes
/// and expects the echo's half-close back.
fn exchange(stream: TcpStream, seed: u64) {
    let payload = pseudo_random(1 << 20, seed);
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let writer = stream.try_clone().unwrap();
    let echoed = vscode_slurm_tests::echo_back(stream, writer, &payload);
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ");
}

/// Whether a process has accepted `client`'s connection: until one does,
/// the kernel lists the connection's far end with inode 0, as no process
/// holds a socket for it yet.
fn accepted(client: &TcpStream) -> bool {
    let (ours, theirs) = (client.local_addr().unwrap().port(), client.peer_addr().unwrap().port());
    let port = |address: &str| address.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().filter_map(|table| std::fs::read_to_string(table).ok()).any(
        |table| {
            table.lines().skip(1).any(|row| {
                let fields: Vec<&str> = row.split_whitespace().collect();
                fields.len() > 9
                    && port(fields[1]) == Some(theirs)
                    && port(fields[2]) == Some(ours)
                    && fields[9] != "0"
            })
        },
    )
}

#[test]
fn session_relays_filters_and_ends_on_stdin_eof() {
    let dir_probe = Dir::new();
    let tee_in = dir_probe.0.join("in-%p");
    let tee_out = dir_probe.0.join("out-%p");
    let mut shim = start(
        "granted",
        &[
            "--tee-stdin",
            tee_in.to_str().unwrap(),
            "--tee-stdout",
            tee_out.to_str().unwrap(),
            "--",
            "--partition=gpu",
            "--time=4:00:00",
        ],
    );
    let port = shim.relay_port();

    // A forged control line is only data.
    shim.send("emit-forged");
    let forged = shim.expect_line("@@vscode-slurm@@ ");
    assert!(forged.contains("ffffffffffffffffffffffffffffffff"));

    // A connection made before the endpoint is known waits for it: the
    // relay has taken it and holds it, neither answered nor closed...
    let early = connect(port);
    let deadline = Instant::now() + TIMEOUT;
    while !accepted(&early) {
        assert!(
            Instant::now() < deadline,
            "the relay did not accept a connection; stderr: {}",
            shim.stderr()
        );
        thread::sleep(Duration::from_millis(10)); // allow-sleep: another process's accept() announces nothing; its socket table is all there is
    }
    // Not answered: a bounded look, as that nothing comes can only be seen
    // for so long.
    early.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    match early.peek(&mut [0u8; 1]) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the relay answered before the job named its server: {other:?}"),
    }
    // ...and relays it once the job names its server.
    shim.emit_endpoint();
    let listening = shim.expect_line("listeningOn==");
    assert_eq!(listening.trim(), format!("listeningOn=={port}=="));
    exchange(early, 1);
    exchange(connect(port), 2);

    let nonce = shim.dir.read("nonce");
    assert_eq!(nonce.len(), 32);
    let seen = shim.stdout_seen.lock().unwrap().clone();
    assert!(!seen.contains(&nonce), "the control line leaked to stdout: {seen}");

    let args: Vec<String> = shim.dir.read("args").lines().map(str::to_owned).collect();
    assert_eq!(
        args,
        [
            "--vscode",
            "--job-name=vscode",
            "--partition=gpu",
            "--time=4:00:00",
            "srun",
            "--export=ALL",
            "--nodes=1",
            "--ntasks=1",
            "--kill-on-bad-exit=1",
            "--unbuffered",
            "vscode-job-helper"
        ]
    );

    let started = Instant::now();
    drop(shim.stdin.take());
    let pid = shim.child.id();
    let status = shim.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "stderr: {}", shim.stderr());
    assert!(started.elapsed() < Duration::from_secs(5));
    // The job ended by itself when its stdin closed: nothing to cancel.
    assert_eq!(shim.dir.read("scancelled"), "");
    assert!(shim.shim_lines().is_empty(), "unexpected messages: {}", shim.stderr());

    let tee_in = std::fs::read_to_string(dir_probe.0.join(format!("in-{pid}"))).unwrap();
    let tee_lines: Vec<&str> = tee_in.lines().collect();
    assert_eq!(tee_lines[..2], ["port", "emit-forged"]);
    assert!(tee_lines[2].starts_with("emit-endpoint ") && tee_lines.len() == 3, "{tee_in}");
    let tee_out = std::fs::read_to_string(dir_probe.0.join(format!("out-{pid}"))).unwrap();
    assert_eq!(tee_out, seen);
}

#[test]
fn job_ending_by_itself_is_explained_in_one_line() {
    let dir = Dir::new();
    let tee = dir.0.join("err-%p");
    let mut shim = start("granted", &["--tee-stderr", tee.to_str().unwrap()]);
    let pid = shim.child.id();
    shim.send("exit");
    let status = shim.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1));
    let lines = shim.shim_lines();
    assert_eq!(lines.len(), 1, "stderr: {}", shim.stderr());
    assert!(
        lines[0].starts_with("vscode-shim: job 7 ended: TIMEOUT (the job reached its time limit); reconnect"),
        "{}",
        lines[0]
    );
    // salloc's own lines still reach the user.
    assert!(shim.stderr().contains("salloc: Granted job allocation 7\n"));
    assert_eq!(std::fs::read_to_string(dir.0.join(format!("err-{pid}"))).unwrap(), shim.stderr());
}

#[test]
fn salloc_failing_to_start_is_explained() {
    let mut shim = start("fail", &[]);
    let status = shim.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        shim.shim_lines(),
        ["vscode-shim: salloc could not start the job: Job submit/allocate failed: Invalid partition name \
          specified; check the salloc arguments after -- in RemoteCommand"]
    );
    assert!(shim.stdout_seen.lock().unwrap().is_empty());
}

#[test]
fn pending_job_reports_progress_until_granted() {
    let mut shim = start("pending", &["--poll-interval", "1"]);
    shim.wait_for_stderr("vscode-shim: job 7 is pending (reason: Resources), waited 0:0");
    // Granted right after a report, so no poll is under way meanwhile: the
    // next is a poll interval (1 s) away, and none may come in two and a half.
    shim.send("grant");
    shim.wait_for_stderr("salloc: job 7 has been allocated resources");
    shim.assert_no_new_shim_line(Duration::from_millis(2500), "progress went on after the grant");
    drop(shim.stdin.take());
    assert_eq!(shim.wait(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn job_that_outlives_stdin_eof_is_cancelled() {
    let mut shim = start("stuck", &[]);
    let _ = shim.relay_port();
    let started = Instant::now();
    drop(shim.stdin.take());
    let status = shim.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "stderr: {}", shim.stderr());
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
    assert_eq!(shim.dir.read("scancelled").trim(), "7");
}

#[test]
fn sigterm_cancels_the_job_and_exits_128_plus_15() {
    let mut shim = start("stuck", &[]);
    let _ = shim.relay_port();
    let pid = nix::unistd::Pid::from_raw(shim.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = shim.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(143), "stderr: {}", shim.stderr());
    assert_eq!(shim.dir.read("scancelled").trim(), "7");
}

#[test]
fn log_file_name_gets_the_pid() {
    let dir = Dir::new();
    let pattern = dir.0.join("shim-%p.log");
    let mut shim = start("granted", &["--log-file", pattern.to_str().unwrap()]);
    let _ = shim.relay_port();
    let pid = shim.child.id();
    drop(shim.stdin.take());
    assert_eq!(shim.wait(Duration::from_secs(10)).code(), Some(0));
    let log = std::fs::read_to_string(dir.0.join(format!("shim-{pid}.log"))).unwrap();
    assert!(log.contains("relay listening on port"), "{log}");
    // The log file does not make stderr chatty.
    assert!(shim.shim_lines().is_empty(), "{}", shim.stderr());
}

fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_vscode-shim")).args(args).stdin(Stdio::null()).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_give_one_line_and_exit_2() {
    for args in [&["--bogus"][..], &["--listen-port", "seventy"], &["--partition=gpu"], &["-q", "-v"]] {
        let (code, stdout, stderr) = run_cli(args);
        assert_eq!(code, Some(2), "{args:?}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("vscode-shim: "), "{stderr}");
        assert!(stderr.trim_end().ends_with("; see 'vscode-shim --help'"), "{stderr}");
    }
}

#[test]
fn bad_proxy_arguments_give_one_line_and_exit_2_before_slurm() {
    for (args, wanted) in [
        (&["proxy", "--bogus"][..], "see 'vscode-shim proxy --help'"),
        (&["proxy", "--no-profile"], "--no-profile does not apply"),
        (&["proxy", "--profile", "a b"], "is not a usable name"),
    ] {
        let (code, stdout, stderr) = run_cli(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: nothing may reach the ssh client's stream: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("vscode-shim proxy: ") && stderr.contains(wanted), "{args:?}: {stderr}");
    }
}

#[test]
fn help_and_version_print_normally() {
    let (code, stdout, _) = run_cli(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("--listen-port") && stdout.contains("SALLOC_ARGS"));
    assert!(!stdout.contains("--scancel"), "test-only flags stay hidden");
    for sub in ["setup", "doctor", "sessions", "stop", "proxy"] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(sub)),
            "--help does not list {sub}:\n{stdout}"
        );
    }
    let (code, stdout, _) = run_cli(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("vscode-shim "));
}

#[test]
fn relay_connection_gives_up_after_connect_wait() {
    let mut shim = start("granted", &["--connect-wait", "1"]);
    let mut stream = connect(shim.relay_port());
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1];
    assert_eq!(stream.read(&mut buf).unwrap(), 0, "closed without data");
    assert!(started.elapsed() < Duration::from_secs(5));
    shim.wait_for_stderr("vscode-shim: the job named no server within 1s (--connect-wait)");
}

#[test]
fn other_users_are_refused() {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: needs root to connect as another user");
        return;
    }
    let mut shim = start("granted", &[]);
    let port = shim.relay_port();
    shim.emit_endpoint();
    shim.expect_line("listeningOn==");
    // bash's /dev/tcp, run as nobody: prints whatever the relay sends until it closes.
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}; echo hello >&3; timeout 10 cat <&3; echo closed"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "closed\n", "{output:?}");
    shim.wait_for_stderr(
        "vscode-shim: refused a relay connection from uid 65534 (pid unknown) — only the session's own user may connect\n",
    );
    // Our own user still gets through.
    exchange(connect(port), 3);
}

/// A Slurm that does not answer is not "no job": the window says so in one
/// line and submits nothing (a second job would be the result otherwise).
#[test]
fn a_failing_squeue_submits_no_second_job() {
    let dir = Dir::new();
    let squeue =
        dir.script("squeue", "#!/bin/sh\necho 'slurm_load_jobs error: Socket timed out' >&2\nexit 1\n");
    let sbatch = dir.script("sbatch", "#!/bin/sh\necho called >> \"$STANDIN_DIR/sbatch-called\"\necho 7\n");
    let output = Command::new(env!("CARGO_BIN_EXE_vscode-shim"))
        .args(["--profile", "gpu", "--squeue"])
        .arg(&squeue)
        .arg("--sbatch")
        .arg(&sbatch)
        .args(["--", "--time=10"])
        .env("STANDIN_DIR", &dir.0)
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot ask Slurm for the job of profile gpu"), "{stderr}");
    assert!(!dir.0.join("sbatch-called").exists(), "sbatch was run: {stderr}");
}
