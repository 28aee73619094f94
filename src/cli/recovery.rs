//! `pgbackd restore-cluster` (point-in-time recovery into a data directory) and `restore-point`.

use super::args::{RecoveryDrillArgs, RestoreClusterArgs, RestorePointArgs};
use super::{EXIT_OK, failure, run_job};
use crate::jobs::JobContext;
use crate::jobs::kind::JobKind;
use crate::jobs::recovery::{ClusterRecovery, RecoveryTarget, Request};
use crate::jobs::run::{JobSpec, Produced, RestoreTo};
use crate::pg::basebackup::LsnText;
use crate::repo::Subject;
use crate::repo::manifest::Trigger;
use crate::wal::timeline::Lsn;
use anyhow::{Context, Result, bail};
use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use std::path::PathBuf;
use std::process::ExitCode;

/// A `--to-time`: RFC 3339, or `YYYY-MM-DD HH:MM[:SS[.frac]]` with an optional offset, else in
/// the machine's time zone.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%:z"] {
        if let Ok(d) = DateTime::parse_from_str(t, f) {
            return Ok(d.with_timezone(&Utc));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, f) {
            return match Local.from_local_datetime(&n) {
                chrono::LocalResult::Single(d) => Ok(d.with_timezone(&Utc)),
                _ => bail!(
                    "--to-time {text:?} is ambiguous or skipped in this machine's time zone (a DST change): add an offset, e.g. {t}+01:00"
                ),
            };
        }
    }
    bail!(
        "--to-time {text:?}: not a time; write 2026-12-03T14:02:00Z, or \"2026-12-03 14:02:00\" (this machine's time zone), or with an offset (+01:00)"
    )
}

fn target(args: &RestoreClusterArgs) -> Result<RecoveryTarget> {
    Ok(match (&args.to_time, &args.to_lsn, &args.to_restore_point) {
        (Some(t), _, _) => RecoveryTarget::Time(parse_time(t)?),
        (_, Some(l), _) => RecoveryTarget::Lsn(LsnText(
            Lsn::parse(l)
                .with_context(|| format!("--to-lsn {l:?}: not an LSN; write it as PostgreSQL does, e.g. 0/3000060"))?,
        )),
        (_, _, Some(n)) => RecoveryTarget::RestorePoint(n.clone()),
        _ => RecoveryTarget::Latest,
    })
}

fn tablespace_map(args: &RestoreClusterArgs) -> Result<Vec<(String, PathBuf)>> {
    args.tablespace_map
        .iter()
        .map(|m| {
            let (old, new) = m.split_once('=').filter(|(o, n)| !o.is_empty() && !n.is_empty()).with_context(|| {
                format!("--tablespace-map {m:?}: write NAME=DIRECTORY (its name, OID or old location)")
            })?;
            Ok((old.to_owned(), PathBuf::from(new)))
        })
        .collect()
}

