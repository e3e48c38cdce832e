//! What the parts say to each other through Slurm: the plugin's options on
//! the command lines the shim runs, the name that marks a profile's job, and
//! the Comment in which the job's keeper says how many windows it holds.

/// The plugin's option (`--vscode`): the job is a VS Code session. Given to
/// salloc, sbatch and each window's srun.
pub const OPTION: &str = "vscode";

/// The plugin's option for how long a job outlives its last window
/// (`--vscode-linger=DURATION`, see [`crate::duration`]).
pub const LINGER_OPTION: &str = "vscode-linger";

/// srun's flag for a window's step. slurmstepd otherwise holds a task's
/// output until a newline or 1 KiB (buffered stdio): fine for a launch
/// script's lines, but an SSH connection's packets (a proxy window) and an
/// exec server speaking over the launch stream have no newlines, and would
/// stall part-way.
pub const UNBUFFERED: &str = "--unbuffered";

/// A profile's job is named `vscode:PROFILE`, so `squeue --name` finds it.
pub const JOB_NAME_PREFIX: &str = "vscode:";

/// `--vscode`, as the shim passes it.
pub fn option_flag() -> String {
    format!("--{OPTION}")
}

/// `--vscode-linger=DURATION`.
pub fn linger_flag(linger: std::time::Duration) -> String {
    format!("--{LINGER_OPTION}={}", crate::duration::Display(linger))
}

/// The job name of a profile.
pub fn job_name(profile: &str) -> String {
    format!("{JOB_NAME_PREFIX}{profile}")
}

/// The profile of a job name, if it is a session's.
pub fn profile_of(job_name: &str) -> Option<&str> {
    job_name.strip_prefix(JOB_NAME_PREFIX)
}

/// What the keeper keeps in its job's Comment: `vscode:windows=N` while
/// windows are attached, `vscode:windows=0,ends=UNIX` while lingering.
/// `vscode-shim sessions` reads it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    pub windows: usize,
    /// When the job ends if no window comes back, Unix seconds.
    pub ends_at: Option<u64>,
}

impl Attachment {
    pub fn encode(&self) -> String {
        match self.ends_at {
            Some(at) => format!("{JOB_NAME_PREFIX}windows={},ends={at}", self.windows),
            None => format!("{JOB_NAME_PREFIX}windows={}", self.windows),
        }
    }

    /// `None` for a Comment the keeper did not write (someone else's, or
    /// Slurm's `(null)`).
    pub fn parse(comment: &str) -> Option<Attachment> {
        let body = comment.strip_prefix(JOB_NAME_PREFIX)?;
        let mut windows = None;
        let mut ends_at = None;
        for part in body.split(',') {
            match part.split_once('=')? {
                ("windows", n) => windows = Some(n.parse().ok()?),
                ("ends", t) => ends_at = Some(t.parse().ok()?),
                _ => return None,
            }
        }
        Some(Attachment { windows: windows?, ends_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_and_flags() {
        assert_eq!(option_flag(), "--vscode");
        assert_eq!(linger_flag(std::time::Duration::from_secs(1800)), "--vscode-linger=30m");
        assert_eq!(job_name("gpu"), "vscode:gpu");
        assert_eq!(profile_of(&job_name("gpu")), Some("gpu"));
        assert_eq!(profile_of("interactive"), None);
    }

    #[test]
    fn comments_round_trip_and_others_are_not_ours() {
        for a in
            [Attachment { windows: 2, ends_at: None }, Attachment { windows: 0, ends_at: Some(1_000_090) }]
        {
            assert_eq!(Attachment::parse(&a.encode()), Some(a));
        }
        assert_eq!(Attachment::parse("vscode:windows=2").map(|a| a.windows), Some(2));
        for other in [
            "(null)",
            "",
            "vscode:",
            "vscode:windows=x",
            "vscode:ends=5",
            "vscode:windows=1,colour=red",
            "my note",
        ] {
            assert_eq!(Attachment::parse(other), None, "{other}");
        }
    }

    #[test]
    fn flags_round_trip_through_the_plugins_reading() {
        assert_eq!(option_flag().strip_prefix("--"), Some(OPTION));
        for secs in [0, 90, 1_800, 86_400 + 61] {
            let linger = std::time::Duration::from_secs(secs);
            let flag = linger_flag(linger);
            let value = flag.strip_prefix(&format!("--{LINGER_OPTION}=")).unwrap();
            assert_eq!(crate::duration::parse(value), Ok(linger), "{flag}");
        }
    }

    proptest! {
        #[test]
        fn any_attachment_round_trips(windows in any::<usize>(), ends_at in any::<Option<u64>>()) {
            let a = Attachment { windows, ends_at };
            prop_assert_eq!(Attachment::parse(&a.encode()), Some(a));
        }
    }
}
