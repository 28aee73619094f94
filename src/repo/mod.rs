//! The repository: which keys a backup is made of, and the catalog of backups (their manifests).
//!
//! Layout on every target: `<database>/<backup id>/{data.zst, globals.sql.zst, manifest.json}`.
//! Backup ids sort by time: `20261122T010000Z-full-3f9a1c` (UTC start, kind, random suffix).
//! This module is the only code that knows key names.

pub mod manifest;

use crate::config::Config;
use crate::crypto::Crypto;
use crate::pipeline::{Decryption, ObjectReader};
use crate::storage::{self, Store, Target};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
pub use manifest::{Annotations, BackupKind, Manifest};
use std::sync::Arc;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const ANNOTATIONS_FILE: &str = "annotations.json";

/// A new, sortable backup id.
pub fn new_backup_id(now: DateTime<Utc>, kind: BackupKind) -> String {
    let suffix: u32 = rand::random();
    format!("{}-{}-{:06x}", now.format("%Y%m%dT%H%M%SZ"), kind.name(), suffix & 0xff_ffff)
}

/// Whether a string has the shape of a backup id (before looking it up).
pub fn looks_like_backup_id(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(3, '-').collect();
    parts.len() == 3
        && parts[0].len() == 16
        && parts[0].ends_with('Z')
        && matches!(parts[1], "full" | "incremental")
        && parts[2].len() == 6
        && parts[2].chars().all(|c| c.is_ascii_hexdigit())
}

pub fn backup_prefix(database: &str, id: &str) -> String {
    format!("{database}/{id}/")
}

/// The archive's key: `data.zst` (or `data.dump` uncompressed), `.age` appended when encrypted.
pub fn data_key(database: &str, id: &str, compressed: bool, encrypted: bool) -> String {
    let name = if compressed { "data.zst" } else { "data.dump" };
    format!("{database}/{id}/{name}{}", if encrypted { ".age" } else { "" })
}

pub fn globals_key(database: &str, id: &str, encrypted: bool) -> String {
    format!("{database}/{id}/globals.sql.zst{}", if encrypted { ".age" } else { "" })
}

pub fn manifest_key(database: &str, id: &str) -> String {
    format!("{database}/{id}/{MANIFEST_FILE}")
}

pub fn annotations_key(database: &str, id: &str) -> String {
    format!("{database}/{id}/{ANNOTATIONS_FILE}")
}

/// The backups on every configured target.
#[derive(Clone)]
pub struct Repository {
    targets: Vec<Target>,
    /// What new backups are encrypted to, and what decrypts old ones (None: no encryption).
    crypto: Option<Arc<Crypto>>,
}

/// A backup, the targets holding its manifest, and what was checked since.
#[derive(Debug, Clone)]
pub struct Listed {
    pub manifest: Manifest,
    pub targets: Vec<String>,
    pub annotations: Annotations,
}

impl Repository {
    pub async fn open(config: &Config) -> Result<Repository> {
        let crypto = Crypto::load(&config.encryption)?;
        Ok(Repository { targets: storage::open_targets(&config.targets).await?, crypto })
    }

    pub fn from_targets(targets: Vec<Target>, crypto: Option<Arc<Crypto>>) -> Repository {
        Repository { targets, crypto }
    }

    /// The encryption new backups get.
    pub fn crypto(&self) -> Option<&Arc<Crypto>> {
        self.crypto.as_ref()
    }

    /// What new backups are encrypted with (`None`: they are not encrypted).
    pub fn encrypts_with(&self) -> Option<&Arc<Crypto>> {
        self.crypto.as_ref().filter(|c| c.encrypts())
    }

    /// Checks that backup `m`'s manifest is the one written with it (encrypted backups carry an
    /// HMAC under a key only the identity can unwrap), and returns what decrypts its objects.
    /// Unencrypted backups have nothing to check.
    pub fn authenticate(&self, m: &Manifest) -> Result<Option<Decryption>> {
        let what = describe(m);
        let encrypted_objects = m.data.encrypted || m.globals.as_ref().is_some_and(|g| g.encrypted);
        let checked =
            self.check_manifest(&what, m.encryption.as_ref(), encrypted_objects, m.mac.as_deref(), || m.mac_input())?;
        if checked.is_none() && self.encrypts_with().is_some() {
            tracing::warn!(
                backup_id = %m.id,
                "{what} is not encrypted, so its manifest is not authenticated (taken before encryption was enabled?)"
            );
        }
        Ok(checked)
    }

