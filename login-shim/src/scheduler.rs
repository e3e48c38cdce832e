//! Which scheduler a session's job goes to: `--scheduler`, else the site's
//! default in `vscode-shim.conf` next to the binary (strict `key = value`
//! lines, unknown keys refused), else what the login node has installed.

use std::path::{Path, PathBuf};

/// The schedulers the shim can put a session into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduler {
    Slurm,
    Htcondor,
}

/// The site configuration's file name, in the binary's own directory.
pub const SITE_CONFIG: &str = "vscode-shim.conf";
const KNOWN_KEYS: &str = "scheduler";
/// A site file is a few lines; more is not one.
const MAX_SITE_CONFIG: u64 = 64 * 1024;

pub fn choose(asked: Option<Scheduler>) -> Result<Scheduler, String> {
    if let Some(asked) = asked {
        return Ok(asked);
    }
    if let Some(path) = site_config_path().filter(|path| path.exists()) {
        if let Some(scheduler) = read_site_config(&path)? {
            return Ok(scheduler);
        }
    }
    Ok(detect(&|program| on_path(program)))
}

/// What the login node has: Slurm's sbatch, else HTCondor's condor_submit,
/// else Slurm (whose missing sbatch then says what is wrong).
fn detect(has: &dyn Fn(&str) -> bool) -> Scheduler {
    if !has("sbatch") && has("condor_submit") {
        Scheduler::Htcondor
    } else {
        Scheduler::Slurm
    }
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

fn read_site_config(path: &Path) -> Result<Option<Scheduler>, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_SITE_CONFIG).read_to_string(&mut text))
        .map_err(|e| format!("cannot read the site configuration {}: {e}; ask your admin", path.display()))?;
    parse_site_config(&text).map_err(|e| format!("{}: {e}; ask your admin to fix it", path.display()))
}

pub fn parse_site_config(text: &str) -> Result<Option<Scheduler>, String> {
    let mut scheduler = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: '{line}' is not key = value", number + 1))?;
        match (key.trim(), value.trim()) {
            ("scheduler", "slurm") => scheduler = Some(Scheduler::Slurm),
            ("scheduler", "htcondor") => scheduler = Some(Scheduler::Htcondor),
            ("scheduler", other) => {
                return Err(format!("line {}: scheduler is slurm or htcondor, not '{other}'", number + 1))
            }
            (other, _) => {
                return Err(format!("line {}: unknown key '{other}' (known: {KNOWN_KEYS})", number + 1))
            }
        }
    }
    Ok(scheduler)
}

/// Where a site's installation keeps its default: beside the binary.
fn site_config_path() -> Option<PathBuf> {
    std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join(SITE_CONFIG)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_file_is_strict() {
        assert_eq!(parse_site_config("# site\nscheduler = htcondor\n"), Ok(Some(Scheduler::Htcondor)));
        assert_eq!(parse_site_config("scheduler=slurm # default"), Ok(Some(Scheduler::Slurm)));
        assert_eq!(parse_site_config("\n"), Ok(None));
        let e = parse_site_config("schedular = slurm").unwrap_err();
        assert!(e.contains("line 1: unknown key 'schedular' (known: scheduler)"), "{e}");
        assert!(parse_site_config("scheduler = pbs").unwrap_err().contains("slurm or htcondor, not 'pbs'"));
        assert!(parse_site_config("scheduler").unwrap_err().contains("not key = value"));
    }

    #[test]
    fn the_login_node_decides_when_nothing_else_does() {
        assert_eq!(detect(&|p| p == "condor_submit"), Scheduler::Htcondor);
        assert_eq!(detect(&|p| p == "sbatch" || p == "condor_submit"), Scheduler::Slurm);
        assert_eq!(detect(&|_| false), Scheduler::Slurm);
    }
}
