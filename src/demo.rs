//! `pgbackd demo`: the embedded default in action. Starts a throwaway PostgreSQL cluster, fills a
//! small shop database, takes one full backup into a local repository, restores it into a new
//! database, and proves the restore: row counts checked by pgbackd, then every table's content
//! compared (md5 of its ordered rows) with the original.

use crate::config::{Config, EMBEDDED_DEMO};
use crate::jobs::kind::JobKind;
use crate::jobs::restore::{RestoreRequest, TargetOverride};
use crate::jobs::run::{JobSpec, Produced, RestoreTo, RunOutcome, Select};
use crate::jobs::{JobContext, JobFailed};
use crate::pg::{self, cluster::Cluster};
use crate::repo::manifest::Trigger;
use crate::repo::{Repository, Subject};
use anyhow::{Context, Result, bail};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo repository goes (kept afterwards so you can look at it).
    #[arg(long, default_value = "pgbackd-demo")]
    pub dir: PathBuf,
    /// Rows in the demo's orders table.
    #[arg(long, default_value_t = 200_000)]
    pub rows: u64,
}

const SCHEMA: &str = "
create schema shop;
create table shop.customers (id serial primary key, name text not null, email text, balance numeric(12,2), created timestamptz not null);
create table shop.orders (id bigserial primary key, customer_id int not null references shop.customers, total numeric(12,2),
                          items jsonb not null, placed timestamptz not null);
create table public.attachments (id int primary key, name text, data bytea);
";

pub async fn run(args: &DemoArgs, cancel: &CancellationToken) -> Result<ExitCode> {
    let repository_dir = std::env::current_dir()?.join(&args.dir).join("repository");
    println!("pgbackd demo: starting a throwaway PostgreSQL cluster");
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(&std::env::temp_dir())).await??;
    println!("  cluster on port {} (socket in {})", cluster.port, cluster.socket_dir());
    let rows = args.rows.max(100);
    cluster.psql("postgres", "create database demo")?;
    cluster.psql("demo", SCHEMA)?;
    cluster.psql(
        "demo",
        &format!(
            "insert into shop.customers (name, email, balance, created)
               select 'customer ' || g, 'c' || g || '@example.com', (g % 1000) * 1.25, now() - g * interval '1 minute'
               from generate_series(1, {c}) g;
             insert into shop.orders (customer_id, total, items, placed)
               select 1 + g % {c}, (g % 500) + 0.99, jsonb_build_object('sku', 'A' || (g % 97), 'qty', 1 + g % 5),
                      now() - g * interval '1 second'
               from generate_series(1, {rows}) g;
             insert into public.attachments select g, 'file' || g, decode(repeat(md5(g::text), 64), 'hex')
               from generate_series(1, 500) g;",
            c = rows / 10
        ),
    )?;

    let env = |name: &str| match name {
        "DEMO_PGHOST" => Some(cluster.socket_dir()),
        "DEMO_PGPORT" => Some(cluster.port.to_string()),
        "DEMO_REPOSITORY" => Some(repository_dir.to_string_lossy().into_owned()),
        _ => None,
    };
    let config = Config::from_yaml(EMBEDDED_DEMO, "embedded demo config", &env)?;
    let repository = Repository::open(&config).await?;
    let ctx = JobContext {
        config: std::sync::Arc::new(config),
        repository: std::sync::Arc::new(repository),
        clock: std::sync::Arc::new(crate::clock::SystemClock),
        cancel: cancel.clone(),
        progress: Default::default(),
        interactive: std::io::stderr().is_terminal(),
    };
    let config = &ctx.config;

    println!("backing up database demo into {}", repository_dir.display());
    let subject = Subject::Database(config.databases[0].name.clone());
    let run = crate::jobs::run(JobSpec::new(JobKind::FullBackup, subject.clone(), Trigger::Manual), &ctx).await;
    let m = match (run.outcome, run.produced) {
        (RunOutcome::Success, Produced::Backup(m)) => m,
        (RunOutcome::Failed(e), _) => return Err(anyhow::Error::new(JobFailed(e))),
        (other, _) => bail!("the backup {other}"),
    };
    let tables = m.dump().map(|d| d.tables.clone()).unwrap_or_default();
    println!(
        "  backup {}: {} tables, {} bytes raw, {} bytes stored, sha256 {}",
        m.id,
        tables.len(),
        m.data.raw_bytes,
        m.data.stored_bytes,
        &m.data.raw_sha256[..16]
    );

    println!("restoring it into a new database demo_restored");
    let rreq = RestoreRequest {
        target_database: "demo_restored".into(),
        target: TargetOverride::default(),
        create: true,
        jobs: 1,
        ..RestoreRequest::default()
    };
    let mut spec = JobSpec::new(JobKind::Restore, subject, Trigger::Manual);
    spec.params.select = Select::Id(m.id.clone());
    spec.params.restore = Some(RestoreTo::Database(Box::new(rreq)));
    let run = crate::jobs::run(spec, &ctx).await;
    let report = match (run.outcome, run.produced) {
        (RunOutcome::Success, Produced::Restore(r)) => r,
        (RunOutcome::Failed(e), _) => return Err(anyhow::Error::new(JobFailed(e))),
        (other, _) => bail!("the restore {other}"),
    };
    println!(
        "  restored in {:.1}s; row counts of all {} tables match the backup",
        report.duration_seconds, report.tables_checked
    );

    let source = pg::connect(&config.databases[0].connection).await?;
    let restored = pg::connect(&config.databases[0].connection.with_dbname("demo_restored")).await?;
    for t in &tables {
        let a = pg::table_fingerprint(&source, &t.schema, &t.name).await?;
        let b = pg::table_fingerprint(&restored, &t.schema, &t.name).await?;
        if a != b {
            bail!("table {}.{} differs after the restore", t.schema, t.name);
        }
        println!("  {}.{}: {} rows, content identical (md5 {})", t.schema, t.name, t.rows, &a[..12]);
    }
    drop((source, restored));
    tokio::task::spawn_blocking(move || drop(cluster)).await.context("stopping the cluster")?;
    println!("demo passed: the backup restores to identical data. Repository kept in {}", repository_dir.display());
    Ok(ExitCode::SUCCESS)
}
