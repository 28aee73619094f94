//! The Google Cloud Storage target, on GCS's JSON API (reqwest), with `object_store`'s
//! Google credential providers for tokens (service account key files, Application Default
//! Credentials, the metadata server: GKE workload identity and a VM's service account).
//!
//! Streamed objects are resumable uploads: chunks of `part_size` (a multiple of 256 KiB) sent in
//! order, the next one filled while one is on the wire; nothing is visible before the last chunk
//! and the object's CRC32C, computed while streaming, must match the one GCS reports. A failed,
//! cancelled or dropped upload cancels its session (DELETE), and a session left by a killed
//! process holds no object and no billed storage and expires after a week. A chunk that failed is
//! sent again from the last offset GCS confirmed. Every request is retried on 408, 429, 5xx and
//! connection errors with exponential backoff and jitter; deletes are batched, 100 per request.
//! Why not `object_store`'s GCS client: its uploads use the XML multipart API, which leaves
//! billed parts behind when a process dies and which no GCS emulator installable here speaks.

use super::{ObjectInfo, ObjectWriter, Partial, Store, root_cause};
use crate::config::storage::{GCS_CHUNK_UNIT, GcsConfig};
use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use object_store::gcp::{GcpCredentialProvider, GoogleCloudStorageBuilder};
use reqwest::{RequestBuilder, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// Objects per batch request (GCS allows 100).
const BATCH: usize = 100;

pub struct GcsStore {
    name: String,
    inner: Arc<Client>,
}

/// What every request needs: the HTTP client, where, and how to sign in.
struct Client {
    cfg: GcsConfig,
    http: reqwest::Client,
    base: String,
    credentials: Option<GcpCredentialProvider>,
}

/// Percent-encodes everything but RFC 3986's unreserved characters (an object name in a URL).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// A readable error with what to do, from a GCS error answer.
fn gcs_error(cfg: &GcsConfig, base: &str, status: StatusCode, body: &str) -> anyhow::Error {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.lines().next().unwrap_or("").chars().take(200).collect());
    let bucket = &cfg.bucket;
    let hint = match status.as_u16() {
        401 => Some(
            "the service did not accept the credentials: check the target's credentials_file (or \
             GOOGLE_APPLICATION_CREDENTIALS), and this machine's clock"
                .to_owned(),
        ),
        403 => Some(format!(
            "these credentials may not do this on the bucket {bucket}: grant the service account the role \
             roles/storage.objectUser on the bucket, or the permissions storage.objects.create, .get, .list and \
             .delete"
        )),
        404 if message.contains("bucket") || message.contains("Bucket") => {
            Some(format!("the bucket {bucket} does not exist at {base}: create it, or fix the target's bucket"))
        }
        429 | 503 => Some("the service is throttling: retry later".to_owned()),
        _ => None,
    };
    let hint = hint.map(|h| format!("; {h}")).unwrap_or_default();
    anyhow!("HTTP {status}: {message}{hint}")
}

impl Client {
    fn object_url(&self, key: &str) -> String {
        format!("{}/storage/v1/b/{}/o/{}", self.base, encode(&self.cfg.bucket), encode(key))
    }

