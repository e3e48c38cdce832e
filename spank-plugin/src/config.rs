//! The plugin's plugstack.conf arguments.
//!
//! Parsing is strict on purpose: with the plugin marked `required`, a typo
//! makes salloc refuse with a message naming the bad argument, instead of the
//! plugin silently running with a default the admin did not mean.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use vscode_slurm_protocol::duration;

use crate::bind::BindSpec;
use crate::failure::Failure;
use crate::runtime::Limits;

pub const DEFAULT_RUNTIME_DIR: &str = "/run/vscode-slurm";
pub const DEFAULT_KILL_GRACE_SECS: u64 = 5;
/// Longer would hold the node in COMPLETING for too long.
pub const MAX_KILL_GRACE_SECS: u64 = 60;

/// Without a site maximum, a job holds its node at most this long after its
/// last window closed.
pub const DEFAULT_LINGER_MAX: Duration = Duration::from_secs(30 * 60);

const MIB: u64 = 1 << 20;
/// Sockets and a few small files fit many times over; a user who fills it
/// has filled only their own job's directory (ENOSPC), never the node's /run.
pub const DEFAULT_RUNTIME_SIZE: u64 = 64 * MIB;
/// Bounds what the epilog's unmount frees and what a tree of empty files or
/// directories (which cost no bytes) can pin in kernel memory.
pub const DEFAULT_RUNTIME_INODES: u64 = 4096;
const MIN_RUNTIME_SIZE: u64 = MIB;
/// tmpfs pages live in memory: more than this per job is a typo, not a plan.
const MAX_RUNTIME_SIZE: u64 = 64 << 30;
const MIN_RUNTIME_INODES: u64 = 64;
const MAX_RUNTIME_INODES: u64 = 1 << 20;

const KNOWN_KEYS: &str = "bind, runtime_dir, runtime_size, runtime_inodes, kill_grace, linger, linger_max";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub bind: BindSpec,
    /// Root-owned base directory; each job gets `<runtime_dir>/<jobid>`.
    pub runtime_dir: PathBuf,
    /// Byte limit of each job's runtime directory (its own tmpfs).
    pub runtime_size: u64,
    /// Inode limit of each job's runtime directory.
    pub runtime_inodes: u64,
    /// Time between SIGTERM and SIGKILL in the epilog.
    pub kill_grace: Duration,
    /// How long a job outlives its last window when the user does not say.
    pub linger: Duration,
    /// The most a user may ask for with `--linger`.
    pub linger_max: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: BindSpec::NodeAddr,
            runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
            runtime_size: DEFAULT_RUNTIME_SIZE,
            runtime_inodes: DEFAULT_RUNTIME_INODES,
            kill_grace: Duration::from_secs(DEFAULT_KILL_GRACE_SECS),
            linger: Duration::ZERO,
            linger_max: DEFAULT_LINGER_MAX,
        }
    }
}

impl Config {
    /// Parses the arguments after the plugin path on its plugstack.conf line.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Config, Failure> {
        let mut config = Config::default();
        let mut seen: Vec<&str> = Vec::new();
        for arg in args {
            let arg = arg.as_ref();
            let Some((key, value)) = arg.split_once('=') else {
                return Err(Failure::new(format!(
                    "vscode: plugstack argument '{arg}' is not of the form key=value; \
                     write e.g. kill_grace=5s (known keys: {KNOWN_KEYS})"
                )));
            };
            if !matches!(
                key,
                "bind"
                    | "runtime_dir"
                    | "runtime_size"
                    | "runtime_inodes"
                    | "kill_grace"
                    | "linger"
                    | "linger_max"
            ) {
                return Err(Failure::new(format!(
                    "vscode: unknown plugstack argument '{arg}' (known: {KNOWN_KEYS})"
                )));
            }
            if seen.contains(&key) {
                return Err(Failure::new(format!(
                    "vscode: plugstack argument '{key}' is given more than once; keep only one {key}="
                )));
            }
            seen.push(key);
            match key {
                "bind" => config.bind = BindSpec::parse(value)?,
                "runtime_dir" => config.runtime_dir = parse_runtime_dir(value)?,
                "runtime_size" => config.runtime_size = parse_runtime_size(value)?,
                "runtime_inodes" => config.runtime_inodes = parse_runtime_inodes(value)?,
                "linger" => config.linger = parse_linger(key, value)?,
                "linger_max" => config.linger_max = parse_linger(key, value)?,
                _ => config.kill_grace = parse_kill_grace(value)?,
            }
        }
        if config.linger > config.linger_max {
            return Err(Failure::new(format!(
                "vscode: plugstack argument 'linger={}' is above 'linger_max={}'; lower linger or raise linger_max",
                duration::Display(config.linger),
                duration::Display(config.linger_max)
            )));
        }
        Ok(config)
    }

    /// The size of each job's runtime directory.
    pub fn runtime_limits(&self) -> Limits {
        Limits { bytes: self.runtime_size, inodes: self.runtime_inodes }
    }

    /// What a job gets for the user's `--linger` (None: not given), and
    /// whether it was cut down to the site's maximum.
    pub fn effective_linger(&self, asked: Option<Duration>) -> (Duration, bool) {
        match asked {
            Some(asked) if asked > self.linger_max => (self.linger_max, true),
            Some(asked) => (asked, false),
            None => (self.linger, false),
        }
    }
}

