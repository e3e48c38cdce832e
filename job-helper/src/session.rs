//! What the step's environment tells the helper about its session: the
//! secrets the shim put there, and what the plugin prepared on the node.

use std::env::VarError;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use vscode_job_helper::bind_rewrite::SocketNames;
use vscode_slurm_protocol::door::DoorKey;
use vscode_slurm_protocol::{env, Nonce};

/// What the step's environment says about this session.
pub struct Session {
    pub nonce: Nonce,
    pub door_key: Arc<DoorKey>,
    pub relay_port: u16,
    /// Where doors listen: the address the login node reaches this node at.
    pub bind: IpAddr,
    /// Where servers moved off TCP put their sockets.
    pub sockets: Option<SocketNames>,
}

const START_WITH_SHIM: &str = "start sessions with vscode-shim";

impl Session {
    /// `bind_addr`: the command line's `--bind-addr`, which wins over the plugin's.
    pub fn from_env(bind_addr: Option<IpAddr>) -> Result<Session, String> {
        let nonce = Nonce::parse(&required(env::NONCE, "the helper was not started by vscode-shim")?)
            .map_err(|e| format!("{} is malformed ({e}); {START_WITH_SHIM}", env::NONCE))?;
        let door_key = DoorKey::parse(&required(env::DOOR_KEY, "the helper was not started by vscode-shim")?)
            .map_err(|e| format!("{} is malformed ({e}); {START_WITH_SHIM}", env::DOOR_KEY))?;
        let port_text = required(env::RELAY_PORT, "the helper was not started by vscode-shim")?;
        let relay_port = port_text.parse().ok().filter(|&port| port != 0).ok_or_else(|| {
            format!("{} is not a port number (1-65535): {port_text:?}; {START_WITH_SHIM}", env::RELAY_PORT)
        })?;
        let bind = match bind_addr {
            Some(bind) => bind,
            None => {
                let text = required(
                    env::BIND_ADDR,
                    "the job was not started with --vscode or the spank_vscode plugin is not loaded",
                )?;
                text.parse().map_err(|_| {
                    format!(
                        "{} is not an IP address: {text:?}; check the spank_vscode plugin's configuration",
                        env::BIND_ADDR
                    )
                })?
            }
        };
        let sockets = match std::env::var_os(env::RUNTIME_DIR) {
            Some(dir) if !private_dir(Path::new(&dir)) => {
                tracing::info!(
                    "{} {:?} is not a directory of this user's that only they can enter: servers stay \
                     on loopback, reachable by other users of this node",
                    env::RUNTIME_DIR,
                    dir
                );
                None
            }
            Some(dir) => {
                let names = SocketNames::new(Path::new(&dir), std::process::id());
                if names.is_none() {
                    tracing::info!(
                        "{} {:?} cannot hold the server's socket (too long, or characters a shell would \
                         interpret): servers stay on loopback, reachable by other users of this node",
                        env::RUNTIME_DIR,
                        dir
                    );
                }
                names
            }
            None => {
                tracing::info!(
                    "{} is not set: servers stay on loopback, reachable by other users of this node",
                    env::RUNTIME_DIR
                );
                None
            }
        };
        Ok(Session { nonce, door_key: Arc::new(door_key), relay_port, bind, sockets })
    }
}

/// The plugin's runtime dir is the user's and 0700; an inherited or stray
/// value naming anything else (`/tmp`, say) would put the server's socket
/// where others can find or pre-create it.
fn private_dir(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(dir).is_ok_and(|meta| {
        meta.is_dir() && meta.uid() == nix::unistd::getuid().as_raw() && meta.mode() & 0o077 == 0
    })
}

fn required(name: &str, why_missing: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) => Ok(value),
        Err(VarError::NotPresent) => Err(format!("{name} is not set: {why_missing}; {START_WITH_SHIM}")),
        Err(VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8; {START_WITH_SHIM}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_private_directory_of_ours_holds_sockets() {
        let private = crate::scratch::dir("private", 0o700);
        assert!(private_dir(&private));
        let shared = crate::scratch::dir("shared", 0o755);
        assert!(!private_dir(&shared));
        assert!(!private_dir(Path::new("/tmp")));
        std::fs::remove_dir_all(&private).unwrap();
        std::fs::remove_dir_all(&shared).unwrap();
    }
}
