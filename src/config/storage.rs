//! Storage targets: `storage:` entries (local, s3, azure, gcs, sftp), plus the reference config's
//! `local_backup_dir` and `aws:`.

use super::reader::read_list;
use super::reader::{ByteSize, Ctx, MapReader};
use crate::secret::Secret;
use std::path::PathBuf;

/// S3's limits: parts of 5 MiB to 5 GiB, at most 10,000 parts.
pub const S3_MIN_PART: u64 = 5 << 20;
pub const S3_MAX_PART: u64 = 5 << 30;
pub const S3_MAX_PARTS: u32 = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    pub name: String,
    /// A backup fails unless every required target has it; optional ones only warn.
    pub required: bool,
    pub kind: TargetKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetKind {
    Local { path: PathBuf },
    S3(S3Config),
    Azure(AzureConfig),
    Gcs(GcsConfig),
    Sftp(SftpConfig),
}

impl TargetKind {
    /// The cargo feature this kind of target needs, and whether this build has it.
    pub fn feature(&self) -> Option<(&'static str, bool)> {
        match self {
            TargetKind::Local { .. } => None,
            TargetKind::S3(_) => Some(("s3", cfg!(feature = "s3"))),
            TargetKind::Azure(_) => Some(("azure", cfg!(feature = "azure"))),
            TargetKind::Gcs(_) => Some(("gcs", cfg!(feature = "gcs"))),
            TargetKind::Sftp(_) => Some(("sftp", cfg!(feature = "sftp"))),
        }
    }
}

/// How objects are uploaded to an object store: parts of `part_size` (growing for very large
/// objects), `max_concurrent_parts` in flight, each request tried `max_attempts` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upload {
    pub part_size: u64,
    pub max_concurrent_parts: usize,
    pub max_attempts: u32,
}

