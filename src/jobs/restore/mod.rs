//! Restore a backup into a database: check every stored frame before touching the target, stream
//! the verified archive into `pg_restore` (spooling to a temp file only for `--jobs > 1`), then
//! compare every table's row count with the counts recorded at backup time.
//!
//! Safety: a non-empty target is refused unless `--clean --yes`; with `--clean` a safety backup of
//! the target is taken first (`restore.safety_backup`), and its id is reported.

mod files;
mod pg_restore;
mod replace;
mod safety;
pub mod schema;
mod selection;
pub mod sqlite;

pub use files::{files, files_from};
pub(crate) use pg_restore::stream_into;
use pg_restore::{Archive, apply_globals, pg_restore, spool};
pub use replace::rollback;
pub use selection::Selection;

use super::context::JobContext;
use super::context::Select;
use super::refuse;
use crate::config::{Config, Connection, DatabaseConfig};
use crate::pg::database::{DatabaseProperties, Overrides};
use crate::pg::{self, Tools};
use crate::pipeline::{self, Counter, RawCheck};
use crate::repo::{Manifest, Subject};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::time::Instant;

/// The backup of `subject` a restore reads: the one named, else the newest.
pub async fn choose(ctx: &JobContext, subject: &Subject, select: &Select) -> Result<Manifest> {
    let repo = &ctx.repository;
    match select {
        Select::Id(id) => repo.find_in(Some(subject), id).await,
        Select::Configured | Select::Latest => repo
            .latest(subject, None)
            .await?
            .with_context(|| format!("{} has no backups yet in {}", subject.describe(), repo.describe())),
        Select::All => bail!("a restore reads one backup: name it, or take the newest"),
    }
}

#[derive(Debug, Clone, Default)]
pub struct TargetOverride {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// A whole server connection (test restores' `test_restore.target`), before the fields above.
    pub server: Option<Connection>,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    pub target_database: String,
    pub target: TargetOverride,
    pub create: bool,
    pub clean: bool,
    /// Restore beside the target, check, then swap names, keeping the old database.
    pub replace: bool,
    pub yes: bool,
    pub jobs: u32,
    pub schemas: Vec<String>,
    pub tables: Vec<String>,
    pub no_owner: bool,
    pub no_privileges: bool,
    /// A created database's encoding and locale when the target server lacks the backup's.
    pub encoding: Option<String>,
    pub locale: Option<String>,
    pub icu_locale: Option<String>,
    pub globals: bool,
    pub dry_run: bool,
    /// Keep a database this restore created when the restore fails (default: it is dropped).
    pub keep_failed: bool,
}

