//! Real VS Code through the session, as a user sees it: code-server (VS Code 1.100.3) started
//! inside a Slurm job by a launch script sent over the Remote-SSH connection, and Debian's
//! Chromium on the laptop, reaching the workbench only through the emulated client's `ssh -D`.
//!
//! Needs what `tests/install-vscode-deps` installs; fails saying so when it is missing.
//! Writes the screenshot to `<target dir>/test-artifacts/workbench.png` and prints its path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vscode_slurm_tests::session::{assert_nothing_left, dump, Session, SessionOptions};
use vscode_slurm_tests::{stderr_of, stdout_of, wait_until, Lab, LineProcess};

/// Where `tests/install-vscode-deps` puts playwright-core (code-server's path is in the
/// launch script).
const PLAYWRIGHT_DIR: &str = "/opt/vscode-slurm-tests/playwright";
const LAUNCH_SCRIPT: &str = include_str!("../scripts/code-server.sh");
const WORKBENCH_SCRIPT: &str = include_str!("../browser/workbench.mjs");
const USER: &str = "alice";
const COMMAND: &str = "hostname; echo $SLURM_JOB_ID";
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

#[test]
fn vscode_workbench_in_chromium_runs_in_the_job_and_leaves_nothing() {
    require_browser_deps();
    let lab = Lab::get();
    let tag = std::process::id();
    let folder = format!("workbench-{tag}");
    let laptop_home = lab.dir.join("laptop-home").join(USER);

    // The user's own VS Code settings: Ctrl+S is what saves (VS Code for the Web saves by
    // itself after a delay), the terminal renders as DOM rows the test can read, the opened
    // folder is trusted without a dialog, no welcome page covers the editor. They live in the
    // launch script's --user-data-dir, on the cluster's shared /home.
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
    let socks_port: u16 = session
        .client
        .stdout_seen
        .iter()
        .find_map(|l| l.strip_prefix("session ")?.split("socks=127.0.0.1:").nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("the client did not say its SOCKS port\n{}", dump(&session.client)));

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

    // Files made on the compute node, in the job, for the explorer to show.
    let hello = format!("hello-from-{node}.txt");
    lab.sh_ok(
        Some(USER),
        &node,
        &format!(
            "mkdir -p ~/{folder}/results && echo \"written on $(hostname) in job {job}\" > ~/{folder}/{hello} && \
             printf '# notes\\n' > ~/{folder}/notes.md"
        ),
    );

    // Chromium on the laptop, as alice, through the SOCKS port of the client's ssh -D.
    let script = format!("workbench-{tag}.mjs");
    let shot_name = format!("workbench-{tag}.png");
    std::fs::write(laptop_home.join(&script), WORKBENCH_SCRIPT).expect("write the workbench script");
    let typed = format!("typed in Chromium on the laptop, saved in job {job}");
    let url = format!("http://127.0.0.1:{}/?folder=/home/{USER}/{folder}", session.relay_port);
    let shot_on_laptop = format!("/home/{USER}/{shot_name}");
    let socks = socks_port.to_string();
    say(&format!("Chromium opens {url} through socks5://127.0.0.1:{socks_port}"));
    let browsed = Instant::now();
    let mut browser = lab.spawn(
        Some(USER),
        "laptop",
        &[
            "node",
            &script,
            "--playwright",
            PLAYWRIGHT_DIR,
            "--url",
            &url,
            "--socks",
            &socks,
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
        ],
    );
    let observed = run_browser(&mut browser);
    let status = browser.wait(Duration::from_secs(30));

    // The picture first, whatever happened: it shows where things stopped.
    let shot = artifacts_dir().join("workbench.png");
    let _ = std::fs::remove_file(&shot);
    let shot_taken = std::fs::copy(laptop_home.join(&shot_name), &shot).is_ok();
    let _ = std::fs::remove_file(laptop_home.join(&shot_name));
    let _ = std::fs::remove_file(laptop_home.join(&script));
    assert!(
        observed.has("done") && status.is_some_and(|s| s.success()),
        "the browser run failed ({status:?}); screenshot: {}\n{}\nclient:\n{}",
        if shot_taken { shot.display().to_string() } else { "none".to_owned() },
        dump(&browser),
        dump(&session.client)
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
    assert_eq!(output, [node.as_str(), job.to_string().as_str()], "terminal rows: {terminal:?}");

    // (c) Ctrl+S saved the typed text on the node.
    assert_eq!(observed.values("saved"), ["notes.md"]);
    let content = wait_until(
        "the saved file on the node",
        Duration::from_secs(10),
        || lab.sh(Some(USER), &node, &format!("cat ~/{folder}/notes.md")),
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
