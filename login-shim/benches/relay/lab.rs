//! The benchmark on the lab cluster's real path: a Remote-SSH session
//! (the emulator on `laptop`, ssh, sshd and `vscode-shim` on `login`) whose
//! "job" is the stand-in salloc (`procs`): it hands the session's nonce,
//! door key and relay port to this benchmark, which starts the real door
//! (`vscode-job-helper door`) with them on `c1` in front of the benchmark's
//! server there, and passes the door's endpoint line back to the shim
//! through the stand-in's stdout, as the helper would. Two client
//! placements are measured:
//!
//! - `lab login→c1`: the client on `login` as the session's user, through
//!   the shim's relay port across the lab network to the door on `c1`. This
//!   is the session's path exactly as VS Code's traffic takes it, without
//!   ssh's encryption and single-threaded channel multiplexing, which would
//!   otherwise set every number.
//! - `lab laptop→ssh→c1`: the client on `laptop` through the session's own
//!   `ssh -D` SOCKS port, which is how VS Code itself connects: what a user
//!   sees end to end (ssh's cost included, the same for all variants).
//!
//! "direct" is the server's own address on `c1` (it listens on the node's
//! lab address so that it can be reached without the door); "door alone"
//! is the door's address, the client proving the session's key itself;
//! socat runs on `login` as the user and goes straight to the server. The
//! shim's, the door's and socat's CPU and memory are read from /proc of this
//! (root) namespace; the lab's processes are found by their pid namespace.
//!
//! Session set-up is measured on separate sessions with real Slurm, the
//! stock legacy launch script and test server, with timestamps added (see
//! `setup_run`).

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vscode_slurm_tests::{remote_ssh_client_argv, wait_until, Lab, LineProcess};

use crate::procs::{self, Handoff, Relay, Socat, StepEnv};
use crate::report::{Footprint, PathReport, SetupRun};
use crate::work::Route;
use crate::{Config, Runner, Way};

pub const USER: &str = "alice";
/// Where [`prepare`] puts the benchmark's binary in the user's homes.
const BENCH_IN_HOME: &str = ".bench-relay-bin/relay";
const OPEN_TIMEOUT: Duration = Duration::from_secs(90);

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Runs the `client` role of this binary on a lab host as the user.
pub struct LabRunner<'a> {
    pub lab: &'a Lab,
    pub host: &'static str,
    pub exe: String,
}

