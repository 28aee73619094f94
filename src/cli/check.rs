//! `check-config [--connect]`: the config is valid (every error at once, exit 78, comes from
//! loading it); with `--connect`, reach every database and storage target, check every SQLite
//! file (a SQLite database, room for its snapshot), and say what works.

use super::args::CheckConfigArgs;
use super::{EXIT_JOB_FAILED, EXIT_OK};
use crate::config::Config;
use crate::jobs::JobContext;
use crate::pg::{self, Tools};
use crate::repo::Repository;
use crate::storage;
use anyhow::{Context, Result};
use std::process::ExitCode;

pub async fn run(ctx: &JobContext, args: &CheckConfigArgs) -> Result<ExitCode> {
    let config = &ctx.config;
    say!("{}: configuration is valid", config.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
    for db in &config.databases {
        say!("  database {:<20} {}", db.name, db.connection);
    }
    for f in &config.sqlite {
        say!("  sqlite   {:<20} {}", f.name, f.path.display());
    }
    for s in &config.schedules {
        say!("  schedule {:<20} {:?} ({})", s.kind.name(), s.schedule.expr(), s.schedule.timezone());
    }
    for t in ctx.repository.targets() {
        let kind = if t.required { "required" } else { "optional" };
        say!("  target   {:<20} {} ({kind})", t.name(), t.store.describe());
    }
    for w in &config.warnings {
        say!("  warning  {w}");
    }
    if !args.connect {
        return Ok(ExitCode::from(EXIT_OK));
    }
    Ok(ExitCode::from(if connect(config, &ctx.repository).await { EXIT_OK } else { EXIT_JOB_FAILED }))
}

/// Whether a SQLite file can be backed up: it is a SQLite database and `$TMPDIR` has room for
/// its snapshot.
fn sqlite_ready(f: &crate::config::SqliteConfig) -> Result<String> {
    let mode = crate::sqlite::check_source(&f.path).with_context(|| format!("sqlite[{}].path", f.name))?;
    let size = std::fs::metadata(&f.path)?.len();
    let tmp = std::env::temp_dir();
    let room = match crate::storage::local::free_space(&tmp) {
        Some((free, _)) if free < size => anyhow::bail!(
            "{} has {} free, and the snapshot of {} needs {}: set TMPDIR to a directory with room",
            tmp.display(),
            crate::units::bytes(free),
            f.path.display(),
            crate::units::bytes(size)
        ),
        Some((free, _)) => format!("{} free in {}", crate::units::bytes(free), tmp.display()),
        None => format!("free space in {} unknown", tmp.display()),
    };
    let mode = if mode == "wal" { "WAL mode" } else { "rollback-journal mode" };
    Ok(format!("{} ({mode}, {}); {room}", f.path.display(), crate::units::bytes(size)))
}

/// Probes everything; prints one line per check; true if all passed.
async fn connect(config: &Config, repo: &Repository) -> bool {
    let mut all_ok = true;
    let tools = Tools::locate(config.pg_bin_dir.as_deref());
    let dump = tools.version("pg_dump").await;
    match &dump {
        Ok((_, v)) => say!("ok      pg_dump {v} ({})", tools.path("pg_dump").display()),
        // a config of SQLite files alone does not need pg_dump
        Err(e) if config.databases.is_empty() && config.wal.is_none() => say!("skipped pg_dump: {e:#}"),
        Err(e) => {
            all_ok = false;
            say!("FAILED  pg_dump: {e:#}");
        }
    }
    for f in &config.sqlite {
        match sqlite_ready(f) {
            Ok(facts) => say!("ok      sqlite {}: {facts}", f.name),
            Err(e) => {
                all_ok = false;
                say!("FAILED  sqlite {}: {e:#}", f.name);
            }
        }
    }
    for db in &config.databases {
        let result = async {
            let client = pg::connect(&db.connection).await?;
            let info = pg::server_info(&client).await?;
            if let Ok((major, version)) = &dump {
                pg::check_dump_version(*major, version, &info, &tools)?;
            }
            anyhow::Ok(info)
        }
        .await;
        match result {
            Ok(info) => {
                say!("ok      database {}: PostgreSQL {}, {} bytes", db.name, info.version, info.database_size)
            }
            Err(e) => {
                all_ok = false;
                say!("FAILED  database {}: {e:#}", db.name);
            }
        }
    }
    for t in repo.targets() {
        let probe = storage::probe(t).await;
        for (step, result) in &probe.steps {
            match result {
                Ok(()) => say!("ok      target {} ({}): {step}", probe.target, probe.describe),
                Err(e) => {
                    all_ok = false;
                    say!("FAILED  target {} ({}): {step}: {e:#}", probe.target, probe.describe);
                }
            }
        }
    }
    all_ok
}
