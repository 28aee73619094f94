//! Which part of a backup a restore brings back. `--schema` and `--table` (`name` or
//! `schema.name`) are checked against the backup's table of contents before anything happens,
//! translated to pg_restore's `--schema`/`--table` (which select by schema and by name
//! separately), and give the tables whose rows are counted afterwards and how much of the
//! archive pg_restore needs (it stops reading after the last data block it restores).

use crate::jobs::refuse;
use crate::pg::archive::{Relation, TableRows};
use crate::repo::Manifest;
use anyhow::{Context, Result};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// pg_restore `--schema` options.
    pub schemas: Vec<String>,
    /// pg_restore `--table` options.
    pub tables: Vec<String>,
    /// The tables whose row counts are compared after the restore.
    pub checked: Vec<TableRows>,
    /// Raw archive bytes pg_restore needs (`None`: all of them).
    pub stream_until: Option<u64>,
    /// What is restored, for messages (`schema sales`, `table public.orders`).
    pub restored: Vec<String>,
}

impl Selection {
    pub fn is_partial(&self) -> bool {
        !self.schemas.is_empty() || !self.tables.is_empty()
    }
}

/// The selection of `m` that `--schema schemas` and `--table tables` ask for; refuses (exit 2)
/// names the backup does not have, naming the closest ones it has.
pub fn resolve(m: &Manifest, schemas: &[String], tables: &[String]) -> Result<Selection> {
    let dump = m.dump().with_context(|| format!("{} is not a database backup", m.describe()))?;
    let relations: Vec<Relation> = if dump.relations.is_empty() {
        // backups before 0.2 recorded only the tables with data
        dump.tables
            .iter()
            .map(|t| Relation { schema: t.schema.clone(), name: t.name.clone(), kind: "table".into() })
            .collect()
    } else {
        dump.relations.clone()
    };
    if schemas.is_empty() && tables.is_empty() {
        return Ok(Selection { checked: dump.tables.clone(), ..Selection::default() });
    }
    let mut known_schemas: BTreeSet<&str> = dump.schemas.iter().map(String::as_str).collect();
    known_schemas.extend(relations.iter().map(|r| r.schema.as_str()));
    for s in schemas {
        if !known_schemas.contains(s.as_str()) {
            refuse!(
                "backup {} has no schema {s:?}{}: its schemas are {}; nothing was restored",
                m.id,
                closest(s, known_schemas.iter().copied()),
                list(known_schemas.iter())
            );
        }
    }
    let mut requested: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut qualified_schemas = BTreeSet::new();
    let mut names = BTreeSet::new();
    for arg in tables {
        let (schema, name) = match arg.split_once('.') {
            Some((s, n)) if !arg.starts_with('"') => (Some(unquote(s)), unquote(n)),
            _ => (None, unquote(arg)),
        };
        let hits: Vec<&Relation> = relations
            .iter()
            .filter(|r| r.name == name)
            .filter(|r| match &schema {
                Some(s) => &r.schema == s,
                None => schemas.is_empty() || schemas.contains(&r.schema),
            })
            .collect();
        if hits.is_empty() {
            let all = relations.iter().map(|r| format!("{}.{}", r.schema, r.name)).collect::<Vec<_>>();
            let within = match (&schema, schemas.is_empty()) {
                (Some(s), _) => format!(" in schema {s:?}"),
                (None, false) => format!(" in schema {}", list(schemas.iter())),
                (None, true) => String::new(),
            };
            refuse!(
                "backup {} has no table, view or sequence {arg:?}{within}{}; nothing was restored (`pgbackd cat ID | \
                 pg_restore --list` shows what it holds)",
                m.id,
                closest(arg, all.iter().map(String::as_str).chain(relations.iter().map(|r| r.name.as_str())))
            );
        }
        requested.extend(hits.iter().map(|r| (r.schema.as_str(), r.name.as_str())));
        if let Some(s) = schema {
            qualified_schemas.insert(s);
        }
        names.insert(name);
    }
    // what pg_restore will select with these options
    let mut n_args: BTreeSet<String> = schemas.iter().cloned().collect();
    n_args.extend(qualified_schemas);
    let effective: BTreeSet<(&str, &str)> = relations
        .iter()
        .filter(|r| n_args.is_empty() || n_args.contains(&r.schema))
        .filter(|r| names.is_empty() || names.contains(&r.name))
        .map(|r| (r.schema.as_str(), r.name.as_str()))
        .collect();
    if !tables.is_empty() && effective != requested {
        let extra: Vec<String> = effective.difference(&requested).map(|(s, n)| format!("{s}.{n}")).collect();
        let missing: Vec<String> = requested.difference(&effective).map(|(s, n)| format!("{s}.{n}")).collect();
        refuse!(
            "pg_restore selects tables by schema and by name separately, so this selection would {}: restore \
             these tables in separate runs; nothing was restored",
            if extra.is_empty() {
                format!("leave out {}", missing.join(", "))
            } else {
                format!("also restore {}", extra.join(", "))
            }
        );
    }
    let checked: Vec<TableRows> =
        dump.tables.iter().filter(|t| effective.contains(&(t.schema.as_str(), t.name.as_str()))).cloned().collect();
    let needed: BTreeSet<String> = checked.iter().map(|t| format!("{}.{}", t.schema, t.name)).collect();
    let stream_until = match dump.blocks.iter().rposition(|b| needed.contains(&b.key)) {
        Some(last) => dump.blocks.get(last + 1).map(|b| b.raw_offset),
        None => dump.blocks.first().map(|b| b.raw_offset),
    };
    let mut restored: Vec<String> = schemas.iter().map(|s| format!("schema {s}")).collect();
    if !tables.is_empty() {
        restored = effective.iter().map(|(s, n)| format!("{s}.{n}")).collect();
    }
    Ok(Selection {
        schemas: n_args.into_iter().collect(),
        tables: names.into_iter().collect(),
        checked,
        stream_until,
        restored,
    })
}