pub async fn restore_cluster(ctx: &JobContext, args: &RestoreClusterArgs) -> Result<ExitCode> {
    let wal = crate::wal::settings(&ctx.config)?;
    let req = Request {
        pgdata: args.pgdata.clone(),
        target: target(args)?,
        timeline: args.timeline,
        backup_id: args.backup.clone(),
        start: args.start,
        port: args.port,
        tablespace_map: tablespace_map(args)?,
        no_archive: args.no_archive,
        identity: args.keys.identity.clone(),
        start_options: Vec::new(),
        trust_local_only: false,
        end_if_target_unreached: false,
    };
    let mut spec = JobSpec::new(JobKind::Restore, Subject::Cluster(wal.name.clone()), Trigger::Manual);
    spec.params.restore = Some(RestoreTo::Cluster(Box::new(req)));
    let run = run_job(ctx, spec).await;
    let Produced::ClusterRecovered(r) = &run.produced else { return Err(failure(run)) };
    if args.json {
        say!("{}", serde_json::to_string_pretty(r.as_ref())?);
    } else {
        print(r);
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn print(r: &ClusterRecovery) {
    say!(
        "restored base backup {} ({}) into {}, to recover to {} (timeline: {})",
        r.backup_id,
        crate::units::bytes(r.restored_bytes),
        r.pgdata.display(),
        r.target,
        r.timeline
    );
    say!("  WAL checked in the archive: {} to {}", r.wal_first, r.wal_last);
    for t in &r.tablespaces {
        say!("  tablespace {} (OID {}) in {}", t.name, t.oid, t.location);
    }
    match &r.reached {
        None => {
            say!(
                "  recovery settings are in {}/postgresql.auto.conf and recovery.signal is written;",
                r.pgdata.display()
            );
            say!("  start it (as the server's OS user): pg_ctl -D {} start", r.pgdata.display());
        }
        Some(x) => {
            say!(
                "recovered in {:.1} s: replayed to LSN {} on timeline {}, last commit {}",
                x.recovery_seconds,
                x.lsn,
                x.timeline,
                x.last_commit.map_or("none replayed".into(), |t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
            );
            say!(
                "the server runs on port {} (socket in {}), promoted; stop it with pg_ctl -D {} stop (as its OS user)",
                x.port,
                x.socket_dir,
                r.pgdata.display()
            );
        }
    }
}

pub async fn drill(ctx: &JobContext, args: &RecoveryDrillArgs) -> Result<ExitCode> {
    let wal = crate::wal::settings(&ctx.config)?;
    let spec = JobSpec::new(JobKind::RecoveryDrill, Subject::Cluster(wal.name.clone()), Trigger::Manual);
    let run = run_job(ctx, spec).await;
    let Produced::Drill(d) = &run.produced else { return Err(failure(run)) };
    if args.json {
        say!("{}", serde_json::to_string_pretty(d.as_ref())?);
    } else {
        let target = d.target.as_ref().map_or("?".into(), |t| t.to_string());
        say!("recovery drill of {} from base backup {} to {target}", d.cluster, d.backup_id.as_deref().unwrap_or("?"));
        if let (Some(f), Some(l)) = (&d.wal_first, &d.wal_last) {
            say!("  WAL {f} to {l}, replayed to {}", d.reached_lsn.as_deref().unwrap_or("?"));
        }
        say!(
            "  RTO {} (to a ready server){}",
            d.rto_seconds.map_or("?".into(), |s| format!("{s:.1} s")),
            d.rpo_seconds.map_or(String::new(), |s| format!(", RPO {s:.1} s (target to the last replayed commit)"))
        );
        for db in &d.databases {
            say!("  database {}: {} tables read, {} rows", db.name, db.tables.len(), db.rows);
        }
        say!("  pg_amcheck: {}; page checksums: {}", d.amcheck, d.checksums);
        for c in &d.checks {
            say!("  check {}: {}", c.name, if c.ok { "ok" } else { "FAILED" });
        }
        for w in &d.warnings {
            say!("  warning: {w}");
        }
        for s in &d.schema_differences {
            say!("  schema: {s}");
        }
        for f in &d.failures {
            say!("  FAILED: {f}");
        }
        say!(
            "{}",
            if d.failures.is_empty() {
                "drill passed; the scratch copy is removed"
            } else {
                "drill FAILED; the scratch copy is removed"
            }
        );
    }
    Ok(ExitCode::from(if d.failures.is_empty() { EXIT_OK } else { super::EXIT_JOB_FAILED }))
}

pub async fn restore_point(ctx: &JobContext, args: &RestorePointArgs) -> Result<ExitCode> {
    let wal = crate::wal::settings(&ctx.config)?;
    let mut spec = JobSpec::new(JobKind::RestorePoint, Subject::Cluster(wal.name.clone()), Trigger::Manual);
    spec.params.restore_point = Some(args.name.clone());
    let run = run_job(ctx, spec).await;
    let Produced::RestorePoint(p) = &run.produced else { return Err(failure(run)) };
    say!("{}", p.name);
    tell!(
        "restore point {} at LSN {} (timeline {}, segment {} archived); recover to it with restore-cluster --to-restore-point {}",
        p.name,
        p.lsn.0,
        p.timeline,
        p.segment,
        p.name
    );
    Ok(ExitCode::from(EXIT_OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_with_an_offset_or_in_the_local_zone() {
        let utc = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(parse_time("2026-12-03T14:02:00Z").unwrap(), utc("2026-12-03T14:02:00Z"));
        assert_eq!(parse_time("2026-12-03 15:02:00+01:00").unwrap(), utc("2026-12-03T14:02:00Z"));
        assert_eq!(parse_time("2026-12-03 14:02:00.25+00").unwrap(), utc("2026-12-03T14:02:00.25Z"));
        let local = parse_time("2026-12-03 14:02").unwrap();
        assert_eq!(local.with_timezone(&Local).format("%H:%M").to_string(), "14:02");
        assert!(parse_time("yesterday").unwrap_err().to_string().contains("--to-time"));
    }
}
