//! Real VS Code through the session, as a user sees it: code-server (VS Code 1.100.3) started
//! inside a Slurm job by a launch script sent over the Remote-SSH connection, and Debian's
//! Chromium on the laptop, reaching the workbench only through the emulated client's `ssh -D`.
//!
//! Needs what `tests/install-vscode-deps` installs; fails saying so when it is missing.
//! Writes the screenshot to `<target dir>/test-artifacts/workbench.png` and prints its path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vscode_slurm_tests::proxy::ProxyHost;
use vscode_slurm_tests::session::{assert_nothing_left, dump, Session, SessionOptions};
use vscode_slurm_tests::{stderr_of, stdout_of, wait_until, Lab, LineProcess};

/// Where `tests/install-vscode-deps` puts playwright-core (code-server's path is in the
/// launch script).
const PLAYWRIGHT_DIR: &str = "/opt/vscode-slurm-tests/playwright";
const LAUNCH_SCRIPT: &str = include_str!("../scripts/code-server.sh");
/// Where `tests/install-vscode-deps` puts code-server; the nodes see the machine's /opt
/// (and, on a newer release's hosts, are lent it).
const CODE_SERVER: &str = "/opt/vscode-slurm-tests/code-server/node_modules/.bin/code-server";
const WORKBENCH_SCRIPT: &str = include_str!("../browser/workbench.mjs");
const USER: &str = "alice";
/// The job as a shell in it sees it: Slurm's job id, or the HTCondor slot the job runs in.
const COMMAND: &str = "hostname; echo ${SLURM_JOB_ID:-$_CONDOR_SLOT_NAME}";
/// A whole browser run: Chromium's start, the workbench's first load (code-server loads VS
/// Code's server on the first request), explorer, editor and terminal, on a loaded two-core
/// machine. The script bounds each of its steps too and says which one failed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(400);
const NODE_ADDR: [(&str, &str); 2] = [("c1", "10.77.1.11"), ("c2", "10.77.1.12")];

fn say(line: &str) {
    println!("browser: {line}");
}

/// The browser parts are installed by a script of their own; without them this test fails
/// (it never skips), saying what to run.
fn require_browser_deps() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("install-vscode-deps");
    let check = Command::new(&script).arg("--check").output().expect("run install-vscode-deps --check");
    assert!(
        check.status.success(),
        "the browser test needs code-server, Chromium and playwright-core: run `sudo tests/install-vscode-deps` \
         (about two minutes, once)\n{}",
        stderr_of(&check).trim()
    );
}

/// `<target dir>/test-artifacts`, next to the `release`/`debug` directory this test runs from.
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // <target>/<profile>/deps/browser-HASH
    let target = exe.ancestors().nth(3).expect("test executable under a target dir").to_path_buf();
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create test-artifacts dir");
    dir
}

/// The running jobs of `user`: (id, node).
fn running_jobs(lab: &Lab, user: &str) -> Vec<(u32, String)> {
    let queue = lab.sh_ok(None, "login", &format!("squeue -h -u {user} -t RUNNING -o '%i %N'"));
    queue
        .lines()
        .map(|l| {
            let (id, node) = l.split_once(' ').unwrap_or_else(|| panic!("not a squeue '%i %N' line: {l:?}"));
            (id.parse().expect("job id"), node.trim().to_owned())
        })
        .collect()
}

/// The SOCKS port of the emulated client's `ssh -D`, as it said it.
fn socks_port(session: &Session) -> u16 {
    session
        .client
        .stdout_seen
        .iter()
        .find_map(|l| l.strip_prefix("session ")?.split("socks=127.0.0.1:").nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("the client did not say its SOCKS port\n{}", dump(&session.client)))
}

/// What the workbench script said, by first word.
struct Observed {
    lines: Vec<String>,
}

impl Observed {
    fn values(&self, word: &str) -> Vec<&str> {
        let prefix = format!("{word} ");
        self.lines.iter().filter_map(|l| l.strip_prefix(&prefix)).collect()
    }

    fn has(&self, word: &str) -> bool {
        self.lines.iter().any(|l| l == word || l.starts_with(&format!("{word} ")))
    }
}

/// Runs the workbench script to its end (`done` or `error`), bounded by [`BROWSER_TIMEOUT`].
fn run_browser(browser: &mut LineProcess) -> Observed {
    let started = Instant::now();
    let mut lines = Vec::new();
    loop {
        let left = BROWSER_TIMEOUT.saturating_sub(started.elapsed());
        let line = browser.expect_line("from the workbench script", left, |_| true);
        let end = line == "done" || line.starts_with("error");
        lines.push(line);
        if end {
            break;
        }
    }
    Observed { lines }
}

