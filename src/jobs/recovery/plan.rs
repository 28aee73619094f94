//! Which base backup a recovery starts from and which WAL it must find (pure): the newest base
//! backup on the recovery's timeline that ends before the target, and the segments from its start
//! to the one holding the target, with the first missing one named.

use crate::pg::basebackup::LsnText;
use crate::repo::Manifest;
use crate::repo::manifest::BaseBackup;
use crate::wal::names::SegmentName;
use crate::wal::restore_point::RestorePoint;
use crate::wal::timeline::{Chain, gaps};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum RecoveryTarget {
    /// The last commit at or before this time (`recovery_target_time`, inclusive).
    Time(DateTime<Utc>),
    Lsn(LsnText),
    RestorePoint(String),
    /// The end of the archived WAL.
    Latest,
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Time(t) => write!(f, "time {}", t.format("%Y-%m-%d %H:%M:%S%.6f UTC")),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {}", l.0),
            RecoveryTarget::RestorePoint(n) => write!(f, "restore point {n:?}"),
            RecoveryTarget::Latest => f.write_str("the end of the archived WAL"),
        }
    }
}

/// The archive of one system identifier as a recovery on one timeline reads it.
pub struct ArchiveView<'a> {
    pub chain: &'a Chain,
    /// The archived segments on the chain.
    pub on_chain: &'a BTreeSet<SegmentName>,
    /// When each segment was archived (as listed).
    pub archived_at: &'a BTreeMap<SegmentName, DateTime<Utc>>,
    pub timeline: u32,
    pub segment_size: u64,
}

/// What a recovery needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Needs {
    pub first: SegmentName,
    /// The segment holding the target (for `latest`, the newest archived one).
    pub last: SegmentName,
}

/// Why a recovery is refused, in words naming what to do.
pub type Refusal = String;

fn base(m: &Manifest) -> &BaseBackup {
    m.base_backup().expect("only base backups are candidates")
}

/// Whether recovery on `view`'s timeline reads the WAL `b` starts at from `b`'s own timeline.
fn on_chain(view: &ArchiveView, b: &BaseBackup) -> bool {
    SegmentName::parse(&b.start_wal).is_some_and(|s| view.chain.timeline_at(s) == b.timeline)
}

