//! The packages as an admin gets them: `packaging/build` makes a .deb and an
//! .rpm named for the Slurm release of the headers (the lab's release: this
//! machine's headers for 22.05, `--slurm R` for the others); the .deb,
//! installed on every host, runs a whole session in a lab of its own that sees
//! only the installed files (binaries in /usr/bin, the plugin at Debian's
//! Slurm plugin directory, the packaged plugstack line). Headers that are
//! missing or of mixed releases stop the build with one line.
//!
//! For 22.05 the hosts share this machine's root, so the package is installed
//! here, and purged again even when a test fails; a newer release's hosts
//! each install it into a root of their own as they start (labctl's
//! `LAB_INSTALLED=PATH.deb`), and this machine is never touched.
//!
//! Needs root (dpkg) and `rpm` (tests/install-deps).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use vscode_slurm_tests::session::{assert_nothing_left, Session, SessionOptions};
use vscode_slurm_tests::{
    plugin_version, release, release_binary, release_is_the_machines, release_number, slurm_include_dir,
    stderr_of, stdout_of, Lab, TempDir,
};

const DEB_PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/slurm-wlm/spank_vscode.so";
const RPM_PLUGIN: &str = "/usr/lib64/slurm/spank_vscode.so";
const BINARIES: [&str; 3] = ["vscode-shim", "vscode-job-helper", "vscode-janitor"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

/// The target directory the test binaries (and so the packages) live in.
fn target_dir() -> PathBuf {
    release_binary("x").parent().and_then(Path::parent).expect("<target>/release").to_path_buf()
}

/// `packaging/build ARGS` with this build's target directory.
fn packaging_build(args: &[&str]) -> Output {
    Command::new(repo().join("packaging/build"))
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .expect("run packaging/build")
}

/// Fails with all that `what` printed when it did not succeed.
fn assert_succeeded(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed ({}):\n{}{}", out.status, stdout_of(out), stderr_of(out));
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?} failed ({}): {}", out.status, stderr_of(&out));
    stdout_of(&out)
}

/// SLURM_VERSION_NUMBER of the headers in `include`, read independently of
/// the build script (0x160508 in this machine's /usr/include).
fn header_number(include: &Path) -> u32 {
    let path = include.join("slurm/slurm_version.h");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("#define SLURM_VERSION_NUMBER"))
        .and_then(|v| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
        .expect("SLURM_VERSION_NUMBER in slurm_version.h")
}

/// The release the lab runs, checked against its headers: "22.05" for 0x160508.
fn header_release() -> String {
    let number = header_number(&slurm_include_dir());
    let release = format!("{}.{:02}", number >> 16, (number >> 8) & 0xff);
    assert_eq!(release, vscode_slurm_tests::release(), "the headers of the lab's release");
    release
}

struct Packages {
    name: String,
    deb: PathBuf,
    rpm: PathBuf,
}

/// Builds both packages once for every test here, with the one command.
fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        // The machine's release with the README's command as it is; another with --slurm.
        let release = release();
        let args = if release_is_the_machines() { vec![] } else { vec!["--slurm", &release] };
        let out = packaging_build(&args);
        assert_succeeded(&out, "packaging/build");
        let name = format!("vscode-slurm-slurm{}", header_release());
        let version = env!("CARGO_PKG_VERSION");
        let dir = target_dir().join("packages");
        let deb = dir.join(format!("{name}_{version}_amd64.deb"));
        let rpm = dir.join(format!("{name}-{version}-1.x86_64.rpm"));
        for package in [&deb, &rpm] {
            assert!(package.is_file(), "packaging/build made no {}:\n{}", package.display(), stdout_of(&out));
            assert!(
                stdout_of(&out).contains(&*package.to_string_lossy()),
                "packaging/build did not name {}",
                package.display()
            );
        }
        assert!(
            !dir.join("stage-deb").exists() && !dir.join("rpmbuild").exists(),
            "staging trees left in {dir:?}"
        );
        Packages { name, deb, rpm }
    })
}

