//! Stand-in for the closed VS Code server (and the `code` CLI's exec server, and code-server).
//!
//! The end-to-end tests need something on the compute node that is launched the way the real
//! server is, binds exactly the address it is given (so a missed `--host=127.0.0.1` rewrite
//! shows up as "connection refused" instead of being papered over), and prints the same log
//! line the launch script waits for. Every answer says which node, job and socket served it,
//! so a test can prove where its traffic went.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::exit;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vscode_slurm_tests::{events, json_string};

/// What `/version` answers; the real server answers its commit there without a token.
const COMMIT: &str = "test-commit";
/// A request head larger than this is not from any client we drive; refusing it keeps a
/// confused peer from growing our memory.
const MAX_HEAD: usize = 16 * 1024;
/// Bound for `/echo`, large enough for the data-exchange tests.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// A peer that stops talking must not pin a thread forever.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Which program we pretend to be; it decides the log line the launch script greps for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Legacy,
    ExecServer,
    CodeServer,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    command_shell: bool,
    host: Option<String>,
    port: Option<String>,
    socket_path: Option<String>,
    on_host: Option<String>,
    on_port: Option<String>,
    on_socket: bool,
    cli_data_dir: Option<String>,
    bind_addr: Option<String>,
    parent_pid: Option<u32>,
}

#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Tcp { form: Form, host: String, port: u16 },
    Unix { form: Form, path: PathBuf },
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Flags known to take no value, so that the word after them is not swallowed.
const BOOLEAN_FLAGS: &[&str] = &[
    "--start-server",
    "--accept-server-license-terms",
    "--enable-remote-auto-shutdown",
    "--on-socket",
    "--disable-telemetry",
    "--disable-update-check",
    "--without-connection-token",
    "--verbose",
    "--help",
];

/// Parses the union of the three programs' command lines. Unknown flags are skipped (with a
/// value if one follows) because launch scripts pass many options we have no use for.
fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if !arg.starts_with("--") {
            if arg == "command-shell" {
                o.command_shell = true;
            }
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let next_is_value = args.get(i).is_some_and(|n| !n.starts_with("--") && n != "command-shell");
        if name == "--on-port" {
            // A bare `--on-port` means "any port"; accept a number after it too.
            o.on_port = match inline {
                Some(v) => Some(v),
                None if args.get(i).is_some_and(|n| n.parse::<u16>().is_ok()) => {
                    i += 1;
                    Some(args[i - 1].clone())
                }
                None => Some("0".to_string()),
            };
            continue;
        }
        if name == "--on-socket" {
            o.on_socket = true;
            continue;
        }
        if BOOLEAN_FLAGS.contains(&name) {
            continue;
        }
        let value = match inline {
            Some(v) => Some(v),
            None if next_is_value => {
                i += 1;
                Some(args[i - 1].clone())
            }
            None => None,
        };
        let need = |v: Option<String>| v.ok_or_else(|| format!("{name} needs a value"));
        match name {
            "--host" => o.host = Some(need(value)?),
            "--port" => o.port = Some(need(value)?),
            "--socket-path" => o.socket_path = Some(need(value)?),
            "--on-host" => o.on_host = Some(need(value)?),
            "--cli-data-dir" => o.cli_data_dir = Some(need(value)?),
            "--bind-addr" => o.bind_addr = Some(need(value)?),
            "--parent-process-id" => {
                let v = need(value)?;
                o.parent_pid = Some(v.parse().map_err(|_| format!("bad --parent-process-id {v:?}"))?);
            }
            _ => {}
        }
    }
    Ok(o)
}

fn parse_port(v: &str) -> Result<u16, String> {
    v.parse().map_err(|_| format!("bad port {v:?}"))
}

