//! Root-side `/proc` reading and pidfd signalling, shared by the SPANK
//! plugin's epilog and the janitor so that both answer "which process is
//! this, may it still be signalled" by the same rules. Whether a process
//! is in a job is asked differently: the epilog looks for what a job left
//! behind (its environment, `environ.rs`), the janitor spares only what a
//! job on its node still tracks (`slurmstepd.rs`, `cgroup.rs`).
//!
//! Both run as root over files that other users control (command names,
//! environments), so every read here has a byte bound, every parser takes
//! whatever bytes it is given without panicking, and a process that
//! vanishes half-way is simply not there (`None`), never an error to act on.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

mod cgroup;
mod children;
mod cmdline;
mod environ;
mod exits;
mod pidfd;
mod pids;
mod read;
mod slurmstepd;
mod stat;
mod status;

pub use cgroup::{parse_cgroups, read_cgroups, Cgroups, JobDir};
pub use children::{parse_children, read_children};
pub use cmdline::read_cmdline;
pub use environ::{environ_in_some_job, environ_names_job, Environ};
pub use exits::poll_exited;
pub use pidfd::{wait_all_exited, Pinned};
pub use pids::pids;
pub use slurmstepd::{is_slurmstepd, slurmstepd_job};
pub use stat::{parse_stat, read_stat, Stat};
pub use status::{parse_uids, read_uids, Uids};
