//! The Azure Blob Storage target, through the `object_store` crate (block blobs).
//!
//! A streamed object is staged as blocks (Put Block, `max_concurrent_parts` in flight, sizes
//! doubling every 4,000 blocks so 50,000 always suffice) and becomes visible only with the Put Block List
//! that commits them; small objects are one Put Blob. The size on the service is checked after
//! the commit. A failed, cancelled or dropped upload discards its staged blocks (an empty Put
//! Blob replaces them, then the blob is deleted), so nothing is left billing the user; blocks of
//! a process killed with -9 stay uncommitted and invisible, and Azure deletes them after a week.
//! Requests are retried with exponential backoff by `object_store`; deletes go in batches of
//! up to 256 (Blob Batch). Credentials: a connection string, the account key, a SAS token, or
//! Azure's own chain (workload identity, service principal, managed identity).

use super::{ObjectInfo, ObjectWriter, Partial, Store, root_cause};
use crate::config::storage::{AZURE_MAX_BLOCK, AzureAuth, AzureConfig};
use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

pub struct AzureStore {
    name: String,
    cfg: Arc<AzureConfig>,
    store: Arc<MicrosoftAzure>,
}

/// The retry policy `object_store` applies to every request: `max_attempts` tries, backoff from
/// 100 ms doubling to 20 s, and no request retried for more than 5 minutes.
pub fn retry_config(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(20),
            base: 2.0,
        },
        max_retries: max_attempts.saturating_sub(1) as usize,
        retry_timeout: Duration::from_secs(300),
    }
}

/// The size of block `number` (1-based): `base` for the first 4,000 blocks, then doubling every
/// 4,000, capped at Azure's 4000 MiB, so 50,000 blocks hold any object a backup can produce.
pub fn block_size_for(number: u32, base: u64) -> u64 {
    let doublings = (number.saturating_sub(1) / 4000).min(20);
    base.saturating_mul(1u64 << doublings).min(AZURE_MAX_BLOCK)
}

/// A readable error with what to do: the service's error code and status, and for the codes an
/// operator fixes (no such container, a key or SAS that may not do this, a wrong key, a clock
/// off) the remedy; otherwise which endpoint could not be reached.
fn azure_error(cfg: &AzureConfig, e: object_store::Error) -> anyhow::Error {
    let text = e.to_string();
    let code = between(&text, "<Code>", "</Code>");
    let message = between(&text, "<Message>", "</Message>").map(|m| m.lines().next().unwrap_or("").to_owned());
    let status = match &e {
        object_store::Error::NotFound { .. } => Some(404),
        object_store::Error::PermissionDenied { .. } => Some(403),
        object_store::Error::Unauthenticated { .. } => Some(401),
        _ => status_in(&text),
    };
    let endpoint = endpoint_of(cfg);
    let container = &cfg.container;
    // Azurite says AuthorizationFailure where Azure says AuthenticationFailed
    let code = match code {
        Some(c) if c == "AuthorizationFailure" && message.as_deref().is_some_and(|m| m.contains("authenticate")) => {
            Some("AuthenticationFailed".to_owned())
        }
        c => c,
    };
    let hint = match (code.as_deref(), status) {
        (Some("ContainerNotFound"), _) => Some(format!(
            "the container {container} does not exist in {endpoint}: create it, or fix the target's container"
        )),
        (Some("AuthorizationPermissionMismatch" | "AuthorizationResourceTypeMismatch" | "AuthorizationFailure"), _)
        | (None, Some(403)) => Some(format!(
            "these credentials may not do this on the container {container}: a SAS token needs the permissions \
             r, a, c, w, d and l (read, add, create, write, delete, list); a managed or workload identity needs \
             the role Storage Blob Data Contributor on the container"
        )),
        (Some("AuthenticationFailed"), _) | (None, Some(401)) => Some(
            "the service did not accept the credentials: check the target's access_key, sas_token or \
             connection_string (an expired SAS token fails this way), and this machine's clock"
                .to_owned(),
        ),
        (Some("AccountIsDisabled" | "InvalidResourceName" | "OutOfRangeInput"), _) => {
            Some(format!("check the target's account and container ({}/{container})", cfg.account))
        }
        (Some("ServerBusy" | "OperationTimedOut"), _) => {
            Some("the service is throttling: retry later, or lower the target's max_concurrent_parts".to_owned())
        }
        _ => None,
    };
    match (code, status) {
        (Some(code), status) => {
            let status = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
            let message = message.map(|m| format!(": {m}")).unwrap_or_default();
            let hint = hint.map(|h| format!("; {h}")).unwrap_or_default();
            anyhow!("{code}{status}{message}{hint}")
        }
        (None, Some(status)) => {
            let hint = hint.map(|h| format!("; {h}")).unwrap_or_default();
            anyhow!("HTTP {status} from {endpoint}{hint}")
        }
        (None, None) if text.contains("credential") || text.contains("token") || text.contains("IMDS") => anyhow!(
            "no credentials for {endpoint}: {}; set the target's connection_string, access_key or sas_token, or give \
             this machine a managed or workload identity",
            root_cause(&e)
        ),
        (None, None) => anyhow!(
            "cannot reach {endpoint}: {}; check the target's account or endpoint and that the service runs",
            root_cause(&e)
        ),
    }
}

