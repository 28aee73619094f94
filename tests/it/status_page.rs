//! The daemon's status page in a real headless browser (Debian's chromium, driven through
//! chromedriver's WebDriver protocol): it loads without any outside asset, shows a failing job in
//! red and a passing one in green, charts the RTO of the test restores, and its screenshot is kept
//! in `target/test-artifacts/status-page.png` (the CI artifact).

use crate::daemon::Daemon;
use crate::harness::*;
use crate::notify::{free_port, http_get, wait_until};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// chromedriver on a free port, and one browser session; both end when dropped.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: run scripts/deps.sh (apt install chromium chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let http = reqwest::Client::new();
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser { driver, base, session: String::new(), rt, http, _profile: profile };
        wait_until("chromedriver", Duration::from_secs(30), || {
            b.call("GET", "/status", None).is_some_and(|v| v["value"]["ready"] == true)
        });
        // the flags this machine's closed network and a root user need
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1100",
            &format!("--user-data-dir={}", b._profile.path().display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
        } } });
        let created = b.call("POST", "/session", Some(caps)).expect("a browser session");
        b.session =
            created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_owned();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "POST" => self.http.post(url).json(&body.unwrap_or(json!({}))),
            "DELETE" => self.http.delete(url),
            _ => self.http.get(url),
        };
        self.rt.block_on(async { request.send().await.ok()?.json::<Value>().await.ok() })
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = self.call(method, &format!("/session/{}{path}", self.session), body).expect("chromedriver answers");
        assert!(v["value"]["error"].is_null(), "WebDriver {path}: {v}");
        v["value"].clone()
    }

    fn open(&self, url: &str) {
        self.session("POST", "/url", Some(json!({ "url": url })));
    }

    fn script(&self, source: &str) -> Value {
        self.session("POST", "/execute/sync", Some(json!({ "script": source, "args": [] })))
    }

    fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let png = self.session("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `rgb(r, g, b)` as numbers.
fn rgb(css: &Value) -> (u32, u32, u32) {
    let text = css.as_str().unwrap_or_default();
    let n: Vec<u32> = text
        .trim_start_matches("rgba(")
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    assert!(n.len() >= 3, "not a colour: {text:?}");
    (n[0], n[1], n[2])
}

#[test]
fn the_status_page_shows_a_failing_job_in_red_and_charts_the_rto_in_a_real_browser() {
    let env = TestEnv::new("page");
    env.psql("create table t (id int); insert into t select generate_series(1, 2000);");
    let token = env.dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let port = free_port();
    let missing = format!("{}_missing", env.db);
    env.write_config(&format!(
        "databases: [{missing}]\nschedules:\n  full_backup: \"0 3 * * *\"\n  test_restore: \"0 4 * * 0\"\n\
         daemon:\n  catch_up: false\nmonitoring:\n  listen: 127.0.0.1:{port}\n  trigger:\n    token_file: {}\n",
        token.display()
    ));
    let daemon = Daemon::start(&env, &[]);
    wait_until("the daemon's endpoint", Duration::from_secs(30), || http_get(port, "/healthz").is_some());
    for (job, db, ok) in [
        ("full_backup", env.db.as_str(), true),
        ("test_restore", env.db.as_str(), true),
        ("test_restore", env.db.as_str(), true),
        ("full_backup", missing.as_str(), false),
    ] {
        let o = env.run(&["trigger", job, "--database", db, "--wait"]);
        assert_eq!(o.status.success(), ok, "{job} of {db}: {}", stderr(&o));
    }

    let browser = Browser::start();
    browser.open(&format!("http://127.0.0.1:{port}/"));
    let seen = browser.script(&format!(
        r#"const failing = document.querySelector('tr[data-subject="{missing}"]');
           const passing = document.querySelector('tr[data-subject="{db}"]');
           const red = failing && failing.querySelector('.outcome.failed');
           const green = passing && passing.querySelector('.outcome.success');
           return {{
             title: document.title,
             health: document.getElementById('health').textContent,
             problems: (document.getElementById('problems') || {{}}).textContent || '',
             failingColor: red ? getComputedStyle(red).color : null,
             failingBackground: failing ? getComputedStyle(failing.cells[0]).backgroundColor : null,
             passingColor: green ? getComputedStyle(green).color : null,
             passingBackground: passing ? getComputedStyle(passing.cells[0]).backgroundColor : null,
             rtoPoints: passing ? passing.querySelectorAll('svg.rto circle').length : 0,
             failedRuns: document.querySelectorAll('#recent tr.failed').length,
             resources: performance.getEntriesByType('resource').map(e => e.name),
             scripts: document.scripts.length,
             text: document.body.innerText
           }};"#,
        db = env.db
    ));
    let png = browser.screenshot();
    drop(browser);
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("status-page.png"), &png).unwrap();
    let (code, _, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");

    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of the page ({} bytes)", png.len());
    assert!(seen["title"].as_str().unwrap().starts_with("pgbackd on "), "{seen}");
    assert_eq!(seen["health"], "1 problem", "{seen}");
    assert!(seen["problems"].as_str().unwrap().contains(&missing), "{seen}");
    let (r, g, b) = rgb(&seen["failingColor"]);
    assert!(r > 150 && g < 80 && b < 80, "the failing job is red: {seen}");
    let (r, g, b) = rgb(&seen["failingBackground"]);
    assert!(r > 240 && g < 240 && b < 240, "its row is tinted red: {seen}");
    let (r, g, b) = rgb(&seen["passingColor"]);
    assert!(g > r + 50 && g > b, "the passing one green: {seen}");
    assert_ne!(seen["passingBackground"], seen["failingBackground"], "{seen}");
    assert_eq!(seen["rtoPoints"], 2, "one point per test restore: {seen}");
    assert_eq!(seen["failedRuns"], 1, "{seen}");
    assert_eq!(seen["resources"], json!([]), "the page loads nothing else: {seen}");
    assert_eq!(seen["scripts"], 0, "{seen}");
    let text = seen["text"].as_str().unwrap();
    assert!(text.contains("does not exist") && text.contains("test_restore"), "{text}");
    assert!(!text.contains("Some(") && !text.contains("None"), "{text}");
}
