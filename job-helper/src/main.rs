//! Runs VS Code's launch script inside a Slurm job step: on the way in the
//! script's loopback binds move the server somewhere only this session
//! reaches (a private unix socket where it can), and on the way out the
//! server's `listeningOn` line opens a door for it on the node's published
//! address, announced to `vscode-shim` in a control line, with the relay's
//! port for VS Code.

mod keeper;
mod logging;
mod shell;

use std::collections::HashMap;
use std::env::VarError;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgAction, Parser, Subcommand};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use vscode_job_helper::bind_rewrite::{BindRewriter, Conversions, SocketNames};
use vscode_job_helper::listening::{Listening, ListeningScanner, Piece, Target};
use vscode_slurm_door::door::{self, Target as DoorTarget};
use vscode_slurm_protocol::door::DoorKey;
use vscode_slurm_protocol::{self as protocol, env, ControlMessage, Nonce};

use crate::keeper::client::{Event, KeptShell};
use crate::shell::Shell;

/// How long the script's processes get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// How long output still in the pipe may take to reach VS Code once the
/// script's processes are gone.
const DRAIN: Duration = Duration::from_secs(1);

/// Exit code for unusable arguments or environment.
const USAGE: i32 = 2;

/// Runs VS Code's launch script (read from stdin) inside a Slurm job step.
///
/// Started by vscode-shim through `srun`; the step's environment carries
/// the session (VSCODE_SLURM_NONCE, VSCODE_SLURM_DOOR_KEY,
/// VSCODE_SLURM_RELAY_PORT), the node's published address
/// (VSCODE_SLURM_BIND_ADDR) and the job's private runtime directory
/// (VSCODE_SLURM_RUNTIME_DIR), both from the spank_vscode plugin.
#[derive(Debug, Parser)]
#[command(name = "vscode-job-helper", version)]
struct Cli {
    /// Shell that reads the launch script from its stdin.
    #[arg(long, value_name = "PATH", default_value = "/bin/bash")]
    shell: PathBuf,

    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,

    /// Also log to this file (at least info level); %p becomes the pid.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,

    /// Address the door listens on, instead of VSCODE_SLURM_BIND_ADDR.
    #[arg(long, value_name = "ADDR")]
    bind_addr: Option<IpAddr>,

    /// Have the job's keeper start the shell, so that it and the server it
    /// starts outlive this window (set by vscode-shim for every window).
    #[arg(long)]
    through_keeper: bool,

    /// Print a man page or a completion script (man, bash, zsh, fish), for packaging.
    #[arg(long, value_name = "WHAT", hide = true)]
    generate: Option<String>,

    #[command(subcommand)]
    command: Option<Mode>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Hold the job while windows are attached, then for its linger time;
    /// warn before the time limit. vscode-shim submits this as the job's batch script.
    Keep {
        /// Warn this long before the time limit (comma-separated, e.g. 10m,2m).
        #[arg(long, value_name = "DURATIONS", default_value = "10m,2m", value_parser = parse_durations)]
        warn_before: Durations,

        /// The squeue program.
        #[arg(long, value_name = "PATH", default_value = "squeue", hide = true)]
        squeue: PathBuf,

        /// The scontrol program.
        #[arg(long, value_name = "PATH", default_value = "scontrol", hide = true)]
        scontrol: PathBuf,
    },
    /// Open one door in front of TARGET (HOST:PORT or a socket path), say
    /// where in a control line, and serve it until stdin closes: what a
    /// window does for its server, alone, for benchmarks and tests.
    #[command(hide = true)]
    Door {
        #[arg(long, value_name = "TARGET")]
        to: String,
    },
}

#[derive(Debug, Clone)]
struct Durations(Vec<Duration>);

fn parse_durations(text: &str) -> Result<Durations, String> {
    if text.trim() == "none" {
        return Ok(Durations(Vec::new()));
    }
    text.split(',').map(protocol::duration::parse).collect::<Result<_, _>>().map(Durations)
}

