//! The tar domain of file and configuration backups: the archive writer that hashes every file
//! as it goes and notices files that change or vanish while read ([`archive`]), and the restore
//! that unpacks archives with every file checked against its recorded SHA-256 ([`restore`]).
//! Storing, listing, verifying and deleting file backups is the repository's and the jobs' work,
//! as for every other subject.

pub mod archive;
pub mod restore;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    HardLink,
}

/// One archived path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The name in the archive (the absolute path without its leading `/`).
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub uid: u32,
    pub gid: u32,
    /// A symlink's target, or the first name of a hard-linked file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The earlier backup whose archive holds this (unchanged) file's content; `None`: this
    /// backup's own archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_in: Option<String>,
    /// For change detection by the next backup.
    #[serde(default)]
    pub inode: u64,
}

/// A file that changed, vanished (warnings) or could not be read (`error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileProblem {
    pub path: String,
    pub problem: String,
    pub error: bool,
}
