//! The catalog: what backups the repository holds, found by listing keys and reading manifests
//! (only those asked for: the newest of a subject is found without reading every manifest).
//!
//! A manifest is trusted only when it matches its digest (`manifest.sha256.<hex>`, written just
//! before it) and names the backup its key says; one that does not, or cannot be read or parsed,
//! is reported as damaged, never silently skipped. Schema 1 manifests (pgbackd 0.1) have no digest.

use super::{Annotations, BackupKind, Listed, Manifest, Repository, Subject, keys};
use crate::storage::{ObjectInfo, Store, Target};
use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A manifest that is there but cannot be trusted: unreadable, malformed, not matching its digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Damaged {
    pub subject: Subject,
    pub id: String,
    pub target: String,
    pub problem: String,
}

/// Every backup that listing found, and every manifest it could not trust.
#[derive(Debug, Default)]
pub struct Listing {
    pub backups: Vec<Listed>,
    pub damaged: Vec<Damaged>,
}

/// What a listing shows of one backup directory on one target.
#[derive(Debug, Default, Clone)]
struct Dir {
    manifest: bool,
    annotations: bool,
    digests: Vec<String>,
}

/// Backup directories by subject and id.
type Index = BTreeMap<(Subject, String), Dir>;

/// The backup directories in a listing (of `subject`'s, when given), by subject and id.
fn index(objects: &[ObjectInfo], subject: Option<&Subject>) -> Index {
    let mut out: BTreeMap<(Subject, String), Dir> = BTreeMap::new();
    for o in objects {
        let Some((dir, file)) = o.key.rsplit_once('/') else { continue };
        let Some((s, id)) = keys::parse_backup_dir(dir) else { continue };
        // a database named `files` is listed under `files/`, beside the file sets
        if subject.is_some_and(|want| *want != s) {
            continue;
        }
        let e = out.entry((s, id.to_owned())).or_default();
        match file {
            keys::MANIFEST_FILE => e.manifest = true,
            keys::ANNOTATIONS_FILE => e.annotations = true,
            f => e.digests.extend(keys::digest_in(f).map(str::to_owned)),
        }
    }
    // a digest without its manifest: the manifest was deleted (an interrupted commit looks the
    // same): damaged, never silently gone
    out.retain(|_, d| d.manifest || !d.digests.is_empty());
    out
}

/// Why a directory with a manifest digest but no manifest cannot be trusted.
fn missing_manifest(id: &str) -> String {
    format!(
        "backup {id}: manifest.json is missing but its digest is there: it was deleted (or the backup's commit was \
         interrupted); pgbackd cannot restore it (see \"Damaged backups\" in docs/operations.md)"
    )
}

impl Listing {
    /// How many backups a restore of `id` reads: 1 for a full, 1 + its links down to its full for
    /// an incremental; `Err` names the link that is not in the listing (the chain is broken),
    /// or one that is not older than the backup naming it (an edited manifest).
    pub fn chain_length(&self, id: &str) -> Result<usize, String> {
        let find = |id: &str| self.backups.iter().find(|l| l.manifest.id == id).map(|l| &l.manifest);
        let mut m = find(id).ok_or_else(|| id.to_owned())?;
        let mut n = 1;
        while let Some(base) = m.base_id() {
            let below = find(base).filter(|b| b.started_at < m.started_at).ok_or_else(|| base.to_owned())?;
            (m, n) = (below, n + 1);
        }
        Ok(n)
    }

    /// The backups that read `id` in their restores (incrementals of a chain above it, file
    /// backups holding its files), newest first.
    pub fn dependents(&self, id: &str) -> Vec<String> {
        let mut out: Vec<&Manifest> = Vec::new();
        let mut wanted = vec![id.to_owned()];
        while let Some(next) = wanted.pop() {
            for l in &self.backups {
                let m = &l.manifest;
                if m.depends_on.contains(&next) && !out.iter().any(|o| o.id == m.id) {
                    out.push(m);
                    wanted.push(m.id.clone());
                }
            }
        }
        out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| b.id.cmp(&a.id)));
        out.into_iter().map(|m| m.id.clone()).collect()
    }
}