    fn full_key(&self, key: &str) -> String {
        if self.cfg.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.cfg.prefix) }
    }

    async fn authorize(&self, req: RequestBuilder) -> Result<RequestBuilder> {
        let Some(provider) = &self.credentials else { return Ok(req) };
        let credential = provider.get_credential().await.map_err(|e| {
            anyhow!(
                "no credentials for {}: {e}; set the target's credentials_file (a service account key), or \
                 GOOGLE_APPLICATION_CREDENTIALS, or run where the metadata server gives a service account \
                 (GKE workload identity, a VM)",
                self.base
            )
        })?;
        Ok(if credential.bearer.is_empty() { req } else { req.bearer_auth(&credential.bearer) })
    }

    /// Sends the request `make` builds, retrying connection errors and 408/429/5xx answers
    /// with exponential backoff (100 ms doubling to 20 s, with jitter), `max_attempts` tries.
    /// Other answers are returned as they are.
    async fn send(&self, what: &str, make: impl Fn() -> RequestBuilder) -> Result<Response> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let req = self.authorize(make()).await?;
            let outcome = req.send().await;
            let retry_why = match &outcome {
                Ok(r) if retryable(r.status()) => format!("HTTP {}", r.status()),
                Ok(_) => return Ok(outcome.expect("matched Ok")),
                Err(e) => format!("{e}"),
            };
            if attempt >= self.cfg.upload.max_attempts {
                return match outcome {
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        Err(gcs_error(&self.cfg, &self.base, status, &body)).with_context(|| what.to_owned())
                    }
                    Err(e) => Err(anyhow!(
                        "cannot reach {}: {}; check the target's endpoint and that the service runs",
                        self.base,
                        root_cause(&e)
                    ))
                    .with_context(|| what.to_owned()),
                };
            }
            tracing::debug!(what, error = %retry_why, attempt, "GCS request failed; retrying");
            let jitter = Duration::from_millis(rand::random::<u64>() % (delay.as_millis() as u64 / 2 + 1));
            tokio::time::sleep(delay + jitter).await;
            delay = (delay * 2).min(Duration::from_secs(20));
            attempt += 1;
        }
    }

    /// `send`, then an error unless the answer is a success.
    async fn send_ok(&self, what: &str, make: impl Fn() -> RequestBuilder) -> Result<Response> {
        let r = self.send(what, make).await?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        Err(gcs_error(&self.cfg, &self.base, status, &body)).with_context(|| what.to_owned())
    }

    /// Checks the CRC32C GCS reports for a finished object against ours.
    fn check_crc(&self, key: &str, resource: &serde_json::Value, crc: u32, size: u64) -> Result<()> {
        let reported_size = resource["size"].as_str().and_then(|s| s.parse::<u64>().ok());
        if reported_size.is_some_and(|s| s != size) {
            bail!("{key} has {} bytes on the service, {size} were sent", reported_size.unwrap_or(0));
        }
        if let Some(theirs) = resource["crc32c"].as_str() {
            let ours = base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes());
            if theirs != ours {
                bail!("{key}: the service stored CRC32C {theirs}, pgbackd sent {ours}: the upload was damaged");
            }
        }
        Ok(())
    }

    /// Uploads a small object in one request and checks the size and CRC32C GCS reports.
    async fn upload_whole(&self, full: &str, data: Bytes) -> Result<()> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            self.base,
            encode(&self.cfg.bucket),
            encode(full)
        );
        let r = self
            .send_ok(&format!("uploading {full}"), || {
                self.http.post(&url).header("content-type", "application/octet-stream").body(data.clone())
            })
            .await?;
        let resource: serde_json::Value =
            r.json().await.with_context(|| format!("reading the answer to uploading {full}"))?;
        self.check_crc(full, &resource, crc32c::crc32c(&data), data.len() as u64)
    }

    async fn delete_one(&self, key: &str) -> Result<()> {
        let url = self.object_url(key);
        let r = self.send(&format!("deleting {key}"), || self.http.delete(&url)).await?;
        if r.status().is_success() || r.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        Err(gcs_error(&self.cfg, &self.base, status, &body)).with_context(|| format!("deleting {key}"))
    }
}

impl GcsStore {
    pub fn new(name: &str, cfg: &GcsConfig) -> Result<GcsStore> {
        let base = cfg.endpoint.clone().unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let credentials = if cfg.anonymous {
            None
        } else {
            let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(&cfg.bucket);
            if let Some(f) = &cfg.credentials_file {
                b = b.with_service_account_path(f.to_string_lossy());
            }
            let built = b.build().map_err(|e| anyhow!("target {name}: reading the Google credentials: {e}"))?;
            Some(built.credentials().clone())
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .context("making the HTTP client")?;
        Ok(GcsStore { name: name.to_owned(), inner: Arc::new(Client { cfg: cfg.clone(), http, base, credentials }) })
    }

    fn relative<'k>(&self, full: &'k str) -> Option<&'k str> {
        let prefix = &self.inner.cfg.prefix;
        if prefix.is_empty() { Some(full) } else { full.strip_prefix(prefix.as_str())?.strip_prefix('/') }
    }
}

