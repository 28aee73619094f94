//! Test restores: restore a backup into a scratch database, compare every table's row count with
//! the counts taken in the dump's own snapshot, run the user's checks, measure how long it took
//! (the measured recovery time), and always drop the scratch database again.
//!
//! The scratch database is `pgbackd_restore_<backup id>` on the source server, or on
//! `test_restore.target`. Leftovers of a crashed run are recognised by that prefix and dropped on
//! the next run; no other database is ever touched.

use super::context::JobContext;
use super::context::Select;
use super::restore::{self, RestoreRequest, RowMismatch, TargetOverride};
use crate::config::{Config, Connection, Pick, RestoreCheck};
use crate::pg;
use crate::repo::manifest::{self, TestRestoreRecord};
use crate::repo::{Manifest, Subject};
use anyhow::{Context, Result, bail};
use serde::Serialize;

pub const SCRATCH_PREFIX: &str = "pgbackd_restore_";

#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub name: String,
    pub ok: bool,
    pub expect: String,
    pub got: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestRestored {
    pub backup_id: String,
    pub database: String,
    pub scratch_database: String,
    pub ok: bool,
    /// Seconds the restore took (frames checked, pg_restore, row counts): the measured RTO.
    pub restore_seconds: f64,
    pub restored_bytes: Option<u64>,
    pub tables_checked: usize,
    pub mismatches: Vec<RowMismatch>,
    /// How the scratch database's properties (encoding, locale, settings...) differ from the
    /// backup's.
    pub property_differences: Vec<String>,
    /// How the scratch database's schema differs from the schema in the archive.
    pub schema_differences: Vec<String>,
    pub checks: Vec<CheckOutcome>,
    pub error: Option<String>,
    /// Leftover scratch databases of earlier, interrupted runs that were dropped first.
    pub leftovers_dropped: Vec<String>,
}

impl TestRestored {
    /// The result of a test restore of `m` into `scratch` before it ran: not ok, nothing checked.
    fn of(m: &Manifest, scratch: String) -> TestRestored {
        TestRestored {
            backup_id: m.id.clone(),
            database: m.subject.to_string(),
            scratch_database: scratch,
            ok: false,
            restore_seconds: 0.0,
            restored_bytes: None,
            tables_checked: 0,
            mismatches: Vec::new(),
            property_differences: Vec::new(),
            schema_differences: Vec::new(),
            checks: Vec::new(),
            error: None,
            leftovers_dropped: Vec::new(),
        }
    }
}

/// The prefix of a database's scratch databases: `pgbackd_restore_<database>_`.
fn scratch_prefix(database: &str) -> String {
    let db: String = database
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(30)
        .collect();
    format!("{SCRATCH_PREFIX}{db}_")
}

/// The scratch database name for a backup (lower case, within PostgreSQL's 63 bytes).
pub fn scratch_name(m: &Manifest) -> String {
    let suffix: String = m.id.chars().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
    format!("{}{}", scratch_prefix(m.subject.name()), suffix.to_ascii_lowercase())
}

/// The backup of `subject` a test restore takes: the one named, the newest, or as
/// `test_restore.pick` says.
pub async fn choose(ctx: &JobContext, subject: &Subject, select: &Select) -> Result<Manifest> {
    let repo = &ctx.repository;
    let none = || format!("{} has no backup to test-restore", subject.describe());
    match select {
        Select::Id(id) => repo.find_in(Some(subject), id).await,
        Select::Latest => repo.latest(subject, None).await?.with_context(none),
        Select::Configured => {
            let backups = repo.list(Some(subject)).await?;
            pick(&backups, ctx.config.test_restore.pick).cloned().with_context(none)
        }
        Select::All => bail!("a test restore takes one backup: name it, or let test_restore.pick choose"),
    }
}

/// Picks the backup a scheduled test restore takes.
pub fn pick(backups: &[Manifest], pick: Pick) -> Option<&Manifest> {
    match pick {
        Pick::Latest => backups.last(),
        Pick::RandomRecent(n) => {
            let recent = &backups[backups.len().saturating_sub(n)..];
            (!recent.is_empty()).then(|| &recent[rand::random::<u64>() as usize % recent.len()])
        }
    }
}

