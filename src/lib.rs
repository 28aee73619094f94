//! pgbackd: PostgreSQL backups you can prove restore.
//!
//! # Layout
//! - [`config`]: the YAML file, validated into typed values (every error at once).
//! - [`schedule`]: cron expression + timezone -> next run; pure.
//! - [`daemon`]: `pgbackd run`: scheduler loop, overlap and conflict rules, signals, status.
//! - [`jobs`]: backup, restore and job reports, shared by the CLI and the daemon.
//! - [`pg`]: pg_dump / pg_restore / pg_dumpall arguments, server queries, the archive row counter.
//! - [`process`]: the one child-process wrapper (process group, stderr tail, terminate).
//! - [`pipeline`]: segment -> zstd frames (deltas for incrementals) -> SHA-256 -> storage, and back.
//! - [`repo`]: repository layout and manifests; the only code that knows key names.
//! - [`storage`]: storage targets behind one trait (local directory).
//! - [`cli`], [`progress`], [`telemetry`], [`demo`]: presentation.

pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod demo;
pub mod fileset;
pub mod jobs;
pub mod notify;
pub mod pg;
pub mod pipeline;
pub mod process;
pub mod progress;
pub mod repo;
pub mod schedule;
pub mod secret;
pub mod status;
pub mod storage;
pub mod tasks;
pub mod telemetry;
