//! The repository: every backup of every subject on every target, found through its manifest.
//!
//! One catalog for databases, file sets and configuration sets: listing, finding, locating,
//! reading, committing, annotating, deleting and orphan cleanup work the same for all of them.
//! Keys come from [`keys`] only; manifests are [`manifest::Manifest`]s only. One `Repository` is
//! opened per configuration (the daemon replaces it on reload) and shared by every job.

mod attempts;
mod catalog;
pub mod keys;
pub mod locks;
pub mod manifest;
pub mod subject;

use crate::config::Config;
use crate::crypto::Crypto;
use crate::pipeline::{Decryption, ObjectReader};
use crate::storage::{self, Store, Target};
use anyhow::{Context, Result, bail};
pub use attempts::{Attempt, AttemptOutcome};
use bytes::Bytes;
use catalog::read_annotations_from;
pub use catalog::{Damaged, Listing, read_manifest_from};
use chrono::{DateTime, Utc};
pub use manifest::{Annotations, BackupKind, Manifest};
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;
pub use subject::Subject;

/// The backups on every configured target.
pub struct Repository {
    /// Where databases (and, unless stored apart, file sets) go, in config order.
    targets: Vec<Target>,
    /// `file_backup_dir` and `config_backup_dir`: file and configuration sets stored apart.
    file_targets: Option<Vec<Target>>,
    config_targets: Option<Vec<Target>>,
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

/// What deleting one backup did on each target: bytes freed, or why not.
pub type Deleted = Vec<(String, Result<u64>)>;

impl Repository {
    /// A repository of one local target in `dir`, unencrypted, for unit tests.
    #[cfg(test)]
    pub(crate) fn local_for_tests(dir: &std::path::Path) -> Repository {
        let store = Arc::new(crate::storage::local::LocalStore::new("local", dir).unwrap());
        Repository {
            targets: vec![crate::storage::Target { store, required: true }],
            file_targets: None,
            config_targets: None,
            crypto: None,
        }
    }

    pub async fn open(config: &Config) -> Result<Repository> {
        let crypto = Crypto::load(&config.encryption)?;
        let apart = |name: &str, dir: &Option<std::path::PathBuf>| -> Result<Option<Vec<Target>>> {
            let Some(d) = dir else { return Ok(None) };
            let store = crate::storage::local::LocalStore::new(name, d)?;
            Ok(Some(vec![Target { store: Arc::new(store), required: true }]))
        };
        Ok(Repository {
            targets: storage::open_targets(&config.targets).await?,
            file_targets: apart("files", &config.file_backup_dir)?,
            config_targets: apart("configs", &config.config_backup_dir)?,
            crypto,
        })
    }

    /// The encryption new backups get.
    pub fn crypto(&self) -> Option<&Arc<Crypto>> {
        self.crypto.as_ref()
    }

    /// What new backups are encrypted with (`None`: they are not encrypted).
    pub fn encrypts_with(&self) -> Option<&Arc<Crypto>> {
        self.crypto.as_ref().filter(|c| c.encrypts())
    }

    /// The main targets (databases go there).
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Where the backups of `subject` are.
    pub fn targets_for(&self, subject: &Subject) -> &[Target] {
        let apart = match subject {
            Subject::Database(_) | Subject::Cluster(_) | Subject::Sqlite(_) => None,
            Subject::Files(_) => self.file_targets.as_deref(),
            Subject::Configs(_) => self.config_targets.as_deref(),
        };
        apart.unwrap_or(&self.targets)
    }

    /// Every place to list (a target and the key prefix to list there): those of `subject`, or
    /// all of them.
    fn places(&self, subject: Option<&Subject>) -> Vec<(&Target, String)> {
        match subject {
            Some(s) => self.targets_for(s).iter().map(|t| (t, keys::subject_prefix(s))).collect(),
            None => {
                let mut out: Vec<(&Target, String)> = self.targets.iter().map(|t| (t, String::new())).collect();
                out.extend(self.file_targets.iter().flatten().map(|t| (t, "files/".to_owned())));
                out.extend(self.config_targets.iter().flatten().map(|t| (t, "configs/".to_owned())));
                out
            }
        }
    }

