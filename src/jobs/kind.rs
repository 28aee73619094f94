//! The kinds of job, named as the `schedules:` block and the reports name them. A leaf: the config
//! reads schedules by these names without knowing how jobs run.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    FullBackup,
    IncrementalBackup,
    Verification,
    TestRestore,
    Retention,
    FileBackup,
    ConfigBackup,
    /// A snapshot of a SQLite database file (`sqlite:`).
    SqliteBackup,
    /// A physical base backup of the cluster whose WAL is archived (`wal:`).
    BaseBackup,
    /// A point-in-time recovery into a scratch copy, checked (`recovery_drill`).
    RecoveryDrill,
    /// A restore asked for on the command line (never scheduled).
    Restore,
    /// A named restore point on the cluster whose WAL is archived (`pgbackd restore-point`,
    /// `pgbackd trigger restore_point`; never scheduled).
    RestorePoint,
}

impl JobKind {
    /// The kinds a schedule can name.
    pub const SCHEDULED: [JobKind; 10] = [
        JobKind::FullBackup,
        JobKind::IncrementalBackup,
        JobKind::Verification,
        JobKind::TestRestore,
        JobKind::Retention,
        JobKind::FileBackup,
        JobKind::ConfigBackup,
        JobKind::SqliteBackup,
        JobKind::BaseBackup,
        JobKind::RecoveryDrill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobKind::FullBackup => "full_backup",
            JobKind::IncrementalBackup => "incremental_backup",
            JobKind::Verification => "verification",
            JobKind::TestRestore => "test_restore",
            JobKind::Retention => "retention",
            JobKind::FileBackup => "file_backup",
            JobKind::ConfigBackup => "config_backup",
            JobKind::SqliteBackup => "sqlite_backup",
            JobKind::BaseBackup => "base_backup",
            JobKind::RecoveryDrill => "recovery_drill",
            JobKind::Restore => "restore",
            JobKind::RestorePoint => "restore_point",
        }
    }

    /// The kind a schedule names (`restore` cannot be scheduled).
    pub fn scheduled(name: &str) -> Option<JobKind> {
        JobKind::SCHEDULED.into_iter().find(|k| k.name() == name)
    }

    /// The kinds `pgbackd trigger` asks a daemon to run: every scheduled kind and restore points.
    pub fn triggerable(name: &str) -> Option<JobKind> {
        JobKind::scheduled(name).or((name == JobKind::RestorePoint.name()).then_some(JobKind::RestorePoint))
    }

    /// Whether it stores a new backup.
    pub fn is_backup(self) -> bool {
        matches!(
            self,
            JobKind::FullBackup
                | JobKind::IncrementalBackup
                | JobKind::FileBackup
                | JobKind::ConfigBackup
                | JobKind::SqliteBackup
                | JobKind::BaseBackup
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for k in JobKind::SCHEDULED {
            assert_eq!(JobKind::scheduled(k.name()), Some(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{}\"", k.name()));
        }
        assert_eq!(JobKind::scheduled("restore"), None);
        assert_eq!(JobKind::scheduled("restore_point"), None);
        assert_eq!(JobKind::triggerable("restore_point"), Some(JobKind::RestorePoint));
        assert_eq!(JobKind::triggerable("full_backup"), Some(JobKind::FullBackup));
        assert_eq!(JobKind::triggerable("restore"), None);
        assert_eq!(serde_json::to_string(&JobKind::Restore).unwrap(), "\"restore\"");
    }
}