impl Cli {
    /// stderr ends up in VS Code's log line by line, so clap's multi-line
    /// usage errors are cut down to one line; help and version print as usual.
    fn parse_or_exit() -> Cli {
        match Cli::try_parse() {
            Ok(cli) => cli,
            Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
            Err(e) => {
                let rendered = e.render().to_string();
                let first =
                    rendered.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("invalid arguments");
                fail(format_args!("{}; see --help", first.strip_prefix("error: ").unwrap_or(first)))
            }
        }
    }
}

/// Writes a man page (`man`) or a completion script (`bash`, `zsh`, `fish`)
/// to stdout, for packaging; returns the exit code.
fn generate(what: &str) -> i32 {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    let mut out = std::io::stdout();
    let shell = match what {
        "man" => return clap_mangen::Man::new(command).render(&mut out).map_or(1, |()| 0),
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        "fish" => clap_complete::Shell::Fish,
        _ => {
            eprintln!("{name}: --generate takes man, bash, zsh or fish");
            return 2;
        }
    };
    clap_complete::generate(shell, &mut command, name, &mut out);
    0
}

fn fail(message: std::fmt::Arguments<'_>) -> ! {
    eprintln!("{}{message}", logging::PREFIX);
    std::process::exit(USAGE)
}

/// What the step's environment says about this session.
struct Session {
    nonce: Nonce,
    door_key: Arc<DoorKey>,
    relay_port: u16,
    /// Where doors listen: the address the login node reaches this node at.
    bind: IpAddr,
    /// Where servers moved off TCP put their sockets.
    sockets: Option<SocketNames>,
}

const START_WITH_SHIM: &str = "start sessions with vscode-shim";

impl Session {
    fn from_env(cli: &Cli) -> Result<Session, String> {
        let nonce = Nonce::parse(&required(env::NONCE, "the helper was not started by vscode-shim")?)
            .map_err(|e| format!("{} is malformed ({e}); {START_WITH_SHIM}", env::NONCE))?;
        let door_key = DoorKey::parse(&required(env::DOOR_KEY, "the helper was not started by vscode-shim")?)
            .map_err(|e| format!("{} is malformed ({e}); {START_WITH_SHIM}", env::DOOR_KEY))?;
        let port_text = required(env::RELAY_PORT, "the helper was not started by vscode-shim")?;
        let relay_port = port_text.parse().ok().filter(|&port| port != 0).ok_or_else(|| {
            format!("{} is not a port number (1-65535): {port_text:?}; {START_WITH_SHIM}", env::RELAY_PORT)
        })?;
        let bind = match cli.bind_addr {
            Some(bind) => bind,
            None => {
                let text = required(
                    env::BIND_ADDR,
                    "the job was not started with --vscode or the spank_vscode plugin is not loaded",
                )?;
                text.parse().map_err(|_| {
                    format!(
                        "{} is not an IP address: {text:?}; check the spank_vscode plugin's configuration",
                        env::BIND_ADDR
                    )
                })?
            }
        };
        let sockets = match std::env::var_os(env::RUNTIME_DIR) {
            Some(dir) if !private_dir(Path::new(&dir)) => {
                tracing::info!(
                    "{} {:?} is not a directory of this user's that only they can enter: servers stay \
                     on loopback, reachable by other users of this node",
                    env::RUNTIME_DIR,
                    dir
                );
                None
            }
            Some(dir) => {
                let names = SocketNames::new(Path::new(&dir), std::process::id());
                if names.is_none() {
                    tracing::info!(
                        "{} {:?} cannot hold the server's socket (too long, or characters a shell would \
                         interpret): servers stay on loopback, reachable by other users of this node",
                        env::RUNTIME_DIR,
                        dir
                    );
                }
                names
            }
            None => {
                tracing::info!(
                    "{} is not set: servers stay on loopback, reachable by other users of this node",
                    env::RUNTIME_DIR
                );
                None
            }
        };
        Ok(Session { nonce, door_key: Arc::new(door_key), relay_port, bind, sockets })
    }
}