    fn target(&self, subject: &Subject, name: &str) -> Option<&Target> {
        self.targets_for(subject).iter().find(|t| t.name() == name)
    }

    /// Where backups are, for messages.
    pub fn describe(&self) -> String {
        let mut names: Vec<String> = self.places(None).iter().map(|(t, _)| t.store.describe()).collect();
        names.dedup();
        names.join(", ")
    }

    /// Checks that backup `m`'s manifest is the one written with it (encrypted backups carry an
    /// HMAC under a key only the identity can unwrap), and returns what decrypts its objects.
    /// Unencrypted backups have nothing to check.
    pub fn authenticate(&self, m: &Manifest) -> Result<Option<Decryption>> {
        let what = m.describe();
        let encrypted_objects = m.objects().iter().any(|o| o.encrypted);
        let Some(info) = &m.encryption else {
            if encrypted_objects || m.mac.is_some() {
                bail!("{what}: the manifest lists encrypted objects but no encryption record: it was modified");
            }
            if self.encrypts_with().is_some() {
                tracing::warn!(
                    backup_id = %m.id,
                    "{what} is not encrypted, so its manifest is not authenticated (taken before encryption was enabled?)"
                );
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
        let key = crypto.backup_key(info, &what)?;
        let mac = m
            .mac
            .as_deref()
            .with_context(|| format!("{what}: the manifest's authentication code is missing: it was modified"))?;
        if !crate::crypto::mac_matches(&key, &m.mac_input(), mac) {
            bail!(
                "{what}: the manifest does not match its authentication code: it was modified after the backup \
                 was written; do not trust this backup"
            );
        }
        Ok(Some(Decryption { crypto: crypto.clone(), info: info.clone() }))
    }

    /// The first target (in config order) that holds backup `m` whole: its manifest and a data
    /// object of the recorded size.
    pub async fn locate(&self, m: &Manifest) -> Result<Arc<dyn Store>> {
        let mut problems = Vec::new();
        for t in self.targets_for(&m.subject) {
            match t.store.size(&m.data.key).await {
                Ok(Some(size)) if size == m.data.stored_bytes => {
                    match t.store.size(&keys::manifest(&m.subject, &m.id)).await {
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
        bail!("{} is not readable on any target ({})", m.describe(), problems.join("; "))
    }

    /// The store of target `name` if it holds `m`'s subject.
    pub fn store_named(&self, m: &Manifest, name: &str) -> Option<Arc<dyn Store>> {
        self.target(&m.subject, name).map(|t| t.store.clone())
    }

    /// What was checked about a backup (from the first target that has a record).
    pub async fn annotations(&self, m: &Manifest) -> Annotations {
        for t in self.targets_for(&m.subject) {
            if let Ok(Some(_)) = t.store.size(&keys::annotations(&m.subject, &m.id)).await {
                return read_annotations_from(&t.store, &m.subject, &m.id).await;
            }
        }
        Annotations::default()
    }

    /// Updates the annotations of a backup on every target holding it (read, change, write).
    pub async fn annotate(&self, m: &Manifest, change: impl Fn(&mut Annotations)) -> Result<()> {
        let mut current = self.annotations(m).await;
        change(&mut current);
        let bytes = Bytes::from(serde_json::to_vec_pretty(&current)?);
        let key = keys::annotations(&m.subject, &m.id);
        let mut written = 0;
        for t in self.targets_for(&m.subject) {
            if !matches!(t.store.size(&keys::manifest(&m.subject, &m.id)).await, Ok(Some(_))) {
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
            bail!("could not record the result for {} on any target", m.describe());
        }
        Ok(())
    }

    /// A reader for backup `m`'s main object on `store` (default: the first target holding it);
    /// for an incremental dump or SQLite snapshot, with the chain of backups it is a delta against, down to its full
    /// (each preferably from the same target).
    pub async fn reader(&self, m: &Manifest, store: Option<Arc<dyn Store>>) -> Result<Arc<ObjectReader>> {
        let store = match store {
            Some(s) => s,
            None => self.locate(m).await?,
        };
        let what = m.describe();
        let decryption = self.authenticate(m)?;
        let delta = m.dump().is_some() || m.sqlite().is_some();
        match (m.kind, delta, m.base_id()) {
            (BackupKind::Incremental, true, Some(_)) => {
                let chain = self.chain(m).await?;
                let below = self.chain_readers(m, &chain, &store).await?.context("an incremental without a base")?;
                ObjectReader::with_base(store, m.data.clone(), &what, decryption, below)
            }
            (BackupKind::Incremental, true, None) => bail!("{what} is an incremental without a base backup id"),
            _ => ObjectReader::new(store, m.data.clone(), &what, decryption),
        }
    }

    /// A caching reader of `base` (through `chain`, its own chain as [`Repository::chain`] found
    /// it), for the incremental `of` to be a delta against while it is taken, with `slack` bytes
    /// on either side of each region.
    pub async fn base_reader(
        &self,
        base: &Manifest,
        chain: &[Manifest],
        of: &str,
        slack: u64,
    ) -> Result<Arc<ObjectReader>> {
        let store = self.locate(base).await.with_context(|| format!("reading base {}", base.describe()))?;
        let below = self.chain_readers(base, chain, &store).await?;
        let what = format!("base {} of the incremental {of}", base.describe());
        ObjectReader::as_base(store, base.data.clone(), &what, self.authenticate(base)?, below, 2 * slack)
    }

    /// Readers of `chain` (the bases of `top`, nearest first), built from the full upward, each
    /// reading through the one below it; `None` for an empty chain.
    async fn chain_readers(
        &self,
        top: &Manifest,
        chain: &[Manifest],
        prefer: &Arc<dyn Store>,
    ) -> Result<Option<Arc<ObjectReader>>> {
        let mut below: Option<Arc<ObjectReader>> = None;
        for (i, b) in chain.iter().enumerate().rev() {
            let above = if i == 0 { top } else { &chain[i - 1] };
            let store = match prefer.size(&b.data.key).await {
                Ok(Some(size)) if size == b.data.stored_bytes => prefer.clone(),
                _ => self.locate(b).await?,
            };
            let what = format!("base {} of incremental {}", b.describe(), above.id);
            // how much of its raw stream consecutive frames of the backup above read again
            let frames = &above.data.frames;
            let region = frames.iter().filter_map(|f| f.base_len).max().unwrap_or(0);
            let step = frames.iter().map(|f| f.raw_len).max().unwrap_or(0);
            let overlap = region.saturating_sub(step);
            below = Some(ObjectReader::as_base(store, b.data.clone(), &what, self.authenticate(b)?, below, overlap)?);
        }
        Ok(below)
    }

    /// Commits a new backup: authenticates its manifest when backups are encrypted (a per-backup
    /// key age-encrypted to the recipients, an HMAC of the manifest under it), then writes it,
    /// last, to every target holding the backup's objects. From then on the backup exists.
    pub async fn commit(&self, mut manifest: Manifest) -> Result<Manifest> {
        if let Some(c) = self.encrypts_with() {
            let (info, key) = c.new_backup_key().context("creating the backup's authentication key")?;
            manifest.encryption = Some(info);
            manifest.mac = None;
            manifest.mac = Some(crate::crypto::mac(&key, &manifest.mac_input()));
        }
        self.write_manifest(&manifest).await?;
        Ok(manifest)
    }

    /// Writes a manifest to every target that holds its backup's objects: first the empty
    /// object whose name is the manifest's SHA-256, then the manifest (from then on the backup
    /// exists, and an edit of the manifest alone no longer matches its digest).
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let key = keys::manifest(&manifest.subject, &manifest.id);
        let bytes = Bytes::from(manifest.to_json());
        let digest = keys::manifest_digest(&manifest.subject, &manifest.id, &hex::encode(sha2::Sha256::digest(&bytes)));
        for t in self.targets_for(&manifest.subject).iter().filter(|t| manifest.targets.iter().any(|n| n == t.name())) {
            let written = async {
                t.store.put(&digest, Bytes::new()).await?;
                t.store.put(&key, bytes.clone()).await
            };
            written.await.with_context(|| format!("writing {key} to {}", t.store.describe()))?;
        }
        Ok(())
    }

    /// Deletes backup `id` of `subject` from every target: its manifest first (from then on the
    /// backup does not exist), then the rest of its directory. A crash in between leaves data
    /// without a manifest, which [`Repository::remove_orphans`] removes later.
    pub async fn delete(&self, subject: &Subject, id: &str) -> Deleted {
        let dir = keys::backup_dir(subject, id);
        let mut out = Vec::new();
        for t in self.targets_for(subject) {
            let result: Result<u64> = async {
                let objects = t.store.list(&dir).await?;
                if objects.is_empty() {
                    return Ok(0);
                }
                let bytes: u64 = objects.iter().map(|o| o.size).sum();
                // the manifest and its digest first, together: an interrupted deletion leaves
                // data without them (an orphan, swept later), not a backup that looks damaged
                let (marks, rest): (Vec<String>, Vec<String>) = objects.into_iter().map(|o| o.key).partition(|k| {
                    let file = k.rsplit('/').next().unwrap_or(k);
                    file == keys::MANIFEST_FILE || keys::digest_in(file).is_some()
                });
                t.store.delete(&marks).await?;
                t.store.delete(&rest).await?;
                Ok(bytes)
            }
            .await;
            out.push((
                t.name().to_owned(),
                result.with_context(|| format!("deleting {dir} from {}", t.store.describe())),
            ));
        }
        out
    }

    /// Removes whatever a failed backup wrote; an optional target that cannot be reached is
    /// reported, not fatal.
    pub async fn remove_failed(&self, subject: &Subject, id: &str) -> Result<()> {
        for (name, result) in self.delete(subject, id).await {
            let required = self.target(subject, &name).is_none_or(|t| t.required);
            match result {
                Ok(_) => {}
                Err(e) if !required => {
                    tracing::warn!(target_name = %name, error = %format!("{e:#}"), "could not remove a failed backup from an optional target")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// What stopped processes left under `subject`'s prefix on every target: unfinished writes
    /// (temp files, multipart uploads) and backup directories with data but no manifest; a
    /// target that cannot say is named in the errors.
    pub async fn leftovers(&self, subject: &Subject) -> (Vec<Leftover>, Vec<String>) {
        let prefix = keys::subject_prefix(subject);
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        for t in self.targets_for(subject) {
            match t.store.partials(&prefix).await {
                Ok(ps) => out.extend(ps.into_iter().map(|p| Leftover {
                    target: t.name().to_owned(),
                    key: p.key,
                    what: LeftoverKind::Unfinished,
                    since: p.since,
                    size: p.size,
                })),
                Err(e) => errors.push(format!("{}: {e:#}", t.store.describe())),
            }
            match t.store.list(&prefix).await {
                Ok(objects) => out.extend(orphan_dirs(&prefix, &objects).into_iter().map(|o| Leftover {
                    target: t.name().to_owned(),
                    key: format!("{prefix}{}/", o.id),
                    what: LeftoverKind::Orphan,
                    since: o.newest,
                    size: Some(o.size),
                })),
                Err(e) => errors.push(format!("{}: {e:#}", t.store.describe())),
            }
        }
        (out, errors)
    }

    /// Removes the unfinished writes under `subject`'s prefix last written before `cutoff` (a
    /// write in progress is younger); returns `target:key` of each, and the errors.
    pub async fn remove_leftovers(&self, subject: &Subject, cutoff: DateTime<Utc>) -> (Vec<String>, Vec<String>) {
        let prefix = keys::subject_prefix(subject);
        let (mut removed, mut errors) = (Vec::new(), Vec::new());
        for t in self.targets_for(subject) {
            let partials = match t.store.partials(&prefix).await {
                Ok(p) => p,
                Err(e) => {
                    errors.push(format!("listing the unfinished writes on {}: {e:#}", t.store.describe()));
                    continue;
                }
            };
            for p in partials.iter().filter(|p| p.since.is_some_and(|s| s < cutoff)) {
                match t.store.remove_partial(p).await {
                    Ok(()) => {
                        tracing::warn!(key = %p.key, target_name = t.name(), "removed an unfinished write (a process stopped mid-write)");
                        removed.push(format!("{}:{}", t.name(), p.key));
                    }
                    Err(e) => {
                        errors.push(format!("removing the unfinished {} from {}: {e:#}", p.key, t.store.describe()))
                    }
                }
            }
        }
        (removed, errors)
    }

    /// What every backup does first: removes what processes that stopped mid-write left
    /// (unfinished writes and orphan directories older than `grace`, so no write in progress is
    /// touched).
    pub async fn sweep_leftovers(&self, subject: &Subject, now: DateTime<Utc>, grace: std::time::Duration) {
        let cutoff = now - chrono::Duration::from_std(grace).unwrap_or_default();
        let (_, mut problems) = self.remove_leftovers(subject, cutoff).await;
        problems.extend(self.remove_orphans(subject, cutoff).await.1);
        for p in problems {
            tracing::debug!(problem = %p, "cannot clean up the unfinished writes of a target");
        }
    }

    /// Removes the backup directories of `subject` that have data but no manifest (interrupted
    /// uploads and deletions) and were last modified before `cutoff`; a directory without
    /// modification times is never removed. Returns `target:id` of each, and the errors.
    pub async fn remove_orphans(&self, subject: &Subject, cutoff: DateTime<Utc>) -> (Vec<String>, Vec<String>) {
        let prefix = keys::subject_prefix(subject);
        let (mut removed, mut errors) = (Vec::new(), Vec::new());
        for t in self.targets_for(subject) {
            let objects = match t.store.list(&prefix).await {
                Ok(o) => o,
                Err(e) => {
                    errors.push(format!("listing {}: {e:#}", t.store.describe()));
                    continue;
                }
            };
            for Orphan { id, newest, keys, .. } in orphan_dirs(&prefix, &objects) {
                if newest.is_none_or(|m| m > cutoff) {
                    continue;
                }
                match t.store.delete(&keys).await {
                    Ok(()) => {
                        tracing::warn!(backup_id = %id, target_name = t.name(), "removed data without a manifest (an interrupted backup or deletion)");
                        removed.push(format!("{}:{id}", t.name()));
                    }
                    Err(e) => errors.push(format!("removing orphan {id} from {}: {e:#}", t.store.describe())),
                }
            }
        }
        (removed, errors)
    }
}

/// What a stopped process left under a subject's prefix on one target.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Leftover {
    pub target: String,
    /// The key an unfinished write would have had; the directory of an orphan.
    pub key: String,
    pub what: LeftoverKind,
    pub since: Option<DateTime<Utc>>,
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftoverKind {
    /// A temp file or multipart upload (see [`Store::partials`]).
    Unfinished,
    /// A backup directory with data but no manifest: a backup stopped before its commit, or an
    /// interrupted deletion.
    Orphan,
}

impl LeftoverKind {
    pub fn describe(self) -> &'static str {
        match self {
            LeftoverKind::Unfinished => "unfinished write",
            LeftoverKind::Orphan => "data without a manifest",
        }
    }
}

/// A backup directory with data but neither manifest nor manifest digest.
struct Orphan<'a> {
    id: &'a str,
    /// The newest modification time of its objects (none: never removed).
    newest: Option<DateTime<Utc>>,
    keys: Vec<String>,
    size: u64,
}

/// The orphan backup directories among `objects` (listed under `prefix`). A manifest digest
/// without its manifest is a damaged backup, not an orphan: it stays for the operator
/// (docs/operations.md).
fn orphan_dirs<'a>(prefix: &str, objects: &'a [crate::storage::ObjectInfo]) -> Vec<Orphan<'a>> {
    let mut dirs: BTreeMap<&str, (bool, Orphan<'a>)> = BTreeMap::new();
    for o in objects {
        let Some((id, file)) = keys::backup_file(prefix, &o.key) else { continue };
        let (committed, e) =
            dirs.entry(id).or_insert_with(|| (false, Orphan { id, newest: None, keys: Vec::new(), size: 0 }));
        *committed |= file == keys::MANIFEST_FILE || keys::digest_in(file).is_some();
        e.newest = e.newest.max(o.modified);
        e.keys.push(o.key.clone());
        e.size += o.size;
    }
    dirs.into_values().filter(|(committed, _)| !committed).map(|(_, o)| o).collect()
}

/// An object whose size is not the recorded one, for messages.
pub fn size_problem(key: &str, size: u64, recorded: u64) -> String {
    let what = if size < recorded { "it is truncated" } else { "bytes were added to it" };
    format!("{key} has {size} bytes, the manifest records {recorded}: {what}")
}
