//! Integration tests: the real binary against a real PostgreSQL cluster.

mod backup_restore;
mod config_files;
mod failures;
mod harness;
