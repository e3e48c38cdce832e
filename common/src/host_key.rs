//! The user's job host key (see `vscode_slurm_protocol::proxy::HOST_KEY`):
//! made once, by whichever comes first — `vscode-shim setup --proxy` on a
//! login node, or a proxy window's helper on a compute node — and then only
//! read. Homes are shared between nodes, so two nodes may make it at the
//! same moment: each makes its own under a temporary name and the first
//! `link(2)` into place wins; the other's is thrown away.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The public half of `private`, next to it.
pub fn public_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Makes sure the key at `private` exists and is the user's alone; returns
/// its public half as `TYPE BASE64` (what a `known_hosts` line takes),
/// always derived from the private half (a stale `.pub` next to it is
/// replaced, never believed), so what `setup --proxy` shows is what sshd
/// presents.
pub fn ensure(private: &Path, comment: &str) -> Result<String, String> {
    if fs::symlink_metadata(private).is_err() {
        make(private, comment)?;
    }
    check_private(private)?;
    let line = public_line(private)?;
    refresh_public_file(private, &line, comment);
    Ok(line)
}

/// Rewrites the `.pub` file when it does not hold `line`, for the user who
/// looks at it; failing to is not an error (nothing reads it back).
fn refresh_public_file(private: &Path, line: &str, comment: &str) {
    let public = public_path(private);
    let current = fs::read_to_string(&public).unwrap_or_default();
    if current.split_whitespace().take(2).collect::<Vec<_>>().join(" ") == line {
        return;
    }
    let mut temp = public.as_os_str().to_owned();
    temp.push(format!(".new-{}", std::process::id()));
    let temp = PathBuf::from(temp);
    if fs::write(&temp, format!("{line} {comment}\n")).and_then(|()| fs::rename(&temp, &public)).is_err() {
        let _ = fs::remove_file(&temp);
    }
}

fn make(private: &Path, comment: &str) -> Result<(), String> {
    if let Some(dir) = private.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // Unique across the nodes sharing the home, and the threads of a test.
    static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let host: String = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let mut temp = private.as_os_str().to_owned();
    temp.push(format!(
        ".new-{}-{}-{}",
        host,
        std::process::id(),
        MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let temp = PathBuf::from(temp);
    let _ = fs::remove_file(&temp);
    let _ = fs::remove_file(public_path(&temp));
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&temp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh-keygen to make the job host key: {e}"))?;
    if !made.status.success() {
        let said = String::from_utf8_lossy(&made.stderr);
        return Err(format!(
            "ssh-keygen could not make the job host key {}: {}",
            private.display(),
            said.trim()
        ));
    }
    // The private half decides; its public half is derived from it.
    let placed = fs::hard_link(&temp, private);
    let _ = fs::remove_file(&temp);
    let _ = fs::remove_file(public_path(&temp));
    match placed {
        Ok(()) => Ok(()),
        // Another node made it first: theirs is the key.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot put the job host key at {}: {e}", private.display())),
    }
}

/// sshd refuses a host key others can read; say so here, in our words.
fn check_private(private: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(private)
        .map_err(|e| format!("cannot inspect the job host key {}: {e}", private.display()))?;
    let uid = nix_uid();
    if !meta.file_type().is_file() || meta.uid() != uid {
        return Err(format!(
            "the job host key {} is not a file of yours; remove it and its .pub file, then run vscode-shim \
             setup --proxy again",
            private.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "the job host key {} can be read by others (mode {:o}); run chmod 600 on it",
            private.display(),
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

/// The public half, from the private one (`ssh-keygen -y`).
fn public_line(private: &Path) -> Result<String, String> {
    let derived = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(private)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh-keygen to read the job host key: {e}"))?;
    let text = String::from_utf8_lossy(&derived.stdout);
    let mut words = text.split_whitespace();
    match (derived.status.success(), words.next(), words.next()) {
        (true, Some(kind), Some(key)) if kind.starts_with("ssh-") || kind.starts_with("ecdsa-") => {
            Ok(format!("{kind} {key}"))
        }
        _ => Err(format!(
            "ssh-keygen cannot read the job host key {} ({}); remove it and its .pub file, then run \
             vscode-shim setup --proxy again",
            private.display(),
            String::from_utf8_lossy(&derived.stderr).trim()
        )),
    }
}

fn nix_uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("host-key-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn made_once_then_read_and_made_by_one_of_many() {
        if Command::new("ssh-keygen").arg("-?").output().is_err() {
            eprintln!("skipping: no ssh-keygen");
            return;
        }
        let dir = scratch("once");
        let key = dir.join(".ssh/job-key");
        let first = ensure(&key, "test").unwrap();
        assert!(first.starts_with("ssh-ed25519 "), "{first}");
        assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.join(".ssh")).unwrap().mode() & 0o777, 0o700);
        assert_eq!(ensure(&key, "test").unwrap(), first);
        // A lost public half is derived again, and a stale one (a private
        // half removed alone, then made anew) is never believed.
        fs::remove_file(public_path(&key)).unwrap();
        assert_eq!(ensure(&key, "test").unwrap(), first);
        assert!(fs::read_to_string(public_path(&key)).unwrap().starts_with(&first));
        fs::remove_file(&key).unwrap();
        let second = ensure(&key, "test").unwrap();
        assert_ne!(second, first, "a new private half");
        assert!(fs::read_to_string(public_path(&key)).unwrap().starts_with(&second), "the .pub follows it");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(ensure(&key, "test").unwrap_err().contains("chmod 600"));

        // Nodes racing for a fresh home all end with the one key that won.
        let raced = dir.join("raced/.ssh/job-key");
        let lines: Vec<String> = (0..4)
            .map(|_| {
                let raced = raced.clone();
                std::thread::spawn(move || ensure(&raced, "test"))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        assert!(lines.iter().all(|l| l == &lines[0]), "{lines:?}");
        let left: Vec<_> =
            fs::read_dir(raced.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "temporary keys left: {left:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
