//! What more than one of the project's programs needs, written once: the
//! one-line usage errors and generated man pages of every CLI, and (feature
//! `session`) the logging and the bounded Slurm client that vscode-shim and
//! vscode-job-helper share. Root-side `/proc` code lives in
//! `vscode-slurm-procfs` instead, where it can be audited on its own.

pub mod cli;
#[cfg(feature = "session")]
pub mod host_key;
#[cfg(feature = "session")]
pub mod htcondor;
pub mod json;
#[cfg(feature = "session")]
pub mod logging;
#[cfg(feature = "session")]
pub mod slurm;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lets several sessions of one user share a path pattern (`--log-file
/// /tmp/shim-%p.log`) without clobbering each other.
pub fn expand_pid(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    if text.contains("%p") {
        PathBuf::from(text.replace("%p", &std::process::id().to_string()))
    } else {
        path.to_path_buf()
    }
}

/// Seconds since the epoch: the unit of the job Comment's `ends=`, which
/// login nodes and compute nodes compare across machines.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_placeholder_is_expanded() {
        let pid = std::process::id().to_string();
        assert_eq!(expand_pid(Path::new("/tmp/shim-%p.log")), PathBuf::from(format!("/tmp/shim-{pid}.log")));
        assert_eq!(expand_pid(Path::new("/tmp/shim.log")), PathBuf::from("/tmp/shim.log"));
    }

    #[test]
    fn now_is_after_this_code_was_written() {
        assert!(unix_now() > 1_790_000_000);
    }
}
