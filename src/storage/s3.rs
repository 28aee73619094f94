//! The S3 target (AWS S3 and S3-compatible stores: MinIO, R2, B2, Ceph RGW, LocalStack, s3s).
//!
//! Uploads are streaming multipart uploads with bounded memory: one part being filled plus at
//! most `max_concurrent_parts` in flight. Part sizes grow on a fixed schedule so that no object,
//! however large, needs more than S3's 10,000 parts. Each part carries its SHA-256 (unless
//! `checksum: none`), the final size is checked with HeadObject, and any failure, cancellation or
//! drop aborts the multipart upload so no orphaned parts are left billing the user. The SDK
//! retries 5xx, throttling, timeouts and connection resets with exponential backoff and jitter;
//! reads retry a broken body too.

use super::{ObjectInfo, ObjectWriter, Partial, Store};
use crate::config::storage::{Checksum, S3_MAX_PART, S3_MAX_PARTS, S3Config, Sse};
use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption,
    StorageClass,
};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

pub struct S3Store {
    name: String,
    client: Client,
    cfg: Arc<S3Config>,
}

/// The size of part `number` (1-based): `base` for the first 800 parts, then doubling every
/// 800 parts, capped at 5 GiB. With the 5 MiB minimum base, 10,000 parts hold about 10 TB, more
/// than S3's 5 TiB object limit, so no object needs more than 10,000 parts however large the
/// dump turns out to be (the pgBackRest #1417 failure). Memory stays part size x (concurrency + 1).
pub fn part_size_for(number: u32, base: u64) -> u64 {
    let doublings = (number.saturating_sub(1) / 800).min(20);
    base.saturating_mul(1u64 << doublings).min(S3_MAX_PART)
}

/// A readable error that says what to do: for a service error the S3 code, HTTP status, message
/// and the remedy for the codes an operator fixes (no such bucket, access denied, unknown key, bad
/// signature, wrong region, skewed clock, throttling); otherwise which endpoint could not be
/// reached and the cause at the bottom of the chain (never the SDK's Debug dump).
fn s3_error<E>(cfg: &S3Config, e: SdkError<E, HttpResponse>) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let endpoint = match &cfg.endpoint {
        Some(ep) => ep.clone(),
        None => format!("AWS S3 ({})", cfg.region),
    };
    let (root, chain) = {
        let mut cause: &dyn std::error::Error = &e;
        let mut chain = cause.to_string();
        while let Some(next) = cause.source() {
            cause = next;
            chain.push_str(": ");
            chain.push_str(&next.to_string());
        }
        (cause.to_string(), chain)
    };
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            // HEAD answers carry no body, so no code: name it from the status
            let fallback = match status {
                301 => "PermanentRedirect",
                403 => "AccessDenied",
                404 => "NotFound",
                _ => "error",
            };
            let code = se.err().code().unwrap_or(fallback);
            let message = se.err().message().map(|m| format!(": {m}")).unwrap_or_default();
            let hint = s3_hint(code, status, cfg, &endpoint).map(|h| format!("; {h}")).unwrap_or_default();
            anyhow!("{code} (HTTP {status}){message}{hint}")
        }
        SdkError::TimeoutError(_) => {
            anyhow!(
                "no answer from {endpoint} in time; check that the server is up and that nothing drops the connection"
            )
        }
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            anyhow!("no answer from {endpoint} in time ({root}); check that the server is up and reachable from here")
        }
        SdkError::DispatchFailure(_) if root.contains("lookup address") || root.contains("dns error") => {
            anyhow!("cannot reach {endpoint}: {root}; the host name does not resolve: check the target's endpoint")
        }
        _ if chain.contains("credentials") || chain.contains("IMDS") => anyhow!(
            "no credentials for {endpoint}: {root}; set the target's access_key and secret_key, or AWS_ACCESS_KEY_ID \
             and AWS_SECRET_ACCESS_KEY, or give the machine a role"
        ),
        SdkError::DispatchFailure(_) => anyhow!(
            "cannot reach {endpoint}: {root}; check the target's endpoint (host, port, http:// or https://) and that \
             the server runs"
        ),
        SdkError::ResponseError(_) => anyhow!("the answer of {endpoint} could not be read: {root}"),
        _ => anyhow!("the request to {endpoint} could not be made: {root}"),
    }
}