/// The text between `open` and `close` in `text`.
fn between(text: &str, open: &str, close: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(text[start..start + len].to_owned())
}

/// The HTTP status in an `object_store` error's text ("... status code: 503 ...").
fn status_in(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

fn endpoint_of(cfg: &AzureConfig) -> String {
    cfg.endpoint.clone().unwrap_or_else(|| format!("https://{}.blob.core.windows.net", cfg.account))
}

impl AzureStore {
    pub fn new(name: &str, cfg: &AzureConfig) -> Result<AzureStore> {
        let mut b = MicrosoftAzureBuilder::from_env()
            .with_account(&cfg.account)
            .with_container_name(&cfg.container)
            .with_retry(retry_config(cfg.upload.max_attempts))
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300))
                    .with_allow_http(cfg.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))),
            );
        if let Some(ep) = &cfg.endpoint {
            b = b.with_endpoint(ep.clone());
        }
        b = match &cfg.auth {
            AzureAuth::AccessKey(k) => b.with_access_key(k.expose()),
            AzureAuth::Sas(s) => {
                let pairs: Vec<(String, String)> = url_pairs(s.expose());
                b.with_sas_authorization(pairs)
            }
            AzureAuth::Ambient => b,
        };
        let store = b.build().map_err(|e| anyhow!("target {name}: {e}"))?;
        Ok(AzureStore { name: name.to_owned(), cfg: Arc::new(cfg.clone()), store: Arc::new(store) })
    }

    fn path(&self, key: &str) -> Result<Path> {
        let full = if self.cfg.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.cfg.prefix) };
        Path::parse(&full).map_err(|e| anyhow!("invalid object key {key:?}: {e}"))
    }

    fn relative<'k>(&self, full: &'k str) -> Option<&'k str> {
        if self.cfg.prefix.is_empty() { Some(full) } else { full.strip_prefix(&self.cfg.prefix)?.strip_prefix('/') }
    }
}

