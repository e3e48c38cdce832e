//! Whether a process belongs to a Slurm job, from its initial environment:
//! the epilog's definition (it ends what a job left behind).
//!
//! Slurm puts the job id into the environment of every process of a job,
//! and it stays in /proc/PID/environ (the environment the process was
//! started with) even after the process daemonised out of the job's
//! process tracking. Both `SLURM_JOB_ID` and `SLURM_JOBID` count: the
//! second is the older name, which older Slurm releases and `srun` still
//! export, so a process may carry only that one.
//!
//! This is a sign, not a proof: a user can remove or set these variables.
//! The epilog therefore also requires the job's uid. The janitor does not
//! read it at all: a forged variable must not spare a process, so it asks
//! whether a job on its node tracks the process (`slurmstepd.rs`).

use std::io;

use crate::read::{read_memory_prefix, Prefix};

/// Real environments are a few KiB, some hundred KiB with large module
/// setups; the kernel lets a plain exec pass at most 6 MiB of arguments and
/// environment together, but a process can point its environ anywhere in
/// its memory. Past this bound the rest is not read.
const ENVIRON_LIMIT: usize = 1024 * 1024;

const JOB_ID_NAMES: [&[u8]; 2] = [b"SLURM_JOB_ID", b"SLURM_JOBID"];

/// /proc/PID/environ, read up to a bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environ {
    prefix: Prefix,
}

impl Environ {
    /// The error is the read's: `NotFound` or `ESRCH` when the process is
    /// gone. A zombie or a kernel thread reads as an empty environment.
    pub fn read(pid: i32) -> io::Result<Environ> {
        Ok(Environ { prefix: read_memory_prefix(format!("/proc/{pid}/environ"), ENVIRON_LIMIT)? })
    }

    /// The NUL-separated entries that were read whole (an entry cut by the
    /// bound is left out: its beginning could name another job).
    pub fn as_bytes(&self) -> &[u8] {
        self.prefix.whole_records(0)
    }

    /// False when the bound cut the environment short: a job variable may
    /// then be in the part not read, so "not in a job" is not known.
    pub fn is_complete(&self) -> bool {
        !self.prefix.truncated
    }

    pub fn names_job(&self, job_id: u32) -> bool {
        environ_names_job(self.as_bytes(), job_id)
    }

    pub fn in_some_job(&self) -> bool {
        environ_in_some_job(self.as_bytes())
    }
}

/// The value of a job id variable, when `entry` is one.
fn job_id_value(entry: &[u8]) -> Option<&[u8]> {
    JOB_ID_NAMES.iter().find_map(|name| entry.strip_prefix(*name)?.strip_prefix(b"="))
}

/// `environ` is NUL-separated `NAME=value` entries. Only a whole entry with
/// exactly the id counts: `SLURM_JOB_ID=421` is not job 42's, nor is
/// `X=SLURM_JOB_ID=42`.
pub fn environ_names_job(environ: &[u8], job_id: u32) -> bool {
    let id = job_id.to_string();
    environ.split(|&b| b == 0).filter_map(job_id_value).any(|value| value == id.as_bytes())
}

/// Any value counts, even an empty one: whatever job it names, the process
/// was started by one (or its user claims so), which is not this
/// function's to judge.
pub fn environ_in_some_job(environ: &[u8]) -> bool {
    environ.split(|&b| b == 0).any(|entry| job_id_value(entry).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(entries: &[&str]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in entries {
            bytes.extend_from_slice(entry.as_bytes());
            bytes.push(0);
        }
        bytes
    }

    #[test]
    fn either_name_with_the_id_names_the_job() {
        assert!(environ_names_job(&env(&["HOME=/home/u", "SLURM_JOB_ID=42", "PATH=/bin"]), 42));
        assert!(environ_names_job(&env(&["SLURM_JOBID=42"]), 42));
        assert!(environ_names_job(&env(&["SLURM_JOB_ID=7", "SLURM_JOBID=42"]), 42));
        // The last entry without its NUL, as a process that rewrote its environment may leave it.
        assert!(environ_names_job(b"A=1\0SLURM_JOB_ID=42", 42));
        assert!(environ_names_job(b"SLURM_JOB_ID=42", 42));
    }

    #[test]
    fn the_id_must_match_exactly() {
        for other in [
            "SLURM_JOB_ID=421",
            "SLURM_JOB_ID=4",
            "SLURM_JOB_ID=042",
            "SLURM_JOB_ID=42 ",
            "SLURM_JOB_ID=",
            "SLURM_JOBID=4",
        ] {
            assert!(!environ_names_job(&env(&[other]), 42), "{other}");
        }
        assert!(!environ_names_job(&env(&["SLURM_JOB_ID=42"]), 4));
        assert!(!environ_names_job(&env(&["SLURM_JOB_ID=42"]), 421));
    }

    #[test]
    fn job_variables_count_only_as_whole_entries() {
        for hidden in [
            "X=SLURM_JOB_ID=42",
            "XSLURM_JOB_ID=42",
            "SLURM_JOB_ID_X=42",
            "slurm_job_id=42",
            "SLURM_JOBID_=42",
            "OLD_SLURM_JOB_ID=42",
            "SLURM_JOB_ID",
        ] {
            assert!(!environ_names_job(&env(&[hidden]), 42), "{hidden}");
            assert!(!environ_in_some_job(&env(&["HOME=/home/a", hidden])), "{hidden}");
        }
        for empty in [&b""[..], b"\0\0"] {
            assert!(!environ_names_job(empty, 42));
            assert!(!environ_in_some_job(empty));
        }
    }

    #[test]
    fn any_value_of_either_name_is_some_job() {
        assert!(environ_in_some_job(b"HOME=/home/a\0SLURM_JOB_ID=42\0"));
        assert!(environ_in_some_job(b"SLURM_JOBID=7\0"));
        assert!(environ_in_some_job(b"SLURM_JOB_ID=\0"));
    }

    #[test]
    fn an_entry_cut_by_the_bound_is_not_read() {
        let cut = Environ { prefix: Prefix { bytes: b"A=1\0SLURM_JOB_ID=4".to_vec(), truncated: true } };
        assert!(!cut.names_job(4), "the start of SLURM_JOB_ID=42 named job 4");
        assert!(!cut.in_some_job());
        assert!(!cut.is_complete());
        let whole = Environ { prefix: Prefix { bytes: b"SLURM_JOBID=4\0".to_vec(), truncated: false } };
        assert!(whole.names_job(4) && whole.in_some_job() && whole.is_complete());
    }

    #[test]
    fn a_child_started_in_a_job_reads_back() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env_clear()
            .env("SLURM_JOBID", "123")
            .spawn()
            .expect("sleep");
        let environ = Environ::read(i32::try_from(child.id()).unwrap()).expect("environ");
        assert!(environ.is_complete());
        assert!(environ.names_job(123));
        assert!(!environ.names_job(12));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(Environ::read(-5).is_err());
    }
}
