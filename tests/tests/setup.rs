//! `vscode-shim setup`: its whole output against a golden copy, `--write`
//! appending exactly the printed block and never a second entry for an
//! alias, and the printed block used as the laptop's ssh config in the lab
//! for a real session.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use vscode_slurm_tests::session::{assert_nothing_left, Session, SessionOptions};
use vscode_slurm_tests::{release_binary, stderr_of, stdout_of, Lab, RestoreFile, TempDir};

/// What a user with a GPU partition and a site profile is told. Quoting
/// (`'--comment=my project'`) and `%%` (ssh expands `%` in RemoteCommand)
/// are part of what must not regress.
const GOLDEN: &str = r#"# 1. ssh config: this block belongs in ~/.ssh/vscode-slurm.config, a file used only by VS Code
#    (its RemoteCommand would get in the way of plain ssh and scp to login.hpc.example.org).

Host hpc-gpu
    HostName login.hpc.example.org
    User alice
    IdentityFile ~/.ssh/id_hpc
    RemoteCommand vscode-shim --profile gpu -- --partition=gpu --gres=gpu:1 --time=4:00:00 '--comment=my project' --output=vscode-%%j.log

# 2. VS Code settings.json (Preferences: Open User Settings (JSON)):

"remote.SSH.configFile": "~/.ssh/vscode-slurm.config",
"remote.SSH.enableRemoteCommand": true,
"remote.SSH.useLocalServer": true,
"remote.SSH.enableDynamicForwarding": true,
"remote.SSH.connectTimeout": 900

# 3. Check (starts no job; prints the shim's path and ok):

ssh -F ~/.ssh/vscode-slurm.config -o RemoteCommand=none hpc-gpu 'command -v vscode-shim && salloc --help | grep -q -- --vscode && echo ok'

# Then connect VS Code to hpc-gpu: Remote-SSH: Connect to Host... > hpc-gpu.
"#;

const GOLDEN_ARGS: &[&str] = &[
    "--login",
    "login.hpc.example.org",
    "--user",
    "alice",
    "--name",
    "hpc-gpu",
    "--identity-file",
    "~/.ssh/id_hpc",
    "--profile",
    "gpu",
    "--connect-timeout",
    "900",
    "--",
    "--partition=gpu",
    "--gres=gpu:1",
    "--time=4:00:00",
    "--comment=my project",
    "--output=vscode-%j.log",
];

/// `vscode-shim setup ARGS` with HOME set to `home`.
fn setup(home: &Path, args: &[&str]) -> Output {
    Command::new(release_binary("vscode-shim"))
        .arg("setup")
        .args(args)
        .env("HOME", home)
        .output()
        .expect("run vscode-shim setup")
}

/// The ssh host entry in setup's output: from `Host ` to the blank line.
fn printed_block(output: &str) -> String {
    let start = output.find("\nHost ").expect("a Host line in setup's output") + 1;
    let block = &output[start..];
    block[..block.find("\n\n").expect("a blank line after the block") + 1].to_owned()
}

#[test]
fn setup_prints_the_golden_output() {
    let home = TempDir::new("setup-golden");
    let out = setup(&home.0, GOLDEN_ARGS);
    assert!(out.status.success(), "setup failed: {}", stderr_of(&out));
    let printed = stdout_of(&out);
    if printed != GOLDEN {
        panic!("setup's output changed; if on purpose, update GOLDEN.\n--- printed:\n{printed}\n--- golden:\n{GOLDEN}");
    }
    assert_eq!(stderr_of(&out), "", "setup without --write says nothing on stderr");
    assert!(fs::read_dir(&home.0).unwrap().next().is_none(), "setup without --write wrote into HOME");
}