/// Splits `HOST:PORT`, allowing `[v6]:PORT`.
fn split_host_port(v: &str) -> Result<(String, u16), String> {
    let (host, port) = v.rsplit_once(':').ok_or_else(|| format!("{v:?} is not HOST:PORT"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Ok((host.to_string(), parse_port(port)?))
}

fn endpoint_for(o: &Options) -> Result<Endpoint, String> {
    if o.command_shell {
        if o.on_socket {
            let dir = o
                .cli_data_dir
                .clone()
                .or_else(|| std::env::var("XDG_RUNTIME_DIR").ok().filter(|d| !d.is_empty()))
                .unwrap_or_else(|| "/tmp".to_string());
            // The data dir may be on the shared home and pids repeat across nodes (and pid
            // namespaces), so the name carries the host and a time component as well.
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
            let name = format!("test-server-{}-{}-{:08x}.sock", hostname(), std::process::id(), nanos);
            return Ok(Endpoint::Unix { form: Form::ExecServer, path: Path::new(&dir).join(name) });
        }
        let host = o.on_host.clone().unwrap_or_else(|| "127.0.0.1".to_string());
        let port = parse_port(o.on_port.as_deref().unwrap_or("0"))?;
        return Ok(Endpoint::Tcp { form: Form::ExecServer, host, port });
    }
    if let Some(addr) = &o.bind_addr {
        let (host, port) = split_host_port(addr)?;
        return Ok(Endpoint::Tcp { form: Form::CodeServer, host, port });
    }
    if let Some(path) = &o.socket_path {
        return Ok(Endpoint::Unix { form: Form::Legacy, path: PathBuf::from(path) });
    }
    let host = o.host.clone().unwrap_or_else(|| "localhost".to_string());
    let port = parse_port(o.port.as_deref().unwrap_or("0"))?;
    Ok(Endpoint::Tcp { form: Form::Legacy, host, port })
}

fn bind(ep: &Endpoint) -> io::Result<Listener> {
    match ep {
        Endpoint::Tcp { host, port, .. } => {
            let addrs: Vec<_> = (host.as_str(), *port).to_socket_addrs()?.collect();
            Ok(Listener::Tcp(TcpListener::bind(&addrs[..])?))
        }
        Endpoint::Unix { path, .. } => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            remove_stale_socket(path);
            Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
        }
    }
}

/// A socket file left by a killed server would make bind fail; one that still answers
/// belongs to a live server and is left alone so that bind reports the conflict.
fn remove_stale_socket(path: &Path) {
    let is_socket = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && UnixStream::connect(path).is_err() {
        let _ = fs::remove_file(path);
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The line each real program prints once it listens; launch scripts wait for exactly this.
fn listening_line(ep: &Endpoint, listener: &Listener) -> String {
    let (form, addr) = match (ep, listener) {
        (Endpoint::Tcp { form, host, .. }, Listener::Tcp(l)) => {
            let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            (*form, Ok((bracket(host), port)))
        }
        (Endpoint::Unix { form, .. }, Listener::Unix(_, p)) => (*form, Err(p.display().to_string())),
        _ => unreachable!("listener kind always follows the endpoint"),
    };
    match (form, addr) {
        (Form::Legacy, Ok((_, port))) => format!("Extension host agent listening on {port}"),
        (Form::Legacy, Err(path)) => format!("Extension host agent listening on {path}"),
        (Form::ExecServer, Ok((host, port))) => format!("Listening on {host}:{port}"),
        (Form::ExecServer, Err(path)) => format!("Listening on {path}"),
        (Form::CodeServer, Ok((host, port))) => format!("HTTP server listening on http://{host}:{port}/"),
        (Form::CodeServer, Err(path)) => format!("HTTP server listening on {path}"),
    }
}

/// The uname nodename; read from /proc so it follows the UTS namespace without libc.
/// The HTCondor job's cluster id, from the job ad its starter wrote, for
/// tests of the HTCondor path (empty elsewhere).
fn condor_cluster() -> String {
    let Some(path) = std::env::var_os("_CONDOR_JOB_AD") else { return String::new() };
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("ClusterId = "))
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Field 22 of /proc/self/stat: with the pid it identifies this process instance, so a test can
/// tell a restarted server from the same one.
fn start_time() -> u64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may contain spaces; fields after it start at 3.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after.split_whitespace().nth(22 - 3).and_then(|f| f.parse().ok()).unwrap_or(0)
}

/// Connections accepted so far: the stranger tests check that the server
/// saw none but the session's own.
static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn info_json(local: &str, peer: &str) -> String {
    format!(
        "{{\"hostname\":{},\"job_id\":{},\"condor_cluster\":{},\"pid\":{},\"start_time\":{},\"local_addr\":{},\"peer_addr\":{},\"user\":{},\"runtime_dir\":{},\"connections\":{}}}",
        json_string(&hostname()),
        json_string(&std::env::var("SLURM_JOB_ID").unwrap_or_default()),
        json_string(&condor_cluster()),
        std::process::id(),
        start_time(),
        json_string(local),
        json_string(peer),
        json_string(&std::env::var("USER").unwrap_or_default()),
        // Set only by the SPANK plugin, so it shows the job ran with --vscode.
        json_string(&std::env::var("VSCODE_SLURM_RUNTIME_DIR").unwrap_or_default()),
        CONNECTIONS.load(std::sync::atomic::Ordering::SeqCst),
    )
}

fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((p, p + 4));
    }
    buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, p + 2))
}

struct Request {
    version: String,
    method: String,
    path: String,
    content_length: Option<usize>,
    /// Body bytes that arrived together with the head.
    rest: Vec<u8>,
}

enum HeadError {
    Io(io::Error),
    TooLarge,
    Malformed,
}

