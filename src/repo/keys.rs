//! Every key of the repository, built from a [`Subject`] and a backup id; nothing else in
//! pgbackd writes a key name.
//!
//! ```text
//! <database>/<id>/{data.zst, globals.sql.zst, manifest.json, annotations.json}   (.age when encrypted)
//! files/<set>/<id>/{data.tar.zst, manifest.json, annotations.json}
//! configs/<set>/<id>/...
//! sqlite/<name>/<id>/{data.sqlite.zst, manifest.json, annotations.json}   (SQLite snapshots)
//! clusters/<cluster>/<id>/{base.tar.zst, backup_manifest.zst, manifest.json, ...}   (base backups)
//! clusters/<cluster>/wal/<system id>/<timeline+log>/<segment>-<sha256>.zst    (WAL, and .partial, .backup)
//! clusters/<cluster>/wal/<system id>/<timeline>.history-<sha256>.zst
//! ```
//!
//! Ids sort by time: `20261122T010000Z-full-3f9a1c` (UTC start, what it is, random suffix);
//! `full`/`incremental` for dumps, `files`/`configs` for file sets, `base` for base backups.
//! Database names cannot hold a `/`, so `files/<id>/...` (a database named `files`) and
//! `files/<set>/<id>/...` differ by depth (and so for `sqlite/`).

use super::subject::Subject;
use chrono::{DateTime, Utc};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const ANNOTATIONS_FILE: &str = "annotations.json";

/// The words an id can carry between its time and its suffix.
const ID_TAGS: [&str; 5] = ["full", "incremental", "files", "configs", "base"];

/// A new, sortable backup id; `tag` says what it is (`full`, `incremental`, `files`, `configs`,
/// `base`).
pub fn new_backup_id(now: DateTime<Utc>, tag: &str) -> String {
    debug_assert!(ID_TAGS.contains(&tag), "{tag}");
    let suffix: u32 = rand::random();
    format!("{}-{tag}-{:06x}", now.format("%Y%m%dT%H%M%SZ"), suffix & 0xff_ffff)
}

/// Whether a string has the shape of a backup id (before looking it up).
pub fn looks_like_backup_id(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(3, '-').collect();
    parts.len() == 3
        && parts[0].len() == 16
        && parts[0].ends_with('Z')
        && ID_TAGS.contains(&parts[1])
        && parts[2].len() == 6
        && parts[2].chars().all(|c| c.is_ascii_hexdigit())
}

/// Where every backup of `subject` lives: `app/`, `files/uploads/`.
pub fn subject_prefix(subject: &Subject) -> String {
    match subject {
        Subject::Database(n) => format!("{n}/"),
        Subject::Files(n) => format!("files/{n}/"),
        Subject::Configs(n) => format!("configs/{n}/"),
        Subject::Cluster(n) => format!("clusters/{n}/"),
        Subject::Sqlite(n) => format!("sqlite/{n}/"),
    }
}

/// The directory of one backup, ending in `/`.
pub fn backup_dir(subject: &Subject, id: &str) -> String {
    format!("{}{id}/", subject_prefix(subject))
}

pub fn manifest(subject: &Subject, id: &str) -> String {
    format!("{}{MANIFEST_FILE}", backup_dir(subject, id))
}

pub fn annotations(subject: &Subject, id: &str) -> String {
    format!("{}{ANNOTATIONS_FILE}", backup_dir(subject, id))
}

fn age(encrypted: bool) -> &'static str {
    if encrypted { ".age" } else { "" }
}

/// A dump's archive: `data.zst` (or `data.dump` uncompressed).
pub fn dump_data(subject: &Subject, id: &str, compressed: bool, encrypted: bool) -> String {
    let name = if compressed { "data.zst" } else { "data.dump" };
    format!("{}{name}{}", backup_dir(subject, id), age(encrypted))
}

/// A dump's roles and tablespaces (`pg_dumpall --globals-only`).
pub fn globals(subject: &Subject, id: &str, encrypted: bool) -> String {
    format!("{}globals.sql.zst{}", backup_dir(subject, id), age(encrypted))
}

/// A file set's tar archive: `data.tar.zst` (or `data.tar` uncompressed).
pub fn tar_data(subject: &Subject, id: &str, compressed: bool, encrypted: bool) -> String {
    let zst = if compressed { ".zst" } else { "" };
    format!("{}data.tar{zst}{}", backup_dir(subject, id), age(encrypted))
}

/// A SQLite snapshot: `data.sqlite.zst` (always zstd: incrementals are delta frames).
pub fn sqlite_data(subject: &Subject, id: &str, encrypted: bool) -> String {
    format!("{}data.sqlite.zst{}", backup_dir(subject, id), age(encrypted))
}