/// How pgbackd signs in to Azure Blob Storage.
#[derive(Debug, Clone, PartialEq)]
pub enum AzureAuth {
    /// The storage account's shared key (`access_key`, or `AccountKey` of a connection string).
    AccessKey(Secret),
    /// A SAS token (`sas_token`, or `SharedAccessSignature` of a connection string).
    Sas(Secret),
    /// Nothing in the config: Azure's own chain (AZURE_CLIENT_ID + AZURE_TENANT_ID +
    /// AZURE_FEDERATED_TOKEN_FILE for workload identity, AZURE_CLIENT_SECRET for a service
    /// principal, else the VM's or container's managed identity).
    Ambient,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AzureConfig {
    pub account: String,
    pub container: String,
    pub prefix: String,
    /// The blob service's URL (Azurite, sovereign clouds, private endpoints); default
    /// `https://<account>.blob.core.windows.net`.
    pub endpoint: Option<String>,
    pub auth: AzureAuth,
    pub upload: Upload,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GcsConfig {
    pub bucket: String,
    pub prefix: String,
    /// The JSON API's base URL (emulators); default `https://storage.googleapis.com`.
    pub endpoint: Option<String>,
    /// A service account's JSON key file; `None` means Application Default Credentials
    /// (GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC file, the metadata server: GKE workload
    /// identity, a VM's service account).
    pub credentials_file: Option<PathBuf>,
    /// Send no credentials at all (emulators).
    pub anonymous: bool,
    pub upload: Upload,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SftpConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The directory on the server that holds the repository (absolute, or relative to the
    /// user's home directory).
    pub path: String,
    /// A private key file (OpenSSH format); `None` means the keys of the SSH agent at
    /// SSH_AUTH_SOCK.
    pub key_file: Option<PathBuf>,
    pub key_passphrase: Option<Secret>,
    /// The known_hosts file the server's host key must be in; default ~/.ssh/known_hosts.
    pub known_hosts: Option<PathBuf>,
    /// Writes in flight per file and files written at once.
    pub max_concurrent_writes: usize,
    pub max_attempts: u32,
}

/// Azure's limits: a block blob has at most 50,000 blocks of at most 4000 MiB.
pub const AZURE_MAX_BLOCKS: u32 = 50_000;
pub const AZURE_MAX_BLOCK: u64 = 4000 << 20;
/// GCS resumable uploads send chunks in multiples of 256 KiB.
pub const GCS_CHUNK_UNIT: u64 = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sse {
    Aes256,
    Kms,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// SHA-256 sent with every part and object; the server verifies it.
    Sha256,
    /// No checksums requested (servers that reject the newer checksum headers, e.g. old Ceph).
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    /// Static credentials; `None` means the standard AWS chain (env, profile, web identity, IMDS).
    pub access_key: Option<Secret>,
    pub secret_key: Option<Secret>,
    pub storage_class: Option<String>,
    pub sse: Option<Sse>,
    pub kms_key_id: Option<String>,
    pub part_size: u64,
    pub max_concurrent_parts: usize,
    pub checksum: Checksum,
    pub max_attempts: u32,
}

crate::enum_from_node!(Sse, "a server-side encryption", { "AES256" => Sse::Aes256, "aws:kms" => Sse::Kms });
crate::enum_from_node!(Checksum, "a checksum mode", { "sha256" => Checksum::Sha256, "none" => Checksum::None });

/// Reads the S3 fields shared by `aws:` and `storage: [{type: s3}]` (not `enabled`, `name`, ...).
pub fn read_s3_fields(m: &mut MapReader<'_, '_>) -> Option<S3Config> {
    let ctx = m.ctx();
    let bucket = m.req::<String>("bucket");
    let prefix = m.opt::<String>("prefix").unwrap_or_default().trim_matches('/').to_owned();
    let region = m.opt::<String>("region").unwrap_or_else(|| "us-east-1".into());
    let endpoint = m.opt::<String>("endpoint");
    check_endpoint(m, &endpoint);
    let force_path_style = m.opt::<bool>("force_path_style").unwrap_or(endpoint.is_some());
    // empty values (`${KEY:-}`) mean "not given": the credential chain applies
    let access_key = super::read_secret(m, "access_key").filter(|s| !s.expose().is_empty());
    let secret_key = super::read_secret(m, "secret_key").filter(|s| !s.expose().is_empty());
    if access_key.is_some() != secret_key.is_some() {
        ctx.error(
            &m.child_path("secret_key"),
            "give both access_key and secret_key, or neither (then the AWS credential chain is used)",
            Some(m.loc()),
        );
    }
    let storage_class = m.opt::<String>("storage_class");
    let sse = m.opt::<Sse>("sse");
    let kms_key_id = m.opt::<String>("kms_key_id");
    if kms_key_id.is_some() && sse != Some(Sse::Kms) {
        ctx.error(&m.child_path("kms_key_id"), "is only used with sse: aws:kms", Some(m.loc_of("kms_key_id")));
    }
    let upload = read_upload(m, S3_MIN_PART, S3_MAX_PART, "5MiB and 5GiB (S3's part limits)");
    let checksum = m.opt::<Checksum>("checksum").unwrap_or(Checksum::Sha256);
    Some(S3Config {
        bucket: bucket?,
        prefix,
        region,
        endpoint,
        force_path_style,
        access_key,
        secret_key,
        storage_class,
        sse,
        kms_key_id,
        part_size: upload.part_size,
        max_concurrent_parts: upload.max_concurrent_parts,
        checksum,
        max_attempts: upload.max_attempts,
    })
}

/// `part_size`, `max_concurrent_parts` and `max_attempts` of an object store target.
fn read_upload(m: &mut MapReader<'_, '_>, min_part: u64, max_part: u64, limits: &str) -> Upload {
    let ctx = m.ctx();
    let part_size = m.opt::<ByteSize>("part_size").map(|b| b.0).unwrap_or(16 << 20);
    if !(min_part..=max_part).contains(&part_size) {
        ctx.error(&m.child_path("part_size"), format!("must be between {limits}"), Some(m.loc_of("part_size")));
    }
    let max_concurrent_parts = m.opt::<usize>("max_concurrent_parts").unwrap_or(4);
    if !(1..=64).contains(&max_concurrent_parts) {
        ctx.error(
            &m.child_path("max_concurrent_parts"),
            "must be between 1 and 64",
            Some(m.loc_of("max_concurrent_parts")),
        );
    }
    let max_attempts = m.opt::<u32>("max_attempts").unwrap_or(8).max(1);
    Upload {
        part_size: part_size.clamp(min_part, max_part),
        max_concurrent_parts: max_concurrent_parts.clamp(1, 64),
        max_attempts,
    }
}

/// The parts of an Azure connection string (`Key=Value;...`) pgbackd uses.
#[derive(Debug, Default, PartialEq)]
pub struct ConnectionString {
    pub account: Option<String>,
    pub key: Option<String>,
    pub sas: Option<String>,
    pub endpoint: Option<String>,
}

/// Azurite's well-known development account (`UseDevelopmentStorage=true`).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Reads an Azure Storage connection string, as the portal and `az storage account
/// show-connection-string` print it.
pub fn parse_connection_string(text: &str) -> Result<ConnectionString, String> {
    let mut out = ConnectionString::default();
    let (mut protocol, mut suffix) = (None, None);
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("{part:?} is not Key=Value"));
        };
        match k {
            "AccountName" => out.account = Some(v.to_owned()),
            "AccountKey" => out.key = Some(v.to_owned()),
            "SharedAccessSignature" => out.sas = Some(v.to_owned()),
            "BlobEndpoint" => out.endpoint = Some(v.trim_end_matches('/').to_owned()),
            "DefaultEndpointsProtocol" => protocol = Some(v.to_owned()),
            "EndpointSuffix" => suffix = Some(v.to_owned()),
            "UseDevelopmentStorage" if v.eq_ignore_ascii_case("true") => {
                out.account = Some(AZURITE_ACCOUNT.into());
                out.key = Some(AZURITE_KEY.into());
                out.endpoint = Some(format!("http://127.0.0.1:10000/{AZURITE_ACCOUNT}"));
            }
            // queue, table and file endpoints: not ours
            _ => {}
        }
    }
    if out.endpoint.is_none()
        && let (Some(account), Some(suffix)) = (&out.account, suffix)
    {
        out.endpoint = Some(format!("{}://{account}.blob.{suffix}", protocol.as_deref().unwrap_or("https")));
    }
    if out.account.is_none() && out.endpoint.is_none() {
        return Err("it has neither AccountName nor BlobEndpoint".into());
    }
    if out.key.is_none() && out.sas.is_none() {
        return Err("it has neither AccountKey nor SharedAccessSignature".into());
    }
    Ok(out)
}

