//! Who is on the other end of a loopback connection.
//!
//! The relay listens on a login node shared by many users; without this
//! check anyone there could reach the session's server through it. The
//! client's socket lives in this host's TCP tables, and its row carries the
//! uid that created it. (SO_PEERCRED only exists for unix sockets.)

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

use super::States;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub uid: u32,
}

/// Parses one row of `/proc/net/tcp` or `/proc/net/tcp6`; the header and
/// anything malformed give `None`.
pub fn parse_row(line: &str) -> Option<Row> {
    let mut fields = line.split_whitespace();
    fields.next()?.strip_suffix(':')?;
    let local = parse_endpoint(fields.next()?)?;
    let remote = parse_endpoint(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, then the uid.
    let uid = fields.nth(3)?.parse().ok()?;
    Some(Row { local, remote, state, uid })
}

/// `0100007F:1F90` or `00000000000000000000000001000000:1F90`: the address
/// as 32-bit words each printed in host byte order, the port as a number.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(&addr[i * 8..i * 8 + 8])?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The kernel prints each raw network-order word with `%08X` as a native
/// integer, so going back means native-endian bytes.
fn word(hex: &str) -> Option<[u8; 4]> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
}

/// A v4 client of a dual-stack listener shows up as `::ffff:a.b.c.d` on one
/// side and as plain v4 in `/proc/net/tcp` on the other.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// The owner of the socket at `client` connected to `server`, searched in
/// the text of one TCP table.
pub fn find_uid(table: &str, client: SocketAddr, server: SocketAddr, states: States) -> Option<u32> {
    let (client, server) = (canonical(client), canonical(server));
    table
        .lines()
        .filter_map(parse_row)
        .filter(|row| states.admit(row.state))
        .find(|row| canonical(row.local) == client && canonical(row.remote) == server)
        .map(|row| row.uid)
}

