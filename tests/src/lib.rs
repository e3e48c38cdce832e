//! Helpers for the end-to-end tests: they drive the lab cluster through
//! `tests/lab/labctl`, the one place that knows how the lab is built.
//!
//! The tests expect the lab to be up (`tests/test-all` brings it up and down
//! around them) and fail with a message saying so when it is not.
//!
//! The lab runs one Slurm release ([`release`], from `VSCODE_SLURM_RELEASE`,
//! 22.05 by default); tests/test-all runs the suite once per release, so a
//! test that depends on the release asks for it here instead of assuming
//! Debian 12's.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

pub struct Lab {
    labctl: PathBuf,
    pub dir: PathBuf,
    /// Extra environment for every labctl call (a lab of a test's own).
    env: Vec<(String, String)>,
}

/// The Slurm release the tests expect the lab to run ("22.05", "24.11" or
/// "26.05"): `VSCODE_SLURM_RELEASE`, which tests/lab/labctl also reads, so a
/// test's own lab ([`Lab::own`]) runs the same release as the shared one.
pub fn release() -> String {
    std::env::var("VSCODE_SLURM_RELEASE").unwrap_or_else(|_| "22.05".to_owned())
}

/// The release as Slurm's `SLURM_VERSION_NUMBER` has it, without the micro
/// part: `0x1605` for 22.05, what a plugin's `plugin_version >> 8` must be.
pub fn release_number() -> u32 {
    let text = release();
    let parse = |part: Option<&str>| part.and_then(|p| p.parse::<u32>().ok());
    let mut parts = text.split('.');
    match (parse(parts.next()), parse(parts.next()), parts.next()) {
        (Some(major), Some(minor), None) if minor < 0x100 => (major << 8) | minor,
        _ => panic!("VSCODE_SLURM_RELEASE={text:?} is not a release like 24.11"),
    }
}

/// The include directory with the Slurm headers of [`release`]: the
/// machine's for 22.05, its lab root filesystem's otherwise (as `labctl
/// rootfs` names it, building it the first time).
pub fn slurm_include_dir() -> PathBuf {
    let labctl = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/labctl");
    let out =
        Command::new(labctl).args(["rootfs", "--slurm", &release()]).output().expect("run labctl rootfs");
    assert!(out.status.success(), "labctl rootfs failed: {}", String::from_utf8_lossy(&out.stderr));
    Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("usr/include")
}

/// The file offset of the dynamic symbol `name` in an ELF64 little-endian
/// shared object (a plugin's `plugin_version`, which Slurm compares with its
/// own release before it loads the plugin).
pub fn elf_symbol_offset(elf: &[u8], name: &str) -> usize {
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not an ELF64 file");
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    // (type, addr, offset, size, link, entsize) of section i
    let section = |i: usize| {
        let h = shoff + i * shentsize;
        (
            u32_at(h + 4),
            u64_at(h + 0x10),
            u64_at(h + 0x18),
            u64_at(h + 0x20),
            u32_at(h + 0x28),
            u64_at(h + 0x38),
        )
    };
    const SHT_DYNSYM: usize = 11;
    let (_, _, symoff, symsize, strndx, symentsize) =
        (0..shnum).map(section).find(|s| s.0 == SHT_DYNSYM).expect("a .dynsym section");
    let (_, _, stroff, _, _, _) = section(strndx);
    for sym in (symoff..symoff + symsize).step_by(symentsize) {
        let name_at = stroff + u32_at(sym);
        let end = name_at + elf[name_at..].iter().position(|b| *b == 0).unwrap();
        if &elf[name_at..end] == name.as_bytes() {
            let (value, shndx) = (u64_at(sym + 8), u16_at(sym + 6));
            let (_, addr, offset, _, _, _) = section(shndx);
            return value - addr + offset;
        }
    }
    panic!("no dynamic symbol {name}");
}

/// The `plugin_version` a SPANK plugin file carries (`0x180b05` for 24.11.5).
pub fn plugin_version(elf: &[u8]) -> u32 {
    let at = elf_symbol_offset(elf, "plugin_version");
    u32::from_le_bytes(elf[at..at + 4].try_into().unwrap())
}

/// Whether the lab's cluster hosts run this machine's own Slurm packages
/// (22.05) rather than a Debian suite's root filesystem of their own.
pub fn release_is_the_machines() -> bool {
    release() == "22.05"
}

