//! Which archived WAL retention deletes, planned per target and archive (system identifier), then
//! applied.
//!
//! A base backup restores from its first segment (`start_wal`) onwards, so what is older than the
//! first segment of the oldest *kept* base backup of an archive serves no restore: it is deleted
//! (segments, partial segments and base backup history files), on every timeline. Timeline history
//! files are always kept (they are tiny, and a recovery that follows a timeline reads them all).
//! An archive no kept base backup starts in (archiving began before the first base backup, or the
//! base backups of a previous `initdb` are gone) keeps all its WAL: nothing can say which of it a
//! base backup taken later, or a restore by hand, needs.

use super::archive::Archived;
use super::names::{SegmentName, WalFile};
use crate::storage::Target;
use serde::Serialize;
use std::collections::BTreeMap;

/// The first segment a kept base backup restores from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptStart {
    pub system_identifier: u64,
    pub start: SegmentName,
    pub backup: String,
}

/// What retention does to one archive on one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WalExpiry {
    pub target: String,
    pub system_identifier: u64,
    /// The oldest segment kept (`None`: everything is kept).
    pub keep_from: Option<String>,
    /// Why, in words.
    pub reason: String,
    pub files_kept: usize,
    pub files_to_delete: usize,
    pub bytes_to_delete: u64,
    /// The oldest and newest file deleted.
    pub first_deleted: Option<String>,
    pub last_deleted: Option<String>,
    #[serde(skip)]
    pub keys: Vec<String>,
}

/// Whether `file` is older than segment `from` of its archive: a segment or partial segment
/// before it, or a base backup history file of a backup that started before it. Segment order
/// is (log, seg) whatever the timeline and segment size.
fn older_than(file: &WalFile, from: SegmentName) -> bool {
    let before = |s: &SegmentName| (s.log, s.seg) < (from.log, from.seg);
    match file {
        WalFile::Segment(s) | WalFile::Partial(s) | WalFile::BackupHistory(s, _) => before(s),
        WalFile::History(_) => false,
    }
}

/// Plans the deletion of the WAL of `archives` (one target's listing, by system identifier) that
/// no kept base backup needs. Pure.
pub fn plan(target: &str, archives: &BTreeMap<u64, Vec<Archived>>, kept: &[KeptStart]) -> Vec<WalExpiry> {
    let mut out = Vec::new();
    for (&system_identifier, files) in archives {
        let oldest =
            kept.iter().filter(|k| k.system_identifier == system_identifier).min_by_key(|k| (k.start.log, k.start.seg));
        let mut e = WalExpiry {
            target: target.to_owned(),
            system_identifier,
            keep_from: None,
            reason: String::new(),
            files_kept: files.len(),
            files_to_delete: 0,
            bytes_to_delete: 0,
            first_deleted: None,
            last_deleted: None,
            keys: Vec::new(),
        };
        let Some(oldest) = oldest else {
            e.reason = format!(
                "no kept base backup of system {system_identifier}: all of its WAL is kept (a base backup taken \
                 later, or a restore by hand, may need any of it)"
            );
            out.push(e);
            continue;
        };
        e.keep_from = Some(oldest.start.to_string());
        e.reason = format!("older than {}, where the oldest kept base backup {} starts", oldest.start, oldest.backup);
        for f in files.iter().filter(|f| older_than(&f.file, oldest.start)) {
            e.files_to_delete += 1;
            e.bytes_to_delete += f.stored_bytes;
            e.first_deleted.get_or_insert_with(|| f.file.to_string());
            e.last_deleted = Some(f.file.to_string());
            e.keys.push(f.key.clone());
        }
        e.files_kept -= e.files_to_delete;
        out.push(e);
    }
    out
}

/// What deleting planned WAL did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WalDeleted {
    pub files: usize,
    pub bytes: u64,
    pub errors: Vec<String>,
}

