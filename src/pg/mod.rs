//! PostgreSQL: client tools (pg_dump, pg_restore, pg_dumpall, psql), their arguments and
//! environment, and the few server queries pgbackd needs (versions, sizes, row counts).

pub mod archive;
pub mod basebackup;
pub mod cluster;
pub mod database;
pub mod server;

use crate::config::Connection;
use crate::process::{ChildSpec, run_capture};
use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Where the client tools live.
#[derive(Debug, Clone)]
pub struct Tools {
    bin_dir: Option<PathBuf>,
}

impl Tools {
    /// `pg_bin_dir` from the config, else the newest `/usr/lib/postgresql/*/bin`, else `$PATH`.
    pub fn locate(configured: Option<&Path>) -> Tools {
        if let Some(dir) = configured {
            return Tools { bin_dir: Some(dir.to_owned()) };
        }
        Tools { bin_dir: newest_debian_bin_dir() }
    }

    /// The tools for dumping or base-backing-up a server of major `server_major`: `pg_bin_dir`
    /// when configured, else `/usr/lib/postgresql/<server_major>/bin` when installed (an image
    /// with clients 13-17 dumps each server with its own version), else the oldest installed
    /// major above it, else the newest (whose version check then says what to install).
    pub fn matching(configured: Option<&Path>, server_major: u32) -> Tools {
        if let Some(dir) = configured {
            return Tools { bin_dir: Some(dir.to_owned()) };
        }
        Tools { bin_dir: pick_bin_dir(&debian_bin_dirs(), server_major) }
    }

    pub fn path(&self, program: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(program),
            None => find_in_path(program).unwrap_or_else(|| PathBuf::from(program)),
        }
    }

    pub fn bin_dir(&self) -> Option<&Path> {
        self.bin_dir.as_deref()
    }

    /// The major version and full version text of a tool (`pg_dump (PostgreSQL) 15.18 ...`).
    pub async fn version(&self, program: &str) -> Result<(u32, String)> {
        let out = run_capture(&ChildSpec::new(self.path(program)).arg("--version"), 4096).await?;
        let text = String::from_utf8_lossy(&out).trim().to_owned();
        let version = text
            .split_whitespace()
            .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .with_context(|| format!("cannot read the version of {program} from {text:?}"))?;
        let major: u32 = version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("cannot read the version of {program} from {text:?}"))?;
        Ok((major, version.to_owned()))
    }
}

fn newest_debian_bin_dir() -> Option<PathBuf> {
    debian_bin_dirs().pop().map(|(_, p)| p)
}

/// Of `dirs` (oldest first): the server's own major, else the oldest above it, else the newest.
fn pick_bin_dir(dirs: &[(u32, PathBuf)], server_major: u32) -> Option<PathBuf> {
    dirs.iter().find(|(m, _)| *m >= server_major).or(dirs.last()).map(|(_, p)| p.clone())
}

/// The installed `/usr/lib/postgresql/<major>/bin` that have pg_dump, oldest first.
fn debian_bin_dirs() -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else { return Vec::new() };
    let mut dirs: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_dump").exists().then_some((major, bin))
        })
        .collect();
    dirs.sort();
    dirs
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
}

/// Environment that points a libpq tool at `conn`; the password goes into a private password
/// file (see [`ChildSpec::password`]), never into argv or the environment.
pub fn conn_env(spec: ChildSpec, conn: &Connection) -> ChildSpec {
    let mut spec = spec
        .env("PGHOST", &conn.host)
        .env("PGPORT", conn.port.to_string())
        .env("PGUSER", &conn.user)
        .env("PGAPPNAME", "pgbackd")
        .env_remove("PGSERVICE")
        .env_remove("PGDATABASE");
    if let Some(pw) = &conn.password {
        spec = spec.password(pw);
    }
    spec
}

/// A `--dbname` value naming a database safely (a name holding `=` would otherwise be read as a
/// connection string).
pub fn dbname_arg(name: &str) -> String {
    format!("--dbname=dbname='{}'", name.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Connects to the server's maintenance database (`postgres`, else `template1`).
pub async fn connect_admin(conn: &Connection) -> Result<Client> {
    match connect(&conn.with_dbname("postgres")).await {
        Ok(c) => Ok(c),
        Err(first) => connect(&conn.with_dbname("template1")).await.map_err(|_| first),
    }
}

/// Drops database `name` on `conn`'s server, disconnecting its sessions (PostgreSQL 13+).
pub async fn drop_database(conn: &Connection, name: &str) -> Result<()> {
    let admin = connect_admin(conn).await?;
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    match admin.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        // before PostgreSQL 13 there is no FORCE
        Err(_) => admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(name)))
            .await
            .with_context(|| format!("dropping the database {name}")),
    }
}

