//! `vscode-shim sessions` and `vscode-shim stop`: the user's vscode jobs as
//! Slurm knows them, from any login node.

use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

use vscode_slurm_protocol::slurm::{self, Attachment};

#[derive(Debug, Parser)]
#[command(name = "vscode-shim", disable_version_flag = true)]
struct SessionsCli {
    #[command(subcommand)]
    command: SessionsCommand,

    /// The squeue program.
    #[arg(long, value_name = "PATH", default_value = "squeue", hide = true, global = true)]
    squeue: String,

    /// The scancel program.
    #[arg(long, value_name = "PATH", default_value = "scancel", hide = true, global = true)]
    scancel: String,
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List your VS Code jobs: profile, job, node, state, time left, windows, grace left.
    Sessions,
    /// End a VS Code job: by profile name or job id (the only one, if none is given).
    Stop {
        /// A profile name or a job id, as `vscode-shim sessions` shows them.
        which: Option<String>,
    },
}

/// `sessions` and `stop` as clap knows them, for the man pages and
/// completions of the whole CLI.
pub fn subcommands() -> Vec<clap::Command> {
    use clap::CommandFactory;
    SessionsCli::command()
        .get_subcommands()
        .map(|sub| {
            let bin_name = format!("vscode-shim {}", sub.get_name());
            sub.clone().bin_name(bin_name)
        })
        .collect()
}

/// Handles `sessions` and `stop`; None for anything else.
pub fn dispatch() -> Option<i32> {
    let args: Vec<String> = std::env::args().collect();
    if !matches!(args.get(1).map(String::as_str), Some("sessions" | "stop")) {
        return None;
    }
    let cli = match SessionsCli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let rendered = e.render().to_string();
            let first = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            eprintln!(
                "vscode-shim: {}; see 'vscode-shim {} --help'",
                first.trim_start_matches("error: "),
                args[1]
            );
            return Some(2);
        }
        Err(e) => e.exit(),
    };
    let jobs = match list(&cli.squeue) {
        Ok(jobs) => jobs,
        Err(e) => {
            eprintln!("vscode-shim: {e}");
            return Some(1);
        }
    };
    Some(match cli.command {
        SessionsCommand::Sessions => {
            print!("{}", table(&jobs, unix_now()));
            0
        }
        SessionsCommand::Stop { which } => stop(&cli.scancel, &jobs, which.as_deref()),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsJob {
    pub profile: String,
    pub id: u32,
    pub node: String,
    pub state: String,
    pub time_left: String,
    /// From the keeper's comment; None before it wrote one.
    pub windows: Option<usize>,
    pub ends_at: Option<u64>,
}

fn list(squeue: &str) -> Result<Vec<VsJob>, String> {
    let output = Command::new(squeue)
        .args(["--me", "-h", "-o", "%j|%i|%N|%T|%L|%k"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {squeue}: {e}"))?;
    if !output.status.success() {
        return Err(format!("squeue failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(parse(&String::from_utf8_lossy(&output.stdout)))
}

pub fn parse(output: &str) -> Vec<VsJob> {
    output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.trim().splitn(6, '|').collect();
            let [name, id, node, state, left, comment] = fields[..] else { return None };
            let profile = slurm::profile_of(name)?;
            let (windows, ends_at) = parse_comment(comment);
            Some(VsJob {
                profile: profile.to_owned(),
                id: id.parse().ok()?,
                node: if node.is_empty() { "-".into() } else { node.to_owned() },
                state: state.to_owned(),
                time_left: left.to_owned(),
                windows,
                ends_at,
            })
        })
        .collect()
}

/// The keeper's Comment: attached windows, and when a lingering job ends.
fn parse_comment(comment: &str) -> (Option<usize>, Option<u64>) {
    Attachment::parse(comment).map_or((None, None), |a| (Some(a.windows), a.ends_at))
}

pub fn table(jobs: &[VsJob], now: u64) -> String {
    let mut rows =
        vec![["PROFILE", "JOB", "NODE", "STATE", "TIME LEFT", "WINDOWS", "GRACE LEFT"].map(String::from)];
    for job in jobs {
        let grace = match (job.windows, job.ends_at) {
            (Some(0), Some(at)) => {
                crate::job::format_waited(std::time::Duration::from_secs(at.saturating_sub(now)))
            }
            _ => "-".into(),
        };
        rows.push([
            job.profile.clone(),
            job.id.to_string(),
            job.node.clone(),
            job.state.clone(),
            job.time_left.clone(),
            job.windows.map_or_else(|| "-".into(), |n| n.to_string()),
            grace,
        ]);
    }
    if jobs.is_empty() {
        return "no VS Code jobs\n".to_owned();
    }
    let widths: Vec<usize> = (0..7).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

fn stop(scancel: &str, jobs: &[VsJob], which: Option<&str>) -> i32 {
    let chosen: Vec<&VsJob> = match which {
        None if jobs.len() == 1 => jobs.iter().collect(),
        None if jobs.is_empty() => {
            eprintln!("vscode-shim: you have no VS Code jobs to stop");
            return 1;
        }
        None => {
            eprintln!(
                "vscode-shim: you have {} VS Code jobs; say which: vscode-shim stop PROFILE|JOBID (see vscode-shim sessions)",
                jobs.len()
            );
            return 2;
        }
        Some(which) => jobs.iter().filter(|j| j.profile == which || j.id.to_string() == which).collect(),
    };
    if chosen.is_empty() {
        eprintln!(
            "vscode-shim: no VS Code job of yours matches '{}'; see vscode-shim sessions",
            which.unwrap_or_default()
        );
        return 1;
    }
    let mut code = 0;
    for job in chosen {
        let status = Command::new(scancel).arg(job.id.to_string()).stdin(Stdio::null()).status();
        match status {
            Ok(s) if s.success() => println!("stopped job {} (profile {})", job.id, job.profile),
            Ok(s) => {
                eprintln!("vscode-shim: scancel {} failed ({s})", job.id);
                code = 1;
            }
            Err(e) => {
                eprintln!("vscode-shim: cannot run {scancel}: {e}");
                code = 1;
            }
        }
    }
    code
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUEUE: &str = "vscode:gpu|41|c1|RUNNING|9:12|vscode:windows=2\n\
                          other|42|c2|RUNNING|1:00|\n\
                          vscode:default|43|c2|RUNNING|58:00|vscode:windows=0,ends=1000090\n\
                          vscode:args-1234abcd|44||PENDING|10:00|(null)\n";

    #[test]
    fn only_vscode_jobs_are_listed_with_their_windows() {
        let jobs = parse(SQUEUE);
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [41, 43, 44]);
        assert_eq!(jobs[0].windows, Some(2));
        assert_eq!((jobs[1].windows, jobs[1].ends_at), (Some(0), Some(1_000_090)));
        assert_eq!((jobs[2].windows, jobs[2].node.as_str()), (None, "-"));
        let table = table(&jobs, 1_000_000);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("PROFILE"), "{table}");
        assert!(lines[1].starts_with("gpu") && lines[1].contains(" 2"), "{table}");
        assert!(lines[2].ends_with("1:30"), "grace left: {table}");
        assert_eq!(super::table(&[], 0), "no VS Code jobs\n");
    }
}