/// The plugin's runtime dir is the user's and 0700; an inherited or stray
/// value naming anything else (`/tmp`, say) would put the server's socket
/// where others can find or pre-create it.
fn private_dir(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(dir).is_ok_and(|meta| {
        meta.is_dir() && meta.uid() == nix::unistd::getuid().as_raw() && meta.mode() & 0o077 == 0
    })
}

fn required(name: &str, why_missing: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) => Ok(value),
        Err(VarError::NotPresent) => Err(format!("{name} is not set: {why_missing}; {START_WITH_SHIM}")),
        Err(VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8; {START_WITH_SHIM}")),
    }
}

fn main() {
    // The environment holds the session's secrets; as a non-dumpable process
    // its /proc files (environ included) are root's, so nothing else the
    // user runs on the node, the launch script included, can read them.
    // SAFETY: prctl with plain integer arguments touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let cli = Cli::parse_or_exit();
    if let Some(what) = &cli.generate {
        std::process::exit(generate(what));
    }
    let log_file = cli.log_file.as_deref().map(expand_pid);
    if let Err(e) = logging::init(cli.verbose, cli.quiet, log_file.as_deref()) {
        let path = log_file.as_deref().unwrap_or(Path::new("")).display();
        fail(format_args!("cannot open the log file {path}: {e}"));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => fail(format_args!("cannot start the async runtime: {e}")),
    };
    if let Some(Mode::Keep { warn_before, squeue, scontrol }) = cli.command {
        let options = keeper::KeepOptions { warn_before: warn_before.0, squeue, scontrol };
        std::process::exit(runtime.block_on(keeper::run(options)));
    }
    let session = Session::from_env(&cli).unwrap_or_else(|message| fail(format_args!("{message}")));
    if let Some(Mode::Door { to }) = &cli.command {
        let target = match to.parse() {
            Ok(addr) => DoorTarget::Tcp(addr),
            Err(_) if to.starts_with('/') => DoorTarget::Unix(PathBuf::from(to)),
            Err(_) => fail(format_args!("--to takes HOST:PORT or an absolute socket path, not {to:?}")),
        };
        std::process::exit(runtime.block_on(serve_one_door(session, target)));
    }
    let keeper_dir = cli.through_keeper.then(|| {
        std::env::var_os(env::RUNTIME_DIR).map(PathBuf::from).unwrap_or_else(|| {
            fail(format_args!(
                "{} is not set: --through-keeper needs a job submitted with --vscode",
                env::RUNTIME_DIR
            ))
        })
    });
    let code = runtime.block_on(run(&cli.shell, session, keeper_dir));
    // Not returning: the runtime would wait for the blocking read of our
    // stdin, which may never end.
    std::process::exit(code)
}

/// `vscode-job-helper door`: the door alone, announced like a server's.
async fn serve_one_door(session: Session, target: DoorTarget) -> i32 {
    let endpoint = match door::start(session.bind, target.clone(), Arc::clone(&session.door_key)).await {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::error!("cannot open a door on {} for {target}: {e}", session.bind);
            return 1;
        }
    };
    let mut stdout = tokio::io::stdout();
    let line = protocol::encode(&session.nonce, &ControlMessage::Endpoint(endpoint));
    if stdout.write_all(&line).await.and(stdout.flush().await).is_err() {
        return 1;
    }
    let mut sink = [0u8; 4096];
    let mut stdin = tokio::io::stdin();
    while matches!(stdin.read(&mut sink).await, Ok(1..)) {}
    0
}

/// Lets several sessions share one log path pattern.
fn expand_pid(path: &Path) -> PathBuf {
    PathBuf::from(path.to_string_lossy().replace("%p", &std::process::id().to_string()))
}