/// `sv=...&sig=...` as decoded query pairs.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait]
impl Store for AzureStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!("azure://{}/{}/{} at {}", self.cfg.account, self.cfg.container, self.cfg.prefix, endpoint_of(&self.cfg))
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(AzureWriter {
            store: self.store.clone(),
            cfg: self.cfg.clone(),
            path: self.path(key)?,
            upload: None,
            buf: BytesMut::new(),
            next_block: 1,
            in_flight: JoinSet::new(),
            sent: 0,
            done: false,
        }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        self.store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map_err(|e| azure_error(&self.cfg, e))
            .with_context(|| format!("uploading {path}"))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        let got = match self.store.get(&path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(azure_error(&self.cfg, e)).with_context(|| format!("downloading {path}")),
        };
        Ok(Some(
            got.bytes().await.map_err(|e| azure_error(&self.cfg, e)).with_context(|| format!("downloading {path}"))?,
        ))
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let path = self.path(key)?;
        let b = self
            .store
            .get_range(&path, offset..offset + len)
            .await
            .map_err(|e| azure_error(&self.cfg, e))
            .with_context(|| format!("reading bytes {offset}-{} of {path}", offset + len - 1))?;
        if b.len() as u64 != len {
            bail!("reading {len} bytes at {offset} of {path}: got {}: the object is shorter than recorded", b.len());
        }
        Ok(b)
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(azure_error(&self.cfg, e)).with_context(|| format!("checking {path}")),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        // object_store lists by whole path segments: list the directory, then filter by prefix
        let full = if self.cfg.prefix.is_empty() { prefix.to_owned() } else { format!("{}/{prefix}", self.cfg.prefix) };
        let dir = match full.rfind('/') {
            Some(i) => Some(Path::parse(&full[..i]).map_err(|e| anyhow!("invalid prefix {prefix:?}: {e}"))?),
            None => None,
        };
        let mut out = Vec::new();
        let mut pages = self.store.list(dir.as_ref());
        while let Some(meta) = pages.next().await {
            let meta = meta
                .map_err(|e| azure_error(&self.cfg, e))
                .with_context(|| format!("listing {} under {full:?}", self.cfg.container))?;
            let location = meta.location.to_string();
            if !location.starts_with(&full) {
                continue;
            }
            let Some(key) = self.relative(&location) else { continue };
            out.push(ObjectInfo { key: key.to_owned(), size: meta.size, modified: Some(meta.last_modified) });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        let paths: Vec<Path> = keys.iter().map(|k| self.path(k)).collect::<Result<_>>()?;
        let stream = futures_util::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut results = self.store.delete_stream(stream);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(azure_error(&self.cfg, e)).context("deleting objects"),
            }
        }
        Ok(())
    }

    async fn partials(&self, _prefix: &str) -> Result<Vec<Partial>> {
        // Uncommitted blocks are not listable as objects and Azure deletes them after 7 days;
        // uploads pgbackd abandons itself are discarded at once (see AzureWriter::discard).
        Ok(Vec::new())
    }

    async fn remove_partial(&self, partial: &Partial) -> Result<()> {
        bail!("{} is not an unfinished upload on an Azure target", partial.key)
    }
}

/// A block blob being written: blocks staged in parallel, committed by `finish`.
struct AzureWriter {
    store: Arc<MicrosoftAzure>,
    cfg: Arc<AzureConfig>,
    path: Path,
    upload: Option<Box<dyn MultipartUpload>>,
    buf: BytesMut,
    next_block: u32,
    in_flight: JoinSet<object_store::Result<()>>,
    sent: u64,
    done: bool,
}

impl AzureWriter {
    fn current_block_size(&self) -> u64 {
        block_size_for(self.next_block, self.cfg.upload.part_size)
    }

    async fn collect_one(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => {
                Err(azure_error(&self.cfg, e)).with_context(|| format!("uploading a block of {}", self.path))
            }
            Some(Err(e)) => Err(anyhow!("a block upload of {} stopped: {e}", self.path)),
        }
    }

    async fn send_block(&mut self, data: Bytes) -> Result<()> {
        if self.upload.is_none() {
            let up = self
                .store
                .put_multipart(&self.path)
                .await
                .map_err(|e| azure_error(&self.cfg, e))
                .with_context(|| format!("starting the upload of {}", self.path))?;
            self.upload = Some(up);
        }
        while self.in_flight.len() >= self.cfg.upload.max_concurrent_parts {
            self.collect_one().await?;
        }
        self.next_block += 1;
        let part = self.upload.as_mut().expect("set above").put_part(PutPayload::from_bytes(data));
        self.in_flight.spawn(part);
        Ok(())
    }

    /// Drops staged blocks: an empty Put Blob replaces them, and the empty blob is deleted.
    async fn discard(&mut self) -> Result<()> {
        self.done = true;
        // let block uploads already sent finish: one the service handled after the discard
        // would stage its block again
        while self.in_flight.join_next().await.is_some() {}
        if self.upload.take().is_some() {
            discard_blocks(&self.store, &self.cfg, &self.path).await?;
        }
        Ok(())
    }
}

async fn discard_blocks(store: &MicrosoftAzure, cfg: &AzureConfig, path: &Path) -> Result<()> {
    let discard = async {
        store.put(path, PutPayload::new()).await?;
        store.delete(path).await
    };
    discard.await.map_err(|e| azure_error(cfg, e)).with_context(|| {
        format!("discarding the staged blocks of {path}: Azure deletes uncommitted blocks after 7 days")
    })
}

