//! Stand-in for the VS Code Remote-SSH extension on the laptop.
//!
//! The extension is closed source and needs a GUI, so the end-to-end tests drive this instead.
//! It keeps the behaviour vscode-slurm depends on: one long `ssh -T -D` connection whose
//! RemoteCommand gets the launch script on stdin, output parsed between the `<id>: start` and
//! `<id>: end` markers, and a SOCKS connection opened the moment `listeningOn` is seen, with no
//! retry. A relay that is not yet listening at that moment therefore fails the test, as it would
//! fail a real user.
//!
//! Without `RemoteCommand` (a ProxyCommand host: `--remote-command bash`), it runs the shell on
//! the host's command line as Remote-SSH then does, and feeds it the same script.
//!
//! Everything goes to stdout one line at a time (see `usage`), so a test can follow a session
//! with a line reader and drive it through our stdin.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{exit, Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use vscode_slurm_tests::events::{pidfd, readable_within};

/// A fake commit: the templates install the test server under it, as Remote-SSH does per commit.
const COMMIT: &str = "0000000000000000000000000000000000test";
const LEGACY_TEMPLATE: &str = include_str!("../../scripts/legacy.sh");
const EXEC_SERVER_TEMPLATE: &str = include_str!("../../scripts/exec-server.sh");
const SOCKET_TEMPLATE: &str = include_str!("../../scripts/socket.sh");
const STDIO_TEMPLATE: &str = include_str!("../../scripts/stdio.sh");
/// What `echo N` puts first in stdio mode: bytes that look like what the
/// helper and the shim act on (markers, bind flags, a control line, an end
/// marker), which must come back untouched all the same.
const STDIO_TRAPS: &[u8] = b"listeningOn==5555==\nlisteningOn====\n--on-port --port=0 --bind-addr=127.0.0.1 \
    \n@@vscode-slurm@@ 00000000000000000000000000000000 ready\nab: end\n\0\xff\r\n";

/// Generous for a relay chain over a loaded two-core machine, short enough to fail a test
/// instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
const SOCKS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn usage() -> &'static str {
    "usage: remote-ssh-client --host ALIAS [--mode legacy|exec-server|socket|stdio] [--template FILE] \
     [--socks-port N] [--ssh PATH] [--ssh-config FILE] [--connect-timeout SECS] [--ssh-option OPT ...] \
     [--remote-command SHELL]"
}

/// Tests read our stdout while we run, so every line must reach them at once.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Legacy,
    ExecServer,
    Socket,
    /// The exec server over the launch stream: empty `listeningOn`, then the
    /// server's bytes on ssh's stdin and stdout.
    Stdio,
}

#[derive(Debug)]
struct Args {
    host: String,
    mode: Mode,
    template: Option<String>,
    socks_port: Option<u16>,
    ssh: String,
    connect_timeout: Duration,
    ssh_options: Vec<String>,
    /// Like `remote.SSH.configFile`: the VS Code hosts live in a file of their own.
    ssh_config: Option<String>,
    /// The shell to run on the host when it has no RemoteCommand (`bash` for
    /// legacy mode, `sh` for the exec server, as Remote-SSH runs them).
    remote_command: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut host = None;
    let mut mode = Mode::Legacy;
    let mut template = None;
    let mut socks_port = None;
    let mut ssh = "ssh".to_string();
    let mut connect_timeout = Duration::from_secs(60);
    let mut ssh_options = Vec::new();
    let mut ssh_config = None;
    let mut remote_command = None;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i - 1).cloned().ok_or_else(|| format!("{name} needs a value"))
        };
        match name {
            "--host" => host = Some(value()?),
            "--mode" => {
                mode = match value()?.as_str() {
                    "legacy" => Mode::Legacy,
                    "exec-server" => Mode::ExecServer,
                    "socket" => Mode::Socket,
                    "stdio" => Mode::Stdio,
                    other => return Err(format!("unknown mode {other:?}")),
                }
            }
            "--template" => template = Some(value()?),
            "--socks-port" => {
                let v = value()?;
                socks_port = Some(v.parse().map_err(|_| format!("bad --socks-port {v:?}"))?);
            }
            "--ssh" => ssh = value()?,
            "--connect-timeout" => {
                let v = value()?;
                connect_timeout =
                    Duration::from_secs(v.parse().map_err(|_| format!("bad --connect-timeout {v:?}"))?);
            }
            "--ssh-option" => ssh_options.push(value()?),
            "--ssh-config" => ssh_config = Some(value()?),
            "--remote-command" => remote_command = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let host = host.ok_or("--host is required")?;
    Ok(Args {
        host,
        mode,
        template,
        socks_port,
        ssh,
        connect_timeout,
        ssh_options,
        ssh_config,
        remote_command,
    })
}

