//! What the parts say to each other through HTCondor: the editor job's
//! ClassAd attributes (how a site's policy and `condor_q` see a session),
//! the submit commands the shim owns and the ones a user may add after `--`,
//! and the job states the shim reads back.
//!
//! A profile's editor job is a vanilla-universe job whose executable is the
//! helper's keeper, as a profile's Slurm job is a batch script running it.

use crate::slurm::JOB_NAME_PREFIX;

/// `+VSCodeSession = True` on every editor job: what a site's START
/// expression, job transform or monitoring selects.
pub const SESSION_ATTR: &str = "VSCodeSession";
/// The job's profile, a string attribute: the shim finds a profile's job by it.
pub const PROFILE_ATTR: &str = "VSCodeProfile";
/// What the keeper keeps saying about attached windows, in the Slurm
/// Comment's encoding ([`crate::slurm::Attachment`]), set with condor_chirp.
pub const WINDOWS_ATTR: &str = "VSCodeWindows";

/// Longest submit command a user may give after `--`.
pub const MAX_SUBMIT_COMMAND: usize = 1024;

/// The submit commands the shim writes itself: a user's would change what
/// the job runs, where its output goes or how the shim finds it, so they
/// are refused before anything is submitted. Compared case-insensitively,
/// as condor_submit does.
pub const OWNED_COMMANDS: [&str; 25] = [
    "universe",
    "executable",
    "arguments",
    "arguments2",
    "args",
    "environment",
    "environment2",
    "env",
    "getenv",
    "get_env",
    "input",
    "stdin",
    "output",
    "stdout",
    "error",
    "stderr",
    "log",
    "shell",
    "transfer_executable",
    "batch_name",
    "want_io_proxy",
    "queue",
    "include",
    "use",
    "if",
];

/// The job attributes those commands set (and ours), refused in their
/// `+NAME` and `MY.NAME` forms, which set an attribute directly and would
/// override them.
pub const OWNED_ATTRIBUTES: [&str; 16] = [
    SESSION_ATTR,
    PROFILE_ATTR,
    WINDOWS_ATTR,
    "WantIOProxy",
    "Cmd",
    "Args",
    "Arguments",
    "Env",
    "Environment",
    "In",
    "Out",
    "Err",
    "UserLog",
    "JobUniverse",
    "JobBatchName",
    "TransferExecutable",
];

/// An editor job's state, from `JobStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Idle,
    Running,
    Removed,
    Completed,
    Held,
    TransferringOutput,
    Suspended,
}

impl JobStatus {
    /// HTCondor's number for the state (`JobStatus` in the job ad).
    pub fn from_code(code: &str) -> Option<JobStatus> {
        Some(match code.trim() {
            "1" => JobStatus::Idle,
            "2" => JobStatus::Running,
            "3" => JobStatus::Removed,
            "4" => JobStatus::Completed,
            "5" => JobStatus::Held,
            "6" => JobStatus::TransferringOutput,
            "7" => JobStatus::Suspended,
            _ => return None,
        })
    }

    /// As `condor_q` says it, for the user's lines.
    pub fn word(self) -> &'static str {
        match self {
            JobStatus::Idle => "idle",
            JobStatus::Running => "running",
            JobStatus::Removed => "removed",
            JobStatus::Completed => "completed",
            JobStatus::Held => "held",
            JobStatus::TransferringOutput => "transferring output",
            JobStatus::Suspended => "suspended",
        }
    }

    /// A window may join a job in this state (now or once it starts).
    pub fn joinable(self) -> bool {
        matches!(self, JobStatus::Idle | JobStatus::Running)
    }
}

/// `vscode:PROFILE`, the same batch name `condor_q` groups the job under as
/// the Slurm job name.
pub fn batch_name(profile: &str) -> String {
    format!("{JOB_NAME_PREFIX}{profile}")
}

/// The constraint that finds a profile's editor jobs. `profile` is a
/// checked profile name: letters, digits, `-`, `_`, `.`, so it needs no
/// quoting inside the string.
///
/// The owner is named too: anyone can label a job of theirs with our
/// attributes, and `condor_q` shows other users' jobs where the site sets
/// `CONDOR_Q_ONLY_MY_JOBS = False` or to a queue superuser.
pub fn profile_constraint(owner: &str, profile: &str) -> String {
    format!("{} && {PROFILE_ATTR} =?= \"{profile}\"", sessions_constraint(owner))
}

/// The constraint that finds every editor job of `owner`.
pub fn sessions_constraint(owner: &str) -> String {
    format!("Owner == {} && {SESSION_ATTR} =?= True", classad_string(owner))
}

