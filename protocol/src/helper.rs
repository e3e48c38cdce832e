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
    fn long_names_drop_the_dashes() {
        assert_eq!(long(WARN_BEFORE), "warn-before");
        assert_eq!(long(THROUGH_KEEPER), "through-keeper");
        assert_eq!(long("plain"), "plain");
    }
}
