//! `vscode-shim doctor`: checks on the login node what a session needs, and
//! says how to fix what is missing.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use vscode_slurm_protocol::{env, htcondor as condor, slurm};

use crate::scheduler::{self, Scheduler};

/// Checks on the login node that VS Code sessions in jobs can work, and prints fixes.
///
/// Checks that the Slurm commands and vscode-job-helper are on PATH, that
/// salloc knows --vscode (the spank_vscode plugin is loaded), and that a
/// tiny `salloc --vscode` job runs the helper on a compute node with the
/// plugin's environment. On an HTCondor access point (--scheduler htcondor,
/// or the site's default): HTCondor's commands, the helper, the schedd, and
/// a tiny job running the helper at the same path on an execute point.
/// Exit status: 0 if every check is ok, 1 otherwise.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The helper program, as vscode-shim's --helper.
    #[arg(long, value_name = "PATH", default_value = "vscode-job-helper")]
    pub helper: PathBuf,

    /// The salloc program.
    #[arg(long, value_name = "PATH", default_value = "salloc")]
    pub salloc: PathBuf,

    /// How long the test job may take, queueing included.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub wait: u64,

    /// Skip the test job (only the checks on this node).
    #[arg(long)]
    pub no_job: bool,

    /// The scheduler to check (default: as for a session).
    #[arg(long, value_enum, value_name = "NAME")]
    pub scheduler: Option<Scheduler>,

    /// Arguments for the test job's salloc, e.g. `--partition=debug`; on
    /// HTCondor, submit commands, e.g. 'request_memory = 100'.
    #[arg(last = true, value_name = "SALLOC_ARGS")]
    pub salloc_args: Vec<String>,
}

struct Check {
    name: String,
    result: Result<String, (String, String)>,
}

impl Check {
    fn print(&self) {
        match &self.result {
            Ok(detail) => println!("ok    {}: {detail}", self.name),
            Err((why, fix)) => {
                println!("FAIL  {}: {why}", self.name);
                println!("      fix: {fix}");
            }
        }
    }
}

/// Runs `doctor`; returns the exit code.
pub fn run(args: &DoctorArgs) -> i32 {
    let mut failed = 0;
    let mut report = |check: Check| {
        check.print();
        if check.result.is_err() {
            failed += 1;
        }
    };
    match scheduler::choose(args.scheduler) {
        Err(e) => report(Check { name: "scheduler".to_owned(), result: Err((e, "see above".to_owned())) }),
        Ok(Scheduler::Htcondor) => check_htcondor(args, &mut report),
        Ok(Scheduler::Slurm) => check_slurm(args, &mut report),
    }
    if failed == 0 {
        println!("all checks ok");
        0
    } else {
        println!("{failed} check(s) failed");
        1
    }
}

fn check_slurm(args: &DoctorArgs, report: &mut dyn FnMut(Check)) {
    for program in ["salloc", "srun", "squeue", "scancel"] {
        let program = if program == "salloc" { args.salloc.as_os_str() } else { OsStr::new(program) };
        report(found(program, "install the Slurm client commands on this login node, or add them to PATH"));
    }
    report(found(
        args.helper.as_os_str(),
        "install the vscode-slurm package for this Slurm release (it puts vscode-job-helper in /usr/bin) on login and compute nodes",
    ));
    let plugin = plugin_loaded(&args.salloc);
    let plugin_ok = plugin.result.is_ok();
    report(plugin);
    if args.no_job {
        println!("skip  helper in a job: --no-job");
    } else if !plugin_ok {
        println!("skip  helper in a job: needs the plugin");
    } else {
        report(helper_in_job(args));
    }
}

/// On an HTCondor access point: the client commands, the helper, the
/// schedd answering, and a tiny job running the helper on an execute point.
fn check_htcondor(args: &DoctorArgs, report: &mut dyn FnMut(Check)) {
    for program in ["condor_submit", "condor_q", "condor_rm", "condor_ssh_to_job"] {
        report(found(
            OsStr::new(program),
            "install HTCondor's client commands on this access point, or add them to PATH",
        ));
    }
    let helper = found(
        args.helper.as_os_str(),
        "install the vscode-slurm package (it puts vscode-job-helper in /usr/bin) on access and execute points",
    );
    let helper_path = helper.result.as_ref().ok().map(PathBuf::from);
    report(helper);
    let schedd = match run_quietly("condor_q", &["-totals"]) {
        Ok(_) => Ok("condor_q answers".to_owned()),
        Err(e) => {
            Err((e, "check that this access point's schedd runs and that you may submit to it".to_owned()))
        }
    };
    let schedd_ok = schedd.is_ok();
    report(Check { name: "schedd answers".to_owned(), result: schedd });
    match helper_path {
        _ if args.no_job => println!("skip  helper in a job: --no-job"),
        _ if !schedd_ok => println!("skip  helper in a job: needs the schedd"),
        None => println!("skip  helper in a job: needs the helper"),
        Some(path) => report(helper_in_condor_job(args, &path)),
    }
}

