//! 100 sessions in a row, alternating the exec-server and legacy launch
//! scripts: each exchanges data and closes, and leaves nothing behind; the
//! shim's and helper's peak memory does not grow over the run.

use std::time::Duration;
use vscode_slurm_tests::session::{assert_nothing_left, Session, SessionOptions};
use vscode_slurm_tests::Lab;

const SESSIONS: usize = 100;

/// Peak resident memory (VmHWM, KiB) of alice's only process matching `pattern` on `host`.
fn peak_rss_kib(lab: &Lab, host: &str, pattern: &str) -> u64 {
    let script = format!("grep VmHWM /proc/$(pgrep -u alice -f '{pattern}' | head -n 1)/status");
    let line = lab.sh_ok(None, host, &script);
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap_or_else(|| panic!("VmHWM: {line}"))
}

#[test]
fn a_hundred_sessions_in_a_row_leave_nothing_and_do_not_grow() {
    let lab = Lab::get();
    let mut shim_peaks = Vec::new();
    let mut helper_peaks = Vec::new();
    for round in 0..SESSIONS {
        let mode = if round % 2 == 0 { "exec-server" } else { "legacy" };
        let mut session = Session::open(&lab, SessionOptions { mode, ..Default::default() });
        let job = session.job_id();
        let node = session.node();
        session.client.send("echo 262144");
        let echoed = session.client.expect_line("`echo ok`", Duration::from_secs(20), |l| {
            l.starts_with("echo ok") || l.starts_with("error")
        });
        assert_eq!(echoed, "echo ok 262144", "round {round} ({mode}): data exchange failed");
        shim_peaks.push(peak_rss_kib(&lab, "login", "^vscode-shim"));
        helper_peaks.push(peak_rss_kib(&lab, &node, "^/usr/local/bin/vscode-job-helper"));
        session.close();
        assert_nothing_left(&lab, "alice", job, Duration::from_secs(15));
    }
    // Ten sessions to settle, then no growth beyond page-granularity noise.
    for (name, peaks) in [("vscode-shim", &shim_peaks), ("vscode-job-helper", &helper_peaks)] {
        let early = peaks[..10].iter().max().copied().unwrap_or_default();
        let late = peaks[SESSIONS - 10..].iter().max().copied().unwrap_or_default();
        println!("{name}: peak RSS first ten {early} KiB, last ten {late} KiB");
        assert!(
            late <= early + 256,
            "{name} peak RSS grew from {early} KiB to {late} KiB over {SESSIONS} sessions"
        );
    }
}
