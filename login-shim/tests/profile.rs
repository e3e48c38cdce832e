//! The default (profile) path without Slurm and without root: the real
//! `vscode-shim` and the real `vscode-job-helper` (as each window's helper
//! and as the job's keeper) against the fake Slurm of `common`. VS Code's
//! part is played here: the launch script goes in on the shim's stdin, the
//! `listeningOn` line comes back on its stdout, and connections go to the
//! relay's port; the script's server is a small python3 echo server on the
//! socket the helper gives it.
//!
//! Nothing here needs root: the job's runtime directory is a 0700 directory
//! of the user's, the door listens on 127.0.0.1, and the relay's and the
//! door's owner checks find the user's own processes. The one thing the
//! fake cannot do is a cgroup; see `common` for how a job's end is played.

mod common;

use std::process::{Command, Stdio};

use common::{exchange, helper, Cluster, Pidfd, BOUND};

/// The job's keeper, found by its pid in the fake's record.
fn keeper(cluster: &Cluster, job: u32) -> Pidfd {
    Pidfd::open(cluster.job_file(job, "pid").parse().unwrap()).expect("the keeper runs")
}

#[test]
fn a_first_window_submits_one_job_and_its_server_is_reached_through_the_relay() {
    let cluster = Cluster::new();
    let mut shim = cluster.shim("first", &["--linger", "0"]);
    shim.send(&cluster.launch_script("w1"));
    let listening = shim.stdout_line("listeningOn==");
    let (job, relay_port) = shim.window();

    // One job, submitted as the profile's, whose batch script is the keeper.
    assert_eq!(
        cluster.calls("sbatch"),
        [[
            "--parsable",
            "--vscode",
            "--no-requeue",
            "--output=/dev/null",
            "--error=/dev/null",
            "--job-name=vscode:first",
            "--vscode-linger=0",
            "--time=10:00",
            &format!("--wrap=exec '{}' keep", helper().display()),
        ]]
    );
    // The window is a step of it that has the keeper start the script.
    assert_eq!(
        cluster.calls("srun"),
        [[
            &format!("--jobid={job}"),
            "--overlap",
            "--vscode",
            "--export=ALL",
            "--nodes=1",
            "--ntasks=1",
            "--kill-on-bad-exit=1",
            "--job-name=vscode:first",
            "--unbuffered",
            &helper().display().to_string(),
            "--through-keeper",
        ]]
    );
    let shells = cluster.pids("home/shells");
    assert_eq!(shells.len(), 1, "one launch script ran");
    let script = Pidfd::open(shells[0]).expect("the launch script's shell runs");
    assert!(!script.exited());

    // VS Code is told the relay's port, and the relay reaches the server
    // the script started, on a socket in the job's private runtime directory.
    assert_eq!(listening, format!("listeningOn=={relay_port}=="));
    let socket = cluster.read("home/server.sock");
    assert!(
        socket.trim().starts_with(&format!("{}/server-", cluster.runtime_dir(job).display())),
        "the server was not moved to the runtime directory: {socket:?}"
    );
    let server: i32 = cluster.read("home/server.pid").trim().parse().unwrap();
    assert_eq!(exchange(relay_port, 1), server);
    assert_eq!(exchange(relay_port, 2), server, "a second connection of the window");

    // The script runs in the job without the session's secrets, and what
    // VS Code reads is the script's output without our control lines.
    assert_eq!(shim.stdout_line("job: "), format!("job: {job}, secrets: none none none"));
    assert_eq!(
        shim.stdout(),
        format!("w1: running\njob: {job}, secrets: none none none\nw1: start\nexitCode==0==\n{listening}\nw1: end\n")
    );
    cluster.wait_for_comments(job, &["vscode:windows=1"]);

    shim.close_stdin();
    assert_eq!(shim.wait_exit().code(), Some(0), "stderr: {}", shim.stderr());
    assert!(shim.shim_lines().is_empty(), "a clean session says nothing: {}", shim.stderr());
    assert_eq!(cluster.calls("sbatch").len(), 1);
    assert!(cluster.calls("scancel").is_empty(), "nothing was cancelled");
}

