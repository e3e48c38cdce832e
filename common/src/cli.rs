//! Every program's command line fails the same way: one line on stderr that
//! names the program (and subcommand) and where help is, exit 2. ssh hands
//! stderr to VS Code's log line by line and cron mails it, so clap's
//! paragraph-long message would be read only in part.

use std::io::Write;

use clap::error::ErrorKind;
use clap::Parser;

/// Exit code of a usage error, as clap and most tools use it.
pub const USAGE: i32 = 2;

/// Parses the process's arguments; help and version print as usual, a
/// usage error is one line (see [`one_line`]) and exit 2.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(parsed) => parsed,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            let command = T::command();
            let args: Vec<String> = std::env::args().collect();
            // A subcommand's error points at that subcommand's help.
            let sub = args
                .get(1)
                .filter(|first| command.get_subcommands().any(|sc| sc.get_name() == first.as_str()))
                .map(String::as_str);
            eprintln!("{}", one_line(command.get_name(), sub, &e.render().to_string()));
            std::process::exit(USAGE);
        }
    }
}

/// `PROGRAM[ SUB]: what was wrong; see 'PROGRAM[ SUB] --help'`, from clap's
/// rendered message: its first paragraph (a "required arguments" error names
/// them on the lines after the first), without the `error: ` label.
pub fn one_line(program: &str, sub: Option<&str>, rendered: &str) -> String {
    let words: Vec<&str> =
        rendered.lines().map(str::trim).skip_while(|l| l.is_empty()).take_while(|l| !l.is_empty()).collect();
    let text = words.join(" ");
    let what = text.strip_prefix("error: ").unwrap_or(&text);
    let what = if what.is_empty() { "invalid arguments" } else { what };
    let name = match sub {
        Some(sub) => format!("{program} {sub}"),
        None => program.to_owned(),
    };
    format!("{name}: {what}; see '{name} --help'")
}

/// Writes a man page (`man`, or `man-SUB` for a subcommand's own page) or a
/// completion script (`bash`, `zsh`, `fish`) of `command` to stdout, for
/// packaging; returns the exit code.
pub fn generate(mut command: clap::Command, what: &str) -> i32 {
    // Built, each subcommand knows its full name (`vscode-shim stop`), which
    // its page's synopsis shows.
    command.build();
    let name = command.get_name().to_owned();
    let mut out = std::io::stdout();
    let page = match what.strip_prefix("man-") {
        _ if what == "man" => Some(command.clone()),
        // clap (without its `string` feature) takes only static names; this
        // process prints one page and exits.
        Some(sub) => command.find_subcommand(sub).map(|sc| {
            sc.clone()
                .name(&*Box::leak(format!("{name}-{sub}").into_boxed_str()))
                // Every crate of the workspace has the workspace's version.
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
            return USAGE;
        }
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name.clone(), &mut script);
    if shell == clap_complete::Shell::Bash {
        // clap_complete 4.6 names a hyphenated program's subcommand cases
        // `vscode__subcmd__shim__subcmd__setup` but looks them up as
        // `vscode__shim__subcmd__setup`, so nothing after a subcommand
        // would complete; tests/tests/manpages.rs completes through it.
        let fixed = String::from_utf8_lossy(&script)
            .replace(&name.replace('-', "__subcmd__"), &name.replace('-', "__"));
        script = fixed.into_bytes();
    }
    match out.write_all(&script) {
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
    fn errors_become_one_line_naming_the_subcommand() {
        let rendered = "error: unexpected argument '--bogus' found\n\n  tip: ...\n\nUsage: x\n";
        assert_eq!(
            one_line("vscode-shim", None, rendered),
            "vscode-shim: unexpected argument '--bogus' found; see 'vscode-shim --help'"
        );
        assert_eq!(
            one_line("vscode-shim", Some("setup"), rendered),
            "vscode-shim setup: unexpected argument '--bogus' found; see 'vscode-shim setup --help'"
        );
        let required =
            "error: the following required arguments were not provided:\n  --login <HOST>\n\nUsage:";
        assert_eq!(
            one_line("p", None, required),
            "p: the following required arguments were not provided: --login <HOST>; see 'p --help'"
        );
        assert_eq!(one_line("p", None, "\n\n"), "p: invalid arguments; see 'p --help'");
    }
}