/// Deletes what `plans` name, on the targets they name (in batches; a failed batch is an error
/// and the next retention run deletes what is left).
pub async fn apply(plans: &[WalExpiry], targets: &[Target]) -> WalDeleted {
    let mut out = WalDeleted::default();
    for p in plans.iter().filter(|p| !p.keys.is_empty()) {
        let Some(t) = targets.iter().find(|t| t.name() == p.target) else {
            out.errors.push(format!("target {} is not configured any more: its WAL was not deleted", p.target));
            continue;
        };
        let mut failed = false;
        for batch in p.keys.chunks(1000) {
            match t.store.delete(batch).await {
                Ok(()) => out.files += batch.len(),
                Err(e) => {
                    failed = true;
                    out.errors.push(format!(
                        "deleting WAL of system {} from {}: {e:#}",
                        p.system_identifier,
                        t.store.describe()
                    ));
                    break;
                }
            }
        }
        if failed {
            continue;
        }
        out.bytes += p.bytes_to_delete;
        tracing::info!(
            target_name = %p.target,
            system_identifier = p.system_identifier,
            files = p.files_to_delete,
            first = p.first_deleted.as_deref().unwrap_or(""),
            last = p.last_deleted.as_deref().unwrap_or(""),
            "WAL deleted by retention"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(tl: u32, log: u32, seg: u32) -> SegmentName {
        SegmentName { timeline: tl, log, seg }
    }

    fn archived(f: WalFile) -> Archived {
        Archived { file: f, sha256: "0".repeat(64), key: format!("k/{f}"), stored_bytes: 10, modified: None }
    }

    #[test]
    fn deletes_what_is_older_than_the_oldest_kept_start_on_every_timeline() {
        let files: Vec<Archived> = [
            WalFile::Segment(seg(1, 0, 1)),
            WalFile::Segment(seg(1, 0, 2)),
            WalFile::BackupHistory(seg(1, 0, 2), 0x28),
            WalFile::History(2),
            WalFile::Segment(seg(2, 0, 2)),
            WalFile::Partial(seg(1, 0, 3)),
            WalFile::Segment(seg(2, 0, 3)),
            WalFile::BackupHistory(seg(2, 0, 3), 0x60),
            WalFile::Segment(seg(2, 1, 0)),
        ]
        .into_iter()
        .map(archived)
        .collect();
        let archives = BTreeMap::from([(7, files)]);
        let kept = [
            KeptStart { system_identifier: 7, start: seg(2, 1, 0), backup: "new".into() },
            KeptStart { system_identifier: 7, start: seg(2, 0, 3), backup: "old".into() },
        ];
        let p = plan("local", &archives, &kept);
        assert_eq!(p.len(), 1);
        let p = &p[0];
        assert_eq!(p.keep_from.as_deref(), Some("000000020000000000000003"));
        assert!(p.reason.contains("base backup old starts"), "{}", p.reason);
        let deleted: Vec<&str> = p.keys.iter().map(|k| k.strip_prefix("k/").unwrap()).collect();
        assert_eq!(
            deleted,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000020000000000000002",
            ]
        );
        // the history file, the partial segment at the start and everything after stay
        assert_eq!((p.files_to_delete, p.files_kept, p.bytes_to_delete), (4, 5, 40));
        assert_eq!(p.first_deleted.as_deref(), Some("000000010000000000000001"));
    }

    #[test]
    fn an_archive_without_a_kept_base_backup_keeps_everything() {
        let archives = BTreeMap::from([
            (7, vec![archived(WalFile::Segment(seg(1, 0, 1)))]),
            (8, vec![archived(WalFile::Segment(seg(1, 0, 1))), archived(WalFile::Segment(seg(1, 0, 2)))]),
        ]);
        let kept = [KeptStart { system_identifier: 8, start: seg(1, 0, 2), backup: "b".into() }];
        let p = plan("local", &archives, &kept);
        assert_eq!(p[0].system_identifier, 7);
        assert!(p[0].keys.is_empty() && p[0].keep_from.is_none(), "{:?}", p[0]);
        assert!(p[0].reason.contains("no kept base backup of system 7"), "{}", p[0].reason);
        assert_eq!(p[1].keys, ["k/000000010000000000000001"]);
    }
}
