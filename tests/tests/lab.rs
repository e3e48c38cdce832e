//! The lab itself: the proving ground must be what it claims before anything
//! proven on it counts.

use std::time::Duration;
use vscode_slurm_tests::{release, stderr_of, stdout_of, wait_until, Lab};

#[test]
fn laptop_reaches_the_login_node_over_real_ssh() {
    let lab = Lab::get();
    let out = lab.labctl(&["ssh", "login", "hostname"]);
    assert!(out.status.success(), "ssh login hostname failed: {}", stderr_of(&out));
    assert_eq!(stdout_of(&out).trim(), "login");
    // Host key checking is on, so this was the lab's own sshd, authenticated by key.
    let whoami = lab.labctl(&["ssh", "-u", "bob", "login", "id", "-un"]);
    assert_eq!(stdout_of(&whoami).trim(), "bob");
}

#[test]
fn laptop_cannot_reach_compute_nodes_or_head() {
    let lab = Lab::get();
    for target in ["10.77.1.11", "10.77.1.12", "10.77.1.2"] {
        let out = lab.sh(Some("alice"), "laptop", &format!("exec 3<>/dev/tcp/{target}/6818"));
        assert!(!out.status.success(), "laptop reached {target}");
        assert!(
            stderr_of(&out).contains("unreachable"),
            "expected 'Network is unreachable' for {target}, got: {}",
            stderr_of(&out)
        );
    }
    // The login node does reach the cluster network (slurmd's port on c1).
    lab.sh_ok(Some("alice"), "login", "exec 3<>/dev/tcp/10.77.1.11/6818");
}

#[test]
fn root_namespace_has_no_route_to_the_lab() {
    let out = std::process::Command::new("ip").args(["route", "get", "10.77.1.11"]).output().unwrap();
    let text = stdout_of(&out);
    // Whatever route the machine has for it, it is not through a lab interface.
    for lab_iface in ["br0", "p-c1", "eth1 "] {
        assert!(!text.contains(&format!("dev {lab_iface}")), "root namespace routes to the lab: {text}");
    }
    let links = stdout_of(&std::process::Command::new("ip").args(["-o", "link"]).output().unwrap());
    assert!(!links.contains("p-c1") && !links.contains("br0"), "lab interface in root namespace: {links}");
}

#[test]
fn hosts_have_their_own_names_and_node_local_tmp_but_share_home() {
    let lab = Lab::get();
    for host in ["laptop", "login", "head", "c1", "c2"] {
        assert_eq!(lab.sh_ok(None, host, "hostname").trim(), host);
    }
    lab.sh_ok(Some("alice"), "c1", "echo from-c1 > /tmp/marker && echo shared > ~/shared-marker");
    let on_c2 = lab.sh(Some("alice"), "c2", "cat /tmp/marker");
    assert!(!on_c2.status.success(), "c1's /tmp is visible on c2");
    assert_eq!(lab.sh_ok(Some("alice"), "login", "cat ~/shared-marker").trim(), "shared");
    let on_laptop = lab.sh(Some("alice"), "laptop", "cat ~/shared-marker");
    assert!(!on_laptop.status.success(), "the laptop shares the cluster's home");
    lab.sh_ok(Some("alice"), "login", "rm ~/shared-marker");
}

#[test]
fn interactive_allocation_runs_on_a_compute_node() {
    let lab = Lab::get();
    let out = lab.labctl(&["ssh", "login", "salloc", "-N1", "srun", "hostname"]);
    assert!(out.status.success(), "salloc failed: {}", stderr_of(&out));
    let host = stdout_of(&out);
    assert!(["c1", "c2"].contains(&host.trim()), "ran on {host:?}");
}

#[test]
fn job_fed_through_stdin_runs_on_a_compute_node() {
    let lab = Lab::get();
    // A bare salloc with use_interactive_step runs a shell on the first node,
    // reading commands from stdin: the shape a RemoteCommand session has.
    let out = lab.sh(
        Some("alice"),
        "laptop",
        "echo 'echo host=$(hostname) job=$SLURM_JOB_ID' | ssh -T login salloc",
    );
    assert!(out.status.success(), "stdin-fed salloc failed: {}", stderr_of(&out));
    let text = stdout_of(&out);
    assert!(text.contains("host=c1") || text.contains("host=c2"), "got {text:?}");
    assert!(!text.contains("job= "), "no job id in the step: {text:?}");
}