/// One user submit command, `name = value` (spaces optional), checked
/// before submission; the error is one clause for the user's line.
pub fn check_submit_command(text: &str) -> Result<(String, String), String> {
    if text.len() > MAX_SUBMIT_COMMAND {
        return Err(format!("a submit command is longer than {MAX_SUBMIT_COMMAND} bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{text:?} holds a control character (a newline, say); give one command per argument"
        ));
    }
    let Some((name, value)) = text.split_once('=') else {
        let first = text.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
        if first == "queue" {
            return Err("'queue' is written by vscode-shim (one editor job per profile); drop it".to_owned());
        }
        return Err(format!(
            "'{text}' is not a submit command of the form name = value, e.g. request_cpus = 4"
        ));
    };
    let (name, value) = (name.trim(), value.trim());
    // condor_submit reads `MY.` in any case.
    let attribute = match name.strip_prefix('+') {
        Some(rest) => Some(rest),
        None if name.len() > 3 && name[..3].eq_ignore_ascii_case("my.") => Some(&name[3..]),
        None => None,
    };
    let plain = attribute.unwrap_or(name);
    let well_formed = !plain.is_empty()
        && plain.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && plain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if !well_formed {
        return Err(format!(
            "'{name}' in '{text}' is not a submit command name (letters, digits, '_', an optional leading '+')"
        ));
    }
    if value.is_empty() {
        return Err(format!("'{text}' gives {name} no value"));
    }
    // A trailing backslash joins the next line (ours) to this one.
    if value.ends_with('\\') {
        return Err(format!("'{text}' ends in a backslash, which would join it to the next command"));
    }
    let owned = match attribute {
        Some(attribute) => OWNED_ATTRIBUTES.iter().any(|owned| owned.eq_ignore_ascii_case(attribute)),
        None => OWNED_COMMANDS.iter().any(|owned| owned.eq_ignore_ascii_case(name)),
    };
    if owned {
        return Err(format!("'{name}' is written by vscode-shim (the editor job runs its keeper); drop it"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// A ClassAd string literal of plain text: quotes and backslashes escaped.
pub fn classad_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_commands_are_checked_and_the_shims_own_refused() {
        assert_eq!(check_submit_command("request_cpus = 4"), Ok(("request_cpus".into(), "4".into())));
        assert_eq!(check_submit_command("request_gpus=1"), Ok(("request_gpus".into(), "1".into())));
        assert_eq!(
            check_submit_command("+ContainerImage = \"img.sif\""),
            Ok(("+ContainerImage".into(), "\"img.sif\"".into()))
        );
        assert!(check_submit_command("MY.Site = 1").is_ok());
        for (bad, says) in [
            ("queue", "'queue' is written by vscode-shim"),
            ("queue 5", "'queue' is written by vscode-shim"),
            ("request_cpus", "not a submit command of the form name = value"),
            ("Executable = /bin/sh", "'Executable' is written by vscode-shim"),
            ("+VSCodeProfile = \"x\"", "is written by vscode-shim"),
            ("MY.VSCodeSession = False", "is written by vscode-shim"),
            ("request cpus = 4", "is not a submit command name"),
            ("1abc = 2", "is not a submit command name"),
            ("request_memory =", "gives request_memory no value"),
            ("a = 1\nqueue", "control character"),
            ("my.VSCodeProfile = \"x\"", "is written by vscode-shim"),
            ("+cmd = \"/bin/sh\"", "is written by vscode-shim"),
            ("MY.JobUniverse = 7", "is written by vscode-shim"),
            ("stdout = /tmp/x", "is written by vscode-shim"),
            ("Arguments2 = x", "is written by vscode-shim"),
            ("request_memory = 1 \\", "ends in a backslash"),
        ] {
            let e = check_submit_command(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(check_submit_command(&format!("x = {}", "y".repeat(MAX_SUBMIT_COMMAND))).is_err());
    }

    #[test]
    fn states_names_and_constraints() {
        assert_eq!(JobStatus::from_code("2"), Some(JobStatus::Running));
        assert_eq!(JobStatus::from_code("5\n"), Some(JobStatus::Held));
        assert_eq!(JobStatus::from_code("x"), None);
        assert!(JobStatus::Idle.joinable() && !JobStatus::Held.joinable());
        assert_eq!(batch_name("gpu"), "vscode:gpu");
        assert_eq!(
            profile_constraint("alice", "gpu"),
            "Owner == \"alice\" && VSCodeSession =?= True && VSCodeProfile =?= \"gpu\""
        );
        assert_eq!(classad_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
