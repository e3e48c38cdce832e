//! Session benchmark: how long a VS Code window takes to open and to go away
//! through vscode-shim, in the lab cluster, and what idle windows cost.
//!
//! For each mode (a profile's first window, which submits a new job; a
//! window joining a running job of its profile; `--no-profile`, a salloc
//! job of its own: the baseline for new jobs), N sessions, interleaved so
//! that whatever else the machine does falls on all modes alike, each
//! measured from the laptop: ssh start → first output on VS Code's stdout,
//! → `listeningOn`; stdin EOF → ssh exits, → the job is gone from squeue.
//! Then many windows of several users at once, left idle: the controller's
//! RPCs (sdiag, by user and by type) and the login node's memory and CPU.
//! Prints tables with min/median/p90 and the issue's targets next to them,
//! and writes `<target>/bench/session.json`.
//!
//! ```text
//! tests/bench-session            # as root: lab up, full run, lab down
//! tests/bench-session --short    # a smoke run (CI): few sessions, few windows
//! ```
//!
//! The binary expects the lab up (`VSCODE_SLURM_LAB`); `tests/bench-session`
//! brings one up with the users and cores the idle part needs.

mod procs;
mod report;
mod window;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vscode_slurm_tests::{wait_until, Lab};

use procs::{Kind, Sdiag, Snapshot};
use report::{Figure, Idle, Mode, Report, MODES};
use window::{remote_command, Stream, Window, Windows, COMMAND_STARTS};

#[derive(Debug, Clone)]
pub struct Config {
    /// Sessions per mode.
    pub sessions: usize,
    /// Idle windows open at once, spread over `users`.
    pub windows: usize,
    pub users: usize,
    pub idle: Duration,
    pub short: bool,
}

impl Config {
    fn full() -> Config {
        Config { sessions: 7, windows: 100, users: 10, idle: Duration::from_secs(60), short: false }
    }

    /// The idle period is one poll interval of the shim's job watch (30 s),
    /// so that every window's RPCs show.
    fn short() -> Config {
        Config { sessions: 3, windows: 10, users: 2, idle: Duration::from_secs(30), short: true }
    }
}

/// A step of a session as a line tells it: the first line of `stream`
/// that `matches`. The shim's lines are its `-vv` log; a change in their
/// wording shows as a missing step ("–"), never as a wrong time.
pub struct Milestone {
    pub label: &'static str,
    stream: Stream,
    matches: fn(&str) -> bool,
}

impl Milestone {
    /// A step told on stderr: the shim's log, ssh's and salloc's messages.
    const fn err(label: &'static str, matches: fn(&str) -> bool) -> Milestone {
        Milestone { label, stream: Stream::Err, matches }
    }

    /// A step told on stdout: what VS Code's side (the client) sees.
    const fn out(label: &'static str, matches: fn(&str) -> bool) -> Milestone {
        Milestone { label, stream: Stream::Out, matches }
    }
}

pub const OPEN_MILESTONES: [Milestone; 9] = [
    Milestone::err("ssh connected, the RemoteCommand starts", |l| l == COMMAND_STARTS),
    Milestone::err("the profile's job found (joining)", |l| l.contains("joining job ")),
    Milestone::err(SBATCH_ANSWERED, |l| l.contains("submitted job ")),
    Milestone::err("salloc started", |l| l.contains("; salloc started")),
    Milestone::err("salloc: allocation granted", |l| l.starts_with("salloc: Granted job allocation")),
    Milestone::err("the launch script's shell runs", |l| l.contains("the launch script's shell runs")),
    Milestone::err("the window's step runs (srun)", |l| l.contains("window started in job")),
    Milestone::out("first output at the laptop", |l| l.starts_with("out: ")),
    Milestone::out("`listeningOn` at the laptop", |l| l.starts_with("result listeningOn=")),
];

