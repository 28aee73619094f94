//! The recovery drill (job `recovery_drill`): a point-in-time recovery on schedule, into a
//! scratch data directory under `$TMPDIR` (`pgbackd-drill-<pid>-*`) on a server pgbackd starts
//! itself (unix socket in the scratch directory only, nothing listening on TCP, `shared_buffers`
//! sized for a drill, archiving off), then checked: the target reached, every table of every
//! database read in full with its row count, `pg_amcheck` where amcheck can be installed, the
//! schema against the live server's (drift is a warning unless the target is the newest point),
//! the user's `test_restore.checks`, and page checksums (`pg_checksums --check` on the stopped
//! copy) when the cluster has them. The RTO (to a ready server) and RPO (target against the last
//! replayed commit) are measured; the scratch copy is always removed, and one left by a crashed
//! pgbackd is swept by the next drill.

use super::Request;
use super::plan::RecoveryTarget;
use crate::config::DrillPick;
use crate::jobs::JobContext;
use crate::jobs::restore::schema;
use crate::jobs::test_restore::CheckOutcome;
use crate::pg::Tools;
use crate::pg::server::{self, Server};
use crate::process::{ChildSpec, run_capture};
use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

const SCRATCH_PREFIX: &str = "pgbackd-drill-";

/// One database of the recovered copy.
#[derive(Debug, Clone, Serialize)]
pub struct DrillDatabase {
    pub name: String,
    /// Every table read in full (a sequential scan), with its rows.
    pub tables: Vec<(String, u64)>,
    pub rows: u64,
}

/// What a drill found.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub cluster: String,
    pub backup_id: Option<String>,
    pub target: Option<RecoveryTarget>,
    pub wal_first: Option<String>,
    pub wal_last: Option<String>,
    pub reached_lsn: Option<String>,
    pub last_commit: Option<DateTime<Utc>>,
    /// Seconds from the start of the drill to a ready, promoted server.
    pub rto_seconds: Option<f64>,
    /// Seconds between the target and the last replayed commit (time targets).
    pub rpo_seconds: Option<f64>,
    pub databases: Vec<DrillDatabase>,
    /// `pg_amcheck`: `passed`, `skipped: why`, or its findings.
    pub amcheck: String,
    /// `pg_checksums --check`: `passed`, `off` (the cluster has no data checksums), or findings.
    pub checksums: String,
    /// Schema differences from the live server (drift when the target is not the newest point).
    pub schema_differences: Vec<String>,
    pub checks: Vec<CheckOutcome>,
    /// What failed (the drill fails when any).
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
    /// Scratch copies of crashed drills removed first.
    pub swept: Vec<String>,
}

impl DrillReport {
    fn new(cluster: &str) -> DrillReport {
        DrillReport {
            cluster: cluster.to_owned(),
            backup_id: None,
            target: None,
            wal_first: None,
            wal_last: None,
            reached_lsn: None,
            last_commit: None,
            rto_seconds: None,
            rpo_seconds: None,
            databases: Vec::new(),
            amcheck: "not run".into(),
            checksums: "not run".into(),
            schema_differences: Vec::new(),
            checks: Vec::new(),
            failures: Vec::new(),
            warnings: Vec::new(),
            swept: Vec::new(),
        }
    }
}

/// Removes the scratch copies of drills whose pgbackd is gone (their server stopped first).
pub async fn sweep(tmp: &Path, tools: &Tools) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(tmp) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            name.strip_prefix(SCRATCH_PREFIX).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = pid as u32 == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if alive {
            continue;
        }
        stop_server_in(&e.path().join("data"), tools).await;
        if std::fs::remove_dir_all(e.path()).is_ok() {
            tracing::info!(path = %e.path().display(), "removed the scratch copy of an interrupted recovery drill");
            out.push(e.path().display().to_string());
        }
    }
    out
}

/// Stops a server left running in a scratch copy.
async fn stop_server_in(data: &Path, tools: &Tools) {
    if data.join("postmaster.pid").exists() {
        let version = std::fs::read_to_string(data.join("PG_VERSION")).ok().and_then(|v| v.trim().parse().ok());
        server::kill_at(&server::bin_dir_for(version.unwrap_or(15), tools), data).await;
    }
}