/// Whether a check's result matches its expectation: a comparison (`> 0`, `>= 100`, `!= 0`,
/// `<= 5`, `< 5`, `= 42`) when both sides are numbers, else exact text.
pub fn matches(got: &str, expect: &str) -> bool {
    let expect = expect.trim();
    for op in [">=", "<=", "!=", "=", ">", "<"] {
        if let Some(rest) = expect.strip_prefix(op)
            && let (Ok(g), Ok(e)) = (got.trim().parse::<f64>(), rest.trim().parse::<f64>())
        {
            return match op {
                ">=" => g >= e,
                "<=" => g <= e,
                "!=" => g != e,
                "=" => g == e,
                ">" => g > e,
                _ => g < e,
            };
        }
    }
    got.trim() == expect
}

/// The server test restores go to: `test_restore.target`, else `restore.target`, else the
/// backup's own server.
fn server(config: &Config, m: &Manifest) -> Option<Connection> {
    config
        .test_restore
        .target
        .clone()
        .or_else(|| config.restore.target.clone())
        .or_else(|| config.database(m.subject.name()).map(|d| d.connection.clone()))
}

/// Drops scratch databases left by interrupted test restores of the same database (only names
/// with its prefix, only idle ones; runs for one database never overlap).
async fn drop_leftovers(admin: &tokio_postgres::Client, database: &str) -> Vec<String> {
    let prefix = scratch_prefix(database);
    let like = format!("{}%", prefix.replace('_', "\\_"));
    let rows = match admin.query("select datname from pg_database where datname like $1", &[&like]).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for leftover scratch databases");
            return Vec::new();
        }
    };
    let mut dropped = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        if !name.starts_with(&prefix) {
            continue;
        }
        // no FORCE: a scratch database in use belongs to a test restore running right now
        match admin.batch_execute(&format!("DROP DATABASE {}", pg::quote_ident(&name))).await {
            Ok(()) => {
                tracing::warn!(database = %name, "dropped a scratch database left by an interrupted test restore");
                dropped.push(name);
            }
            Err(e) => tracing::info!(database = %name, error = %e, "scratch database in use; left alone"),
        }
    }
    dropped
}

/// Runs the user's checks in the scratch database.
pub(crate) async fn run_checks(conn: &Connection, checks: &[RestoreCheck]) -> Result<Vec<CheckOutcome>> {
    let client = pg::connect(conn).await?;
    let mut out = Vec::new();
    for c in checks {
        let result = client.simple_query(&c.sql).await;
        let outcome = match result {
            Ok(messages) => {
                let got = messages.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_owned()),
                    _ => None,
                });
                let ok = got.as_deref().is_some_and(|g| matches(g, &c.expect));
                CheckOutcome { name: c.name.clone(), ok, expect: c.expect.clone(), got, error: None }
            }
            Err(e) => CheckOutcome {
                name: c.name.clone(),
                ok: false,
                expect: c.expect.clone(),
                got: None,
                error: Some(format!("{e}")),
            },
        };
        out.push(outcome);
    }
    Ok(out)
}

/// Test-restores backup `m`; the scratch database is dropped whatever happens.
pub async fn run(ctx: &JobContext, m: &Manifest) -> TestRestored {
    let config = &*ctx.config;
    let scratch = scratch_name(m);
    let mut result = TestRestored::of(m, scratch.clone());
    let Some(server) = server(config, m) else {
        result.error = Some(format!(
            "database {} is not in the config and no test_restore.target is set: nowhere to restore",
            m.subject.name()
        ));
        return result;
    };
    let conn = server.with_dbname(&scratch);
    let outcome: Result<()> = async {
        let admin = pg::connect_admin(&conn).await?;
        result.leftovers_dropped = drop_leftovers(&admin, m.subject.name()).await;
        drop(admin);
        let req = RestoreRequest {
            target_database: scratch.clone(),
            target: TargetOverride { server: Some(server.clone()), ..Default::default() },
            create: true,
            jobs: config.test_restore.jobs,
            // the scratch server may lack the roles; ownership is not what is being tested
            no_owner: true,
            // the scratch database is dropped whatever happens
            keep_failed: true,
            ..RestoreRequest::default()
        };
        let report = restore::run(ctx, m, &req).await?;
        result.restore_seconds = report.duration_seconds;
        result.tables_checked = report.tables_checked;
        result.mismatches = report.mismatches;
        result.property_differences = report.property_differences;
        result.schema_differences = restore::schema::differences(ctx, m, &conn, 10).await?;
        let client = pg::connect(&conn).await?;
        result.restored_bytes = pg::server_info(&client).await.ok().map(|i| i.database_size);
        drop(client);
        result.checks = run_checks(&conn, &config.test_restore.checks).await?;
        Ok(())
    }
    .await;
    if let Err(e) = pg::drop_database(&server, &scratch).await {
        tracing::error!(database = %scratch, error = %format!("{e:#}"), "could not drop the scratch database");
        result.error = Some(format!("could not drop the scratch database {scratch}: {e:#}"));
    }
    match outcome {
        Err(e) => result.error = Some(format!("{e:#}")),
        Ok(()) => {
            let failed_checks: Vec<&str> = result.checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
            if !result.mismatches.is_empty() {
                let tables: Vec<String> =
                    result.mismatches.iter().map(|x| format!("{}.{}", x.schema, x.table)).collect();
                result.error = Some(format!("row counts differ from the backup in: {}", tables.join(", ")));
            } else if !result.schema_differences.is_empty() {
                result.error = Some(format!(
                    "the restored schema differs from the schema in the backup: {}",
                    result.schema_differences.join("; ")
                ));
            } else if !result.property_differences.is_empty() {
                result.error = Some(format!(
                    "the restored database's properties differ from the backup's: {}",
                    result.property_differences.join("; ")
                ));
            } else if !failed_checks.is_empty() {
                result.error = Some(format!("checks failed: {}", failed_checks.join(", ")));
            }
        }
    }
    result.ok = result.error.is_none();
    record(ctx, m, &result).await;
    result
}

