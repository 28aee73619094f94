//! The manifest envelope: schema 2 round trips for every kind of content, and schema 1
//! manifests (pgbackd 0.1, the fixture repository) read into it.

use super::*;
use chrono::TimeZone;

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v1").join(path)).unwrap()
}

#[test]
fn a_dump_manifest_round_trips_with_its_content_at_the_top_level() {
    let at = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let mut m = Manifest::for_tests(
        Subject::Database("app".into()),
        "20261122T010000Z-incremental-3f9a1c",
        BackupKind::Incremental,
        at,
    );
    m.depends_on = vec!["20261121T010000Z-full-000001".into()];
    let json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
    assert_eq!(json["schema_version"], 2);
    assert_eq!(json["subject"], serde_json::json!({"database": "app"}));
    assert_eq!(json["content"], "dump");
    assert_eq!(json["row_counts"], "exact");
    assert!(json["tables"].is_array() && json["source"]["dbname"] == "app", "{json}");
    let back = Manifest::parse(&m.to_json(), "t").unwrap();
    assert_eq!(back, m);
    assert_eq!(back.base_id(), Some("20261121T010000Z-full-000001"));
    // the MAC covers the manifest without its MAC
    let mut sealed = m.clone();
    sealed.mac = Some("x".into());
    assert_eq!(sealed.mac_input(), m.mac_input());
}

#[test]
fn schema_1_dump_and_file_manifests_read_into_the_envelope() {
    let inc = fixture("plain/legacy/20261201T184848Z-incremental-46c71e/manifest.json");
    let m = Manifest::parse(&inc, "fixture").unwrap();
    assert_eq!(m.schema_version, 1);
    assert_eq!(m.subject, Subject::Database("legacy".into()));
    assert_eq!((m.kind, m.base_id()), (BackupKind::Incremental, Some("20261201T184848Z-full-ccc0c1")));
    let d = m.dump().unwrap();
    assert_eq!(d.tables.iter().map(|t| (t.name.as_str(), t.rows)).collect::<Vec<_>>(), [("t", 2000), ("u", 51)]);
    assert!(d.globals.is_some() && d.row_counts == RowCounts::Exact);
    // the MAC input of a schema 1 manifest is its own compact serialization without the MAC
    let value: serde_json::Value = serde_json::from_slice(&inc).unwrap();
    let reparsed: serde_json::Value = serde_json::from_slice(&m.mac_input()).unwrap();
    assert_eq!(reparsed, value);

    let files = fixture("plain/files/uploads/20261201T184848Z-files-8e6c70/manifest.json");
    let f = Manifest::parse(&files, "fixture").unwrap();
    assert_eq!(f.subject, Subject::Files("uploads".into()));
    assert_eq!(f.kind, BackupKind::Incremental);
    assert_eq!(f.depends_on, ["20261201T184848Z-files-c91756"]);
    let set = f.file_set().unwrap();
    assert_eq!((set.file_count, set.outcome), (3, FilesOutcome::Success));
    assert!(f.base_id().is_none(), "a file backup has holders, not a delta base");
}

#[test]
fn unknown_schema_versions_are_refused_with_what_to_do() {
    let err = Manifest::parse(br#"{"schema_version": 9}"#, "m.json").unwrap_err().to_string();
    assert!(err.contains("schema version 9") && err.contains("upgrade pgbackd"), "{err}");
    let err = Manifest::parse(b"{", "m.json").unwrap_err().to_string();
    assert!(err.contains("not valid JSON"), "{err}");
}