/// Why the session ended.
enum End {
    StdinClosed,
    StdoutClosed,
    ShellExited(io::Result<i32>),
    Signal(i32),
}

/// The launch script's shell: our child, or the keeper's (see `keeper`).
enum Script {
    Here(Shell),
    Kept(KeptShell),
}

type Input = Box<dyn AsyncWrite + Unpin + Send>;
type Output = Box<dyn AsyncRead + Unpin + Send>;

impl Script {
    async fn start(program: &Path, keeper_dir: Option<&Path>) -> io::Result<(Script, Input, Output, Output)> {
        match keeper_dir {
            None => {
                let (shell, stdin, stdout, stderr) = Shell::spawn(program)?;
                Ok((Script::Here(shell), Box::new(stdin), Box::new(stdout), Box::new(stderr)))
            }
            Some(dir) => {
                let (kept, streams) = keeper::client::spawn(program, dir).await?;
                tracing::debug!("the keeper started {} as pid {}", program.display(), kept.pid);
                Ok((
                    Script::Kept(kept),
                    Box::new(streams.stdin),
                    Box::new(streams.stdout),
                    Box::new(streams.stderr),
                ))
            }
        }
    }

    /// The shell's exit code; notices from the keeper go to `notices` meanwhile.
    async fn wait(&mut self, notices: &mpsc::UnboundedSender<String>) -> io::Result<i32> {
        match self {
            Script::Here(shell) => shell.wait().await.map(shell::exit_code),
            Script::Kept(kept) => loop {
                match kept.next().await {
                    Event::Exited(code) => return Ok(code),
                    Event::Notice(text) => {
                        let _ = notices.send(text);
                    }
                    Event::KeeperGone => {
                        return Err(io::Error::other("the job's keeper is gone: the job is ending"))
                    }
                }
            },
        }
    }

    /// A shell of ours ends with its whole group; a kept one is left to the
    /// keeper, because the server it started must outlive this window.
    async fn end(&mut self) {
        if let Script::Here(shell) = self {
            shell.end_group(GRACE).await;
        }
    }
}

async fn run(shell_path: &Path, session: Session, keeper_dir: Option<PathBuf>) -> i32 {
    let signals = [SignalKind::terminate(), SignalKind::hangup(), SignalKind::interrupt()].map(signal);
    let [Ok(mut term), Ok(mut hup), Ok(mut int)] = signals else {
        tracing::error!("cannot handle signals");
        return 1;
    };
    let (mut shell, shell_in, shell_out, mut shell_err) =
        match Script::start(shell_path, keeper_dir.as_deref()).await {
            Ok(spawned) => spawned,
            Err(e) => {
                fail(format_args!("cannot start the shell {}: {e}; check --shell", shell_path.display()))
            }
        };
    let (notices_tx, notices) = mpsc::unbounded_channel();
    // Before any of the script's output: the shim holds the script back until it sees this.
    let mut stdout = tokio::io::stdout();
    let ready = protocol::encode(&session.nonce, &ControlMessage::Ready);
    if stdout.write_all(&ready).await.and(stdout.flush().await).is_err() {
        tracing::info!("our stdout is gone before the script started");
    }
    let conversions = Arc::new(Mutex::new(Conversions::default()));
    let stdin_task = tokio::spawn(pump_stdin(
        tokio::io::stdin(),
        shell_in,
        BindRewriter::new(session.sockets.clone()),
        conversions.clone(),
    ));
    // The script's stderr reaches VS Code's log unchanged.
    let mut stderr_task =
        tokio::spawn(async move { tokio::io::copy(&mut shell_err, &mut tokio::io::stderr()).await });
    let (broken_tx, broken_rx) = oneshot::channel();
    let announcer = Announcer { session, conversions, doors: HashMap::new() };
    let mut stdout_task = tokio::spawn(async move {
        if let Err(e) = pump_stdout(shell_out, tokio::io::stdout(), announcer, notices).await {
            tracing::debug!("our stdout is gone: {e}");
            let _ = broken_tx.send(());
        }
    });

    let end = tokio::select! {
        _ = stdin_task => End::StdinClosed,
        status = shell.wait(&notices_tx) => End::ShellExited(status),
        Ok(()) = broken_rx => End::StdoutClosed,
        _ = term.recv() => End::Signal(libc::SIGTERM),
        _ = hup.recv() => End::Signal(libc::SIGHUP),
        _ = int.recv() => End::Signal(libc::SIGINT),
    };
    let code = match &end {
        End::StdinClosed => {
            tracing::info!("stdin closed: ending the launch script");
            0
        }
        End::StdoutClosed => {
            tracing::info!("stdout closed: ending the launch script");
            0
        }
        End::ShellExited(Ok(code)) => {
            tracing::info!("the launch script's shell exited ({code}): ending what it started");
            *code
        }
        End::ShellExited(Err(e)) => {
            tracing::error!("cannot wait for the launch script's shell: {e}");
            1
        }
        End::Signal(number) => {
            tracing::info!("signal {number}: ending the launch script");
            128 + number
        }
    };
    shell.end().await;
    let kept = matches!(shell, Script::Kept(_));
    if !matches!(end, End::StdoutClosed)
        && tokio::time::timeout(DRAIN, &mut stdout_task).await.is_err()
        && !kept
    {
        tracing::warn!("output of the launch script still open after its processes ended; dropping it");
    }
    let _ = tokio::time::timeout(DRAIN, &mut stderr_task).await;
    code
}