fn deb_files(deb: &Path) -> BTreeSet<String> {
    // `-rw-r--r-- root/root 1234 2026-01-01 00:00 ./usr/bin/x`
    run("dpkg-deb", &["-c", &deb.to_string_lossy()])
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

fn rpm_files(rpm: &Path) -> BTreeSet<String> {
    run("rpm", &["-qlp", &rpm.to_string_lossy()]).lines().map(str::to_owned).collect()
}

#[test]
fn one_command_builds_both_packages_named_for_the_slurm_release() {
    let packages = packages();
    let release = header_release();
    let next = {
        let (major, minor) = release.split_once('.').unwrap();
        format!("{major}.{:02}", minor.parse::<u32>().unwrap() + 1)
    };
    let deb = packages.deb.to_string_lossy();
    assert_eq!(run("dpkg-deb", &["-f", &deb, "Package"]).trim(), packages.name);
    let depends = run("dpkg-deb", &["-f", &deb, "Depends"]);
    assert_eq!(
        depends.trim(),
        format!(
            "slurm-wlm-basic-plugins (>= {release}), slurm-wlm-basic-plugins (<< {next}), openssh-client, xauth"
        ),
        "the .deb must depend on exactly the Slurm release it was built for, ssh-keygen and xauth \
         (proxy windows make the job host key and forward X11)"
    );
    let rpm = packages.rpm.to_string_lossy();
    assert_eq!(run("rpm", &["-qp", "--qf", "%{NAME}", &rpm]), packages.name);
    let requires = run("rpm", &["-qp", "--requires", &rpm]);
    for wanted in [format!("slurm >= {release}"), format!("slurm < {next}"), "xorg-x11-xauth".to_owned()] {
        assert!(
            requires.lines().any(|l| l.trim() == wanted),
            "the .rpm lacks `Requires: {wanted}`:\n{requires}"
        );
    }
    // The plugin inside was built against that release's own headers: Slurm
    // loads it only if its plugin_version has Slurm's major.minor.
    let dir = TempDir::new("deb-plugin");
    run("dpkg-deb", &["-x", &deb, &dir.0.to_string_lossy()]);
    let plugin = fs::read(dir.0.join(DEB_PLUGIN.trim_start_matches('/'))).expect("the packaged plugin");
    let version = plugin_version(&plugin);
    assert_eq!(
        version >> 8,
        release_number(),
        "the packaged plugin is for {version:#x}, not Slurm {release}"
    );
}

#[test]
fn the_rpm_holds_the_same_files_as_the_deb() {
    let packages = packages();
    let deb = deb_files(&packages.deb);
    // The one intended difference: each distribution's Slurm plugin directory.
    let rpm: BTreeSet<String> = rpm_files(&packages.rpm)
        .into_iter()
        .map(|f| if f == RPM_PLUGIN { DEB_PLUGIN.to_owned() } else { f })
        .collect();
    assert_eq!(deb, rpm, "dpkg-deb -c and rpm -qlp list different files");
    let doc = format!("/usr/share/doc/{}", packages.name);
    let mut wanted = vec![
        DEB_PLUGIN.to_owned(),
        "/etc/slurm/plugstack.conf.d/vscode.conf".to_owned(),
        "/usr/share/man/man8/spank_vscode.8.gz".to_owned(),
        "/usr/share/man/man1/vscode-shim-setup.1.gz".to_owned(),
        "/usr/share/man/man1/vscode-shim-doctor.1.gz".to_owned(),
        "/usr/share/man/man1/vscode-shim-sessions.1.gz".to_owned(),
        "/usr/share/man/man1/vscode-shim-stop.1.gz".to_owned(),
        "/usr/share/man/man1/vscode-shim-proxy.1.gz".to_owned(),
        format!("{doc}/README.md"),
        format!("{doc}/admin-guide.md"),
        format!("{doc}/troubleshooting.md"),
        format!("{doc}/security.md"),
    ];
    for b in BINARIES {
        wanted.push(format!("/usr/bin/{b}"));
        wanted.push(format!("/usr/share/man/man1/{b}.1.gz"));
        wanted.push(format!("/usr/share/bash-completion/completions/{b}"));
        wanted.push(format!("/usr/share/zsh/vendor-completions/_{b}"));
        wanted.push(format!("/usr/share/fish/vendor_completions.d/{b}.fish"));
    }
    let missing: Vec<_> = wanted.iter().filter(|f| !deb.contains(*f)).collect();
    assert!(missing.is_empty(), "the packages lack {missing:?}; they hold {deb:#?}");
}

/// The man pages and completions in the package are what the packaged
/// programs generate, and the plugstack example is a commented `required` line.
#[test]
fn the_deb_holds_the_generated_man_pages_and_a_commented_plugstack_line() {
    let packages = packages();
    let dir = TempDir::new("deb-contents");
    run("dpkg-deb", &["-x", &packages.deb.to_string_lossy(), &dir.0.to_string_lossy()]);
    for b in BINARIES {
        let installed = dir.0.join("usr/bin").join(b);
        let generated = run(&installed.to_string_lossy(), &["--generate", "man"]);
        let page = dir.0.join(format!("usr/share/man/man1/{b}.1.gz"));
        let packaged = run("gzip", &["-dc", &page.to_string_lossy()]);
        assert_eq!(packaged, generated, "{b}.1.gz is not what `{b} --generate man` prints");
        assert!(
            packaged.contains(".TH ") && packaged.contains(".SH NAME"),
            "{b}.1 is no man page:\n{packaged}"
        );
        let bash = fs::read_to_string(dir.0.join("usr/share/bash-completion/completions").join(b)).unwrap();
        assert!(
            bash.lines().any(|l| l.trim_start().starts_with("complete -F ") && l.ends_with(&format!(" {b}"))),
            "{b}'s bash completion registers nothing for {b}:\n{bash}"
        );
    }
    let page = run("gzip", &["-dc", &dir.0.join("usr/share/man/man8/spank_vscode.8.gz").to_string_lossy()]);
    assert!(page.contains(DEB_PLUGIN) && !page.contains('@'), "spank_vscode.8 has unfilled placeholders");
    let example = fs::read_to_string(dir.0.join("etc/slurm/plugstack.conf.d/vscode.conf")).unwrap();
    let line: Vec<_> = example.lines().filter(|l| l.contains("required")).collect();
    assert_eq!(
        line,
        [format!("# required {DEB_PLUGIN} bind=nodeaddr runtime_dir=/run/vscode-slurm kill_grace=5s")],
        "the example must hold one commented required line:\n{example}"
    );
}

/// Installs the .deb and purges it when dropped, also when the test fails.
struct Installed {
    name: String,
}

impl Installed {
    fn new(packages: &Packages) -> Installed {
        // Never overwrite files that did not come from this package.
        for b in BINARIES {
            let path = format!("/usr/bin/{b}");
            if Path::new(&path).exists() {
                let owner = Command::new("dpkg").args(["-S", &path]).output().expect("dpkg -S");
                assert!(
                    stdout_of(&owner).starts_with("vscode-slurm-"),
                    "{path} exists and is not from a vscode-slurm package; not installing over it"
                );
            }
        }
        let installed = Installed { name: packages.name.clone() };
        let out = Command::new("dpkg")
            .args(["-i", &packages.deb.to_string_lossy()])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("dpkg -i");
        assert_succeeded(&out, "dpkg -i");
        installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let out = Command::new("dpkg").args(["--purge", &self.name]).output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("dpkg --purge {} failed: {}", self.name, stderr_of(&out)),
            Err(e) => eprintln!("cannot run dpkg --purge {}: {e}", self.name),
        }
    }
}