fn unquote(s: &str) -> String {
    match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => s.to_owned(),
    }
}

fn list<'a>(items: impl Iterator<Item = &'a (impl AsRef<str> + 'a + ?Sized)>) -> String {
    let items: Vec<&str> = items.map(AsRef::as_ref).collect();
    if items.is_empty() { "none".into() } else { items.join(", ") }
}

/// `; did you mean "x"?` for the nearest of `known`, if near enough.
fn closest<'a>(wanted: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (crate::config::reader::edit_distance(&wanted.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::archive::BlockStart;
    use crate::repo::manifest::Content;
    use crate::repo::{BackupKind, Subject};

    fn manifest() -> Manifest {
        let mut m = Manifest::for_tests(
            Subject::Database("shop".into()),
            "20261201T000000Z-full-000001",
            BackupKind::Full,
            chrono::Utc::now(),
        );
        let Content::Dump(d) = &mut m.content else { unreachable!() };
        let t = |s: &str, n: &str, rows| TableRows { schema: s.into(), name: n.into(), rows };
        d.tables = vec![
            t("public", "film", 10),
            t("public", "film_actor", 20),
            t("sales", "film", 5),
            t("sales", "orders", 7),
        ];
        let r = |s: &str, n: &str| Relation { schema: s.into(), name: n.into(), kind: "table".into() };
        d.relations = vec![r("public", "film"), r("public", "film_actor"), r("sales", "film"), r("sales", "orders")];
        d.schemas = vec!["empty".into(), "public".into(), "sales".into()];
        let b = |k: &str, o| BlockStart { key: k.into(), raw_offset: o };
        d.blocks =
            vec![b("public.film", 100), b("public.film_actor", 200), b("sales.film", 300), b("sales.orders", 400)];
        m
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_are_checked_against_the_backup() {
        let m = manifest();
        let s = resolve(&m, &[], &strings(&["public.film_actor"])).unwrap();
        assert_eq!((s.schemas.clone(), s.tables.clone()), (strings(&["public"]), strings(&["film_actor"])));
        assert_eq!(s.checked.len(), 1);
        assert_eq!(s.stream_until, Some(300), "the archive ends for pg_restore after film_actor's block");
        // an unqualified name in two schemas restores both, as pg_restore does
        let s = resolve(&m, &[], &strings(&["film"])).unwrap();
        assert_eq!(s.checked.len(), 2);
        assert_eq!(s.stream_until, Some(400));
        let s = resolve(&m, &strings(&["sales"]), &[]).unwrap();
        assert_eq!(s.checked.iter().map(|t| t.rows).sum::<u64>(), 12);
        assert_eq!(s.stream_until, None, "sales.orders is the last block");
        // a schema without tables is a schema of the backup
        assert!(resolve(&m, &strings(&["empty"]), &[]).unwrap().checked.is_empty());
        for (schemas, tables, says) in [
            (vec![], vec!["no_such_table"], "no table, view or sequence \"no_such_table\""),
            (vec![], vec!["public.orders"], "in schema \"public\""),
            (vec!["pubic"], vec![], "no schema \"pubic\" (did you mean \"public\"?)"),
            (vec![], vec!["film_actr"], "(did you mean \"film_actor\"?)"),
            (vec![], vec!["public.film", "sales.orders"], "would also restore sales.film"),
        ] {
            let e = resolve(&m, &strings(&schemas), &strings(&tables)).unwrap_err();
            assert!(crate::jobs::Refused::in_chain(&e), "{e:#}");
            assert!(format!("{e:#}").contains(says), "{tables:?}: {e:#}");
        }
    }
}
