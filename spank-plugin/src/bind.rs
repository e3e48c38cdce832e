//! Which address VS Code servers in a job may bind on a compute node.
//!
//! The login node relays to this address, so it has to be one the login node
//! can reach and that belongs to this node. Loopback is useless (the relay is
//! elsewhere) and the wildcard addresses would expose the servers on every
//! network of the node, so neither is ever chosen automatically; an admin who
//! really wants `0.0.0.0` or `::` has to write it.
//!
//! `bind=nodeaddr` means the address Slurm itself uses for this node: its
//! `NodeAddr` in slurm.conf, where srun on the login node already reaches
//! slurmd. Resolving the node's name instead would take whatever the resolver
//! lists first, which on a dual-stack node is often a global IPv6 address the
//! login nodes cannot route to.
//!
//! `bind=` is checked for syntax when the plugin loads (so a typo stops
//! salloc on the login node) and resolved only on the compute node, where the
//! interfaces and the node's own name are.

use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};

use crate::failure::Failure;

/// What the admin asked for with `bind=`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BindSpec {
    /// The node's `NodeAddr`, IPv4 first.
    #[default]
    NodeAddr,
    /// The node's `NodeAddr`, IPv6 first (`bind=nodeaddr6`), for sites whose
    /// login nodes reach dual-stack compute nodes over IPv6.
    NodeAddr6,
    /// The address of a network interface, e.g. the cluster network's.
    Interface(String),
    /// Exactly this address.
    Address(IpAddr),
}

impl fmt::Display for BindSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindSpec::NodeAddr => f.write_str("nodeaddr"),
            BindSpec::NodeAddr6 => f.write_str("nodeaddr6"),
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
                 bind=nodeaddr6, bind=<interface name> (1-{MAX_INTERFACE_NAME} characters of A-Z a-z 0-9 _ . -) \
                 or bind=<IPv4 or IPv6 address>"
            ))
        };
        match value {
            "nodeaddr" => return Ok(BindSpec::NodeAddr),
            "nodeaddr6" => return Ok(BindSpec::NodeAddr6),
            _ => {}
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

/// The address doors listen on, and where it came from (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub addr: IpAddr,
    pub source: String,
}

/// Resolves `spec` on this node. The error tells the admin what to set.
///
/// Only for the remote context: it may ask slurmstepd's Slurm library for
/// the node's `NodeAddr` (see [`slurm_node_addr`]).
pub fn resolve(spec: &BindSpec) -> Result<Chosen, Failure> {
    match spec {
        BindSpec::Address(addr) => Ok(Chosen { addr: *addr, source: format!("bind={addr}") }),
        BindSpec::Interface(name) => {
            let all = local_addresses().map_err(|e| {
                Failure::new(format!(
                    "vscode: cannot list this node's network interfaces to resolve bind={name}: {e}; \
                     set bind=<IP address> in plugstack.conf instead"
                ))
            })?;
            let on_interface: Vec<IpAddr> =
                all.iter().filter(|(iface, _)| iface == name).map(|(_, addr)| *addr).collect();
            let addr = choose_interface_address(&on_interface).ok_or_else(|| {
                Failure::new(format!(
                    "vscode: interface '{name}' (plugstack.conf bind={name}) has no usable IPv4 or \
                     non-link-local IPv6 address on this node; set bind= to an interface or address \
                     that exists on every compute node"
                ))
            })?;
            Ok(Chosen { addr, source: format!("interface {name}") })
        }
        BindSpec::NodeAddr | BindSpec::NodeAddr6 => {
            let family = if *spec == BindSpec::NodeAddr6 { Family::V6First } else { Family::V4First };
            let name = node_name()?;
            // Slurm's NodeAddr defaults to the node's name, so a node that
            // slurm.conf does not list is reached by its name, as here.
            let (host, source) = match slurm_node_addr(&name) {
                Some(addr) => (addr.clone(), format!("NodeAddr {addr} of node {name} in slurm.conf")),
                None => (name.clone(), format!("node name {name} (no NodeAddr for it from Slurm)")),
            };
            let resolved: Vec<IpAddr> = (host.as_str(), 0)
                .to_socket_addrs()
                .map_err(|e| {
                    Failure::new(format!(
                        "vscode: cannot resolve the {source} (bind={spec}): {e}; \
                         set bind=<interface> or bind=<IP address> in plugstack.conf"
                    ))
                })?
                .map(|sock| sock.ip())
                .collect();
            // Without the interface list, trust the resolver.
            let local: Option<Vec<IpAddr>> =
                local_addresses().ok().map(|all| all.into_iter().map(|(_, addr)| addr).collect());
            let addr = choose_node_address(&resolved, local.as_deref(), family).ok_or_else(|| {
                let shown: Vec<String> = resolved.iter().map(IpAddr::to_string).collect();
                Failure::new(format!(
                    "vscode: the {source} resolves to no usable address of this node (got: {}; \
                     loopback, wildcard and IPv6 link-local addresses are never used); set \
                     bind=<interface> or bind=<IP address> in plugstack.conf",
                    if shown.is_empty() { "nothing".to_owned() } else { shown.join(" ") }
                ))
            })?;
            Ok(Chosen { addr, source })
        }
    }
}

