//! What the benchmark found: per mode and figure min/median/p90, the issue's
//! targets next to them, where the time goes (the shim's log lines as they
//! arrived), the idle windows' RPCs and footprint; printed as tables and
//! written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use vscode_slurm_tests::json_string;

use crate::procs::{Group, Sdiag, KINDS};
use crate::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A profile's first window: no job exists, the shim submits one with sbatch.
    NewJob,
    /// A second window joining the profile's running job.
    Join,
    /// `--no-profile`: a salloc job of the window's own.
    NoProfile,
}

pub const MODES: [Mode; 3] = [Mode::NewJob, Mode::Join, Mode::NoProfile];

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::NewJob => "new job",
            Mode::Join => "join",
            Mode::NoProfile => "--no-profile",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Mode::NewJob => "new_job",
            Mode::Join => "join",
            Mode::NoProfile => "no_profile",
        }
    }

    pub fn index(self) -> usize {
        MODES.iter().position(|&m| m == self).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    FirstOutput,
    ListeningOn,
    SshExit,
    JobGone,
}

pub const FIGURES: [Figure; 4] = [Figure::FirstOutput, Figure::ListeningOn, Figure::SshExit, Figure::JobGone];

impl Figure {
    pub fn label(self) -> &'static str {
        match self {
            Figure::FirstOutput => "ssh start → first output",
            Figure::ListeningOn => "ssh start → `listeningOn`",
            Figure::SshExit => "stdin EOF → ssh exits",
            Figure::JobGone => "stdin EOF → job gone from squeue",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Figure::FirstOutput => "first_output_s",
            Figure::ListeningOn => "listening_on_s",
            Figure::SshExit => "ssh_exit_s",
            Figure::JobGone => "job_gone_s",
        }
    }

    /// A joining window leaves the job to the window kept open.
    pub fn applies(self, mode: Mode) -> bool {
        !(self == Figure::JobGone && mode == Mode::Join)
    }

    fn index(self) -> usize {
        FIGURES.iter().position(|&f| f == self).unwrap_or(0)
    }
}

/// One mode's sessions: every sample of every figure, and each session's
/// milestones (seconds from ssh's start when opening, from stdin's EOF
/// when closing).
#[derive(Debug, Default)]
pub struct ModeRuns {
    pub samples: [Vec<f64>; 4],
    pub milestones: Vec<Vec<(&'static str, f64)>>,
}

impl ModeRuns {
    pub fn push(&mut self, figure: Figure, secs: f64) {
        self.samples[figure.index()].push(secs);
    }

    pub fn stats(&self, figure: Figure) -> Option<Stats> {
        Stats::of(&self.samples[figure.index()])
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub p90: f64,
}

impl Stats {
    /// p90 is the nearest rank: with 7 samples, the largest.
    pub fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        let rank = (0.9 * n as f64).ceil() as usize;
        Some(Stats { min: v[0], median, p90: v[rank.clamp(1, n) - 1] })
    }
}

/// The open windows' cost while nobody uses them.
#[derive(Debug)]
pub struct Idle {
    pub windows: usize,
    pub users: Vec<String>,
    /// How many users the configuration asked for (the lab may have fewer).
    pub users_wanted: usize,
    pub idle_secs: f64,
    /// sdiag's counters' growth over the idle period.
    pub rpc: Sdiag,
    /// The login node's per-window processes: memory at the start of the
    /// idle period, CPU over it.
    pub groups: BTreeMap<crate::procs::Kind, Group>,
    pub clock_ticks_per_second: f64,
    /// Closing every window at once (stdin EOF to all): seconds until the
    /// last client saw ssh exit, and until the users' jobs were gone from
    /// squeue (looked at every 100 ms).
    pub close_all: (f64, f64),
}

impl Idle {
    /// RPCs of the windows' users over the idle period.
    pub fn window_rpcs(&self) -> u64 {
        self.users.iter().filter_map(|u| self.rpc.by_user.get(u)).sum()
    }

