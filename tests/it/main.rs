//! Integration tests: the real binary against a real PostgreSQL cluster.

mod backup_restore;
mod ci;
mod compat;
mod config_files;
mod daemon;
mod deploy;
mod encryption;
mod failures;
mod fault_proxy;
mod files;
mod harness;
mod incremental;
mod notify;
mod pitr;
mod restores;
mod retention;
mod s3;
mod s3_servers;
mod sqlite;
mod status_page;
mod target_servers;
mod targets;
mod trust;
mod verify;
mod wal;
