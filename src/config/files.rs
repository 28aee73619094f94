//! `files:` and `configs:`: the source sets of file and configuration backups.

use super::node::Node;
use super::reader::{Ctx, MapReader, read_list};
use std::path::PathBuf;

/// One source set: paths backed up together as one archive.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSetConfig {
    pub name: String,
    pub paths: Vec<PathBuf>,
    /// Globs: matched against the whole path and the path below its source (`*.tmp`,
    /// `cache/**`, `/srv/app/uploads/tmp/**`).
    pub exclude: Vec<String>,
    /// Do not descend into other filesystems (mounts) below a source path.
    pub one_file_system: bool,
    /// Back up what symlinks point to instead of the links.
    pub follow_symlinks: bool,
    /// Every Nth backup archives every file; the others only what changed (1: always full).
    pub full_every: u32,
}

fn read_set(ctx: &Ctx<'_>, node: &Node, path: &str) -> Option<FileSetConfig> {
    let mut m = ctx.map(node, path)?;
    let name = m.req::<String>("name");
    let paths = m.req::<Vec<PathBuf>>("paths").unwrap_or_default();
    if paths.is_empty() {
        m.ctx().error(&m.child_path("paths"), "list at least one path", Some(m.loc()));
    }
    for p in &paths {
        if !p.is_absolute() {
            m.ctx().error(
                &m.child_path("paths"),
                format!("{} is not an absolute path", p.display()),
                Some(m.loc_of("paths")),
            );
        }
    }
    let exclude = m.opt::<Vec<String>>("exclude").unwrap_or_default();
    for g in &exclude {
        if let Err(e) = globset::Glob::new(g) {
            m.ctx().error(
                &m.child_path("exclude"),
                format!("{g:?} is not a valid glob: {e}"),
                Some(m.loc_of("exclude")),
            );
        }
    }
    let one_file_system = m.opt::<bool>("one_file_system").unwrap_or(false);
    let follow_symlinks = m.opt::<bool>("follow_symlinks").unwrap_or(false);
    let full_every = m.opt::<u32>("full_every").unwrap_or(7);
    if full_every == 0 {
        m.ctx().error(&m.child_path("full_every"), "must be 1 (always full) or more", Some(m.loc_of("full_every")));
    }
    m.finish();
    let name = name?;
    if name.is_empty() || name.contains('/') {
        ctx.error(&format!("{path}.name"), "a name without slashes is needed", Some(node.loc));
        return None;
    }
    Some(FileSetConfig { name, paths, exclude, one_file_system, follow_symlinks, full_every })
}

/// Reads `files:` or `configs:` (a list of source sets).
pub fn read_sets(top: &mut MapReader<'_, '_>, key: &str) -> Vec<FileSetConfig> {
    let ctx = top.ctx();
    let mut out: Vec<FileSetConfig> = Vec::new();
    let read = read_list(top, key, |ctx, node, path| Some((path.to_owned(), node.loc, read_set(ctx, node, path)?)));
    for (path, loc, s) in read {
        if out.iter().any(|o| o.name == s.name) {
            ctx.error(&format!("{path}.name"), format!("{:?} is used twice", s.name), Some(loc));
        } else {
            out.push(s);
        }
    }
    out
}
