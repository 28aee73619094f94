//! The schema check of a test restore: the restored database's `pg_dump --schema-only` compared
//! with the schema in the archive itself (`pg_restore --schema-only` of the backup), both without
//! owners and grants (the scratch server may lack the roles), as multisets of statements, so an
//! object that did not come back (or came back different) fails the test and is named.

use crate::config::Connection;
use crate::jobs::JobContext;
use crate::pg::{self, Tools};
use crate::pipeline::{Counter, RawCheck};
use crate::process::{ChildSpec, Running};
use crate::repo::Manifest;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::sync::Arc;

const OUT_FD: i32 = 5;

/// How the schema of the database at `restored` differs from the schema in backup `m`: each
/// statement missing from it or extra in it, at most `limit` of each.
pub async fn differences(ctx: &JobContext, m: &Manifest, restored: &Connection, limit: usize) -> Result<Vec<String>> {
    let tools = Tools::locate(ctx.config.pg_bin_dir.as_deref());
    let opts = ["--schema-only", "--no-owner", "--no-privileges"];
    // the archive's own schema: only the header and TOC are needed
    let (file, out) = output_file()?;
    let spec = ChildSpec::new(tools.path("pg_restore")).args(opts).arg(format!("--file=/proc/self/fd/{OUT_FD}"));
    let spec = spec.pass_fd(out, OUT_FD);
    let reader = ctx.repository.reader(m, None).await?;
    let until = m.dump().and_then(|d| d.blocks.first()).map(|b| b.raw_offset);
    super::stream_into(&spec, &reader, RawCheck::FramesOnly, until, &ctx.cancel, &Counter::default())
        .await
        .context("reading the schema in the archive (pg_restore --schema-only)")?;
    let archived = read_back(file)?;
    // the restored database's
    let (file, out) = output_file()?;
    let spec = ChildSpec::new(tools.path("pg_dump"))
        .args(opts)
        .arg(format!("--file=/proc/self/fd/{OUT_FD}"))
        .arg(pg::dbname_arg(&restored.dbname))
        .pass_fd(out, OUT_FD);
    let spec = pg::conn_env(spec, restored).stdout(false);
    Running::spawn(&spec)?.wait().await.context("dumping the restored schema (pg_dump --schema-only)")?;
    let dumped = read_back(file)?;
    Ok(compare(&archived, &dumped, limit))
}

fn output_file() -> Result<(std::fs::File, Arc<std::os::fd::OwnedFd>)> {
    let file = tempfile::tempfile().context("creating a temporary file in TMPDIR")?;
    let fd = Arc::new(std::os::fd::OwnedFd::from(file.try_clone()?));
    Ok((file, fd))
}

fn read_back(mut file: std::fs::File) -> Result<String> {
    file.rewind()?;
    let mut text = String::new();
    file.read_to_string(&mut text).context("reading the schema back")?;
    Ok(text)
}

/// The statements of a schema dump, without comments, session settings and blank lines (which
/// differ between a dump and a restore of it for no reason).
fn statements(sql: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut current = String::new();
    for line in sql.lines() {
        let t = line.trim_end();
        let skip = t.is_empty()
            || t.starts_with("--")
            || t.starts_with("SET ")
            || t.starts_with("SELECT pg_catalog.set_config(")
            || t.starts_with("\\restrict")
            || t.starts_with("\\unrestrict")
            || t.starts_with("\\connect");
        if skip && current.is_empty() {
            continue;
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(t);
        if t.ends_with(';') {
            *out.entry(std::mem::take(&mut current)).or_default() += 1;
        }
    }
    if !current.is_empty() {
        *out.entry(current).or_default() += 1;
    }
    out
}

fn compare(archived: &str, restored: &str, limit: usize) -> Vec<String> {
    compare_as(archived, restored, limit, ("missing from the restored database", "not in the backup"))
}

/// `pg_dump --schema-only --no-owner --no-privileges` of the database at `conn`.
pub async fn dump_schema(tools: &Tools, conn: &Connection) -> Result<String> {
    let (file, out) = output_file()?;
    let spec = ChildSpec::new(tools.path("pg_dump"))
        .args(["--schema-only", "--no-owner", "--no-privileges"])
        .arg(format!("--file=/proc/self/fd/{OUT_FD}"))
        .arg(pg::dbname_arg(&conn.dbname))
        .pass_fd(out, OUT_FD);
    let spec = pg::conn_env(spec, conn).stdout(false);
    Running::spawn(&spec)?
        .wait()
        .await
        .with_context(|| format!("dumping the schema of {conn} (pg_dump --schema-only)"))?;
    read_back(file)
}

/// How schema `right` differs from schema `left`, as statements: those only in `left` and those
/// only in `right`, each labelled, at most `limit` of each.
pub fn compare_as(archived: &str, restored: &str, limit: usize, labels: (&str, &str)) -> Vec<String> {
    let (a, r) = (statements(archived), statements(restored));
    let first_line = |s: &str| {
        let l = s.lines().next().unwrap_or_default();
        if s.lines().count() > 1 { format!("{l} ...") } else { l.to_owned() }
    };
    let mut missing: Vec<String> = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    for (s, n) in &a {
        if r.get(s).copied().unwrap_or(0) < *n {
            missing.push(first_line(s));
        }
    }
    for (s, n) in &r {
        if a.get(s).copied().unwrap_or(0) < *n {
            extra.push(first_line(s));
        }
    }
    let mut out = Vec::new();
    let total = (missing.len(), extra.len());
    out.extend(missing.into_iter().take(limit).map(|s| format!("{}: {s}", labels.0)));
    out.extend(extra.into_iter().take(limit).map(|s| format!("{}: {s}", labels.1)));
    if total.0 > limit || total.1 > limit {
        out.push(format!("({} statements missing, {} extra in all)", total.0, total.1));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_schema_in_another_order_matches_and_a_lost_view_is_named() {
        let archived = "--\n-- Name: t\n--\nSET x = 1;\nCREATE TABLE public.t (\n    id integer\n);\n\nCREATE VIEW public.v AS\n SELECT 1;\n";
        let restored = "SELECT pg_catalog.set_config('search_path', '', false);\nCREATE VIEW public.v AS\n SELECT 1;\nCREATE TABLE public.t (\n    id integer\n);\n";
        assert!(super::compare(archived, restored, 5).is_empty());
        let lost = "CREATE TABLE public.t (\n    id integer\n);\n";
        assert_eq!(
            super::compare(archived, lost, 5),
            vec!["missing from the restored database: CREATE VIEW public.v AS ..."]
        );
    }
}
