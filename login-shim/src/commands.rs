//! The subcommands next to the RemoteCommand form: `setup`, `doctor`, and
//! the hidden `--generate man|bash|zsh|fish` used by packaging.
//!
//! `vscode-shim [OPTIONS] -- SALLOC_ARGS` takes no positional argument
//! before `--`, so a first argument `setup` or `doctor` cannot be a session.

use std::io::Write;

use clap::{CommandFactory, Parser};

use crate::cli::Cli;
use crate::doctor::DoctorArgs;
use crate::setup::SetupArgs;

/// Handles a subcommand and returns its exit code, or None for a session.
pub fn dispatch() -> Option<i32> {
    let args: Vec<String> = std::env::args().collect();
    let rest = || args.iter().skip(1).cloned();
    match args.get(1).map(String::as_str) {
        Some("setup") => Some(run_parsed(rest(), "setup", crate::setup::run)),
        Some("doctor") => Some(run_parsed(rest(), "doctor", crate::doctor::run)),
        Some("--generate") if args.len() == 3 => Some(generate(command(), &args[2])),
        _ => None,
    }
}

/// Runs a subcommand on its parsed arguments. A usage error is one line on
/// stderr (exit 2): in VS Code's log or a terminal only the first line of
/// clap's usual message gets read.
fn run_parsed<T: Parser>(args: impl Iterator<Item = String>, name: &str, run: fn(&T) -> i32) -> i32 {
    match T::try_parse_from(args) {
        Ok(parsed) => run(&parsed),
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            0
        }
        Err(error) => usage_error(&error.render().to_string(), name),
    }
}

/// Prints clap's message up to its usage lines as one line; returns 2.
fn usage_error(message: &str, name: &str) -> i32 {
    let words: Vec<&str> = message
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(|line| line.trim().trim_start_matches("error: "))
        .collect();
    eprintln!("vscode-shim {name}: {}; see 'vscode-shim {name} --help'", words.join(" "));
    2
}

/// The whole CLI with its subcommands, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
        .subcommand(SetupArgs::command().name("setup"))
        .subcommand(DoctorArgs::command().name("doctor"))
        .subcommands(crate::sessions::subcommands())
}

/// Writes a man page (`man`) or a completion script (`bash`, `zsh`, `fish`)
/// for `command` to stdout; returns the exit code.
pub fn generate(mut command: clap::Command, what: &str) -> i32 {
    let name = command.get_name().to_owned();
    let mut out = std::io::stdout();
    // `man-setup`: the page `vscode-shim-setup(1)` that the main page's
    // SUBCOMMANDS section refers to.
    let page = match what.strip_prefix("man-") {
        _ if what == "man" => Some(command.clone()),
        // clap (without its `string` feature) takes only static names; this
        // process prints one page and exits.
        Some(sub) => command.find_subcommand(sub).map(|sc| {
            sc.clone()
                .name(&*Box::leak(format!("{name}-{sub}").into_boxed_str()))
                .version(env!("CARGO_PKG_VERSION"))
        }),
        None => None,
    };
    if let Some(page) = page {
        return match clap_mangen::Man::new(page).render(&mut out) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{name}: cannot write the man page: {e}");
                1
            }
        };
    }
    let shell = match what {
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        "fish" => clap_complete::Shell::Fish,
        _ => {
            eprintln!("{name}: --generate takes man, bash, zsh or fish");
            return 2;
        }
    };
    if shell != clap_complete::Shell::Bash {
        clap_complete::generate(shell, &mut command, name, &mut out);
        return 0;
    }
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name.clone(), &mut script);
    // clap_complete 4.6 names a hyphenated program's subcommand cases
    // `vscode__subcmd__shim__subcmd__setup` but looks them up as
    // `vscode__shim__subcmd__setup`, so nothing after `setup` or `doctor`
    // would complete; tests/tests/manpages.rs completes through it.
    let script =
        String::from_utf8_lossy(&script).replace(&name.replace('-', "__subcmd__"), &name.replace('-', "__"));
    match out.write_all(script.as_bytes()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{name}: cannot write the completion script: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_has_the_subcommands() {
        let mut page = Vec::new();
        clap_mangen::Man::new(command()).render(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains(".SH NAME"), "{page}");
        assert!(page.contains("vscode\\-shim"), "{page}");
        assert!(page.contains("setup") && page.contains("doctor"), "{page}");
    }

    #[test]
    fn the_command_is_consistent() {
        command().debug_assert();
    }
}
