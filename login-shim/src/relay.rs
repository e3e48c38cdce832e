//! The port VS Code is told about: sshd connects here on the login node and
//! we pass the bytes on to the server inside the job.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use crate::{peer_uid, sock_diag, splice};

/// VS Code opens several connections at once when a window starts.
const BACKLOG: u32 = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Bound before salloc starts, because the port goes into the job's
/// environment and VS Code may connect the moment it reads `listeningOn`.
pub fn bind(host: IpAddr, port: u16) -> io::Result<TcpListener> {
    let addr = SocketAddr::new(host, port);
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A fixed --listen-port should be reusable right after a previous session.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// `server_gone` learns the endpoint when it refuses a connection: nothing
/// listens there any more, so the session is over (VS Code's next
/// connection needs a new launch script, which means a new ssh session).
pub async fn serve(
    listener: TcpListener,
    endpoint: watch::Receiver<Option<SocketAddr>>,
    connect_wait: Duration,
    server_gone: mpsc::Sender<SocketAddr>,
) {
    let our_uid = nix::unistd::getuid().as_raw();
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let endpoint = endpoint.clone();
                let server_gone = server_gone.clone();
                let open = Open::new();
                tokio::spawn(async move {
                    if let Err(e) = handle(client, peer, our_uid, endpoint, connect_wait, server_gone).await {
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

async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    our_uid: u32,
    mut endpoint: watch::Receiver<Option<SocketAddr>>,
    connect_wait: Duration,
    server_gone: mpsc::Sender<SocketAddr>,
) -> io::Result<()> {
    let local = client.local_addr()?;
    // The kernel's exact answer first; the TCP table (slow on a busy host)
    // only for what it cannot tell.
    let uid = match sock_diag::peer_uid(peer, local) {
        Ok(Some(uid)) => Ok(Some(uid)),
        Ok(None) | Err(_) => peer_uid::peer_uid(peer, local),
    };
    let uid = match uid {
        Ok(uid) => uid,
        Err(e) => {
            tracing::warn!("cannot tell who opened a relay connection ({e}); refusing it");
            return Ok(());
        }
    };
    if uid != Some(our_uid) {
        let uid = uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string());
        tracing::warn!(
            "refused a relay connection from uid {uid} (pid unknown) — only the session's own user may connect"
        );
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
            tracing::debug!("the session's server at {target} refused a connection");
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

    /// The relay's whole path (accept, owner check, connect, relay) to `target`.
    fn relay_to(target: SocketAddr) -> SocketAddr {
        let listener = bind(IpAddr::V4(Ipv4Addr::LOCALHOST), 0).unwrap();
        let addr = listener.local_addr().unwrap();
        let (endpoint, receiver) = watch::channel(Some(target));
        let (gone, _) = mpsc::channel(1);
        tokio::spawn(async move {
            serve(listener, receiver, Duration::from_secs(5), gone).await;
            drop(endpoint);
        });
        addr
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
        let relay = relay_to(backend.local_addr().unwrap());
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

    #[tokio::test]
    async fn a_client_that_closes_at_once_leaves_no_backend_connection() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = relay_to(backend.local_addr().unwrap());
        drop(TcpStream::connect(relay).await.unwrap());
        let (mut server, _) = timeout(BOUND, backend.accept()).await.expect("relay connected").unwrap();
        assert_closed(&mut server, "the backend connection").await;
    }

    #[tokio::test]
    async fn a_refusing_backend_closes_the_client() {
        let refused = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let relay = relay_to(refused);
        let mut client = TcpStream::connect(relay).await.unwrap();
        let _ = client.write_all(b"hello").await;
        assert_closed(&mut client, "the client connection").await;
    }

    #[tokio::test]
    async fn a_resetting_backend_closes_the_client() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = relay_to(backend.local_addr().unwrap());
        let mut client = TcpStream::connect(relay).await.unwrap();
        let (server, _) = timeout(BOUND, backend.accept()).await.expect("relay connected").unwrap();
        // Closing with zero linger sends a reset instead of a FIN.
        server.set_zero_linger().unwrap();
        drop(server);
        assert_closed(&mut client, "the client connection").await;
    }
}
