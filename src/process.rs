//! The one child-process wrapper: every `pg_dump`, `pg_restore`, `pg_dumpall` and `psql` runs here.
//!
//! A child gets its own process group (so a terminal's Ctrl-C reaches only pgbackd, and
//! termination reaches the child's own children); stdout is the data stream; stderr is drained
//! concurrently into a bounded tail (a child flooding stderr can neither deadlock nor grow memory);
//! the exit status is always collected with `wait()` after the stream ends; a non-zero exit or a
//! death by signal is an error that carries the command, the status and the stderr tail. A
//! password reaches a child through a private password file (PGPASSFILE) that has no name on
//! any filesystem (a memfd handed to the child as its fd 3), never argv or the
//! environment. Dropping a child that was not
//! waited for kills its process group.

use crate::secret::Secret;
use command_fds::{CommandFdExt, FdMapping};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// This machine's name, for messages and locks.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}

/// What tells a process apart from a later one with the same pid: this boot's id and the
/// process's start time (in clock ticks since boot, from `/proc/<pid>/stat`).
pub fn process_identity(pid: u32) -> Option<(String, u64)> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_owned();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces and parentheses: the fields start after the last `)`
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((boot, start))
}

/// How many bytes of a child's stderr are kept (the end of it).
pub const STDERR_TAIL_BYTES: usize = 16 * 1024;

/// What to run. `display` is the command as shown in errors and logs (no secrets in it).
#[derive(Clone)]
pub struct ChildSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    /// A libpq password: written to a private password file (an unnamed memfd, mode 0600, the
    /// child's fd 3, named by PGPASSFILE=/proc/self/fd/3), so it is in neither the child's argv
    /// nor its environment, and no crash can leave it behind.
    pub password: Option<Secret>,
    /// Open files handed to the child under the given descriptor numbers (4 and up).
    pub passed: Vec<(Arc<OwnedFd>, i32)>,
}

/// The child's descriptor of its password file.
pub const PASSWORD_FD: i32 = 3;

impl fmt::Debug for ChildSpec {
    // Environment values may hold secrets: only their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

impl ChildSpec {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        ChildSpec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            stdin: false,
            stdout: true,
            password: None,
            passed: Vec::new(),
        }
    }

    /// Hands `file` to the child as its descriptor `child_fd` (4 or more): the child opens it as
    /// `/proc/self/fd/<child_fd>`.
    pub fn pass_fd(mut self, file: Arc<OwnedFd>, child_fd: i32) -> Self {
        debug_assert!(child_fd > PASSWORD_FD);
        self.passed.push((file, child_fd));
        self
    }

    pub fn password(mut self, pw: &Secret) -> Self {
        self.password = Some(pw.clone());
        self
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, it: I) -> Self {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_owned(), v.into()));
        self
    }

    pub fn env_remove(mut self, k: &str) -> Self {
        self.env_remove.push(k.to_owned());
        self
    }

    pub fn stdin(mut self, yes: bool) -> Self {
        self.stdin = yes;
        self
    }

    pub fn stdout(mut self, yes: bool) -> Self {
        self.stdout = yes;
        self
    }

    /// The command line for messages: program name and arguments.
    pub fn display(&self) -> String {
        let name = self.program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut s = name;
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// The program's file name (`pg_restore`).
    pub fn program_name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.program.display().to_string())
    }
}

/// Why a child did not succeed. Callers branch on `Cancelled`/`TimedOut`; the rest are reported.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "{program} not found at {path}: install the PostgreSQL client tools (e.g. apt install postgresql-client) or set pg_bin_dir in the config"
    )]
    NotFound { program: String, path: String },
    #[error("cannot start {command}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} exited with status {code}{}", fmt_tail(.stderr_tail))]
    Failed { command: String, code: i32, stderr_tail: String },
    #[error("{command} was killed by signal {signal} ({}){}", signal_name(*.signal), fmt_tail(.stderr_tail))]
    Signaled { command: String, signal: i32, stderr_tail: String },
    #[error("{command} was cancelled")]
    Cancelled { command: String },
    #[error("waiting for {command}: {source}")]
    Wait { command: String, source: std::io::Error },
}