/// Connects to `conn` (password from the config, else PGPASSWORD, else ~/.pgpass).
pub async fn connect(conn: &Connection) -> Result<Client> {
    let mut cfg = tokio_postgres::Config::new();
    if conn.host.starts_with('/') {
        cfg.host_path(&conn.host);
    } else {
        cfg.host(&conn.host);
    }
    cfg.port(conn.port)
        .user(&conn.user)
        .dbname(&conn.dbname)
        .application_name("pgbackd")
        .connect_timeout(Duration::from_secs(15));
    let password = conn
        .password
        .as_ref()
        .map(|p| p.expose().to_owned())
        .or_else(|| std::env::var("PGPASSWORD").ok())
        .or_else(|| pgpass_lookup(conn));
    let password_given = password.is_some();
    if let Some(pw) = password {
        cfg.password(pw);
    }
    let (client, connection) = cfg.connect(NoTls).await.map_err(|e| explain_connect(&e, conn, password_given))?;
    crate::tasks::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Why a connection failed, in words, with what to do about it: the server's SQLSTATE for a
/// refusal (28P01 bad password, 28000 no such role or no pg_hba.conf entry, 3D000 no such
/// database, 53300 too many connections, 57P03 starting or stopping), else the network cause.
pub fn explain_connect(e: &tokio_postgres::Error, conn: &Connection, password_given: bool) -> anyhow::Error {
    use tokio_postgres::error::SqlState;
    let at = format!("cannot connect to PostgreSQL at {conn}");
    if let Some(db) = e.as_db_error() {
        let msg = db.message();
        let hint = match db.code() {
            c if *c == SqlState::INVALID_PASSWORD && password_given => {
                "the password is wrong: check database.password (or PGPASSWORD, ~/.pgpass) against the role's password".into()
            }
            c if *c == SqlState::INVALID_PASSWORD => {
                "the server wants a password and none was given: set database.password (e.g. ${PGPASSWORD}) or add the role to ~/.pgpass".into()
            }
            c if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION && msg.contains("does not exist") => {
                format!("create the role (CREATE ROLE {} LOGIN) or fix database.username", conn.user)
            }
            c if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                "no pg_hba.conf line lets this role in from this host: add one on the server and reload it".into()
            }
            c if *c == SqlState::INVALID_CATALOG_NAME => {
                format!("check database.database, or create it (createdb {})", conn.dbname)
            }
            c if *c == SqlState::TOO_MANY_CONNECTIONS => {
                "the server is at max_connections: retry later, or raise max_connections".into()
            }
            c if *c == SqlState::CANNOT_CONNECT_NOW => "the server is starting up or shutting down: retry in a moment".into(),
            _ => String::new(),
        };
        return if hint.is_empty() { anyhow!("{at}: {msg}") } else { anyhow!("{at}: {msg}; {hint}") };
    }
    let mut cause: &dyn std::error::Error = e;
    let mut io = None;
    while let Some(next) = cause.source() {
        cause = next;
        io = io.or_else(|| next.downcast_ref::<std::io::Error>());
    }
    let text = cause.to_string();
    let local = conn.host.starts_with('/');
    let hint = match io.map(|i| i.kind()) {
        Some(std::io::ErrorKind::ConnectionRefused) | Some(std::io::ErrorKind::NotFound) if local => format!(
            "no server listens on the socket in {}: start PostgreSQL, or check database.host and database.port",
            conn.host
        ),
        Some(std::io::ErrorKind::ConnectionRefused) => {
            "nothing listens there: start PostgreSQL, or check database.host and database.port (and listen_addresses on the server)".into()
        }
        Some(std::io::ErrorKind::TimedOut) => {
            "no answer within 15 s: check that the host is up and that no firewall drops the port".into()
        }
        Some(std::io::ErrorKind::PermissionDenied) => format!("this user may not open the socket in {}", conn.host),
        _ if text.contains("lookup address") || text.contains("Name or service not known") => {
            format!("the host name {} does not resolve: check database.host", conn.host)
        }
        _ if e.to_string().contains("timeout") || text.contains("timed out") => {
            "no answer within 15 s: check that the host is up and that no firewall drops the port".into()
        }
        _ => String::new(),
    };
    if hint.is_empty() { anyhow!("{at}: {text}") } else { anyhow!("{at}: {text}; {hint}") }
}

