//! pgbackd: PostgreSQL backups you can prove restore.
//!
//! # Layout
//! Lowest layer first; a module uses only those listed before it (docs/architecture.md).
//! - [`secret`], [`clock`], [`tasks`], [`units`]: leaves: redacted secrets, the clock, the one task
//!   tracker, sizes and durations in words.
//! - [`config`]: the YAML file, validated into typed values (every error at once).
//! - [`schedule`]: cron expression + timezone -> next run; pure.
//! - [`process`]: the one child-process wrapper (process group, stderr tail, terminate).
//! - [`storage`]: storage targets behind one trait (local directory, S3).
//! - [`crypto`]: age encryption and manifest authentication.
//! - [`pipeline`]: segment -> zstd frames (deltas for incrementals) -> age -> SHA-256 -> storage, and back.
//! - [`pg`]: pg_dump / pg_restore / pg_dumpall, server queries, the archive filter.
//! - [`fileset`]: the tar domain of file backups (archive writer, file restore).
//! - [`sqlite`]: SQLite files: the online-backup snapshot, its checks, placing a restored file.
//! - [`repo`]: the repository: keys, manifests, the catalog of every subject's backups.
//! - [`wal`]: the WAL archive: archive-push, archive-get, WAL file names and headers.
//! - [`notify`]: alerts and pings.
//! - [`jobs`]: `jobs::run(JobSpec, &JobContext) -> JobRun`, the one way every job runs.
//! - [`status`], [`telemetry`]: the status board; logging and what a finished run causes.
//! - [`daemon`]: `pgbackd run`: scheduler loop, overlap and conflict rules, signals, HTTP.
//! - [`cli`], [`progress`], [`demo`]: presentation.

pub mod clock;
pub mod secret;
pub mod tasks;
pub mod units;

pub mod config;
pub mod schedule;

pub mod process;
pub mod storage;

pub mod crypto;
pub mod pipeline;
pub mod progress;

pub mod fileset;
pub mod pg;
pub mod repo;
pub mod sqlite;
pub mod wal;

pub mod notify;

pub mod jobs;

pub mod status;
pub mod telemetry;

pub mod daemon;

pub mod cli;
pub mod demo;