impl RestoreRequest {
    fn overrides(&self) -> Overrides {
        Overrides {
            encoding: self.encoding.clone(),
            locale: self.locale.clone(),
            icu_locale: self.icu_locale.clone(),
            no_owner: self.no_owner,
            no_privileges: self.no_privileges,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RowMismatch {
    pub schema: String,
    pub table: String,
    pub expected: u64,
    /// `None` when the table is missing after the restore.
    pub found: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub database: String,
    pub target: String,
    pub dry_run: bool,
    pub created: bool,
    pub safety_backup_id: Option<String>,
    pub raw_bytes: u64,
    pub duration_seconds: f64,
    pub tables_checked: usize,
    pub mismatches: Vec<RowMismatch>,
    /// How the created database's properties differ from the backup's (encoding, locale,
    /// settings, ACL...): a failed restore when not empty.
    pub property_differences: Vec<String>,
    /// What a partial restore brought back (`schema sales`, `public.orders`).
    pub selected: Vec<String>,
    /// `--replace`: the name the replaced database was kept under (`pgbackd rollback` swaps back).
    pub kept_as: Option<String>,
    pub warnings: Vec<String>,
}

impl RestoreReport {
    /// Whether what was restored matches the backup (row counts and database properties).
    pub fn matches(&self) -> bool {
        self.mismatches.is_empty() && self.property_differences.is_empty()
    }
}

/// The connection to restore into: CLI overrides, else `restore.target`, else the backup's own
/// database entry, else the server recorded in the manifest.
fn target_connection(req: &RestoreRequest, config: &Config, m: &Manifest) -> Result<Connection> {
    let dump = m.dump().with_context(|| format!("{} is not a database backup", m.describe()))?;
    let configured = config.database(m.subject.name()).map(|d| d.connection.clone());
    let recorded = || Connection {
        host: dump.source.host.clone(),
        port: dump.source.port,
        user: dump.source.user.clone(),
        password: None,
        dbname: String::new(),
    };
    Ok(req.target.apply(config, configured.unwrap_or_else(recorded), &req.target_database))
}

/// The server a restore of configured database `db` writes to (`restore.target`, else the
/// database's own), with `t`'s overrides, connected to database `name`.
pub fn server(config: &Config, db: &DatabaseConfig, t: &TargetOverride, name: &str) -> Connection {
    t.apply(config, db.connection.clone(), name)
}

impl TargetOverride {
    /// The server to restore to: the whole server given, else `restore.target`, else `fallback`;
    /// then host, port and user as given; connected to database `name`.
    fn apply(&self, config: &Config, fallback: Connection, name: &str) -> Connection {
        let base = self.server.clone().or_else(|| config.restore.target.clone()).unwrap_or(fallback);
        Connection {
            host: self.host.clone().unwrap_or(base.host),
            port: self.port.unwrap_or(base.port),
            user: self.user.clone().unwrap_or(base.user),
            password: base.password,
            dbname: name.to_owned(),
        }
    }
}

/// Restores database backup `m` as `req` asks, holding a read lock on it.
pub async fn run(ctx: &JobContext, m: &Manifest, req: &RestoreRequest) -> Result<RestoreReport> {
    let lock = ctx.read_lock(m, "restore").await?;
    let restored = restore_database(ctx, m, req).await;
    lock.release().await;
    restored
}

async fn restore_database(ctx: &JobContext, m: &Manifest, req: &RestoreRequest) -> Result<RestoreReport> {
    let (config, repo, cancel) = (&*ctx.config, &*ctx.repository, &ctx.cancel);
    let started = Instant::now();
    let what = m.describe();
    let target = target_connection(req, config, m)?;
    let dump = m.dump().with_context(|| format!("{what} is not a database backup"))?;
    // what to restore, checked against the backup before anything else
    let selection = selection::resolve(m, &req.schemas, &req.tables)?;
    let reader = repo.reader(m, None).await?;

    // Refuse early, before reading anything big.
    let admin = pg::connect_admin(&target).await?;
    let exists = pg::database_exists(&admin, &req.target_database).await?;
    let at = format!("{}:{}", target.host, target.port);
    if req.replace {
        if req.create || req.clean {
            refuse!("--replace restores beside the target and swaps names: it goes without --create and --clean");
        }
        if !exists {
            refuse!(
                "target database {:?} does not exist on {at}: --replace replaces one; use --create",
                req.target_database
            );
        }
        if selection.is_partial() {
            refuse!("--replace swaps whole databases: it cannot be combined with --schema or --table");
        }
    } else if !exists && !req.create {
        refuse!("target database {:?} does not exist on {at}: add --create to create it", req.target_database);
    }
    let objects = if exists && !req.replace { pg::user_object_count(&pg::connect(&target).await?).await? } else { 0 };
    if objects > 0 && !req.clean && !req.replace {
        refuse!(
            "target database {:?} is not empty ({objects} objects): restore into a new database (--target-database NEW \
             --create), or --replace --yes to restore beside it and swap (the old one is kept), or --clean --yes to drop \
             and replace its objects in place (a safety backup is taken first)",
            req.target_database
        );
    }
    if (req.clean || req.replace) && !req.yes && !req.dry_run {
        refuse!(
            "{} {:?}: add --yes to confirm",
            if req.replace {
                "--replace terminates the connections to and renames"
            } else {
                "--clean drops the objects in"
            },
            req.target_database
        );
    }
    let kept_name = replace::kept_name(&req.target_database, &m.id);
    if req.replace && pg::database_exists(&admin, &kept_name).await? {
        refuse!(
            "a database {kept_name:?} is already there (kept by an earlier --replace with this backup): drop it, or \
             `pgbackd rollback` to swap it back, then restore again"
        );
    }

    // read before write: every frame, and the globals, are checked before anything is created;
    // a parallel restore's spool is that check (every frame it writes is checked)
    tracing::info!(restore_target = %target, "checking the backup before restoring");
    let jobs = if req.jobs > 0 { req.jobs } else { config.restore.jobs };
    let spool = if jobs > 1 && !req.dry_run {
        Some(spool(&reader, m, config.restore.spool, cancel, &ctx.progress).await?)
    } else {
        reader.check_stored().await?;
        None
    };
    tracing::debug!(frames = m.data.frames.len(), "every stored frame checked");
    let globals = match (req.globals, &dump.globals) {
        (false, _) => None,
        (true, None) => refuse!("{what} has no globals (roles, tablespaces) to restore: restore without --globals"),
        (true, Some(g)) => Some(
            pipeline::read_small_object(&repo.locate(m).await?, g, &what, repo.authenticate(m)?.as_ref())
                .await
                .context("the backup's roles and tablespaces (globals) cannot be read, so nothing was restored")?,
        ),
    };
    let mut report = RestoreReport {
        backup_id: m.id.clone(),
        database: m.subject.name().to_owned(),
        target: target.to_string(),
        dry_run: req.dry_run,
        created: false,
        safety_backup_id: None,
        raw_bytes: m.data.raw_bytes,
        duration_seconds: 0.0,
        tables_checked: 0,
        mismatches: Vec::new(),
        property_differences: Vec::new(),
        selected: selection.restored.clone(),
        kept_as: None,
        warnings: Vec::new(),
    };
    if req.dry_run {
        // prove the whole stream decodes to the recorded SHA-256, touching nothing
        let mut sink = tokio::io::sink();
        pipeline::restore_stream(&reader, &mut sink, RawCheck::Sha256, cancel, &Counter::default()).await?;
        report.tables_checked = selection.checked.len();
        report.duration_seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    if exists && req.clean && objects > 0 && config.restore.safety_backup {
        report.safety_backup_id = Some(safety::take(ctx, &req.target_database, &target).await?);
    }
    let overrides = req.overrides();
    // --replace writes into a new database beside the target, then swaps the names
    let into = if req.replace { replace::staging_name(&req.target_database) } else { req.target_database.clone() };
    let into_conn = Connection { dbname: into.clone(), ..target.clone() };
    let create = !exists || req.replace;
    if create {
        if req.replace {
            // a staging database left by a crash of an earlier --replace is ours
            pg::drop_database(&target, &into).await?;
        }
        create_database(&admin, dump.database.as_ref(), &into, &overrides).await?;
        report.created = true;
    }
    drop(admin);

    let restored = async {
        let tools = Tools::locate(config.pg_bin_dir.as_deref());
        if let Some(sql) = &globals {
            report.warnings.extend(apply_globals(&tools, sql, &target).await?);
        }
        if selection.is_partial() {
            ensure_schemas(&selection, &into_conn).await?;
        }
        let archive = match spool {
            Some(file) => Archive::Spooled { file, jobs },
            None => Archive::Stream(&reader),
        };
        report.warnings.extend(pg_restore(ctx, req, &selection, &tools, archive, m, &into_conn).await?);
        tracing::debug!("pg_restore finished");
        check_restored(dump, &selection, &overrides, create, &into_conn, jobs, &mut report).await
    }
    .await;
    let restored = restored.and_then(|()| {
        if cancel.is_cancelled() {
            bail!("the restore was cancelled");
        }
        if req.replace && !report.matches() {
            bail!(
                "the restored copy differs from the backup (see below), so {:?} was not replaced",
                req.target_database
            );
        }
        Ok(())
    });
    if let Err(e) = restored {
        let e = match &report.safety_backup_id {
            Some(id) => e.context(format!(
                "the restore into {:?} failed after its objects were dropped; the safety backup {id} holds what it \
                 had: pgbackd restore {id} --target-database {} --clean --yes",
                req.target_database, req.target_database
            )),
            None if req.replace => e.context(format!("{:?} was left as it was", req.target_database)),
            None => e,
        };
        if !report.created {
            return Err(e);
        }
        // a failed restore leaves nothing half-restored behind it, unless asked to
        if req.keep_failed {
            return Err(e.context(format!(
                "the restore failed; the database {into:?} it created was kept as it is (--keep-failed)"
            )));
        }
        return Err(match pg::drop_database(&target, &into).await {
            Ok(()) => e.context(format!(
                "the restore failed; the database {into:?} it created was dropped (--keep-failed keeps it to look at)"
            )),
            Err(d) => e.context(format!(
                "the restore failed, and the database {into:?} it created could not be dropped ({d:#}): drop it by hand"
            )),
        });
    }
    if req.replace {
        replace::swap(&target, &req.target_database, &into, &kept_name).await?;
        report.kept_as = Some(kept_name);
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    if report.matches() {
        tracing::info!(
            tables = report.tables_checked,
            duration_s = format!("{:.1}", report.duration_seconds),
            "restore finished"
        );
    } else {
        tracing::error!(
            mismatches = report.mismatches.len(),
            property_differences = report.property_differences.len(),
            "restore finished with differences from the backup"
        );
    }
    Ok(report)
}

/// Creates database `name` with the backup's encoding, locale and connection limit (as `o`
/// changes them); a backup from before 0.2 has none recorded: the server's defaults.
async fn create_database(
    admin: &tokio_postgres::Client,
    properties: Option<&DatabaseProperties>,
    name: &str,
    o: &Overrides,
) -> Result<()> {
    let Some(p) = properties else { return pg::create_database(admin, name).await };
    let p = p.expected(o);
    let sql = p.create_statement(name);
    admin.batch_execute(&sql).await.map_err(|e| {
        let msg = pg::database::db_error(&e);
        let hint = if msg.contains("locale") || msg.contains("collation") || msg.contains("encoding") {
            format!(
                ": the target server lacks the backup's locale or encoding ({} / {} / {}; `locale -a` lists what it has): \
                 install it, or pass --locale, --encoding or --icu-locale to create the database with another (the \
                 restore then compares against that)",
                p.encoding,
                p.collate,
                p.icu_locale.as_deref().unwrap_or("no ICU locale")
            )
        } else {
            String::new()
        };
        anyhow::anyhow!("creating database {name:?} ({sql}): {msg}{hint}")
    })
}

/// After pg_restore: the selected tables' row counts, and for a database this restore created,
/// its properties applied and compared with the backup's.
async fn check_restored(
    dump: &crate::repo::manifest::Dump,
    selection: &Selection,
    o: &Overrides,
    created: bool,
    into: &Connection,
    jobs: u32,
    report: &mut RestoreReport,
) -> Result<()> {
    let names: Vec<(String, String)> = selection.checked.iter().map(|t| (t.schema.clone(), t.name.clone())).collect();
    let counted = pg::count_rows(into, &names, jobs as usize).await?;
    for (t, found) in selection.checked.iter().zip(counted) {
        report.tables_checked += 1;
        if found != Some(t.rows) {
            report.mismatches.push(RowMismatch {
                schema: t.schema.clone(),
                table: t.name.clone(),
                expected: t.rows,
                found,
            });
        }
    }
    if let (true, Some(props)) = (created, &dump.database) {
        let client = pg::connect(into).await?;
        let expected = props.expected(o);
        report.warnings.extend(expected.apply(&client, &into.dbname, o).await);
        let server = pg::server_info(&client).await?;
        let found = DatabaseProperties::read(&client, server.version_num).await?;
        report.property_differences = expected.differences(&found, o);
    }
    Ok(())
}

/// pg_restore's --schema/--table select objects inside schemas but not the schemas themselves:
/// create the schemas the selection lives in, so a partial restore into a new database works.
async fn ensure_schemas(selection: &Selection, target: &Connection) -> Result<()> {
    let mut schemas: Vec<&str> = selection.schemas.iter().map(String::as_str).collect();
    schemas.extend(selection.checked.iter().map(|t| t.schema.as_str()));
    schemas.sort_unstable();
    schemas.dedup();
    let client = pg::connect(target).await?;
    for s in schemas {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", pg::quote_ident(s)))
            .await
            .with_context(|| format!("creating schema {s:?} for a partial restore"))?;
    }
    Ok(())
}

/// Writes the raw archive of a backup to `out` (for `pgbackd cat`), verified frame by frame.
pub async fn cat<W: tokio::io::AsyncWrite + Unpin + Send>(ctx: &JobContext, m: &Manifest, out: &mut W) -> Result<()> {
    let lock = ctx.read_lock(m, "cat").await?;
    let written = async {
        let reader = ctx.repository.reader(m, None).await?;
        reader.check_stored().await?;
        pipeline::restore_stream(&reader, out, RawCheck::Sha256, &ctx.cancel, &Counter::default()).await
    }
    .await;
    lock.release().await;
    written
}
