//! `sqlite:`: the SQLite database files backed up by the `sqlite_backup` job.

use super::node::Node;
use super::reader::{Ctx, Dur, MapReader, read_list};
use std::path::PathBuf;
use std::time::Duration;

/// One SQLite database file.
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteConfig {
    pub name: String,
    /// The database file (absolute).
    pub path: PathBuf,
    /// Every Nth backup is a full; the others are delta frames against the one before (1: always
    /// full). `backup.max_chain` and `backup.incremental_base` apply as to dumps.
    pub full_every: u32,
    /// How long a snapshot waits for writers holding the database (rollback-journal mode).
    pub busy_timeout: Duration,
}

fn read_one(ctx: &Ctx<'_>, node: &Node, path: &str) -> Option<SqliteConfig> {
    let mut m = ctx.map(node, path)?;
    let name = m.req::<String>("name");
    let file = m.req::<PathBuf>("path");
    if let Some(f) = &file
        && !f.is_absolute()
    {
        m.ctx().error(
            &m.child_path("path"),
            format!("{} is not an absolute path: give the database file's full path", f.display()),
            Some(m.loc_of("path")),
        );
    }
    let full_every = m.opt::<u32>("full_every").unwrap_or(7);
    if full_every == 0 {
        m.ctx().error(&m.child_path("full_every"), "must be 1 (always full) or more", Some(m.loc_of("full_every")));
    }
    let busy_timeout = m.opt::<Dur>("busy_timeout").map_or(Duration::from_secs(60), |d| d.0);
    if busy_timeout.is_zero() {
        m.ctx().error(
            &m.child_path("busy_timeout"),
            "0 would fail every backup that meets a writer: give e.g. 60s",
            Some(m.loc_of("busy_timeout")),
        );
    }
    m.finish();
    let name = name?;
    if name.is_empty() || name.contains('/') {
        ctx.error(&format!("{path}.name"), "a name without slashes is needed", Some(node.loc));
        return None;
    }
    Some(SqliteConfig { name, path: file?, full_every, busy_timeout })
}

/// Reads `sqlite:` (a list of database files).
pub fn read_sqlite(top: &mut MapReader<'_, '_>) -> Vec<SqliteConfig> {
    let ctx = top.ctx();
    let mut out: Vec<SqliteConfig> = Vec::new();
    let read =
        read_list(top, "sqlite", |ctx, node, path| Some((path.to_owned(), node.loc, read_one(ctx, node, path)?)));
    for (path, loc, s) in read {
        if out.iter().any(|o| o.name == s.name) {
            ctx.error(&format!("{path}.name"), format!("{:?} is used twice", s.name), Some(loc));
        } else if let Some(o) = out.iter().find(|o| o.path == s.path) {
            ctx.error(
                &format!("{path}.path"),
                format!("{} is already backed up as {:?}", s.path.display(), o.name),
                Some(loc),
            );
        } else {
            out.push(s);
        }
    }
    out
}
