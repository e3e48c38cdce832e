//! `vscode-shim doctor` on the lab's login node: every check passes on the
//! healthy lab (including a real `salloc --vscode` job on a compute node),
//! and with the plugin gone from plugstack, or built for another Slurm
//! release, it fails and says how to fix it.

use std::fs;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use vscode_slurm_tests::{
    elf_symbol_offset, plugin_version, release, release_number, stderr_of, stdout_of, wait_until, Lab,
    RestoreFile,
};

fn doctor(lab: &Lab, args: &str) -> Output {
    lab.sh(Some("alice"), "login", &format!("vscode-shim doctor {args}"))
}

/// The report of a doctor run that must fail (exit status 1).
fn failing_doctor(lab: &Lab, args: &str) -> String {
    let out = doctor(lab, args);
    let report = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{report}{}", stderr_of(&out));
    report
}

/// The doctor's job must be gone when it returns.
fn assert_no_job_left(lab: &Lab) {
    wait_until(
        "alice's jobs to leave the queue",
        Duration::from_secs(30),
        || lab.sh_ok(None, "login", "squeue -h -u alice -o '%i %j %T'"),
        |queue| queue.trim().is_empty(),
    );
}

#[test]
fn doctor_passes_on_the_healthy_lab() {
    let lab = Lab::get();
    let out = doctor(&lab, "");
    let report = stdout_of(&out);
    assert!(
        out.status.success(),
        "doctor failed on the healthy lab ({}):\n{report}{}",
        out.status,
        stderr_of(&out)
    );
    for wanted in [
        "ok    salloc found: /usr/bin/salloc",
        "ok    vscode-job-helper found: /usr/local/bin/vscode-job-helper",
        "ok    plugin loaded: salloc --help lists --vscode",
    ] {
        assert!(report.lines().any(|l| l == wanted), "no `{wanted}` in:\n{report}");
    }
    let job = report
        .lines()
        .find(|l| l.starts_with("ok    helper in a job: "))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        job.ends_with("ran on c1, bind address 10.77.1.11")
            || job.ends_with("ran on c2, bind address 10.77.1.12"),
        "the test job must run on a compute node with its address: {job}"
    );
    assert_eq!(report.lines().last(), Some("all checks ok"));
    assert!(!report.contains("FAIL"), "{report}");
    assert_no_job_left(&lab);
}

/// A real job whose helper cannot run: the in-job check fails with the node
/// and the fix, and the exit status says so.
#[test]
fn doctor_fails_when_the_helper_cannot_run_in_the_job() {
    let lab = Lab::get();
    let report = failing_doctor(&lab, "--helper /opt/nowhere/vscode-job-helper");
    assert!(
        report.contains("FAIL  /opt/nowhere/vscode-job-helper found: not an executable file"),
        "{report}"
    );
    let line = report
        .lines()
        .position(|l| l.starts_with("FAIL  helper in a job: "))
        .unwrap_or_else(|| panic!("{report}"));
    let lines: Vec<&str> = report.lines().collect();
    assert!(lines[line].contains("/opt/nowhere/vscode-job-helper does not run on c"), "{report}");
    assert!(lines[line + 1].starts_with("      fix: install vscode-job-helper on c"), "{report}");
    assert_eq!(lines.last(), Some(&"2 check(s) failed"));
    assert_no_job_left(&lab);
}

/// The newest job named vscode-doctor and its state, from slurmctld's
/// records (kept for MinJobAge after the job ends).
fn last_doctor_job(lab: &Lab) -> Option<(u32, String)> {
    let jobs = lab.sh_ok(None, "login", "scontrol -o show jobs 2>/dev/null; true");
    jobs.lines()
        .filter(|l| l.contains(" JobName=vscode-doctor "))
        .filter_map(|l| {
            let field = |key: &str| l.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_owned);
            Some((field("JobId=")?.parse().ok()?, field("JobState=")?))
        })
        .max()
}

/// A test job that cannot start (here: asked to begin in an hour) is given
/// up after --wait and cancelled, not left in the queue.
#[test]
fn doctor_gives_up_on_a_queued_test_job_and_cancels_it() {
    let lab = Lab::get();
    let before = last_doctor_job(&lab).map(|(id, _)| id);
    let report = failing_doctor(&lab, "--wait 2 -- --begin=now+1hour");
    assert!(
        report.contains("FAIL  helper in a job: the test job did not finish within 2s (still queued?)"),
        "{report}"
    );
    assert!(report
        .contains("      fix: retry with a larger --wait, or give a partition with free nodes after --"));
    assert_no_job_left(&lab);
    let (id, state) = last_doctor_job(&lab).expect("the doctor's job in slurmctld's records");
    assert!(Some(id) > before, "no new vscode-doctor job was submitted (last {before:?})");
    assert_eq!(state, "CANCELLED", "job {id}");
}