/// A lab of this test's own, taken down when dropped; its directory goes
/// too unless the test failed (its logs are the evidence).
struct OwnLab(Lab);

impl Drop for OwnLab {
    fn drop(&mut self) {
        let out = self.0.labctl(&["down"]);
        if !out.status.success() {
            eprintln!("labctl down of {} failed: {}", self.0.dir.display(), stderr_of(&out));
        } else if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0.dir);
        }
    }
}

/// Executables of `user`'s processes on `host`, and every path a process
/// there has the plugin mapped from.
fn exes_and_plugin_maps(lab: &Lab, host: &str, user: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let exes =
        lab.sh_ok(None, host, &format!("for p in $(pgrep -u {user}); do readlink /proc/$p/exe; done; true"));
    let maps =
        lab.sh_ok(None, host, "cat /proc/[0-9]*/maps 2>/dev/null | awk '/spank_vscode/ {print $6}'; true");
    (
        exes.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect(),
        maps.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect(),
    )
}

#[test]
fn the_installed_deb_runs_a_session_from_installed_files_only() {
    let packages = packages();
    let deb = packages.deb.to_string_lossy().into_owned();
    // 22.05: installed on this machine, whose root the hosts share; a newer
    // release: each cluster host installs the file into its own root.
    let (installed, own) = if release_is_the_machines() {
        let installed = Installed::new(packages);
        (Some(installed), OwnLab(Lab::own("pkg", &[("LAB_INSTALLED", "1")])))
    } else {
        (None, OwnLab(Lab::own("pkg", &[("LAB_INSTALLED", &deb)])))
    };
    let lab_dir = own.0.dir.to_string_lossy().into_owned();
    let up = own.0.labctl(&["up"]);
    assert!(up.status.success(), "labctl up (LAB_INSTALLED) failed:\n{}", stderr_of(&up));
    let lab = &own.0;
    for host in ["login", "login2", "c1", "c2"] {
        let listed = lab.sh_ok(None, host, &format!("dpkg -L {}", packages.name));
        for path in [DEB_PLUGIN, "/usr/bin/vscode-shim", "/usr/bin/vscode-job-helper"] {
            assert!(listed.lines().any(|l| l == path), "dpkg -L {} on {host} lacks {path}", packages.name);
        }
    }

    // What the hosts can run: the package's files, and of our build only the test server.
    assert_eq!(lab.sh_ok(None, "login", "ls /usr/local/bin").trim(), "vscode-test-server");
    assert_eq!(lab.sh_ok(None, "c1", "ls /usr/local/bin").trim(), "vscode-test-server");
    assert_eq!(lab.sh_ok(Some("alice"), "login", "command -v vscode-shim").trim(), "/usr/bin/vscode-shim");
    assert_eq!(
        lab.sh_ok(Some("alice"), "c1", "command -v vscode-job-helper").trim(),
        "/usr/bin/vscode-job-helper"
    );
    let plugstack = lab.sh_ok(None, "login", "grep -h '^required' /etc/slurm/plugstack.conf.d/*.conf");
    assert_eq!(
        plugstack.trim(),
        format!("required {DEB_PLUGIN} bind=nodeaddr runtime_dir=/run/vscode-slurm kill_grace=5s")
    );

    let session = Session::open(lab, SessionOptions::default());
    let job = session.job_id();
    let node = session.node();
    let (login_exes, login_maps) = exes_and_plugin_maps(lab, "login", "alice");
    let (node_exes, node_maps) = exes_and_plugin_maps(lab, &node, "alice");
    assert!(login_exes.contains("/usr/bin/vscode-shim"), "no /usr/bin/vscode-shim on login: {login_exes:?}");
    assert!(
        node_exes.contains("/usr/bin/vscode-job-helper"),
        "no /usr/bin/vscode-job-helper on {node}: {node_exes:?}"
    );
    let target = target_dir().to_string_lossy().into_owned();
    for exe in login_exes.iter().chain(&node_exes) {
        assert!(
            !exe.starts_with("/usr/local/bin/vscode-") || exe == "/usr/local/bin/vscode-test-server",
            "{exe} ran: not an installed file"
        );
        assert!(
            !exe.starts_with(&target) && !exe.starts_with(&lab_dir),
            "{exe} ran from the build or the lab"
        );
    }
    // salloc on login and slurmstepd on the node loaded the installed plugin, and no other copy.
    let installed_only = BTreeSet::from([DEB_PLUGIN.to_owned()]);
    assert_eq!(login_maps, installed_only, "plugin mapped on login from elsewhere");
    assert_eq!(node_maps, installed_only, "plugin mapped on {node} from elsewhere");

    let (_, _client) = session.close();
    assert_nothing_left(lab, "alice", job, Duration::from_secs(60));

    // Down first: the lab's slurmd and slurmstepd have the plugin mapped.
    drop(own);
    match installed {
        Some(installed) => {
            drop(installed);
            for path in [DEB_PLUGIN, "/usr/bin/vscode-shim", "/etc/slurm/plugstack.conf.d/vscode.conf"] {
                assert!(!Path::new(path).exists(), "{path} is still there after dpkg --purge");
            }
        }
        None => {
            let here = Command::new("dpkg-query").args(["-W", &packages.name]).output().expect("dpkg-query");
            assert!(
                !here.status.success(),
                "{} got installed on this machine, not only in the hosts",
                packages.name
            );
        }
    }
}