#[test]
fn sbatch_and_scancel_work_and_the_epilog_runs_for_every_job() {
    let lab = Lab::get();
    let long_job = lab.running_batch_job("alice", "--wrap 'sleep 300'", Duration::from_secs(20));
    let node = lab.sh_ok(None, "login", &format!("squeue -h -j {long_job} -o %N")).trim().to_owned();
    let sleeps = || lab.sh_ok(None, &node, "pgrep -u alice -x sleep || true");
    // Cancelled once its script runs: RUNNING in the queue comes before the
    // launch on the node, and a cancel overtaking the launch is not this test.
    wait_until("the job's script to run", Duration::from_secs(20), sleeps, |pids| !pids.trim().is_empty());
    lab.sh_ok(Some("alice"), "login", &format!("scancel {long_job}"));
    wait_until(
        "the cancelled job to leave the queue",
        Duration::from_secs(20),
        || lab.sh_ok(Some("alice"), "login", "squeue -h -u alice -o %i"),
        |ids| !ids.split_whitespace().any(|id| id == long_job.to_string()),
    );
    // The cancel ended the script on the node too, not only the queue entry
    // (a leftover would also fail every later test's "nothing left" check).
    wait_until(
        &format!("job {long_job}'s sleep to end on {node}"),
        Duration::from_secs(20),
        sleeps,
        |pids| pids.trim().is_empty(),
    );
    let quick = lab.sh_ok(Some("bob"), "login", "sbatch --parsable -N2 --wrap 'srun hostname'");
    let two_node_job: u32 = quick.trim().parse().expect("job id");
    // Each job ends with one epilog line per node it ran on.
    for (job, nodes) in [(long_job, 1), (two_node_job, 2)] {
        wait_until(
            &format!("epilog lines for job {job} on {nodes} node(s)"),
            Duration::from_secs(30),
            || epilog_lines(&lab, job),
            |lines| lines.len() == nodes,
        );
    }
}

#[test]
fn the_plugin_is_configured_as_required() {
    let lab = Lab::get();
    let conf = lab.read("etc/slurm/plugstack.conf.d/vscode.conf");
    if lab.dir.join("lib/spank_vscode.so").exists() {
        assert!(conf.starts_with("required "), "plugstack line: {conf:?}");
    } else {
        assert!(conf.starts_with('#'), "plugstack line without a plugin: {conf:?}");
    }
}

/// What the plugin's epilog relies on, in every release: salloc/sbatch
/// `--vscode` sets the job-control variable that reaches the job's epilog as
/// `SPANK_VSCODE=1` (the lab's epilog script logs it); other jobs have none.
#[test]
fn the_epilog_sees_spank_vscode_for_vscode_jobs_only() {
    let lab = Lab::get();
    let submit = |args: &str| -> u32 {
        let out = lab.sh_ok(Some("alice"), "login", &format!("sbatch --parsable {args} --wrap true"));
        out.trim().parse().unwrap_or_else(|_| panic!("no job id from sbatch {args}: {out:?}"))
    };
    for (args, wanted) in [("--vscode", "vscode=1"), ("", "vscode=")] {
        let job = submit(args);
        let lines = wait_until(
            &format!("the epilog line of job {job} (sbatch {args})"),
            Duration::from_secs(30),
            || epilog_lines(&lab, job),
            |lines| !lines.is_empty(),
        );
        assert!(lines[0].ends_with(&format!(" {wanted}")), "sbatch {args}: {lines:?}");
    }
}

/// The lab runs the release the tests expect on every cluster host, from
/// that release's Debian suite: Slurm's own programs say so, and so does the
/// root each host runs on (22.05: this machine's). The laptop is the user's
/// machine and stays on this machine's root whatever the cluster runs.
#[test]
fn every_cluster_host_runs_the_release_under_test_from_its_suite() {
    let lab = Lab::get();
    let env = stdout_of(&lab.labctl(&["env"]));
    let suite = env.lines().find_map(|l| l.strip_prefix("SUITE=")).expect("SUITE= in labctl env").to_owned();
    let machine = std::fs::read_to_string("/etc/os-release").expect("this machine's os-release");
    let codename = |os_release: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
            .unwrap_or("")
            .trim_matches('"')
            .to_owned()
    };
    let wanted = format!("slurm-wlm {}.", release());
    for (host, program) in
        [("login", "sinfo"), ("login2", "squeue"), ("head", "slurmctld"), ("c1", "slurmd"), ("c2", "slurmd")]
    {
        let version = lab.sh_ok(None, host, &format!("{program} -V"));
        assert!(version.starts_with(&wanted), "{program} -V on {host}: {version:?}, want {wanted}x");
        assert_eq!(codename(&lab.sh_ok(None, host, "cat /etc/os-release")), suite, "{host}'s root");
    }
    assert_eq!(
        codename(&lab.sh_ok(None, "laptop", "cat /etc/os-release")),
        codename(&machine),
        "the laptop's root"
    );
}

/// The epilog's lines about `job` so far.
fn epilog_lines(lab: &Lab, job: u32) -> Vec<String> {
    lab.read("log/epilog.log")
        .lines()
        .filter(|l| l.contains(&format!(" job={job} ")))
        .map(str::to_owned)
        .collect()
}