/// What to do about an S3 error `code`.
fn s3_hint(code: &str, status: u16, cfg: &S3Config, endpoint: &str) -> Option<String> {
    let bucket = &cfg.bucket;
    Some(match code {
        "NoSuchBucket" => {
            format!("the bucket {bucket} does not exist at {endpoint}: create it, or fix the target's bucket")
        }
        "AccessDenied" | "AllAccessDisabled" => format!(
            "these credentials may not do this on the bucket {bucket}: grant s3:ListBucket, s3:GetObject, \
             s3:PutObject, s3:DeleteObject, s3:AbortMultipartUpload and s3:ListBucketMultipartUploads"
        ),
        "InvalidAccessKeyId" | "NotSignedUp" => {
            "the server does not know this access key: check the target's access_key (or AWS_ACCESS_KEY_ID)".into()
        }
        "SignatureDoesNotMatch" => {
            "the secret key does not belong to the access key: check the target's secret_key (and region)".into()
        }
        "AuthorizationHeaderMalformed" | "PermanentRedirect" | "IllegalLocationConstraintException" => format!(
            "the bucket {bucket} is not in region {}: set the target's region to the bucket's (or fix endpoint)",
            cfg.region
        ),
        "RequestTimeTooSkewed" => "this machine's clock is off: synchronise it (NTP)".into(),
        "SlowDown" | "ServiceUnavailable" => {
            "the server is throttling: retry later, or lower the target's max_concurrent_parts".into()
        }
        "InvalidBucketName" => format!("{bucket:?} is not a valid bucket name: fix the target's bucket"),
        "QuotaExceeded" | "XAmzContentSHA256Mismatch" if status == 403 => {
            "the account's storage quota is used up: free space or raise the quota".into()
        }
        _ => return None,
    })
}

fn build_error(e: aws_sdk_s3::error::BuildError) -> anyhow::Error {
    anyhow!("{e}")
}

impl S3Store {
    pub async fn new(name: &str, cfg: &S3Config) -> Result<S3Store> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
        if let (Some(ak), Some(sk)) = (&cfg.access_key, &cfg.secret_key) {
            loader =
                loader.credentials_provider(Credentials::new(ak.expose(), sk.expose(), None, None, "pgbackd-config"));
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.force_path_style)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(cfg.max_attempts)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(20)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            );
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep);
        }
        if cfg.checksum == Checksum::None {
            b = b
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        Ok(S3Store { name: name.to_owned(), client: Client::from_conf(b.build()), cfg: Arc::new(cfg.clone()) })
    }

    fn full_key(&self, key: &str) -> String {
        if self.cfg.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.cfg.prefix) }
    }

    fn relative<'k>(&self, full: &'k str) -> Option<&'k str> {
        if self.cfg.prefix.is_empty() { Some(full) } else { full.strip_prefix(&self.cfg.prefix)?.strip_prefix('/') }
    }
}

fn sha256_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

/// One PUT of a whole object (with the configured storage class, encryption and checksum).
async fn put_object(client: &Client, cfg: &S3Config, full_key: &str, data: Bytes) -> Result<()> {
    let mut req = client
        .put_object()
        .bucket(&cfg.bucket)
        .key(full_key)
        .set_storage_class(cfg.storage_class.as_deref().map(StorageClass::from))
        .set_server_side_encryption(sse(cfg))
        .set_ssekms_key_id(cfg.kms_key_id.clone());
    if cfg.checksum == Checksum::Sha256 {
        req = req.checksum_algorithm(ChecksumAlgorithm::Sha256).checksum_sha256(sha256_b64(&data));
    }
    req.body(ByteStream::from(data))
        .send()
        .await
        .map_err(|e| s3_error(cfg, e))
        .with_context(|| format!("uploading {full_key}"))?;
    Ok(())
}