/// A PostgreSQL tool's failure, with what to do when its stderr names a cause an operator fixes
/// (missing privileges, a lock held by another session, a statement timeout, too few lock slots,
/// a server that went away). Other errors pass unchanged.
pub fn explain_tool_failure(e: crate::process::ProcessError, conn: &Connection) -> anyhow::Error {
    let hint = match &e {
        crate::process::ProcessError::Failed { stderr_tail, .. } => stderr_hint(stderr_tail, &conn.user),
        _ => None,
    };
    match hint {
        Some(h) => anyhow!("{e}\nwhat to do: {h}"),
        None => anyhow!(e),
    }
}

fn stderr_hint(tail: &str, user: &str) -> Option<String> {
    let has = |s: &str| tail.contains(s);
    Some(if has("permission denied for") || has("must be owner of") {
        format!(
            "the role {user} may not read everything it must dump: GRANT pg_read_all_data TO {user} (PostgreSQL 14+), \
             or connect as the owner or a superuser"
        )
    } else if has("could not obtain lock") || has("lock timeout") {
        "another session holds a conflicting lock (an ALTER or DROP running?): retry when it is done".into()
    } else if has("statement timeout") {
        format!("a statement_timeout stopped it: ALTER ROLE {user} SET statement_timeout = 0")
    } else if has("max_locks_per_transaction") {
        "pg_dump locks every table: raise max_locks_per_transaction on the server (and restart it)".into()
    } else if has("server closed the connection unexpectedly") || has("terminating connection") {
        "the server ended the session (a restart, a crash, pg_terminate_backend or idle_session_timeout): see its log"
            .into()
    } else if has("No space left on device") {
        "the machine pgbackd runs on is out of disk space for temporary files: free some".into()
    } else {
        return None;
    })
}

/// Looks `conn` up in the password file libpq would use (PGPASSFILE or ~/.pgpass).
fn pgpass_lookup(conn: &Connection) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let host = if conn.host.starts_with('/') { "localhost" } else { conn.host.as_str() };
    let port = conn.port.to_string();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let fields = split_pgpass(line);
        if fields.len() != 5 {
            return None;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        (m(&fields[0], host) && m(&fields[1], &port) && m(&fields[2], &conn.dbname) && m(&fields[3], &conn.user))
            .then(|| fields[4].clone())
    })
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().expect("non-empty").push(n);
                }
            }
            ':' => out.push(String::new()),
            c => out.last_mut().expect("non-empty").push(c),
        }
    }
    out
}

/// Facts about the server and database recorded in each manifest.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version_num: u32,
    pub version: String,
    pub database_size: u64,
}

impl ServerInfo {
    pub fn major(&self) -> u32 {
        if self.version_num >= 100000 { self.version_num / 10000 } else { self.version_num / 100 }
    }
}

pub async fn server_info(client: &Client) -> Result<ServerInfo> {
    let row = client
        .query_one(
            "select current_setting('server_version_num')::int, current_setting('server_version'), \
             pg_database_size(current_database())",
            &[],
        )
        .await
        .context("querying the server version and database size")?;
    let num: i32 = row.get(0);
    let size: i64 = row.get(2);
    Ok(ServerInfo { version_num: num as u32, version: row.get(1), database_size: size as u64 })
}

/// Refuses a pg_dump older than the server (it cannot dump it), with what to do instead.
pub fn check_dump_version(dump_major: u32, dump_version: &str, server: &ServerInfo, tools: &Tools) -> Result<()> {
    if dump_major < server.major() {
        let dir = tools.bin_dir().map(|d| d.display().to_string()).unwrap_or_else(|| "$PATH".into());
        bail!(
            "pg_dump {dump_version} (from {dir}) cannot dump PostgreSQL {} (server {}): install \
             postgresql-client-{} (e.g. from the PGDG apt repository) or set pg_bin_dir to the bin \
             directory of a pg_dump of version {} or newer",
            server.major(),
            server.version,
            server.major(),
            server.major()
        );
    }
    Ok(())
}

pub async fn database_exists(client: &Client, name: &str) -> Result<bool> {
    let row = client
        .query_one("select exists(select 1 from pg_database where datname = $1)", &[&name])
        .await
        .context("checking whether the target database exists")?;
    Ok(row.get(0))
}