fn check_endpoint(m: &mut MapReader<'_, '_>, endpoint: &Option<String>) {
    if let Some(e) = endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        m.ctx().error(
            &m.child_path("endpoint"),
            format!("{e:?} must start with http:// or https://"),
            Some(m.loc_of("endpoint")),
        );
    }
}

fn read_azure_fields(m: &mut MapReader<'_, '_>) -> Option<AzureConfig> {
    let ctx = m.ctx();
    let container = m.req::<String>("container");
    let prefix = m.opt::<String>("prefix").unwrap_or_default().trim_matches('/').to_owned();
    let mut account = m.opt::<String>("account");
    let mut endpoint = m.opt::<String>("endpoint").map(|e| e.trim_end_matches('/').to_owned());
    check_endpoint(m, &endpoint);
    let empty = |s: Secret| (!s.expose().is_empty()).then_some(s);
    let connection = super::read_secret(m, "connection_string").and_then(empty);
    let key = super::read_secret(m, "access_key").and_then(empty);
    let sas = super::read_secret(m, "sas_token").and_then(empty);
    let given = [connection.is_some(), key.is_some(), sas.is_some()].iter().filter(|g| **g).count();
    if given > 1 {
        ctx.error(
            &m.child_path("connection_string"),
            "give one of connection_string, access_key and sas_token (none: Azure's managed or workload identity)",
            Some(m.loc()),
        );
        return None;
    }
    let auth = if let Some(cs) = connection {
        match parse_connection_string(cs.expose()) {
            Ok(parsed) => {
                account = account.or(parsed.account);
                endpoint = endpoint.or(parsed.endpoint);
                match (parsed.key, parsed.sas) {
                    (Some(k), _) => AzureAuth::AccessKey(Secret::new(k)),
                    (None, Some(s)) => AzureAuth::Sas(Secret::new(s)),
                    (None, None) => unreachable!("parse_connection_string requires one"),
                }
            }
            Err(why) => {
                ctx.error(
                    &m.child_path("connection_string"),
                    format!("is not an Azure Storage connection string: {why}; copy it from the portal (Access keys)"),
                    Some(m.loc_of("connection_string")),
                );
                return None;
            }
        }
    } else if let Some(k) = key {
        AzureAuth::AccessKey(k)
    } else if let Some(s) = sas {
        AzureAuth::Sas(Secret::new(s.expose().trim_start_matches('?')))
    } else {
        AzureAuth::Ambient
    };
    // an endpoint such as Azurite's names the account as its path
    if account.is_none()
        && let Some(e) = &endpoint
    {
        account = e.rsplit('/').next().filter(|a| !a.is_empty() && !a.contains(':')).map(str::to_owned);
    }
    if account.is_none() {
        ctx.error(&m.child_path("account"), "is required: the storage account's name", Some(m.loc()));
    }
    if let Some(c) = &container
        && !(3..=63).contains(&c.len())
    {
        ctx.error(
            &m.child_path("container"),
            format!("{c:?} is not a valid container name: 3 to 63 lower-case letters, digits and -"),
            Some(m.loc_of("container")),
        );
    }
    let upload = read_upload(m, 1 << 20, AZURE_MAX_BLOCK, "1MiB and 4000MiB (Azure's block limit)");
    Some(AzureConfig { account: account?, container: container?, prefix, endpoint, auth, upload })
}