impl Lab {
    /// The running lab; panics with what to do when it is not up, or when it
    /// runs another Slurm release than the tests expect.
    pub fn get() -> Lab {
        let labctl = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/labctl");
        let dir = PathBuf::from(
            std::env::var("VSCODE_SLURM_LAB").unwrap_or_else(|_| "/var/tmp/vscode-slurm-lab".to_owned()),
        );
        let lab = Lab { labctl, dir, env: vec![] };
        let status = lab.labctl_command(&["exec", "head", "true"]).output().expect("run labctl");
        assert!(
            status.status.success(),
            "the lab is not up: run `tests/test-all` (or `tests/lab/labctl up` after a release build)\n{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let running = lab.read("release");
        assert_eq!(
            running.trim(),
            release(),
            "the lab in {} runs Slurm {}, the tests expect {} (VSCODE_SLURM_RELEASE): bring it up with \
             `tests/lab/labctl up --slurm {}`",
            lab.dir.display(),
            running.trim(),
            release(),
            release()
        );
        lab
    }

    /// `slurm` or `htcondor`: what the lab's hosts schedule with.
    pub fn scheduler(&self) -> String {
        std::fs::read_to_string(self.dir.join("scheduler"))
            .map_or_else(|_| "slurm".to_owned(), |s| s.trim().to_owned())
    }

    /// The running lab, which must be an HTCondor pool (`labctl up --scheduler htcondor`).
    pub fn htcondor() -> Lab {
        let lab = Lab::get();
        assert_eq!(
            lab.scheduler(),
            "htcondor",
            "these tests need the lab's HTCondor pool: `tests/lab/labctl up --scheduler htcondor` \
             (with VSCODE_SLURM_RELEASE=24.11), or `tests/test-all --htcondor`"
        );
        lab
    }

    /// A second lab beside the shared one, for a test that must change what
    /// every host sees: its own directory and namespace prefix (derived from
    /// the shared lab's, so parallel developers' labs stay apart) and extra
    /// labctl environment such as `LAB_INSTALLED=1`. Not brought up.
    pub fn own(suffix: &str, env: &[(&str, &str)]) -> Lab {
        let labctl = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/labctl");
        let shared =
            std::env::var("VSCODE_SLURM_LAB").unwrap_or_else(|_| "/var/tmp/vscode-slurm-lab".to_owned());
        let prefix = std::env::var("VSCODE_SLURM_LAB_NS").unwrap_or_else(|_| "vsl-".to_owned());
        let mut vars = vec![("VSCODE_SLURM_LAB_NS".to_owned(), format!("{prefix}{suffix}-"))];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Lab { labctl, dir: PathBuf::from(format!("{shared}-{suffix}")), env: vars }
    }

    pub fn labctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.labctl);
        command.args(args).env("VSCODE_SLURM_LAB", &self.dir).envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs `labctl ARGS` and returns its output, whatever the exit status.
    pub fn labctl(&self, args: &[&str]) -> Output {
        self.labctl_command(args).output().expect("run labctl")
    }

    /// `bash -c SCRIPT` on `host`, as root when `user` is None.
    pub fn sh(&self, user: Option<&str>, host: &str, script: &str) -> Output {
        self.command(user, host, &["bash", "-c", script]).output().expect("run labctl exec")
    }

    /// Like [`Lab::sh`], but the command must succeed; returns its stdout.
    pub fn sh_ok(&self, user: Option<&str>, host: &str, script: &str) -> String {
        let out = self.sh(user, host, script);
        assert!(
            out.status.success(),
            "`{script}` on {host} as {} failed ({}):\nstdout: {}\nstderr: {}",
            user.unwrap_or("root"),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn command(&self, user: Option<&str>, host: &str, argv: &[&str]) -> Command {
        let mut args = vec!["exec"];
        if let Some(user) = user {
            args.extend(["-u", user]);
        }
        args.push(host);
        args.extend(argv);
        self.labctl_command(&args)
    }

    /// Starts `argv` on `host` with piped stdin and stdout read line by line
    /// in the background, so tests can await lines with a bound.
    pub fn spawn(&self, user: Option<&str>, host: &str, argv: &[&str]) -> LineProcess {
        let mut command = self.command(user, host, argv);
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        LineProcess::start(command)
    }

    /// The contents of a file in the lab directory (logs, homes).
    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.dir.join(relative)).unwrap_or_default()
    }

