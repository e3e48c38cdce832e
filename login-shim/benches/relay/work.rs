//! The traffic the benchmark measures, and the server at the far end.
//!
//! One server port serves every test: the first byte a client sends picks
//! what the connection does (`S` sink, `E` echo), and an HTTP `GET` gets a
//! small answer (the Remote-SSH emulator asks one when a lab session opens).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use vscode_slurm_protocol::door::{self, DoorKey};

pub const SINK: u8 = b'S';
pub const ECHO: u8 = b'E';
/// Bulk transfers write and read this much per call.
const CHUNK: usize = 256 * 1024;
pub const PING: usize = 64;
/// Untimed round trips before each ping-pong series.
pub const WARM_UP: usize = 200;
/// No test waits longer than this for one read or write; a stuck relay
/// shows up as an error, not a hung benchmark.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How a client reaches the server: straight or through a SOCKS5 proxy
/// (ssh -D) that connects to `target` on the far side, and, when
/// `door_key` is set, through a door: the client speaks the door's
/// handshake itself (as the shim's relay does) before its first byte.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub target: SocketAddr,
    pub proxy: Option<SocketAddr>,
    pub door_key: Option<&'static DoorKey>,
}

impl Route {
    pub fn tcp(target: SocketAddr) -> Route {
        Route { target, proxy: None, door_key: None }
    }

    pub fn socks(proxy: SocketAddr, target: SocketAddr) -> Route {
        Route { target, proxy: Some(proxy), door_key: None }
    }

    /// The same way, ending at a door that `key` opens.
    pub fn through_door(self, key: &'static DoorKey) -> Route {
        Route { door_key: Some(key), ..self }
    }

    pub fn connect(&self) -> io::Result<TcpStream> {
        let mut stream = match self.proxy {
            None => TcpStream::connect_timeout(&self.target, IO_TIMEOUT)?,
            Some(proxy) => socks_connect(proxy, self.target)?,
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        if let Some(key) = self.door_key {
            open_door(&mut stream, key)?;
        }
        Ok(stream)
    }

    /// `[door ]TARGET[ via PROXY]`, as [`Route::to_arg`] writes it; `door`
    /// says the key is needed, which never travels on a command line (the
    /// `client` role reads it from its stdin).
    pub fn parse(text: &str) -> Result<(Route, bool), String> {
        let addr = |s: &str| s.parse::<SocketAddr>().map_err(|e| format!("bad address {s:?}: {e}"));
        let (door, text) = match text.strip_prefix("door ") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let route = match text.split_once(" via ") {
            Some((target, proxy)) => Route::socks(addr(proxy)?, addr(target)?),
            None => Route::tcp(addr(text)?),
        };
        Ok((route, door))
    }

    pub fn to_arg(self) -> String {
        let door = if self.door_key.is_some() { "door " } else { "" };
        match self.proxy {
            None => format!("{door}{}", self.target),
            Some(proxy) => format!("{door}{} via {proxy}", self.target),
        }
    }
}

/// The relay's side of the door handshake (`vscode_slurm_protocol::door`,
/// the messages `vscode_slurm_door::handshake::open` exchanges), blocking:
/// after it the stream reaches the server.
fn open_door(stream: &mut TcpStream, key: &DoorKey) -> io::Result<()> {
    let mut hello = [0u8; door::HELLO_LEN];
    stream.read_exact(&mut hello)?;
    let door_challenge =
        door::parse_hello(&hello).ok_or_else(|| io::Error::other("the door's address is not a door"))?;
    let relay_challenge = door::challenge()?;
    stream.write_all(&door::relay_proof(key, &door_challenge, &relay_challenge))?;
    let mut answer = [0u8; door::ANSWER_LEN];
    stream.read_exact(&mut answer)?;
    match door::check_door_answer(key, &relay_challenge, &door_challenge, &answer) {
        Some(door::Status::Forwarding) => Ok(()),
        Some(status) => Err(io::Error::other(format!("the door did not forward: {status:?}"))),
        None => Err(io::Error::other("the door did not prove the session's key")),
    }
}

fn socks_connect(proxy: SocketAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let IpAddr::V4(ip) = target.ip() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "SOCKS targets are IPv4 here"));
    };
    let mut s = TcpStream::connect_timeout(&proxy, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(&[5, 1, 0])?;
    let mut greeting = [0u8; 2];
    s.read_exact(&mut greeting)?;
    if greeting != [5, 0] {
        return Err(io::Error::other(format!("SOCKS greeting refused: {greeting:?}")));
    }
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&ip.octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&request)?;
    // Version, reply, reserved, address type 1 (IPv4), address, port.
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    if reply[1] != 0 {
        return Err(io::Error::other(format!("SOCKS CONNECT failed with reply {}", reply[1])));
    }
    Ok(s)
}