fn read_gcs_fields(m: &mut MapReader<'_, '_>) -> Option<GcsConfig> {
    let ctx = m.ctx();
    let bucket = m.req::<String>("bucket");
    let prefix = m.opt::<String>("prefix").unwrap_or_default().trim_matches('/').to_owned();
    let endpoint = m.opt::<String>("endpoint").map(|e| e.trim_end_matches('/').to_owned());
    check_endpoint(m, &endpoint);
    let credentials_file = m.opt::<PathBuf>("credentials_file");
    let anonymous = m.opt::<bool>("anonymous").unwrap_or(false);
    if anonymous && credentials_file.is_some() {
        ctx.error(&m.child_path("anonymous"), "give credentials_file or anonymous: true, not both", Some(m.loc()));
    }
    if let Some(f) = &credentials_file {
        match std::fs::read_to_string(f) {
            Ok(text) => {
                ctx.note_secret_file(f);
                if !text.contains("\"type\"") {
                    ctx.error(
                        &m.child_path("credentials_file"),
                        format!(
                            "{} is not a Google credentials JSON file (no \"type\"): download a service account key",
                            f.display()
                        ),
                        Some(m.loc_of("credentials_file")),
                    );
                }
            }
            Err(e) => ctx.error(
                &m.child_path("credentials_file"),
                format!("cannot read {}: {e}", f.display()),
                Some(m.loc_of("credentials_file")),
            ),
        }
    }
    let upload = read_upload(m, GCS_CHUNK_UNIT, 1 << 30, "256KiB and 1GiB");
    if !upload.part_size.is_multiple_of(GCS_CHUNK_UNIT) {
        ctx.error(
            &m.child_path("part_size"),
            "must be a multiple of 256KiB (GCS resumable uploads send chunks of such sizes)",
            Some(m.loc_of("part_size")),
        );
    }
    Some(GcsConfig { bucket: bucket?, prefix, endpoint, credentials_file, anonymous, upload })
}

