//! `pgbackd demo`: the embedded default in action. Starts a throwaway PostgreSQL cluster, fills a
//! small shop database, takes one full backup into a local repository, restores it into a new
//! database, and proves the restore: row counts checked by pgbackd, then every table's content
//! compared (md5 of its ordered rows) with the original.

use crate::config::{Config, EMBEDDED_DEMO};
use crate::jobs::backup::{self, BackupRequest};
use crate::jobs::restore::{self, RestoreRequest, TargetOverride};
use crate::pg::{self, cluster::Cluster};
use crate::repo::manifest::Trigger;
use crate::repo::{BackupKind, Repository};
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
    let repository = std::env::current_dir()?.join(&args.dir).join("repository");
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
        "DEMO_REPOSITORY" => Some(repository.to_string_lossy().into_owned()),
        _ => None,
    };
    let config = Config::from_yaml(EMBEDDED_DEMO, "embedded demo config", &env)?;
    let repo = Repository::open(&config).await?;
    let interactive = std::io::stderr().is_terminal();

    println!("backing up database demo into {}", repository.display());
    let breq = BackupRequest {
        config: &config,
        database: &config.databases[0],
        kind: BackupKind::Full,
        trigger: Trigger::Manual,
        allow_shrink: false,
        interactive,
        progress: Default::default(),
        run_id: crate::jobs::report::new_run_id(),
    };
    let m = backup::run(&breq, &repo, cancel, chrono::Utc::now()).await?;
    println!(
        "  backup {}: {} tables, {} bytes raw, {} bytes stored, sha256 {}",
        m.id,
        m.tables.len(),
        m.data.raw_bytes,
        m.data.stored_bytes,
        &m.data.raw_sha256[..16]
    );

    println!("restoring it into a new database demo_restored");
    let rreq = RestoreRequest {
        target_database: "demo_restored".into(),
        target: TargetOverride::default(),
        create: true,
        clean: false,
        yes: false,
        jobs: 1,
        schemas: vec![],
        tables: vec![],
        no_owner: false,
        globals: false,
        dry_run: false,
        interactive,
    };
    let report = restore::run(&m, &rreq, &config, &repo, cancel).await?;
    if !report.mismatches.is_empty() {
        bail!("row counts differ after the restore: {:?}", report.mismatches);
    }
    println!(
        "  restored in {:.1}s; row counts of all {} tables match the backup",
        report.duration_seconds, report.tables_checked
    );

    let source = pg::connect(&config.databases[0].connection).await?;
    let restored = pg::connect(&config.databases[0].connection.with_dbname("demo_restored")).await?;
    for t in &m.tables {
        let a = pg::table_fingerprint(&source, &t.schema, &t.name).await?;
        let b = pg::table_fingerprint(&restored, &t.schema, &t.name).await?;
        if a != b {
            bail!("table {}.{} differs after the restore", t.schema, t.name);
        }
        println!("  {}.{}: {} rows, content identical (md5 {})", t.schema, t.name, t.rows, &a[..12]);
    }
    drop((source, restored));
    tokio::task::spawn_blocking(move || drop(cluster)).await.context("stopping the cluster")?;
    println!("demo passed: the backup restores to identical data. Repository kept in {}", repository.display());
    Ok(ExitCode::SUCCESS)
}