/// A base backup's tar of the data directory: `base.tar.zst` (or `base.tar` uncompressed).
pub fn base_data(subject: &Subject, id: &str, compressed: bool, encrypted: bool) -> String {
    let zst = if compressed { ".zst" } else { "" };
    format!("{}base.tar{zst}{}", backup_dir(subject, id), age(encrypted))
}

/// The tar of a base backup's user tablespace: `tablespace-<oid>.tar.zst`.
pub fn tablespace_data(subject: &Subject, id: &str, oid: u32, compressed: bool, encrypted: bool) -> String {
    let zst = if compressed { ".zst" } else { "" };
    format!("{}tablespace-{oid}.tar{zst}{}", backup_dir(subject, id), age(encrypted))
}

/// PostgreSQL's `backup_manifest` of a base backup.
pub fn base_pg_manifest(subject: &Subject, id: &str, encrypted: bool) -> String {
    format!("{}backup_manifest.zst{}", backup_dir(subject, id), age(encrypted))
}

/// The empty object whose name carries the SHA-256 of a backup's manifest (`manifest.sha256.<hex>`):
/// an edit of `manifest.json` alone no longer matches it, and listing a backup's directory shows
/// the digest without reading anything.
pub fn manifest_digest(subject: &Subject, id: &str, sha256_hex: &str) -> String {
    format!("{}{DIGEST_PREFIX}{sha256_hex}", backup_dir(subject, id))
}

const DIGEST_PREFIX: &str = "manifest.sha256.";

/// The digest a backup file's name carries, if it is a manifest digest.
pub fn digest_in(file: &str) -> Option<&str> {
    file.strip_prefix(DIGEST_PREFIX).filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The subject and id of a backup directory key (`app/<id>`, `files/uploads/<id>`).
pub fn parse_backup_dir(dir: &str) -> Option<(Subject, &str)> {
    let parts: Vec<&str> = dir.split('/').collect();
    let (subject, id) = match parts.as_slice() {
        [db, id] => (Subject::Database((*db).to_owned()), *id),
        ["files", set, id] => (Subject::Files((*set).to_owned()), *id),
        ["configs", set, id] => (Subject::Configs((*set).to_owned()), *id),
        ["clusters", name, id] => (Subject::Cluster((*name).to_owned()), *id),
        ["sqlite", name, id] => (Subject::Sqlite((*name).to_owned()), *id),
        _ => return None,
    };
    looks_like_backup_id(id).then_some((subject, id))
}

/// Where the locks of a subject are (of every subject, with `None`): `.locks/<subject prefix>`.
pub fn locks_prefix(subject: Option<&Subject>) -> String {
    format!(".locks/{}", subject.map(subject_prefix).unwrap_or_default())
}

/// One lock of `subject`.
pub fn lock(subject: &Subject, lock_id: &str) -> String {
    format!("{}{lock_id}.json", locks_prefix(Some(subject)))
}

/// Where the attempts of a subject's backup jobs are recorded: `<subject prefix>.attempts/`.
pub fn attempts_prefix(subject: &Subject) -> String {
    format!("{}.attempts/", subject_prefix(subject))
}

/// The record of the newest attempt of backup job `job` (`full_backup`, ...) of `subject`.
pub fn attempt(subject: &Subject, job: &str) -> String {
    format!("{}{job}.json", attempts_prefix(subject))
}

/// Where the named restore points `pgbackd restore-point` created for a cluster's archive are
/// recorded (one small JSON object each), so a recovery to one starts from a base backup before it.
pub fn restore_points(cluster: &str, system_identifier: u64) -> String {
    format!("clusters/{cluster}/restore-points/{system_identifier}/")
}

pub fn restore_point(cluster: &str, system_identifier: u64, name: &str) -> String {
    format!("{}{name}.json", restore_points(cluster, system_identifier))
}

/// Where every WAL archive of a cluster is (one per system identifier below it).
pub fn wal_root(cluster: &str) -> String {
    format!("clusters/{cluster}/wal/")
}

/// Where a cluster's WAL archive is: one archive per system identifier (an `initdb` or
/// `pg_upgrade` starts a new one), so segments of two clusters can never mix.
pub fn wal_prefix(cluster: &str, system_identifier: u64) -> String {
    format!("{}{system_identifier}/", wal_root(cluster))
}

/// Where the archived copies of WAL file `file` (`000000010000000A000000FF`, `00000002.history`)
/// are: segments grouped 256 to a directory by timeline and log, as pgBackRest does.
pub fn wal_dir(cluster: &str, system_identifier: u64, file: &str) -> String {
    match file.get(..16).filter(|_| !file.ends_with(".history")) {
        Some(group) => format!("{}{group}/", wal_prefix(cluster, system_identifier)),
        None => wal_prefix(cluster, system_identifier),
    }
}

/// One archived WAL file: its name carries the SHA-256 of its contents, so a second push of the
/// same file is recognised, and a different one refused, without reading anything.
pub fn wal_object(
    cluster: &str,
    system_identifier: u64,
    file: &str,
    sha256_hex: &str,
    compressed: bool,
    encrypted: bool,
) -> String {
    let zst = if compressed { ".zst" } else { "" };
    format!("{}{file}-{sha256_hex}{zst}{}", wal_dir(cluster, system_identifier, file), age(encrypted))
}

/// An archived WAL object's file name, SHA-256, compression and encryption, from its key.
pub fn parse_wal_object(key: &str) -> Option<(&str, &str, bool, bool)> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let (name, encrypted) = match name.strip_suffix(".age") {
        Some(n) => (n, true),
        None => (name, false),
    };
    let (name, compressed) = match name.strip_suffix(".zst") {
        Some(n) => (n, true),
        None => (name, false),
    };
    let (file, sha) = name.rsplit_once('-')?;
    (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then_some((file, sha, compressed, encrypted))
}

/// A key below `prefix` that is one file of one backup: its id and file name.
pub fn backup_file<'k>(prefix: &str, key: &'k str) -> Option<(&'k str, &'k str)> {
    let (id, file) = key.strip_prefix(prefix)?.split_once('/')?;
    (looks_like_backup_id(id) && !file.is_empty() && !file.contains('/')).then_some((id, file))
}