/// Test-restores SQLite backup `m`: the file rebuilt into a scratch directory (in `$TMPDIR`,
/// removed afterwards), `PRAGMA integrity_check` and `foreign_key_check` run on it and every
/// table's rows compared with the snapshot's; the time it took is the measured RTO.
pub async fn sqlite(ctx: &JobContext, m: &Manifest) -> TestRestored {
    let started = std::time::Instant::now();
    let mut result = TestRestored::of(m, String::new());
    let outcome: Result<()> = async {
        let scratch = tempfile::Builder::new()
            .prefix("pgbackd-test-restore-")
            .tempdir()
            .context("creating a scratch directory for the SQLite file (in $TMPDIR)")?;
        let path = scratch.path().join(format!("{}.db", m.subject.name()));
        result.scratch_database = path.display().to_string();
        let checked = restore::sqlite::rebuild(ctx, m, None, &path).await?;
        result.restore_seconds = started.elapsed().as_secs_f64();
        result.restored_bytes = std::fs::metadata(&path).ok().map(|f| f.len());
        result.tables_checked = checked.tables_checked;
        result.mismatches = checked
            .mismatches
            .iter()
            .map(|(table, expected, found)| RowMismatch {
                schema: "main".into(),
                table: table.clone(),
                expected: *expected,
                found: *found,
            })
            .collect();
        if !checked.ok() {
            bail!("the restored file fails its checks: {}", checked.summary());
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        result.error = Some(format!("{e:#}"));
    }
    result.ok = result.error.is_none();
    record(ctx, m, &result).await;
    result
}

/// Records a test restore's result with the backup, and logs it.
async fn record(ctx: &JobContext, m: &Manifest, result: &TestRestored) {
    if !ctx.cancel.is_cancelled() {
        let record = TestRestoreRecord {
            tested_at: ctx.now(),
            outcome: manifest::CheckOutcome::of(result.ok),
            restore_seconds: result.restore_seconds,
            restored_bytes: result.restored_bytes,
            tables_checked: result.tables_checked,
            error: result.error.clone(),
        };
        if let Err(e) = ctx.repository.annotate(m, |a| a.test_restore = Some(record.clone())).await {
            tracing::warn!(backup_id = %m.id, error = %format!("{e:#}"), "could not record the test restore result");
        }
    }
    if result.ok {
        tracing::info!(
            backup_id = %m.id,
            restore_s = format!("{:.1}", result.restore_seconds),
            restored_bytes = result.restored_bytes,
            tables = result.tables_checked,
            "test restore passed"
        );
    } else {
        tracing::error!(backup_id = %m.id, error = result.error.as_deref().unwrap_or(""), "test restore failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations() {
        assert!(matches("42", "42") && matches("42", "= 42") && matches("42", ">= 42") && matches("43", "> 42"));
        assert!(matches("0", "< 1") && matches("5", "!= 0") && matches("ok", "ok"));
        assert!(!matches("0", "> 0") && !matches("41", "42") && !matches("x", "> 0") && !matches("ok", "fine"));
    }

    #[test]
    fn picks() {
        let none: Vec<Manifest> = Vec::new();
        assert!(pick(&none, Pick::Latest).is_none());
        assert!(pick(&none, Pick::RandomRecent(3)).is_none());
    }
}
