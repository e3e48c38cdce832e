//! Eight sessions of two users at once on two nodes: every client reaches
//! only its own server, in its own job.

use std::collections::BTreeSet;
use std::time::Duration;
use vscode_slurm_tests::session::{assert_nothing_left, json_field, Session, SessionOptions};
use vscode_slurm_tests::Lab;

#[test]
fn eight_sessions_of_two_users_each_reach_their_own_server() {
    let lab = Lab::get();
    let users = ["alice", "bob", "alice", "bob", "alice", "bob", "alice", "bob"];
    let mut sessions: Vec<Session> = std::thread::scope(|scope| {
        let opening: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(i, user)| {
                let lab = &lab;
                let mode = if i % 2 == 0 { "legacy" } else { "exec-server" };
                // A profile each: windows of one profile would share a job on purpose.
                let remote_command = format!("vscode-shim --profile concurrent-{i} -- --time=10");
                scope.spawn(move || {
                    let options = SessionOptions {
                        user,
                        mode,
                        remote_command: Some(&remote_command),
                        ..Default::default()
                    };
                    Session::open(lab, options)
                })
            })
            .collect();
        opening.into_iter().map(|handle| handle.join().expect("a session failed to open")).collect()
    });

    let jobs: BTreeSet<u32> = sessions.iter().map(Session::job_id).collect();
    assert_eq!(jobs.len(), 8, "sessions shared a job: {jobs:?}");
    let nodes: BTreeSet<String> = sessions.iter().map(Session::node).collect();
    assert_eq!(nodes.len(), 2, "all sessions on {nodes:?}; want both nodes used");

    // With all eight open, each asks again: the answer is from its own job, as its own user.
    for session in &mut sessions {
        let job = session.job_id();
        let own = lab.sh_ok(None, "login", &format!("squeue -h -j {job} -o %u"));
        assert_eq!(own.trim(), session.user, "job {job} belongs to someone else");
        let answer = session.get();
        assert_eq!(json_field(&answer, "job_id"), Some(job.to_string()), "crossed wires: {answer}");
        assert_eq!(json_field(&answer, "user"), Some(session.user.clone()), "crossed wires: {answer}");
    }

    let closing: Vec<(String, u32)> = sessions.iter().map(|s| (s.user.clone(), s.job_id())).collect();
    std::thread::scope(|scope| {
        for session in sessions {
            scope.spawn(move || session.close());
        }
    });
    for (user, job) in closing {
        assert_nothing_left(&lab, &user, job, Duration::from_secs(20));
    }
}
