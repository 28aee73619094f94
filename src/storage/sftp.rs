//! The SFTP target: a directory on an SSH server (OpenSSH's sftp-server, a NAS, a Hetzner
//! storage box). The connection is the system's OpenSSH client (`ssh -s ... sftp`, through the
//! one child-process wrapper) carrying the SFTP protocol of `russh-sftp`; so host keys, keys,
//! the agent, ~/.ssh/config (ProxyJump, certificates) work exactly as for `ssh` and `sftp`.
//!
//! The server's host key must already be in the known_hosts file: `StrictHostKeyChecking=yes`,
//! an unknown or changed key is refused with what to check and how to add it. pgbackd signs in
//! with `key_file` (its passphrase given to ssh through an askpass helper, pgbackd itself) or the
//! SSH agent's keys; never with a password (`BatchMode`). Objects are written like on a local
//! disk: to a temporary name beside the final one, with `max_concurrent_writes` write requests
//! in flight, fsynced, then renamed into place (`posix-rename@openssh.com`, atomic over an older
//! version), so a reader never sees a partial object; a failed, cancelled or dropped write removes
//! its temporary file, and files left by a killed process are shown and removed like local ones.
//! Requests that fail because the connection broke are retried on a new connection with backoff.

use super::local::TEMP_MARKER;
use super::{ObjectInfo, ObjectWriter, Partial, Store};
use crate::config::storage::SftpConfig;
use crate::process::{ChildSpec, Running};
use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

/// The largest write request sent (OpenSSH's sftp-server accepts up to 256 KiB).
const WRITE_CHUNK: usize = 255 << 10;
/// The largest read request sent.
const READ_CHUNK: u64 = 255 << 10;
/// Files and directories open at once on one connection. OpenSSH's sftp-server names a handle
/// by its slot number in 4 bytes, and russh-sftp keeps handles as UTF-8 strings: slot 128 and
/// above would not survive the round trip, so fewer than 128 may be open.
const MAX_OPEN: usize = 96;

pub struct SftpStore {
    name: String,
    cfg: Arc<SftpConfig>,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// Directories known to exist, so writes do not stat them again.
    dirs: Mutex<HashSet<String>>,
    /// One permit per open handle (see [`MAX_OPEN`]).
    open: Arc<tokio::sync::Semaphore>,
}

/// One SSH connection and its SFTP channel.
struct Conn {
    sftp: Arc<RawSftpSession>,
    write_len: usize,
    posix_rename: bool,
    fsync: bool,
    /// The `ssh` process; dropping the connection kills it.
    _ssh: Running,
}

/// The environment variable through which pgbackd, run by ssh as its askpass helper, gets the
/// passphrase of the target's key_file (see `main`).
pub const ASKPASS_ENV: &str = "PGBACKD_SSH_KEY_PASSPHRASE";

/// Whether an SFTP error is the connection's (worth a new connection), not the server's answer.
fn is_connection_error(e: &SftpError) -> bool {
    match e {
        SftpError::Status(s) => matches!(s.status_code, StatusCode::NoConnection | StatusCode::ConnectionLost),
        SftpError::IO(_) | SftpError::Timeout => true,
        SftpError::Limited(_) | SftpError::UnexpectedPacket | SftpError::UnexpectedBehavior(_) => false,
    }
}

/// Whether `e` (from a write, as text) is a broken connection rather than the server's answer.
fn connection_broke(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains(": I/O: ")
        || text.contains(": Timeout")
        || text.contains("No connection")
        || text.contains("Connection lost")
}

fn status_of(e: &SftpError) -> Option<StatusCode> {
    match e {
        SftpError::Status(s) => Some(s.status_code),
        _ => None,
    }
}

/// `e` while `what`, with what to do about a refused permission or a full disk.
fn sftp_error(cfg: &SftpConfig, what: String, e: SftpError) -> anyhow::Error {
    let hint = match status_of(&e) {
        Some(StatusCode::PermissionDenied) => Some(format!(
            "the user {} may not do this there: give it the directory {} (owner, or write permission)",
            cfg.user, cfg.path
        )),
        Some(StatusCode::NoSuchFile) if what.starts_with("creating directory") => {
            Some(format!("the directory above it does not exist on {}: check the target's path", cfg.host))
        }
        Some(StatusCode::Failure) if what.starts_with("writing") => {
            Some("the server refused the write: its disk may be full or a quota used up".to_owned())
        }
        _ => None,
    };
    let hint = hint.map(|h| format!("; {h}")).unwrap_or_default();
    anyhow!("{what} on {}:{}: {e}{hint}", cfg.host, cfg.port)
}