fn sse(cfg: &S3Config) -> Option<ServerSideEncryption> {
    cfg.sse.map(|s| match s {
        Sse::Aes256 => ServerSideEncryption::Aes256,
        Sse::Kms => ServerSideEncryption::AwsKms,
    })
}

#[async_trait]
impl Store for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        let ep = self.cfg.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default();
        format!("s3://{}/{}{ep}", self.cfg.bucket, self.cfg.prefix)
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(S3Writer {
            client: self.client.clone(),
            cfg: self.cfg.clone(),
            key: self.full_key(key),
            upload_id: None,
            buf: BytesMut::new(),
            next_part: 1,
            in_flight: JoinSet::new(),
            completed: Vec::new(),
            sent: 0,
            done: false,
        }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        put_object(&self.client, &self.cfg, &self.full_key(key), data).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let full = self.full_key(key);
        for attempt in 1..=3 {
            let out = match self.client.get_object().bucket(&self.cfg.bucket).key(&full).send().await {
                Ok(o) => o,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
                Err(e) => return Err(s3_error(&self.cfg, e)).with_context(|| format!("downloading {full}")),
            };
            match out.body.collect().await {
                Ok(b) => return Ok(Some(b.into_bytes())),
                Err(e) if attempt < 3 => tracing::warn!(key = %full, error = %e, "download broke off; retrying"),
                Err(e) => return Err(anyhow!(e)).with_context(|| format!("downloading {full}")),
            }
        }
        unreachable!("the loop returns")
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        let full = self.full_key(key);
        if len == 0 {
            return Ok(Bytes::new());
        }
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        for attempt in 1..=3 {
            let out = self
                .client
                .get_object()
                .bucket(&self.cfg.bucket)
                .key(&full)
                .range(&range)
                .send()
                .await
                .map_err(|e| s3_error(&self.cfg, e))
                .with_context(|| format!("reading {range} of {full}"))?;
            match out.body.collect().await {
                Ok(b) => {
                    let b = b.into_bytes();
                    if b.len() as u64 != len {
                        bail!("reading {range} of {full}: got {} bytes: the object is shorter than recorded", b.len());
                    }
                    return Ok(b);
                }
                Err(e) if attempt < 3 => tracing::warn!(key = %full, error = %e, "download broke off; retrying"),
                Err(e) => return Err(anyhow!(e)).with_context(|| format!("reading {range} of {full}")),
            }
        }
        unreachable!("the loop returns")
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let full = self.full_key(key);
        match self.client.head_object().bucket(&self.cfg.bucket).key(&full).send().await {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(s3_error(&self.cfg, e)).with_context(|| format!("checking {full}")),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full = self.full_key(prefix);
        let mut pages = self.client.list_objects_v2().bucket(&self.cfg.bucket).prefix(&full).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| s3_error(&self.cfg, e))
                .with_context(|| format!("listing {} under {full:?}", self.cfg.bucket))?;
            for obj in page.contents() {
                let Some(key) = obj.key().and_then(|k| self.relative(k)) else { continue };
                out.push(ObjectInfo {
                    key: key.to_owned(),
                    size: obj.size().unwrap_or(0) as u64,
                    modified: obj
                        .last_modified()
                        .and_then(|t| chrono::DateTime::<chrono::Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn partials(&self, prefix: &str) -> Result<Vec<Partial>> {
        let full = self.full_key(prefix);
        let (mut key_marker, mut upload_marker) = (None::<String>, None::<String>);
        let mut out = Vec::new();
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.cfg.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await
                .map_err(|e| s3_error(&self.cfg, e))
                .with_context(|| format!("listing the incomplete uploads of {} under {full:?}", self.cfg.bucket))?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key().and_then(|k| self.relative(k)), u.upload_id()) else { continue };
                out.push(Partial {
                    key: key.to_owned(),
                    id: id.to_owned(),
                    since: u
                        .initiated()
                        .and_then(|t| chrono::DateTime::<chrono::Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
                    size: None,
                });
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            upload_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && upload_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn remove_partial(&self, partial: &Partial) -> Result<()> {
        abort_multipart(&self.client, &self.cfg, &self.full_key(&partial.key), &partial.id).await
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(1000) {
            let ids = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.full_key(k)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(build_error)?;
            let delete = Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(build_error)?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.cfg.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| s3_error(&self.cfg, e))
                .with_context(|| format!("deleting {} objects from {}", batch.len(), self.cfg.bucket))?;
            if let Some(e) = out.errors().first() {
                bail!(
                    "deleting {} from {}: {} {}",
                    e.key().unwrap_or("?"),
                    self.cfg.bucket,
                    e.code().unwrap_or("error"),
                    e.message().unwrap_or("")
                );
            }
        }
        Ok(())
    }
}

struct S3Writer {
    client: Client,
    cfg: Arc<S3Config>,
    key: String,
    upload_id: Option<String>,
    buf: BytesMut,
    next_part: u32,
    in_flight: JoinSet<Result<CompletedPart>>,
    completed: Vec<CompletedPart>,
    sent: u64,
    done: bool,
}

impl S3Writer {
    fn current_part_size(&self) -> u64 {
        part_size_for(self.next_part, self.cfg.part_size)
    }

    async fn ensure_upload(&mut self) -> Result<String> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(&self.key)
            .set_storage_class(self.cfg.storage_class.as_deref().map(StorageClass::from))
            .set_server_side_encryption(sse(&self.cfg))
            .set_ssekms_key_id(self.cfg.kms_key_id.clone());
        if self.cfg.checksum == Checksum::Sha256 {
            // set at creation: servers refuse part checksums on completion otherwise
            req = req.checksum_algorithm(ChecksumAlgorithm::Sha256);
        }
        let out = req
            .send()
            .await
            .map_err(|e| s3_error(&self.cfg, e))
            .with_context(|| format!("starting the upload of {}", self.key))?;
        let id = out.upload_id().context("CreateMultipartUpload returned no upload id")?.to_owned();
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    async fn collect_one(&mut self) -> Result<()> {
        if let Some(joined) = self.in_flight.join_next().await {
            let part = joined.map_err(|e| anyhow!("upload task failed: {e}"))??;
            self.completed.push(part);
        }
        Ok(())
    }

    async fn send_part(&mut self, data: Bytes) -> Result<()> {
        if self.next_part > S3_MAX_PARTS {
            bail!("{} would need more than {S3_MAX_PARTS} parts", self.key);
        }
        let upload_id = self.ensure_upload().await?;
        while self.in_flight.len() >= self.cfg.max_concurrent_parts {
            self.collect_one().await?;
        }
        let number = self.next_part as i32;
        self.next_part += 1;
        let (client, cfg, key) = (self.client.clone(), self.cfg.clone(), self.key.clone());
        self.in_flight.spawn(async move {
            let checksum = (cfg.checksum == Checksum::Sha256).then(|| sha256_b64(&data));
            let out = client
                .upload_part()
                .bucket(&cfg.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(number)
                .set_checksum_sha256(checksum.clone())
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| s3_error(&cfg, e))
                .with_context(|| format!("uploading part {number} of {key}"))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .set_checksum_sha256(checksum)
                .build())
        });
        Ok(())
    }

    async fn abort_upload(&mut self) -> Result<()> {
        self.done = true;
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            abort_multipart(&self.client, &self.cfg, &self.key, &id).await?;
        }
        Ok(())
    }
}

async fn abort_multipart(client: &Client, cfg: &S3Config, key: &str, upload_id: &str) -> Result<()> {
    client
        .abort_multipart_upload()
        .bucket(&cfg.bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
        .map_err(|e| s3_error(cfg, e))
        .with_context(|| format!("aborting the upload of {key}: its parts may remain (AbortIncompleteMultipartUpload lifecycle rules clean them)"))?;
    Ok(())
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&data);
        self.sent += data.len() as u64;
        while self.buf.len() as u64 >= self.current_part_size() {
            let size = self.current_part_size() as usize;
            let part = self.buf.split_to(size).freeze();
            if let Err(e) = self.send_part(part).await {
                let _ = self.abort_upload().await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let result: Result<()> = async {
            if self.upload_id.is_none() {
                // small object: one PUT
                let data = std::mem::take(&mut self.buf).freeze();
                put_object(&self.client, &self.cfg, &self.key, data).await?;
            } else {
                if !self.buf.is_empty() {
                    let rest = std::mem::take(&mut self.buf).freeze();
                    self.send_part(rest).await?;
                }
                while !self.in_flight.is_empty() {
                    self.collect_one().await?;
                }
                let mut parts = std::mem::take(&mut self.completed);
                parts.sort_by_key(|p| p.part_number());
                let id = self.upload_id.clone().expect("checked above");
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.cfg.bucket)
                    .key(&self.key)
                    .upload_id(&id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send()
                    .await
                    .map_err(|e| s3_error(&self.cfg, e))
                    .with_context(|| format!("completing the upload of {}", self.key))?;
                self.upload_id = None;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = self.abort_upload().await;
            return Err(e);
        }
        self.done = true;
        let head = self
            .client
            .head_object()
            .bucket(&self.cfg.bucket)
            .key(&self.key)
            .send()
            .await
            .map_err(|e| s3_error(&self.cfg, e))
            .with_context(|| format!("checking the uploaded {}", self.key))?;
        let size = head.content_length().unwrap_or(-1);
        if size != self.sent as i64 {
            bail!("{} has {size} bytes on the server, {} were sent", self.key, self.sent);
        }
        Ok(self.sent)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.abort_upload().await
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // dropped mid-upload (a cancelled task): abort in the background, best effort
        if !self.done {
            self.in_flight.abort_all();
            if let (Some(id), Ok(handle)) = (self.upload_id.take(), tokio::runtime::Handle::try_current()) {
                let (client, cfg, key) = (self.client.clone(), self.cfg.clone(), self.key.clone());
                handle.spawn(async move {
                    if let Err(e) = abort_multipart(&client, &cfg, &key, &id).await {
                        tracing::warn!(error = %format!("{e:#}"), "could not abort a multipart upload");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::storage::S3_MIN_PART;

    #[test]
    fn ten_thousand_parts_hold_the_largest_object() {
        // S3's object limit is 5 TiB; with the smallest base part size the schedule must reach it
        let total: u64 = (1..=S3_MAX_PARTS).map(|n| part_size_for(n, S3_MIN_PART)).sum();
        assert!(total >= 5 << 40, "10,000 parts hold only {total} bytes");
        for n in 1..=S3_MAX_PARTS {
            let size = part_size_for(n, S3_MIN_PART);
            assert!((S3_MIN_PART..=S3_MAX_PART).contains(&size), "part {n} is {size} bytes");
        }
        // sizes never shrink, and the first thousand parts use the configured size
        assert!((2..=S3_MAX_PARTS).all(|n| part_size_for(n, S3_MIN_PART) >= part_size_for(n - 1, S3_MIN_PART)));
        assert_eq!(part_size_for(800, 16 << 20), 16 << 20);
        assert_eq!(part_size_for(801, 16 << 20), 32 << 20);
    }

    #[test]
    fn parts_needed_for_a_stream_stay_under_the_limit() {
        // a 1 TB object with 5 MiB base parts: count the parts the schedule produces
        let object: u64 = 1 << 40;
        let (mut left, mut parts) = (object, 0u32);
        while left > 0 {
            parts += 1;
            left = left.saturating_sub(part_size_for(parts, S3_MIN_PART));
        }
        assert!(parts <= S3_MAX_PARTS, "{parts} parts");
    }
}