fn parse_linger(key: &str, value: &str) -> Result<Duration, Failure> {
    duration::parse(value)
        .map_err(|why| Failure::new(format!("vscode: bad plugstack argument '{key}={value}': {why}")))
}

fn parse_runtime_dir(value: &str) -> Result<PathBuf, Failure> {
    let reject = |why: &str| {
        Failure::new(format!(
            "vscode: bad plugstack argument 'runtime_dir={value}': {why}; \
             write an absolute path such as runtime_dir={DEFAULT_RUNTIME_DIR}"
        ))
    };
    if value.contains('\0') {
        return Err(reject("the path contains a NUL byte"));
    }
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(reject("the path is not absolute"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(reject("the path contains a '..' component"));
    }
    // Job directories straight under / would be created next to /etc and /usr.
    if path.components().all(|c| c == Component::RootDir) {
        return Err(reject("the path is the root directory"));
    }
    Ok(path.components().collect())
}

/// Whole kibi-, mebi- or gibibytes with their unit (`64M`), because a bare
/// number would be read as bytes by tmpfs and as something else by people.
fn parse_runtime_size(value: &str) -> Result<u64, Failure> {
    let reject = |why: &str| {
        Failure::new(format!(
            "vscode: bad plugstack argument 'runtime_size={value}': {why}; write a size from 1M to 64G \
             with its unit K, M or G, e.g. runtime_size=64M"
        ))
    };
    let units = [('K', 10u32), ('M', 20), ('G', 30)];
    let Some((digits, shift)) =
        units.iter().find_map(|&(unit, shift)| Some((value.strip_suffix(unit)?, shift)))
    else {
        return Err(reject("it does not end in K, M or G"));
    };
    let bytes = parse_decimal(digits)
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| reject("not a whole number before the unit"))?;
    if !(MIN_RUNTIME_SIZE..=MAX_RUNTIME_SIZE).contains(&bytes) {
        return Err(reject("out of range"));
    }
    Ok(bytes)
}

fn parse_runtime_inodes(value: &str) -> Result<u64, Failure> {
    parse_decimal(value).filter(|n| (MIN_RUNTIME_INODES..=MAX_RUNTIME_INODES).contains(n)).ok_or_else(|| {
        Failure::new(format!(
            "vscode: bad plugstack argument 'runtime_inodes={value}': write a whole number from \
             {MIN_RUNTIME_INODES} to {MAX_RUNTIME_INODES}, e.g. runtime_inodes={DEFAULT_RUNTIME_INODES}"
        ))
    })
}

