//! Another user who guesses a session's log or tee path (`/tmp/x-%p.in`)
//! and puts a link or a file of their own there first gets nothing: the
//! shim says why in one line, starts no job, and writes nothing there.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use vscode_slurm_tests::TempDir;

/// Runs a `--no-profile` session whose salloc only records that it ran.
fn shim(dir: &Path, flag: &str, path: &Path) -> (Option<i32>, String) {
    let salloc = dir.join("salloc");
    std::fs::write(&salloc, format!("#!/bin/sh\ntouch '{}'\n", dir.join("salloc-ran").display())).unwrap();
    std::fs::set_permissions(&salloc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vscode-shim"))
        .args(["--no-profile", "--salloc"])
        .arg(&salloc)
        .arg(flag)
        .arg(path)
        .arg("--")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Every option that names a file the shim writes refuses `path`.
fn assert_refused(dir: &Path, path: &Path, why: &str) {
    for flag in ["--tee-stdin", "--tee-stdout", "--tee-stderr", "--log-file"] {
        assert_refused_by(dir, flag, path, why);
    }
}

fn assert_refused_by(dir: &Path, flag: &str, path: &Path, why: &str) {
    let (code, stderr) = shim(dir, flag, path);
    assert_eq!(code, Some(1), "{flag} {}: {stderr}", path.display());
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("vscode-shim: cannot open the ") && stderr.contains(why), "{stderr}");
    assert!(!dir.join("salloc-ran").exists(), "no job was started for {flag}");
}

#[test]
fn planted_links_and_files_of_others_are_refused_and_left_untouched() {
    let scratch = TempDir::new("planted");
    let dir = &scratch.0;
    // A link to a file of bob's, where alice's tee would go.
    let victim = dir.join("bobs-file");
    std::fs::write(&victim, "bob's").unwrap();
    let link = dir.join("alice-1234.out");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    assert_refused(dir, &link, "symbolic link");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "bob's");

    // A file of bob's own at the path.
    let planted = dir.join("alice-1234.in");
    std::fs::write(&planted, "").unwrap();
    // As root the planted file is made another user's; otherwise a second
    // name does the same job: the file is not the session's alone.
    // SAFETY: getuid cannot fail.
    let why = if unsafe { libc::getuid() } == 0 {
        std::os::unix::fs::chown(&planted, Some(65534), None).unwrap();
        "belongs to uid 65534"
    } else {
        std::fs::hard_link(&planted, dir.join("bobs-name")).unwrap();
        "other names"
    };
    assert_refused(dir, &planted, why);
    assert_eq!(std::fs::metadata(&planted).unwrap().len(), 0, "nothing was written");
    assert!(std::fs::metadata(&planted).unwrap().nlink() >= 1);
}