    /// Every process on `host`, as `ps` lists them.
    pub fn processes(&self, host: &str) -> Vec<Proc> {
        self.sh_ok(None, host, "ps -e -o pid=,ppid=,uid=,args=")
            .lines()
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                Some(Proc {
                    pid: f.next()?.parse().ok()?,
                    ppid: f.next()?.parse().ok()?,
                    uid: f.next()?.parse().ok()?,
                    args: f.collect::<Vec<_>>().join(" "),
                })
            })
            .collect()
    }

    /// Which of `pids` are still processes on `host`.
    pub fn alive(&self, host: &str, pids: &BTreeSet<i32>) -> BTreeSet<i32> {
        let now: BTreeSet<i32> = self.processes(host).iter().map(|p| p.pid).collect();
        pids.intersection(&now).copied().collect()
    }

    /// Runs the script `install(home)` on the login node as alice and bob,
    /// with `$HOME`, and as root, with /tmp for a home: something in every
    /// home the login node's janitor looks in.
    pub fn install_in_every_home(&self, install: impl Fn(&str) -> String) {
        for user in ["alice", "bob"] {
            self.sh_ok(Some(user), "login", &install("$HOME"));
        }
        self.sh_ok(None, "login", &install("/tmp"));
    }

    /// Submits `sbatch --parsable ARGS` as `user` on the login node and
    /// returns the job's id once it runs: a test that needs the nodes taken
    /// (or a job to find) must not race the scheduler.
    pub fn running_batch_job(&self, user: &str, args: &str, within: Duration) -> u32 {
        let submitted = self.sh_ok(Some(user), "login", &format!("sbatch --parsable {args}"));
        let job: u32 = submitted
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no job id from sbatch --parsable {args}: {submitted:?}"));
        wait_until(
            &format!("{user}'s job {job} to run"),
            within,
            || self.sh_ok(None, "login", &format!("squeue -h -j {job} -o %T")),
            |state| state.trim() == "RUNNING",
        );
        job
    }
}

/// A process on a lab host, from [`Lab::processes`].
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// The command line, its words joined by single spaces.
    pub args: String,
}

/// The start of a `remote-ssh-client` command line on the laptop: the
/// session goes to the `cluster-vscode` alias of the lab's ssh config, with
/// the launch script `template` (a file in the user's laptop home). More
/// options (`--ssh-option ...`) may follow.
pub fn remote_ssh_client_argv(template: &str) -> [&str; 7] {
    [
        "remote-ssh-client",
        "--host",
        "cluster-vscode",
        "--ssh-config",
        ".ssh/vscode-slurm.config",
        "--template",
        template,
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A process whose stdout and stderr lines arrive on channels.
pub struct LineProcess {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    pub stdout_seen: Vec<String>,
    pub stderr_seen: Vec<String>,
}

impl LineProcess {
    pub fn start(mut command: Command) -> LineProcess {
        let mut child = command.spawn().expect("spawn process");
        let stdin = child.stdin.take();
        let stdout = lines_of(child.stdout.take().expect("piped stdout"));
        let stderr = lines_of(child.stderr.take().expect("piped stderr"));
        LineProcess { child, stdin, stdout, stderr, stdout_seen: vec![], stderr_seen: vec![] }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to process stdin");
        stdin.flush().expect("flush process stdin");
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for a stdout line satisfying `wanted`, failing with everything
    /// seen so far when it does not come within `timeout`.
    pub fn expect_line(&mut self, what: &str, timeout: Duration, wanted: impl Fn(&str) -> bool) -> String {
        self.expect_on(Stream::Stdout, what, timeout, wanted)
    }

    /// Where stderr stands now, for [`LineProcess::expect_stderr_line_after`]:
    /// lines from here on count, even if waiting on stdout collects them.
    pub fn stderr_mark(&mut self) -> usize {
        self.drain_stderr();
        self.stderr_seen.len()
    }

    /// Like `expect_stderr_line`, but a line that came after `mark` and was
    /// already collected (while waiting on stdout) counts too.
    pub fn expect_stderr_line_after(
        &mut self,
        mark: usize,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        self.drain_stderr();
        if let Some(line) = self.stderr_seen.iter().skip(mark).find(|l| wanted(l)) {
            return line.clone();
        }
        self.expect_on(Stream::Stderr, what, timeout, wanted)
    }

    /// Like `expect_line`, for stderr: waits for a new stderr line satisfying
    /// `wanted` (lines seen before the call do not count).
    pub fn expect_stderr_line(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        self.expect_on(Stream::Stderr, what, timeout, wanted)
    }

    fn expect_on(
        &mut self,
        stream: Stream,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if stream == Stream::Stdout {
                self.drain_stderr();
            }
            let (lines, seen) = match stream {
                Stream::Stdout => (&self.stdout, &mut self.stdout_seen),
                Stream::Stderr => (&self.stderr, &mut self.stderr_seen),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(err) => {
                    self.drain_stderr();
                    panic!(
                        "no {stream:?} line {what} within {timeout:?} ({err:?}).\nstdout so far:\n{}\nstderr so far:\n{}",
                        self.stdout_seen.join("\n"),
                        self.stderr_seen.join("\n")
                    )
                }
            }
        }
    }

    pub fn drain_stderr(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_seen.push(line);
        }
    }

    /// Collects stderr until it ends (the process and everything that
    /// shares its stderr are gone), or `timeout` passes: what a process
    /// wrote just before it exited may still be on its way to us.
    pub fn stderr_to_end(&mut self, timeout: Duration) {
        collect_to_end(&self.stderr, &mut self.stderr_seen, Instant::now() + timeout);
    }

    /// Waits for the process to exit, killing it after `timeout`, then
    /// collects what it wrote just before, which may still be on its way.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = events::exit_within(&mut self.child, timeout).expect("wait for the process");
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let deadline = Instant::now() + OUTPUT_AFTER_EXIT;
        collect_to_end(&self.stdout, &mut self.stdout_seen, deadline);
        collect_to_end(&self.stderr, &mut self.stderr_seen, deadline);
        status
    }
}