/// The moment to recover to: the end of the WAL, or a random moment of the last `d` after the
/// oldest base backup's end.
fn pick_target(pick: DrillPick, now: DateTime<Utc>, oldest_end: Option<DateTime<Utc>>) -> RecoveryTarget {
    match (pick, oldest_end) {
        (DrillPick::Latest, _) | (_, None) => RecoveryTarget::Latest,
        (DrillPick::RandomWithin(d), Some(oldest)) => {
            let from = (now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(1))).max(oldest);
            let span = (now - from).num_milliseconds().max(0);
            if span == 0 {
                return RecoveryTarget::Latest;
            }
            let at = from + chrono::Duration::milliseconds(rand::random_range(0..span));
            RecoveryTarget::Time(at)
        }
    }
}

/// Runs a drill of `cluster`.
pub async fn run(ctx: &JobContext, cluster: &str) -> Result<DrillReport> {
    let begun = Instant::now();
    let tools = Tools::locate(ctx.config.pg_bin_dir.as_deref());
    let tmp = std::env::temp_dir();
    let mut report = DrillReport::new(cluster);
    report.swept = sweep(&tmp, &tools).await;
    let settings_ = &ctx.config.recovery_drill;
    // the target: for a random moment, first where the archive reaches
    let bases = ctx.repository.list(Some(&crate::repo::Subject::Cluster(cluster.to_owned()))).await?;
    let oldest_end = bases.iter().filter(|m| m.base_backup().is_some()).map(|m| m.finished_at).min();
    let mut target = pick_target(settings_.pick, ctx.now(), oldest_end);
    if let RecoveryTarget::Time(t) = target {
        // a moment later than the archive reaches is not a drill's failure: the newest point then
        match super::plan(ctx, cluster, &target, None, None).await {
            Ok(_) => {}
            Err(e) if crate::jobs::Refused::in_chain(&e) && format!("{e:#}").contains("does not reach") => {
                report.warnings.push(format!(
                    "{} is past the archive's end: recovering to its end instead",
                    RecoveryTarget::Time(t)
                ));
                target = RecoveryTarget::Latest;
            }
            Err(e) => return Err(e),
        }
    }
    report.target = Some(target.clone());
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
        .tempdir_in(&tmp)
        .context("creating the drill's scratch directory (in $TMPDIR)")?;
    server::give_to_postgres(scratch.path()).await?;
    let result = drill(ctx, cluster, &target, scratch.path(), &tools, &mut report, begun).await;
    if let Err(e) = result {
        report.failures.push(format!("{e:#}"));
    }
    // a server still running in it is stopped before it is removed
    stop_server_in(&scratch.path().join("data"), &tools).await;
    drop(scratch);
    if let (Some(limit), Some(rto)) = (settings_.max_rto, report.rto_seconds)
        && rto > limit.as_secs_f64()
    {
        report.failures.push(format!(
            "the RTO was {:.1} s, over recovery_drill.max_rto ({}): recovery from the repository takes longer than \
             planned; take base backups more often (less WAL to replay) or raise the limit",
            rto,
            crate::units::duration(limit)
        ));
    }
    Ok(report)
}