#[async_trait]
impl Store for GcsStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        let ep = self.inner.cfg.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default();
        format!("gs://{}/{}{ep}", self.inner.cfg.bucket, self.inner.cfg.prefix)
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(GcsWriter {
            client: self.inner.clone(),
            key: self.inner.full_key(key),
            session: None,
            buf: BytesMut::new(),
            committed: 0,
            in_flight: None,
            crc: 0,
            sent: 0,
            done: false,
        }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.inner.upload_whole(&self.inner.full_key(key), data).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let c = &self.inner;
        let full = c.full_key(key);
        let url = format!("{}?alt=media", c.object_url(&full));
        let r = c.send(&format!("downloading {full}"), || c.http.get(&url)).await?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            return Err(gcs_error(&c.cfg, &c.base, status, &body)).with_context(|| format!("downloading {full}"));
        }
        Ok(Some(r.bytes().await.with_context(|| format!("downloading {full}"))?))
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let c = &self.inner;
        let full = c.full_key(key);
        let url = format!("{}?alt=media", c.object_url(&full));
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let what = format!("reading {range} of {full}");
        for attempt in 1..=3 {
            let r = c.send_ok(&what, || c.http.get(&url).header("range", &range)).await?;
            match r.bytes().await {
                Ok(b) if b.len() as u64 == len => return Ok(b),
                Ok(b) => bail!("{what}: got {} bytes: the object is shorter than recorded", b.len()),
                Err(e) if attempt < 3 => tracing::warn!(key = %full, error = %e, "download broke off; retrying"),
                Err(e) => return Err(anyhow!(e)).context(what),
            }
        }
        unreachable!("the loop returns")
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let c = &self.inner;
        let full = c.full_key(key);
        let url = c.object_url(&full);
        let r = c.send(&format!("checking {full}"), || c.http.get(&url)).await?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            return Err(gcs_error(&c.cfg, &c.base, status, &body)).with_context(|| format!("checking {full}"));
        }
        let v: serde_json::Value = r.json().await.with_context(|| format!("checking {full}"))?;
        Ok(v["size"].as_str().and_then(|s| s.parse().ok()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let c = &self.inner;
        let full = c.full_key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/storage/v1/b/{}/o?prefix={}&maxResults=1000&fields=items(name,size,updated),nextPageToken",
                c.base,
                encode(&c.cfg.bucket),
                encode(&full)
            );
            if let Some(t) = &token {
                url.push_str(&format!("&pageToken={}", encode(t)));
            }
            let r = c.send_ok(&format!("listing {} under {full:?}", c.cfg.bucket), || c.http.get(&url)).await?;
            let page: serde_json::Value = r.json().await.context("reading a listing")?;
            for item in page["items"].as_array().into_iter().flatten() {
                let Some(key) = item["name"].as_str().and_then(|n| self.relative(n)) else { continue };
                out.push(ObjectInfo {
                    key: key.to_owned(),
                    size: item["size"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
                    modified: item["updated"]
                        .as_str()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&Utc)),
                });
            }
            match page["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        let c = &self.inner;
        for chunk in keys.chunks(BATCH) {
            let full: Vec<String> = chunk.iter().map(|k| c.full_key(k)).collect();
            if full.len() == 1 {
                c.delete_one(&full[0]).await?;
                continue;
            }
            let boundary = format!("pgbackd{:016x}", rand::random::<u64>());
            let mut body = String::new();
            for (i, key) in full.iter().enumerate() {
                let path = format!("/storage/v1/b/{}/o/{}", encode(&c.cfg.bucket), encode(key));
                body.push_str(&format!(
                    "--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <{}>\r\n\r\nDELETE {path} HTTP/1.1\r\n\r\n\r\n",
                    i + 1
                ));
            }
            body.push_str(&format!("--{boundary}--\r\n"));
            let url = format!("{}/batch/storage/v1", c.base);
            let r = c
                .send_ok(&format!("deleting {} objects", full.len()), || {
                    c.http
                        .post(&url)
                        .header("content-type", format!("multipart/mixed; boundary={boundary}"))
                        .body(body.clone())
                })
                .await?;
            let text = r.text().await.context("reading the answer to a batch delete")?;
            // each part answers one delete: 2xx and 404 are done; others are tried again alone
            let failed: Vec<&String> = batch_statuses(&text)
                .into_iter()
                .filter(|(_, status)| !(200..300).contains(status) && *status != 404)
                .filter_map(|(id, _)| full.get(id.checked_sub(1)?))
                .collect();
            let answered = batch_statuses(&text).len();
            if answered != full.len() {
                for key in &full {
                    c.delete_one(key).await?;
                }
                continue;
            }
            for key in failed {
                c.delete_one(key).await?;
            }
        }
        Ok(())
    }

    async fn partials(&self, _prefix: &str) -> Result<Vec<Partial>> {
        // an unfinished resumable upload is no object: nothing is stored or billed, and GCS
        // forgets the session after a week; pgbackd cancels its own at once
        Ok(Vec::new())
    }

    async fn remove_partial(&self, partial: &Partial) -> Result<()> {
        bail!("{} is not an unfinished upload on a GCS target", partial.key)
    }
}