impl LabRunner<'_> {
    fn client(&self, route: Route, args: &[&str]) -> io::Result<String> {
        let arg = route.to_arg();
        let mut argv = vec![self.exe.as_str(), "client", "--route", arg.as_str()];
        argv.extend_from_slice(args);
        let mut child = self
            .lab
            .command(Some(USER), self.host, &argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // The door key goes on stdin, never on a command line.
        if let (Some(key), Some(mut stdin)) = (route.door_key, child.stdin.take()) {
            writeln!(stdin, "{}", key.as_hex())?;
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || stdout.starts_with("error") {
            return Err(io::Error::other(format!(
                "client on {} failed: {stdout} {}",
                self.host,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(stdout)
    }
}

fn parse<T: std::str::FromStr>(word: Option<&str>) -> io::Result<T> {
    word.and_then(|w| w.parse().ok()).ok_or_else(|| io::Error::other("unexpected client output"))
}

impl Runner for LabRunner<'_> {
    fn bulk(&self, route: Route, bytes: u64) -> io::Result<f64> {
        let out = self.client(route, &["--test", "bulk", "--bytes", &bytes.to_string()])?;
        parse(out.strip_prefix("bulk "))
    }
    fn ping_pong(&self, route: Route, count: usize) -> io::Result<Vec<u64>> {
        let out = self.client(route, &["--test", "ping", "--count", &count.to_string()])?;
        let rest = out.strip_prefix("ping ").ok_or_else(|| io::Error::other("unexpected client output"))?;
        rest.split_whitespace().map(|w| parse(Some(w))).collect()
    }
    fn burst(&self, route: Route, conns: usize, rounds: usize) -> io::Result<(f64, usize)> {
        let out = self.client(
            route,
            &["--test", "burst", "--conns", &conns.to_string(), "--rounds", &rounds.to_string()],
        )?;
        let mut words = out.strip_prefix("burst ").unwrap_or("").split_whitespace();
        Ok((parse(words.next())?, parse(words.next())?))
    }
    fn setup(&self, route: Route, count: usize) -> io::Result<Vec<u64>> {
        let out = self.client(route, &["--test", "setup", "--count", &count.to_string()])?;
        let rest = out.strip_prefix("setup ").ok_or_else(|| io::Error::other("unexpected client output"))?;
        rest.split_whitespace().map(|w| parse(Some(w))).collect()
    }
}

/// Pids (as this namespace numbers them) of processes called `comm` on `host`.
fn lab_pids(lab: &Lab, host: &str, comm: &str) -> Vec<u32> {
    let Ok(init) = fs::read_to_string(lab.dir.join("pids").join(host)) else { return vec![] };
    let Ok(ns) = fs::read_link(format!("/proc/{}/ns/pid", init.trim())) else { return vec![] };
    let Ok(entries) = fs::read_dir("/proc") else { return vec![] };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
        .filter(|pid| fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|n| n == ns))
        .collect()
}

fn write_owned(path: &Path, text: &str, mode: u32, owner: (u32, u32)) -> io::Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    nix::unistd::chown(path, Some(owner.0.into()), Some(owner.1.into())).map_err(io::Error::from)
}

/// The launch script of the measured session, run by the stand-in salloc
/// on `login` once the door on `c1` is up and the shim knows it: VS Code
/// is told the relay's port. Stays until the session's stdin closes.
const SESSION_TEMPLATE: &str = r#"# The relay benchmark's launch script: the server and its door are
# already up on c1, the stand-in salloc printed the door's endpoint line.
echo "@ID@: running"
echo "@ID@: start"
echo "exitCode==0=="
echo "listeningOn==$VSCODE_SLURM_RELAY_PORT=="
echo "@ID@: end"
exec cat >/dev/null
"#;

/// Starts the door on a lab host as the session's user: the first line of
/// stdin is the step's environment (never on a command line), the rest is
/// the door's stdin, whose end ends it. `$1` is the address to listen on,
/// `$2` the server.
const DOOR_ON_HOST: &str = r#"IFS=' ' read -r VSCODE_SLURM_NONCE VSCODE_SLURM_DOOR_KEY VSCODE_SLURM_RELAY_PORT || exit 1
export VSCODE_SLURM_NONCE VSCODE_SLURM_DOOR_KEY VSCODE_SLURM_RELAY_PORT
exec vscode-job-helper --bind-addr "$1" door --to "$2"
"#;

/// The stock legacy launch script with timestamps around the test server's
/// start, reported as extra `key==value==` lines between the markers.
fn timed_legacy_template() -> Result<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scripts/legacy.sh");
    let stock = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = String::new();
    let mut found = [false; 3];
    for line in stock.lines() {
        if line.starts_with("\"$SERVER_SCRIPT\" --start-server") {
            out.push_str("BENCH_SERVER_START=$(date +%s.%N)\n");
            found[0] = true;
        }
        if line.starts_with("if [[ -z \"$LISTENING_ON\" ]]; then") {
            out.push_str("BENCH_SERVER_UP=$(date +%s.%N)\n");
            found[1] = true;
        }
        out.push_str(line);
        out.push('\n');
        if line == "echo \"exitCode==0==\"" {
            out.push_str("echo \"benchServerStart==$BENCH_SERVER_START==\"\n");
            out.push_str("echo \"benchServerUp==$BENCH_SERVER_UP==\"\n");
            found[2] = true;
        }
    }
    if found != [true; 3] {
        return Err(format!(
            "{} changed shape: cannot add the set-up timestamps ({found:?})",
            path.display()
        ));
    }
    Ok(out)
}

/// Starts the helper as srun would, saying when on stderr (which reaches
/// the client through salloc, the shim and ssh; stdout is VS Code's stream).
const HELPER_WRAPPER: &str =
    "#!/bin/sh\necho \"bench-helper-start $(date +%s.%N)\" >&2\nexec vscode-job-helper \"$@\"\n";

struct Files {
    session_template: &'static str,
    setup_template: &'static str,
    helper: String,
    /// The measured session's RemoteCommand: the shim with the stand-in salloc.
    shim_command: String,
    /// The stand-in's handoff socket, as this namespace sees it.
    handoff: PathBuf,
    owner: (u32, u32),
}

fn prepare(lab: &Lab) -> Result<Files, String> {
    let home = lab.dir.join("home").join(USER);
    let laptop_home = lab.dir.join("laptop-home").join(USER);
    let meta = fs::metadata(&home).map_err(|e| format!("{}: {e}", home.display()))?;
    let owner = (meta.uid(), meta.gid());
    let dir = home.join(".bench-relay");
    let in_lab = format!("/home/{USER}/.bench-relay");
    let result: io::Result<()> = (|| {
        fs::create_dir_all(&dir)?;
        nix::unistd::chown(&dir, Some(owner.0.into()), Some(owner.1.into())).map_err(io::Error::from)?;
        // The handoff socket lives here: the session's user's alone.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        write_owned(&dir.join("helper"), HELPER_WRAPPER, 0o755, owner)?;
        let salloc = procs::stand_in_salloc(Path::new(&format!("{in_lab}/handoff.sock")));
        write_owned(&dir.join("salloc"), &salloc, 0o755, owner)?;
        write_owned(&laptop_home.join("bench-relay-session.sh"), SESSION_TEMPLATE, 0o644, owner)?;
        // The benchmark's own binary runs the client and server roles on lab
        // hosts, whose /tmp (and so a build under it) is their own: a copy in
        // each home, at the same path on every host.
        let exe = std::env::current_exe()?;
        for home in [&home, &laptop_home] {
            let copy = home.join(BENCH_IN_HOME);
            fs::create_dir_all(copy.parent().unwrap_or(home))?;
            fs::copy(&exe, &copy)?;
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
            nix::unistd::chown(&copy, Some(owner.0.into()), Some(owner.1.into())).map_err(io::Error::from)?;
        }
        Ok(())
    })();
    result.map_err(|e| format!("preparing the lab files: {e}"))?;
    let timed = timed_legacy_template()?;
    write_owned(&laptop_home.join("bench-relay-setup.sh"), &timed, 0o644, owner)
        .map_err(|e| e.to_string())?;
    Ok(Files {
        session_template: "bench-relay-session.sh",
        setup_template: "bench-relay-setup.sh",
        helper: format!("{in_lab}/helper"),
        shim_command: format!(
            "vscode-shim --no-profile --salloc {in_lab}/salloc \
             --scancel /bin/true --squeue /bin/true --scontrol /bin/true"
        ),
        handoff: dir.join("handoff.sock"),
        owner,
    })
}

fn client_argv(template: &str, remote_command: Option<&str>) -> Vec<String> {
    let mut argv: Vec<String> = remote_ssh_client_argv(template).map(str::to_owned).to_vec();
    if let Some(rc) = remote_command {
        argv.extend(["--ssh-option".to_owned(), format!("RemoteCommand={rc}")]);
    }
    argv
}

fn spawn_client(lab: &Lab, argv: &[String]) -> LineProcess {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    lab.spawn(Some(USER), "laptop", &argv)
}

fn expect(client: &mut LineProcess, what: &str, prefix: &str) -> Result<String, String> {
    let line = client.expect_line(what, OPEN_TIMEOUT, |l| {
        l.starts_with(prefix) || l.starts_with("error") || l.starts_with("ssh-exited")
    });
    if line.starts_with(prefix) {
        Ok(line)
    } else {
        Err(format!(
            "session failed: {line}\nstdout:\n{}\nstderr:\n{}",
            client.stdout_seen.join("\n"),
            client.stderr_seen.join("\n")
        ))
    }
}

fn result_value(client: &LineProcess, key: &str) -> Option<String> {
    let prefix = format!("result {key}=");
    client.stdout_seen.iter().find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
}

fn close(mut client: LineProcess, lab: &Lab) {
    client.send("close");
    let _ = client.expect_line("`closed`", Duration::from_secs(40), |l| l.starts_with("closed"));
    wait_until(
        "the user's jobs to leave the queue",
        Duration::from_secs(60),
        || lab.sh_ok(None, "login", &format!("squeue -h -u {USER} -o %i")),
        |q| q.trim().is_empty(),
    );
}

/// A lab host's address on the cluster network, from the lab's hosts file.
pub fn host_ip(lab: &Lab, host: &str) -> Result<IpAddr, String> {
    let hosts = lab.read("etc/hosts");
    hosts
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            let ip = words.next()?;
            words.any(|w| w == host).then(|| ip.parse().ok()).flatten()
        })
        .ok_or_else(|| format!("{host} is not in {}/etc/hosts", lab.dir.display()))
}