/// The lab's plugstack file, put back when the guard drops so that later
/// tests see the plugin; the files a test adds to the lab go with it.
fn restore_plugstack_later(lab: &Lab) -> RestoreFile {
    let restore = RestoreFile::new(lab.dir.join("etc/slurm/plugstack.conf.d/vscode.conf"));
    let text = String::from_utf8_lossy(&restore.text);
    assert!(text.starts_with("required "), "the lab should have the plugin enabled: {text}");
    restore
}

/// After a test: the file is back and salloc knows --vscode again.
fn assert_restored(lab: &Lab, path: &PathBuf, text: &str) {
    assert_eq!(fs::read_to_string(path).unwrap(), text);
    let help = lab.sh_ok(Some("alice"), "login", "salloc --help");
    assert!(help.lines().any(|l| l.trim_start().starts_with("--vscode")), "plugin not back:\n{help}");
}

/// A plugin of another Slurm release, as an admin gets by installing the
/// package built for the wrong release: the lab's own plugin with the
/// `plugin_version` Slurm checks changed to 23.11.5.
#[test]
fn doctor_names_the_package_when_the_plugin_is_for_another_release() {
    let lab = Lab::get();
    let mut restore = restore_plugstack_later(&lab);
    let (path, text) = (restore.path.clone(), String::from_utf8_lossy(&restore.text).into_owned());
    {
        let plugin = lab.dir.join("lib/spank_vscode.so");
        let mut elf = fs::read(&plugin).expect("the lab's plugin");
        let at = elf_symbol_offset(&elf, "plugin_version");
        let ours = plugin_version(&elf);
        assert_eq!(ours >> 8, release_number(), "the lab's plugin should be for {}: {ours:#x}", release());
        elf[at..at + 4].copy_from_slice(&0x17_0b_05u32.to_le_bytes());
        let other = lab.dir.join("lib/spank_vscode-23.11.so");
        restore.added.push(other.clone());
        fs::write(&other, elf).unwrap();
        fs::write(&path, format!("required {}\n", other.display())).unwrap();

        let report = failing_doctor(&lab, "");
        let lines: Vec<&str> = report.lines().collect();
        let fail = lines
            .iter()
            .position(|l| {
                l.starts_with("FAIL  plugin loaded: the plugin is built for another Slurm release (")
            })
            .unwrap_or_else(|| panic!("no release failure in:\n{report}"));
        assert!(lines[fail].contains(&format!("{} version (23.11.5)", other.display())), "{report}");
        assert_eq!(
            lines[fail + 1],
            format!(
                "      fix: install vscode-slurm-slurm{} (built for this Slurm) on every node instead",
                release()
            )
        );
        assert_no_job_left(&lab);
        drop(restore);
    }
    assert_restored(&lab, &path, &text);
}

#[test]
fn doctor_fails_and_prints_the_fix_when_the_plugin_is_missing() {
    let lab = Lab::get();
    let restore = restore_plugstack_later(&lab);
    let (path, text) = (restore.path.clone(), String::from_utf8_lossy(&restore.text).into_owned());
    {
        let _restore = restore;
        // As on a login node where the package was never enabled.
        fs::write(&path, "# vscode-slurm not enabled\n").unwrap();
        let report = failing_doctor(&lab, "");
        let lines: Vec<&str> = report.lines().collect();
        let fail = lines
            .iter()
            .position(|l| *l == "FAIL  plugin loaded: salloc --help does not list --vscode")
            .unwrap_or_else(|| panic!("no plugin failure in:\n{report}"));
        assert!(
            lines[fail + 1].starts_with(&format!(
                "      fix: add `required /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_vscode.so` (rpm: /usr/lib64/slurm/) \
                 to plugstack.conf or plugstack.conf.d/vscode.conf on every node, from the package \
                 vscode-slurm-slurm{}",
                release()
            )),
            "{report}"
        );
        assert!(lines.contains(&"skip  helper in a job: needs the plugin"), "{report}");
        assert_eq!(lines.last(), Some(&"1 check(s) failed"));
        assert_no_job_left(&lab);
    }
    assert_restored(&lab, &path, &text);
}