    /// The check behind [`Repository::authenticate`], for any kind of manifest (`what` names it):
    /// an encryption record with a MAC that the configured identity verifies, or no encryption at
    /// all (then no object may claim to be encrypted).
    pub fn check_manifest(
        &self,
        what: &str,
        encryption: Option<&crate::crypto::EncryptionInfo>,
        encrypted_objects: bool,
        mac: Option<&str>,
        mac_input: impl FnOnce() -> Vec<u8>,
    ) -> Result<Option<Decryption>> {
        let Some(info) = encryption else {
            if encrypted_objects || mac.is_some() {
                bail!("{what}: the manifest lists encrypted objects but no encryption record: it was modified");
            }
            return Ok(None);
        };
        let Some(crypto) = &self.crypto else {
            bail!(
                "{what} is encrypted ({}) but encryption is not configured here: pass --identity FILE, or set \
                 encryption.enabled and encryption.identity_file (or key_file)",
                crate::crypto::needs(info)
            );
        };
        let key = crypto.backup_key(info, what)?;
        let mac =
            mac.with_context(|| format!("{what}: the manifest's authentication code is missing: it was modified"))?;
        if !crate::crypto::mac_matches(&key, &mac_input(), mac) {
            bail!(
                "{what}: the manifest does not match its authentication code: it was modified after the backup \
                 was written; do not trust this backup"
            );
        }
        Ok(Some(Decryption { crypto: crypto.clone(), info: info.clone() }))
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Where backups are, for messages.
    pub fn describe(&self) -> String {
        self.targets.iter().map(|t| t.store.describe()).collect::<Vec<_>>().join(", ")
    }

    /// Every backup (of one database, or all), oldest first, with the targets holding each.
    /// A target that cannot be listed is skipped with a warning, unless none can be.
    pub async fn list_with_targets(&self, database: Option<&str>) -> Result<Vec<Listed>> {
        let prefix = database.map(|d| format!("{d}/")).unwrap_or_default();
        let mut by_id: std::collections::BTreeMap<String, Listed> = Default::default();
        let mut failures = Vec::new();
        for t in &self.targets {
            let objects = match t.store.list(&prefix).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "cannot list a storage target");
                    failures.push(format!("{}: {e:#}", t.store.describe()));
                    continue;
                }
            };
            let annotated: std::collections::HashSet<String> = objects
                .iter()
                .filter(|o| o.key.ends_with(&format!("/{ANNOTATIONS_FILE}")))
                .filter_map(|o| o.key.split('/').nth(1).map(str::to_owned))
                .collect();
            for obj in objects {
                let parts: Vec<&str> = obj.key.split('/').collect();
                if parts.len() != 3 || parts[2] != MANIFEST_FILE {
                    continue;
                }
                if let Some(listed) = by_id.get_mut(parts[1]) {
                    listed.targets.push(t.name().to_owned());
                    continue;
                }
                match read_manifest_from(&t.store, parts[0], parts[1]).await {
                    Ok(Some(m)) => {
                        let annotations = if annotated.contains(parts[1]) {
                            read_annotations_from(&t.store, parts[0], parts[1]).await
                        } else {
                            Annotations::default()
                        };
                        by_id.insert(
                            m.id.clone(),
                            Listed { manifest: m, targets: vec![t.name().to_owned()], annotations },
                        );
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(key = %obj.key, error = %format!("{e:#}"), "skipping unreadable manifest"),
                }
            }
        }
        if failures.len() == self.targets.len() {
            bail!("cannot list any storage target: {}", failures.join("; "));
        }
        let mut out: Vec<Listed> = by_id.into_values().collect();
        out.sort_by(|a, b| {
            a.manifest.started_at.cmp(&b.manifest.started_at).then_with(|| a.manifest.id.cmp(&b.manifest.id))
        });
        Ok(out)
    }

    /// Every backup (of one database, or all), oldest first.
    pub async fn list(&self, database: Option<&str>) -> Result<Vec<Manifest>> {
        Ok(self.list_with_targets(database).await?.into_iter().map(|l| l.manifest).collect())
    }

    /// Finds a backup by id, whatever its database (reads only that backup's manifest).
    pub async fn find(&self, id: &str) -> Result<Manifest> {
        if !looks_like_backup_id(id) {
            bail!("{id:?} is not a backup id (they look like 20261122T010000Z-full-3f9a1c; see `pgbackd list`)");
        }
        let suffix = format!("/{id}/{MANIFEST_FILE}");
        for t in &self.targets {
            let objects = match t.store.list("").await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "cannot list a storage target");
                    continue;
                }
            };
            if let Some(obj) = objects.iter().find(|o| o.key.ends_with(&suffix) && o.key.matches('/').count() == 2) {
                let database = obj.key.split('/').next().unwrap_or_default();
                if let Some(m) = read_manifest_from(&t.store, database, id).await? {
                    return Ok(m);
                }
            }
        }
        bail!("no backup with id {id} in {} (see `pgbackd list`)", self.describe())
    }

    /// The newest backup of `database` (of `kind`, if given).
    pub async fn latest(&self, database: &str, kind: Option<BackupKind>) -> Result<Option<Manifest>> {
        let all = self.list(Some(database)).await?;
        Ok(all.into_iter().rfind(|m| kind.is_none_or(|k| m.kind == k)))
    }

    /// The first target (in config order) that holds backup `m` whole: its manifest and a data
    /// object of the recorded size.
    pub async fn locate(&self, m: &Manifest) -> Result<Arc<dyn Store>> {
        let mut problems = Vec::new();
        for t in &self.targets {
            match t.store.size(&m.data.key).await {
                Ok(Some(size)) if size == m.data.stored_bytes => {
                    match t.store.get(&manifest_key(&m.database, &m.id)).await {
                        Ok(Some(_)) => return Ok(t.store.clone()),
                        Ok(None) => problems.push(format!("{}: no manifest", t.name())),
                        Err(e) => problems.push(format!("{}: {e:#}", t.name())),
                    }
                }
                Ok(Some(size)) => {
                    problems.push(format!("{}: {}", t.name(), size_problem(&m.data.key, size, m.data.stored_bytes)))
                }
                Ok(None) => problems.push(format!("{}: {} is missing", t.name(), m.data.key)),
                Err(e) => problems.push(format!("{}: {e:#}", t.name())),
            }
        }
        bail!("backup {} of {} is not readable on any target ({})", m.id, m.database, problems.join("; "))
    }

    /// What was checked about a backup (from the first target that has a record).
    pub async fn annotations(&self, m: &Manifest) -> Annotations {
        for t in &self.targets {
            if let Ok(Some(_)) = t.store.size(&annotations_key(&m.database, &m.id)).await {
                return read_annotations_from(&t.store, &m.database, &m.id).await;
            }
        }
        Annotations::default()
    }

    /// Updates the annotations of a backup on every target holding it (read, change, write).
    pub async fn annotate(&self, m: &Manifest, change: impl Fn(&mut Annotations)) -> Result<()> {
        let mut current = self.annotations(m).await;
        change(&mut current);
        let bytes = Bytes::from(serde_json::to_vec_pretty(&current)?);
        let key = annotations_key(&m.database, &m.id);
        let mut written = 0;
        for t in &self.targets {
            if !matches!(t.store.size(&manifest_key(&m.database, &m.id)).await, Ok(Some(_))) {
                continue;
            }
            match t.store.put(&key, bytes.clone()).await {
                Ok(()) => written += 1,
                Err(e) => {
                    tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "could not record the check result")
                }
            }
        }
        if written == 0 {
            bail!("could not record the result for backup {} on any target", m.id);
        }
        Ok(())
    }

    /// A reader for backup `m`'s archive on `store` (default: the first target holding it); for an
    /// incremental, with its base full (preferably from the same target).
    pub async fn reader(&self, m: &Manifest, store: Option<Arc<dyn Store>>) -> Result<Arc<ObjectReader>> {
        let store = match store {
            Some(s) => s,
            None => self.locate(m).await?,
        };
        let what = describe(m);
        let decryption = self.authenticate(m)?;
        match (&m.kind, &m.base_id) {
            (BackupKind::Incremental, Some(base_id)) => {
                let base = self
                    .find(base_id)
                    .await
                    .with_context(|| format!("{what} depends on full backup {base_id}, which cannot be read"))?;
                let base_store = match store.size(&base.data.key).await {
                    Ok(Some(size)) if size == base.data.stored_bytes => store.clone(),
                    _ => self.locate(&base).await?,
                };
                let base_what = format!("base {} of incremental {}", describe(&base), m.id);
                let base_decryption = self.authenticate(&base)?;
                let base_reader = ObjectReader::as_base(base_store, base.data.clone(), &base_what, base_decryption)?;
                ObjectReader::with_base(store, m.data.clone(), &what, decryption, base_reader)
            }
            (BackupKind::Incremental, None) => bail!("{what} is an incremental without a base backup id"),
            _ => ObjectReader::new(store, m.data.clone(), &what, decryption),
        }
    }

    /// Commits a backup: the manifest goes, last, to every target that holds its data.
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let key = manifest_key(&manifest.database, &manifest.id);
        let bytes = Bytes::from(manifest.to_json());
        for t in self.targets.iter().filter(|t| manifest.targets.iter().any(|n| n == t.name())) {
            t.store
                .put(&key, bytes.clone())
                .await
                .with_context(|| format!("writing {key} to {}", t.store.describe()))?;
        }
        Ok(())
    }

    /// Removes whatever exists of a backup on every target (manifest first). Used when a backup
    /// fails; an unreachable optional target is reported, not fatal.
    pub async fn remove_backup(&self, database: &str, id: &str) -> Result<()> {
        let prefix = backup_prefix(database, id);
        for t in &self.targets {
            let result: Result<()> = async {
                t.store.delete(&[manifest_key(database, id)]).await?;
                let keys: Vec<String> = t.store.list(&prefix).await?.into_iter().map(|o| o.key).collect();
                t.store.delete(&keys).await
            }
            .await;
            match result {
                Ok(()) => {}
                Err(e) if !t.required => {
                    tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "could not remove a failed backup from an optional target")
                }
                Err(e) => return Err(e.context(format!("removing {prefix} from {}", t.store.describe()))),
            }
        }
        Ok(())
    }
}