/// Helper stdin → rewriter → shell stdin, until our stdin ends; then the
/// shell's stdin is closed.
async fn pump_stdin(
    mut from: impl AsyncRead + Unpin,
    to: Input,
    mut rewriter: BindRewriter,
    conversions: Arc<Mutex<Conversions>>,
) {
    let mut to = Some(to);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("reading our stdin: {e}");
                break;
            }
        };
        let bytes = rewriter.feed(&buf[..n]);
        publish(&conversions, &rewriter);
        forward(&mut to, &bytes).await;
    }
    let tail = rewriter.finish();
    publish(&conversions, &rewriter);
    forward(&mut to, &tail).await;
}

fn publish(conversions: &Mutex<Conversions>, rewriter: &BindRewriter) {
    if let Ok(mut shared) = conversions.lock() {
        shared.clone_from(rewriter.conversions());
    }
}

/// Once the shell stops reading, the rest of our stdin is only watched for
/// its end.
async fn forward(to: &mut Option<Input>, bytes: &[u8]) {
    let Some(pipe) = to else { return };
    if bytes.is_empty() {
        return;
    }
    if let Err(e) = pipe.write_all(bytes).await {
        tracing::debug!("the shell stopped reading its stdin: {e}");
        *to = None;
    }
}

/// Shell stdout → scanner → our stdout, flushed after every read because
/// VS Code acts on each line as it comes. Err only when writing fails.
///
/// Notices become control lines for the shim, but only between lines of the
/// script's output (a control line is recognised only at a line start);
/// while a line is unfinished they go to stderr instead, which also reaches
/// the user through the shim.
async fn pump_stdout(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut announcer: Announcer,
    mut notices: mpsc::UnboundedReceiver<String>,
) -> io::Result<()> {
    let mut scanner = ListeningScanner::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut at_line_start = true;
    let mut notices_open = true;
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => read.unwrap_or_else(|e| {
                tracing::warn!("reading the launch script's output: {e}");
                0
            }),
            notice = notices.recv(), if notices_open => {
                match notice {
                    Some(text) if at_line_start => {
                        let message = ControlMessage::Notice(text);
                        to.write_all(&protocol::encode(&announcer.session.nonce, &message)).await?;
                        to.flush().await?;
                    }
                    Some(text) => tracing::warn!("{text}"),
                    None => notices_open = false,
                }
                continue;
            }
        };
        if n == 0 {
            to.write_all(&scanner.finish()).await?;
            return to.flush().await;
        }
        for piece in scanner.feed(&buf[..n]) {
            let bytes = match piece {
                Piece::Data(data) => data,
                Piece::Listening(listening) => announcer.announce(listening).await,
            };
            if let Some(&last) = bytes.last() {
                at_line_start = last == b'\n';
            }
            to.write_all(&bytes).await?;
        }
        to.flush().await?;
    }
}

