//! The processes under test: the real `vscode-shim` with a stand-in for
//! salloc, the real door (`vscode-job-helper door`), socat, and what /proc
//! says about their CPU and memory.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use vscode_slurm_protocol::door::DoorKey;
use vscode_slurm_protocol::{env, ControlMessage, Nonce};
use vscode_slurm_tests::events;

/// Plays salloc and srun for the shim. What the shim gives the job step in
/// its environment (nonce, door key, relay port) goes to the benchmark over
/// a unix socket (never on a command line); the benchmark starts
/// `vscode-job-helper door` with it in front of the server (here, or on c1
/// in the lab) and hands back the door's endpoint control line, which the
/// stand-in prints as the helper would. Then it runs the launch script on
/// its stdin, as the helper's shell would; stdin closing ends the "job".
const STAND_IN_SALLOC: &str = r#"#!/bin/bash
echo "salloc: Granted job allocation 1" >&2
endpoint=$(printf '%s %s %s\n' "$VSCODE_SLURM_NONCE" "$VSCODE_SLURM_DOOR_KEY" "$VSCODE_SLURM_RELAY_PORT" |
    socat -t 60 -T 60 - UNIX-CONNECT:@HANDOFF@)
if [ -z "$endpoint" ]; then
    echo "stand-in salloc: the benchmark started no door" >&2
    exit 1
fi
printf '%s\n' "$endpoint"
# The helper hides these from the launch script.
unset VSCODE_SLURM_NONCE VSCODE_SLURM_DOOR_KEY
exec /bin/bash
"#;

/// The stand-in salloc that hands the step's environment to `handoff`.
pub fn stand_in_salloc(handoff: &Path) -> String {
    STAND_IN_SALLOC.replace("@HANDOFF@", &handoff.display().to_string())
}

/// The launch script of a loopback session: the relay's port is all VS
/// Code would learn; the door's endpoint went to the shim before it.
const LOOPBACK_LAUNCH: &str = "echo \"listeningOn==$VSCODE_SLURM_RELAY_PORT==\"\nexec cat >/dev/null\n";

/// What the shim gave the job step, as the stand-in passed it on.
pub struct StepEnv {
    pub nonce: String,
    pub key_hex: String,
    pub relay_port: u16,
}

impl StepEnv {
    fn parse(line: &str) -> io::Result<StepEnv> {
        let mut words = line.split_whitespace();
        let (Some(nonce), Some(key_hex), Some(port)) = (words.next(), words.next(), words.next()) else {
            return Err(io::Error::other(format!(
                "the stand-in passed {} words, not 3",
                line.split_whitespace().count()
            )));
        };
        let relay_port = port.parse().map_err(|_| io::Error::other(format!("bad relay port {port:?}")))?;
        Ok(StepEnv { nonce: nonce.to_owned(), key_hex: key_hex.to_owned(), relay_port })
    }

    /// The session's door key, for the "door alone" clients (kept for the
    /// rest of the run: a handful of sessions per run).
    pub fn key(&self) -> io::Result<&'static DoorKey> {
        let key = DoorKey::parse(&self.key_hex).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Box::leak(Box::new(key)))
    }

    /// The line the door's wrapper on a lab host reads into its environment.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.nonce, self.key_hex, self.relay_port)
    }

    /// The door's address from its endpoint control line, checked against
    /// the session's nonce as the shim would.
    pub fn endpoint_of(&self, line: &str) -> io::Result<SocketAddr> {
        let nonce = Nonce::parse(&self.nonce).map_err(|e| io::Error::other(e.to_string()))?;
        match vscode_slurm_protocol::decode(&nonce, line.as_bytes()) {
            Some(ControlMessage::Endpoint(addr)) => Ok(addr),
            _ => Err(io::Error::other(format!("not the session's endpoint line: {line:?}"))),
        }
    }
}

/// Where the stand-in salloc passes the step's environment to the
/// benchmark: a unix socket the session's user alone may use.
pub struct Handoff {
    listener: UnixListener,
    path: PathBuf,
}