fn read_sftp_fields(m: &mut MapReader<'_, '_>) -> Option<SftpConfig> {
    let ctx = m.ctx();
    let host = m.req::<String>("host");
    let port = m.opt::<u16>("port").unwrap_or(22);
    let user = m.req::<String>("user");
    let path = m.req::<String>("path").map(|p| if p.len() > 1 { p.trim_end_matches('/').to_owned() } else { p });
    let key_file = m.opt::<PathBuf>("key_file");
    let key_passphrase = super::read_secret(m, "key_passphrase").filter(|s| !s.expose().is_empty());
    if key_passphrase.is_some() && key_file.is_none() {
        ctx.error(&m.child_path("key_passphrase"), "is only used with key_file", Some(m.loc_of("key_passphrase")));
    }
    let known_hosts = m.opt::<PathBuf>("known_hosts");
    let max_concurrent_writes = m.opt::<usize>("max_concurrent_writes").unwrap_or(16);
    if !(1..=256).contains(&max_concurrent_writes) {
        ctx.error(
            &m.child_path("max_concurrent_writes"),
            "must be between 1 and 256",
            Some(m.loc_of("max_concurrent_writes")),
        );
    }
    let max_attempts = m.opt::<u32>("max_attempts").unwrap_or(5).max(1);
    Some(SftpConfig {
        host: host?,
        port,
        user: user?,
        path: path?,
        key_file,
        key_passphrase,
        known_hosts,
        max_concurrent_writes: max_concurrent_writes.clamp(1, 256),
        max_attempts,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `local_backup_dir`, `aws:` and `storage:`, as one list of targets (local first).
pub fn read_targets(top: &mut MapReader<'_, '_>) -> Vec<TargetConfig> {
    let ctx = top.ctx();
    let mut out: Vec<TargetConfig> = Vec::new();
    if let Some(path) = top.opt::<PathBuf>("local_backup_dir") {
        out.push(TargetConfig { name: "local".into(), required: true, kind: TargetKind::Local { path } });
    }
    if let Some(mut aws) = top.map("aws") {
        let enabled = aws.opt::<bool>("enabled").unwrap_or(false);
        let required = aws.opt::<bool>("required").unwrap_or(true);
        // a switched-off section is still checked when it is filled in, as the reference's is
        let s3 = if enabled || aws.has("bucket") {
            ctx.lenient(!enabled, || read_s3_fields(&mut aws))
        } else {
            let _ = aws.entries();
            None
        };
        aws.finish();
        if enabled && let Some(s3) = s3 {
            out.push(TargetConfig { name: "s3".into(), required, kind: TargetKind::S3(s3) });
        }
    }
    let listed =
        read_list(top, "storage", |ctx, node, path| Some((path.to_owned(), node.loc, read_target(ctx, node, path)?)));
    for (path, loc, t) in listed {
        if out.iter().any(|o| o.name == t.name) {
            ctx.error(&format!("{path}.name"), format!("target name {:?} is used twice", t.name), Some(loc));
        } else {
            out.push(t);
        }
    }
    for t in &out {
        if let Some((feature, false)) = t.kind.feature() {
            ctx.error(
                if t.name == "s3" && matches!(t.kind, TargetKind::S3(_)) { "aws" } else { "storage" },
                format!(
                    "target {}: this pgbackd was built without {feature} support: build it with the default \
                     features (cargo feature {feature}), or remove this target",
                    t.name
                ),
                Some(top.loc()),
            );
        }
    }
    if out.is_empty() && !top.has("local_backup_dir") && !top.has("storage") {
        ctx.error(
            "local_backup_dir",
            "no storage target: set local_backup_dir, enable aws:, or list targets under storage:",
            Some(top.loc()),
        );
    } else if !out.is_empty() && !out.iter().any(|t| t.required) {
        ctx.error("storage", "at least one storage target must be required", Some(top.loc()));
    }
    out
}

fn read_target(ctx: &Ctx<'_>, node: &super::node::Node, path: &str) -> Option<TargetConfig> {
    let mut m = ctx.map(node, path)?;
    let name = m.req::<String>("name");
    let kind = m.req::<String>("type");
    let required = m.opt::<bool>("required").unwrap_or(true);
    let target = match kind.as_deref() {
        Some("local") => m.req::<PathBuf>("path").map(|path| TargetKind::Local { path }),
        Some("s3") => read_s3_fields(&mut m).map(TargetKind::S3),
        Some("azure") => read_azure_fields(&mut m).map(TargetKind::Azure),
        Some("gcs") => read_gcs_fields(&mut m).map(TargetKind::Gcs),
        Some("sftp") => read_sftp_fields(&mut m).map(TargetKind::Sftp),
        Some(other) => {
            ctx.error(
                &m.child_path("type"),
                format!("expected local, s3, azure, gcs or sftp, found {other:?}"),
                Some(m.loc_of("type")),
            );
            None
        }
        None => None,
    };
    let loc = m.loc();
    m.finish();
    let name = name?;
    if !valid_name(&name) {
        ctx.error(&format!("{path}.name"), format!("{name:?}: use letters, digits, - and _"), Some(loc));
        return None;
    }
    Some(TargetConfig { name, required, kind: target? })
}