impl Repository {
    /// Every backup (of one subject, or of all), oldest first, with the targets holding each,
    /// and every damaged manifest. A target that cannot be listed is skipped with a warning,
    /// unless none can be.
    pub async fn listing(&self, subject: Option<&Subject>) -> Result<Listing> {
        let places = self.places(subject);
        // by backup directory: two subjects may hold backups with the same id
        let mut by_dir: BTreeMap<(Subject, String), Listed> = BTreeMap::new();
        let mut damaged = Vec::new();
        let mut failures = Vec::new();
        for (t, prefix) in &places {
            let objects = match t.store.list(prefix).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "cannot list a storage target");
                    failures.push(format!("{}: {e:#}", t.store.describe()));
                    continue;
                }
            };
            for ((s, id), dir) in index(&objects, subject) {
                if let Some(listed) = by_dir.get_mut(&(s.clone(), id.clone())) {
                    listed.targets.push(t.name().to_owned());
                    continue;
                }
                if !dir.manifest {
                    let problem = missing_manifest(&id);
                    log_damaged(&id, t.name(), &problem);
                    damaged.push(Damaged { subject: s, id, target: t.name().to_owned(), problem });
                    continue;
                }
                match read_manifest_from(&t.store, &s, &id, &dir.digests).await {
                    Ok(Some(m)) => {
                        let annotations = if dir.annotations {
                            read_annotations_from(&t.store, &s, &id).await
                        } else {
                            Annotations::default()
                        };
                        by_dir.insert((s, id), Listed { manifest: m, targets: vec![t.name().to_owned()], annotations });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log_damaged(&id, t.name(), &format!("{e:#}"));
                        damaged.push(Damaged {
                            subject: s,
                            id,
                            target: t.name().to_owned(),
                            problem: format!("{e:#}"),
                        });
                    }
                }
            }
        }
        if !places.is_empty() && failures.len() == places.len() {
            bail!("cannot list any storage target: {}", failures.join("; "));
        }
        let mut backups: Vec<Listed> = by_dir.into_values().collect();
        backups.sort_by(|a, b| {
            a.manifest.started_at.cmp(&b.manifest.started_at).then_with(|| a.manifest.id.cmp(&b.manifest.id))
        });
        Ok(Listing { backups, damaged })
    }

    /// Every trusted backup (of one subject, or of all), oldest first, with its targets.
    pub async fn list_with_targets(&self, subject: Option<&Subject>) -> Result<Vec<Listed>> {
        Ok(self.listing(subject).await?.backups)
    }

    /// Every trusted backup (of one subject, or of all), oldest first.
    pub async fn list(&self, subject: Option<&Subject>) -> Result<Vec<Manifest>> {
        Ok(self.list_with_targets(subject).await?.into_iter().map(|l| l.manifest).collect())
    }

    /// The subjects that have backups (damaged ones too), in key order.
    pub async fn subjects(&self) -> Result<Vec<Subject>> {
        let listing = self.listing(None).await?;
        let mut out: Vec<Subject> = listing
            .backups
            .into_iter()
            .map(|l| l.manifest.subject)
            .chain(listing.damaged.into_iter().map(|d| d.subject))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// `id` has the shape of a backup id, or an error that shows one.
    fn check_id(id: &str) -> Result<()> {
        if id == "latest" || id == "last" {
            bail!("{id:?} is not a backup id: use --latest for the newest backup (see `pgbackd list` for ids)");
        }
        if !keys::looks_like_backup_id(id) {
            bail!("{id:?} is not a backup id (they look like 20261122T010000Z-full-3f9a1c; see `pgbackd list`)");
        }
        Ok(())
    }

    /// Finds a backup by id, whatever its subject (or among those of `subject`). A damaged
    /// manifest is an error that says so.
    pub async fn find_in(&self, subject: Option<&Subject>, id: &str) -> Result<Manifest> {
        Self::check_id(id)?;
        let listed = self.list_places(subject).await;
        self.find_listed(&listed, id).await
    }

    /// Each target's backup directories (of `subject`'s, when given), or why it could not be listed.
    async fn list_places(&self, subject: Option<&Subject>) -> Vec<(&Target, Result<Index, String>)> {
        let mut out = Vec::new();
        for (t, prefix) in self.places(subject) {
            let listed = match t.store.list(&prefix).await {
                Ok(objects) => Ok(index(&objects, subject)),
                Err(e) => {
                    tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "cannot list a storage target");
                    Err(format!("target {} could not be listed: {e:#}", t.name()))
                }
            };
            out.push((t, listed));
        }
        out
    }

    /// [`Repository::find_in`] in listings already made (a chain's links found with one listing).
    async fn find_listed(&self, listed: &[(&Target, Result<Index, String>)], id: &str) -> Result<Manifest> {
        let (mut damaged, mut unlisted) = (None, Vec::new());
        for (t, dirs) in listed {
            let dirs = match dirs {
                Ok(d) => d,
                Err(e) => {
                    unlisted.push(e.clone());
                    continue;
                }
            };
            for ((s, found), dir) in dirs {
                if found != id {
                    continue;
                }
                if !dir.manifest {
                    damaged = Some(anyhow!(missing_manifest(id)).context(format!("on target {}", t.name())));
                    continue;
                }
                match read_manifest_from(&t.store, s, id, &dir.digests).await {
                    Ok(Some(m)) => return Ok(m),
                    Ok(None) => {}
                    Err(e) => damaged = Some(e.context(format!("backup {id} on target {}", t.name()))),
                }
            }
        }
        if let Some(e) = damaged {
            return Err(e);
        }
        if !unlisted.is_empty() {
            bail!("backup {id} was not found on the targets that answered; {}", unlisted.join("; "));
        }
        bail!("no backup with id {id} in {} (see `pgbackd list`)", self.describe())
    }

    /// The backups incremental `m` is a delta against, nearest first, down to its full: what a
    /// restore of `m` reads besides `m` (empty for a full). Each must be older than the one
    /// depending on it, so an edited manifest cannot make a loop. The targets are listed once.
    pub async fn chain(&self, m: &Manifest) -> Result<Vec<Manifest>> {
        let mut out: Vec<Manifest> = Vec::new();
        let mut next = m.base_id().map(|id| (id.to_owned(), m.id.clone(), m.started_at));
        if next.is_none() {
            return Ok(out);
        }
        let listed = self.list_places(Some(&m.subject)).await;
        while let Some((id, by, by_started)) = next {
            let base = self.find_listed(&listed, &id).await.with_context(|| {
                let through = if by == m.id { String::new() } else { format!(" (through {by})") };
                format!(
                    "{} depends on backup {id}{through}, which cannot be read: it cannot be restored; take a full \
                     backup (`pgbackd backup --kind full`)",
                    m.describe()
                )
            })?;
            if base.started_at >= by_started {
                bail!("backup {by} names {id} as its base, which is not older: the manifests were edited");
            }
            next = base.base_id().map(|b| (b.to_owned(), base.id.clone(), base.started_at));
            out.push(base);
        }
        Ok(out)
    }

    /// The subject of backup `id`, whether or not its manifest can be trusted.
    pub async fn subject_of(&self, id: &str) -> Result<Subject> {
        Self::check_id(id)?;
        let listing = self.listing(None).await?;
        let good = listing.backups.into_iter().map(|l| (l.manifest.id, l.manifest.subject));
        let damaged = listing.damaged.into_iter().map(|d| (d.id, d.subject));
        match good.chain(damaged).find(|(i, _)| i == id) {
            Some((_, s)) => Ok(s),
            None => bail!("no backup with id {id} in {} (see `pgbackd list`)", self.describe()),
        }
    }

    /// Finds a backup by id, whatever its subject.
    pub async fn find(&self, id: &str) -> Result<Manifest> {
        self.find_in(None, id).await
    }

    /// The ids of `subject`'s backups (ids sort by time), each with the targets holding a
    /// manifest and its digests there; only keys are listed, no manifest is read.
    async fn ids(&self, subject: &Subject) -> Result<Vec<(String, Vec<(&Target, Vec<String>)>)>> {
        let places = self.places(Some(subject));
        let mut by_id: BTreeMap<String, Vec<(&Target, Vec<String>)>> = BTreeMap::new();
        let mut failures = Vec::new();
        for (t, prefix) in &places {
            match t.store.list(prefix).await {
                Ok(objects) => {
                    for ((_, id), dir) in index(&objects, Some(subject)) {
                        by_id.entry(id).or_default().push((*t, dir.digests));
                    }
                }
                Err(e) => failures.push(format!("{}: {e:#}", t.store.describe())),
            }
        }
        if !places.is_empty() && failures.len() == places.len() {
            bail!("cannot list any storage target: {}", failures.join("; "));
        }
        Ok(by_id.into_iter().collect())
    }
    /// Reads `subject`'s manifests newest first until `enough` says stop; returns them newest
    /// first. Ids start with their start second, so only backups of the same second need their
    /// manifests to be ordered (by start time, then id).
    async fn newest_until(
        &self,
        subject: &Subject,
        mut enough: impl FnMut(&[Manifest]) -> bool,
    ) -> Result<Vec<Manifest>> {
        let ids = self.ids(subject).await?;
        let mut out: Vec<Manifest> = Vec::new();
        let mut i = ids.len();
        while i > 0 && !enough(&out) {
            let second = &ids[i - 1].0[..16.min(ids[i - 1].0.len())];
            let mut group = Vec::new();
            while i > 0 && ids[i - 1].0.starts_with(second) {
                let (id, targets) = &ids[i - 1];
                group.extend(read_first(targets, subject, id).await);
                i -= 1;
            }
            group.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| b.id.cmp(&a.id)));
            out.extend(group);
        }
        Ok(out)
    }

    /// The newest `n` backups of `subject`, oldest first; only their manifests are read.
    pub async fn newest(&self, subject: &Subject, n: usize) -> Result<Vec<Manifest>> {
        let mut out = self.newest_until(subject, |got| got.len() >= n).await?;
        out.truncate(n);
        out.reverse();
        Ok(out)
    }

    /// The backups of `subject` from its newest full on, newest first (the full last; empty
    /// without a full), safety backups left out.
    pub async fn since_full(&self, subject: &Subject) -> Result<Vec<Manifest>> {
        let own = |m: &Manifest| m.trigger != super::manifest::Trigger::SafetyBeforeRestore;
        let full = |m: &Manifest| own(m) && m.kind == BackupKind::Full;
        let found = self.newest_until(subject, |got| got.iter().any(full)).await?;
        let Some(end) = found.iter().position(full) else { return Ok(Vec::new()) };
        Ok(found.into_iter().take(end + 1).filter(own).collect())
    }

    /// The newest backup of `subject` (of `kind`), safety backups (taken before a `restore
    /// --clean` of the database) left out: they are restored by id.
    pub async fn latest(&self, subject: &Subject, kind: Option<BackupKind>) -> Result<Option<Manifest>> {
        let matches = |m: &Manifest| {
            kind.is_none_or(|k| m.kind == k) && m.trigger != super::manifest::Trigger::SafetyBeforeRestore
        };
        let found = self.newest_until(subject, |got| got.iter().any(matches)).await?;
        Ok(found.into_iter().find(matches))
    }
}

