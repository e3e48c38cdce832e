//! The door: the one listener of a session on the cluster network.
//!
//! It runs in the helper on the node's published address, in front of a
//! server that listens where strangers cannot reach it (a unix socket in the
//! job's private runtime directory, or loopback). Only a peer that proves
//! the session's key gets through ([`crate::handshake`]); only then does the
//! door connect to the server, and only to a server the session's user owns.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use vscode_slurm_protocol::door::{DoorKey, Status};

use crate::refusals::Refusals;
use crate::{handshake, owner, splice};

static REFUSED: Refusals = Refusals::new("connections refused by the door");

/// Handshakes in progress at once. The door accepts no more until one
/// ends, so further peers wait in the kernel's backlog: a window opening
/// makes VS Code open hundreds of connections at once, and none of them may
/// be dropped, while a flood of silent connections costs the door a bounded
/// amount (each holds a slot for at most the handshake's time-out).
const MAX_PENDING: usize = 256;
/// How long connecting to the server may take.
const SERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server listens, as the door reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(addr) => write!(f, "{addr}"),
            Target::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Binds a door on `(bind, any port)` in front of `target` and serves it
/// for as long as the runtime runs. Returns once it is bound, so its address
/// can be announced before anyone tries it.
pub async fn start(bind: IpAddr, target: Target, key: Arc<DoorKey>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((bind, 0)).await?;
    let endpoint = listener.local_addr()?;
    tracing::info!("door {endpoint} open in front of {target}");
    tokio::spawn(serve(listener, endpoint, Arc::new(target), key));
    Ok(endpoint)
}

async fn serve(listener: TcpListener, endpoint: SocketAddr, target: Arc<Target>, key: Arc<DoorKey>) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    loop {
        // Never closed, so acquiring only waits.
        let Ok(permit) = Arc::clone(&pending).acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of descriptors: back off instead of spinning.
                tracing::warn!("door {endpoint}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (target, key) = (Arc::clone(&target), Arc::clone(&key));
        tokio::spawn(async move {
            let mut stream = stream;
            let admitted = match handshake::admit(&mut stream, &key).await {
                Ok(admitted) => admitted,
                Err(why) => {
                    REFUSED.refused(|| {
                        format!("door {endpoint}: refused {peer}: {why}; nothing reached the server")
                    });
                    return;
                }
            };
            drop(permit);
            let (status, server) = connect(&target).await;
            if let Err(e) = admitted.answer(&mut stream, &key, status).await {
                tracing::debug!("door {endpoint}: {peer} left before the answer: {e}");
                return;
            }
            let Some(mut server) = server else { return };
            let _ = stream.set_nodelay(true);
            let moved = match &mut server {
                Server::Tcp(server) => {
                    let _ = server.set_nodelay(true);
                    splice::relay(&mut stream, server).await
                }
                Server::Unix(server) => splice::relay(&mut stream, server).await,
            };
            match moved {
                Ok((up, down)) => tracing::debug!("door {endpoint}: {peer} done, {up} bytes up, {down} down"),
                Err(e) => tracing::debug!("door {endpoint}: {peer} ended: {e}"),
            }
        });
    }
}

