//! The port VS Code is told about: sshd connects here on the login node and
//! we pass the bytes on to the server inside the job.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::peer_uid;

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

pub async fn serve(
    listener: TcpListener,
    endpoint: watch::Receiver<Option<SocketAddr>>,
    connect_wait: Duration,
) {
    let our_uid = nix::unistd::getuid().as_raw();
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(client, peer, our_uid, endpoint, connect_wait).await {
                        tracing::info!("relay connection from {peer}: {e}");
                    }
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

async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    our_uid: u32,
    mut endpoint: watch::Receiver<Option<SocketAddr>>,
    connect_wait: Duration,
) -> io::Result<()> {
    let local = client.local_addr()?;
    let uid = match peer_uid::peer_uid(peer, local) {
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
    // so half-closes pass through; both sockets drop (close) on return.
    let (up, down) = tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    tracing::debug!("relay {peer} to {target} done: {up} bytes up, {down} bytes down");
    Ok(())
}
