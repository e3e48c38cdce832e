//! What idle windows cost: the login node's processes as /proc shows them
//! (the login host is a set of namespaces on this machine, so its
//! processes are this machine's), and the controller's RPC counters as
//! `sdiag` shows them.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

/// The login node's per-window processes, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `vscode-shim`, one per window.
    Shim,
    /// The window's Slurm client: srun (a window in a profile's job).
    Srun,
    /// sshd's per-connection processes (the privileged monitor and the
    /// user's `sshd: USER@notty`), not the listening daemon.
    Sshd,
}

pub const KINDS: [Kind; 3] = [Kind::Shim, Kind::Srun, Kind::Sshd];

impl Kind {
    pub fn key(self) -> &'static str {
        match self {
            Kind::Shim => "shim",
            Kind::Srun => "srun",
            Kind::Sshd => "sshd",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Shim => "vscode-shim",
            Kind::Srun => "srun (the window's step)",
            Kind::Sshd => "sshd, per connection",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    kind: Kind,
    ticks: u64,
    rss_kib: u64,
    pss_kib: u64,
}

/// The login node's per-window processes at one moment.
pub struct Snapshot(HashMap<u32, Sample>);

/// One kind's totals over an idle period.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub processes: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// User and system CPU ticks (`/proc/PID/stat`) over the idle period.
    pub idle_ticks: u64,
    /// Processes of the first snapshot gone by the second: a window that
    /// did not stay idle.
    pub vanished: usize,
}

/// The pid namespace of `host`'s init, as `readlink /proc/PID/ns/pid` names it.
fn host_pid_ns(lab_dir: &Path, host: &str) -> Result<String, String> {
    let init = fs::read_to_string(lab_dir.join("pids").join(host))
        .map_err(|e| format!("the lab's {host} init pid: {e}"))?;
    let link = fs::read_link(format!("/proc/{}/ns/pid", init.trim()))
        .map_err(|e| format!("{host}'s pid namespace: {e}"))?;
    Ok(link.to_string_lossy().into_owned())
}

fn kind_of(pid: u32) -> Option<Kind> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    match comm.trim() {
        "vscode-shim" => Some(Kind::Shim),
        "srun" => Some(Kind::Srun),
        "sshd" => {
            // Every sshd retitles itself: the daemon `sshd: /usr/sbin/sshd
            // ... [listener] ...`, a connection's `sshd: USER [priv]` and
            // `sshd: USER@notty`.
            let cmdline = String::from_utf8(fs::read(format!("/proc/{pid}/cmdline")).ok()?).ok()?;
            let title = cmdline.strip_prefix("sshd: ")?;
            (!title.starts_with('/') && !title.contains("[listener]")).then_some(Kind::Sshd)
        }
        _ => None,
    }
}

/// utime + stime, in clock ticks.
fn ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the slice starts at field 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A `Key:   N kB` line of a /proc file.
fn kib(path: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse().ok())
}

impl Snapshot {
    /// Every per-window process on `host` now.
    pub fn take(lab_dir: &Path, host: &str) -> Result<Snapshot, String> {
        let ns = host_pid_ns(lab_dir, host)?;
        let dir = fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
        let mut out = HashMap::new();
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let in_host =
                fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| l.to_string_lossy() == ns);
            if !in_host {
                continue;
            }
            let Some(kind) = kind_of(pid) else { continue };
            let (Some(ticks), Some(rss_kib)) = (ticks(pid), kib(&format!("/proc/{pid}/status"), "VmRSS:"))
            else {
                continue;
            };
            let pss_kib = kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or(0);
            out.insert(pid, Sample { kind, ticks, rss_kib, pss_kib });
        }
        Ok(Snapshot(out))
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.0.values().filter(|s| s.kind == kind).count()
    }

    /// Memory as of `self`, CPU from `self` to `later`, per kind.
    pub fn idle_until(&self, later: &Snapshot) -> BTreeMap<Kind, Group> {
        let mut out: BTreeMap<Kind, Group> = KINDS.iter().map(|&k| (k, Group::default())).collect();
        for (pid, before) in &self.0 {
            let group = out.entry(before.kind).or_default();
            group.processes += 1;
            group.rss_kib += before.rss_kib;
            group.pss_kib += before.pss_kib;
            match later.0.get(pid) {
                Some(after) if after.kind == before.kind => {
                    group.idle_ticks += after.ticks.saturating_sub(before.ticks)
                }
                _ => group.vanished += 1,
            }
        }
        out
    }
}

