//! Makes a server that listens on a unix socket reachable from the login
//! node, whose relay can only speak TCP to the compute node.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UnixStream};

/// Who may use a bridge. The socket itself is private to the user, but the
/// TCP port is open to the whole network, so only the node that launched the
/// step (where the relay runs) gets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peers {
    Only(IpAddr),
    Any,
}

impl Peers {
    fn admits(self, peer: IpAddr) -> bool {
        match self {
            Peers::Only(allowed) => peer.to_canonical() == allowed.to_canonical(),
            Peers::Any => true,
        }
    }
}

/// Listens on `(bind, any port)` and forwards each admitted connection to
/// `socket`. Returns once the listener is bound, so the endpoint can be
/// announced before anyone tries it; the bridge lives as long as the helper.
pub async fn start(bind: IpAddr, socket: PathBuf, peers: Peers) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((bind, 0)).await?;
    let endpoint = listener.local_addr()?;
    tracing::info!("bridging {endpoint} to unix socket {}", socket.display());
    tokio::spawn(accept_loop(listener, Arc::from(socket), peers));
    Ok(endpoint)
}

async fn accept_loop(listener: TcpListener, socket: Arc<Path>, peers: Peers) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE; keep serving once descriptors free up.
                tracing::warn!("bridge to {}: accept failed: {e}", socket.display());
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if !peers.admits(peer.ip()) {
            tracing::warn!("bridge to {}: refused connection from {peer}", socket.display());
            continue;
        }
        tokio::spawn(forward(stream, peer, Arc::clone(&socket)));
    }
}

async fn forward(mut tcp: TcpStream, peer: SocketAddr, socket: Arc<Path>) {
    let mut unix = match UnixStream::connect(&*socket).await {
        Ok(unix) => unix,
        Err(e) => {
            tracing::warn!("bridge: cannot connect to {} for {peer}: {e}", socket.display());
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    // copy_bidirectional passes each side's EOF on as a shutdown of the
    // other, so half-closed protocols keep working.
    match tokio::io::copy_bidirectional(&mut tcp, &mut unix).await {
        Ok((up, down)) => tracing::debug!("bridge: {peer} done, {up} bytes up, {down} bytes down"),
        Err(e) => tracing::debug!("bridge: {peer} ended: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_compare_mapped_addresses() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(Peers::Only(v4).admits(mapped));
        assert!(Peers::Only(mapped).admits(v4));
        assert!(!Peers::Only(v4).admits("10.0.0.2".parse().unwrap()));
        assert!(Peers::Any.admits("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn bytes_cross_both_ways_and_strangers_are_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let dir = std::env::temp_dir().join(format!("job-helper-bridge-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("s.sock");
            let server = tokio::net::UnixListener::bind(&path).unwrap();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = server.accept().await {
                    let mut buf = Vec::new();
                    conn.read_to_end(&mut buf).await.unwrap();
                    buf.reverse();
                    conn.write_all(&buf).await.unwrap();
                }
            });
            let loopback: IpAddr = "127.0.0.1".parse().unwrap();

            let open = start(loopback, path.clone(), Peers::Only(loopback)).await.unwrap();
            let mut client = TcpStream::connect(open).await.unwrap();
            client.write_all(b"abc").await.unwrap();
            client.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"cba");

            let closed = start(loopback, path, Peers::Only("10.1.2.3".parse().unwrap())).await.unwrap();
            let mut client = TcpStream::connect(closed).await.unwrap();
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            assert!(answer.is_empty());
            std::fs::remove_dir_all(&dir).unwrap();
        });
    }
}