    pub fn per_window_minute(&self) -> f64 {
        self.window_rpcs() as f64 / self.windows.max(1) as f64 / (self.idle_secs / 60.0)
    }
}

pub struct Report {
    pub cfg: Config,
    pub started: SystemTime,
    pub cores: usize,
    pub load_before: Option<[f64; 3]>,
    pub load_after: Option<[f64; 3]>,
    pub modes: [ModeRuns; 3],
    pub idle: Option<Idle>,
}

pub struct Verdict {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// The milestones in the order the "where the time goes" table lists
/// them: the set-up's (from ssh's start), then the teardown's (from stdin's
/// EOF); see [`crate::OPEN_MILESTONES`] and [`crate::CLOSE_MILESTONES`].
fn milestone_order() -> (Vec<&'static str>, Vec<&'static str>) {
    let mut open = Vec::new();
    for m in &crate::OPEN_MILESTONES {
        open.push(m.label);
        if m.label == crate::SBATCH_ANSWERED {
            open.push(crate::JOB_ALLOCATED);
        }
    }
    let mut close: Vec<&'static str> = crate::CLOSE_MILESTONES.iter().map(|m| m.label).collect();
    close.extend([crate::SSH_EXITS, crate::JOB_GONE]);
    (open, close)
}

fn secs(v: f64) -> String {
    format!("{v:.3} s")
}

fn load(l: Option<[f64; 3]>) -> String {
    l.map_or_else(|| "n/a".to_owned(), |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
}

impl Report {
    pub fn runs(&self, mode: Mode) -> &ModeRuns {
        &self.modes[mode.index()]
    }

    fn median(&self, mode: Mode, figure: Figure) -> Option<f64> {
        self.runs(mode).stats(figure).map(|s| s.median)
    }

    /// The targets, against this run's figures. Printed and
    /// compared, never enforced: the benchmark measures, it does not gate.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut out = Vec::new();
        let new = self.runs(Mode::NewJob).stats(Figure::ListeningOn);
        let baseline = self.median(Mode::NoProfile, Figure::ListeningOn);
        out.push(Verdict {
            target: "new job: `listeningOn` median ≤ the --no-profile median (same run)".into(),
            measured: match (new, baseline) {
                (Some(n), Some(b)) => format!("{} vs {} ({:.2}×)", secs(n.median), secs(b), n.median / b),
                _ => "n/a".into(),
            },
            met: new.zip(baseline).map(|(n, b)| n.median <= b),
        });
        out.push(Verdict {
            target: "new job: `listeningOn` p90 ≤ 1.5× its median".into(),
            measured: new.map_or_else(
                || "n/a".into(),
                |n| format!("p90 {} = {:.2}× the median", secs(n.p90), n.p90 / n.median),
            ),
            met: new.map(|n| n.p90 <= 1.5 * n.median),
        });
        let join = self.median(Mode::Join, Figure::ListeningOn);
        out.push(Verdict {
            target: "join: `listeningOn` median ≤ 0.2 s".into(),
            measured: join.map_or_else(|| "n/a".into(), secs),
            met: join.map(|j| j <= 0.2),
        });
        // After stdin's EOF: ssh exits in every mode, and the job goes in
        // the modes that started one.
        let exits = MODES.map(|mode| (mode, Figure::SshExit, "ssh exits ≤ 0.1 s", 0.1));
        let gone = [Mode::NewJob, Mode::NoProfile]
            .map(|mode| (mode, Figure::JobGone, "job gone ≤ 0.5 s, linger 0", 0.5));
        for (mode, figure, what, bound) in exits.into_iter().chain(gone) {
            let stats = self.runs(mode).stats(figure);
            out.push(Verdict {
                target: format!("{}: stdin EOF → {what} (median)", mode.name()),
                measured: stats
                    .map_or_else(|| "n/a".into(), |s| format!("{} (p90 {})", secs(s.median), secs(s.p90))),
                met: stats.map(|s| s.median <= bound),
            });
        }
        if let Some(idle) = &self.idle {
            let rate = idle.per_window_minute();
            out.push(Verdict {
                target: "idle: ≤ 1 controller RPC per minute per idle window".into(),
                measured: format!("{rate:.2} per minute per window"),
                met: Some(rate <= 1.0),
            });
        }
        out
    }

    pub fn table(&self) -> String {
        let cfg = &self.cfg;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\nsession benchmark{}: {} sessions per mode, interleaved; {} idle windows of {} users for {} s",
            if cfg.short { " (SHORT: a smoke run, not the issue's sizes)" } else { "" },
            cfg.sessions,
            cfg.windows,
            cfg.users,
            cfg.idle.as_secs()
        );
        let _ = writeln!(
            t,
            "machine: {} cores; load average (1/5/15 min) {} at the start, {} at the end",
            self.cores,
            load(self.load_before),
            load(self.load_after)
        );
        let _ = writeln!(t, "\n## set-up and teardown, seconds (min / median / p90 of {})\n", cfg.sessions);
        let _ = writeln!(t, "| mode | figure | min | median | p90 |");
        let _ = writeln!(t, "|---|---|---|---|---|");
        for mode in MODES {
            for figure in FIGURES {
                let cells = match self.runs(mode).stats(figure) {
                    _ if !figure.applies(mode) => {
                        "n/a (the job stays for the window kept open) | n/a | n/a".to_owned()
                    }
                    Some(s) => format!("{:.3} | {:.3} | {:.3}", s.min, s.median, s.p90),
                    None => "n/a | n/a | n/a".to_owned(),
                };
                let _ = writeln!(t, "| {} | {} | {cells} |", mode.name(), figure.label());
            }
        }
        let _ = writeln!(t, "\n## targets (compared, not enforced)\n");
        let _ = writeln!(t, "| target | measured | verdict |");
        let _ = writeln!(t, "|---|---|---|");
        for v in self.verdicts() {
            let verdict = match v.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "not measured",
            };
            let _ = writeln!(t, "| {} | {} | {verdict} |", v.target, v.measured);
        }
        self.milestone_table(&mut t);
        if let Some(idle) = &self.idle {
            self.idle_tables(&mut t, idle);
        }
        t
    }