/// `(Content-ID number, HTTP status)` of each part of a batch answer.
fn batch_statuses(text: &str) -> Vec<(usize, u16)> {
    let mut out = Vec::new();
    for part in text.split("--").skip(1) {
        let lower = part.to_ascii_lowercase();
        let Some(at) = lower.find("content-id:") else { continue };
        let id: String =
            part[at + 11..].chars().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_digit()).collect();
        let Some(http) = part.find("HTTP/1.1 ") else { continue };
        let status = part.get(http + 9..http + 12).and_then(|s| s.parse().ok());
        if let (Ok(id), Some(status)) = (id.parse(), status) {
            out.push((id, status));
        }
    }
    out
}

/// A resumable upload: chunks sent in order, one on the wire while the next fills.
struct GcsWriter {
    client: Arc<Client>,
    key: String,
    /// The session URI, once the first chunk is ready.
    session: Option<String>,
    buf: BytesMut,
    /// Bytes GCS confirmed (sent chunks end here).
    committed: u64,
    in_flight: Option<JoinHandle<Result<u64>>>,
    crc: u32,
    sent: u64,
    done: bool,
}

/// Sends `chunk` at `offset` of the session; `total` on the last one. Returns the offset GCS
/// committed to (the end of the chunk), resending what it did not take after an error.
async fn send_chunk(
    c: Arc<Client>,
    session: String,
    key: String,
    chunk: Bytes,
    offset: u64,
    total: Option<u64>,
) -> Result<u64> {
    let end = offset + chunk.len() as u64;
    let what = format!("uploading bytes {offset}-{end} of {key}");
    let mut from = offset;
    for attempt in 1..=c.cfg.upload.max_attempts.max(2) {
        let body = chunk.slice((from - offset) as usize..);
        let range = match (body.is_empty(), total) {
            (true, Some(t)) => format!("bytes */{t}"),
            (_, t) => format!("bytes {from}-{}/{}", end - 1, t.map(|t| t.to_string()).unwrap_or_else(|| "*".into())),
        };
        let r = c.authorize(c.http.put(&session).header("content-range", &range).body(body)).await?.send().await;
        match r {
            Ok(r) if r.status().is_success() => return Ok(total.unwrap_or(end)),
            Ok(r) if r.status().as_u16() == 308 => {
                let committed = committed_of(&r);
                if total.is_none() && committed >= end {
                    return Ok(end);
                }
                // the last chunk is only done with a success; else resend what is missing
                from = committed.clamp(offset, end);
            }
            // an earlier attempt of the last chunk reached GCS, but its answer was lost: the
            // session is finished and gone; `finish` checks the object's size and CRC32C
            Ok(r) if r.status() == StatusCode::NOT_FOUND && total.is_some() && attempt > 1 => {
                return Ok(total.unwrap_or(end));
            }
            Ok(r) if !retryable(r.status()) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                return Err(gcs_error(&c.cfg, &c.base, status, &body)).context(what);
            }
            outcome => {
                let why = match outcome {
                    Ok(r) => format!("HTTP {}", r.status()),
                    Err(e) => root_cause(&e),
                };
                if attempt >= c.cfg.upload.max_attempts {
                    bail!("{what}: {why}, {attempt} attempts");
                }
                // resend from the last offset GCS confirmed: bytes it already has are ignored
                // (no `bytes */*` status query: emulators finalize the upload on it)
                tracing::debug!(what, error = %why, attempt, "GCS chunk failed; sending it again");
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(8))).await;
            }
        }
    }
    bail!("{what}: the service did not take the chunk")
}

/// The committed length a 308 answer reports (`Range: bytes=0-N` → N + 1).
fn committed_of(r: &Response) -> u64 {
    r.headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('-').next())
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| n + 1)
        .unwrap_or(0)
}

impl GcsWriter {
    fn chunk_size(&self) -> usize {
        let size = self.client.cfg.upload.part_size;
        (size - size % GCS_CHUNK_UNIT).max(GCS_CHUNK_UNIT) as usize
    }

