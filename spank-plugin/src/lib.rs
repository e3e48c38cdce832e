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
pub mod remote;

use std::error::Error;

use slurm_spank::{spank_log, Context, LogLevel, Plugin, SpankHandle, SpankOption, SPANK_PLUGIN};

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
pub const OPTION: &str = "vscode";
const OPTION_USAGE: &str = "Run this job as a VS Code remote session (used by vscode-shim).";

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
        match spank.context() {
            Ok(Context::Allocator) => spank
                .job_control_setenv(JOB_CONTROL_MARK, "1", true)
                .map_err(|e| fail(format!("vscode: cannot mark the job as a VS Code session: {e}")).into()),
            Ok(Context::Remote) => {
                let config = self.config.as_ref().ok_or_else(|| {
                    fail("vscode: plugin arguments were not parsed (init did not run); check plugstack.conf")
                })?;
                remote::prepare_step(spank, config).map_err(Into::into)
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

fn fail(message: impl Into<String>) -> Failure {
    Failure::new(message)
}
