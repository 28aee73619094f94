//! Alerts and monitoring against real receivers: a local HTTP server standing in for Slack, a
//! webhook and healthchecks.io; an SMTP server (aiosmtpd) with STARTTLS; the daemon's own
//! /metrics, /readyz and /status.

use crate::harness::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

/// A local HTTP server that records every request and answers 200 (404 with the path under
/// `/missing/`).
pub(crate) struct Receiver {
    pub(crate) addr: String,
    got: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let got: Arc<Mutex<Vec<Request>>> = Arc::default();
        let g = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let g = g.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = h.trim_end().split_once(':') {
                            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                        }
                    }
                    let len =
                        headers.iter().find(|h| h.0 == "content-length").and_then(|h| h.1.parse().ok()).unwrap_or(0);
                    let mut body = vec![0u8; len];
                    let _ = r.read_exact(&mut body);
                    g.lock().unwrap().push(Request {
                        method,
                        path: path.clone(),
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    // a server that echoes what it did not find, as many do
                    let answer = if path.starts_with("/missing/") {
                        let body = format!("no hook at {path}");
                        format!(
                            "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_owned()
                    };
                    let mut s = stream;
                    let _ = s.write_all(answer.as_bytes());
                });
            }
        });
        Receiver { addr, got }
    }

    pub(crate) fn to(&self, path: &str) -> Vec<Request> {
        self.got.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(crate) fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Daemon(Child);

impl Daemon {
    fn start(env: &TestEnv) -> Daemon {
        let log = std::fs::File::create(env.dir.path().join("daemon.log")).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&env.config)
            .arg("run")
            .env("REAL_PG_BIN", real_pg_bin())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon(child)
    }

    fn signal(&self, sig: i32) {
        send_signal(self.0.id(), sig, false);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        while self.0.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
    }
}

pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or_default();
    Some((code, body))
}

/// Every line of `text` is a `# HELP`/`# TYPE` comment or `name{labels} value`, every family is
/// typed before its samples, and no family is declared twice.
fn assert_prometheus_text(text: &str) {
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap().to_owned();
            assert!(matches!(parts.next(), Some("gauge" | "counter")), "{line}");
            assert!(!typed.contains(&name), "{name} declared twice");
            typed.push(name);
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(value.parse::<f64>().is_ok(), "{line:?}");
        let name = series.split('{').next().unwrap();
        assert!(typed.iter().any(|t| t == name), "{name} has no # TYPE before it");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !v.is_empty(), "{line:?}");
            }
        }
    }
}

/// The value of one series in Prometheus text, e.g. `pgbackd_up` or `pgbackd_x{a="b"}`.
/// Runs promtool (Debian package prometheus; scripts/deps.sh installs it) with `stdin`; panics
/// with its output unless it succeeds.
fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: run scripts/deps.sh (apt install prometheus)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

/// A promtool rules test of the shipped alert rules on a live scrape: every sample of `metrics`
/// becomes a constant series with the labels Prometheus adds when it scrapes (`instance`, `job`),
/// `up` is 1, and `expect` gives each alert's `exp_alerts` (YAML) 15 minutes in (past every
/// `for:`). Returns promtool's output; panics when a rule does not fire as expected.
fn promtool_test_on_scrape(metrics: &str, expect: &[(String, String)]) -> String {
    let mut series =
        String::from("      - series: 'up{instance=\"pgbackd:9187\", job=\"pgbackd\"}'\n        values: '1x20'\n");
    for line in metrics.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let (metric, labels) = match name.split_once('{') {
            Some((m, l)) => (m, format!(", {}", l.trim_end_matches('}'))),
            None => (name, String::new()),
        };
        let sel = format!("{metric}{{instance=\"pgbackd:9187\", job=\"pgbackd\"{labels}}}").replace('\'', "''");
        series.push_str(&format!("      - series: '{sel}'\n        values: '{v}x20'\n"));
    }
    let mut tests = String::new();
    for (alert, exp) in expect {
        tests.push_str(&format!("      - eval_time: 15m\n        alertname: {alert}\n        exp_alerts: {exp}\n"));
    }
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus-alerts.yml");
    let text = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    alert_rule_test:\n{tests}",
        rules.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scraped.test.yml");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new("promtool").args(["test", "rules"]).arg(&file).output().unwrap();
    let result = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool test rules on the scrape:\n{result}\n{text}");
    result
}

/// Every alert the shipped rules define.
fn alert_names() -> Vec<String> {
    let text = repo_file("deploy/prometheus-alerts.yml");
    text.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).map(str::to_owned).collect()
}

