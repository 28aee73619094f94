//! Point-in-time recovery of a cluster (`pgbackd restore-cluster`): the plan (which base backup,
//! which WAL: `plan.rs`, refused before anything is written when the archive cannot reach the
//! target), then the base backup's tars extracted into an empty data directory (and each
//! tablespace where it was or where `--tablespace-map` says) with every frame and the whole
//! stream checked, the recovery settings written (`settings.rs`: restore_command =
//! `pgbackd archive-get %f %p`, the target, `promote`), and with `--start` the server run until
//! recovery reaches the target, reporting the LSN and commit time it reached. The scheduled
//! drill (`drill.rs`) runs the same recovery into a scratch copy and checks it.

pub mod drill;
pub mod plan;
pub mod settings;

use super::context::JobContext;
use super::refuse;
use crate::pg::Tools;
use crate::pg::server::{self, Server};
use crate::pipeline::{ObjectReader, RawCheck};
use crate::process::ChildSpec;
use crate::repo::manifest::BaseBackup;
use crate::repo::{Manifest, Subject};
use crate::wal::archive::Archived;
use crate::wal::names::{SegmentName, WalFile};
use crate::wal::restore_point::RestorePoint;
use crate::wal::timeline::{Chain, parse_history};
use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
pub use plan::RecoveryTarget;
use plan::{ArchiveView, Needs};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `restore-cluster` was asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub pgdata: PathBuf,
    pub target: RecoveryTarget,
    /// `recovery_target_timeline` (default: the newest timeline in the archive, `latest`).
    pub timeline: Option<u32>,
    /// Start from this base backup instead of the newest one before the target.
    pub backup_id: Option<String>,
    /// Run the server until recovery reaches the target.
    pub start: bool,
    /// The restored server's port (written to its `postgresql.auto.conf`).
    pub port: Option<u16>,
    /// Tablespaces put elsewhere: (name, OID or old location) -> new location.
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// `archive_mode = off` in the restored server (a side copy must not archive into the
    /// production archive).
    pub no_archive: bool,
    /// An identity file restore_command passes on to archive-get.
    pub identity: Option<PathBuf>,
    /// Settings of this start only (`-c name=value`), for a server pgbackd runs itself (the drill).
    pub start_options: Vec<(String, String)>,
    /// Replace `pg_hba.conf` with local trust only (a drill's copy, reached through its own socket).
    pub trust_local_only: bool,
    /// With `--start`: when the archive holds no commit after the target, finish at its end (the
    /// same state) instead of failing ([`TargetNotReached`]).
    pub end_if_target_unreached: bool,
}

/// What a recovery did.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRecovery {
    pub cluster: String,
    pub backup_id: String,
    pub system_identifier: u64,
    pub target: RecoveryTarget,
    /// `latest` or the timeline asked for.
    pub timeline: String,
    pub pgdata: PathBuf,
    /// The WAL the plan found: from the base backup's start to the segment holding the target.
    pub wal_first: String,
    pub wal_last: String,
    pub restored_bytes: u64,
    pub tablespaces: Vec<RestoredTablespace>,
    /// The settings written to postgresql.auto.conf.
    pub settings: Vec<(String, String)>,
    /// With `--start`: where recovery ended.
    pub reached: Option<Reached>,
    /// The archive held no commit after the target (its last one's time): recovered to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_before_target: Option<String>,
    pub restore_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoredTablespace {
    pub oid: u32,
    pub name: String,
    pub location: String,
}

/// Where a started recovery ended.
#[derive(Debug, Clone, Serialize)]
pub struct Reached {
    pub port: u16,
    pub socket_dir: String,
    pub lsn: String,
    /// The last replayed commit's time (none when no transaction was replayed).
    pub last_commit: Option<DateTime<Utc>>,
    pub timeline: u32,
    /// From starting the server to a promoted, ready server.
    pub recovery_seconds: f64,
}

/// The plan: the base backup and the WAL it needs.
pub struct Planned {
    pub manifest: Manifest,
    pub needs: Needs,
    pub point: Option<RestorePoint>,
}

