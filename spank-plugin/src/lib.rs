//! `spank_vscode.so`: the Slurm side of vscode-slurm.
//!
//! `salloc --vscode` (what vscode-shim runs) marks a job as a VS Code
//! session. On each compute node the plugin then gives every step of that job
//! a bind address and a private runtime directory, and the epilog ends
//! whatever the session left running and removes the directory.
//!
//! This file only registers the plugin with Slurm and sends each callback to
//! the module for its context; see `config` for the plugstack.conf arguments.
//!
//! No callback may panic: slurm-spank keeps its state behind global mutexes,
//! and a panic would poison them for every later callback in the process.

pub mod bind;
pub mod config;
pub mod epilog;
pub mod failure;
pub mod mounts;
pub mod release;
pub mod remote;
pub mod runtime;

use std::error::Error;

use slurm_spank::{spank_log, Context, LogLevel, Plugin, SpankHandle, SpankOption, SPANK_PLUGIN};

use vscode_slurm_protocol::duration;

use crate::config::Config;
use crate::failure::Failure;

/// The Slurm release of the headers on the build machine (see build.rs), not
/// slurm-spank's own constant, which comes from the newer Slurm its bundled
/// bindings were made from: Slurm refuses a plugin built for another release.
pub mod slurm_version {
    include!(concat!(env!("OUT_DIR"), "/slurm_version.rs"));
}

/// `--vscode` takes no argument: it only marks the job; everything
/// site-specific lives in plugstack.conf where users cannot change it.
pub const OPTION: &str = vscode_slurm_protocol::slurm::OPTION;
const OPTION_USAGE: &str = "Run this job as a VS Code remote session (used by vscode-shim).";

/// `--vscode-linger=DURATION`: how long the job outlives its last window;
/// checked against the site's `linger_max` at submission, applied in the job.
pub const LINGER_OPTION: &str = vscode_slurm_protocol::slurm::LINGER_OPTION;
const LINGER_USAGE: &str = "How long a VS Code job outlives its last window (e.g. 30m; capped by the site).";

/// Set to 1 in the job control environment by salloc/sbatch; Slurm hands it
/// to the epilog as `SPANK_VSCODE`, a second sign besides the option itself.
pub const JOB_CONTROL_MARK: &str = "VSCODE";

SPANK_PLUGIN!(b"vscode", slurm_version::SLURM_VERSION_NUMBER, VsCode);

#[derive(Default)]
struct VsCode {
    /// Parsed in `init`; the job-script context never calls `init`, so the
    /// epilog parses its arguments itself.
    config: Option<Config>,
}

unsafe impl Plugin for VsCode {
    /// Logging goes straight to Slurm's log functions; no tracing subscriber.
    fn setup(&mut self, _spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        Ok(())
    }

    /// Every message is already complete (see `failure`), so it is logged as is.
    fn report_error(&self, _spank: &mut SpankHandle, error: &dyn Error) {
        spank_log(LogLevel::Error, &error.to_string());
    }

    fn init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let context =
            spank.context().map_err(|e| fail(format!("vscode: cannot tell the SPANK context: {e}")))?;
        // Registered wherever options are parsed (salloc/sbatch only see
        // options registered here), but not in the job-script context: there
        // a registered-but-unset entry would shadow the value salloc passed
        // down, and getopt would always answer "not given".
        if context != Context::JobScript {
            spank
                .register_option(SpankOption::new(OPTION).usage(OPTION_USAGE))
                .map_err(|e| fail(format!("vscode: cannot register --{OPTION}: {e}")))?;
            spank
                .register_option(SpankOption::new(LINGER_OPTION).takes_value("DURATION").usage(LINGER_USAGE))
                .map_err(|e| fail(format!("vscode: cannot register --{LINGER_OPTION}: {e}")))?;
        }
        let args = spank.plugin_argv().map_err(|e| {
            fail(format!("vscode: plugstack arguments are not valid UTF-8 ({e}); fix plugstack.conf"))
        })?;
        self.config = Some(Config::parse(&args)?);
        Ok(())
    }

    fn init_post_opt(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        if !spank.is_option_set(OPTION) {
            return Ok(());
        }
        let config = self.config.as_ref().ok_or_else(|| {
            fail("vscode: plugin arguments were not parsed (init did not run); check plugstack.conf")
        })?;
        let linger = asked_linger(spank)?;
        match spank.context() {
            Ok(Context::Allocator) => {
                if let (granted, true) = config.effective_linger(linger) {
                    spank_log(
                        LogLevel::Info,
                        &format!(
                            "vscode: --linger is capped at this site's maximum: the job lingers {} \
                             after its last window closes",
                            duration::Display(granted)
                        ),
                    );
                }
                // The node checks again and is the one that counts; this only
                // refuses early, in the user's terminal, what the login node
                // already shows (a symlinked or user-owned runtime_dir parent).
                runtime::check(&config.runtime_dir)?;
                spank.job_control_setenv(JOB_CONTROL_MARK, "1", true).map_err(|e| {
                    fail(format!("vscode: cannot mark the job as a VS Code session: {e}")).into()
                })
            }
            Ok(Context::Remote) => {
                remote::prepare_step(spank, config, config.effective_linger(linger).0).map_err(Into::into)
            }
            _ => Ok(()),
        }
    }

    /// Always succeeds: an epilog error would drain the node.
    fn job_epilog(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        epilog::run(spank);
        Ok(())
    }
}

/// The user's `--vscode-linger`, refused with one line when it is not a duration.
fn asked_linger(spank: &SpankHandle) -> Result<Option<std::time::Duration>, Failure> {
    let value = spank.get_option_value(LINGER_OPTION).map_err(|e| {
        fail(format!("vscode: --{LINGER_OPTION} is not valid UTF-8 ({e}); write e.g. --{LINGER_OPTION}=30m"))
    })?;
    match value {
        None => Ok(None),
        Some(text) => duration::parse(&text)
            .map(Some)
            .map_err(|why| fail(format!("vscode: bad --{LINGER_OPTION}: {why}"))),
    }
}

fn fail(message: impl Into<String>) -> Failure {
    Failure::new(message)
}
