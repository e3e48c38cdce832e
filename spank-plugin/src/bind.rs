//! Which address VS Code servers in a job may bind on a compute node.
//!
//! The login node relays to this address, so it has to be one the login node
//! can reach and that belongs to this node. Loopback is useless (the relay is
//! elsewhere) and the wildcard addresses would expose the servers on every
//! network of the node, so neither is ever chosen automatically; an admin who
//! really wants `0.0.0.0` or `::` has to write it.
//!
//! `bind=` is checked for syntax when the plugin loads (so a typo stops
//! salloc on the login node) and resolved only on the compute node, where the
//! interfaces and the node's own name are.

use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};

use crate::failure::Failure;

/// What the admin asked for with `bind=`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BindSpec {
    /// The address this node's name resolves to.
    #[default]
    NodeAddr,
    /// The address of a network interface, e.g. the cluster network's.
    Interface(String),
    /// Exactly this address.
    Address(IpAddr),
}

impl fmt::Display for BindSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindSpec::NodeAddr => f.write_str("nodeaddr"),
            BindSpec::Interface(name) => f.write_str(name),
            BindSpec::Address(addr) => write!(f, "{addr}"),
        }
    }
}

/// Linux refuses longer names (IFNAMSIZ is 16 with the NUL).
const MAX_INTERFACE_NAME: usize = 15;

impl BindSpec {
    /// Parses the value of `bind=`; the error says what is accepted.
    pub fn parse(value: &str) -> Result<BindSpec, Failure> {
        let reject = |why: &str| {
            Failure::new(format!(
                "vscode: bad plugstack argument 'bind={value}': {why}; write bind=nodeaddr, \
                 bind=<interface name> (1-{MAX_INTERFACE_NAME} characters of A-Z a-z 0-9 _ . -) \
                 or bind=<IPv4 or IPv6 address>"
            ))
        };
        if value == "nodeaddr" {
            return Ok(BindSpec::NodeAddr);
        }
        if let Ok(addr) = value.parse::<IpAddr>() {
            return Ok(BindSpec::Address(addr));
        }
        // Interface names cannot contain ':' and VLAN names like `eth0.100`
        // have letters, so these can only be mistyped addresses.
        if value.contains(':') {
            return Err(reject("not a valid IPv6 address"));
        }
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(reject("not a valid IPv4 address"));
        }
        if value.is_empty() || value.len() > MAX_INTERFACE_NAME {
            return Err(reject("an interface name has 1 to 15 characters"));
        }
        if value == "." || value == ".." {
            return Err(reject("not a valid interface name"));
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-';
        if !value.bytes().all(allowed) {
            return Err(reject("an interface name may only contain A-Z a-z 0-9 _ . -"));
        }
        Ok(BindSpec::Interface(value.to_owned()))
    }
}

/// Resolves `spec` on this node. The error tells the admin what to set.
pub fn resolve(spec: &BindSpec) -> Result<IpAddr, Failure> {
    match spec {
        BindSpec::Address(addr) => Ok(*addr),
        BindSpec::Interface(name) => {
            let all = local_addresses().map_err(|e| {
                Failure::new(format!(
                    "vscode: cannot list this node's network interfaces to resolve bind={name}: {e}; \
                     set bind=<IP address> in plugstack.conf instead"
                ))
            })?;
            let on_interface: Vec<IpAddr> =
                all.iter().filter(|(iface, _)| iface == name).map(|(_, addr)| *addr).collect();
            choose_interface_address(&on_interface).ok_or_else(|| {
                Failure::new(format!(
                    "vscode: interface '{name}' (plugstack.conf bind={name}) has no usable IPv4 or \
                     non-link-local IPv6 address on this node; set bind= to an interface or address \
                     that exists on every compute node"
                ))
            })
        }
        BindSpec::NodeAddr => {
            let name = node_name()?;
            let resolved: Vec<IpAddr> = (name.as_str(), 0)
                .to_socket_addrs()
                .map_err(|e| {
                    Failure::new(format!(
                        "vscode: cannot resolve this node's name '{name}' (bind=nodeaddr): {e}; \
                         set bind=<interface> or bind=<IP address> in plugstack.conf"
                    ))
                })?
                .map(|sock| sock.ip())
                .collect();
            // Without the interface list, trust the resolver's order.
            let local: Option<Vec<IpAddr>> =
                local_addresses().ok().map(|all| all.into_iter().map(|(_, addr)| addr).collect());
            choose_node_address(&resolved, local.as_deref()).ok_or_else(|| {
                let shown: Vec<String> = resolved.iter().map(IpAddr::to_string).collect();
                Failure::new(format!(
                    "vscode: this node's name '{name}' resolves to no non-loopback address of this node \
                     (got: {}); set bind=<interface> or bind=<IP address> in plugstack.conf",
                    if shown.is_empty() { "nothing".to_owned() } else { shown.join(" ") }
                ))
            })
        }
    }
}

/// The first address of `resolved` that is not loopback or a wildcard and, if
/// the node's addresses are known, is one of them (servers cannot bind
/// anything else).
pub fn choose_node_address(resolved: &[IpAddr], local: Option<&[IpAddr]>) -> Option<IpAddr> {
    resolved
        .iter()
        .copied()
        .filter(|addr| !addr.is_loopback() && !addr.is_unspecified())
        .find(|addr| local.is_none_or(|local| local.contains(addr)))
}

