//! Jobs: the operations the CLI and (later) the daemon both run, so they cannot drift.

pub mod backup;
pub mod report;
pub mod restore;
pub mod retention;
pub mod test_restore;
pub mod verify;

use std::fmt;

/// How a job ended, for exit codes: a job that ran and failed is exit 1.
#[derive(Debug)]
pub struct JobFailed(pub anyhow::Error);

impl fmt::Display for JobFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for JobFailed {}
