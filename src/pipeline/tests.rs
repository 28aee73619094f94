//! The pipeline end to end on a local store: plain zstd files, encrypted age files read by
//! range in any order, damaged bytes named, stalls caught.

use super::*;
use crate::storage::local::LocalStore;
use crate::storage::{Store, Target};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

fn opts(level: Option<i32>) -> PipelineOptions {
    PipelineOptions {
        segment_size: 64 * 1024,
        level,
        threads: 2,
        stall_timeout: Duration::from_secs(5),
        delta: None,
        encrypt: None,
    }
}

fn sample(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7919) % 251) as u8 ^ (i / 1000) as u8).collect()
}

/// Streams `data` into `key` on `store` in segments of `segment` bytes and commits it.
async fn store_committed(
    store: &Arc<dyn Store>,
    data: &[u8],
    segment: usize,
    key: &str,
    o: &PipelineOptions,
) -> StoredObject {
    let mut input = read_segments(std::io::Cursor::new(data.to_vec()), segment, Arc::default(), Unfiltered);
    let target = [Target { store: store.clone(), required: true }];
    let staged = store_stream_to(&mut input, &target, key, o, &CancellationToken::new()).await.unwrap();
    staged.commit().await.unwrap().object
}

#[tokio::test]
async fn round_trip_is_a_plain_zstd_file_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new("local", dir.path()).unwrap());
    let data = sample(1_000_000);
    let cancel = CancellationToken::new();
    let object = store_committed(&store, &data, 64 * 1024, "db/b/data.zst", &opts(Some(3))).await;
    assert_eq!(object.raw_bytes, data.len() as u64);
    assert_eq!(object.frames.len(), 16); // 1,000,000 / 65,536 rounded up
    assert_eq!(object.raw_sha256, hex::encode(Sha256::digest(&data)));
    // the stored object is a sequence of ordinary zstd frames
    let stored = std::fs::read(dir.path().join("db/b/data.zst")).unwrap();
    assert_eq!(zstd::stream::decode_all(&stored[..]).unwrap(), data);
    let mut out = Vec::new();
    let reader = ObjectReader::new(store.clone(), object.clone(), "backup b", None).unwrap();
    restore_stream(&reader, &mut out, RawCheck::Sha256, &cancel, &Counter::default()).await.unwrap();
    assert_eq!(out, data);
}

fn crypto_with(dir: &std::path::Path, recipients: usize) -> (Arc<crate::crypto::Crypto>, Decryption) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let path = dir.join("identity.txt");
    std::fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    // more recipients than fit in the first fetch of the header
    let others: Vec<String> =
        (1..recipients).map(|_| age::x25519::Identity::generate().to_public().to_string()).collect();
    let cfg = crate::config::EncryptionConfig {
        enabled: true,
        recipients: others.into_iter().chain([id.to_public().to_string()]).collect(),
        identity_file: Some(path),
        passphrase_work_factor: 10,
        ..Default::default()
    };
    let crypto = crate::crypto::Crypto::load(&cfg).unwrap().unwrap();
    let (info, _) = crypto.new_backup_key().unwrap();
    (crypto.clone(), Decryption { crypto, info })
}

#[tokio::test]
async fn encrypted_objects_are_age_files_read_by_frame_in_any_order() {
    for recipients in [1, 40] {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new("local", &dir.path().join("repo")).unwrap());
        let (crypto, decryption) = crypto_with(dir.path(), recipients);
        let data = sample(1_500_000);
        let cancel = CancellationToken::new();
        let mut input = read_segments(std::io::Cursor::new(data.clone()), 100_000, Arc::default(), Unfiltered);
        let mut o = opts(Some(3));
        o.encrypt = Some(crypto.clone());
        let target = [Target { store: store.clone(), required: true }];
        let staged = store_stream_to(&mut input, &target, "db/b/data.zst.age", &o, &cancel).await.unwrap();
        let object = staged.commit().await.unwrap().object;
        assert!(object.encrypted);
        assert_eq!(object.raw_sha256, hex::encode(Sha256::digest(&data)));
        // the stored object is one age file holding ordinary zstd frames
        let stored = std::fs::read(dir.path().join("repo/db/b/data.zst.age")).unwrap();
        assert_eq!(object.stored_bytes, stored.len() as u64);
        assert_eq!(object.stored_sha256, hex::encode(Sha256::digest(&stored)));
        let frames = crypto.decrypt_all(&stored, "backup b", &decryption.info).unwrap();
        assert_eq!(object.frames_sha256(), hex::encode(Sha256::digest(&frames)));
        assert_eq!(zstd::stream::decode_all(&frames[..]).unwrap(), data);

        // ranges across frames and age chunks, out of order
        let reader = ObjectReader::new(store.clone(), object.clone(), "backup b", Some(decryption.clone())).unwrap();
        for (a, b) in [(1_400_000u64, 1_500_000u64), (0, 10), (65_530, 200_000), (99_999, 100_001), (0, 1_500_000)] {
            assert_eq!(&reader.range(a, b).await.unwrap()[..], &data[a as usize..b as usize], "{a}..{b}");
        }
        let reader = ObjectReader::new(store.clone(), object.clone(), "backup b", Some(decryption.clone())).unwrap();
        let mut out = Vec::new();
        restore_stream(&reader, &mut out, RawCheck::Sha256, &cancel, &Counter::default()).await.unwrap();
        assert_eq!(out, data);
        assert_eq!(reader.encrypted_sha256().as_deref(), Some(object.stored_sha256.as_str()));
    }
}