pub const CLOSE_MILESTONES: [Milestone; 2] = [
    Milestone::err("salloc relinquishes the allocation", |l| {
        l.starts_with("salloc: Relinquishing job allocation")
    }),
    Milestone::err("the shim's last line", |l| {
        l.starts_with("vscode-shim: ") && l.contains("the client closed the session")
    }),
];
/// Not a line the laptop sees: when slurmctld allocated the new job, put on
/// the laptop's clock as the moment sbatch answered plus the time from the
/// submission to the allocation in slurmctld's log (which has both).
pub const JOB_ALLOCATED: &str = "≈ slurmctld allocates the job (its log)";
pub const SBATCH_ANSWERED: &str = "sbatch answered (job submitted)";
pub const SSH_EXITS: &str = "ssh exits";
pub const JOB_GONE: &str = "job gone from squeue";

/// Windows opened at once in the idle part: sshd drops unauthenticated
/// connections beyond 10 at a time (MaxStartups), and the opening is not
/// what that part measures.
const OPENING_AT_ONCE: usize = 4;
/// Slurm's own pace for jobs to leave once their windows are closed.
const JOBS_GONE_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls squeue on the head node until job `$1` is no longer listed (or is
/// unknown), then says when on the realtime clock this machine shares with
/// the lab. A measurement poll, on purpose: the controller announces no
/// job's end to anyone who did not start it, so "gone from squeue" can
/// only be seen by asking, here as often as squeue can answer (about every
/// 20 ms plus squeue's own time; that is the figure's resolution). It runs
/// as root, so its RPCs are not the windows' users'.
const GONE_POLLER: &str = r#"
job=$1
echo polling
deadline=$((SECONDS + 120))
while ((SECONDS < deadline)); do
    state=$(squeue -h -j "$job" -o %T 2>&1)
    case "$state" in
        "" | *"Invalid job id"*) echo "gone $EPOCHREALTIME"; exit 0 ;;
    esac
    sleep 0.02
done
echo "still there after 120 s: $state"
"#;

fn main() {
    let cfg = match parse_args(std::env::args().skip(1).collect()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("bench-session: {e}");
            eprintln!(
                "usage: bench-session [--short] [--sessions N] [--windows N] [--users N] [--idle SECONDS]"
            );
            std::process::exit(2);
        }
    };
    let lab = Lab::get();
    let users = lab_users(&lab);
    if let Err(e) = prepare(&lab, &users) {
        eprintln!("bench-session: {e}");
        std::process::exit(1);
    }
    let mut report = Report {
        cfg: cfg.clone(),
        started: SystemTime::now(),
        cores: thread::available_parallelism().map_or(1, |n| n.get()),
        load_before: load_average(),
        load_after: None,
        modes: Default::default(),
        idle: None,
    };
    let run = sessions(&lab, &cfg, &mut report).and_then(|()| {
        report.idle = Some(idle(&lab, &cfg, &users)?);
        Ok(())
    });
    report.load_after = load_average();
    print!("{}", report.table());
    let dir = out_dir();
    let path = dir.join("session.json");
    if let Err(e) = fs::create_dir_all(&dir).and_then(|()| fs::write(&path, report.json())) {
        eprintln!("bench-session: cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
    println!("\nwritten: {}", path.display());
    if let Err(e) = run {
        eprintln!("bench-session: {e}");
        std::process::exit(1);
    }
}

fn parse_args(args: Vec<String>) -> Result<Config, String> {
    let mut cfg = if args.iter().any(|a| a == "--short") { Config::short() } else { Config::full() };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut number = |what: &str| -> Result<usize, String> {
            let v = args.next().ok_or_else(|| format!("{what} needs a number"))?;
            v.parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("{what}: not a positive number: {v:?}"))
        };
        match arg.as_str() {
            "--short" => {}
            "--sessions" => cfg.sessions = number("--sessions")?,
            "--windows" => cfg.windows = number("--windows")?,
            "--users" => cfg.users = number("--users")?,
            "--idle" => cfg.idle = Duration::from_secs(number("--idle")? as u64),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(cfg)
}

/// The lab's users (alice, bob, then any `LAB_EXTRA_USERS`), from its passwd.
fn lab_users(lab: &Lab) -> Vec<String> {
    lab.read("etc/passwd")
        .lines()
        .filter(|l| l.contains("(lab user)"))
        .filter_map(|l| l.split(':').next().map(str::to_owned))
        .collect()
}

/// The launch script in every user's laptop home, where the client reads it.
fn prepare(lab: &Lab, users: &[String]) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for user in users {
        let home = lab.dir.join("laptop-home").join(user);
        let meta = fs::metadata(&home).map_err(|e| format!("{}: {e}", home.display()))?;
        let path = home.join(window::TEMPLATE);
        fs::write(&path, window::LAUNCH_SCRIPT)
            .and_then(|()| std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid())))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Removes the pid file through which the launch script finds the server