/// Headers for `--slurm-include`: the installed ones, with `edit` applied.
fn headers(what: &str, version: Option<&str>, spank: Option<&dyn Fn(&str) -> String>) -> TempDir {
    let dir = TempDir::new(what);
    let slurm = dir.0.join("slurm");
    fs::create_dir_all(&slurm).unwrap();
    let version_h = fs::read_to_string("/usr/include/slurm/slurm_version.h").unwrap();
    let version_h = match version {
        Some(number) => version_h
            .lines()
            .map(|l| {
                if l.starts_with("#define SLURM_VERSION_NUMBER") {
                    format!("#define SLURM_VERSION_NUMBER {number}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect(),
        None => version_h,
    };
    fs::write(slurm.join("slurm_version.h"), version_h).unwrap();
    if let Some(edit) = spank {
        fs::write(slurm.join("spank.h"), edit(&fs::read_to_string("/usr/include/slurm/spank.h").unwrap()))
            .unwrap();
    }
    dir
}

/// `packaging/build --slurm-include DIR` must stop with exactly one line
/// naming the problem, and leave no package behind.
fn fails_in_one_line(include: &Path, wanted: &[&str]) {
    let packages_dir = target_dir().join("packages");
    let before: BTreeSet<_> = fs::read_dir(&packages_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let out = packaging_build(&["--slurm-include", &include.to_string_lossy()]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "packaging/build should fail with 1: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line on stderr:\n{stderr}");
    for word in wanted {
        assert!(stderr.contains(word), "`{word}` not in: {stderr}");
    }
    let after: BTreeSet<_> = fs::read_dir(&packages_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(before, after, "a failed build changed {}", packages_dir.display());
}

#[test]
fn missing_or_mismatched_headers_stop_the_build_with_one_line() {
    let nowhere = std::env::temp_dir().join(format!("vscode-slurm-no-headers-{}", std::process::id()));
    fails_in_one_line(&nowhere, &[&nowhere.to_string_lossy(), "does not exist"]);

    let empty = TempDir::new("empty-headers");
    fails_in_one_line(&empty.0, &["no slurm_version.h under", "--slurm-include"]);

    let no_spank = headers("no-spank", None, None);
    fails_in_one_line(&no_spank.0, &["no spank.h next to it"]);

    // 24.05's version file beside 22.05's spank.h: a mix of two releases.
    let mixed = headers("mixed", Some("0x180500"), Some(&|s: &str| s.to_owned()));
    fails_in_one_line(&mixed.0, &["does not match", "Slurm 24.05", "spank_prepend_task_argv"]);

    // An item inserted into enum spank_item: the bundled bindings' numbers would be wrong.
    let reordered = headers(
        "reordered",
        None,
        Some(&|s: &str| s.replacen("    S_JOB_GID,", "    S_JOB_SOMETHING_NEW,\n    S_JOB_GID,", 1)),
    );
    fails_in_one_line(&reordered.0, &["differs from slurm-spank's bundled bindings", "S_JOB_SOMETHING_NEW"]);
}

/// Another release's headers come from its source with
/// `packaging/slurm-headers`; here the source is rebuilt from the installed
/// 22.05 headers (configure's input has `#undef SLURM_VERSION_NUMBER`, META
/// the version), so the result must equal what libslurm-dev installed and
/// build the packages.
#[test]
fn slurm_headers_from_a_release_tarball_build_the_packages() {
    let work = TempDir::new("slurm-source");
    let source = work.0.join("slurm-22.05.8");
    fs::create_dir_all(source.join("slurm")).unwrap();
    let version_h = fs::read_to_string("/usr/include/slurm/slurm_version.h").unwrap();
    let number = header_number(Path::new("/usr/include"));
    let meta = format!(
        "  Meta:\t\t1\n  Name:\t\tslurm\n  Major:\t{}\n  Minor:\t{:02}\n  Micro:\t{}\n",
        number >> 16,
        (number >> 8) & 0xff,
        number & 0xff
    );
    fs::write(source.join("META"), meta).unwrap();
    let template: String = version_h
        .lines()
        .map(|l| {
            if l.starts_with("#define SLURM_VERSION_NUMBER") {
                "#undef SLURM_VERSION_NUMBER\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(template, version_h);
    fs::write(source.join("slurm/slurm_version.h.in"), template).unwrap();
    for h in ["spank.h", "slurm_errno.h"] {
        fs::copy(Path::new("/usr/include/slurm").join(h), source.join("slurm").join(h)).unwrap();
    }
    let tarball = work.0.join("slurm-22.05.8.tar.bz2");
    run("tar", &["-C", &work.0.to_string_lossy(), "-cjf", &tarball.to_string_lossy(), "slurm-22.05.8"]);

    let include = work.0.join("include");
    let script = repo().join("packaging/slurm-headers");
    let out = Command::new(&script).arg(&tarball).arg(&include).output().unwrap();
    assert!(out.status.success(), "slurm-headers failed: {}", stderr_of(&out));
    assert_eq!(fs::read_to_string(include.join("slurm/slurm_version.h")).unwrap(), version_h);
    for h in ["spank.h", "slurm_errno.h"] {
        assert_eq!(
            fs::read(include.join("slurm").join(h)).unwrap(),
            fs::read(Path::new("/usr/include/slurm").join(h)).unwrap()
        );
    }
    // Run again on the same destination: refused in one line, nothing changed.
    let again = Command::new(&script).arg(&tarball).arg(&include).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(stderr_of(&again).lines().count(), 1, "{}", stderr_of(&again));

    let build = packaging_build(&["--slurm-include", &include.to_string_lossy()]);
    assert!(
        build.status.success(),
        "packaging/build on slurm-headers' output failed:\n{}",
        stderr_of(&build)
    );
    assert!(
        stdout_of(&build).contains(&format!(
            "vscode-slurm-slurm{}.{:02}",
            number >> 16,
            (number >> 8) & 0xff
        )),
        "{}",
        stdout_of(&build)
    );
}