fn substitute(template: &str, id: &str, commit: &str) -> String {
    template.replace("@ID@", id).replace("@COMMIT@", commit)
}

fn random_bytes(n: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    File::open("/dev/urandom")?.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() < n {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read from /dev/urandom"));
    }
    Ok(buf)
}

/// Remote-SSH's ids are random so that stale output from an earlier session cannot match.
fn random_id() -> io::Result<String> {
    Ok(random_bytes(10)?.iter().map(|b| format!("{b:02x}")).collect())
}

/// A `key==value==` line from between the markers. The value may itself contain `==`
/// (tokens can), so only the first separator and the final one count.
fn parse_pair(line: &str) -> Option<(String, String)> {
    let (key, value) = line.strip_suffix("==")?.split_once("==")?;
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some((key.to_string(), value.to_string()))
}

/// The port behind a `listeningOn` value: `PORT` (legacy) or `HOST:PORT` (exec server). Like the
/// extension, we always dial 127.0.0.1 on the far side of the SOCKS tunnel.
fn target_port(listening_on: &str) -> Result<u16, String> {
    if listening_on.starts_with('/') {
        return Err("socket-path listeningOn is not reachable over SOCKS".to_string());
    }
    let port = listening_on.rsplit_once(':').map_or(listening_on, |(_, p)| p);
    port.parse().map_err(|_| format!("cannot parse listeningOn value {listening_on:?}"))
}

fn socks_connect_request(ip: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&port.to_be_bytes());
    req
}

fn socks_reply_text(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown reply code",
    }
}

/// OpenSSH's `-D` answers CONNECT with success before the far side has connected; a refused
/// connection on the login node only shows up later as an empty response.
fn socks_connect(socks_port: u16, port: u16) -> Result<TcpStream, String> {
    let proxy = SocketAddr::from((Ipv4Addr::LOCALHOST, socks_port));
    let mut s = TcpStream::connect_timeout(&proxy, SOCKS_CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot connect to the SOCKS port {proxy}: {e}"))?;
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let fail = |what: &str, e: io::Error| format!("SOCKS {what} failed: {e}");
    s.write_all(&[5, 1, 0]).map_err(|e| fail("greeting", e))?;
    let mut greeting = [0u8; 2];
    s.read_exact(&mut greeting).map_err(|e| fail("greeting", e))?;
    if greeting != [5, 0] {
        return Err(format!("SOCKS server refused the no-auth greeting: {greeting:?}"));
    }
    s.write_all(&socks_connect_request(Ipv4Addr::LOCALHOST, port)).map_err(|e| fail("CONNECT", e))?;
    let mut reply = [0u8; 4];
    s.read_exact(&mut reply).map_err(|e| fail("CONNECT", e))?;
    if reply[0] != 5 {
        return Err(format!("SOCKS CONNECT got a reply of version {}", reply[0]));
    }
    if reply[1] != 0 {
        return Err(format!("SOCKS CONNECT to 127.0.0.1:{port} failed: {}", socks_reply_text(reply[1])));
    }
    let addr_len = match reply[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).map_err(|e| fail("CONNECT", e))?;
            len[0] as usize
        }
        other => return Err(format!("SOCKS CONNECT reply has address type {other}")),
    };
    let mut bound = vec![0u8; addr_len + 2];
    s.read_exact(&mut bound).map_err(|e| fail("CONNECT", e))?;
    Ok(s)
}

/// Splits a whole HTTP response into status code and body.
fn parse_response(resp: &[u8]) -> Result<(u16, &[u8]), String> {
    if resp.is_empty() {
        return Err(
            "connection closed without an HTTP response (nothing listening behind the relay?)".to_string()
        );
    }
    let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").ok_or("truncated HTTP response")?;
    let head = String::from_utf8_lossy(&resp[..head_end]);
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("bad HTTP status line")?;
    Ok((status, &resp[head_end + 4..]))
}