/// A process's output ends with it unless something it started still
/// holds it open; the rest is given this long to arrive.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(5);

/// Moves `lines` into `seen` until the stream ends (its reader thread has
/// hung up) or `deadline` passes.
fn collect_to_end(lines: &Receiver<String>, seen: &mut Vec<String>, deadline: Instant) {
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(RecvTimeoutError::Disconnected | RecvTimeoutError::Timeout) => return,
        }
    }
}

impl Drop for LineProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn lines_of(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Polls `condition` every 100 ms until it holds, failing with `what` and
/// the last observation when `timeout` passes. For states that have no
/// event to await (a process gone, a job left the queue).
pub fn wait_until<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut observe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = observe();
        if done(&seen) {
            return seen;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen:?}");
        }
        // What is awaited here (a job's state in slurmctld, a process or a
        // file inside another host's namespaces) announces nothing to us.
        thread::sleep(Duration::from_millis(100)); // allow-sleep: no event exists for these states; they can only be looked at again
    }
}

/// A program of this build (`<target dir>/release/NAME`), found from the
/// running test binary so that CARGO_TARGET_DIR need not be set.
pub fn release_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/release/deps/<test binary>
    let release = exe.parent().and_then(Path::parent).expect("test binary in <target>/release/deps");
    release.join(name)
}

/// A directory of the test's own under the system temp dir, removed when
/// dropped: `vscode-slurm-WHAT-PID`, so parallel runs stay apart.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("vscode-slurm-{what}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Puts a file of the lab back as it was when dropped, however the test
/// ends, so that later tests find the lab they expect.
pub struct RestoreFile {
    pub path: PathBuf,
    pub text: Vec<u8>,
    /// Files the test added that the changed file may name: removed only
    /// once it is back, so that it never names a missing one.
    pub added: Vec<PathBuf>,
}

impl RestoreFile {
    /// Remembers `path` as it is now.
    pub fn new(path: PathBuf) -> RestoreFile {
        let text = fs::read(&path).unwrap_or_else(|e| panic!("keep {} to restore it: {e}", path.display()));
        RestoreFile { path, text, added: vec![] }
    }
}

impl Drop for RestoreFile {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.text) {
            eprintln!("cannot restore {}: {e}", self.path.display());
        }
        for file in &self.added {
            let _ = fs::remove_file(file);
        }
    }
}

/// Sends `payload` through `writer` (then half-closes it) while reading
/// `reader` to its end, as an echo server's client does; what came back.
/// Writing from a thread of its own keeps a large payload from deadlocking
/// against a full pipe in the other direction.
pub fn echo_back(mut reader: impl std::io::Read, writer: std::net::TcpStream, payload: &[u8]) -> Vec<u8> {
    let sent = payload.to_vec();
    let sender = thread::spawn(move || {
        let mut writer = writer;
        std::io::Write::write_all(&mut writer, &sent).expect("send the payload");
        writer.shutdown(std::net::Shutdown::Write).expect("half-close");
    });
    let mut echoed = Vec::new();
    reader.read_to_end(&mut echoed).expect("read the echo");
    sender.join().expect("the sender thread");
    echoed
}

/// The test programs' one-line JSON answers use the product's escaper.
pub use vscode_slurm_common::json::string as json_string;

pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub mod events;
pub mod proxy;
pub mod session;
pub mod strangers;