/// Chooses the base backup and checks the WAL up to the target (refused, exit 2, naming why).
pub async fn plan(
    ctx: &JobContext,
    cluster: &str,
    target: &RecoveryTarget,
    timeline: Option<u32>,
    backup_id: Option<&str>,
) -> Result<Planned> {
    let repo = &ctx.repository;
    let subject = Subject::Cluster(cluster.to_owned());
    let listing = repo.listing(Some(&subject)).await?;
    let mut bases: Vec<Manifest> =
        listing.backups.into_iter().map(|l| l.manifest).filter(|m| m.base_backup().is_some()).collect();
    if let Some(id) = backup_id {
        bases.retain(|m| m.id == id);
        if bases.is_empty() {
            refuse!("no base backup {id} of cluster {cluster} (pgbackd list shows them)");
        }
    }
    if bases.is_empty() {
        refuse!("cluster {cluster} has no base backup in {}: take one (pgbackd base-backup) first", repo.describe());
    }
    // the archive of each system identifier, newest base backup's first
    bases.sort_by_key(|m| std::cmp::Reverse(m.finished_at));
    let mut systems: Vec<u64> = Vec::new();
    for m in &bases {
        let id = m.base_backup().expect("filtered").system_identifier;
        if !systems.contains(&id) {
            systems.push(id);
        }
    }
    let archives = list_archive(ctx, cluster).await?;
    let mut refusals = Vec::new();
    for sysid in systems {
        let mine: Vec<&Manifest> =
            bases.iter().filter(|m| m.base_backup().is_some_and(|b| b.system_identifier == sysid)).collect();
        let size = mine[0].base_backup().expect("filtered").wal_segment_size;
        let files: &[Archived] = archives.get(&sysid).map_or(&[], |f| f.as_slice());
        let archive = crate::wal::open(&ctx.config, repo, sysid)?;
        let newest = files.iter().map(|f| f.file.timeline()).max().unwrap_or(1);
        let tl = timeline.unwrap_or(newest);
        let history = if tl > 1 {
            match archive.get(WalFile::History(tl)).await? {
                Some(text) => parse_history(&String::from_utf8_lossy(&text))
                    .map_err(|e| anyhow!("{} in the archive: {e}", WalFile::History(tl)))?,
                None => {
                    refusals.push(format!(
                        "{} is not in the archive: a recovery cannot follow timeline {tl}",
                        WalFile::History(tl)
                    ));
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        let chain = Chain::new(tl, &history, size);
        let on_chain: BTreeSet<SegmentName> = files
            .iter()
            .filter_map(|f| match f.file {
                WalFile::Segment(s) if chain.timeline_at(s) == s.timeline => Some(s),
                _ => None,
            })
            .collect();
        let archived_at: BTreeMap<SegmentName, DateTime<Utc>> = files
            .iter()
            .filter_map(|f| match (f.file, f.modified) {
                (WalFile::Segment(s), Some(t)) => Some((s, t)),
                _ => None,
            })
            .collect();
        let view = ArchiveView {
            chain: &chain,
            on_chain: &on_chain,
            archived_at: &archived_at,
            timeline: tl,
            segment_size: size,
        };
        let point = match target {
            RecoveryTarget::RestorePoint(name) => crate::wal::restore_point::find(repo, cluster, sysid, name).await?,
            _ => None,
        };
        if let (RecoveryTarget::RestorePoint(name), None) = (target, &point) {
            tracing::warn!(
                restore_point = %name,
                "restore point not recorded by pgbackd restore-point: recovering from the newest base backup; \
                 recovery fails if the point is older than it"
            );
        }
        let chosen = match plan::choose_base(&mine, &view, target, point.as_ref()) {
            Ok(m) => m,
            Err(why) => {
                refusals.push(why);
                continue;
            }
        };
        match plan::wal_needs(chosen, &view, target, point.as_ref()) {
            Ok(needs) => return Ok(Planned { manifest: chosen.clone(), needs, point }),
            Err(why) => refusals.push(why),
        }
    }
    refuse!("cannot recover cluster {cluster} to {target}: {}", refusals.join("; "))
}

/// Every archived file of `cluster` on any target, by system identifier (a file on several
/// targets once: archive-get reads whichever holds an intact copy).
async fn list_archive(ctx: &JobContext, cluster: &str) -> Result<BTreeMap<u64, Vec<Archived>>> {
    let (mut out, mut errors, mut listed): (BTreeMap<u64, Vec<Archived>>, Vec<String>, bool) =
        (BTreeMap::new(), Vec::new(), false);
    for t in ctx.repository.targets() {
        match crate::wal::archive::by_system_identifier(cluster, t).await {
            Ok(a) => {
                listed = true;
                for (id, files) in a {
                    let have = out.entry(id).or_default();
                    for f in files {
                        if !have.iter().any(|h| h.file == f.file) {
                            have.push(f);
                        }
                    }
                }
            }
            Err(e) => errors.push(format!("{}: {e:#}", t.name())),
        }
    }
    if !listed {
        bail!("the WAL archive cannot be listed on any target: {}", errors.join("; "));
    }
    for e in &errors {
        tracing::warn!(error = %e, "a target's WAL archive cannot be listed; planning from the others");
    }
    Ok(out)
}

/// Whether `dir` is absent or an empty directory.
fn empty_or_absent(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(false),
        Err(e) => Err(anyhow!(e).context(format!("reading {}", dir.display()))),
    }
}

/// Whether `--tablespace-map OLD=...` names `t` (by its name, OID or old location).
fn named(t: &crate::repo::manifest::TablespaceArchive, old: &str) -> bool {
    t.name == old || t.oid.to_string() == old || t.location == old
}

/// Where each tablespace goes: mapped, else where it was.
fn tablespace_locations(b: &BaseBackup, map: &[(String, PathBuf)]) -> Result<Vec<RestoredTablespace>> {
    for (old, _) in map {
        let known = b.tablespaces.iter().any(|t| named(t, old));
        if !known {
            let have: Vec<String> =
                b.tablespaces.iter().map(|t| format!("{} ({}, {})", t.name, t.oid, t.location)).collect();
            refuse!(
                "--tablespace-map {old}=...: the base backup has no tablespace {old:?}; it has {}",
                if have.is_empty() { "none".to_owned() } else { have.join(", ") }
            );
        }
    }
    Ok(b.tablespaces
        .iter()
        .map(|t| {
            let mapped = map.iter().find(|(old, _)| named(t, old));
            RestoredTablespace {
                oid: t.oid,
                name: t.name.clone(),
                location: mapped.map_or(t.location.clone(), |(_, new)| new.to_string_lossy().into_owned()),
            }
        })
        .collect())
}

/// Runs a recovery of `cluster` as `req` says.
pub async fn run(ctx: &JobContext, cluster: &str, req: &Request) -> Result<ClusterRecovery> {
    let begun = Instant::now();
    let pgdata = std::path::absolute(&req.pgdata).with_context(|| format!("{}", req.pgdata.display()))?;
    if !empty_or_absent(&pgdata)? {
        refuse!(
            "{} is not empty: restore-cluster writes only into an empty or new directory (stop the server there and \
             move it aside, or choose another --pgdata)",
            pgdata.display()
        );
    }
    let config_path = match &ctx.config.path {
        Some(p) => std::fs::canonicalize(p).with_context(|| format!("locating {}", p.display()))?,
        None => {
            refuse!("restore-cluster needs a config file (-c FILE): the recovered server's restore_command names it")
        }
    };
    let planned = plan(ctx, cluster, &req.target, req.timeline, req.backup_id.as_deref()).await?;
    let m = &planned.manifest;
    let b = m.base_backup().expect("a base backup");
    let tablespaces = tablespace_locations(b, &req.tablespace_map)?;
    for t in &tablespaces {
        if !Path::new(&t.location).is_absolute() {
            refuse!("tablespace {} goes to {:?}: a tablespace location must be an absolute path", t.name, t.location);
        }
        if !empty_or_absent(Path::new(&t.location))? {
            refuse!(
                "tablespace {} would be restored into {}, which is not empty: move it aside, or put the tablespace \
                 elsewhere with --tablespace-map {}=NEW_DIRECTORY",
                t.name,
                t.location,
                t.name
            );
        }
    }
    tracing::info!(
        backup_id = %m.id, target = %req.target, wal_first = %planned.needs.first, wal_last = %planned.needs.last,
        "recovery planned"
    );
    let lock = ctx.read_lock(m, "cluster recovery").await?;
    let result = restore(ctx, m, b, &pgdata, &tablespaces, req, &config_path).await;
    let (restored_bytes, settings) = match result {
        Ok(r) => r,
        Err(e) => {
            lock.release().await;
            remove_restored(&pgdata, &tablespaces);
            return Err(e);
        }
    };
    let restore_seconds = begun.elapsed().as_secs_f64();
    let mut out = ClusterRecovery {
        cluster: cluster.to_owned(),
        backup_id: m.id.clone(),
        system_identifier: b.system_identifier,
        target: req.target.clone(),
        timeline: req.timeline.map_or("latest".into(), |t| t.to_string()),
        pgdata: pgdata.clone(),
        wal_first: planned.needs.first.to_string(),
        wal_last: planned.needs.last.to_string(),
        restored_bytes,
        tablespaces,
        settings,
        reached: None,
        ended_before_target: None,
        restore_seconds,
    };
    if req.start {
        let mut r = start_and_wait(ctx, b, &pgdata, &req.start_options).await;
        if req.end_if_target_unreached
            && let Some(t) = r.as_ref().err().and_then(|e| e.downcast_ref::<TargetNotReached>())
        {
            out.ended_before_target = Some(t.last_commit.clone().unwrap_or_else(|| "(none replayed)".into()));
            r = match drop_target(&pgdata) {
                Ok(()) => start_and_wait(ctx, b, &pgdata, &req.start_options).await,
                Err(e) => Err(e),
            };
        }
        lock.release().await;
        out.reached = Some(r?);
    } else {
        lock.release().await;
    }
    Ok(out)
}

/// Extracts the base backup and writes the recovery settings: the bytes restored and the settings.
async fn restore(
    ctx: &JobContext,
    m: &Manifest,
    b: &BaseBackup,
    pgdata: &Path,
    tablespaces: &[RestoredTablespace],
    req: &Request,
    config_path: &Path,
) -> Result<(u64, Vec<(String, String)>)> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(pgdata).with_context(|| format!("creating {}", pgdata.display()))?;
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (mode 0700, as PostgreSQL requires)", pgdata.display()))?;
    let store = ctx.repository.locate(m).await?;
    let decryption = ctx.repository.authenticate(m)?;
    let extract =
        |into: &Path| ChildSpec::new("tar").args(["--extract", "--file=-", "--no-same-owner", "--directory"]).arg(into);
    let reader = ctx.repository.reader(m, Some(store.clone())).await?;
    super::restore::stream_into(&extract(pgdata), &reader, RawCheck::Sha256, None, &ctx.cancel, &ctx.progress)
        .await
        .map_err(|e| anyhow!(e).context(format!("restoring base backup {} into {}", m.id, pgdata.display())))?;
    let mut bytes = m.data.raw_bytes;
    for (t, stored) in tablespaces.iter().zip(&b.tablespaces) {
        let into = Path::new(&t.location);
        std::fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
        std::fs::set_permissions(into, std::fs::Permissions::from_mode(0o700))?;
        let what = format!("{}, tablespace {} ({})", m.id, t.name, t.oid);
        let reader = ObjectReader::new(store.clone(), stored.data.clone(), &what, decryption.clone())?;
        super::restore::stream_into(&extract(into), &reader, RawCheck::Sha256, None, &ctx.cancel, &ctx.progress)
            .await
            .map_err(|e| anyhow!(e).context(format!("restoring tablespace {} into {}", t.name, t.location)))?;
        bytes += stored.data.raw_bytes;
    }
    if !tablespaces.is_empty() {
        // PostgreSQL makes pg_tblspc's links from it when recovery starts
        let map: Vec<(u32, String)> = tablespaces.iter().map(|t| (t.oid, t.location.clone())).collect();
        std::fs::write(pgdata.join("tablespace_map"), settings::tablespace_map(&map))
            .context("writing tablespace_map")?;
        for t in tablespaces {
            let _ = std::fs::remove_file(pgdata.join("pg_tblspc").join(t.oid.to_string()));
        }
    }
    std::fs::create_dir_all(pgdata.join("pg_wal/archive_status")).context("creating pg_wal")?;
    // the restore command: this pgbackd, this config
    let exe = std::env::current_exe().context("locating the pgbackd executable for restore_command")?;
    let mut command = format!(
        "{} -c {} archive-get %f %p",
        settings::sh_quote(&exe.to_string_lossy()),
        settings::sh_quote(&config_path.to_string_lossy())
    );
    if let Some(id) = &req.identity {
        let id = std::fs::canonicalize(id).with_context(|| format!("locating {}", id.display()))?;
        command.push_str(&format!(" --identity {}", settings::sh_quote(&id.to_string_lossy())));
    }
    let mut values = vec![("restore_command".to_owned(), command)];
    values.extend(settings::target_settings(&req.target, req.timeline));
    if let Some(p) = req.port {
        values.push(("port".into(), p.to_string()));
    }
    if req.no_archive {
        values.push(("archive_mode".into(), "off".into()));
    }
    let auto = pgdata.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&auto).unwrap_or_default();
    let header = format!(
        "pgbackd restore-cluster {}: base backup {} to {}",
        ctx.now().format("%Y-%m-%d %H:%M:%S UTC"),
        m.id,
        req.target
    );
    std::fs::write(&auto, settings::rewrite_auto_conf(&existing, &header, &values))
        .with_context(|| format!("writing {}", auto.display()))?;
    std::fs::write(pgdata.join("recovery.signal"), "").context("writing recovery.signal")?;
    if req.trust_local_only {
        std::fs::write(pgdata.join("pg_hba.conf"), drill::DRILL_HBA).context("writing the drill's pg_hba.conf")?;
        if !pgdata.join("pg_ident.conf").exists() {
            std::fs::write(pgdata.join("pg_ident.conf"), "").context("writing pg_ident.conf")?;
        }
    }
    // a cluster whose configuration lives elsewhere (Debian: /etc/postgresql/<major>/<name>/)
    // has none in its data directory: the server needs one to start
    if !pgdata.join("postgresql.conf").exists() {
        std::fs::write(
            pgdata.join("postgresql.conf"),
            "# written by pgbackd restore-cluster: the base backup has no postgresql.conf (the cluster kept its\n\
             # configuration outside the data directory, e.g. /etc/postgresql/<major>/<name>/): put its settings here\n",
        )
        .context("writing postgresql.conf")?;
        tracing::warn!(
            "the base backup has no postgresql.conf (its configuration was outside the data directory): an empty one \
             was written; copy the cluster's settings (or start it with the distribution's tools, e.g. pg_ctlcluster)"
        );
    }
    let _ = std::fs::remove_file(pgdata.join("standby.signal"));
    server::give_to_postgres(pgdata).await?;
    for t in tablespaces {
        server::give_to_postgres(Path::new(&t.location)).await?;
    }
    Ok((bytes, values))
}

