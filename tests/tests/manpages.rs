//! Man pages and shell completions come from the programs' own clap
//! definitions (`--generate man|bash|zsh|fish`, hidden), so they cannot
//! drift from the options. Here: each program generates each of them, the
//! pages format without a groff warning, and bash really completes with the
//! script. (tests/tests/package.rs checks that the package holds them.)

use std::io::Write;
use std::process::{Command, Output, Stdio};

use vscode_slurm_tests::{release_binary, stderr_of, stdout_of};

const PROGRAMS: [&str; 3] = ["vscode-shim", "vscode-job-helper", "vscode-janitor"];

fn generate(program: &str, what: &str) -> Output {
    Command::new(release_binary(program)).args(["--generate", what]).output().expect("run --generate")
}

fn generated(program: &str, what: &str) -> String {
    let out = generate(program, what);
    assert!(out.status.success(), "{program} --generate {what} failed: {}", stderr_of(&out));
    assert_eq!(stderr_of(&out), "", "{program} --generate {what} wrote to stderr");
    let text = stdout_of(&out);
    assert!(!text.trim().is_empty(), "{program} --generate {what} printed nothing");
    text
}

/// Formats a page as `man` would; groff's warnings (-ww) go to stderr.
fn groff(page: &str) -> Output {
    let mut child = Command::new("groff")
        // -P-cbou: plain text, no overstrike for bold and underline.
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("groff (Debian: groff-base, see tests/install-deps)");
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn every_program_generates_a_man_page_that_formats_cleanly() {
    for program in PROGRAMS {
        let page = generated(program, "man");
        assert!(page.contains(&format!(".TH {program} 1")), "{program}: no .TH line:\n{page}");
        for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS"] {
            assert!(page.contains(section), "{program}: no {section}:\n{page}");
        }
        let out = groff(&page);
        assert!(
            out.status.success() && stderr_of(&out).is_empty(),
            "groff on {program}.1: {}",
            stderr_of(&out)
        );
        let text = stdout_of(&out);
        assert!(
            text.contains("NAME") && text.contains(program),
            "{program}.1 formats to nothing useful:\n{text}"
        );
    }
    // The shim's page refers to a page per subcommand; those exist too.
    let shim = generated("vscode-shim", "man");
    for sub in ["setup", "doctor", "sessions", "stop", "proxy"] {
        assert!(shim.contains(&format!("vscode\\-shim\\-{sub}(1)")), "vscode-shim.1 does not refer to {sub}");
        let page = generated("vscode-shim", &format!("man-{sub}"));
        assert!(page.contains(&format!(".TH vscode-shim-{sub} 1")), "no vscode-shim-{sub}.1:\n{page}");
        let out = groff(&page);
        assert!(
            out.status.success() && stderr_of(&out).is_empty(),
            "groff on vscode-shim-{sub}.1: {}",
            stderr_of(&out)
        );
        assert!(
            stdout_of(&out)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(&format!("vscode-shim {sub} ")),
            "synopsis of vscode-shim-{sub}.1"
        );
    }
    assert!(
        generated("vscode-shim", "man-setup").contains("\\-\\-login"),
        "vscode-shim-setup.1 lacks --login"
    );
}

#[test]
fn the_plugin_page_formats_cleanly_once_filled_in() {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/spank_vscode.8")).unwrap();
    let page = template
        .replace("@PLUGIN@", "/usr/lib/x86_64-linux-gnu/slurm-wlm/spank_vscode.so")
        .replace("@VERSION@", "0");
    let out = groff(&page);
    assert!(
        out.status.success() && stderr_of(&out).is_empty(),
        "groff on spank_vscode.8: {}",
        stderr_of(&out)
    );
    // Every plugstack key the README's admin table documents is in the page.
    for key in ["bind=", "runtime_dir=", "kill_grace="] {
        assert!(stdout_of(&out).contains(key), "spank_vscode.8 does not document {key}");
    }
}

#[test]
fn every_program_generates_completions_for_each_shell() {
    for program in PROGRAMS {
        let bash = generated(program, "bash");
        let check = Command::new("bash").args(["-n", "-c", &bash]).output().unwrap();
        assert!(check.status.success(), "{program}'s bash completion: {}", stderr_of(&check));
        let zsh = generated(program, "zsh");
        assert!(zsh.starts_with(&format!("#compdef {program}")), "{program}'s zsh completion:\n{zsh}");
        let fish = generated(program, "fish");
        assert!(fish.contains(&format!("complete -c {program}")), "{program}'s fish completion:\n{fish}");
    }
}

/// What bash offers for `vscode-shim WORDS...` with the cursor after the last word.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = r#"
        source <("$0" --generate bash)
        fn=$(complete -p vscode-shim | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
        COMP_WORDS=(vscode-shim "$@"); COMP_CWORD=$#
        "$fn" vscode-shim "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = Command::new("bash")
        .args(["-c", script])
        .arg(release_binary("vscode-shim"))
        .args(words)
        .output()
        .expect("run bash");
    assert!(out.status.success(), "bash completion failed: {}", stderr_of(&out));
    stdout_of(&out).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

#[test]
fn bash_completes_the_shim_and_its_subcommands() {
    let subcommands = bash_completes(&["s"]);
    for sub in ["setup", "sessions", "stop"] {
        assert!(subcommands.contains(&sub.to_owned()), "{sub} is not completed: {subcommands:?}");
    }
    assert_eq!(bash_completes(&["setup", "--lo"]), ["--login"]);
    let doctor = bash_completes(&["doctor", "--"]);
    for option in ["--helper", "--salloc", "--wait", "--no-job"] {
        assert!(doctor.contains(&option.to_owned()), "doctor completes {doctor:?}");
    }
}

#[test]
fn an_unknown_format_is_one_line_and_exit_2() {
    for program in PROGRAMS {
        let out = generate(program, "troff");
        assert_eq!(out.status.code(), Some(2), "{program}");
        assert_eq!(stdout_of(&out), "", "{program}");
        assert_eq!(
            stderr_of(&out),
            format!("{program}: --generate takes man, bash, zsh or fish\n"),
            "{program}"
        );
    }
}
