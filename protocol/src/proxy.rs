//! The proxy host kind (`vscode-shim proxy`, an ssh `ProxyCommand`): each
//! window's step runs the node's own OpenSSH server in inetd mode as the
//! user, and the step's stdio carries the SSH connection byte for byte. What
//! `vscode-shim setup --proxy` (login node) and the helper's `sshd` mode
//! (compute node) must agree on lives here.

/// The user's job host key, relative to their home, which every node of the
/// cluster shares with the login node: `setup --proxy` prints its public half
/// for the laptop's `known_hosts`, and every job's sshd presents it. One key
/// per user (not per node or job), so the laptop checks it without a prompt
/// whichever node a job lands on; the private half is the user's own, 0600.
pub const HOST_KEY: &str = ".ssh/vscode-slurm-job-host-key";

/// The comment in the host key's public half.
pub const HOST_KEY_COMMENT: &str = "vscode-slurm job host key";

/// The name the laptop files the job host key under (ssh's `HostKeyAlias`):
/// one per cluster, whatever the ssh alias or the node.
pub fn host_key_alias(login: &str) -> String {
    format!("vscode-slurm-job.{login}")
}

/// What the job's sshd is allowed to forward to: the node itself only.
/// `PermitOpen` patterns, one per name the node has for itself.
pub fn permit_open(hostname: &str) -> String {
    let mut hosts = vec!["localhost", "127.0.0.1", "[::1]"];
    if !hostname.is_empty() && hostname.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        hosts.push(hostname);
    }
    hosts.iter().map(|host| format!("{host}:*")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_names_only_the_node() {
        assert_eq!(permit_open("c1"), "localhost:* 127.0.0.1:* [::1]:* c1:*");
        // A hostname that could smuggle another pattern in is left out.
        assert_eq!(permit_open("c1 *:*"), "localhost:* 127.0.0.1:* [::1]:*");
        assert_eq!(host_key_alias("login.hpc"), "vscode-slurm-job.login.hpc");
    }
}