pub(super) async fn read_annotations_from(store: &Arc<dyn Store>, subject: &Subject, id: &str) -> Annotations {
    let key = keys::annotations(subject, id);
    match store.get(&key).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(key = %key, error = %e, "ignoring unreadable annotations");
            Annotations::default()
        }),
        _ => Annotations::default(),
    }
}

/// Reads the manifest of backup `id` of `subject` from `store`, where a listing showed
/// `digests` beside it; `Ok(None)` if there is none. An error says why it cannot be trusted.
pub async fn read_manifest_from(
    store: &Arc<dyn Store>,
    subject: &Subject,
    id: &str,
    digests: &[String],
) -> Result<Option<Manifest>> {
    let key = keys::manifest(subject, id);
    let Some(bytes) = store.get(&key).await? else { return Ok(None) };
    let what = format!("{key} on {}", store.name());
    let m = Manifest::parse(&bytes, &what)?;
    if m.schema_version >= 2 {
        let got = hex::encode(Sha256::digest(&bytes));
        match digests {
            [] => bail!(
                "{what} has no digest beside it (manifest.sha256.<SHA-256>): its commit was interrupted or the \
                 digest was removed; do not trust this backup (see \"Damaged backups\" in docs/operations.md)"
            ),
            [d] if *d == got => {}
            [d] => bail!(
                "{what} does not match its digest (SHA-256 {got}, the digest says {d}): the manifest was modified or \
                 damaged after the backup was written; do not trust this backup (see \"Damaged backups\" in \
                 docs/operations.md)"
            ),
            _ => bail!("{what} has {} digests beside it, one is expected: the repository was edited", digests.len()),
        }
    }
    if m.id != id || m.subject != *subject {
        bail!("manifest {key} describes backup {} of {}: the repository was edited by hand", m.id, m.subject);
    }
    Ok(Some(m))
}