#[tokio::test]
async fn damaged_ciphertext_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new("local", &dir.path().join("repo")).unwrap());
    let (crypto, decryption) = crypto_with(dir.path(), 1);
    let data = sample(600_000);
    let cancel = CancellationToken::new();
    let mut input = read_segments(std::io::Cursor::new(data.clone()), 100_000, Arc::default(), Unfiltered);
    let mut o = opts(Some(1));
    o.encrypt = Some(crypto);
    let target = [Target { store: store.clone(), required: true }];
    let staged = store_stream_to(&mut input, &target, "db/b/data.zst.age", &o, &cancel).await.unwrap();
    let object = staged.commit().await.unwrap().object;
    let path = dir.path().join("repo/db/b/data.zst.age");
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let victim = good.len() / 2;
    bad[victim] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let reader = ObjectReader::new(store.clone(), object.clone(), "backup b", Some(decryption.clone())).unwrap();
    let mut out = Vec::new();
    let err = restore_stream(&reader, &mut out, RawCheck::Sha256, &cancel, &Counter::default()).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("backup b") && msg.contains("do not decrypt"), "{msg}");
    assert!(out.len() < data.len());

    // a wrong identity is named before anything is read
    std::fs::write(&path, &good).unwrap();
    let (_, wrong) = crypto_with(dir.path(), 1);
    let wrong = Decryption { crypto: wrong.crypto, info: decryption.info.clone() };
    let reader = ObjectReader::new(store.clone(), object.clone(), "backup b", Some(wrong)).unwrap();
    let err = reader.range(0, 10).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("backup b") && msg.contains(&decryption.info.recipients[0]), "{msg}");
}

#[tokio::test]
async fn a_flipped_byte_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new("local", dir.path()).unwrap());
    let data = sample(300_000);
    let cancel = CancellationToken::new();
    let object = store_committed(&store, &data, 64 * 1024, "db/b/data.zst", &opts(Some(1))).await;
    let path = dir.path().join("db/b/data.zst");
    let mut stored = std::fs::read(&path).unwrap();
    let victim = object.frames[2].stored_offset as usize + 10;
    stored[victim] ^= 0x01;
    std::fs::write(&path, stored).unwrap();
    let mut out = Vec::new();
    let reader = ObjectReader::new(store.clone(), object.clone(), "backup b", None).unwrap();
    let err = restore_stream(&reader, &mut out, RawCheck::Sha256, &cancel, &Counter::default()).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("backup b") && msg.contains("frame 2"), "{msg}");
    // nothing from the corrupt frame on was written
    assert_eq!(out.len() as u64, object.frames[2].raw_offset);
}

#[tokio::test]
async fn uncompressed_and_stall() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new("local", dir.path()).unwrap());
    let data = sample(100_000);
    let cancel = CancellationToken::new();
    let mut input = read_segments(std::io::Cursor::new(data.clone()), 64 * 1024, Arc::default(), Unfiltered);
    let staged = store_stream_to(
        &mut input,
        &[Target { store: store.clone(), required: true }],
        "db/b/data.dump",
        &opts(None),
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(staged.object.stored_bytes, 100_000);
    staged.abort().await;
    assert!(store.list("").await.unwrap().is_empty());

    // a producer that never writes trips the stall guard, and nothing is left behind
    let (reader, writer) = std::io::pipe().unwrap();
    let mut input = read_segments(reader, 64 * 1024, Arc::default(), Unfiltered);
    let mut o = opts(Some(1));
    o.stall_timeout = Duration::from_millis(100);
    let err =
        store_stream_to(&mut input, &[Target { store: store.clone(), required: true }], "db/c/data.zst", &o, &cancel)
            .await
            .err()
            .unwrap();
    assert!(matches!(err, StreamError::Stalled(_)), "{err}");
    assert!(store.list("").await.unwrap().is_empty());
    drop(writer);
}