/// Where a browser run finds its workbench, and what it leaves behind.
struct Workbench<'a> {
    node: &'a str,
    job: u32,
    /// What the terminal prints for the job after the node (see [`COMMAND`]).
    job_line: &'a str,
    base_url: &'a str,
    /// Remote-SSH's `ssh -D` port on the laptop, when Chromium goes through it.
    socks_port: Option<u16>,
    /// code-server's password, in a file on the laptop, when it asks for one.
    password_file: Option<&'a str>,
    /// In the user's home, made on the node for the explorer to show.
    folder: &'a str,
    /// The screenshot's name under `<target>/test-artifacts`.
    artifact: &'a str,
}

/// Chromium on the laptop, as the user, opens the workbench at `base_url` (through
/// `socks_port` when given) on a folder made on the node in the job, and shows that
/// (a) the explorer lists it, (b) the integrated terminal runs in the job on the node,
/// (c) Ctrl+S saves on the node, (d) a screenshot was taken; then Chromium is gone.
fn drive_workbench(lab: &Lab, workbench: Workbench<'_>, client: impl Fn() -> String) {
    let Workbench { node, job, job_line, base_url, socks_port, password_file, folder, artifact } = workbench;
    let tag = std::process::id();
    let laptop_home = lab.dir.join("laptop-home").join(USER);
    // Files made on the compute node, in the job, for the explorer to show.
    let hello = format!("hello-from-{node}.txt");
    lab.sh_ok(
        Some(USER),
        node,
        &format!(
            "mkdir -p ~/{folder}/results && echo \"written on $(hostname) in job {job}\" > ~/{folder}/{hello} && \
             printf '# notes\\n' > ~/{folder}/notes.md"
        ),
    );

    // Chromium on the laptop, as the user: through the SOCKS port of the client's ssh -D,
    // or at the laptop's end of an ssh -L.
    let script = format!("workbench-{tag}.mjs");
    let shot_name = format!("workbench-{tag}.png");
    std::fs::write(laptop_home.join(&script), WORKBENCH_SCRIPT).expect("write the workbench script");
    let typed = format!("typed in Chromium on the laptop, saved in job {job}");
    let url = format!("{base_url}?folder=/home/{USER}/{folder}");
    let shot_on_laptop = format!("/home/{USER}/{shot_name}");
    match socks_port {
        Some(port) => say(&format!("Chromium opens {url} through socks5://127.0.0.1:{port}")),
        None => say(&format!("Chromium opens {url}")),
    }
    let browsed = Instant::now();
    let socks = socks_port.map(|port| port.to_string());
    let mut argv = vec!["node", &script, "--playwright", PLAYWRIGHT_DIR, "--url", &url];
    if let Some(socks) = &socks {
        argv.extend(["--socks", socks]);
    }
    if let Some(file) = password_file {
        argv.extend(["--password-file", file]);
    }
    argv.extend([
        "--expect",
        &hello,
        "--expect",
        "notes.md",
        "--expect",
        "results",
        "--edit",
        "notes.md",
        "--text",
        &typed,
        "--command",
        COMMAND,
        "--screenshot",
        &shot_on_laptop,
    ]);
    let mut browser = lab.spawn(Some(USER), "laptop", &argv);
    let observed = run_browser(&mut browser);
    let status = browser.wait(Duration::from_secs(30));

    // The picture first, whatever happened: it shows where things stopped.
    let shot = artifacts_dir().join(artifact);
    let _ = std::fs::remove_file(&shot);
    let shot_taken = std::fs::copy(laptop_home.join(&shot_name), &shot).is_ok();
    let _ = std::fs::remove_file(laptop_home.join(&shot_name));
    let _ = std::fs::remove_file(laptop_home.join(&script));
    assert!(
        observed.has("done") && status.is_some_and(|s| s.success()),
        "the browser run failed ({status:?}); screenshot: {}\n{}\nclient:\n{}",
        if shot_taken { shot.display().to_string() } else { "none".to_owned() },
        dump(&browser),
        client()
    );
    say(&format!("the browser run took {:.1?}", browsed.elapsed()));

    // (a) The explorer listed what was made on the node.
    let listed = observed.values("explorer");
    say(&format!("the explorer lists {}", listed.join(", ")));
    for name in [hello.as_str(), "notes.md", "results"] {
        assert!(listed.contains(&name), "the explorer does not list {name}: {listed:?}");
    }

    // (b) The integrated terminal ran in the job, on the node.
    let terminal = observed.values("terminal");
    let at = terminal
        .iter()
        .position(|l| l.ends_with(COMMAND))
        .unwrap_or_else(|| panic!("the command is not in the terminal: {terminal:?}"));
    let output: Vec<&str> = terminal[at + 1..].iter().take(2).copied().collect();
    say(&format!("the terminal says `{}` after `{COMMAND}`", output.join(" / ")));
    assert_eq!(output, [node, job_line], "terminal rows: {terminal:?}");

    // (c) Ctrl+S saved the typed text on the node.
    assert_eq!(observed.values("saved"), ["notes.md"]);
    let content = wait_until(
        "the saved file on the node",
        Duration::from_secs(10),
        || lab.sh(Some(USER), node, &format!("cat ~/{folder}/notes.md")),
        |out| stdout_of(out) == format!("# notes\n{typed}"),
    );
    say(&format!("notes.md on {node} now reads {:?}", stdout_of(&content)));

    // (d) The screenshot is a PNG of some substance.
    assert!(shot_taken, "no screenshot was copied from the laptop");
    let png = std::fs::read(&shot).expect("read the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "not a real screenshot: {}",
        shot.display()
    );
    say(&format!("screenshot: {}", shot.display()));

    // (e) The browser is gone from the laptop, and closing ssh ends the job and everything in it.
    wait_until(
        "Chromium to be gone from the laptop",
        Duration::from_secs(10),
        || lab.sh_ok(None, "laptop", &format!("pgrep -u {USER} -a chromium || true")),
        |ps| ps.trim().is_empty(),
    );
}

