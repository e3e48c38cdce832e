//! A fake Slurm on this machine, as an ordinary user, for the real
//! `vscode-shim` and the real `vscode-job-helper`: `sbatch` starts the batch
//! script (the keeper) at once as a background "job" with the environment
//! Slurm and the spank_vscode plugin would give it, `srun` runs a step of it
//! here, `squeue` answers from the jobs' state files, `scontrol` records the
//! keeper's Comment and `scancel` ends a job. The commands are short bash
//! scripts in a private directory; every call is recorded in its `calls`
//! file.
//!
//! What the fake cannot be: a cgroup. A job's end kills what carries the
//! job's mark in its environment (every process started in the job inherits
//! it) and the batch step by its pid; the helper is not dumpable, so only
//! root can read its environment, but a window's helper ends by itself once
//! the keeper is gone.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Bounds every wait for an event; no test asserts on timing below it.
pub const BOUND: Duration = Duration::from_secs(20);

/// What the fake commands share; `@DIR@` is the cluster's directory: `jobs/ID/`
/// holds a job's state, `run/ID/` its runtime directory (the plugin's, 0700).
const LIB: &str = r#"F='@DIR@'
log_call() { local IFS=$'\t'; printf '%s\n' "$*" >> "$F/calls"; }
state_of() { cat "$F/jobs/$1/state" 2>/dev/null; }
set_state() { printf '%s\n' "$2" > "$F/jobs/$1/state.new" && mv "$F/jobs/$1/state.new" "$F/jobs/$1/state"; }
# 0, 90s, 30m, 1h30m, 2d: as the plugin passes --vscode-linger on, in seconds.
seconds() {
    local text=$1 total=0 unit
    while [[ $text =~ ^([0-9]+)([dhms])(.*)$ ]]; do
        case ${BASH_REMATCH[2]} in d) unit=86400 ;; h) unit=3600 ;; m) unit=60 ;; s) unit=1 ;; esac
        total=$((total + 10#${BASH_REMATCH[1]} * unit))
        text=${BASH_REMATCH[3]}
    done
    echo "$total"
}
# What Slurm and, for a --vscode job, the spank_vscode plugin put in every step of job $1.
job_env() {
    local dir=$F/jobs/$1
    export SLURM_JOB_ID=$1 SLURM_JOBID=$1 SLURM_JOB_NAME="$(cat "$dir/name")" FAKE_SLURM_JOB=$dir
    if [ -e "$dir/vscode" ]; then
        export VSCODE_SLURM_RUNTIME_DIR=$F/run/$1 VSCODE_SLURM_BIND_ADDR=127.0.0.1
        export VSCODE_SLURM_LINGER="$(cat "$dir/linger")"
    fi
}
# The job's end, as its cgroup would have it: the batch step (by pid, unless
# already reaped) and everything that carries the job's mark.
kill_job() {
    local dir=$F/jobs/$1 pids tries=0
    [ -e "$dir/exit" ] || kill -KILL "$(cat "$dir/pid" 2>/dev/null)" 2>/dev/null
    while pids=$(grep -lzxF "FAKE_SLURM_JOB=$dir" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3) \
        && [ -n "$pids" ] && [ $((tries += 1)) -le 100 ]; do
        kill -KILL $pids 2>/dev/null
    done
}
"#;

/// `sbatch --parsable [OPTIONS] --wrap=SCRIPT`: the job runs at once.
const SBATCH: &str = r#"#!/bin/bash
. '@DIR@/lib.sh'
log_call sbatch "$@"
name=sbatch wrap= linger=0 vscode=
for arg; do
    case $arg in
        --job-name=*) name=${arg#--job-name=} ;;
        --wrap=*) wrap=${arg#--wrap=} ;;
        --vscode) vscode=1 ;;
        --vscode-linger=*) linger=$(seconds "${arg#--vscode-linger=}") ;;
    esac
