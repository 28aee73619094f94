//! The catalog: what backups the repository holds, found by listing keys and reading manifests
//! (only those asked for: the newest of a subject is found without reading every manifest).

use super::{Annotations, BackupKind, Listed, Manifest, Repository, Subject, keys};
use crate::storage::{Store, Target};
use anyhow::{Result, bail};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

impl Repository {
    /// Every backup (of one subject, or of all), oldest first, with the targets holding each.
    /// A target that cannot be listed is skipped with a warning, unless none can be.
    pub async fn list_with_targets(&self, subject: Option<&Subject>) -> Result<Vec<Listed>> {
        let places = self.places(subject);
        // by backup directory: two subjects may hold backups with the same id
        let mut by_dir: BTreeMap<String, Listed> = BTreeMap::new();
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
            let annotated: HashSet<&str> =
                objects.iter().filter_map(|o| o.key.strip_suffix(keys::ANNOTATIONS_FILE)).collect();
            for obj in &objects {
                let Some((found, id)) = keys::parse_manifest_key(&obj.key) else { continue };
                // a database named `files` is listed under `files/`, beside the file sets
                if subject.is_some_and(|s| *s != found) {
                    continue;
                }
                let dir = keys::backup_dir(&found, id);
                if let Some(listed) = by_dir.get_mut(&dir) {
                    listed.targets.push(t.name().to_owned());
                    continue;
                }
                match read_manifest_from(&t.store, &found, id).await {
                    Ok(Some(m)) => {
                        let annotations = if annotated.contains(dir.as_str()) {
                            read_annotations_from(&t.store, &found, id).await
                        } else {
                            Annotations::default()
                        };
                        by_dir.insert(dir, Listed { manifest: m, targets: vec![t.name().to_owned()], annotations });
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(key = %obj.key, error = %format!("{e:#}"), "skipping unreadable manifest"),
                }
            }
        }
        if !places.is_empty() && failures.len() == places.len() {
            bail!("cannot list any storage target: {}", failures.join("; "));
        }
        let mut out: Vec<Listed> = by_dir.into_values().collect();
        out.sort_by(|a, b| {
            a.manifest.started_at.cmp(&b.manifest.started_at).then_with(|| a.manifest.id.cmp(&b.manifest.id))
        });
        Ok(out)
    }

    /// Every backup (of one subject, or of all), oldest first.
    pub async fn list(&self, subject: Option<&Subject>) -> Result<Vec<Manifest>> {
        Ok(self.list_with_targets(subject).await?.into_iter().map(|l| l.manifest).collect())
    }

    /// The subjects that have backups, in key order.
    pub async fn subjects(&self) -> Result<Vec<Subject>> {
        let mut out: Vec<Subject> = self.list(None).await?.into_iter().map(|m| m.subject).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Finds a backup by id, whatever its subject (or among those of `subject`).
    pub async fn find_in(&self, subject: Option<&Subject>, id: &str) -> Result<Manifest> {
        if !keys::looks_like_backup_id(id) {
            bail!("{id:?} is not a backup id (they look like 20261122T010000Z-full-3f9a1c; see `pgbackd list`)");
        }
        for (t, prefix) in self.places(subject) {
            let objects = match t.store.list(&prefix).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "cannot list a storage target");
                    continue;
                }
            };
            let found = objects.iter().filter_map(|o| keys::parse_manifest_key(&o.key)).find(|(_, i)| *i == id);
            if let Some((s, _)) = found
                && let Some(m) = read_manifest_from(&t.store, &s, id).await?
            {
                return Ok(m);
            }
        }
        bail!("no backup with id {id} in {} (see `pgbackd list`)", self.describe())
    }

    /// Finds a backup by id, whatever its subject.
    pub async fn find(&self, id: &str) -> Result<Manifest> {
        self.find_in(None, id).await
    }

    /// The ids of `subject`'s backups (ids sort by time), each with the targets holding a
    /// manifest; only keys are listed, no manifest is read.
    async fn ids(&self, subject: &Subject) -> Result<Vec<(String, Vec<&Target>)>> {
        let places = self.places(Some(subject));
        let mut by_id: BTreeMap<String, Vec<&Target>> = BTreeMap::new();
        let mut failures = Vec::new();
        for (t, prefix) in &places {
            match t.store.list(prefix).await {
                Ok(objects) => {
                    for (s, id) in objects.iter().filter_map(|o| keys::parse_manifest_key(&o.key)) {
                        if s == *subject {
                            by_id.entry(id.to_owned()).or_default().push(t);
                        }
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

    /// The newest backup of `subject` (of `kind`, if given), reading manifests newest first.
    pub async fn latest(&self, subject: &Subject, kind: Option<BackupKind>) -> Result<Option<Manifest>> {
        let matches = |m: &Manifest| kind.is_none_or(|k| m.kind == k);
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

/// Reads the manifest of backup `id` of `subject` from `store`; `Ok(None)` if there is none.
pub async fn read_manifest_from(store: &Arc<dyn Store>, subject: &Subject, id: &str) -> Result<Option<Manifest>> {
    let key = keys::manifest(subject, id);
    let Some(bytes) = store.get(&key).await? else { return Ok(None) };
    let m = Manifest::parse(&bytes, &format!("{key} on {}", store.name()))?;
    if m.id != id || m.subject != *subject {
        bail!("manifest {key} describes backup {} of {}: the repository was edited by hand", m.id, m.subject);
    }
    Ok(Some(m))
}

/// The manifest of backup `id` from the first of `targets` that reads it (an unreadable one is
/// logged and skipped, as listing does).
async fn read_first(targets: &[&Target], subject: &Subject, id: &str) -> Option<Manifest> {
    for t in targets {
        match read_manifest_from(&t.store, subject, id).await {
            Ok(Some(m)) => return Some(m),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(backup_id = %id, target_name = t.name(), error = %format!("{e:#}"), "skipping unreadable manifest")
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStore;
    use chrono::{TimeZone, Utc};

    fn repo(dir: &std::path::Path) -> Repository {
        let store = Arc::new(LocalStore::new("local", dir).unwrap());
        Repository {
            targets: vec![Target { store, required: true }],
            file_targets: None,
            config_targets: None,
            crypto: None,
        }
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