impl Handoff {
    pub fn bind(path: PathBuf) -> io::Result<Handoff> {
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        // Never blocks: `serve` accepts once a call is waiting, and a caller
        // that gave up meanwhile leaves an error, not a hang.
        listener.set_nonblocking(true)?;
        Ok(Handoff { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits (at most `wait`) for the stand-in, starts the door with what it
    /// passed (`start_door` returns the door and its endpoint line), and
    /// sends the stand-in that line.
    pub fn serve<T>(
        &self,
        wait: Duration,
        start_door: impl FnOnce(&StepEnv) -> io::Result<(T, String)>,
    ) -> io::Result<(StepEnv, T)> {
        if !events::readable_within(self.listener.as_fd(), Some(wait))? {
            return Err(io::Error::other(format!("the stand-in salloc did not call within {wait:?}")));
        }
        let (stream, _) = self.listener.accept()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let step = StepEnv::parse(&line)?;
        // On an error the stand-in reads nothing, says so and exits.
        let (door, endpoint_line) = start_door(&step)?;
        (&stream).write_all(format!("{}\n", endpoint_line.trim_end()).as_bytes())?;
        Ok((step, door))
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `<target>/release/vscode-job-helper` of the build this benchmark belongs to.
pub fn helper_binary() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // <target>/release/deps/relay-HASH
    let path = exe
        .ancestors()
        .nth(2)
        .map(|release| release.join("vscode-job-helper"))
        .ok_or_else(|| io::Error::other("the benchmark is not in <target>/release/deps"))?;
    if !path.exists() {
        return Err(io::Error::other(format!(
            "{} is missing: build it first (cargo build --release -p vscode-job-helper, same CARGO_TARGET_DIR)",
            path.display()
        )));
    }
    Ok(path)
}

/// A local door: `vscode-job-helper --bind-addr 127.0.0.1 door --to TARGET`
/// with the step's environment, serving until its stdin closes.
pub struct Door {
    child: Child,
    stdin: Option<ChildStdin>,
    pub endpoint: SocketAddr,
    pub relay: Relay,
}

impl Door {
    /// The door and its endpoint control line.
    pub fn local(step: &StepEnv, target: SocketAddr, log: &Path) -> io::Result<(Door, String)> {
        let mut child = Command::new(helper_binary()?)
            .args(["--bind-addr", "127.0.0.1", "door", "--to", &target.to_string()])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(env::NONCE, &step.nonce)
            .env(env::DOOR_KEY, &step.key_hex)
            .env(env::RELAY_PORT, step.relay_port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(log)?)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let relay = Relay { pid: child.id(), port: 0, forks: false };
        let mut door = Door { child, stdin, endpoint: SocketAddr::from(([0, 0, 0, 0], 0)), relay };
        let line = rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
            io::Error::other(format!(
                "the door printed no endpoint line: {}",
                fs::read_to_string(log).unwrap_or_default().trim()
            ))
        })?;
        door.endpoint = step.endpoint_of(&line)?;
        door.relay.port = door.endpoint.port();
        Ok((door, line))
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        // Closing stdin ends the door, as the end of its window does.
        end_by_closing_stdin(&mut self.child, self.stdin.take(), Duration::from_secs(5));
    }
}

/// Closes `stdin` (how both the shim and the door learn their session is
/// over), gives `child` `within` to leave by itself, then kills it.
fn end_by_closing_stdin(child: &mut Child, stdin: Option<ChildStdin>, within: Duration) {
    drop(stdin);
    events::exit_or_kill(child, within);
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only returns a number.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime, stime, cutime, cstime of a process (all its threads), in ticks.
pub fn cpu_ticks(pid: u32) -> io::Result<[u64; 4]> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields start after its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| io::Error::other("bad stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 14 (utime) of the man page is index 11 after the name and state.
    let field =
        |i: usize| fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(|| io::Error::other("bad stat"));
    Ok([field(11)?, field(12)?, field(13)?, field(14)?])
}

/// The parent pid from /proc/PID/stat.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return vec![] };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_of(p) == Some(pid))
        .collect()
}

/// CPU seconds the whole machine spent busy (not idle, not waiting for I/O)
/// so far, over all cores: whatever ran, the client, the server and the
/// relay included (and anything else on the machine, hence the load figures
/// next to the results).
pub fn machine_busy_secs() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(cpu) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else { return 0.0 };
    let ticks: Vec<u64> = cpu.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal; guest time is already in user.
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    busy as f64 / clock_ticks_per_second()
}

/// The machine's online cores.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// /proc/loadavg's 1-, 5- and 15-minute load averages.
pub fn load_average() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

pub fn vm_rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

/// A relay process (the shim, the door, socat) as /proc shows it: the
/// benchmark charges its CPU and memory to the variants that pass it.
#[derive(Debug, Clone, Copy)]
pub struct Relay {
    pub pid: u32,
    pub port: u16,
    /// Forking relays (socat) count their children, live and reaped.
    pub forks: bool,
}

impl Relay {
    /// CPU ticks used so far. For a forking relay, the parent's own and
    /// reaped children's plus those of children still running.
    pub fn ticks(&self) -> u64 {
        let own = cpu_ticks(self.pid).map_or(0, |t| t.iter().sum());
        if !self.forks {
            return own;
        }
        own + children_of(self.pid)
            .into_iter()
            .filter_map(|c| cpu_ticks(c).ok())
            .map(|t| t.iter().sum::<u64>())
            .sum::<u64>()
    }