done
if [ -z "$wrap" ]; then echo "sbatch: error: Batch script is empty!" >&2; exit 1; fi
id=$(cat "$F/next-id") && echo $((id + 1)) > "$F/next-id"
dir=$F/jobs/$id
mkdir -p "$dir" && echo "$name" > "$dir/name" && echo "$linger" > "$dir/linger"
if [ -n "$vscode" ]; then touch "$dir/vscode" && mkdir -m 700 "$F/run/$id"; fi
set_state "$id" RUNNING
setsid '@DIR@/batch-step' "$id" "$wrap" < /dev/null > /dev/null 2>&1 &
echo $! > "$dir/monitor"
echo "$id"
"#;

/// The batch step of job $1: sbatch's script $2 run by /bin/sh in the job's
/// environment; once it ends, so does the job.
const BATCH_STEP: &str = r#"#!/bin/bash
. '@DIR@/lib.sh'
id=$1 dir=$F/jobs/$1
(job_env "$id" && exec /bin/sh -c "$2") < /dev/null >> "$dir/batch.log" 2>&1 &
echo $! > "$dir/pid"
wait $!
echo $? > "$dir/exit"
[ -e "$dir/cancelled" ] || set_state "$id" COMPLETING
kill_job "$id"
if [ ! -e "$dir/cancelled" ]; then
    if [ "$(cat "$dir/exit")" = 0 ]; then set_state "$id" COMPLETED; else set_state "$id" FAILED; fi
fi
touch "$dir/ended"
"#;

/// `srun --jobid=ID [OPTIONS] PROGRAM [ARGS]`: a step of the job, here.
const SRUN: &str = r#"#!/bin/bash
. '@DIR@/lib.sh'
log_call srun "$@"
id=
while [ $# -gt 0 ]; do
    case $1 in
        --jobid=*) id=${1#--jobid=} ;;
        -*) ;;
        *) break ;;
    esac
    shift
done
if [ "$(state_of "$id")" != RUNNING ]; then
    echo "srun: error: Unable to confirm allocation for job $id: Invalid job id specified" >&2
    exit 1
fi
echo $$ >> "$F/jobs/$id/steps"
job_env "$id"
exec "$@"
"#;

/// `squeue [--me] -h [-t STATES] [-n NAME] [-j ID] -o FORMAT`; all jobs are the user's.
const SQUEUE: &str = r#"#!/bin/bash
. '@DIR@/lib.sh'
log_call squeue "$@"
states= name= only= format='%i %T'
while [ $# -gt 0 ]; do
    case $1 in
        --me | -h) ;;
        -t) states=$2 && shift ;;
        -n) name=$2 && shift ;;
        -j) only=$2 && shift ;;
        -o) format=$2 && shift ;;
        *) echo "squeue: unrecognized option '$1'" >&2 && exit 1 ;;
    esac
    shift
done
# Without -t: pending, running and completing jobs, or a job asked for by id in any state.
if [ -z "$states" ]; then
    if [ -n "$only" ]; then states=all; else states=PENDING,RUNNING,COMPLETING; fi
fi
if [ -n "$only" ] && [ ! -d "$F/jobs/$only" ]; then
    echo "slurm_load_jobs error: Invalid job id specified" >&2
    exit 1
