//! What a backup is of: a database, a set of application files, a set of configuration files, a
//! SQLite database file (and, with point-in-time recovery, a cluster's WAL archive and base
//! backups). Every key, every
//! manifest, every retention plan and every job names its subject.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// A database, by its repository name (config `databases[].name`).
    Database(String),
    /// A source set of `files:` (job `file_backup`).
    Files(String),
    /// A source set of `configs:` (job `config_backup`).
    Configs(String),
    /// A cluster whose WAL is archived (config `wal.name`).
    Cluster(String),
    /// A SQLite database file (config `sqlite[].name`, job `sqlite_backup`).
    Sqlite(String),
}

impl Subject {
    /// The name inside its kind (`app`, `uploads`).
    pub fn name(&self) -> &str {
        match self {
            Subject::Database(n)
            | Subject::Files(n)
            | Subject::Configs(n)
            | Subject::Cluster(n)
            | Subject::Sqlite(n) => n,
        }
    }

    /// A file or configuration set (backed up as a tar archive).
    pub fn is_file_set(&self) -> bool {
        matches!(self, Subject::Files(_) | Subject::Configs(_))
    }

    /// What it is, for messages: `database app`, `file set uploads`.
    pub fn describe(&self) -> String {
        match self {
            Subject::Database(n) => format!("database {n}"),
            Subject::Files(n) => format!("file set {n}"),
            Subject::Configs(n) => format!("configuration set {n}"),
            Subject::Cluster(n) => format!("cluster {n}"),
            Subject::Sqlite(n) => format!("SQLite database {n}"),
        }
    }
}

/// `app` for a database, `files:uploads` and `configs:etc` for sets: the form reports, logs,
/// metrics and the status file use.
impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Database(n) => f.write_str(n),
            Subject::Files(n) => write!(f, "files:{n}"),
            Subject::Configs(n) => write!(f, "configs:{n}"),
            Subject::Cluster(n) => write!(f, "cluster:{n}"),
            Subject::Sqlite(n) => write!(f, "sqlite:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_json() {
        let s = Subject::Files("uploads".into());
        assert_eq!(s.to_string(), "files:uploads");
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"files":"uploads"}"#);
        assert_eq!(Subject::Database("app".into()).to_string(), "app");
        let back: Subject = serde_json::from_str(r#"{"database":"app"}"#).unwrap();
        assert_eq!(back, Subject::Database("app".into()));
        let s = Subject::Sqlite("cache".into());
        assert_eq!((s.to_string(), s.describe()), ("sqlite:cache".into(), "SQLite database cache".into()));
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"sqlite":"cache"}"#);
    }
}