/// Starts the door on `host` as the user with the step's environment, in
/// front of `server`; returns it (its stdin's end ends it) and its endpoint
/// line.
fn start_door(
    lab: &Lab,
    host: &str,
    bind: IpAddr,
    server: SocketAddr,
    step: &StepEnv,
) -> io::Result<(LineProcess, String)> {
    let (bind, server) = (bind.to_string(), server.to_string());
    let mut door = lab.spawn(Some(USER), host, &["bash", "-c", DOOR_ON_HOST, "bench-door", &bind, &server]);
    door.send(&step.line());
    let line =
        door.expect_line("the door's endpoint line", OPEN_TIMEOUT, |l| l.starts_with("@@vscode-slurm@@"));
    Ok((door, line))
}

/// Ends a process started with `lab.spawn` by closing its stdin, as the
/// server and the door expect.
fn end(mut process: LineProcess, what: &str) {
    process.close_stdin();
    if process.wait(Duration::from_secs(10)).is_none() {
        eprintln!("lab: the {what} did not end when its stdin closed; killed");
    }
}

pub fn run(cfg: &Config) -> Result<(Vec<PathReport>, Vec<SetupRun>, crate::proxy::ProxyReport), String> {
    let exe = format!("/home/{USER}/{BENCH_IN_HOME}");
    let lab_dir = std::env::var("VSCODE_SLURM_LAB").unwrap_or_else(|_| "/var/tmp/vscode-slurm-lab".into());
    if !PathBuf::from(&lab_dir).join("pids/head").exists() {
        return Err(format!("the lab at {lab_dir} is not up (tests/bench-relay brings one up)"));
    }
    let lab = Lab::get();
    let files = prepare(&lab)?;
    let c1 = host_ip(&lab, "c1")?;

    // On c1's lab address, so that "direct" reaches it from login without the door.
    let host_arg = format!("--host={c1}");
    let mut server_process = lab.spawn(Some(USER), "c1", &[exe.as_str(), "serve", &host_arg, "--port=0"]);
    let line =
        server_process.expect_line("`bench server at`", OPEN_TIMEOUT, |l| l.starts_with("bench server at "));
    let server: SocketAddr = line
        .trim_start_matches("bench server at ")
        .parse()
        .map_err(|_| format!("bad server line {line:?}"))?;

    eprintln!("lab: opening a session whose stand-in salloc gets a door on c1");
    let handoff = Handoff::bind(files.handoff.clone()).map_err(|e| format!("the handoff socket: {e}"))?;
    nix::unistd::chown(handoff.path(), Some(files.owner.0.into()), Some(files.owner.1.into()))
        .map_err(|e| format!("the handoff socket: {e}"))?;
    let mut session = spawn_client(&lab, &client_argv(files.session_template, Some(&files.shim_command)));
    let (step, door_process) =
        match handoff.serve(OPEN_TIMEOUT, |step| start_door(&lab, "c1", c1, server, step)) {
            Ok(started) => started,
            Err(e) => {
                session.drain_stderr();
                return Err(format!("no door for the session: {e}\n{}", session.stderr_seen.join("\n")));
            }
        };
    drop(handoff);
    let door_line = door_process.stdout_seen.last().cloned().unwrap_or_default();
    let endpoint = step.endpoint_of(&door_line).map_err(|e| e.to_string())?;
    let key = step.key().map_err(|e| e.to_string())?;
    let first = expect(&mut session, "`session`", "session ")?;
    let socks: u16 = first
        .rsplit_once("socks=127.0.0.1:")
        .and_then(|(_, p)| p.trim().parse().ok())
        .ok_or_else(|| format!("no SOCKS port in {first:?}"))?;
    let listening = expect(&mut session, "`result listeningOn=`", "result listeningOn=")?;
    let relay_port: u16 = listening
        .trim_start_matches("result listeningOn=")
        .parse()
        .map_err(|_| format!("bad listeningOn: {listening}"))?;
    expect(&mut session, "`ready`", "ready")?;
    let shim_pids = lab_pids(&lab, "login", "vscode-shim");
    let [shim_pid] = shim_pids[..] else {
        return Err(format!("expected one vscode-shim on login, found {shim_pids:?}"));
    };
    // /proc/PID/comm holds 15 bytes of the name.
    let door_pid = lab_pids(&lab, "c1", "vscode-job-help")
        .into_iter()
        .find(|&pid| procs::listens(pid, endpoint.port()))
        .ok_or_else(|| format!("no vscode-job-helper on c1 listens on {endpoint}"))?;
    // Seen from this namespace, as /proc here numbers them.
    let shim = Relay { pid: shim_pid, port: relay_port, forks: false };
    let door = Relay { pid: door_pid, port: endpoint.port(), forks: false };
    eprintln!(
        "lab: server {server} on c1 behind door {endpoint} (pid {door_pid}), relay port {relay_port} \
         (shim pid {shim_pid}), SOCKS port {socks}"
    );

    // Below the ephemeral range, so no outgoing connection holds it.
    let socat_port = 20_000 + (std::process::id() % 12_000) as u16;
    let spec = procs::listen_spec(socat_port);
    let target = procs::connect_spec(server);
    let socat =
        Socat::start(lab.command(Some(USER), "login", &["socat", &spec, &target]), socat_port, |_| {
            lab_pids(&lab, "login", "socat")
        })
        .map_err(|e| format!("socat on login: {e}"))?;

    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let proxy = local(socks);
    let ways = |to: &dyn Fn(SocketAddr) -> Route| -> [Way; crate::N] {
        [
            Way { route: to(server), relay: None, door: None },
            Way { route: to(local(relay_port)), relay: Some(shim), door: Some(door) },
            Way { route: to(endpoint).through_door(key), relay: None, door: Some(door) },
            Way { route: to(local(socat_port)), relay: Some(socat.relay), door: None },
        ]
    };
    let mut paths = Vec::new();

    let on_login = LabRunner { lab: &lab, host: "login", exe: exe.clone() };
    let measured = crate::measure(cfg, &on_login, ways(&Route::tcp), "lab login→c1");
    eprintln!("lab: footprint with {} idle connections over {:?}", cfg.hold_conns, cfg.idle);
    let footprint = crate::footprint(cfg, shim, door, socat.relay, |port| {
        let route = Route::tcp(local(port)).to_arg();
        let count = cfg.hold_conns.to_string();
        let argv =
            [exe.as_str(), "client", "--route", route.as_str(), "--test", "hold", "--count", count.as_str()];
        let mut holder = lab.spawn(Some(USER), "login", &argv);
        let line = holder.expect_line("`held`", Duration::from_secs(30), |l| {
            l.starts_with("held") || l.starts_with("error")
        });
        if line.starts_with("held") {
            Ok(holder)
        } else {
            Err(io::Error::other(line))
        }
    })
    .map_err(|e| format!("lab footprint: {e}"))
    .map(|fp| Footprint { fresh: false, ..fp })?;
    paths.push(PathReport {
        name: "lab login→c1".into(),
        description:
            "client on login as the user → relay port on login → door on c1 → server on c1 (lab network)"
                .into(),
        measured,
        footprint: Some(footprint),
    });

    let on_laptop = LabRunner { lab: &lab, host: "laptop", exe: exe.clone() };
    let measured =
        crate::measure(cfg, &on_laptop, ways(&|target| Route::socks(proxy, target)), "lab laptop→ssh→c1");
    paths.push(PathReport {
        name: "lab laptop→ssh→c1".into(),
        description:
            "client on laptop → the session's ssh -D SOCKS port → sshd on login → (relay) → (door) → c1: \
                      VS Code's own path"
                .into(),
        measured,
        footprint: None,
    });
    drop(socat);
    close(session, &lab);
    end(door_process, "door");
    end(server_process, "server");

    eprintln!("lab: the proxy host kind against ssh straight to the login node");
    let proxy = crate::proxy::run(cfg, &lab, &exe)?;

    let mut setup = Vec::new();
    for i in 0..cfg.setup_runs {
        eprintln!("lab: session set-up {}/{}", i + 1, cfg.setup_runs);
        setup.push(setup_run(&lab, &files)?);
    }
    Ok((paths, setup, proxy))
}