#[async_trait]
impl ObjectWriter for AzureWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&data);
        self.sent += data.len() as u64;
        while self.buf.len() as u64 >= self.current_block_size() {
            let size = self.current_block_size() as usize;
            let block = self.buf.split_to(size).freeze();
            if let Err(e) = self.send_block(block).await {
                let _ = self.discard().await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let result: Result<()> = async {
            if self.upload.is_none() {
                let data = std::mem::take(&mut self.buf).freeze();
                self.store
                    .put(&self.path, PutPayload::from_bytes(data))
                    .await
                    .map_err(|e| azure_error(&self.cfg, e))
                    .with_context(|| format!("uploading {}", self.path))?;
            } else {
                if !self.buf.is_empty() {
                    let rest = std::mem::take(&mut self.buf).freeze();
                    self.send_block(rest).await?;
                }
                while !self.in_flight.is_empty() {
                    self.collect_one().await?;
                }
                let mut upload = self.upload.take().expect("checked above");
                if let Err(e) = upload.complete().await {
                    self.upload = Some(upload);
                    return Err(azure_error(&self.cfg, e)).with_context(|| format!("committing {}", self.path));
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = self.discard().await;
            return Err(e);
        }
        self.done = true;
        let head = self
            .store
            .head(&self.path)
            .await
            .map_err(|e| azure_error(&self.cfg, e))
            .with_context(|| format!("checking the uploaded {}", self.path))?;
        if head.size != self.sent {
            bail!("{} has {} bytes on the service, {} were sent", self.path, head.size, self.sent);
        }
        Ok(self.sent)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.discard().await
    }
}

impl Drop for AzureWriter {
    fn drop(&mut self) {
        // dropped mid-upload (a cancelled task): discard the staged blocks in the background
        if !self.done
            && let (Some(_), Ok(handle)) = (self.upload.take(), tokio::runtime::Handle::try_current())
        {
            let (store, cfg, path) = (self.store.clone(), self.cfg.clone(), self.path.clone());
            let mut in_flight = std::mem::take(&mut self.in_flight);
            handle.spawn(async move {
                while in_flight.join_next().await.is_some() {}
                if let Err(e) = discard_blocks(&store, &cfg, &path).await {
                    tracing::warn!(error = %format!("{e:#}"), "could not discard the staged blocks of an upload");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::storage::AZURE_MAX_BLOCKS;

    #[test]
    fn fifty_thousand_blocks_hold_the_largest_object() {
        // Azure's block blob limit is about 190.7 TiB; pgbackd's objects stay far below, but the
        // schedule must reach 5 TiB (S3's limit, our largest supported dump) with 1 MiB blocks
        let total: u64 = (1..=AZURE_MAX_BLOCKS).map(|n| block_size_for(n, 1 << 20)).sum();
        assert!(total >= 5 << 40, "50,000 blocks hold only {total} bytes");
        assert_eq!(block_size_for(4000, 16 << 20), 16 << 20);
        assert_eq!(block_size_for(4001, 16 << 20), 32 << 20);
        assert!((1..=AZURE_MAX_BLOCKS).all(|n| block_size_for(n, 4000 << 20) <= AZURE_MAX_BLOCK));
    }

    #[test]
    fn sas_tokens_are_split_into_decoded_pairs() {
        let pairs = url_pairs("sv=2022-11-02&ss=b&sig=abc%2Bdef%3D&se=2026-12-31T00%3A00%3A00Z");
        assert_eq!(pairs[0], ("sv".to_owned(), "2022-11-02".to_owned()));
        assert_eq!(pairs[2], ("sig".to_owned(), "abc+def=".to_owned()));
        assert_eq!(pairs[3].1, "2026-12-31T00:00:00Z");
    }

    #[test]
    fn service_error_codes_are_found_in_the_text() {
        let text = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error>\
                    <Code>AuthorizationPermissionMismatch</Code><Message>This request is not authorized.\nRequestId:1</Message></Error>";
        assert_eq!(between(text, "<Code>", "</Code>").as_deref(), Some("AuthorizationPermissionMismatch"));
        assert_eq!(status_in(text), Some(403));
    }
}