fn fmt_tail(tail: &str) -> String {
    if tail.trim().is_empty() {
        "; it wrote nothing to stderr".into()
    } else {
        format!("; stderr ends with:\n{}", tail.trim_end())
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGABRT => "SIGABRT",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// The end of a child's stderr: at most [`STDERR_TAIL_BYTES`], cut at a line start.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
    total: u64,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if data.len() >= STDERR_TAIL_BYTES {
            self.buf.clear();
            self.buf.extend_from_slice(&data[data.len() - STDERR_TAIL_BYTES..]);
        } else {
            self.buf.extend_from_slice(data);
            if self.buf.len() > STDERR_TAIL_BYTES {
                let cut = self.buf.len() - STDERR_TAIL_BYTES;
                self.buf.drain(..cut);
            }
        }
    }

    fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.buf).into_owned();
        if self.total > self.buf.len() as u64 {
            // drop the partial first line and say how much was cut
            if let Some(nl) = s.find('\n') {
                s.drain(..=nl);
            }
            s = format!("[... {} earlier bytes of stderr omitted]\n{s}", self.total - self.buf.len() as u64);
        }
        s
    }
}

/// A running child process.
pub struct Running {
    command: String,
    child: Child,
    pgid: i32,
    stderr: Option<JoinHandle<()>>,
    tail: Arc<Mutex<Tail>>,
    reaped: bool,
}

/// Environment variables no child inherits: cloud credentials, and every variable holding a secret
/// of a loaded config (e.g. `password: ${POSTGRES_PASSWORD}`), registered by
/// [`withhold_env_holding`].
static WITHHELD_ENV: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
const ALWAYS_WITHHELD: [&str; 3] = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// Keeps the environment variables whose value is one of `secrets` (the `${VAR}`s a config took
/// them from) from every child started from now on: pg_dump needs none of them, its password
/// comes in a password file. Whole values only: a short password must not withhold `PATH` or
/// `USER` because they happen to contain it.
pub fn withhold_env_holding(secrets: &[&Secret]) {
    let values: Vec<&str> = secrets.iter().map(|s| s.expose()).filter(|v| !v.is_empty()).collect();
    let mut withheld = WITHHELD_ENV.lock().unwrap_or_else(|e| e.into_inner());
    for (name, value) in std::env::vars_os() {
        if let (Some(name), Some(value)) = (name.to_str(), value.to_str())
            && !matches!(name, "PATH" | "HOME" | "USER" | "LOGNAME" | "LANG" | "TZ" | "TMPDIR")
            && values.contains(&value)
        {
            withheld.insert(name.to_owned());
        }
    }
}

/// A libpq password file holding `pw` for any host, port, database and user: a memfd, which
/// has no name on any filesystem and is gone when the last descriptor of it closes.
fn password_file(pw: &Secret) -> std::io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, Mode, fchmod, memfd_create};
    use std::io::{Seek, Write};
    let escaped = pw.expose().replace('\\', "\\\\").replace(':', "\\:");
    let fd = memfd_create("pgbackd-pgpass", MemfdFlags::CLOEXEC)?;
    // libpq ignores a password file that group or others may read
    fchmod(&fd, Mode::from_raw_mode(0o600))?;
    let mut f = std::fs::File::from(fd);
    writeln!(f, "*:*:*:*:{escaped}")?;
    f.rewind()?;
    Ok(f.into())
}