/// One stock session (legacy launch script, test server) with timestamps:
/// ssh start and `listeningOn` arrival here, the helper's start from its
/// wrapper, the test server's launch and first log line from the script.
/// All clocks are this machine's one realtime clock.
fn setup_run(lab: &Lab, files: &Files) -> Result<SetupRun, String> {
    let remote_command = format!("vscode-shim --helper {} -- --time=10", files.helper);
    let argv = client_argv(files.setup_template, Some(&remote_command));
    let ssh_start = now_secs();
    let mut client = spawn_client(lab, &argv);
    expect(&mut client, "`result listeningOn=`", "result listeningOn=")?;
    let listening_at = now_secs();
    expect(&mut client, "`ready`", "ready")?;
    client.drain_stderr();
    let helper_start: f64 = client
        .stderr_seen
        .iter()
        .find_map(|l| l.strip_prefix("bench-helper-start ")?.trim().parse().ok())
        .ok_or_else(|| {
            format!("the helper wrapper's timestamp never arrived:\n{}", client.stderr_seen.join("\n"))
        })?;
    let stamp = |key: &str| -> Result<f64, String> {
        result_value(&client, key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {key} from the launch script"))
    };
    let (server_start, server_up) = (stamp("benchServerStart")?, stamp("benchServerUp")?);
    close(client, lab);
    let helper_to_listening = listening_at - helper_start;
    let server_own = server_up - server_start;
    Ok(SetupRun {
        ssh_to_helper_ms: (helper_start - ssh_start) * 1000.0,
        helper_to_listening_ms: helper_to_listening * 1000.0,
        server_start_ms: server_own * 1000.0,
        overhead_ms: (helper_to_listening - server_own) * 1000.0,
    })
}
