//! What the pipeline stores: an object of independently compressed (and optionally encrypted)
//! frames, described well enough to find, check and decode any frame on its own.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionAlgorithm {
    Zstd,
    None,
    /// zstd frames that reference a region of the base's raw stream (incrementals).
    ZstdPatch,
}

/// One independently compressed frame of the stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub raw_offset: u64,
    pub raw_len: u64,
    pub stored_offset: u64,
    pub stored_len: u64,
    pub stored_sha256: String,
    /// For a delta frame: the base raw range `[base_offset, base_offset + base_len)` it was
    /// compressed against (and must be decoded with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_len: Option<u64>,
}

/// A stored object: where it is, its sizes and checksums, and (for segmented data) its frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    pub key: String,
    pub compression: CompressionAlgorithm,
    pub compression_level: Option<i32>,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub raw_sha256: String,
    pub stored_sha256: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<Frame>,
    /// Stored as one age stream; `stored_*` describe the ciphertext, the frames' offsets and
    /// checksums the decrypted (compressed) stream, whose SHA-256 is `frames_sha256`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames_sha256: Option<String>,
}

impl StoredObject {
    /// The SHA-256 of the concatenated frames (the stored bytes themselves when not encrypted).
    pub fn frames_sha256(&self) -> &str {
        self.frames_sha256.as_deref().unwrap_or(&self.stored_sha256)
    }
}