/// Turns a `listeningOn` line into what the shim and VS Code need.
struct Announcer {
    session: Session,
    /// What the rewriter changed in the script so far.
    conversions: Arc<Mutex<Conversions>>,
    /// VS Code may print the same server again on a re-run; one door serves.
    doors: HashMap<DoorTarget, SocketAddr>,
}

impl Announcer {
    /// The bytes that replace the line's marker: the door's endpoint control
    /// line first (the shim must know it before VS Code can connect), then
    /// the marker with the relay's port, in the form VS Code asked for.
    ///
    /// A server that cannot be served is not passed on: VS Code would dial
    /// its address on the login node, where anyone may be listening. It gets
    /// a value it cannot connect to instead, and the reason goes to stderr.
    async fn announce(&mut self, listening: Listening) -> Vec<u8> {
        let conversions = self.conversions.lock().map(|c| c.clone()).unwrap_or_default();
        let target = match &listening.target {
            Target::Port(port) => {
                self.warn_on_tcp(&conversions);
                DoorTarget::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), *port))
            }
            Target::HostPort(host, port) => {
                self.warn_on_tcp(&conversions);
                DoorTarget::Tcp(SocketAddr::new(reachable_host(*host), *port))
            }
            Target::Socket(path) => match own_socket(path) {
                Ok(()) => DoorTarget::Unix(path.clone()),
                Err(why) => {
                    tracing::error!(
                        "not serving the socket {}: {why}; reconnect to start again",
                        path.display()
                    );
                    return Listening::unusable();
                }
            },
        };
        let endpoint = match self.door(target.clone()).await {
            Ok(endpoint) => endpoint,
            Err(e) => {
                tracing::error!(
                    "cannot open a door for the server at {target}: {e}; reconnect to start again"
                );
                return Listening::unusable();
            }
        };
        tracing::info!(
            "server at {target}, behind door {endpoint}; VS Code is told port {}",
            self.session.relay_port
        );
        let mut bytes = protocol::encode(&self.session.nonce, &ControlMessage::Endpoint(endpoint));
        bytes.extend_from_slice(
            &listening.rewritten(self.session.relay_port, self.asked_host_port(&listening, &conversions)),
        );
        bytes
    }

    /// An exec server we moved to a socket was asked for `HOST:PORT`; a
    /// server whose socket name we chose, or one the script put on a socket
    /// itself, is answered with a bare port.
    fn asked_host_port(&self, listening: &Listening, conversions: &Conversions) -> bool {
        match &listening.target {
            Target::Socket(path) => {
                let ours = self.session.sockets.as_ref().is_some_and(|names| names.is_ours(path));
                !ours && conversions.exec_server
            }
            Target::HostPort(..) => true,
            Target::Port(_) => false,
        }
    }

    async fn door(&mut self, target: DoorTarget) -> std::io::Result<SocketAddr> {
        if let Some(&endpoint) = self.doors.get(&target) {
            return Ok(endpoint);
        }
        let endpoint =
            door::start(self.session.bind, target.clone(), Arc::clone(&self.session.door_key)).await?;
        self.doors.insert(target, endpoint);
        Ok(endpoint)
    }

    /// A server left on TCP is still reachable by other users of this node
    /// (not of the cluster: the door is the only way in from the network).
    fn warn_on_tcp(&self, conversions: &Conversions) {
        let why = if conversions.count == 0 {
            "no bind in the launch script could be moved to a private socket"
        } else {
            "the launch script did not use the socket it was given"
        };
        tracing::warn!("the server listens on TCP: {why}; other users of this node can reach its port");
    }
}

