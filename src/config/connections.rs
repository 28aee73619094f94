//! Readers of connections: `database:` (the defaults), `databases:`, and the restore and test
//! restore targets; secrets given inline or as files.

use super::model::{Connection, DatabaseConfig, Pick, RestoreCheck, RestoreSettings, SpoolPlace, TestRestoreSettings};
use super::node::{self, Value};
use super::reader::{Ctx, MapReader};
use crate::secret::Secret;
use std::path::PathBuf;

/// Connection fields shared by `database:`, each `databases:` entry and `restore.target`.
#[derive(Debug, Clone, Default)]
pub(super) struct ConnFields {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<Secret>,
    dbname: Option<String>,
}

impl ConnFields {
    pub(super) fn or(self, base: &ConnFields) -> ConnFields {
        ConnFields {
            host: self.host.or_else(|| base.host.clone()),
            port: self.port.or(base.port),
            user: self.user.or_else(|| base.user.clone()),
            password: self.password.or_else(|| base.password.clone()),
            dbname: self.dbname.or_else(|| base.dbname.clone()),
        }
    }

    pub(super) fn into_connection(self, dbname: String) -> Connection {
        Connection {
            host: self.host.unwrap_or_else(|| "localhost".into()),
            port: self.port.unwrap_or(5432),
            user: self.user.unwrap_or_else(|| "postgres".into()),
            password: self.password,
            dbname,
        }
    }
}

fn read_conn_fields(m: &mut MapReader<'_, '_>) -> ConnFields {
    let host = m.opt::<String>("host");
    let port = m.opt::<u16>("port");
    if port == Some(0) {
        m.ctx().error(&m.child_path("port"), "must be between 1 and 65535", Some(m.loc_of("port")));
    }
    let user = m.opt::<String>("username");
    let password = read_secret(m, "password");
    let dbname = m.opt::<String>("database");
    ConnFields { host, port, user, password, dbname }
}

/// A secret given inline (`key: ${ENV}`) or as a file (`key_file: /run/secrets/x`).
pub(crate) fn read_secret(m: &mut MapReader<'_, '_>, key: &str) -> Option<Secret> {
    let file_key = format!("{key}_file");
    let inline = m.opt::<String>(key);
    let file = m.opt::<PathBuf>(&file_key);
    match (inline, file) {
        (Some(_), Some(_)) => {
            m.ctx().error(
                &m.child_path(&file_key),
                format!("give either {key} or {file_key}, not both"),
                Some(m.loc_of(&file_key)),
            );
            None
        }
        (Some(v), None) => Some(Secret::new(v)),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => {
                m.ctx().note_secret_file(&path);
                Some(Secret::new(text.trim_end_matches(['\n', '\r'])))
            }
            Err(e) => {
                m.ctx().error(
                    &m.child_path(&file_key),
                    format!("cannot read secret file {}: {e}", path.display()),
                    Some(m.loc_of(&file_key)),
                );
                None
            }
        },
        (None, None) => None,
    }
}

pub(super) fn read_connection_defaults(top: &mut MapReader<'_, '_>) -> ConnFields {
    match top.map("database") {
        Some(mut m) => {
            let f = read_conn_fields(&mut m);
            m.finish();
            f
        }
        None => ConnFields::default(),
    }
}

pub(super) fn read_databases(top: &mut MapReader<'_, '_>, defaults: &ConnFields) -> Vec<DatabaseConfig> {
    let ctx = top.ctx();
    let mut out: Vec<DatabaseConfig> = Vec::new();
    if let Some(dbname) = &defaults.dbname {
        out.push(DatabaseConfig { name: dbname.clone(), connection: defaults.clone().into_connection(dbname.clone()) });
    }
    if let Some(list) = top.node("databases") {
        let Value::Seq(items) = &list.value else {
            ctx.error("databases", format!("expected a list, found {}", list.value.kind()), Some(list.loc));
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("databases[{i}]");
            // A bare string is a database name on the default server.
            if let Value::Str(_) = item.value {
                if let Some(name) = ctx.read::<String>(item, &path) {
                    push_database(ctx, &mut out, &path, item.loc, name.clone(), defaults.clone().into_connection(name));
                }
                continue;
            }
            let Some(mut m) = ctx.map(item, &path) else {
                continue;
            };
            let name = m.req::<String>("name");
            let own = read_conn_fields(&mut m);
            let own_dbname = own.dbname.clone();
            let fields = own.or(defaults);
            let loc = m.loc();
            m.finish();
            if let Some(name) = name {
                let dbname = own_dbname.unwrap_or_else(|| name.clone());
                push_database(ctx, &mut out, &path, loc, name, fields.into_connection(dbname));
            }
        }
    }
    // a configuration for archive_command alone (a sidecar of the server), or of SQLite files
    // alone, names no database
    if out.is_empty() && !ctx.has_errors() && !top.has("wal") && !top.has("sqlite") {
        ctx.error(
            "database.database",
            "no database to back up: set database.database, list them under databases:, give only SQLite files \
             (sqlite:), or give only a wal: section to archive a cluster's WAL",
            Some(top.loc()),
        );
    }
    out
}