async fn drill(
    ctx: &JobContext,
    cluster: &str,
    target: &RecoveryTarget,
    scratch: &Path,
    tools: &Tools,
    report: &mut DrillReport,
    begun: Instant,
) -> Result<()> {
    let s = &ctx.config.recovery_drill;
    let socket = scratch.to_string_lossy().into_owned();
    let (hba, ident) = (scratch.join("data/pg_hba.conf"), scratch.join("data/pg_ident.conf"));
    let (hba, ident) = (hba.to_string_lossy().into_owned(), ident.to_string_lossy().into_owned());
    let options: Vec<(String, String)> = [
        ("listen_addresses", ""),
        ("unix_socket_directories", socket.as_str()),
        ("shared_buffers", s.shared_buffers.as_str()),
        ("work_mem", "4MB"),
        ("maintenance_work_mem", "64MB"),
        ("hot_standby", "on"),
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("log_destination", "stderr"),
        ("logging_collector", "off"),
        // the drill reads the server's messages
        ("lc_messages", "C"),
        ("port", "5432"),
        // the copy's own, whatever the cluster's configuration names (Debian's are in /etc)
        ("hba_file", hba.as_str()),
        ("ident_file", ident.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let req = Request {
        pgdata: scratch.join("data"),
        target: target.clone(),
        timeline: None,
        backup_id: None,
        start: true,
        port: None,
        tablespace_map: Vec::new(),
        no_archive: true,
        identity: None,
        start_options: options.clone(),
        // only pgbackd connects: through the socket in the scratch directory
        trust_local_only: true,
        end_if_target_unreached: true,
    };
    let recovered = super::run(ctx, cluster, &req).await?;
    if let Some(last) = &recovered.ended_before_target {
        report.warnings.push(format!(
            "no commit after {target} is archived (the last at {last}): recovered to the end of the archive, the same state"
        ));
    }
    report.backup_id = Some(recovered.backup_id.clone());
    report.wal_first = Some(recovered.wal_first.clone());
    report.wal_last = Some(recovered.wal_last.clone());
    let reached = recovered.reached.as_ref().context("the drill's server did not report where it stopped")?;
    report.reached_lsn = Some(reached.lsn.clone());
    report.last_commit = reached.last_commit;
    report.rto_seconds = Some(begun.elapsed().as_secs_f64());
    if let (RecoveryTarget::Time(t), Some(c)) = (target, reached.last_commit) {
        report.rpo_seconds = Some((*t - c).num_milliseconds() as f64 / 1000.0);
        if c > *t {
            report.failures.push(format!("recovery went past the target: last commit {c}, target {t}"));
        }
    }
    let m = ctx.repository.find(&recovered.backup_id).await?;
    let b = m.base_backup().context("the drill's backup is not a base backup")?;
    // the WAL the plan found: recovery must have replayed into its last segment
    let size = b.wal_segment_size;
    if let (Some(last), Some(lsn)) =
        (crate::wal::names::SegmentName::parse(&recovered.wal_last), crate::wal::timeline::Lsn::parse(&reached.lsn))
        && matches!(target, RecoveryTarget::Latest)
        && lsn.0 < last.number(size) * size
    {
        report.failures.push(format!(
            "recovery stopped at {} before the archive's last segment {last}: a segment could not be used",
            reached.lsn
        ));
    }
    let data = scratch.join("data");
    let bin = server::bin_dir_for(b.server_version_num / 10000, tools);
    let srv = Server::new(&bin, &data, &data.join("log/pgbackd-recovery.log"), options).await?;
    let databases: Vec<String> = srv
        .query("postgres", "select datname from pg_database where datallowconn and not datistemplate order by 1")
        .await?
        .lines()
        .map(str::to_owned)
        .collect();
    for db in &databases {
        report.databases.push(read_all(&srv, db).await?);
    }
    // the schema against the live server's
    if let Some(wal) = &ctx.config.wal {
        for db in &databases {
            let live = wal.server.with_dbname(db);
            let theirs = match schema::dump_schema(tools, &live).await {
                Ok(s) => s,
                Err(e) => {
                    report.warnings.push(format!("schema of {db} on the live server not compared: {e:#}"));
                    continue;
                }
            };
            let ours = schema::dump_schema(tools, &srv.connection(db)).await?;
            let diff = schema::compare_as(
                &theirs,
                &ours,
                10,
                ("on the live server, not in the drill", "in the drill, not on the live server"),
            );
            let diff: Vec<String> = diff.into_iter().map(|d| format!("{db}: {d}")).collect();
            if matches!(target, RecoveryTarget::Latest) && !diff.is_empty() {
                report.failures.push(format!(
                    "the schema recovered to the newest point differs from the live server's: {}",
                    diff.join("; ")
                ));
            } else if !diff.is_empty() {
                report
                    .warnings
                    .push(format!("schema drift since the target (production moved on): {} differences", diff.len()));
            }
            report.schema_differences.extend(diff);
        }
    }
    // amcheck (after the schema comparison: it installs the extension)
    report.amcheck = if !s.amcheck {
        "skipped: recovery_drill.amcheck is off".into()
    } else if !bin.join("pg_amcheck").exists() {
        format!("skipped: no pg_amcheck in {} (PostgreSQL 14 and later have it)", bin.display())
    } else {
        let mut spec = ChildSpec::new(bin.join("pg_amcheck"))
            .args(["--all", "--install-missing", "--no-strict-names", "-h"])
            .arg(&srv.socket_dir)
            .args(["-p", &srv.port.to_string(), "-U", &srv.user]);
        if s.heapallindexed {
            spec = spec.arg("--heapallindexed");
        }
        match run_capture(&spec, 1 << 20).await {
            Ok(_) => "passed".into(),
            Err(e) => {
                let text = format!("{e}");
                if text.contains("amcheck")
                    && (text.contains("not available") || text.contains("could not open extension"))
                {
                    format!(
                        "skipped: the amcheck extension cannot be installed ({})",
                        text.lines().last().unwrap_or("")
                    )
                } else {
                    report.failures.push(format!("pg_amcheck found corruption: {text}"));
                    "failed".into()
                }
            }
        }
    };
    // the user's checks, in each configured database the copy has
    let checks = &ctx.config.test_restore.checks;
    if !checks.is_empty() {
        let db = ctx
            .config
            .databases
            .iter()
            .map(|d| d.connection.dbname.clone())
            .find(|n| databases.contains(n))
            .unwrap_or_else(|| "postgres".into());
        let outcomes = crate::jobs::test_restore::run_checks(&srv.connection(&db), checks).await?;
        for c in outcomes.iter().filter(|c| !c.ok) {
            report.failures.push(format!(
                "check {} expected {} and got {}",
                c.name,
                c.expect,
                c.got.as_deref().or(c.error.as_deref()).unwrap_or("nothing")
            ));
        }
        report.checks = outcomes;
    }
    // page checksums, on the cleanly stopped copy
    let checksums_on = srv.query("postgres", "show data_checksums").await? == "on";
    srv.stop().await?;
    report.checksums = if !checksums_on {
        "off: the cluster was initialised without data checksums".into()
    } else {
        let spec = srv.command("pg_checksums").arg("--check").arg("-D").arg(&data);
        match run_capture(&spec, 1 << 20).await {
            Ok(_) => "passed".into(),
            Err(e) => {
                report.failures.push(format!("pg_checksums found damaged pages: {e}"));
                "failed".into()
            }
        }
    };
    Ok(())
}

/// Every table of `db` read in full (sequential scans), with its row count.
async fn read_all(srv: &Server, db: &str) -> Result<DrillDatabase> {
    let names = srv
        .query(
            db,
            "select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind in ('r', 'm') and n.nspname not in ('pg_catalog', 'information_schema') \
             and n.nspname not like 'pg_toast%' and n.nspname not like 'pg_temp%' order by 1",
        )
        .await?;
    let tables: Vec<&str> = names.lines().filter(|l| !l.is_empty()).collect();
    let mut out = DrillDatabase { name: db.to_owned(), tables: Vec::new(), rows: 0 };
    for chunk in tables.chunks(200) {
        let sql = format!(
            "set enable_indexscan = off; set enable_indexonlyscan = off; set enable_bitmapscan = off; {}",
            chunk
                .iter()
                .map(|t| format!("select '{}', count(*) from only {t};", t.replace('\'', "''")))
                .collect::<String>()
        );
        let rows = srv.query(db, &sql).await.map_err(|e| anyhow!(e).context(format!("reading every table of {db}")))?;
        for line in rows.lines() {
            if let Some((name, n)) = line.rsplit_once('|')
                && let Ok(n) = n.parse::<u64>()
            {
                out.rows += n;
                out.tables.push((name.to_owned(), n));
            }
        }
    }
    Ok(out)
}

/// The `pg_hba.conf` of a drill's copy: only local connections, trusted (the socket is in a
/// directory only the server's user and root can reach).
pub const DRILL_HBA: &str =
    "# pgbackd recovery drill: unix socket in the scratch directory only\nlocal all all trust\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_target_falls_within_the_window_after_the_oldest_base_backup() {
        let now: DateTime<Utc> = "2026-12-03T12:00:00Z".parse().unwrap();
        let day = std::time::Duration::from_secs(86400);
        assert_eq!(pick_target(DrillPick::Latest, now, Some(now)), RecoveryTarget::Latest);
        assert_eq!(pick_target(DrillPick::RandomWithin(day), now, None), RecoveryTarget::Latest);
        let oldest: DateTime<Utc> = "2026-12-03T06:00:00Z".parse().unwrap();
        for _ in 0..200 {
            match pick_target(DrillPick::RandomWithin(day), now, Some(oldest)) {
                RecoveryTarget::Time(t) => assert!(t >= oldest && t < now, "{t}"),
                other => panic!("{other:?}"),
            }
        }
        // nothing to choose from: the newest point
        assert_eq!(pick_target(DrillPick::RandomWithin(day), now, Some(now)), RecoveryTarget::Latest);
    }
}