fn read_request<S: Read>(s: &mut S) -> Result<Request, HeadError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, body_start) = loop {
        if let Some(found) = find_head_end(&buf) {
            break found;
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let n = s.read(&mut chunk).map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Malformed);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut parts = lines.next().unwrap_or("").split_whitespace();
    let method = parts.next().ok_or(HeadError::Malformed)?.to_string();
    let target = parts.next().ok_or(HeadError::Malformed)?;
    let version = parts.next().unwrap_or("HTTP/1.0").to_string();
    let path = target.split('?').next().unwrap_or("/").to_string();
    let mut content_length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = Some(v.trim().parse().map_err(|_| HeadError::Malformed)?);
            }
        }
    }
    Ok(Request { version, method, path, content_length, rest: buf[body_start..].to_vec() })
}

fn respond<S: Write>(s: &mut S, version: &str, status: &str, ctype: &str, body: &[u8]) -> io::Result<()> {
    let version = if version == "HTTP/1.0" { "HTTP/1.0" } else { "HTTP/1.1" };
    let head = format!(
        "{version} {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

/// One request per connection, then close: the tests open a fresh connection per check so
/// each one crosses the whole relay chain again.
fn handle<S: Read + Write>(s: &mut S, local: &str, peer: &str) -> io::Result<()> {
    let req = match read_request(s) {
        Ok(r) => r,
        Err(HeadError::Io(e)) => return Err(e),
        Err(HeadError::TooLarge) => {
            return respond(
                s,
                "HTTP/1.1",
                "431 Request Header Fields Too Large",
                "text/plain",
                b"too large\n",
            )
        }
        Err(HeadError::Malformed) => {
            return respond(s, "HTTP/1.1", "400 Bad Request", "text/plain", b"bad\n")
        }
    };
    let v = req.version.as_str();
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/version") => respond(s, v, "200 OK", "text/plain", COMMIT.as_bytes()),
        ("GET", _) => respond(s, v, "200 OK", "application/json", info_json(local, peer).as_bytes()),
        ("POST", "/echo") => {
            let len = match req.content_length {
                Some(n) if n <= MAX_BODY => n,
                Some(_) => return respond(s, v, "413 Payload Too Large", "text/plain", b"too large\n"),
                None => return respond(s, v, "411 Length Required", "text/plain", b"length required\n"),
            };
            let mut body = req.rest;
            body.truncate(len);
            if body.len() < len {
                let missing = len - body.len();
                let got = s.take(missing as u64).read_to_end(&mut body)?;
                if got < missing {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short"));
                }
            }
            respond(s, v, "200 OK", "application/octet-stream", &body)
        }
        _ => respond(s, v, "405 Method Not Allowed", "text/plain", b"method not allowed\n"),
    }
}

fn serve_tcp(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = handle(&mut s, &local, &peer);
    let _ = s.shutdown(Shutdown::Write);
}

fn serve_unix(mut s: UnixStream, path: &Path) {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let peer = s
        .peer_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "unnamed".to_string());
    let _ = handle(&mut s, &path.display().to_string(), &peer);
    let _ = s.shutdown(Shutdown::Write);
}

fn serve(listener: Listener) -> ! {
    loop {
        // Counted at accept, before a byte is read: a stranger that sends nothing counts too.
        match &listener {
            Listener::Tcp(l) => match l.accept() {
                Ok((s, _)) => {
                    CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    thread::spawn(move || serve_tcp(s));
                }
                Err(e) => accept_failed(e),
            },
            Listener::Unix(l, path) => match l.accept() {
                Ok((s, _)) => {
                    CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let path = path.clone();
                    thread::spawn(move || serve_unix(s, &path));
                }
                Err(e) => accept_failed(e),
            },
        }
    }
}

/// Running out of descriptors or threads is transient; back off instead of spinning.
fn accept_failed(e: io::Error) {
    eprintln!("vscode-test-server: accept: {e}");
    thread::sleep(Duration::from_millis(100)); // allow-sleep: nothing announces that descriptors or threads are free again
}

