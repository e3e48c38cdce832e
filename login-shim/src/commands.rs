//! The subcommands next to the RemoteCommand form: `setup`, `doctor`, and
//! the hidden `--generate man|bash|zsh|fish` used by packaging.
//!
//! `vscode-shim [OPTIONS] -- SALLOC_ARGS` takes no positional argument
//! before `--`, so a first argument `setup` or `doctor` cannot be a session.

use clap::{CommandFactory, Parser};

use crate::cli::Cli;
use crate::doctor::DoctorArgs;
use crate::setup::SetupArgs;

/// Handles a subcommand and returns its exit code, or None for a session.
pub fn dispatch() -> Option<i32> {
    let args: Vec<String> = std::env::args().collect();
    let rest = || args.iter().skip(1).cloned();
    match args.get(1).map(String::as_str) {
        Some("setup") => Some(crate::setup::run(&SetupArgs::parse_from(rest()))),
        Some("doctor") => Some(crate::doctor::run(&DoctorArgs::parse_from(rest()))),
        Some("--generate") if args.len() == 3 => Some(generate(command(), &args[2])),
        _ => None,
    }
}

/// The whole CLI with its subcommands, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
        .subcommand(SetupArgs::command().name("setup"))
        .subcommand(DoctorArgs::command().name("doctor"))
}

/// Writes a man page (`man`) or a completion script (`bash`, `zsh`, `fish`)
/// for `command` to stdout; returns the exit code.
pub fn generate(mut command: clap::Command, what: &str) -> i32 {
    let name = command.get_name().to_owned();
    let mut out = std::io::stdout();
    let shell = match what {
        "man" => {
            return match clap_mangen::Man::new(command).render(&mut out) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{name}: cannot write the man page: {e}");
                    1
                }
            };
        }
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        "fish" => clap_complete::Shell::Fish,
        _ => {
            eprintln!("{name}: --generate takes man, bash, zsh or fish");
            return 2;
        }
    };
    clap_complete::generate(shell, &mut command, name, &mut out);
    0
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