impl Running {
    pub fn spawn(spec: &ChildSpec) -> Result<Running, ProcessError> {
        let command = spec.display();
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(if spec.stdout { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped())
            .process_group(0);
        for k in ALWAYS_WITHHELD {
            cmd.env_remove(k);
        }
        for k in WITHHELD_ENV.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            cmd.env_remove(k);
        }
        for k in &spec.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let spawn_error = |e: std::io::Error| ProcessError::Spawn { command: command.clone(), source: e };
        let mut fds = Vec::new();
        if let Some(pw) = &spec.password {
            fds.push(FdMapping { parent_fd: password_file(pw).map_err(spawn_error)?, child_fd: PASSWORD_FD });
            cmd.env_remove("PGPASSWORD").env("PGPASSFILE", format!("/proc/self/fd/{PASSWORD_FD}"));
        }
        for (file, child_fd) in &spec.passed {
            fds.push(FdMapping { parent_fd: file.try_clone().map_err(spawn_error)?, child_fd: *child_fd });
        }
        if !fds.is_empty() {
            cmd.fd_mappings(fds).map_err(|e| spawn_error(std::io::Error::other(e)))?;
        }
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ProcessError::NotFound { program: spec.program_name(), path: spec.program.display().to_string() }
            } else {
                ProcessError::Spawn { command: command.clone(), source: e }
            }
        })?;
        let pgid = child.id().map(|p| p as i32).unwrap_or(0);
        let tail = Arc::new(Mutex::new(Tail::default()));
        let stderr = child.stderr.take().map(|mut err| {
            let tail = tail.clone();
            crate::tasks::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    match err.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if let Ok(mut t) = tail.lock() {
                                t.push(&buf[..n]);
                            }
                        }
                    }
                }
            })
        });
        if let Some(out) = child.stdout.as_ref() {
            enlarge_pipe(out);
        }
        if let Some(input) = child.stdin.as_ref() {
            enlarge_pipe(input);
        }
        Ok(Running { command, child, pgid, stderr, tail, reaped: false })
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    pub fn pid(&self) -> i32 {
        self.pgid
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// The current end of stderr (for progress messages and errors raised elsewhere).
    pub fn stderr_tail(&self) -> String {
        self.tail.lock().map(|t| t.text()).unwrap_or_default()
    }

    /// Waits for exit and for stderr to close; a non-zero status or a signal is an error.
    pub async fn wait(mut self) -> Result<String, ProcessError> {
        let status = self.wait_status().await?;
        let tail = self.stderr_tail();
        check_status(&self.command, status, tail)
    }

    async fn wait_status(&mut self) -> Result<ExitStatus, ProcessError> {
        let status =
            self.child.wait().await.map_err(|e| ProcessError::Wait { command: self.command.clone(), source: e })?;
        self.reaped = true;
        if let Some(h) = self.stderr.take() {
            // stderr can stay open if the child left grandchildren holding it; do not hang on them
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
        Ok(status)
    }

    /// Waits for exit, or once `stop` is cancelled, stops the child as [`Running::terminate`] does
    /// and collects how it exited: for a long-running child that shuts down cleanly on SIGTERM
    /// (pg_receivewal). Returns whether it was stopped, and its outcome.
    pub async fn wait_or_stop(
        mut self,
        stop: &tokio_util::sync::CancellationToken,
        grace: Duration,
    ) -> (bool, Result<String, ProcessError>) {
        tokio::select! {
            status = self.wait_status() => {
                let tail = self.stderr_tail();
                return (false, status.and_then(|s| check_status(&self.command, s, tail)));
            }
            _ = stop.cancelled() => {}
        }
        signal_group(self.pgid, rustix::process::Signal::TERM);
        let status = match tokio::time::timeout(grace, self.wait_status()).await {
            Ok(s) => s,
            Err(_) => {
                signal_group(self.pgid, rustix::process::Signal::KILL);
                self.wait_status().await
            }
        };
        let tail = self.stderr_tail();
        (true, status.and_then(|s| check_status(&self.command, s, tail)))
    }

    /// Stops the child: SIGTERM to its process group, SIGKILL after `grace`. Always reaps it.
    pub async fn terminate(mut self, grace: Duration) -> ProcessError {
        if !self.reaped {
            signal_group(self.pgid, rustix::process::Signal::TERM);
            match tokio::time::timeout(grace, self.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    signal_group(self.pgid, rustix::process::Signal::KILL);
                    let _ = self.child.wait().await;
                }
            }
            self.reaped = true;
            // grandchildren that ignored SIGTERM
            signal_group(self.pgid, rustix::process::Signal::KILL);
        }
        ProcessError::Cancelled { command: self.command.clone() }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            signal_group(self.pgid, rustix::process::Signal::KILL);
            let _ = self.child.start_kill();
        }
    }
}

fn check_status(command: &str, status: ExitStatus, stderr_tail: String) -> Result<String, ProcessError> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(stderr_tail);
    }
    if let Some(signal) = status.signal() {
        return Err(ProcessError::Signaled { command: command.to_owned(), signal, stderr_tail });
    }
    Err(ProcessError::Failed { command: command.to_owned(), code: status.code().unwrap_or(-1), stderr_tail })
}