/// One request on a fresh SOCKS connection; the server closes after answering.
fn http_request(socks_port: u16, port: u16, head: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = socks_connect(socks_port, port)?;
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("sending the request to 127.0.0.1:{port} failed: {e}"))?;
    let mut resp = Vec::new();
    match s.read_to_end(&mut resp) {
        Ok(_) => {}
        Err(e) if resp.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => {
            return Err(format!(
                "connection to 127.0.0.1:{port} reset without an HTTP response (nothing listening behind the relay?)"
            ));
        }
        Err(e) => return Err(format!("reading the answer from 127.0.0.1:{port} failed: {e}")),
    }
    let (status, body) = parse_response(&resp)?;
    if status != 200 {
        return Err(format!("HTTP status {status}: {}", String::from_utf8_lossy(body).trim()));
    }
    Ok(body.to_vec())
}

fn fetch_info(socks_port: u16, port: u16) -> Result<String, String> {
    let body = http_request(socks_port, port, "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", &[])?;
    Ok(String::from_utf8_lossy(&body).trim().replace('\n', " "))
}

fn echo(socks_port: u16, port: u16, n: usize) -> Result<(), String> {
    let data = random_bytes(n).map_err(|e| format!("cannot read random bytes: {e}"))?;
    let head = format!("POST /echo HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {n}\r\n\r\n");
    let back = http_request(socks_port, port, &head, &data)?;
    if back != data {
        return Err(format!("echo of {n} bytes came back different ({} bytes)", back.len()));
    }
    Ok(())
}

fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

enum Event {
    Line(String),
    StdoutClosed,
    Command(String),
    CommandsClosed,
    /// ssh has exited (it is not reaped yet).
    SshExited,
    /// Stdio mode, after the server's first line: its bytes as they come.
    Bytes(Vec<u8>),
}

