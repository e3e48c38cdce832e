//! The one error type callbacks return.
//!
//! Slurm shows the message to the user (allocator, local) or writes it to the
//! daemon log (remote, job script) as it is, so every message is complete on
//! its own: it starts with `vscode: `, says what went wrong and, where an admin
//! or user can fix it, what to change.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(String);

impl Failure {
    /// `message` must already start with `vscode: `.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}