/// ASCII digits only: `u64::from_str` would also take a leading `+`.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `64M`, `1G`, `1536K`: the largest unit that divides `bytes`, for logs.
pub fn size_display(bytes: u64) -> String {
    match bytes {
        b if b != 0 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b != 0 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b != 0 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// The project's one duration grammar (`5s`, `1m`, `0`), up to a minute.
fn parse_kill_grace(value: &str) -> Result<Duration, Failure> {
    let reject = |why: String| {
        Failure::new(format!(
            "vscode: bad plugstack argument 'kill_grace={value}': {why}; write a duration from 0 to \
             {MAX_KILL_GRACE_SECS}s, e.g. kill_grace={DEFAULT_KILL_GRACE_SECS}s"
        ))
    };
    let grace = duration::parse(value).map_err(reject)?;
    if grace > Duration::from_secs(MAX_KILL_GRACE_SECS) {
        return Err(reject(format!("{} is longer than a minute", duration::Display(grace))));
    }
    Ok(grace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, Failure> {
        Config::parse(args)
    }

    fn rejected(args: &[&str]) -> String {
        let message = parse(args).unwrap_err().message().to_owned();
        assert!(message.starts_with("vscode: "), "{message}");
        message
    }

    #[test]
    fn no_arguments_gives_defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.bind, BindSpec::NodeAddr);
        assert_eq!(config.runtime_dir, PathBuf::from("/run/vscode-slurm"));
        assert_eq!(config.kill_grace, Duration::from_secs(5));
        assert_eq!((config.runtime_size, config.runtime_inodes), (64 << 20, 4096));
    }

    #[test]
    fn runtime_limits_are_parsed_with_units_and_bounds() {
        let config = parse(&["runtime_size=1536K", "runtime_inodes=64"]).unwrap();
        assert_eq!((config.runtime_size, config.runtime_inodes), (1536 << 10, 64));
        assert_eq!(parse(&["runtime_size=1M"]).unwrap().runtime_size, 1 << 20);
        assert_eq!(parse(&["runtime_size=64G"]).unwrap().runtime_size, 64 << 30);
        assert_eq!(parse(&["runtime_inodes=1048576"]).unwrap().runtime_inodes, 1 << 20);
        for bad in [
            "",
            "64",
            "64m",
            "64MB",
            "64MiB",
            "M",
            "+64M",
            "-1M",
            "6.4M",
            "1023K",
            "65G",
            "0M",
            "99999999999999999999G",
            " 64M",
        ] {
            let message = rejected(&[&format!("runtime_size={bad}")]);
            assert!(message.contains(&format!("'runtime_size={bad}'")), "{bad}: {message}");
            assert!(message.contains("e.g. runtime_size=64M"), "{bad}: {message}");
        }
        for bad in ["", "0", "63", "1048577", "4k", "+4096", "4_096", "-1", "99999999999999999999"] {
            let message = rejected(&[&format!("runtime_inodes={bad}")]);
            assert!(message.contains(&format!("'runtime_inodes={bad}'")), "{bad}: {message}");
            assert!(message.contains("from 64 to 1048576, e.g. runtime_inodes=4096"), "{bad}: {message}");
        }
        assert!(rejected(&["runtime_size=1M", "runtime_size=2M"])
            .contains("'runtime_size' is given more than once"));
        assert!(rejected(&["runtime_inodes=64", "runtime_inodes=64"])
            .contains("'runtime_inodes' is given more than once"));
    }

    #[test]
    fn sizes_are_shown_in_their_largest_unit() {
        assert_eq!(size_display(64 << 20), "64M");
        assert_eq!(size_display(2 << 30), "2G");
        assert_eq!(size_display(1536 << 10), "1536K");
        assert_eq!(size_display(1000), "1000 bytes");
        assert_eq!(size_display(0), "0 bytes");
    }

    #[test]
    fn every_key_is_accepted() {
        let config = parse(&["bind=ib0", "runtime_dir=/var/run/vs//code/", "kill_grace=0"]).unwrap();
        assert_eq!(parse(&["kill_grace=1m"]).unwrap().kill_grace, Duration::from_secs(60));
        assert_eq!(config.bind, BindSpec::Interface("ib0".into()));
        assert_eq!(config.runtime_dir, PathBuf::from("/var/run/vs/code"));
        assert_eq!(config.kill_grace, Duration::ZERO);
        assert_eq!(parse(&["kill_grace=60s"]).unwrap().kill_grace, Duration::from_secs(60));
        assert_eq!(parse(&["bind=10.0.0.1"]).unwrap().bind, BindSpec::Address("10.0.0.1".parse().unwrap()));
        assert_eq!(parse(&["bind=nodeaddr"]).unwrap().bind, BindSpec::NodeAddr);
        assert_eq!(parse(&["runtime_dir=/x"]).unwrap().runtime_dir, PathBuf::from("/x"));
    }

    #[test]
    fn unknown_key_is_named_with_the_known_ones() {
        assert_eq!(
            rejected(&["foo=1"]),
            "vscode: unknown plugstack argument 'foo=1' (known: bind, runtime_dir, runtime_size, runtime_inodes, \
             kill_grace, linger, linger_max)"
        );
        assert!(rejected(&["Bind=eth0"]).contains("unknown plugstack argument 'Bind=eth0'"));
        assert!(rejected(&["=1"]).contains("unknown plugstack argument '=1'"));
    }

    #[test]
    fn argument_without_equals_is_rejected() {
        let message = rejected(&["frob"]);
        assert!(message.contains("'frob' is not of the form key=value"), "{message}");
        assert!(
            message.contains("known keys: bind, runtime_dir, runtime_size, runtime_inodes, kill_grace"),
            "{message}"
        );
        assert!(rejected(&["bind"]).contains("'bind' is not of the form key=value"));
    }

    #[test]
    fn repeated_key_is_rejected() {
        assert!(rejected(&["bind=eth0", "bind=eth1"]).contains("'bind' is given more than once"));
        assert!(
            rejected(&["kill_grace=1s", "kill_grace=1s"]).contains("'kill_grace' is given more than once")
        );
    }

    #[test]
    fn bad_bind_is_rejected() {
        for bad in ["bind=", "bind=eth 0", "bind=10.0.0", "bind=waytoolonginterface0"] {
            assert!(rejected(&[bad]).contains("bad plugstack argument 'bind="), "{bad}");
        }
    }

    #[test]
    fn bad_runtime_dir_is_rejected() {
        assert!(rejected(&["runtime_dir="]).contains("not absolute"));
        assert!(rejected(&["runtime_dir=run/vscode"]).contains("not absolute"));
        assert!(rejected(&["runtime_dir=./run"]).contains("not absolute"));
        assert!(rejected(&["runtime_dir=/run/../etc"]).contains("'..'"));
        assert!(rejected(&["runtime_dir=/run/x/.."]).contains("'..'"));
        assert!(rejected(&["runtime_dir=/run/a\0b"]).contains("NUL"));
        assert!(rejected(&["runtime_dir=/"]).contains("root directory"));
        assert!(rejected(&["runtime_dir=//"]).contains("root directory"));
    }

    #[test]
    fn bad_kill_grace_is_rejected() {
        for bad in ["", "5", "61s", "2m", "-1s", "+5s", "1.5s", "abc", "0x5", "999999999999999999999s"] {
            let message = rejected(&[&format!("kill_grace={bad}")]);
            assert!(message.contains("from 0 to 60s, e.g. kill_grace=5s"), "{bad}: {message}");
        }
    }

    #[test]
    fn linger_defaults_caps_and_rejects() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.effective_linger(None), (Duration::ZERO, false));
        assert_eq!(config.effective_linger(Some(Duration::from_secs(60))), (Duration::from_secs(60), false));
        assert_eq!(config.effective_linger(Some(Duration::from_secs(7200))), (DEFAULT_LINGER_MAX, true));
        let config = parse(&["linger=5m", "linger_max=1h"]).unwrap();
        assert_eq!(config.effective_linger(None), (Duration::from_secs(300), false));
        assert_eq!(config.effective_linger(Some(Duration::ZERO)), (Duration::ZERO, false));
        assert_eq!(
            config.effective_linger(Some(Duration::from_secs(3601))),
            (Duration::from_secs(3600), true)
        );
        assert!(rejected(&["linger=10"]).contains("bad plugstack argument 'linger=10': '10' has no unit"));
        assert!(rejected(&["linger_max=soon"]).contains("'linger_max=soon'"));
        assert!(rejected(&["linger=2h"]).contains("above 'linger_max=30m'"));
        assert!(rejected(&["linger_max=0", "linger=1m"]).contains("above 'linger_max=0'"));
    }

    #[test]
    fn first_error_stops_parsing() {
        assert!(rejected(&["kill_grace=5s", "frob", "foo=1"]).contains("'frob'"));
    }
}
