//! An HTCondor editor job, seen as the rest of the helper expects a Slurm
//! job with the plugin loaded. No plugin runs there, so what it would have
//! published comes from the job itself: the runtime directory is a 0700
//! directory inside the job's own scratch directory (the user's, 0700, which
//! HTCondor removes with the job), and the address the door listens on is
//! the execute point's own (its machine ad's `MyAddress`), the address the
//! access point's shim already reaches it at. The job's id is its cluster.
//!
//! Everything here runs as the user, before the async runtime starts: it
//! only fills in the process's own environment.

use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vscode_slurm_protocol::{env, helper};

/// Set by HTCondor's starter in every job, and in `condor_ssh_to_job` sessions.
pub const JOB_AD: &str = "_CONDOR_JOB_AD";
const MACHINE_AD: &str = "_CONDOR_MACHINE_AD";
const SCRATCH_DIR: &str = "_CONDOR_SCRATCH_DIR";
/// The runtime directory's name inside the job's scratch directory.
const RUNTIME_NAME: &str = "vscode-slurm";
/// The starter's ads are a few KiB; more is not an ad of its.
const MAX_AD: u64 = 1 << 20;

/// Under HTCondor, sets the plugin's variables the environment lacks; a
/// no-op anywhere else. `Err` is one clause for the helper's usage line.
pub fn adopt_job_environment() -> Result<(), String> {
    if std::env::var_os(JOB_AD).is_none() {
        return Ok(());
    }
    if std::env::var_os(env::RUNTIME_DIR).is_none() {
        let scratch = std::env::var_os(SCRATCH_DIR).map(PathBuf::from).ok_or_else(|| {
            format!("{JOB_AD} is set but {SCRATCH_DIR} is not: not an HTCondor job's environment")
        })?;
        let dir = runtime_dir(&scratch)?;
        std::env::set_var(env::RUNTIME_DIR, dir);
    }
    if std::env::var_os(env::BIND_ADDR).is_none() {
        if let Some(machine_ad) = std::env::var_os(MACHINE_AD) {
            let text = read_ad(Path::new(&machine_ad))?;
            let addr = ad_value(&text, "MyAddress")
                .and_then(|value| sinful_ip(&value))
                .ok_or_else(|| format!("the machine ad {machine_ad:?} names no address (MyAddress)"))?;
            std::env::set_var(env::BIND_ADDR, addr.to_string());
        }
    }
    Ok(())
}

/// The job's cluster id, from its job ad.
pub fn cluster_id() -> Option<String> {
    let text = read_ad(Path::new(&std::env::var_os(JOB_AD)?)).ok()?;
    ad_value(&text, "ClusterId").filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// How long the job may still run, if it has a limit (`allowed_job_duration`),
/// at most [`MAX_LEFT`].
pub fn time_left(now: u64) -> Option<Duration> {
    let text = read_ad(Path::new(&std::env::var_os(JOB_AD)?)).ok()?;
    let allowed = ad_value(&text, "AllowedJobDuration")?;
    let Ok(allowed) = allowed.parse::<u64>() else {
        // A policy's unevaluated expression (a transform's SET, not EVALSET).
        tracing::info!("AllowedJobDuration is not a number of seconds ({allowed}); no warnings");
        return None;
    };
    let started: u64 = ad_value(&text, "JobCurrentStartDate")?.parse().ok()?;
    let ends = started.checked_add(allowed)?;
    Some(Duration::from_secs(ends.saturating_sub(now)).min(MAX_LEFT))
}

/// Longer limits are as good as none, and an `Instant` this far ahead is safe.
const MAX_LEFT: Duration = Duration::from_secs(10 * 365 * 86_400);

/// `--session-on-stdin`: the first line of stdin, read a byte at a time so
/// that nothing after it (the launch script) is taken from the stream.
pub fn read_session_from_stdin() -> Result<(), String> {
    let mut line = Vec::new();
    let mut stdin = std::io::stdin().lock();
    let mut byte = [0u8; 1];
    loop {
        match stdin.read(&mut byte) {
            Ok(0) => return Err("stdin ended before the session's line".to_owned()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= helper::MAX_SESSION_LINE => {
                return Err(format!("the session's line is longer than {} bytes", helper::MAX_SESSION_LINE))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read the session's line: {e}")),
        }
    }
    let text = String::from_utf8(line).map_err(|_| "the session's line is not UTF-8".to_owned())?;
    for (name, value) in helper::parse_session_line(&text).map_err(|e| format!("the session's line: {e}"))? {
        std::env::set_var(name, value);
    }
    Ok(())
}

/// `SCRATCH/vscode-slurm`, made 0700 if missing (the keeper and each window
/// race for it); one that is not a private directory of ours is refused.
fn runtime_dir(scratch: &Path) -> Result<PathBuf, String> {
    let dir = scratch.join(RUNTIME_NAME);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot make the runtime directory {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::getuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(format!("{} is not a private directory of this user's", dir.display()));
    }
    Ok(dir)
}

fn read_ad(path: &Path) -> Result<String, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_AD).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text)
}

/// The value of `NAME = VALUE` in an ad's long form, string quotes removed.
fn ad_value(ad: &str, name: &str) -> Option<String> {
    ad.lines().find_map(|line| {
        let (key, value) = line.split_once(" = ")?;
        (key.trim() == name).then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The IP of a "sinful string", `<10.0.0.3:9618?addrs=...>` or
/// `<[2001:db8::5]:9618?...>`.
fn sinful_ip(sinful: &str) -> Option<IpAddr> {
    let inner = sinful.strip_prefix('<')?;
    if let Some(v6) = inner.strip_prefix('[') {
        return v6[..v6.find(']')?].parse().ok();
    }
    let end = inner.find([':', '>', '?'])?;
    inner[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ads_and_addresses_are_read() {
        let ad = "ClusterId = 12\nMyAddress = \"<10.77.1.11:33995?addrs=10.77.1.11-33995&alias=c1>\"\nOwner = \"alice\"\n";
        assert_eq!(ad_value(ad, "ClusterId").as_deref(), Some("12"));
        assert_eq!(ad_value(ad, "Owner").as_deref(), Some("alice"));
        assert_eq!(ad_value(ad, "Cluster"), None);
        let addr = sinful_ip(&ad_value(ad, "MyAddress").unwrap());
        assert_eq!(addr, Some("10.77.1.11".parse().unwrap()));
        assert_eq!(sinful_ip("10.0.0.1:5"), None);
        assert_eq!(sinful_ip("<[2001:db8::5]:9618?addrs=x>"), Some("2001:db8::5".parse().unwrap()));
    }

    #[test]
    fn the_runtime_directory_is_private_and_made_once() {
        let scratch = crate::scratch::dir("condor-scratch", 0o700);
        let dir = runtime_dir(&scratch).unwrap();
        assert_eq!(runtime_dir(&scratch).unwrap(), dir);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert!(runtime_dir(&scratch).unwrap_err().contains("not a private directory"));
        std::fs::remove_dir_all(&scratch).unwrap();
    }
}