    /// Median time of each milestone per mode, from ssh's start (set-up)
    /// or stdin's EOF (teardown), as its line arrived at the laptop.
    fn milestone_table(&self, t: &mut String) {
        let _ = writeln!(
            t,
            "\n## where the time goes (median s from ssh start, then from stdin EOF; sessions that had the step)\n"
        );
        let _ = writeln!(t, "| step | new job | join | --no-profile |");
        let _ = writeln!(t, "|---|---|---|---|");
        let (open, close) = milestone_order();
        for (i, label) in open.iter().chain(close.iter()).enumerate() {
            if i == open.len() {
                let _ = writeln!(t, "| *close (stdin EOF)* | 0 | 0 | 0 |");
            }
            let cells: Vec<String> = MODES
                .iter()
                .map(|&m| {
                    milestone_median(self.runs(m), label)
                        .map_or_else(|| "–".to_owned(), |s| format!("{s:.3}"))
                })
                .collect();
            let _ = writeln!(t, "| {label} | {} |", cells.join(" | "));
        }
    }

    fn idle_tables(&self, t: &mut String, idle: &Idle) {
        let fewer = if idle.users.len() < idle.users_wanted {
            format!(" (the lab has {} of the {} users asked for)", idle.users.len(), idle.users_wanted)
        } else {
            String::new()
        };
        let _ = writeln!(
            t,
            "\n## idle: {} windows (new job, then joins) of {} users{fewer}, {:.0} s with nothing happening\n",
            idle.windows,
            idle.users.len(),
            idle.idle_secs
        );
        let _ =
            writeln!(t, "| controller RPCs (sdiag) | over the idle period | per minute per idle window |");
        let _ = writeln!(t, "|---|---|---|");
        let minutes = idle.idle_secs / 60.0;
        let per = |n: u64| n as f64 / idle.windows.max(1) as f64 / minutes;
        let _ = writeln!(
            t,
            "| the windows' users ({}) | {} | {:.2} |",
            idle.users.join(", "),
            idle.window_rpcs(),
            idle.per_window_minute()
        );
        for (user, &n) in &idle.rpc.by_user {
            if !idle.users.contains(user) {
                let _ = writeln!(t, "| {user} (not a window's user) | {n} | ({:.2}) |", per(n));
            }
        }
        let _ = writeln!(
            t,
            "\nclosing all {} windows at once: the last ssh exited after {:.3} s, the jobs were gone after {:.3} s",
            idle.windows, idle.close_all.0, idle.close_all.1
        );
        let _ = writeln!(t, "\n| RPC type that grew (all users) | count |");
        let _ = writeln!(t, "|---|---|");
        if idle.rpc.by_type.is_empty() {
            let _ = writeln!(t, "| (none) | 0 |");
        }
        for (name, n) in &idle.rpc.by_type {
            let note = if name == "REQUEST_STATS_INFO" { " (the benchmark's own sdiag)" } else { "" };
            let _ = writeln!(t, "| {name}{note} | {n} |");
        }
        let _ = writeln!(t, "\n| login node, {} idle windows | processes | RSS total | RSS per window | PSS total | CPU ticks over {:.0} s |", idle.windows, idle.idle_secs);
        let _ = writeln!(t, "|---|---|---|---|---|---|");
        let mut total = Group::default();
        for kind in KINDS {
            let g = idle.groups.get(&kind).cloned().unwrap_or_default();
            let vanished =
                if g.vanished > 0 { format!(" ({} exited meanwhile)", g.vanished) } else { String::new() };
            let _ = writeln!(
                t,
                "| {} | {} | {:.1} MiB | {:.0} KiB | {:.1} MiB | {}{vanished} |",
                kind.label(),
                g.processes,
                g.rss_kib as f64 / 1024.0,
                g.rss_kib as f64 / idle.windows.max(1) as f64,
                g.pss_kib as f64 / 1024.0,
                g.idle_ticks
            );
            total.processes += g.processes;
            total.rss_kib += g.rss_kib;
            total.pss_kib += g.pss_kib;
            total.idle_ticks += g.idle_ticks;
        }
        let _ = writeln!(
            t,
            "| **all of them** | {} | {:.1} MiB | {:.0} KiB | {:.1} MiB | {} ({:.0} ticks per second) |",
            total.processes,
            total.rss_kib as f64 / 1024.0,
            total.rss_kib as f64 / idle.windows.max(1) as f64,
            total.pss_kib as f64 / 1024.0,
            total.idle_ticks,
            idle.clock_ticks_per_second
        );
    }