/// Number of user objects (tables, views, sequences, functions, types) outside system schemas.
pub async fn user_object_count(client: &Client) -> Result<i64> {
    let row = client
        .query_one(
            "select (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                     where n.nspname not in ('pg_catalog','information_schema') and n.nspname not like 'pg_toast%' \
                       and n.nspname not like 'pg_temp%') \
                  + (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace \
                     where n.nspname not in ('pg_catalog','information_schema')) \
                  + (select count(*) from pg_namespace where nspname not in ('public','pg_catalog','information_schema') \
                       and nspname not like 'pg_toast%' and nspname not like 'pg_temp%')",
            &[],
        )
        .await
        .context("checking whether the target database is empty")?;
    Ok(row.get(0))
}

pub async fn create_database(client: &Client, name: &str) -> Result<()> {
    client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
        .await
        .with_context(|| format!("creating database {name:?}"))
}

/// The row count of each of `tables` (`None`: the table is not there), counted over up to `jobs`
/// connections to `conn` at once, a few statements per connection (one round trip per hundred
/// tables, not two per table).
pub async fn count_rows(conn: &Connection, tables: &[(String, String)], jobs: usize) -> Result<Vec<Option<u64>>> {
    let client = connect(conn).await?;
    let (schemas, names): (Vec<&str>, Vec<&str>) = tables.iter().map(|(s, n)| (s.as_str(), n.as_str())).unzip();
    let present: std::collections::HashSet<(String, String)> = client
        .query(
            "select n.nspname::text, c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             join unnest($1::text[], $2::text[]) as w(s, t) on w.s = n.nspname and w.t = c.relname",
            &[&schemas, &names],
        )
        .await
        .context("looking up the restored tables")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let wanted: Vec<usize> = (0..tables.len()).filter(|&i| present.contains(&tables[i])).collect();
    let lanes = jobs.clamp(1, 8).min(wanted.len().max(1));
    let mut clients = vec![client];
    for _ in 1..lanes {
        clients.push(connect(conn).await?);
    }
    // lane k counts every lanes-th table, in statements of up to 100 tables
    let counted = futures_util::future::join_all(clients.iter().enumerate().map(|(k, client)| {
        let mine: Vec<usize> = wanted.iter().copied().skip(k).step_by(lanes).collect();
        async move {
            let mut out = Vec::new();
            for chunk in mine.chunks(100) {
                let sql = chunk
                    .iter()
                    .map(|&i| {
                        let (s, t) = &tables[i];
                        format!("select {i}::int, count(*) from only {}.{}", quote_ident(s), quote_ident(t))
                    })
                    .collect::<Vec<_>>()
                    .join(" union all ");
                for row in client.query(&sql, &[]).await.context("counting the restored rows")? {
                    let (i, n): (i32, i64) = (row.get(0), row.get(1));
                    out.push((i as usize, n as u64));
                }
            }
            anyhow::Ok(out)
        }
    }))
    .await;
    let mut result = vec![None; tables.len()];
    for lane in counted {
        for (i, n) in lane? {
            result[i] = Some(n);
        }
    }
    Ok(result)
}

/// md5 of a table's rows in a stable order: equal fingerprints mean equal content.
pub async fn table_fingerprint(client: &Client, schema: &str, table: &str) -> Result<String> {
    let sql = format!(
        "select md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) from only {}.{} t",
        quote_ident(schema),
        quote_ident(table)
    );
    let row = client.query_one(&sql, &[]).await.with_context(|| format!("fingerprinting {schema}.{table}"))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_is_dumped_by_its_own_major_when_installed() {
        let dirs: Vec<(u32, PathBuf)> =
            [13, 15, 17].iter().map(|m| (*m, PathBuf::from(format!("/usr/lib/postgresql/{m}/bin")))).collect();
        let pick = |m| pick_bin_dir(&dirs, m).unwrap().display().to_string();
        assert_eq!(pick(13), "/usr/lib/postgresql/13/bin");
        assert_eq!(pick(14), "/usr/lib/postgresql/15/bin", "the oldest that can dump it");
        assert_eq!(pick(17), "/usr/lib/postgresql/17/bin");
        assert_eq!(pick(18), "/usr/lib/postgresql/17/bin", "the newest; its version check names what to install");
        assert_eq!(pick_bin_dir(&[], 15), None);
    }

    #[test]
    fn pgpass_fields_unescape() {
        assert_eq!(split_pgpass(r"h:5432:db:u:pa\:ss\\"), vec!["h", "5432", "db", "u", r"pa:ss\"]);
    }

    #[test]
    fn dbname_is_quoted() {
        assert_eq!(dbname_arg("a'b=c"), r"--dbname=dbname='a\'b=c'");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
