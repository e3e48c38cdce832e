//! Who owns the other end of a TCP connection on this host: the check that
//! keeps other users of a shared login node out of the relay, and the
//! door's check that a loopback server is still the session's own.
//!
//! Only an ESTABLISHED socket whose tuple is exactly the connection's
//! counts; anything else (the socket already gone, a listener or a closing
//! socket on the same address) is an unknown owner, which callers refuse.

mod proc_table;
mod sock_diag;

use std::io;
use std::net::SocketAddr;

/// Which TCP states of the exact socket may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum States {
    /// Only ESTABLISHED: for a client that has just connected, anything
    /// else means its socket is already going or gone.
    Established,
    /// Any state of a connection that still has its owner (ESTABLISHED and
    /// the closing ones): for a server that may have answered and closed by
    /// the time it is looked at.
    Connected,
}

impl States {
    /// Kernel TCP state numbers (include/net/tcp_states.h).
    fn admit(self, state: u8) -> bool {
        const ESTABLISHED: u8 = 1;
        const CLOSING_WITH_OWNER: [u8; 5] = [4, 5, 8, 9, 11];
        state == ESTABLISHED || (self == States::Connected && CLOSING_WITH_OWNER.contains(&state))
    }
}

/// The uid owning the ESTABLISHED socket at `near` connected to `far` on
/// this host: `Ok(None)` when there is no such socket here; `Err` when
/// neither the kernel's exact lookup nor the TCP tables could be asked.
pub fn established_owner(near: SocketAddr, far: SocketAddr) -> io::Result<Option<u32>> {
    owner(near, far, States::Established)
}

/// Like [`established_owner`], with the states that may answer.
pub fn owner(near: SocketAddr, far: SocketAddr, states: States) -> io::Result<Option<u32>> {
    // The kernel's exact answer; the TCP tables only where it cannot be
    // asked at all. Reading them costs milliseconds on a busy host, and a
    // "no such socket" answer is final: falling back on it would let anyone
    // who connects and resets make the relay read them every time.
    match sock_diag::owner(near, far, states) {
        Ok(answer) => Ok(answer),
        Err(e) => {
            tracing::debug!("sock_diag cannot answer ({e}); reading the TCP tables");
            proc_table::owner(near, far, states)
        }
    }
}

/// Whether our own side of a connection is still ESTABLISHED (not reset
/// or closing), asked of the socket itself.
pub fn is_established(socket: &impl std::os::fd::AsRawFd) -> io::Result<bool> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which has
    // room for them; the descriptor is borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised plain data, partly filled in by the kernel.
    let info = unsafe { info.assume_init() };
    Ok(info.tcpi_state == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd};

    /// A TCP socket with SO_REUSEPORT bound to `addr`, so that a listener
    /// and a connecting socket may share one address, as a user's own
    /// sockets may.
    fn reuseport_socket(addr: SocketAddr) -> std::os::fd::OwnedFd {
        use nix::sys::socket::{
            bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        setsockopt(&fd, sockopt::ReusePort, &true).unwrap();
        setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
        let SocketAddr::V4(v4) = addr else { unreachable!() };
        bind(fd.as_raw_fd(), &SockaddrIn::from(v4)).unwrap();
        fd
    }

    /// The listener trick: hold a listener on the client's own address,
    /// connect from that address, send bytes and reset. The connection
    /// waits in the relay's backlog with no client socket left, and a
    /// lookup of its tuple that settles for whatever socket sits on the
    /// client's address finds the listener and its owner. Only the
    /// ESTABLISHED socket of that exact tuple may answer.
    #[test]
    fn a_listener_on_the_clients_address_does_not_pass_for_the_client() {
        let relay = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let trick: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listener_fd = reuseport_socket(trick);
        let bound =
            nix::sys::socket::getsockname::<nix::sys::socket::SockaddrIn>(listener_fd.as_raw_fd()).unwrap();
        let client_addr: SocketAddr = format!("127.0.0.1:{}", bound.port()).parse().unwrap();
        nix::sys::socket::listen(&listener_fd, nix::sys::socket::Backlog::new(4).unwrap()).unwrap();
        let client_fd = reuseport_socket(client_addr);
        let SocketAddr::V4(relay_v4) = relay_addr else { unreachable!() };
        nix::sys::socket::connect(client_fd.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(relay_v4))
            .unwrap();
        // SAFETY: a fresh connected descriptor, handed over whole.
        let mut client = unsafe { TcpStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(client_fd)) };
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        // While it is connected, the client's socket answers with our uid.
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(established_owner(client_addr, relay_addr).unwrap(), Some(me));
        // Close with zero linger: a reset, and the client socket is gone.
        let linger = nix::sys::socket::sockopt::Linger;
        let zero = libc::linger { l_onoff: 1, l_linger: 0 };
        nix::sys::socket::setsockopt(&client, linger, &zero).unwrap();
        drop(client);
        let (_accepted, peer) = relay.accept().unwrap();
        assert_eq!(peer, client_addr);
        assert_eq!(
            established_owner(peer, relay_addr).unwrap(),
            None,
            "the listener on the client's address answered for a client that is gone"
        );
        // And the accepted socket itself says it is no longer connected.
        assert!(!is_established(&_accepted).unwrap());
        drop(listener_fd);
    }

    #[test]
    fn a_live_connection_answers_from_both_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(established_owner(peer, accepted.local_addr().unwrap()).unwrap(), Some(me));
        assert_eq!(established_owner(accepted.local_addr().unwrap(), peer).unwrap(), Some(me));
        assert!(is_established(&accepted).unwrap());
        drop(client);
    }
}