fn push_database(
    ctx: &Ctx<'_>,
    out: &mut Vec<DatabaseConfig>,
    path: &str,
    loc: node::Loc,
    name: String,
    connection: Connection,
) {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        ctx.error(
            &format!("{path}.name"),
            format!("{name:?} cannot be used as a repository directory name"),
            Some(loc),
        );
        return;
    }
    if out.iter().any(|d| d.name == name) {
        ctx.error(&format!("{path}.name"), format!("database {name:?} is listed twice"), Some(loc));
        return;
    }
    out.push(DatabaseConfig { name, connection });
}

/// A `target:` server (every connection field but the database, which `no_database` says where
/// it comes from); `Some(None)` when there is none, `None` when it is not a map.
fn read_server(m: &mut MapReader<'_, '_>, defaults: &ConnFields, no_database: &str) -> Option<Option<Connection>> {
    if !m.has("target") {
        return Some(None);
    }
    let mut t = m.map("target")?;
    let fields = read_conn_fields(&mut t);
    if fields.dbname.is_some() {
        t.ctx().error(&t.child_path("database"), no_database, Some(t.loc()));
    }
    t.finish();
    Some(Some(fields.or(defaults).into_connection(String::new())))
}

/// `wal.server`: the cluster's server; each field defaults to `database:`'s, the database to
/// `postgres`.
pub(super) fn read_wal_server(m: &mut MapReader<'_, '_>, defaults: &ConnFields) -> Option<Connection> {
    let fields = if m.has("server") {
        let mut t = m.map("server")?;
        let f = read_conn_fields(&mut t);
        t.finish();
        f.or(defaults)
    } else {
        defaults.clone()
    };
    let dbname = fields.dbname.clone().unwrap_or_else(|| "postgres".into());
    Some(fields.into_connection(dbname))
}

pub(super) fn read_restore(top: &mut MapReader<'_, '_>, defaults: &ConnFields) -> Option<RestoreSettings> {
    let mut m = top.map("restore")?;
    let safety_backup = m.opt::<bool>("safety_backup").unwrap_or(true);
    let jobs = m.opt::<u32>("jobs").unwrap_or(1).max(1);
    let spool = m.opt::<SpoolPlace>("spool").unwrap_or_default();
    let target =
        read_server(&mut m, defaults, "the target database name is given on the command line (--target-database)")?;
    m.finish();
    Some(RestoreSettings { safety_backup, jobs, target, spool })
}

pub(super) fn read_test_restore(top: &mut MapReader<'_, '_>, defaults: &ConnFields) -> Option<TestRestoreSettings> {
    let mut m = top.map("test_restore")?;
    let ctx = m.ctx();
    let pick = m.opt::<Pick>("pick").unwrap_or(Pick::Latest);
    let jobs = m.opt::<u32>("jobs").unwrap_or(2).max(1);
    let target = read_server(&mut m, defaults, "the scratch database is named by pgbackd (pgbackd_restore_...)")?;
    let mut checks = Vec::new();
    if let Some(list) = m.node("checks") {
        match &list.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{}[{i}]", m.child_path("checks"));
                    let Some(mut c) = ctx.map(item, &path) else { continue };
                    let name = c.req::<String>("name");
                    let sql = c.req::<String>("sql");
                    let expect = c.req::<String>("expect");
                    c.finish();
                    if let (Some(name), Some(sql), Some(expect)) = (name, sql, expect) {
                        checks.push(RestoreCheck { name, sql, expect });
                    }
                }
            }
            other => {
                ctx.error(&m.child_path("checks"), format!("expected a list, found {}", other.kind()), Some(list.loc))
            }
        }
    }
    m.finish();
    Some(TestRestoreSettings { pick, jobs, target, checks })
}