/// of `user`'s running job: a new job has no server yet, and a number left
/// by an ended job on another node may name a live process there.
fn forget_server(lab: &Lab, user: &str) {
    let dir = lab.dir.join("home").join(user).join(".vscode-server");
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().ends_with(".reuse.pid") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The session modes, interleaved: the window kept open for the joins is
/// bob's, and the modes that start a job are alice's, so that no launch
/// script finds another job's server through the shared home.
fn sessions(lab: &Lab, cfg: &Config, report: &mut Report) -> Result<(), String> {
    let join_args = "--profile bench-join --linger 0 -- --time=60";
    forget_server(lab, "bob");
    eprintln!("sessions: opening the window the joins join (bob, profile bench-join)");
    let mut anchor = Window::start(lab, "bob", &remote_command(join_args));
    let anchor_job = Window::job_id(&anchor.open()?)?;
    for round in 0..cfg.sessions {
        for k in 0..MODES.len() {
            let mode = MODES[(round + k) % MODES.len()];
            eprintln!("sessions: round {}/{}: {}", round + 1, cfg.sessions, mode.name());
            let (user, args) = match mode {
                Mode::NewJob => ("alice", "--profile bench-new --linger 0 -- --time=60"),
                Mode::Join => ("bob", join_args),
                Mode::NoProfile => ("alice", "--no-profile -- --time=60"),
            };
            let expected_job = (mode == Mode::Join).then_some(anchor_job);
            one_session(lab, mode, user, args, expected_job, report)?;
        }
    }
    anchor.close()?;
    wait_jobs_gone(lab, &["bob".to_owned()]);
    Ok(())
}

/// Opens and closes one window, measured.
fn one_session(
    lab: &Lab,
    mode: Mode,
    user: &str,
    args: &str,
    expected_job: Option<u32>,
    report: &mut Report,
) -> Result<(), String> {
    if expected_job.is_none() {
        forget_server(lab, user);
    }
    let mut window = Window::start(lab, user, &remote_command(args));
    let opened = window.open()?;
    let job = Window::job_id(&opened)?;
    if let Some(expected) = expected_job.filter(|&e| e != job) {
        return Err(format!("the joining window got job {job}, not the open window's {expected}"));
    }
    window.watch_ssh()?;
    let mut poller = expected_job.is_none().then(|| {
        let mut poller =
            lab.spawn(None, "head", &["bash", "-c", GONE_POLLER, "gone-poller", &job.to_string()]);
        poller.expect_line("the job-gone poller to start", Duration::from_secs(30), |l| l == "polling");
        poller
    });
    let closed = window.close()?;
    let runs = &mut report.modes[mode.index()];
    runs.push(Figure::FirstOutput, opened.first_output);
    runs.push(Figure::ListeningOn, opened.listening_on);
    let ssh_exit = closed.ssh_exited.duration_since(closed.asked).as_secs_f64();
    runs.push(Figure::SshExit, ssh_exit);
    let mut milestones = Vec::new();
    let start = window.ssh_start.unwrap_or(closed.asked);
    for m in &OPEN_MILESTONES {
        if let Some(line) =
            window.first(|l| l.stream == m.stream && l.at < closed.asked && (m.matches)(&l.text))
        {
            milestones.push((m.label, line.at.duration_since(start).as_secs_f64()));
        }
    }
    let allocation =
        (mode == Mode::NewJob).then(|| submit_to_allocation(&lab.read("log/slurmctld.log"), job));
    let answered = milestones.iter().find(|(label, _)| *label == SBATCH_ANSWERED).map(|&(_, at)| at);
    if let (Some(Some(delay)), Some(answered)) = (allocation, answered) {
        milestones.push((JOB_ALLOCATED, answered + delay));
    }
    for m in &CLOSE_MILESTONES {
        if let Some(line) =
            window.first(|l| l.stream == m.stream && l.at >= closed.asked && (m.matches)(&l.text))
        {
            milestones.push((m.label, line.at.duration_since(closed.asked).as_secs_f64()));
        }
    }
    milestones.push((SSH_EXITS, ssh_exit));
    if let Some(poller) = poller.as_mut() {
        let line = poller.expect_line("the job to leave the queue", Duration::from_secs(130), |l| {
            l.starts_with("gone ") || l.starts_with("still there")
        });
        let gone: f64 = line
            .strip_prefix("gone ")
            .and_then(|t| t.trim().replace(',', ".").parse().ok())
            .ok_or_else(|| format!("job {job} of the {} session: {line}", mode.name()))?;
        let asked = closed.asked_wall.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        runs.push(Figure::JobGone, gone - asked);
        milestones.push((JOB_GONE, gone - asked));
    }
    runs.milestones.push(milestones);
    Ok(())
}

/// Seconds from slurmctld's `_slurm_rpc_submit_batch_job: JobId=N` line to
/// its `sched: Allocate JobId=N` line (`[YYYY-MM-DDTHH:MM:SS.mmm] ...`).
fn submit_to_allocation(log: &str, job: u32) -> Option<f64> {
    let at = |needle: &str| {
        let line = log.lines().find(|l| l.contains(needle))?;
        let clock = line.strip_prefix('[')?.split(']').next()?.split_once('T')?.1;
        let mut parts = clock.split(':').map(|p| p.parse::<f64>().ok());
        Some(parts.next()?? * 3600.0 + parts.next()?? * 60.0 + parts.next()??)
    };
    let submitted = at(&format!("_slurm_rpc_submit_batch_job: JobId={job} "))?;
    let allocated = at(&format!("sched: Allocate JobId={job} "))?;
    // Across midnight the clock starts again.
    Some((allocated - submitted).rem_euclid(86_400.0))
}

/// `windows` windows of the first `cfg.users` users open at once (each
/// user's first window submits the job, the others join it), left idle:
/// the controller's RPCs and the login node's processes before and after.
fn idle(lab: &Lab, cfg: &Config, all_users: &[String]) -> Result<Idle, String> {
    let users: Vec<String> = all_users.iter().take(cfg.users).cloned().collect();
    if users.is_empty() {
        return Err("the lab has no users".into());
    }
    let windows = cfg.windows.max(users.len());
    let args = "--profile bench-idle --linger 0 -- --time=60";
    for user in &users {
        forget_server(lab, user);
    }
    let owners: Vec<String> = (0..windows).map(|i| users[i % users.len()].clone()).collect();
    eprintln!("idle: opening {windows} windows of {} users ({OPENING_AT_ONCE} at a time)", users.len());
    let mut open = open_many(lab, &owners[..users.len()], args)?;
    open.0.append(&mut open_many(lab, &owners[users.len()..], args)?.0);
    let jobs = lab.sh_ok(None, "head", "squeue -h -n vscode:bench-idle -t RUNNING -o %i");
    if jobs.lines().count() != users.len() {
        return Err(format!("expected one running job per user, squeue says:\n{jobs}"));
    }
    // The windows' set-up is done (every client saw its server answer), but
    // the keepers' Comment updates and the last connections' teardown are
    // not announced to anyone: give them a moment to pass.
    thread::sleep(Duration::from_secs(2)); // allow-sleep: nothing announces that the set-up's after-effects are over

    let sdiag = || Sdiag::parse(&lab.sh_ok(None, "head", "sdiag"));
    let rpc_before = sdiag();
    let rpc_from = Instant::now();
    let before = Snapshot::take(&lab.dir, "login")?;
    // One shim per window; srun may be two processes (it forks a helper of its own).
    if before.count(Kind::Shim) != windows || before.count(Kind::Srun) < windows {
        return Err(format!(
            "{} vscode-shim and {} srun processes on login for {windows} windows",
            before.count(Kind::Shim),
            before.count(Kind::Srun)
        ));
    }
    eprintln!("idle: {windows} windows open; nothing happens for {} s", cfg.idle.as_secs());
    thread::sleep(cfg.idle); // allow-sleep: the idle period is the workload; its RPCs and CPU are what is measured
    let after = Snapshot::take(&lab.dir, "login")?;
    let rpc_after = sdiag();
    let idle_secs = rpc_from.elapsed().as_secs_f64();
    let rpc = rpc_before.growth(&rpc_after)?;

    eprintln!("idle: closing the windows, all at once");
    let closing = Instant::now();
    for window in &mut open.0 {
        window.send("close");
    }
    let mut last_closed = closing;
    for window in &mut open.0 {
        let closed = window.wait_line("`closed`", Duration::from_secs(120), |l| {
            l.stream == Stream::Out && l.text.starts_with("closed")
        })?;
        last_closed = last_closed.max(closed);
    }
    drop(open);
    wait_jobs_gone(lab, &users);
    let close_all = (last_closed.duration_since(closing).as_secs_f64(), closing.elapsed().as_secs_f64());
    Ok(Idle {
        windows,
        users,
        users_wanted: cfg.users,
        idle_secs,
        rpc,
        groups: before.idle_until(&after),
        close_all,
        // SAFETY: sysconf takes a name and returns a number.
        clock_ticks_per_second: unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64,
    })
}

/// Opens a window for each of `owners`, a few at a time.
fn open_many(lab: &Lab, owners: &[String], args: &str) -> Result<Windows, String> {
    let next = AtomicUsize::new(0);
    let opened = Mutex::new(Windows(Vec::new()));
    let failed = Mutex::new(None);
    thread::scope(|scope| {
        for _ in 0..OPENING_AT_ONCE.min(owners.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(user) = owners.get(i) else { return };
                if failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                    return;
                }
                let mut window = Window::start(lab, user, &remote_command(args));
                match window.open() {
                    Ok(_) => opened.lock().expect("no thread panicked holding it").0.push(window),
                    Err(e) => *failed.lock().expect("no thread panicked holding it") = Some(e),
                }
            });
        }
    });
    match failed.into_inner().expect("no thread panicked holding it") {
        Some(e) => Err(e),
        None => Ok(opened.into_inner().expect("no thread panicked holding it")),
    }
}

