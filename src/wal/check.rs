//! Verification of a cluster's WAL archive on each target (`pgbackd verify --wal`): every
//! segment a recovery on the newest timeline reads, from the start of the oldest kept base backup
//! (else the oldest archived segment) to the newest, is there, the history files that lead to that timeline are there, and with `deep` every file
//! decodes to the SHA-256 its name carries. Gaps are named by their first missing segment (as
//! WAL-G's `wal-verify` does).

use super::archive::{Archived, WalArchive};
use super::names::{SegmentHeader, SegmentName, WalFile};
use super::timeline::{Chain, gaps, parse_history};
use crate::config::VerifyMode;
use crate::crypto::Crypto;
use crate::storage::Target;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What one target holds of one cluster's archive (one system identifier).
#[derive(Debug, Clone, Serialize)]
pub struct WalTargetCheck {
    pub target: String,
    pub system_identifier: u64,
    /// Archived files (segments, partials, history and backup files).
    pub files: usize,
    /// The oldest and newest segment a recovery on `timeline` reads.
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub timeline: u32,
    /// Missing runs of segments, and missing history files, in words.
    pub gaps: Vec<String>,
    /// Files that do not decode to their SHA-256 (deep only), or cannot be read.
    pub damaged: Vec<String>,
    pub bytes_read: u64,
    pub ok: bool,
}

/// A WAL verification run.
#[derive(Debug, Clone, Serialize)]
pub struct WalVerification {
    pub cluster: String,
    pub mode: VerifyMode,
    pub targets: Vec<WalTargetCheck>,
    /// Why nothing could be checked on a target (listing failed), per target.
    pub errors: Vec<String>,
}

impl WalVerification {
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && !self.targets.is_empty() && self.targets.iter().all(|t| t.ok)
    }

    /// What failed, in one line per target (empty when it passed).
    pub fn failures(&self) -> Vec<String> {
        let mut out = self.errors.clone();
        if self.targets.is_empty() && self.errors.is_empty() {
            out.push(format!(
                "no WAL is archived for cluster {:?} on any target: is archive_command set to pgbackd archive-push?",
                self.cluster
            ));
        }
        for t in self.targets.iter().filter(|t| !t.ok) {
            let what: Vec<&String> = t.gaps.iter().chain(&t.damaged).collect();
            out.push(format!(
                "{} (system {}): {}",
                t.target,
                t.system_identifier,
                what.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")
            ));
        }
        out
    }
}

/// What the kept base backups of one archive need: recovery from the oldest one's first segment
/// (`backup` names it) to at least the newest one's last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub from: SegmentName,
    pub backup: String,
    pub to: SegmentName,
}

/// The needs of each archive, by system identifier.
pub type Starts = BTreeMap<u64, Need>;

/// Checks the archive of `cluster` on every target: from `starts` (the oldest kept base
/// backup's first segment) where given, else from the oldest archived segment, to the newest.
pub async fn verify(
    cluster: &str,
    targets: &[Target],
    crypto: Option<Arc<Crypto>>,
    mode: VerifyMode,
    starts: &Starts,
    cancel: &CancellationToken,
) -> WalVerification {
    let mut out = WalVerification { cluster: cluster.to_owned(), mode, targets: Vec::new(), errors: Vec::new() };
    for t in targets {
        let mut archives = match super::archive::by_system_identifier(cluster, t).await {
            Ok(a) => a,
            Err(e) => {
                out.errors.push(format!("{}: {e:#}", t.name()));
                continue;
            }
        };
        // a base backup whose archive holds nothing on this target
        for id in starts.keys() {
            archives.entry(*id).or_default();
        }
        for (id, files) in archives {
            if cancel.is_cancelled() {
                out.errors.push("cancelled".into());
                return out;
            }
            let archive = WalArchive::new(cluster, id, vec![t.clone()], crypto.clone(), None);
            match check_target(&archive, t, files, mode, starts.get(&id), cancel).await {
                Ok(c) => out.targets.push(c),
                Err(e) => out.errors.push(format!("{} (system {id}): {e:#}", t.name())),
            }
        }
    }
    out
}

/// What recovery on an archive's newest timeline reads: that timeline's chain (from its history
/// file, read from the archive; `history_missing` when it is not there) and the archived segments
/// on it.
pub struct RecoveryPath {
    pub timeline: u32,
    pub chain: Chain,
    pub on_chain: BTreeSet<SegmentName>,
    pub history_missing: bool,
    pub bytes_read: u64,
}