    pub fn json(&self) -> String {
        let cfg = &self.cfg;
        let num = |v: Option<f64>| {
            v.filter(|x| x.is_finite()).map_or_else(|| "null".to_owned(), |x| format!("{x:.6}"))
        };
        let loadj = |l: Option<[f64; 3]>| l.map_or_else(|| "null".to_owned(), |l| format!("{l:?}"));
        let started = self.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut j = String::new();
        let _ = write!(
            j,
            "{{\n  \"started_unix\": {started},\n  \"cores\": {},\n  \"load_average_start\": {},\n  \
             \"load_average_end\": {},\n  \"short\": {},\n  \"config\": {{\"sessions_per_mode\": {}, \
             \"idle_windows\": {}, \"idle_users\": {}, \"idle_seconds\": {}}},\n  \"modes\": {{",
            self.cores,
            loadj(self.load_before),
            loadj(self.load_after),
            cfg.short,
            cfg.sessions,
            cfg.windows,
            cfg.users,
            cfg.idle.as_secs()
        );
        for (i, mode) in MODES.iter().enumerate() {
            let _ = write!(j, "{}\n    {}: {{", if i > 0 { "," } else { "" }, json_string(mode.key()));
            for (k, figure) in FIGURES.iter().enumerate() {
                let sep = if k > 0 { ", " } else { "" };
                let stats = self.runs(*mode).stats(*figure).filter(|_| figure.applies(*mode));
                match stats {
                    Some(s) => {
                        let _ = write!(
                            j,
                            "{sep}{}: {{\"min\": {}, \"median\": {}, \"p90\": {}, \"samples\": [{}]}}",
                            json_string(figure.key()),
                            num(Some(s.min)),
                            num(Some(s.median)),
                            num(Some(s.p90)),
                            self.runs(*mode).samples[figure.index()]
                                .iter()
                                .map(|&x| num(Some(x)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    None => {
                        let _ = write!(j, "{sep}{}: null", json_string(figure.key()));
                    }
                }
            }
            let (open, close) = milestone_order();
            let milestones: Vec<String> = open
                .iter()
                .chain(close.iter())
                .filter_map(|label| {
                    milestone_median(self.runs(*mode), label)
                        .map(|s| format!("{}: {}", json_string(label), num(Some(s))))
                })
                .collect();
            let _ = write!(j, ", \"milestones_median_s\": {{{}}}}}", milestones.join(", "));
        }
        let _ = write!(j, "\n  }},\n  \"targets\": [");
        for (i, v) in self.verdicts().iter().enumerate() {
            let _ = write!(
                j,
                "{}\n    {{\"target\": {}, \"measured\": {}, \"met\": {}}}",
                if i > 0 { "," } else { "" },
                json_string(&v.target),
                json_string(&v.measured),
                v.met.map_or_else(|| "null".to_owned(), |m| m.to_string())
            );
        }
        let _ = write!(j, "\n  ]");
        match &self.idle {
            Some(idle) => {
                let map = |m: &BTreeMap<String, u64>| {
                    m.iter().map(|(k, v)| format!("{}: {v}", json_string(k))).collect::<Vec<_>>().join(", ")
                };
                let users: Vec<String> = idle.users.iter().map(|u| json_string(u)).collect();
                let _ = write!(
                    j,
                    ",\n  \"idle\": {{\"windows\": {}, \"users\": [{}], \"idle_seconds\": {}, \
                     \"window_user_rpcs\": {}, \"rpcs_per_window_per_minute\": {}, \"rpcs_by_user\": {{{}}}, \
                     \"rpc_types_grown\": {{{}}}, \"close_all_last_ssh_exit_s\": {}, \"close_all_jobs_gone_s\": {}}},\n  \"footprint\": {{\"windows\": {}, \"clock_ticks_per_second\": {}",
                    idle.windows,
                    users.join(", "),
                    num(Some(idle.idle_secs)),
                    idle.window_rpcs(),
                    num(Some(idle.per_window_minute())),
                    map(&idle.rpc.by_user),
                    map(&idle.rpc.by_type),
                    num(Some(idle.close_all.0)),
                    num(Some(idle.close_all.1)),
                    idle.windows,
                    num(Some(idle.clock_ticks_per_second))
                );
                for kind in KINDS {
                    let g = idle.groups.get(&kind).cloned().unwrap_or_default();
                    let _ = write!(
                        j,
                        ", {}: {{\"processes\": {}, \"rss_kib\": {}, \"pss_kib\": {}, \"idle_ticks\": {}, \"exited_while_idle\": {}}}",
                        json_string(kind.key()),
                        g.processes,
                        g.rss_kib,
                        g.pss_kib,
                        g.idle_ticks,
                        g.vanished
                    );
                }
                let _ = write!(j, "}}");
            }
            None => {
                let _ = write!(j, ",\n  \"idle\": null,\n  \"footprint\": null");
            }
        }
        let _ = writeln!(j, "\n}}");
        j
    }
}

/// The median of one milestone over the sessions that had it.
fn milestone_median(runs: &ModeRuns, label: &str) -> Option<f64> {
    let values: Vec<f64> =
        runs.milestones.iter().filter_map(|m| m.iter().find(|(l, _)| *l == label).map(|(_, s)| *s)).collect();
    Stats::of(&values).map(|s| s.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_min_median_and_nearest_rank_p90() {
        let s = Stats::of(&[0.5, 0.1, 0.3, 0.2, 0.4, 0.7, 0.6]).unwrap();
        assert_eq!((s.min, s.median, s.p90), (0.1, 0.4, 0.7));
        let s = Stats::of(&[1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.p90), (1.5, 2.0));
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Stats::of(&ten).unwrap().p90, 9.0);
        assert!(Stats::of(&[]).is_none());
    }
}