/// Every Grafana panel's query names series that the scrape has, with every label its selector
/// matches on and its legend prints.
pub(crate) fn assert_dashboard_matches(metrics: &str) {
    let dashboard: serde_json::Value = serde_json::from_str(&repo_file("deploy/grafana-dashboard.json")).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let i = expr.find("pgbackd_").unwrap_or_else(|| panic!("{expr}"));
            let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let samples: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                .collect();
            assert!(!samples.is_empty(), "the dashboard's {expr:?}: no {name} in the scrape");
            let mut labels: Vec<String> = Vec::new();
            if let Some(sel) = expr[i + name.len()..].strip_prefix('{') {
                let sel = &sel[..sel.find('}').unwrap()];
                labels.extend(sel.split(',').map(|m| m.split(['=', '!', '~']).next().unwrap().trim().to_owned()));
            }
            let legend = t["legendFormat"].as_str().unwrap_or("");
            labels.extend(legend.split("{{").skip(1).map(|l| l.split("}}").next().unwrap().trim().to_owned()));
            for label in labels {
                assert!(
                    samples.iter().any(|s| s.contains(&format!("{label}=\""))),
                    "the dashboard's {expr:?} (legend {legend:?}) uses label {label}, which {name} does not have: {samples:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 10, "{checked} panels");
}

/// The shipped alert rules are valid, and their unit tests (each alert fires on the series
/// pgbackd exports, and not otherwise) pass.
#[test]
fn the_alert_rules_pass_promtool() {
    let text = promtool(&["check", "rules", "prometheus-alerts.yml"], None);
    assert!(text.contains("SUCCESS"), "{text}");
    let text = promtool(&["test", "rules", "prometheus-alerts.test.yml"], None);
    assert!(text.contains("SUCCESS"), "{text}");
}

pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

fn reports(env: &TestEnv) -> Vec<serde_json::Value> {
    files_under(&env.dir.path().join("reports/backup"))
        .iter()
        .filter_map(|f| serde_json::from_slice(&std::fs::read(f).ok()?).ok())
        .collect()
}

/// A cron expression firing once, `secs` from now (UTC).
fn once_in(secs: i64) -> String {
    let t = chrono::Utc::now() + chrono::Duration::seconds(secs);
    t.format("%S %M %H %d %m *").to_string()
}

#[test]
fn failures_alert_once_then_recover_through_slack_webhook_pings_and_metrics() {
    let env = TestEnv::new("alerts");
    env.psql("create table t (id int, v text); insert into t select g, md5(g::text) from generate_series(1, 2000) g;");
    let rx = Receiver::start();
    let port = free_port();
    let notifications = format!(
        "notifications:\n  retry_backoff: 100ms\n  slack:\n    enabled: true\n    webhook_url: http://{a}/slack/T000/SECRET\n\
         \x20   channel: \"#backups\"\n  webhooks:\n    - name: ops\n      url: http://{a}/hook\n      headers:\n\
         \x20       Authorization: Bearer hook-token\n      body: '{{\"db\": \"{{{{database}}}}\", \"event\": \"{{{{event}}}}\", \"error\": \"{{{{error}}}}\"}}'\n\
         \x20 healthchecks:\n    - job: full_backup\n      url: http://{a}/hc/0a1b\nmonitoring:\n  listen: 127.0.0.1:{port}\n  max_age: 1h\n",
        a = rx.addr
    );
    let failing = env.fake_bin("pg_dump_half_then_fail.sh");
    env.write_config(&format!(
        "pg_bin_dir: {}\nschedules:\n  full_backup: \"*/2 * * * * *\"\ndaemon:\n  catch_up: false\n{notifications}",
        failing.display()
    ));
    let daemon = Daemon::start(&env);
    wait_until("three failed runs", Duration::from_secs(60), || {
        reports(&env).iter().filter(|r| r["outcome"] == "failed").count() >= 3
    });
    wait_until("the failure pings", Duration::from_secs(10), || rx.to("/hc/0a1b/fail").len() >= 3);

    // one alert per channel, however many failures
    let slack = rx.to("/slack/T000/SECRET");
    assert_eq!(slack.len(), 1, "{slack:?}");
    let msg: serde_json::Value = serde_json::from_str(&slack[0].body).unwrap();
    let text = msg["text"].as_str().unwrap();
    assert!(text.contains("FAILED") && text.contains(&env.db) && text.contains("PQgetResult() failed"), "{text}");
    assert_eq!(msg["channel"], "#backups");
    let hook = rx.to("/hook");
    assert_eq!(hook.len(), 1, "{hook:?}");
    assert_eq!(hook[0].method, "POST");
    assert!(hook[0].headers.contains(&("authorization".into(), "Bearer hook-token".into())));
    let body: serde_json::Value = serde_json::from_str(&hook[0].body).unwrap();
    assert_eq!((body["db"].as_str(), body["event"].as_str()), (Some(env.db.as_str()), Some("failure")));
    assert!(body["error"].as_str().unwrap().contains("PQgetResult() failed"), "{body}");
    // healthchecks: every run pings start and fail, with the error as the body
    assert!(rx.to("/hc/0a1b/start").len() >= 3);
    assert!(rx.to("/hc/0a1b/fail")[0].body.contains("PQgetResult() failed"));
    let (code, text) = http_get(port, "/readyz").unwrap();
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("has no successful full backup"), "{text}");
    // the alert rules on what a real scrape of this state holds: the failed run and the missing
    // backup alert, with their summaries filled from the exported labels
    let failing = http_get(port, "/metrics").unwrap().1;
    let db = &env.db;
    let base = format!("instance: \"pgbackd:9187\", job: pgbackd, database: {db}");
    promtool_test_on_scrape(
        &failing,
        &[
            (
                "PgbackdLastRunFailed".into(),
                format!(
                    "[{{exp_labels: {{{base}, job_kind: full_backup}}, exp_annotations: {{summary: \"full_backup of {db} failed on its last run\"}}}}]"
                ),
            ),
            (
                "PgbackdBackupStale".into(),
                format!(
                    "[{{exp_labels: {{{base}}}, exp_annotations: {{summary: \"database {db}: no fresh successful full backup, or its latest verification failed (see /readyz)\"}}}}]"
                ),
            ),
            ("PgbackdDown".into(), "[]".into()),
        ],
    );

    // fixed (real pg_dump), one run: one "recovered" message, a success ping
    env.write_config(&format!(
        "schedules:\n  full_backup: \"{}\"\ndaemon:\n  catch_up: false\n{notifications}",
        once_in(6)
    ));
    daemon.signal(libc::SIGHUP);
    wait_until("the recovery message", Duration::from_secs(30), || rx.to("/slack/T000/SECRET").len() == 2);
    let slack = rx.to("/slack/T000/SECRET");
    let text = serde_json::from_str::<serde_json::Value>(&slack[1].body).unwrap()["text"].as_str().unwrap().to_owned();
    assert!(text.contains("RECOVERED") && text.contains("failures") && text.contains("sha256"), "{text}");
    wait_until("the recovery webhook and success ping", Duration::from_secs(10), || {
        rx.to("/hook").len() == 2 && !rx.to("/hc/0a1b").is_empty()
    });
    let body: serde_json::Value = serde_json::from_str(&rx.to("/hook")[1].body).unwrap();
    assert_eq!(body["event"], "recovered");

    // /readyz, /metrics and /status agree with the repository
    assert_eq!(http_get(port, "/readyz").unwrap().0, 200);
    let listed = env.list_json();
    assert_eq!(listed.len(), 1);
    let (code, m) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_prometheus_text(&m);
    promtool(&["check", "metrics"], Some(&m));
    // all is well now: no alert fires on this scrape (the dashboard is checked on a daemon that
    // also verified and test-restored: tests/it/daemon.rs)
    promtool_test_on_scrape(&m, &alert_names().into_iter().map(|a| (a, "[]".to_owned())).collect::<Vec<_>>());
    let series = |name: &str| format!("pgbackd_{name}{{database=\"{}\",job_kind=\"full_backup\"}}", env.db);
    assert_eq!(metric(&m, &series("last_raw_bytes")), listed[0]["raw_bytes"].as_f64(), "{m}");
    assert_eq!(metric(&m, &series("last_stored_bytes")), listed[0]["stored_bytes"].as_f64(), "{m}");
    assert_eq!(metric(&m, &series("last_attempt_success")), Some(1.0));
    assert!(metric(&m, &series("job_failures_total")).unwrap() >= 3.0);
    assert_eq!(metric(&m, "pgbackd_ready"), Some(1.0));
    assert_eq!(metric(&m, "pgbackd_notifications_suppressed_total").map(|v| v >= 2.0), Some(true), "{m}");
    assert_eq!(metric(&m, "pgbackd_notifications_sent_total{channel=\"slack\"}"), Some(2.0), "{m}");
    wait_until("the repository size in the metrics", Duration::from_secs(10), || {
        let m = http_get(port, "/metrics").unwrap().1;
        metric(&m, "pgbackd_repository_backups{target=\"local\"}") == Some(1.0)
            && metric(&m, "pgbackd_repository_bytes{target=\"local\"}").unwrap_or(0.0)
                >= listed[0]["stored_bytes"].as_f64().unwrap()
    });
    assert!(metric(&m, "pgbackd_local_free_bytes{target=\"local\"}").unwrap() > 0.0);
    let (_, status) = http_get(port, "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["databases"][&env.db]["last_full_backup_id"], listed[0]["id"]);
    // the URL's token is a secret: not in the log
    drop(daemon);
    let log = std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap();
    assert!(!log.contains("SECRET") && !log.contains("hook-token"), "{log}");
}

#[test]
fn a_receiver_that_is_down_never_fails_the_job_and_is_counted() {
    let env = TestEnv::new("alertsdown");
    env.psql("create table t (id int); insert into t values (1);");
    let (port, dead) = (free_port(), free_port());
    // no backup yet: the catch-up run starts at once
    env.write_config(&format!(
        "schedules:\n  full_backup: \"0 1 * * *\"\nnotifications:\n  attempts: 2\n  retry_backoff: 100ms\n  webhooks:\n\
         \x20   - name: down\n      url: http://127.0.0.1:{dead}/hook\n      events: [success]\nmonitoring:\n  listen: 127.0.0.1:{port}\n"
    ));
    let _daemon = Daemon::start(&env);
    wait_until("the failed delivery to be counted", Duration::from_secs(60), || {
        http_get(port, "/metrics")
            .is_some_and(|(_, m)| metric(&m, "pgbackd_notification_failures_total{channel=\"down\"}") == Some(1.0))
    });
    let r = reports(&env);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["outcome"], "success", "{r:?}");
    assert_eq!(env.list_json().len(), 1);
    let log = std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("notification not delivered: retrying") && log.contains("notification failed"), "{log}");
}