fn signal_group(pgid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        // the group may be gone already: nothing to do then
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Larger pipe buffers between a child and us: fewer context switches per byte (best effort;
/// 1 MiB is the default limit for unprivileged processes).
pub fn enlarge_pipe(pipe: &impl std::os::fd::AsFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(pipe, 1 << 20);
}

/// Clears O_NONBLOCK on a pipe taken from the async runtime, for blocking reads on a thread.
pub fn set_blocking(file: &std::fs::File) {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    if let Ok(flags) = fcntl_getfl(file) {
        let _ = fcntl_setfl(file, flags - OFlags::NONBLOCK);
    }
}

/// Runs a short command to completion and returns its stdout (bounded by `max_stdout`).
pub async fn run_capture(spec: &ChildSpec, max_stdout: usize) -> Result<Vec<u8>, ProcessError> {
    let mut running = Running::spawn(spec)?;
    let mut out = Vec::new();
    if let Some(mut stdout) = running.take_stdout() {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            if out.len() + n > max_stdout {
                let command = running.command.clone();
                let _ = running.terminate(Duration::from_secs(2)).await;
                return Err(ProcessError::Failed {
                    command,
                    code: -1,
                    stderr_tail: format!("output larger than {max_stdout} bytes"),
                });
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
    running.wait().await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_password_reaches_the_child_in_a_private_file_only() {
        let pw = Secret::new(r"pa:ss\word");
        let spec = ChildSpec::new("/bin/sh")
            .args(["-c", r#"cat /proc/self/cmdline; tr '\0' '\n' < /proc/self/environ; echo; stat -L -c %a "$PGPASSFILE"; cat "$PGPASSFILE"; echo "$PGPASSFILE" >&2; readlink "$PGPASSFILE" >&2"#])
            .env("PGPASSWORD", "inherited")
            .password(&pw);
        let mut running = Running::spawn(&spec).unwrap();
        let mut out = String::new();
        running.take_stdout().unwrap().read_to_string(&mut out).await.unwrap();
        let stderr = running.wait().await.unwrap();
        let (env, file) = out.split_once("\n600\n").expect(&out);
        assert!(!env.contains("pa:ss") && !env.contains("PGPASSWORD"), "{env}");
        assert_eq!(file, "*:*:*:*:pa\\:ss\\\\word\n");
        // the file has no name anywhere: a memfd, the child's fd 3; nothing is left in TMPDIR
        let mut lines = stderr.lines();
        assert_eq!(lines.next(), Some("/proc/self/fd/3"), "{stderr}");
        assert!(lines.next().is_some_and(|l| l.starts_with("/memfd:pgbackd-pgpass")), "{stderr}");
        let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("pgbackd-pgpass"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::default();
        for i in 0..5000 {
            t.push(format!("line {i}\n").as_bytes());
        }
        let text = t.text();
        assert!(text.len() <= STDERR_TAIL_BYTES + 64);
        assert!(text.ends_with("line 4999\n"));
        assert!(text.starts_with("[... "), "{}", &text[..40]);
    }

    #[tokio::test]
    async fn failure_carries_status_and_stderr() {
        let spec = ChildSpec::new("/bin/sh").args(["-c", "echo oops >&2; exit 3"]);
        let err = run_capture(&spec, 1024).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ProcessError::Failed { code: 3, .. }), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
    }

    #[tokio::test]
    async fn missing_program_is_actionable() {
        let err = run_capture(&ChildSpec::new("/nonexistent/pg_dump"), 10).await.unwrap_err();
        assert!(matches!(err, ProcessError::NotFound { .. }));
        assert!(err.to_string().contains("pg_bin_dir"));
    }

    #[tokio::test]
    async fn signal_is_reported() {
        let spec = ChildSpec::new("/bin/sh").args(["-c", "kill -9 $$"]);
        let err = run_capture(&spec, 10).await.unwrap_err();
        assert!(matches!(err, ProcessError::Signaled { signal: 9, .. }), "{err}");
    }

    #[tokio::test]
    async fn terminate_kills_the_group() {
        let spec = ChildSpec::new("/bin/sh").args(["-c", "sleep 100 & sleep 100"]);
        let r = Running::spawn(&spec).unwrap();
        let pgid = r.pid();
        let err = r.terminate(Duration::from_secs(2)).await;
        assert!(matches!(err, ProcessError::Cancelled { .. }));
        // killed members may linger briefly as zombies until init reaps them
        let mut alive = true;
        for _ in 0..100 {
            alive = rustix::process::test_kill_process_group(rustix::process::Pid::from_raw(pgid).unwrap()).is_ok();
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive, "process group {pgid} still alive");
    }
}
