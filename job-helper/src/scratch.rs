//! Directories for the binary's tests, with the mode a check is about.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A fresh directory of `mode` under the temp dir, unique to this process.
pub fn dir(name: &str, mode: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vscode-job-helper-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}