fi
for dir in "$F"/jobs/*/; do
    [ -d "$dir" ] || continue
    id=$(basename "$dir") state=$(state_of "$(basename "$dir")") job_name=$(cat "$dir/name")
    [ -z "$only" ] || [ "$id" = "$only" ] || continue
    [ -z "$name" ] || [ "$job_name" = "$name" ] || continue
    [ "$states" = all ] || [[ ,$states, == *,$state,* ]] || continue
    line=${format//'%i'/$id}
    line=${line//'%T'/$state}
    line=${line//'%r'/None}
    line=${line//'%j'/$job_name}
    echo "${line//'%L'/UNLIMITED}"
done
"#;

/// `scontrol update JobId=ID Comment=TEXT` and `scontrol [--local] -o show job ID`.
const SCONTROL: &str = r#"#!/bin/bash
. '@DIR@/lib.sh'
log_call scontrol "$@"
# One cluster, no federation: --local changes nothing.
[ "$1" = --local ] && shift
if [ "$1" = update ] && [[ $2 == JobId=* && $3 == Comment=* ]]; then
    id=${2#JobId=}
    if [ ! -d "$F/jobs/$id" ]; then echo "slurm_update error: Invalid job id specified" >&2; exit 1; fi
    printf '%s\n' "${3#Comment=}" > "$F/jobs/$id/comment"
    printf '%s\n' "${3#Comment=}" >> "$F/jobs/$id/comments"
elif [ "$*" = "-o show job $4" ]; then
    dir=$F/jobs/$4
    if [ ! -d "$dir" ]; then echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; fi
    comment=$(cat "$dir/comment" 2>/dev/null || echo '(null)')
    echo "JobId=$4 JobName=$(cat "$dir/name") JobState=$(state_of "$4") Reason=None Comment=$comment"
else
    echo "scontrol: error: the fake knows only update JobId= Comment= and -o show job" >&2
    exit 1
fi
"#;

/// `scancel ID`: the job ends at once, CANCELLED.
const SCANCEL: &str = r#"#!/bin/bash
. '@DIR@/lib.sh'
log_call scancel "$@"
dir=$F/jobs/$1
if [ ! -d "$dir" ]; then
    echo "scancel: error: Kill job error on job id $1: Invalid job id specified" >&2
    exit 1
fi
case $(state_of "$1") in PENDING | RUNNING) ;; *) exit 0 ;; esac
touch "$dir/cancelled"
set_state "$1" CANCELLED
kill_job "$1"
"#;

/// The server a launch script starts: on the socket path it is given, it
/// greets each connection with its pid and echoes it to the end. It says
/// `listening` on stdout once connections can come.
const SERVER: &str = r#"import os, socket, sys, threading

def serve(conn):
    with conn:
        conn.sendall(b"hello from %d\n" % os.getpid())
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(64)
print("listening", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// A launch script in the shape of VS Code's legacy one: it reuses the
/// server a previous window started (as VS Code's finds its server still
/// running) or starts one with `--port=0`, which the helper rewrites to a
/// socket in the job's runtime directory, and prints the markers. It never
/// ends by itself, like VS Code's. `@ID@` names the window's lines.
const LAUNCH: &str = r#"echo "@ID@: running"
echo "job: $SLURM_JOB_ID, secrets: ${VSCODE_SLURM_NONCE:-none} ${VSCODE_SLURM_DOOR_KEY:-none} ${VSCODE_SLURM_RELAY_PORT:-none}"
STATE='@DIR@/home'
echo $$ >> "$STATE/shells"
SOCKET=$(cat "$STATE/server.sock" 2> /dev/null)
if ! { [ -S "$SOCKET" ] && kill -0 "$(cat "$STATE/server.pid")" 2> /dev/null; }; then
    LISTEN=--port=0
    SOCKET=${LISTEN#--socket-path=}
    exec 3< <(exec '@PYTHON@' '@DIR@/server.py' "$SOCKET" < /dev/null 2>> "$STATE/server.log")
    echo $! > "$STATE/server.pid"
    read -r _ <&3
    exec 3<&-
    echo "$SOCKET" > "$STATE/server.sock"
fi
echo "@ID@: start"
echo "exitCode==0=="
echo "listeningOn==$SOCKET=="
echo "@ID@: end"
while true; do sleep 180; done
"#;

/// A fake cluster of its own; dropping it cancels its jobs that still run.
pub struct Cluster {
    pub dir: PathBuf,
}

impl Cluster {
    pub fn new() -> Cluster {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        // Short: a runtime directory must leave room for the server's socket name.
        let dir = std::env::temp_dir().join(format!(
            "vscode-profile-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let cluster = Cluster { dir };
        for sub in ["bin", "jobs", "run", "home"] {
            std::fs::DirBuilder::new().mode(0o700).create(cluster.dir.join(sub)).unwrap();
        }
        std::fs::write(cluster.dir.join("next-id"), "101\n").unwrap();
        cluster.write("lib.sh", LIB, 0o644);
        cluster.write("server.py", SERVER, 0o644);
        cluster.write("batch-step", BATCH_STEP, 0o755);
        for (name, body) in [
            ("sbatch", SBATCH),
            ("srun", SRUN),
            ("squeue", SQUEUE),
            ("scontrol", SCONTROL),
            ("scancel", SCANCEL),
        ] {
            cluster.write(&format!("bin/{name}"), body, 0o755);
        }
        cluster
    }

    fn write(&self, name: &str, body: &str, mode: u32) {
        let path = self.dir.join(name);
        std::fs::write(&path, body.replace("@DIR@", &self.dir.to_string_lossy())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// `vscode-shim --profile PROFILE OPTIONS -- --time=10:00` against this
    /// cluster; it logs to `shim-PID.log` here. The fakes also come first on
    /// PATH, for the keeper's own squeue and scontrol.
    pub fn shim(&self, profile: &str, options: &[&str]) -> Shim {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.dir.join("bin")];
        paths.extend(std::env::split_paths(&path));
        let mut command = Command::new(env!("CARGO_BIN_EXE_vscode-shim"));
        command
            .args(["--profile", profile, "--helper"])
            .arg(helper())
            .arg("--log-file")
            .arg(self.dir.join("shim-%p.log"));
        for program in ["sbatch", "srun", "squeue", "scontrol", "scancel"] {
            command.arg(format!("--{program}")).arg(self.bin(program));
        }
        command
            .args(options)
            .args(["--", "--time=10:00"])
            .env("PATH", std::env::join_paths(paths).unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Shim::spawn(command, self.dir.clone())
    }

    /// The launch script VS Code would send a window; `id` marks its lines.
    pub fn launch_script(&self, id: &str) -> String {
        LAUNCH.replace("@ID@", id).replace("@DIR@", &self.dir.to_string_lossy()).replace("@PYTHON@", python())
    }

    /// The arguments of each call of the fake `program`, in order.
    pub fn calls(&self, program: &str) -> Vec<Vec<String>> {
        self.read("calls")
            .lines()
            .map(|line| line.split('\t').map(str::to_owned).collect::<Vec<_>>())
            .filter(|words| words[0] == program)
            .map(|words| words[1..].to_vec())
            .collect()
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    pub fn job_file(&self, id: u32, name: &str) -> String {
        self.read(&format!("jobs/{id}/{name}")).trim_end().to_owned()
    }

    pub fn state(&self, id: u32) -> String {
        self.job_file(id, "state")
    }

    /// The pids a file of the fake or the launch script lists, one a line.
    pub fn pids(&self, name: &str) -> Vec<i32> {
        self.read(name).lines().map(|line| line.trim().parse().unwrap()).collect()
    }

    fn job_pid(&self, id: &str, name: &str) -> Option<i32> {
        self.read(&format!("jobs/{id}/{name}")).trim().parse().ok()
    }

    pub fn runtime_dir(&self, id: u32) -> PathBuf {
        self.dir.join("run").join(id.to_string())
    }

    /// Waits until the keeper of job `id` has set the comments `want`, in
    /// this order (others may come between).
    pub fn wait_for_comments(&self, id: u32, want: &[&str]) {
        let deadline = Instant::now() + BOUND;
        loop {
            let comments = self.job_file(id, "comments");
            let mut rest = comments.lines();
            if want.iter().all(|w| rest.any(|line| line == *w)) {
                return;
            }
            assert!(Instant::now() < deadline, "job {id}'s comments never went {want:?}: {comments:?}");
            thread::sleep(Duration::from_millis(20)); // allow-sleep: the keeper's Comment reaches only a file (the fake scontrol's record).
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let Ok(jobs) = std::fs::read_dir(self.dir.join("jobs")) else { return };
        for job in jobs.flatten() {
            let id = job.file_name().to_string_lossy().into_owned();
            let _ = Command::new(self.bin("scancel")).arg(&id).status();
            // The batch step's last words land in the directory; let them before it goes.
            if let (Some(pid), false) = (self.job_pid(&id, "monitor"), job.path().join("ended").exists()) {
                if let Ok(monitor) = Pidfd::open(pid) {
                    monitor.wait(BOUND);
                }
            }
        }
        if thread::panicking() {
            eprintln!("the fake cluster stays for a look: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// python3 for the launch script's server; the system's first, since a
/// shim of a version manager may not work for another user.
fn python() -> &'static str {
    static PYTHON: OnceLock<&'static str> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let works =
            Command::new(python).arg("-c").arg("import socket").output().is_ok_and(|o| o.status.success());
        assert!(works, "the launch script's test server needs python3");
        python
    })
}

/// The `vscode-job-helper` of this build, next to `vscode-shim`. Cargo builds
/// only the shim package's binaries for its tests, so under cargo the helper
/// is built here too (once, with the same target directory and profile);
/// run without cargo, the test binary needs it built already.
pub fn helper() -> &'static Path {
    static HELPER: OnceLock<PathBuf> = OnceLock::new();
    HELPER.get_or_init(|| {
        let profile_dir = Path::new(env!("CARGO_BIN_EXE_vscode-shim")).parent().unwrap();
        let helper = profile_dir.join("vscode-job-helper");
        if let Some(cargo) = std::env::var_os("CARGO") {
            let mut command = Command::new(cargo);
            command
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "vscode-job-helper",
                    "--bin",
                    "vscode-job-helper",
                    "--target-dir",
                ])
                .arg(profile_dir.parent().unwrap())
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            match profile_dir.file_name().and_then(|name| name.to_str()) {
                Some("debug") => {}
                Some("release") => {
                    command.arg("--release");
                }
                Some(other) => {
                    command.args(["--profile", other]);
                }
                None => {}
            }
            let output = command.output().expect("run cargo to build vscode-job-helper");
            assert!(
                output.status.success(),
                "building vscode-job-helper failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(
            helper.is_file(),
            "{} is missing: build it first (cargo build -p vscode-job-helper, same CARGO_TARGET_DIR)",
            helper.display()
        );
        helper
    })
}

/// A process's end as an event: a pidfd, which works for processes that
/// are not our children too.
pub struct Pidfd {
    fd: OwnedFd,
    pub pid: i32,
}

impl Pidfd {
    pub fn open(pid: i32) -> std::io::Result<Pidfd> {
        // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Pidfd { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) }, pid })
    }

    /// Whether the process ended within `within`.
    pub fn wait(&self, within: Duration) -> bool {
        let mut poll = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(within.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one pollfd, valid for the call.
        unsafe { libc::poll(&mut poll, 1, ms) == 1 }
    }

    pub fn exited(&self) -> bool {
        self.wait(Duration::ZERO)
    }
}

/// What a pipe has said so far, and whether it has ended.
#[derive(Default)]
struct Said {
    text: Mutex<(String, bool)>,
    changed: Condvar,
}

impl Said {
    fn read_from(mut pipe: impl Read + Send + 'static) -> Arc<Said> {
        let said = Arc::new(Said::default());
        let writer = Arc::clone(&said);
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                let mut text = writer.text.lock().unwrap();
                text.0.push_str(&String::from_utf8_lossy(&buf[..n]));
                text.1 = n == 0;
                writer.changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        said
    }

    /// Waits until `found` finds something in the text so far.
    fn wait_for<T>(&self, what: &str, found: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + BOUND;
        let mut text = self.text.lock().unwrap();
        loop {
            if let Some(found) = found(&text.0) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!text.1 && !left.is_zero(), "{what} never came; got:\n{}", text.0);
            text = self.changed.wait_timeout(text, left).unwrap().0;
        }
    }

    fn wait_closed(&self) {
        let text = self.text.lock().unwrap();
        let (text, timeout) = self.changed.wait_timeout_while(text, BOUND, |text| !text.1).unwrap();
        assert!(!timeout.timed_out(), "the pipe is still open after {BOUND:?}; got:\n{}", text.0);
    }

    fn all(&self) -> String {
        self.text.lock().unwrap().0.clone()
    }
}

/// One window: a running `vscode-shim` with VS Code's end of its pipes.
pub struct Shim {
    child: Child,
    exited: Pidfd,
    stdin: Option<ChildStdin>,
    stdout: Arc<Said>,
    stderr: Arc<Said>,
    dir: PathBuf,
}

impl Shim {
    fn spawn(mut command: Command, dir: PathBuf) -> Shim {
        let mut child = command.spawn().unwrap();
        let exited = Pidfd::open(child.id() as i32).unwrap();
        let stdout = Said::read_from(child.stdout.take().unwrap());
        let stderr = Said::read_from(child.stderr.take().unwrap());
        let stdin = child.stdin.take();
        Shim { child, exited, stdin, stdout, stderr, dir }
    }

    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// VS Code closing the window.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// The first whole stdout line that starts with `prefix`, without its newline.
    pub fn stdout_line(&self, prefix: &str) -> String {
        let what = format!("a stdout line starting {prefix:?} (stderr: {})", self.stderr());
        self.stdout.wait_for(&what, |text| {
            text.split_inclusive('\n')
                .find(|line| line.starts_with(prefix) && line.ends_with('\n'))
                .map(|line| line.trim_end_matches('\n').to_owned())
        })
    }

    pub fn wait_for_stderr(&self, needle: &str) {
        self.stderr.wait_for(&format!("{needle:?} on stderr"), |text| text.contains(needle).then_some(()));
    }

    pub fn stdout(&self) -> String {
        self.stdout.all()
    }

    pub fn stderr(&self) -> String {
        self.stderr.all()
    }

    /// The shim's own lines on stderr.
    pub fn shim_lines(&self) -> Vec<String> {
        self.stderr().lines().filter(|l| l.starts_with("vscode-shim:")).map(str::to_owned).collect()
    }

    /// The job the window started in and the relay's port, from the shim's log.
    pub fn window(&self) -> (u32, u16) {
        let log = std::fs::read_to_string(self.dir.join(format!("shim-{}.log", self.child.id())))
            .expect("the shim's log");
        let line = log.lines().find_map(|l| l.split_once("relay listening on port ")).map(|(_, rest)| rest);
        let (port, job) = line
            .and_then(|rest| rest.split_once("; window started in job "))
            .unwrap_or_else(|| panic!("no window in the shim's log: {log}"));
        (job.trim().parse().unwrap(), port.parse().unwrap())
    }

    /// Waits for the shim to exit, and for its last output.
    pub fn wait_exit(&mut self) -> ExitStatus {
        assert!(self.exited.wait(BOUND), "the shim still runs after {BOUND:?}; stderr: {}", self.stderr());
        let status = self.child.wait().unwrap();
        self.stdout.wait_closed();
        self.stderr.wait_closed();
        status
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One connection through the relay at `port`, as VS Code's: reads the
/// server's greeting, sends 256 KiB, half-closes, and expects all of it back
/// and the server's half-close. Returns the pid the server greeted with.
pub fn exchange(port: u16, seed: u64) -> i32 {
    let payload = vscode_slurm_protocol::testing::pseudo_random(256 << 10, seed);
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    let pid = greeting
        .strip_prefix("hello from ")
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("not the test server's greeting: {greeting:?}"));
    let echoed = vscode_slurm_tests::echo_back(reader, stream, &payload);
    assert!(echoed == payload, "the echo differs: {} bytes back of {}", echoed.len(), payload.len());
    pid
}