#[test]
fn bad_setup_arguments_get_one_line_and_write_nothing() {
    let home = TempDir::new("setup-bad");
    for (args, wanted) in [
        (
            &["--write"][..],
            "required arguments were not provided: --login <HOST> --user <NAME> --name <ALIAS>",
        ),
        (
            &["--login", "l", "--user", "u", "--name", "n", "--bogus", "--write"][..],
            "unexpected argument '--bogus'",
        ),
        (&["--login", "l", "--user", "a b", "--name", "n", "--write"][..], "--user must be one word"),
        (&["--login", "l", "--user", "u", "--name", "n#x", "--write"][..], "--name must be one word"),
        (
            &["--login", "l", "--user", "u", "--name", "n", "--connect-timeout", "soon"][..],
            "'--connect-timeout",
        ),
    ] {
        let out = setup(&home.0, args);
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: exit {}", out.status);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: not one line:\n{stderr}");
        assert!(stderr.starts_with("vscode-shim setup: ") && stderr.contains(wanted), "{args:?}: {stderr}");
        assert_eq!(stdout_of(&out), "", "{args:?}: printed something");
    }
    assert!(fs::read_dir(&home.0).unwrap().next().is_none(), "bad arguments left files in HOME");

    // No HOME: `~/.ssh/...` is nowhere, and must not become a directory named `~` here.
    let out = Command::new(release_binary("vscode-shim"))
        .args(["setup", "--login", "l", "--user", "u", "--name", "n", "--write"])
        .env_remove("HOME")
        .current_dir(&home.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert_eq!(stderr_of(&out).lines().count(), 1, "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("HOME is not set"), "{}", stderr_of(&out));
    assert!(fs::read_dir(&home.0).unwrap().next().is_none(), "setup without HOME wrote into {:?}", home.0);
}

#[test]
fn write_appends_the_shown_block_and_never_duplicates_an_alias() {
    let home = TempDir::new("setup-write");
    let config = home.0.join(".ssh/vscode-slurm.config");
    let args = |name: &'static str, extra: &'static str| {
        vec![
            "--login",
            "login.example",
            "--user",
            "alice",
            "--name",
            name,
            "--write",
            "--",
            "--time=1:00:00",
            extra,
        ]
    };
    let without_write =
        |args: Vec<&'static str>| args.into_iter().filter(|a| *a != "--write").collect::<Vec<_>>();

    // A new file (and ~/.ssh) is made private, and holds exactly the block shown.
    let first = setup(&home.0, &args("first", "--partition=a"));
    assert!(first.status.success(), "setup --write failed: {}", stderr_of(&first));
    let shown = stdout_of(&first);
    let plain = setup(&home.0, &without_write(args("first", "--partition=a")));
    assert_eq!(shown, stdout_of(&plain), "--write must show the same as without it");
    let first_block = printed_block(&shown);
    assert_eq!(fs::read_to_string(&config).unwrap(), first_block);
    assert_eq!(fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(home.0.join(".ssh")).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(stderr_of(&first).contains("added Host first to"), "{}", stderr_of(&first));

    // A second alias goes after the first, separated by a blank line.
    let second = setup(&home.0, &args("second", "--partition=b"));
    assert!(second.status.success(), "{}", stderr_of(&second));
    let both = format!("{first_block}\n{}", printed_block(&stdout_of(&second)));
    assert_eq!(fs::read_to_string(&config).unwrap(), both);

    // An alias that is there already, also as one of several patterns of a
    // hand-written Host line: refused in one line, nothing shown, file untouched.
    let mut text = both.clone();
    text.push_str("\nHost  other   third  # written by hand\n    HostName elsewhere\n");
    fs::write(&config, &text).unwrap();
    let mtime = fs::metadata(&config).unwrap().mtime_nsec();
    for alias in ["first", "second", "third"] {
        let again = setup(&home.0, &args(alias, "--partition=c"));
        let stderr = stderr_of(&again);
        assert_eq!(again.status.code(), Some(1), "{alias}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{alias}: not one line:\n{stderr}");
        assert!(
            stderr.contains(&format!("already has a Host entry for {alias}; nothing written")),
            "{stderr}"
        );
        assert_eq!(stdout_of(&again), "");
    }
    assert_eq!(fs::read_to_string(&config).unwrap(), text, "a refused --write changed the file");
    assert_eq!(fs::metadata(&config).unwrap().mtime_nsec(), mtime);

    // A file without a final newline still gets a blank line before the block.
    fs::write(&config, "Host old\n    HostName x").unwrap();
    let fourth = setup(&home.0, &args("fourth", "--partition=d"));
    assert!(fourth.status.success(), "{}", stderr_of(&fourth));
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        format!("Host old\n    HostName x\n\n{}", printed_block(&stdout_of(&fourth)))
    );
}

/// The printed block, as bob's whole VS Code ssh config on the lab's laptop:
/// the printed check command says ok, and a Remote-SSH session runs through it.
#[test]
fn the_printed_ssh_block_runs_a_session_in_the_lab() {
    let lab = Lab::get();
    let user = "bob";
    let laptop_home = lab.dir.join("laptop-home").join(user);
    let config = laptop_home.join(".ssh/vscode-slurm.config");
    // The lab's own config for bob comes back however the test ends.
    let _restore = RestoreFile::new(config.clone());
    let owner = fs::metadata(laptop_home.join(".ssh")).unwrap();

    // The alias Session::open connects to, the lab's login node as the laptop names it.
    let out = setup(
        &laptop_home,
        &[
            "--login",
            "login",
            "--user",
            user,
            "--name",
            "cluster-vscode",
            "--identity-file",
            "~/.ssh/id_ed25519",
            "--",
            "--time=10",
        ],
    );
    assert!(out.status.success(), "setup failed: {}", stderr_of(&out));
    let printed = stdout_of(&out);
    fs::write(&config, printed_block(&printed)).unwrap();
    std::os::unix::fs::chown(&config, Some(owner.uid()), Some(owner.gid())).unwrap();

    let check = printed.lines().find(|l| l.starts_with("ssh -F ")).expect("a check command");
    let checked = lab.sh_ok(Some(user), "laptop", check);
    assert_eq!(checked, "/usr/local/bin/vscode-shim\nok\n", "the printed check command");

    let session = Session::open(&lab, SessionOptions { user, ..Default::default() });
    let job = session.job_id();
    let squeue = lab.sh_ok(None, "login", &format!("squeue -h -j {job} -o '%u %l'"));
    assert_eq!(squeue.trim(), format!("{user} 10:00"), "the job must carry the block's salloc arguments");
    let (_, _client) = session.close();
    assert_nothing_left(&lab, user, job, Duration::from_secs(60));
}

/// `setup --proxy --write`: the Host block and the job host key's line, each
/// added once however often it runs; a known_hosts entry for the alias with
/// another key is refused in one line, with nothing written.
#[test]
fn proxy_write_adds_the_block_and_the_host_key_once() {
    let home = TempDir::new("setup-proxy");
    let args = [
        "--proxy",
        "--login",
        "login.example",
        "--user",
        "alice",
        "--name",
        "hpc-job",
        "--write",
        "--",
        "--time=1:00:00",
    ];
    let first = setup(&home.0, &args);
    assert!(first.status.success(), "setup --proxy --write failed: {}", stderr_of(&first));
    let printed = stdout_of(&first);
    let block = printed_block(&printed);
    assert!(block.contains("    HostKeyAlias vscode-slurm-job.login.example\n"), "{block}");
    assert!(
        block
            .contains("    ProxyCommand ssh -T -l alice login.example vscode-shim proxy -- --time=1:00:00\n"),
        "{block}"
    );
    let key = fs::read_to_string(home.0.join(".ssh/vscode-slurm-job-host-key.pub")).unwrap();
    let known = format!(
        "vscode-slurm-job.login.example {}",
        key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    );
    assert!(printed.contains(&format!("\n{known}\n")), "the known_hosts line is printed:\n{printed}");
    let private = fs::metadata(home.0.join(".ssh/vscode-slurm-job-host-key")).unwrap();
    assert_eq!(private.permissions().mode() & 0o777, 0o600, "the job host key is the user's alone");
    assert_eq!(fs::read_to_string(home.0.join(".ssh/config")).unwrap(), block);
    assert_eq!(fs::read_to_string(home.0.join(".ssh/known_hosts")).unwrap(), format!("{known}\n"));

    let again = setup(&home.0, &args);
    assert!(again.status.success(), "{}", stderr_of(&again));
    assert_eq!(stdout_of(&again), printed, "the same key and block the second time");
    assert_eq!(fs::read_to_string(home.0.join(".ssh/config")).unwrap(), block, "the block was added twice");
    assert_eq!(
        fs::read_to_string(home.0.join(".ssh/known_hosts")).unwrap(),
        format!("{known}\n"),
        "the key was added twice"
    );

    fs::write(home.0.join(".ssh/known_hosts"), "vscode-slurm-job.login.example ssh-ed25519 AAAAother\n")
        .unwrap();
    let refused = setup(&home.0, &args);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = stderr_of(&refused);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("has another key for vscode-slurm-job.login.example")
            && stderr.contains("nothing written"),
        "{stderr}"
    );
    assert_eq!(stdout_of(&refused), "");
}