/// The newest of `bases` (newest first or not) that recovery to `target` can start from.
pub fn choose_base<'a>(
    bases: &[&'a Manifest],
    view: &ArchiveView,
    target: &RecoveryTarget,
    point: Option<&RestorePoint>,
) -> Result<&'a Manifest, Refusal> {
    let mut sorted: Vec<&'a Manifest> = bases.to_vec();
    sorted.sort_by_key(|m| std::cmp::Reverse(m.finished_at));
    let ends_before = |m: &Manifest| match (target, point) {
        (RecoveryTarget::Time(t), _) => m.finished_at <= *t,
        (RecoveryTarget::Lsn(l), _) => base(m).stop_lsn <= *l,
        (RecoveryTarget::RestorePoint(_), Some(p)) => base(m).stop_lsn <= p.lsn,
        (RecoveryTarget::RestorePoint(_), None) | (RecoveryTarget::Latest, _) => true,
    };
    let on_timeline: Vec<&'a Manifest> = sorted.iter().copied().filter(|m| on_chain(view, base(m))).collect();
    if let Some(m) = on_timeline.iter().copied().find(|m| ends_before(m)) {
        return Ok(m);
    }
    if sorted.is_empty() {
        return Err("there is no base backup of this cluster: take one (pgbackd base-backup) before a recovery can \
                    start"
            .into());
    }
    if on_timeline.is_empty() {
        return Err(format!(
            "no base backup is on timeline {}'s history (the base backups are on timeline {}): pass --timeline with \
             the timeline a base backup is on",
            view.timeline,
            sorted
                .iter()
                .map(|m| base(m).timeline.to_string())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let oldest = on_timeline.last().expect("not empty");
    Err(format!(
        "no base backup ends before {target}: the oldest, {}, ends at {} (LSN {}); a recovery cannot stop before \
         its base backup is consistent. Choose a later target (pgbackd list shows what each base backup reaches)",
        oldest.id,
        oldest.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
        base(oldest).stop_lsn.0
    ))
}

/// The WAL a recovery from `m` to `target` reads, refused when the archive does not reach the
/// target or a segment in between is missing.
pub fn wal_needs(
    m: &Manifest,
    view: &ArchiveView,
    target: &RecoveryTarget,
    point: Option<&RestorePoint>,
) -> Result<Needs, Refusal> {
    let b = base(m);
    let size = view.segment_size;
    let first = SegmentName::parse(&b.start_wal)
        .ok_or_else(|| format!("{}: start_wal {:?} is not a segment", m.id, b.start_wal))?;
    let stop = SegmentName::parse(&b.stop_wal)
        .ok_or_else(|| format!("{}: stop_wal {:?} is not a segment", m.id, b.stop_wal))?;
    let newest = view.on_chain.last().copied();
    let reach = match newest {
        Some(n) => format!("the archive reaches {n}"),
        None => format!("no segment of timeline {}'s history is archived", view.timeline),
    };
    let at_lsn = |lsn: u64| -> SegmentName {
        let s = SegmentName::containing(0, lsn, size);
        s.on_timeline(view.chain.timeline_at(s))
    };
    let last = match (target, point) {
        (RecoveryTarget::Latest, _) | (RecoveryTarget::RestorePoint(_), None) => {
            newest.ok_or_else(|| format!("{reach}: nothing to recover from"))?
        }
        (RecoveryTarget::Lsn(l), _) => at_lsn(l.0.0),
        (RecoveryTarget::RestorePoint(_), Some(p)) => at_lsn(p.lsn.0.0),
        (RecoveryTarget::Time(t), _) => {
            // the segment holding the last commit before `t` was archived at or after `t`
            view.on_chain
                .range(first..)
                .find(|s| view.archived_at.get(s).is_some_and(|at| at >= t))
                .copied()
                .ok_or_else(|| {
                    let newest_at = view.archived_at.values().max();
                    format!(
                        "the archive does not reach {target} yet: its newest segment was archived at {}. If the server \
                         is running, its current segment is not archived yet: run `select pg_switch_wal()` on it (or \
                         `pgbackd wal-flush` with wal.method stream) and retry, or recover to --latest",
                        newest_at.map_or("never".into(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    )
                })?
        }
    };
    let last = if last.number(size) < stop.number(size) { stop } else { last };
    if let Some(n) = newest
        && last.number(size) > n.number(size)
    {
        return Err(format!(
            "the archive does not reach {target} (segment {last}): {reach}. Archive the server's current WAL (`select \
             pg_switch_wal()`), or choose an earlier target"
        ));
    }
    if let Some(g) = gaps(view.chain, view.on_chain, first, last).first() {
        return Err(format!(
            "{g} from the archive: recovery from base backup {} to {target} needs every segment from {first} to {last}. \
             Recover to a target before {} (--to-lsn or --to-time), or from a newer base backup",
            m.id, g.first
        ));
    }
    Ok(Needs { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::timeline::{Branch, Lsn};

    const SIZE: u64 = 16 << 20;

    fn seg(tl: u32, n: u64) -> SegmentName {
        SegmentName::containing(tl, n * SIZE, SIZE)
    }

    fn manifest(id: &str, finished: &str, tl: u32, start: u64, stop_lsn: u64) -> Manifest {
        use crate::repo::manifest::{Content, Source, StoredObject};
        use crate::repo::{BackupKind, Subject};
        let mut m = Manifest::for_tests(Subject::Cluster("main".into()), id, BackupKind::Full, at(finished));
        let object = |key: &str| StoredObject {
            key: key.into(),
            compression: crate::repo::manifest::CompressionAlgorithm::None,
            compression_level: None,
            raw_bytes: 1,
            stored_bytes: 1,
            raw_sha256: String::new(),
            stored_sha256: String::new(),
            frames: Vec::new(),
            encrypted: false,
            frames_sha256: None,
        };
        m.content = Content::Base(BaseBackup {
            source: Source { host: "h".into(), port: 5432, user: "u".into(), dbname: "postgres".into() },
            server_version: "15.0".into(),
            server_version_num: 150000,
            pg_basebackup_version: "15.0".into(),
            system_identifier: 1,
            wal_segment_size: SIZE,
            timeline: tl,
            start_lsn: LsnText(Lsn(start * SIZE)),
            checkpoint_lsn: LsnText(Lsn(start * SIZE)),
            stop_lsn: LsnText(Lsn(stop_lsn)),
            start_wal: seg(tl, start).to_string(),
            stop_wal: SegmentName::containing(tl, stop_lsn, SIZE).to_string(),
            wal_ranges: Vec::new(),
            backup_from: "primary".into(),
            label: "l".into(),
            backup_label: String::new(),
            tablespace_map: None,
            files: 1,
            backup_manifest: object("m"),
            tablespaces: Vec::new(),
        });
        m
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    struct Archive {
        chain: Chain,
        on: BTreeSet<SegmentName>,
        times: BTreeMap<SegmentName, DateTime<Utc>>,
        timeline: u32,
    }

    impl Archive {
        /// Segments `range` of timeline 1, segment n archived at minute n.
        fn new(range: std::ops::Range<u64>) -> Archive {
            let on: BTreeSet<SegmentName> = range.clone().map(|n| seg(1, n)).collect();
            let times = range.map(|n| (seg(1, n), at(&format!("2026-12-03T10:{n:02}:00Z")))).collect();
            Archive { chain: Chain::new(1, &[], SIZE), on, times, timeline: 1 }
        }
        fn view(&self) -> ArchiveView<'_> {
            ArchiveView {
                chain: &self.chain,
                on_chain: &self.on,
                archived_at: &self.times,
                timeline: self.timeline,
                segment_size: SIZE,
            }
        }
    }

    #[test]
    fn the_newest_base_backup_ending_before_the_target_is_chosen() {
        let a = Archive::new(1..30);
        let (b1, b2) = (
            manifest("b1", "2026-12-03T10:05:00Z", 1, 2, 3 * SIZE),
            manifest("b2", "2026-12-03T10:20:00Z", 1, 18, 19 * SIZE),
        );
        let bases = [&b1, &b2];
        let t = |s: &str| RecoveryTarget::Time(at(s));
        assert_eq!(choose_base(&bases, &a.view(), &t("2026-12-03T10:10:00Z"), None).unwrap().id, "b1");
        assert_eq!(choose_base(&bases, &a.view(), &t("2026-12-03T10:25:00Z"), None).unwrap().id, "b2");
        assert_eq!(choose_base(&bases, &a.view(), &RecoveryTarget::Latest, None).unwrap().id, "b2");
        let lsn = RecoveryTarget::Lsn(LsnText(Lsn(10 * SIZE)));
        assert_eq!(choose_base(&bases, &a.view(), &lsn, None).unwrap().id, "b1");
        let e = choose_base(&bases, &a.view(), &t("2026-12-03T10:01:00Z"), None).unwrap_err();
        assert!(e.contains("no base backup ends before time 2026-12-03 10:01:00") && e.contains("b1"), "{e}");
        assert!(
            choose_base(&[], &a.view(), &RecoveryTarget::Latest, None).unwrap_err().contains("pgbackd base-backup")
        );
    }

    #[test]
    fn the_wal_up_to_the_target_must_be_there_and_the_first_missing_segment_is_named() {
        let mut a = Archive::new(1..30);
        let b1 = manifest("b1", "2026-12-03T10:05:00Z", 1, 2, 3 * SIZE);
        let t = RecoveryTarget::Time(at("2026-12-03T10:09:30Z"));
        // the commit before 10:09:30 is in the segment archived at 10:10
        assert_eq!(wal_needs(&b1, &a.view(), &t, None).unwrap(), Needs { first: seg(1, 2), last: seg(1, 10) });
        assert_eq!(wal_needs(&b1, &a.view(), &RecoveryTarget::Latest, None).unwrap().last, seg(1, 29));
        a.on.remove(&seg(1, 7));
        let e = wal_needs(&b1, &a.view(), &t, None).unwrap_err();
        assert!(e.starts_with(&format!("{} is missing", seg(1, 7))), "{e}");
        // a target before the gap is still reachable
        let before = RecoveryTarget::Lsn(LsnText(Lsn(5 * SIZE + 100)));
        assert_eq!(wal_needs(&b1, &a.view(), &before, None).unwrap().last, seg(1, 5));
        let later = RecoveryTarget::Time(at("2026-12-03T11:00:00Z"));
        let e = wal_needs(&b1, &a.view(), &later, None).unwrap_err();
        assert!(e.contains("does not reach") && e.contains("pg_switch_wal"), "{e}");
        let beyond = RecoveryTarget::Lsn(LsnText(Lsn(40 * SIZE)));
        assert!(wal_needs(&b1, &a.view(), &beyond, None).unwrap_err().contains("does not reach"));
    }

    #[test]
    fn a_recovery_across_a_timeline_switch_reads_the_parents_segments_before_it() {
        // timeline 2 began in segment 10
        let history = [Branch { parent: 1, switch: Lsn(10 * SIZE + 500) }];
        let mut a = Archive::new(1..11);
        a.chain = Chain::new(2, &history, SIZE);
        a.timeline = 2;
        a.on = (1..10).map(|n| seg(1, n)).chain((10..15).map(|n| seg(2, n))).collect();
        for n in 10..15 {
            a.times.insert(seg(2, n), at(&format!("2026-12-03T10:{n:02}:30Z")));
        }
        let b1 = manifest("b1", "2026-12-03T10:05:00Z", 1, 2, 3 * SIZE);
        let needs = wal_needs(&b1, &a.view(), &RecoveryTarget::Latest, None).unwrap();
        assert_eq!(needs.last, seg(2, 14));
        assert_eq!(choose_base(&[&b1], &a.view(), &RecoveryTarget::Latest, None).unwrap().id, "b1");
        // a base backup on timeline 1 after the switch is not on timeline 2's history
        let b_late = manifest("b_late", "2026-12-03T10:12:00Z", 1, 11, 12 * SIZE);
        assert_eq!(choose_base(&[&b1, &b_late], &a.view(), &RecoveryTarget::Latest, None).unwrap().id, "b1");
        let e = choose_base(&[&b_late], &a.view(), &RecoveryTarget::Latest, None).unwrap_err();
        assert!(e.contains("--timeline"), "{e}");
        a.on.remove(&seg(2, 12));
        assert!(
            wal_needs(&b1, &a.view(), &RecoveryTarget::Latest, None).unwrap_err().contains(&seg(2, 12).to_string())
        );
    }
}