/// Removes what a failed recovery wrote (the directories were empty or absent before).
fn remove_restored(pgdata: &Path, tablespaces: &[RestoredTablespace]) {
    for dir in std::iter::once(pgdata.to_owned()).chain(tablespaces.iter().map(|t| PathBuf::from(&t.location))) {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                let _ =
                    if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
    }
}

/// Recovery replayed the whole archived WAL without passing the target (PostgreSQL stops at the
/// first commit after a target: none is archived).
#[derive(Debug, thiserror::Error)]
#[error(
    "recovery replayed all the archived WAL without passing the target: the last archived commit is at {}, and no \
     later one is archived, so the state at the target cannot be told from the end of the archive. Retry once a later \
     commit is archived (after the server's next transaction: `select pg_switch_wal()`, or `pgbackd wal-flush` when \
     streaming), or recover to --latest (the state as of that commit). {} is kept: with the recovery_target_* lines removed from \
     its postgresql.auto.conf, `pg_ctl start` finishes the recovery at the end of the archive",
    last_commit.as_deref().unwrap_or("(none replayed)"),
    data.display()
)]
pub struct TargetNotReached {
    pub last_commit: Option<String>,
    pub data: PathBuf,
}

/// Removes the recovery target from a restored data directory's settings (the recovery then
/// ends at the end of the archived WAL).
pub fn drop_target(pgdata: &Path) -> Result<()> {
    let auto = pgdata.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto).with_context(|| format!("reading {}", auto.display()))?;
    std::fs::write(&auto, settings::without_target(&text)).with_context(|| format!("writing {}", auto.display()))
}