#[test]
fn notify_test_reports_each_channel() {
    let env = TestEnv::new("notifytest");
    let rx = Receiver::start();
    let dead = free_port();
    env.write_config(&format!(
        "notifications:\n  webhooks:\n    - name: good\n      url: http://{}/good\n    - name: bad\n      url: http://127.0.0.1:{dead}/x\n",
        rx.addr
    ));
    let out = env.run(&["notify-test"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("ok      good") && text.contains("FAILED  bad"), "{text}");
    let got = rx.to("/good");
    assert_eq!(got.len(), 1);
    assert!(got[0].body.contains("test message"), "{}", got[0].body);
    let out = env.run(&["notify-test", "--channel", "good"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let out = env.run(&["notify-test", "--channel", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no channel named \"nope\"; configured: good, bad"), "{}", stderr(&out));
}

const SMTP_USER: &str = "alerts@example.com";
const SMTP_PASSWORD: &str = "Smtp-Secret-Pa55";

/// aiosmtpd with STARTTLS and AUTH required, saving to a maildir (tests/fixtures/smtp_server.py).
struct Smtp {
    child: Child,
    port: u16,
    maildir: std::path::PathBuf,
    cert: std::path::PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn smtp(dir: &std::path::Path) -> Smtp {
    let python = std::env::var_os("PGBACKD_TEST_TOOLS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/pgbackd-test"))
        .join("localstack/bin/python");
    if !python.exists() {
        crate::s3_servers::missing("aiosmtpd (an SMTP server)");
    }
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost", "-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let maildir = dir.join("mail");
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_server.py");
    let child = Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .arg(&maildir)
        .args([SMTP_USER, SMTP_PASSWORD])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the SMTP server", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Smtp { child, port, maildir, cert }
}

#[test]
fn email_over_smtp_starttls_with_auth_carries_subject_and_body() {
    let env = TestEnv::new("alertsmail");
    env.psql("create table t (id int); insert into t values (1);");
    let server = smtp(env.dir.path());
    let failing = env.fake_bin("pg_dump_half_then_fail.sh");
    let password_file = env.dir.path().join("smtp_password");
    std::fs::write(&password_file, SMTP_PASSWORD).unwrap();
    std::fs::set_permissions(&password_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let email = format!(
        "notifications:\n  timeout: 5s\n  email:\n    enabled: true\n    from: backup@example.com\n    to: [admin@example.com, ops@example.com]\n\
         \x20   smtp_server: localhost\n    smtp_port: {}\n    tls: starttls\n    ca_file: {}\n\
         \x20   smtp_username: {SMTP_USER}\n    smtp_password_file: {}\n",
        server.port,
        server.cert.display(),
        password_file.display()
    );
    let schedule = "schedules:\n  full_backup: \"0 1 * * *\"\n";
    env.write_config(&format!("pg_bin_dir: {}\n{schedule}{email}", failing.display()));
    // notify-test first: the channel works
    let out = env.run(&["notify-test", "--channel", "email"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // then a failing backup run by the daemon (catch-up: no backup yet)
    let _daemon = Daemon::start(&env);
    // bodies are quoted-printable: undo the soft line breaks
    let mails = || -> Vec<String> {
        files_under(&server.maildir.join("new"))
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap().replace("=\r\n", "").replace("=\n", ""))
            .collect()
    };
    wait_until("two messages", Duration::from_secs(60), || mails().len() >= 2);
    let all = mails();
    assert!(all.iter().any(|m| m.contains("Subject: [pgbackd] test message")), "{all:?}");
    let alert =
        all.iter().find(|m| m.contains("Subject: [pgbackd] FAILED: full_backup of")).expect("the failure alert");
    assert!(
        alert.contains(&env.db) && alert.contains("PQgetResult() failed") && alert.contains("To: admin@example.com"),
        "{alert}"
    );
    // a wrong password is refused (aiosmtpd answers slowly: the 5 s timeout ends it): the
    // channel is named, the password is not printed
    std::fs::write(&password_file, "wrong-password").unwrap();
    let out = env.run(&["notify-test"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out) + &stderr(&out);
    assert!(text.contains("FAILED  email") && !text.contains("wrong-password"), "{text}");
    std::fs::write(&password_file, SMTP_PASSWORD).unwrap();
    // without the CA, STARTTLS does not trust the server: the test fails, naming email
    env.write_config(&format!(
        "pg_bin_dir: {}\n{schedule}{}",
        failing.display(),
        email.replace("    ca_file:", "    #ca_file:")
    ));
    let out = env.run(&["notify-test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("FAILED  email"), "{}", stdout(&out));
}

#[test]
fn a_stale_database_is_alerted_once_even_without_jobs() {
    let env = TestEnv::new("alertsstale");
    env.psql("create table t (id int); insert into t values (1);");
    env.backup();
    let rx = Receiver::start();
    let port = free_port();
    // no schedule at all: nothing runs, yet the backup ages past max_age
    env.write_config(&format!(
        "notifications:\n  webhooks:\n    - name: ops\n      url: http://{}/hook\nmonitoring:\n  listen: 127.0.0.1:{port}\n  max_age: 3s\n",
        rx.addr
    ));
    let _daemon = Daemon::start(&env);
    wait_until("the stale alert", Duration::from_secs(20), || !rx.to("/hook").is_empty());
    std::thread::sleep(Duration::from_secs(3));
    let got = rx.to("/hook");
    assert_eq!(got.len(), 1, "{got:?}");
    let v: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(v["event"]["event"], "stale");
    assert!(
        v["subject"].as_str().unwrap().contains("STALE")
            && v["text"].as_str().unwrap().contains("more than the allowed"),
        "{v}"
    );
    let (code, text) = http_get(port, "/readyz").unwrap();
    assert_eq!(code, 503, "{text}");
}

#[test]
fn the_disk_guard_fails_a_backup_that_cannot_fit_before_it_starts() {
    let env = TestEnv::new("diskguard");
    env.psql("create table t (id int); insert into t values (1);");
    env.backup();
    env.write_config("monitoring:\n  listen: off\n  min_free_space: 1000000TiB\n");
    let out = env.run(&["backup"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("local target local") && err.contains("min_free_space") && err.contains("free space there"),
        "{err}"
    );
    assert_eq!(env.list_json().len(), 1, "the failed backup left a manifest");
}

#[test]
fn a_busy_monitoring_address_stops_the_daemon_at_start_with_a_clear_error() {
    let env = TestEnv::new("busyport");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    env.write_config(&format!("monitoring:\n  listen: 127.0.0.1:{port}\n"));
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .env("REAL_PG_BIN", real_pg_bin())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains(&format!("monitoring.listen 127.0.0.1:{port}: cannot listen")), "{text}");
    drop(taken);
}

#[test]
fn secrets_echoed_by_tools_and_servers_are_masked_everywhere_pgbackd_writes() {
    let env = TestEnv::new("masking");
    let rx = Receiver::start();
    let (port, dead) = (free_port(), free_port());
    let password = "Echoed-Pa55word-77";
    let token = "T0KEN-in-the-path-42";
    let bin = env.fake_bin("pg_dump_echo_password.sh");
    env.write_config(&format!(
        "pg_bin_dir: {}\nschedules:\n  full_backup: \"0 1 * * *\"\nnotifications:\n  attempts: 1\n  webhooks:\n\
         \x20   - name: ops\n      url: http://{a}/hook\n    - name: gone\n      url: http://{a}/missing/{token}\n\
         \x20   - name: down\n      url: http://127.0.0.1:{dead}/hooks/{token}\nmonitoring:\n  listen: 127.0.0.1:{port}\n",
        bin.display(),
        a = rx.addr
    ));
    let role = env.use_password_role(password);

    // one-shot: the tool's error reaches stderr and the report, masked
    let out = env.run_env(&["backup"], &[("TEST_DB_PASSWORD", password)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("connection to postgresql://{role}:***@127.0.0.1/app failed")), "{err}");
    // notify-test: the server's echo of the URL is masked; the dead channel's error says which
    // server and why, and what to check
    let out = env.run_env(&["notify-test"], &[("TEST_DB_PASSWORD", password)]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("FAILED  gone: webhook gone: HTTP 404 Not Found: no hook at ***"), "{said}");
    assert!(
        said.contains(&format!("FAILED  down: webhook down: cannot connect to http://127.0.0.1:{dead}"))
            && said.contains("Connection refused")
            && said.contains("check the URL's host and port"),
        "{said}"
    );

    // the daemon: its catch-up run fails the same way; the log, the alert and the report
    let log = std::fs::File::create(env.dir.path().join("daemon.log")).unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .args(["--log-format", "json", "run"])
        .env("REAL_PG_BIN", real_pg_bin())
        .env("TEST_DB_PASSWORD", password)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    let failure_alerts = || -> Vec<Request> {
        rx.to("/hook").into_iter().filter(|r| r.body.contains("\"event\":\"failure\"")).collect()
    };
    wait_until("the failure alert", Duration::from_secs(60), || !failure_alerts().is_empty());
    wait_until("the failed delivery to the dead channel", Duration::from_secs(30), || {
        http_get(port, "/metrics")
            .is_some_and(|(_, m)| metric(&m, "pgbackd_notification_failures_total{channel=\"down\"}") == Some(1.0))
    });
    drop(daemon);
    let alert = &failure_alerts()[0].body;
    assert!(alert.contains(&format!("{role}:***@")), "{alert}");
    let log = std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap();
    assert!(log.contains(&format!("{role}:***@")) && log.contains("no hook at ***"), "{log}");
    let reports = reports(&env);
    assert_eq!(reports.len(), 2, "{reports:?}");
    for (what, text) in [("stderr", err), ("notify-test", said), ("alert", alert.clone()), ("log", log)]
        .into_iter()
        .chain(reports.iter().map(|r| ("report", r.to_string())))
    {
        assert!(!text.contains(password) && !text.contains(token), "{what} shows a secret: {text}");
    }
}

/// A manifest damaged behind pgbackd's back shows in /metrics (which the shipped alert rule
/// watches) and makes /readyz fail naming it.
#[test]
fn a_damaged_manifest_is_seen_by_monitoring() {
    let env = TestEnv::new("damagedmon");
    env.psql("create table t (id int); insert into t values (1);");
    let (a, _b) = (env.backup(), env.backup());
    std::fs::write(env.repository().join(&env.db).join(&a).join("manifest.json"), b"{}").unwrap();
    let port = free_port();
    env.write_config(&format!("schedules:\n  full_backup: \"0 1 * * *\"\nmonitoring:\n  listen: 127.0.0.1:{port}\n"));
    let _daemon = Daemon::start(&env);
    let damaged = "pgbackd_repository_damaged_manifests{target=\"local\"}";
    wait_until("the damaged manifest in /metrics", Duration::from_secs(30), || {
        http_get(port, "/metrics").is_some_and(|(_, m)| metric(&m, damaged) == Some(1.0))
    });
    let (code, text) = http_get(port, "/readyz").unwrap();
    assert_eq!(code, 503, "{text}");
    assert!(text.contains(&a) && text.contains("damaged"), "{text}");
}
