//! Storage targets: `storage:` entries, plus the reference config's `local_backup_dir` and `aws:`.

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
}

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
    if let Some(e) = &endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        ctx.error(
            &m.child_path("endpoint"),
            format!("{e:?} must start with http:// or https://"),
            Some(m.loc_of("endpoint")),
        );
    }
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
    let part_size = m.opt::<ByteSize>("part_size").map(|b| b.0).unwrap_or(16 << 20);
    if !(S3_MIN_PART..=S3_MAX_PART).contains(&part_size) {
        ctx.error(
            &m.child_path("part_size"),
            "must be between 5MiB and 5GiB (S3's part limits)",
            Some(m.loc_of("part_size")),
        );
    }
    let max_concurrent_parts = m.opt::<usize>("max_concurrent_parts").unwrap_or(4);
    if !(1..=64).contains(&max_concurrent_parts) {
        ctx.error(
            &m.child_path("max_concurrent_parts"),
            "must be between 1 and 64",
            Some(m.loc_of("max_concurrent_parts")),
        );
    }
    let checksum = m.opt::<Checksum>("checksum").unwrap_or(Checksum::Sha256);
    let max_attempts = m.opt::<u32>("max_attempts").unwrap_or(8).max(1);
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
        part_size,
        max_concurrent_parts: max_concurrent_parts.clamp(1, 64),
        checksum,
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
    if !cfg!(feature = "s3")
        && let Some(t) = out.iter().find(|t| matches!(t.kind, TargetKind::S3(_)))
    {
        ctx.error(
            if t.name == "s3" { "aws" } else { "storage" },
            format!(
                "target {}: this pgbackd was built without S3 support: build it with the default features \
                 (cargo feature s3), or remove this target",
                t.name
            ),
            Some(top.loc()),
        );
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
        Some(other) => {
            ctx.error(&m.child_path("type"), format!("expected local or s3, found {other:?}"), Some(m.loc_of("type")));
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