/// A server on loopback or on every interface is reached on loopback.
fn reachable_host(host: IpAddr) -> IpAddr {
    match host {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// Serves only a socket the session's user owns, and closes it to everyone
/// else: a server may have made it group- or world-connectable, and a path
/// outside the runtime directory (the exec server picks its own) is in a
/// directory others can list.
///
/// The path comes from the script's output, so nothing in it is trusted:
/// its directory is opened and checked first (others must not be able to
/// swap its entries), then the socket itself without following a link, and
/// the mode is changed through that very descriptor.
fn own_socket(path: &Path) -> Result<(), String> {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::{fstat, Mode, SFlag};
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err("it is not a path to a file".to_owned());
    };
    let me = nix::unistd::getuid().as_raw();
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let dir = open(parent, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| format!("cannot open its directory: {e}"))?;
    // SAFETY: a fresh descriptor that nothing else owns.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let dir_stat = fstat(dir.as_raw_fd()).map_err(|e| format!("cannot inspect its directory: {e}"))?;
    if dir_stat.st_uid != me && dir_stat.st_uid != 0 {
        return Err(format!("its directory belongs to uid {}", dir_stat.st_uid));
    }
    let sticky = dir_stat.st_mode & libc::S_ISVTX != 0;
    if dir_stat.st_mode & 0o022 != 0 && !sticky {
        return Err("others may replace it: its directory is writable by others".to_owned());
    }
    let socket = openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open it: {e}"))?;
    // SAFETY: a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    let stat = fstat(socket.as_raw_fd()).map_err(|e| format!("cannot inspect it: {e}"))?;
    if SFlag::from_bits_truncate(stat.st_mode & libc::S_IFMT) != SFlag::S_IFSOCK {
        return Err("it is not a socket".to_owned());
    }
    if stat.st_uid != me {
        return Err(format!("it belongs to uid {}, not to this session's user", stat.st_uid));
    }
    if stat.st_mode & 0o077 != 0 {
        use std::os::unix::fs::PermissionsExt;
        // The descriptor's own name: the socket opened above, whatever the path names now.
        let by_fd = format!("/proc/self/fd/{}", socket.as_raw_fd());
        std::fs::set_permissions(&by_fd, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        tracing::info!("closed the server's socket {} to other users (mode 0600)", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("own-socket-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    #[test]
    fn a_served_socket_is_closed_to_others_and_links_are_refused() {
        let dir = scratch("ok", 0o755);
        let path = dir.join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        own_socket(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        // A link to it (or to anything else of ours) is not served and changes nothing.
        let victim = dir.join("victim");
        std::fs::write(&victim, "x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("link.sock")).unwrap();
        assert!(own_socket(&dir.join("link.sock")).unwrap_err().contains("not a socket"));
        assert!(own_socket(&victim).unwrap_err().contains("not a socket"));
        assert_eq!(std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777, 0o644);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_socket_in_a_directory_others_may_change_is_refused() {
        let dir = scratch("open", 0o777);
        let path = dir.join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let why = own_socket(&path).unwrap_err();
        assert!(why.contains("writable by others"), "{why}");
        // Sticky, like /tmp: others cannot replace our entries, so it is served.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        own_socket(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_private_directory_of_ours_holds_sockets() {
        let private = scratch("private", 0o700);
        assert!(private_dir(&private));
        let shared = scratch("shared", 0o755);
        assert!(!private_dir(&shared));
        assert!(!private_dir(Path::new("/tmp")));
        std::fs::remove_dir_all(&private).unwrap();
        std::fs::remove_dir_all(&shared).unwrap();
    }
}