/// `sdiag`'s RPC counters: per message type and per user.
#[derive(Debug, Clone, Default)]
pub struct Sdiag {
    pub by_type: BTreeMap<String, u64>,
    pub by_user: BTreeMap<String, u64>,
}

impl Sdiag {
    /// The "Remote Procedure Call statistics by message type" and "... by
    /// user" sections: `\tNAME ( NUMBER) count:N ave_time:... total_time:...`.
    pub fn parse(text: &str) -> Sdiag {
        let mut out = Sdiag::default();
        let mut section = None;
        for line in text.lines() {
            if line.starts_with("Remote Procedure Call statistics by message type") {
                section = Some(true);
                continue;
            }
            if line.starts_with("Remote Procedure Call statistics by user") {
                section = Some(false);
                continue;
            }
            if !line.starts_with('\t') {
                section = None;
                continue;
            }
            let Some(by_type) = section else { continue };
            let name = line.split_whitespace().next();
            let count = line.split_whitespace().find_map(|w| w.strip_prefix("count:")?.parse::<u64>().ok());
            if let (Some(name), Some(count)) = (name, count) {
                let map = if by_type { &mut out.by_type } else { &mut out.by_user };
                map.insert(name.to_owned(), count);
            }
        }
        out
    }

    /// What grew from `self` to `later` (counters only grow between resets;
    /// a counter that shrank means sdiag was reset meanwhile).
    pub fn growth(&self, later: &Sdiag) -> Result<Sdiag, String> {
        let grown = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            let mut out = BTreeMap::new();
            for (name, &after) in b {
                let before = a.get(name).copied().unwrap_or(0);
                if after < before {
                    return Err(format!(
                        "sdiag's {name} count went from {before} to {after}: reset meanwhile"
                    ));
                }
                if after > before {
                    out.insert(name.clone(), after - before);
                }
            }
            Ok(out)
        };
        Ok(Sdiag {
            by_type: grown(&self.by_type, &later.by_type)?,
            by_user: grown(&self.by_user, &later.by_user)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDIAG: &str = "\
Latency for 1000 calls to gettimeofday(): 25 microseconds

Remote Procedure Call statistics by message type
\tMESSAGE_NODE_REGISTRATION_STATUS        ( 1002) count:2      ave_time:341    total_time:683
\tREQUEST_JOB_INFO_SINGLE                 ( 2021) count:14     ave_time:263    total_time:526

Remote Procedure Call statistics by user
\troot            (       0) count:6      ave_time:305    total_time:1831
\talice           (    2001) count:14     ave_time:263    total_time:3682

Pending RPC statistics
\tNo pending RPCs
";

    #[test]
    fn sdiag_sections_are_read_and_growth_is_the_difference() {
        let before = Sdiag::parse(SDIAG);
        assert_eq!(before.by_type.get("REQUEST_JOB_INFO_SINGLE"), Some(&14));
        assert_eq!(before.by_user.get("alice"), Some(&14));
        assert_eq!(before.by_user.get("root"), Some(&6));
        assert_eq!(before.by_type.len(), 2, "{before:?}");
        let after = Sdiag::parse(&SDIAG.replace("count:14     ave_time:263    total_time:3682", "count:20"));
        let grown = before.growth(&after).unwrap();
        assert_eq!(grown.by_user.into_iter().collect::<Vec<_>>(), [("alice".to_owned(), 6)]);
        assert!(grown.by_type.is_empty());
        assert!(after.growth(&before).is_err(), "a counter that shrank is a reset");
    }
}
