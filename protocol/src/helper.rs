//! The helper's command line as vscode-shim writes it: the batch script
//! `vscode-job-helper keep --warn-before=...` and each window's
//! `vscode-job-helper --through-keeper`. The helper's clap definitions use
//! these same constants, so a rename on one side cannot strand the other.

/// The subcommand the profile's batch script runs: the job's keeper.
pub const KEEP: &str = "keep";

/// The keeper's option for its time-limit warnings, a comma-separated list
/// of durations (see [`crate::duration`]) or `none`.
pub const WARN_BEFORE: &str = "--warn-before";

/// A window's flag: have the job's keeper start the launch script, so the
/// server outlives this window's step.
pub const THROUGH_KEEPER: &str = "--through-keeper";

/// A proxy window's subcommand: serve one SSH connection on the step's
/// stdio with the node's sshd in inetd mode (see [`crate::proxy`]).
pub const SSHD: &str = "sshd";

/// A window's flag where the scheduler's remote command carries no
/// environment (HTCondor's `condor_ssh_to_job`): the session's variables
/// ([`crate::env::HIDDEN_FROM_SCRIPT`]) come as the first line of stdin,
/// never on a command line, which every user of the node can read.
pub const SESSION_ON_STDIN: &str = "--session-on-stdin";

/// The longest first line [`SESSION_ON_STDIN`] reads.
pub const MAX_SESSION_LINE: usize = 256;

/// The first line of a window's stdin under [`SESSION_ON_STDIN`]:
/// `NAME=VALUE` words, only the session's own names.
pub fn session_line(vars: &[(&str, &str)]) -> String {
    let words: Vec<String> = vars.iter().map(|(name, value)| format!("{name}={value}")).collect();
    format!("{}\n", words.join(" "))
}

/// The variables of a [`session_line`] (without its newline); anything else
/// in it is an error, so a stray first line is never taken for a session.
pub fn parse_session_line(line: &str) -> Result<Vec<(String, String)>, String> {
    line.split(' ')
        .map(|word| {
            let (name, value) = word.split_once('=').ok_or_else(|| format!("{word:?} is not NAME=VALUE"))?;
            if !crate::env::HIDDEN_FROM_SCRIPT.contains(&name) {
                return Err(format!("{name:?} is not a session variable"));
            }
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("{name} has an unusable value"));
            }
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The long name of a flag, as clap's `#[arg(long = ...)]` takes it.
pub const fn long(flag: &'static str) -> &'static str {
    match flag.as_bytes() {
        [b'-', b'-', rest @ ..] => match std::str::from_utf8(rest) {
            Ok(name) => name,
            Err(_) => flag,
        },
        _ => flag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_lines_round_trip_and_carry_nothing_else() {
        let vars = [(crate::env::NONCE, "ab12"), (crate::env::RELAY_PORT, "4000")];
        let line = session_line(&vars);
        assert!(line.ends_with('\n') && line.len() < MAX_SESSION_LINE);
        let parsed = parse_session_line(line.trim_end()).unwrap();
        assert_eq!(parsed, vars.map(|(n, v)| (n.to_owned(), v.to_owned())));
        assert!(parse_session_line("PATH=/evil").is_err());
        assert!(parse_session_line("VSCODE_SLURM_NONCE=a;b").is_err());
        assert!(parse_session_line("#!/bin/sh").is_err());
    }

    #[test]
    fn long_names_drop_the_dashes() {
        assert_eq!(long(WARN_BEFORE), "warn-before");
        assert_eq!(long(THROUGH_KEEPER), "through-keeper");
        assert_eq!(long("plain"), "plain");
    }
}
