//! What a cluster's WAL archive holds on a target and which moments a restore can reach (for
//! `pgbackd list`): per archive the first and last segment, and for each base backup the newest
//! segment recovery reaches from its start without a gap, with the time it was archived.
//!
//! The window is from a base backup's end (the first consistent moment) to about when that
//! segment was archived: a recovery replays everything up to the end of the last segment it finds.

use super::archive::{Archived, WalArchive};
use super::names::{SegmentName, WalFile};
use super::timeline::gaps;
use crate::crypto::Crypto;
use crate::repo::Manifest;
use crate::storage::Target;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One archive (system identifier) on one target.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveSummary {
    pub target: String,
    pub system_identifier: u64,
    pub files: usize,
    pub stored_bytes: u64,
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub timeline: u32,
    /// When the newest file was archived.
    pub newest_archived_at: Option<DateTime<Utc>>,
    /// Per base backup of this archive: how far recovery from it reaches.
    pub reach: Vec<Reach>,
}

/// How far recovery from one base backup reaches on one target.
#[derive(Debug, Clone, Serialize)]
pub struct Reach {
    pub backup_id: String,
    /// The first consistent moment (the base backup's end).
    pub from: DateTime<Utc>,
    /// The newest segment recovery replays before the first missing one (`None`: not even the
    /// backup's own WAL is complete).
    pub last_segment: Option<String>,
    /// About the newest moment recovery reaches: when that segment was archived.
    pub until: Option<DateTime<Utc>>,
    /// The first missing segment, if recovery stops at a gap before the newest archived segment.
    pub stops_at_gap: Option<String>,
}

/// Summarises every archive of `cluster` on `target`, with the reach of `bases` (the cluster's
/// base backups). Reads at most the newest timeline's history file of each archive.
pub async fn summarise(
    cluster: &str,
    target: &Target,
    crypto: Option<Arc<Crypto>>,
    bases: &[&Manifest],
) -> anyhow::Result<Vec<ArchiveSummary>> {
    let archives = super::archive::by_system_identifier(cluster, target).await?;
    let mut out = Vec::new();
    for (system_identifier, files) in archives {
        let mine: Vec<&Manifest> = bases
            .iter()
            .copied()
            .filter(|m| m.base_backup().is_some_and(|b| b.system_identifier == system_identifier))
            .collect();
        let archive = WalArchive::new(cluster, system_identifier, vec![target.clone()], crypto.clone(), None);
        out.push(summarise_one(&archive, target, &files, &mine).await?);
    }
    Ok(out)
}

async fn summarise_one(
    archive: &WalArchive,
    target: &Target,
    files: &[Archived],
    bases: &[&Manifest],
) -> anyhow::Result<ArchiveSummary> {
    let segments: BTreeMap<SegmentName, &Archived> = files
        .iter()
        .filter_map(|f| match f.file {
            WalFile::Segment(s) => Some((s, f)),
            _ => None,
        })
        .collect();
    let timeline = files.iter().map(|f| f.file.timeline()).max().unwrap_or(1);
    let mut s = ArchiveSummary {
        target: target.name().to_owned(),
        system_identifier: archive.system_identifier(),
        files: files.len(),
        stored_bytes: files.iter().map(|f| f.stored_bytes).sum(),
        first_segment: segments.keys().next().map(|s| s.to_string()),
        last_segment: segments.keys().next_back().map(|s| s.to_string()),
        timeline,
        newest_archived_at: None,
        reach: Vec::new(),
    };
    let Some(size) = bases.iter().find_map(|m| m.base_backup()).map(|b| b.wal_segment_size) else {
        return Ok(s);
    };
    let path = super::check::recovery_path(archive, target, files, size).await?;
    let (chain, on_chain) = (&path.chain, &path.on_chain);
    let modified = |seg: &SegmentName| segments.get(seg).and_then(|a| a.modified);
    s.newest_archived_at = files.iter().filter_map(|f| f.modified).max();
    let Some(newest) = on_chain.last().copied() else { return Ok(s) };
    for m in bases {
        let Some(start) = m.base_backup().and_then(|b| SegmentName::parse(&b.start_wal)) else { continue };
        let first_gap = gaps(chain, on_chain, start, newest).first().map(|g| g.first);
        let last = match first_gap {
            None => Some(newest),
            Some(g) => on_chain.range(..g).next_back().copied().filter(|l| l.number(size) >= start.number(size)),
        };
        s.reach.push(Reach {
            backup_id: m.id.clone(),
            from: m.finished_at,
            last_segment: last.map(|l| l.to_string()),
            // a backup's own last segment is archived before it commits: it reaches its end at least
            until: last.as_ref().and_then(modified).map(|t| t.max(m.finished_at)),
            stops_at_gap: first_gap.map(|g| g.to_string()),
        });
    }
    Ok(s)
}
