//! `vscode-shim sessions` and `vscode-shim stop`: the user's vscode jobs as
//! the scheduler knows them (Slurm, or an HTCondor pool), from any login node.

use clap::Args;
use vscode_slurm_common::htcondor::{Condor, Programs as CondorPrograms};
use vscode_slurm_common::slurm::{Programs, Slurm};
use vscode_slurm_common::unix_now;
use vscode_slurm_protocol::htcondor::{self as condor, JobStatus};
use vscode_slurm_protocol::slurm::{self, Attachment};

use crate::scheduler::{self, Scheduler};

#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub jobs: JobsArgs,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// A profile name or a job id, as `vscode-shim sessions` shows them.
    which: Option<String>,

    #[command(flatten)]
    pub jobs: JobsArgs,
}

/// Where the jobs are asked for.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// The scheduler to ask (default: as for a session).
    #[arg(long, value_enum, value_name = "NAME")]
    pub scheduler: Option<Scheduler>,

    #[command(flatten)]
    pub slurm: Programs,

    #[command(flatten)]
    pub condor: CondorPrograms,
}

/// The scheduler's client, chosen as a session chooses it.
enum Backend {
    Slurm(Slurm),
    HtCondor(Condor),
}

impl Backend {
    fn new(args: &JobsArgs) -> Result<Backend, String> {
        let timeout = crate::session::SLURM_TIMEOUT;
        Ok(match scheduler::choose(args.scheduler)? {
            Scheduler::Slurm => Backend::Slurm(Slurm::new(args.slurm.clone(), timeout)),
            Scheduler::Htcondor => Backend::HtCondor(Condor::new(args.condor.clone(), timeout)),
        })
    }

    async fn list(&self) -> Result<Vec<VsJob>, String> {
        match self {
            Backend::Slurm(slurm) => list(slurm).await,
            Backend::HtCondor(condor) => {
                let constraint = condor::sessions_constraint(&crate::htcondor::user_name()?);
                let attrs = [
                    condor::PROFILE_ATTR,
                    "ClusterId",
                    "RemoteHost",
                    "JobStatus",
                    "AllowedJobDuration",
                    "JobCurrentStartDate",
                    condor::WINDOWS_ATTR,
                ];
                let mut query = vec!["-constraint", &constraint, "-af:t"];
                query.extend(attrs);
                let output = condor.q(&query).await.map_err(|e| e.to_string())?;
                Ok(parse_condor(&output, unix_now()))
            }
        }
    }

    async fn end(&self, id: u32) -> Result<(), String> {
        match self {
            Backend::Slurm(slurm) => slurm.scancel(id).await.map_err(|e| e.to_string()),
            Backend::HtCondor(condor) => condor.rm(id, "vscode-shim stop").await.map_err(|e| e.to_string()),
        }
    }
}

/// The backend, or `None` once the reason is on stderr (an unusable site file).
fn backend_or_say(args: &JobsArgs) -> Option<Backend> {
    Backend::new(args).map_err(|e| eprintln!("vscode-shim: {e}")).ok()
}

/// `vscode-shim sessions`; returns the exit code.
pub async fn sessions(args: &SessionsArgs) -> i32 {
    let Some(backend) = backend_or_say(&args.jobs) else { return 1 };
    match backend.list().await {
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
    let Some(backend) = backend_or_say(&args.jobs) else { return 1 };
    match backend.list().await {
        Ok(jobs) => stop_chosen(&backend, &jobs, args.which.as_deref()).await,
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

/// `condor_q -af:t` of the user's editor jobs, in the table's terms: the
/// slot's host as the node, HTCondor's state words, the time left where the
/// job has a limit (`allowed_job_duration`).
pub fn parse_condor(output: &str, now: u64) -> Vec<VsJob> {
    output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.trim_end_matches(['\n', '\r']).split('\t').collect();
            let [profile, id, slot, status, allowed, started, windows] = fields[..] else { return None };
            let status = JobStatus::from_code(status)?;
            let node = slot.split_once('@').map_or("-", |(_, host)| host.split('.').next().unwrap_or(host));
            let time_left = match (allowed.parse::<u64>(), started.parse::<u64>()) {
                (Ok(allowed), Ok(started)) if status == JobStatus::Running => crate::job::format_waited(
                    std::time::Duration::from_secs(started.saturating_add(allowed).saturating_sub(now)),
                ),
                _ => "-".to_owned(),
            };
            Some(VsJob {
                profile: profile.to_owned(),
                id: id.parse().ok()?,
                node: node.to_owned(),
                state: status.word().to_uppercase(),
                time_left,
                attachment: Attachment::parse(windows),
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

async fn stop_chosen(backend: &Backend, jobs: &[VsJob], which: Option<&str>) -> i32 {
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
        match backend.end(job.id).await {
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
    fn editor_jobs_are_listed_like_slurm_jobs() {
        let output = "gpu\t12\tslot1_1@c1.lab\t2\t3600\t1000000\tvscode:windows=1\n\
                      default\t13\tundefined\t1\tundefined\tundefined\tundefined\n";
        let jobs = parse_condor(output, 1_000_600);
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            (jobs[0].node.as_str(), jobs[0].state.as_str(), jobs[0].time_left.as_str()),
            ("c1", "RUNNING", "50:00")
        );
        assert_eq!(jobs[0].attachment, Some(Attachment { windows: 1, ends_at: None }));
        assert_eq!((jobs[1].node.as_str(), jobs[1].state.as_str(), jobs[1].attachment), ("-", "IDLE", None));
    }

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
