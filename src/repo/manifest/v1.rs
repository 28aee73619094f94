//! Schema 1 manifests, written by pgbackd 0.1: one format for dumps, another for file sets.
//! They are read into the schema 2 model; the MAC of an encrypted one was computed over its own
//! serialization, so these structs keep that serialization exactly (field order, optional
//! fields): the fixture repository in `tests/fixtures/repo-v1` proves it stays so.

use super::{BackupKind, Content, Dump, FileSet, FilesOutcome, Manifest, Source, StoredObject, Subject, Trigger};
use crate::config::RowCounts;
use crate::crypto::EncryptionInfo;
use crate::fileset::{FileProblem, FileRecord};
use crate::pg::archive::{BlockStart, TableRows};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Serialize, Deserialize)]
struct DumpV1 {
    schema_version: u32,
    id: String,
    database: String,
    kind: BackupKind,
    base_id: Option<String>,
    trigger: Trigger,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    source: Source,
    server_version: String,
    server_version_num: u32,
    pg_dump_version: String,
    archive_version: String,
    database_size: u64,
    data: StoredObject,
    globals: Option<StoredObject>,
    row_counts: RowCounts,
    tables: Vec<TableRows>,
    large_objects: u64,
    #[serde(default)]
    blocks: Vec<BlockStart>,
    targets: Vec<String>,
    warnings: Vec<String>,
    pgbackd_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption: Option<EncryptionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SetKindV1 {
    Files,
    Configs,
}

#[derive(Clone, Serialize, Deserialize)]
struct FilesV1 {
    schema_version: u32,
    id: String,
    kind: SetKindV1,
    set: String,
    trigger: Trigger,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    host: String,
    sources: Vec<String>,
    data: StoredObject,
    file_count: u64,
    total_bytes: u64,
    #[serde(default)]
    incremental: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    holders: Vec<String>,
    outcome: FilesOutcome,
    problems: Vec<FileProblem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    files: Vec<FileRecord>,
    targets: Vec<String>,
    pgbackd_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption: Option<EncryptionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

/// The bytes a schema 1 manifest's MAC covers: its serialization without the MAC.
fn mac_input<T: Serialize + Clone>(m: &T, clear: impl FnOnce(&mut T)) -> Arc<[u8]> {
    let mut copy = m.clone();
    clear(&mut copy);
    serde_json::to_vec(&copy).expect("manifest serializes").into()
}

pub(super) fn parse(bytes: &[u8], what: &str) -> anyhow::Result<Manifest> {
    // file set manifests say `"kind": "files"` (or configs) and name their `set`
    #[derive(Deserialize)]
    struct Probe {
        set: Option<String>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("manifest {what} is malformed: {e}"))?;
    let malformed = |e: serde_json::Error| anyhow::anyhow!("manifest {what} (schema 1) is malformed: {e}");
    if probe.set.is_some() {
        let m: FilesV1 = serde_json::from_slice(bytes).map_err(malformed)?;
        let legacy = mac_input(&m, |c| c.mac = None);
        let subject = match m.kind {
            SetKindV1::Files => Subject::Files(m.set),
            SetKindV1::Configs => Subject::Configs(m.set),
        };
        return Ok(Manifest {
            schema_version: 1,
            id: m.id,
            subject,
            kind: if m.incremental { BackupKind::Incremental } else { BackupKind::Full },
            depends_on: m.holders,
            trigger: m.trigger,
            started_at: m.started_at,
            finished_at: m.finished_at,
            data: m.data,
            content: Content::Files(FileSet {
                host: m.host,
                sources: m.sources,
                file_count: m.file_count,
                total_bytes: m.total_bytes,
                outcome: m.outcome,
                problems: m.problems,
                files: m.files,
            }),
            targets: m.targets,
            warnings: m.warnings,
            pgbackd_version: m.pgbackd_version,
            encryption: m.encryption,
            mac: m.mac,
            legacy_mac_input: Some(legacy),
        });
    }
    let m: DumpV1 = serde_json::from_slice(bytes).map_err(malformed)?;
    let legacy = mac_input(&m, |c| c.mac = None);
    Ok(Manifest {
        schema_version: 1,
        id: m.id,
        subject: Subject::Database(m.database),
        kind: m.kind,
        depends_on: m.base_id.into_iter().collect(),
        trigger: m.trigger,
        started_at: m.started_at,
        finished_at: m.finished_at,
        data: m.data,
        content: Content::Dump(Dump {
            source: m.source,
            server_version: m.server_version,
            server_version_num: m.server_version_num,
            pg_dump_version: m.pg_dump_version,
            archive_version: m.archive_version,
            database_size: m.database_size,
            globals: m.globals,
            row_counts: m.row_counts,
            tables: m.tables,
            large_objects: m.large_objects,
            blocks: m.blocks,
            relations: Vec::new(),
            schemas: Vec::new(),
            database: None,
        }),
        targets: m.targets,
        warnings: m.warnings,
        pgbackd_version: m.pgbackd_version,
        encryption: m.encryption,
        mac: m.mac,
        legacy_mac_input: Some(legacy),
    })
}