/// The real CLI ends with the launch script's shell; so do we, or tests would leak servers.
/// The shell's pidfd turns readable when it exits, even while its own parent never reaps it.
fn watch_parent(pid: u32) {
    thread::spawn(move || {
        let watched = events::pidfd(pid).and_then(|exited| events::readable_within(exited.as_fd(), None));
        match watched {
            // ESRCH: gone before we looked.
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                eprintln!("vscode-test-server: cannot watch parent process {pid}: {e}, exiting");
                exit(1);
            }
            _ => {
                eprintln!("vscode-test-server: parent process {pid} is gone, exiting");
                exit(0);
            }
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let endpoint = match parse_args(&args).and_then(|o| endpoint_for(&o).map(|e| (o, e))) {
        Ok((o, e)) => {
            if let Some(pid) = o.parent_pid {
                watch_parent(pid);
            }
            e
        }
        Err(msg) => {
            eprintln!("vscode-test-server: {msg}");
            exit(2);
        }
    };
    let listener = match bind(&endpoint) {
        Ok(l) => l,
        Err(e) => {
            let what = match &endpoint {
                Endpoint::Tcp { host, port, .. } => format!("{}:{port}", bracket(host)),
                Endpoint::Unix { path, .. } => path.display().to_string(),
            };
            eprintln!("vscode-test-server: cannot listen on {what}: {e}");
            exit(1);
        }
    };
    let line = listening_line(&endpoint, &listener);
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    serve(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn endpoint(s: &str) -> Endpoint {
        endpoint_for(&parse_args(&args(s)).unwrap()).unwrap()
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            endpoint(
                "--start-server --host=10.0.0.5 --accept-server-license-terms --enable-remote-auto-shutdown \
                 --port=0 --connection-token-file /x/tok --telemetry-level off"
            ),
            Endpoint::Tcp { form: Form::Legacy, host: "10.0.0.5".into(), port: 0 }
        );
        assert_eq!(
            endpoint("--start-server --host 127.0.0.1 --unknown --port 7000"),
            Endpoint::Tcp { form: Form::Legacy, host: "127.0.0.1".into(), port: 7000 }
        );
        assert_eq!(
            endpoint("--start-server --host=127.0.0.1 --socket-path=/run/x.sock"),
            Endpoint::Unix { form: Form::Legacy, path: "/run/x.sock".into() }
        );
        assert_eq!(
            endpoint("command-shell --cli-data-dir /d --parent-process-id 12 --on-host=10.1.1.1 --on-port"),
            Endpoint::Tcp { form: Form::ExecServer, host: "10.1.1.1".into(), port: 0 }
        );
        assert!(matches!(
            endpoint("command-shell --cli-data-dir /d --on-socket"),
            Endpoint::Unix { form: Form::ExecServer, path } if path.starts_with("/d")
        ));
        assert_eq!(
            endpoint("--bind-addr=10.2.2.2:8080 --auth none"),
            Endpoint::Tcp { form: Form::CodeServer, host: "10.2.2.2".into(), port: 8080 }
        );
        assert_eq!(
            endpoint("--bind-addr [::1]:0"),
            Endpoint::Tcp { form: Form::CodeServer, host: "::1".into(), port: 0 }
        );
        let o = parse_args(&args("command-shell --parent-process-id 42 --on-port")).unwrap();
        assert_eq!(o.parent_pid, Some(42));
    }

    fn request(addr: std::net::SocketAddr, raw: &[u8]) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(raw).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let (head_end, body_start) = find_head_end(&resp).unwrap();
        (String::from_utf8_lossy(&resp[..head_end]).into_owned(), resp[body_start..].to_vec())
    }

    #[test]
    fn serves_version_info_and_echo() {
        let ep = Endpoint::Tcp { form: Form::Legacy, host: "127.0.0.1".into(), port: 0 };
        let listener = bind(&ep).unwrap();
        let line = listening_line(&ep, &listener);
        let addr = match &listener {
            Listener::Tcp(l) => l.local_addr().unwrap(),
            Listener::Unix(..) => unreachable!(),
        };
        assert_eq!(line, format!("Extension host agent listening on {}", addr.port()));
        thread::spawn(move || serve(listener));

        let (head, body) = request(addr, b"GET /version HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert_eq!(body, COMMIT.as_bytes());

        let (head, body) = request(addr, b"GET /?tkn=x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        let body = String::from_utf8(body).unwrap();
        assert!(body.starts_with("{\"hostname\":\""), "{body}");
        assert!(body.contains(&format!("\"pid\":{},", std::process::id())), "{body}");
        assert!(body.contains(&format!("\"local_addr\":\"{addr}\"")), "{body}");
        assert!(body.contains("\"peer_addr\":\"127.0.0.1:"), "{body}");
        assert!(!body.contains("\"start_time\":0,"), "{body}");

        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut raw =
            format!("POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n", payload.len()).into_bytes();
        raw.extend_from_slice(&payload);
        let (head, body) = request(addr, &raw);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, payload);

        let raw = format!("POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        let (head, _) = request(addr, raw.as_bytes());
        assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    }

    #[test]
    fn a_parent_that_is_gone_already_is_told_apart() {
        let gone = events::pidfd(i32::MAX as u32).unwrap_err();
        assert_eq!(gone.raw_os_error(), Some(libc::ESRCH), "{gone}");
    }
}
