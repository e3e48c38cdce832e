//! `vscode-shim sessions` and `vscode-shim stop`: the user's vscode jobs as
//! Slurm knows them, from any login node.

use clap::Args;
use vscode_slurm_common::slurm::{Programs, Slurm};
use vscode_slurm_common::unix_now;
use vscode_slurm_protocol::slurm::{self, Attachment};

#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub slurm: Programs,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// A profile name or a job id, as `vscode-shim sessions` shows them.
    which: Option<String>,

    #[command(flatten)]
    pub slurm: Programs,
}

/// `vscode-shim sessions`; returns the exit code.
pub async fn sessions(args: &SessionsArgs) -> i32 {
    let slurm = slurm_client(&args.slurm);
    match list(&slurm).await {
        Ok(jobs) => {
            print!("{}", table(&jobs, unix_now()));
            0
        }
        Err(e) => {
            eprintln!("vscode-shim: {e}");
            1
        }
    }
}

/// `vscode-shim stop`; returns the exit code.
pub async fn stop(args: &StopArgs) -> i32 {
    let slurm = slurm_client(&args.slurm);
    match list(&slurm).await {
        Ok(jobs) => stop_chosen(&slurm, &jobs, args.which.as_deref()).await,
        Err(e) => {
            eprintln!("vscode-shim: {e}");
            1
        }
    }
}

/// One line of `sessions`: what squeue says of a job, as it says it, and
/// what its keeper says in the Comment (nothing before it wrote one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsJob {
    pub profile: String,
    pub id: u32,
    pub node: String,
    pub state: String,
    pub time_left: String,
    pub attachment: Option<Attachment>,
}

fn slurm_client(programs: &Programs) -> Slurm {
    Slurm::new(programs.clone(), crate::session::SLURM_TIMEOUT)
}

async fn list(slurm: &Slurm) -> Result<Vec<VsJob>, String> {
    let output = slurm.squeue(&["--me", "-h", "-o", "%j|%i|%N|%T|%L|%k"]).await.map_err(|e| e.to_string())?;
    Ok(parse(&output))
}

pub fn parse(output: &str) -> Vec<VsJob> {
    output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.trim().splitn(6, '|').collect();
            let [name, id, node, state, left, comment] = fields[..] else { return None };
            let profile = slurm::profile_of(name)?;
            Some(VsJob {
                profile: profile.to_owned(),
                id: id.parse().ok()?,
                node: if node.is_empty() { "-".into() } else { node.to_owned() },
                state: state.to_owned(),
                time_left: left.to_owned(),
                attachment: Attachment::parse(comment),
            })
        })
        .collect()
}

pub fn table(jobs: &[VsJob], now: u64) -> String {
    let mut rows =
        vec![["PROFILE", "JOB", "NODE", "STATE", "TIME LEFT", "WINDOWS", "GRACE LEFT"].map(String::from)];
    for job in jobs {
        let grace = match job.attachment {
            Some(Attachment { windows: 0, ends_at: Some(at) }) => {
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
            job.attachment.map_or_else(|| "-".into(), |a| a.windows.to_string()),
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

async fn stop_chosen(slurm: &Slurm, jobs: &[VsJob], which: Option<&str>) -> i32 {
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
        match slurm.scancel(job.id).await {
            Ok(()) => println!("stopped job {} (profile {})", job.id, job.profile),
            Err(e) => {
                eprintln!("vscode-shim: job {} was not stopped: {e}", job.id);
                code = 1;
            }
        }
    }
    code
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
        assert_eq!(jobs[0].attachment, Some(Attachment { windows: 2, ends_at: None }));
        assert_eq!(jobs[1].attachment, Some(Attachment { windows: 0, ends_at: Some(1_000_090) }));
        assert_eq!((jobs[2].attachment, jobs[2].node.as_str()), (None, "-"));
        let table = table(&jobs, 1_000_000);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("PROFILE"), "{table}");
        assert!(lines[1].starts_with("gpu") && lines[1].contains(" 2"), "{table}");
        assert!(lines[2].ends_with("1:30"), "grace left: {table}");
        assert_eq!(super::table(&[], 0), "no VS Code jobs\n");
    }
}
