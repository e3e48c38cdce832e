//! Who owns the client end of a loopback connection, asked of the kernel
//! directly: one NETLINK_SOCK_DIAG request for the exact socket.
//!
//! [`super::proc_table`] finds the same answer by reading `/proc/net/tcp`,
//! which the kernel generates by walking every TCP socket of the host: on a
//! login node with thousands of sockets (TIME_WAIT ones included) that costs
//! milliseconds per connection, and the relay checks every connection. This
//! lookup is a hash lookup in the kernel, microseconds whatever the host
//! holds. Anything it cannot answer falls back to the table.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const INET_DIAG_NOCOOKIE: u32 = !0;
use super::States;

/// `struct nlmsghdr` (linux/netlink.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid` (linux/inet_diag.h): ports and addresses in
/// network byte order, each address in four 32-bit words.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`, the answer.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    header: NlMsgHdr,
    body: InetDiagReqV2,
}

fn address(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut bytes = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (libc::AF_INET as u8, bytes)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            // A v4 client of a dual-stack listener is a v4 socket.
            Some(v4) => address(IpAddr::V4(v4)),
            None => (libc::AF_INET6 as u8, v6.octets()),
        },
    }
}

/// The uid owning the socket at `client` connected to `server`, if it is in
/// one of `states`: `Ok(None)` when the kernel has no such socket here
/// (another host or namespace), or only something else answers for that
/// tuple. The kernel's exact lookup falls back to a *listening* socket on
/// the tuple's local side once the connected socket is gone (a client that
/// sent its bytes and reset), so the answer must name the very tuple asked
/// for; TIME_WAIT and request sockets carry no owner at all. `Err` when the
/// question cannot be asked.
pub fn owner(client: SocketAddr, server: SocketAddr, states: States) -> io::Result<Option<u32>> {
    let (family, src) = address(client.ip());
    let (server_family, dst) = address(server.ip());
    if family != server_family {
        return Ok(None);
    }
    let request = Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: NLM_F_REQUEST,
            seq: 1,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: !0,
            id: InetDiagSockId {
                sport: client.port().to_be_bytes(),
                dport: server.port().to_be_bytes(),
                src,
                dst,
                interface: 0,
                cookie: [INET_DIAG_NOCOOKIE; 2],
            },
        },
    };
    let socket = netlink_socket()?;
    // SAFETY: `request` is a plain repr(C) value that outlives the call; the
    // kernel reads exactly its size from it.
    let sent = unsafe {
        libc::send(socket.as_raw_fd(), (&request as *const Request).cast(), size_of::<Request>(), 0)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // Room for one answer or one error message (which quotes our request).
    let mut buf = [0u64; 64];
    // The kernel answers within send() itself; MSG_DONTWAIT makes sure a
    // missing answer can never block the relay's thread (it is an error,
    // and the caller falls back to the table).
    // SAFETY: the kernel writes at most the buffer's length into it.
    let got = unsafe {
        libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), size_of::<[u64; 64]>(), libc::MSG_DONTWAIT)
    };
    let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: reinterpreting initialized u64s as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), got) };
    parse_answer(bytes, &request.body.id, states)
}

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads a repr(C) plain-data value from the front of `bytes`.
fn read<T: Copy + Default>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    let mut value = T::default();
    // SAFETY: T is one of the plain-data structs above, for which any bytes
    // are a valid value; the source has at least size_of::<T>() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), size_of::<T>())
    };
    Some(value)
}

fn parse_answer(bytes: &[u8], asked: &InetDiagSockId, states: States) -> io::Result<Option<u32>> {
    let header: NlMsgHdr = read(bytes).ok_or_else(|| io::Error::other("short netlink answer"))?;
    let body = &bytes[size_of::<NlMsgHdr>()..];
    match header.kind {
        SOCK_DIAG_BY_FAMILY => {
            let msg: InetDiagMsg = read(body).ok_or_else(|| io::Error::other("short sock_diag answer"))?;
            let same = msg.id.sport == asked.sport
                && msg.id.dport == asked.dport
                && msg.id.src == asked.src
                && msg.id.dst == asked.dst;
            Ok((states.admit(msg.state) && same).then_some(msg.uid))
        }
        NLMSG_ERROR => {
            let errno: i32 = read(body).ok_or_else(|| io::Error::other("short netlink error"))?;
            match -errno {
                libc::ENOENT => Ok(None),
                code => Err(io::Error::from_raw_os_error(code)),
            }
        }
        other => Err(io::Error::other(format!("unexpected netlink message type {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(size_of::<NlMsgHdr>(), 16);
        assert_eq!(size_of::<InetDiagSockId>(), 48);
        assert_eq!(size_of::<InetDiagReqV2>(), 56);
        assert_eq!(size_of::<InetDiagMsg>(), 72);
    }

    fn check(listen: &str) -> bool {
        let Ok(listener) = std::net::TcpListener::bind(listen) else { return false };
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        let local = accepted.local_addr().unwrap();
        let uid = owner(peer, local, States::Established).unwrap();
        assert_eq!(uid, Some(nix::unistd::getuid().as_raw()), "on {listen}");
        // The accepted side's tuple reversed is our own socket: also ours.
        assert_eq!(owner(local, peer, States::Established).unwrap(), Some(nix::unistd::getuid().as_raw()));
        drop(client);
        true
    }

    #[test]
    fn finds_our_own_uid_on_real_connections() {
        assert!(check("127.0.0.1:0"));
        let _ = check("[::1]:0");
    }

    #[test]
    fn a_socket_that_does_not_exist_has_no_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stranger: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(owner(stranger, listener.local_addr().unwrap(), States::Connected).unwrap(), None);
    }
}
