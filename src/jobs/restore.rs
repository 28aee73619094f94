//! Restore a backup into a database: check every stored frame before touching the target, stream
//! the verified archive into `pg_restore` (spooling to a temp file only for `--jobs > 1`), then
//! compare every table's row count with the counts recorded at backup time.
//!
//! Safety: a non-empty target is refused unless `--clean --yes`; with `--clean` a safety backup of
//! the target is taken first (`restore.safety_backup`), and its id is reported.

use super::backup::{self, KILL_GRACE};
use super::context::JobContext;
use super::context::Select;
use crate::config::{Config, Connection, DatabaseConfig};
use crate::pg::{self, Tools};
use crate::pipeline::{self, Counter, ObjectReader, RawCheck};
use crate::process::{ChildSpec, Running};
use crate::progress;
use crate::repo::manifest::Trigger;
use crate::repo::{BackupKind, Manifest, Subject};
use crate::storage::Store;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

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

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub target_database: String,
    pub target: TargetOverride,
    pub create: bool,
    pub clean: bool,
    pub yes: bool,
    pub jobs: u32,
    pub schemas: Vec<String>,
    pub tables: Vec<String>,
    pub no_owner: bool,
    pub globals: bool,
    pub dry_run: bool,
    /// Keep a database this restore created when the restore fails (default: it is dropped).
    pub keep_failed: bool,
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
    pub warnings: Vec<String>,
}

