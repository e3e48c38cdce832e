//! The port VS Code is told about: sshd connects here on the login node and
//! we pass the bytes on to the server inside the job, through its door.
//!
//! Two checks guard each connection: only the session's user may connect
//! here (the owner of the client's socket), and only the session's door may
//! be what we connect to (it proves the session's key, see
//! `vscode_slurm_door::handshake`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use vscode_slurm_door::refusals::Refusals;
use vscode_slurm_door::{handshake, owner, splice};
use vscode_slurm_protocol::door::{DoorKey, Status};

static REFUSED: Refusals = Refusals::new("relay connections refused");

/// VS Code opens several connections at once when a window starts.
const BACKLOG: u32 = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Bound before the job's srun or salloc starts, because the port goes into the job's
/// environment and VS Code may connect the moment it reads `listeningOn`.
pub fn bind(host: IpAddr, port: u16) -> io::Result<TcpListener> {
    let addr = SocketAddr::new(host, port);
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A fixed --listen-port should be reusable right after a previous session.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// `server_gone` learns the endpoint when its door says the server is gone
/// (or was replaced by someone else's): the session is over (VS Code's next
/// connection needs a new launch script, which means a new ssh session).
pub async fn serve(
    listener: TcpListener,
    endpoint: watch::Receiver<Option<SocketAddr>>,
    door_key: Arc<DoorKey>,
    connect_wait: Duration,
    server_gone: mpsc::Sender<SocketAddr>,
) {
    let our_uid = nix::unistd::getuid().as_raw();
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let endpoint = endpoint.clone();
                let server_gone = server_gone.clone();
                let door_key = Arc::clone(&door_key);
                let open = Open::new();
                tokio::spawn(async move {
                    let session = Session { our_uid, door_key: &door_key, connect_wait, server_gone };
                    if let Err(e) = handle(client, peer, endpoint, session).await {
                        tracing::info!("relay connection from {peer}: {e}");
                    }
                    drop(open);
                });
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!("accepting a relay connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Connections being handled now, and the most there were since the heap
/// was last given back.
static OPEN: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Bursts smaller than this leave too little behind to be worth a trim.
const TRIM_AFTER_PEAK: usize = 32;

/// Counts a connection while it lives. A window opening (or a reload) makes
/// VS Code open many connections at once; their memory, freed when most of
/// them have closed, would otherwise stay with the process for the rest of
/// the session, because glibc only returns the top of its heap by itself.
/// Trimming once the count has fallen to a quarter of its peak gives it
/// back, without timers and at most once per burst.
struct Open;

impl Open {
    fn new() -> Open {
        let now = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
        PEAK.fetch_max(now, Ordering::Relaxed);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let now = OPEN.fetch_sub(1, Ordering::Relaxed) - 1;
        let peak = PEAK.load(Ordering::Relaxed);
        if peak >= TRIM_AFTER_PEAK && now <= peak / 4 {
            PEAK.store(now, Ordering::Relaxed);
            // SAFETY: malloc_trim only walks and shrinks the allocator's own
            // free lists; it takes no pointer of ours.
            #[cfg(target_env = "gnu")]
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// What every connection of the session shares.
struct Session<'a> {
    our_uid: u32,
    door_key: &'a DoorKey,
    connect_wait: Duration,
    server_gone: mpsc::Sender<SocketAddr>,
}

async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    mut endpoint: watch::Receiver<Option<SocketAddr>>,
    session: Session<'_>,
) -> io::Result<()> {
    let Session { our_uid, door_key, connect_wait, server_gone } = session;
    let local = client.local_addr()?;
    let uid = match owner::established_owner(peer, local) {
        Ok(uid) => uid,
        Err(e) => {
            tracing::warn!("cannot tell who opened a relay connection ({e}); refusing it");
            return Ok(());
        }
    };
    // The lookup named a tuple, not our socket: a stranger who connected
    // from a port and reset may have left the tuple to a newer connection of
    // the user's. Only while our side is still connected is its peer the one
    // that was looked up.
    let still_connected = owner::is_established(&client).unwrap_or(false);
    if uid != Some(our_uid) || !still_connected {
        let uid = uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string());
        REFUSED.refused(|| {
            format!("refused a relay connection from uid {uid} (pid unknown) — only the session's own user may connect")
        });
        return Ok(());
    }

    let target = match timeout(connect_wait, endpoint.wait_for(Option::is_some)).await {
        Ok(Ok(target)) => *target,
        Ok(Err(_)) => {
            tracing::warn!("the job's output ended before it named its server; closing a relay connection");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(
                "the job named no server within {}s (--connect-wait); closing a relay connection",
                connect_wait.as_secs()
            );
            return Ok(());
        }
    };
    let Some(target) = target else { return Ok(()) };

    let mut server = match timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(server)) => server,
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            // The door lives as long as the window's helper: it is gone too.
            tracing::debug!("the session's door at {target} refused a connection");
            let _ = server_gone.try_send(target);
            return Ok(());
        }
        Ok(Err(e)) => {
            tracing::warn!("could not reach the session's server at {target}: {e}");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(
                "could not reach the session's server at {target}: no answer within {CONNECT_TIMEOUT:?}"
            );
            return Ok(());
        }
    };
    match handshake::open(&mut server, door_key).await {
        Ok(Status::Forwarding) => {}
        Ok(Status::ServerGone) => {
            tracing::debug!("the door at {target} says the session's server is gone");
            let _ = server_gone.try_send(target);
            return Ok(());
        }
        Ok(Status::NotTheSessionsServer) => {
            tracing::error!(
                "the door at {target} found another user's process where the session's server was; \
                 not forwarding"
            );
            let _ = server_gone.try_send(target);
            return Ok(());
        }
        Ok(Status::Unreachable) => {
            tracing::warn!(
                "the door at {target} could not reach the session's server; closing a relay connection"
            );
            return Ok(());
        }
        Err(why) => {
            tracing::error!(
                "refused to forward to {target}: {why}, so it is not this session's door \
                 (the window's helper may have died and someone else taken its port); not forwarding"
            );
            return Ok(());
        }
    }
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tracing::debug!("relaying {peer} to {target}");
    // Each direction is shut down for writing when the other side finishes,
    // so half-closes pass through; both sockets drop (close) on return,
    // whether the relay ended or failed.
    let (up, down) = splice::relay(&mut client, &mut server).await?;
    tracing::debug!("relay {peer} to {target} done: {up} bytes up, {down} bytes down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bounds every wait; none of these tests asserts on timing.
    const BOUND: Duration = Duration::from_secs(20);

    fn key() -> Arc<DoorKey> {
        Arc::new(DoorKey::parse(&"5a".repeat(32)).unwrap())
    }

    /// The relay's whole path (accept, owner check, connect, handshake,
    /// relay) to `door`; the receiver hears of a server that is gone.
    fn relay_to_door(door: SocketAddr) -> (SocketAddr, mpsc::Receiver<SocketAddr>) {
        let listener = bind(IpAddr::V4(Ipv4Addr::LOCALHOST), 0).unwrap();
        let addr = listener.local_addr().unwrap();
        let (endpoint, receiver) = watch::channel(Some(door));
        let (gone, gone_rx) = mpsc::channel(1);
        tokio::spawn(async move {
            serve(listener, receiver, key(), Duration::from_secs(5), gone).await;
            drop(endpoint);
        });
        (addr, gone_rx)
    }

    /// The same, with the session's door in front of a TCP `target`.
    async fn relay_to(target: SocketAddr) -> SocketAddr {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let door =
            vscode_slurm_door::door::start(loopback, vscode_slurm_door::door::Target::Tcp(target), key())
                .await
                .unwrap();
        relay_to_door(door).0
    }

    /// What a closed connection shows its reader: EOF, or a reset.
    async fn assert_closed(stream: &mut TcpStream, what: &str) {
        let mut buf = [0u8; 64];
        match timeout(BOUND, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("{what}: got {n} bytes instead of the end"),
            Err(_) => panic!("{what}: still open after {BOUND:?}"),
        }
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_through_the_listener() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = relay_to(backend.local_addr().unwrap()).await;
        let mut client = TcpStream::connect(relay).await.unwrap();
        let (mut server, _) = timeout(BOUND, backend.accept()).await.unwrap().unwrap();
        let up: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        let exchange = async {
            tokio::try_join!(
                async { client_write.write_all(&up).await.and(client_write.shutdown().await) },
                async { server_write.write_all(&down).await.and(server_write.shutdown().await) },
                server_read.read_to_end(&mut got_up),
                client_read.read_to_end(&mut got_down),
            )
        };
        timeout(BOUND, exchange).await.expect("exchange finished").unwrap();
        assert!(got_up == up && got_down == down, "relayed bytes differ");
    }

    /// A client that closes at once is refused (its socket is no longer
    /// ESTABLISHED when its owner is checked) or relayed and closed; either
    /// way no backend connection stays open.
    #[tokio::test]
    async fn a_client_that_closes_at_once_leaves_no_backend_connection() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = relay_to(backend.local_addr().unwrap()).await;
        let (open_tx, mut open_rx) = watch::channel(0i32);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = backend.accept().await {
                open_tx.send_modify(|n| *n += 1);
                let open_tx = open_tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        let _ = conn.write_all(&buf[..n]).await;
                    }
                    open_tx.send_modify(|n| *n -= 1);
                });
            }
        });
        drop(TcpStream::connect(relay).await.unwrap());
        // A well-behaved client afterwards still gets through ...
        let mut client = TcpStream::connect(relay).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        timeout(BOUND, client.read_exact(&mut pong)).await.expect("echo came back").unwrap();
        assert_eq!(&pong, b"ping");
        drop(client);
        // ... and once it is gone, nothing is left open at the backend.
        timeout(BOUND, open_rx.wait_for(|&n| n == 0)).await.expect("backend connections closed").unwrap();
    }

    #[tokio::test]
    async fn something_that_is_not_the_door_gets_no_byte() {
        let impostor = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (relay, _gone) = relay_to_door(impostor.local_addr().unwrap());
        let mut client = TcpStream::connect(relay).await.unwrap();
        client.write_all(b"GET /?tkn=secret HTTP/1.0\r\n\r\n").await.unwrap();
        let (mut conn, _) = timeout(BOUND, impostor.accept()).await.expect("relay connected").unwrap();
        conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello from bob, send me the token please").await.unwrap();
        let mut got = Vec::new();
        let _ = timeout(BOUND, conn.read_to_end(&mut got)).await.expect("relay closed");
        assert!(got.is_empty(), "the impostor got {got:?}");
        assert_closed(&mut client, "the client connection").await;
    }

    #[tokio::test]
    async fn a_door_whose_server_is_gone_ends_the_session() {
        let dir = std::env::temp_dir().join(format!("relay-gone-{}", std::process::id()));
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let target = vscode_slurm_door::door::Target::Unix(dir.join("none.sock"));
        let door = vscode_slurm_door::door::start(loopback, target, key()).await.unwrap();
        let (relay, mut gone) = relay_to_door(door);
        let mut client = TcpStream::connect(relay).await.unwrap();
        assert_eq!(timeout(BOUND, gone.recv()).await.expect("told the server is gone"), Some(door));
        assert_closed(&mut client, "the client connection").await;
    }

    #[tokio::test]
    async fn a_refusing_backend_closes_the_client() {
        let refused = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let relay = relay_to(refused).await;
        let mut client = TcpStream::connect(relay).await.unwrap();
        let _ = client.write_all(b"hello").await;
        assert_closed(&mut client, "the client connection").await;
    }

    #[tokio::test]
    async fn a_resetting_backend_closes_the_client() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = relay_to(backend.local_addr().unwrap()).await;
        let mut client = TcpStream::connect(relay).await.unwrap();
        let (server, _) = timeout(BOUND, backend.accept()).await.expect("relay connected").unwrap();
        // Closing with zero linger sends a reset instead of a FIN.
        server.set_zero_linger().unwrap();
        drop(server);
        assert_closed(&mut client, "the client connection").await;
    }
}