/// IPv4 first, since that is what clusters route between login and compute
/// nodes; IPv6 link-local addresses need a scope the relay would not know.
pub fn choose_interface_address(on_interface: &[IpAddr]) -> Option<IpAddr> {
    let usable = |addr: &&IpAddr| !addr.is_unspecified();
    on_interface.iter().filter(usable).find(|addr| addr.is_ipv4()).copied().or_else(|| {
        on_interface
            .iter()
            .filter(usable)
            .find(|addr| matches!(addr, IpAddr::V6(v6) if !v6.is_unicast_link_local()))
            .copied()
    })
}

/// The node's Slurm name if the daemon was given one, else the host name.
///
/// Read from slurmstepd's own environment, which slurmd passes down, never
/// from the job's: at this point the job environment still holds whatever
/// the user's srun sent, including a `SLURMD_NODENAME` of their choosing.
fn node_name() -> Result<String, Failure> {
    if let Some(name) = std::env::var_os("SLURMD_NODENAME").and_then(|n| n.into_string().ok()) {
        if !name.is_empty() {
            return Ok(name);
        }
    }
    let host = nix::unistd::gethostname().map_err(|e| {
        Failure::new(format!(
            "vscode: cannot get this node's host name for bind=nodeaddr: {e}; \
             set bind=<interface> or bind=<IP address> in plugstack.conf"
        ))
    })?;
    host.into_string().map_err(|_| {
        Failure::new(
            "vscode: this node's host name is not valid UTF-8, so bind=nodeaddr cannot resolve it; \
             set bind=<interface> or bind=<IP address> in plugstack.conf",
        )
    })
}

/// Every (interface, address) pair of this node, in getifaddrs order.
fn local_addresses() -> nix::Result<Vec<(String, IpAddr)>> {
    let mut out = Vec::new();
    for entry in nix::ifaddrs::getifaddrs()? {
        let Some(address) = entry.address else { continue };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        out.push((entry.interface_name, ip));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(BindSpec::parse("nodeaddr"), Ok(BindSpec::NodeAddr));
        assert_eq!(BindSpec::parse("10.1.2.3"), Ok(BindSpec::Address(ip("10.1.2.3"))));
        assert_eq!(BindSpec::parse("fd00::5"), Ok(BindSpec::Address(ip("fd00::5"))));
        assert_eq!(BindSpec::parse("0.0.0.0"), Ok(BindSpec::Address(ip("0.0.0.0"))));
        assert_eq!(BindSpec::parse("::"), Ok(BindSpec::Address(ip("::"))));
        for name in ["eth0", "ib0", "eno1.100", "br-lab", "a_b", "x", "abcdefghijklmno"] {
            assert_eq!(BindSpec::parse(name), Ok(BindSpec::Interface(name.to_owned())), "{name}");
        }
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "",
            "abcdefghijklmnop", // 16 characters
            "eth 0",
            "eth0/1",
            "eth0:1",
            "eth0\0",
            "é",
            ".",
            "..",
            "10.1.2",
            "10.1.2.300",
            "1.2.3.4.5",
            "fd00::zz",
            "[::1]",
            "10.0.0.1:80",
        ] {
            let err = BindSpec::parse(bad).unwrap_err();
            assert!(err.message().starts_with("vscode: bad plugstack argument 'bind="), "{bad}: {err}");
            assert!(err.message().contains("write bind=nodeaddr"), "{bad}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["nodeaddr", "eth0", "10.0.0.1", "fd00::1"] {
            assert_eq!(BindSpec::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn node_address_skips_loopback_and_foreign_addresses() {
        let resolved = [ip("127.0.1.1"), ip("::1"), ip("192.0.2.9"), ip("10.0.0.7"), ip("10.0.0.8")];
        let local = [ip("127.0.0.1"), ip("10.0.0.7"), ip("10.0.0.8")];
        assert_eq!(choose_node_address(&resolved, Some(&local)), Some(ip("10.0.0.7")));
        // Interfaces unknown: resolver order decides.
        assert_eq!(choose_node_address(&resolved, None), Some(ip("192.0.2.9")));
        assert_eq!(choose_node_address(&[ip("127.0.1.1"), ip("::1")], None), None);
        assert_eq!(choose_node_address(&[ip("0.0.0.0")], None), None);
        assert_eq!(choose_node_address(&[ip("192.0.2.9")], Some(&local)), None);
        assert_eq!(choose_node_address(&[], None), None);
    }

    #[test]
    fn interface_address_prefers_ipv4_and_skips_link_local() {
        assert_eq!(
            choose_interface_address(&[ip("fe80::1"), ip("fd00::1"), ip("10.0.0.1"), ip("10.0.0.2")]),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(choose_interface_address(&[ip("fe80::1"), ip("fd00::1")]), Some(ip("fd00::1")));
        assert_eq!(choose_interface_address(&[ip("fe80::1")]), None);
        assert_eq!(choose_interface_address(&[]), None);
    }
}
