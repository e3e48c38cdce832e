use std::time::Duration;

use clap::Parser;

use crate::duration;

/// Finds VS Code servers left running on this login node outside Slurm, and ends them.
///
/// A server tree is a process whose executable or command line is under a
/// `.vscode-server` directory, outside any Slurm job, with everything below
/// it. It is orphaned when its ssh session is gone (it was reparented to
/// init) or its owner has no ssh session on this node at all, and it is
/// older than --min-age. Trees inside a connected ssh session, of root, of
/// system users (uid below --min-uid) and inside jobs are never touched.
///
/// Without --kill nothing is changed: the orphaned trees are listed.
#[derive(Debug, Parser)]
#[command(
    name = "vscode-janitor",
    version,
    after_help = "Durations: 30s, 10m, 1h, 2h30m, 1d (a unit on every number, largest first).\n\
                  Exit status: 0 done, 1 a tree could not be ended or /proc could not be read, 2 bad arguments.\n\
                  From cron, e.g.: */15 * * * * root /usr/bin/vscode-janitor --kill --min-age 2h --message"
)]
pub struct Cli {
    /// End the orphaned trees: SIGTERM to every process, SIGKILL after --grace.
    #[arg(long)]
    pub kill: bool,

    /// Only trees whose top process has run at least this long.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = duration::parse)]
    pub min_age: Duration,

    /// Time between SIGTERM and SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    pub grace: Duration,

    /// Processes of uids below this (system accounts) are never touched; root never is.
    #[arg(long, value_name = "UID", default_value_t = 1000)]
    pub min_uid: u32,

    /// Only this user's servers.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Leave a note saying what was ended, why, and the supported way, in
    /// the user's ~/.vscode-server/ENDED-BY-ADMIN.txt.
    #[arg(long, requires = "kill")]
    pub message: bool,

    /// Print nothing on stdout; ended trees are still logged.
    #[arg(short, long, conflicts_with = "json")]
    pub quiet: bool,

    /// Print a man page or a completion script (man, bash, zsh, fish), for packaging.
    #[arg(long, value_name = "WHAT", hide = true)]
    pub generate: Option<String>,
}

/// Exits 2 with `what` as the one line on stderr, like a usage error of
/// clap's (cron mails stderr and admins grep logs).
pub fn usage_error(what: &str) -> ! {
    eprintln!("vscode-janitor: {what}; see 'vscode-janitor --help'");
    std::process::exit(vscode_slurm_common::cli::USAGE);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vscode-janitor").chain(args.iter().copied()))
    }

    fn error(args: &[&str]) -> String {
        let e = parse(args).expect_err("should fail");
        vscode_slurm_common::cli::one_line("vscode-janitor", None, &e.render().to_string())
    }

    #[test]
    fn defaults_are_a_safe_dry_run() {
        let cli = parse(&[]).unwrap();
        assert!(!cli.kill && !cli.message && !cli.json && !cli.quiet);
        assert_eq!(cli.min_age, Duration::from_secs(3_600));
        assert_eq!(cli.grace, Duration::from_secs(10));
        assert_eq!(cli.min_uid, 1_000);
        assert_eq!(cli.user, None);
    }

    #[test]
    fn the_cron_line_parses() {
        let cli =
            parse(&["--kill", "--min-age", "2h", "--message", "--grace=30s", "--user", "alice"]).unwrap();
        assert!(cli.kill && cli.message);
        assert_eq!(cli.min_age, Duration::from_secs(7_200));
        assert_eq!(cli.grace, Duration::from_secs(30));
        assert_eq!(cli.user.as_deref(), Some("alice"));
    }

    #[test]
    fn errors_are_one_line() {
        for (args, start) in [
            (&["--bogus"][..], "vscode-janitor: unexpected argument '--bogus' found"),
            (&["--min-age", "soon"], "vscode-janitor: invalid value 'soon' for '--min-age <DURATION>'"),
            (&["--message"], "vscode-janitor: the following required arguments were not provided: --kill"),
            (&["--json", "--quiet"], "vscode-janitor: the argument '--json' cannot be used with '--quiet'"),
            (&["--min-uid", "-1"], "vscode-janitor: "),
            (&["stray"], "vscode-janitor: unexpected argument 'stray' found"),
        ] {
            let line = error(args);
            assert!(!line.contains('\n'), "{line}");
            assert!(line.starts_with(start), "{args:?}: {line}");
            assert!(line.ends_with("; see 'vscode-janitor --help'"), "{line}");
        }
    }
}
