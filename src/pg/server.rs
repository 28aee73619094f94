//! A PostgreSQL server pgbackd runs on a data directory it restored (`restore-cluster --start`,
//! the recovery drill): started with `pg_ctl` (the postmaster in its own session, its output in a
//! log file), as the `postgres` OS user when pgbackd runs as root (PostgreSQL refuses root), and
//! queried with psql over the unix socket its settings name.

use crate::process::{ChildSpec, run_capture};
use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};

/// The server binaries for a cluster of `major`: `/usr/lib/postgresql/<major>/bin` when it is
/// there (a data directory only runs under its own major version), else where the tools are.
pub fn bin_dir_for(major: u32, tools: &super::Tools) -> PathBuf {
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if debian.join("postgres").exists() {
        return debian;
    }
    tools.path("pg_ctl").parent().map(Path::to_owned).unwrap_or_default()
}

/// Whether the server must run as the `postgres` OS user (pgbackd runs as root).
pub fn runs_as_postgres() -> bool {
    rustix::process::geteuid().is_root()
}

/// Gives `path` (recursively) to the `postgres` OS user when pgbackd runs as root.
pub async fn give_to_postgres(path: &Path) -> Result<()> {
    if !runs_as_postgres() {
        return Ok(());
    }
    let spec = ChildSpec::new("chown").args(["-R", "postgres:postgres"]).arg(path);
    run_capture(&spec, 4096).await.map_err(|e| {
        anyhow!(e).context(format!(
            "giving {} to the postgres OS user (pgbackd runs as root; the server cannot)",
            path.display()
        ))
    })?;
    Ok(())
}

/// `program` of the server binaries in `bin`, run as the server's OS user, without the caller's
/// libpq settings (they must not redirect psql elsewhere).
fn server_command(bin: &Path, program: &str) -> ChildSpec {
    let path = bin.join(program);
    if runs_as_postgres() {
        ChildSpec::new("runuser").args(["-u", "postgres", "--"]).arg(path)
    } else {
        ChildSpec::new(path)
    }
    .env_remove("PGHOST")
    .env_remove("PGPORT")
    .env_remove("PGDATABASE")
    .env_remove("PGSERVICE")
}

/// Stops whatever server runs in `data` at once (`pg_ctl -m immediate stop`, for a server that is
/// thrown away; nothing when none runs).
pub async fn kill_at(bin: &Path, data: &Path) {
    let spec = server_command(bin, "pg_ctl").arg("-D").arg(data).args(["-m", "immediate", "-w", "stop"]);
    let _ = run_capture(&spec, 64 * 1024).await;
}

/// A server on a data directory (not necessarily running).
#[derive(Debug, Clone)]
pub struct Server {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
    /// Its port and the socket directory psql reaches it through (its own settings, unless the
    /// start options set them).
    pub port: u16,
    pub socket_dir: String,
    /// `-c name=value` options of this start only.
    pub options: Vec<(String, String)>,
    /// The role psql connects as (the bootstrap superuser, usually `postgres`).
    pub user: String,
}

impl Server {
    /// The server of `data`, its port and socket directory as its configuration says
    /// (`postgres -C`), unless `options` set them.
    pub async fn new(bin: &Path, data: &Path, log: &Path, options: Vec<(String, String)>) -> Result<Server> {
        let mut s = Server {
            bin: bin.to_owned(),
            data: data.to_owned(),
            log: log.to_owned(),
            port: 5432,
            socket_dir: String::new(),
            options,
            user: "postgres".into(),
        };
        s.port = match s.option("port") {
            Some(p) => p.parse().with_context(|| format!("port {p:?} is not a port number"))?,
            None => s.setting("port").await?.parse().context("the restored configuration's port is not a number")?,
        };
        let dirs = match s.option("unix_socket_directories") {
            Some(d) => d.to_owned(),
            None => s.setting("unix_socket_directories").await?,
        };
        s.socket_dir = dirs.split(',').map(str::trim).find(|d| !d.is_empty()).unwrap_or("/tmp").to_owned();
        Ok(s)
    }

    fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A program of the server's binaries, run as the server's OS user.
    pub fn command(&self, program: &str) -> ChildSpec {
        server_command(&self.bin, program)
    }

    /// One setting as the server would run with it (`postgres -D DATA -C NAME`).
    pub async fn setting(&self, name: &str) -> Result<String> {
        let spec = self.command("postgres").arg("-D").arg(&self.data).arg("-C").arg(name);
        let out = run_capture(&spec, 64 * 1024).await.map_err(|e| {
            anyhow!(e).context(format!("reading {name} of the restored configuration in {}", self.data.display()))
        })?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    /// Starts the server in the background (`pg_ctl start` without waiting: recovery can take
    /// long; [`Server::running`] and [`Server::query`] tell how it goes).
    pub async fn start(&self) -> Result<()> {
        let opts: Vec<String> =
            self.options.iter().map(|(k, v)| format!("-c {k}='{}'", v.replace('\'', "''"))).collect();
        let mut spec = self.command("pg_ctl").arg("-D").arg(&self.data).arg("-l").arg(&self.log).arg("-W");
        if !opts.is_empty() {
            spec = spec.arg("-o").arg(opts.join(" "));
        }
        run_capture(&spec.arg("start"), 64 * 1024)
            .await
            .map_err(|e| anyhow!(e).context(format!("pg_ctl could not start the server in {}", self.data.display())))?;
        Ok(())
    }

    /// Whether the postmaster runs (`pg_ctl status`).
    pub async fn running(&self) -> bool {
        run_capture(&self.command("pg_ctl").arg("-D").arg(&self.data).arg("status"), 64 * 1024).await.is_ok()
    }

    /// Runs `sql` with psql as the bootstrap superuser over the socket: its unaligned output.
    pub async fn query(&self, db: &str, sql: &str) -> Result<String> {
        let spec = self
            .command("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(&self.user)
            .args(["-d", db, "-c", sql]);
        let out = run_capture(&spec, 64 << 20).await.map_err(|e| anyhow!(e).context(format!("psql {sql:?}")))?;
        Ok(String::from_utf8_lossy(&out).trim_end().to_owned())
    }

    /// Stops the server (`fast`: sessions ended, a clean shutdown checkpoint).
    pub async fn stop(&self) -> Result<()> {
        let spec = self.command("pg_ctl").arg("-D").arg(&self.data).args(["-m", "fast", "-w", "-t", "120", "stop"]);
        run_capture(&spec, 64 * 1024)
            .await
            .map_err(|e| anyhow!(e).context(format!("stopping the server in {}", self.data.display())))?;
        Ok(())
    }

    /// A libpq connection to `db` of the server, over its socket.
    pub fn connection(&self, db: &str) -> crate::config::Connection {
        crate::config::Connection {
            host: self.socket_dir.clone(),
            port: self.port,
            user: self.user.clone(),
            password: None,
            dbname: db.to_owned(),
        }
    }

    /// The end of the server's log (for errors).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Fails unless the server runs: with the log's end.
    pub async fn ensure_running(&self, doing: &str) -> Result<()> {
        if self.running().await {
            return Ok(());
        }
        bail!("the server in {} stopped {doing}; its log ends:\n{}", self.data.display(), self.log_tail(15))
    }
}