/// Forwards ssh's stdout line by line; the keep-alive spaces never end a line, so they only
/// ever show up glued to the front of a later one.
///
/// In stdio mode (`raw_after`: the end marker), the line after the end marker is the server's
/// first; everything after it is the server's stream, passed on as bytes.
fn read_ssh_stdout(stdout: impl Read, tx: Sender<Event>, raw_after: Option<String>) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    let mut ended = false;
    loop {
        if ended {
            // The server's first line went with the lines: now its stream.
            let mut chunk = vec![0u8; 64 * 1024];
            match reader.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.send(Event::Bytes(chunk)).is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                if !line.trim().is_empty() && tx.send(Event::Line(line.to_string())).is_err() {
                    return;
                }
                if let Some(end) = &raw_after {
                    if line.trim() == end {
                        ended = true;
                        // One more line (the server's first), then bytes.
                        buf.clear();
                        match reader.read_until(b'\n', &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                let first = String::from_utf8_lossy(&buf).trim_end().to_string();
                                if tx.send(Event::Line(first)).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let _ = tx.send(Event::StdoutClosed);
}

fn read_commands(tx: Sender<Event>) {
    for line in io::stdin().lock().lines() {
        match line {
            Ok(l) => {
                if tx.send(Event::Command(l.trim().to_string())).is_err() {
                    return;
                }
            }
            Err(_) => break,
        }
    }
    let _ = tx.send(Event::CommandsClosed);
}

struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Event>,
    tx: Sender<Event>,
    socks_port: u16,
    stdout_open: bool,
    /// The server speaks over the launch stream (`--mode stdio`).
    stdio: bool,
}

impl Session {
    /// Next event within `wait`, with ssh's lines already echoed. Ends the process if ssh has
    /// exited on its own: the session is then gone, whatever phase we are in.
    fn poll(&mut self, wait: Duration) -> Option<Event> {
        match self.events.recv_timeout(wait) {
            Ok(Event::SshExited) => {
                let status = self.reap();
                self.drain_output(Duration::from_secs(2));
                say(&format!("ssh-exited {}", exit_code(status)));
                exit(1);
            }
            Ok(Event::Line(l)) => {
                say(&format!("out: {l}"));
                Some(Event::Line(l))
            }
            Ok(Event::StdoutClosed) => {
                self.stdout_open = false;
                None
            }
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Echoes what ssh still had to say, so a test log shows the last words of a dying session.
    fn drain_output(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.stdout_open {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.events.recv_timeout(deadline - now) {
                Ok(Event::Line(l)) => say(&format!("out: {l}")),
                Ok(Event::StdoutClosed) => self.stdout_open = false,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    /// Closes ssh's stdin the way VS Code ending a session does, then waits for ssh, killing it
    /// after `limit`.
    fn finish(&mut self, limit: Duration) -> ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + limit;
        loop {
            match self.events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Event::SshExited) => break,
                Ok(Event::Line(l)) => say(&format!("out: {l}")),
                Ok(Event::StdoutClosed) => self.stdout_open = false,
                Ok(_) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    break;
                }
            }
        }
        let status = self.reap();
        self.drain_output(Duration::from_secs(2));
        status
    }

    /// The status of an ssh that has exited or been killed; 255, ssh's own failure code, when
    /// there is none to be had.
    fn reap(&mut self) -> ExitStatus {
        self.child.wait().unwrap_or_else(|_| ExitStatus::from_raw(255 << 8))
    }

    fn fail(&mut self, msg: &str) -> ! {
        say(&format!("error {msg}"));
        self.finish(Duration::from_secs(5));
        exit(1);
    }

    /// Up to the end marker. Returns the port to use for later requests.
    fn launch(&mut self, id: &str, connect_timeout: Duration) -> u16 {
        let start_marker = format!("{id}: start");
        let end_marker = format!("{id}: end");
        let deadline = Instant::now() + connect_timeout;
        let mut in_block = false;
        let mut pairs = Vec::new();
        let mut port = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                self.fail("timeout waiting for the launch script");
            }
            let Some(Event::Line(line)) = self.poll(deadline - now) else { continue };
            let line = line.trim();
            if line == start_marker {
                in_block = true;
            } else if line == end_marker && in_block {
                break;
            } else if let Some((key, value)) = parse_pair(line).filter(|_| in_block) {
                if key == "listeningOn" && value.is_empty() && self.stdio {
                    // No port: the server will speak over this stream after the end marker.
                    say("result listeningOn=");
                    port = Some(0);
                } else if key == "listeningOn" && port.is_none() {
                    // At once, as the extension does: the relay must already be there.
                    say(&format!("result listeningOn={value}"));
                    let p = target_port(&value).unwrap_or_else(|e| self.fail(&e));
                    match fetch_info(self.socks_port, p) {
                        Ok(body) => say(&format!("answer {body}")),
                        Err(e) => self.fail(&e),
                    }
                    port = Some(p);
                } else {
                    pairs.push((key, value));
                }
            }
        }
        for (key, value) in &pairs {
            say(&format!("result {key}={value}"));
        }
        match port {
            Some(p) => p,
            None => {
                let code = pairs.iter().find(|(k, _)| k == "exitCode").map_or("none", |(_, v)| v.as_str());
                let msg = format!("the launch script reported no listeningOn (exitCode {code})");
                self.fail(&msg)
            }
        }
    }

    /// Stdio mode: the server's first line, which says where it runs.
    fn stdio_hello(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let now = Instant::now();
            if now >= deadline {
                self.fail("timeout waiting for the server's first line on the launch stream");
            }
            if let Some(Event::Line(line)) = self.poll(deadline - now) {
                say(&format!("answer {line}"));
                return;
            }
        }
    }

    /// Stdio mode's echo: N bytes (the traps first, then random ones, ending, when there is
    /// room, on the start of a control line that never comes: a reply whose last bytes a
    /// filter held back would never arrive) down ssh's stdin, the same N bytes back.
    fn stdio_echo(&mut self, n: usize) -> Result<(), String> {
        const UNFINISHED: &[u8] = b"\n@@vscode-slurm@@ ";
        let mut data = STDIO_TRAPS[..n.min(STDIO_TRAPS.len())].to_vec();
        let tail = if n >= data.len() + UNFINISHED.len() { UNFINISHED } else { b"" };
        let random = n - data.len() - tail.len();
        data.extend(random_bytes(random).map_err(|e| format!("cannot read random bytes: {e}"))?);
        data.extend_from_slice(tail);
        let stdin = self.stdin.as_mut().ok_or("ssh's stdin is closed")?;
        // The reader thread drains ssh's stdout meanwhile, so this cannot deadlock.
        stdin.write_all(&data).and_then(|()| stdin.flush()).map_err(|e| format!("writing to ssh: {e}"))?;
        let mut back = Vec::new();
        let deadline = Instant::now() + IO_TIMEOUT;
        while back.len() < n {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("{} of {n} bytes came back over the launch stream", back.len()));
            }
            match self.poll(deadline - now) {
                Some(Event::Bytes(bytes)) => back.extend(bytes),
                Some(Event::Line(_)) | None if !self.stdout_open => {
                    return Err(format!("ssh's stdout closed after {} of {n} bytes", back.len()))
                }
                _ => {}
            }
        }
        if back != data {
            let at = back.iter().zip(&data).position(|(a, b)| a != b).unwrap_or(n);
            return Err(format!("the stream came back changed (first difference at byte {at} of {n})"));
        }
        Ok(())
    }

    fn serve_commands(&mut self, port: u16) -> ! {
        let tx = self.tx.clone();
        thread::spawn(move || read_commands(tx));
        loop {
            // Commands, ssh's lines and its exit all arrive as events: nothing else to wait for.
            let command = match self.poll(Duration::MAX) {
                Some(Event::Command(c)) => c,
                Some(Event::CommandsClosed) => "close".to_string(),
                _ => continue,
            };
            let mut words = command.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (None, ..) => {}
                (Some("get"), None, _) if self.stdio => say("error no HTTP in stdio mode"),
                (Some("get"), None, _) => match fetch_info(self.socks_port, port) {
                    Ok(body) => say(&format!("answer {body}")),
                    Err(e) => say(&format!("error {e}")),
                },
                (Some("echo"), Some(n), None) if self.stdio => match n.parse::<usize>() {
                    Ok(n) => match self.stdio_echo(n) {
                        Ok(()) => say(&format!("echo ok {n}")),
                        Err(e) => say(&format!("error {e}")),
                    },
                    Err(_) => say(&format!("error bad byte count {n:?}")),
                },
                (Some("echo"), Some(n), None) => match n.parse::<usize>() {
                    Ok(n) => match echo(self.socks_port, port, n) {
                        Ok(()) => say(&format!("echo ok {n}")),
                        Err(e) => say(&format!("error {e}")),
                    },
                    Err(_) => say(&format!("error bad byte count {n:?}")),
                },
                (Some("close"), None, _) => {
                    let status = self.finish(Duration::from_secs(30));
                    say(&format!("closed {}", exit_code(status)));
                    exit(0);
                }
                _ => say(&format!("error unknown command {command:?}")),
            }
        }
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = parse_args(&argv).unwrap_or_else(|e| {
        say(&format!("error {e}; {}", usage()));
        exit(2);
    });
    let template = match &args.template {
        Some(path) => std::fs::read_to_string(path).unwrap_or_else(|e| {
            say(&format!("error cannot read template {path}: {e}"));
            exit(2);
        }),
        None => match args.mode {
            Mode::Legacy => LEGACY_TEMPLATE,
            Mode::ExecServer => EXEC_SERVER_TEMPLATE,
            Mode::Socket => SOCKET_TEMPLATE,
            Mode::Stdio => STDIO_TEMPLATE,
        }
        .to_string(),
    };
    let fatal = |what: &str, e: io::Error| -> ! {
        say(&format!("error {what}: {e}"));
        exit(1);
    };
    let id = random_id().unwrap_or_else(|e| fatal("cannot make a session id", e));
    let socks_port = match args.socks_port {
        Some(p) => p,
        None => free_port().unwrap_or_else(|e| fatal("cannot pick a SOCKS port", e)),
    };
    say(&format!("session id={id} socks=127.0.0.1:{socks_port}"));

    let mut cmd = Command::new(&args.ssh);
    cmd.arg("-T").arg("-D").arg(format!("127.0.0.1:{socks_port}"));
    if let Some(config) = &args.ssh_config {
        cmd.arg("-F").arg(config);
    }
    // ssh keeps the first value it sees for an option, so the caller's come first to win.
    for opt in &args.ssh_options {
        cmd.arg("-o").arg(opt);
    }
    cmd.args(["-o", "ConnectTimeout=15", "-o", "ExitOnForwardFailure=yes"]).arg(&args.host);
    cmd.args(&args.remote_command);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap_or_else(|e| fatal(&format!("cannot start {}", args.ssh), e));
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();

    // A failed write means ssh is already gone; `poll` reports that with its exit code.
    if let Some(w) = stdin.as_mut() {
        let script = substitute(&template, &id, COMMIT);
        let _ = w.write_all(script.as_bytes()).and_then(|_| w.flush());
    }
    let (tx, events) = mpsc::channel();
    if let Some(out) = stdout {
        let tx = tx.clone();
        let raw_after = (args.mode == Mode::Stdio).then(|| format!("{id}: end"));
        thread::spawn(move || read_ssh_stdout(out, tx, raw_after));
    }
    // ssh's exit arrives among its lines: its pidfd turns readable then.
    let exited = pidfd(child.id()).unwrap_or_else(|e| fatal("cannot watch ssh", e));
    let exit_tx = tx.clone();
    thread::spawn(move || {
        if readable_within(exited.as_fd(), None).is_ok() {
            let _ = exit_tx.send(Event::SshExited);
        }
    });
    let stdio = args.mode == Mode::Stdio;
    let mut session = Session { child, stdin, events, tx, socks_port, stdout_open: true, stdio };
    let port = session.launch(&id, args.connect_timeout);
    if stdio {
        session.stdio_hello(args.connect_timeout);
    }
    say("ready");
    session.serve_commands(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socks_request_encoding() {
        assert_eq!(
            socks_connect_request(Ipv4Addr::LOCALHOST, 0x1f90),
            [5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90]
        );
        assert_eq!(socks_connect_request(Ipv4Addr::new(10, 1, 2, 3), 22), [5, 1, 0, 1, 10, 1, 2, 3, 0, 22]);
    }

    #[test]
    fn pairs() {
        let pair = |key: &str, value: &str| Some((key.to_owned(), value.to_owned()));
        for (line, expected) in [
            ("listeningOn==4711==", pair("listeningOn", "4711")),
            ("listeningOn==127.0.0.1:4711==", pair("listeningOn", "127.0.0.1:4711")),
            ("connectionToken==ab==cd==", pair("connectionToken", "ab==cd")),
            ("downloadTime====", pair("downloadTime", "")),
            ("0123abcd%%1%%", None),
            ("listeningOn==4711", None),
            ("==x==", None),
            ("some text == other ==", None),
        ] {
            assert_eq!(parse_pair(line), expected, "{line:?}");
        }
    }

    #[test]
    fn ports_from_listening_on() {
        assert_eq!(target_port("4711"), Ok(4711));
        assert_eq!(target_port("127.0.0.1:4711"), Ok(4711));
        assert_eq!(
            target_port("/run/user/1000/x.sock"),
            Err("socket-path listeningOn is not reachable over SOCKS".into())
        );
        assert!(target_port("nope").is_err());
    }

    #[test]
    fn placeholders() {
        let t = "echo \"@ID@: running\"\nbin/@COMMIT@/x @ID@\n";
        assert_eq!(substitute(t, "abc", COMMIT), format!("echo \"abc: running\"\nbin/{COMMIT}/x abc\n"));
        for builtin in [LEGACY_TEMPLATE, EXEC_SERVER_TEMPLATE, SOCKET_TEMPLATE] {
            let s = substitute(builtin, "0123456789abcdef0123", COMMIT);
            assert!(!s.contains('@'), "placeholder left over");
            assert!(s.contains("echo \"0123456789abcdef0123: running\""));
            assert!(s.contains(COMMIT));
        }
    }

    #[test]
    fn ids_are_random_hex() {
        let a = random_id().unwrap();
        assert_eq!(a.len(), 20);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_id().unwrap());
    }

    #[test]
    fn responses() {
        assert_eq!(parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"), Ok((200, &b"hi"[..])));
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"HTTP/1.0 200 OK\r\n").is_err());
    }

    #[test]
    fn args() {
        let a: Vec<String> =
            "--host lab-c --mode=exec-server --ssh-option BatchMode=yes --ssh-option=LogLevel=ERROR --connect-timeout 90"
                .split_whitespace()
                .map(String::from)
                .collect();
        let a = parse_args(&a).unwrap();
        assert_eq!(a.host, "lab-c");
        assert_eq!(a.mode, Mode::ExecServer);
        assert_eq!(a.ssh_options, ["BatchMode=yes", "LogLevel=ERROR"]);
        assert_eq!(a.connect_timeout, Duration::from_secs(90));
        assert!(parse_args(&["--mode".into(), "legacy".into()]).is_err());
    }
}