    /// Waits (bounded) until a forking relay has reaped every child, so
    /// their time is in its counters.
    pub fn settle(&self) {
        if !self.forks {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !children_of(self.pid).is_empty() && Instant::now() < deadline {
            // A pidfd tells of a child's exit, not of its parent reaping it.
            // allow-sleep: another process's reaping of its children announces nothing
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory, summed over a forking relay's processes.
    pub fn rss_kib(&self) -> u64 {
        let own = vm_rss_kib(self.pid).unwrap_or(0);
        if !self.forks {
            return own;
        }
        own + children_of(self.pid).into_iter().filter_map(|c| vm_rss_kib(c).ok()).sum::<u64>()
    }

    pub fn processes(&self) -> usize {
        if self.forks {
            1 + children_of(self.pid).len()
        } else {
            1
        }
    }
}

/// The real `vscode-shim` binary in a session whose "job" is the stand-in
/// above, relaying its port through a real door to the server.
pub struct Shim {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
    pub relay: Relay,
}

/// A loopback session: the shim, the door it reaches the server through,
/// and the session's door key (for the "door alone" clients). The shim is
/// dropped first, ending the session as VS Code does; then the door.
pub struct LocalSession {
    pub shim: Shim,
    pub door: Door,
    pub key: &'static DoorKey,
}

impl LocalSession {
    pub fn start(target: SocketAddr) -> io::Result<LocalSession> {
        let dir = std::env::temp_dir().join(format!("relay-bench-{}-{}", std::process::id(), target.port()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let handoff = Handoff::bind(dir.join("handoff.sock"))?;
        let salloc = dir.join("salloc");
        fs::write(&salloc, stand_in_salloc(handoff.path()))?;
        fs::set_permissions(&salloc, fs::Permissions::from_mode(0o755))?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_vscode-shim"))
            // A job of its own through the stand-in salloc, not a profile's.
            .arg("--no-profile")
            .arg("--salloc")
            .arg(&salloc)
            .args(["--scancel", "/bin/true", "--squeue", "/bin/true", "--scontrol", "/bin/true"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.join("stderr"))?)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
        let relay = Relay { pid: child.id(), port: 0, forks: false };
        let mut shim = Shim { child, stdin, dir: dir.clone(), relay };
        if let Some(stdin) = shim.stdin.as_mut() {
            stdin.write_all(LOOPBACK_LAUNCH.as_bytes())?;
            stdin.flush()?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps reading so the shim never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let shim_log = || fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        let (step, door) = handoff
            .serve(Duration::from_secs(10), |step| Door::local(step, target, &dir.join("door-stderr")))
            .map_err(|e| io::Error::other(format!("{e}; the shim said: {}", shim_log().trim())))?;
        shim.relay.port = loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => {
                    if let Some(port) = line.strip_prefix("listeningOn==").and_then(|r| r.strip_suffix("=="))
                    {
                        break port.parse().map_err(|_| io::Error::other(format!("bad line {line:?}")))?;
                    }
                }
                Err(_) => return Err(io::Error::other(format!("the shim named no port: {}", shim_log()))),
            }
        };
        Ok(LocalSession { shim, door, key: step.key()? })
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        // Closing stdin ends the session the way VS Code does.
        end_by_closing_stdin(&mut self.child, self.stdin.take(), Duration::from_secs(10));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// socat as the issue names it: a process per connection, backlog 1024.
pub struct Socat {
    child: Child,
    /// The listening socat as this process sees it (not `child` when it
    /// runs through `labctl exec`).
    pub relay: Relay,
}

impl Socat {
    /// `command` runs socat (directly, or through `labctl exec` for the lab);
    /// `find` names candidate pids of the listening socat as we see them.
    pub fn start(mut command: Command, port: u16, find: impl Fn(&Child) -> Vec<u32>) -> io::Result<Socat> {
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(io::Error::other(format!("socat exited ({status}): {err}")));
            }
            if let Some(pid) = find(&child).into_iter().find(|&p| listens(p, port)) {
                return Ok(Socat { child, relay: Relay { pid, port, forks: true } });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(io::Error::other("socat did not start listening"));
            }
            // A probing connection would be served by a fork of socat's, and
            // counted against it.
            // allow-sleep: another process (perhaps on a lab host) starting to listen announces nothing
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn local(target: SocketAddr) -> io::Result<Socat> {
        let port = crate::work::free_port()?;
        let mut command = Command::new("socat");
        command.arg(listen_spec(port)).arg(connect_spec(target));
        Socat::start(command, port, |c| vec![c.id()])
    }
}

/// socat's listening address: the issue's options, bound to loopback, with
/// Nagle off like every other socket in the benchmark (the client, the
/// server and the shim all set TCP_NODELAY), so the round trips compare
/// relays, not Nagle's algorithm.
pub fn listen_spec(port: u16) -> String {
    format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,backlog=1024,reuseaddr,nodelay")
}

/// socat's address towards the server, Nagle off as above.
pub fn connect_spec(target: SocketAddr) -> String {
    format!("TCP:{target},nodelay")
}

/// Whether process `pid` has a socket listening on `port` (by inode).
pub fn listens(pid: u32, port: u16) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    let inodes: Vec<String> = fds
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .collect();
    let Ok(table) = fs::read_to_string(format!("/proc/{pid}/net/tcp")) else { return false };
    let port_hex = format!(":{port:04X}");
    table.lines().skip(1).any(|row| {
        let f: Vec<&str> = row.split_whitespace().collect();
        f.len() > 9 && f[1].ends_with(&port_hex) && f[3] == "0A" && inodes.iter().any(|i| i == f[9])
    })
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.relay.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
