//! The repository: which keys a backup is made of, and the catalog of backups (their manifests).
//!
//! Layout on every target: `<database>/<backup id>/{data.zst, globals.sql.zst, manifest.json}`.
//! Backup ids sort by time: `20261122T010000Z-full-3f9a1c` (UTC start, kind, random suffix).
//! This module is the only code that knows key names.

pub mod manifest;

use crate::config::Config;
use crate::storage::Store;
use crate::storage::local::LocalStore;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
pub use manifest::{BackupKind, Manifest};
use std::sync::Arc;

pub const MANIFEST_FILE: &str = "manifest.json";

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

pub fn data_key(database: &str, id: &str, compressed: bool) -> String {
    format!("{database}/{id}/{}", if compressed { "data.zst" } else { "data.dump" })
}

pub fn globals_key(database: &str, id: &str) -> String {
    format!("{database}/{id}/globals.sql.zst")
}

pub fn manifest_key(database: &str, id: &str) -> String {
    format!("{database}/{id}/{MANIFEST_FILE}")
}

#[derive(Clone)]
pub struct Repository {
    stores: Vec<Arc<dyn Store>>,
}

impl Repository {
    pub fn open(config: &Config) -> Result<Repository> {
        let local = LocalStore::new("local", &config.repository)?;
        Ok(Repository { stores: vec![Arc::new(local)] })
    }

    pub fn from_stores(stores: Vec<Arc<dyn Store>>) -> Repository {
        Repository { stores }
    }

    pub fn stores(&self) -> &[Arc<dyn Store>] {
        &self.stores
    }

    pub fn target_names(&self) -> Vec<String> {
        self.stores.iter().map(|s| s.name().to_owned()).collect()
    }

    /// The target backups are read from.
    pub fn primary(&self) -> &Arc<dyn Store> {
        &self.stores[0]
    }

    /// Every backup (of one database, or all), oldest first. Unreadable manifests are skipped
    /// with a warning naming them.
    pub async fn list(&self, database: Option<&str>) -> Result<Vec<Manifest>> {
        let store = self.primary();
        let prefix = database.map(|d| format!("{d}/")).unwrap_or_default();
        let objects = store.list(&prefix).await.with_context(|| format!("listing backups in {}", store.describe()))?;
        let mut out = Vec::new();
        for obj in objects {
            let parts: Vec<&str> = obj.key.split('/').collect();
            if parts.len() != 3 || parts[2] != MANIFEST_FILE {
                continue;
            }
            match self.read_manifest(parts[0], parts[1]).await {
                Ok(m) => out.push(m),
                Err(e) => {
                    tracing::warn!(key = %obj.key, error = %format!("{e:#}"), "skipping unreadable manifest")
                }
            }
        }
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    pub async fn read_manifest(&self, database: &str, id: &str) -> Result<Manifest> {
        let key = manifest_key(database, id);
        let store = self.primary();
        let bytes = store.get(&key).await?.with_context(|| {
            format!("backup {id} of database {database} does not exist (no {key} in {})", store.describe())
        })?;
        let m = Manifest::parse(&bytes, &key)?;
        if m.id != id || m.database != database {
            bail!("manifest {key} describes backup {} of {}: the repository was edited by hand", m.id, m.database);
        }
        Ok(m)
    }

    /// Finds a backup by id, whatever its database (reads only that backup's manifest).
    pub async fn find(&self, id: &str) -> Result<Manifest> {
        if !looks_like_backup_id(id) {
            bail!("{id:?} is not a backup id (they look like 20261122T010000Z-full-3f9a1c; see `pgbackd list`)");
        }
        let store = self.primary();
        let suffix = format!("/{id}/{MANIFEST_FILE}");
        let objects = store.list("").await.with_context(|| format!("listing backups in {}", store.describe()))?;
        let key = objects
            .iter()
            .find(|o| o.key.ends_with(&suffix) && o.key.matches('/').count() == 2)
            .with_context(|| format!("no backup with id {id} in {} (see `pgbackd list`)", store.describe()))?;
        let database = key.key.split('/').next().unwrap_or_default();
        self.read_manifest(database, id).await
    }

    /// The newest backup of `database` (of `kind`, if given).
    pub async fn latest(&self, database: &str, kind: Option<BackupKind>) -> Result<Option<Manifest>> {
        let all = self.list(Some(database)).await?;
        Ok(all.into_iter().rfind(|m| kind.is_none_or(|k| m.kind == k)))
    }

    /// Commits a backup: the manifest goes to every target, last.
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let key = manifest_key(&manifest.database, &manifest.id);
        let bytes = Bytes::from(manifest.to_json());
        for store in &self.stores {
            store.put(&key, bytes.clone()).await.with_context(|| format!("writing {key} to {}", store.describe()))?;
        }
        Ok(())
    }

    /// Removes whatever exists of a backup (used when a backup fails; manifest first).
    pub async fn remove_backup(&self, database: &str, id: &str) -> Result<()> {
        let prefix = backup_prefix(database, id);
        for store in &self.stores {
            store.delete(&[manifest_key(database, id)]).await?;
            let keys: Vec<String> = store.list(&prefix).await?.into_iter().map(|o| o.key).collect();
            store.delete(&keys).await.with_context(|| format!("removing {prefix} from {}", store.describe()))?;
        }
        Ok(())
    }
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