/// Starts the restored server and waits until recovery has reached its target and the server is
/// promoted; a server that stops (recovery ended before the target, a damaged segment) fails
/// with its log's end; a cancelled wait stops the server (the data directory stays: `pg_ctl
/// start` resumes the recovery).
pub async fn start_and_wait(
    ctx: &JobContext,
    b: &BaseBackup,
    pgdata: &Path,
    options: &[(String, String)],
) -> Result<Reached> {
    let major = b.server_version_num / 10000;
    let bin = server::bin_dir_for(major, &Tools::locate(ctx.config.pg_bin_dir.as_deref()));
    if !bin.join("postgres").exists() {
        bail!(
            "no PostgreSQL {major} server binaries in {}: install them (apt install postgresql-{major}); the data \
             directory is restored in {} and starts with them",
            bin.display(),
            pgdata.display()
        );
    }
    let log_dir = pgdata.join("log");
    std::fs::create_dir_all(&log_dir).context("creating the server's log directory")?;
    server::give_to_postgres(&log_dir).await?;
    let log = log_dir.join("pgbackd-recovery.log");
    let server = Server::new(&bin, pgdata, &log, options.to_vec()).await?;
    let started = Instant::now();
    server.start().await?;
    let mut last_report = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = ctx.cancel.cancelled() => {
                let _ = server.stop().await;
                bail!("cancelled: the server in {} was stopped during recovery; `pg_ctl -D {} start` resumes it", pgdata.display(), pgdata.display());
            }
        }
        match server.query("postgres", "select pg_is_in_recovery()").await {
            Ok(r) if r == "f" => break,
            Ok(_) if last_report.elapsed() > Duration::from_secs(10) => {
                last_report = Instant::now();
                if let Ok(at) = server.query("postgres", "select pg_last_wal_replay_lsn()::text").await {
                    tracing::info!(replayed = %at, "recovery in progress");
                }
            }
            Ok(_) => {}
            Err(_) if !server.running().await => {
                let tail = server.log_tail(20);
                if tail.contains("recovery ended before configured recovery target was reached") {
                    let last_commit = tail.lines().rev().find_map(|l| {
                        l.split_once("last completed transaction was at log time ").map(|(_, t)| t.trim().to_owned())
                    });
                    return Err(TargetNotReached { last_commit, data: pgdata.to_owned() }.into());
                }
                server.ensure_running("before recovery reached its target").await?
            }
            Err(_) => {}
        }
    }
    let recovery_seconds = started.elapsed().as_secs_f64();
    let row = server
        .query(
            "postgres",
            "select pg_last_wal_replay_lsn()::text, coalesce(to_char(pg_last_xact_replay_timestamp() at time zone 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), ''), ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
        )
        .await?;
    let f: Vec<&str> = row.split('|').collect();
    anyhow::ensure!(f.len() == 3, "unexpected answer from the recovered server: {row:?}");
    Ok(Reached {
        port: server.port,
        socket_dir: server.socket_dir.clone(),
        lsn: f[0].to_owned(),
        last_commit: f[1].parse().ok(),
        timeline: f[2].parse().unwrap_or(0),
        recovery_seconds,
    })
}
