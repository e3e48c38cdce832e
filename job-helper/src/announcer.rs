//! Where a server's `listeningOn` line becomes a door on the node's
//! published address, announced to the shim in a control line.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vscode_job_helper::bind_rewrite::Conversions;
use vscode_job_helper::listening::{Listening, Target};
use vscode_slurm_door::door::{self, Target as DoorTarget};
use vscode_slurm_protocol::{self as protocol, ControlMessage};

use crate::session::Session;

/// Turns a `listeningOn` line into what the shim and VS Code need.
pub struct Announcer {
    pub session: Session,
    /// What the rewriter changed in the script so far.
    conversions: Arc<Mutex<Conversions>>,
    /// VS Code may print the same server again on a re-run; one door serves.
    doors: HashMap<DoorTarget, SocketAddr>,
}

impl Announcer {
    pub fn new(session: Session, conversions: Arc<Mutex<Conversions>>) -> Announcer {
        Announcer { session, conversions, doors: HashMap::new() }
    }

    /// The bytes that replace the line's marker: the door's endpoint control
    /// line first (the shim must know it before VS Code can connect), then
    /// the marker with the relay's port, in the form VS Code asked for.
    ///
    /// A server that cannot be served is not passed on: VS Code would dial
    /// its address on the login node, where anyone may be listening. It gets
    /// a value it cannot connect to instead, and the reason goes to stderr.
    pub async fn announce(&mut self, listening: Listening) -> Vec<u8> {
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

/// `vscode-job-helper door`: the door alone, announced like a server's.
pub async fn serve_one_door(session: Session, target: DoorTarget) -> i32 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_served_socket_is_closed_to_others_and_links_are_refused() {
        let dir = crate::scratch::dir("ok", 0o755);
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
        let dir = crate::scratch::dir("open", 0o777);
        let path = dir.join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let why = own_socket(&path).unwrap_err();
        assert!(why.contains("writable by others"), "{why}");
        // Sticky, like /tmp: others cannot replace our entries, so it is served.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        own_socket(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