enum Server {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to the server and checks that the session's user owns what
/// answered there: a server that exited leaves its address to anyone.
async fn connect(target: &Target) -> (Status, Option<Server>) {
    let me = nix::unistd::getuid().as_raw();
    let connected = timeout(SERVER_CONNECT_TIMEOUT, async {
        match target {
            Target::Unix(path) => {
                let server = UnixStream::connect(path).await?;
                let uid = server.peer_cred()?.uid();
                io::Result::Ok((Some(uid), Server::Unix(server)))
            }
            Target::Tcp(addr) => {
                let server = TcpStream::connect(addr).await?;
                let ours = server.local_addr()?;
                Ok((tcp_owner(*addr, ours).await, Server::Tcp(server)))
            }
        }
    })
    .await;
    match connected {
        Ok(Ok((Some(uid), server))) if uid == me => (Status::Forwarding, Some(server)),
        Ok(Ok((uid, _))) => {
            let who = uid.map_or_else(|| "an unknown owner".to_owned(), |uid| format!("uid {uid}"));
            tracing::error!(
                "the server's address {target} is held by {who}, not by this session's user; not forwarding"
            );
            (Status::NotTheSessionsServer, None)
        }
        Ok(Err(e)) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => {
            tracing::info!("the server at {target} is gone: {e}");
            (Status::ServerGone, None)
        }
        Ok(Err(e)) => {
            tracing::warn!("cannot reach the server at {target}: {e}");
            (Status::Unreachable, None)
        }
        Err(_) => {
            tracing::warn!("the server at {target} did not accept within {SERVER_CONNECT_TIMEOUT:?}");
            (Status::Unreachable, None)
        }
    }
}

/// The owner of the server's side of our connection, in whatever connected
/// state it is by now (a server may have written and closed already). Right
/// after connect() returns, the kernel may still be moving the server's side
/// from a request to a full socket (no owner yet); the lookup is repeated a
/// few times for that, and gives up with "unknown", which is refused.
async fn tcp_owner(server: SocketAddr, ours: SocketAddr) -> Option<u32> {
    for _ in 0..20 {
        match owner::owner(server, ours, owner::States::Connected) {
            Ok(Some(uid)) => return Some(uid),
            // No event tells when the kernel has finished; a short, bounded wait.
            Ok(None) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(e) => {
                tracing::warn!("cannot tell who owns the server at {server}: {e}");
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bounds every wait; none of these tests asserts on timing.
    const BOUND: Duration = Duration::from_secs(20);

    fn key(byte: u8) -> Arc<DoorKey> {
        Arc::new(DoorKey::parse(&format!("{byte:02x}").repeat(32)).unwrap())
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("door-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A unix server that answers every connection with what it read,
    /// reversed, and counts the bytes it was sent.
    fn reversing_server(path: &std::path::Path) -> Arc<std::sync::atomic::AtomicUsize> {
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = tokio::net::UnixListener::bind(path).unwrap();
        let counter = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = server.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let _ = conn.read_to_end(&mut buf).await;
                    counter.fetch_add(buf.len(), std::sync::atomic::Ordering::SeqCst);
                    buf.reverse();
                    let _ = conn.write_all(&buf).await;
                });
            }
        });
        seen
    }

    /// A door with `key` in front of a reversing server in a scratch dir of
    /// its own: (the door, the server's byte count, the dir to remove).
    async fn door_to_reverser(
        name: &str,
        key: Arc<DoorKey>,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>, PathBuf) {
        let dir = scratch(name);
        let path = dir.join("server.sock");
        let seen = reversing_server(&path);
        let door = start("127.0.0.1".parse().unwrap(), Target::Unix(path), key).await.unwrap();
        (door, seen, dir)
    }

    #[tokio::test]
    async fn the_sessions_relay_gets_through_and_a_stranger_does_not() {
        let (door, seen, dir) = door_to_reverser("through", key(1)).await;

        let mut relay = TcpStream::connect(door).await.unwrap();
        assert_eq!(
            timeout(BOUND, handshake::open(&mut relay, &key(1))).await.unwrap().unwrap(),
            Status::Forwarding
        );
        relay.write_all(b"abc").await.unwrap();
        relay.shutdown().await.unwrap();
        let mut answer = Vec::new();
        timeout(BOUND, relay.read_to_end(&mut answer)).await.unwrap().unwrap();
        assert_eq!(answer, b"cba");

        // Another key: the door closes without a byte for the server.
        let mut stranger = TcpStream::connect(door).await.unwrap();
        let refused = timeout(BOUND, handshake::open(&mut stranger, &key(2))).await.unwrap();
        assert!(matches!(refused, Err(handshake::Failure::WrongProof)), "{refused:?}");
        // Raw bytes without a handshake: nothing past the hello comes back.
        let mut raw = TcpStream::connect(door).await.unwrap();
        raw.write_all(&[b'G'; 64]).await.unwrap();
        raw.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let _ = timeout(BOUND, raw.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got.len(), vscode_slurm_protocol::door::HELLO_LEN, "only the hello: {got:?}");
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "the server saw only the relay's bytes"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A handshake recorded by a tap between relay and door, replayed in
    /// both directions on new connections, gets nowhere.
    #[tokio::test]
    async fn a_recorded_handshake_replayed_is_refused() {
        let (door, seen, dir) = door_to_reverser("replay", key(7)).await;

        // The tap: a plain TCP proxy that records both directions.
        let tap = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tap_addr = tap.local_addr().unwrap();
        let recording = tokio::spawn(async move {
            let (mut from_relay, _) = tap.accept().await.unwrap();
            let mut to_door = TcpStream::connect(door).await.unwrap();
            let mut hello = [0u8; vscode_slurm_protocol::door::HELLO_LEN];
            to_door.read_exact(&mut hello).await.unwrap();
            from_relay.write_all(&hello).await.unwrap();
            let mut proof = [0u8; vscode_slurm_protocol::door::PROOF_MESSAGE_LEN];
            from_relay.read_exact(&mut proof).await.unwrap();
            to_door.write_all(&proof).await.unwrap();
            let mut answer = [0u8; vscode_slurm_protocol::door::ANSWER_LEN];
            to_door.read_exact(&mut answer).await.unwrap();
            from_relay.write_all(&answer).await.unwrap();
            (hello, proof, answer)
        });
        let mut relay = TcpStream::connect(tap_addr).await.unwrap();
        assert_eq!(
            timeout(BOUND, handshake::open(&mut relay, &key(7))).await.unwrap().unwrap(),
            Status::Forwarding
        );
        let (hello, proof, answer) = timeout(BOUND, recording).await.unwrap().unwrap();
        drop(relay);

        // The relay's recorded proof, replayed at the door.
        let mut replay = TcpStream::connect(door).await.unwrap();
        let mut fresh_hello = [0u8; vscode_slurm_protocol::door::HELLO_LEN];
        replay.read_exact(&mut fresh_hello).await.unwrap();
        assert_ne!(fresh_hello, hello, "the door's challenge is fresh");
        replay.write_all(&proof).await.unwrap();
        replay.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = timeout(BOUND, replay.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty(), "the door answered a replayed proof: {rest:?}");

        // The door's recorded hello and answer, replayed at a relay.
        let fake_door = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake_addr = fake_door.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = fake_door.accept().await.unwrap();
            conn.write_all(&hello).await.unwrap();
            let mut proof = [0u8; vscode_slurm_protocol::door::PROOF_MESSAGE_LEN];
            conn.read_exact(&mut proof).await.unwrap();
            conn.write_all(&answer).await.unwrap();
            let mut sink = Vec::new();
            let _ = conn.read_to_end(&mut sink).await;
        });
        let mut fooled = TcpStream::connect(fake_addr).await.unwrap();
        let refused = timeout(BOUND, handshake::open(&mut fooled, &key(7))).await.unwrap();
        assert!(matches!(refused, Err(handshake::Failure::WrongProof)), "{refused:?}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0, "the server saw no byte");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_gone_server_is_reported_to_the_relay_only() {
        let dir = scratch("gone");
        let door =
            start("127.0.0.1".parse().unwrap(), Target::Unix(dir.join("none.sock")), key(3)).await.unwrap();
        let mut relay = TcpStream::connect(door).await.unwrap();
        assert_eq!(
            timeout(BOUND, handshake::open(&mut relay, &key(3))).await.unwrap().unwrap(),
            Status::ServerGone
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let door = start("127.0.0.1".parse().unwrap(), Target::Tcp(closed), key(3)).await.unwrap();
        let mut relay = TcpStream::connect(door).await.unwrap();
        assert_eq!(
            timeout(BOUND, handshake::open(&mut relay, &key(3))).await.unwrap().unwrap(),
            Status::ServerGone
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A window opening makes VS Code open many connections at once: more
    /// than the door handles at a time wait their turn, none is dropped.
    #[tokio::test]
    async fn a_burst_larger_than_the_pending_bound_all_gets_through() {
        let (door, seen, dir) = door_to_reverser("burst", key(5)).await;
        let relays = (0..MAX_PENDING + 100).map(|i| async move {
            let mut relay = TcpStream::connect(door).await?;
            let status = handshake::open(&mut relay, &key(5))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            assert_eq!(status, Status::Forwarding);
            relay.write_all(&[i as u8]).await?;
            relay.shutdown().await?;
            let mut answer = Vec::new();
            relay.read_to_end(&mut answer).await?;
            std::io::Result::Ok(answer.len())
        });
        let results = timeout(BOUND, futures_join_all(relays)).await.expect("the burst finished");
        let failed: Vec<_> = results.iter().filter(|r| !matches!(r, Ok(1))).collect();
        assert!(failed.is_empty(), "{} of {} failed: {:?}", failed.len(), results.len(), failed.first());
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), MAX_PENDING + 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Runs every future at once on the current task, in order of results.
    async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
    where
        F: std::future::Future + 'static,
        F::Output: 'static,
    {
        let local = tokio::task::LocalSet::new();
        let handles: Vec<_> = futures.map(|f| local.spawn_local(f)).collect();
        local
            .run_until(async move {
                let mut out = Vec::new();
                for handle in handles {
                    out.push(handle.await.expect("a task of the burst panicked"));
                }
                out
            })
            .await
    }

    #[tokio::test]
    async fn a_server_that_answers_and_closes_at_once_is_still_ours() {
        let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = backend.local_addr().unwrap();
        let banner = std::thread::spawn(move || {
            use std::io::Write;
            let (mut conn, _) = backend.accept().unwrap();
            conn.write_all(b"banner").unwrap();
        });
        let (status, _server) = connect(&Target::Tcp(target)).await;
        assert_eq!(status, Status::Forwarding);
        banner.join().unwrap();
    }

    #[tokio::test]
    async fn a_relay_refuses_what_is_not_a_door() {
        let impostor = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = impostor.local_addr().unwrap();
        let got = tokio::spawn(async move {
            let (mut conn, _) = impostor.accept().await.unwrap();
            conn.write_all(b"HTTP/1.1 200 OK\r\n\r\nwelcome, send me your token\n").await.unwrap();
            let mut got = Vec::new();
            let _ = timeout(Duration::from_secs(2), conn.read_to_end(&mut got)).await;
            got
        });
        let mut relay = TcpStream::connect(addr).await.unwrap();
        let refused = timeout(BOUND, handshake::open(&mut relay, &key(4))).await.unwrap();
        assert!(matches!(refused, Err(handshake::Failure::NotADoor)), "{refused:?}");
        drop(relay);
        assert!(timeout(BOUND, got).await.unwrap().unwrap().is_empty(), "the impostor got bytes");
    }
}