fn run_quietly(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{program} failed: {}",
            stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim()
        ))
    }
}

/// Submits `HELPER --version` as the editor job would run the keeper (same
/// path, no file transfer) and waits for its exit code.
fn helper_in_condor_job(args: &DoctorArgs, helper: &Path) -> Check {
    let name = "helper in a job".to_owned();
    let fail = |why: String, fix: &str| Check { name: name.clone(), result: Err((why, fix.to_owned())) };
    let mut description = format!(
        "universe = vanilla\nexecutable = {}\ntransfer_executable = false\narguments = --version\n\
         output = /dev/null\nerror = /dev/null\nbatch_name = vscode-doctor\n",
        helper.display()
    );
    for arg in &args.salloc_args {
        match condor::check_submit_command(arg) {
            Ok((key, value)) => description.push_str(&format!("{key} = {value}\n")),
            Err(e) => {
                return fail(
                    e,
                    "give submit commands after --, one per argument, e.g. 'request_memory = 100'",
                )
            }
        }
    }
    description.push_str("queue\n");
    let submitted = Command::new("condor_submit")
        .args(["-terse", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write;
                stdin.write_all(description.as_bytes())?;
            }
            child.wait_with_output()
        });
    let id = match submitted {
        Ok(out) if out.status.success() => {
            match vscode_slurm_common::htcondor::parse_terse(&String::from_utf8_lossy(&out.stdout)) {
                Some(id) => id.to_string(),
                None => return fail("condor_submit named no job".to_owned(), "see condor_submit's output"),
            }
        }
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let why = stderr
                .lines()
                .find(|l| l.contains("ERROR"))
                .unwrap_or("condor_submit failed")
                .trim()
                .to_owned();
            return fail(why, "check the submit commands after --");
        }
        Err(e) => return fail(format!("cannot run condor_submit: {e}"), "see above"),
    };
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    loop {
        let state = run_quietly("condor_q", &[&id, "-af:t", "JobStatus", "HoldReason"]).unwrap_or_default();
        let mut fields = state.trim_end().split('\t');
        match (fields.next(), fields.next()) {
            (Some("5"), reason) => {
                let _ = run_quietly("condor_rm", &[&id]);
                return fail(
                    format!("the test job {id} was held: {}", reason.unwrap_or("no reason given")),
                    &format!("install vscode-job-helper at {} on every execute point", helper.display()),
                );
            }
            (Some(""), _) | (None, _) => break,
            _ if Instant::now() >= deadline => {
                let _ = run_quietly("condor_rm", &[&id]);
                return fail(
                    format!("the test job {id} did not finish within {}s (still idle?)", args.wait),
                    "retry with a larger --wait, or ask for less after --",
                );
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    let ended = run_quietly("condor_history", &[&id, "-limit", "1", "-af", "ExitCode", "LastRemoteHost"])
        .unwrap_or_default();
    let mut words = ended.split_whitespace();
    match (words.next(), words.next()) {
        (Some("0"), Some(slot)) => Check { name, result: Ok(format!("ran in {slot}")) },
        (code, _) => fail(
            format!("the test job {id} ended with exit code {}", code.unwrap_or("unknown")),
            &format!("check that {} runs on the execute points", helper.display()),
        ),
    }
}

fn found(program: &OsStr, fix: &str) -> Check {
    let name = format!("{} found", Path::new(program).display());
    let missing =
        if Path::new(program).components().count() > 1 { "not an executable file" } else { "not on PATH" };
    let result = match which(program) {
        Some(path) => Ok(path.display().to_string()),
        None => Err((missing.to_owned(), fix.to_owned())),
    };
    Check { name, result }
}

/// Where a program would be run from: itself if it has a slash, else PATH.
fn which(program: &OsStr) -> Option<PathBuf> {
    let path = Path::new(program);
    if path.components().count() > 1 {
        return is_executable(path).then(|| path.to_path_buf());
    }
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs).map(|dir| dir.join(program)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn plugin_loaded(salloc: &Path) -> Check {
    let name = "plugin loaded".to_owned();
    let package = match slurm_release(salloc) {
        Some(release) => format!("vscode-slurm-slurm{release}"),
        None => "vscode-slurm-slurmXX.YY for this Slurm release".to_owned(),
    };
    let fix = format!(
        "add `required /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_vscode.so` (rpm: /usr/lib64/slurm/) to \
         plugstack.conf or plugstack.conf.d/vscode.conf on every node, from the package {package} \
         (see spank_vscode(8))"
    );
    let result = match Command::new(salloc).arg("--help").stdin(Stdio::null()).stderr(Stdio::piped()).output()
    {
        Err(e) => Err((format!("cannot run {} --help: {e}", salloc.display()), fix)),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let errors = String::from_utf8_lossy(&out.stderr);
            if text.lines().any(|l| l.trim_start().starts_with(&slurm::option_flag())) {
                Ok("salloc --help lists --vscode".to_owned())
            } else if let Some(line) = errors.lines().find(|l| l.contains("Incompatible Slurm plugin")) {
                // Slurm: "plugin_load_from_file: Incompatible Slurm plugin PATH version (23.11.5)".
                Err((
                    format!("the plugin is built for another Slurm release ({})", line.trim()),
                    format!("install {package} (built for this Slurm) on every node instead"),
                ))
            } else if let Some(line) = errors.lines().find(|l| l.contains("vscode") || l.contains("spank")) {
                Err((format!("salloc --help does not list --vscode ({})", line.trim()), fix))
            } else {
                Err(("salloc --help does not list --vscode".to_owned(), fix))
            }
        }
    };
    Check { name, result }
}

/// This Slurm's major.minor from `sinfo --version` ("slurm-wlm 22.05.8"),
/// which loads no SPANK plugin and so answers even when the plugstack is
/// broken (salloc then prints nothing); `salloc` if there is no sinfo. The
/// package is named after it.
fn slurm_release(salloc: &Path) -> Option<String> {
    [OsStr::new("sinfo"), salloc.as_os_str()].into_iter().find_map(release_of)
}

fn release_of(program: &OsStr) -> Option<String> {
    let out =
        Command::new(program).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    let (major, minor) = (parts.next()?, parts.next()?);
    (major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok()).then(|| format!("{major}.{minor}"))
}

/// A tiny job: the step must see the plugin's bind address and run the helper.
fn helper_in_job(args: &DoctorArgs) -> Check {
    let name = "helper in a job".to_owned();
    let helper = args.helper.display().to_string().replace('\'', "");
    let script = format!(
        "echo \"vscode-doctor bind=${{{bind}:-}} node=$(hostname)\"; \
         '{helper}' --version >/dev/null 2>&1 && echo vscode-doctor helper=ok",
        bind = env::BIND_ADDR
    );
    let mut command = Command::new(&args.salloc);
    command
        .args([&slurm::option_flag(), "--nodes=1", "--time=2", "--job-name=vscode-doctor"])
        .args(&args.salloc_args)
        .args(["srun", "--nodes=1", "--ntasks=1", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Check {
                name,
                result: Err((format!("cannot run {}: {e}", args.salloc.display()), "see above".to_owned())),
            }
        }
    };
    // Read both pipes while waiting: a chatty salloc must not block on a full pipe.
    let read_all = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read_all(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let stderr = read_all(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            _ => break None,
        }
    };
    let Some(status) = status else {
        // salloc cancels its job when it is told to stop.
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
        }
        let _ = child.wait();
        return Check {
            name,
            result: Err((
                format!("the test job did not finish within {}s (still queued?)", args.wait),
                "retry with a larger --wait, or give a partition with free nodes after --".to_owned(),
            )),
        };
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    let field = |key: &str| {
        out.lines()
            .filter_map(|l| l.strip_prefix("vscode-doctor "))
            .flat_map(str::split_whitespace)
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let last_error = err.lines().rev().find(|l| l.contains("error")).unwrap_or("").trim().to_owned();
    let result = match (field("node"), field("bind"), field("helper")) {
        (None, _, _) => Err((
            format!("the test job did not run ({status}{})", if last_error.is_empty() { "" } else { ": " })
                + &last_error,
            "check the salloc arguments after --, and that `salloc --vscode -N1 srun hostname` works"
                .to_owned(),
        )),
        (Some(node), Some(bind), _) if bind.is_empty() => Err((
            format!("the job on {node} has no {}", env::BIND_ADDR),
            format!("the plugin must be loaded on the compute nodes too (plugstack.conf on {node})"),
        )),
        (Some(node), _, None) => Err((
            format!("{} does not run on {node}", args.helper.display()),
            format!("install vscode-job-helper on {node} (on PATH of jobs, e.g. /usr/bin)"),
        )),
        (Some(node), Some(bind), Some(_)) => Ok(format!("ran on {node}, bind address {bind}")),
        (Some(node), None, Some(_)) => Err((
            format!("the job on {node} has no {}", env::BIND_ADDR),
            "the plugin must be loaded on the compute nodes too".to_owned(),
        )),
    };
    Check { name, result }
}