/// The ProxyCommand's words pass two shells: the laptop's (ssh runs the
/// ProxyCommand with it) and the login node's (ssh passes the remote command
/// on as one string). Arguments with shell syntax in them reach vscode-shim
/// exactly as given; names that would need quoting as ssh's own arguments
/// are refused.
#[test]
fn proxy_command_arguments_survive_both_shells() {
    let home = TempDir::new("setup-proxy-quoting");
    let tricky =
        ["--constraint=intel|amd", "--comment=it's $(touch /tmp/pwned) & `id`; x", "--output=%j.log"];
    let mut args = vec!["--proxy", "--login", "login.example", "--user", "alice", "--name", "q", "--"];
    args.extend(tricky);
    let out = setup(&home.0, &args);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let printed = stdout_of(&out);
    let line = printed.lines().find_map(|l| l.trim().strip_prefix("ProxyCommand ")).expect("a ProxyCommand");
    // ssh expands %% to % before the laptop's shell sees the command.
    let laptop_command = line.replace("%%", "%");
    let words = |script: &str| -> Vec<String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("set -- {script}; printf '%s\\0' \"$@\""))
            .output()
            .expect("run sh");
        assert!(out.status.success(), "sh could not read {script:?}: {}", stderr_of(&out));
        out.stdout
            .split(|&b| b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect()
    };
    let on_laptop = words(&laptop_command);
    let host =
        on_laptop.iter().position(|w| w == "login.example").expect("the login node in the ProxyCommand");
    assert_eq!(on_laptop[..host], ["ssh", "-T", "-l", "alice"]);
    // ssh joins the words after the host with spaces; the login node's shell reads them.
    let on_login = words(&on_laptop[host + 1..].join(" "));
    let mut wanted = vec!["vscode-shim", "proxy", "--"];
    wanted.extend(tricky);
    assert_eq!(on_login, wanted);
    assert!(!std::path::Path::new("/tmp/pwned").exists(), "a shell ran a word");

    for (flag, bad) in
        [("--login", "login;id"), ("--user", "al ice"), ("--identity-file", "$(id)"), ("--profile", "a|b")]
    {
        let mut args = vec!["--proxy", "--login", "l", "--user", "u", "--name", "n"];
        let at = args.iter().position(|a| *a == flag);
        match at {
            Some(i) => args[i + 1] = bad,
            None => args.extend([flag, bad]),
        }
        let out = setup(&home.0, &args);
        assert_eq!(out.status.code(), Some(2), "{flag} {bad}: {}", stderr_of(&out));
        assert_eq!(stderr_of(&out).lines().count(), 1, "{}", stderr_of(&out));
        assert_eq!(stdout_of(&out), "");
    }
}