/// Names a backup in messages.
pub fn describe(m: &Manifest) -> String {
    format!("backup {} of database {}", m.id, m.database)
}

async fn read_annotations_from(store: &Arc<dyn Store>, database: &str, id: &str) -> Annotations {
    let key = annotations_key(database, id);
    match store.get(&key).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(key = %key, error = %e, "ignoring unreadable annotations");
            Annotations::default()
        }),
        _ => Annotations::default(),
    }
}

async fn read_manifest_from(store: &Arc<dyn Store>, database: &str, id: &str) -> Result<Option<Manifest>> {
    let key = manifest_key(database, id);
    let Some(bytes) = store.get(&key).await? else { return Ok(None) };
    let m = Manifest::parse(&bytes, &format!("{key} on {}", store.name()))?;
    if m.id != id || m.database != database {
        bail!("manifest {key} describes backup {} of {}: the repository was edited by hand", m.id, m.database);
    }
    Ok(Some(m))
}

/// An object whose size is not the recorded one, for messages.
pub fn size_problem(key: &str, size: u64, recorded: u64) -> String {
    let what = if size < recorded { "it is truncated" } else { "bytes were added to it" };
    format!("{key} has {size} bytes, the manifest records {recorded}: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_sort_by_time_and_are_recognised() {
        let a = new_backup_id(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(), BackupKind::Full);
        let b = new_backup_id(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 6).unwrap(), BackupKind::Incremental);
        assert!(a.starts_with("20260102T030405Z-full-"), "{a}");
        assert!(a < b);
        assert!(looks_like_backup_id(&a) && looks_like_backup_id(&b));
        assert!(!looks_like_backup_id("latest"));
        assert!(!looks_like_backup_id("../../etc"));
    }
}
