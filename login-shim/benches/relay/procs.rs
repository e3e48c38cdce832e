//! The relays under test as processes: the real `vscode-shim` with a
//! stand-in for salloc, socat, and what /proc says about their CPU and memory.

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Plays salloc for the shim: reports the job granted, names the server
/// with the session's nonce as the helper would, then waits for stdin to
/// close (the shim closing it ends the "job").
const STAND_IN_SALLOC: &str = r#"#!/bin/bash
echo "salloc: Granted job allocation 1" >&2
printf '@@vscode-slurm@@ %s endpoint %s\n' "$VSCODE_SLURM_NONCE" "$BENCH_TARGET"
echo "listeningOn==$VSCODE_SLURM_RELAY_PORT=="
exec cat >/dev/null
"#;

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

/// A relay process whose CPU the benchmark charges to it.
pub trait Relay {
    fn pid(&self) -> u32;
    fn port(&self) -> u16;
    /// Forking relays (socat) count their children, live and reaped.
    fn forks(&self) -> bool;

    /// CPU ticks used so far. For a forking relay, the parent's own and
    /// reaped children's plus those of children still running.
    fn ticks(&self) -> u64 {
        let own = cpu_ticks(self.pid()).map_or(0, |t| t.iter().sum());
        if !self.forks() {
            return own;
        }
        own + children_of(self.pid())
            .into_iter()
            .filter_map(|c| cpu_ticks(c).ok())
            .map(|t| t.iter().sum::<u64>())
            .sum::<u64>()
    }

    /// Waits (bounded) until a forking relay has reaped every child, so
    /// their time is in its counters.
    fn settle(&self) {
        if !self.forks() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !children_of(self.pid()).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory, summed over a forking relay's processes.
    fn rss_kib(&self) -> u64 {
        let own = vm_rss_kib(self.pid()).unwrap_or(0);
        if !self.forks() {
            return own;
        }
        own + children_of(self.pid()).into_iter().filter_map(|c| vm_rss_kib(c).ok()).sum::<u64>()
    }

    fn processes(&self) -> usize {
        if self.forks() {
            1 + children_of(self.pid()).len()
        } else {
            1
        }
    }
}

/// The real `vscode-shim` binary in a session whose "job" is the stand-in
/// above, relaying its port to `target`.
pub struct Shim {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    dir: PathBuf,
}

impl Shim {
    pub fn start(target: SocketAddr) -> io::Result<Shim> {
        let dir = std::env::temp_dir().join(format!("relay-bench-{}-{}", std::process::id(), target.port()));
        fs::create_dir_all(&dir)?;
        let salloc = dir.join("salloc");
        fs::write(&salloc, STAND_IN_SALLOC)?;
        fs::set_permissions(&salloc, fs::Permissions::from_mode(0o755))?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_vscode-shim"))
            // A job of its own through the stand-in salloc, not a profile's.
            .arg("--no-profile")
            .arg("--salloc")
            .arg(&salloc)
            .args(["--scancel", "/bin/true", "--squeue", "/bin/true", "--scontrol", "/bin/true"])
            .env("BENCH_TARGET", target.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.join("stderr"))?)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps reading so the shim never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let port = loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => {
                    if let Some(port) = line.strip_prefix("listeningOn==").and_then(|r| r.strip_suffix("=="))
                    {
                        break port.parse().map_err(|_| io::Error::other(format!("bad line {line:?}")))?;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let stderr = fs::read_to_string(dir.join("stderr")).unwrap_or_default();
                    return Err(io::Error::other(format!("the shim named no port: {stderr}")));
                }
            }
        };
        Ok(Shim { child, stdin, port, dir })
    }
}

impl Relay for Shim {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn forks(&self) -> bool {
        false
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        // Closing stdin ends the session the way VS Code does.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// socat as the issue names it: a process per connection, backlog 1024.
pub struct Socat {
    child: Child,
    port: u16,
    /// The listening socat as this process sees it (not `child` when it
    /// runs through `labctl exec`).
    pid: u32,
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
                return Ok(Socat { child, port, pid });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(io::Error::other("socat did not start listening"));
            }
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
fn listens(pid: u32, port: u16) -> bool {
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

impl Relay for Socat {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn forks(&self) -> bool {
        true
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