#[test]
fn a_second_window_of_the_profile_joins_the_running_job() {
    let cluster = Cluster::new();
    let mut first = cluster.shim("shared", &[]);
    first.send(&cluster.launch_script("w1"));
    first.stdout_line("listeningOn==");
    let (job, first_port) = first.window();
    let server = exchange(first_port, 1);

    let mut second = cluster.shim("shared", &[]);
    second.wait_for_stderr(&format!("vscode-shim: joining job {job} of profile shared\n"));
    second.send(&cluster.launch_script("w2"));
    let listening = second.stdout_line("listeningOn==");
    let (second_job, second_port) = second.window();

    assert_eq!(second_job, job);
    assert_ne!(second_port, first_port, "each window has a relay of its own");
    assert_eq!(listening, format!("listeningOn=={second_port}=="));
    assert_eq!(cluster.calls("sbatch").len(), 1, "no second job");
    let steps: Vec<String> = cluster.calls("srun").iter().map(|args| args[0].clone()).collect();
    assert_eq!(steps, [format!("--jobid={job}"), format!("--jobid={job}")]);
    assert_eq!(cluster.pids("home/shells").len(), 2, "each window's script ran in the job");

    // The second window's script found the server the first one started,
    // and both relays reach it while both windows are attached.
    assert_eq!(exchange(second_port, 2), server);
    assert_eq!(exchange(first_port, 3), server);
    cluster.wait_for_comments(job, &["vscode:windows=1", "vscode:windows=2"]);
    assert_eq!(cluster.state(job), "RUNNING");
    assert!(first.shim_lines().is_empty(), "{}", first.stderr());
}

#[test]
fn the_last_window_closing_with_linger_0_ends_the_job_and_leaves_nothing_running() {
    let cluster = Cluster::new();
    let mut first = cluster.shim("last", &["--linger", "0"]);
    first.send(&cluster.launch_script("w1"));
    first.stdout_line("listeningOn==");
    let (job, _) = first.window();
    let mut second = cluster.shim("last", &["--linger", "0"]);
    second.send(&cluster.launch_script("w2"));
    second.stdout_line("listeningOn==");
    let (_, second_port) = second.window();
    cluster.wait_for_comments(job, &["vscode:windows=2"]);

    // Every process the job has: the keeper, each window's helper (the
    // step srun became), each window's script and the server.
    let keeper = keeper(&cluster, job);
    let helpers: Vec<Pidfd> =
        cluster.pids(&format!("jobs/{job}/steps")).into_iter().map(|pid| Pidfd::open(pid).unwrap()).collect();
    let shells: Vec<Pidfd> =
        cluster.pids("home/shells").into_iter().map(|pid| Pidfd::open(pid).unwrap()).collect();
    let server = Pidfd::open(cluster.read("home/server.pid").trim().parse().unwrap()).unwrap();
    assert_eq!((helpers.len(), shells.len()), (2, 2));

    // The first window leaves: its step ends, the job stays for the other.
    first.close_stdin();
    assert_eq!(first.wait_exit().code(), Some(0), "stderr: {}", first.stderr());
    assert!(helpers[0].wait(BOUND), "the first window's helper still runs");
    cluster.wait_for_comments(job, &["vscode:windows=2", "vscode:windows=1"]);
    assert!(!keeper.exited(), "the keeper left with a window attached");
    assert_eq!(cluster.state(job), "RUNNING");
    assert_eq!(exchange(second_port, 1), server.pid, "the server outlived the window that started it");

    // The last one leaves: with no linger, the keeper ends the job at once.
    second.close_stdin();
    assert_eq!(second.wait_exit().code(), Some(0), "stderr: {}", second.stderr());
    assert!(keeper.wait(BOUND), "the keeper still runs after the last window left");
    // The batch step's monitor records how the keeper ended, then ends the job.
    let monitor = Pidfd::open(cluster.job_file(job, "monitor").parse().unwrap());
    assert!(monitor.map_or(true, |m| m.wait(BOUND)), "the fake job's end never came");
    assert_eq!(cluster.job_file(job, "exit"), "0", "the keeper ended by itself, not by a signal");
    assert_eq!(cluster.state(job), "COMPLETED");
    for (what, process) in
        [("helper", &helpers[1]), ("script", &shells[0]), ("script", &shells[1]), ("server", &server)]
    {
        assert!(process.wait(BOUND), "the {what} with pid {} still runs after the job ended", process.pid);
    }
    assert!(!cluster.runtime_dir(job).join("keeper.sock").exists(), "the keeper left its socket behind");
    assert!(first.shim_lines().is_empty(), "{}", first.stderr());
    assert_eq!(second.shim_lines(), [format!("vscode-shim: joining job {job} of profile last")]);
    assert!(cluster.calls("scancel").is_empty(), "the job ended by itself, not by scancel");
}

#[test]
fn a_bad_profile_name_is_one_line_and_exit_2_without_asking_slurm() {
    let cluster = Cluster::new();
    let mut shim = cluster.shim("bad name", &[]);
    shim.close_stdin();
    let status = shim.wait_exit();
    let stderr = shim.stderr();
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(
        stderr,
        "vscode-shim: --profile 'bad name' is not a usable name: use up to 40 letters, digits, '-', '_' or '.', \
         e.g. --profile gpu\n"
    );
    assert!(shim.stdout().is_empty());
    assert_eq!(cluster.read("calls"), "", "no Slurm command ran");
    // The same without the fakes at hand: the name is refused before anything else.
    let output = Command::new(env!("CARGO_BIN_EXE_vscode-shim"))
        .args(["--profile", "a;rm", "--sbatch", "/nonexistent/sbatch", "--"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&output.stderr).lines().count(), 1);
}