/// The subject and id a manifest key belongs to (any subject), `None` for other keys.
pub fn parse_manifest_key(key: &str) -> Option<(Subject, &str)> {
    let (dir, file) = key.rsplit_once('/')?;
    if file != MANIFEST_FILE {
        return None;
    }
    parse_backup_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_sort_by_time_and_are_recognised() {
        let a = new_backup_id(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(), "full");
        let b = new_backup_id(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 6).unwrap(), "incremental");
        let f = new_backup_id(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 6).unwrap(), "files");
        assert!(a.starts_with("20260102T030405Z-full-"), "{a}");
        assert!(a < b);
        assert!(looks_like_backup_id(&a) && looks_like_backup_id(&b) && looks_like_backup_id(&f));
        assert!(!looks_like_backup_id("latest"));
        assert!(!looks_like_backup_id("../../etc"));
        assert!(!looks_like_backup_id("20260102T030405Z-wal-abcdef"));
    }

    #[test]
    fn keys_of_every_subject() {
        let id = "20260102T030405Z-full-3f9a1c";
        let db = Subject::Database("app".into());
        let set = Subject::Files("uploads".into());
        assert_eq!(dump_data(&db, id, true, true), format!("app/{id}/data.zst.age"));
        assert_eq!(tar_data(&set, id, true, false), format!("files/uploads/{id}/data.tar.zst"));
        assert_eq!(manifest(&Subject::Configs("etc".into()), id), format!("configs/etc/{id}/manifest.json"));
        assert_eq!(parse_manifest_key(&manifest(&set, id)), Some((set.clone(), id)));
        // a database named `files` is not a file set
        let files_db = Subject::Database("files".into());
        assert_eq!(parse_manifest_key(&manifest(&files_db, id)), Some((files_db, id)));
        assert_eq!(parse_manifest_key(&format!("app/{id}/data.zst")), None);
        let lite = Subject::Sqlite("cache".into());
        assert_eq!(sqlite_data(&lite, id, true), format!("sqlite/cache/{id}/data.sqlite.zst.age"));
        assert_eq!(parse_manifest_key(&manifest(&lite, id)), Some((lite, id)));
        let sqlite_db = Subject::Database("sqlite".into());
        assert_eq!(parse_manifest_key(&manifest(&sqlite_db, id)), Some((sqlite_db, id)));
        assert_eq!(backup_file("files/uploads/", &tar_data(&set, id, true, false)), Some((id, "data.tar.zst")));
        assert_eq!(backup_file("files/", &tar_data(&set, id, true, false)), None);
        let hex = "ab".repeat(32);
        let digest = manifest_digest(&set, id, &hex);
        assert_eq!(digest_in(digest.rsplit('/').next().unwrap()), Some(hex.as_str()));
        assert_eq!(digest_in("manifest.sha256.xyz"), None);
        // attempt records are not backups, nor orphans
        let a = attempt(&db, "full_backup");
        assert_eq!(a, "app/.attempts/full_backup.json");
        assert_eq!(parse_manifest_key(&a), None);
        assert_eq!(backup_file("app/", &a), None);
    }
}
