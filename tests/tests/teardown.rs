//! Run last, on its own (`tests/test-all` does): it takes the lab down and
//! proves nothing of it is left. Ignored by default so that a plain
//! `cargo test` never pulls the cluster out from under other tests.

use vscode_slurm_tests::{stderr_of, stdout_of, Lab};

fn init_pids(lab: &Lab) -> String {
    ["laptop", "login", "head", "c1", "c2"].map(|h| lab.read(&format!("pids/{h}"))).join(",")
}

#[test]
#[ignore = "takes the lab down; run by tests/test-all after every other test"]
fn up_twice_is_harmless_and_down_leaves_nothing_even_with_work_running() {
    let lab = Lab::get();
    let before = init_pids(&lab);
    let htcondor = lab.scheduler() == "htcondor";
    let again = lab.labctl(if htcondor { &["up", "--scheduler", "htcondor"] } else { &["up"] });
    assert!(again.status.success(), "second `up` failed: {}", stderr_of(&again));
    assert_eq!(init_pids(&lab), before, "a second `up` restarted the hosts");

    // Leave real work running: a batch job and an open ssh session.
    let batch = if htcondor {
        "printf '%s\\n' 'executable = /bin/sleep' 'arguments = 600' 'queue' | condor_submit -terse -"
    } else {
        "sbatch --wrap 'sleep 600'"
    };
    lab.sh_ok(Some("alice"), "login", batch);
    let _session = lab.spawn(Some("alice"), "laptop", &["ssh", "login", "sleep", "600"]);
    vscode_slurm_tests::wait_until(
        "the ssh session to be open",
        std::time::Duration::from_secs(10),
        || stdout_of(&lab.sh(None, "login", "pgrep -u alice -x sleep || true")),
        |pids| !pids.trim().is_empty(),
    );

    for round in 1..=2 {
        let down = lab.labctl(&["down"]);
        assert!(down.status.success(), "down #{round} failed: {}", stderr_of(&down));
        let check = lab.labctl(&["check-clean"]);
        assert!(check.status.success(), "after down #{round}: {}", stdout_of(&check));
    }
}