    async fn start_session(&mut self) -> Result<String> {
        if let Some(s) = &self.session {
            return Ok(s.clone());
        }
        let c = &self.client;
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=resumable&name={}",
            c.base,
            encode(&c.cfg.bucket),
            encode(&self.key)
        );
        let r = c
            .send_ok(&format!("starting the upload of {}", self.key), || {
                c.http.post(&url).header("content-type", "application/json").body("{}")
            })
            .await?;
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("starting the upload of {}: the service gave no session URI", self.key))?
            .to_owned();
        self.session = Some(location.clone());
        Ok(location)
    }

    async fn wait_in_flight(&mut self) -> Result<()> {
        if let Some(h) = self.in_flight.take() {
            self.committed = h.await.map_err(|e| anyhow!("a chunk upload of {} stopped: {e}", self.key))??;
        }
        Ok(())
    }

    async fn send(&mut self, chunk: Bytes, total: Option<u64>) -> Result<()> {
        let session = self.start_session().await?;
        self.wait_in_flight().await?;
        let offset = self.committed;
        let task = send_chunk(self.client.clone(), session, self.key.clone(), chunk, offset, total);
        self.in_flight = Some(tokio::spawn(task));
        Ok(())
    }

    async fn cancel(&mut self) -> Result<()> {
        self.done = true;
        if let Some(h) = self.in_flight.take() {
            h.abort();
            let _ = h.await;
        }
        if let Some(session) = self.session.take() {
            cancel_session(&self.client, &session).await?;
        }
        Ok(())
    }
}

/// Cancels a resumable upload (GCS answers 499).
async fn cancel_session(c: &Client, session: &str) -> Result<()> {
    let r = c.authorize(c.http.delete(session)).await?.send().await.context("cancelling an upload")?;
    if r.status().as_u16() == 499 || r.status().is_success() || r.status() == StatusCode::NOT_FOUND {
        return Ok(());
    }
    bail!("cancelling an upload: HTTP {}", r.status())
}

#[async_trait]
impl ObjectWriter for GcsWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &data);
        self.buf.extend_from_slice(&data);
        self.sent += data.len() as u64;
        let size = self.chunk_size();
        while self.buf.len() > size {
            // keep at least one byte back: the last chunk must carry the total
            let chunk = self.buf.split_to(size).freeze();
            if let Err(e) = self.send(chunk, None).await {
                let _ = self.cancel().await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let result: Result<()> = async {
            if self.session.is_none() {
                // small object: one request
                let data = std::mem::take(&mut self.buf).freeze();
                return self.client.upload_whole(&self.key, data).await;
            }
            let rest = std::mem::take(&mut self.buf).freeze();
            let total = self.sent;
            self.send(rest, Some(total)).await?;
            self.wait_in_flight().await?;
            self.session = None;
            // the resource the last chunk returned is not kept: read it back for the checks
            let c = &self.client;
            let url = c.object_url(&self.key);
            let r = c.send_ok(&format!("checking the uploaded {}", self.key), || c.http.get(&url)).await?;
            let resource: serde_json::Value = r.json().await.context("reading the uploaded object's metadata")?;
            if let Err(e) = c.check_crc(&self.key, &resource, self.crc, self.sent) {
                let _ = c.delete_one(&self.key).await;
                return Err(e);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = self.cancel().await;
            return Err(e);
        }
        self.done = true;
        Ok(self.sent)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.cancel().await
    }
}

impl Drop for GcsWriter {
    fn drop(&mut self) {
        if !self.done {
            if let Some(h) = self.in_flight.take() {
                h.abort();
            }
            if let (Some(session), Ok(rt)) = (self.session.take(), tokio::runtime::Handle::try_current()) {
                let c = self.client.clone();
                rt.spawn(async move {
                    if let Err(e) = cancel_session(&c, &session).await {
                        tracing::warn!(error = %format!("{e:#}"), "could not cancel an abandoned upload");
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
    fn object_names_are_encoded_whole() {
        assert_eq!(encode("app/2026 x+y.zst"), "app%2F2026%20x%2By.zst");
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
    }

    #[test]
    fn batch_answers_are_read_per_part() {
        let text = "--b\r\nContent-Type: application/http\r\nContent-ID: <response-2>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\
                    --b\r\nContent-ID: <response-1>\r\n\r\nHTTP/1.1 403 Forbidden\r\n\r\n{}\r\n--b--";
        assert_eq!(batch_statuses(text), vec![(2, 204), (1, 403)]);
    }
}