pub(super) async fn recovery_path(
    archive: &WalArchive,
    target: &Target,
    files: &[Archived],
    segment_size: u64,
) -> anyhow::Result<RecoveryPath> {
    let timeline = files.iter().map(|f| f.file.timeline()).max().unwrap_or(1);
    let (mut history, mut history_missing, mut bytes_read) = (Vec::new(), false, 0);
    if timeline > 1 {
        match files.iter().find(|f| f.file == WalFile::History(timeline)) {
            Some(h) => {
                let text = archive.read_copy(target, h).await?;
                bytes_read += h.stored_bytes;
                history =
                    parse_history(&String::from_utf8_lossy(&text)).map_err(|e| anyhow::anyhow!("{}: {e}", h.key))?;
            }
            None => history_missing = true,
        }
    }
    let chain = Chain::new(timeline, &history, segment_size);
    let on_chain = files
        .iter()
        .filter_map(|f| match f.file {
            WalFile::Segment(s) if chain.timeline_at(s) == s.timeline => Some(s),
            _ => None,
        })
        .collect();
    Ok(RecoveryPath { timeline, chain, on_chain, history_missing, bytes_read })
}

async fn check_target(
    archive: &WalArchive,
    target: &Target,
    files: Vec<Archived>,
    mode: VerifyMode,
    start: Option<&Need>,
    cancel: &CancellationToken,
) -> anyhow::Result<WalTargetCheck> {
    let mut check = WalTargetCheck {
        target: target.name().to_owned(),
        system_identifier: archive.system_identifier(),
        files: files.len(),
        first_segment: None,
        last_segment: None,
        timeline: 1,
        gaps: Vec::new(),
        damaged: Vec::new(),
        bytes_read: 0,
        ok: false,
    };
    let segments: Vec<&Archived> = files.iter().filter(|f| matches!(f.file, WalFile::Segment(_))).collect();
    let Some(oldest) = segments.first() else {
        check.gaps.push(match start {
            Some(n) => format!("no WAL segment is archived, and base backup {} needs {} onwards", n.backup, n.from),
            None => "no complete WAL segment is archived".into(),
        });
        return Ok(check);
    };
    // the segment size is in every segment's header: read from the oldest one
    let first = archive.read_copy(target, oldest).await?;
    check.bytes_read += oldest.stored_bytes;
    let header = SegmentHeader::read(&first).map_err(|e| anyhow::anyhow!("{}: {e}", oldest.key))?;
    let size = header.segment_size as u64;

    let path = recovery_path(archive, target, &files, size).await?;
    let (newest_timeline, on_chain) = (path.timeline, &path.on_chain);
    check.timeline = newest_timeline;
    check.bytes_read += path.bytes_read;
    if path.history_missing {
        check.gaps.push(format!(
            "{} is missing: a recovery cannot follow timeline {newest_timeline}",
            WalFile::History(newest_timeline)
        ));
    }
    let chain = &path.chain;
    if let (Some(oldest), Some(newest)) = (on_chain.first(), on_chain.last()) {
        // from the oldest kept base backup's start: what is older is not needed, what is missing
        // after it is a gap whichever segment is archived first
        let (from, to) = match start {
            Some(n) => (n.from, if n.to.number(size) > newest.number(size) { n.to } else { *newest }),
            None => (*oldest, *newest),
        };
        check.first_segment = Some(from.to_string());
        check.last_segment = Some(to.to_string());
        let found = gaps(chain, on_chain, from, to);
        if let (Some(n), Some(g)) = (start, found.first())
            && g.first.number(size) == from.number(size)
        {
            check.gaps.push(format!("{g}: base backup {} starts there", n.backup));
            check.gaps.extend(found[1..].iter().map(|g| g.to_string()));
        } else {
            check.gaps.extend(found.iter().map(|g| g.to_string()));
        }
    } else {
        check.gaps.push(format!("no segment of timeline {newest_timeline}'s history is archived"));
    }
    if mode == VerifyMode::Deep {
        for f in files.iter().filter(|f| f.key != oldest.key) {
            if cancel.is_cancelled() {
                anyhow::bail!("cancelled");
            }
            match archive.read_copy(target, f).await {
                Ok(_) => check.bytes_read += f.stored_bytes,
                Err(e) => check.damaged.push(format!("{e:#}")),
            }
        }
    }
    check.ok = check.gaps.is_empty() && check.damaged.is_empty();
    Ok(check)
}