/// The user's own VS Code settings: Ctrl+S is what saves (VS Code for the Web saves by
/// itself after a delay), the terminal renders as DOM rows the test can read, the opened
/// folder is trusted without a dialog, no welcome page covers the editor. They live in the
/// launch script's --user-data-dir, on the cluster's shared /home.
fn write_user_settings(lab: &Lab) {
    let settings = r#"{
  "files.autoSave": "off",
  "terminal.integrated.gpuAcceleration": "off",
  "security.workspace.trust.enabled": false,
  "workbench.startupEditor": "none",
  "workbench.tips.enabled": false
}"#;
    lab.sh_ok(
        Some(USER),
        "c1",
        &format!(
            "mkdir -p ~/.vscode-server/code-server-data/user/User && \
             printf '%s\\n' '{settings}' > ~/.vscode-server/code-server-data/user/User/settings.json"
        ),
    );
}

#[test]
fn vscode_workbench_in_chromium_runs_in_the_job_and_leaves_nothing() {
    require_browser_deps();
    let lab = Lab::get();
    let tag = std::process::id();
    let folder = format!("workbench-{tag}");
    write_user_settings(&lab);

    // VS Code connects: the launch script starts code-server in the job.
    let before = running_jobs(&lab, USER);
    let opened = Instant::now();
    let session = Session::open(&lab, SessionOptions { template: Some(LAUNCH_SCRIPT), ..Default::default() });
    let new_jobs: Vec<(u32, String)> =
        running_jobs(&lab, USER).into_iter().filter(|j| !before.contains(j)).collect();
    let [(job, node)] = <[_; 1]>::try_from(new_jobs)
        .unwrap_or_else(|jobs| panic!("want exactly one new job of {USER} for the session, got {jobs:?}"));
    say(&format!(
        "session open in {:.1?}: job {job} on {node}, code-server relayed at 127.0.0.1:{} on the login node",
        opened.elapsed(),
        session.relay_port
    ));
    assert!(
        session.answer.contains("<!DOCTYPE html>"),
        "the first answer through the relay is not the workbench page: {:.300}",
        session.answer
    );
    let socks_port = socks_port(&session);

    // code-server (`--auth none`) listens on a unix socket in the job's private runtime
    // dir, where the helper's rewrite put it; the only TCP listener of the session is the
    // helper's door, on the node's own address.
    let addr = NODE_ADDR.iter().find(|(n, _)| *n == node).map(|(_, a)| *a).expect("a compute node");
    let sockets = lab.sh_ok(None, &node, "ss -Hlxp || true");
    let runtime = format!("/run/vscode-slurm/{job}/server-");
    assert!(
        sockets.lines().any(|l| l.contains(&runtime) && l.contains("node")),
        "code-server does not listen on a socket in {runtime}*: {sockets}"
    );
    let listeners = lab.sh_ok(None, &node, "ss -Hltnp | grep -v ':6818 ' || true");
    assert!(!listeners.contains("node"), "code-server listens on TCP on {node}: {listeners}");
    for line in listeners.lines() {
        assert!(line.contains(&format!("{addr}:")), "{node} has a listener not on {addr}: {line}");
        assert!(line.contains("vscode-job-help"), "{node} has a TCP listener that is not the door: {line}");
    }
    // And nothing on the laptop listens on the workbench's port: only SOCKS gets there.
    let laptop = lab.sh_ok(None, "laptop", "ss -Hltn");
    assert!(
        !laptop.contains(&format!(":{} ", session.relay_port)),
        "something on the laptop listens on the workbench port: {laptop}"
    );

    let url = format!("http://127.0.0.1:{}/", session.relay_port);
    let job_line = job.to_string();
    let workbench = Workbench {
        node: &node,
        job,
        job_line: &job_line,
        base_url: &url,
        socks_port: Some(socks_port),
        password_file: None,
        folder: &folder,
        artifact: "workbench.png",
    };
    drive_workbench(&lab, workbench, || dump(&session.client));
    let (took, client) = session.close();
    assert!(took < Duration::from_secs(20), "closing took {took:?}\n{}", dump(&client));
    assert_nothing_left(&lab, USER, job, Duration::from_secs(20));
    wait_until(
        "no process of the user on the laptop",
        Duration::from_secs(10),
        || lab.sh_ok(None, "laptop", &format!("ps -u {USER} -o pid=,args= || true")),
        |ps| ps.trim().is_empty(),
    );
    lab.sh_ok(Some(USER), "c1", &format!("rm -rf ~/{folder}"));
    say(&format!("closed in {took:.1?}: job {job} ended, nothing of it left on login, c1 or c2"));
}