/// A listener with a backlog that a 200-connection burst cannot overflow
/// (std's is 128), so the server is never what the burst measures.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
    };
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
    };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))?;
    listen(&fd, Backlog::new(1024).map_err(io::Error::from)?)?;
    // SAFETY: a listening socket we just made and own; the listener takes it over.
    Ok(unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) })
}

/// Serves sink, echo and HTTP connections on `listener`, a thread each, forever.
pub fn serve(listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let spawned = thread::Builder::new().stack_size(128 * 1024).spawn(move || {
            let _ = serve_one(stream);
        });
        if spawned.is_err() {
            // allow-sleep: nothing announces that threads can be made again
            thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn spawn_server(addr: SocketAddr) -> io::Result<SocketAddr> {
    let listener = listen(addr)?;
    let local = listener.local_addr()?;
    thread::spawn(move || serve(listener));
    Ok(local)
}

fn serve_one(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut first = [0u8; 1];
    if stream.read(&mut first)? == 0 {
        return Ok(());
    }
    match first[0] {
        SINK => {
            let mut buf = vec![0u8; CHUNK];
            while stream.read(&mut buf)? > 0 {}
            // Closing tells the client that every byte arrived.
            Ok(())
        }
        ECHO => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return stream.shutdown(Shutdown::Write);
                }
                stream.write_all(&buf[..n])?;
            }
        }
        b'G' => {
            // The rest of an HTTP request head; the answer is all we send.
            let mut head = vec![b'G'];
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let body = format!("{{\"server\":\"relay-bench\",\"pid\":{}}}\n", std::process::id());
            let answer = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            stream.write_all(answer.as_bytes())
        }
        _ => Ok(()),
    }
}

/// Sends `bytes` to a sink and waits for its close; the time from connect
/// to close.
pub fn bulk(route: Route, bytes: u64) -> io::Result<Duration> {
    let buf = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut s = route.connect()?;
    s.write_all(&[SINK])?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 16];
    if s.read(&mut rest)? != 0 {
        return Err(io::Error::other("the sink answered"));
    }
    Ok(started.elapsed())
}

/// `count` timed round trips of `PING` bytes through an echo, after a
/// short warm-up; each sample in nanoseconds.
pub fn ping_pong(route: Route, count: usize) -> io::Result<Vec<u64>> {
    let mut s = route.connect()?;
    s.write_all(&[ECHO])?;
    let mut msg = [0u8; PING];
    let mut back = [0u8; PING];
    let samples = timed_after_warm_up(count, WARM_UP, |i| {
        msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
        round_trip(&mut s, &msg, &mut back)
    })?;
    // A clean end, so a forking relay's child is gone when we return.
    end_cleanly(&mut s)?;
    Ok(samples)
}

/// Untimed connections before each set-up series.
pub const SETUP_WARM_UP: usize = 5;

/// `count` fresh connections one after the other, each timed from the
/// start of its connect (the SOCKS exchange and the door's handshake
/// included) to the first 64-byte echo back: what opening a connection
/// costs before it carries anything. Each is closed cleanly (untimed)
/// before the next. Samples in nanoseconds.
pub fn setup(route: Route, count: usize) -> io::Result<Vec<u64>> {
    let mut first = [9u8; 1 + PING];
    first[0] = ECHO;
    let mut back = [0u8; PING];
    timed_after_warm_up(count, SETUP_WARM_UP, |_| {
        let started = Instant::now();
        let mut s = route.connect()?;
        let connected = started.elapsed();
        let took = connected + round_trip(&mut s, &first, &mut back)?;
        end_cleanly(&mut s)?;
        Ok(took)
    })
}