/// The connection to restore into: CLI overrides, else `restore.target`, else the backup's own
/// database entry, else the server recorded in the manifest.
fn target_connection(req: &RestoreRequest, config: &Config, m: &Manifest) -> Result<Connection> {
    let dump = m.dump().with_context(|| format!("{} is not a database backup", m.describe()))?;
    let base = req
        .target
        .server
        .clone()
        .or_else(|| config.restore.target.clone())
        .or_else(|| config.database(m.subject.name()).map(|d| d.connection.clone()))
        .unwrap_or_else(|| Connection {
            host: dump.source.host.clone(),
            port: dump.source.port,
            user: dump.source.user.clone(),
            password: None,
            dbname: String::new(),
        });
    Ok(Connection {
        host: req.target.host.clone().unwrap_or(base.host),
        port: req.target.port.unwrap_or(base.port),
        user: req.target.user.clone().unwrap_or(base.user),
        password: base.password,
        dbname: req.target_database.clone(),
    })
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
    let reader = repo.reader(m, None).await?;

    // Refuse early, before reading anything big.
    let admin = pg::connect_admin(&target).await?;
    let exists = pg::database_exists(&admin, &req.target_database).await?;
    if !exists && !req.create {
        bail!(
            "target database {:?} does not exist on {}:{}: add --create to create it",
            req.target_database,
            target.host,
            target.port
        );
    }
    let objects = if exists { pg::user_object_count(&pg::connect(&target).await?).await? } else { 0 };
    if objects > 0 && !req.clean {
        bail!(
            "target database {:?} is not empty ({objects} objects): restore into a new database (--target-database NEW --create), \
             or add --clean --yes to drop and replace its objects (a safety backup is taken first)",
            req.target_database
        );
    }
    if req.clean && !req.yes {
        bail!("--clean drops objects in {:?} before restoring: add --yes to confirm", req.target_database);
    }

    // read before write: every frame, and the globals, are checked before anything is created
    tracing::info!(restore_target = %target, "checking the backup before restoring");
    reader.check_stored().await?;
    tracing::debug!(frames = m.data.frames.len(), "every stored frame checked");
    let globals = match (req.globals, &dump.globals) {
        (false, _) => None,
        (true, None) => bail!("{what} has no globals (roles, tablespaces) to restore: restore without --globals"),
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
        warnings: Vec::new(),
    };
    if req.dry_run {
        // prove the whole stream decodes to the recorded SHA-256, touching nothing
        let mut sink = tokio::io::sink();
        pipeline::restore_stream(&reader, &mut sink, RawCheck::Sha256, cancel, &Counter::default()).await?;
        report.tables_checked = selected_tables(m, req).count();
        report.duration_seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    if exists && req.clean && objects > 0 && config.restore.safety_backup {
        let safety_db = DatabaseConfig { name: req.target_database.clone(), connection: target.clone() };
        let breq = backup::Request {
            database: &safety_db,
            kind: BackupKind::Full,
            trigger: Trigger::SafetyBeforeRestore,
            allow_shrink: true,
        };
        let safety = backup::run(ctx, &breq)
            .await
            .context("the safety backup of the restore target failed, so nothing was restored")?;
        tracing::info!(safety_backup_id = %safety.id, "safety backup of the target taken");
        report.safety_backup_id = Some(safety.id);
    }
    if !exists {
        pg::create_database(&admin, &req.target_database).await?;
        report.created = true;
    }
    drop(admin);

    let restored = async {
        let tools = Tools::locate(config.pg_bin_dir.as_deref());
        if let Some(sql) = &globals {
            report.warnings.extend(apply_globals(&tools, sql, &target).await?);
        }
        if !req.schemas.is_empty() || !req.tables.is_empty() {
            ensure_schemas(m, req, &target).await?;
        }
        pg_restore(ctx, req, &tools, &reader, m, &target).await?;
        tracing::debug!("pg_restore finished");
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = restored {
        if !report.created {
            return Err(e);
        }
        // a failed restore leaves nothing half-restored behind it, unless asked to
        if req.keep_failed {
            return Err(e.context(format!(
                "the restore failed; the database {:?} it created was kept as it is (--keep-failed)",
                req.target_database
            )));
        }
        return Err(match pg::drop_database(&target, &req.target_database).await {
            Ok(()) => e.context(format!(
                "the restore failed; the database {:?} it created was dropped (--keep-failed keeps it to look at)",
                req.target_database
            )),
            Err(d) => e.context(format!(
                "the restore failed, and the database {:?} it created could not be dropped ({d:#}): drop it by hand",
                req.target_database
            )),
        });
    }

    let client = pg::connect(&target).await?;
    for t in selected_tables(m, req) {
        let found = pg::count_rows(&client, &t.schema, &t.name).await?;
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
    report.duration_seconds = started.elapsed().as_secs_f64();
    if report.mismatches.is_empty() {
        tracing::info!(
            tables = report.tables_checked,
            duration_s = format!("{:.1}", report.duration_seconds),
            "restore finished"
        );
    } else {
        tracing::error!(mismatches = report.mismatches.len(), "restore finished with row count mismatches");
    }
    Ok(report)
}

/// pg_restore's --schema/--table select objects inside schemas but not the schemas themselves:
/// create the schemas the selected tables live in, so a partial restore into a new database works.
async fn ensure_schemas(m: &Manifest, req: &RestoreRequest, target: &Connection) -> Result<()> {
    let mut schemas: Vec<&str> = req.schemas.iter().map(String::as_str).collect();
    schemas.extend(selected_tables(m, req).map(|t| t.schema.as_str()));
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

/// Tables of the manifest that this restore brings back (per `--schema` / `--table`).
fn selected_tables<'a>(
    m: &'a Manifest,
    req: &'a RestoreRequest,
) -> impl Iterator<Item = &'a crate::pg::archive::TableRows> {
    m.dump().map(|d| d.tables.as_slice()).unwrap_or_default().iter().filter(move |t| {
        (req.schemas.is_empty() || req.schemas.contains(&t.schema))
            && (req.tables.is_empty() || req.tables.contains(&t.name))
    })
}

async fn pg_restore(
    ctx: &JobContext,
    req: &RestoreRequest,
    tools: &Tools,
    reader: &Arc<ObjectReader>,
    m: &Manifest,
    target: &Connection,
) -> Result<()> {
    let what = m.describe();
    let cancel = &ctx.cancel;
    let jobs = if req.jobs > 0 { req.jobs } else { ctx.config.restore.jobs };
    let mut spec = ChildSpec::new(tools.path("pg_restore")).arg("--no-password").arg(pg::dbname_arg(&target.dbname));
    if req.clean {
        spec = spec.args(["--clean", "--if-exists"]);
    }
    if req.no_owner {
        spec = spec.arg("--no-owner");
    }
    for s in &req.schemas {
        spec = spec.arg(format!("--schema={s}"));
    }
    for t in &req.tables {
        spec = spec.arg(format!("--table={t}"));
    }
    let moved = ctx.progress.clone();
    let _tracker = progress::track(&format!("restore {}", m.id), moved.clone(), ctx.interactive);
    if jobs > 1 {
        // parallel pg_restore needs a seekable file: spool the verified stream into a file with no
        // name (gone when the last descriptor closes, even after kill -9: decrypted data never
        // outlives the restore), handed to pg_restore as its fd 4
        const SPOOL_FD: i32 = 4;
        let spool = tempfile::tempfile().context("creating the spool file in TMPDIR")?;
        let mut file = tokio::fs::File::from_std(spool.try_clone().context("opening the spool file")?);
        pipeline::restore_stream(reader, &mut file, RawCheck::FramesOnly, cancel, &moved).await?;
        file.sync_all().await.ok();
        drop(file);
        let spool = Arc::new(std::os::fd::OwnedFd::from(spool));
        let spec = spec.arg(format!("--jobs={jobs}")).arg(format!("/proc/self/fd/{SPOOL_FD}")).pass_fd(spool, SPOOL_FD);
        let spec = pg::conn_env(spec, target).stdout(false);
        let child = Running::spawn(&spec)?;
        tokio::select! {
            r = child.wait() => { r?; }
            _ = cancel.cancelled() => bail!("{what}: restore cancelled"),
        }
        return Ok(());
    }
    let spec = pg::conn_env(spec, target);
    stream_into(&spec, reader, RawCheck::FramesOnly, cancel, &moved)
        .await
        .with_context(|| format!("pg_restore of {what} into {:?} failed", target.dbname))?;
    Ok(())
}

/// Runs `spec` (pg_restore) with the verified archive of `reader` on its stdin; returns its
/// stderr. A stream that fails stops the child (its stderr tail goes into the error); a child
/// that fails is the error.
pub(super) async fn stream_into(
    spec: &ChildSpec,
    reader: &Arc<ObjectReader>,
    check: RawCheck,
    cancel: &CancellationToken,
    moved: &Counter,
) -> Result<String> {
    let spec = spec.clone().stdin(true).stdout(false);
    let mut child = Running::spawn(&spec)?;
    let mut stdin = child.take_stdin().with_context(|| format!("{} has no stdin", spec.display()))?;
    let streamed = pipeline::restore_stream(reader, &mut stdin, check, cancel, moved).await;
    let _ = stdin.shutdown().await;
    drop(stdin);
    match streamed {
        Ok(()) => Ok(child.wait().await?),
        Err(e) => {
            let tail = child.stderr_tail();
            let _ = child.terminate(KILL_GRACE).await;
            Err(if tail.trim().is_empty() {
                e
            } else {
                e.context(format!("{}'s stderr ends with:\n{}", spec.program_name(), tail.trim_end()))
            })
        }
    }
}

/// Replays `pg_dumpall --globals-only` with psql into the maintenance database. Errors such as
/// "role already exists" are expected on a server that has them; others are returned as warnings.
async fn apply_globals(tools: &Tools, sql: &[u8], target: &Connection) -> Result<Vec<String>> {
    // on psql's stdin: the roles (with their password hashes) never touch a file
    let spec = pg::conn_env(
        ChildSpec::new(tools.path("psql"))
            .args(["--no-psqlrc", "--quiet", "--no-password", "-v", "ON_ERROR_STOP=0", "--file", "-"])
            .arg(pg::dbname_arg("postgres")),
        target,
    )
    .stdin(true)
    .stdout(false);
    let mut running = Running::spawn(&spec)?;
    let mut stdin = running.take_stdin().context("psql has no stdin")?;
    let written = stdin.write_all(sql).await;
    drop(stdin);
    let stderr = running.wait().await?;
    written.context("writing the globals to psql")?;
    let warnings: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("ERROR:") && !l.contains("already exists"))
        .map(|l| format!("globals: {}", l.trim()))
        .collect();
    Ok(warnings)
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

/// Restores file backup `m` into a directory: the holders of its unchanged files are read too
/// (oldest first), every frame of every archive checked before anything is written.
pub async fn files(
    ctx: &JobContext,
    m: &Manifest,
    req: &crate::fileset::restore::Request,
) -> Result<crate::fileset::restore::Restored> {
    let lock = ctx.read_lock(m, "file restore").await?;
    let restored = files_from(ctx, m, req, None).await;
    lock.release().await;
    restored
}

/// [`files`], reading `m`'s own archive from `store` (default: the first target holding it).
pub async fn files_from(
    ctx: &JobContext,
    m: &Manifest,
    req: &crate::fileset::restore::Request,
    store: Option<Arc<dyn Store>>,
) -> Result<crate::fileset::restore::Restored> {
    let repo = &ctx.repository;
    let what = m.describe();
    let set = m.file_set().with_context(|| format!("{what} is not a file backup"))?;
    let mut chain = Vec::new();
    for h in &m.depends_on {
        let holder = repo.find_in(Some(&m.subject), h).await.with_context(|| {
            format!("{what}: backup {h}, which holds some of its unchanged files, is gone: restore another backup")
        })?;
        chain.push(holder);
    }
    chain.sort_by_key(|b| b.started_at);
    let mut archives = Vec::new();
    for b in &chain {
        archives.push(crate::fileset::restore::Archive {
            backup_id: b.id.clone(),
            what: b.describe(),
            reader: repo.reader(b, None).await?,
        });
    }
    archives.push(crate::fileset::restore::Archive {
        backup_id: m.id.clone(),
        what: what.clone(),
        reader: repo.reader(m, store).await?,
    });
    crate::fileset::restore::run(&m.id, &what, &set.files, archives, req, &ctx.cancel).await
}
