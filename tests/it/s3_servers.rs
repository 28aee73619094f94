//! Real S3-compatible servers for the tests, started once per test binary on free ports:
//! LocalStack's S3 (full API: multipart listing, checksums) and s3s-fs (verifies SigV4
//! signatures). Installed by scripts/s3-tools.sh (scripts/test-all.sh runs it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct S3Server {
    pub name: &'static str,
    pub endpoint: String,
    pub access_key: &'static str,
    pub secret_key: &'static str,
    _dir: tempfile::TempDir,
}

static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());
static LOCALSTACK: OnceLock<S3Server> = OnceLock::new();
static S3S: OnceLock<S3Server> = OnceLock::new();

extern "C" fn stop_servers_at_exit() {
    if let Ok(mut children) = CHILDREN.lock() {
        for c in children.iter_mut() {
            crate::harness::send_signal(c.id(), libc::SIGKILL, true);
            let _ = c.wait();
        }
    }
}

pub(crate) fn tools_dir() -> PathBuf {
    std::env::var_os("PGBACKD_TEST_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/pgbackd-test")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Spawns a server in its own process group, killed at exit (and by a watchdog if we die).
pub fn spawn_server(mut cmd: Command) -> u32 {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null()).process_group(0);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let pid = child.id();
    let watchdog =
        format!("while kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 -{pid} 2>/dev/null", std::process::id());
    let mut w = Command::new("/bin/sh");
    w.args(["-c", &watchdog]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
    // the watchdog outlives this process by design: nobody is left to wait for it
    #[allow(clippy::zombie_processes)]
    w.spawn().expect("starting the S3 server watchdog");
    let mut children = CHILDREN.lock().unwrap();
    if children.is_empty() {
        // SAFETY: registers a plain extern "C" function once (atexit has no safe wrapper).
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(stop_servers_at_exit);
        }
    }
    children.push(child);
    pid
}

/// A minimal HTTP GET (no client library needed for a health check).
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A server a test needs is not installed: say which, and what to do (a failure, never a skip).
pub fn missing(server: &str) -> ! {
    panic!(
        "this test needs {server}, which is not installed in {}: run scripts/s3-tools.sh (scripts/test-all.sh does \
         it), or run scripts/test-fast.sh, which leaves out the tests that need S3 or SMTP servers",
        tools_dir().display()
    )
}

pub fn localstack() -> &'static S3Server {
    LOCALSTACK.get_or_init(|| {
        let python = tools_dir().join("localstack/bin/python");
        if !python.exists() {
            missing("LocalStack (an S3 server)");
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(python);
        cmd.args(["-m", "localstack.runtime.main"])
            .current_dir(dir.path())
            .env("GATEWAY_LISTEN", &addr)
            .env("GATEWAY_SERVER", "hypercorn")
            .env("SERVICES", "s3")
            .env("EAGER_SERVICE_LOADING", "1")
            .env("SKIP_SSL_CERT_DOWNLOAD", "1")
            .env("DNS_ADDRESS", "0")
            .env("DISABLE_EVENTS", "1")
            .env("FILESYSTEM_ROOT", dir.path().join("fs"))
            .stdout(std::fs::File::create(dir.path().join("localstack.log")).unwrap())
            .stderr(Stdio::null());
        spawn_server(cmd);
        let start = Instant::now();
        loop {
            if http_get(&addr, "/_localstack/health").is_some_and(|r| r.contains("\"s3\": \"running\"")) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "LocalStack did not start; see {}",
                dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        S3Server {
            name: "localstack",
            endpoint: format!("http://{addr}"),
            access_key: "test",
            secret_key: "test",
            _dir: dir,
        }
    })
}

pub fn s3s() -> &'static S3Server {
    S3S.get_or_init(|| {
        let bin = tools_dir().join("bin/s3s-fs");
        if !bin.exists() {
            missing("s3s-fs (an S3 server)");
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let (ak, sk) = ("s3s-access-key", "s3s-secret-key-for-tests");
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", ak, "--secret-key", sk])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        spawn_server(cmd);
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server { name: "s3s", endpoint: format!("http://{addr}"), access_key: ak, secret_key: sk, _dir: dir }
    })
}

impl S3Server {
    /// An SDK client for checks the tests make behind pgbackd's back.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(self.access_key, self.secret_key, None, None, "tests");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates a new, empty bucket and returns its name.
    pub fn bucket(&self) -> String {
        let name = crate::harness::unique("bucket").replace('_', "-");
        let client = self.client();
        rt().block_on(client.create_bucket().bucket(&name).send()).unwrap_or_else(|e| panic!("create bucket: {e:?}"));
        name
    }

    /// A `storage:` entry for this server.
    pub fn target_yaml(&self, name: &str, bucket: &str, extra: &str) -> String {
        format!(
            "  - name: {name}\n    type: s3\n    endpoint: {}\n    bucket: {bucket}\n    prefix: backups\n    \
             access_key: {}\n    secret_key: {}\n    part_size: 5MiB\n{extra}",
            self.endpoint, self.access_key, self.secret_key
        )
    }

    /// Every key in a bucket.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let client = self.client();
        rt().block_on(async {
            let mut keys = Vec::new();
            let mut pages = client.list_objects_v2().bucket(bucket).into_paginator().send();
            while let Some(page) = pages.next().await {
                keys.extend(page.unwrap().contents().iter().filter_map(|o| o.key().map(str::to_owned)));
            }
            keys
        })
    }

    /// Every key but the records of backup attempts (there must be none after a failed first
    /// backup).
    pub fn data_keys(&self, bucket: &str) -> Vec<String> {
        self.keys(bucket).into_iter().filter(|k| !k.contains("/.attempts/")).collect()
    }

    /// Multipart uploads still open in a bucket (LocalStack implements the listing).
    pub fn open_uploads(&self, bucket: &str) -> usize {
        let client = self.client();
        rt().block_on(client.list_multipart_uploads().bucket(bucket).send()).unwrap().uploads().len()
    }
}

/// A runtime for the SDK calls tests make.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}