/// Runs `timed` `warm_up + count` times; the durations of the last
/// `count`, in nanoseconds.
fn timed_after_warm_up(
    count: usize,
    warm_up: usize,
    mut timed: impl FnMut(usize) -> io::Result<Duration>,
) -> io::Result<Vec<u64>> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count + warm_up {
        let took = timed(i)?;
        if i >= warm_up {
            samples.push(took.as_nanos() as u64);
        }
    }
    Ok(samples)
}

/// Writes `msg` and reads the echo of its last `back.len()` bytes (a first
/// byte may be the one that picks the echo): the time that took, checked
/// afterwards.
fn round_trip(s: &mut TcpStream, msg: &[u8], back: &mut [u8]) -> io::Result<Duration> {
    let started = Instant::now();
    s.write_all(msg)?;
    s.read_exact(back)?;
    let took = started.elapsed();
    if back[..] != msg[msg.len() - back.len()..] {
        return Err(io::Error::other("the echo differs"));
    }
    Ok(took)
}

/// Half-closes and reads to the far end's close.
fn end_cleanly(s: &mut TcpStream) -> io::Result<()> {
    s.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 16];
    while s.read(&mut rest)? > 0 {}
    Ok(())
}

/// `conns` connections opened at once, each doing `rounds` ping-pongs:
/// the time from the first connection's start to the last one's end, and
/// how many failed.
///
/// The workers time themselves: a clock read by the spawning thread after
/// the barrier can run late by however long that thread waits for a core
/// while 200 busy workers hold both, which on a loaded 2-core machine once
/// made a direct burst look 5× faster than it was.
pub fn burst(route: Route, conns: usize, rounds: usize) -> (Duration, usize) {
    let barrier = Arc::new(Barrier::new(conns));
    let mut workers = Vec::with_capacity(conns);
    for _ in 0..conns {
        let barrier = barrier.clone();
        let spawned = thread::Builder::new().stack_size(128 * 1024).spawn(move || {
            barrier.wait();
            let started = Instant::now();
            let result = one_burst_connection(route, rounds);
            (started, Instant::now(), result.is_ok())
        });
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(_) => return (Duration::ZERO, conns),
        }
    }
    let mut errors = 0;
    let (mut first_start, mut last_end) = (None::<Instant>, None::<Instant>);
    for worker in workers {
        match worker.join() {
            Ok((started, ended, ok)) => {
                first_start = Some(first_start.map_or(started, |t| t.min(started)));
                last_end = Some(last_end.map_or(ended, |t| t.max(ended)));
                errors += usize::from(!ok);
            }
            Err(_) => errors += 1,
        }
    }
    let took = first_start.zip(last_end).map_or(Duration::ZERO, |(start, end)| end - start);
    (took, errors)
}

fn one_burst_connection(route: Route, rounds: usize) -> io::Result<()> {
    let mut s = route.connect()?;
    s.write_all(&[ECHO])?;
    let mut msg = [7u8; PING];
    let mut back = [0u8; PING];
    for i in 0..rounds {
        msg[0] = i as u8;
        round_trip(&mut s, &msg, &mut back)?;
    }
    s.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 1];
    match s.read(&mut rest)? {
        0 => Ok(()),
        _ => Err(io::Error::other("data after the echo's end")),
    }
}

/// Opens `count` echo connections and makes sure each is relayed end to end.
pub fn hold(route: Route, count: usize) -> io::Result<Vec<TcpStream>> {
    (0..count)
        .map(|_| {
            let mut s = route.connect()?;
            s.write_all(&[ECHO])?;
            let mut back = [0u8; PING];
            s.write_all(&[1u8; PING])?;
            s.read_exact(&mut back)?;
            Ok(s)
        })
        .collect()
}

/// A port nothing listens on right now (the tiny race is acceptable here).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}