/// Which address family `bind=nodeaddr` tries first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4First,
    V6First,
}

/// The first usable address of `resolved` in the preferred family, else in
/// the other. Usable: not loopback, a wildcard or IPv6 link-local (the relay
/// would not know its scope), and, if the node's addresses are known, one of
/// them (servers cannot bind anything else). Within a family the resolver's
/// order stands.
pub fn choose_node_address(resolved: &[IpAddr], local: Option<&[IpAddr]>, family: Family) -> Option<IpAddr> {
    let usable = |addr: &&IpAddr| {
        !addr.is_loopback()
            && !addr.is_unspecified()
            && !matches!(addr, IpAddr::V6(v6) if v6.is_unicast_link_local())
            && local.is_none_or(|local| local.contains(addr))
    };
    let v4_first = family == Family::V4First;
    let preferred = resolved.iter().filter(usable).find(|addr| addr.is_ipv4() == v4_first);
    preferred.or_else(|| resolved.iter().find(usable)).copied()
}

/// The node's `NodeAddr` as slurm.conf gives it (an address or a host name),
/// from slurmstepd's own parsed configuration; `None` when this process is
/// not slurmstepd or the node is not in slurm.conf.
///
/// slurmstepd links libslurmfull, whose `slurm_conf_get_address()` is how
/// Slurm's own code finds a node; parsing slurm.conf here would mean a second
/// parser for its includes, host lists and configless copies. The symbols are
/// looked up at run time, so the plugin still loads in salloc and sbatch,
/// whose libslurm does not export them.
pub fn slurm_node_addr(node_name: &str) -> Option<String> {
    /// `char *slurm_conf_get_address(const char *node_name)`: an xmalloc'd copy or NULL.
    type GetAddress = unsafe extern "C" fn(*const c_char) -> *mut c_char;
    /// `void slurm_xfree(void **item)`: frees `*item` and sets it to NULL.
    type XFree = unsafe extern "C" fn(*mut *mut c_void);
    let node = CString::new(node_name).ok()?;
    // SAFETY: dlsym only looks a name up among the loaded objects; both names
    // are NUL-terminated literals.
    let (get, free) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, c"slurm_conf_get_address".as_ptr()),
            libc::dlsym(libc::RTLD_DEFAULT, c"slurm_xfree".as_ptr()),
        )
    };
    if get.is_null() || free.is_null() {
        return None;
    }
    // SAFETY: both are libslurmfull's functions (nothing else defines these
    // names), with the C signatures above in src/common/read_config.h and
    // xmalloc.h of every release this plugin builds for (22.05 to 25.11,
    // checked in Slurm's source); a function pointer is a data pointer here.
    let (get, free) = unsafe {
        (std::mem::transmute::<*mut c_void, GetAddress>(get), std::mem::transmute::<*mut c_void, XFree>(free))
    };
    // SAFETY: `node` is a valid C string for the whole call. The caller holds
    // no Slurm lock (the function takes slurm_conf_lock itself), and
    // slurmstepd read slurm.conf before it loaded any plugin.
    let mut raw = unsafe { get(node.as_ptr()) };
    if raw.is_null() {
        return None;
    }
    // SAFETY: a non-NULL result is a NUL-terminated string that is ours until
    // it is freed below; its bytes are copied out first.
    let text = unsafe { CStr::from_ptr(raw) }.to_str().ok().map(str::to_owned);
    // SAFETY: `raw` came from Slurm's xmalloc and is freed once, by Slurm's
    // own deallocator, through the pointer's address as it expects.
    unsafe { free(std::ptr::addr_of_mut!(raw).cast::<*mut c_void>()) };
    // A host name has at most 253 characters; anything else is not one.
    text.filter(|t| !t.is_empty() && t.len() <= 253)
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
        assert_eq!(BindSpec::parse("nodeaddr6"), Ok(BindSpec::NodeAddr6));
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
        for text in ["nodeaddr", "nodeaddr6", "eth0", "10.0.0.1", "fd00::1"] {
            assert_eq!(BindSpec::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn node_address_skips_loopback_and_foreign_addresses() {
        let resolved = [ip("127.0.1.1"), ip("::1"), ip("192.0.2.9"), ip("10.0.0.7"), ip("10.0.0.8")];
        let local = [ip("127.0.0.1"), ip("10.0.0.7"), ip("10.0.0.8")];
        let v4 = Family::V4First;
        assert_eq!(choose_node_address(&resolved, Some(&local), v4), Some(ip("10.0.0.7")));
        // Interfaces unknown: the resolver's order decides.
        assert_eq!(choose_node_address(&resolved, None, v4), Some(ip("192.0.2.9")));
        assert_eq!(choose_node_address(&[ip("127.0.1.1"), ip("::1")], None, v4), None);
        assert_eq!(choose_node_address(&[ip("0.0.0.0"), ip("::")], None, v4), None);
        assert_eq!(choose_node_address(&[ip("192.0.2.9")], Some(&local), v4), None);
        assert_eq!(choose_node_address(&[], None, v4), None);
    }

    /// A dual-stack node's resolver lists its global IPv6 address first;
    /// unless the site asks for IPv6, the door still gets IPv4.
    #[test]
    fn node_address_is_ipv4_first_unless_asked_for_ipv6() {
        let resolved = [ip("fe80::1"), ip("2001:db8::11"), ip("10.77.1.11"), ip("2001:db8::12")];
        let local = resolved;
        assert_eq!(choose_node_address(&resolved, Some(&local), Family::V4First), Some(ip("10.77.1.11")));
        assert_eq!(choose_node_address(&resolved, Some(&local), Family::V6First), Some(ip("2001:db8::11")));
        // The other family when the preferred one has nothing usable; never link-local.
        let v6_only = &resolved[..2];
        assert_eq!(choose_node_address(v6_only, Some(&local), Family::V4First), Some(ip("2001:db8::11")));
        assert_eq!(choose_node_address(&[ip("fe80::1")], None, Family::V6First), None);
        assert_eq!(choose_node_address(&[ip("10.77.1.11")], None, Family::V6First), Some(ip("10.77.1.11")));
    }

    /// Outside slurmstepd (here: a test binary) libslurmfull is not loaded,
    /// so the lookup says so instead of guessing.
    #[test]
    fn no_node_addr_outside_slurmstepd() {
        assert_eq!(slurm_node_addr("c1"), None);
        assert_eq!(slurm_node_addr("c\0x"), None);
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
