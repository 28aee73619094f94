//! Named restore points (`pgbackd restore-point NAME`): `pg_create_restore_point` on the server,
//! the WAL holding it switched out and waited for in the archive, and the point's LSN and
//! timeline recorded in the repository, so `restore-cluster --to-restore-point NAME` can start
//! from the newest base backup that ends before it and check the WAL up to it.

use super::names::SegmentName;
use super::timeline::Lsn;
use crate::config::Config;
use crate::pg::basebackup::LsnText;
use crate::repo::{Repository, keys};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// One recorded restore point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestorePoint {
    pub name: String,
    pub system_identifier: u64,
    pub lsn: LsnText,
    pub timeline: u32,
    pub created_at: DateTime<Utc>,
    /// The WAL segment holding it.
    pub segment: String,
}

/// A name that cannot be used (malformed, or recorded already): refused before anything is
/// done on the server (the job path makes it a usage error, exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NameRefused(pub String);

/// Why a name cannot be a restore point's (PostgreSQL allows 63 bytes; the name is also a key).
pub fn check_name(name: &str) -> Result<(), NameRefused> {
    if name.is_empty() || name.len() > 63 {
        return Err(NameRefused(format!("restore point name {name:?}: 1 to 63 characters (PostgreSQL's limit)")));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) || name.starts_with('.') {
        return Err(NameRefused(format!(
            "restore point name {name:?}: use letters, digits, '-', '_' and '.' (it names an object in the repository)"
        )));
    }
    Ok(())
}

/// Creates restore point `name` on the `wal.server`, switches to a new WAL segment so the one
/// holding it is archived now, waits until every required target has it, and records it.
pub async fn create(
    config: &Config,
    repository: &Repository,
    name: &str,
    now: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Result<RestorePoint> {
    check_name(name)?;
    let wal = super::settings(config)?;
    let client = crate::pg::connect(&wal.server).await?;
    let sysid: i64 = client
        .query_one("select system_identifier::bigint from pg_control_system()", &[])
        .await
        .context("reading the server's system identifier")?
        .get(0);
    let system_identifier = sysid as u64;
    if find(repository, &wal.name, system_identifier, name).await?.is_some() {
        return Err(NameRefused(format!(
            "restore point {name:?} is already recorded for cluster {}: choose another name (a recovery to a name \
             stops at its first occurrence in the WAL, so names are kept unique)",
            wal.name
        ))
        .into());
    }
    let row = client
        .query_one(
            "with p as (select pg_create_restore_point($1) as lsn) \
             select p.lsn::text, pg_walfile_name(p.lsn) from p",
            &[&name],
        )
        .await
        .with_context(|| format!("creating restore point {name:?} (it needs a superuser or pg_checkpoint-like grant of pg_create_restore_point)"))?;
    let (lsn_text, file): (String, String) = (row.get(0), row.get(1));
    let lsn = Lsn::parse(&lsn_text).with_context(|| format!("the server returned {lsn_text:?} as the point's LSN"))?;
    let segment =
        SegmentName::parse(&file).with_context(|| format!("the server named {file:?} as the point's segment"))?;
    client.execute("select pg_switch_wal()", &[]).await.context("switching to a new WAL segment (pg_switch_wal)")?;
    match super::wait_archived(config, repository, system_identifier, segment, cancel).await {
        Ok(()) => {}
        Err(super::NotArchived::Cancelled) => bail!("cancelled while waiting for {segment} to be archived"),
        Err(super::NotArchived::Error(e)) => return Err(e),
        Err(super::NotArchived::TimedOut { missing }) => bail!(
            "restore point {name:?} was created at {lsn}, but its segment {segment} is not archived on {missing} after {} \
             (wal.archive_timeout), so it is not recorded; {}",
            crate::units::duration(wal.archive_timeout),
            super::archiving_hint(wal)
        ),
    }
    let point = RestorePoint {
        name: name.to_owned(),
        system_identifier,
        lsn: LsnText(lsn),
        timeline: segment.timeline,
        created_at: now,
        segment: segment.to_string(),
    };
    record(repository, &wal.name, &point).await?;
    Ok(point)
}

/// Records `point` on every target (an optional one may fail).
pub async fn record(repository: &Repository, cluster: &str, point: &RestorePoint) -> Result<()> {
    let key = keys::restore_point(cluster, point.system_identifier, &point.name);
    let body = Bytes::from(serde_json::to_vec_pretty(point)?);
    for t in repository.targets() {
        match t.store.put(&key, body.clone()).await {
            Ok(()) => {}
            Err(e) if !t.required => {
                tracing::warn!(target_name = t.name(), error = %format!("{e:#}"), "restore point not recorded on an optional target")
            }
            Err(e) => {
                return Err(e.context(format!("recording restore point {} on {}", point.name, t.store.describe())));
            }
        }
    }
    Ok(())
}

/// The recorded restore point `name` of an archive, from the first target that has it.
pub async fn find(
    repository: &Repository,
    cluster: &str,
    system_identifier: u64,
    name: &str,
) -> Result<Option<RestorePoint>> {
    let key = keys::restore_point(cluster, system_identifier, name);
    for t in repository.targets() {
        if let Some(body) = t.store.get(&key).await? {
            let p: RestorePoint = serde_json::from_slice(&body)
                .with_context(|| format!("{key} on {} is not a restore point record", t.store.describe()))?;
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Every recorded restore point of an archive, oldest first.
pub async fn list(repository: &Repository, cluster: &str, system_identifier: u64) -> Result<Vec<RestorePoint>> {
    let prefix = keys::restore_points(cluster, system_identifier);
    let Some(t) = repository.targets().first() else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for o in t.store.list(&prefix).await? {
        if let Some(body) = t.store.get(&o.key).await?
            && let Ok(p) = serde_json::from_slice::<RestorePoint>(&body)
        {
            out.push(p);
        }
    }
    out.sort_by_key(|p| p.created_at);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_created() {
        assert!(check_name("before-deploy-2026.12.03_1").is_ok());
        for bad in ["", "../x", ".hidden", "a b", "x/y", &"n".repeat(64)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("restore point name"), "{bad:?}: {e}");
        }
    }
}
