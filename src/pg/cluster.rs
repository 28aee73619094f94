//! A throwaway PostgreSQL cluster: for the `demo` command and the integration tests.
//!
//! `initdb` refuses to run as root, so when pgbackd runs as root the server runs as the
//! `postgres` OS user (through `runuser`). The cluster listens on 127.0.0.1 and on a unix socket in
//! its own directory, trusts local connections, and is removed when dropped; a watchdog process
//! removes it too if the owning process dies without dropping it.

use crate::pg::Tools;
use anyhow::{Context, Result, bail};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// A group role of throwaway clusters: it and its members authenticate with a password over TCP
/// (scram-sha-256); every other connection is trusted. Tests running in parallel each make a
/// member with its own password.
pub const PASSWORD_ROLE: &str = "pgbackd_pw";

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Cluster {
    /// Creates and starts a cluster in a new directory under `parent` (e.g. the temp dir).
    pub fn start(parent: &Path) -> Result<Cluster> {
        Cluster::start_with(parent, &[])
    }

    /// [`Cluster::start`] with server settings (`archive_mode=on`, ...) in its postgresql.conf.
    pub fn start_with(parent: &Path, settings: &[(&str, &str)]) -> Result<Cluster> {
        let tools = Tools::locate(None);
        let bin = tools.bin_dir().map(Path::to_path_buf).context(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: install them (apt install postgresql)",
        )?;
        if !bin.join("initdb").exists() {
            bail!("{} has no initdb: install the PostgreSQL server package (apt install postgresql)", bin.display());
        }
        let as_postgres = is_root();
        let dir = tempfile::Builder::new().prefix("pgbackd-cluster-").tempdir_in(parent)?.keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        if as_postgres {
            chown_postgres(&dir)?;
        }
        let mut cluster = Cluster { dir, port: 0, bin, as_postgres };
        cluster.run_checked(
            &cluster.bin.join("initdb"),
            &[
                "-D",
                &cluster.data().to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        // one role must prove its password (over TCP), so tests see passwords reach the tools
        let hba = cluster.data().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).context("reading pg_hba.conf")?;
        std::fs::write(&hba, format!("host all +{PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n{rules}"))
            .context("writing pg_hba.conf")?;
        if !settings.is_empty() {
            let conf = cluster.data().join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).context("reading postgresql.conf")?;
            for (k, v) in settings {
                text.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
            }
            std::fs::write(&conf, text).context("writing postgresql.conf")?;
        }
        cluster.spawn_watchdog()?;
        // a port can be taken between choosing and binding it: retry a few times
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let opts = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=50",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let data = self.data();
        let args =
            ["-D", &data.to_string_lossy(), "-l", &log.to_string_lossy(), "-o", &opts, "-w", "-t", "60", "start"];
        self.run_checked(&self.bin.join("pg_ctl"), &args)
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Makes `path` the server's (when the server runs as the postgres OS user), for files its
    /// archive_command writes.
    pub fn give_to_server(&self, path: &Path) -> Result<()> {
        if self.as_postgres {
            let status =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status().context("running chown")?;
            anyhow::ensure!(status.success(), "cannot give {} to the postgres user", path.display());
        }
        Ok(())
    }

    /// The unix socket directory (use it as the host).
    pub fn socket_dir(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args).current_dir(&self.dir);
        cmd
    }

    fn run_checked(&self, program: &Path, args: &[&str]) -> Result<()> {
        let out = self
            .command(program, args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}{}",
                program.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                std::fs::read_to_string(self.dir.join("server.log"))
                    .map(|l| format!("\nserver log:\n{l}"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// A detached process that stops the server and removes the directory once we are gone.
    fn spawn_watchdog(&self) -> Result<()> {
        let pg_ctl = self.bin.join("pg_ctl");
        let runas = if self.as_postgres { "runuser -u postgres -- " } else { "" };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runas}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = self.data().display(),
            dir = self.dir.display()
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &script]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // its own process group: a Ctrl-C meant for the tests does not stop the watchdog
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn().context("starting the cluster watchdog")?;
        Ok(())
    }

    /// Runs SQL with psql against `db` (for setting up data).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Restarts the server (with the options it was started with), for settings that need it.
    pub fn restart(&self) -> Result<()> {
        let (data, log) = (self.data(), self.dir.join("server.log"));
        let args = ["-D", &data.to_string_lossy(), "-l", &log.to_string_lossy(), "-m", "fast", "-w", "restart"];
        self.run_checked(&self.bin.join("pg_ctl"), &args)
    }

    pub fn stop(&self) {
        let start = Instant::now();
        let _ = self
            .command(&self.bin.join("pg_ctl"), &["-D", &self.data().to_string_lossy(), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
        tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, "cluster stopped");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn chown_postgres(dir: &Path) -> Result<()> {
    let status = Command::new("chown").args(["postgres:postgres"]).arg(dir).status().context("running chown")?;
    if !status.success() {
        bail!("cannot give {} to the postgres user (is there a postgres OS user?)", dir.display());
    }
    Ok(())
}