/// The manifest of backup `id` from the first of `targets` that reads it (an untrusted one is
/// logged and skipped here; listing reports it as damaged).
async fn read_first(targets: &[(&Target, Vec<String>)], subject: &Subject, id: &str) -> Option<Manifest> {
    for (t, digests) in targets {
        match read_manifest_from(&t.store, subject, id, digests).await {
            Ok(Some(m)) => return Some(m),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(backup_id = %id, target_name = t.name(), error = %format!("{e:#}"), "skipping a damaged manifest")
            }
        }
    }
    None
}

/// Logs a damaged manifest the first time this process finds it (every listing finds it again;
/// `list`, `verify`, the status board and the metric keep reporting it).
fn log_damaged(id: &str, target: &str, problem: &str) {
    static SEEN: std::sync::Mutex<BTreeSet<(String, String)>> = std::sync::Mutex::new(BTreeSet::new());
    let first = SEEN.lock().unwrap_or_else(|e| e.into_inner()).insert((id.to_owned(), target.to_owned()));
    if first {
        tracing::error!(backup_id = %id, target_name = target, error = %problem, "damaged manifest");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn repo(dir: &std::path::Path) -> Repository {
        Repository::local_for_tests(dir)
    }

    #[tokio::test]
    async fn the_newest_is_found_by_start_time_even_within_one_second_and_subjects_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let app = Subject::Database("app".into());
        let second = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
        // three backups in the same second: the ids' random suffixes sort against their times
        for (id, kind, ms) in [
            ("20261122T010000Z-full-ffffff", BackupKind::Full, 100),
            ("20261122T010000Z-incremental-000001", BackupKind::Incremental, 500),
            ("20261122T010000Z-full-000002", BackupKind::Full, 300),
        ] {
            let mut m = Manifest::for_tests(app.clone(), id, kind, second + chrono::Duration::milliseconds(ms));
            m.targets = vec!["local".into()];
            r.write_manifest(&m).await.unwrap();
        }
        // a file set named like the database, and a database named `files`, are other subjects
        for s in [Subject::Files("app".into()), Subject::Database("files".into())] {
            let mut m = Manifest::for_tests(s, "20261122T020000Z-full-000003", BackupKind::Full, second);
            m.targets = vec!["local".into()];
            r.write_manifest(&m).await.unwrap();
        }
        let latest = r.latest(&app, None).await.unwrap().unwrap();
        assert_eq!(latest.id, "20261122T010000Z-incremental-000001");
        let full = r.latest(&app, Some(BackupKind::Full)).await.unwrap().unwrap();
        assert_eq!(full.id, "20261122T010000Z-full-000002");
        let newest: Vec<String> = r.newest(&app, 2).await.unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(newest, ["20261122T010000Z-full-000002", "20261122T010000Z-incremental-000001"]);
        assert_eq!(r.list(Some(&app)).await.unwrap().len(), 3);
        assert_eq!(r.list(Some(&Subject::Database("files".into()))).await.unwrap().len(), 1);
        assert_eq!(r.list(None).await.unwrap().len(), 5);
        assert_eq!(r.subjects().await.unwrap().len(), 3);
        let found = r.find("20261122T020000Z-full-000003").await.unwrap();
        assert!(matches!(found.subject, Subject::Files(_) | Subject::Database(_)));
    }
}