/// The same workbench through a ProxyCommand host (`vscode-shim setup --proxy`), the way a
/// user of any SSH client reaches a server of their own in the job: one ssh connection with
/// `-D` runs code-server on the node's loopback, and Chromium reaches it through that SOCKS
/// port and the job's sshd. Such a server is the user's to protect (the proxy kind moves no
/// bind): this one asks for a password, so bob on the same node gets its login page only.
#[test]
fn vscode_workbench_in_chromium_through_the_proxy_host() {
    require_browser_deps();
    let lab = Lab::get();
    write_user_settings(&lab);
    let tag = std::process::id();
    let host = ProxyHost::install(&lab, USER, "alice-browser", "browser");
    // The password reaches code-server through a file in the 0700 home and its environment,
    // never a command line another user of the node could read.
    let password = format!("pw-{tag}-{}", std::time::SystemTime::now().elapsed().map_or(0, |d| d.as_nanos()));
    let password_file = format!(".code-server-password-{tag}");
    lab.sh_ok(Some(USER), "c1", &format!("umask 077; printf %s {password} > ~/{password_file}"));
    lab.sh_ok(Some(USER), "laptop", &format!("umask 077; printf %s {password} > ~/{password_file}"));
    let socks_port = 47020;
    // The ssh's pid first, so that the test ends it (and only it) by pid.
    let script = format!(
        "ssh -o BatchMode=yes -o ExitOnForwardFailure=yes -D 127.0.0.1:{socks_port} {name} \
           'echo job $SLURM_JOB_ID $(hostname); PASSWORD=$(cat ~/{password_file}) exec {CODE_SERVER} \
            --bind-addr 127.0.0.1:0 --auth password --disable-telemetry --disable-update-check \
            --ignore-last-opened --config ~/.vscode-server/code-server-data/config.yaml \
            --user-data-dir ~/.vscode-server/code-server-data/user \
            --extensions-dir ~/.vscode-server/code-server-data/extensions 2>&1' </dev/null &\n\
         echo ssh $!\n\
         wait $!",
        name = host.name
    );
    let mut session = lab.spawn(Some(USER), "laptop", &["bash", "-c", &script]);
    let ssh_pid = session.expect_line("the ssh's pid", Duration::from_secs(10), |l| l.starts_with("ssh "));
    let ssh = EndOnDrop { lab: &lab, pid: ssh_pid.trim_start_matches("ssh ").to_owned() };
    let line = session.expect_line("the job", Duration::from_secs(60), |l| l.starts_with("job "));
    let words: Vec<&str> = line.split_whitespace().collect();
    let (job, node): (u32, String) = (words[1].parse().expect("a job id"), words[2].to_owned());
    let listening = session.expect_line("code-server's port", Duration::from_secs(90), |l| {
        l.contains("HTTP server listening on http://127.0.0.1:")
    });
    let port: u16 = listening
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listening}"));
    say(&format!(
        "code-server in job {job} on {node} at 127.0.0.1:{port}, through socks5://127.0.0.1:{socks_port}"
    ));

    // Bob, on the node, reaches the port but not the workbench: a login page.
    let bob = lab.sh_ok(
        Some("bob"),
        &node,
        &format!(
            "python3 -c \"import http.client as h; c=h.HTTPConnection('127.0.0.1',{port}); c.request('GET','/'); \
             r=c.getresponse(); print(r.status, r.getheader('Location'))\""
        ),
    );
    assert!(bob.starts_with("302 ") && bob.contains("login"), "bob got past code-server's login: {bob}");

    let url = format!("http://127.0.0.1:{port}/");
    let password_arg = format!("/home/{USER}/{password_file}");
    let folder = format!("workbench-{tag}");
    let job_line = job.to_string();
    let workbench = Workbench {
        node: &node,
        job,
        job_line: &job_line,
        base_url: &url,
        socks_port: Some(socks_port),
        password_file: Some(&password_arg),
        folder: &folder,
        artifact: "workbench-proxy.png",
    };
    drive_workbench(&lab, workbench, || dump(&session));

    drop(ssh);
    assert!(session.wait(Duration::from_secs(30)).is_some(), "the SOCKS ssh did not end");
    assert_nothing_left(&lab, USER, job, Duration::from_secs(30));
    lab.sh_ok(Some(USER), "c1", &format!("rm -rf ~/workbench-{tag} ~/{password_file}"));
    lab.sh_ok(Some(USER), "laptop", &format!("rm -f ~/{password_file}"));
    say(&format!("job {job} ended with the last connection, nothing of it left"));
}