/// The uid owning the client end of an accepted connection, `None` when no
/// ESTABLISHED row of this host's tables matches (another host or network
/// namespace, or a socket already gone).
pub fn owner(peer: SocketAddr, local: SocketAddr, states: States) -> io::Result<Option<u32>> {
    let mut unreadable = None;
    let mut read_any = false;
    for table in TABLES {
        match std::fs::read_to_string(table) {
            Ok(text) => {
                read_any = true;
                if let Some(uid) = find_uid(&text, peer, local, states) {
                    return Ok(Some(uid));
                }
            }
            Err(e) => unreadable = Some(e),
        }
    }
    match unreadable {
        // Nothing readable means we cannot tell, which is not the same as a stranger.
        Some(e) if !read_any => Err(e),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   113        0 20863 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 18277 1 0000000000000000 100 0 0 10 0
   2: 0100007F:9C40 0100007F:A8F2 01 00000000:00000000 00:00000000 00000000  1001        0 77121 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:A8F2 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 77120 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:B000 0100007F:9C40 06 00000000:00000000 03:00000F9E 00000000     0        0 0 3 0000000000000000
   5: 0B4D0A0A:0016 0200A8C0:D431 01 00000000:00000000 02:0005A5F3 00000000     0        0 30122 2 0000000000000000 21 4 1 10 -1
";

    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 18279 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:D2F0 00000000000000000000000001000000:1F90 01 00000000:00000000 00:00000000 00000000  1002        0 88001 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:C350 0000000000000000FFFF00000100007F:9C40 01 00000000:00000000 00:00000000 00000000  1003        0 88002 1 0000000000000000 20 4 30 10 -1
   3: 000080FE00000000FF0400005E1A2C3B:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1004        0 88003 1 0000000000000000 100 0 0 10 0
";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_v4_rows() {
        assert_eq!(parse_row(TCP.lines().next().unwrap()), None, "header");
        let row = parse_row(TCP.lines().nth(1).unwrap()).unwrap();
        assert_eq!(
            row,
            Row { local: addr("127.0.0.1:3306"), remote: addr("0.0.0.0:0"), state: 0x0A, uid: 113 }
        );
        let row = parse_row(TCP.lines().nth(6).unwrap()).unwrap();
        assert_eq!(row.local, addr("10.10.77.11:22"));
        assert_eq!(row.remote, addr("192.168.0.2:54321"));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_v6_rows() {
        let row = parse_row(TCP6.lines().nth(2).unwrap()).unwrap();
        assert_eq!(row.local, addr("[::1]:54000"));
        assert_eq!(row.remote, addr("[::1]:8080"));
        assert_eq!(row.uid, 1002);
        let row = parse_row(TCP6.lines().nth(4).unwrap()).unwrap();
        assert_eq!(row.local, addr("[fe80::4ff:3b2c:1a5e]:8080"));
        assert_eq!(row.uid, 1004);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn finds_the_client_side_not_the_server_side() {
        // Our listener is 127.0.0.1:40000; the client socket is 127.0.0.1:43250.
        assert_eq!(
            find_uid(TCP, addr("127.0.0.1:43250"), addr("127.0.0.1:40000"), States::Established),
            Some(1000)
        );
        // The accepted socket's row (reversed direction) belongs to whoever accepted.
        assert_eq!(
            find_uid(TCP, addr("127.0.0.1:40000"), addr("127.0.0.1:43250"), States::Established),
            Some(1001)
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn time_wait_rows_and_strangers_are_not_matches() {
        assert_eq!(find_uid(TCP, addr("127.0.0.1:45056"), addr("127.0.0.1:40000"), States::Connected), None);
        assert_eq!(
            find_uid(TCP, addr("127.0.0.1:45056"), addr("127.0.0.1:40000"), States::Established),
            None
        );
        assert_eq!(find_uid(TCP, addr("127.0.0.1:1"), addr("127.0.0.1:40000"), States::Established), None);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn v6_and_mapped_v4_are_matched() {
        assert_eq!(find_uid(TCP6, addr("[::1]:54000"), addr("[::1]:8080"), States::Established), Some(1002));
        // A v6 socket talking to ::ffff:127.0.0.1, seen by a v4 listener as plain v4 ...
        assert_eq!(
            find_uid(TCP6, addr("127.0.0.1:50000"), addr("127.0.0.1:40000"), States::Established),
            Some(1003)
        );
        // ... and by a dual-stack listener as mapped.
        assert_eq!(
            find_uid(
                TCP6,
                addr("[::ffff:127.0.0.1]:50000"),
                addr("[::ffff:127.0.0.1]:40000"),
                States::Established
            ),
            Some(1003)
        );
    }

    #[test]
    fn malformed_rows_are_skipped() {
        for line in [
            "",
            "garbage",
            "0: 0100007F:0CEA",
            "0: 0100007G:0CEA 00000000:0000 0A 0:0 0:0 0 5",
            "0: 0100007F 00000000:0000 0A 0:0 0:0 0 5",
        ] {
            assert_eq!(parse_row(line), None, "{line}");
        }
    }

    /// Writes an address the way the kernel does, independently of the parser.
    fn kernel_format(addr: SocketAddr) -> String {
        let hex = |bytes: &[u8]| {
            bytes
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes(w.try_into().unwrap())))
                .collect::<String>()
        };
        match addr.ip() {
            IpAddr::V4(v4) => format!("{}:{:04X}", hex(&v4.octets()), addr.port()),
            IpAddr::V6(v6) => format!("{}:{:04X}", hex(&v6.octets()), addr.port()),
        }
    }

    proptest! {
        #[test]
        fn kernel_formatted_rows_round_trip(local in any::<SocketAddr>(), remote in any::<SocketAddr>(), uid in any::<u32>()) {
            let line = format!(
                "  12: {} {} 01 00000000:00000000 00:00000000 00000000 {uid:>5}        0 4242 1 0000000000000000 20 4 30 10 -1",
                kernel_format(local), kernel_format(remote)
            );
            let row = parse_row(&line).unwrap();
            prop_assert_eq!(row.local.ip(), local.ip());
            prop_assert_eq!(row.local.port(), local.port());
            prop_assert_eq!(row.remote.ip(), remote.ip());
            prop_assert_eq!(row.uid, uid);
        }
    }

    fn check_real_connection(listen: &str) -> bool {
        let Ok(listener) = std::net::TcpListener::bind(listen) else {
            return false;
        };
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let uid = owner(peer, accepted.local_addr().unwrap(), States::Established).unwrap();
        assert_eq!(uid, Some(nix::unistd::getuid().as_raw()), "listening on {listen}");
        true
    }

    #[test]
    fn finds_our_own_uid_on_a_real_loopback_connection() {
        assert!(check_real_connection("127.0.0.1:0"));
        // Not every test machine has IPv6 loopback.
        let _ = check_real_connection("[::1]:0");
    }
}