/// An SSH string: a u32 length, then the bytes.
fn ssh_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl SftpStore {
    pub fn new(name: &str, cfg: &SftpConfig) -> Result<SftpStore> {
        Ok(SftpStore {
            name: name.to_owned(),
            cfg: Arc::new(cfg.clone()),
            conn: tokio::sync::Mutex::new(None),
            dirs: Mutex::new(HashSet::new()),
            open: Arc::new(tokio::sync::Semaphore::new(MAX_OPEN)),
        })
    }

    fn known_hosts(&self) -> PathBuf {
        self.cfg.known_hosts.clone().unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".ssh/known_hosts")
        })
    }

    fn remote(&self, key: &str) -> Result<String> {
        if key.is_empty() || key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            bail!("invalid object key {key:?}");
        }
        Ok(format!("{}/{key}", self.cfg.path))
    }

    /// The current connection, or a new one.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(self.connect().await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn drop_conn(&self, broken: &Arc<Conn>) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            *slot = None;
        }
    }

    fn keyscan(&self) -> String {
        let known_hosts = self.known_hosts();
        let port = if self.cfg.port == 22 { String::new() } else { format!("-p {} ", self.cfg.port) };
        format!("ssh-keyscan {port}{} >> {}", self.cfg.host, known_hosts.display())
    }

    /// The `ssh` command that starts the sftp subsystem on the server.
    fn ssh_command(&self) -> Result<ChildSpec> {
        let cfg = &self.cfg;
        let known_hosts = self.known_hosts();
        if !known_hosts.exists() {
            bail!(
                "{} does not exist: pgbackd only connects to servers whose host key is listed there; check the \
                 fingerprint with the server's administrator, then: {}",
                known_hosts.display(),
                self.keyscan()
            );
        }
        let mut spec = ChildSpec::new("ssh").stdin(true).stdout(true).args([
            "-s".to_owned(),
            "-p".to_owned(),
            cfg.port.to_string(),
            "-l".to_owned(),
            cfg.user.clone(),
            "-o".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            "-o".to_owned(),
            format!("UserKnownHostsFile={}", known_hosts.display()),
            "-o".to_owned(),
            "PasswordAuthentication=no".to_owned(),
            "-o".to_owned(),
            "KbdInteractiveAuthentication=no".to_owned(),
            "-o".to_owned(),
            "ConnectTimeout=15".to_owned(),
            "-o".to_owned(),
            "ServerAliveInterval=30".to_owned(),
            "-o".to_owned(),
            "ServerAliveCountMax=4".to_owned(),
            "-o".to_owned(),
            "ForwardAgent=no".to_owned(),
            "-o".to_owned(),
            "ClearAllForwardings=yes".to_owned(),
        ]);
        if let Some(key) = &cfg.key_file {
            if let Err(e) = std::fs::File::open(key) {
                bail!(
                    "cannot read the target's key_file {}: {e}; pgbackd runs as uid {} and needs to read it",
                    key.display(),
                    rustix::process::geteuid().as_raw()
                );
            }
            spec = spec.arg("-i").arg(key.as_os_str()).args(["-o", "IdentitiesOnly=yes"]);
        }
        match (&cfg.key_file, &cfg.key_passphrase) {
            (Some(_), Some(pass)) => {
                // ssh asks the askpass program (pgbackd itself) for the passphrase
                let me = std::env::current_exe().context("finding pgbackd's own path for ssh's askpass")?;
                spec = spec
                    .env("SSH_ASKPASS", me.to_string_lossy())
                    .env("SSH_ASKPASS_REQUIRE", "force")
                    .env(ASKPASS_ENV, pass.expose())
                    .args(["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1"]);
            }
            _ => spec = spec.args(["-o", "BatchMode=yes"]).env_remove(ASKPASS_ENV),
        }
        Ok(spec.arg("--").arg(&cfg.host).arg("sftp"))
    }

    /// What `ssh` said when it could not connect, as an error that says what to do.
    fn ssh_failure(&self, stderr: &str) -> anyhow::Error {
        let cfg = &self.cfg;
        let at = format!("{}@{}:{}", cfg.user, cfg.host, cfg.port);
        let said = stderr.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" / ");
        let known_hosts = self.known_hosts();
        if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") || stderr.contains("Host key for") {
            return anyhow!(
                "the host key of {}:{} DIFFERS from the one in {}: someone may be intercepting the connection, or the \
                 server was reinstalled; if its administrator confirms the new key, replace it (ssh-keygen -f {} -R \
                 '[{}]:{}', then {}). ssh said: {said}",
                cfg.host,
                cfg.port,
                known_hosts.display(),
                known_hosts.display(),
                cfg.host,
                cfg.port,
                self.keyscan()
            );
        }
        if stderr.contains("host key is known") || stderr.contains("Host key verification failed") {
            return anyhow!(
                "the host key of {}:{} is not in {}: pgbackd never trusts an unknown host; check the fingerprint \
                 (ssh-keyscan -p {} {} | ssh-keygen -lf -) with the server's administrator, then add it: {}",
                cfg.host,
                cfg.port,
                known_hosts.display(),
                cfg.port,
                cfg.host,
                self.keyscan()
            );
        }
        if stderr.contains("Permission denied") {
            let key = match &cfg.key_file {
                Some(k) => format!("the key {}", k.display()),
                None => "the SSH agent's keys (SSH_AUTH_SOCK)".to_owned(),
            };
            return anyhow!(
                "{at} refused {key}: add its public key to ~{}/.ssh/authorized_keys on the server (an encrypted key \
                 needs key_passphrase). ssh said: {said}",
                cfg.user
            );
        }
        if stderr.contains("subsystem request failed") {
            return anyhow!("{at} does not offer SFTP (subsystem sftp): enable it in the server's sshd_config");
        }
        if said.is_empty() {
            return anyhow!("ssh to {at} ended without a word: check the target's host, port and user");
        }
        anyhow!("cannot connect to {at}: {said}; check the target's host and port, and that sshd runs")
    }

    async fn connect(&self) -> Result<Conn> {
        let at = format!("{}:{}", self.cfg.host, self.cfg.port);
        let spec = self.ssh_command()?;
        let mut ssh = Running::spawn(&spec).map_err(|e| {
            anyhow!("{e}; SFTP targets use the OpenSSH client: install it (Debian: apt install openssh-client)")
        })?;
        let (Some(stdout), Some(stdin)) = (ssh.take_stdout(), ssh.take_stdin()) else {
            bail!("ssh to {at} started without its pipes");
        };
        let mut sftp = RawSftpSession::new(tokio::io::join(stdout, stdin));
        sftp.set_timeout(120);
        let version = match tokio::time::timeout(Duration::from_secs(30), sftp.init()).await {
            Ok(Ok(v)) => v,
            outcome => {
                // ssh exits when it cannot connect or sign in: its words say why
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while rustix::process::test_kill_process(rustix::process::Pid::from_raw(ssh.pid()).expect("a pid"))
                        .is_ok()
                        && !ssh.stderr_tail().contains("\n")
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let stderr = ssh.stderr_tail();
                return Err(match outcome {
                    Err(_) if stderr.trim().is_empty() => anyhow!("no SFTP answer from {at} in 30 s"),
                    _ => self.ssh_failure(&stderr),
                });
            }
        };
        let has = |name: &str| version.extensions.contains_key(name);
        let mut write_len = WRITE_CHUNK;
        if has("limits@openssh.com")
            && let Ok(l) = sftp.limits().await
        {
            if l.max_write_len > 0 {
                write_len = write_len.min(l.max_write_len as usize);
            }
            sftp.set_limits(l.into());
        }
        Ok(Conn {
            sftp: Arc::new(sftp),
            write_len,
            posix_rename: has("posix-rename@openssh.com"),
            fsync: has("fsync@openssh.com"),
            _ssh: ssh,
        })
    }

    /// Runs `op` on a connection, reconnecting and retrying with backoff when the connection
    /// broke (not when the server answered with an error).
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SftpError>>,
    {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let conn = self.conn().await?;
            match op(conn.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if is_connection_error(&e) && attempt < self.cfg.max_attempts => {
                    tracing::warn!(target = %self.name, error = %e, attempt, "SFTP connection broke; retrying");
                    self.drop_conn(&conn).await;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(20));
                    attempt += 1;
                }
                Err(e) => return Err(sftp_error(&self.cfg, what.to_owned(), e)),
            }
        }
    }

    /// Creates `dir` and its parents if needed.
    async fn ensure_dir(&self, dir: &str) -> Result<()> {
        if self.dirs.lock().unwrap().contains(dir) {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut d = dir.to_owned();
        loop {
            let probe = d.clone();
            let exists = self
                .retry(&format!("checking {probe}"), |c| {
                    let p = probe.clone();
                    async move {
                        match c.sftp.stat(p).await {
                            Ok(_) => Ok(true),
                            Err(e) if status_of(&e) == Some(StatusCode::NoSuchFile) => Ok(false),
                            Err(e) => Err(e),
                        }
                    }
                })
                .await?;
            if exists {
                break;
            }
            missing.push(d.clone());
            match d.rfind('/') {
                Some(i) if i > 0 => d.truncate(i),
                _ => break,
            }
        }
        for m in missing.into_iter().rev() {
            let made = self
                .retry(&format!("creating directory {m}"), |c| {
                    let p = m.clone();
                    async move {
                        let attrs = FileAttributes { permissions: Some(0o700), ..FileAttributes::empty() };
                        match c.sftp.mkdir(p.clone(), attrs).await {
                            Ok(_) => Ok(()),
                            // made meanwhile by another writer
                            Err(e) if c.sftp.stat(p).await.is_ok_and(|a| a.attrs.is_dir()) => {
                                drop(e);
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                })
                .await;
            made?;
        }
        self.dirs.lock().unwrap().insert(dir.to_owned());
        Ok(())
    }

    /// Opens a new temporary file beside `remote` for writing.
    async fn open_temp(&self, remote: &str) -> Result<(Arc<Conn>, String, String, OwnedSemaphorePermit)> {
        let (dir, name) = remote.rsplit_once('/').unwrap_or((".", remote));
        self.ensure_dir(dir).await?;
        let permit = self.open.clone().acquire_owned().await.expect("the semaphore is never closed");
        let temp = format!("{dir}/{TEMP_MARKER}{:016x}-{name}", rand::random::<u64>());
        let conn = self.conn().await?;
        let flags = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
        let attrs = FileAttributes { permissions: Some(0o600), ..FileAttributes::empty() };
        let handle = match conn.sftp.open(temp.clone(), flags, attrs).await {
            Ok(h) => h.handle,
            Err(e) => {
                if is_connection_error(&e) {
                    self.drop_conn(&conn).await;
                }
                return Err(sftp_error(&self.cfg, format!("creating {temp}"), e));
            }
        };
        Ok((conn, temp, handle, permit))
    }

    /// Every file under `dir` (recursively), as paths relative to the root, with attributes.
    async fn walk(&self, dir: &str) -> Result<Vec<(String, FileAttributes)>> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            let _open = self.open.acquire().await.expect("the semaphore is never closed");
            let entries = self
                .retry(&format!("listing {d}"), |c| {
                    let d = d.clone();
                    async move {
                        let handle = match c.sftp.opendir(d).await {
                            Ok(h) => h.handle,
                            Err(e) if status_of(&e) == Some(StatusCode::NoSuchFile) => return Ok(Vec::new()),
                            Err(e) => return Err(e),
                        };
                        let mut all = Vec::new();
                        loop {
                            match c.sftp.readdir(handle.clone()).await {
                                Ok(name) => all.extend(name.files),
                                Err(e) if status_of(&e) == Some(StatusCode::Eof) => break,
                                Err(e) => {
                                    let _ = c.sftp.close(handle).await;
                                    return Err(e);
                                }
                            }
                        }
                        let _ = c.sftp.close(handle).await;
                        Ok(all)
                    }
                })
                .await?;
            for e in entries {
                if e.filename == "." || e.filename == ".." {
                    continue;
                }
                let path = format!("{d}/{}", e.filename);
                if e.attrs.is_dir() {
                    todo.push(path);
                } else if e.attrs.is_regular() {
                    out.push((path, e.attrs));
                }
            }
        }
        Ok(out)
    }

    fn relative<'p>(&self, path: &'p str) -> Option<&'p str> {
        path.strip_prefix(&self.cfg.path)?.strip_prefix('/')
    }

    /// Files under `prefix` (a key prefix), relative to the root, temporary files included.
    async fn files_under(&self, prefix: &str) -> Result<Vec<(String, FileAttributes)>> {
        let dir = match prefix.rfind('/') {
            Some(i) => format!("{}/{}", self.cfg.path, &prefix[..i]),
            None => self.cfg.path.clone(),
        };
        let mut out = Vec::new();
        for (path, attrs) in self.walk(&dir).await? {
            if let Some(key) = self.relative(&path)
                && key.starts_with(prefix)
            {
                out.push((key.to_owned(), attrs));
            }
        }
        Ok(out)
    }

    async fn remove(&self, remote: &str) -> Result<()> {
        self.retry(&format!("deleting {remote}"), |c| {
            let p = remote.to_owned();
            async move {
                match c.sftp.remove(p).await {
                    Ok(_) => Ok(()),
                    Err(e) if status_of(&e) == Some(StatusCode::NoSuchFile) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }
}

fn mtime(attrs: &FileAttributes) -> Option<DateTime<Utc>> {
    attrs.mtime.and_then(|t| DateTime::from_timestamp(t as i64, 0))
}

/// The key a temporary file stands for (`dir/.pgbackd-tmp-<16 hex>-name` → `dir/name`).
fn temp_target(key: &str) -> Option<String> {
    let (dir, name) = match key.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, key),
    };
    let rest = name.strip_prefix(TEMP_MARKER)?;
    let original = rest.get(17..)?;
    Some(match dir {
        Some(d) => format!("{d}/{original}"),
        None => original.to_owned(),
    })
}

#[async_trait]
impl Store for SftpStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!(
            "sftp://{}@{}:{}{}{}",
            self.cfg.user,
            self.cfg.host,
            self.cfg.port,
            if self.cfg.path.starts_with('/') { "" } else { "/~/" },
            self.cfg.path
        )
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let remote = self.remote(key)?;
        let (conn, temp, handle, permit) = self.open_temp(&remote).await?;
        Ok(Box::new(SftpWriter {
            cfg: self.cfg.clone(),
            conn: Some(conn),
            handle,
            temp,
            remote,
            offset: 0,
            in_flight: JoinSet::new(),
            done: false,
            _open: permit,
        }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let mut attempt = 1;
        loop {
            let mut w = self.create(key).await?;
            let written = async {
                w.write(data.clone()).await?;
                w.finish().await
            }
            .await;
            match written {
                Ok(_) => return Ok(()),
                // the connection broke (not the server refusing): a new one, and again
                Err(e) if attempt < self.cfg.max_attempts && connection_broke(&e) => {
                    tracing::warn!(target = %self.name, error = %format!("{e:#}"), "SFTP write failed; retrying");
                    *self.conn.lock().await = None;
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(6))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let remote = self.remote(key)?;
        let Some(size) = self.size(key).await? else { return Ok(None) };
        match self.read_at(&remote, 0, size).await {
            Ok(b) => Ok(Some(b)),
            // deleted between the two calls
            Err(_) if self.size(key).await?.is_none() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let remote = self.remote(key)?;
        self.read_at(&remote, offset, len).await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let remote = self.remote(key)?;
        self.retry(&format!("checking {remote}"), |c| {
            let p = remote.clone();
            async move {
                match c.sftp.stat(p).await {
                    Ok(a) => Ok(Some(a.attrs.size.unwrap_or(0))),
                    Err(e) if status_of(&e) == Some(StatusCode::NoSuchFile) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out: Vec<ObjectInfo> = self
            .files_under(prefix)
            .await?
            .into_iter()
            .filter(|(key, _)| !key.rsplit('/').next().unwrap_or("").starts_with(TEMP_MARKER))
            .map(|(key, attrs)| ObjectInfo { size: attrs.size.unwrap_or(0), modified: mtime(&attrs), key })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        // SFTP has no batch delete: many removes in flight on the one connection
        let mut set = JoinSet::new();
        let mut dirs = HashSet::new();
        for chunk in keys.chunks(self.cfg.max_concurrent_writes.max(1)) {
            for key in chunk {
                let remote = self.remote(key)?;
                if let Some((d, _)) = remote.rsplit_once('/') {
                    dirs.insert(d.to_owned());
                }
                let conn = self.conn().await?;
                set.spawn(async move {
                    match conn.sftp.remove(remote.clone()).await {
                        Ok(_) => Ok(()),
                        Err(e) if status_of(&e) == Some(StatusCode::NoSuchFile) => Ok(()),
                        Err(e) => Err((remote, e)),
                    }
                });
            }
            while let Some(r) = set.join_next().await {
                match r.map_err(|e| anyhow!("a delete stopped: {e}"))? {
                    Ok(()) => {}
                    // the connection broke: retry this one on a new connection
                    Err((remote, e)) if is_connection_error(&e) => self.remove(&remote).await?,
                    Err((remote, e)) => return Err(sftp_error(&self.cfg, format!("deleting {remote}"), e)),
                }
            }
        }
        // directories left empty go too (as on a local target); a directory still in use stays
        let conn = self.conn().await?;
        let mut dirs: Vec<String> = dirs.into_iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
        for d in dirs {
            let mut dir = d;
            while dir.len() > self.cfg.path.len() && dir.starts_with(&self.cfg.path) {
                if conn.sftp.rmdir(dir.clone()).await.is_err() {
                    break;
                }
                self.dirs.lock().unwrap().remove(&dir);
                match dir.rfind('/') {
                    Some(i) => dir.truncate(i),
                    None => break,
                }
            }
        }
        Ok(())
    }

    async fn partials(&self, prefix: &str) -> Result<Vec<Partial>> {
        let mut out = Vec::new();
        for (key, attrs) in self.files_under(prefix).await? {
            if let Some(target) = temp_target(&key) {
                out.push(Partial { key: target, id: key, since: mtime(&attrs), size: attrs.size });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn remove_partial(&self, partial: &Partial) -> Result<()> {
        if temp_target(&partial.id).is_none() {
            bail!("{} is not a temporary file", partial.id);
        }
        self.remove(&self.remote(&partial.id)?).await
    }
}

impl SftpStore {
    /// Reads `len` bytes at `offset` of `remote`, several read requests in flight.
    async fn read_at(&self, remote: &str, offset: u64, len: u64) -> Result<Bytes> {
        let _open = self.open.acquire().await.expect("the semaphore is never closed");
        self.retry(&format!("reading {remote}"), |c| {
            let p = remote.to_owned();
            async move {
                let handle = c.sftp.open(p, OpenFlags::READ, FileAttributes::empty()).await?.handle;
                let mut reads = JoinSet::new();
                let mut at = offset;
                let end = offset + len;
                let mut index = 0usize;
                while at < end {
                    let n = READ_CHUNK.min(end - at) as u32;
                    let (sftp, h) = (c.sftp.clone(), handle.clone());
                    let i = index;
                    reads.spawn(async move { (i, sftp.read(h, at, n).await) });
                    at += n as u64;
                    index += 1;
                }
                let mut parts: Vec<Option<Vec<u8>>> = vec![None; index];
                let mut failed = None;
                while let Some(r) = reads.join_next().await {
                    match r {
                        Ok((i, Ok(data))) => parts[i] = Some(data.data),
                        Ok((_, Err(e))) => failed = Some(e),
                        Err(e) => failed = Some(SftpError::IO(e.to_string())),
                    }
                }
                let _ = c.sftp.close(handle).await;
                if let Some(e) = failed {
                    return Err(e);
                }
                let mut out = Vec::with_capacity(len as usize);
                for p in parts.into_iter().flatten() {
                    out.extend_from_slice(&p);
                }
                Ok(out)
            }
        })
        .await
        .and_then(|out| {
            if out.len() as u64 != len {
                bail!(
                    "reading {len} bytes at {offset} of {remote}: got {}: the file is shorter than recorded",
                    out.len()
                );
            }
            Ok(Bytes::from(out))
        })
    }
}

/// A file being written to its temporary name.
struct SftpWriter {
    cfg: Arc<SftpConfig>,
    conn: Option<Arc<Conn>>,
    handle: String,
    temp: String,
    remote: String,
    offset: u64,
    in_flight: JoinSet<Result<(), SftpError>>,
    done: bool,
    /// Held while the file is open.
    _open: OwnedSemaphorePermit,
}

impl SftpWriter {
    fn conn(&self) -> &Arc<Conn> {
        self.conn.as_ref().expect("a writer has its connection until it is done")
    }

    async fn collect_one(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(sftp_error(&self.cfg, format!("writing {}", self.temp), e)),
            Some(Err(e)) => Err(anyhow!("a write to {} stopped: {e}", self.temp)),
        }
    }

    async fn discard(&mut self) -> Result<()> {
        self.done = true;
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(conn) = self.conn.take() {
            let _ = conn.sftp.close(self.handle.clone()).await;
            match conn.sftp.remove(self.temp.clone()).await {
                Ok(_) => {}
                Err(e) if status_of(&e) == Some(StatusCode::NoSuchFile) => {}
                Err(e) => return Err(sftp_error(&self.cfg, format!("removing {}", self.temp), e)),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for SftpWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let chunk = self.conn().write_len;
        for piece in data.chunks(chunk) {
            while self.in_flight.len() >= self.cfg.max_concurrent_writes {
                if let Err(e) = self.collect_one().await {
                    let _ = self.discard().await;
                    return Err(e);
                }
            }
            let (sftp, handle, at, bytes) =
                (self.conn().sftp.clone(), self.handle.clone(), self.offset, piece.to_vec());
            self.in_flight.spawn(async move { sftp.write(handle, at, bytes).await.map(|_| ()) });
            self.offset += piece.len() as u64;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let result: Result<()> = async {
            while !self.in_flight.is_empty() {
                self.collect_one().await?;
            }
            let conn = self.conn().clone();
            if conn.fsync {
                conn.sftp
                    .fsync(self.handle.clone())
                    .await
                    .map_err(|e| sftp_error(&self.cfg, format!("syncing {}", self.temp), e))?;
            }
            conn.sftp
                .close(self.handle.clone())
                .await
                .map_err(|e| sftp_error(&self.cfg, format!("closing {}", self.temp), e))?;
            let size = conn
                .sftp
                .stat(self.temp.clone())
                .await
                .map_err(|e| sftp_error(&self.cfg, format!("checking {}", self.temp), e))?
                .attrs
                .size
                .unwrap_or(0);
            if size != self.offset {
                bail!("{} has {size} bytes on the server, {} were sent", self.temp, self.offset);
            }
            commit(&self.cfg, &conn, &self.temp, &self.remote).await
        }
        .await;
        if let Err(e) = result {
            let _ = self.discard().await;
            return Err(e);
        }
        self.done = true;
        Ok(self.offset)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.discard().await
    }
}

/// Renames `temp` to `remote`, replacing an older version atomically.
async fn commit(cfg: &SftpConfig, conn: &Conn, temp: &str, remote: &str) -> Result<()> {
    let result = if conn.posix_rename {
        let mut data = Vec::new();
        ssh_string(&mut data, temp);
        ssh_string(&mut data, remote);
        conn.sftp.extended("posix-rename@openssh.com", data).await.map(drop::<Packet>)
    } else {
        // plain SFTP rename refuses an existing target: remove it first (not atomic)
        let _ = conn.sftp.remove(remote.to_owned()).await;
        conn.sftp.rename(temp.to_owned(), remote.to_owned()).await.map(|_| ())
    };
    result.map_err(|e| sftp_error(cfg, format!("renaming {temp} to {remote}"), e))
}

impl Drop for SftpWriter {
    fn drop(&mut self) {
        // dropped mid-write (a cancelled task): remove the temporary file in the background
        if !self.done {
            self.in_flight.abort_all();
            if let (Some(conn), Ok(rt)) = (self.conn.take(), tokio::runtime::Handle::try_current()) {
                let (handle, temp) = (self.handle.clone(), self.temp.clone());
                rt.spawn(async move {
                    let _ = conn.sftp.close(handle).await;
                    if let Err(e) = conn.sftp.remove(temp).await {
                        tracing::warn!(error = %e, "could not remove the temporary file of an abandoned write");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_files_name_the_object_they_stand_for() {
        assert_eq!(temp_target("app/x/.pgbackd-tmp-0123456789abcdef-data.zst").as_deref(), Some("app/x/data.zst"));
        assert_eq!(temp_target(".pgbackd-tmp-0123456789abcdef-lock").as_deref(), Some("lock"));
        assert_eq!(temp_target("app/x/data.zst"), None);
    }

    #[test]
    fn ssh_strings_carry_their_length() {
        let mut out = Vec::new();
        ssh_string(&mut out, "ab");
        assert_eq!(out, vec![0, 0, 0, 2, b'a', b'b']);
    }
}