/// Ends the laptop's ssh (by pid, as the user) however the test ends, so that a failed run
/// leaves no connection holding the job.
struct EndOnDrop<'a> {
    lab: &'a Lab,
    pid: String,
}

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.lab.sh(Some(USER), "laptop", &format!("kill {} 2>/dev/null", self.pid));
    }
}

/// The same workbench on the lab's HTCondor pool: code-server in the profile's editor job on
/// an execute point, reached the same way (relay on the access point, door on the node).
#[test]
#[ignore = "needs the lab's HTCondor pool: labctl up --scheduler htcondor"]
fn vscode_workbench_in_chromium_inside_an_htcondor_job() {
    require_browser_deps();
    let lab = Lab::htcondor();
    let tag = std::process::id();
    let folder = format!("workbench-{tag}");
    write_user_settings(&lab);
    let opened = Instant::now();
    let session = Session::open(&lab, SessionOptions { template: Some(LAUNCH_SCRIPT), ..Default::default() });
    let queue = lab.sh_ok(Some(USER), "login", &format!("condor_q {USER} -af ClusterId RemoteHost"));
    let fields: Vec<&str> = queue.split_whitespace().collect();
    let [job, slot] = fields[..] else { panic!("want one running editor job of {USER}: {queue}") };
    let job: u32 = job.parse().expect("a cluster id");
    let node = slot.split('@').nth(1).and_then(|host| host.split('.').next()).expect("slot@node").to_owned();
    say(&format!("session open in {:.1?}: HTCondor job {job} in {slot}", opened.elapsed()));
    assert!(session.answer.contains("<!DOCTYPE html>"), "the workbench page: {:.300}", session.answer);
    let sockets = lab.sh_ok(None, &node, "ss -Hlxp || true");
    assert!(
        sockets
            .lines()
            .any(|l| l.contains("/vscode-slurm/server-") && l.contains("/var/lib/condor/execute/")),
        "code-server does not listen on a socket in the job's private directory: {sockets}"
    );
    let socks_port = socks_port(&session);
    let url = format!("http://127.0.0.1:{}/", session.relay_port);
    let workbench = Workbench {
        node: &node,
        job,
        job_line: slot,
        base_url: &url,
        socks_port: Some(socks_port),
        password_file: None,
        folder: &folder,
        artifact: "workbench-htcondor.png",
    };
    drive_workbench(&lab, workbench, || dump(&session.client));
    let (took, client) = session.close();
    assert!(took < Duration::from_secs(20), "closing took {took:?}\n{}", dump(&client));
    wait_until(
        &format!("HTCondor job {job} to leave the queue, nothing of alice left on {node}"),
        Duration::from_secs(60),
        || {
            let queue = lab.sh_ok(Some(USER), "login", &format!("condor_q {USER} -af ClusterId"));
            let ps = lab.sh_ok(None, &node, &format!("ps -u {USER} -o pid= || true"));
            format!("{}{}", queue.trim(), ps.trim())
        },
        |left| left.is_empty(),
    );
    lab.sh_ok(Some(USER), "c1", &format!("rm -rf ~/{folder}"));
    say(&format!("closed in {took:.1?}: HTCondor job {job} ended, nothing of it left on {node}"));
}