/// Waits until none of `users` has a job in the queue.
fn wait_jobs_gone(lab: &Lab, users: &[String]) {
    let list = users.join(",");
    wait_until(
        &format!("the jobs of {list} to leave the queue"),
        JOBS_GONE_TIMEOUT,
        || lab.sh_ok(None, "head", &format!("squeue -h -u {list} -o '%i %j %T'")),
        |queue| queue.trim().is_empty(),
    );
}

fn load_average() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut v = text.split_whitespace().map(|w| w.parse::<f64>().ok());
    Some([v.next()??, v.next()??, v.next()??])
}

/// `<target>/bench`, from this binary's place (`<target>/release/bench-session`).
fn out_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors().nth(2).map_or_else(|| Path::new("target").to_path_buf(), Path::to_path_buf).join("bench")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocation_delay_comes_from_slurmctlds_log() {
        let log = "\
[2026-12-02T01:22:00.032] _slurm_rpc_submit_batch_job: JobId=4 InitPrio=4294901756 usec=408
[2026-12-02T01:22:00.040] _slurm_rpc_submit_batch_job: JobId=40 InitPrio=4294901756 usec=408
[2026-12-02T01:22:01.980] sched: Allocate JobId=4 NodeList=c1 #CPUs=1 Partition=debug
[2026-12-02T23:59:59.900] _slurm_rpc_submit_batch_job: JobId=5 InitPrio=1 usec=1
[2026-12-03T00:00:00.100] sched: Allocate JobId=5 NodeList=c1 #CPUs=1 Partition=debug
";
        let delay = submit_to_allocation(log, 4).unwrap();
        assert!((delay - 1.948).abs() < 1e-9, "{delay}");
        let delay = submit_to_allocation(log, 5).unwrap();
        assert!((delay - 0.2).abs() < 1e-6, "{delay}");
        assert_eq!(submit_to_allocation(log, 40), None, "not allocated");
    }
}
